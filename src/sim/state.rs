//! The running simulator's organisation: indexed for fast pages, mutable through DELETE and the
//! test hooks.
//!
//! Layout for speed (issue 7 serves 1,000 projects or 10,000-key projects at high concurrency):
//! the project table is built once and never changes shape, so it needs no lock; each project's
//! members, service accounts and keys sit behind their own `RwLock`, sorted by id, so a page is a
//! binary search for the cursor plus a short scan, serialised while the read lock is held (tens
//! of microseconds) and never across an `.await`.
//!
//! This module never renders faults and never sleeps; `server` does both.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::SimError;
use super::model::{
    FORMAT_VERSION, SimAccess, SimAdminKey, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject,
    SimServiceAccount, SimUser,
};
use super::wire;

/// A key as a test sees it through [`crate::sim::SimServer::keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimKeySnapshot {
    pub id: String,
    pub name: String,
    pub redacted_value: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub owner: SimOwnerRef,
    pub owner_project_access: SimAccess,
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

/// How a list page must be distorted (cursor faults are decided before selection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageTwist {
    None,
    CursorLoop,
    DuplicateIds,
}

/// A page request after validation.
#[derive(Debug, Clone)]
pub(crate) struct PageQuery {
    pub limit: usize,
    pub after: Option<String>,
    pub twist: PageTwist,
}

pub(crate) struct OrgState {
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
        }
    }
}

/// What a list selection produced, as indices into the sorted vector.
struct Selection {
    items: Vec<usize>,
    has_more: bool,
    /// The real cursor for the next page (id of the last item selected).
    last: Option<usize>,
}

/// Selects one page: the items strictly after `after` in id order that pass `admit`.
fn select<T>(
    items: &[T],
    id: impl Fn(&T) -> &str,
    admit: impl Fn(&T) -> bool,
    q: &PageQuery,
) -> Selection {
    let start = match &q.after {
        Some(a) => items.partition_point(|x| id(x) <= a.as_str()),
        None => 0,
    };
    let mut out = Vec::with_capacity(q.limit.min(items.len()));
    let mut has_more = false;
    for (i, item) in items.iter().enumerate().skip(start) {
        if !admit(item) {
            continue;
        }
        if out.len() == q.limit {
            has_more = true;
            break;
        }
        out.push(i);
    }
    let last = out.last().copied();
    match q.twist {
        PageTwist::None | PageTwist::CursorLoop => {}
        PageTwist::DuplicateIds => {
            let prev = items[..start].iter().rposition(&admit);
            match (prev, out.len()) {
                (Some(p), n) if n > 0 => out[0] = p,
                (None, n) if n >= 2 => out[1] = out[0],
                _ => {}
            }
        }
    }
    Selection {
        items: out,
        has_more,
        last,
    }
}

/// 1-based page number of a request: admitted items before the cursor / limit + 1.
fn page_number<T>(
    items: &[T],
    id: impl Fn(&T) -> &str,
    admit: impl Fn(&T) -> bool,
    after: Option<&str>,
    limit: usize,
) -> u32 {
    let before = match after {
        Some(a) => {
            let start = items.partition_point(|x| id(x) <= a);
            items[..start].iter().filter(|x| admit(x)).count()
        }
        None => 0,
    };
    u32::try_from(before / limit.max(1) + 1).unwrap_or(u32::MAX)
}

fn list_json<T: serde::Serialize>(
    data: Vec<T>,
    first_id: Option<&str>,
    last_id: Option<&str>,
    has_more: bool,
) -> Vec<u8> {
    let list = wire::List {
        object: wire::OBJ_LIST,
        data,
        first_id,
        last_id,
        has_more,
    };
    // Sized for a page of keys (~370 bytes each) so the buffer never regrows mid-page.
    let mut buf = Vec::with_capacity(128 + list.data.len() * 448);
    // Serialising borrowed strings and integers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, &list);
    buf
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
}

