//! The `expire` action's decisions: when an expiry must be set on a key, and when and where an
//! expiry keysweep set must be moved back out.
//!
//! Rules (issue 12, item 3):
//! - An open `expire` finding wants its key to end at the finding's deadline. When the key
//!   never expires, or expires later than the deadline (beyond [`EXPIRY_TOLERANCE`]), the
//!   expiry is set to the deadline: never earlier than the promised deadline, and never shorter
//!   than an expiry the key already has (a key that ends earlier is left as it is).
//! - The same check runs every sweep, so an expiry moved later outside keysweep is set back; the
//!   sweep raises an enforcer alert for it ([`SetExpiry::reset`]).
//! - An `Unknown` expiry in the listing (the API did not say) is never a reason to write, nor to
//!   leave the key alone: the write is planned, and the re-read before it decides (an expiry
//!   still unknown there is a re-check skip, which `max_recheck_skips` turns into an alert).
//!   Otherwise the notices would promise an expiry that nothing ever writes.
//! - A finding refused by the organisation's expiry policy stays notice-only: nothing more is
//!   written for it.
//! - A finding withdrawn before its deadline for any reason other than the key's end (exemption,
//!   policy removed or relaxed) moves the expiry keysweep set back out: to the key's own previous
//!   expiry, else to `restore_expiry` from now; when the organisation refuses that distance,
//!   shorter ones are tried down to [`MIN_RESTORE_DAYS`] days ([`Restore::targets`]). An expiry
//!   the owner changed since keysweep set it is theirs and is left alone.
//!
//! Pure like all of `policy/`: no I/O, no clock (`now` is passed in). It decides targets as
//! absolute Unix seconds; the client turns a target into `expires_in_seconds` against the wall
//! clock at each attempt.

use crate::config::Action;
use crate::inventory::{EXPIRY_TOLERANCE, Expiry, Key, expiry_matches};
use crate::policy::finding::{ExpirySet, Finding, FindingId, Stage};

/// The shortest distance an expiry is moved back out to when the organisation refuses longer
/// ones.
pub const MIN_RESTORE_DAYS: i64 = 30;

/// The distances tried, longest first, after the configured one is refused (days).
const RESTORE_LADDER_DAYS: [i64; 4] = [180, 90, 60, MIN_RESTORE_DAYS];

/// How far ahead of the sweep's clock an expiry is set when the finding's deadline has already
/// passed (a policy moved from dry-run to enforce after its deadlines, a key that could not be
/// written before): the API takes no expiry in the past, so the deadline is kept as closely as
/// it can still be written, with room for the sweep to reach its enforce phase and the write
/// to land.
pub const PAST_DEADLINE_LEAD: i64 = 3600;

/// An expiry to set on a key for an open `expire` finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetExpiry {
    /// The target expiry: the finding's deadline, or `now` + [`PAST_DEADLINE_LEAD`] once that
    /// is later (never earlier than promised).
    pub to: i64,
    /// True when keysweep had set it before and the key now expires later: it was moved outside
    /// keysweep (an enforcer alert is due once the write is done).
    pub reset: bool,
}

/// The expiry an `expire` finding with `deadline` sets at `now`: the deadline, or an hour
/// from `now` once it has passed ([`PAST_DEADLINE_LEAD`]). What the write aims at and what its
/// notices say.
pub fn target(deadline: i64, now: i64) -> i64 {
    deadline.max(now.saturating_add(PAST_DEADLINE_LEAD))
}

/// The expiry an open `expire` finding needs written on its key at `now`, if any. A key that
/// already ends by the target is left alone: an expiry is never moved later.
pub fn set_due(f: &Finding, key: &Key, now: i64) -> Option<SetExpiry> {
    if f.action != Action::Expire || !f.stage.is_open() || f.expiry.refused.is_some() {
        return None;
    }
    let to = target(f.deadline, now);
    // A listing without `expires_at` says nothing new: the expiry the finding last saw decides
    // (a key keysweep already set is not written again, nor does it take a cap slot); never
    // seen at all, the write is planned and the re-read before it decides.
    // A last-seen expiry already past proves nothing (the key is still listed): re-read.
    let current = match (key.expires_at, f.expires_at.at()) {
        (Expiry::Unknown, Some(at)) if at > now => f.expires_at,
        (listed, _) => listed,
    };
    match current {
        e if e.ends_by(to) => None,
        Expiry::Unknown | Expiry::Never | Expiry::At(_) => Some(SetExpiry {
            to,
            reset: f.expiry.set.is_some(),
        }),
    }
}

