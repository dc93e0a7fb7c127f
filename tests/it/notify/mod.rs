//! Notifications end to end over real sockets: routing and rendering, the SQLite outbox,
//! delivery to a real SMTP server (STARTTLS + AUTH, mailin-embedded) and to recording HTTP
//! receivers (Slack, PagerDuty, webhooks), signatures checked with the independent
//! `standardwebhooks` crate, retries across "restarts", dead-lettering and secret hygiene.
//!
//! This file holds the fixtures (findings, the configuration from TOML, the outbox); `composing`
//! tests routing and rendering without a socket, `delivery` delivers over real ones. Every
//! secret here is made up, and none may appear in any payload, error or stored row.

mod composing;
mod delivery;

use std::collections::BTreeSet;
use std::sync::Mutex;

use keysweep::config::{Action, ChannelConfig, ChannelKind, Config, SmtpTls};
use keysweep::inventory::{Expiry, OwnerType};
use keysweep::notify::alert::EnforcerAlert;
use keysweep::notify::compose::Composed;
use keysweep::notify::outbox;
use keysweep::notify::render::{SLACK_MAX_BLOCKS, SLACK_MAX_TEXT};
use keysweep::notify::route::MAX_NOTICES_PER_DIGEST;
use keysweep::notify::{MessageKind, Notifier, NotifySettings, OutboxMessage, compose};
use keysweep::policy::finding::{Finding, FindingId, Notice, NoticeKind, Stage};
use rusqlite::Connection;
use serde_json::Value;

use crate::support::config::config_from_toml;
use crate::support::net::free_port;
use crate::support::receivers::Receiver;
use crate::support::secrets;
use crate::support::smtp_server::{self, TestPki};

const SMTP_USER: &str = "keysweep-mailer";
const SMTP_PASSWORD: &str = "smtp-Pa55word-do-not-leak";
const WEBHOOK_KEY: &[u8] = b"webhook-signing-key-do-not-leak!";
const ROUTING_KEY: &str = "R0UTINGKEYdonotleak0123456789ab";
const SLACK_PATH: &str = "/services/T0000/B0000/slackTOKENdonotleak42";
const RUN: &str = "run-2026-03-01T09:00:00Z";
/// 2026-03-01T09:00:00Z
const NOW: i64 = 1_772_355_600;
const DAY: i64 = 86_400;

fn webhook_secret() -> String {
    secrets::whsec(WEBHOOK_KEY)
}

fn secrets() -> Vec<String> {
    vec![
        SMTP_PASSWORD.to_string(),
        webhook_secret(),
        secrets::base64(WEBHOOK_KEY),
        ROUTING_KEY.to_string(),
        "slackTOKENdonotleak42".to_string(),
    ]
}

fn assert_no_secret(what: &str, text: &str) {
    secrets::assert_no_secret(what, text, &secrets());
}

// ---------------------------------------------------------------------------------------------
// Fixtures

#[allow(clippy::too_many_arguments)]
fn finding(
    project: (&str, &str),
    key: (&str, &str, &str),
    owner: (OwnerType, &str, Option<&str>),
    policy: &str,
    action: Action,
    stage: Stage,
) -> Finding {
    Finding {
        dry_run_noted_at: None,
        warned_dry_run: false,
        final_notice_dry_run: false,
        withheld: None,
        rotation_withheld: None,
        expiry: Default::default(),
        id: FindingId {
            organization: "acme".into(),
            project_id: project.0.into(),
            key_id: key.0.into(),
            policy: policy.into(),
        },
        project_name: Some(project.1.into()),
        key_name: key.1.into(),
        redacted_value: key.2.into(),
        owner_type: owner.0,
        owner: owner.1.into(),
        owner_email: owner.2.map(str::to_string),
        created_at: NOW - 400 * DAY,
        last_used_at: Some(NOW - 3 * DAY),
        last_used_unknown: false,
        expires_at: Expiry::Unknown,
        action,
        reason: format!("older than 90d (created 400 days ago) [{policy}]"),
        stage,
        detected_at: NOW,
        deadline: NOW + 14 * DAY,
        warned_at: Some(NOW),
        final_notice_at: None,
        last_notified_at: None,
        closed_at: None,
        resolution: None,
    }
}

const PAY: (&str, &str) = ("proj_pay", "payments-api");
const WEB: (&str, &str) = ("proj_web", "website");

