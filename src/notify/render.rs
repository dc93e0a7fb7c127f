//! Rendering: a [`Digest`] becomes channel-ready JSON stored in the outbox.
//!
//! Every renderer lists every key (project name and id, key name, redacted value, owner,
//! policy, reason, deadline/status, the key's own expiry); counts only ever appear next to the
//! list, never instead of it. Renderers are pure and never see a secret: the PagerDuty routing key and the webhook
//! signature are added by the senders at send time.
//!
//! # Webhook payload (schema version 1)
//!
//! Every webhook POST carries one JSON object:
//!
//! ```json
//! {
//!   "type": "keysweep.notices.warning",   // keysweep.notices.{warning,reminder,final_notice,
//!                                         //   revoked,resolved,postponed,rotated} | keysweep.alerts
//!                                         //   | keysweep.woke_up (an owner's own alert) | keysweep.test
//!   "version": 1,
//!   "run_id": "…",                        // the sweep that produced it
//!   "generated_at": "2026-03-01T09:00:00Z",
//!   "title": "3 API keys violate policy and will be revoked",
//!   "dry_run": false,                     // true when every notice is a dry-run notice
//!   "notices": [{                         // empty for alerts and tests
//!     "kind": "warning", "dry_run": false,
//!     "organization": "…", "project_id": "proj_…", "project_name": "…" | null,
//!     "key_id": "key_…", "key_name": "…", "redacted_value": "sk-…abcd",
//!     "owner": "…", "owner_type": "user" | "service_account" | "unknown", "owner_email": "…" | null,
//!     "policy": "…", "action": "notify" | "revoke", "reason": "…", "stage": "…",
//!     "status": "will be revoked at 2026-03-01T09:00:00Z",
//!     "verdict": "revoke" | "expire" | "would_revoke" | "would_expire" | "notify_only" | "postponed"
//!                                         //   | "rotate" | "would_rotate",
//!     "withheld_by": "safety.service_account_keys" | … | null,  // the setting that withholds it
//!     "deadline": "2026-03-01T09:00:00Z" | null,   // null for notify-only policies
//!     "deadline_unix": 1772355600,
//!     "created_at": "…", "last_used_at": "…" | null, "detected_at": "…",
//!     "last_used_unknown": true | false,  // the API left last_used_at out: null is not "never"
//!     "expires_at": "…" | null,          // the key's own expiry; null: never or unknown
//!     "expires_at_unix": 1772355600 | null,
//!     "expiry_state": "none" | "set" | "expired" | "unknown",  // at generated_at
//!     "usage": {"window_days": 30, "requests": 1240, "cost_usd": 3.1 | null} | null,
//!                                         // over [usage] window; null: usage unknown
//!     "owner_route": {"to": "person", "email": "…"} | {"to": "project_owners", "emails": […]}
//!       | {"to": "fallback"} | null,       // who is told in person about a service-account key
//!     "resolution": "…" | null,
//!     "dedup_key": "org/project/key/policy"
//!   }],
//!   "alerts": [{                          // empty for notices
//!     "alert": "incomplete_listing" | "authentication_failed" | …, // plus that alert's fields
//!     "summary": "…", "dedup_key": "…"
//!   }]
//! }
//! ```
//!
//! The body is signed per Standard Webhooks 1.0 (`webhook-id` = the outbox message id, stable
//! across retries; `webhook-timestamp`; `webhook-signature: v1,<base64>`), see `webhook.rs`.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::config::Action;
use crate::inventory::ExpiryStatus;
use crate::notify::MessageKind;
use crate::notify::alert::EnforcerAlert;
use crate::notify::digest::{
    Body, Digest, ProjectGroup, alert_text, deadline_text, expiry_text, notice_verdict,
    status_text, usage_text,
};
use crate::policy::finding::{Notice, NoticeKind, OwnerRoute};
use crate::text;
use crate::timefmt::rfc3339;

