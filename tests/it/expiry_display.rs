//! Expiry everywhere a person looks (issue 12, deliverable 6), through the real binary against
//! the simulated API over HTTP: `keysweep scan`'s EXPIRES column, CSV and JSON for a key that
//! never expires, one that expires later and one already expired (key names hostile); the
//! daemon's `/metrics` counting keys by expiry state and those expiring within 7 days; and the
//! notices its first sweep sends, each key with its expiry.
//!
//! Must never: read a key's expiry from anywhere but the simulator's answers, or let a hostile
//! key name reach the terminal, a spreadsheet formula or a metric label.

use std::path::Path;

use keysweep::sim::{SimKey, SimOrg, SimOwnerRef, SimServer};
use serde_json::Value;

use crate::support::acme::{
    ADMIN_KEY, ADMIN_KEY_ENV, CI_DEPLOY, FRESH, FixtureKey, OLD_BATCH, SVC_BOT, WEB,
};
use crate::support::net::{free_port, http};
use crate::support::openmetrics::Metrics;
use crate::support::process::{Proc, describe, keysweep, output};
use crate::support::receivers::Receiver;
use crate::support::secrets::{assert_no_secret, whsec};
use crate::support::sim::start_sim;
use crate::support::time::{DAY, rfc3339, unix_now};
use crate::support::wait::poll;

/// A key whose name tries to drive the terminal, forge a table line and run a formula.
const HOSTILE: FixtureKey = (
    "proj_web",
    "key_web_hostile",
    "=HYPERLINK(\"http://x\")\u{1b}[2J\nforged line",
    "sk-proj-****H0st",
);

/// The expiries the tests give the fixture's keys, relative to `now`: (key, `expires_at`).
fn expiries(now: i64) -> [(FixtureKey, Option<i64>); 6] {
    [
        (CI_DEPLOY, None),
        (WEB, None),
        (OLD_BATCH, Some(now + 3 * DAY)),
        (FRESH, Some(now + 60 * DAY)),
        (HOSTILE, Some(now + 30 * DAY)),
        (SVC_BOT, Some(now - DAY)),
    ]
}

/// The acme organisation plus [`HOSTILE`], every key with its expiry from [`expiries`].
async fn start(now: i64) -> SimServer {
    let mut org: SimOrg = crate::support::acme::org(now);
    let web = org
        .projects
        .iter_mut()
        .find(|p| p.id == "proj_web")
        .unwrap();
    web.keys.push(SimKey {
        id: HOSTILE.1.into(),
        name: HOSTILE.2.into(),
        redacted_value: HOSTILE.3.into(),
        created_at: now - 5 * DAY,
        last_used_at: None,
        owner: SimOwnerRef::User {
            id: "user_alice".into(),
        },
        expires_at: None,
        scopes: Vec::new(),
    });
    let sim = start_sim(org, ADMIN_KEY).await;
    for ((project, key, _, _), at) in expiries(now) {
        sim.set_expires_at(project, key, at).unwrap();
    }
    sim
}

fn write_config(dir: &Path, sim: &SimServer, extra: &str) -> std::path::PathBuf {
    let extra = format!("mode = \"dry-run\"\n{extra}");
    crate::support::config::write_config_file(dir, &sim.base_url(), ADMIN_KEY_ENV, &extra)
}

/// `keysweep scan --format <format> --now <now>`: its stdout, after checking it succeeded and
/// shows no secret.
async fn scan(config: &Path, format: &str, now: i64) -> String {
    let out = output(keysweep(
        &[
            "scan",
            "--format",
            format,
            "--now",
            &rfc3339(now),
            "--config",
            config.to_str().unwrap(),
        ],
        &[(ADMIN_KEY_ENV, ADMIN_KEY)],
    ))
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_no_secret("scan's output", &text, &[ADMIN_KEY]);
    text
}

