//! Executing approved actions, one at a time: (1) re-check every key the action destroys, and
//! record a `skipped` for each when one gives a reason not to delete; otherwise (2–4) hand the
//! intent → DELETE → outcome section to `critical.rs`. Nothing is attempted once cancelled or
//! outside enforce mode.

use serde_json::json;
use tracing::Instrument;

use crate::config::Mode;
use crate::inventory::Key;
use crate::openai::AdminClient;
use crate::policy::plan::{PlannedAction, Write};
use crate::state;
use crate::state::audit::{self, AuditKind, AuditRecord};

use super::context::Context;
use super::critical::{CriticalDelete, IN_FLIGHT};
use super::outcome::{Outcome, RevocationResult};

/// Executes approved actions one at a time.
pub async fn execute(
    ctx: &Context<'_>,
    actions: &[PlannedAction],
) -> Result<Vec<RevocationResult>, state::StateError> {
    let mut results = Vec::with_capacity(actions.len());
    // Only deletions: expiries are `expiry.rs`'s.
    for action in actions.iter().filter(|a| a.write == Write::Delete) {
        results.push(revoke_one(ctx, action).await?);
    }
    Ok(results)
}

/// What one action destroys: one key (service-account keys are deleted one by one too).
struct Doomed {
    keys: Vec<Key>,
    /// `key key_…`.
    target: String,
}

impl Doomed {
    fn of(action: &PlannedAction) -> Doomed {
        let k = action.key();
        Doomed {
            keys: vec![k.clone()],
            target: format!("key {}", k.id),
        }
    }
}

/// One action: re-check (1), then intent, DELETE and outcome (2–4).
async fn revoke_one(
    ctx: &Context<'_>,
    action: &PlannedAction,
) -> Result<RevocationResult, state::StateError> {
    let doomed = Doomed::of(action);
    let mut result = RevocationResult {
        organization: action.organization().to_string(),
        project_id: action.project_id().to_string(),
        target: doomed.target.clone(),
        key_ids: doomed.keys.iter().map(|k| k.id.clone()).collect(),
        finding_ids: action.findings.clone(),
        outcome: Outcome::Cancelled,
        recheck_alert: None,
    };
    if ctx.cancel.is_cancelled() || ctx.mode != Mode::Enforce {
        return Ok(result);
    }
    let Some(client) = ctx.client(&result.organization) else {
        result.outcome = Outcome::Failed {
            error: "no client for organisation".into(),
        };
        return Ok(result);
    };
    // The kill switch is read again before each DELETE, before and after the re-check (which
    // takes a request), so a switch turned on mid-sweep stops the remaining deletions.
    let reason = match ctx.kill_switch() {
        Some(reason) => Some(reason),
        None => match recheck_all(ctx, client, action, &doomed.keys).await {
            Some(reason) => Some(reason),
            None => ctx.kill_switch(),
        },
    };
    if let Some(reason) = reason {
        record_skipped(ctx, &doomed.keys, &reason)?;
        result.recheck_alert = ctx.recheck_alert(
            &result.organization,
            &result.project_id,
            &result.key_ids.join(","),
            &reason,
        )?;
        tracing::info!(run_id = ctx.run_id, key_ids = %result.key_ids.join(","), subject = %result.target, %reason, "revocation skipped after re-check");
        result.outcome = Outcome::SkippedAfterRecheck { reason };
        return Ok(result);
    }
    result.outcome = delete(ctx, client, action, &doomed, &result).await?;
    Ok(result)
}

/// Re-checks every key this action destroys; the first reason not to delete wins.
async fn recheck_all(
    ctx: &Context<'_>,
    client: &AdminClient,
    action: &PlannedAction,
    keys: &[Key],
) -> Option<String> {
    for key in keys {
        let policies: Vec<&str> = action
            .findings
            .iter()
            .filter(|f| f.key_id == key.id)
            .map(|f| f.policy.as_str())
            .collect();
        match recheck(ctx, client, key, &policies).await {
            Ok(None) => {}
            Ok(Some(reason)) => return Some(reason),
            Err(e) => return Some(format!("re-check failed, not deleting: {e}")),
        }
    }
    None
}

/// One `skipped` record per key the re-check saved, in one transaction.
fn record_skipped(ctx: &Context<'_>, keys: &[Key], reason: &str) -> Result<(), state::StateError> {
    let records: Vec<AuditRecord> = keys
        .iter()
        .map(|key| {
            ctx.record(
                AuditKind::Skipped,
                format!("not deleted after re-check: {reason}"),
            )
            .with_key(key)
            .with_response(json!({ "recheck": reason }))
        })
        .collect();
    ctx.store.tx(|tx| {
        for r in &records {
            audit::append(tx, r)?;
        }
        Ok(())
    })
}

/// Intent, DELETE, outcome: one critical section on its own task (`critical.rs`).
async fn delete(
    ctx: &Context<'_>,
    client: &AdminClient,
    action: &PlannedAction,
    doomed: &Doomed,
    result: &RevocationResult,
) -> Result<Outcome, state::StateError> {
    let Some(primary) = doomed.keys.first() else {
        return Ok(Outcome::Failed {
            error: "nothing to delete".into(),
        });
    };
    let mut intent = ctx
        .record(AuditKind::Intent, format!("deleting {}", result.target))
        .with_key(primary);
    intent.policy = Some(
        action
            .findings
            .iter()
            .map(|f| f.policy.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    let critical = CriticalDelete {
        store: ctx.store.clone(),
        client: client.clone(),
        intent,
        outcome_base: ctx
            .record(AuditKind::Outcome, String::new())
            .with_key(primary),
        key_id: primary.id.clone(),
        organization: result.organization.clone(),
        project_id: result.project_id.clone(),
        key_ids: result.key_ids.clone(),
        target: result.target.clone(),
        run_id: ctx.run_id.to_string(),
        now: ctx.now,
        cap: ctx.config.safety.max_revocations_per_day,
    };
    match IN_FLIGHT.spawn(critical.run().in_current_span()).await {
        Ok(outcome) => outcome,
        Err(e) => Ok(Outcome::Failed {
            error: format!("delete task failed: {e}"),
        }),
    }
}

/// Re-reads a key just before deleting it. `Ok(None)` = still safe to delete; `Ok(Some(reason))`
/// = do not delete.
async fn recheck(
    ctx: &Context<'_>,
    client: &AdminClient,
    listed: &Key,
    policies: &[&str],
) -> Result<Option<String>, crate::openai::Error> {
    let Some(fresh) = client.retrieve_key(&listed.project_id, &listed.id).await? else {
        return Ok(Some("the key is already gone".into()));
    };
    let mut fresh = fresh;
    Ok(super::recheck::reason_to_keep(
        ctx, listed, &mut fresh, policies,
    ))
}
