//! The `rotate` action, pure: which service-account keys are due for rotation in this sweep,
//! when each rotation is planned, and the names keysweep gives the keys it mints.
//!
//! A key under a `rotate` policy is rotated at `deadline − overlap`, where the deadline is the
//! earliest of all its open enforcing findings (the earliest promised deadline wins), or in the
//! first sweep after that — never in the sweep that sends the first warning. Nothing here does
//! I/O or reads a clock; the rotation itself is `rotate/`'s.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use crate::config::{RotateConfig, Safety};
use crate::inventory::{Expiry, OwnerType};
use crate::policy::finding::{Finding, FindingId};
use crate::policy::plan::{
    Candidate, Plan, PlannedAction, ProjectFacts, ProjectKey, Target, Withheld, WithheldAction,
    Write, project_cap,
};

/// A service-account key whose rotation is planned (and, when `due`, due in this sweep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRotation {
    /// The rotate policy's finding on the key (if several: the one whose rotation starts first,
    /// then the first by policy name).
    pub finding: FindingId,
    /// The earliest deadline among the key's open enforcing findings.
    pub deadline: i64,
    /// `deadline − overlap`: when keysweep mints the new key.
    pub start_at: i64,
    /// True when the rotation is due in this sweep.
    pub due: bool,
    /// The project's name as listed (the key's GET does not carry it; selectors may need it).
    pub project_name: Option<String>,
    /// The key's name and last use as this sweep listed them: the re-check before the mint
    /// leaves a key renamed since (someone is acting on it), or used since under a policy
    /// about use, for the next sweep, as the re-check before a DELETE does.
    pub key_name: String,
    pub last_used_at: Option<i64>,
    /// The key's expiry as this sweep listed it: after a finished rotation, the expiry that
    /// rotation promised is kept (set back when it was moved later).
    pub expires_at: Expiry,
    /// The policies of the key's open enforcing findings, whose earliest deadline the rotation
    /// keeps: a use since the listing stops the mint when any of them is about use.
    pub policies: Vec<String>,
    /// The old key's scopes as the audit log tells them (`Some([])`: All permissions; `None`:
    /// unknown). `planned_rotations` leaves it `None`; the sweep fills it in from the log.
    pub logged_scopes: Option<Vec<String>>,
}

/// Where the new key's scopes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopesFrom {
    /// The old key's scopes, as the audit log tells them.
    AuditLog,
    /// The policy's `scopes`.
    Policy,
}

impl ScopesFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopesFrom::AuditLog => "audit_log",
            ScopesFrom::Policy => "policy",
        }
    }
}

/// Why no scopes can be given to the new key: keysweep never mints All permissions unless the
/// policy says `scopes = []`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoScopes {
    /// The log does not know the old key's scopes and the policy configures none.
    Unknown,
    /// The log says the old key has All permissions and the policy configures no scopes.
    LoggedAll,
}

/// The new key's scopes: the old key's when the audit log knows them, else the policy's.
///
/// - the log knows specific scopes: those (the new key can do what the old one could);
/// - the log says All permissions (`[]`): only a policy with `scopes = []` mints All; a policy
///   with scopes gives those; a policy without `scopes` does not rotate (`LoggedAll`);
/// - the log does not know: the policy's `scopes`, or no rotation (`Unknown`).
pub fn new_key_scopes(
    logged: Option<&[String]>,
    configured: Option<&[String]>,
) -> Result<(Vec<String>, ScopesFrom), NoScopes> {
    match (logged, configured) {
        (Some(l), _) if !l.is_empty() => Ok((l.to_vec(), ScopesFrom::AuditLog)),
        (_, Some(c)) => Ok((c.to_vec(), ScopesFrom::Policy)),
        (Some(_), None) => Err(NoScopes::LoggedAll),
        (None, None) => Err(NoScopes::Unknown),
    }
}

