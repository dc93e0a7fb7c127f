//! The running simulator's organisation: indexed for fast pages, mutable through DELETE and the
//! test hooks.
//!
//! Layout for speed (issue 7 serves 1,000 projects or 10,000-key projects at high concurrency):
//! the project table is built once and never changes shape, so it needs no lock; each project's
//! members, service accounts and keys sit behind their own `RwLock`, sorted by id, so a page is a
//! binary search for the cursor plus a short scan, serialised while the read lock is held (tens
//! of microseconds) and never across an `.await`.
//!
//! Expiry: a key whose `expires_at` is at or before the simulator's clock is expired. By default
//! it stays listed and readable with its past `expires_at` (and cannot be updated); with
//! [`Rules::hide_expired`] it drops out of listings and GET/DELETE/update answer 404, as if
//! OpenAI had removed it. The clock itself lives in `server`: every call that needs it takes
//! `now`.
//!
//! Submodules: `pages` (lists and GETs), `write` (DELETE, update, mint), `hooks` (test hooks).
//! This module never renders faults, never sleeps and never reads the clock; `server` does all
//! three.

mod hooks;
mod pages;
mod write;

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use super::model::{
    SimAccess, SimAdminKey, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject, SimServiceAccount,
    SimUser,
};
use super::wire;

/// A key as a test sees it through [`crate::sim::SimServer::keys`] (and, as JSON, through
/// `GET /_sim/projects/{project_id}/api_keys/{api_key_id}`): the stored truth, scopes included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimKeySnapshot {
    pub id: String,
    pub name: String,
    pub redacted_value: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub owner: SimOwnerRef,
    pub owner_project_access: SimAccess,
    /// `None`: never expires.
    pub expires_at: Option<i64>,
    /// The key's scope restrictions (`[]`: all permissions); never on the API's key object.
    pub scopes: Vec<String>,
}

/// The organisation-wide rules the API applies, fixed when the server starts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rules {
    /// Expired keys drop out of listings and answer 404 (the other documented possibility).
    pub hide_expired: bool,
    /// The organisation's expiry limit in seconds: a longer `expires_in_seconds` is refused.
    pub max_key_lifetime: Option<i64>,
    /// The August 2026 API: DELETE of a service-account key answers 400.
    pub refuse_service_account_key_delete: bool,
}

/// Which keys a list request wants (`owner_project_access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessFilter {
    Active,
    Inactive,
    Any,
}

impl AccessFilter {
    /// Whether a key passes, computing its owner's access only when the filter needs it (a
    /// membership lookup per key is a large share of a page's cost at 10,000-key projects).
    fn admits_key(self, data: &ProjectData, k: &SimKey) -> bool {
        self == AccessFilter::Any || self.admits(data.access_of(&k.owner))
    }

    fn admits(self, access: SimAccess) -> bool {
        match self {
            AccessFilter::Any => true,
            AccessFilter::Active => access == SimAccess::Active,
            AccessFilter::Inactive => access == SimAccess::Inactive,
        }
    }
}

/// Which keys a key list admits: the owner-access filter, and the clock that decides which keys
/// have expired (they drop out only when expired keys are hidden).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyFilter {
    pub access: AccessFilter,
    pub now: i64,
}

/// A validated body of `POST …/api_keys/{api_key_id}`: at least one field is `Some`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyUpdate {
    /// Positive; the key expires this many seconds after the request.
    pub expires_in_seconds: Option<i64>,
    /// Replaces the key's scope restrictions.
    pub scopes: Option<Vec<String>>,
}

/// A validated body of `POST …/service_accounts/{id}/api_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MintRequest {
    pub name: Option<String>,
    pub scopes: Vec<String>,
    /// Positive, or `None` for a key that never expires.
    pub expires_in_seconds: Option<i64>,
}

/// How a list page must be distorted (cursor faults are decided before selection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageTwist {
    None,
    CursorLoop,
    DuplicateIds,
    LastIdAhead,
}

