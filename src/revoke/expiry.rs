//! Expiry writes (`action = "expire"`): setting a key's expiry to its finding's deadline, and
//! moving an expiry keysweep set back out when its finding is withdrawn.
//!
//! The same rails as a DELETE, in the same order: (1) re-read the key and re-evaluate it (a key
//! that is gone, exempted, no longer violating, or that already ends by the target is not
//! written to); (2) a durable `intent` audit record; (3) the update (the client recomputes
//! `expires_in_seconds` from the absolute target against the wall clock at each attempt, so a
//! retry never moves the deadline); (4) a durable `outcome` record, and for a set expiry the
//! revocation count of the rolling cap. (2)–(4) run on the revocations' own task so a shutdown
//! cannot separate an intent from its outcome; a crash between them is settled by
//! `reconcile`, which reads the key's expiry back.
//!
//! Setting an expiry is planned (caps, kill switch, dry-run: `policy::plan`); moving one back out
//! is not capped and not stopped by the kill switch (it undoes a write), but never happens
//! outside enforce mode either. This module never deletes a key, never sets an expiry earlier
//! than the target it was handed, and never composes a notice.

use std::time::Duration;

use serde_json::json;
use tracing::Instrument;

use crate::config::Mode;
use crate::inventory::{Expiry, Key, expiry_matches};
use crate::notify::alert::EnforcerAlert;
use crate::openai::{AdminClient, Error as OpenAiError};
use crate::policy::expiry::PlannedRestore;
use crate::policy::finding::FindingId;
use crate::policy::plan::{PlannedAction, Write};
use crate::state::audit::{self, AuditKind, AuditRecord};
use crate::state::revocations::{self, Reservation};
use crate::state::{self, Store};
use crate::timefmt::rfc3339;

use super::context::Context;
use super::critical::{IN_FLIGHT, intend_with_slot};

/// How long to wait before reading a key again when a read may lag behind a write (the API
/// does not promise read-after-write): one retry, then the read is believed.
pub const READ_AFTER_WRITE_WAIT: Duration = Duration::from_secs(2);

/// What one expiry write did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExpiryResult {
    pub organization: String,
    pub project_id: String,
    pub key_id: String,
    #[serde(skip)]
    pub finding_ids: Vec<FindingId>,
    /// `set` or `restore`.
    pub write: &'static str,
    pub outcome: ExpiryOutcome,
    /// When the re-check kept this key `max_recheck_skips` times in a row.
    #[serde(skip)]
    pub recheck_alert: Option<EnforcerAlert>,
}

/// The outcome of one expiry write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ExpiryOutcome {
    /// The expiry was set to `to`. `previous` is what the key had before (`None`: never);
    /// `reset` when keysweep had set it before and found it moved later.
    Set {
        to: i64,
        previous: Option<i64>,
        reset: bool,
    },
    /// The re-read shows the key already ends at or before the target: nothing written.
    AlreadyEnds { at: i64 },
    /// Moved back out to `to`; `shortened` when the organisation refused a longer distance.
    Restored { to: i64, shortened: bool },
    /// The re-check found a reason not to write.
    Skipped { reason: String },
    /// The organisation's or project's expiry policy refused the expiry.
    Refused { error: String },
    /// The key had already expired: it cannot be updated, and it has ended anyway.
    KeyExpired,
    /// The update failed (5xx, timeout, …); the key may or may not have the expiry.
    Failed { error: String },
    /// Not attempted: shutdown requested, or not in enforce mode.
    Cancelled,
}

