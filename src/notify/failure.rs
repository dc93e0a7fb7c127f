//! The outcome of a failed send, shared by every sender and by delivery.
//!
//! It lives apart from `deliver.rs` so that the senders (`email`, `slack`, `pagerduty`,
//! `webhook`, `http`) and delivery depend on it, not on each other. Its text must never hold a
//! secret: every sender scrubs it before returning.

/// A failed send. `error` is already scrubbed of the channel's secrets and URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    pub error: String,
    /// False when the receiver rejected the message (4xx, SMTP 5xx) rather than being
    /// unavailable. Both are retried until `max_attempts`; this only informs logs.
    pub retryable: bool,
}
