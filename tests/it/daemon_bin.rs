//! The real `keysweep` binary as a daemon (issue 5, "Done when"): `keysweep run --config F` is
//! started as a child process against the simulated Administration API running in this test
//! process, with a per-second schedule and its state in a tempdir. The tests watch it only from
//! the outside: its ops endpoints over HTTP, its JSON log on stderr, its state database and
//! `keysweep audit verify`, and signals sent with `kill`.
//!
//! Also home of the helpers the other end-to-end file (`alerts_e2e`) shares: the simulated
//! organisation, child processes with captured output, a free port. No test here may assert a
//! speed: time bounds are hang guards (or "at least" bounds), never pass/fail on performance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keysweep::sim::{
    Fault, FaultKind, SimAccess, SimAdminKey, SimKey, SimMember, SimOptions, SimOrg, SimOwnerRef,
    SimProject, SimServer, SimServiceAccount, SimUser,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The admin key the simulator accepts. It must never show up in the daemon's output.
pub(crate) const ADMIN_KEY: &str = "sk-admin-e2e-NEVER-PRINT-7f3a9c51d2";
/// The environment variable the configurations name for it.
pub(crate) const ADMIN_KEY_ENV: &str = "KEYSWEEP_E2E_ADMIN_KEY";
/// Guards against a hang only; never a speed assertion.
pub(crate) const PATIENCE: Duration = Duration::from_secs(90);
pub(crate) const DAY: i64 = 86_400;

// ---------------------------------------------------------------------------------------------
// The simulated organisation (shared with alerts_e2e)

/// Keys of the fixture: (project, id, name, redacted value).
pub(crate) const CI_DEPLOY: (&str, &str, &str, &str) = (
    "proj_pay",
    "key_pay_ci_deploy",
    "ci-deploy",
    "sk-proj-****A1b2",
);
pub(crate) const OLD_BATCH: (&str, &str, &str, &str) = (
    "proj_pay",
    "key_pay_old_batch",
    "old-batch",
    "sk-proj-****C3d4",
);
pub(crate) const FRESH: (&str, &str, &str, &str) =
    ("proj_pay", "key_pay_fresh", "fresh-key", "sk-proj-****E5f6");
pub(crate) const SVC_BOT: (&str, &str, &str, &str) = (
    "proj_pay",
    "key_pay_svc_bot",
    "svc-bot",
    "sk-svcacct-****G7h8",
);
pub(crate) const WEB: (&str, &str, &str, &str) = (
    "proj_web",
    "key_web_frontend",
    "web-frontend",
    "sk-proj-****J9k0",
);

/// A small organisation, ages relative to `now`: under a 90-day `max_age` policy exactly
/// `ci-deploy` (alice, 400 days), `old-batch` (bob, 200 days, never used) and `svc-bot` (a
/// service account, 300 days) violate; `fresh-key` and `web-frontend` do not.
pub(crate) fn org(now: i64) -> SimOrg {
    let day = |d: i64| now - d * DAY;
    let user = |id: &str, name: &str, email: &str| SimUser {
        id: id.into(),
        name: name.into(),
        email: email.into(),
        created_at: day(900),
    };
    let member = |id: &str| SimMember {
        user_id: id.into(),
        role: "member".into(),
        added_at: day(800),
        access: SimAccess::Active,
    };
    let key =
        |k: (&str, &str, &str, &str), created: i64, used: Option<i64>, owner: SimOwnerRef| SimKey {
            id: k.1.into(),
            name: k.2.into(),
            redacted_value: k.3.into(),
            created_at: day(created),
            last_used_at: used.map(day),
            owner,
            expires_at: None,
            scopes: Vec::new(),
        };
    let alice = || SimOwnerRef::User {
        id: "user_alice".into(),
    };
    SimOrg {
        format: keysweep::sim::FORMAT_VERSION,
        generated_at: now,
        users: vec![
            user("user_alice", "Alice Martin", "alice@example.com"),
            user("user_bob", "Bob Nguyen", "bob@example.com"),
            user("user_olivia", "Olivia Larsen", "olivia@example.com"),
        ],
        admin_api_keys: vec![SimAdminKey {
            id: "key_admin_main".into(),
            name: Some("keysweep".into()),
            redacted_value: "sk-admin-****Zz99".into(),
            created_at: day(30),
            expires_at: None,
            last_used_at: Some(day(1)),
            owner_user_id: "user_olivia".into(),
        }],
        projects: vec![
            SimProject {
                id: "proj_pay".into(),
                name: Some("payments".into()),
                created_at: day(850),
                archived_at: None,
                external_key_id: None,
                members: vec![member("user_alice"), member("user_bob")],
                service_accounts: vec![SimServiceAccount {
                    id: "svc_acct_bot".into(),
                    name: "deploy-bot".into(),
                    role: "member".into(),
                    created_at: day(700),
                    access: SimAccess::Active,
                }],
                keys: vec![
                    key(CI_DEPLOY, 400, Some(1), alice()),
                    key(
                        OLD_BATCH,
                        200,
                        None,
                        SimOwnerRef::User {
                            id: "user_bob".into(),
                        },
                    ),
                    key(FRESH, 10, Some(2), alice()),
                    key(
                        SVC_BOT,
                        300,
                        Some(3),
                        SimOwnerRef::ServiceAccount {
                            id: "svc_acct_bot".into(),
                        },
                    ),
                ],
            },
            SimProject {
                id: "proj_web".into(),
                name: Some("website".into()),
                created_at: day(600),
                archived_at: None,
                external_key_id: None,
                members: vec![member("user_alice")],
                service_accounts: vec![],
                keys: vec![key(WEB, 20, Some(1), alice())],
            },
        ],
    }
}

