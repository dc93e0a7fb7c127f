//! Phase 2, list and record: every selected project is listed, and each page of keys is handed
//! to the recorder (`record.rs`) over a bounded channel as it arrives, evaluated and recorded,
//! then dropped. What this phase returns is a summary: a tally per project, the evaluation of
//! the completely listed projects, and the alerts the listing raised; never the keys. It never
//! writes a finding, queues a notice or deletes.

use std::sync::Arc;

use crate::inventory::{Inventory, KeyTally, Listing, OrgInventory, ProjectRef};
use crate::notify::alert::EnforcerAlert;

use super::evaluate::OpenFindings;
use super::record::{Recorded, Recorder};
use super::report::SweepError;
use super::run::{Run, Timings};

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
}

/// What the recorder evaluated, per organisation in the order of the sweep's clients.
pub(super) struct Evaluated {
    /// The organisation's open findings as loaded before the listing.
    pub open: Vec<Arc<OpenFindings>>,
    pub recorded: Vec<Recorded>,
}

impl Run<'_> {
    pub(super) async fn list_and_record(&self) -> Result<Listed, SweepError> {
        let sweeper = self.sweeper;
        let mut open = Vec::with_capacity(self.clients.len());
        for c in &self.clients {
            open.push((
                c.org_name().to_string(),
                Arc::new(sweeper.open_findings(c.org_name())?),
            ));
        }
        let open_by_org: Vec<Arc<OpenFindings>> = open.iter().map(|(_, o)| o.clone()).collect();
        let recorder = Recorder::start(
            self.store.clone(),
            sweeper.evaluator(self.now()),
            open,
            (4 * sweeper.config.limits.concurrency).clamp(16, 256),
        );
        let inventory = crate::openai::collect_with(
            &sweeper.config,
            &self.clients,
            |p: &ProjectRef| recorder.sink(p),
            None,
        )
        .await;
        let listed_secs = self.elapsed();
        let recorded = recorder.finish().await?;
        let recorded_secs = self.elapsed();
        for org in &inventory.orgs {
            self.observe(org);
        }
        let alerts = inventory
            .orgs
            .iter()
            .flat_map(|org| org_alerts(org, self.now()))
            .collect();
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
        })
    }

    /// Metrics and warnings of one organisation's listing.
    fn observe(&self, org: &OrgInventory<KeyTally>) {
        let metrics = &self.sweeper.metrics;
        metrics.observe_inventory(&org.organization, &org.projects);
        for p in org.projects.iter().filter(|p| !p.listing.is_complete()) {
            tracing::warn!(run_id = self.run_id(), organization = %org.organization, project_id = %p.project.id, "listing incomplete; nothing in this project will be revoked");
            metrics.incomplete_listing(&org.organization);
        }
        for k in &org.admin_keys {
            if let Some(exp) = k.expires_at {
                metrics.set_admin_key_expiry(&org.organization, &k.id, exp);
            }
        }
    }
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
        if let Listing::Incomplete(reason) = &p.listing {
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
