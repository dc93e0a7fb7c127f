//! The client's November 2026 writes against the simulated API over real HTTP: `expires_at`
//! decoded into its three cases, a key's expiry and scopes updated, a retried update landing on
//! the same deadline, the expiry policy's refusal and an expired key's refusal told apart from
//! other failures (expired keys listed and hidden), service-account keys minted and deleted one
//! by one. The simulator runs on the wall clock here, as OpenAI does: an expiry is written
//! against the wall clock, so any other clock would move the target.
//!
//! Neither the admin key nor a minted key's value may appear in any error or `Debug` output.

use std::net::SocketAddr;
use std::time::Duration;

use keysweep::config::Limits;
use keysweep::inventory::{EXPIRY_TOLERANCE, Expiry, OwnerType, expiry_matches};
use keysweep::openai::{AdminClient, DeleteOutcome, Error, KeyUpdate, MintRequest};
use keysweep::sim::{
    FORMAT_VERSION, Fault, FaultKind, SimAccess, SimEffect, SimKey, SimMember, SimOptions, SimOrg,
    SimOwnerRef, SimProject, SimServer, SimServiceAccount, SimUser,
};
use secrecy::ExposeSecret;

use crate::support::listing::{ADMIN_KEY, assert_no_secret, limits, setup};
use crate::support::sim::start_sim_with;

const DAY: i64 = 86_400;
const PROJ: &str = "proj_exp";
/// A user key that never expires.
const NEVER: &str = "key_never";
/// A user key that expires in 70 days.
const LATER: &str = "key_later";
/// A user key that expired 10 days ago.
const EXPIRED: &str = "key_expired";
const SA: &str = "svc_acct_bot";
/// Two keys of the service account `SA`.
const SA_KEYS: [&str; 2] = ["key_sa_one", "key_sa_two"];
const UPDATE: &str = "POST /v1/organization/projects/{project_id}/api_keys/{api_key_id}";
const GET_KEY: &str = "GET /v1/organization/projects/{project_id}/api_keys/{api_key_id}";
const MINT: &str =
    "POST /v1/organization/projects/{project_id}/service_accounts/{service_account_id}/api_keys";

fn wall_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn key(id: &str, owner: SimOwnerRef, expires_at: Option<i64>, now: i64) -> SimKey {
    SimKey {
        id: id.to_string(),
        name: format!("{id} name"),
        redacted_value: format!("sk-proj-****{}", &id[id.len() - 3..]),
        created_at: now - 100 * DAY,
        last_used_at: None,
        owner,
        expires_at,
        scopes: Vec::new(),
    }
}

/// One project with a user's three keys (never, later, expired) and a service account with two.
fn org(now: i64) -> SimOrg {
    let user = || SimOwnerRef::User {
        id: "user_dana".into(),
    };
    let sa = || SimOwnerRef::ServiceAccount { id: SA.into() };
    let mut keys = vec![
        key(NEVER, user(), None, now),
        key(LATER, user(), Some(now + 70 * DAY), now),
        key(EXPIRED, user(), Some(now - 10 * DAY), now),
    ];
    keys.extend(SA_KEYS.map(|k| key(k, sa(), None, now)));
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    SimOrg {
        format: FORMAT_VERSION,
        generated_at: now,
        users: vec![SimUser {
            id: "user_dana".into(),
            name: "Dana".into(),
            email: "dana@example.com".into(),
            created_at: now - 500 * DAY,
        }],
        admin_api_keys: vec![],
        projects: vec![SimProject {
            id: PROJ.into(),
            name: Some("Expiry".into()),
            created_at: now - 400 * DAY,
            archived_at: None,
            external_key_id: None,
            members: vec![SimMember {
                user_id: "user_dana".into(),
                role: "owner".into(),
                added_at: now - 400 * DAY,
                access: SimAccess::Active,
            }],
            service_accounts: vec![SimServiceAccount {
                id: SA.into(),
                name: "bot".into(),
                role: "member".into(),
                created_at: now - 300 * DAY,
                access: SimAccess::Active,
            }],
            keys,
        }],
    }
}

/// The simulator on the wall clock with `tweak`ed options, and a client with `limits`.
async fn start(tweak: impl FnOnce(&mut SimOptions), limits: Limits) -> (SimServer, AdminClient) {
    let mut opts = SimOptions::new(ADMIN_KEY);
    tweak(&mut opts);
    let sim = start_sim_with(org(wall_now()), opts).await;
    let client = setup(&sim, limits, |_| {}).clients.remove(0);
    (sim, client)
}

