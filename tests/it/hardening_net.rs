//! Issue 14's network and secret rows, each reproduced against real parts: the simulator over
//! HTTP (in process, or `keysweep simulate --org-file` for hostile ids), the real sweep, the
//! real binary, a real SMTP server with AUTH, and tiny real servers written here (a proxy that
//! records who connects, receivers whose error bodies never end, slow ops clients).
//!
//! Rows: 2 (lettre's session log), 5 (redirects on the Admin API), 6 (ids from the API and the
//! re-check's id and owner), 10 (Slack webhook URLs over https), 11 (the ops server against slow
//! and many clients), 12 (receivers' error bodies read bounded), 13 (`check-config` redacts
//! URLs), 14 (proxies never see a loopback admin key; the SMTP user name scrubbed), and the
//! secrets "Done when" end to end. Nothing here talks to anything but loopback, holds a real
//! secret or asserts a speed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keysweep::config::Config;
use keysweep::inventory::Listing;
use keysweep::metrics::Metrics;
use keysweep::revoke::Outcome;
use keysweep::sim::{
    FORMAT_VERSION, Fault, FaultKind, SimAccess, SimKey, SimMember, SimOrg, SimOwnerRef,
    SimProject, SimUser,
};
use keysweep::state::Store;
use keysweep::sweep::{SweepOptions, SweepReport, Sweeper};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::support::config::config_from_toml;
use crate::support::process::{Simulator, run_to_end};
use crate::support::time::DAY;

const ADMIN_KEY: &str = "sk-admin-HARDNET-4e1b77c0-NEVER-SHOW";
const KEY_ENV: &str = "KS_HARDNET_ADMIN_KEY";
/// 2026-01-01T00:00:00Z: the in-process sweeps' clock.
const NOW: i64 = 1_767_225_600;
/// The second sweep, after the 14-day warning: violating keys are deleted then.
const LATER: i64 = NOW + 15 * DAY;

// ---- the organisation ----------------------------------------------------------------------

fn user(id: &str) -> SimUser {
    SimUser {
        id: id.into(),
        name: format!("User {id}"),
        email: format!("{id}@example.com"),
        created_at: NOW - 900 * DAY,
    }
}

fn member(id: &str) -> SimMember {
    SimMember {
        user_id: id.into(),
        role: "member".into(),
        added_at: NOW - 800 * DAY,
        access: SimAccess::Active,
    }
}

/// A key of alice's, created `age` days before [`NOW`], never used.
fn key(id: &str, age: i64) -> SimKey {
    SimKey {
        id: id.into(),
        name: "some-key".into(),
        redacted_value: "sk-proj-****Ab12".into(),
        created_at: NOW - age * DAY,
        last_used_at: None,
        expires_at: None,
        scopes: Vec::new(),
        owner: SimOwnerRef::User {
            id: "user_alice".into(),
        },
    }
}

fn project(id: &str, keys: Vec<SimKey>) -> SimProject {
    SimProject {
        id: id.into(),
        name: Some("a project".into()),
        created_at: NOW - 850 * DAY,
        archived_at: None,
        external_key_id: None,
        members: vec![member("user_alice"), member("user_mallory")],
        service_accounts: Vec::new(),
        keys,
    }
}

fn org(projects: Vec<SimProject>) -> SimOrg {
    SimOrg {
        format: FORMAT_VERSION,
        generated_at: NOW,
        users: vec![user("user_alice"), user("user_mallory")],
        admin_api_keys: Vec::new(),
        projects,
    }
}

// ---- the sweep -----------------------------------------------------------------------------

/// Enforce mode, one organisation at `base`, a 90-day `max_age` that revokes after a 14-day
/// warning, caps lifted.
fn enforce_toml(base: &str, state: &Path) -> String {
    format!(
        r#"mode = "enforce"
state_path = "{state}"

[[organizations]]
name = "acme"
base_url = "{base}"
admin_key_env = "{KEY_ENV}"

[limits]
max_retries = 0
request_timeout = "20s"

[[policies]]
name = "max-age"
max_age = "90d"
action = "revoke"
warn_before = "14d"

[safety]
max_revocations_per_run = 1000
max_revocations_per_project_percent = 100
max_revocations_per_day = 1000
"#,
        state = state.display(),
    )
}

fn sweeper(base: &str, state: &Path) -> Sweeper {
    let config: Config = config_from_toml(&enforce_toml(base, state), &[(KEY_ENV, ADMIN_KEY)]);
    let store = Store::open(&config.state_path).unwrap();
    Sweeper::new(Arc::new(config), Some(store), Metrics::new()).unwrap()
}

/// Two sweeps: the first warns, the second (after the warning period) deletes.
async fn two_sweeps(base: &str, state: &Path) -> (SweepReport, SweepReport) {
    let s = sweeper(base, state);
    let r1 = s.run_once(&SweepOptions::new(NOW)).await.unwrap();
    let r2 = s.run_once(&SweepOptions::new(LATER)).await.unwrap();
    (r1, r2)
}

