//! Issue 14's "every output neutralises names", end to end: an organisation whose every key,
//! project, user and service-account name is hostile (terminal escapes incl. OSC 52, CSV
//! formulas, Slack mentions and links, HTML, CR/LF, bidirectional overrides) is served by
//! `keysweep simulate --org-file`, and the real binary runs `scan` in every format,
//! `run --once` (delivering to a real SMTP server and real HTTP receivers) and `audit`.
//!
//! Checked: no raw control or bidi character on any terminal output, no formula cell in the CSV,
//! no live mention or link in Slack (and every mrkdwn text is `verbatim`), no forged line or
//! header in the e-mail, and the JSON outputs still give the names exactly as they are.

use std::path::Path;

use keysweep::sim::{
    SimAccess, SimAdminKey, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject, SimServiceAccount,
    SimUser,
};
use keysweep::text::is_unsafe;
use serde_json::Value;

use crate::support::process::{Simulator, run_to_end};
use crate::support::receivers::Receiver;
use crate::support::secrets::whsec;
use crate::support::smtp_server::{self, TestPki};
use crate::support::time::{DAY, unix_now};

const ADMIN_KEY: &str = "sk-admin-hostile-test-0001";
const SMTP_USER: &str = "hostile-mailer";
const SMTP_PASSWORD: &str = "hostile-Pa55";
const SLACK_PATH: &str = "/services/THOSTILE/BHOSTILE/hostiletoken";

/// Names a member could choose, one per attack.
const HOSTILE: [&str; 8] = [
    "\u{1b}]52;c;ZXZpbCBjbGlwYm9hcmQ=\u{7}clip\u{1b}[2J",
    "=HYPERLINK(\"https://evil.example/x\",\"open\")",
    "<!channel> @here <https://evil.example|click> @everyone <@U123>",
    "<img src=x onerror=alert(1)><script>alert(2)</script>",
    "ok\r\nStatus: revoked\r\nBcc: victim@evil.example",
    "invoice\u{202E}fdp.exe\u{2066}x\u{2069}\u{200F}",
    "evil.example/login \u{9b}31m+cmd|' /C calc'!A0",
    "@SUM(1+1)\u{2028}Subject: forged\u{85}x",
];

fn org(now: i64) -> SimOrg {
    let keys = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, name)| SimKey {
            id: format!("key_h{i}"),
            name: (*name).to_string(),
            redacted_value: format!("sk-proj-****h{i:03}"),
            created_at: now - 400 * DAY,
            last_used_at: None,
            owner: if i == 0 {
                SimOwnerRef::ServiceAccount {
                    id: "svc_acct_h".into(),
                }
            } else {
                SimOwnerRef::User {
                    id: "user_h".into(),
                }
            },
            expires_at: None,
            scopes: Vec::new(),
        })
        .collect();
    SimOrg {
        format: keysweep::sim::FORMAT_VERSION,
        generated_at: now,
        users: vec![SimUser {
            id: "user_h".into(),
            name: HOSTILE[2].into(),
            email: "mallory@example.com".into(),
            created_at: now - 900 * DAY,
        }],
        admin_api_keys: vec![SimAdminKey {
            id: "key_admin_h".into(),
            name: Some(HOSTILE[0].into()),
            redacted_value: "sk-admin-****h999".into(),
            created_at: now - 30 * DAY,
            expires_at: None,
            last_used_at: None,
            owner_user_id: "user_h".into(),
        }],
        projects: vec![SimProject {
            id: "proj_h".into(),
            name: Some(format!("{}{}", HOSTILE[4], HOSTILE[5])),
            created_at: now - 800 * DAY,
            archived_at: None,
            external_key_id: None,
            members: vec![SimMember {
                user_id: "user_h".into(),
                role: "owner".into(),
                added_at: now - 800 * DAY,
                access: SimAccess::Active,
            }],
            service_accounts: vec![SimServiceAccount {
                id: "svc_acct_h".into(),
                name: HOSTILE[1].into(),
                role: "member".into(),
                created_at: now - 700 * DAY,
                access: SimAccess::Active,
            }],
            keys,
        }],
    }
}

