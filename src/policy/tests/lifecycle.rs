//! Table tests of `policy::lifecycle::advance`: one row per sweep, with the notices, stage and
//! revoke-due flag expected after it.

use super::{DAY, HOUR, key};
use crate::config::Action;
use crate::inventory::Key;
use crate::policy::finding::{Finding, NoticeKind, Stage};
use crate::policy::lifecycle::{
    Observation, Transition, advance, initial_deadline, mark_revoked, revoked_notice,
};
use crate::policy::rules::Violation;

use NoticeKind::{FinalNotice as Fin, Reminder as Rem, Resolved as Res, Warning as Warn};

#[derive(Clone, Copy)]
enum Obs {
    V,
    Compliant,
    Exempt,
    Gone,
}

struct Row {
    at: i64,
    obs: Obs,
    notices: &'static [NoticeKind],
    due: bool,
    stage: Stage,
}

fn row(at: i64, obs: Obs, notices: &'static [NoticeKind], due: bool, stage: Stage) -> Row {
    Row {
        at,
        obs,
        notices,
        due,
        stage,
    }
}

/// `rotate-90d`-like violation of a key created at 0: `max_age` 90d.
fn violation(action: Action, warn_before: i64, final_notice: i64) -> Violation {
    Violation {
        policy: "rotate".to_string(),
        action,
        reason: "older than 90d".to_string(),
        violating_since: 90 * DAY,
        warn_before,
        final_notice,
    }
}

/// Runs the rows in order, asserting each, and returns the stored finding after each row.
fn run(
    mut prev: Option<Finding>,
    k: &Key,
    v: &Violation,
    repeat: i64,
    rows: &[Row],
) -> Vec<Option<Finding>> {
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let obs = match r.obs {
            Obs::V => Observation::Violating {
                key: k,
                violation: v,
            },
            Obs::Compliant => Observation::Compliant,
            Obs::Exempt => Observation::Exempted {
                reason: "migration",
            },
            Obs::Gone => Observation::Gone,
        };
        let t = advance(prev.as_ref(), r.at, obs, repeat, None, false);
        assert_eq!(t.notices, r.notices, "row {i} (t={}) notices", r.at);
        assert_eq!(t.revoke_due, r.due, "row {i} (t={}) revoke_due", r.at);
        let next = t
            .next
            .clone()
            .expect("a finding exists in every row of these tables");
        assert_eq!(next.stage, r.stage, "row {i} (t={}) stage", r.at);
        if !t.notices.is_empty() {
            assert_eq!(next.last_notified_at, Some(r.at), "row {i}");
        }
        let built = t.notices(true);
        assert_eq!(built.len(), t.notices.len());
        assert!(built.iter().all(|n| n.dry_run && *n.finding == next));
        // The sweep's way: every notice shares the one copy it keeps.
        let kept = std::sync::Arc::new(next.clone());
        let shared: Vec<_> = t.notices_about(&kept, false).collect();
        assert_eq!(shared.len(), t.notices.len());
        assert!((shared.iter()).all(|n| !n.dry_run && std::sync::Arc::ptr_eq(&n.finding, &kept)));
        prev = Some(next);
        out.push(prev.clone());
    }
    out
}

/// One step of a pair that violates, with reminders every day.
fn violating(prev: Option<&Finding>, now: i64, key: &Key, violation: &Violation) -> Transition {
    advance(
        prev,
        now,
        Observation::Violating { key, violation },
        DAY,
        None,
        false,
    )
}

