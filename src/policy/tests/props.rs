//! Property tests over random keys, policies, exemptions, clocks and sweep sequences.
//!
//! The oracles here are written from the rules of issue 3 in plain loops over small, plain
//! "spec" structs; they never call `policy::rules`, `policy::lifecycle` or `policy::plan`. Globs
//! are limited to `*` and regexes to `^prefix`, so the oracle can match them with a few lines of
//! its own.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;

use super::{DAY, HOUR, dur};
use crate::config::{
    Action, ExemptionConfig, Mode, OwnerTypeSelector, PolicyConfig, Safety, Selector,
    ServiceAccountKeys,
};
use crate::inventory::{Key, Owner, OwnerAccess, OwnerType};
use crate::policy::finding::{Finding, FindingId, NoticeKind};
use crate::policy::lifecycle::{Observation, advance, mark_revoked};
use crate::policy::plan::{
    Candidate, Plan, PlanInput, ProjectFacts, ProjectKey, Target, Withheld, default_safety, plan,
};
use crate::policy::rules::Policies;

// ---------------------------------------------------------------------------------------------
// The universe the generators draw from.

const ORGS: [&str; 2] = ["acme", "globex"];
const PROJECTS: [(&str, Option<&str>); 3] = [
    ("proj_a", Some("Alpha")),
    ("proj_b", Some("Beta")),
    ("proj_c", None),
];
const KEY_NAMES: [&str; 6] = [
    "ci-deploy",
    "svc-batch",
    "alice",
    "CI-old",
    "team/ci-x",
    "x",
];
const EMAILS: [Option<&str>; 4] = [
    Some("alice@example.com"),
    Some("Bob@Example.com"),
    Some("carol@example.org"),
    None,
];
const SERVICE_ACCOUNTS: [Option<&str>; 3] = [Some("svc_1"), Some("svc_2"), None];
const ORG_PATTERNS: [&str; 3] = ["acme", "g*", "initech"];
const PROJECT_PATTERNS: [&str; 5] = ["proj_a", "proj_b", "Al*", "*eta", "proj_*"];
const NAME_GLOBS: [&str; 6] = ["ci-*", "*", "svc*", "*x*", "CI-*", "alice"];
const EMAIL_GLOBS: [&str; 4] = ["*@example.com", "ALICE@*", "bob@example.org", "*.org"];
const NAME_PREFIXES: [&str; 3] = ["ci-", "svc", "a"];
const CONDITION_DURATIONS: [i64; 6] = [0, HOUR, DAY, 7 * DAY, 45 * DAY, 90 * DAY];
const WARN_BEFORE: [i64; 4] = [0, DAY, 7 * DAY, 14 * DAY];
const FINAL_NOTICE: [i64; 4] = [0, HOUR, DAY, 3 * DAY];
const GAPS: [i64; 7] = [HOUR, 12 * HOUR, DAY, 3 * DAY, 7 * DAY, 14 * DAY, 30 * DAY];

#[derive(Debug, Clone)]
struct KeySpec {
    org: usize,
    project: usize,
    name: usize,
    created_day: i64,
    used_after_days: Option<i64>,
    /// 0 user, 1 service account, 2 unknown.
    owner: usize,
    email: usize,
    /// 0 active, 1 inactive, 2 unknown.
    access: usize,
    service_account: usize,
}

#[derive(Debug, Clone)]
struct PolicySpec {
    orgs: Vec<usize>,
    projects: Vec<usize>,
    /// 0 user, 1 service account.
    owner_type: Option<usize>,
    key_names: Vec<usize>,
    emails: Vec<usize>,
    max_age: Option<i64>,
    max_idle: Option<i64>,
    grace: Option<i64>,
    lost_access: bool,
    prefix: Option<usize>,
    revoke: bool,
    warn_before: i64,
    final_notice: i64,
}

#[derive(Debug, Clone)]
struct ExemptionSpec {
    key: Option<usize>,
    name: Option<usize>,
    project: Option<usize>,
    until: Option<i64>,
}

fn key_spec() -> impl Strategy<Value = KeySpec> {
    (
        0..ORGS.len(),
        0..PROJECTS.len(),
        0..KEY_NAMES.len(),
        0..400i64,
        prop::option::of(0..400i64),
        select(vec![0usize, 0, 0, 1, 1, 2]),
        0..EMAILS.len(),
        select(vec![0usize, 0, 1, 2]),
        0..SERVICE_ACCOUNTS.len(),
    )
        .prop_map(
            |(org, project, name, created_day, used_after_days, owner, email, access, sa)| {
                KeySpec {
                    org,
                    project,
                    name,
                    created_day,
                    used_after_days,
                    owner,
                    email,
                    access,
                    service_account: sa,
                }
            },
        )
}

