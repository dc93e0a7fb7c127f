//! From the typed [`RawConfig`] to the validated [`Config`]: what no single value can show on its
//! own — required sections, ranges, combinations, duplicate names, references to organisations
//! and channels — plus defaults and the configuration hash.
//!
//! Every value was checked once, when it was read (`values.rs`); nothing here parses text again.
//! Every error names the key it is about. Secrets are resolved through [`Context`] and never
//! appear in an error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::super::values::{HumanDuration, strings};
use super::super::{
    Action, ChannelConfig, Config, DEFAULT_MAX_REVOCATIONS_PER_DAY,
    DEFAULT_MAX_REVOCATIONS_PER_PROJECT_PERCENT, DEFAULT_MAX_REVOCATIONS_PER_RUN, ExemptionConfig,
    IntelSettings, Limits, LogConfig, Mode, NotificationSettings, OrgConfig, PolicyConfig,
    RouteConfig, Safety, Schedule, Selector, ServerConfig, ServiceAccountKeys,
};
use super::channel::channel;
use super::context::Context;
use super::{
    ChannelEntry, LoadError, RawConfig, RawExemption, RawLimits, RawNotifications, RawOrg,
    RawPolicy, RawRoute, RawSafety,
};

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_SCHEDULE: &str = "0 */6 * * *";

/// `state_path` when the file sets none.
pub(super) const DEFAULT_STATE_PATH: &str = "keysweep.db";

fn or(d: Option<HumanDuration>, default: Duration) -> Duration {
    d.map_or(default, |d| d.0)
}

/// The longest `jitter`.
const MAX_JITTER: Duration = Duration::from_secs(86_400);
/// The longest `shutdown_grace`.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3_600);

/// A jitter past a day is no spread of load but a schedule of its own (and one of centuries
/// would overflow the time arithmetic); a grace of nothing aborts every sweep at SIGTERM and
/// leaves the outbox's flush no time.
fn bounds(cx: &Context<'_>, raw: &RawConfig) -> Result<(), LoadError> {
    if raw.jitter.as_ref().is_some_and(|j| j.0 > MAX_JITTER) {
        return Err(cx.err("jitter", "must be at most 1d"));
    }
    // Under a second is a typo ("5ms" for "5m"), and whole listings back to back.
    if (raw.retry_failed_after.as_ref())
        .is_some_and(|r| r.0 > MAX_JITTER || (!r.0.is_zero() && r.0 < Duration::from_secs(1)))
    {
        return Err(cx.err(
            "retry_failed_after",
            "must be 0s (off) or between 1s and 1d",
        ));
    }
    let grace = raw.shutdown_grace.as_ref().map(|g| g.0);
    if grace.is_some_and(|g| g < Duration::from_secs(1) || g > MAX_SHUTDOWN_GRACE) {
        return Err(cx.err("shutdown_grace", "must be between 1s and 1h"));
    }
    Ok(())
}

/// The global schedule: the top-level keys, taken out of `raw`.
fn schedule(raw: &mut RawConfig) -> Schedule {
    Schedule {
        cron: (raw.schedule.take()).map_or_else(|| DEFAULT_SCHEDULE.to_string(), |c| c.0),
        timezone: raw.timezone.take().map_or(chrono_tz::UTC, |t| t.0),
        run_on_start: raw.run_on_start.unwrap_or(true),
        jitter: or(raw.jitter.take(), Duration::ZERO),
        retry_failed_after: or(
            raw.retry_failed_after.take(),
            crate::config::DEFAULT_RETRY_FAILED_AFTER,
        ),
    }
}

