//! The long-running service: schedules sweeps per organisation, serves the ops endpoints, reacts
//! to signals and drains cleanly.
//!
//! [`run`] is the whole life cycle: it installs the signal handlers, binds the ops server, starts
//! one scheduler loop per organisation and waits. The sweep itself is injected ([`SweepFn`]), so
//! this module knows nothing about the API, policies or state; it must never run two sweeps of
//! the same organisation at once and never abandon a sweep before `shutdown_grace` has passed.
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
//! - SIGHUP: the configuration is reloaded through [`ReloadFn`]. An invalid one is logged at
//!   error level and the daemon keeps the old one; a valid one takes effect at once (schedules
//!   are recomputed, new organisations start as on start-up, removed ones stop after their
//!   current sweep). `server.listen` changes need a restart.
//! - SIGTERM / SIGINT: no new slots are taken; the in-flight sweeps get their cancellation
//!   token and may finish their current step within `shutdown_grace`; then the shutdown hook runs
//!   (outbox flush) with what remains of the grace, the ops server stops and [`run`] returns
//!   `Ok` (exit 0). A sweep still running after the grace is dropped.

pub mod schedule;
mod signals;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::config::{Config, OrgConfig, Schedule};
use crate::metrics::Metrics;
use crate::ops::{self, OpsState, ReadyCheck, SweepBoard};
use schedule::CronSchedule;

/// A boxed, sendable future: what the injected functions return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Runs one sweep of one organisation. The daemon calls it at most once at a time per
/// organisation, inside a span carrying `organization` and `run_id`, and records the sweep's
/// count, duration and last-success time itself (the function must not).
pub type SweepFn = Arc<dyn Fn(SweepRequest) -> BoxFuture<SweepResult> + Send + Sync>;

/// Loads the configuration again (SIGHUP). `Err` carries a human-readable reason, without
/// secrets; the daemon then keeps the configuration it has.
pub type ReloadFn = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Runs once at shutdown after the sweeps have drained, within what is left of the grace
/// period (flush what the outbox can).
pub type ShutdownHook = Box<dyn FnOnce() -> BoxFuture<()> + Send>;

/// What one sweep is asked to do.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    pub organization: String,
    /// Unique per sweep; already in the tracing span, and meant for the audit log.
    pub run_id: String,
    /// The configuration in force when the sweep started (a reload does not change it midway).
    pub config: Arc<Config>,
    /// Cancelled on shutdown: finish the current step (never between a delete's intent and its
    /// outcome record), then return [`SweepResult::Cancelled`].
    pub cancel: CancellationToken,
    /// Why this sweep runs.
    pub trigger: Trigger,
    /// The slot it stands for (the start time for [`Trigger::Start`]).
    pub slot: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `run_on_start` (or the organisation was added by a reload).
    Start,
    /// A cron slot.
    Schedule,
}

/// How a sweep ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepResult {
    /// Every listing complete, every action done.
    Success,
    /// The sweep ran to its end but some of it could not be done (an incomplete listing, a
    /// refused action). It does not make the daemon unready, but it does not advance
    /// `keysweep_last_successful_sweep_timestamp_seconds` either, so an alert on that gauge
    /// catches an organisation that never completes.
    Partial { reason: String },
    /// The sweep could not do its job (authentication refused, API unreachable, state error).
    /// `/readyz` reports the reason until a later sweep succeeds.
    Failed { reason: String },
    /// Stopped early because the cancellation token fired.
    Cancelled,
}

impl SweepResult {
    /// The `outcome` label of `keysweep_sweeps_total`.
    pub fn label(&self) -> &'static str {
        match self {
            SweepResult::Success => "success",
            SweepResult::Partial { .. } => "partial",
            SweepResult::Failed { .. } => "failed",
            SweepResult::Cancelled => "cancelled",
        }
    }
}

/// What [`run`] needs besides the configuration.
pub struct DaemonDeps {
    pub sweep: SweepFn,
    pub reload: ReloadFn,
    pub metrics: Metrics,
    /// Is the state database reachable? (for `/readyz`)
    pub db_ready: ReadyCheck,
    pub on_shutdown: Option<ShutdownHook>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("ops server stopped: {0}")]
    Ops(io::Error),
    #[error("daemon supervisor stopped unexpectedly: {0}")]
    Supervisor(String),
}

/// Why a reload requested through [`DaemonControl::reload`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration, keeping the old one: {0}")]
    Invalid(String),
    #[error("the daemon is shutting down")]
    Stopped,
}

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

/// Sends the daemon what the signals mean. Cheap to clone.
#[derive(Clone)]
pub struct DaemonControl {
    tx: mpsc::UnboundedSender<Control>,
}