/// Mostly empty selector lists, so policies select a useful share of keys.
fn pick_list(n: usize) -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(0..n, 1..=2)]
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    let selector = (
        pick_list(ORG_PATTERNS.len()),
        pick_list(PROJECT_PATTERNS.len()),
        prop_oneof![2 => Just(None), 1 => (0..2usize).prop_map(Some)],
        pick_list(NAME_GLOBS.len()),
        pick_list(EMAIL_GLOBS.len()),
    );
    let conditions = (
        prop::option::of(select(CONDITION_DURATIONS.to_vec())),
        prop::option::of(select(CONDITION_DURATIONS.to_vec())),
        prop::option::of(select(CONDITION_DURATIONS.to_vec())),
        prop::bool::weighted(0.2),
        prop_oneof![3 => Just(None), 1 => (0..NAME_PREFIXES.len()).prop_map(Some)],
    );
    let action = (
        any::<bool>(),
        select(WARN_BEFORE.to_vec()),
        select(FINAL_NOTICE.to_vec()),
    );
    (selector, conditions, action).prop_map(
        |(
            (orgs, projects, owner_type, key_names, emails),
            (max_age, max_idle, grace, lost_access, prefix),
            (revoke, warn_before, final_notice),
        )| {
            let mut p = PolicySpec {
                orgs,
                projects,
                owner_type,
                key_names,
                emails,
                max_age,
                max_idle,
                grace,
                lost_access,
                prefix,
                revoke,
                warn_before,
                final_notice,
            };
            // A policy needs a condition (compile rejects it otherwise).
            if p.max_age.is_none() && p.max_idle.is_none() && !p.lost_access && p.prefix.is_none() {
                p.max_age = Some(90 * DAY);
            }
            p
        },
    )
}

fn exemption_spec() -> impl Strategy<Value = ExemptionSpec> {
    (
        prop::option::of(0..8usize),
        prop_oneof![2 => Just(None), 1 => (0..NAME_GLOBS.len()).prop_map(Some)],
        prop_oneof![2 => Just(None), 1 => (0..PROJECT_PATTERNS.len()).prop_map(Some)],
        prop::option::of(0..800i64),
    )
        .prop_map(|(key, name, project, until_day)| {
            let mut e = ExemptionSpec {
                key,
                name,
                project,
                until: until_day.map(|d| d * DAY),
            };
            if e.key.is_none() && e.name.is_none() && e.project.is_none() {
                e.key = Some(0);
            }
            e
        })
}

/// Clocks land on whole days, a second either side of them, or an hour in, so the generated
/// day-multiple durations hit their boundaries often.
fn clock(days: std::ops::Range<i64>) -> impl Strategy<Value = i64> {
    (days, select(vec![0i64, 0, -1, 1, HOUR])).prop_map(|(d, off)| d * DAY + off)
}

// ---------------------------------------------------------------------------------------------
// Building the real config and domain values from the specs.

fn build_key(i: usize, s: &KeySpec) -> Key {
    let (project_id, project_name) = PROJECTS[s.project];
    let created_at = s.created_day * DAY;
    let owner = match s.owner {
        0 => Owner {
            kind: OwnerType::User,
            id: Some(format!("user_{i}")),
            name: None,
            email: EMAILS[s.email].map(String::from),
        },
        1 => Owner {
            kind: OwnerType::ServiceAccount,
            id: SERVICE_ACCOUNTS[s.service_account].map(String::from),
            name: None,
            email: None,
        },
        _ => Owner {
            kind: OwnerType::Unknown,
            id: None,
            name: None,
            email: EMAILS[s.email].map(String::from),
        },
    };
    Key {
        organization: ORGS[s.org].to_string(),
        project_id: project_id.to_string(),
        project_name: project_name.map(String::from),
        id: format!("k{i}"),
        name: KEY_NAMES[s.name].to_string(),
        redacted_value: format!("sk-...{i}"),
        created_at,
        last_used_at: s.used_after_days.map(|d| created_at + d * DAY),
        last_used_unknown: false,
        owner,
        owner_access: [
            OwnerAccess::Active,
            OwnerAccess::Inactive,
            OwnerAccess::Unknown,
        ][s.access],
        expires_at: crate::inventory::Expiry::Unknown,
    }
}

fn build_policy(i: usize, s: &PolicySpec) -> PolicyConfig {
    let strings = |idx: &[usize], pool: &[&str]| idx.iter().map(|&j| pool[j].to_string()).collect();
    PolicyConfig {
        name: format!("p{i}"),
        selector: Selector {
            organizations: strings(&s.orgs, &ORG_PATTERNS),
            projects: strings(&s.projects, &PROJECT_PATTERNS),
            owner_type: s.owner_type.map(|t| {
                if t == 0 {
                    OwnerTypeSelector::User
                } else {
                    OwnerTypeSelector::ServiceAccount
                }
            }),
            key_name: strings(&s.key_names, &NAME_GLOBS),
            owner_email: strings(&s.emails, &EMAIL_GLOBS),
        },
        max_age: s.max_age.map(dur),
        max_idle: s.max_idle.map(dur),
        never_used_grace: s.grace.map(dur),
        owner_lost_access: s.lost_access,
        max_lifetime: None,
        unrestricted: false,
        name_pattern: s
            .prefix
            .map(|j| regex::Regex::new(&format!("^{}", NAME_PREFIXES[j])).unwrap()),
        action: if s.revoke {
            Action::Revoke
        } else {
            Action::Notify
        },
        warn_before: dur(s.warn_before),
        final_notice: dur(s.final_notice),
        notify: Vec::new(),
    }
}

