//! Issue 16 in what people are told, through the real binary (`keysweep run --once`), the
//! simulator over HTTP, a real SMTP server and real HTTP receivers: a service-account key's
//! notices reach its creator as the simulator's audit log records it (else the project's owners,
//! else `owner_fallback`); every notice shows the key's usage; a key that woke up is told to its
//! owner at once; a key deleted outside keysweep closes its finding with who deleted it.
//! These tests never assert on timings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use keysweep::sim::{
    FORMAT_VERSION, SimAccess, SimAdminKey, SimHistory, SimKey, SimKeyHistory, SimMember,
    SimOptions, SimOrg, SimOwnerRef, SimProject, SimServer, SimServiceAccount, SimUsage, SimUser,
};
use serde_json::Value;

use crate::support::listing::ADMIN_KEY;
use crate::support::process::run_to_end;
use crate::support::receivers::Receiver;
use crate::support::secrets::whsec;
use crate::support::sim::start_sim_with;
use crate::support::smtp_server::{self, SmtpServer, TestPki};
use crate::support::time::{DAY, DEC_1_2026 as NOW, HOUR, rfc3339};

const KEY_ENV: &str = "KS_INTEL_NOTICES_ADMIN_KEY";
const HOOK_ENV: &str = "KS_INTEL_NOTICES_HOOK_SECRET";
const SLACK_ENV: &str = "KS_INTEL_NOTICES_SLACK_URL";
const SMTP_USER: &str = "in-mailer";
const SMTP_PASSWORD: &str = "in-Pa55word";

/// The receivers of one test.
struct World {
    sim: SimServer,
    smtp: SmtpServer,
    rx: Receiver,
    _dir: tempfile::TempDir,
    config: PathBuf,
    secret: String,
    _pki: TestPki,
}

/// `policy` is the `[[policies]]` table; its notices go to `mail` (owner mail), `hook` and
/// `slack`; `owner_fallback` is the webhook `/fallback`, `ops_channels` the webhook `/ops`.
async fn world(org: SimOrg, history: SimHistory, policy: &str) -> World {
    world_with(org, history, policy, true).await
}

/// The `mail` channel's recipients: a team mailbox, or (`owner = true`) each owner.
const MAIL_TO: [&str; 2] = ["to = [\"team@example.com\"]", "owner = true"];

/// [`world`], with `owner = true` on the `mail` channel or not (then no channel mails owners).
async fn world_with(org: SimOrg, history: SimHistory, policy: &str, owner_mail: bool) -> World {
    let sim = start_sim_with(
        org,
        SimOptions {
            now: Some(NOW),
            freeze_clock: true,
            history,
            ..SimOptions::new(ADMIN_KEY)
        },
    )
    .await;
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"mode = "dry-run"
state_path = "{state}"
owner_fallback = ["fallback"]
ops_channels = ["ops"]

[[organizations]]
name = "acme"
base_url = "{base}"
admin_key_env = "{KEY_ENV}"

{policy}
notify = ["mail", "hook", "slack"]

[[channels]]
name = "mail"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "starttls"
smtp_ca_file = "{ca}"
smtp_username_env = "KS_IN_SMTP_USER"
smtp_password_env = "KS_IN_SMTP_PASSWORD"
from = "keysweep <keysweep@example.com>"
{mail_to}

[[channels]]
name = "slack"
type = "slack"
webhook_url_env = "{SLACK_ENV}"

[[channels]]
name = "hook"
type = "webhook"
url = "{hook}"
secret_env = "{HOOK_ENV}"

[[channels]]
name = "fallback"
type = "webhook"
url = "{fallback}"
secret_env = "{HOOK_ENV}"

[[channels]]
name = "ops"
type = "webhook"
url = "{ops}"
secret_env = "{HOOK_ENV}"
"#,
        state = dir.path().join("state.db").display(),
        base = sim.base_url(),
        port = smtp.port,
        ca = pki.ca_pem.display(),
        hook = rx.url("/hook"),
        fallback = rx.url("/fallback"),
        ops = rx.url("/ops"),
        mail_to = MAIL_TO[usize::from(owner_mail)],
    );
    let config = dir.path().join("keysweep.toml");
    std::fs::write(&config, text).unwrap();
    World {
        sim,
        smtp,
        rx,
        _dir: dir,
        config,
        secret: whsec(b"intel-notices-webhook-key-00001"),
        _pki: pki,
    }
}