fn date(ts: i64) -> String {
    rfc3339(ts)[..10].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_shows_each_keys_expiry_in_the_table_csv_and_json() {
    let now = unix_now();
    let sim = start(now).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim, "");

    // Table: an EXPIRES column, one cell per key; the hostile name stays on its line.
    let table = scan(&config, "table", now).await;
    assert!(!table.contains('\u{1b}'), "an escape reached the terminal");
    assert!(!table.contains("\nforged line"), "a name forged a line");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].trim_end().ends_with("EXPIRES"), "{}", lines[0]);
    let row = |key: &str| {
        *lines
            .iter()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no line for {key}:\n{table}"))
    };
    assert!(
        row(CI_DEPLOY.1).ends_with("  never"),
        "{}",
        row(CI_DEPLOY.1)
    );
    assert!(row(WEB.1).ends_with("  never"), "{}", row(WEB.1));
    let in_3d = format!("  {} (in 3d)", date(now + 3 * DAY));
    assert!(row(OLD_BATCH.1).ends_with(&in_3d), "{}", row(OLD_BATCH.1));
    let in_30d = format!("  {} (in 30d)", date(now + 30 * DAY));
    assert!(row(HOSTILE.1).ends_with(&in_30d), "{}", row(HOSTILE.1));
    let expired = format!("  expired ({})", date(now - DAY));
    assert!(row(SVC_BOT.1).ends_with(&expired), "{}", row(SVC_BOT.1));

    // CSV: RFC 3339, empty when the key has none; the state says which; formulas defused.
    let csv_text = scan(&config, "csv", now).await;
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = r.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    for ((_, key, _, _), at) in expiries(now) {
        let row = rows.iter().find(|r| &r[col("key_id")] == key).unwrap();
        let (want_at, want_state) = match at {
            None => (String::new(), "none"),
            Some(t) if t <= now => (rfc3339(t), "expired"),
            Some(t) => (rfc3339(t), "set"),
        };
        assert_eq!(&row[col("expires_at")], want_at, "{key}");
        assert_eq!(&row[col("expiry_state")], want_state, "{key}");
    }
    let hostile = rows
        .iter()
        .find(|r| &r[col("key_id")] == HOSTILE.1)
        .unwrap();
    assert!(hostile[col("name")].starts_with("'="), "{hostile:?}");

    // JSON: `expires_at` as the API gives it (Unix seconds, or null), every key.
    let report: Value = serde_json::from_str(&scan(&config, "json", now).await).unwrap();
    let keys = report["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 6);
    for ((_, key, _, _), at) in expiries(now) {
        let k = keys.iter().find(|k| k["id"] == key).unwrap();
        assert_eq!(k.get("expires_at"), Some(&serde_json::json!(at)), "{k}");
    }
    let svc = keys.iter().find(|k| k["id"] == SVC_BOT.1).unwrap();
    assert_eq!(svc["expiry_state"], "expired");
    // The name comes back exactly as the API gave it: JSON escapes, it does not rewrite.
    let h = keys.iter().find(|k| k["id"] == HOSTILE.1).unwrap();
    assert_eq!(h["name"], HOSTILE.2);
}

