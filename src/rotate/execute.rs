//! One rotation: re-read the old key, durable intent + `rotations` row (with a random nonce in
//! the new key's name), mint, durable outcome with the new key's id, hand the secret to the
//! sink, and only once the sink confirmed give the old key its expiry (now + overlap).
//!
//! The minted secret lives in a `SecretString` here and in the sink, nowhere else: never in an
//! audit record, the state, a log line, a message or an error. A sink that fails gets the new
//! key deleted again; the old key is never touched before the sink confirmed.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use tracing::Instrument as _;

use crate::config::{RotateConfig, SinkKind};
use crate::inventory::{Key, OwnerType};
use crate::openai::{AdminClient, Error as OpenAiError, MintRequest};
use crate::policy::rotation::{
    NoScopes, PlannedRotation, ScopesFrom, new_key_name, new_key_scopes,
};
use crate::revoke::acted_on_since;
use crate::sink::{self, KeyMeta};
use crate::state::StateError;
use crate::state::audit::{self, AuditKind};
use crate::state::revocations::{self, Reservation};
use crate::state::rotations::{self, NewRotation, RotationUpdate};

use super::in_flight::IN_FLIGHT;
use super::types::{Context, RotationOutcome};
use super::writes::{delete_minted, finish, set_status, wall_now};

/// The old key as re-read, or why it is not rotated.
async fn recheck(ctx: &Context, client: &AdminClient, p: &PlannedRotation) -> Result<Key, String> {
    let id = &p.finding;
    let mut fresh = match client.retrieve_key(&id.project_id, &id.key_id).await {
        Ok(Some(k)) => k,
        Ok(None) => return Err("the key is already gone".into()),
        Err(OpenAiError::KeyEnded { .. }) => return Err("the key has already ended".into()),
        Err(e) => return Err(format!("re-read failed, not rotating: {e}")),
    };
    fresh.organization.clone_from(&id.organization);
    if fresh.project_name.is_none() {
        fresh.project_name.clone_from(&p.project_name);
    }
    if fresh.owner.kind != OwnerType::ServiceAccount || fresh.owner.id.is_none() {
        return Err("the key is not a service account's".into());
    }
    let about_use = (p.policies.iter()).any(|policy| ctx.policies.depends_on_use(policy));
    if let Some(reason) = acted_on_since(&p.key_name, p.last_used_at, &fresh, about_use) {
        return Err(reason);
    }
    let eval = ctx.policies.evaluate(&fresh, ctx.now);
    if let Some(hit) = &eval.exemption {
        return Err(format!("the key is now exempted: {}", hit.reason));
    }
    if eval.violation(&id.policy).is_none() {
        return Err(format!("the key no longer violates {}", id.policy));
    }
    Ok(fresh)
}

/// Rotates one key whose rotation is due and allowed (the caller applied the rails).
pub(super) async fn rotate_one(
    ctx: &Context,
    p: &PlannedRotation,
    rot: &RotateConfig,
) -> Result<RotationOutcome, StateError> {
    let Some(client) = ctx.client(&p.finding.organization) else {
        return Ok(RotationOutcome::Skipped {
            reason: "no client for the organisation".into(),
            streak: None,
        });
    };
    let scopes = match new_key_scopes(p.logged_scopes.as_deref(), rot.scopes.as_deref()) {
        Ok(s) => s,
        Err(why) => {
            return Ok(RotationOutcome::NoScopes {
                logged_all: why == NoScopes::LoggedAll,
            });
        }
    };
    let old = match recheck(ctx, client, p).await {
        Ok(k) => k,
        Err(reason) => return skipped(ctx, p, reason),
    };
    let sa = old.owner.id.clone().unwrap_or_default();
    if let Some(waiting) = awaiting_confirmation(ctx, &old, &sa)? {
        return skipped(
            ctx,
            p,
            format!("key {waiting} of the same service account awaits a person's confirmation"),
        );
    }
    if let Some(holder) = file_holds_another(ctx, client, &old, &sa, rot).await? {
        return skipped(
            ctx,
            p,
            format!(
                "sink {:?} writes one file per service account, and it holds key {holder}, \
                 the new key of another of this account's keys: rotating this one would \
                 overwrite it (give the key a service account of its own, or use an exec sink)",
                rot.sink
            ),
        );
    }
    // Shutdown came during the re-check: no new mint starts.
    if ctx.cancel.is_cancelled() {
        return Ok(RotationOutcome::Withheld {
            reason: "shutdown".into(),
        });
    }
    // Read again at the last moment, as before a DELETE: a kill switch put in place during
    // the re-check's round-trips stops the mint.
    if ctx.kill_switch() {
        return Ok(RotationOutcome::Withheld {
            reason: "kill_switch".into(),
        });
    }
    let section = Section {
        ctx: ctx.clone(),
        client: client.clone(),
        old,
        sa,
        rot: rot.clone(),
        scopes,
    };
    section.spawn().await
}

