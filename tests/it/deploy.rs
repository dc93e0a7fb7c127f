//! The deployment kit (`deploy/`) and the shipped configurations (`config/`) checked against
//! the real binary and the real tools, so a shipped file can never drift from the code:
//!
//! - every `*.toml` under `config/` and `deploy/`, and the TOML inside the Kubernetes ConfigMap,
//!   passes `keysweep check-config` (the built binary, dummy secrets in a clean environment);
//! - `config/keysweep.example.toml` names every key the loader accepts and shows the real
//!   defaults;
//! - the systemd unit passes `systemd-analyze verify` with the built binary in place, and its
//!   exposure score stays low;
//! - the Dockerfile's paths exist and its HEALTHCHECK command answers for a running daemon;
//! - the Kubernetes manifests parse and keep their invariants (one replica, Recreate, probes,
//!   locked-down security context, CronJob `Forbid`) and agree with the ConfigMap's TOML;
//! - the alerting rules pass `promtool check rules` and `promtool test rules`, and every metric
//!   the rules and the dashboard query exists in the daemon's `/metrics` output;
//! - every file under `deploy/` and `config/` is of a kind one of these tests checks.
//!
//! External tools (systemd-analyze, promtool, bash) are used where installed and the
//! check is skipped, loudly, where not; `.ci/run` installs promtool. These tests never touch the
//! network and never use a real secret.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::smtp_server::free_port;
use serde::Deserialize;
use serde_norway::Value as Yaml;

/// Guards "eventually" loops against a hang; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn keysweep_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keysweep"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn shipped_files() -> Vec<PathBuf> {
    let mut all = files_under(&repo().join("config"));
    all.extend(files_under(&repo().join("deploy")));
    all
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

/// The executable `name` on PATH, if any.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn skip(tool: &str, what: &str) {
    eprintln!("SKIPPED: {tool} is not installed here, so {what} was not checked");
}

/// All documents of a YAML file (`---`-separated), empty documents dropped.
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", rel(path)))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `v[a][b]…`, where a number indexes a sequence.
fn at<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    cur
}

fn yaml_str<'a>(v: &'a Yaml, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

fn yaml_seq<'a>(v: &'a Yaml, path: &str) -> &'a [Yaml] {
    at(v, path)
        .as_sequence()
        .map(|s| s.as_slice())
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

/// Every Kubernetes object under `deploy/kubernetes`, with the file it came from.
fn k8s_objects() -> Vec<(String, Yaml)> {
    let mut out = Vec::new();
    for f in files_under(&repo().join("deploy/kubernetes")) {
        if !has_ext(&f, &["yaml", "yml"]) {
            continue;
        }
        for doc in yaml_docs(&f) {
            if doc.get("apiVersion").is_some() && doc.get("kind").is_some() {
                out.push((rel(&f), doc));
            }
        }
    }
    out
}

fn k8s_object<'a>(objects: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| {
            o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} {name}");
    found[0]
}

/// The TOML documents embedded in ConfigMaps (data keys ending in `.toml`), by "file#key".
fn configmap_tomls() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, obj) in k8s_objects() {
        if obj["kind"].as_str() != Some("ConfigMap") {
            continue;
        }
        if let Some(data) = obj["data"].as_mapping() {
            for (k, v) in data {
                let key = k.as_str().unwrap_or_default();
                if key.ends_with(".toml") {
                    out.push((format!("{file}#{key}"), v.as_str().unwrap().to_string()));
                }
            }
        }
    }
    out
}

fn toml_table(text: &str, what: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{what}: invalid TOML: {e}"))
}

/// Every string value of a key ending in `_env` (the environment variables a configuration
/// reads secrets from), with the key's name.
fn env_refs(v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                if let (true, Some(var)) = (k.ends_with("_env"), v.as_str()) {
                    out.insert(var.to_string(), k.clone());
                } else {
                    env_refs(v, out);
                }
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| env_refs(v, out)),
        _ => {}
    }
}

/// Every `admin_key_credential` name in a configuration.
fn credential_refs(t: &toml::Table) -> Vec<String> {
    t.get("organizations")
        .and_then(|o| o.as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("admin_key_credential")?.as_str().map(String::from))
        .collect()
}

fn duration_secs(s: &str) -> u64 {
    keysweep::config::parse_duration(s)
        .unwrap_or_else(|e| panic!("{e}"))
        .as_secs()
}

/// A clean environment with a dummy value for every secret a configuration refers to: the
/// default admin key variable, every `*_env` variable, and a credentials directory holding a
/// file per `admin_key_credential`. Values are distinctive so a leak into output is caught.
struct DummySecrets {
    env: Vec<(String, String)>,
    _creds: tempfile::TempDir,
}

impl DummySecrets {
    fn for_config(t: &toml::Table) -> DummySecrets {
        let creds = tempfile::tempdir().unwrap();
        let mut env = vec![
            (
                "OPENAI_ADMIN_KEY".to_string(),
                "sk-admin-DUMMY-default-0123456789".to_string(),
            ),
            (
                "CREDENTIALS_DIRECTORY".to_string(),
                creds.path().display().to_string(),
            ),
        ];
        for name in credential_refs(t) {
            let path = creds.path().join(&name);
            std::fs::write(&path, format!("sk-admin-DUMMY-credential-{name}\n")).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        let mut refs = BTreeMap::new();
        env_refs(&toml::Value::Table(t.clone()), &mut refs);
        for (var, key) in refs {
            let value = match key.as_str() {
                // Standard Webhooks secrets must look like one.
                "secret_env" => crate::receivers::whsec(b"DUMMY webhook secret"),
                "webhook_url_env" => format!("https://hooks.invalid/DUMMY-{var}"),
                _ => format!("DUMMY-secret-{var}"),
            };
            env.push((var, value));
        }
        DummySecrets { env, _creds: creds }
    }

    fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.env
            .iter()
            .filter(|(k, _)| k != "CREDENTIALS_DIRECTORY")
            .map(|(_, v)| v.as_str())
    }
}

/// Runs `keysweep check-config --config path` in a clean environment with dummy secrets.
fn check_config(path: &Path, what: &str) -> Result<String, String> {
    let table = toml_table(&read(path), what);
    let secrets = DummySecrets::for_config(&table);
    let out = Command::new(keysweep_bin())
        .env_clear()
        .envs(secrets.env.iter().map(|(k, v)| (k, v)))
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        return Err(format!(
            "{what}: check-config failed ({}):\n{stderr}{stdout}",
            out.status
        ));
    }
    // The credential files' contents are secrets too.
    let cred_values: Vec<String> = credential_refs(&table)
        .iter()
        .map(|n| format!("sk-admin-DUMMY-credential-{n}"))
        .collect();
    for secret in secrets
        .secret_values()
        .chain(cred_values.iter().map(String::as_str))
    {
        if stdout.contains(secret) || stderr.contains(secret) {
            return Err(format!("{what}: check-config printed a secret value"));
        }
    }
    if !stdout.contains("# config hash:") {
        return Err(format!("{what}: no config hash in the output:\n{stdout}"));
    }
    Ok(stdout)
}

