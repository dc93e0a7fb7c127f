//! The shipped configurations: every `*.toml` under `config/` and `deploy/`, and the TOML in
//! the Kubernetes ConfigMap, pass `keysweep check-config`; `config/keysweep.example.toml` names
//! every key the loader accepts and shows the real defaults. Never uses a real secret.

use std::collections::BTreeSet;

use super::kit::{
    check_config, configmap_tomls, effective, has_ext, read, rel, repo, shipped_files,
};

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