/// Checks `raw` (with its channels, read separately) as a whole and builds the [`Config`].
pub(super) fn config(
    mut cx: Context<'_>,
    mut raw: RawConfig,
    channels: Vec<ChannelEntry>,
    source: Option<&Path>,
) -> Result<Config, LoadError> {
    bounds(&cx, &raw)?;
    let schedule = schedule(&mut raw);
    let secret_vars = super::sinks::secret_vars(&raw.organizations, &channels);
    let sinks = super::sinks::sinks(&cx, raw.sinks, &secret_vars)?;
    let rotations = super::sinks::rotations(&cx, &raw.policies, &sinks)?;
    let organizations = organizations(&mut cx, raw.organizations, &schedule)?;
    let limits = limits(&cx, raw.limits)?;
    let channels = channels_of(&cx, channels)?;
    let policies = policies(&cx, raw.policies, &organizations, &channels)?;
    let exemptions = raw
        .exemptions
        .into_iter()
        .enumerate()
        .map(|(i, e)| exemption(&cx, i, e))
        .collect::<Result<Vec<_>, _>>()?;
    let max_recheck_skips = raw
        .safety
        .max_recheck_skips
        .unwrap_or(crate::config::DEFAULT_MAX_RECHECK_SKIPS);
    let safety = safety(&cx, raw.safety)?;
    let routes = routes(&cx, raw.routes, &channels)?;
    names_channels(&cx, "ops_channels", &raw.ops_channels, &channels)?;
    names_channels(&cx, "owner_fallback", &raw.owner_fallback, &channels)?;
    let intel = intel(&cx, &raw.usage, &raw.audit_log)?;
    if let Some(i) = (policies.iter()).position(|p| p.unrestricted && !intel.audit_log_enabled) {
        return Err(cx.err(
            format!("policies[{i}].unrestricted"),
            "needs the audit log (a key's scopes are known only from it), which [audit_log] \
             enabled = false turns off"
                .to_string(),
        ));
    }
    let mut config = Config {
        source: source.map(Path::to_path_buf),
        hash: String::new(),
        mode: raw.mode.unwrap_or(Mode::DryRun),
        state_path: raw
            .state_path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_PATH)),
        organizations,
        limits,
        policies,
        exemptions,
        safety,
        channels,
        routes,
        ops_channels: raw.ops_channels,
        owner_fallback: raw.owner_fallback,
        notifications: notifications(&cx, raw.notifications)?,
        schedule,
        server: ServerConfig {
            listen: raw
                .server
                .listen
                .map_or(SocketAddr::from(([127, 0, 0, 1], 9464)), |l| l.0),
        },
        log: LogConfig {
            format: raw.log.format,
        },
        shutdown_grace: or(raw.shutdown_grace, Duration::from_secs(30)),
        warnings: std::mem::take(&mut cx.warnings),
        sinks,
        rotations,
        max_recheck_skips,
        intel,
    };
    let names = super::super::name_selector_warnings(&config);
    config.warnings.extend(names);
    let effective = super::super::effective::render(&config);
    config.hash = hex::encode(Sha256::digest(effective.as_bytes()));
    Ok(config)
}

/// `[usage] window` (whole days, 1 to 366) and `[audit_log] backfill` (at least a day).
fn intel(
    cx: &Context<'_>,
    usage: &super::RawUsage,
    audit: &super::RawAuditLog,
) -> Result<IntelSettings, LoadError> {
    let d = IntelSettings::default();
    let window = usage.window.as_ref().map_or(d.usage_window, |w| w.0);
    let days = window.as_secs() / 86_400;
    if !window.as_secs().is_multiple_of(86_400) || !(1..=366).contains(&days) {
        return Err(cx.err(
            "usage.window".to_string(),
            "must be a whole number of days from 1d to 366d (usage comes in daily buckets)"
                .to_string(),
        ));
    }
    let backfill = audit.backfill.as_ref().map_or(d.audit_backfill, |b| b.0);
    if backfill.as_secs() < 86_400 {
        return Err(cx.err(
            "audit_log.backfill".to_string(),
            "must be at least 1d".to_string(),
        ));
    }
    let wake_after = usage.wake_after.as_ref().map_or(d.wake_after, |w| w.0);
    if wake_after.as_secs() < 86_400 {
        return Err(cx.err(
            "usage.wake_after".to_string(),
            "must be at least 1d".to_string(),
        ));
    }
    Ok(IntelSettings {
        audit_log_enabled: audit.enabled.unwrap_or(true),
        usage_enabled: usage.enabled.unwrap_or(true),
        usage_window: window,
        audit_backfill: backfill,
        wake_after,
    })
}

/// Names in `section` (`organizations`, `channels`) must be unique: names the first repeat.
fn unique_names<'n>(
    cx: &Context<'_>,
    section: &str,
    what: &str,
    names: impl Iterator<Item = &'n str>,
) -> Result<(), LoadError> {
    let names: Vec<&str> = names.collect();
    match (0..names.len()).find(|&i| names[..i].contains(&names[i])) {
        Some(i) => Err(cx.err(
            format!("{section}[{i}].name"),
            format!("duplicate {what} name {:?}", names[i]),
        )),
        None => Ok(()),
    }
}

fn organizations(
    cx: &mut Context<'_>,
    raw: Vec<RawOrg>,
    global: &Schedule,
) -> Result<Vec<OrgConfig>, LoadError> {
    if raw.is_empty() {
        return Err(cx.err(
            "organizations",
            "at least one [[organizations]] entry is required",
        ));
    }
    let orgs = raw
        .into_iter()
        .enumerate()
        .map(|(i, o)| org(cx, i, o, global))
        .collect::<Result<Vec<_>, _>>()?;
    unique_names(
        cx,
        "organizations",
        "organisation",
        orgs.iter().map(|o| o.name.as_str()),
    )?;
    Ok(orgs)
}

