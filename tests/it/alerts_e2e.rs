//! Issue 4's "Done when", end to end: the simulated API, enforce mode, a policy that warns, and
//! every channel delivering to a real receiver over a real socket — the STARTTLS + AUTH SMTP
//! server (`smtp_server`), and recording HTTP receivers for Slack, PagerDuty and signed webhooks
//! (`receivers`). Sweeps run in process (`Sweeper::run_once`, with `now` moved forward where a
//! retry backoff must pass); `keysweep notify test` runs as the real binary.
//!
//! "The SMTP server stops" is modelled by a TCP gate in front of it: mailin has no stop, so the
//! channel points at the gate's port, and closing the gate leaves nothing listening there (and
//! cuts open connections) until it is opened again on the same port.
//!
//! Every message is parsed (mail-parser) or decoded and checked for exactly the violating keys,
//! by name and redacted value, and for the absence of every secret; every webhook signature is
//! verified with the `standardwebhooks` crate, not with our own code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keysweep::config::Config;
use keysweep::metrics::Metrics;
use keysweep::notify::outbox;
use keysweep::state::Store;
use keysweep::sweep::{SweepOptions, SweepReport, Sweeper};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::acme::{
    ADMIN_KEY, ADMIN_KEY_ENV, ALL_KEYS, CI_DEPLOY, FixtureKey, OLD_BATCH, SVC_BOT, start_sim,
};
use crate::support::config::config_from_toml;
use crate::support::net::free_port;
use crate::support::openmetrics;
use crate::support::process::run_to_end;
use crate::support::receivers::Receiver;
use crate::support::secrets::{self, whsec};
use crate::support::smtp_server::{self, SmtpServer, TestPki};
use crate::support::state_file::audit_records;
use crate::support::time::{DAY, unix_now};
use crate::support::wait::PATIENCE;

const SMTP_USER: &str = "keysweep-e2e-mailer";
const SMTP_PASSWORD: &str = "smtp-e2e-Pa55-do-not-leak";
const ROUTING_KEY: &str = "PDe2eROUTINGkey0do0not0leak0123";
const SLACK_PATH: &str = "/services/TE2E/BE2E/slackE2EtokenDoNotLeak";
const WEBHOOK_KEY: &[u8] = b"e2e-webhook-signing-key-no-leak!";

fn webhook_secret() -> String {
    whsec(WEBHOOK_KEY)
}

/// Every secret of the setup, in the forms it could leak in.
fn secrets() -> Vec<String> {
    vec![
        ADMIN_KEY.to_string(),
        SMTP_PASSWORD.to_string(),
        ROUTING_KEY.to_string(),
        "slackE2EtokenDoNotLeak".to_string(),
        webhook_secret(),
        secrets::base64(WEBHOOK_KEY),
    ]
}

fn assert_no_secret(what: &str, text: &str) {
    secrets::assert_no_secret(what, text, &secrets());
}

// ---------------------------------------------------------------------------------------------
// A gate in front of the SMTP server

/// Forwards TCP connections from its own port to the SMTP server's while open; while closed,
/// nothing listens on its port.
struct Gate {
    port: u16,
    target: u16,
    open: Option<CancellationToken>,
}

impl Gate {
    async fn new(target: u16) -> Gate {
        let mut g = Gate {
            port: free_port(),
            target,
            open: None,
        };
        g.open().await;
        g
    }

    async fn open(&mut self) {
        assert!(self.open.is_none());
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let token = CancellationToken::new();
        let (stop, target) = (token.clone(), self.target);
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        self.open = Some(token);
    }

