//! The effective configuration as TOML, every default filled in and every secret replaced by
//! where it comes from, and every URL without its user-info, query and fragment (webhook URLs
//! often carry tokens there). `keysweep check-config` prints it and its SHA-256 is the config hash
//! written into audit records. It must never contain a secret value.
//!
//! It is a `Serialize` view of the validated [`Config`]: one struct per section, borrowing from
//! it. A secret has no field in these views, only a redacted marker. Fields are declared in
//! alphabetical order, the order the hand-built TOML table this replaced (a sorted map) had,
//! so the rendering — and with it the hash of an unchanged configuration — is unchanged.

use std::path::Path;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::{
    Action, ChannelConfig, ChannelKind, Config, EmailChannel, ExemptionConfig, LogFormat, Mode,
    OrgConfig, OwnerTypeSelector, PolicyConfig, RotateConfig, ServiceAccountKeys, SinkConfig,
    SinkFormat, SinkKind, SmtpTls,
};

const REDACTED: &str = "[redacted]";
/// The part of a URL that was removed (user-info, query, fragment), URL-safe.
const REDACTED_PART: &str = "redacted";

/// Renders `config` as TOML with secrets redacted.
pub fn render(config: &Config) -> String {
    toml::to_string_pretty(&View::of(config))
        .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
}

/// A URL as it may be shown: user-info, query and fragment (where tokens travel: `user:pass@`,
/// `?token=…`) replaced by `redacted`; scheme, host, port and path kept. A Slack webhook URL,
/// whose path is the secret, is never shown at all (see [`ChannelView`]).
fn redact_url(u: &url::Url) -> String {
    let mut v = u.clone();
    if !v.username().is_empty() || v.password().is_some() {
        // Fails only for URLs that cannot have user-info, which then have none.
        let _ = v.set_password(None);
        let _ = v.set_username(REDACTED_PART);
    }
    if v.query().is_some() {
        v.set_query(Some(REDACTED_PART));
    }
    if v.fragment().is_some() {
        v.set_fragment(Some(REDACTED_PART));
    }
    v.to_string()
}

/// A duration as the configuration would write it, in days, hours, minutes and seconds (`90d`,
/// `36h`, `91d 7h 28s`), never a count of seconds a person must divide (humantime would print
/// `90d` as `2months 29days …`). Loads back to the same duration.
pub(crate) fn duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    if secs == 0 {
        return "0s".to_string();
    }
    // One unit when it reads at a glance (`90d`, `36h`, `90s`), as the configuration wrote it.
    let whole = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")]
        .into_iter()
        .find(|(unit, _)| secs.is_multiple_of(*unit) && secs / unit < 1000);
    if let Some((unit, suffix)) = whole {
        return format!("{}{suffix}", secs / unit);
    }
    let mut left = secs;
    let mut parts = Vec::new();
    for (unit, suffix) in [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
        if left >= unit {
            parts.push(format!("{}{suffix}", left / unit));
            left %= unit;
        }
    }
    parts.join(" ")
}

fn dur<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_text(*d))
}

fn opt_dur<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => dur(d, s),
        None => s.serialize_none(),
    }
}

fn path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

fn opt_path<S: Serializer, P: AsRef<Path>>(p: &Option<P>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => path(p.as_ref(), s),
        None => s.serialize_none(),
    }
}

#[derive(Serialize)]
struct View<'a> {
    channels: Vec<ChannelView<'a>>,
    exemptions: Vec<ExemptionView<'a>>,
    #[serde(serialize_with = "dur")]
    jitter: Duration,
    /// Left out at its default, so configurations that do not set it keep their hash.
    #[serde(serialize_with = "opt_dur", skip_serializing_if = "Option::is_none")]
    retry_failed_after: Option<Duration>,
    limits: LimitsView,
    log: LogView,
    mode: Mode,
    notifications: NotificationsView<'a>,
    ops_channels: &'a [String],
    organizations: Vec<OrgView<'a>>,
    owner_fallback: &'a [String],
    policies: Vec<PolicyView<'a>>,
    routes: Vec<RouteView<'a>>,
    run_on_start: bool,
    safety: SafetyView<'a>,
    schedule: &'a str,
    server: ServerView,
    #[serde(serialize_with = "dur")]
    shutdown_grace: Duration,
    /// Left out when there are none, so configurations without sinks keep their hash.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sinks: Vec<SinkView<'a>>,
    #[serde(serialize_with = "path")]
    state_path: &'a Path,
    timezone: &'static str,
    /// `[usage]` and `[audit_log]`: left out at their defaults, so configurations that do not
    /// set them keep their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<IntelView>,
}