/// The rotations of service-account keys under a `rotate` policy, one per key.
pub fn planned_rotations(
    findings: &[&Finding],
    rotations: &[RotateConfig],
    now: i64,
) -> Vec<PlannedRotation> {
    // No `rotate` policy, no rotation: the deadlines below are for rotated keys only, and a
    // sweep asks for them every time (its report), with every open finding.
    if rotations.is_empty() {
        return Vec::new();
    }
    let rotate_of = |f: &Finding| rotations.iter().find(|r| r.policy == f.id.policy);
    // Earliest open enforcing deadline per key.
    let mut deadline: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    let mut enforcing: BTreeMap<(&str, &str, &str), Vec<String>> = BTreeMap::new();
    for f in findings
        .iter()
        .filter(|f| f.stage.is_open() && f.action.enforces())
    {
        let k = f.id.key_ref();
        let d = deadline.entry(k).or_insert(f.deadline);
        *d = (*d).min(f.deadline);
        enforcing.entry(k).or_default().push(f.id.policy.clone());
    }
    let mut out: BTreeMap<(&str, &str, &str), PlannedRotation> = BTreeMap::new();
    for f in findings {
        let Some(r) = rotate_of(f) else { continue };
        if !f.stage.is_open() || f.owner_type != OwnerType::ServiceAccount {
            continue;
        }
        let k = f.id.key_ref();
        let d = deadline.get(&k).copied().unwrap_or(f.deadline);
        let overlap = i64::try_from(r.overlap.as_secs()).unwrap_or(i64::MAX);
        let start_at = d.saturating_sub(overlap);
        // Never in the sweep that sends the first warning: the warning comes first.
        let warned_before = f.warned_at.is_some_and(|w| w < now);
        let planned = PlannedRotation {
            finding: f.id.clone(),
            deadline: d,
            start_at,
            due: warned_before && now >= start_at,
            project_name: f.project_name.clone(),
            key_name: f.key_name.clone(),
            last_used_at: f.last_used_at,
            expires_at: f.expires_at,
            policies: enforcing.get(&k).cloned().unwrap_or_default(),
            logged_scopes: None,
        };
        // A key under two `rotate` policies rotates once: by the one that starts it first (the
        // larger overlap), then by policy name. Never by the findings' order, which follows
        // the listing's and changes from sweep to sweep: the plan's finding carries the
        // rotation's `skipped` mark, and a mark that moved would be recorded again.
        match out.entry(k) {
            Entry::Vacant(e) => {
                e.insert(planned);
            }
            Entry::Occupied(mut e) => {
                let kept = e.get();
                if (planned.start_at, &planned.finding.policy)
                    < (kept.start_at, &kept.finding.policy)
                {
                    e.insert(planned);
                }
            }
        }
    }
    out.into_values().collect()
}

/// The candidates without the expiries of service-account keys under a `rotate` policy whose
/// replacement does not exist yet (`rotating`: the sweep's `Advanced::rotating_keys`, the keys
/// with an open finding of a `rotate` policy less those whose rotation handed a new key over):
/// such a key gets its expiry from the rotation only, once the sink confirmed, and no earlier
/// one from another policy's `expire` (the earliest deadline starts the rotation instead),
/// whether or not the rotate finding has a write of its own to ask for (the key's own expiry
/// may come first, or the organisation may have refused the expiry). A DELETE stays. Once the
/// sink holds the new key, another policy's expiry may end the old key as it would any other;
/// a `rotate` policy's own finding on a service-account key never writes an expiry through
/// this path, whatever became of its rotation.
pub fn without_rotated_expiries<S: std::hash::BuildHasher>(
    candidates: &[Candidate],
    rotating: &std::collections::HashMap<(String, String, String), i64, S>,
    rotations: &[RotateConfig],
) -> Vec<Candidate> {
    // Borrowed once, so a candidate is looked up without copying its ids.
    let rotating: std::collections::HashSet<(&str, &str, &str)> = (rotating.keys())
        .map(|(o, p, k)| (o.as_str(), p.as_str(), k.as_str()))
        .collect();
    candidates
        .iter()
        .filter(|c| {
            if c.write == Write::Delete {
                return true;
            }
            let own = c.key.owner.kind == OwnerType::ServiceAccount
                && rotations.iter().any(|r| r.policy == c.finding.policy);
            let key = (&*c.key.organization, &*c.key.project_id, &*c.key.id);
            !own && !rotating.contains(&key)
        })
        .cloned()
        .collect()
}

