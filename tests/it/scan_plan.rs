//! `keysweep scan` read as a plan (issue 13, item 10), through the real binary against the
//! demo organisation served by the simulator: the plan names the configuration key that
//! withholds each action, a first read-only scan says `new` (not `warned`), CSV has one row per
//! key and finding with the plan's columns, JSON keeps its Unix-seconds fields and gives the
//! plan's times in RFC 3339, and an incomplete scan does not claim to have revoked nothing.
//! Never asserts on timing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use keysweep::sim::{Fault, FaultKind, SimOrg, SimServer};

use crate::support::process::run_to_end;
use crate::support::sim::start_sim;

const ADMIN_KEY: &str = "sk-admin-SCANPLAN-5b1e0c9d7a-0000";
const NOW: i64 = 1_796_000_000; // 2026-11-30

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339()
}

/// The demo's configuration pointed at `sim`, its state in `dir`.
fn demo_config(dir: &Path, sim: &SimServer) -> PathBuf {
    let state = dir.join("keysweep.db").display().to_string();
    let text = keysweep::demo::DEMO_CONFIG
        .replace("http://127.0.0.1:8089/v1", &sim.base_url())
        .replace("\"keysweep-demo.db\"", &format!("{state:?}"));
    let path = dir.join("keysweep.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn scan(config: &Path, format: &str, extra_env: &[(&str, &str)]) -> (i32, String, String) {
    let mut env = vec![("OPENAI_ADMIN_KEY", ADMIN_KEY)];
    env.extend_from_slice(extra_env);
    let args = [
        "scan",
        "--format",
        format,
        "--now",
        &rfc3339(NOW),
        "--config",
        config.to_str().unwrap(),
    ];
    let (status, out, err) = run_to_end(&args, &env).await;
    (status.code().unwrap_or(-1), out, err)
}

/// The plan section's rows of a table, split into cells on runs of two spaces or more.
fn plan_rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines().skip_while(|l| !l.starts_with("Plan ("));
    lines.next().expect("a plan section");
    lines
        .take_while(|l| !l.is_empty() && !l.contains(": nothing planned."))
        .skip(1)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// An exemption that has ended is shown as such, with its end in `why`; its DEADLINE is empty:
/// nothing falls due at the end of an exemption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_exemption_has_no_deadline_and_says_when_it_ended() {
    let org = SimOrg::demo(NOW);
    let key = org
        .projects
        .iter()
        .flat_map(|p| &p.keys)
        .next()
        .unwrap()
        .id
        .clone();
    let sim = start_sim(org, ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path(), &sim);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[exemptions]]\nkey_id = \"{key}\"\nreason = \"migration\"\nuntil = \"2026-11-01\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let (code, json, err) = scan(&config, "json", &[]).await;
    assert!(code == 0 || code == 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = (v["findings"].as_array().unwrap().iter())
        .find(|f| f["key_id"] == key.as_str() && f["state"] == "exemption_expired")
        .unwrap_or_else(|| panic!("no expired exemption row:\n{json}"));
    assert!(row["deadline"].is_null(), "{row}");
    let why = row["plan"]["why"].as_str().unwrap();
    assert!(why.contains("exemption expired at 2026-11-01"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_scan_is_a_plan_named_by_configuration_keys() {
    let sim = start_sim(SimOrg::demo(NOW), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path(), &sim);
    let (code, table, err) = scan(&config, "table", &[]).await;
    assert_eq!(code, 0, "{err}");
    let rows = plan_rows(&table);
    assert!(rows.len() > 3, "{table}");
    // A read-only scan sent nothing: no finding is `warned` yet.
    let states: Vec<&str> = rows.iter().map(|r| r[5].as_str()).collect();
    assert!(!states.contains(&"warned"), "{table}");
    assert!(states.contains(&"new"), "{table}");
    for code in ["cap_per_run", "service_account_notify_only", "dry_run"] {
        assert!(
            !table.contains(code),
            "internal code {code} shown:\n{table}"
        );
    }
    // The rails by the keys a person would change.
    for key in ["safety.service_account_keys", "exemptions[0]", "mode"] {
        assert!(table.contains(key), "{key} missing:\n{table}");
    }
    // A service-account key is never revoked under the default rule: its plan ends in nothing.
    let sa = rows
        .iter()
        .find(|r| r.contains(&"safety.service_account_keys".to_string()))
        .unwrap();
    assert!(sa.contains(&"nothing".to_string()), "{sa:?}");
    // Counts agree with their nouns.
    assert!(table.contains(" projects of 1 organization; "), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_has_one_row_per_key_and_finding_with_the_plan_and_json_keeps_its_fields() {
    let sim = start_sim(SimOrg::demo(NOW), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path(), &sim);
    let (code, json, err) = scan(&config, "json", &[]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let keys = v["keys"].as_array().unwrap();
    let findings = v["findings"].as_array().unwrap();
    // Unchanged: the API's Unix seconds.
    assert!(keys.iter().all(|k| k["created_at"].is_i64()));
    assert!(v["generated_at"].is_i64());
    assert_eq!(v["generated_at_rfc3339"], "2026-11-30T00:53:20Z");
    let mut per_key: HashMap<String, usize> = HashMap::new();
    // A first, read-only scan sent nothing: no finding says `warned`.
    assert!(findings.iter().all(|f| f["state"] != "warned"), "{json}");
    assert!(findings.iter().any(|f| f["state"] == "new"), "{json}");
    for f in findings {
        *per_key
            .entry(f["key_id"].as_str().unwrap().into())
            .or_default() += 1;
        let plan = &f["plan"];
        assert!(plan["next"].is_string(), "{f}");
        for t in ["next_at", "then_at"] {
            if let Some(s) = plan[t].as_str() {
                chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{t} {s}: {e}"));
            } else {
                assert!(plan[t].is_null(), "{f}");
            }
        }
        if let Some(d) = f["deadline"].as_i64() {
            assert_eq!(
                f["deadline_rfc3339"].as_str().unwrap(),
                rfc3339(d).replace("+00:00", "Z")
            );
        }
    }

    let (code, csv_text, err) = scan(&config, "csv", &[]).await;
    assert_eq!(code, 0, "{err}");
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = r.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    let expected: usize = keys
        .iter()
        .map(|k| per_key.get(k["id"].as_str().unwrap()).copied().unwrap_or(1))
        .sum::<usize>()
        + per_key
            .keys()
            .filter(|id| !keys.iter().any(|k| k["id"] == id.as_str()))
            .map(|id| per_key[id])
            .sum::<usize>();
    assert_eq!(rows.len(), expected, "{csv_text}");
    for row in &rows {
        let has_finding = !row[col("policy")].is_empty();
        assert!(!row[col("next_action")].is_empty());
        if !has_finding && row[col("state")].is_empty() {
            assert_eq!(&row[col("next_action")], "nothing");
        }
        for t in ["created_at", "deadline", "next_at", "then_at"] {
            let cell = &row[col(t)];
            if !cell.is_empty() {
                chrono::DateTime::parse_from_rfc3339(cell)
                    .unwrap_or_else(|e| panic!("{t} {cell}: {e}"));
            }
        }
    }
    assert!(
        rows.iter()
            .any(|r| &r[col("withheld_by")] == "safety.service_account_keys")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_revocation_over_the_cap_names_the_cap_it_waits_for() {
    let sim = start_sim(SimOrg::demo(NOW), ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path(), &sim);
    let enforce = [
        ("OPENAI_ADMIN_KEY", ADMIN_KEY),
        ("KEYSWEEP__MODE", "enforce"),
        ("KEYSWEEP__SAFETY__MAX_REVOCATIONS_PER_RUN", "1"),
        (
            "KEYSWEEP__SAFETY__MAX_REVOCATIONS_PER_PROJECT_PERCENT",
            "100",
        ),
    ];
    // The first sweep warns (and writes the expiries it may, within the cap).
    let (status, out, err) = run_to_end(
        &[
            "run",
            "--once",
            "--now",
            &rfc3339(NOW),
            "--config",
            config.to_str().unwrap(),
        ],
        &enforce,
    )
    .await;
    assert!(status.success(), "{out}\n{err}");
    // Eight days later the orphaned keys are due; one fits the cap of one per run.
    let later = rfc3339(NOW + 8 * 86_400);
    let (status, table, err) = run_to_end(
        &[
            "scan",
            "--format",
            "table",
            "--now",
            &later,
            "--config",
            config.to_str().unwrap(),
        ],
        &enforce,
    )
    .await;
    assert!(status.success(), "{err}");
    let rows = plan_rows(&table);
    let orphaned: Vec<&Vec<String>> = rows.iter().filter(|r| r[4] == "orphaned").collect();
    assert!(orphaned.len() >= 2, "{table}");
    let capped = rows
        .iter()
        .filter(|r| r.contains(&"safety.max_revocations_per_run".to_string()))
        .count();
    assert!(capped >= 1, "{table}");
    assert!(!table.contains("cap_per_run"), "{table}");
    // Read-only: the stored stage is shown, never one the preview only imagined.
    assert!(orphaned.iter().all(|r| r[5] == "warned"), "{table}");
    // The sweep itself names the same configuration key for what it withholds.
    let (status, out, err) = run_to_end(
        &[
            "run",
            "--once",
            "--now",
            &later,
            "--config",
            config.to_str().unwrap(),
        ],
        &enforce,
    )
    .await;
    assert!(status.success(), "{out}\n{err}");
    assert!(
        out.contains("withheld (safety.max_revocations_per_run): "),
        "{out}"
    );
    assert!(!out.contains("cap_per_run"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_scan_says_what_it_means_for_a_scan() {
    let org = SimOrg::demo(NOW);
    let project = org
        .projects
        .iter()
        .find(|p| p.archived_at.is_none())
        .unwrap()
        .id
        .clone();
    let sim = start_sim(org, ADMIN_KEY).await;
    sim.faults()
        .add(Fault::on_list_keys(&project).respond(FaultKind::Status(500)));
    let dir = tempfile::tempdir().unwrap();
    let config = demo_config(dir.path(), &sim);
    let (code, _table, err) =
        scan(&config, "table", &[("KEYSWEEP__LIMITS__MAX_RETRIES", "0")]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&project), "{err}");
    assert!(
        !err.contains("nothing was revoked"),
        "scan never revokes: {err}"
    );
    assert!(err.contains("the plan leaves out"), "{err}");
}