    /// Stops listening and cuts every forwarded connection.
    async fn close(&mut self) {
        self.open.take().unwrap().cancel();
        // The listener is dropped by the accept task; wait until the port refuses.
        let start = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
            assert!(start.elapsed() < PATIENCE, "the gate did not close");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The setup

struct Setup {
    _dir: tempfile::TempDir,
    _pki: TestPki,
    smtp: SmtpServer,
    gate: Gate,
    rx: Receiver,
    sim: keysweep::sim::SimServer,
    config_file: PathBuf,
    state: PathBuf,
    now: i64,
}

/// The environment that holds every secret the configuration names.
fn env(rx: &Receiver) -> Vec<(String, String)> {
    vec![
        (ADMIN_KEY_ENV.into(), ADMIN_KEY.into()),
        ("KS_E2E_SMTP_USER".into(), SMTP_USER.into()),
        ("KS_E2E_SMTP_PASSWORD".into(), SMTP_PASSWORD.into()),
        ("KS_E2E_SLACK_URL".into(), rx.url(SLACK_PATH)),
        ("KS_E2E_PD_KEY".into(), ROUTING_KEY.into()),
        ("KS_E2E_WEBHOOK_SECRET".into(), webhook_secret()),
    ]
}

/// Enforce mode; one revoking policy with a 14-day warning, so a first sweep only warns.
fn toml(sim_url: &str, state: &Path, smtp_port: u16, ca: &Path, http: &str) -> String {
    format!(
        r#"mode = "enforce"
state_path = "{state}"
schedule = "0 9 * * *"
ops_channels = ["ops-hook"]

[[organizations]]
name = "acme"
base_url = "{sim_url}"
admin_key_env = "{ADMIN_KEY_ENV}"

[limits]
max_retries = 0
request_timeout = "20s"

[[policies]]
name = "max-age"
max_age = "90d"
action = "revoke"
warn_before = "14d"
final_notice = "2d"
notify = ["mail", "slack", "pd", "hook"]

[[channels]]
name = "mail"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_tls = "starttls"
smtp_ca_file = "{ca}"
smtp_username_env = "KS_E2E_SMTP_USER"
smtp_password_env = "KS_E2E_SMTP_PASSWORD"
from = "keysweep <keysweep@example.com>"
to = ["security@example.com"]
owner = true
send_timeout = "20s"

[[channels]]
name = "slack"
type = "slack"
webhook_url_env = "KS_E2E_SLACK_URL"

[[channels]]
name = "pd"
type = "pagerduty"
routing_key_env = "KS_E2E_PD_KEY"
url = "{http}/pd/enqueue"

[[channels]]
name = "hook"
type = "webhook"
url = "{http}/hook"
secret_env = "KS_E2E_WEBHOOK_SECRET"

[[channels]]
name = "ops-hook"
type = "webhook"
url = "{http}/ops"
secret_env = "KS_E2E_WEBHOOK_SECRET"

[safety]
max_revocations_per_project_percent = 100

[notifications]
repeat_interval = "24h"
max_attempts = 10
"#,
        state = state.display(),
        ca = ca.display(),
    )
}

impl Setup {
    async fn start() -> Setup {
        let now = unix_now();
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
        let gate = Gate::new(smtp.port).await;
        let rx = Receiver::start().await;
        let sim = start_sim(now).await;
        let state = dir.path().join("state.db");
        let config_file = dir.path().join("keysweep.toml");
        std::fs::write(
            &config_file,
            toml(&sim.base_url(), &state, gate.port, &pki.ca_pem, &rx.url("")),
        )
        .unwrap();
        Setup {
            _dir: dir,
            _pki: pki,
            smtp,
            gate,
            rx,
            sim,
            config_file,
            state,
            now,
        }
    }

    fn config(&self) -> Config {
        let text = std::fs::read_to_string(&self.config_file).unwrap();
        config_from_toml(&text, &env(&self.rx))
    }

    fn sweeper(&self, metrics: &Metrics) -> Sweeper {
        let store = Store::open(&self.state).unwrap();
        Sweeper::new(Arc::new(self.config()), Some(store), metrics.clone()).unwrap()
    }

    /// Runs the binary with this setup's configuration and secrets.
    async fn keysweep(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        let mut all = vec!["--config", self.config_file.to_str().unwrap()];
        all.extend_from_slice(args);
        run_to_end(&all, &env(&self.rx)).await
    }

    fn outbox(&self) -> Vec<outbox::StoredMessage> {
        let conn = rusqlite::Connection::open(&self.state).unwrap();
        outbox::all(&conn).unwrap()
    }

    /// Everything every receiver got so far, as comparable counts.
    fn received(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.smtp.messages().len(),
            self.rx.requests(SLACK_PATH).len(),
            self.rx.requests("/pd/").len(),
            self.rx.requests("/hook").len(),
            self.rx.requests("/ops").len(),
        )
    }
}

async fn sweep(sweeper: &Sweeper, now: i64) -> SweepReport {
    let report = sweeper.run_once(&SweepOptions::new(now)).await.unwrap();
    assert!(
        report.complete(),
        "incomplete sweep: {:?}",
        report.inventory
    );
    report
}

/// A parsed e-mail: recipients, Message-ID, subject, text and HTML.
struct Mail {
    to: Vec<String>,
    message_id: String,
    subject: String,
    text: String,
    html: String,
}

fn parse_mail(raw: &smtp_server::Received) -> Mail {
    let data = String::from_utf8_lossy(&raw.data);
    assert_no_secret("raw e-mail", &data);
    let m = mail_parser::MessageParser::default()
        .parse(&raw.data[..])
        .unwrap();
    assert!(raw.from.contains("keysweep@example.com"), "{}", raw.from);
    Mail {
        to: raw.to.clone(),
        message_id: m.message_id().unwrap().to_string(),
        subject: m.subject().unwrap().to_string(),
        text: m.body_text(0).unwrap().to_string(),
        html: m.body_html(0).unwrap().to_string(),
    }
}

/// `text` names exactly `keys` among the fixture's keys, each by name and redacted value.
fn lists_exactly(what: &str, text: &str, keys: &[FixtureKey]) {
    for k in ALL_KEYS {
        let listed = keys.contains(&k);
        assert_eq!(
            text.contains(k.2),
            listed,
            "{what}: key {} {}:\n{text}",
            k.2,
            if listed {
                "missing"
            } else {
                "listed but compliant"
            }
        );
        assert_eq!(
            text.contains(k.3),
            listed,
            "{what}: redacted value of {}:\n{text}",
            k.2
        );
    }
}

fn verifier() -> standardwebhooks::Webhook {
    standardwebhooks::Webhook::new(&webhook_secret()).unwrap()
}

/// Every webhook request so far verifies, and no `webhook-id` was delivered twice.
fn assert_webhooks_signed_and_unique(rx: &Receiver, path: &str) {
    let reqs = rx.requests(path);
    let mut ids = BTreeSet::new();
    for r in &reqs {
        verifier()
            .verify(&r.body, &r.headers)
            .unwrap_or_else(|e| panic!("signature of {path} request rejected: {e:?}"));
        assert!(
            ids.insert(r.header("webhook-id").unwrap()),
            "duplicate delivery"
        );
        assert_no_secret("webhook body", &String::from_utf8_lossy(&r.body));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_digest_per_channel_nothing_twice_and_a_pending_mail_delivered_once() {
    let mut s = Setup::start().await;
    let metrics = Metrics::new();
    let sweeper = s.sweeper(&metrics);
    let t0 = s.now;

    // 1. One enforce sweep: warnings only (the deadline is 14 days out), one digest per channel
    //    and recipient, each listing exactly the violating keys.
    let r1 = sweep(&sweeper, t0).await;
    assert_eq!(r1.revoked_count(), 0);
    assert!(r1.alerts.is_empty(), "{:?}", r1.alerts);
    assert_eq!(
        (r1.delivery.failed, r1.delivery.dead),
        (0, 0),
        "{:?}",
        r1.delivery
    );
    assert_eq!(r1.delivery.sent as usize, r1.notices_queued);
    assert_warning_mails(&s, t0);
    assert_warning_http(&s);

    // 2. A second, identical sweep sends nothing new.
    let before = s.received();
    let r2 = sweep(&sweeper, t0 + 60).await;
    assert_eq!(r2.notices_queued, 0);
    assert_eq!(r2.delivery.sent, 0);
    assert_eq!(s.received(), before, "the second sweep sent something");

    let pending = smtp_down_while_a_key_resolves(&mut s, &sweeper, t0).await;
    let retry_at = pending_mails_delivered_once_when_smtp_returns(&mut s, &sweeper, &pending).await;
    // 6. Later sweeps send nothing more anywhere.
    let before = s.received();
    let r6 = sweep(&sweeper, retry_at + 3600).await;
    assert_eq!((r6.notices_queued, r6.delivery.sent), (0, 0));
    assert_eq!(s.received(), before);
    assert!(s.outbox().iter().all(|m| m.status == "sent"));
    assert_webhooks_signed_and_unique(&s.rx, "/hook");
    assert!(s.rx.requests("/ops").is_empty());
    // Logins happened over TLS with AUTH for every delivered mail.
    assert_eq!(s.smtp.logins.lock().unwrap().len(), 5);
    // And /metrics counts every delivery outcome per channel.
    let m = openmetrics::Metrics::parse(&metrics.encode());
    let count = |channel: &str, outcome: &str| {
        m.sum(
            "keysweep_notifications_total",
            &[("channel", channel), ("outcome", outcome)],
        )
    };
    assert_eq!(count("mail", "sent"), 5.0);
    assert_eq!(
        count("mail", "failed"),
        2.0,
        "two deliveries found the relay down: one attempt each"
    );
    assert_eq!(count("mail", "postponed"), 2.0, "the other mail waited");
    assert_eq!(count("pd", "sent"), 4.0);
    assert_eq!(count("hook", "sent"), 2.0);
    assert_eq!(count("slack", "sent"), 2.0);

    // Nothing secret in the state database, and its audit chain verifies.
    let raw = std::fs::read(&s.state).unwrap();
    secrets::assert_no_secret_in_bytes("the state file", &raw, &secrets());
    let (status, out, err) = s
        .keysweep(&["audit", "verify", "--state", s.state.to_str().unwrap()])
        .await;
    assert!(status.success(), "{out}{err}");
}

/// PagerDuty's dedup key of a fixture key's `max-age` finding.
fn dedup(k: FixtureKey) -> String {
    format!("acme/{}/{}/max-age", k.0, k.1)
}

/// After the first sweep: three mails (team, alice, bob), each listing exactly its violating
/// keys, announcing the revocation date, with the outbox id as Message-ID.
fn assert_warning_mails(s: &Setup, t0: i64) {
    let mails: Vec<Mail> = s.smtp.messages().iter().map(parse_mail).collect();
    assert_eq!(
        mails.len(),
        3,
        "team digest + alice + bob (the service account has no e-mail)"
    );
    let outbox_rows = s.outbox();
    for m in &mails {
        assert_eq!(m.to.len(), 1, "{:?}", m.to);
        let expected: &[_] = match m.to[0].as_str() {
            "security@example.com" => &[CI_DEPLOY, OLD_BATCH, SVC_BOT],
            "alice@example.com" => &[CI_DEPLOY],
            "bob@example.com" => &[OLD_BATCH],
            other => panic!("mail to {other}"),
        };
        lists_exactly(&format!("mail to {} (text)", m.to[0]), &m.text, expected);
        lists_exactly(&format!("mail to {} (html)", m.to[0]), &m.html, expected);
        assert!(m.subject.starts_with("[keysweep] "), "{}", m.subject);
        assert!(m.subject.contains("will be revoked"), "{}", m.subject);
        // The exact revocation date is announced.
        let deadline = chrono::DateTime::from_timestamp(t0 + 14 * DAY, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        assert!(
            m.text.contains(&deadline),
            "no deadline {deadline} in:\n{}",
            m.text
        );
        let row = outbox_rows
            .iter()
            .find(|r| format!("{}@keysweep", r.message_id) == m.message_id)
            .expect("the Message-ID is the outbox id");
        assert_eq!(row.status, "sent");
    }
    let team_subject = &mails
        .iter()
        .find(|m| m.to[0] == "security@example.com")
        .unwrap()
        .subject;
    assert!(team_subject.contains("3 API keys"), "{team_subject}");
}

/// After the first sweep: one Slack digest, one PagerDuty event per violating key, one signed
/// webhook digest, and no enforcer alert.
fn assert_warning_http(s: &Setup) {
    let slack = s.rx.requests(SLACK_PATH);
    assert_eq!(slack.len(), 1, "one Slack digest");
    lists_exactly(
        "slack",
        &slack[0].json().to_string(),
        &[CI_DEPLOY, OLD_BATCH, SVC_BOT],
    );
    assert_no_secret("slack body", &String::from_utf8_lossy(&slack[0].body));

    let pd = s.rx.requests("/pd/");
    assert_eq!(pd.len(), 3, "one PagerDuty event per violating key");
    let mut triggered = BTreeSet::new();
    for r in &pd {
        let e = r.json();
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(
            e["routing_key"], ROUTING_KEY,
            "routing key added at send time"
        );
        triggered.insert(e["dedup_key"].as_str().unwrap().to_string());
    }
    assert_eq!(
        triggered,
        [dedup(CI_DEPLOY), dedup(OLD_BATCH), dedup(SVC_BOT)]
            .into_iter()
            .collect()
    );

    let hooks = s.rx.requests("/hook");
    assert_eq!(hooks.len(), 1, "one webhook digest");
    let body = hooks[0].json();
    assert_eq!(body["type"], "keysweep.notices.warning");
    assert_eq!(body["dry_run"], false);
    let names: BTreeSet<&str> = body["notices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["key_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [CI_DEPLOY.2, OLD_BATCH.2, SVC_BOT.2].into_iter().collect()
    );
    assert_webhooks_signed_and_unique(&s.rx, "/hook");
    assert!(
        s.rx.requests("/ops").is_empty(),
        "no enforcer alert expected"
    );
}

/// Step 3: the SMTP server goes away and alice deletes her key herself. Returns the two mails
/// left pending in the outbox.
async fn smtp_down_while_a_key_resolves(
    s: &mut Setup,
    sweeper: &Sweeper,
    t0: i64,
) -> Vec<outbox::StoredMessage> {
    // 3. The SMTP server goes away; alice deletes her key herself. The resolved notices reach
    //    the HTTP channels; the mails stay pending in the outbox.
    s.gate.close().await;
    s.sim.remove_key(CI_DEPLOY.0, CI_DEPLOY.1).unwrap();
    let r3 = sweep(sweeper, t0 + 120).await;
    assert!(r3.notices_queued >= 5, "{}", r3.notices_queued);
    // The first mail finds the relay down; the other waits for its next attempt, untried.
    assert_eq!(
        (r3.delivery.failed, r3.delivery.postponed),
        (1, 1),
        "team and alice mails: {:?}",
        r3.delivery
    );
    let pending: Vec<_> = s
        .outbox()
        .into_iter()
        .filter(|m| m.status == "pending")
        .collect();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert_eq!(pending.iter().map(|m| m.attempts).sum::<u32>(), 1);
    for m in &pending {
        assert_eq!(m.channel, "mail");
        assert!(m.next_attempt_at > t0 + 120);
        let err = m.last_error.as_deref().unwrap();
        assert_no_secret("outbox last_error", err);
        assert_no_secret("outbox payload", &m.payload.to_string());
    }
    let recipients: BTreeSet<&str> = pending.iter().map(|m| m.recipient.as_str()).collect();
    assert_eq!(
        recipients,
        ["alice@example.com", "security@example.com"]
            .into_iter()
            .collect()
    );
    assert_eq!(s.smtp.messages().len(), 3);

    // PagerDuty: trigger, then resolve with the same dedup key.
    let pd = s.rx.requests("/pd/");
    assert_eq!(pd.len(), 4);
    let resolve = pd[3].json();
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], dedup(CI_DEPLOY));
    assert_eq!(resolve["routing_key"], ROUTING_KEY);
    // Webhook: a resolved notice for exactly that key.
    let hooks = s.rx.requests("/hook");
    assert_eq!(hooks.len(), 2);
    let resolved = hooks[1].json();
    assert_eq!(resolved["type"], "keysweep.notices.resolved");
    let notices = resolved["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0]["key_name"], CI_DEPLOY.2);
    assert_eq!(notices[0]["redacted_value"], CI_DEPLOY.3);
    let slack = s.rx.requests(SLACK_PATH);
    assert_eq!(slack.len(), 2);
    lists_exactly("slack resolved", &slack[1].json().to_string(), &[CI_DEPLOY]);

    pending
}

/// Steps 4 and 5: still down, another attempt fails; back on the same port, the pending mails
/// are delivered exactly once with their original Message-IDs. Returns when that was.
async fn pending_mails_delivered_once_when_smtp_returns(
    s: &mut Setup,
    sweeper: &Sweeper,
    pending: &[outbox::StoredMessage],
) -> i64 {
    // 4. Still down at the next sweep: another attempt fails (one per delivery), nothing
    //    else is new.
    let retry_at = pending.iter().map(|m| m.next_attempt_at).max().unwrap();
    let r4 = sweep(sweeper, retry_at).await;
    assert_eq!(r4.notices_queued, 0);
    assert_eq!(
        (r4.delivery.sent, r4.delivery.failed, r4.delivery.postponed),
        (0, 1, 1),
        "{:?}",
        r4.delivery
    );

    // 5. The server is back on the same port; once the backoff has passed, the pending
    //    digests are delivered exactly once, with the Message-IDs they were written with.
    s.gate.open().await;
    let retry_at = s
        .outbox()
        .iter()
        .filter(|m| m.status == "pending")
        .map(|m| m.next_attempt_at)
        .max()
        .unwrap();
    let r5 = sweep(sweeper, retry_at).await;
    assert_eq!(r5.notices_queued, 0);
    assert_eq!(
        (r5.delivery.sent, r5.delivery.failed),
        (2, 0),
        "{:?}",
        r5.delivery
    );
    let mails: Vec<Mail> = s.smtp.messages().iter().map(parse_mail).collect();
    assert_eq!(mails.len(), 5);
    for m in &mails[3..] {
        let row = pending
            .iter()
            .find(|p| p.recipient == m.to[0])
            .unwrap_or_else(|| panic!("unexpected mail to {:?}", m.to));
        assert_eq!(m.message_id, format!("{}@keysweep", row.message_id));
        lists_exactly(
            &format!("resolved mail to {}", m.to[0]),
            &m.text,
            &[CI_DEPLOY],
        );
        assert!(
            m.subject.to_lowercase().contains("resolved"),
            "{}",
            m.subject
        );
    }
    let ids: BTreeSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), mails.len(), "a mail was delivered twice");

    retry_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_reaches_every_receiver_and_fails_cleanly_on_a_dead_one() {
    let mut s = Setup::start().await;

    // Each channel, through the real binary: exit 0, and the receiver got a test message.
    for channel in ["mail", "slack", "pd", "hook"] {
        let (status, out, err) = s.keysweep(&["notify", "test", "--channel", channel]).await;
        assert!(status.success(), "notify test {channel}: {out}{err}");
        assert!(out.contains(&format!("channel \"{channel}\"")), "{out}");
        assert_no_secret("notify test output", &format!("{out}{err}"));
    }
    let mails = s.smtp.messages();
    assert_eq!(mails.len(), 1);
    let mail = parse_mail(&mails[0]);
    assert_eq!(mail.to, vec!["security@example.com".to_string()]);
    assert!(
        mail.subject.to_lowercase().contains("test"),
        "{}",
        mail.subject
    );
    assert_eq!(s.rx.requests(SLACK_PATH).len(), 1);
    let pd = s.rx.requests("/pd/");
    assert_eq!(pd.len(), 1);
    assert_eq!(pd[0].json()["routing_key"], ROUTING_KEY);
    let hooks = s.rx.requests("/hook");
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].json()["type"], "keysweep.test");
    assert_webhooks_signed_and_unique(&s.rx, "/hook");

