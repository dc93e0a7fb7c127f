//! Unit, table and property tests of the pure policy modules, with small builders shared by
//! them. Everything here constructs the real config and domain types: there is no I/O to fake.

mod lifecycle;
mod plan;
mod props;
mod rules;
mod verdict;

use std::time::Duration;

use crate::config::{Action, ExemptionConfig, PolicyConfig, Selector};
use crate::inventory::{Key, Owner, OwnerAccess, OwnerType};

pub(super) const HOUR: i64 = 3_600;
pub(super) const DAY: i64 = 86_400;

pub(super) fn dur(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap())
}

/// A user key in `acme/proj_a` ("Alpha"), created at 0, never used, owner active.
pub(super) fn key(id: &str) -> Key {
    Key {
        organization: "acme".to_string(),
        project_id: "proj_a".to_string(),
        project_name: Some("Alpha".to_string()),
        id: id.to_string(),
        name: format!("name-{id}"),
        redacted_value: format!("sk-...{id}"),
        created_at: 0,
        last_used_at: None,
        last_used_unknown: false,
        owner: Owner {
            kind: OwnerType::User,
            id: Some("user_1".to_string()),
            name: Some("Alice".to_string()),
            email: Some("alice@example.com".to_string()),
        },
        owner_access: OwnerAccess::Active,
        expires_at: crate::inventory::Expiry::Unknown,
    }
}

/// A service-account key of `sa` in `acme/<project>`.
pub(super) fn sa_key(id: &str, project: &str, sa: &str) -> Key {
    let mut k = key(id);
    k.project_id = project.to_string();
    k.owner = Owner {
        kind: OwnerType::ServiceAccount,
        id: Some(sa.to_string()),
        name: Some(format!("bot-{sa}")),
        email: None,
    };
    k
}

/// A `notify` policy with no selector and no condition (tests add what they need).
pub(super) fn policy(name: &str) -> PolicyConfig {
    PolicyConfig {
        name: name.to_string(),
        selector: Selector::default(),
        max_age: None,
        max_idle: None,
        never_used_grace: None,
        owner_lost_access: false,
        name_pattern: None,
        max_lifetime: None,
        unrestricted: false,
        action: Action::Notify,
        warn_before: dur(7 * DAY),
        final_notice: dur(DAY),
        notify: Vec::new(),
    }
}

pub(super) fn exemption(reason: &str) -> ExemptionConfig {
    ExemptionConfig {
        key_id: None,
        key_name: None,
        project: None,
        reason: reason.to_string(),
        until: None,
    }
}
