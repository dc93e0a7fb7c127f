//! Phase 2, list and record: every selected project is listed, and each page of keys is handed
//! to the recorder (`record.rs`) over a bounded channel as it arrives, evaluated and recorded,
//! then dropped. What this phase returns is a summary: a tally per project, the evaluation of
//! the completely listed projects, and the alerts the listing raised; never the keys. It never
//! writes a finding, queues a notice or deletes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::intel::{Intel, Logged};
use crate::inventory::{AdminKeyInfo, Inventory, KeyTally, Listing, OrgInventory, ProjectRef};
use crate::notify::alert::EnforcerAlert;
use crate::openai::AdminClient;

use super::evaluate::OpenFindings;
use super::record::{Recorded, Recorder};
use super::report::SweepError;
use super::run::{Run, Timings};
use super::sweeper::load_open_findings;

/// Admin keys expiring within this window raise an enforcer alert.
const ADMIN_KEY_EXPIRY_WARNING_SECS: i64 = 14 * 86400;

/// What the listing found.
pub(super) struct Listed {
    /// Every organisation and project with its listing status and a tally of its keys.
    pub inventory: Inventory<KeyTally>,
    pub evaluated: Evaluated,
    /// Auth failures, unreachable organisations, incomplete projects, expiring admin keys.
    pub alerts: Vec<EnforcerAlert>,
    pub timings: Timings,
    /// The audit log and usage (issue 16): for the notices (`owners.rs`) and the old keys'
    /// scopes the rotation phase reads.
    pub intel: Intel,
}

/// What the recorder evaluated, per organisation in the order of the sweep's clients.
pub(super) struct Evaluated {
    /// The organisation's open findings as loaded at the start of the listing.
    pub open: Vec<Arc<OpenFindings>>,
    pub recorded: Vec<Recorded>,
}

