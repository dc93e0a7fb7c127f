//! The property test of enforcement (issue 3): random small organisations, policies,
//! exemptions, caps, faults and clocks, 2–3 real sweeps each against the simulator, checked
//! against an independent oracle of what must be deleted and when. Never asserts on timing.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct PolicySpec {
    max_age: Option<i64>,
    max_idle: Option<i64>,
    grace: Option<i64>,
    revoke: bool,
    warn_before: i64,
    final_notice: i64,
    /// None: any owner; Some(true): users only; Some(false): service accounts only.
    users_only: Option<bool>,
}

#[derive(Debug, Clone)]
struct ExemptionSpec {
    key_index: usize,
    /// Seconds after the first sweep the exemption lapses; None = forever.
    until: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
enum FaultSpec {
    /// Before sweep `sweep`, the key listing of project `project` answers 500.
    Incomplete { sweep: usize, project: usize },
    /// Every DELETE of key `key` answers 500 during sweep `sweep`.
    FailedDelete { sweep: usize, key: usize },
    /// Before sweep `sweep`: an intent for key `key` as if a crash hit after writing it;
    /// `deleted` whether the DELETE went through (done via the simulator, no outcome).
    Crash {
        sweep: usize,
        key: usize,
        deleted: bool,
    },
}

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    projects: usize,
    keys: usize,
    policies: Vec<PolicySpec>,
    exemptions: Vec<ExemptionSpec>,
    /// Gaps between sweeps in seconds (the first sweep is at NOW).
    gaps: Vec<i64>,
    enforce: bool,
    /// (per run, per project %, per day); None = lifted.
    caps: Option<(u32, u32, u32)>,
    faults: Vec<FaultSpec>,
}

fn days(lo: i64, hi: i64) -> impl Strategy<Value = i64> {
    (lo..=hi).prop_map(|d| d * DAY)
}

fn policy() -> impl Strategy<Value = PolicySpec> {
    (
        prop::option::of(prop::sample::select(vec![30i64, 90, 180, 365])),
        prop::option::of(prop::sample::select(vec![20i64, 45, 90])),
        prop::option::of(days(0, 30)),
        prop::bool::weighted(0.75),
        days(0, 20),
        0i64..=100,
        prop::sample::select(vec![None, Some(true), Some(false)]),
    )
        .prop_map(|(age, idle, grace, revoke, warn, fin_pct, owner)| {
            let max_age = if age.is_none() && idle.is_none() {
                Some(90)
            } else {
                age
            };
            PolicySpec {
                max_age: max_age.map(|d| d * DAY),
                max_idle: idle.map(|d| d * DAY),
                grace: idle.and(grace),
                revoke,
                warn_before: warn,
                final_notice: warn * fin_pct / 100 / 3600 * 3600,
                users_only: owner,
            }
        })
}

fn fault(sweeps: usize) -> impl Strategy<Value = FaultSpec> {
    prop_oneof![
        (0..sweeps, 0usize..3)
            .prop_map(|(sweep, project)| FaultSpec::Incomplete { sweep, project }),
        (0..sweeps, 0usize..64).prop_map(|(sweep, key)| FaultSpec::FailedDelete { sweep, key }),
        (1..sweeps, 0usize..64, any::<bool>()).prop_map(|(sweep, key, deleted)| {
            FaultSpec::Crash {
                sweep,
                key,
                deleted,
            }
        }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..=3).prop_flat_map(|sweeps| {
        (
            any::<u64>(),
            1usize..=3,
            4usize..=10,
            prop::collection::vec(policy(), 1..=3),
            prop::collection::vec(
                (0usize..64, prop::option::of(days(0, 30)))
                    .prop_map(|(key_index, until)| ExemptionSpec { key_index, until }),
                0..=2,
            ),
            prop::collection::vec(
                prop_oneof![Just(0i64), days(1, 20), (1i64..=40 * DAY)],
                sweeps - 1,
            ),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.35, (1u32..=4, 10u32..=100, 1u32..=6)),
            prop::option::weighted(0.4, prop::collection::vec(fault(sweeps), 1..=3)),
        )
            .prop_map(
                |(seed, projects, keys, policies, exemptions, gaps, enforce, caps, faults)| Case {
                    seed,
                    projects,
                    keys,
                    policies,
                    exemptions,
                    gaps,
                    enforce,
                    caps,
                    faults: faults.unwrap_or_default(),
                },
            )
    })
}

