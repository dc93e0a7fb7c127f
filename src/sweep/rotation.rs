//! Phase 7b, rotate: after enforcement, the `rotate` policies' service-account keys whose
//! rotation is due are handed to `rotate` (which settles unfinished rotations first), under the
//! rails the plan used (dry-run, service-account rule, kill switch). The caps and an incomplete
//! listing are applied at plan time ([`Sweeper::withhold_rotations`], phase 4: a rotation counts
//! like a revocation against every cap, after the plan's own writes), so the notices, the cap
//! alert and `scan` say what holds a rotation back. Its announcements and alerts are queued and
//! delivered like enforcement's; the old keys' logged scopes come from the listing's audit-log
//! read. A rotation a rail holds back gets one `skipped` record per spell and reason: the
//! rotate policy's finding remembers the reason (`Finding::rotation_withheld`), written in the
//! same transaction as the records. Also marks the planned rotations in the findings' plan
//! column ("rotate at …") and aligns the deadline a rotated key's notices tell. Never mints,
//! deletes or writes a key itself.

use serde_json::json;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::Action;
use crate::config::ServiceAccountKeys;
use crate::intel::Intel;
use crate::inventory::OwnerType;
use crate::inventory::{Inventory, KeyTally};
use crate::policy::finding::{Finding, FindingId, Notice, NoticeKind, RotatedNote};
use crate::policy::plan::{Plan, Withheld, project_facts};
use crate::policy::rotation::{PlannedRotation, planned_rotations, withheld_rotations};
use crate::policy::verdict::Verdict;
use crate::rotate::{self, RotationOutcome};
use crate::state;
use crate::state::audit::{AuditKind, AuditRecord};
use crate::state::rotations;

use super::advance::RotatingKeys;
use super::enforce::Enforced;
use super::report::{FindingView, SweepError, fmt_time};
use super::run::Run;
use super::sweeper::Sweeper;

