//! The real `keysweep` binary as a daemon (issue 5, "Done when"): `keysweep run --config F` is
//! started as a child process against the simulated Administration API running in this test
//! process, with a per-second schedule and its state in a tempdir. The tests watch it only from
//! the outside: its ops endpoints over HTTP, its JSON log on stderr, its state database and
//! `keysweep audit verify`, and signals sent with `kill`. No test here may assert a speed: time
//! bounds are hang guards (or "at least" bounds), never pass/fail on performance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keysweep::sim::{Fault, FaultKind, SimServer};
use serde_json::Value;

use crate::support::acme::{
    ADMIN_KEY, ADMIN_KEY_ENV, CI_DEPLOY, FRESH, OLD_BATCH, SVC_BOT, start_sim,
};
use crate::support::net::{free_port, http};
use crate::support::openmetrics::Metrics;
use crate::support::process::{Proc, keysweep, run_to_end};
use crate::support::state_file::audit_records;
use crate::support::time::unix_now;
use crate::support::wait::{eventually, poll};

// ---------------------------------------------------------------------------------------------
// The daemon under test

struct DaemonOpts {
    grace: &'static str,
    /// Extra `[[organizations]]` appended (after the first, "acme").
    extra_orgs: Vec<&'static str>,
    /// The cron schedule (default: every second).
    schedule: &'static str,
    retry_failed_after: &'static str,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        DaemonOpts {
            grace: "20s",
            extra_orgs: Vec::new(),
            schedule: "* * * * * *",
            retry_failed_after: "5m",
        }
    }
}

fn daemon_toml(sim_url: &str, state: &Path, port: u16, opts: &DaemonOpts) -> String {
    let mut orgs = String::new();
    for name in std::iter::once("acme").chain(opts.extra_orgs.iter().copied()) {
        orgs.push_str(&format!(
            "[[organizations]]\nname = \"{name}\"\nbase_url = \"{sim_url}\"\nadmin_key_env = \"{ADMIN_KEY_ENV}\"\n\n"
        ));
    }
    format!(
        r#"mode = "dry-run"
state_path = "{state}"
schedule = "{schedule}"
run_on_start = true
retry_failed_after = "{retry}"
shutdown_grace = "{grace}"

{orgs}[limits]
max_retries = 0
request_timeout = "30s"

[[policies]]
name = "max-age"
max_age = "90d"
action = "notify"

[server]
listen = "127.0.0.1:{port}"

[log]
format = "json"
"#,
        state = state.display(),
        grace = opts.grace,
        schedule = opts.schedule,
        retry = opts.retry_failed_after,
    )
}

struct Daemon {
    proc: Proc,
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    base: String,
    port: u16,
    sim_url: String,
    http: reqwest::Client,
}

impl Daemon {
    async fn start(sim: &SimServer, opts: DaemonOpts) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keysweep.toml");
        let state = dir.path().join("state.db");
        let port = free_port();
        std::fs::write(&config, daemon_toml(&sim.base_url(), &state, port, &opts)).unwrap();
        let proc = Proc::spawn(keysweep(
            &["run", "--config", config.to_str().unwrap()],
            &[(ADMIN_KEY_ENV, ADMIN_KEY)],
        ));
        let mut d = Daemon {
            proc,
            _dir: dir,
            config,
            state,
            base: format!("http://127.0.0.1:{port}"),
            port,
            sim_url: sim.base_url(),
            http: http(),
        };
        poll("the daemon to serve /healthz", async || {
            if let Ok(r) = d.http.get(d.url("/healthz")).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            assert!(
                d.proc.is_running(),
                "the daemon exited at start-up: {:#?}",
                d.proc.stderr()
            );
            Err("no answer yet".to_string())
        })
        .await;
        d
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn rewrite_config(&self, opts: &DaemonOpts) {
        std::fs::write(
            &self.config,
            daemon_toml(&self.sim_url, &self.state, self.port, opts),
        )
        .unwrap();
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn metrics(&self) -> Metrics {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
            "{:?}",
            r.headers()
        );
        Metrics::parse(&r.text().await.unwrap())
    }

