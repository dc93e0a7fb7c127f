//! Each condition and selector of `policy::rules` at its boundaries.

use super::{DAY, dur, exemption, key, policy};
use crate::config::{Action, OwnerTypeSelector};
use crate::inventory::{Key, OwnerAccess, OwnerType};
use crate::policy::facts::{KeyFacts, OrgFacts};
use crate::policy::lifecycle::Observation;
use crate::policy::rules::{Policies, PolicyError, Violation};

fn eval_one(p: crate::config::PolicyConfig, k: &Key, now: i64) -> Option<Violation> {
    let policies = Policies::compile(&[p], &[]).unwrap();
    let mut e = policies.evaluate(k, now);
    assert!(e.violations.len() <= 1);
    e.violations.pop()
}

fn max_age(days: i64) -> crate::config::PolicyConfig {
    let mut p = policy("age");
    p.max_age = Some(dur(days * DAY));
    p
}

#[test]
fn max_age_is_strictly_older_than() {
    let mut k = key("k1");
    k.created_at = 1_000;
    let limit = 1_000 + 90 * DAY;
    assert_eq!(eval_one(max_age(90), &k, limit - 1), None);
    assert_eq!(
        eval_one(max_age(90), &k, limit),
        None,
        "exactly max_age is not older"
    );
    let v = eval_one(max_age(90), &k, limit + 1).unwrap();
    assert_eq!(v.violating_since, limit);
    assert_eq!(v.policy, "age");
    assert_eq!(v.action, Action::Notify);
    assert_eq!(v.warn_before, 7 * DAY);
    assert_eq!(v.final_notice, DAY);
    assert!(v.reason.contains("older than 90d"), "{}", v.reason);
    assert!(v.reason.contains("created 1970-01-01"), "{}", v.reason);
}

#[test]
fn max_idle_counts_from_last_use() {
    let mut p = policy("idle");
    p.max_idle = Some(dur(45 * DAY));
    let mut k = key("k1");
    k.last_used_at = Some(10 * DAY);
    let limit = 55 * DAY;
    assert_eq!(eval_one(p.clone(), &k, limit - 1), None);
    assert_eq!(eval_one(p.clone(), &k, limit), None);
    let v = eval_one(p.clone(), &k, limit + 1).unwrap();
    assert_eq!(v.violating_since, limit);
    assert!(
        v.reason.contains("unused for more than 45d"),
        "{}",
        v.reason
    );

    // A grace for never-used keys does not apply to a used key.
    p.never_used_grace = Some(dur(DAY));
    assert_eq!(eval_one(p, &k, limit), None);
}

#[test]
fn never_used_key_is_idle_from_creation_after_default_grace() {
    let mut p = policy("idle");
    p.max_idle = Some(dur(45 * DAY));
    let mut k = key("k1");
    k.created_at = 5 * DAY;
    let limit = 50 * DAY;
    assert_eq!(eval_one(p.clone(), &k, limit - 1), None);
    assert_eq!(eval_one(p.clone(), &k, limit), None);
    let v = eval_one(p, &k, limit + 1).unwrap();
    assert_eq!(v.violating_since, limit);
    assert!(v.reason.contains("never used"), "{}", v.reason);
}

#[test]
fn never_used_key_with_explicit_grace() {
    let mut p = policy("idle");
    p.max_idle = Some(dur(45 * DAY));
    p.never_used_grace = Some(dur(7 * DAY));
    let k = key("k1");
    assert_eq!(eval_one(p.clone(), &k, 7 * DAY), None);
    let v = eval_one(p.clone(), &k, 7 * DAY + 1).unwrap();
    assert_eq!(v.violating_since, 7 * DAY);
    // A longer grace than max_idle protects new keys longer.
    p.never_used_grace = Some(dur(60 * DAY));
    assert_eq!(eval_one(p.clone(), &k, 60 * DAY), None);
    assert!(eval_one(p, &k, 60 * DAY + 1).is_some());
}

#[test]
fn owner_lost_access_only_when_inactive() {
    let mut p = policy("lost");
    p.owner_lost_access = true;
    let mut k = key("k1");
    assert_eq!(eval_one(p.clone(), &k, 100), None);
    k.owner_access = OwnerAccess::Unknown;
    assert_eq!(
        eval_one(p.clone(), &k, 100),
        None,
        "unknown is not evidence"
    );
    k.owner_access = OwnerAccess::Inactive;
    let v = eval_one(p, &k, 100).unwrap();
    assert_eq!(v.violating_since, 100, "start unknown: counts from now");
}