/// A key as the oracle sees it.
#[derive(Debug, Clone)]
struct OKey {
    project: String,
    id: String,
    user: bool,
    created_at: i64,
    last_used_at: Option<i64>,
}

/// When the policy's conditions all hold at `t`, the moment the last of them began.
fn violating_since(k: &OKey, p: &PolicySpec, t: i64) -> Option<i64> {
    match p.users_only {
        Some(users) if users != k.user => return None,
        _ => {}
    }
    let mut since = i64::MIN;
    if let Some(max_age) = p.max_age {
        if t - k.created_at <= max_age {
            return None;
        }
        since = since.max(k.created_at + max_age);
    }
    if let Some(max_idle) = p.max_idle {
        let (from, limit) = match k.last_used_at {
            Some(last) => (last, max_idle),
            None => (k.created_at, p.grace.unwrap_or(max_idle)),
        };
        if t - from <= limit {
            return None;
        }
        since = since.max(from + limit);
    }
    Some(since)
}

/// The independent oracle: which keys enforcement deletes over the sweeps at `times`, with
/// no faults, caps lifted, service accounts notify-only. A finding opens when a policy is
/// first seen violated (not exempted) with deadline max(since, detected + warn_before); it
/// closes when the key stops violating or is exempted; a user key goes in the first later
/// sweep at or past the deadline of one of its open revoke findings.
fn oracle(
    keys: &[OKey],
    policies: &[PolicySpec],
    exempt: &[(String, Option<i64>)],
    times: &[i64],
) -> BTreeMap<String, usize> {
    let mut deleted = BTreeMap::new();
    let mut open: HashMap<(usize, usize), i64> = HashMap::new();
    for (sweep, &t) in times.iter().enumerate() {
        let mut now_deleted = Vec::new();
        for (ki, k) in keys.iter().enumerate() {
            if deleted.contains_key(&k.id) {
                continue;
            }
            let exempted = exempt
                .iter()
                .any(|(id, until)| id == &k.id && until.is_none_or(|u| t <= u));
            for (pi, p) in policies.iter().enumerate() {
                let since = if exempted {
                    None
                } else {
                    violating_since(k, p, t)
                };
                match (since, open.get(&(ki, pi))) {
                    (None, _) => {
                        open.remove(&(ki, pi));
                    }
                    (Some(since), None) => {
                        open.insert((ki, pi), since.max(t + p.warn_before));
                    }
                    (Some(_), Some(&deadline)) => {
                        if p.revoke && k.user && t >= deadline {
                            now_deleted.push(k.id.clone());
                        }
                    }
                }
            }
        }
        for id in now_deleted {
            deleted.insert(id, sweep);
        }
    }
    deleted
}