/// Dry-run daemon; the `max-age` policy (notify only) warns about `ci-deploy` (never expires),
/// `old-batch` (expires in 3 days) and `svc-bot` (expired) through a webhook.
fn daemon_extra(port: u16, hook: &str) -> String {
    format!(
        r#"schedule = "0 0 1 1 *"
run_on_start = true

[limits]
max_retries = 0
request_timeout = "20s"

[[policies]]
name = "max-age"
max_age = "90d"
action = "notify"
notify = ["hook"]

[[channels]]
name = "hook"
type = "webhook"
url = "{hook}"
secret_env = "KS_EXPIRY_WEBHOOK_SECRET"

[server]
listen = "127.0.0.1:{port}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_counts_keys_by_expiry_and_its_notices_show_each_keys_expiry() {
    let now = unix_now();
    let sim = start(now).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &sim, &daemon_extra(port, &rx.url("/hook")));
    let secret = whsec(b"expiry-display-webhook-key-0000!");
    let mut daemon = Proc::spawn(keysweep(
        &["run", "--config", config.to_str().unwrap()],
        &[
            (ADMIN_KEY_ENV, ADMIN_KEY),
            ("KS_EXPIRY_WEBHOOK_SECRET", secret.as_str()),
        ],
    ));

    let client = http();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let m = poll("the first sweep's expiry gauges", async || {
        assert!(daemon.is_running(), "{:#?}", daemon.stderr());
        let Ok(r) = client.get(&url).send().await else {
            return Err("no answer yet".to_string());
        };
        let m = Metrics::parse(&r.text().await.unwrap());
        if m.types.contains_key("keysweep_keys_by_expiry") {
            Ok(m)
        } else {
            Err("no keysweep_keys_by_expiry yet".to_string())
        }
    })
    .await;
    assert_expiry_gauges(&m);

    // The warning digest lists each key with its expiry.
    let hook = poll("the warning webhook", async || {
        rx.requests("/hook")
            .into_iter()
            .find(|r| r.json()["type"] == "keysweep.notices.warning")
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    daemon.signal("-TERM");
    daemon.wait().await;
    assert_notices_show_expiry(&hook.json(), now);
    daemon.assert_no_secret(&[ADMIN_KEY, secret.as_str()]);
}

/// `/metrics` after the first sweep: the fixture's keys by expiry state (two never expire,
/// three have one ahead, `svc-bot` has expired), one of them within 7 days; no key name in a
/// label.
fn assert_expiry_gauges(m: &Metrics) {
    let acme = ("organization", "acme");
    let by = |state: &str| m.sum("keysweep_keys_by_expiry", &[acme, ("expiry", state)]);
    assert_eq!(by("none"), 2.0);
    assert_eq!(by("set"), 3.0);
    assert_eq!(by("expired"), 1.0);
    assert_eq!(by("unknown"), 0.0);
    assert_eq!(
        m.sum(
            "keysweep_keys_by_expiry",
            &[
                acme,
                ("expiry", "expired"),
                ("owner_type", "service_account")
            ]
        ),
        1.0
    );
    assert_eq!(m.sum("keysweep_keys_expiring_within_7d", &[acme]), 1.0);
    assert_eq!(
        m.sum(
            "keysweep_keys_expiring_within_7d",
            &[acme, ("project", "proj_pay"), ("owner_type", "user")]
        ),
        1.0
    );
    for v in m.label_values() {
        for name in [CI_DEPLOY.2, OLD_BATCH.2, SVC_BOT.2, HOSTILE.2, "forged"] {
            assert!(!v.contains(name), "a key name in label value {v:?}");
        }
    }
}

/// The warning webhook lists `ci-deploy` and `old-batch`, each with its expiry as data, and
/// not the already expired `svc-bot`.
fn assert_notices_show_expiry(body: &Value, now: i64) {
    let notices = body["notices"].as_array().unwrap();
    let notice = |key: &str| {
        notices
            .iter()
            .find(|n| n["key_id"] == key)
            .unwrap_or_else(|| panic!("no notice for {key}: {body}"))
    };
    let ci = notice(CI_DEPLOY.1);
    assert!(ci["expires_at"].is_null() && ci["expires_at_unix"].is_null());
    assert_eq!(ci["expiry_state"], "none");
    let batch = notice(OLD_BATCH.1);
    assert_eq!(batch["expires_at"], rfc3339(now + 3 * DAY));
    assert_eq!(batch["expires_at_unix"], now + 3 * DAY);
    assert_eq!(batch["expiry_state"], "set");
    // `svc-bot` expired a day ago: OpenAI has already ended it, so it opens no finding and
    // gets no warning (its expired state is in the metrics above).
    assert!(
        notices.iter().all(|n| n["key_id"] != SVC_BOT.1),
        "an expired key was warned about: {body}"
    );
    assert_eq!(notices.len(), 2, "{body}");
}

/// A finding keeps its key's expiry through the state file, the three cases apart; a row
/// written before keysweep read expiries (no field) reads back as unknown, never as "never".
#[test]
fn a_findings_expiry_survives_the_state_file_and_old_rows_read_as_unknown() {
    use keysweep::inventory::Expiry;
    use keysweep::policy::finding::Finding;
    use keysweep::state::{Store, findings};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    // Built from a stored row's JSON, so fields that other parts add with a default need no
    // change here.
    let finding = |key: &str, expires_at: Expiry| {
        let mut f: Finding = serde_json::from_value(serde_json::json!({
            "id": {
                "organization": "acme",
                "project_id": "proj_pay",
                "key_id": key,
                "policy": "max-age",
            },
            "project_name": null,
            "key_name": key,
            "redacted_value": "sk-...abcd",
            "owner_type": "user",
            "owner": "alice@example.com",
            "owner_email": null,
            "created_at": 0,
            "last_used_at": null,
            "action": "notify",
            "reason": "older than 90d",
            "stage": "warned",
            "detected_at": 0,
            "deadline": 0,
            "warned_at": 0,
            "final_notice_at": null,
            "last_notified_at": null,
            "closed_at": null,
            "resolution": null,
        }))
        .unwrap();
        assert_eq!(f.expires_at, Expiry::Unknown, "a row without the field");
        f.expires_at = expires_at;
        f
    };
    let all = [
        finding("key_never", Expiry::Never),
        finding("key_at", Expiry::At(1_800_000_000)),
        finding("key_unknown", Expiry::Unknown),
    ];
    store
        .tx(|tx| findings::upsert_findings(tx, &all, 0))
        .unwrap();
    for f in &all {
        let got = store
            .with_conn(|c| findings::get_finding(c, &f.id))
            .unwrap();
        assert_eq!(got.as_ref(), Some(f));
    }
}
