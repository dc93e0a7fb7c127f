//! The simulated Administration API, driven over real HTTP: shapes per the spec, pagination,
//! auth, archived projects, deletions, every scripted fault, rate limiting, stats and the
//! `simulate` entry point. Organisations stay small so the whole file runs in a few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use keysweep::sim::{
    Fault, FaultKind, FaultRoute, SimAccess, SimKey, SimOptions, SimOrg, SimOwnerRef, SimServer,
    SimulateArgs,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::sim::{start_sim, start_sim_with};

const ADMIN: &str = "sk-admin-sim-test-5EcReT";
const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const KEYS: &str = "GET /v1/organization/projects/{project_id}/api_keys";

/// One client for the whole file (building one costs tens of milliseconds). No idle pooling:
/// each test has its own runtime, and a pooled connection must not outlive the runtime (or the
/// server) it was made on.
fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    });
    &CLIENT
}

async fn start(org: SimOrg) -> SimServer {
    start_sim(org, ADMIN).await
}

/// GET with the admin key; returns status, headers and raw body.
async fn get_raw(sim: &SimServer, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = client()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

async fn get(sim: &SimServer, path: &str) -> (u16, Value) {
    let (status, _, body) = get_raw(sim, path).await;
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, v)
}

async fn delete(sim: &SimServer, path: &str) -> (u16, Value) {
    let resp = client()
        .delete(format!("{}{path}", sim.base_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn keys_path(project: &str, query: &str) -> String {
    format!("/organization/projects/{project}/api_keys?{query}")
}

fn field_names(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn names(list: &[&'static str]) -> BTreeSet<&'static str> {
    list.iter().copied().collect()
}

fn active_projects(org: &SimOrg) -> Vec<&str> {
    org.projects
        .iter()
        .filter(|p| !p.is_archived())
        .map(|p| p.id.as_str())
        .collect()
}

/// Pages through a project's keys the way keysweep does; returns the ids and the page count.
async fn all_keys(sim: &SimServer, project: &str, access: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = format!("limit=100&owner_project_access={access}");
        if let Some(a) = &after {
            q.push_str(&format!("&after={a}"));
        }
        let (status, page) = get(sim, &keys_path(project, &q)).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for k in page["data"].as_array().unwrap() {
            ids.push(k["id"].as_str().unwrap().to_string());
        }
        if !page["has_more"].as_bool().unwrap() {
            return (ids, pages);
        }
        assert_eq!(
            page["last_id"],
            page["data"].as_array().unwrap().last().unwrap()["id"]
        );
        after = page["last_id"].as_str().map(str::to_string);
    }
}

#[tokio::test]
async fn pagination_counts_every_key_once_and_stats_count_every_page() {
    let org = SimOrg::generate(3, 250, 1, NOW);
    let sim = start(org.clone()).await;
    for project in active_projects(&org) {
        let (ids, pages) = all_keys(&sim, project, "any").await;
        assert_eq!(pages, 3);
        assert_eq!(ids.len(), 250);
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids, "keys come in a stable id order, each once");
        let expected: Vec<String> = org
            .project(project)
            .unwrap()
            .keys
            .iter()
            .map(|k| k.id.clone())
            .collect();
        assert_eq!(ids, expected);
    }
    assert_eq!(org.key_count(), 750);
    let stats = sim.stats();
    assert_eq!(stats.get(KEYS), Some(&9));
    assert_eq!(stats.len(), 1, "{stats:?}");

    // The same map over HTTP, without auth.
    let http: Value = reqwest::get(format!("http://{}/_sim/stats", sim.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(field_names(&http), names(&["requests"]));
    assert_eq!(http["requests"][KEYS], 9);
    assert_eq!(http["requests"].as_object().unwrap().len(), 1);

    // A wrong page size is refused the OpenAI way, and still counted.
    let p = active_projects(&org)[0];
    let (status, body) = get(&sim, &keys_path(p, "limit=101")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "limit");
    let (_, page) = get(&sim, &keys_path(p, "owner_project_access=any")).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 20, "default limit");
    assert_eq!(sim.stats().get(KEYS), Some(&11));

    let reset = client()
        .post(format!("http://{}/_sim/reset-stats", sim.addr()))
        .send()
        .await
        .unwrap();
    assert!(reset.status().is_success());
    assert!(sim.stats().is_empty());
}

/// `ProjectApiKey`'s fields, as the simulator always sends them.
fn spec_key_fields() -> BTreeSet<&'static str> {
    names(&[
        "object",
        "redacted_value",
        "name",
        "created_at",
        "last_used_at",
        "id",
        "owner_project_access",
        // November 2026: every key says when it expires (null: never).
        "expires_at",
        "owner",
    ])
}

#[tokio::test]
async fn projects_have_the_spec_fields() {
    let org = SimOrg::generate(2, 120, 5, NOW);
    let sim = start(org.clone()).await;
    let list_fields = names(&["object", "data", "first_id", "last_id", "has_more"]);
    let (_, projects) = get(&sim, "/organization/projects?limit=100").await;
    assert_eq!(field_names(&projects), list_fields);
    assert_eq!(projects["object"], "list");
    for p in projects["data"].as_array().unwrap() {
        assert_eq!(
            field_names(p),
            names(&[
                "id",
                "object",
                "name",
                "created_at",
                "archived_at",
                "status",
                "external_key_id"
            ])
        );
        assert_eq!(p["object"], "organization.project");
        assert_eq!(p["status"], "active");
        assert!(p["archived_at"].is_null() && p["external_key_id"].is_null());
        assert!(p["id"].as_str().unwrap().starts_with("proj_"));
    }
}

#[tokio::test]
async fn objects_have_the_spec_fields_and_nullability() {
    let org = SimOrg::generate(2, 120, 5, NOW);
    let sim = start(org.clone()).await;
    let list_fields = names(&["object", "data", "first_id", "last_id", "has_more"]);

    let project = active_projects(&org)[0];
    let (_, page) = get(
        &sim,
        &keys_path(project, "limit=100&owner_project_access=any"),
    )
    .await;
    assert_eq!(field_names(&page), list_fields);
    let key_fields = spec_key_fields();
    let (mut users, mut sas, mut never) = (0, 0, 0);
    for k in page["data"].as_array().unwrap() {
        assert_eq!(field_names(k), key_fields, "{k}");
        assert_eq!(k["object"], "organization.project.api_key");
        assert!(k["id"].as_str().unwrap().starts_with("key_"));
        assert!(k["created_at"].is_i64());
        assert!(k["last_used_at"].is_i64() || k["last_used_at"].is_null());
        assert!(k["expires_at"].is_i64() || k["expires_at"].is_null());
        never += usize::from(k["last_used_at"].is_null());
        let access = k["owner_project_access"].as_str().unwrap();
        assert!(access == "active" || access == "inactive");
        let owner = &k["owner"];
        match owner["type"].as_str().unwrap() {
            "user" => {
                users += 1;
                assert_eq!(field_names(owner), names(&["type", "user"]));
                assert_eq!(
                    field_names(&owner["user"]),
                    names(&["id", "name", "email", "role", "created_at"])
                );
                assert!(owner["user"]["id"].as_str().unwrap().starts_with("user_"));
                assert!(owner["user"]["email"].as_str().unwrap().contains('@'));
                assert!(
                    k["redacted_value"]
                        .as_str()
                        .unwrap()
                        .starts_with("sk-proj-")
                );
            }
            "service_account" => {
                sas += 1;
                assert_eq!(field_names(owner), names(&["type", "service_account"]));
                assert_eq!(
                    field_names(&owner["service_account"]),
                    names(&["id", "name", "role", "created_at"])
                );
                let id = owner["service_account"]["id"].as_str().unwrap();
                assert!(id.starts_with("svc_acct_"));
                assert!(
                    k["redacted_value"]
                        .as_str()
                        .unwrap()
                        .starts_with("sk-svcacct-")
                );
            }
            other => panic!("owner type {other}"),
        }
    }
    assert!(users > 0 && sas > 0 && never > 0, "{users} {sas} {never}");

    // Retrieve answers the same object as the list.
    let first = &page["data"][0];
    let (status, one) = get(
        &sim,
        &format!(
            "/organization/projects/{project}/api_keys/{}",
            first["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&one, first);
}

#[tokio::test]
async fn service_accounts_and_users_have_the_spec_fields() {
    let org = SimOrg::generate(2, 120, 5, NOW);
    let sim = start(org.clone()).await;
    let list_fields = names(&["object", "data", "first_id", "last_id", "has_more"]);
    let project = active_projects(&org)[0];
    let (_, sas_page) = get(
        &sim,
        &format!("/organization/projects/{project}/service_accounts?limit=2"),
    )
    .await;
    assert_eq!(field_names(&sas_page), list_fields);
    for sa in sas_page["data"].as_array().unwrap() {
        assert_eq!(
            field_names(sa),
            names(&["object", "id", "name", "role", "created_at"])
        );
        assert_eq!(sa["object"], "organization.project.service_account");
    }

    let (_, users_page) = get(
        &sim,
        &format!("/organization/projects/{project}/users?limit=100"),
    )
    .await;
    let active_members = org
        .project(project)
        .unwrap()
        .members
        .iter()
        .filter(|m| m.access == SimAccess::Active)
        .count();
    assert_eq!(users_page["data"].as_array().unwrap().len(), active_members);
    for u in users_page["data"].as_array().unwrap() {
        assert_eq!(
            field_names(u),
            names(&["object", "id", "name", "email", "role", "added_at"])
        );
    }
}

#[tokio::test]
async fn admin_keys_have_the_spec_fields_and_page_both_ways() {
    let org = SimOrg::generate(2, 120, 5, NOW);
    let sim = start(org.clone()).await;
    // Admin keys: paged with limit/after/order, `expires_at` always present.
    let (_, admin) = get(&sim, "/organization/admin_api_keys?limit=100").await;
    let all = admin["data"].as_array().unwrap();
    assert_eq!(all.len(), org.admin_api_keys.len());
    assert!(
        all.windows(2)
            .all(|w| w[0]["created_at"].as_i64() <= w[1]["created_at"].as_i64())
    );
    for k in all {
        assert_eq!(
            field_names(k),
            names(&[
                "object",
                "id",
                "name",
                "redacted_value",
                "created_at",
                "expires_at",
                "last_used_at",
                "owner"
            ])
        );
        assert_eq!(k["object"], "organization.admin_api_key");
        assert!(k["expires_at"].is_null() || k["expires_at"].is_i64());
    }
    assert!(all.iter().any(|k| k["expires_at"].is_i64()));
    let (_, desc1) = get(&sim, "/organization/admin_api_keys?limit=1&order=desc").await;
    assert_eq!(desc1["has_more"], true);
    assert_eq!(desc1["data"][0]["id"], all.last().unwrap()["id"]);
    let after = desc1["last_id"].as_str().unwrap();
    let (_, desc2) = get(
        &sim,
        &format!("/organization/admin_api_keys?limit=1&order=desc&after={after}"),
    )
    .await;
    assert_eq!(desc2["data"][0]["id"], all[all.len() - 2]["id"]);
}

#[tokio::test]
async fn owner_access_filter_follows_openai_membership_rules() {
    let org = SimOrg::generate(1, 300, 9, NOW);
    let sim = start(org.clone()).await;
    let project = active_projects(&org)[0];
    let (any, _) = all_keys(&sim, project, "any").await;
    let (active, _) = all_keys(&sim, project, "active").await;
    let (inactive, _) = all_keys(&sim, project, "inactive").await;
    assert_eq!(any.len(), 300);
    assert!(
        !inactive.is_empty(),
        "the generator makes some owners lose access"
    );
    assert_eq!(active.len() + inactive.len(), 300);

    // Omitted: the default visibility hides keys whose owner lost access.
    let mut default = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "limit=100".to_string()
        } else {
            format!("limit=100&after={after}")
        };
        let (_, page) = get(&sim, &keys_path(project, &q)).await;
        for k in page["data"].as_array().unwrap() {
            assert_eq!(k["owner_project_access"], "active");
            default.push(k["id"].as_str().unwrap().to_string());
        }
        if page["has_more"] == false {
            break;
        }
        after = page["last_id"].as_str().unwrap().to_string();
    }
    assert_eq!(default, active);

    // The hook flips the owner's membership: all their keys follow.
    let key = &active[0];
    sim.set_owner_access(project, key, SimAccess::Inactive)
        .unwrap();
    assert_eq!(
        sim.key(project, key).unwrap().owner_project_access,
        SimAccess::Inactive
    );
    let (inactive_after, _) = all_keys(&sim, project, "inactive").await;
    assert!(inactive_after.contains(key));
}

#[tokio::test]
async fn auth_errors_have_openai_shape_and_never_echo_the_key() {
    let sim = start(SimOrg::generate(1, 3, 1, NOW)).await;
    let url = format!("{}/organization/projects", sim.base_url());
    let client = client();

    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(field_names(&body), names(&["error"]));
    assert_eq!(
        field_names(&body["error"]),
        names(&["type", "message", "param", "code"])
    );
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(body["error"]["param"].is_null());

    let wrong_key = "sk-admin-WRONG-k3y-do-not-echo";
    let wrong = client
        .get(&url)
        .bearer_auth(wrong_key)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let text = wrong.text().await.unwrap();
    assert!(
        !text.contains(wrong_key) && !text.contains("WRONG"),
        "{text}"
    );
    assert!(!text.contains(ADMIN));

    // Revoked mid-sweep: the old key stops working, the new one works.
    let ok = client.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    sim.set_admin_key("sk-admin-rotated");
    let revoked = client.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(revoked.status(), 401);
    let rotated = client
        .get(&url)
        .bearer_auth("sk-admin-rotated")
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    assert_eq!(sim.stats().get("GET /v1/organization/projects"), Some(&5));
}

#[tokio::test]
async fn unknown_objects_are_404_with_the_envelope() {
    let org = SimOrg::generate(1, 3, 1, NOW);
    let sim = start(org.clone()).await;
    let (status, body) = get(&sim, &keys_path("proj_nope", "")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let project = active_projects(&org)[0];
    let (status, body) = get(
        &sim,
        &format!("/organization/projects/{project}/api_keys/key_nope"),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key_nope")
    );
    let (status, _) = get(&sim, "/organization/projects/proj_nope").await;
    assert_eq!(status, 404);
    let (status, body) = get(&sim, "/organization/nothing-here").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_object());
}

#[tokio::test]
async fn archived_projects_are_hidden_unless_asked_for() {
    let org = SimOrg::generate(4, 2, 3, NOW);
    let sim = start(org.clone()).await;
    let archived = org.projects.iter().find(|p| p.is_archived()).unwrap();

    let (_, default) = get(&sim, "/organization/projects?limit=100").await;
    let ids: Vec<&str> = default["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, active_projects(&org));

    let (_, all) = get(
        &sim,
        "/organization/projects?limit=100&include_archived=true",
    )
    .await;
    let data = all["data"].as_array().unwrap();
    assert_eq!(data.len(), 5);
    let shown = data
        .iter()
        .find(|p| p["id"] == archived.id.as_str())
        .unwrap();
    assert_eq!(shown["status"], "archived");
    assert!(shown["archived_at"].is_i64());

    // Small pages skip the archived project without losing anyone.
    let mut seen = Vec::new();
    let mut q = "limit=1".to_string();
    loop {
        let (_, page) = get(&sim, &format!("/organization/projects?{q}")).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_string()),
        );
        if page["has_more"] == false {
            break;
        }
        q = format!("limit=1&after={}", page["last_id"].as_str().unwrap());
    }
    assert_eq!(seen, active_projects(&org));

    for list in ["service_accounts", "users"] {
        let (status, body) = get(
            &sim,
            &format!("/organization/projects/{}/{list}", archived.id),
        )
        .await;
        assert_eq!(status, 400, "{list}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    // Its keys can still be listed.
    let (keys, _) = all_keys(&sim, &archived.id, "any").await;
    assert_eq!(keys.len(), archived.keys.len());
}

#[tokio::test]
async fn delete_removes_user_keys_refuses_service_account_keys_and_sa_delete_cascades() {
    let org = SimOrg::generate(1, 60, 11, NOW);
    // The August 2026 API, where a service-account key could not be deleted on its own
    // (the November 2026 default deletes it: tests/it/sim_nov2026.rs).
    let opts = SimOptions {
        refuse_service_account_key_delete: true,
        ..SimOptions::new(ADMIN)
    };
    let sim = start_sim_with(org.clone(), opts).await;
    let project = org.projects.iter().find(|p| !p.is_archived()).unwrap();
    let p = project.id.as_str();
    let user_key = project
        .keys
        .iter()
        .find(|k| !k.owner.is_service_account())
        .unwrap();
    let sa_key = project
        .keys
        .iter()
        .find(|k| k.owner.is_service_account())
        .unwrap();

    let (status, body) = delete(
        &sim,
        &format!("/organization/projects/{p}/api_keys/{}", user_key.id),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"object": "organization.project.api_key.deleted", "id": user_key.id, "deleted": true})
    );
    assert!(!sim.key_exists(p, &user_key.id));
    let (status, _) = get(
        &sim,
        &format!("/organization/projects/{p}/api_keys/{}", user_key.id),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = delete(
        &sim,
        &format!("/organization/projects/{p}/api_keys/{}", user_key.id),
    )
    .await;
    assert_eq!(status, 404, "a second delete finds nothing");
    let (ids, _) = all_keys(&sim, p, "any").await;
    assert_eq!(ids.len(), 59);

    let (status, body) = delete(
        &sim,
        &format!("/organization/projects/{p}/api_keys/{}", sa_key.id),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["param"].is_null() && body["error"]["code"].is_null());
    assert!(sim.key_exists(p, &sa_key.id));

    let sa_id = sa_key.owner.id().to_string();
    let sa_keys: Vec<&str> = project
        .keys
        .iter()
        .filter(|k| k.owner.id() == sa_id)
        .map(|k| k.id.as_str())
        .collect();
    let (status, body) = delete(
        &sim,
        &format!("/organization/projects/{p}/service_accounts/{sa_id}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"object": "organization.project.service_account.deleted", "id": sa_id, "deleted": true})
    );
    assert!(!sim.service_account_exists(p, &sa_id));
    for k in &sa_keys {
        assert!(!sim.key_exists(p, k));
    }
    let (ids, _) = all_keys(&sim, p, "any").await;
    assert_eq!(ids.len(), 59 - sa_keys.len());
    assert_eq!(
        sim.stats()
            .get("DELETE /v1/organization/projects/{project_id}/api_keys/{api_key_id}"),
        Some(&3)
    );
}

#[tokio::test]
async fn hooks_change_what_the_api_answers() {
    let org = SimOrg::generate(1, 5, 2, NOW);
    let sim = start(org.clone()).await;
    let project = active_projects(&org)[0];
    let key = org.project(project).unwrap().keys[0].clone();
    let path = format!("/organization/projects/{project}/api_keys/{}", key.id);

    sim.set_last_used(project, &key.id, Some(NOW - 5)).unwrap();
    sim.rename_key(project, &key.id, "renamed").unwrap();
    let (_, k) = get(&sim, &path).await;
    assert_eq!(k["last_used_at"], NOW - 5);
    assert_eq!(k["name"], "renamed");
    sim.set_last_used(project, &key.id, None).unwrap();
    let (_, k) = get(&sim, &path).await;
    assert!(k.as_object().unwrap().contains_key("last_used_at") && k["last_used_at"].is_null());

    let owner = org.project(project).unwrap().members[0].user_id.clone();
    let added = SimKey {
        id: "key_addedByTest0001".into(),
        name: "added".into(),
        redacted_value: "sk-proj-****test".into(),
        created_at: NOW - 100,
        last_used_at: None,
        owner: SimOwnerRef::User { id: owner },
        expires_at: None,
        scopes: Vec::new(),
    };
    sim.add_key(project, added.clone()).unwrap();
    assert!(sim.add_key(project, added).is_err(), "duplicate id");
    assert_eq!(sim.keys(project).len(), 6);
    sim.remove_key(project, &key.id).unwrap();
    assert!(!sim.key_exists(project, &key.id));
    let (ids, _) = all_keys(&sim, project, "any").await;
    assert_eq!(ids.len(), 5);
    assert!(ids.contains(&"key_addedByTest0001".to_string()));
    assert_eq!(sim.org().key_count(), 5);
}

/// Arms `fault` on page 2 of the project's key list (limit 2) and returns page 2's raw answer.
async fn page2_with(fault_kind: FaultKind) -> (SimServer, String, Vec<String>, u16, Vec<u8>) {
    let org = SimOrg::generate(1, 10, 4, NOW);
    let sim = start(org.clone()).await;
    let project = active_projects(&org)[0].to_string();
    let ids: Vec<String> = org
        .projects
        .iter()
        .find(|p| p.id == project)
        .unwrap()
        .keys
        .iter()
        .map(|k| k.id.clone())
        .collect();
    sim.faults()
        .add(Fault::on_list_keys(&project).page(2).respond(fault_kind));
    let (status, _, body) = get_raw(
        &sim,
        &keys_path(
            &project,
            &format!("limit=2&owner_project_access=any&after={}", ids[1]),
        ),
    )
    .await;
    (sim, project, ids, status, body)
}

#[tokio::test]
async fn scripted_status_fault_fires_on_its_page_the_given_number_of_times() {
    let org = SimOrg::generate(2, 10, 4, NOW);
    let sim = start(org.clone()).await;
    let projects = active_projects(&org);
    let (p, other) = (projects[0], projects[1]);
    let id = sim.faults().add(
        Fault::on_list_keys(p)
            .page(3)
            .times(2)
            .respond(FaultKind::Status(500)),
    );
    let keys = &org.project(p).unwrap().keys;
    let page3 = keys_path(
        p,
        &format!("limit=2&owner_project_access=any&after={}", keys[3].id),
    );
    let page1 = keys_path(p, "limit=2&owner_project_access=any");
    let other3 = keys_path(
        other,
        &format!(
            "limit=2&owner_project_access=any&after={}",
            org.project(other).unwrap().keys[3].id
        ),
    );
    assert_eq!(get(&sim, &page1).await.0, 200);
    assert_eq!(get(&sim, &other3).await.0, 200);
    let (status, body) = get(&sim, &page3).await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(get(&sim, &page3).await.0, 500);
    let (status, body) = get(&sim, &page3).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["id"], keys[4].id.as_str());
    assert_eq!(sim.faults().hits(id), 2);
    assert_eq!(sim.faults().pending(), 0);
    // Faulted requests are counted like any other.
    assert_eq!(sim.stats().get(KEYS), Some(&5));
}

#[tokio::test]
async fn rate_limited_fault_sends_retry_after() {
    let org = SimOrg::generate(1, 3, 4, NOW);
    let sim = start(org).await;
    sim.faults().add(
        Fault::on_list_projects()
            .once()
            .respond(FaultKind::RateLimited {
                retry_after_secs: 3,
            }),
    );
    let (status, headers, body) = get_raw(&sim, "/organization/projects").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(headers["retry-after-ms"], "3000");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(get(&sim, "/organization/projects").await.0, 200);
}

#[tokio::test]
async fn body_faults_are_visible_on_the_wire() {
    let (_sim, _, _, status, body) = page2_with(FaultKind::Truncated).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    assert!(body.starts_with(b"{\"object\":\"list\""));

    let (_sim, _, _, status, body) = page2_with(FaultKind::Malformed).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&body).is_err());

    let (_sim, _, _, _, body) = page2_with(FaultKind::WrongTypes).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["data"][0]["created_at"].is_string());

    let (_sim, _, ids, _, body) = page2_with(FaultKind::CursorLoop).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["has_more"], true);
    assert_eq!(
        v["last_id"],
        ids[1].as_str(),
        "last_id repeats the request's cursor"
    );

    let (_sim, _, ids, _, body) = page2_with(FaultKind::DuplicateIds).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["data"][0]["id"],
        ids[1].as_str(),
        "page 1's last id again"
    );
    assert_eq!(v["last_id"], ids[3].as_str(), "the cursor still advances");

    let (_sim, _, _, _, body) = page2_with(FaultKind::Oversized(200_000)).await;
    assert!(body.len() > 200_000);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    let (_sim, _, _, _, body) = page2_with(FaultKind::OmitLastUsed).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    for k in v["data"].as_array().unwrap() {
        assert!(!k.as_object().unwrap().contains_key("last_used_at"));
    }

    let (_sim, _, _, _, body) = page2_with(FaultKind::ExtraFields).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v.get("x_sim_envelope_extra").is_some());
    assert!(v["data"][0].get("x_sim_unknown").is_some());
    assert!(v["data"][0]["owner"].get("x_sim_owner_extra").is_some());

    // A page the fault is not armed on is untouched.
    let (sim, project, _, _, _) = page2_with(FaultKind::Malformed).await;
    let (status, page1) = get(
        &sim,
        &keys_path(&project, "limit=2&owner_project_access=any"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page1["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn delay_fault_outlasts_a_client_timeout() {
    let org = SimOrg::generate(1, 3, 4, NOW);
    let sim = start(org.clone()).await;
    let project = active_projects(&org)[0];
    sim.faults().add(
        Fault::on_list_keys(project)
            .once()
            .respond(FaultKind::Delay(Duration::from_secs(2))),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let url = format!("{}{}", sim.base_url(), keys_path(project, ""));
    let started = Instant::now();
    let err = client
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let ok = client.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn connection_reset_closes_the_socket_without_a_response() {
    let org = SimOrg::generate(1, 3, 4, NOW);
    let sim = start(org.clone()).await;
    let project = active_projects(&org)[0];
    sim.faults().add(
        Fault::on_list_keys(project)
            .times(2)
            .respond(FaultKind::ConnectionReset),
    );
    // Raw socket: not one byte of a response comes back.
    let mut sock = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let req = format!(
        "GET /v1/organization/projects/{project}/api_keys HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = sock.read_to_end(&mut buf).await;
    assert!(buf.is_empty(), "got {:?}", String::from_utf8_lossy(&buf));
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    }
    // reqwest sees a transport error, not a status.
    let url = format!("{}{}", sim.base_url(), keys_path(project, ""));
    let err = client()
        .get(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_err();
    assert!(err.status().is_none() && !err.is_timeout(), "{err}");
    // The fault is spent; the server is fine.
    assert_eq!(get(&sim, &keys_path(project, "")).await.0, 200);
}

#[tokio::test]
async fn after_effect_faults_lose_the_answer_but_keep_the_effect() {
    let org = SimOrg::generate(1, 20, 8, NOW);
    let sim = start(org.clone()).await;
    let project = org.projects.iter().find(|p| !p.is_archived()).unwrap();
    let key = project
        .keys
        .iter()
        .find(|k| !k.owner.is_service_account())
        .unwrap();
    let other = project
        .keys
        .iter()
        .find(|k| !k.owner.is_service_account() && k.id != key.id)
        .unwrap();
    sim.faults().add(
        Fault::on_delete_key(&project.id, &key.id)
            .after_effect()
            .respond(FaultKind::ConnectionReset),
    );
    sim.faults().add(
        Fault::on_delete_key(&project.id, &other.id)
            .once()
            .respond(FaultKind::Status(503)),
    );
    let client = client();
    let url = |k: &str| {
        format!(
            "{}/organization/projects/{}/api_keys/{k}",
            sim.base_url(),
            project.id
        )
    };
    let err = client
        .delete(url(&key.id))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_err();
    assert!(err.status().is_none(), "{err}");
    assert!(
        !sim.key_exists(&project.id, &key.id),
        "deleted although the answer was lost"
    );

    let resp = client
        .delete(url(&other.id))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        sim.key_exists(&project.id, &other.id),
        "a faulted DELETE deletes nothing"
    );
}

#[tokio::test]
async fn faults_on_other_routes_match_by_route() {
    let org = SimOrg::generate(1, 3, 4, NOW);
    let sim = start(org.clone()).await;
    let project = active_projects(&org)[0];
    let key = &org.project(project).unwrap().keys[0].id;
    sim.faults().add(
        Fault::on_get_key(project, key)
            .once()
            .respond(FaultKind::Status(502)),
    );
    sim.faults().add(
        Fault::on_list_admin_keys()
            .once()
            .respond(FaultKind::OmitLastUsed),
    );
    sim.faults().add(
        Fault::on(FaultRoute::GetProject)
            .once()
            .respond(FaultKind::WrongTypes),
    );
    let (status, _) = get(
        &sim,
        &format!("/organization/projects/{project}/api_keys/{key}"),
    )
    .await;
    assert_eq!(status, 502);
    let (_, admin) = get(&sim, "/organization/admin_api_keys").await;
    assert!(admin["data"][0].get("last_used_at").is_none());
    let (_, p) = get(&sim, &format!("/organization/projects/{project}")).await;
    assert!(p["created_at"].is_string());
    assert_eq!(sim.faults().pending(), 0);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let org = SimOrg::generate(1, 3, 4, NOW);
    let mut opts = SimOptions::new(ADMIN);
    opts.rate_limit = Some(2.0);
    let sim = start_sim_with(org, opts).await;
    let mut limited = None;
    for _ in 0..6 {
        let (status, headers, body) = get_raw(&sim, "/organization/projects").await;
        if status == 429 {
            limited = Some((headers, body));
            break;
        }
        assert_eq!(status, 200);
    }
    let (headers, body) = limited.expect("the third quick request exceeds 2 rps");
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    let ms: u64 = headers["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1 && ms >= 1 && ms <= secs * 1000, "{secs} {ms}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Waiting what it says is enough.
    tokio::time::sleep(Duration::from_millis(ms)).await;
    assert_eq!(get(&sim, "/organization/projects").await.0, 200);
}

#[tokio::test]
async fn random_failures_are_seeded_and_only_on_gets() {
    let org = SimOrg::generate(1, 3, 4, NOW);
    let run = |seed| {
        let org = org.clone();
        async move {
            let mut opts = SimOptions::new(ADMIN);
            opts.fail_rate = 0.5;
            opts.seed = seed;
            let sim = start_sim_with(org, opts).await;
            let mut statuses = Vec::new();
            for _ in 0..20 {
                statuses.push(get(&sim, "/organization/projects").await.0);
            }
            statuses
        }
    };
    let a = run(7).await;
    assert_eq!(a, run(7).await);
    assert!(a.contains(&500) && a.contains(&200), "{a:?}");
}

/// `org` served with `latency` on every request.
async fn start_with_latency(org: &SimOrg, latency: Duration) -> SimServer {
    let mut opts = SimOptions::new(ADMIN);
    opts.latency = latency;
    start_sim_with(org.clone(), opts).await
}

#[tokio::test]
async fn latency_does_not_serialise_requests() {
    let org = SimOrg::generate(2, 3, 4, NOW);
    let sim = start_with_latency(&org, Duration::from_millis(50)).await;
    let projects = active_projects(&org);
    // The first request is held by a long delay; the second must still be answered meanwhile.
    sim.faults()
        .add(Fault::on_list_keys(projects[0]).respond(FaultKind::Delay(Duration::from_secs(30))));
    let url = format!("{}{}", sim.base_url(), keys_path(projects[0], ""));
    let slow = tokio::spawn(async move { client().get(url).bearer_auth(ADMIN).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    assert_eq!(get(&sim, &keys_path(projects[1], "")).await.0, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "latency applied"
    );
    assert!(!slow.is_finished(), "the held request is still in flight");
    sim.shutdown().await;
    let _ = slow.await;
}

/// The latency is the whole time a request takes: the handler runs when the request arrives
/// (so a write is made then, as a real server makes it before its answer travels back) and
/// the answer waits for the rest.
#[tokio::test]
async fn a_write_is_made_when_its_request_arrives_and_answered_after_the_latency() {
    let org = SimOrg::generate(1, 3, 4, NOW);
    let sim = start_with_latency(&org, Duration::from_secs(2)).await;
    let project = active_projects(&org)[0].to_string();
    let key = sim.keys(&project)[0].id.clone();
    let url = format!(
        "{}/organization/projects/{project}/api_keys/{key}",
        sim.base_url()
    );
    let started = Instant::now();
    let delete = tokio::spawn(async move { client().delete(url).bearer_auth(ADMIN).send().await });
    let mut gone_at = None;
    while started.elapsed() < Duration::from_secs(5) {
        if !sim.key_exists(&project, &key) {
            gone_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gone_at = gone_at.expect("the key is deleted");
    // Made on arrival, not at the end of the 2 s (a generous margin for a loaded machine).
    assert!(gone_at < Duration::from_secs(1), "deleted at {gone_at:?}");
    assert!(
        !delete.is_finished(),
        "deleted at {gone_at:?}, before the answer"
    );
    let answer = delete.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "latency applied"
    );
}

#[tokio::test]
async fn generated_orgs_are_deterministic_over_the_wire() {
    let a = SimOrg::generate(3, 40, 123, NOW);
    let b = SimOrg::generate(3, 40, 123, NOW);
    assert_eq!(a.to_json_pretty(), b.to_json_pretty());
    let sa = start(a).await;
    let sb = start(b).await;
    let (_, pa) = get(&sa, "/organization/projects?include_archived=true").await;
    let (_, pb) = get(&sb, "/organization/projects?include_archived=true").await;
    assert_eq!(pa, pb);
    let first = pa["data"][0]["id"].as_str().unwrap();
    let (_, ka) = get(&sa, &keys_path(first, "limit=100&owner_project_access=any")).await;
    let (_, kb) = get(&sb, &keys_path(first, "limit=100&owner_project_access=any")).await;
    assert_eq!(ka, kb);
    assert_ne!(
        SimOrg::generate(3, 40, 124, NOW).to_json_pretty(),
        SimOrg::generate(3, 40, 123, NOW).to_json_pretty()
    );
}

#[tokio::test]
async fn simulate_command_serves_dumps_and_reloads_an_org() {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("org.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let cli = Cli::try_parse_from([
        "simulate",
        "--listen",
        &listen,
        "--admin-key",
        ADMIN,
        "--projects",
        "2",
        "--keys-per-project",
        "7",
        "--seed",
        "5",
        "--now",
        "2026-01-01T00:00:00Z",
        "--dump-org",
        dump.to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        !format!("{:?}", cli.args).contains(ADMIN),
        "Debug redacts the key"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(keysweep::sim::run(cli.args, async {
        let _ = stopped.await;
    }));
    let client = client();
    let url = format!("http://{listen}/v1/organization/projects?include_archived=true");
    let mut body = None;
    for _ in 0..100 {
        if let Ok(resp) = client.get(&url).bearer_auth(ADMIN).send().await {
            body = Some(resp.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = body.expect("simulate is listening");
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    let loaded = SimOrg::from_json_file(&dump).unwrap();
    assert_eq!(loaded, SimOrg::generate(2, 7, 5, NOW));
    let served = start(loaded).await;
    let (_, again) = get(&served, "/organization/projects?include_archived=true").await;
    assert_eq!(again, body);

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"format": 1, "generated_at": 0, "users": [], "admin_api_keys": [], "projects": [{"id": 5}]}"#).unwrap();
    let err = SimOrg::from_json_file(&broken).unwrap_err().to_string();
    assert!(
        err.contains("broken.json") && err.contains("projects[0].id"),
        "{err}"
    );
}

#[tokio::test]
async fn demo_org_covers_every_case() {
    let org = SimOrg::demo(NOW);
    let sim = start(org.clone()).await;
    let (_, projects) = get(&sim, "/organization/projects").await;
    assert_eq!(projects["data"].as_array().unwrap().len(), 3);
    let mut all = Vec::new();
    for p in active_projects(&org) {
        let (_, page) = get(&sim, &keys_path(p, "limit=100&owner_project_access=any")).await;
        all.extend(page["data"].as_array().unwrap().clone());
    }
    assert_eq!(all.len(), org.key_count());
    let day = 86_400;
    let by_name: BTreeMap<&str, &Value> = all
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k))
        .collect();
    assert!(by_name.contains_key("break-glass-prod"));
    assert!(all.iter().any(|k| k["owner"]["type"] == "service_account"));
    assert!(all.iter().any(|k| k["owner_project_access"] == "inactive"));
    assert!(all.iter().any(|k| k["last_used_at"].is_null()));
    assert!(all.iter().any(
        |k| NOW - k["created_at"].as_i64().unwrap() > 90 * day && k["owner"]["type"] == "user"
    ));
    assert!(
        all.iter()
            .any(|k| NOW - k["created_at"].as_i64().unwrap() < 30 * day
                && k["last_used_at"].as_i64().is_some_and(|t| NOW - t < day))
    );
}
