//! Settling rotations a crash (or a failure) left unfinished, at the start of every enforce
//! sweep, from the `rotations` table:
//!
//! - `minting` (no key id recorded): the project's keys are listed and a key of the same service
//!   account whose name carries the row's random nonce, created within the intent's time window,
//!   is keysweep's orphan — never found by a name alone. It is deleted (not withheld by caps or
//!   the kill switch: it undoes keysweep's own write) and the rotation starts afresh;
//! - `minted` (a crash while the sink ran): the new key stays, someone may have it; while it
//!   exists an alert asks a person to confirm and no further key is minted for the account;
//! - `delivered`: the old key's owed expiry is set; `cleanup_pending`: the new key is deleted;
//! - `unannounced` (rotated after a shutdown dropped its sweep): announced now, then `done`.

use serde_json::json;

use crate::inventory::{Key, OwnerType, ProjectRef};
use crate::openai::{AdminClient, Error as OpenAiError};
use crate::policy::rotation::minted_with;
use crate::sink::KeyMeta;
use crate::state::StateError;
use crate::state::audit::{self, AuditKind};
use crate::state::rotations::{self, RotationRow, RotationUpdate};

use super::types::{Context, RotationOutcome, RotationResult};
use super::writes::{delete_minted, wall_now};

/// How far around the intent's time (keysweep's clock) a key counts as minted by it (its
/// `created_at` is the server's clock, which may differ by minutes or more, and the request
/// takes its time): a day either way. The random nonce in the name and the service account
/// are what identify the key; the window only keeps a nonce from matching a key of another era.
const WINDOW_BEFORE: i64 = 86_400;
const WINDOW_AFTER: i64 = 86_400;

/// Which search for a failed mint's key this is (see [`settle_minting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Search {
    /// Right after the mint failed, in the same sweep.
    Early,
    /// Right after the API refused the mint: it made nothing, so nothing found is final.
    Refused,
    /// A later sweep's reconciliation: final once the mint is [`ORPHAN_SEARCH_MIN_AGE`] old.
    Final,
}

/// How old (wall clock) a lost mint must be before a search that finds no key gives it up: a
/// restart right after a crash, or the daemon's retry, comes back within seconds, when a key
/// the server made late or a listing that lags may not show yet; giving up then would let the
/// same sweep mint a second key beside a live one nobody holds.
pub(super) const ORPHAN_SEARCH_MIN_AGE: i64 = 900;

/// How far ahead an owed old-key expiry whose promised time has passed is set: enough for a
/// clock that differs from the API's by minutes, and no longer than it takes.
const LATE_EXPIRY_MARGIN: i64 = 900;

/// Where an old key's owed expiry is set: the time its rotation `promised`, or, once that has
/// passed (keysweep down, the kill switch on, an API outage longer than the overlap), as soon
/// as it can be on the API's clock. A target in the past is never sent (`ExpiryPassed`), so
/// the old key would live on.
pub(super) fn owed_target(client: &AdminClient, promised: Option<i64>) -> i64 {
    let soonest = client.api_now_secs().saturating_add(LATE_EXPIRY_MARGIN);
    promised.map_or(soonest, |t| t.max(soonest))
}

/// Settles every unfinished rotation of the organisations this sweep covers.
pub(super) async fn reconcile(ctx: &Context) -> Result<Vec<RotationResult>, StateError> {
    let mut out = Vec::new();
    // Read once for every organisation: it walks the whole log's intents and outcomes.
    let interrupted = ctx.store.with_conn(audit::unmatched_intents)?;
    for client in &ctx.clients {
        answer_interrupted(ctx, client, &interrupted).await?;
        let rows = ctx
            .store
            .with_conn(|c| rotations::unsettled(c, client.org_name()))?;
        for row in rows {
            let outcome = match row.status.as_str() {
                "minting" => settle_minting(ctx, client, row.id, Search::Final).await?,
                "minted" => settle_minted(ctx, client, &row).await?,
                // Setting an expiry waits while the kill switch is on; deleting keysweep's own
                // keys does not.
                "delivered" if !ctx.kill_switch() => settle_delivered(ctx, client, &row).await?,
                "cleanup_pending" => settle_cleanup(ctx, client, &row).await?,
                rotations::UNANNOUNCED => announce(ctx, &row)?,
                _ => None,
            };
            out.extend(outcome.map(|outcome| RotationResult {
                organization: row.organization.clone(),
                project_id: row.project_id.clone(),
                key_id: row.old_key_id.clone(),
                outcome,
            }));
        }
    }
    Ok(out)
}

