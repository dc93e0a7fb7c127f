//! Configuration: the minimal file works as written, env overrides apply, and every error names
//! the file and the key; `check-config` never prints a secret.

use keysweep::config::{self, LoadError, Mode};

use crate::support::config::ISSUE_3_POLICIES;
use crate::support::process::keysweep_blocking;

const ADMIN_KEY: &str = "sk-admin-CONFIGTEST-0123456789abcdef";

fn env() -> Vec<(String, String)> {
    vec![("OPENAI_ADMIN_KEY".into(), ADMIN_KEY.into())]
}

const MINIMAL: &str = r#"
[[organizations]]
name = "acme"
base_url = "http://127.0.0.1:8089/v1"   # default https://api.openai.com/v1
admin_key_env = "OPENAI_ADMIN_KEY"        # default; or admin_key_file = "/run/credentials/…"
"#;

fn key_of(err: LoadError) -> String {
    match err {
        LoadError::Invalid { key, .. } => key,
        other => panic!("expected an error naming a key, got {other}"),
    }
}

#[test]
fn minimal_config_works_as_written() {
    let c = config::load_from_str(MINIMAL, &env()).unwrap();
    assert_eq!(c.organizations.len(), 1);
    assert_eq!(c.organizations[0].name, "acme");
    assert_eq!(
        c.organizations[0].base_url.as_str(),
        "http://127.0.0.1:8089/v1"
    );
    assert_eq!(c.mode, Mode::DryRun, "dry-run must be the default");
    assert_eq!(c.limits.concurrency, 8);
    assert!(c.policies.is_empty());
    assert_eq!(
        c.safety.max_revocations_per_run,
        config::DEFAULT_MAX_REVOCATIONS_PER_RUN
    );
    assert!(
        !format!("{c:?}").contains(ADMIN_KEY),
        "Debug output leaks the admin key"
    );
    assert!(!config::render_effective(&c).contains(ADMIN_KEY));
}

#[test]
fn policy_example_from_the_issue_works() {
    let toml = format!("mode = \"enforce\"\n{MINIMAL}\n{ISSUE_3_POLICIES}");
    let c = config::load_from_str(&toml, &env()).unwrap();
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(c.policies[0].max_age.unwrap().as_secs(), 90 * 86400);
    assert_eq!(c.policies[0].warn_before.as_secs(), 14 * 86400);
    assert_eq!(c.policies[1].max_idle.unwrap().as_secs(), 45 * 86400);
    assert_eq!(
        c.policies[1].warn_before.as_secs(),
        7 * 86400,
        "warn_before defaults to 7d"
    );
}

