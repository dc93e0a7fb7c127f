//! The daemon life cycle with an injected sweep function: schedules, overlap, skipped slots,
//! shutdown within the grace period, SIGHUP-style reloads, and the ops endpoints over a real
//! socket. (The real binary with the real sweep against the simulated API is tested elsewhere.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keysweep::config::Config;
use keysweep::daemon::{
    BoxFuture, Daemon, DaemonDeps, ReloadError, ReloadFn, SweepFn, SweepRequest, SweepResult,
    Trigger,
};
use keysweep::metrics::Metrics;

use crate::support::config::config_from_toml;
use crate::support::net::{self, http};
use crate::support::process::signal;
use crate::support::wait::{PATIENCE, eventually, poll};

/// A configuration as an operator would write it, loaded through the real loader. The cron
/// expression is set afterwards, unvalidated, so tests can hand the daemon a bad one and watch
/// it refuse.
fn config(cron: &str, orgs: &[&str], hash: &str) -> Config {
    let mut toml = String::from(
        "shutdown_grace = \"10s\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\n\
         [limits]\nconcurrency = 1\nmax_retries = 0\nrequest_timeout = \"5s\"\n\
         [notifications]\nmax_attempts = 3\n",
    );
    for name in orgs {
        toml.push_str(&format!(
            "[[organizations]]\nname = {name:?}\nbase_url = \"http://127.0.0.1:1/v1\"\n"
        ));
    }
    let mut config = config_from_toml(&toml, &[("OPENAI_ADMIN_KEY", "sk-admin-never-shown")]);
    config.schedule.cron = cron.to_string();
    config.hash = hash.into();
    config
}

fn sweep_fn<F, Fut>(f: F) -> SweepFn
where
    F: Fn(SweepRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = SweepResult> + Send + 'static,
{
    Arc::new(move |req| -> BoxFuture<SweepResult> { Box::pin(f(req)) })
}

fn no_reload() -> ReloadFn {
    Arc::new(|| Err("reload not expected in this test".to_string()))
}

fn deps(sweep: SweepFn, reload: ReloadFn, metrics: Metrics) -> DaemonDeps {
    DaemonDeps {
        sweep,
        reload,
        metrics,
        db_ready: Arc::new(|| true),
        on_shutdown: None,
        on_config: None,
        shutdown: tokio_util::sync::CancellationToken::new(),
    }
}

/// Sum of every sample of `family` (e.g. `keysweep_sweeps_total`) in an OpenMetrics text.
/// Asks `daemon` to shut down and waits for it to return `Ok` (`what`: the expectation).
async fn shut_down(daemon: Daemon, what: &str) {
    daemon.control().shutdown();
    tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .expect(what)
        .unwrap();
}

fn sample_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_repeatedly_on_a_per_second_schedule() {
    keysweep::telemetry::init_for_tests();
    let seen: Arc<Mutex<Vec<(String, Trigger)>>> = Arc::default();
    let s = seen.clone();
    let sweep = sweep_fn(move |req: SweepRequest| {
        s.lock().unwrap().push((req.run_id.clone(), req.trigger));
        async { SweepResult::Success }
    });
    let daemon = Daemon::start(
        config("* * * * * *", &["acme"], "v1"),
        deps(sweep, no_reload(), Metrics::new()),
    )
    .await
    .unwrap();
    eventually("three sweeps", || seen.lock().unwrap().len() >= 3).await;
    daemon.control().shutdown();
    daemon.wait().await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].1, Trigger::Start, "run_on_start sweeps first");
    assert!(seen[1..].iter().all(|(_, t)| *t == Trigger::Schedule));
    let mut ids: Vec<&String> = seen.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), seen.len(), "every sweep has its own run id");
}

/// Each sweep's trigger and start, as a scripted sweep function saw them.
type Seen = Arc<Mutex<Vec<(Trigger, Instant)>>>;