fn build_exemption(s: &ExemptionSpec) -> ExemptionConfig {
    ExemptionConfig {
        key_id: s.key.map(|k| format!("k{k}")),
        key_name: s.name.map(|j| NAME_GLOBS[j].to_string()),
        project: s.project.map(|j| PROJECT_PATTERNS[j].to_string()),
        reason: "because".to_string(),
        until: s.until,
    }
}

fn compile(policies: &[PolicySpec], exemptions: &[ExemptionSpec]) -> Policies {
    let p: Vec<_> = policies
        .iter()
        .enumerate()
        .map(|(i, s)| build_policy(i, s))
        .collect();
    let e: Vec<_> = exemptions.iter().map(build_exemption).collect();
    Policies::compile(&p, &e).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The oracle: the rules of issue 3 in plain loops.

/// `*`-only wildcard match.
fn wild(pattern: &[u8], s: &[u8]) -> bool {
    match pattern.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| wild(rest, &s[i..])),
        Some((c, rest)) => s
            .split_first()
            .is_some_and(|(d, s2)| c == d && wild(rest, s2)),
    }
}

fn wild_str(pattern: &str, s: &str) -> bool {
    wild(pattern.as_bytes(), s.as_bytes())
}

/// The plain facts of a key as the oracle tracks them.
#[derive(Debug, Clone)]
struct OKey {
    org: &'static str,
    project_id: &'static str,
    project_name: Option<&'static str>,
    id: String,
    name: &'static str,
    created_at: i64,
    last_used_at: Option<i64>,
    /// 0 user, 1 service account, 2 unknown.
    owner: usize,
    email: Option<&'static str>,
    inactive: bool,
}

fn okey(i: usize, s: &KeySpec) -> OKey {
    OKey {
        org: ORGS[s.org],
        project_id: PROJECTS[s.project].0,
        project_name: PROJECTS[s.project].1,
        id: format!("k{i}"),
        name: KEY_NAMES[s.name],
        created_at: s.created_day * DAY,
        last_used_at: s.used_after_days.map(|d| s.created_day * DAY + d * DAY),
        owner: s.owner,
        email: if s.owner == 1 { None } else { EMAILS[s.email] },
        inactive: s.access == 1,
    }
}

fn oracle_project_match(pattern: &str, k: &OKey) -> bool {
    pattern == k.project_id || k.project_name.is_some_and(|n| wild_str(pattern, n))
}

/// `Some(violating_since)` when policy `p` selects `k` and all its conditions hold at `now`.
fn oracle_violation(p: &PolicySpec, k: &OKey, now: i64) -> Option<i64> {
    if !p.orgs.is_empty() && !p.orgs.iter().any(|&j| wild_str(ORG_PATTERNS[j], k.org)) {
        return None;
    }
    if !p.projects.is_empty()
        && !p
            .projects
            .iter()
            .any(|&j| oracle_project_match(PROJECT_PATTERNS[j], k))
    {
        return None;
    }
    if let Some(t) = p.owner_type
        && t != k.owner
    {
        return None;
    }
    if !p.key_names.is_empty() && !p.key_names.iter().any(|&j| wild_str(NAME_GLOBS[j], k.name)) {
        return None;
    }
    if !p.emails.is_empty() {
        let email = k.email?;
        let email = email.to_lowercase();
        if !p
            .emails
            .iter()
            .any(|&j| wild_str(&EMAIL_GLOBS[j].to_lowercase(), &email))
        {
            return None;
        }
    }
    let mut since = i64::MIN;
    if let Some(max_age) = p.max_age {
        if now - k.created_at <= max_age {
            return None;
        }
        since = since.max(k.created_at + max_age);
    }
    if let Some(max_idle) = p.max_idle {
        let (from, limit) = match k.last_used_at {
            Some(used) => (used, max_idle),
            None => (k.created_at, p.grace.unwrap_or(max_idle)),
        };
        if now - from <= limit {
            return None;
        }
        since = since.max(from + limit);
    }
    if p.lost_access {
        if !k.inactive {
            return None;
        }
        since = since.max(now);
    }
    if let Some(j) = p.prefix {
        if k.name.starts_with(NAME_PREFIXES[j]) {
            return None;
        }
        since = since.max(now);
    }
    Some(since)
}