fn config_tables(c: &Case, keys: &[OKey]) -> String {
    // The oracle counts idleness from `last_used_at` alone; usage buckets (issue 16) count a
    // key as used until its last bucket's end, which tests/it/intel_data.rs covers.
    let mut t = String::from("\n[usage]\nenabled = false\n");
    for (i, p) in c.policies.iter().enumerate() {
        t.push_str(&format!("\n[[policies]]\nname = \"p{i}\"\n"));
        if let Some(a) = p.max_age {
            t.push_str(&format!("max_age = \"{}s\"\n", a));
        }
        if let Some(a) = p.max_idle {
            t.push_str(&format!("max_idle = \"{}s\"\n", a));
        }
        if let Some(g) = p.grace {
            t.push_str(&format!("never_used_grace = \"{}s\"\n", g));
        }
        t.push_str(&format!(
            "action = \"{}\"\nwarn_before = \"{}s\"\nfinal_notice = \"{}s\"\n",
            if p.revoke { "revoke" } else { "notify" },
            p.warn_before,
            p.final_notice
        ));
        if let Some(users) = p.users_only {
            t.push_str(&format!(
                "[policies.match]\nowner_type = \"{}\"\n",
                if users { "user" } else { "service_account" }
            ));
        }
    }
    for e in &c.exemptions {
        let k = &keys[e.key_index % keys.len()];
        t.push_str(&format!(
            "\n[[exemptions]]\nkey_id = \"{}\"\nreason = \"test\"\n",
            k.id
        ));
        if let Some(u) = e.until {
            t.push_str(&format!("until = \"{}\"\n", rfc3339(NOW + u)));
        }
    }
    let (run, pct, day) = c.caps.unwrap_or((100_000, 100, 100_000));
    t.push_str(&safety(run, pct, day, ""));
    t
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run_case_async(c))
}

