//! The inventory gaps the audit log shows (issue 16): keys it says were created and never
//! deleted, in a project whose listing completed, that the listing did not return. Pure: the
//! sweep (`sweep/listing.rs`) and `scan` (`Intel::gap_notes`) decide what to say of them.

use std::collections::HashSet;
use std::sync::Arc;

use crate::inventory::Inventory;

use super::{History, Intel};

/// What the log says exists and the listing did not return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gaps {
    /// Key ids created (per the log) before the listing began, never deleted, not ended by an
    /// expiry the log shows, in a watched, unarchived project whose listing completed, and yet
    /// not listed.
    pub missing: Vec<String>,
    /// Log entries whose key id does not have a key id's shape (`key_…`): they cannot be
    /// matched to any key, so they are counted, never reported as gaps.
    pub unmatched: usize,
}

/// A key the log shows alive: its id and the project of its creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub key_id: Box<str>,
    pub project_id: Option<Arc<str>>,
}

/// The keys the log shows created before `listing_began` (and, with `created_since`, not
/// before it), never deleted, not ended by an expiry the log shows by `now`, and not in
/// `listed`: each a gap if its project was listed completely. And how many log entries have
/// an id without a key id's shape (`key_…`): they cannot be matched to any key, so they are
/// counted, never reported as gaps.
pub fn logged_alive(
    history: &History,
    listed: &HashSet<&str>,
    listing_began: i64,
    created_since: Option<i64>,
    now: i64,
) -> (Vec<Logged>, usize) {
    let mut alive = Vec::new();
    let mut unmatched = 0;
    for (id, h) in history {
        let Some(created) = h.created_at.get() else {
            continue;
        };
        if h.is_deleted() || listed.contains(&**id) || created >= listing_began {
            continue;
        }
        if created_since.is_some_and(|since| created < since) {
            continue;
        }
        if h.ends_at.get().is_some_and(|t| t <= now) {
            continue;
        }
        if !(id.starts_with("key_") && crate::openai::is_valid_id(id)) {
            unmatched += 1;
            continue;
        }
        alive.push(Logged {
            key_id: id.clone(),
            project_id: h.project_id.clone(),
        });
    }
    (alive, unmatched)
}

/// The inventory gaps of one organisation. `listed`: every key id the listing returned;
/// `complete_project`: whether a project is watched, not archived and completely listed;
/// `listing_began`: keys created since may be missing for that reason alone.
pub fn gaps(
    history: &History,
    listed: &HashSet<&str>,
    complete_project: impl Fn(&str) -> bool,
    listing_began: i64,
    now: i64,
) -> Gaps {
    let (alive, unmatched) = logged_alive(history, listed, listing_began, None, now);
    let mut missing: Vec<String> = (alive.into_iter())
        .filter(|l| l.project_id.as_deref().is_some_and(&complete_project))
        .map(|l| l.key_id.into_string())
        .collect();
    missing.sort();
    Gaps { missing, unmatched }
}

impl Intel {
    /// One line per organisation whose log shows keys the listing lacks (see [`gaps`]).
    pub fn gap_notes(&self, inv: &Inventory, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        for org in &inv.orgs {
            let Some(Ok(history)) = (self.orgs.iter())
                .find(|o| o.organization == org.organization)
                .map(|o| o.history.as_ref())
            else {
                continue;
            };
            let listed: HashSet<&str> = org
                .projects
                .iter()
                .flat_map(|p| p.keys.iter().map(|k| k.id.as_str()))
                .collect();
            let complete = |project: &str| {
                org.is_complete()
                    && (org.projects.iter()).any(|p| {
                        p.project.id == project && !p.project.archived && p.listing.is_complete()
                    })
            };
            let g = gaps(history, &listed, complete, now, now);
            if !g.missing.is_empty() {
                out.push(format!(
                    "organisation {}: inventory gap: the audit log shows {} key(s) created and \
                     not deleted that the listing did not return: {}",
                    org.organization,
                    g.missing.len(),
                    g.missing.join(", ")
                ));
            }
            if g.unmatched > 0 {
                out.push(format!(
                    "organisation {}: {} audit-log key id(s) could not be matched to a key",
                    org.organization, g.unmatched
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intel::{KeyHistory, Stamp};

    #[test]
    fn gaps_are_created_not_deleted_not_listed_keys_of_complete_projects() {
        let h = |created: i64, project: &str| KeyHistory {
            created_at: Stamp(created),
            project_id: Some(Arc::from(project)),
            ..KeyHistory::default()
        };
        let mut history = History::new();
        history.insert("key_gap".into(), h(10, "proj_a"));
        history.insert("key_listed".into(), h(10, "proj_a"));
        history.insert("key_new".into(), h(100, "proj_a"));
        history.insert("key_other".into(), h(10, "proj_unwatched"));
        history.insert("tracking-7".into(), h(10, "proj_a"));
        let deleted = KeyHistory {
            deleted_at: Stamp(20),
            ..h(10, "proj_a")
        };
        history.insert("key_deleted".into(), deleted);
        let expired = KeyHistory {
            ends_at: Stamp(50),
            ..h(10, "proj_a")
        };
        history.insert("key_expired".into(), expired);
        // Known only from an update (its creation is older than the log read): not a gap.
        history.insert("key_updated_only".into(), KeyHistory::default());
        let listed: HashSet<&str> = ["key_listed"].into_iter().collect();
        let g = gaps(&history, &listed, |p| p == "proj_a", 100, 100);
        assert_eq!(g.missing, vec!["key_gap".to_string()]);
        assert_eq!(g.unmatched, 1);
        // A project whose listing is not complete (or archived, or unwatched) has no gaps.
        let g = gaps(&history, &listed, |_| false, 100, 100);
        assert!(g.missing.is_empty());
    }
}
