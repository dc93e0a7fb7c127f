//! The inventory: what keysweep knows about every key, in our own terms.
//!
//! `openai/` converts wire objects into these types; `policy/`, `state/`, `notify/` and the
//! reports only ever see these. Nothing here holds a secret: a key is known by its id, name and
//! `redacted_value` only.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    /// Unix seconds; `None` when the API says `null` (no use recorded) or omits it.
    pub last_used_at: Option<i64>,
    /// The API omitted `last_used_at`, a field the spec requires: when the key was last used is
    /// unknown, so no policy about use decides anything from this listing of it (a malformed
    /// answer never leads to a revocation). Serialized only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub last_used_unknown: bool,
    pub owner: Owner,
    pub owner_access: OwnerAccess,
    /// When OpenAI ends the key. Serialized as the API gives it (Unix seconds, or `null` for
    /// never) and left out when unknown, so JSON keeps the three cases apart.
    #[serde(skip_serializing_if = "Expiry::is_unknown")]
    pub expires_at: Expiry,
}

/// A key's `expires_at`, keeping apart the API's three answers. Absent (older responses) is
/// [`Expiry::Unknown`]: never a reason to write, since the key may well have an expiry we cannot
/// see. `null` is [`Expiry::Never`]; a number is [`Expiry::At`] that Unix second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Expiry {
    #[default]
    Unknown,
    Never,
    At(i64),
}

impl Expiry {
    /// From a field that may be absent (outer `None`) or `null` (`Some(None)`).
    pub fn from_wire(field: Option<Option<i64>>) -> Expiry {
        match field {
            None => Expiry::Unknown,
            Some(None) => Expiry::Never,
            Some(Some(at)) => Expiry::At(at),
        }
    }

    /// The Unix second the key ends, when known to end.
    pub fn at(self) -> Option<i64> {
        match self {
            Expiry::At(at) => Some(at),
            Expiry::Never | Expiry::Unknown => None,
        }
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Expiry::Unknown)
    }

    /// Whether the key has ended at `now` (an expiry at `now` itself counts, as in the API).
    pub fn is_expired(self, now: i64) -> bool {
        self.at().is_some_and(|at| at <= now)
    }

    /// Whether the key ends at or before `deadline` (within [`EXPIRY_TOLERANCE`], since the
    /// server times an update itself): then nothing needs writing to meet that deadline.
    pub fn ends_by(self, deadline: i64) -> bool {
        self.at()
            .is_some_and(|at| at <= deadline.saturating_add(EXPIRY_TOLERANCE))
    }

    /// Whether the key is known to outlive `deadline`: it never ends, or ends later. Unknown is
    /// neither this nor [`Expiry::ends_by`]: it is never a reason to write.
    pub fn outlives(self, deadline: i64) -> bool {
        !self.is_unknown() && !self.ends_by(deadline)
    }
}

/// How far apart two expiries may be and still count as the same (seconds). The server computes
/// `expires_at` from `expires_in_seconds` against its own clock at its own moment, so the expiry
/// read back differs from the one aimed at by the request's latency and the clocks' skew.
pub const EXPIRY_TOLERANCE: i64 = 120;

/// Whether an expiry read back matches `target` within [`EXPIRY_TOLERANCE`].
pub fn expiry_matches(found: Expiry, target: i64) -> bool {
    found
        .at()
        .is_some_and(|at| at.abs_diff(target) <= EXPIRY_TOLERANCE.unsigned_abs())
}

impl Serialize for Expiry {
    /// Unix seconds, or `null` (never, and unknown when a caller does not skip it).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.at().serialize(s)
    }
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

/// One project's listing. `K` is what was kept of its keys: all of them (`Vec<Key>`, for
/// `scan`) or only their [`KeyTally`] (a sweep, which streams the keys page by page).
#[derive(Debug, Clone, Serialize)]
pub struct ProjectInventory<K = Vec<Key>> {
    pub project: ProjectRef,
    pub keys: K,
    pub listing: Listing,
}

/// How many keys a listing kept, whatever form it kept them in.
pub trait KeyCount {
    fn key_count(&self) -> usize;
}