#[test]
fn staged_revocation_of_a_max_age_finding() {
    let k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    use Obs::*;
    use Stage::*;
    let rows = [
        row(100 * DAY, V, &[Warn], false, Warned),
        row(101 * DAY, V, &[], false, Warned),
        row(102 * DAY, V, &[Rem], false, Warned),
        row(113 * DAY - 1, V, &[Rem], false, Warned),
        row(113 * DAY, V, &[Fin], false, Stage::FinalNotice),
        row(114 * DAY - 1, V, &[], false, Stage::FinalNotice),
        row(114 * DAY, V, &[], true, Stage::FinalNotice),
        row(115 * DAY, V, &[Rem], true, Stage::FinalNotice),
        row(116 * DAY, Gone, &[Res], false, Resolved),
        row(117 * DAY, Gone, &[], false, Resolved),
        row(118 * DAY, Compliant, &[], false, Resolved),
    ];
    let fs = run(None, &k, &v, 2 * DAY, &rows);
    let first = fs[0].as_ref().unwrap();
    // Detected at 100d: deadline max(90d, 100d + 14d).
    assert_eq!(first.deadline, 114 * DAY);
    assert_eq!(first.detected_at, 100 * DAY);
    assert_eq!(first.warned_at, Some(100 * DAY));
    assert_eq!(first.id.dedup_key(), "acme/proj_a/k1/rotate");
    assert_eq!(first.redacted_value, "sk-...k1");
    assert_eq!(first.owner, "alice@example.com");
    for f in fs.iter().flatten() {
        assert_eq!(f.deadline, 114 * DAY, "the deadline never moves");
        assert_eq!(f.detected_at, 100 * DAY);
    }
    let closed = fs.last().unwrap().as_ref().unwrap();
    assert_eq!(closed.resolution.as_deref(), Some("key deleted"));
    assert_eq!(closed.closed_at, Some(116 * DAY));
    assert_eq!(closed.final_notice_at, Some(113 * DAY));
}

/// Warned, reminded and final-noticed in dry-run (each notice saying what keysweep *would*
/// do), then the first sweep in enforce mode, long past the deadline: it warns for real, with
/// the whole warning period from then, and revokes only after a final notice. Before, that
/// sweep revoked at once, the owner having only ever read "would be revoked".
#[test]
fn the_first_enforce_sweep_after_a_dry_run_warns_for_real_before_it_revokes() {
    let k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    let step = |prev: Option<&Finding>, at: i64, dry_run: bool| {
        let obs = Observation::Violating {
            key: &k,
            violation: &v,
        };
        advance(prev, at, obs, 30 * DAY, None, dry_run)
    };
    let warned = step(None, 100 * DAY, true);
    assert_eq!(warned.notices, [NoticeKind::Warning]);
    let f = warned.next.unwrap();
    assert!(f.warned_dry_run);
    let fin = step(Some(&f), 113 * DAY, true);
    assert_eq!(fin.notices, [NoticeKind::FinalNotice]);
    let f = fin.next.unwrap();
    // Enforce mode from day 130, 16 days past the deadline.
    let real = step(Some(&f), 130 * DAY, false);
    assert_eq!(real.notices, [NoticeKind::Warning]);
    assert!(!real.revoke_due);
    let f = real.next.unwrap();
    assert_eq!((f.deadline, f.warned_at), (144 * DAY, Some(130 * DAY)));
    assert_eq!(
        (f.stage, f.final_notice_at, f.warned_dry_run),
        (Stage::Warned, None, false)
    );
    let quiet = step(Some(&f), 131 * DAY, false);
    assert!(quiet.notices.is_empty() && !quiet.revoke_due);
    let fin = step(Some(&f), 143 * DAY, false);
    assert_eq!(
        (fin.notices.as_slice(), fin.revoke_due),
        (&[NoticeKind::FinalNotice][..], false)
    );
    let due = step(fin.next.as_ref(), 144 * DAY, false);
    assert!(due.revoke_due);
    // A finding warned in enforce mode is not warned again.
    let enforced = step(None, 100 * DAY, false).next.unwrap();
    assert!(!enforced.warned_dry_run);
    assert!(step(Some(&enforced), 101 * DAY, false).notices.is_empty());
    // A final notice a one-off `--dry-run` sent ("would be revoked") is no final notice: the
    // next sweep that can write sends a real one first (here with the deadline, in one sweep:
    // the notice is delivered before the DELETE), the deadline unchanged.
    let would = step(Some(&enforced), 113 * DAY, true);
    assert_eq!(would.notices, [NoticeKind::FinalNotice]);
    let f = would.next.unwrap();
    assert!(f.final_notice_dry_run && !f.warned_dry_run);
    let again = step(Some(&f), 114 * DAY, false);
    assert_eq!(again.notices, [NoticeKind::FinalNotice]);
    assert!(again.revoke_due);
    let f = again.next.unwrap();
    assert_eq!(
        (f.deadline, f.final_notice_at),
        (114 * DAY, Some(114 * DAY))
    );
    assert!(!f.final_notice_dry_run);
}

