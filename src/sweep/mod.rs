//! One sweep: list → evaluate → persist findings and notices → enforce the plan → deliver.
//!
//! This is the one callable unit the daemon schedules, `keysweep run --once` runs and the tests
//! drive. The order is the safety argument:
//!
//! 1. settle DELETE intents that a crash left without an outcome (GET the key: gone or not);
//! 2. list every selected project, streaming each page to the recorder (`record.rs`), which
//!    evaluates its keys (pure `evaluate.rs` over `policy`) and records their observations as
//!    they arrive; a project whose listing is incomplete is never acted on, and none of its
//!    findings is closed as "gone";
//! 3. once the listing is in: advance each (key, policy) finding (pure lifecycle), plan the
//!    revocations under the rails (mode, kill switch, caps, service-account rule), and commit
//!    findings, their notices (outbox), alerts and audit records in ONE transaction, so a crash
//!    never sends a notice twice or forgets one;
//! 4. deliver what is due (so the final notice goes out before the delete that follows it);
//! 5. hand the approved revocations to `revoke`, which re-reads every key before deleting it;
//! 6. commit revoked findings and their notices, deliver again, record the sweep.
//!
//! A sweep keeps the findings, never the keys: memory follows what is wrong, not the size of
//! the organisation. `scan` uses the same evaluation without writing anything
//! (`Sweeper::preview`) and keeps every key, because it prints them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{Action, Config, Mode};
use crate::inventory::{Inventory, Key, KeyTally, OrgInventory};
use crate::metrics::Metrics;
use crate::notify::alert::EnforcerAlert;
use crate::notify::{self, Notifier};
use crate::openai::{AdminClient, ClientShared};
use crate::policy::Policies;
use crate::policy::finding::{Finding, FindingId, Notice, NoticeKind, Stage};
use crate::policy::lifecycle;
use crate::policy::plan::{self, Plan, PlanInput};
use crate::revoke;
use crate::state::audit::{self, AuditKind, AuditRecord};
use crate::state::{self, Store};

mod evaluate;
mod record;

use evaluate::{Evaluator, OpenFindings, Step};

/// Admin keys expiring within this window raise an enforcer alert.
const ADMIN_KEY_EXPIRY_WARNING_SECS: i64 = 14 * 86400;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("state database")]
    State(#[from] state::StateError),
    #[error("notification outbox")]
    Notify(#[from] notify::NotifyError),
    #[error("policy")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("recording the listing: {0}")]
    Recorder(String),
    #[error("Admin API client for organisation {organization}")]
    Client {
        organization: String,
        #[source]
        source: Box<crate::openai::Error>,
    },
}

/// What one call to [`Sweeper::run_once`] should do.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Evaluation time (Unix seconds): the wall clock, or `--now`.
    pub now: i64,
    /// `--dry-run`: never delete, whatever `mode` says.
    pub force_dry_run: bool,
    pub run_id: String,
    /// Only these organisations (the daemon sweeps one at a time); `None` = all.
    pub organizations: Option<Vec<String>>,
    /// Stop before the next deletion when cancelled (SIGTERM); the current step completes.
    pub cancel: CancellationToken,
    /// Send due messages; `false` leaves them in the outbox (`keysweep demo`).
    pub deliver: bool,
}

impl SweepOptions {
    pub fn new(now: i64) -> SweepOptions {
        SweepOptions {
            now,
            force_dry_run: false,
            run_id: new_run_id(),
            organizations: None,
            cancel: CancellationToken::new(),
            deliver: true,
        }
    }
}

/// A sortable, unique run id: `20261125T231500Z-1a2b3c4d`.
pub fn new_run_id() -> String {
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{now}-{}", &rand[..8])
}

/// What became of one key in this sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FindingView {
    pub finding: Finding,
    /// What the plan says about it: "warn", "revoke now", "withheld: cap-per-run", …
    pub plan: String,
}

