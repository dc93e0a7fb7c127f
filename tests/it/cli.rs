//! The command line as a user runs it: the real `keysweep` binary, talking over HTTP to a real
//! `keysweep simulate` process. Covers issue 2's "done when", the README's commands, `scan`'s
//! exit status and JSON shape, and the admin key never reaching any output.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::net::free_port;
use crate::support::process::{self, Simulator, keysweep_blocking as bin};
use crate::support::secrets::assert_no_secret;

const ADMIN_KEY: &str = "sk-admin-CLITEST-1f2e3d4c5b6a79880000";

/// `keysweep simulate` as a child process, accepting [`ADMIN_KEY`]; killed on drop.
fn simulator(args: &[&str]) -> Simulator {
    Simulator::start(args, ADMIN_KEY)
}

fn write_config(dir: &Path, port: u16, extra: &str) -> std::path::PathBuf {
    let base_url = format!("http://127.0.0.1:{port}/v1");
    crate::support::config::write_config_file(dir, &base_url, "OPENAI_ADMIN_KEY", extra)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.env("OPENAI_ADMIN_KEY", ADMIN_KEY).output().unwrap();
    assert_no_secret("the output", &process::combined(&out), &[ADMIN_KEY]);
    out
}

#[test]
fn simulate_then_scan_reports_exactly_1750_keys_in_21_key_pages() {
    let sim = simulator(&[
        "--projects",
        "7",
        "--keys-per-project",
        "250",
        "--seed",
        "1",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.port, "");
    let out = run(bin()
        .args(["scan", "--format", "json", "--config"])
        .arg(&config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["keys"].as_array().unwrap().len(), 1750);
    let projects = report["projects"].as_array().unwrap();
    assert_eq!(
        projects.len(),
        7,
        "the archived project is not listed by default"
    );
    assert!(
        projects
            .iter()
            .all(|p| p["complete"] == true && p["error"].is_null())
    );
    for field in [
        "organization",
        "project_id",
        "id",
        "name",
        "redacted_value",
        "owner_type",
        "owner",
        "created_at",
        "last_used_at",
    ] {
        assert!(
            report["keys"][0].get(field).is_some(),
            "keys[].{field} missing"
        );
    }
    let stats = sim.stats();
    assert_eq!(
        stats["requests"]["GET /v1/organization/projects/{project_id}/api_keys"], 21,
        "one call per page of keys, no page twice: {stats}"
    );
    // scan is read-only: no state file is created.
    assert!(!dir.path().join("keysweep.db").exists());
}

#[test]
fn scan_formats_and_findings() {
    let sim = simulator(&["--projects", "2", "--keys-per-project", "30", "--seed", "7"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.port, "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[policies]]\nname = \"rotate-90d\"\nmax_age = \"90d\"\naction = \"revoke\"\nwarn_before = \"14d\"\n");
    std::fs::write(&config, text).unwrap();

    let out = run(bin()
        .args(["scan", "--format", "json", "--config"])
        .arg(&config));
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let now = chrono::Utc::now().timestamp();
    let old_keys: Vec<&str> = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| now - k["created_at"].as_i64().unwrap() > 90 * 86400)
        // A key OpenAI has already ended (past its `expires_at`) violates nothing any more.
        .filter(|k| k["expires_at"].as_i64().is_none_or(|at| at > now))
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    let findings = report["findings"].as_array().unwrap();
    assert!(!old_keys.is_empty());
    assert_eq!(
        findings.len(),
        old_keys.len(),
        "one finding per unexpired key older than 90 days"
    );
    for f in findings {
        assert!(old_keys.contains(&f["key_id"].as_str().unwrap()));
        assert_eq!(f["policy"], "rotate-90d");
        assert_eq!(f["action"], "revoke");
        assert!(f["deadline"].as_i64().unwrap() >= now + 14 * 86400 - 5);
        for field in ["project_id", "state"] {
            assert!(f.get(field).is_some());
        }
    }

    let csv = run(bin()
        .args(["scan", "--format", "csv", "--config"])
        .arg(&config));
    assert!(csv.status.success());
    assert_eq!(
        String::from_utf8_lossy(&csv.stdout).lines().count(),
        1 + 60,
        "header + one row per key"
    );

    let table = run(bin()
        .args(["scan", "--format", "table", "--config"])
        .arg(&config));
    let shown = String::from_utf8_lossy(&table.stdout);
    assert!(old_keys.iter().all(|k| shown.contains(k)));

    // Rehearsal: 800 days from now every key is older than 90 days, and every one that has
    // an expiry has ended by then; the others each have a finding.
    let later_at = chrono::Utc::now() + chrono::Duration::days(800);
    let later = later_at.to_rfc3339();
    let alive_then = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| {
            k["expires_at"]
                .as_i64()
                .is_none_or(|at| at > later_at.timestamp())
        })
        .count();
    assert!(alive_then > 0 && alive_then < 60, "{alive_then}");
    let out = run(bin()
        .args(["scan", "--format", "json", "--now", &later, "--config"])
        .arg(&config));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["findings"].as_array().unwrap().len(), alive_then);
}

