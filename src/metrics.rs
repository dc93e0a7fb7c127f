//! Prometheus metrics (prometheus-client), one registry per process.
//!
//! Every module records into a [`Metrics`] handle; `ops` renders it at `/metrics` in the
//! OpenMetrics text format. Names carry the `keysweep_` prefix; counters get `_total` from the
//! encoder.
//!
//! Labels never carry a secret or a key name: only organisation, project id, owner type, age
//! band, expiry state, policy, stage, outcome, channel name, endpoint template, status and admin-key id. The
//! setters take typed values (`OwnerType`, `Stage`, `&'static str` templates) where they can, so a
//! free-form string cannot slip into a label by accident.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub use crate::inventory::AgeBand;
use crate::inventory::{ExpiryStatus, KeyTally, OwnerType, ProjectInventory};
use crate::policy::finding::Stage;

/// Outcome label of `keysweep_notifications_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationOutcome {
    Sent,
    /// One delivery attempt failed; it will be retried.
    Failed,
    /// Attempts exhausted; the message is dead-lettered.
    Dead,
    /// Not tried: its channel had just failed in the same delivery; it waits for that
    /// message's next attempt, with no attempt counted.
    Postponed,
}

impl NotificationOutcome {
    fn as_str(self) -> &'static str {
        match self {
            NotificationOutcome::Sent => "sent",
            NotificationOutcome::Failed => "failed",
            NotificationOutcome::Dead => "dead",
            NotificationOutcome::Postponed => "postponed",
        }
    }
}

/// Handle every module records into. Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    keys: Family<KeyLabels, Gauge>,
    keys_by_age: Family<AgeLabels, Gauge>,
    keys_by_expiry: Family<ExpiryLabels, Gauge>,
    keys_expiring_soon: Family<KeyLabels, Gauge>,
    findings: Family<FindingLabels, Gauge>,
    revocations: Family<OrgOutcome, Counter>,
    revocations_withheld: Family<OrgReason, Counter>,
    notifications: Family<ChannelOutcome, Counter>,
    outbox_depth: Family<OutboxLabels, Gauge>,
    sweep_duration: Family<OrgLabels, Histogram>,
    sweeps: Family<OrgOutcome, Counter>,
    api_requests: Family<ApiLabels, Counter>,
    last_success: Family<OrgLabels, Gauge>,
    skipped: Family<OrgLabels, Counter>,
    admin_key_expiry: Family<AdminKeyLabels, Gauge>,
    incomplete_listings: Family<OrgLabels, Counter>,
    audit_head_seq: Gauge,
    /// Which snapshot series each organisation set last time, so a project or policy that
    /// disappears stops being reported instead of freezing at its last value.
    snapshots: Mutex<Snapshots>,
}

/// The per-project series each organisation's last inventory set, with their values: a series
/// not set again is removed, and one whose value did not change is not written again (a steady
/// sweep at 1,000 projects has ~15,000 of them, and the registry hashes each label set with
/// SipHash under its lock). Our own maps use foldhash (seeded per process), several times
/// faster on these short labels.
#[derive(Default)]
struct Snapshots {
    keys: HashMap<String, Series<KeyLabels>>,
    findings: HashMap<String, HashSet<FindingLabels>>,
    keys_by_expiry: HashMap<String, Series<ExpiryLabels>>,
    keys_expiring_soon: HashMap<String, Series<KeyLabels>>,
    /// The admin key ids each organisation's expiry gauge named.
    admin_keys: HashMap<String, HashSet<String>>,
}

