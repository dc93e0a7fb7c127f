//! One organisation's scheduler loop: wait for the slot (re-reading the wall clock, so a host
//! suspend cannot make it drift), sweep inline, count the slots that were skipped, repeat. A
//! failed sweep runs again after `retry_failed_after`, doubling, while that comes before the
//! next slot: a daily schedule would otherwise lose a day to one unreachable API.
//!
//! Sweeps run inline, so one organisation never has two at once. The loop must never hold a
//! sweep past shutdown: it stops at the next step once the shutdown token fires.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::config::{Config, Schedule};
use crate::daemon::hooks::{SweepFn, SweepRequest, SweepResult, Trigger};
use crate::daemon::schedule::{CronSchedule, effective_schedule};
use crate::metrics::Metrics;
use crate::ops::SweepBoard;

/// State shared by the scheduler loops.
pub(super) struct Shared {
    pub(super) sweep: SweepFn,
    pub(super) metrics: Metrics,
    pub(super) board: SweepBoard,
    pub(super) shutdown: CancellationToken,
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
        // Shutdown first: a slot that falls due as SIGTERM arrives starts no sweep.
        if shutdown.is_cancelled() {
            return Wake::Shutdown;
        }
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
pub(super) fn slots_between(
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
pub(super) async fn org_loop(
    org: String,
    shared: Arc<Shared>,
    mut config_rx: watch::Receiver<Arc<Config>>,
    mut run_now: bool,
) -> String {
    shared.board.track(&org, Utc::now());
    // The last slot run: the next one is another, even if the wall clock stepped back behind
    // it (NTP, a VM restored).
    let mut last_slot: Option<DateTime<Utc>> = None;
    // The retry owed after a failed sweep; a slot that comes first takes its place.
    let mut retry: Option<Retry> = None;
    loop {
        let config = config_rx.borrow_and_update().clone();
        let Some(org_cfg) = config.organizations.iter().find(|o| o.name == org) else {
            tracing::info!(organization = %org, "organization left the configuration; its schedule stops");
            shared.board.forget(&org);
            shared.metrics.forget_organization(&org);
            return org;
        };
        let sched = effective_schedule(&config, org_cfg).clone();
        // A reload that turned retries off cancels the one owed.
        retry = retry.filter(|_| !sched.retry_failed_after.is_zero());
        let Some((cron, next, trigger)) = next_slot(&org, &sched, run_now, last_slot) else {
            // Unreachable with a validated config; wait for a better one rather than spin.
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
        };
        // A retry owed comes first unless the slot does (or a start sweep, after a reload).
        let (at, trigger) = match retry {
            Some(r) if trigger == Trigger::Schedule && r.at < next => (r.at, Trigger::Retry),
            _ => (next, trigger),
        };
        if trigger == Trigger::Schedule {
            tracing::debug!(organization = %org, next = %at.to_rfc3339(), "waiting for the next slot");
        }
        match wait_until(at, &shared.shutdown, Some(&mut config_rx)).await {
            Wake::Due => {}
            // Recompute with the new schedule (and notice removal).
            Wake::ConfigChanged => continue,
            Wake::Shutdown => return org,
        }
        // A retry woken at or after the slot (the host slept) is that slot's sweep.
        let (at, trigger) = if trigger == Trigger::Retry && Utc::now() >= next {
            (next, Trigger::Schedule)
        } else {
            (at, trigger)
        };
        run_now = false;
        // A retry stands for no slot: the slot ahead of it is still to come.
        if trigger != Trigger::Retry {
            last_slot = Some(at);
        }
        let slot = Slot {
            cron: &cron,
            schedule: &sched,
            trigger,
            at,
        };
        let attempt = match (trigger, retry) {
            (Trigger::Retry, Some(r)) => r.attempt.saturating_add(1),
            _ => 0,
        };
        let started = Utc::now();
        retry = match run_slot(&org, &shared, &config_rx, slot).await {
            SlotEnd::Shutdown => return org,
            SlotEnd::Skipped => None,
            SlotEnd::Swept(result) => {
                let now = Utc::now();
                let upcoming = next_fire_not(&cron, sched.timezone, now, last_slot);
                let ends = Ends {
                    now,
                    took: now - started,
                    slot: upcoming.unwrap_or(DateTime::<Utc>::MAX_UTC),
                };
                Retry::after(&org, &result, &sched, attempt, ends)
            }
        };
    }
}

/// When a sweep ended, how long it took and the slot ahead of it.
struct Ends {
    now: DateTime<Utc>,
    took: chrono::Duration,
    slot: DateTime<Utc>,
}

/// A sweep owed again after a failed one.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: DateTime<Utc>,
    /// How many retries came before this one (its delay is `retry_failed_after · 2^attempt`).
    attempt: u32,
}

impl Retry {
    /// The retry a sweep's `result` calls for, if any: only a failed sweep is retried (a partial
    /// one did its work where it could list; its gaps are usually one project's refusal, which
    /// a whole listing again would only repeat). No retry is made that would not end, taking
    /// as long as the sweep before it, before the slot ahead: the slot would be skipped.
    fn after(
        org: &str,
        result: &SweepResult,
        sched: &Schedule,
        attempt: u32,
        ends: Ends,
    ) -> Option<Retry> {
        let SweepResult::Failed { .. } = result else {
            return None;
        };
        let base = sched.retry_failed_after;
        if base.is_zero() {
            return None;
        }
        // Doubling, but never beyond a day: the schedule's next slot comes first anyway.
        let delay =
            (base.saturating_mul(2_u32.saturating_pow(attempt))).min(Duration::from_secs(86_400));
        let at = ends.now + chrono::Duration::from_std(delay).unwrap_or_default();
        let slot = ends.slot;
        if at + ends.took >= slot {
            tracing::info!(organization = %org, next = %slot.to_rfc3339(), "the failed sweep is not retried: the next slot comes first");
            return None;
        }
        tracing::warn!(organization = %org, retry_at = %at.to_rfc3339(), retry = attempt + 1, "the sweep failed; it runs again then, before the next slot");
        Some(Retry { at, attempt })
    }
}

/// The first slot after `now` that is not `last_slot`, the one just run: a clock stepped back
/// behind it would otherwise sweep it twice. Only that slot is skipped, so a clock that was far
/// ahead and stepped back does not stall the schedule until then.
pub(super) fn next_fire_not(
    cron: &CronSchedule,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
    last_slot: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match cron.next_fire(now, tz)? {
        t if Some(t) == last_slot => cron.next_fire(t, tz),
        t => Some(t),
    }
}

/// The schedule, the next slot and why it runs; `None` (logged) when the schedule cannot be
/// used or has no future slot.
fn next_slot(
    org: &str,
    sched: &Schedule,
    run_now: bool,
    last_slot: Option<DateTime<Utc>>,
) -> Option<(CronSchedule, DateTime<Utc>, Trigger)> {
    let cron = match CronSchedule::parse(&sched.cron) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(organization = %org, error = %e, "schedule unusable; not sweeping until the configuration changes");
            return None;
        }
    };
    if run_now {
        return Some((cron, Utc::now(), Trigger::Start));
    }
    match next_fire_not(&cron, sched.timezone, Utc::now(), last_slot) {
        Some(t) => Some((cron, t, Trigger::Schedule)),
        None => {
            tracing::error!(organization = %org, schedule = %cron, "schedule has no future slot");
            None
        }
    }
}

