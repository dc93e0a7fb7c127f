//! The organisation's past as the audit log and the usage endpoints tell it: who created each
//! key, with which scopes, and how much each key was used, per day.
//!
//! Generated from the organisation when the server starts (`derive`), consistently with its
//! keys: a user key was created by its owner, a service-account key by an active project owner
//! (else any member, else the organisation's owner: the admin key's owner); the creation event
//! carries the key's scopes; usage records end on the day of `last_used_at`. An organisation
//! file may say it explicitly in an optional top-level `"history"` object (read by
//! [`SimHistory::from_org_json`], so `SimOrg` itself stays as it was):
//!
//! ```json
//! "history": {"keys": {"key_…": {"created_by": "user_…", "scopes_logged": false,
//!                                "in_log": true,
//!                                "usage": [{"at": 1767000000, "requests": 12, "cost_usd": 0.34}]}}}
//! ```
//!
//! Every field is optional: `created_by` (a user id) replaces the derived creator,
//! `scopes_logged = false` leaves `data.scopes` out of the creation event, `in_log = false`
//! leaves the creation out of the log altogether (a key older than the log), `usage` replaces the
//! generated records. This module never talks to the network and never reads the clock.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::generate::mix64;
use super::model::{SimAccess, SimKey, SimOrg, SimOwnerRef, SimProject};

/// What an organisation file says about its past (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimHistory {
    #[serde(default)]
    pub keys: BTreeMap<String, SimKeyHistory>,
}

/// One key's explicit past; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimKeyHistory {
    /// The user id of the creator (the actor of `api_key.created`).
    #[serde(default)]
    pub created_by: Option<String>,
    /// `false`: the creation event has no `data.scopes`.
    #[serde(default)]
    pub scopes_logged: Option<bool>,
    /// `false`: no creation event at all.
    #[serde(default)]
    pub in_log: Option<bool>,
    /// Replaces the generated usage records.
    #[serde(default)]
    pub usage: Option<Vec<SimUsage>>,
}

/// Usage of one key at one moment (summed into whatever bucket contains `at`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimUsage {
    pub at: i64,
    pub requests: u64,
    pub cost_usd: f64,
}

impl SimHistory {
    /// The `"history"` object of an organisation file's JSON, if any (the rest is `SimOrg`'s).
    pub fn from_org_json(text: &str) -> Result<Self, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_str(text)?;
        match v.get("history") {
            None | Some(serde_json::Value::Null) => Ok(SimHistory::default()),
            Some(h) => serde_json::from_value(h.clone()),
        }
    }
}

/// A key's creation as the log tells it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Creation {
    pub project: String,
    pub key: String,
    pub at: i64,
    /// The creator's user id.
    pub creator: String,
    /// `None`: `data.scopes` absent.
    pub scopes: Option<Vec<String>>,
}

/// One usage record, in micro-dollars so that sums are exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsageRecord {
    pub project: String,
    pub key: String,
    pub at: i64,
    pub requests: u64,
    pub cost_micros: u64,
}

/// The organisation owner: the owner of the oldest admin key (else the first user).
pub(crate) fn org_owner(org: &SimOrg) -> Option<String> {
    org.admin_api_keys
        .iter()
        .min_by_key(|k| (k.created_at, k.id.clone()))
        .map(|k| k.owner_user_id.clone())
        .or_else(|| org.users.first().map(|u| u.id.clone()))
}

/// Who created a key when nothing says otherwise.
pub(crate) fn derived_creator(p: &SimProject, k: &SimKey, owner: Option<&str>) -> Option<String> {
    match &k.owner {
        SimOwnerRef::User { id } => Some(id.clone()),
        SimOwnerRef::ServiceAccount { .. } => {
            let mut members: Vec<_> = p.members.iter().collect();
            members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            members
                .iter()
                .find(|m| m.role == "owner" && m.access == SimAccess::Active)
                .or_else(|| members.first())
                .map(|m| m.user_id.clone())
                .or_else(|| owner.map(str::to_string))
        }
    }
}

