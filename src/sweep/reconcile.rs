//! Phase 1, reconcile: a crash between a DELETE's intent and its outcome is settled before
//! anything else (`revoke::reconcile` looks the key up and records what it finds). A delete
//! that went through closes its findings as revoked and tells their owners, in the transaction
//! that records it (a service-account key's in person by the route `owners.rs` reads for it
//! first, as a sweep's notices are). This phase never deletes and never repeats a DELETE.

use std::collections::HashMap;

use crate::inventory::Expiry;
use crate::notify::NotifySettings;
use crate::notify::alert::EnforcerAlert;
use crate::notify::compose::{self, Composed};
use crate::policy::finding::{ExpirySet, FindingId, NoticeIntel, OwnerRoute};
use crate::policy::lifecycle;
use crate::revoke::{self, InterruptedDelete, InterruptedExpiry};
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
        let routes = self.reconcile_routes().await;
        let unsettled = revoke::reconcile(&self.revoke_context(), |tx, done| match done.expiry {
            None => close_as_revoked(tx, done, settings, now, &routes),
            Some(e) => note_expiry(tx, done, e, now),
        })
        .await?;
        Ok(Reconciled { unsettled })
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
        let id = FindingId {
            organization: done.organization.to_string(),
            project_id: done.project_id.to_string(),
            key_id: done.key_id.to_string(),
            policy: policy.to_string(),
        };
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
fn close_as_revoked(
    tx: &rusqlite::Transaction<'_>,
    deleted: &InterruptedDelete<'_>,
    settings: &NotifySettings,
    now: i64,
    routes: &HashMap<KeyRef, OwnerRoute>,
) -> Result<(), StateError> {
    let mut revoked = Vec::new();
    for policy in deleted.policies() {
        let id = FindingId {
            organization: deleted.organization.to_string(),
            project_id: deleted.project_id.to_string(),
            key_id: deleted.key_id.to_string(),
            policy: policy.to_string(),
        };
        if let Some(f) = state::findings::get_finding(tx, &id)?
            && f.stage.is_open()
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
