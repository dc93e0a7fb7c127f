//! Phase 1, reconcile: a crash between a DELETE's intent and its outcome is settled before
//! anything else (`revoke::reconcile` looks the key up and records what it finds). A delete
//! that went through closes its findings as revoked and tells their owners, in the transaction
//! that records it (a service-account key's in person by the route `owners.rs` reads for it
//! first, as a sweep's notices are). A delete whose outcome was recorded but whose findings
//! the sweep that made it never closed (it was killed, or its commit failed, after the DELETE)
//! is closed and told the same way: otherwise the next listing would close it as "key deleted"
//! and its owner would never hear that keysweep revoked it. This phase never deletes and never
//! repeats a DELETE.

use std::collections::HashMap;

use crate::inventory::Expiry;
use crate::notify::NotifySettings;
use crate::notify::alert::EnforcerAlert;
use crate::notify::compose::{self, Composed};
use crate::policy::finding::{ExpirySet, Finding, FindingId, NoticeIntel, OwnerRoute};
use crate::policy::lifecycle;
use crate::revoke::{self, ConfirmedDelete, InterruptedDelete, InterruptedExpiry};
use crate::state::{self, StateError};

use super::notes::KeyRef;
use super::report::SweepError;
use super::run::Run;

/// What reconciliation left open.
pub(super) struct Reconciled {
    /// One alert per interrupted delete that could not be checked yet.
    pub unsettled: Vec<EnforcerAlert>,
}

impl Run<'_> {
    pub(super) async fn reconcile(&self) -> Result<Reconciled, SweepError> {
        let settings = &self.sweeper.notify;
        let now = self.now();
        let writes = self.writes_since_last_finished()?;
        let left_open = self.deletes_left_open(&writes)?;
        let routes = self.reconcile_routes(&left_open).await;
        let unsettled = revoke::reconcile(&self.revoke_context(), |tx, done| match done.expiry {
            None => close_as_revoked(tx, done, settings, now, &routes, None),
            Some(e) => note_expiry(tx, done, e, now),
        })
        .await?;
        for c in &left_open {
            let d = &c.delete;
            tracing::warn!(run_id = self.run_id(), organization = %d.organization, key_id = %d.key_id, "a key keysweep deleted still had open findings (the sweep that deleted it stopped before closing them): closed as revoked");
            self.store
                .tx(|tx| close_as_revoked(tx, d, settings, now, &routes, Some(c.at)))?;
        }
        Ok(Reconciled { unsettled })
    }

    /// The DELETE intents and outcomes written since the oldest of this sweep's organisations'
    /// bounds, with each organisation's bound: the start of its last finished sweep
    /// (`state::sweeps::last_finished_sweep`, not one dated after this sweep), or
    /// [`UNFINISHED_LOOKBACK`] before now if none, less [`CLOCK_MARGIN`] for a clock stepped
    /// back in between.
    fn writes_since_last_finished(&self) -> Result<Writes, SweepError> {
        let now = self.now();
        let since = self.store.with_conn(|c| {
            let mut since = HashMap::new();
            for client in &self.clients {
                let org = client.org_name();
                let last = state::sweeps::last_finished_sweep(c, org, now)?;
                let from = last.map_or(now.saturating_sub(UNFINISHED_LOOKBACK), |s| s.started_at);
                since.insert(org.to_string(), from.saturating_sub(CLOCK_MARGIN));
            }
            Ok(since)
        })?;
        let from = since.values().copied().min().unwrap_or(i64::MAX);
        let rows = self
            .store
            .with_conn(|c| state::audit::delete_writes_since(c, from))?;
        Ok(Writes { rows, since })
    }

    /// The deletes since each organisation's last finished sweep that went through and left
    /// a finding of their key open (`revoke::confirmed_deletes`).
    fn deletes_left_open<'w>(
        &self,
        writes: &'w Writes,
    ) -> Result<Vec<ConfirmedDelete<'w>>, SweepError> {
        let since = |org: &str| writes.since.get(org).copied().unwrap_or(i64::MAX);
        let confirmed = revoke::confirmed_deletes(&writes.rows, since);
        let open = self.store.with_conn(|c| {
            let mut open = Vec::new();
            for d in confirmed {
                let mut any = false;
                for policy in d.delete.policies() {
                    let id = finding_id(&d.delete, policy);
                    any |= state::findings::get_finding(c, &id)?
                        .is_some_and(|f| answered_by(&f, Some(d.at)));
                }
                if any {
                    open.push(d);
                }
            }
            Ok(open)
        })?;
        Ok(open)
    }
}

