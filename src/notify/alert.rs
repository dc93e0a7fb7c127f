//! Enforcer alerts: what the on-call team must hear about keysweep itself.
//!
//! They go to `ops_channels`; the one exception is [`EnforcerAlert::KeyWokeUp`], which also
//! reaches the key's owner at once (its `owner` route, issue 16).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alert", rename_all = "snake_case")]
pub enum EnforcerAlert {
    /// A project's listing was incomplete; nothing in it was revoked this sweep.
    IncompleteListing {
        organization: String,
        project_id: String,
        reason: String,
    },
    /// The admin key was refused (401/403); the organisation could not be swept.
    AuthenticationFailed {
        organization: String,
        message: String,
    },
    /// The organisation could not be listed for another reason.
    OrganizationUnavailable {
        organization: String,
        message: String,
    },
    /// A safety cap withheld revocations that were due.
    CapExceeded {
        cap: String,
        limit: u64,
        withheld: u64,
    },
    /// Something is at the kill-switch path, or the path cannot be examined (fails closed):
    /// nothing more was deleted and no expiry set.
    KillSwitchOn { path: String, withheld: u64 },
    /// A message was dead-lettered after its last attempt.
    DeliveryFailed {
        channel: String,
        message_id: String,
        attempts: u32,
        error: String,
    },
    /// The relay took an e-mail for some recipients and refused it for good for these
    /// (`recipients`, with its answers in `error`): they do not get it; the others did.
    RecipientsRefused {
        channel: String,
        message_id: String,
        recipients: Vec<String>,
        error: String,
    },
    /// keysweep's own admin key has passed its expiry (OpenAI refuses it from then on).
    AdminKeyExpired {
        organization: String,
        key_id: String,
        redacted_value: String,
        expired_at: i64,
    },
    /// keysweep's own admin key expires within 14 days.
    AdminKeyExpiring {
        organization: String,
        key_id: String,
        redacted_value: String,
        expires_at: i64,
    },
    /// A revocation was attempted and failed, or its outcome is unknown.
    RevocationFailed {
        organization: String,
        project_id: String,
        key_id: String,
        error: String,
    },
    /// An expiry write needs a person: refused by the expiry policy, moved later outside
    /// keysweep and set back, or moved back out to a shorter distance than configured.
    Expiry {
        organization: String,
        project_id: String,
        key_id: String,
        message: String,
    },
    /// A rotation (`action = "rotate"`) and what came of it. `pages`: a person must act (a
    /// failed rotation, a hand-over a crash interrupted, an owed expiry); `false` for news —
    /// the key was rotated, keysweep's own orphan deleted — which PagerDuty does not page for
    /// and every other ops channel still gets.
    Rotation {
        organization: String,
        project_id: String,
        key_id: String,
        message: String,
        pages: bool,
    },
    /// The re-check before a write kept the same due key in `skips` consecutive sweeps
    /// (`[safety] max_recheck_skips`); `reason` is the last one. A key renamed back and forth
    /// would otherwise be kept forever without anyone hearing of it.
    RecheckSkips {
        organization: String,
        project_id: String,
        key_id: String,
        skips: u32,
        reason: String,
    },
    /// The audit log or usage of an organisation could not be read (issue 16): the sweep went
    /// on with what the key listing gives. One alert per organisation: `source` is `audit log`,
    /// `usage` or `audit log and usage`, `message` why each could not be read.
    IntelUnavailable {
        organization: String,
        source: String,
        message: String,
    },
    /// A key idle at least `[usage] wake_after` (since `idle_since`: its last use, or its
    /// creation) was used again at `last_used_at`: what a leaked key looks like.
    KeyWokeUp {
        organization: String,
        project_id: String,
        key_id: String,
        idle_since: i64,
        last_used_at: i64,
        /// The key's name at the sweep that saw it wake (set by the sweep; `None`: unknown).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_name: Option<String>,
        /// Who is told at once besides `ops_channels`: the key's owner (a service-account
        /// key's creator, else the project's owners), or `owner_fallback`. Set by the sweep;
        /// `None`: the ops channels only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<crate::policy::finding::OwnerRoute>,
        /// The owner as the listing gave it (kind, and the API's e-mail for a user): what the
        /// sweep routes `owner` by, never a name the owner chose. Not part of the alert's
        /// payload.
        #[serde(skip)]
        listed_owner: Option<(crate::inventory::OwnerType, Option<String>)>,
    },
    /// The audit log shows keys created and not deleted that a complete listing did not
    /// return (not counting keys created after the listing began, in archived or unwatched
    /// projects, or expired).
    InventoryGap {
        organization: String,
        key_ids: Vec<String>,
    },
}

/// The `alerts` table remembers raised alerts through this; `state` never names this type.
impl crate::state::alerts::RaisedAlert for EnforcerAlert {
    fn dedup_key(&self) -> String {
        EnforcerAlert::dedup_key(self)
    }
}

