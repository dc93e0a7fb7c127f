//! Digests: what one message says, before it is rendered for a channel.
//!
//! A digest is the content for one (channel, recipient, kind) in one sweep: either notices of a
//! single kind grouped by project, or enforcer alerts. It is pure data plus the wording every
//! renderer shares (titles, status lines, dates), so e-mail, Slack and webhooks say the same
//! thing. Nothing here does I/O or reads the clock; nothing here may hold a secret.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::Action;
use crate::inventory::Expiry;
use crate::notify::MessageKind;
use crate::notify::alert::EnforcerAlert;
use crate::policy::finding::{Notice, NoticeKind};

/// One message's content.
#[derive(Debug, Clone)]
pub struct Digest {
    pub kind: MessageKind,
    pub run_id: String,
    /// Unix seconds the digest was composed at.
    pub generated_at: i64,
    pub body: Body,
    /// `(i, n)`: part `i` (from 1) of a digest sent as `n` messages; `None` when sent whole.
    pub part: Option<(usize, usize)>,
}

#[derive(Debug, Clone)]
pub enum Body {
    /// Notices of `Digest::kind`, grouped by project (sorted by organisation, project name).
    Notices(Vec<ProjectGroup>),
    Alerts(Vec<EnforcerAlert>),
    /// A `keysweep notify test` message.
    Test,
}

/// The notices of one project.
#[derive(Debug, Clone)]
pub struct ProjectGroup {
    pub organization: String,
    pub project_id: String,
    pub project_name: Option<String>,
    pub notices: Vec<Notice>,
}

impl ProjectGroup {
    /// `name (id)`, or the id alone when the name is unknown.
    pub fn label(&self) -> String {
        match &self.project_name {
            Some(n) if n != &self.project_id => format!("{n} ({})", self.project_id),
            _ => self.project_id.clone(),
        }
    }
}