    // Dead receivers: nothing listens behind the SMTP gate, and the HTTP channels point at a
    // port nobody serves. Non-zero exit, the channel named, no secret.
    s.gate.close().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let text = std::fs::read_to_string(&s.config_file)
        .unwrap()
        .replace(&s.rx.url(""), &dead);
    std::fs::write(&s.config_file, text).unwrap();
    let dead_slack = format!("{dead}{SLACK_PATH}");
    for channel in ["mail", "slack", "pd", "hook"] {
        let mut all = vec!["--config", s.config_file.to_str().unwrap()];
        all.extend_from_slice(&["notify", "test", "--channel", channel]);
        let mut env = env(&s.rx);
        for (k, v) in &mut env {
            if k == "KS_E2E_SLACK_URL" {
                *v = dead_slack.clone();
            }
        }
        let (status, out, err) = run_to_end(&all, &env).await;
        assert!(
            !status.success(),
            "notify test {channel} against a dead receiver: {out}"
        );
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "test message through channel \"{channel}\" failed"
            )),
            "unclear message: {err}"
        );
        assert!(
            err.to_lowercase().contains("connect") || err.to_lowercase().contains("refused"),
            "the cause is missing: {err}"
        );
        assert_no_secret("notify test error", &format!("{out}{err}"));
        assert!(!err.contains("/services/"), "the Slack URL leaked: {err}");
    }
    assert_eq!(s.smtp.messages().len(), 1);
}

