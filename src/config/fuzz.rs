//! Property tests of the configuration loader (issue 7, item 3): arbitrary strings, mutations of
//! the shipped reference file (`config/keysweep.example.toml`: byte flips, deletions, insertions,
//! duplicated, deleted and uncommented lines, swapped and replaced values), structural mutations
//! of its parsed document (any known key set to any TOML value, removed, or joined by an unknown
//! one) and arbitrary `KEYSWEEP__…` overrides all go through [`load_from_str`].
//!
//! Whatever the input, the loader must return `Ok` or a [`LoadError`] that names the file and,
//! for a bad value, the key; it must never panic, and neither an error nor an accepted
//! configuration (its `Debug` and its effective rendering) may show a secret. The API response
//! parsers have their own property tests in `openai/fuzz.rs`; this module never touches them.
//! These tests read no file and write nothing: every path they produce is only validated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::{LoadError, load_from_str, render_effective};

/// Cases per property, in the normal `cargo test` run.
const CASES: u32 = 10_000;

/// The reference configuration, as shipped: valid with `OPENAI_ADMIN_KEY` set.
const EXAMPLE: &str = include_str!("../../config/keysweep.example.toml");

const ADMIN_KEY: &str = "sk-admin-FUZZ-never-in-an-error-0123456789";
const SMTP_PASSWORD: &str = "fuzz-smtp-Pa55word-never-shown";
const SLACK_URL: &str = "https://hooks.slack.com/services/T0/B0/fuzzSLACKsecret42";
const ROUTING_KEY: &str = "FUZZroutingKEYnever0123456789abc";
const WEBHOOK_SECRET: &str = "whsec_ZnV6ei13ZWJob29rLXNlY3JldC1uZXZlci1zaG93bg==";

const SECRETS: &[&str] = &[
    ADMIN_KEY,
    SMTP_PASSWORD,
    SLACK_URL,
    "fuzzSLACKsecret42",
    ROUTING_KEY,
    WEBHOOK_SECRET,
];

/// Every variable the example (and its commented-out channels) can name, set.
fn env() -> Vec<(String, String)> {
    [
        ("OPENAI_ADMIN_KEY", ADMIN_KEY),
        ("KEYSWEEP_SMTP_USERNAME", "fuzz-mailer"),
        ("KEYSWEEP_SMTP_PASSWORD", SMTP_PASSWORD),
        ("KEYSWEEP_SLACK_WEBHOOK_URL", SLACK_URL),
        ("KEYSWEEP_PAGERDUTY_ROUTING_KEY", ROUTING_KEY),
        ("KEYSWEEP_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The property: `Ok` without a secret in sight, or a clear error naming the file (and the key
/// for a bad value), without a secret either.
fn check(toml: &str, env: &[(String, String)]) -> Result<(), TestCaseError> {
    match load_from_str(toml, env) {
        Ok(config) => {
            let shown = render_effective(&config);
            let debug = format!("{config:?}");
            for s in SECRETS {
                prop_assert!(!shown.contains(s), "effective config shows a secret");
                prop_assert!(!debug.contains(s), "Debug of the config shows a secret");
            }
        }
        Err(e) => {
            let text = e.to_string();
            match &e {
                LoadError::Invalid { file, key, message } => {
                    // An error a `KEYSWEEP__…` variable caused names the variable instead.
                    prop_assert!(
                        file == "<inline>" || file.starts_with("environment variable KEYSWEEP__"),
                        "{}",
                        text
                    );
                    prop_assert!(!key.trim().is_empty(), "error without a key: {}", text);
                    prop_assert!(
                        !message.trim().is_empty(),
                        "error without a message: {}",
                        text
                    );
                }
                LoadError::File { file, message } => {
                    prop_assert_eq!(file.as_str(), "<inline>");
                    prop_assert!(
                        !message.trim().is_empty(),
                        "error without a message: {}",
                        text
                    );
                }
            }
            prop_assert!(
                text.starts_with("<inline>: ")
                    || text.starts_with("environment variable KEYSWEEP__"),
                "{}",
                text
            );
            for s in SECRETS {
                prop_assert!(!text.contains(s), "error shows a secret: {}", text);
            }
        }
    }
    Ok(())
}

// ---- values --------------------------------------------------------------------------------

/// TOML source snippets for a value: the edge cases validation has to name, plus noise.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            r#""""#, r#""0s""#, r#""-1d""#, r#""90d""#, r#""1h 30m""#, r#""999999999999999d""#,
            r#""1""#, r#""d""#, "0", "-1", "1", "256", "257", "65536", "9223372036854775807",
            "-9223372036854775808", "1e308", "-0.0", "nan", "inf", "-inf", "true", "false",
            "[]", "{}", r#"[1, "a"]"#, r#"["", ""]"#, r#"{ a = 1 }"#, r#""not a url""#,
            r#""http://[::1""#, r#""ftp://example.com/v1""#, r#""http://example.com/v1""#,
            r#""http://127.0.0.1:1/v1""#, r#""* * * * * * * *""#, r#""61 * * * *""#,
            r#""0 0 31 2 *""#, r#""Mars/Olympus""#, r#""Europe/Berlin""#, r#""\u0000""#,
            r#""[a-""#, r#""(?<x""#, r#""**/[""#, r#""{a,b""#, r#""0.0.0.0:99999""#,
            r#""[::1]:0""#, r#""enforce""#, r#""dry-run""#, r#""Enforce""#, r#""email""#,
            r#""webhook""#, r#""slack""#, r#""pagerduty""#, r#""sms""#, r#""revoke""#,
            r#""notify""#, r#""user""#, r#""service_account""#, r#""delete-service-account""#,
            r#""starttls""#, r#""tls""#, r#""none""#, r#""json""#, r#""pretty""#,
            r#""2026-02-30""#, r#""2026-12-31""#, r#""2026-12-31T00:00:00Z""#, "2026-12-31",
            "1979-05-27T07:32:00Z", r#""OPENAI_ADMIN_KEY""#, r#""KEYSWEEP_SLACK_WEBHOOK_URL""#,
            r#""UNSET_VARIABLE""#, r#""/nonexistent/dir/file.pem""#, r#""a@b""#,
            r#""main""#, r#""security-team""#,
        ])
        .prop_map(str::to_string),
        1 => seeded_text(TEXT_ALPHABET, 24, true).prop_map(|s| toml_string(&s)),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
    ]
}

