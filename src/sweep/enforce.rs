//! Phases 6 and 7, deliver and enforce. Delivery runs before enforcement so that final notices
//! reach people before the delete they announce. Enforcement hands the approved revocations to
//! `revoke` (which re-reads every key before deleting it), then commits the revoked findings
//! with their `revoked` notices (composed by `notify`) and the failures' alerts, and delivers
//! again. Nothing is deleted once the sweep is cancelled, nor from here: only `revoke` deletes.

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::Mode;
use crate::inventory::{Expiry, Inventory, KeyTally};
use crate::notify::DeliveryReport;
use crate::notify::alert::EnforcerAlert;
use crate::notify::compose;
use crate::policy::expiry::PlannedRestore;
use crate::policy::finding::{ExpirySet, Finding, FindingId};
use crate::policy::lifecycle;
use crate::policy::plan::{Plan, Withheld, Write};
use crate::revoke::expiry::{ExpiryOutcome, ExpiryResult};
use crate::revoke::{self, RevocationResult};
use crate::state;

use super::report::{FindingView, SweepError};
use super::run::Run;

/// What enforcement did; empty when nothing was due or the sweep was cancelled.
#[derive(Default)]
pub(super) struct Enforced {
    pub revocations: Vec<RevocationResult>,
    pub expiries: Vec<ExpiryResult>,
    /// Failed revocations' alerts that were raised.
    pub alerts: Vec<EnforcerAlert>,
    /// Messages composed for the outbox: the owners' `revoked` notices and the alerts.
    pub notices_queued: usize,
    /// The delivery after the revocations, if any.
    pub delivery: Option<DeliveryReport>,
}

impl Run<'_> {
    /// Sends what is due (unless the options say to leave it in the outbox).
    pub(super) async fn deliver(&self) -> Result<DeliveryReport, SweepError> {
        if !self.opts.deliver {
            return Ok(DeliveryReport::default());
        }
        let sweeper = self.sweeper;
        Ok(sweeper
            .notifier
            .deliver_due(&self.store, &sweeper.notify, self.now())
            .await?)
    }

    /// Executes the plan's approved revocations and expiries and the restores (this sweep's,
    /// and the owed ones of projects `inventory` listed completely), and marks the `findings`
    /// they answer.
    pub(super) async fn enforce(
        &self,
        plan: &Plan,
        restores: &[PlannedRestore],
        inventory: &Inventory<KeyTally>,
        findings: &mut [FindingView],
    ) -> Result<Enforced, SweepError> {
        if self.opts.cancel.is_cancelled() {
            return Ok(Enforced::default());
        }
        let whole = listed_whole(inventory);
        let in_whole = |id: &FindingId| whole.contains(&(&*id.organization, &*id.project_id));
        let mut retried = self.pending_restores(findings, &in_whole)?;
        let restores: Vec<PlannedRestore> = {
            let distance = self.sweeper.config.safety.restore_expiry.as_secs();
            let distance = i64::try_from(distance).unwrap_or(i64::MAX);
            let retries = retried
                .iter()
                .filter_map(|f| crate::policy::expiry::restore_retry(f, distance));
            let this_sweep = restores.iter().filter(|r| in_whole(&r.finding)).cloned();
            this_sweep.chain(retries).collect()
        };
        if plan.revoke.is_empty() && restores.is_empty() {
            return Ok(Enforced::default());
        }
        let ctx = self.revoke_context();
        let results = revoke::execute(&ctx, &plan.revoke).await?;
        let expiries = {
            let was_set = |id: &_| {
                findings
                    .iter()
                    .any(|v| &v.finding.id == id && v.finding.expiry.set.is_some())
            };
            let setting: Vec<_> = plan
                .revoke
                .iter()
                .filter(|a| a.write != Write::Delete)
                .cloned()
                .collect();
            let mut out = revoke::expiry::set_expiries(&ctx, &setting, was_set).await?;
            out.extend(revoke::expiry::restore_expiries(&ctx, &restores).await?);
            out
        };
        let (mut revoked, mut alerts) = self.absorb(&results, findings);
        let expired_writes = self.absorb_expiries(&expiries, findings, &mut retried, &mut alerts);
        for rail in [Withheld::KillSwitch, Withheld::CapPerDay] {
            alerts.extend(self.rail_alert(rail, plan, &results, &expiries));
        }
        let alerts = self.dedup_alerts(alerts)?;
        let now = self.now();
        let notices = compose::revoked_notices(&revoked);
        revoked.extend(expired_writes);
        let notices_queued = self.enqueue(
            |tx| state::findings::upsert_findings(tx, &revoked, now),
            notices,
            &alerts,
            Vec::new(),
        )?;
        let delivery = if self.opts.deliver {
            Some(self.deliver().await?)
        } else {
            None
        };
        Ok(Enforced {
            revocations: results,
            expiries,
            alerts,
            notices_queued,
            delivery,
        })
    }

    /// Counts each result, marks the findings of each deletion revoked and returns them, with
    /// the alerts of the failures. A key found changed or gone at the re-check closes or keeps
    /// its finding as the re-read says; the next sweep re-evaluates it from a fresh listing.
    fn absorb(
        &self,
        results: &[RevocationResult],
        findings: &mut [FindingView],
    ) -> (Vec<Finding>, Vec<EnforcerAlert>) {
        let mut revoked = Vec::new();
        let mut alerts = Vec::new();
        for r in results {
            self.sweeper
                .metrics
                .revocation(r.organization(), r.outcome_label());
            if r.deleted() {
                for id in r.findings() {
                    if let Some(v) = findings.iter_mut().find(|v| &v.finding.id == id) {
                        let closed = lifecycle::mark_revoked(&v.finding, self.now());
                        revoked.push(closed.clone());
                        v.finding = Arc::new(closed);
                    }
                }
            } else if let Some(alert) = r.alert() {
                alerts.push(alert);
            }
        }
        (revoked, alerts)
    }
}