/// Slack accepts at most 50 blocks per message.
pub const SLACK_MAX_BLOCKS: usize = 50;
/// Slack's limit for a section's text field.
pub const SLACK_MAX_TEXT: usize = 3000;
/// Slack's limit for a header's plain text.
const SLACK_MAX_HEADER: usize = 150;
/// PagerDuty's limit for `payload.summary`.
const PD_MAX_SUMMARY: usize = 1024;
/// Findings an overflow event lists (about 1 KB each, within PagerDuty's 512 KB per event).
const PD_OVERFLOW_LISTED: usize = 100;
/// PagerDuty's limit on `dedup_key`; a longer one is refused (400), so the event never lands.
const PD_MAX_DEDUP_KEY: usize = 255;

/// E-mail payload: `{to, subject, text, html}`. The sender adds From, Message-ID and Date.
pub fn email(d: &Digest, to: &[String]) -> Value {
    json!({
        "to": to,
        "subject": format!("[keysweep] {}", text::mail_text(&d.title())),
        "text": email_text(d),
        "html": email_html(d),
    })
}

/// The plain-text part: every key with all its fields, grouped by project. Every value that
/// names something is one line (`text::mail_text`): a name cannot forge a line or a link.
pub fn email_text(d: &Digest) -> String {
    let mut s = String::new();
    s.push_str(&d.title());
    s.push_str("\n\n");
    s.push_str(d.intro());
    s.push_str("\n\n");
    match &d.body {
        Body::Notices(groups) => {
            for g in groups {
                s.push_str(&format!(
                    "Project {} — organization {} — {}\n",
                    text::mail_text(&g.label()),
                    text::mail_text(&g.organization),
                    count_keys(g.key_count())
                ));
                s.push_str(&"-".repeat(72));
                s.push('\n');
                for n in &g.notices {
                    for (label, value) in key_fields(g, n, d.generated_at) {
                        // Into the message itself (writing to a `String` cannot fail): a
                        // `format!` per line was a copy per field.
                        let _ = writeln!(s, "  {label:<15} {}", text::mail_text(&value));
                    }
                    s.push('\n');
                }
            }
        }
        Body::Alerts(alerts) => {
            for a in alerts {
                s.push_str(&format!("- {}\n", text::mail_text(&alert_text(a))));
            }
            s.push('\n');
        }
        Body::Test => {}
    }
    s.push_str(&format!(
        "Run {} at {}. Sent by keysweep.\n",
        text::mail_text(&d.run_id),
        rfc3339(d.generated_at)
    ));
    s
}

/// The HTML part: one table per project.
pub fn email_html(d: &Digest) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body style=\"font-family:sans-serif\">\n",
    );
    s.push_str(&format!(
        "<h2>{}</h2>\n<p>{}</p>\n",
        text::mail_html(&d.title()),
        text::mail_html(d.intro())
    ));
    match &d.body {
        Body::Notices(groups) => {
            for g in groups {
                s.push_str(&format!(
                    "<h3>Project {} &mdash; organization {} &mdash; {}</h3>\n",
                    text::mail_html(&g.label()),
                    text::mail_html(&g.organization),
                    count_keys(g.key_count())
                ));
                s.push_str("<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\n<tr>");
                for label in KEY_LABELS {
                    s.push_str(&format!("<th>{}</th>", text::mail_html(label)));
                }
                s.push_str("</tr>\n");
                for n in &g.notices {
                    s.push_str("<tr>");
                    for (_, value) in key_fields(g, n, d.generated_at) {
                        let _ = write!(s, "<td>{}</td>", text::mail_html(&value));
                    }
                    s.push_str("</tr>\n");
                }
                s.push_str("</table>\n");
            }
        }
        Body::Alerts(alerts) => {
            s.push_str("<ul>\n");
            for a in alerts {
                s.push_str(&format!("<li>{}</li>\n", text::mail_html(&alert_text(a))));
            }
            s.push_str("</ul>\n");
        }
        Body::Test => {}
    }
    s.push_str(&format!(
        "<p style=\"color:#666\">Run {} at {}. Sent by keysweep.</p>\n</body></html>\n",
        text::mail_html(&d.run_id),
        rfc3339(d.generated_at)
    ));
    s
}

