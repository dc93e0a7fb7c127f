//! Writes through the API: DELETE of a key or a service account, the November 2026 key update
//! (`POST …/api_keys/{id}`) and minting a service-account key.
//!
//! The request bodies arrive validated (`server` checks types and nulls); the rules that need
//! the organisation (expired keys, the organisation's expiry limit) are applied here. Nothing
//! here reads the clock: `now` is passed in.

use rand::Rng;
use rand::distr::Alphanumeric;

use super::{KeyUpdate, MintRequest, OrgState, Refusal};
use crate::sim::model::{SimKey, SimOwnerRef};
use crate::sim::wire;

/// A minted key's plaintext: `sk-svcacct-` and 64 random characters. It exists only in the one
/// response that returns it; the organisation keeps the redacted form.
fn new_secret() -> String {
    let tail: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(64)
        .map(char::from)
        .collect();
    format!("sk-svcacct-{tail}")
}

fn new_key_id() -> String {
    let tail: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    format!("key_{tail}")
}

impl OrgState {
    /// DELETE of a key, service-account keys included (the account and its other keys stay),
    /// unless the August 2026 rule refuses those with 400.
    pub fn delete_key(&self, project: &str, key: &str, now: i64) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let mut data = p.write();
        let i = self.find_key(&data, key, now)?;
        if self.rules.refuse_service_account_key_delete && data.keys[i].owner.is_service_account() {
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

    /// An expiry this many seconds out must fit the organisation's limit.
    fn check_expiry(&self, secs: i64) -> Result<(), Refusal> {
        match self.rules.max_key_lifetime {
            Some(limit) if secs > limit => Err(Refusal::ExpiryPolicy {
                requested: secs,
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// `POST …/api_keys/{api_key_id}`: moves the expiry and/or replaces the scopes, and answers
    /// with the key. An expired key is refused (400), as is an expiry beyond the limit.
    pub fn update_key(
        &self,
        project: &str,
        key: &str,
        update: &KeyUpdate,
        now: i64,
    ) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        let mut data = p.write();
        let i = self.find_key(&data, key, now)?;
        if data.keys[i].is_expired(now) {
            return Err(Refusal::Expired(key.to_string()));
        }
        if let Some(secs) = update.expires_in_seconds {
            self.check_expiry(secs)?;
            data.keys[i].expires_at = Some(now.saturating_add(secs));
        }
        if let Some(scopes) = &update.scopes {
            data.keys[i].scopes.clone_from(scopes);
        }
        Ok(serde_json::to_vec(&self.key_wire(&data, &data.keys[i])).unwrap_or_default())
    }

    /// `POST …/service_accounts/{id}/api_keys`: a new key of that service account, answered once
    /// with its plaintext `value`.
    pub fn mint_service_account_key(
        &self,
        project: &str,
        sa: &str,
        req: &MintRequest,
        now: i64,
    ) -> Result<Vec<u8>, Refusal> {
        let p = self.project(project)?;
        if p.is_archived() {
            return Err(Refusal::Archived(project.to_string()));
        }
        if p.read().service_account(sa).is_none() {
            return Err(Refusal::NoServiceAccount(sa.to_string()));
        }
        if let Some(secs) = req.expires_in_seconds {
            self.check_expiry(secs)?;
        }
        let value = new_secret();
        let mut id = new_key_id();
        // Ids are unique in the whole organisation; a clash of 16 random characters is
        // astronomically unlikely, but cheap to rule out.
        while self.projects.iter().any(|o| o.read().key_pos(&id).is_ok()) {
            id = new_key_id();
        }
        let key = SimKey {
            id,
            name: req.name.clone().unwrap_or_else(|| "Secret Key".to_string()),
            redacted_value: format!("sk-svcacct-****{}", &value[value.len() - 4..]),
            created_at: now,
            last_used_at: None,
            owner: SimOwnerRef::ServiceAccount { id: sa.to_string() },
            expires_at: req.expires_in_seconds.map(|s| now.saturating_add(s)),
            scopes: req.scopes.clone(),
        };
        let body = wire::ServiceAccountApiKey {
            object: wire::OBJ_SA_KEY,
            value: &value,
            name: &key.name,
            created_at: key.created_at,
            id: &key.id,
            expires_at: key.expires_at,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut data = p.write();
        // The account may have been deleted since the check above; then the key has no owner.
        if data.service_account(sa).is_none() {
            return Err(Refusal::NoServiceAccount(sa.to_string()));
        }
        if let Err(pos) = data.key_pos(&key.id) {
            data.keys.insert(pos, key);
        }
        Ok(bytes)
    }
}
