//! Findings: one (key, policy) pair that violates policy, and where it stands in its lifecycle.
//!
//! A finding is created when a key first violates a policy and is closed when the key is
//! revoked, disappears, stops violating or is exempted. Its `deadline` is fixed when it is first
//! detected and never moves silently. These are plain data: `policy::lifecycle` decides the
//! transitions, `state` persists them, `notify` renders the notices.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Action;
use crate::inventory::{Expiry, Key, Owner, OwnerAccess, OwnerType};

/// Lifecycle stage of a finding: detected → warned → final notice → revoked (or, for `expire`,
/// expired: OpenAI ended the key at the expiry keysweep set), or closed early as resolved /
/// exempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Detected,
    Warned,
    FinalNotice,
    Revoked,
    Resolved,
    Exempted,
    /// The key reached the expiry at its deadline (an `expire` finding's end).
    Expired,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Detected => "detected",
            Stage::Warned => "warned",
            Stage::FinalNotice => "final_notice",
            Stage::Revoked => "revoked",
            Stage::Resolved => "resolved",
            Stage::Exempted => "exempted",
            Stage::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Some(match s {
            "detected" => Stage::Detected,
            "warned" => Stage::Warned,
            "final_notice" => Stage::FinalNotice,
            "revoked" => Stage::Revoked,
            "resolved" => Stage::Resolved,
            "exempted" => Stage::Exempted,
            "expired" => Stage::Expired,
            _ => return None,
        })
    }

    /// Closed findings are kept for history but no longer acted on.
    pub fn is_open(self) -> bool {
        matches!(self, Stage::Detected | Stage::Warned | Stage::FinalNotice)
    }
}

/// Identity of a finding: organisation, project, key and policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FindingId {
    pub organization: String,
    pub project_id: String,
    pub key_id: String,
    pub policy: String,
}

impl FindingId {
    /// The key this finding is about, (organisation, project id, key id): what the findings of
    /// one key under several policies share.
    pub fn key_ref(&self) -> (&str, &str, &str) {
        (&self.organization, &self.project_id, &self.key_id)
    }

    /// `org/project/key/policy`: the PagerDuty `dedup_key` and a stable log field.
    pub fn dedup_key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.organization, self.project_id, self.key_id, self.policy
        )
    }
}

/// A persisted finding. Carries a snapshot of what a human needs to recognise the key; never a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub id: FindingId,
    pub project_name: Option<String>,
    pub key_name: String,
    pub redacted_value: String,
    pub owner_type: OwnerType,
    /// E-mail, service-account name or id, for display.
    pub owner: String,
    /// The owner's e-mail when the API gave one (used for `owner = true` routing).
    pub owner_email: Option<String>,
    /// Inputs the decision was made on.
    pub created_at: i64,
    /// `None`: never used, unless [`Finding::last_used_unknown`].
    pub last_used_at: Option<i64>,
    /// Every listing since the finding was opened left `last_used_at` out (the spec requires
    /// it): `last_used_at` then says nothing, and no output may read it as "never used".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last_used_unknown: bool,
    /// The key's own expiry as last listed, for the notices. Stored as the API gives it
    /// (seconds, `null`: never) and left out when unknown; a finding stored before keysweep
    /// read expiries reads back as unknown until the next sweep refreshes it.
    #[serde(
        default,
        skip_serializing_if = "Expiry::is_unknown",
        deserialize_with = "expiry_from_json"
    )]
    pub expires_at: Expiry,
    pub action: Action,
    /// Human-readable reason, e.g. "older than 90d (created 2025-01-02, 412 days ago)".
    pub reason: String,
    pub stage: Stage,
    pub detected_at: i64,
    /// When a `revoke` finding may be revoked. Fixed at detection.
    pub deadline: i64,
    pub warned_at: Option<i64>,
    pub final_notice_at: Option<i64>,
    /// When the last notice about this finding was queued (for `repeat_interval` reminders).
    pub last_notified_at: Option<i64>,
    /// When the finding left the open stages.
    pub closed_at: Option<i64>,
    /// Why it closed ("key deleted by owner", "no longer violates", "exempted: …", "revoked").
    pub resolution: Option<String>,
    /// Dry-run only: when the "would be revoked" notice was queued, so it is sent once.
    #[serde(default)]
    pub dry_run_noted_at: Option<i64>,
    /// The last warning was a dry-run's ("would be revoked"): the first sweep that enforces
    /// warns again, for real, before it writes anything (`lifecycle::advance`).
    #[serde(default)]
    pub warned_dry_run: bool,
    /// The final notice was a dry-run's: the first sweep that can write sends a real one first.
    #[serde(default)]
    pub final_notice_dry_run: bool,
    /// What the finding knows of the key's expiry, and what keysweep wrote to it.
    #[serde(default)]
    pub expiry: ExpiryState,
    /// Why the plan held this due finding back in the last sweep that advanced it, and which
    /// write (`dry_run/delete`, `cap_per_run/expiry`, …), so the `skipped` audit record is
    /// written once per spell, reason and write, not once per sweep (thousands per sweep in a
    /// dry-run of a large organisation). Cleared by the first sweep that does not hold it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    /// Why the rotation phase held this finding's due rotation back in the last sweep that ran
    /// it (`dry_run`, `service_account_notify_only`, `kill_switch`, `shutdown`), so its `skipped`
    /// record is written once per spell and reason, like [`Finding::withheld`]'s. Cleared by
    /// the first rotation phase that runs to its end without holding it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_withheld: Option<String>,
}