impl ExpiryResult {
    /// Metric label.
    pub fn outcome_label(&self) -> &'static str {
        match self.outcome {
            ExpiryOutcome::Set { .. } => "expiry_set",
            ExpiryOutcome::AlreadyEnds { .. } => "expiry_already_set",
            ExpiryOutcome::Restored { .. } => "expiry_restored",
            ExpiryOutcome::Skipped { .. } => "skipped",
            ExpiryOutcome::Refused { .. } => "expiry_refused",
            ExpiryOutcome::KeyExpired => "key_expired",
            ExpiryOutcome::Failed { .. } => "failed",
            ExpiryOutcome::Cancelled => "cancelled",
        }
    }

    /// The enforcer alert the outcome deserves, if any.
    pub fn alert(&self) -> Option<EnforcerAlert> {
        if let Some(alert) = &self.recheck_alert {
            return Some(alert.clone());
        }
        let message = match (&self.outcome, self.write) {
            (
                ExpiryOutcome::Set {
                    to, reset: true, ..
                },
                _,
            ) => format!(
                "the expiry had been moved later outside keysweep; it was set back to {}",
                rfc3339(*to)
            ),
            (ExpiryOutcome::Refused { error }, "set") => format!(
                "the expiry policy refused the expiry ({error}); the finding keeps its deadline \
                 as notice-only"
            ),
            (ExpiryOutcome::Refused { error }, _) => format!(
                "the expiry keysweep set could not be moved back out: every distance down to 30 \
                 days was refused ({error}); the key keeps the expiry keysweep set"
            ),
            (
                ExpiryOutcome::Restored {
                    to,
                    shortened: true,
                },
                _,
            ) => format!(
                "the organisation refused the configured distance; the expiry was moved back out \
                 to {} instead",
                rfc3339(*to)
            ),
            (ExpiryOutcome::Failed { error }, "set") => {
                format!("setting the expiry failed or is unconfirmed: {error}")
            }
            (ExpiryOutcome::Failed { error }, _) => format!(
                "moving the expiry back out failed: {error}; the key keeps the expiry keysweep set \
                 until a later sweep retries it"
            ),
            _ => return None,
        };
        Some(EnforcerAlert::Expiry {
            organization: self.organization.clone(),
            project_id: self.project_id.clone(),
            key_id: self.key_id.clone(),
            message,
        })
    }
}

/// Sets the expiry of every approved `SetExpiry` action, one at a time. `reset(finding)` says
/// whether keysweep had set the finding's expiry before (a later one is then an alert).
pub async fn set_expiries(
    ctx: &Context<'_>,
    actions: &[PlannedAction],
    reset: impl Fn(&FindingId) -> bool,
) -> Result<Vec<ExpiryResult>, state::StateError> {
    let mut out = Vec::new();
    for action in actions {
        let Write::SetExpiry { to } = action.write else {
            continue;
        };
        let key = action.key();
        let mut result = ExpiryResult {
            organization: key.organization.clone(),
            project_id: key.project_id.clone(),
            key_id: key.id.clone(),
            finding_ids: action.findings.clone(),
            write: "set",
            outcome: ExpiryOutcome::Cancelled,
            recheck_alert: None,
        };
        if !ctx.cancel.is_cancelled() && ctx.mode == Mode::Enforce {
            let was_set = action.findings.iter().any(&reset);
            result.outcome = set_one(ctx, action, to, was_set).await?;
            if let ExpiryOutcome::Skipped { reason } = &result.outcome {
                result.recheck_alert =
                    ctx.recheck_alert(&key.organization, &key.project_id, &key.id, reason)?;
            }
        }
        out.push(result);
    }
    Ok(out)
}

