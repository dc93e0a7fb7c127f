//! Phase 3, advance findings: every (key, policy) finding takes its lifecycle step (pure),
//! including the open findings whose key a complete listing no longer has (gone). A sweep and
//! `scan`'s preview both go through [`advance_findings`], so what `scan` previews is what a
//! sweep does. Pure: no I/O and no clock; nothing is written until the commit phase.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::{Action, Mode, ServiceAccountKeys};
use crate::inventory::{Inventory, Key, KeyTally, OrgInventory, OwnerType};
use crate::policy::expiry::PlannedRestore;
use crate::policy::finding::Finding;
use crate::policy::finding::{FindingId, Notice, NoticeKind, Stage};
use crate::policy::lifecycle::Transition;
use crate::policy::plan::verdict_rotating;
use crate::policy::plan::{Candidate, Plan, Withheld, WithheldAction, Write};
use crate::policy::verdict::{Rules, Verdict};

use super::evaluate::{Evaluator, OpenFindings, Step};
use super::listing::Evaluated;
use super::report::FindingView;
use super::run::Run;

/// One organisation's evaluation, ready to advance.
pub(super) struct OrgEvaluation<'a> {
    /// Its open findings before this sweep.
    pub open: &'a OpenFindings,
    /// The projects whose listing is complete (and whose keys were all evaluated): the only
    /// ones whose absent keys are gone.
    pub complete: HashSet<&'a str>,
    /// What its listed keys said.
    pub step: Step,
}

/// Service-account keys whose rotation ends them: (organisation, project, key) → overlap.
pub(super) type RotatingKeys = HashMap<(String, String, String), i64>;

/// Where every finding of the sweep goes next.
#[derive(Default)]
pub(super) struct Advanced {
    /// Every finding touched this sweep, open or closed.
    pub findings: Vec<FindingView>,
    /// The findings to write, with their audit records.
    pub changes: Vec<Change>,
    /// The notices due now, in the order they must be queued.
    pub notices: Vec<Notice>,
    /// The findings whose revocation is due or whose expiry must be set: the plan's input.
    pub candidates: Vec<Candidate>,
    /// Expiries to move back out for withdrawn findings: never capped, never stopped by the kill
    /// switch (they undo a write), but not written in dry-run.
    pub restores: Vec<PlannedRestore>,
    /// The `rotate` policies' overlaps (policy name → seconds): their findings' verdicts are
    /// rotations (`policy::plan::verdict_rotating`).
    pub rotation_overlaps: HashMap<String, i64>,
    /// Service-account keys with an open finding of a `rotate` policy, and its overlap: the
    /// rotation replaces any expiry another policy would set (`without_rotated_expiries`), so
    /// those findings' verdicts are the rotation too.
    pub rotating_keys: RotatingKeys,
    /// Keys an active exemption covers: (key, reason).
    pub exempted: Vec<(Key, String)>,
    /// Exemptions that matched but have expired: (key, reason, until).
    pub expired: Vec<(Key, String, Option<i64>)>,
}

/// A finding this sweep writes. A finding may change twice (a decision, then the dry-run
/// note); the later write wins.
pub(super) struct Change {
    /// Its index in [`Advanced::findings`]: a first sweep of a large organisation changes tens
    /// of thousands, and a second copy of each would double the sweep's memory.
    pub at: usize,
    /// What its audit record says; `None` for a rewrite that is not a decision (the dry-run
    /// "would be revoked" note).
    pub decision: Option<Decision>,
}

/// A decision on a finding, as its audit record tells it.
pub(super) struct Decision {
    /// The stage before (`None`: a new finding).
    pub before: Option<Stage>,
    /// The notices it sent.
    pub notices: Vec<NoticeKind>,
}

