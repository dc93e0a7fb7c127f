//! The revocation plan of one sweep: which revoke-due keys may be deleted now, and for every
//! other one, the safety rail that withholds it.
//!
//! [`plan`] is pure: it gets the revoke-due findings the lifecycle produced, what the sweep knows
//! about each project (listing complete? how many keys? which keys belong to which service
//! account?), the mode, the `[safety]` caps, the rolling 24 h revocation count and the kill
//! switch state, and returns a [`Plan`]. It never deletes, never re-reads a key (the sweep re-GETs
//! and re-evaluates each planned key right before its DELETE) and never reads a clock.
//!
//! Gates, in the order that decides the reported reason:
//! 1. service-account rule: `notify-only` keys are never revoked; `delete-service-account`
//!    becomes one action for the whole service account, and only when **every** key of that
//!    service account in that project is revoke-due (its keys are listed as collateral);
//! 2. the project's listing must be complete (a project missing from the facts counts as
//!    incomplete);
//! 3. caps, in action order (earliest deadline first, then by id): per run, per project
//!    (`floor(pct × keys_in_project / 100)`, at least 1 when `pct > 0`), per rolling day. An
//!    action that would exceed a cap is withheld whole, and an action counts one revocation per
//!    key it destroys (a service account with 3 keys counts 3). Later, smaller actions may still
//!    fit: no cap is ever exceeded;
//! 4. the kill switch;
//! 5. dry-run.
//!
//! Dry-run and the kill switch come last so a rehearsal shows exactly what enforcement would do,
//! caps included.
//!
//! Conservative defaults for `[safety]` (used by the config loader, see [`default_safety`]):
//! `max_revocations_per_run = 10`, `max_revocations_per_project_percent = 25`,
//! `max_revocations_per_day = 50`, no kill-switch file, `service_accounts = "notify-only"`.
//! They bound the damage of a wrong policy to a handful of keys per run while still letting a
//! correct policy clean up a backlog within days.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Mode, Safety, ServiceAccountRule};
use crate::inventory::{Inventory, Key, KeyTally, OwnerType};
use crate::policy::finding::FindingId;

// The defaults are defined once, next to the config loader that applies them.
pub use crate::config::{
    DEFAULT_MAX_REVOCATIONS_PER_DAY, DEFAULT_MAX_REVOCATIONS_PER_PROJECT_PERCENT,
    DEFAULT_MAX_REVOCATIONS_PER_RUN,
};

/// The conservative `[safety]` defaults, in one place so the config loader, the docs and the
/// tests cannot disagree.
pub fn default_safety() -> Safety {
    Safety {
        max_revocations_per_run: DEFAULT_MAX_REVOCATIONS_PER_RUN,
        max_revocations_per_project_percent: DEFAULT_MAX_REVOCATIONS_PER_PROJECT_PERCENT,
        max_revocations_per_day: DEFAULT_MAX_REVOCATIONS_PER_DAY,
        kill_switch_file: None,
        service_accounts: ServiceAccountRule::NotifyOnly,
    }
}

/// `(organization, project_id)`: projects are only unique within an organisation.
pub type ProjectKey = (String, String);

/// What this sweep's listing says about one project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectFacts {
    /// Only a complete listing may lead to a deletion.
    pub complete: bool,
    /// Keys listed in the project, the base of the per-project percentage cap.
    pub key_count: usize,
    /// Service-account id → ids of all its keys in this project, to decide whether every key of
    /// the account is due before deleting the account.
    pub service_accounts: BTreeMap<String, BTreeSet<String>>,
}

/// Builds the per-project facts from an inventory. A project of an organisation whose listing
/// reported an error counts as incomplete: the sweep could not see the whole organisation, so it
/// does not act in it.
pub fn project_facts(inventory: &Inventory<KeyTally>) -> BTreeMap<ProjectKey, ProjectFacts> {
    let mut out = BTreeMap::new();
    for org in &inventory.orgs {
        for p in &org.projects {
            out.insert(
                (org.organization.clone(), p.project.id.clone()),
                ProjectFacts {
                    complete: org.error.is_none() && p.listing.is_complete(),
                    key_count: p.keys.keys,
                    service_accounts: p.keys.service_accounts.clone(),
                },
            );
        }
    }
    out
}