#[test]
fn name_pattern_violates_when_the_name_does_not_match() {
    let mut p = policy("naming");
    p.name_pattern = Some(regex::Regex::new("^(ci|svc)-[a-z]+$").unwrap());
    let mut k = key("k1");
    k.name = "ci-deploy".to_string();
    assert_eq!(eval_one(p.clone(), &k, 100), None);
    k.name = "my key".to_string();
    let v = eval_one(p, &k, 100).unwrap();
    assert!(v.reason.contains("does not match"), "{}", v.reason);
}

#[test]
fn all_conditions_must_hold_and_the_last_to_start_sets_violating_since() {
    let mut p = max_age(90);
    p.max_idle = Some(dur(30 * DAY));
    let mut k = key("k1");
    k.last_used_at = Some(80 * DAY);
    // Old but recently used: max_idle does not hold.
    assert_eq!(eval_one(p.clone(), &k, 100 * DAY), None);
    // Idle but young: max_age does not hold.
    k.last_used_at = Some(DAY);
    assert_eq!(eval_one(p.clone(), &k, 60 * DAY), None);
    // Both: since = max(created+90d, last_used+30d).
    k.last_used_at = Some(70 * DAY);
    let v = eval_one(p, &k, 101 * DAY).unwrap();
    assert_eq!(v.violating_since, 100 * DAY);
    assert!(v.reason.contains("older than") && v.reason.contains("unused"));
}