/// Moving an expiry keysweep set back out, for a withdrawn finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restore {
    /// The expiry keysweep set (what the key has now).
    pub from: i64,
    /// The key's own expiry before keysweep set one, if it had one.
    pub previous: Option<i64>,
    /// Seconds from now when there is no previous expiry (`restore_expiry`).
    pub distance: i64,
}

impl Restore {
    /// The expiries to try, in order: the previous one (or now + `restore_expiry`), then
    /// shorter distances from now down to [`MIN_RESTORE_DAYS`]. Each is later than the expiry
    /// keysweep set (otherwise it would not move it out) and later than now.
    pub fn targets(&self, now: i64) -> Vec<i64> {
        let first = match self.previous {
            Some(p) if p > now.saturating_add(EXPIRY_TOLERANCE) => p,
            _ => now.saturating_add(self.distance),
        };
        let mut out = vec![first];
        for days in RESTORE_LADDER_DAYS {
            let t = now.saturating_add(days.saturating_mul(86_400));
            if t < first && out.last().is_some_and(|&l| t < l) {
                out.push(t);
            }
        }
        out.retain(|&t| t > self.from.saturating_add(EXPIRY_TOLERANCE));
        out
    }
}

/// A restore the sweep performs: the finding withdrawn, the key as listed, where to move it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRestore {
    pub finding: FindingId,
    pub key: Key,
    pub restore: Restore,
}

/// The restore a finding needs after this step: it was an open `expire` finding (`before`), it
/// is withdrawn now (`after`: closed as resolved or exempted, or its policy relaxed to another
/// action) before its deadline, keysweep set the key's expiry, and the key still has that
/// expiry.
pub fn restore_due(
    before: &Finding,
    after: &Finding,
    key: &Key,
    now: i64,
    restore_expiry: i64,
) -> Option<Restore> {
    let set = before.expiry.set?;
    let closed = matches!(after.stage, Stage::Resolved | Stage::Exempted);
    let relaxed = after.stage.is_open() && after.action != Action::Expire;
    // Withdrawn in this step, or withdrawn earlier with a restore that failed and is retried.
    let first = before.stage.is_open() && before.action == Action::Expire;
    // While the key lives: until the expiry set, which is an hour past a deadline that had
    // passed when it was written (`target`), not only until the deadline.
    let withdrawn = (first || before.expiry.restore_pending)
        && (closed || relaxed)
        && now < before.deadline.max(set.to);
    if !withdrawn || !expiry_matches(key.expires_at, set.to) {
        return None;
    }
    Some(restore_of(set, restore_expiry))
}

fn restore_of(set: ExpirySet, restore_expiry: i64) -> Restore {
    Restore {
        from: set.to,
        previous: set.previous,
        distance: restore_expiry.max(MIN_RESTORE_DAYS * 86_400),
    }
}