/// Slack Block Kit bodies, split so each stays within 50 blocks and every text field within
/// 3000 characters. Every key appears in exactly one of the returned messages.
pub fn slack(d: &Digest) -> Vec<Value> {
    // Content blocks, tagged so a part that starts in the middle of a project can repeat that
    // project's header and a project header is never left alone at the end of a part.
    enum Tag {
        ProjectHeader,
        Keys(usize),
        Other,
    }
    let mut content: Vec<(Tag, Value)> = Vec::new();
    let mut project_headers: Vec<String> = Vec::new();
    match &d.body {
        Body::Notices(groups) => {
            for g in groups {
                let idx = project_headers.len();
                let head = format!(
                    "*Project {}* — organization `{}` — {}",
                    text::slack(&g.label()),
                    text::slack(&g.organization),
                    count_keys(g.key_count())
                );
                content.push((Tag::ProjectHeader, section(&head)));
                project_headers.push(head);
                for text in pack(&slack_key_lines(g, d.generated_at), SLACK_MAX_TEXT) {
                    content.push((Tag::Keys(idx), section(&text)));
                }
            }
        }
        Body::Alerts(alerts) => {
            let lines: Vec<String> = alerts
                .iter()
                .map(|a| format!("• {}", text::slack(&alert_text(a))))
                .collect();
            for text in pack(&lines, SLACK_MAX_TEXT) {
                content.push((Tag::Other, section(&text)));
            }
        }
        Body::Test => {}
    }

    // Each message starts with header + context + intro; the rest of the budget is content.
    let budget = SLACK_MAX_BLOCKS - 3;
    let mut parts: Vec<Vec<Value>> = Vec::new();
    let mut cur: Vec<Value> = Vec::new();
    for (tag, block) in content {
        let need = match tag {
            // A project header needs room for at least one line of its keys after it.
            Tag::ProjectHeader => 2,
            _ => 1,
        };
        if !cur.is_empty() && cur.len() + need > budget {
            parts.push(std::mem::take(&mut cur));
        }
        if let (true, Tag::Keys(p)) = (cur.is_empty(), &tag) {
            cur.push(section(&format!("{} (continued)", project_headers[*p])));
        }
        cur.push(block);
    }
    if !cur.is_empty() || parts.is_empty() {
        parts.push(cur);
    }

    let total = parts.len();
    let title = d.title();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, blocks)| {
            let head = if total > 1 {
                format!("keysweep: {title} (part {} of {total})", i + 1)
            } else {
                format!("keysweep: {title}")
            };
            let mut all = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&head, SLACK_MAX_HEADER), "emoji": false}}),
                json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                    "run `{}` · {} · {}", text::slack(&d.run_id), rfc3339(d.generated_at),
                    if d.all_dry_run() { "dry-run: nothing is deleted" } else { "keysweep" }), "verbatim": true}]}),
                section(&text::slack(d.intro())),
            ];
            all.extend(blocks);
            json!({ "text": truncate(&head, SLACK_MAX_TEXT), "blocks": all })
        })
        .collect()
}

