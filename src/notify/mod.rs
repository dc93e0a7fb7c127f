//! Notifications: digests per channel and recipient, the outbox, and delivery.
//!
//! The flow is `compose` (pure: notices + alerts + [`NotifySettings`] → [`OutboxMessage`]s, rendered and
//! channel-ready) → `outbox::enqueue`, or for a sweep `compose::Composed` (payloads packed on
//! the compose thread) and `outbox::enqueue_packed` (written to the state database, through
//! `state::outbox`, before anything is sent) →
//! `deliver::deliver_due` (sends what is due, records the outcome, retries with backoff across
//! restarts, dead-letters after `max_attempts`, or at once a stored message that cannot be
//! read, and raises an [`alert::EnforcerAlert`]).
//!
//! notify sees only [`NotifySettings`] (channels, routes, ops channels, the owner fallback, the
//! notification settings, each policy's channels), built from `Config` at the edge: never an
//! organisation, never the admin key.
//!
//! Invariant: nothing in this module ever stores, logs or returns a channel secret (SMTP
//! password, Slack webhook URL, PagerDuty routing key, webhook signing secret). Secrets are read
//! from the [`crate::config::ChannelConfig`] only at the moment a request is built, and every
//! error text is scrubbed before it is kept.

pub mod alert;
pub mod compose;
pub mod deliver;
pub mod digest;
pub mod email;
pub mod failure;
pub mod http;
pub mod outbox;
pub mod pagerduty;
pub mod render;
pub mod route;
pub mod settings;
pub mod slack;
pub mod webhook;

use serde::{Deserialize, Serialize};

use crate::policy::finding::NoticeKind;

pub use deliver::{DeliveryReport, Notifier, deliver_due, send_test};
pub use outbox::{OutboxDb, OutboxDepth, StoredMessage};
pub use route::compose;
pub use settings::NotifySettings;

/// What an outbox message is about. Stored in the `kind` column; each notice kind travels in its
/// own message so a final notice or a revocation is never buried in a routine digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Warning,
    Reminder,
    FinalNotice,
    Revoked,
    Resolved,
    /// A due revocation or expiry a safety limit held back in this sweep.
    Postponed,
    /// A key was rotated: the new key is in its sink (issue 17).
    Rotated,
    /// Enforcer alerts for `ops_channels`.
    Alert,
    /// A dormant key used again, told to its owner at once (one message per key; the ops
    /// channels get it as an [`alert::EnforcerAlert::KeyWokeUp`] among the `Alert`s).
    WokeUp,
    /// `DeliveryFailed` and `RecipientsRefused` alerts only. Kept apart so a delivery alert
    /// that fails never raises another one (no alert loop).
    DeliveryAlert,
    /// `keysweep notify test`.
    Test,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Warning => "warning",
            MessageKind::Reminder => "reminder",
            MessageKind::FinalNotice => "final_notice",
            MessageKind::Revoked => "revoked",
            MessageKind::Resolved => "resolved",
            MessageKind::Postponed => "postponed",
            MessageKind::Rotated => "rotated",
            MessageKind::Alert => "alert",
            MessageKind::WokeUp => "woke_up",
            MessageKind::DeliveryAlert => "delivery_alert",
            MessageKind::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<MessageKind> {
        Some(match s {
            "warning" => MessageKind::Warning,
            "reminder" => MessageKind::Reminder,
            "final_notice" => MessageKind::FinalNotice,
            "revoked" => MessageKind::Revoked,
            "resolved" => MessageKind::Resolved,
            "postponed" => MessageKind::Postponed,
            "rotated" => MessageKind::Rotated,
            "alert" => MessageKind::Alert,
            "woke_up" => MessageKind::WokeUp,
            "delivery_alert" => MessageKind::DeliveryAlert,
            "test" => MessageKind::Test,
            _ => return None,
        })
    }

    pub fn from_notice(kind: NoticeKind) -> MessageKind {
        match kind {
            NoticeKind::Warning => MessageKind::Warning,
            NoticeKind::Reminder => MessageKind::Reminder,
            NoticeKind::FinalNotice => MessageKind::FinalNotice,
            NoticeKind::Revoked => MessageKind::Revoked,
            NoticeKind::Resolved => MessageKind::Resolved,
            NoticeKind::Postponed => MessageKind::Postponed,
            NoticeKind::Rotated => MessageKind::Rotated,
        }
    }
}