fn outcome(r: &SweepReport, key: &str) -> Outcome {
    r.revocations
        .iter()
        .find(|x| x.key_ids == [key.to_string()])
        .map(|x| x.outcome.clone())
        .unwrap_or_else(|| panic!("no revocation result for {key}: {:?}", r.revocations))
}

fn listing<'a>(r: &'a SweepReport, project: &str) -> &'a Listing {
    &r.inventory.orgs[0]
        .projects
        .iter()
        .find(|p| p.project.id == project)
        .unwrap_or_else(|| panic!("{project} not in the inventory"))
        .listing
}

/// DELETE requests the simulator served, whatever their route.
fn deletes(stats: impl IntoIterator<Item = (String, u64)>) -> u64 {
    stats
        .into_iter()
        .filter(|(route, _)| route.starts_with("DELETE "))
        .map(|(_, n)| n)
        .sum()
}

// ---- row 5: redirects ----------------------------------------------------------------------

/// The API answers the DELETE of an old key with a same-host 307 to ANOTHER key's path. Followed,
/// it would re-send the DELETE (admin key included) there and delete the bystander, and the old
/// key would be counted as revoked. Refused: one DELETE reaches the server, a clear error says
/// redirects are refused, nothing is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_on_delete_is_an_error_and_never_a_second_delete() {
    let sim = crate::support::sim::start_sim(
        org(vec![project(
            "proj_a",
            vec![key("key_target", 400), key("key_bystander", 10)],
        )]),
        ADMIN_KEY,
    )
    .await;
    let redirect = sim
        .faults()
        .add(
            Fault::on_delete_key("proj_a", "key_target").respond(FaultKind::Redirect {
                status: 307,
                location: "/v1/organization/projects/proj_a/api_keys/key_bystander".into(),
            }),
        );
    let dir = tempfile::tempdir().unwrap();
    let (_, r2) = two_sweeps(&sim.base_url(), &dir.path().join("state.db")).await;

    assert_eq!(sim.faults().hits(redirect), 1, "the redirect was followed");
    assert_eq!(deletes(sim.stats()), 1, "{:?}", sim.stats());
    assert!(
        sim.key_exists("proj_a", "key_bystander"),
        "the bystander was deleted"
    );
    assert!(sim.key_exists("proj_a", "key_target"));
    assert_eq!(r2.revoked_count(), 0, "{:?}", r2.revocations);
    match outcome(&r2, "key_target") {
        Outcome::Failed { error } => {
            assert!(
                error.contains("307") && error.contains("redirects are refused"),
                "unclear error: {error}"
            );
            assert!(!error.contains(ADMIN_KEY));
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ---- row 6: ids ----------------------------------------------------------------------------

/// Ids URL building would normalise into another path, or that no OpenAI id looks like.
const HOSTILE_KEY_IDS: [&str; 4] = ["..", ".\t.", "key_b\n", "key/../x"];

/// `keysweep simulate --org-file` serves keys whose ids are `..`, `.\t.`, `key_b\n` and
/// `key/../x` next to a plain old key in one project, and a clean project beside it. The hostile
/// project's listing is incomplete (naming the malformed id), so nothing in it is deleted — not
/// even its plain old key — while the clean project is swept as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_ids_leave_their_project_incomplete_and_untouched() {
    let mut hostile = vec![key("key_plain_old", 400)];
    hostile.extend(HOSTILE_KEY_IDS.iter().map(|id| key(id, 400)));
    let org = org(vec![
        project("proj_clean", vec![key("key_clean_old", 400)]),
        project("proj_hostile", hostile),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let org_file = dir.path().join("org.json");
    std::fs::write(&org_file, org.to_json_pretty()).unwrap();
    let sim = Simulator::start(&["--org-file", org_file.to_str().unwrap()], ADMIN_KEY);
    let base = format!("http://127.0.0.1:{}/v1", sim.port);

    let (r1, r2) = two_sweeps(&base, &dir.path().join("state.db")).await;
    for r in [&r1, &r2] {
        assert_eq!(listing(r, "proj_clean"), &Listing::Complete);
        match listing(r, "proj_hostile") {
            Listing::Incomplete(reason) => assert!(reason.contains("malformed id"), "{reason}"),
            Listing::Complete => panic!("a listing with hostile ids counted as complete"),
        }
    }
    let revoked: Vec<&str> = r2
        .revocations
        .iter()
        .flat_map(|r| r.key_ids.iter().map(String::as_str))
        .collect();
    assert_eq!(revoked, ["key_clean_old"], "{:?}", r2.revocations);
    assert!(matches!(outcome(&r2, "key_clean_old"), Outcome::Deleted));
    let stats = tokio::task::spawn_blocking(move || sim.stats())
        .await
        .unwrap();
    let stats = stats["requests"].as_object().unwrap().clone();
    let stats = stats
        .into_iter()
        .map(|(k, v)| (k, v.as_u64().unwrap_or_default()));
    assert_eq!(
        deletes(stats),
        1,
        "a DELETE went somewhere in the hostile project"
    );
}

/// A project whose id is not an id makes the organisation's project list incomplete: the sweep
/// is incomplete and deletes nothing at all, not even in the clean project listed beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_project_id_leaves_the_organisation_incomplete() {
    let sim = crate::support::sim::start_sim(
        org(vec![
            project("proj_clean", vec![key("key_clean_old", 400)]),
            project("proj_x/..", vec![key("key_other_old", 400)]),
        ]),
        ADMIN_KEY,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = two_sweeps(&sim.base_url(), &dir.path().join("state.db")).await;
    for r in [&r1, &r2] {
        assert!(!r.complete());
        let error = r.inventory.orgs[0].error.as_deref().unwrap_or_default();
        assert!(error.contains("malformed id"), "{error:?}");
    }
    assert!(r2.revocations.is_empty(), "{:?}", r2.revocations);
    assert_eq!(deletes(sim.stats()), 0);
    assert!(sim.key_exists("proj_clean", "key_clean_old"));
}

/// The re-read before a DELETE answers for another key id, or with another owner, than the
/// listing: the DELETE is skipped with a reason, and a plain key beside them still goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recheck_skips_a_key_whose_reread_has_another_id_or_owner() {
    let sim = crate::support::sim::start_sim(
        org(vec![project(
            "proj_a",
            vec![
                key("key_id_swap", 400),
                key("key_owner_swap", 400),
                key("key_plain", 400),
            ],
        )]),
        ADMIN_KEY,
    )
    .await;
    sim.faults().add(
        Fault::on_get_key("proj_a", "key_id_swap").respond(FaultKind::Patch(json!({
            "id": "key_plain"
        }))),
    );
    sim.faults().add(
        Fault::on_get_key("proj_a", "key_owner_swap").respond(FaultKind::Patch(json!({
            "owner": {"type": "user", "user": {
                "id": "user_mallory", "name": "Mallory", "email": "user_mallory@example.com",
                "role": "member", "created_at": NOW - 900 * DAY
            }}
        }))),
    );
    let dir = tempfile::tempdir().unwrap();
    let (_, r2) = two_sweeps(&sim.base_url(), &dir.path().join("state.db")).await;

    let skipped = |k: &str| match outcome(&r2, k) {
        Outcome::SkippedAfterRecheck { reason } => reason,
        other => panic!("{k}: expected a skip, got {other:?}"),
    };
    let id_reason = skipped("key_id_swap");
    assert!(id_reason.contains("\"key_plain\""), "{id_reason}");
    let owner_reason = skipped("key_owner_swap");
    assert!(
        owner_reason.contains("owner changed") && owner_reason.contains("user_mallory"),
        "{owner_reason}"
    );
    assert!(sim.key_exists("proj_a", "key_id_swap"));
    assert!(sim.key_exists("proj_a", "key_owner_swap"));
    assert!(matches!(outcome(&r2, "key_plain"), Outcome::Deleted));
    assert!(!sim.key_exists("proj_a", "key_plain"));
}

/// The same for an expiry: the re-read before the update answers with another owner than the
/// listing, so no expiry is written to that key, while the plain key beside it gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_recheck_skips_a_key_whose_reread_has_another_owner() {
    use keysweep::revoke::expiry::ExpiryOutcome;
    let sim = crate::support::sim::start_sim(
        org(vec![project(
            "proj_a",
            vec![key("key_owner_swap", 400), key("key_plain", 400)],
        )]),
        ADMIN_KEY,
    )
    .await;
    sim.faults().add(
        Fault::on_get_key("proj_a", "key_owner_swap").respond(FaultKind::Patch(json!({
            "owner": {"type": "user", "user": {
                "id": "user_mallory", "name": "Mallory", "email": "user_mallory@example.com",
                "role": "member", "created_at": NOW - 900 * DAY
            }}
        }))),
    );
    let dir = tempfile::tempdir().unwrap();
    let text = enforce_toml(&sim.base_url(), &dir.path().join("state.db"))
        .replace(r#"action = "revoke""#, r#"action = "expire""#);
    let config: Config = config_from_toml(&text, &[(KEY_ENV, ADMIN_KEY)]);
    let store = Store::open(&config.state_path).unwrap();
    let s = Sweeper::new(Arc::new(config), Some(store), Metrics::new()).unwrap();
    // Expiries are written against the wall clock: sweep at the wall clock.
    let now = chrono::Utc::now().timestamp();
    let r = s.run_once(&SweepOptions::new(now)).await.unwrap();
    let outcome = |k: &str| {
        r.expiries
            .iter()
            .find(|e| e.key_id == k)
            .map(|e| e.outcome.clone())
            .unwrap_or_else(|| panic!("no expiry result for {k}: {:?}", r.expiries))
    };
    match outcome("key_owner_swap") {
        ExpiryOutcome::Skipped { reason } => assert!(
            reason.contains("owner changed") && reason.contains("user_mallory"),
            "{reason}"
        ),
        other => panic!("expected a skip, got {other:?}"),
    }
    assert!(matches!(outcome("key_plain"), ExpiryOutcome::Set { .. }));
    assert_eq!(
        sim.key("proj_a", "key_owner_swap").unwrap().expires_at,
        None
    );
    assert!(sim.key("proj_a", "key_plain").unwrap().expires_at.is_some());
}

/// Whatever an id's source (the state database, the configuration), the client refuses to
/// build a URL from one that is not of an id's shape: nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sends_nothing_for_an_id_of_the_wrong_shape() {
    use keysweep::openai::{AdminClient, ClientShared, Error};
    let sim = crate::support::sim::start_sim(
        org(vec![project("proj_a", vec![key("key_a", 400)])]),
        ADMIN_KEY,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config: Config = config_from_toml(
        &enforce_toml(&sim.base_url(), &dir.path().join("state.db")),
        &[(KEY_ENV, ADMIN_KEY)],
    );
    let shared = ClientShared::new(Metrics::new(), &config.limits);
    let client = AdminClient::new(&config.organizations[0], &config.limits, shared).unwrap();
    for bad in HOSTILE_KEY_IDS {
        let read = client.retrieve_key("proj_a", bad).await;
        assert!(
            matches!(read, Err(Error::BadId { .. })),
            "{bad:?}: {read:?}"
        );
        let delete = client.delete_key("proj_a", bad).await;
        assert!(
            matches!(delete, Err(Error::BadId { .. })),
            "{bad:?}: {delete:?}"
        );
        let delete = client.delete_key(bad, "key_a").await;
        assert!(
            matches!(delete, Err(Error::BadId { .. })),
            "{bad:?}: {delete:?}"
        );
    }
    assert!(sim.stats().is_empty(), "{:?}", sim.stats());
    assert!(sim.key_exists("proj_a", "key_a"));
}

// ---- the binary ----------------------------------------------------------------------------

/// A configuration file in `dir`: dry-run, one organisation at `base`, a `max_age` policy that
/// notifies `notify`, then `tail` (channels, `[server]`, …).
fn config_file(dir: &Path, base: &str, notify: &str, tail: &str) -> std::path::PathBuf {
    let path = dir.join("keysweep.toml");
    let text = format!(
        r#"mode = "dry-run"
state_path = "{state}"
schedule = "0 0 1 1 *"

[[organizations]]
name = "acme"
base_url = "{base}"
admin_key_env = "{KEY_ENV}"

[limits]
max_retries = 0
request_timeout = "20s"

[[policies]]
name = "max-age"
max_age = "90d"
action = "notify"
notify = [{notify}]
{tail}"#,
        state = dir.join("state.db").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the binary with `--config file` and `env` (plus the admin key).
async fn run(file: &Path, args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let mut all = vec!["--config", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut env: Vec<(&str, String)> = env.to_vec();
    env.push((KEY_ENV, ADMIN_KEY.to_string()));
    let (status, out, err) = run_to_end(&all, &env).await;
    (status.success(), out, err)
}

// ---- row 10: Slack webhook URLs ------------------------------------------------------------

/// A Slack webhook URL (itself the secret) must be https://; http:// only to a loopback host.
/// The refusal names the file and the channel's key, never the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_webhook_urls_must_be_https_except_to_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let slack =
        "\n[[channels]]\nname = \"slack\"\ntype = \"slack\"\nwebhook_url_env = \"KS_HN_SLACK\"\n";
    let file = config_file(dir.path(), "https://api.openai.com/v1", "\"slack\"", slack);
    let check =
        async |url: &str| run(&file, &["check-config"], &[("KS_HN_SLACK", url.into())]).await;

    for bad in [
        "http://hooks.slack.com/services/T0/B0/plainTOKENsecret",
        "ftp://hooks.slack.com/services/T0/B0/plainTOKENsecret",
        "hooks.slack.com/services/T0/B0/plainTOKENsecret",
    ] {
        let (ok, out, err) = check(bad).await;
        assert!(!ok, "{bad} accepted: {out}");
        assert!(err.contains("channels[0].webhook_url"), "{err}");
        assert!(
            err.contains(file.to_str().unwrap()),
            "the file is not named: {err}"
        );
        assert!(err.contains("https://"), "{err}");
        assert!(!format!("{out}{err}").contains("plainTOKENsecret"), "{err}");
    }
    for good in [
        "https://hooks.slack.com/services/T0/B0/plainTOKENsecret",
        "http://127.0.0.1:9/services/T0/B0/plainTOKENsecret",
        "http://localhost:9/services/T0/B0/plainTOKENsecret",
    ] {
        let (ok, out, err) = check(good).await;
        assert!(ok, "{good} refused: {err}");
        assert!(!format!("{out}{err}").contains("plainTOKENsecret"), "{out}");
    }
}

// ---- row 13: check-config redacts URLs -----------------------------------------------------

/// Webhook and PagerDuty URLs carry tokens in their user-info, query or fragment: check-config
/// shows scheme, host and path only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_redacts_user_info_query_and_fragment_of_urls() {
    let dir = tempfile::tempdir().unwrap();
    let tail = r#"
[[channels]]
name = "hook"
type = "webhook"
url = "https://hookUSER:hookPASSWORD@hooks.example.com/in/path?token=QUERYtoken#FRAGtoken"
secret_env = "KS_HN_WHSEC"

[[channels]]
name = "pd"
type = "pagerduty"
routing_key_env = "KS_HN_PD"
url = "https://events.example.com/v2/enqueue?integration=PDquerySECRET"
"#;
    let file = config_file(
        dir.path(),
        "https://apiUSER:BASEpassSECRET@api.example.com/v1#BASEfrag",
        "\"hook\", \"pd\"",
        tail,
    );
    let env = [
        (
            "KS_HN_WHSEC",
            crate::support::secrets::whsec(b"hardnet-check-config-key"),
        ),
        ("KS_HN_PD", "PDroutingKEYhardnet".to_string()),
    ];
    let (ok, out, err) = run(&file, &["check-config"], &env).await;
    assert!(ok, "{err}");
    for secret in [
        "hookUSER",
        "hookPASSWORD",
        "QUERYtoken",
        "FRAGtoken",
        "PDquerySECRET",
        "apiUSER",
        "BASEpassSECRET",
        "BASEfrag",
        "PDroutingKEYhardnet",
        ADMIN_KEY,
    ] {
        assert!(!out.contains(secret), "{secret} shown:\n{out}");
    }
    assert!(out.contains("hooks.example.com/in/path"), "{out}");
    assert!(out.contains("events.example.com/v2/enqueue"), "{out}");
    assert!(out.contains("api.example.com/v1"), "{out}");
}

// ---- row 14a: proxies ----------------------------------------------------------------------

/// A listener standing in for a proxy: records every connection's first bytes and answers 502.
struct ProxyTrap {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ProxyTrap {
    async fn start() -> ProxyTrap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    let _ = s
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        ProxyTrap { port, seen }
    }
}

/// With every proxy variable pointing at a trap, a scan of a loopback `base_url` goes straight
/// to the simulator: the admin key never crosses the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_never_see_the_admin_key_of_a_loopback_base_url() {
    let sim = crate::support::sim::start_sim(
        org(vec![project("proj_a", vec![key("key_a", 10)])]),
        ADMIN_KEY,
    )
    .await;
    let trap = ProxyTrap::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), &sim.base_url(), "", "");
    let proxy = format!("http://127.0.0.1:{}", trap.port);
    let all = [
        "--config",
        file.to_str().unwrap(),
        "scan",
        "--format",
        "json",
    ];
    let mut cmd = crate::support::process::keysweep(&all, &[(KEY_ENV, ADMIN_KEY)]);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        cmd.env(var, &proxy).env(var.to_lowercase(), &proxy);
    }
    cmd.env_remove("NO_PROXY").env_remove("no_proxy");
    let out = crate::support::process::output(cmd).await;
    let seen = trap.seen.lock().unwrap().clone();
    assert!(seen.is_empty(), "the proxy was used: {seen:?}");
    assert!(
        out.status.success(),
        "{}",
        crate::support::process::describe(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("key_a"));
}

