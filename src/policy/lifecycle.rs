//! The lifecycle of one (key, policy) finding: detected → warned → final notice → revoked, or
//! closed early as resolved / exempted.
//!
//! [`advance`] is a pure state transition: given the stored finding (if any), the moment of this
//! sweep and what the sweep observed, it returns the finding to store, the notices that are due
//! and whether a revocation is due. It never does I/O, reads no clock and deletes nothing: the
//! sweep persists the result, queues the notices and hands revoke-due findings to
//! `policy::plan`, which applies the safety rails.
//!
//! Rules (issue 3, item 2, and issue 4, item 3):
//! - First detection opens the finding in stage `Warned` and queues a `Warning` at once. The
//!   deadline is fixed then: `max(violating_since, detected_at + warn_before)`, and moves only
//!   later, and only when the owner is warned anew: an action changed (see below), or the first
//!   sweep that can write after warnings only a dry-run (or `notify-only`) sent.
//! - At most one of `Warning`, `FinalNotice`, `Reminder` is queued per finding and step, so an
//!   owner never gets two messages about one finding from one sweep.
//! - `FinalNotice` is queued once, for `revoke` and `expire` findings, in the first step after
//!   the warning where `now >= deadline - final_notice`, or earlier, in the last step before
//!   then: the one whose next scheduled sweep (`next_sweep`, the schedule's next slot plus its
//!   jitter) starts after `deadline - final_notice`. So a schedule coarser than `final_notice`
//!   still gives the owner at least `final_notice` of warning when the sweeps come as scheduled
//!   (an `expire` key ends at its deadline whether keysweep sweeps again or not).
//! - A revocation is due when the action is `revoke`, `now >= deadline`, the warning was queued
//!   in an *earlier* step at least `warn_before` ago, and the final notice has been queued. When
//!   the final notice only becomes due in the same step as the deadline, it is queued in that
//!   step and the revocation is still reported due: the sweep queues notices before it deletes,
//!   so the owner gets the final notice before (not after) the key disappears, and a sweep
//!   schedule coarser than `final_notice` cannot postpone a revocation forever.
//! - A revocation is never due in the step that first warns (even with `warn_before = 0`): the
//!   warning must have been queued by an earlier sweep.
//! - A final notice a dry-run sent ("would be revoked") is owed again by the first sweep that
//!   can write; the deadline stays, so a `--dry-run` preview never changes what the real run
//!   then does.
//! - `Reminder` when nothing else was queued and `last_notified_at + repeat_interval <= now`.
//! - An open finding closes with a `Resolved` notice when the key is gone, no longer violates, or
//!   is exempted. Closed findings stay closed; a new violation opens a new finding with a new
//!   detection time and deadline.
//! - An action change on an open finding is a changed finding and re-sends the `Warning`. From
//!   `notify` to `revoke`, the revocation deadline is set for the first time as far as the owner
//!   knows, so it becomes `max(old deadline, violating_since, now + warn_before)`: later, never
//!   earlier, and announced by that warning.
//! - `notify` findings never become revoke-due and get no final notice (there is nothing to be
//!   final about).
//! - `expire` findings get the same warning, final notice and deadline as `revoke` ones but are
//!   never revoke-due: the expiry set on the key (`policy::expiry`) ends the key at the deadline,
//!   and the finding then closes as `expired` ([`Observation::Expired`]).

use std::sync::Arc;

use crate::config::Action;
use crate::inventory::{Expiry, Key};
use crate::policy::finding::{ExpiryState, Finding, FindingId, Notice, NoticeKind, Stage};
pub use crate::policy::observation::Observation;
use crate::policy::observation::Violation;

/// The resolution of a finding whose key a complete listing no longer has. The sweep adds who
/// deleted it when the audit log says (`sweep/owners.rs`).
pub const KEY_DELETED: &str = "key deleted";