/// One channel-ready message, as written to the outbox.
///
/// `payload` is the rendered content for the channel type (see `render`): for e-mail
/// `{to, subject, text, html}`, for Slack the Block Kit body, for PagerDuty the Events v2 body
/// *without* the routing key, for webhooks the signed JSON body. It never contains a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Stable across retries: derived from run id, channel, recipient and kind (plus a part
    /// number or dedup key), so a re-run of the same compose is ignored by the outbox and a
    /// receiver sees the same `Message-ID` / `webhook-id` every time.
    pub message_id: String,
    pub channel: String,
    /// E-mail address list for e-mail, `channel` for the others.
    pub recipient: String,
    pub kind: MessageKind,
    pub payload: serde_json::Value,
}

/// Errors of the notify module. Messages never contain a secret (see `scrub`).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The outbox (in the state database) failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("channel {0:?} is not configured")]
    UnknownChannel(String),
    #[error("channel {channel:?}: {message}")]
    Channel { channel: String, message: String },
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
    #[error("delivery to channel {channel:?} failed: {error}")]
    Send { channel: String, error: String },
}

/// Replaces every URL (a Slack webhook URL is a secret; other URLs may carry tokens) and every
/// given secret value by a placeholder, and makes the text one safe line
/// (`text::one_line`): a receiver's error body is anyone's text, and it reaches log lines,
/// `last_error` and the operators' alerts. Applied to every error text before it is stored,
/// returned or logged.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    // A receiver that echoes the request as JSON escapes its slashes (`https:\/\/hooks…`): read
    // them as slashes, so the URL and an exact secret are found either way.
    let unescaped = text.replace("\\/", "/");
    let mut out = String::with_capacity(unescaped.len());
    let mut rest = unescaped.as_str();
    // Hand-rolled instead of a regex so this cannot fail at run time.
    while let Some(pos) = find_url_start(rest) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')'))
            .unwrap_or(tail.len());
        out.push_str("<url redacted>");
        rest = &tail[end..];
    }
    out.push_str(rest);
    for s in secrets {
        if s.len() >= 4 {
            out = out.replace(s, "<redacted>");
        }
    }
    crate::text::one_line(&out)
}

fn find_url_start(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    ["https://", "http://", "smtps://", "smtp://"]
        .iter()
        .filter_map(|p| lower.find(p))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_urls_and_secrets() {
        let s = scrub(
            "error sending request for url (https://hooks.slack.com/services/T0/B0/XYZ): refused; token abcd1234",
            &["abcd1234"],
        );
        assert!(!s.contains("hooks.slack.com"), "{s}");
        assert!(!s.contains("XYZ"), "{s}");
        assert!(!s.contains("abcd1234"), "{s}");
        assert!(s.contains("refused"));
    }

    #[test]
    fn scrub_leaves_one_line_without_controls_or_bidirectional_overrides() {
        let s = scrub("550-denied\r\n550 \u{1b}[2J\u{202e}gnp.exe\u{200b}", &[]);
        assert!(!s.chars().any(crate::text::is_unsafe), "{s:?}");
        assert!(s.starts_with("550-denied  550 "), "{s:?}");
    }

    #[test]
    fn message_kind_round_trips() {
        for k in [
            MessageKind::Warning,
            MessageKind::Reminder,
            MessageKind::FinalNotice,
            MessageKind::Revoked,
            MessageKind::Resolved,
            MessageKind::Postponed,
            MessageKind::Rotated,
            MessageKind::Alert,
            MessageKind::WokeUp,
            MessageKind::DeliveryAlert,
            MessageKind::Test,
        ] {
            assert_eq!(MessageKind::parse(k.as_str()), Some(k));
        }
    }
}