impl Digest {
    /// Groups notices (all of one kind) by project. Order is deterministic: organisation, then
    /// project name/id, then key name, then policy.
    pub fn notices(kind: MessageKind, run_id: &str, now: i64, notices: &[&Notice]) -> Digest {
        let mut groups: BTreeMap<(String, String), ProjectGroup> = BTreeMap::new();
        for n in notices {
            let id = &n.finding.id;
            let g = groups
                .entry((id.organization.clone(), id.project_id.clone()))
                .or_insert_with(|| ProjectGroup {
                    organization: id.organization.clone(),
                    project_id: id.project_id.clone(),
                    project_name: n.finding.project_name.clone(),
                    notices: Vec::new(),
                });
            if g.project_name.is_none() {
                g.project_name = n.finding.project_name.clone();
            }
            g.notices.push((*n).clone());
        }
        let mut groups: Vec<ProjectGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| {
            (
                &a.organization,
                a.project_name.as_ref().unwrap_or(&a.project_id),
                &a.project_id,
            )
                .cmp(&(
                    &b.organization,
                    b.project_name.as_ref().unwrap_or(&b.project_id),
                    &b.project_id,
                ))
        });
        for g in &mut groups {
            g.notices.sort_by(|a, b| {
                (
                    &a.finding.key_name,
                    &a.finding.id.key_id,
                    &a.finding.id.policy,
                )
                    .cmp(&(
                        &b.finding.key_name,
                        &b.finding.id.key_id,
                        &b.finding.id.policy,
                    ))
            });
        }
        Digest {
            kind,
            run_id: run_id.to_string(),
            generated_at: now,
            body: Body::Notices(groups),
            part: None,
        }
    }

    pub fn alerts(kind: MessageKind, run_id: &str, now: i64, alerts: &[&EnforcerAlert]) -> Digest {
        Digest {
            kind,
            run_id: run_id.to_string(),
            generated_at: now,
            body: Body::Alerts(alerts.iter().map(|a| (*a).clone()).collect()),
            part: None,
        }
    }

    pub fn test(run_id: &str, now: i64) -> Digest {
        Digest {
            kind: MessageKind::Test,
            run_id: run_id.to_string(),
            generated_at: now,
            body: Body::Test,
            part: None,
        }
    }

    /// Number of keys (notices) or alerts listed.
    pub fn count(&self) -> usize {
        match &self.body {
            Body::Notices(g) => g.iter().map(|g| g.notices.len()).sum(),
            Body::Alerts(a) => a.len(),
            Body::Test => 0,
        }
    }

    /// True when every notice is a dry-run notice.
    pub fn all_dry_run(&self) -> bool {
        match &self.body {
            Body::Notices(g) => {
                let mut it = g.iter().flat_map(|g| g.notices.iter()).peekable();
                it.peek().is_some() && it.all(|n| n.dry_run)
            }
            _ => false,
        }
    }

    /// The one-line title used as e-mail subject (after `[keysweep] `), Slack header and
    /// webhook summary.
    pub fn title(&self) -> String {
        match self.part {
            Some((i, n)) if n > 1 => format!("{} (part {i} of {n})", self.whole_title()),
            _ => self.whole_title(),
        }
    }

    fn whole_title(&self) -> String {
        let n = self.count();
        let keys = plural(n, "API key", "API keys");
        // Subject-verb agreement: "1 API key violates", "2 API keys violate".
        let violate = if n == 1 { "violates" } else { "violate" };
        let dry = self.all_dry_run();
        match self.kind {
            MessageKind::Warning => {
                let (revoke, revoke_dry) = self.action_counts(Action::Revoke);
                let (expire, expire_dry) = self.action_counts(Action::Expire);
                let will = if revoke > 0 && revoke == revoke_dry {
                    "would be revoked (dry-run)"
                } else {
                    "will be revoked"
                };
                // An `expire` finding is not revoked: OpenAI ends the key at its expiry.
                let expiring = if expire > 0 && expire == expire_dry {
                    "would get an expiry at the deadline (dry-run)"
                } else {
                    "get an expiry at the deadline"
                };
                match (revoke, expire) {
                    (0, 0) => format!("{keys} {violate} policy"),
                    (r, 0) if r == n => format!("{keys} {violate} policy and {will}"),
                    (r, 0) => format!("{keys} {violate} policy; {r} {will}"),
                    (0, e) => format!("{keys} {violate} policy; {e} {expiring}"),
                    (r, e) => format!("{keys} {violate} policy; {r} {will}, {e} {expiring}"),
                }
            }
            MessageKind::Reminder => format!("Reminder: {keys} still {violate} policy"),
            MessageKind::FinalNotice => {
                let (revoke, _) = self.action_counts(Action::Revoke);
                match (dry, revoke) {
                    (_, 0) => format!("Final notice: {keys} end at the deadline"),
                    (true, _) => format!("Final notice: {keys} would be revoked (dry-run)"),
                    (false, _) => format!("Final notice: {keys} will be revoked"),
                }
            }
            MessageKind::Revoked => {
                if dry {
                    format!("{keys} would be revoked (dry-run)")
                } else {
                    format!("{keys} revoked")
                }
            }
            MessageKind::Resolved => format!("Resolved: {}", plural(n, "finding", "findings")),
            MessageKind::Alert => format!(
                "Enforcer alert: {} attention",
                plural(n, "problem needs", "problems need")
            ),
            MessageKind::DeliveryAlert => format!(
                "Enforcer alert: {} could not be delivered",
                plural(n, "notification", "notifications")
            ),
            MessageKind::Test => "Test message from keysweep".to_string(),
        }
    }

    /// One sentence under the title saying what the reader should do.
    pub fn intro(&self) -> &'static str {
        match self.kind {
            MessageKind::Warning => {
                "The API keys below violate a key policy. Rotate or delete them before the deadline shown, or ask for an exemption."
            }
            MessageKind::Reminder => {
                "The API keys below still violate a key policy. Rotate or delete them before the deadline shown."
            }
            MessageKind::FinalNotice if self.action_counts(Action::Revoke).0 == 0 => {
                "Last notice: OpenAI ends the API keys below at the deadline shown, their expiry. Rotate them before then."
            }
            MessageKind::FinalNotice => {
                "Last notice: the API keys below will be revoked at the deadline shown. Revocation is permanent."
            }
            MessageKind::Revoked => {
                "The API keys below were revoked because they violated a key policy (in dry-run: they would have been)."
            }
            MessageKind::Resolved => "The findings below are closed; nothing more is needed.",
            MessageKind::Alert => "keysweep itself needs attention.",
            MessageKind::DeliveryAlert => {
                "keysweep gave up delivering the notifications below after its last retry."
            }
            MessageKind::Test => {
                "This is a test message sent by `keysweep notify test`. If you can read it, the channel works."
            }
        }
    }

    /// (notices of findings with this action, of which dry-run).
    fn action_counts(&self, action: Action) -> (usize, usize) {
        match &self.body {
            Body::Notices(g) => g
                .iter()
                .flat_map(|g| g.notices.iter())
                .filter(|n| n.finding.action == action && !n.not_enforced)
                .fold((0, 0), |(all, dry), n| {
                    (all + 1, dry + usize::from(n.dry_run))
                }),
            _ => (0, 0),
        }
    }
}

