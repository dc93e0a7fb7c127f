//! The checks on synthetic crates: each rule fires on a source that breaks it and stays quiet on
//! one that keeps it, so a check that silently stopped looking would fail here.

use super::lex::{Tok, lex};
use super::resolve::Crate;
use super::rules;

fn krate(files: &[(&str, &str)]) -> Crate {
    let mut all: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    if !files.iter().any(|(p, _)| *p == "lib.rs") {
        all.push(("lib.rs".into(), String::new()));
    }
    Crate::new(&all)
}

#[test]
fn the_lexer_keeps_comments_and_strings_out_of_code() {
    let toks =
        lex("// use tokio;\n/* std::fs /* nested */ */ let s = r#\"a \"q\" b\"#; 'a'; '\\''; x::y");
    let idents: Vec<&str> = toks.iter().filter_map(|t| t.ident()).collect();
    assert_eq!(idents, ["let", "s", "x", "y"]);
    assert!(toks.iter().any(|t| t.tok == Tok::Str("a \"q\" b".into())));
    assert_eq!(toks.last().unwrap().line, 2);
}

#[test]
fn a_cycle_is_found_in_every_path_form() {
    // crate:: one way, super:: the other.
    let c = krate(&[
        ("lib.rs", "pub mod a;\npub mod b;"),
        ("a.rs", "use crate::b::B;\npub struct A;"),
        ("b.rs", "pub struct B;\nfn f() -> super::a::A { todo!() }"),
    ]);
    assert_eq!(
        rules::import_cycles(&c).len(),
        1,
        "{:?}",
        rules::import_cycles(&c)
    );
    // A child's relative path from the parent, self:: and an alias of a module from the child.
    let c = krate(&[
        ("lib.rs", "pub mod p;"),
        (
            "p/mod.rs",
            "mod kid;\npub struct Shared;\nfn f() { kid::work(); }",
        ),
        (
            "p/kid.rs",
            "use crate::p as parent;\npub fn work() -> parent::Shared { todo!() }",
        ),
    ]);
    assert_eq!(rules::import_cycles(&c).len(), 1);
    let c = krate(&[
        ("lib.rs", "pub mod p;"),
        (
            "p/mod.rs",
            "mod kid;\npub struct Shared;\nfn f() { self::kid::work(); }",
        ),
        (
            "p/kid.rs",
            "use super::*;\npub fn work() -> Shared { todo!() }",
        ),
    ]);
    assert_eq!(rules::import_cycles(&c).len(), 1, "glob import");
}

#[test]
fn a_declaration_or_a_re_export_alone_is_no_import() {
    let c = krate(&[
        ("lib.rs", "pub mod p;"),
        (
            "p/mod.rs",
            "mod kid;\npub use kid::work;\npub struct Shared;",
        ),
        (
            "p/kid.rs",
            "use super::Shared;\npub fn work() -> Shared { todo!() }",
        ),
    ]);
    assert!(
        rules::import_cycles(&c).is_empty(),
        "{:?}",
        rules::import_cycles(&c)
    );
    // A path through the re-export names the defining file.
    let c = krate(&[
        ("lib.rs", "pub mod p;\npub mod q;"),
        ("p/mod.rs", "mod kid;\npub use kid::work;"),
        ("p/kid.rs", "pub fn work() { crate::q::other(); }"),
        ("q.rs", "pub fn other() { crate::p::work(); }"),
    ]);
    let cycles = rules::import_cycles(&c);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].contains("src/p/kid.rs <-> src/q.rs"),
        "{cycles:?}"
    );
}

#[test]
fn policy_io_and_clocks_are_found() {
    for bad in [
        "use tokio::sync::Mutex;",
        "fn f() { let _ = reqwest::Client::new(); }",
        "fn f(c: &rusqlite::Connection) {}",
        "use std::fs;",
        "use std::{fs::read, io};",
        "fn f() { std::fs::read(\"x\"); }",
        "fn f() -> i64 { chrono::Utc::now().timestamp() }",
        "use std::time::SystemTime;",
        "fn f() { let _ = std::time::Instant::now(); }",
        "async fn f() {}",
    ] {
        let c = krate(&[("lib.rs", "pub mod policy;"), ("policy/mod.rs", bad)]);
        assert!(!rules::policy_is_pure(&c).is_empty(), "not caught: {bad}");
    }
    let ok = "// tokio and Utc::now() in a comment\nfn f(now: i64) -> String { \"tokio\".into() }";
    let c = krate(&[
        ("policy/rules.rs", ok),
        ("lib.rs", "pub mod policy;"),
        ("policy/mod.rs", "mod rules;"),
    ]);
    assert!(rules::policy_is_pure(&c).is_empty());
}