/// A slot that is due.
struct Slot<'a> {
    cron: &'a CronSchedule,
    schedule: &'a Schedule,
    trigger: Trigger,
    at: DateTime<Utc>,
}

/// How a due slot ended.
enum SlotEnd {
    /// Shutdown came meanwhile.
    Shutdown,
    /// The organisation left the configuration before the sweep began.
    Skipped,
    Swept(SweepResult),
}

/// Runs a due slot: counts the slots missed while asleep, waits out the jitter (a retry has
/// none), sweeps with the configuration in force then and counts the slots the sweep ran over.
async fn run_slot(
    org: &str,
    shared: &Shared,
    config_rx: &watch::Receiver<Arc<Config>>,
    slot: Slot<'_>,
) -> SlotEnd {
    let tz = slot.schedule.timezone;
    // Slots that went by while we were not looking (host suspend, a stalled runtime).
    let woke = Utc::now();
    let missed = slots_between(slot.cron, tz, slot.at, woke);
    if missed > 0 {
        tracing::warn!(organization = %org, missed, slot = %slot.at.to_rfc3339(), "woke late; skipping the slots that passed meanwhile");
        shared.metrics.schedule_skipped(org, missed);
    }

    let jitter = slot.schedule.jitter;
    if !jitter.is_zero() && slot.trigger != Trigger::Retry {
        let max_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
        let delay = Duration::from_millis(rand::rng().random_range(0..=max_ms));
        let until = woke + chrono::Duration::from_std(delay).unwrap_or_default();
        if let Wake::Shutdown = wait_until(until, &shared.shutdown, None).await {
            return SlotEnd::Shutdown;
        }
    }

    // A reload during the jitter wait (an exemption added, `mode = "dry-run"`) must reach this
    // sweep: the configuration is read now, not when the slot came due. One that removed the
    // organisation skips the slot; the loop then stops. Not marked seen: the loop re-reads it.
    let config = config_rx.borrow().clone();
    if !config.organizations.iter().any(|o| o.name == org) {
        return SlotEnd::Skipped;
    }
    let result = sweep_once(org, shared, config, slot.trigger, slot.at).await;
    let finished = Utc::now();
    if shared.shutdown.is_cancelled() {
        return SlotEnd::Shutdown;
    }

    let skipped = slots_between(slot.cron, tz, woke, finished);
    if skipped > 0 {
        tracing::warn!(
            organization = %org,
            skipped,
            "schedule slots skipped: the previous sweep of this organization was still running"
        );
        shared.metrics.schedule_skipped(org, skipped);
    }
    SlotEnd::Swept(result)
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
    let run_id = crate::telemetry::new_run_id();
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
mod tests {
    use super::*;

    /// A slot already due when shutdown has begun starts no sweep.
    #[tokio::test]
    async fn shutdown_wins_over_a_slot_already_due() {
        let shutdown = CancellationToken::new();
        let due = Utc::now() - chrono::Duration::seconds(1);
        assert!(matches!(wait_until(due, &shutdown, None).await, Wake::Due));
        shutdown.cancel();
        assert!(matches!(
            wait_until(due, &shutdown, None).await,
            Wake::Shutdown
        ));
    }
}