/// The deadline column: the exact revocation date for `revoke` findings.
pub fn deadline_text(n: &Notice) -> String {
    match n.finding.action {
        Action::Revoke | Action::Expire => rfc3339(n.finding.deadline),
        Action::Notify => "none (notify only)".to_string(),
    }
}

/// The key's own expiry as last listed, as of `now`: its date, `never`, `expired at …`, or
/// `unknown` when the API's answer did not carry it (an older API version, or a finding stored
/// before keysweep read expiries).
pub fn expiry_text(n: &Notice, now: i64) -> String {
    // An open `expire` finding's status says which expiry keysweep sets in this sweep (the
    // message is composed before the write): the key's line must say the same date.
    if let Some(to) = expiry_being_set(n) {
        return rfc3339(to);
    }
    match n.finding.expires_at {
        Expiry::Never => "never".to_string(),
        Expiry::Unknown => "unknown".to_string(),
        Expiry::At(at) if at <= now => format!("expired at {}", rfc3339(at)),
        Expiry::At(at) => rfc3339(at),
    }
}

/// What will happen / happened to the key, in words.
pub fn status_text(n: &Notice) -> String {
    let f = &n.finding;
    match n.kind {
        NoticeKind::Warning | NoticeKind::Reminder | NoticeKind::FinalNotice => match f.action {
            Action::Revoke | Action::Expire if n.not_enforced => format!(
                "notification only: service-account keys are not enforced ([safety] \
                 service_account_keys = \"notify-only\"); rotate the key before {}",
                rfc3339(f.deadline)
            ),
            Action::Revoke if n.dry_run => {
                format!("would be revoked (dry-run) at {}", rfc3339(f.deadline))
            }
            Action::Revoke => format!("will be revoked at {}", rfc3339(f.deadline)),
            Action::Expire => expire_status(n),
            Action::Notify => "notification only; keysweep will not revoke this key".to_string(),
        },
        NoticeKind::Revoked if n.dry_run => {
            "would be revoked (dry-run); the key was not deleted".to_string()
        }
        NoticeKind::Revoked => match f.closed_at {
            Some(t) => format!("revoked at {}", rfc3339(t)),
            None => "revoked".to_string(),
        },
        NoticeKind::Resolved => format!(
            "resolved: {}",
            f.resolution
                .as_deref()
                .unwrap_or("no longer violates policy")
        ),
    }
}

/// The expiry an open `expire` finding's notice announces as set (not in dry-run, not refused):
/// the one keysweep set earlier, or the deadline it sets in this sweep.
fn expiry_being_set(n: &Notice) -> Option<i64> {
    let f = &n.finding;
    let open = matches!(
        n.kind,
        NoticeKind::Warning | NoticeKind::Reminder | NoticeKind::FinalNotice
    );
    if !open
        || f.action != Action::Expire
        || n.dry_run
        || n.not_enforced
        || f.expiry.refused.is_some()
    {
        return None;
    }
    if let Some(set) = f.expiry.set {
        return Some(set.to);
    }
    match f.expires_at.at() {
        Some(at) if at <= f.deadline => None,
        _ => Some(f.deadline),
    }
}