/// Answers every DELETE of a minted key and every old-key expiry that a crash left with an
/// intent and no outcome, from a read of the key, before the rows are settled: otherwise the
/// audit log never says whether keysweep's own write happened (a minted key then reads as
/// "gone", as if a person had removed it). The mint's own intent is answered by its row.
/// A read that fails leaves the intent for a later sweep.
async fn answer_interrupted(
    ctx: &Context,
    client: &AdminClient,
    pending: &[audit::AuditRow],
) -> Result<(), StateError> {
    for row in pending {
        let r = &row.record;
        let (Some(org), Some(project), Some(key_id)) = (&r.organization, &r.project_id, &r.key_id)
        else {
            continue;
        };
        if org != client.org_name() {
            continue;
        }
        let write = r.inputs.get("write").and_then(|w| w.as_str()).unwrap_or("");
        let target = r
            .inputs
            .get("expires_at")
            .and_then(serde_json::Value::as_i64);
        let read = match write {
            "rotate_delete_minted" | "rotate_expire_old" => {
                client.retrieve_key(project, key_id).await
            }
            _ => continue,
        };
        let (took, what) = match (write, read, target) {
            (_, Err(e), _) if !e.is_key_ended() => continue,
            ("rotate_delete_minted", Ok(None) | Err(_), _) => (true, "the key is gone"),
            ("rotate_delete_minted", Ok(Some(_)), _) => (false, "the key still exists"),
            (_, Ok(None) | Err(_), _) => (true, "the key has ended"),
            // The read does not say: a later sweep asks again.
            (_, Ok(Some(k)), _) if k.expires_at.is_unknown() => continue,
            (_, Ok(Some(k)), Some(to)) if k.expires_at.ends_by(to) => {
                (true, "the key ends by the target")
            }
            _ => (false, "the key does not end by the target"),
        };
        let mut rec = ctx
            .record(
                AuditKind::Reconciled,
                (org, project, key_id),
                format!("interrupted {write} settled by a read: {what}"),
            )
            .with_response(json!({ "took_effect": took }))
            .refers_to(row.seq);
        rec.policy.clone_from(&r.policy);
        audit::append_durable(&ctx.store, &rec)?;
    }
    Ok(())
}

/// Announces every rotation a shutdown left `unannounced` (the only settling that writes
/// nothing to the API, so dry-run does it too).
pub(super) fn announce_owed(ctx: &Context) -> Result<Vec<RotationResult>, StateError> {
    let mut out = Vec::new();
    for client in &ctx.clients {
        let rows = ctx
            .store
            .with_conn(|c| rotations::unsettled(c, client.org_name()))?;
        for row in rows.iter().filter(|r| r.status == rotations::UNANNOUNCED) {
            out.extend(announce(ctx, row)?.map(|outcome| RotationResult {
                organization: row.organization.clone(),
                project_id: row.project_id.clone(),
                key_id: row.old_key_id.clone(),
                outcome,
            }));
        }
    }
    Ok(out)
}

