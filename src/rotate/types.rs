//! What the rotation steps share: their context (store, clients, rails) and what one rotation
//! did ([`RotationResult`], with the alert or announcement it deserves). Plain data; it never
//! sees a secret.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
use crate::notify::alert::EnforcerAlert;
use crate::openai::AdminClient;
use crate::policy::Policies;
use crate::state::Store;
use crate::state::audit::{AuditKind, AuditRecord};
use crate::timefmt::rfc3339;

/// Everything a rotation needs, owned: a rotation's mint → sink → expiry section runs on a task
/// of its own (see `execute.rs`), which a shutdown that drops the sweep does not cut short.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub config: Arc<Config>,
    pub policies: Arc<Policies>,
    pub clients: Vec<AdminClient>,
    pub mode: Mode,
    pub run_id: String,
    pub now: i64,
    /// Cancelled on shutdown (SIGTERM): no rotation starts a new mint once it is.
    pub cancel: CancellationToken,
}

impl Context {
    /// The kill switch is on right now (`revoke::kill_switch_engaged`: fails closed, so a path
    /// that cannot be checked counts as on): no rotation starts, read before each one so a
    /// switch set mid-sweep stops the rest (a hand-over in flight finishes, as at shutdown;
    /// deleting keysweep's own orphans still happens).
    pub(super) fn kill_switch(&self) -> bool {
        crate::revoke::kill_switch_engaged(self.config.safety.kill_switch_file.as_deref())
    }

    pub(super) fn client(&self, org: &str) -> Option<&AdminClient> {
        self.clients.iter().find(|c| c.org_name() == org)
    }

    /// An audit record of this sweep about one key.
    pub(super) fn record(
        &self,
        kind: AuditKind,
        (org, project, key): (&str, &str, &str),
        message: impl Into<String>,
    ) -> AuditRecord {
        let mut r = AuditRecord::new(
            self.now,
            &self.run_id,
            kind,
            self.mode,
            &self.config.hash,
            message,
        );
        r.organization = Some(org.to_string());
        r.project_id = Some(project.to_string());
        r.key_id = Some(key.to_string());
        r
    }
}

/// What one rotation (or its reconciliation) did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationResult {
    pub organization: String,
    pub project_id: String,
    /// The key being replaced.
    pub key_id: String,
    pub outcome: RotationOutcome,
}

/// The outcome of one rotation step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RotationOutcome {
    /// New key minted, handed to the sink and confirmed; the old key expires at `old_expires_at`.
    Rotated {
        new_key_id: String,
        new_redacted_value: String,
        sink: String,
        old_expires_at: i64,
        /// Its `rotations` row, `unannounced` until the sweep marks it done in the transaction
        /// that queues its messages (`state::rotations::mark_announced`): a sweep that fails
        /// or stops before then leaves the announcement to the next one.
        #[serde(skip)]
        row: i64,
    },
    /// Dry-run or `service_account_keys = "notify-only"`: announced, not performed.
    WouldRotate { reason: String },
    /// The kill switch or a cap withheld it.
    Withheld { reason: String },
    /// The re-check found a reason not to rotate (gone, exempted, no longer violating, …).
    /// `streak`: the re-check has kept this key that many sweeps in a row, at least
    /// `max_recheck_skips` (a `RecheckSkips` alert is owed, as for a DELETE).
    Skipped {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        streak: Option<u32>,
    },
    /// No scopes configured and none (or All permissions) in the audit log: keysweep never
    /// mints All permissions unless told `scopes = []`. `logged_all`: the log says the old key
    /// has All permissions.
    NoScopes { logged_all: bool },
    /// The mint failed; any key it may have made was looked for and deleted.
    MintFailed { error: String },
    /// The sink did not confirm; the new key was deleted (`cleaned`) and the old one left alone.
    SinkFailed { error: String, cleaned: bool },
    /// A crash interrupted the hand-over, or the sink gave no answer (`unanswered`: an exec
    /// sink killed at its timeout): the new key stays, a person must confirm.
    AwaitingConfirmation {
        new_key_id: String,
        sink: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unanswered: Option<String>,
    },
    /// A key keysweep minted before a crash, never recorded, was found by its nonce and deleted.
    OrphanDeleted { keys: Vec<String> },
    /// After a finished rotation, the old key's expiry had been moved later (or removed)
    /// outside keysweep: it was set back to `to`, the time the rotation promised (or as soon
    /// as it can be, once that passed).
    OldExpirySetBack { to: i64 },
    /// The sink confirmed but the old key's expiry could not be set (a later sweep retries).
    OldExpiryFailed { error: String },
    /// A finished rotation given up (its new key is gone): the old key is left as it is, and
    /// the next sweep rotates it afresh unless a person exempts it.
    Abandoned { reason: String },
}

