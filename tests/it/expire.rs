//! Issue 12 end to end: `action = "expire"` (the fail-safe deadline), service-account keys one
//! by one, `max_lifetime`, and the faults of the new write, against the simulated Administration
//! API over HTTP with a real SQLite state file.
//!
//! The simulator runs on the wall clock here and every sweep evaluates at (or after) the wall
//! clock: an expiry is always written against the wall clock (`expires_in_seconds = ceil(target −
//! now)`), so a deadline in the wall-clock past could not be written at all. What is checked is
//! what an operator would see: the keys' `expires_at` in the simulator, that no key was deleted,
//! the findings, the alerts, and the audit log (which must verify).
//!
//! These tests talk only to loopback.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keysweep::metrics::Metrics;
use keysweep::notify::alert::EnforcerAlert;
use keysweep::policy::finding::{Finding, FindingId, Stage};
use keysweep::revoke::expiry::ExpiryOutcome;
use keysweep::sim::{
    Fault, FaultKind, SimAccess, SimEffect, SimKey, SimOptions, SimOrg, SimOwnerRef, SimServer,
    SimServiceAccount,
};
use keysweep::state::audit::{self, AuditKind, AuditRecord};
use keysweep::state::{self, Store};
use keysweep::sweep::{SweepOptions, SweepReport, Sweeper};

use crate::support::config::config_from_toml;
use crate::support::time::DAY;

const ADMIN_KEY: &str = "sk-admin-EXPIRE-7f3a9c20bb-DO-NOT-LEAK";
const KEY_ENV: &str = "KEYSWEEP_IT_EXPIRE_ADMIN_KEY";
const ORG: &str = "acme";
const PROJECT: &str = "proj_expire";
const SA: &str = "svc_acct_expire_bot";
const POLICY: &str = "rotate-90d";
/// How far the simulator's `expires_at` may land after the target: the server times the
/// request itself, a moment after the client computed `expires_in_seconds`.
const SLACK: i64 = 5;

/// Whether an expiry read back is the target: at most [`SLACK`] later, and at most one second
/// earlier, because the simulator's clock counts whole seconds from its start and so may be
/// up to a second behind the wall clock the client computed against.
fn lands_on(at: i64, target: i64) -> bool {
    (target - 1..=target + SLACK).contains(&at)
}

fn wall_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The keys of the test organisation, by role.
struct Keys {
    /// Old user key that never expires: gets the deadline.
    never: String,
    /// Old user key that expires in 3 days, before the deadline: left alone.
    earlier: String,
    /// Old user key that expires in 60 days, after the deadline: moved to the deadline.
    later: String,
    /// New user key without an expiry: compliant under max_age.
    fresh: String,
    /// Old service-account key that never expires.
    sa_old: String,
}

fn key(id: &str, owner: SimOwnerRef, created_at: i64, expires_at: Option<i64>) -> SimKey {
    SimKey {
        id: id.to_string(),
        name: format!("name of {id}"),
        redacted_value: format!("sk-proj-****{}", &id[id.len() - 4..]),
        created_at,
        last_used_at: Some(created_at + DAY),
        owner,
        expires_at,
        scopes: Vec::new(),
    }
}

/// One project: the five keys of [`Keys`], owned by a generated user and a service account.
fn org(now: i64) -> (SimOrg, Keys) {
    let mut org = SimOrg::generate(1, 2, 12, now);
    let p = org.projects.iter_mut().find(|p| !p.is_archived()).unwrap();
    p.id = PROJECT.to_string();
    let user = p.members[0].user_id.clone();
    p.service_accounts.push(SimServiceAccount {
        id: SA.into(),
        name: "expire-bot".into(),
        role: "member".into(),
        created_at: now - 400 * DAY,
        access: SimAccess::Active,
    });
    let u = || SimOwnerRef::User { id: user.clone() };
    let old = now - 200 * DAY;
    p.keys = vec![
        key("key_exp_never", u(), old, None),
        key("key_exp_early", u(), old, Some(now + 3 * DAY)),
        key("key_exp_later", u(), old, Some(now + 60 * DAY)),
        key("key_exp_fresh", u(), now - 10 * DAY, None),
        key(
            "key_exp_sabot",
            SimOwnerRef::ServiceAccount { id: SA.into() },
            old,
            None,
        ),
    ];
    org.projects.retain(|p| p.id == PROJECT);
    let keys = Keys {
        never: "key_exp_never".into(),
        earlier: "key_exp_early".into(),
        later: "key_exp_later".into(),
        fresh: "key_exp_fresh".into(),
        sa_old: "key_exp_sabot".into(),
    };
    (org, keys)
}

async fn start(org: SimOrg, tune: impl FnOnce(&mut SimOptions)) -> SimServer {
    let mut opts = SimOptions::new(ADMIN_KEY);
    tune(&mut opts);
    crate::support::sim::start_sim_with(org, opts).await
}

/// The `rotate-90d` policy with `action = "expire"`.
fn expire_policy() -> String {
    format!(
        "[[policies]]\nname = \"{POLICY}\"\nmax_age = \"90d\"\naction = \"expire\"\n\
         warn_before = \"7d\"\nfinal_notice = \"1d\"\n"
    )
}

/// `[safety]` with the caps lifted (the caps are tested with deletes and in the plan's tests),
/// plus `extra` lines.
fn safety(extra: &str) -> String {
    format!(
        "\n[safety]\nmax_revocations_per_run = 1000\nmax_revocations_per_project_percent = 100\n\
         max_revocations_per_day = 1000\n{extra}\n"
    )
}

fn config_text(sim: &SimServer, db: &std::path::Path, mode: &str, tables: &str) -> String {
    format!(
        r#"mode = "{mode}"
state_path = "{state}"

[[organizations]]
name = "{ORG}"
base_url = "{base}"
admin_key_env = "{KEY_ENV}"

[limits]
max_retries = 1
request_timeout = "2s"

{tables}"#,
        state = db.display(),
        base = sim.base_url(),
    )
}

/// A sweeper in `mode` with the `expire` policy and caps lifted (the usual setup here).
/// The `idle-30d` policy: `max_idle = "30d"`, `action = "expire"`, `warn_before` as given.
fn idle_policy(warn_before: &str) -> String {
    format!(
        "[[policies]]\nname = \"idle-30d\"\nmax_idle = \"30d\"\naction = \"expire\"\n\
         warn_before = \"{warn_before}\"\nfinal_notice = \"1d\"\n"
    )
}

/// An enforce sweeper with one `max_lifetime = "90d"` expire policy (`lifetime`), its state in
/// `dir`, and `safety_extra` in `[safety]`.
fn lifetime_sweeper(sim: &SimServer, dir: &std::path::Path, safety_extra: &str) -> Sweeper {
    let tables = format!(
        "[[policies]]\nname = \"lifetime\"\nmax_lifetime = \"90d\"\naction = \"expire\"\n\
         warn_before = \"7d\"\nfinal_notice = \"1d\"\n{}",
        safety(safety_extra)
    );
    sweeper(&config_text(sim, &dir.join("s.db"), "enforce", &tables))
}

fn expire_sweeper(sim: &SimServer, db: &std::path::Path, mode: &str) -> Sweeper {
    let tables = format!("{}{}", expire_policy(), safety(""));
    sweeper(&config_text(sim, db, mode, &tables))
}

