//! The codemap's boundaries, enforced: reads every source file under `src/` as text and fails
//! when a module uses what ARCHITECTURE.md forbids (in the spirit of rust-analyzer's tidy tests).
//!
//! - `policy/` names no tokio, reqwest, rusqlite, `std::fs` or clock (`Utc::now`, `Local::now`,
//!   `SystemTime`, `Instant`) and is not async;
//! - `sim/` names nothing in `openai/`;
//! - `expose_secret` is never called on the admin key outside `openai/`;
//! - SQL (a statement in a string literal, or a rusqlite call that runs one) only in `state/`;
//! - `policy/`, `notify/`, `state/` and `ops.rs` never name `config::OrgConfig` (it holds the
//!   admin key), nor the whole `config::Config` except `notify/settings.rs`, where notify's
//!   settings are built from it;
//! - `policy/` names nothing in `state/`, `notify/`, `openai/`, `sweep/`, `revoke.rs` or
//!   `daemon/`; `state/` nothing in `notify/`, `openai/`, `sweep/` or `revoke.rs`; `notify/`
//!   nothing in `openai/`, `sweep/` or `revoke.rs`;
//! - `unsafe` only in `malloc.rs` (one FFI call);
//! - no import cycle between two files;
//! - no production source file over 800 lines;
//! - nothing at the top of the repository but the fixed layout.
//!
//! This test must never need the crate's internals or a new dependency: it parses text.

mod lex;
mod parse;
mod resolve;
mod rules;
mod selftest;

use std::path::{Path, PathBuf};

use resolve::Crate;

fn collect(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap();
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The library as it is on disk.
fn sources() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &src, &mut files);
    assert!(
        files.len() > 20,
        "read only {} files under {}",
        files.len(),
        src.display()
    );
    Crate::new(&files)
}

fn assert_holds(rule: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{rule}: {} violation(s)\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

#[test]
fn policy_does_no_io_reads_no_clock_and_is_not_async() {
    assert_holds("policy/ is pure", rules::policy_is_pure(&sources()));
}

#[test]
fn sim_never_imports_openai() {
    assert_holds(
        "sim/ never imports openai/",
        rules::sim_never_imports_openai(&sources()),
    );
}

#[test]
fn the_admin_key_is_exposed_only_in_openai() {
    assert_holds(
        "admin key exposed only in openai/",
        rules::admin_key_exposed_only_in_openai(&sources()),
    );
}

#[test]
fn sql_runs_only_in_state() {
    assert_holds("SQL only in state/", rules::sql_only_in_state(&sources()));
}

#[test]
fn only_their_part_of_the_configuration_reaches_policy_notify_state_and_ops() {
    assert_holds(
        "config reaches only what needs it",
        rules::config_reaches_only_what_needs_it(&sources()),
    );
}

#[test]
fn dependencies_go_one_way() {
    assert_holds(
        "forbidden dependencies",
        rules::forbidden_dependencies(&sources()),
    );
}

#[test]
fn unsafe_code_only_in_malloc() {
    assert_holds(
        "unsafe only in malloc.rs",
        rules::unsafe_only_in_malloc(&sources()),
    );
}

#[test]
fn no_import_cycle_between_files() {
    assert_holds("no import cycles", rules::import_cycles(&sources()));
}

#[test]
fn no_production_file_over_800_lines() {
    assert_holds("file length", rules::production_file_lengths(&sources()));
}

/// The top of the repository holds the fixed layout and nothing else.
const LAYOUT: [&str; 12] = [
    ".ci",
    ".gitignore",
    "ARCHITECTURE.md",
    "Cargo.lock",
    "Cargo.toml",
    "README.md",
    "benches",
    "clippy.toml",
    "config",
    "deploy",
    "src",
    "tests",
];

/// What a commit of everything would put at the top of the repository: the tracked entries and
/// the untracked ones git does not ignore (a tool's default output directory, say). Outside a
/// git checkout, what is on disk but `target/`.
fn top_level_entries() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = std::process::Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "-z",
        ])
        .current_dir(root)
        .output();
    let mut names: Vec<String> = match git {
        Ok(out) if out.status.success() && root.join(".git").exists() => (out.stdout)
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| {
                String::from_utf8_lossy(p)
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect(),
        _ => (std::fs::read_dir(root).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "target" && n != ".git")
            .collect(),
    };
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_top_level_holds_only_the_fixed_layout() {
    let entries = top_level_entries();
    let stray: Vec<String> = (entries.iter())
        .filter(|e| !LAYOUT.contains(&e.as_str()))
        .map(|e| format!("{e} is not part of the fixed layout"))
        .collect();
    assert_holds("top level", stray);
    for needed in ["Cargo.toml", "src", "tests", "README.md", "ARCHITECTURE.md"] {
        assert!(
            entries.iter().any(|e| e == needed),
            "{needed} not seen: {entries:?}"
        );
    }
}

/// Every `.rs` file under `dir`, with its path relative to the repository's top.
fn rust_files(dir: &Path, out: &mut Vec<(String, String)>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    collect(dir, root, out);
}

/// A property test's failures are kept beside its source (`FileFailurePersistence::WithSource`),
/// never in proptest's default `proptest-regressions/` at the top of the repository, which
/// `the_top_level_holds_only_the_fixed_layout` refuses: a failing property test must not also
/// leave the build failing for another reason.
#[test]
fn every_property_test_keeps_its_failures_beside_its_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    let macro_name = concat!("proptest", "!");
    let mut blocks = 0;
    let mut violations = Vec::new();
    for (path, text) in files
        .iter()
        .filter(|(p, _)| !p.starts_with("tests/it/architecture"))
    {
        for (at, _) in text.match_indices(macro_name) {
            let Some(body) = text[at + macro_name.len()..].trim_start().strip_prefix('{') else {
                continue;
            };
            blocks += 1;
            // The block's own configuration: its first inner attribute (after any line
            // comments), up to its `)]`.
            let mut body = body.trim_start();
            while body.starts_with("//") {
                body = body[body.find('\n').unwrap_or(body.len())..].trim_start();
            }
            let config = body.strip_prefix("#![proptest_config(").unwrap_or("");
            let config = &config[..config.find(")]").unwrap_or(0)];
            if !(config.contains("failure_persistence:")
                && config.contains("FileFailurePersistence::WithSource"))
            {
                let line = text[..at].lines().count() + 1;
                violations.push(format!("{path}:{line}: a property test without WithSource"));
            }
        }
    }
    assert!(blocks >= 5, "saw only {blocks} property tests");
    assert_holds("property-test failures", violations);
}

/// The model itself sees the crate: a check that reads nothing would pass every rule.
#[test]
fn the_model_sees_the_crate() {
    let c = sources();
    let deliver = c.file("notify/deliver.rs").unwrap();
    let mod_rs = c.file("notify/mod.rs").unwrap();
    assert!(
        c.edges()
            .iter()
            .any(|e| e.from == deliver && e.to == mod_rs),
        "notify/deliver.rs names notify/mod.rs items (MessageKind)"
    );
    for test_only in [
        "policy/tests/mod.rs",
        "policy/tests/props.rs",
        "config/fuzz.rs",
    ] {
        let fi = c.file(test_only).unwrap();
        assert!(c.test_files.contains(&fi), "{test_only} is test-only");
    }
    assert!(!c.test_files.contains(&c.file("sweep/mod.rs").unwrap()));
}
