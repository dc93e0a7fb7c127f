//! `[[sinks]]` and the `action = "rotate"` settings of policies: from the raw entries to
//! [`SinkConfig`] and [`RotateConfig`], every error naming the file and the key.
//!
//! An `exec` sink's `env = [...]` may never name a variable that holds the admin key or a
//! channel's secret: a sink gets the minted key and nothing else keysweep guards. This module
//! reads no secret and no variable's value; it only compares names.

use std::time::Duration;

use super::super::{DEFAULT_ROTATE_OVERLAP, RotateConfig, SinkConfig, SinkFormat, SinkKind};
use super::context::Context;
use super::{ChannelEntry, LoadError, RawChannelKind, RawOrg, RawPolicy, RawSink, SinkType};

/// The default `timeout` of an `exec` sink.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// The placeholders a file sink's path may use.
const PLACEHOLDERS: [&str; 3] = ["{organization}", "{project_id}", "{service_account_id}"];

/// The names of the variables that hold secrets keysweep guards: the organisations' admin keys
/// and the channels' secrets. An exec sink may not pass them on.
pub(super) fn secret_vars(orgs: &[RawOrg], channels: &[ChannelEntry]) -> Vec<String> {
    let mut out = vec![
        "OPENAI_ADMIN_KEY".to_string(),
        "CREDENTIALS_DIRECTORY".to_string(),
    ];
    out.extend(orgs.iter().filter_map(|o| o.admin_key_env.clone()));
    for c in channels {
        match &c.kind {
            RawChannelKind::Email(e) => {
                out.extend(e.smtp_username_env.clone());
                out.extend(e.smtp_password_env.clone());
            }
            RawChannelKind::Slack(s) => out.push(s.webhook_url_env.clone()),
            RawChannelKind::PagerDuty(p) => out.push(p.routing_key_env.clone()),
            RawChannelKind::Webhook(w) => out.push(w.secret_env.clone()),
        }
    }
    out
}

/// Checks every `[[sinks]]` entry; names must be unique.
pub(super) fn sinks(
    cx: &Context<'_>,
    raw: Vec<RawSink>,
    secret_vars: &[String],
) -> Result<Vec<SinkConfig>, LoadError> {
    let mut out: Vec<SinkConfig> = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let sink = sink(cx, i, s, secret_vars)?;
        if out.iter().any(|o| o.name == sink.name) {
            return Err(cx.err(
                format!("sinks[{i}].name"),
                format!("duplicate sink name {:?}", sink.name),
            ));
        }
        out.push(sink);
    }
    Ok(out)
}

fn sink(
    cx: &Context<'_>,
    i: usize,
    s: RawSink,
    secret_vars: &[String],
) -> Result<SinkConfig, LoadError> {
    let k = |f: &str| format!("sinks[{i}].{f}");
    let kind = match s.kind {
        SinkType::File => {
            for (set, key) in [
                (!s.command.is_empty(), "command"),
                (!s.env.is_empty(), "env"),
                (s.timeout.is_some(), "timeout"),
            ] {
                if set {
                    return Err(cx.err(k(key), "only applies to type = \"exec\""));
                }
            }
            let Some(path) = s.path.filter(|p| !p.trim().is_empty()) else {
                return Err(cx.err(k("path"), "is required for type = \"file\""));
            };
            check_template(&path).map_err(|m| cx.err(k("path"), m))?;
            SinkKind::File {
                path,
                format: s.format.unwrap_or(SinkFormat::Raw),
            }
        }
        SinkType::Exec => {
            for (set, key) in [(s.path.is_some(), "path"), (s.format.is_some(), "format")] {
                if set {
                    return Err(cx.err(k(key), "only applies to type = \"file\""));
                }
            }
            if s.command.first().is_none_or(|c| c.trim().is_empty()) {
                return Err(cx.err(
                    k("command"),
                    "is required for type = \"exec\": the program and its arguments, e.g. \
                     [\"/usr/local/bin/store-key\", \"--vault\"]",
                ));
            }
            if let Some((j, name)) = (s.env.iter().enumerate()).find(|(_, n)| !is_var_name(n)) {
                return Err(cx.err(
                    format!("sinks[{i}].env[{j}]"),
                    format!("{name:?} is not a variable name"),
                ));
            }
            if let Some((j, name)) =
                (s.env.iter().enumerate()).find(|(_, n)| secret_vars.contains(n))
            {
                return Err(cx.err(
                    format!("sinks[{i}].env[{j}]"),
                    format!(
                        "{name} holds the admin key or a channel's secret; a sink never gets \
                         those"
                    ),
                ));
            }
            let timeout = s.timeout.map_or(DEFAULT_EXEC_TIMEOUT, |d| d.0);
            if timeout.is_zero() {
                return Err(cx.err(k("timeout"), "must be greater than zero"));
            }
            SinkKind::Exec {
                command: s.command,
                env: s.env,
                timeout,
            }
        }
    };
    Ok(SinkConfig {
        name: s.name.0,
        kind,
    })
}

/// `{…}` in a path template must be one of [`PLACEHOLDERS`], and the path must name the
/// project and the service account: a file shared by two service accounts would have the
/// second one's new key overwrite the first one's, which then lives on with nobody holding it
/// (the overwrite guard knows one account's rotations, not another's), and hand the first
/// account's workload a key that is not its own.
fn check_template(path: &str) -> Result<(), String> {
    for needed in ["{project_id}", "{service_account_id}"] {
        if !path.contains(needed) {
            return Err(format!(
                "{path:?} must contain {needed}: one file per service account (two accounts \
                 sharing a file would overwrite each other's new keys)"
            ));
        }
    }
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let tail = &rest[start..];
        let Some(end) = tail.find('}') else {
            return Err(format!("{path:?} has an unclosed '{{'"));
        };
        let token = &tail[..=end];
        if !PLACEHOLDERS.contains(&token) {
            return Err(format!(
                "{token} is not a placeholder; use {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &tail[end + 1..];
    }
    Ok(())
}

fn is_var_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The rotation settings of every policy with `action = "rotate"`. `sink`, `overlap` and
/// `scopes` belong to rotation only; `sink` must name a `[[sinks]]` entry.
pub(super) fn rotations(
    cx: &Context<'_>,
    policies: &[RawPolicy],
    sinks: &[SinkConfig],
) -> Result<Vec<RotateConfig>, LoadError> {
    let mut out = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let k = |f: &str| format!("policies[{i}].{f}");
        let rotate = p.action == Some(super::RawAction::Rotate);
        if !rotate {
            for (set, key) in [
                (p.sink.is_some(), "sink"),
                (p.overlap.is_some(), "overlap"),
                (p.scopes.is_some(), "scopes"),
            ] {
                if set {
                    return Err(cx.err(k(key), "only applies to action = \"rotate\""));
                }
            }
            continue;
        }
        let Some(sink) = p.sink.clone() else {
            return Err(cx.err(
                k("sink"),
                "is required for action = \"rotate\": the [[sinks]] entry that receives the new key",
            ));
        };
        if !sinks.iter().any(|s| s.name == sink) {
            return Err(cx.err(k("sink"), format!("no sink named {sink:?}")));
        }
        let overlap = p.overlap.map_or(DEFAULT_ROTATE_OVERLAP, |d| d.0);
        if overlap.is_zero() {
            return Err(cx.err(k("overlap"), "must be greater than zero"));
        }
        out.push(RotateConfig {
            policy: p.name.0.clone(),
            sink,
            overlap,
            scopes: p.scopes.clone(),
        });
    }
    Ok(out)
}
