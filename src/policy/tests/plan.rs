//! Unit tests of `policy::plan`: each safety rail on its own, at its boundary.

use std::collections::{BTreeMap, BTreeSet};

use super::{key, sa_key};
use crate::config::{Mode, Safety, ServiceAccountKeys};
use crate::inventory::{
    Inventory, Key, KeyTally, Listing, OrgInventory, OwnerType, ProjectInventory, ProjectRef,
};
use crate::policy::finding::FindingId;
use crate::policy::plan::{
    Candidate, Plan, PlanInput, ProjectFacts, ProjectKey, Withheld, Write, default_safety, plan,
    project_cap, project_facts,
};

fn lifted() -> Safety {
    Safety {
        max_revocations_per_run: 100_000,
        max_revocations_per_project_percent: 100,
        max_revocations_per_day: 100_000,
        ..default_safety()
    }
}

fn candidate(k: &Key, policy: &str, deadline: i64) -> Candidate {
    Candidate {
        finding: FindingId {
            organization: k.organization.clone(),
            project_id: k.project_id.clone(),
            key_id: k.id.clone(),
            policy: policy.to_string(),
        },
        key: k.clone(),
        deadline,
        write: Write::Delete,
    }
}

fn expire_candidate(k: &Key, policy: &str, deadline: i64) -> Candidate {
    Candidate {
        write: Write::SetExpiry { to: deadline },
        ..candidate(k, policy, deadline)
    }
}

/// Complete facts for every project of the keys, `extra` more keys per project than given.
fn facts(keys: &[Key], extra: usize) -> BTreeMap<ProjectKey, ProjectFacts> {
    let mut out: BTreeMap<ProjectKey, ProjectFacts> = BTreeMap::new();
    for k in keys {
        let f = out
            .entry((k.organization.clone(), k.project_id.clone()))
            .or_insert_with(|| ProjectFacts {
                complete: true,
                key_count: extra,
                service_accounts: BTreeMap::new(),
            });
        f.key_count += 1;
        if k.owner.kind == OwnerType::ServiceAccount {
            f.service_accounts
                .entry(k.owner.id.clone().unwrap())
                .or_default()
                .insert(k.id.clone());
        }
    }
    out
}

fn run(
    candidates: &[Candidate],
    projects: &BTreeMap<ProjectKey, ProjectFacts>,
    safety: &Safety,
    mode: Mode,
    revoked_last_24h: u32,
    kill_switch: bool,
) -> Plan {
    plan(&PlanInput {
        candidates,
        projects,
        mode,
        safety,
        revoked_last_24h,
        kill_switch,
    })
}

fn revoked_ids(p: &Plan) -> Vec<String> {
    p.revoke
        .iter()
        .flat_map(|a| a.keys().iter().map(|k| k.id.clone()))
        .collect()
}

fn withheld_ids(p: &Plan, reason: Withheld) -> Vec<String> {
    p.withheld
        .iter()
        .filter(|w| w.reason == reason)
        .flat_map(|w| w.action.keys().iter().map(|k| k.id.clone()))
        .collect()
}

#[test]
fn default_safety_is_conservative_and_documented() {
    let s = default_safety();
    assert_eq!(s.max_revocations_per_run, 10);
    assert_eq!(s.max_revocations_per_project_percent, 25);
    assert_eq!(s.max_revocations_per_day, 50);
    assert_eq!(s.service_account_keys, ServiceAccountKeys::NotifyOnly);
    assert_eq!(s.restore_expiry.as_secs(), 365 * 86_400);
    assert!(s.kill_switch_file.is_none());
}

#[test]
fn enforce_with_lifted_caps_revokes_every_user_key_once() {
    let keys: Vec<Key> = (0..5).map(|i| key(&format!("k{i}"))).collect();
    let mut cands: Vec<Candidate> = keys.iter().map(|k| candidate(k, "rotate", 10)).collect();
    // k0 violates two revoke policies: still one deletion, closing both findings.
    cands.push(candidate(&keys[0], "naming", 5));
    let p = run(&cands, &facts(&keys, 0), &lifted(), Mode::Enforce, 0, false);
    assert_eq!(revoked_ids(&p), vec!["k0", "k1", "k2", "k3", "k4"]);
    assert!(p.withheld.is_empty());
    assert_eq!(p.revocation_count(), 5);
    let first = &p.revoke[0];
    assert_eq!(first.findings.len(), 2);
    assert_eq!(first.deadline, 5, "earliest deadline of its findings");
    assert!(
        first.describe().contains("delete key k0"),
        "{}",
        first.describe()
    );
    // A hostile name's invisible characters never reach the line (Debug quoting alone keeps
    // them).
    let mut hostile = keys[1].clone();
    hostile.name = "ci\u{3164}\u{202E}prod".into();
    let p = run(
        &[candidate(&hostile, "rotate", 10)],
        &facts(&keys, 0),
        &lifted(),
        Mode::Enforce,
        0,
        false,
    );
    let line = p.revoke[0].describe();
    assert!(
        !line.contains('\u{3164}') && !line.contains('\u{202E}'),
        "{line:?}"
    );
}

