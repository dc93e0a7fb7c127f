//! Between plan and commit: what the audit log and usage (issue 16) add to what this sweep tells
//! people. Each notice gets its key's usage over `[usage] window`; a service-account key's
//! notices get their route (its creator while still a user of the project, else the project's
//! owners, else `owner_fallback`: `notify::route::service_account_route`) when one of their
//! channels mails owners; a key that woke up gets its owner's route when some e-mail channel
//! has `owner = true` (else the fallback), so its alert reaches that person at once; a finding
//! closed because its key was deleted outside keysweep says who deleted it (the actor of the
//! key's `api_key.deleted`, or "unknown").
//!
//! The only requests it makes are reads of the users of the projects whose service-account
//! keys (or woken keys) are told about in person in this sweep, and, before the reconcile
//! phase, of the projects whose service-account key a crash left with a pending DELETE
//! (`reconcile_routes`: its `revoked` notice is routed like the others). It never writes to the API,
//! never composes a message (notify's) and never decides a finding's step (policy's): it
//! annotates.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::intel::{Intel, UsageSummary};
use crate::inventory::{OwnerType, ProjectUser};
use crate::notify::alert::EnforcerAlert;
use crate::notify::route::{mails_owners, service_account_route, user_route, woke_up_mailed};
use crate::policy::finding::{FindingId, NoticeIntel, NoticeKind, OwnerRoute, Stage, UsageNote};
use crate::policy::lifecycle::KEY_DELETED;
use crate::policy::plan::Plan;
use crate::revoke::ConfirmedDelete;
use crate::state::rotations::Replacements;

use super::advance::Advanced;
use super::evaluate::OpenFindings;
use super::notes::{KeyNotes, KeyRef};
use super::record::Recorded;
use super::report::SweepError;
use super::run::Run;

/// A usage summary as notices carry it (cost in millionths of a dollar).
fn usage_note(u: UsageSummary) -> UsageNote {
    // A cost is never negative and far below 2^64 micro-dollars.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let micros = (u.cost_usd.max(0.0) * 1_000_000.0).round() as u64;
    UsageNote {
        window_days: u.window_days,
        requests: u.requests,
        cost_micros: u.cost_usd.is_finite().then_some(micros),
    }
}

/// Who deleted `key_id` of `organization`, as the audit log says (`None`: it does not say).
fn deleted_by<'i>(intel: &'i Intel, organization: &str, key_id: &str) -> Option<&'i str> {
    intel.key(organization, key_id).deleted_by
}

/// The resolution of a finding closed because its key was deleted outside keysweep.
fn deleted_resolution(by: Option<&str>) -> String {
    match by {
        Some(who) => format!("{KEY_DELETED} by {who}"),
        None => format!("{KEY_DELETED} by unknown (the audit log does not say who)"),
    }
}