/// Advances the findings of every organisation. `dry_run` marks the notices "would be revoked";
/// `sa_keys_enforced` is `[safety] service_account_keys = "enforce"`: without it, a
/// service-account key's notices are marked `not_enforced`, so they announce no write.
pub(super) fn advance_findings<'a>(
    evaluator: &Evaluator,
    orgs: impl IntoIterator<Item = OrgEvaluation<'a>>,
    dry_run: bool,
    sa_keys_enforced: bool,
) -> Advanced {
    let mut out = Advanced::default();
    for org in orgs {
        let mut step = org.step;
        evaluator.gone(org.open, &org.complete, &mut step);
        for (before, t) in std::mem::take(&mut step.transitions) {
            out.take_step(before, t, dry_run);
        }
        out.exempted.extend(step.exempted);
        out.expired.extend(step.expired);
        out.candidates.extend(step.candidates);
        out.restores.extend(step.restores);
    }
    out.mark_not_enforced(sa_keys_enforced, dry_run);
    out
}

/// Tells each open `expire` notice the expiry its key really gets when the plan sets an
/// earlier one for another `expire` finding of the key (one write per key, the earliest): the
/// notice would otherwise name its own, later target.
fn note_key_expiries(notices: &mut [Notice], plan: &Plan, now: i64) {
    // The writes made, and those only dry-run holds back (what they would be); not what a cap
    // postpones (its notice says so), nor a withheld rotation's (no expire write for its key).
    let dry = (plan.withheld.iter())
        .filter(|w| w.reason == Withheld::DryRun)
        .map(|w| &w.action);
    let mut planned: HashMap<(&str, &str, &str), i64> = HashMap::new();
    for a in plan.revoke.iter().chain(dry) {
        if let Write::SetExpiry { to } = a.write {
            let k = a.key();
            let at = planned.entry((&*k.organization, &*k.project_id, &*k.id));
            at.and_modify(|t| *t = (*t).min(to)).or_insert(to);
        }
    }
    if planned.is_empty() {
        return;
    }
    for n in notices.iter_mut() {
        let f = &n.finding;
        let open = matches!(
            n.kind,
            NoticeKind::Warning | NoticeKind::Reminder | NoticeKind::FinalNotice
        );
        if !open || f.action != Action::Expire || f.expiry.set.is_some() {
            continue;
        }
        let own = crate::policy::expiry::target(f.deadline, now);
        if let Some(&to) = planned.get(&f.id.key_ref()) {
            n.key_expiry = (to < own).then_some(to);
        }
    }
}

impl Advanced {
    /// Every notice gets the verdict the mode and the per-key rules give before the plan is
    /// known (`Run::plan` refines it with the plan: caps, kill switch). Without `[safety]
    /// service_account_keys = "enforce"`, keysweep writes to no service-account key, so their
    /// notices announce no write.
    fn mark_not_enforced(&mut self, sa_keys_enforced: bool, dry_run: bool) {
        let rules = Rules {
            mode: if dry_run { Mode::DryRun } else { Mode::Enforce },
            service_account_keys: if sa_keys_enforced {
                ServiceAccountKeys::Enforce
            } else {
                ServiceAccountKeys::NotifyOnly
            },
            kill_switch: false,
        };
        // A key under two `rotate` policies rotates by the larger overlap (the earlier start:
        // `policy::rotation::planned_rotations`), whatever the findings' order.
        let mut rotating_keys = RotatingKeys::new();
        for f in (self.findings.iter())
            .map(|v| &v.finding)
            .filter(|f| f.stage.is_open() && f.owner_type == OwnerType::ServiceAccount)
        {
            let Some(&overlap) = self.rotation_overlaps.get(&f.id.policy) else {
                continue;
            };
            let id = &f.id;
            let key = (
                id.organization.clone(),
                id.project_id.clone(),
                id.key_id.clone(),
            );
            let o = rotating_keys.entry(key).or_insert(overlap);
            *o = (*o).max(overlap);
        }
        self.rotating_keys = rotating_keys;
        let mut notices = std::mem::take(&mut self.notices);
        for n in &mut notices {
            let overlap = self.overlap_of(&n.finding);
            n.verdict = Some(verdict_rotating(&n.finding, &rules, None, overlap));
        }
        self.notices = notices;
    }

