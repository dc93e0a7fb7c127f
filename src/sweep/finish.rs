//! Phase 8, record the sweep: each organisation's `sweeps` row and `sweep` audit record (its
//! status and a summary), the findings and outbox gauges, and the last log line. Reports only:
//! it changes no finding and sends nothing.

use serde_json::json;

use crate::inventory::KeyTally;
use crate::inventory::OrgInventory;
use crate::notify;
use crate::policy::finding::Stage;
use crate::state::audit::{self, AuditKind, AuditRecord};
use crate::state::sweeps::SweepStatus;
use crate::state::{self, StateError};

use super::report::{SweepError, SweepReport};
use super::run::{Run, SWEEP_TARGET, Timings};

impl Run<'_> {
    /// Records the sweep that `report` tells, and hands the report back.
    pub(super) fn record_sweep(
        &self,
        report: SweepReport,
        timings: Timings,
    ) -> Result<SweepReport, SweepError> {
        let elapsed = self.elapsed();
        self.store.tx(|tx| {
            for org in &report.inventory.orgs {
                self.record_org(tx, org, &report, elapsed)?;
            }
            Ok(())
        })?;
        self.update_gauges(&report);
        tracing::info!(
            target: SWEEP_TARGET,
            run_id = self.run_id(),
            complete = report.inventory.is_complete(),
            keys = report.inventory.key_count(),
            findings = report.findings.len(),
            keys_with_findings = report.finding_key_count(),
            revoked = report.revoked_count(),
            expiries_set = report.expiries_set_count(),
            withheld = report.withheld_key_count(),
            notices = report.notices_queued,
            seconds = elapsed,
            listed_secs = timings.listed_secs,
            recorded_secs = timings.recorded_secs,
            committed_secs = timings.committed_secs,
            "sweep finished"
        );
        Ok(report)
    }

    /// One organisation's `sweeps` row and `sweep` audit record.
    fn record_org(
        &self,
        tx: &rusqlite::Transaction<'_>,
        org: &OrgInventory<KeyTally>,
        report: &SweepReport,
        elapsed: f64,
    ) -> Result<(), StateError> {
        let status = if org.error.is_some() {
            SweepStatus::Failed
        } else if org.is_complete() {
            SweepStatus::Completed
        } else {
            SweepStatus::Incomplete
        };
        let revoked = report
            .revocations
            .iter()
            .filter(|r| r.deleted() && r.organization() == org.organization)
            .count();
        let summary = json!({
            "projects": org.projects.len(),
            "incomplete_projects": org.projects.iter().filter(|p| !p.listing.is_complete()).count(),
            "keys": org.projects.iter().map(|p| p.keys.keys).sum::<usize>(),
            "error": org.error,
            "revoked": revoked,
            "expiries_set": report
                .expiries
                .iter()
                .filter(|e| {
                    e.organization == org.organization
                        && matches!(e.outcome, crate::revoke::expiry::ExpiryOutcome::Set { .. })
                })
                .count(),
            "seconds": elapsed,
        });
        state::sweeps::sweep_finished(
            tx,
            self.run_id(),
            &org.organization,
            self.now() + elapsed.round() as i64,
            status,
            &summary,
        )?;
        audit::append(
            tx,
            &AuditRecord {
                organization: Some(org.organization.clone()),
                inputs: summary,
                ..self.record(AuditKind::Sweep, format!("sweep {}", status.as_str()))
            },
        )?;
        Ok(())
    }

    /// The open findings per organisation, policy and stage, and the outbox depth. Best effort:
    /// a gauge that cannot be read keeps its last value.
    fn update_gauges(&self, report: &SweepReport) {
        let metrics = &self.sweeper.metrics;
        if let Ok(counts) = self.store.with_conn(state::findings::finding_counts) {
            for org in &report.inventory.orgs {
                let mine: Vec<(&str, Stage, u64)> = counts
                    .iter()
                    .filter(|c| c.organization == org.organization && c.stage.is_open())
                    .map(|c| (c.policy.as_str(), c.stage, c.count))
                    .collect();
                metrics.replace_findings(&org.organization, &mine);
            }
        }
        if let Ok(depth) = self.store.with_conn(notify::outbox::depth) {
            metrics.set_outbox_depth(depth.pending, depth.dead);
        }
    }
}
