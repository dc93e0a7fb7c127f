//! The configuration as written: the serde structs the TOML file (plus `KEYSWEEP__…` overrides)
//! is read into, every value already typed and checked (`values.rs`), every unknown key an error.
//!
//! The children do the rest: `load` reads the file and the environment through config-rs and
//! `serde_path_to_error` (channels in a second step, once their `type` is known), `validate`
//! checks what one value alone cannot show (cross references, ranges, combinations) and builds
//! [`Config`](super::Config), `channel` does that for channels, and `context` resolves the
//! secrets the file names. This file only declares the shape and the error; it must never read a
//! secret, and its structs stay private and named `Raw…` (the deployment tests read their field
//! names to check that the example configuration documents every key).

mod channel;
mod context;
pub(super) mod load;
mod sinks;
mod validate;

use std::path::PathBuf;

use serde::Deserialize;

use super::values::{
    BaseUrl, CronExpr, Glob, HttpUrl, HumanDuration, ListenAddr, Mailbox, NamePattern, NonEmpty,
    TimeZone, Until, choice, flag, opt_choice, opt_flag,
};
use super::{Action, LogFormat, Mode, OwnerTypeSelector, ServiceAccountKeys, SinkFormat, SmtpTls};

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a configuration table")]
struct RawConfig {
    #[serde(default, deserialize_with = "opt_choice")]
    mode: Option<Mode>,
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
    /// Kept as written here and read into a [`ChannelEntry`] in a second step: which keys apply
    /// depends on `type`, and serde's tagged enums would buffer the entry and lose key paths.
    #[serde(default)]
    channels: Vec<config::Value>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    ops_channels: Vec<String>,
    #[serde(default)]
    owner_fallback: Vec<String>,
    #[serde(default)]
    notifications: RawNotifications,
    schedule: Option<CronExpr>,
    timezone: Option<TimeZone>,
    #[serde(default, deserialize_with = "opt_flag")]
    run_on_start: Option<bool>,
    jitter: Option<HumanDuration>,
    retry_failed_after: Option<HumanDuration>,
    shutdown_grace: Option<HumanDuration>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    /// Where `action = "rotate"` hands a freshly minted key (`[[sinks]]`).
    #[serde(default)]
    sinks: Vec<RawSink>,
    /// `[usage] window`: how far back each key's requests and cost are summed.
    #[serde(default)]
    usage: RawUsage,
    /// `[audit_log] backfill`: how far back the first read of the audit log goes.
    #[serde(default)]
    audit_log: RawAuditLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [usage] table")]
struct RawUsage {
    #[serde(default, deserialize_with = "opt_flag")]
    enabled: Option<bool>,
    window: Option<HumanDuration>,
    wake_after: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [audit_log] table")]
struct RawAuditLog {
    #[serde(default, deserialize_with = "opt_flag")]
    enabled: Option<bool>,
    backfill: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [[organizations]] table")]
struct RawOrg {
    name: NonEmpty,
    base_url: Option<BaseUrl>,
    admin_key_env: Option<String>,
    admin_key_file: Option<PathBuf>,
    admin_key_credential: Option<String>,
    /// The id of keysweep's own admin key (`key_…`), for the admin-key expiry alert.
    admin_key_id: Option<NonEmpty>,
    #[serde(default)]
    projects: Vec<Glob>,
    #[serde(default)]
    exclude_projects: Vec<Glob>,
    #[serde(default, deserialize_with = "flag")]
    include_archived: bool,
    ca_file: Option<PathBuf>,
    schedule: Option<CronExpr>,
    timezone: Option<TimeZone>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [limits] table")]
struct RawLimits {
    concurrency: Option<usize>,
    requests_per_second: Option<f64>,
    max_retries: Option<u32>,
    request_timeout: Option<HumanDuration>,
    max_response_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a table such as { projects = [\"proj_…\"] }")]
struct RawSelector {
    #[serde(default)]
    organizations: Vec<String>,
    #[serde(default)]
    projects: Vec<Glob>,
    #[serde(default, deserialize_with = "opt_choice")]
    owner_type: Option<OwnerTypeSelector>,
    #[serde(default)]
    key_name: Vec<Glob>,
    #[serde(default)]
    owner_email: Vec<Glob>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[policies]] table")]
struct RawPolicy {
    name: NonEmpty,
    #[serde(rename = "match", default)]
    selector: RawSelector,
    max_age: Option<HumanDuration>,
    max_idle: Option<HumanDuration>,
    never_used_grace: Option<HumanDuration>,
    #[serde(default, deserialize_with = "flag")]
    owner_lost_access: bool,
    name_pattern: Option<NamePattern>,
    max_lifetime: Option<HumanDuration>,
    /// Issue 16: keys the audit log shows with All permissions.
    #[serde(default, deserialize_with = "flag")]
    unrestricted: bool,
    #[serde(default, deserialize_with = "opt_choice")]
    action: Option<RawAction>,
    warn_before: Option<HumanDuration>,
    final_notice: Option<HumanDuration>,
    #[serde(default)]
    notify: Vec<String>,
    /// `action = "rotate"`: the `[[sinks]]` entry that receives the new key.
    sink: Option<String>,
    /// `action = "rotate"`: how long the old key keeps working after the new one is handed over.
    overlap: Option<HumanDuration>,
    /// `action = "rotate"`: the new key's scopes (`[]`: All permissions, said explicitly).
    scopes: Option<Vec<String>>,
}

/// `action` as written: the config's [`Action`] plus `rotate`, which is read as `expire` with
/// rotation settings (user keys cannot be minted, so for them rotation falls back to expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawAction {
    Notify,
    Revoke,
    Expire,
    Rotate,
}

impl RawAction {
    fn action(self) -> Action {
        match self {
            RawAction::Notify => Action::Notify,
            RawAction::Revoke => Action::Revoke,
            RawAction::Expire | RawAction::Rotate => Action::Expire,
        }
    }
}

/// One `[[sinks]]` entry. Which keys apply depends on `type`; `validate` names a key set for
/// the other type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[sinks]] table")]
struct RawSink {
    name: NonEmpty,
    #[serde(rename = "type", deserialize_with = "choice")]
    kind: SinkType,
    /// `type = "file"`: path template with `{organization}`, `{project_id}`,
    /// `{service_account_id}`.
    path: Option<String>,
    #[serde(default, deserialize_with = "opt_choice")]
    format: Option<SinkFormat>,
    /// `type = "exec"`: program and arguments, run without a shell.
    #[serde(default)]
    command: Vec<String>,
    /// `type = "exec"`: names of variables passed on from keysweep's environment (besides PATH).
    #[serde(default)]
    env: Vec<String>,
    timeout: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SinkType {
    File,
    Exec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an [[exemptions]] table")]
struct RawExemption {
    key_id: Option<String>,
    key_name: Option<Glob>,
    project: Option<Glob>,
    reason: Option<String>,
    until: Option<Until>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [safety] table")]
struct RawSafety {
    max_revocations_per_run: Option<u32>,
    max_revocations_per_project_percent: Option<u32>,
    max_revocations_per_day: Option<u32>,
    kill_switch_file: Option<PathBuf>,
    /// The removed key: read as text so that `"delete-service-account"` gets an error saying
    /// what replaced it rather than "unknown variant".
    service_accounts: Option<String>,
    #[serde(default, deserialize_with = "opt_choice")]
    service_account_keys: Option<ServiceAccountKeys>,
    restore_expiry: Option<HumanDuration>,
    max_recheck_skips: Option<u32>,
}

/// What every `[[channels]]` entry has: a name and a `type`, which picks the struct the other
/// keys are read into. Read first; the rest of the entry is checked by that struct.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a [[channels]] table")]
struct RawChannelHead {
    name: NonEmpty,
    #[serde(rename = "type", deserialize_with = "choice")]
    kind: ChannelType,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ChannelType {
    Email,
    Slack,
    PagerDuty,
    Webhook,
}

impl ChannelType {
    fn as_str(self) -> &'static str {
        match self {
            ChannelType::Email => "email",
            ChannelType::Slack => "slack",
            ChannelType::PagerDuty => "pagerduty",
            ChannelType::Webhook => "webhook",
        }
    }
}

/// One `[[channels]]` entry: its name and the keys of its type (a key of another type is an
/// unknown key, reported by name). Not named `Raw…`: serde does not read it as one struct.
#[derive(Debug)]
struct ChannelEntry {
    name: NonEmpty,
    kind: RawChannelKind,
}

#[derive(Debug)]
enum RawChannelKind {
    Email(RawEmail),
    Slack(RawSlack),
    PagerDuty(RawPagerDuty),
    Webhook(RawWebhook),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[channels]] table")]
struct RawEmail {
    smtp_host: NonEmpty,
    smtp_port: Option<u16>,
    #[serde(default, deserialize_with = "opt_choice")]
    smtp_tls: Option<SmtpTls>,
    smtp_ca_file: Option<PathBuf>,
    smtp_username_env: Option<String>,
    smtp_password_env: Option<String>,
    from: Mailbox,
    #[serde(default)]
    to: Vec<Mailbox>,
    #[serde(default, deserialize_with = "flag")]
    owner: bool,
    send_timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[channels]] table")]
struct RawSlack {
    webhook_url_env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[channels]] table")]
struct RawPagerDuty {
    routing_key_env: String,
    url: Option<HttpUrl>,
    max_messages_per_sweep: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[channels]] table")]
struct RawWebhook {
    url: HttpUrl,
    secret_env: String,
    max_messages_per_sweep: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a [[routes]] table")]
struct RawRoute {
    #[serde(default)]
    projects: Vec<Glob>,
    #[serde(default)]
    channels: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [notifications] table")]
struct RawNotifications {
    repeat_interval: Option<HumanDuration>,
    max_attempts: Option<u32>,
    outbox_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [server] table")]
struct RawServer {
    listen: Option<ListenAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "the [log] table")]
struct RawLog {
    #[serde(default, deserialize_with = "opt_choice")]
    format: Option<LogFormat>,
}