fn oracle_exemption_matches(e: &ExemptionSpec, k: &OKey) -> bool {
    let mut ok = true;
    if let Some(i) = e.key {
        ok &= format!("k{i}") == k.id;
    }
    if let Some(j) = e.name {
        ok &= wild_str(NAME_GLOBS[j], k.name);
    }
    if let Some(j) = e.project {
        ok &= oracle_project_match(PROJECT_PATTERNS[j], k);
    }
    ok
}

/// (index of the applied exemption, indexes of expired matching exemptions).
fn oracle_exemptions(es: &[ExemptionSpec], k: &OKey, now: i64) -> (Option<usize>, Vec<usize>) {
    let mut applied = None;
    let mut expired = Vec::new();
    for (i, e) in es.iter().enumerate() {
        if !oracle_exemption_matches(e, k) {
            continue;
        }
        match e.until {
            Some(until) if now > until => expired.push(i),
            _ => {
                if applied.is_none() {
                    applied = Some(i);
                }
            }
        }
    }
    (applied, expired)
}

// ---------------------------------------------------------------------------------------------
// Property 1: `evaluate` agrees with the oracle.

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::with_cases(1000)
    })]

    #[test]
    fn evaluate_agrees_with_the_oracle(
        keys in prop::collection::vec(key_spec(), 1..8),
        policies in prop::collection::vec(policy_spec(), 1..4),
        exemptions in prop::collection::vec(exemption_spec(), 0..3),
        uniform_now in clock(0..900),
        anchored in prop::option::of((0..8usize, 0..3u8, select(CONDITION_DURATIONS.to_vec()), -1i64..=1)),
    ) {
        // Half the clocks sit exactly on a boundary (±1 s): a condition of some key, or the
        // `until` of some exemption.
        let now = match anchored {
            Some((i, anchor, d, off)) => {
                let s = &keys[i % keys.len()];
                let created = s.created_day * DAY;
                let base = match anchor {
                    0 => created + d,
                    1 => created + s.used_after_days.unwrap_or(0) * DAY + d,
                    _ => exemptions
                        .get(i % exemptions.len().max(1))
                        .and_then(|e| e.until)
                        .unwrap_or(created),
                };
                base + off
            }
            None => uniform_now,
        };
        let compiled = compile(&policies, &exemptions);
        for (i, spec) in keys.iter().enumerate() {
            let key = build_key(i, spec);
            let ok = okey(i, spec);
            let ev = compiled.evaluate(&key, now);

            let got: Vec<(String, i64)> = ev
                .violations
                .iter()
                .map(|v| (v.policy.clone(), v.violating_since))
                .collect();
            let want: Vec<(String, i64)> = policies
                .iter()
                .enumerate()
                .filter_map(|(j, p)| oracle_violation(p, &ok, now).map(|s| (format!("p{j}"), s)))
                .collect();
            prop_assert_eq!(&got, &want, "key {:?}", key);
            for v in &ev.violations {
                prop_assert!(!v.reason.is_empty());
                prop_assert!(v.violating_since <= now, "a violation cannot start in the future");
            }

            let (applied, expired) = oracle_exemptions(&exemptions, &ok, now);
            prop_assert_eq!(ev.exemption.as_ref().map(|h| h.index), applied);
            let got_expired: Vec<usize> = ev.expired_exemptions.iter().map(|h| h.index).collect();
            prop_assert_eq!(got_expired, expired);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property 2: sweeps over time — lifecycle + plan against the oracle.

#[derive(Debug, Clone)]
struct StepSpec {
    gap: i64,
    /// Per key: used right before this sweep.
    touch: Vec<bool>,
    /// Per key: deleted by its owner before this sweep.
    gone: Vec<bool>,
    /// Per project index: listing complete in this sweep.
    complete: Vec<bool>,
}

const MAX_KEYS: usize = 6;

fn step_spec() -> impl Strategy<Value = StepSpec> {
    (
        select(GAPS.to_vec()),
        prop::collection::vec(prop::bool::weighted(0.1), MAX_KEYS),
        prop::collection::vec(prop::bool::weighted(0.04), MAX_KEYS),
        prop::collection::vec(prop::bool::weighted(0.85), PROJECTS.len()),
    )
        .prop_map(|(gap, touch, gone, complete)| StepSpec {
            gap,
            touch,
            gone,
            complete,
        })
}

#[derive(Debug, Clone)]
struct World {
    keys: Vec<KeySpec>,
    policies: Vec<PolicySpec>,
    exemptions: Vec<ExemptionSpec>,
    start: i64,
    steps: Vec<StepSpec>,
    repeat: i64,
    mode: Mode,
    kill_switch: bool,
    rule: ServiceAccountKeys,
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(key_spec(), 1..=MAX_KEYS),
        prop::collection::vec(policy_spec(), 1..4),
        prop::collection::vec(exemption_spec(), 0..3),
        clock(0..500),
        prop::collection::vec(step_spec(), 1..16),
        select(vec![0i64, DAY, 3 * DAY]),
        select(vec![Mode::Enforce, Mode::Enforce, Mode::DryRun]),
        prop::bool::weighted(0.1),
        select(vec![
            ServiceAccountKeys::NotifyOnly,
            ServiceAccountKeys::Enforce,
        ]),
    )
        .prop_map(
            |(keys, policies, exemptions, start, steps, repeat, mode, kill_switch, rule)| World {
                keys,
                policies,
                exemptions,
                start,
                steps,
                repeat,
                mode,
                kill_switch,
                rule,
            },
        )
}

/// Per step: (key id, policy) → (notices, revoke_due) for every pair with something to say,
/// and the keys deleted by the plan.
type StepLog = (
    BTreeMap<(String, String), (Vec<NoticeKind>, bool)>,
    BTreeSet<String>,
);

fn lifted(rule: ServiceAccountKeys) -> Safety {
    Safety {
        max_revocations_per_run: 100_000,
        max_revocations_per_project_percent: 100,
        max_revocations_per_day: 100_000,
        service_account_keys: rule,
        ..default_safety()
    }
}

/// The real thing: `evaluate` → `advance` per (key, policy) → `plan` → `mark_revoked`, the way
/// the sweep strings them together, checking lifecycle invariants on the way.
fn run_system(w: &World) -> Vec<StepLog> {
    let policies = compile(&w.policies, &w.exemptions);
    let names: Vec<String> = policies.names().map(String::from).collect();
    let mut keys: Vec<Key> = w
        .keys
        .iter()
        .enumerate()
        .map(|(i, s)| build_key(i, s))
        .collect();
    let mut gone = vec![false; keys.len()];
    let mut findings: BTreeMap<(usize, String), Finding> = BTreeMap::new();
    // When each pair was last warned (from the notices, not the stored field).
    let mut warned: BTreeMap<(usize, String), i64> = BTreeMap::new();
    let safety = lifted(w.rule);
    let mut t = w.start;
    let mut log = Vec::new();

    for step in &w.steps {
        t += step.gap;
        step_events(step, &mut keys, &mut gone, t);

        let mut said = BTreeMap::new();
        let mut candidates = Vec::new();
        for i in 0..keys.len() {
            let evaluation = (!gone[i]).then(|| policies.evaluate(&keys[i], t));
            for name in &names {
                let slot = (i, name.clone());
                let prev = findings.get(&slot);
                let obs = match &evaluation {
                    Some(ev) => ev.observation(&keys[i], name),
                    None if prev.is_some() => Observation::Gone,
                    None => continue,
                };
                let tr = advance(prev, t, obs, w.repeat, None, false);
                let Some(next) = tr.next.clone() else {
                    assert!(tr.notices.is_empty() && !tr.revoke_due);
                    continue;
                };
                if let Some(p) =
                    prev.filter(|p| p.stage.is_open() && p.detected_at == next.detected_at)
                {
                    assert_eq!(p.deadline, next.deadline, "deadline moved for {slot:?}");
                }
                if tr.notices.contains(&NoticeKind::Warning) {
                    warned.insert(slot.clone(), t);
                }
                if tr.revoke_due {
                    let wb = w.policies[name[1..].parse::<usize>().unwrap()].warn_before;
                    assert_due_is_earned(&next, t, wb, warned[&slot]);
                    candidates.push(Candidate {
                        finding: next.id.clone(),
                        key: keys[i].clone(),
                        deadline: next.deadline,
                        write: crate::policy::plan::Write::Delete,
                    });
                }
                if !tr.notices.is_empty() || tr.revoke_due {
                    said.insert(
                        (keys[i].id.clone(), name.clone()),
                        (tr.notices.clone(), tr.revoke_due),
                    );
                }
                findings.insert(slot, next);
            }
        }

        let facts = system_facts(&keys, &gone, &step.complete);
        let planned = plan(&PlanInput {
            candidates: &candidates,
            projects: &facts,
            mode: w.mode,
            safety: &safety,
            revoked_last_24h: 0,
            kill_switch: w.kill_switch,
        });
        let deleted = apply_plan(&planned, &keys, &mut gone, &mut findings, t);
        log.push((said, deleted));
    }
    log
}

/// What happened to the keys before a step: deleted outside keysweep, or used.
fn step_events(step: &StepSpec, keys: &mut [Key], gone: &mut [bool], t: i64) {
    for i in 0..keys.len() {
        if gone[i] {
            continue;
        }
        if step.gone[i] {
            gone[i] = true;
        } else if step.touch[i] {
            keys[i].last_used_at = Some(t);
        }
    }
}

/// A revocation is due only after its deadline, its final notice and `warn_before` since the
/// warning.
fn assert_due_is_earned(next: &Finding, t: i64, warn_before: i64, last_warning: i64) {
    assert_eq!(next.action, Action::Revoke);
    assert!(t >= next.deadline, "due before its deadline");
    assert!(next.final_notice_at.is_some_and(|f| f <= t));
    assert!(
        next.warned_at
            .is_some_and(|w0| w0 + warn_before <= t && w0 < t)
    );
    assert!(
        last_warning < t && last_warning + warn_before <= t,
        "due before warn_before"
    );
}

/// What `plan` knows of each project: its keys, its service accounts, whether it is complete.
fn system_facts(
    keys: &[Key],
    gone: &[bool],
    complete: &[bool],
) -> BTreeMap<ProjectKey, ProjectFacts> {
    let mut facts: BTreeMap<ProjectKey, ProjectFacts> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        if gone[i] {
            continue;
        }
        let pidx = PROJECTS
            .iter()
            .position(|(id, _)| *id == k.project_id)
            .unwrap();
        let f = facts
            .entry((k.organization.clone(), k.project_id.clone()))
            .or_insert_with(|| ProjectFacts {
                complete: complete[pidx],
                ..ProjectFacts::default()
            });
        f.key_count += 1;
        if k.owner.kind == OwnerType::ServiceAccount
            && let Some(sa) = &k.owner.id
        {
            f.service_accounts
                .entry(sa.clone())
                .or_default()
                .insert(k.id.clone());
        }
    }
    facts
}

