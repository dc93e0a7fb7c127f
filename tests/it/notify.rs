//! Notifications end to end over real sockets: routing and rendering, the SQLite outbox,
//! delivery to a real SMTP server (STARTTLS + AUTH, mailin-embedded) and to recording HTTP
//! receivers (Slack, PagerDuty, webhooks), signatures checked with the independent
//! `standardwebhooks` crate, retries across "restarts", dead-lettering and secret hygiene.

use std::collections::BTreeSet;
use std::sync::Mutex;

use keysweep::config::{Action, ChannelConfig, ChannelKind, Config, SmtpTls};
use keysweep::inventory::OwnerType;
use keysweep::notify::alert::EnforcerAlert;
use keysweep::notify::outbox;
use keysweep::notify::render::{SLACK_MAX_BLOCKS, SLACK_MAX_TEXT};
use keysweep::notify::route::MAX_NOTICES_PER_DIGEST;
use keysweep::notify::{MessageKind, Notifier, OutboxMessage, compose};
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

fn alice_key() -> Finding {
    max_age_warned(
        PAY,
        ("key_alice", "ci-deploy", "sk-proj-***a1b2"),
        (
            OwnerType::User,
            "alice@example.com",
            Some("alice@example.com"),
        ),
    )
}

fn bob_key() -> Finding {
    max_age_warned(
        PAY,
        ("key_bob", "old-batch", "sk-proj-***c3d4"),
        (OwnerType::User, "bob@example.com", Some("bob@example.com")),
    )
}

fn bot_key() -> Finding {
    max_age_warned(
        WEB,
        ("key_bot", "svc-bot", "sk-svcacct-***e5f6"),
        (OwnerType::ServiceAccount, "svc_acct_1", None),
    )
}

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
        finding: f,
        dry_run: false,
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

/// Composes the standard warnings, queues them in a fresh outbox and delivers them once.
async fn deliver_warnings(
    cfg: &Config,
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

// ---------------------------------------------------------------------------------------------
// Routing and rendering (pure)

/// E-mail: the channel's list gets every max-age key; owners get their own keys; the service
/// account (no e-mail) has no owner mail.
fn assert_email_digests(msgs: &[OutboxMessage]) {
    let email = by(msgs, "sec-email");
    let recipients: BTreeSet<&str> = email.iter().map(|m| m.recipient.as_str()).collect();
    assert_eq!(
        recipients,
        BTreeSet::from([
            "security@example.com",
            "alice@example.com",
            "bob@example.com"
        ])
    );
    assert_eq!(email.len(), 3, "one digest per recipient");
    let team = email
        .iter()
        .find(|m| m.recipient == "security@example.com")
        .unwrap();
    let text = team.payload["text"].as_str().unwrap();
    assert_lists_max_age_keys("the team digest", text);
    assert!(
        !text.contains("forgotten"),
        "idle policy does not notify e-mail"
    );
    assert!(text.contains("payments-api (proj_pay)") && text.contains("website (proj_web)"));
    // The exact revocation date, UTC RFC 3339.
    assert!(
        text.contains("will be revoked at 2026-03-15T09:00:00Z"),
        "{text}"
    );
    let alice = email
        .iter()
        .find(|m| m.recipient == "alice@example.com")
        .unwrap();
    let atext = alice.payload["text"].as_str().unwrap();
    assert!(atext.contains("ci-deploy") && !atext.contains("old-batch"));
    assert_eq!(
        alice.payload["to"],
        serde_json::json!(["alice@example.com"])
    );
}

#[test]
fn routing_sends_one_digest_per_channel_and_recipient() {
    let cfg = config(&offline_endpoints());
    let msgs = compose(&warnings(), &[], &cfg, RUN, NOW);

    assert_email_digests(&msgs);

    // Slack: one digest for both policies, both projects.
    let slack = by(&msgs, "slack");
    assert_eq!(slack.len(), 1);
    let body = slack[0].payload.to_string();
    for name in ["ci-deploy", "old-batch", "svc-bot", "forgotten"] {
        assert!(body.contains(name), "slack misses {name}");
    }

    // PagerDuty: one trigger per finding with the finding's dedup key, no routing key stored.
    let pd = by(&msgs, "pd");
    let keys: BTreeSet<String> = pd
        .iter()
        .map(|m| m.payload["dedup_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "acme/proj_pay/key_alice/max-age".to_string(),
            "acme/proj_pay/key_bob/max-age".to_string(),
            "acme/proj_web/key_bot/max-age".to_string(),
        ])
    );
    assert!(pd.iter().all(|m| m.payload["event_action"] == "trigger"));
    assert!(pd.iter().all(|m| m.payload.get("routing_key").is_none()));

    // Routes: payments-* adds payments-hook, for payments keys only.
    let pay = by(&msgs, "payments-hook");
    assert_eq!(pay.len(), 1);
    let names: BTreeSet<&str> = pay[0].payload["notices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["key_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["ci-deploy", "old-batch"]));

    // owner_fallback: only the key without an owner e-mail.
    let fb = by(&msgs, "fallback-hook");
    assert_eq!(fb.len(), 1);
    let notices = fb[0].payload["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0]["key_name"], "svc-bot");
    assert_eq!(notices[0]["owner_type"], "service_account");

    // Nothing for ops without alerts; ids are unique and stable across recomposition.
    assert!(by(&msgs, "ops-hook").is_empty());
    let ids: BTreeSet<&str> = msgs.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), msgs.len());
    assert_eq!(compose(&warnings(), &[], &cfg, RUN, NOW), msgs);
}

