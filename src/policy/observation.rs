//! What the rules tell the lifecycle: a key's [`Violation`] of a policy, and the [`Observation`]
//! of one (key, policy) pair in one sweep.
//!
//! These two types sit between `rules.rs` (which produces them) and `lifecycle.rs` (which
//! consumes them), so neither of those files needs the other. Like all of `policy/`, this file
//! must never do I/O or read a clock.

use crate::config::Action;
use crate::inventory::Key;

/// One (key, policy) pair that violates: everything the lifecycle needs to open a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The policy's name: with the key it identifies the finding.
    pub policy: String,
    /// What the policy asks for; only `Revoke` can ever lead to a deletion.
    pub action: Action,
    /// Human-readable explanation, e.g. "older than 90d (created 2025-01-02, 412 days ago)".
    pub reason: String,
    /// The moment every condition of the policy started to hold (Unix seconds). For conditions
    /// whose start cannot be known (`owner_lost_access`, `name_pattern`) this is `now`: the
    /// deadline then counts from detection.
    pub violating_since: i64,
    /// Seconds between the first warning and the earliest revocation.
    pub warn_before: i64,
    /// Seconds before the deadline at which the final notice goes out.
    pub final_notice: i64,
}

/// What one sweep saw of a (key, policy) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation<'a> {
    /// The key is listed and currently violates the policy; the snapshot refreshes the finding.
    Violating {
        key: &'a Key,
        violation: &'a Violation,
    },
    /// The key is listed and no longer violates (rotated, used again, renamed, policy changed).
    Compliant,
    /// The key is listed but an active exemption covers it.
    Exempted { reason: &'a str },
    /// The key is absent from a **complete** listing of its project. Callers must never report
    /// `Gone` from an incomplete listing: that would close findings for keys that still exist.
    Gone,
    /// The key has reached its expiry (listed with a past `expires_at`, or absent from a complete
    /// listing once the expiry keysweep set has passed): OpenAI ended it.
    Expired { at: Option<i64> },
}
