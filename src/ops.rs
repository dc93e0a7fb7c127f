//! The operations HTTP server (axum): `/healthz`, `/readyz` and `/metrics`, on `[server] listen`
//! (default `127.0.0.1:9464`).
//!
//! - `/healthz` answers 200 `ok` for as long as the process serves requests.
//! - `/readyz` answers 200 when the configuration is loaded, the state database answers and the
//!   last sweep of every configured organisation is neither failed nor stale; otherwise 503. Both
//!   carry a JSON body `{"ready": bool, "reasons": [..]}` naming every failed check.
//! - `/metrics` renders [`Metrics`] in the OpenMetrics text format.
//!
//! The server is HTTP/1.1 only, with a connection limit, a header-read timeout and a maximum
//! connection age (see [`serve`]): a slow or greedy client cannot exhaust file descriptors.
//!
//! This module never mutates state and never shows a secret: readiness reasons carry
//! organisation names and the sweep's own (secret-free) failure summary, nothing more. Of the
//! configuration it sees only each organisation's effective schedule ([`OrgSchedule`], through
//! [`Schedules`]), never the configuration itself or the admin keys in it.
//!
//! # Staleness and "no sweep yet"
//!
//! A finished sweep that *started* at `s` is stale once two further slots have passed, i.e. at
//! `next_fire(next_fire(s)) + jitter`. For a regular schedule that is "older than twice its
//! interval", measured from the start so a sweep is allowed up to a whole interval to run. An
//! organisation with no finished sweep yet is judged the same way from the moment the daemon
//! started tracking it (start-up or the reload that added it): it is ready during that first
//! window, which is enough for the first sweep (on start or at the first slot) to finish, and
//! unready with the reason "no sweep yet" after it. A sweep cancelled by shutdown does not count
//! as a result.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::daemon::schedule::{CronSchedule, OrgSchedule};
use crate::metrics::Metrics;

/// Most connections served at once; the next one waits in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this, or the connection is closed (slow clients).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after its request in flight once it is this old.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// How long a connection being closed (age, shutdown) may take to finish its answer.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. no file descriptor left).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Content type of `/metrics` (OpenMetrics 1.0 text, which Prometheus scrapes natively).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The effective schedule of every configured organisation, as of now (it follows reloads).
/// Readiness needs nothing else of the configuration, so the ops server never holds it (nor the
/// admin keys in it).
pub type Schedules = Arc<dyn Fn() -> Vec<OrgSchedule> + Send + Sync>;

/// Answers "is the state database reachable?". Called on every `/readyz`, on a blocking thread
/// (it may run a SQLite query).
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the daemon tells the ops server about each organisation's sweeps.
#[derive(Clone, Default)]
pub struct SweepBoard {
    inner: Arc<Mutex<HashMap<String, OrgStatus>>>,
}

/// One organisation's sweep history, as far as readiness cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgStatus {
    /// When the daemon started scheduling this organisation.
    pub tracked_since: DateTime<Utc>,
    /// Start of the sweep running now, if any.
    pub running_since: Option<DateTime<Utc>>,
    /// The last sweep that ran to an end (cancelled sweeps excluded).
    pub last: Option<LastSweep>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastSweep {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// `Some(summary)` when the sweep failed.
    pub failure: Option<String>,
}

impl SweepBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking an organisation (idempotent: an already tracked one keeps its history).
    pub fn track(&self, org: &str, since: DateTime<Utc>) {
        if let Ok(mut map) = self.inner.lock() {
            map.entry(org.to_string()).or_insert(OrgStatus {
                tracked_since: since,
                running_since: None,
                last: None,
            });
        }
    }

    /// Stops tracking an organisation that left the configuration.
    pub fn forget(&self, org: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(org);
        }
    }

    pub fn sweep_started(&self, org: &str, at: DateTime<Utc>) {
        if let Ok(mut map) = self.inner.lock() {
            let entry = map.entry(org.to_string()).or_insert(OrgStatus {
                tracked_since: at,
                running_since: None,
                last: None,
            });
            entry.running_since = Some(at);
        }
    }

    /// A sweep ended. `result` is `None` for a cancelled sweep (which leaves `last` alone),
    /// `Some(Ok(()))` for a completed one and `Some(Err(summary))` for a failed one.
    pub fn sweep_finished(
        &self,
        org: &str,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        result: Option<Result<(), String>>,
    ) {
        if let Ok(mut map) = self.inner.lock()
            && let Some(entry) = map.get_mut(org)
        {
            entry.running_since = None;
            if let Some(result) = result {
                entry.last = Some(LastSweep {
                    started,
                    finished,
                    failure: result.err(),
                });
            }
        }
    }

    pub fn get(&self, org: &str) -> Option<OrgStatus> {
        self.inner.lock().ok().and_then(|m| m.get(org).cloned())
    }

    pub fn snapshot(&self) -> HashMap<String, OrgStatus> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Everything the handlers read.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: Metrics,
    /// The schedules in force (they change on a successful SIGHUP reload).
    pub schedules: Schedules,
    pub board: SweepBoard,
    pub db_ready: ReadyCheck,
}

/// Why `/readyz` says no. Pure: the caller supplies the clock and the database check result.
pub fn unready_reasons(
    schedules: &[OrgSchedule],
    board: &HashMap<String, OrgStatus>,
    db_ok: bool,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if !db_ok {
        reasons.push("state database is not reachable".to_string());
    }
    for org in schedules {
        // No status: the daemon has not started this organisation's loop yet (a reload just
        // added it).
        if let Some(status) = board.get(&org.organization)
            && let Some(reason) = unready_reason(org, status, now)
        {
            reasons.push(format!("organization {}: {reason}", org.organization));
        }
    }
    reasons
}

