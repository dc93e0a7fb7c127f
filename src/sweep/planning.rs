//! Phase 4, plan: which due revocations go ahead under the rails (mode, kill switch, caps,
//! service-account rule; `policy::plan`), the alerts for what the caps and the kill switch
//! withheld, and a `skipped` audit record per withheld key, once per spell of being held back
//! for the same reason and write (`Advanced::mark_withheld`). Planned before the commit, so those
//! alerts go out with this sweep's notices, and so the notices say what the plan does (each
//! notice's `policy::verdict`; `postponed` notices for what a safety limit held back). Decides
//! only: it never deletes or writes.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use crate::config::Config;
use crate::inventory::{Inventory, KeyTally};
use crate::notify::alert::EnforcerAlert;
use crate::policy::finding::{Finding, FindingId, Stage};
use crate::policy::plan::{Plan, Withheld, Write, verdict_rotating};
use crate::policy::verdict::{Rules, Verdict};
use crate::state::audit::{AuditKind, AuditRecord};

use super::advance::{Advanced, withheld_mark};
use super::report::{FindingView, SweepError, fmt_time};
use super::run::Run;

/// The plan, and what it raised.
pub(super) struct Planned {
    pub plan: Plan,
    /// One per cap (or the kill switch) that withheld something.
    pub alerts: Vec<EnforcerAlert>,
    /// A `skipped` audit record per key withheld anew (or for another reason or write).
    pub withheld: Vec<AuditRecord>,
}

impl Run<'_> {
    /// In dry-run, first announces what would be revoked (see [`Advanced::note_dry_run`]).
    pub(super) fn plan(
        &self,
        inventory: &Inventory<KeyTally>,
        advanced: &mut Advanced,
    ) -> Result<Planned, SweepError> {
        let sweeper = self.sweeper;
        sweeper.forget_handed_over(&mut advanced.rotating_keys, &advanced.findings)?;
        let mut plan = sweeper.plan_revocations(
            &advanced.candidates,
            &advanced.rotating_keys,
            inventory,
            self.mode,
            self.now(),
        )?;
        sweeper.withhold_rotations(&mut plan, &advanced.findings, inventory, self.now())?;
        let recorded = advanced.mark_withheld(&plan);
        if self.dry_run() {
            advanced.note_dry_run(self.now(), &plan);
        }
        advanced.apply_plan(&plan, &self.verdict_rules(), self.now());
        let alerts = plan_alerts(&plan, &sweeper.config);
        for w in &plan.withheld {
            sweeper.metrics.revocations_withheld(
                w.action.organization(),
                w.reason.as_str(),
                u64::from(w.action.revocations()),
            );
        }
        // One record per spell and reason, not per sweep: an action all of whose findings
        // were held back for the same reason in the last sweep already has its records
        // (`Advanced::mark_withheld`). One this sweep cannot remember (a finding it did not
        // advance) is recorded again.
        let withheld = plan
            .withheld
            .iter()
            .filter(|w| {
                let mark = withheld_mark(w);
                w.action.findings.is_empty()
                    || !(w.action.findings.iter()).all(|id| recorded.get(id) == Some(&mark))
            })
            .flat_map(|w| {
                w.action.keys().iter().map(move |k| {
                    self.record(
                        AuditKind::Skipped,
                        format!(
                            "{} withheld by {} ({})",
                            match w.action.write {
                                Write::Delete => "revocation",
                                Write::SetExpiry { .. } => "expiry",
                            },
                            crate::policy::verdict::withheld_config_key(w.reason),
                            w.reason.as_str()
                        ),
                    )
                    .with_key(k)
                    .with_response(
                        json!({ "withheld": w.reason.as_str(), "action": w.action.describe() }),
                    )
                })
            })
            .collect();
        Ok(Planned {
            plan,
            alerts,
            withheld,
        })
    }
}

impl Run<'_> {
    /// What the verdicts of this sweep's notices depend on besides the plan.
    pub(super) fn verdict_rules(&self) -> Rules {
        let safety = &self.sweeper.config.safety;
        Rules {
            mode: self.mode,
            service_account_keys: safety.service_account_keys,
            kill_switch: crate::revoke::kill_switch_engaged(safety.kill_switch_file.as_deref()),
        }
    }
}