impl OrgState {
    pub fn new(org: SimOrg) -> Self {
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
            owner,
        }
    }

    // ---- pages -------------------------------------------------------------------------

    pub fn projects_page_number(&self, include_archived: bool, q: &PageQuery) -> u32 {
        page_number(
            &self.projects,
            |p| &p.id,
            |p| include_archived || !p.is_archived(),
            q.after.as_deref(),
            q.limit,
        )
    }

    pub fn list_projects(&self, include_archived: bool, q: &PageQuery) -> Vec<u8> {
        let sel = select(
            &self.projects,
            |p| &p.id,
            |p| include_archived || !p.is_archived(),
            q,
        );
        let data: Vec<_> = sel.items.iter().map(|&i| self.projects[i].wire()).collect();
        let first = sel.items.first().map(|&i| self.projects[i].id.as_str());
        let (last, has_more) = cursor(
            q,
            sel.last.map(|i| self.projects[i].id.as_str()),
            sel.has_more,
        );
        list_json(data, first, last, has_more)
    }

    pub fn get_project(&self, project: &str) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        Ok(serde_json::to_vec(&p.wire()).unwrap_or_default())
    }

    pub fn keys_page_number(&self, project: &str, filter: AccessFilter, q: &PageQuery) -> u32 {
        let Ok(p) = self.project(project) else {
            return 1;
        };
        let data = p.read();
        page_number(
            &data.keys,
            |k| &k.id,
            |k| filter.admits_key(&data, k),
            q.after.as_deref(),
            q.limit,
        )
    }

    pub fn list_keys(
        &self,
        project: &str,
        filter: AccessFilter,
        q: &PageQuery,
    ) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let data = p.read();
        let sel = select(&data.keys, |k| &k.id, |k| filter.admits_key(&data, k), q);
        let items: Vec<_> = sel
            .items
            .iter()
            .map(|&i| self.key_wire(&data, &data.keys[i]))
            .collect();
        let first = sel.items.first().map(|&i| data.keys[i].id.as_str());
        let (last, has_more) = cursor(q, sel.last.map(|i| data.keys[i].id.as_str()), sel.has_more);
        Ok(list_json(items, first, last, has_more))
    }

    pub fn get_key(&self, project: &str, key: &str) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let data = p.read();
        let i = data
            .key_pos(key)
            .map_err(|_| Refusal::NoKey(key.to_string()))?;
        Ok(serde_json::to_vec(&self.key_wire(&data, &data.keys[i])).unwrap_or_default())
    }

    /// DELETE of a key: user keys really go; service-account keys are refused like OpenAI does.
    pub fn delete_key(&self, project: &str, key: &str) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let mut data = p.write();
        let i = data
            .key_pos(key)
            .map_err(|_| Refusal::NoKey(key.to_string()))?;
        if data.keys[i].owner.is_service_account() {
            return Err(Refusal::ServiceAccountKey(key.to_string()));
        }
        let removed = data.keys.remove(i);
        let body = wire::Deleted {
            object: wire::OBJ_KEY_DELETED,
            id: &removed.id,
            deleted: true,
        };
        Ok(serde_json::to_vec(&body).unwrap_or_default())
    }

    pub fn list_service_accounts(&self, project: &str, q: &PageQuery) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        if p.is_archived() {
            return Err(Refusal::Archived(project.to_string()));
        }
        let data = p.read();
        let sel = select(&data.service_accounts, |s| &s.id, |_| true, q);
        let items: Vec<_> = sel
            .items
            .iter()
            .map(|&i| sa_wire(&data.service_accounts[i]))
            .collect();
        let first = sel
            .items
            .first()
            .map(|&i| data.service_accounts[i].id.as_str());
        let (last, has_more) = cursor(
            q,
            sel.last.map(|i| data.service_accounts[i].id.as_str()),
            sel.has_more,
        );
        Ok(list_json(items, first, last, has_more))
    }

    pub fn service_accounts_page_number(&self, project: &str, q: &PageQuery) -> u32 {
        let Ok(p) = self.project(project) else {
            return 1;
        };
        let data = p.read();
        page_number(
            &data.service_accounts,
            |s| &s.id,
            |_| true,
            q.after.as_deref(),
            q.limit,
        )
    }

    pub fn get_service_account(&self, project: &str, sa: &str) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let data = p.read();
        let s = data
            .service_account(sa)
            .ok_or_else(|| Refusal::NoServiceAccount(sa.to_string()))?;
        Ok(serde_json::to_vec(&sa_wire(s)).unwrap_or_default())
    }

    /// DELETE of a service account: it goes, and every key it owns goes with it.
    pub fn delete_service_account(&self, project: &str, sa: &str) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        if p.is_archived() {
            return Err(Refusal::Archived(project.to_string()));
        }
        let mut data = p.write();
        let i = data
            .service_accounts
            .binary_search_by(|s| s.id.as_str().cmp(sa))
            .map_err(|_| Refusal::NoServiceAccount(sa.to_string()))?;
        let removed = data.service_accounts.remove(i);
        data.keys.retain(
            |k| !matches!(&k.owner, SimOwnerRef::ServiceAccount { id } if *id == removed.id),
        );
        let body = wire::Deleted {
            object: wire::OBJ_SA_DELETED,
            id: &removed.id,
            deleted: true,
        };
        Ok(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// Project users: the members who currently have access.
    pub fn list_users(&self, project: &str, q: &PageQuery) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        if p.is_archived() {
            return Err(Refusal::Archived(project.to_string()));
        }
        let data = p.read();
        let sel = select(
            &data.members,
            |m| &m.user_id,
            |m| m.access == SimAccess::Active,
            q,
        );
        let items: Vec<_> = sel
            .items
            .iter()
            .map(|&i| {
                let m = &data.members[i];
                let u = self.user(&m.user_id);
                wire::ProjectUser {
                    object: wire::OBJ_PROJECT_USER,
                    id: &m.user_id,
                    name: u.map(|u| u.name.as_str()),
                    email: u.map(|u| u.email.as_str()),
                    role: &m.role,
                    added_at: m.added_at,
                }
            })
            .collect();
        let first = sel.items.first().map(|&i| data.members[i].user_id.as_str());
        let (last, has_more) = cursor(
            q,
            sel.last.map(|i| data.members[i].user_id.as_str()),
            sel.has_more,
        );
        Ok(list_json(items, first, last, has_more))
    }

    pub fn users_page_number(&self, project: &str, q: &PageQuery) -> u32 {
        let Ok(p) = self.project(project) else {
            return 1;
        };
        let data = p.read();
        page_number(
            &data.members,
            |m| &m.user_id,
            |m| m.access == SimAccess::Active,
            q.after.as_deref(),
            q.limit,
        )
    }

    /// Admin keys, ordered by creation time (`asc` or `desc`), cursor = id of the last one seen.
    pub fn list_admin_keys(&self, desc: bool, q: &PageQuery) -> Result<Vec<u8>, Refusal> {
        let ordered: Vec<&SimAdminKey> = if desc {
            self.admin_keys.iter().rev().collect()
        } else {
            self.admin_keys.iter().collect()
        };
        let start = match &q.after {
            Some(a) => {
                ordered
                    .iter()
                    .position(|k| &k.id == a)
                    .ok_or_else(|| Refusal::BadCursor(a.clone()))?
                    + 1
            }
            None => 0,
        };
        let end = (start + q.limit).min(ordered.len());
        let mut page: Vec<&SimAdminKey> = ordered[start..end].to_vec();
        let has_more = end < ordered.len();
        let last_real = page.last().map(|k| k.id.as_str());
        if q.twist == PageTwist::DuplicateIds {
            if start > 0 && !page.is_empty() {
                page[0] = ordered[start - 1];
            } else if page.len() >= 2 {
                page[1] = page[0];
            }
        }
        let items: Vec<_> = page
            .iter()
            .map(|k| {
                let owner = self.user(&k.owner_user_id);
                wire::AdminApiKey {
                    object: wire::OBJ_ADMIN_KEY,
                    id: &k.id,
                    name: k.name.as_deref(),
                    redacted_value: &k.redacted_value,
                    created_at: k.created_at,
                    expires_at: k.expires_at,
                    last_used_at: k.last_used_at,
                    owner: wire::AdminKeyOwner {
                        kind: "user",
                        object: "organization.user",
                        id: &k.owner_user_id,
                        name: owner.map_or("", |u| u.name.as_str()),
                        created_at: owner.map_or(0, |u| u.created_at),
                        role: "owner",
                    },
                }
            })
            .collect();
        let first = page.first().map(|k| k.id.as_str());
        let (last, has_more) = cursor(q, last_real, has_more);
        Ok(list_json(items, first, last, has_more))
    }

    pub fn admin_keys_page_number(&self, desc: bool, q: &PageQuery) -> u32 {
        let pos = match &q.after {
            Some(a) => {
                let found = if desc {
                    self.admin_keys.iter().rev().position(|k| &k.id == a)
                } else {
                    self.admin_keys.iter().position(|k| &k.id == a)
                };
                found.map_or(0, |i| i + 1)
            }
            None => 0,
        };
        u32::try_from(pos / q.limit.max(1) + 1).unwrap_or(u32::MAX)
    }

    // ---- hooks -------------------------------------------------------------------------

    pub fn keys(&self, project: &str) -> Vec<SimKeySnapshot> {
        let Ok(p) = self.project(project) else {
            return Vec::new();
        };
        let data = p.read();
        data.keys.iter().map(|k| data.snapshot(k)).collect()
    }

    pub fn key(&self, project: &str, key: &str) -> Option<SimKeySnapshot> {
        let p = self.project(project).ok()?;
        let data = p.read();
        let i = data.key_pos(key).ok()?;
        Some(data.snapshot(&data.keys[i]))
    }

    pub fn service_account_exists(&self, project: &str, sa: &str) -> bool {
        self.project(project)
            .is_ok_and(|p| p.read().service_account(sa).is_some())
    }

    fn with_key<R>(
        &self,
        project: &str,
        key: &str,
        f: impl FnOnce(&mut ProjectData, usize) -> R,
    ) -> Result<R, SimError> {
        let p = self
            .project(project)
            .map_err(|_| SimError::UnknownProject(project.to_string()))?;
        let mut data = p.write();
        let i = data.key_pos(key).map_err(|_| SimError::UnknownKey {
            project: project.to_string(),
            key: key.to_string(),
        })?;
        Ok(f(&mut data, i))
    }

    pub fn set_last_used(&self, project: &str, key: &str, ts: Option<i64>) -> Result<(), SimError> {
        self.with_key(project, key, |d, i| d.keys[i].last_used_at = ts)
    }

    pub fn rename_key(&self, project: &str, key: &str, name: &str) -> Result<(), SimError> {
        self.with_key(project, key, |d, i| d.keys[i].name = name.to_string())
    }

    pub fn remove_key(&self, project: &str, key: &str) -> Result<(), SimError> {
        self.with_key(project, key, |d, i| {
            d.keys.remove(i);
        })
    }

    /// Sets the project access of the key's owner (so of every key that owner holds here).
    pub fn set_owner_access(
        &self,
        project: &str,
        key: &str,
        access: SimAccess,
    ) -> Result<(), SimError> {
        let owner_missing = self.with_key(project, key, |d, i| {
            let owner = d.keys[i].owner.clone();
            match &owner {
                SimOwnerRef::User { id } => d.member_mut(id).map(|m| m.access = access),
                SimOwnerRef::ServiceAccount { id } => {
                    let pos = d
                        .service_accounts
                        .binary_search_by(|s| s.id.as_str().cmp(id));
                    pos.ok().map(|j| d.service_accounts[j].access = access)
                }
            }
            .is_none()
            .then_some(owner)
        })?;
        match owner_missing {
            Some(owner) => Err(SimError::UnknownOwner {
                project: project.to_string(),
                owner: owner.id().to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Adds a key; its owner must already be a member or service account of the project and
    /// its id must be new in the whole organisation.
    pub fn add_key(&self, project: &str, key: SimKey) -> Result<(), SimError> {
        let p = self
            .project(project)
            .map_err(|_| SimError::UnknownProject(project.to_string()))?;
        if self
            .projects
            .iter()
            .any(|other| other.read().key_pos(&key.id).is_ok())
        {
            return Err(SimError::DuplicateKey(key.id));
        }
        let mut data = p.write();
        let known = match &key.owner {
            SimOwnerRef::User { id } => data.member(id).is_some(),
            SimOwnerRef::ServiceAccount { id } => data.service_account(id).is_some(),
        };
        if !known {
            return Err(SimError::UnknownOwner {
                project: project.to_string(),
                owner: key.owner.id().to_string(),
            });
        }
        match data.key_pos(&key.id) {
            Ok(_) => Err(SimError::DuplicateKey(key.id)),
            Err(i) => {
                data.keys.insert(i, key);
                Ok(())
            }
        }
    }

    /// The organisation as it is now (after deletions and hook changes).
    pub fn snapshot(&self) -> SimOrg {
        SimOrg {
            format: FORMAT_VERSION,
            generated_at: self.generated_at,
            users: self.users.clone(),
            admin_api_keys: self.admin_keys.clone(),
            projects: self
                .projects
                .iter()
                .map(|p| {
                    let data = p.read();
                    SimProject {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        created_at: p.created_at,
                        archived_at: p.archived_at,
                        external_key_id: p.external_key_id.clone(),
                        members: data.members.clone(),
                        service_accounts: data.service_accounts.clone(),
                        keys: data.keys.clone(),
                    }
                })
                .collect(),
        }
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

/// `last_id`/`has_more` as sent: the real cursor, or a non-advancing one for `CursorLoop`.
fn cursor<'a>(q: &'a PageQuery, last: Option<&'a str>, has_more: bool) -> (Option<&'a str>, bool) {
    match q.twist {
        PageTwist::CursorLoop => (q.after.as_deref(), true),
        PageTwist::None | PageTwist::DuplicateIds => (last, has_more),
    }
}