#[derive(Serialize)]
struct IntelView {
    // Shown only when off, so configurations written before the switches keep their hash.
    #[serde(skip_serializing_if = "is_true")]
    audit_log_enabled: bool,
    #[serde(skip_serializing_if = "is_true")]
    usage_enabled: bool,
    #[serde(serialize_with = "dur")]
    window: Duration,
    #[serde(serialize_with = "dur")]
    audit_log_backfill: Duration,
    #[serde(serialize_with = "dur")]
    wake_after: Duration,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

impl<'a> View<'a> {
    fn of(c: &'a Config) -> Self {
        let n = &c.notifications;
        View {
            channels: c.channels.iter().map(ChannelView::of).collect(),
            exemptions: c.exemptions.iter().map(ExemptionView::of).collect(),
            jitter: c.schedule.jitter,
            retry_failed_after: Some(c.schedule.retry_failed_after)
                .filter(|r| *r != super::DEFAULT_RETRY_FAILED_AFTER),
            limits: LimitsView::of(c),
            log: LogView {
                format: c.log.format,
            },
            mode: c.mode,
            notifications: NotificationsView {
                max_attempts: n.max_attempts,
                outbox_dir: n.outbox_dir.as_deref(),
                repeat_interval: n.repeat_interval,
            },
            ops_channels: &c.ops_channels,
            organizations: c.organizations.iter().map(OrgView::of).collect(),
            owner_fallback: &c.owner_fallback,
            policies: (c.policies.iter())
                .map(|p| PolicyView::of(p, c.rotation(&p.name)))
                .collect(),
            routes: (c.routes.iter())
                .map(|r| RouteView {
                    channels: &r.channels,
                    projects: &r.projects,
                })
                .collect(),
            run_on_start: c.schedule.run_on_start,
            safety: SafetyView::of(c),
            schedule: &c.schedule.cron,
            server: ServerView {
                listen: c.server.listen.to_string(),
            },
            shutdown_grace: c.shutdown_grace,
            sinks: c.sinks.iter().map(SinkView::of).collect(),
            state_path: &c.state_path,
            timezone: c.schedule.timezone.name(),
            usage: (!c.intel.is_default()).then_some(IntelView {
                audit_log_enabled: c.intel.audit_log_enabled,
                usage_enabled: c.intel.usage_enabled,
                window: c.intel.usage_window,
                audit_log_backfill: c.intel.audit_backfill,
                wake_after: c.intel.wake_after,
            }),
        }
    }
}

#[derive(Serialize)]
struct OrgView<'a> {
    admin_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_key_id: Option<&'a str>,
    base_url: String,
    #[serde(serialize_with = "opt_path", skip_serializing_if = "Option::is_none")]
    ca_file: Option<&'a Path>,
    exclude_projects: &'a [String],
    include_archived: bool,
    name: &'a str,
    projects: &'a [String],
    /// Only for an organisation with a schedule of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    schedule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<&'static str>,
}

impl<'a> OrgView<'a> {
    fn of(o: &'a OrgConfig) -> Self {
        OrgView {
            admin_key: format!("{REDACTED} (from {})", o.admin_key_source),
            admin_key_id: o.admin_key_id.as_deref(),
            base_url: redact_url(&o.base_url),
            ca_file: o.ca_file.as_deref(),
            exclude_projects: &o.exclude_projects,
            include_archived: o.include_archived,
            name: &o.name,
            projects: &o.projects,
            schedule: o.schedule.as_ref().map(|s| s.cron.as_str()),
            timezone: o.schedule.as_ref().map(|s| s.timezone.name()),
        }
    }
}

