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
    /// unavailable. Both are retried until `max_attempts`; this informs logs.
    pub retryable: bool,
    /// The failure says the channel is unwell, not this message: no connection, a timeout, a
    /// 429, 502, 503 or 504, an SMTP 421, 452 or 454. Delivery then tries the channel once per
    /// call (its other messages wait). False for what may be about this message or its
    /// recipients (a 500, an SMTP 451 to the message, a 4xx to `RCPT`): a second such failure
    /// on the channel in one call trips it all the same.
    pub channel_wide: bool,
    /// The relay refused the message's recipients (every `RCPT`), not the message: never a
    /// sign that the channel is down, however many such failures one delivery sees.
    pub about_recipients: bool,
}

/// The recipients a message did not reach although the receiver took it for the others (SMTP
/// refuses each `RCPT` on its own). Empty for every other channel and for a message everyone
/// got. Each recipient comes with the relay's answer (or why it was not asked), scrubbed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Undelivered {
    /// Refused for good (SMTP 5xx, or an address this relay cannot take): nothing is sent to
    /// them again, and an alert names them.
    pub refused: Vec<(String, String)>,
    /// Refused for now (SMTP 4xx, and 552 "too many recipients"): the message is queued again
    /// for them alone.
    pub deferred: Vec<(String, String)>,
}

impl Undelivered {
    pub fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.deferred.is_empty()
    }

    /// Scrubs every answer with `f`.
    pub fn scrub_with(mut self, f: impl Fn(&str) -> String) -> Undelivered {
        for (_, why) in self.refused.iter_mut().chain(self.deferred.iter_mut()) {
            *why = f(why);
        }
        self
    }
}
