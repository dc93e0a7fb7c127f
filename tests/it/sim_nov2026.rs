//! The simulator speaks the November 2026 Administration API (issue 12, deliverable 1), over
//! real HTTP: `expires_at` on every key, the key update with the API's validation, per-key
//! DELETE of service-account keys, minting, scopes visible only through `/_sim/`, expired keys
//! listed or hidden, faults and stats on the new routes, the settable clock, the `simulate`
//! flags; and OpenAI's own Python SDK as an independent client (tests/sdk/check_sim.py).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keysweep::sim::{Fault, FaultKind, SimEffect, SimOptions, SimOrg, SimProject, SimServer};
use serde_json::{Value, json};

const ADMIN: &str = "sk-admin-nov2026-5EcReT";
/// 2026-12-01T00:00:00Z: the generated organisations' clock and the simulator's.
const NOW: i64 = 1_796_083_200;
const NOW_RFC3339: &str = "2026-12-01T00:00:00Z";
const DAY: i64 = 86_400;
const UPDATE: &str = "POST /v1/organization/projects/{project_id}/api_keys/{api_key_id}";
const MINT: &str =
    "POST /v1/organization/projects/{project_id}/service_accounts/{service_account_id}/api_keys";

fn options() -> SimOptions {
    SimOptions {
        now: Some(NOW),
        freeze_clock: true,
        max_key_lifetime: Some(Duration::from_secs(30 * DAY as u64)),
        ..SimOptions::new(ADMIN)
    }
}

async fn start(org: SimOrg, opts: SimOptions) -> SimServer {
    SimServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), org, opts)
        .await
        .unwrap()
}

