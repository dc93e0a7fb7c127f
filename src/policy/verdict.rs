//! The verdict: what keysweep will actually do to one finding's key, under the current mode,
//! the per-key rules and this sweep's plan, and [`Withheld`], the rail that holds a due write
//! back. The notices (status lines, digest titles and counts), the sweep's log lines and `scan`'s
//! plan read a [`Verdict`] and never re-derive a verb from the finding's `action`; the one
//! function that decides it is [`crate::policy::plan::verdict`] (it needs the finding, which this
//! file must not name: `finding.rs` stores a notice's verdict, and files never import each other
//! both ways).
//!
//! Plain data: no I/O, no clock. This file must never decide anything a sweep does.

use serde::{Deserialize, Serialize};

use crate::config::{Mode, ServiceAccountKeys};

/// The rules a verdict depends on besides the finding itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `mode`, or dry-run when `--dry-run` says so.
    pub mode: Mode,
    /// `[safety] service_account_keys`.
    pub service_account_keys: ServiceAccountKeys,
    /// True when `[safety] kill_switch_file` exists.
    pub kill_switch: bool,
}

/// Why a revoke-due action is not performed in this sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Withheld {
    /// `mode = "dry-run"` (or `--dry-run`): would have been revoked.
    DryRun,
    /// The project's listing in this sweep was incomplete.
    IncompleteListing,
    /// The kill-switch file exists.
    KillSwitch,
    /// `max_revocations_per_run` reached.
    CapPerRun,
    /// `max_revocations_per_project_percent` reached for this project.
    CapPerProjectPercent,
    /// `max_revocations_per_day` (rolling 24 h) reached.
    CapPerDay,
    /// `service_account_keys = "notify-only"`: service-account keys are reported, never
    /// written to.
    ServiceAccountNotifyOnly,
}

impl Withheld {
    /// Stable snake_case name for JSON, metrics and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Withheld::DryRun => "dry_run",
            Withheld::IncompleteListing => "incomplete_listing",
            Withheld::KillSwitch => "kill_switch",
            Withheld::CapPerRun => "cap_per_run",
            Withheld::CapPerProjectPercent => "cap_per_project_percent",
            Withheld::CapPerDay => "cap_per_day",
            Withheld::ServiceAccountNotifyOnly => "service_account_notify_only",
        }
    }

    /// Caps hit raise an enforcer alert ("a sweep would exceed a cap").
    pub fn is_cap(self) -> bool {
        matches!(
            self,
            Withheld::CapPerRun | Withheld::CapPerProjectPercent | Withheld::CapPerDay
        )
    }
}

/// Why keysweep never writes to a key: it only tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOnlyBy {
    /// The policy's `action = "notify"`.
    PolicyAction,
    /// A service-account key under `[safety] service_account_keys = "notify-only"`.
    ServiceAccountKeys,
    /// The organisation's expiry policy refused the expiry of an `expire` finding.
    ExpiryRefused,
}

impl NotifyOnlyBy {
    /// The configuration key (or the fact) a person would change to make keysweep act.
    pub fn config_key(self) -> &'static str {
        match self {
            NotifyOnlyBy::PolicyAction => "policies.action",
            NotifyOnlyBy::ServiceAccountKeys => "safety.service_account_keys",
            NotifyOnlyBy::ExpiryRefused => "the organisation's expiry policy",
        }
    }
}

/// What keysweep will do to a finding's key at (or, when due, in) this sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict")]
pub enum Verdict {
    /// `action = "revoke"` in enforce mode: keysweep deletes the key at the deadline.
    Revoke,
    /// `action = "expire"` in enforce mode: the key's expiry is (or is set to) the deadline and
    /// OpenAI ends the key then.
    Expire,
    /// The key's own expiry comes before the deadline: OpenAI ends it then, and keysweep
    /// writes nothing to it (a DELETE or an expiry would only repeat what happens anyway).
    Ends,
    /// Dry-run: keysweep would delete the key at the deadline, but deletes nothing.
    WouldRevoke,
    /// Dry-run: keysweep would set the key's expiry to the deadline, but writes nothing.
    WouldExpire,
    /// keysweep never writes to this key; it only tells. `by` says which rule.
    NotifyOnly { by: NotifyOnlyBy },
    /// The write is due (or, for the kill switch, would be) but a safety rail holds it back:
    /// postponed to the next sweep (a cap, an incomplete listing) or for as long as the kill
    /// switch exists. `by` names the rail.
    Postponed { by: Withheld },
    /// `action = "rotate"` in enforce mode on a service-account key: at `deadline − overlap`
    /// keysweep mints a new key and hands it to the sink, then the old key ends at the deadline.
    /// `overlap` is in seconds.
    Rotate { overlap: i64 },
    /// A rotation keysweep only announces: `by` is [`Withheld::DryRun`] or
    /// [`Withheld::ServiceAccountNotifyOnly`]. `overlap` is in seconds.
    WouldRotate { overlap: i64, by: Withheld },
}

impl Verdict {
    /// Stable snake_case name for JSON (webhooks, logs, `scan`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Revoke => "revoke",
            Verdict::Expire => "expire",
            Verdict::Ends => "ends",
            Verdict::WouldRevoke => "would_revoke",
            Verdict::WouldExpire => "would_expire",
            Verdict::NotifyOnly { .. } => "notify_only",
            Verdict::Postponed { .. } => "postponed",
            Verdict::Rotate { .. } => "rotate",
            Verdict::WouldRotate { .. } => "would_rotate",
        }
    }

    /// The configuration key that withholds the write, if one does: what a person would change.
    pub fn withheld_by(self) -> Option<&'static str> {
        match self {
            Verdict::NotifyOnly { by } => Some(by.config_key()),
            Verdict::Postponed { by } => Some(withheld_config_key(by)),
            Verdict::WouldRevoke | Verdict::WouldExpire => Some("mode"),
            Verdict::WouldRotate { by, .. } => Some(withheld_config_key(by)),
            Verdict::Revoke | Verdict::Expire | Verdict::Ends | Verdict::Rotate { .. } => None,
        }
    }

    /// True when keysweep deletes the key (enforce, nothing withholding it).
    pub fn deletes(self) -> bool {
        self == Verdict::Revoke
    }
}

/// The configuration key behind a rail that withholds a due write, e.g.
/// `safety.max_revocations_per_run`.
pub fn withheld_config_key(w: Withheld) -> &'static str {
    match w {
        Withheld::DryRun => "mode",
        Withheld::IncompleteListing => "the project's incomplete listing",
        Withheld::KillSwitch => "safety.kill_switch_file",
        Withheld::CapPerRun => "safety.max_revocations_per_run",
        Withheld::CapPerProjectPercent => "safety.max_revocations_per_project_percent",
        Withheld::CapPerDay => "safety.max_revocations_per_day",
        Withheld::ServiceAccountNotifyOnly => "safety.service_account_keys",
    }
}