/// Every `intent` audit record has an `outcome` record referring to it.
fn assert_every_intent_has_an_outcome(s: &Sweeper) {
    let rows = records(s);
    for (seq, _) in rows.iter().filter(|(_, r)| r.kind == AuditKind::Intent) {
        assert!(
            rows.iter()
                .any(|(_, r)| r.kind == AuditKind::Outcome && r.refers_to == Some(*seq)),
            "intent {seq} has no outcome"
        );
    }
}

fn sweeper(text: &str) -> Sweeper {
    let config = config_from_toml(text, &[(KEY_ENV, ADMIN_KEY)]);
    let store = Store::open(&config.state_path).unwrap();
    Sweeper::new(Arc::new(config), Some(store), Metrics::new()).unwrap()
}

async fn sweep(s: &Sweeper, now: i64) -> SweepReport {
    s.run_once(&SweepOptions::new(now)).await.unwrap()
}

fn expires_at(sim: &SimServer, key: &str) -> Option<i64> {
    sim.key(PROJECT, key).unwrap().expires_at
}

fn finding(s: &Sweeper, key: &str, policy: &str) -> Finding {
    let id = FindingId {
        organization: ORG.into(),
        project_id: PROJECT.into(),
        key_id: key.into(),
        policy: policy.into(),
    };
    s.store()
        .unwrap()
        .with_conn(|c| state::findings::get_finding(c, &id))
        .unwrap()
        .unwrap()
}

fn records(s: &Sweeper) -> Vec<(i64, AuditRecord)> {
    s.store()
        .unwrap()
        .with_conn(|c| audit::list(c, None))
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.record))
        .collect()
}

fn intents_for(s: &Sweeper, key: &str) -> usize {
    records(s)
        .iter()
        .filter(|(_, r)| r.kind == AuditKind::Intent && r.key_id.as_deref() == Some(key))
        .count()
}

fn assert_verifies(s: &Sweeper) {
    let report = s
        .store()
        .unwrap()
        .with_conn(|c| Ok(audit::verify(c)))
        .unwrap();
    assert!(report.is_ok(), "audit verify: {report:?}");
}

fn assert_nothing_deleted(sim: &SimServer, keys: &Keys) {
    for k in [
        &keys.never,
        &keys.earlier,
        &keys.later,
        &keys.fresh,
        &keys.sa_old,
    ] {
        assert!(sim.key_exists(PROJECT, k), "{k} was deleted");
    }
    assert!(
        sim.stats()
            .iter()
            .all(|(k, &n)| !k.contains("DELETE") || n == 0),
        "a DELETE was sent: {:?}",
        sim.stats()
    );
}

fn expiry_alerts(r: &SweepReport) -> Vec<String> {
    r.alerts
        .iter()
        .filter_map(|a| match a {
            EnforcerAlert::Expiry {
                key_id, message, ..
            } => Some(format!("{key_id}: {message}")),
            _ => None,
        })
        .collect()
}

/// The first enforcing sweep of [`org`] under `rotate-90d` with `expire`, and what it must have
/// done; returns the findings' deadline.
async fn first_expire_sweep(s: &Sweeper, sim: &SimServer, keys: &Keys, t: i64) -> i64 {
    let r1 = sweep(s, t).await;
    assert!(r1.complete());
    let deadline = finding(s, &keys.never, POLICY).deadline;
    assert_eq!(deadline, t + 7 * DAY);
    // Set on every violating user key that expires later or never; exactly the deadline (never
    // earlier: the client rounds up and the server counts from a later moment).
    for k in [&keys.never, &keys.later] {
        let at = expires_at(sim, k).unwrap();
        assert!(lands_on(at, deadline), "{k}: {at} vs {deadline}");
        let f = finding(s, k, POLICY);
        assert_eq!(f.expiry.set.map(|e| e.to), Some(deadline), "{k}");
        assert_eq!(intents_for(s, k), 1, "{k}");
    }
    assert_eq!(
        finding(s, &keys.later, POLICY).expiry.set.unwrap().previous,
        Some(t + 60 * DAY)
    );
    // Never shortened: the key that ends earlier keeps its own expiry, with no write at all.
    assert_eq!(expires_at(sim, &keys.earlier), Some(t + 3 * DAY));
    assert_eq!(intents_for(s, &keys.earlier), 0);
    // Compliant keys and (notify-only by default) service-account keys are not touched.
    assert_eq!(expires_at(sim, &keys.fresh), None);
    assert_eq!(expires_at(sim, &keys.sa_old), None);
    assert_eq!(intents_for(s, &keys.sa_old), 0);
    assert_nothing_deleted(sim, keys);
    // Each intent has its outcome, and a set counts against the caps like a delete.
    assert_every_intent_has_an_outcome(s);
    let counted = s
        .store()
        .unwrap()
        .with_conn(|c| state::revocations::revocations_since(c, t - 1))
        .unwrap();
    assert_eq!(counted, 2);

    deadline
}

/// One key, two `expire` findings (too old, and idle) answered by one expiry. The key is used
/// again: the idle finding closes, but the other still wants the key to end, so the expiry
/// keysweep set stays (before, it moved back out, and the next sweep set it again with a false
/// "moved outside keysweep" alert).
#[tokio::test]
async fn an_expiry_two_findings_share_stays_while_one_of_them_is_open() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let tables = format!("{}{}{}", expire_policy(), idle_policy("7d"), safety(""));
    let s = sweeper(&config_text(
        &sim,
        &dir.path().join("s.db"),
        "enforce",
        &tables,
    ));
    sweep(&s, t).await;
    let set = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(set, t + 7 * DAY), "{set}");
    sim.set_last_used(PROJECT, &keys.never, Some(t + DAY - 60))
        .unwrap();
    sweep(&s, t + DAY).await;
    assert_eq!(finding(&s, &keys.never, "idle-30d").stage, Stage::Resolved);
    assert!(finding(&s, &keys.never, POLICY).stage.is_open());
    assert_eq!(expires_at(&sim, &keys.never), Some(set), "moved back out");
    assert_eq!(intents_for(&s, &keys.never), 1, "one write");
    assert_nothing_deleted(&sim, &keys);
}

/// Policy P1 set the key's expiry; policy P2 opened later, the key already ending by its
/// deadline, so P2 set nothing and holds nothing. P1 is removed: its restore is not held back by
/// P2 (which would never make it), the expiry moves back out, and P2 then sets its own.
#[tokio::test]
async fn a_restore_is_not_held_back_by_a_finding_that_set_no_expiry() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let idle = idle_policy("7d");
    let s1 = expire_sweeper(&sim, &db, "enforce");
    sweep(&s1, t).await;
    let d1 = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(d1, t + 7 * DAY), "{d1}");
    let both = format!("{}{idle}{}", expire_policy(), safety(""));
    let s2 = sweeper(&config_text(&sim, &db, "enforce", &both));
    sweep(&s2, t + DAY).await;
    let p2 = finding(&s2, &keys.never, "idle-30d");
    assert!(p2.stage.is_open() && p2.expiry.set.is_none(), "{p2:?}");
    assert_eq!(expires_at(&sim, &keys.never), Some(d1));
    let only_idle = format!("{idle}{}", safety(""));
    let s3 = sweeper(&config_text(&sim, &db, "enforce", &only_idle));
    sweep(&s3, t + 2 * DAY).await;
    sweep(&s3, t + 3 * DAY).await;
    let at = expires_at(&sim, &keys.never).unwrap();
    assert!(
        lands_on(at, p2.deadline),
        "{at}: P2's deadline is {}",
        p2.deadline
    );
    assert_nothing_deleted(&sim, &keys);
}

