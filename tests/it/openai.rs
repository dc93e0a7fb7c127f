//! The Administration API client and the inventory collector against the simulated API over real
//! HTTP: pagination, exact counts, wire-shape tolerance, retries, scripted faults, the size
//! limit, the requests-per-second ceiling, deletes, and the admin key never leaking into errors.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keysweep::inventory::{Inventory, Listing, OwnerType};
use keysweep::metrics::Metrics;
use keysweep::openai::{
    AdminClient, ClientShared, DeleteOutcome, Error, RateLimiter, collect_inventory,
};
use keysweep::sim::{Fault, FaultKind, SimOptions, SimOrg, SimOwnerRef, SimServer};

use crate::support::listing::{
    ADMIN_KEY, NOW, Setup, active_projects, assert_no_secret, config, limits, org_cfg, scan, setup,
    sim,
};
use crate::support::sim::start_sim_with;

const LIST_KEYS: &str = "GET /v1/organization/projects/{project_id}/api_keys";
const LIST_PROJECTS: &str = "GET /v1/organization/projects";

fn assert_error_clean(e: &Error) {
    assert_no_secret(&e.to_string());
    assert_no_secret(&format!("{e:?}"));
}

fn stat(sim: &SimServer, route: &str) -> u64 {
    sim.stats().get(route).copied().unwrap_or(0)
}

fn listing<'a>(inv: &'a Inventory, project: &str) -> &'a Listing {
    &inv.orgs[0]
        .projects
        .iter()
        .find(|p| p.project.id == project)
        .unwrap_or_else(|| panic!("project {project} missing"))
        .listing
}

fn incomplete_reason(inv: &Inventory, project: &str) -> String {
    match listing(inv, project) {
        Listing::Incomplete(r) => {
            assert_no_secret(r);
            r.clone()
        }
        Listing::Complete => panic!("{project} unexpectedly complete"),
    }
}

/// Every project but `except` is complete with exactly the simulator's keys.
fn assert_others_complete(inv: &Inventory, sim: &SimServer, except: &[&str]) {
    for p in &inv.orgs[0].projects {
        if except.contains(&p.project.id.as_str()) {
            continue;
        }
        assert_eq!(p.listing, Listing::Complete, "{}", p.project.id);
        let ours: BTreeSet<&str> = p.keys.iter().map(|k| k.id.as_str()).collect();
        let theirs: BTreeSet<String> = sim.keys(&p.project.id).into_iter().map(|k| k.id).collect();
        assert_eq!(ours, theirs.iter().map(String::as_str).collect());
    }
}

// ---- the "done when" check ----------------------------------------------------------------------

#[tokio::test]
async fn seven_projects_of_250_keys_exactly_1750_keys_in_21_key_pages() {
    let org = SimOrg::generate(7, 250, 1, NOW);
    let sim = sim(org.clone()).await;
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;

    assert!(inv.is_complete(), "{inv:?}");
    assert_eq!(inv.orgs[0].error, None);
    assert_eq!(inv.orgs[0].projects.len(), 7);
    assert_eq!(inv.keys().count(), 1750);
    for p in &inv.orgs[0].projects {
        assert_eq!(p.keys.len(), 250, "{}", p.project.id);
    }
    assert_others_complete(&inv, &sim, &[]);
    // One call per page of keys (3 per project), none fetched twice, and no extra endpoint.
    assert_eq!(stat(&sim, LIST_KEYS), 21);
    assert_eq!(stat(&sim, LIST_PROJECTS), 1);
    assert_eq!(
        stat(&sim, "GET /v1/organization/projects/{project_id}/users"),
        0
    );
    // The admin keys were read too (one page).
    assert_eq!(stat(&sim, "GET /v1/organization/admin_api_keys"), 1);
    assert_eq!(inv.orgs[0].admin_keys.len(), org.admin_api_keys.len());
}