impl RotationResult {
    /// Metric and report label.
    pub fn outcome_label(&self) -> &'static str {
        match self.outcome {
            RotationOutcome::Rotated { .. } => "rotated",
            RotationOutcome::WouldRotate { .. } => "would_rotate",
            RotationOutcome::Withheld { .. } => "withheld",
            RotationOutcome::Skipped { .. } => "skipped",
            RotationOutcome::NoScopes { .. } => "no_scopes",
            RotationOutcome::MintFailed { .. } => "mint_failed",
            RotationOutcome::SinkFailed { .. } => "sink_failed",
            RotationOutcome::AwaitingConfirmation { .. } => "awaiting_confirmation",
            RotationOutcome::OrphanDeleted { .. } => "orphan_deleted",
            RotationOutcome::OldExpiryFailed { .. } => "old_expiry_failed",
            RotationOutcome::OldExpirySetBack { .. } => "old_expiry_set_back",
            RotationOutcome::Abandoned { .. } => "abandoned",
        }
    }

    /// The message to the ops channels: the "rotated" announcement, or what needs a person.
    pub fn alert(&self) -> Option<EnforcerAlert> {
        if let RotationOutcome::Skipped {
            reason,
            streak: Some(skips),
        } = &self.outcome
        {
            return Some(EnforcerAlert::RecheckSkips {
                organization: self.organization.clone(),
                project_id: self.project_id.clone(),
                key_id: self.key_id.clone(),
                skips: *skips,
                reason: reason.clone(),
            });
        }
        let message = self.alert_message()?;
        let pages = !matches!(
            self.outcome,
            RotationOutcome::Rotated { .. } | RotationOutcome::OrphanDeleted { .. }
        );
        Some(EnforcerAlert::Rotation {
            organization: self.organization.clone(),
            project_id: self.project_id.clone(),
            key_id: self.key_id.clone(),
            message,
            pages,
        })
    }

    /// What the ops alert of this outcome says, for the outcomes that raise one.
    fn alert_message(&self) -> Option<String> {
        Some(match &self.outcome {
            RotationOutcome::Rotated {
                new_key_id,
                new_redacted_value,
                sink,
                old_expires_at,
                ..
            } => format!(
                "rotated: new key {new_key_id} ({new_redacted_value}) was handed to sink \
                 {sink:?}; the old key stops working at {}",
                rfc3339(*old_expires_at)
            ),
            RotationOutcome::NoScopes { logged_all } => format!(
                "not rotated: the policy configures no scopes and {}; keysweep never mints a key \
                 with All permissions unless the policy says scopes = []",
                if *logged_all {
                    "the audit log says the old key has All permissions"
                } else {
                    "the audit log does not know the old key's scopes"
                }
            ),
            RotationOutcome::MintFailed { error } => {
                format!(
                    "rotation failed: minting the new key failed ({error}); the old key is untouched"
                )
            }
            RotationOutcome::SinkFailed { error, cleaned } => format!(
                "rotation failed: {error}; {}; the old key is untouched",
                if *cleaned {
                    "the new key was deleted again"
                } else {
                    "deleting the new key failed too (a later sweep retries it)"
                }
            ),
            RotationOutcome::AwaitingConfirmation {
                new_key_id,
                sink,
                unanswered,
            } => awaiting_text(new_key_id, sink, unanswered.as_deref()),
            RotationOutcome::OrphanDeleted { keys } => format!(
                "key(s) {} minted by an interrupted rotation and never handed to a sink were \
                 deleted",
                keys.join(", ")
            ),
            RotationOutcome::OldExpirySetBack { to } => format!(
                "the replaced key's expiry was moved later outside keysweep after its rotation; \
                 set back: it stops working at {}",
                rfc3339(*to)
            ),
            RotationOutcome::OldExpiryFailed { error } => format!(
                "the new key is in the sink, but setting the old key's expiry failed ({error}); \
                 a later sweep retries it"
            ),
            RotationOutcome::Abandoned { reason } => format!(
                "rotation abandoned: {reason}; the next sweep rotates the key afresh (a new key \
                 to the sink, then this key's expiry) unless it is exempted"
            ),
            _ => return None,
        })
    }
}

/// The alert of a hand-over whose answer is unknown: what a person must do.
fn awaiting_text(new_key_id: &str, sink: &str, unanswered: Option<&str>) -> String {
    format!(
        "{} handing new key {new_key_id} to sink {sink:?}: a person must confirm whether the \
         sink holds it; the old key is untouched and no further key is minted for this service \
         account until a person answers: `keysweep rotation confirm {new_key_id}` if the sink \
         holds it (the old key then expires after the overlap), else delete key {new_key_id} to \
         have keysweep rotate again",
        match unanswered {
            Some(why) => format!("the sink gave no answer ({why})"),
            None => "a crash interrupted".to_string(),
        }
    )
}