#[test]
fn each_notice_kind_gets_its_own_message_and_dry_run_says_so() {
    let cfg = config(&offline_endpoints());
    let mut final_alice = alice_key();
    final_alice.stage = Stage::FinalNotice;
    let mut revoked_bob = bob_key();
    revoked_bob.stage = Stage::Revoked;
    revoked_bob.closed_at = Some(NOW);
    let mut resolved_bot = bot_key();
    resolved_bot.stage = Stage::Resolved;
    resolved_bot.resolution = Some("key deleted by owner".into());
    let notices = vec![
        notice(NoticeKind::FinalNotice, final_alice),
        Notice {
            kind: NoticeKind::Revoked,
            finding: revoked_bob,
            dry_run: true,
        },
        notice(NoticeKind::Resolved, resolved_bot),
    ];
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    let team: Vec<&OutboxMessage> = msgs
        .iter()
        .filter(|m| m.recipient == "security@example.com")
        .collect();
    let kinds: BTreeSet<MessageKind> = team.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            MessageKind::FinalNotice,
            MessageKind::Revoked,
            MessageKind::Resolved
        ])
    );
    assert_eq!(team.len(), 3);
    let subject = |k| {
        team.iter().find(|m| m.kind == k).unwrap().payload["subject"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(subject(MessageKind::FinalNotice).starts_with("[keysweep] Final notice"));
    assert!(subject(MessageKind::Revoked).contains("would be revoked (dry-run)"));
    let revoked_text = team
        .iter()
        .find(|m| m.kind == MessageKind::Revoked)
        .unwrap()
        .payload["text"]
        .as_str()
        .unwrap();
    assert!(revoked_text.contains("would be revoked (dry-run)"));
    assert!(revoked_text.contains("old-batch"));
    let resolved = team
        .iter()
        .find(|m| m.kind == MessageKind::Resolved)
        .unwrap();
    assert!(
        resolved.payload["text"]
            .as_str()
            .unwrap()
            .contains("resolved: key deleted by owner")
    );

    // PagerDuty: trigger for the final notice, resolve for resolved; a dry-run "would be
    // revoked" keeps the incident open (the key still exists).
    let pd = by(&msgs, "pd");
    let action = |key: &str| {
        pd.iter()
            .find(|m| m.payload["dedup_key"].as_str().unwrap().contains(key))
            .unwrap()
            .payload["event_action"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(action("key_alice"), "trigger");
    assert_eq!(action("key_bob"), "trigger");
    assert_eq!(action("key_bot"), "resolve");
}

#[test]
fn enforcer_alerts_go_to_ops_channels_only() {
    let cfg = config(&offline_endpoints());
    let alerts = vec![
        EnforcerAlert::IncompleteListing {
            organization: "acme".into(),
            project_id: "proj_pay".into(),
            reason: "page 3 timed out".into(),
        },
        EnforcerAlert::KillSwitchOn {
            path: "/etc/keysweep/STOP".into(),
            withheld: 2,
        },
    ];
    let msgs = compose(&[], &alerts, &cfg, RUN, NOW);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].channel, "ops-hook");
    assert_eq!(msgs[0].kind, MessageKind::Alert);
    assert_eq!(msgs[0].payload["type"], "keysweep.alerts");
    let listed: Vec<&str> = msgs[0].payload["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["incomplete_listing", "kill_switch_on"]);
}

#[test]
fn slack_split_keeps_every_key_and_stays_within_limits() {
    let cfg = config(&offline_endpoints());
    let mut notices = Vec::new();
    for p in 0..7 {
        for k in 0..60 {
            let mut f = finding(
                (&format!("proj_{p}"), &format!("project-{p}")),
                (
                    &format!("key_{p}_{k}"),
                    &format!("key-name-{p}-{k}"),
                    &format!("sk-proj-***{p:02}{k:02}"),
                ),
                (OwnerType::User, "dev@example.com", Some("dev@example.com")),
                "idle",
                Action::Notify,
                Stage::Warned,
            );
            f.reason = format!("unused for 120 days; {}", "detail ".repeat(k % 13 * 10));
            notices.push(notice(NoticeKind::Warning, f));
        }
    }
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    let slack = by(&msgs, "slack");
    assert!(slack.len() > 1, "420 long lines must be split");
    let mut seen = Vec::new();
    for m in &slack {
        let blocks = m.payload["blocks"].as_array().unwrap();
        assert!(blocks.len() <= SLACK_MAX_BLOCKS, "{} blocks", blocks.len());
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(
                    t.chars().count() <= SLACK_MAX_TEXT,
                    "text of {} chars",
                    t.len()
                );
                for line in t.lines() {
                    if let Some(rest) = line.strip_prefix("• *key-name-") {
                        seen.push(rest.split('*').next().unwrap().to_string());
                    }
                }
            }
        }
        assert!(m.payload["text"].as_str().unwrap().contains("part"));
    }
    let expected: Vec<String> = (0..7)
        .flat_map(|p| (0..60).map(move |k| format!("{p}-{k}")))
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    let mut exp_sorted = expected.clone();
    exp_sorted.sort();
    assert_eq!(
        sorted, exp_sorted,
        "every key exactly once across the parts"
    );
    let ids: BTreeSet<&str> = slack.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), slack.len());
}