#[tokio::test]
async fn keys_match_the_simulator_field_by_field() {
    let org = SimOrg::generate(2, 130, 7, NOW);
    let sim = sim(org.clone()).await;
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    assert!(inv.is_complete());
    let users: HashMap<&str, &str> = org
        .users
        .iter()
        .map(|u| (u.id.as_str(), u.email.as_str()))
        .collect();
    let mut never_used = 0;
    let mut service_accounts = 0;
    for p in &org.projects {
        if p.is_archived() {
            continue;
        }
        for sk in &p.keys {
            let k = inv.keys().find(|k| k.id == sk.id).unwrap();
            assert_eq!(k.project_id, p.id);
            assert_eq!(k.project_name, p.name);
            assert_eq!(k.name, sk.name);
            assert_eq!(k.redacted_value, sk.redacted_value);
            assert_eq!(k.created_at, sk.created_at);
            // `null` on the wire: no usage recorded.
            assert_eq!(k.last_used_at, sk.last_used_at);
            never_used += usize::from(sk.last_used_at.is_none());
            match &sk.owner {
                SimOwnerRef::User { id } => {
                    assert_eq!(k.owner.kind, OwnerType::User);
                    assert_eq!(k.owner.id.as_deref(), Some(id.as_str()));
                    assert_eq!(k.owner.email.as_deref(), users.get(id.as_str()).copied());
                }
                SimOwnerRef::ServiceAccount { id } => {
                    service_accounts += 1;
                    assert_eq!(k.owner.kind, OwnerType::ServiceAccount);
                    assert_eq!(k.owner.id.as_deref(), Some(id.as_str()));
                    assert_eq!(k.owner.email, None);
                }
            }
        }
    }
    // The generated mix really exercised both cases.
    assert!(never_used > 0 && service_accounts > 0);
}

#[tokio::test]
async fn include_archived_and_project_selection() {
    let org = SimOrg::generate(3, 5, 3, NOW);
    let active = active_projects(&org);
    let sim = sim(org.clone()).await;

    let s = setup(&sim, limits(), |o| o.include_archived = true);
    let inv = scan(&s).await;
    assert_eq!(inv.orgs[0].projects.len(), 4);
    assert_eq!(
        inv.orgs[0]
            .projects
            .iter()
            .filter(|p| p.project.archived)
            .count(),
        1
    );

    sim.reset_stats();
    let s = setup(&sim, limits(), |o| {
        o.projects = vec![active[0].clone(), active[1].clone()];
        o.exclude_projects = vec![active[1].clone()];
    });
    let inv = scan(&s).await;
    let ids: Vec<&str> = inv.orgs[0]
        .projects
        .iter()
        .map(|p| p.project.id.as_str())
        .collect();
    assert_eq!(ids, vec![active[0].as_str()]);
    assert_eq!(stat(&sim, LIST_KEYS), 1);

    // A configured id that does not exist makes the sweep incomplete rather than silently empty.
    let s = setup(&sim, limits(), |o| {
        o.projects = vec!["proj_doesnotexist".into()]
    });
    let inv = scan(&s).await;
    assert!(!inv.is_complete());
    assert!(incomplete_reason(&inv, "proj_doesnotexist").contains("not found"));
}

// ---- wire-shape tolerance -----------------------------------------------------------------------

#[tokio::test]
async fn missing_last_used_and_unknown_fields_are_tolerated() {
    let org = SimOrg::generate(2, 120, 11, NOW);
    let projects = active_projects(&org);
    let sim = sim(org).await;
    sim.faults()
        .add(Fault::on_list_keys(&projects[0]).respond(FaultKind::OmitLastUsed));
    sim.faults()
        .add(Fault::on_any_list_keys().respond(FaultKind::ExtraFields));
    sim.faults()
        .add(Fault::on_list_projects().respond(FaultKind::ExtraFields));
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    assert!(inv.is_complete(), "{inv:?}");
    assert_others_complete(&inv, &sim, &[]);
    let p0 = &inv.orgs[0].projects[0];
    assert_eq!(p0.project.id, projects[0]);
    assert!(p0.keys.iter().all(|k| k.last_used_at.is_none()));
    // Left out, not `null`: unknown, which `max_idle` never reads as "never used".
    assert!(p0.keys.iter().all(|k| k.last_used_unknown));
    assert!(
        !(inv.orgs[0].projects[1].keys.iter()).any(|k| k.last_used_unknown),
        "a `null` or a time is a known answer"
    );
    // The other project still reports real usage.
    assert!(
        inv.orgs[0].projects[1]
            .keys
            .iter()
            .any(|k| k.last_used_at.is_some())
    );
}