impl Run<'_> {
    /// Annotates this sweep's findings, notices and woke-up alerts with what `intel` says (see
    /// the module docs), and keeps each key's notes for the notices of later phases.
    pub(super) async fn note_intel(
        &self,
        intel: &Intel,
        plan: &Plan,
        advanced: &mut Advanced,
        alerts: &mut [EnforcerAlert],
    ) -> Result<(), SweepError> {
        self.note_deleted_by(intel, advanced);
        let routed = self.routed_keys(plan, advanced);
        let replaced = self.replacements();
        let mut projects: BTreeSet<(String, String)> = (routed.iter())
            .map(|(o, p, _)| (o.clone(), p.clone()))
            .collect();
        // Without a channel that mails a woke-up alert in person, its route is the fallback
        // and no project's users are read for it.
        let woke_mailed = woke_up_mailed(&self.sweeper.notify);
        for a in alerts.iter() {
            if let EnforcerAlert::KeyWokeUp {
                organization,
                project_id,
                ..
            } = a
                && woke_mailed
            {
                projects.insert((organization.clone(), project_id.clone()));
            }
        }
        let users = self.project_users(&projects).await;
        let users_of = |o: &str, p: &str| {
            (users.get(&(o.to_string(), p.to_string()))).and_then(|u| u.as_deref())
        };
        let mut notes = KeyNotes::default();
        for v in &advanced.findings {
            let id = &v.finding.id;
            let usage = intel
                .key(&id.organization, &id.key_id)
                .usage
                .map(usage_note);
            // Only what says something is noted: a notice without a note reads "usage unknown"
            // and is routed as any key's, exactly as with an empty one, and a steady sweep at
            // 1,000 projects has 20k findings with nothing to note (the `[usage]` reads off).
            if usage.is_none() && routed.is_empty() {
                continue;
            }
            let key = (
                id.organization.clone(),
                id.project_id.clone(),
                id.key_id.clone(),
            );
            let route = routed.contains(&key).then(|| {
                let creator = creator(intel, replaced, &id.organization, &id.key_id);
                service_account_route(creator, users_of(&id.organization, &id.project_id))
            });
            if usage.is_some() || route.is_some() {
                notes.insert(key, NoticeIntel { usage, route });
            }
        }
        notes.annotate(&mut advanced.notices, &self.sweeper.notify);
        for a in alerts.iter_mut() {
            self.route_woke_up(intel, replaced, a, &users_of, woke_mailed);
        }
        // A sweep notes once; a second call (never made) would keep the first notes.
        let _ = self.key_notes.set(notes);
        Ok(())
    }

    /// A finding closed in this sweep because its key was deleted says who deleted it, in its
    /// resolution (so in its closing audit record and its `resolved` notice) and a log line.
    fn note_deleted_by(&self, intel: &Intel, advanced: &mut Advanced) {
        let now = self.now();
        let closed_now = |stage: Stage, resolution: Option<&str>, closed_at: Option<i64>| {
            stage == Stage::Resolved && resolution == Some(KEY_DELETED) && closed_at == Some(now)
        };
        for v in &mut advanced.findings {
            let f = &v.finding;
            if !closed_now(f.stage, f.resolution.as_deref(), f.closed_at) {
                continue;
            }
            let by = deleted_by(intel, &f.id.organization, &f.id.key_id);
            tracing::info!(
                run_id = self.run_id(),
                organization = %f.id.organization,
                project_id = %f.id.project_id,
                key_id = %f.id.key_id,
                policy = %f.id.policy,
                deleted_by = %crate::text::log_field(by.unwrap_or("unknown")),
                "finding closed: the key was deleted outside keysweep"
            );
            Arc::make_mut(&mut v.finding).resolution = Some(deleted_resolution(by));
        }
        for n in &mut advanced.notices {
            let f = &n.finding;
            if n.kind == NoticeKind::Resolved
                && closed_now(f.stage, f.resolution.as_deref(), f.closed_at)
            {
                let by = deleted_by(intel, &f.id.organization, &f.id.key_id);
                Arc::make_mut(&mut n.finding).resolution = Some(deleted_resolution(by));
            }
        }
    }

    /// The service-account keys whose route this sweep needs: those with a notice now, a
    /// write planned now, or an open finding under a `rotate` policy (its `rotated` notice),
    /// whose notices an e-mail channel mails to owners. Without such a channel nobody is told
    /// in person (the notice goes to `owner_fallback`), so their projects' users are not read.
    fn routed_keys(&self, plan: &Plan, advanced: &Advanced) -> HashSet<KeyRef> {
        let notify = &self.sweeper.notify;
        let rotating: HashSet<&str> = (self.sweeper.config.rotations.iter())
            .map(|r| r.policy.as_str())
            .collect();
        let told: HashSet<_> = advanced.notices.iter().map(|n| &n.finding.id).collect();
        let written: HashSet<_> = plan.revoke.iter().flat_map(|a| &a.findings).collect();
        (advanced.findings.iter())
            .map(|v| &v.finding)
            .filter(|f| f.owner_type == OwnerType::ServiceAccount)
            .filter(|f| {
                told.contains(&f.id)
                    || written.contains(&f.id)
                    || (f.stage.is_open() && rotating.contains(f.id.policy.as_str()))
            })
            .filter(|f| {
                mails_owners(
                    notify,
                    &f.id.policy,
                    &f.id.project_id,
                    f.project_name.as_deref(),
                )
            })
            .map(|f| {
                (
                    f.id.organization.clone(),
                    f.id.project_id.clone(),
                    f.id.key_id.clone(),
                )
            })
            .collect()
    }

    /// The owner routes of the service-account keys an interrupted write left pending, and of
    /// those of `left_open` (deletes whose findings a stopped sweep did not close), for the
    /// `revoked` notices the reconcile phase queues when it finds the DELETE went through: they
    /// are told in person like a sweep's, not only to `owner_fallback`. Read before the
    /// reconcile, from what is stored (the creator as earlier sweeps' audit-log history knows
    /// it, through the keys a minted key replaced) and the project's users. A creator never
    /// changes, so the stored one is the sweep's. Empty when nothing is pending (no request).
    pub(super) async fn reconcile_routes(
        &self,
        left_open: &[ConfirmedDelete<'_>],
    ) -> HashMap<KeyRef, OwnerRoute> {
        let notify = &self.sweeper.notify;
        let pending = self.store.with_conn(|c| {
            let mut keys = BTreeSet::new();
            let unmatched = crate::state::audit::unmatched_intents(c)?;
            let unmatched = unmatched.iter().filter_map(|row| {
                let r = &row.record;
                Some((
                    r.organization.as_deref()?,
                    r.project_id.as_deref()?,
                    r.key_id.as_deref()?,
                    r.policy.as_deref(),
                ))
            });
            let closing = (left_open.iter()).map(|c| {
                let d = &c.delete;
                (d.organization, d.project_id, d.key_id, d.policy_list())
            });
            for (org, project, key, policies) in unmatched.chain(closing) {
                let (org, project, key) = (org.to_string(), project.to_string(), key.to_string());
                for policy in crate::revoke::intent_policies(policies) {
                    let id = FindingId {
                        organization: org.clone(),
                        project_id: project.clone(),
                        key_id: key.clone(),
                        policy: policy.to_string(),
                    };
                    let told = crate::state::findings::get_finding(c, &id)?.is_some_and(|f| {
                        f.owner_type == OwnerType::ServiceAccount
                            && mails_owners(notify, policy, &project, f.project_name.as_deref())
                    });
                    if told {
                        keys.insert((org.clone(), project.clone(), key.clone()));
                    }
                }
            }
            Ok(keys)
        });
        let pending = pending.unwrap_or_else(|e| {
            // The reconcile reads the same and fails with it; its notices then go to the
            // fallback, as any without a route.
            tracing::warn!(
                "cannot read the pending writes' keys: {}",
                crate::error_chain(&e)
            );
            BTreeSet::new()
        });
        if pending.is_empty() {
            return HashMap::new();
        }
        let projects = (pending.iter())
            .map(|(o, p, _)| (o.clone(), p.clone()))
            .collect();
        let users = self.project_users(&projects).await;
        let replaced = self.replacements();
        let mut routes = HashMap::new();
        for (org, project, key) in pending {
            let first = lineage(replaced, &org, &key).last().unwrap_or(&key);
            let mut created_by = None;
            let read = self.store.with_conn(|c| {
                crate::state::intel::histories_of(c, &org, [first], |row| {
                    created_by = row.created_by;
                })
            });
            if let Err(e) = read {
                tracing::warn!(
                    organization = %org,
                    key_id = %key,
                    "cannot read the key's stored creator: {}",
                    crate::error_chain(&e)
                );
            }
            let users = (users.get(&(org.clone(), project.clone()))).and_then(|u| u.as_deref());
            let route = service_account_route(created_by.as_deref(), users);
            routes.insert((org, project, key), route);
        }
        routes
    }

    /// The users of each project (`None`: they could not be listed; said in the log), read
    /// `[limits] concurrency` projects at a time.
    async fn project_users(
        &self,
        projects: &BTreeSet<(String, String)>,
    ) -> BTreeMap<(String, String), Option<Vec<ProjectUser>>> {
        let limit = self.sweeper.config.limits.concurrency.max(1);
        let mut queue = projects.iter().cloned();
        let mut running = tokio::task::JoinSet::new();
        let mut out = BTreeMap::new();
        loop {
            while running.len() < limit {
                let Some((org, project)) = queue.next() else {
                    break;
                };
                let client = self.clients.iter().find(|c| c.org_name() == org).cloned();
                running.spawn(async move {
                    let users = match client {
                        Some(c) => c
                            .list_project_users(&project)
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err("no client for the organisation".to_string()),
                    };
                    (org, project, users)
                });
            }
            let Some(done) = running.join_next().await else {
                return out;
            };
            let Ok((org, project, users)) = done else {
                continue;
            };
            let users = users
                .inspect_err(|e| {
                    tracing::warn!(run_id = self.run_id(), organization = %org, project_id = %project,
                        error = %e, "cannot list the project's users: its service-account keys' notices go to owner_fallback");
                })
                .ok();
            out.insert((org, project), users);
        }
    }

    /// Gives a `KeyWokeUp` alert its owner route: a service-account key's creator (else the
    /// project's owners), a user key's owner (the API's e-mail for them) while a user of the
    /// project; else, and whenever no channel mails owners (`mailed` false), the fallback.
    fn route_woke_up<'u>(
        &self,
        intel: &Intel,
        replaced: &Replacements,
        alert: &mut EnforcerAlert,
        users_of: &impl Fn(&str, &str) -> Option<&'u [ProjectUser]>,
        mailed: bool,
    ) {
        let EnforcerAlert::KeyWokeUp {
            organization,
            project_id,
            key_id,
            owner,
            listed_owner,
            ..
        } = alert
        else {
            return;
        };
        // By the owner's kind and the API's e-mail as this listing gave them: a display name
        // is the owner's own choice and may read like another member's address.
        let users = users_of(organization, project_id);
        let route = match listed_owner {
            _ if !mailed => OwnerRoute::Fallback,
            Some((OwnerType::ServiceAccount, _)) => {
                service_account_route(creator(intel, replaced, organization, key_id), users)
            }
            Some((OwnerType::User, email)) => user_route(email.as_deref(), users),
            _ => OwnerRoute::Fallback,
        };
        *owner = Some(route);
    }
}

