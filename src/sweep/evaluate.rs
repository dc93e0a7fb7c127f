//! The per-key step of a sweep: a listed key against the policies and its open findings.
//!
//! Pure: no I/O, no clock (the caller passes `now`). The sweep feeds it keys page by page as
//! they are listed and `scan` feeds it a whole inventory; both go through [`Evaluator::key`] and
//! [`Evaluator::gone`], so what `scan` previews is what a sweep does. It must never conclude
//! that a key is gone from a listing that was not complete: that is the caller's
//! `complete_projects`, and a project it does not name keeps its open findings untouched.

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::Action;
use crate::inventory::{EXPIRY_TOLERANCE, Expiry, Key};
use crate::policy::expiry::{self, PlannedRestore};
use crate::policy::finding::{Finding, FindingId, Stage};
use crate::policy::lifecycle::{self, Observation};
use crate::policy::plan::{Candidate, Write};
use crate::policy::{Evaluation, Policies};

/// An organisation's open findings, indexed by (project, key): a per-key scan of every open
/// finding made a steady-state sweep of 200k keys take a minute.
#[derive(Debug, Default)]
pub(crate) struct OpenFindings {
    findings: Vec<Finding>,
    /// project id → key id → indices into `findings`.
    /// foldhash: two lookups per listed key.
    by_key: foldhash::HashMap<String, foldhash::HashMap<String, Vec<usize>>>,
}

impl OpenFindings {
    /// `findings` in the order the store returns them (deadline first), which is the order
    /// their transitions are reported in.
    pub(crate) fn new(findings: Vec<Finding>) -> OpenFindings {
        let mut by_key: foldhash::HashMap<String, foldhash::HashMap<String, Vec<usize>>> =
            foldhash::HashMap::default();
        for (i, f) in findings.iter().enumerate() {
            by_key
                .entry(f.id.project_id.clone())
                .or_default()
                .entry(f.id.key_id.clone())
                .or_default()
                .push(i);
        }
        OpenFindings { findings, by_key }
    }

    /// The key id of every open finding (a key with two findings, twice).
    pub(crate) fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.findings.iter().map(|f| f.id.key_id.as_str())
    }

    fn of_key(&self, project_id: &str, key_id: &str) -> &[usize] {
        self.by_key
            .get(project_id)
            .and_then(|keys| keys.get(key_id))
            .map_or(&[], Vec::as_slice)
    }
}

/// What evaluating some keys produced. Its size follows the findings, not the keys.
#[derive(Debug, Default)]
pub(crate) struct Step {
    /// (stage before, transition), one per (key, policy) that is or was violating.
    pub transitions: Vec<(Option<Stage>, lifecycle::Transition)>,
    pub candidates: Vec<Candidate>,
    /// Expiries keysweep set that withdrawn findings move back out.
    pub restores: Vec<PlannedRestore>,
    /// Keys an active exemption covers: (key, reason).
    pub exempted: Vec<(Key, String)>,
    /// Exemptions that matched but have expired: (key, reason, until).
    pub expired: Vec<(Key, String, Option<i64>)>,
    /// Indices (into [`OpenFindings`]) of the open findings whose key was listed.
    touched: Vec<usize>,
}

impl Step {
    pub(crate) fn absorb(&mut self, other: Step) {
        self.transitions.extend(other.transitions);
        self.candidates.extend(other.candidates);
        self.restores.extend(other.restores);
        self.exempted.extend(other.exempted);
        self.expired.extend(other.expired);
        self.touched.extend(other.touched);
    }
}

/// The compiled policies and the sweep's clock.
#[derive(Clone)]
pub(crate) struct Evaluator {
    pub policies: Arc<Policies>,
    pub now: i64,
    /// `notifications.repeat_interval` in seconds.
    pub repeat: i64,
    /// `safety.restore_expiry` in seconds.
    pub restore_expiry: i64,
    /// Each organisation's next scheduled sweep at the latest (`daemon::schedule::Cadence`),
    /// for the final notices it would bring too late.
    pub next_sweeps: Arc<[(String, i64)]>,
    /// The sweep writes nothing: its warnings say what keysweep would do.
    pub dry_run: bool,
    /// `safety.service_account_keys = "enforce"`: else nothing is written to those keys.
    pub sa_keys_enforced: bool,
}

impl Evaluator {
    /// Whether this sweep writes nothing to `key`, whatever its findings: its notices then say
    /// what keysweep would do.
    fn writes_nothing_to(&self, key: &Key) -> bool {
        self.dry_run || self.sa_notify_only(key)
    }

    /// A service-account key under `service_account_keys = "notify-only"`.
    fn sa_notify_only(&self, key: &Key) -> bool {
        key.owner.kind == crate::inventory::OwnerType::ServiceAccount && !self.sa_keys_enforced
    }

