//! Routing: who hears about what, turned into rendered outbox messages.
//!
//! Rules, applied per sweep (pure; no I/O, no clock):
//! - A notice goes to its policy's `notify` channels plus the channels of every `[[routes]]`
//!   entry whose project list matches (project id, or a glob over the name or id).
//! - A notice whose finding has no owner e-mail (service accounts, unknown owners, users without
//!   an address) also goes to `owner_fallback`, because nobody can be told personally.
//! - An e-mail channel sends to its `to` list; with `owner = true` it also mails each owner
//!   their own keys (one message per owner address).
//! - A service-account key's owner mail (e-mail channels with `owner = true`) goes to the route
//!   the sweep resolved from the audit log (`Notice::intel`): the key's creator while they are
//!   still a user of the project, else the project's owners; when neither can be told, the
//!   notice goes to `owner_fallback` ([`service_account_route`]). User keys: their owner.
//! - Enforcer alerts go to `ops_channels` only; a key that woke up is also told at once to its
//!   owner (the alert's `owner` route), in a message of its own. `DeliveryFailed` alerts travel in their own
//!   `delivery_alert` messages so a failing alert can never raise another (no loop).
//! - One message per (channel, recipient, kind): digests grouped by project; each notice kind
//!   in its own message. Slack digests may be split into parts. PagerDuty gets one event per
//!   finding (or alert), keyed by its dedup key, instead of a digest.
//! - PagerDuty and webhook channels take at most `max_messages_per_sweep` notice messages per
//!   composition (default 50): the notices over it go out in ONE summary message listing every
//!   one of them, never dropped. A member who creates 1,000 keys breaking a policy opens 51
//!   incidents, not 1,000. Enforcer alerts are never capped and are composed first, so the
//!   outbox sends them before any notice.
//!
//! Message ids are derived from run id, channel, recipient, kind and part, so composing the same
//! sweep twice yields the same ids and the outbox ignores the duplicates.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use crate::config::{ChannelConfig, ChannelKind};
use crate::notify::alert::EnforcerAlert;
use crate::notify::digest::Digest;
use crate::notify::settings::NotifySettings;
use crate::notify::{MessageKind, OutboxMessage, render};
use crate::policy::finding::{Notice, OwnerRoute};

/// The `recipient` of messages to non-e-mail channels (the channel itself).
pub const CHANNEL_RECIPIENT: &str = "channel";

/// A digest of more notices than this is sent in parts: a first sweep over a large organisation
/// can flag tens of thousands of keys, and one message listing them all would be megabytes that
/// no mail server, chat or reader takes, and that the sweep would hold in memory at once.
pub const MAX_NOTICES_PER_DIGEST: usize = 500;

/// Composes every message of one sweep. See the module docs for the routing rules.
pub fn compose(
    notices: &[Notice],
    alerts: &[EnforcerAlert],
    settings: &NotifySettings,
    run_id: &str,
    now: i64,
) -> Vec<OutboxMessage> {
    let mut out = Vec::new();
    if !alerts.is_empty() {
        let (delivery, other): (Vec<&EnforcerAlert>, Vec<&EnforcerAlert>) =
            alerts.iter().partition(|a| {
                matches!(
                    a,
                    EnforcerAlert::DeliveryFailed { .. } | EnforcerAlert::RecipientsRefused { .. }
                )
            });
        for (kind, list) in [
            (MessageKind::Alert, other),
            (MessageKind::DeliveryAlert, delivery),
        ] {
            if list.is_empty() {
                continue;
            }
            out.extend(compose_alerts(kind, &list, settings, run_id, now));
        }
        out.extend(compose_woke_up(alerts, settings, run_id, now));
    }
    out.extend(compose_notices(notices, settings, run_id, now));
    out
}