/// Each series of a family an organisation's inventory set, and the value it set.
type Series<L> = foldhash::HashMap<L, u64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgLabels {
    organization: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    organization: String,
    project: String,
    owner_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgeLabels {
    organization: String,
    owner_type: &'static str,
    age: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    organization: String,
    project: String,
    owner_type: &'static str,
    expiry: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    organization: String,
    policy: String,
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgOutcome {
    organization: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgReason {
    organization: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelOutcome {
    channel: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    organization: String,
    endpoint: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminKeyLabels {
    organization: String,
    admin_key_id: String,
}

fn org_labels(o: &str) -> OrgLabels {
    OrgLabels {
        organization: o.to_string(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric, in the order `/metrics` lists them.
    #[expect(
        clippy::too_many_lines,
        reason = "a table: one name, help text and type per metric"
    )]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keysweep");
        let keys = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "keys",
            "Project API keys seen in the last sweep, by organisation, project and owner type",
            keys.clone(),
        );
        let keys_by_age = Family::<AgeLabels, Gauge>::default();
        registry.register(
            "keys_by_age",
            "Project API keys seen in the last sweep, by creation-age band",
            keys_by_age.clone(),
        );
        let keys_by_expiry = Family::<ExpiryLabels, Gauge>::default();
        registry.register(
            "keys_by_expiry",
            "Project API keys seen in the last sweep, by organisation, project, owner type and expiry state (none: never expires, set, expired, unknown: the API did not say)",
            keys_by_expiry.clone(),
        );
        let keys_expiring_soon = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "keys_expiring_within_7d",
            "Project API keys seen in the last sweep whose expiry falls within the next 7 days, by organisation, project and owner type",
            keys_expiring_soon.clone(),
        );
        let findings = Family::<FindingLabels, Gauge>::default();
        registry.register(
            "findings",
            "Open findings by organisation, policy and stage",
            findings.clone(),
        );
        let revocations = Family::<OrgOutcome, Counter>::default();
        registry.register(
            "revocations",
            "Revocation attempts by organisation and outcome",
            revocations.clone(),
        );
        let revocations_withheld = Family::<OrgReason, Counter>::default();
        registry.register(
            "revocations_withheld",
            "Due revocations withheld by a safety rail (cap, kill switch, incomplete listing, dry-run, service-account rule), by organisation and reason",
            revocations_withheld.clone(),
        );
        let notifications = Family::<ChannelOutcome, Counter>::default();
        registry.register(
            "notifications",
            "Notification deliveries by channel and outcome (sent, failed attempt, dead-lettered)",
            notifications.clone(),
        );
        let outbox_depth = Family::<OutboxLabels, Gauge>::default();
        registry.register(
            "outbox_depth",
            "Messages in the notification outbox by state (pending, dead)",
            outbox_depth.clone(),
        );
        let sweep_duration = Family::<OrgLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.25, 2.0, 14))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "sweep_duration",
            "Duration of a sweep by organisation",
            Unit::Seconds,
            sweep_duration.clone(),
        );
        let sweeps = Family::<OrgOutcome, Counter>::default();
        registry.register(
            "sweeps",
            "Sweeps by organisation and outcome",
            sweeps.clone(),
        );
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Administration API requests by organisation, endpoint template and HTTP status (0: transport error)",
            api_requests.clone(),
        );
        let last_success = Family::<OrgLabels, Gauge>::default();
        registry.register_with_unit(
            "last_successful_sweep_timestamp",
            "Unix time of the last successful sweep by organisation",
            Unit::Seconds,
            last_success.clone(),
        );
        let skipped = Family::<OrgLabels, Counter>::default();
        registry.register(
            "schedule_skipped",
            "Schedule slots skipped because a sweep of the same organisation was still running (or the host was asleep)",
            skipped.clone(),
        );
        let admin_key_expiry = Family::<AdminKeyLabels, Gauge>::default();
        registry.register_with_unit(
            "admin_key_expiry_timestamp",
            "Unix time at which keysweep's own admin key of the organisation expires",
            Unit::Seconds,
            admin_key_expiry.clone(),
        );
        let incomplete_listings = Family::<OrgLabels, Counter>::default();
        registry.register(
            "incomplete_listings",
            "Project key listings that could not be completed (no revocation acts on them)",
            incomplete_listings.clone(),
        );
        let audit_head_seq = Gauge::default();
        registry.register(
            "audit_head_seq",
            "Sequence number of the audit log's last record (its hash is logged after each sweep); it never goes down",
            audit_head_seq.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                keys,
                keys_by_age,
                keys_by_expiry,
                keys_expiring_soon,
                findings,
                revocations,
                revocations_withheld,
                notifications,
                outbox_depth,
                sweep_duration,
                sweeps,
                api_requests,
                last_success,
                skipped,
                admin_key_expiry,
                incomplete_listings,
                audit_head_seq,
                snapshots: Mutex::new(Snapshots::default()),
            }),
        }
    }

    /// One Admin API request finished. `endpoint` is the route template
    /// (`GET /organization/projects/{project_id}/api_keys`), `status` the HTTP status or 0 for a
    /// transport error.
    pub fn api_request(&self, org: &str, endpoint: &'static str, status: u16) {
        self.inner
            .api_requests
            .get_or_create(&ApiLabels {
                organization: org.to_string(),
                endpoint,
                status,
            })
            .inc();
    }

    /// Number of keys in one project of one organisation, by owner type.
    pub fn set_keys(&self, org: &str, project_id: &str, owner_type: OwnerType, n: u64) {
        let labels = KeyLabels {
            organization: org.to_string(),
            project: project_id.to_string(),
            owner_type: owner_type.as_str(),
        };
        // Set under the snapshots' lock, so an inventory being observed meanwhile cannot
        // leave the registry and the snapshot disagreeing (a series it then thinks unchanged).
        let mut snaps = self.snapshots();
        self.inner.keys.get_or_create(&labels).set(gauge(n));
        snaps
            .keys
            .entry(org.to_string())
            .or_default()
            .insert(labels, n);
    }

    /// The series last set per organisation. A panic elsewhere while it was held leaves it
    /// usable (a map of labels and counts), and gauges must keep being written.
    fn snapshots(&self) -> std::sync::MutexGuard<'_, Snapshots> {
        self.inner
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of keys of one organisation and owner type in one age band.
    pub fn set_keys_by_age(&self, org: &str, owner_type: OwnerType, band: AgeBand, n: u64) {
        self.inner
            .keys_by_age
            .get_or_create(&AgeLabels {
                organization: org.to_string(),
                owner_type: owner_type.as_str(),
                age: band.as_str(),
            })
            .set(gauge(n));
    }

    /// Replaces the organisation's key gauges (`keys`, `keys_by_age`) with what this inventory
    /// holds, so projects that vanished stop being reported. A project whose listing stopped
    /// short keeps its last series (a partial count would read as keys gone), and the
    /// organisation-wide `keys_by_age` is left as it was while any project is incomplete.
    pub fn observe_inventory(&self, org: &str, projects: &[ProjectInventory<KeyTally>]) {
        let stale: HashSet<&str> = (projects.iter())
            .filter(|p| !p.listing.is_complete())
            .map(|p| p.project.id.as_str())
            .collect();
        let projects: Vec<&ProjectInventory<KeyTally>> = (projects.iter())
            .filter(|p| !stale.contains(p.project.id.as_str()))
            .collect();
        let mut by_project: Series<KeyLabels> =
            Series::with_capacity_and_hasher(2 * projects.len(), Default::default());
        let mut by_age: HashMap<(OwnerType, AgeBand), u64> = HashMap::new();
        for p in &projects {
            for (&(owner, band), &n) in &p.keys.by_owner_age {
                let labels = KeyLabels {
                    organization: org.to_string(),
                    project: p.project.id.clone(),
                    owner_type: owner.as_str(),
                };
                *by_project.entry(labels).or_default() += n;
                *by_age.entry((owner, band)).or_default() += n;
            }
        }
        let kept = |l: &KeyLabels| stale.contains(l.project.as_str());
        replace_series(
            &self.inner.keys,
            &mut self.snapshots().keys,
            org,
            (by_project, &kept),
        );
        self.observe_expiry(org, &projects, &stale);
        if !stale.is_empty() {
            return;
        }
        // Every band of every owner type is written (zeros included) so a band that empties
        // reads 0 rather than its last value.
        for owner in [
            OwnerType::User,
            OwnerType::ServiceAccount,
            OwnerType::Unknown,
        ] {
            for band in AgeBand::ALL {
                let n = by_age.get(&(owner, band)).copied().unwrap_or(0);
                self.set_keys_by_age(org, owner, band, n);
            }
        }
    }

    /// Replaces the organisation's expiry gauges (`keys_by_expiry`, `keys_expiring_within_7d`).
    /// Every (project, owner type) that has keys gets all four states, zeros included, so a
    /// state that empties reads 0 rather than its last value; series of projects or owner types
    /// no longer seen are removed.
    fn observe_expiry(
        &self,
        org: &str,
        projects: &[&ProjectInventory<KeyTally>],
        stale: &HashSet<&str>,
    ) {
        let mut by_expiry: Series<ExpiryLabels> = Series::with_capacity_and_hasher(
            2 * ExpiryStatus::ALL.len() * projects.len(),
            Default::default(),
        );
        let mut soon: Series<KeyLabels> =
            Series::with_capacity_and_hasher(2 * projects.len(), Default::default());
        for p in projects {
            let owners: HashSet<OwnerType> =
                p.keys.by_owner_expiry.keys().map(|&(o, _)| o).collect();
            for owner in owners {
                for state in ExpiryStatus::ALL {
                    let n = p
                        .keys
                        .by_owner_expiry
                        .get(&(owner, state))
                        .copied()
                        .unwrap_or(0);
                    let labels = ExpiryLabels {
                        organization: org.to_string(),
                        project: p.project.id.clone(),
                        owner_type: owner.as_str(),
                        expiry: state.as_str(),
                    };
                    *by_expiry.entry(labels).or_default() += n;
                }
                let n = p.keys.expiring_soon.get(&owner).copied().unwrap_or(0);
                let labels = KeyLabels {
                    organization: org.to_string(),
                    project: p.project.id.clone(),
                    owner_type: owner.as_str(),
                };
                *soon.entry(labels).or_default() += n;
            }
        }
        let mut snaps = self.snapshots();
        let snaps = &mut *snaps;
        let kept = |l: &ExpiryLabels| stale.contains(l.project.as_str());
        replace_series(
            &self.inner.keys_by_expiry,
            &mut snaps.keys_by_expiry,
            org,
            (by_expiry, &kept),
        );
        let kept = |l: &KeyLabels| stale.contains(l.project.as_str());
        replace_series(
            &self.inner.keys_expiring_soon,
            &mut snaps.keys_expiring_soon,
            org,
            (soon, &kept),
        );
    }

    /// Number of open findings of one policy in one stage.
    pub fn set_findings(&self, org: &str, policy: &str, stage: Stage, n: u64) {
        let labels = FindingLabels {
            organization: org.to_string(),
            policy: policy.to_string(),
            stage: stage.as_str(),
        };
        self.inner.findings.get_or_create(&labels).set(gauge(n));
        if let Ok(mut snaps) = self.inner.snapshots.lock() {
            snaps
                .findings
                .entry(org.to_string())
                .or_default()
                .insert(labels);
        }
    }

    /// Replaces all finding gauges of an organisation with `counts` (policy, stage, n); series
    /// not in `counts` are removed.
    pub fn replace_findings(&self, org: &str, counts: &[(&str, Stage, u64)]) {
        let fresh: HashSet<FindingLabels> = counts
            .iter()
            .map(|(policy, stage, _)| FindingLabels {
                organization: org.to_string(),
                policy: policy.to_string(),
                stage: stage.as_str(),
            })
            .collect();
        if let Ok(mut snaps) = self.inner.snapshots.lock() {
            if let Some(old) = snaps.findings.remove(org) {
                for stale in old.difference(&fresh) {
                    self.inner.findings.remove(stale);
                }
            }
            snaps.findings.insert(org.to_string(), fresh);
        }
        for (policy, stage, n) in counts {
            self.inner
                .findings
                .get_or_create(&FindingLabels {
                    organization: org.to_string(),
                    policy: policy.to_string(),
                    stage: stage.as_str(),
                })
                .set(gauge(*n));
        }
    }

    /// One revocation attempt ended. `outcome` is a fixed word such as `deleted`, `failed`,
    /// `already_gone`, `refused` or `dry_run`.
    pub fn revocation(&self, org: &str, outcome: &'static str) {
        self.inner
            .revocations
            .get_or_create(&OrgOutcome {
                organization: org.to_string(),
                outcome,
            })
            .inc();
    }

    /// `n` due revocations were withheld by the rail `reason` (a fixed word from
    /// `policy::plan::Withheld::as_str`).
    pub fn revocations_withheld(&self, org: &str, reason: &'static str, n: u64) {
        self.inner
            .revocations_withheld
            .get_or_create(&OrgReason {
                organization: org.to_string(),
                reason,
            })
            .inc_by(n);
    }

    /// One notification delivery ended on channel `channel` (the configured channel name).
    pub fn notification(&self, channel: &str, outcome: NotificationOutcome) {
        self.inner
            .notifications
            .get_or_create(&ChannelOutcome {
                channel: channel.to_string(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Current outbox depth.
    pub fn set_outbox_depth(&self, pending: u64, dead: u64) {
        let family = &self.inner.outbox_depth;
        family
            .get_or_create(&OutboxLabels { state: "pending" })
            .set(gauge(pending));
        family
            .get_or_create(&OutboxLabels { state: "dead" })
            .set(gauge(dead));
    }

    /// One sweep finished: counts it by outcome and records its duration. The daemon calls this
    /// for every sweep it runs; the sweep itself must not, or sweeps are counted twice.
    pub fn observe_sweep(&self, org: &str, secs: f64, outcome: &'static str) {
        self.inner
            .sweep_duration
            .get_or_create(&org_labels(org))
            .observe(secs);
        self.inner
            .sweeps
            .get_or_create(&OrgOutcome {
                organization: org.to_string(),
                outcome,
            })
            .inc();
    }

    /// Unix time of the organisation's last successful sweep.
    pub fn set_last_successful_sweep(&self, org: &str, unix_secs: i64) {
        self.inner
            .last_success
            .get_or_create(&org_labels(org))
            .set(unix_secs);
    }

    /// `n` schedule slots of the organisation were skipped.
    pub fn schedule_skipped(&self, org: &str, n: u64) {
        self.inner.skipped.get_or_create(&org_labels(org)).inc_by(n);
    }

    /// Expiry (Unix seconds) of keysweep's own admin key of the organisation (the one
    /// `admin_key_id` names, or whose redacted suffix matches). `admin_key_id` is the key's id
    /// (`key_…`), never its value or name.
    ///
    /// It replaces the organisation's series: a key keysweep no longer runs with (rotated, and
    /// the configuration reloaded) stops being reported, or its old expiry would keep paging.
    pub fn set_admin_key_expiry(&self, org: &str, admin_key_id: &str, unix_secs: i64) {
        self.forget_admin_keys_but(org, Some(admin_key_id));
        (self
            .snapshots()
            .admin_keys
            .entry(org.to_string())
            .or_default())
        .insert(admin_key_id.to_string());
        self.inner
            .admin_key_expiry
            .get_or_create(&AdminKeyLabels {
                organization: org.to_string(),
                admin_key_id: admin_key_id.to_string(),
            })
            .set(unix_secs);
    }

    /// Drops the organisation's admin-key expiry series, but `keep`'s: keysweep's own key has
    /// no expiry (`None`), or it is another key than before.
    pub fn forget_admin_keys_but(&self, org: &str, keep: Option<&str>) {
        let mut snaps = self.snapshots();
        let Some(ids) = snaps.admin_keys.get_mut(org) else {
            return;
        };
        ids.retain(|id| {
            let stays = keep == Some(id.as_str());
            if !stays {
                self.inner.admin_key_expiry.remove(&AdminKeyLabels {
                    organization: org.to_string(),
                    admin_key_id: id.clone(),
                });
            }
            stays
        });
    }

    /// Drops every gauge of an organisation that left the configuration: its last successful
    /// sweep would otherwise freeze and keep the shipped "sweeps stale" alert firing until a
    /// restart, and its admin key's expiry and inventory would still be reported. Counters
    /// stay: they only ever count what happened.
    pub fn forget_organization(&self, org: &str) {
        let i = &self.inner;
        i.last_success.remove(&org_labels(org));
        for owner in [
            OwnerType::User,
            OwnerType::ServiceAccount,
            OwnerType::Unknown,
        ] {
            for band in AgeBand::ALL {
                i.keys_by_age.remove(&AgeLabels {
                    organization: org.to_string(),
                    owner_type: owner.as_str(),
                    age: band.as_str(),
                });
            }
        }
        let mut snaps = self.snapshots();
        for id in snaps.admin_keys.remove(org).unwrap_or_default() {
            i.admin_key_expiry.remove(&AdminKeyLabels {
                organization: org.to_string(),
                admin_key_id: id,
            });
        }
        for l in snaps.findings.remove(org).unwrap_or_default() {
            i.findings.remove(&l);
        }
        for l in snaps.keys.remove(org).unwrap_or_default().keys() {
            i.keys.remove(l);
        }
        for l in snaps
            .keys_expiring_soon
            .remove(org)
            .unwrap_or_default()
            .keys()
        {
            i.keys_expiring_soon.remove(l);
        }
        for l in snaps.keys_by_expiry.remove(org).unwrap_or_default().keys() {
            i.keys_by_expiry.remove(l);
        }
    }

    /// One project listing of the organisation ended incomplete.
    pub fn incomplete_listing(&self, org: &str) {
        self.inner
            .incomplete_listings
            .get_or_create(&org_labels(org))
            .inc();
    }

    /// `seq` of the audit log's head, published after each sweep.
    pub fn set_audit_head_seq(&self, seq: i64) {
        self.inner.audit_head_seq.set(seq);
    }

    /// The registry in OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be a bug in the encoder, and
        // a partial scrape is better than none.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The new series of an organisation, and which of its old ones keep their last value (a
/// project whose listing stopped short).
type Fresh<'k, L> = (Series<L>, &'k dyn Fn(&L) -> bool);

/// Sets `family` to `fresh` for `org` and removes the series `org` had last time (`last`) and
/// no longer has, but those `fresh` says to keep.
fn replace_series<L: Clone + Hash + Eq>(
    family: &Family<L, Gauge>,
    last: &mut HashMap<String, Series<L>>,
    org: &str,
    (mut fresh, kept): Fresh<'_, L>,
) {
    let old = last.remove(org).unwrap_or_default();
    for (l, &n) in old.iter().filter(|(l, _)| kept(l)) {
        fresh.entry(l.clone()).or_insert(n);
    }
    for stale in old.keys().filter(|l| !fresh.contains_key(*l)) {
        family.remove(stale);
    }
    // Only this function (and `set_keys`, which records what it sets) writes these families,
    // so a series whose value is the one set last still holds it.
    for (l, &n) in &fresh {
        if old.get(l) != Some(&n) {
            family.get_or_create(l).set(gauge(n));
        }
    }
    last.insert(org.to_string(), fresh);
}

/// Gauges hold i64; counts beyond that are not a real case, so saturate.
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Expiry, Key, Listing, Owner, OwnerAccess, ProjectRef};

    /// An organisation removed from the configuration leaves no gauge behind; another one's
    /// stay.
    #[test]
    fn a_forgotten_organisation_leaves_no_gauge() {
        let m = Metrics::new();
        for org in ["gone", "kept"] {
            m.set_last_successful_sweep(org, 1_700_000_000);
            m.set_admin_key_expiry(org, "key_admin", 1_800_000_000);
            m.replace_findings(org, &[("p", Stage::Warned, 3)]);
            m.set_keys_by_age(org, OwnerType::User, AgeBand::Over365d, 2);
        }
        m.forget_organization("gone");
        let text = m.encode();
        assert!(!text.contains("\"gone\""), "{text}");
        assert!(text.contains("organization=\"kept\""), "{text}");
    }

    /// After the admin key is rotated, only the new key's expiry is published: the old one's
    /// would keep the "admin key expiring" alert firing. A key without an expiry has none.
    #[test]
    fn the_admin_key_expiry_names_only_the_key_in_use() {
        let m = Metrics::new();
        let series = |m: &Metrics| -> Vec<String> {
            (m.encode().lines())
                .filter(|l| l.starts_with("keysweep_admin_key_expiry_timestamp_seconds{"))
                .map(str::to_string)
                .collect()
        };
        m.set_admin_key_expiry("acme", "key_old", 1_800_000_000);
        m.set_admin_key_expiry("globex", "key_other", 1_800_000_000);
        m.set_admin_key_expiry("acme", "key_new", 1_900_000_000);
        let now = series(&m);
        assert_eq!(now.len(), 2, "{now:?}");
        assert!(now.iter().any(|l| l.contains("key_new")), "{now:?}");
        assert!(!now.iter().any(|l| l.contains("key_old")), "{now:?}");
        m.forget_admin_keys_but("acme", None);
        let now = series(&m);
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(now[0].contains("key_other"), "{now:?}");
    }

    fn key(project: &str, owner: OwnerType, created_at: i64) -> Key {
        Key {
            organization: "acme".into(),
            project_id: project.into(),
            project_name: Some("Secret Project Name".into()),
            id: "key_abc".into(),
            name: "prod-deploy-key".into(),
            redacted_value: "sk-...abcd".into(),
            created_at,
            last_used_at: None,
            last_used_unknown: false,
            owner: Owner {
                kind: owner,
                id: None,
                name: None,
                email: Some("someone@example.com".into()),
            },
            owner_access: OwnerAccess::Active,
            expires_at: Expiry::Unknown,
        }
    }

    /// The tests' clock: `inv` tallies ages as of it.
    const NOW: i64 = 400 * 86_400;

    fn inv(project: &str, keys: Vec<Key>) -> ProjectInventory<KeyTally> {
        ProjectInventory {
            project: ProjectRef {
                organization: "acme".into(),
                id: project.into(),
                name: Some("Secret Project Name".into()),
                archived: false,
            },
            keys: KeyTally::of(&keys, NOW),
            listing: Listing::Complete,
        }
    }

    #[test]
    fn age_bands_have_the_documented_edges() {
        let d = 86_400;
        assert_eq!(AgeBand::of(0, 29 * d), AgeBand::Under30d);
        assert_eq!(AgeBand::of(0, 30 * d), AgeBand::From30To90d);
        assert_eq!(AgeBand::of(0, 90 * d), AgeBand::From90To180d);
        assert_eq!(AgeBand::of(0, 180 * d), AgeBand::From180To365d);
        assert_eq!(AgeBand::of(0, 365 * d), AgeBand::Over365d);
        assert_eq!(AgeBand::of(100 * d, 0), AgeBand::Under30d);
    }

    #[test]
    fn inventory_gauges_replace_vanished_projects_and_carry_no_key_names() {
        let m = Metrics::new();
        let now = NOW;
        m.observe_inventory(
            "acme",
            &[
                inv(
                    "proj_a",
                    vec![
                        key("proj_a", OwnerType::User, now - 10 * 86_400),
                        key("proj_a", OwnerType::User, now - 400 * 86_400),
                    ],
                ),
                inv(
                    "proj_b",
                    vec![key("proj_b", OwnerType::ServiceAccount, now)],
                ),
            ],
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"keysweep_keys{organization="acme",project="proj_a",owner_type="user"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"keysweep_keys_by_age{organization="acme",owner_type="user",age=">365d"} 1"#
        ));
        for secretish in ["prod-deploy-key", "sk-", "someone@", "Secret Project Name"] {
            assert!(!text.contains(secretish), "{secretish} leaked into {text}");
        }
        m.observe_inventory("acme", &[inv("proj_a", vec![])]);
        let text = m.encode();
        assert!(!text.contains("proj_b"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }

    /// Only the gauges whose value changed are written again, yet the registry always reads
    /// the latest inventory's counts: a changed value, a series that vanished, and one that came
    /// back with the value it had before it vanished.
    #[test]
    fn inventory_gauges_follow_every_change_across_sweeps() {
        let m = Metrics::new();
        let line = |org: &str, p: &str, n: u64| {
            format!(r#"keysweep_keys{{organization="{org}",project="{p}",owner_type="user"}} {n}"#)
        };
        let users =
            |p: &str, n: usize| inv(p, (0..n).map(|_| key(p, OwnerType::User, NOW)).collect());
        m.observe_inventory("acme", &[users("proj_a", 2), users("proj_b", 1)]);
        m.observe_inventory("acme", &[users("proj_a", 2), users("proj_b", 3)]);
        let text = m.encode();
        assert!(text.contains(&line("acme", "proj_a", 2)), "{text}");
        assert!(text.contains(&line("acme", "proj_b", 3)), "{text}");
        m.observe_inventory("acme", &[users("proj_a", 2)]);
        assert!(!m.encode().contains("proj_b"));
        m.observe_inventory("acme", &[users("proj_a", 2), users("proj_b", 3)]);
        assert!(m.encode().contains(&line("acme", "proj_b", 3)));
        m.observe_inventory("other", &[users("proj_b", 1)]);
        m.observe_inventory("acme", &[users("proj_a", 2), users("proj_b", 3)]);
        let text = m.encode();
        assert!(text.contains(&line("acme", "proj_b", 3)), "{text}");
        assert!(text.contains(&line("other", "proj_b", 1)), "{text}");
    }

    fn expiring(project: &str, owner: OwnerType, expires_at: Expiry) -> Key {
        Key {
            expires_at,
            ..key(project, owner, NOW - 10 * 86_400)
        }
    }

    #[test]
    fn expiry_gauges_count_every_state_and_the_next_7_days() {
        let m = Metrics::new();
        let d = 86_400;
        m.observe_inventory(
            "acme",
            &[
                inv(
                    "proj_a",
                    vec![
                        expiring("proj_a", OwnerType::User, Expiry::Never),
                        expiring("proj_a", OwnerType::User, Expiry::Never),
                        expiring("proj_a", OwnerType::User, Expiry::At(NOW + 7 * d)),
                        expiring("proj_a", OwnerType::User, Expiry::At(NOW + 7 * d + 1)),
                        expiring("proj_a", OwnerType::User, Expiry::At(NOW)),
                        expiring("proj_a", OwnerType::User, Expiry::Unknown),
                    ],
                ),
                inv(
                    "proj_b",
                    vec![expiring("proj_b", OwnerType::ServiceAccount, Expiry::Never)],
                ),
            ],
        );
        let text = m.encode();
        let series =
            |labels: &str| format!("keysweep_keys_by_expiry{{organization=\"acme\",{labels}}}");
        for (labels, n) in [
            (r#"project="proj_a",owner_type="user",expiry="none""#, 2),
            (r#"project="proj_a",owner_type="user",expiry="set""#, 2),
            // An expiry at this very second has taken effect.
            (r#"project="proj_a",owner_type="user",expiry="expired""#, 1),
            (r#"project="proj_a",owner_type="user",expiry="unknown""#, 1),
            (
                r#"project="proj_b",owner_type="service_account",expiry="none""#,
                1,
            ),
            // Every state of a (project, owner type) with keys, zeros included.
            (
                r#"project="proj_b",owner_type="service_account",expiry="set""#,
                0,
            ),
        ] {
            let want = format!("{} {n}\n", series(labels));
            assert!(text.contains(&want), "missing {want} in\n{text}");
        }
        let soon = r#"keysweep_keys_expiring_within_7d{organization="acme",project="proj_a",owner_type="user"} 1"#;
        assert!(text.contains(soon), "{text}");

        // A project that vanishes takes its series with it; a state that empties reads 0.
        m.observe_inventory(
            "acme",
            &[inv(
                "proj_a",
                vec![expiring("proj_a", OwnerType::User, Expiry::At(NOW + d))],
            )],
        );
        let text = m.encode();
        assert!(!text.contains("proj_b"), "{text}");
        assert!(text.contains(&format!(
            "{} 0\n",
            series(r#"project="proj_a",owner_type="user",expiry="none""#)
        )));
        assert!(text.contains(&format!(
            "{} 1\n",
            series(r#"project="proj_a",owner_type="user",expiry="set""#)
        )));
    }

    #[test]
    fn counters_and_histograms_render_with_prefix_and_suffixes() {
        let m = Metrics::new();
        m.api_request(
            "acme",
            "GET /organization/projects/{project_id}/api_keys",
            200,
        );
        m.observe_sweep("acme", 1.5, "success");
        m.schedule_skipped("acme", 2);
        m.notification("ops-mail", NotificationOutcome::Dead);
        m.set_outbox_depth(3, 1);
        m.replace_findings("acme", &[("max-age", Stage::Warned, 4)]);
        m.replace_findings("acme", &[("max-age", Stage::FinalNotice, 1)]);
        let text = m.encode();
        for want in [
            r#"keysweep_api_requests_total{organization="acme",endpoint="GET /organization/projects/{project_id}/api_keys",status="200"} 1"#,
            r#"keysweep_sweeps_total{organization="acme",outcome="success"} 1"#,
            r#"keysweep_sweep_duration_seconds_count{organization="acme"} 1"#,
            r#"keysweep_schedule_skipped_total{organization="acme"} 2"#,
            r#"keysweep_notifications_total{channel="ops-mail",outcome="dead"} 1"#,
            r#"keysweep_outbox_depth{state="pending"} 3"#,
            r#"keysweep_findings{organization="acme",policy="max-age",stage="final_notice"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains(r#"stage="warned""#), "{text}");
    }
}