/// What an open `expire` finding tells its owner about the key's expiry.
fn expire_status(n: &Notice) -> String {
    let f = &n.finding;
    let deadline = rfc3339(f.deadline);
    if let Some(refused) = &f.expiry.refused {
        return format!(
            "the organisation's expiry policy refused the expiry ({refused}); rotate the key \
             before {deadline}"
        );
    }
    if let Some(set) = f.expiry.set {
        return format!(
            "the expiry is already set to {}: OpenAI ends the key then",
            rfc3339(set.to)
        );
    }
    match f.expires_at.at() {
        Some(at) if at <= f.deadline => format!("the key already expires at {}", rfc3339(at)),
        _ if n.dry_run => format!("would set the expiry to {deadline} (dry-run)"),
        _ => format!("the expiry is set to {deadline}: OpenAI ends the key then"),
    }
}

/// A one-line description of an enforcer alert. Carries no secret: alerts hold only redacted
/// values and scrubbed error texts.
pub fn alert_text(a: &EnforcerAlert) -> String {
    match a {
        EnforcerAlert::IncompleteListing {
            organization,
            project_id,
            reason,
        } => format!(
            "Incomplete listing of project {project_id} in {organization}: {reason}. Nothing in it was revoked."
        ),
        EnforcerAlert::AuthenticationFailed {
            organization,
            message,
        } => format!("Admin key for {organization} was refused: {message}"),
        EnforcerAlert::OrganizationUnavailable {
            organization,
            message,
        } => format!("Organization {organization} could not be listed: {message}"),
        EnforcerAlert::CapExceeded {
            cap,
            limit,
            withheld,
        } => format!("Safety cap {cap} (limit {limit}) withheld {withheld} due revocation(s)"),
        EnforcerAlert::KillSwitchOn { path, withheld } => {
            format!("Kill switch {path} is on; {withheld} due revocation(s) were withheld")
        }
        EnforcerAlert::DeliveryFailed {
            channel,
            message_id,
            attempts,
            error,
        } => format!(
            "Message {message_id} to channel {channel} was dead-lettered after {attempts} attempt(s): {error}"
        ),
        EnforcerAlert::AdminKeyExpiring {
            organization,
            key_id,
            redacted_value,
            expires_at,
        } => format!(
            "keysweep's admin key {key_id} ({redacted_value}) of {organization} expires at {}",
            rfc3339(*expires_at)
        ),
        EnforcerAlert::AdminKeyExpired {
            organization,
            key_id,
            redacted_value,
            expired_at,
        } => format!(
            "keysweep's admin key {key_id} ({redacted_value}) of {organization} expired at {}",
            rfc3339(*expired_at)
        ),
        EnforcerAlert::RevocationFailed {
            organization,
            project_id,
            key_id,
            error,
        } => format!(
            "Revocation of key {key_id} in project {project_id} ({organization}) failed or is unconfirmed: {error}"
        ),
        EnforcerAlert::Expiry {
            organization,
            project_id,
            key_id,
            message,
        } => format!("Expiry of key {key_id} in project {project_id} ({organization}): {message}"),
        EnforcerAlert::RecheckSkips {
            organization,
            project_id,
            key_id,
            skips,
            reason,
        } => format!(
            "Key {key_id} in project {project_id} ({organization}) is due but was kept by the re-check {skips} times in a row; last: {reason}"
        ),
    }
}

/// UTC, RFC 3339 date and time with seconds: `2026-03-01T09:00:00Z`.
pub fn rfc3339(ts: i64) -> String {
    DateTime::<Utc>::from_timestamp(ts, 0)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("@{ts}"))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_seconds() {
        assert_eq!(rfc3339(1_772_355_600), "2026-03-01T09:00:00Z");
    }
}