/// The rotation's mint → sink → old key's expiry, owned, so it runs on a task of its own: a
/// shutdown whose grace runs out drops the sweep, never this (`drain_in_flight` waits for it,
/// bounded by the sink's timeout and the requests' timeouts).
struct Section {
    ctx: Context,
    client: AdminClient,
    old: Key,
    sa: String,
    rot: RotateConfig,
    scopes: (Vec<String>, ScopesFrom),
}

impl Section {
    /// Runs the section on a task of [`IN_FLIGHT`] and waits for it. A performed rotation's row
    /// is left `unannounced` (`writes::finish`) until the sweep queues its messages; when the
    /// sweep is gone by the time it ends (dropped at the end of the shutdown grace), the next
    /// sweep announces it.
    async fn spawn(self) -> Result<RotationOutcome, StateError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ctx = self.ctx.clone();
        let task = async move {
            let result = self.run().await;
            if let Err(Ok(RotationOutcome::Rotated { .. })) = tx.send(result) {
                tracing::warn!(run_id = %ctx.run_id, "rotated after its sweep was dropped by shutdown; the next sweep announces it");
            }
        };
        IN_FLIGHT.spawn(task.in_current_span());
        match rx.await {
            Ok(result) => result,
            Err(_) => Ok(RotationOutcome::MintFailed {
                error: "the rotation's task ended without an answer".into(),
            }),
        }
    }

    /// The section itself: what became of the rotation.
    async fn run(self) -> Result<RotationOutcome, StateError> {
        let (ctx, client, old, rot) = (&self.ctx, &self.client, &self.old, &self.rot);
        let nonce = format!("{:08x}", rand::random::<u32>());
        let name = new_key_name(&old.name, &nonce);
        let lifetime = (ctx.config.policies.iter())
            .find(|q| q.name == rot.policy)
            .and_then(|q| q.max_lifetime);
        let started = wall_now();
        let (row, slot) = match begin(
            ctx,
            (old, &self.sa),
            rot,
            &self.scopes,
            &nonce,
            &name,
            started,
        ) {
            Ok(Some(begun)) => begun,
            Ok(None) => {
                let reason =
                    crate::revoke::cap_reached_reason(ctx.config.safety.max_revocations_per_day);
                return Ok(RotationOutcome::Withheld { reason });
            }
            Err(e) => return Err(e),
        };
        let req = MintRequest {
            name: Some(name),
            scopes: Some(self.scopes.0.clone()),
            expires_at: lifetime.map(|l| started + i64::try_from(l.as_secs()).unwrap_or(i64::MAX)),
        };
        let minted = client
            .mint_service_account_key(&old.project_id, &self.sa, &req)
            .await;
        let minted = match minted {
            Ok(m) => m,
            Err(e) => {
                // A mint the API refused left nothing to expire: the slot goes back. One that
                // may have happened keeps it (an orphan is looked for by its nonce).
                if e.nothing_applied() {
                    ctx.store.tx(|tx| revocations::release(tx, slot))?;
                }
                return mint_failed(ctx, client, old, row, &e.to_string(), e.nothing_applied())
                    .await;
            }
        };
        let redacted = match client.retrieve_key(&old.project_id, &minted.id).await {
            Ok(Some(k)) => k.redacted_value,
            _ => "(not yet listed)".to_string(),
        };
        minted_recorded(ctx, old, row, &minted.id, &redacted)?;
        let meta = KeyMeta {
            organization: old.organization.clone(),
            project_id: old.project_id.clone(),
            service_account_id: self.sa.clone(),
            key_id: minted.id.clone(),
            key_name: minted.name.clone(),
            redacted_value: redacted,
            old_key_id: old.id.clone(),
            expires_at: minted.expires_at.at(),
        };
        let secret: SecretString = minted.value;
        hand_over(ctx, client, old, (row, slot), rot, &meta, &secret).await
    }
}

