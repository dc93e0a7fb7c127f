//! What every step of a revocation shares: the store, the clients, the policies for the
//! re-check, the sweep's mode, run id, clock and cancellation. Plain data; it never deletes.

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
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