/// PagerDuty Events v2 body for one notice, without `routing_key` (added at send time).
/// `trigger` while the finding is open, `resolve` once the key is revoked or rotated, or the
/// finding closed.
/// A dry-run "would be revoked" keeps the incident open: the key still exists.
pub fn pagerduty_notice(n: &Notice, now: i64) -> Value {
    let f = &n.finding;
    let dedup_key = pagerduty_dedup_key(f.id.dedup_key());
    match n.kind {
        NoticeKind::Resolved => json!({
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }),
        // A rotation is good news: the key was replaced and its old self ends at the promised
        // deadline, so the finding's incident is resolved, never paged.
        NoticeKind::Revoked | NoticeKind::Rotated if !n.dry_run => json!({
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }),
        NoticeKind::Warning
        | NoticeKind::Reminder
        | NoticeKind::FinalNotice
        | NoticeKind::Postponed
        | NoticeKind::Rotated
        | NoticeKind::Revoked => {
            let summary = format!(
                "{}API key {} ({}) in project {}: {} — {}",
                match n.kind {
                    NoticeKind::FinalNotice => "Final notice: ",
                    NoticeKind::Postponed => "Postponed: ",
                    NoticeKind::Rotated => "Rotated: ",
                    NoticeKind::Revoked => "Past its deadline (dry-run, not revoked): ",
                    _ => "",
                },
                f.key_name,
                f.redacted_value,
                f.project_name.as_deref().unwrap_or(&f.id.project_id),
                f.reason,
                status_text(n)
            );
            json!({
                "event_action": "trigger",
                "dedup_key": dedup_key,
                "client": "keysweep",
                "payload": {
                    "summary": truncate(&text::summary(&summary), PD_MAX_SUMMARY),
                    "source": format!("keysweep/{}", f.id.organization),
                    "severity": if matches!(n.kind, NoticeKind::FinalNotice | NoticeKind::Revoked) { "error" } else { "warning" },
                    "timestamp": rfc3339(now),
                    "component": f.id.project_id,
                    "group": f.id.organization,
                    "class": f.id.policy,
                    "custom_details": notice_json(n, now),
                },
            })
        }
    }
}

/// The one PagerDuty event for the notices over a channel's `max_messages_per_sweep`: a
/// `trigger` whose `custom_details.findings` lists the [`PD_OVERFLOW_LISTED`] with the earliest
/// deadlines, and counts the rest. PagerDuty refuses an event over 512 KB, and a first sweep's
/// overflow of thousands of findings (about 1 KB each) would never land: none of it would reach
/// PagerDuty. Every notice is still in the digests of the other channels and in the audit log.
pub fn pagerduty_overflow(notices: &[&Notice], cap: usize, run_id: &str, now: i64) -> Value {
    let mut urgent: Vec<&Notice> = notices.to_vec();
    urgent.sort_by_key(|n| (n.finding.deadline, &n.finding.id));
    urgent.truncate(PD_OVERFLOW_LISTED);
    let summary = format!(
        "keysweep: {} more findings in this sweep than this channel's max_messages_per_sweep \
         ({cap}); the {} with the earliest deadlines are listed in custom_details.findings",
        notices.len(),
        urgent.len()
    );
    json!({
        "event_action": "trigger",
        "dedup_key": format!("keysweep/overflow/{run_id}"),
        "client": "keysweep",
        "payload": {
            "summary": truncate(&summary, PD_MAX_SUMMARY),
            "source": "keysweep",
            "severity": "warning",
            "timestamp": rfc3339(now),
            "class": "overflow",
            "custom_details": {
                "max_messages_per_sweep": cap,
                "count": notices.len(),
                "not_listed": notices.len() - urgent.len(),
                "findings": urgent.iter().map(|n| notice_json(n, now)).collect::<Vec<_>>(),
            },
        },
    })
}

/// The one webhook body for the notices over a channel's `max_messages_per_sweep`
/// (`type` = `keysweep.notices.overflow`), listing every one of them.
pub fn webhook_overflow(notices: &[&Notice], cap: usize, run_id: &str, now: i64) -> Value {
    json!({
        "type": "keysweep.notices.overflow",
        "version": 1,
        "run_id": run_id,
        "generated_at": rfc3339(now),
        "title": format!(
            "{} more notices in this sweep than this channel's max_messages_per_sweep ({cap})",
            notices.len()
        ),
        "dry_run": notices.iter().all(|n| n.dry_run),
        "notices": notices.iter().map(|n| notice_json(n, now)).collect::<Vec<_>>(),
        "alerts": [],
    })
}

/// PagerDuty Events v2 body for an enforcer alert (always `trigger`).
pub fn pagerduty_alert(a: &EnforcerAlert, now: i64) -> Value {
    json!({
        "event_action": "trigger",
        "dedup_key": pagerduty_dedup_key(format!("keysweep/{}", a.incident_key())),
        "client": "keysweep",
        "payload": {
            "summary": truncate(&text::summary(&format!("keysweep: {}", alert_text(a))), PD_MAX_SUMMARY),
            "source": "keysweep",
            "severity": "error",
            "timestamp": rfc3339(now),
            "class": "enforcer_alert",
            "custom_details": alert_json(a),
        },
    })
}

