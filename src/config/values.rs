//! The typed values of the configuration file, each checked once, when serde reads it:
//! durations, cron expressions, time zones, globs, URLs, e-mail addresses, regexes, the listen
//! address, `until` dates and names that must not be blank, plus the enums read by name.
//!
//! Each newtype reads its value as text (config-rs turns numbers and booleans into text, as it
//! always has, so `KEYSWEEP__…` overrides behave as before) and rejects it with a message that
//! quotes the value; the caller's `serde_path_to_error` adds the key path. What these types must
//! never do: read a secret (the file names environment variables and files; secrets are
//! resolved later, in `raw/secrets.rs`), or touch the file system or the network.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _, IntoDeserializer};
use serde::{Deserialize, Deserializer};

use super::is_loopback_host;

/// Human durations: `90d`, `36h`, `1h 30m`, `45s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // humantime's own advice for a bare number is "90sec or 90ms"; policy durations are days.
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} has no unit: write \"{t}d\" for {t} days (or \"{t}h\", \"{t}m\", \"{t}s\")"
        ));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration like \"90d\" or \"36h\": {e}"))
}

/// Checks a cron expression as the daemon will read it (`config::cron`): 5 fields (minute
/// precision) or 6 (with seconds), and one that fires at all (`0 0 30 2 *` never does).
pub fn validate_cron(expr: &str) -> Result<(), String> {
    super::cron::CronSchedule::parse(expr)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A value read from its text form, checked by `parse`.
trait FromText: Sized {
    fn parse(s: String) -> Result<Self, String>;
}

/// `Deserialize` for a [`FromText`] type: text in, the checked value or the parser's message out.
macro_rules! deserialize_from_text {
    ($($t:ty),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$t as FromText>::parse(String::deserialize(d)?).map_err(D::Error::custom)
            }
        }
    )*};
}

deserialize_from_text!(
    HumanDuration,
    CronExpr,
    TimeZone,
    Glob,
    HttpUrl,
    BaseUrl,
    Mailbox,
    NamePattern,
    ListenAddr,
    Until,
    NonEmpty,
);

/// A duration such as `90d` (see [`parse_duration`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct HumanDuration(pub Duration);

impl FromText for HumanDuration {
    fn parse(s: String) -> Result<Self, String> {
        parse_duration(&s).map(HumanDuration)
    }
}

/// A 5- or 6-field cron expression (see [`validate_cron`]).
#[derive(Debug, Clone)]
pub(super) struct CronExpr(pub String);

impl FromText for CronExpr {
    fn parse(s: String) -> Result<Self, String> {
        validate_cron(&s)?;
        Ok(CronExpr(s))
    }
}

/// An IANA time zone name.
#[derive(Debug, Clone, Copy)]
pub(super) struct TimeZone(pub chrono_tz::Tz);

impl FromText for TimeZone {
    fn parse(s: String) -> Result<Self, String> {
        s.parse::<chrono_tz::Tz>()
            .map(TimeZone)
            .map_err(|_| format!("{s:?} is not an IANA time zone name (e.g. \"Europe/Berlin\")"))
    }
}

/// A glob (project names, key names, owner e-mails); kept as written, compiled by `policy`.
#[derive(Debug, Clone)]
pub(super) struct Glob(pub String);

impl FromText for Glob {
    fn parse(s: String) -> Result<Self, String> {
        match globset::Glob::new(&s) {
            Ok(_) => Ok(Glob(s)),
            Err(e) => Err(format!("invalid glob {s:?}: {e}")),
        }
    }
}

impl From<Glob> for String {
    fn from(g: Glob) -> String {
        g.0
    }
}

/// An `https://` URL, or `http://` on loopback (PagerDuty and webhook endpoints).
#[derive(Debug, Clone)]
pub(super) struct HttpUrl(pub url::Url);

impl FromText for HttpUrl {
    fn parse(s: String) -> Result<Self, String> {
        // Never echo the text: webhook URLs carry their tokens, and this error reaches stderr.
        let u = url::Url::parse(&s)
            .map_err(|e| format!("is not a URL ({e}); not shown, it may hold a token"))?;
        match u.scheme() {
            "https" => Ok(HttpUrl(u)),
            "http" if u.host_str().is_some_and(is_loopback_host) => Ok(HttpUrl(u)),
            "http" => Err("plain http:// is refused except on loopback; use https://".into()),
            other => Err(format!("unsupported scheme {other:?}")),
        }
    }
}

/// The Administration API's base URL, including the version path: `https://api.openai.com/v1`.
#[derive(Debug, Clone)]
pub(super) struct BaseUrl(pub url::Url);

impl FromText for BaseUrl {
    fn parse(s: String) -> Result<Self, String> {
        let u = url::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match u.scheme() {
            "https" => {}
            "http" => {
                let host = u.host_str().unwrap_or("");
                if !is_loopback_host(host) {
                    return Err(format!(
                        "plain http:// is refused except on loopback (got host {host:?}); use https://"
                    ));
                }
            }
            other => return Err(format!("unsupported scheme {other:?}")),
        }
        if u.cannot_be_a_base() || u.query().is_some() {
            return Err("must be a base URL such as https://api.openai.com/v1".into());
        }
        Ok(BaseUrl(u))
    }
}

