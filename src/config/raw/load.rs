//! Reading the configuration: the TOML file layered with `KEYSWEEP__SECTION__KEY` variables by
//! config-rs, then read into the typed [`RawConfig`] through `serde_path_to_error`, so every
//! error names the file and the full key path (`channels[1].url: …`).
//!
//! Two steps, because one would lose paths: channels are kept as config-rs values in the first
//! step and read in a second one, once their `type` says which struct applies (a serde tagged
//! enum buffers the entry, and errors inside it lose their path). This module must never put a
//! secret into an error: the file holds no secrets (it names variables and files), and quoted
//! values are capped in length.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::ConfigError;
use serde::de::DeserializeOwned;

use super::super::Config;
use super::context::Context;
use super::validate;
use super::{ChannelEntry, ChannelType, LoadError, RawChannelHead, RawChannelKind, RawConfig};

/// The environment prefix: `KEYSWEEP__SAFETY__MAX_REVOCATIONS_PER_RUN=5`.
pub const ENV_PREFIX: &str = "KEYSWEEP";

/// `--config`, else `$KEYSWEEP_CONFIG`, else this.
pub fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/keysweep/keysweep.toml")
}

/// Which secrets a load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    All,
    /// Every secret but the organisations' admin keys (see [`load_without_admin_keys`]).
    ExceptAdminKeys,
}

/// Loads `path`, applies `KEYSWEEP__…` overrides from the process environment and validates.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    load_path(path, Secrets::All)
}

/// [`load`] for the commands that never call the Administration API (`audit`, `notify`): the
/// organisations' admin keys are not read, so an auditor needs none. Every other secret (a
/// channel's, which `notify test` needs) is read as usual. The admin keys of the result are
/// empty and their source says so: it must never be given to an API client.
pub fn load_without_admin_keys(path: &Path) -> Result<Config, LoadError> {
    load_path(path, Secrets::ExceptAdminKeys)
}

/// The state file `path` names (`state_path`, with its `KEYSWEEP__…` override), for `audit`,
/// which reads the trail and nothing else: the file is read and its keys type-checked (the
/// `[[channels]]` entries only as tables: their fields are read by a full load), but no secret
/// (an admin key, a channel's) is looked up, so an auditor needs none of them in the
/// environment and the process never holds one.
pub fn state_path_of(path: &Path) -> Result<PathBuf, LoadError> {
    let file = path.display().to_string();
    let text = read_file(path, &file)?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (raw, _) = raw_config(&text, &file, &env)?;
    Ok(raw
        .state_path
        .unwrap_or_else(|| PathBuf::from(validate::DEFAULT_STATE_PATH)))
}

fn read_file(path: &Path, file: &str) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError::File {
        file: file.to_string(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "cannot read configuration: {e}; name the file with --config FILE or the \
                 KEYSWEEP_CONFIG variable (default {})",
                default_config_path().display()
            )
        } else {
            format!("cannot read configuration: {e}")
        },
    })
}

fn load_path(path: &Path, secrets: Secrets) -> Result<Config, LoadError> {
    let file = path.display().to_string();
    let text = read_file(path, &file)?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_inner(&text, &file, &env, Some(path), secrets)
}

/// Loads from a string with an explicit environment (tests, the demo). Secrets named by
/// `*_env` keys are looked up in `env`.
pub fn load_from_str(toml: &str, env: &[(String, String)]) -> Result<Config, LoadError> {
    load_inner(toml, "<inline>", env, None, Secrets::All)
}

fn load_inner(
    text: &str,
    file: &str,
    env: &[(String, String)],
    source: Option<&Path>,
    secrets: Secrets,
) -> Result<Config, LoadError> {
    let (mut raw, overrides) = raw_config(text, file, env)?;
    let blamed = |e| blame(e, &overrides);
    let channels = std::mem::take(&mut raw.channels)
        .into_iter()
        .enumerate()
        .map(|(i, value)| read_channel(file, i, value))
        .collect::<Result<Vec<_>, _>>()
        .map_err(blamed)?;
    let env_map: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cx = Context::new(file, &env_map);
    let cx = match secrets {
        Secrets::All => cx,
        Secrets::ExceptAdminKeys => cx.without_admin_keys(),
    };
    validate::config(cx, raw, channels, source).map_err(blamed)
}

/// The file with its variables on top, read into [`RawConfig`] (types and key names checked,
/// nothing validated or resolved), and which variable set which key.
fn raw_config(
    text: &str,
    file: &str,
    env: &[(String, String)],
) -> Result<(RawConfig, Vec<Override>), LoadError> {
    let (layered, overrides) = layer(text, file, env)?;
    let raw = typed(file, "", layered).map_err(|e| blame(e, &overrides))?;
    Ok((raw, overrides))
}