/// `key` as PagerDuty takes it: as it is up to [`PD_MAX_DEDUP_KEY`] bytes; longer (an
/// inventory gap naming many keys, a long policy name), its start and the SHA-256 of the whole,
/// so the same alert or finding keeps one key (its trigger and resolve meet) and two never
/// share one.
fn pagerduty_dedup_key(key: String) -> String {
    use sha2::{Digest, Sha256};
    if key.len() <= PD_MAX_DEDUP_KEY {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut cut = PD_MAX_DEDUP_KEY - 1 - 2 * digest.len();
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = format!("{}/", &key[..cut]);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// PagerDuty body for `keysweep notify test`: an info event that is resolved right away by
/// nobody; its dedup key is unique per test.
pub fn pagerduty_test(message_id: &str, now: i64) -> Value {
    json!({
        "event_action": "trigger",
        "dedup_key": format!("keysweep/test/{message_id}"),
        "client": "keysweep",
        "payload": {
            "summary": "Test message from keysweep (`keysweep notify test`)",
            "source": "keysweep",
            "severity": "info",
            "timestamp": rfc3339(now),
            "class": "test",
        },
    })
}

/// The webhook body (schema in this module's docs).
pub fn webhook(d: &Digest) -> Value {
    let (kind, notices, alerts) = match &d.body {
        Body::Notices(groups) => (
            format!("keysweep.notices.{}", d.kind.as_str()),
            groups
                .iter()
                .flat_map(|g| g.notices.iter())
                .map(|n| notice_json(n, d.generated_at))
                .collect::<Vec<_>>(),
            Vec::new(),
        ),
        Body::Alerts(a) => (
            match d.kind {
                MessageKind::WokeUp => "keysweep.woke_up".to_string(),
                _ => "keysweep.alerts".to_string(),
            },
            Vec::new(),
            a.iter().map(alert_json).collect(),
        ),
        Body::Test => ("keysweep.test".to_string(), Vec::new(), Vec::new()),
    };
    json!({
        "type": kind,
        "version": 1,
        "run_id": d.run_id,
        "generated_at": rfc3339(d.generated_at),
        "title": text::summary(&d.title()),
        "dry_run": d.all_dry_run(),
        "notices": notices,
        "alerts": alerts,
    })
}

/// All fields of one notice, for webhooks and PagerDuty `custom_details`; `now` (the message's
/// time) decides whether the key's expiry has passed.
pub fn notice_json(n: &Notice, now: i64) -> Value {
    let f = &n.finding;
    let mut v = json!({
        "kind": n.kind.as_str(),
        "dry_run": n.dry_run,
        "organization": f.id.organization,
        "project_id": f.id.project_id,
        "project_name": f.project_name,
        "key_id": f.id.key_id,
        "key_name": f.key_name,
        "redacted_value": f.redacted_value,
        "owner": f.owner,
        "owner_type": f.owner_type.as_str(),
        "owner_email": f.owner_email,
        "policy": f.id.policy,
        "action": match f.action { Action::Notify => "notify", Action::Revoke => "revoke", Action::Expire => "expire" },
        "reason": f.reason,
        "stage": f.stage.as_str(),
        "status": status_text(n),
        "verdict": notice_verdict(n).as_str(),
        "withheld_by": notice_verdict(n).withheld_by(),
        "deadline": match f.action { Action::Revoke | Action::Expire => Value::String(rfc3339(f.deadline)), Action::Notify => Value::Null },
        "expiry_set_by_keysweep": f.expiry.set.map(|s| rfc3339(s.to)),
        "deadline_unix": f.deadline,
        "created_at": rfc3339(f.created_at),
        "last_used_at": f.last_used_at.map(rfc3339),
        "last_used_unknown": f.last_used_unknown,
        "detected_at": rfc3339(f.detected_at),
        "resolution": f.resolution,
        "dedup_key": f.id.dedup_key(),
    });
    if let Value::Object(m) = &mut v {
        let at = f.expires_at.at();
        m.insert("expires_at".into(), json!(at.map(rfc3339)));
        m.insert("expires_at_unix".into(), json!(at));
        let state = ExpiryStatus::of(f.expires_at, now).as_str();
        m.insert("expiry_state".into(), json!(state));
        let usage = n.intel.as_ref().and_then(|i| i.usage).map(|u| {
            json!({"window_days": u.window_days, "requests": u.requests, "cost_usd": u.cost_usd()})
        });
        m.insert("usage".into(), json!(usage));
        let route = n.intel.as_ref().and_then(|i| i.route.as_ref());
        m.insert("owner_route".into(), json!(route));
    }
    v
}

fn alert_json(a: &EnforcerAlert) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        // One clean line like every other summary: alert texts carry key names (a renamed key).
        m.insert(
            "summary".into(),
            Value::String(text::summary(&alert_text(a))),
        );
        m.insert("dedup_key".into(), Value::String(a.dedup_key()));
    }
    v
}