/// The effective configuration `check-config` prints, as TOML.
fn effective(path: &Path, what: &str) -> toml::Table {
    let out = check_config(path, what).unwrap_or_else(|e| panic!("{e}"));
    toml_table(&out, &format!("effective configuration of {what}"))
}

// ---------------------------------------------------------------------------------------------
// Configuration files
// ---------------------------------------------------------------------------------------------

#[test]
fn every_shipped_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for f in shipped_files()
        .into_iter()
        .filter(|f| has_ext(f, &["toml"]))
    {
        checked.push(rel(&f));
        if let Err(e) = check_config(&f, &rel(&f)) {
            failures.push(e);
        }
    }
    for (what, text) in configmap_tomls() {
        let path = dir.path().join(format!("configmap-{}.toml", checked.len()));
        std::fs::write(&path, text).unwrap();
        checked.push(what.clone());
        if let Err(e) = check_config(&path, &what) {
            failures.push(e);
        }
    }
    for must in [
        "config/demo.toml",
        "config/keysweep.example.toml",
        "deploy/systemd/keysweep.toml",
        "deploy/container/keysweep.toml",
        "deploy/kubernetes/configmap.yaml#keysweep.toml",
    ] {
        assert!(
            checked.iter().any(|c| c == must),
            "{must} was not checked; checked: {checked:?}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Field names of the loader's raw structs (`struct Raw… { name: …, … }` in
/// src/config/raw.rs), honouring `#[serde(rename = "…")]`.
fn raw_config_keys() -> BTreeSet<String> {
    let src = read(&repo().join("src/config/raw.rs"));
    let mut keys = BTreeSet::new();
    let mut in_struct = false;
    let mut rename: Option<String> = None;
    for line in src.lines() {
        let l = line.trim();
        if l.starts_with("struct Raw") && l.ends_with('{') {
            in_struct = true;
            continue;
        }
        if !in_struct {
            continue;
        }
        if l == "}" {
            in_struct = false;
            continue;
        }
        if let Some(r) = l.split("rename = \"").nth(1) {
            rename = r.split('"').next().map(String::from);
            continue;
        }
        if l.starts_with("//") || l.starts_with("#[") {
            continue;
        }
        if let Some((field, _)) = l.trim_start_matches("pub ").split_once(':') {
            let field = field.trim();
            if !field.is_empty() && field.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.insert(rename.take().unwrap_or_else(|| field.to_string()));
            }
        }
    }
    keys
}

#[test]
fn example_config_documents_every_key_the_loader_accepts() {
    let keys = raw_config_keys();
    // Sanity: the scan found the loader's structs at all.
    for k in [
        "mode",
        "admin_key_credential",
        "max_revocations_per_run",
        "type",
        "match",
    ] {
        assert!(keys.contains(k), "scan of raw.rs missed {k}: {keys:?}");
    }
    let example = read(&repo().join("config/keysweep.example.toml"));
    let documented = |key: &str| {
        example.lines().any(|line| {
            let l = line.trim_start_matches('#').trim();
            l.starts_with(&format!("{key} ="))
                || l.starts_with(&format!("[{key}]"))
                || l.starts_with(&format!("[[{key}]]"))
                || l.ends_with(&format!(".{key}]"))
        })
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !documented(k)).collect();
    assert!(
        missing.is_empty(),
        "config/keysweep.example.toml does not mention {missing:?}"
    );
    // One line of comment above every uncommented key.
    let lines: Vec<&str> = example.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let is_key = !line.starts_with('#') && !line.starts_with('[') && line.contains(" = ");
        if is_key && !(i > 0 && lines[i - 1].starts_with('#')) {
            panic!(
                "config/keysweep.example.toml:{}: `{line}` has no comment",
                i + 1
            );
        }
    }
}

/// The example says its uncommented values are the defaults: check them against what the
/// binary fills in for a configuration that sets nothing.
#[test]
fn example_config_shows_the_real_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let minimal = dir.path().join("minimal.toml");
    std::fs::write(
        &minimal,
        r#"
[[organizations]]
name = "main"

[[policies]]
name = "p"
max_age = "90d"

[[channels]]
name = "c"
type = "email"
smtp_host = "smtp.example.com"
from = "keysweep@example.com"
to = ["security@example.com"]
"#,
    )
    .unwrap();
    let defaults = effective(&minimal, "minimal configuration");
    let example_path = repo().join("config/keysweep.example.toml");
    let example = effective(&example_path, "config/keysweep.example.toml");

    let mut differences = Vec::new();
    let mut compare = |what: &str, want: Option<&toml::Value>, got: Option<&toml::Value>| {
        if want != got {
            differences.push(format!("{what}: default {want:?}, example {got:?}"));
        }
    };
    // Top-level scalars and whole sections.
    for (k, v) in &defaults {
        if matches!(k.as_str(), "organizations" | "policies" | "channels") {
            continue;
        }
        compare(k, Some(v), example.get(k));
    }
    // Defaults inside the array entries, except the fields the example sets by necessity.
    let first = |t: &toml::Table, k: &str| -> toml::Table {
        t[k].as_array().unwrap()[0].as_table().unwrap().clone()
    };
    for (section, own) in [
        ("organizations", &["name"][..]),
        ("policies", &["name", "max_age"][..]),
        ("channels", &["name", "smtp_host", "from", "to"][..]),
    ] {
        let d = first(&defaults, section);
        let e = first(&example, section);
        for (k, v) in &d {
            if !own.contains(&k.as_str()) {
                compare(&format!("{section}[0].{k}"), Some(v), e.get(k));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "config/keysweep.example.toml disagrees with the defaults:\n{}",
        differences.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

/// `Key=value` lines of a unit file (comments dropped), in order; repeated keys kept.
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('[')
        })
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn unit_values<'a>(d: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn systemd_unit() -> String {
    read(&repo().join("deploy/systemd/keysweep.service"))
}

