//! What every deploy test reads: the repository's `config/` and `deploy/` files, YAML and TOML
//! accessors, the dummy secrets a shipped configuration needs, and `keysweep check-config` run
//! on a file. Reads only; never writes into the repository, never uses a real secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value as Yaml;

use crate::support::process::keysweep_blocking;

pub(super) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(super) fn keysweep_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keysweep"))
}

pub(super) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
pub(super) fn files_under(dir: &Path) -> Vec<PathBuf> {
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

pub(super) fn shipped_files() -> Vec<PathBuf> {
    let mut all = files_under(&repo().join("config"));
    all.extend(files_under(&repo().join("deploy")));
    all
}

pub(super) fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

pub(super) fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

/// All documents of a YAML file (`---`-separated), empty documents dropped.
pub(super) fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", rel(path)))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `v[a][b]…`, where a number indexes a sequence.
pub(super) fn at<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    cur
}

pub(super) fn yaml_str<'a>(v: &'a Yaml, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

pub(super) fn yaml_seq<'a>(v: &'a Yaml, path: &str) -> &'a [Yaml] {
    at(v, path)
        .as_sequence()
        .map(|s| s.as_slice())
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

/// Every Kubernetes object under `deploy/kubernetes`, with the file it came from.
pub(super) fn k8s_objects() -> Vec<(String, Yaml)> {
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

/// The TOML documents embedded in ConfigMaps (data keys ending in `.toml`), by "file#key".
pub(super) fn configmap_tomls() -> Vec<(String, String)> {
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

pub(super) fn toml_table(text: &str, what: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{what}: invalid TOML: {e}"))
}

/// Every string value of a key ending in `_env` (the environment variables a configuration
/// reads secrets from), with the key's name.
pub(super) fn env_refs(v: &toml::Value, out: &mut BTreeMap<String, String>) {
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
pub(super) fn credential_refs(t: &toml::Table) -> Vec<String> {
    t.get("organizations")
        .and_then(|o| o.as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("admin_key_credential")?.as_str().map(String::from))
        .collect()
}

pub(super) fn duration_secs(s: &str) -> u64 {
    keysweep::config::parse_duration(s)
        .unwrap_or_else(|e| panic!("{e}"))
        .as_secs()
}

/// A clean environment with a dummy value for every secret a configuration refers to: the
/// default admin key variable, every `*_env` variable, and a credentials directory holding a
/// file per `admin_key_credential`. Values are distinctive so a leak into output is caught.
pub(super) struct DummySecrets {
    pub(super) env: Vec<(String, String)>,
    _creds: tempfile::TempDir,
}

impl DummySecrets {
    pub(super) fn for_config(t: &toml::Table) -> DummySecrets {
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
                "secret_env" => crate::support::secrets::whsec(b"DUMMY webhook secret"),
                "webhook_url_env" => format!("https://hooks.invalid/DUMMY-{var}"),
                _ => format!("DUMMY-secret-{var}"),
            };
            env.push((var, value));
        }
        DummySecrets { env, _creds: creds }
    }

    pub(super) fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.env
            .iter()
            .filter(|(k, _)| k != "CREDENTIALS_DIRECTORY")
            .map(|(_, v)| v.as_str())
    }
}

/// Runs `keysweep check-config --config path` in a clean environment with dummy secrets.
pub(super) fn check_config(path: &Path, what: &str) -> Result<String, String> {
    let table = toml_table(&read(path), what);
    let secrets = DummySecrets::for_config(&table);
    let out = keysweep_blocking()
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
pub(super) fn effective(path: &Path, what: &str) -> toml::Table {
    let out = check_config(path, what).unwrap_or_else(|e| panic!("{e}"));
    toml_table(&out, &format!("effective configuration of {what}"))
}

pub(super) fn rules_path() -> PathBuf {
    repo().join("deploy/prometheus/keysweep-rules.yml")
}

pub(super) fn rules() -> Vec<Yaml> {
    let doc = yaml_docs(&rules_path()).remove(0);
    yaml_seq(&doc, "groups")
        .iter()
        .flat_map(|g| yaml_seq(g, "rules").to_vec())
        .collect()
}

pub(super) fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(&repo().join("deploy/grafana/keysweep.json")))
        .unwrap_or_else(|e| panic!("deploy/grafana/keysweep.json: {e}"))
}

/// Every PromQL expression in the dashboard (panel targets and variable queries).
pub(super) fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
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

/// The configuration's `server.listen`, which must be all interfaces (a container or a pod is
/// reached from outside); `what` names the configuration in the message.
pub(super) fn listen_on_all_interfaces(config: &toml::Table, what: &str) -> std::net::SocketAddr {
    let listen: std::net::SocketAddr = config["server"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        listen.ip().is_unspecified(),
        "{what} must listen on all interfaces (0.0.0.0)"
    );
    listen
}

/// A project `proj_1` of `acme` with one user key `key_1` that expires as given, tallied as a
/// sweep tallies it at `now`: what the metrics families are fed in the deploy checks.
pub fn one_key_project(
    expires_at: keysweep::inventory::Expiry,
    now: i64,
) -> keysweep::inventory::ProjectInventory<keysweep::inventory::KeyTally> {
    use keysweep::inventory::{
        Key, KeyTally, Listing, Owner, OwnerAccess, OwnerType, ProjectInventory, ProjectRef,
    };
    let key = Key {
        organization: "acme".into(),
        project_id: "proj_1".into(),
        project_name: None,
        id: "key_1".into(),
        name: "ci".into(),
        redacted_value: "sk-...abcd".into(),
        created_at: 0,
        last_used_at: None,
        last_used_unknown: false,
        owner: Owner {
            kind: OwnerType::User,
            id: None,
            name: None,
            email: None,
        },
        owner_access: OwnerAccess::Active,
        expires_at,
    };
    ProjectInventory {
        project: ProjectRef {
            organization: "acme".into(),
            id: "proj_1".into(),
            name: None,
            archived: false,
        },
        keys: KeyTally::of(&[key], now),
        listing: Listing::Complete,
    }
}