fn stat(sim: &SimServer, route: &str) -> u64 {
    sim.stats().get(route).copied().unwrap_or(0)
}

fn sim_expiry(sim: &SimServer, key: &str) -> Option<i64> {
    sim.key(PROJ, key).unwrap().expires_at
}

/// The expiry the simulator stored is the target itself, give or take the simulator's clock
/// reading whole seconds and a moment of scheduling: far tighter than [`EXPIRY_TOLERANCE`], so
/// that a client that computed `expires_in_seconds` once and re-sent it three seconds or more
/// later fails here (the retry tests below wait at least that long between attempts).
fn assert_on_target(found: Option<i64>, target: i64) {
    let found = found.expect("the key has an expiry");
    assert!(
        (found - target).abs() <= 2,
        "expiry {found} is {}s from the target {target}",
        found - target
    );
}

fn assert_error_clean(e: &Error) {
    assert_no_secret(&e.to_string());
    assert_no_secret(&format!("{e:?}"));
}

// ---- expires_at ---------------------------------------------------------------------------------

#[tokio::test]
async fn expires_at_null_and_number_decode_to_never_and_at() {
    let (sim, c) = start(|_| {}, limits()).await;
    let keys = c
        .list_project_keys(&c.list_projects().await.unwrap()[0])
        .await
        .unwrap();
    let by_id = |id: &str| keys.iter().find(|k| k.id == id).unwrap().expires_at;
    assert_eq!(by_id(NEVER), Expiry::Never);
    assert_eq!(by_id(LATER), Expiry::At(sim_expiry(&sim, LATER).unwrap()));
    // Listed by default, with its past expiry.
    let expired = by_id(EXPIRED);
    assert!(expired.is_expired(wall_now()), "{expired:?}");
    // The JSON of a key says it as the API does.
    let never = keys.iter().find(|k| k.id == NEVER).unwrap();
    assert_eq!(
        serde_json::to_value(never).unwrap()["expires_at"],
        serde_json::Value::Null
    );
    let got = c.retrieve_key(PROJ, LATER).await.unwrap().unwrap();
    assert_eq!(got.expires_at, by_id(LATER));
}