/// A key: one of the loader's own names (so arbitrary documents reach validation), or noise.
fn key_name() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(
            KEYS.iter().flat_map(|(_, keys)| keys.iter().copied()).collect::<Vec<_>>()
        )
        .prop_map(str::to_string),
        1 => seeded_text("abcdefghijklmnopqrstuvwxyz_.", 12, false)
            .prop_filter("empty key", |s| !s.is_empty()),
    ]
}

/// A basic TOML string for arbitrary text (escapes quotes, backslashes and controls).
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---- textual mutations of the example ------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace one byte.
    Flip(usize, u8),
    /// Delete a run of bytes.
    Delete(usize, usize),
    /// Insert a TOML-ish fragment.
    Insert(usize, String),
    DuplicateLine(usize),
    DeleteLine(usize),
    /// Swap the right-hand sides of two `key = value` lines.
    SwapValues(usize, usize),
    /// Replace the right-hand side of a `key = value` line.
    ReplaceValue(usize, String),
    /// Turn a commented-out `# key = value` line into a live one.
    Uncomment(usize),
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "=",
            "[",
            "]",
            "[[",
            "]]",
            "\"",
            "'",
            "#",
            "\n",
            "\n[limits]\n",
            "\n[[channels]]\n",
            "\n[[organizations]]\n",
            "\n[policies.match]\n",
            "\nmode = \"enforce\"\n",
            "\nunknown_key = 1\n",
            ".",
            ",",
            "{",
            "}",
            "\\",
            "\u{0}",
            "é",
            "\r\n",
            "\t",
        ])
        .prop_map(str::to_string),
        (key_name(), value_text()).prop_map(|(k, v)| format!("\n{k} = {v}\n")),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<usize>(), 1usize..24).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<usize>(), fragment()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
        1 => any::<usize>().prop_map(Mutation::DeleteLine),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapValues(a, b)),
        3 => (any::<usize>(), value_text()).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
        2 => any::<usize>().prop_map(Mutation::Uncomment),
    ]
}

/// Indexes of live `key = value` lines.
fn key_lines(lines: &[String]) -> Vec<usize> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            !t.starts_with('#') && !t.starts_with('[') && t.contains('=')
        })
        .map(|(i, _)| i)
        .collect()
}