#[derive(Serialize)]
struct LimitsView {
    concurrency: usize,
    max_response_bytes: usize,
    max_retries: u32,
    #[serde(serialize_with = "dur")]
    request_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests_per_second: Option<f64>,
}

impl LimitsView {
    fn of(c: &Config) -> Self {
        let l = &c.limits;
        LimitsView {
            concurrency: l.concurrency,
            max_response_bytes: l.max_response_bytes,
            max_retries: l.max_retries,
            request_timeout: l.request_timeout,
            requests_per_second: l.requests_per_second,
        }
    }
}

/// An `[[sinks]]` entry; an exec sink's `env` lists names only (keysweep passes their values).
#[derive(Serialize)]
struct SinkView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<SinkFormat>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(serialize_with = "opt_dur", skip_serializing_if = "Option::is_none")]
    timeout: Option<Duration>,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl<'a> SinkView<'a> {
    fn of(s: &'a SinkConfig) -> Self {
        let mut v = SinkView {
            command: None,
            env: None,
            format: None,
            name: &s.name,
            path: None,
            timeout: None,
            kind: s.kind.type_name(),
        };
        match &s.kind {
            SinkKind::File { path, format } => {
                v.path = Some(path);
                v.format = Some(*format);
            }
            SinkKind::Exec {
                command,
                env,
                timeout,
            } => {
                v.command = Some(command);
                v.env = Some(env);
                v.timeout = Some(*timeout);
            }
        }
        v
    }
}

/// `action` as written: `rotate` policies read `Expire` in [`PolicyConfig`].
#[derive(Serialize)]
#[serde(untagged)]
enum ActionView {
    Action(Action),
    Rotate(&'static str),
}

#[derive(Serialize)]
struct PolicyView<'a> {
    action: ActionView,
    #[serde(serialize_with = "dur")]
    final_notice: Duration,
    #[serde(rename = "match")]
    selector: MatchView<'a>,
    #[serde(serialize_with = "opt_dur", skip_serializing_if = "Option::is_none")]
    max_age: Option<Duration>,
    #[serde(serialize_with = "opt_dur", skip_serializing_if = "Option::is_none")]
    max_idle: Option<Duration>,
    #[serde(serialize_with = "opt_dur", skip_serializing_if = "Option::is_none")]
    max_lifetime: Option<Duration>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name_pattern: Option<&'a str>,
    /// Shown with `max_idle`, which it defaults to.
    #[serde(serialize_with = "opt_dur", skip_serializing_if = "Option::is_none")]
    never_used_grace: Option<Duration>,
    notify: &'a [String],
    /// `action = "rotate"` only.
    #[serde(serialize_with = "opt_dur", skip_serializing_if = "Option::is_none")]
    overlap: Option<Duration>,
    owner_lost_access: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sink: Option<&'a str>,
    /// Shown only when set, so configurations without it keep their hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unrestricted: bool,
    #[serde(serialize_with = "dur")]
    warn_before: Duration,
}

#[derive(Serialize)]
struct MatchView<'a> {
    key_name: &'a [String],
    organizations: &'a [String],
    owner_email: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_type: Option<OwnerTypeSelector>,
    projects: &'a [String],
}

impl<'a> PolicyView<'a> {
    fn of(p: &'a PolicyConfig, rotate: Option<&'a RotateConfig>) -> Self {
        let s = &p.selector;
        PolicyView {
            action: match rotate {
                Some(_) => ActionView::Rotate("rotate"),
                None => ActionView::Action(p.action),
            },
            overlap: rotate.map(|r| r.overlap),
            scopes: rotate.and_then(|r| r.scopes.as_deref()),
            sink: rotate.map(|r| r.sink.as_str()),
            final_notice: p.final_notice,
            selector: MatchView {
                key_name: &s.key_name,
                organizations: &s.organizations,
                owner_email: &s.owner_email,
                owner_type: s.owner_type,
                projects: &s.projects,
            },
            max_age: p.max_age,
            max_idle: p.max_idle,
            max_lifetime: p.max_lifetime,
            name: &p.name,
            name_pattern: p.name_pattern.as_ref().map(regex::Regex::as_str),
            never_used_grace: p.max_idle.map(|idle| p.never_used_grace.unwrap_or(idle)),
            notify: &p.notify,
            owner_lost_access: p.owner_lost_access,
            unrestricted: p.unrestricted,
            warn_before: p.warn_before,
        }
    }
}