/// An older answer without `expires_at` at all: unknown, never "never".
async fn old_api() -> SocketAddr {
    use axum::routing::get;
    async fn old_key() -> String {
        serde_json::json!({"object": "organization.project.api_key", "id": "key_old",
            "name": "old", "redacted_value": "sk-proj-****old", "created_at": 1_700_000_000,
            "last_used_at": null, "owner": {"type": "user", "user": {"id": "user_1",
            "name": "Old", "email": "old@example.com", "role": "owner",
            "created_at": 1_600_000_000}}})
        .to_string()
    }
    let app = axum::Router::new().route("/v1/organization/projects/{p}/api_keys/{k}", get(old_key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn expires_at_absent_decodes_to_unknown() {
    let addr = old_api().await;
    let org = crate::support::listing::org_cfg("old", &format!("http://{addr}/v1"), ADMIN_KEY);
    let shared = keysweep::openai::ClientShared::default();
    let c = AdminClient::new(&org, &limits(), shared).unwrap();
    let k = c
        .retrieve_key("proj_old", "key_old")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k.expires_at, Expiry::Unknown);
    assert_eq!(k.expires_at.at(), None);
    assert!(!k.expires_at.is_expired(i64::MAX));
    // Unknown is left out of the key's JSON, never written as null ("never expires").
    assert!(
        serde_json::to_value(&k)
            .unwrap()
            .get("expires_at")
            .is_none()
    );
}

// ---- update -------------------------------------------------------------------------------------

#[tokio::test]
async fn update_sets_the_expiry_to_the_target_and_the_scopes() {
    let (sim, c) = start(|_| {}, limits()).await;
    let target = wall_now() + 30 * DAY;
    let k = c.set_key_expiry(PROJ, NEVER, target).await.unwrap();
    assert!(expiry_matches(k.expires_at, target), "{:?}", k.expires_at);
    assert_on_target(sim_expiry(&sim, NEVER), target);
    let reread = c.retrieve_key(PROJ, NEVER).await.unwrap().unwrap();
    assert!(expiry_matches(reread.expires_at, target));

    // Moved earlier on a key that already had an expiry, and on a service-account key.
    let sooner = wall_now() + 2 * DAY;
    c.set_key_expiry(PROJ, LATER, sooner).await.unwrap();
    assert_on_target(sim_expiry(&sim, LATER), sooner);
    c.set_key_expiry(PROJ, SA_KEYS[0], sooner).await.unwrap();
    assert_on_target(sim_expiry(&sim, SA_KEYS[0]), sooner);

    // Scopes alone leave the expiry as it is.
    let scopes = vec!["api.all.read".to_string()];
    let update = KeyUpdate {
        expires_at: None,
        scopes: Some(scopes.clone()),
    };
    c.update_key(PROJ, NEVER, &update).await.unwrap();
    let snap = sim.key(PROJ, NEVER).unwrap();
    assert_eq!(snap.scopes, scopes);
    assert_on_target(snap.expires_at, target);
    assert_eq!(stat(&sim, UPDATE), 4);
}

/// The API adds `expires_in_seconds` to its own clock: an API whose clock is 40 days ahead of
/// ours (the simulator's, moved) must still end the key at the target, not 40 days after it.
/// The client reads the API's clock from the `Date` of the answers before the write.
#[tokio::test]
async fn the_expiry_is_counted_from_the_apis_clock_as_its_date_header_shows() {
    let (sim, c) = start(|_| {}, limits()).await;
    let ahead = wall_now() + 40 * DAY;
    sim.set_clock(ahead);
    // Any answer carries the API's `Date`; the sweep's re-read is the usual one.
    c.retrieve_key(PROJ, NEVER).await.unwrap();
    let target = ahead + 10 * DAY;
    c.set_key_expiry(PROJ, NEVER, target).await.unwrap();
    assert_on_target(sim_expiry(&sim, NEVER), target);
}

#[tokio::test]
async fn a_re_read_that_lags_behind_the_update_is_read_once_more() {
    let (sim, c) = start(|_| {}, limits()).await;
    let target = wall_now() + 5 * DAY;
    c.set_key_expiry(PROJ, NEVER, target).await.unwrap();
    let written = sim_expiry(&sim, NEVER);
    // The first read after the update still shows the old expiry; the world then catches up.
    sim.set_expires_at(PROJ, NEVER, None).unwrap();
    sim.faults().add(
        Fault::on_get_key(PROJ, NEVER)
            .once()
            .after_effect()
            .respond(FaultKind::Apply(SimEffect::set_expires_at(
                PROJ, NEVER, written,
            ))),
    );
    let settled = |k: &keysweep::inventory::Key| expiry_matches(k.expires_at, target);
    let k = c
        .reread_key(PROJ, NEVER, Duration::from_millis(50), settled)
        .await
        .unwrap()
        .unwrap();
    assert!(expiry_matches(k.expires_at, target), "{:?}", k.expires_at);
    assert_eq!(stat(&sim, GET_KEY), 2);
    // Settled at once: one read.
    c.reread_key(PROJ, NEVER, Duration::from_millis(50), settled)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stat(&sim, GET_KEY), 3);
    // Gone: no second read.
    assert_eq!(
        c.reread_key(PROJ, "key_nope", Duration::ZERO, settled)
            .await
            .unwrap(),
        None
    );
    assert_eq!(stat(&sim, GET_KEY), 4);
}

#[tokio::test]
async fn a_target_already_past_sends_nothing() {
    let (sim, c) = start(|_| {}, limits()).await;
    let err = c
        .set_key_expiry(PROJ, NEVER, wall_now() - 5)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ExpiryPassed { .. }), "{err}");
    assert_eq!(stat(&sim, UPDATE), 0);
    assert_eq!(sim_expiry(&sim, NEVER), None);
}

#[tokio::test]
async fn update_retried_after_5xx_lands_on_the_same_deadline() {
    let mut lim = limits();
    lim.max_retries = 4;
    let (sim, c) = start(|_| {}, lim).await;
    // Four answers lost after the update took effect: the retries come ≥ 5.6 s after the first
    // attempt (backoff 0.375 + 0.75 + 1.5 + 3 s at least). Re-sending the first attempt's
    // `expires_in_seconds` would land that much after the target.
    let id = sim.faults().add(
        Fault::on_update_key(PROJ, NEVER)
            .after_effect()
            .times(4)
            .respond(FaultKind::Status(503)),
    );
    let target = wall_now() + 7 * DAY;
    let k = c.set_key_expiry(PROJ, NEVER, target).await.unwrap();
    assert_eq!(sim.faults().hits(id), 4);
    assert_eq!(stat(&sim, UPDATE), 5);
    assert_on_target(sim_expiry(&sim, NEVER), target);
    assert!(expiry_matches(k.expires_at, target));
}