// ---- row 12: receivers' error bodies -------------------------------------------------------

/// A receiver that answers 500 with an error body of `total` bytes (`None`: chunked, never
/// ending), counting what it managed to write before the client went away.
struct BigErrorReceiver {
    port: u16,
    written: Arc<AtomicUsize>,
    /// A write failed: the client closed the connection before the body ended.
    cut_off: Arc<AtomicBool>,
}

const BODY_START: &str = "ERROR-BODY-START ";

impl BigErrorReceiver {
    async fn start(total: Option<usize>) -> BigErrorReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let written = Arc::new(AtomicUsize::new(0));
        let cut_off = Arc::new(AtomicBool::new(false));
        let (w, c) = (written.clone(), cut_off.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(answer_big(s, total, w.clone(), c.clone()));
            }
        });
        BigErrorReceiver {
            port,
            written,
            cut_off,
        }
    }
}

async fn answer_big(
    mut s: tokio::net::TcpStream,
    total: Option<usize>,
    written: Arc<AtomicUsize>,
    cut_off: Arc<AtomicBool>,
) {
    // The request's head (its small body may follow; it is never read).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let framing = match total {
        Some(n) => format!("content-length: {n}"),
        None => "transfer-encoding: chunked".to_string(),
    };
    let head = format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n{framing}\r\n\r\n"
    );
    let mut chunk = BODY_START.as_bytes().to_vec();
    chunk.resize(64 * 1024, b'E');
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let piece = match total {
            Some(n) => {
                let left = n - written.load(Ordering::SeqCst);
                if left == 0 {
                    return;
                }
                chunk[..left.min(chunk.len())].to_vec()
            }
            None => {
                let mut p = format!("{:x}\r\n", chunk.len()).into_bytes();
                p.extend_from_slice(&chunk);
                p.extend_from_slice(b"\r\n");
                p
            }
        };
        if s.write_all(&piece).await.is_err() {
            cut_off.store(true, Ordering::SeqCst);
            return;
        }
        written.fetch_add(piece.len(), Ordering::SeqCst);
    }
}