#[derive(Serialize)]
struct ExemptionView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project: Option<&'a str>,
    reason: &'a str,
    /// RFC 3339, UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
}

impl<'a> ExemptionView<'a> {
    fn of(e: &'a ExemptionConfig) -> Self {
        ExemptionView {
            key_id: e.key_id.as_deref(),
            key_name: e.key_name.as_deref(),
            project: e.project.as_deref(),
            reason: &e.reason,
            until: (e.until)
                .and_then(|u| chrono::DateTime::from_timestamp(u, 0))
                .map(|u| u.to_rfc3339()),
        }
    }
}

#[derive(Serialize)]
struct SafetyView<'a> {
    #[serde(serialize_with = "opt_path", skip_serializing_if = "Option::is_none")]
    kill_switch_file: Option<&'a Path>,
    /// Shown only when not the default, so the hash of every configuration that leaves it
    /// alone is what it was before the key existed.
    #[serde(skip_serializing_if = "is_default_recheck_skips")]
    max_recheck_skips: u32,
    max_revocations_per_day: u32,
    max_revocations_per_project_percent: u32,
    max_revocations_per_run: u32,
    #[serde(serialize_with = "dur")]
    restore_expiry: Duration,
    service_account_keys: ServiceAccountKeys,
}

impl<'a> SafetyView<'a> {
    fn of(c: &'a Config) -> Self {
        let s = &c.safety;
        SafetyView {
            kill_switch_file: s.kill_switch_file.as_deref(),
            max_recheck_skips: c.max_recheck_skips,
            max_revocations_per_day: s.max_revocations_per_day,
            max_revocations_per_project_percent: s.max_revocations_per_project_percent,
            max_revocations_per_run: s.max_revocations_per_run,
            restore_expiry: s.restore_expiry,
            service_account_keys: s.service_account_keys,
        }
    }
}

fn is_default_recheck_skips(n: &u32) -> bool {
    *n == super::DEFAULT_MAX_RECHECK_SKIPS
}

fn is_default_max_messages(n: &u32) -> bool {
    *n == super::DEFAULT_MAX_MESSAGES_PER_SWEEP
}

/// A channel: the keys of its type, secrets as [`REDACTED`] markers.
#[derive(Serialize)]
#[serde(untagged)]
enum ChannelView<'a> {
    Email(EmailView<'a>),
    Slack {
        name: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        webhook_url: &'static str,
    },
    PagerDuty {
        /// Shown only when not the default (the hash of configurations without it is unchanged).
        #[serde(skip_serializing_if = "is_default_max_messages")]
        max_messages_per_sweep: u32,
        name: &'a str,
        routing_key: &'static str,
        #[serde(rename = "type")]
        kind: &'static str,
        url: String,
    },
    Webhook {
        #[serde(skip_serializing_if = "is_default_max_messages")]
        max_messages_per_sweep: u32,
        name: &'a str,
        secret: &'static str,
        #[serde(rename = "type")]
        kind: &'static str,
        url: String,
    },
}

#[derive(Serialize)]
struct EmailView<'a> {
    from: &'a str,
    name: &'a str,
    owner: bool,
    #[serde(serialize_with = "dur")]
    send_timeout: Duration,
    #[serde(serialize_with = "opt_path", skip_serializing_if = "Option::is_none")]
    smtp_ca_file: Option<&'a Path>,
    smtp_host: &'a str,
    /// Present (redacted) when the channel logs in.
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_password: Option<&'static str>,
    smtp_port: u16,
    smtp_tls: SmtpTls,
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_username: Option<&'static str>,
    to: &'a [String],
    #[serde(rename = "type")]
    kind: &'static str,
}

