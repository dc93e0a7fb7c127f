//! Issue 16's data and policy half, through the real binary (`scan`, `run --once`, `run`)
//! against the simulator over HTTP: the `unrestricted = true` condition (known All permissions
//! only; unknown scopes never match; an unreadable log decides nothing), `max_idle` counting
//! the last usage bucket, incremental audit-log reads kept in the state database, scripted
//! faults on the audit-log and usage routes, and `/readyz` with audit logging off.
//! Loopback and temporary directories only; nothing is timed.

use std::path::Path;

use serde_json::Value;

use keysweep::sim::{
    Fault, FaultKind, SimHistory, SimKeyHistory, SimOptions, SimOrg, SimServer, SimUsage,
};
use keysweep::state::Store;

use crate::support::config::write_config_file;
use crate::support::listing::{ADMIN_KEY, active_projects};
use crate::support::process::run_to_end;
use crate::support::receivers::Receiver;
use crate::support::sim::start_sim_with;
use crate::support::time::{DAY, DEC_1_2026 as NOW, HOUR, rfc3339};

const ADMIN_KEY_ENV: &str = "KS_INTEL_DATA_ADMIN_KEY";
const SECRET_ENV: &str = "KS_INTEL_DATA_HOOK_SECRET";
const SECRET: &str = "whsec_aW50ZWxkYXRhdGVzdHNlY3JldDEyMzQ1Ng==";

/// The unrestricted policy, a log read back far enough for every generated key.
const UNRESTRICTED: &str = "[audit_log]\nbackfill = \"3650d\"\n\
     [[policies]]\nname = \"all-perms\"\nunrestricted = true\n";

async fn sim_of(org: SimOrg, history: SimHistory) -> SimServer {
    start_sim_with(
        org,
        SimOptions {
            now: Some(NOW),
            freeze_clock: true,
            history,
            ..SimOptions::new(ADMIN_KEY)
        },
    )
    .await
}

/// `keysweep <args…> --config <config>`; returns (success, stdout, stderr).
async fn ks(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config.to_str().unwrap()]);
    let env = [(ADMIN_KEY_ENV, ADMIN_KEY), (SECRET_ENV, SECRET)];
    let (status, out, err) = run_to_end(&all, &env).await;
    (status.success(), out, err)
}

async fn sweep(config: &Path, at: i64) {
    let now = rfc3339(at);
    let (ok, out, err) = ks(config, &["run", "--once", "--now", &now]).await;
    assert!(ok, "sweep at {now}: {out}\n{err}");
}

/// `scan --format json` at `at`: (the report, stderr).
async fn scan(config: &Path, at: i64) -> (Value, String) {
    let now = rfc3339(at);
    let (_, out, err) = ks(config, &["scan", "--format", "json", "--now", &now]).await;
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (v, err)
}

/// The key ids of the scan's open findings of `policy` (not resolved, expired or exempted).
fn flagged(v: &Value, policy: &str) -> Vec<String> {
    let open = ["new", "detected", "warned", "final_notice"];
    (v["findings"].as_array().unwrap().iter())
        .filter(|f| f["policy"] == policy && open.iter().any(|s| f["state"] == *s))
        .map(|f| f["key_id"].as_str().unwrap().to_string())
        .collect()
}

/// The key ids of the state's open findings of `policy`.
fn open_findings(dir: &Path, policy: &str) -> Vec<String> {
    let store = Store::open_existing(&dir.join("keysweep.db")).unwrap();
    let all = store
        .with_conn(|c| keysweep::state::findings::open_findings(c, "acme"))
        .unwrap();
    (all.into_iter())
        .filter(|f| f.id.policy == policy)
        .map(|f| f.id.key_id)
        .collect()
}

/// An ops webhook to `rx`'s `/ops`.
fn ops(rx: &Receiver) -> String {
    format!(
        "ops_channels = [\"ops\"]\n[[channels]]\nname = \"ops\"\ntype = \"webhook\"\n\
         url = \"{}\"\nsecret_env = \"{SECRET_ENV}\"\n",
        rx.url("/ops")
    )
}

fn ops_mentioning(rx: &Receiver, what: &str) -> usize {
    (rx.requests("/ops").iter())
        .filter(|r| r.json().to_string().contains(what))
        .count()
}