/// The owner's own message about each key that woke up (issue 16), besides the ops channels'
/// alert: at once, one message per key, never a digest line. It goes to the alert's `owner`
/// route on every e-mail channel with `owner = true` (one message per address), or to
/// `owner_fallback` when the route names nobody or no channel mails owners.
fn compose_woke_up(
    alerts: &[EnforcerAlert],
    settings: &NotifySettings,
    run_id: &str,
    now: i64,
) -> Vec<OutboxMessage> {
    let owner_mail: Vec<&ChannelConfig> = woke_up_channels(settings).collect();
    let mut out = Vec::new();
    for a in alerts {
        let EnforcerAlert::KeyWokeUp {
            owner: Some(route), ..
        } = a
        else {
            continue;
        };
        let digest = Digest::alerts(MessageKind::WokeUp, run_id, now, &[a]);
        let scope = format!("{run_id}/{}", a.dedup_key());
        let emails = route.emails();
        if !emails.is_empty() && !owner_mail.is_empty() {
            for ch in &owner_mail {
                for addr in &emails {
                    let to = [(*addr).to_string()];
                    out.extend(render_digest(ch, addr, &to, &digest, &scope));
                }
            }
            continue;
        }
        for channel in unique(&settings.owner_fallback) {
            let Some(ch) = settings.channel(&channel) else {
                continue;
            };
            match &ch.kind {
                ChannelKind::Email(e) if e.to.is_empty() => {}
                ChannelKind::Email(e) => {
                    out.extend(render_digest(ch, &e.to.join(", "), &e.to, &digest, &scope));
                }
                _ => out.extend(render_digest(ch, CHANNEL_RECIPIENT, &[], &digest, &scope)),
            }
        }
    }
    out
}

/// The channels a woke-up alert is mailed on in person: every e-mail channel with
/// `owner = true`, whatever its policies.
fn woke_up_channels(settings: &NotifySettings) -> impl Iterator<Item = &ChannelConfig> {
    (settings.channels.iter()).filter(|c| c.mails_owners())
}

/// Whether a woke-up alert can reach anyone in person ([`compose_woke_up`]): only then is its
/// owner route worth resolving (a read of its project's users); without one it goes to
/// `owner_fallback`.
pub fn woke_up_mailed(settings: &NotifySettings) -> bool {
    woke_up_channels(settings).next().is_some()
}

/// Notice messages per channel within its `max_messages_per_sweep`, and the notices over it.
#[derive(Default)]
struct Caps<'a> {
    used: BTreeMap<String, usize>,
    over: BTreeMap<String, Vec<&'a Notice>>,
}

impl<'a> Caps<'a> {
    /// Takes `msg` (carrying `notices`) if the channel has room; otherwise keeps its notices
    /// for the channel's summary.
    fn admit(
        &mut self,
        ch: &ChannelConfig,
        msg: OutboxMessage,
        notices: &[&'a Notice],
        out: &mut Vec<OutboxMessage>,
    ) {
        let Some(cap) = ch.max_messages_per_sweep() else {
            out.push(msg);
            return;
        };
        let used = self.used.entry(ch.name.clone()).or_default();
        if *used < cap {
            *used += 1;
            out.push(msg);
        } else {
            self.over
                .entry(ch.name.clone())
                .or_default()
                .extend(notices);
        }
    }

    /// One summary message per channel that went over its cap, listing every notice over it.
    fn summaries(
        self,
        settings: &NotifySettings,
        run_id: &str,
        now: i64,
        out: &mut Vec<OutboxMessage>,
    ) {
        for (channel, list) in self.over {
            let (Some(ch), Some(first)) = (settings.channel(&channel), list.first()) else {
                continue;
            };
            let cap = ch.max_messages_per_sweep().unwrap_or(0);
            let payload = match &ch.kind {
                ChannelKind::PagerDuty(_) => render::pagerduty_overflow(&list, cap, run_id, now),
                _ => render::webhook_overflow(&list, cap, run_id, now),
            };
            out.push(OutboxMessage {
                message_id: message_id(&[run_id, &channel, CHANNEL_RECIPIENT, "overflow"]),
                channel,
                recipient: CHANNEL_RECIPIENT.to_string(),
                kind: MessageKind::from_notice(first.kind),
                payload,
            });
        }
    }
}

/// Notices grouped by (channel, recipient, kind), with each e-mail recipient's `to` list.
#[derive(Default)]
struct Buckets<'a> {
    notices: BTreeMap<(String, String, MessageKind), Vec<&'a Notice>>,
    to_lists: BTreeMap<(String, String), Vec<String>>,
}