/// The sink step and what follows it. The secret is dropped (zeroed) when this returns.
async fn hand_over(
    ctx: &Context,
    client: &AdminClient,
    old: &Key,
    (row, slot): (i64, Reservation),
    rot: &RotateConfig,
    meta: &KeyMeta,
    secret: &SecretString,
) -> Result<RotationOutcome, StateError> {
    let Some(sink_config) = ctx.config.sink(&rot.sink) else {
        return Ok(RotationOutcome::Skipped {
            reason: format!("no sink named {:?}", rot.sink),
            streak: None,
        });
    };
    let new = (
        old.organization.as_str(),
        old.project_id.as_str(),
        meta.key_id.as_str(),
    );
    if let Err(e) = sink::deliver(sink_config, meta, secret).await {
        let error = e.to_string();
        if e.ambiguous {
            // The sink may hold the key: deleting it could leave the store with a dead key and
            // its readers with 401s. The row stays `minted`, as after a crash during the
            // hand-over, and a person confirms or deletes the new key.
            set_status(ctx, row, "minted", None, Some(&error))?;
            tracing::error!(run_id = %ctx.run_id, key_id = %old.id, new_key_id = %meta.key_id, %error, "rotation: the sink gave no answer; a person must confirm");
            return Ok(RotationOutcome::AwaitingConfirmation {
                new_key_id: meta.key_id.clone(),
                sink: rot.sink.clone(),
                unanswered: Some(error),
            });
        }
        let cleaned = delete_minted(ctx, client, new, &error).await?;
        let status = if cleaned {
            "sink_failed"
        } else {
            "cleanup_pending"
        };
        set_status(ctx, row, status, None, Some(&error))?;
        // The new key is gone again and the old one keeps its expiry: no write is owed.
        if cleaned {
            ctx.store.tx(|tx| revocations::release(tx, slot))?;
        }
        tracing::error!(run_id = %ctx.run_id, key_id = %old.id, new_key_id = %meta.key_id, %error, "rotation: the sink did not confirm");
        return Ok(RotationOutcome::SinkFailed { error, cleaned });
    }
    let overlap = i64::try_from(rot.overlap.as_secs()).unwrap_or(i64::MAX);
    let to = wall_now().saturating_add(overlap);
    set_status(ctx, row, "delivered", Some(to), None)?;
    finish(ctx, client, old, row, to, &rot.sink, meta).await
}

/// The mint's durable intent record and the `rotations` row, in one transaction.
fn begin(
    ctx: &Context,
    (old, sa): (&Key, &str),
    rot: &RotateConfig,
    (scopes, from): &(Vec<String>, ScopesFrom),
    nonce: &str,
    name: &str,
    started: i64,
) -> Result<Option<(i64, Reservation)>, StateError> {
    let mut intent = ctx
        .record(
            AuditKind::Intent,
            (&old.organization, &old.project_id, &old.id),
            "",
        )
        .with_key(old);
    intent.message = format!(
        "minting key {name:?} for service account {sa} to replace {}",
        old.id
    );
    intent.policy = Some(rot.policy.clone());
    intent.inputs = json!({
        "write": "rotate_mint",
        "service_account_id": sa,
        "nonce": nonce,
        "name": name,
        "scopes": scopes,
        "scopes_from": from.as_str(),
        "sink": rot.sink,
    });
    // The old key's expiry, which ends the rotation, takes its slot of the rolling cap here,
    // before anything is minted: a rotation that mints always has its expiry's slot, and two
    // sweeps at once cannot exceed the cap between them. The slot is kept whatever follows
    // (it can only hold back later writes).
    let cap = ctx.config.safety.max_revocations_per_day;
    let at = (
        old.organization.as_str(),
        old.project_id.as_str(),
        old.id.as_str(),
    );
    ctx.store.tx(|tx| {
        // Withheld: the sweep records it once per spell (`sweep/rotation.rs`).
        let Some(slot) = revocations::reserve(tx, ctx.now, cap, at, &ctx.run_id)? else {
            return Ok(None);
        };
        let entry = audit::append(tx, &intent)?;
        rotations::begin(
            tx,
            &NewRotation {
                organization: &old.organization,
                project_id: &old.project_id,
                service_account_id: sa,
                old_key_id: &old.id,
                policy: &rot.policy,
                nonce,
                intent_seq: entry.seq,
                started_at: started,
            },
        )
        .map(|row| Some((row, slot)))
    })
}

/// The mint's outcome record with the new key's id, and the row moved to `minted`, together.
fn minted_recorded(
    ctx: &Context,
    old: &Key,
    row: i64,
    new_id: &str,
    redacted: &str,
) -> Result<(), StateError> {
    let intent_seq = ctx
        .store
        .with_conn(|c| rotations::get(c, row))?
        .and_then(|r| r.intent_seq);
    let mut out = ctx
        .record(
            AuditKind::Outcome,
            (&old.organization, &old.project_id, &old.id),
            "",
        )
        .with_key(old)
        .with_response(json!({ "new_key_id": new_id, "new_redacted_value": redacted }));
    out.message = format!("minted key {new_id} ({redacted}) to replace {}", old.id);
    out.refers_to = intent_seq;
    let update = RotationUpdate {
        status: "minted",
        new_key_id: Some(new_id),
        new_redacted_value: Some(redacted),
        ..RotationUpdate::default()
    };
    ctx.store.tx(|tx| {
        audit::append(tx, &out)?;
        rotations::update(tx, row, &update, wall_now())
    })
}

