//! Configuration: the TOML file plus `KEYSWEEP__SECTION__KEY` environment overrides, validated
//! into the typed [`Config`] every other module reads.
//!
//! `raw.rs` declares the file's shape, read straight into typed values (`values.rs`) and checked
//! once, at load; its children turn it into these validated types, and every error names the
//! file and the key (`organizations[0].base_url: …`). `effective.rs` renders the result back.
//! Secrets are resolved at load (environment or credential file) into `SecretString` and never
//! leave as plain text: this module must never print, log or `Debug` a secret value.

pub mod cron;
mod effective;
pub(crate) use effective::duration_text;
#[cfg(test)]
mod fuzz;
mod gaps;
mod raw;
#[cfg(test)]
mod tests_expiry;
#[cfg(test)]
mod tests_sinks;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

pub use effective::render as render_effective;
pub use gaps::gaps;
pub use raw::LoadError;
pub use raw::load::{
    ENV_PREFIX, default_config_path, load, load_from_str, load_without_admin_keys, state_path_of,
};
pub use values::{parse_duration, validate_cron};

/// Conservative safety defaults: a misconfigured policy can delete at most this much.
pub const DEFAULT_MAX_REVOCATIONS_PER_RUN: u32 = 10;
pub const DEFAULT_MAX_REVOCATIONS_PER_PROJECT_PERCENT: u32 = 25;
pub const DEFAULT_MAX_REVOCATIONS_PER_DAY: u32 = 50;

/// What keysweep is allowed to do to keys. Deletion is permanent, so the default is `DryRun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    DryRun,
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry-run",
            Mode::Enforce => "enforce",
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration came from (for messages and SIGHUP reloads).
    pub source: Option<PathBuf>,
    /// SHA-256 (hex) of the effective configuration without secrets; written into audit records.
    pub hash: String,
    pub mode: Mode,
    pub state_path: PathBuf,
    pub organizations: Vec<OrgConfig>,
    pub limits: Limits,
    pub policies: Vec<PolicyConfig>,
    pub exemptions: Vec<ExemptionConfig>,
    pub safety: Safety,
    pub channels: Vec<ChannelConfig>,
    pub routes: Vec<RouteConfig>,
    /// Channels that receive enforcer alerts (incomplete listing, auth failure, cap hit, …).
    pub ops_channels: Vec<String>,
    /// Channels for findings whose owner has no e-mail (service accounts, unknown owners).
    pub owner_fallback: Vec<String>,
    pub notifications: NotificationSettings,
    pub schedule: Schedule,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub shutdown_grace: Duration,
    /// Non-fatal problems found while loading (e.g. a secret file readable by others); logged
    /// once telemetry is up.
    pub warnings: Vec<String>,
    /// `[[sinks]]`: where `action = "rotate"` hands a freshly minted key.
    pub sinks: Vec<SinkConfig>,
    /// The policies with `action = "rotate"`, and their settings.
    pub rotations: Vec<RotateConfig>,
    /// `[safety] max_recheck_skips` (default 3): after this many consecutive re-check skips of
    /// the same key an enforcer alert says which key and why (0: never). Kept here rather than
    /// in `Safety`, whose literals the plan's tests build.
    pub max_recheck_skips: u32,
    /// `[usage]` and `[audit_log]`: the audit log and usage readers' settings.
    pub intel: IntelSettings,
}

/// `[usage] window` (default 30 d: each key's requests and cost are summed over it) and
/// `[audit_log] backfill` (default 90 d: how far back the first read of the audit log goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntelSettings {
    /// `[audit_log] enabled` (default true): false reads no audit log at all (no creators,
    /// scopes or gap check, and no alert for their absence).
    pub audit_log_enabled: bool,
    /// `[usage] enabled` (default true): false reads neither usage nor costs.
    pub usage_enabled: bool,
    pub usage_window: Duration,
    pub audit_backfill: Duration,
    /// `[usage] wake_after` (default 30 d): a key idle at least this long that is used again
    /// raises an enforcer alert at once (what a leaked key looks like).
    pub wake_after: Duration,
}