/// The outcome of one step for one (key, policy) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The finding as it should be stored after this step; `None` when there is none (a key
    /// that never violated).
    pub next: Option<Finding>,
    /// Notices due now, in the order they must be queued.
    pub notices: Vec<NoticeKind>,
    /// The finding has reached its deadline with all notices given: a candidate for `plan`.
    /// Due is not done: the plan may still withhold it, and only the caller marks it revoked.
    pub revoke_due: bool,
}

impl Transition {
    /// The notices with the finding snapshot they describe, each with its own copy of it (the
    /// lifecycle tests' view; a sweep shares one finding, [`Transition::notices_about`]).
    /// `dry_run` is carried so messages can say "would be revoked".
    #[cfg(test)]
    pub fn notices(&self, dry_run: bool) -> Vec<Notice> {
        let Some(finding) = &self.next else {
            return Vec::new();
        };
        self.notices_about(&Arc::new(finding.clone()), dry_run)
            .collect()
    }

    /// The notices due with this transition, about `finding` (its `next` as the caller keeps
    /// it): every notice shares it instead of holding a copy. `dry_run` is carried so messages
    /// can say "would be revoked".
    pub fn notices_about<'a>(
        &'a self,
        finding: &'a Arc<Finding>,
        dry_run: bool,
    ) -> impl Iterator<Item = Notice> + 'a {
        (self.notices.iter()).map(move |&kind| Notice::of(kind, Arc::clone(finding), dry_run))
    }

    fn unchanged(prev: Option<&Finding>) -> Transition {
        Transition {
            next: prev.cloned(),
            notices: Vec::new(),
            revoke_due: false,
        }
    }
}

/// Advances one (key, policy) finding by one sweep at `now` (Unix seconds).
///
/// `repeat_interval` (seconds) spaces reminders for unchanged open findings; zero or negative
/// turns reminders off rather than repeating every sweep. `next_sweep` is when the next
/// scheduled sweep starts at the latest (`None`: no schedule known), so a final notice it would
/// bring too late goes out now. The sweep that first warns gives no final notice: a schedule no
/// finer than `warn_before - final_notice` can still end a key without one (`keysweep` warns
/// at start-up, `daemon::schedule::schedule_warnings`). `dry_run`: this sweep writes nothing
/// to the key, so its notices say what keysweep *would* do (dry-run, or a service-account key
/// under `service_account_keys = "notify-only"`); the first sweep that can write warns again.
pub fn advance(
    prev: Option<&Finding>,
    now: i64,
    observed: Observation<'_>,
    repeat_interval: i64,
    next_sweep: Option<i64>,
    dry_run: bool,
) -> Transition {
    let open = prev.filter(|f| f.stage.is_open());
    let when = When {
        now,
        repeat_interval,
        next_sweep,
        dry_run,
    };
    match (open, observed) {
        (None, Observation::Violating { key, violation }) => detect(key, violation, now, dry_run),
        // Nothing open: closed findings stay closed and non-violations create nothing.
        (None, _) => Transition::unchanged(prev),
        (Some(f), Observation::Violating { key, violation }) => progress(f, key, violation, &when),
        (Some(f), Observation::Compliant) => close(f, now, Stage::Resolved, "no longer violates"),
        (Some(f), Observation::Gone) => close(f, now, Stage::Resolved, KEY_DELETED),
        (Some(f), Observation::Exempted { reason }) => {
            close(f, now, Stage::Exempted, &format!("exempted: {reason}"))
        }
        (Some(f), Observation::Expired { at }) => {
            let when = at.map_or_else(String::new, |t| {
                format!(" at {}", crate::timefmt::rfc3339(t))
            });
            let mut t = close(
                f,
                now,
                Stage::Expired,
                &format!("expired: OpenAI ended the key{when}"),
            );
            if let Some(next) = &mut t.next {
                next.expires_at = at.map_or(next.expires_at, Expiry::At);
            }
            t
        }
    }
}

/// The finding after a confirmed deletion. Only the caller knows the delete succeeded, so only
/// the caller closes a finding as revoked; queue [`revoked_notice`] with it.
pub fn mark_revoked(f: &Finding, now: i64) -> Finding {
    Finding {
        stage: Stage::Revoked,
        closed_at: Some(now),
        resolution: Some("revoked".to_string()),
        last_notified_at: Some(now),
        ..f.clone()
    }
}

