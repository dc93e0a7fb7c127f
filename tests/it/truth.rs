//! Issue 13: what keysweep says is what a reader downstream gets. Each test runs the real binary
//! and reads its output as a person or a log pipeline would: JSON log lines parsed with a parser
//! that refuses a repeated field name (serde_json and `jq` keep the last one silently), commands
//! run with the environment an auditor has (no admin key), errors read for the name of their
//! cause, the audit head compared with what a sweep published.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::support::process::{self, Simulator, keysweep_blocking as bin};
use crate::support::secrets::assert_no_secret;

const ADMIN_KEY: &str = "sk-admin-TRUTHTEST-5a4b3c2d1e0f99887766";

/// A JSON value read with every object's field names checked for repeats, at every depth.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Strict(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if fields.insert(name.clone(), v).is_some() {
                return Err(de::Error::custom(format!("field {name:?} appears twice")));
            }
        }
        Ok(Strict(Value::Object(fields)))
    }
}

/// One JSON log line, refused if it is not JSON or repeats a field name.
fn strict_record(line: &str) -> Result<Value, String> {
    serde_json::from_str::<Strict>(line)
        .map(|Strict(v)| v)
        .map_err(|e| format!("{e}: {line}"))
}

#[test]
fn the_strict_reader_refuses_a_repeated_field() {
    // The line issue 13 quotes, shortened: the reader must see what jq hides.
    let line = r#"{"level":"WARN","target":"key key_1","target":"keysweep::revoke"}"#;
    assert!(
        strict_record(line)
            .unwrap_err()
            .contains("\"target\" appears twice")
    );
    assert!(strict_record(r#"{"a":{"b":1,"c":[{"b":2}]},"b":3}"#).is_ok());
    assert!(strict_record(r#"{"a":[{"b":1,"b":2}]}"#).is_err());
}

fn simulator(args: &[&str]) -> Simulator {
    Simulator::start(args, ADMIN_KEY)
}

/// A configuration for the simulator on `port`, its state in `dir`, `extra` at the top level.
fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let base_url = format!("http://127.0.0.1:{port}/v1");
    crate::support::config::write_config_file(dir, &base_url, "OPENAI_ADMIN_KEY", extra)
}

const ENFORCE: &str = "mode = \"enforce\"\n[log]\nformat = \"json\"\n[safety]\nmax_revocations_per_run = 1000\nmax_revocations_per_project_percent = 100\nmax_revocations_per_day = 1000\n[[policies]]\nname = \"rotate-90d\"\nmax_age = \"90d\"\naction = \"revoke\"\nwarn_before = \"14d\"\n";

fn with_key(cmd: &mut Command) -> Output {
    let out = cmd.env("OPENAI_ADMIN_KEY", ADMIN_KEY).output().unwrap();
    assert_no_secret("the output", &process::combined(&out), &[ADMIN_KEY]);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every stderr line of `out` as a strict JSON record.
fn log_records(out: &Output) -> Vec<Value> {
    stderr(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| strict_record(l).unwrap_or_else(|e| panic!("a log line a SIEM misreads: {e}")))
        .collect()
}

/// A warning sweep, then one 15 days later that revokes: (config, the revoking run's output).
fn sweep_that_revokes(dir: &Path, sim: &Simulator) -> (PathBuf, Output) {
    let config = write_config(dir, sim.port, ENFORCE);
    let first = with_key(
        bin()
            .args(["run", "--once", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info"),
    );
    assert!(first.status.success(), "{}", process::describe(&first));
    let later = (chrono::Utc::now() + chrono::Duration::days(15)).to_rfc3339();
    let second = with_key(
        bin()
            .args(["run", "--once", "--now", &later, "--config"])
            .arg(&config)
            .env("RUST_LOG", "info"),
    );
    assert!(second.status.success(), "{}", process::describe(&second));
    log_records(&first);
    (config, second)
}

#[test]
fn every_json_log_line_of_a_revoking_sweep_has_unique_field_names_and_names_the_key() {
    let sim = simulator(&["--projects", "2", "--keys-per-project", "20", "--seed", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = sweep_that_revokes(dir.path(), &sim);
    let records = log_records(&out);
    let revoked: Vec<&Value> = records
        .iter()
        .filter(|r| r["message"] == "revoked")
        .collect();
    assert!(!revoked.is_empty(), "the sweep revoked: {}", stderr(&out));
    let summary = stdout(&out);
    for r in revoked {
        // The key a SIEM needs is in the record, and `target` is tracing's own field again.
        let key = r["key_id"].as_str().unwrap_or_else(|| panic!("{r}"));
        assert!(key.starts_with("key_") || key.starts_with("sk-"), "{r}");
        assert!(summary.contains(key), "the summary names {key}: {summary}");
        assert_eq!(r["target"], "keysweep::revoke::critical", "{r}");
        assert_eq!(r["organization"], "acme", "{r}");
    }
}

/// `keysweep ARGS` as an auditor runs it: no admin key anywhere in its environment.
async fn without_admin_key(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = process::keysweep(args, env);
    cmd.env_remove("OPENAI_ADMIN_KEY");
    process::output(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_audit_verify_and_notify_test_run_without_the_admin_key() {
    let sim = simulator(&["--projects", "1", "--keys-per-project", "10", "--seed", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = tokio::task::block_in_place(|| sweep_that_revokes(dir.path(), &sim));
    let hook = crate::support::receivers::Receiver::start().await;
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[channels]]\nname = \"hook\"\ntype = \"webhook\"\nurl = {:?}\nsecret_env = \"HOOK_SECRET\"\n",
        hook.url("/hook")
    ));
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let secret = crate::support::secrets::whsec(b"truth-test-webhook-secret");
    let env = [("HOOK_SECRET", secret.as_str())];

    let list = without_admin_key(&["audit", "--config", config], &env).await;
    assert!(list.status.success(), "{}", process::describe(&list));
    assert!(stdout(&list).contains("outcome"), "{}", stdout(&list));

    let verify = without_admin_key(&["audit", "verify", "--config", config], &env).await;
    assert!(verify.status.success(), "{}", process::describe(&verify));
    assert!(
        stdout(&verify).contains("audit chain OK"),
        "{}",
        stdout(&verify)
    );

    let test = without_admin_key(
        &["notify", "test", "--channel", "hook", "--config", config],
        &env,
    )
    .await;
    assert!(test.status.success(), "{}", process::describe(&test));
    assert_eq!(hook.requests("/hook").len(), 1, "the test message arrived");

    // The channel's secret is still read: without it, `notify test` says which variable.
    let no_secret = without_admin_key(
        &["notify", "test", "--channel", "hook", "--config", config],
        &[],
    )
    .await;
    assert!(!no_secret.status.success());
    let said = stderr(&no_secret);
    assert!(
        said.contains("HOOK_SECRET") && !said.contains("OPENAI_ADMIN_KEY"),
        "{said}"
    );

    // A command that calls the API still needs the key, and says so.
    let scan = without_admin_key(&["scan", "--config", config], &env).await;
    assert!(!scan.status.success());
    assert!(
        stderr(&scan).contains("OPENAI_ADMIN_KEY"),
        "{}",
        stderr(&scan)
    );
}

/// The last `audit chain head` line a run logged: (seq, hash).
fn published_head(out: &Output) -> (i64, String) {
    let line = log_records(out)
        .into_iter()
        .rev()
        .find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("audit chain head"))
        })
        .unwrap_or_else(|| panic!("no audit chain head line: {}", stderr(out)));
    (
        line["audit_seq"].as_i64().unwrap(),
        line["audit_head"].as_str().unwrap().to_string(),
    )
}

fn verify_with(db: &Path, expect: Option<&str>) -> Output {
    let mut cmd = bin();
    cmd.args(["audit", "verify", "--state"]).arg(db);
    if let Some(h) = expect {
        cmd.args(["--expect-head", h]);
    }
    cmd.output().unwrap()
}

#[test]
fn a_sweep_publishes_the_audit_head_and_verify_expect_head_catches_a_cut_and_rewound_tail() {
    let sim = simulator(&["--projects", "1", "--keys-per-project", "10", "--seed", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let (config, revoking) = sweep_that_revokes(dir.path(), &sim);
    let db = dir.path().join("keysweep.db");
    let (seq, head) = published_head(&revoking);
    assert_eq!(head.len(), 64, "{head}");

    let ok = verify_with(&db, Some(&head));
    assert!(ok.status.success(), "{}", process::describe(&ok));
    assert!(
        stdout(&ok).contains(&format!("head {head} (record {seq}) is the expected head")),
        "{}",
        stdout(&ok)
    );

    // The log grows after the publication: the older anchor still holds, and says by how much.
    let later = (chrono::Utc::now() + chrono::Duration::days(16)).to_rfc3339();
    let next = with_key(
        bin()
            .args(["run", "--once", "--now", &later, "--config"])
            .arg(&config)
            .env("RUST_LOG", "info"),
    );
    let (new_seq, new_head) = published_head(&next);
    assert!(new_seq > seq);
    let grown = verify_with(&db, Some(&head));
    assert!(grown.status.success(), "{}", process::describe(&grown));
    assert!(
        stdout(&grown).contains(&format!(
            "the expected head is record {seq}, {} record(s) were appended after it",
            new_seq - seq
        )),
        "{}",
        stdout(&grown)
    );

    // Someone with the file cuts the last record and rewinds sqlite_sequence: the chain alone
    // still verifies (the documented gap) …
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&format!(
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = {new_seq}; \
         UPDATE sqlite_sequence SET seq = {} WHERE name = 'audit';",
        new_seq - 1
    ))
    .unwrap();
    drop(conn);
    let unanchored = verify_with(&db, None);
    assert!(
        unanchored.status.success(),
        "{}",
        process::describe(&unanchored)
    );
    // … but not against the head the sweep published.
    let caught = verify_with(&db, Some(&new_head.to_uppercase()));
    assert_eq!(
        caught.status.code(),
        Some(1),
        "{}",
        process::describe(&caught)
    );
    let said = stdout(&caught);
    assert!(
        said.contains("BROKEN") && said.contains(&new_head),
        "{said}"
    );
}

/// `keysweep check-config` on a one-organisation file, with `env` on top: (ok, stdout, stderr).
fn check_config_with(env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ks.toml");
    std::fs::write(
        &path,
        "[[organizations]]\nname = \"acme\"\nbase_url = \"http://127.0.0.1:8089/v1\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("OPENAI_ADMIN_KEY", ADMIN_KEY)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), stdout(&out), stderr(&out))
}

#[test]
fn an_error_caused_by_an_environment_variable_names_the_variable_not_the_file() {
    for (var, value, key) in [
        ("KEYSWEEP__SAFTY__MAX_REVOCATIONS_PER_RUN", "5", "safty"),
        (
            "KEYSWEEP__LIMITS__CONCURRENCY",
            "many",
            "limits.concurrency",
        ),
        ("KEYSWEEP__LIMITS__CONCURRENCY", "0", "limits.concurrency"),
        (
            "KEYSWEEP__ORGANIZATIONS__0__BASE_URL",
            "ftp://x",
            "organizations[0].base_url",
        ),
    ] {
        let (ok, _, err) = check_config_with(&[(var, value)]);
        assert!(!ok, "{var}={value}");
        assert!(
            err.contains(&format!("error: environment variable {var}: {key}: ")),
            "{var}={value}: {err}"
        );
        assert!(!err.contains("ks.toml"), "the file is not to blame: {err}");
    }
}

#[test]
fn an_entry_of_a_list_is_overridden_by_its_index_and_an_index_past_the_file_is_refused() {
    let (ok, shown, err) = check_config_with(&[(
        "KEYSWEEP__ORGANIZATIONS__0__BASE_URL",
        "http://127.0.0.1:9999/v1",
    )]);
    assert!(ok, "{err}");
    assert!(shown.contains("http://127.0.0.1:9999/v1"), "{shown}");
    assert!(!shown.contains("8089"), "{shown}");

    let (ok, _, err) = check_config_with(&[(
        "KEYSWEEP__ORGANIZATIONS__1__BASE_URL",
        "http://127.0.0.1:9999/v1",
    )]);
    assert!(!ok);
    assert!(
        err.contains(
            "environment variable KEYSWEEP__ORGANIZATIONS__1__BASE_URL: organizations[1]:"
        ) && err.contains("has 1 organizations entry (index 0 to 0)")
            && err.contains("not add one"),
        "{err}"
    );

    let (ok, _, err) = check_config_with(&[("KEYSWEEP__LIMITS__0__X", "1")]);
    assert!(!ok);
    assert!(
        err.contains(
            "environment variable KEYSWEEP__LIMITS__0__X: limits: is not a list of entries"
        ),
        "{err}"
    );
}

#[test]
fn a_missing_configuration_file_says_how_to_name_one() {
    let out = bin()
        .args(["check-config", "--config", "/nonexistent/keysweep/ks.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/keysweep/ks.toml")
            && err.contains("--config FILE")
            && err.contains("KEYSWEEP_CONFIG"),
        "{err}"
    );
}

#[test]
fn a_bare_number_as_a_duration_suggests_days() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ks.toml");
    std::fs::write(
        &path,
        "[[organizations]]\nname = \"acme\"\n[[policies]]\nname = \"old\"\nmax_age = \"90\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("OPENAI_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("policies[0].max_age") && err.contains("write \"90d\" for 90 days"),
        "{err}"
    );
    assert!(!err.contains("90sec"), "{err}");
}

#[test]
fn notify_test_explains_its_channel_option() {
    let out = bin().args(["notify", "test", "--help"]).output().unwrap();
    let help = stdout(&out);
    assert!(
        help.contains("--channel <NAME>") && help.contains("[[channels]]"),
        "{help}"
    );
}

#[test]
fn a_reader_that_goes_away_gets_no_error_message() {
    use std::io::BufRead;
    let mut child = bin()
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("keysweep demo"), "{first}");
    // The reader is dropped here, as `| head -1` closes the pipe.
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.to_lowercase().contains("broken pipe"), "{err}");
}
