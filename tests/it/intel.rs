//! Issue 16 through keysweep's own client (`AdminClient::key_events`, `usage_by_key`) against
//! the simulator over HTTP: the log's creators and scopes, the usage and cost per key, and a
//! disabled log read as "unavailable", never as a failure.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use keysweep::openai::{IntelError, KeyEventKind};
use keysweep::sim::{Fault, FaultKind, SimHistory, SimKeyHistory, SimOptions, SimOrg, SimUsage};

use crate::support::config::write_config_file;
use crate::support::listing::{ADMIN_KEY, limits, setup};
use crate::support::process::run_to_end;
use crate::support::sim::start_sim_with;
use crate::support::time::{DAY, DEC_1_2026 as NOW, rfc3339};

const ADMIN_KEY_ENV: &str = "KS_INTEL_ADMIN_KEY";

fn options() -> SimOptions {
    SimOptions {
        now: Some(NOW),
        freeze_clock: true,
        ..SimOptions::new(ADMIN_KEY)
    }
}

#[tokio::test]
async fn key_events_give_every_keys_creator_and_scopes_as_the_log_records_them() {
    let org = SimOrg::generate(3, 40, 12, NOW);
    let p = &org.projects[0];
    let unlogged = &p.keys[0];
    let mut history = SimHistory::default();
    let no_scopes = SimKeyHistory {
        scopes_logged: Some(false),
        ..SimKeyHistory::default()
    };
    history.keys.insert(unlogged.id.clone(), no_scopes);
    let sim = start_sim_with(
        org.clone(),
        SimOptions {
            history,
            ..options()
        },
    )
    .await;
    let s = setup(&sim, limits(), |_| {});
    let events = s.clients[0].key_events(0).await.unwrap();
    // More than one page of 100.
    assert!(events.len() > 100, "{}", events.len());
    let created: HashMap<&str, _> = events
        .iter()
        .filter_map(|e| match &e.kind {
            KeyEventKind::Created { scopes } => Some((e.key_id.as_deref().unwrap(), (e, scopes))),
            _ => None,
        })
        .collect();
    let email = |id: &str| org.users.iter().find(|u| u.id == id).unwrap().email.clone();
    for k in org.projects.iter().flat_map(|p| &p.keys) {
        let (e, scopes) = created[k.id.as_str()];
        if k.id == unlogged.id {
            assert_eq!(*scopes, None, "a missing data.scopes is unknown");
        } else {
            assert_eq!(scopes.as_ref(), Some(&k.scopes));
        }
        assert_eq!(e.effective_at, k.created_at);
        if !k.owner.is_service_account() {
            assert_eq!(e.actor.email, Some(email(k.owner.id())));
        } else {
            assert!(e.actor.email.is_some());
        }
    }
    // `since` reads only what is new: a delete through the API, by the admin key.
    let victim = &p.keys[1];
    s.clients[0].delete_key(&p.id, &victim.id).await.unwrap();
    let new = s.clients[0].key_events(NOW).await.unwrap();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].kind, KeyEventKind::Deleted);
    assert_eq!(new[0].key_id.as_deref(), Some(victim.id.as_str()));
    assert_eq!(new[0].actor.kind, "api_key");
    assert!(new[0].actor.api_key_id.is_some());
}

