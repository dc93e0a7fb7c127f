//! `keysweep rotation confirm NEW_KEY_ID`: a person's answer to "a crash interrupted handing the
//! new key to the sink, a person must confirm" (a `minted` row). Until then the only way out was
//! deleting the new key, which is wrong once the sink has put it in place of the old secret.
//!
//! Confirming moves the row to `delivered` with the old key's expiry owed at now + the policy's
//! overlap: the next enforce sweep sets it (`reconcile::settle_delivered`), under the same rails
//! as any owed expiry. It writes only the state file (the row and an audit record), never to
//! the API, and it never sees a secret.

use crate::config::Config;
use crate::state::audit::{self, AuditKind, AuditRecord};
use crate::state::rotations::{self, RotationUpdate};
use crate::state::{StateError, Store};

/// How long the old key keeps working after a confirmation when its policy is gone.
const DEFAULT_OVERLAP: i64 = 86_400;

/// What a confirmation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    pub organization: String,
    pub project_id: String,
    pub old_key_id: String,
    /// When the old key's expiry is owed (Unix seconds).
    pub old_expires_at: i64,
}

/// Confirms that the sink holds `new_key_id`: `None` when no rotation awaits a confirmation for
/// that key (never minted by keysweep, already settled, or its hand-over not interrupted).
pub fn confirm(
    store: &Store,
    config: &Config,
    new_key_id: &str,
    now: i64,
) -> Result<Option<Confirmed>, StateError> {
    store.tx(|tx| {
        let Some(row) = rotations::awaiting_confirmation(tx, new_key_id)? else {
            return Ok(None);
        };
        let rot = config.rotation(&row.policy);
        let overlap = rot.map_or(DEFAULT_OVERLAP, |r| {
            i64::try_from(r.overlap.as_secs()).unwrap_or(i64::MAX)
        });
        let old_expires_at = now.saturating_add(overlap);
        let sink = rot.map(|r| r.sink.as_str()).unwrap_or_default();
        let mut rec = AuditRecord::new(
            now,
            format!("confirm-{now}"),
            AuditKind::Reconciled,
            config.mode,
            config.hash.clone(),
            format!(
                "a person confirmed that sink {sink:?} holds new key {new_key_id}: the old key \
                 {} is owed an expiry at {}",
                row.old_key_id,
                crate::timefmt::rfc3339(old_expires_at)
            ),
        );
        rec.organization = Some(row.organization.clone());
        rec.project_id = Some(row.project_id.clone());
        rec.key_id = Some(row.old_key_id.clone());
        rec.policy = Some(row.policy.clone());
        rec.response = serde_json::json!({
            "confirmed_by": "person",
            "new_key_id": new_key_id,
            "old_expires_at": old_expires_at,
        });
        audit::append(tx, &rec)?;
        let u = RotationUpdate {
            status: "delivered",
            old_expires_at: Some(old_expires_at),
            detail: Some("a person confirmed the sink holds the new key"),
            ..RotationUpdate::default()
        };
        rotations::update(tx, row.id, &u, now)?;
        Ok(Some(Confirmed {
            organization: row.organization,
            project_id: row.project_id,
            old_key_id: row.old_key_id,
            old_expires_at,
        }))
    })
}
