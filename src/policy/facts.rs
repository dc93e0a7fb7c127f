//! What the audit log and the usage endpoints say about keys beyond their listing (issue 16),
//! in the form the rules read: which keys are known to have All permissions, and when each key
//! was last seen used in a usage bucket.
//!
//! Plain data, filled by the sweep (and `scan`) from `intel` before any key is evaluated, and
//! handed to [`crate::policy::Policies::with_facts`]. Like all of `policy/`, this file must never
//! do I/O or read a clock. It must never turn "unknown" into a fact: an organisation whose log
//! could not be read has no scopes at all (a condition on them is undecided), and a key whose
//! scopes the log does not carry is not known to be unrestricted.

use std::collections::{HashMap, HashSet};

/// Every organisation's [`OrgFacts`], by organisation name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFacts {
    orgs: HashMap<String, OrgFacts>,
}

/// One organisation's facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgFacts {
    /// The keys known to have All permissions (their latest scopes in the log are `[]`).
    /// `None`: the audit log could not be read in this sweep, so no key's scopes are known
    /// (or no policy judges `unrestricted`, and the sweep did not collect them).
    pub unrestricted: Option<HashSet<String>>,
    /// When each key was last seen used by the usage endpoints (Unix seconds). Empty when
    /// usage could not be read: then `last_used_at` alone says when a key was used (or when no
    /// policy judges `max_idle`, and the sweep did not collect them).
    pub used_at: HashMap<String, i64>,
}

/// Whether a key is known to have All permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scopes {
    /// The log says its scopes are `[]`.
    Unrestricted,
    /// The log says other scopes, or does not say (unknown scopes never count as All).
    NotKnownUnrestricted,
    /// The log could not be read: nothing can be concluded either way.
    Undecided,
}

impl KeyFacts {
    /// Sets `organization`'s facts (replacing any).
    pub fn insert(&mut self, organization: impl Into<String>, facts: OrgFacts) {
        self.orgs.insert(organization.into(), facts);
    }

    /// Whether `key_id` of `organization` is known to have All permissions. An organisation
    /// without facts is undecided.
    pub fn scopes(&self, organization: &str, key_id: &str) -> Scopes {
        match self.orgs.get(organization).map(|o| o.unrestricted.as_ref()) {
            Some(Some(all)) if all.contains(key_id) => Scopes::Unrestricted,
            Some(Some(_)) => Scopes::NotKnownUnrestricted,
            Some(None) | None => Scopes::Undecided,
        }
    }

    /// When the usage endpoints last saw `key_id` used, if they did.
    pub fn used_at(&self, organization: &str, key_id: &str) -> Option<i64> {
        self.orgs.get(organization)?.used_at.get(key_id).copied()
    }
}
