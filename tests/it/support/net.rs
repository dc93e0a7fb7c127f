//! Loopback networking for tests: a port nothing listens on yet, and an HTTP client that never
//! goes through a proxy. Never used to reach anything but 127.0.0.1.

use std::net::TcpListener;
use std::time::Duration;

/// A port on 127.0.0.1 with nothing listening on it (yet): for a daemon that cannot report the
/// port it got for `127.0.0.1:0`, or a receiver that comes up later.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client for the ops endpoints and the receivers. The timeout is a hang guard only.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Asks `{base}/readyz` until it answers `status` with `needle` in the body; returns the body.
pub async fn poll_readyz(
    client: &reqwest::Client,
    base: &str,
    status: u16,
    needle: &str,
) -> String {
    let what = format!("/readyz to answer {status} with {needle:?}");
    super::wait::poll(&what, async || {
        let resp = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let got = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        if got == status && body.contains(needle) {
            Ok(body)
        } else {
            Err(format!("{got} {body}"))
        }
    })
    .await
}