/// What happens next to an open finding not due in this sweep, as its verdict says.
fn open_plan(f: &Finding, rules: Rules, overlap: Option<i64>) -> String {
    let deadline = fmt_time(f.deadline);
    match verdict_rotating(f, &rules, None, overlap) {
        Verdict::Revoke => format!("revoke on {deadline}"),
        Verdict::WouldRevoke => format!("would revoke on {deadline} (dry-run)"),
        Verdict::Expire | Verdict::WouldExpire => match f.expiry.set {
            Some(set) => format!("expires {} (set by keysweep)", fmt_time(set.to)),
            None if rules.mode == crate::config::Mode::DryRun => {
                format!("would expire on {deadline} (dry-run)")
            }
            None => format!("expire on {deadline}"),
        },
        Verdict::Rotate { overlap } => format!("rotate before {deadline} (overlap {overlap}s)"),
        Verdict::WouldRotate { by, .. } => format!(
            "would rotate before {deadline} ({})",
            crate::policy::verdict::withheld_config_key(by)
        ),
        Verdict::Ends => match f.expires_at.at() {
            Some(at) => format!("ends at its own expiry {}", fmt_time(at)),
            None => "ends at its own expiry".into(),
        },
        Verdict::NotifyOnly { by } => format!("notify only ({})", by.config_key()),
        Verdict::Postponed { by } => format!(
            "postponed by {} (deadline {deadline})",
            crate::policy::verdict::withheld_config_key(by)
        ),
    }
}

/// Cap and kill-switch alerts: one per cap that withheld something.
fn plan_alerts(plan: &Plan, config: &Config) -> Vec<EnforcerAlert> {
    // Keyed by name, so the alerts come in the order of their names.
    let mut by_reason: BTreeMap<&'static str, (Withheld, u64)> = BTreeMap::new();
    for w in &plan.withheld {
        if w.reason.is_cap() || w.reason == Withheld::KillSwitch {
            let entry = by_reason.entry(w.reason.as_str()).or_insert((w.reason, 0));
            entry.1 += u64::from(w.action.revocations());
        }
    }
    (by_reason.into_values())
        .map(|(reason, withheld)| withheld_alert(config, reason, withheld))
        .collect()
}

/// The alert for `withheld` writes a cap or the kill switch (`reason`) held back in a sweep:
/// the planning phase's, and the enforce phase's total when more were held back at their write.
pub(super) fn withheld_alert(config: &Config, reason: Withheld, withheld: u64) -> EnforcerAlert {
    let safety = &config.safety;
    let limit = match reason {
        Withheld::KillSwitch => {
            let path = safety.kill_switch_file.as_ref();
            let path = path.map(|p| p.display().to_string()).unwrap_or_default();
            return EnforcerAlert::KillSwitchOn { path, withheld };
        }
        Withheld::CapPerRun => safety.max_revocations_per_run,
        Withheld::CapPerDay => safety.max_revocations_per_day,
        _ => safety.max_revocations_per_project_percent,
    };
    EnforcerAlert::CapExceeded {
        cap: reason.as_str().to_string(),
        limit: u64::from(limit),
        withheld,
    }
}

/// Fills each finding's `plan` column from the plan and its stage; an open finding's from its
/// verdict (`policy::plan::verdict`), so the table says what the notices say.
/// `overlap_of`: a finding's rotation overlap when a rotation, not its own write, ends its key
/// (`Advanced::overlap_of`).
pub(super) fn annotate_plan(
    findings: &mut [FindingView],
    plan: &Plan,
    overlap_of: impl Fn(&Finding) -> Option<i64>,
) {
    let rules = plan.rules.unwrap_or(Rules {
        mode: crate::config::Mode::DryRun,
        service_account_keys: crate::config::ServiceAccountKeys::NotifyOnly,
        kill_switch: false,
    });
    // First action naming each finding, as a linear `find` would pick it, but indexed: a
    // dry-run plan withholds every due key, and findings × withheld was quadratic.
    let mut revoke: HashMap<&FindingId, usize> = HashMap::new();
    for (i, a) in plan.revoke.iter().enumerate() {
        for id in &a.findings {
            revoke.entry(id).or_insert(i);
        }
    }
    let mut withheld: HashMap<&FindingId, usize> = HashMap::new();
    for (i, w) in plan.withheld.iter().enumerate() {
        for id in &w.action.findings {
            withheld.entry(id).or_insert(i);
        }
    }
    for v in findings {
        let id = &v.finding.id;
        v.plan = if let Some(a) = revoke.get(id).map(|&i| &plan.revoke[i]) {
            match a.write {
                Write::Delete => format!("revoke now ({})", a.describe()),
                Write::SetExpiry { .. } => format!("expire now ({})", a.describe()),
            }
        } else if let Some(w) = withheld.get(id).map(|&i| &plan.withheld[i]) {
            format!(
                "due, withheld by {}",
                crate::policy::verdict::withheld_config_key(w.reason)
            )
        } else {
            match v.finding.stage {
                Stage::Revoked => "revoked".into(),
                Stage::Expired => {
                    format!("expired: {}", v.finding.resolution.as_deref().unwrap_or(""))
                }
                Stage::Resolved => format!(
                    "resolved: {}",
                    v.finding.resolution.as_deref().unwrap_or("")
                ),
                Stage::Exempted => format!(
                    "exempted: {}",
                    v.finding.resolution.as_deref().unwrap_or("")
                ),
                _ => open_plan(&v.finding, rules, overlap_of(&v.finding)),
            }
        };
    }
}