fn bucket<'a>(notices: &'a [Notice], settings: &NotifySettings) -> Buckets<'a> {
    let mut b = Buckets::default();
    for n in notices {
        let kind = MessageKind::from_notice(n.kind);
        for channel in channels_for(n, settings) {
            let Some(ch) = settings.channel(&channel) else {
                tracing::warn!(channel = %channel, "notice routed to an unknown channel; skipped");
                continue;
            };
            for (recipient, to) in recipients(ch, n) {
                b.to_lists
                    .entry((channel.clone(), recipient.clone()))
                    .or_insert(to);
                b.notices
                    .entry((channel.clone(), recipient, kind))
                    .or_default()
                    .push(n);
            }
        }
    }
    b
}

/// The messages for the notices: a PagerDuty event per finding, a digest (in parts) elsewhere.
fn compose_notices(
    notices: &[Notice],
    settings: &NotifySettings,
    run_id: &str,
    now: i64,
) -> Vec<OutboxMessage> {
    let mut out = Vec::new();
    let mut caps = Caps::default();
    let buckets = bucket(notices, settings);
    for ((channel, recipient, kind), list) in buckets.notices {
        let Some(ch) = settings.channel(&channel) else {
            continue;
        };
        if let ChannelKind::PagerDuty(_) = &ch.kind {
            for (n, msg) in pagerduty_events(&channel, &recipient, kind, list, run_id, now) {
                // A resolve pages nobody and closes an incident: never capped, never folded into
                // the overflow's trigger (its incident would stay open for good).
                if msg.payload["event_action"] == "resolve" {
                    out.push(msg);
                } else {
                    caps.admit(ch, msg, &[n], &mut out);
                }
            }
            continue;
        }
        let to = buckets
            .to_lists
            .get(&(channel.clone(), recipient.clone()))
            .cloned()
            .unwrap_or_default();
        let mut list = dedup_notices(list);
        // Sorted by project: a project's notices fill consecutive parts.
        list.sort_by(|a, b| {
            (&a.finding.id.organization, &a.finding.id.project_id)
                .cmp(&(&b.finding.id.organization, &b.finding.id.project_id))
        });
        let parts = list.len().div_ceil(MAX_NOTICES_PER_DIGEST);
        for (i, part) in list.chunks(MAX_NOTICES_PER_DIGEST).enumerate() {
            let mut digest = Digest::notices(kind, run_id, now, part);
            digest.part = Some((i + 1, parts));
            // Part 0 keeps the id an unsplit digest has always had.
            let scope = match i {
                0 => run_id.to_string(),
                i => format!("{run_id}/part-{i}"),
            };
            for msg in render_digest(ch, &recipient, &to, &digest, &scope) {
                caps.admit(ch, msg, part, &mut out);
            }
        }
    }
    caps.summaries(settings, run_id, now, &mut out);
    out
}

/// One PagerDuty event per finding; a finding routed twice to the channel is sent once.
fn pagerduty_events<'a>(
    channel: &str,
    recipient: &str,
    kind: MessageKind,
    list: Vec<&'a Notice>,
    run_id: &str,
    now: i64,
) -> Vec<(&'a Notice, OutboxMessage)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for n in list {
        let dedup = n.finding.id.dedup_key();
        if !seen.insert(dedup.clone()) {
            continue;
        }
        let msg = OutboxMessage {
            message_id: message_id(&[run_id, channel, recipient, kind.as_str(), &dedup]),
            channel: channel.to_string(),
            recipient: recipient.to_string(),
            kind,
            payload: render::pagerduty_notice(n, now),
        };
        out.push((n, msg));
    }
    out
}

