//! Slack delivery: POST of a Block Kit body to an incoming webhook.
//!
//! The webhook URL is itself the credential: it is read from the config only here, never
//! logged, and removed from every error text (`without_url` plus scrubbing).

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::SlackChannel;
use crate::notify::failure::SendFailure;
use crate::notify::http;

pub async fn send(
    client: &reqwest::Client,
    ch: &SlackChannel,
    payload: &Value,
) -> Result<(), SendFailure> {
    let url = ch.webhook_url.expose_secret();
    http::send(client.post(url).json(payload), &[url]).await
}