fn org(
    cx: &mut Context<'_>,
    i: usize,
    o: RawOrg,
    global: &Schedule,
) -> Result<OrgConfig, LoadError> {
    let k = |f: &str| format!("organizations[{i}].{f}");
    let (admin_key, admin_key_source) = admin_key(cx, &k, &o)?;
    let base_url = match o.base_url {
        Some(u) => u.0,
        None => url::Url::parse(DEFAULT_BASE_URL)
            .map_err(|e| cx.err(k("base_url"), format!("default URL: {e}")))?,
    };
    if let Some(ca) = &o.ca_file {
        cx.readable(&k("ca_file"), ca)?;
    }
    // An organisation that sets neither keeps the global schedule (`None`); one that sets
    // either gets its own, the other half inherited.
    let schedule = (o.schedule.is_some() || o.timezone.is_some()).then(|| Schedule {
        cron: o.schedule.map_or_else(|| global.cron.clone(), |c| c.0),
        timezone: o.timezone.map_or(global.timezone, |t| t.0),
        run_on_start: global.run_on_start,
        jitter: global.jitter,
        retry_failed_after: global.retry_failed_after,
    });
    Ok(OrgConfig {
        name: o.name.0,
        base_url,
        admin_key,
        admin_key_source,
        admin_key_id: o.admin_key_id.map(|id| id.0),
        projects: strings(o.projects),
        exclude_projects: strings(o.exclude_projects),
        include_archived: o.include_archived,
        ca_file: o.ca_file,
        schedule,
    })
}

/// The admin key and where it came from (`env …`, `file …`, `credential …`): at most one source.
fn admin_key(
    cx: &mut Context<'_>,
    k: &dyn Fn(&str) -> String,
    o: &RawOrg,
) -> Result<(SecretString, String), LoadError> {
    let sources = [
        o.admin_key_env.is_some(),
        o.admin_key_file.is_some(),
        o.admin_key_credential.is_some(),
    ];
    if sources.iter().filter(|x| **x).count() > 1 {
        return Err(cx.err(
            k("admin_key_env"),
            "set only one of admin_key_env, admin_key_file and admin_key_credential",
        ));
    }
    if !cx.resolves_admin_keys() {
        // Empty, and the source says why: this configuration never reaches an API client.
        return Ok((
            SecretString::from(String::new()),
            "not read: this command needs no admin key".into(),
        ));
    }
    if let Some(path) = &o.admin_key_file {
        let key = cx.file_secret(&k("admin_key_file"), path, true)?;
        return Ok((key, format!("file {}", path.display())));
    }
    if let Some(name) = &o.admin_key_credential {
        let dir = cx.var("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            cx.err(
                k("admin_key_credential"),
                "CREDENTIALS_DIRECTORY is not set (use systemd LoadCredential=)",
            )
        })?;
        let path = Path::new(dir).join(name);
        let key = cx.file_secret(&k("admin_key_credential"), &path, false)?;
        return Ok((key, format!("credential {name}")));
    }
    let var = o.admin_key_env.as_deref().unwrap_or("OPENAI_ADMIN_KEY");
    let key = cx.env_secret(&k("admin_key_env"), var)?;
    Ok((key, format!("env {var}")))
}

fn limits(cx: &Context<'_>, l: RawLimits) -> Result<Limits, LoadError> {
    let concurrency = l.concurrency.unwrap_or(8);
    if !(1..=256).contains(&concurrency) {
        return Err(cx.err("limits.concurrency", "must be between 1 and 256"));
    }
    if let Some(rps) = l.requests_per_second
        && (!rps.is_finite() || rps <= 0.0)
    {
        return Err(cx.err("limits.requests_per_second", "must be a positive number"));
    }
    let max_retries = l.max_retries.unwrap_or(3);
    if max_retries > 10 {
        return Err(cx.err("limits.max_retries", "must be at most 10"));
    }
    let request_timeout = or(l.request_timeout, Duration::from_secs(30));
    if request_timeout.is_zero() {
        return Err(cx.err("limits.request_timeout", "must be greater than zero"));
    }
    let max_response_bytes = l.max_response_bytes.unwrap_or(16 * 1024 * 1024);
    if max_response_bytes < 1024 {
        return Err(cx.err("limits.max_response_bytes", "must be at least 1024"));
    }
    Ok(Limits {
        concurrency,
        requests_per_second: l.requests_per_second,
        max_retries,
        request_timeout,
        max_response_bytes,
    })
}