/// A revoke-due finding handed to the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The revoke-due finding; a key due under several policies appears once per finding.
    pub finding: FindingId,
    /// The key as listed in this sweep (the planner needs owner and project; the sweep re-reads
    /// it before deleting anyway).
    pub key: Key,
    /// The finding's fixed deadline: earlier deadlines are revoked first when a cap bites.
    pub deadline: i64,
}

/// Everything the planner looks at; a struct rather than seven positional arguments so a call
/// site says what each value is.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub candidates: &'a [Candidate],
    pub projects: &'a BTreeMap<ProjectKey, ProjectFacts>,
    pub mode: Mode,
    /// Caps and the service-account rule.
    pub safety: &'a Safety,
    /// Revocations already performed in the rolling 24 h before this sweep.
    pub revoked_last_24h: u32,
    /// True when the kill-switch file exists.
    pub kill_switch: bool,
}

/// What one planned action destroys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One project API key (the key endpoint refuses service-account keys, so this never has
    /// collateral).
    Key(Key),
    /// A whole service account of one project; every one of its keys goes with it.
    ServiceAccount {
        organization: String,
        project_id: String,
        service_account_id: String,
        name: Option<String>,
        /// All keys of the service account in the project, each of them revoke-due.
        collateral: Vec<Key>,
    },
}

/// One deletion the sweep may perform (or, when withheld, would have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAction {
    pub target: Target,
    /// Every revoke-due finding this action closes (a key may violate several policies).
    pub findings: Vec<FindingId>,
    /// The earliest deadline among those findings: the action's place in the queue.
    pub deadline: i64,
}

impl PlannedAction {
    /// The organisation the action acts in (audit records and per-project caps need it).
    pub fn organization(&self) -> &str {
        match &self.target {
            Target::Key(k) => &k.organization,
            Target::ServiceAccount { organization, .. } => organization,
        }
    }

    /// The project the action acts in; an action never spans projects.
    pub fn project_id(&self) -> &str {
        match &self.target {
            Target::Key(k) => &k.project_id,
            Target::ServiceAccount { project_id, .. } => project_id,
        }
    }

    /// The keys this action destroys.
    pub fn keys(&self) -> &[Key] {
        match &self.target {
            Target::Key(k) => std::slice::from_ref(k),
            Target::ServiceAccount { collateral, .. } => collateral,
        }
    }

    /// How many revocations the action counts for against the caps: one per destroyed key.
    pub fn revocations(&self) -> u32 {
        u32::try_from(self.keys().len()).unwrap_or(u32::MAX)
    }

    /// One line for plans and logs, e.g. `delete key key_1 ("ci") in proj_a`.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Key(k) => format!(
                "delete key {} ({:?}, {}) in {}",
                k.id, k.name, k.redacted_value, k.project_id
            ),
            Target::ServiceAccount {
                project_id,
                service_account_id,
                name,
                collateral,
                ..
            } => {
                let ids: Vec<&str> = collateral.iter().map(|k| k.id.as_str()).collect();
                format!(
                    "delete service account {service_account_id} ({}) in {project_id}, \
                     destroying keys {}",
                    name.as_deref().unwrap_or("unnamed"),
                    ids.join(", ")
                )
            }
        }
    }

    fn sort_key(&self) -> (i64, &str, &str, &str) {
        let id = match &self.target {
            Target::Key(k) => k.id.as_str(),
            Target::ServiceAccount {
                service_account_id, ..
            } => service_account_id.as_str(),
        };
        (self.deadline, self.organization(), self.project_id(), id)
    }
}

/// Why a revoke-due action is not performed in this sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Withheld {
    /// `mode = "dry-run"` (or `--dry-run`): would have been revoked.
    DryRun,
    /// The project's listing in this sweep was incomplete.
    IncompleteListing,
    /// The kill-switch file exists.
    KillSwitch,
    /// `max_revocations_per_run` reached.
    CapPerRun,
    /// `max_revocations_per_project_percent` reached for this project.
    CapPerProjectPercent,
    /// `max_revocations_per_day` (rolling 24 h) reached.
    CapPerDay,
    /// `service_accounts = "notify-only"`: service-account keys are reported, never revoked.
    ServiceAccountNotifyOnly,
    /// `delete-service-account`, but some key of the account is not revoke-due.
    ServiceAccountHasCompliantKeys,
    /// The key's owner is a service account whose id the API did not give, so it cannot be
    /// addressed.
    ServiceAccountUnknown,
}