/// Splits a `key = value` line at its first `=` (values in the example hold no `=`).
fn split_kv(line: &str) -> Option<(&str, &str)> {
    let i = line.find('=')?;
    Some((&line[..i], line[i + 1..].trim_end_matches('\n')))
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let n = bytes.len().max(1);
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let nl = lines.len().max(1);
    match m {
        Mutation::Flip(i, b) => {
            if let Some(x) = bytes.get_mut(i % n) {
                *x = *b;
            }
            // The loader takes text: a file that is not UTF-8 fails at read, before it.
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::Delete(i, len) => {
            let at = (i % n).min(bytes.len());
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::Insert(i, s) => {
            let at = (i % n).min(bytes.len());
            bytes.splice(at..at, s.bytes());
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::DuplicateLine(i) => {
            if let Some(l) = lines.get(i % nl).cloned() {
                lines.insert(i % nl, l);
            }
        }
        Mutation::DeleteLine(i) => {
            if !lines.is_empty() {
                lines.remove(i % nl);
            }
        }
        Mutation::SwapValues(a, b) => {
            let kl = key_lines(&lines);
            if !kl.is_empty() {
                let (ia, ib) = (kl[a % kl.len()], kl[b % kl.len()]);
                let (la, lb) = (lines[ia].clone(), lines[ib].clone());
                if let (Some((ka, va)), Some((kb, vb))) = (split_kv(&la), split_kv(&lb)) {
                    lines[ia] = format!("{ka}={vb}\n");
                    lines[ib] = format!("{kb}={va}\n");
                }
            }
        }
        Mutation::ReplaceValue(i, v) => {
            let kl = key_lines(&lines);
            if !kl.is_empty() {
                let at = kl[i % kl.len()];
                if let Some((k, _)) = split_kv(&lines[at].clone()) {
                    lines[at] = format!("{k}= {v}\n");
                }
            }
        }
        Mutation::Uncomment(i) => {
            let commented: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.starts_with("# ") && l.contains(" = "))
                .map(|(i, _)| i)
                .collect();
            if !commented.is_empty() {
                let at = commented[i % commented.len()];
                lines[at] = lines[at][2..].to_string();
            }
        }
    }
    lines.concat()
}

// ---- structural mutations of the parsed example ----------------------------------------------

/// Where a key lives: the top level, a section, or the first element of an array of tables.
#[derive(Debug, Clone, Copy)]
enum Place {
    Top,
    Section(&'static str),
    First(&'static str),
    /// `[policies.match]` of the first policy.
    PolicyMatch,
}

/// Every key the loader knows, by place (from `raw.rs`), plus one it does not.
const KEYS: &[(Place, &[&str])] = &[
    (
        Place::Top,
        &[
            "mode",
            "state_path",
            "schedule",
            "timezone",
            "run_on_start",
            "jitter",
            "retry_failed_after",
            "shutdown_grace",
            "ops_channels",
            "owner_fallback",
            "organizations",
            "limits",
            "policies",
            "exemptions",
            "safety",
            "channels",
            "routes",
            "notifications",
            "server",
            "log",
            "unknown",
        ],
    ),
    (
        Place::First("organizations"),
        &[
            "name",
            "base_url",
            "admin_key_env",
            "admin_key_file",
            "admin_key_credential",
            "admin_key_id",
            "projects",
            "exclude_projects",
            "include_archived",
            "ca_file",
            "schedule",
            "timezone",
            "unknown",
        ],
    ),
    (
        Place::Section("limits"),
        &[
            "concurrency",
            "requests_per_second",
            "max_retries",
            "request_timeout",
            "max_response_bytes",
            "unknown",
        ],
    ),
    (
        Place::First("policies"),
        &[
            "name",
            "match",
            "max_age",
            "max_idle",
            "never_used_grace",
            "owner_lost_access",
            "name_pattern",
            "max_lifetime",
            "unrestricted",
            "action",
            "warn_before",
            "final_notice",
            "notify",
            "unknown",
        ],
    ),
    (
        Place::PolicyMatch,
        &[
            "organizations",
            "projects",
            "owner_type",
            "key_name",
            "owner_email",
            "unknown",
        ],
    ),
    (
        Place::First("exemptions"),
        &[
            "key_id", "key_name", "project", "reason", "until", "unknown",
        ],
    ),
    (
        Place::Section("safety"),
        &[
            "max_revocations_per_run",
            "max_revocations_per_project_percent",
            "max_revocations_per_day",
            "kill_switch_file",
            "service_accounts",
            "service_account_keys",
            "restore_expiry",
            "unknown",
        ],
    ),
    (
        Place::First("channels"),
        &[
            "name",
            "type",
            "smtp_host",
            "smtp_port",
            "smtp_tls",
            "smtp_ca_file",
            "smtp_username_env",
            "smtp_password_env",
            "from",
            "to",
            "owner",
            "send_timeout",
            "webhook_url_env",
            "routing_key_env",
            "url",
            "secret_env",
            "unknown",
        ],
    ),
    (Place::First("routes"), &["projects", "channels", "unknown"]),
    (
        Place::Section("notifications"),
        &["repeat_interval", "max_attempts", "outbox_dir", "unknown"],
    ),
    (Place::Section("server"), &["listen", "unknown"]),
    (Place::Section("log"), &["format", "unknown"]),
];

/// A TOML value built from [`value_text`], or nested arrays and tables of them.
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = value_text().prop_filter_map("not a TOML value", |text| {
        format!("v = {text}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
    });
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map(key_name(), inner, 0..4)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Set(usize, usize, toml::Value),
    Remove(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<usize>(), toml_value()).prop_map(|(p, k, v)| Edit::Set(p, k, v)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(p, k)| Edit::Remove(p, k)),
    ]
}

/// The table a place names, created (as the example's shape has it) when missing.
fn table_at(doc: &mut toml::Table, place: Place) -> Option<&mut toml::Table> {
    match place {
        Place::Top => Some(doc),
        Place::Section(name) => doc
            .entry(name)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut(),
        Place::First(name) => {
            let arr = doc
                .entry(name)
                .or_insert_with(|| toml::Value::Array(vec![toml::Value::Table(toml::Table::new())]))
                .as_array_mut()?;
            if arr.is_empty() {
                arr.push(toml::Value::Table(toml::Table::new()));
            }
            arr.first_mut()?.as_table_mut()
        }
        Place::PolicyMatch => table_at(doc, Place::First("policies"))?
            .entry("match")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut(),
    }
}

fn apply_edit(doc: &mut toml::Table, e: &Edit) {
    let (p, k) = match e {
        Edit::Set(p, k, _) | Edit::Remove(p, k) => (*p, *k),
    };
    let (place, keys) = KEYS[p % KEYS.len()];
    let key = keys[k % keys.len()];
    let Some(table) = table_at(doc, place) else {
        return;
    };
    match e {
        Edit::Set(_, _, v) => {
            table.insert(key.to_string(), v.clone());
        }
        Edit::Remove(..) => {
            table.remove(key);
        }
    }
}

/// The example parsed once (parsing it per case would dominate the run time).
fn example_doc() -> &'static toml::Table {
    static DOC: std::sync::OnceLock<toml::Table> = std::sync::OnceLock::new();
    DOC.get_or_init(|| EXAMPLE.parse().unwrap())
}

/// Printable ASCII plus the characters TOML is made of.
const TEXT_ALPHABET: &str = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\n\n\r\t[]==\"\"##..";

/// SplitMix64 step.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Up to `max` characters from `alphabet` and, when `wild`, one in sixteen from all of Unicode,
/// drawn by a PRNG seeded from the case. As arbitrary as a regex strategy, but a `.{0,300}`
/// strategy (or a vector of character strategies) costs more to generate in a debug build than
/// the load it feeds; the length still shrinks.
fn seeded_text(alphabet: &'static str, max: usize, wild: bool) -> impl Strategy<Value = String> {
    (any::<u64>(), 0..=max).prop_map(move |(seed, len)| {
        let chars: Vec<char> = alphabet.chars().collect();
        let mut state = seed;
        (0..len)
            .map(|_| {
                let x = splitmix(&mut state);
                if wild && x.is_multiple_of(16) {
                    char::from_u32(((x >> 8) % 0x11_0000) as u32).unwrap_or('\u{FFFD}')
                } else {
                    chars[((x >> 4) % chars.len() as u64) as usize]
                }
            })
            .collect()
    })
}

// ---- environment overrides -----------------------------------------------------------------

fn env_override() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "KEYSWEEP__MODE",
            "KEYSWEEP__SCHEDULE",
            "KEYSWEEP__LIMITS__CONCURRENCY",
            "KEYSWEEP__LIMITS__REQUEST_TIMEOUT",
            "KEYSWEEP__SAFETY__MAX_REVOCATIONS_PER_RUN",
            "KEYSWEEP__SAFETY__SERVICE_ACCOUNTS",
            "KEYSWEEP__NOTIFICATIONS__MAX_ATTEMPTS",
            "KEYSWEEP__SERVER__LISTEN",
            "KEYSWEEP__LOG__FORMAT",
            "KEYSWEEP__ORGANIZATIONS",
            "KEYSWEEP__UNKNOWN",
            "KEYSWEEP__",
            "KEYSWEEP____",
            "KEYSWEEP__LIMITS__",
            "KEYSWEEP__LIMITS____X",
        ])
        .prop_map(str::to_string),
        seeded_text("ABCDEFGHIJKLMNOPQRSTUVWXYZ___", 20, false)
            .prop_map(|s| format!("KEYSWEEP__{s}")),
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "",
            "0",
            "-1",
            "1",
            "true",
            "enforce",
            "dry-run",
            "30s",
            "nan",
            "[]",
            "{}",
            "0.0.0.0:1",
            "json",
            "notify-only",
            "99999999999999999999",
        ])
        .prop_map(str::to_string),
        seeded_text(TEXT_ALPHABET, 16, false),
    ];
    (name, value)
}