#[test]
fn wrong_admin_key_makes_scan_fail_clearly() {
    let sim = simulator(&["--projects", "1", "--keys-per-project", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), sim.port, "");
    let out = bin()
        .args(["scan", "--format", "json", "--config"])
        .arg(&config)
        .env("OPENAI_ADMIN_KEY", "sk-admin-WRONG-KEY-000000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an org that cannot be listed is not a clean scan"
    );
    assert!(
        stderr.contains("acme") && stderr.contains("401"),
        "{stderr}"
    );
    assert!(!stderr.contains("sk-admin-WRONG-KEY-000000"));
}

#[test]
fn run_once_enforces_and_audit_verifies() {
    let sim = simulator(&["--projects", "2", "--keys-per-project", "20", "--seed", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        sim.port,
        "mode = \"enforce\"\n[safety]\nmax_revocations_per_run = 1000\nmax_revocations_per_project_percent = 100\nmax_revocations_per_day = 1000\n[[policies]]\nname = \"rotate-90d\"\nmax_age = \"90d\"\naction = \"revoke\"\nwarn_before = \"14d\"\n",
    );
    let first = run(bin().args(["run", "--once", "--config"]).arg(&config));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("revoked: 0"),
        "nothing is revoked in the warning sweep: {stdout}"
    );

    let later = (chrono::Utc::now() + chrono::Duration::days(15)).to_rfc3339();
    let dry = run(bin()
        .args(["run", "--once", "--dry-run", "--now", &later, "--config"])
        .arg(&config));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("revoked: 0"),
        "--dry-run always wins"
    );

    let second = run(bin()
        .args(["run", "--once", "--now", &later, "--config"])
        .arg(&config));
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(stdout.contains("REVOKED"), "{stdout}");
    assert!(sim.stats()["requests"]["DELETE /v1/organization/projects/{project_id}/api_keys/{api_key_id}"].as_u64().unwrap() > 0);

    assert_audit_shows_the_deletions(&dir.path().join("keysweep.db"), &config);
}

/// `--now` rehearses a sweep at another time: against a real API it may not write (a future
/// clock would make warned keys due early, a past one would record revocations outside today's
/// cap). An enforcing `run --once --now` whose organisation is not on this machine is refused
/// before anything is opened or contacted.
#[test]
fn run_once_now_in_enforce_mode_is_refused_against_a_real_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::config::write_config_file(
        dir.path(),
        "https://api.openai.com/v1",
        "OPENAI_ADMIN_KEY",
        "mode = \"enforce\"\n",
    );
    let later = (chrono::Utc::now() + chrono::Duration::days(15)).to_rfc3339();
    let out = run(bin()
        .args(["run", "--once", "--now", &later, "--config"])
        .arg(&config));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "--now",
        "organizations[0]",
        "api.openai.com",
        "add --dry-run",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    assert!(!dir.path().join("keysweep.db").exists(), "nothing opened");
}