impl Withheld {
    /// Stable snake_case name for JSON, metrics and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Withheld::DryRun => "dry_run",
            Withheld::IncompleteListing => "incomplete_listing",
            Withheld::KillSwitch => "kill_switch",
            Withheld::CapPerRun => "cap_per_run",
            Withheld::CapPerProjectPercent => "cap_per_project_percent",
            Withheld::CapPerDay => "cap_per_day",
            Withheld::ServiceAccountNotifyOnly => "service_account_notify_only",
            Withheld::ServiceAccountHasCompliantKeys => "service_account_has_compliant_keys",
            Withheld::ServiceAccountUnknown => "service_account_unknown",
        }
    }

    /// Caps hit raise an enforcer alert ("a sweep would exceed a cap").
    pub fn is_cap(self) -> bool {
        matches!(
            self,
            Withheld::CapPerRun | Withheld::CapPerProjectPercent | Withheld::CapPerDay
        )
    }
}

/// A planned action and the rail that stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithheldAction {
    pub action: PlannedAction,
    pub reason: Withheld,
}

/// The plan of one sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Deletions to perform now, in order (earliest deadline first).
    pub revoke: Vec<PlannedAction>,
    /// Everything revoke-due that is not performed, with the reason.
    pub withheld: Vec<WithheldAction>,
}

impl Plan {
    /// Revocations the plan performs (keys destroyed, collateral included).
    pub fn revocation_count(&self) -> u32 {
        self.revoke
            .iter()
            .fold(0u32, |n, a| n.saturating_add(a.revocations()))
    }

    /// Actions withheld by a cap: non-empty means an enforcer alert is due.
    pub fn cap_withheld(&self) -> impl Iterator<Item = &WithheldAction> {
        self.withheld.iter().filter(|w| w.reason.is_cap())
    }
}

/// Decides which revoke-due candidates are revoked in this sweep and why the others are not.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    let actions = group(input, &mut out.withheld);

    let safety = input.safety;
    let run_cap = u64::from(safety.max_revocations_per_run);
    let day_left =
        u64::from(safety.max_revocations_per_day).saturating_sub(u64::from(input.revoked_last_24h));
    let pct = u64::from(safety.max_revocations_per_project_percent);
    let mut run_used = 0u64;
    let mut per_project: BTreeMap<ProjectKey, u64> = BTreeMap::new();

    for action in actions {
        let project = (
            action.organization().to_string(),
            action.project_id().to_string(),
        );
        let Some(facts) = input.projects.get(&project).filter(|f| f.complete) else {
            out.withheld.push(WithheldAction {
                action,
                reason: Withheld::IncompleteListing,
            });
            continue;
        };
        let n = u64::from(action.revocations());
        let project_cap = project_cap(pct, facts.key_count);
        let project_used = per_project.get(&project).copied().unwrap_or(0);
        let blocked = if run_used + n > run_cap {
            Some(Withheld::CapPerRun)
        } else if project_used + n > project_cap {
            Some(Withheld::CapPerProjectPercent)
        } else if run_used + n > day_left {
            // Every revocation of this run also counts for the rolling day.
            Some(Withheld::CapPerDay)
        } else {
            None
        };
        if let Some(reason) = blocked {
            out.withheld.push(WithheldAction { action, reason });
            continue;
        }
        run_used += n;
        per_project.insert(project, project_used + n);
        if input.kill_switch {
            out.withheld.push(WithheldAction {
                action,
                reason: Withheld::KillSwitch,
            });
        } else if input.mode == Mode::DryRun {
            out.withheld.push(WithheldAction {
                action,
                reason: Withheld::DryRun,
            });
        } else {
            out.revoke.push(action);
        }
    }
    out
}

/// `floor(pct × keys / 100)`, but at least one when `pct > 0` so small projects are not immune.
pub fn project_cap(pct: u64, key_count: usize) -> u64 {
    if pct == 0 {
        return 0;
    }
    let keys = u64::try_from(key_count).unwrap_or(u64::MAX);
    (pct.saturating_mul(keys) / 100).max(1)
}