#[tokio::test]
async fn usage_by_key_sums_requests_and_cost_over_the_window() {
    let org = SimOrg::generate(1, 6, 3, NOW);
    let k = &org.projects[0].keys[0];
    let mut history = SimHistory::default();
    let usage = vec![
        SimUsage {
            at: NOW - 40 * DAY,
            requests: 999,
            cost_usd: 9.0,
        },
        SimUsage {
            at: NOW - 20 * DAY,
            requests: 1_200,
            cost_usd: 3.0,
        },
        SimUsage {
            at: NOW - 3 * DAY + 7,
            requests: 40,
            cost_usd: 0.1,
        },
    ];
    let explicit = SimKeyHistory {
        usage: Some(usage),
        ..SimKeyHistory::default()
    };
    history.keys.insert(k.id.clone(), explicit);
    let sim = start_sim_with(
        org.clone(),
        SimOptions {
            history,
            ..options()
        },
    )
    .await;
    let s = setup(&sim, limits(), |_| {});
    let got = s.clients[0]
        .usage_by_key(NOW - 30 * DAY, NOW)
        .await
        .unwrap();
    let u = &got[&k.id];
    assert_eq!(
        u.requests, 1_240,
        "the record 40 days back is outside the window"
    );
    assert!((u.cost_usd - 3.1).abs() < 1e-9, "{}", u.cost_usd);
    assert_eq!(
        u.last_used_bucket,
        Some((NOW - 3 * DAY).div_euclid(DAY) * DAY)
    );
    // Every key the simulator says was used in the window has usage, and only those.
    for other in org
        .projects
        .iter()
        .flat_map(|p| &p.keys)
        .filter(|o| o.id != k.id)
    {
        let used = other
            .last_used_at
            .is_some_and(|t| (NOW - 30 * DAY..NOW).contains(&t));
        if used {
            assert!(got[&other.id].requests > 0, "{}", other.id);
        }
    }
}