/// Deletes what the plan revokes and marks its findings revoked; returns the deleted key ids.
fn apply_plan(
    planned: &Plan,
    keys: &[Key],
    gone: &mut [bool],
    findings: &mut BTreeMap<(usize, String), Finding>,
    t: i64,
) -> BTreeSet<String> {
    let mut deleted = BTreeSet::new();
    for action in &planned.revoke {
        for k in action.keys() {
            let i = keys.iter().position(|x| x.id == k.id).unwrap();
            gone[i] = true;
            deleted.insert(k.id.clone());
        }
        for fid in &action.findings {
            let i = keys.iter().position(|x| x.id == fid.key_id).unwrap();
            let slot = (i, fid.policy.clone());
            let revoked = mark_revoked(&findings[&slot], t);
            findings.insert(slot, revoked);
        }
    }
    deleted
}

#[derive(Debug, Clone)]
struct OFinding {
    deadline: i64,
    warned_at: i64,
    final_sent: bool,
    last_notified: i64,
}

/// The oracle: the lifecycle and deletion rules, from the issue, in plain loops.
fn run_oracle(w: &World) -> Vec<StepLog> {
    let mut keys: Vec<OKey> = w.keys.iter().enumerate().map(|(i, s)| okey(i, s)).collect();
    let mut gone = vec![false; keys.len()];
    let mut open: BTreeMap<(usize, usize), OFinding> = BTreeMap::new();
    let mut t = w.start;
    let mut log = Vec::new();

    for step in &w.steps {
        t += step.gap;
        for i in 0..keys.len() {
            if !gone[i] && step.gone[i] {
                gone[i] = true;
            } else if !gone[i] && step.touch[i] {
                keys[i].last_used_at = Some(t);
            }
        }

        let mut said = BTreeMap::new();
        let mut due: BTreeSet<usize> = BTreeSet::new();
        let mut due_pairs: Vec<(usize, usize)> = Vec::new();
        for i in 0..keys.len() {
            let exempt = !gone[i] && oracle_exemptions(&w.exemptions, &keys[i], t).0.is_some();
            for (j, p) in w.policies.iter().enumerate() {
                let violating = if gone[i] || exempt {
                    None
                } else {
                    oracle_violation(p, &keys[i], t)
                };
                let (notices, is_due) = oracle_pair(&mut open, (i, j), p, violating, t, w.repeat);
                if is_due {
                    due.insert(i);
                    due_pairs.push((i, j));
                }
                if !notices.is_empty() || is_due {
                    said.insert((keys[i].id.clone(), format!("p{j}")), (notices, is_due));
                }
            }
        }

        // Which due keys are deleted.
        let deleted_idx = oracle_deleted(w, &step.complete, &keys, &due);
        for &(i, j) in &due_pairs {
            if deleted_idx.contains(&i) {
                open.remove(&(i, j));
            }
        }
        let mut deleted = BTreeSet::new();
        for &i in &deleted_idx {
            gone[i] = true;
            deleted.insert(keys[i].id.clone());
        }
        log.push((said, deleted));
    }
    log
}