/// A first sweep with hundreds of notices, which the commit composes on a thread of its own
/// beside the findings' writes: every key with a finding is named exactly once in the queued
/// digests (their server is down, so they wait in the outbox), each finding has its decision
/// record, and `audit verify` passes.
#[test]
fn a_first_sweep_of_many_notices_queues_each_key_once_beside_its_finding() {
    let sim = simulator(&[
        "--projects",
        "1",
        "--keys-per-project",
        "700",
        "--seed",
        "9",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "[[policies]]\nname = \"any-age\"\nmax_age = \"1d\"\naction = \"notify\"\n\
         notify = [\"team\"]\n\n[[channels]]\nname = \"team\"\ntype = \"email\"\n\
         smtp_host = \"127.0.0.1\"\nsmtp_port = {}\nsmtp_tls = \"none\"\n\
         from = \"keysweep@example.com\"\nto = [\"team@example.com\"]\n",
        free_port()
    );
    let config = write_config(dir.path(), sim.port, &policy);
    let out = run(bin().args(["run", "--once", "--config"]).arg(&config));
    assert!(out.status.success(), "{}", process::combined(&out));

    let db = dir.path().join("keysweep.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let findings = keysweep::state::findings::all_findings(&conn).unwrap();
    // Well over the commit's threshold for composing apart (256).
    assert!(findings.len() > 600, "{} findings", findings.len());
    let texts: Vec<String> = (keysweep::notify::outbox::all(&conn).unwrap().iter())
        .map(|m| m.payload["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        texts.len() > 1,
        "a digest of {} keys in parts",
        findings.len()
    );
    for f in &findings {
        let named: usize = texts.iter().map(|t| t.matches(&*f.id.key_id).count()).sum();
        assert_eq!(named, 1, "{} named {named} times", f.id.key_id);
    }
    let decisions: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE kind = 'decision'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(decisions as usize, findings.len());
    let verify = run(bin().args(["audit", "verify", "--state"]).arg(&db));
    assert!(verify.status.success(), "{}", process::combined(&verify));
}

/// At `RUST_LOG=keysweep::sweep=debug` a sweep says when each phase after the listing ended, in
/// the pipeline's order, with the seconds since it started: where a slow sweep spends its time.
#[test]
fn a_sweep_logs_each_phase_at_debug_in_order() {
    let sim = simulator(&["--projects", "2", "--keys-per-project", "30", "--seed", "4"]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        sim.port,
        "[log]\nformat = \"json\"\n[[policies]]\nname = \"old\"\nmax_age = \"1d\"\naction = \"notify\"\n",
    );
    let out = run(bin()
        .args(["run", "--once", "--config"])
        .arg(&config)
        .env("RUST_LOG", "keysweep::sweep=debug"));
    assert!(out.status.success(), "{}", process::combined(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["message"] == "sweep phase done")
        .collect();
    let phases: Vec<&str> = lines.iter().filter_map(|v| v["phase"].as_str()).collect();
    let expected = [
        "advance",
        "plan",
        "note intel",
        "commit",
        "deliver",
        "enforce",
        "rotate",
        "report",
    ];
    assert_eq!(phases, expected, "{lines:?}");
    let secs: Vec<f64> = lines.iter().filter_map(|v| v["secs"].as_f64()).collect();
    assert_eq!(secs.len(), expected.len());
    assert!(secs.windows(2).all(|w| w[0] <= w[1]), "{secs:?}");
}

/// `audit --config` reads where the trail is and nothing else: neither the admin key nor a
/// channel's secret need be in its environment (an auditor holds none), and a bad key is still
/// refused with the file and the key named.
#[test]
fn audit_with_a_config_needs_no_secret() {
    const HOOK_ENV: &str = "KS_CLI_AUDIT_HOOK_SECRET";
    let sim = simulator(&["--projects", "1", "--keys-per-project", "5", "--seed", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[policies]]\nname = \"old\"\nmax_age = \"1d\"\naction = \"notify\"\n\
         notify = [\"hook\"]\n\n[[channels]]\nname = \"hook\"\ntype = \"webhook\"\n\
         url = \"http://127.0.0.1:{}/hook\"\nsecret_env = \"{HOOK_ENV}\"\n",
        free_port()
    );
    let config = write_config(dir.path(), sim.port, &extra);
    let secret = crate::support::secrets::whsec(b"cli-audit-webhook-key-000000001");
    let first = run(bin()
        .args(["run", "--once", "--config"])
        .arg(&config)
        .env(HOOK_ENV, &secret));
    assert!(first.status.success(), "{}", process::combined(&first));

    let audit = bin()
        .args(["audit", "--format", "json", "--config"])
        .arg(&config)
        .env_remove("OPENAI_ADMIN_KEY")
        .env_remove(HOOK_ENV)
        .output()
        .unwrap();
    assert!(audit.status.success(), "{}", process::combined(&audit));
    let records: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let kinds: Vec<&str> = (records.as_array().unwrap().iter())
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"decision"), "{kinds:?}");
    assert_no_secret("audit", &process::combined(&audit), &[&secret, ADMIN_KEY]);

    std::fs::write(&config, format!("mode = \"yolo\"\n{extra}")).unwrap();
    let bad = bin()
        .args(["audit", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let said = process::combined(&bad);
    assert!(
        said.contains("keysweep.toml") && said.contains("mode: unknown variant"),
        "{said}"
    );
}

/// `audit verify` passes on the state `db`, every intent has its outcome, and `audit` lists
/// them by state path and by configuration, filtered by `--since`.
fn assert_audit_shows_the_deletions(db: &Path, config: &Path) {
    let verify = run(bin().args(["audit", "verify", "--state"]).arg(db));
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("audit chain OK"));
    let list = run(bin().args(["audit", "--format", "json", "--state"]).arg(db));
    let records: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let kinds: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"intent") && kinds.contains(&"outcome"));
    assert_eq!(
        kinds.iter().filter(|k| **k == "intent").count(),
        kinds.iter().filter(|k| **k == "outcome").count(),
        "every intent has its outcome"
    );
    // The README's form: the state path from the configuration, records since a date.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let table = run(bin()
        .args(["audit", "--since", &today, "--config"])
        .arg(config));
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let shown = String::from_utf8_lossy(&table.stdout);
    assert!(
        shown.contains("intent") && shown.contains("outcome"),
        "{shown}"
    );
    let future = (chrono::Utc::now() + chrono::Duration::days(400))
        .format("%Y-%m-%d")
        .to_string();
    let none = run(bin()
        .args(["audit", "--format", "json", "--since", &future, "--config"])
        .arg(config));
    let records: serde_json::Value = serde_json::from_slice(&none.stdout).unwrap();
    assert!(records.as_array().unwrap().is_empty(), "--since filters");
}

