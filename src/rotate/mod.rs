//! Rotation (`action = "rotate"`): the only code that ever holds a minted secret. For each
//! service-account key whose rotation is due it mints a new key for the same service account,
//! records the new key's id durably, hands the secret to the policy's sink (`crate::sink`) and,
//! only once the sink confirmed, gives the old key an expiry of now + `overlap`.
//!
//! The rails: `[safety] service_account_keys = "notify-only"` and dry-run announce the rotation
//! ("would rotate") and perform nothing; the kill switch withholds it, and the plan's caps and
//! an incomplete listing hold it back before it gets here (a rotation counts like a revocation
//! against every cap); keysweep never mints a key with All permissions unless the
//! policy says `scopes = []`. Unfinished rotations are settled first (`reconcile.rs`): an
//! orphan minted before a crash is deleted (caps and the kill switch never withhold that), a
//! crash during the hand-over waits for a person. This module never composes a notice, never
//! writes a finding, and never puts a secret anywhere but the sink.

mod confirm;
mod execute;
mod in_flight;
mod reconcile;
mod types;
mod writes;

pub use confirm::{Confirmed, confirm};
pub use in_flight::drain_in_flight;
pub use types::{Context, RotationOutcome, RotationResult};

use crate::config::{Mode, ServiceAccountKeys};
use crate::policy::rotation::PlannedRotation;
use crate::state::StateError;
use crate::state::rotations;

/// Settles unfinished rotations, then performs (or announces) every due rotation in `planned`.
pub async fn run(
    ctx: &Context,
    planned: &[PlannedRotation],
) -> Result<Vec<RotationResult>, StateError> {
    let mut out = Vec::new();
    if ctx.mode == Mode::Enforce && !ctx.cancel.is_cancelled() {
        out.extend(reconcile::reconcile(ctx).await?);
    } else if !ctx.cancel.is_cancelled() {
        // A rotation a shutdown left unannounced really happened: its "rotated" messages are
        // owed whatever the mode (announcing writes nothing to the API).
        out.extend(reconcile::announce_owed(ctx)?);
    }
    for p in planned.iter().filter(|p| p.due) {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let Some(rot) = ctx.config.rotation(&p.finding.policy) else {
            continue;
        };
        if busy(ctx, p)? {
            if let Some(outcome) = keep_promised_expiry(ctx, p).await? {
                out.push(RotationResult {
                    organization: p.finding.organization.clone(),
                    project_id: p.finding.project_id.clone(),
                    key_id: p.finding.key_id.clone(),
                    outcome,
                });
            }
            continue;
        }
        let outcome = match withheld(ctx) {
            Some(reason) => reason,
            None => execute::rotate_one(ctx, p, rot).await?,
        };
        out.push(RotationResult {
            organization: p.finding.organization.clone(),
            project_id: p.finding.project_id.clone(),
            key_id: p.finding.key_id.clone(),
            outcome,
        });
    }
    Ok(out)
}

/// The rail that stops a rotation in this sweep, in the order dry-run, service-account rule,
/// kill switch. (The caps and an incomplete listing are the plan's: a rotation they hold back
/// is not `due` here.)
fn withheld(ctx: &Context) -> Option<RotationOutcome> {
    if ctx.mode != Mode::Enforce {
        return Some(RotationOutcome::WouldRotate {
            reason: "dry_run".into(),
        });
    }
    if ctx.config.safety.service_account_keys != ServiceAccountKeys::Enforce {
        return Some(RotationOutcome::WouldRotate {
            reason: "service_account_notify_only".into(),
        });
    }
    ctx.kill_switch().then(|| RotationOutcome::Withheld {
        reason: "kill_switch".into(),
    })
}