/// The retry of a failed restore for a closed finding (`expiry.restore_pending`), which no
/// listing step sees any more. The key is rebuilt from the finding's snapshot: the restore
/// re-reads it before writing, and leaves an expiry the owner changed alone. A finding that
/// reopened as an `expire` finding wants its expiry, not a restore.
pub fn restore_retry(f: &Finding, restore_expiry: i64) -> Option<PlannedRestore> {
    let set = f.expiry.set?;
    if !f.expiry.restore_pending || (f.stage.is_open() && f.action == Action::Expire) {
        return None;
    }
    let key = f.snapshot_key();
    Some(PlannedRestore {
        finding: f.id.clone(),
        key,
        restore: restore_of(set, restore_expiry),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::OwnerType;

    const DAY: i64 = 86_400;

    /// An `expire` finding closed as exempted, whose expiry keysweep set (at 7 days) could not
    /// be moved back out.
    fn owed(now: i64) -> Finding {
        Finding {
            id: FindingId {
                organization: "acme".into(),
                project_id: "proj_a".into(),
                key_id: "key_1".into(),
                policy: "rotate".into(),
            },
            project_name: None,
            key_name: "k".into(),
            redacted_value: "sk-...1".into(),
            owner_type: OwnerType::User,
            owner: "alice".into(),
            owner_email: None,
            created_at: 0,
            last_used_at: None,
            last_used_unknown: false,
            expires_at: Expiry::At(now + 7 * DAY),
            action: Action::Expire,
            reason: "old".into(),
            stage: Stage::Exempted,
            detected_at: now - DAY,
            deadline: now + 7 * DAY,
            warned_at: None,
            final_notice_at: None,
            last_notified_at: None,
            closed_at: Some(now),
            resolution: None,
            dry_run_noted_at: None,
            warned_dry_run: false,
            final_notice_dry_run: false,
            withheld: None,
            rotation_withheld: None,
            expiry: crate::policy::finding::ExpiryState {
                set: Some(ExpirySet {
                    to: now + 7 * DAY,
                    previous: None,
                    at: now - DAY,
                }),
                refused: None,
                restore_pending: true,
            },
        }
    }

    #[test]
    fn a_failed_restore_is_retried_only_while_owed_and_not_once_the_finding_reopened() {
        let now = 1_000 * DAY;
        let f = owed(now);
        let r = restore_retry(&f, 365 * DAY).unwrap();
        assert_eq!(r.restore.from, now + 7 * DAY);
        assert_eq!(r.key.id, "key_1");
        assert_eq!(r.key.expires_at, Expiry::At(now + 7 * DAY));
        let mut done = f.clone();
        done.expiry.restore_pending = false;
        assert!(restore_retry(&done, 365 * DAY).is_none());
        let mut reopened = f.clone();
        reopened.stage = Stage::Warned;
        assert!(restore_retry(&reopened, 365 * DAY).is_none());
        // A relaxed (open, notify) finding still owes it: its listing step retries it.
        let mut relaxed = f;
        relaxed.stage = Stage::Warned;
        relaxed.action = Action::Notify;
        let mut key = r.key.clone();
        key.expires_at = Expiry::At(now + 7 * DAY);
        assert!(restore_due(&relaxed, &relaxed, &key, now, 365 * DAY).is_some());
        // Not once the owner moved the expiry.
        key.expires_at = Expiry::At(now + 20 * DAY);
        assert!(restore_due(&relaxed, &relaxed, &key, now, 365 * DAY).is_none());
    }

    #[test]
    fn a_finding_withdrawn_after_its_passed_deadline_but_before_the_expiry_set_is_restored() {
        let now = 1_000 * DAY;
        // Enforced after the deadline had passed in dry-run: the expiry went an hour ahead.
        let mut before = owed(now);
        before.stage = Stage::FinalNotice;
        before.expiry.restore_pending = false;
        before.deadline = now - DAY;
        before.expiry.set = Some(ExpirySet {
            to: now + 1800,
            previous: None,
            at: now - 1800,
        });
        let mut after = before.clone();
        after.stage = Stage::Exempted;
        let mut key = owed(now).snapshot_key();
        key.expires_at = Expiry::At(now + 1800);
        let r = restore_due(&before, &after, &key, now, 365 * DAY).unwrap();
        assert_eq!(r.from, now + 1800);
        // Once that expiry has passed there is nothing left to restore.
        assert!(restore_due(&before, &after, &key, now + 1800, 365 * DAY).is_none());
    }

    #[test]
    fn restore_targets_start_at_the_previous_expiry_or_the_distance_and_shrink_to_30_days() {
        let now = 1_000 * DAY;
        let r = Restore {
            from: now + 7 * DAY,
            previous: None,
            distance: 365 * DAY,
        };
        let t: Vec<i64> = r.targets(now).iter().map(|t| (t - now) / DAY).collect();
        assert_eq!(t, vec![365, 180, 90, 60, 30]);
        let r = Restore {
            previous: Some(now + 100 * DAY),
            ..r
        };
        let t: Vec<i64> = r.targets(now).iter().map(|t| (t - now) / DAY).collect();
        assert_eq!(t, vec![100, 90, 60, 30]);
        // Never a target at or before the expiry keysweep set: that would not move it out.
        let r = Restore {
            from: now + 70 * DAY,
            previous: None,
            distance: 365 * DAY,
        };
        let t: Vec<i64> = r.targets(now).iter().map(|t| (t - now) / DAY).collect();
        assert_eq!(t, vec![365, 180, 90]);
    }
}