impl<'a> ChannelView<'a> {
    fn of(c: &'a ChannelConfig) -> Self {
        let (name, kind) = (c.name.as_str(), c.kind.type_name());
        match &c.kind {
            ChannelKind::Email(e) => ChannelView::Email(EmailView::of(name, e)),
            ChannelKind::Slack(_) => ChannelView::Slack {
                name,
                kind,
                webhook_url: REDACTED,
            },
            ChannelKind::PagerDuty(p) => ChannelView::PagerDuty {
                max_messages_per_sweep: p.max_messages_per_sweep,
                name,
                routing_key: REDACTED,
                kind,
                url: redact_url(&p.url),
            },
            ChannelKind::Webhook(w) => ChannelView::Webhook {
                max_messages_per_sweep: w.max_messages_per_sweep,
                name,
                secret: REDACTED,
                kind,
                url: redact_url(&w.url),
            },
        }
    }
}

impl<'a> EmailView<'a> {
    fn of(name: &'a str, e: &'a EmailChannel) -> Self {
        let login = e.smtp_username.is_some().then_some(REDACTED);
        EmailView {
            from: &e.from,
            name,
            owner: e.owner,
            send_timeout: e.send_timeout,
            smtp_ca_file: e.smtp_ca_file.as_deref(),
            smtp_host: &e.smtp_host,
            smtp_password: login,
            smtp_port: e.smtp_port,
            smtp_tls: e.smtp_tls,
            smtp_username: login,
            to: &e.to,
            kind: "email",
        }
    }
}

#[derive(Serialize)]
struct RouteView<'a> {
    channels: &'a [String],
    projects: &'a [String],
}

#[derive(Serialize)]
struct NotificationsView<'a> {
    max_attempts: u32,
    #[serde(serialize_with = "opt_path", skip_serializing_if = "Option::is_none")]
    outbox_dir: Option<&'a Path>,
    #[serde(serialize_with = "dur")]
    repeat_interval: Duration,
}

#[derive(Serialize)]
struct ServerView {
    listen: String,
}

/// Absent `format` means "pretty on a terminal, JSON otherwise".
#[derive(Serialize)]
struct LogView {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<LogFormat>,
}

#[cfg(test)]
mod tests {
    use super::super::load_from_str;

    /// Every key and section a configuration can have, each set away from its default.
    const EVERYTHING: &str = r#"
mode = "enforce"
state_path = "/var/lib/k.db"
schedule = "*/30 * * * * *"
timezone = "Europe/Berlin"
run_on_start = false
jitter = "90s"
shutdown_grace = "1500ms"
ops_channels = ["m"]
owner_fallback = ["s", "w"]
[[organizations]]
name = "a"
projects = ["p*", "proj_1"]
exclude_projects = ["x"]
include_archived = true
ca_file = "/"
schedule = "0 1 * * *"
[[organizations]]
name = "b"
base_url = "http://127.0.0.1:9/v1"
timezone = "Asia/Tokyo"
[limits]
concurrency = 3
requests_per_second = 2.5
max_retries = 1
request_timeout = "2m"
max_response_bytes = 2048
[[policies]]
name = "p1"
max_idle = "45d"
owner_lost_access = true
name_pattern = "^svc-"
action = "revoke"
warn_before = "36h"
final_notice = "1h"
notify = ["m", "pd"]
[policies.match]
organizations = ["a"]
projects = ["p*"]
owner_type = "service_account"
key_name = ["k*"]
owner_email = ["*@x.com"]
[[policies]]
name = "p2"
max_age = "90d"
max_idle = "10d"
never_used_grace = "3d"
[[exemptions]]
key_id = "key_1"
reason = "because"
until = "2026-12-31"
[[exemptions]]
key_name = "ci-*"
project = "proj_*"
reason = "ci"
[safety]
max_revocations_per_run = 3
max_revocations_per_project_percent = 100
max_revocations_per_day = 7
kill_switch_file = "/run/kill"
service_account_keys = "enforce"
[[channels]]
name = "m"
type = "email"
smtp_host = "smtp.example.com"
smtp_tls = "tls"
smtp_ca_file = "/"
smtp_username_env = "KEYSWEEP_SMTP_USERNAME"
smtp_password_env = "KEYSWEEP_SMTP_PASSWORD"
from = "K <k@example.com>"
to = ["a@example.com"]
owner = true
send_timeout = "10s"
[[channels]]
name = "s"
type = "slack"
webhook_url_env = "KEYSWEEP_SLACK_WEBHOOK_URL"
[[channels]]
name = "pd"
type = "pagerduty"
routing_key_env = "KEYSWEEP_PAGERDUTY_ROUTING_KEY"
[[channels]]
name = "pd2"
type = "pagerduty"
routing_key_env = "KEYSWEEP_PAGERDUTY_ROUTING_KEY"
url = "http://localhost:8/e"
[[channels]]
name = "w"
type = "webhook"
url = "https://example.com/h"
secret_env = "KEYSWEEP_WEBHOOK_SECRET"
[[channels]]
name = "m2"
type = "email"
smtp_host = "localhost"
smtp_tls = "none"
from = "k@example.com"
owner = true
[[routes]]
projects = ["proj_a"]
channels = ["s"]
[notifications]
repeat_interval = "12h"
max_attempts = 3
outbox_dir = "/tmp/out"
[server]
listen = "[::1]:9000"
[log]
format = "json"
"#;