/// `notify test` through a webhook channel at `port`: (success, stderr).
async fn notify_test_webhook(dir: &Path, port: u16) -> (bool, String) {
    let tail = format!(
        "\n[[channels]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_env = \"KS_HN_WHSEC\"\n"
    );
    let file = config_file(dir, "https://api.openai.com/v1", "\"hook\"", &tail);
    let env = [(
        "KS_HN_WHSEC",
        crate::support::secrets::whsec(b"hardnet-receiver-key"),
    )];
    let (ok, _, err) = run(&file, &["notify", "test", "--channel", "hook"], &env).await;
    (ok, err)
}

/// A 64 MiB error body is not downloaded: the sender reads its start (kept in the error) and
/// hangs up, so the receiver's writes fail long before the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_body_is_read_only_in_part() {
    const TOTAL: usize = 64 * 1024 * 1024;
    let rx = BigErrorReceiver::start(Some(TOTAL)).await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = notify_test_webhook(dir.path(), rx.port).await;
    assert!(!ok);
    assert!(
        err.contains("HTTP 500") && err.contains(BODY_START.trim()),
        "{err}"
    );
    crate::support::wait::eventually("the receiver to notice the hang-up", || {
        rx.cut_off.load(Ordering::SeqCst) || rx.written.load(Ordering::SeqCst) == TOTAL
    })
    .await;
    let written = rx.written.load(Ordering::SeqCst);
    assert!(
        written < TOTAL,
        "the whole error body was read ({written} bytes)"
    );
}

