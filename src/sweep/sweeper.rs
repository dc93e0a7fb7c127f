//! The long-lived sweep machinery ([`Sweeper`]: clients, compiled policies, store, notifier,
//! metrics) and what one call asks of it ([`SweepOptions`]). The phases reach the store, the
//! open findings, the evaluator and the plan through it. It never runs a phase itself.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
use crate::daemon::schedule::{Cadence, effective_schedule};
use crate::inventory::{Inventory, KeyTally};
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifySettings};
use crate::openai::{AdminClient, ClientShared};
use crate::policy::Policies;
use crate::policy::plan::{self, Candidate, Plan, PlanInput};
use crate::state::{self, Store};

use super::advance::RotatingKeys;
use super::evaluate::{Evaluator, OpenFindings};
use super::report::{FindingView, SweepError};

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
    crate::telemetry::new_run_id()
}

/// Long-lived sweep machinery: clients, compiled policies, store, notifier, metrics.
pub struct Sweeper {
    pub config: Arc<Config>,
    pub(super) policies: Arc<Policies>,
    clients: Vec<AdminClient>,
    store: Option<Store>,
    pub(super) notifier: Notifier,
    /// notify's part of `config`, cut out once: every phase that composes or delivers uses it.
    pub(super) notify: NotifySettings,
    pub(super) metrics: Metrics,
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
            notify: NotifySettings::from(&*config),
            config,
            policies,
            clients,
            store,
            notifier: Notifier::new()?.with_metrics(metrics.clone()),
            metrics,
        })
    }

    /// Delivers what the outbox has due at `now` through this configuration's channels: the
    /// daemon between sweeps (a failed message is retried on its own backoff, not only when the
    /// next sweep runs) and at shutdown. Without a state store there is no outbox.
    pub async fn deliver_outbox(
        &self,
        now: i64,
    ) -> Result<crate::notify::DeliveryReport, crate::notify::NotifyError> {
        self.deliver_outbox_until(now, &tokio_util::sync::CancellationToken::new())
            .await
    }

    /// [`Sweeper::deliver_outbox`] that claims no further message once `stop` is cancelled.
    pub async fn deliver_outbox_until(
        &self,
        now: i64,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<crate::notify::DeliveryReport, crate::notify::NotifyError> {
        match self.store() {
            Some(store) => {
                (self.notifier)
                    .deliver_due_until(store, &self.notify, now, stop)
                    .await
            }
            None => Ok(crate::notify::DeliveryReport::default()),
        }
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub(super) fn clients_for(&self, only: Option<&[String]>) -> Vec<AdminClient> {
        self.clients
            .iter()
            .filter(|c| only.is_none_or(|o| o.iter().any(|n| n == c.org_name())))
            .cloned()
            .collect()
    }

    pub(super) fn mode(&self, opts: &SweepOptions) -> Mode {
        if opts.force_dry_run {
            Mode::DryRun
        } else {
            self.config.mode
        }
    }

    /// Every key of every organisation, without evaluating anything.
    pub async fn list(&self) -> Inventory {
        crate::openai::collect_inventory(&self.config, &self.clients, None).await
    }

    pub(super) fn evaluator(&self, now: i64, dry_run: bool) -> Evaluator {
        Evaluator {
            dry_run,
            sa_keys_enforced: self.config.safety.service_account_keys
                == crate::config::ServiceAccountKeys::Enforce,
            policies: self.policies.clone(),
            now,
            repeat: i64::try_from(self.config.notifications.repeat_interval.as_secs())
                .unwrap_or(i64::MAX),
            restore_expiry: i64::try_from(self.config.safety.restore_expiry.as_secs())
                .unwrap_or(i64::MAX),
            next_sweeps: (self.config.organizations.iter())
                .filter_map(|org| {
                    let cadence = Cadence::of(effective_schedule(&self.config, org))?;
                    Some((org.name.clone(), cadence.next_sweep_by(now)?))
                })
                .collect(),
        }
    }

    /// The organisation's open findings (none without a state file).
    pub(super) fn open_findings(&self, organization: &str) -> Result<OpenFindings, SweepError> {
        match &self.store {
            Some(s) => load_open_findings(s, organization),
            None => Ok(OpenFindings::new(Vec::new())),
        }
    }

    /// Fails closed: see `revoke::kill_switch_engaged`.
    fn kill_switch_on(&self) -> bool {
        crate::revoke::kill_switch_engaged(self.config.safety.kill_switch_file.as_deref())
    }

    /// Drops from `rotating` (`Advanced::rotating_keys`) the keys whose latest rotation is
    /// finished (`done`, `unannounced`) with its promised expiry in place (the key, as its open
    /// rotate finding saw it in this listing, ends by then): their replacement exists, so
    /// another policy's expiry may end them, and its notices say so rather than announce a
    /// rotation. A rotation whose expiry is still owed (`delivered`), or one whose expiry was
    /// moved off (as a person does who deleted a new key that did not work), is the rotation
    /// phase's to judge (it sets the expiry, or abandons the rotation); until then the key
    /// keeps its protection.
    pub(super) fn forget_handed_over(
        &self,
        rotating: &mut RotatingKeys,
        findings: &[FindingView],
    ) -> Result<(), SweepError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        if rotating.is_empty() {
            return Ok(());
        }
        // The key's expiry as the sweep last saw it, indexed: a first sweep has many findings.
        // Only the open rotate findings: they are refreshed from this sweep's listing, and one
        // closing this sweep keeps the last sweep's expiry.
        let listed: HashMap<(&str, &str, &str), crate::inventory::Expiry> = (findings.iter())
            .map(|v| &v.finding)
            .filter(|f| f.stage.is_open() && self.config.rotation(&f.id.policy).is_some())
            .map(|f| (f.id.key_ref(), f.expires_at))
            .collect();
        let mut handed = Vec::new();
        store.with_conn(|c| {
            for key @ (org, project, id) in rotating.keys() {
                let Some(row) = state::rotations::latest_for_key(c, org, project, id)? else {
                    continue;
                };
                let in_place =
                    || match (row.old_expires_at, listed.get(&(&**org, &**project, &**id))) {
                        (Some(to), Some(expiry)) => !expiry.outlives(to),
                        // A finished rotation that promised nothing (no path writes one) must
                        // not protect its key for good: the rotation phase never writes again.
                        (None, _) => true,
                        (Some(_), None) => false,
                    };
                // A `delivered` row's expiry is still owed: the rotation phase sets it, or
                // abandons the rotation if the new key is gone; until then it keeps the key.
                let handed_over = match row.status.as_str() {
                    "done" | state::rotations::UNANNOUNCED => in_place(),
                    _ => false,
                };
                if handed_over {
                    handed.push(key.clone());
                }
            }
            Ok(())
        })?;
        for key in handed {
            rotating.remove(&key);
        }
        Ok(())
    }

    /// The plan for `candidates` under the rails: mode, kill switch, caps (with the revocations
    /// of the last 24 hours; none without a state file), the service-account rule.
    pub(super) fn plan_revocations(
        &self,
        candidates: &[Candidate],
        rotating: &RotatingKeys,
        inventory: &Inventory<KeyTally>,
        mode: Mode,
        now: i64,
    ) -> Result<Plan, SweepError> {
        let revoked_24h = match &self.store {
            Some(s) => s.with_conn(|c| state::revocations::revocations_since(c, now - 86400))?,
            None => 0,
        };
        // A service-account key under a `rotate` policy gets its expiry from the rotation
        // only, once the sink confirmed (`sweep/rotation.rs`), not from the `expire` path.
        let candidates = crate::policy::rotation::without_rotated_expiries(
            candidates,
            rotating,
            &self.config.rotations,
        );
        let candidates = &candidates[..];
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

/// `organization`'s open findings in `store`, indexed for the evaluation.
pub(super) fn load_open_findings(
    store: &Store,
    organization: &str,
) -> Result<OpenFindings, SweepError> {
    Ok(OpenFindings::new(store.with_conn(|c| {
        state::findings::open_findings(c, organization)
    })?))
}