#[test]
fn systemd_unit_is_hardened_and_matches_its_config() {
    let unit = systemd_unit();
    let d = unit_directives(&unit);
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "keysweep"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0077"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("EnvironmentFile", "-/etc/keysweep/keysweep.env"),
        (
            "ExecStart",
            "/usr/local/bin/keysweep run --config /etc/keysweep/keysweep.toml",
        ),
    ] {
        assert!(
            unit_values(&d, key).contains(&want),
            "keysweep.service: want {key}={want}, have {:?}",
            unit_values(&d, key)
        );
    }

    let config = toml_table(
        &read(&repo().join("deploy/systemd/keysweep.toml")),
        "deploy/systemd/keysweep.toml",
    );
    // The admin key comes through the credential the unit loads.
    let creds = credential_refs(&config);
    assert_eq!(
        creds.len(),
        1,
        "the systemd config reads the admin key as a credential"
    );
    let loaded: Vec<&str> = unit_values(&d, "LoadCredential")
        .iter()
        .filter_map(|v| v.split_once(':').map(|(name, _)| name))
        .collect();
    assert!(
        loaded.contains(&creds[0].as_str()),
        "LoadCredential= {loaded:?} lacks {}",
        creds[0]
    );
    // The state lives in the StateDirectory, the only writable path.
    let state = config["state_path"].as_str().unwrap();
    assert!(
        Path::new(state).starts_with("/var/lib/keysweep"),
        "state_path {state} is outside StateDirectory=keysweep"
    );
    // Stop waits longer than the configuration's shutdown grace.
    let grace = duration_secs(config["shutdown_grace"].as_str().unwrap_or("30s"));
    let stop = duration_secs(unit_values(&d, "TimeoutStopSec")[0]);
    assert!(
        stop > grace,
        "TimeoutStopSec {stop}s must exceed shutdown_grace {grace}s"
    );
    // The unit reads the file this config is installed as.
    assert!(unit.contains("--config /etc/keysweep/keysweep.toml"));

    // The env example defines every variable the config's *_env keys name, and nothing else
    // that looks like an assignment.
    let mut refs = BTreeMap::new();
    env_refs(&toml::Value::Table(config), &mut refs);
    let env_example = read(&repo().join("deploy/systemd/keysweep.env.example"));
    let defined: BTreeSet<&str> = env_example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let wanted: BTreeSet<&str> = refs.keys().map(String::as_str).collect();
    assert_eq!(
        defined, wanted,
        "keysweep.env.example vs the config's *_env keys"
    );
}

/// The unit with ExecStart pointing at the binary under test, in a fresh directory.
fn unit_with_binary(dir: &Path, binary: &Path) -> PathBuf {
    let unit = systemd_unit();
    assert!(unit.contains("ExecStart=/usr/local/bin/keysweep "));
    let text = unit.replace(
        "ExecStart=/usr/local/bin/keysweep ",
        &format!("ExecStart={} ", binary.display()),
    );
    let path = dir.join("keysweep.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_with_the_built_binary() {
    let Some(analyze) = which("systemd-analyze") else {
        return skip("systemd-analyze", "keysweep.service");
    };
    let dir = tempfile::tempdir().unwrap();
    // A copy of the binary under test, as the installed /usr/local/bin/keysweep would be.
    let installed = dir.path().join("bin/keysweep");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(keysweep_bin(), &installed).unwrap();
    let unit = unit_with_binary(dir.path(), &installed);

    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("keysweep.service"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );

    // The check is real: the same unit with a missing binary is refused.
    let missing_dir = tempfile::tempdir().unwrap();
    let missing = unit_with_binary(
        missing_dir.path(),
        &missing_dir.path().join("nope/keysweep"),
    );
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "systemd-analyze verify accepted a unit whose binary does not exist"
    );

    // The hardening adds up: systemd's own exposure score stays at or below 2.0 ("OK").
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}",
        report.lines().last().unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------------------------
// Container
// ---------------------------------------------------------------------------------------------

/// Dockerfile instructions (continuation lines joined), as (INSTRUCTION, arguments).
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&repo().join("deploy/container/Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || (l.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = l.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(l);
        if let Some((ins, args)) = current.trim().split_once(char::is_whitespace) {
            out.push((ins.to_uppercase(), args.trim().to_string()));
        }
        current.clear();
    }
    out
}

fn docker_args<'a>(d: &'a [(String, String)], ins: &str) -> Vec<&'a str> {
    d.iter()
        .filter(|(i, _)| i == ins)
        .map(|(_, a)| a.as_str())
        .collect()
}

fn container_config() -> toml::Table {
    toml_table(
        &read(&repo().join("deploy/container/keysweep.toml")),
        "deploy/container/keysweep.toml",
    )
}