impl Finding {
    /// The key as this finding last saw it, for a write the listing does not drive (a
    /// rotation, the retry of a restore): the write re-reads the key before acting on it.
    pub fn snapshot_key(&self) -> Key {
        Key {
            organization: self.id.organization.clone(),
            project_id: self.id.project_id.clone(),
            project_name: self.project_name.clone(),
            id: self.id.key_id.clone(),
            name: self.key_name.clone(),
            redacted_value: self.redacted_value.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            last_used_unknown: self.last_used_unknown,
            owner: Owner {
                kind: self.owner_type,
                id: None,
                name: Some(self.owner.clone()),
                email: self.owner_email.clone(),
            },
            owner_access: OwnerAccess::Unknown,
            expires_at: self.expires_at,
        }
    }
}

/// A finding's view of its key's expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryState {
    /// `expire` findings: the expiry keysweep set on the key, and what the key had before.
    pub set: Option<ExpirySet>,
    /// `expire` findings the organisation's expiry policy refused: kept as notice-only (their
    /// deadline stands, nothing more is written). The API's words.
    pub refused: Option<String>,
    /// A withdrawn finding whose restore (moving keysweep's expiry back out) failed
    /// transiently: later sweeps retry it, even once the finding is closed, until it is done,
    /// the key has ended, or the owner changed the expiry. Without it OpenAI would end a key
    /// that was exempted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restore_pending: bool,
}

/// An expiry keysweep set on a key for a finding: what to check later sweeps against, and what to
/// move it back out to if the finding is withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpirySet {
    /// The expiry set (the finding's deadline), Unix seconds.
    pub to: i64,
    /// The key's own expiry before keysweep's first write; `None` when it never expired.
    pub previous: Option<i64>,
    /// When it was (last) set.
    pub at: i64,
}

/// Reads back what `Expiry` writes: seconds, or `null` for never (a missing field is unknown,
/// through `#[serde(default)]`).
fn expiry_from_json<'de, D: Deserializer<'de>>(d: D) -> Result<Expiry, D::Error> {
    Ok(Option::<i64>::deserialize(d)?.map_or(Expiry::Never, Expiry::At))
}

/// What a notice says about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// First notice: the key violates policy; for `revoke` findings it carries the deadline.
    Warning,
    /// Unchanged open finding, repeated after `repeat_interval`.
    Reminder,
    /// Last notice before the revocation deadline.
    FinalNotice,
    /// The key was revoked (or, in dry-run, would have been).
    Revoked,
    /// The finding closed without revocation (rotated, deleted by owner, exempted, fixed).
    Resolved,
    /// The revocation or expiry was due in this sweep but a safety rail (a cap, the kill switch,
    /// an incomplete listing) held it back: postponed, why, and to when.
    Postponed,
    /// The key was rotated: a new key is in the sink and this one stops working after the
    /// overlap (`Notice::rotated` says which and when; never the secret).
    Rotated,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Warning => "warning",
            NoticeKind::Reminder => "reminder",
            NoticeKind::FinalNotice => "final_notice",
            NoticeKind::Revoked => "revoked",
            NoticeKind::Resolved => "resolved",
            NoticeKind::Postponed => "postponed",
            NoticeKind::Rotated => "rotated",
        }
    }
}