enum Control {
    Shutdown,
    Reload(Option<oneshot::Sender<Result<(), String>>>),
}

impl DaemonControl {
    /// What SIGTERM / SIGINT do.
    pub fn shutdown(&self) {
        // A send error means the daemon is already gone, which is what was asked.
        let _ = self.tx.send(Control::Shutdown);
    }

    /// What SIGHUP does, without waiting for the outcome. Returns false if the daemon is gone.
    pub fn request_reload(&self) -> bool {
        self.tx.send(Control::Reload(None)).is_ok()
    }

    /// Reloads and reports whether the new configuration was taken.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Control::Reload(Some(reply)))
            .map_err(|_| ReloadError::Stopped)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(ReloadError::Invalid(reason)),
            Err(_) => Err(ReloadError::Stopped),
        }
    }
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
        let shutdown = CancellationToken::new();
        let board = SweepBoard::new();
        let ops_state = OpsState {
            metrics: deps.metrics.clone(),
            config: config_rx.clone(),
            board: board.clone(),
            db_ready: deps.db_ready,
        };
        let ops_task = tokio::spawn(ops::serve(listener, ops_state, shutdown.clone()));

        let (tx, rx) = mpsc::unbounded_channel();
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
            shutdown,
        };
        let supervisor = tokio::spawn(supervisor.run(rx, ops_task));
        Ok(Daemon {
            ops_addr,
            control: DaemonControl { tx },
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

/// The schedule that applies to `org`: its own, else the global one.
pub fn effective_schedule<'a>(config: &'a Config, org: &'a OrgConfig) -> &'a Schedule {
    org.schedule.as_ref().unwrap_or(&config.schedule)
}

/// Checks that every organisation's effective schedule parses. Config loading validates this
/// too; the daemon checks again before accepting a reload, since a schedule it cannot compute
/// would silently stop an organisation's sweeps.
pub fn validate_schedules(config: &Config) -> Result<(), String> {
    for org in &config.organizations {
        let s = effective_schedule(config, org);
        CronSchedule::parse(&s.cron).map_err(|e| format!("organizations.{}: {e}", org.name))?;
    }
    Ok(())
}

/// Validates a freshly loaded configuration against the one in force. `Err` explains why it is
/// refused; the caller keeps the old one.
pub fn check_reload(current: &Config, loaded: Result<Config, String>) -> Result<Config, String> {
    let new = loaded?;
    validate_schedules(&new)?;
    if new.server.listen != current.server.listen {
        tracing::warn!(
            old = %current.server.listen,
            new = %new.server.listen,
            "server.listen changed; the ops server keeps its address until restart"
        );
    }
    Ok(new)
}

/// State shared by the scheduler loops.
struct Shared {
    sweep: SweepFn,
    metrics: Metrics,
    board: SweepBoard,
    shutdown: CancellationToken,
}

/// Owns the configuration, the loops and the shutdown sequence: the one place that decides when
/// the daemon stops.
struct Supervisor {
    config_tx: watch::Sender<Arc<Config>>,
    shared: Arc<Shared>,
    reload: ReloadFn,
    loops: JoinSet<String>,
    /// Organisations that have a loop; at most one loop per organisation is what makes overlap
    /// impossible.
    running: HashSet<String>,
    loop_ids: HashMap<tokio::task::Id, String>,
    on_shutdown: Option<ShutdownHook>,
    shutdown: CancellationToken,
}

impl Supervisor {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Control>,
        mut ops_task: JoinHandle<io::Result<()>>,
    ) -> Result<(), DaemonError> {
        self.spawn_missing();
        let mut ops_failure = None;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Control::Shutdown) | None => break,
                    Some(Control::Reload(reply)) => {
                        let result = self.reload().await;
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                },
                Some(joined) = self.loops.join_next_with_id() => {
                    let (id, org) = match joined {
                        Ok((id, org)) => (id, Some(org)),
                        Err(e) => {
                            // A loop panicked (a bug). Start it again rather than leave the
                            // organisation unswept.
                            tracing::error!(error = %e, "a scheduler loop panicked; restarting it");
                            (e.id(), None)
                        }
                    };
                    if let Some(org) = self.loop_ids.remove(&id).or(org) {
                        self.running.remove(&org);
                    }
                    self.spawn_missing();
                }
                ended = &mut ops_task => {
                    let err = match ended {
                        Ok(Ok(())) => io::Error::other("ops server exited"),
                        Ok(Err(e)) => e,
                        Err(e) => io::Error::other(e.to_string()),
                    };
                    tracing::error!(error = %err, "ops server stopped; shutting down");
                    ops_failure = Some(err);
                    break;
                }
            }
        }
        self.drain(ops_task, ops_failure.is_none()).await;
        match ops_failure {
            Some(e) => Err(DaemonError::Ops(e)),
            None => Ok(()),
        }
    }

    /// Starts a loop for every configured organisation that has none.
    fn spawn_missing(&mut self) {
        let config = self.config_tx.borrow().clone();
        for org in &config.organizations {
            if self.running.insert(org.name.clone()) {
                let run_now = effective_schedule(&config, org).run_on_start;
                let rx = self.config_tx.subscribe();
                let shared = self.shared.clone();
                let name = org.name.clone();
                let handle = self
                    .loops
                    .spawn(org_loop(name.clone(), shared, rx, run_now));
                self.loop_ids.insert(handle.id(), name);
            }
        }
    }

    async fn reload(&mut self) -> Result<(), String> {
        let reload = self.reload.clone();
        let loaded = tokio::task::spawn_blocking(move || reload())
            .await
            .unwrap_or_else(|e| Err(format!("reload panicked: {e}")));
        let current = self.config_tx.borrow().clone();
        match check_reload(&current, loaded) {
            Ok(new) => {
                tracing::info!(
                    config_hash = %new.hash,
                    organizations = new.organizations.len(),
                    "configuration reloaded"
                );
                self.config_tx.send_replace(Arc::new(new));
                self.spawn_missing();
                Ok(())
            }
            Err(reason) => {
                tracing::error!(
                    reason = %reason,
                    config_hash = %current.hash,
                    "configuration reload refused; keeping the current configuration"
                );
                Err(reason)
            }
        }
    }

    /// The shutdown sequence.
    async fn drain(mut self, ops_task: JoinHandle<io::Result<()>>, ops_alive: bool) {
        let grace = self.config_tx.borrow().shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let in_flight = self
            .shared
            .board
            .snapshot()
            .values()
            .filter(|s| s.running_since.is_some())
            .count();
        tracing::info!(
            grace = %humantime::format_duration(grace),
            in_flight,
            "shutting down: no new slots; letting in-flight sweeps finish their current step"
        );
        self.shutdown.cancel();
        let drained = tokio::time::timeout_at(deadline, async {
            while self.loops.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                abandoned = self.loops.len(),
                "shutdown grace expired; dropping sweeps that are still running"
            );
            self.loops.shutdown().await;
        }
        if let Some(hook) = self.on_shutdown.take()
            && tokio::time::timeout_at(deadline, hook()).await.is_err()
        {
            tracing::warn!("shutdown hook did not finish within the grace period");
        }
        if ops_alive {
            // In-flight scrapes are short; do not let a stuck client hold the exit.
            let ops = AbortOnDropHandle::new(ops_task);
            if tokio::time::timeout(Duration::from_secs(2), ops)
                .await
                .is_err()
            {
                tracing::warn!("ops server did not stop in time");
            }
        }
        tracing::info!("shutdown complete");
    }
}