    /// The overlap of the rotation that ends `f`'s key: its own policy's when that is a
    /// `rotate` policy; for an `expire` finding, that of a `rotate` finding on the same key.
    pub(super) fn overlap_of(&self, f: &Finding) -> Option<i64> {
        let own = self.rotation_overlaps.get(&f.id.policy).copied();
        if own.is_some() || f.action != Action::Expire || self.rotating_keys.is_empty() {
            return own;
        }
        let id = &f.id;
        let key = (
            id.organization.clone(),
            id.project_id.clone(),
            id.key_id.clone(),
        );
        self.rotating_keys.get(&key).copied()
    }

    /// One finding's transition: its notices, its new state, and whether it must be written.
    fn take_step(&mut self, before: Option<Stage>, mut t: Transition, dry_run: bool) {
        // No finding, no notice (`Transition::notices`).
        let Some(next) = t.next.take() else { return };
        // One copy of the finding, shared by its view and its notices.
        let next = Arc::new(next);
        self.notices.extend(t.notices_about(&next, dry_run));
        if before.is_none_or(|s| s != next.stage) || !t.notices.is_empty() {
            self.changes.push(Change {
                at: self.findings.len(),
                decision: Some(Decision {
                    before,
                    notices: t.notices,
                }),
            });
        }
        self.findings.push(FindingView {
            plan: String::new(),
            rotation: None,
            finding: next,
        });
    }

    /// Dry-run: a due revocation the plan withholds only because of dry-run is announced once,
    /// as "would be revoked" (a service-account key under `notify-only` or a key a cap holds
    /// back would not be revoked by enforcement either). Indexed: with 100k due keys a linear
    /// search per action made this step quadratic.
    pub(super) fn note_dry_run(&mut self, now: i64, plan: &Plan) {
        // Only deletions: an expiry that would be set is told in the warning itself ("would set
        // the expiry to …").
        let mut ids = (plan.withheld.iter())
            .filter(|w| w.reason == Withheld::DryRun && w.action.write == Write::Delete)
            .flat_map(|w| w.action.findings.iter())
            .peekable();
        if ids.peek().is_none() {
            return;
        }
        let index = self.index();
        let due: Vec<usize> = ids.filter_map(|id| index.get(id).copied()).collect();
        for i in due {
            if self.findings[i].finding.dry_run_noted_at.is_none() {
                let view = &mut self.findings[i].finding;
                Arc::make_mut(view).dry_run_noted_at = Some(now);
                let mut n = Notice::of(NoticeKind::Revoked, Arc::clone(view), true);
                n.verdict = Some(Verdict::WouldRevoke);
                self.notices.push(n);
                self.changes.push(Change {
                    at: i,
                    decision: None,
                });
            }
        }
    }

    /// Each finding's index in [`Advanced::findings`].
    fn index(&self) -> HashMap<&FindingId, usize> {
        let mut index = HashMap::with_capacity(self.findings.len());
        for (i, v) in self.findings.iter().enumerate() {
            index.entry(&v.finding.id).or_insert(i);
        }
        index
    }