/// Policy B set the key's expiry; policy A, with an earlier deadline, then set an earlier one
/// (B's expiry is A's "previous"). A is removed: B no longer holds the expiry the key has, so
/// A's restore goes ahead, back to B's expiry, instead of leaving the key to end at A's.
#[tokio::test]
async fn a_restore_goes_back_to_the_expiry_another_finding_set() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let b = idle_policy("14d");
    let only_b = format!("{b}{}", safety(""));
    let s1 = sweeper(&config_text(&sim, &db, "enforce", &only_b));
    sweep(&s1, t).await;
    let tb = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(tb, t + 14 * DAY), "{tb}");
    let both = format!("{b}{}{}", expire_policy(), safety(""));
    let s2 = sweeper(&config_text(&sim, &db, "enforce", &both));
    sweep(&s2, t + DAY).await;
    let ta = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(ta, t + 8 * DAY), "{ta}");
    let s3 = sweeper(&config_text(&sim, &db, "enforce", &only_b));
    sweep(&s3, t + 2 * DAY).await;
    let at = expires_at(&sim, &keys.never).unwrap();
    assert!((at - tb).abs() <= 120, "{at}: B set {tb}, A set {ta}");
    assert_nothing_deleted(&sim, &keys);
}

/// A listing that leaves `expires_at` out plans the expiry all the same, and the re-read before
/// the write decides: here it gives the key's real expiry (never), so the deadline is set, as
/// the notices promised. A re-read that leaves it out too writes nothing and says why.
#[tokio::test]
async fn an_expiry_the_listing_left_out_is_decided_by_the_re_read() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
    sim.faults()
        .add(Fault::on_list_keys(PROJECT).respond(FaultKind::OmitExpiresAt));
    sim.faults()
        .add(Fault::on_get_key(PROJECT, &keys.later).respond(FaultKind::OmitExpiresAt));
    sweep(&s, t).await;
    let deadline = finding(&s, &keys.never, POLICY).deadline;
    let at = expires_at(&sim, &keys.never).expect("the expiry the notices promised");
    assert!(lands_on(at, deadline), "{at}");
    // `later` (60 days out) was re-read without its expiry: nothing written, and said so.
    assert_eq!(expires_at(&sim, &keys.later), Some(t + 60 * DAY));
    let skipped = records(&s).into_iter().any(|(_, r)| {
        r.kind == AuditKind::Skipped
            && r.key_id.as_deref() == Some(keys.later.as_str())
            && r.message.contains("did not give the key's expiry")
    });
    assert!(skipped, "no skipped record for {}", keys.later);
    assert_nothing_deleted(&sim, &keys);
}

/// Expiries already set, then a listing that leaves `expires_at` out: the expiry each finding
/// last saw stands, so nothing is planned again (no write, no cap slot, no re-read).
#[tokio::test]
async fn a_listing_without_expires_at_does_not_plan_expiries_already_set() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
    first_expire_sweep(&s, &sim, &keys, t).await;
    sim.faults()
        .add(Fault::on_list_keys(PROJECT).respond(FaultKind::OmitExpiresAt));
    let r = sweep(&s, t + DAY).await;
    assert!(r.expiries.is_empty(), "{:?}", r.expiries);
    assert_eq!(intents_for(&s, &keys.never), 1);
}

/// The last-seen expiry stands in for a listing without `expires_at` only while it is ahead:
/// once it has passed and the key is still listed, the owner may have removed it, so the write
/// is planned and the re-read decides (here: removed, so it is set again).
#[tokio::test]
async fn a_last_seen_expiry_that_has_passed_does_not_stand_in_for_the_listing() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
    first_expire_sweep(&s, &sim, &keys, t).await;
    sim.set_expires_at(PROJECT, &keys.never, None).unwrap();
    sim.faults()
        .add(Fault::on_list_keys(PROJECT).respond(FaultKind::OmitExpiresAt));
    let now = t + 8 * DAY;
    sweep(&s, now).await;
    let at = expires_at(&sim, &keys.never).expect("the removed expiry was not set again");
    assert!(lands_on(at, now + 3600), "{at}");
}

/// An exemption added after keysweep set an expiry, first seen by a dry-run sweep (which writes
/// nothing): the finding closes there, and the restore it owes is kept, so the next enforce
/// sweep moves the expiry back out. Before, only a failed restore was remembered: the key ended
/// at its old deadline despite the exemption, and its owner had been told otherwise.
#[tokio::test]
async fn a_restore_first_owed_in_a_dry_run_is_done_by_the_next_enforce_sweep() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let s = expire_sweeper(&sim, &db, "enforce");
    let deadline = first_expire_sweep(&s, &sim, &keys, t).await;
    let tables = exempting(&keys.never);
    let dry = sweeper(&config_text(&sim, &db, "dry-run", &tables));
    sweep(&dry, t + DAY).await;
    assert_eq!(finding(&dry, &keys.never, POLICY).stage, Stage::Exempted);
    assert!(lands_on(expires_at(&sim, &keys.never).unwrap(), deadline));
    let enforce = sweeper(&config_text(&sim, &db, "enforce", &tables));
    let now = t + 2 * DAY;
    sweep(&enforce, now).await;
    let at = expires_at(&sim, &keys.never).unwrap();
    assert!(
        lands_on(at, now + 365 * DAY),
        "still {at}, the deadline was {deadline}"
    );
    assert!(
        !finding(&enforce, &keys.never, POLICY)
            .expiry
            .restore_pending
    );
    assert_nothing_deleted(&sim, &keys);
}

/// The expire policy with an exemption of `key`.
fn exempting(key: &str) -> String {
    format!(
        "{}\n[[exemptions]]\nkey_id = \"{key}\"\nreason = \"migration\"\n{}",
        expire_policy(),
        safety("")
    )
}

/// A gateway's 404 on the re-read before a restore is no key that ended: the restore stays
/// owed, and the next sweep, the gateway mended, moves the expiry back out. Before, the 404
/// read as "the key is already gone", the restore was dropped, and the exempted key would have
/// ended at its old deadline.
#[tokio::test]
async fn a_restore_met_by_a_gateways_404_stays_owed() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let deadline = first_expire_sweep(&expire_sweeper(&sim, &db, "enforce"), &sim, &keys, t).await;
    let s = sweeper(&config_text(&sim, &db, "enforce", &exempting(&keys.never)));
    let gateway = FaultKind::Foreign {
        status: 404,
        body: "<html><body>404 Not Found</body></html>".into(),
    };
    sim.faults()
        .add(Fault::on_get_key(PROJECT, &keys.never).respond(gateway));
    sweep(&s, t + DAY).await;
    let f = finding(&s, &keys.never, POLICY);
    assert_eq!(f.stage, Stage::Exempted);
    assert!(f.expiry.restore_pending, "the restore was dropped");
    assert!(lands_on(expires_at(&sim, &keys.never).unwrap(), deadline));
    sim.faults().clear();
    let now = t + 2 * DAY;
    sweep(&s, now).await;
    let at = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(at, now + 365 * DAY), "still {at}");
    assert!(!finding(&s, &keys.never, POLICY).expiry.restore_pending);
    assert_nothing_deleted(&sim, &keys);
}