#[test]
fn demo_runs_and_tells_the_whole_story() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["demo", "--enforce", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "break-glass-prod",
        "exempted",
        "[warning",
        "[final_notice",
        "[revoked",
        "Deleted",
        "audit chain OK",
    ] {
        assert!(
            stdout.contains(needle),
            "the demo does not show {needle:?}:\n{stdout}"
        );
    }
    assert!(
        std::fs::read_dir(dir.path().join("outbox"))
            .unwrap()
            .count()
            > 0,
        "rendered messages are written"
    );

    let plain = bin().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&plain.stdout);
    assert!(plain.status.success());
    assert!(stdout.contains("Nothing was deleted (dry-run)"));
}

/// A one-request-at-a-time HTTP proxy that answers every request itself (an empty project
/// list) and records the request lines it saw.
fn recording_proxy() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            log.lock()
                .unwrap()
                .push(head.lines().next().unwrap_or_default().to_string());
            let body = if head.contains("admin_api_keys") || head.contains("/projects") {
                r#"{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}"#
            } else {
                r#"{"error":{"type":"invalid_request_error","message":"no","param":null,"code":null}}"#
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// `HTTPS_PROXY` is honoured for a remote `base_url` (the request asks the proxy for a tunnel,
/// so the admin key only travels inside TLS) unless `NO_PROXY` exempts the host; a loopback
/// `base_url` is never proxied (issue 14: the admin key would cross the proxy in clear).
#[test]
fn proxy_environment_is_honoured() {
    let (proxy, seen) = recording_proxy();
    let proxy_url = format!("http://127.0.0.1:{proxy}");
    let dir = tempfile::tempdir().unwrap();
    let remote = "https://api.keysweep-proxy-test.invalid/v1";
    let no_retries = "[limits]\nmax_retries = 0\n";
    let config = crate::support::config::write_config_file(
        dir.path(),
        remote,
        "OPENAI_ADMIN_KEY",
        no_retries,
    );
    let scan = |no_proxy: Option<&str>, config: &Path| {
        let mut cmd = bin();
        cmd.args(["scan", "--format", "json", "--config"])
            .arg(config)
            .env("HTTP_PROXY", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        if let Some(n) = no_proxy {
            cmd.env("NO_PROXY", n);
        }
        run(&mut cmd)
    };
    // The proxy is asked for a tunnel (it answers no TLS, so the scan itself fails).
    scan(None, &config);
    let lines = seen.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("CONNECT api.keysweep-proxy-test.invalid:443")),
        "the request did not go through the proxy: {lines:?}"
    );
    // NO_PROXY exempts the host: the request goes direct (and cannot resolve).
    let before = seen.lock().unwrap().len();
    let direct = scan(Some("api.keysweep-proxy-test.invalid"), &config);
    assert!(
        !direct.status.success(),
        "an unresolvable host cannot succeed"
    );
    assert_eq!(seen.lock().unwrap().len(), before, "NO_PROXY was ignored");
    // A loopback base_url goes direct whatever the proxy variables say: to a port where
    // nothing listens, so only the proxy could have answered.
    let loopback = write_config(dir.path(), free_port(), no_retries);
    let direct = scan(None, &loopback);
    assert!(
        !direct.status.success(),
        "a direct request to a dead port cannot succeed"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "a loopback base_url went through the proxy"
    );
}