    /// When `organization`'s next scheduled sweep starts at the latest, if known.
    fn next_sweep(&self, organization: &str) -> Option<i64> {
        (self.next_sweeps.iter()).find_map(|(o, at)| (o == organization).then_some(*at))
    }

    /// Evaluates one listed key against every policy that flags it and every open finding on it.
    pub(crate) fn key(&self, key: &Key, open: &OpenFindings, step: &mut Step) {
        let now = self.now;
        let eval: Evaluation = self.policies.evaluate(key, now);
        if let Some(hit) = &eval.exemption {
            step.exempted.push((key.clone(), hit.reason.clone()));
        }
        for e in &eval.expired_exemptions {
            step.expired.push((key.clone(), e.reason.clone(), e.until));
        }
        let mine = open.of_key(&key.project_id, &key.id);
        if eval.violations.is_empty() && mine.is_empty() {
            return;
        }
        // Every policy that flags the key, plus every policy with an open finding on it.
        let mut policies: Vec<&str> = eval.violations.iter().map(|v| v.policy.as_str()).collect();
        for &i in mine {
            let p = open.findings[i].id.policy.as_str();
            if !policies.contains(&p) {
                policies.push(p);
            }
        }
        let first_transition = step.transitions.len();
        let mut restores = Vec::new();
        let mut undecided_ending = false;
        for policy in policies {
            let before = mine
                .iter()
                .map(|&i| (i, &open.findings[i]))
                .find(|(_, f)| f.id.policy == policy);
            if eval.undecided.iter().any(|u| u == policy) {
                // Undecidable in this sweep (the audit log could not be read, or the listing
                // omitted the key's last use): the finding stays as it is, neither advanced nor
                // closed.
                if let Some((i, f)) = before {
                    step.touched.push(i);
                    undecided_ending |= holds_the_expiry(f, key.expires_at);
                }
                continue;
            }
            let id = FindingId {
                organization: key.organization.clone(),
                project_id: key.project_id.clone(),
                key_id: key.id.clone(),
                policy: policy.to_string(),
            };
            let prev = before.map(|(_, f)| f);
            let mut t = lifecycle::advance(
                prev,
                now,
                observe(&eval, key, policy, now),
                self.repeat,
                self.next_sweep(&key.organization),
                self.writes_nothing_to(key),
            );
            // Under `notify-only` every message about a service-account key says keysweep will
            // not write to it (a reminder, a final notice too): once that is turned to
            // `enforce`, the key is warned again before anything is written, whatever it was
            // told before (a real warning, or a finding stored by an earlier release).
            if self.sa_notify_only(key)
                && let Some(f) = t.next.as_mut()
                && f.stage.is_open()
                && f.action.enforces()
            {
                f.warned_dry_run = true;
            }
            if let Some(r) = self.writes(key, &id, prev, &t, step) {
                restores.push((step.transitions.len(), r));
            }
            if let Some((i, _)) = before {
                step.touched.push(i);
            }
            step.transitions.push((before.map(|(_, f)| f.stage), t));
        }
        // Almost every key has no restore: its transitions are not looked at again.
        if restores.is_empty() {
            return;
        }
        let ending = undecided_ending
            || (step.transitions[first_transition..].iter()).any(|(_, t)| {
                (t.next.as_ref()).is_some_and(|f| holds_the_expiry(f, key.expires_at))
            });
        if !ending {
            self.plan_restores(restores, step);
        }
    }

    /// Plans the restores of a key's withdrawn findings; `restores` pairs each with the index
    /// of its transition in `step`. Only when no other finding on the key holds the expiry it
    /// has (the caller's check, [`holds_the_expiry`]): that expiry is theirs too, and moving it
    /// back out would let the key outlive their deadline (and have the next sweep set it again).
    fn plan_restores(&self, restores: Vec<(usize, PlannedRestore)>, step: &mut Step) {
        for (at, r) in restores {
            if let Some(f) = step
                .transitions
                .get_mut(at)
                .and_then(|(_, t)| t.next.as_mut())
            {
                // The resolved notice and the audit record say so: the API cannot remove an
                // expiry.
                let to = r.restore.targets(self.now).first().copied();
                let said = format!(
                    "; the expiry keysweep set ({}) moves back out to {}",
                    crate::timefmt::rfc3339(r.restore.from),
                    to.map_or_else(|| "a later date".to_string(), crate::timefmt::rfc3339)
                );
                if !f.stage.is_open() {
                    f.resolution = Some(format!("{}{said}", f.resolution.as_deref().unwrap_or("")));
                }
                // Owed from now on, whatever becomes of this sweep's attempt: a dry-run, a
                // shutdown, a crash or an incomplete organisation must not forget it (the key
                // would end at its old deadline). The attempt's outcome settles it.
                f.expiry.restore_pending = true;
            }
            step.restores.push(r);
        }
    }