pub(crate) async fn start_sim(now: i64) -> SimServer {
    SimServer::start(
        "127.0.0.1:0".parse().unwrap(),
        org(now),
        SimOptions::new(ADMIN_KEY),
    )
    .await
    .unwrap()
}

pub(crate) fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A port on 127.0.0.1 that nothing listens on (yet): the daemon cannot report the port it got
/// for `127.0.0.1:0`, so the test picks one and writes it into the configuration.
pub(crate) fn free_port() -> u16 {
    crate::smtp_server::free_port()
}

pub(crate) async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A running `keysweep` process with its stdout and stderr captured line by line.
pub(crate) struct Proc {
    child: Child,
    pub pid: u32,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

/// The binary under test, with a clean environment for the variables keysweep reads.
pub(crate) fn keysweep(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keysweep"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("KEYSWEEP_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap())
                    as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                out.clone(),
            ),
            (Box::new(child.stderr.take().unwrap()), err.clone()),
        ] {
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Proc {
            child,
            pid,
            out,
            err,
        }
    }

    pub(crate) fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    pub(crate) fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// Every stderr line, which must all be JSON log records (`[log] format = "json"`).
    pub(crate) fn log(&self) -> Vec<Value> {
        self.stderr()
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l}"))
            })
            .collect()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {} failed", self.pid);
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit (hang guard: [`PATIENCE`]) and returns the status and how long it took.
    pub(crate) async fn wait(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the process exited")
            .unwrap();
        (status, start.elapsed())
    }

    /// Neither stream may hold the admin key (or any other of `secrets`).
    pub(crate) fn assert_no_secret(&self, secrets: &[&str]) {
        for line in self.stdout().iter().chain(self.stderr().iter()) {
            for s in secrets {
                assert!(!line.contains(s), "a secret in the output: {line}");
            }
        }
    }
}

/// Runs a one-shot command to its end: (exit status, stdout, stderr).
pub(crate) async fn run_to_end(
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, String, String) {
    let out = tokio::time::timeout(PATIENCE, keysweep(args, env).output())
        .await
        .expect("the command finished")
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// The daemon under test

struct DaemonOpts {
    grace: &'static str,
    /// Extra `[[organizations]]` appended (after the first, "acme").
    extra_orgs: Vec<&'static str>,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        DaemonOpts {
            grace: "20s",
            extra_orgs: Vec::new(),
        }
    }
}