/// Why one organisation makes the daemon unready, if it does.
fn unready_reason(org: &OrgSchedule, status: &OrgStatus, now: DateTime<Utc>) -> Option<String> {
    let schedule = &org.schedule;
    let cron = match CronSchedule::parse(&schedule.cron) {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let jitter = chrono::Duration::from_std(schedule.jitter).unwrap_or(chrono::Duration::zero());
    let stale_after = |from: DateTime<Utc>| {
        cron.next_fire(from, schedule.timezone)
            .and_then(|n| cron.next_fire(n, schedule.timezone))
            .map(|d| d + jitter)
    };
    match &status.last {
        None => stale_after(status.tracked_since)
            .is_some_and(|d| now > d)
            .then(|| "no sweep yet".to_string()),
        Some(last) => {
            if let Some(failure) = &last.failure {
                return Some(format!("last sweep failed: {failure}"));
            }
            let deadline = stale_after(last.started).filter(|&d| now > d)?;
            Some(format!(
                "last sweep is stale (finished {}, a newer one was due by {})",
                last.finished.to_rfc3339(),
                deadline.to_rfc3339()
            ))
        }
    }
}

/// The router, for tests that want to drive it without a socket.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds the listener (port 0 picks a free port; read it back with `local_addr`).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves HTTP/1.1 until `shutdown` is cancelled, then lets in-flight requests finish.
///
/// Hardened against slow or many clients (a scraper is the only expected one): at most
/// [`MAX_CONNECTIONS`] at once (the next waits in the kernel's backlog until one ends), a
/// request's headers must arrive within [`HEADER_READ_TIMEOUT`], and a connection is closed
/// (gracefully, after its request in flight, which gets [`CLOSE_GRACE`] more) once it is
/// [`MAX_CONNECTION_AGE`] old, so idle keep-alive connections and clients that never read their
/// answer cannot hold every slot either.
pub async fn serve(
    listener: TcpListener,
    state: OpsState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let app = router(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.map_err(io::Error::other)?,
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "ops server: cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(
            stream,
            app.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// One connection, holding its slot until it ends.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        () = shutdown.cancelled() => None,
        () = tokio::time::sleep(MAX_CONNECTION_AGE) => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            // A client that never reads its answer must not hold the slot (or the shutdown).
            match tokio::time::timeout(CLOSE_GRACE, conn).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "ops server: connection ended with an error");
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let check = state.db_ready.clone();
    // A panicking or blocked check counts as "not reachable" rather than taking the server down.
    let db_ok = tokio::task::spawn_blocking(move || check())
        .await
        .unwrap_or(false);
    let schedules = (state.schedules)();
    let reasons = unready_reasons(&schedules, &state.board.snapshot(), db_ok, Utc::now());
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "ready": ready, "reasons": reasons });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn config(cron: &str) -> Vec<OrgSchedule> {
        vec![OrgSchedule {
            organization: "acme".into(),
            schedule: crate::config::Schedule {
                cron: cron.to_string(),
                timezone: chrono_tz::Tz::UTC,
                run_on_start: true,
                jitter: std::time::Duration::ZERO,
                retry_failed_after: crate::config::DEFAULT_RETRY_FAILED_AFTER,
            },
        }]
    }

    fn board_with(status: OrgStatus) -> HashMap<String, OrgStatus> {
        HashMap::from([("acme".to_string(), status)])
    }

    #[test]
    fn no_sweep_yet_is_ready_within_the_first_window_then_unready() {
        let cfg = config("0 */6 * * *");
        let status = OrgStatus {
            tracked_since: utc("2026-05-01T01:00:00Z"),
            running_since: None,
            last: None,
        };
        let board = board_with(status);
        // Slots at 06:00 and 12:00: ready until 12:00.
        assert!(unready_reasons(&cfg, &board, true, utc("2026-05-01T11:59:59Z")).is_empty());
        let reasons = unready_reasons(&cfg, &board, true, utc("2026-05-01T12:00:01Z"));
        assert_eq!(reasons, vec!["organization acme: no sweep yet".to_string()]);
    }

    #[test]
    fn failed_stale_and_database_reasons() {
        let cfg = config("0 */6 * * *");
        let ok = LastSweep {
            started: utc("2026-05-01T06:00:00Z"),
            finished: utc("2026-05-01T06:01:00Z"),
            failure: None,
        };
        let status = |last: LastSweep| OrgStatus {
            tracked_since: utc("2026-05-01T00:00:00Z"),
            running_since: None,
            last: Some(last),
        };
        let board = board_with(status(ok.clone()));
        assert!(unready_reasons(&cfg, &board, true, utc("2026-05-01T17:59:00Z")).is_empty());
        let stale = unready_reasons(&cfg, &board, true, utc("2026-05-01T18:00:01Z"));
        assert_eq!(stale.len(), 1);
        assert!(stale[0].contains("stale"), "{stale:?}");

        let failed = LastSweep {
            failure: Some("admin key refused (401)".into()),
            ..ok
        };
        let board = board_with(status(failed));
        let reasons = unready_reasons(&cfg, &board, false, utc("2026-05-01T07:00:00Z"));
        assert_eq!(
            reasons,
            vec![
                "state database is not reachable".to_string(),
                "organization acme: last sweep failed: admin key refused (401)".to_string()
            ]
        );
    }
}