    /// Makes this sweep's notices say what the plan does: each notice gets its final verdict
    /// (`policy::verdict`); a reminder is not sent for a key deleted in this sweep (its
    /// `revoked` notice follows) nor for one a safety limit holds back, which gets a
    /// `postponed` notice instead (unless this sweep's warning or final notice already carries
    /// the postponement).
    pub(super) fn apply_plan(&mut self, plan: &Plan, rules: &Rules, now: i64) {
        let mut withheld: HashMap<&FindingId, Withheld> = HashMap::new();
        for w in &plan.withheld {
            for id in &w.action.findings {
                withheld.entry(id).or_insert(w.reason);
            }
        }
        // By key, not by finding: a key deleted under one policy gets no reminder under another.
        let deleted_now: HashSet<(&str, &str, &str)> = plan
            .revoke
            .iter()
            .filter(|a| a.write == Write::Delete)
            .map(|a| {
                let k = a.key();
                (
                    k.organization.as_str(),
                    k.project_id.as_str(),
                    k.id.as_str(),
                )
            })
            .collect();
        let mut told: HashSet<FindingId> = HashSet::new();
        let mut dropped: HashSet<FindingId> = HashSet::new();
        let mut notices = std::mem::take(&mut self.notices);
        notices.retain_mut(|n| {
            let id = &n.finding.id;
            let overlap = self.overlap_of(&n.finding);
            let v = verdict_rotating(&n.finding, rules, withheld.get(id).copied(), overlap);
            n.verdict = Some(v);
            let postponed = matches!(v, Verdict::Postponed { .. }) && withheld.contains_key(id);
            let key = id.key_ref();
            let drop = n.kind == NoticeKind::Reminder && (deleted_now.contains(&key) || postponed);
            if drop {
                dropped.insert(id.clone());
            } else if postponed {
                told.insert(id.clone());
            }
            !drop
        });
        self.notices = notices;
        self.forget_dropped(&dropped);
        self.postpone(&withheld, rules, &told, now);
        note_key_expiries(&mut self.notices, plan, now);
    }

    /// Keeps on each finding why the plan holds it back and which write ([`Finding::withheld`],
    /// [`withheld_mark`]) and returns, for the findings held back as in the last sweep, that
    /// mark: their `skipped` audit record is already written. A finding no longer held back
    /// forgets its mark. Each finding whose mark changes is written (a change without a
    /// decision record). Called before any notice shares the findings, so nothing is copied.
    pub(super) fn mark_withheld(&mut self, plan: &Plan) -> HashMap<FindingId, String> {
        let mut marks: HashMap<&FindingId, String> = HashMap::new();
        for w in &plan.withheld {
            for id in &w.action.findings {
                marks.entry(id).or_insert_with(|| withheld_mark(w));
            }
        }
        let mut recorded = HashMap::new();
        for i in 0..self.findings.len() {
            let f = &self.findings[i].finding;
            let mark = marks.get(&f.id);
            if f.withheld.as_ref() == mark {
                if let Some(m) = mark {
                    recorded.insert(f.id.clone(), m.clone());
                }
                continue;
            }
            Arc::make_mut(&mut self.findings[i].finding).withheld = mark.cloned();
            self.changes.push(Change {
                at: i,
                decision: None,
            });
        }
        recorded
    }

    /// The decision records no longer list the reminders [`Advanced::apply_plan`] dropped.
    fn forget_dropped(&mut self, dropped: &HashSet<FindingId>) {
        for c in &mut self.changes {
            let id = &self.findings[c.at].finding.id;
            if let (true, Some(d)) = (dropped.contains(id), c.decision.as_mut()) {
                d.notices.retain(|k| *k != NoticeKind::Reminder);
            }
        }
    }