fn daemon_toml(sim_url: &str, state: &Path, port: u16, opts: &DaemonOpts) -> String {
    let mut orgs = String::new();
    for name in std::iter::once("acme").chain(opts.extra_orgs.iter().copied()) {
        orgs.push_str(&format!(
            "[[organizations]]\nname = \"{name}\"\nbase_url = \"{sim_url}\"\nadmin_key_env = \"{ADMIN_KEY_ENV}\"\n\n"
        ));
    }
    format!(
        r#"mode = "dry-run"
state_path = "{state}"
schedule = "* * * * * *"
run_on_start = true
shutdown_grace = "{grace}"

{orgs}[limits]
max_retries = 0
request_timeout = "30s"

[[policies]]
name = "max-age"
max_age = "90d"
action = "notify"

[server]
listen = "127.0.0.1:{port}"

[log]
format = "json"
"#,
        state = state.display(),
        grace = opts.grace,
    )
}

struct Daemon {
    proc: Proc,
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    base: String,
    port: u16,
    sim_url: String,
    http: reqwest::Client,
}

impl Daemon {
    async fn start(sim: &SimServer, opts: DaemonOpts) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keysweep.toml");
        let state = dir.path().join("state.db");
        let port = free_port();
        std::fs::write(&config, daemon_toml(&sim.base_url(), &state, port, &opts)).unwrap();
        let proc = Proc::spawn(keysweep(
            &["run", "--config", config.to_str().unwrap()],
            &[(ADMIN_KEY_ENV, ADMIN_KEY)],
        ));
        let mut d = Daemon {
            proc,
            _dir: dir,
            config,
            state,
            base: format!("http://127.0.0.1:{port}"),
            port,
            sim_url: sim.base_url(),
            http: http(),
        };
        let start = Instant::now();
        loop {
            if let Ok(r) = d.http.get(d.url("/healthz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                d.proc.is_running(),
                "the daemon exited at start-up: {:#?}",
                d.proc.stderr()
            );
            assert!(
                start.elapsed() < PATIENCE,
                "the daemon never served /healthz"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn rewrite_config(&self, opts: &DaemonOpts) {
        std::fs::write(
            &self.config,
            daemon_toml(&self.sim_url, &self.state, self.port, opts),
        )
        .unwrap();
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn metrics(&self) -> Metrics {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
            "{:?}",
            r.headers()
        );
        Metrics::parse(&r.text().await.unwrap())
    }

    /// The audit log's `sweep` records: (organization, run_id), in chain order.
    fn audit_sweeps(&self) -> Vec<(String, String)> {
        audit_records(&self.state)
            .into_iter()
            .filter(|r| r["kind"] == "sweep")
            .map(|r| {
                (
                    r["organization"].as_str().unwrap_or_default().to_string(),
                    r["run_id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn wait_for_sweeps(&self, org: &str, n: usize) {
        eventually(&format!("{n} sweeps of {org}"), || {
            self.audit_sweeps().iter().filter(|(o, _)| o == org).count() >= n
        })
        .await;
    }
}

/// Every audit record (the hashed JSON), in chain order. Reads the live database (WAL: readers
/// never block the daemon).
pub(crate) fn audit_records(state: &Path) -> Vec<Value> {
    if !state.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open(state).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    // The daemon may not have created the schema yet.
    let Ok(mut st) = conn.prepare("SELECT record FROM audit ORDER BY seq") else {
        return Vec::new();
    };
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// OpenMetrics text, checked line by line

#[derive(Debug, Clone)]
pub(crate) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    samples: Vec<Sample>,
    /// family → type
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
}

impl Metrics {
    /// Parses and validates: `# HELP`/`# TYPE`/`# UNIT` lines, `# EOF` as the last line, every
    /// sample well-formed and belonging to a family declared before it.
    pub(crate) fn parse(text: &str) -> Metrics {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF at the end:\n{text}");
        assert_eq!(
            lines.iter().filter(|l| **l == "# EOF").count(),
            1,
            "# EOF more than once"
        );
        let mut m = Metrics {
            samples: Vec::new(),
            types: BTreeMap::new(),
            helps: BTreeSet::new(),
        };
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kw, family) = (parts.next().unwrap(), parts.next().unwrap_or(""));
                assert!(valid_name(family), "bad family name in {line:?}");
                let arg = parts.next().unwrap_or("");
                match kw {
                    "HELP" => {
                        assert!(!arg.is_empty(), "empty HELP: {line:?}");
                        m.helps.insert(family.to_string());
                    }
                    "TYPE" => {
                        assert!(
                            [
                                "counter",
                                "gauge",
                                "histogram",
                                "gaugehistogram",
                                "summary",
                                "info",
                                "stateset",
                                "unknown"
                            ]
                            .contains(&arg),
                            "bad TYPE: {line:?}"
                        );
                        m.types.insert(family.to_string(), arg.to_string());
                    }
                    "UNIT" => {}
                    _ => panic!("unknown metadata line {line:?}"),
                }
                continue;
            }
            let s = parse_sample(line);
            let family = m
                .types
                .keys()
                .filter(|f| {
                    s.name == **f
                        || ["_total", "_created", "_bucket", "_sum", "_count", "_info"]
                            .iter()
                            .any(|suf| s.name == format!("{f}{suf}"))
                })
                .max_by_key(|f| f.len());
            assert!(family.is_some(), "sample of an undeclared family: {line:?}");
            m.samples.push(s);
        }
        for f in m.types.keys() {
            assert!(m.helps.contains(f), "family {f} has TYPE but no HELP");
        }
        m
    }

    pub(crate) fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn label_values(&self) -> impl Iterator<Item = &String> {
        self.samples.iter().flat_map(|s| s.labels.values())
    }
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",…} value [timestamp]`, with `\\`, `\"` and `\n` escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "bad metric name: {line:?}");
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let end;
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).unwrap();
            if r[start..].starts_with('}') {
                end = start + 1;
                break;
            }
            let eq = r[start..]
                .find('=')
                .map(|i| start + i)
                .unwrap_or_else(|| panic!("no '=' in labels: {line:?}"));
            let key = &r[start..eq];
            assert!(valid_name(key), "bad label name {key:?}: {line:?}");
            assert_eq!(&r[eq + 1..eq + 2], "\"", "unquoted label value: {line:?}");
            while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated label value: {line:?}"));
                match c {
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?}: {line:?}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key.to_string(), value);
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    end = i + 1;
                    break;
                }
                other => panic!("bad label separator {other:?}: {line:?}"),
            }
        }
        rest = &r[end..];
    }
    let rest = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value: {line:?}"));
    let mut parts = rest.split(' ');
    let value = parts.next().unwrap();
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value {v:?} ({e}): {line:?}")),
    };
    if let Some(ts) = parts.next() {
        ts.parse::<f64>()
            .unwrap_or_else(|e| panic!("bad timestamp ({e}): {line:?}"));
    }
    assert!(parts.next().is_none(), "trailing fields: {line:?}");
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