#[test]
fn dry_run_and_kill_switch_revoke_nothing() {
    let keys: Vec<Key> = (0..3).map(|i| key(&format!("k{i}"))).collect();
    let cands: Vec<Candidate> = keys.iter().map(|k| candidate(k, "rotate", 10)).collect();
    let f = facts(&keys, 0);
    let dry = run(&cands, &f, &lifted(), Mode::DryRun, 0, false);
    assert!(dry.revoke.is_empty());
    assert_eq!(withheld_ids(&dry, Withheld::DryRun), vec!["k0", "k1", "k2"]);
    let killed = run(&cands, &f, &lifted(), Mode::Enforce, 0, true);
    assert!(killed.revoke.is_empty());
    assert_eq!(withheld_ids(&killed, Withheld::KillSwitch).len(), 3);
}

#[test]
fn dry_run_still_shows_what_caps_would_withhold() {
    let keys: Vec<Key> = (0..3).map(|i| key(&format!("k{i}"))).collect();
    let cands: Vec<Candidate> = keys.iter().map(|k| candidate(k, "rotate", 10)).collect();
    let safety = Safety {
        max_revocations_per_run: 2,
        ..lifted()
    };
    let dry = run(&cands, &facts(&keys, 0), &safety, Mode::DryRun, 0, false);
    assert_eq!(withheld_ids(&dry, Withheld::DryRun), vec!["k0", "k1"]);
    assert_eq!(withheld_ids(&dry, Withheld::CapPerRun), vec!["k2"]);
}

#[test]
fn incomplete_or_unknown_projects_are_not_touched() {
    let a = key("a1");
    let mut b = key("b1");
    b.project_id = "proj_b".to_string();
    let mut c = key("c1");
    c.project_id = "proj_c".to_string();
    let cands = vec![
        candidate(&a, "p", 1),
        candidate(&b, "p", 1),
        candidate(&c, "p", 1),
    ];
    let mut f = facts(&[a.clone(), b.clone()], 0);
    f.get_mut(&("acme".to_string(), "proj_b".to_string()))
        .unwrap()
        .complete = false;
    let p = run(&cands, &f, &lifted(), Mode::Enforce, 0, false);
    assert_eq!(revoked_ids(&p), vec!["a1"]);
    assert_eq!(
        withheld_ids(&p, Withheld::IncompleteListing),
        vec!["b1", "c1"]
    );
}

#[test]
fn per_run_cap_takes_the_earliest_deadlines_then_ids() {
    let keys: Vec<Key> = (0..12).map(|i| key(&format!("k{i:02}"))).collect();
    // Deadlines descend with the index, except k00/k01 which tie with k11.
    let cands: Vec<Candidate> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let deadline = if i < 2 {
                1
            } else {
                100 - i64::try_from(i).unwrap()
            };
            candidate(k, "rotate", deadline)
        })
        .collect();
    let safety = Safety {
        max_revocations_per_run: 10,
        ..lifted()
    };
    let p = run(&cands, &facts(&keys, 0), &safety, Mode::Enforce, 0, false);
    assert_eq!(p.revocation_count(), 10);
    assert_eq!(
        revoked_ids(&p)[..4],
        ["k00", "k01", "k11", "k10"].map(String::from)
    );
    assert_eq!(withheld_ids(&p, Withheld::CapPerRun), vec!["k03", "k02"]);
    assert_eq!(p.cap_withheld().count(), 2);
}