/// Who created a service-account key, as the log says. A key keysweep minted in a rotation was
/// created by keysweep's admin key, whose owner is nobody the key's notices are for: such a key
/// is followed back to the key it replaced, whose creator is the person behind the service
/// account (a few hops at most).
fn creator<'i>(
    intel: &'i Intel,
    replaced: &Replacements,
    organization: &str,
    key_id: &str,
) -> Option<&'i str> {
    let first = lineage(replaced, organization, key_id).last();
    intel.key(organization, first.unwrap_or(key_id)).created_by
}

/// `key_id`, then the key it replaced, and so on back to a key keysweep did not mint (eight
/// hops at most: a cycle in the table is a bug, never a hang).
fn lineage<'a>(
    replaced: &'a Replacements,
    organization: &'a str,
    key_id: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    std::iter::successors(Some(key_id), move |k| {
        (replaced.get(&(organization.to_string(), (*k).to_string()))).map(String::as_str)
    })
    .take(9)
}

impl Run<'_> {
    /// [`Replacements`], read once per sweep (the intel kept after the listing and the routes
    /// follow the same chains); a failed read routes minted keys by their own creator (their
    /// project's owners, then the fallback), as before rotations existed.
    fn replacements(&self) -> &Replacements {
        self.replaced.get_or_init(|| {
            (self.store.with_conn(crate::state::rotations::replacements)).unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot read which keys keysweep minted: {}",
                    crate::error_chain(&e)
                );
                Replacements::new()
            })
        })
    }

    /// Keeps the audit log's history and usage of only the keys a phase after the listing
    /// reads: reads them back where the history was let go while listing (`Intel::park`),
    /// gives back the rest. Those phases read only the keys of this sweep's findings (an open
    /// one or a new one: the notices' usage and routes, who deleted a key, a rotation's logged
    /// scopes), of its woken keys (their alerts' routes), and the keys each of those replaced
    /// (a minted key is routed by its first predecessor's creator). The gap alerts, which read
    /// every key of the log, took what they need before the listing (`Run::logged_alive`).
    pub(super) fn keep_intel_read_later(
        &self,
        intel: &mut Intel,
        open: &[Arc<OpenFindings>],
        recorded: &[Recorded],
    ) {
        let replaced = self.replacements();
        let mut keys: HashSet<(&str, &str)> = HashSet::new();
        for ((c, open), rec) in self.clients.iter().zip(open).zip(recorded) {
            let org = c.org_name();
            let new = (rec.step.transitions.iter())
                .filter_map(|(_, t)| t.next.as_ref())
                .map(|f| f.id.key_id.as_str());
            let woke = rec.woke.iter().map(|w| w.key_id.as_str());
            for key in open.key_ids().chain(new).chain(woke) {
                keys.extend(lineage(replaced, org, key).map(|k| (org, k)));
            }
        }
        intel.unpark(&self.store, &keys);
        intel.retain_keys(|org, key| keys.contains(&(org, key)));
        tracing::debug!(
            run_id = self.run_id(),
            kept = intel.history_len(),
            "audit-log history kept for the notices"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_key_says_who_deleted_it_or_unknown() {
        assert_eq!(
            deleted_resolution(Some("bob@example.com")),
            "key deleted by bob@example.com"
        );
        assert!(deleted_resolution(None).starts_with("key deleted by unknown"));
    }

    #[test]
    fn usage_is_kept_in_micro_dollars() {
        let u = usage_note(UsageSummary {
            window_days: 30,
            requests: 1_240,
            cost_usd: 3.1,
        });
        assert_eq!(
            (u.window_days, u.requests, u.cost_micros),
            (30, 1_240, Some(3_100_000))
        );
    }
}