#[tokio::test]
async fn enforce_sets_the_deadline_as_expiry_never_shortens_and_moves_it_back_out_on_exemption() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let s = expire_sweeper(&sim, &db, "enforce");

    let deadline = first_expire_sweep(&s, &sim, &keys, t).await;

    // A later sweep finds the expiries in place and writes nothing.
    let r2 = sweep(&s, t + DAY).await;
    assert!(expiry_alerts(&r2).is_empty(), "{:?}", expiry_alerts(&r2));
    assert_eq!(intents_for(&s, &keys.never), 1);

    // Moved later outside keysweep (no exemption): set back, with an enforcer alert.
    sim.set_expires_at(PROJECT, &keys.later, None).unwrap();
    let r3 = sweep(&s, t + 2 * DAY).await;
    let at = expires_at(&sim, &keys.later).unwrap();
    assert!(lands_on(at, deadline), "set back: {at}");
    let alerts = expiry_alerts(&r3);
    assert!(
        alerts
            .iter()
            .any(|a| a.starts_with(&keys.later) && a.contains("set back")),
        "{alerts:?}"
    );
    assert_eq!(
        finding(&s, &keys.later, POLICY)
            .expiry
            .set
            .unwrap()
            .previous,
        Some(t + 60 * DAY)
    );

    // An exemption added later withdraws the findings: the expiries move back out, to the key's
    // own previous expiry, else `restore_expiry` (365d) from now. Never stopped by the kill
    // switch.
    let kill = dir.path().join("kill");
    std::fs::write(&kill, "").unwrap();
    let tables = format!(
        "{}\n[[exemptions]]\nkey_id = \"{}\"\nreason = \"migration\"\n[[exemptions]]\nkey_id = \
         \"{}\"\nreason = \"migration\"\n{}",
        expire_policy(),
        keys.never,
        keys.later,
        safety(&format!("kill_switch_file = \"{}\"", kill.display()))
    );
    let s2 = sweeper(&config_text(&sim, &db, "enforce", &tables));
    let now = t + 3 * DAY;
    sweep(&s2, now).await;
    let never = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(never, now + 365 * DAY), "{never}");
    let later = expires_at(&sim, &keys.later).unwrap();
    assert!(lands_on(later, t + 60 * DAY), "{later}");
    for k in [&keys.never, &keys.later] {
        let f = finding(&s2, k, POLICY);
        assert_eq!(f.stage, Stage::Exempted);
        assert!(
            f.resolution.as_deref().unwrap_or("").contains("expiry"),
            "the resolved notice says the expiry moves back out: {:?}",
            f.resolution
        );
    }
    let restored = records(&s2)
        .into_iter()
        .filter(|(_, r)| r.kind == AuditKind::Outcome && r.message.starts_with("expiry of key"))
        .count();
    assert_eq!(restored, 5, "2 sets, 1 set back, 2 moved back out");
    assert_nothing_deleted(&sim, &keys);
    assert_verifies(&s2);
}

#[tokio::test]
async fn a_policy_relaxed_to_notify_moves_the_expiry_back_out() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let tables = format!("{}{}", expire_policy(), safety(""));
    sweep(&sweeper(&config_text(&sim, &db, "enforce", &tables)), t).await;
    assert!(lands_on(
        expires_at(&sim, &keys.never).unwrap(),
        t + 7 * DAY
    ));
    let relaxed = tables.replace("action = \"expire\"", "action = \"notify\"");
    let s = sweeper(&config_text(&sim, &db, "enforce", &relaxed));
    let now = t + DAY;
    sweep(&s, now).await;
    assert!(lands_on(
        expires_at(&sim, &keys.never).unwrap(),
        now + 365 * DAY
    ));
    assert!(lands_on(
        expires_at(&sim, &keys.later).unwrap(),
        t + 60 * DAY
    ));
    // Moved out once: the next sweep leaves it.
    sweep(&s, now + DAY).await;
    assert_eq!(intents_for(&s, &keys.never), 2);
    assert_verifies(&s);
}

/// Expire, relaxed to notify (the expiry moved back out), then expire again: the new expiry is
/// keysweep's own first write of the round, with no alert. Before, the restored finding kept
/// the old `expiry.set`, and the write after it raised a false "moved later outside keysweep".
#[tokio::test]
async fn an_expiry_set_again_after_its_restore_raises_no_alert() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let tables = format!("{}{}", expire_policy(), safety(""));
    let strict = sweeper(&config_text(&sim, &db, "enforce", &tables));
    sweep(&strict, t).await;
    let relaxed = tables.replace("action = \"expire\"", "action = \"notify\"");
    sweep(
        &sweeper(&config_text(&sim, &db, "enforce", &relaxed)),
        t + DAY,
    )
    .await;
    assert!(finding(&strict, &keys.never, POLICY).expiry.set.is_none());
    let r = sweep(&strict, t + 2 * DAY).await;
    assert!(expiry_alerts(&r).is_empty(), "{:?}", expiry_alerts(&r));
    let at = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(at, t + 9 * DAY), "{at}");
    assert_verifies(&strict);
}

#[tokio::test]
async fn at_its_expiry_a_finding_ends_as_expired_whether_or_not_the_api_lists_the_key() {
    for hide in [false, true] {
        let t = wall_now();
        let (o, keys) = org(t);
        let sim = start(o, |o| o.hide_expired_keys = hide).await;
        let dir = tempfile::tempdir().unwrap();
        let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
        sweep(&s, t).await;
        // Eight days on, on both clocks: OpenAI has ended the key at its deadline.
        sim.advance_clock(8 * DAY);
        let r = sweep(&s, t + 8 * DAY).await;
        assert!(r.complete());
        for k in [&keys.never, &keys.later, &keys.earlier] {
            let f = finding(&s, k, POLICY);
            assert_eq!(
                f.stage,
                Stage::Expired,
                "hide={hide} {k}: {:?}",
                f.resolution
            );
        }
        assert_eq!(intents_for(&s, &keys.never), 1, "no write after the expiry");
        assert!(r.revocations.is_empty());
        assert_verifies(&s);
    }
}

/// A team runs dry-run past its findings' deadlines, then turns enforce on. Its owners have
/// only read what keysweep *would* do, so the first enforce sweep warns them for real, with
/// the whole warning period: each key's expiry is set a warning period ahead (not an hour, as
/// before), and a key that already ends sooner is left alone.
#[tokio::test]
async fn enforce_after_the_deadlines_passed_in_dry_run_warns_again_with_a_whole_warning_period() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    // Detected ten days ago in dry-run: the deadlines (warn_before 7d) passed three days ago.
    let dry = expire_sweeper(&sim, &db, "dry-run");
    sweep(&dry, t - 10 * DAY).await;
    assert!(finding(&dry, &keys.never, POLICY).deadline < t - 2 * DAY);
    drop(dry);
    let s = expire_sweeper(&sim, &db, "enforce");
    let r = sweep(&s, t).await;
    let target = t + 7 * DAY;
    let f = finding(&s, &keys.never, POLICY);
    assert_eq!(
        (f.deadline, f.warned_at, f.stage),
        (target, Some(t), Stage::Warned)
    );
    let at = expires_at(&sim, &keys.never);
    assert!(
        at.is_some_and(|at| lands_on(at, target)),
        "{at:?} vs {target}"
    );
    // A key ending in 3 days ends before the new deadline: left alone.
    assert_eq!(expires_at(&sim, &keys.earlier), Some(t + 3 * DAY));
    assert!(expiry_alerts(&r).is_empty(), "{:?}", expiry_alerts(&r));
    assert!(
        !records(&s)
            .iter()
            .any(|(_, r)| r.kind == AuditKind::Outcome && r.message.contains("fail")),
        "a write failed"
    );
    // The next sweep has nothing left to write.
    let intents = intents_for(&s, &keys.never);
    sweep(&s, t + 60).await;
    assert_eq!(intents_for(&s, &keys.never), intents);
    assert_nothing_deleted(&sim, &keys);
    assert_every_intent_has_an_outcome(&s);
    assert_verifies(&s);
}

