//! The boundaries ARCHITECTURE.md promises, as checks over the parsed sources. Each returns one
//! line per violation (`file:line: what`), empty when the rule holds.
//!
//! A check must never pass by not looking: each has a test in `selftest.rs` that feeds it a
//! synthetic crate breaking the rule and expects a violation.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use super::lex::{Tok, Token};
use super::resolve::Crate;

/// Longest production source file, in lines (test-only code excluded).
pub const MAX_PRODUCTION_LINES: usize = 800;

/// What `policy/` must never name: runtimes, the network, the database and clocks.
const POLICY_FORBIDDEN: &[&str] = &["tokio", "reqwest", "rusqlite", "SystemTime", "Instant"];

/// rusqlite methods that run SQL; called on anything outside `state/`, they are SQL there.
const SQL_METHODS: &[&str] = &[
    "execute_batch",
    "prepare",
    "prepare_cached",
    "query_row",
    "query_map",
    "pragma_update",
    "pragma_query",
    "pragma_query_value",
    "last_insert_rowid",
];

/// A string literal that is an SQL statement. Keywords are matched in capitals, as this crate
/// writes SQL; lower-case SQL still shows up through [`SQL_METHODS`].
static SQL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?s)^\s*(SELECT\s+(.+\sFROM\s|\d|\*)|INSERT\s+(OR\s+\w+\s+)?INTO\s|REPLACE\s+INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|CREATE\s+(TEMP\s+|TEMPORARY\s+|UNIQUE\s+)?(TABLE|INDEX|TRIGGER|VIEW)\s|DROP\s+(TABLE|INDEX|TRIGGER|VIEW)\s|ALTER\s+TABLE\s|PRAGMA\s+\w|WITH\s+(RECURSIVE\s+)?\w+.*\sAS\s*\(|BEGIN(\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?(\s+TRANSACTION)?\s*;?\s*$|(COMMIT|ROLLBACK)\s*;?\s*$|SAVEPOINT\s)",
    )
    .unwrap()
});

fn under(c: &Crate, fi: usize, dir: &str) -> bool {
    c.files[fi].rel.starts_with(&format!("{dir}/"))
}

fn at(c: &Crate, fi: usize, line: usize) -> String {
    format!("src/{}:{line}", c.files[fi].rel)
}

/// Two files each naming an item defined in the other.
pub fn import_cycles(c: &Crate) -> Vec<String> {
    let mut first: BTreeMap<(usize, usize), (usize, String)> = BTreeMap::new();
    for e in c.edges() {
        first.entry((e.from, e.to)).or_insert((e.line, e.path));
    }
    let mut out = Vec::new();
    for (&(a, b), (line, path)) in &first {
        if a < b
            && let Some((back_line, back_path)) = first.get(&(b, a))
        {
            out.push(format!(
                "import cycle src/{} <-> src/{}: {} names {path}; {} names {back_path}",
                c.files[a].rel,
                c.files[b].rel,
                at(c, a, *line),
                at(c, b, *back_line),
            ));
        }
    }
    out
}

/// `policy/` does no I/O, reads no clock and is not async.
pub fn policy_is_pure(c: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    for (fi, f) in c.files.iter().enumerate() {
        if !under(c, fi, "policy") {
            continue;
        }
        for (i, t) in f.tokens.iter().enumerate() {
            let Some(word) = t.ident() else { continue };
            let path_before = |n: usize| preceding_path_segment(&f.tokens, i, n);
            let what = if POLICY_FORBIDDEN.contains(&word) {
                Some(format!("uses {word}"))
            } else if word == "async" || word == "await" {
                Some(format!("is async ({word})"))
            } else if word == "fs" && path_before(1).as_deref() == Some("std") {
                Some("uses std::fs".to_string())
            } else if word == "now" && matches!(path_before(1).as_deref(), Some("Utc" | "Local")) {
                Some("reads the clock (::now)".to_string())
            } else {
                None
            };
            if let Some(what) = what {
                out.push(format!("{}: policy/ {what}", at(c, fi, t.line)));
            }
        }
        for u in &f.uses {
            if u.path.starts_with(&["std".to_string(), "fs".to_string()]) {
                out.push(format!("{}: policy/ uses std::fs", at(c, fi, u.line)));
            }
        }
    }
    out
}

