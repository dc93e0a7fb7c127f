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
    http::send(client.post(url).json(payload), &secrets(url)).await
}

/// What of the webhook URL an error text must never show: the URL, and its path and last
/// segment, which a receiver or proxy echoes without the scheme and host ("Cannot POST
/// /services/T…/B…/token"), where no URL is found to scrub. Longest first.
pub(super) fn secrets(url: &str) -> Vec<&str> {
    let mut out = vec![url];
    let path = url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]));
    if let Some(path) = path.filter(|p| p.len() > 1) {
        out.push(path);
        // A token is long; a short last segment ("/x") would scrub ordinary words.
        let token = path.trim_end_matches('/').rsplit('/').next();
        if let Some(last) = token.filter(|s| s.len() >= 8) {
            out.push(last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_webhook_urls_path_and_token_are_secrets_too() {
        let url = "https://hooks.slack.com/services/T0000/B0000/slackTOKENdonotleak42";
        let echoed = "404: Cannot POST /services/T0000/B0000/slackTOKENdonotleak42 (token \
                      slackTOKENdonotleak42)";
        let clean = crate::notify::scrub(echoed, &super::secrets(url));
        assert!(!clean.contains("slackTOKEN"), "{clean}");
        assert!(clean.contains("Cannot POST"), "{clean}");
        // A URL written with a trailing slash: its token is still the secret.
        let clean = crate::notify::scrub(echoed, &super::secrets(&format!("{url}/")));
        assert!(!clean.contains("slackTOKEN"), "{clean}");
    }
}