/// A page request after validation.
#[derive(Debug, Clone)]
pub(crate) struct PageQuery {
    pub limit: usize,
    pub after: Option<String>,
    pub twist: PageTwist,
}

pub(crate) struct OrgState {
    rules: Rules,
    generated_at: i64,
    users: Vec<SimUser>,
    user_index: HashMap<String, usize>,
    /// Sorted by `(created_at, id)`: the admin-key list's `order=asc`.
    admin_keys: Vec<SimAdminKey>,
    /// Sorted by id; never reshaped after start.
    projects: Vec<ProjectSlot>,
    project_index: HashMap<String, usize>,
}

pub(crate) struct ProjectSlot {
    pub id: String,
    pub name: Option<String>,
    pub created_at: i64,
    pub archived_at: Option<i64>,
    pub external_key_id: Option<String>,
    data: RwLock<ProjectData>,
}

impl ProjectSlot {
    pub fn is_archived(&self) -> bool {
        self.archived_at.is_some()
    }

    fn read(&self) -> RwLockReadGuard<'_, ProjectData> {
        // A poisoned lock means a panic elsewhere mid-update; the data is still well-formed
        // (every update is a single Vec operation), so keep serving.
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, ProjectData> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    fn wire(&self) -> wire::Project<'_> {
        wire::Project {
            id: &self.id,
            object: wire::OBJ_PROJECT,
            name: self.name.as_deref(),
            created_at: self.created_at,
            archived_at: self.archived_at,
            status: Some(if self.is_archived() {
                "archived"
            } else {
                "active"
            }),
            external_key_id: self.external_key_id.as_deref(),
        }
    }
}

struct ProjectData {
    /// Sorted by `user_id`.
    members: Vec<SimMember>,
    /// Sorted by id.
    service_accounts: Vec<SimServiceAccount>,
    /// Sorted by id: the stable list order, and the cursor is found by binary search.
    keys: Vec<SimKey>,
}

impl ProjectData {
    fn member(&self, user_id: &str) -> Option<&SimMember> {
        self.members
            .binary_search_by(|m| m.user_id.as_str().cmp(user_id))
            .ok()
            .map(|i| &self.members[i])
    }

    fn member_mut(&mut self, user_id: &str) -> Option<&mut SimMember> {
        self.members
            .binary_search_by(|m| m.user_id.as_str().cmp(user_id))
            .ok()
            .map(|i| &mut self.members[i])
    }

    fn service_account(&self, id: &str) -> Option<&SimServiceAccount> {
        self.service_accounts
            .binary_search_by(|s| s.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.service_accounts[i])
    }

    fn key_pos(&self, id: &str) -> Result<usize, usize> {
        self.keys.binary_search_by(|k| k.id.as_str().cmp(id))
    }

    fn access_of(&self, owner: &SimOwnerRef) -> SimAccess {
        let access = match owner {
            SimOwnerRef::User { id } => self.member(id).map(|m| m.access),
            SimOwnerRef::ServiceAccount { id } => self.service_account(id).map(|s| s.access),
        };
        // An owner that is not (or no longer) in the project has, by definition, no access.
        access.unwrap_or(SimAccess::Inactive)
    }

    fn snapshot(&self, k: &SimKey) -> SimKeySnapshot {
        SimKeySnapshot {
            id: k.id.clone(),
            name: k.name.clone(),
            redacted_value: k.redacted_value.clone(),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            owner: k.owner.clone(),
            owner_project_access: self.access_of(&k.owner),
            expires_at: k.expires_at,
            scopes: k.scopes.clone(),
        }
    }
}

/// Why a request cannot be answered with data (the server maps these to OpenAI's envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NoProject(String),
    NoKey(String),
    NoServiceAccount(String),
    Archived(String),
    ServiceAccountKey(String),
    BadCursor(String),
    /// An update of a key that has expired.
    Expired(String),
    /// An expiry longer than the organisation allows: (requested, limit) in seconds.
    ExpiryPolicy {
        requested: i64,
        limit: i64,
    },
}