/// One active project's first three keys: (project, all permissions, scoped, unknown), their
/// scopes set so in the simulator; the third's creation carries no `data.scopes`.
struct Three {
    project: String,
    all: String,
    scoped: String,
    unknown: String,
}

async fn three_keys(seed: u64) -> (SimServer, Three) {
    let org = SimOrg::generate(2, 6, seed, NOW);
    let project = active_projects(&org)[0].clone();
    let p = org.project(&project).unwrap();
    let ids: Vec<String> = p.keys.iter().take(3).map(|k| k.id.clone()).collect();
    let mut history = SimHistory::default();
    let unlogged = SimKeyHistory {
        scopes_logged: Some(false),
        ..SimKeyHistory::default()
    };
    history.keys.insert(ids[2].clone(), unlogged);
    let sim = sim_of(org, history).await;
    sim.set_scopes(&project, &ids[0], &[]).unwrap();
    sim.set_scopes(&project, &ids[1], &["api.model.read".to_string()])
        .unwrap();
    sim.set_scopes(&project, &ids[2], &[]).unwrap();
    let three = Three {
        project,
        all: ids[0].clone(),
        scoped: ids[1].clone(),
        unknown: ids[2].clone(),
    };
    (sim, three)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrestricted_flags_only_keys_the_log_shows_with_all_permissions_in_scan_and_sweep() {
    let (sim, t) = three_keys(31).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, UNRESTRICTED);

    let (v, err) = scan(&config, NOW).await;
    let keys = v["keys"].as_array().unwrap();
    let scopes = |id: &str| keys.iter().find(|k| k["id"] == id).unwrap()["scopes"].clone();
    assert_eq!(scopes(&t.all), serde_json::json!([]), "{err}");
    assert!(
        scopes(&t.unknown).is_null(),
        "a missing data.scopes is unknown"
    );
    let hits = flagged(&v, "all-perms");
    assert!(hits.contains(&t.all), "{hits:?}");
    assert!(!hits.contains(&t.scoped), "{hits:?}");
    assert!(
        !hits.contains(&t.unknown),
        "unknown scopes never match, even though the key really has All: {hits:?}"
    );

    // The sweep judges the pages as they arrive, with the same facts.
    sweep(&config, NOW).await;
    let open = open_findings(dir.path(), "all-perms");
    assert!(open.contains(&t.all), "{open:?}");
    assert!(
        !open.contains(&t.scoped) && !open.contains(&t.unknown),
        "{open:?}"
    );
    assert_eq!(open.len(), hits.len(), "scan previews what the sweep does");
    let _ = &t.project;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_log_decides_nothing_and_leaves_unrestricted_findings_as_they_are() {
    let (sim, t) = three_keys(32).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}{UNRESTRICTED}", ops(&rx));
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra);
    sweep(&config, NOW).await;
    let before = open_findings(dir.path(), "all-perms");
    assert!(before.contains(&t.all), "{before:?}");

    // A 5xx on every read of the log: the sweep completes, says so once, and neither closes
    // the finding ("no longer violates") nor opens another.
    sim.faults()
        .add(Fault::on_audit_logs().respond(FaultKind::Status(503)));
    sweep(&config, NOW + HOUR).await;
    assert_eq!(open_findings(dir.path(), "all-perms"), before);
    assert_eq!(
        ops_mentioning(&rx, "the audit log could not be read"),
        1,
        "{:?}",
        rx.requests("/ops")
    );
    assert!(
        ops_mentioning(&rx, "Resolved") == 0 && ops_mentioning(&rx, "no longer") == 0,
        "{:?}",
        rx.requests("/ops")
    );
    // A truncated page of the log: the same (a partial log is no log).
    sim.faults().clear();
    sim.faults()
        .add(Fault::on_audit_logs().page(1).respond(FaultKind::Truncated));
    sweep(&config, NOW + 2 * HOUR).await;
    assert_eq!(open_findings(dir.path(), "all-perms"), before);
    // Audit logging off (403): the same.
    sim.faults().clear();
    sim.set_audit_logging(false);
    sweep(&config, NOW + 3 * HOUR).await;
    assert_eq!(open_findings(dir.path(), "all-perms"), before);
    assert_eq!(
        ops_mentioning(&rx, "the audit log could not be read"),
        1,
        "the same source missing is said once: {:?}",
        rx.requests("/ops")
    );
}