/// How many deletes and expiry sets were withheld for a reason `rail` recognises.
fn withheld_for(
    results: &[RevocationResult],
    expiries: &[ExpiryResult],
    rail: fn(&str) -> bool,
) -> u64 {
    let deletes = results.iter().filter(
        |r| matches!(&r.outcome, revoke::Outcome::SkippedAfterRecheck { reason } if rail(reason)),
    );
    let sets = expiries
        .iter()
        .filter(|e| matches!(&e.outcome, ExpiryOutcome::Skipped { reason } if rail(reason)));
    u64::try_from(deletes.count() + sets.count()).unwrap_or(u64::MAX)
}

/// The (organisation, project) pairs `inventory` listed completely, in organisations whose
/// listing did not fail: the only projects an expiry is moved back out in (incomplete means
/// hands off, as the plan holds for the writes it plans).
fn listed_whole(inventory: &Inventory<KeyTally>) -> HashSet<(&str, &str)> {
    let orgs = (inventory.orgs.iter()).filter(|o| o.error.is_none());
    orgs.flat_map(|o| {
        let complete = super::advance::complete_projects(o);
        complete.into_iter().map(|p| (o.organization.as_str(), p))
    })
    .collect()
}

/// How many revocations and expiries the plan withheld for `reason`, as its alert counts them.
fn planned(plan: &Plan, reason: Withheld) -> u64 {
    let n = plan.withheld.iter().filter(|w| w.reason == reason);
    n.map(|w| u64::from(w.action.revocations())).sum()
}