/// The rails of the plan that also hold a due rotation back: an incomplete listing of its
/// project, and the caps. A rotation counts as one revocation (it ends the old key) against the
/// per-run, per-project-percentage and rolling-day caps, after the plan's own writes, earliest
/// deadline first — as every write the plan lets through the caps counts, whether or not the
/// kill switch or dry-run then holds it. `due`: the due rotations keysweep would start (not
/// those already done or unfinished), each with its finding. Returns the withheld ones, to be
/// added to the plan's `withheld` (so the notices say "postponed", `scan` says which cap, and
/// the cap alert counts them); the rotation phase starts none of them.
pub fn withheld_rotations(
    due: &[(&PlannedRotation, &Finding)],
    plan: &Plan,
    projects: &BTreeMap<ProjectKey, ProjectFacts>,
    safety: &Safety,
    revoked_last_24h: u32,
) -> Vec<WithheldAction> {
    let passed_caps = plan.revoke.iter().chain(
        (plan.withheld.iter())
            .filter(|w| matches!(w.reason, Withheld::DryRun | Withheld::KillSwitch))
            .map(|w| &w.action),
    );
    let mut run_used = 0u64;
    let mut per_project: BTreeMap<ProjectKey, u64> = BTreeMap::new();
    for a in passed_caps {
        let n = u64::from(a.revocations());
        run_used += n;
        *per_project
            .entry((a.organization().to_string(), a.project_id().to_string()))
            .or_default() += n;
    }
    let run_cap = u64::from(safety.max_revocations_per_run);
    let day_left =
        u64::from(safety.max_revocations_per_day).saturating_sub(u64::from(revoked_last_24h));
    let pct = u64::from(safety.max_revocations_per_project_percent);
    let mut sorted: Vec<&(&PlannedRotation, &Finding)> = due.iter().collect();
    sorted.sort_by_key(|(p, _)| (p.deadline, p.finding.clone()));
    let mut out = Vec::new();
    for (p, f) in sorted {
        let project = (p.finding.organization.clone(), p.finding.project_id.clone());
        let used = per_project.get(&project).copied().unwrap_or(0);
        let reason = match projects.get(&project).filter(|f| f.complete) {
            None => Some(Withheld::IncompleteListing),
            Some(_) if run_used + 1 > run_cap => Some(Withheld::CapPerRun),
            Some(facts) if used + 1 > project_cap(pct, facts.key_count) => {
                Some(Withheld::CapPerProjectPercent)
            }
            Some(_) if run_used + 1 > day_left => Some(Withheld::CapPerDay),
            Some(_) => None,
        };
        match reason {
            Some(reason) => out.push(WithheldAction {
                action: rotation_action(p, f),
                reason,
            }),
            None => {
                run_used += 1;
                per_project.insert(project, used + 1);
            }
        }
    }
    out
}

/// A due rotation as a plan action: the old key (as its finding describes it) gets its expiry
/// at the deadline the rotation keeps.
fn rotation_action(p: &PlannedRotation, f: &Finding) -> PlannedAction {
    let key = f.snapshot_key();
    PlannedAction {
        target: Target::Key(key),
        write: Write::SetExpiry { to: p.deadline },
        findings: vec![p.finding.clone()],
        deadline: p.deadline,
    }
}

/// The longest part of the old key's name kept in the new one.
const NAME_PREFIX_CHARS: usize = 40;

/// The new key's name: the old one (cut to 40 characters) plus `-ks-` and the nonce, e.g.
/// `ci-bot-ks-3fa94c1e`. The nonce is what finds the key again after a crash.
pub fn new_key_name(old: &str, nonce: &str) -> String {
    let base: String = old.trim().chars().take(NAME_PREFIX_CHARS).collect();
    let base = base.trim_end_matches(|c: char| c == '-' || c.is_whitespace());
    if base.is_empty() {
        format!("ks-{nonce}")
    } else {
        format!("{base}-ks-{nonce}")
    }
}

