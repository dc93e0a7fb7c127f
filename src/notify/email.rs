//! E-mail delivery over SMTP with lettre (async, rustls).
//!
//! TLS modes: `starttls` (STARTTLS required; nothing goes out in clear if the server cannot
//! upgrade), `tls` (implicit TLS) and `none` (plain, refused unless the host is loopback).
//! `smtp_ca_file` adds a PEM root for relays with a private CA. Each send opens its own
//! connection (no pool: pooled connections break after the server closes them). `send_timeout`
//! bounds each answer of the relay; the whole session is bounded too, because lettre can hang
//! while the network is down, but at [`SESSION_TIMEOUTS`] times that: a session is several
//! commands, and cutting off a relay that is slow at each (one that scans a message after
//! `DATA`) after it accepted the message would send the message again.
//!
//! The `Message-ID` is `<outbox message id@keysweep>`, so a retried digest carries the same id.
//! Never logs or returns the SMTP password or user name: every error text is scrubbed of both,
//! and lettre's `tracing` feature (which logs the session, `AUTH PLAIN` and its base64
//! credentials included) is off in `Cargo.toml`.

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::{EmailChannel, SmtpTls, is_loopback_host};
use crate::notify::failure::SendFailure;
use crate::notify::scrub;

/// How many `send_timeout`s a whole SMTP session may take (greeting, EHLO, STARTTLS, AUTH,
/// MAIL, RCPT, DATA and the message each wait for an answer).
pub const SESSION_TIMEOUTS: u32 = 4;

/// Sends one rendered e-mail payload (`{to, subject, text, html}`).
pub async fn send(ch: &EmailChannel, message_id: &str, payload: &Value) -> Result<(), SendFailure> {
    // The user name is scrubbed too: a relay may echo it in a refusal, and it came from the
    // environment like the password.
    let secrets: Vec<&str> = ch
        .smtp_password
        .iter()
        .chain(ch.smtp_username.iter())
        .map(|p| p.expose_secret())
        .collect();
    let fail = |retryable: bool, e: &dyn std::fmt::Display| SendFailure {
        error: scrub(&e.to_string(), &secrets),
        retryable,
    };

    let message = build_message(ch, message_id, payload).map_err(|e| fail(false, &e))?;
    let transport = transport(ch).await.map_err(|e| fail(false, &e))?;
    let session = ch.send_timeout.saturating_mul(SESSION_TIMEOUTS);
    match tokio::time::timeout(session, transport.send(message)).await {
        Ok(Ok(_response)) => Ok(()),
        Ok(Err(e)) => Err(fail(!e.is_permanent(), &format!("smtp: {e}"))),
        Err(_) => Err(fail(
            true,
            &format!("smtp: the session did not end within {session:?}"),
        )),
    }
}

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

async fn transport(ch: &EmailChannel) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let host = ch.smtp_host.as_str();
    let tls_params = || async {
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
    let builder = match ch.smtp_tls {
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| format!("smtp relay: {e}"))?
            .tls(Tls::Required(tls_params().await?)),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
            .map_err(|e| format!("smtp relay: {e}"))?
            .tls(Tls::Wrapper(tls_params().await?)),
        SmtpTls::None => {
            if !is_loopback_host(host) {
                return Err(format!(
                    "smtp_tls = \"none\" is only allowed for loopback hosts, not {host}"
                ));
            }
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).tls(Tls::None)
        }
    };
    let mut builder = builder.port(ch.smtp_port).timeout(Some(ch.send_timeout));
    if let (Some(user), Some(pass)) = (&ch.smtp_username, &ch.smtp_password) {
        builder = builder.credentials(Credentials::new(
            user.expose_secret().to_string(),
            pass.expose_secret().to_string(),
        ));
    }
    Ok(builder.build())
}