impl KeyCount for Vec<Key> {
    fn key_count(&self) -> usize {
        self.len()
    }
}

/// What a sweep keeps of a project's keys once they are evaluated and recorded: counts for the
/// metrics, the base of the per-project cap, and each service account's keys (an account is
/// deleted only when every one of its keys is due). Its size grows with service-account keys,
/// never with the other keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyTally {
    pub keys: usize,
    pub by_owner_age: BTreeMap<(OwnerType, AgeBand), u64>,
    /// Keys by owner type and expiry state, and those expiring within [`EXPIRING_SOON`].
    pub by_owner_expiry: BTreeMap<(OwnerType, ExpiryStatus), u64>,
    pub expiring_soon: BTreeMap<OwnerType, u64>,
    /// Service-account id → ids of its keys in the project.
    pub service_accounts: BTreeMap<String, BTreeSet<String>>,
}

impl KeyTally {
    pub fn add(&mut self, keys: &[Key], now: i64) {
        self.keys += keys.len();
        for k in keys {
            *self
                .by_owner_age
                .entry((k.owner.kind, AgeBand::of(k.created_at, now)))
                .or_default() += 1;
            let expiry = ExpiryStatus::of(k.expires_at, now);
            *self
                .by_owner_expiry
                .entry((k.owner.kind, expiry))
                .or_default() += 1;
            if ExpiryStatus::expires_soon(k.expires_at, now) {
                *self.expiring_soon.entry(k.owner.kind).or_default() += 1;
            }
            if k.owner.kind == OwnerType::ServiceAccount
                && let Some(sa) = &k.owner.id
            {
                self.service_accounts
                    .entry(sa.clone())
                    .or_default()
                    .insert(k.id.clone());
            }
        }
    }

    pub fn of(keys: &[Key], now: i64) -> KeyTally {
        let mut t = KeyTally::default();
        t.add(keys, now);
        t
    }
}

impl KeyCount for KeyTally {
    fn key_count(&self) -> usize {
        self.keys
    }
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
pub struct OrgInventory<K = Vec<Key>> {
    pub organization: String,
    pub projects: Vec<ProjectInventory<K>>,
    /// Set when the organisation could not be listed at all (e.g. the project list failed or
    /// the admin key was refused); then `projects` may be empty or partial.
    pub error: Option<String>,
    /// The error above is the admin key being refused (401/403): an enforcer alert of its own.
    #[serde(default)]
    pub unauthorized: bool,
    pub admin_keys: Vec<AdminKeyInfo>,
}

impl<K> OrgInventory<K> {
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.projects.iter().all(|p| p.listing.is_complete())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory<K = Vec<Key>> {
    pub orgs: Vec<OrgInventory<K>>,
}

impl<K> Default for Inventory<K> {
    fn default() -> Self {
        Self { orgs: Vec::new() }
    }
}

impl<K> Inventory<K> {
    pub fn is_complete(&self) -> bool {
        self.orgs.iter().all(OrgInventory::is_complete)
    }

    /// The same listing with each project's keys turned into `f(keys)`.
    pub fn map_keys<T>(&self, mut f: impl FnMut(&K) -> T) -> Inventory<T> {
        Inventory {
            orgs: self
                .orgs
                .iter()
                .map(|o| OrgInventory {
                    organization: o.organization.clone(),
                    projects: o
                        .projects
                        .iter()
                        .map(|p| ProjectInventory {
                            project: p.project.clone(),
                            keys: f(&p.keys),
                            listing: p.listing.clone(),
                        })
                        .collect(),
                    error: o.error.clone(),
                    unauthorized: o.unauthorized,
                    admin_keys: o.admin_keys.clone(),
                })
                .collect(),
        }
    }
}

impl<K: KeyCount> Inventory<K> {
    pub fn key_count(&self) -> usize {
        self.orgs
            .iter()
            .flat_map(|o| &o.projects)
            .map(|p| p.keys.key_count())
            .sum()
    }
}

impl Inventory {
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.orgs
            .iter()
            .flat_map(|o| o.projects.iter().flat_map(|p| p.keys.iter()))
    }
}

/// Age bands of keys by creation time (the `keysweep_keys_by_age` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum AgeBand {
    Under30d,
    From30To90d,
    From90To180d,
    From180To365d,
    Over365d,
}