/// One set: re-read (with one retry after a wait when the expiry had been set before, since the
/// read may lag), intent, update, outcome.
async fn set_one(
    ctx: &Context<'_>,
    action: &PlannedAction,
    to: i64,
    was_set: bool,
) -> Result<ExpiryOutcome, state::StateError> {
    let listed = action.key();
    let Some(client) = ctx.client(&listed.organization) else {
        return Ok(ExpiryOutcome::Failed {
            error: "no client for organisation".into(),
        });
    };
    if let Some(reason) = ctx.kill_switch() {
        return skipped(ctx, listed, reason);
    }
    let policies: Vec<&str> = action.findings.iter().map(|f| f.policy.as_str()).collect();
    let mut fresh = match recheck(ctx, client, listed, &policies).await {
        Err(reason) => return skipped(ctx, listed, reason),
        Ok(fresh) => fresh,
    };
    if was_set && !fresh.expires_at.ends_by(to) {
        tokio::time::sleep(READ_AFTER_WRITE_WAIT).await;
        fresh = match recheck(ctx, client, listed, &policies).await {
            Err(reason) => return skipped(ctx, listed, reason),
            Ok(fresh) => fresh,
        };
    }
    match fresh.expires_at {
        Expiry::Unknown => {
            return skipped(ctx, listed, "the API did not give the key's expiry".into());
        }
        e if e.ends_by(to) => {
            return Ok(ExpiryOutcome::AlreadyEnds {
                at: e.at().unwrap_or(to),
            });
        }
        _ => {}
    }
    // Read again right before the write: setting an expiry shortens the key.
    if let Some(reason) = ctx.kill_switch() {
        return skipped(ctx, listed, reason);
    }
    let previous = fresh.expires_at.at();
    let outcome = write(ctx, client, &fresh, &policies, to, "set_expiry").await?;
    Ok(match outcome {
        Written::Done => ExpiryOutcome::Set {
            to,
            previous,
            reset: was_set,
        },
        Written::Refused(error) => ExpiryOutcome::Refused { error },
        Written::KeyExpired => ExpiryOutcome::KeyExpired,
        Written::Failed(error) => ExpiryOutcome::Failed { error },
        Written::Withheld(reason) => ExpiryOutcome::Skipped { reason },
    })
}

/// Moves every planned restore back out. Not capped and not stopped by the kill switch; only
/// in enforce mode, and not once the sweep is cancelled.
pub async fn restore_expiries(
    ctx: &Context<'_>,
    restores: &[PlannedRestore],
) -> Result<Vec<ExpiryResult>, state::StateError> {
    let mut out = Vec::new();
    for r in restores {
        let mut result = ExpiryResult {
            organization: r.key.organization.clone(),
            project_id: r.key.project_id.clone(),
            key_id: r.key.id.clone(),
            finding_ids: vec![r.finding.clone()],
            write: "restore",
            outcome: ExpiryOutcome::Cancelled,
            recheck_alert: None,
        };
        if !ctx.cancel.is_cancelled() && ctx.mode == Mode::Enforce {
            result.outcome = restore_one(ctx, r).await?;
        }
        out.push(result);
    }
    Ok(out)
}

async fn restore_one(
    ctx: &Context<'_>,
    r: &PlannedRestore,
) -> Result<ExpiryOutcome, state::StateError> {
    let Some(client) = ctx.client(&r.key.organization) else {
        return Ok(ExpiryOutcome::Failed {
            error: "no client for organisation".into(),
        });
    };
    let fresh = match client.retrieve_key(&r.key.project_id, &r.key.id).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return skipped(ctx, &r.key, "the key is already gone".into()),
        Err(OpenAiError::KeyEnded { .. }) => {
            return skipped(ctx, &r.key, "the key has already ended".into());
        }
        Err(e) => {
            // Transient: the restore stays owed and a later sweep retries it.
            skipped(ctx, &r.key, format!("re-read failed, not writing: {e}"))?;
            return Ok(ExpiryOutcome::Failed {
                error: format!("re-read failed: {e}"),
            });
        }
    };
    // The owner may have moved it since: then it is theirs, and stays.
    if !expiry_matches(fresh.expires_at, r.restore.from) {
        return skipped(
            ctx,
            &r.key,
            "the key no longer has the expiry keysweep set".into(),
        );
    }
    let policy = [r.finding.policy.as_str()];
    let targets = r.restore.targets(ctx.now);
    let mut last_refusal = String::from("no distance later than the expiry keysweep set");
    for (i, &to) in targets.iter().enumerate() {
        match write(ctx, client, &fresh, &policy, to, "restore_expiry").await? {
            Written::Done => {
                return Ok(ExpiryOutcome::Restored {
                    to,
                    shortened: i > 0,
                });
            }
            Written::Refused(error) => last_refusal = error,
            Written::KeyExpired => return Ok(ExpiryOutcome::KeyExpired),
            Written::Failed(error) => return Ok(ExpiryOutcome::Failed { error }),
            // A restore takes no slot.
            Written::Withheld(reason) => return Ok(ExpiryOutcome::Skipped { reason }),
        }
    }
    Ok(ExpiryOutcome::Refused {
        error: last_refusal,
    })
}

