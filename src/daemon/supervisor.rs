//! The supervisor: owns the configuration in force, one scheduler loop per organisation, reloads
//! and the shutdown sequence. It is the one place that decides when the daemon stops.
//!
//! It must never run two loops for one organisation (that is what makes overlapping sweeps
//! impossible) and never abandon a sweep before `shutdown_grace` has passed.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::Config;
use crate::daemon::control::Control;
use crate::daemon::error::DaemonError;
use crate::daemon::hooks::{ConfigHook, ReloadFn, ShutdownHook};
use crate::daemon::org_loop::{Shared, org_loop};
use crate::daemon::schedule::{CronSchedule, effective_schedule};

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
    if new.state_path != current.state_path {
        tracing::warn!(
            old = %current.state_path.display(),
            new = %new.state_path.display(),
            "state_path changed; the daemon keeps its state database until restart (`audit` \
             and `notify` read the new path meanwhile)"
        );
    }
    // What a start logs about a configuration, a reload logs too: an operator who fixes a
    // file by SIGHUP must not lose its warnings (a secret file others can read, no policy,
    // a schedule too coarse for a final notice).
    for w in config_warnings(&new, true) {
        tracing::warn!("{w}");
    }
    Ok(new)
}

/// Every warning a configuration gives: its own (from loading), the schedule's
/// (`schedule_warnings`) and, with `gaps`, what it silently leaves out (`config::gaps`). Logged
/// by every command that loads it and by every reload.
pub fn config_warnings(config: &Config, gaps: bool) -> Vec<String> {
    let mut out = config.warnings.clone();
    out.extend(super::schedule::schedule_warnings(config));
    if gaps {
        out.extend(crate::config::gaps(config));
    }
    out
}

/// Owns the configuration, the loops and the shutdown sequence: the one place that decides when
/// the daemon stops.
pub(super) struct Supervisor {
    pub(super) config_tx: watch::Sender<Arc<Config>>,
    pub(super) shared: Arc<Shared>,
    pub(super) reload: ReloadFn,
    pub(super) loops: JoinSet<String>,
    /// Organisations that have a loop; at most one loop per organisation is what makes overlap
    /// impossible.
    pub(super) running: HashSet<String>,
    pub(super) loop_ids: HashMap<tokio::task::Id, String>,
    pub(super) on_shutdown: Option<ShutdownHook>,
    pub(super) on_config: Option<ConfigHook>,
    pub(super) shutdown: CancellationToken,
}

impl Supervisor {
    pub(super) async fn run(
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
                let new = Arc::new(new);
                self.config_tx.send_replace(new.clone());
                if let Some(hook) = &self.on_config {
                    hook(new);
                }
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
            && tokio::time::timeout_at(deadline, run_hook(hook, deadline))
                .await
                .is_err()
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

/// Runs the shutdown hook with a token cancelled at [`hook_stop_at`], so that it stops taking
/// new work while what it has under way can still finish before `deadline` drops it.
async fn run_hook(hook: ShutdownHook, deadline: tokio::time::Instant) {
    let stop = CancellationToken::new();
    let timer = {
        let stop = stop.clone();
        let at = hook_stop_at(tokio::time::Instant::now(), deadline);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            stop.cancel();
        })
    };
    hook(stop).await;
    timer.abort();
}

/// When a shutdown hook started at `now` should stop taking new work: half of what is left of
/// the grace before `deadline`, and at most [`HOOK_MARGIN`] before it.
pub fn hook_stop_at(
    now: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> tokio::time::Instant {
    let left = deadline.saturating_duration_since(now);
    deadline - (left / 2).min(HOOK_MARGIN)
}

/// The most time kept back, before the grace runs out, for the hook's work under way.
const HOOK_MARGIN: Duration = Duration::from_secs(10);
