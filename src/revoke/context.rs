//! What every step of a revocation shares: the store, the clients, the policies for the
//! re-check, the sweep's mode, run id, clock and cancellation. Plain data; it never deletes.

use std::io::ErrorKind;
use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
use crate::notify::alert::EnforcerAlert;
use crate::openai::AdminClient;
use crate::policy::Policies;
use crate::state::Store;
use crate::state::audit::{AuditKind, AuditRecord};

/// Everything a revocation needs.
pub struct Context<'a> {
    pub store: &'a Store,
    pub config: &'a Config,
    pub policies: &'a Policies,
    pub clients: &'a [AdminClient],
    pub mode: Mode,
    pub run_id: &'a str,
    pub now: i64,
    pub cancel: &'a CancellationToken,
}

impl Context<'_> {
    /// The client of organisation `org`, if this sweep covers it.
    pub(super) fn client(&self, org: &str) -> Option<&AdminClient> {
        self.clients.iter().find(|c| c.org_name() == org)
    }

    /// `Some(reason)` when the kill switch is on right now (see [`kill_switch_engaged`]):
    /// checked again before every write that ends or shortens a key.
    pub(super) fn kill_switch(&self) -> Option<String> {
        let path = self.config.safety.kill_switch_file.as_deref()?;
        kill_switch_engaged(Some(path)).then(|| kill_switch_reason(path))
    }

    /// The alert owed when the re-check kept the same key `max_recheck_skips` times in a row,
    /// this time for `reason` (already recorded as `skipped`). The kill switch and the cap are
    /// no re-check.
    pub(super) fn recheck_alert(
        &self,
        organization: &str,
        project_id: &str,
        key_id: &str,
        reason: &str,
    ) -> Result<Option<EnforcerAlert>, crate::state::StateError> {
        let max = self.config.max_recheck_skips;
        if max == 0 || is_kill_switch_reason(reason) || is_cap_reached_reason(reason) {
            return Ok(None);
        }
        let skips = self.store.with_conn(|c| {
            crate::state::findings::consecutive_recheck_skips(
                c,
                organization,
                project_id,
                key_id,
                is_kill_switch_reason,
            )
        })?;
        Ok((skips >= max).then(|| EnforcerAlert::RecheckSkips {
            organization: organization.to_string(),
            project_id: project_id.to_string(),
            key_id: key_id.to_string(),
            skips,
            reason: reason.to_string(),
        }))
    }

    /// An audit record of this sweep.
    pub(super) fn record(&self, kind: AuditKind, message: impl Into<String>) -> AuditRecord {
        AuditRecord::new(
            self.now,
            self.run_id,
            kind,
            self.mode,
            &self.config.hash,
            message,
        )
    }
}

/// The start of every reason a write was withheld for the kill switch.
pub const KILL_SWITCH_REASON: &str = "the kill switch is on";

/// Why a write was withheld: the kill switch at `path`.
pub fn kill_switch_reason(path: &Path) -> String {
    format!("{KILL_SWITCH_REASON} ({})", path.display())
}

/// The start of every reason a write was withheld because the rolling-day cap was reached
/// after the sweep planned it (by another sweep's writes: the plan counts the same cap).
pub const CAP_REACHED_REASON: &str = "the rolling-day cap was reached";

/// Why a write was withheld at its intent: no slot of the rolling-day cap left.
pub fn cap_reached_reason(cap: u32) -> String {
    format!(
        "{CAP_REACHED_REASON} (safety.max_revocations_per_day = {cap}) by other sweeps since \
         this one was planned; the key is due again at the next sweep"
    )
}

/// Whether `reason` says a write was withheld at its intent for the rolling-day cap.
pub fn is_cap_reached_reason(reason: &str) -> bool {
    reason.starts_with(CAP_REACHED_REASON)
}

/// Whether `reason` says a write was withheld for the kill switch (not a re-check).
pub fn is_kill_switch_reason(reason: &str) -> bool {
    reason.starts_with(KILL_SWITCH_REASON)
}

/// Whether the kill switch at `path` is on. Fails closed: anything at the path (a file, a
/// directory, a symbolic link even when dangling) is ON, and so is a path that cannot be
/// examined (permission denied, a component that is not a directory, any error other than
/// "not found"). Only a path that certainly does not exist is OFF.
pub fn kill_switch_engaged(path: Option<&Path>) -> bool {
    let Some(path) = path else {
        return false;
    };
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::NotFound,
    }
}
