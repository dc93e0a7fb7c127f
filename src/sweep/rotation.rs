//! Phase 7b, rotate: after enforcement, the `rotate` policies' service-account keys whose
//! rotation is due are handed to `rotate` (which settles unfinished rotations first), under the
//! rails the plan used (dry-run, service-account rule, kill switch, caps: a rotation counts like
//! an expiry set, after the plan's own writes). Its announcements and alerts are queued and
//! delivered like enforcement's. Also marks the planned rotations in the findings' plan column
//! ("rotate at …"), for `scan` and `run --once`. Never mints, deletes or writes a key itself.

use serde_json::json;

use crate::policy::finding::{Finding, Notice, NoticeKind, RotatedNote};
use crate::policy::plan::Plan;
use crate::policy::rotation::{PlannedRotation, planned_rotations};
use crate::rotate::{self, RotationOutcome};
use crate::state;
use crate::state::audit::AuditKind;

use super::enforce::Enforced;
use super::report::{FindingView, SweepError, fmt_time};
use super::run::Run;

impl Run<'_> {
    /// Performs (or announces) the due rotations and adds what they raised to `enforced`.
    pub(super) async fn rotate(
        &self,
        plan: &Plan,
        findings: &[FindingView],
        enforced: &mut Enforced,
    ) -> Result<(), SweepError> {
        let config = &self.sweeper.config;
        if config.rotations.is_empty() || self.opts.cancel.is_cancelled() {
            return Ok(());
        }
        let all: Vec<&Finding> = findings.iter().map(|v| &v.finding).collect();
        let planned = planned_rotations(&all, &config.rotations, self.now());
        let ctx = rotate::Context {
            store: &self.store,
            config,
            policies: self.policies(),
            clients: &self.clients,
            mode: self.mode,
            run_id: self.run_id(),
            now: self.now(),
            cancel: &self.opts.cancel,
            kill_switch: (config.safety.kill_switch_file.as_ref()).is_some_and(|p| p.exists()),
            cap_left: self.rotation_cap_left(plan)?,
        };
        let results = rotate::run(&ctx, &planned).await?;
        let mut records = Vec::new();
        for r in &results {
            self.sweeper
                .metrics
                .revocation(&r.organization, r.outcome_label());
            if let RotationOutcome::WouldRotate { reason } | RotationOutcome::Withheld { reason } =
                &r.outcome
            {
                let mut rec = self
                    .record(AuditKind::Skipped, format!("rotation withheld: {reason}"))
                    .with_response(json!({ "withheld": reason, "action": "rotate" }));
                rec.organization = Some(r.organization.clone());
                rec.project_id = Some(r.project_id.clone());
                rec.key_id = Some(r.key_id.clone());
                records.push(rec);
                tracing::info!(run_id = self.run_id(), key_id = %r.key_id, %reason, "would rotate");
            }
        }
        let alerts = self.dedup_alerts(results.iter().filter_map(|r| r.alert()).collect())?;
        let notices = rotated_notices(&results, &planned, findings);
        if alerts.is_empty() && records.is_empty() && notices.is_empty() {
            return Ok(());
        }
        enforced.notices_queued += self.enqueue(|_| Ok(()), &notices, &alerts, records)?;
        enforced.alerts.extend(alerts);
        if self.opts.deliver {
            let more = self.deliver().await?;
            match &mut enforced.delivery {
                Some(d) => {
                    d.sent += more.sent;
                    d.failed += more.failed;
                    d.dead += more.dead;
                    d.alerts.extend(more.alerts);
                }
                None => enforced.delivery = Some(more),
            }
        }
        Ok(())
    }

    /// Rotations the caps still allow after the plan's own writes (per run and rolling day).
    fn rotation_cap_left(&self, plan: &Plan) -> Result<u32, SweepError> {
        let safety = &self.sweeper.config.safety;
        let day = self
            .store
            .with_conn(|c| state::revocations::revocations_since(c, self.now() - 86400))?;
        let day = u32::try_from(day).unwrap_or(u32::MAX);
        let used = plan.revocation_count();
        Ok(safety
            .max_revocations_per_run
            .saturating_sub(used)
            .min(safety.max_revocations_per_day.saturating_sub(day)))
    }
}

/// A "rotated" notice for each performed rotation, to the key's owner routes like its other
/// notices (for a service-account key: `owner_fallback` and the routes): the new key's id and
/// redacted value, the sink and when the old key stops working. Never the secret.
fn rotated_notices(
    results: &[rotate::RotationResult],
    planned: &[PlannedRotation],
    findings: &[FindingView],
) -> Vec<Notice> {
    let mut out = Vec::new();
    for r in results {
        let RotationOutcome::Rotated {
            new_key_id,
            new_redacted_value,
            sink,
            old_expires_at,
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
            .find_map(|p| findings.iter().find(|v| v.finding.id == p.finding));
        let Some(view) = finding else { continue };
        out.push(Notice {
            kind: NoticeKind::Rotated,
            finding: view.finding.clone(),
            dry_run: false,
            verdict: None,
            rotated: Some(RotatedNote {
                new_key_id: new_key_id.clone(),
                new_redacted_value: new_redacted_value.clone(),
                sink: sink.clone(),
                old_expires_at: *old_expires_at,
            }),
        });
    }
    out
}

/// Marks each planned rotation in its finding's plan column: `rotate at …` (when the rotation
/// starts, past or not: whether it has happened is in the alerts and the `rotations` table).
pub(super) fn annotate_rotations(findings: &mut [FindingView], planned: &[PlannedRotation]) {
    for v in findings.iter_mut() {
        if let Some(p) = planned.iter().find(|p| p.finding == v.finding.id) {
            v.rotation = Some((p.start_at, p.deadline));
            v.plan = format!(
                "rotate at {} (deadline {})",
                fmt_time(p.start_at),
                fmt_time(p.deadline)
            );
        }
    }
}

/// The planned rotations among `findings` (for the annotation).
pub(super) fn planned_of(
    findings: &[FindingView],
    config: &crate::config::Config,
    now: i64,
) -> Vec<PlannedRotation> {
    let all: Vec<&Finding> = findings.iter().map(|v| &v.finding).collect();
    planned_rotations(&all, &config.rotations, now)
}