#[tokio::test]
async fn check_config_shows_the_condition_and_a_bad_value_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = "http://127.0.0.1:1/v1";
    let good = write_config_file(dir.path(), base, ADMIN_KEY_ENV, UNRESTRICTED);
    let (ok, out, err) = ks(&good, &["check-config"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("unrestricted = true"), "{out}");

    let bad = UNRESTRICTED.replace("unrestricted = true", "unrestricted = \"maybe\"");
    let bad = write_config_file(dir.path(), base, ADMIN_KEY_ENV, &bad);
    let (ok, _, err) = ks(&bad, &["check-config"]).await;
    assert!(!ok);
    assert!(err.contains("keysweep.toml"), "names the file: {err}");
    assert!(err.contains("unrestricted"), "names the key: {err}");
}

/// An organisation with one active project whose first three keys are used as given:
/// (last_used_at, usage records).
async fn idle_org(seed: u64, keys: [(i64, Option<i64>); 3]) -> (SimServer, Vec<String>) {
    let mut org = SimOrg::generate(2, 5, seed, NOW);
    let project = active_projects(&org)[0].clone();
    let mut history = SimHistory::default();
    let mut ids = Vec::new();
    let p = (org.projects.iter_mut()).find(|p| p.id == project).unwrap();
    for (k, (last_used, usage_at)) in p.keys.iter_mut().zip(keys) {
        k.created_at = NOW - 300 * DAY;
        k.last_used_at = Some(last_used);
        let usage = (usage_at.into_iter())
            .map(|at| SimUsage {
                at,
                requests: 7,
                cost_usd: 0.01,
            })
            .collect();
        let h = SimKeyHistory {
            usage: Some(usage),
            ..SimKeyHistory::default()
        };
        history.keys.insert(k.id.clone(), h);
        ids.push(k.id.clone());
    }
    (sim_of(org, history).await, ids)
}

