//! The test hooks behind [`crate::sim::SimServer`]'s methods: read a key as the simulator sees
//! it, and change the organisation behind the API's back (last use, name, removal, owner
//! access, new keys, expiry, scopes), plus the whole organisation as a [`SimOrg`].
//!
//! These never go through faults or the expired-key rules: they model the world, not the API.

use super::{OrgState, ProjectData, SimKeySnapshot};
use crate::sim::model::{FORMAT_VERSION, SimAccess, SimKey, SimOrg, SimOwnerRef, SimProject};
use crate::sim::options::SimError;

impl OrgState {
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

    /// Moves (or removes: `None`) a key's expiry, as the dashboard can and the API cannot.
    pub fn set_expires_at(
        &self,
        project: &str,
        key: &str,
        at: Option<i64>,
    ) -> Result<(), SimError> {
        self.with_key(project, key, |d, i| d.keys[i].expires_at = at)
    }

    pub fn set_scopes(&self, project: &str, key: &str, scopes: &[String]) -> Result<(), SimError> {
        self.with_key(project, key, |d, i| d.keys[i].scopes = scopes.to_vec())
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
