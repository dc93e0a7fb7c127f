//! What the daemon is given and what it hands back: the injected sweep, reload and shutdown
//! functions, the request a sweep receives and the result it returns.
//!
//! These are the daemon's whole contract with the rest of keysweep; it must never need to know
//! more about a sweep (the API, policies or state) than what is written here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::ops::ReadyCheck;

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
/// period (flush what the outbox can). Its token is cancelled some time before the grace runs
/// out ([`crate::daemon::hook_stop_at`]): the hook should take no new work after it, so that
/// what it has under way can finish before the hook is dropped.
pub type ShutdownHook = Box<dyn FnOnce(CancellationToken) -> BoxFuture<()> + Send>;

/// Told the configuration in force: at start, and after every reload that was accepted (the
/// very `Arc` the sweeps get). For the caller's own work between sweeps (delivery).
pub type ConfigHook = Arc<dyn Fn(Arc<Config>) + Send + Sync>;

/// What one sweep is asked to do.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    pub organization: String,
    /// Unique per sweep; already in the tracing span, and meant for the audit log.
    pub run_id: String,
    /// The configuration in force when the sweep started (a reload does not change it midway).
    pub config: Arc<Config>,
    /// Cancelled on shutdown: finish the current step (never between a delete's intent and its
    /// outcome record, nor inside a rotation's hand-over; start no new mint), then return
    /// [`SweepResult::Cancelled`].
    pub cancel: CancellationToken,
    /// Why this sweep runs.
    pub trigger: Trigger,
    /// The slot it stands for (the start time for [`Trigger::Start`], the time the retry was
    /// due for [`Trigger::Retry`]).
    pub slot: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `run_on_start` (or the organisation was added by a reload).
    Start,
    /// A cron slot.
    Schedule,
    /// Again after a failed sweep (`retry_failed_after`), before the next slot.
    Retry,
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

/// What [`crate::daemon::run`] needs besides the configuration.
pub struct DaemonDeps {
    pub sweep: SweepFn,
    pub reload: ReloadFn,
    pub metrics: Metrics,
    /// Is the state database reachable? (for `/readyz`)
    pub db_ready: ReadyCheck,
    pub on_shutdown: Option<ShutdownHook>,
    pub on_config: Option<ConfigHook>,
    /// Cancelled the moment shutdown begins (SIGTERM), before the sweeps drain: work of the
    /// caller's own (the delivery between sweeps) stops taking new work with them.
    pub shutdown: CancellationToken,
}