/// The HEALTHCHECK's exec-form command.
fn healthcheck_command(d: &[(String, String)]) -> Vec<String> {
    let hc = docker_args(d, "HEALTHCHECK");
    assert_eq!(hc.len(), 1, "one HEALTHCHECK");
    let json = &hc[0][hc[0].find("CMD [").expect("exec-form HEALTHCHECK CMD") + 4..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not JSON: {e}"))
}

#[test]
fn dockerfile_paths_exist_and_match_the_container_config() {
    let d = dockerfile();
    let froms = docker_args(&d, "FROM");
    assert_eq!(froms.len(), 2, "multi-stage: a builder and a runtime");
    assert!(froms[0].starts_with("rust:1.9") && froms[0].contains("bookworm"));
    assert!(froms[1].starts_with("debian:bookworm-slim"));
    let runs = docker_args(&d, "RUN").join("\n");
    assert!(runs.contains("cargo build --release --locked"), "{runs}");

    // COPY sources exist and the Dockerfile's own ignore file lets them into the context.
    let ignore = read(&repo().join("deploy/container/Dockerfile.dockerignore"));
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let mut config_dest = None;
    for copy in docker_args(&d, "COPY") {
        if copy.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = copy.split_whitespace().collect();
        let (dest, sources) = parts.split_last().unwrap();
        for src in sources {
            let src = src.trim_end_matches('/');
            assert!(
                repo().join(src).exists(),
                "COPY source {src} does not exist"
            );
            assert!(
                allowed.contains(&src),
                "COPY source {src} is excluded by Dockerfile.dockerignore"
            );
            if src == "deploy/container/keysweep.toml" {
                config_dest = Some(dest.to_string());
            }
        }
    }
    let config_dest = config_dest.expect("the image ships deploy/container/keysweep.toml");

    // Runs as a numeric non-root user.
    let user = docker_args(&d, "USER");
    let uid: u32 = user
        .last()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(uid, 0);

    // ENTRYPOINT/CMD run the daemon on the shipped config.
    assert_eq!(docker_args(&d, "ENTRYPOINT"), vec![r#"["keysweep"]"#]);
    let cmd: Vec<String> = serde_json::from_str(docker_args(&d, "CMD").last().unwrap()).unwrap();
    assert_eq!(cmd, ["run", "--config", config_dest.as_str()]);

    // The config listens on all interfaces at the exposed port, keeps its state on the volume.
    let config = container_config();
    let listen: std::net::SocketAddr = config["server"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "a container must listen on 0.0.0.0"
    );
    assert_eq!(docker_args(&d, "EXPOSE"), vec![listen.port().to_string()]);
    let state = Path::new(config["state_path"].as_str().unwrap());
    let volume: Vec<String> = serde_json::from_str(docker_args(&d, "VOLUME")[0]).unwrap();
    assert!(
        volume.iter().any(|v| state.starts_with(v)),
        "state_path {} is not on the VOLUME {volume:?}",
        state.display()
    );

    // The health check probes /healthz on that port.
    let hc = healthcheck_command(&d).join(" ");
    assert!(
        hc.contains(&format!("/dev/tcp/127.0.0.1/{}", listen.port())),
        "{hc}"
    );
    assert!(hc.contains("GET /healthz "), "{hc}");
}

#[test]
fn compose_file_is_locked_down_like_the_image() {
    let compose = yaml_docs(&repo().join("deploy/container/compose.yaml")).remove(0);
    let svc = at(&compose, "services.keysweep");
    let context = repo()
        .join("deploy/container")
        .join(yaml_str(svc, "build.context"));
    assert!(context.join(yaml_str(svc, "build.dockerfile")).is_file());
    assert_eq!(svc["read_only"].as_bool(), Some(true));
    assert_eq!(yaml_seq(svc, "cap_drop")[0].as_str(), Some("ALL"));
    assert!(
        yaml_seq(svc, "security_opt")
            .iter()
            .any(|o| o.as_str() == Some("no-new-privileges:true"))
    );
    let grace = duration_secs(
        container_config()["shutdown_grace"]
            .as_str()
            .unwrap_or("30s"),
    );
    assert!(duration_secs(yaml_str(svc, "stop_grace_period")) > grace);
    let d = dockerfile();
    let volume: Vec<String> = serde_json::from_str(docker_args(&d, "VOLUME")[0]).unwrap();
    let cmd: Vec<String> = serde_json::from_str(docker_args(&d, "CMD").last().unwrap()).unwrap();
    let mounts: Vec<&str> = yaml_seq(svc, "volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.ends_with(&format!(":{}", volume[0]))),
        "state volume: {mounts:?}"
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.ends_with(&format!(":{}:ro", cmd[2]))),
        "config read-only: {mounts:?}"
    );
}

/// Kills and reaps the child when dropped, so a failing test leaves no daemon behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// The image's HEALTHCHECK command, run as Docker would, against the real daemon.
#[test]
fn container_healthcheck_command_answers_for_a_running_daemon() {
    let d = dockerfile();
    let cmd = healthcheck_command(&d);
    let Some(shell) = which(Path::new(&cmd[0]).file_name().unwrap().to_str().unwrap()) else {
        return skip(&cmd[0], "the container HEALTHCHECK");
    };
    let image_port = container_config()["server"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("keysweep.toml");
    // The container's config with a loopback address, a private state file and no sweep
    // during the test (the API address answers nothing).
    let mut t = container_config();
    t.insert(
        "state_path".into(),
        dir.path().join("state.db").display().to_string().into(),
    );
    t.insert("run_on_start".into(), false.into());
    t.insert("schedule".into(), "0 0 1 1 *".into());
    t["server"]
        .as_table_mut()
        .unwrap()
        .insert("listen".into(), format!("127.0.0.1:{port}").into());
    t["organizations"].as_array_mut().unwrap()[0]
        .as_table_mut()
        .unwrap()
        .insert("base_url".into(), "http://127.0.0.1:9/v1".into());
    std::fs::write(&config, toml::to_string(&t).unwrap()).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let secrets = DummySecrets::for_config(&t);
    let mut daemon = Reaped(
        Command::new(keysweep_bin())
            .env_clear()
            .envs(secrets.env.iter().map(|(k, v)| (k, v)))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while http_get_status(port, "/healthz") != Some(200) {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!(
                "the daemon exited ({status}):\n{}",
                read(&dir.path().join("daemon.log"))
            );
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the daemon never answered /healthz:\n{}",
            read(&dir.path().join("daemon.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let probe = |path: &str| -> Output {
        let script = cmd[2]
            .replace(
                &format!("/127.0.0.1/{image_port}"),
                &format!("/127.0.0.1/{port}"),
            )
            .replace("GET /healthz ", &format!("GET {path} "));
        Command::new(&shell)
            .args(&cmd[1..2])
            .arg(script)
            .output()
            .unwrap()
    };
    let ok = probe("/healthz");
    assert!(
        ok.status.success(),
        "HEALTHCHECK failed against a healthy daemon: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // And it is not always true: a 404 is unhealthy.
    assert!(!probe("/no-such-path").status.success());
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

fn pod_spec(obj: &Yaml) -> &Yaml {
    match obj["kind"].as_str() {
        Some("Deployment") => at(obj, "spec.template.spec"),
        Some("CronJob") => at(obj, "spec.jobTemplate.spec.template.spec"),
        other => panic!("no pod spec in {other:?}"),
    }
}

fn container_env(container: &Yaml) -> BTreeMap<String, Yaml> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| (yaml_str(e, "name").to_string(), e.clone()))
        .collect()
}

fn volume<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    yaml_seq(pod, "volumes")
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn mount_path<'a>(container: &'a Yaml, volume: &str) -> &'a str {
    yaml_seq(container, "volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
}

fn assert_locked_down(what: &str, pod: &Yaml) {
    let psc = &pod["securityContext"];
    assert_eq!(
        psc["runAsNonRoot"].as_bool(),
        Some(true),
        "{what}: pod runAsNonRoot"
    );
    assert_ne!(psc["runAsUser"].as_u64(), Some(0), "{what}: runAsUser");
    assert_eq!(
        at(psc, "seccompProfile.type").as_str(),
        Some("RuntimeDefault"),
        "{what}: pod seccompProfile"
    );
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{what}"
    );
    for c in yaml_seq(pod, "containers") {
        let sc = &c["securityContext"];
        assert_eq!(
            sc["runAsNonRoot"].as_bool(),
            Some(true),
            "{what}: runAsNonRoot"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{what}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{what}: allowPrivilegeEscalation"
        );
        assert_ne!(sc["privileged"].as_bool(), Some(true), "{what}: privileged");
        let drop: Vec<&str> = yaml_seq(sc, "capabilities.drop")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(drop, ["ALL"], "{what}: capabilities.drop");
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{what}: no capability added"
        );
        assert_eq!(
            at(sc, "seccompProfile.type").as_str(),
            Some("RuntimeDefault"),
            "{what}: seccompProfile"
        );
    }
}

/// The pod runs keysweep on the ConfigMap's TOML with every secret that TOML names.
fn assert_pod_fits_config(
    what: &str,
    pod: &Yaml,
    config: &toml::Table,
    secret: &Yaml,
    args_want: &[&str],
) {
    let c = &yaml_seq(pod, "containers")[0];
    let args: Vec<&str> = yaml_seq(c, "args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .unwrap_or_else(|| panic!("{what}: no --config in {args:?}"));
    for a in args_want {
        assert!(args.contains(a), "{what}: args {args:?} lack {a}");
    }
    // The ConfigMap is mounted where --config points.
    let config_dir = Path::new(config_path).parent().unwrap();
    assert_eq!(
        Path::new(mount_path(c, "config")),
        config_dir,
        "{what}: config mount"
    );
    assert_eq!(
        at(volume(pod, "config"), "configMap.name").as_str(),
        Some("keysweep")
    );
    assert_eq!(Path::new(config_path).file_name().unwrap(), "keysweep.toml");

    // The state database is on the PVC.
    let state = Path::new(config["state_path"].as_str().unwrap());
    assert!(
        state.starts_with(mount_path(c, "state")),
        "{what}: state_path not on the PVC"
    );
    assert_eq!(
        at(volume(pod, "state"), "persistentVolumeClaim.claimName").as_str(),
        Some("keysweep-state")
    );

    // The admin key credential is a mounted Secret item under CREDENTIALS_DIRECTORY.
    let env = container_env(c);
    let creds_dir = env
        .get("CREDENTIALS_DIRECTORY")
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{what}: CREDENTIALS_DIRECTORY not set"));
    assert_eq!(
        mount_path(c, "credentials"),
        creds_dir,
        "{what}: credentials mount"
    );
    let cred_vol = volume(pod, "credentials");
    assert_eq!(at(cred_vol, "secret.secretName").as_str(), Some("keysweep"));
    let items: Vec<&str> = yaml_seq(cred_vol, "secret.items")
        .iter()
        .map(|i| yaml_str(i, "path"))
        .collect();
    for name in credential_refs(config) {
        assert!(
            items.contains(&name.as_str()),
            "{what}: credential {name} not mounted"
        );
        assert!(
            !secret["stringData"][name.as_str()].is_null(),
            "secret example lacks {name}"
        );
    }

    // Every *_env variable comes from a key the Secret example has.
    let mut refs = BTreeMap::new();
    env_refs(&toml::Value::Table(config.clone()), &mut refs);
    for var in refs.keys() {
        let e = env
            .get(var)
            .unwrap_or_else(|| panic!("{what}: env {var} missing"));
        let key = yaml_str(e, "valueFrom.secretKeyRef.key");
        assert_eq!(yaml_str(e, "valueFrom.secretKeyRef.name"), "keysweep");
        assert!(
            !secret["stringData"][key].is_null(),
            "secret example lacks {key}"
        );
    }

    // SIGTERM leaves the sweep its grace period.
    let grace = duration_secs(config["shutdown_grace"].as_str().unwrap_or("30s"));
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        termination > grace,
        "{what}: terminationGracePeriodSeconds {termination} <= {grace}"
    );
}

#[test]
fn kubernetes_manifests_keep_their_invariants() {
    let objects = k8s_objects();
    let (cm_name, cm_toml) = configmap_tomls()
        .into_iter()
        .next()
        .expect("a ConfigMap with keysweep.toml");
    let config = toml_table(&cm_toml, &cm_name);
    let listen: std::net::SocketAddr = config["server"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "the pod must listen on all interfaces"
    );
    let port = u64::from(listen.port());
    let secret = k8s_object(&objects, "Secret", "keysweep");
    for (k, v) in secret["stringData"].as_mapping().unwrap() {
        let v = v.as_str().unwrap();
        assert!(
            v.starts_with("REPLACE"),
            "secret example holds a value for {k:?}: use a placeholder"
        );
    }

    // Deployment: one replica, never two at once, probes, scrape annotations.
    let dep = k8s_object(&objects, "Deployment", "keysweep");
    assert_eq!(at(dep, "spec.replicas").as_u64(), Some(1));
    assert_eq!(yaml_str(dep, "spec.strategy.type"), "Recreate");
    let pod = pod_spec(dep);
    assert_locked_down("Deployment", pod);
    assert_pod_fits_config("Deployment", pod, &config, secret, &["run"]);
    let c = &yaml_seq(pod, "containers")[0];
    assert!(
        !yaml_seq(c, "args")
            .iter()
            .any(|a| a.as_str() == Some("--once"))
    );
    let port_entry = yaml_seq(c, "ports")
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(port))
        .expect("containerPort = the configured listen port");
    let port_name = yaml_str(port_entry, "name");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(
            yaml_str(c, &format!("{probe}.httpGet.path")),
            path,
            "{probe}"
        );
        let p = at(c, &format!("{probe}.httpGet.port"));
        assert!(
            p.as_str() == Some(port_name) || p.as_u64() == Some(port),
            "{probe} port"
        );
    }
    let annotations = at(dep, "spec.template.metadata.annotations");
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

    // CronJob: one sweep per run, never overlapping.
    let cron = k8s_object(&objects, "CronJob", "keysweep");
    assert_eq!(yaml_str(cron, "spec.concurrencyPolicy"), "Forbid");
    let cpod = pod_spec(cron);
    assert_locked_down("CronJob", cpod);
    assert_pod_fits_config("CronJob", cpod, &config, secret, &["run", "--once"]);
    assert!(matches!(
        cpod["restartPolicy"].as_str(),
        Some("Never" | "OnFailure")
    ));

    // Service: keeps an unready pod scrapeable; ServiceMonitor scrapes /metrics through it.
    let svc = k8s_object(&objects, "Service", "keysweep");
    assert_eq!(
        at(svc, "spec.publishNotReadyAddresses").as_bool(),
        Some(true)
    );
    let sport = &yaml_seq(svc, "spec.ports")[0];
    assert_eq!(sport["port"].as_u64(), Some(port));
    assert_eq!(sport["targetPort"].as_str(), Some(port_name));
    let pod_labels = at(dep, "spec.template.metadata.labels");
    for (k, v) in at(svc, "spec.selector").as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[k.as_str().unwrap()],
            v,
            "Service selector {k:?}"
        );
    }
    let sm = k8s_object(&objects, "ServiceMonitor", "keysweep");
    let ep = &yaml_seq(sm, "spec.endpoints")[0];
    assert_eq!(ep["port"].as_str(), sport["name"].as_str());
    assert_eq!(ep["path"].as_str(), Some("/metrics"));
    let svc_labels = at(svc, "metadata.labels");
    for (k, v) in at(sm, "spec.selector.matchLabels").as_mapping().unwrap() {
        assert_eq!(
            &svc_labels[k.as_str().unwrap()],
            v,
            "ServiceMonitor selector {k:?}"
        );
    }

    // PVC for the state.
    let pvc = k8s_object(&objects, "PersistentVolumeClaim", "keysweep-state");
    assert_eq!(
        yaml_seq(pvc, "spec.accessModes")[0].as_str(),
        Some("ReadWriteOnce")
    );

    // NetworkPolicy: ingress only to the metrics port; egress only DNS, HTTPS, SMTP.
    let np = k8s_object(&objects, "NetworkPolicy", "keysweep");
    let types: BTreeSet<&str> = yaml_seq(np, "spec.policyTypes")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(types, BTreeSet::from(["Ingress", "Egress"]));
    let ports = |rules: &[Yaml]| -> BTreeSet<(u64, String)> {
        rules
            .iter()
            .flat_map(|r| yaml_seq(r, "ports").iter())
            .map(|p| {
                (
                    p["port"].as_u64().unwrap(),
                    p["protocol"].as_str().unwrap_or("TCP").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        ports(yaml_seq(np, "spec.ingress")),
        BTreeSet::from([(port, "TCP".to_string())])
    );
    assert_eq!(
        ports(yaml_seq(np, "spec.egress")),
        BTreeSet::from([
            (53, "UDP".to_string()),
            (53, "TCP".to_string()),
            (443, "TCP".to_string()),
            (587, "TCP".to_string()),
            (465, "TCP".to_string()),
        ])
    );
    for (k, v) in at(np, "spec.podSelector.matchLabels").as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[k.as_str().unwrap()],
            v,
            "NetworkPolicy misses the daemon"
        );
        assert_eq!(
            &at(cron, "spec.jobTemplate.spec.template.metadata.labels")[k.as_str().unwrap()],
            v,
            "NetworkPolicy misses the CronJob"
        );
    }

    // kustomization.yaml installs the daemon only: never the CronJob next to it, never the
    // placeholder Secret.
    let kust = yaml_docs(&repo().join("deploy/kubernetes/kustomization.yaml"));
    let resources: Vec<&str> = yaml_seq(&kust[0], "resources")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    for r in &resources {
        assert!(
            repo().join("deploy/kubernetes").join(r).is_file(),
            "kustomization lists missing {r}"
        );
    }
    assert!(resources.contains(&"deployment.yaml"));
    assert!(
        !resources.contains(&"cronjob.yaml"),
        "the CronJob must not be installed next to the Deployment"
    );
    assert!(!resources.contains(&"secret.example.yaml"));
}

