//! PagerDuty delivery: Events API v2.
//!
//! The stored payload has no `routing_key`; it is inserted here, at send time, so it never
//! reaches the outbox or an error text. The `dedup_key` (org/project/key/policy) is part of the
//! stored payload and therefore identical on every retry.

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::PagerDutyChannel;
use crate::notify::failure::SendFailure;
use crate::notify::http;

/// PagerDuty's public Events v2 endpoint (config default for `url`).
pub const DEFAULT_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

pub async fn send(
    client: &reqwest::Client,
    ch: &PagerDutyChannel,
    payload: &Value,
) -> Result<(), SendFailure> {
    let key = ch.routing_key.expose_secret();
    let mut body = payload.clone();
    if let Value::Object(m) = &mut body {
        m.insert("routing_key".into(), Value::String(key.to_string()));
    }
    http::send(client.post(ch.url.clone()).json(&body), &[key]).await
}