// ---------------------------------------------------------------------------------------------
// Log checks

fn message(r: &Value) -> &str {
    r["message"].as_str().unwrap_or_default()
}

/// The run id of the `sweep` span a record was emitted in, if any.
fn span_run_id(r: &Value) -> Option<&str> {
    r["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "sweep")
        .and_then(|s| s["run_id"].as_str())
}

/// Records the sweep itself writes (listing, policy, notices, deletions).
fn is_sweep_work(r: &Value) -> bool {
    let target = r["target"].as_str().unwrap_or_default();
    [
        "keysweep::sweep",
        "keysweep::openai",
        "keysweep::revoke",
        "keysweep::notify",
    ]
    .iter()
    .any(|t| target.starts_with(t))
}

/// Every record of sweep work carries the run id of its sweep span (also in a `run_id` field of
/// its own, when it has one). Returns the run ids seen.
fn sweep_records_carry_run_ids(log: &[Value]) -> BTreeSet<String> {
    let mut runs = BTreeSet::new();
    for r in log {
        if is_sweep_work(r) {
            let run = span_run_id(r).unwrap_or_else(|| panic!("sweep record without run_id: {r}"));
            assert_eq!(r["span"]["run_id"], run, "{r}");
            if let Some(field) = r["run_id"].as_str() {
                assert_eq!(
                    field, run,
                    "the record's run_id differs from its span's: {r}"
                );
            }
            runs.insert(run.to_string());
        }
    }
    runs
}

/// Per organisation, the sweeps in log order as (run_id, event) with event "start" (the sweep's
/// own "sweep started") or "end" (the daemon's verdict, logged in the sweep span).
fn sweep_events(log: &[Value]) -> Vec<(String, String, &'static str)> {
    let mut out = Vec::new();
    for r in log {
        let org = r["span"]["organization"].as_str().unwrap_or_default();
        let Some(run) = span_run_id(r) else { continue };
        let target = r["target"].as_str().unwrap_or_default();
        let ev = match message(r) {
            "sweep started" if target == "keysweep::sweep" => "start",
            "sweep finished"
            | "sweep finished with gaps"
            | "sweep failed"
            | "sweep cancelled by shutdown"
                if target.starts_with("keysweep::daemon") =>
            {
                "end"
            }
            _ => continue,
        };
        out.push((org.to_string(), run.to_string(), ev));
    }
    out
}

/// No organisation has two sweeps running at once: its starts and ends alternate, and each end
/// closes the sweep that started last.
fn assert_no_overlap(log: &[Value]) -> usize {
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    let mut finished = 0;
    for (org, run, ev) in sweep_events(log) {
        match ev {
            "start" => {
                if let Some(prev) = open.insert(org.clone(), run.clone()) {
                    panic!("{org}: sweep {run} started while {prev} was still running");
                }
            }
            _ => {
                let prev = open.remove(&org);
                assert_eq!(
                    prev.as_deref(),
                    Some(run.as_str()),
                    "{org}: end of a sweep that was not running"
                );
                finished += 1;
            }
        }
    }
    finished
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sweeps_on_schedule_serves_its_endpoints_and_logs_run_ids() {
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;

    let (status, body) = d.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    d.wait_for_sweeps("acme", 3).await;
    let (status, body) = d.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["ready"], true);

    // /metrics parses and its counters move between two scrapes.
    let first = d.metrics().await;
    for family in [
        "keysweep_sweeps",
        "keysweep_sweep_duration_seconds",
        "keysweep_api_requests",
        "keysweep_keys",
        "keysweep_findings",
        "keysweep_last_successful_sweep_timestamp_seconds",
    ] {
        assert!(
            first.types.contains_key(family),
            "{family} missing: {:?}",
            first.types.keys()
        );
    }
    assert_eq!(first.types["keysweep_sweeps"], "counter");
    assert_eq!(first.types["keysweep_sweep_duration_seconds"], "histogram");
    let sweeps_before = first.sum("keysweep_sweeps_total", &[("organization", "acme")]);
    let requests_before = first.sum("keysweep_api_requests_total", &[]);
    assert!(sweeps_before >= 3.0, "{sweeps_before}");
    assert_eq!(first.sum("keysweep_keys", &[("organization", "acme")]), 5.0);
    assert_eq!(
        first.sum(
            "keysweep_findings",
            &[("organization", "acme"), ("policy", "max-age")]
        ),
        3.0
    );
    for v in first.label_values() {
        for secret_or_name in [ADMIN_KEY, CI_DEPLOY.2, OLD_BATCH.2, SVC_BOT.2, FRESH.2] {
            assert!(!v.contains(secret_or_name), "label value {v:?}");
        }
    }
    let start = Instant::now();
    let second = loop {
        let m = d.metrics().await;
        if m.sum("keysweep_sweeps_total", &[("organization", "acme")]) > sweeps_before {
            break m;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "keysweep_sweeps_total never moved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(second.sum("keysweep_api_requests_total", &[]) > requests_before);
    assert!(
        second.sum(
            "keysweep_sweep_duration_seconds_count",
            &[("organization", "acme")]
        ) > first.sum(
            "keysweep_sweep_duration_seconds_count",
            &[("organization", "acme")]
        )
    );
    let last_ok = second.sum(
        "keysweep_last_successful_sweep_timestamp_seconds",
        &[("organization", "acme")],
    );
    assert!(last_ok >= (unix_now() - 600) as f64, "{last_ok}");

    // The simulator saw one project listing per sweep at least.
    let listed = sim
        .stats()
        .get("GET /v1/organization/projects")
        .copied()
        .unwrap_or(0);
    assert!(listed >= 3, "{:?}", sim.stats());

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());

    // Logs: JSON, every record of sweep work carries the sweep's run id, and the run ids are
    // the ones in the audit log.
    let log = d.proc.log();
    let logged_runs = sweep_records_carry_run_ids(&log);
    let audited = d.audit_sweeps();
    assert!(audited.len() >= 4);
    for (_, run) in &audited {
        assert!(logged_runs.contains(run), "audit run {run} not in the log");
    }
    // And every decision recorded by a sweep names a run the log knows.
    for rec in audit_records(&d.state) {
        let run = rec["run_id"].as_str().unwrap();
        assert!(
            logged_runs.contains(run),
            "audit record of unknown run {run}: {rec}"
        );
    }
    assert!(assert_no_overlap(&log) >= 4);
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sweeps_never_overlap_and_the_skipped_slots_are_counted() {
    let sim = start_sim(unix_now()).await;
    // Every key listing takes 1.5 s: each sweep spans at least one per-second slot.
    sim.faults()
        .add(Fault::on_any_list_keys().respond(FaultKind::Delay(Duration::from_millis(1500))));
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 3).await;

    let m = d.metrics().await;
    let skipped = m.sum(
        "keysweep_schedule_skipped_total",
        &[("organization", "acme")],
    );
    let sweeps = m.sum("keysweep_sweeps_total", &[("organization", "acme")]);
    assert!(sweeps >= 3.0, "{sweeps}");
    // A 1.5 s sweep always covers at least one whole-second boundary.
    assert!(
        skipped >= sweeps - 1.0,
        "skipped {skipped} for {sweeps} sweeps"
    );
    // Slow, but complete: the daemon is ready.
    let (status, body) = d.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());
    let log = d.proc.log();
    let finished = assert_no_overlap(&log);
    assert!(finished >= 3, "{finished}");
    assert!(
        log.iter()
            .any(|r| message(r).starts_with("schedule slots skipped") && r["level"] == "WARN"),
        "no log of skipped slots"
    );
    let runs: BTreeSet<_> = d.audit_sweeps().into_iter().map(|(_, r)| r).collect();
    assert_eq!(runs.len(), d.audit_sweeps().len(), "a run id was reused");
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_while_the_api_refuses_the_admin_key() {
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 1).await;
    poll_readyz(&d, 200, "").await;

    sim.set_admin_key("sk-admin-some-other-key");
    let body = poll_readyz(&d, 503, "last sweep failed").await;
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], false);
    let reasons = json["reasons"].to_string();
    assert!(reasons.contains("acme"), "{body}");
    assert!(
        reasons.contains("admin key was refused"),
        "the reason says why: {body}"
    );
    assert!(
        !body.contains(ADMIN_KEY) && !body.contains("sk-admin-some"),
        "{body}"
    );
    let (status, _) = d.get("/healthz").await;
    assert_eq!(status, 200, "alive while unready");
    let m = d.metrics().await;
    assert!(
        m.sum(
            "keysweep_sweeps_total",
            &[("organization", "acme"), ("outcome", "failed")]
        ) >= 1.0
    );
    assert!(m.sum("keysweep_api_requests_total", &[("status", "401")]) >= 1.0);

    sim.set_admin_key(ADMIN_KEY);
    poll_readyz(&d, 200, "\"ready\":true").await;

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0));
    let log = d.proc.log();
    let failure = log
        .iter()
        .find(|r| message(r) == "sweep failed")
        .expect("the failed sweep is logged");
    assert_eq!(failure["level"], "ERROR");
    assert!(span_run_id(failure).is_some(), "{failure}");
    // The refusal itself is logged where it happens (the listing), inside the sweep's span.
    assert!(
        log.iter()
            .any(|r| is_sweep_work(r) && r["level"] == "ERROR" && span_run_id(r).is_some()),
        "the listing's error is not in the log"
    );
    sweep_records_carry_run_ids(&log);
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