impl OrgState {
    pub fn new(org: SimOrg, rules: Rules) -> Self {
        let SimOrg {
            generated_at,
            users,
            mut admin_api_keys,
            mut projects,
            ..
        } = org;
        let user_index = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.clone(), i))
            .collect();
        admin_api_keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        projects.sort_by(|a, b| a.id.cmp(&b.id));
        let projects: Vec<ProjectSlot> = projects
            .into_iter()
            .map(|p| {
                let SimProject {
                    id,
                    name,
                    created_at,
                    archived_at,
                    external_key_id,
                    mut members,
                    mut service_accounts,
                    mut keys,
                } = p;
                members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
                service_accounts.sort_by(|a, b| a.id.cmp(&b.id));
                keys.sort_by(|a, b| a.id.cmp(&b.id));
                ProjectSlot {
                    id,
                    name,
                    created_at,
                    archived_at,
                    external_key_id,
                    data: RwLock::new(ProjectData {
                        members,
                        service_accounts,
                        keys,
                    }),
                }
            })
            .collect();
        let project_index = projects
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect();
        OrgState {
            rules,
            generated_at,
            users,
            user_index,
            admin_keys: admin_api_keys,
            projects,
            project_index,
        }
    }

    pub fn project(&self, id: &str) -> Result<&ProjectSlot, Refusal> {
        self.project_index
            .get(id)
            .map(|&i| &self.projects[i])
            .ok_or_else(|| Refusal::NoProject(id.to_string()))
    }

    fn user(&self, id: &str) -> Option<&SimUser> {
        self.user_index.get(id).map(|&i| &self.users[i])
    }

    fn key_wire<'a>(&'a self, data: &'a ProjectData, k: &'a SimKey) -> wire::ProjectApiKey<'a> {
        let owner = match &k.owner {
            SimOwnerRef::User { id } => {
                let member = data.member(id);
                let user = self.user(id);
                wire::KeyOwner {
                    kind: "user",
                    user: Some(wire::KeyOwnerUser {
                        id,
                        name: user.map_or("", |u| u.name.as_str()),
                        email: user.map_or("", |u| u.email.as_str()),
                        role: member.map_or("member", |m| m.role.as_str()),
                        created_at: user.map_or(0, |u| u.created_at),
                    }),
                    service_account: None,
                }
            }
            SimOwnerRef::ServiceAccount { id } => {
                let sa = data.service_account(id);
                wire::KeyOwner {
                    kind: "service_account",
                    user: None,
                    service_account: Some(wire::KeyOwnerServiceAccount {
                        id,
                        name: sa.map_or("", |s| s.name.as_str()),
                        role: sa.map_or("member", |s| s.role.as_str()),
                        created_at: sa.map_or(0, |s| s.created_at),
                    }),
                }
            }
        };
        wire::ProjectApiKey {
            object: wire::OBJ_KEY,
            redacted_value: &k.redacted_value,
            name: &k.name,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            id: &k.id,
            owner_project_access: data.access_of(&k.owner).as_str(),
            expires_at: k.expires_at,
            owner,
        }
    }

    fn visible(&self, k: &SimKey, now: i64) -> bool {
        !(self.rules.hide_expired && k.is_expired(now))
    }

    /// The position of a key a client may see: an unknown key, or an expired one when expired
    /// keys are hidden, is `NoKey` (OpenAI's 404).
    fn find_key(&self, data: &ProjectData, key: &str, now: i64) -> Result<usize, Refusal> {
        data.key_pos(key)
            .ok()
            .filter(|&i| self.visible(&data.keys[i], now))
            .ok_or_else(|| Refusal::NoKey(key.to_string()))
    }
}

fn sa_wire(s: &SimServiceAccount) -> wire::ProjectServiceAccount<'_> {
    wire::ProjectServiceAccount {
        object: wire::OBJ_SA,
        id: &s.id,
        name: &s.name,
        role: &s.role,
        created_at: s.created_at,
    }
}
