//! The long-running service: schedules sweeps per organisation, serves the ops endpoints, reacts
//! to signals and drains cleanly.
//!
//! [`run`] is the whole life cycle: it installs the signal handlers, binds the ops server, starts
//! one scheduler loop per organisation and waits. The sweep itself is injected ([`SweepFn`]), so
//! this module knows nothing about the API, policies or state; it must never run two sweeps of
//! the same organisation at once and never abandon a sweep before `shutdown_grace` has passed.
//!
//! The parts: `hooks.rs` (the injected functions and what a sweep is asked and answers),
//! `supervisor.rs` (the configuration in force, one loop per organisation, reloads, the
//! shutdown sequence), `org_loop.rs` (one organisation's loop: wait, sweep inline, count skipped
//! slots), `schedule.rs` (cron, pure), `control.rs` and `signals.rs` (what shutdown and reload
//! requests travel through) and `error.rs`. Children never name this file's items, so the
//! dependencies between them run one way.
//!
//! # Why not tokio-cron-scheduler
//!
//! The design named tokio-cron-scheduler, but its current release (0.15.1) fails four of our
//! requirements. It parses with croner 3 in `Seconds::Required` mode, so a standard 5-field
//! crontab line such as `0 */6 * * *` is rejected. Its time-zone jobs store a fixed UTC offset
//! computed when the job is created and keep using it, so after a DST change every job runs an
//! hour off (its open issue #87; the fix, PR #100, has not been merged). It spawns every
//! activation without a per-job guard, so a slow job overlaps with itself (a per-second job
//! sleeping 3.5 s had four concurrent instances), and `shutdown()` neither waits for nor stops
//! running jobs. Working around all four would leave little of the crate in use, so keysweep
//! parses schedules with croner 4 (5- or 6-field, OR semantics for day-of-month/day-of-week,
//! DST-correct with chrono-tz) and drives them with a small loop of its own: the next fire time
//! is a pure function ([`schedule::CronSchedule::next_fire`]) with table tests over DST days, the
//! loop awaits each sweep inline (so overlap is impossible and skipped slots are counted), sleeps
//! in chunks of at most one second re-reading the wall clock (tokio timers use the monotonic
//! clock, which stops during a host suspend), and shutdown is handled in one place with a
//! deadline.
//!
//! # Life cycle
//!
//! - Start: each organisation sweeps at once when `run_on_start` is set, then at every slot of
//!   its schedule (`organizations[].schedule`, else the global one), each slot delayed by a
//!   random `[0, jitter]`.
//! - A slot that comes while the organisation's sweep is still running is skipped, logged and
//!   counted (`keysweep_schedule_skipped_total`); so are slots missed while the host slept.
//! - A failed sweep ([`SweepResult::Failed`]) runs again after `retry_failed_after`, doubling,
//!   until one succeeds, while the retry comes before the next slot ([`Trigger::Retry`]).
//! - SIGHUP: the configuration is reloaded through [`ReloadFn`]. An invalid one is logged at
//!   error level and the daemon keeps the old one; a valid one takes effect at once (schedules
//!   are recomputed, new organisations start as on start-up, removed ones stop after their
//!   current sweep). `server.listen` changes need a restart.
//! - SIGTERM / SIGINT: no new slots are taken; the in-flight sweeps get their cancellation
//!   token and may finish their current step within `shutdown_grace`; then the shutdown hook runs
//!   (outbox flush) with what remains of the grace, the ops server stops and [`run`] returns
//!   `Ok` (exit 0). A sweep still running after the grace is dropped; the writes it had in
//!   flight are not (a DELETE's intent → outcome, a rotation's mint → sink → old key's expiry:
//!   each runs on a task of its own, which the caller waits for once [`run`] returned, with
//!   `revoke::drain_in_flight` and `rotate::drain_in_flight`). No rotation starts a new mint
//!   once the token is cancelled.

pub mod schedule;