impl Run<'_> {
    pub(super) async fn list_and_record(&self) -> Result<Listed, SweepError> {
        let sweeper = self.sweeper;
        let names: Vec<String> = (self.clients.iter())
            .map(|c| c.org_name().to_string())
            .collect();
        // The open findings load while the intel is gathered and the listing starts; the
        // recorder awaits them before it evaluates the first page.
        let open = {
            let (store, names) = (self.store.clone(), names.clone());
            tokio::task::spawn_blocking(move || {
                (names.iter())
                    .map(|n| load_open_findings(&store, n).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()
            })
        };
        // The audit log and usage first: the recorder judges each page as it arrives, so the
        // rules (`unrestricted`, `max_idle`'s usage buckets) need them before the first one.
        let intel = self.gather_intel().await;
        let mut evaluator = sweeper.evaluator(self.now(), self.dry_run());
        let wanted = crate::intel::Wanted::of(&sweeper.config.policies);
        evaluator.policies = self.with_facts(intel.facts(self.now(), wanted));
        // What the gap alerts read of the log is taken now; the rest of it waits in the state
        // file while the keys are listed, and only the keys the later phases read come back.
        let logged = self.logged_alive(&intel)?;
        let mut intel = intel;
        let parked = intel.park();
        tracing::debug!(
            run_id = self.run_id(),
            parked,
            "audit-log history let go while listing"
        );
        let recorder = Recorder::start(
            self.store.clone(),
            evaluator,
            names,
            open,
            (4 * sweeper.config.limits.concurrency).clamp(16, 256),
            i64::try_from(sweeper.config.intel.wake_after.as_secs()).unwrap_or(i64::MAX),
        );
        let inventory = crate::openai::collect_with(
            &sweeper.config,
            &self.clients,
            |p: &ProjectRef| recorder.sink(p),
            None,
        )
        .await;
        let listed_secs = self.elapsed();
        let (recorded, open_by_org) = recorder.finish().await?;
        let recorded_secs = self.elapsed();
        for org in &inventory.orgs {
            self.observe(org);
        }
        let mut alerts: Vec<EnforcerAlert> = inventory
            .orgs
            .iter()
            .flat_map(|org| {
                let mut alerts = org_alerts(org);
                alerts.extend(self.own_admin_key_alert(org));
                alerts
            })
            .collect();
        alerts.extend(woke_alerts(&self.clients, &recorded));
        alerts.extend(self.gap_alerts(logged, &inventory)?);
        self.keep_intel_read_later(&mut intel, &open_by_org, &recorded);
        alerts.extend(intel_alerts(&intel, &inventory));
        Ok(Listed {
            inventory,
            evaluated: Evaluated {
                open: open_by_org,
                recorded,
            },
            alerts,
            timings: Timings {
                listed_secs,
                recorded_secs,
                committed_secs: 0.0,
            },
            intel,
        })
    }

    /// The audit log (only what is new since the last sweep, on top of the stored history)
    /// and usage (issue 16) of every organisation of the sweep. Never fails: what cannot be
    /// read is an `Err`.
    async fn gather_intel(&self) -> Intel {
        let kept = crate::intel::Kept {
            store: &self.store,
            persist: true,
        };
        let settings = self.sweeper.config.intel;
        crate::intel::gather_kept(&self.clients, settings, self.now(), Some(kept)).await
    }

    /// Per organisation whose log could be read, the keys it shows alive that a gap alert
    /// could name (`intel::logged_alive`): only those created since the last completed sweep
    /// (less the log's lag margin). One created before it was listed then or alerted then;
    /// the history kept between sweeps would otherwise alert forever for a key that left the
    /// listing with no deletion event (an expiry the creation event does not carry).
    fn logged_alive(&self, intel: &Intel) -> Result<HashMap<String, Vec<Logged>>, SweepError> {
        let mut out = HashMap::new();
        for o in &intel.orgs {
            let Ok(history) = &o.history else { continue };
            let since = (self.store)
                .with_conn(|c| crate::state::sweeps::last_completed_sweep(c, &o.organization))?
                .map(|s| s.started_at.saturating_sub(crate::intel::AUDIT_LOG_MARGIN));
            let none = HashSet::new();
            let now = self.now();
            let (alive, _) = crate::intel::logged_alive(history, &none, now, since, now);
            out.insert(o.organization.clone(), alive);
        }
        Ok(out)
    }

    /// One `InventoryGap` alert per organisation whose log shows keys alive (`logged`, see
    /// [`Run::logged_alive`]) in a project its complete listing covered, and yet did not
    /// return them: a key counts as listed when the recorder left its observation present (a
    /// complete listing marks every absent key gone).
    fn gap_alerts(
        &self,
        mut logged: HashMap<String, Vec<Logged>>,
        inventory: &Inventory<KeyTally>,
    ) -> Result<Vec<EnforcerAlert>, SweepError> {
        let mut out = Vec::new();
        for org in &inventory.orgs {
            let Some(alive) = logged.remove(&org.organization) else {
                continue;
            };
            let complete = |project: &str| {
                org.is_complete()
                    && (org.projects.iter()).any(|p| {
                        p.project.id == project && !p.project.archived && p.listing.is_complete()
                    })
            };
            let mut candidates: Vec<Logged> = (alive.into_iter())
                .filter(|l| l.project_id.as_deref().is_some_and(complete))
                .collect();
            candidates.sort_by(|a, b| a.key_id.cmp(&b.key_id));
            let mut missing = Vec::new();
            for l in candidates {
                let project = l.project_id.as_deref().unwrap_or_default();
                let seen = self.store.with_conn(|c| {
                    crate::state::observations::get_observation(
                        c,
                        &org.organization,
                        project,
                        &l.key_id,
                    )
                })?;
                if seen.is_none_or(|o| o.gone_at.is_some()) {
                    missing.push(l.key_id.into_string());
                }
            }
            if !missing.is_empty() {
                out.push(EnforcerAlert::InventoryGap {
                    organization: org.organization.clone(),
                    key_ids: missing,
                });
            }
        }
        Ok(out)
    }

    /// The alert about keysweep's own admin key of `org`, if it has expired or expires within
    /// 14 days. Other admin keys are inventory (`scan` lists them), not an alert.
    fn own_admin_key_alert(&self, org: &OrgInventory<KeyTally>) -> Option<EnforcerAlert> {
        // No admin key listed: the listing of admin keys failed (an organisation always has
        // keysweep's own), which the collector has logged already.
        if org.error.is_some() || org.admin_keys.is_empty() {
            return None;
        }
        let own = match self.own_admin_key(org)? {
            Ok(k) => k,
            Err(why) => {
                warn_once(&org.organization, &why);
                return None;
            }
        };
        admin_key_alert(&org.organization, own, self.now())
    }

    /// keysweep's own admin key among `org`'s (see [`own_admin_key`]); `None` when the sweep
    /// has no client for the organisation.
    fn own_admin_key<'o>(
        &self,
        org: &'o OrgInventory<KeyTally>,
    ) -> Option<Result<&'o AdminKeyInfo, String>> {
        let client = self
            .clients
            .iter()
            .find(|c| c.org_name() == org.organization)?;
        let configured = self
            .sweeper
            .config
            .organizations
            .iter()
            .find(|o| o.name == org.organization)
            .and_then(|o| o.admin_key_id.as_deref());
        Some(own_admin_key(&org.admin_keys, configured, |r| {
            client.admin_key_matches_redacted(r)
        }))
    }

    /// Metrics and warnings of one organisation's listing.
    fn observe(&self, org: &OrgInventory<KeyTally>) {
        let metrics = &self.sweeper.metrics;
        // Counts from a listing that failed would read as keys gone (an alert on keys without
        // an expiry resolving while the API is down): the gauges keep the last listing's, and
        // so does a project whose listing stopped short (`observe_inventory`).
        if org.error.is_none() {
            metrics.observe_inventory(&org.organization, &org.projects);
        }
        for p in org.projects.iter().filter(|p| !p.listing.is_complete()) {
            tracing::warn!(run_id = self.run_id(), organization = %org.organization, project_id = %p.project.id, "listing incomplete; nothing in this project will be revoked");
            metrics.incomplete_listing(&org.organization);
        }
        // keysweep's own key only: the metric's alerts are about the key keysweep runs with.
        if let Some(Ok(k)) = self.own_admin_key(org) {
            match k.expires_at {
                Some(exp) => metrics.set_admin_key_expiry(&org.organization, &k.id, exp),
                None => metrics.forget_admin_keys_but(&org.organization, None),
            }
        }
    }
}