#[test]
fn sim_naming_openai_is_found() {
    let files = |sim: &'static str| {
        krate(&[
            ("lib.rs", "pub mod openai;\npub mod sim;"),
            ("openai/mod.rs", "pub mod types;"),
            ("openai/types.rs", "pub struct ApiKey;"),
            ("sim/mod.rs", sim),
        ])
    };
    for bad in [
        "use crate::openai::types::ApiKey;",
        "fn f(_: super::openai::types::ApiKey) {}",
        "use crate::openai;",
    ] {
        assert!(
            !rules::sim_never_imports_openai(&files(bad)).is_empty(),
            "not caught: {bad}"
        );
    }
    assert!(
        rules::sim_never_imports_openai(&files("// crate::openai\npub struct Own;")).is_empty()
    );
}

#[test]
fn exposing_the_admin_key_outside_openai_is_found() {
    let files = |rel: &'static str, text: &'static str| krate(&[(rel, text)]);
    for bad in [
        "fn f(o: &OrgConfig) -> String { o.admin_key.expose_secret().to_string() }",
        "fn f(o: &OrgConfig) { let k = &o.admin_key; let s = k.expose_secret(); }",
        "fn f(o: &OrgConfig) { ExposeSecret::expose_secret(&o.admin_key); }",
    ] {
        let c = files("app.rs", bad);
        assert!(
            !rules::admin_key_exposed_only_in_openai(&c).is_empty(),
            "not caught: {bad}"
        );
        let c = files("openai/client.rs", bad);
        assert!(
            rules::admin_key_exposed_only_in_openai(&c).is_empty(),
            "openai/ may: {bad}"
        );
    }
    let other =
        "fn f(w: &WebhookChannel, o: &OrgConfig) { let n = &o.name; w.secret.expose_secret(); }";
    assert!(rules::admin_key_exposed_only_in_openai(&files("notify/webhook.rs", other)).is_empty());
}

#[test]
fn unsafe_outside_malloc_is_found() {
    for bad in [
        "fn f() { unsafe { g() } }",
        "unsafe fn f() {}",
        "#[allow(unsafe_code)]\nfn f() {}",
    ] {
        let c = krate(&[("lib.rs", "pub mod sink;"), ("sink.rs", bad)]);
        assert!(
            !rules::unsafe_only_in_malloc(&c).is_empty(),
            "not caught: {bad}"
        );
        let c = krate(&[("lib.rs", "pub mod malloc;"), ("malloc.rs", bad)]);
        assert!(rules::unsafe_only_in_malloc(&c).is_empty(), "{bad}");
    }
    let ok = "// unsafe in a comment\nfn f() -> &'static str { \"unsafe\" }";
    let c = krate(&[("sink.rs", ok)]);
    assert!(rules::unsafe_only_in_malloc(&c).is_empty());
}

#[test]
fn sql_outside_state_is_found() {
    for bad in [
        "fn f(c: &Connection) { c.execute(\"UPDATE outbox SET status = 'sent' WHERE id = ?1\", []); }",
        "const Q: &str = r\"SELECT id FROM outbox\";",
        "const Q: &str = \"INSERT OR IGNORE INTO outbox (a) VALUES (?1)\";",
        "const Q: &str = \"DELETE FROM alerts WHERE k = ?1\";",
        "fn f(c: &Connection) { c.query_row(\"select 1\", [], |r| r.get(0)); }",
        "fn f(c: &Connection) { c.execute_batch(SCHEMA); }",
        "fn f(c: &Connection) { c.pragma_update(None, \"synchronous\", \"FULL\"); }",
    ] {
        let c = krate(&[("notify/outbox.rs", bad)]);
        assert!(
            !rules::sql_only_in_state(&c).is_empty(),
            "not caught: {bad}"
        );
        let c = krate(&[("state/outbox.rs", bad)]);
        assert!(rules::sql_only_in_state(&c).is_empty(), "state/ may: {bad}");
    }
    let prose = "const A: &str = \"DELETE /organization/projects/{id}\"; \
                 const B: &str = \"CREATED (AGE)\"; fn f() { revoke::execute(1); }";
    assert!(rules::sql_only_in_state(&krate(&[("openai/client.rs", prose)])).is_empty());
}