/// Re-reads a key before writing its expiry: `Ok(fresh)` when it may be written to,
/// `Err(reason)` when not.
async fn recheck(
    ctx: &Context<'_>,
    client: &AdminClient,
    listed: &Key,
    policies: &[&str],
) -> Result<Key, String> {
    let mut fresh = match client.retrieve_key(&listed.project_id, &listed.id).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return Err("the key is already gone".into()),
        Err(OpenAiError::KeyEnded { .. }) => return Err("the key has already expired".into()),
        Err(e) => return Err(format!("re-read failed, not writing: {e}")),
    };
    if let Some(reason) = super::recheck::reason_to_keep(ctx, listed, &mut fresh, policies) {
        return Err(reason);
    }
    Ok(fresh)
}

fn skipped(
    ctx: &Context<'_>,
    key: &Key,
    reason: String,
) -> Result<ExpiryOutcome, state::StateError> {
    let rec = ctx
        .record(
            AuditKind::Skipped,
            format!("expiry not written after re-check: {reason}"),
        )
        .with_key(key)
        .with_response(json!({ "recheck": reason }));
    audit::append_durable(ctx.store, &rec)?;
    tracing::info!(run_id = ctx.run_id, key_id = %key.id, %reason, "expiry write skipped after re-check");
    Ok(ExpiryOutcome::Skipped { reason })
}

/// What one update did.
enum Written {
    Done,
    Refused(String),
    KeyExpired,
    Failed(String),
    /// Not sent: no slot of the rolling-day cap was left at the intent.
    Withheld(String),
}

/// Intent → update → outcome for one target, on the revocations' task tracker.
async fn write(
    ctx: &Context<'_>,
    client: &AdminClient,
    key: &Key,
    policies: &[&str],
    to: i64,
    kind: &'static str,
) -> Result<Written, state::StateError> {
    let mut intent = ctx
        .record(
            AuditKind::Intent,
            format!("setting the expiry of key {} to {}", key.id, rfc3339(to)),
        )
        .with_key(key);
    intent.policy = Some(policies.join(","));
    intent.inputs["write"] = json!(kind);
    intent.inputs["expires_at"] = json!(to);
    intent.inputs["previous_expires_at"] = json!(key.expires_at.at());
    let critical = CriticalUpdate {
        store: ctx.store.clone(),
        client: client.clone(),
        outcome_base: ctx.record(AuditKind::Outcome, String::new()).with_key(key),
        intent,
        key: key.clone(),
        to,
        cap: (kind == "set_expiry").then_some(ctx.config.safety.max_revocations_per_day),
        run_id: ctx.run_id.to_string(),
        now: ctx.now,
    };
    match IN_FLIGHT.spawn(critical.run().in_current_span()).await {
        Ok(written) => written,
        Err(e) => Ok(Written::Failed(format!("update task failed: {e}"))),
    }
}

/// The owned intent → update → outcome section. It never sends the update before the intent
/// is committed and never returns before the outcome is.
struct CriticalUpdate {
    store: Store,
    client: AdminClient,
    intent: AuditRecord,
    outcome_base: AuditRecord,
    key: Key,
    to: i64,
    /// Setting an expiry counts against the caps (`Some(max_revocations_per_day)`: a slot of
    /// the rolling cap is taken with the intent); moving it back out does not.
    cap: Option<u32>,
    run_id: String,
    now: i64,
}