/// A failed mint: its outcome, then a look for a key it may have made all the same (`refused`:
/// the API refused it, so it made none).
async fn mint_failed(
    ctx: &Context,
    client: &AdminClient,
    old: &Key,
    row: i64,
    error: &str,
    refused: bool,
) -> Result<RotationOutcome, StateError> {
    let out = ctx
        .record(
            AuditKind::Outcome,
            (&old.organization, &old.project_id, &old.id),
            format!("minting a key to replace {} failed", old.id),
        )
        .with_response(json!({ "error": error }));
    audit::append_durable(&ctx.store, &out)?;
    // After a timeout or a 5xx a key may exist: reconciliation finds it by its nonce. Give the
    // API a moment so a key minted late is listed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A mint the API refused made nothing: the row is settled now. Otherwise a key may exist
    // and show up late, and only a later sweep gives up looking for it.
    let search = if refused {
        super::reconcile::Search::Refused
    } else {
        super::reconcile::Search::Early
    };
    super::reconcile::settle_minting(ctx, client, row, search).await?;
    Ok(RotationOutcome::MintFailed {
        error: error.to_string(),
    })
}

fn skipped(
    ctx: &Context,
    p: &PlannedRotation,
    reason: String,
) -> Result<RotationOutcome, StateError> {
    let id = &p.finding;
    let rec = ctx
        .record(
            AuditKind::Skipped,
            (&id.organization, &id.project_id, &id.key_id),
            format!("rotation not started after re-check: {reason}"),
        )
        .with_response(json!({ "recheck": reason }));
    audit::append_durable(&ctx.store, &rec)?;
    // The same streak as the re-check before a DELETE or an expiry set counts: a key renamed
    // back and forth is someone dodging enforcement, whichever write it dodges.
    let max = ctx.config.max_recheck_skips;
    let streak = if max == 0 {
        None
    } else {
        let skips = ctx.store.with_conn(|c| {
            crate::state::findings::consecutive_recheck_skips(
                c,
                &id.organization,
                &id.project_id,
                &id.key_id,
                crate::revoke::is_kill_switch_reason,
            )
        })?;
        (skips >= max).then_some(skips)
    };
    Ok(RotationOutcome::Skipped { reason, streak })
}

/// A key of the same service account whose hand-over a crash interrupted (`minted`), if any:
/// no further key is minted for the account while it exists.
/// The key a file sink's target already holds for another of the service account's keys, if
/// rotating `old` into `rot`'s sink would overwrite it. A file sink's path names the
/// organisation, the project and the service account, never the key: two keys of one account
/// share the file, and the second rotation would leave the first one's new key alive with
/// nobody holding it. Not when the file holds `old` itself (a rotation of the key the last one
/// minted), nor when the key it holds has ended.
async fn file_holds_another(
    ctx: &Context,
    client: &AdminClient,
    old: &Key,
    sa: &str,
    rot: &RotateConfig,
) -> Result<Option<String>, StateError> {
    let path_of = |sink: &str| match ctx.config.sink(sink).map(|s| &s.kind) {
        Some(SinkKind::File { path, .. }) => Some(path.clone()),
        _ => None,
    };
    let Some(path) = path_of(&rot.sink) else {
        return Ok(None);
    };
    let last = ctx
        .store
        .with_conn(|c| rotations::latest_handed_over(c, &old.organization, &old.project_id, sa))?;
    let Some((holder, policy)) = last.and_then(|r| r.new_key_id.map(|k| (k, r.policy))) else {
        return Ok(None);
    };
    let same_file = (ctx.config.rotation(&policy)).and_then(|r| path_of(&r.sink)) == Some(path);
    if holder == old.id || !same_file {
        return Ok(None);
    }
    Ok(match client.retrieve_key(&old.project_id, &holder).await {
        Ok(None) | Err(OpenAiError::KeyEnded { .. }) => None,
        _ => Some(holder),
    })
}

fn awaiting_confirmation(ctx: &Context, old: &Key, sa: &str) -> Result<Option<String>, StateError> {
    let rows = ctx
        .store
        .with_conn(|c| rotations::unsettled(c, &old.organization))?;
    Ok(rows
        .into_iter()
        .find(|r| {
            r.status == "minted" && r.project_id == old.project_id && r.service_account_id == sa
        })
        .map(|r| r.new_key_id.unwrap_or_default()))
}
