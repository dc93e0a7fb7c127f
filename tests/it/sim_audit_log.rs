//! The simulator's audit log and usage endpoints (issue 16, deliverable 1), over real HTTP:
//! a generated organisation's history agrees with its keys (creators, scopes, usage ending at
//! `last_used_at`), the filters and both cursors, the API's writes logged with the admin key as
//! actor, audit logging turned off (403), an explicit history, and the usage/costs parameters.

use std::collections::{BTreeMap, HashMap, HashSet};

use keysweep::sim::{SimHistory, SimKeyHistory, SimOptions, SimOrg, SimServer, SimUsage};
use serde_json::Value;

use crate::support::sim::start_sim_with;
use crate::support::time::{DAY, DEC_1_2026 as NOW};

const ADMIN: &str = "sk-admin-intel-5EcReT";

fn options() -> SimOptions {
    SimOptions {
        now: Some(NOW),
        freeze_clock: true,
        ..SimOptions::new(ADMIN)
    }
}

async fn get(sim: &SimServer, path_and_query: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path_and_query}", sim.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every event matching `filter` (a query string without `after`), paged by `limit`, checking
/// the page invariants on the way.
async fn all_events(sim: &SimServer, filter: &str, limit: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_ref()
            .map(|a| format!("&after={a}"))
            .unwrap_or_default();
        let (status, page) = get(
            sim,
            &format!("/organization/audit_logs?limit={limit}{filter}{cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit);
        if let (Some(first), Some(last)) = (data.first(), data.last()) {
            assert_eq!(page["first_id"], first["id"]);
            assert_eq!(page["last_id"], last["id"]);
        }
        out.extend(data);
        if page["has_more"] != true {
            break;
        }
        after = Some(page["last_id"].as_str().unwrap().to_string());
    }
    let ids: HashSet<&str> = out.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), out.len(), "an event listed twice");
    let times: Vec<i64> = out
        .iter()
        .map(|e| e["effective_at"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "not newest first");
    out
}

fn email_of(org: &SimOrg, user: &str) -> String {
    org.users
        .iter()
        .find(|u| u.id == user)
        .unwrap()
        .email
        .clone()
}

#[tokio::test]
async fn a_generated_organisations_log_names_each_keys_creator_and_scopes() {
    let org = SimOrg::generate(3, 12, 7, NOW);
    let sim = start_sim_with(org.clone(), options()).await;
    let events = all_events(&sim, "&event_types[]=api_key.created", 7).await;
    let by_key: HashMap<&str, &Value> = events
        .iter()
        .map(|e| (e["api_key.created"]["id"].as_str().unwrap(), e))
        .collect();
    let mut service_account_keys = 0;
    for p in &org.projects {
        for k in &p.keys {
            let e = by_key
                .get(k.id.as_str())
                .unwrap_or_else(|| panic!("{} not logged", k.id));
            assert_eq!(e["type"], "api_key.created");
            assert_eq!(e["effective_at"], k.created_at);
            assert_eq!(e["project"]["id"], p.id.as_str());
            assert_eq!(e["actor"]["type"], "session");
            let creator = e["actor"]["session"]["user"]["email"].as_str().unwrap();
            let scopes: Vec<String> =
                serde_json::from_value(e["api_key.created"]["data"]["scopes"].clone()).unwrap();
            assert_eq!(scopes, k.scopes, "{}", k.id);
            if k.owner.is_service_account() {
                service_account_keys += 1;
                let member = p
                    .members
                    .iter()
                    .find(|m| email_of(&org, &m.user_id) == creator)
                    .unwrap_or_else(|| panic!("{creator} is not a member of {}", p.id));
                let has_active_owner = p
                    .members
                    .iter()
                    .any(|m| m.role == "owner" && m.access == keysweep::sim::SimAccess::Active);
                assert!(!has_active_owner || member.role == "owner", "{}", k.id);
            } else {
                assert_eq!(creator, email_of(&org, k.owner.id()));
            }
        }
    }
    assert!(
        service_account_keys > 0,
        "the organisation has no service-account key"
    );
    // Service accounts and memberships are logged too.
    let sas = all_events(&sim, "&event_types[]=service_account.created", 100).await;
    let n_sas: usize = org.projects.iter().map(|p| p.service_accounts.len()).sum();
    assert_eq!(sas.len(), n_sas);
    let added = all_events(&sim, "&event_types[]=user.added", 100).await;
    let n_members: usize = org.projects.iter().map(|p| p.members.len()).sum();
    assert_eq!(added.len(), n_members);
}