/// A notice due for one finding; `notify` groups notices into digests per channel and recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    /// Snapshot of the finding after the transition that produced the notice. Shared with the
    /// sweep's own copy until either changes (`Arc::make_mut`): a first sweep's notices at 100k
    /// keys were 10k copies of their findings, megabytes held through the commit.
    pub finding: Arc<Finding>,
    /// True in dry-run: a `Revoked` notice then means "would have been revoked".
    pub dry_run: bool,
    /// What keysweep will actually do to the key (`policy::verdict`), decided by the sweep from
    /// its mode, the per-key rules and its plan; every status line and count reads it. `None`
    /// only for a notice composed outside a sweep (a closed finding's notice needs none).
    #[serde(default)]
    pub verdict: Option<crate::policy::verdict::Verdict>,
    /// For a [`NoticeKind::Rotated`] notice: the new key and when the old one stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated: Option<RotatedNote>,
    /// What the audit log and usage add (issue 16), set by the sweep before composing; `None`
    /// outside a sweep (the notice then says "usage unknown" and is routed as any key's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel: Option<NoticeIntel>,
    /// For an open `expire` finding's notice: the expiry the sweep's plan sets on the key when
    /// another of its `expire` findings, with an earlier deadline, sets it before this one's
    /// own target would (one write per key, the earliest: `policy::plan`). `None`: the
    /// finding's own target is what the key gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<i64>,
}

impl Notice {
    /// A notice of `kind` about `finding` (shared, not copied), not yet given its verdict,
    /// rotation or intel.
    pub fn of(kind: NoticeKind, finding: Arc<Finding>, dry_run: bool) -> Notice {
        Notice {
            kind,
            finding,
            dry_run,
            verdict: None,
            rotated: None,
            intel: None,
            key_expiry: None,
        }
    }
}

/// What the audit log and usage tell the reader of a notice about its key (issue 16).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeIntel {
    /// The key's requests and cost over `[usage] window`; `None`: usage unknown.
    pub usage: Option<UsageNote>,
    /// Who is told in person about a service-account key (its creator, else the project's
    /// owners, else `owner_fallback`); `None`: as any key, by the owner's own e-mail.
    pub route: Option<OwnerRoute>,
}

/// A key's usage over a window, as notices show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageNote {
    pub window_days: u32,
    pub requests: u64,
    /// The cost in millionths of a US dollar; `None`: the cost is unknown.
    pub cost_micros: Option<u64>,
}

impl UsageNote {
    /// The cost in US dollars (`None`: unknown).
    pub fn cost_usd(&self) -> Option<f64> {
        // Exact below 2^53 micro-dollars: far beyond any key's bill.
        #[allow(clippy::cast_precision_loss)]
        self.cost_micros.map(|m| m as f64 / 1_000_000.0)
    }
}

/// Who is told in person about a key whose owner has no e-mail of its own (a service-account
/// key) or who needs to hear at once (a key that woke up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum OwnerRoute {
    /// One person with active access to the project: a service-account key's creator (the
    /// actor of its `api_key.created`), or a user key's owner.
    Person { email: String },
    /// The project's owners (project users with role `owner`): the creator is unknown or no
    /// longer has access to the project.
    ProjectOwners { emails: Vec<String> },
    /// Nobody in the project can be told: `owner_fallback`.
    Fallback,
}

impl OwnerRoute {
    /// The e-mail addresses told in person (none for [`OwnerRoute::Fallback`]).
    pub fn emails(&self) -> Vec<&str> {
        match self {
            OwnerRoute::Person { email } => vec![email.as_str()],
            OwnerRoute::ProjectOwners { emails } => emails.iter().map(String::as_str).collect(),
            OwnerRoute::Fallback => Vec::new(),
        }
    }
}

/// What a "rotated" notice tells the key's owner: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedNote {
    pub new_key_id: String,
    pub new_redacted_value: String,
    /// The `[[sinks]]` entry that holds the new key.
    pub sink: String,
    /// When the old key stops working (Unix seconds).
    pub old_expires_at: i64,
}