/// A warned finding of the revoking `max-age` policy.
fn max_age_warned(
    project: (&str, &str),
    key: (&str, &str, &str),
    owner: (OwnerType, &str, Option<&str>),
) -> Finding {
    finding(
        project,
        key,
        owner,
        "max-age",
        Action::Revoke,
        Stage::Warned,
    )
}

/// Never expires.
fn alice_key() -> Finding {
    let f = max_age_warned(
        PAY,
        ("key_alice", "ci-deploy", "sk-proj-***a1b2"),
        (
            OwnerType::User,
            "alice@example.com",
            Some("alice@example.com"),
        ),
    );
    Finding {
        expires_at: Expiry::Never,
        ..f
    }
}

/// Expires in 3 days.
fn bob_key() -> Finding {
    let f = max_age_warned(
        PAY,
        ("key_bob", "old-batch", "sk-proj-***c3d4"),
        (OwnerType::User, "bob@example.com", Some("bob@example.com")),
    );
    Finding {
        expires_at: Expiry::At(NOW + 3 * DAY),
        ..f
    }
}

/// Expired a day ago.
fn bot_key() -> Finding {
    let f = max_age_warned(
        WEB,
        ("key_bot", "svc-bot", "sk-svcacct-***e5f6"),
        (OwnerType::ServiceAccount, "svc_acct_1", None),
    );
    Finding {
        expires_at: Expiry::At(NOW - DAY),
        ..f
    }
}

/// Its expiry is unknown (an API answer without the field).
fn idle_key() -> Finding {
    finding(
        WEB,
        ("key_idle", "forgotten", "sk-proj-***g7h8"),
        (
            OwnerType::User,
            "carol@example.com",
            Some("carol@example.com"),
        ),
        "idle",
        Action::Notify,
        Stage::Warned,
    )
}

/// The keys the `max-age` policy warns about, as a digest names them: (name, redacted value).
const MAX_AGE_KEYS: [(&str, &str); 3] = [
    ("ci-deploy", "sk-proj-***a1b2"),
    ("old-batch", "sk-proj-***c3d4"),
    ("svc-bot", "sk-svcacct-***e5f6"),
];

/// `text` names every `max-age` key by name and redacted value.
fn assert_lists_max_age_keys(what: &str, text: &str) {
    for (name, red) in MAX_AGE_KEYS {
        assert!(
            text.contains(name) && text.contains(red),
            "{what} lacks {name}:\n{text}"
        );
    }
}

fn notice(kind: NoticeKind, f: Finding) -> Notice {
    Notice {
        kind,
        finding: std::sync::Arc::new(f),
        dry_run: false,
        verdict: None,
        rotated: None,
        intel: None,
        key_expiry: None,
    }
}

fn warnings() -> Vec<Notice> {
    vec![
        notice(NoticeKind::Warning, alice_key()),
        notice(NoticeKind::Warning, bob_key()),
        notice(NoticeKind::Warning, bot_key()),
        notice(NoticeKind::Warning, idle_key()),
    ]
}

/// Where the channels deliver: the SMTP server (and the CA it is trusted with) and the HTTP
/// receiver's base URL.
struct Endpoints {
    smtp_port: u16,
    ca_file: Option<std::path::PathBuf>,
    http: String,
}

/// What a test changes in the standard configuration of [`config`].
struct Tweaks {
    max_attempts: u32,
    /// The channels the `max-age` policy notifies.
    max_age_notify: &'static [&'static str],
    /// The `payments-*` route and the owner fallback channel.
    routing: bool,
    /// The Slack webhook URL; by default the receiver's [`SLACK_PATH`].
    slack_url: Option<String>,
}

impl Default for Tweaks {
    fn default() -> Self {
        Tweaks {
            max_attempts: 3,
            max_age_notify: &["sec-email", "slack", "pd", "hook"],
            routing: true,
            slack_url: None,
        }
    }
}

const ADMIN_KEY_ENV: &str = "NOTIFY_IT_ADMIN_KEY";

/// The environment holding every secret the configurations name.
fn env(slack_url: &str) -> Vec<(&'static str, String)> {
    vec![
        (ADMIN_KEY_ENV, "sk-admin-notify-it-unused".to_string()),
        ("NOTIFY_IT_SMTP_USER", SMTP_USER.to_string()),
        ("NOTIFY_IT_SMTP_PASSWORD", SMTP_PASSWORD.to_string()),
        ("NOTIFY_IT_SLACK_URL", slack_url.to_string()),
        ("NOTIFY_IT_PD_KEY", ROUTING_KEY.to_string()),
        ("NOTIFY_IT_WEBHOOK_SECRET", webhook_secret()),
    ]
}

