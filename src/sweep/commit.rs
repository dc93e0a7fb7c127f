//! Phase 5, commit: the advanced findings with their decision records, their notices
//! (composed by `notify`, queued to the outbox), the alerts and the other audit records, in ONE
//! transaction. A crash leaves either all of them or none (and the next sweep takes the step
//! again), so a notice is never sent twice nor forgotten. Nothing is sent from here.

use std::collections::HashSet;

use serde_json::json;

use crate::config::Action;
use crate::notify::alert::EnforcerAlert;
use crate::notify::compose::Composed;
use crate::notify::digest::alert_text;
use crate::policy::finding::{Finding, Notice, NoticeKind, Stage};
use crate::state::audit::{self, AuditKind, AuditRecord};
use crate::state::{self, StateError};

use super::advance::{Advanced, Change};
use super::report::{FindingView, SweepError, fmt_time};
use super::run::Run;

/// From this many notices on, the commit composes them on a thread of its own.
const COMPOSE_APART: usize = 256;

/// What the commit queued.
pub(super) struct Committed {
    /// Messages composed for the outbox.
    pub notices_queued: usize,
    /// The alerts raised (those raised within the repeat interval already are not again).
    pub alerts: Vec<EnforcerAlert>,
    /// Seconds since the sweep started, once committed.
    pub seconds: f64,
}

