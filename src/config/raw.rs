//! Raw configuration as written (serde), and its validation into [`Config`].
//!
//! Two steps, as ripgrep does with its low and high arguments: serde reads plain strings and
//! numbers (so a type error still carries its key path, via `serde_path_to_error`), then
//! `validate` parses durations, URLs, cron expressions, regexes and time zones, naming the key of
//! anything it rejects. Unknown keys are errors: a typo must never silently fall back to a
//! default. Secrets are read here from the environment or a credential file and go straight into
//! `SecretString`; no error message ever contains a secret value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    Action, ChannelConfig, ChannelKind, Config, EmailChannel, ExemptionConfig, Limits, LogConfig,
    LogFormat, Mode, NotificationSettings, OrgConfig, OwnerTypeSelector, PagerDutyChannel,
    PolicyConfig, RouteConfig, Safety, Schedule, Selector, ServerConfig, ServiceAccountRule,
    SlackChannel, SmtpTls, WebhookChannel, is_loopback_host,
};

/// The environment prefix: `KEYSWEEP__SAFETY__MAX_REVOCATIONS_PER_RUN=5`.
pub const ENV_PREFIX: &str = "KEYSWEEP";
const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Conservative safety defaults: a misconfigured policy can delete at most this much.
pub const DEFAULT_MAX_REVOCATIONS_PER_RUN: u32 = 10;
pub const DEFAULT_MAX_REVOCATIONS_PER_PROJECT_PERCENT: u32 = 25;
pub const DEFAULT_MAX_REVOCATIONS_PER_DAY: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A key has a bad value. `key` is the full path, e.g. `organizations[0].base_url`.
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    /// The file could not be read or parsed as TOML at all.
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// `--config`, else `$KEYSWEEP_CONFIG`, else this.
pub fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/keysweep/keysweep.toml")
}

/// Loads `path`, applies `KEYSWEEP__…` overrides from the process environment and validates.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::File {
        file: file.clone(),
        message: format!("cannot read configuration: {e}"),
    })?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_inner(&text, &file, &env, Some(path))
}

/// Loads from a string with an explicit environment (tests, the demo). Secrets named by
/// `*_env` keys are looked up in `env`.
pub fn load_from_str(toml: &str, env: &[(String, String)]) -> Result<Config, LoadError> {
    load_inner(toml, "<inline>", env, None)
}