/// Labels of the fields shown for every key, in display order (see `key_fields`).
const KEY_LABELS: [&str; 11] = [
    "Key",
    "Redacted value",
    "Project",
    "Owner",
    "Policy",
    "Reason",
    "Deadline",
    "Status",
    "Expires",
    "Usage",
    "Key id",
];

/// Label/value pairs shown for every key, in display order; `now` is the message's time.
fn key_fields(g: &ProjectGroup, n: &Notice, now: i64) -> Vec<(&'static str, String)> {
    let f = &n.finding;
    let values = [
        f.key_name.clone(),
        f.redacted_value.clone(),
        g.label(),
        owner_text(n),
        f.id.policy.clone(),
        f.reason.clone(),
        deadline_text(n),
        status_text(n),
        expiry_text(n, now),
        usage_text(n),
        f.id.key_id.clone(),
    ];
    KEY_LABELS.into_iter().zip(values).collect()
}

/// The key's owner and its type; for a key the sweep routed (a service-account key), who is
/// told in person and why: "payments-bot (service_account; told: its creator alice@x.com)".
fn owner_text(n: &Notice) -> String {
    let f = &n.finding;
    let told = match n.intel.as_ref().and_then(|i| i.route.as_ref()) {
        None => String::new(),
        Some(OwnerRoute::Person { email }) => format!("; told: its creator {email}"),
        Some(OwnerRoute::ProjectOwners { emails }) => format!(
            "; told: the project's owners {} (its creator is unknown or left the project)",
            emails.join(", ")
        ),
        Some(OwnerRoute::Fallback) => {
            "; told: owner_fallback (no creator or owner in the project to tell)".to_string()
        }
    };
    format!("{} ({}{told})", f.owner, f.owner_type.as_str())
}

/// One Slack line per key of the group; `now` is the message's time.
fn slack_key_lines(g: &ProjectGroup, now: i64) -> Vec<String> {
    g.notices.iter().map(|n| slack_key_line(n, now)).collect()
}

fn slack_key_line(n: &Notice, now: i64) -> String {
    let f = &n.finding;
    let line = format!(
        "• *{}* `{}` — owner: {} — policy: {}\n      reason: {}\n      deadline: {} — {}\n      expires: {}\n      usage: {}",
        text::slack(&f.key_name),
        text::slack(&f.redacted_value),
        text::slack(&owner_text(n)),
        text::slack(&f.id.policy),
        text::slack(&f.reason),
        deadline_text(n),
        text::slack(&status_text(n)),
        expiry_text(n, now),
        text::slack(&usage_text(n)),
    );
    truncate(&line, SLACK_MAX_TEXT)
}