/// An e-mail address (`a@example.com` or `Name <a@example.com>`), kept as written.
#[derive(Debug, Clone)]
pub(super) struct Mailbox(pub String);

impl FromText for Mailbox {
    fn parse(s: String) -> Result<Self, String> {
        match s.parse::<lettre::message::Mailbox>() {
            Ok(_) => Ok(Mailbox(s)),
            Err(e) => Err(format!("{s:?} is not an e-mail address: {e}")),
        }
    }
}

impl From<Mailbox> for String {
    fn from(m: Mailbox) -> String {
        m.0
    }
}

/// The checked values as the text they were written as (globs, addresses), which is what
/// [`Config`](super::Config) keeps.
pub(super) fn strings<T>(values: Vec<T>) -> Vec<String>
where
    String: From<T>,
{
    values.into_iter().map(String::from).collect()
}

/// A policy's `name_pattern` regex.
#[derive(Debug, Clone)]
pub(super) struct NamePattern(pub regex::Regex);

impl FromText for NamePattern {
    fn parse(s: String) -> Result<Self, String> {
        regex::Regex::new(&s)
            .map(NamePattern)
            .map_err(|e| format!("invalid regex: {e}"))
    }
}

/// `server.listen`: an `address:port`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ListenAddr(pub SocketAddr);

impl FromText for ListenAddr {
    fn parse(s: String) -> Result<Self, String> {
        s.parse::<SocketAddr>()
            .map(ListenAddr)
            .map_err(|e| format!("{s:?} is not an address:port: {e}"))
    }
}

/// An exemption's `until`: a date (`2026-12-31`, valid through the end of that day, UTC) or an
/// RFC 3339 time, as Unix seconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Until(pub i64);

impl FromText for Until {
    fn parse(s: String) -> Result<Self, String> {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&s) {
            return Ok(Until(t.timestamp()));
        }
        chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(23, 59, 59))
            .map(|t| Until(t.and_utc().timestamp()))
            .ok_or_else(|| format!("{s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"))
    }
}

/// A name or host that must not be blank (organisations, policies, channels, `smtp_host`).
#[derive(Debug, Clone)]
pub(super) struct NonEmpty(pub String);

impl FromText for NonEmpty {
    fn parse(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(NonEmpty(s))
    }
}

/// One of an enum's names (`mode = "enforce"`), read through the enum's own `Deserialize`.
///
/// config-rs's enum access has two quirks this avoids: a one-key table (`mode = { enforce = 1 }`)
/// would pass as the variant, and an unknown name gets a message that lists no valid names.
/// Read as text first, serde's own message says what is allowed: ``unknown variant `yolo`,
/// expected `dry-run` or `enforce` ``.
pub(super) fn choice<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    T::deserialize(String::deserialize(d)?.into_deserializer())
}

/// [`choice`] for an optional key (use with `#[serde(default)]`).
pub(super) fn opt_choice<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    choice(d).map(Some)
}

/// A boolean key: `true` or `false` (in a `KEYSWEEP__…` variable, the text `true` or `false`).
///
/// config-rs reads `"yes"`, `"on"`, `"1"` and any non-zero number as true: a typo such as
/// `enabled = "no"` or `owner = 0.5` would then switch a rail on or off without a word. A
/// security tool refuses it, naming the key.
pub(super) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct Flag;
    impl serde::de::Visitor<'_> for Flag {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true or false")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        // Environment variables are text.
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(Flag)
}

/// [`flag`] for an optional key (use with `#[serde(default)]`).
pub(super) fn opt_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    flag(d).map(Some)
}

/// The Standard Webhooks secret format, `whsec_<base64>` with a non-empty key. The secret itself
/// comes from the environment (the file names the variable), so this checks the resolved value.
pub(super) fn is_standard_webhooks_secret(s: &str) -> bool {
    use base64::Engine;
    s.strip_prefix("whsec_").is_some_and(|b| {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .is_ok_and(|k| !k.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_read_as_text() {
        use serde::de::value::{Error, StrDeserializer};
        let read = |s: &str| choice::<_, super::super::Mode>(StrDeserializer::<Error>::new(s));
        assert_eq!(read("enforce").unwrap(), super::super::Mode::Enforce);
        let err = read("yolo").unwrap_err().to_string();
        assert!(err.contains("`dry-run` or `enforce`"), "{err}");
    }

    #[test]
    fn webhook_secrets_need_the_prefix_and_a_key() {
        assert!(is_standard_webhooks_secret("whsec_c2VjcmV0"));
        assert!(!is_standard_webhooks_secret("c2VjcmV0"));
        assert!(!is_standard_webhooks_secret("whsec_"));
        assert!(!is_standard_webhooks_secret("whsec_!!"));
    }
}