impl Run<'_> {
    /// Commits `advanced`'s changes and notices (which it drops: memory is for what follows),
    /// `alerts`, the expired exemptions and `records`.
    pub(super) fn commit(
        &self,
        advanced: &mut Advanced,
        alerts: Vec<EnforcerAlert>,
        withheld: Vec<AuditRecord>,
    ) -> Result<Committed, SweepError> {
        let alerts = self.dedup_alerts(alerts)?;
        let mut records: Vec<AuditRecord> = advanced
            .expired
            .iter()
            .map(|(key, reason, until)| {
                self.record(AuditKind::Exempted, format!("exemption expired: {reason}"))
                    .with_key(key)
                    .with_response(json!({ "until": until }))
            })
            .collect();
        records.extend(withheld);
        let changes = std::mem::take(&mut advanced.changes);
        let notices = std::mem::take(&mut advanced.notices);
        let findings = &advanced.findings;
        let notices_queued = self.enqueue(
            |tx| self.write_changes(tx, findings, &changes),
            notices,
            &alerts,
            records,
        )?;
        Ok(Committed {
            notices_queued,
            alerts,
            seconds: self.elapsed(),
        })
    }

    fn write_changes(
        &self,
        tx: &rusqlite::Transaction<'_>,
        findings: &[FindingView],
        changes: &[Change],
    ) -> Result<(), StateError> {
        let now = self.now();
        // Multi-row statements (`state::batch`): the findings, then their decision records in
        // the order of `changes`, so the chain is the one one `append` per change writes.
        state::findings::upsert_findings(
            tx,
            changes.iter().map(|c| &*findings[c.at].finding),
            now,
        )?;
        audit::append_batched(tx, |log| {
            for change in changes {
                if let Some(d) = &change.decision {
                    let f = &findings[change.at].finding;
                    log.push(&self.decision_record(f, d.before, &d.notices))?;
                }
            }
            Ok(())
        })
    }

    /// Alerts already raised within the repeat interval are not raised again, except a sweep's
    /// total that this very sweep (not another one started in the same second) raised a part
    /// of before ([`EnforcerAlert::is_sweep_total`]): the enforce phase's cap alert counts what
    /// planning withheld too, and goes out again with the whole count.
    pub(super) fn dedup_alerts(
        &self,
        alerts: Vec<EnforcerAlert>,
    ) -> Result<Vec<EnforcerAlert>, SweepError> {
        let repeat = self.sweeper.config.notifications.repeat_interval;
        let now = self.now();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for a in alerts {
            if !seen.insert(a.dedup_key()) {
                continue;
            }
            let key = a.dedup_key();
            let mut raised =
                (self.raised.lock()).unwrap_or_else(std::sync::PoisonError::into_inner);
            let update = a.is_sweep_total() && raised.contains(&key);
            if update
                || (self.store).with_conn(|c| state::alerts::should_raise(c, &key, now, repeat))?
            {
                raised.insert(key);
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Composes the messages of `notices` and `alerts` (`notify::compose`) and writes them in
    /// one transaction with what `findings` writes, the alerts and `records`. Returns how many
    /// messages were composed. The notices share their findings with the sweep's view
    /// (`Arc<Finding>`), so keeping them until the messages are queued costs little.
    pub(super) fn enqueue(
        &self,
        findings: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), StateError>,
        mut notices: Vec<Notice>,
        alerts: &[EnforcerAlert],
        mut records: Vec<AuditRecord>,
    ) -> Result<usize, SweepError> {
        let now = self.now();
        // The notices of later phases (revoked, rotated) get what this sweep noted of their
        // keys (`owners.rs`): usage, and a service-account key's route.
        if let Some(k) = self.key_notes.get() {
            k.annotate(&mut notices, &self.sweeper.notify);
        }
        for a in alerts {
            tracing::warn!(run_id = self.run_id(), alert = %a.dedup_key(), "enforcer alert: {}", crate::text::log_field(&alert_text(a)));
            records.push(
                self.record(AuditKind::Alert, alert_text(a))
                    .with_response(serde_json::to_value(a).unwrap_or_default()),
            );
        }
        let phase = (self.enqueued).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scope = (self.run_id(), phase);
        let compose = || Composed::in_phase(&notices, alerts, &self.sweeper.notify, scope, now);
        // Many notices (a first sweep's) are composed on a thread of their own while this one
        // writes the findings and their audit records: the two are independent until the
        // messages are queued, in the same transaction.
        let queued = std::thread::scope(|scope| {
            let mut composing = (notices.len() >= COMPOSE_APART).then(|| scope.spawn(compose));
            // A first sweep's commit dirties tens of MiB: `bulk_tx` releases its page cache after.
            self.store.bulk_tx(|tx| {
                findings(tx)?;
                for a in alerts {
                    state::alerts::record_raised(tx, a, now)?;
                }
                audit::append_all(tx, &records)?;
                let composed = match composing.take() {
                    // Composing is pure: a panic there is a bug, re-raised here as it would
                    // have been without the thread.
                    Some(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    None => compose(),
                }?;
                composed.queue(tx, now)?;
                Ok(composed.len())
            })
        })?;
        Ok(queued)
    }

    /// A decision's audit record: what was found, closed or told.
    fn decision_record(
        &self,
        f: &Finding,
        before: Option<Stage>,
        notices: &[NoticeKind],
    ) -> AuditRecord {
        let kind = match f.stage {
            Stage::Resolved => AuditKind::Resolved,
            Stage::Exempted => AuditKind::Exempted,
            Stage::Expired => AuditKind::Resolved,
            _ if before.is_none() => AuditKind::Decision,
            _ => AuditKind::Notice,
        };
        let what = match (before, f.stage) {
            (None, _) => format!(
                "{} violates {}: {}; {}",
                f.key_name,
                f.id.policy,
                f.reason,
                match f.action {
                    Action::Revoke => format!("revocation deadline {}", fmt_time(f.deadline)),
                    Action::Expire => format!("expiry deadline {}", fmt_time(f.deadline)),
                    Action::Notify => "notify only".to_string(),
                }
            ),
            (_, Stage::Resolved | Stage::Exempted | Stage::Expired) => {
                format!(
                    "finding closed: {}",
                    f.resolution.as_deref().unwrap_or("resolved")
                )
            }
            _ => format!(
                "{} for {}",
                notices
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                f.id.policy
            ),
        };
        let notices: Vec<&str> = notices.iter().map(|n| n.as_str()).collect();
        self.record(kind, what)
            .with_finding(f)
            .with_response(json!({ "notices": notices }))
    }
}
