//! The rotation's writes besides the mint, each as a durable `intent` audit record → the
//! request → an `outcome` record: deleting a key keysweep minted (after a failed sink, or an
//! orphan of a crash) and giving the old key its expiry once the sink confirmed.
//!
//! The intents carry `inputs.write = "rotate_…"`, which `revoke::reconcile` leaves to this
//! module: an interrupted one is settled from the `rotations` table. Nothing here ever sees a
//! secret, and the old key's expiry is never moved later than it already is.

use std::time::SystemTime;

use serde_json::json;

use crate::inventory::{Expiry, Key};
use crate::openai::{AdminClient, DeleteOutcome};
use crate::sink::KeyMeta;
use crate::state::StateError;
use crate::state::audit::{self, AuditKind};
use crate::state::revocations;
use crate::state::rotations::{self, RotationUpdate};
use crate::timefmt::rfc3339;

use super::types::{Context, RotationOutcome};

/// Wall-clock Unix seconds: the arithmetic of every write is against the real clock, never
/// `--now`.
pub(super) fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Deletes a key keysweep minted (`why` says which): intent, DELETE, outcome. `Ok(true)` when
/// the key is gone afterwards.
pub(super) async fn delete_minted(
    ctx: &Context,
    client: &AdminClient,
    (org, project, key_id): (&str, &str, &str),
    why: &str,
) -> Result<bool, StateError> {
    let mut intent = ctx.record(
        AuditKind::Intent,
        (org, project, key_id),
        format!("deleting key {key_id} that keysweep minted: {why}"),
    );
    intent.inputs = json!({ "write": "rotate_delete_minted", "why": why });
    let entry = audit::append_durable(&ctx.store, &intent)?;
    let (gone, response) = match client.delete_key(project, key_id).await {
        Ok(DeleteOutcome::Deleted { status, .. }) => (true, json!({ "status": status })),
        Ok(DeleteOutcome::AlreadyGone) => (true, json!({ "status": 404, "already_gone": true })),
        Err(e) => (
            false,
            json!({ "status": e.status(), "error": e.to_string() }),
        ),
    };
    let out = ctx
        .record(
            AuditKind::Outcome,
            (org, project, key_id),
            if gone {
                format!("deleted key {key_id} that keysweep minted")
            } else {
                format!("deleting key {key_id} that keysweep minted failed")
            },
        )
        .with_response(response)
        .refers_to(entry.seq);
    audit::append_durable(&ctx.store, &out)?;
    Ok(gone)
}

/// Gives the old key the expiry `to` (unless it already ends by then): intent, update, outcome.
/// It counts against the rolling cap from the rotation's start (again here only when that count
/// has left the last 24 hours). `Ok(Err(message))` when the update failed.
pub(super) async fn expire_old(
    ctx: &Context,
    client: &AdminClient,
    (org, project, key_id): (&str, &str, &str),
    current: Expiry,
    to: i64,
) -> Result<Result<i64, String>, StateError> {
    if let Some(at) = current.at().filter(|_| current.ends_by(to)) {
        return Ok(Ok(at));
    }
    let mut intent = ctx.record(
        AuditKind::Intent,
        (org, project, key_id),
        format!(
            "setting the expiry of replaced key {key_id} to {}",
            rfc3339(to)
        ),
    );
    intent.inputs = json!({
        "write": "rotate_expire_old",
        "expires_at": to,
        "previous_expires_at": current.at(),
    });
    // Its slot of the rolling cap was taken when the rotation began (`execute::begin`): an
    // expiry owed to a key already replaced is never refused for the cap, but is counted again
    // when that slot has left the window (a retry a day later) or never existed.
    let entry = ctx.store.tx(|tx| {
        revocations::ensure_counted(tx, ctx.now, (org, project, key_id), &ctx.run_id)?;
        audit::append(tx, &intent)
    })?;
    let answer = client.set_key_expiry(project, key_id, to).await;
    let response = match &answer {
        Ok(k) => json!({ "expires_at": k.expires_at.at(), "target": to }),
        Err(e) => json!({ "status": e.status(), "error": e.to_string() }),
    };
    let done = answer.is_ok();
    let out = ctx
        .record(
            AuditKind::Outcome,
            (org, project, key_id),
            if done {
                format!("expiry of replaced key {key_id} set to {}", rfc3339(to))
            } else {
                format!("setting the expiry of replaced key {key_id} failed")
            },
        )
        .with_response(response)
        .refers_to(entry.seq);
    audit::append_durable(&ctx.store, &out)?;
    Ok(answer.map(|_| to).map_err(|e| e.to_string()))
}

/// Gives the old key its expiry and marks the rotation performed (`unannounced`).
pub(super) async fn finish(
    ctx: &Context,
    client: &AdminClient,
    old: &Key,
    row: i64,
    to: i64,
    sink: &str,
    meta: &KeyMeta,
) -> Result<RotationOutcome, StateError> {
    let at = (
        old.organization.as_str(),
        old.project_id.as_str(),
        old.id.as_str(),
    );
    match expire_old(ctx, client, at, old.expires_at, to).await? {
        Ok(at) => {
            // Done once announced: the sweep marks it so with the messages it queues.
            set_status(ctx, row, rotations::UNANNOUNCED, Some(at), None)?;
            tracing::warn!(run_id = %ctx.run_id, organization = %old.organization, key_id = %old.id, new_key_id = %meta.key_id, old_expires_at = at, "rotated");
            Ok(RotationOutcome::Rotated {
                new_key_id: meta.key_id.clone(),
                new_redacted_value: meta.redacted_value.clone(),
                sink: sink.to_string(),
                old_expires_at: at,
                row,
            })
        }
        Err(error) => Ok(RotationOutcome::OldExpiryFailed { error }),
    }
}

/// Moves rotation `row` to `status`, with what became known.
pub(super) fn set_status(
    ctx: &Context,
    row: i64,
    status: &str,
    old_expires_at: Option<i64>,
    detail: Option<&str>,
) -> Result<(), StateError> {
    let u = RotationUpdate {
        status,
        old_expires_at,
        detail,
        ..RotationUpdate::default()
    };
    ctx.store
        .tx(|tx| rotations::update(tx, row, &u, wall_now()))
}