/// A sweep function that answers the n-th sweep (from 0) with `results[n]`, and the last entry
/// after them; it records each sweep's trigger and start.
fn scripted(results: Vec<SweepResult>) -> (SweepFn, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let sweep = sweep_fn(move |req: SweepRequest| {
        let n = {
            let mut seen = s.lock().unwrap();
            seen.push((req.trigger, Instant::now()));
            seen.len() - 1
        };
        let result = results[n.min(results.len() - 1)].clone();
        async move { result }
    });
    (sweep, seen)
}

fn failed() -> SweepResult {
    SweepResult::Failed {
        reason: "organisation acme: the API could not be reached".to_string(),
    }
}

/// A failed sweep runs again after `retry_failed_after`, then after twice that, until one
/// succeeds; then nothing until the next slot (months away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sweep_is_retried_with_a_doubling_delay_until_it_succeeds() {
    keysweep::telemetry::init_for_tests();
    let (sweep, seen) = scripted(vec![failed(), failed(), SweepResult::Success]);
    let mut c = config("0 0 1 1 *", &["acme"], "v1");
    c.schedule.retry_failed_after = Duration::from_secs(1);
    let metrics = Metrics::new();
    let daemon = Daemon::start(c, deps(sweep, no_reload(), metrics.clone()))
        .await
        .unwrap();
    eventually("two retries", || seen.lock().unwrap().len() >= 3).await;
    // Long enough for a retry after the success at the base delay.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shut_down(daemon, "the daemon stops").await;
    let seen = seen.lock().unwrap();
    let triggers: Vec<Trigger> = seen.iter().map(|(t, _)| *t).collect();
    assert_eq!(triggers, [Trigger::Start, Trigger::Retry, Trigger::Retry]);
    let gap = |i: usize| seen[i].1 - seen[i - 1].1;
    assert!(gap(1) >= Duration::from_secs(1), "{:?}", gap(1));
    assert!(gap(2) >= Duration::from_secs(2), "doubled: {:?}", gap(2));
    let text = metrics.encode();
    assert!(
        text.contains("keysweep_sweeps_total{organization=\"acme\",outcome=\"failed\"} 2"),
        "{text}"
    );
}

/// A reload that sets `retry_failed_after = "0s"` cancels the retry already owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_turns_retries_off_cancels_the_one_owed() {
    keysweep::telemetry::init_for_tests();
    let (sweep, seen) = scripted(vec![failed()]);
    let mut c = config("0 0 1 1 *", &["acme"], "v1");
    c.schedule.retry_failed_after = Duration::from_secs(2);
    let reload: ReloadFn = Arc::new(|| {
        let mut c = config("0 0 1 1 *", &["acme"], "v2");
        c.schedule.retry_failed_after = Duration::ZERO;
        Ok(c)
    });
    let daemon = Daemon::start(c, deps(sweep, reload, Metrics::new()))
        .await
        .unwrap();
    eventually("the start sweep", || !seen.lock().unwrap().is_empty()).await;
    daemon.control().reload().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    shut_down(daemon, "the daemon stops").await;
    assert_eq!(seen.lock().unwrap().len(), 1, "the retry ran after all");
}

