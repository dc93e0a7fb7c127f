//! Reconciliation: settles DELETE and expiry-update intents that a crash or kill left without
//! an outcome.
//!
//! An expiry intent (`inputs.write` = `set_expiry` / `restore_expiry`) is settled the same way:
//! the key is read back, and its expiry matching the intent's target (within the tolerance)
//! means the update went through (`expiry_set: true`; a set expiry counts against the caps).
//! A key that has ended meanwhile (past its expiry, gone, or a GET answering "expired") settles
//! it too (`expiry_set: false, key_ended: true`): nothing is left to check, and the sweep's
//! normal path ends the finding as expired or gone.
//!
//! For each such intent the key is looked up (GET): gone means the delete went through
//! (a `reconciled` record with `deleted: true`, the revocation counted), present means it did
//! not (`deleted: false`). It must never send a DELETE: an interrupted delete is never repeated
//! blindly, and the next sweep decides afresh. What else follows from a delete that went
//! through (the finding closed, the owner told) is the caller's, written in the same
//! transaction as the `reconciled` record through the `on_deleted` hook.

use serde_json::json;

use crate::notify::alert::EnforcerAlert;
use crate::openai::{AdminClient, Error as OpenAiError};
use crate::state::audit::{self, AuditKind, AuditRecord, AuditRow};
use crate::state::{self, StateError};

use super::context::Context;

/// A delete that a crash interrupted and that reconciliation found to have gone through.
#[derive(Debug, Clone, Copy)]
pub struct InterruptedDelete<'a> {
    /// The sequence number of its `intent` record.
    pub intent_seq: i64,
    pub organization: &'a str,
    pub project_id: &'a str,
    pub key_id: &'a str,
    /// The intent's policies, comma-separated (its findings are these policies on this key).
    policies: Option<&'a str>,
    /// For an expiry update: what it aimed at. `None`: a DELETE.
    pub expiry: Option<InterruptedExpiry>,
}

/// An interrupted expiry update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptedExpiry {
    /// The target expiry (Unix seconds).
    pub to: i64,
    /// The key's expiry before the update (`None`: never or unknown).
    pub previous: Option<i64>,
    /// True for a move back out (not counted against the caps), false for a set.
    pub restore: bool,
}

impl InterruptedExpiry {
    fn of(inputs: &serde_json::Value) -> Option<InterruptedExpiry> {
        let restore = match inputs.get("write").and_then(|w| w.as_str()) {
            Some("set_expiry") => false,
            Some("restore_expiry") => true,
            _ => return None,
        };
        Some(InterruptedExpiry {
            to: inputs
                .get("expires_at")
                .and_then(serde_json::Value::as_i64)?,
            previous: inputs
                .get("previous_expires_at")
                .and_then(serde_json::Value::as_i64),
            restore,
        })
    }
}

impl<'a> InterruptedDelete<'a> {
    /// The policies whose findings on this key the delete answered.
    pub fn policies(&self) -> impl Iterator<Item = &'a str> {
        intent_policies(self.policies)
    }

    /// The intent's policies as it names them (comma-separated), for [`intent_policies`].
    pub fn policy_list(&self) -> Option<&'a str> {
        self.policies
    }
}

/// The policies an intent record's `policy` names (comma-separated): its findings on the key.
pub fn intent_policies(policy: Option<&str>) -> impl Iterator<Item = &str> {
    policy.unwrap_or("").split(',').filter(|p| !p.is_empty())
}

/// A delete that went through, as its `outcome` record says ([`confirmed_deletes`]).
#[derive(Debug, Clone, Copy)]
pub struct ConfirmedDelete<'a> {
    /// When the outcome was recorded: a finding detected after it is about another key that
    /// came back under the same id, not this one.
    pub at: i64,
    pub delete: InterruptedDelete<'a>,
}