fn config(sim_port: u16, state: &Path, smtp_port: u16, ca: &Path, http: &str) -> String {
    format!(
        r#"mode = "dry-run"
state_path = "{state}"

[[organizations]]
name = "acme"
base_url = "http://127.0.0.1:{sim_port}/v1"
admin_key_env = "KS_HOSTILE_ADMIN_KEY"

[limits]
max_retries = 0

[[policies]]
name = "max-age"
max_age = "90d"
action = "revoke"
warn_before = "14d"
final_notice = "2d"
notify = ["mail", "slack", "hook", "pd"]

[[channels]]
name = "mail"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_tls = "starttls"
smtp_ca_file = "{ca}"
smtp_username_env = "KS_HOSTILE_SMTP_USER"
smtp_password_env = "KS_HOSTILE_SMTP_PASSWORD"
from = "keysweep <keysweep@example.com>"
to = ["security@example.com"]
owner = true
send_timeout = "20s"

[[channels]]
name = "slack"
type = "slack"
webhook_url_env = "KS_HOSTILE_SLACK_URL"

[[channels]]
name = "pd"
type = "pagerduty"
routing_key_env = "KS_HOSTILE_PD_KEY"
url = "{http}/pd/enqueue"

[[channels]]
name = "hook"
type = "webhook"
url = "{http}/hook"
secret_env = "KS_HOSTILE_WEBHOOK_SECRET"
"#,
        state = state.display(),
        ca = ca.display(),
    )
}

/// No raw control (other than the line ends and tabs of the output's own layout) and no bidi,
/// zero-width or separator character.
fn assert_inert(what: &str, text: &str) {
    if let Some(c) = text
        .chars()
        .find(|&c| is_unsafe(c) && !matches!(c, '\n' | '\t'))
    {
        panic!("{what} shows the raw character {c:?}:\n{text}");
    }
}

/// No live link a reader's client would open.
fn assert_no_live_link(what: &str, text: &str) {
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("https://evil") && !lower.contains("evil.example"),
        "{what} carries a live link:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_organisation_reaches_no_terminal_spreadsheet_slack_or_mail_raw() {
    let now = unix_now();
    let dir = tempfile::tempdir().unwrap();
    let org_file = dir.path().join("org.json");
    std::fs::write(&org_file, serde_json::to_string(&org(now)).unwrap()).unwrap();
    let sim = Simulator::start(&["--org-file", org_file.to_str().unwrap()], ADMIN_KEY);
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
    let rx = Receiver::start().await;
    let state = dir.path().join("state.db");
    let config_file = dir.path().join("keysweep.toml");
    let text = config(sim.port, &state, smtp.port, &pki.ca_pem, &rx.url(""));
    std::fs::write(&config_file, text).unwrap();
    let env = [
        ("KS_HOSTILE_ADMIN_KEY", ADMIN_KEY.to_string()),
        ("KS_HOSTILE_SMTP_USER", SMTP_USER.to_string()),
        ("KS_HOSTILE_SMTP_PASSWORD", SMTP_PASSWORD.to_string()),
        ("KS_HOSTILE_SLACK_URL", rx.url(SLACK_PATH)),
        ("KS_HOSTILE_PD_KEY", "hostile-routing-key-0001".to_string()),
        (
            "KS_HOSTILE_WEBHOOK_SECRET",
            whsec(b"hostile-webhook-signing-key-0001"),
        ),
    ];
    let cfg = config_file.to_str().unwrap();

    // scan, every format.
    for format in ["table", "csv", "json"] {
        let (status, out, err) =
            run_to_end(&["scan", "--config", cfg, "--format", format], &env).await;
        assert!(status.success(), "scan {format}: {status}\n{out}\n{err}");
        assert_inert(&format!("scan --format {format}"), &out);
        assert_inert(&format!("scan --format {format} (stderr)"), &err);
        match format {
            "csv" => assert_no_formula_cell(&out),
            "json" => assert_json_names_exact(&out),
            _ => {}
        }
    }

    // run --once: the sweep warns about every key on every channel.
    let (status, out, err) = run_to_end(&["run", "--config", cfg, "--once"], &env).await;
    assert!(status.success(), "run --once: {status}\n{out}\n{err}");
    assert_inert("run --once", &out);
    assert_inert("run --once (stderr)", &err);

    check_slack(&rx);
    check_webhook(&rx);
    check_pagerduty(&rx);
    check_mail(&smtp.messages());

    for format in ["table", "json"] {
        let (status, out, err) =
            run_to_end(&["audit", "--config", cfg, "--format", format], &env).await;
        assert!(status.success(), "audit {format}: {status}\n{out}\n{err}");
        assert_inert(&format!("audit --format {format}"), &out);
        assert_inert(&format!("audit --format {format} (stderr)"), &err);
        if format == "table" {
            assert!(out.contains("key_h4"), "{out}");
        }
    }
}

