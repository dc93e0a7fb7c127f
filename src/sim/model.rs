//! The simulated organisation as data: projects, members, service accounts, keys, admin keys.
//!
//! This is the one model the simulator serves from, and the JSON file format of
//! `keysweep simulate --org-file FILE` / `--dump-org FILE` (`SimOrg::to_json_pretty`). The model
//! is *normalised*: a key names its owner by id, and the owner's details (name, email, project
//! role, project access) live once in the organisation's `users`, the project's `members` or the
//! project's `service_accounts`. The server joins them into OpenAI's wire shape.
//!
//! File format (`format` = 1; every timestamp is Unix seconds):
//!
//! ```json
//! {
//!   "format": 1,
//!   "generated_at": 1767225600,
//!   "users": [
//!     {"id": "user_…", "name": "Alice Martin", "email": "alice.martin@example.com", "created_at": 1700000000}
//!   ],
//!   "admin_api_keys": [
//!     {"id": "key_…", "name": "Main Admin Key", "redacted_value": "sk-admin-****Xy12",
//!      "created_at": 1700000000, "expires_at": null, "last_used_at": 1767000000,
//!      "owner_user_id": "user_…"}
//!   ],
//!   "projects": [
//!     {"id": "proj_…", "name": "Payments", "created_at": 1690000000, "archived_at": null,
//!      "external_key_id": null,
//!      "members": [{"user_id": "user_…", "role": "member", "added_at": 1700000000, "access": "active"}],
//!      "service_accounts": [{"id": "svc_acct_…", "name": "billing-bot", "role": "member",
//!                            "created_at": 1700000000, "access": "active"}],
//!      "keys": [{"id": "key_…", "name": "ci-deploy", "redacted_value": "sk-proj-****Ab12",
//!                "created_at": 1710000000, "last_used_at": null,
//!                "owner": {"type": "user", "id": "user_…"},
//!                "expires_at": 1790000000, "scopes": ["api.all.read"]}]}
//!   ]
//! }
//! ```
//!
//! A project is archived when `archived_at` is not null. A key's `owner_project_access` on the
//! wire is the `access` of its owner's membership (`members[].access` or
//! `service_accounts[].access`). A key's `expires_at` (null: never expires) and `scopes` (the
//! restrictions the update endpoint sets; `[]` means all permissions) may be left out of a file
//! and default to never-expiring and unrestricted. Unknown fields in the file are rejected so that a typo does not
//! silently produce a different organisation. Ids need only be non-empty and unique: a file may
//! hold ids no real API would send (`..`, `key_b\n`, `proj/x`), which the simulator serves as
//! they are, so clients can be tested against hostile answers.
//!
//! This module never talks to the network and never holds a real secret: every value in the
//! model is made up (`redacted_value` is all there is of a key).

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::options::SimError;

/// Current version of the JSON file format.
pub const FORMAT_VERSION: u32 = 1;

/// A whole simulated organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimOrg {
    /// File format version; only [`FORMAT_VERSION`] is accepted.
    pub format: u32,
    /// The clock the organisation was generated against (informational: the server never reads
    /// it, the ages in the data are already absolute timestamps).
    pub generated_at: i64,
    /// Every user of the organisation, whether or not they are in a project.
    pub users: Vec<SimUser>,
    /// The organisation's admin keys, as listed by `GET /organization/admin_api_keys`.
    pub admin_api_keys: Vec<SimAdminKey>,
    pub projects: Vec<SimProject>,
}

/// An organisation user (the person; project roles live in [`SimMember`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimUser {
    pub id: String,
    pub name: String,
    pub email: String,
    /// When the user was created (the wire's `owner.user.created_at`).
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimAdminKey {
    pub id: String,
    pub name: Option<String>,
    pub redacted_value: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// The organisation owner who created it (must be in `users`).
    pub owner_user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimProject {
    pub id: String,
    pub name: Option<String>,
    pub created_at: i64,
    /// `Some` means archived: hidden from the project list unless `include_archived=true`.
    pub archived_at: Option<i64>,
    pub external_key_id: Option<String>,
    pub members: Vec<SimMember>,
    pub service_accounts: Vec<SimServiceAccount>,
    pub keys: Vec<SimKey>,
}

impl SimProject {
    pub fn is_archived(&self) -> bool {
        self.archived_at.is_some()
    }
}

/// A user's membership of one project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimMember {
    pub user_id: String,
    /// Project role: `owner` or `member`.
    pub role: String,
    pub added_at: i64,
    /// `inactive` models an owner who lost access to the project: their keys stay enabled but
    /// OpenAI's default listing hides them.
    pub access: SimAccess,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimServiceAccount {
    pub id: String,
    pub name: String,
    /// `owner`, `member` or `none`.
    pub role: String,
    pub created_at: i64,
    pub access: SimAccess,
}

/// One project API key. The secret itself never exists, only its redacted form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimKey {
    pub id: String,
    pub name: String,
    pub redacted_value: String,
    pub created_at: i64,
    /// `None` is served as `"last_used_at": null` (never used).
    pub last_used_at: Option<i64>,
    pub owner: SimOwnerRef,
    /// When the key stops working (`None`: never; served as `"expires_at": null`). A key whose
    /// `expires_at` is at or before the simulator's clock is expired. Optional in the file, so
    /// organisations written before November 2026 still load.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// The key's scope restrictions (`[]`: all permissions). Never on the wire's key object, as
    /// on OpenAI; visible through `GET /_sim/projects/{project_id}/api_keys/{api_key_id}`.
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl SimKey {
    /// Whether the key has expired by `now` (an expiry at `now` has taken effect).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Who owns a key: a project member or a project service account, by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SimOwnerRef {
    User { id: String },
    ServiceAccount { id: String },
}

impl SimOwnerRef {
    pub fn id(&self) -> &str {
        match self {
            SimOwnerRef::User { id } | SimOwnerRef::ServiceAccount { id } => id,
        }
    }

    pub fn is_service_account(&self) -> bool {
        matches!(self, SimOwnerRef::ServiceAccount { .. })
    }
}

/// `owner_project_access` as OpenAI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimAccess {
    Active,
    Inactive,
}

