//! Generic webhook delivery, signed per Standard Webhooks 1.0.
//!
//! Headers: `webhook-id` (the outbox message id, the same on every retry), `webhook-timestamp`
//! (unix seconds at send time, so receivers' replay windows hold even for late retries) and
//! `webhook-signature: v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>` where `key` is
//! the base64-decoded part of the `whsec_…` secret. The payload schema is documented in
//! `render.rs`. The secret is never logged or stored.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::Sha256;

use crate::config::WebhookChannel;
use crate::notify::failure::SendFailure;
use crate::notify::http;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("webhook secret is not `whsec_` followed by base64")]
    BadSecret,
}

/// `v1,<base64 signature>` for the given id, timestamp and exact body bytes.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| SignError::BadSecret)?;
    if key.is_empty() {
        return Err(SignError::BadSecret);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SignError::BadSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

pub async fn send(
    client: &reqwest::Client,
    ch: &WebhookChannel,
    message_id: &str,
    payload: &Value,
) -> Result<(), SendFailure> {
    let secret = ch.secret.expose_secret();
    let body = serde_json::to_vec(payload).map_err(|e| SendFailure {
        error: format!("payload: {e}"),
        retryable: false,
        channel_wide: false,
        about_recipients: false,
    })?;
    let timestamp = chrono::Utc::now().timestamp();
    let signature = sign(secret, message_id, timestamp, &body).map_err(|e| SendFailure {
        error: e.to_string(),
        retryable: false,
        channel_wide: false,
        about_recipients: false,
    })?;
    let req = client
        .post(ch.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body);
    http::send(req, &[secret]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_test_vector() {
        // Vector from the Standard Webhooks specification's reference tests.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn signature_matches_an_independent_implementation() {
        let secret = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtMTIzNDU2Nzg=";
        let body = br#"{"type":"keysweep.test","notices":[]}"#;
        let ours = sign(secret, "ks-abc", 1_700_000_000, body).unwrap();
        let theirs = standardwebhooks::Webhook::new(secret)
            .unwrap()
            .sign("ks-abc", 1_700_000_000, body)
            .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn bad_secret_is_refused() {
        assert_eq!(sign("whsec_!!!", "id", 1, b"{}"), Err(SignError::BadSecret));
    }
}