fn assert_no_formula_cell(out: &str) {
    let mut r = csv::Reader::from_reader(out.as_bytes());
    let mut rows = 0;
    for rec in r.records() {
        rows += 1;
        for cell in &rec.unwrap() {
            let first = cell.chars().find(|c| !c.is_whitespace());
            assert!(
                !matches!(first, Some('=' | '+' | '-' | '@')),
                "formula cell {cell:?}"
            );
        }
    }
    assert_eq!(rows, HOSTILE.len(), "{out}");
}

/// JSON keeps each name exactly as it is (escaped, not altered).
fn assert_json_names_exact(out: &str) {
    let v: Value = serde_json::from_str(out).unwrap();
    let names: Vec<&str> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    for h in HOSTILE {
        assert!(names.contains(&h), "{h:?} not in {names:?}");
    }
}

fn check_slack(rx: &Receiver) {
    let reqs = rx.requests(SLACK_PATH);
    assert!(!reqs.is_empty(), "no Slack message");
    for r in reqs {
        let body = r.json();
        let mut texts = Vec::new();
        collect_mrkdwn(&body, &mut texts);
        assert!(!texts.is_empty());
        for (text, verbatim) in texts {
            assert!(verbatim, "mrkdwn without verbatim: {text}");
            assert_inert("Slack mrkdwn", &text);
            assert_no_live_link("Slack mrkdwn", &text);
            assert!(!text.contains(['<', '>']), "live Slack markup: {text}");
            let lower = text.to_lowercase();
            for m in ["@here", "@channel", "@everyone"] {
                assert!(!lower.contains(m), "live mention {m}: {text}");
            }
        }
        assert!(
            body.to_string().contains("sk-proj-****h006"),
            "the Slack message lists the keys: {body}"
        );
    }
}

/// Every mrkdwn text object of a Block Kit body, with its `verbatim` flag.
fn collect_mrkdwn(v: &Value, out: &mut Vec<(String, bool)>) {
    match v {
        Value::Object(m) => {
            if m.get("type").and_then(Value::as_str) == Some("mrkdwn") {
                let text = m["text"].as_str().unwrap_or_default().to_string();
                out.push((text, m.get("verbatim") == Some(&Value::Bool(true))));
            }
            m.values().for_each(|x| collect_mrkdwn(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_mrkdwn(x, out)),
        _ => {}
    }
}

fn check_webhook(rx: &Receiver) {
    let reqs = rx.requests("/hook");
    assert!(!reqs.is_empty(), "no webhook message");
    for r in reqs {
        let body = r.json();
        let title = body["title"].as_str().unwrap();
        assert_inert("webhook title", title);
        // Structured fields keep the names exactly (escaped by construction).
        let names: Vec<&str> = body["notices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["key_name"].as_str().unwrap())
            .collect();
        for h in HOSTILE {
            assert!(names.contains(&h), "{h:?} not in {names:?}");
        }
    }
}

fn check_pagerduty(rx: &Receiver) {
    let reqs = rx.requests("/pd");
    assert_eq!(reqs.len(), HOSTILE.len(), "one event per key");
    for r in reqs {
        let body = r.json();
        let summary = body["payload"]["summary"].as_str().unwrap();
        assert_inert("PagerDuty summary", summary);
        assert_no_live_link("PagerDuty summary", summary);
    }
}

fn check_mail(raw: &[smtp_server::Received]) {
    assert!(!raw.is_empty(), "no e-mail");
    for m in raw {
        let parsed = mail_parser::MessageParser::default()
            .parse(&m.data[..])
            .unwrap();
        // No forged header: exactly the recipients keysweep chose, one subject.
        assert!(parsed.bcc().is_none(), "a forged Bcc header");
        for to in &m.to {
            assert!(!to.contains("evil"), "a forged recipient {to}");
        }
        let subject = parsed.subject().unwrap_or_default();
        assert!(!subject.contains("forged"), "{subject}");
        let text = parsed.body_text(0).unwrap().to_string();
        let html = parsed.body_html(0).unwrap().to_string();
        assert_inert("e-mail text", &text.replace('\r', ""));
        assert_inert("e-mail HTML", &html.replace('\r', ""));
        assert_no_live_link("e-mail text", &text);
        assert_no_live_link("e-mail HTML", &html);
        // No forged line: no line of the text starts with a field a name wrote.
        for line in text.lines() {
            let t = line.trim_start();
            assert!(
                !t.starts_with("Status:") && !t.starts_with("Bcc:") && !t.starts_with("Subject:"),
                "a forged line {line:?} in\n{text}"
            );
        }
        assert!(
            text.contains("key_h4"),
            "the e-mail lists the keys:\n{text}"
        );
        for tag in ["<img", "<script"] {
            assert!(!html.contains(tag), "live HTML {tag}:\n{html}");
        }
    }
}