/// A change between the two actions that write (revoke → expire, expire → revoke) warns anew:
/// the deadline moves to the whole warning period from then if it came sooner, and the final
/// notice is owed again, so no notice names a date before the write.
#[test]
fn a_change_between_writing_actions_gives_a_new_deadline_and_final_notice() {
    let k = key("k1");
    for (from, to) in [
        (Action::Revoke, Action::Expire),
        (Action::Expire, Action::Revoke),
    ] {
        let before = violation(from, 14 * DAY, DAY);
        let after = violation(to, 14 * DAY, DAY);
        let step = |prev: Option<&Finding>, at: i64, v: &Violation| {
            let obs = Observation::Violating {
                key: &k,
                violation: v,
            };
            advance(prev, at, obs, 30 * DAY, None, false)
        };
        let f = step(None, 100 * DAY, &before).next.unwrap();
        let f = step(Some(&f), 113 * DAY, &before).next.unwrap();
        assert!(f.final_notice_at.is_some());
        let t = step(Some(&f), 113 * DAY + 1, &after);
        assert_eq!(
            (t.notices.as_slice(), t.revoke_due),
            (&[NoticeKind::Warning][..], false)
        );
        let f = t.next.unwrap();
        assert_eq!(
            (f.deadline, f.final_notice_at),
            (127 * DAY + 1, None),
            "{from:?} → {to:?}"
        );
        let fin = step(Some(&f), 126 * DAY + 1, &after);
        assert_eq!(fin.notices, [NoticeKind::FinalNotice]);
        let due = step(fin.next.as_ref(), 127 * DAY + 1, &after);
        assert_eq!(due.revoke_due, to == Action::Revoke);
    }
}

/// The first enforce sweep after a dry-run that also changes the action (revoke → expire)
/// warns for real with the whole warning period too: the action change alone kept the deadline
/// that passed during the rollout, and the dry-run's final notice.
#[test]
fn an_action_changed_with_the_first_enforce_sweep_still_gets_the_whole_warning_period() {
    let k = key("k1");
    let revoke = violation(Action::Revoke, 14 * DAY, DAY);
    let expire = violation(Action::Expire, 14 * DAY, DAY);
    let step = |prev: Option<&Finding>, at: i64, v: &Violation, dry_run: bool| {
        let obs = Observation::Violating {
            key: &k,
            violation: v,
        };
        advance(prev, at, obs, 30 * DAY, None, dry_run)
    };
    let f = step(None, 100 * DAY, &revoke, true).next.unwrap();
    let f = step(Some(&f), 113 * DAY, &revoke, true).next.unwrap();
    assert!(f.final_notice_at.is_some());
    let t = step(Some(&f), 130 * DAY, &expire, false);
    assert_eq!(t.notices, [NoticeKind::Warning]);
    let f = t.next.unwrap();
    assert_eq!(f.action, Action::Expire);
    assert_eq!(
        (f.deadline, f.final_notice_at, f.warned_dry_run),
        (144 * DAY, None, false)
    );
}

#[test]
fn a_long_violating_key_still_gets_its_full_warning_period() {
    let k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    use Obs::*;
    let rows = [
        row(400 * DAY, V, &[Warn], false, Stage::Warned),
        row(414 * DAY - 1, V, &[Fin], false, Stage::FinalNotice),
        row(414 * DAY, V, &[], true, Stage::FinalNotice),
    ];
    let fs = run(None, &k, &v, 30 * DAY, &rows);
    assert_eq!(fs[0].as_ref().unwrap().deadline, 414 * DAY);
}

#[test]
fn deadline_is_violating_since_when_that_is_later_than_the_warning_period() {
    // A max_age violation can only be detected after it started, but a key whose condition
    // started later than detection + warn_before (e.g. a future-dated violation) keeps it.
    let v = Violation {
        violating_since: 200 * DAY,
        ..violation(Action::Revoke, 14 * DAY, DAY)
    };
    assert_eq!(initial_deadline(&v, 100 * DAY), 200 * DAY);
    assert_eq!(initial_deadline(&v, 190 * DAY), 204 * DAY);
}