/// One `KEYSWEEP__…` variable and the key it overrides (`organizations[0].base_url`), so an
/// error at that key names the variable instead of the file.
struct Override {
    var: String,
    key: String,
}

/// The file with the `KEYSWEEP__…` variables of `env` on top, and which variable set which key.
///
/// A variable names a key by its sections, `__` between them: `KEYSWEEP__SAFETY__KILL_SWITCH_FILE`.
/// A number indexes a list of entries the file has (`KEYSWEEP__ORGANIZATIONS__0__BASE_URL` is
/// `organizations[0].base_url`); a variable can change a key of an entry, never add an entry,
/// so an index past the file's entries is refused, naming the variable and the entries there are.
fn layer(
    text: &str,
    file: &str,
    env: &[(String, String)],
) -> Result<(config::Config, Vec<Override>), LoadError> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut vars: Vec<&(String, String)> =
        env.iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
    vars.sort();
    let file_err = |e: ConfigError| LoadError::File {
        file: file.to_string(),
        message: scrub(&e.to_string()),
    };
    // The TOML parser's own error quotes the offending line, and that line may hold a secret
    // (a webhook URL's token, a password written in place): only where, and why, is said.
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(LoadError::File {
            file: file.to_string(),
            message: syntax_error(text, &e),
        });
    }
    let source = || config::File::from_str(text, config::FileFormat::Toml);
    let alone = config::Config::builder()
        .add_source(source())
        .build()
        .map_err(file_err)?;
    let mut builder = config::Config::builder().add_source(source());
    let mut overrides = Vec::new();
    for (var, value) in vars {
        let key = override_key(&alone, file, var, &var[prefix.len()..])?;
        builder = builder
            .set_override(&key, value.clone())
            .map_err(|e| var_error(var, &key, message(e)))?;
        overrides.push(Override {
            var: var.clone(),
            key,
        });
    }
    let layered = builder.build().map_err(|e| match overrides.as_slice() {
        // Only variables can make a file that built alone fail to build.
        [one] => var_error(&one.var, &one.key, message(e)),
        _ => file_err(e),
    })?;
    Ok((layered, overrides))
}

/// The key path a variable names (`organizations[0].base_url` for `ORGANIZATIONS__0__BASE_URL`),
/// checked against the file alone: every index must be one of its entries.
fn override_key(
    alone: &config::Config,
    file: &str,
    var: &str,
    rest: &str,
) -> Result<String, LoadError> {
    let mut key = String::new();
    for (i, part) in rest.split("__").enumerate() {
        // `KEYSWEEP__` or `KEYSWEEP__LIMITS____X` name no key: config-rs would report an unknown
        // field `` against the file, naming neither the key nor the variable.
        if part.is_empty() {
            return Err(LoadError::Invalid {
                file: file.to_string(),
                key: var.to_string(),
                message: format!(
                    "environment variable {var} names no configuration key (expected \
                     {ENV_PREFIX}__SECTION__KEY)"
                ),
            });
        }
        let part = part.to_ascii_lowercase();
        if part.bytes().all(|b| b.is_ascii_digit()) && i > 0 {
            let entries = alone.get_array(&key).map(|a| a.len()).map_err(|_| {
                var_error(
                    var,
                    &key,
                    format!(
                        "is not a list of entries in {file}, so {part} cannot index it; a number \
                         in a variable indexes [[organizations]], [[policies]], [[exemptions]], \
                         [[channels]] or [[routes]] entries the file has"
                    ),
                )
            })?;
            match part.parse::<usize>() {
                Ok(n) if n < entries => key.push_str(&format!("[{n}]")),
                _ => {
                    return Err(var_error(
                        var,
                        &format!("{key}[{part}]"),
                        format!(
                            "{file} has {entries} {key} entr{} (index 0 to {}); a variable can \
                             override a key of an entry the file has, not add one",
                            if entries == 1 { "y" } else { "ies" },
                            entries.saturating_sub(1)
                        ),
                    ));
                }
            }
        } else if key.is_empty() {
            key = part;
        } else {
            key.push('.');
            key.push_str(&part);
        }
    }
    Ok(key)
}

/// An error caused by the environment variable `var`, which sets `key`.
fn var_error(var: &str, key: &str, message: String) -> LoadError {
    LoadError::Invalid {
        file: format!("environment variable {var}"),
        key: key.to_string(),
        message,
    }
}