/// How a wait ended.
enum Wake {
    Due,
    ConfigChanged,
    Shutdown,
}

/// Longest single sleep. tokio timers run on the monotonic clock, which stops while the host is
/// suspended; waking at least this often and re-reading the wall clock bounds the drift a
/// suspend can cause to this.
const MAX_SLEEP_CHUNK: Duration = Duration::from_secs(1);

/// Most slots counted one by one when reporting skipped slots (a long suspend under a
/// per-second schedule would otherwise mean a long count).
const MAX_COUNTED_SLOTS: u64 = 100_000;

/// Sleeps until the wall clock reaches `target`, in chunks, unless shutdown or (when a receiver
/// is given) a configuration change comes first.
async fn wait_until(
    target: DateTime<Utc>,
    shutdown: &CancellationToken,
    mut config: Option<&mut watch::Receiver<Arc<Config>>>,
) -> Wake {
    loop {
        let now = Utc::now();
        if now >= target {
            return Wake::Due;
        }
        let chunk = (target - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP_CHUNK);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Wake::Shutdown,
            changed = config_changed(config.as_deref_mut()) => {
                if changed {
                    return Wake::ConfigChanged;
                }
            }
            _ = tokio::time::sleep(chunk) => {}
        }
    }
}

/// Resolves when the configuration changes (true). Never resolves without a receiver or once
/// the sender is gone (the supervisor is shutting down, which the token reports).
async fn config_changed(rx: Option<&mut watch::Receiver<Arc<Config>>>) -> bool {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_ok() {
                return true;
            }
            std::future::pending().await
        }
        None => std::future::pending().await,
    }
}