#[test]
fn final_notice_due_together_with_deadline_is_sent_in_the_same_step() {
    let k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    use Obs::*;
    let rows = [
        row(100 * DAY, V, &[Warn], false, Stage::Warned),
        // Weekly sweeps skipped past deadline - final_notice: notice queued, then revoke.
        row(121 * DAY, V, &[Fin], true, Stage::FinalNotice),
    ];
    run(None, &k, &v, 30 * DAY, &rows);
}

#[test]
fn zero_warn_before_never_revokes_in_the_detecting_sweep() {
    let k = key("k1");
    let v = violation(Action::Revoke, 0, DAY);
    use Obs::*;
    let rows = [
        row(100 * DAY, V, &[Warn], false, Stage::Warned),
        row(100 * DAY + 1, V, &[Fin], true, Stage::FinalNotice),
    ];
    let fs = run(None, &k, &v, DAY, &rows);
    assert_eq!(fs[0].as_ref().unwrap().deadline, 100 * DAY);
}

#[test]
fn notify_findings_are_never_due_and_get_reminders_only() {
    let k = key("k1");
    let v = violation(Action::Notify, 14 * DAY, DAY);
    use Obs::*;
    let rows = [
        row(100 * DAY, V, &[Warn], false, Stage::Warned),
        row(101 * DAY - 1, V, &[], false, Stage::Warned),
        row(101 * DAY, V, &[Rem], false, Stage::Warned),
        row(200 * DAY, V, &[Rem], false, Stage::Warned),
        row(200 * DAY + HOUR, V, &[], false, Stage::Warned),
        row(300 * DAY, Compliant, &[Res], false, Stage::Resolved),
    ];
    let fs = run(None, &k, &v, DAY, &rows);
    let last = fs.last().unwrap().as_ref().unwrap();
    assert_eq!(last.resolution.as_deref(), Some("no longer violates"));
    assert_eq!(last.final_notice_at, None);
}

#[test]
fn exemption_closes_an_open_finding_with_its_reason() {
    let k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    use Obs::*;
    let rows = [
        row(100 * DAY, V, &[Warn], false, Stage::Warned),
        row(120 * DAY, Exempt, &[Res], false, Stage::Exempted),
        row(121 * DAY, Exempt, &[], false, Stage::Exempted),
    ];
    let fs = run(None, &k, &v, DAY, &rows);
    let last = fs.last().unwrap().as_ref().unwrap();
    assert_eq!(last.resolution.as_deref(), Some("exempted: migration"));
    assert_eq!(last.closed_at, Some(120 * DAY));
}

#[test]
fn non_violations_without_a_finding_create_nothing() {
    for obs in [
        Observation::Compliant,
        Observation::Gone,
        Observation::Exempted { reason: "r" },
    ] {
        let t = advance(None, 100, obs, DAY, None, false);
        assert_eq!(t.next, None);
        assert!(t.notices.is_empty() && !t.revoke_due);
        assert!(t.notices(false).is_empty());
    }
}

#[test]
fn a_key_that_violates_again_after_resolution_starts_a_new_finding() {
    let k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    use Obs::*;
    let rows = [
        row(100 * DAY, V, &[Warn], false, Stage::Warned),
        row(113 * DAY, V, &[Fin], false, Stage::FinalNotice),
        row(113 * DAY + 1, Compliant, &[Res], false, Stage::Resolved),
        row(150 * DAY, V, &[Warn], false, Stage::Warned),
        row(163 * DAY, V, &[Fin], false, Stage::FinalNotice),
        row(164 * DAY, V, &[], true, Stage::FinalNotice),
    ];
    let fs = run(None, &k, &v, 30 * DAY, &rows);
    let renewed = fs[3].as_ref().unwrap();
    assert_eq!(renewed.detected_at, 150 * DAY);
    assert_eq!(renewed.deadline, 164 * DAY);
    assert_eq!(renewed.final_notice_at, None);
    assert_eq!(renewed.closed_at, None);
    assert_eq!(renewed.resolution, None);
}