    fn env() -> Vec<(String, String)> {
        [
            ("OPENAI_ADMIN_KEY", "sk-admin-EFFECTIVE-never-shown"),
            ("KEYSWEEP_SMTP_USERNAME", "mailer"),
            ("KEYSWEEP_SMTP_PASSWORD", "smtp-Pa55word-never-shown"),
            (
                "KEYSWEEP_SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/never-shown",
            ),
            ("KEYSWEEP_PAGERDUTY_ROUTING_KEY", "routing-key-never-shown"),
            ("KEYSWEEP_WEBHOOK_SECRET", "whsec_bmV2ZXItc2hvd24="),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The views declare their fields in alphabetical order, the order of the sorted TOML table
    /// the rendering used to be built as: so re-sorting the output changes nothing, and the
    /// hash of an unchanged configuration stays what it was.
    #[test]
    fn rendering_is_in_sorted_key_order() {
        let config = load_from_str(EVERYTHING, &env()).unwrap();
        let shown = super::render(&config);
        let sorted: toml::Table = toml::from_str(&shown).unwrap();
        assert_eq!(toml::to_string_pretty(&sorted).unwrap(), shown);
    }

    #[test]
    fn every_secret_is_redacted() {
        let config = load_from_str(EVERYTHING, &env()).unwrap();
        let shown = super::render(&config);
        assert!(!shown.contains("never-shown"), "{shown}");
        assert_eq!(shown.matches("[redacted]").count(), 8, "{shown}");
        for key in [
            "admin_key",
            "smtp_username",
            "smtp_password",
            "webhook_url",
            "routing_key",
            "secret",
        ] {
            assert!(
                shown.contains(&format!("\n{key} = \"[redacted]")),
                "{key}: {shown}"
            );
        }
    }
}

#[cfg(test)]
mod duration_text_tests {
    use super::duration_text;
    use std::time::Duration;

    #[test]
    fn durations_read_as_days_hours_minutes_and_seconds() {
        let s = Duration::from_secs;
        assert_eq!(duration_text(s(90 * 86400)), "90d");
        assert_eq!(duration_text(s(90)), "90s");
        assert_eq!(duration_text(s(36 * 3600)), "36h");
        assert_eq!(duration_text(s(7_890_048)), "91d 7h 40m 48s");
        assert_eq!(duration_text(s(91 * 86400 + 7 * 3600)), "91d 7h");
        for secs in [7_890_048, 91 * 86400 + 7 * 3600, 1001] {
            let text = duration_text(s(secs));
            assert_eq!(
                crate::config::parse_duration(&text).ok(),
                Some(s(secs)),
                "{text}"
            );
        }
    }
}
