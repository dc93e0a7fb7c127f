//! What the real binary says, read as a person or a log pipeline reads it (issue 13, items 7, 8
//! and 11): the admin-key alert is about keysweep's own key, a configuration that does nothing
//! says so, a refused key names its source once, `run --once` counts open findings from the
//! state, `demo` refuses what it would ignore, durations read as days and hours, the audit
//! listing's columns line up, and the daemon logs JSON on stderr with one `run_id` format.
//! Against the simulator in this process; never asserts on timing.

use std::path::{Path, PathBuf};

use keysweep::sim::{SimOrg, SimServer};
use serde_json::Value;

use crate::support::net::free_port;
use crate::support::process::{Proc, keysweep, run_to_end};
use crate::support::sim::start_sim;
use crate::support::state_file::audit_records;
use crate::support::wait::eventually;

const ADMIN_KEY: &str = "sk-admin-CLITRUTH-8c2d4e6f0a-Zq7W";
const NOW: i64 = 1_796_000_000; // 2026-11-30
const DAY: i64 = 86_400;

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339()
}

/// A generated organisation: one project of 6 keys, and its three admin keys — "Main Admin
/// Key" (never expires), "keysweep" (expires in 70 days) and an unnamed one that expired ten
/// days ago.
fn org() -> SimOrg {
    SimOrg::generate(1, 6, 11, NOW)
}

fn admin_key<'o>(org: &'o SimOrg, name: Option<&str>) -> &'o keysweep::sim::SimAdminKey {
    org.admin_api_keys
        .iter()
        .find(|k| k.name.as_deref() == name)
        .unwrap()
}