proptest! {
    // Failing seeds are kept beside this file (`fuzz.regressions`) and replayed first.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::with_cases(CASES)
    })]

    #[test]
    fn arbitrary_text_never_panics(text in seeded_text(TEXT_ALPHABET, 300, true)) {
        check(&text, &env())?;
    }

    #[test]
    fn arbitrary_toml_ish_text_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                fragment(),
                (key_name(), value_text()).prop_map(|(k, v)| format!("{k} = {v}\n")),
                (1usize..3, key_name(), 1usize..3)
                    .prop_map(|(o, k, c)| format!("{}{k}{}\n", "[".repeat(o), "]".repeat(c))),
            ],
            0..12,
        )
    ) {
        check(&lines.concat(), &env())?;
    }

    #[test]
    fn mutated_example_never_panics(muts in prop::collection::vec(mutation(), 1..4)) {
        let mut text = EXAMPLE.to_string();
        for m in &muts {
            text = apply(&text, m);
        }
        check(&text, &env())?;
    }

    #[test]
    fn structurally_mutated_example_never_panics(
        edits in prop::collection::vec(edit(), 1..4),
        overrides in prop::collection::vec(env_override(), 0..3),
    ) {
        let mut doc = example_doc().clone();
        for e in &edits {
            apply_edit(&mut doc, e);
        }
        // A document the serializer refuses (e.g. a table after an array of tables in an
        // inline position) is simply not a test input.
        let text = toml::to_string(&doc);
        prop_assume!(text.is_ok());
        let mut env = env();
        env.extend(overrides);
        check(&text.unwrap(), &env)?;
    }
}