impl Sweeper {
    /// Adds to `plan.withheld` the due rotations that an incomplete listing or a cap holds back
    /// (`policy::rotation::withheld_rotations`: a rotation counts like a revocation against
    /// every cap, after the plan's own writes), so the notices say "postponed", `scan` names the
    /// cap and the cap's alert counts them. Under `service_account_keys = "notify-only"` no
    /// rotation is performed, so none counts. Rotations already done or unfinished do not count.
    pub(super) fn withhold_rotations(
        &self,
        plan: &mut Plan,
        findings: &[FindingView],
        inventory: &Inventory<KeyTally>,
        now: i64,
    ) -> Result<(), SweepError> {
        let config = &self.config;
        if config.rotations.is_empty()
            || config.safety.service_account_keys != ServiceAccountKeys::Enforce
        {
            return Ok(());
        }
        let planned = planned_of(findings, config, now);
        // Indexed: a linear search per due rotation is quadratic in a first sweep.
        let mut by_id: HashMap<&FindingId, &Finding> = HashMap::new();
        for v in findings {
            by_id.entry(&v.finding.id).or_insert(&v.finding);
        }
        let mut due = Vec::new();
        for p in planned.iter().filter(|p| p.due) {
            let Some(&f) = by_id.get(&p.finding) else {
                continue;
            };
            // A key whose rotation is unfinished counts too: reconciliation may settle it
            // in this sweep's rotation phase, which then rotates it afresh, and that new
            // rotation must meet the caps and the incomplete listing like any other.
            if self.rotation_writes(&p.finding, f)? {
                due.push((p, f));
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        let revoked_24h = match self.store() {
            Some(s) => s.with_conn(|c| state::revocations::revocations_since(c, now - 86400))?,
            None => 0,
        };
        let held = withheld_rotations(
            &due,
            plan,
            &project_facts(inventory),
            &config.safety,
            u32::try_from(revoked_24h).unwrap_or(u32::MAX),
        );
        plan.withheld.extend(held);
        Ok(())
    }

    /// Whether the rotation phase may write for the key of finding `f`: unless its latest
    /// rotation is done and the old key still ends by the time that rotation promised (a
    /// finished rotation whose expiry was moved off is set back: a write like any other).
    fn rotation_writes(&self, id: &FindingId, f: &Finding) -> Result<bool, SweepError> {
        let Some(store) = self.store() else {
            return Ok(true);
        };
        let latest = store.with_conn(|c| {
            rotations::latest_for_key(c, &id.organization, &id.project_id, &id.key_id)
        })?;
        Ok(match latest {
            Some(r) if r.status == "done" || r.status == rotations::UNANNOUNCED => {
                r.old_expires_at.is_some_and(|to| f.expires_at.outlives(to))
            }
            _ => true,
        })
    }
}

impl Run<'_> {
    /// True when an organisation of this sweep has a rotation not yet settled.
    fn any_unsettled_rotation(&self) -> Result<bool, SweepError> {
        for c in &self.clients {
            let rows = (self.store).with_conn(|conn| rotations::unsettled(conn, c.org_name()))?;
            if !rows.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Performs (or announces) the due rotations and adds what they raised to `enforced`.
    /// `intel`: what the audit log says of the keys (the old key's scopes).
    pub(super) async fn rotate(
        &self,
        plan: &Plan,
        findings: &mut [FindingView],
        intel: &Intel,
        enforced: &mut Enforced,
    ) -> Result<(), SweepError> {
        let config = &self.sweeper.config;
        if self.opts.cancel.is_cancelled() {
            return Ok(());
        }
        // Without a rotate policy, the rotations begun under one are still settled: an orphan
        // deleted, an owed old-key expiry set, a rotation announced.
        if config.rotations.is_empty() && !self.any_unsettled_rotation()? {
            return Ok(());
        }
        let all: Vec<&Finding> = findings.iter().map(|v| &*v.finding).collect();
        let mut planned = planned_rotations(&all, &config.rotations, self.now());
        // What the plan held back (a cap, an incomplete listing) does not start here.
        let held: HashSet<&FindingId> = (plan.withheld.iter())
            .filter(|w| w.reason.is_cap() || w.reason == Withheld::IncompleteListing)
            .flat_map(|w| w.action.findings.iter())
            .collect();
        for p in &mut planned {
            let id = &p.finding;
            p.logged_scopes = (intel.key(&id.organization, &id.key_id).scopes).map(<[_]>::to_vec);
            p.due &= !held.contains(id);
        }
        let ctx = rotate::Context {
            store: self.store.clone(),
            config: config.clone(),
            policies: self.policies().clone(),
            clients: self.clients.clone(),
            mode: self.mode,
            run_id: self.run_id().to_string(),
            now: self.now(),
            cancel: self.opts.cancel.clone(),
        };
        let results = rotate::run(&ctx, &planned).await?;
        self.count_rotations(&results, false);
        // A shutdown stopped the loop: the rotations after it were not looked at, so their
        // marks stay (clearing them would record their spell again).
        let clear = !self.opts.cancel.is_cancelled();
        let (changes, records) = self.held_back(&results, &planned, findings, clear);
        let alerts = self.dedup_alerts(results.iter().filter_map(|r| r.alert()).collect())?;
        let stored = self.stored_findings(&results, &planned)?;
        let notices = rotated_notices(&results, &planned, (findings, &stored), config);
        let announced: Vec<i64> = (results.iter())
            .filter_map(|r| match r.outcome {
                RotationOutcome::Rotated { row, .. } => Some(row),
                _ => None,
            })
            .collect();
        if alerts.is_empty()
            && records.is_empty()
            && notices.is_empty()
            && changes.is_empty()
            && announced.is_empty()
        {
            return Ok(());
        }
        // The sweep's views (its report) carry the marks written.
        let mut marked = Vec::with_capacity(changes.len());
        for (at, mark) in changes {
            let f = Arc::make_mut(&mut findings[at].finding);
            f.rotation_withheld = mark;
            marked.push(f.clone());
        }
        let now = self.now();
        enforced.notices_queued += self.enqueue(
            |tx| {
                state::findings::upsert_findings(tx, &marked, now)?;
                rotations::mark_announced(tx, &announced)
            },
            notices,
            &alerts,
            records,
        )?;
        self.count_rotations(&results, true);
        enforced.alerts.extend(alerts);
        if self.opts.deliver {
            let more = self.deliver().await?;
            match &mut enforced.delivery {
                Some(d) => d.absorb(more),
                None => enforced.delivery = Some(more),
            }
        }
        Ok(())
    }
}

impl Run<'_> {
    /// Counts `results` in the metrics: the performed rotations (`announced`: once their
    /// messages are queued, so one whose sweep fails first is counted by the sweep that
    /// announces it), or every other outcome.
    fn count_rotations(&self, results: &[rotate::RotationResult], announced: bool) {
        let performed = |r: &&rotate::RotationResult| {
            matches!(r.outcome, RotationOutcome::Rotated { .. }) == announced
        };
        for r in results.iter().filter(performed) {
            self.sweeper
                .metrics
                .revocation(&r.organization, r.outcome_label());
        }
    }

    /// The stored finding of the rotate policy of each performed rotation none of `planned`
    /// names: one announced a sweep late (its sweep failed or was dropped first), whose finding
    /// has closed since, or one settled after its policy was removed. Its owners are told from
    /// it, as from a planned one's.
    fn stored_findings(
        &self,
        results: &[rotate::RotationResult],
        planned: &[PlannedRotation],
    ) -> Result<Vec<Arc<Finding>>, SweepError> {
        let named: HashSet<(&str, &str, &str)> =
            planned.iter().map(|p| p.finding.key_ref()).collect();
        let unnamed = (results.iter())
            .filter(|r| matches!(r.outcome, RotationOutcome::Rotated { .. }))
            .filter(|r| !named.contains(&(&*r.organization, &*r.project_id, &*r.key_id)));
        let mut out = Vec::new();
        for r in unnamed {
            let found = self.store.with_conn(|c| {
                let Some(row) =
                    rotations::latest_for_key(c, &r.organization, &r.project_id, &r.key_id)?
                else {
                    return Ok(None);
                };
                let id = FindingId {
                    organization: row.organization,
                    project_id: row.project_id,
                    key_id: row.old_key_id,
                    policy: row.policy,
                };
                state::findings::get_finding(c, &id)
            })?;
            out.extend(found.map(Arc::new));
        }
        Ok(out)
    }

    /// The rotations a rail held back this sweep: the findings whose mark changes
    /// ([`rotation_marks`]; `clear`: whether marks no longer held may be cleared), and a
    /// `skipped` record for each one not held back for the same reason in the last sweep.
    fn held_back(
        &self,
        results: &[rotate::RotationResult],
        planned: &[PlannedRotation],
        findings: &[FindingView],
        clear: bool,
    ) -> (Vec<(usize, Option<String>)>, Vec<AuditRecord>) {
        // The rotate policy's finding of each key: where a held-back rotation is remembered.
        let finding_of: HashMap<(&str, &str, &str), &FindingId> = (planned.iter())
            .map(|p| (p.finding.key_ref(), &p.finding))
            .collect();
        let held: Vec<(&rotate::RotationResult, &str, Option<&FindingId>)> = (results.iter())
            .filter_map(|r| match &r.outcome {
                RotationOutcome::WouldRotate { reason } | RotationOutcome::Withheld { reason } => {
                    let key = (
                        r.organization.as_str(),
                        r.project_id.as_str(),
                        r.key_id.as_str(),
                    );
                    Some((r, reason.as_str(), finding_of.get(&key).copied()))
                }
                _ => None,
            })
            .collect();
        let held_now: HashMap<&FindingId, &str> = (held.iter())
            .filter_map(|(_, reason, id)| id.map(|id| (id, *reason)))
            .collect();
        let (changes, recorded) = rotation_marks(findings, &held_now, clear);
        let mut records = Vec::new();
        for (r, reason, id) in held {
            tracing::info!(run_id = self.run_id(), key_id = %r.key_id, %reason, "would rotate");
            // Once per spell and reason: the last sweep held it back for the same one.
            if id.is_some_and(|id| recorded.contains(id)) {
                continue;
            }
            let mut rec = self
                .record(AuditKind::Skipped, format!("rotation withheld: {reason}"))
                .with_response(json!({ "withheld": reason, "action": "rotate" }));
            rec.organization = Some(r.organization.clone());
            rec.project_id = Some(r.project_id.clone());
            rec.key_id = Some(r.key_id.clone());
            records.push(rec);
        }
        (changes, records)
    }
}

/// The findings whose rotation mark ([`Finding::rotation_withheld`]) changes with what the
/// rotation phase held back this sweep (`held_now`: finding → reason), by their place in
/// `findings` with the new mark, to be written (a mark no longer held is cleared only when
/// `clear`); and those held back for the same reason as in the last sweep, whose `skipped`
/// record is already written.
fn rotation_marks<'a>(
    findings: &'a [FindingView],
    held_now: &HashMap<&FindingId, &str>,
    clear: bool,
) -> (Vec<(usize, Option<String>)>, HashSet<&'a FindingId>) {
    let mut changes = Vec::new();
    let mut recorded = HashSet::new();
    for (at, v) in findings.iter().enumerate() {
        let f = &*v.finding;
        let now = held_now.get(&f.id).copied();
        if f.rotation_withheld.as_deref() == now {
            if now.is_some() {
                recorded.insert(&f.id);
            }
            continue;
        }
        if now.is_some() || clear {
            changes.push((at, now.map(str::to_string)));
        }
    }
    (changes, recorded)
}

/// A "rotated" notice for each performed rotation, to the key's owner routes like its other
/// notices (for a service-account key: `owner_fallback` and the routes): the new key's id and
/// redacted value, the sink and when the old key stops working. Never the secret. The finding
/// told of is the planned rotation's in this sweep's `findings`, else the stored one of
/// `stored` (`Run::stored_findings`).
fn rotated_notices(
    results: &[rotate::RotationResult],
    planned: &[PlannedRotation],
    (findings, stored): (&[FindingView], &[Arc<Finding>]),
    config: &crate::config::Config,
) -> Vec<Notice> {
    let mut out = Vec::new();
    for r in results {
        let RotationOutcome::Rotated {
            new_key_id,
            new_redacted_value,
            sink,
            old_expires_at,
            ..
        } = &r.outcome
        else {
            continue;
        };
        let finding = planned
            .iter()
            .filter(|p| {
                p.finding.organization == r.organization
                    && p.finding.project_id == r.project_id
                    && p.finding.key_id == r.key_id
            })
            .find_map(|p| findings.iter().find(|v| v.finding.id == p.finding))
            .map(|v| &v.finding)
            .or_else(|| {
                (stored.iter())
                    .find(|f| f.id.key_ref() == (&*r.organization, &*r.project_id, &*r.key_id))
            });
        let Some(finding) = finding else { continue };
        // What keysweep did, not what the defaults would say of a service-account key.
        let overlap = (config.rotation(&finding.id.policy)).map_or(0, |r| {
            i64::try_from(r.overlap.as_secs()).unwrap_or(i64::MAX)
        });
        out.push(Notice {
            kind: NoticeKind::Rotated,
            finding: finding.clone(),
            dry_run: false,
            verdict: Some(Verdict::Rotate { overlap }),
            rotated: Some(RotatedNote {
                new_key_id: new_key_id.clone(),
                new_redacted_value: new_redacted_value.clone(),
                sink: sink.clone(),
                old_expires_at: *old_expires_at,
            }),
            intel: None,
            key_expiry: None,
        });
    }
    out
}

/// Marks each planned rotation in its finding's plan column: `rotate at …` (when the rotation
/// starts, past or not: whether it has happened is in the alerts and the `rotations` table).
pub(super) fn annotate_rotations(findings: &mut [FindingView], planned: &[PlannedRotation]) {
    if planned.is_empty() {
        return;
    }
    // Indexed: a search of every planned rotation per finding is quadratic when thousands of
    // service-account keys rotate. The first planned rotation of a finding wins, as before.
    let mut by_finding: HashMap<&FindingId, &PlannedRotation> = HashMap::new();
    for p in planned {
        by_finding.entry(&p.finding).or_insert(p);
    }
    for v in findings.iter_mut() {
        if let Some(p) = by_finding.get(&v.finding.id) {
            v.rotation = Some((p.start_at, p.deadline));
            v.plan = format!(
                "rotate at {} (deadline {})",
                fmt_time(p.start_at),
                fmt_time(p.deadline)
            );
        }
    }
}

/// Gives the notices of each key under a `rotate` policy the deadline its rotation keeps: the
/// earliest of the key's open enforcing findings, which the planner starts the rotation
/// `overlap` before. A notice of the rotate policy's own finding would otherwise say the new
/// key is minted `overlap` before its own, later deadline, while `scan` and the planner say
/// otherwise. Only the notices' snapshots change; the stored findings keep their deadlines.
/// `rotating`: `Advanced::rotating_keys`, the keys whose rotation still ends them (another
/// policy's expiry on a key whose rotation handed over is written, and told, as its own).
pub(super) fn align_notice_deadlines(
    notices: &mut [Notice],
    (findings, rotating): (&[FindingView], &RotatingKeys),
    config: &crate::config::Config,
    now: i64,
) {
    if config.rotations.is_empty() {
        return;
    }
    let planned = planned_of(findings, config, now);
    let deadline: HashMap<(&str, &str, &str), i64> = (planned.iter())
        .map(|p| {
            let id = &p.finding;
            let key = id.key_ref();
            (key, p.deadline)
        })
        .collect();
    for n in notices.iter_mut() {
        let id = &n.finding.id;
        // An `expire` policy's finding on a key being rotated gets no expiry of its own
        // (`without_rotated_expiries`): the rotation ends the key, at the rotation's deadline
        // (its verdict says so already: `Advanced::overlap_of`).
        let replaced_expiry = n.finding.action == Action::Expire
            && n.finding.owner_type == OwnerType::ServiceAccount
            && rotating.contains_key(&(
                id.organization.clone(),
                id.project_id.clone(),
                id.key_id.clone(),
            ));
        if config.rotation(&id.policy).is_none() && !replaced_expiry {
            continue;
        }
        let key = id.key_ref();
        if let Some(&d) = deadline.get(&key)
            && d < n.finding.deadline
        {
            Arc::make_mut(&mut n.finding).deadline = d;
        }
    }
}

/// The planned rotations among `findings` (for the annotation).
pub(super) fn planned_of(
    findings: &[FindingView],
    config: &crate::config::Config,
    now: i64,
) -> Vec<PlannedRotation> {
    let all: Vec<&Finding> = findings.iter().map(|v| &*v.finding).collect();
    planned_rotations(&all, &config.rotations, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(key: &str, mark: Option<&str>) -> FindingView {
        let mut f: Finding = serde_json::from_value(json!({
            "id": { "organization": "o", "project_id": "p", "key_id": key, "policy": "rot" },
            "key_name": "k", "redacted_value": "sk-...abcd", "owner_type": "service_account",
            "owner": "bot", "created_at": 0, "action": "revoke", "reason": "old",
            "stage": "warned", "detected_at": 0, "deadline": 100, "warned_at": 0,
        }))
        .unwrap();
        f.rotation_withheld = mark.map(str::to_string);
        FindingView {
            finding: Arc::new(f),
            plan: String::new(),
            rotation: None,
        }
    }

    #[test]
    fn a_rotation_mark_is_set_kept_changed_and_cleared_only_when_the_phase_looked() {
        let views = [
            view("key_new", None),
            view("key_same", Some("dry_run")),
            view("key_other", Some("dry_run")),
            view("key_let_go", Some("kill_switch")),
            view("key_never", None),
        ];
        let ids: Vec<&FindingId> = views.iter().map(|v| &v.finding.id).collect();
        let held: HashMap<&FindingId, &str> = [
            (ids[0], "dry_run"),
            (ids[1], "dry_run"),
            (ids[2], "kill_switch"),
        ]
        .into_iter()
        .collect();
        let (changes, recorded) = rotation_marks(&views, &held, true);
        assert_eq!(
            changes,
            [
                (0, Some("dry_run".to_string())),
                (2, Some("kill_switch".to_string())),
                (3, None)
            ]
        );
        // Only the one held back for the same reason as before has its record already.
        assert_eq!(recorded, [ids[1]].into_iter().collect());
        // After a shutdown stopped the phase, a mark it did not see is kept.
        let (changes, _) = rotation_marks(&views, &held, false);
        assert_eq!(
            changes,
            [
                (0, Some("dry_run".to_string())),
                (2, Some("kill_switch".to_string()))
            ]
        );
    }
}