#[test]
fn long_production_files_are_found_and_test_code_is_not_counted() {
    let long = "fn f() {}\n".repeat(rules::MAX_PRODUCTION_LINES + 1);
    let c = krate(&[("lib.rs", "pub mod big;"), ("big.rs", &long)]);
    assert_eq!(rules::production_file_lengths(&c).len(), 1);

    let exactly = "fn f() {}\n".repeat(rules::MAX_PRODUCTION_LINES);
    let with_tests = format!("{exactly}#[cfg(test)]\nmod tests {{\n{long}}}\n");
    let c = krate(&[("lib.rs", "pub mod big;"), ("big.rs", &with_tests)]);
    assert!(
        rules::production_file_lengths(&c).is_empty(),
        "{:?}",
        rules::production_file_lengths(&c)
    );

    // Files declared under #[cfg(test)] — a tests/ folder, fuzz.rs — and their children.
    let c = krate(&[
        ("lib.rs", "pub mod p;"),
        (
            "p/mod.rs",
            "#[cfg(test)]\nmod fuzz;\n#[cfg(test)]\nmod tests;",
        ),
        ("p/fuzz.rs", &long),
        ("p/tests/mod.rs", "mod props;"),
        ("p/tests/props.rs", &long),
    ]);
    assert!(
        rules::production_file_lengths(&c).is_empty(),
        "{:?}",
        rules::production_file_lengths(&c)
    );
}

#[test]
fn the_whole_config_reaching_a_narrow_module_is_found() {
    let files = |rel: &'static str, text: &'static str| {
        krate(&[
            ("lib.rs", "pub mod config;\npub mod notify;\npub mod ops;"),
            (
                "config/mod.rs",
                "pub struct Config;\npub struct OrgConfig;\npub struct ChannelConfig;",
            ),
            ("notify/mod.rs", "pub mod deliver;\npub mod settings;"),
            (rel, text),
        ])
    };
    for (rel, bad) in [
        ("notify/deliver.rs", "use crate::config::Config;"),
        ("notify/deliver.rs", "fn f(c: &crate::config::Config) {}"),
        (
            "notify/settings.rs",
            "use crate::config::{Config, OrgConfig};",
        ),
        ("ops.rs", "use crate::config::OrgConfig;"),
    ] {
        assert!(
            !rules::config_reaches_only_what_needs_it(&files(rel, bad)).is_empty(),
            "not caught: {rel}: {bad}"
        );
    }
    for (rel, ok) in [
        (
            "notify/settings.rs",
            "use crate::config::{ChannelConfig, Config};",
        ),
        (
            "notify/deliver.rs",
            "use crate::config::ChannelConfig;\n// the whole Config never",
        ),
    ] {
        assert!(
            rules::config_reaches_only_what_needs_it(&files(rel, ok)).is_empty(),
            "{rel}: {ok}"
        );
    }
}

#[test]
fn a_forbidden_dependency_is_found() {
    let c = krate(&[
        ("lib.rs", "pub mod notify;\npub mod state;"),
        ("notify/mod.rs", "pub mod alert;"),
        ("notify/alert.rs", "pub enum EnforcerAlert { KillSwitchOn }"),
        ("state/mod.rs", "pub mod alerts;"),
        (
            "state/alerts.rs",
            "use crate::notify::alert::EnforcerAlert;",
        ),
    ]);
    let found = rules::forbidden_dependencies(&c);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("src/state/alerts.rs:1"), "{found:?}");
    // The other way round is the intended direction.
    let c = krate(&[
        ("lib.rs", "pub mod notify;\npub mod state;"),
        ("notify/mod.rs", "use crate::state::StateError;"),
        ("state/mod.rs", "pub enum StateError {}"),
    ]);
    assert!(rules::forbidden_dependencies(&c).is_empty());
}