/// Two `expire` policies on one old, idle key, with different warning periods: the plan sets
/// the earlier deadline (one write per key), and the later policy's warning names the expiry
/// the key gets, not its own deadline, in dry-run ("would set") and in enforce.
#[tokio::test]
async fn two_expire_policies_on_one_key_name_the_one_expiry_it_gets() {
    let t = wall_now();
    for mode in ["dry-run", "enforce"] {
        let (o, keys) = org(t);
        let sim = start(o, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let policies = format!(
            "[[policies]]\nname = \"{POLICY}\"\nmax_age = \"90d\"\naction = \"expire\"\n\
             warn_before = \"7d\"\nnotify = [\"team\"]\n\
             [[policies]]\nname = \"idle-30d\"\nmax_idle = \"30d\"\naction = \"expire\"\n\
             warn_before = \"14d\"\nnotify = [\"team\"]\n\
             [[channels]]\nname = \"team\"\ntype = \"email\"\nsmtp_host = \"127.0.0.1\"\n\
             smtp_port = {port}\nsmtp_tls = \"none\"\nfrom = \"keysweep@example.com\"\n\
             to = [\"team@example.com\"]\n",
            port = crate::support::net::free_port()
        );
        let s = sweeper(&config_text(
            &sim,
            &db,
            mode,
            &format!("{policies}{}", safety("")),
        ));
        sweep(&s, t).await;
        let idle = finding(&s, &keys.never, "idle-30d");
        assert_eq!(idle.deadline, t + 14 * DAY);
        let target = keysweep::timefmt::rfc3339(t + 7 * DAY);
        if mode == "enforce" {
            let set = expires_at(&sim, &keys.never).unwrap();
            assert!(lands_on(set, t + 7 * DAY), "{set}");
        }
        let conn = rusqlite::Connection::open(&db).unwrap();
        let text: String = (keysweep::notify::outbox::all(&conn).unwrap().iter())
            .map(|m| m.payload["text"].as_str().unwrap_or_default().to_string())
            .collect();
        let own = keysweep::timefmt::rfc3339(t + 14 * DAY);
        let said = format!("another policy's earlier deadline; this one's is {own}");
        let line = text
            .lines()
            .find(|l| l.contains(&said))
            .unwrap_or_else(|| panic!("{mode}: no notice names the earlier expiry:\n{text}"));
        assert!(line.contains(&target), "{mode}: {line}");
        let verb = if mode == "enforce" {
            "the expiry is set to"
        } else {
            "would set the expiry to"
        };
        assert!(line.contains(verb), "{mode}: {line}");
        assert!(
            !text.contains(&format!("expiry to {own}")),
            "{mode}: a notice names the later deadline as the expiry:\n{text}"
        );
    }
}

/// `run --once` as a process says what it wrote: one line per expiry set and their count. An
/// expiry the API failed to take (500 on every try) is an error on stderr and exit status 1,
/// like a failed revocation, not a clean run.
#[tokio::test]
async fn run_once_prints_each_expiry_it_sets_and_exits_1_when_one_fails() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let tables = format!("{}{}", expire_policy(), safety(""));
    let path = dir.path().join("keysweep.toml");
    let text = config_text(&sim, &dir.path().join("s.db"), "enforce", &tables);
    std::fs::write(&path, text).unwrap();
    sim.faults().add(
        keysweep::sim::Fault::on_update_key(PROJECT, &keys.later)
            .respond(keysweep::sim::FaultKind::Status(500)),
    );
    let run = crate::support::process::keysweep(
        &["--config", path.to_str().unwrap(), "run", "--once"],
        &[(KEY_ENV, ADMIN_KEY)],
    );
    let out = crate::support::process::output(run).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let set = (stdout.lines())
        .find(|l| l.contains(&keys.never))
        .unwrap_or_else(|| panic!("no line for the key set:\n{stdout}"));
    assert!(set.contains("EXPIRY SET to"), "{set}");
    let failed = (stdout.lines())
        .find(|l| l.contains(&keys.later))
        .unwrap_or_else(|| panic!("no line for the failed write:\n{stdout}"));
    assert!(failed.contains("FAILED"), "{failed}");
    assert!(stdout.contains("expiries set: 1,"), "{stdout}");
    assert!(
        stderr.contains(&format!("the expiry of key {} in", keys.later)),
        "{stderr}"
    );
    // A sweep that cannot go on (a damaged finding in the state file) exits 1, not 2: the
    // configuration is fine.
    let conn = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
    conn.execute(
        "UPDATE findings SET data = '{\"id\": 7' WHERE key_id = ?1",
        [&keys.never],
    )
    .unwrap();
    drop(conn);
    let run = crate::support::process::keysweep(
        &["--config", path.to_str().unwrap(), "run", "--once"],
        &[(KEY_ENV, ADMIN_KEY)],
    );
    let out = crate::support::process::output(run).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the sweep failed"), "{stderr}");
}

#[tokio::test]
async fn dry_run_writes_no_expiry_and_says_it_would() {
    let t = wall_now();
    let (o, keys) = org(t);
    let before = o.clone();
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let s = expire_sweeper(&sim, &dir.path().join("s.db"), "dry-run");
    let r = sweep(&s, t).await;
    sweep(&s, t + 8 * DAY).await;
    let sorted = |mut keys: Vec<SimKey>| {
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    };
    assert_eq!(
        sorted(sim.org().projects[0].keys.clone()),
        sorted(before.projects[0].keys.clone()),
        "nothing changed"
    );
    assert!(records(&s).iter().all(|(_, r)| r.kind != AuditKind::Intent));
    assert!(
        r.findings
            .iter()
            .any(|v| v.finding.id.key_id == keys.never && v.plan.contains("withheld by mode")),
        "{:?}",
        r.findings.iter().map(|v| &v.plan).collect::<Vec<_>>()
    );
    let notice = keysweep::policy::finding::Notice {
        kind: keysweep::policy::finding::NoticeKind::Warning,
        finding: std::sync::Arc::new(finding(&s, &keys.never, POLICY)),
        dry_run: true,
        verdict: None,
        rotated: None,
        intel: None,
        key_expiry: None,
    };
    let text = keysweep::notify::digest::status_text(&notice);
    assert!(text.starts_with("would set the expiry to "), "{text}");
    assert_verifies(&s);
}

#[tokio::test]
async fn service_account_keys_get_an_expiry_only_under_service_account_keys_enforce() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let tables = format!(
        "{}{}",
        expire_policy(),
        safety("service_account_keys = \"enforce\"")
    );
    let s = sweeper(&config_text(
        &sim,
        &dir.path().join("s.db"),
        "enforce",
        &tables,
    ));
    sweep(&s, t).await;
    let at = expires_at(&sim, &keys.sa_old).unwrap();
    assert!(lands_on(at, t + 7 * DAY));
    assert!(sim.service_account_exists(PROJECT, SA));
    assert_nothing_deleted(&sim, &keys);
    assert_verifies(&s);
}