impl CriticalUpdate {
    async fn run(self) -> Result<Written, state::StateError> {
        let (entry, slot) = match self.intend()? {
            Ok(intended) => intended,
            Err(reason) => return Ok(Written::Withheld(reason)),
        };
        let answer = update(&self.client, &self.key, self.to).await;
        let mut ambiguous = false;
        let (written, response) = match answer {
            Ok(expires_at) => (
                Written::Done,
                json!({ "expires_at": expires_at.at(), "target": self.to }),
            ),
            Err(e) => {
                ambiguous = !e.nothing_applied;
                let response = json!({ "status": e.status, "error": e.message });
                let written = if e.refused {
                    Written::Refused(e.message)
                } else if e.expired {
                    Written::KeyExpired
                } else {
                    Written::Failed(e.message)
                };
                (written, response)
            }
        };
        let done = matches!(written, Written::Done);
        // Only an update that certainly did not happen gives its slot back (see
        // `openai::Error::nothing_applied`).
        let keep = done || matches!(&written, Written::Failed(_)) && ambiguous;
        let out = AuditRecord {
            message: if done {
                format!("expiry of key {} set to {}", self.key.id, rfc3339(self.to))
            } else {
                format!("setting the expiry of key {} failed", self.key.id)
            },
            policy: self.intent.policy.clone(),
            ..self.outcome_base.clone()
        }
        .with_response(response)
        .refers_to(entry.seq);
        self.store.tx(|tx| {
            audit::append(tx, &out)?;
            match slot {
                Some(slot) if !keep => revocations::release(tx, slot),
                _ => Ok(()),
            }
        })?;
        if done {
            tracing::warn!(run_id = %self.run_id, organization = %self.key.organization, key_id = %self.key.id, expires_at = self.to, "expiry set");
        }
        Ok(written)
    }
}

impl CriticalUpdate {
    /// The intent record, with a slot of the rolling cap for a set expiry (`intend_with_slot`;
    /// `Err(reason)` when the day is full); a restore takes none.
    fn intend(
        &self,
    ) -> Result<Result<(audit::AuditEntry, Option<Reservation>), String>, state::StateError> {
        let k = &self.key;
        let key = (
            k.organization.as_str(),
            k.project_id.as_str(),
            k.id.as_str(),
        );
        self.store.tx(|tx| match self.cap {
            None => Ok(Ok((audit::append(tx, &self.intent)?, None))),
            Some(cap) => {
                let withheld = (&self.outcome_base, "expiry not set");
                let intended = intend_with_slot(tx, &self.intent, withheld, (self.now, cap, key))?;
                Ok(intended.map(|(entry, slot)| (entry, Some(slot))))
            }
        })
    }
}

/// A failed update, as this module tells failures apart.
struct UpdateError {
    /// The expiry policy (organisation or project) refused the expiry.
    refused: bool,
    /// The key has expired and cannot be updated.
    expired: bool,
    status: Option<u16>,
    message: String,
    /// The update certainly changed nothing (`openai::Error::nothing_applied`).
    nothing_applied: bool,
}

/// The update, through the client (the one place that knows its error types). The client
/// turns the absolute target into `expires_in_seconds` against the wall clock at each attempt.
async fn update(client: &AdminClient, key: &Key, to: i64) -> Result<Expiry, UpdateError> {
    match client.set_key_expiry(&key.project_id, &key.id, to).await {
        Ok(updated) => Ok(updated.expires_at),
        Err(e) => Err(UpdateError {
            refused: matches!(e, OpenAiError::ExpiryRefused { .. }),
            expired: matches!(e, OpenAiError::KeyEnded { .. }),
            status: e.status(),
            message: e.to_string(),
            nothing_applied: e.nothing_applied(),
        }),
    }
}