#[tokio::test]
async fn a_disabled_audit_log_is_unavailable_and_usage_still_answers() {
    let org = SimOrg::generate(1, 5, 2, NOW);
    let sim = start_sim_with(
        org,
        SimOptions {
            audit_logging: false,
            ..options()
        },
    )
    .await;
    let s = setup(&sim, limits(), |_| {});
    match s.clients[0].key_events(0).await {
        Err(IntelError::Unavailable {
            status, message, ..
        }) => {
            assert_eq!(status, 403);
            assert!(message.unwrap().contains("not enabled"));
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(s.clients[0].usage_by_key(NOW - 30 * DAY, NOW).await.is_ok());
}

/// Every organisation's log and usage are read at once, not one organisation after another:
/// the second organisation's log is asked for while the first's answer is still seconds away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_organisations_log_and_usage_are_read_at_once() {
    const AUDIT_LOGS: &str = "GET /v1/organization/audit_logs";
    let a = start_sim_with(SimOrg::generate(1, 5, 2, NOW), options()).await;
    let b = start_sim_with(SimOrg::generate(1, 5, 3, NOW), options()).await;
    a.faults()
        .add(Fault::on_audit_logs().respond(FaultKind::Delay(Duration::from_secs(20))));
    let sa = setup(&a, limits(), |_| {});
    let sb = setup(&b, limits(), |o| o.name = "beta".into());
    let clients = vec![sa.clients[0].clone(), sb.clients[0].clone()];
    let settings = sa.config.intel;
    let reading =
        tokio::spawn(async move { keysweep::intel::gather(&clients, settings, NOW).await });
    // Polled, not timed: read one after the other, `beta` would wait the 20 s of `acme`.
    let deadline = Instant::now() + Duration::from_secs(15);
    let asked = |sim: &keysweep::sim::SimServer| sim.stats().get(AUDIT_LOGS).copied().unwrap_or(0);
    // Both asked, in either order (they start together): `beta`'s while `acme`'s is unanswered.
    while asked(&b) == 0 || asked(&a) == 0 {
        assert!(Instant::now() < deadline, "beta's log waited for acme's");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(asked(&a), 1, "acme's log is being answered");
    assert!(!reading.is_finished());
    reading.abort();
}

/// `keysweep scan --format <format> --now NOW` against `sim` (with `extra` configuration):
/// (exit status success, stdout, stderr).
async fn scan(sim: &keysweep::sim::SimServer, format: &str, extra: &str) -> (bool, String, String) {
    scan_with(sim, format, extra, &[]).await
}

async fn scan_with(
    sim: &keysweep::sim::SimServer,
    format: &str,
    extra: &str,
    more: &[&str],
) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, extra);
    let now = rfc3339(NOW);
    let mut args = vec![
        "scan",
        "--format",
        format,
        "--now",
        &now,
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let (status, out, err) = run_to_end(&args, &[(ADMIN_KEY_ENV, ADMIN_KEY)]).await;
    (status.success(), out, err)
}

/// The simulator's own log, read over HTTP: key id → (creator e-mail, `data.scopes`).
async fn sim_log(sim: &keysweep::sim::SimServer) -> HashMap<String, (Value, Value)> {
    let mut out = HashMap::new();
    let mut after = String::new();
    loop {
        let url = format!(
            "{}/organization/audit_logs?limit=100&event_types[]=api_key.created{after}",
            sim.base_url()
        );
        let page: Value = reqwest::Client::new()
            .get(url)
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for e in page["data"].as_array().unwrap() {
            let d = &e["api_key.created"];
            let email = e["actor"]["session"]["user"]["email"].clone();
            let scopes = d["data"]["scopes"].clone();
            out.insert(d["id"].as_str().unwrap().to_string(), (email, scopes));
        }
        if page["has_more"] != true {
            return out;
        }
        after = format!("&after={}", page["last_id"].as_str().unwrap());
    }
}

/// With the default backfill (90 days) only the keys created since have a creator; the others
/// are null, never guessed.
async fn default_backfill_knows_only_recent_keys(
    sim: &keysweep::sim::SimServer,
    log: &HashMap<String, (Value, Value)>,
) {
    let (ok, out, _) = scan(sim, "json", "").await;
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    let (mut recent, mut old) = (0, 0);
    for k in v["keys"].as_array().unwrap() {
        if k["created_at"].as_i64().unwrap() >= NOW - 90 * DAY {
            recent += 1;
            assert_eq!(k["created_by"], log[k["id"].as_str().unwrap()].0, "{k}");
        } else {
            old += 1;
            assert!(k["created_by"].is_null() && k["scopes"].is_null(), "{k}");
        }
    }
    assert!(recent > 0 && old > 0, "{recent} recent, {old} old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_json_shows_created_by_scopes_and_usage_as_the_simulator_records_them() {
    let org = SimOrg::generate(2, 12, 21, NOW);
    let p = org.projects.iter().find(|p| !p.is_archived()).unwrap();
    let (quiet, busy) = (&p.keys[0], &p.keys[1]);
    let mut history = SimHistory::default();
    let unlogged = SimKeyHistory {
        scopes_logged: Some(false),
        ..SimKeyHistory::default()
    };
    history.keys.insert(quiet.id.clone(), unlogged);
    let usage = vec![
        SimUsage {
            at: NOW - 5 * DAY,
            requests: 1_200,
            cost_usd: 3.0,
        },
        SimUsage {
            at: NOW - DAY,
            requests: 40,
            cost_usd: 0.1,
        },
    ];
    let used = SimKeyHistory {
        usage: Some(usage),
        ..SimKeyHistory::default()
    };
    history.keys.insert(busy.id.clone(), used);
    let sim = start_sim_with(
        org.clone(),
        SimOptions {
            history,
            ..options()
        },
    )
    .await;
    let log = sim_log(&sim).await;
    // Back far enough for every key's creation (the generated keys are up to years old).
    let (ok, out, err) = scan(&sim, "json", "[audit_log]\nbackfill = \"3650d\"\n").await;
    assert!(ok, "{err}");
    assert!(!err.contains("unavailable"), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), org.key_count());
    let mut service_account_keys = 0;
    for k in keys {
        let id = k["id"].as_str().unwrap();
        let (email, scopes) = &log[id];
        assert_eq!(&k["created_by"], email, "{id}");
        assert!(k["created_by"].is_string(), "{id}");
        assert_eq!(&k["scopes"], scopes, "{id}");
        assert_eq!(k["usage"]["window_days"], 30, "{id}");
        if k["owner_type"] == "service_account" {
            service_account_keys += 1;
        }
    }
    assert!(service_account_keys > 0);
    let by_id = |id: &str| keys.iter().find(|k| k["id"] == id).unwrap().clone();
    assert!(
        by_id(&quiet.id)["scopes"].is_null(),
        "unknown scopes are null, never []"
    );
    let busy = by_id(&busy.id);
    assert_eq!(busy["usage"]["requests"], 1_240);
    assert_eq!(busy["usage"]["cost_usd"], 3.1);

    default_backfill_knows_only_recent_keys(&sim, &log).await;

    // The table has a CREATED BY column with the same e-mails.
    let (ok, table, _) = scan(&sim, "table", "[audit_log]\nbackfill = \"3650d\"\n").await;
    assert!(ok);
    let header = table.lines().next().unwrap();
    assert!(header.contains("CREATED BY"), "{header}");
    let line = table
        .lines()
        .find(|l| l.contains(quiet.id.as_str()))
        .unwrap();
    assert!(line.contains(log[&quiet.id].0.as_str().unwrap()), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audit_logging_off_scan_completes_and_says_once_what_is_missing() {
    let org = SimOrg::generate(1, 10, 8, NOW);
    let opts = SimOptions {
        audit_logging: false,
        ..options()
    };
    let sim = start_sim_with(org.clone(), opts).await;
    let (ok, out, err) = scan(&sim, "json", "[usage]\nwindow = \"7d\"\n").await;
    assert!(ok, "{err}");
    assert_eq!(err.matches("audit log is unavailable").count(), 1, "{err}");
    assert!(err.contains("403"), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), org.key_count());
    for k in keys {
        assert!(k["created_by"].is_null() && k["scopes"].is_null(), "{k}");
        assert_eq!(k["usage"]["window_days"], 7, "{k}");
    }
}

#[test]
fn usage_window_and_audit_backfill_are_read_checked_and_hash_neutral_at_their_defaults() {
    let base = "[[organizations]]\nname = \"acme\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
    let env = [("OPENAI_ADMIN_KEY", "sk-admin-test")];
    let load = |extra: &str| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        keysweep::config::load_from_str(&format!("{extra}\n{base}"), &env)
    };
    let plain = load("").unwrap();
    assert_eq!(plain.intel.window_days(), 30);
    assert_eq!(plain.intel.audit_backfill.as_secs(), 90 * DAY as u64);
    let same = load("[usage]\nwindow = \"30d\"\n[audit_log]\nbackfill = \"90d\"\n").unwrap();
    assert_eq!(
        same.hash, plain.hash,
        "the defaults written out keep the hash"
    );
    let set = load("[usage]\nwindow = \"7d\"\n[audit_log]\nbackfill = \"30d\"\n").unwrap();
    assert_eq!(set.intel.window_days(), 7);
    assert_ne!(set.hash, plain.hash);
    for bad in [
        "[usage]\nwindow = \"12h\"\n",
        "[usage]\nwindow = \"400d\"\n",
        "[audit_log]\nbackfill = \"1h\"\n",
        "[usage]\nwindw = \"7d\"\n",
    ] {
        let e = load(bad).unwrap_err().to_string();
        assert!(e.contains("usage") || e.contains("audit_log"), "{bad}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_unrestricted_lists_only_keys_known_to_have_all_permissions() {
    let mut org = SimOrg::generate(2, 15, 31, NOW);
    // Generated keys have All permissions; restrict two of them.
    let pi = org.projects.iter().position(|p| !p.is_archived()).unwrap();
    org.projects[pi].keys[1].scopes = vec!["api.all.read".into()];
    org.projects[pi].keys[2].scopes = vec!["api.model.request".into()];
    let p = &org.projects[pi];
    // One unrestricted key whose creation carried no scopes: unknown, so not listed.
    let hidden = p.keys.iter().find(|k| k.scopes.is_empty()).unwrap();
    let mut history = SimHistory::default();
    let unlogged = SimKeyHistory {
        scopes_logged: Some(false),
        ..SimKeyHistory::default()
    };
    history.keys.insert(hidden.id.clone(), unlogged);
    let sim = start_sim_with(
        org.clone(),
        SimOptions {
            history,
            ..options()
        },
    )
    .await;
    let extra = "[audit_log]\nbackfill = \"3650d\"\n";
    let (ok, out, err) = scan_with(&sim, "json", extra, &["--unrestricted"]).await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let got: Vec<&str> = (v["keys"].as_array().unwrap().iter())
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = (org.projects.iter().filter(|p| !p.is_archived()))
        .flat_map(|p| &p.keys)
        .filter(|k| k.scopes.is_empty() && k.id != hidden.id)
        .map(|k| k.id.as_str())
        .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort_unstable();
    want.sort_unstable();
    assert!(!want.is_empty());
    assert_eq!(got_sorted, want);
    let restricted = org
        .projects
        .iter()
        .flat_map(|p| &p.keys)
        .filter(|k| !k.scopes.is_empty());
    assert!(
        restricted.count() > 0,
        "the organisation has no restricted key to leave out"
    );
    for k in v["keys"].as_array().unwrap() {
        assert_eq!(k["scopes"], serde_json::json!([]), "{k}");
    }
}

#[tokio::test]
async fn server_errors_and_oversized_answers_are_failures_not_unavailable() {
    let org = SimOrg::generate(1, 30, 6, NOW);
    // Every GET answers 500: retried, then a failure (not a property of the organisation).
    let failing = SimOptions {
        fail_rate: 1.0,
        ..options()
    };
    let sim = start_sim_with(org.clone(), failing).await;
    let s = setup(&sim, limits(), |_| {});
    let got = s.clients[0].key_events(0).await;
    assert!(matches!(got, Err(IntelError::Failed(_))), "{got:?}");
    let got = s.clients[0].usage_by_key(NOW - 30 * DAY, NOW).await;
    assert!(matches!(got, Err(IntelError::Failed(_))), "{got:?}");
    let stats = sim.stats();
    assert_eq!(stats["GET /v1/organization/audit_logs"], 3, "{stats:?}");
    // The body cap applies: a page of 100 events is far over 2 KiB.
    let sim = start_sim_with(org, options()).await;
    let mut small = limits();
    small.max_response_bytes = 2048;
    let s = setup(&sim, small, |_| {});
    let got = s.clients[0].key_events(0).await;
    match got {
        Err(IntelError::Failed(e)) => assert!(e.to_string().contains("limit"), "{e}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_binary_reads_an_org_files_history_and_turns_logging_off() {
    let org = SimOrg::generate(1, 4, 3, NOW);
    let key = &org.projects[0].keys[0];
    let mut v: Value = serde_json::from_str(&org.to_json_pretty()).unwrap();
    v["history"] = serde_json::json!({"keys": {key.id.clone(): {
        "created_by": org.users[0].id, "usage": [{"at": NOW - DAY, "requests": 7, "cost_usd": 0.5}]}}});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("org.json");
    std::fs::write(&file, v.to_string()).unwrap();
    let now = rfc3339(NOW);
    let file = file.to_str().unwrap();
    let base = ["--org-file", file, "--now", &now, "--freeze-clock"];
    let get = |port: u16, path: String| async move {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/v1{path}"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let sim = crate::support::process::Simulator::start(&base, ADMIN_KEY);
    let path = format!("/organization/audit_logs?resource_ids[]={}", key.id);
    let (status, log) = get(sim.port, path).await;
    assert_eq!(status, 200);
    let actor = &log["data"][0]["actor"]["session"]["user"]["email"];
    assert_eq!(actor, org.users[0].email.as_str());
    let q = format!(
        "/organization/usage/completions?start_time={}&group_by[]=api_key_id",
        NOW - 7 * DAY
    );
    let (_, usage) = get(sim.port, q).await;
    let results: Vec<&Value> = (usage["data"].as_array().unwrap().iter())
        .flat_map(|b| b["results"].as_array().unwrap())
        .filter(|r| r["api_key_id"] == key.id.as_str())
        .collect();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["num_model_requests"], 7);
    drop(sim);
    let mut off = base.to_vec();
    off.push("--audit-logging-off");
    let sim = crate::support::process::Simulator::start(&off, ADMIN_KEY);
    assert_eq!(
        get(sim.port, "/organization/audit_logs".into()).await.0,
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_warns_of_keys_the_log_shows_that_the_listing_did_not_return() {
    let org = SimOrg::generate(3, 8, 14, NOW);
    assert!(
        org.projects
            .iter()
            .any(|p| p.is_archived() && !p.keys.is_empty())
    );
    let sim = start_sim_with(org.clone(), options()).await;
    let p = org.projects.iter().find(|p| !p.is_archived()).unwrap();
    let owner = &org.admin_api_keys[0].owner_user_id;
    // Gone from the listing with no deletion on record: a gap.
    let vanished = &p.keys[0].id;
    sim.remove_key(&p.id, vanished).unwrap();
    // Deleted in the dashboard, on record: not a gap.
    sim.log_key_deleted(&p.id, &p.keys[1].id, owner, NOW - 10);
    sim.remove_key(&p.id, &p.keys[1].id).unwrap();
    // Created per the log, never listed: a gap; an id of another shape: unmatched.
    sim.log_key_created(&p.id, "key_ghost", owner, None, NOW - 30);
    sim.log_key_created(&p.id, "trk-7", owner, None, NOW - 30);
    let (ok, _, err) = scan(&sim, "json", "[audit_log]\nbackfill = \"3650d\"\n").await;
    assert!(ok, "{err}");
    let mut want = [vanished.as_str(), "key_ghost"];
    want.sort_unstable();
    let line = err
        .lines()
        .find(|l| l.contains("inventory gap"))
        .unwrap_or_else(|| panic!("no gap warning: {err}"));
    assert!(line.contains("2 key(s)"), "{line}");
    assert!(line.ends_with(&want.join(", ")), "{line}");
    assert_eq!(err.matches("inventory gap").count(), 1, "{err}");
    assert!(
        err.contains("1 audit-log key id(s) could not be matched"),
        "{err}"
    );
    // Nothing missing, nothing said.
    let clean = start_sim_with(org, options()).await;
    let (ok, _, err) = scan(&clean, "json", "[audit_log]\nbackfill = \"3650d\"\n").await;
    assert!(ok);
    assert!(
        !err.contains("inventory gap") && !err.contains("matched"),
        "{err}"
    );
}

/// A month of usage grouped by key is one page of 31 daily buckets; at a large organisation
/// that page is far over `max_response_bytes` (150 MB at 100k keys against 16 MiB). The client
/// asks again with fewer buckets per page and reads the same usage as from one page.
#[tokio::test]
async fn a_usage_page_over_the_body_cap_is_read_again_with_fewer_buckets() {
    let org = SimOrg::generate(2, 150, 5, NOW);
    let sim = start_sim_with(org, options()).await;
    let (start, end) = (NOW - 30 * DAY, NOW);
    let whole = setup(&sim, limits(), |_| {}).clients[0]
        .usage_by_key(start, end)
        .await
        .unwrap();
    assert!(whole.len() > 100, "{} keys with usage", whole.len());
    let url = format!(
        "{}/organization/usage/completions?start_time={start}&end_time={end}&bucket_width=1d\
         &group_by[]=api_key_id&limit=31",
        sim.base_url()
    );
    let one_page = crate::support::net::http()
        .get(url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let asked =
        |sim: &keysweep::sim::SimServer| sim.stats()["GET /v1/organization/usage/completions"];
    let before = asked(&sim);
    let mut small = limits();
    small.max_response_bytes = one_page / 3;
    let capped = setup(&sim, small, |_| {});
    let got = capped.clients[0].usage_by_key(start, end).await.unwrap();
    assert_eq!(got, whole);
    // One refused page, then at least three smaller ones.
    let first = asked(&sim) - before;
    assert!(first >= 4, "{first} requests");
    // The same client's next read starts at the size that fitted: no page refused again.
    let before = asked(&sim);
    let again = capped.clients[0].usage_by_key(start, end).await.unwrap();
    assert_eq!(again, whole);
    let second = asked(&sim) - before;
    assert!(
        second < first && second >= 3,
        "{first} then {second} requests"
    );
    // A cap no single day fits under still fails, and says why.
    let mut tiny = limits();
    tiny.max_response_bytes = 512;
    let got = setup(&sim, tiny, |_| {}).clients[0]
        .usage_by_key(start, end)
        .await;
    match got {
        Err(IntelError::Failed(e)) => assert!(e.to_string().contains("limit"), "{e}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}