/// A service-account key is only reported under `service_account_keys = "notify-only"`, its
/// deadline passing meanwhile. Turned to `"enforce"`, the first sweep warns its owner for real
/// and sets the expiry a whole warning period ahead, not an hour: every message before said
/// keysweep would not touch the key.
#[tokio::test]
async fn a_service_account_key_reported_only_is_warned_again_when_enforcement_turns_on() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let only = sweeper(&config_text(
        &sim,
        &db,
        "enforce",
        &format!("{}{}", expire_policy(), safety("")),
    ));
    sweep(&only, t - 10 * DAY).await;
    sweep(&only, t - 2 * DAY).await;
    assert_eq!(expires_at(&sim, &keys.sa_old), None);
    drop(only);
    let tables = format!(
        "{}{}",
        expire_policy(),
        safety("service_account_keys = \"enforce\"")
    );
    let s = sweeper(&config_text(&sim, &db, "enforce", &tables));
    sweep(&s, t).await;
    let f = finding(&s, &keys.sa_old, POLICY);
    assert_eq!((f.deadline, f.warned_at), (t + 7 * DAY, Some(t)));
    let at = expires_at(&sim, &keys.sa_old).unwrap();
    assert!(lands_on(at, t + 7 * DAY), "{at}");
    assert_nothing_deleted(&sim, &keys);
}

#[tokio::test]
async fn a_max_lifetime_policy_gives_every_key_without_an_expiry_one() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let s = lifetime_sweeper(&sim, dir.path(), "service_account_keys = \"enforce\"");
    sweep(&s, t).await;
    // Old keys get their warning period; the new key its 90 days from creation.
    for k in [&keys.never, &keys.later, &keys.sa_old] {
        let at = expires_at(&sim, k).unwrap();
        assert!(lands_on(at, t + 7 * DAY), "{k}");
    }
    let fresh_target = t - 10 * DAY + 90 * DAY;
    let at = expires_at(&sim, &keys.fresh).unwrap();
    assert!(lands_on(at, fresh_target), "{at}");
    assert_eq!(expires_at(&sim, &keys.earlier), Some(t + 3 * DAY));
    // The next sweep: the new key now ends by its deadline, so it no longer violates; that is
    // the policy met, not withdrawn, and its expiry stays.
    sweep(&s, t + DAY).await;
    assert_eq!(finding(&s, &keys.fresh, "lifetime").stage, Stage::Resolved);
    assert_eq!(expires_at(&sim, &keys.fresh), Some(at));
    assert_eq!(intents_for(&s, &keys.fresh), 1);
    assert_nothing_deleted(&sim, &keys);
    assert_verifies(&s);
}

/// An open `max_lifetime` finding and a listing that leaves `expires_at` out: the answer says
/// nothing about the key's end, so the finding stays as it was (before, it closed as "no longer
/// violates", and the next whole listing opened a new one with a later deadline).
#[tokio::test]
async fn a_listing_without_expires_at_leaves_a_max_lifetime_finding_as_it_was() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let s = lifetime_sweeper(&sim, dir.path(), "");
    sweep(&s, t).await;
    let before = finding(&s, &keys.never, "lifetime");
    assert!(before.stage.is_open());
    sim.faults()
        .add(Fault::on_list_keys(PROJECT).respond(FaultKind::OmitExpiresAt));
    sweep(&s, t + DAY).await;
    let after = finding(&s, &keys.never, "lifetime");
    assert!(after.stage.is_open(), "{after:?}");
    assert_eq!(after.detected_at, before.detected_at);
    assert_eq!(after.deadline, before.deadline);
}

/// A key already older than `max_lifetime` can never end by its limit, which has passed: the
/// expiry keysweep sets at its deadline is what meets the policy. The sweeps after it keep that
/// expiry (no restore moving it back out, no second write) until the key ends.
#[tokio::test]
async fn an_old_keys_expiry_under_max_lifetime_stays_until_it_ends() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let s = lifetime_sweeper(&sim, dir.path(), "service_account_keys = \"enforce\"");
    sweep(&s, t).await;
    let set = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(set, t + 7 * DAY), "{set}");
    for day in 1..=3 {
        sweep(&s, t + day * DAY).await;
        assert_eq!(expires_at(&sim, &keys.never), Some(set), "day {day}");
    }
    assert_eq!(
        intents_for(&s, &keys.never),
        1,
        "one write, never a restore"
    );
    assert_nothing_deleted(&sim, &keys);
    assert_verifies(&s);
}

#[tokio::test]
async fn a_restore_beyond_the_organisations_limit_tries_shorter_distances_and_says_which() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |o| {
        o.max_key_lifetime = Some(Duration::from_secs(100 * 86_400))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let s = expire_sweeper(&sim, &db, "enforce");
    sweep(&s, t).await;
    let tables = format!(
        "{}\n[[exemptions]]\nkey_id = \"{}\"\nreason = \"migration\"\n{}",
        expire_policy(),
        keys.never,
        safety("")
    );
    let s2 = sweeper(&config_text(&sim, &db, "enforce", &tables));
    let r = sweep(&s2, t + DAY).await;
    // 365 and 180 days are refused by the 100-day limit; 90 days is accepted.
    let at = expires_at(&sim, &keys.never).unwrap();
    let want = t + DAY + 90 * DAY;
    assert!(lands_on(at, want), "{at} vs {want}");
    let alerts = expiry_alerts(&r);
    assert!(
        alerts
            .iter()
            .any(|a| a.starts_with(&keys.never) && a.contains("moved back out to")),
        "{alerts:?}"
    );
    assert_verifies(&s2);
}

// ---- faults of the new write ---------------------------------------------------------------