#[test]
fn environment_overrides_use_double_underscores() {
    let mut e = env();
    e.push(("KEYSWEEP__LIMITS__CONCURRENCY".into(), "3".into()));
    e.push(("KEYSWEEP__MODE".into(), "enforce".into()));
    e.push((
        "KEYSWEEP__SAFETY__MAX_REVOCATIONS_PER_RUN".into(),
        "4".into(),
    ));
    let c = config::load_from_str(MINIMAL, &e).unwrap();
    assert_eq!(c.limits.concurrency, 3);
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(c.safety.max_revocations_per_run, 4);
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a table of bad configurations, one row per key whose error must be named"
)]
fn errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[[organizations]]\nname = \"a\"\nbase_url = \"http://api.example.com/v1\"\n",
            "organizations[0].base_url",
        ),
        (
            "[[organizations]]\nname = \"a\"\nbase_url = \"not a url\"\n",
            "organizations[0].base_url",
        ),
        (
            "[[organizations]]\nname = \"a\"\nbogus = 1\n",
            "organizations[0].bogus",
        ),
        (
            "[[organizations]]\nname = \"a\"\nadmin_key_env = \"NOPE_NOT_SET\"\n",
            "organizations[0].admin_key_env",
        ),
        (
            &format!("{MINIMAL}[limits]\nconcurrency = \"many\"\n"),
            "limits.concurrency",
        ),
        (
            &format!("{MINIMAL}[limits]\nrequest_timeout = \"soon\"\n"),
            "limits.request_timeout",
        ),
        (&format!("mode = \"yolo\"\n{MINIMAL}"), "mode"),
        (
            &format!("{MINIMAL}[[policies]]\nname = \"p\"\nmax_age = \"ninety days\"\n"),
            "policies[0].max_age",
        ),
        (
            &format!("{MINIMAL}[[policies]]\nname = \"p\"\n"),
            "policies[0].name",
        ),
        (
            &format!(
                "{MINIMAL}[[policies]]\nname = \"p\"\nmax_age = \"9d\"\naction = \"delete\"\n"
            ),
            "policies[0].action",
        ),
        (
            &format!("{MINIMAL}[[policies]]\nname = \"p\"\nname_pattern = \"([\"\n"),
            "policies[0].name_pattern",
        ),
        (
            &format!(
                "{MINIMAL}[[policies]]\nname = \"p\"\nmax_age = \"9d\"\nnotify = [\"nowhere\"]\n"
            ),
            "policies[0].notify[0]",
        ),
        (
            &format!("{MINIMAL}[[exemptions]]\nkey_id = \"key_1\"\n"),
            "exemptions[0].reason",
        ),
        (
            &format!(
                "{MINIMAL}[[exemptions]]\nkey_id = \"key_1\"\nreason = \"x\"\nuntil = \"someday\"\n"
            ),
            "exemptions[0].until",
        ),
        (&format!("schedule = \"every hour\"\n{MINIMAL}"), "schedule"),
        // Parses, but never fires: the daemon would never sweep, not even on start.
        (&format!("schedule = \"0 0 30 2 *\"\n{MINIMAL}"), "schedule"),
        (&format!("jitter = \"400000000d\"\n{MINIMAL}"), "jitter"),
        (
            &format!("retry_failed_after = \"2d\"\n{MINIMAL}"),
            "retry_failed_after",
        ),
        (
            &format!("retry_failed_after = \"5ms\"\n{MINIMAL}"),
            "retry_failed_after",
        ),
        (
            &format!("shutdown_grace = \"0s\"\n{MINIMAL}"),
            "shutdown_grace",
        ),
        (
            &format!("timezone = \"Mars/Olympus\"\n{MINIMAL}"),
            "timezone",
        ),
        (
            &format!("{MINIMAL}[safety]\nmax_revocations_per_project_percent = 150\n"),
            "safety.max_revocations_per_project_percent",
        ),
        (
            &format!(
                "{MINIMAL}[[channels]]\nname = \"m\"\ntype = \"email\"\nsmtp_host = \"smtp.example.com\"\nsmtp_tls = \"none\"\nfrom = \"k@example.com\"\nto = [\"a@example.com\"]\n"
            ),
            "channels[0].smtp_tls",
        ),
        (
            &format!(
                "{MINIMAL}[[channels]]\nname = \"s\"\ntype = \"slack\"\nsmtp_host = \"x\"\nwebhook_url_env = \"X\"\n"
            ),
            "channels[0].smtp_host",
        ),
        (
            &format!(
                "{MINIMAL}[[channels]]\nname = \"w\"\ntype = \"webhook\"\nurl = \"https://example.com/h\"\nsecret_env = \"OPENAI_ADMIN_KEY\"\n"
            ),
            "channels[0].secret_env",
        ),
        (
            &format!("{MINIMAL}[server]\nlisten = \"localhost\"\n"),
            "server.listen",
        ),
        (
            &format!("unknown_top_level = true\n{MINIMAL}"),
            "unknown_top_level",
        ),
    ];
    for (toml, want) in cases {
        let err = config::load_from_str(toml, &env()).expect_err(toml);
        let shown = err.to_string();
        assert!(
            !shown.contains(ADMIN_KEY),
            "error leaks the admin key: {shown}"
        );
        assert_eq!(key_of(err), *want, "for config:\n{toml}");
    }
}