/// An error body that never ends: the sender keeps its start and hangs up instead of waiting
/// for an end (or a timeout, which would lose the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_body_is_cut_and_its_start_kept() {
    let rx = BigErrorReceiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, err) = notify_test_webhook(dir.path(), rx.port).await;
    assert!(!ok);
    assert!(
        err.contains("HTTP 500") && err.contains(BODY_START.trim()),
        "{err}"
    );
    crate::support::wait::eventually("the receiver to notice the hang-up", || {
        rx.cut_off.load(Ordering::SeqCst)
    })
    .await;
}

// ---- rows 2 and 14b: SMTP ------------------------------------------------------------------

const SMTP_USER: &str = "hardnet-mailer-USER";
const SMTP_PASSWORD: &str = "hardnet-smtp-Pa55-NEVER-SHOW";

/// An e-mail channel to `port` (STARTTLS, our CA, AUTH with [`SMTP_USER`]/[`SMTP_PASSWORD`]).
fn mail_channel(port: u16, ca: &Path) -> String {
    format!(
        r#"
[[channels]]
name = "mail"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "starttls"
smtp_ca_file = "{ca}"
smtp_username_env = "KS_HN_SMTP_USER"
smtp_password_env = "KS_HN_SMTP_PASSWORD"
from = "keysweep <keysweep@example.com>"
to = ["security@example.com"]
send_timeout = "20s"
"#,
        ca = ca.display(),
    )
}