/// Slots of `cron` in `(after, until]`, capped at [`MAX_COUNTED_SLOTS`].
fn slots_between(
    cron: &CronSchedule,
    tz: chrono_tz::Tz,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
) -> u64 {
    let mut n = 0;
    let mut t = after;
    while n < MAX_COUNTED_SLOTS {
        match cron.next_fire(t, tz) {
            Some(next) if next <= until => {
                n += 1;
                t = next;
            }
            _ => break,
        }
    }
    n
}

/// One organisation's scheduler: wait for the slot, sweep inline, count what was skipped,
/// repeat. Returns the organisation's name when it stops (shutdown or removed from config).
async fn org_loop(
    org: String,
    shared: Arc<Shared>,
    mut config_rx: watch::Receiver<Arc<Config>>,
    mut run_now: bool,
) -> String {
    shared.board.track(&org, Utc::now());
    loop {
        let config = config_rx.borrow_and_update().clone();
        let Some(org_cfg) = config.organizations.iter().find(|o| o.name == org) else {
            tracing::info!(organization = %org, "organization left the configuration; its schedule stops");
            shared.board.forget(&org);
            return org;
        };
        let sched = effective_schedule(&config, org_cfg).clone();
        let cron = match CronSchedule::parse(&sched.cron) {
            Ok(c) => c,
            Err(e) => {
                // Unreachable with a validated config; wait for a better one rather than spin.
                tracing::error!(organization = %org, error = %e, "schedule unusable; not sweeping until the configuration changes");
                match wait_until(
                    DateTime::<Utc>::MAX_UTC,
                    &shared.shutdown,
                    Some(&mut config_rx),
                )
                .await
                {
                    Wake::Shutdown => return org,
                    _ => continue,
                }
            }
        };
        let tz = sched.timezone;
        let (slot, trigger) = if run_now {
            (Utc::now(), Trigger::Start)
        } else {
            match cron.next_fire(Utc::now(), tz) {
                Some(t) => (t, Trigger::Schedule),
                None => {
                    tracing::error!(organization = %org, schedule = %cron, "schedule has no future slot");
                    match wait_until(
                        DateTime::<Utc>::MAX_UTC,
                        &shared.shutdown,
                        Some(&mut config_rx),
                    )
                    .await
                    {
                        Wake::Shutdown => return org,
                        _ => continue,
                    }
                }
            }
        };
        if trigger == Trigger::Schedule {
            tracing::debug!(organization = %org, next = %slot.to_rfc3339(), "waiting for the next slot");
        }
        match wait_until(slot, &shared.shutdown, Some(&mut config_rx)).await {
            Wake::Due => {}
            // Recompute with the new schedule (and notice removal).
            Wake::ConfigChanged => continue,
            Wake::Shutdown => return org,
        }
        run_now = false;

        // Slots that went by while we were not looking (host suspend, a stalled runtime).
        let woke = Utc::now();
        let missed = slots_between(&cron, tz, slot, woke);
        if missed > 0 {
            tracing::warn!(organization = %org, missed, slot = %slot.to_rfc3339(), "woke late; skipping the slots that passed meanwhile");
            shared.metrics.schedule_skipped(&org, missed);
        }

        if !sched.jitter.is_zero() {
            let max_ms = u64::try_from(sched.jitter.as_millis()).unwrap_or(u64::MAX);
            let delay = Duration::from_millis(rand::rng().random_range(0..=max_ms));
            let until = woke + chrono::Duration::from_std(delay).unwrap_or_default();
            if let Wake::Shutdown = wait_until(until, &shared.shutdown, None).await {
                return org;
            }
        }

        sweep_once(&org, &shared, config.clone(), trigger, slot).await;
        let finished = Utc::now();
        if shared.shutdown.is_cancelled() {
            return org;
        }

        let skipped = slots_between(&cron, tz, woke, finished);
        if skipped > 0 {
            tracing::warn!(
                organization = %org,
                skipped,
                "schedule slots skipped: the previous sweep of this organization was still running"
            );
            shared.metrics.schedule_skipped(&org, skipped);
        }
    }
}

