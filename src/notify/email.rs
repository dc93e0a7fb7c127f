//! E-mail delivery over SMTP with lettre (async, rustls).
//!
//! TLS modes: `starttls` (STARTTLS required; nothing goes out in clear if the server cannot
//! upgrade), `tls` (implicit TLS) and `none` (plain, refused unless the host is loopback).
//! `smtp_ca_file` adds a PEM root for relays with a private CA. Each send opens its own
//! connection (no pool: pooled connections break after the server closes them).
//!
//! The session is driven step by step on lettre's `AsyncSmtpConnection`, not through its
//! transport, whose timeout bounds only the TCP connect (lettre 0.11, tokio): `send_timeout`
//! bounds each answer the relay owes (the greeting and EHLO, STARTTLS, AUTH, MAIL, each RCPT,
//! DATA, the message). A relay slow at every step but within the timeout is never cut off after
//! it accepted the message, which would send the message again; and once the message is
//! accepted, delivery has succeeded whatever QUIT does. The whole session stays under five
//! minutes, within the outbox's ten-minute claim on the message.
//!
//! Each recipient is asked for on its own (`RCPT`): one the relay refuses does not keep the
//! message from the others. The session reports who did not get it ([`Undelivered`]): refused
//! for good (5xx) or for now (4xx); delivery queues it again for the latter and raises an alert
//! for the former. Only when no recipient is taken does the send fail.
//!
//! The `Message-ID` is `<outbox message id@keysweep>`, so a retried digest carries the same id.
//! Never logs or returns the SMTP password or user name: every error text is scrubbed of both,
//! and lettre's `tracing` feature (which logs the session, `AUTH PLAIN` and its base64
//! credentials included) is off in `Cargo.toml`.

use std::future::Future;
use std::time::Duration;

use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::{EmailChannel, SmtpTls, is_loopback_host};
use crate::notify::failure::{SendFailure, Undelivered};
use crate::notify::scrub;

/// Sends one rendered e-mail payload (`{to, subject, text, html}`). `Ok` once the relay took
/// it for at least one recipient, with those it did not take it for.
pub async fn send(
    ch: &EmailChannel,
    message_id: &str,
    payload: &Value,
) -> Result<Undelivered, SendFailure> {
    // The user name is scrubbed too: a relay may echo it in a refusal, and it came from the
    // environment like the password.
    let secrets: Vec<&str> = ch
        .smtp_password
        .iter()
        .chain(ch.smtp_username.iter())
        .map(|p| p.expose_secret())
        .collect();
    // A failure that may pass is the relay's or the way to it (connect, TLS, no answer, the
    // session limit), except an answer about this message (a content filter's 451) or its
    // recipients: among the answers, 421 (service not available), 452 (no storage) and 454
    // (TLS or AUTH unavailable for now) are the relay's.
    let fail = |retryable: bool, e: &dyn std::fmt::Display| SendFailure {
        error: scrub(&e.to_string(), &secrets),
        retryable,
        channel_wide: retryable,
        about_recipients: false,
    };

    let message = build_message(ch, message_id, payload).map_err(|e| fail(false, &e))?;
    let tls = tls(ch).await.map_err(|e| fail(false, &e))?;
    let end = tokio::time::Instant::now() + SESSION_LIMIT;
    let whole = tokio::time::timeout_at(end, session(ch, tls, &message, end));
    let Ok(ended) = whole.await else {
        return Err(fail(
            true,
            &format!("smtp: the session did not end within {SESSION_LIMIT:?}"),
        ));
    };
    ended
        .map(|undelivered| undelivered.scrub_with(|e| scrub(e, &secrets)))
        .map_err(|e| match e {
            Step::Smtp(e) => SendFailure {
                channel_wide: !e.is_permanent()
                    && code(&e).is_none_or(|c| matches!(c, 421 | 452 | 454)),
                ..fail(!e.is_permanent(), &format!("smtp: {e}"))
            },
            Step::NoAnswer(step) => fail(
                true,
                &format!(
                    "smtp: no answer to {step} within {:?} per answer",
                    ch.send_timeout
                ),
            ),
            Step::Refused(why) => fail(false, &format!("smtp: {why}")),
            Step::NoRecipient { retryable, why } => SendFailure {
                channel_wide: false,
                about_recipients: true,
                ..fail(retryable, &format!("smtp: {why}"))
            },
        })
}

/// The longest a whole session may take, however many steps and recipients: well within the
/// outbox's claim on the message (ten minutes), so no other deliverer picks it up meanwhile.
const SESSION_LIMIT: Duration = Duration::from_secs(300);