fn load(toml: &str, slack_url: &str) -> Config {
    config_from_toml(toml, &env(slack_url))
}

/// The organisation (required by the loader; notifications never talk to it) and the state
/// file (never opened here).
fn base_toml() -> String {
    format!(
        r#"mode = "enforce"
state_path = "{state}"
schedule = "0 9 * * *"
timezone = "UTC"
shutdown_grace = "5s"

[[organizations]]
name = "acme"
base_url = "http://127.0.0.1:9/v1"
admin_key_env = "{ADMIN_KEY_ENV}"

[limits]
concurrency = 1
max_retries = 0
request_timeout = "5s"
max_response_bytes = {max_bytes}

[server]
listen = "127.0.0.1:0"
"#,
        state = std::env::temp_dir().join("unused.db").display(),
        max_bytes = 1 << 20,
    )
}

/// An e-mail channel to `security@example.com` through the test SMTP server.
fn email_toml(name: &str, ep: &Endpoints, owner: bool) -> String {
    let ca = ep
        .ca_file
        .as_ref()
        .map(|f| format!("smtp_ca_file = \"{}\"\n", f.display()))
        .unwrap_or_default();
    format!(
        r#"
[[channels]]
name = "{name}"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "starttls"
{ca}smtp_username_env = "NOTIFY_IT_SMTP_USER"
smtp_password_env = "NOTIFY_IT_SMTP_PASSWORD"
from = "keysweep <keysweep@example.com>"
to = ["security@example.com"]
owner = {owner}
send_timeout = "20s"
"#,
        port = ep.smtp_port,
    )
}

/// Two policies (`max-age` revokes, `idle` only notifies on Slack), every channel type, a
/// route for `payments-*` projects, an owner fallback and an ops channel.
fn config_with(ep: &Endpoints, t: &Tweaks) -> Config {
    // Top-level keys first: TOML puts everything after a table header into that table.
    let mut toml = String::from("ops_channels = [\"ops-hook\"]\n");
    if t.routing {
        toml.push_str("owner_fallback = [\"fallback-hook\"]\n");
    }
    toml.push_str(&base_toml());
    let notify = t
        .max_age_notify
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>();
    toml.push_str(&format!(
        r#"
[[policies]]
name = "max-age"
max_age = "90d"
action = "revoke"
warn_before = "14d"
final_notice = "2d"
notify = [{notify}]

[[policies]]
name = "idle"
max_age = "90d"
action = "notify"
warn_before = "14d"
final_notice = "2d"
notify = ["slack"]

[safety]
max_revocations_per_run = 10
max_revocations_per_project_percent = 50
max_revocations_per_day = 20
service_accounts = "notify-only"

[notifications]
repeat_interval = "24h"
max_attempts = {max_attempts}
"#,
        notify = notify.join(", "),
        max_attempts = t.max_attempts,
    ));
    if t.routing {
        toml.push_str(
            "\n[[routes]]\nprojects = [\"payments-*\"]\nchannels = [\"payments-hook\"]\n",
        );
    }
    toml.push_str(&email_toml("sec-email", ep, true));
    toml.push_str(&http_channels_toml(&ep.http));
    let slack_url = t
        .slack_url
        .clone()
        .unwrap_or_else(|| format!("{}{SLACK_PATH}", ep.http));
    load(&toml, &slack_url)
}

/// Slack, PagerDuty and four webhooks, all on the HTTP receiver at `http`.
fn http_channels_toml(http: &str) -> String {
    let mut toml = format!(
        r#"
[[channels]]
name = "slack"
type = "slack"
webhook_url_env = "NOTIFY_IT_SLACK_URL"

[[channels]]
name = "pd"
type = "pagerduty"
routing_key_env = "NOTIFY_IT_PD_KEY"
url = "{http}/pd/enqueue"
"#
    );
    for (name, path) in [
        ("hook", "hook"),
        ("payments-hook", "payments"),
        ("fallback-hook", "fallback"),
        ("ops-hook", "ops"),
    ] {
        toml.push_str(&format!(
            "\n[[channels]]\nname = \"{name}\"\ntype = \"webhook\"\nurl = \"{http}/{path}\"\nsecret_env = \"NOTIFY_IT_WEBHOOK_SECRET\"\n"
        ));
    }
    toml
}

