//! What became of one planned action ([`RevocationResult`], its [`Outcome`]), as the sweep
//! reports, counts and alerts on it. Plain data; it never deletes.

use crate::notify::alert::EnforcerAlert;
use crate::policy::finding::FindingId;

/// What happened to one planned action.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The API confirmed the deletion (or the object was already gone after our DELETE).
    Deleted,
    /// The re-check found a reason not to delete.
    SkippedAfterRecheck { reason: String },
    /// The DELETE failed; the key may still exist.
    Failed { error: String },
    /// Not attempted: shutdown requested before this action.
    Cancelled,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RevocationResult {
    pub organization: String,
    pub project_id: String,
    /// What was deleted: `key key_…` or `service account svc_acct_… (N keys)`.
    pub target: String,
    pub key_ids: Vec<String>,
    #[serde(skip)]
    pub finding_ids: Vec<FindingId>,
    pub outcome: Outcome,
    /// When the re-check kept this key `max_recheck_skips` times in a row.
    #[serde(skip)]
    pub recheck_alert: Option<EnforcerAlert>,
}

impl RevocationResult {
    pub fn deleted(&self) -> bool {
        matches!(self.outcome, Outcome::Deleted)
    }

    pub fn organization(&self) -> &str {
        &self.organization
    }

    pub fn findings(&self) -> &[FindingId] {
        &self.finding_ids
    }

    /// Metric label.
    pub fn outcome_label(&self) -> &'static str {
        match self.outcome {
            Outcome::Deleted => "deleted",
            Outcome::SkippedAfterRecheck { .. } => "skipped",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The enforcer alert a failure deserves.
    pub fn alert(&self) -> Option<EnforcerAlert> {
        match &self.outcome {
            Outcome::Failed { error } => Some(EnforcerAlert::RevocationFailed {
                organization: self.organization.clone(),
                project_id: self.project_id.clone(),
                key_id: self.key_ids.join(","),
                error: error.clone(),
            }),
            Outcome::SkippedAfterRecheck { .. } => self.recheck_alert.clone(),
            _ => None,
        }
    }
}