/// The `Revoked` notice for a finding: after [`mark_revoked`] in enforce mode, or for an open
/// finding with `dry_run = true` ("would have been revoked").
pub fn revoked_notice(f: &Finding, dry_run: bool) -> Notice {
    Notice::of(NoticeKind::Revoked, Arc::new(f.clone()), dry_run)
}

/// The deadline a new finding gets: never before the condition started and never before the
/// owner has had `warn_before` to react to the warning queued now.
pub fn initial_deadline(violation: &Violation, detected_at: i64) -> i64 {
    violation
        .violating_since
        .max(detected_at.saturating_add(violation.warn_before.max(0)))
}

/// The owner's e-mail for owner mail: none when the owner's project access is inactive (they
/// left the project), so their keys go to `owner_fallback` instead (issue 14, row 14).
fn reachable_owner_email(key: &Key) -> Option<String> {
    match key.owner_access {
        crate::inventory::OwnerAccess::Inactive => None,
        _ => key.owner.email.clone(),
    }
}

/// The sweep a finding advances in: its clock, the reminder interval, when the next sweep
/// comes at the latest, and whether it writes nothing to the key (see [`advance`]).
struct When {
    now: i64,
    repeat_interval: i64,
    next_sweep: Option<i64>,
    dry_run: bool,
}

fn detect(key: &Key, v: &Violation, now: i64, dry_run: bool) -> Transition {
    let finding = Finding {
        id: FindingId {
            organization: key.organization.clone(),
            project_id: key.project_id.clone(),
            key_id: key.id.clone(),
            policy: v.policy.clone(),
        },
        project_name: key.project_name.clone(),
        key_name: key.name.clone(),
        redacted_value: key.redacted_value.clone(),
        owner_type: key.owner.kind,
        owner: key.owner.display().to_string(),
        owner_email: reachable_owner_email(key),
        created_at: key.created_at,
        last_used_at: key.last_used_at,
        last_used_unknown: key.last_used_unknown,
        expires_at: key.expires_at,
        action: v.action,
        reason: v.reason.clone(),
        stage: Stage::Warned,
        detected_at: now,
        deadline: initial_deadline(v, now),
        warned_at: Some(now),
        final_notice_at: None,
        last_notified_at: Some(now),
        closed_at: None,
        resolution: None,
        dry_run_noted_at: None,
        warned_dry_run: dry_run,
        final_notice_dry_run: false,
        withheld: None,
        rotation_withheld: None,
        expiry: ExpiryState::default(),
    };
    Transition {
        next: Some(finding),
        notices: vec![NoticeKind::Warning],
        revoke_due: false,
    }
}

/// Refreshes what people read from the listing; the decision inputs (detection, deadline)
/// stay as fixed.
fn refresh(next: &mut Finding, key: &Key, v: &Violation) {
    next.project_name = key.project_name.clone();
    next.key_name = key.name.clone();
    next.redacted_value = key.redacted_value.clone();
    next.owner_type = key.owner.kind;
    next.owner = key.owner.display().to_string();
    next.owner_email = reachable_owner_email(key);
    next.created_at = key.created_at;
    // A listing that left the field out says nothing about the key's use.
    if !key.last_used_unknown {
        next.last_used_at = key.last_used_at;
        next.last_used_unknown = false;
    }
    // An answer without `expires_at` says nothing new: keep the expiry last seen.
    if !key.expires_at.is_unknown() {
        next.expires_at = key.expires_at;
    }
    next.reason = v.reason.clone();
}