/// The identifier `n` path segments before token `i` (`std` for `fs` in `std::fs`).
fn preceding_path_segment(tokens: &[Token], i: usize, n: usize) -> Option<String> {
    let j = i.checked_sub(2 * n)?;
    if tokens[j + 1].tok != Tok::PathSep {
        return None;
    }
    tokens[j].ident().map(str::to_string)
}

/// `sim/` is a second reading of the spec: it never names anything in `openai/`.
pub fn sim_never_imports_openai(c: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.edges() {
        if under(c, e.from, "sim") && under(c, e.to, "openai") {
            out.push(format!(
                "{}: sim/ names {} (openai/)",
                at(c, e.from, e.line),
                e.path
            ));
        }
    }
    for (fi, f) in c
        .files
        .iter()
        .enumerate()
        .filter(|&(fi, _)| under(c, fi, "sim"))
    {
        let written = f.uses.iter().map(|u| (u.scope, &u.path, u.line));
        let paths = f.paths.iter().map(|p| (p.scope, &p.segments, p.line));
        for (scope, path, line) in written.chain(paths) {
            if c.absolute(fi, scope, path)
                .is_some_and(|a| a.first().is_some_and(|s| s == "openai"))
            {
                out.push(format!(
                    "{}: sim/ names {}",
                    at(c, fi, line),
                    path.join("::")
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The admin key is exposed only inside `openai/`: outside it, no statement calls
/// `expose_secret` on an expression that mentions `admin_key` (or a local bound from one).
pub fn admin_key_exposed_only_in_openai(c: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    for (fi, f) in c.files.iter().enumerate() {
        if under(c, fi, "openai") {
            continue;
        }
        let statements = statements(&f.tokens);
        let mut tainted = vec!["admin_key".to_string()];
        // Twice, so a binding from a binding is caught too.
        for _ in 0..2 {
            for s in &statements {
                if s.first().is_some_and(|t| t.is_ident("let")) && mentions(s, &tainted) {
                    tainted.extend(let_bindings(s));
                }
            }
        }
        for s in &statements {
            if let Some(call) = s.iter().find(|t| t.is_ident("expose_secret"))
                && mentions(s, &tainted)
            {
                out.push(format!(
                    "{}: expose_secret on the admin key outside openai/",
                    at(c, fi, call.line)
                ));
            }
        }
    }
    out
}

fn statements(tokens: &[Token]) -> Vec<&[Token]> {
    tokens
        .split(|t| t.is_punct(';') || t.is_punct('{') || t.is_punct('}'))
        .filter(|s| !s.is_empty())
        .collect()
}

fn mentions(statement: &[Token], names: &[String]) -> bool {
    statement
        .iter()
        .any(|t| t.ident().is_some_and(|w| names.iter().any(|n| n == w)))
}

/// The names a `let` statement binds (identifiers before its `=`).
fn let_bindings(statement: &[Token]) -> Vec<String> {
    statement[1..]
        .iter()
        .take_while(|t| !t.is_punct('=') && !t.is_punct(':'))
        .filter_map(Token::ident)
        .filter(|w| *w != "mut" && *w != "ref")
        .map(str::to_string)
        .collect()
}

/// SQL runs only in `state/`: no SQL statement in a string literal and no rusqlite call that
/// runs SQL anywhere else.
pub fn sql_only_in_state(c: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    for (fi, f) in c.files.iter().enumerate() {
        if under(c, fi, "state") {
            continue;
        }
        for (i, t) in f.tokens.iter().enumerate() {
            match &t.tok {
                Tok::Str(s) if SQL.is_match(s) => {
                    let first = s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
                    out.push(format!(
                        "{}: SQL outside state/ ({first} …)",
                        at(c, fi, t.line)
                    ));
                }
                Tok::Ident(w)
                    if SQL_METHODS.contains(&w.as_str())
                        && i > 0
                        && f.tokens[i - 1].is_punct('.')
                        && f.tokens.get(i + 1).is_some_and(|n| n.is_punct('(')) =>
                {
                    out.push(format!(
                        "{}: SQL outside state/ (.{w}(…))",
                        at(c, fi, t.line)
                    ));
                }
                _ => {}
            }
        }
    }
    out
}

/// The one file allowed `unsafe` code: one FFI call to glibc's `mallopt`.
const UNSAFE_FILE: &str = "malloc.rs";

/// `unsafe` (a block, a function, an impl or the lint allowed by name) appears only in
/// [`UNSAFE_FILE`]: the crate denies `unsafe_code`, and an `allow` anywhere else would pass it.
pub fn unsafe_only_in_malloc(c: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    for (fi, f) in c.files.iter().enumerate() {
        if f.rel == UNSAFE_FILE {
            continue;
        }
        for t in &f.tokens {
            if t.is_ident("unsafe") || t.is_ident("unsafe_code") {
                out.push(format!(
                    "{}: unsafe outside src/{UNSAFE_FILE}",
                    at(c, fi, t.line)
                ));
            }
        }
    }
    out
}

/// No production source file is longer than [`MAX_PRODUCTION_LINES`]. Test-only code does not
/// count: files declared under `#[cfg(test)]` (the `tests/` folders, `fuzz.rs`) and inline
/// `#[cfg(test)]` modules.
pub fn production_file_lengths(c: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    for (fi, f) in c.files.iter().enumerate() {
        if c.test_files.contains(&fi) {
            continue;
        }
        let test: usize = f.test_lines.iter().map(|(a, b)| b + 1 - a).sum();
        let lines = f.line_count.saturating_sub(test);
        if lines > MAX_PRODUCTION_LINES {
            out.push(format!(
                "src/{}: {lines} production lines (over {MAX_PRODUCTION_LINES})",
                f.rel
            ));
        }
    }
    out
}

/// Modules that get only their part of the configuration, never the whole `Config` or an
/// `OrgConfig` (which holds the admin key).
const NARROW_CONFIG: &[&str] = &["policy/", "notify/", "state/", "ops.rs"];

/// The one file of those that builds its module's settings from the whole `Config`.
const SETTINGS_EDGE: &str = "notify/settings.rs";

/// `policy/`, `notify/`, `state/` and `ops.rs` never name `config::OrgConfig`, nor
/// `config::Config` except where notify's settings are built from it (`notify/settings.rs`).
pub fn config_reaches_only_what_needs_it(c: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    for (fi, f) in c.files.iter().enumerate() {
        if !NARROW_CONFIG.iter().any(|p| f.rel.starts_with(p)) {
            continue;
        }
        let mut forbidden = vec!["OrgConfig"];
        if f.rel != SETTINGS_EDGE {
            forbidden.push("Config");
        }
        let written = f.uses.iter().map(|u| (u.scope, &u.path, u.line));
        let paths = f.paths.iter().map(|p| (p.scope, &p.segments, p.line));
        for (scope, path, line) in written.chain(paths) {
            let Some(abs) = c.absolute(fi, scope, path) else {
                continue;
            };
            if abs.len() >= 2 && abs[0] == "config" && forbidden.contains(&abs[1].as_str()) {
                out.push(format!(
                    "{}: {} names config::{}",
                    at(c, fi, line),
                    f.rel,
                    abs[1]
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// (files, what they must never name): the codemap's one-way dependencies.
pub const FORBIDDEN_DEPENDENCIES: &[(&str, &[&str])] = &[
    // `policy/` is pure judgement: it reads no database, sends nothing and calls no API.
    (
        "policy/",
        &[
            "state/",
            "notify/",
            "openai/",
            "sweep/",
            "revoke.rs",
            "daemon/",
        ],
    ),
    // `state/` stores rows; the modules that store through it convert their own types.
    ("state/", &["notify/", "openai/", "sweep/", "revoke.rs"]),
    // `notify` never sees the admin key, so it has no business with the API client either.
    ("notify/", &["openai/", "sweep/", "revoke.rs"]),
];

/// Every edge that breaks [`FORBIDDEN_DEPENDENCIES`].
pub fn forbidden_dependencies(c: &Crate) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.edges() {
        let (from, to) = (&c.files[e.from].rel, &c.files[e.to].rel);
        for (files, never) in FORBIDDEN_DEPENDENCIES {
            if from.starts_with(files) && never.iter().any(|n| to.starts_with(n)) {
                out.push(format!(
                    "{}: {files} names {} (src/{to})",
                    at(c, e.from, e.line),
                    e.path
                ));
            }
        }
    }
    out
}