/// Sends a request (JSON body when given) with the admin key; answers status and JSON body.
async fn call(sim: &SimServer, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let url = if path.starts_with("/_sim/") {
        format!("http://{}{path}", sim.addr())
    } else {
        format!("{}{path}", sim.base_url())
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn key_path(project: &str, key: &str) -> String {
    format!("/organization/projects/{project}/api_keys/{key}")
}

fn mint_path(project: &str, sa: &str) -> String {
    format!("/organization/projects/{project}/service_accounts/{sa}/api_keys")
}

fn inspect_path(project: &str, key: &str) -> String {
    format!("/_sim/projects/{project}/api_keys/{key}")
}

/// The first active project, with one live user key, one live service-account key (whose account
/// owns at least one other key) and one expired key.
struct Picked {
    project: String,
    user_key: String,
    sa_key: String,
    sa: String,
    sa_other_keys: Vec<String>,
    expired: String,
}

fn pick(org: &SimOrg) -> Picked {
    let live = |k: &&keysweep::sim::SimKey| !k.is_expired(NOW);
    for p in org.projects.iter().filter(|p| !p.is_archived()) {
        let user_key = p
            .keys
            .iter()
            .filter(live)
            .find(|k| !k.owner.is_service_account());
        let sa_key = p.keys.iter().filter(live).find(|k| {
            k.owner.is_service_account()
                && p.keys.iter().filter(|o| o.owner == k.owner).count() >= 2
        });
        let expired = p.keys.iter().find(|k| k.is_expired(NOW));
        if let (Some(u), Some(s), Some(e)) = (user_key, sa_key, expired) {
            return Picked {
                project: p.id.clone(),
                user_key: u.id.clone(),
                sa_key: s.id.clone(),
                sa: s.owner.id().to_string(),
                sa_other_keys: p
                    .keys
                    .iter()
                    .filter(|o| o.owner == s.owner && o.id != s.id)
                    .map(|o| o.id.clone())
                    .collect(),
                expired: e.id.clone(),
            };
        }
    }
    panic!("the generated organisation lacks the needed mix");
}

fn org() -> SimOrg {
    SimOrg::generate(2, 60, 12, NOW)
}

#[tokio::test]
async fn every_key_has_expires_at_and_generated_orgs_mix_never_later_and_expired() {
    let org = SimOrg::generate(10, 100, 5, NOW);
    let keys: Vec<_> = org.projects.iter().flat_map(|p| &p.keys).collect();
    let n = keys.len() as f64;
    let never = keys.iter().filter(|k| k.expires_at.is_none()).count() as f64 / n;
    let later = keys.iter().filter(|k| k.expires_at > Some(NOW)).count() as f64 / n;
    let expired = keys.iter().filter(|k| k.is_expired(NOW)).count() as f64 / n;
    assert!((0.6..0.8).contains(&never), "never {never}");
    assert!((0.12..0.28).contains(&later), "later {later}");
    assert!((0.05..0.15).contains(&expired), "expired {expired}");
    for k in keys.iter().filter(|k| k.is_expired(NOW)) {
        let at = k.expires_at.unwrap();
        assert!(
            at > k.created_at && k.last_used_at.is_none_or(|u| u < at),
            "{k:?}"
        );
    }
    // The November 2026 fields did not disturb the older ones: same seed, same keys.
    let demo = SimOrg::demo(NOW);
    let demo_keys = demo.projects.iter().flat_map(|p| &p.keys);
    assert!(demo_keys.clone().any(|k| k.expires_at.is_none()));
    assert!(demo_keys.clone().any(|k| k.expires_at > Some(NOW)));
    assert!(demo_keys.clone().any(|k| k.is_expired(NOW)));

    let sim = start(org.clone(), options()).await;
    let p: &SimProject = org.projects.iter().find(|p| !p.is_archived()).unwrap();
    let (status, page) = call(
        &sim,
        "GET",
        &format!(
            "/organization/projects/{}/api_keys?limit=100&owner_project_access=any",
            p.id
        ),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let data = page["data"].as_array().unwrap();
    assert_eq!(
        data.len(),
        p.keys.len(),
        "expired keys stay listed by default"
    );
    for k in data {
        let model = p.keys.iter().find(|m| k["id"] == m.id.as_str()).unwrap();
        let obj = k.as_object().unwrap();
        assert!(
            obj.contains_key("expires_at"),
            "expires_at always present: {k}"
        );
        assert_eq!(k["expires_at"], json!(model.expires_at));
        assert!(
            !obj.contains_key("scopes"),
            "the key object never shows scopes"
        );
    }
}

#[tokio::test]
async fn update_sets_expiry_and_scopes() {
    let org = org();
    let x = pick(&org);
    let sim = start(org, options()).await;
    let path = key_path(&x.project, &x.user_key);

    let (status, key) = call(&sim, "POST", &path, Some(r#"{"expires_in_seconds": 3600}"#)).await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(key["object"], "organization.project.api_key");
    assert_eq!(key["id"], x.user_key.as_str());
    assert_eq!(key["expires_at"], NOW + 3600);
    assert!(key.get("scopes").is_none());

    let (status, key) = call(&sim, "POST", &path, Some(r#"{"scopes": ["api.all.read"]}"#)).await;
    assert_eq!(status, 200);
    assert_eq!(
        key["expires_at"],
        NOW + 3600,
        "omitted fields stay unchanged"
    );
    let (_, stored) = call(&sim, "GET", &inspect_path(&x.project, &x.user_key), None).await;
    assert_eq!(stored["scopes"], json!(["api.all.read"]));
    assert_eq!(stored["expires_at"], NOW + 3600);
    assert_eq!(stored["expired"], false);
    let body = r#"{"scopes": [], "expires_in_seconds": 7200}"#;
    let (status, _) = call(&sim, "POST", &path, Some(body)).await;
    assert_eq!(status, 200);
    let snap = sim.key(&x.project, &x.user_key).unwrap();
    assert_eq!(
        (snap.expires_at, snap.scopes),
        (Some(NOW + 7200), Vec::new())
    );

    // Service-account keys are updated the same way.
    let sa_path = key_path(&x.project, &x.sa_key);
    let (status, key) = call(
        &sim,
        "POST",
        &sa_path,
        Some(r#"{"expires_in_seconds": 60}"#),
    )
    .await;
    assert_eq!((status, key["expires_at"].clone()), (200, json!(NOW + 60)));
}

#[tokio::test]
async fn update_refuses_what_the_api_refuses() {
    let org = org();
    let x = pick(&org);
    let sim = start(org, options()).await;
    let path = key_path(&x.project, &x.user_key);
    let before = sim.key(&x.project, &x.user_key).unwrap();
    for (body, param) in [
        ("{}", "body"),
        ("", "body"),
        ("[1]", "body"),
        (r#"{"expires_in_seconds": null}"#, "expires_in_seconds"),
        (r#"{"scopes": null}"#, "scopes"),
        (r#"{"expires_in_seconds": 0}"#, "expires_in_seconds"),
        (r#"{"expires_in_seconds": -60}"#, "expires_in_seconds"),
        (r#"{"expires_in_seconds": 1.5}"#, "expires_in_seconds"),
        (r#"{"expires_in_seconds": "60"}"#, "expires_in_seconds"),
        (r#"{"scopes": "api.all.read"}"#, "scopes"),
        (r#"{"name": "renamed"}"#, "body"),
        // The organisation's limit is 30 days.
        (r#"{"expires_in_seconds": 2592001}"#, "expires_in_seconds"),
    ] {
        let (status, err) = call(&sim, "POST", &path, Some(body)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert_eq!(err["error"]["param"], param, "{body}");
        assert!(err["error"]["code"].is_null());
    }
    let after = sim.key(&x.project, &x.user_key).unwrap();
    assert_eq!(after, before, "refusals changed nothing");
    let (status, _) = call(
        &sim,
        "POST",
        &path,
        Some(r#"{"expires_in_seconds": 2592000}"#),
    )
    .await;
    assert_eq!(status, 200, "exactly the limit is allowed");
    let snap = sim.key(&x.project, &x.user_key).unwrap();
    assert_eq!(snap.expires_at, Some(NOW + 30 * DAY));

    let expired = key_path(&x.project, &x.expired);
    let (status, err) = call(&sim, "POST", &expired, Some(r#"{"scopes": []}"#)).await;
    assert_eq!(status, 400, "expired keys cannot be updated");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let missing = key_path(&x.project, "key_doesNotExist");
    let (status, _) = call(&sim, "POST", &missing, Some(r#"{"scopes": []}"#)).await;
    assert_eq!(status, 404);
    let (status, _) = call(&sim, "POST", &key_path("proj_nope", "k"), Some("{}")).await;
    assert_eq!(status, 400, "the body is validated first");
}

#[tokio::test]
async fn service_account_key_delete_removes_only_that_key() {
    let org = org();
    let x = pick(&org);
    let sim = start(org, options()).await;
    let (status, body) = call(&sim, "DELETE", &key_path(&x.project, &x.sa_key), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"object": "organization.project.api_key.deleted", "id": x.sa_key, "deleted": true})
    );
    assert!(!sim.key_exists(&x.project, &x.sa_key));
    assert!(sim.service_account_exists(&x.project, &x.sa));
    for k in &x.sa_other_keys {
        assert!(
            sim.key_exists(&x.project, k),
            "the account's other key {k} stays"
        );
    }
    let (status, _) = call(&sim, "DELETE", &key_path(&x.project, &x.sa_key), None).await;
    assert_eq!(status, 404);
    let sa_path = format!(
        "/organization/projects/{}/service_accounts/{}",
        x.project, x.sa
    );
    let (status, _) = call(&sim, "GET", &sa_path, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn minting_returns_the_value_once_and_stores_only_the_redacted_form() {
    let org = org();
    let x = pick(&org);
    let archived = org.projects.iter().find(|p| p.is_archived()).unwrap();
    let sim = start(org.clone(), options()).await;
    let body = r#"{"name": "minted", "scopes": ["api.files.read"], "expires_in_seconds": 86400}"#;
    let (status, minted) = call(&sim, "POST", &mint_path(&x.project, &x.sa), Some(body)).await;
    assert_eq!(status, 200, "{minted}");
    let fields: Vec<&str> = minted
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields.len(),
        6,
        "object, value, name, created_at, id, expires_at: {minted}"
    );
    assert_eq!(
        minted["object"],
        "organization.project.service_account.api_key"
    );
    assert_eq!(
        (minted["name"].clone(), minted["created_at"].clone()),
        (json!("minted"), json!(NOW))
    );
    assert_eq!(minted["expires_at"], NOW + DAY);
    let value = minted["value"].as_str().unwrap();
    assert!(value.starts_with("sk-svcacct-") && value.len() > 40);
    let id = minted["id"].as_str().unwrap();

    let (status, key) = call(&sim, "GET", &key_path(&x.project, id), None).await;
    assert_eq!(status, 200);
    assert_eq!(key["owner"]["type"], "service_account");
    assert_eq!(key["owner"]["service_account"]["id"], x.sa.as_str());
    assert_eq!(key["expires_at"], NOW + DAY);
    assert!(key["last_used_at"].is_null());
    let (_, stored) = call(&sim, "GET", &inspect_path(&x.project, id), None).await;
    assert_eq!(stored["scopes"], json!(["api.files.read"]));
    // The value exists only in that one answer.
    assert!(!stored.to_string().contains(value));
    assert!(!sim.org().to_json_pretty().contains(value));
    assert!(
        key["redacted_value"]
            .as_str()
            .unwrap()
            .ends_with(&value[value.len() - 4..])
    );

    for body in ["", "{}", r#"{"expires_in_seconds": null}"#] {
        let (status, k) = call(&sim, "POST", &mint_path(&x.project, &x.sa), Some(body)).await;
        assert_eq!(status, 200, "{body}");
        assert!(k["expires_at"].is_null() && k["name"].is_string(), "{k}");
    }
    for (path, body, want) in [
        (
            mint_path(&x.project, &x.sa),
            r#"{"expires_in_seconds": 2678400}"#,
            400,
        ),
        (
            mint_path(&x.project, &x.sa),
            r#"{"expires_in_seconds": 0}"#,
            400,
        ),
        (mint_path(&x.project, &x.sa), r#"{"name": null}"#, 400),
        (mint_path(&x.project, "svc_acct_nope"), "{}", 404),
        (mint_path(&archived.id, "svc_acct_any"), "{}", 400),
        (mint_path("proj_nope", "svc_acct_any"), "{}", 404),
    ] {
        let (status, err) = call(&sim, "POST", &path, Some(body)).await;
        assert_eq!(status, want, "{path} {body}: {err}");
    }
    let sa_keys = sim
        .keys(&x.project)
        .into_iter()
        .filter(|k| k.owner.id() == x.sa)
        .count();
    assert_eq!(sa_keys, x.sa_other_keys.len() + 1 + 4, "four keys minted");
}

#[tokio::test]
async fn expired_keys_stay_listed_by_default_or_answer_404_when_hidden() {
    let org = org();
    let x = pick(&org);
    let list = format!(
        "/organization/projects/{}/api_keys?limit=100&owner_project_access=any",
        x.project
    );
    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    };

    let sim = start(org.clone(), options()).await;
    let (_, page) = call(&sim, "GET", &list, None).await;
    assert!(ids(&page).contains(&x.expired));
    let (status, key) = call(&sim, "GET", &key_path(&x.project, &x.expired), None).await;
    assert_eq!(status, 200);
    assert!(
        key["expires_at"].as_i64().unwrap() <= NOW,
        "its past expires_at"
    );
    let (status, _) = call(&sim, "DELETE", &key_path(&x.project, &x.expired), None).await;
    assert_eq!(status, 200);

    let hidden = SimOptions {
        hide_expired_keys: true,
        ..options()
    };
    let sim = start(org, hidden).await;
    let (_, page) = call(&sim, "GET", &list, None).await;
    assert!(!ids(&page).contains(&x.expired));
    assert!(ids(&page).contains(&x.user_key));
    for method in ["GET", "DELETE"] {
        let (status, _) = call(&sim, method, &key_path(&x.project, &x.expired), None).await;
        assert_eq!(status, 404, "{method}");
    }
    let path = key_path(&x.project, &x.expired);
    let (status, _) = call(&sim, "POST", &path, Some(r#"{"scopes": []}"#)).await;
    assert_eq!(status, 404);
    // The simulator itself still knows it.
    let (status, stored) = call(&sim, "GET", &inspect_path(&x.project, &x.expired), None).await;
    assert_eq!((status, stored["expired"].clone()), (200, json!(true)));

    // A key that expires as the clock moves drops out at that moment.
    let path = key_path(&x.project, &x.user_key);
    call(&sim, "POST", &path, Some(r#"{"expires_in_seconds": 100}"#)).await;
    sim.advance_clock(99);
    assert_eq!(call(&sim, "GET", &path, None).await.0, 200);
    sim.advance_clock(1);
    assert_eq!(call(&sim, "GET", &path, None).await.0, 404);
    let (_, page) = call(&sim, "GET", &list, None).await;
    assert!(!ids(&page).contains(&x.user_key));
}

#[tokio::test]
async fn the_clock_is_set_and_advanced_through_sim_endpoints() {
    let org = org();
    let x = pick(&org);
    let sim = start(org, options()).await;
    assert_eq!(sim.now(), NOW);
    let (status, clock) = call(&sim, "GET", "/_sim/clock", None).await;
    assert_eq!((status, clock), (200, json!({"now": NOW, "frozen": true})));
    let (_, clock) = call(
        &sim,
        "POST",
        "/_sim/clock",
        Some(r#"{"advance_seconds": 90}"#),
    )
    .await;
    assert_eq!(clock["now"], NOW + 90);
    let body = format!(r#"{{"now": {}}}"#, NOW + DAY);
    let (_, clock) = call(&sim, "POST", "/_sim/clock", Some(&body)).await;
    assert_eq!(clock["now"], NOW + DAY);
    assert_eq!(sim.now(), NOW + DAY);
    for bad in [
        "",
        "{\"now\": \"x\"}",
        r#"{"now": 1, "advance_seconds": 1}"#,
        r#"{"later": 1}"#,
    ] {
        let (status, _) = call(&sim, "POST", "/_sim/clock", Some(bad)).await;
        assert_eq!(status, 400, "{bad}");
    }
    // An expiry is relative to the simulator's clock, and passes with it.
    let path = key_path(&x.project, &x.user_key);
    let (_, key) = call(&sim, "POST", &path, Some(r#"{"expires_in_seconds": 60}"#)).await;
    assert_eq!(key["expires_at"], NOW + DAY + 60);
    call(
        &sim,
        "POST",
        "/_sim/clock",
        Some(r#"{"advance_seconds": 60}"#),
    )
    .await;
    let (status, _) = call(&sim, "POST", &path, Some(r#"{"expires_in_seconds": 60}"#)).await;
    assert_eq!(status, 400, "expired at the new time");
    // Unfrozen, it runs with real time from where it was set.
    let (_, clock) = call(&sim, "POST", "/_sim/clock", Some(r#"{"frozen": false}"#)).await;
    assert_eq!(clock["frozen"], false);
    assert!(sim.now() >= NOW + DAY + 60 && sim.now() < NOW + DAY + 120);
}

#[tokio::test]
async fn faults_on_the_new_routes_are_scripted_and_counted() {
    let org = org();
    let x = pick(&org);
    let sim = start(org, options()).await;
    let path = key_path(&x.project, &x.user_key);
    let body = Some(r#"{"expires_in_seconds": 600}"#);

    let id = sim.faults().add(
        Fault::on_update_key(&x.project, &x.user_key)
            .once()
            .respond(FaultKind::Status(503)),
    );
    assert_eq!(call(&sim, "POST", &path, body).await.0, 503);
    assert_eq!(sim.faults().hits(id), 1);
    let before = org_expiry(&sim, &x);
    assert_ne!(before, Some(NOW + 600), "a faulted update changes nothing");
    // Updated, but the answer was lost.
    sim.faults().add(
        Fault::on_update_key(&x.project, &x.user_key)
            .after_effect()
            .once()
            .respond(FaultKind::Status(500)),
    );
    assert_eq!(call(&sim, "POST", &path, body).await.0, 500);
    assert_eq!(org_expiry(&sim, &x), Some(NOW + 600));
    // Someone moves the expiry in the dashboard as the next update arrives.
    sim.faults().add(
        Fault::on_update_key(&x.project, &x.user_key)
            .once()
            .respond(FaultKind::Apply(SimEffect::set_expires_at(
                &x.project,
                &x.user_key,
                Some(NOW - 1),
            ))),
    );
    assert_eq!(call(&sim, "POST", &path, body).await.0, 400, "now expired");

    let mint = mint_path(&x.project, &x.sa);
    let before = sim.keys(&x.project).len();
    sim.faults().add(
        Fault::on_create_service_account_key(&x.project, &x.sa)
            .once()
            .respond(FaultKind::Status(502)),
    );
    assert_eq!(call(&sim, "POST", &mint, Some("{}")).await.0, 502);
    assert_eq!(
        sim.keys(&x.project).len(),
        before,
        "a faulted mint mints nothing"
    );
    assert_eq!(call(&sim, "POST", &mint, Some("{}")).await.0, 200);

    let stats = sim.stats();
    assert_eq!(stats.get(UPDATE), Some(&3));
    assert_eq!(stats.get(MINT), Some(&2));
    let (_, remote) = call(&sim, "GET", "/_sim/stats", None).await;
    assert_eq!(remote["requests"][UPDATE], 3);
    assert_eq!(remote["requests"][MINT], 2);
}

fn org_expiry(sim: &SimServer, x: &Picked) -> Option<i64> {
    sim.key(&x.project, &x.user_key).unwrap().expires_at
}

// ---- the `simulate` process and OpenAI's Python SDK ----------------------------------------

/// `keysweep simulate` as a child process on a free port; killed on drop.
struct Process {
    child: Child,
    base_url: String,
}

impl Process {
    fn start(args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keysweep"))
            .args(["simulate", "--listen", "127.0.0.1:0", "--admin-key", ADMIN])
            .args(args)
            .env_remove("OPENAI_ADMIN_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base_url = loop {
            assert!(Instant::now() < deadline, "simulator did not start");
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on ") => {
                    break line.rsplit(' ').next().unwrap().to_string();
                }
                Some(_) => {}
                None => panic!("simulator exited early"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Process { child, base_url }
    }

    fn root(&self) -> String {
        self.base_url.trim_end_matches("/v1").to_string()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn simulate_flags_set_clock_limit_and_hidden_expired_keys() {
    let sim = Process::start(&[
        "--now",
        NOW_RFC3339,
        "--freeze-clock",
        "--max-key-lifetime",
        "7d",
        "--hide-expired-keys",
        "--projects",
        "2",
        "--keys-per-project",
        "60",
        "--seed",
        "12",
    ]);
    let x = pick(&org());
    let http = reqwest::Client::new();
    let clock: Value = http
        .get(format!("{}/_sim/clock", sim.root()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(clock, json!({"now": NOW, "frozen": true}));
    let get = |key: &str| {
        http.get(format!("{}{}", sim.base_url, key_path(&x.project, key)))
            .bearer_auth(ADMIN)
            .send()
    };
    assert_eq!(get(&x.user_key).await.unwrap().status(), 200);
    assert_eq!(get(&x.expired).await.unwrap().status(), 404, "hidden");
    let update = |secs: i64| {
        http.post(format!(
            "{}{}",
            sim.base_url,
            key_path(&x.project, &x.user_key)
        ))
        .bearer_auth(ADMIN)
        .json(&json!({ "expires_in_seconds": secs }))
        .send()
    };
    assert_eq!(update(7 * DAY).await.unwrap().status(), 200);
    assert_eq!(update(7 * DAY + 1).await.unwrap().status(), 400);
}

/// Whether `python3` can import OpenAI's SDK; `.ci/run` installs it. Without CI the test says
/// why it did nothing; under CI a missing SDK is a failure.
fn python_sdk_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 cannot import openai (pip install 'openai>=3.51.0')"
        );
        eprintln!("skipped: python3 cannot import openai (pip install 'openai>=3.51.0')");
    }
    ok
}

#[test]
fn openais_python_sdk_lists_retrieves_updates_deletes_and_mints() {
    if !python_sdk_available() {
        return;
    }
    let sim = Process::start(&[
        "--now",
        NOW_RFC3339,
        "--freeze-clock",
        "--max-key-lifetime",
        "30d",
        "--projects",
        "2",
        "--keys-per-project",
        "40",
        "--seed",
        "3",
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/check_sim.py");
    let out = Command::new("python3")
        .arg(script)
        .args([sim.base_url.as_str(), &NOW.to_string()])
        .env("OPENAI_ADMIN_KEY", ADMIN)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("sdk check ok"), "{stdout}");
}
