//! The rows both renderers share (`report.rs`'s table and JSON, `csv_export.rs`'s CSV) and the
//! small judgements on them every format must make alike: a key's age in days, its owner's
//! access, and which listings stopped short. Pure; renders nothing.

use serde::Serialize;

use crate::inventory::{Inventory, OwnerAccess};

use super::plan::NextStep;

pub(super) const DAY: i64 = 86_400;

/// One line of the findings / plan section: what policy matched which key and what keysweep
/// will do (or did) about it. Built by [`super::finding_rows`] from a sweep's findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingRow {
    pub organization: String,
    pub project_id: String,
    pub key_id: String,
    pub key_name: String,
    pub policy: String,
    /// `notify`, `revoke`, …
    pub action: String,
    /// `new` (read-only scan: no sweep has warned yet), `warned`, `final_notice`, `revoked`,
    /// `exempted`, …
    pub state: String,
    /// Unix seconds at which the action falls due, if scheduled.
    pub deadline: Option<i64>,
    /// Why the key violates (or is exempt).
    pub note: String,
    /// What happens next to the key, and what withholds it (see [`super::plan`]).
    pub plan: Option<NextStep>,
}

/// Whole days from `ts` to `now` (negative if `ts` is in the future).
pub(super) fn days_since(ts: i64, now: i64) -> i64 {
    now.saturating_sub(ts).div_euclid(DAY)
}

/// The owner's access to the project, as every format names it.
pub(super) fn access_str(a: OwnerAccess) -> &'static str {
    match a {
        OwnerAccess::Active => "active",
        OwnerAccess::Inactive => "inactive",
        OwnerAccess::Unknown => "unknown",
    }
}

/// The (organisation, project) of every listing that stopped short: their keys are not judged,
/// so no row may say "nothing" of them.
pub(super) fn unjudged_projects(inv: &Inventory) -> std::collections::HashSet<(&str, &str)> {
    (inv.orgs.iter())
        .flat_map(|o| {
            (o.projects.iter())
                .filter(|p| !p.listing.is_complete())
                .map(move |p| (o.organization.as_str(), p.project.id.as_str()))
        })
        .collect()
}