impl World {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (KEY_ENV.into(), ADMIN_KEY.into()),
            (HOOK_ENV.into(), self.secret.clone()),
            (SLACK_ENV.into(), self.rx.url("/slack")),
            ("KS_IN_SMTP_USER".into(), SMTP_USER.into()),
            ("KS_IN_SMTP_PASSWORD".into(), SMTP_PASSWORD.into()),
        ]
    }

    /// `run --once --now at`; returns stderr (the logs). Panics unless it succeeded.
    async fn sweep(&self, at: i64) -> String {
        let now = rfc3339(at);
        let config = self.config.to_str().unwrap();
        let args = ["run", "--once", "--now", &now, "--config", config];
        let (status, out, err) = run_to_end(&args, &self.env()).await;
        assert!(status.success(), "{out}\n{err}");
        err
    }

    /// Every mail received so far: (recipient, subject, text, html).
    fn mails(&self) -> Vec<Mail> {
        self.smtp.messages().iter().map(parse).collect()
    }

    /// The notices every webhook at `path` received, as JSON.
    fn notices(&self, path: &str) -> Vec<Value> {
        (self.rx.requests(path).iter())
            .flat_map(|r| r.json()["notices"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// `keysweep audit --format json` (the audit trail of the state file).
    async fn audit(&self) -> String {
        let args = [
            "audit",
            "--config",
            self.config.to_str().unwrap(),
            "--format",
            "json",
        ];
        let (status, out, err) = run_to_end(&args, &self.env()).await;
        assert!(status.success(), "{out}\n{err}");
        out
    }
}

struct Mail {
    to: Vec<String>,
    subject: String,
    text: String,
    html: String,
}

fn parse(raw: &smtp_server::Received) -> Mail {
    let m = mail_parser::MessageParser::default()
        .parse(&raw.data[..])
        .unwrap();
    Mail {
        to: raw.to.clone(),
        subject: m.subject().unwrap_or_default().to_string(),
        text: m.body_text(0).map(|t| t.to_string()).unwrap_or_default(),
        html: m.body_html(0).map(|t| t.to_string()).unwrap_or_default(),
    }
}

impl Mail {
    fn to(&self, addr: &str) -> bool {
        self.to.iter().any(|t| t.eq_ignore_ascii_case(addr))
    }
}

/// The key ids each address was mailed about (a key counts when its id is in the text).
fn mailed(mails: &[Mail], keys: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in mails {
        for to in &m.to {
            for k in keys.iter().filter(|k| m.text.contains(**k)) {
                out.entry(to.to_lowercase())
                    .or_default()
                    .insert((*k).to_string());
            }
        }
    }
    out
}

// ---- the simulator's own records, read over HTTP ------------------------------------------

/// GETs every page of `path` (a list endpoint) from the simulator, with the admin key.
async fn list_all(sim: &SimServer, path: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{}{path}{sep}limit=100", sim.base_url());
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let page: Value = (client.get(&url).bearer_auth(ADMIN_KEY).send().await)
            .unwrap()
            .json()
            .await
            .unwrap();
        out.extend(page["data"].as_array().cloned().unwrap_or_default());
        if page["has_more"] != true {
            return out;
        }
        after = page["last_id"].as_str().map(str::to_string);
    }
}

/// Each key's creator e-mail, as the simulator's audit log records its `api_key.created`.
async fn logged_creators(sim: &SimServer) -> BTreeMap<String, String> {
    let events = list_all(
        sim,
        "/organization/audit_logs?event_types[]=api_key.created",
    )
    .await;
    let mut out = BTreeMap::new();
    for e in events {
        let key = e["api_key.created"]["id"].as_str().unwrap().to_string();
        let actor = &e["actor"];
        let email = (actor["session"]["user"]["email"].as_str())
            .or(actor["api_key"]["user"]["email"].as_str());
        if let Some(email) = email {
            out.insert(key, email.to_string());
        }
    }
    out
}

/// The project's users as the simulator lists them: (e-mail, role).
async fn project_users(sim: &SimServer, project: &str) -> Vec<(String, String)> {
    let users = list_all(sim, &format!("/organization/projects/{project}/users")).await;
    (users.iter())
        .map(|u| {
            (
                u["email"].as_str().unwrap_or_default().to_lowercase(),
                u["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

// ---- an organisation whose every creator and member is chosen -----------------------------

fn user(id: &str) -> SimUser {
    SimUser {
        id: format!("user_{id}"),
        name: id.to_string(),
        email: format!("{id}@example.com"),
        created_at: NOW - 900 * DAY,
    }
}

fn member(id: &str, role: &str) -> SimMember {
    SimMember {
        user_id: format!("user_{id}"),
        role: role.to_string(),
        added_at: NOW - 800 * DAY,
        access: SimAccess::Active,
    }
}

fn key(id: &str, owner: SimOwnerRef, created_at: i64, last_used_at: Option<i64>) -> SimKey {
    SimKey {
        id: id.to_string(),
        name: id.replace('_', "-"),
        redacted_value: format!("sk-proj-****{}", &id[id.len() - 4..]),
        created_at,
        last_used_at,
        owner,
        expires_at: None,
        scopes: Vec::new(),
    }
}

fn sa(id: &str) -> SimOwnerRef {
    SimOwnerRef::ServiceAccount { id: id.to_string() }
}

fn project(id: &str, members: Vec<SimMember>, sa_id: &str, keys: Vec<SimKey>) -> SimProject {
    SimProject {
        id: id.to_string(),
        name: Some(id.replace('_', "-")),
        created_at: NOW - 800 * DAY,
        archived_at: None,
        external_key_id: None,
        members,
        service_accounts: vec![SimServiceAccount {
            id: sa_id.to_string(),
            name: format!("{sa_id}-bot"),
            role: "member".into(),
            created_at: NOW - 700 * DAY,
            access: SimAccess::Active,
        }],
        keys,
    }
}

/// `proj_alpha`: alice (member) and olga (owner), each with a user key; its service account's
/// `key_sa_alice` was created by alice, `key_sa_carol` by carol, who is in no project.
/// `proj_beta`: dave (member), no owner; `key_sa_beta` was created by carol. The
/// service-account keys are 80 days old, so their creations are within the log's backfill.
/// keysweep's admin
/// key belongs to sec. `key_sa_alice` made 1,240 requests costing $3.10 in the window.
/// `last_used`: the service-account keys' and user keys' `last_used_at`.
fn org(last_used: Option<i64>) -> (SimOrg, SimHistory) {
    // Within the log's default backfill (90 days), so the sweep reads every creation.
    let old = NOW - 80 * DAY;
    let alpha = project(
        "proj_alpha",
        vec![member("alice", "member"), member("olga", "owner")],
        "svc_acct_alpha",
        vec![
            key(
                "key_alice_laptop",
                SimOwnerRef::User {
                    id: "user_alice".into(),
                },
                NOW - 5 * DAY,
                last_used,
            ),
            key(
                "key_olga_ci_0001",
                SimOwnerRef::User {
                    id: "user_olga".into(),
                },
                NOW - 5 * DAY,
                None,
            ),
            key("key_sa_alice", sa("svc_acct_alpha"), old, last_used),
            key("key_sa_carol", sa("svc_acct_alpha"), old, None),
        ],
    );
    let beta = project(
        "proj_beta",
        vec![member("dave", "member")],
        "svc_acct_beta",
        vec![key("key_sa_beta", sa("svc_acct_beta"), old, last_used)],
    );
    let org = SimOrg {
        format: FORMAT_VERSION,
        generated_at: NOW,
        users: ["alice", "olga", "carol", "dave", "sec"].map(user).to_vec(),
        admin_api_keys: vec![SimAdminKey {
            id: "key_admin_sec_0001".into(),
            name: Some("keysweep".into()),
            redacted_value: "sk-admin-****LEAK".into(),
            created_at: NOW - 100 * DAY,
            expires_at: None,
            last_used_at: None,
            owner_user_id: "user_sec".into(),
        }],
        projects: vec![alpha, beta],
    };
    let by = |u: &str| SimKeyHistory {
        created_by: Some(format!("user_{u}")),
        ..SimKeyHistory::default()
    };
    let mut history = SimHistory::default();
    let used = SimKeyHistory {
        usage: Some(vec![SimUsage {
            at: NOW - 2 * DAY,
            requests: 1_240,
            cost_usd: 3.10,
        }]),
        ..by("alice")
    };
    history.keys.insert("key_sa_alice".into(), used);
    history.keys.insert("key_sa_carol".into(), by("carol"));
    history.keys.insert("key_sa_beta".into(), by("carol"));
    (org, history)
}

/// Service-account keys older than 30 days: notify only.
const SA_POLICY: &str = r#"[[policies]]
name = "sa-old"
max_age = "30d"
match = { owner_type = "service_account" }
action = "notify""#;

const SA_KEYS: [&str; 3] = ["key_sa_alice", "key_sa_carol", "key_sa_beta"];

fn fallback_keys(w: &World) -> BTreeSet<String> {
    (w.notices("/fallback").iter())
        .map(|n| n["key_id"].as_str().unwrap().to_string())
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn service_account_notices_go_to_the_creator_then_the_owners_then_the_fallback() {
    let (o, history) = org(None);
    let w = world(o, history, SA_POLICY).await;
    w.sweep(NOW).await;

    let mails = w.mails();
    let got = mailed(&mails, &SA_KEYS);
    assert_eq!(
        got.get("alice@example.com"),
        Some(&set(&["key_sa_alice"])),
        "{got:?}"
    );
    assert_eq!(
        got.get("olga@example.com"),
        Some(&set(&["key_sa_carol"])),
        "{got:?}"
    );
    assert!(
        !got.contains_key("carol@example.com"),
        "carol is in no project: {got:?}"
    );
    assert_eq!(
        fallback_keys(&w),
        set(&["key_sa_beta"]),
        "no owner in proj_beta"
    );
    // Each reader sees why they are told; webhooks carry the route.
    let alice = mails.iter().find(|m| m.to("alice@example.com")).unwrap();
    assert!(
        alice.text.contains("told: its creator alice@example"),
        "{}",
        alice.text
    );
    let hook = w.notices("/hook");
    let route = |k: &str| hook.iter().find(|n| n["key_id"] == k).unwrap()["owner_route"].clone();
    assert_eq!(
        route("key_sa_alice"),
        serde_json::json!({"to": "person", "email": "alice@example.com"})
    );
    assert_eq!(
        route("key_sa_carol"),
        serde_json::json!({"to": "project_owners", "emails": ["olga@example.com"]})
    );
    assert_eq!(route("key_sa_beta"), serde_json::json!({"to": "fallback"}));

    // Alice leaves proj_alpha: the next reminder about her key goes to the project's owner.
    w.sim
        .set_owner_access("proj_alpha", "key_alice_laptop", SimAccess::Inactive)
        .unwrap();
    let before = mails.len();
    w.sweep(NOW + 25 * HOUR).await;
    let reminders = &w.mails()[before..];
    let got = mailed(reminders, &SA_KEYS);
    assert!(!got.contains_key("alice@example.com"), "{got:?}");
    assert_eq!(
        got.get("olga@example.com"),
        Some(&set(&["key_sa_alice", "key_sa_carol"])),
        "{got:?}"
    );

    // The owner leaves too: nobody in the project can be told, so the fallback is.
    w.sim
        .set_owner_access("proj_alpha", "key_olga_ci_0001", SimAccess::Inactive)
        .unwrap();
    let before = w.mails().len();
    let fallback_before = w.notices("/fallback").len();
    w.sweep(NOW + 50 * HOUR).await;
    assert!(mailed(&w.mails()[before..], &SA_KEYS).is_empty());
    let late: BTreeSet<String> = (w.notices("/fallback")[fallback_before..].iter())
        .map(|n| n["key_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(late, set(&SA_KEYS));
}

/// A service-account key under two policies, one told to the owner mail and one to Slack
/// alone: only the first notice is routed to the key's creator. The Slack-only one tells
/// nobody in person, so it goes to `owner_fallback` and claims no route. Before, the route of
/// the first was applied to every notice of the key, and the second reached nobody in person.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_is_applied_only_to_the_notices_that_mail_owners() {
    let (o, history) = org(None);
    let slack_only = format!(
        "[[policies]]\nname = \"sa-slack\"\nmax_age = \"20d\"\nmatch = {{ owner_type = \"service_account\" }}\naction = \"notify\"\nnotify = [\"slack\"]\n\n{SA_POLICY}"
    );
    let w = world(o, history, &slack_only).await;
    w.sweep(NOW).await;
    let got = mailed(&w.mails(), &SA_KEYS);
    assert_eq!(
        got.get("alice@example.com"),
        Some(&set(&["key_sa_alice"])),
        "{got:?}"
    );
    let fallback = w.notices("/fallback");
    let slack_policy = |n: &&Value| n["policy"] == "sa-slack";
    let told: BTreeSet<String> = (fallback.iter().filter(slack_policy))
        .map(|n| n["key_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(told, set(&SA_KEYS), "{fallback:?}");
    for n in fallback.iter().filter(slack_policy) {
        assert_eq!(n["owner_route"], Value::Null, "{n}");
    }
}

/// With no channel that mails owners nobody is told in person: a service-account key's notice
/// goes to `owner_fallback`, says nobody was told in person, and its project's users are not
/// read (that read only serves owner mail).
#[tokio::test(flavor = "multi_thread")]
async fn without_owner_mail_service_account_notices_go_to_the_fallback_and_no_users_are_read() {
    let (o, history) = org(None);
    let w = world_with(o, history, SA_POLICY, false).await;
    w.sweep(NOW).await;

    let users_read = w
        .sim
        .stats()
        .get("GET /v1/organization/projects/{project_id}/users")
        .copied();
    assert_eq!(users_read.unwrap_or(0), 0, "{:?}", w.sim.stats());
    assert_eq!(fallback_keys(&w), set(&SA_KEYS));
    let hook = w.notices("/hook");
    for k in SA_KEYS {
        let n = hook.iter().find(|n| n["key_id"] == k).unwrap();
        assert_eq!(n["owner_route"], Value::Null, "{k}: {n}");
    }
    // The team's mailbox alone gets them, and no message claims anyone was told in person.
    let mails = w.mails();
    let got = mailed(&mails, &SA_KEYS);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["team@example.com"],
        "{got:?}"
    );
    assert_eq!(got["team@example.com"], set(&SA_KEYS));
    for m in &mails {
        assert!(!m.text.contains("told:"), "{}", m.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_notice_shows_what_a_revocation_would_stop_in_mail_slack_and_webhook() {
    let (o, history) = org(None);
    let w = world(o, history, SA_POLICY).await;
    w.sweep(NOW).await;
    let line = "1,240 requests and $3.10 in the last 30 days";

    let mails = w.mails();
    let alice = (mails.iter().find(|m| m.to("alice@example.com")))
        .unwrap_or_else(|| panic!("{:?}", mails.iter().map(|m| &m.to).collect::<Vec<_>>()));
    assert!(alice.text.contains(line), "{}", alice.text);
    assert!(alice.html.contains(line), "{}", alice.html);
    let olga = mails.iter().find(|m| m.to("olga@example.com")).unwrap();
    assert!(
        olga.text
            .contains("0 requests and $0.00 in the last 30 days"),
        "{}",
        olga.text
    );

    let slack: String = (w.rx.requests("/slack").iter())
        .map(|r| r.json().to_string())
        .collect();
    assert!(slack.contains(line), "{slack}");

    let hook = w.notices("/hook");
    let usage = |k: &str| {
        let n = hook.iter().find(|n| n["key_id"] == k).unwrap();
        n["usage"].clone()
    };
    assert_eq!(
        usage("key_sa_alice"),
        serde_json::json!({"window_days": 30, "requests": 1240, "cost_usd": 3.1})
    );
    assert_eq!(usage("key_sa_carol")["requests"], 0);
}

/// Keys of [`org`] the woke-up tests wake: (project, key).
const WOKEN: [(&str, &str); 3] = [
    ("proj_alpha", "key_sa_alice"),
    ("proj_alpha", "key_alice_laptop"),
    ("proj_beta", "key_sa_beta"),
];

/// Uses each of [`WOKEN`] an hour after `NOW`: each wakes up at the next sweep.
fn wake(w: &World) {
    for (p, k) in WOKEN {
        w.sim.set_last_used(p, k, Some(NOW + HOUR)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_woke_up_is_told_to_its_owner_at_once_in_a_message_of_its_own() {
    let (o, history) = org(Some(NOW - 60 * DAY));
    let w = world(
        o,
        history,
        "[[policies]]\nname = \"ancient\"\nmax_age = \"3650d\"",
    )
    .await;
    w.sweep(NOW).await;
    assert!(w.mails().is_empty(), "nothing to tell yet");

    wake(&w);
    w.sweep(NOW + 2 * HOUR).await;

    // Alice created the service-account key and owns the user key: one message per key.
    let mails = w.mails();
    let to_alice: Vec<&Mail> = mails.iter().filter(|m| m.to("alice@example.com")).collect();
    assert_eq!(
        to_alice.len(),
        2,
        "{:?}",
        mails.iter().map(|m| (&m.to, &m.text)).collect::<Vec<_>>()
    );
    for k in ["key_sa_alice", "key_alice_laptop"] {
        let m = to_alice.iter().find(|m| m.text.contains(k)).unwrap();
        assert!(m.subject.contains("used again"), "{}", m.subject);
        assert!(
            m.text.contains("woke up") && m.text.contains("idle 60 day"),
            "{}",
            m.text
        );
        assert!(
            !m.text.contains("key_sa_beta"),
            "not a digest line among others"
        );
    }
    // Nobody in proj_beta can be told: the fallback is, at once, besides the ops channel.
    let fallback = w.rx.requests("/fallback");
    let woke: Vec<Value> = (fallback.iter().map(|r| r.json()))
        .filter(|b| b["type"] == "keysweep.woke_up")
        .collect();
    assert_eq!(woke.len(), 1, "{woke:?}");
    assert_eq!(woke[0]["alerts"][0]["key_id"], "key_sa_beta");
    let ops: String = (w.rx.requests("/ops").iter())
        .map(|r| r.json().to_string())
        .collect();
    for k in ["key_sa_alice", "key_alice_laptop", "key_sa_beta"] {
        assert!(ops.contains(k), "{ops}");
    }

    // Said once: the next sweep tells nobody again.
    let before = w.mails().len();
    w.sweep(NOW + 3 * HOUR).await;
    assert_eq!(w.mails().len(), before);
}

/// With no e-mail channel that mails owners, nobody can be told of a woke-up key in person:
/// its alert names no person, goes to the fallback, and no project's users are read for it.
#[tokio::test(flavor = "multi_thread")]
async fn without_owner_mail_a_woke_up_key_goes_to_the_fallback_and_no_users_are_read() {
    let (o, history) = org(Some(NOW - 60 * DAY));
    let w = world_with(
        o,
        history,
        "[[policies]]\nname = \"ancient\"\nmax_age = \"3650d\"",
        false,
    )
    .await;
    w.sweep(NOW).await;
    let woke = WOKEN.map(|(_, k)| k);
    wake(&w);
    w.sim.reset_stats();
    w.sweep(NOW + 2 * HOUR).await;

    let users_read = (w.sim.stats())
        .get("GET /v1/organization/projects/{project_id}/users")
        .copied();
    assert_eq!(users_read.unwrap_or(0), 0, "{:?}", w.sim.stats());
    let fallback: Vec<Value> = (w.rx.requests("/fallback").iter().map(|r| r.json()))
        .filter(|b| b["type"] == "keysweep.woke_up")
        .collect();
    let told: BTreeSet<&str> = (fallback.iter())
        .flat_map(|b| b["alerts"].as_array().unwrap())
        .map(|a| a["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(told, woke.into_iter().collect(), "{fallback:?}");
    let ops: Vec<Value> = (w.rx.requests("/ops").iter().map(|r| r.json()))
        .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["alert"] == "key_woke_up")
        .collect();
    assert_eq!(ops.len(), 3, "{ops:?}");
    for a in &ops {
        assert_eq!(a["owner"], serde_json::json!({"to": "fallback"}), "{a}");
    }
    assert!(w.mails().is_empty(), "nobody is mailed in person");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_deleted_outside_keysweep_closes_its_finding_with_who_deleted_it() {
    let (o, history) = org(None);
    let w = world(o, history, SA_POLICY).await;
    w.sweep(NOW).await;

    // Olga deletes one in the dashboard; one goes without a trace in the log; one is deleted
    // through the API with sec's admin key (as the official SDK would).
    w.sim.remove_key("proj_alpha", "key_sa_alice").unwrap();
    w.sim
        .log_key_deleted("proj_alpha", "key_sa_alice", "user_olga", NOW + 60);
    w.sim.remove_key("proj_alpha", "key_sa_carol").unwrap();
    let url = format!(
        "{}/organization/projects/proj_beta/api_keys/key_sa_beta",
        w.sim.base_url()
    );
    let r = reqwest::Client::new()
        .delete(url)
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{r:?}");

    let log = w.sweep(NOW + HOUR).await;
    let expected = [
        ("key_sa_alice", "key deleted by olga@example.com"),
        ("key_sa_carol", "key deleted by unknown"),
        ("key_sa_beta", "key deleted by sec@example.com"),
    ];
    let resolved: Vec<Value> = (w.notices("/hook").into_iter())
        .filter(|n| n["kind"] == "resolved")
        .collect();
    let audit = w.audit().await;
    for (k, says) in expected {
        let n = resolved.iter().find(|n| n["key_id"] == k).unwrap();
        let resolution = n["resolution"].as_str().unwrap();
        assert!(resolution.starts_with(says), "{k}: {resolution}");
        assert!(n["status"].as_str().unwrap().contains(says), "{n}");
        assert!(
            audit.contains(&format!("finding closed: {says}")),
            "{k}: {audit}"
        );
    }
    assert!(
        log.contains("olga@example.com") && log.contains("deleted_by"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_account_keys_warning_reaches_its_creator_as_the_audit_log_records_it() {
    let org = SimOrg::generate(3, 12, 31, NOW);
    // The whole log is read, so every creation the simulator records counts.
    let policy = format!(
        "[audit_log]\nbackfill = \"3650d\"\n\n{}",
        SA_POLICY.replace("30d", "1d")
    );
    let w = world(org, SimHistory::default(), &policy).await;
    w.sweep(NOW).await;
    let creators = logged_creators(&w.sim).await;
    let warned: Vec<(String, String)> = (w.notices("/hook").iter())
        .filter(|n| n["kind"] == "warning" && n["owner_type"] == "service_account")
        .map(|n| {
            let s = |f: &str| n[f].as_str().unwrap().to_string();
            (s("project_id"), s("key_id"))
        })
        .collect();
    assert!(warned.len() >= 3, "{warned:?}");
    let keys: Vec<&str> = warned.iter().map(|(_, k)| k.as_str()).collect();
    let got = mailed(&w.mails(), &keys);
    let fallback = fallback_keys(&w);
    let mut by_creator = 0;
    for (project, key) in &warned {
        let users = project_users(&w.sim, project).await;
        let creator = creators.get(key).map(|c| c.to_lowercase());
        let active = |e: &str| users.iter().any(|(u, _)| u == e);
        let expected: BTreeSet<String> = match creator.filter(|c| active(c)) {
            Some(c) => {
                by_creator += 1;
                [c].into()
            }
            None => (users.iter())
                .filter(|(_, role)| role == "owner")
                .map(|(e, _)| e.clone())
                .collect(),
        };
        let told: BTreeSet<String> = (got.iter())
            .filter(|(_, ks)| ks.contains(key))
            .map(|(to, _)| to.clone())
            .collect();
        assert_eq!(told, expected, "{key} in {project}");
        assert_eq!(fallback.contains(key), expected.is_empty(), "{key}");
    }
    assert!(by_creator >= 1, "some creators are still in their project");
}

/// A member-controlled key name in the new lines (the woke-up message to the owner and the ops
/// alert) and an actor's e-mail in a closing notice go through the same neutralisers as every
/// other name: one line, links defanged, never a forged `Status:` line.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_in_woke_up_and_deleted_by_lines_are_neutralised() {
    let (mut o, history) = org(Some(NOW - 60 * DAY));
    o.users.push(SimUser {
        email: "mallory@evil.example".into(),
        ..user("mallory")
    });
    let w = world(o, history, SA_POLICY).await;
    w.sweep(NOW).await;

    let hostile = "prod\nStatus: revoked https://evil.example/x @here";
    w.sim
        .rename_key("proj_alpha", "key_sa_alice", hostile)
        .unwrap();
    w.sim
        .set_last_used("proj_alpha", "key_sa_alice", Some(NOW + HOUR))
        .unwrap();
    w.sim.remove_key("proj_alpha", "key_sa_carol").unwrap();
    w.sim
        .log_key_deleted("proj_alpha", "key_sa_carol", "user_mallory", NOW + 60);
    let before = w.mails().len();
    w.sweep(NOW + 2 * HOUR).await;

    let mails = w.mails();
    let woke = (mails[before..].iter())
        .find(|m| m.to("alice@example.com") && m.subject.contains("used again"))
        .unwrap();
    for body in [&woke.text, &woke.html] {
        assert!(!body.contains("https://evil.example"), "{body}");
        assert!(body.contains("hxxps://evil[.]example"), "{body}");
    }
    assert!(
        !woke
            .text
            .lines()
            .any(|l| l.trim_start().starts_with("Status:")),
        "{}",
        woke.text
    );
    let ops = w.rx.requests("/ops");
    let alert = (ops.iter().map(|r| r.json()))
        .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
        .find(|a| a["alert"] == "key_woke_up")
        .unwrap();
    let summary = alert["summary"].as_str().unwrap();
    assert!(!summary.contains('\n') && !summary.contains("https://evil.example"));
    assert_eq!(
        alert["key_name"], hostile,
        "structured fields carry the name as it is"
    );

    // The resolved notice names the actor, neutralised in the mail like any name.
    let resolved = (mails[before..].iter())
        .find(|m| m.subject.contains("Resolved") && m.text.contains("key_sa_carol"))
        .unwrap();
    assert!(
        resolved
            .text
            .contains("key deleted by mallory@evil[.]example"),
        "{}",
        resolved.text
    );
}

/// A log outage keeps the creator: the history kept from earlier sweeps still sends a
/// service-account key's notices to the person who created it (a creator never changes), and
/// the ops channel hears that the log could not be read.
#[tokio::test(flavor = "multi_thread")]
async fn during_an_audit_log_outage_the_creator_known_from_earlier_sweeps_is_still_told() {
    let (o, history) = org(None);
    let w = world(o, history, SA_POLICY).await;
    w.sweep(NOW).await;
    let first = mailed(&w.mails(), &SA_KEYS);
    assert!(first.contains_key("alice@example.com"), "{first:?}");

    w.sim.set_audit_logging(false);
    let before = w.mails().len();
    let err = w.sweep(NOW + 25 * HOUR).await;
    let got = mailed(&w.mails()[before..], &SA_KEYS);
    assert_eq!(
        got.get("alice@example.com"),
        Some(&set(&["key_sa_alice"])),
        "{got:?}\n{err}"
    );
    let ops: Vec<String> = (w.rx.requests("/ops").iter())
        .map(|r| r.json().to_string())
        .collect();
    assert!(
        ops.iter().any(|m| m.contains("intel_unavailable")),
        "{ops:?}"
    );
}