/// A finished rotation promised that the old key stops working at its `old_expires_at`. When
/// the listing shows that expiry moved later or removed (in the dashboard, by a person), it is
/// set back after a re-read, as an `expire` finding's is, and an alert says so; before, a
/// rotated key was never looked at again and could live on for good. Unless the new key is
/// gone: then the rotation is abandoned (an alert pages) and the next sweep rotates afresh.
/// Enforce mode only, and never with the kill switch on.
async fn keep_promised_expiry(
    ctx: &Context,
    p: &PlannedRotation,
) -> Result<Option<RotationOutcome>, StateError> {
    // The plan's rails: a set-back counts against the caps and waits for a complete listing
    // (`due` is false when they hold it back), and it is a write to a service account's key.
    if !p.due
        || ctx.mode != Mode::Enforce
        || ctx.config.safety.service_account_keys != ServiceAccountKeys::Enforce
        || ctx.kill_switch()
    {
        return Ok(None);
    }
    let id = &p.finding;
    let row = ctx.store.with_conn(|c| {
        rotations::latest_for_key(c, &id.organization, &id.project_id, &id.key_id)
    })?;
    // A rotation settled within the hour (its expiry just set, by this sweep's reconciliation
    // perhaps) is not judged from a listing taken before that write.
    let Some(row) =
        row.filter(|r| r.status == "done" && ctx.now.saturating_sub(r.updated_at) >= 3600)
    else {
        return Ok(None);
    };
    let Some(promised) = row.old_expires_at else {
        return Ok(None);
    };
    if !p.expires_at.outlives(promised) {
        return Ok(None);
    }
    let Some(client) = ctx.client(&id.organization) else {
        return Ok(None);
    };
    let current = match client.retrieve_key(&id.project_id, &id.key_id).await {
        Ok(Some(k)) if k.expires_at.outlives(promised) => k,
        // Gone, ended, back in place, unknown or unreadable: nothing to set back now.
        _ => return Ok(None),
    };
    // The old key ends only while its successor lives: a person who deleted the new key (it
    // did not work) and gave the old one more time has answered the rotation; setting the
    // expiry back would leave the service with no working key.
    if let Some(new_id) = row.new_key_id.as_deref() {
        match client.retrieve_key(&id.project_id, new_id).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(crate::openai::Error::KeyEnded { .. }) => {
                // The rotation is over, not done: the row lets go of the key, so the policy
                // rotates it afresh (a new key, to the sink, then the old key's expiry) unless
                // a person exempts it. Setting the expiry back now would leave no working key.
                let why = format!(
                    "the new key {new_id} is gone and the old key's expiry was moved later: \
                     the old key is left as it is"
                );
                tracing::warn!(organization = %id.organization, project_id = %id.project_id, key_id = %id.key_id, "rotation abandoned: {why}");
                let new = serde_json::json!({ "new_key_id": new_id });
                reconcile::abandon(ctx, &row, &why, new)?;
                return Ok(Some(RotationOutcome::Abandoned { reason: why }));
            }
            Err(_) => return Ok(None),
        }
    }
    let to = reconcile::owed_target(client, Some(promised));
    // Ending by the soonest time keysweep could set (the promise passed or is minutes away):
    // nothing to set back, and nothing to tell.
    if current.expires_at.ends_by(to) {
        return Ok(None);
    }
    let at = (
        id.organization.as_str(),
        id.project_id.as_str(),
        id.key_id.as_str(),
    );
    Ok(Some(
        match writes::expire_old(ctx, client, at, current.expires_at, to).await? {
            Ok(to) => {
                // Past the promised time, the set-back ends the key later than promised: that is
                // the time to keep from now on.
                if to > promised {
                    let u = rotations::RotationUpdate {
                        status: "done",
                        old_expires_at: Some(to),
                        ..rotations::RotationUpdate::default()
                    };
                    ctx.store
                        .tx(|tx| rotations::update(tx, row.id, &u, writes::wall_now()))?;
                }
                RotationOutcome::OldExpirySetBack { to }
            }
            Err(error) => RotationOutcome::OldExpiryFailed { error },
        },
    ))
}

/// True when the key needs no new rotation (`rotations::in_hand`).
fn busy(ctx: &Context, p: &PlannedRotation) -> Result<bool, StateError> {
    let id = &p.finding;
    ctx.store
        .with_conn(|c| rotations::in_hand(c, &id.organization, &id.project_id, &id.key_id))
}