/// The outcome of a sweep (or a preview).
#[derive(Debug, Default)]
pub struct SweepReport {
    pub run_id: String,
    pub mode: Option<Mode>,
    /// What was listed: every organisation and project with its listing status and a tally of
    /// its keys (a sweep does not keep the keys themselves).
    pub inventory: Inventory<KeyTally>,
    /// Every finding touched this sweep, open or closed.
    pub findings: Vec<FindingView>,
    /// Keys an active exemption covers: (key, reason).
    pub exempted: Vec<(Key, String)>,
    /// Exemptions that matched but have expired: (key, reason, until).
    pub expired_exemptions: Vec<(Key, String, Option<i64>)>,
    pub plan: Plan,
    pub revocations: Vec<revoke::RevocationResult>,
    pub alerts: Vec<EnforcerAlert>,
    pub notices_queued: usize,
    pub delivery: notify::DeliveryReport,
}

impl SweepReport {
    /// Every listing complete and every organisation reachable.
    pub fn complete(&self) -> bool {
        self.inventory.is_complete()
    }

    pub fn revoked_count(&self) -> usize {
        self.revocations.iter().filter(|r| r.deleted()).count()
    }
}

/// Long-lived sweep machinery: clients, compiled policies, store, notifier, metrics.
pub struct Sweeper {
    pub config: Arc<Config>,
    policies: Arc<Policies>,
    clients: Vec<AdminClient>,
    store: Option<Store>,
    notifier: Notifier,
    metrics: Metrics,
}