impl SimAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            SimAccess::Active => "active",
            SimAccess::Inactive => "inactive",
        }
    }
}

impl SimOrg {
    /// Loads and validates an organisation file (see the module doc for the format).
    pub fn from_json_file(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ReadOrg {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            SimError::ParseOrg { message, .. } => SimError::ParseOrg {
                path: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates an organisation from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, SimError> {
        // The optional `"history"` object is `SimHistory`'s (sim/history.rs), not the model's.
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SimError::ParseOrg {
                path: None,
                message: e.to_string(),
            })?;
        if let Some(obj) = value.as_object_mut() {
            obj.remove("history");
        }
        let org: SimOrg =
            serde_path_to_error::deserialize(value).map_err(|e| SimError::ParseOrg {
                path: None,
                message: format!("{}: {}", e.path(), e.inner()),
            })?;
        org.validate()?;
        Ok(org)
    }

    pub fn to_json_pretty(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail; fall back to an empty
        // object rather than panic if serde_json ever disagrees.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Keys in the non-archived projects, whatever their owner's access: what a default scan
    /// (`include_archived = false`, `owner_project_access=any`) must find.
    pub fn key_count(&self) -> usize {
        self.projects
            .iter()
            .filter(|p| !p.is_archived())
            .map(|p| p.keys.len())
            .sum()
    }

    /// Keys in every project, archived ones included.
    pub fn total_key_count(&self) -> usize {
        self.projects.iter().map(|p| p.keys.len()).sum()
    }

    pub fn project(&self, id: &str) -> Option<&SimProject> {
        self.projects.iter().find(|p| p.id == id)
    }

    /// Checks the invariants the server relies on: known format, unique ids, every reference
    /// resolves.
    pub fn validate(&self) -> Result<(), SimError> {
        let invalid = |msg: String| Err(SimError::InvalidOrg(msg));
        if self.format != FORMAT_VERSION {
            return invalid(format!(
                "format: unsupported version {} (expected {FORMAT_VERSION})",
                self.format
            ));
        }
        let mut users = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if !users.insert(u.id.as_str()) {
                return invalid(format!("users[{i}].id: duplicate id {}", u.id));
            }
        }
        let mut admin_ids = HashSet::new();
        for (i, k) in self.admin_api_keys.iter().enumerate() {
            if !admin_ids.insert(k.id.as_str()) {
                return invalid(format!("admin_api_keys[{i}].id: duplicate id {}", k.id));
            }
            if !users.contains(k.owner_user_id.as_str()) {
                return invalid(format!(
                    "admin_api_keys[{i}].owner_user_id: unknown user {}",
                    k.owner_user_id
                ));
            }
        }
        let mut projects = HashSet::new();
        let mut keys = HashSet::new();
        for (pi, p) in self.projects.iter().enumerate() {
            if p.id.is_empty() {
                return invalid(format!("projects[{pi}].id: empty"));
            }
            if !projects.insert(p.id.as_str()) {
                return invalid(format!("projects[{pi}].id: duplicate id {}", p.id));
            }
            validate_project(pi, p, &users, &mut keys)?;
        }
        Ok(())
    }
}

/// One project's members, service accounts and keys: ids unique (keys across the whole
/// organisation, hence `keys`), every reference resolves.
fn validate_project<'a>(
    pi: usize,
    p: &'a SimProject,
    users: &HashSet<&str>,
    keys: &mut HashSet<&'a str>,
) -> Result<(), SimError> {
    let invalid = |msg: String| Err(SimError::InvalidOrg(msg));
    let mut members = HashSet::new();
    for (mi, m) in p.members.iter().enumerate() {
        if !users.contains(m.user_id.as_str()) {
            return invalid(format!(
                "projects[{pi}].members[{mi}].user_id: unknown user {}",
                m.user_id
            ));
        }
        if !members.insert(m.user_id.as_str()) {
            return invalid(format!(
                "projects[{pi}].members[{mi}].user_id: duplicate member {}",
                m.user_id
            ));
        }
    }
    let mut sas = HashSet::new();
    for (si, s) in p.service_accounts.iter().enumerate() {
        if !sas.insert(s.id.as_str()) {
            return invalid(format!(
                "projects[{pi}].service_accounts[{si}].id: duplicate id {}",
                s.id
            ));
        }
    }
    for (ki, k) in p.keys.iter().enumerate() {
        if k.id.is_empty() {
            return invalid(format!("projects[{pi}].keys[{ki}].id: empty"));
        }
        if !keys.insert(k.id.as_str()) {
            return invalid(format!(
                "projects[{pi}].keys[{ki}].id: duplicate id {}",
                k.id
            ));
        }
        let known = match &k.owner {
            SimOwnerRef::User { id } => members.contains(id.as_str()),
            SimOwnerRef::ServiceAccount { id } => sas.contains(id.as_str()),
        };
        if !known {
            return invalid(format!(
                "projects[{pi}].keys[{ki}].owner: {} is not a member or service account of {}",
                k.owner.id(),
                p.id
            ));
        }
    }
    Ok(())
}