#[tokio::test]
async fn the_filters_and_the_before_cursor_select_what_they_say() {
    let org = SimOrg::generate(2, 10, 3, NOW);
    let sim = start_sim_with(org.clone(), options()).await;
    let all = all_events(&sim, "", 100).await;
    let p = &org.projects[0];
    let k = &p.keys[0];
    let mid = all[all.len() / 2]["effective_at"].as_i64().unwrap();
    let filtered = |pred: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        all.iter().filter(|e| pred(e)).cloned().collect()
    };
    let cases: Vec<(String, Vec<Value>)> = vec![
        (
            format!("&effective_at[gte]={mid}"),
            filtered(&|e| e["effective_at"].as_i64().unwrap() >= mid),
        ),
        (
            format!("&effective_at[gt]={mid}"),
            filtered(&|e| e["effective_at"].as_i64().unwrap() > mid),
        ),
        (
            format!("&effective_at[lt]={mid}"),
            filtered(&|e| e["effective_at"].as_i64().unwrap() < mid),
        ),
        (
            format!("&effective_at[lte]={mid}"),
            filtered(&|e| e["effective_at"].as_i64().unwrap() <= mid),
        ),
        (
            format!("&project_ids[]={}", p.id),
            filtered(&|e| e["project"]["id"] == p.id.as_str()),
        ),
        (
            format!("&resource_ids[]={}", k.id),
            filtered(&|e| e["api_key.created"]["id"] == k.id.as_str()),
        ),
    ];
    for (query, want) in cases {
        let got = all_events(&sim, &query, 9).await;
        assert!(!got.is_empty() || want.is_empty());
        assert_eq!(got, want, "{query}");
    }
    let email = email_of(&org, &p.members[0].user_id);
    let by_actor = all_events(&sim, &format!("&actor_emails[]={email}"), 50).await;
    assert!(!by_actor.is_empty());
    assert!(
        by_actor
            .iter()
            .all(|e| e["actor"]["session"]["user"]["email"] == email.as_str())
    );
    // `before` answers the page just before the cursor, newest first.
    let (_, second) = get(
        &sim,
        &format!(
            "/organization/audit_logs?limit=5&after={}",
            all[4]["id"].as_str().unwrap()
        ),
    )
    .await;
    let first_of_second = second["first_id"].as_str().unwrap();
    assert_eq!(first_of_second, all[5]["id"].as_str().unwrap());
    let (_, back) = get(
        &sim,
        &format!("/organization/audit_logs?limit=5&before={first_of_second}"),
    )
    .await;
    assert_eq!(back["data"].as_array().unwrap(), &all[0..5].to_vec());
    assert_eq!(back["has_more"], false);
    let (status, _) = get(&sim, "/organization/audit_logs?after=audit_log-nope").await;
    assert_eq!(status, 400);
    let (status, _) = get(&sim, "/organization/audit_logs?limit=101").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_apis_writes_are_logged_with_the_admin_key_as_actor() {
    let org = SimOrg::generate(2, 12, 5, NOW);
    let sim = start_sim_with(org.clone(), options()).await;
    let p = org.projects.iter().find(|p| !p.is_archived()).unwrap();
    let live: Vec<_> = p.keys.iter().filter(|k| !k.is_expired(NOW)).collect();
    let (deleted, updated) = (live[0], live[1]);
    let sa = &p.service_accounts[0];
    let admin = org
        .admin_api_keys
        .iter()
        .min_by_key(|k| k.created_at)
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("{}/organization/projects/{}", sim.base_url(), p.id);
    let r = client
        .delete(format!("{base}/api_keys/{}", deleted.id))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/api_keys/{}", updated.id))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"scopes": ["api.all.read"], "expires_in_seconds": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/service_accounts/{}/api_keys", sa.id))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "minted", "scopes": ["api.model.request"]}))
        .send()
        .await
        .unwrap();
    let minted: Value = r.json().await.unwrap();
    let mine = all_events(&sim, &format!("&effective_at[gte]={NOW}"), 100).await;
    assert_eq!(mine.len(), 3, "{mine:?}");
    for e in &mine {
        assert_eq!(e["effective_at"], NOW);
        assert_eq!(e["actor"]["type"], "api_key");
        assert_eq!(e["actor"]["api_key"]["id"], admin.id.as_str());
        assert_eq!(
            e["actor"]["api_key"]["user"]["email"],
            email_of(&org, &admin.owner_user_id).as_str()
        );
    }
    // Newest first, in the order of the writes (same second: by sequence).
    assert_eq!(mine[2]["api_key.deleted"]["id"], deleted.id.as_str());
    assert_eq!(mine[1]["api_key.updated"]["id"], updated.id.as_str());
    assert_eq!(
        mine[1]["api_key.updated"]["changes_requested"]["scopes"],
        serde_json::json!(["api.all.read"])
    );
    assert_eq!(
        mine[1]["api_key.updated"]["changes_requested"]["expires_in_seconds"],
        3600
    );
    assert_eq!(mine[0]["api_key.created"]["id"], minted["id"]);
    assert_eq!(
        mine[0]["api_key.created"]["data"]["scopes"],
        serde_json::json!(["api.model.request"])
    );
}

