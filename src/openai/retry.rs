//! Retry policy: which answers are worth another attempt, and how long to wait first.
//!
//! Mirrors OpenAI's own SDKs: connect errors, timeouts and HTTP 408/409/429/5xx are retried;
//! the server's `retry-after-ms`, then `Retry-After` (seconds or an HTTP date) is honoured
//! exactly when it lies in (0, 120] s, and a longer server-directed delay is not retried at all;
//! otherwise the wait is `min(0.5 s · 2ⁿ, 8 s) · [0.75, 1]`. Pure functions only: this module
//! never sleeps or sends anything, so it is unit-tested without a clock. Whether a request may
//! be retried at all (idempotency) is the client's decision, not this module's.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

const INITIAL_DELAY: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A server asking us to wait longer than this is not retried (the SDKs' `MAX_RETRY_AFTER_DELAY`).
pub(crate) const MAX_SERVER_DELAY: Duration = Duration::from_secs(120);

/// Statuses the SDKs retry.
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// Exponential backoff with jitter before retry number `retries_done + 1`.
/// `jitter` is a sample of [0, 1): the delay is scaled by `1 - 0.25 · jitter`.
pub(crate) fn backoff(retries_done: u32, jitter: f64) -> Duration {
    let exp = INITIAL_DELAY.as_secs_f64() * 2f64.powi(retries_done.min(16) as i32);
    let capped = exp.min(MAX_BACKOFF.as_secs_f64());
    let factor = 1.0 - 0.25 * jitter.clamp(0.0, 1.0);
    Duration::from_secs_f64(capped * factor)
}

/// What the server said about waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ServerDelay {
    /// No usable header: use our own backoff.
    None,
    /// Wait exactly this long, then retry.
    Wait(Duration),
    /// The server wants more than [`MAX_SERVER_DELAY`]: give up now.
    TooLong(Duration),
}

/// Reads `retry-after-ms` (float milliseconds), then `Retry-After` (float seconds or an HTTP
/// date relative to `now`).
pub(crate) fn server_delay(headers: &HeaderMap, now: SystemTime) -> ServerDelay {
    let secs = header_str(headers, "retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|ms| ms / 1000.0)
        .or_else(|| {
            let v = header_str(headers, "retry-after")?;
            let v = v.trim();
            v.parse::<f64>().ok().or_else(|| http_date_delta(v, now))
        });
    match secs {
        Some(s) if s.is_finite() && s > 0.0 => {
            let d = Duration::from_secs_f64(s.min(1e9));
            if d > MAX_SERVER_DELAY {
                ServerDelay::TooLong(d)
            } else {
                ServerDelay::Wait(d)
            }
        }
        _ => ServerDelay::None,
    }
}

/// `x-should-retry: true|false` overrides the status-based decision, as in the SDKs.
pub(crate) fn should_retry_override(headers: &HeaderMap) -> Option<bool> {
    match header_str(headers, "x-should-retry")? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn http_date_delta(v: &str, now: SystemTime) -> Option<f64> {
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let now = chrono::DateTime::<chrono::Utc>::from(now);
    let delta = at.signed_duration_since(now);
    Some(delta.num_milliseconds() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(40, 0.0), Duration::from_secs(8));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(375));
        assert_eq!(backoff(10, 0.999_999).as_millis(), 6000);
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 409, 429, 500, 502, 503, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 422] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "7")]);
        assert_eq!(
            server_delay(&h, SystemTime::now()),
            ServerDelay::Wait(Duration::from_millis(250))
        );
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let h = headers(&[("retry-after", "2")]);
        assert_eq!(
            server_delay(&h, SystemTime::now()),
            ServerDelay::Wait(Duration::from_secs(2))
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767); // 1994-11-06 08:49:27 UTC
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(
            server_delay(&h, now),
            ServerDelay::Wait(Duration::from_secs(10))
        );
        let h = headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:00 GMT")]);
        assert_eq!(server_delay(&h, now), ServerDelay::None);
    }

    #[test]
    fn too_long_and_garbage() {
        let h = headers(&[("retry-after", "121")]);
        assert_eq!(
            server_delay(&h, SystemTime::now()),
            ServerDelay::TooLong(Duration::from_secs(121))
        );
        for bad in ["soon", "-3", "0", "NaN", "inf"] {
            let h = headers(&[("retry-after", bad)]);
            assert_eq!(
                server_delay(&h, SystemTime::now()),
                ServerDelay::None,
                "{bad}"
            );
        }
    }

    #[test]
    fn should_retry_header() {
        assert_eq!(
            should_retry_override(&headers(&[("x-should-retry", "false")])),
            Some(false)
        );
        assert_eq!(
            should_retry_override(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(should_retry_override(&HeaderMap::new()), None);
    }
}