#[tokio::test]
async fn fault_an_expiry_refused_by_policy_alerts_and_leaves_the_finding_notice_only() {
    let t = wall_now();
    let (o, keys) = org(t);
    // The organisation allows 5 days at most: the 7-day deadline is refused.
    let sim = start(o, |o| {
        o.max_key_lifetime = Some(Duration::from_secs(5 * 86_400))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
    let r = sweep(&s, t).await;
    assert_eq!(expires_at(&sim, &keys.never), None);
    let alerts = expiry_alerts(&r);
    assert!(
        alerts
            .iter()
            .any(|a| a.starts_with(&keys.never) && a.contains("notice-only")),
        "{alerts:?}"
    );
    let f = finding(&s, &keys.never, POLICY);
    assert!(f.expiry.refused.is_some());
    assert_eq!(f.deadline, t + 7 * DAY, "the deadline stands");
    assert!(f.stage.is_open());
    // Notice-only: the next sweep writes nothing more.
    sweep(&s, t + DAY).await;
    assert_eq!(intents_for(&s, &keys.never), 1);
    assert_nothing_deleted(&sim, &keys);
    assert_verifies(&s);
}

#[tokio::test]
async fn fault_an_update_on_a_key_that_expired_meanwhile_is_recorded_and_the_finding_ends_expired()
{
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    sim.faults().add(
        Fault::on_update_key(PROJECT, &keys.never)
            .respond(FaultKind::Apply(SimEffect::SetExpiresAt {
                project: PROJECT.into(),
                key: keys.never.clone(),
                at: Some(t - 60),
            }))
            .once(),
    );
    let dir = tempfile::tempdir().unwrap();
    let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
    let r = sweep(&s, t).await;
    let outcome = r.expiries.iter().find(|e| e.key_id == keys.never).unwrap();
    assert_eq!(outcome.outcome_label(), "key_expired");
    assert_eq!(expires_at(&sim, &keys.never), Some(t - 60));
    sweep(&s, t + DAY).await;
    assert_eq!(finding(&s, &keys.never, POLICY).stage, Stage::Expired);
    assert_nothing_deleted(&sim, &keys);
    assert_verifies(&s);
}

#[tokio::test]
async fn fault_5xx_and_timeouts_during_an_update_alert_and_the_next_sweep_sets_it() {
    for kind in [
        FaultKind::Status(503),
        FaultKind::Delay(Duration::from_secs(3)),
    ] {
        let t = wall_now();
        let (o, keys) = org(t);
        let sim = start(o, |_| {}).await;
        let fault = sim
            .faults()
            .add(Fault::on_update_key(PROJECT, &keys.never).respond(kind.clone()));
        let dir = tempfile::tempdir().unwrap();
        let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
        let r = sweep(&s, t).await;
        assert!(sim.faults().hits(fault) >= 2, "{kind:?}: retried");
        let alerts = expiry_alerts(&r);
        assert!(
            alerts
                .iter()
                .any(|a| a.starts_with(&keys.never) && a.contains("failed")),
            "{kind:?}: {alerts:?}"
        );
        assert!(finding(&s, &keys.never, POLICY).expiry.set.is_none());
        // The other key was not held up.
        assert!(expires_at(&sim, &keys.later).unwrap() <= t + 7 * DAY + SLACK);
        sim.faults().clear();
        sweep(&s, t + 60).await;
        let at = expires_at(&sim, &keys.never).unwrap();
        assert!(lands_on(at, t + 7 * DAY), "{kind:?}: {at}");
        assert_eq!(
            finding(&s, &keys.never, POLICY).expiry.set.map(|e| e.to),
            Some(t + 7 * DAY)
        );
        assert_nothing_deleted(&sim, &keys);
        assert_verifies(&s);
    }
}

#[tokio::test]
async fn fault_a_crash_between_intent_and_outcome_is_reconciled_by_reading_the_expiry_back() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let s = expire_sweeper(&sim, &db, "enforce");
    // A first sweep with every update failing: findings open, nothing set.
    sim.faults()
        .add(Fault::on_update_key(PROJECT, &keys.never).respond(FaultKind::Status(500)));
    sim.faults()
        .add(Fault::on_update_key(PROJECT, &keys.later).respond(FaultKind::Status(500)));
    sweep(&s, t).await;
    sim.faults().clear();
    let deadline = t + 7 * DAY;
    // What a crash leaves: an intent committed, the update applied by the server, no outcome.
    // (For `later`, the update never arrived.)
    for (k, applied) in [(&keys.never, true), (&keys.later, false)] {
        let snapshot = sim.key(PROJECT, k).unwrap();
        let mut intent = AuditRecord::new(
            t + 10,
            "crashed-run",
            AuditKind::Intent,
            keysweep::config::Mode::Enforce,
            "hash",
            format!("setting the expiry of key {k}"),
        );
        intent.organization = Some(ORG.into());
        intent.project_id = Some(PROJECT.into());
        intent.key_id = Some(k.to_string());
        intent.policy = Some(POLICY.into());
        intent.inputs = serde_json::json!({
            "write": "set_expiry",
            "expires_at": deadline,
            "previous_expires_at": snapshot.expires_at,
        });
        audit::append_durable(s.store().unwrap(), &intent).unwrap();
        if applied {
            sim.set_expires_at(PROJECT, k, Some(deadline)).unwrap();
        }
    }
    // Stop the second key being written again in this sweep, to see what reconcile decided.
    sim.faults()
        .add(Fault::on_update_key(PROJECT, &keys.later).respond(FaultKind::Status(500)));
    sweep(&s, t + 20).await;
    let rows = records(&s);
    let reconciled: Vec<&AuditRecord> = rows
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.kind == AuditKind::Reconciled)
        .collect();
    assert_eq!(reconciled.len(), 2);
    let of = |k: &str| {
        reconciled
            .iter()
            .find(|r| r.key_id.as_deref() == Some(k))
            .unwrap()
            .response["expiry_set"]
            .as_bool()
    };
    assert_eq!(of(&keys.never), Some(true));
    assert_eq!(of(&keys.later), Some(false));
    // The applied one is recorded on its finding, as if the sweep had finished.
    assert_eq!(
        finding(&s, &keys.never, POLICY).expiry.set.map(|e| e.to),
        Some(deadline)
    );
    assert_eq!(
        intents_for(&s, &keys.never),
        2,
        "the crashed intent; no second update"
    );
    assert_nothing_deleted(&sim, &keys);
    assert_verifies(&s);
}

#[tokio::test]
async fn fault_a_failed_restore_is_retried_by_later_sweeps_until_the_expiry_moves_back_out() {
    // Withdrawn by an exemption (the finding closes) or by relaxing the policy (it stays open
    // as notify-only): either way a 503 on the move back out leaves it owed, not forgotten.
    for exempt in [true, false] {
        let t = wall_now();
        let (o, keys) = org(t);
        let sim = start(o, |_| {}).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let s = expire_sweeper(&sim, &db, "enforce");
        let tables = format!("{}{}", expire_policy(), safety(""));
        let deadline = first_expire_sweep(&s, &sim, &keys, t).await;

        let withdrawn = if exempt {
            format!(
                "{}\n[[exemptions]]\nkey_id = \"{}\"\nreason = \"migration\"\n{}",
                expire_policy(),
                keys.never,
                safety("")
            )
        } else {
            tables.replace("action = \"expire\"", "action = \"notify\"")
        };
        let s = sweeper(&config_text(&sim, &db, "enforce", &withdrawn));
        let fault = sim
            .faults()
            .add(Fault::on_update_key(PROJECT, &keys.never).respond(FaultKind::Status(503)));
        // Two sweeps fail: the first withdraws the finding, the second retries from the
        // marker alone (for the exemption, from a closed finding no listing step sees).
        for (i, now) in [t + DAY, t + 2 * DAY].into_iter().enumerate() {
            let r = sweep(&s, now).await;
            let alerts = expiry_alerts(&r);
            assert!(
                alerts
                    .iter()
                    .any(|a| a.starts_with(&keys.never) && a.contains("retries")),
                "exempt={exempt} sweep {i}: {alerts:?}"
            );
            let at = expires_at(&sim, &keys.never).unwrap();
            assert!(lands_on(at, deadline), "still the deadline: {at}");
            let f = finding(&s, &keys.never, POLICY);
            assert!(f.expiry.restore_pending, "exempt={exempt} sweep {i}: {f:?}");
            assert_eq!(f.stage == Stage::Exempted, exempt);
        }
        assert!(
            sim.faults().hits(fault) >= 4,
            "both sweeps tried (with a retry)"
        );
        assert_eq!(
            intents_for(&s, &keys.never),
            3,
            "one set, two restore attempts"
        );

        sim.faults().clear();
        // A sweep that cannot list the project writes nothing to it, an owed restore included.
        let listing = sim
            .faults()
            .add(Fault::on_list_keys(PROJECT).respond(FaultKind::Status(500)));
        let r = sweep(&s, t + 2 * DAY + 3600).await;
        assert!(!r.complete() && sim.faults().hits(listing) >= 1);
        assert_eq!(intents_for(&s, &keys.never), 3, "exempt={exempt}: no write");
        assert!(finding(&s, &keys.never, POLICY).expiry.restore_pending);
        sim.faults().clear();
        let now = t + 3 * DAY;
        sweep(&s, now).await;
        let at = expires_at(&sim, &keys.never).unwrap();
        assert!(
            lands_on(at, now + 365 * DAY),
            "exempt={exempt}: moved out: {at}"
        );
        assert!(!finding(&s, &keys.never, POLICY).expiry.restore_pending);
        // Done: later sweeps leave it.
        sweep(&s, now + DAY).await;
        assert_eq!(intents_for(&s, &keys.never), 4, "exempt={exempt}");
        // Each attempt has its intent and outcome.
        assert_every_intent_has_an_outcome(&s);
        assert_nothing_deleted(&sim, &keys);
        assert_verifies(&s);
    }
}