impl IntelSettings {
    pub const DEFAULT_USAGE_WINDOW: Duration = Duration::from_secs(30 * 86_400);
    pub const DEFAULT_AUDIT_BACKFILL: Duration = Duration::from_secs(90 * 86_400);
    pub const DEFAULT_WAKE_AFTER: Duration = Duration::from_secs(30 * 86_400);

    /// Whether both are the defaults (the effective configuration leaves them out then, so
    /// configurations that do not set them keep their hash).
    pub fn is_default(&self) -> bool {
        *self == IntelSettings::default()
    }

    /// The usage window in whole days (at least 1).
    pub fn window_days(&self) -> u32 {
        u32::try_from(self.usage_window.as_secs() / 86_400)
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

impl Default for IntelSettings {
    fn default() -> Self {
        IntelSettings {
            audit_log_enabled: true,
            usage_enabled: true,
            usage_window: Self::DEFAULT_USAGE_WINDOW,
            audit_backfill: Self::DEFAULT_AUDIT_BACKFILL,
            wake_after: Self::DEFAULT_WAKE_AFTER,
        }
    }
}

impl Config {
    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// The `[[sinks]]` entry named `name`.
    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// The rotation settings of policy `name`, when its action is `rotate`.
    pub fn rotation(&self, policy: &str) -> Option<&RotateConfig> {
        self.rotations.iter().find(|r| r.policy == policy)
    }

    /// The first organisation (index, host) whose API is not on this machine: a real one,
    /// not the simulator. `run --once --now` may write only when there is none.
    pub fn remote_organization(&self) -> Option<(usize, &str)> {
        (self.organizations.iter().enumerate())
            .map(|(i, o)| (i, o.base_url.host_str().unwrap_or_default()))
            .find(|(_, host)| !is_loopback_host(host))
    }
}

#[derive(Debug, Clone)]
pub struct OrgConfig {
    pub name: String,
    /// Base URL including the version path, e.g. `https://api.openai.com/v1`.
    pub base_url: url::Url,
    pub admin_key: SecretString,
    /// Where the admin key came from (`env OPENAI_ADMIN_KEY`, `file …`), for `check-config`.
    pub admin_key_source: String,
    /// The id of keysweep's own admin key, when configured: the admin-key expiry alert is about
    /// that key only. Without it, keysweep recognises its key by the redacted value's suffix.
    pub admin_key_id: Option<String>,
    /// Project ids or name globs; empty means every active project.
    pub projects: Vec<String>,
    pub exclude_projects: Vec<String>,
    pub include_archived: bool,
    /// Extra trusted CA (PEM) for networks behind a TLS-inspecting proxy.
    pub ca_file: Option<PathBuf>,
    /// Per-organisation schedule override.
    pub schedule: Option<Schedule>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub concurrency: usize,
    pub requests_per_second: Option<f64>,
    pub max_retries: u32,
    pub request_timeout: Duration,
    /// Largest response body accepted from the API; larger answers make the listing incomplete.
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerTypeSelector {
    User,
    ServiceAccount,
}

/// Which keys a policy looks at. Every non-empty list must match (AND); within a list any entry
/// may match (OR).
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub organizations: Vec<String>,
    /// Project ids or project-name globs.
    pub projects: Vec<String>,
    pub owner_type: Option<OwnerTypeSelector>,
    pub key_name: Vec<String>,
    pub owner_email: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Notify,
    /// DELETE the key at the deadline.
    Revoke,
    /// Set the key's expiry to the deadline in the sweep that first warns: OpenAI then ends the
    /// key at the promised moment even if keysweep is down.
    Expire,
}

impl Action {
    /// True for the actions that write to a key (`revoke`, `expire`): they are the ones the
    /// safety rails (mode, caps, kill switch, service-account rule) apply to.
    pub fn enforces(self) -> bool {
        matches!(self, Action::Revoke | Action::Expire)
    }
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub name: String,
    pub selector: Selector,
    pub max_age: Option<Duration>,
    pub max_idle: Option<Duration>,
    /// Grace for never-used keys under `max_idle`; defaults to `max_idle`.
    pub never_used_grace: Option<Duration>,
    pub owner_lost_access: bool,
    /// Key names must match this regex; a key whose name does not match violates the policy.
    pub name_pattern: Option<regex::Regex>,
    /// Every key must expire within this long of its creation: a key without an expiry, or
    /// with one later than `created_at + max_lifetime`, violates.
    pub max_lifetime: Option<Duration>,
    /// `unrestricted = true` (issue 16): the key is known, from the audit log, to have All
    /// permissions (its scopes are `[]`); unknown scopes never match.
    pub unrestricted: bool,
    pub action: Action,
    pub warn_before: Duration,
    pub final_notice: Duration,
    /// Channel names that receive this policy's findings.
    pub notify: Vec<String>,
}

/// A policy's `action = "rotate"` settings (`Config::rotations`). Such a policy's `action`
/// reads `Expire`: that is the fallback for user keys, which cannot be minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateConfig {
    /// The policy's name.
    pub policy: String,
    /// The `[[sinks]]` entry that receives the new key (checked at load).
    pub sink: String,
    /// How long the old key keeps working once the new one is handed over (default 24 h).
    pub overlap: Duration,
    /// The new key's scopes when the audit log does not know the old key's (or says it has
    /// All permissions); `Some(vec![])` is All permissions, said explicitly; `None`: not
    /// configured, so such a key is not rotated (keysweep never mints All permissions by
    /// default).
    pub scopes: Option<Vec<String>>,
}

/// The default `overlap` of `action = "rotate"`.
pub const DEFAULT_ROTATE_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// One `[[sinks]]` entry.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    /// Write the key to a file (atomically, mode 0600).
    File {
        /// Path template: `{organization}`, `{project_id}`, `{service_account_id}`.
        path: String,
        format: SinkFormat,
    },
    /// Run a program without a shell, the key on its stdin; exit 0 confirms.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
        /// Variables passed on from keysweep's environment besides `PATH`.
        env: Vec<String>,
        timeout: Duration,
    },
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::File { .. } => "file",
            SinkKind::Exec { .. } => "exec",
        }
    }
}