    /// A `postponed` notice for every due finding a cap, the kill switch or an incomplete
    /// listing held back, unless `told` already says so.
    fn postpone(
        &mut self,
        withheld: &HashMap<&FindingId, Withheld>,
        rules: &Rules,
        told: &HashSet<FindingId>,
        now: i64,
    ) {
        if withheld.is_empty() {
            return;
        }
        let index = self.index();
        let mut due: Vec<(usize, Withheld)> = withheld
            .iter()
            .filter(|(id, _)| !told.contains(**id))
            .filter_map(|(id, w)| index.get(*id).map(|&i| (i, *w)))
            .collect();
        due.sort_unstable_by_key(|(i, _)| *i);
        // Each finding's first change, by finding: a search per postponed finding was quadratic
        // when a cap holds back thousands. A finding appears once in `due`, so the changes
        // pushed below need no entry.
        let mut decided: HashMap<usize, usize> = HashMap::new();
        for (k, c) in self.changes.iter().enumerate() {
            decided.entry(c.at).or_insert(k);
        }
        for (i, w) in due {
            let f = &self.findings[i].finding;
            let v = verdict_rotating(f, rules, Some(w), self.overlap_of(f));
            if !matches!(v, Verdict::Postponed { .. }) || !f.stage.is_open() {
                continue;
            }
            let before = Some(f.stage);
            let view = &mut self.findings[i].finding;
            Arc::make_mut(view).last_notified_at = Some(now);
            self.notices.push(Notice {
                verdict: Some(v),
                ..Notice::of(
                    NoticeKind::Postponed,
                    Arc::clone(view),
                    rules.mode == Mode::DryRun,
                )
            });
            let decision = (decided.get(&i))
                .and_then(|&k| self.changes.get_mut(k))
                .and_then(|c| c.decision.as_mut());
            match decision {
                Some(d) => d.notices.push(NoticeKind::Postponed),
                None => self.changes.push(Change {
                    at: i,
                    decision: Some(Decision {
                        before,
                        notices: vec![NoticeKind::Postponed],
                    }),
                }),
            }
        }
    }
}

/// What a finding remembers of the plan holding it back: the reason and the write held back
/// (`dry_run/delete`, `cap_per_run/expiry`, …), so a change of either is recorded again.
pub(super) fn withheld_mark(w: &WithheldAction) -> String {
    let write = match w.action.write {
        Write::Delete => "delete",
        Write::SetExpiry { .. } => "expiry",
    };
    format!("{}/{write}", w.reason.as_str())
}

impl Run<'_> {
    /// The sweep's side of [`advance_findings`]: the recorder's evaluation of each organisation,
    /// closed as gone only in projects both listed completely and evaluated by the recorder.
    pub(super) fn advance_findings(
        &self,
        inventory: &Inventory<KeyTally>,
        evaluated: Evaluated,
    ) -> Advanced {
        let orgs = inventory
            .orgs
            .iter()
            .zip(evaluated.recorded)
            .zip(&evaluated.open)
            .map(|((org, recorded), open)| OrgEvaluation {
                open,
                // Complete by the listing *and* evaluated by the recorder: a project whose keys
                // the recorder did not see must not have its findings closed as gone.
                complete: complete_projects(org)
                    .into_iter()
                    .filter(|p| recorded.complete.contains(*p))
                    .collect(),
                step: recorded.step,
            });
        let sa_keys_enforced =
            self.sweeper.config.safety.service_account_keys == ServiceAccountKeys::Enforce;
        let mut out = advance_findings(
            &self.sweeper.evaluator(self.now(), self.dry_run()),
            orgs,
            self.dry_run(),
            sa_keys_enforced,
        );
        out.note_rotations(
            &self.sweeper.config.rotations,
            sa_keys_enforced,
            self.dry_run(),
        );
        out
    }
}

impl Advanced {
    /// Reads the `rotate` policies into the findings: their overlaps, the keys they rotate
    /// ([`Self::rotating_keys`]) and the verdicts that follow. A sweep and `scan`'s preview
    /// both call it, so both plan with the same protected keys.
    pub(super) fn note_rotations(
        &mut self,
        rotations: &[crate::config::RotateConfig],
        sa_keys_enforced: bool,
        dry_run: bool,
    ) {
        self.rotation_overlaps = (rotations.iter())
            .map(|r| {
                let secs = i64::try_from(r.overlap.as_secs()).unwrap_or(i64::MAX);
                (r.policy.clone(), secs)
            })
            .collect();
        if !self.rotation_overlaps.is_empty() {
            self.mark_not_enforced(sa_keys_enforced, dry_run);
        }
    }
}