/// The outbox rows of one kind (`warning`, `final_notice`, `revoked`, …).
fn rows_of(s: &Setup, kind: &str) -> Vec<outbox::StoredMessage> {
    s.outbox()
        .into_iter()
        .filter(|m| m.kind.as_str() == kind)
        .collect()
}

/// The mails delivered for the outbox rows given, parsed.
fn mails_for(s: &Setup, rows: &[outbox::StoredMessage]) -> Vec<Mail> {
    let ids: BTreeSet<String> = rows
        .iter()
        .map(|r| format!("{}@keysweep", r.message_id))
        .collect();
    s.smtp
        .messages()
        .iter()
        .map(parse_mail)
        .filter(|m| ids.contains(&m.message_id))
        .collect()
}

/// After the revocation: one webhook digest of the two revoked keys, PagerDuty incidents of
/// exactly those keys resolved, every webhook signed, every outbox row sent.
fn assert_revocation_announced_on_http(s: &Setup) {
    let hooks = s.rx.requests("/hook");
    let revoked_hook: Vec<Value> = hooks
        .iter()
        .map(|r| r.json())
        .filter(|v| v["type"] == "keysweep.notices.revoked")
        .collect();
    assert_eq!(revoked_hook.len(), 1);
    assert_eq!(revoked_hook[0]["notices"].as_array().unwrap().len(), 2);
    let resolves: BTreeSet<String> =
        s.rx.requests("/pd/")
            .iter()
            .map(|r| r.json())
            .filter(|e| e["event_action"] == "resolve")
            .map(|e| e["dedup_key"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(
        resolves,
        [dedup(CI_DEPLOY), dedup(OLD_BATCH)].into_iter().collect()
    );
    assert_webhooks_signed_and_unique(&s.rx, "/hook");
    assert!(s.outbox().iter().all(|m| m.status == "sent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_notice_and_the_revocation_each_get_their_own_message() {
    let s = Setup::start().await;
    let sweeper = s.sweeper(&Metrics::new());
    let t0 = s.now;
    let day = DAY;
    sweep(&sweeper, t0).await;
    assert_eq!(
        rows_of(&s, "warning").len(),
        8,
        "mail ×3 (team, alice, bob), Slack, webhook, PagerDuty ×3"
    );

    // Two days before the deadline: the final notice, in messages of its own.
    let r = sweep(&sweeper, t0 + 12 * day + 3600).await;
    assert_eq!(r.revoked_count(), 0);
    let finals = rows_of(&s, "final_notice");
    let mails = mails_for(&s, &finals);
    assert_eq!(mails.len(), 3, "team, alice, bob");
    for m in &mails {
        assert!(m.subject.contains("Final notice"), "{}", m.subject);
        let expected: &[_] = match m.to[0].as_str() {
            "security@example.com" => &[CI_DEPLOY, OLD_BATCH, SVC_BOT],
            "alice@example.com" => &[CI_DEPLOY],
            _ => &[OLD_BATCH],
        };
        lists_exactly(&format!("final notice to {}", m.to[0]), &m.text, expected);
    }
    let hook = s.rx.requests("/hook");
    assert_eq!(
        hook.last().unwrap().json()["type"],
        "keysweep.notices.final_notice"
    );
    let pd: Vec<Value> = s.rx.requests("/pd/").iter().map(|r| r.json()).collect();
    assert_eq!(pd.len(), 6);
    assert!(
        pd[3..]
            .iter()
            .all(|e| e["event_action"] == "trigger" && e["payload"]["severity"] == "error")
    );

    // At the deadline: the user keys are deleted (the service account's key stays: the
    // default rule is notify-only), and the revocation is announced in its own messages.
    let r = sweep(&sweeper, t0 + 14 * day + 3600).await;
    assert_eq!(r.revoked_count(), 2, "{:?}", r.revocations);
    assert!(!s.sim.key_exists(CI_DEPLOY.0, CI_DEPLOY.1));
    assert!(!s.sim.key_exists(OLD_BATCH.0, OLD_BATCH.1));
    assert!(s.sim.key_exists(SVC_BOT.0, SVC_BOT.1));
    let revoked = rows_of(&s, "revoked");
    let mails = mails_for(&s, &revoked);
    assert_eq!(mails.len(), 3, "team, alice, bob");
    for m in &mails {
        assert!(m.subject.contains("revoked"), "{}", m.subject);
        assert!(!m.subject.contains("Final notice"), "{}", m.subject);
        let expected: &[_] = match m.to[0].as_str() {
            "security@example.com" => &[CI_DEPLOY, OLD_BATCH],
            "alice@example.com" => &[CI_DEPLOY],
            _ => &[OLD_BATCH],
        };
        lists_exactly(
            &format!("revocation notice to {}", m.to[0]),
            &m.text,
            expected,
        );
    }
    assert_revocation_announced_on_http(&s);

    // The audit log has an intent and an outcome for each deletion, and verifies.
    let records = audit_records(&s.state);
    for k in [CI_DEPLOY, OLD_BATCH] {
        for kind in ["intent", "outcome"] {
            assert_eq!(
                records
                    .iter()
                    .filter(|r| r["kind"] == kind && r["key_id"] == k.1)
                    .count(),
                1,
                "{kind} of {}",
                k.2
            );
        }
    }
    let (status, out, err) = s
        .keysweep(&["audit", "verify", "--state", s.state.to_str().unwrap()])
        .await;
    assert!(status.success(), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_admin_key_alerts_the_ops_channel_once() {
    let s = Setup::start().await;
    let sweeper = s.sweeper(&Metrics::new());
    s.sim.set_admin_key("sk-admin-revoked-meanwhile");
    for i in 0..2 {
        let r = sweeper
            .run_once(&SweepOptions::new(s.now + i * 60))
            .await
            .unwrap();
        assert!(!r.complete());
        assert_eq!(r.revoked_count(), 0);
    }
    let ops = s.rx.requests("/ops");
    assert_eq!(ops.len(), 1, "one alert, not one per sweep");
    assert_webhooks_signed_and_unique(&s.rx, "/ops");
    let body = ops[0].json();
    assert_eq!(body["type"], "keysweep.alerts");
    let text = body.to_string();
    assert!(text.contains("acme"), "{text}");
    assert!(
        text.contains("401") || text.to_lowercase().contains("refused"),
        "{text}"
    );
    // Nobody else hears about it, and no finding was made from a failed listing.
    assert_eq!(s.received(), (0, 0, 0, 0, 1));
}