#[tokio::test]
async fn update_retried_after_a_timeout_lands_on_the_same_deadline() {
    let mut lim = limits();
    lim.request_timeout = Duration::from_secs(3);
    let (sim, c) = start(|_| {}, lim).await;
    // The first update takes effect, then its answer never comes in time.
    sim.faults().add(
        Fault::on_update_key(PROJ, NEVER)
            .after_effect()
            .once()
            .respond(FaultKind::Delay(Duration::from_secs(5))),
    );
    let target = wall_now() + 7 * DAY;
    c.set_key_expiry(PROJ, NEVER, target).await.unwrap();
    assert_eq!(stat(&sim, UPDATE), 2);
    assert_on_target(sim_expiry(&sim, NEVER), target);
}

#[tokio::test]
async fn update_gives_up_after_persistent_5xx_with_a_server_error() {
    let mut lim = limits();
    lim.max_retries = 1;
    let (sim, c) = start(|_| {}, lim).await;
    sim.faults()
        .add(Fault::on_update_key(PROJ, NEVER).respond(FaultKind::Status(500)));
    let err = c
        .set_key_expiry(PROJ, NEVER, wall_now() + DAY)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 500, .. }), "{err}");
    assert_error_clean(&err);
    assert_eq!(sim_expiry(&sim, NEVER), None);
}

/// An update whose answer names another key confirms nothing about this one: an error that
/// does not say "nothing applied" (the update did apply here), so the caller reads it back.
#[tokio::test]
async fn an_update_answered_for_another_key_is_not_taken_for_this_one() {
    let (sim, c) = start(|_| {}, limits()).await;
    sim.faults().add(
        Fault::on_update_key(PROJ, NEVER)
            .after_effect()
            .respond(FaultKind::Patch(
                serde_json::json!({"id": "key_someone_else"}),
            )),
    );
    let target = wall_now() + 7 * DAY;
    let err = c.set_key_expiry(PROJ, NEVER, target).await.unwrap_err();
    assert!(matches!(err, Error::UnexpectedId { .. }), "{err}");
    assert!(!err.nothing_applied(), "{err}");
    assert_on_target(sim_expiry(&sim, NEVER), target);
}

/// The first update takes effect but its answer is lost (503); the retry is refused (404).
/// The refusal does not say "nothing changed": the expiry was set by the first attempt, so the
/// error is the first attempt's, which may have applied (the write keeps its cap slot and is
/// read back at the next sweep instead of being recorded as failed).
#[tokio::test]
async fn a_refusal_after_an_answer_lost_is_not_taken_for_nothing_applied() {
    let (sim, c) = start(|_| {}, limits()).await;
    sim.faults().add(
        Fault::on_update_key(PROJ, NEVER)
            .after_effect()
            .once()
            .respond(FaultKind::Status(503)),
    );
    sim.faults().add(
        Fault::on_update_key(PROJ, NEVER)
            .once()
            .respond(FaultKind::Status(404)),
    );
    let target = wall_now() + 7 * DAY;
    let err = c.set_key_expiry(PROJ, NEVER, target).await.unwrap_err();
    assert_on_target(sim_expiry(&sim, NEVER), target);
    assert!(!err.nothing_applied(), "{err}");
    assert!(matches!(err, Error::Server { status: 503, .. }), "{err}");
    assert_eq!(stat(&sim, UPDATE), 2);
}

#[tokio::test]
async fn expiry_beyond_the_organisation_limit_is_refused_by_policy() {
    let (sim, c) = start(
        |o| o.max_key_lifetime = Some(Duration::from_secs(30 * DAY as u64)),
        limits(),
    )
    .await;
    let err = c
        .set_key_expiry(PROJ, NEVER, wall_now() + 60 * DAY)
        .await
        .unwrap_err();
    match &err {
        Error::ExpiryRefused {
            status: 400,
            message: Some(m),
            ..
        } => assert!(m.contains("maximum"), "{m}"),
        other => panic!("not an expiry refusal: {other}"),
    }
    assert_error_clean(&err);
    // Refused once, not retried, nothing changed.
    assert_eq!(stat(&sim, UPDATE), 1);
    assert_eq!(sim_expiry(&sim, NEVER), None);
    // Within the limit it goes through.
    let target = wall_now() + 29 * DAY;
    c.set_key_expiry(PROJ, NEVER, target).await.unwrap();
    assert_on_target(sim_expiry(&sim, NEVER), target);
}