#[test]
fn per_project_percent_is_floored_but_at_least_one() {
    assert_eq!(project_cap(25, 3), 1);
    assert_eq!(project_cap(25, 8), 2);
    assert_eq!(project_cap(25, 11), 2);
    assert_eq!(project_cap(25, 12), 3);
    assert_eq!(project_cap(100, 7), 7);
    assert_eq!(project_cap(1, 0), 1);
    assert_eq!(project_cap(0, 100), 0);

    let keys: Vec<Key> = (0..4).map(|i| key(&format!("k{i}"))).collect();
    let cands: Vec<Candidate> = keys.iter().map(|k| candidate(k, "rotate", 10)).collect();
    let safety = Safety {
        max_revocations_per_project_percent: 25,
        ..lifted()
    };
    // 4 due of 8 keys: cap 2.
    let p = run(&cands, &facts(&keys, 4), &safety, Mode::Enforce, 0, false);
    assert_eq!(revoked_ids(&p), vec!["k0", "k1"]);
    assert_eq!(
        withheld_ids(&p, Withheld::CapPerProjectPercent),
        vec!["k2", "k3"]
    );

    let zero = Safety {
        max_revocations_per_project_percent: 0,
        ..lifted()
    };
    let p = run(&cands, &facts(&keys, 4), &zero, Mode::Enforce, 0, false);
    assert!(p.revoke.is_empty());
}

#[test]
fn per_day_cap_counts_earlier_revocations() {
    let keys: Vec<Key> = (0..5).map(|i| key(&format!("k{i}"))).collect();
    let cands: Vec<Candidate> = keys.iter().map(|k| candidate(k, "rotate", 10)).collect();
    let safety = Safety {
        max_revocations_per_day: 50,
        ..lifted()
    };
    let p = run(&cands, &facts(&keys, 0), &safety, Mode::Enforce, 48, false);
    assert_eq!(revoked_ids(&p), vec!["k0", "k1"]);
    assert_eq!(
        withheld_ids(&p, Withheld::CapPerDay),
        vec!["k2", "k3", "k4"]
    );
    let p = run(&cands, &facts(&keys, 0), &safety, Mode::Enforce, 60, false);
    assert!(p.revoke.is_empty());
}

#[test]
fn service_account_keys_are_notify_only_by_default() {
    let s1 = sa_key("s1", "proj_a", "svc_1");
    let u = key("u1");
    let cands = vec![candidate(&s1, "rotate", 1), candidate(&u, "rotate", 2)];
    let p = run(
        &cands,
        &facts(&[s1, u], 0),
        &lifted(),
        Mode::Enforce,
        0,
        false,
    );
    assert_eq!(revoked_ids(&p), vec!["u1"]);
    assert_eq!(
        withheld_ids(&p, Withheld::ServiceAccountNotifyOnly),
        vec!["s1"]
    );
}

#[test]
fn service_account_keys_are_enforced_one_by_one_under_enforce() {
    let safety = Safety {
        service_account_keys: ServiceAccountKeys::Enforce,
        ..lifted()
    };
    let s1 = sa_key("s1", "proj_a", "svc_1");
    let s2 = sa_key("s2", "proj_a", "svc_1");
    let all = [s1.clone(), s2.clone()];
    // Only s1 is due: it is deleted alone; its account and s2 are not touched.
    let p = run(
        &[candidate(&s1, "rotate", 1)],
        &facts(&all, 0),
        &safety,
        Mode::Enforce,
        0,
        false,
    );
    assert_eq!(revoked_ids(&p), vec!["s1"]);
    assert_eq!(p.revoke[0].revocations(), 1);
    assert!(p.revoke[0].describe().starts_with("delete key s1"));
    // A service-account key without an account id is still addressable by its key id.
    let mut anon = sa_key("s9", "proj_a", "x");
    anon.owner.id = None;
    let p = run(
        &[expire_candidate(&anon, "rotate", 5)],
        // Same project as `anon` (whose missing account id the facts builder cannot file).
        &facts(&[key("u1")], 1),
        &safety,
        Mode::Enforce,
        0,
        false,
    );
    assert_eq!(revoked_ids(&p), vec!["s9"]);
    assert_eq!(p.revoke[0].write, Write::SetExpiry { to: 5 });
}