/// A `minting` row: finds and deletes the key(s) minted with its nonce, then abandons the row.
/// `None` when nothing had been minted, or the listing failed (the row stays for later).
///
/// `Search::Early` is the look right after a mint failed: a key the server makes late, or a
/// listing that lags, is not seen yet, and abandoning then would let the next sweep mint a
/// second key beside a live one nobody holds. So only a later sweep's search (`Search::Final`),
/// once the mint is [`ORPHAN_SEARCH_MIN_AGE`] old, abandons a row whose key it cannot find (or
/// the same sweep, when the API refused the mint); until then the row keeps the account's
/// rotation in hand.
pub(super) async fn settle_minting(
    ctx: &Context,
    client: &AdminClient,
    id: i64,
    search: Search,
) -> Result<Option<RotationOutcome>, StateError> {
    let Some(row) = ctx.store.with_conn(|c| rotations::get(c, id))? else {
        return Ok(None);
    };
    let project = ProjectRef {
        organization: row.organization.clone(),
        id: row.project_id.clone(),
        name: None,
        archived: false,
    };
    let Ok(keys) = client.list_project_keys(&project).await else {
        return Ok(None);
    };
    let orphans: Vec<Key> = keys.into_iter().filter(|k| is_orphan(k, &row)).collect();
    let mut deleted = Vec::new();
    for k in &orphans {
        let at = (
            row.organization.as_str(),
            row.project_id.as_str(),
            k.id.as_str(),
        );
        if delete_minted(ctx, client, at, "minted by an interrupted rotation").await? {
            deleted.push(k.id.clone());
        }
    }
    let give_up = match search {
        Search::Early => false,
        Search::Refused => true,
        // A wall clock stepped back since the mint makes the age negative: beyond a minute of
        // slack that is no young mint, and waiting for the clock to catch up could hold the
        // account's rotation for as long as the step was.
        Search::Final => {
            let age = wall_now().saturating_sub(row.started_at);
            !(-60..ORPHAN_SEARCH_MIN_AGE).contains(&age)
        }
    };
    if deleted.len() < orphans.len() || (orphans.is_empty() && !give_up) {
        return Ok(None);
    }
    let detail = format!("interrupted before the new key was recorded; deleted: {deleted:?}");
    abandon(ctx, &row, &detail, json!({ "orphans_deleted": deleted }))?;
    Ok((!deleted.is_empty()).then_some(RotationOutcome::OrphanDeleted { keys: deleted }))
}

/// A key of the row's service account, named with its nonce, created in its time window.
fn is_orphan(k: &Key, row: &RotationRow) -> bool {
    k.owner.kind == OwnerType::ServiceAccount
        && k.owner.id.as_deref() == Some(row.service_account_id.as_str())
        && minted_with(&k.name, &row.nonce)
        && (row.started_at - WINDOW_BEFORE..=row.started_at + WINDOW_AFTER).contains(&k.created_at)
}

/// Closes a row as abandoned, with a `reconciled` record answering its mint intent.
pub(super) fn abandon(
    ctx: &Context,
    row: &RotationRow,
    detail: &str,
    response: serde_json::Value,
) -> Result<(), StateError> {
    let at = (
        row.organization.as_str(),
        row.project_id.as_str(),
        row.old_key_id.as_str(),
    );
    let mut rec = ctx
        .record(
            AuditKind::Reconciled,
            at,
            format!("rotation abandoned: {detail}"),
        )
        .with_response(response);
    rec.policy = Some(row.policy.clone());
    rec.refers_to = row.intent_seq;
    let u = RotationUpdate {
        status: "abandoned",
        detail: Some(detail),
        ..RotationUpdate::default()
    };
    ctx.store.tx(|tx| {
        audit::append(tx, &rec)?;
        rotations::update(tx, row.id, &u, wall_now())
    })
}

/// A `minted` row left by a crash: the new key gone means a person removed it (rotate afresh);
/// present, a person must confirm.
async fn settle_minted(
    ctx: &Context,
    client: &AdminClient,
    row: &RotationRow,
) -> Result<Option<RotationOutcome>, StateError> {
    let new_id = row.new_key_id.clone().unwrap_or_default();
    match client.retrieve_key(&row.project_id, &new_id).await {
        Ok(None) | Err(OpenAiError::KeyEnded { .. }) => {
            abandon(
                ctx,
                row,
                "the new key is gone",
                json!({ "new_key_id": new_id }),
            )?;
            Ok(None)
        }
        Ok(Some(_)) => Ok(Some(RotationOutcome::AwaitingConfirmation {
            new_key_id: new_id,
            unanswered: row.detail.clone(),
            sink: ctx
                .config
                .rotation(&row.policy)
                .map(|r| r.sink.clone())
                .unwrap_or_default(),
        })),
        Err(_) => Ok(None),
    }
}

