//! What a sweep says: its report ([`SweepReport`], one [`FindingView`] per finding touched),
//! its error, and how times are written in messages. Plain data: it must never do I/O.

use std::sync::Arc;

use crate::config::Mode;
use crate::inventory::{Inventory, Key, KeyTally};
use crate::notify::{self, alert::EnforcerAlert};
use crate::policy::finding::Finding;
use crate::policy::plan::Plan;
use crate::revoke;
use crate::state;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("state database")]
    State(#[from] state::StateError),
    #[error("notification outbox")]
    Notify(#[from] notify::NotifyError),
    #[error("policy")]
    Policy(#[from] crate::policy::PolicyError),
    #[error("recording the listing: {0}")]
    Recorder(String),
    #[error("Admin API client for organisation {organization}")]
    Client {
        organization: String,
        #[source]
        source: Box<crate::openai::Error>,
    },
}

/// What became of one key in this sweep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FindingView {
    /// Shared with the sweep's notices about it (`Notice::finding`); changed through
    /// `Arc::make_mut`, which copies it only while a notice still holds the old state.
    pub finding: Arc<Finding>,
    /// What the plan says about it: "warn", "revoke now", "withheld: cap-per-run", …
    pub plan: String,
    /// A planned rotation (`action = "rotate"`): when it starts and the deadline it keeps.
    pub rotation: Option<(i64, i64)>,
}

/// The outcome of a sweep (or a preview).
#[derive(Debug, Default)]
pub struct SweepReport {
    pub run_id: String,
    pub mode: Option<Mode>,
    /// What was listed: every organisation and project with its listing status and a tally of
    /// its keys (a sweep does not keep the keys themselves).
    pub inventory: Inventory<KeyTally>,
    /// Every finding touched this sweep, open or closed.
    pub findings: Vec<FindingView>,
    /// Keys an active exemption covers: (key, reason).
    pub exempted: Vec<(Key, String)>,
    /// Exemptions that matched but have expired: (key, reason, until).
    pub expired_exemptions: Vec<(Key, String, Option<i64>)>,
    pub plan: Plan,
    pub revocations: Vec<revoke::RevocationResult>,
    /// Expiries set, found already set, moved back out, refused or failed.
    pub expiries: Vec<revoke::expiry::ExpiryResult>,
    pub alerts: Vec<EnforcerAlert>,
    pub notices_queued: usize,
    pub delivery: notify::DeliveryReport,
}

impl SweepReport {
    /// Every listing complete and every organisation reachable.
    pub fn complete(&self) -> bool {
        self.inventory.is_complete()
    }

    /// Keys deleted in this sweep.
    pub fn revoked_count(&self) -> usize {
        self.revocations.iter().filter(|r| r.deleted()).count()
    }

    /// Distinct keys among the findings touched (a key violating two policies is two findings
    /// and one key): what a message that says "keys" counts.
    pub fn finding_key_count(&self) -> usize {
        let keys: std::collections::HashSet<(&str, &str, &str)> = self
            .findings
            .iter()
            .map(|v| {
                let id = &v.finding.id;
                id.key_ref()
            })
            .collect();
        keys.len()
    }

    /// Keys whose expiry this sweep set.
    pub fn expiries_set_count(&self) -> usize {
        self.expiries
            .iter()
            .filter(|e| matches!(e.outcome, revoke::expiry::ExpiryOutcome::Set { .. }))
            .count()
    }

    /// Keys whose due revocation or expiry the plan withheld (each action is one key), all
    /// rails together: dry-run, the service-account rule, caps, the kill switch.
    pub fn withheld_key_count(&self) -> usize {
        self.plan.withheld.len()
    }
}

/// `YYYY-MM-DD HH:MM UTC`, for messages.
pub fn fmt_time(ts: i64) -> String {
    use chrono::{Datelike, Timelike};
    match chrono::DateTime::from_timestamp(ts, 0) {
        // Written out rather than through a format string, which chrono parses on every call
        // (a first sweep writes one per finding); `%Y` pads years 0–9999 to four digits.
        Some(t) if (0..=9999).contains(&t.year()) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Some(t) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => ts.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// What `fmt_time` wrote before: chrono's format string.
    fn through_the_format_string(ts: i64) -> String {
        chrono::DateTime::from_timestamp(ts, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|| ts.to_string())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
            )),
            ..ProptestConfig::default()
        })]
        /// The written-out form is chrono's `%Y-%m-%d %H:%M UTC`, at every time chrono knows.
        #[test]
        fn fmt_time_is_the_format_string(ts in proptest::num::i64::ANY) {
            prop_assert_eq!(super::fmt_time(ts), through_the_format_string(ts));
        }

        #[test]
        fn fmt_time_is_the_format_string_in_this_era(ts in -100_000_000_000_i64..300_000_000_000) {
            prop_assert_eq!(super::fmt_time(ts), through_the_format_string(ts));
        }
    }
}