/// Whether `name` is the name keysweep gave a key minted with `nonce`.
pub fn minted_with(name: &str, nonce: &str) -> bool {
    !nonce.is_empty() && (name.ends_with(&format!("-ks-{nonce}")) || name == format!("ks-{nonce}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const DAY: i64 = 86_400;

    fn finding(key: &str, policy: &str, owner_type: &str, deadline: i64, warned: i64) -> Finding {
        serde_json::from_value(serde_json::json!({
            "id": { "organization": "o", "project_id": "p", "key_id": key, "policy": policy },
            "key_name": "k", "redacted_value": "sk-...abcd", "owner_type": owner_type,
            "owner": "bot", "created_at": 0, "action": "expire", "reason": "old",
            "stage": "warned", "detected_at": warned, "deadline": deadline, "warned_at": warned,
        }))
        .unwrap()
    }

    fn rotate(policy: &str) -> RotateConfig {
        RotateConfig {
            policy: policy.into(),
            sink: "s".into(),
            overlap: Duration::from_secs(86_400),
            scopes: Some(vec![]),
        }
    }

    #[test]
    fn due_at_deadline_minus_overlap_never_in_the_first_warning_and_the_earliest_deadline_wins() {
        let rot = [rotate("rot")];
        let t0 = 100 * DAY;
        let sa = finding("k1", "rot", "service_account", t0 + 7 * DAY, t0);
        let other = finding("k1", "exp", "service_account", t0 + 3 * DAY, t0);
        let user = finding("k2", "rot", "user", t0 + 7 * DAY, t0);
        let all = [&sa, &other, &user];
        // The sweep that first warns: planned, not due, even past the start.
        let p = planned_rotations(
            &[&finding("k1", "rot", "service_account", t0, t0)],
            &rot,
            t0,
        );
        assert!(!p[0].due);
        let p = planned_rotations(&all, &rot, t0 + DAY);
        assert_eq!(p.len(), 1, "user keys are not rotated: {p:?}");
        assert_eq!((p[0].deadline, p[0].start_at), (t0 + 3 * DAY, t0 + 2 * DAY));
        assert!(!p[0].due);
        assert!(planned_rotations(&all, &rot, t0 + 2 * DAY)[0].due);
    }

    #[test]
    fn a_key_under_two_rotate_policies_rotates_by_the_earlier_start_whatever_the_order() {
        let long = RotateConfig {
            overlap: Duration::from_secs(3 * 86_400),
            ..rotate("rot_long")
        };
        let t0 = 100 * DAY;
        let a = finding("k1", "rot_b", "service_account", t0 + 7 * DAY, t0);
        let b = finding("k1", "rot_a", "service_account", t0 + 7 * DAY, t0);
        let c = finding("k1", "rot_long", "service_account", t0 + 7 * DAY, t0);
        let same = [rotate("rot_b"), rotate("rot_a")];
        for order in [[&a, &b], [&b, &a]] {
            let p = planned_rotations(&order, &same, t0 + DAY);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(
                p[0].finding.policy, "rot_a",
                "same start: the policy name decides"
            );
        }
        let all = [rotate("rot_b"), rotate("rot_a"), long];
        for order in [[&a, &b, &c], [&c, &b, &a], [&b, &c, &a]] {
            let p = planned_rotations(&order, &all, t0 + DAY);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].finding.policy, "rot_long", "the earlier start wins");
            assert_eq!(p[0].start_at, t0 + 4 * DAY);
        }
    }

    #[test]
    fn the_logged_scopes_win_and_all_permissions_need_the_policys_scopes_empty() {
        let v = |x: &[&str]| x.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        let (read, write) = (v(&["api.model.read"]), v(&["api.responses.write"]));
        let all: Vec<String> = Vec::new();
        assert_eq!(
            new_key_scopes(Some(&read), Some(&write)),
            Ok((read.clone(), ScopesFrom::AuditLog))
        );
        assert_eq!(
            new_key_scopes(Some(&read), None),
            Ok((read.clone(), ScopesFrom::AuditLog))
        );
        assert_eq!(
            new_key_scopes(None, Some(&write)),
            Ok((write.clone(), ScopesFrom::Policy))
        );
        assert_eq!(new_key_scopes(None, None), Err(NoScopes::Unknown));
        // The log says All permissions: never All unless the policy says `scopes = []`.
        assert_eq!(new_key_scopes(Some(&all), None), Err(NoScopes::LoggedAll));
        assert_eq!(
            new_key_scopes(Some(&all), Some(&write)),
            Ok((write, ScopesFrom::Policy))
        );
        assert_eq!(
            new_key_scopes(Some(&all), Some(&all)),
            Ok((Vec::new(), ScopesFrom::Policy))
        );
    }

    #[test]
    fn a_rotation_knows_every_enforcing_policy_whose_deadline_it_keeps() {
        let t0 = 100 * DAY;
        let rot = finding("k1", "rot", "service_account", t0 + 9 * DAY, t0);
        let idle = finding("k1", "idle", "service_account", t0 + 7 * DAY, t0);
        let planned = planned_rotations(&[&rot, &idle], &[rotate("rot")], t0 + DAY);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].deadline, t0 + 7 * DAY);
        let mut policies = planned[0].policies.clone();
        policies.sort();
        assert_eq!(policies, ["idle", "rot"]);
    }

    #[test]
    fn due_rotations_count_against_the_caps_after_the_plans_own_writes() {
        let t0 = 100 * DAY;
        let a = finding("k1", "rot", "service_account", t0 + 7 * DAY, t0);
        let b = finding("k2", "rot", "service_account", t0 + 7 * DAY, t0);
        let planned = planned_rotations(&[&a, &b], &[rotate("rot")], t0 + 6 * DAY + 1);
        assert!(planned.iter().all(|p| p.due), "{planned:?}");
        let due: Vec<(&PlannedRotation, &Finding)> = vec![(&planned[0], &a), (&planned[1], &b)];
        let facts = |complete, key_count| {
            let mut m = BTreeMap::new();
            m.insert(
                ("o".to_string(), "p".to_string()),
                ProjectFacts {
                    complete,
                    key_count,
                    ..ProjectFacts::default()
                },
            );
            m
        };
        let safety = |run, pct, day| Safety {
            max_revocations_per_run: run,
            max_revocations_per_project_percent: pct,
            max_revocations_per_day: day,
            ..crate::policy::plan::default_safety()
        };
        let reasons = |w: Vec<WithheldAction>| {
            w.iter()
                .map(|w| (w.action.findings[0].key_id.clone(), w.reason))
                .collect::<Vec<_>>()
        };
        let plan = Plan::default();
        // 25 % of 4 keys: one rotation in the project; the later key waits.
        let w = withheld_rotations(&due, &plan, &facts(true, 4), &safety(10, 25, 50), 0);
        assert_eq!(
            reasons(w),
            [("k2".to_string(), Withheld::CapPerProjectPercent)]
        );
        let w = withheld_rotations(&due, &plan, &facts(true, 4), &safety(1, 100, 50), 0);
        assert_eq!(reasons(w), [("k2".to_string(), Withheld::CapPerRun)]);
        let w = withheld_rotations(&due, &plan, &facts(true, 4), &safety(10, 100, 50), 49);
        assert_eq!(reasons(w), [("k2".to_string(), Withheld::CapPerDay)]);
        let w = withheld_rotations(&due, &plan, &facts(false, 4), &safety(10, 100, 50), 0);
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|w| w.reason == Withheld::IncompleteListing));
        let w = withheld_rotations(&due, &plan, &facts(true, 4), &safety(10, 100, 50), 0);
        assert!(w.is_empty());
    }

    #[test]
    fn names_keep_the_old_name_and_carry_the_nonce() {
        assert_eq!(new_key_name("ci-bot", "3fa94c1e"), "ci-bot-ks-3fa94c1e");
        let long = "x".repeat(100);
        let n = new_key_name(&long, "00000000");
        assert_eq!(n.len(), 40 + 12);
        assert!(minted_with(&n, "00000000"));
        assert!(!minted_with(&n, "00000001"));
        assert_eq!(new_key_name("  ", "ab"), "ks-ab");
        assert!(minted_with("ks-ab", "ab"));
        assert!(!minted_with("ci-bot", ""));
    }
}