/// Why a session ended without the message accepted.
enum Step {
    Smtp(lettre::transport::smtp::Error),
    /// The relay owed an answer to this step and gave none within `send_timeout`.
    NoAnswer(&'static str),
    Refused(String),
    /// Every `RCPT` was refused: for now (`retryable`) or for good.
    NoRecipient {
        retryable: bool,
        why: String,
    },
}

/// Each step under `send_timeout` (`answers`: how many answers it waits for).
async fn timed<T>(
    ch: &EmailChannel,
    step: &'static str,
    answers: u32,
    f: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Step> {
    match tokio::time::timeout(ch.send_timeout.saturating_mul(answers), f).await {
        Ok(r) => r.map_err(Step::Smtp),
        Err(_) => Err(Step::NoAnswer(step)),
    }
}

/// How the connection is secured.
enum Security {
    /// TLS from the first byte (`tls`).
    Implicit(TlsParameters),
    /// STARTTLS, required (`starttls`).
    Upgrade(TlsParameters),
    /// Plain, loopback only (`none`).
    Plain,
}

/// One session: connect (and TLS), AUTH, the message; then QUIT, whose answer does not matter,
/// and which never runs into `end` (the whole session's limit, where the caller gives up).
async fn session(
    ch: &EmailChannel,
    tls: Security,
    message: &Message,
    end: tokio::time::Instant,
) -> Result<Undelivered, Step> {
    let hello = ClientId::default();
    let server = (ch.smtp_host.as_str(), ch.smtp_port);
    let implicit = match &tls {
        Security::Implicit(p) => Some(p.clone()),
        _ => None,
    };
    // The TCP (and TLS) connect, the greeting and the EHLO answer.
    let connect =
        AsyncSmtpConnection::connect_tokio1(server, Some(ch.send_timeout), &hello, implicit, None);
    let mut conn = timed(ch, "the connection", 3, connect).await?;
    if let Security::Upgrade(params) = tls {
        if !conn.can_starttls() {
            return Err(Step::Refused(
                "the relay does not offer STARTTLS, which smtp_tls = \"starttls\" requires".into(),
            ));
        }
        // STARTTLS's answer, the handshake, EHLO's answer.
        timed(ch, "STARTTLS", 3, conn.starttls(params, &hello)).await?;
    }
    if let (Some(user), Some(pass)) = (&ch.smtp_username, &ch.smtp_password) {
        let credentials = Credentials::new(
            user.expose_secret().to_string(),
            pass.expose_secret().to_string(),
        );
        let mechanisms = [Mechanism::Plain, Mechanism::Login];
        timed(ch, "AUTH", 3, conn.auth(&mechanisms, &credentials)).await?;
    }
    let sent = transaction(ch, &mut conn, message).await;
    // Accepted or not, QUIT (as lettre does after a refusal); its answer does not matter, and
    // once the message is accepted it went out whatever QUIT does. So QUIT gives up before the
    // session's limit: waiting into it would turn an accepted message into a failed send, and
    // the message would go out again.
    let wait = quit_wait(ch.send_timeout, tokio::time::Instant::now(), end);
    let _ = tokio::time::timeout(wait, conn.abort()).await;
    sent
}

/// How long QUIT may wait at `now`: its own bound, and never past a second before `end`.
fn quit_wait(
    send_timeout: Duration,
    now: tokio::time::Instant,
    end: tokio::time::Instant,
) -> Duration {
    let room = end
        .checked_sub(QUIT_MARGIN)
        .map_or(Duration::ZERO, |by| by.saturating_duration_since(now));
    send_timeout.min(QUIT_WAIT).min(room)
}

/// MAIL, one RCPT per recipient, DATA and the message (lettre's `send`, except that a refused
/// recipient is noted instead of ending the transaction).
async fn transaction(
    ch: &EmailChannel,
    conn: &mut AsyncSmtpConnection,
    message: &Message,
) -> Result<Undelivered, Step> {
    let envelope = message.envelope();
    let body = message.formatted();
    let mut options = Vec::new();
    let mut undelivered = Undelivered::default();
    let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
    let utf8 = conn.server_info().supports_feature(Extension::SmtpUtfEight);
    if !envelope.from().is_none_or(ascii) && !utf8 {
        return Err(Step::Refused(
            "the `from` address is not ASCII and the relay does not offer SMTPUTF8".into(),
        ));
    }
    // A recipient this relay cannot take is left out, not the message.
    let (to, unsendable): (Vec<&lettre::Address>, Vec<&lettre::Address>) =
        (envelope.to().iter()).partition(|a| utf8 || ascii(a));
    for a in unsendable {
        let why = "the address is not ASCII and the relay does not offer SMTPUTF8";
        undelivered.refused.push((a.to_string(), why.to_string()));
    }
    if utf8 && !(envelope.from().is_none_or(ascii) && to.iter().all(|a| ascii(a))) {
        options.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(Step::Refused(
                "the message is not ASCII and the relay does not offer 8BITMIME".into(),
            ));
        }
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let from = envelope.from().cloned();
    timed(ch, "MAIL", 1, conn.command(Mail::new(from, options))).await?;
    let mut taken = 0usize;
    for to in to {
        let rcpt = conn.command(Rcpt::new(to.clone(), Vec::new()));
        match timed(ch, "RCPT", 1, rcpt).await {
            Ok(_) => taken += 1,
            // RFC 5321 4.5.3.1.10: a 552 to RCPT ("too many recipients") means "later".
            Err(Step::Smtp(e)) if e.is_transient() || code(&e) == Some(552) => {
                undelivered.deferred.push((to.to_string(), e.to_string()));
            }
            Err(Step::Smtp(e)) if e.is_permanent() => {
                undelivered.refused.push((to.to_string(), e.to_string()));
            }
            Err(other) => return Err(other),
        }
    }
    if taken == 0 {
        // Nobody to send it to. Tried again when any refusal was for now.
        let refused = (undelivered.refused.iter()).map(|(to, why)| format!("{to} ({why})"));
        let deferred =
            (undelivered.deferred.iter()).map(|(to, why)| format!("{to} (for now: {why})"));
        return Err(Step::NoRecipient {
            retryable: !undelivered.deferred.is_empty(),
            why: format!(
                "the relay took none of the recipients: {}",
                refused.chain(deferred).collect::<Vec<_>>().join("; ")
            ),
        });
    }
    timed(ch, "DATA", 1, conn.command(Data)).await?;
    // The upload and the relay's answer to it (it may scan the message first): two answers'
    // time, and one more per MiB sent, so a large digest is not cut off after it was accepted.
    let answers = 2 + u32::try_from(body.len() >> 20).unwrap_or(u32::MAX);
    timed(ch, "the message", answers, conn.message(&body)).await?;
    Ok(undelivered)
}

/// The reply code of an SMTP refusal, if the error is one.
fn code(e: &lettre::transport::smtp::Error) -> Option<u16> {
    e.status().and_then(|c| c.to_string().parse().ok())
}

/// The longest wait for QUIT's answer once the message was accepted.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// QUIT ends at least this long before the session's limit.
const QUIT_MARGIN: Duration = Duration::from_secs(1);

/// Builds the multipart (text + HTML) message with a deterministic Message-ID.
pub fn build_message(
    ch: &EmailChannel,
    message_id: &str,
    payload: &Value,
) -> Result<Message, String> {
    let from: Mailbox = ch
        .from
        .parse()
        .map_err(|e| format!("invalid `from` address: {e}"))?;
    let subject = payload["subject"].as_str().unwrap_or("[keysweep]");
    let text = payload["text"].as_str().unwrap_or_default().to_string();
    let html = payload["html"].as_str().unwrap_or_default().to_string();
    let to: Vec<&str> = payload["to"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if to.is_empty() {
        return Err("message has no recipient".to_string());
    }
    let mut b = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(format!("<{message_id}@keysweep>")))
        .date_now()
        .user_agent("keysweep".to_string());
    for t in to {
        let mb: Mailbox = t
            .parse()
            .map_err(|e| format!("invalid recipient address {t:?}: {e}"))?;
        b = b.to(mb);
    }
    b.multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| format!("could not build the message: {e}"))
}

/// The channel's TLS mode, with its parameters (and `smtp_ca_file`'s root).
async fn tls(ch: &EmailChannel) -> Result<Security, String> {
    let host = ch.smtp_host.as_str();
    let params = || async {
        let mut b = TlsParameters::builder(host.to_string());
        if let Some(path) = &ch.smtp_ca_file {
            let pem = tokio::fs::read(path)
                .await
                .map_err(|e| format!("smtp_ca_file {}: {e}", path.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| format!("smtp_ca_file {}: {e}", path.display()))?;
            b = b.add_root_certificate(cert);
        }
        b.build().map_err(|e| format!("tls parameters: {e}"))
    };
    Ok(match ch.smtp_tls {
        SmtpTls::Starttls => Security::Upgrade(params().await?),
        SmtpTls::Tls => Security::Implicit(params().await?),
        SmtpTls::None if is_loopback_host(host) => Security::Plain,
        SmtpTls::None => {
            return Err(format!(
                "smtp_tls = \"none\" is only allowed for loopback hosts, not {host}"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message accepted near the session's limit: QUIT gets only what is left before it (less
    /// a second), and nothing once that is gone, so the accepted send is never timed out.
    #[test]
    fn quit_never_waits_into_the_sessions_limit() {
        let now = tokio::time::Instant::now();
        let end = now + SESSION_LIMIT;
        let t = Duration::from_secs(30);
        assert_eq!(
            quit_wait(t, now, end),
            QUIT_WAIT,
            "far from the limit: its own bound"
        );
        assert_eq!(
            quit_wait(Duration::from_secs(2), now, end),
            Duration::from_secs(2)
        );
        let late = end - Duration::from_secs(3);
        assert_eq!(quit_wait(t, late, end), Duration::from_secs(2));
        assert_eq!(
            quit_wait(t, end - Duration::from_millis(500), end),
            Duration::ZERO
        );
        assert_eq!(
            quit_wait(t, end + Duration::from_secs(1), end),
            Duration::ZERO
        );
    }
}
