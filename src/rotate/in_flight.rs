//! The rotations in flight: each rotation's mint → sink → old key's expiry runs on a task of
//! this tracker (`execute.rs`), so that a shutdown whose grace runs out drops the sweep but never
//! a hand-over; [`drain_in_flight`] waits for them on shutdown. It must never start a rotation
//! itself, and never hold a secret.

/// Rotations whose mint → sink → expiry section is running. Each runs on a task of its own so
/// that a shutdown that drops the sweep never cuts a hand-over short (which would leave the new
/// key with the sink and the old key without its expiry); [`drain_in_flight`] waits for them.
pub(super) static IN_FLIGHT: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Waits for every rotation in flight to finish its hand-over and set the old key's expiry
/// (bounded by the sink's timeout and the requests' timeouts). Called once on shutdown, after the
/// scheduler stopped; no rotation starts a new mint once the sweep's token is cancelled.
pub async fn drain_in_flight() {
    IN_FLIGHT.close();
    if !IN_FLIGHT.is_empty() {
        tracing::info!(
            rotations = IN_FLIGHT.len(),
            "waiting for the rotations in flight to finish their hand-over"
        );
    }
    IN_FLIGHT.wait().await;
}