/// How far back an organisation that never finished a sweep has its deletes looked at.
const UNFINISHED_LOOKBACK: i64 = 30 * 86_400;

/// The bound's allowance for a clock stepped back between two sweeps.
const CLOCK_MARGIN: i64 = 86_400;

/// Whether a delete recorded at `deleted_at` (`None`: now) answers finding `f`: it is open and
/// was detected by then (one detected later is about a key listed again under the same id).
pub(super) fn answered_by(f: &Finding, deleted_at: Option<i64>) -> bool {
    f.stage.is_open() && deleted_at.is_none_or(|at| f.detected_at <= at)
}

/// The audit's writes since each organisation's last finished sweep (`since`, by name).
struct Writes {
    rows: Vec<state::audit::AuditRow>,
    since: HashMap<String, i64>,
}

fn finding_id(d: &InterruptedDelete<'_>, policy: &str) -> FindingId {
    FindingId {
        organization: d.organization.to_string(),
        project_id: d.project_id.to_string(),
        key_id: d.key_id.to_string(),
        policy: policy.to_string(),
    }
}

/// Records on the open findings of an interrupted expiry update that went through what it set,
/// as the sweep would have had it finished (the restore of a closed finding has nothing to
/// record there).
fn note_expiry(
    tx: &rusqlite::Transaction<'_>,
    done: &InterruptedDelete<'_>,
    e: InterruptedExpiry,
    now: i64,
) -> Result<(), StateError> {
    for policy in done.policies() {
        let id = finding_id(done, policy);
        if let Some(mut f) = state::findings::get_finding(tx, &id)? {
            f.expires_at = Expiry::At(e.to);
            if !e.restore && f.stage.is_open() {
                f.expiry.set = Some(ExpirySet {
                    to: e.to,
                    previous: f.expiry.set.map_or(e.previous, |s| s.previous),
                    at: now,
                });
            }
            state::findings::upsert_finding(tx, &f, now)?;
        }
    }
    Ok(())
}

/// Closes the open findings an interrupted delete answered and queues their `revoked` notices.
/// `deleted_at`: when a delete already recorded went through (`None`: found now).
fn close_as_revoked(
    tx: &rusqlite::Transaction<'_>,
    deleted: &InterruptedDelete<'_>,
    settings: &NotifySettings,
    now: i64,
    routes: &HashMap<KeyRef, OwnerRoute>,
    deleted_at: Option<i64>,
) -> Result<(), StateError> {
    let mut revoked = Vec::new();
    for policy in deleted.policies() {
        let id = finding_id(deleted, policy);
        if let Some(f) = state::findings::get_finding(tx, &id)?
            && answered_by(&f, deleted_at)
        {
            let closed = lifecycle::mark_revoked(&f, now);
            state::findings::upsert_finding(tx, &closed, now)?;
            revoked.push(closed);
        }
    }
    // The owner hears of this revocation like of any other, committed with it. The run id is
    // per intent: a run's own `revoked` digest must not share its ids.
    let run_id = format!("reconciled/{}", deleted.intent_seq);
    let mut notices = compose::revoked_notices(&revoked);
    for n in &mut notices {
        let id = &n.finding.id;
        let key = (
            id.organization.clone(),
            id.project_id.clone(),
            id.key_id.clone(),
        );
        if let Some(route) = routes.get(&key) {
            n.intel = Some(NoticeIntel {
                usage: None,
                route: Some(route.clone()),
            });
        }
    }
    Composed::new(&notices, &[], settings, &run_id, now)?.queue(tx, now)?;
    Ok(())
}
