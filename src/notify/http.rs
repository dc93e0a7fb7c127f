//! The HTTP side shared by the Slack, PagerDuty and webhook senders: one client with timeouts
//! and no redirects, and the mapping of answers to delivery outcomes.
//!
//! 2xx = accepted; 408/429/5xx and transport errors = retry later; any other status = rejected
//! (still retried until `max_attempts`, since a receiver may be fixed meanwhile). An error
//! answer's body is read at most 4 KiB, chunk by chunk, never whole. Error texts
//! never include the URL (reqwest's `without_url`) and are scrubbed of the given secrets.

use std::time::Duration;

use crate::notify::failure::SendFailure;
use crate::notify::{NotifyError, scrub};

/// Longest part of a receiver's error body kept in the error text.
const MAX_BODY_IN_ERROR: usize = 200;
/// Most bytes of a receiver's error body ever read (the rest is never downloaded).
const MAX_ERROR_BODY_READ: usize = 4096;

/// A client with connect and total timeouts. Redirects are refused: a receiver that redirects
/// could make us re-post a signed body or a routing key elsewhere.
pub fn client() -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keysweep/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NotifyError::HttpClient(e.without_url().to_string()))
}

/// Sends a prepared request and maps the answer.
pub async fn send(req: reqwest::RequestBuilder, secrets: &[&str]) -> Result<(), SendFailure> {
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let body = bounded_body(resp).await;
            let retryable = status.is_server_error()
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::REQUEST_TIMEOUT;
            // Only what says the receiver (or the way to it) is down or pushing back: a 500 or a
            // 408 may be about this one message, and must not hold the others back.
            let channel_wide = matches!(status.as_u16(), 429 | 502 | 503 | 504);
            Err(SendFailure {
                error: error_text(status, &body, secrets),
                retryable,
                channel_wide,
                about_recipients: false,
            })
        }
        Err(e) => Err(SendFailure {
            error: scrub(&error_chain(e.without_url()), secrets),
            retryable: true,
            channel_wide: true,
            about_recipients: false,
        }),
    }
}

/// The error text of a refused send: the status and the start of the body, scrubbed whole and
/// then shortened (a secret the cut went through would keep its first part, which no exact
/// match finds).
fn error_text(status: reqwest::StatusCode, body: &str, secrets: &[&str]) -> String {
    let body = scrub(body.trim(), secrets);
    let body: String = body.chars().take(MAX_BODY_IN_ERROR).collect();
    format!("HTTP {status}: {body}")
}

/// At most [`MAX_ERROR_BODY_READ`] bytes of an error answer's body, read chunk by chunk: a
/// receiver's huge (or endless) error body is never read whole nor waited for past that. A read
/// error ends it with what arrived. The connection is dropped with the response.
async fn bounded_body(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_READ {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY_READ - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// reqwest's Display omits the cause ("error sending request"); add the chain.
fn error_chain(e: reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret the 200-character cut goes through leaves none of itself; nor does a webhook
    /// URL the receiver echoed JSON-escaped.
    #[test]
    fn an_error_body_is_scrubbed_before_it_is_shortened() {
        let secret = "R0UT1NG-KEY-0123456789abcdef";
        let body = format!("{}{secret} and more", "x".repeat(MAX_BODY_IN_ERROR - 10));
        let text = error_text(reqwest::StatusCode::BAD_REQUEST, &body, &[secret]);
        assert!(!text.contains(&secret[..10]), "{text}");
        assert!(text.starts_with("HTTP 400 Bad Request: xxx"), "{text}");
        let echoed =
            r#"{"error":"bad","url":"https:\/\/hooks.slack.com\/services\/T0\/B0\/s3cr3t"}"#;
        let text = error_text(reqwest::StatusCode::BAD_REQUEST, echoed, &[]);
        assert!(
            !text.contains("s3cr3t") && !text.contains("hooks"),
            "{text}"
        );
    }
}
