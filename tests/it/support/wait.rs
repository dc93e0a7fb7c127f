//! Waiting for something that happens in another task or process: `eventually` for a condition
//! the test can read synchronously, `poll` for one it has to ask for (an HTTP answer).
//!
//! [`PATIENCE`] only guards against a hang: these helpers must never become a speed assertion.

use std::time::{Duration, Instant};

/// How long any wait may last before the test is declared hung. Generous on purpose.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// How often a condition is checked again.
const INTERVAL: Duration = Duration::from_millis(50);

/// Waits until `cond` holds; panics naming `what` after [`PATIENCE`].
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Calls `attempt` until it returns `Ok`; an `Err` says what was seen instead, and the last
/// one is in the panic after [`PATIENCE`].
pub async fn poll<T>(what: &str, mut attempt: impl AsyncFnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(last) => assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {what}; last: {last}"
            ),
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