/// The standard configuration, delivering to `ep`.
fn config(ep: &Endpoints) -> Config {
    config_with(ep, &Tweaks::default())
}

/// An e-mail channel `mail` (no owner mails) through the test SMTP server, as loaded.
fn email_channel(ep: &Endpoints) -> ChannelConfig {
    let toml = format!("{}{}", base_toml(), email_toml("mail", ep, false));
    load(&toml, "https://hooks.invalid/unused")
        .channel("mail")
        .unwrap()
        .clone()
}

/// The HTTP receiver for every HTTP channel; nothing listens on the SMTP port.
fn http_only(rx: &Receiver) -> Endpoints {
    Endpoints {
        smtp_port: free_port(),
        ca_file: None,
        http: rx.url(""),
    }
}

fn offline_endpoints() -> Endpoints {
    Endpoints {
        smtp_port: 2525,
        ca_file: None,
        http: "http://127.0.0.1:9".into(),
    }
}

/// `n` warnings about max-age keys `kid00000z`, `kid00001z`, … in three projects.
fn many_warnings(n: usize) -> Vec<Notice> {
    (0..n)
        .map(|i| {
            let p = i % 3;
            let f = finding(
                (&format!("proj_{p}"), &format!("project-{p}")),
                (
                    &format!("kid{i:05}z"),
                    &format!("name-{i}"),
                    &format!("sk-proj-***{i:05}"),
                ),
                (OwnerType::User, "dev@example.com", Some("dev@example.com")),
                "max-age",
                Action::Revoke,
                Stage::Warned,
            );
            notice(NoticeKind::Warning, f)
        })
        .collect()
}

/// A real SMTP server (STARTTLS + AUTH) and HTTP receiver, and notify's settings for them.
struct Live {
    smtp: smtp_server::SmtpServer,
    cfg: NotifySettings,
    _pki: TestPki,
    _rx: Receiver,
}

impl Live {
    async fn start() -> Live {
        let pki = TestPki::new();
        let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
        let rx = Receiver::start().await;
        let cfg = NotifySettings::from(&config(&Endpoints {
            smtp_port: smtp.port,
            ca_file: Some(pki.ca_pem.clone()),
            http: rx.url(""),
        }));
        Live {
            smtp,
            cfg,
            _pki: pki,
            _rx: rx,
        }
    }
}

/// A fresh state database file with the real schema.
fn open_db() -> (tempfile::TempDir, Mutex<Connection>) {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch(keysweep::state::schema::MIGRATIONS[0])
        .unwrap();
    (dir, Mutex::new(conn))
}

fn with_db<T>(db: &Mutex<Connection>, f: impl FnOnce(&Connection) -> T) -> T {
    f(&db.lock().unwrap())
}

fn by(msgs: &[OutboxMessage], channel: &str) -> Vec<OutboxMessage> {
    msgs.iter()
        .filter(|m| m.channel == channel)
        .cloned()
        .collect()
}

/// Composes the standard warnings, queues them in a fresh outbox and delivers them once. Like
/// every test here, it hands notify its own settings (`NotifySettings::from(&config)`), never
/// the whole configuration.
async fn deliver_warnings(
    cfg: &NotifySettings,
) -> (
    tempfile::TempDir,
    Mutex<Connection>,
    Vec<OutboxMessage>,
    keysweep::notify::DeliveryReport,
) {
    let (dir, db) = open_db();
    let msgs = compose(&warnings(), &[], cfg, RUN, NOW);
    with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    let report = Notifier::new()
        .unwrap()
        .deliver_due(&db, cfg, NOW)
        .await
        .unwrap();
    (dir, db, msgs, report)
}

/// No stored row (payload or error) may contain a secret.
fn assert_outbox_clean(db: &Mutex<Connection>) {
    let rows: Vec<(String, Option<String>)> = with_db(db, |c| {
        let mut st = c.prepare("SELECT payload, last_error FROM outbox").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    assert!(!rows.is_empty());
    for (payload, err) in rows {
        assert_no_secret("outbox payload", &payload);
        if let Some(e) = err {
            assert_no_secret("outbox last_error", &e);
            assert!(!e.contains("/services/"), "Slack URL path in error: {e}");
        }
    }
}