/// How a file sink writes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// The secret alone, with a trailing newline.
    Raw,
    /// `OPENAI_API_KEY=…` plus `OPENAI_API_KEY_ID=…`.
    Env,
    /// A JSON object with the key's id, name, project, service account and value.
    Json,
}

#[derive(Debug, Clone)]
pub struct ExemptionConfig {
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    /// Project id or name glob.
    pub project: Option<String>,
    pub reason: String,
    /// Unix seconds (end of the given day, UTC) after which the exemption no longer applies.
    pub until: Option<i64>,
}

/// `[safety] service_account_keys`: service-account keys usually run production workloads, so
/// they are only reported unless the operator opts in. (`service_accounts = "notify-only"` is
/// the old spelling of the default; `"delete-service-account"` was removed: keys are enforced
/// one by one now, never a whole account.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAccountKeys {
    NotifyOnly,
    Enforce,
}

#[derive(Debug, Clone)]
pub struct Safety {
    pub max_revocations_per_run: u32,
    pub max_revocations_per_project_percent: u32,
    pub max_revocations_per_day: u32,
    pub kill_switch_file: Option<PathBuf>,
    pub service_account_keys: ServiceAccountKeys,
    /// Where an expiry keysweep set is moved back out to when its finding is withdrawn and the
    /// key had no expiry of its own (the API cannot remove an expiry). Default 365 days.
    pub restore_expiry: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Tls,
    None,
}

#[derive(Debug, Clone)]
pub struct EmailChannel {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    pub smtp_ca_file: Option<PathBuf>,
    pub smtp_username: Option<SecretString>,
    pub smtp_password: Option<SecretString>,
    pub from: String,
    pub to: Vec<String>,
    /// Also mail the key's owner (the user's e-mail from the API).
    pub owner: bool,
    pub send_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SlackChannel {
    pub webhook_url: SecretString,
}

#[derive(Debug, Clone)]
pub struct PagerDutyChannel {
    pub routing_key: SecretString,
    pub url: url::Url,
    /// At most this many notice messages per sweep (default 50); the rest are rolled up into
    /// one summary message.
    pub max_messages_per_sweep: u32,
}

#[derive(Debug, Clone)]
pub struct WebhookChannel {
    pub url: url::Url,
    /// Standard Webhooks secret, `whsec_<base64>`.
    pub secret: SecretString,
    /// At most this many notice messages per sweep (default 50); the rest are rolled up into
    /// one summary message.
    pub max_messages_per_sweep: u32,
}

/// `[safety] max_recheck_skips` by default.
pub const DEFAULT_MAX_RECHECK_SKIPS: u32 = 3;

/// `max_messages_per_sweep` of PagerDuty and webhook channels by default.
pub const DEFAULT_MAX_MESSAGES_PER_SWEEP: u32 = 50;

impl ChannelConfig {
    /// An e-mail channel with `owner = true`: the only kind that tells anyone in person.
    pub fn mails_owners(&self) -> bool {
        matches!(&self.kind, ChannelKind::Email(e) if e.owner)
    }

