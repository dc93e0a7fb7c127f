//! One sweep, as named phases: the one callable unit the daemon schedules, `keysweep run
//! --once` runs and the tests drive.
//!
//! [`Sweeper::run_once`] reads as the pipeline; each phase is a function returning a named
//! summary. `sweeper.rs` holds the long-lived machinery, `run.rs` one sweep in progress (what
//! every phase shares), `report.rs` what a sweep returns; the phases use those and never this
//! file. The order is the safety argument:
//!
//! 1. **reconcile** (`reconcile.rs` → `Reconciled`): settle DELETE intents that a crash left
//!    without an outcome (GET the key: gone or not) before anything else;
//! 2. **list and record** (`listing.rs` → `Listed`): list every selected project, streaming
//!    each page to the recorder (`record.rs`), which evaluates its keys (pure `evaluate.rs` over
//!    `policy`) and records their observations as they arrive; a project whose listing is
//!    incomplete is never acted on, and none of its findings is closed as "gone";
//! 3. **advance findings** (`advance.rs` → `Advanced`): each (key, policy) finding takes its
//!    lifecycle step (pure); `scan`'s preview goes through the same phase;
//! 4. **plan** (`planning.rs` → `Planned`): the revocations under the rails (mode, kill switch,
//!    caps, service-account rule); in dry-run, due revocations are announced instead;
//!    Then **note intel** (`owners.rs`): what the audit log and usage add to the notices
//!    (usage, a service-account key's creator or project owners, a woken key's owner, who
//!    deleted a key that is gone), kept (`notes.rs`) for the notices of later phases;
//! 5. **commit** (`commit.rs` → `Committed`): findings, their notices (outbox), alerts and
//!    audit records in ONE transaction, so a crash never sends a notice twice or forgets one;
//! 6. **deliver** (`enforce.rs` → `DeliveryReport`) what is due, so the final notice goes out
//!    before the delete that follows it;
//! 7. **enforce** (`enforce.rs` → `Enforced`): hand the approved revocations and expiries to
//!    `revoke`, which re-reads every key before writing to it, and the withdrawn findings'
//!    expiries to move back out; commit the revoked findings and their notices, the expiries
//!    set and their alerts, deliver again;
//! 8. **record the sweep** (`finish.rs` → the [`SweepReport`]): its status per organisation,
//!    audit record, metrics and log line.
//!
//! A sweep keeps the findings, never the keys: memory follows what is wrong, not the size of
//! the organisation. `scan` uses the same evaluation without writing anything
//! (`Sweeper::preview`) and keeps every key, because it prints them. This module never deletes
//! (that is `revoke`'s) and never renders a message (that is `notify`'s).

use crate::config::{Mode, ServiceAccountKeys};
use crate::inventory::{Inventory, KeyTally};
use crate::notify::DeliveryReport;
use crate::policy::plan::Plan;

mod advance;
mod commit;
mod enforce;
mod evaluate;
mod finish;
mod listing;
mod notes;
mod owners;
mod planning;
mod reconcile;
mod record;
mod report;
mod rotation;
mod run;
mod sweeper;

pub use report::{FindingView, SweepError, SweepReport, fmt_time};
pub use sweeper::{SweepOptions, Sweeper, new_run_id};

use advance::{Advanced, OrgEvaluation};
use commit::Committed;
use enforce::Enforced;
use evaluate::Step;
use run::{Run, Timings};

impl Sweeper {
    /// Lists and evaluates without writing anything: `keysweep scan`. Returns the report and
    /// the whole inventory, every key included, for the listing `scan` prints. The findings
    /// advance through the same phase as a sweep's (`advance::advance_findings`).
    pub async fn preview(
        &self,
        now: i64,
        progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>,
    ) -> Result<(SweepReport, Inventory), SweepError> {
        let intel = self.intel(now).await;
        self.preview_with(now, progress, &intel).await
    }

    /// The audit log and usage (issue 16) as a sweep would read them, on top of the stored
    /// history, without recording anything: what `scan` judges by and shows.
    pub async fn intel(&self, now: i64) -> crate::intel::Intel {
        let kept = (self.store()).map(|store| crate::intel::Kept {
            store,
            persist: false,
        });
        let clients = self.clients_for(None);
        crate::intel::gather_kept(&clients, self.config.intel, now, kept).await
    }