// ---- retries ------------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limited_page_waits_retry_after_then_succeeds() {
    let org = SimOrg::generate(2, 150, 5, NOW);
    let projects = active_projects(&org);
    let sim = sim(org).await;
    let fault =
        sim.faults()
            .add(Fault::on_list_keys(&projects[1]).page(2).once().respond(
                FaultKind::RateLimited {
                    retry_after_secs: 1,
                },
            ));
    let s = setup(&sim, limits(), |_| {});
    let start = Instant::now();
    let inv = scan(&s).await;
    let elapsed = start.elapsed();
    assert_eq!(sim.faults().hits(fault), 1);
    assert!(inv.is_complete(), "{inv:?}");
    assert_others_complete(&inv, &sim, &[]);
    assert!(
        elapsed >= Duration::from_secs(1),
        "did not wait the Retry-After: {elapsed:?}"
    );
    // 2 pages per project plus the one retried page.
    assert_eq!(stat(&sim, LIST_KEYS), 5);
}

#[tokio::test]
async fn retry_after_beyond_two_minutes_is_not_retried() {
    let org = SimOrg::generate(1, 5, 5, NOW);
    let projects = active_projects(&org);
    let sim = sim(org).await;
    sim.faults().add(
        Fault::on_list_keys(&projects[0]).respond(FaultKind::RateLimited {
            retry_after_secs: 300,
        }),
    );
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    let reason = incomplete_reason(&inv, &projects[0]);
    assert!(reason.contains("429"), "{reason}");
    assert!(reason.contains("300"), "{reason}");
    assert_eq!(stat(&sim, LIST_KEYS), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let org = SimOrg::generate(2, 250, 9, NOW);
    let projects = active_projects(&org);
    let sim = sim(org).await;
    let fault = sim.faults().add(
        Fault::on_list_keys(&projects[0])
            .page(3)
            .times(2)
            .respond(FaultKind::Status(500)),
    );
    let reset = sim.faults().add(
        Fault::on_list_keys(&projects[1])
            .page(2)
            .once()
            .respond(FaultKind::ConnectionReset),
    );
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    assert_eq!(sim.faults().hits(fault), 2);
    assert_eq!(sim.faults().hits(reset), 1);
    assert!(inv.is_complete(), "{inv:?}");
    assert_others_complete(&inv, &sim, &[]);
    assert_eq!(inv.keys().count(), 500);
    assert_eq!(stat(&sim, LIST_KEYS), 6 + 2 + 1);
}

#[tokio::test]
async fn slow_answer_times_out_and_is_retried() {
    let org = SimOrg::generate(1, 5, 5, NOW);
    let projects = active_projects(&org);
    let sim = sim(org).await;
    sim.faults().add(
        Fault::on_list_keys(&projects[0])
            .once()
            .respond(FaultKind::Delay(Duration::from_secs(5))),
    );
    let mut l = limits();
    l.request_timeout = Duration::from_millis(500);
    let s = setup(&sim, l.clone(), |_| {});
    let inv = scan(&s).await;
    assert!(inv.is_complete(), "{inv:?}");

    // Always slow: incomplete, and the message says it timed out.
    sim.faults()
        .add(Fault::on_list_keys(&projects[0]).respond(FaultKind::Delay(Duration::from_secs(5))));
    let s = setup(&sim, l, |_| {});
    let inv = scan(&s).await;
    let reason = incomplete_reason(&inv, &projects[0]);
    assert!(reason.contains("no answer within 0.5s"), "{reason}");
}

// ---- persistent faults: that project incomplete, the others complete ------------------------------

#[tokio::test]
async fn persistent_failure_leaves_only_that_project_incomplete() {
    let org = SimOrg::generate(4, 120, 13, NOW);
    let projects = active_projects(&org);
    let sim = sim(org).await;
    sim.faults().add(
        Fault::on_list_keys(&projects[2])
            .page(2)
            .respond(FaultKind::Status(503)),
    );
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    assert!(!inv.is_complete());
    assert_eq!(inv.orgs[0].error, None, "one project must not fail the org");
    let reason = incomplete_reason(&inv, &projects[2]);
    assert!(reason.contains("organization acme"), "{reason}");
    assert!(reason.contains(&projects[2]), "{reason}");
    assert!(
        reason.contains("GET /organization/projects/{project_id}/api_keys"),
        "{reason}"
    );
    assert!(reason.contains("HTTP 503"), "{reason}");
    let failed = inv.orgs[0]
        .projects
        .iter()
        .find(|p| p.project.id == projects[2])
        .unwrap();
    assert!(failed.keys.is_empty(), "a partial listing must not be kept");
    assert_others_complete(&inv, &sim, &[&projects[2]]);
}

/// Page by page: the first page arrives, the second fails, and every later call fails too; a
/// listing that failed can never look finished.
#[tokio::test]
async fn key_pages_after_a_failed_page_never_report_the_end() {
    let org = SimOrg::generate(1, 150, 14, NOW);
    let projects = active_projects(&org);
    let sim = sim(org).await;
    sim.faults().add(
        Fault::on_list_keys(&projects[0])
            .page(2)
            .respond(FaultKind::Status(503)),
    );
    let s = setup(&sim, limits(), |_| {});
    let project = scan(&s).await.orgs[0].projects[0].project.clone();
    let mut pages = s.clients[0].key_pages(&project).unwrap();
    let first = pages.next_page().await.unwrap().expect("page 1");
    assert_eq!(first.len(), 100);
    let e = pages.next_page().await.expect_err("page 2 must fail");
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    for _ in 0..2 {
        let again = pages.next_page().await;
        assert!(again.is_err(), "after a failed page: {again:?}");
    }
}

#[tokio::test]
async fn broken_bodies_make_projects_incomplete_never_panic() {
    let org = SimOrg::generate(6, 120, 17, NOW);
    let p = active_projects(&org);
    let sim = sim(org).await;
    let cases = [
        (FaultKind::Truncated, "cannot decode"),
        (FaultKind::Malformed, "cannot decode"),
        (FaultKind::WrongTypes, "created_at"),
        (FaultKind::CursorLoop, "cursor loops"),
        (FaultKind::DuplicateIds, "listed twice"),
        (
            FaultKind::Oversized(2 << 20),
            "larger than the limit of 1048576 bytes",
        ),
    ];
    for (project, (kind, _)) in p.iter().zip(&cases) {
        sim.faults()
            .add(Fault::on_list_keys(project).page(2).respond(kind.clone()));
    }
    let mut l = limits();
    l.max_response_bytes = 1 << 20;
    let s = setup(&sim, l, |_| {});
    let inv = scan(&s).await;
    for (project, (kind, expected)) in p.iter().zip(&cases) {
        let reason = incomplete_reason(&inv, project);
        assert!(
            reason.contains(expected),
            "{kind:?}: {reason:?} lacks {expected:?}"
        );
        assert!(reason.contains(project.as_str()), "{reason}");
    }
    assert_eq!(inv.orgs[0].error, None);
    // Deterministic faults are not retried: two pages per project, one answer each.
    assert_eq!(stat(&sim, LIST_KEYS), 12);
}

/// Page 1's `last_id` names page 2's first key instead of page 1's last: paging on from it
/// would skip that key, which would then be taken for gone. The pager goes on from the last
/// key received (REFERENCE §3): every key is listed, and the listing is complete.
#[tokio::test]
async fn a_last_id_past_the_pages_last_key_skips_nothing() {
    let org = SimOrg::generate(1, 120, 5, NOW);
    let p = active_projects(&org);
    let sim = sim(org).await;
    sim.faults().add(
        Fault::on_list_keys(&p[0])
            .page(1)
            .respond(FaultKind::LastIdAhead),
    );
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    assert!(inv.is_complete(), "{inv:?}");
    assert_eq!(inv.orgs[0].projects[0].keys.len(), 120);
    assert_eq!(stat(&sim, LIST_KEYS), 2);
}

#[tokio::test]
async fn cursor_loop_on_the_first_page_is_detected() {
    let org = SimOrg::generate(1, 30, 2, NOW);
    let p = active_projects(&org);
    let sim = sim(org).await;
    sim.faults()
        .add(Fault::on_list_keys(&p[0]).respond(FaultKind::CursorLoop));
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    assert!(incomplete_reason(&inv, &p[0]).contains("cursor loops"));
}

// ---- the organisation level -----------------------------------------------------------------------

#[tokio::test]
async fn wrong_admin_key_is_a_clear_org_error() {
    let org = SimOrg::generate(2, 3, 2, NOW);
    let sim = start_sim_with(org, SimOptions::new("sk-admin-the-right-one")).await;
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    let err = inv.orgs[0].error.as_deref().expect("org error");
    assert!(err.contains("organization acme"), "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(err.contains("admin key was refused"), "{err}");
    assert!(!inv.is_complete());
    assert_no_secret(err);

    let e = s.clients[0].list_projects().await.unwrap_err();
    assert!(e.is_unauthorized());
    assert_eq!(e.status(), Some(401));
    assert_error_clean(&e);
    // 401 is not retried.
    assert_eq!(stat(&sim, LIST_PROJECTS), 2);
}

#[tokio::test]
async fn key_refused_on_one_project_marks_the_org() {
    let org = SimOrg::generate(3, 5, 2, NOW);
    let projects = active_projects(&org);
    let sim = sim(org).await;
    sim.faults()
        .add(Fault::on_list_keys(&projects[1]).respond(FaultKind::Status(401)));
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    let err = inv.orgs[0].error.as_deref().expect("org error");
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(err.contains(&projects[1]), "{err}");
    assert!(incomplete_reason(&inv, &projects[1]).contains("HTTP 401"));
    assert_others_complete(&inv, &sim, &[&projects[1]]);
}

#[tokio::test]
async fn concurrency_bounds_projects_listed_at_once() {
    // 8 one-page projects, 200 ms per request, 2 at a time: at least 4 rounds of key pages
    // after the project page. A measured lower bound only; nothing asserts speed.
    let org = SimOrg::generate(8, 5, 6, NOW);
    let mut opts = SimOptions::new(ADMIN_KEY);
    opts.latency = Duration::from_millis(200);
    let sim = start_sim_with(org, opts).await;
    let mut l = limits();
    l.concurrency = 2;
    let s = setup(&sim, l, |_| {});
    let start = Instant::now();
    let inv = scan(&s).await;
    let elapsed = start.elapsed();
    assert!(inv.is_complete());
    assert_eq!(stat(&sim, LIST_KEYS), 8);
    assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
}

#[tokio::test]
async fn project_list_failure_sets_the_org_error() {
    let org = SimOrg::generate(2, 3, 2, NOW);
    let sim = sim(org).await;
    sim.faults()
        .add(Fault::on_list_projects().respond(FaultKind::Malformed));
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    let err = inv.orgs[0].error.as_deref().expect("org error");
    assert!(err.contains("GET /organization/projects"), "{err}");
    assert!(err.contains("cannot decode"), "{err}");
    assert!(!inv.is_complete());
}

#[tokio::test]
async fn admin_key_list_failure_is_not_fatal() {
    let org = SimOrg::generate(2, 3, 2, NOW);
    let sim = sim(org).await;
    sim.faults()
        .add(Fault::on_list_admin_keys().respond(FaultKind::Status(403)));
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    assert!(inv.is_complete(), "{inv:?}");
    assert!(inv.orgs[0].admin_keys.is_empty());
}

// ---- the requests-per-second ceiling -------------------------------------------------------------

#[tokio::test]
async fn requests_per_second_ceiling_holds_across_clients_and_retries() {
    const RPS: f64 = 20.0;
    let org = SimOrg::generate(4, 250, 21, NOW);
    let projects = active_projects(&org);
    let sim = Arc::new(sim(org).await);
    // A retried page must also wait for its slot.
    sim.faults().add(
        Fault::on_list_keys(&projects[0])
            .page(2)
            .once()
            .respond(FaultKind::Status(500)),
    );
    let mut l = limits();
    l.requests_per_second = Some(RPS);
    l.concurrency = 8;
    // Two organisations on the same simulator share one ceiling.
    let config = config(
        vec![
            org_cfg("acme", &sim.base_url(), ADMIN_KEY),
            org_cfg("acme-eu", &sim.base_url(), ADMIN_KEY),
        ],
        l,
    );
    let shared = ClientShared::new(Metrics::new(), &config.limits);
    assert!(shared.rate.is_some());
    let clients: Vec<AdminClient> = config
        .organizations
        .iter()
        .map(|o| AdminClient::new(o, &config.limits, shared.clone()).unwrap())
        .collect();

    // Sample the simulator's counters while the sweep runs.
    // (before, after, count): the count was read somewhere between the two instants, so a
    // sampler delayed by a loaded machine widens the window instead of faking a burst.
    let samples: Arc<Mutex<Vec<(Instant, Instant, u64)>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (sim, samples, stop) = (sim.clone(), samples.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let before = Instant::now();
                let total: u64 = sim.stats().values().sum();
                samples
                    .lock()
                    .unwrap()
                    .push((before, Instant::now(), total));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let start = Instant::now();
    let inv = collect_inventory(&config, &clients, None).await;
    let elapsed = start.elapsed();
    stop.cancel();
    sampler.await.unwrap();
    assert!(inv.is_complete(), "{inv:?}");

    let total: u64 = sim.stats().values().sum();
    // 2 × (1 project page + 1 admin-key page + 12 key pages) + 1 retry.
    assert_eq!(total, 29);
    // Paced: n requests need at least (n - 1) / rps seconds.
    let min = Duration::from_secs_f64((total - 1) as f64 / RPS);
    assert!(elapsed >= min, "{total} requests in {elapsed:?}");
    // And no window of the run saw more than its share (+1 for the window's edge, +1 for a
    // request in flight while a sample was taken).
    let samples = samples.lock().unwrap();
    for (i, (t1, _, c1)) in samples.iter().enumerate() {
        for (_, t2, c2) in &samples[i + 1..] {
            // The requests between the two reads all fell within [t1, t2].
            let window = t2.duration_since(*t1);
            let allowed = (window.as_secs_f64() * RPS).floor() as u64 + 2;
            assert!(c2 - c1 <= allowed, "{} requests in {window:?}", c2 - c1);
        }
    }
}

#[test]
fn rate_limiter_is_only_built_for_a_positive_ceiling() {
    let mut l = limits();
    assert!(ClientShared::new(Metrics::new(), &l).rate.is_none());
    l.requests_per_second = Some(5.0);
    let shared = ClientShared::new(Metrics::new(), &l);
    assert_eq!(
        shared.rate.as_ref().map(|r| r.interval()),
        Some(Duration::from_millis(200))
    );
    assert!(RateLimiter::new(0.0).is_none());
}

// ---- single-object calls and deletes --------------------------------------------------------------

/// A project with at least two user-owned keys and one service-account key.
fn pick(org: &SimOrg) -> (String, Vec<String>, String, String) {
    for p in org.projects.iter().filter(|p| !p.is_archived()) {
        let users: Vec<String> = p
            .keys
            .iter()
            .filter(|k| !k.owner.is_service_account())
            .map(|k| k.id.clone())
            .collect();
        let sa = p.keys.iter().find(|k| k.owner.is_service_account());
        if users.len() >= 4
            && let Some(sa) = sa
        {
            return (
                p.id.clone(),
                users,
                sa.id.clone(),
                sa.owner.id().to_string(),
            );
        }
    }
    panic!("generated org lacks the needed mix");
}

#[tokio::test]
async fn retrieve_and_list_single_objects() {
    let org = SimOrg::generate(2, 40, 4, NOW);
    let (project, users, _, _) = pick(&org);
    let sim = sim(org.clone()).await;
    let s = setup(&sim, limits(), |_| {});
    let c = &s.clients[0];
    assert_eq!(c.org_name(), "acme");
    assert_no_secret(&format!("{c:?}"));

    let k = c.retrieve_key(&project, &users[0]).await.unwrap().unwrap();
    assert_eq!(k.id, users[0]);
    assert_eq!(k.project_id, project);
    assert!(
        c.retrieve_key(&project, "key_nope")
            .await
            .unwrap()
            .is_none()
    );

    let sp = org.project(&project).unwrap();
    let sas = c.list_service_accounts(&project).await.unwrap();
    assert_eq!(sas.len(), sp.service_accounts.len());
    let members = c.list_project_users(&project).await.unwrap();
    assert!(!members.is_empty());
    assert!(members.iter().all(|u| u.email.is_some()));
    let admin = c.list_admin_keys().await.unwrap();
    assert_eq!(admin.len(), org.admin_api_keys.len());
}

#[tokio::test]
async fn delete_key_outcomes() {
    let org = SimOrg::generate(2, 40, 4, NOW);
    let (project, users, sa_key, sa) = pick(&org);
    // The August 2026 refusal of a service-account key's DELETE, which the client must report.
    let opts = SimOptions {
        refuse_service_account_key_delete: true,
        ..SimOptions::new(ADMIN_KEY)
    };
    let sim = start_sim_with(org, opts).await;
    let s = setup(&sim, limits(), |_| {});
    let c = &s.clients[0];

    // Plain delete, confirmed.
    match c.delete_key(&project, &users[0]).await.unwrap() {
        DeleteOutcome::Deleted { status, body } => {
            assert_eq!(status, 200);
            assert_eq!(body["deleted"], true);
            assert_eq!(body["id"], users[0].as_str());
        }
        other => panic!("{other:?}"),
    }
    assert!(!sim.key_exists(&project, &users[0]));
    // Again: already gone.
    assert_eq!(
        c.delete_key(&project, &users[0]).await.unwrap(),
        DeleteOutcome::AlreadyGone
    );

    // A service-account key: refused with OpenAI's 400, nothing deleted.
    let e = c.delete_key(&project, &sa_key).await.unwrap_err();
    match &e {
        Error::Refused { status, .. } => assert_eq!(*status, 400),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("HTTP 400"), "{e}");
    assert_error_clean(&e);
    assert!(sim.key_exists(&project, &sa_key));

    // Deleted, but the answer was lost (500 after the effect): the check finds it gone.
    sim.reset_stats();
    sim.faults().add(
        Fault::on_delete_key(&project, &users[1])
            .after_effect()
            .once()
            .respond(FaultKind::Status(500)),
    );
    assert_eq!(
        c.delete_key(&project, &users[1]).await.unwrap(),
        DeleteOutcome::AlreadyGone
    );
    assert_eq!(
        stat(
            &sim,
            "DELETE /v1/organization/projects/{project_id}/api_keys/{api_key_id}"
        ),
        1,
        "a DELETE must not be re-sent blindly"
    );

    // Failed before any effect (503): the check finds it still there, so the DELETE is re-sent.
    sim.faults().add(
        Fault::on_delete_key(&project, &users[2])
            .once()
            .respond(FaultKind::Status(503)),
    );
    assert!(matches!(
        c.delete_key(&project, &users[2]).await.unwrap(),
        DeleteOutcome::Deleted { .. }
    ));
    assert!(!sim.key_exists(&project, &users[2]));

    // Connection reset after the delete took effect: also ambiguous, also checked.
    sim.faults().add(
        Fault::on_delete_key(&project, &users[3])
            .after_effect()
            .once()
            .respond(FaultKind::ConnectionReset),
    );
    assert_eq!(
        c.delete_key(&project, &users[3]).await.unwrap(),
        DeleteOutcome::AlreadyGone
    );

    // Service account deletion removes it and its keys.
    assert!(matches!(
        c.delete_service_account(&project, &sa).await.unwrap(),
        DeleteOutcome::Deleted { .. }
    ));
    assert!(!sim.service_account_exists(&project, &sa));
    assert!(!sim.key_exists(&project, &sa_key));
    assert_eq!(
        c.delete_service_account(&project, &sa).await.unwrap(),
        DeleteOutcome::AlreadyGone
    );
}

/// A gateway's page for a 404 (no OpenAI error envelope) says nothing about the key: a read
/// retries it like a 502, and a DELETE that meets it, with its check meeting it too, fails with
/// its outcome unknown. Before, both read as "gone": a restore was dropped as done, and a
/// revocation could be recorded for a key that still worked.
#[tokio::test]
async fn a_gateways_404_is_never_read_as_gone() {
    let org = SimOrg::generate(2, 40, 4, NOW);
    let (project, users, _, _) = pick(&org);
    let sim = sim(org).await;
    let s = setup(&sim, limits(), |_| {});
    let c = &s.clients[0];
    let page = || FaultKind::Foreign {
        status: 404,
        body: "<html><body><h1>404 Not Found</h1>nginx</body></html>".into(),
    };
    let key = &users[0];
    sim.faults()
        .add(Fault::on_get_key(&project, key).once().respond(page()));
    let read = c.retrieve_key(&project, key).await.unwrap();
    assert_eq!(read.map(|k| k.id).as_deref(), Some(key.as_str()));

    sim.faults()
        .add(Fault::on_get_key(&project, key).respond(page()));
    let e = c.retrieve_key(&project, key).await.unwrap_err();
    assert!(matches!(e, Error::StrayNotFound { .. }), "{e}");
    assert!(!e.nothing_applied());
    assert_error_clean(&e);

    sim.faults()
        .add(Fault::on_delete_key(&project, key).respond(page()));
    let e = c.delete_key(&project, key).await.unwrap_err();
    assert!(matches!(e, Error::StrayNotFound { .. }), "{e}");
    assert!(sim.key_exists(&project, key));

    // The API's own 404 still means gone.
    sim.faults().clear();
    sim.faults().add(
        Fault::on_get_key(&project, key)
            .once()
            .respond(FaultKind::Status(404)),
    );
    assert!(c.retrieve_key(&project, key).await.unwrap().is_none());
}

#[tokio::test]
async fn delete_with_unconfirmed_or_garbled_answer_is_an_error() {
    let org = SimOrg::generate(2, 40, 4, NOW);
    let (project, users, _, _) = pick(&org);
    let sim = sim(org).await;
    let s = setup(&sim, limits(), |_| {});
    let c = &s.clients[0];
    sim.faults().add(
        Fault::on_delete_key(&project, &users[0])
            .after_effect()
            .respond(FaultKind::WrongTypes),
    );
    let e = c.delete_key(&project, &users[0]).await.unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("deleted"), "{e}");
    assert_error_clean(&e);
}

// ---- the admin key never leaks ---------------------------------------------------------------------

/// A hostile API that echoes the Authorization header back in its error message and in a
/// malformed body: the client must scrub it.
async fn echo_server() -> SocketAddr {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    async fn echo(headers: HeaderMap) -> (StatusCode, String) {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = serde_json::json!({"error": {"type": "invalid_request_error",
            "message": format!("Incorrect API key provided: {auth}"), "param": null,
            "code": auth}});
        (StatusCode::UNAUTHORIZED, body.to_string())
    }
    async fn garbled(headers: HeaderMap) -> String {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        format!(
            r#"{{"object":"list","data":[{{"id":{auth:?},"created_at":"{auth}"}}],"has_more":false}}"#
        )
    }
    let app = axum::Router::new()
        .route("/v1/organization/projects", get(echo))
        .route("/v1/organization/projects/{p}/api_keys", get(garbled));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn admin_key_never_appears_in_errors_even_when_echoed() {
    let addr = echo_server().await;
    let s = {
        let org = org_cfg("acme", &format!("http://{addr}/v1"), ADMIN_KEY);
        let config = config(vec![org], limits());
        let shared = ClientShared::new(Metrics::new(), &config.limits);
        let clients =
            vec![AdminClient::new(&config.organizations[0], &config.limits, shared).unwrap()];
        Setup { config, clients }
    };
    let e = s.clients[0].list_projects().await.unwrap_err();
    assert!(e.is_unauthorized());
    assert!(e.to_string().contains("Incorrect API key provided"), "{e}");
    assert!(e.to_string().contains("[REDACTED]"), "{e}");
    assert_error_clean(&e);

    let project = keysweep::inventory::ProjectRef {
        organization: "acme".into(),
        id: "proj_1".into(),
        name: None,
        archived: false,
    };
    let e = s.clients[0].list_project_keys(&project).await.unwrap_err();
    assert!(matches!(e, Error::Decode { .. }), "{e:?}");
    assert_error_clean(&e);

    let inv = scan(&s).await;
    assert!(!inv.is_complete());

    // A connection error too (nothing listens on port 9 of loopback, normally).
    let mut l = limits();
    l.max_retries = 0;
    let org = org_cfg("acme", "http://127.0.0.1:9/v1", ADMIN_KEY);
    let c = AdminClient::new(&org, &l, ClientShared::default()).unwrap();
    let e = c.list_projects().await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert!(e.to_string().contains("organization acme"), "{e}");
    assert_error_clean(&e);
}

#[tokio::test]
async fn setup_errors_name_the_org() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let mut org = org_cfg("acme", "https://api.example.com/v1", ADMIN_KEY);
    org.ca_file = Some(bad);
    let e = AdminClient::new(&org, &limits(), ClientShared::default()).unwrap_err();
    assert!(e.to_string().starts_with("organization acme:"), "{e}");
    assert!(e.to_string().contains("ca_file"), "{e}");
    org.ca_file = Some(dir.path().join("missing.pem"));
    let e = AdminClient::new(&org, &limits(), ClientShared::default()).unwrap_err();
    assert!(e.to_string().contains("cannot read ca_file"), "{e}");
    assert_error_clean(&e);
}

#[tokio::test]
async fn progress_reports_every_project() {
    let org = SimOrg::generate(5, 3, 8, NOW);
    let sim = sim(org).await;
    let s = setup(&sim, limits(), |_| {});
    let calls: Mutex<Vec<(usize, usize)>> = Mutex::default();
    let cb = |done: usize, known: usize| calls.lock().unwrap().push((done, known));
    let inv = collect_inventory(&s.config, &s.clients, Some(&cb)).await;
    assert!(inv.is_complete());
    let calls = calls.into_inner().unwrap();
    assert_eq!(calls.last(), Some(&(5, 5)));
    assert!(calls.iter().all(|(d, k)| d <= k));
}