#[tokio::test]
async fn other_400s_stay_plain_refusals() {
    let (_sim, c) = start(|_| {}, limits()).await;
    // Neither field: the API's own validation, not the policy.
    let err = c
        .update_key(PROJ, NEVER, &KeyUpdate::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { status: 400, .. }), "{err}");
}

#[tokio::test]
async fn update_of_an_expired_key_listed_is_key_ended_400() {
    let (sim, c) = start(|_| {}, limits()).await;
    let before = sim_expiry(&sim, EXPIRED);
    let err = c
        .set_key_expiry(PROJ, EXPIRED, wall_now() + DAY)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyEnded { status: 400, .. }), "{err}");
    assert!(err.is_key_ended());
    assert_error_clean(&err);
    assert_eq!(stat(&sim, UPDATE), 1);
    assert_eq!(sim_expiry(&sim, EXPIRED), before);
    // Still readable, with its past expiry.
    let k = c.retrieve_key(PROJ, EXPIRED).await.unwrap().unwrap();
    assert!(k.expires_at.is_expired(wall_now()));
}

#[tokio::test]
async fn update_of_an_expired_key_hidden_is_key_ended_404() {
    let (sim, c) = start(|o| o.hide_expired_keys = true, limits()).await;
    let err = c
        .set_key_expiry(PROJ, EXPIRED, wall_now() + DAY)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyEnded { status: 404, .. }), "{err}");
    assert_eq!(c.retrieve_key(PROJ, EXPIRED).await.unwrap(), None);
    // A key that expires while keysweep watches: the simulator's clock moves past it.
    let target = wall_now() + DAY;
    c.set_key_expiry(PROJ, NEVER, target).await.unwrap();
    sim.advance_clock(2 * DAY);
    let err = c
        .set_key_expiry(PROJ, NEVER, wall_now() + 3 * DAY)
        .await
        .unwrap_err();
    assert!(err.is_key_ended(), "{err}");
    assert_on_target(sim_expiry(&sim, NEVER), target);
}

/// A 404 on an update whose wording blames neither the route nor the project (a gateway's page)
/// is "the key ended" only if a read agrees. Here the key is still there: a plain not-found
/// failure that changed nothing, so the caller's finding stays open.
#[tokio::test]
async fn an_update_404_that_a_read_does_not_confirm_is_no_key_ended() {
    let (sim, c) = start(|_| {}, limits()).await;
    sim.faults().add(
        Fault::on_update_key(PROJ, NEVER).respond(FaultKind::StatusMessage {
            status: 404,
            message: "<html><body>404 Not Found</body></html>".into(),
        }),
    );
    let err = c
        .set_key_expiry(PROJ, NEVER, wall_now() + DAY)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(!err.is_key_ended() && err.nothing_applied(), "{err}");
    assert_eq!(stat(&sim, GET_KEY), 1, "one read to check the 404");
    assert_eq!(sim_expiry(&sim, NEVER), None);
}

// ---- service-account keys -----------------------------------------------------------------------

#[tokio::test]
async fn mint_returns_the_value_once_and_the_key_is_listed() {
    let (sim, c) = start(|_| {}, limits()).await;
    let target = wall_now() + 10 * DAY;
    let req = MintRequest {
        name: Some("deploy".into()),
        scopes: Some(vec!["api.all.read".into()]),
        expires_at: Some(target),
    };
    let minted = c.mint_service_account_key(PROJ, SA, &req).await.unwrap();
    let value = minted.value.expose_secret().to_string();
    assert!(value.len() > 20, "a real secret");
    assert!(!format!("{minted:?}").contains(&value));
    assert!(expiry_matches(minted.expires_at, target));
    assert_eq!(minted.name, "deploy");
    assert_eq!(stat(&sim, MINT), 1);

    let keys = c
        .list_project_keys(&c.list_projects().await.unwrap()[0])
        .await
        .unwrap();
    let listed = keys.iter().find(|k| k.id == minted.id).unwrap();
    assert_eq!(listed.owner.kind, OwnerType::ServiceAccount);
    assert_eq!(listed.owner.id.as_deref(), Some(SA));
    assert!(expiry_matches(listed.expires_at, target));
    // The value is not in anything a read returns.
    let json = serde_json::to_string(&keys).unwrap();
    assert!(!json.contains(&value));
    assert!(!json.contains(&value[value.len() - 8..]));
    let snap = sim.key(PROJ, &minted.id).unwrap();
    assert_eq!(snap.scopes, vec!["api.all.read".to_string()]);
    assert_on_target(snap.expires_at, target);

    // Without an expiry it never expires.
    let plain = c
        .mint_service_account_key(PROJ, SA, &MintRequest::default())
        .await
        .unwrap();
    assert_eq!(plain.expires_at, Expiry::Never);
    assert_ne!(plain.id, minted.id);
}