/// Runs one sweep in its own task (so a panic becomes a failed sweep, and dropping this future
/// at the end of the grace period aborts it) and records its outcome.
async fn sweep_once(
    org: &str,
    shared: &Shared,
    config: Arc<Config>,
    trigger: Trigger,
    slot: DateTime<Utc>,
) -> SweepResult {
    let run_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("sweep", organization = %org, run_id = %run_id);
    let started = Utc::now();
    shared.board.sweep_started(org, started);
    let request = SweepRequest {
        organization: org.to_string(),
        run_id,
        config,
        cancel: shared.shutdown.child_token(),
        trigger,
        slot,
    };
    let clock = std::time::Instant::now();
    let future = (shared.sweep)(request).instrument(span.clone());
    let result = match AbortOnDropHandle::new(tokio::spawn(future)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => SweepResult::Failed {
            reason: "the sweep panicked (a bug; see the log)".to_string(),
        },
        Err(_) => SweepResult::Cancelled,
    };
    let secs = clock.elapsed().as_secs_f64();
    let finished = Utc::now();
    shared.metrics.observe_sweep(org, secs, result.label());
    let board_result = match &result {
        SweepResult::Success => {
            shared
                .metrics
                .set_last_successful_sweep(org, finished.timestamp());
            Some(Ok(()))
        }
        SweepResult::Partial { .. } => Some(Ok(())),
        SweepResult::Failed { reason } => Some(Err(reason.clone())),
        SweepResult::Cancelled => None,
    };
    shared
        .board
        .sweep_finished(org, started, finished, board_result);
    span.in_scope(|| match &result {
        SweepResult::Success => tracing::info!(seconds = secs, "sweep finished"),
        SweepResult::Partial { reason } => {
            tracing::warn!(seconds = secs, reason = %reason, "sweep finished with gaps")
        }
        SweepResult::Failed { reason } => {
            tracing::error!(seconds = secs, reason = %reason, "sweep failed")
        }
        SweepResult::Cancelled => tracing::info!(seconds = secs, "sweep cancelled by shutdown"),
    });
    result
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A minimal valid configuration for unit tests.
    use std::path::PathBuf;
    use std::time::Duration;

    use secrecy::SecretString;

    use crate::config::*;

    pub fn config(cron: &str, orgs: &[&str]) -> Config {
        Config {
            warnings: Vec::new(),
            source: None,
            hash: "test".into(),
            mode: Mode::DryRun,
            state_path: PathBuf::from("state.db"),
            organizations: orgs
                .iter()
                .map(|name| OrgConfig {
                    admin_key_source: "test".into(),
                    name: name.to_string(),
                    base_url: url::Url::parse("http://127.0.0.1:1/v1").unwrap(),
                    admin_key: SecretString::from("sk-admin-test"),
                    projects: vec![],
                    exclude_projects: vec![],
                    include_archived: false,
                    ca_file: None,
                    schedule: None,
                })
                .collect(),
            limits: Limits {
                concurrency: 1,
                requests_per_second: None,
                max_retries: 0,
                request_timeout: Duration::from_secs(5),
                max_response_bytes: 1 << 20,
            },
            policies: vec![],
            exemptions: vec![],
            safety: Safety {
                max_revocations_per_run: 0,
                max_revocations_per_project_percent: 0,
                max_revocations_per_day: 0,
                kill_switch_file: None,
                service_accounts: ServiceAccountRule::NotifyOnly,
            },
            channels: vec![],
            routes: vec![],
            ops_channels: vec![],
            owner_fallback: vec![],
            notifications: NotificationSettings {
                repeat_interval: Duration::from_secs(86_400),
                max_attempts: 3,
                outbox_dir: None,
            },
            schedule: Schedule {
                cron: cron.to_string(),
                timezone: chrono_tz::Tz::UTC,
                run_on_start: true,
                jitter: Duration::ZERO,
            },
            server: ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
            },
            log: LogConfig { format: None },
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_between_counts_the_half_open_interval() {
        let cron = CronSchedule::parse("* * * * * *").unwrap();
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let tz = chrono_tz::Tz::UTC;
        assert_eq!(
            slots_between(
                &cron,
                tz,
                t("2026-01-01T00:00:00.300Z"),
                t("2026-01-01T00:00:02.700Z")
            ),
            2
        );
        assert_eq!(
            slots_between(
                &cron,
                tz,
                t("2026-01-01T00:00:00Z"),
                t("2026-01-01T00:00:00.900Z")
            ),
            0
        );
    }

    #[test]
    fn a_reload_with_an_unparsable_schedule_is_refused() {
        let current = test_support::config("0 * * * *", &["acme"]);
        let bad = test_support::config("61 * * * *", &["acme"]);
        let err = check_reload(&current, Ok(bad)).unwrap_err();
        assert!(err.contains("organizations.acme"), "{err}");
        let err = check_reload(&current, Err("file: key: nope".into())).unwrap_err();
        assert_eq!(err, "file: key: nope");
        assert!(check_reload(&current, Ok(test_support::config("*/5 * * * *", &["acme"]))).is_ok());
    }
}