#[test]
fn policy_without_condition_is_an_error() {
    let err = Policies::compile(&[max_age(1), policy("empty")], &[]).unwrap_err();
    assert!(
        matches!(err, PolicyError::NoCondition { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("policies[1] (empty)"), "{err}");
}

#[test]
fn duplicate_and_empty_policy_names_are_errors() {
    let err = Policies::compile(&[max_age(1), max_age(2)], &[]).unwrap_err();
    assert!(
        matches!(err, PolicyError::DuplicateName { index: 1, .. }),
        "{err}"
    );
    let mut p = max_age(1);
    p.name = " ".to_string();
    let err = Policies::compile(&[p], &[]).unwrap_err();
    assert!(matches!(err, PolicyError::EmptyName { index: 0 }), "{err}");
}

#[test]
fn invalid_glob_names_the_field() {
    let mut p = max_age(1);
    p.selector.key_name = vec!["ci-[".to_string()];
    let err = Policies::compile(&[p], &[]).unwrap_err();
    assert!(
        err.to_string().contains("policies[0] (age).match.key_name"),
        "{err}"
    );
    let mut e = exemption("r");
    e.project = Some("{a".to_string());
    let err = Policies::compile(&[max_age(1)], &[e]).unwrap_err();
    assert!(err.to_string().contains("exemptions[0].project"), "{err}");
}

fn selects(p: crate::config::PolicyConfig, k: &Key) -> bool {
    // max_age 0 with a key created at 0 and now = 1: every selected key violates.
    eval_one(p, k, 1).is_some()
}

fn selected_by(f: impl FnOnce(&mut crate::config::Selector)) -> crate::config::PolicyConfig {
    let mut p = policy("sel");
    p.max_age = Some(dur(0));
    f(&mut p.selector);
    p
}

#[test]
fn project_selector_matches_id_exactly_or_name_by_glob() {
    let k = key("k1"); // proj_a, "Alpha"
    assert!(selects(
        selected_by(|s| s.projects = vec!["proj_a".into()]),
        &k
    ));
    assert!(!selects(
        selected_by(|s| s.projects = vec!["proj_b".into()]),
        &k
    ));
    assert!(selects(
        selected_by(|s| s.projects = vec!["Al*".into()]),
        &k
    ));
    assert!(
        !selects(selected_by(|s| s.projects = vec!["al*".into()]), &k),
        "case matters"
    );
    // Ids are matched exactly, never as globs.
    assert!(!selects(
        selected_by(|s| s.projects = vec!["proj_*".into()]),
        &k
    ));
    // OR within the list.
    assert!(selects(
        selected_by(|s| s.projects = vec!["x".into(), "Alpha".into()]),
        &k
    ));
    let mut unnamed = k.clone();
    unnamed.project_name = None;
    assert!(!selects(
        selected_by(|s| s.projects = vec!["*".into()]),
        &unnamed
    ));
    assert!(selects(
        selected_by(|s| s.projects = vec!["proj_a".into()]),
        &unnamed
    ));
}

#[test]
fn organization_owner_type_and_key_name_selectors() {
    let mut k = key("k1");
    k.name = "team/ci-deploy".to_string();
    assert!(selects(
        selected_by(|s| s.organizations = vec!["ac*".into()]),
        &k
    ));
    assert!(!selects(
        selected_by(|s| s.organizations = vec!["globex".into()]),
        &k
    ));
    assert!(selects(
        selected_by(|s| s.owner_type = Some(OwnerTypeSelector::User)),
        &k
    ));
    assert!(!selects(
        selected_by(|s| s.owner_type = Some(OwnerTypeSelector::ServiceAccount)),
        &k
    ));
    let mut unknown = k.clone();
    unknown.owner.kind = OwnerType::Unknown;
    assert!(!selects(
        selected_by(|s| s.owner_type = Some(OwnerTypeSelector::User)),
        &unknown
    ));
    // `*` crosses `/`: names are not paths.
    assert!(selects(
        selected_by(|s| s.key_name = vec!["*ci-*".into()]),
        &k
    ));
    assert!(!selects(
        selected_by(|s| s.key_name = vec!["*CI-*".into()]),
        &k
    ));
    // AND across lists.
    assert!(!selects(
        selected_by(|s| {
            s.key_name = vec!["*ci-*".into()];
            s.organizations = vec!["globex".into()];
        }),
        &k
    ));
}

#[test]
fn owner_email_selector_is_case_insensitive_and_needs_an_email() {
    let k = key("k1"); // alice@example.com
    assert!(selects(
        selected_by(|s| s.owner_email = vec!["*@EXAMPLE.com".into()]),
        &k
    ));
    assert!(selects(
        selected_by(|s| s.owner_email = vec!["Alice@*".into()]),
        &k
    ));
    assert!(!selects(
        selected_by(|s| s.owner_email = vec!["*@example.org".into()]),
        &k
    ));
    let mut no_email = k.clone();
    no_email.owner.email = None;
    assert!(!selects(
        selected_by(|s| s.owner_email = vec!["*".into()]),
        &no_email
    ));
}

#[test]
fn exemption_by_key_id_name_glob_and_project() {
    let k = key("k1");
    let now = 2 * DAY;
    // (reason, key_id, key_name, project) → exempt?
    let ex = |reason: &str, key_id: Option<&str>, key_name: Option<&str>, project: Option<&str>| {
        let mut e = exemption(reason);
        e.key_id = key_id.map(String::from);
        e.key_name = key_name.map(String::from);
        e.project = project.map(String::from);
        e
    };
    let cases = vec![
        (ex("id", Some("k1"), None, None), true),
        (ex("id", Some("k2"), None, None), false),
        (ex("name", None, Some("name-*"), None), true),
        (ex("name", None, Some("other*"), None), false),
        (ex("pid", None, None, Some("proj_a")), true),
        (ex("pname", None, None, Some("Alp*")), true),
        (ex("pname", None, None, Some("Beta")), false),
        // All given fields must match.
        (ex("both", Some("k1"), None, Some("proj_b")), false),
        (ex("both", Some("k1"), None, Some("Alpha")), true),
    ];
    for (e, expected) in cases {
        let label = format!("{e:?}");
        let policies = Policies::compile(&[max_age(1)], &[e]).unwrap();
        let ev = policies.evaluate(&k, now);
        assert_eq!(ev.is_exempt(), expected, "{label}");
        // Violations are reported either way; acting is gated by the exemption.
        assert_eq!(ev.violations.len(), 1, "{label}");
        let obs = ev.observation(&k, "age");
        if expected {
            assert!(matches!(obs, Observation::Exempted { .. }), "{label}");
        } else {
            assert!(matches!(obs, Observation::Violating { .. }), "{label}");
        }
    }
}

#[test]
fn exemption_until_is_inclusive_then_expired_and_reported() {
    let k = key("k1");
    let mut e = exemption("migration");
    e.key_id = Some("k1".into());
    e.until = Some(10 * DAY);
    let policies = Policies::compile(&[max_age(1)], &[e]).unwrap();

    let at_until = policies.evaluate(&k, 10 * DAY);
    assert_eq!(
        at_until.exemption.as_ref().map(|h| h.reason.as_str()),
        Some("migration")
    );
    assert!(at_until.expired_exemptions.is_empty());

    let after = policies.evaluate(&k, 10 * DAY + 1);
    assert!(!after.is_exempt());
    assert_eq!(after.expired_exemptions.len(), 1);
    assert_eq!(after.expired_exemptions[0].index, 0);
    assert_eq!(after.expired_exemptions[0].until, Some(10 * DAY));
    assert!(matches!(
        after.observation(&k, "age"),
        Observation::Violating { .. }
    ));

    // An expired exemption of another key is not reported on this one.
    let other = key("k2");
    assert!(
        policies
            .evaluate(&other, 10 * DAY + 1)
            .expired_exemptions
            .is_empty()
    );
}

#[test]
fn first_active_exemption_wins_and_expired_ones_are_still_reported() {
    let k = key("k1");
    let mut expired = exemption("old");
    expired.key_id = Some("k1".into());
    expired.until = Some(DAY);
    let mut a = exemption("a");
    a.project = Some("proj_a".into());
    let mut b = exemption("b");
    b.key_name = Some("*".into());
    let policies = Policies::compile(&[max_age(1)], &[expired, a, b]).unwrap();
    let ev = policies.evaluate(&k, 5 * DAY);
    let hit = ev.exemption.unwrap();
    assert_eq!((hit.reason.as_str(), hit.index), ("a", 1));
    assert_eq!(ev.expired_exemptions.len(), 1);
}

#[test]
fn empty_exemption_is_an_error() {
    let err = Policies::compile(&[max_age(1)], &[exemption("all")]).unwrap_err();
    assert!(
        matches!(err, PolicyError::EmptyExemption { index: 0 }),
        "{err}"
    );
}

#[test]
fn observation_for_unselected_policy_is_compliant() {
    let mut p = max_age(1);
    p.selector.projects = vec!["proj_z".into()];
    let policies = Policies::compile(&[p], &[]).unwrap();
    let k = key("k1");
    let ev = policies.evaluate(&k, 100 * DAY);
    assert!(ev.violations.is_empty());
    assert_eq!(ev.observation(&k, "age"), Observation::Compliant);
    assert_eq!(ev.observation(&k, "removed-policy"), Observation::Compliant);
    assert_eq!(policies.names().collect::<Vec<_>>(), vec!["age"]);
}

#[test]
fn example_policies_from_the_issue_evaluate_as_written() {
    let mut rotate = policy("rotate-90d");
    rotate.max_age = Some(dur(90 * DAY));
    rotate.action = Action::Revoke;
    rotate.warn_before = dur(14 * DAY);
    let mut idle = policy("idle-45d");
    idle.max_idle = Some(dur(45 * DAY));
    let policies = Policies::compile(&[rotate, idle], &[]).unwrap();

    let mut k = key("k1");
    k.last_used_at = Some(99 * DAY);
    let ev = policies.evaluate(&k, 100 * DAY);
    let names: Vec<_> = ev.violations.iter().map(|v| v.policy.as_str()).collect();
    assert_eq!(names, vec!["rotate-90d"]);
    assert_eq!(ev.violations[0].action, Action::Revoke);
    assert_eq!(ev.violations[0].warn_before, 14 * DAY);

    k.last_used_at = None;
    let ev = policies.evaluate(&k, 100 * DAY);
    let names: Vec<_> = ev.violations.iter().map(|v| v.policy.as_str()).collect();
    assert_eq!(names, vec!["rotate-90d", "idle-45d"]);
}

fn facts(unrestricted: Option<&[&str]>, used: &[(&str, i64)]) -> std::sync::Arc<KeyFacts> {
    let mut f = KeyFacts::default();
    f.insert(
        "acme",
        OrgFacts {
            unrestricted: unrestricted.map(|ids| ids.iter().map(|i| (*i).to_string()).collect()),
            used_at: used.iter().map(|(k, at)| ((*k).to_string(), *at)).collect(),
        },
    );
    std::sync::Arc::new(f)
}

#[test]
fn unrestricted_matches_only_keys_known_to_have_all_permissions() {
    let mut p = policy("all-perms");
    p.unrestricted = true;
    let compiled = Policies::compile(&[p.clone()], &[]).unwrap();
    let with = compiled.with_facts(facts(Some(&["k_all"]), &[]));
    let v = with.evaluate(&key("k_all"), 5 * DAY);
    assert_eq!(v.violations.len(), 1);
    assert_eq!(
        v.violations[0].violating_since,
        5 * DAY,
        "counts from detection"
    );
    assert!(v.violations[0].reason.contains("All permissions"));
    // Other scopes, or scopes the log does not carry: not known to be unrestricted.
    let v = with.evaluate(&key("k_scoped"), 5 * DAY);
    assert!(v.violations.is_empty() && v.undecided.is_empty());
    // The log unreadable (or no facts at all): undecided, never a violation or compliance.
    for unknown in [compiled.with_facts(facts(None, &[])), compiled.clone()] {
        let v = unknown.evaluate(&key("k_all"), 5 * DAY);
        assert!(v.violations.is_empty());
        assert_eq!(v.undecided, vec!["all-perms".to_string()]);
    }
    // Another condition that fails decides without the log.
    p.max_age = Some(dur(30 * DAY));
    let v = Policies::compile(&[p], &[])
        .unwrap()
        .with_facts(facts(None, &[]))
        .evaluate(&key("k_all"), 5 * DAY);
    assert!(v.violations.is_empty() && v.undecided.is_empty());
}

#[test]
fn unrestricted_alone_is_a_condition() {
    let mut p = policy("all-perms");
    p.unrestricted = true;
    assert!(Policies::compile(&[p], &[]).is_ok());
}

#[test]
fn max_idle_counts_the_later_of_last_used_at_and_the_last_usage_bucket() {
    let mut p = policy("idle");
    p.max_idle = Some(dur(30 * DAY));
    let compiled = Policies::compile(&[p], &[]).unwrap();
    let now = 100 * DAY;
    // Stale last_used_at, recent usage: not idle.
    let mut stale = key("k_stale");
    stale.last_used_at = Some(10 * DAY);
    let f = facts(Some(&[]), &[("k_stale", 95 * DAY), ("k_fresh", 20 * DAY)]);
    let with = compiled.with_facts(f);
    assert!(with.evaluate(&stale, now).violations.is_empty());
    assert_eq!(compiled.evaluate(&stale, now).violations.len(), 1);
    // Recent last_used_at, old usage bucket: not idle either (the later one counts).
    let mut fresh = key("k_fresh");
    fresh.last_used_at = Some(90 * DAY);
    assert!(with.evaluate(&fresh, now).violations.is_empty());
    // Both old: idle since the later one, and the reason says usage saw it.
    let mut old = key("k_fresh");
    old.last_used_at = Some(5 * DAY);
    let v = with.evaluate(&old, now).violations.pop().unwrap();
    assert_eq!(v.violating_since, 50 * DAY);
    assert!(v.reason.contains("per its usage"), "{}", v.reason);
    // Never used per last_used_at, used per usage: counts as used.
    let mut never = key("k_stale");
    never.created_at = 0;
    assert!(with.evaluate(&never, now).violations.is_empty());
}

/// A listing that omitted `last_used_at` (the spec requires it) leaves `max_idle` undecided:
/// never "never used", which would revoke a key in daily use. Usage that saw the key decides;
/// another condition that fails decides without it.
#[test]
fn max_idle_is_undecided_when_the_listing_omitted_the_last_use() {
    let mut p = policy("idle");
    p.max_idle = Some(dur(30 * DAY));
    let compiled = Policies::compile(&[p.clone()], &[]).unwrap();
    let now = 400 * DAY;
    let mut omitted = key("k_omitted");
    omitted.last_used_unknown = true;
    let v = compiled.evaluate(&omitted, now);
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    assert_eq!(v.undecided, vec!["idle".to_string()]);
    // `null` is a known answer: no use recorded, idle since creation.
    let v = compiled.evaluate(&key("k_null"), now);
    assert_eq!(v.violations.len(), 1);
    assert!(v.undecided.is_empty());
    // Usage saw the key used 40 days ago: that decides.
    let v = (compiled.with_facts(facts(None, &[("k_omitted", now - 40 * DAY)])))
        .evaluate(&omitted, now);
    assert_eq!(v.violations.len(), 1, "{:?}", v.undecided);
    assert!(v.violations[0].reason.contains("per its usage"));
    // A key younger than `max_age` complies whatever its use.
    p.max_age = Some(dur(500 * DAY));
    let v = Policies::compile(&[p], &[])
        .unwrap()
        .evaluate(&omitted, now);
    assert!(v.violations.is_empty() && v.undecided.is_empty());
}