/// Packs lines into texts of at most `max` characters, never splitting a line.
fn pack(lines: &[String], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0;
    for l in lines {
        let len = l.chars().count();
        if !cur.is_empty() && cur_len + 1 + len > max {
            out.push(std::mem::take(&mut cur));
            cur_len = 0;
        }
        if !cur.is_empty() {
            cur.push('\n');
            cur_len += 1;
        }
        cur.push_str(l);
        cur_len += len;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A mrkdwn section, `verbatim`: Slack neither links URLs nor turns `@here`/`#channel` words
/// into mentions in it (the text is also neutralised by `text::slack`). Cut to Slack's 3000
/// characters: one longer text (an alert naming hundreds of keys, a long project name escaped)
/// makes Slack refuse the whole message, and with it every other alert in the digest.
fn section(text: &str) -> Value {
    let text = truncate(text, SLACK_MAX_TEXT);
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": true}})
}

fn count_keys(n: usize) -> String {
    if n == 1 {
        "1 key".to_string()
    } else {
        format!("{n} keys")
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// A human-readable preview of a stored payload (for `keysweep demo`): the e-mail text, the
/// Slack section texts, or pretty JSON.
pub fn preview(payload: &Value) -> String {
    if let Some(text) = payload.get("text").and_then(Value::as_str)
        && payload.get("subject").is_some()
    {
        let subject = payload["subject"].as_str().unwrap_or_default();
        return format!("Subject: {subject}\n\n{text}");
    }
    // Shown on a terminal: what serde leaves raw in the names is escaped.
    text::json(&serde_json::to_string_pretty(payload).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An alert naming 300 keys is one line far over Slack's 3000 characters per text: every
    /// section is cut to the limit, so Slack takes the message and the other alerts in it.
    #[test]
    fn every_slack_section_stays_within_3000_characters() {
        let gap = EnforcerAlert::InventoryGap {
            organization: "acme".into(),
            key_ids: (0..300).map(|i| format!("key_{i:020}")).collect(),
        };
        let d = Digest::alerts(MessageKind::Alert, "run", 0, &[&gap]);
        for message in slack(&d) {
            for block in message["blocks"].as_array().unwrap() {
                let text = block["text"]["text"].as_str().unwrap_or("");
                assert!(text.chars().count() <= SLACK_MAX_TEXT, "{}", text.len());
            }
        }
    }

    /// A channel's dead letters share one PagerDuty incident: a relay down for hours pages
    /// once, not once per message.
    #[test]
    fn a_channels_dead_letters_share_one_pagerduty_incident() {
        let dead = |channel: &str, message_id: &str| EnforcerAlert::DeliveryFailed {
            channel: channel.into(),
            message_id: message_id.into(),
            attempts: 12,
            error: "relay down".into(),
        };
        let key = |a: &EnforcerAlert| pagerduty_alert(a, 0)["dedup_key"].clone();
        assert_eq!(key(&dead("mail", "ks-1")), key(&dead("mail", "ks-2")));
        assert_ne!(key(&dead("mail", "ks-1")), key(&dead("owners", "ks-1")));
    }

    /// An inventory gap naming 40 keys has a dedup key far over PagerDuty's 255: it is sent
    /// within the limit, the same every time, and apart from a gap naming other keys.
    #[test]
    fn a_pagerduty_dedup_key_stays_within_the_limit_and_apart() {
        let gap = |first: usize| EnforcerAlert::InventoryGap {
            organization: "acme".into(),
            key_ids: (first..first + 40)
                .map(|i| format!("key_{i:020}"))
                .collect(),
        };
        let key = |a: &EnforcerAlert| {
            pagerduty_alert(a, 0)["dedup_key"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (one, other) = (key(&gap(0)), key(&gap(1)));
        assert!(
            one.len() <= PD_MAX_DEDUP_KEY && other.len() <= PD_MAX_DEDUP_KEY,
            "{one}"
        );
        assert!(one.starts_with("keysweep/inventory-gap/acme/"), "{one}");
        assert_eq!(one, key(&gap(0)));
        assert_ne!(one, other);
        // A short one is left as it is; a cut never splits a character.
        assert_eq!(pagerduty_dedup_key("keysweep/x".into()), "keysweep/x");
        let long = pagerduty_dedup_key("é".repeat(200));
        assert!(long.len() <= PD_MAX_DEDUP_KEY, "{long}");
    }
}
