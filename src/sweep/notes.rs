//! What one sweep noted of each key it may tell someone about (issue 16: usage, a
//! service-account key's route), kept by the sweep's `Run` so the notices of every phase
//! carry it. Plain data: it reads nothing and decides nothing (`owners.rs` fills it).

use std::collections::HashMap;

use crate::notify::NotifySettings;
use crate::notify::route::mails_owners;
use crate::policy::finding::{Notice, NoticeIntel};

/// (organisation, project id, key id).
pub(super) type KeyRef = (String, String, String);

/// What this sweep knows of each key it may tell someone about: kept for the whole sweep, so
/// the notices of later phases (revoked, rotated) carry it too.
#[derive(Debug, Default)]
pub(super) struct KeyNotes {
    notes: HashMap<KeyRef, NoticeIntel>,
}

impl KeyNotes {
    /// Sets the intel of every notice that has none and whose key this sweep knows. A key's
    /// route (who is told in person) goes only on the notices of a policy whose channels mail
    /// owners: another policy's notice about the same key tells nobody in person, and goes to
    /// `owner_fallback` like any such notice.
    pub fn annotate(&self, notices: &mut [Notice], settings: &NotifySettings) {
        if self.notes.is_empty() {
            return;
        }
        for n in notices.iter_mut().filter(|n| n.intel.is_none()) {
            let f = &n.finding;
            let id = &f.id;
            let key = (
                id.organization.clone(),
                id.project_id.clone(),
                id.key_id.clone(),
            );
            let Some(mut note) = self.notes.get(&key).cloned() else {
                continue;
            };
            if note.route.is_some()
                && !mails_owners(
                    settings,
                    &id.policy,
                    &id.project_id,
                    f.project_name.as_deref(),
                )
            {
                note.route = None;
            }
            n.intel = (note.usage.is_some() || note.route.is_some()).then_some(note);
        }
    }
}

impl KeyNotes {
    /// Notes `note` for `key`.
    pub fn insert(&mut self, key: KeyRef, note: NoticeIntel) {
        self.notes.insert(key, note);
    }
}
