//! Rotation (`action = "rotate"`): the only code that ever holds a minted secret. For each
//! service-account key whose rotation is due it mints a new key for the same service account,
//! records the new key's id durably, hands the secret to the policy's sink (`crate::sink`) and,
//! only once the sink confirmed, gives the old key an expiry of now + `overlap`.
//!
//! The rails: `[safety] service_account_keys = "notify-only"` and dry-run announce the rotation
//! ("would rotate") and perform nothing; the kill switch and the caps withhold it (a rotation
//! counts like an expiry set); keysweep never mints a key with All permissions unless the
//! policy says `scopes = []`. Unfinished rotations are settled first (`reconcile.rs`): an
//! orphan minted before a crash is deleted (caps and the kill switch never withhold that), a
//! crash during the hand-over waits for a person. This module never composes a notice, never
//! writes a finding, and never puts a secret anywhere but the sink.

mod execute;
mod reconcile;
mod types;
mod writes;

pub use types::{Context, RotationOutcome, RotationResult};

/// Rotations whose mint → sink → expiry section is running. Each runs on a task of its own so
/// that a shutdown that drops the sweep never cuts a hand-over short (which would leave the new
/// key with the sink and the old key without its expiry); [`drain_in_flight`] waits for them.
static IN_FLIGHT: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Waits for every rotation in flight to finish its hand-over and set the old key's expiry
/// (bounded by the sink's timeout and the requests' timeouts). Called once on shutdown, after the
/// scheduler stopped; no rotation starts a new mint once the sweep's token is cancelled.
pub async fn drain_in_flight() {
    IN_FLIGHT.close();
    if !IN_FLIGHT.is_empty() {
        tracing::info!(
            rotations = IN_FLIGHT.len(),
            "waiting for the rotations in flight to finish their hand-over"
        );
    }
    IN_FLIGHT.wait().await;
}

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
    }
    let mut left = ctx.cap_left;
    for p in planned.iter().filter(|p| p.due) {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let Some(rot) = ctx.config.rotation(&p.finding.policy) else {
            continue;
        };
        if busy(ctx, p)? {
            continue;
        }
        let outcome = if let Some(reason) = withheld(ctx, left) {
            reason
        } else {
            let o = execute::rotate_one(ctx, p, rot).await?;
            if matches!(o, RotationOutcome::Rotated { .. }) {
                left = left.saturating_sub(1);
            }
            o
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
/// kill switch, caps.
fn withheld(ctx: &Context, cap_left: u32) -> Option<RotationOutcome> {
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
    if ctx.kill_switch {
        return Some(RotationOutcome::Withheld {
            reason: "kill_switch".into(),
        });
    }
    (cap_left == 0).then(|| RotationOutcome::Withheld {
        reason: "cap".into(),
    })
}

/// True when the key needs no new rotation: it was rotated already (its old key now expires),
/// or a rotation of it is unfinished (`reconcile` settles it first).
fn busy(ctx: &Context, p: &PlannedRotation) -> Result<bool, StateError> {
    let id = &p.finding;
    let latest = ctx.store.with_conn(|c| {
        rotations::latest_for_key(c, &id.organization, &id.project_id, &id.key_id)
    })?;
    let Some(latest) = latest else {
        return Ok(false);
    };
    Ok(latest.status == "done" || rotations::UNSETTLED.contains(&latest.status.as_str()))
}