fn channels_of(
    cx: &Context<'_>,
    entries: Vec<ChannelEntry>,
) -> Result<Vec<ChannelConfig>, LoadError> {
    let channels = entries
        .into_iter()
        .enumerate()
        .map(|(i, c)| channel(cx, i, c))
        .collect::<Result<Vec<_>, _>>()?;
    unique_names(
        cx,
        "channels",
        "channel",
        channels.iter().map(|c| c.name.as_str()),
    )?;
    Ok(channels)
}

/// Every name in the list at `key` must be a configured channel.
fn names_channels(
    cx: &Context<'_>,
    key: &str,
    names: &[String],
    channels: &[ChannelConfig],
) -> Result<(), LoadError> {
    match names
        .iter()
        .enumerate()
        .find(|(_, n)| !channels.iter().any(|c| &c.name == *n))
    {
        Some((j, n)) => Err(cx.err(format!("{key}[{j}]"), format!("no channel named {n:?}"))),
        None => Ok(()),
    }
}

fn policies(
    cx: &Context<'_>,
    raw: Vec<RawPolicy>,
    orgs: &[OrgConfig],
    channels: &[ChannelConfig],
) -> Result<Vec<PolicyConfig>, LoadError> {
    let mut policies: Vec<PolicyConfig> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let p = policy(cx, i, p, orgs)?;
        names_channels(cx, &format!("policies[{i}].notify"), &p.notify, channels)?;
        if policies.iter().any(|q| q.name == p.name) {
            return Err(cx.err(
                format!("policies[{i}].name"),
                format!("duplicate policy name {:?}", p.name),
            ));
        }
        policies.push(p);
    }
    Ok(policies)
}

fn policy(
    cx: &Context<'_>,
    i: usize,
    p: RawPolicy,
    orgs: &[OrgConfig],
) -> Result<PolicyConfig, LoadError> {
    let k = |f: &str| format!("policies[{i}].{f}");
    let s = p.selector;
    if let Some((j, o)) =
        (s.organizations.iter().enumerate()).find(|(_, o)| !orgs.iter().any(|org| &org.name == *o))
    {
        return Err(cx.err(
            format!("policies[{i}].match.organizations[{j}]"),
            format!("no organisation named {o:?}"),
        ));
    }
    let max_age = p.max_age.map(|d| d.0);
    let max_idle = p.max_idle.map(|d| d.0);
    let never_used_grace = p.never_used_grace.map(|d| d.0);
    if never_used_grace.is_some() && max_idle.is_none() {
        return Err(cx.err(k("never_used_grace"), "only applies together with max_idle"));
    }
    let name_pattern = p.name_pattern.map(|r| r.0);
    let max_lifetime = p.max_lifetime.map(|d| d.0);
    if max_age.is_none()
        && max_idle.is_none()
        && !p.owner_lost_access
        && name_pattern.is_none()
        && max_lifetime.is_none()
        && !p.unrestricted
    {
        return Err(cx.err(
            k("name"),
            "a policy needs at least one condition: max_age, max_idle, owner_lost_access, \
             name_pattern, max_lifetime or unrestricted",
        ));
    }
    for (key, d) in [
        ("max_age", max_age),
        ("max_idle", max_idle),
        ("max_lifetime", max_lifetime),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(cx.err(k(key), "must be greater than zero"));
        }
    }
    let warn_before = or(p.warn_before, Duration::from_secs(7 * 86400));
    let final_notice = or(p.final_notice, Duration::from_secs(86400));
    if final_notice > warn_before {
        return Err(cx.err(k("final_notice"), "must not be longer than warn_before"));
    }
    Ok(PolicyConfig {
        name: p.name.0,
        selector: Selector {
            organizations: s.organizations,
            projects: strings(s.projects),
            owner_type: s.owner_type,
            key_name: strings(s.key_name),
            owner_email: strings(s.owner_email),
        },
        max_age,
        max_idle,
        never_used_grace,
        owner_lost_access: p.owner_lost_access,
        name_pattern,
        max_lifetime,
        unrestricted: p.unrestricted,
        action: p.action.map_or(Action::Notify, |a| a.action()),
        warn_before,
        final_notice,
        notify: p.notify,
    })
}