#[test]
fn revoked_findings_stay_closed() {
    let k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    let open = violating(None, 100 * DAY, &k, &v).next.unwrap();
    let revoked = mark_revoked(&open, 120 * DAY);
    assert_eq!(revoked.stage, Stage::Revoked);
    assert_eq!(revoked.closed_at, Some(120 * DAY));
    assert_eq!(revoked.resolution.as_deref(), Some("revoked"));
    assert_eq!(revoked.deadline, open.deadline);
    let n = revoked_notice(&revoked, false);
    assert_eq!(n.kind, NoticeKind::Revoked);
    assert!(!n.dry_run);

    let t = advance(
        Some(&revoked),
        121 * DAY,
        Observation::Gone,
        DAY,
        None,
        false,
    );
    assert_eq!(t.next.as_ref(), Some(&revoked));
    assert!(t.notices.is_empty() && !t.revoke_due);
}

#[test]
fn escalation_from_notify_to_revoke_rewarns_and_only_moves_the_deadline_later() {
    let k = key("k1");
    let notify = violation(Action::Notify, 14 * DAY, DAY);
    let revoke = violation(Action::Revoke, 14 * DAY, DAY);
    let f = violating(None, 100 * DAY, &k, &notify).next.unwrap();
    assert_eq!(f.deadline, 114 * DAY);
    // Policy switched to revoke at 130d: past the old deadline, but nobody was told a date.
    let t = violating(Some(&f), 130 * DAY, &k, &revoke);
    assert_eq!(t.notices, vec![NoticeKind::Warning]);
    assert!(!t.revoke_due);
    let f = t.next.unwrap();
    assert_eq!(
        (f.action, f.deadline, f.warned_at),
        (Action::Revoke, 144 * DAY, Some(130 * DAY))
    );
    assert_eq!(f.detected_at, 100 * DAY);

    // Back to notify: re-warned (changed finding), deadline untouched, never due.
    let t = violating(Some(&f), 150 * DAY, &k, &notify);
    assert_eq!(t.notices, vec![NoticeKind::Warning]);
    let f = t.next.unwrap();
    assert_eq!((f.action, f.deadline), (Action::Notify, 144 * DAY));
    let t = violating(Some(&f), 151 * DAY, &k, &notify);
    assert!(!t.revoke_due);
}

#[test]
fn a_finding_stored_without_warning_is_warned_before_anything_else() {
    let k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    let mut f = violating(None, 100 * DAY, &k, &v).next.unwrap();
    f.stage = Stage::Detected;
    f.warned_at = None;
    f.last_notified_at = None;
    // Far past the deadline: still only the warning now, and the warning period from now.
    let t = violating(Some(&f), 200 * DAY, &k, &v);
    assert_eq!(t.notices, vec![NoticeKind::Warning]);
    assert!(!t.revoke_due);
    let f = t.next.unwrap();
    let t = violating(Some(&f), 201 * DAY, &k, &v);
    assert_eq!(t.notices, vec![NoticeKind::FinalNotice]);
    assert!(!t.revoke_due, "warned at 200d, warn_before 14d");
    let f = t.next.unwrap();
    let t = violating(Some(&f), 214 * DAY, &k, &v);
    assert!(t.revoke_due);
}

#[test]
fn zero_repeat_interval_turns_reminders_off() {
    let k = key("k1");
    let v = violation(Action::Notify, 14 * DAY, DAY);
    use Obs::*;
    let rows = [
        row(100 * DAY, V, &[Warn], false, Stage::Warned),
        row(101 * DAY, V, &[], false, Stage::Warned),
        row(500 * DAY, V, &[], false, Stage::Warned),
    ];
    run(None, &k, &v, 0, &rows);
}

