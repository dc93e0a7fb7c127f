//! Revocation: the only code that deletes anything, and the rails right around the DELETE.
//!
//! For every approved action, in order:
//! 1. re-read each key (GET) and re-evaluate it against the policies: a key that is gone, was
//!    used since the listing, was renamed, is now exempted or no longer violates is NOT deleted;
//! 2. write a durable `intent` audit record (committed before the request leaves);
//! 3. send the DELETE (the client never retries it blindly);
//! 4. write a durable `outcome` audit record with the API's answer, and count the revocation.
//!
//! Cancellation (SIGTERM) is honoured only between actions: never between an intent and its
//! outcome. A crash between the two is settled by [`reconcile`] on the next run: the key is
//! looked up, and a `reconciled` record says whether it was deleted. Nothing here runs in
//! dry-run mode; `plan` never approves an action then.

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, Mode};
use crate::inventory::Key;
use crate::notify::alert::EnforcerAlert;
use crate::openai::{AdminClient, DeleteOutcome};
use crate::policy::Policies;
use crate::policy::finding::FindingId;
use crate::policy::plan::{PlannedAction, Target};
use crate::state::audit::{self, AuditKind, AuditRecord};
use crate::state::{self, Store};

/// Everything a revocation needs.
pub struct Context<'a> {
    pub store: &'a Store,
    pub config: &'a Config,
    pub policies: &'a Policies,
    pub clients: &'a [AdminClient],
    pub mode: Mode,
    pub run_id: &'a str,
    pub now: i64,
    pub cancel: &'a CancellationToken,
}

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
            _ => None,
        }
    }
}

fn client<'a>(ctx: &'a Context<'_>, org: &str) -> Option<&'a AdminClient> {
    ctx.clients.iter().find(|c| c.org_name() == org)
}

fn record(ctx: &Context<'_>, kind: AuditKind, message: impl Into<String>) -> AuditRecord {
    AuditRecord::new(
        ctx.now,
        ctx.run_id,
        kind,
        ctx.mode,
        &ctx.config.hash,
        message,
    )
}