/// Every key's creation and usage, from the organisation and its explicit history.
pub(crate) fn derive(org: &SimOrg, h: &SimHistory) -> (Vec<Creation>, Vec<UsageRecord>) {
    let owner = org_owner(org);
    let mut creations = Vec::new();
    let mut usage = Vec::new();
    let empty = SimKeyHistory::default();
    for p in &org.projects {
        for k in &p.keys {
            let kh = h.keys.get(&k.id).unwrap_or(&empty);
            if kh.in_log != Some(false) {
                let creator = kh
                    .created_by
                    .clone()
                    .or_else(|| derived_creator(p, k, owner.as_deref()));
                if let Some(creator) = creator {
                    creations.push(Creation {
                        project: p.id.clone(),
                        key: k.id.clone(),
                        at: k.created_at,
                        creator,
                        scopes: (kh.scopes_logged != Some(false)).then(|| k.scopes.clone()),
                    });
                }
            }
            match &kh.usage {
                Some(list) => usage.extend(list.iter().map(|u| UsageRecord {
                    project: p.id.clone(),
                    key: k.id.clone(),
                    at: u.at,
                    requests: u.requests,
                    cost_micros: micros(u.cost_usd),
                })),
                None => usage.extend(generated_usage(p, k)),
            }
        }
    }
    (creations, usage)
}

/// Dollars to micro-dollars (negative and non-finite amounts are 0).
pub(crate) fn micros(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        // Saturating float-to-int cast; amounts are far below u64::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let m = (usd * 1_000_000.0).round() as u64;
        m
    } else {
        0
    }
}

const DAY: i64 = 86_400;

/// A used key's generated records: one at `last_used_at`, then back every 1–4 days over up to
/// 40 days, never before the key's creation. Seeded by the key id: the same key, the same past.
fn generated_usage(p: &SimProject, k: &SimKey) -> Vec<UsageRecord> {
    let Some(last) = k.last_used_at else {
        return Vec::new();
    };
    let mut seed =
        k.id.bytes()
            .fold(0x9e37_79b9_u64, |h, b| mix64(h ^ u64::from(b)));
    let mut out = Vec::new();
    let mut at = last;
    while at >= k.created_at && at > last - 40 * DAY {
        seed = mix64(seed);
        let requests = 1 + seed % 60;
        out.push(UsageRecord {
            project: p.id.clone(),
            key: k.id.clone(),
            at,
            requests,
            // 1,500 micro-dollars ($0.0015) per request.
            cost_micros: requests * 1_500,
        });
        let step = i64::try_from(1 + (seed >> 8) % 4).unwrap_or(1);
        at -= step * DAY;
    }
    out
}

/// Creator user id → e-mail, for actors.
pub(crate) fn emails(org: &SimOrg) -> HashMap<String, String> {
    org.users
        .iter()
        .map(|u| (u.id.clone(), u.email.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_org_file_with_a_history_loads_both_parts() {
        let org = SimOrg::generate(1, 3, 1, 1_796_083_200);
        let key = org.projects[0].keys[0].id.clone();
        let mut v: serde_json::Value = serde_json::from_str(&org.to_json_pretty()).unwrap();
        v["history"] = serde_json::json!({"keys": {key.clone(): {
            "created_by": org.users[0].id, "scopes_logged": false,
            "usage": [{"at": 1_796_000_000, "requests": 3, "cost_usd": 0.5}]}}});
        let text = v.to_string();
        assert_eq!(SimOrg::from_json_str(&text).unwrap(), org);
        let h = SimHistory::from_org_json(&text).unwrap();
        assert_eq!(h.keys[&key].scopes_logged, Some(false));
        assert_eq!(h.keys[&key].usage.as_ref().unwrap()[0].requests, 3);
        let (creations, usage) = derive(&org, &h);
        let c = creations.iter().find(|c| c.key == key).unwrap();
        assert_eq!(
            (c.creator.as_str(), c.scopes.as_ref()),
            (org.users[0].id.as_str(), None)
        );
        let mine: Vec<_> = usage.iter().filter(|u| u.key == key).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].cost_micros, 500_000);
        // A typo in the history is refused, as in the rest of the file.
        v["history"]["keys"][&key]["created_bye"] = serde_json::json!("x");
        assert!(SimHistory::from_org_json(&v.to_string()).is_err());
    }
}
