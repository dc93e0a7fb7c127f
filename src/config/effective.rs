//! The effective configuration as TOML, every default filled in and every secret replaced by
//! where it comes from. `keysweep check-config` prints it and its SHA-256 is the config hash
//! written into audit records. It must never contain a secret value.

use std::time::Duration;

use toml::{Table, Value};

use super::{ChannelKind, Config, Schedule};

/// A duration in the largest unit that divides it (`90d`, `36h`, `90s`), so it reads like the
/// configuration it came from (humantime would print `90d` as `2months 29days …`).
fn dur(d: Duration) -> Value {
    let secs = d.as_secs();
    let text = if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if secs == 0 {
        "0s".to_string()
    } else {
        [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")]
            .iter()
            .find(|(unit, _)| secs.is_multiple_of(*unit))
            .map(|(unit, suffix)| format!("{}{suffix}", secs / unit))
            .unwrap_or_else(|| format!("{secs}s"))
    };
    Value::String(text)
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

const REDACTED: &str = "[redacted]";

fn schedule(t: &mut Table, sch: &Schedule) {
    t.insert("schedule".into(), s(&sch.cron));
    t.insert("timezone".into(), s(sch.timezone.name()));
}

/// Renders `config` as TOML with secrets redacted.
pub fn render(config: &Config) -> String {
    let mut root = Table::new();
    root.insert("mode".into(), s(config.mode.as_str()));
    root.insert(
        "state_path".into(),
        s(config.state_path.display().to_string()),
    );
    schedule(&mut root, &config.schedule);
    root.insert(
        "run_on_start".into(),
        Value::Boolean(config.schedule.run_on_start),
    );
    root.insert("jitter".into(), dur(config.schedule.jitter));
    root.insert("shutdown_grace".into(), dur(config.shutdown_grace));
    root.insert("ops_channels".into(), strings(&config.ops_channels));
    root.insert("owner_fallback".into(), strings(&config.owner_fallback));

    let orgs = config
        .organizations
        .iter()
        .map(|o| {
            let mut t = Table::new();
            t.insert("name".into(), s(&o.name));
            t.insert("base_url".into(), s(o.base_url.as_str()));
            t.insert(
                "admin_key".into(),
                s(format!("{REDACTED} (from {})", o.admin_key_source)),
            );
            t.insert("projects".into(), strings(&o.projects));
            t.insert("exclude_projects".into(), strings(&o.exclude_projects));
            t.insert(
                "include_archived".into(),
                Value::Boolean(o.include_archived),
            );
            if let Some(ca) = &o.ca_file {
                t.insert("ca_file".into(), s(ca.display().to_string()));
            }
            if let Some(sch) = &o.schedule {
                schedule(&mut t, sch);
            }
            Value::Table(t)
        })
        .collect();
    root.insert("organizations".into(), Value::Array(orgs));

    let l = &config.limits;
    let mut limits = Table::new();
    limits.insert("concurrency".into(), Value::Integer(l.concurrency as i64));
    if let Some(rps) = l.requests_per_second {
        limits.insert("requests_per_second".into(), Value::Float(rps));
    }
    limits.insert(
        "max_retries".into(),
        Value::Integer(i64::from(l.max_retries)),
    );
    limits.insert("request_timeout".into(), dur(l.request_timeout));
    limits.insert(
        "max_response_bytes".into(),
        Value::Integer(l.max_response_bytes as i64),
    );
    root.insert("limits".into(), Value::Table(limits));

    let policies = config
        .policies
        .iter()
        .map(|p| {
            let mut t = Table::new();
            t.insert("name".into(), s(&p.name));
            let mut m = Table::new();
            m.insert("organizations".into(), strings(&p.selector.organizations));
            m.insert("projects".into(), strings(&p.selector.projects));
            if let Some(ot) = p.selector.owner_type {
                m.insert(
                    "owner_type".into(),
                    s(match ot {
                        super::OwnerTypeSelector::User => "user",
                        super::OwnerTypeSelector::ServiceAccount => "service_account",
                    }),
                );
            }
            m.insert("key_name".into(), strings(&p.selector.key_name));
            m.insert("owner_email".into(), strings(&p.selector.owner_email));
            t.insert("match".into(), Value::Table(m));
            if let Some(d) = p.max_age {
                t.insert("max_age".into(), dur(d));
            }
            if let Some(d) = p.max_idle {
                t.insert("max_idle".into(), dur(d));
                t.insert(
                    "never_used_grace".into(),
                    dur(p.never_used_grace.unwrap_or(d)),
                );
            }
            t.insert(
                "owner_lost_access".into(),
                Value::Boolean(p.owner_lost_access),
            );
            if let Some(r) = &p.name_pattern {
                t.insert("name_pattern".into(), s(r.as_str()));
            }
            t.insert(
                "action".into(),
                s(match p.action {
                    super::Action::Notify => "notify",
                    super::Action::Revoke => "revoke",
                }),
            );
            t.insert("warn_before".into(), dur(p.warn_before));
            t.insert("final_notice".into(), dur(p.final_notice));
            t.insert("notify".into(), strings(&p.notify));
            Value::Table(t)
        })
        .collect();
    root.insert("policies".into(), Value::Array(policies));

    let exemptions = config
        .exemptions
        .iter()
        .map(|e| {
            let mut t = Table::new();
            for (k, v) in [
                ("key_id", &e.key_id),
                ("key_name", &e.key_name),
                ("project", &e.project),
            ] {
                if let Some(v) = v {
                    t.insert(k.into(), s(v));
                }
            }
            t.insert("reason".into(), s(&e.reason));
            if let Some(u) = e.until.and_then(|u| chrono::DateTime::from_timestamp(u, 0)) {
                t.insert("until".into(), s(u.to_rfc3339()));
            }
            Value::Table(t)
        })
        .collect();
    root.insert("exemptions".into(), Value::Array(exemptions));

    let sf = &config.safety;
    let mut safety = Table::new();
    safety.insert(
        "max_revocations_per_run".into(),
        Value::Integer(i64::from(sf.max_revocations_per_run)),
    );
    safety.insert(
        "max_revocations_per_project_percent".into(),
        Value::Integer(i64::from(sf.max_revocations_per_project_percent)),
    );
    safety.insert(
        "max_revocations_per_day".into(),
        Value::Integer(i64::from(sf.max_revocations_per_day)),
    );
    if let Some(k) = &sf.kill_switch_file {
        safety.insert("kill_switch_file".into(), s(k.display().to_string()));
    }
    safety.insert(
        "service_accounts".into(),
        s(match sf.service_accounts {
            super::ServiceAccountRule::NotifyOnly => "notify-only",
            super::ServiceAccountRule::DeleteServiceAccount => "delete-service-account",
        }),
    );
    root.insert("safety".into(), Value::Table(safety));

    let channels = config
        .channels
        .iter()
        .map(|c| {
            let mut t = Table::new();
            t.insert("name".into(), s(&c.name));
            t.insert("type".into(), s(c.kind.type_name()));
            match &c.kind {
                ChannelKind::Email(e) => {
                    t.insert("smtp_host".into(), s(&e.smtp_host));
                    t.insert("smtp_port".into(), Value::Integer(i64::from(e.smtp_port)));
                    t.insert(
                        "smtp_tls".into(),
                        s(match e.smtp_tls {
                            super::SmtpTls::Starttls => "starttls",
                            super::SmtpTls::Tls => "tls",
                            super::SmtpTls::None => "none",
                        }),
                    );
                    if let Some(ca) = &e.smtp_ca_file {
                        t.insert("smtp_ca_file".into(), s(ca.display().to_string()));
                    }
                    if e.smtp_username.is_some() {
                        t.insert("smtp_username".into(), s(REDACTED));
                        t.insert("smtp_password".into(), s(REDACTED));
                    }
                    t.insert("from".into(), s(&e.from));
                    t.insert("to".into(), strings(&e.to));
                    t.insert("owner".into(), Value::Boolean(e.owner));
                    t.insert("send_timeout".into(), dur(e.send_timeout));
                }
                ChannelKind::Slack(_) => {
                    t.insert("webhook_url".into(), s(REDACTED));
                }
                ChannelKind::PagerDuty(p) => {
                    t.insert("routing_key".into(), s(REDACTED));
                    t.insert("url".into(), s(p.url.as_str()));
                }
                ChannelKind::Webhook(w) => {
                    t.insert("url".into(), s(w.url.as_str()));
                    t.insert("secret".into(), s(REDACTED));
                }
            }
            Value::Table(t)
        })
        .collect();
    root.insert("channels".into(), Value::Array(channels));

    let routes = config
        .routes
        .iter()
        .map(|r| {
            let mut t = Table::new();
            t.insert("projects".into(), strings(&r.projects));
            t.insert("channels".into(), strings(&r.channels));
            Value::Table(t)
        })
        .collect();
    root.insert("routes".into(), Value::Array(routes));

    let n = &config.notifications;
    let mut notifications = Table::new();
    notifications.insert("repeat_interval".into(), dur(n.repeat_interval));
    notifications.insert(
        "max_attempts".into(),
        Value::Integer(i64::from(n.max_attempts)),
    );
    if let Some(d) = &n.outbox_dir {
        notifications.insert("outbox_dir".into(), s(d.display().to_string()));
    }
    root.insert("notifications".into(), Value::Table(notifications));

    let mut server = Table::new();
    server.insert("listen".into(), s(config.server.listen.to_string()));
    root.insert("server".into(), Value::Table(server));
    let mut log = Table::new();
    // Absent means "pretty on a terminal, JSON otherwise".
    if let Some(f) = config.log.format {
        log.insert(
            "format".into(),
            s(match f {
                super::LogFormat::Json => "json",
                super::LogFormat::Pretty => "pretty",
            }),
        );
    }
    root.insert("log".into(), Value::Table(log));

    toml::to_string_pretty(&root)
        .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
}
