//! What one sweep noted of each key it may tell someone about (issue 16: usage, a
//! service-account key's route), kept by the sweep's `Run` so the notices of every phase
//! carry it. Plain data: it reads nothing and decides nothing (`owners.rs` fills it).

use std::collections::HashMap;

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
    /// Sets the intel of every notice that has none and whose key this sweep knows.
    pub fn annotate(&self, notices: &mut [Notice]) {
        if self.notes.is_empty() {
            return;
        }
        for n in notices.iter_mut().filter(|n| n.intel.is_none()) {
            let id = &n.finding.id;
            let key = (
                id.organization.clone(),
                id.project_id.clone(),
                id.key_id.clone(),
            );
            n.intel = self.notes.get(&key).cloned();
        }
    }
}

impl KeyNotes {
    /// Notes `note` for `key`.
    pub fn insert(&mut self, key: KeyRef, note: NoticeIntel) {
        self.notes.insert(key, note);
    }
}