async fn poll_readyz(d: &Daemon, status: u16, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let (got, body) = d.get("/readyz").await;
        if got == status && body.contains(needle) {
            return body;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "/readyz never answered {status} with {needle:?}; last: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_sweep_exits_zero_with_a_consistent_state() {
    let sim = start_sim(unix_now()).await;
    let grace = Duration::from_secs(20);
    let mut d = Daemon::start(
        &sim,
        DaemonOpts {
            grace: "20s",
            ..DaemonOpts::default()
        },
    )
    .await;
    d.wait_for_sweeps("acme", 1).await;

    // From now on every key listing takes 3 s; wait until a sweep is inside one.
    let delayed = sim
        .faults()
        .add(Fault::on_any_list_keys().respond(FaultKind::Delay(Duration::from_secs(3))));
    eventually("a sweep inside a slow listing", || {
        sim.faults().hits(delayed) >= 1
    })
    .await;
    // Its "sweep started" record may still be on its way through the pipe.
    let mut in_flight = None;
    eventually("the in-flight sweep's start in the log", || {
        let log = d.proc.log();
        in_flight = sweep_events(&log)
            .last()
            .filter(|(_, _, ev)| *ev == "start")
            .map(|(_, run, _)| run.clone());
        in_flight.is_some()
    })
    .await;
    let in_flight = in_flight.unwrap();

    d.proc.signal("-TERM");
    let (status, took) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());
    // A hang guard, not a speed test: the daemon must not outlive its grace by much.
    assert!(took < grace + Duration::from_secs(30), "took {took:?}");

    let log = d.proc.log();
    assert!(log.iter().any(|r| message(r) == "shutdown complete"));
    // The in-flight sweep finished its listing and recorded itself before the exit.
    assert!(
        d.audit_sweeps().iter().any(|(_, r)| *r == in_flight),
        "the in-flight sweep {in_flight} left no record"
    );
    assert_no_overlap(&log);

    // The state database is consistent and the audit chain verifies with the real CLI.
    let conn = rusqlite::Connection::open(&d.state).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let running: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sweeps WHERE status = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(running, 0, "a sweep was left running");
    drop(conn);
    let (status, out, err) = run_to_end(
        &["audit", "verify", "--state", d.state.to_str().unwrap()],
        &[],
    )
    .await;
    assert!(status.success(), "audit verify failed: {out}{err}");
    assert!(out.starts_with("audit chain OK"), "{out}");
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one_and_a_valid_one_takes_effect() {
    let sim = start_sim(unix_now()).await;
    let mut d = Daemon::start(&sim, DaemonOpts::default()).await;
    d.wait_for_sweeps("acme", 1).await;

    // A syntax error: the daemon logs why and keeps sweeping on the old configuration.
    std::fs::write(&d.config, "mode = \"enforce\"\nschedule = [unterminated\n").unwrap();
    d.proc.signal("-HUP");
    eventually("the refused reload to be logged", || {
        d.proc
            .log()
            .iter()
            .any(|r| message(r).starts_with("configuration reload refused"))
    })
    .await;
    let log = d.proc.log();
    let refused = log
        .iter()
        .find(|r| message(r).starts_with("configuration reload refused"))
        .unwrap();
    assert_eq!(refused["level"], "ERROR");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains("keysweep.toml"),
        "the reason names the file: {reason}"
    );
    assert!(d.proc.is_running(), "a broken reload stopped the daemon");
    let before = d.audit_sweeps().len();
    eventually("sweeps to go on after the refused reload", || {
        d.audit_sweeps().len() >= before + 2
    })
    .await;
    let (status, _) = d.get("/healthz").await;
    assert_eq!(status, 200);
    let records = audit_records(&d.state);
    assert!(
        records.iter().all(|r| r["mode"] == "dry-run"),
        "the broken file's mode leaked in"
    );

    // A valid configuration that adds an organisation takes effect.
    d.rewrite_config(&DaemonOpts {
        extra_orgs: vec!["globex"],
        ..DaemonOpts::default()
    });
    d.proc.signal("-HUP");
    eventually("the reload to be taken", || {
        d.proc
            .log()
            .iter()
            .any(|r| message(r) == "configuration reloaded")
    })
    .await;
    d.wait_for_sweeps("globex", 2).await;
    let acme = d.audit_sweeps().iter().filter(|(o, _)| o == "acme").count();
    d.wait_for_sweeps("acme", acme + 1).await;
    let (status, _) = d.get("/healthz").await;
    assert_eq!(status, 200);

    d.proc.signal("-TERM");
    let (status, _) = d.proc.wait().await;
    assert_eq!(status.code(), Some(0), "{:#?}", d.proc.stderr());
    assert_no_overlap(&d.proc.log());
    d.proc.assert_no_secret(&[ADMIN_KEY]);
}