#[test]
fn setting_an_expiry_counts_against_the_caps_like_a_delete() {
    let safety = Safety {
        max_revocations_per_run: 2,
        ..lifted()
    };
    let keys: Vec<Key> = (0..3).map(|i| key(&format!("k{i}"))).collect();
    let cands: Vec<Candidate> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| expire_candidate(k, "rotate", i as i64))
        .collect();
    let p = run(&cands, &facts(&keys, 0), &safety, Mode::Enforce, 0, false);
    assert_eq!(revoked_ids(&p), vec!["k0", "k1"]);
    assert_eq!(withheld_ids(&p, Withheld::CapPerRun), vec!["k2"]);
    // The kill switch and dry-run stop them too.
    let p = run(&cands, &facts(&keys, 0), &lifted(), Mode::Enforce, 0, true);
    assert_eq!(withheld_ids(&p, Withheld::KillSwitch).len(), 3);
    let p = run(&cands, &facts(&keys, 0), &lifted(), Mode::DryRun, 0, false);
    assert_eq!(withheld_ids(&p, Withheld::DryRun).len(), 3);
}

#[test]
fn one_key_gets_one_write_a_delete_before_an_expiry_and_the_earliest_expiry() {
    let k = key("k1");
    let both = [expire_candidate(&k, "a", 50), expire_candidate(&k, "b", 30)];
    let p = run(
        &both,
        &facts(std::slice::from_ref(&k), 0),
        &lifted(),
        Mode::Enforce,
        0,
        false,
    );
    assert_eq!(p.revoke.len(), 1);
    assert_eq!(p.revoke[0].write, Write::SetExpiry { to: 30 });
    assert_eq!(p.revoke[0].findings.len(), 2);
    let mixed = [expire_candidate(&k, "a", 10), candidate(&k, "b", 40)];
    let p = run(
        &mixed,
        &facts(std::slice::from_ref(&k), 0),
        &lifted(),
        Mode::Enforce,
        0,
        false,
    );
    assert_eq!(p.revoke.len(), 1);
    assert_eq!(p.revoke[0].write, Write::Delete);
}

#[test]
fn unknown_owner_type_keys_go_through_the_key_endpoint() {
    let mut k = key("k1");
    k.owner.kind = OwnerType::Unknown;
    let p = run(
        &[candidate(&k, "rotate", 1)],
        &facts(std::slice::from_ref(&k), 0),
        &lifted(),
        Mode::Enforce,
        0,
        false,
    );
    assert_eq!(revoked_ids(&p), vec!["k1"]);
}

#[test]
fn project_facts_from_an_inventory() {
    let s1 = sa_key("s1", "proj_a", "svc_1");
    let u = key("u1");
    let project = |id: &str| ProjectRef {
        organization: "acme".to_string(),
        id: id.to_string(),
        name: None,
        archived: false,
    };
    let inv = Inventory {
        orgs: vec![
            OrgInventory {
                unauthorized: false,
                organization: "acme".to_string(),
                projects: vec![
                    ProjectInventory {
                        project: project("proj_a"),
                        keys: vec![s1, u],
                        listing: Listing::Complete,
                    },
                    ProjectInventory {
                        project: project("proj_b"),
                        keys: vec![],
                        listing: Listing::Incomplete("page 3 failed".to_string()),
                    },
                ],
                error: None,
                admin_keys: vec![],
            },
            OrgInventory {
                unauthorized: false,
                organization: "globex".to_string(),
                projects: vec![ProjectInventory {
                    project: project("proj_g"),
                    keys: vec![],
                    listing: Listing::Complete,
                }],
                error: Some("admin key refused".to_string()),
                admin_keys: vec![],
            },
        ],
    };
    let f = project_facts(&inv.map_keys(|keys| KeyTally::of(keys, 0)));
    let a = &f[&("acme".to_string(), "proj_a".to_string())];
    assert!(a.complete);
    assert_eq!(a.key_count, 2);
    assert_eq!(
        a.service_accounts["svc_1"],
        BTreeSet::from(["s1".to_string()])
    );
    assert!(!f[&("acme".to_string(), "proj_b".to_string())].complete);
    assert!(!f[&("globex".to_string(), "proj_g".to_string())].complete);
}

#[test]
fn a_plan_line_neutralises_the_apis_redacted_value_as_it_does_the_name() {
    let mut k = key("k0");
    k.name = "ci\u{1b}[2J".into();
    k.redacted_value = "sk-\u{1b}]52;c;ZXZpbA==\u{7}\u{202E}abcd".into();
    let p = run(
        &[candidate(&k, "rotate", 10), expire_candidate(&k, "x", 10)],
        &facts(std::slice::from_ref(&k), 0),
        &lifted(),
        Mode::Enforce,
        0,
        false,
    );
    let line = p.revoke[0].describe();
    assert!(!line.chars().any(crate::text::is_unsafe), "{line:?}");
    assert!(line.contains("ZXZpbA=="), "{line}");
}