/// The policy's action changed: a new warning, with its deadline. To an action that writes
/// (revoke or expire) the deadline is announced now, so it can only move later, and the final
/// notice is owed again. Between the two as well: a DELETE waits `warn_before` from this
/// warning, and the notice must not name an earlier date.
fn change_action(next: &mut Finding, v: &Violation, now: i64, warn_before: i64) {
    if v.action.enforces() {
        let since = if next.action.enforces() {
            next.deadline
        } else {
            next.deadline.max(v.violating_since)
        };
        next.deadline = since.max(now.saturating_add(warn_before));
        next.final_notice_at = None;
    }
    next.action = v.action;
    next.warned_at = Some(now);
    next.stage = Stage::Warned;
}

fn progress(f: &Finding, key: &Key, v: &Violation, when: &When) -> Transition {
    let When {
        now,
        repeat_interval,
        next_sweep,
        dry_run,
    } = *when;
    let mut next = f.clone();
    refresh(&mut next, key, v);

    let mut notices = Vec::new();
    let warn_before = v.warn_before.max(0);

    if next.action != v.action {
        change_action(&mut next, v, now, warn_before);
        notices.push(NoticeKind::Warning);
    } else if next.warned_at.is_none() {
        // A finding stored before it could be warned (e.g. a crash): warn now, and let the
        // warning period run from now.
        next.warned_at = Some(now);
        next.stage = Stage::Warned;
        notices.push(NoticeKind::Warning);
    }
    let rewarn = f.warned_dry_run && !dry_run && v.action.enforces();
    if rewarn {
        // Every warning so far said what keysweep *would* do. The first sweep that can write
        // says what it *will* do, with the whole warning period from now and a final notice
        // to come: a deadline that passed during the rollout would otherwise revoke (or end)
        // the key at once. Also when the action changed in the same sweep.
        next.deadline = next.deadline.max(now.saturating_add(warn_before));
        next.final_notice_at = None;
        next.final_notice_dry_run = false;
        next.warned_at = Some(now);
        next.stage = Stage::Warned;
        if notices.is_empty() {
            notices.push(NoticeKind::Warning);
        }
    } else if f.final_notice_dry_run && !dry_run {
        // The warning was real, the final notice a rehearsal's ("would be revoked"): a real
        // one goes out first, in this sweep if it is due (before any write). The deadline
        // stays: a `--dry-run` preview must not change what the real run then does, and a
        // sweep reaching the deadline with no final notice sent gives it with the DELETE
        // anyway (the rule above, for schedules coarser than `final_notice`).
        next.final_notice_at = None;
    }
    let warned_now = !notices.is_empty();
    if warned_now {
        next.warned_dry_run = dry_run;
    }

    let final_due = next.deadline.saturating_sub(v.final_notice.max(0));
    // The next sweep would come after the final notice is due: this is the last one before.
    let last_before = next_sweep.is_some_and(|n| n > final_due);
    if !warned_now
        && next.action.enforces()
        && next.final_notice_at.is_none()
        && (now >= final_due || last_before)
    {
        next.final_notice_at = Some(now);
        next.stage = Stage::FinalNotice;
        notices.push(NoticeKind::FinalNotice);
        next.final_notice_dry_run = dry_run;
    }

    if notices.is_empty() && repeat_interval > 0 {
        let last = next
            .last_notified_at
            .or(next.warned_at)
            .unwrap_or(next.detected_at);
        if last.saturating_add(repeat_interval) <= now {
            notices.push(NoticeKind::Reminder);
        }
    }
    if !notices.is_empty() {
        next.last_notified_at = Some(now);
    }

    let revoke_due = next.action == Action::Revoke
        && !warned_now
        && now >= next.deadline
        && next
            .warned_at
            .is_some_and(|w| w.saturating_add(warn_before) <= now)
        && next.final_notice_at.is_some();

    Transition {
        next: Some(next),
        notices,
        revoke_due,
    }
}

fn close(f: &Finding, now: i64, stage: Stage, resolution: &str) -> Transition {
    let next = Finding {
        stage,
        closed_at: Some(now),
        resolution: Some(resolution.to_string()),
        last_notified_at: Some(now),
        ..f.clone()
    };
    Transition {
        next: Some(next),
        notices: vec![NoticeKind::Resolved],
        revoke_due: false,
    }
}