    /// How many notice messages this channel takes per sweep (`None`: digests only, which are
    /// already one per recipient and kind).
    pub fn max_messages_per_sweep(&self) -> Option<usize> {
        let cap = match &self.kind {
            ChannelKind::PagerDuty(p) => p.max_messages_per_sweep,
            ChannelKind::Webhook(w) => w.max_messages_per_sweep,
            ChannelKind::Email(_) | ChannelKind::Slack(_) => return None,
        };
        Some(usize::try_from(cap).unwrap_or(usize::MAX))
    }
}

#[derive(Debug, Clone)]
pub enum ChannelKind {
    Email(EmailChannel),
    Slack(SlackChannel),
    PagerDuty(PagerDutyChannel),
    Webhook(WebhookChannel),
}

impl ChannelKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ChannelKind::Email(_) => "email",
            ChannelKind::Slack(_) => "slack",
            ChannelKind::PagerDuty(_) => "pagerduty",
            ChannelKind::Webhook(_) => "webhook",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
}

/// Extra channels for findings in matching projects.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Project ids or name globs.
    pub projects: Vec<String>,
    pub channels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// Reminder interval for unchanged open findings.
    pub repeat_interval: Duration,
    /// Failed deliveries are retried this many times before the message is dead-lettered.
    pub max_attempts: u32,
    /// Where `keysweep demo` and dry runs may write rendered messages.
    pub outbox_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    /// 5-field or 6-field cron, validated at load.
    pub cron: String,
    pub timezone: chrono_tz::Tz,
    pub run_on_start: bool,
    pub jitter: Duration,
    /// A sweep that failed (`SweepResult::Failed`) runs again this long after, then twice as
    /// long after each further failure, until one succeeds or the next slot comes; zero: never.
    pub retry_failed_after: Duration,
}

/// The default `retry_failed_after`: soon enough that a blip costs minutes, not a slot, and
/// far enough that an API outage is not hammered (each retry is a whole listing).
pub const DEFAULT_RETRY_FAILED_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `None`: pretty on a terminal, JSON otherwise.
    pub format: Option<LogFormat>,
}

/// True when `host` is a loopback name or address (plain HTTP and SMTP without TLS are allowed
/// only there).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// Whether a project selector entry is a project id (`proj_…`, no glob character) rather than a
/// name glob. An id entry matches the project id only, never a project's name: a project owner
/// chooses the name, and could otherwise name a project after another's id to be selected,
/// routed or exempted like it (issue 14, row 1).
pub fn is_project_id_pattern(pattern: &str) -> bool {
    pattern.starts_with("proj_") && !pattern.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// A project selector entry (an organisation's `projects`/`exclude_projects`, a route's
/// `projects`), compiled once: a project id entry matches that id only
/// ([`is_project_id_pattern`]); anything else matches the id or the name exactly, or as a glob
/// (case-sensitive) over either.
#[derive(Debug, Clone)]
pub struct ProjectPattern {
    text: String,
    /// `None`: not a valid glob (the loader validates them), so it matches exactly only.
    glob: Option<globset::GlobMatcher>,
}

impl ProjectPattern {
    pub fn new(text: &str) -> ProjectPattern {
        ProjectPattern {
            text: text.to_string(),
            glob: globset::Glob::new(text).ok().map(|g| g.compile_matcher()),
        }
    }

    /// The entry as configured.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, project_id: &str, project_name: Option<&str>) -> bool {
        // A project id matches the id only, never a name its owner chose (issue 14, row 1).
        if is_project_id_pattern(&self.text) {
            return self.text == project_id;
        }
        if self.text == project_id || project_name == Some(self.text.as_str()) {
            return true;
        }
        self.glob
            .as_ref()
            .is_some_and(|g| g.is_match(project_id) || project_name.is_some_and(|n| g.is_match(n)))
    }

    /// A plain project id: it must exist, or the sweep is incomplete. The same test as the one
    /// [`ProjectPattern::matches`] makes, so an entry that is required to exist is also one
    /// that matches the id alone (they used to disagree on `]`, `}` and `\`).
    pub fn is_literal_id(&self) -> bool {
        is_project_id_pattern(&self.text)
    }
}