#[tokio::test]
async fn with_audit_logging_off_the_log_answers_403() {
    let org = SimOrg::generate(1, 5, 1, NOW);
    let sim = start_sim_with(
        org.clone(),
        SimOptions {
            audit_logging: false,
            ..options()
        },
    )
    .await;
    let (status, body) = get(&sim, "/organization/audit_logs").await;
    assert_eq!(status, 403);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not enabled")
    );
    sim.set_audit_logging(true);
    assert_eq!(get(&sim, "/organization/audit_logs").await.0, 200);
    sim.set_audit_logging(false);
    assert_eq!(get(&sim, "/organization/audit_logs").await.0, 403);
    // The usage endpoints do not depend on it.
    assert_eq!(
        get(
            &sim,
            &format!("/organization/costs?start_time={}", NOW - 7 * DAY)
        )
        .await
        .0,
        200
    );
}

/// Sums a usage or costs answer, paging through it, per `api_key_id`: (requests, cost).
async fn per_key(sim: &SimServer, route: &str, query: &str) -> BTreeMap<String, (u64, f64, i64)> {
    let mut out: BTreeMap<String, (u64, f64, i64)> = BTreeMap::new();
    let mut page: Option<String> = None;
    let mut pages = 0;
    loop {
        let cursor = page
            .as_ref()
            .map(|p| format!("&page={p}"))
            .unwrap_or_default();
        let (status, body) = get(sim, &format!("{route}?{query}{cursor}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "page");
        pages += 1;
        for bucket in body["data"].as_array().unwrap() {
            assert_eq!(bucket["object"], "bucket");
            let start = bucket["start_time"].as_i64().unwrap();
            for r in bucket["results"].as_array().unwrap() {
                let e = out
                    .entry(r["api_key_id"].as_str().unwrap().to_string())
                    .or_default();
                e.0 += r["num_model_requests"].as_u64().unwrap_or(0);
                e.1 += r["amount"]["value"].as_f64().unwrap_or(0.0);
                e.2 = e.2.max(start);
            }
        }
        match body["next_page"].as_str() {
            Some(p) => page = Some(p.to_string()),
            None => break,
        }
        assert!(pages < 100);
    }
    out
}

#[tokio::test]
async fn usage_grouped_by_key_ends_on_the_day_of_last_used_at() {
    let org = SimOrg::generate(2, 15, 9, NOW);
    let sim = start_sim_with(org.clone(), options()).await;
    let start = NOW - 30 * DAY;
    let q =
        format!("start_time={start}&end_time={NOW}&bucket_width=1d&group_by[]=api_key_id&limit=7");
    let usage = per_key(&sim, "/organization/usage/completions", &q).await;
    let costs = per_key(&sim, "/organization/costs", &q).await;
    let mut used = 0;
    for k in org.projects.iter().flat_map(|p| &p.keys) {
        match k.last_used_at.filter(|&t| t >= start && t < NOW) {
            Some(t) => {
                used += 1;
                let (n, _, last_bucket) = usage[&k.id];
                assert!(n > 0);
                assert_eq!(last_bucket, t.div_euclid(DAY) * DAY, "{}", k.id);
                assert!(
                    (costs[&k.id].1 - 0.0015 * n as f64).abs() < 1e-6,
                    "{}",
                    k.id
                );
            }
            None if k.last_used_at.is_none_or(|t| t < start - 40 * DAY) => {
                assert!(
                    !usage.contains_key(&k.id),
                    "{} has usage but was not used",
                    k.id
                );
            }
            None => {}
        }
    }
    assert!(used > 0);
    // `api_key_ids[]` narrows the answer to those keys.
    let one = usage.keys().next().unwrap().clone();
    let only = per_key(
        &sim,
        "/organization/usage/completions",
        &format!("{q}&api_key_ids[]={one}"),
    )
    .await;
    assert_eq!(only.keys().collect::<Vec<_>>(), vec![&one]);
    assert_eq!(only[&one].0, usage[&one].0);
}

#[tokio::test]
async fn an_explicit_history_sets_creator_logged_scopes_and_usage() {
    let org = SimOrg::generate(1, 8, 2, NOW);
    let p = &org.projects[0];
    let (a, b) = (&p.keys[0], &p.keys[1]);
    let stranger = org.users.iter().find(|u| u.id != a.owner.id()).unwrap();
    let mut history = SimHistory::default();
    history.keys.insert(
        a.id.clone(),
        SimKeyHistory {
            created_by: Some(stranger.id.clone()),
            scopes_logged: Some(false),
            usage: Some(vec![
                SimUsage {
                    at: NOW - 2 * DAY,
                    requests: 1200,
                    cost_usd: 3.0,
                },
                SimUsage {
                    at: NOW - DAY + 60,
                    requests: 40,
                    cost_usd: 0.1,
                },
            ]),
            ..SimKeyHistory::default()
        },
    );
    history.keys.insert(
        b.id.clone(),
        SimKeyHistory {
            in_log: Some(false),
            ..SimKeyHistory::default()
        },
    );
    let sim = start_sim_with(
        org.clone(),
        SimOptions {
            history,
            ..options()
        },
    )
    .await;
    let created = all_events(
        &sim,
        &format!("&resource_ids[]={}&resource_ids[]={}", a.id, b.id),
        20,
    )
    .await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(
        created[0]["actor"]["session"]["user"]["email"],
        stranger.email.as_str()
    );
    assert!(
        created[0]["api_key.created"].get("data").is_none(),
        "data.scopes must be absent"
    );
    let q = format!(
        "start_time={}&group_by[]=api_key_id&api_key_ids[]={}&limit=31",
        NOW - 30 * DAY,
        a.id
    );
    let usage = per_key(&sim, "/organization/usage/completions", &q).await;
    let costs = per_key(&sim, "/organization/costs", &q).await;
    assert_eq!(usage[&a.id].0, 1240);
    assert!((costs[&a.id].1 - 3.1).abs() < 1e-9);
    // A use through the test hook adds a request, so usage keeps agreeing with last_used_at.
    sim.set_last_used(&p.id, &a.id, Some(NOW - 60)).unwrap();
    let usage = per_key(&sim, "/organization/usage/completions", &q).await;
    assert_eq!(usage[&a.id].0, 1241);
}

#[tokio::test]
async fn the_usage_endpoints_check_their_parameters_and_page() {
    let org = SimOrg::generate(1, 5, 4, NOW);
    let sim = start_sim_with(org, options()).await;
    let start = NOW - 10 * DAY;
    for (path, status) in [
        ("/organization/usage/completions".to_string(), 400),
        (
            format!("/organization/costs?start_time={start}&bucket_width=1h"),
            400,
        ),
        (
            format!("/organization/usage/completions?start_time={start}&limit=32"),
            400,
        ),
        (
            format!("/organization/usage/completions?start_time={start}&bucket_width=1h&limit=168"),
            200,
        ),
        (
            format!("/organization/usage/completions?start_time={start}&page=garbage"),
            400,
        ),
    ] {
        assert_eq!(get(&sim, &path).await.0, status, "{path}");
    }
    let (_, first) = get(
        &sim,
        &format!("/organization/costs?start_time={start}&limit=4"),
    )
    .await;
    assert_eq!(first["data"].as_array().unwrap().len(), 4);
    assert_eq!(first["has_more"], true);
    let next = first["next_page"].as_str().unwrap();
    let (_, second) = get(
        &sim,
        &format!("/organization/costs?start_time={start}&limit=4&page={next}"),
    )
    .await;
    assert_eq!(
        second["data"][0]["start_time"],
        first["data"][3]["end_time"]
    );
    let (_, last) = get(
        &sim,
        &format!("/organization/costs?start_time={start}&limit=31"),
    )
    .await;
    assert_eq!(last["data"].as_array().unwrap().len(), 10);
    assert_eq!(last["has_more"], false);
    assert!(last["next_page"].is_null());
}

#[tokio::test]
async fn a_key_added_through_the_test_hook_is_logged_and_log_only_keys_can_be_made() {
    let org = SimOrg::generate(1, 4, 6, NOW);
    let sim = start_sim_with(org.clone(), options()).await;
    let p = &org.projects[0];
    let mut key = p.keys[0].clone();
    key.id = "key_added_by_hook".into();
    key.created_at = NOW - 60;
    key.scopes = vec!["api.all.read".into()];
    sim.add_key(&p.id, key.clone()).unwrap();
    // A key the log knows that the listing does not return (an inventory gap).
    let owner = &org.admin_api_keys[0].owner_user_id;
    sim.log_key_created(&p.id, "key_ghost", owner, None, NOW - 30);
    sim.log_key_deleted(&p.id, &p.keys[1].id, owner, NOW - 10);
    let recent = all_events(&sim, &format!("&effective_at[gte]={}", NOW - 60), 10).await;
    assert_eq!(recent.len(), 3, "{recent:?}");
    assert_eq!(recent[0]["api_key.deleted"]["id"], p.keys[1].id.as_str());
    assert_eq!(
        recent[0]["actor"]["session"]["user"]["email"],
        email_of(&org, owner).as_str()
    );
    assert_eq!(recent[1]["api_key.created"]["id"], "key_ghost");
    assert!(recent[1]["api_key.created"].get("data").is_none());
    assert_eq!(recent[2]["api_key.created"]["id"], "key_added_by_hook");
    assert_eq!(
        recent[2]["api_key.created"]["data"]["scopes"],
        serde_json::json!(["api.all.read"])
    );
    let creator = recent[2]["actor"]["session"]["user"]["email"]
        .as_str()
        .unwrap();
    if !key.owner.is_service_account() {
        assert_eq!(creator, email_of(&org, key.owner.id()));
    }
}