/// Every boolean key takes `true` or `false` and nothing config-rs would bend into one (`"yes"`,
/// `"no"`, `1`, `7`, `0.5`): the error names the file's key, or the variable that set it.
#[test]
fn boolean_keys_take_true_or_false_only() {
    let email = "[[channels]]\nname = \"m\"\ntype = \"email\"\nsmtp_host = \"127.0.0.1\"\n\
                 from = \"k@example.com\"\nto = [\"t@example.com\"]\n";
    let keys: [(&str, String, &str); 7] = [
        (
            "run_on_start",
            format!("run_on_start = V\n{MINIMAL}"),
            "run_on_start",
        ),
        (
            "usage",
            format!("{MINIMAL}[usage]\nenabled = V\n"),
            "usage.enabled",
        ),
        (
            "audit_log",
            format!("{MINIMAL}[audit_log]\nenabled = V\n"),
            "audit_log.enabled",
        ),
        (
            "org",
            format!("{MINIMAL}include_archived = V\n"),
            "organizations[0].include_archived",
        ),
        (
            "policy",
            format!(
                "{MINIMAL}[[policies]]\nname = \"p\"\nmax_age = \"90d\"\nowner_lost_access = V\n"
            ),
            "policies[0].owner_lost_access",
        ),
        (
            "policy",
            format!(
                "{MINIMAL}[audit_log]\nenabled = true\n[[policies]]\nname = \"p\"\nmax_age = \"90d\"\nunrestricted = V\n"
            ),
            "policies[0].unrestricted",
        ),
        (
            "channel",
            format!("{MINIMAL}{email}owner = V\n"),
            "channels[0].owner",
        ),
    ];
    for (what, toml, key) in &keys {
        for good in ["true", "false"] {
            let text = toml.replace(" V\n", &format!(" {good}\n"));
            let loaded = config::load_from_str(&text, &env());
            assert!(loaded.is_ok(), "{what} = {good}: {:?}", loaded.err());
        }
        for bad in ["\"yes\"", "\"no\"", "\"on\"", "1", "7", "0.5"] {
            let text = toml.replace(" V\n", &format!(" {bad}\n"));
            let err = config::load_from_str(&text, &env()).expect_err(&text);
            assert!(
                err.to_string().contains("true or false"),
                "{what} = {bad}: {err}"
            );
            assert_eq!(key_of(err), *key, "{what} = {bad}");
        }
    }
    // A variable is text: `true` and `false` only.
    let mut e = env();
    e.push(("KEYSWEEP__RUN_ON_START".into(), "false".into()));
    assert!(
        !config::load_from_str(MINIMAL, &e)
            .unwrap()
            .schedule
            .run_on_start
    );
    let mut e = env();
    e.push(("KEYSWEEP__RUN_ON_START".into(), "yes".into()));
    let err = config::load_from_str(MINIMAL, &e).unwrap_err().to_string();
    assert!(err.contains("KEYSWEEP__RUN_ON_START"), "{err}");
}

/// Channels are read by type in a second step (ARCHITECTURE.md, "Configuration read once"):
/// errors inside an entry still name the full key, and a value is never accepted in a shape
/// config-rs would bend (a one-key table for an enum).
#[test]
fn errors_inside_a_channel_name_the_full_key() {
    let channel = |body: &str| format!("{MINIMAL}[[channels]]\nname = \"c\"\n{body}");
    let cases: &[(String, &str)] = &[
        (channel(""), "channels[0].type"),
        (channel("type = \"sms\"\n"), "channels[0].type"),
        (
            channel("type = \"webhook\"\nsecret_env = \"X\"\n"),
            "channels[0].url",
        ),
        (
            channel("type = \"webhook\"\nurl = \"http://example.com/h\"\nsecret_env = \"X\"\n"),
            "channels[0].url",
        ),
        (
            channel("type = \"pagerduty\"\nrouting_key_env = \"X\"\nsmtp_port = 25\n"),
            "channels[0].smtp_port",
        ),
        (
            channel(
                "type = \"email\"\nsmtp_host = \"h\"\nfrom = \"k@example.com\"\nto = [\"a@example.com\", \"nope\"]\n",
            ),
            "channels[0].to[1]",
        ),
        (format!("mode = {{ enforce = 1 }}\n{MINIMAL}"), "mode"),
    ];
    for (toml, want) in cases {
        let err = config::load_from_str(toml, &env()).expect_err(toml);
        assert_eq!(key_of(err), *want, "for config:\n{toml}");
    }
    let err = config::load_from_str(&format!("mode = \"yolo\"\n{MINIMAL}"), &env()).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("dry-run") && shown.contains("enforce"),
        "an unknown name lists the valid ones: {shown}"
    );
}

/// `keysweep check-config --config path` with the admin key in the environment.
fn check_config(path: &std::path::Path) -> std::process::Output {
    keysweep_blocking()
        .args(["check-config", "--config"])
        .arg(path)
        .env("OPENAI_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap()
}

#[test]
fn check_config_names_file_and_key_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, MINIMAL).unwrap();
    let out = check_config(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check-config failed: {stderr}");
    assert!(
        stdout.contains("[redacted] (from env OPENAI_ADMIN_KEY)"),
        "{stdout}"
    );
    assert!(stdout.contains("mode = \"dry-run\""), "{stdout}");
    assert!(!stdout.contains(ADMIN_KEY) && !stderr.contains(ADMIN_KEY));
    // The printed effective configuration is itself a valid TOML document.
    toml::from_str::<toml::Table>(&stdout).unwrap();

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, format!("{MINIMAL}[limits]\nconcurrency = 0\n")).unwrap();
    let out = check_config(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&bad.display().to_string()),
        "file not named: {stderr}"
    );
    assert!(
        stderr.contains("limits.concurrency"),
        "key not named: {stderr}"
    );
}