fn smtp_env() -> Vec<(&'static str, String)> {
    vec![
        ("KS_HN_SMTP_USER", SMTP_USER.to_string()),
        ("KS_HN_SMTP_PASSWORD", SMTP_PASSWORD.to_string()),
    ]
}

/// The SMTP credentials in every form they cross the wire in: as they are, base64 (at any
/// alignment), and the `AUTH PLAIN` (`\0user\0password`) and `user:password` blobs.
fn smtp_secret_forms() -> Vec<String> {
    use crate::support::secrets::{base64, with_base64_forms};
    let mut forms = with_base64_forms(&[SMTP_USER, SMTP_PASSWORD]);
    forms.push(base64(format!("\0{SMTP_USER}\0{SMTP_PASSWORD}").as_bytes()));
    forms.push(base64(format!("{SMTP_USER}\0{SMTP_PASSWORD}").as_bytes()));
    forms.push(base64(format!("{SMTP_USER}:{SMTP_PASSWORD}").as_bytes()));
    forms
}

/// Row 2: `notify test` through the real SMTP server with AUTH, at `RUST_LOG=trace`: the mail
/// goes out, and stderr holds neither the credentials nor any base64 form of them (lettre's
/// `tracing` feature logged the session, `AUTH PLAIN <base64>` included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_session_and_its_auth_never_reach_the_log_at_trace() {
    use crate::support::smtp_server::{self, TestPki};
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        "https://api.openai.com/v1",
        "\"mail\"",
        &mail_channel(smtp.port, &pki.ca_pem),
    );
    let mut env = smtp_env();
    env.push(("RUST_LOG", "trace".to_string()));
    let (ok, out, err) = run(&file, &["notify", "test", "--channel", "mail"], &env).await;
    assert!(ok, "{out}{err}");
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(*smtp.logins.lock().unwrap(), [SMTP_USER]);
    crate::support::secrets::assert_no_secret(
        "stdout/stderr",
        &format!("{out}{err}"),
        &smtp_secret_forms(),
    );
}