/// `dir/keysweep.toml` for `sim`, `extra` at the top level and `org_extra` in the organisation.
fn config(dir: &Path, sim: &SimServer, extra: &str, org_extra: &str) -> PathBuf {
    let path = dir.join("keysweep.toml");
    let state = dir.join("keysweep.db").display().to_string();
    let text = format!(
        "state_path = {state:?}\n{extra}\n[[organizations]]\nname = \"acme\"\nbase_url = \"{}\"\n{org_extra}\n",
        sim.base_url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn ks(args: &[&str], key: &str) -> (i32, String, String) {
    let (status, out, err) = run_to_end(args, &[("OPENAI_ADMIN_KEY", key)]).await;
    (status.code().unwrap_or(-1), out, err)
}

/// The messages of the `alert` audit records in `dir`'s state.
fn alerts(dir: &Path) -> Vec<String> {
    audit_records(&dir.join("keysweep.db"))
        .iter()
        .filter(|r| r["kind"] == "alert")
        .map(|r| r["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn run_once_at(config: &Path, now: i64) -> (i32, String, String) {
    ks(
        &[
            "run",
            "--once",
            "--now",
            &rfc3339(now),
            "--config",
            config.to_str().unwrap(),
        ],
        ADMIN_KEY,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_alert_is_about_keysweeps_own_key_and_says_expired_when_it_is() {
    let org = org();
    let own = admin_key(&org, Some("keysweep")).id.clone();
    let other = admin_key(&org, None).id.clone();
    let sim = start_sim(org, ADMIN_KEY).await;

    // Without admin_key_id, no admin key ends like keysweep's: it cannot tell, says so, and
    // raises no alert about someone else's (expired) key.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, "", "");
    let (code, out, err) = run_once_at(&cfg, NOW).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        err.contains("cannot tell which admin key is keysweep's own"),
        "{err}"
    );
    assert!(err.contains("admin_key_id"), "{err}");
    let said = alerts(dir.path());
    assert!(
        said.iter()
            .all(|a| !a.contains(&other) && !a.contains("expires at")),
        "{said:?}"
    );

    // With admin_key_id: 60 days on, keysweep's own key expires within 14 days.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, "", &format!("admin_key_id = {own:?}"));
    let (code, out, err) = run_once_at(&cfg, NOW + 60 * DAY).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let said = alerts(dir.path());
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&own) && said[0].contains("expires at"),
        "{said:?}"
    );
    assert!(said.iter().all(|a| !a.contains(&other)), "{said:?}");
    // 80 days on it has expired, and the alert says so.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, "", &format!("admin_key_id = {own:?}"));
    run_once_at(&cfg, NOW + 80 * DAY).await;
    let said = alerts(dir.path());
    assert!(
        said.iter()
            .any(|a| a.contains(&own) && a.contains("expired at")),
        "{said:?}"
    );
    assert!(said.iter().all(|a| !a.contains("expires at")), "{said:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_key_id_the_one_key_ending_like_keysweeps_is_its_own() {
    let mut org = org();
    let suffix = &ADMIN_KEY[ADMIN_KEY.len() - 4..];
    let own = org
        .admin_api_keys
        .iter_mut()
        .find(|k| k.name.as_deref() == Some("keysweep"))
        .unwrap();
    own.redacted_value = format!("sk-admin-****{suffix}");
    let own = own.id.clone();
    let sim = start_sim(org, ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, "", "");
    let (code, out, err) = run_once_at(&cfg, NOW + 60 * DAY).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("cannot tell"), "{err}");
    let said = alerts(dir.path());
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains(&own) && said[0].contains("keysweep's admin key"),
        "{said:?}"
    );
    assert!(!out.contains(ADMIN_KEY) && !err.contains(ADMIN_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_minimal_configuration_is_said_to_do_nothing() {
    let sim = start_sim(org(), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let minimal = config(dir.path(), &sim, "", "admin_key_env = \"OPENAI_ADMIN_KEY\"");
    let path = minimal.to_str().unwrap();
    for args in [
        vec!["check-config", "--config", path],
        vec!["scan", "--format", "json", "--config", path],
    ] {
        let (code, _, err) = ks(&args, ADMIN_KEY).await;
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            err.contains("no [[policies]] configured"),
            "{args:?}: {err}"
        );
        assert!(err.contains("nothing is ever reported"), "{args:?}: {err}");
        assert!(err.contains("ops_channels is empty"), "{args:?}: {err}");
        assert!(err.contains("reach no one"), "{args:?}: {err}");
    }
    // A configuration with both says neither.
    let dir = tempfile::tempdir().unwrap();
    let full = config(
        dir.path(),
        &sim,
        "ops_channels = [\"hook\"]\n[[channels]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret_env = \"HOOK_SECRET\"\n[[policies]]\nname = \"old\"\nmax_age = \"90d\"\n",
        "",
    );
    let (status, _, err) = run_to_end(
        &["check-config", "--config", full.to_str().unwrap()],
        &[
            ("OPENAI_ADMIN_KEY", ADMIN_KEY),
            ("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ],
    )
    .await;
    assert!(status.success(), "{err}");
    assert!(
        !err.contains("no [[policies]]") && !err.contains("ops_channels is empty"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_names_the_organisation_once_and_the_keys_source() {
    let sim = start_sim(org(), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, "", "admin_key_env = \"ACME_ADMIN_KEY\"");
    let (status, _, err) = run_to_end(
        &[
            "scan",
            "--format",
            "json",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[("ACME_ADMIN_KEY", "sk-admin-WRONG-0000")],
    )
    .await;
    assert_eq!(status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:") && l.contains("401"))
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(line.matches("acme").count(), 1, "{line}");
    assert!(
        line.contains("environment variable ACME_ADMIN_KEY"),
        "{line}"
    );
    assert!(line.contains("organizations[0]"), "{line}");
    assert!(!err.contains("sk-admin-WRONG-0000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_counts_the_open_findings_in_the_state() {
    let sim = start_sim(org(), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = "[[policies]]\nname = \"any\"\nmax_age = \"1d\"\naction = \"notify\"\n";
    let cfg = config(dir.path(), &sim, policy, "");
    let (code, first, err) = run_once_at(&cfg, NOW).await;
    assert_eq!(code, 0, "{err}");
    let count = |out: &str| -> u64 {
        let tail = out
            .split("open findings: ")
            .nth(1)
            .unwrap_or_else(|| panic!("{out}"));
        tail.split(',').next().unwrap().parse().unwrap()
    };
    let open = count(&first);
    assert!(open > 0, "{first}");
    // The organisation cannot be listed: this sweep touches no finding, and they stay open.
    let (status, second, _) = run_to_end(
        &[
            "run",
            "--once",
            "--now",
            &rfc3339(NOW + 60),
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[("OPENAI_ADMIN_KEY", "sk-admin-WRONG-0000")],
    )
    .await;
    assert_eq!(status.code(), Some(1), "{second}");
    assert_eq!(count(&second), open, "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_refuses_a_config_it_would_ignore_and_a_folder_with_a_previous_run() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = ks(&["demo", "--config", "/nonexistent/ks.toml"], ADMIN_KEY).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("demo does not take --config"), "{err}");
    std::fs::write(dir.path().join("keysweep-demo.db"), b"").unwrap();
    let (code, out, err) = ks(&["demo", "--dir", dir.path().to_str().unwrap()], ADMIN_KEY).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("already holds a previous demo run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_shows_durations_in_days_and_hours() {
    let sim = start_sim(org(), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = "[[policies]]\nname = \"odd\"\nmax_age = \"91d 7h 40m 48s\"\n";
    let cfg = config(dir.path(), &sim, policy, "");
    let (code, out, err) = ks(
        &["check-config", "--config", cfg.to_str().unwrap()],
        ADMIN_KEY,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_age = \"91d 7h 40m 48s\""), "{out}");
    assert!(!out.contains("7890048s"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_listing_lines_up_its_columns() {
    let sim = start_sim(org(), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let policy =
        "[[policies]]\nname = \"rotate-after-one-day\"\nmax_age = \"1d\"\naction = \"revoke\"\n";
    let cfg = config(dir.path(), &sim, policy, "");
    let (code, _, err) = run_once_at(&cfg, NOW).await;
    assert_eq!(code, 0, "{err}");
    let state = dir.path().join("keysweep.db");
    let (status, table, err) =
        run_to_end::<&str, &str>(&["audit", "--state", state.to_str().unwrap()], &[]).await;
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.len() > 3, "{table}");
    let header = lines[0];
    for title in [
        "KIND", "MODE", "ORG", "PROJECT", "KEY", "NAME", "REDACTED", "POLICY", "MESSAGE",
    ] {
        let at = header.find(&format!("  {title}")).unwrap() + 2;
        for line in &lines[1..] {
            let before: String = line.chars().skip(at - 2).take(2).collect();
            let cell = line.chars().nth(at).unwrap_or(' ');
            assert!(
                before == "  " && cell != ' ',
                "{title} at {at}:\n{header}\n{line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_logs_json_on_stderr_with_one_run_id_format_and_says_unidentified_once() {
    let sim = start_sim(org(), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "schedule = \"* * * * * *\"\nrun_on_start = true\n[server]\nlisten = \"127.0.0.1:{port}\"\n[log]\nformat = \"json\"\n"
    );
    let cfg = config(dir.path(), &sim, &extra, "");
    let mut daemon = Proc::spawn(keysweep(
        &["run", "--config", cfg.to_str().unwrap()],
        &[("OPENAI_ADMIN_KEY", ADMIN_KEY)],
    ));
    let finished = |log: &[Value]| {
        log.iter()
            .filter(|r| r["message"] == "sweep finished")
            .count()
    };
    eventually("three sweeps", || finished(&daemon.log()) >= 3).await;
    // keysweep cannot tell which admin key is its own: no admin key's expiry is published as
    // its own (the Prometheus rules alert on it), the expired one of someone else least of all.
    let metrics = crate::support::net::http()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("keysweep_sweeps"), "{metrics}");
    assert!(
        !metrics.contains("keysweep_admin_key_expiry_timestamp_seconds{"),
        "{metrics}"
    );
    daemon.signal("-TERM");
    let (status, _) = daemon.wait().await;
    assert!(status.success());
    // Reports on stdout, logs on stderr: a daemon reports nothing.
    assert!(daemon.stdout().is_empty(), "{:?}", daemon.stdout());
    let log = daemon.log();
    let run_ids: Vec<&str> = log.iter().filter_map(|r| r["run_id"].as_str()).collect();
    assert!(!run_ids.is_empty());
    for id in &run_ids {
        let (stamp, rand) = id.split_once('-').unwrap_or_else(|| panic!("{id}"));
        assert!(
            chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").is_ok(),
            "{id}"
        );
        assert!(
            rand.len() == 8 && rand.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
    }
    let unidentified = log
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot tell which admin key"))
        })
        .count();
    assert_eq!(unidentified, 1, "said once, not at every sweep");
}