/// Messages for enforcer alerts of one kind to every ops channel.
fn compose_alerts(
    kind: MessageKind,
    alerts: &[&EnforcerAlert],
    settings: &NotifySettings,
    run_id: &str,
    now: i64,
) -> Vec<OutboxMessage> {
    let mut out = Vec::new();
    for channel in unique(&settings.ops_channels) {
        let Some(ch) = settings.channel(&channel) else {
            tracing::warn!(channel = %channel, "ops channel is not configured; skipped");
            continue;
        };
        match &ch.kind {
            ChannelKind::PagerDuty(_) => {
                for a in alerts.iter().filter(|a| a.pages()) {
                    let dedup = a.dedup_key();
                    out.push(OutboxMessage {
                        message_id: message_id(&[
                            run_id,
                            &channel,
                            CHANNEL_RECIPIENT,
                            kind.as_str(),
                            &dedup,
                        ]),
                        channel: channel.clone(),
                        recipient: CHANNEL_RECIPIENT.to_string(),
                        kind,
                        payload: render::pagerduty_alert(a, now),
                    });
                }
            }
            ChannelKind::Email(e) => {
                if e.to.is_empty() {
                    tracing::warn!(channel = %channel, "ops e-mail channel has no `to`; skipped");
                    continue;
                }
                let digest = Digest::alerts(kind, run_id, now, alerts);
                out.extend(render_digest(ch, &e.to.join(", "), &e.to, &digest, run_id));
            }
            _ => {
                let digest = Digest::alerts(kind, run_id, now, alerts);
                out.extend(render_digest(ch, CHANNEL_RECIPIENT, &[], &digest, run_id));
            }
        }
    }
    out
}

/// Renders one digest for a channel (not PagerDuty): one message, or several Slack parts.
pub(crate) fn render_digest(
    ch: &ChannelConfig,
    recipient: &str,
    to: &[String],
    digest: &Digest,
    run_id: &str,
) -> Vec<OutboxMessage> {
    let kind = digest.kind;
    let base = |part: &str| message_id(&[run_id, &ch.name, recipient, kind.as_str(), part]);
    let msg = |id: String, payload| OutboxMessage {
        message_id: id,
        channel: ch.name.clone(),
        recipient: recipient.to_string(),
        kind,
        payload,
    };
    match &ch.kind {
        ChannelKind::Email(_) => vec![msg(base(""), render::email(digest, to))],
        ChannelKind::Slack(_) => render::slack(digest)
            .into_iter()
            .enumerate()
            .map(|(i, p)| msg(base(&format!("part-{i}")), p))
            .collect(),
        ChannelKind::Webhook(_) => vec![msg(base(""), render::webhook(digest))],
        ChannelKind::PagerDuty(_) => match &digest.body {
            crate::notify::digest::Body::Alerts(alerts) => alerts
                .iter()
                .filter(|a| a.pages())
                .map(|a| {
                    msg(
                        base(&a.dedup_key()),
                        render::pagerduty_alert(a, digest.generated_at),
                    )
                })
                .collect(),
            crate::notify::digest::Body::Notices(groups) => groups
                .iter()
                .flat_map(|g| g.notices.iter())
                .map(|n| {
                    msg(
                        base(&n.finding.id.dedup_key()),
                        render::pagerduty_notice(n, digest.generated_at),
                    )
                })
                .collect(),
            crate::notify::digest::Body::Test => {
                let id = base("test");
                let payload = render::pagerduty_test(&id, digest.generated_at);
                vec![msg(id, payload)]
            }
        },
    }
}

/// Channel names for one notice: policy `notify` + matching routes + (no owner e-mail)
/// `owner_fallback`. Deduplicated, in a stable order.
pub fn channels_for(n: &Notice, settings: &NotifySettings) -> Vec<String> {
    let f = &n.finding;
    if !settings.policy_channels.contains_key(&f.id.policy) {
        tracing::warn!(policy = %f.id.policy, "notice for a policy no longer configured");
    }
    let mut names: Vec<&String> = named_channels(
        settings,
        &f.id.policy,
        &f.id.project_id,
        f.project_name.as_deref(),
    )
    .collect();
    if personal_emails(n).is_empty() {
        names.extend(settings.owner_fallback.iter());
    }
    unique(names)
}

/// The channels a finding of `policy` in this project is told to by name: the policy's
/// `notify` channels, then those of every matching `[[routes]]` entry (not `owner_fallback`).
fn named_channels<'s>(
    settings: &'s NotifySettings,
    policy: &str,
    project_id: &'s str,
    project_name: Option<&'s str>,
) -> impl Iterator<Item = &'s String> {
    let routed = (settings.routes.iter())
        .filter(move |r| (r.projects.iter()).any(|p| p.matches(project_id, project_name)))
        .flat_map(|r| r.channels.iter());
    (settings.policy_channels.get(policy).into_iter().flatten()).chain(routed)
}