// ---------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------

fn rules_path() -> PathBuf {
    repo().join("deploy/prometheus/keysweep-rules.yml")
}

fn rules() -> Vec<Yaml> {
    let doc = yaml_docs(&rules_path()).remove(0);
    yaml_seq(&doc, "groups")
        .iter()
        .flat_map(|g| yaml_seq(g, "rules").to_vec())
        .collect()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(&repo().join("deploy/grafana/keysweep.json")))
        .unwrap_or_else(|e| panic!("deploy/grafana/keysweep.json: {e}"))
}

/// Every PromQL expression in the dashboard (panel targets and variable queries).
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap_or_default().to_string());
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// One sample in every metric family (the encoder leaves out families without samples).
fn populated_metrics() -> keysweep::metrics::Metrics {
    use keysweep::inventory::OwnerType;
    use keysweep::metrics::{AgeBand, Metrics, NotificationOutcome};
    use keysweep::policy::finding::Stage;
    let m = Metrics::new();
    m.set_keys("org", "proj", OwnerType::User, 1);
    m.set_keys_by_age("org", OwnerType::User, AgeBand::Over365d, 1);
    m.replace_findings("org", &[("policy", Stage::FinalNotice, 1)]);
    m.revocation("org", "deleted");
    m.revocations_withheld("org", "cap_per_run", 1);
    m.notification("channel", NotificationOutcome::Dead);
    m.set_outbox_depth(1, 1);
    m.observe_sweep("org", 1.0, "success");
    m.api_request("org", "GET /organization/projects", 200);
    m.set_last_successful_sweep("org", 1);
    m.schedule_skipped("org", 1);
    m.set_admin_key_expiry("org", "key_admin", 1);
    m.incomplete_listing("org");
    m
}