/// A relay whose refusal echoes the user name back (`535 5.7.8 <user>: …`), as some do.
#[derive(Clone)]
struct EchoingRelay;

impl mailin_embedded::Handler for EchoingRelay {
    fn auth_plain(&mut self, _: &str, user: &str, _: &str) -> mailin_embedded::Response {
        mailin_embedded::Response::custom(535, format!("5.7.8 {user}: authentication failed"))
    }

    fn auth_login(&mut self, user: &str, _: &str) -> mailin_embedded::Response {
        mailin_embedded::Response::custom(535, format!("5.7.8 {user}: authentication failed"))
    }
}

/// Row 14b: the SMTP user name is scrubbed from the error a refusal produces; the refusal
/// itself (its code) still shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_user_name_is_scrubbed_from_errors() {
    use crate::support::smtp_server::TestPki;
    let pki = TestPki::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut server = mailin_embedded::Server::new(EchoingRelay);
    server
        .with_name("smtp.test")
        .with_ssl(mailin_embedded::SslConfig::SelfSigned {
            cert_path: pki.cert_pem.to_string_lossy().into_owned(),
            key_path: pki.key_pem.to_string_lossy().into_owned(),
        })
        .unwrap()
        .with_auth(mailin_embedded::AuthMechanism::Plain)
        .with_auth(mailin_embedded::AuthMechanism::Login)
        .with_num_threads(1)
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        "https://api.openai.com/v1",
        "\"mail\"",
        &mail_channel(port, &pki.ca_pem),
    );
    let (ok, out, err) = run(&file, &["notify", "test", "--channel", "mail"], &smtp_env()).await;
    assert!(!ok, "{out}");
    assert!(err.contains("535"), "the refusal is not said: {err}");
    crate::support::secrets::assert_no_secret(
        "notify test",
        &format!("{out}{err}"),
        &smtp_secret_forms(),
    );
}

// ---- row 11: the ops server ----------------------------------------------------------------