/// `n` warnings of revoking findings, spread over three projects, with key ids `kid00000z`….
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

/// Across the parts of one digest, every one of the `n` keys is named exactly once, and no part
/// names more than [`MAX_NOTICES_PER_DIGEST`].
fn assert_each_key_once(channel: &str, recipient: &str, parts: &[&OutboxMessage], n: usize) {
    let mut count = vec![0usize; n];
    for m in parts {
        let text = m.payload.to_string();
        // Every key id in the message, once (an e-mail names each in text and HTML).
        let here: BTreeSet<usize> = text
            .match_indices("kid")
            .filter_map(|(at, _)| {
                let id = text.get(at + 3..at + 9)?;
                id.strip_suffix('z')?.parse().ok()
            })
            .collect();
        assert!(
            here.len() <= MAX_NOTICES_PER_DIGEST,
            "{channel}: {} keys in one message",
            here.len()
        );
        for i in here {
            count[i] += 1;
        }
    }
    assert!(
        count.iter().all(|&c| c == 1),
        "{channel}/{recipient}: a key is missing or repeated"
    );
}

#[test]
fn large_digests_go_out_in_parts_that_keep_every_key_once() {
    let cfg = config(&offline_endpoints());
    let n = 2 * MAX_NOTICES_PER_DIGEST + 7;
    let notices = many_warnings(n);
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    let mut groups: std::collections::BTreeMap<(String, String), Vec<&OutboxMessage>> =
        Default::default();
    for m in msgs
        .iter()
        .filter(|m| m.channel != "pd" && m.channel != "slack")
    {
        groups
            .entry((m.channel.clone(), m.recipient.clone()))
            .or_default()
            .push(m);
    }
    assert!(!groups.is_empty(), "no digest composed");
    let mut emails = 0;
    for ((channel, recipient), parts) in &groups {
        assert_eq!(
            parts.len(),
            3,
            "{channel}/{recipient}: {n} notices in parts of {MAX_NOTICES_PER_DIGEST}"
        );
        assert_each_key_once(channel, recipient, parts, n);
        // E-mail subjects say which part a message is.
        if channel == "sec-email" {
            let mut labels: Vec<String> = parts
                .iter()
                .filter_map(|m| {
                    let subject = m.payload["subject"].as_str()?;
                    let at = subject.rfind("(part ")?;
                    Some(subject[at..].to_string())
                })
                .collect();
            labels.sort();
            assert_eq!(
                labels,
                ["(part 1 of 3)", "(part 2 of 3)", "(part 3 of 3)"],
                "{channel}/{recipient}"
            );
            emails += 1;
        }
    }
    assert!(emails > 0, "no e-mail digest composed");
    let ids: BTreeSet<&str> = msgs.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        msgs.len(),
        "message ids must stay unique across parts"
    );
}