    /// What the finding's step asks to write: a DELETE due or an expiry to set (added to
    /// `step`), or an expiry to move back out (returned: [`Self::plan_restores`] decides).
    fn writes(
        &self,
        key: &Key,
        id: &FindingId,
        prev: Option<&Finding>,
        t: &lifecycle::Transition,
        step: &mut Step,
    ) -> Option<PlannedRestore> {
        let f = t.next.as_ref()?;
        if t.revoke_due && f.action == Action::Revoke {
            step.candidates.push(Candidate {
                finding: id.clone(),
                key: key.clone(),
                deadline: f.deadline,
                write: Write::Delete,
            });
        }
        if let Some(set) = expiry::set_due(f, key, self.now) {
            step.candidates.push(Candidate {
                finding: id.clone(),
                key: key.clone(),
                deadline: f.deadline,
                write: Write::SetExpiry { to: set.to },
            });
        }
        let prev = prev?;
        let restore = expiry::restore_due(prev, f, key, self.now, self.restore_expiry)?;
        (!self.expiry_is_what_complies(key, &id.policy)).then(|| PlannedRestore {
            finding: id.clone(),
            key: key.clone(),
            restore,
        })
    }

    /// True when the key complies with `policy` only because of its expiry (a `max_lifetime`
    /// finding met by the expiry keysweep set): that is the finding's success, not its
    /// withdrawal, and the expiry must stay.
    fn expiry_is_what_complies(&self, key: &Key, policy: &str) -> bool {
        let with = self.policies.evaluate(key, self.now);
        let without = Key {
            expires_at: Expiry::Never,
            ..key.clone()
        };
        let without = self.policies.evaluate(&without, self.now);
        !with.is_exempt() && with.violation(policy).is_none() && without.violation(policy).is_some()
    }

    /// Closes the open findings whose key was absent from a complete listing of its project
    /// (gone) or whose policy no longer exists (compliant). `step` must hold every key step of
    /// the organisation's complete projects, and only those.
    pub(crate) fn gone(
        &self,
        open: &OpenFindings,
        complete_projects: &HashSet<&str>,
        step: &mut Step,
    ) {
        let mut touched = vec![false; open.findings.len()];
        for &i in &step.touched {
            if let Some(t) = touched.get_mut(i) {
                *t = true;
            }
        }
        for (f, _) in open.findings.iter().zip(&touched).filter(|(_, t)| !**t) {
            if !complete_projects.contains(f.id.project_id.as_str()) {
                continue;
            }
            // A key past the expiry it was last seen with has ended, whether the listing still
            // shows it or not (the API may drop expired keys).
            let ended = f
                .expires_at
                .at()
                .filter(|&at| at <= self.now.saturating_add(EXPIRY_TOLERANCE));
            let observed = if let Some(at) = ended {
                Observation::Expired { at: Some(at) }
            } else if self.policies.names().any(|n| n == f.id.policy) {
                Observation::Gone
            } else {
                Observation::Compliant
            };
            let t = lifecycle::advance(
                Some(f),
                self.now,
                observed,
                self.repeat,
                self.next_sweep(&f.id.organization),
                self.dry_run,
            );
            step.transitions.push((Some(f.stage), t));
        }
    }
}

/// Whether an open finding holds on to the expiry the key has now (`current`): an `expire`
/// finding the organisation's expiry policy did not refuse, which recorded that very expiry as
/// its own (`expiry.set`), so that its own withdrawal later moves it back out. One that did not
/// (opened after the expiry was in place, a rotation, one whose own expiry a later, earlier one
/// replaced) holds nothing: a restore waiting on it would never be made, and it sets its own
/// expiry at the next sweep if it needs one.
fn holds_the_expiry(f: &Finding, current: Expiry) -> bool {
    f.stage.is_open()
        && f.action == Action::Expire
        && f.expiry.refused.is_none()
        && (f.expiry.set).is_some_and(|s| crate::inventory::expiry_matches(current, s.to))
}

/// What the sweep tells the lifecycle about (`key`, `policy`): the key's end first (an expired
/// key is over, whatever the policies say), then the rules' verdict.
///
/// A `max_lifetime` finding whose key already ends by its deadline (the expiry keysweep set, or
/// the owner's) stays open until the key ends: the key still violates the rule (a key older than
/// its lifetime can never end by a limit that has passed), so closing it would open a new
/// finding at the next sweep, and the close would move keysweep's expiry back out. The verdict
/// of such a finding is that the key ends, and nothing is written to it.
fn observe<'a>(eval: &'a Evaluation, key: &'a Key, policy: &str, now: i64) -> Observation<'a> {
    if key.expires_at.is_expired(now) {
        return Observation::Expired {
            at: key.expires_at.at(),
        };
    }
    eval.observation(key, policy)
}