impl Run<'_> {
    /// The alert for the writes a rail withheld at their write (`rail`: the kill switch turned
    /// on during enforcement, or the rolling day other sweeps filled after this one planned),
    /// counting those the plan withheld for it too (the planning phase alerted on those alone).
    fn rail_alert(
        &self,
        rail: Withheld,
        plan: &Plan,
        results: &[RevocationResult],
        expiries: &[ExpiryResult],
    ) -> Option<EnforcerAlert> {
        let is_rail = match rail {
            Withheld::KillSwitch => revoke::is_kill_switch_reason,
            _ => revoke::is_cap_reached_reason,
        };
        let at_write = withheld_for(results, expiries, is_rail);
        let withheld = at_write + planned(plan, rail);
        (at_write > 0)
            .then(|| super::planning::withheld_alert(&self.sweeper.config, rail, withheld))
    }

    /// The closed findings whose failed restore later sweeps retry, in enforce mode only, of the
    /// organisations this sweep covers, leaving out those this sweep stepped (a reopened finding
    /// wants its expiry; a relaxed open one is retried by its listing step) and those of projects
    /// `inventory` did not list completely: keysweep writes to nothing in such a project.
    fn pending_restores(
        &self,
        findings: &[FindingView],
        listed_whole: &dyn Fn(&FindingId) -> bool,
    ) -> Result<Vec<Finding>, SweepError> {
        if self.mode != Mode::Enforce {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for c in &self.clients {
            let pending = self
                .store
                .with_conn(|conn| state::findings::pending_restores(conn, c.org_name()))?;
            let (owed, waiting): (Vec<Finding>, Vec<Finding>) =
                (pending.into_iter()).partition(|f| listed_whole(&f.id));
            if !waiting.is_empty() {
                tracing::warn!(run_id = self.run_id(), organization = %c.org_name(), waiting = waiting.len(), "owed expiry restores wait for a complete listing of their project");
            }
            out.extend(
                (owed.into_iter()).filter(|f| !findings.iter().any(|v| v.finding.id == f.id)),
            );
        }
        Ok(out)
    }

    /// Records what each expiry write did on its findings (the expiry set and what the key had
    /// before, a refusal that makes the finding notice-only, the expiry a restore left) and
    /// collects the alerts. Returns the findings to write.
    fn absorb_expiries(
        &self,
        results: &[ExpiryResult],
        findings: &mut [FindingView],
        retried: &mut [Finding],
        alerts: &mut Vec<EnforcerAlert>,
    ) -> Vec<Finding> {
        let now = self.now();
        let mut changed = Vec::new();
        for r in results {
            self.sweeper
                .metrics
                .revocation(&r.organization, r.outcome_label());
            alerts.extend(r.alert());
            for id in &r.finding_ids {
                let f = match findings.iter_mut().find(|v| &v.finding.id == id) {
                    Some(v) => Arc::make_mut(&mut v.finding),
                    None => match retried.iter_mut().find(|f| &f.id == id) {
                        Some(f) => f,
                        None => continue,
                    },
                };
                if record_expiry(f, r, now) {
                    changed.push(f.clone());
                }
            }
        }
        changed
    }
}

/// Records one expiry write on its finding; false when the finding did not change.
fn record_expiry(f: &mut Finding, r: &ExpiryResult, now: i64) -> bool {
    let mut changed = true;
    match &r.outcome {
        ExpiryOutcome::Set { to, previous, .. } => {
            f.expiry.set = Some(ExpirySet {
                to: *to,
                // The key's own expiry is the one before keysweep's first write.
                previous: f.expiry.set.map_or(*previous, |s| s.previous),
                at: now,
            });
            f.expires_at = Expiry::At(*to);
        }
        ExpiryOutcome::AlreadyEnds { at } => f.expires_at = Expiry::At(*at),
        // The expiry keysweep set is gone: a later write is its first again, not a set-back.
        ExpiryOutcome::Restored { to, .. } => {
            f.expires_at = Expiry::At(*to);
            f.expiry.set = None;
        }
        ExpiryOutcome::Refused { error } if r.write == "set" => {
            f.expiry.refused = Some(error.clone());
        }
        _ => changed = false,
    }
    // A restore that failed is retried by later sweeps until one settles it (done, the key
    // ended, the owner's expiry, refused at every distance); a cancelled one was not tried.
    if r.write == "restore" && r.outcome != ExpiryOutcome::Cancelled {
        let pending = matches!(r.outcome, ExpiryOutcome::Failed { .. });
        changed |= f.expiry.restore_pending != pending;
        f.expiry.restore_pending = pending;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Listing, OrgInventory, ProjectInventory, ProjectRef};

    fn org(name: &str, error: Option<&str>, projects: &[(&str, bool)]) -> OrgInventory<KeyTally> {
        OrgInventory {
            organization: name.into(),
            projects: (projects.iter())
                .map(|&(id, complete)| ProjectInventory {
                    project: ProjectRef {
                        organization: name.into(),
                        id: id.into(),
                        name: None,
                        archived: false,
                    },
                    keys: KeyTally::default(),
                    listing: if complete {
                        Listing::Complete
                    } else {
                        Listing::Incomplete("page 2 failed".into())
                    },
                })
                .collect(),
            error: error.map(String::from),
            unauthorized: false,
            admin_keys: Vec::new(),
        }
    }

    /// Only complete projects of organisations listed without error are written to: a 401
    /// part-way leaves the projects listed before it complete, and still hands off.
    #[test]
    fn only_complete_projects_of_organisations_listed_whole_are_written_to() {
        let inventory = Inventory {
            orgs: vec![
                org("acme", None, &[("proj_a", true), ("proj_b", false)]),
                org("beta", Some("401 part-way"), &[("proj_c", true)]),
            ],
        };
        let whole = listed_whole(&inventory);
        assert_eq!(whole, HashSet::from([("acme", "proj_a")]));
    }
}
