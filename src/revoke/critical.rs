//! The critical section of a revocation: durable intent record → DELETE → outcome record.
//!
//! It runs on its own task, owned, so that neither a shutdown that drops the sweep nor a panic
//! elsewhere can separate an intent from its outcome; [`drain_in_flight`] waits for every such
//! task on shutdown. It must never send a DELETE before the intent is committed, never retry a
//! DELETE, and never return before the outcome is committed.

use serde_json::json;

use crate::openai::{AdminClient, DeleteOutcome};
use crate::state::audit::{self, AuditRecord};
use crate::state::revocations::{self, Reservation};
use crate::state::{self, Store};

use super::outcome::Outcome;

/// Deletes in flight. They run on their own tasks so that a sweep dropped at the end of the
/// shutdown grace never leaves an intent without its outcome; `drain_in_flight` waits for them.
pub(super) static IN_FLIGHT: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Waits for every DELETE in flight to write its outcome record (bounded by the request
/// timeout). Called once on shutdown, after the scheduler stopped.
pub async fn drain_in_flight() {
    IN_FLIGHT.close();
    IN_FLIGHT.wait().await;
}

/// Everything the intent → DELETE → outcome section needs, owned.
pub(super) struct CriticalDelete {
    pub store: Store,
    pub client: AdminClient,
    pub intent: AuditRecord,
    pub outcome_base: AuditRecord,
    pub key_id: String,
    pub organization: String,
    pub project_id: String,
    pub key_ids: Vec<String>,
    pub target: String,
    pub run_id: String,
    pub now: i64,
    /// `[safety] max_revocations_per_day`: a slot is taken with the intent (`state::revocations`).
    pub cap: u32,
}

impl CriticalDelete {
    pub(super) async fn run(self) -> Result<Outcome, state::StateError> {
        let key = (
            self.organization.as_str(),
            self.project_id.as_str(),
            self.key_id.as_str(),
        );
        let intended = self.store.tx(|tx| {
            let withheld = (&self.outcome_base, "not deleted");
            intend_with_slot(tx, &self.intent, withheld, (self.now, self.cap, key))
        })?;
        let (entry, slot) = match intended {
            Ok(taken) => taken,
            Err(reason) => {
                tracing::info!(run_id = %self.run_id, organization = %self.organization, key_id = %self.key_id, %reason, "revocation withheld");
                return Ok(Outcome::SkippedAfterRecheck { reason });
            }
        };
        let answer = self.client.delete_key(&self.project_id, &self.key_id).await;
        // Only a refusal certainly deleted nothing; any other failure (a timeout, a lost
        // connection, a 5xx, an unreadable answer) may have, and keeps its slot.
        let refused = matches!(&answer, Err(e) if e.nothing_applied());
        let (outcome, response) = match answer {
            Ok(DeleteOutcome::Deleted { status, body }) => {
                (Outcome::Deleted, json!({ "status": status, "body": body }))
            }
            Ok(DeleteOutcome::AlreadyGone) => (
                Outcome::Deleted,
                json!({ "status": 404, "already_gone": true }),
            ),
            Err(e) => (
                Outcome::Failed {
                    error: e.to_string(),
                },
                json!({ "status": e.status(), "error": e.to_string() }),
            ),
        };
        let deleted = matches!(outcome, Outcome::Deleted);
        let out = AuditRecord {
            message: if deleted {
                format!("deleted {}", self.target)
            } else {
                format!("delete of {} failed", self.target)
            },
            policy: self.intent.policy.clone(),
            ..self.outcome_base.clone()
        }
        .with_response(response)
        .refers_to(entry.seq);
        self.record_outcome(&out, !refused, slot)?;
        self.log(&outcome);
        Ok(outcome)
    }

    /// The outcome record, in one transaction with giving back the slot of a delete the API
    /// refused (one that went through, or may have, keeps the slot its intent took).
    fn record_outcome(
        &self,
        out: &AuditRecord,
        keep: bool,
        slot: Reservation,
    ) -> Result<(), state::StateError> {
        self.store.tx(|tx| {
            audit::append(tx, out)?;
            if !keep {
                revocations::release(tx, slot)?;
            }
            Ok(())
        })
    }

    fn log(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Deleted => {
                tracing::warn!(run_id = %self.run_id, organization = %self.organization, project_id = %self.project_id, key_id = %self.key_id, key_ids = %self.key_ids.join(","), subject = %self.target, "revoked")
            }
            Outcome::Failed { error } => {
                tracing::error!(run_id = %self.run_id, organization = %self.organization, project_id = %self.project_id, key_id = %self.key_id, key_ids = %self.key_ids.join(","), subject = %self.target, %error, "revocation failed")
            }
            _ => {}
        }
    }
}

/// Writes `intent` with a slot of the rolling-day cap (`cap`, counted at `now`) for `key`, and
/// names the slot in it so reconciliation settles that very one; the caller's transaction makes
/// the count and the intent one step. `Ok(Err(reason))` when other sweeps took the last slot
/// since this one planned: then only a `skipped` record is written, from `base`, whose message
/// starts with `what` ("not deleted").
pub(super) fn intend_with_slot(
    tx: &rusqlite::Transaction<'_>,
    intent: &AuditRecord,
    (base, what): (&AuditRecord, &str),
    (now, cap, key): (i64, u32, (&str, &str, &str)),
) -> Result<Result<(audit::AuditEntry, Reservation), String>, state::StateError> {
    let Some(slot) = revocations::reserve(tx, now, cap, key, &intent.run_id)? else {
        let reason = super::context::cap_reached_reason(cap);
        let withheld = AuditRecord {
            kind: audit::AuditKind::Skipped,
            message: format!("{what}: {reason}"),
            policy: intent.policy.clone(),
            ..base.clone()
        }
        .with_response(json!({ "withheld": reason }));
        audit::append(tx, &withheld)?;
        return Ok(Err(reason));
    };
    let mut intent = intent.clone();
    intent.inputs["slot"] = json!(slot.id());
    Ok(Ok((audit::append(tx, &intent)?, slot)))
}