/// Whether a notice about a finding of `policy` in this project reaches anyone in person: one
/// of its named channels is an e-mail channel with `owner = true`. Only then is a
/// service-account key's route (who is told in person, a read of its project's users) worth
/// resolving; without one, nobody is told in person and the notice goes to `owner_fallback`.
pub fn mails_owners(
    settings: &NotifySettings,
    policy: &str,
    project_id: &str,
    project_name: Option<&str>,
) -> bool {
    named_channels(settings, policy, project_id, project_name).any(|name| {
        settings
            .channel(name)
            .is_some_and(ChannelConfig::mails_owners)
    })
}

/// (recipient, envelope `to`) pairs for one notice on one channel.
fn recipients(ch: &ChannelConfig, n: &Notice) -> Vec<(String, Vec<String>)> {
    match &ch.kind {
        ChannelKind::Email(e) => {
            let mut out = Vec::new();
            if !e.to.is_empty() {
                out.push((e.to.join(", "), e.to.clone()));
            }
            if e.owner {
                for addr in personal_emails(n) {
                    if !e.to.iter().any(|t| t.eq_ignore_ascii_case(addr)) {
                        out.push((addr.to_string(), vec![addr.to_string()]));
                    }
                }
            }
            out
        }
        _ => vec![(CHANNEL_RECIPIENT.to_string(), Vec::new())],
    }
}

/// Who is told about `n` in person (owner mail): the route the sweep resolved for a
/// service-account key (its creator, else the project's owners; none: the fallback), else the
/// owner's own e-mail.
fn personal_emails(n: &Notice) -> Vec<&str> {
    let route = n.intel.as_ref().and_then(|i| i.route.as_ref());
    let emails = match route {
        Some(r) => r.emails(),
        None => n.finding.owner_email.as_deref().into_iter().collect(),
    };
    let mut out: Vec<&str> = Vec::new();
    // Only a plain address: `Name <other@x>` would mail another address than the one shown,
    // and a malformed one fails the whole message; either goes to the fallback instead.
    for e in emails
        .into_iter()
        .map(str::trim)
        .filter(|e| plain_address(e))
    {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(e)) {
            out.push(e);
        }
    }
    out
}

/// Who is told in person about a service-account key (issue 16): its creator (`created_by`,
/// the actor's e-mail on its `api_key.created`) while the creator is still a user of the
/// project, else the project's owners (users with role `owner`), else nobody (the fallback).
/// `users`: the project's users, `None` when they could not be listed (then nobody's access
/// can be confirmed, so the fallback is told).
pub fn service_account_route(
    created_by: Option<&str>,
    users: Option<&[crate::inventory::ProjectUser]>,
) -> OwnerRoute {
    let Some(users) = users else {
        return OwnerRoute::Fallback;
    };
    let email = |u: &crate::inventory::ProjectUser| {
        u.email
            .as_deref()
            .map(str::trim)
            .filter(|e| plain_address(e))
            .map(str::to_string)
    };
    if let Some(creator) = created_by.map(str::trim).filter(|c| plain_address(c))
        && let Some(addr) = (users.iter())
            .filter_map(email)
            .find(|e| e.eq_ignore_ascii_case(creator))
    {
        return OwnerRoute::Person { email: addr };
    }
    let mut owners: Vec<String> = (users.iter())
        .filter(|u| u.role.eq_ignore_ascii_case("owner"))
        .filter_map(email)
        .collect();
    owners.sort();
    owners.dedup();
    if owners.is_empty() {
        OwnerRoute::Fallback
    } else {
        OwnerRoute::ProjectOwners { emails: owners }
    }
}

/// An address a message may be sent to as it is: one `@`, no blank, control or list character
/// (an e-mail the audit log or a project listing gave is never trusted to be well formed).
fn plain_address(e: &str) -> bool {
    e.matches('@').count() == 1
        && !e.starts_with('@')
        && !e.ends_with('@')
        && e.chars().all(|c| {
            !c.is_whitespace() && !c.is_control() && !matches!(c, ',' | ';' | '<' | '>' | '"')
        })
}