/// A `delivered` row: the sink has the new key; the old key's expiry is still owed.
async fn settle_delivered(
    ctx: &Context,
    client: &AdminClient,
    row: &RotationRow,
) -> Result<Option<RotationOutcome>, StateError> {
    let mut old = match client.retrieve_key(&row.project_id, &row.old_key_id).await {
        Ok(Some(k)) => k,
        // The old key ended on its own meanwhile: nothing is owed any more.
        Ok(None) | Err(OpenAiError::KeyEnded { .. }) => {
            super::writes::set_status(ctx, row.id, "done", None, Some("the old key ended"))?;
            return Ok(None);
        }
        Err(_) => return Ok(None),
    };
    old.organization.clone_from(&row.organization);
    // The old key ends only while its successor lives: a new key deleted since (a person's
    // other answer to an interrupted hand-over, given after `rotation confirm`) would leave the
    // service with no working key.
    if let Some(new_id) = row.new_key_id.as_deref() {
        match client.retrieve_key(&row.project_id, new_id).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(OpenAiError::KeyEnded { .. }) => {
                let why = "the new key is gone before the old key's expiry was set; the old key \
                           is left as it is";
                abandon(ctx, row, why, json!({ "new_key_id": new_id }))?;
                return Ok(None);
            }
            Err(_) => return Ok(None),
        }
    }
    let meta = KeyMeta {
        organization: row.organization.clone(),
        project_id: row.project_id.clone(),
        service_account_id: row.service_account_id.clone(),
        key_id: row.new_key_id.clone().unwrap_or_default(),
        key_name: String::new(),
        redacted_value: row.new_redacted_value.clone().unwrap_or_default(),
        old_key_id: row.old_key_id.clone(),
        expires_at: None,
    };
    let to = owed_target(client, row.old_expires_at);
    let sink = ctx
        .config
        .rotation(&row.policy)
        .map(|r| r.sink.clone())
        .unwrap_or_default();
    super::writes::finish(ctx, client, &old, row.id, to, &sink, &meta)
        .await
        .map(Some)
}

/// A `cleanup_pending` row: the sink failed and deleting the new key failed too; try again.
async fn settle_cleanup(
    ctx: &Context,
    client: &AdminClient,
    row: &RotationRow,
) -> Result<Option<RotationOutcome>, StateError> {
    let new_id = row.new_key_id.clone().unwrap_or_default();
    let at = (
        row.organization.as_str(),
        row.project_id.as_str(),
        new_id.as_str(),
    );
    if delete_minted(ctx, client, at, "its sink did not confirm").await? {
        let u = RotationUpdate {
            status: "sink_failed",
            ..RotationUpdate::default()
        };
        ctx.store
            .tx(|tx| rotations::update(tx, row.id, &u, wall_now()))?;
    }
    Ok(None)
}

/// An `unannounced` row: the rotation was performed but its sweep did not queue its messages
/// (a shutdown dropped it, or it failed first); this sweep sends its "rotated" messages and
/// marks the row done with them.
fn announce(ctx: &Context, row: &RotationRow) -> Result<Option<RotationOutcome>, StateError> {
    Ok(Some(RotationOutcome::Rotated {
        row: row.id,
        new_key_id: row.new_key_id.clone().unwrap_or_default(),
        new_redacted_value: row.new_redacted_value.clone().unwrap_or_default(),
        sink: ctx
            .config
            .rotation(&row.policy)
            .map(|r| r.sink.clone())
            .unwrap_or_default(),
        old_expires_at: row.old_expires_at.unwrap_or_default(),
    }))
}