/// The sample names `/metrics` can carry, from the `# TYPE` lines of a registry with every
/// family populated: a counter `c` is sampled as `c_total`, a histogram `h` as `h_bucket`,
/// `h_sum`, `h_count`.
fn exported_names() -> BTreeSet<String> {
    let text = populated_metrics().encode();
    // A family registered in src/metrics.rs but not populated above would be invisible here.
    let registered = read(&repo().join("src/metrics.rs"))
        .lines()
        .filter(|l| l.trim_start().starts_with("registry.register"))
        .count();
    let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(
        families, registered,
        "populated_metrics() misses a family registered in src/metrics.rs:\n{text}"
    );
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    assert!(names.len() > 5, "no metric families in:\n{text}");
    names
}

fn referenced_names(expr: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\bkeysweep_[a-z0-9_]+").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

#[test]
fn rules_and_dashboard_query_only_metrics_the_daemon_exports() {
    let exported = exported_names();
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    let rule_exprs: Vec<(String, String)> = rules()
        .iter()
        .map(|r| {
            (
                format!("rule {}", yaml_str(r, "alert")),
                yaml_str(r, "expr").to_string(),
            )
        })
        .collect();
    let dash_exprs: Vec<(String, String)> = dashboard_exprs(&dashboard())
        .into_iter()
        .map(|e| ("dashboard".to_string(), e))
        .collect();
    for (what, expr) in rule_exprs.iter().chain(&dash_exprs) {
        for name in referenced_names(expr) {
            if !exported.contains(&name) {
                missing.push(format!("{what}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by keysweep: {missing:?}\nexported: {exported:?}"
    );
    // Stage values queried exist as finding stages.
    let stage_re = regex::Regex::new(r#"stage\s*(?:=~|=|!~|!=)\s*"([^"]+)""#).unwrap();
    for (what, expr) in rule_exprs.iter().chain(&dash_exprs) {
        for cap in stage_re.captures_iter(expr) {
            for stage in cap[1].split('|') {
                assert!(
                    keysweep::policy::finding::Stage::parse(stage).is_some(),
                    "{what}: no finding stage {stage:?}"
                );
            }
        }
    }
    assert!(used.len() >= 10, "suspiciously few metrics used: {used:?}");
}

/// The cases `promtool test rules` runs against the rules (annotations stripped: promtool
/// compares them verbatim, and their wording is not what is under test).
const RULE_TESTS: &str = r#"
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  # Scrapes failing for 15 minutes; a healthy instance next to it stays quiet.
  - interval: 1m
    input_series:
      - series: 'up{job="keysweep", instance="down:9464"}'
        values: '0x30'
      - series: 'up{job="keysweep", instance="ok:9464"}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 10m
        alertname: KeysweepDown
        exp_alerts: []
      - eval_time: 16m
        alertname: KeysweepDown
        exp_alerts:
          - exp_labels: {severity: warning, job: keysweep, instance: "down:9464"}
      - eval_time: 16m
        alertname: KeysweepAbsent
        exp_alerts: []

  # No keysweep target at all.
  - interval: 1m
    input_series:
      - series: 'up{job="node", instance="n:9100"}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 16m
        alertname: KeysweepAbsent
        exp_alerts:
          - exp_labels: {severity: warning, job: keysweep}

  # "stale" last succeeded at t=0 and never again; "fresh" succeeds all the time.
  - interval: 2m
    input_series:
      - series: 'up{job="keysweep", instance="k:9464"}'
        values: '1x500'
      - series: 'keysweep_last_successful_sweep_timestamp_seconds{job="keysweep", instance="k:9464", organization="stale"}'
        values: '0x500'
      - series: 'keysweep_last_successful_sweep_timestamp_seconds{job="keysweep", instance="k:9464", organization="fresh"}'
        values: '0+120x500'
    alert_rule_test:
      - eval_time: 12h
        alertname: KeysweepNoSuccessfulSweep
        exp_alerts: []
      - eval_time: 13h
        alertname: KeysweepNoSuccessfulSweep
        exp_alerts:
          - exp_labels: {severity: critical, job: keysweep, instance: "k:9464", organization: stale}
      - eval_time: 13h
        alertname: KeysweepNeverSucceeded
        exp_alerts: []

  # Up for 13 hours without a single successful sweep.
  - interval: 2m
    input_series:
      - series: 'up{job="keysweep", instance="k:9464"}'
        values: '1x500'
    alert_rule_test:
      - eval_time: 12h
        alertname: KeysweepNeverSucceeded
        exp_alerts: []
      - eval_time: 13h
        alertname: KeysweepNeverSucceeded
        exp_alerts:
          - exp_labels: {severity: critical, job: keysweep, instance: "k:9464"}

  # Counters born with their first event (a labelled series appears on its first increment)
  # fire as well as counters that increase; a counter sitting at 0 does not.
  - interval: 1m
    input_series:
      - series: 'keysweep_sweeps_total{organization="new", outcome="failed"}'
        values: '_ _ 1x30'
      - series: 'keysweep_sweeps_total{organization="old", outcome="failed"}'
        values: '0 0 0 1x30'
      - series: 'keysweep_sweeps_total{organization="old", outcome="success"}'
        values: '0+1x30'
      - series: 'keysweep_incomplete_listings_total{organization="new"}'
        values: '_ _ 1x30'
      - series: 'keysweep_revocations_total{organization="new", outcome="failed"}'
        values: '_ _ 1x30'
      - series: 'keysweep_revocations_total{organization="new", outcome="deleted"}'
        values: '_ _ 1+1x30'
      - series: 'keysweep_schedule_skipped_total{organization="new"}'
        values: '_ _ 2x30'
      - series: 'keysweep_revocations_withheld_total{organization="new", reason="cap_per_run"}'
        values: '_ _ 3x30'
      - series: 'keysweep_revocations_withheld_total{organization="new", reason="dry_run"}'
        values: '_ _ 5+5x30'
      - series: 'keysweep_notifications_total{channel="mail", outcome="dead"}'
        values: '_ _ 1x30'
      - series: 'keysweep_notifications_total{channel="mail", outcome="sent"}'
        values: '_ _ 1+1x30'
      - series: 'keysweep_api_requests_total{organization="new", endpoint="GET /organization/projects", status="401"}'
        values: '_ _ 1x30'
      - series: 'keysweep_api_requests_total{organization="new", endpoint="GET /organization/projects", status="200"}'
        values: '_ _ 1+1x30'
    alert_rule_test:
      - eval_time: 1m
        alertname: KeysweepSweepFailed
        exp_alerts: []
      - eval_time: 5m
        alertname: KeysweepSweepFailed
        exp_alerts:
          - exp_labels: {severity: warning, organization: new, outcome: failed}
          - exp_labels: {severity: warning, organization: old, outcome: failed}
      - eval_time: 5m
        alertname: KeysweepListingIncomplete
        exp_alerts:
          - exp_labels: {severity: warning, organization: new}
      - eval_time: 5m
        alertname: KeysweepRevocationFailed
        exp_alerts:
          - exp_labels: {severity: critical, organization: new, outcome: failed}
      - eval_time: 5m
        alertname: KeysweepSchedulesSkipped
        exp_alerts:
          - exp_labels: {severity: info, organization: new}
      - eval_time: 5m
        alertname: KeysweepEnforcementCapHit
        exp_alerts:
          - exp_labels: {severity: warning, organization: new, reason: cap_per_run}
      - eval_time: 5m
        alertname: KeysweepNotificationsDeadLettered
        exp_alerts:
          - exp_labels: {severity: warning, channel: mail, outcome: dead}
      - eval_time: 5m
        alertname: KeysweepAdminKeyRejected
        exp_alerts:
          - exp_labels: {severity: critical, organization: new, status: "401"}

  # Admin keys expiring in 2, 10 and 30 days.
  - interval: 1m
    input_series:
      - series: 'keysweep_admin_key_expiry_timestamp_seconds{organization="a", admin_key_id="key_2d"}'
        values: '172800x90'
      - series: 'keysweep_admin_key_expiry_timestamp_seconds{organization="b", admin_key_id="key_10d"}'
        values: '864000x90'
      - series: 'keysweep_admin_key_expiry_timestamp_seconds{organization="c", admin_key_id="key_30d"}'
        values: '2592000x90'
    alert_rule_test:
      - eval_time: 1h
        alertname: KeysweepAdminKeyExpiringSoon
        exp_alerts:
          - exp_labels: {severity: warning, organization: a, admin_key_id: key_2d}
          - exp_labels: {severity: warning, organization: b, admin_key_id: key_10d}
      - eval_time: 1h
        alertname: KeysweepAdminKeyExpiringVerySoon
        exp_alerts:
          - exp_labels: {severity: critical, organization: a, admin_key_id: key_2d}

  # One organisation with a third of its requests failing, one without errors.
  - interval: 10m
    input_series:
      - series: 'keysweep_api_requests_total{organization="flaky", endpoint="GET /organization/projects", status="200"}'
        values: '0+10x60'
      - series: 'keysweep_api_requests_total{organization="flaky", endpoint="GET /organization/projects", status="503"}'
        values: '0+5x60'
      - series: 'keysweep_api_requests_total{organization="fine", endpoint="GET /organization/projects", status="200"}'
        values: '0+10x60'
    alert_rule_test:
      - eval_time: 8h
        alertname: KeysweepApiErrors
        exp_alerts:
          - exp_labels: {severity: warning, organization: flaky}

  # Outbox: "a" keeps growing, "b" is stuck but flat; dead letters on "a" from 2h on.
  - interval: 1m
    input_series:
      - series: 'keysweep_outbox_depth{instance="a", state="pending"}'
        values: '1+1x900'
      - series: 'keysweep_outbox_depth{instance="b", state="pending"}'
        values: '3x900'
      - series: 'keysweep_outbox_depth{instance="a", state="dead"}'
        values: '0x120 2x300'
    alert_rule_test:
      - eval_time: 11h
        alertname: KeysweepOutboxGrowing
        exp_alerts: []
      - eval_time: 13h
        alertname: KeysweepOutboxGrowing
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, state: pending}
      - eval_time: 2h30m
        alertname: KeysweepDeadLetters
        exp_alerts: []
      - eval_time: 3h30m
        alertname: KeysweepDeadLetters
        exp_alerts:
          - exp_labels: {severity: info, instance: a, state: dead}
"#;

#[test]
fn alerting_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = which("promtool") else {
        return skip("promtool", "deploy/prometheus/keysweep-rules.yml");
    };
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(rules_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let mut doc: Yaml = serde_norway::from_str(&read(&rules_path())).unwrap();
    let mut names = BTreeSet::new();
    for g in doc["groups"].as_sequence_mut().unwrap() {
        for r in g["rules"].as_sequence_mut().unwrap() {
            names.insert(r["alert"].as_str().unwrap().to_string());
            r.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    std::fs::write(
        dir.path().join("rules.yml"),
        serde_norway::to_string(&doc).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("tests.yml"), RULE_TESTS).unwrap();
    // Every alert has a case that makes it fire.
    let tests: Yaml = serde_norway::from_str(RULE_TESTS).unwrap();
    let fired: BTreeSet<String> = yaml_seq(&tests, "tests")
        .iter()
        .flat_map(|t| yaml_seq(t, "alert_rule_test").to_vec())
        .filter(|a| !yaml_seq(a, "exp_alerts").is_empty())
        .map(|a| yaml_str(&a, "alertname").to_string())
        .collect();
    assert_eq!(fired, names, "alerts without a firing test case");

    let out = Command::new(&promtool)
        .args(["test", "rules", "tests.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alerting_rules_are_complete_for_on_call() {
    let rules = rules();
    assert!(!rules.is_empty());
    for r in &rules {
        let name = yaml_str(r, "alert");
        let severity = yaml_str(r, "labels.severity");
        assert!(
            matches!(severity, "critical" | "warning" | "info"),
            "{name}: severity {severity}"
        );
        for a in ["summary", "description"] {
            assert!(
                !yaml_str(r, &format!("annotations.{a}")).trim().is_empty(),
                "{name}: {a}"
            );
        }
    }
    let exprs: String = rules
        .iter()
        .map(|r| yaml_str(r, "expr"))
        .collect::<Vec<_>>()
        .join("\n");
    // The conditions the issue asks for.
    for needle in [
        "up{job=\"keysweep\"}",
        "absent(up{job=\"keysweep\"})",
        "keysweep_last_successful_sweep_timestamp_seconds",
        "keysweep_incomplete_listings_total",
        "keysweep_outbox_depth{state=\"pending\"}",
        "keysweep_notifications_total{outcome=\"dead\"}",
        "keysweep_admin_key_expiry_timestamp_seconds",
        "keysweep_revocations_total{outcome=\"failed\"}",
    ] {
        assert!(exprs.contains(needle), "no rule on {needle}");
    }
}

#[test]
fn grafana_dashboard_is_well_formed_and_covers_the_metrics() {
    let d = dashboard();
    assert_eq!(d["uid"].as_str(), Some("keysweep"));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"organization"),
        "{vars:?}"
    );

    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id in {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            Some("${datasource}"),
            "{title}"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(
                !t["expr"].as_str().unwrap_or_default().trim().is_empty(),
                "{title}: empty query"
            );
        }
    }
    let exprs = dashboard_exprs(&d).join("\n");
    for needle in [
        "keysweep_keys_by_age",
        "keysweep_keys{",
        "keysweep_findings",
        "stage=\"final_notice\"",
        "keysweep_revocations_total",
        "keysweep_notifications_total",
        "keysweep_sweep_duration_seconds_bucket",
        "keysweep_api_requests_total",
    ] {
        assert!(
            exprs.contains(needle),
            "the dashboard shows nothing of {needle}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Coverage of the kit itself
// ---------------------------------------------------------------------------------------------

/// Every file under `config/` and `deploy/` is of a kind a test above checks; a new kind of
/// file fails here until a check for it is added.
#[test]
fn every_shipped_file_is_checked() {
    let mut unchecked = Vec::new();
    for f in shipped_files() {
        let r = rel(&f);
        let covered = has_ext(&f, &["toml"]) // check-config
            || has_ext(&f, &["json"]) && serde_json::from_str::<serde_json::Value>(&read(&f)).is_ok()
            || has_ext(&f, &["yaml", "yml"]) && !yaml_docs(&f).is_empty()
            || matches!(
                r.as_str(),
                "deploy/systemd/keysweep.service"
                    | "deploy/systemd/keysweep.env.example"
                    | "deploy/container/Dockerfile"
                    | "deploy/container/Dockerfile.dockerignore"
                    | "deploy/README.md"
            );
        if !covered {
            unchecked.push(r);
        }
    }
    assert!(unchecked.is_empty(), "no test checks {unchecked:?}");
    // And the README names every file it describes.
    let readme = read(&repo().join("deploy/README.md"));
    for f in files_under(&repo().join("deploy")) {
        let r = rel(&f);
        if r != "deploy/README.md" {
            let name = r.trim_start_matches("deploy/");
            assert!(
                readme.contains(name),
                "deploy/README.md does not mention {name}"
            );
        }
    }
}
