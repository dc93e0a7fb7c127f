//! One sweep, as named phases: the one callable unit the daemon schedules, `keysweep run
//! --once` runs and the tests drive.
//!
//! [`Sweeper::run_once`] reads as the pipeline; each phase is a function returning a named
//! summary (`run.rs` holds what the phases share). The order is the safety argument:
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
//! 5. **commit** (`commit.rs` → `Committed`): findings, their notices (outbox), alerts and
//!    audit records in ONE transaction, so a crash never sends a notice twice or forgets one;
//! 6. **deliver** (`enforce.rs` → `DeliveryReport`) what is due, so the final notice goes out
//!    before the delete that follows it;
//! 7. **enforce** (`enforce.rs` → `Enforced`): hand the approved revocations to `revoke`, which
//!    re-reads every key before deleting it; commit the revoked findings and their notices,
//!    deliver again;
//! 8. **record the sweep** (`finish.rs` → the [`SweepReport`]): its status per organisation,
//!    audit record, metrics and log line.
//!
//! A sweep keeps the findings, never the keys: memory follows what is wrong, not the size of
//! the organisation. `scan` uses the same evaluation without writing anything
//! (`Sweeper::preview`) and keeps every key, because it prints them. This module never deletes
//! (that is `revoke`'s) and never renders a message (that is `notify`'s).

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
use crate::inventory::{Inventory, Key, KeyTally, OrgInventory};
use crate::metrics::Metrics;
use crate::notify::alert::EnforcerAlert;
use crate::notify::{self, Notifier};
use crate::openai::{AdminClient, ClientShared};
use crate::policy::Policies;
use crate::policy::finding::Finding;
use crate::policy::plan::{self, Candidate, Plan, PlanInput};
use crate::revoke;
use crate::state::{self, Store};

mod advance;
mod commit;
mod enforce;
mod evaluate;
mod finish;
mod listing;
mod planning;
mod reconcile;
mod record;
mod run;

use advance::OrgEvaluation;
use evaluate::{Evaluator, OpenFindings, Step};

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
        let policies = Arc::new(Policies::compile(&config)?);
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
    /// the whole inventory, every key included, for the listing `scan` prints. The findings
    /// advance through the same phase as a sweep's ([`advance::advance_findings`]).
    pub async fn preview(
        &self,
        now: i64,
        progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>,
    ) -> Result<(SweepReport, Inventory), SweepError> {
        let clients = self.clients_for(None);
        let inventory = crate::openai::collect_inventory(&self.config, &clients, progress).await;
        let evaluator = self.evaluator(now);
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
                complete: complete_projects(org),
                step,
            }
        });
        let advanced =
            advance::advance_findings(&evaluator, orgs, self.config.mode == Mode::DryRun);
        let tally = inventory.map_keys(|keys| KeyTally::of(keys, now));
        let plan = self.plan_revocations(&advanced.candidates, &tally, self.config.mode, now)?;
        let mut findings = advanced.findings;
        planning::annotate_plan(&mut findings, &plan);
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

    /// Runs one sweep with actions (honouring mode and `--dry-run`): the pipeline, one phase
    /// per line (see the module docs for why in this order).
    pub async fn run_once(&self, opts: &SweepOptions) -> Result<SweepReport, SweepError> {
        let run = self.begin(opts)?;
        let reconciled = run.reconcile().await?;
        let listed = run.list_and_record().await?;
        let mut advanced = run.advance_findings(&listed.inventory, listed.evaluated);
        let planned = run.plan(&listed.inventory, &mut advanced)?;
        let alerts = [reconciled.unsettled, listed.alerts, planned.alerts].concat();
        let committed = run.commit(&mut advanced, alerts, planned.withheld)?;
        let delivery = run.deliver().await?;
        let enforced = run.enforce(&planned.plan, &mut advanced.findings).await?;
        let timings = run::Timings {
            committed_secs: committed.seconds,
            ..listed.timings
        };
        let report = run.report(
            listed.inventory,
            advanced,
            planned.plan,
            committed,
            delivery,
            enforced,
        );
        run.record_sweep(report, timings)
    }

    /// The plan for `candidates` under the rails: mode, kill switch, caps (with the revocations
    /// of the last 24 hours; none without a state file), the service-account rule.
    fn plan_revocations(
        &self,
        candidates: &[Candidate],
        inventory: &Inventory<KeyTally>,
        mode: Mode,
        now: i64,
    ) -> Result<Plan, SweepError> {
        let revoked_24h = match &self.store {
            Some(s) => s.with_conn(|c| state::revocations::revocations_since(c, now - 86400))?,
            None => 0,
        };
        Ok(plan::plan(&PlanInput {
            candidates,
            projects: &plan::project_facts(inventory),
            mode,
            safety: &self.config.safety,
            revoked_last_24h: u32::try_from(revoked_24h).unwrap_or(u32::MAX),
            kill_switch: self.kill_switch_on(),
        }))
    }
}

/// The projects of `org` whose listing is complete: the only ones whose missing keys are gone.
fn complete_projects<K>(org: &OrgInventory<K>) -> HashSet<&str> {
    org.projects
        .iter()
        .filter(|p| p.listing.is_complete())
        .map(|p| p.project.id.as_str())
        .collect()
}

/// RFC 3339 in UTC, for messages.
pub fn fmt_time(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ts.to_string())
}