#[tokio::test]
async fn mint_is_not_blindly_retried_and_refusals_are_read() {
    let (sim, c) = start(
        |o| o.max_key_lifetime = Some(Duration::from_secs(30 * DAY as u64)),
        limits(),
    )
    .await;
    sim.faults().add(
        Fault::on_create_service_account_key(PROJ, SA)
            .once()
            .respond(FaultKind::Status(503)),
    );
    let err = c
        .mint_service_account_key(PROJ, SA, &MintRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 503, .. }), "{err}");
    assert_eq!(stat(&sim, MINT), 1, "a 5xx may have minted: never re-sent");

    let long = MintRequest {
        expires_at: Some(wall_now() + 60 * DAY),
        ..MintRequest::default()
    };
    let err = c
        .mint_service_account_key(PROJ, SA, &long)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ExpiryRefused { .. }), "{err}");
    let err = c
        .mint_service_account_key(PROJ, "svc_acct_nope", &MintRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(sim.keys(PROJ).len(), 5, "nothing minted");
}

#[tokio::test]
async fn deleting_a_service_account_key_removes_only_that_key() {
    let (sim, c) = start(|_| {}, limits()).await;
    let out = c.delete_key(PROJ, SA_KEYS[0]).await.unwrap();
    assert!(matches!(out, DeleteOutcome::Deleted { .. }), "{out:?}");
    assert!(!sim.key_exists(PROJ, SA_KEYS[0]));
    assert!(sim.key_exists(PROJ, SA_KEYS[1]));
    assert!(sim.service_account_exists(PROJ, SA));
    assert_eq!(sim.keys(PROJ).len(), 4);
    assert_eq!(
        c.delete_key(PROJ, SA_KEYS[0]).await.unwrap(),
        DeleteOutcome::AlreadyGone
    );
}

/// A DELETE answered `deleted: true` for another id confirms nothing about this key: not
/// recorded as deleted (a failed delete that keeps its cap slot; the next listing decides).
#[tokio::test]
async fn a_delete_answered_for_another_key_is_not_a_confirmation() {
    let (sim, c) = start(|_| {}, limits()).await;
    sim.faults().add(
        Fault::on_delete_key(PROJ, SA_KEYS[0])
            .after_effect()
            .respond(FaultKind::Patch(
                serde_json::json!({"id": "key_someone_else"}),
            )),
    );
    let err = c.delete_key(PROJ, SA_KEYS[0]).await.unwrap_err();
    assert!(matches!(err, Error::NotDeleted { .. }), "{err}");
    assert!(!err.nothing_applied(), "{err}");
}

#[tokio::test]
async fn an_expired_key_deleted_listed_or_hidden() {
    // Listed: the DELETE goes through like any other.
    let (sim, c) = start(|_| {}, limits()).await;
    let out = c.delete_key(PROJ, EXPIRED).await.unwrap();
    assert!(matches!(out, DeleteOutcome::Deleted { .. }), "{out:?}");
    assert!(!sim.key_exists(PROJ, EXPIRED));
    // Hidden: 404, which a delete reads as already gone.
    let (sim, c) = start(|o| o.hide_expired_keys = true, limits()).await;
    assert_eq!(
        c.delete_key(PROJ, EXPIRED).await.unwrap(),
        DeleteOutcome::AlreadyGone
    );
    assert!(sim.key_exists(PROJ, EXPIRED), "hidden, not deleted");
}

#[test]
fn tolerance_is_two_minutes() {
    assert_eq!(EXPIRY_TOLERANCE, 120);
}