/// One (key, policy) pair in one oracle step: the notices due and whether it is revoke-due.
fn oracle_pair(
    open: &mut BTreeMap<(usize, usize), OFinding>,
    pair: (usize, usize),
    p: &PolicySpec,
    violating: Option<i64>,
    t: i64,
    repeat: i64,
) -> (Vec<NoticeKind>, bool) {
    let mut notices = Vec::new();
    let mut is_due = false;
    match (open.get_mut(&pair), violating) {
        (None, None) => {}
        (None, Some(since)) => {
            open.insert(
                pair,
                OFinding {
                    deadline: since.max(t + p.warn_before),
                    warned_at: t,
                    final_sent: false,
                    last_notified: t,
                },
            );
            notices.push(NoticeKind::Warning);
        }
        (Some(f), Some(_)) => {
            if p.revoke && !f.final_sent && t >= f.deadline - p.final_notice {
                f.final_sent = true;
                notices.push(NoticeKind::FinalNotice);
            }
            if notices.is_empty() && repeat > 0 && f.last_notified + repeat <= t {
                notices.push(NoticeKind::Reminder);
            }
            if !notices.is_empty() {
                f.last_notified = t;
            }
            is_due =
                p.revoke && t >= f.deadline && f.warned_at + p.warn_before <= t && f.final_sent;
        }
        (Some(_), None) => {
            open.remove(&pair);
            notices.push(NoticeKind::Resolved);
        }
    }
    (notices, is_due)
}

