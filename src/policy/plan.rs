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
//! 1. service-account rule: service-account keys are acted on one by one like user keys, and
//!    only under `service_account_keys = "enforce"` (under `notify-only` they are withheld);
//! 2. the project's listing must be complete (a project missing from the facts counts as
//!    incomplete);
//! 3. caps, in action order (earliest deadline first, then by id): per run, per project
//!    (`floor(pct × keys_in_project / 100)`, at least 1 when `pct > 0`), per rolling day. An
//!    action that would exceed a cap is withheld whole, and an action counts one revocation per
//!    key it writes to: a DELETE and the setting of an expiry count alike. Later, smaller actions
//!    may still fit: no cap is ever exceeded;
//! 4. the kill switch;
//! 5. dry-run.
//!
//! Dry-run and the kill switch come last so a rehearsal shows exactly what enforcement would do,
//! caps included.
//!
//! Conservative defaults for `[safety]` (used by the config loader, see [`default_safety`]):
//! `max_revocations_per_run = 10`, `max_revocations_per_project_percent = 25`,
//! `max_revocations_per_day = 50`, no kill-switch file, `service_account_keys = "notify-only"`,
//! `restore_expiry = 365d`.
//!
//! Moving an expiry back out (a withdrawn `expire` finding) is not planned here: it undoes a
//! write, so no cap and no kill switch may stand in its way.
//! They bound the damage of a wrong policy to a handful of keys per run while still letting a
//! correct policy clean up a backlog within days.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Action;
use crate::config::{Mode, Safety, ServiceAccountKeys};
use crate::inventory::{Inventory, Key, KeyTally, OwnerType};
use crate::policy::finding::{Finding, FindingId};
pub use crate::policy::verdict::Withheld;
use crate::policy::verdict::{NotifyOnlyBy, Rules, Verdict};

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
        service_account_keys: ServiceAccountKeys::NotifyOnly,
        restore_expiry: std::time::Duration::from_secs(365 * 86400),
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
    /// What the finding asks to be written to the key.
    pub write: Write,
}

/// The write a due finding asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `action = "revoke"` at its deadline: DELETE the key.
    Delete,
    /// `action = "expire"`: set the key's expiry to `to` (Unix seconds; the finding's deadline,
    /// never earlier), because it expires later or never.
    SetExpiry { to: i64 },
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

/// What one planned action writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One project API key, user or service account: the API deletes and updates service-account
    /// keys one by one, so an action never has collateral.
    Key(Key),
}

/// One deletion the sweep may perform (or, when withheld, would have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAction {
    pub target: Target,
    /// DELETE, or set the expiry.
    pub write: Write,
    /// Every revoke-due finding this action closes (a key may violate several policies).
    pub findings: Vec<FindingId>,
    /// The earliest deadline among those findings: the action's place in the queue.
    pub deadline: i64,
}

impl PlannedAction {
    /// The organisation the action acts in (audit records and per-project caps need it).
    pub fn organization(&self) -> &str {
        let Target::Key(k) = &self.target;
        &k.organization
    }

    /// The project the action acts in; an action never spans projects.
    pub fn project_id(&self) -> &str {
        let Target::Key(k) = &self.target;
        &k.project_id
    }

    /// The keys this action writes to (always one).
    pub fn keys(&self) -> &[Key] {
        let Target::Key(k) = &self.target;
        std::slice::from_ref(k)
    }

    /// The key this action writes to.
    pub fn key(&self) -> &Key {
        let Target::Key(k) = &self.target;
        k
    }

    /// How many revocations the action counts for against the caps: one per destroyed key.
    pub fn revocations(&self) -> u32 {
        u32::try_from(self.keys().len()).unwrap_or(u32::MAX)
    }

    /// One line for plans and logs, e.g. `delete key key_1 ("ci") in proj_a`.
    pub fn describe(&self) -> String {
        let k = self.key();
        match self.write {
            // The redacted value is the API's text too: neutralised like the name.
            Write::Delete => format!(
                "delete key {} ({:?}, {}) in {}",
                k.id,
                crate::text::terminal(&k.name),
                crate::text::terminal(&k.redacted_value),
                k.project_id
            ),
            // `{:?}` alone escapes control characters, not invisible ones (a Hangul filler
            // makes two keys' names look alike): the name is neutralised first.
            Write::SetExpiry { to } => format!(
                "set the expiry of key {} ({:?}, {}) in {} to {}",
                k.id,
                crate::text::terminal(&k.name),
                crate::text::terminal(&k.redacted_value),
                k.project_id,
                crate::timefmt::rfc3339(to)
            ),
        }
    }

