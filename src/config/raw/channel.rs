//! One `[[channels]]` entry, already read into its type's struct, checked as a whole and turned
//! into a [`ChannelConfig`] with its secrets resolved: the SMTP rules (no plain SMTP off
//! loopback, never credentials without TLS), Slack webhook URLs over https only (http to
//! loopback excepted), the Standard Webhooks secret format, defaults.
//!
//! Keys of another channel type never get here: the type's struct refuses them by name when
//! the entry is read (`raw/load.rs`). No error built here may contain a secret value.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::super::values::{is_standard_webhooks_secret, strings};
use super::super::{
    ChannelConfig, ChannelKind, EmailChannel, PagerDutyChannel, SlackChannel, SmtpTls,
    WebhookChannel, is_loopback_host,
};
use super::context::Context;
use super::{ChannelEntry, LoadError, RawChannelKind, RawEmail, RawPagerDuty, RawWebhook};

const DEFAULT_PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Checks `channels[i]` and resolves its secrets.
pub(super) fn channel(
    cx: &Context<'_>,
    i: usize,
    entry: ChannelEntry,
) -> Result<ChannelConfig, LoadError> {
    let k = |f: &str| format!("channels[{i}].{f}");
    let kind = match entry.kind {
        RawChannelKind::Email(e) => ChannelKind::Email(email(cx, &k, e)?),
        RawChannelKind::Slack(s) => ChannelKind::Slack(SlackChannel {
            webhook_url: slack_url(cx, &k, &s.webhook_url_env)?,
        }),
        RawChannelKind::PagerDuty(p) => ChannelKind::PagerDuty(pagerduty(cx, &k, p)?),
        RawChannelKind::Webhook(w) => ChannelKind::Webhook(webhook(cx, &k, w)?),
    };
    Ok(ChannelConfig {
        name: entry.name.0,
        kind,
    })
}

/// The Slack webhook URL from `var`: it is itself the secret, so it must travel over
/// `https://`; `http://` is allowed only to a loopback host (a local relay, the tests). The
/// error names the key and the variable, never the URL.
fn slack_url(
    cx: &Context<'_>,
    k: &dyn Fn(&str) -> String,
    var: &str,
) -> Result<SecretString, LoadError> {
    let key = k("webhook_url_env");
    let secret = cx.env_secret(&key, var)?;
    let refuse = |what: &str| {
        cx.err(
            k("webhook_url"),
            format!(
                "the Slack webhook URL in {var} (from {key}) {what}: it must be https:// \
                 (http:// only to a loopback host)"
            ),
        )
    };
    let url = url::Url::parse(secret.expose_secret()).map_err(|_| refuse("is not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if url.host_str().is_some_and(is_loopback_host) => {}
        "http" => return Err(refuse("is http:// to a host that is not loopback")),
        _ => return Err(refuse("is not an http(s) URL")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(refuse("has no host"));
    }
    Ok(secret)
}

fn email(
    cx: &Context<'_>,
    k: &dyn Fn(&str) -> String,
    e: RawEmail,
) -> Result<EmailChannel, LoadError> {
    let smtp_host = e.smtp_host.0;
    let smtp_tls = e.smtp_tls.unwrap_or(SmtpTls::Starttls);
    if smtp_tls == SmtpTls::None && !is_loopback_host(&smtp_host) {
        return Err(cx.err(
            k("smtp_tls"),
            "\"none\" is allowed only for a loopback smtp_host",
        ));
    }
    if e.to.is_empty() && !e.owner {
        return Err(cx.err(
            k("to"),
            "an email channel needs recipients in `to` or `owner = true`",
        ));
    }
    if let Some(ca) = &e.smtp_ca_file {
        cx.readable(&k("smtp_ca_file"), ca)?;
    }
    let secret = |key: &str, var: &Option<String>| {
        var.as_deref()
            .map(|v| cx.env_secret(&k(key), v))
            .transpose()
    };
    let smtp_username = secret("smtp_username_env", &e.smtp_username_env)?;
    let smtp_password = secret("smtp_password_env", &e.smtp_password_env)?;
    if smtp_username.is_some() != smtp_password.is_some() {
        return Err(cx.err(
            k("smtp_password_env"),
            "smtp_username_env and smtp_password_env go together",
        ));
    }
    if smtp_password.is_some() && smtp_tls == SmtpTls::None {
        return Err(cx.err(
            k("smtp_tls"),
            "refusing to send SMTP credentials without TLS",
        ));
    }
    Ok(EmailChannel {
        smtp_port: e.smtp_port.unwrap_or(match smtp_tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        }),
        smtp_host,
        smtp_tls,
        smtp_ca_file: e.smtp_ca_file,
        smtp_username,
        smtp_password,
        from: e.from.0,
        to: strings(e.to),
        owner: e.owner,
        send_timeout: e.send_timeout.map_or(Duration::from_secs(30), |d| d.0),
    })
}

fn pagerduty(
    cx: &Context<'_>,
    k: &dyn Fn(&str) -> String,
    p: RawPagerDuty,
) -> Result<PagerDutyChannel, LoadError> {
    let routing_key = cx.env_secret(&k("routing_key_env"), &p.routing_key_env)?;
    let url = match p.url {
        Some(u) => u.0,
        None => url::Url::parse(DEFAULT_PAGERDUTY_URL)
            .map_err(|e| cx.err(k("url"), format!("default URL: {e}")))?,
    };
    Ok(PagerDutyChannel {
        routing_key,
        url,
        max_messages_per_sweep: max_messages(cx, k, p.max_messages_per_sweep)?,
    })
}

fn webhook(
    cx: &Context<'_>,
    k: &dyn Fn(&str) -> String,
    w: RawWebhook,
) -> Result<WebhookChannel, LoadError> {
    let var = &w.secret_env;
    let secret = cx.env_secret(&k("secret_env"), var)?;
    if !is_standard_webhooks_secret(secret.expose_secret()) {
        return Err(cx.err(
            k("secret_env"),
            format!("the secret in {var} must be a Standard Webhooks secret: whsec_<base64>"),
        ));
    }
    Ok(WebhookChannel {
        url: w.url.0,
        secret,
        max_messages_per_sweep: max_messages(cx, k, w.max_messages_per_sweep)?,
    })
}

/// `max_messages_per_sweep`: at least 1 (the summary of the rest needs a message before it).
fn max_messages(
    cx: &Context<'_>,
    k: &dyn Fn(&str) -> String,
    v: Option<u32>,
) -> Result<u32, LoadError> {
    match v {
        None => Ok(super::super::DEFAULT_MAX_MESSAGES_PER_SWEEP),
        Some(0) => Err(cx.err(k("max_messages_per_sweep"), "must be at least 1")),
        Some(n) => Ok(n),
    }
}