#[test]
fn admin_key_file_is_read_and_loose_permissions_warned() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("admin-key");
    std::fs::write(&key, format!("{ADMIN_KEY}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = format!(
        "[[organizations]]\nname = \"a\"\nadmin_key_file = {:?}\n",
        key.display().to_string()
    );
    let c = config::load_from_str(&toml, &[]).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(c.organizations[0].admin_key.expose_secret(), ADMIN_KEY);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("organizations[0].admin_key_file"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        config::load_from_str(&toml, &[])
            .unwrap()
            .warnings
            .is_empty()
    );
}

/// A table given as something else names what was expected in the file's terms, never one of
/// our internal type names (`expected struct RawSelector`).
#[test]
fn a_wrong_type_for_a_table_says_what_the_file_should_hold() {
    let cases = [
        (
            format!("{MINIMAL}[[policies]]\nname = \"p\"\nmax_age = \"90d\"\nmatch = 5\n"),
            "policies[0].match",
        ),
        (format!("policies = [5]\n{MINIMAL}"), "policies[0]"),
        (format!("safety = 5\n{MINIMAL}"), "safety"),
        (
            format!(
                "{MINIMAL}[[exemptions]]\nkey_id = \"key_a\"\nreason = \"x\"\n[exemptions.until]\n"
            ),
            "exemptions[0]",
        ),
    ];
    for (toml, key) in cases {
        let err = config::load_from_str(&toml, &env()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(key), "{key} not named: {text}");
        assert!(
            !text.contains("Raw"),
            "an internal type name reached the user: {text}"
        );
    }
}

/// A TOML syntax error says where and why, never the line: here an unterminated webhook URL
/// whose token the parser's own message would have printed.
#[test]
fn a_syntax_error_names_the_place_but_never_shows_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = format!(
        "{MINIMAL}[[channels]]\nname = \"c\"\ntype = \"webhook\"\nurl = \"https://hooks.example.com/x?token=tok-SECRET-123\nsecret_env = \"OPENAI_ADMIN_KEY\"\n"
    );
    std::fs::write(&bad, &text).unwrap();
    let line = text.lines().position(|l| l.contains("tok-SECRET")).unwrap() + 1;
    let out = check_config(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("tok-SECRET"), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("TOML syntax error at line {line}, column ")),
        "{stderr}"
    );
    let err = config::load_from_str(&text, &env()).unwrap_err();
    assert!(!format!("{err:#} {err:?}").contains("tok-SECRET"));
}

/// A mistyped webhook or PagerDuty URL is not echoed: it carries its token.
#[test]
fn a_url_that_does_not_parse_is_not_echoed() {
    for (kind, secret) in [("webhook", "secret_env"), ("pagerduty", "routing_key_env")] {
        let toml = format!(
            "{MINIMAL}[[channels]]\nname = \"c\"\ntype = \"{kind}\"\nurl = \"hooks.example.com/tok-SECRET-123\"\n{secret} = \"OPENAI_ADMIN_KEY\"\n"
        );
        let err = config::load_from_str(&toml, &env()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("channels[0].url"), "{text}");
        assert!(
            !text.contains("tok-SECRET"),
            "the URL's token reached the error: {text}"
        );
    }
}

/// `check-config` shows the re-check and per-channel caps when they are set, and leaves them
/// out at their defaults (so the hash of a configuration that does not set them is unchanged).
#[test]
fn the_effective_view_shows_recheck_skips_and_channel_caps_when_set() {
    let channel = "[[channels]]\nname = \"w\"\ntype = \"webhook\"\nurl = \"https://example.com/h\"\nsecret_env = \"WHSEC\"\n";
    let env = vec![
        ("OPENAI_ADMIN_KEY".to_string(), ADMIN_KEY.to_string()),
        (
            "WHSEC".to_string(),
            "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdA==".to_string(),
        ),
    ];
    let plain = config::load_from_str(&format!("{MINIMAL}{channel}"), &env).unwrap();
    let set = config::load_from_str(
        &format!("[safety]\nmax_recheck_skips = 5\n{MINIMAL}{channel}max_messages_per_sweep = 7\n"),
        &env,
    )
    .unwrap();
    let (plain_view, set_view) = (
        config::render_effective(&plain),
        config::render_effective(&set),
    );
    assert!(!plain_view.contains("max_recheck_skips"), "{plain_view}");
    assert!(
        !plain_view.contains("max_messages_per_sweep"),
        "{plain_view}"
    );
    assert!(set_view.contains("max_recheck_skips = 5"), "{set_view}");
    assert!(
        set_view.contains("max_messages_per_sweep = 7"),
        "{set_view}"
    );
    assert_ne!(plain.hash, set.hash);
}