#[tokio::test]
async fn fault_a_crashed_expiry_intent_whose_key_ended_meanwhile_settles_without_an_alert() {
    // Listed past its expiry (the default) or answering 404 (hidden): either way the key has
    // ended, so the intent is settled and the finding ends on the sweep's normal path.
    for hide in [false, true] {
        let t = wall_now();
        let (o, keys) = org(t);
        let sim = start(o, |o| o.hide_expired_keys = hide).await;
        let dir = tempfile::tempdir().unwrap();
        let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
        let deadline = first_expire_sweep(&s, &sim, &keys, t).await;
        // A crash after the intent of a set; meanwhile the key expired.
        let mut intent = AuditRecord::new(
            t + 10,
            "crashed-run",
            AuditKind::Intent,
            keysweep::config::Mode::Enforce,
            "hash",
            format!("setting the expiry of key {}", keys.never),
        );
        intent.organization = Some(ORG.into());
        intent.project_id = Some(PROJECT.into());
        intent.key_id = Some(keys.never.clone());
        intent.policy = Some(POLICY.into());
        intent.inputs = serde_json::json!({
            "write": "set_expiry",
            "expires_at": deadline + DAY,
            "previous_expires_at": null,
        });
        audit::append_durable(s.store().unwrap(), &intent).unwrap();
        sim.set_expires_at(PROJECT, &keys.never, Some(t - 60))
            .unwrap();
        let r = sweep(&s, t + 20).await;
        let unsettled: Vec<_> = r
            .alerts
            .iter()
            .filter(|a| matches!(a, EnforcerAlert::RevocationFailed { .. }))
            .collect();
        assert!(unsettled.is_empty(), "hide={hide}: {unsettled:?}");
        let rows = records(&s);
        let reconciled: Vec<&AuditRecord> = rows
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.kind == AuditKind::Reconciled)
            .collect();
        assert_eq!(reconciled.len(), 1, "hide={hide}");
        assert_eq!(reconciled[0].response["expiry_set"].as_bool(), Some(false));
        assert_eq!(reconciled[0].response["key_ended"].as_bool(), Some(true));
        let stage = finding(&s, &keys.never, POLICY).stage;
        assert!(
            matches!(stage, Stage::Expired | Stage::Resolved),
            "hide={hide}: {stage:?}"
        );
        assert!(!stage.is_open());
        assert_nothing_deleted(&sim, &keys);
        assert_verifies(&s);
    }
}

/// The re-check before an expiry set keeps a key for the same reasons as the one before a
/// DELETE: a key renamed between the listing and the write is someone acting on it right now,
/// so this sweep leaves it, and the next one decides on what it lists.
#[tokio::test]
async fn fault_a_key_renamed_between_listing_and_expiry_write_is_left_for_the_next_sweep() {
    let t = wall_now();
    let (o, keys) = org(t);
    let sim = start(o, |_| {}).await;
    sim.faults().add(
        Fault::on_get_key(PROJECT, &keys.never)
            .once()
            .respond(FaultKind::Apply(SimEffect::rename(
                PROJECT,
                &keys.never,
                "renamed\u{202e} by its owner",
            ))),
    );
    let dir = tempfile::tempdir().unwrap();
    let s = expire_sweeper(&sim, &dir.path().join("s.db"), "enforce");
    let r = sweep(&s, t).await;
    let outcome = r.expiries.iter().find(|e| e.key_id == keys.never).unwrap();
    assert_eq!(outcome.outcome_label(), "skipped");
    assert!(
        matches!(&outcome.outcome, ExpiryOutcome::Skipped { reason }
            if reason.contains("renamed") && !reason.contains('\u{202e}')),
        "{:?}",
        outcome.outcome
    );
    assert_eq!(expires_at(&sim, &keys.never), None);
    assert_eq!(intents_for(&s, &keys.never), 0);
    // The other key was written as usual, and the next sweep writes the renamed one.
    assert!(expires_at(&sim, &keys.later).unwrap() <= t + 7 * DAY + SLACK);
    sweep(&s, t + 60).await;
    let at = expires_at(&sim, &keys.never).unwrap();
    assert!(lands_on(at, t + 7 * DAY), "{at}");
    assert_nothing_deleted(&sim, &keys);
    assert_verifies(&s);
}

/// Weekly sweeps (Mondays, 00:00 UTC) and a one-day final notice: the final notice goes out in
/// the sweep a week before the expiry, because the next scheduled one would come after OpenAI
/// ended the key. A run between them (an operator's `run --once`) leaves it for that sweep.
#[tokio::test]
async fn weekly_sweeps_send_the_final_notice_before_the_expiry_not_after_it() {
    let now = wall_now();
    let (org, keys) = org(now);
    let sim = start(org, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let policy = format!(
        "[[policies]]\nname = \"{POLICY}\"\nmax_age = \"90d\"\naction = \"expire\"\n\
         warn_before = \"14d\"\nfinal_notice = \"1d\"\n{}",
        safety("")
    );
    let text = config_text(&sim, &db, "enforce", &policy).replacen(
        "mode = ",
        "schedule = \"0 0 * * 1\"\nmode = ",
        1,
    );
    let s = sweeper(&text);
    // The next Monday, 00:00 UTC (1970-01-01 was a Thursday).
    let day = now / DAY + 1;
    let monday = (day + (4 - day % 7 + 7) % 7) * DAY;
    assert_eq!((monday / DAY + 3) % 7, 0, "{monday} is a Monday");

    assert!(sweep(&s, monday).await.complete());
    let f = finding(&s, &keys.never, POLICY);
    assert_eq!((f.deadline, f.final_notice_at), (monday + 14 * DAY, None));
    // Wednesday: the next sweep (Monday) is before the notice is due (Sunday): not yet.
    assert!(sweep(&s, monday + 2 * DAY).await.complete());
    assert_eq!(finding(&s, &keys.never, POLICY).final_notice_at, None);
    // Monday: the next sweep comes at the deadline, after the notice is due: now.
    assert!(sweep(&s, monday + 7 * DAY).await.complete());
    let f = finding(&s, &keys.never, POLICY);
    assert_eq!(f.final_notice_at, Some(monday + 7 * DAY));
    assert_eq!(f.stage, Stage::FinalNotice);
    assert_nothing_deleted(&sim, &keys);
}
