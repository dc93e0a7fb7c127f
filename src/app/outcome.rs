//! How the daemon judges a finished sweep: success, partial (some of it could not be done) or
//! failed (it could not do its job). The judgement drives `/readyz`, the `outcome` label of
//! `keysweep_sweeps_total` and the daemon's retry; it reads the report and never changes it.

use crate::daemon::SweepResult;
use crate::inventory::Listing;
use crate::revoke::expiry::ExpiryOutcome;
use crate::sweep::SweepReport;

/// The daemon's judgement of `report`. A sweep in which no project could be listed is failed,
/// not partial: it enforced nothing, and a partial sweep keeps the daemon ready and is not
/// retried (an admin key without the right to list keys would otherwise look healthy forever).
pub(super) fn sweep_result(report: &SweepReport) -> SweepResult {
    if let Some(org) = report.inventory.orgs.iter().find(|o| o.error.is_some()) {
        return SweepResult::Failed {
            reason: format!(
                "organisation {}: {}",
                org.organization,
                org.error.as_deref().unwrap_or("")
            ),
        };
    }
    let projects = || report.inventory.orgs.iter().flat_map(|o| &o.projects);
    let mut incomplete = projects().filter_map(|p| match &p.listing {
        Listing::Incomplete(reason) => Some(reason),
        Listing::Complete => None,
    });
    let first = incomplete.next();
    let incomplete = usize::from(first.is_some()) + incomplete.count();
    if let Some(reason) = first
        && incomplete == projects().count()
    {
        return SweepResult::Failed {
            reason: format!(
                "no project could be listed ({incomplete} incomplete listing(s); the first: \
                 {reason})"
            ),
        };
    }
    let failed = report
        .revocations
        .iter()
        .filter(|r| matches!(r.outcome, crate::revoke::Outcome::Failed { .. }))
        .count();
    let failed_expiries = (report.expiries.iter())
        .filter(|e| matches!(e.outcome, ExpiryOutcome::Failed { .. }))
        .count();
    if incomplete > 0 || failed > 0 || failed_expiries > 0 {
        SweepResult::Partial {
            reason: format!(
                "{incomplete} incomplete listing(s), {failed} failed revocation(s), \
                 {failed_expiries} failed expiry write(s)"
            ),
        }
    } else {
        SweepResult::Success
    }
}