    fn sort_key(&self) -> (i64, &str, &str, &str) {
        (
            self.deadline,
            self.organization(),
            self.project_id(),
            self.key().id.as_str(),
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
    /// The rules the plan was made under, for each finding's [`verdict`] (`None` only for a
    /// plan built by hand).
    pub rules: Option<Rules>,
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

/// What keysweep will do to `f`'s key. `this_sweep` is the reason this sweep's plan withheld
/// the key's due write (`None`: not due, or planned to be written now).
///
/// In this order: the policy's action `notify`, an expiry the organisation refused and the
/// service-account rule make a key notify-only (keysweep never writes to it); a key whose own
/// expiry comes first ends then without a write; a cap or an
/// incomplete listing that withheld it in this sweep, or the kill switch, postpone the write;
/// dry-run turns the write into "would"; otherwise keysweep revokes or expires it.
pub fn verdict(f: &Finding, rules: &Rules, this_sweep: Option<Withheld>) -> Verdict {
    if f.action == Action::Notify {
        return Verdict::NotifyOnly {
            by: NotifyOnlyBy::PolicyAction,
        };
    }
    if f.action == Action::Expire && f.expiry.refused.is_some() {
        return Verdict::NotifyOnly {
            by: NotifyOnlyBy::ExpiryRefused,
        };
    }
    if f.owner_type == OwnerType::ServiceAccount
        && rules.service_account_keys != ServiceAccountKeys::Enforce
    {
        return Verdict::NotifyOnly {
            by: NotifyOnlyBy::ServiceAccountKeys,
        };
    }
    let own_expiry_first = f
        .expires_at
        .at()
        .is_some_and(|at| at <= f.deadline && f.expiry.set.is_none());
    if own_expiry_first {
        return Verdict::Ends;
    }
    match this_sweep {
        Some(by @ (Withheld::CapPerRun | Withheld::CapPerProjectPercent | Withheld::CapPerDay)) => {
            return Verdict::Postponed { by };
        }
        Some(Withheld::IncompleteListing) => {
            return Verdict::Postponed {
                by: Withheld::IncompleteListing,
            };
        }
        _ => {}
    }
    if rules.kill_switch || this_sweep == Some(Withheld::KillSwitch) {
        return Verdict::Postponed {
            by: Withheld::KillSwitch,
        };
    }
    match (rules.mode, f.action) {
        (Mode::DryRun, Action::Expire) => Verdict::WouldExpire,
        (Mode::DryRun, _) => Verdict::WouldRevoke,
        (Mode::Enforce, Action::Expire) => Verdict::Expire,
        (Mode::Enforce, _) => Verdict::Revoke,
    }
}

/// [`verdict`] for a finding whose policy is a `rotate` policy (`overlap`: its overlap, in
/// seconds; `None` for any other policy). `action = "rotate"` reads as `expire` plus a rotation,
/// so on a service-account key the expiry verdicts become rotation verdicts, and the
/// service-account rule (`notify-only`) announces the rotation instead of only reporting.
pub fn verdict_rotating(
    f: &Finding,
    rules: &Rules,
    this_sweep: Option<Withheld>,
    overlap: Option<i64>,
) -> Verdict {
    let v = verdict(f, rules, this_sweep);
    let Some(overlap) = overlap else { return v };
    if f.owner_type != OwnerType::ServiceAccount || f.action != Action::Expire {
        return v;
    }
    as_rotation(v, overlap)
}

/// An expiry verdict of a service-account key read as the rotation that replaces it: the key
/// also falls under a `rotate` policy, which gives it no expiry of its own until the sink has
/// the new key (`policy::rotation::without_rotated_expiries`). Any other verdict is unchanged.
fn as_rotation(v: Verdict, overlap: i64) -> Verdict {
    match v {
        Verdict::Expire => Verdict::Rotate { overlap },
        Verdict::WouldExpire => Verdict::WouldRotate {
            overlap,
            by: Withheld::DryRun,
        },
        Verdict::NotifyOnly {
            by: NotifyOnlyBy::ServiceAccountKeys,
        } => Verdict::WouldRotate {
            overlap,
            by: Withheld::ServiceAccountNotifyOnly,
        },
        other => other,
    }
}

/// Decides which revoke-due candidates are revoked in this sweep and why the others are not.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan {
        rules: Some(Rules {
            mode: input.mode,
            service_account_keys: input.safety.service_account_keys,
            kill_switch: input.kill_switch,
        }),
        ..Plan::default()
    };
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

/// Turns candidates into ordered actions, one per key (however many policies it violates).
/// Service-account keys under `notify-only` go straight to `withheld`.
fn group(input: &PlanInput<'_>, withheld: &mut Vec<WithheldAction>) -> Vec<PlannedAction> {
    let mut actions = Vec::new();
    for mut action in per_key_actions(input.candidates) {
        action.findings.sort();
        let enforce_sa = input.safety.service_account_keys == ServiceAccountKeys::Enforce;
        if action.key().owner.kind == OwnerType::ServiceAccount && !enforce_sa {
            withheld.push(WithheldAction {
                action,
                reason: Withheld::ServiceAccountNotifyOnly,
            });
            continue;
        }
        actions.push(action);
    }
    actions.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    actions
}

/// One action per key, however many policies it violates, with the earliest deadline. A DELETE
/// due for the key supersedes setting its expiry; of several expiries, the earliest is set
/// (each is some finding's deadline, so none is earlier than a promise made).
fn per_key_actions(candidates: &[Candidate]) -> Vec<PlannedAction> {
    // (org, project, key id) → action for that key.
    let mut per_key: BTreeMap<(&str, &str, &str), PlannedAction> = BTreeMap::new();
    for c in candidates {
        let k = &c.key;
        let entry = per_key
            .entry((&k.organization, &k.project_id, &k.id))
            .or_insert_with(|| PlannedAction {
                target: Target::Key(k.clone()),
                write: c.write,
                findings: Vec::new(),
                deadline: c.deadline,
            });
        entry.deadline = entry.deadline.min(c.deadline);
        entry.write = match (entry.write, c.write) {
            (Write::Delete, _) | (_, Write::Delete) => Write::Delete,
            (Write::SetExpiry { to: a }, Write::SetExpiry { to: b }) => {
                Write::SetExpiry { to: a.min(b) }
            }
        };
        if !entry.findings.contains(&c.finding) {
            entry.findings.push(c.finding.clone());
        }
    }
    per_key.into_values().collect()
}