    /// [`Sweeper::preview`] with the audit log and usage already read: the rules judge with
    /// them (`unrestricted`, `max_idle`'s usage buckets) as a sweep's do.
    pub async fn preview_with(
        &self,
        now: i64,
        progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>,
        intel: &crate::intel::Intel,
    ) -> Result<(SweepReport, Inventory), SweepError> {
        let clients = self.clients_for(None);
        let inventory = crate::openai::collect_inventory(&self.config, &clients, progress).await;
        let mut evaluator = self.evaluator(now, self.config.mode == Mode::DryRun);
        let wanted = crate::intel::Wanted::of(&self.config.policies);
        evaluator.policies =
            std::sync::Arc::new(self.policies.with_facts(intel.facts(now, wanted)));
        let open = inventory
            .orgs
            .iter()
            .map(|org| self.open_findings(&org.organization))
            .collect::<Result<Vec<_>, _>>()?;
        let orgs = inventory.orgs.iter().zip(&open).map(|(org, open)| {
            let mut step = Step::default();
            for p in org.projects.iter().filter(|p| p.listing.is_complete()) {
                for key in &p.keys {
                    evaluator.key(key, open, &mut step);
                }
            }
            OrgEvaluation {
                open,
                complete: advance::complete_projects(org),
                step,
            }
        });
        let dry_run = self.config.mode == Mode::DryRun;
        let sa_keys_enforced =
            self.config.safety.service_account_keys == ServiceAccountKeys::Enforce;
        let mut advanced = advance::advance_findings(&evaluator, orgs, dry_run, sa_keys_enforced);
        advanced.note_rotations(&self.config.rotations, sa_keys_enforced, dry_run);
        let tally = inventory.map_keys(|keys| KeyTally::of(keys, now));
        self.forget_handed_over(&mut advanced.rotating_keys, &advanced.findings)?;
        let mut plan = self.plan_revocations(
            &advanced.candidates,
            &advanced.rotating_keys,
            &tally,
            self.config.mode,
            now,
        )?;
        self.withhold_rotations(&mut plan, &advanced.findings, &tally, now)?;
        let mut findings = std::mem::take(&mut advanced.findings);
        planning::annotate_plan(&mut findings, &plan, |f| advanced.overlap_of(f));
        let rotations = rotation::planned_of(&findings, &self.config, now);
        rotation::annotate_rotations(&mut findings, &rotations);
        let report = SweepReport {
            run_id: "scan".into(),
            mode: Some(self.config.mode),
            inventory: tally,
            findings,
            exempted: advanced.exempted,
            expired_exemptions: advanced.expired,
            plan,
            ..SweepReport::default()
        };
        Ok((report, inventory))
    }

    /// Runs one sweep with actions (honouring mode and `--dry-run`): the pipeline, one phase
    /// per line (see the module docs for why in this order).
    pub async fn run_once(&self, opts: &SweepOptions) -> Result<SweepReport, SweepError> {
        let run = Run::begin(self, opts)?;
        let reconciled = run.reconcile().await?;
        let listed = run.list_and_record().await?;
        let mut advanced = run.advance_findings(&listed.inventory, listed.evaluated);
        run.phase_done("advance");
        let planned = run.plan(&listed.inventory, &mut advanced)?;
        rotation::align_notice_deadlines(
            &mut advanced.notices,
            (&advanced.findings, &advanced.rotating_keys),
            &run.sweeper.config,
            run.now(),
        );
        run.phase_done("plan");
        let mut alerts = [reconciled.unsettled, listed.alerts, planned.alerts].concat();
        run.note_intel(&listed.intel, &planned.plan, &mut advanced, &mut alerts)
            .await?;
        run.phase_done("note intel");
        let committed = run.commit(&mut advanced, alerts, planned.withheld)?;
        run.phase_done("commit");
        let delivery = run.deliver().await?;
        run.phase_done("deliver");
        let mut enforced = run
            .enforce(
                &planned.plan,
                &advanced.restores,
                &listed.inventory,
                &mut advanced.findings,
            )
            .await?;
        run.phase_done("enforce");
        run.rotate(
            &planned.plan,
            &mut advanced.findings,
            &listed.intel,
            &mut enforced,
        )
        .await?;
        run.phase_done("rotate");
        let timings = Timings {
            committed_secs: committed.seconds,
            ..listed.timings
        };
        let report = report(
            &run,
            listed.inventory,
            advanced,
            planned.plan,
            committed,
            delivery,
            enforced,
        );
        run.phase_done("report");
        run.record_sweep(report, timings)
    }
}

/// The report of a sweep's phases.
fn report(
    run: &Run<'_>,
    inventory: Inventory<KeyTally>,
    mut advanced: Advanced,
    plan: Plan,
    committed: Committed,
    mut delivery: DeliveryReport,
    enforced: Enforced,
) -> SweepReport {
    let mut findings = std::mem::take(&mut advanced.findings);
    planning::annotate_plan(&mut findings, &plan, |f| advanced.overlap_of(f));
    let rotations = rotation::planned_of(&findings, &run.sweeper.config, run.now());
    rotation::annotate_rotations(&mut findings, &rotations);
    if let Some(more) = enforced.delivery {
        delivery.absorb(more);
    }
    let mut alerts = enforced.alerts;
    alerts.extend(committed.alerts);
    SweepReport {
        run_id: run.run_id().to_string(),
        mode: Some(run.mode),
        inventory,
        findings,
        exempted: advanced.exempted,
        expired_exemptions: advanced.expired,
        plan,
        revocations: enforced.revocations,
        expiries: enforced.expiries,
        alerts,
        notices_queued: committed.notices_queued + enforced.notices_queued,
        delivery,
    }
}