fn exemption(cx: &Context<'_>, i: usize, e: RawExemption) -> Result<ExemptionConfig, LoadError> {
    let k = |f: &str| format!("exemptions[{i}].{f}");
    let reason = match e.reason {
        Some(r) if !r.trim().is_empty() => r,
        _ => return Err(cx.err(k("reason"), "is required: say why this key is exempt")),
    };
    if e.key_id.is_none() && e.key_name.is_none() && e.project.is_none() {
        return Err(cx.err(
            k("key_id"),
            "an exemption needs key_id, key_name or project",
        ));
    }
    Ok(ExemptionConfig {
        key_id: e.key_id,
        key_name: e.key_name.map(|g| g.0),
        project: e.project.map(|g| g.0),
        reason,
        until: e.until.map(|u| u.0),
    })
}

fn safety(cx: &Context<'_>, s: RawSafety) -> Result<Safety, LoadError> {
    let pct = s
        .max_revocations_per_project_percent
        .unwrap_or(DEFAULT_MAX_REVOCATIONS_PER_PROJECT_PERCENT);
    if pct > 100 {
        return Err(cx.err(
            "safety.max_revocations_per_project_percent",
            "must be between 0 and 100",
        ));
    }
    Ok(Safety {
        max_revocations_per_run: s
            .max_revocations_per_run
            .unwrap_or(DEFAULT_MAX_REVOCATIONS_PER_RUN),
        max_revocations_per_project_percent: pct,
        max_revocations_per_day: s
            .max_revocations_per_day
            .unwrap_or(DEFAULT_MAX_REVOCATIONS_PER_DAY),
        kill_switch_file: s.kill_switch_file,
        service_account_keys: service_account_keys(cx, s.service_accounts, s.service_account_keys)?,
        restore_expiry: match s.restore_expiry {
            None => Duration::from_secs(365 * 86400),
            // The API refuses anything shorter than the 30 days keysweep falls back to.
            Some(d) if d.0 < Duration::from_secs(MIN_RESTORE_EXPIRY_DAYS * 86400) => {
                return Err(cx.err(
                    "safety.restore_expiry",
                    format!("must be at least {MIN_RESTORE_EXPIRY_DAYS}d"),
                ));
            }
            Some(d) => d.0,
        },
    })
}

/// The shortest distance an expiry is moved back out to (`restore_expiry` and its fallbacks).
const MIN_RESTORE_EXPIRY_DAYS: u64 = 30;

/// `service_account_keys`, or its old spelling `service_accounts = "notify-only"`; the removed
/// `"delete-service-account"` is an error that says what replaced it.
fn service_account_keys(
    cx: &Context<'_>,
    old: Option<String>,
    new: Option<ServiceAccountKeys>,
) -> Result<ServiceAccountKeys, LoadError> {
    match (old.as_deref(), new) {
        (None, new) => Ok(new.unwrap_or(ServiceAccountKeys::NotifyOnly)),
        (Some(_), Some(_)) => Err(cx.err(
            "safety.service_accounts",
            "is the old spelling of safety.service_account_keys; set only service_account_keys",
        )),
        (Some("notify-only"), None) => Ok(ServiceAccountKeys::NotifyOnly),
        (Some("delete-service-account"), None) => Err(cx.err(
            "safety.service_accounts",
            "\"delete-service-account\" was removed: keysweep no longer deletes whole service \
             accounts; service-account keys are expired or deleted one by one like user keys \
             when safety.service_account_keys = \"enforce\" (default \"notify-only\")",
        )),
        (Some(other), None) => Err(cx.err(
            "safety.service_accounts",
            format!(
                "{other:?} is not \"notify-only\"; this key was replaced by \
                 safety.service_account_keys = \"notify-only\" | \"enforce\""
            ),
        )),
    }
}

fn routes(
    cx: &Context<'_>,
    raw: Vec<RawRoute>,
    channels: &[ChannelConfig],
) -> Result<Vec<RouteConfig>, LoadError> {
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        if r.projects.is_empty() {
            return Err(cx.err(
                format!("routes[{i}].projects"),
                "must name at least one project id or glob",
            ));
        }
        names_channels(cx, &format!("routes[{i}].channels"), &r.channels, channels)?;
        routes.push(RouteConfig {
            projects: strings(r.projects),
            channels: r.channels,
        });
    }
    Ok(routes)
}

fn notifications(cx: &Context<'_>, n: RawNotifications) -> Result<NotificationSettings, LoadError> {
    Ok(NotificationSettings {
        repeat_interval: or(n.repeat_interval, Duration::from_secs(24 * 3600)),
        max_attempts: match n.max_attempts {
            None => 12,
            Some(0) => return Err(cx.err("notifications.max_attempts", "must be at least 1")),
            Some(n) => n,
        },
        outbox_dir: n.outbox_dir,
    })
}