/// The mutations only mean something if the seed loads: the example is valid as shipped.
#[test]
fn the_example_loads() {
    let config = load_from_str(EXAMPLE, &env()).unwrap();
    assert_eq!(config.organizations.len(), 1);
    let doc: toml::Table = EXAMPLE.parse().unwrap();
    load_from_str(&toml::to_string(&doc).unwrap(), &env()).unwrap();
}

/// A few hand-picked inputs whose errors must name the key (not only the file).
#[test]
fn errors_name_the_key() {
    let cases = [
        ("limits.concurrency", "concurrency = 8", "concurrency = 0"),
        (
            "limits.concurrency",
            "concurrency = 8",
            "concurrency = \"many\"",
        ),
        ("mode", "mode = \"dry-run\"", "mode = \"yolo\""),
        (
            "server.listen",
            "listen = \"127.0.0.1:9464\"",
            "listen = \"nowhere\"",
        ),
        ("safety.bogus", "[safety]", "[safety]\nbogus = 1"),
    ];
    for (key, from, to) in cases {
        assert!(EXAMPLE.contains(from), "{from} is not in the example");
        let text = EXAMPLE.replacen(from, to, 1);
        let err = load_from_str(&text, &env()).unwrap_err();
        assert!(
            err.to_string().contains(key),
            "error for {key} does not name it: {err}"
        );
    }
}

/// Found by the structural property: `KEYSWEEP__=…` used to fail as an unknown field `` "in the
/// file", naming neither a key nor the variable.
#[test]
fn an_override_that_names_no_key_names_the_variable() {
    for var in ["KEYSWEEP__", "KEYSWEEP__LIMITS__", "KEYSWEEP__LIMITS____X"] {
        let mut env = env();
        env.push((var.to_string(), "1".to_string()));
        let err = load_from_str(EXAMPLE, &env).unwrap_err();
        assert!(
            matches!(&err, LoadError::Invalid { key, .. } if key == var),
            "{err}"
        );
    }
}