/// `e`, blamed on the variable that set its key (or a key above or below it) if one did.
fn blame(e: LoadError, overrides: &[Override]) -> LoadError {
    let LoadError::Invalid { file, key, message } = e else {
        return e;
    };
    let related = |a: &str, b: &str| {
        a.strip_prefix(b)
            .is_some_and(|r| r.is_empty() || r.starts_with('.') || r.starts_with('['))
    };
    match overrides
        .iter()
        .find(|o| related(&key, &o.key) || related(&o.key, &key))
    {
        Some(o) => var_error(&o.var, &key, message),
        None => LoadError::Invalid { file, key, message },
    }
}

/// Reads `value` (found at key path `prefix`) into `T`, naming the full key of any error.
fn typed<T, D>(file: &str, prefix: &str, value: D) -> Result<T, LoadError>
where
    T: DeserializeOwned,
    D: for<'de> serde::Deserializer<'de, Error = ConfigError>,
{
    typed_or_missing(file, prefix, value, None)
}

/// [`typed`], but a missing key is named itself (`channels[0].url: <missing>`) instead of the
/// entry that lacks it, as config-rs would (`channels[0]: missing configuration field "url"`).
fn typed_or_missing<T, D>(
    file: &str,
    prefix: &str,
    value: D,
    missing: Option<&str>,
) -> Result<T, LoadError>
where
    T: DeserializeOwned,
    D: for<'de> serde::Deserializer<'de, Error = ConfigError>,
{
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let invalid = |key: String, message: String| LoadError::Invalid {
            file: file.to_string(),
            key,
            message,
        };
        match (e.into_inner(), missing) {
            (ConfigError::NotFound(field), Some(why)) if path == "." => {
                invalid(join(prefix, &field), why.to_string())
            }
            (e, _) if path == "." && prefix.is_empty() => invalid("(top level)".into(), message(e)),
            (e, _) if path == "." => invalid(prefix.to_string(), message(e)),
            (e, _) => invalid(join(prefix, &path), message(e)),
        }
    })
}

fn join(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_string()
    } else {
        format!("{prefix}.{path}")
    }
}

/// The error's own words. config-rs appends ``for key `…` `` to an error raised inside a
/// value (an unknown key, a value a `values.rs` type refused); our key path is already in front.
fn message(e: ConfigError) -> String {
    match e {
        ConfigError::At { error, .. } => scrub(&error.to_string()),
        other => scrub(&other.to_string()),
    }
}

/// Reads `channels[i]`: first its `name` and `type`, then the other keys into that type's struct.
fn read_channel(file: &str, i: usize, value: config::Value) -> Result<ChannelEntry, LoadError> {
    let at = format!("channels[{i}]");
    let mut rest = value.into_table().map_err(|e| LoadError::Invalid {
        file: file.to_string(),
        key: at.clone(),
        message: message(e),
    })?;
    let whole = config::Value::new(None, rest.clone());
    let head: RawChannelHead = typed_or_missing(file, &at, whole, Some("is required"))?;
    rest.remove("name");
    rest.remove("type");
    let rest = config::Value::new(None, rest);
    let why = format!("is required for a {} channel", head.kind.as_str());
    let why = Some(why.as_str());
    let kind = match head.kind {
        ChannelType::Email => RawChannelKind::Email(typed_or_missing(file, &at, rest, why)?),
        ChannelType::Slack => RawChannelKind::Slack(typed_or_missing(file, &at, rest, why)?),
        ChannelType::PagerDuty => {
            RawChannelKind::PagerDuty(typed_or_missing(file, &at, rest, why)?)
        }
        ChannelType::Webhook => RawChannelKind::Webhook(typed_or_missing(file, &at, rest, why)?),
    };
    Ok(ChannelEntry {
        name: head.name,
        kind,
    })
}

/// "TOML syntax error at line L, column C: reason", never the text of the line.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    // The parser's reason can run over several lines: one line, for the log.
    let reason = scrub(&crate::text::one_line(e.message().trim()));
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return format!("TOML syntax error: {reason}");
    };
    let before = &text[..text.floor_char_boundary(at)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(
        "TOML syntax error at line {line}, column {column}: {reason} (the line is not shown: it \
         may hold a secret)"
    )
}

/// config-rs errors can quote values; none of ours are secrets (secrets come from elsewhere),
/// but cap the length so a pasted blob never floods a log.
fn scrub(s: &str) -> String {
    if s.len() > 500 {
        format!("{}…", &s[..s.floor_char_boundary(500)])
    } else {
        s.to_string()
    }
}