impl Sweeper {
    /// `store` is `None` only for read-only previews (`scan` without a state file).
    pub fn new(
        config: Arc<Config>,
        store: Option<Store>,
        metrics: Metrics,
    ) -> Result<Sweeper, SweepError> {
        let policies = Arc::new(Policies::compile(&config.policies, &config.exemptions)?);
        let shared = ClientShared::new(metrics.clone(), &config.limits);
        let clients = config
            .organizations
            .iter()
            .map(|org| {
                AdminClient::new(org, &config.limits, shared.clone()).map_err(|source| {
                    SweepError::Client {
                        organization: org.name.clone(),
                        source: Box::new(source),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sweeper {
            config,
            policies,
            clients,
            store,
            notifier: Notifier::new()?.with_metrics(metrics.clone()),
            metrics,
        })
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    fn clients_for(&self, only: Option<&[String]>) -> Vec<AdminClient> {
        self.clients
            .iter()
            .filter(|c| only.is_none_or(|o| o.iter().any(|n| n == c.org_name())))
            .cloned()
            .collect()
    }

    fn mode(&self, opts: &SweepOptions) -> Mode {
        if opts.force_dry_run {
            Mode::DryRun
        } else {
            self.config.mode
        }
    }

    /// Lists and evaluates without writing anything: `keysweep scan`. Returns the report and
    /// the whole inventory, every key included, for the listing `scan` prints.
    pub async fn preview(
        &self,
        now: i64,
        progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>,
    ) -> Result<(SweepReport, Inventory), SweepError> {
        let clients = self.clients_for(None);
        let inventory = crate::openai::collect_inventory(&self.config, &clients, progress).await;
        let mut report = SweepReport {
            run_id: "scan".into(),
            mode: Some(self.config.mode),
            ..SweepReport::default()
        };
        let evaluator = self.evaluator(now);
        let mut candidates = Vec::new();
        for org in &inventory.orgs {
            let open = self.open_findings(&org.organization)?;
            let mut step = Step::default();
            for p in org.projects.iter().filter(|p| p.listing.is_complete()) {
                for key in &p.keys {
                    evaluator.key(key, &open, &mut step);
                }
            }
            evaluator.gone(&open, &complete_projects(org), &mut step);
            candidates.extend(step.candidates);
            report.exempted.extend(step.exempted);
            report.expired_exemptions.extend(step.expired);
            report
                .findings
                .extend(step.transitions.into_iter().filter_map(|(_, t)| {
                    t.next.map(|finding| FindingView {
                        plan: String::new(),
                        finding,
                    })
                }));
        }
        let revoked_24h = match &self.store {
            Some(s) => s.with_conn(|c| state::revocations::revocations_since(c, now - 86400))?,
            None => 0,
        };
        report.inventory = inventory.map_keys(|keys| KeyTally::of(keys, now));
        report.plan = plan::plan(&PlanInput {
            candidates: &candidates,
            projects: &plan::project_facts(&report.inventory),
            mode: self.config.mode,
            safety: &self.config.safety,
            revoked_last_24h: u32::try_from(revoked_24h).unwrap_or(u32::MAX),
            kill_switch: self.kill_switch_on(),
        });
        annotate_plan(&mut report.findings, &report.plan);
        Ok((report, inventory))
    }

    /// Every key of every organisation, without evaluating anything.
    pub async fn list(&self) -> Inventory {
        crate::openai::collect_inventory(&self.config, &self.clients, None).await
    }

    fn evaluator(&self, now: i64) -> Evaluator {
        Evaluator {
            policies: self.policies.clone(),
            now,
            repeat: i64::try_from(self.config.notifications.repeat_interval.as_secs())
                .unwrap_or(i64::MAX),
        }
    }

    /// The organisation's open findings (none without a state file).
    fn open_findings(&self, organization: &str) -> Result<OpenFindings, SweepError> {
        Ok(OpenFindings::new(match &self.store {
            Some(s) => s.with_conn(|c| state::findings::open_findings(c, organization))?,
            None => Vec::new(),
        }))
    }

    fn kill_switch_on(&self) -> bool {
        self.config
            .safety
            .kill_switch_file
            .as_ref()
            .is_some_and(|p| p.exists())
    }

    /// Runs one sweep with actions (honouring mode and `--dry-run`).
    pub async fn run_once(&self, opts: &SweepOptions) -> Result<SweepReport, SweepError> {
        let Some(store) = self.store.clone() else {
            return Err(SweepError::State(state::StateError::Missing {
                path: self.config.state_path.clone(),
            }));
        };
        let now = opts.now;
        let mode = self.mode(opts);
        let dry_run = mode == Mode::DryRun;
        let run_id = opts.run_id.as_str();
        let hash = self.config.hash.clone();
        let started = std::time::Instant::now();
        let mut report = SweepReport {
            run_id: run_id.to_string(),
            mode: Some(mode),
            ..SweepReport::default()
        };
        let clients = self.clients_for(opts.organizations.as_deref());
        store.tx(|tx| {
            for c in &clients {
                state::sweeps::sweep_started(tx, run_id, c.org_name(), now)?;
            }
            Ok(())
        })?;
        tracing::info!(
            run_id,
            mode = mode.as_str(),
            organizations = clients.len(),
            "sweep started"
        );

        // 1. A crash between a DELETE's intent and outcome is settled before anything else.
        let unsettled =
            revoke::reconcile(&store, &clients, &self.config, mode, run_id, now).await?;

        // 2 and 3. List; each page is evaluated against the open findings and its keys'
        // observations recorded as it arrives (`record.rs`), so only findings stay in memory.
        let mut open = Vec::with_capacity(clients.len());
        for c in &clients {
            open.push((
                c.org_name().to_string(),
                Arc::new(self.open_findings(c.org_name())?),
            ));
        }
        let open_by_org: Vec<Arc<OpenFindings>> = open.iter().map(|(_, o)| o.clone()).collect();
        let recorder = record::Recorder::start(
            store.clone(),
            self.evaluator(now),
            open,
            (4 * self.config.limits.concurrency).clamp(16, 256),
        );
        let inventory = crate::openai::collect_with(
            &self.config,
            &clients,
            |p: &crate::inventory::ProjectRef| recorder.sink(p),
            None,
        )
        .await;
        let listed_secs = started.elapsed().as_secs_f64();
        let steps = recorder.finish().await?;
        let recorded_secs = started.elapsed().as_secs_f64();
        for org in &inventory.orgs {
            self.metrics
                .observe_inventory(&org.organization, &org.projects);
            for p in org.projects.iter().filter(|p| !p.listing.is_complete()) {
                tracing::warn!(run_id, organization = %org.organization, project_id = %p.project.id, "listing incomplete; nothing in this project will be revoked");
                self.metrics.incomplete_listing(&org.organization);
            }
            for k in &org.admin_keys {
                if let Some(exp) = k.expires_at {
                    self.metrics
                        .set_admin_key_expiry(&org.organization, &k.id, exp);
                }
            }
        }

        // Advance the findings; nothing is written until the plan is made, and then findings,
        // notices, alerts and audit records are committed together.
        let evaluator = self.evaluator(now);
        let mut candidates = Vec::new();
        let mut alerts = unsettled;
        let mut notices: Vec<Notice> = Vec::new();
        // Findings to write, as indices into `report.findings` (a first sweep of a large
        // organisation has tens of thousands: no second copy), with what their audit record
        // says. A finding may appear twice (dry-run note); the later write wins.
        let mut changed: Vec<(usize, Decision)> = Vec::new();
        let mut records: Vec<AuditRecord> = Vec::new();
        for ((org, recorded), open) in inventory.orgs.iter().zip(steps).zip(&open_by_org) {
            alerts.extend(org_alerts(org, now));
            let mut step = recorded.step;
            // Complete by the listing *and* evaluated by the recorder: a project whose keys the
            // recorder did not see must not have its findings closed as gone.
            let complete: HashSet<&str> = complete_projects(org)
                .into_iter()
                .filter(|p| recorded.complete.contains(*p))
                .collect();
            evaluator.gone(open, &complete, &mut step);
            for (prev_stage, t) in std::mem::take(&mut step.transitions) {
                notices.extend(t.notices(dry_run));
                let Some(next) = t.next else { continue };
                let moved = prev_stage.is_none_or(|s| s != next.stage) || !t.notices.is_empty();
                if moved {
                    changed.push((report.findings.len(), Some((prev_stage, t.notices))));
                }
                report.findings.push(FindingView {
                    plan: String::new(),
                    finding: next,
                });
            }
            for (key, reason, until) in &step.expired {
                records.push(
                    AuditRecord::new(
                        now,
                        run_id,
                        AuditKind::Exempted,
                        mode,
                        &hash,
                        format!("exemption expired: {reason}"),
                    )
                    .with_key(key)
                    .with_response(json!({ "until": until })),
                );
            }
            report.exempted.extend(step.exempted);
            report.expired_exemptions.extend(step.expired);
            candidates.extend(step.candidates);
        }

        // Dry-run: a due revocation is announced once as "would be revoked". Indexed: with 100k
        // due keys a linear search per candidate made this step quadratic.
        if dry_run {
            let mut index: HashMap<FindingId, usize> = HashMap::new();
            for (i, v) in report.findings.iter().enumerate() {
                index.entry(v.finding.id.clone()).or_insert(i);
            }
            for c in &candidates {
                let Some(&i) = index.get(&c.finding) else {
                    continue;
                };
                let f = &mut report.findings[i];
                if f.finding.dry_run_noted_at.is_none() {
                    f.finding.dry_run_noted_at = Some(now);
                    notices.push(lifecycle::revoked_notice(&f.finding, true));
                    changed.push((i, None));
                }
            }
        }

        // 5 (planned now, so cap and kill-switch alerts go out with this sweep's notices).
        let revoked_24h =
            store.with_conn(|c| state::revocations::revocations_since(c, now - 86400))?;
        let kill_switch = self.kill_switch_on();
        let the_plan = plan::plan(&PlanInput {
            candidates: &candidates,
            projects: &plan::project_facts(&inventory),
            mode,
            safety: &self.config.safety,
            revoked_last_24h: u32::try_from(revoked_24h).unwrap_or(u32::MAX),
            kill_switch,
        });
        alerts.extend(plan_alerts(&the_plan, &self.config));
        for w in &the_plan.withheld {
            self.metrics.revocations_withheld(
                w.action.organization(),
                w.reason.as_str(),
                u64::from(w.action.revocations()),
            );
        }
        let hash_ref = hash.as_str();
        let skipped: Vec<AuditRecord> = the_plan
            .withheld
            .iter()
            .flat_map(|w| {
                w.action.keys().iter().map(move |k| {
                    AuditRecord::new(
                        now,
                        run_id,
                        AuditKind::Skipped,
                        mode,
                        hash_ref,
                        format!("revocation withheld: {}", w.reason.as_str()),
                    )
                    .with_key(k)
                    .with_response(
                        json!({ "withheld": w.reason.as_str(), "action": w.action.describe() }),
                    )
                })
            })
            .collect();

        let alerts = self.dedup_alerts(&store, alerts, now)?;
        records.extend(skipped);
        // One transaction: a crash leaves either the advanced findings with their notices and
        // audit records, or none of them (and the next sweep does the step again).
        let findings = &report.findings;
        let queued = self.enqueue(
            &store,
            |tx| {
                for (i, decision) in &changed {
                    let f = &findings[*i].finding;
                    state::findings::upsert_finding(tx, f, now)?;
                    if let Some((before, kinds)) = decision {
                        audit::append(
                            tx,
                            &decision_record(f, *before, kinds, mode, run_id, &hash, now),
                        )?;
                    }
                }
                Ok(())
            },
            &notices,
            &alerts,
            run_id,
            now,
            records,
            mode,
        )?;
        drop((changed, notices));
        let committed_secs = started.elapsed().as_secs_f64();
        report.notices_queued += queued;

        // 4. Deliver before deleting, so final notices reach people first.
        if opts.deliver {
            report.delivery = self
                .notifier
                .deliver_due(&store, &notify_settings(&self.config), now)
                .await?;
        }

        // 5. Enforce.
        if !opts.cancel.is_cancelled() && !the_plan.revoke.is_empty() {
            let results = revoke::execute(
                &revoke::Context {
                    store: &store,
                    config: &self.config,
                    policies: &self.policies,
                    clients: &clients,
                    mode,
                    run_id,
                    now,
                    cancel: &opts.cancel,
                },
                &the_plan.revoke,
            )
            .await?;
            let mut after_notices = Vec::new();
            let mut after_alerts = Vec::new();
            for r in &results {
                self.metrics.revocation(r.organization(), r.outcome_label());
                if r.deleted() {
                    for id in r.findings() {
                        if let Some(v) = report.findings.iter_mut().find(|v| &v.finding.id == id) {
                            v.finding = lifecycle::mark_revoked(&v.finding, now);
                            after_notices.push(lifecycle::revoked_notice(&v.finding, false));
                        }
                    }
                } else if let Some(alert) = r.alert() {
                    after_alerts.push(alert);
                }
                // A key found changed or gone at the re-check closes or keeps its finding as
                // the re-read says; the next sweep re-evaluates it from a fresh listing.
            }
            let revoked: Vec<Finding> = after_notices.iter().map(|n| n.finding.clone()).collect();
            let after_alerts = self.dedup_alerts(&store, after_alerts, now)?;
            report.notices_queued += self.enqueue(
                &store,
                |tx| state::findings::upsert_findings(tx, &revoked, now),
                &after_notices,
                &after_alerts,
                run_id,
                now,
                Vec::new(),
                mode,
            )?;
            report.revocations = results;
            report.alerts.extend(after_alerts);
            if opts.deliver {
                let more = self
                    .notifier
                    .deliver_due(&store, &notify_settings(&self.config), now)
                    .await?;
                report.delivery.sent += more.sent;
                report.delivery.failed += more.failed;
                report.delivery.dead += more.dead;
                report.delivery.alerts.extend(more.alerts);
            }
        }
        report.alerts.extend(alerts);
        report.plan = the_plan;
        annotate_plan(&mut report.findings, &report.plan);

        // 6. Record the sweep.
        let elapsed = started.elapsed().as_secs_f64();
        store.tx(|tx| {
            for org in &inventory.orgs {
                let status = if org.error.is_some() {
                    state::sweeps::SweepStatus::Failed
                } else if org.is_complete() {
                    state::sweeps::SweepStatus::Completed
                } else {
                    state::sweeps::SweepStatus::Incomplete
                };
                let summary = json!({
                    "projects": org.projects.len(),
                    "incomplete_projects": org.projects.iter().filter(|p| !p.listing.is_complete()).count(),
                    "keys": org.projects.iter().map(|p| p.keys.keys).sum::<usize>(),
                    "error": org.error,
                    "revoked": report.revocations.iter().filter(|r| r.deleted() && r.organization() == org.organization).count(),
                    "seconds": elapsed,
                });
                state::sweeps::sweep_finished(tx, run_id, &org.organization, now + elapsed.round() as i64, status, &summary)?;
                audit::append(
                    tx,
                    &AuditRecord {
                        organization: Some(org.organization.clone()),
                        inputs: summary,
                        ..AuditRecord::new(now, run_id, AuditKind::Sweep, mode, &hash, format!("sweep {}", status.as_str()))
                    },
                )?;
            }
            Ok(())
        })?;
        if let Ok(counts) = store.with_conn(state::findings::finding_counts) {
            for org in &inventory.orgs {
                let mine: Vec<(&str, Stage, u64)> = counts
                    .iter()
                    .filter(|c| c.organization == org.organization && c.stage.is_open())
                    .map(|c| (c.policy.as_str(), c.stage, c.count))
                    .collect();
                self.metrics.replace_findings(&org.organization, &mine);
            }
        }
        if let Ok(depth) = store.with_conn(notify::outbox::depth) {
            self.metrics.set_outbox_depth(depth.pending, depth.dead);
        }
        tracing::info!(
            run_id,
            complete = inventory.is_complete(),
            keys = inventory.key_count(),
            findings = report.findings.len(),
            revoked = report.revoked_count(),
            notices = report.notices_queued,
            seconds = elapsed,
            listed_secs,
            recorded_secs,
            committed_secs,
            "sweep finished"
        );
        report.inventory = inventory;
        Ok(report)
    }

    /// Alerts already raised within the repeat interval are not raised again.
    fn dedup_alerts(
        &self,
        store: &Store,
        alerts: Vec<EnforcerAlert>,
        now: i64,
    ) -> Result<Vec<EnforcerAlert>, SweepError> {
        let repeat = self.config.notifications.repeat_interval;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for a in alerts {
            if !seen.insert(a.dedup_key()) {
                continue;
            }
            if store.with_conn(|c| state::alerts::should_raise(c, &a.dedup_key(), now, repeat))? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Composes digests and writes them in one transaction with what `findings` writes (the
    /// findings and their decision records), the alerts and `records`.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        store: &Store,
        findings: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), state::StateError>,
        notices: &[Notice],
        alerts: &[EnforcerAlert],
        run_id: &str,
        now: i64,
        mut records: Vec<AuditRecord>,
        mode: Mode,
    ) -> Result<usize, SweepError> {
        let messages =
            notify::compose(notices, alerts, &notify_settings(&self.config), run_id, now);
        for a in alerts {
            tracing::warn!(run_id, alert = %a.dedup_key(), "enforcer alert: {}", notify::digest::alert_text(a));
            records.push(
                AuditRecord::new(
                    now,
                    run_id,
                    AuditKind::Alert,
                    mode,
                    &self.config.hash,
                    notify::digest::alert_text(a),
                )
                .with_response(serde_json::to_value(a).unwrap_or_default()),
            );
        }
        store.tx(|tx| {
            findings(tx)?;
            notify::outbox::enqueue(tx, &messages, now)?;
            for a in alerts {
                state::alerts::record_raised(tx, a, now)?;
            }
            for r in &records {
                audit::append(tx, r)?;
            }
            Ok(())
        })?;
        Ok(messages.len())
    }
}

/// What a changed finding's audit record says: the stage before and the notices sent; `None`
/// for a rewrite that is not a decision (the dry-run "would be revoked" note).
type Decision = Option<(Option<Stage>, Vec<NoticeKind>)>;

/// The projects of `org` whose listing is complete: the only ones whose missing keys are gone.
fn complete_projects<K>(org: &OrgInventory<K>) -> HashSet<&str> {
    org.projects
        .iter()
        .filter(|p| p.listing.is_complete())
        .map(|p| p.project.id.as_str())
        .collect()
}

fn decision_record(
    f: &Finding,
    before: Option<Stage>,
    notices: &[NoticeKind],
    mode: Mode,
    run_id: &str,
    hash: &str,
    now: i64,
) -> AuditRecord {
    let kind = match f.stage {
        Stage::Resolved => AuditKind::Resolved,
        Stage::Exempted => AuditKind::Exempted,
        _ if before.is_none() => AuditKind::Decision,
        _ => AuditKind::Notice,
    };
    let what = match (before, f.stage) {
        (None, _) => format!(
            "{} violates {}: {}; {}",
            f.key_name,
            f.id.policy,
            f.reason,
            match f.action {
                Action::Revoke => format!("revocation deadline {}", fmt_time(f.deadline)),
                Action::Notify => "notify only".to_string(),
            }
        ),
        (_, Stage::Resolved | Stage::Exempted) => {
            format!(
                "finding closed: {}",
                f.resolution.as_deref().unwrap_or("resolved")
            )
        }
        _ => format!(
            "{} for {}",
            notices
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            f.id.policy
        ),
    };
    AuditRecord::new(now, run_id, kind, mode, hash, what)
        .with_finding(f)
        .with_response(json!({ "notices": notices.iter().map(|n| n.as_str()).collect::<Vec<_>>() }))
}

/// RFC 3339 in UTC, for messages.
pub fn fmt_time(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ts.to_string())
}

/// Enforcer alerts that a listing produces: auth failure, unreachable org, incomplete projects,
/// admin keys about to expire.
fn org_alerts<K>(org: &OrgInventory<K>, now: i64) -> Vec<EnforcerAlert> {
    let mut out = Vec::new();
    if let Some(err) = &org.error {
        if org.unauthorized {
            out.push(EnforcerAlert::AuthenticationFailed {
                organization: org.organization.clone(),
                message: err.clone(),
            });
        } else {
            out.push(EnforcerAlert::OrganizationUnavailable {
                organization: org.organization.clone(),
                message: err.clone(),
            });
        }
    }
    for p in &org.projects {
        if let crate::inventory::Listing::Incomplete(reason) = &p.listing {
            out.push(EnforcerAlert::IncompleteListing {
                organization: org.organization.clone(),
                project_id: p.project.id.clone(),
                reason: reason.clone(),
            });
        }
    }
    for k in &org.admin_keys {
        if let Some(exp) = k.expires_at
            && exp - now <= ADMIN_KEY_EXPIRY_WARNING_SECS
        {
            out.push(EnforcerAlert::AdminKeyExpiring {
                organization: org.organization.clone(),
                key_id: k.id.clone(),
                redacted_value: k.redacted_value.clone(),
                expires_at: exp,
            });
        }
    }
    out
}

/// Cap and kill-switch alerts: one per cap that withheld something.
fn plan_alerts(plan: &Plan, config: &Config) -> Vec<EnforcerAlert> {
    let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
    for w in &plan.withheld {
        if w.reason.is_cap() || w.reason == plan::Withheld::KillSwitch {
            *by_reason.entry(w.reason.as_str()).or_default() += u64::from(w.action.revocations());
        }
    }
    by_reason
        .into_iter()
        .map(|(reason, withheld)| {
            if reason == plan::Withheld::KillSwitch.as_str() {
                EnforcerAlert::KillSwitchOn {
                    path: config
                        .safety
                        .kill_switch_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    withheld,
                }
            } else {
                let limit = match reason {
                    r if r == plan::Withheld::CapPerRun.as_str() => {
                        u64::from(config.safety.max_revocations_per_run)
                    }
                    r if r == plan::Withheld::CapPerDay.as_str() => {
                        u64::from(config.safety.max_revocations_per_day)
                    }
                    _ => u64::from(config.safety.max_revocations_per_project_percent),
                };
                EnforcerAlert::CapExceeded {
                    cap: reason.to_string(),
                    limit,
                    withheld,
                }
            }
        })
        .collect()
}

/// Fills each finding's `plan` column from the plan and its stage.
fn annotate_plan(findings: &mut [FindingView], plan: &Plan) {
    // First action naming each finding, as a linear `find` would pick it, but indexed: a
    // dry-run plan withholds every due key, and findings × withheld was quadratic.
    let mut revoke: HashMap<&FindingId, usize> = HashMap::new();
    for (i, a) in plan.revoke.iter().enumerate() {
        for id in &a.findings {
            revoke.entry(id).or_insert(i);
        }
    }
    let mut withheld: HashMap<&FindingId, usize> = HashMap::new();
    for (i, w) in plan.withheld.iter().enumerate() {
        for id in &w.action.findings {
            withheld.entry(id).or_insert(i);
        }
    }
    for v in findings {
        let id = &v.finding.id;
        v.plan = if let Some(a) = revoke.get(id).map(|&i| &plan.revoke[i]) {
            format!("revoke now ({})", a.describe())
        } else if let Some(w) = withheld.get(id).map(|&i| &plan.withheld[i]) {
            format!("due, withheld: {}", w.reason.as_str())
        } else {
            match (v.finding.stage, v.finding.action) {
                (Stage::Revoked, _) => "revoked".into(),
                (Stage::Resolved, _) => format!(
                    "resolved: {}",
                    v.finding.resolution.as_deref().unwrap_or("")
                ),
                (Stage::Exempted, _) => format!(
                    "exempted: {}",
                    v.finding.resolution.as_deref().unwrap_or("")
                ),
                (_, Action::Revoke) => format!("revoke on {}", fmt_time(v.finding.deadline)),
                (_, Action::Notify) => "notify".into(),
            }
        };
    }
}

/// notify's part of the configuration (no organisation, so no admin key).
fn notify_settings(config: &Config) -> notify::NotifySettings {
    notify::NotifySettings::from(config)
}