/// The warnings `check-config` (and every command) gives for selectors that match names, which
/// organisation members choose: key-name globs (any member renames a key) and project-name
/// patterns (project owners rename projects). Each names its configuration key.
pub fn name_selector_warnings(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let project = |key: String, patterns: &[String], out: &mut Vec<String>| {
        for p in patterns.iter().filter(|p| !is_project_id_pattern(p)) {
            out.push(format!(
                "{key}: {p:?} matches project names, which project owners choose and can change \
                 (renaming a project into or out of it); match by project id (proj_…) instead"
            ));
        }
    };
    let key_name = |key: String, p: &str, out: &mut Vec<String>| {
        out.push(format!(
            "{key}: {p:?} matches key names, which any member of the organisation chooses and \
             can change; match by key id (key_…) instead"
        ));
    };
    for (i, o) in c.organizations.iter().enumerate() {
        project(
            format!("organizations[{i}].projects"),
            &o.projects,
            &mut out,
        );
        project(
            format!("organizations[{i}].exclude_projects"),
            &o.exclude_projects,
            &mut out,
        );
    }
    for (i, p) in c.policies.iter().enumerate() {
        project(
            format!("policies[{i}].match.projects"),
            &p.selector.projects,
            &mut out,
        );
        for k in &p.selector.key_name {
            key_name(format!("policies[{i}].match.key_name"), k, &mut out);
        }
    }
    for (i, e) in c.exemptions.iter().enumerate() {
        if let Some(p) = &e.project {
            project(
                format!("exemptions[{i}].project"),
                std::slice::from_ref(p),
                &mut out,
            );
        }
        if let Some(k) = &e.key_name {
            key_name(format!("exemptions[{i}].key_name"), k, &mut out);
        }
    }
    for (i, r) in c.routes.iter().enumerate() {
        project(format!("routes[{i}].projects"), &r.projects, &mut out);
    }
    out
}

#[cfg(test)]
mod project_pattern_tests {
    use super::ProjectPattern;

    #[test]
    fn project_patterns_match_ids_exactly_and_globs_over_either() {
        let id = ProjectPattern::new("proj_abc");
        assert!(id.matches("proj_abc", None));
        // A name chosen to look like another project's id matches nothing.
        assert!(!id.matches("proj_other", Some("proj_abc")));
        let glob = ProjectPattern::new("prod-*");
        assert!(glob.matches("proj_1", Some("prod-eu")));
        assert!(!glob.matches("proj_1", Some("staging")));
        assert!(!glob.matches("proj_1", None));
        let over_ids = ProjectPattern::new("proj_a*");
        assert!(over_ids.matches("proj_abc", Some("x")));
        let exact = ProjectPattern::new("Team [a");
        assert!(
            exact.matches("proj_1", Some("Team [a")),
            "an invalid glob is exact"
        );
        assert!(!exact.matches("proj_1", Some("Team a")));
    }

    #[test]
    fn an_entry_is_a_required_id_exactly_when_it_matches_ids_alone() {
        for text in [
            "proj_abc",
            "proj_a]b",
            "proj_a}b",
            "proj_a\\b",
            "proj_a*",
            "proj_a?",
            "proj_[ab]",
            "proj_{a,b}",
            "prod",
            "Proj_abc",
        ] {
            let p = ProjectPattern::new(text);
            // A required id that a project's name could also match would let its owner stand
            // in for the missing project; a name pattern required to exist would fail every
            // sweep.
            let by_name = p.matches("proj_zzz", Some(text));
            assert_eq!(p.is_literal_id(), !by_name, "{text:?}");
            assert_eq!(
                p.is_literal_id(),
                super::is_project_id_pattern(text),
                "{text:?}"
            );
        }
    }
}