/// A user key's owner told in person about its key: their e-mail while they are a user of the
/// project (`users`, `None` when they could not be listed: the fallback).
pub fn user_route(
    owner_email: Option<&str>,
    users: Option<&[crate::inventory::ProjectUser]>,
) -> OwnerRoute {
    let active = |e: &str| {
        users.is_some_and(|us| {
            us.iter().any(|u| {
                u.email
                    .as_deref()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case(e))
            })
        })
    };
    match owner_email.map(str::trim).filter(|e| plain_address(e)) {
        Some(e) if active(e) => OwnerRoute::Person {
            email: e.to_string(),
        },
        _ => OwnerRoute::Fallback,
    }
}

/// The same finding may reach a channel twice (policy and route); list it once.
fn dedup_notices(list: Vec<&Notice>) -> Vec<&Notice> {
    let mut seen = BTreeSet::new();
    list.into_iter()
        .filter(|n| seen.insert(n.finding.id.clone()))
        .collect()
}

fn unique<'n>(names: impl IntoIterator<Item = &'n String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    (names.into_iter())
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

/// `ks-` + 32 hex chars of SHA-256 over the parts: stable, opaque, safe in headers.
pub fn message_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    format!("ks-{}", &hex::encode(digest)[..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::ProjectUser;

    fn u(email: &str, role: &str) -> ProjectUser {
        ProjectUser {
            id: format!("user_{}", email.len()),
            name: None,
            email: Some(email.to_string()),
            role: role.to_string(),
        }
    }

    /// A user key's owner e-mail that is not one plain address is nobody to tell in person:
    /// the notice goes to the fallback, never to the address inside `Name <…>`.
    #[test]
    fn an_owner_email_that_is_not_a_plain_address_is_not_mailed() {
        let notice = |email: &str| {
            let finding: crate::policy::finding::Finding = serde_json::from_value(serde_json::json!({"id": {"organization": "o", "project_id": "p", "key_id": "k", "policy": "x"}, "project_name": null, "key_name": "k", "redacted_value": "sk-…", "owner_type": "user", "owner": "o", "owner_email": email, "created_at": 0, "last_used_at": null, "action": "notify", "reason": "r", "stage": "warned", "detected_at": 0, "deadline": 0, "warned_at": null, "final_notice_at": null, "last_notified_at": null, "closed_at": null, "resolution": null})).unwrap();
            Notice::of(
                crate::policy::finding::NoticeKind::Warning,
                std::sync::Arc::new(finding),
                false,
            )
        };
        assert_eq!(personal_emails(&notice(" ok@x.com ")), vec!["ok@x.com"]);
        for bad in [
            "Name <evil@y.com>",
            "a@x.com, b@y.com",
            "a@x.com;b@y.com",
            "@x.com",
        ] {
            assert!(personal_emails(&notice(bad)).is_empty(), "{bad}");
        }
    }

    #[test]
    fn a_service_account_key_goes_to_its_creator_then_the_owners_then_the_fallback() {
        let users = [u("Alice@x.com", "member"), u("olga@x.com", "owner")];
        let person = |e: &str| OwnerRoute::Person { email: e.into() };
        // The address as the project lists it, whatever case the log wrote.
        assert_eq!(
            service_account_route(Some("alice@x.com"), Some(&users)),
            person("Alice@x.com")
        );
        let owners = OwnerRoute::ProjectOwners {
            emails: vec!["olga@x.com".into()],
        };
        assert_eq!(
            service_account_route(Some("gone@x.com"), Some(&users)),
            owners
        );
        assert_eq!(service_account_route(None, Some(&users)), owners);
        assert_eq!(
            service_account_route(Some("alice@x.com"), Some(&users[..1])),
            person("Alice@x.com")
        );
        assert_eq!(
            service_account_route(Some("gone@x.com"), Some(&users[..1])),
            OwnerRoute::Fallback
        );
        assert_eq!(
            service_account_route(Some("alice@x.com"), None),
            OwnerRoute::Fallback,
            "access cannot be confirmed"
        );
        let hostile = [
            u("a@x.com, evil@y.com", "owner"),
            u("b@x.com\r\nBcc: e@y", "owner"),
        ];
        assert_eq!(
            service_account_route(Some("a@x.com, evil@y.com"), Some(&hostile)),
            OwnerRoute::Fallback
        );
        assert_eq!(
            user_route(Some("Alice@x.com"), Some(&users)),
            person("Alice@x.com")
        );
        assert_eq!(
            user_route(Some("gone@x.com"), Some(&users)),
            OwnerRoute::Fallback
        );
    }
}