/// Turns candidates into ordered actions: one per key (however many policies it violates), or
/// one per service account under `delete-service-account`. Structurally impossible actions
/// (service-account rules) go straight to `withheld`.
fn group(input: &PlanInput<'_>, withheld: &mut Vec<WithheldAction>) -> Vec<PlannedAction> {
    let mut actions = Vec::new();
    // (org, project, service account id) → the due per-key actions of that account.
    let mut per_sa: BTreeMap<(String, String, String), Vec<PlannedAction>> = BTreeMap::new();
    for mut action in per_key_actions(input.candidates) {
        action.findings.sort();
        let Target::Key(key) = &action.target else {
            continue;
        };
        if key.owner.kind != OwnerType::ServiceAccount {
            // User keys and keys of unknown owner type go through the key endpoint, which
            // refuses service-account keys: at worst a harmless 400, never collateral.
            actions.push(action);
            continue;
        }
        let reason = match (input.safety.service_accounts, &key.owner.id) {
            (ServiceAccountRule::NotifyOnly, _) => Withheld::ServiceAccountNotifyOnly,
            (ServiceAccountRule::DeleteServiceAccount, None) => Withheld::ServiceAccountUnknown,
            (ServiceAccountRule::DeleteServiceAccount, Some(sa)) => {
                per_sa
                    .entry((key.organization.clone(), key.project_id.clone(), sa.clone()))
                    .or_default()
                    .push(action);
                continue;
            }
        };
        withheld.push(WithheldAction { action, reason });
    }

    for ((organization, project_id, sa), due) in per_sa {
        match service_account_verdict(input, &organization, &project_id, &sa, &due) {
            Err(reason) => withheld.extend(
                due.into_iter()
                    .map(|action| WithheldAction { action, reason }),
            ),
            Ok(()) => actions.push(service_account_action(organization, project_id, sa, due)),
        }
    }

    actions.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    actions
}

/// One action per key, however many policies it violates, with the earliest deadline.
fn per_key_actions(candidates: &[Candidate]) -> Vec<PlannedAction> {
    // (org, project, key id) → action for that key.
    let mut per_key: BTreeMap<(&str, &str, &str), PlannedAction> = BTreeMap::new();
    for c in candidates {
        let k = &c.key;
        let entry = per_key
            .entry((&k.organization, &k.project_id, &k.id))
            .or_insert_with(|| PlannedAction {
                target: Target::Key(k.clone()),
                findings: Vec::new(),
                deadline: c.deadline,
            });
        entry.deadline = entry.deadline.min(c.deadline);
        if !entry.findings.contains(&c.finding) {
            entry.findings.push(c.finding.clone());
        }
    }
    per_key.into_values().collect()
}

/// A service account may be deleted only when its project's listing is complete and every one
/// of its keys is due.
fn service_account_verdict(
    input: &PlanInput<'_>,
    organization: &str,
    project_id: &str,
    sa: &str,
    due: &[PlannedAction],
) -> Result<(), Withheld> {
    let facts = input
        .projects
        .get(&(organization.to_string(), project_id.to_string()));
    let due_ids: BTreeSet<&str> = due
        .iter()
        .flat_map(|a| a.keys().iter().map(|k| k.id.as_str()))
        .collect();
    let all_ids = facts.and_then(|f| f.service_accounts.get(sa));
    match (facts, all_ids) {
        (Some(f), _) if !f.complete => Err(Withheld::IncompleteListing),
        // The listing does not know this account: we cannot see its other keys.
        (_, None) => Err(Withheld::IncompleteListing),
        (_, Some(all)) if all.iter().any(|id| !due_ids.contains(id.as_str())) => {
            Err(Withheld::ServiceAccountHasCompliantKeys)
        }
        (_, Some(_)) => Ok(()),
    }
}

/// The one action that deletes a service account, its due keys as the collateral.
fn service_account_action(
    organization: String,
    project_id: String,
    sa: String,
    due: Vec<PlannedAction>,
) -> PlannedAction {
    let deadline = due.iter().map(|a| a.deadline).min().unwrap_or(i64::MAX);
    let mut findings: Vec<FindingId> = due
        .iter()
        .flat_map(|a| a.findings.iter().cloned())
        .collect();
    findings.sort();
    let collateral: Vec<Key> = due
        .into_iter()
        .flat_map(|a| match a.target {
            Target::Key(k) => vec![k],
            Target::ServiceAccount { collateral, .. } => collateral,
        })
        .collect();
    let name = collateral.first().and_then(|k| k.owner.name.clone());
    PlannedAction {
        target: Target::ServiceAccount {
            organization,
            project_id,
            service_account_id: sa,
            name,
            collateral,
        },
        findings,
        deadline,
    }
}