/// A partial sweep is not retried (it did its work where it could list), and neither is a
/// failed one whose retry would come after the next slot: the slot runs instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_for_a_partial_sweep_nor_past_the_next_slot() {
    keysweep::telemetry::init_for_tests();
    let partial = SweepResult::Partial {
        reason: "1 incomplete listing(s), 0 failed revocation(s)".to_string(),
    };
    let (sweep, seen) = scripted(vec![partial]);
    let mut c = config("0 0 1 1 *", &["acme"], "v1");
    c.schedule.retry_failed_after = Duration::from_secs(1);
    let daemon = Daemon::start(c, deps(sweep, no_reload(), Metrics::new()))
        .await
        .unwrap();
    eventually("the start sweep", || !seen.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shut_down(daemon, "the daemon stops").await;
    assert_eq!(seen.lock().unwrap().len(), 1, "a partial sweep was retried");

    let (sweep, seen) = scripted(vec![failed()]);
    let mut c = config("* * * * * *", &["acme"], "v1");
    c.schedule.retry_failed_after = Duration::from_secs(5);
    let daemon = Daemon::start(c, deps(sweep, no_reload(), Metrics::new()))
        .await
        .unwrap();
    eventually("three sweeps", || seen.lock().unwrap().len() >= 3).await;
    shut_down(daemon, "the daemon stops").await;
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|(t, _)| *t != Trigger::Retry),
        "{:?}",
        seen.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sweep_never_overlaps_and_the_skipped_slots_are_counted() {
    keysweep::telemetry::init_for_tests();
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (r, m, f) = (running.clone(), max_running.clone(), finished.clone());
    let sweep = sweep_fn(move |_req: SweepRequest| {
        let (r, m, f) = (r.clone(), m.clone(), f.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            f.fetch_add(1, Ordering::SeqCst);
            SweepResult::Success
        }
    });
    let metrics = Metrics::new();
    let daemon = Daemon::start(
        config("* * * * * *", &["acme"], "v1"),
        deps(sweep, no_reload(), metrics.clone()),
    )
    .await
    .unwrap();
    eventually("three slow sweeps", || finished.load(Ordering::SeqCst) >= 3).await;

    // Read the counter the way Prometheus would: over HTTP.
    let text = http()
        .get(format!("http://{}/metrics", daemon.ops_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    daemon.control().shutdown();
    daemon.wait().await.unwrap();

    assert_eq!(max_running.load(Ordering::SeqCst), 1, "sweeps overlapped");
    // Each 2.5 s sweep spans at least two per-second slots, all of which must be skipped.
    let skipped = sample_sum(&text, "keysweep_schedule_skipped_total");
    assert!(skipped >= 4.0, "skipped {skipped} in\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_in_flight_sweep_finish_its_step_then_returns_ok() {
    keysweep::telemetry::init_for_tests();
    let started = Arc::new(tokio::sync::Notify::new());
    let step_finished = Arc::new(AtomicBool::new(false));
    let hook_ran = Arc::new(AtomicBool::new(false));
    let (st, sf) = (started.clone(), step_finished.clone());
    let sweep = sweep_fn(move |req: SweepRequest| {
        let (st, sf) = (st.clone(), sf.clone());
        async move {
            st.notify_one();
            req.cancel.cancelled().await;
            // The current step (say, recording a delete's outcome) still completes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            sf.store(true, Ordering::SeqCst);
            SweepResult::Cancelled
        }
    });
    let mut cfg = config("0 0 * * *", &["acme"], "v1");
    cfg.shutdown_grace = Duration::from_secs(20);
    let h = hook_ran.clone();
    let mut d = deps(sweep, no_reload(), Metrics::new());
    d.on_shutdown = Some(Box::new(move |_stop| -> BoxFuture<()> {
        Box::pin(async move { h.store(true, Ordering::SeqCst) })
    }));
    let daemon = Daemon::start(cfg, d).await.unwrap();
    let addr = daemon.ops_addr();
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .expect("the start-up sweep began");

    shut_down(daemon, "the daemon returned").await;
    assert!(
        step_finished.load(Ordering::SeqCst),
        "the in-flight step was cut short"
    );
    assert!(
        hook_ran.load(Ordering::SeqCst),
        "the shutdown hook did not run"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the ops server still accepts connections"
    );
}

/// The shutdown hook is told to take no new work before the grace runs out (half of what is
/// left, at most 10 s before the end), so what it has under way can finish before it is
/// dropped: a hook that waits for that signal completes within a short grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_hook_is_told_to_stop_before_the_grace_runs_out() {
    let now = tokio::time::Instant::now();
    let stop_at = |left: u64| keysweep::daemon::hook_stop_at(now, now + Duration::from_secs(left));
    assert_eq!(stop_at(60), now + Duration::from_secs(50));
    assert_eq!(stop_at(4), now + Duration::from_secs(2));
    assert_eq!(stop_at(0), now);

    let told = Arc::new(AtomicBool::new(false));
    let sweep = sweep_fn(|_req: SweepRequest| async { SweepResult::Success });
    let mut cfg = config("0 0 1 1 *", &["acme"], "v1");
    cfg.shutdown_grace = Duration::from_secs(2);
    let mut d = deps(sweep, no_reload(), Metrics::new());
    let t = told.clone();
    d.on_shutdown = Some(Box::new(move |stop| -> BoxFuture<()> {
        Box::pin(async move {
            stop.cancelled().await;
            t.store(true, Ordering::SeqCst);
        })
    }));
    let daemon = Daemon::start(cfg, d).await.unwrap();
    shut_down(daemon, "the daemon returned").await;
    assert!(
        told.load(Ordering::SeqCst),
        "the hook was dropped before it was told to stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_ignores_cancellation_is_dropped_when_the_grace_expires() {
    keysweep::telemetry::init_for_tests();
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let started = Arc::new(tokio::sync::Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let (st, dr) = (started.clone(), dropped.clone());
    let sweep = sweep_fn(move |_req: SweepRequest| {
        let (st, guard) = (st.clone(), DropFlag(dr.clone()));
        async move {
            let _guard = guard;
            st.notify_one();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            SweepResult::Success
        }
    });
    let grace = Duration::from_millis(300);
    let mut cfg = config("0 0 * * *", &["acme"], "v1");
    cfg.shutdown_grace = grace;
    let daemon = Daemon::start(cfg, deps(sweep, no_reload(), Metrics::new()))
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .expect("the start-up sweep began");

    let asked = Instant::now();
    shut_down(daemon, "the daemon returned despite a stuck sweep").await;
    assert!(asked.elapsed() >= grace, "returned before the grace period");
    // The task is aborted; its future is dropped on the worker soon after.
    eventually("the stuck sweep to be dropped", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_report_health_readiness_and_metrics_over_a_real_socket() {
    keysweep::telemetry::init_for_tests();
    let fail = Arc::new(AtomicBool::new(true));
    let db_ok = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    let sweep = sweep_fn(move |_req: SweepRequest| {
        let failing = f.load(Ordering::SeqCst);
        async move {
            if failing {
                SweepResult::Failed {
                    reason: "the API refused the admin key (401)".into(),
                }
            } else {
                SweepResult::Success
            }
        }
    });
    let db = db_ok.clone();
    let mut d = deps(sweep, no_reload(), Metrics::new());
    d.db_ready = Arc::new(move || db.load(Ordering::SeqCst));
    // Every 2 s: readiness tolerates two slots (4 s), plenty for a slot-by-slot sweep.
    let daemon = Daemon::start(config("*/2 * * * * *", &["acme"], "v1"), d)
        .await
        .unwrap();
    let base = format!("http://{}", daemon.ops_addr());
    let client = http();

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    // The start-up sweep fails: unready, with the reason.
    let body = poll_readyz(&client, &base, 503, "last sweep failed").await;
    assert!(
        body.contains("organization acme: last sweep failed: the API refused the admin key (401)"),
        "{body}"
    );
    assert!(!body.contains("sk-admin"), "{body}");

    // The next sweeps succeed: ready.
    fail.store(false, Ordering::SeqCst);
    let body = poll_readyz(&client, &base, 200, "").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], true, "{body}");

    // The state database goes away: unready again.
    db_ok.store(false, Ordering::SeqCst);
    poll_readyz(&client, &base, 503, "state database is not reachable").await;
    db_ok.store(true, Ordering::SeqCst);

    // /metrics: OpenMetrics text, terminated by # EOF, and its counters move.
    let scrape = || async {
        let resp = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        resp.text().await.unwrap()
    };
    let first = scrape().await;
    assert!(first.trim_end().ends_with("# EOF"), "{first}");
    assert!(first.contains("# TYPE keysweep_sweeps counter"), "{first}");
    assert!(first.contains("keysweep_sweeps_total{organization=\"acme\",outcome=\"failed\"}"));
    let before = sample_sum(&first, "keysweep_sweeps_total");
    let text = poll("the sweep counter to move", async || {
        let text = scrape().await;
        let now = sample_sum(&text, "keysweep_sweeps_total");
        if now > before {
            Ok(text)
        } else {
            Err(format!("{now}"))
        }
    })
    .await;
    assert!(
        text.contains("keysweep_last_successful_sweep_timestamp_seconds{organization=\"acme\"}")
    );

    daemon.control().shutdown();
    daemon.wait().await.unwrap();
}

async fn poll_readyz(client: &reqwest::Client, base: &str, status: u16, needle: &str) -> String {
    net::poll_readyz(client, base, status, needle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_keeps_the_old_configuration_and_a_good_one_takes_effect() {
    keysweep::telemetry::init_for_tests();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let s = seen.clone();
    let sweep = sweep_fn(move |req: SweepRequest| {
        s.lock()
            .unwrap()
            .push((req.organization.clone(), req.config.hash.clone()));
        async { SweepResult::Success }
    });
    // First reload: a file that does not parse. Second: a config whose schedule cannot be
    // computed. Third: a good one that adds an organisation.
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let reload: ReloadFn = Arc::new(move || match a.fetch_add(1, Ordering::SeqCst) {
        0 => Err("/etc/keysweep/keysweep.toml: schedule.cron: expected a string".to_string()),
        1 => Ok(config("61 * * * *", &["acme"], "v-bad")),
        _ => Ok(config("* * * * * *", &["acme", "globex"], "v2")),
    });
    let daemon = Daemon::start(
        config("* * * * * *", &["acme"], "v1"),
        deps(sweep, reload, Metrics::new()),
    )
    .await
    .unwrap();
    let control = daemon.control();
    eventually("a first sweep", || !seen.lock().unwrap().is_empty()).await;

    let err = control.reload().await.unwrap_err();
    assert!(
        matches!(&err, ReloadError::Invalid(r) if r.contains("schedule.cron")),
        "{err:?}"
    );
    let err = control.reload().await.unwrap_err();
    assert!(
        matches!(&err, ReloadError::Invalid(r) if r.contains("61 * * * *")),
        "{err:?}"
    );
    assert_eq!(daemon.config().hash, "v1");
    // Still sweeping, on the old configuration.
    let n = seen.lock().unwrap().len();
    eventually("more sweeps after the refused reloads", || {
        seen.lock().unwrap().len() > n + 1
    })
    .await;
    assert!(seen.lock().unwrap().iter().all(|(_, h)| h == "v1"));

    control.reload().await.unwrap();
    assert_eq!(daemon.config().hash, "v2");
    eventually("the added organisation to sweep on v2", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(o, h)| o == "globex" && h == "v2")
    })
    .await;
    eventually("acme to sweep on v2", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(o, h)| o == "acme" && h == "v2")
    })
    .await;

    control.shutdown();
    daemon.wait().await.unwrap();
}

/// An organisation removed by a reload leaves no gauge behind: its last successful sweep would
/// freeze and keep the shipped "sweeps stale" alert firing until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisation_removed_by_a_reload_drops_its_gauges() {
    keysweep::telemetry::init_for_tests();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let sweep = sweep_fn(move |req: SweepRequest| {
        s.lock().unwrap().push(req.organization.clone());
        async { SweepResult::Success }
    });
    let reload: ReloadFn = Arc::new(|| Ok(config("* * * * * *", &["acme"], "v2")));
    let metrics = Metrics::new();
    let daemon = Daemon::start(
        config("* * * * * *", &["acme", "globex"], "v1"),
        deps(sweep, reload, metrics.clone()),
    )
    .await
    .unwrap();
    let last = |org: &str| {
        let text = metrics.encode();
        text.lines().any(|l| {
            l.starts_with("keysweep_last_successful_sweep_timestamp")
                && l.contains(&format!("organization=\"{org}\""))
        })
    };
    eventually("both organisations to sweep", || {
        last("acme") && last("globex")
    })
    .await;
    daemon.control().reload().await.unwrap();
    eventually("globex's gauge to go", || !last("globex")).await;
    let n = seen.lock().unwrap().len();
    eventually("acme to sweep on", || seen.lock().unwrap().len() > n + 1).await;
    assert!(last("acme"));
    assert!(!last("globex"), "no sweep of globex brought it back");
    shut_down(daemon, "the daemon to stop").await;
}

/// A reload that lands while a slot waits out its `jitter` takes effect in that slot's sweep:
/// an exemption or `mode = "dry-run"` added meanwhile must not meet a sweep on the old one.
/// Several reloads, each 30 ms after a slot of a per-second schedule with up to 0.9 s of
/// jitter: most land inside that slot's jitter wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_the_jitter_wait_reaches_that_slots_sweep() {
    keysweep::telemetry::init_for_tests();
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let s = seen.clone();
    let sweep = sweep_fn(move |req: SweepRequest| {
        s.lock()
            .unwrap()
            .push((Instant::now(), req.config.hash.clone()));
        async { SweepResult::Success }
    });
    let jittered = |hash: &str| {
        let mut c = config("* * * * * *", &["acme"], hash);
        c.schedule.jitter = Duration::from_millis(900);
        c
    };
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let reload: ReloadFn = Arc::new(move || {
        let n = v.fetch_add(1, Ordering::SeqCst) + 1;
        let mut c = config("* * * * * *", &["acme"], &format!("v{n}"));
        c.schedule.jitter = Duration::from_millis(900);
        Ok(c)
    });
    let daemon = Daemon::start(jittered("v1"), deps(sweep, reload, Metrics::new()))
        .await
        .unwrap();
    let control = daemon.control();
    eventually("a first sweep", || !seen.lock().unwrap().is_empty()).await;
    for _ in 0..6 {
        // Just after the next slot: its jitter wait (up to 0.9 s) is then most likely running.
        let into = u64::from(chrono::Utc::now().timestamp_subsec_millis());
        tokio::time::sleep(Duration::from_millis(1_000 - into.min(999) + 30)).await;
        control.reload().await.unwrap();
        let reloaded = Instant::now();
        let hash = daemon.config().hash.clone();
        eventually("a sweep after the reload", || {
            seen.lock().unwrap().iter().any(|(at, _)| *at > reloaded)
        })
        .await;
        // A margin for the moment between reading the configuration and calling the sweep (a
        // loaded machine); the old code swept on the old one up to 0.9 s after the reload.
        let late: Vec<String> = (seen.lock().unwrap().iter())
            .filter(|(at, h)| *at > reloaded + Duration::from_millis(200) && *h != hash)
            .map(|(_, h)| h.clone())
            .collect();
        assert!(late.is_empty(), "swept on {late:?} after {hash} was loaded");
    }
    shut_down(daemon, "the daemon to stop").await;
}