#[test]
fn the_deadline_ignores_later_changes_of_the_violation_inputs() {
    let mut k = key("k1");
    let v = violation(Action::Revoke, 14 * DAY, DAY);
    let f = violating(None, 100 * DAY, &k, &v).next.unwrap();
    // Later sweeps see a longer warn_before and a later start (e.g. an `owner_lost_access`
    // condition whose start is "now"), and a renamed key.
    let later = Violation {
        violating_since: 110 * DAY,
        warn_before: 30 * DAY,
        reason: "changed".to_string(),
        ..v.clone()
    };
    k.name = "renamed".to_string();
    let t = violating(Some(&f), 110 * DAY, &k, &later);
    let f2 = t.next.unwrap();
    assert_eq!(f2.deadline, 114 * DAY);
    assert_eq!(f2.key_name, "renamed");
    assert_eq!(f2.reason, "changed");
    // The longer warn_before of the current config still holds the revocation back.
    let t = violating(Some(&f2), 114 * DAY, &k, &later);
    assert_eq!(t.notices, vec![NoticeKind::FinalNotice]);
    assert!(!t.revoke_due, "warned 100d + 30d > 114d");
    let f3 = t.next.unwrap();
    let t = violating(Some(&f3), 130 * DAY, &k, &later);
    assert!(t.revoke_due);
    assert_eq!(t.next.unwrap().deadline, 114 * DAY);
}

#[test]
fn a_rewarning_step_is_never_revoke_due_even_with_zero_warn_before() {
    let k = key("k1");
    let notify = violation(Action::Notify, 0, 0);
    let revoke = violation(Action::Revoke, 0, 0);
    let f = violating(None, 100 * DAY, &k, &notify).next.unwrap();
    // Escalation: everything else would allow revocation now, but the owner only just heard.
    let t = violating(Some(&f), 130 * DAY, &k, &revoke);
    assert_eq!(t.notices, vec![NoticeKind::Warning]);
    assert!(!t.revoke_due);
    let f = t.next.unwrap();
    let t = violating(Some(&f), 130 * DAY + 1, &k, &revoke);
    assert_eq!(t.notices, vec![NoticeKind::FinalNotice]);
    assert!(t.revoke_due);

    // A stored finding that was never warned: same rule.
    let mut legacy = t.next.unwrap();
    legacy.warned_at = None;
    legacy.final_notice_at = Some(100 * DAY);
    let t = violating(Some(&legacy), 140 * DAY, &k, &revoke);
    assert_eq!(t.notices, vec![NoticeKind::Warning]);
    assert!(!t.revoke_due);
}

/// Weekly sweeps, `final_notice` 1d: the final notice goes out in the last sweep before the
/// next one would come after `deadline - final_notice`, not in a sweep after the key ended.
#[test]
fn a_final_notice_the_next_sweep_would_bring_too_late_goes_out_now() {
    let k = key("k1");
    for action in [Action::Expire, Action::Revoke] {
        let v = violation(action, 14 * DAY, DAY);
        let step = |prev: Option<&Finding>, at: i64, next: Option<i64>| {
            let obs = Observation::Violating {
                key: &k,
                violation: &v,
            };
            advance(prev, at, obs, 30 * DAY, next, false)
        };
        let warned = step(None, 100 * DAY, Some(107 * DAY));
        let f = warned.next.clone().unwrap_or_else(|| unreachable!());
        assert_eq!(f.deadline, 114 * DAY);
        // The next sweep (day 110) comes before the final notice is due (day 113): not yet.
        let early = step(Some(&f), 103 * DAY, Some(110 * DAY));
        assert!(early.notices.is_empty(), "{action:?}: {:?}", early.notices);
        // The next sweep comes at day 114, after day 113: this one is the last before.
        let last = step(Some(&f), 107 * DAY, Some(114 * DAY));
        assert_eq!(last.notices, [Fin], "{action:?}");
        let after = last.next.clone().unwrap_or_else(|| unreachable!());
        assert_eq!(after.final_notice_at, Some(107 * DAY));
        assert!(!last.revoke_due);
        // Without a known schedule, only the due time counts.
        assert!(step(Some(&f), 107 * DAY, None).notices.is_empty());
        // Once sent, never again.
        assert!(
            step(Some(&after), 110 * DAY, Some(114 * DAY))
                .notices
                .is_empty()
        );
        // A revoke finding is due at the deadline with the notice sent a week before.
        let at_deadline = step(Some(&after), 114 * DAY, Some(121 * DAY));
        assert_eq!(at_deadline.revoke_due, action == Action::Revoke);
    }
}