/// The oracle's deletion rule: enforce mode, no kill switch, a complete project, and for a
/// service-account key `service_account_keys = "enforce"`.
fn oracle_deleted(
    w: &World,
    complete: &[bool],
    keys: &[OKey],
    due: &BTreeSet<usize>,
) -> BTreeSet<usize> {
    let mut deleted_idx = BTreeSet::new();
    if w.mode != Mode::Enforce || w.kill_switch {
        return deleted_idx;
    }
    for &i in due {
        let k = &keys[i];
        let pidx = PROJECTS
            .iter()
            .position(|(id, _)| *id == k.project_id)
            .unwrap();
        if !complete[pidx] {
            continue;
        }
        // Service-account keys are deleted one by one, only under `enforce`.
        let ok = k.owner != 1 || w.rule == ServiceAccountKeys::Enforce;
        if ok {
            deleted_idx.insert(i);
        }
    }
    deleted_idx
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::with_cases(1000)
    })]

    #[test]
    fn sweeps_agree_with_the_oracle(w in world()) {
        let system = run_system(&w);
        let oracle = run_oracle(&w);
        for (n, (got, want)) in system.iter().zip(&oracle).enumerate() {
            prop_assert_eq!(&got.0, &want.0, "notices/due differ at step {}", n);
            prop_assert_eq!(&got.1, &want.1, "deleted keys differ at step {}", n);
            if w.mode == Mode::DryRun || w.kill_switch {
                prop_assert!(got.1.is_empty(), "dry-run or kill switch deleted something");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property 3: the plan never exceeds a cap and accounts for every candidate.

#[derive(Debug, Clone)]
struct PlanWorld {
    keys: Vec<KeySpec>,
    deadlines: Vec<i64>,
    /// Per candidate key: how many policies it is due under (1 or 2).
    policies_due: Vec<bool>,
    extra_keys: Vec<usize>,
    /// Per project index: complete?
    complete: Vec<bool>,
    /// Per service account: has a key that is not due.
    sa_has_compliant: Vec<bool>,
    safety: (u32, u32, u32),
    revoked_last_24h: u32,
    mode: Mode,
    kill_switch: bool,
    rule: ServiceAccountKeys,
}

fn plan_world() -> impl Strategy<Value = PlanWorld> {
    (
        prop::collection::vec(key_spec(), 0..30),
        prop::collection::vec(0..20i64, 30),
        prop::collection::vec(any::<bool>(), 30),
        prop::collection::vec(0..20usize, PROJECTS.len() * ORGS.len()),
        prop::collection::vec(prop::bool::weighted(0.8), PROJECTS.len()),
        prop::collection::vec(prop::bool::weighted(0.3), SERVICE_ACCOUNTS.len()),
        (0..15u32, 0..=100u32, 0..30u32),
        0..40u32,
        select(vec![Mode::Enforce, Mode::Enforce, Mode::DryRun]),
        prop::bool::weighted(0.1),
        select(vec![
            ServiceAccountKeys::NotifyOnly,
            ServiceAccountKeys::Enforce,
        ]),
    )
        .prop_map(
            |(
                keys,
                deadlines,
                policies_due,
                extra_keys,
                complete,
                sa_has_compliant,
                safety,
                revoked_last_24h,
                mode,
                kill_switch,
                rule,
            )| PlanWorld {
                keys,
                deadlines,
                policies_due,
                extra_keys,
                complete,
                sa_has_compliant,
                safety,
                revoked_last_24h,
                mode,
                kill_switch,
                rule,
            },
        )
}

/// Same as `policy::plan::project_cap`, written out for the check.
fn oracle_project_cap(pct: u32, keys: usize) -> usize {
    if pct == 0 {
        0
    } else {
        (pct as usize * keys / 100).max(1)
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::with_cases(1000)
    })]

    #[test]
    fn plan_never_exceeds_a_cap(w in plan_world()) {
        let keys: Vec<Key> = w.keys.iter().enumerate().map(|(i, s)| build_key(i, s)).collect();
        let mut candidates = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let policies = if w.policies_due[i] { vec!["p0", "p1"] } else { vec!["p0"] };
            for p in policies {
                candidates.push(Candidate {
                    finding: FindingId {
                        organization: k.organization.clone(),
                        project_id: k.project_id.clone(),
                        key_id: k.id.clone(),
                        policy: p.to_string(),
                    },
                    key: k.clone(),
                    deadline: w.deadlines[i],
                    write: crate::policy::plan::Write::Delete,
                });
            }
        }
        let mut facts: BTreeMap<ProjectKey, ProjectFacts> = BTreeMap::new();
        for (o, org) in ORGS.iter().enumerate() {
            for (p, (pid, _)) in PROJECTS.iter().enumerate() {
                let mut f = ProjectFacts {
                    complete: w.complete[p],
                    key_count: w.extra_keys[o * PROJECTS.len() + p],
                    ..ProjectFacts::default()
                };
                for k in keys.iter().filter(|k| k.organization == *org && k.project_id == *pid) {
                    f.key_count += 1;
                    if let Some(sa) = k.owner.id.as_ref().filter(|_| k.owner.kind == OwnerType::ServiceAccount) {
                        f.service_accounts.entry(sa.clone()).or_default().insert(k.id.clone());
                    }
                }
                for (s, sa) in SERVICE_ACCOUNTS.iter().enumerate() {
                    if let (Some(sa), true) = (sa, w.sa_has_compliant[s])
                        && let Some(set) = f.service_accounts.get_mut(*sa)
                    {
                        set.insert(format!("compliant-{sa}"));
                        f.key_count += 1;
                    }
                }
                facts.insert((org.to_string(), pid.to_string()), f);
            }
        }
        let (per_run, pct, per_day) = w.safety;
        let safety = Safety {
            max_revocations_per_run: per_run,
            max_revocations_per_project_percent: pct,
            max_revocations_per_day: per_day,
            service_account_keys: w.rule,
            ..default_safety()
        };
        let p = plan(&PlanInput {
            candidates: &candidates,
            projects: &facts,
            mode: w.mode,
            safety: &safety,
            revoked_last_24h: w.revoked_last_24h,
            kill_switch: w.kill_switch,
        });

        // Every candidate key is accounted for exactly once.
        let mut seen: Vec<String> = p
            .revoke
            .iter()
            .chain(p.withheld.iter().map(|w| &w.action))
            .flat_map(|a| a.keys().iter().map(|k| k.id.clone()))
            .collect();
        seen.sort();
        let mut expected: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        expected.sort();
        prop_assert_eq!(seen, expected);

        let total: usize = p.revoke.iter().map(|a| a.keys().len()).sum();
        prop_assert_eq!(total, p.revocation_count() as usize);
        prop_assert!(total <= per_run as usize);
        prop_assert!(total <= per_day.saturating_sub(w.revoked_last_24h) as usize);
        let mut per_project: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for a in &p.revoke {
            *per_project.entry((a.organization(), a.project_id())).or_default() += a.keys().len();
        }
        for ((org, pid), n) in per_project {
            let f = &facts[&(org.to_string(), pid.to_string())];
            prop_assert!(f.complete, "revoked in an incomplete project");
            prop_assert!(n <= oracle_project_cap(pct, f.key_count));
        }
        if w.mode == Mode::DryRun || w.kill_switch {
            prop_assert!(p.revoke.is_empty());
        }
        for a in &p.revoke {
            let Target::Key(k) = &a.target;
            if k.owner.kind == OwnerType::ServiceAccount {
                prop_assert_eq!(w.rule, ServiceAccountKeys::Enforce);
            }
            prop_assert_eq!(a.keys().len(), 1, "one key per action, never collateral");
        }
        // A cap withholds an action only when adding it to everything that passed the caps
        // (revoked, or withheld later by the kill switch / dry-run) would exceed that cap.
        let passed: Vec<_> = p
            .revoke
            .iter()
            .chain(
                p.withheld
                    .iter()
                    .filter(|w| matches!(w.reason, Withheld::DryRun | Withheld::KillSwitch))
                    .map(|w| &w.action),
            )
            .collect();
        let used_total: usize = passed.iter().map(|a| a.keys().len()).sum();
        let day_left = per_day.saturating_sub(w.revoked_last_24h) as usize;
        for wa in p.withheld.iter().filter(|w| w.reason.is_cap()) {
            let a = &wa.action;
            let n = a.keys().len();
            let used_project: usize = passed
                .iter()
                .filter(|b| b.organization() == a.organization() && b.project_id() == a.project_id())
                .map(|b| b.keys().len())
                .sum();
            let f = &facts[&(a.organization().to_string(), a.project_id().to_string())];
            prop_assert!(
                n + used_total > per_run as usize
                    || n + used_project > oracle_project_cap(pct, f.key_count)
                    || n + used_total > day_left,
                "withheld by {:?} without exceeding any cap", wa.reason
            );
        }
        for wa in &p.withheld {
            if wa.reason == Withheld::DryRun {
                prop_assert_eq!(w.mode, Mode::DryRun);
            }
            if wa.reason == Withheld::KillSwitch {
                prop_assert!(w.kill_switch);
            }
        }
    }
}