/// The projects of `org` whose listing is complete: the only ones whose missing keys are gone.
pub(super) fn complete_projects<K>(org: &OrgInventory<K>) -> HashSet<&str> {
    org.projects
        .iter()
        .filter(|p| p.listing.is_complete())
        .map(|p| p.project.id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action;
    use crate::inventory::{Owner, OwnerAccess, OwnerType};
    use crate::policy::finding::Finding;

    fn key() -> Key {
        Key {
            organization: "acme".into(),
            project_id: "proj_1".into(),
            project_name: None,
            id: "key_1".into(),
            name: "ci".into(),
            redacted_value: "sk-...abcd".into(),
            created_at: 0,
            last_used_at: None,
            last_used_unknown: false,
            owner: Owner {
                kind: OwnerType::User,
                id: None,
                name: None,
                email: None,
            },
            owner_access: OwnerAccess::Active,
            expires_at: crate::inventory::Expiry::Unknown,
        }
    }

    fn finding(stage: Stage) -> Finding {
        Finding {
            id: FindingId {
                organization: "acme".into(),
                project_id: "proj_1".into(),
                key_id: "key_1".into(),
                policy: "max-age".into(),
            },
            project_name: None,
            key_name: "ci".into(),
            redacted_value: "sk-...abcd".into(),
            owner_type: OwnerType::User,
            owner: "user_1".into(),
            owner_email: None,
            created_at: 0,
            last_used_at: None,
            last_used_unknown: false,
            expires_at: crate::inventory::Expiry::Unknown,
            action: Action::Revoke,
            reason: "older than 90d".into(),
            stage,
            detected_at: 0,
            deadline: 100,
            warned_at: None,
            final_notice_at: None,
            last_notified_at: None,
            closed_at: None,
            resolution: None,
            dry_run_noted_at: None,
            warned_dry_run: false,
            final_notice_dry_run: false,
            withheld: None,
            rotation_withheld: None,
            expiry: Default::default(),
        }
    }

    /// `reconcile::answered_by`: a delete recorded at a time answers the findings open then.
    #[test]
    fn a_recorded_delete_answers_only_findings_open_and_detected_by_then() {
        use super::super::reconcile::answered_by;
        let mut f = finding(Stage::FinalNotice);
        f.detected_at = 50;
        assert!(answered_by(&f, Some(60)));
        assert!(answered_by(&f, None));
        assert!(!answered_by(&f, Some(40)), "detected after the delete");
        f.stage = Stage::Revoked;
        assert!(!answered_by(&f, Some(60)), "closed already");
    }

    fn step(next: Finding, notices: Vec<NoticeKind>) -> Transition {
        Transition {
            next: Some(next),
            notices,
            revoke_due: false,
        }
    }

    #[test]
    fn an_expire_finding_announces_the_larger_overlap_of_two_rotate_policies_in_any_order() {
        let on_sa = |policy: &str, action: Action| {
            let mut f = finding(Stage::Warned);
            f.id.policy = policy.into();
            f.owner_type = OwnerType::ServiceAccount;
            f.action = action;
            f
        };
        let expire = on_sa("expire-90d", Action::Expire);
        for order in [["rot-small", "rot-big"], ["rot-big", "rot-small"]] {
            let mut advanced = Advanced {
                rotation_overlaps: [("rot-small", 86_400), ("rot-big", 3 * 86_400)]
                    .map(|(p, o)| (p.to_string(), o))
                    .into(),
                ..Advanced::default()
            };
            for policy in order.into_iter().chain(["expire-90d"]) {
                let action = if policy == "expire-90d" {
                    Action::Expire
                } else {
                    Action::Revoke
                };
                advanced.take_step(None, step(on_sa(policy, action), vec![]), false);
            }
            advanced.mark_not_enforced(true, false);
            assert_eq!(advanced.overlap_of(&expire), Some(3 * 86_400), "{order:?}");
        }
    }

    #[test]
    fn a_finding_is_written_only_when_its_stage_moves_or_it_sends_a_notice() {
        let mut advanced = Advanced::default();
        // New, with a warning: written with its decision.
        advanced.take_step(
            None,
            step(finding(Stage::Warned), vec![NoticeKind::Warning]),
            false,
        );
        // Unchanged and silent: reported, not written.
        advanced.take_step(
            Some(Stage::Warned),
            step(finding(Stage::Warned), vec![]),
            false,
        );
        // Moved without a notice (closed): written.
        advanced.take_step(
            Some(Stage::Warned),
            step(finding(Stage::Resolved), vec![]),
            false,
        );
        assert_eq!(advanced.findings.len(), 3);
        let written: Vec<(usize, Option<Stage>)> = advanced
            .changes
            .iter()
            .map(|c| (c.at, c.decision.as_ref().and_then(|d| d.before)))
            .collect();
        assert_eq!(written, vec![(0, None), (2, Some(Stage::Warned))]);
        assert_eq!(advanced.notices.len(), 1);
        assert_eq!(advanced.notices[0].kind, NoticeKind::Warning);
        assert!(!advanced.notices[0].dry_run);
    }

    #[test]
    fn service_account_notices_announce_no_write_unless_those_keys_are_enforced() {
        for enforced in [false, true] {
            let mut advanced = Advanced::default();
            let mut sa = finding(Stage::Warned);
            sa.owner_type = OwnerType::ServiceAccount;
            advanced.take_step(None, step(sa, vec![NoticeKind::Warning]), false);
            advanced.take_step(
                None,
                step(finding(Stage::Warned), vec![NoticeKind::Warning]),
                false,
            );
            advanced.mark_not_enforced(enforced, false);
            let marks: Vec<bool> = advanced
                .notices
                .iter()
                .map(|n| {
                    matches!(
                        n.verdict,
                        Some(Verdict::NotifyOnly {
                            by: crate::policy::verdict::NotifyOnlyBy::ServiceAccountKeys
                        })
                    )
                })
                .collect();
            assert_eq!(marks, vec![!enforced, false], "enforced={enforced}");
        }
    }

    fn plan_with(withheld: Option<Withheld>) -> Plan {
        use crate::policy::plan::{PlannedAction, Target, WithheldAction};
        let action = PlannedAction {
            target: Target::Key(key()),
            write: Write::Delete,
            findings: vec![finding(Stage::FinalNotice).id],
            deadline: 100,
        };
        match withheld {
            Some(reason) => Plan {
                revoke: vec![],
                withheld: vec![WithheldAction { action, reason }],
                rules: None,
            },
            None => Plan {
                revoke: vec![action],
                withheld: vec![],
                rules: None,
            },
        }
    }

    fn rules(mode: Mode) -> Rules {
        Rules {
            mode,
            service_account_keys: ServiceAccountKeys::NotifyOnly,
            kill_switch: false,
        }
    }

    #[test]
    fn a_dry_run_announces_a_due_revocation_once_without_a_decision_record() {
        let mut advanced = Advanced::default();
        advanced.take_step(
            Some(Stage::FinalNotice),
            step(finding(Stage::FinalNotice), vec![]),
            true,
        );
        let plan = plan_with(Some(Withheld::DryRun));
        advanced.note_dry_run(200, &plan);
        assert_eq!(advanced.findings[0].finding.dry_run_noted_at, Some(200));
        assert_eq!(advanced.notices.len(), 1);
        assert_eq!(advanced.notices[0].kind, NoticeKind::Revoked);
        assert!(advanced.notices[0].dry_run);
        assert_eq!(advanced.changes.len(), 1);
        assert!(advanced.changes[0].decision.is_none());
        // Noted once: the next note (the same finding due again) says nothing more.
        advanced.note_dry_run(300, &plan);
        assert_eq!(advanced.findings[0].finding.dry_run_noted_at, Some(200));
        assert_eq!(advanced.notices.len(), 1);
        assert_eq!(advanced.changes.len(), 1);
    }

    #[test]
    fn a_dry_run_does_not_announce_what_enforcement_would_withhold_too() {
        let mut advanced = Advanced::default();
        advanced.take_step(
            Some(Stage::FinalNotice),
            step(finding(Stage::FinalNotice), vec![]),
            true,
        );
        advanced.note_dry_run(200, &plan_with(Some(Withheld::ServiceAccountNotifyOnly)));
        assert!(advanced.notices.is_empty());
    }

    #[test]
    fn no_reminder_for_a_key_deleted_in_the_same_sweep() {
        let mut advanced = Advanced::default();
        advanced.take_step(
            Some(Stage::FinalNotice),
            step(finding(Stage::FinalNotice), vec![NoticeKind::Reminder]),
            false,
        );
        advanced.apply_plan(&plan_with(None), &rules(Mode::Enforce), 200);
        assert!(advanced.notices.is_empty());
        let d = advanced.changes[0].decision.as_ref().unwrap();
        assert!(d.notices.is_empty(), "the audit record claims no reminder");
    }

    #[test]
    fn a_key_held_back_by_a_cap_is_told_postponed_instead_of_reminded() {
        let mut advanced = Advanced::default();
        advanced.take_step(
            Some(Stage::FinalNotice),
            step(finding(Stage::FinalNotice), vec![NoticeKind::Reminder]),
            false,
        );
        advanced.apply_plan(
            &plan_with(Some(Withheld::CapPerRun)),
            &rules(Mode::Enforce),
            200,
        );
        let kinds: Vec<NoticeKind> = advanced.notices.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, vec![NoticeKind::Postponed]);
        assert_eq!(
            advanced.notices[0].verdict,
            Some(Verdict::Postponed {
                by: Withheld::CapPerRun
            })
        );
        let d = advanced.changes[0].decision.as_ref().unwrap();
        assert_eq!(d.notices, vec![NoticeKind::Postponed]);
        assert_eq!(advanced.changes.len(), 1);
    }

    #[test]
    fn a_withheld_mark_is_kept_per_reason_and_write_and_forgotten_when_the_plan_lets_it_go() {
        let mut advanced = Advanced::default();
        advanced.take_step(
            Some(Stage::FinalNotice),
            step(finding(Stage::FinalNotice), vec![]),
            false,
        );
        let id = advanced.findings[0].finding.id.clone();
        let mark = |a: &Advanced| a.findings[0].finding.withheld.clone();
        // Held back anew: marked and written, and not yet recorded.
        let recorded = advanced.mark_withheld(&plan_with(Some(Withheld::DryRun)));
        assert!(recorded.is_empty());
        assert_eq!(mark(&advanced).as_deref(), Some("dry_run/delete"));
        assert_eq!(advanced.changes.len(), 1);
        // The same reason and write again: recorded already, nothing more to write.
        let recorded = advanced.mark_withheld(&plan_with(Some(Withheld::DryRun)));
        assert_eq!(
            recorded.get(&id).map(String::as_str),
            Some("dry_run/delete")
        );
        assert_eq!(advanced.changes.len(), 1);
        // Another reason: a new mark, written, to be recorded again.
        let recorded = advanced.mark_withheld(&plan_with(Some(Withheld::CapPerRun)));
        assert!(recorded.is_empty());
        assert_eq!(mark(&advanced).as_deref(), Some("cap_per_run/delete"));
        assert_eq!(advanced.changes.len(), 2);
        // Another write under the same reason: the same.
        let mut expiry = plan_with(Some(Withheld::CapPerRun));
        expiry.withheld[0].action.write = Write::SetExpiry { to: 100 };
        assert!(advanced.mark_withheld(&expiry).is_empty());
        assert_eq!(mark(&advanced).as_deref(), Some("cap_per_run/expiry"));
        assert_eq!(advanced.changes.len(), 3);
        // Let through: the spell is over, and the cleared mark is written.
        assert!(advanced.mark_withheld(&plan_with(None)).is_empty());
        assert_eq!(mark(&advanced), None);
        assert_eq!(advanced.changes.len(), 4);
        assert!(advanced.changes.iter().all(|c| c.decision.is_none()));
    }
}