    /// The audit log's `sweep` records: (organization, run_id), in chain order.
    fn audit_sweeps(&self) -> Vec<(String, String)> {
        audit_records(&self.state)
            .into_iter()
            .filter(|r| r["kind"] == "sweep")
            .map(|r| {
                (
                    r["organization"].as_str().unwrap_or_default().to_string(),
                    r["run_id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn wait_for_sweeps(&self, org: &str, n: usize) {
        eventually(&format!("{n} sweeps of {org}"), || {
            self.audit_sweeps().iter().filter(|(o, _)| o == org).count() >= n
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Log checks

fn message(r: &Value) -> &str {
    r["message"].as_str().unwrap_or_default()
}

/// The run id of the `sweep` span a record was emitted in, if any.
fn span_run_id(r: &Value) -> Option<&str> {
    r["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "sweep")
        .and_then(|s| s["run_id"].as_str())
}

/// Records the sweep itself writes (listing, policy, notices, deletions).
fn is_sweep_work(r: &Value) -> bool {
    let target = r["target"].as_str().unwrap_or_default();
    [
        "keysweep::sweep",
        "keysweep::openai",
        "keysweep::revoke",
        "keysweep::notify",
    ]
    .iter()
    .any(|t| target.starts_with(t))
}

/// Every record of sweep work carries the run id of its sweep span (also in a `run_id` field of
/// its own, when it has one). Returns the run ids seen.
fn sweep_records_carry_run_ids(log: &[Value]) -> BTreeSet<String> {
    let mut runs = BTreeSet::new();
    for r in log {
        if is_sweep_work(r) {
            let run = span_run_id(r).unwrap_or_else(|| panic!("sweep record without run_id: {r}"));
            assert_eq!(r["span"]["run_id"], run, "{r}");
            if let Some(field) = r["run_id"].as_str() {
                assert_eq!(
                    field, run,
                    "the record's run_id differs from its span's: {r}"
                );
            }
            runs.insert(run.to_string());
        }
    }
    runs
}

/// Per organisation, the sweeps in log order as (run_id, event) with event "start" (the sweep's
/// own "sweep started") or "end" (the daemon's verdict, logged in the sweep span).
fn sweep_events(log: &[Value]) -> Vec<(String, String, &'static str)> {
    let mut out = Vec::new();
    for r in log {
        let org = r["span"]["organization"].as_str().unwrap_or_default();
        let Some(run) = span_run_id(r) else { continue };
        let target = r["target"].as_str().unwrap_or_default();
        let ev = match message(r) {
            "sweep started" if target == "keysweep::sweep" => "start",
            "sweep finished"
            | "sweep finished with gaps"
            | "sweep failed"
            | "sweep cancelled by shutdown"
                if target.starts_with("keysweep::daemon") =>
            {
                "end"
            }
            _ => continue,
        };
        out.push((org.to_string(), run.to_string(), ev));
    }
    out
}

/// No organisation has two sweeps running at once: its starts and ends alternate, and each end
/// closes the sweep that started last.
fn assert_no_overlap(log: &[Value]) -> usize {
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    let mut finished = 0;
    for (org, run, ev) in sweep_events(log) {
        match ev {
            "start" => {
                if let Some(prev) = open.insert(org.clone(), run.clone()) {
                    panic!("{org}: sweep {run} started while {prev} was still running");
                }
            }
            _ => {
                let prev = open.remove(&org);
                assert_eq!(
                    prev.as_deref(),
                    Some(run.as_str()),
                    "{org}: end of a sweep that was not running"
                );
                finished += 1;
            }
        }
    }
    finished
}

// ---------------------------------------------------------------------------------------------
// Tests

/// /metrics parses, declares the main families, counts acme's keys and findings (and never
/// names a key or the admin key in a label), and its counters move between two scrapes.
async fn assert_metrics_move(d: &Daemon) {
    let first = d.metrics().await;
    for family in [
        "keysweep_sweeps",
        "keysweep_sweep_duration_seconds",
        "keysweep_api_requests",
        "keysweep_keys",
        "keysweep_findings",
        "keysweep_last_successful_sweep_timestamp_seconds",
    ] {
        assert!(
            first.types.contains_key(family),
            "{family} missing: {:?}",
            first.types.keys()
        );
    }
    assert_eq!(first.types["keysweep_sweeps"], "counter");
    assert_eq!(first.types["keysweep_sweep_duration_seconds"], "histogram");
    let sweeps_before = first.sum("keysweep_sweeps_total", &[("organization", "acme")]);
    let requests_before = first.sum("keysweep_api_requests_total", &[]);
    assert!(sweeps_before >= 3.0, "{sweeps_before}");
    assert_eq!(first.sum("keysweep_keys", &[("organization", "acme")]), 5.0);
    assert_eq!(
        first.sum(
            "keysweep_findings",
            &[("organization", "acme"), ("policy", "max-age")]
        ),
        3.0
    );
    for v in first.label_values() {
        for secret_or_name in [ADMIN_KEY, CI_DEPLOY.2, OLD_BATCH.2, SVC_BOT.2, FRESH.2] {
            assert!(!v.contains(secret_or_name), "label value {v:?}");
        }
    }
    let second = poll("keysweep_sweeps_total to move", async || {
        let m = d.metrics().await;
        let now = m.sum("keysweep_sweeps_total", &[("organization", "acme")]);
        if now > sweeps_before {
            Ok(m)
        } else {
            Err(format!("{now}"))
        }
    })
    .await;
    assert!(second.sum("keysweep_api_requests_total", &[]) > requests_before);
    assert!(
        second.sum(
            "keysweep_sweep_duration_seconds_count",
            &[("organization", "acme")]
        ) > first.sum(
            "keysweep_sweep_duration_seconds_count",
            &[("organization", "acme")]
        )
    );
    let last_ok = second.sum(
        "keysweep_last_successful_sweep_timestamp_seconds",
        &[("organization", "acme")],
    );
    assert!(last_ok >= (unix_now() - 600) as f64, "{last_ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sweeps_on_schedule_serves_its_endpoints_and_logs_run_ids() {
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;

    let (status, body) = d.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    d.wait_for_sweeps("acme", 3).await;
    let (status, body) = d.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ready"], true);

    assert_metrics_move(&d).await;
    let head_seq = d.metrics().await.sum("keysweep_audit_head_seq", &[]);
    assert!(
        head_seq >= 1.0,
        "the audit head's seq is published: {head_seq}"
    );

    // The simulator saw one project listing per sweep at least.
    let listed = sim
        .stats()
        .get("GET /v1/organization/projects")
        .copied()
        .unwrap_or(0);
    assert!(listed >= 3, "{:?}", sim.stats());

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());

    // Logs: JSON, every record of sweep work carries the sweep's run id, and the run ids are
    // the ones in the audit log.
    let log = d.proc.log();
    let logged_runs = sweep_records_carry_run_ids(&log);
    let audited = d.audit_sweeps();
    assert!(audited.len() >= 4);
    for (_, run) in &audited {
        assert!(logged_runs.contains(run), "audit run {run} not in the log");
    }
    // And every decision recorded by a sweep names a run the log knows.
    for rec in audit_records(&d.state) {
        let run = rec["run_id"].as_str().unwrap();
        assert!(
            logged_runs.contains(run),
            "audit record of unknown run {run}: {rec}"
        );
    }
    assert!(assert_no_overlap(&log) >= 4);
    assert_published_heads_are_in_the_chain(&d, &log);
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

/// Issue 13 item 9: every sweep logs the audit head (hash and seq), and that record is in the
/// chain; the gauge carries the seq, never the hash.
fn assert_published_heads_are_in_the_chain(d: &Daemon, log: &[Value]) {
    let heads: Vec<(i64, String)> = log
        .iter()
        .filter(|r| message(r).starts_with("audit chain head"))
        .map(|r| {
            (
                r["audit_seq"].as_i64().unwrap(),
                r["audit_head"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // One at start, one after each sweep.
    assert!(heads.len() >= 5, "{heads:?}");
    assert!(heads.windows(2).all(|w| w[0].0 <= w[1].0), "{heads:?}");
    let conn = rusqlite::Connection::open(&d.state).unwrap();
    for (seq, hash) in heads.iter().filter(|(seq, _)| *seq > 0) {
        let stored: String = conn
            .query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |r| r.get(0))
            .unwrap();
        assert_eq!(&stored, hash, "record {seq}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sweeps_never_overlap_and_the_skipped_slots_are_counted() {
    let sim = start_sim(unix_now()).await;
    // Every key listing takes 1.5 s: each sweep spans at least one per-second slot.
    sim.faults()
        .add(Fault::on_any_list_keys().respond(FaultKind::Delay(Duration::from_millis(1500))));
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 3).await;

    // A sweep's audit record is committed before the daemon counts the sweep: read the
    // counters once they have caught up with the records.
    let m = poll("3 counted sweeps of acme", async || {
        let m = d.metrics().await;
        let n = m.sum("keysweep_sweeps_total", &[("organization", "acme")]);
        if n >= 3.0 {
            Ok(m)
        } else {
            Err(format!("{n} counted"))
        }
    })
    .await;
    let skipped = m.sum(
        "keysweep_schedule_skipped_total",
        &[("organization", "acme")],
    );
    let sweeps = m.sum("keysweep_sweeps_total", &[("organization", "acme")]);
    assert!(sweeps >= 3.0, "{sweeps}");
    // A 1.5 s sweep always covers at least one whole-second boundary.
    assert!(
        skipped >= sweeps - 1.0,
        "skipped {skipped} for {sweeps} sweeps"
    );
    // Slow, but complete: the daemon is ready.
    let (status, body) = d.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());
    let log = d.proc.log();
    let finished = assert_no_overlap(&log);
    assert!(finished >= 3, "{finished}");
    assert!(
        log.iter()
            .any(|r| message(r).starts_with("schedule slots skipped") && r["level"] == "WARN"),
        "no log of skipped slots"
    );
    let runs: BTreeSet<_> = d.audit_sweeps().into_iter().map(|(_, r)| r).collect();
    assert_eq!(runs.len(), d.audit_sweeps().len(), "a run id was reused");
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_while_the_api_refuses_the_admin_key() {
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 1).await;
    poll_readyz(&d, 200, "").await;

    sim.set_admin_key("sk-admin-some-other-key");
    let body = poll_readyz(&d, 503, "last sweep failed").await;
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], false);
    let reasons = json["reasons"].to_string();
    assert!(reasons.contains("acme"), "{body}");
    assert!(
        reasons.contains("admin key was refused"),
        "the reason says why: {body}"
    );
    assert!(
        !body.contains(ADMIN_KEY) && !body.contains("sk-admin-some"),
        "{body}"
    );
    let (status, _) = d.get("/healthz").await;
    assert_eq!(status, 200, "alive while unready");
    let m = d.metrics().await;
    assert!(
        m.sum(
            "keysweep_sweeps_total",
            &[("organization", "acme"), ("outcome", "failed")]
        ) >= 1.0
    );
    assert!(m.sum("keysweep_api_requests_total", &[("status", "401")]) >= 1.0);

    sim.set_admin_key(ADMIN_KEY);
    poll_readyz(&d, 200, "\"ready\":true").await;

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0));
    let log = d.proc.log();
    let failure = log
        .iter()
        .find(|r| message(r) == "sweep failed")
        .expect("the failed sweep is logged");
    assert_eq!(failure["level"], "ERROR");
    assert!(span_run_id(failure).is_some(), "{failure}");
    // The refusal itself is logged where it happens (the listing), inside the sweep's span.
    assert!(
        log.iter()
            .any(|r| is_sweep_work(r) && r["level"] == "ERROR" && span_run_id(r).is_some()),
        "the listing's error is not in the log"
    );
    sweep_records_carry_run_ids(&log);
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

/// The start sweep lists no project's keys (every key list answers 503, `max_retries = 0`):
/// a failed sweep, not a partial one, so the daemon is unready and, with the next slot months
/// away, sweeps again after `retry_failed_after`, and is ready once that one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_lists_no_project_fails_and_is_retried_before_the_next_slot() {
    let sim = start_sim(unix_now()).await;
    sim.faults()
        .add(Fault::on_any_list_keys().respond(FaultKind::Status(503)));
    let opts = DaemonOpts {
        schedule: "0 0 1 1 *",
        retry_failed_after: "1s",
        ..DaemonOpts::default()
    };
    let mut d = Daemon::start(&sim, opts).await;
    let body = poll_readyz(&d, 503, "no project could be listed").await;
    assert!(body.contains("503"), "the first reason is given: {body}");
    sim.faults().clear();
    poll_readyz(&d, 200, "\"ready\":true").await;
    d.wait_for_sweeps("acme", 1).await;
    let m = d.metrics().await;
    let outcome = |o: &str| {
        m.sum(
            "keysweep_sweeps_total",
            &[("organization", "acme"), ("outcome", o)],
        )
    };
    assert!(outcome("failed") >= 1.0);
    assert!((outcome("success") - 1.0).abs() < f64::EPSILON);
    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0));
    let log = d.proc.log();
    let retry = log
        .iter()
        .find(|r| message(r).starts_with("the sweep failed; it runs again"))
        .expect("the retry is announced");
    assert_eq!(retry["level"], "WARN");
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

async fn poll_readyz(d: &Daemon, status: u16, needle: &str) -> String {
    crate::support::net::poll_readyz(&d.http, &d.base, status, needle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_sweep_exits_zero_with_a_consistent_state() {
    let sim = start_sim(unix_now()).await;
    let grace = Duration::from_secs(20);
    let mut d = Daemon::start(
        &sim,
        DaemonOpts {
            grace: "20s",
            ..DaemonOpts::default()
        },
    )
    .await;
    d.wait_for_sweeps("acme", 1).await;

    // From now on every key listing takes 3 s; wait until a sweep is inside one.
    let delayed = sim
        .faults()
        .add(Fault::on_any_list_keys().respond(FaultKind::Delay(Duration::from_secs(3))));
    eventually("a sweep inside a slow listing", || {
        sim.faults().hits(delayed) >= 1
    })
    .await;
    // Its "sweep started" record may still be on its way through the pipe.
    let mut in_flight = None;
    eventually("the in-flight sweep's start in the log", || {
        let log = d.proc.log();
        in_flight = sweep_events(&log)
            .last()
            .filter(|(_, _, ev)| *ev == "start")
            .map(|(_, run, _)| run.clone());
        in_flight.is_some()
    })
    .await;
    let in_flight = in_flight.unwrap();

    d.proc.signal("-TERM");
    let (status, took) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());
    // A hang guard, not a speed test: the daemon must not outlive its grace by much.
    assert!(took < grace + Duration::from_secs(30), "took {took:?}");

    let log = d.proc.log();
    assert!(log.iter().any(|r| message(r) == "shutdown complete"));
    // The in-flight sweep finished its listing and recorded itself before the exit.
    assert!(
        d.audit_sweeps().iter().any(|(_, r)| *r == in_flight),
        "the in-flight sweep {in_flight} left no record"
    );
    assert_no_overlap(&log);

    // The state database is consistent and the audit chain verifies with the real CLI.
    let conn = rusqlite::Connection::open(&d.state).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let running: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sweeps WHERE status = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(running, 0, "a sweep was left running");
    drop(conn);
    let no_env: [(&str, &str); 0] = [];
    let (status, out, err) = run_to_end(
        &["audit", "verify", "--state", d.state.to_str().unwrap()],
        &no_env,
    )
    .await;
    assert!(status.success(), "audit verify failed: {out}{err}");
    assert!(out.starts_with("audit chain OK"), "{out}");
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

/// A reload whose `ca_file` holds no certificate is refused, and the daemon sweeps on: the
/// loader only checks that the file can be read, and before, the reload was accepted and every
/// sweep after it failed to build its clients. `check-config` says so too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_ca_file_holds_no_certificate_is_refused() {
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 1).await;
    let bad = d.state.with_file_name("ca.pem");
    std::fs::write(&bad, "half of a bundle, no certificate in it\n").unwrap();
    let env_line = format!("admin_key_env = \"{ADMIN_KEY_ENV}\"");
    let text = daemon_toml(&d.sim_url, &d.state, d.port, &DaemonOpts::default()).replace(
        &env_line,
        &format!("{env_line}\nca_file = \"{}\"", bad.display()),
    );
    std::fs::write(&d.config, text).unwrap();
    d.proc.signal("-HUP");
    let refused = |d: &Daemon| {
        (d.proc.log().into_iter()).find(|r| message(r).starts_with("configuration reload refused"))
    };
    eventually("the refused reload", || refused(&d).is_some()).await;
    let reason = refused(&d).unwrap()["reason"].to_string();
    assert!(reason.contains("ca_file"), "{reason}");
    let acme = d.audit_sweeps().len();
    d.wait_for_sweeps("acme", acme + 1).await;
    let check = ["check-config", "--config", d.config.to_str().unwrap()];
    let (status, _, err) = run_to_end(&check, &[(ADMIN_KEY_ENV, ADMIN_KEY)]).await;
    assert!(!status.success());
    assert!(err.contains("ca_file"), "{err}");
    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one_and_a_valid_one_takes_effect() {
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 1).await;

    // A syntax error: the daemon logs why and keeps sweeping on the old configuration.
    std::fs::write(&d.config, "mode = \"enforce\"\nschedule = [unterminated\n").unwrap();
    d.proc.signal("-HUP");
    eventually("the refused reload to be logged", || {
        d.proc
            .log()
            .iter()
            .any(|r| message(r).starts_with("configuration reload refused"))
    })
    .await;
    let log = d.proc.log();
    let refused = log
        .iter()
        .find(|r| message(r).starts_with("configuration reload refused"))
        .unwrap();
    assert_eq!(refused["level"], "ERROR");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("keysweep.toml"),
        "the reason names the file: {reason}"
    );
    assert!(d.proc.is_running(), "a broken reload stopped the daemon");
    let before = d.audit_sweeps().len();
    eventually("sweeps to go on after the refused reload", || {
        d.audit_sweeps().len() >= before + 2
    })
    .await;
    let (status, _) = d.get("/healthz").await;
    assert_eq!(status, 200);
    let records = audit_records(&d.state);
    assert!(
        records.iter().all(|r| r["mode"] == "dry-run"),
        "the broken file's mode leaked in"
    );

    // A valid configuration that adds an organisation takes effect.
    d.rewrite_config(&DaemonOpts {
        extra_orgs: vec!["globex"],
        ..DaemonOpts::default()
    });
    d.proc.signal("-HUP");
    eventually("the reload to be taken", || {
        d.proc
            .log()
            .iter()
            .any(|r| message(r) == "configuration reloaded")
    })
    .await;
    d.wait_for_sweeps("globex", 2).await;
    let acme = d.audit_sweeps().iter().filter(|(o, _)| o == "acme").count();
    d.wait_for_sweeps("acme", acme + 1).await;
    let (status, _) = d.get("/healthz").await;
    assert_eq!(status, 200);

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());
    assert_no_overlap(&d.proc.log());
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

/// A daemon in dry-run that sweeps once at start (its next slot months away) and tells a
/// webhook at `hook` about every key older than 90 days.
fn yearly_webhook_config(state: &std::path::Path, sim: &SimServer, hook: &str) -> String {
    format!(
        r#"mode = "dry-run"
state_path = "{state}"
schedule = "0 0 1 1 *"
run_on_start = true

[[organizations]]
name = "acme"
base_url = "{sim}"
admin_key_env = "{ADMIN_KEY_ENV}"

[[policies]]
name = "max-age"
max_age = "90d"
action = "notify"
notify = ["hook"]

[[channels]]
name = "hook"
type = "webhook"
url = "{hook}"
secret_env = "KEYSWEEP_IT_DAEMON_HOOK"

[server]
listen = "127.0.0.1:{port}"

[log]
format = "json"
"#,
        state = state.display(),
        sim = sim.base_url(),
        port = free_port(),
    )
}

/// A channel fixed by a reload gets what failed on the old one between sweeps, with no sweep:
/// before, delivery between sweeps used the last sweep's configuration, so on a daily schedule
/// the messages kept failing on the old URL until they died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_fixed_by_a_reload_gets_its_messages_before_the_next_sweep() {
    let sim = start_sim(unix_now()).await;
    let rx = crate::support::receivers::Receiver::start().await;
    rx.set_status("/old", 404);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keysweep.toml");
    let state = dir.path().join("state.db");
    std::fs::write(
        &config,
        yearly_webhook_config(&state, &sim, &rx.url("/old")),
    )
    .unwrap();
    let secret = crate::support::secrets::whsec(b"daemon-reload-channel-key-000001");
    let mut proc = Proc::spawn(keysweep(
        &["run", "--config", config.to_str().unwrap()],
        &[
            (ADMIN_KEY_ENV, ADMIN_KEY),
            ("KEYSWEEP_IT_DAEMON_HOOK", secret.as_str()),
        ],
    ));
    eventually("the first attempt on the old URL", || {
        !rx.requests("/old").is_empty()
    })
    .await;
    let fixed = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&rx.url("/old"), &rx.url("/new"));
    std::fs::write(&config, fixed).unwrap();
    proc.signal("-HUP");
    eventually("the message on the new URL", || {
        !rx.requests("/new").is_empty()
    })
    .await;
    proc.signal("-TERM");
    let (status, _) = proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", proc.stderr());
    let first = rx.requests("/old")[0].header("webhook-id");
    assert_eq!(rx.requests("/new")[0].header("webhook-id"), first);
    let sweeps: BTreeSet<String> = (proc.log().iter())
        .filter(|r| message(r) == "sweep finished")
        .filter_map(|r| r["run_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(sweeps.len(), 1, "delivered by a second sweep: {sweeps:?}");
    proc.assert_no_secret(&[ADMIN_KEY, secret.as_str()]);
}

/// Between sweeps the daemon delivers what the outbox has due: a webhook that refused the first
/// sweep's digest (500) gets it again on the message's own backoff, with no second sweep (the
/// schedule's next slot is months away), under the same `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_retries_a_failed_delivery_between_sweeps_and_a_sigterm_lets_the_send_finish() {
    let sim = start_sim(unix_now()).await;
    let rx = crate::support::receivers::Receiver::start().await;
    rx.set_status("/hook", 500);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keysweep.toml");
    let state = dir.path().join("state.db");
    let text = yearly_webhook_config(&state, &sim, &rx.url("/hook"));
    std::fs::write(&config, text).unwrap();
    let secret = crate::support::secrets::whsec(b"daemon-between-sweeps-key-000001");
    let mut proc = Proc::spawn(keysweep(
        &["run", "--config", config.to_str().unwrap()],
        &[
            (ADMIN_KEY_ENV, ADMIN_KEY),
            ("KEYSWEEP_IT_DAEMON_HOOK", secret.as_str()),
        ],
    ));
    eventually("the first sweep's delivery attempt", || {
        !rx.requests("/hook").is_empty()
    })
    .await;
    // The receiver accepts the retry, slowly: the daemon is stopped while it holds it.
    rx.set_delay(std::time::Duration::from_secs(3));
    rx.set_status("/hook", 200);
    let first = rx.requests("/hook")[0].header("webhook-id");
    eventually("the retry between sweeps", || {
        rx.requests("/hook").len() >= 2
    })
    .await;
    proc.signal("-TERM");
    let hooks = rx.requests("/hook");
    assert_eq!(hooks[1].header("webhook-id"), first, "the same message");
    let sweeps: BTreeSet<String> = (proc.log().iter())
        .filter(|r| message(r) == "sweep finished")
        .filter_map(|r| r["run_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(sweeps.len(), 1, "delivered by a second sweep: {sweeps:?}");
    let (status, _) = proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", proc.stderr());
    // The send under way at SIGTERM finished and was recorded: not left claimed, to go out
    // again after a restart.
    let conn = rusqlite::Connection::open(&state).unwrap();
    let rows = keysweep::notify::outbox::all(&conn).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "sent", "{:?}", rows[0].last_error);
    assert_eq!(rx.requests("/hook").len(), 2, "sent twice");
    proc.assert_no_secret(&[ADMIN_KEY, secret.as_str()]);
}

/// One sweeping process per state database: a `run --once` beside the running daemon is
/// refused before it touches the database (it would take the daemon's writes in flight for a
/// crash's leftovers), names the lock, and does not mark the daemon's sweeps interrupted. Once
/// the daemon has exited, the same command sweeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_beside_the_daemon_is_refused_and_runs_once_it_has_stopped() {
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 1).await;
    let once = ["run", "--once", "--config", d.config.to_str().unwrap()];
    let (status, out, err) = run_to_end(&once, &[(ADMIN_KEY_ENV, ADMIN_KEY)]).await;
    assert_eq!(
        status.code(),
        Some(2),
        "refused like a usage error: {out}{err}"
    );
    assert!(
        err.contains("another keysweep process is sweeping") && err.contains("state.db.lock"),
        "{err}"
    );
    let (status, _) = d.get("/readyz").await;
    assert_eq!(status, 200, "the daemon sweeps on");
    assert!(
        !(d.proc.log().iter()).any(|r| message(r).starts_with("a previous sweep was interrupted")),
        "the daemon's own sweeps are not taken for interrupted"
    );

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());
    let (status, out, err) = run_to_end(&once, &[(ADMIN_KEY_ENV, ADMIN_KEY)]).await;
    assert!(status.success(), "{out}{err}");
    assert!(!err.contains("another keysweep process"), "{err}");
}

/// An admin key rotated in its file (a Kubernetes Secret updated in place) reaches the sweeps
/// at the next SIGHUP, though the configuration, and so its hash, did not change: a reload
/// always builds new clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_after_the_admin_key_file_changed_sweeps_with_the_new_key() {
    use std::os::unix::fs::PermissionsExt;
    const ROTATED: &str = "sk-admin-rotated-in-its-file-0002";
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 1).await;
    let key_file = d.state.with_file_name("admin.key");
    let write_key = |key: &str| {
        std::fs::write(&key_file, key).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write_key(ADMIN_KEY);
    let text = daemon_toml(&d.sim_url, &d.state, d.port, &DaemonOpts::default()).replace(
        &format!("admin_key_env = \"{ADMIN_KEY_ENV}\""),
        &format!("admin_key_file = \"{}\"", key_file.display()),
    );
    std::fs::write(&d.config, text).unwrap();
    let reloads = |d: &Daemon| {
        (d.proc.log().iter())
            .filter(|r| message(r) == "configuration reloaded")
            .count()
    };
    d.proc.signal("-HUP");
    eventually("the reload to the key file", || reloads(&d) == 1).await;
    poll_readyz(&d, 200, "\"ready\":true").await;
    // A reload warns about what a start warns about (here: no ops channel).
    let gaps = (d.proc.log().iter())
        .filter(|r| message(r).starts_with("ops_channels is empty") && r["level"] == "WARN")
        .count();
    assert_eq!(gaps, 2, "at start and at the reload");

    sim.set_admin_key(ROTATED);
    poll_readyz(&d, 503, "admin key was refused").await;
    write_key(ROTATED);
    d.proc.signal("-HUP");
    eventually("the second reload", || reloads(&d) == 2).await;
    poll_readyz(&d, 200, "\"ready\":true").await;

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());
    d.proc.assert_no_secret(&[ADMIN_KEY, ROTATED]);
}
