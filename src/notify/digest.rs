//! Digests: what one message says, before it is rendered for a channel.
//!
//! A digest is the content for one (channel, recipient, kind) in one sweep: either notices of a
//! single kind grouped by project, or enforcer alerts. It is pure data plus the wording every
//! renderer shares (titles, status lines, dates), so e-mail, Slack and webhooks say the same
//! thing. Nothing here does I/O or reads the clock; nothing here may hold a secret.

use std::collections::BTreeMap;

use crate::config::{Action, Mode, ServiceAccountKeys};
use crate::inventory::Expiry;
use crate::notify::MessageKind;
use crate::notify::alert::EnforcerAlert;
use crate::policy::finding::{Finding, Notice, NoticeKind};
use crate::policy::plan::Withheld;
use crate::policy::plan::verdict;
use crate::policy::verdict::{NotifyOnlyBy, Rules, Verdict, withheld_config_key};
use crate::timefmt::rfc3339;

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
    /// Distinct keys in the group (a key violating two policies has two notices).
    pub fn key_count(&self) -> usize {
        let mut ids: Vec<&str> = self
            .notices
            .iter()
            .map(|n| n.finding.id.key_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

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

    /// Number of distinct keys (a key with two findings is one key) or alerts listed.
    pub fn count(&self) -> usize {
        match &self.body {
            Body::Notices(g) => g.iter().map(ProjectGroup::key_count).sum(),
            Body::Alerts(a) => a.len(),
            Body::Test => 0,
        }
    }

    /// Number of notices (findings: one per key and policy) listed.
    pub fn finding_count(&self) -> usize {
        match &self.body {
            Body::Notices(g) => g.iter().map(|g| g.notices.len()).sum(),
            _ => 0,
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
            MessageKind::Warning => match self.verdict_summary().as_deref() {
                None => format!("{keys} {violate} policy"),
                Some(s) => format!("{keys} {violate} policy{s}"),
            },
            MessageKind::Reminder => match self.verdict_summary().as_deref() {
                None => format!("Reminder: {keys} still {violate} policy"),
                Some(s) => format!("Reminder: {keys} still {violate} policy{s}"),
            },
            MessageKind::FinalNotice => match self.verdict_summary().as_deref() {
                None => format!("Final notice: {keys} {violate} policy"),
                // " and will be revoked" → " will be revoked"; "; 2 will …" → ": 2 will …".
                Some(s) => match (s.strip_prefix(" and "), s.strip_prefix("; ")) {
                    (Some(one), _) => format!("Final notice: {keys} {one}"),
                    (_, Some(many)) => format!("Final notice: {keys}: {many}"),
                    _ => format!("Final notice: {keys}{s}"),
                },
            },
            MessageKind::Revoked => {
                if dry {
                    format!("{keys} would be revoked (dry-run)")
                } else {
                    format!("{keys} revoked")
                }
            }
            MessageKind::Postponed => {
                format!("Postponed: {keys} not revoked or expired in this sweep (safety limit)")
            }
            MessageKind::Resolved => format!("Resolved: {}", plural(n, "finding", "findings")),
            MessageKind::Rotated => format!("Rotated: {keys} replaced by a new key in its sink"),
            MessageKind::Alert => format!(
                "Enforcer alert: {} attention",
                plural(n, "problem needs", "problems need")
            ),
            MessageKind::WokeUp => format!(
                "{} used again after a long idle time: was it you?",
                plural(n, "dormant API key", "dormant API keys")
            ),
            MessageKind::DeliveryAlert => format!(
                "Enforcer alert: {} could not be delivered to every recipient",
                plural(n, "notification", "notifications")
            ),
            MessageKind::Test => "Test message from keysweep".to_string(),
        }
    }

    /// What happens to the listed keys, counted per key from each notice's verdict: `" and will
    /// be revoked"` when one verdict covers every key, `"; 2 will be revoked, 1 is only
    /// reported"` otherwise; `None` when nothing is written to any of them under `action = "notify"`.
    fn verdict_summary(&self) -> Option<String> {
        let Body::Notices(groups) = &self.body else {
            return None;
        };
        // One verdict per key: the strongest of its findings' (a key revoked under one policy
        // is revoked, whatever another policy only notifies about).
        let mut per_key: BTreeMap<(&str, &str, &str), Verdict> = BTreeMap::new();
        for n in groups.iter().flat_map(|g| g.notices.iter()) {
            let id = &n.finding.id;
            let v = notice_verdict(n);
            per_key
                .entry((&id.organization, &id.project_id, &id.key_id))
                .and_modify(|cur| {
                    if rank(v) < rank(*cur) {
                        *cur = v;
                    }
                })
                .or_insert(v);
        }
        let mut counts: BTreeMap<u8, (Verdict, usize)> = BTreeMap::new();
        for v in per_key.values() {
            counts.entry(rank(*v)).or_insert((*v, 0)).1 += 1;
        }
        let groups: Vec<(Verdict, usize)> = counts.into_values().collect();
        match groups.as_slice() {
            [] => None,
            [
                (
                    Verdict::NotifyOnly {
                        by: NotifyOnlyBy::PolicyAction,
                    },
                    _,
                ),
            ] => None,
            [(v, n)] => Some(format!(" and {}", verdict_phrase(*v, *n))),
            many => Some(format!(
                "; {}",
                many.iter()
                    .map(|(v, n)| format!("{n} {}", verdict_phrase(*v, *n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// One sentence under the title saying what the reader should do.
    pub fn intro(&self) -> &'static str {
        match self.kind {
            MessageKind::Warning => {
                "The API keys below violate a key policy. Rotate or delete them before the deadline shown, or ask for an exemption. Each key's status says what keysweep will do to it."
            }
            MessageKind::Reminder => {
                "The API keys below still violate a key policy. Rotate or delete them before the deadline shown. Each key's status says what keysweep will do to it."
            }
            MessageKind::FinalNotice if self.all_verdict(Verdict::Revoke) => {
                "Last notice: the API keys below will be revoked at the deadline shown. Revocation is permanent."
            }
            MessageKind::FinalNotice if self.all_verdict(Verdict::Expire) => {
                "Last notice: OpenAI ends the API keys below at the deadline shown, their expiry. Rotate them before then."
            }
            MessageKind::FinalNotice => {
                "Last notice before the deadline shown. Each key's status says what keysweep will do to it; a revocation is permanent."
            }
            MessageKind::Revoked => {
                "The API keys below were revoked because they violated a key policy (in dry-run: they would have been)."
            }
            MessageKind::Postponed => {
                "The revocation or expiry of the API keys below was due in this sweep, but a safety limit held it back. Each key's status names the setting and when keysweep tries again."
            }
            MessageKind::Resolved => "The findings below are closed; nothing more is needed.",
            MessageKind::Rotated => {
                "keysweep rotated the API keys below: a new key of the same service account is in the sink named, and the old key stops working at the time given. Make sure the workload reads the new key by then."
            }
            MessageKind::Alert => "keysweep itself needs attention.",
            MessageKind::WokeUp => {
                "An API key you are responsible for was used again after a long idle time. A dormant key used again is what a leaked key looks like: if this use is not yours or your workload's, rotate or delete the key now and tell your security team."
            }
            MessageKind::DeliveryAlert => {
                "keysweep gave up delivering the notifications below, to some or all of their recipients, as each line says."
            }
            MessageKind::Test => {
                "This is a test message sent by `keysweep notify test`. If you can read it, the channel works."
            }
        }
    }

    /// True when every notice's verdict is `v` (and there is one).
    fn all_verdict(&self, v: Verdict) -> bool {
        match &self.body {
            Body::Notices(g) => {
                let mut it = g.iter().flat_map(|g| g.notices.iter()).peekable();
                it.peek().is_some() && it.all(|n| notice_verdict(n) == v)
            }
            _ => false,
        }
    }
}

/// The order in which a key's verdicts win, and in which a title lists them. One rank per
/// verdict: the title counts keys by rank, so two verdicts sharing one would be counted under
/// whichever came first ("2 will be rotated" for a rotated key and an expired one).
fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Revoke => 0,
        Verdict::Rotate { .. } => 1,
        Verdict::Expire => 2,
        Verdict::Ends => 3,
        Verdict::Postponed { .. } => 4,
        Verdict::WouldRevoke => 5,
        Verdict::WouldRotate { .. } => 6,
        Verdict::WouldExpire => 7,
        Verdict::NotifyOnly {
            by: NotifyOnlyBy::PolicyAction,
        } => 9,
        Verdict::NotifyOnly { .. } => 8,
    }
}

/// `n` keys' verdict as a predicate: "will be revoked", "are notification only", …
fn verdict_phrase(v: Verdict, n: usize) -> &'static str {
    let one = n == 1;
    match v {
        Verdict::Revoke => "will be revoked",
        Verdict::Expire if one => "gets an expiry at the deadline",
        Verdict::Expire => "get an expiry at the deadline",
        Verdict::Ends if one => "ends at its own expiry before the deadline",
        Verdict::Ends => "end at their own expiry before the deadline",
        Verdict::WouldRevoke => "would be revoked (dry-run)",
        Verdict::WouldExpire => "would get an expiry at the deadline (dry-run)",
        // A notify policy speaks only for itself: another policy may still act on the key.
        Verdict::NotifyOnly {
            by: NotifyOnlyBy::PolicyAction,
        } => "under a notify-only policy",
        Verdict::NotifyOnly { .. } if one => "is only reported",
        Verdict::NotifyOnly { .. } => "are only reported",
        Verdict::Postponed { .. } if one => "is postponed by a safety limit",
        Verdict::Postponed { .. } => "are postponed by a safety limit",
        Verdict::Rotate { .. } => "will be rotated before the deadline",
        Verdict::WouldRotate { .. } => "would be rotated (the rotation is only announced)",
    }
}

/// The status line of a key under a `rotate` policy: when the new key goes to the sink and when
/// the old one ends, or that the rotation is only announced (dry-run, `notify-only`).
fn rotate_status(f: &Finding, v: Verdict, overlap: i64) -> String {
    let deadline = rfc3339(f.deadline);
    let start = rfc3339(f.deadline.saturating_sub(overlap));
    match v {
        Verdict::WouldRotate {
            by: Withheld::ServiceAccountNotifyOnly,
            ..
        } => format!(
            "would be rotated at {start}: the rotation is only announced, service-account keys \
             are not enforced ([safety] service_account_keys = \"notify-only\"); keysweep will \
             not mint a new key nor expire this one; rotate it before {deadline}"
        ),
        Verdict::WouldRotate { .. } => format!(
            "would be rotated (dry-run) at {start}: the rotation is only announced; this key \
             would end at {deadline}"
        ),
        _ => format!(
            "will be rotated: at {start} keysweep mints a new key and hands it to the sink, and \
             this key ends at {deadline}"
        ),
    }
}

/// The notice's verdict, as the sweep decided it. A notice composed outside a sweep (no plan,
/// no configuration at hand) gets the verdict of the conservative defaults: enforce unless the
/// notice is a dry-run one, service-account keys notify-only, no kill switch.
pub fn notice_verdict(n: &Notice) -> Verdict {
    n.verdict.unwrap_or_else(|| {
        let rules = Rules {
            mode: if n.dry_run {
                Mode::DryRun
            } else {
                Mode::Enforce
            },
            service_account_keys: ServiceAccountKeys::NotifyOnly,
            kill_switch: false,
        };
        verdict(&n.finding, &rules, None)
    })
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

/// What will happen / happened to the key, in words: for an open finding, its verdict.
pub fn status_text(n: &Notice) -> String {
    let f = &n.finding;
    match n.kind {
        NoticeKind::Warning
        | NoticeKind::Reminder
        | NoticeKind::FinalNotice
        | NoticeKind::Postponed => verdict_status(n),
        NoticeKind::Revoked if n.dry_run => {
            "would be revoked (dry-run); the key was not deleted".to_string()
        }
        NoticeKind::Revoked => match f.closed_at {
            Some(t) => format!("revoked at {}", rfc3339(t)),
            None => "revoked".to_string(),
        },
        NoticeKind::Rotated => match &n.rotated {
            Some(r) => format!(
                "rotated: new key {} ({}) was handed to sink {:?}; this key stops working at {}",
                r.new_key_id,
                r.new_redacted_value,
                r.sink,
                rfc3339(r.old_expires_at)
            ),
            None => "rotated".to_string(),
        },
        NoticeKind::Resolved => format!(
            "resolved: {}",
            f.resolution
                .as_deref()
                .unwrap_or("no longer violates policy")
        ),
    }
}

/// An open finding's status: what its verdict says keysweep will do, and by when.
fn verdict_status(n: &Notice) -> String {
    let f = &n.finding;
    let deadline = rfc3339(f.deadline);
    let write = if f.action == Action::Expire {
        "setting the expiry"
    } else {
        "the revocation"
    };
    match notice_verdict(n) {
        Verdict::Revoke => format!("will be revoked at {deadline}"),
        Verdict::WouldRevoke => format!("would be revoked (dry-run) at {deadline}"),
        Verdict::Expire | Verdict::WouldExpire => expire_status(n),
        Verdict::Rotate { overlap } | Verdict::WouldRotate { overlap, .. } => {
            rotate_status(f, notice_verdict(n), overlap)
        }
        Verdict::Ends => format!(
            "the key already expires at {}, before the deadline: OpenAI ends it then and \
             keysweep writes nothing to it",
            f.expires_at.at().map_or_else(|| "?".to_string(), rfc3339)
        ),
        Verdict::NotifyOnly {
            by: NotifyOnlyBy::PolicyAction,
        } => "notification only; keysweep will not revoke this key".to_string(),
        Verdict::NotifyOnly {
            by: NotifyOnlyBy::ServiceAccountKeys,
        } => format!(
            "notification only: service-account keys are not enforced ([safety] \
             service_account_keys = \"notify-only\"); keysweep will not revoke or expire this \
             key; rotate it before {deadline}"
        ),
        Verdict::NotifyOnly {
            by: NotifyOnlyBy::ExpiryRefused,
        } => format!(
            "notification only: the organisation's expiry policy refused the expiry ({}); \
             rotate the key before {deadline}",
            f.expiry.refused.as_deref().unwrap_or("refused")
        ),
        Verdict::Postponed {
            by: Withheld::KillSwitch,
        } => format!(
            "postponed: the kill switch ({}) is on, so keysweep revokes and expires nothing \
             while it exists; deadline {deadline}",
            withheld_config_key(Withheld::KillSwitch)
        ),
        Verdict::Postponed {
            by: Withheld::IncompleteListing,
        } => format!(
            "postponed: the project's listing was incomplete in this sweep, so {write} is \
             postponed to the next sweep; deadline {deadline}"
        ),
        Verdict::Postponed { by } => format!(
            "postponed: {write} was due but {} was reached in this sweep; keysweep tries \
             again at the next sweep; deadline {deadline}",
            withheld_config_key(by)
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
    if !open || f.action != Action::Expire || notice_verdict(n) != Verdict::Expire {
        return None;
    }
    if let Some(set) = f.expiry.set {
        return Some(set.to);
    }
    let to = n.key_expiry.unwrap_or_else(|| expiry_target(f));
    match f.expires_at.at() {
        Some(at) if at <= to => None,
        _ => Some(to),
    }
}

/// The expiry a sweep sets for `f` (`policy::expiry::target`), as of the sweep that queued its
/// notice: the lifecycle stamps `last_notified_at` with that sweep's time.
fn expiry_target(f: &Finding) -> i64 {
    match f.last_notified_at {
        Some(queued) => crate::policy::expiry::target(f.deadline, queued),
        None => f.deadline,
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
    let to = n.key_expiry.unwrap_or_else(|| expiry_target(f));
    let target = rfc3339(to);
    // Another policy's earlier deadline sets the key's one expiry.
    let earlier = if n.key_expiry.is_some() {
        format!("another policy's earlier deadline; this one's is {deadline}")
    } else {
        String::new()
    };
    match f.expires_at.at() {
        Some(at) if at <= to => format!("the key already expires at {}", rfc3339(at)),
        _ if notice_verdict(n) == Verdict::WouldExpire && earlier.is_empty() => {
            format!("would set the expiry to {target} (dry-run)")
        }
        _ if notice_verdict(n) == Verdict::WouldExpire => {
            format!("would set the expiry to {target} (dry-run; {earlier})")
        }
        _ if earlier.is_empty() => {
            format!("the expiry is set to {target}: OpenAI ends the key then")
        }
        _ => format!("the expiry is set to {target} ({earlier}): OpenAI ends the key then"),
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
        EnforcerAlert::RecipientsRefused {
            channel,
            message_id,
            recipients,
            error,
        } => format!(
            "Message {message_id} to channel {channel} did not reach {} recipient(s): the relay \
             refused it for them (for good, or for now at the last attempt), and it is not sent \
             to them again; the others got it. {error}",
            recipients.len(),
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
        EnforcerAlert::RevocationFailed { .. }
        | EnforcerAlert::Expiry { .. }
        | EnforcerAlert::Rotation { .. }
        | EnforcerAlert::RecheckSkips { .. } => key_alert_text(a),
        EnforcerAlert::IntelUnavailable { .. }
        | EnforcerAlert::KeyWokeUp { .. }
        | EnforcerAlert::InventoryGap { .. } => a.intel_text().unwrap_or_default(),
    }
}

/// The text of an alert about a write to one key (a revocation, an expiry, a rotation, the
/// re-check that keeps a due key).
fn key_alert_text(a: &EnforcerAlert) -> String {
    match a {
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
        EnforcerAlert::Rotation {
            organization,
            project_id,
            key_id,
            message,
            ..
        } => {
            format!("Rotation of key {key_id} in project {project_id} ({organization}): {message}")
        }
        EnforcerAlert::RecheckSkips {
            organization,
            project_id,
            key_id,
            skips,
            reason,
        } => format!(
            "Key {key_id} in project {project_id} ({organization}) is due but was kept by the re-check {skips} times in a row; last: {reason}"
        ),
        // Not about a write to one key: `alert_text` words these itself and never comes here.
        // Listed, not `_`, so that a new kind of alert must be placed on one side or the other
        // (and not `alert_text(a)`, which would loop if it ever sent one of them here).
        EnforcerAlert::IncompleteListing { .. }
        | EnforcerAlert::AuthenticationFailed { .. }
        | EnforcerAlert::OrganizationUnavailable { .. }
        | EnforcerAlert::CapExceeded { .. }
        | EnforcerAlert::KillSwitchOn { .. }
        | EnforcerAlert::DeliveryFailed { .. }
        | EnforcerAlert::RecipientsRefused { .. }
        | EnforcerAlert::AdminKeyExpired { .. }
        | EnforcerAlert::AdminKeyExpiring { .. }
        | EnforcerAlert::IntelUnavailable { .. }
        | EnforcerAlert::KeyWokeUp { .. }
        | EnforcerAlert::InventoryGap { .. } => String::new(),
    }
}

/// What revoking the key would stop (issue 16): "1,240 requests and $3.10 in the last 30
/// days", or "usage unknown" when usage could not be read (or the notice was composed outside
/// a sweep).
pub fn usage_text(n: &Notice) -> String {
    let Some(u) = n.intel.as_ref().and_then(|i| i.usage) else {
        return "usage unknown".to_string();
    };
    let requests = match u.requests {
        1 => "1 request".to_string(),
        r => format!("{} requests", thousands(r)),
    };
    let days = match u.window_days {
        1 => "the last day".to_string(),
        d => format!("the last {d} days"),
    };
    match u.cost_micros {
        Some(m) => format!("{requests} and {} in {days}", dollars(m)),
        None => format!("{requests} in {days} (cost unknown)"),
    }
}

/// `1240` → `1,240`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Millionths of a dollar as dollars and cents, rounded half up: `3_104_000` → `$3.10`.
fn dollars(micros: u64) -> String {
    let cents = micros.saturating_add(5_000) / 10_000;
    format!("${}.{:02}", thousands(cents / 100), cents % 100)
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
    fn an_expire_notice_past_its_deadline_says_the_expiry_the_sweep_sets() {
        let day = 86_400;
        let finding = |deadline: i64, expires_at: Option<i64>| -> Finding {
            serde_json::from_value(serde_json::json!({"id": {"organization": "o", "project_id": "p", "key_id": "k", "policy": "x"}, "key_name": "k", "redacted_value": "sk-…", "owner_type": "user", "owner": "o", "created_at": 0, "expires_at": expires_at, "action": "expire", "reason": "r", "stage": "final_notice", "detected_at": 0, "deadline": deadline, "warned_at": 0, "last_notified_at": 10 * day}))
                .unwrap()
        };
        let notice = |f: Finding| Notice {
            kind: NoticeKind::FinalNotice,
            finding: std::sync::Arc::new(f),
            dry_run: false,
            verdict: Some(Verdict::Expire),
            rotated: None,
            intel: None,
            key_expiry: None,
        };
        let set_at = 10 * day + crate::policy::expiry::PAST_DEADLINE_LEAD;
        // The deadline (day 7) passed before the notice's sweep (day 10): an hour after it.
        let past = notice(finding(7 * day, None));
        assert_eq!(expiry_being_set(&past), Some(set_at));
        assert_eq!(
            expire_status(&past),
            format!(
                "the expiry is set to {}: OpenAI ends the key then",
                rfc3339(set_at)
            )
        );
        // A key that ends before that anyway is left alone, and said so.
        let ending = notice(finding(7 * day, Some(10 * day + 60)));
        assert_eq!(expiry_being_set(&ending), None);
        assert!(expire_status(&ending).starts_with("the key already expires at"));
        // A deadline still ahead is the expiry, as always.
        let ahead = notice(finding(12 * day, None));
        assert_eq!(expiry_being_set(&ahead), Some(12 * day));
    }

    /// A warning about a key being rotated and one getting an expiry counts each under its
    /// own verdict; before, whichever came first named both.
    #[test]
    fn a_title_counts_rotated_and_expired_keys_apart() {
        let warning = |key: &str, verdict: Verdict| {
            Notice {
            kind: NoticeKind::Warning,
            finding: std::sync::Arc::new(
                serde_json::from_value(serde_json::json!({"id": {"organization": "o", "project_id": "p", "key_id": key, "policy": "x"}, "key_name": key, "redacted_value": "sk-…", "owner_type": "user", "owner": "o", "created_at": 0, "action": "expire", "reason": "r", "stage": "warned", "detected_at": 0, "deadline": 86_400, "warned_at": 0}))
                    .unwrap(),
            ),
            dry_run: false,
            verdict: Some(verdict),
            rotated: None,
            intel: None,
            key_expiry: None,
        }
        };
        let rotated = warning("k1", Verdict::Rotate { overlap: 3600 });
        let expired = warning("k2", Verdict::Expire);
        for pair in [[&rotated, &expired], [&expired, &rotated]] {
            let title = Digest::notices(MessageKind::Warning, "run", 0, &pair).title();
            assert!(
                title.contains("1 will be rotated before the deadline")
                    && title.contains("1 gets an expiry at the deadline"),
                "{title}"
            );
        }
    }

    /// A status is one line of single spaces (a lost line continuation put runs of spaces in
    /// the notify-only rotation's).
    #[test]
    fn a_would_rotate_status_has_no_runs_of_spaces() {
        let finding: Finding = serde_json::from_value(serde_json::json!({"id": {"organization": "o", "project_id": "p", "key_id": "k", "policy": "x"}, "key_name": "k", "redacted_value": "sk-…", "owner_type": "service_account", "owner": "o", "created_at": 0, "action": "revoke", "reason": "r", "stage": "warned", "detected_at": 0, "deadline": 86_400, "warned_at": 0}))
            .unwrap();
        for by in [Withheld::ServiceAccountNotifyOnly, Withheld::DryRun] {
            let n = Notice {
                kind: NoticeKind::Warning,
                finding: std::sync::Arc::new(finding.clone()),
                dry_run: false,
                verdict: Some(Verdict::WouldRotate { overlap: 3600, by }),
                rotated: None,
                intel: None,
                key_expiry: None,
            };
            let status = status_text(&n);
            assert!(status.contains("would be rotated"), "{status}");
            assert!(!status.contains("  "), "{status}");
        }
    }

    #[test]
    fn usage_reads_as_what_a_revocation_would_stop() {
        use crate::policy::finding::{NoticeIntel, UsageNote};
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_240), "1,240");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(dollars(3_104_000), "$3.10");
        assert_eq!(dollars(3_105_000), "$3.11");
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(1_234_567_890_000), "$1,234,567.89");
        let f: Finding =
            serde_json::from_value(serde_json::json!({"id": {"organization": "o", "project_id": "p", "key_id": "k", "policy": "x"}, "project_name": null, "key_name": "k", "redacted_value": "sk-…", "owner_type": "user", "owner": "o", "owner_email": null, "created_at": 0, "last_used_at": null, "action": "notify", "reason": "r", "stage": "warned", "detected_at": 0, "deadline": 0, "warned_at": null, "final_notice_at": null, "last_notified_at": null, "closed_at": null, "resolution": null}))
                .unwrap();
        let mut n = Notice {
            kind: NoticeKind::Warning,
            finding: std::sync::Arc::new(f),
            dry_run: false,
            verdict: None,
            rotated: None,
            intel: None,
            key_expiry: None,
        };
        assert_eq!(usage_text(&n), "usage unknown");
        let usage = |requests, cost_micros| NoticeIntel {
            usage: Some(UsageNote {
                window_days: 30,
                requests,
                cost_micros,
            }),
            route: None,
        };
        n.intel = Some(usage(1_240, Some(3_100_000)));
        assert_eq!(
            usage_text(&n),
            "1,240 requests and $3.10 in the last 30 days"
        );
        n.intel = Some(usage(1, None));
        assert_eq!(
            usage_text(&n),
            "1 request in the last 30 days (cost unknown)"
        );
    }
}