/// Enforcer alerts that a listing produces: auth failure, unreachable org, incomplete projects
/// (keysweep's own admin key: [`Run::own_admin_key_alert`]).
fn org_alerts<K>(org: &OrgInventory<K>) -> Vec<EnforcerAlert> {
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
        if let Listing::Incomplete(reason) = &p.listing {
            out.push(EnforcerAlert::IncompleteListing {
                organization: org.organization.clone(),
                project_id: p.project.id.clone(),
                reason: reason.clone(),
            });
        }
    }
    out
}

/// One alert per organisation whose audit log or usage (or both) could not be read, saying
/// which and why: the sweep goes on without them. An organisation whose listing failed has its
/// own alert already.
fn intel_alerts(intel: &Intel, inventory: &Inventory<KeyTally>) -> Vec<EnforcerAlert> {
    let mut out = Vec::new();
    let listed =
        |org: &str| (inventory.orgs.iter()).any(|o| o.organization == org && o.error.is_none());
    for o in intel.orgs.iter().filter(|o| listed(&o.organization)) {
        let sources = [
            ("audit log", o.history.as_ref().err()),
            ("usage", o.usage.as_ref().err()),
        ];
        let missing: Vec<(&str, &String)> = (sources.into_iter())
            .filter_map(|(s, why)| why.map(|w| (s, w)))
            .filter(|(_, why)| why.as_str() != crate::intel::OFF)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let names: Vec<&str> = missing.iter().map(|(s, _)| *s).collect();
        let whys: Vec<String> = missing.iter().map(|(s, w)| format!("{s}: {w}")).collect();
        out.push(EnforcerAlert::IntelUnavailable {
            organization: o.organization.clone(),
            source: names.join(" and "),
            message: whys.join("; "),
        });
    }
    out
}

/// One alert per dormant key used again (the recorder's `woke`), per organisation in the
/// order of the sweep's clients.
fn woke_alerts(clients: &[AdminClient], recorded: &[Recorded]) -> Vec<EnforcerAlert> {
    (clients.iter().zip(recorded))
        .flat_map(|(c, r)| {
            r.woke.iter().map(|w| EnforcerAlert::KeyWokeUp {
                organization: c.org_name().to_string(),
                project_id: w.project_id.clone(),
                key_id: w.key_id.clone(),
                idle_since: w.idle_since,
                last_used_at: w.last_used_at,
                key_name: Some(w.key_name.clone()),
                owner: None,
                listed_owner: Some((w.owner_kind, w.owner_email.clone())),
            })
        })
        .collect()
}

/// keysweep's own admin key among `keys`: the one with the configured `admin_key_id`, else the
/// only one whose redacted value `matches` keysweep's key. `Err` says why it cannot tell.
fn own_admin_key<'k>(
    keys: &'k [AdminKeyInfo],
    configured: Option<&str>,
    matches: impl Fn(&str) -> bool,
) -> Result<&'k AdminKeyInfo, String> {
    if let Some(id) = configured {
        return keys.iter().find(|k| k.id == id).ok_or_else(|| {
            format!(
                "admin_key_id {id:?} is not among the organisation's {} admin key(s); no alert about keysweep's own admin key can be raised",
                keys.len()
            )
        });
    }
    let found: Vec<&AdminKeyInfo> = keys.iter().filter(|k| matches(&k.redacted_value)).collect();
    match found.as_slice() {
        [one] => Ok(one),
        others => Err(format!(
            "cannot tell which admin key is keysweep's own: {} of the organisation's {} admin key(s) end like it; set admin_key_id to get its expiry alert",
            others.len(),
            keys.len()
        )),
    }
}

/// The alert about keysweep's own admin key `k` at `now`: expired, or expiring within 14 days.
fn admin_key_alert(organization: &str, k: &AdminKeyInfo, now: i64) -> Option<EnforcerAlert> {
    let exp = k.expires_at?;
    if exp <= now {
        Some(EnforcerAlert::AdminKeyExpired {
            organization: organization.to_string(),
            key_id: k.id.clone(),
            redacted_value: k.redacted_value.clone(),
            expired_at: exp,
        })
    } else if exp - now <= ADMIN_KEY_EXPIRY_WARNING_SECS {
        Some(EnforcerAlert::AdminKeyExpiring {
            organization: organization.to_string(),
            key_id: k.id.clone(),
            redacted_value: k.redacted_value.clone(),
            expires_at: exp,
        })
    } else {
        None
    }
}

/// Logs `why` once per organisation and process: a daemon says it at its first sweep, not at
/// every sweep.
fn warn_once(organization: &str, why: &str) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !said.iter().any(|o| o == organization) {
        said.push(organization.to_string());
        tracing::warn!(organization, "{why}");
    }
}