/// `run` end to end with real signals sent to this test process: SIGHUP reloads (a broken
/// configuration is refused and sweeping goes on), SIGTERM drains and returns `Ok`. tokio's
/// handlers catch the signals, so the test process itself is not terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reacts_to_real_sighup_and_sigterm() {
    keysweep::telemetry::init_for_tests();
    let sweeps = Arc::new(AtomicUsize::new(0));
    let reloads = Arc::new(AtomicUsize::new(0));
    let s = sweeps.clone();
    let sweep = sweep_fn(move |_req: SweepRequest| {
        s.fetch_add(1, Ordering::SeqCst);
        async { SweepResult::Success }
    });
    let r = reloads.clone();
    let reload: ReloadFn = Arc::new(move || {
        r.fetch_add(1, Ordering::SeqCst);
        Err("keysweep.toml: organizations[0].base_url: relative URL without a base".to_string())
    });
    let daemon = tokio::spawn(keysweep::daemon::run(
        config("* * * * * *", &["acme"], "v1"),
        deps(sweep, reload, Metrics::new()),
    ));
    // Handlers are installed before the first sweep can run.
    eventually("a first sweep", || sweeps.load(Ordering::SeqCst) >= 1).await;

    let kill = |sig: &str| signal(std::process::id(), sig);
    kill("-HUP");
    eventually("the reload attempt", || reloads.load(Ordering::SeqCst) == 1).await;
    let n = sweeps.load(Ordering::SeqCst);
    eventually("sweeps to go on after the refused reload", || {
        sweeps.load(Ordering::SeqCst) > n
    })
    .await;
    assert!(!daemon.is_finished(), "a broken reload stopped the daemon");

    kill("-TERM");
    tokio::time::timeout(PATIENCE, daemon)
        .await
        .expect("run returned after SIGTERM")
        .unwrap()
        .unwrap();
}
