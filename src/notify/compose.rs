//! Composing what people are told: notices and enforcer alerts turned into outbox messages
//! (routing and rendering in `route.rs`), and written to the outbox inside the caller's
//! transaction, so a message is queued if and only if what it reports is committed.
//!
//! Every notice of a sweep is composed here: the phases' notices and alerts, the owners'
//! `revoked` notices after a deletion, and those of interrupted deletes that reconciliation
//! found to have gone through. `revoke` never composes. This module must never send anything
//! (delivery is `deliver.rs`'s) nor decide what is due (that is `policy`'s).

use crate::notify::alert::EnforcerAlert;
use crate::notify::outbox::{self, PackedMessage};
use crate::notify::settings::NotifySettings;
use crate::policy::finding::{Finding, Notice};
use crate::policy::lifecycle;
use crate::state::StateError;

/// The messages composed for one commit, not yet queued, their payloads already in the form
/// they are stored in (`outbox::pack`).
#[derive(Debug)]
pub struct Composed {
    messages: Vec<PackedMessage>,
}

impl Composed {
    /// Composes `notices` and `alerts` and packs their payloads. Done before the transaction
    /// opens (or on a thread of its own while it runs), so composing a large digest never holds
    /// the state database's lock.
    pub fn new(
        notices: &[Notice],
        alerts: &[EnforcerAlert],
        settings: &NotifySettings,
        run_id: &str,
        now: i64,
    ) -> Result<Composed, StateError> {
        Self::in_phase(notices, alerts, settings, (run_id, 0), now)
    }

    /// [`Self::new`] for the `phase`-th queueing of run `run_id` (0 for the first). A message's
    /// id is made of the run, the channel, the recipient and the kind, so an alert digest a
    /// later phase queues (a failed DELETE after the commit's incomplete listing) would take
    /// the first one's id and be ignored by the outbox: a later phase's ids are its own.
    pub fn in_phase(
        notices: &[Notice],
        alerts: &[EnforcerAlert],
        settings: &NotifySettings,
        (run_id, phase): (&str, u32),
        now: i64,
    ) -> Result<Composed, StateError> {
        let phase_text = phase.to_string();
        let messages = super::route::compose(notices, alerts, settings, run_id, now)
            .into_iter()
            .map(|mut m| {
                if phase > 0 {
                    m.message_id = super::route::message_id(&[&m.message_id, &phase_text]);
                }
                outbox::pack(m)
            })
            .collect::<Result<_, _>>()?;
        Ok(Composed { messages })
    }

    /// How many messages were composed (some may already be in the outbox: a re-run of the
    /// same compose yields the same ids, and the outbox ignores them).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Writes the messages to the outbox inside the caller's transaction.
    pub fn queue(&self, tx: &rusqlite::Transaction<'_>, now: i64) -> Result<usize, StateError> {
        outbox::enqueue_packed(tx, &self.messages, now)
    }
}

/// The owners' `revoked` notices for findings closed because their key was deleted.
pub fn revoked_notices(revoked: &[Finding]) -> Vec<Notice> {
    revoked
        .iter()
        .map(|f| lifecycle::revoked_notice(f, false))
        .collect()
}