// ---------------------------------------------------------------------------------------------
// Delivery over real sockets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_with_auth_lists_every_key_and_no_secret() {
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
    let rx = Receiver::start().await;
    let cfg = config(&Endpoints {
        smtp_port: smtp.port,
        ca_file: Some(pki.ca_pem.clone()),
        http: rx.url(""),
    });
    let (_dir, db, msgs, report) = deliver_warnings(&cfg).await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.dead, 0);
    assert_eq!(report.sent as usize, msgs.len());

    let received = smtp.messages();
    assert_eq!(
        received.len(),
        3,
        "team digest + one per owner with an e-mail"
    );
    assert_eq!(
        smtp.logins.lock().unwrap().len(),
        3,
        "AUTH on every connection"
    );
    let team_id = by(&msgs, "sec-email")
        .into_iter()
        .find(|m| m.recipient == "security@example.com")
        .unwrap()
        .message_id;
    let mut saw_team = false;
    for r in &received {
        let raw = String::from_utf8_lossy(&r.data);
        assert_no_secret("raw e-mail", &raw);
        let parsed = mail_parser::MessageParser::default()
            .parse(&r.data[..])
            .unwrap();
        assert!(r.from.contains("keysweep@example.com"));
        let text = parsed.body_text(0).unwrap().to_string();
        let html = parsed.body_html(0).unwrap().to_string();
        if r.to == vec!["security@example.com".to_string()] {
            saw_team = true;
            assert_eq!(
                parsed.subject().unwrap(),
                "[keysweep] 3 API keys violate policy and will be revoked"
            );
            assert_eq!(parsed.message_id().unwrap(), format!("{team_id}@keysweep"));
            assert_lists_max_age_keys("the team mail's text", &text);
            assert_lists_max_age_keys("the team mail's HTML", &html);
            assert!(text.contains("2026-03-15T09:00:00Z"));
        } else {
            assert_eq!(r.to.len(), 1);
            let owner = &r.to[0];
            assert!(owner == "alice@example.com" || owner == "bob@example.com");
            let to = parsed.to().unwrap().first().unwrap().address().unwrap();
            assert_eq!(to, owner);
        }
    }
    assert!(saw_team);
    assert_outbox_clean(&db);
    let depth = with_db(&db, outbox::depth).unwrap();
    assert_eq!(depth.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_then_back_delivers_once_with_the_same_message_id() {
    let pki = TestPki::new();
    let port = free_port();
    let rx = Receiver::start().await;
    let cfg = config_with(
        &Endpoints {
            smtp_port: port,
            ca_file: Some(pki.ca_pem.clone()),
            http: rx.url(""),
        },
        &Tweaks {
            max_attempts: 10,
            ..Tweaks::default()
        },
    );
    let (_dir, db) = open_db();
    let notifier = Notifier::new().unwrap();
    let only_team: Vec<OutboxMessage> = compose(&warnings(), &[], &cfg, RUN, NOW)
        .into_iter()
        .filter(|m| m.recipient == "security@example.com")
        .collect();
    assert_eq!(only_team.len(), 1);
    with_db(&db, |c| outbox::enqueue(c, &only_team, NOW)).unwrap();

    // Nothing listens: the attempt fails and is scheduled for later.
    let r1 = notifier.deliver_due(&db, &cfg, NOW).await.unwrap();
    assert_eq!((r1.sent, r1.failed, r1.dead), (0, 1, 0));
    let row = with_db(&db, |c| outbox::get(c, &only_team[0].message_id))
        .unwrap()
        .unwrap();
    assert_eq!(row.attempts, 1);
    assert!(row.next_attempt_at > NOW);
    assert_no_secret("smtp error", row.last_error.as_deref().unwrap());

    // The same sweep composed again (e.g. after a restart) does not add a second message.
    let again: Vec<OutboxMessage> = compose(&warnings(), &[], &cfg, RUN, NOW)
        .into_iter()
        .filter(|m| m.recipient == "security@example.com")
        .collect();
    assert_eq!(again, only_team);
    assert_eq!(
        with_db(&db, |c| outbox::enqueue(c, &again, NOW)).unwrap(),
        0
    );
    assert_eq!(
        with_db(&db, outbox::all)
            .unwrap()
            .iter()
            .filter(|m| m.recipient == "security@example.com")
            .count(),
        1
    );

    // The server comes back; before the backoff expires nothing is sent.
    let smtp = smtp_server::start(&pki, port, SMTP_USER, SMTP_PASSWORD);
    let early = notifier
        .deliver_due(&db, &cfg, row.next_attempt_at - 1)
        .await
        .unwrap();
    assert_eq!(early.sent, 0);
    assert!(smtp.messages().is_empty());

    let later = row.next_attempt_at;
    let r2 = notifier.deliver_due(&db, &cfg, later).await.unwrap();
    assert!(r2.sent >= 1, "{r2:?}");
    let team: Vec<_> = smtp
        .messages()
        .into_iter()
        .filter(|m| m.to == vec!["security@example.com".to_string()])
        .collect();
    assert_eq!(team.len(), 1, "delivered exactly once");
    let parsed = mail_parser::MessageParser::default()
        .parse(&team[0].data[..])
        .unwrap();
    assert_eq!(
        parsed.message_id().unwrap(),
        format!("{}@keysweep", only_team[0].message_id)
    );

    // A further run sends nothing more.
    let r3 = notifier.deliver_due(&db, &cfg, later + 7200).await.unwrap();
    assert_eq!(r3.sent, 0);
    assert_eq!(
        smtp.messages()
            .iter()
            .filter(|m| m.to == vec!["security@example.com".to_string()])
            .count(),
        1
    );
    assert_outbox_clean(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_refuses_an_untrusted_relay_and_reports_bad_credentials() {
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, SMTP_USER, "another-password");
    let ep = Endpoints {
        smtp_port: smtp.port,
        ca_file: None,
        http: "http://127.0.0.1:9".into(),
    };
    let notifier = Notifier::new().unwrap();

    // Without `smtp_ca_file` the private CA is not trusted: nothing is sent in clear.
    let untrusted = email_channel(&ep);
    let err = notifier
        .send_test(&untrusted, NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_no_secret("tls error", &err);

    // Trusted relay, wrong password: refused by the server, and the error holds no password.
    let ep = Endpoints {
        ca_file: Some(pki.ca_pem.clone()),
        ..ep
    };
    let wrong = email_channel(&ep);
    let err = notifier
        .send_test(&wrong, NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("535"), "{err}");
    assert_no_secret("auth error", &err);
    assert!(smtp.messages().is_empty());
    assert!(smtp.logins.lock().unwrap().is_empty());

    // Plain SMTP is refused for anything but a loopback host.
    let mut plain = email_channel(&ep);
    if let ChannelKind::Email(e) = &mut plain.kind {
        e.smtp_tls = SmtpTls::None;
        e.smtp_host = "mail.example.com".into();
    }
    let err = notifier
        .send_test(&plain, NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("loopback"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_channels_receive_complete_payloads_and_valid_signatures() {
    let rx = Receiver::start().await;
    // E-mail is covered elsewhere; keep this test to the HTTP channels.
    let cfg = config_with(
        &http_only(&rx),
        &Tweaks {
            max_age_notify: &["slack", "pd", "hook"],
            ..Tweaks::default()
        },
    );
    let (_dir, db, msgs, report) = deliver_warnings(&cfg).await;
    assert_eq!(report.sent as usize, msgs.len(), "{report:?}");

    // Slack: Block Kit listing every key by name and redacted value.
    let slack = rx.requests(SLACK_PATH);
    assert_eq!(slack.len(), 1);
    let body = slack[0].json();
    assert!(body["blocks"].as_array().unwrap().len() <= SLACK_MAX_BLOCKS);
    let s = body.to_string();
    for red in [
        "sk-proj-***a1b2",
        "sk-proj-***c3d4",
        "sk-svcacct-***e5f6",
        "sk-proj-***g7h8",
    ] {
        assert!(s.contains(red), "slack lacks {red}");
    }

    // PagerDuty: routing key added at send time, dedup keys per finding.
    let pd = rx.requests("/pd/enqueue");
    assert_eq!(pd.len(), 3);
    for r in &pd {
        let e = r.json();
        assert_eq!(e["routing_key"], ROUTING_KEY);
        assert_eq!(e["event_action"], "trigger");
        assert!(e["dedup_key"].as_str().unwrap().starts_with("acme/"));
        assert!(e["payload"]["summary"].as_str().unwrap().contains("sk-"));
    }

    // Webhooks: every request verifies with an implementation that is not ours.
    let verifier = standardwebhooks::Webhook::new(&webhook_secret()).unwrap();
    for path in ["/hook", "/payments", "/fallback"] {
        let reqs = rx.requests(path);
        assert_eq!(reqs.len(), 1, "{path}");
        let r = &reqs[0];
        verifier.verify(&r.body, &r.headers).unwrap();
        let id = r.header("webhook-id").unwrap();
        assert!(msgs.iter().any(|m| m.message_id == id));
        let v = r.json();
        assert_eq!(v["type"], "keysweep.notices.warning");
        assert_eq!(v["run_id"], RUN);
        assert_eq!(v["generated_at"], "2026-03-01T09:00:00Z");
        for n in v["notices"].as_array().unwrap() {
            for field in [
                "project_id",
                "project_name",
                "key_name",
                "redacted_value",
                "owner",
                "policy",
                "reason",
            ] {
                assert!(n[field].is_string(), "{field} missing in {n}");
            }
            assert_eq!(n["deadline"], "2026-03-15T09:00:00Z");
        }
    }
    assert_eq!(
        rx.requests("/hook")[0].json()["notices"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_outbox_clean(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_down_then_back_get_the_same_ids() {
    let rx = Receiver::start().await;
    // Slack refuses connections (nothing listens), the webhook answers 500, PagerDuty 429.
    let dead_port = free_port();
    let cfg = config_with(
        &http_only(&rx),
        &Tweaks {
            max_attempts: 10,
            max_age_notify: &["hook", "pd", "slack"],
            routing: false,
            slack_url: Some(format!("http://127.0.0.1:{dead_port}{SLACK_PATH}")),
        },
    );
    rx.set_status("/hook", 500);
    rx.set_status("/pd", 429);

    let (_dir, db) = open_db();
    let notices = vec![notice(NoticeKind::Warning, alice_key())];
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    assert_eq!(msgs.len(), 3);
    with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    let notifier = Notifier::new().unwrap();
    let r1 = notifier.deliver_due(&db, &cfg, NOW).await.unwrap();
    assert_eq!((r1.sent, r1.failed), (0, 3), "{r1:?}");
    for row in with_db(&db, outbox::all).unwrap() {
        let e = row.last_error.unwrap();
        assert_no_secret("delivery error", &e);
        assert!(!e.contains("/services/"), "{e}");
    }

    // Receivers come back (Slack on a fresh receiver at the same port).
    rx.set_status("/hook", 200);
    rx.set_status("/pd", 202);
    let slack_rx = Receiver::start_on(dead_port).await;
    let next = with_db(&db, outbox::all)
        .unwrap()
        .iter()
        .map(|m| m.next_attempt_at)
        .max()
        .unwrap();
    let r2 = notifier.deliver_due(&db, &cfg, next).await.unwrap();
    assert_eq!((r2.sent, r2.failed, r2.dead), (3, 0, 0), "{r2:?}");

    let hooks = rx.requests("/hook");
    assert_eq!(hooks.len(), 2, "one failed attempt, one accepted");
    let verifier = standardwebhooks::Webhook::new(&webhook_secret()).unwrap();
    for h in &hooks {
        verifier.verify(&h.body, &h.headers).unwrap();
    }
    assert_eq!(hooks[0].header("webhook-id"), hooks[1].header("webhook-id"));
    let pd = rx.requests("/pd");
    assert_eq!(pd.len(), 2);
    assert_eq!(pd[0].json()["dedup_key"], pd[1].json()["dedup_key"]);
    assert_eq!(slack_rx.requests(SLACK_PATH).len(), 1);
    assert_eq!(with_db(&db, outbox::depth).unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_after_max_attempts_raises_one_alert_without_looping() {
    let rx = Receiver::start().await;
    let cfg = config_with(
        &http_only(&rx),
        &Tweaks {
            max_attempts: 3,
            max_age_notify: &["hook"],
            routing: false,
            slack_url: None,
        },
    );
    rx.set_status("/hook", 503);

    let (_dir, db) = open_db();
    let msgs = compose(
        &[notice(NoticeKind::Warning, alice_key())],
        &[],
        &cfg,
        RUN,
        NOW,
    );
    assert_eq!(msgs.len(), 1);
    with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    let notifier = Notifier::new().unwrap();

    let mut now = NOW;
    let mut reports = Vec::new();
    for _ in 0..3 {
        let r = notifier.deliver_due(&db, &cfg, now).await.unwrap();
        reports.push(r);
        now += 3601;
    }
    assert_eq!(reports[0].failed, 1);
    assert_eq!(reports[1].failed, 1);
    assert_eq!(reports[2].dead, 1, "{:?}", reports[2]);
    assert_eq!(rx.requests("/hook").len(), 3);
    let alerts = &reports[2].alerts;
    assert_eq!(alerts.len(), 1);
    match &alerts[0] {
        EnforcerAlert::DeliveryFailed {
            channel,
            message_id,
            attempts,
            error,
        } => {
            assert_eq!(channel, "hook");
            assert_eq!(message_id, &msgs[0].message_id);
            assert_eq!(*attempts, 3);
            assert!(error.contains("503"), "{error}");
        }
        other => panic!("unexpected alert {other:?}"),
    }
    // The alert reached the ops channel in the same delivery run.
    let ops = rx.requests("/ops");
    assert_eq!(ops.len(), 1);
    let body = ops[0].json();
    assert_eq!(body["type"], "keysweep.alerts");
    assert_eq!(body["alerts"][0]["alert"], "delivery_failed");
    assert_eq!(body["alerts"][0]["message_id"], msgs[0].message_id.as_str());
    assert_eq!(with_db(&db, outbox::depth).unwrap().dead, 1);

    // If the ops channel is dead too, its delivery alert is dead-lettered without raising
    // another alert.
    rx.set_status("/ops", 500);
    let more = compose(
        &[notice(NoticeKind::Warning, bob_key())],
        &[],
        &cfg,
        "run-2",
        now,
    );
    with_db(&db, |c| outbox::enqueue(c, &more, now)).unwrap();
    let mut raised = 0;
    let mut dead = 0;
    for _ in 0..8 {
        let r = notifier.deliver_due(&db, &cfg, now).await.unwrap();
        raised += r.alerts.len();
        dead += r.dead;
        now += 3601;
    }
    assert_eq!(raised, 1, "only the notice's dead letter raises an alert");
    assert_eq!(dead, 2, "the notice and its delivery alert");
    assert_eq!(with_db(&db, outbox::depth).unwrap().pending, 0);
    assert_outbox_clean(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_reports_success_and_scrubbed_failure() {
    let rx = Receiver::start().await;
    let cfg = config(&http_only(&rx));
    let notifier = Notifier::new().unwrap();
    notifier
        .send_test(cfg.channel("hook").unwrap(), NOW)
        .await
        .unwrap();
    let r = &rx.requests("/hook")[0];
    standardwebhooks::Webhook::new(&webhook_secret())
        .unwrap()
        .verify(&r.body, &r.headers)
        .unwrap();
    assert_eq!(r.json()["type"], "keysweep.test");
    notifier
        .send_test(cfg.channel("slack").unwrap(), NOW)
        .await
        .unwrap();
    assert_eq!(rx.requests(SLACK_PATH).len(), 1);

    rx.set_status(SLACK_PATH, 404);
    let err = notifier
        .send_test(cfg.channel("slack").unwrap(), NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404"), "{err}");
    assert_no_secret("send_test error", &err);
    // SMTP with nothing listening: an error naming the channel, without the password.
    let err = notifier
        .send_test(cfg.channel("sec-email").unwrap(), NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("sec-email"), "{err}");
    assert_no_secret("send_test error", &err);
}

#[test]
fn rendered_payloads_never_carry_secrets() {
    let cfg = config(&offline_endpoints());
    let alerts = vec![EnforcerAlert::AdminKeyExpiring {
        organization: "acme".into(),
        key_id: "key_admin".into(),
        redacted_value: "sk-admin-***zz".into(),
        expires_at: NOW + 5 * DAY,
    }];
    for m in compose(&warnings(), &alerts, &cfg, RUN, NOW) {
        let s: String = m.payload.to_string();
        assert_no_secret("payload", &s);
        assert!(!s.contains("/services/"));
        if let Value::Object(o) = &m.payload {
            assert!(!o.contains_key("routing_key"));
        }
    }
}