/// The daemon (`keysweep run`) with its ops server on `port` and no sweep due for a year.
async fn daemon(
    dir: &Path,
    port: u16,
    tail: &str,
    env: &[(&str, String)],
) -> crate::support::process::Proc {
    let tail = format!("{tail}\n[server]\nlisten = \"127.0.0.1:{port}\"\n");
    let file = config_file(dir, "http://127.0.0.1:9/v1", "", &tail);
    let mut env: Vec<(&str, String)> = env.to_vec();
    env.push((KEY_ENV, ADMIN_KEY.to_string()));
    let proc = crate::support::process::Proc::spawn(crate::support::process::keysweep(
        &["run", "--config", file.to_str().unwrap()],
        &env,
    ));
    crate::support::wait::poll("the daemon to serve /healthz", async || {
        match raw_get(port, "/healthz").await {
            Some(answer) if answer.starts_with("HTTP/1.1 200") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    proc
}

/// One `GET path` on a fresh connection that asks to be closed: the whole answer, or `None`
/// when nothing listens.
async fn raw_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// A client that sends half a request's headers and then nothing.
fn slow_client(port: u16) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        .unwrap();
    s
}

/// Whether the server has closed `s` (end of stream or reset) — without waiting.
fn closed_by_server(s: &std::net::TcpStream) -> bool {
    use std::io::Read as _;
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    let closed = match (&*s).read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// A client that never finishes its headers is disconnected by the server, which answers the
/// others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_server_closes_a_slow_client_and_answers_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::net::free_port();
    let _daemon = daemon(dir.path(), port, "", &[]).await;
    let slow = slow_client(port);
    let answer = raw_get(port, "/healthz").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Blocks until the server hangs up (the test's hang guard would fire if it never did).
    let reader = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut rest = Vec::new();
        let _ = (&slow).read_to_end(&mut rest);
        String::from_utf8_lossy(&rest).into_owned()
    });
    let rest = tokio::time::timeout(crate::support::wait::PATIENCE, reader)
        .await
        .expect("the slow client was never disconnected")
        .unwrap();
    assert!(
        !rest.contains(" 200 "),
        "the slow client was answered: {rest}"
    );
    let answer = raw_get(port, "/healthz").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// As many slow clients as the server takes connections: the next client is served only once
/// a slot is free, i.e. after the server has hung up on a slow one. Without a limit it would be
/// served at once, with every slow client still connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_server_takes_a_bounded_number_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::net::free_port();
    let _daemon = daemon(dir.path(), port, "", &[]).await;
    let slow: Vec<std::net::TcpStream> = (0..keysweep::ops::MAX_CONNECTIONS)
        .map(|_| slow_client(port))
        .collect();
    let answer = raw_get(port, "/healthz").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = slow.iter().filter(|s| closed_by_server(s)).count();
    assert!(
        closed > 0,
        "answered while all {} slow clients held a connection",
        slow.len()
    );
}

// ---- the secrets "Done when" ---------------------------------------------------------------

const SLACK_TOKEN: &str = "slackHNtokenNEVERshow";
const PD_KEY: &str = "PDhardnetROUTINGkeyNEVERshow";
const WEBHOOK_KEY: &[u8] = b"hardnet-e2e-webhook-signing-key!";

/// Every channel but e-mail, to the recording receiver `rx`.
fn http_channels(rx: &crate::support::receivers::Receiver) -> String {
    format!(
        r#"
[[channels]]
name = "slack"
type = "slack"
webhook_url_env = "KS_HN_SLACK"

[[channels]]
name = "pd"
type = "pagerduty"
routing_key_env = "KS_HN_PD"
url = "{pd}"

[[channels]]
name = "hook"
type = "webhook"
url = "{hook}"
secret_env = "KS_HN_WHSEC"
"#,
        pd = rx.url("/pd/enqueue"),
        hook = rx.url("/hook"),
    )
}

/// Every secret of the end-to-end setup, in every form it could leak in.
fn every_secret(rx: &crate::support::receivers::Receiver) -> Vec<String> {
    use crate::support::secrets::{base64, whsec, with_base64_forms};
    let key = String::from_utf8_lossy(WEBHOOK_KEY).into_owned();
    let mut all = with_base64_forms(&[
        ADMIN_KEY.to_string(),
        SLACK_TOKEN.to_string(),
        rx.url(&format!("/services/THN/BHN/{SLACK_TOKEN}")),
        PD_KEY.to_string(),
        whsec(WEBHOOK_KEY),
        base64(WEBHOOK_KEY),
        key,
    ]);
    all.extend(smtp_secret_forms());
    all
}

/// `RUST_LOG=trace`, SMTP with AUTH, every channel secret set, a sweep that notifies through
/// every channel: no secret, nor any base64 form of one, is on stderr or stdout, in the state
/// database (and its WAL), in `/metrics` or in `check-config`'s output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_state_metrics_or_check_config_at_trace() {
    use crate::support::secrets::{assert_no_secret, assert_no_secret_in_bytes, whsec};
    use crate::support::smtp_server::{self, TestPki};
    let sim = crate::support::sim::start_sim(
        org(vec![project("proj_a", vec![key("key_old", 400)])]),
        ADMIN_KEY,
    )
    .await;
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
    let rx = crate::support::receivers::Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::net::free_port();
    let mut env = smtp_env();
    env.extend([
        (
            "KS_HN_SLACK",
            rx.url(&format!("/services/THN/BHN/{SLACK_TOKEN}")),
        ),
        ("KS_HN_PD", PD_KEY.to_string()),
        ("KS_HN_WHSEC", whsec(WEBHOOK_KEY)),
        ("RUST_LOG", "trace".to_string()),
    ]);
    let tail = format!(
        "{}{}\n[server]\nlisten = \"127.0.0.1:{port}\"\n",
        mail_channel(smtp.port, &pki.ca_pem),
        http_channels(&rx)
    );
    let file = config_file(
        dir.path(),
        &sim.base_url(),
        r#""mail", "slack", "pd", "hook""#,
        &tail,
    );
    let mut run_env = env.clone();
    run_env.push((KEY_ENV, ADMIN_KEY.to_string()));
    let mut proc = crate::support::process::Proc::spawn(crate::support::process::keysweep(
        &["run", "--config", file.to_str().unwrap()],
        &run_env,
    ));
    crate::support::wait::eventually("every channel to deliver", || {
        !smtp.messages().is_empty()
            && !rx.requests("/services/").is_empty()
            && !rx.requests("/pd/").is_empty()
            && !rx.requests("/hook").is_empty()
    })
    .await;
    let metrics = raw_get(port, "/metrics").await.unwrap();
    assert!(metrics.contains("keysweep_"), "{metrics}");
    proc.signal("-TERM");
    proc.wait().await;

    let secrets = every_secret(&rx);
    let output = [proc.stdout(), proc.stderr()].concat().join("\n");
    assert!(
        output.contains("TRACE") || output.contains("trace"),
        "not at trace: {output}"
    );
    assert_no_secret("the daemon's output", &output, &secrets);
    assert_no_secret("/metrics", &metrics, &secrets);
    for name in ["state.db", "state.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            assert_no_secret_in_bytes(name, &bytes, &secrets);
        }
    }
    let (ok, out, err) = run(&file, &["check-config"], &env).await;
    assert!(ok, "{err}");
    assert_no_secret("check-config", &format!("{out}{err}"), &secrets);
}