fn load_inner(
    text: &str,
    file: &str,
    env: &[(String, String)],
    source: Option<&Path>,
) -> Result<Config, LoadError> {
    let prefix = format!("{ENV_PREFIX}__");
    let overrides: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .cloned()
        .collect();
    // `KEYSWEEP__` or `KEYSWEEP__LIMITS____X` name no key: config-rs would report an unknown
    // field `` against the file, naming neither the key nor the variable. Name the variable.
    if let Some(var) = overrides.keys().find(|k| {
        k.strip_prefix(&prefix)
            .is_some_and(|rest| rest.split("__").any(str::is_empty))
    }) {
        return Err(LoadError::Invalid {
            file: file.to_string(),
            key: var.clone(),
            message: format!(
                "environment variable {var} names no configuration key (expected {ENV_PREFIX}__SECTION__KEY)"
            ),
        });
    }
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .separator("__")
                .source(Some(overrides)),
        )
        .build()
        .map_err(|e| LoadError::File {
            file: file.to_string(),
            message: scrub(&e.to_string()),
        })?;
    let raw: RawConfig = serde_path_to_error::deserialize(built).map_err(|e| {
        let key = e.path().to_string();
        LoadError::Invalid {
            file: file.to_string(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: scrub(&e.into_inner().to_string()),
        }
    })?;
    let env_map: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut v = Validator {
        file,
        env: &env_map,
        warnings: Vec::new(),
    };
    v.config(raw, source)
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mode: Option<String>,
    state_path: Option<PathBuf>,
    #[serde(default)]
    organizations: Vec<RawOrg>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    policies: Vec<RawPolicy>,
    #[serde(default)]
    exemptions: Vec<RawExemption>,
    #[serde(default)]
    safety: RawSafety,
    #[serde(default)]
    channels: Vec<RawChannel>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    ops_channels: Vec<String>,
    #[serde(default)]
    owner_fallback: Vec<String>,
    #[serde(default)]
    notifications: RawNotifications,
    schedule: Option<String>,
    timezone: Option<String>,
    run_on_start: Option<bool>,
    jitter: Option<String>,
    shutdown_grace: Option<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrg {
    name: String,
    base_url: Option<String>,
    admin_key_env: Option<String>,
    admin_key_file: Option<PathBuf>,
    admin_key_credential: Option<String>,
    #[serde(default)]
    projects: Vec<String>,
    #[serde(default)]
    exclude_projects: Vec<String>,
    #[serde(default)]
    include_archived: bool,
    ca_file: Option<PathBuf>,
    schedule: Option<String>,
    timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    concurrency: Option<usize>,
    requests_per_second: Option<f64>,
    max_retries: Option<u32>,
    request_timeout: Option<String>,
    max_response_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    organizations: Vec<String>,
    #[serde(default)]
    projects: Vec<String>,
    owner_type: Option<String>,
    #[serde(default)]
    key_name: Vec<String>,
    #[serde(default)]
    owner_email: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(rename = "match", default)]
    selector: RawSelector,
    max_age: Option<String>,
    max_idle: Option<String>,
    never_used_grace: Option<String>,
    #[serde(default)]
    owner_lost_access: bool,
    name_pattern: Option<String>,
    action: Option<String>,
    warn_before: Option<String>,
    final_notice: Option<String>,
    #[serde(default)]
    notify: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExemption {
    key_id: Option<String>,
    key_name: Option<String>,
    project: Option<String>,
    reason: Option<String>,
    until: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    max_revocations_per_run: Option<u32>,
    max_revocations_per_project_percent: Option<u32>,
    max_revocations_per_day: Option<u32>,
    kill_switch_file: Option<PathBuf>,
    service_accounts: Option<String>,
}

/// One struct for every channel type so that a key that does not belong to the type is
/// reported by name instead of being ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    // email
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    smtp_tls: Option<String>,
    smtp_ca_file: Option<PathBuf>,
    smtp_username_env: Option<String>,
    smtp_password_env: Option<String>,
    from: Option<String>,
    to: Option<Vec<String>>,
    owner: Option<bool>,
    send_timeout: Option<String>,
    // slack
    webhook_url_env: Option<String>,
    // pagerduty
    routing_key_env: Option<String>,
    // pagerduty (override) and webhook
    url: Option<String>,
    // webhook
    secret_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    projects: Vec<String>,
    #[serde(default)]
    channels: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    repeat_interval: Option<String>,
    max_attempts: Option<u32>,
    outbox_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

struct Validator<'a> {
    file: &'a str,
    env: &'a BTreeMap<&'a str, &'a str>,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError::Invalid {
            file: self.file.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, LoadError> {
        match value {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(key, m)),
        }
    }

    fn opt_duration(&self, key: &str, value: Option<&str>) -> Result<Option<Duration>, LoadError> {
        value
            .map(|s| parse_duration(s).map_err(|m| self.err(key, m)))
            .transpose()
    }

    fn glob(&self, key: &str, pattern: &str) -> Result<(), LoadError> {
        globset::Glob::new(pattern)
            .map(|_| ())
            .map_err(|e| self.err(key, format!("invalid glob {pattern:?}: {e}")))
    }

    /// Reads a secret from the environment variable named by the config key `key`.
    fn env_secret(&self, key: &str, var: &str) -> Result<SecretString, LoadError> {
        if var.trim().is_empty() {
            return Err(self.err(key, "names no environment variable"));
        }
        match self.env.get(var) {
            Some(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
            Some(_) => Err(self.err(key, format!("environment variable {var} is empty"))),
            None => Err(self.err(key, format!("environment variable {var} is not set"))),
        }
    }

    /// `check_mode`: warn when the file is readable by group or others. Off for systemd
    /// credentials, whose files are root-owned with an ACL for the service user (`stat` shows
    /// 0440 although no group can read them), and whose directory systemd already protects.
    fn file_secret(
        &mut self,
        key: &str,
        path: &Path,
        check_mode: bool,
    ) -> Result<SecretString, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| self.err(key, format!("cannot read {}: {e}", path.display())))?;
        if check_mode && let Some(w) = readable_by_others(key, path) {
            self.warnings.push(w);
        }
        let value = text.trim();
        if value.is_empty() {
            return Err(self.err(key, format!("{} is empty", path.display())));
        }
        Ok(SecretString::from(value.to_string()))
    }

    fn config(&mut self, raw: RawConfig, source: Option<&Path>) -> Result<Config, LoadError> {
        let mode = match raw.mode.as_deref() {
            None | Some("dry-run") => Mode::DryRun,
            Some("enforce") => Mode::Enforce,
            Some(other) => {
                return Err(self.err(
                    "mode",
                    format!("must be \"dry-run\" or \"enforce\", not {other:?}"),
                ));
            }
        };

        let timezone = self.timezone("timezone", raw.timezone.as_deref())?;
        let schedule = Schedule {
            cron: self.cron("schedule", raw.schedule.as_deref().unwrap_or("0 */6 * * *"))?,
            timezone,
            run_on_start: raw.run_on_start.unwrap_or(true),
            jitter: self.duration("jitter", raw.jitter.as_deref(), Duration::ZERO)?,
        };

        if raw.organizations.is_empty() {
            return Err(self.err(
                "organizations",
                "at least one [[organizations]] entry is required",
            ));
        }
        let mut organizations = Vec::with_capacity(raw.organizations.len());
        for (i, o) in raw.organizations.into_iter().enumerate() {
            let org = self.org(i, o, &schedule)?;
            organizations.push(org);
        }
        for (i, o) in organizations.iter().enumerate() {
            if organizations[..i].iter().any(|p| p.name == o.name) {
                return Err(self.err(
                    format!("organizations[{i}].name"),
                    format!("duplicate organisation name {:?}", o.name),
                ));
            }
        }

        let limits = self.limits(raw.limits)?;

        let channels = raw
            .channels
            .into_iter()
            .enumerate()
            .map(|(i, c)| self.channel(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, c) in channels.iter().enumerate() {
            if channels[..i].iter().any(|p| p.name == c.name) {
                return Err(self.err(
                    format!("channels[{i}].name"),
                    format!("duplicate channel name {:?}", c.name),
                ));
            }
        }
        let known = |name: &str| channels.iter().any(|c| c.name == name);

        let mut policies = Vec::with_capacity(raw.policies.len());
        for (i, p) in raw.policies.into_iter().enumerate() {
            let p = self.policy(i, p, &organizations)?;
            for (j, ch) in p.notify.iter().enumerate() {
                if !known(ch) {
                    return Err(self.err(
                        format!("policies[{i}].notify[{j}]"),
                        format!("no channel named {ch:?}"),
                    ));
                }
            }
            if policies.iter().any(|q: &PolicyConfig| q.name == p.name) {
                return Err(self.err(
                    format!("policies[{i}].name"),
                    format!("duplicate policy name {:?}", p.name),
                ));
            }
            policies.push(p);
        }

        let exemptions = raw
            .exemptions
            .into_iter()
            .enumerate()
            .map(|(i, e)| self.exemption(i, e))
            .collect::<Result<Vec<_>, _>>()?;

        let safety = self.safety(raw.safety)?;

        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            if r.projects.is_empty() {
                return Err(self.err(
                    format!("routes[{i}].projects"),
                    "must name at least one project id or glob",
                ));
            }
            for (j, p) in r.projects.iter().enumerate() {
                self.glob(&format!("routes[{i}].projects[{j}]"), p)?;
            }
            for (j, ch) in r.channels.iter().enumerate() {
                if !known(ch) {
                    return Err(self.err(
                        format!("routes[{i}].channels[{j}]"),
                        format!("no channel named {ch:?}"),
                    ));
                }
            }
            routes.push(RouteConfig {
                projects: r.projects,
                channels: r.channels,
            });
        }
        for (key, list) in [
            ("ops_channels", &raw.ops_channels),
            ("owner_fallback", &raw.owner_fallback),
        ] {
            for (j, ch) in list.iter().enumerate() {
                if !known(ch) {
                    return Err(self.err(format!("{key}[{j}]"), format!("no channel named {ch:?}")));
                }
            }
        }

        let notifications = NotificationSettings {
            repeat_interval: self.duration(
                "notifications.repeat_interval",
                raw.notifications.repeat_interval.as_deref(),
                Duration::from_secs(24 * 3600),
            )?,
            max_attempts: match raw.notifications.max_attempts {
                None => 12,
                Some(0) => return Err(self.err("notifications.max_attempts", "must be at least 1")),
                Some(n) => n,
            },
            outbox_dir: raw.notifications.outbox_dir,
        };

        let listen = raw.server.listen.as_deref().unwrap_or("127.0.0.1:9464");
        let server = ServerConfig {
            listen: SocketAddr::from_str(listen).map_err(|e| {
                self.err(
                    "server.listen",
                    format!("{listen:?} is not an address:port: {e}"),
                )
            })?,
        };
        let log = LogConfig {
            format: match raw.log.format.as_deref() {
                None => None,
                Some("json") => Some(LogFormat::Json),
                Some("pretty") => Some(LogFormat::Pretty),
                Some(other) => {
                    return Err(self.err(
                        "log.format",
                        format!("must be \"json\" or \"pretty\", not {other:?}"),
                    ));
                }
            },
        };

        let mut config = Config {
            source: source.map(Path::to_path_buf),
            hash: String::new(),
            mode,
            state_path: raw
                .state_path
                .unwrap_or_else(|| PathBuf::from("keysweep.db")),
            organizations,
            limits,
            policies,
            exemptions,
            safety,
            channels,
            routes,
            ops_channels: raw.ops_channels,
            owner_fallback: raw.owner_fallback,
            notifications,
            schedule,
            server,
            log,
            shutdown_grace: self.duration(
                "shutdown_grace",
                raw.shutdown_grace.as_deref(),
                Duration::from_secs(30),
            )?,
            warnings: std::mem::take(&mut self.warnings),
        };
        let effective = super::effective::render(&config);
        config.hash = hex::encode(Sha256::digest(effective.as_bytes()));
        Ok(config)
    }

    fn timezone(&self, key: &str, tz: Option<&str>) -> Result<chrono_tz::Tz, LoadError> {
        match tz {
            None => Ok(chrono_tz::UTC),
            Some(s) => s.parse::<chrono_tz::Tz>().map_err(|_| {
                self.err(
                    key,
                    format!("{s:?} is not an IANA time zone name (e.g. \"Europe/Berlin\")"),
                )
            }),
        }
    }

    fn cron(&self, key: &str, expr: &str) -> Result<String, LoadError> {
        validate_cron(expr).map_err(|m| self.err(key, m))?;
        Ok(expr.to_string())
    }

    fn org(&mut self, i: usize, o: RawOrg, global: &Schedule) -> Result<OrgConfig, LoadError> {
        let k = |f: &str| format!("organizations[{i}].{f}");
        if o.name.trim().is_empty() {
            return Err(self.err(k("name"), "must not be empty"));
        }
        let base = o.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let base_url = url::Url::parse(base)
            .map_err(|e| self.err(k("base_url"), format!("{base:?} is not a URL: {e}")))?;
        match base_url.scheme() {
            "https" => {}
            "http" => {
                let host = base_url.host_str().unwrap_or("");
                if !is_loopback_host(host) {
                    return Err(self.err(
                        k("base_url"),
                        format!("plain http:// is refused except on loopback (got host {host:?}); use https://"),
                    ));
                }
            }
            other => return Err(self.err(k("base_url"), format!("unsupported scheme {other:?}"))),
        }
        if base_url.cannot_be_a_base() || base_url.query().is_some() {
            return Err(self.err(
                k("base_url"),
                "must be a base URL such as https://api.openai.com/v1",
            ));
        }
        let sources = [
            o.admin_key_env.is_some(),
            o.admin_key_file.is_some(),
            o.admin_key_credential.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources > 1 {
            return Err(self.err(
                k("admin_key_env"),
                "set only one of admin_key_env, admin_key_file and admin_key_credential",
            ));
        }
        let (admin_key, admin_key_source) = if let Some(path) = &o.admin_key_file {
            (
                self.file_secret(&k("admin_key_file"), path, true)?,
                format!("file {}", path.display()),
            )
        } else if let Some(name) = &o.admin_key_credential {
            let dir = self
                .env
                .get("CREDENTIALS_DIRECTORY")
                .copied()
                .ok_or_else(|| {
                    self.err(
                        k("admin_key_credential"),
                        "CREDENTIALS_DIRECTORY is not set (use systemd LoadCredential=)",
                    )
                })?;
            (
                self.file_secret(
                    &k("admin_key_credential"),
                    &Path::new(dir).join(name),
                    false,
                )?,
                format!("credential {name}"),
            )
        } else {
            let var = o.admin_key_env.as_deref().unwrap_or("OPENAI_ADMIN_KEY");
            (
                self.env_secret(&k("admin_key_env"), var)?,
                format!("env {var}"),
            )
        };
        for (j, p) in o.projects.iter().enumerate() {
            self.glob(&format!("organizations[{i}].projects[{j}]"), p)?;
        }
        for (j, p) in o.exclude_projects.iter().enumerate() {
            self.glob(&format!("organizations[{i}].exclude_projects[{j}]"), p)?;
        }
        if let Some(ca) = &o.ca_file {
            std::fs::metadata(ca).map_err(|e| {
                self.err(k("ca_file"), format!("cannot read {}: {e}", ca.display()))
            })?;
        }
        let schedule = if o.schedule.is_some() || o.timezone.is_some() {
            Some(Schedule {
                cron: match &o.schedule {
                    Some(s) => self.cron(&k("schedule"), s)?,
                    None => global.cron.clone(),
                },
                timezone: match &o.timezone {
                    Some(_) => self.timezone(&k("timezone"), o.timezone.as_deref())?,
                    None => global.timezone,
                },
                run_on_start: global.run_on_start,
                jitter: global.jitter,
            })
        } else {
            None
        };
        Ok(OrgConfig {
            name: o.name,
            base_url,
            admin_key,
            admin_key_source,
            projects: o.projects,
            exclude_projects: o.exclude_projects,
            include_archived: o.include_archived,
            ca_file: o.ca_file,
            schedule,
        })
    }

    fn limits(&self, l: RawLimits) -> Result<Limits, LoadError> {
        let concurrency = l.concurrency.unwrap_or(8);
        if !(1..=256).contains(&concurrency) {
            return Err(self.err("limits.concurrency", "must be between 1 and 256"));
        }
        if let Some(rps) = l.requests_per_second
            && (!rps.is_finite() || rps <= 0.0)
        {
            return Err(self.err("limits.requests_per_second", "must be a positive number"));
        }
        let max_retries = l.max_retries.unwrap_or(3);
        if max_retries > 10 {
            return Err(self.err("limits.max_retries", "must be at most 10"));
        }
        let request_timeout = self.duration(
            "limits.request_timeout",
            l.request_timeout.as_deref(),
            Duration::from_secs(30),
        )?;
        if request_timeout.is_zero() {
            return Err(self.err("limits.request_timeout", "must be greater than zero"));
        }
        let max_response_bytes = l.max_response_bytes.unwrap_or(16 * 1024 * 1024);
        if max_response_bytes < 1024 {
            return Err(self.err("limits.max_response_bytes", "must be at least 1024"));
        }
        Ok(Limits {
            concurrency,
            requests_per_second: l.requests_per_second,
            max_retries,
            request_timeout,
            max_response_bytes,
        })
    }

    fn policy(
        &self,
        i: usize,
        p: RawPolicy,
        orgs: &[OrgConfig],
    ) -> Result<PolicyConfig, LoadError> {
        let k = |f: &str| format!("policies[{i}].{f}");
        if p.name.trim().is_empty() {
            return Err(self.err(k("name"), "must not be empty"));
        }
        let s = p.selector;
        for (j, o) in s.organizations.iter().enumerate() {
            if !orgs.iter().any(|org| &org.name == o) {
                return Err(self.err(
                    format!("policies[{i}].match.organizations[{j}]"),
                    format!("no organisation named {o:?}"),
                ));
            }
        }
        for (field, list) in [
            ("projects", &s.projects),
            ("key_name", &s.key_name),
            ("owner_email", &s.owner_email),
        ] {
            for (j, g) in list.iter().enumerate() {
                self.glob(&format!("policies[{i}].match.{field}[{j}]"), g)?;
            }
        }
        let owner_type = match s.owner_type.as_deref() {
            None => None,
            Some("user") => Some(OwnerTypeSelector::User),
            Some("service_account") => Some(OwnerTypeSelector::ServiceAccount),
            Some(other) => {
                return Err(self.err(
                    format!("policies[{i}].match.owner_type"),
                    format!("must be \"user\" or \"service_account\", not {other:?}"),
                ));
            }
        };
        let max_age = self.opt_duration(&k("max_age"), p.max_age.as_deref())?;
        let max_idle = self.opt_duration(&k("max_idle"), p.max_idle.as_deref())?;
        let never_used_grace =
            self.opt_duration(&k("never_used_grace"), p.never_used_grace.as_deref())?;
        if never_used_grace.is_some() && max_idle.is_none() {
            return Err(self.err(k("never_used_grace"), "only applies together with max_idle"));
        }
        let name_pattern = p
            .name_pattern
            .as_deref()
            .map(|r| {
                regex::Regex::new(r)
                    .map_err(|e| self.err(k("name_pattern"), format!("invalid regex: {e}")))
            })
            .transpose()?;
        if max_age.is_none() && max_idle.is_none() && !p.owner_lost_access && name_pattern.is_none()
        {
            return Err(self.err(
                k("name"),
                "a policy needs at least one condition: max_age, max_idle, owner_lost_access or name_pattern",
            ));
        }
        for (key, d) in [("max_age", max_age), ("max_idle", max_idle)] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(self.err(k(key), "must be greater than zero"));
            }
        }
        let action = match p.action.as_deref() {
            None | Some("notify") => Action::Notify,
            Some("revoke") => Action::Revoke,
            Some(other) => {
                return Err(self.err(
                    k("action"),
                    format!("must be \"notify\" or \"revoke\", not {other:?}"),
                ));
            }
        };
        let warn_before = self.duration(
            &k("warn_before"),
            p.warn_before.as_deref(),
            Duration::from_secs(7 * 86400),
        )?;
        let final_notice = self.duration(
            &k("final_notice"),
            p.final_notice.as_deref(),
            Duration::from_secs(86400),
        )?;
        if final_notice > warn_before {
            return Err(self.err(k("final_notice"), "must not be longer than warn_before"));
        }
        Ok(PolicyConfig {
            name: p.name,
            selector: Selector {
                organizations: s.organizations,
                projects: s.projects,
                owner_type,
                key_name: s.key_name,
                owner_email: s.owner_email,
            },
            max_age,
            max_idle,
            never_used_grace,
            owner_lost_access: p.owner_lost_access,
            name_pattern,
            action,
            warn_before,
            final_notice,
            notify: p.notify,
        })
    }

    fn exemption(&self, i: usize, e: RawExemption) -> Result<ExemptionConfig, LoadError> {
        let k = |f: &str| format!("exemptions[{i}].{f}");
        let reason = match e.reason {
            Some(r) if !r.trim().is_empty() => r,
            _ => return Err(self.err(k("reason"), "is required: say why this key is exempt")),
        };
        if e.key_id.is_none() && e.key_name.is_none() && e.project.is_none() {
            return Err(self.err(
                k("key_id"),
                "an exemption needs key_id, key_name or project",
            ));
        }
        if let Some(g) = &e.key_name {
            self.glob(&k("key_name"), g)?;
        }
        if let Some(g) = &e.project {
            self.glob(&k("project"), g)?;
        }
        let until = e
            .until
            .as_deref()
            .map(|s| parse_until(s).map_err(|m| self.err(k("until"), m)))
            .transpose()?;
        Ok(ExemptionConfig {
            key_id: e.key_id,
            key_name: e.key_name,
            project: e.project,
            reason,
            until,
        })
    }

    fn safety(&self, s: RawSafety) -> Result<Safety, LoadError> {
        let pct = s
            .max_revocations_per_project_percent
            .unwrap_or(DEFAULT_MAX_REVOCATIONS_PER_PROJECT_PERCENT);
        if pct > 100 {
            return Err(self.err(
                "safety.max_revocations_per_project_percent",
                "must be between 0 and 100",
            ));
        }
        let service_accounts = match s.service_accounts.as_deref() {
            None | Some("notify-only") => ServiceAccountRule::NotifyOnly,
            Some("delete-service-account") => ServiceAccountRule::DeleteServiceAccount,
            Some(other) => {
                return Err(self.err(
                    "safety.service_accounts",
                    format!("must be \"notify-only\" or \"delete-service-account\", not {other:?}"),
                ));
            }
        };
        Ok(Safety {
            max_revocations_per_run: s
                .max_revocations_per_run
                .unwrap_or(DEFAULT_MAX_REVOCATIONS_PER_RUN),
            max_revocations_per_project_percent: pct,
            max_revocations_per_day: s
                .max_revocations_per_day
                .unwrap_or(DEFAULT_MAX_REVOCATIONS_PER_DAY),
            kill_switch_file: s.kill_switch_file,
            service_accounts,
        })
    }

    fn channel(&self, i: usize, c: RawChannel) -> Result<ChannelConfig, LoadError> {
        let k = |f: &str| format!("channels[{i}].{f}");
        if c.name.trim().is_empty() {
            return Err(self.err(k("name"), "must not be empty"));
        }
        // Keys that belong to other channel types are mistakes, not noise.
        let present: Vec<(&str, bool)> = vec![
            ("smtp_host", c.smtp_host.is_some()),
            ("smtp_port", c.smtp_port.is_some()),
            ("smtp_tls", c.smtp_tls.is_some()),
            ("smtp_ca_file", c.smtp_ca_file.is_some()),
            ("smtp_username_env", c.smtp_username_env.is_some()),
            ("smtp_password_env", c.smtp_password_env.is_some()),
            ("from", c.from.is_some()),
            ("to", c.to.is_some()),
            ("owner", c.owner.is_some()),
            ("send_timeout", c.send_timeout.is_some()),
            ("webhook_url_env", c.webhook_url_env.is_some()),
            ("routing_key_env", c.routing_key_env.is_some()),
            ("url", c.url.is_some()),
            ("secret_env", c.secret_env.is_some()),
        ];
        let allowed: &[&str] = match c.kind.as_str() {
            "email" => &[
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
            ],
            "slack" => &["webhook_url_env"],
            "pagerduty" => &["routing_key_env", "url"],
            "webhook" => &["url", "secret_env"],
            other => {
                return Err(self.err(
                    k("type"),
                    format!("must be one of \"email\", \"slack\", \"pagerduty\", \"webhook\", not {other:?}"),
                ));
            }
        };
        if let Some((bad, _)) = present
            .iter()
            .find(|(key, set)| *set && !allowed.contains(key))
        {
            return Err(self.err(k(bad), format!("does not apply to a {} channel", c.kind)));
        }
        let required = |key: &str, v: &Option<String>| -> Result<String, LoadError> {
            match v {
                Some(s) if !s.trim().is_empty() => Ok(s.clone()),
                _ => Err(self.err(k(key), format!("is required for a {} channel", c.kind))),
            }
        };
        let kind = match c.kind.as_str() {
            "email" => {
                let smtp_host = required("smtp_host", &c.smtp_host)?;
                let smtp_tls = match c.smtp_tls.as_deref() {
                    None | Some("starttls") => SmtpTls::Starttls,
                    Some("tls") => SmtpTls::Tls,
                    Some("none") => SmtpTls::None,
                    Some(other) => {
                        return Err(self.err(
                            k("smtp_tls"),
                            format!("must be \"starttls\", \"tls\" or \"none\", not {other:?}"),
                        ));
                    }
                };
                if smtp_tls == SmtpTls::None && !is_loopback_host(&smtp_host) {
                    return Err(self.err(
                        k("smtp_tls"),
                        "\"none\" is allowed only for a loopback smtp_host",
                    ));
                }
                let from = required("from", &c.from)?;
                validate_mailbox(&from).map_err(|m| self.err(k("from"), m))?;
                let to = c.to.unwrap_or_default();
                for (j, addr) in to.iter().enumerate() {
                    validate_mailbox(addr)
                        .map_err(|m| self.err(format!("channels[{i}].to[{j}]"), m))?;
                }
                let owner = c.owner.unwrap_or(false);
                if to.is_empty() && !owner {
                    return Err(self.err(
                        k("to"),
                        "an email channel needs recipients in `to` or `owner = true`",
                    ));
                }
                if let Some(ca) = &c.smtp_ca_file {
                    std::fs::metadata(ca).map_err(|e| {
                        self.err(
                            k("smtp_ca_file"),
                            format!("cannot read {}: {e}", ca.display()),
                        )
                    })?;
                }
                let smtp_username = c
                    .smtp_username_env
                    .as_deref()
                    .map(|v| self.env_secret(&k("smtp_username_env"), v))
                    .transpose()?;
                let smtp_password = c
                    .smtp_password_env
                    .as_deref()
                    .map(|v| self.env_secret(&k("smtp_password_env"), v))
                    .transpose()?;
                if smtp_username.is_some() != smtp_password.is_some() {
                    return Err(self.err(
                        k("smtp_password_env"),
                        "smtp_username_env and smtp_password_env go together",
                    ));
                }
                if smtp_password.is_some() && smtp_tls == SmtpTls::None {
                    return Err(self.err(
                        k("smtp_tls"),
                        "refusing to send SMTP credentials without TLS",
                    ));
                }
                ChannelKind::Email(EmailChannel {
                    smtp_port: c.smtp_port.unwrap_or(match smtp_tls {
                        SmtpTls::Starttls => 587,
                        SmtpTls::Tls => 465,
                        SmtpTls::None => 25,
                    }),
                    smtp_host,
                    smtp_tls,
                    smtp_ca_file: c.smtp_ca_file,
                    smtp_username,
                    smtp_password,
                    from,
                    to,
                    owner,
                    send_timeout: self.duration(
                        &k("send_timeout"),
                        c.send_timeout.as_deref(),
                        Duration::from_secs(30),
                    )?,
                })
            }
            "slack" => {
                let var = required("webhook_url_env", &c.webhook_url_env)?;
                ChannelKind::Slack(SlackChannel {
                    webhook_url: self.env_secret(&k("webhook_url_env"), &var)?,
                })
            }
            "pagerduty" => {
                let var = required("routing_key_env", &c.routing_key_env)?;
                let url =
                    self.http_url(&k("url"), c.url.as_deref().unwrap_or(DEFAULT_PAGERDUTY_URL))?;
                ChannelKind::PagerDuty(PagerDutyChannel {
                    routing_key: self.env_secret(&k("routing_key_env"), &var)?,
                    url,
                })
            }
            _ => {
                let url = self.http_url(&k("url"), &required("url", &c.url)?)?;
                let var = required("secret_env", &c.secret_env)?;
                let secret = self.env_secret(&k("secret_env"), &var)?;
                {
                    use secrecy::ExposeSecret;
                    let s = secret.expose_secret();
                    let ok = s
                        .strip_prefix("whsec_")
                        .map(|b| {
                            use base64::Engine;
                            base64::engine::general_purpose::STANDARD
                                .decode(b)
                                .is_ok_and(|k| !k.is_empty())
                        })
                        .unwrap_or(false);
                    if !ok {
                        return Err(self.err(
                            k("secret_env"),
                            format!("the secret in {var} must be a Standard Webhooks secret: whsec_<base64>"),
                        ));
                    }
                }
                ChannelKind::Webhook(WebhookChannel { url, secret })
            }
        };
        Ok(ChannelConfig { name: c.name, kind })
    }

    fn http_url(&self, key: &str, s: &str) -> Result<url::Url, LoadError> {
        let u =
            url::Url::parse(s).map_err(|e| self.err(key, format!("{s:?} is not a URL: {e}")))?;
        match u.scheme() {
            "https" => Ok(u),
            "http" if u.host_str().is_some_and(is_loopback_host) => Ok(u),
            "http" => Err(self.err(
                key,
                "plain http:// is refused except on loopback; use https://",
            )),
            other => Err(self.err(key, format!("unsupported scheme {other:?}"))),
        }
    }
}