mod control;
mod error;
mod hooks;
mod org_loop;
mod signals;
mod supervisor;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::ops::{self, OpsState, SweepBoard};
use org_loop::Shared;
use supervisor::Supervisor;

pub use control::DaemonControl;
pub use error::{DaemonError, ReloadError};
pub use hooks::{
    BoxFuture, ConfigHook, DaemonDeps, ReloadFn, ShutdownHook, SweepFn, SweepRequest, SweepResult,
    Trigger,
};
pub use schedule::{effective_schedule, org_schedules};
pub use supervisor::{check_reload, config_warnings, hook_stop_at, validate_schedules};

/// Runs the daemon until SIGTERM or SIGINT: installs the signal handlers, starts the ops server
/// and the schedules, and drains on shutdown. Returns `Ok(())` after a clean shutdown (exit 0);
/// `Err` only when it cannot start (address in use, signals unavailable) or the ops server dies.
pub async fn run(initial: Config, deps: DaemonDeps) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives while we bind must still mean "shut down cleanly".
    let signals = signals::Signals::install().map_err(DaemonError::Signals)?;
    let daemon = Daemon::start(initial, deps).await?;
    let forward = tokio::spawn(signals.forward(daemon.control()));
    let result = daemon.wait().await;
    forward.abort();
    Ok(result?)
}

/// A started daemon. [`run`] drives it from signals; tests drive it through [`DaemonControl`].
pub struct Daemon {
    ops_addr: SocketAddr,
    control: DaemonControl,
    config: watch::Receiver<Arc<Config>>,
    supervisor: JoinHandle<Result<(), DaemonError>>,
}

impl Daemon {
    /// Binds the ops server on `config.server.listen` and starts every organisation's schedule.
    pub async fn start(initial: Config, deps: DaemonDeps) -> Result<Daemon, DaemonError> {
        let addr = initial.server.listen;
        let listener = ops::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind { addr, source })?;
        let ops_addr = listener
            .local_addr()
            .map_err(|source| DaemonError::Bind { addr, source })?;
        tracing::info!(listen = %ops_addr, "ops server listening (/healthz, /readyz, /metrics)");

        let (config_tx, config_rx) = watch::channel(Arc::new(initial));
        let shutdown = deps.shutdown.clone();
        let board = SweepBoard::new();
        let schedules = config_rx.clone();
        let ops_state = OpsState {
            metrics: deps.metrics.clone(),
            // Readiness needs each organisation's schedule, never the rest of the configuration.
            schedules: Arc::new(move || org_schedules(&schedules.borrow())),
            board: board.clone(),
            db_ready: deps.db_ready,
        };
        let ops_task = tokio::spawn(ops::serve(listener, ops_state, shutdown.clone()));

        let (control, rx) = DaemonControl::channel();
        let shared = Arc::new(Shared {
            sweep: deps.sweep,
            metrics: deps.metrics,
            board,
            shutdown: shutdown.clone(),
        });
        let supervisor = Supervisor {
            config_tx,
            shared,
            reload: deps.reload,
            loops: JoinSet::new(),
            running: HashSet::new(),
            loop_ids: HashMap::new(),
            on_shutdown: deps.on_shutdown,
            on_config: deps.on_config,
            shutdown,
        };
        if let Some(hook) = &supervisor.on_config {
            hook(supervisor.config_tx.borrow().clone());
        }
        let supervisor = tokio::spawn(supervisor.run(rx, ops_task));
        Ok(Daemon {
            ops_addr,
            control,
            config: config_rx,
            supervisor,
        })
    }

    /// The address the ops server is bound to (useful with port 0).
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    pub fn control(&self) -> DaemonControl {
        self.control.clone()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Waits until the daemon has shut down.
    pub async fn wait(self) -> Result<(), DaemonError> {
        match self.supervisor.await {
            Ok(result) => result,
            Err(e) => Err(DaemonError::Supervisor(e.to_string())),
        }
    }
}