/// The deletes among `rows` (`state::audit::delete_writes_since`) that went through: the `outcome`
/// without an error of a DELETE's intent (no `write` in its inputs: not an expiry update, not
/// a rotation's), of an organisation at or after `since(organization)`.
///
/// A sweep closes a revoked key's findings and queues its owners' `revoked` notice once all its
/// writes are done, so a kill, a crash or a failed commit in between leaves them open, and the
/// next listing would close them as "key deleted" with nobody told that keysweep revoked the
/// key. The caller closes them from these; the last finished sweep's own deletes are among
/// them, so it must leave findings already closed alone.
pub fn confirmed_deletes(
    rows: &[AuditRow],
    since: impl Fn(&str) -> i64,
) -> Vec<ConfirmedDelete<'_>> {
    let mut intents = std::collections::HashMap::new();
    let mut out = Vec::new();
    for row in rows {
        let r = &row.record;
        match r.kind {
            AuditKind::Intent if r.inputs.get("write").is_none() => {
                intents.insert(row.seq, r);
            }
            AuditKind::Outcome if r.response.get("error").is_none() => {
                let Some((intent_seq, intent)) =
                    (r.refers_to).and_then(|seq| Some((seq, *intents.get(&seq)?)))
                else {
                    continue;
                };
                let (Some(org), Some(project_id), Some(key_id)) =
                    (&intent.organization, &intent.project_id, &intent.key_id)
                else {
                    continue;
                };
                if r.at >= since(org) {
                    out.push(ConfirmedDelete {
                        at: r.at,
                        delete: InterruptedDelete {
                            intent_seq,
                            organization: org,
                            project_id,
                            key_id,
                            policies: intent.policy.as_deref(),
                            expiry: None,
                        },
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Settles every DELETE or expiry intent that has no outcome. For each one that went through,
/// `on_deleted` (which must look at [`InterruptedDelete::expiry`])
/// runs inside the transaction that records it. Returns an alert per intent that could not be
/// checked yet: the operators must know a delete's fate is unknown.
pub async fn reconcile(
    ctx: &Context<'_>,
    mut on_deleted: impl FnMut(
        &rusqlite::Transaction<'_>,
        &InterruptedDelete<'_>,
    ) -> Result<(), StateError>,
) -> Result<Vec<EnforcerAlert>, StateError> {
    let pending = ctx.store.with_conn(audit::unmatched_intents)?;
    let mut unsettled = Vec::new();
    for row in &pending {
        let r = &row.record;
        let (Some(org), Some(project_id), Some(key_id)) =
            (&r.organization, &r.project_id, &r.key_id)
        else {
            continue;
        };
        let Some(client) = ctx.client(org) else {
            continue;
        };
        // A rotation's writes (`rotate_…`) are settled by `rotate` from its own table.
        if (r.inputs.get("write").and_then(|w| w.as_str()))
            .is_some_and(|w| w.starts_with("rotate_"))
        {
            continue;
        }
        let interrupted = InterruptedDelete {
            intent_seq: row.seq,
            organization: org,
            project_id,
            key_id,
            policies: r.policy.as_deref(),
            expiry: InterruptedExpiry::of(&r.inputs),
        };
        match took_effect(ctx, client, &interrupted).await {
            Ok(found) => settle(ctx, row, &interrupted, found, &mut on_deleted)?,
            Err(alert) => unsettled.push(alert),
        }
    }
    Ok(unsettled)
}

/// What the look-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The write took effect (a DELETE: the key is gone; an expiry update: the key has the
    /// target expiry).
    Took,
    /// It did not.
    DidNot,
    /// An expiry update's key has ended (expired, or gone): nothing is left to check, and the
    /// sweep's normal path ends its finding as expired or gone.
    KeyEnded,
}

/// Looks the key up. An answer that settles nothing is the alert it deserves.
async fn took_effect(
    ctx: &Context<'_>,
    client: &AdminClient,
    d: &InterruptedDelete<'_>,
) -> Result<Found, EnforcerAlert> {
    let took = |yes: bool| if yes { Found::Took } else { Found::DidNot };
    match client.retrieve_key(d.project_id, d.key_id).await {
        Ok(found) => Ok(match d.expiry {
            None => took(found.is_none()),
            Some(e) => match found {
                Some(k) if crate::inventory::expiry_matches(k.expires_at, e.to) => Found::Took,
                // Listed but past its expiry (the API may keep expired keys listed), or gone.
                Some(k) if k.expires_at.is_expired(ctx.now) => Found::KeyEnded,
                Some(_) => Found::DidNot,
                None => Found::KeyEnded,
            },
        }),
        Err(OpenAiError::KeyEnded { .. }) if d.expiry.is_some() => Ok(Found::KeyEnded),
        Err(e) => {
            tracing::warn!(run_id = ctx.run_id, organization = %d.organization, key_id = %d.key_id, error = %e, "cannot reconcile an unfinished delete yet");
            Err(EnforcerAlert::RevocationFailed {
                organization: d.organization.to_string(),
                project_id: d.project_id.to_string(),
                key_id: d.key_id.to_string(),
                error: format!("an interrupted delete could not be checked yet: {e}"),
            })
        }
    }
}

/// Records what became of one interrupted delete: the `reconciled` record, and when the key is
/// gone the revocation it counts and whatever `on_deleted` writes, in one transaction.
fn settle(
    ctx: &Context<'_>,
    row: &AuditRow,
    d: &InterruptedDelete<'_>,
    found: Found,
    on_deleted: &mut impl FnMut(
        &rusqlite::Transaction<'_>,
        &InterruptedDelete<'_>,
    ) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let r = &row.record;
    let gone = found == Found::Took;
    let (message, response) = match (d.expiry, gone) {
        (Some(e), _) if found == Found::KeyEnded => (
            "reconciled: the key has ended (expired or gone), the interrupted update no longer \
             matters",
            json!({ "expiry_set": false, "key_ended": true, "expires_at": e.to }),
        ),
        (None, true) => (
            "reconciled: the key is gone, the interrupted delete went through",
            json!({ "deleted": true }),
        ),
        (None, false) => (
            "reconciled: the key still exists, the interrupted delete did not happen",
            json!({ "deleted": false }),
        ),
        (Some(e), true) => (
            "reconciled: the key has the expiry, the interrupted update went through",
            json!({ "expiry_set": true, "expires_at": e.to }),
        ),
        (Some(e), false) => (
            "reconciled: the key does not have the expiry, the interrupted update did not happen",
            json!({ "expiry_set": false, "expires_at": e.to }),
        ),
    };
    let rec = AuditRecord {
        organization: r.organization.clone(),
        project_id: r.project_id.clone(),
        key_id: r.key_id.clone(),
        key_name: r.key_name.clone(),
        redacted_value: r.redacted_value.clone(),
        owner: r.owner.clone(),
        policy: r.policy.clone(),
        response,
        ..ctx.record(AuditKind::Reconciled, message)
    }
    .refers_to(row.seq);
    ctx.store.tx(|tx| {
        audit::append(tx, &rec)?;
        // The intent took a slot of the rolling cap (a restore takes none): kept when the write
        // went through or the key ended meanwhile (perhaps by it), given back when it did not.
        if d.expiry.is_none_or(|e| !e.restore) {
            state::revocations::settle_interrupted(
                tx,
                found != Found::DidNot,
                ctx.now,
                (d.organization, d.project_id, d.key_id),
                (
                    &r.run_id,
                    r.inputs.get("slot").and_then(serde_json::Value::as_i64),
                ),
            )?;
        }
        if gone {
            on_deleted(tx, d)?;
        }
        Ok(())
    })?;
    tracing::warn!(run_id = ctx.run_id, organization = %d.organization, key_id = %d.key_id, deleted = gone, "reconciled an interrupted delete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_delete_answers_every_policy_of_its_intent() {
        let d = |policies| InterruptedDelete {
            intent_seq: 7,
            organization: "acme",
            project_id: "proj_1",
            key_id: "key_1",
            policies,
            expiry: None,
        };
        fn all(d: InterruptedDelete<'_>) -> Vec<&str> {
            d.policies().collect()
        }
        assert_eq!(all(d(Some("max-age,unused"))), vec!["max-age", "unused"]);
        assert_eq!(all(d(Some("max-age"))), vec!["max-age"]);
        assert!(all(d(Some(""))).is_empty());
        assert!(all(d(None)).is_empty());
    }
}