/// Executes approved actions one at a time.
pub async fn execute(
    ctx: &Context<'_>,
    actions: &[PlannedAction],
) -> Result<Vec<RevocationResult>, state::StateError> {
    let mut results = Vec::with_capacity(actions.len());
    for action in actions {
        let (keys, target, sa) = match &action.target {
            Target::Key(k) => (vec![k.clone()], format!("key {}", k.id), None),
            Target::ServiceAccount {
                service_account_id,
                collateral,
                ..
            } => (
                collateral.clone(),
                format!(
                    "service account {service_account_id} ({} keys)",
                    collateral.len()
                ),
                Some(service_account_id.clone()),
            ),
        };
        let mut result = RevocationResult {
            organization: action.organization().to_string(),
            project_id: action.project_id().to_string(),
            target,
            key_ids: keys.iter().map(|k| k.id.clone()).collect(),
            finding_ids: action.findings.clone(),
            outcome: Outcome::Cancelled,
        };
        if ctx.cancel.is_cancelled() || ctx.mode != Mode::Enforce {
            results.push(result);
            continue;
        }
        let Some(client) = client(ctx, &result.organization) else {
            result.outcome = Outcome::Failed {
                error: "no client for organisation".into(),
            };
            results.push(result);
            continue;
        };

        // 1. Re-check every key this action destroys.
        let policies_of = |key: &Key| -> Vec<&str> {
            action
                .findings
                .iter()
                .filter(|f| f.key_id == key.id)
                .map(|f| f.policy.as_str())
                .collect()
        };
        let mut refusal = None;
        for key in &keys {
            match recheck(ctx, client, key, &policies_of(key)).await {
                Ok(None) => {}
                Ok(Some(reason)) => {
                    refusal = Some(reason);
                    break;
                }
                Err(e) => {
                    refusal = Some(format!("re-check failed, not deleting: {e}"));
                    break;
                }
            }
        }
        if let Some(reason) = refusal {
            let mut records = Vec::new();
            for key in &keys {
                records.push(
                    record(
                        ctx,
                        AuditKind::Skipped,
                        format!("not deleted after re-check: {reason}"),
                    )
                    .with_key(key)
                    .with_response(json!({ "recheck": reason })),
                );
            }
            ctx.store.tx(|tx| {
                for r in &records {
                    audit::append(tx, r)?;
                }
                Ok(())
            })?;
            tracing::info!(run_id = ctx.run_id, target = %result.target, %reason, "revocation skipped after re-check");
            result.outcome = Outcome::SkippedAfterRecheck { reason };
            results.push(result);
            continue;
        }

        // 2–4. Intent, DELETE, outcome: one critical section on its own task, so neither a
        // shutdown that drops the sweep nor a panic elsewhere can separate the two records.
        let Some(primary) = keys.first().cloned() else {
            result.outcome = Outcome::Failed {
                error: "nothing to delete".into(),
            };
            results.push(result);
            continue;
        };
        let mut intent = record(
            ctx,
            AuditKind::Intent,
            format!("deleting {}", result.target),
        )
        .with_key(&primary);
        intent.policy = Some(
            action
                .findings
                .iter()
                .map(|f| f.policy.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        if let Some(sa) = &sa {
            intent.inputs["service_account_id"] = json!(sa);
            intent.inputs["collateral"] = json!(result.key_ids);
        }
        let critical = CriticalDelete {
            store: ctx.store.clone(),
            client: client.clone(),
            intent,
            outcome_base: record(ctx, AuditKind::Outcome, String::new()).with_key(&primary),
            key_id: primary.id.clone(),
            service_account: sa.clone(),
            organization: result.organization.clone(),
            project_id: result.project_id.clone(),
            key_ids: result.key_ids.clone(),
            target: result.target.clone(),
            run_id: ctx.run_id.to_string(),
            now: ctx.now,
        };
        let outcome = match IN_FLIGHT.spawn(critical.run().in_current_span()).await {
            Ok(outcome) => outcome?,
            Err(e) => Outcome::Failed {
                error: format!("delete task failed: {e}"),
            },
        };
        result.outcome = outcome;
        results.push(result);
    }
    Ok(results)
}

/// Deletes in flight. They run on their own tasks so that a sweep dropped at the end of the
/// shutdown grace never leaves an intent without its outcome; `drain_in_flight` waits for them.
static IN_FLIGHT: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Waits for every DELETE in flight to write its outcome record (bounded by the request
/// timeout). Called once on shutdown, after the scheduler stopped.
pub async fn drain_in_flight() {
    IN_FLIGHT.close();
    IN_FLIGHT.wait().await;
}

/// Everything the intent → DELETE → outcome section needs, owned.
struct CriticalDelete {
    store: Store,
    client: AdminClient,
    intent: AuditRecord,
    outcome_base: AuditRecord,
    key_id: String,
    service_account: Option<String>,
    organization: String,
    project_id: String,
    key_ids: Vec<String>,
    target: String,
    run_id: String,
    now: i64,
}

impl CriticalDelete {
    async fn run(self) -> Result<Outcome, state::StateError> {
        let entry = audit::append_durable(&self.store, &self.intent)?;
        let answer = match &self.service_account {
            None => self.client.delete_key(&self.project_id, &self.key_id).await,
            Some(sa) => {
                self.client
                    .delete_service_account(&self.project_id, sa)
                    .await
            }
        };
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
            ..self.outcome_base
        }
        .with_response(response)
        .refers_to(entry.seq);
        self.store.tx(|tx| {
            audit::append(tx, &out)?;
            if deleted {
                for k in &self.key_ids {
                    state::revocations::record_revocation(
                        tx,
                        self.now,
                        &self.organization,
                        &self.project_id,
                        k,
                        &self.run_id,
                    )?;
                }
            }
            Ok(())
        })?;
        match &outcome {
            Outcome::Deleted => {
                tracing::warn!(run_id = %self.run_id, organization = %self.organization, project_id = %self.project_id, target = %self.target, "revoked")
            }
            Outcome::Failed { error } => {
                tracing::error!(run_id = %self.run_id, organization = %self.organization, project_id = %self.project_id, target = %self.target, %error, "revocation failed")
            }
            _ => {}
        }
        Ok(outcome)
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
    // The retrieve endpoint does not carry the project name; keep the listing's for selectors.
    if fresh.project_name.is_none() {
        fresh.project_name = listed.project_name.clone();
    }
    if fresh.last_used_at != listed.last_used_at {
        return Ok(Some("the key was used since it was listed".into()));
    }
    if fresh.name != listed.name {
        return Ok(Some(format!("the key was renamed to {:?}", fresh.name)));
    }
    let eval = ctx.policies.evaluate(&fresh, ctx.now);
    if let Some(hit) = &eval.exemption {
        return Ok(Some(format!("the key is now exempted: {}", hit.reason)));
    }
    if let Some(p) = policies.iter().find(|p| eval.violation(p).is_none()) {
        return Ok(Some(format!("the key no longer violates {p}")));
    }
    Ok(None)
}

/// Settles DELETE intents that have no outcome (a crash or kill in between): GET the key; gone
/// means the delete went through (recorded, counted, finding closed and its `revoked` notice
/// queued), present means it did not.
pub async fn reconcile(
    store: &Store,
    clients: &[AdminClient],
    config: &Config,
    mode: Mode,
    run_id: &str,
    now: i64,
) -> Result<Vec<EnforcerAlert>, state::StateError> {
    let pending = store.with_conn(audit::unmatched_intents)?;
    // Intents that cannot be settled yet: the operators must know a delete's fate is unknown.
    let mut unsettled = Vec::new();
    for row in pending {
        let r = &row.record;
        let (Some(org), Some(project), Some(key_id)) = (&r.organization, &r.project_id, &r.key_id)
        else {
            continue;
        };
        let Some(client) = clients.iter().find(|c| c.org_name() == org) else {
            continue;
        };
        let gone = match client.retrieve_key(project, key_id).await {
            Ok(None) => true,
            Ok(Some(_)) => false,
            Err(e) => {
                tracing::warn!(run_id, organization = %org, key_id = %key_id, error = %e, "cannot reconcile an unfinished delete yet");
                unsettled.push(EnforcerAlert::RevocationFailed {
                    organization: org.clone(),
                    project_id: project.clone(),
                    key_id: key_id.clone(),
                    error: format!("an interrupted delete could not be checked yet: {e}"),
                });
                continue;
            }
        };
        let message = if gone {
            "reconciled: the key is gone, the interrupted delete went through"
        } else {
            "reconciled: the key still exists, the interrupted delete did not happen"
        };
        let rec = AuditRecord {
            organization: r.organization.clone(),
            project_id: r.project_id.clone(),
            key_id: r.key_id.clone(),
            key_name: r.key_name.clone(),
            redacted_value: r.redacted_value.clone(),
            owner: r.owner.clone(),
            policy: r.policy.clone(),
            response: json!({ "deleted": gone }),
            ..AuditRecord::new(
                now,
                run_id,
                AuditKind::Reconciled,
                mode,
                &config.hash,
                message,
            )
        }
        .refers_to(row.seq);
        store.tx(|tx| {
            audit::append(tx, &rec)?;
            if gone {
                state::revocations::record_revocation(tx, now, org, project, key_id, run_id)?;
                let mut notices = Vec::new();
                for policy in r
                    .policy
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .filter(|p| !p.is_empty())
                {
                    let id = FindingId {
                        organization: org.clone(),
                        project_id: project.clone(),
                        key_id: key_id.clone(),
                        policy: policy.to_string(),
                    };
                    if let Some(f) = state::findings::get_finding(tx, &id)?
                        && f.stage.is_open()
                    {
                        let revoked = crate::policy::lifecycle::mark_revoked(&f, now);
                        state::findings::upsert_finding(tx, &revoked, now)?;
                        notices.push(crate::policy::lifecycle::revoked_notice(&revoked, false));
                    }
                }
                // The owner hears of this revocation like of any other, committed with it. The
                // run id is per intent: a run's own `revoked` digest must not share its ids.
                let messages = crate::notify::compose(
                    &notices,
                    &[],
                    &crate::notify::NotifySettings::from(config),
                    &format!("reconciled/{}", row.seq),
                    now,
                );
                crate::notify::outbox::enqueue(tx, &messages, now)?;
            }
            Ok(())
        })?;
        tracing::warn!(run_id, organization = %org, key_id = %key_id, deleted = gone, "reconciled an interrupted delete");
    }
    Ok(unsettled)
}