async fn run_case_async(c: &Case) -> Result<(), TestCaseError> {
    let mut org = SimOrg::generate(c.projects, c.keys, c.seed, NOW);
    // The oracle is issue 3's: keys that never expire. An expired key ends its findings as
    // `expired` instead (issue 12), which `tests/it/expire.rs` covers.
    for k in org.projects.iter_mut().flat_map(|p| p.keys.iter_mut()) {
        k.expires_at = None;
    }
    let keys = oracle_keys(&org);
    let projects = active_project_ids(&org);
    let mut times = vec![NOW];
    for g in &c.gaps {
        times.push(times.last().unwrap() + g);
    }
    let expected = oracle(&keys, &c.policies, &exempt_until(c, &keys), &times);
    let revoke_policies = revoke_policy_names(c);

    let sim = start_sim(org.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mode = if c.enforce { "enforce" } else { "dry-run" };
    let text = config_text(
        &sim,
        &dir.path().join("s.db"),
        mode,
        &config_tables(c, &keys),
    );
    let s = sweeper(&text);
    let store = s.store().unwrap().clone();
    let mut test_intents: Vec<(i64, String, bool)> = Vec::new();
    let mut crash_removed: BTreeSet<String> = BTreeSet::new();
    let mut per_sweep: Vec<(i64, BTreeSet<String>)> = Vec::new();

    for (i, &t) in times.iter().enumerate() {
        sim.faults().clear();
        // One crash per key and sweep: two interrupted deletes of one key (one that went
        // through, one that did not) cannot both be settled as their spec says.
        let mut crashed_now = BTreeSet::new();
        for f in &c.faults {
            match *f {
                FaultSpec::Incomplete { sweep, project } if sweep == i => {
                    let p = &projects[project % projects.len()];
                    sim.faults()
                        .add(Fault::on_list_keys(p).respond(FaultKind::Status(500)));
                }
                FaultSpec::FailedDelete { sweep, key } if sweep == i => {
                    let k = &keys[key % keys.len()];
                    sim.faults().add(
                        Fault::on_delete_key(&k.project, &k.id).respond(FaultKind::Status(500)),
                    );
                }
                FaultSpec::Crash {
                    sweep,
                    key,
                    deleted,
                } if sweep == i => {
                    let k = &keys[key % keys.len()];
                    let not_the_oracles = deleted && !expected.contains_key(&k.id);
                    if !sim.key_exists(&k.project, &k.id)
                        || not_the_oracles
                        || !crashed_now.insert(k.id.clone())
                    {
                        continue;
                    }
                    let policy = revoke_policies.first().cloned();
                    let seq = crash_intent(&store, k, times[i - 1], policy);
                    if deleted {
                        sim.remove_key(&k.project, &k.id).unwrap();
                        crash_removed.insert(k.id.clone());
                    }
                    test_intents.push((seq, k.id.clone(), deleted));
                }
                _ => {}
            }
        }
        let report = sweep(&s, t).await;
        per_sweep.push((t, deleted_in(&report)));

        check_caps(c, i, per_sweep[i].1.len(), &report)?;
    }
    sim.faults().clear();

    check_deleted(c, &sim, &keys, &per_sweep, &crash_removed, &expected)?;
    check_day_cap(c, &per_sweep)?;
    check_audit(c, &store, &test_intents)?;
    Ok(())
}

/// The names of the case's revoking policies.
fn revoke_policy_names(c: &Case) -> Vec<String> {
    (c.policies.iter().enumerate())
        .filter(|(_, p)| p.revoke)
        .map(|(i, _)| format!("p{i}"))
        .collect()
}

/// The case's exemptions: (key id, until).
fn exempt_until(c: &Case, keys: &[OKey]) -> Vec<(String, Option<i64>)> {
    c.exemptions
        .iter()
        .map(|e| {
            (
                keys[e.key_index % keys.len()].id.clone(),
                e.until.map(|u| NOW + u),
            )
        })
        .collect()
}

fn oracle_keys(org: &SimOrg) -> Vec<OKey> {
    active_keys(org)
        .map(|(p, k)| OKey {
            project: p.to_string(),
            id: k.id.clone(),
            user: !k.owner.is_service_account(),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        })
        .collect()
}

/// An intent written as a crashed keysweep would have left it, for `k`; returns its seq.
fn crash_intent(store: &Store, k: &OKey, at: i64, policy: Option<String>) -> i64 {
    let mut intent = AuditRecord::new(
        at,
        "test-crash",
        AuditKind::Intent,
        config::Mode::Enforce,
        "test",
        format!("deleting key {}", k.id),
    );
    intent.organization = Some(ORG.into());
    intent.project_id = Some(k.project.clone());
    intent.key_id = Some(k.id.clone());
    intent.policy = policy;
    audit::append_durable(store, &intent).unwrap().seq
}

/// Caps are never exceeded, per run and per project.
fn check_caps(c: &Case, i: usize, n: usize, report: &SweepReport) -> Result<(), TestCaseError> {
    let n = n as u32;
    if let Some((run, pct, _)) = c.caps {
        prop_assert!(n <= run, "sweep {i} deleted {n} > run cap {run}");
        for org in &report.inventory.orgs {
            for p in &org.projects {
                let in_p = report
                    .revocations
                    .iter()
                    .filter(|r| r.deleted() && r.project_id == p.project.id)
                    .map(|r| r.key_ids.len())
                    .sum::<usize>();
                let cap = ((pct as usize * p.keys.keys) / 100).max(1);
                prop_assert!(in_p <= cap, "project {} got {in_p} > {cap}", p.project.id);
            }
        }
    }
    Ok(())
}

/// What is gone is exactly what keysweep deleted (plus what the test's crashes removed), and
/// that agrees with the oracle.
fn check_deleted(
    c: &Case,
    sim: &SimServer,
    keys: &[OKey],
    per_sweep: &[(i64, BTreeSet<String>)],
    crash_removed: &BTreeSet<String>,
    expected: &BTreeMap<String, usize>,
) -> Result<(), TestCaseError> {
    // What is gone, and what keysweep itself deleted.
    let gone_ids: BTreeSet<String> = keys
        .iter()
        .filter(|k| !sim.key_exists(&k.project, &k.id))
        .map(|k| k.id.clone())
        .collect();
    let by_keysweep: BTreeSet<String> = per_sweep
        .iter()
        .flat_map(|(_, d)| d.iter().cloned())
        .collect();
    prop_assert_eq!(
        &gone_ids,
        &by_keysweep
            .union(crash_removed)
            .cloned()
            .collect::<BTreeSet<_>>()
    );
    let oracle_set: BTreeSet<String> = expected.keys().cloned().collect();

    if !c.enforce {
        prop_assert!(by_keysweep.is_empty(), "dry run deleted {by_keysweep:?}");
    } else if c.caps.is_none() && c.faults.is_empty() {
        prop_assert_eq!(&by_keysweep, &oracle_set);
        // And in the very sweep the oracle says.
        for (i, (_, d)) in per_sweep.iter().enumerate() {
            let want: BTreeSet<String> = expected
                .iter()
                .filter(|(_, s)| **s == i)
                .map(|(k, _)| k.clone())
                .collect();
            prop_assert_eq!(d, &want, "sweep {}", i);
        }
    } else {
        prop_assert!(
            by_keysweep.is_subset(&oracle_set),
            "deleted {:?} not in oracle {:?}",
            by_keysweep.difference(&oracle_set).collect::<Vec<_>>(),
            oracle_set
        );
    }

    Ok(())
}

/// The rolling day cap, over the sweeps' own clock.
fn check_day_cap(c: &Case, per_sweep: &[(i64, BTreeSet<String>)]) -> Result<(), TestCaseError> {
    if let Some((_, _, day)) = c.caps {
        for (t, _) in per_sweep {
            let in_window: usize = per_sweep
                .iter()
                .filter(|(u, _)| *u <= *t && *u >= t - DAY)
                .map(|(_, d)| d.len())
                .sum();
            prop_assert!(in_window as u32 <= day, "{in_window} > day cap {day}");
        }
    }

    Ok(())
}

/// The audit log verifies, every intent has an outcome or a reconciliation, and nothing
/// was deleted before its warning period and final notice.
fn check_audit(
    c: &Case,
    store: &Store,
    test_intents: &[(i64, String, bool)],
) -> Result<(), TestCaseError> {
    prop_assert!(verify(store).is_ok());
    let rows = audit_rows(store);
    prop_assert!(
        store
            .with_conn(audit::unmatched_intents)
            .unwrap()
            .is_empty()
    );
    for (seq, key, deleted) in test_intents {
        let rec = rows
            .iter()
            .find(|r| r.record.kind == AuditKind::Reconciled && r.record.refers_to == Some(*seq));
        prop_assert!(rec.is_some(), "intent {seq} for {key} not reconciled");
        prop_assert_eq!(
            &rec.unwrap().record.response["deleted"],
            &Value::Bool(*deleted)
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.record.kind == AuditKind::Outcome && r.record.message.starts_with("deleted"))
    {
        let intent = rows
            .iter()
            .find(|i| Some(i.seq) == r.record.refers_to)
            .unwrap();
        let key = intent.record.key_id.clone().unwrap();
        for policy in intent.record.policy.as_deref().unwrap_or("").split(',') {
            let spec = &c.policies[policy[1..].parse::<usize>().unwrap()];
            let decision = rows
                .iter()
                .rfind(|d| {
                    d.record.kind == AuditKind::Decision
                        && d.record.key_id.as_deref() == Some(key.as_str())
                        && d.record.policy.as_deref() == Some(policy)
                        && d.seq < intent.seq
                })
                .unwrap();
            let deadline = decision.record.inputs["deadline"].as_i64().unwrap();
            prop_assert!(deadline >= decision.record.at + spec.warn_before);
            prop_assert!(
                intent.record.at >= deadline,
                "{key} deleted before its deadline"
            );
            prop_assert!(
                rows.iter().any(|n| n.seq > decision.seq
                    && n.seq < intent.seq
                    && n.record.key_id.as_deref() == Some(key.as_str())
                    && n.record.policy.as_deref() == Some(policy)
                    && n.record.response["notices"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "final_notice"))),
                "{key}: no final notice before the delete"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        cases: 24,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn enforcement_matches_the_oracle_and_the_rails_hold(c in case()) {
        run_case(&c)?;
    }
}