/// Human durations: `90d`, `36h`, `1h 30m`, `45s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"90d\" or \"36h\": {e}"))
}

/// Checks a cron expression: 5 fields (minute precision) or 6 fields (with seconds).
pub fn validate_cron(expr: &str) -> Result<(), String> {
    let fields = expr.split_whitespace().count();
    let seconds = match fields {
        5 => croner::parser::Seconds::Disallowed,
        6 => croner::parser::Seconds::Required,
        _ => {
            return Err(format!(
                "{expr:?} must have 5 fields (\"0 */6 * * *\") or 6 with seconds (\"*/30 * * * * *\")"
            ));
        }
    };
    croner::parser::CronParser::builder()
        .seconds(seconds)
        .build()
        .parse(expr)
        .map(|_| ())
        .map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))
}

/// `until` accepts a date (`2026-12-31`, valid through the end of that day, UTC) or an RFC 3339
/// time.
fn parse_until(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .map(|t| t.and_utc().timestamp())
        .ok_or_else(|| format!("{s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

fn validate_mailbox(s: &str) -> Result<(), String> {
    s.parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|e| format!("{s:?} is not an e-mail address: {e}"))
}

#[cfg(unix)]
fn readable_by_others(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{key}: secret file {} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn readable_by_others(_key: &str, _path: &Path) -> Option<String> {
    None
}