impl EnforcerAlert {
    /// The text of an alert about the audit log, usage or what they show (issue 16); `None`
    /// for the others (`digest::alert_text` says those).
    pub fn intel_text(&self) -> Option<String> {
        match self {
            EnforcerAlert::IntelUnavailable {
                organization,
                source,
                message,
            } => Some(format!(
                "{organization}: the {source} could not be read; the sweep went on with the \
                 key listing alone ({message})"
            )),
            EnforcerAlert::KeyWokeUp {
                organization,
                project_id,
                key_id,
                idle_since,
                last_used_at,
                key_name,
                ..
            } => Some(format!(
                "Key {} in project {project_id} ({organization}) woke up: idle {} \
                 day(s) since {}, then used at {}. A dormant key used again is what a leaked \
                 key looks like: check who uses it.",
                key_name
                    .as_deref()
                    .map_or_else(|| key_id.clone(), |n| format!("{n} ({key_id})")),
                last_used_at.saturating_sub(*idle_since) / 86_400,
                crate::timefmt::rfc3339(*idle_since),
                crate::timefmt::rfc3339(*last_used_at)
            )),
            EnforcerAlert::InventoryGap {
                organization,
                key_ids,
            } => Some(format!(
                "Inventory gap in {organization}: the audit log shows {} key(s) created and not \
                 deleted that the listing did not return: {}",
                key_ids.len(),
                key_ids.join(", ")
            )),
            _ => None,
        }
    }

    /// Stable identity for de-duplicating repeated alerts across sweeps.
    /// Whether PagerDuty pages for it: every alert but a rotation's good news.
    pub fn pages(&self) -> bool {
        !matches!(self, EnforcerAlert::Rotation { pages: false, .. })
    }

    /// A count of what one sweep withheld (a cap, the kill switch), which the enforce phase
    /// raises again with the whole count when writes were also withheld at their intent after
    /// planning had raised it.
    pub fn is_sweep_total(&self) -> bool {
        matches!(
            self,
            EnforcerAlert::CapExceeded { .. } | EnforcerAlert::KillSwitchOn { .. }
        )
    }

    /// What groups this alert's PagerDuty events into one incident: its [`Self::dedup_key`],
    /// except that a channel's dead letters and refused recipients share one incident per
    /// channel. A relay down for hours dead-letters every queued message; one incident each
    /// would page on-call a thousand times for one outage.
    pub fn incident_key(&self) -> String {
        match self {
            EnforcerAlert::DeliveryFailed { channel, .. }
            | EnforcerAlert::RecipientsRefused { channel, .. } => {
                format!("undelivered/{channel}")
            }
            _ => self.dedup_key(),
        }
    }

    pub fn dedup_key(&self) -> String {
        match self {
            EnforcerAlert::IncompleteListing {
                organization,
                project_id,
                ..
            } => {
                format!("incomplete/{organization}/{project_id}")
            }
            EnforcerAlert::AuthenticationFailed { organization, .. } => {
                format!("auth/{organization}")
            }
            EnforcerAlert::OrganizationUnavailable { organization, .. } => {
                format!("unavailable/{organization}")
            }
            EnforcerAlert::CapExceeded { cap, .. } => format!("cap/{cap}"),
            EnforcerAlert::KillSwitchOn { .. } => "kill-switch".to_string(),
            EnforcerAlert::DeliveryFailed { message_id, .. } => format!("dead-letter/{message_id}"),
            EnforcerAlert::RecipientsRefused { message_id, .. } => {
                format!("recipients-refused/{message_id}")
            }
            EnforcerAlert::AdminKeyExpiring {
                organization,
                key_id,
                ..
            } => {
                format!("admin-key-expiring/{organization}/{key_id}")
            }
            EnforcerAlert::AdminKeyExpired {
                organization,
                key_id,
                ..
            } => {
                format!("admin-key-expired/{organization}/{key_id}")
            }
            EnforcerAlert::RevocationFailed {
                organization,
                project_id,
                key_id,
                ..
            } => {
                format!("revocation-failed/{organization}/{project_id}/{key_id}")
            }
            EnforcerAlert::Expiry {
                organization,
                project_id,
                key_id,
                message,
            } => {
                // The message is part of the identity: a key's expiry set back twice for the
                // same reason alerts once per repeat interval, a different event alerts anew.
                format!("expiry/{organization}/{project_id}/{key_id}/{message}")
            }
            EnforcerAlert::Rotation {
                organization,
                project_id,
                key_id,
                message,
                ..
            } => format!("rotation/{organization}/{project_id}/{key_id}/{message}"),
            EnforcerAlert::RecheckSkips {
                organization,
                project_id,
                key_id,
                ..
            } => format!("recheck-skips/{organization}/{project_id}/{key_id}"),
            EnforcerAlert::IntelUnavailable {
                organization,
                source,
                ..
            } => format!("intel-unavailable/{organization}/{source}"),
            EnforcerAlert::KeyWokeUp {
                organization,
                project_id,
                key_id,
                last_used_at,
                ..
            } => format!("woke/{organization}/{project_id}/{key_id}/{last_used_at}"),
            EnforcerAlert::InventoryGap {
                organization,
                key_ids,
            } => format!("inventory-gap/{organization}/{}", key_ids.join(",")),
        }
    }
}