const IDLE: &str = "[usage]\nwindow = \"60d\"\n\
     [[policies]]\nname = \"idle\"\nmax_idle = \"45d\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_counts_the_later_of_last_used_at_and_the_last_usage_bucket() {
    let (sim, ids) = idle_org(
        33,
        [
            // Stale last_used_at, used two days ago per usage: not idle.
            (NOW - 100 * DAY, Some(NOW - 2 * DAY)),
            // Recent last_used_at, old usage: not idle either.
            (NOW - 2 * DAY, Some(NOW - 50 * DAY)),
            // Both old: idle.
            (NOW - 100 * DAY, Some(NOW - 50 * DAY)),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, IDLE);
    let (v, err) = scan(&config, NOW).await;
    let idle = flagged(&v, "idle");
    assert!(!idle.contains(&ids[0]), "used per usage: {idle:?}\n{err}");
    assert!(!idle.contains(&ids[1]), "used per last_used_at: {idle:?}");
    assert!(idle.contains(&ids[2]), "{idle:?}");
    sweep(&config, NOW).await;
    let open = open_findings(dir.path(), "idle");
    assert!(open.contains(&ids[2]) && !open.contains(&ids[0]) && !open.contains(&ids[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_or_truncated_usage_page_is_no_usage_at_all_never_part_of_it() {
    // A 60-day window is two pages of daily buckets; the key's only use is on page 2.
    let (sim, ids) = idle_org(
        34,
        [
            (NOW - 100 * DAY, Some(NOW - 2 * DAY)),
            (NOW - 2 * DAY, None),
            (NOW - 100 * DAY, Some(NOW - 55 * DAY)),
        ],
    )
    .await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(
        dir.path(),
        &sim.base_url(),
        ADMIN_KEY_ENV,
        &format!("{}{IDLE}", ops(&rx)),
    );
    // The last: page 1 says there is more but gives no cursor to it.
    let no_cursor = FaultKind::Patch(serde_json::json!({ "next_page": null }));
    for (page, kind) in [
        (2, FaultKind::Truncated),
        (2, FaultKind::Malformed),
        (1, no_cursor),
    ] {
        sim.faults().clear();
        sim.faults()
            .add(Fault::on_usage_completions().page(page).respond(kind));
        let (v, err) = scan(&config, NOW).await;
        assert!(err.contains("usage is unavailable"), "{err}");
        for k in v["keys"].as_array().unwrap() {
            assert!(k["usage"].is_null(), "no partial usage: {k}");
        }
        // Judged by last_used_at alone: the first key is idle (its use was on the lost page),
        // the third too (its page-1 use is not taken on its own).
        let idle = flagged(&v, "idle");
        assert!(idle.contains(&ids[0]) && idle.contains(&ids[2]), "{idle:?}");
        assert!(!idle.contains(&ids[1]), "{idle:?}");
    }
    // The costs route too: usage is one source, all or nothing.
    sim.faults().clear();
    sim.faults()
        .add(Fault::on_costs().respond(FaultKind::Status(403)));
    let (v, err) = scan(&config, NOW).await;
    assert!(
        err.contains("usage is unavailable") && err.contains("403"),
        "{err}"
    );
    assert!(flagged(&v, "idle").contains(&ids[0]));
    // Without faults the page-2 use counts again.
    sim.faults().clear();
    let (v, _) = scan(&config, NOW).await;
    assert!(!flagged(&v, "idle").contains(&ids[0]));

    // A sweep with a garbled page completes and says once that usage is missing.
    sim.faults().add(
        Fault::on_usage_completions()
            .page(2)
            .respond(FaultKind::Malformed),
    );
    sweep(&config, NOW).await;
    sweep(&config, NOW + HOUR).await;
    assert_eq!(ops_mentioning(&rx, "usage"), 1, "{:?}", rx.requests("/ops"));
}

/// The `effective_at[gte]` of each audit-log request without a cursor (each read's first page).
fn read_starts(sim: &SimServer) -> Vec<i64> {
    (sim.audit_log_queries().iter())
        .filter(|q| !q.contains("after="))
        .filter_map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "effective_at[gte]")
                .and_then(|(_, v)| v.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_sweeps_read_only_what_is_new_and_keep_what_earlier_reads_learnt() {
    let (sim, t) = three_keys(35).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}{UNRESTRICTED}", ops(&rx));
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra);
    let margin = keysweep::intel::AUDIT_LOG_MARGIN;

    sweep(&config, NOW).await;
    assert_eq!(
        read_starts(&sim),
        vec![NOW - 3650 * DAY],
        "the first read backfills"
    );
    let first = open_findings(dir.path(), "all-perms");
    assert!(first.contains(&t.all));

    // A day later: only since the last read, less the margin.
    sweep(&config, NOW + DAY).await;
    assert_eq!(
        read_starts(&sim)[1],
        NOW - margin,
        "{:?}",
        read_starts(&sim)
    );
    // What sweep 1 learnt (the key's creation, years old) still decides: the finding stays.
    assert!(open_findings(dir.path(), "all-perms").contains(&t.all));
    // And scan, reading the stored history without writing it, still knows the creator.
    let (v, _) = scan(&config, NOW + DAY).await;
    let key = (v["keys"].as_array().unwrap().iter())
        .find(|k| k["id"] == t.all.as_str())
        .unwrap()
        .clone();
    assert!(key["created_by"].is_string(), "{key}");
    assert_eq!(read_starts(&sim).last(), Some(&(NOW + DAY - margin)));

    // A failed read does not advance the mark: the next read starts where it would have.
    sim.faults()
        .add(Fault::on_audit_logs().respond(FaultKind::Status(500)));
    sweep(&config, NOW + 2 * DAY).await;
    sim.faults().clear();
    sweep(&config, NOW + 3 * DAY).await;
    assert_eq!(read_starts(&sim).last(), Some(&(NOW + DAY - margin)));
    assert!(open_findings(dir.path(), "all-perms").contains(&t.all));

    // A scope change logged since reaches the next sweep: the key now has scopes, the finding
    // closes as no longer violating. (The simulator stamps it with its own clock.)
    sim.set_clock(NOW + 3 * DAY + HOUR);
    let update = format!(
        "{}/organization/projects/{}/api_keys/{}",
        sim.base_url(),
        t.project,
        t.all
    );
    let answer = crate::support::net::http()
        .post(update)
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"scopes": ["api.model.read"]}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text().await);
    sweep(&config, NOW + 4 * DAY).await;
    assert!(!open_findings(dir.path(), "all-perms").contains(&t.all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_stays_ready_with_audit_logging_off_and_the_alert_is_sent_once() {
    use crate::support::net::{free_port, http, poll_readyz};
    use crate::support::process::{Proc, keysweep};
    use crate::support::state_file::audit_records;
    use crate::support::time::unix_now;
    use crate::support::wait::eventually;

    let now = unix_now();
    let sim = start_sim_with(
        SimOrg::generate(1, 3, 36, now),
        SimOptions {
            now: Some(now),
            ..SimOptions::new(ADMIN_KEY)
        },
    )
    .await;
    sim.set_audit_logging(false);
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "schedule = \"* * * * * *\"\nrun_on_start = true\n{}\
         [server]\nlisten = \"127.0.0.1:{port}\"\n\
         [[policies]]\nname = \"old\"\nmax_age = \"3650d\"\n",
        ops(&rx)
    );
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra);
    let state = dir.path().join("keysweep.db");
    let mut daemon = Proc::spawn(keysweep(
        &["run", "--config", config.to_str().unwrap()],
        &[(ADMIN_KEY_ENV, ADMIN_KEY), (SECRET_ENV, SECRET)],
    ));
    let sweeps = || {
        (audit_records(&state).into_iter())
            .filter(|r| r["kind"] == "sweep")
            .count()
    };
    eventually("three sweeps", || state.exists() && sweeps() >= 3).await;
    let base = format!("http://127.0.0.1:{port}");
    let body = poll_readyz(&http(), &base, 200, "\"ready\":true").await;
    assert!(!body.contains("audit"), "{body}");
    eventually("the intel alert", || {
        ops_mentioning(&rx, "the audit log could not be read") >= 1
    })
    .await;
    assert_eq!(
        ops_mentioning(&rx, "the audit log could not be read"),
        1,
        "once, not at every sweep: {:?}",
        rx.requests("/ops")
    );
    assert!(daemon.is_running());
    daemon.signal("-TERM");
    let (status, _) = daemon.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", daemon.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrestricted_revoke_policy_deletes_at_its_deadline_and_never_on_an_unreadable_log() {
    // Every key scoped and without an expiry, but one user key with All permissions.
    let mut org = SimOrg::generate(2, 6, 37, NOW);
    let project = active_projects(&org)[0].clone();
    for p in &mut org.projects {
        for k in &mut p.keys {
            k.scopes = vec!["api.model.read".to_string()];
            k.expires_at = None;
        }
    }
    let p = (org.projects.iter_mut()).find(|p| p.id == project).unwrap();
    let all = (p.keys.iter_mut())
        .find(|k| !k.owner.is_service_account())
        .unwrap();
    all.scopes = Vec::new();
    let all = all.id.clone();
    let sim = sim_of(org, SimHistory::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = UNRESTRICTED.replace(
        "unrestricted = true",
        "unrestricted = true\naction = \"revoke\"",
    );
    let extra = format!("mode = \"enforce\"\n{policy}");
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra);

    sweep(&config, NOW).await;
    assert_eq!(open_findings(dir.path(), "all-perms"), vec![all.clone()]);
    sweep(&config, NOW + 6 * DAY + HOUR).await;
    // At the deadline, the log unreadable: nothing is deleted on what cannot be known now.
    sim.faults()
        .add(Fault::on_audit_logs().respond(FaultKind::Status(503)));
    sweep(&config, NOW + 8 * DAY).await;
    assert!(sim.key_exists(&project, &all));
    assert_eq!(open_findings(dir.path(), "all-perms"), vec![all.clone()]);
    // Readable again: the re-check before the DELETE judges with the same facts, and deletes.
    sim.faults().clear();
    sweep(&config, NOW + 8 * DAY + HOUR).await;
    assert!(!sim.key_exists(&project, &all), "deleted at its deadline");
    assert!(open_findings(dir.path(), "all-perms").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_state_database_is_upgraded_and_then_keeps_the_audit_logs_history() {
    use keysweep::state::schema::MIGRATIONS;
    let (sim, t) = three_keys(38).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keysweep.db");
    // A database as version 3 left it: the released steps and a row of a key seen before.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for step in &MIGRATIONS[..3] {
            conn.execute_batch(step).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute(
            "INSERT INTO key_observations VALUES ('acme', ?1, 'key_seenBeforeUpgrade1', 'old', \
             'sk-...ade1', 'a@example.com', 'user', ?2, NULL, ?2, ?2, ?2)",
            rusqlite::params![t.project, NOW - 30 * DAY],
        )
        .unwrap();
    }
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, UNRESTRICTED);
    sweep(&config, NOW).await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(one("PRAGMA user_version"), MIGRATIONS.len() as i64);
    assert_eq!(MIGRATIONS.len(), 6);
    assert_eq!(
        one("SELECT count(*) FROM key_observations WHERE key_id = 'key_seenBeforeUpgrade1'"),
        1,
        "nothing lost"
    );
    assert_eq!(
        one("SELECT read_to FROM intel_marks WHERE organization = 'acme'"),
        NOW
    );
    let scopes: Option<String> = conn
        .query_row(
            "SELECT scopes FROM key_history WHERE key_id = ?1",
            [&t.all],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(scopes.as_deref(), Some("[]"));
    let unknown: Option<String> = conn
        .query_row(
            "SELECT scopes FROM key_history WHERE key_id = ?1",
            [&t.unknown],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unknown, None, "unknown stays unknown in the state");
    assert!(one("SELECT count(*) FROM key_history WHERE created_by IS NOT NULL") > 0);
    drop(conn);
    let (ok, out, err) = run_to_end(
        &["audit", "verify", "--state", db.to_str().unwrap()],
        &[("X", "y")],
    )
    .await;
    assert!(ok.success(), "{out}\n{err}");
}

#[test]
fn unrestricted_false_keeps_the_configuration_hash() {
    let base = "[[organizations]]\nname = \"acme\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
                [[policies]]\nname = \"p\"\nmax_age = \"90d\"\n";
    let env = vec![("OPENAI_ADMIN_KEY".to_string(), "sk-admin-test".to_string())];
    let load = |extra: &str| keysweep::config::load_from_str(&format!("{base}{extra}"), &env);
    let plain = load("").unwrap();
    assert!(!plain.policies[0].unrestricted);
    assert_eq!(load("unrestricted = false\n").unwrap().hash, plain.hash);
    let set = load("unrestricted = true\n").unwrap();
    assert!(set.policies[0].unrestricted);
    assert_ne!(set.hash, plain.hash);
}

/// `[audit_log] enabled = false` and `[usage] enabled = false`: no request reaches the log,
/// usage or costs, the sweep completes, and no alert calls them missing (turned off is not
/// unavailable); an `unrestricted` policy without the log is refused, naming file and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_turned_off_are_never_read_and_never_alerted_and_unrestricted_needs_the_log() {
    let (sim, _) = three_keys(7).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let off = "[audit_log]\nenabled = false\n[usage]\nenabled = false\n";
    let extra = format!(
        "{}{off}[[policies]]\nname = \"old\"\nmax_age = \"1d\"\n",
        ops(&rx)
    );
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra);
    sim.reset_stats();
    sweep(&config, NOW).await;
    let stats = sim.stats();
    let intel: Vec<_> = (stats.iter())
        .filter(|(route, _)| {
            ["audit_logs", "usage", "costs"]
                .iter()
                .any(|r| route.contains(r))
        })
        .collect();
    assert!(intel.is_empty(), "read although turned off: {intel:?}");
    assert!(
        stats.keys().any(|r| r.contains("api_keys")),
        "the keys were listed: {stats:?}"
    );
    assert_eq!(
        ops_mentioning(&rx, "could not be read"),
        0,
        "{:?}",
        rx.requests("/ops")
    );
    let (v, _) = scan(&config, NOW).await;
    assert!(
        !flagged(&v, "old").is_empty(),
        "the sweep still judges: {v}"
    );

    let bad = format!("{off}[[policies]]\nname = \"all-perms\"\nunrestricted = true\n");
    let bad = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &bad);
    let (ok, _, err) = ks(&bad, &["check-config"]).await;
    assert!(!ok, "{err}");
    assert!(err.contains("keysweep.toml"), "names the file: {err}");
    assert!(
        err.contains("policies[0].unrestricted"),
        "names the key: {err}"
    );
}
