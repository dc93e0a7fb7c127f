//! The inventory: what keysweep knows about every key, in our own terms.
//!
//! `openai/` converts wire objects into these types; `policy/`, `state/`, `notify/` and the
//! reports only ever see these. Nothing here holds a secret: a key is known by its id, name and
//! `redacted_value` only.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerType {
    User,
    ServiceAccount,
    /// The API did not say (the spec makes `owner.type` optional).
    Unknown,
}

impl OwnerType {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerType::User => "user",
            OwnerType::ServiceAccount => "service_account",
            OwnerType::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    #[serde(rename = "type")]
    pub kind: OwnerType,
    /// `user_…` or `svc_acct_…`.
    pub id: Option<String>,
    pub name: Option<String>,
    /// Only users have one, and even then it may be missing.
    pub email: Option<String>,
}

impl Owner {
    /// What a human should read: the e-mail, else the name, else the id.
    pub fn display(&self) -> &str {
        self.email
            .as_deref()
            .or(self.name.as_deref())
            .or(self.id.as_deref())
            .unwrap_or("unknown")
    }
}

/// `owner_project_access` of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerAccess {
    Active,
    Inactive,
    /// Absent from the answer (older API versions).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectRef {
    pub organization: String,
    pub id: String,
    pub name: Option<String>,
    pub archived: bool,
}

impl ProjectRef {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// One project API key as keysweep sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Key {
    pub organization: String,
    pub project_id: String,
    pub project_name: Option<String>,
    pub id: String,
    pub name: String,
    pub redacted_value: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` when the API says `null` or omits it (never used / unknown).
    pub last_used_at: Option<i64>,
    pub owner: Owner,
    pub owner_access: OwnerAccess,
}

/// Whether a project's listing can be trusted as the whole truth. Only a complete listing may
/// lead to a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Listing {
    Complete,
    Incomplete(String),
}

impl Listing {
    pub fn is_complete(&self) -> bool {
        matches!(self, Listing::Complete)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProjectInventory {
    pub project: ProjectRef,
    pub keys: Vec<Key>,
    pub listing: Listing,
}

/// The organisation's admin keys, for the expiry warning.
#[derive(Debug, Clone, Serialize)]
pub struct AdminKeyInfo {
    pub id: String,
    pub name: Option<String>,
    pub redacted_value: String,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrgInventory {
    pub organization: String,
    pub projects: Vec<ProjectInventory>,
    /// Set when the organisation could not be listed at all (e.g. the project list failed or
    /// the admin key was refused); then `projects` may be empty or partial.
    pub error: Option<String>,
    /// The error above is the admin key being refused (401/403): an enforcer alert of its own.
    #[serde(default)]
    pub unauthorized: bool,
    pub admin_keys: Vec<AdminKeyInfo>,
}

impl OrgInventory {
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.projects.iter().all(|p| p.listing.is_complete())
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub orgs: Vec<OrgInventory>,
}

impl Inventory {
    pub fn is_complete(&self) -> bool {
        self.orgs.iter().all(OrgInventory::is_complete)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.orgs
            .iter()
            .flat_map(|o| o.projects.iter().flat_map(|p| p.keys.iter()))
    }
}