impl AgeBand {
    pub const ALL: [AgeBand; 5] = [
        AgeBand::Under30d,
        AgeBand::From30To90d,
        AgeBand::From90To180d,
        AgeBand::From180To365d,
        AgeBand::Over365d,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgeBand::Under30d => "<30d",
            AgeBand::From30To90d => "30-90d",
            AgeBand::From90To180d => "90-180d",
            AgeBand::From180To365d => "180-365d",
            AgeBand::Over365d => ">365d",
        }
    }

    /// The band of a key created at `created_at` (Unix seconds) as seen at `now`. A creation time
    /// in the future (clock skew) counts as new.
    pub fn of(created_at: i64, now: i64) -> AgeBand {
        let days = now.saturating_sub(created_at).max(0) / 86_400;
        match days {
            0..30 => AgeBand::Under30d,
            30..90 => AgeBand::From30To90d,
            90..180 => AgeBand::From90To180d,
            180..365 => AgeBand::From180To365d,
            _ => AgeBand::Over365d,
        }
    }
}

/// How far ahead `keysweep_keys_expiring_within_7d` looks: 7 days.
pub const EXPIRING_SOON: i64 = 7 * 86_400;

/// Where a key stands with its expiry at a moment: the `expiry` label of
/// `keysweep_keys_by_expiry` and the `expiry_state` of `scan`'s JSON and CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ExpiryStatus {
    /// `expires_at: null`: OpenAI never ends the key.
    None,
    /// An expiry still ahead.
    Set,
    /// An expiry at or before the moment (the key may stay listed).
    Expired,
    /// The API's answer did not carry the field (an older version).
    Unknown,
}

impl ExpiryStatus {
    pub const ALL: [ExpiryStatus; 4] = [
        ExpiryStatus::None,
        ExpiryStatus::Set,
        ExpiryStatus::Expired,
        ExpiryStatus::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExpiryStatus::None => "none",
            ExpiryStatus::Set => "set",
            ExpiryStatus::Expired => "expired",
            ExpiryStatus::Unknown => "unknown",
        }
    }

    pub fn of(e: Expiry, now: i64) -> ExpiryStatus {
        match e {
            Expiry::Unknown => ExpiryStatus::Unknown,
            Expiry::Never => ExpiryStatus::None,
            Expiry::At(_) if e.is_expired(now) => ExpiryStatus::Expired,
            Expiry::At(_) => ExpiryStatus::Set,
        }
    }

    /// Whether `e` falls after `now` and within [`EXPIRING_SOON`] of it.
    pub fn expires_soon(e: Expiry, now: i64) -> bool {
        e.at()
            .is_some_and(|at| at > now && at <= now.saturating_add(EXPIRING_SOON))
    }
}

/// A project's service account (`GET …/service_accounts`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceAccount {
    /// `svc_acct_…`.
    pub id: String,
    pub name: String,
    /// `owner`, `member` or `none`.
    pub role: String,
    pub created_at: i64,
}

/// A project's user (`GET …/users`). `name` and `email` may be missing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectUser {
    /// `user_…`.
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// `owner` or `member`.
    pub role: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_tolerance_is_two_minutes_either_way() {
        let t = 1_800_000_000;
        assert!(expiry_matches(Expiry::At(t + 120), t));
        assert!(expiry_matches(Expiry::At(t - 120), t));
        assert!(!expiry_matches(Expiry::At(t + 121), t));
        assert!(!expiry_matches(Expiry::At(t - 121), t));
        assert!(!expiry_matches(Expiry::Never, t));
        assert!(!expiry_matches(Expiry::Unknown, t));
        assert!(Expiry::At(t + 120).ends_by(t));
        assert!(!Expiry::At(t + 121).ends_by(t));
        assert!(!Expiry::Never.ends_by(t));
        assert!(!Expiry::Unknown.ends_by(t));
    }
}
