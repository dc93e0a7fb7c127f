//! Routing and rendering without a socket: which channel and recipient gets which digest,
//! one message per notice kind, ops alerts, Slack's limits, digests split into parts, and no
//! secret in any rendered payload.

use super::*;
use keysweep::policy::verdict::{NotifyOnlyBy, Verdict};

/// E-mail: the channel's list gets every max-age key; owners get their own keys; the service
/// account (no e-mail) has no owner mail.
fn assert_email_digests(msgs: &[OutboxMessage]) {
    let email = by(msgs, "sec-email");
    let recipients: BTreeSet<&str> = email.iter().map(|m| m.recipient.as_str()).collect();
    assert_eq!(
        recipients,
        BTreeSet::from([
            "security@example.com",
            "alice@example.com",
            "bob@example.com"
        ])
    );
    assert_eq!(email.len(), 3, "one digest per recipient");
    let team = email
        .iter()
        .find(|m| m.recipient == "security@example.com")
        .unwrap();
    let text = team.payload["text"].as_str().unwrap();
    assert_lists_max_age_keys("the team digest", text);
    assert!(
        !text.contains("forgotten"),
        "idle policy does not notify e-mail"
    );
    assert!(text.contains("payments-api (proj_pay)") && text.contains("website (proj_web)"));
    // The exact revocation date, UTC RFC 3339.
    assert!(
        text.contains("will be revoked at 2026-03-15T09:00:00Z"),
        "{text}"
    );
    let alice = email
        .iter()
        .find(|m| m.recipient == "alice@example.com")
        .unwrap();
    let atext = alice.payload["text"].as_str().unwrap();
    assert!(atext.contains("ci-deploy") && !atext.contains("old-batch"));
    // One field a line, its label padded to 15 columns.
    assert!(atext.contains("\n  Key             ci-deploy\n"), "{atext}");
    assert!(atext.contains("\n  Redacted value  sk-"), "{atext}");
    assert_eq!(
        alice.payload["to"],
        serde_json::json!(["alice@example.com"])
    );
}

#[test]
fn routing_sends_one_digest_per_channel_and_recipient() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let msgs = compose(&warnings(), &[], &cfg, RUN, NOW);

    assert_email_digests(&msgs);

    // Slack: one digest for both policies, both projects.
    let slack = by(&msgs, "slack");
    assert_eq!(slack.len(), 1);
    let body = slack[0].payload.to_string();
    for name in ["ci-deploy", "old-batch", "svc-bot", "forgotten"] {
        assert!(body.contains(name), "slack misses {name}");
    }

    // PagerDuty: one trigger per finding with the finding's dedup key, no routing key stored.
    let pd = by(&msgs, "pd");
    let keys: BTreeSet<String> = pd
        .iter()
        .map(|m| m.payload["dedup_key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "acme/proj_pay/key_alice/max-age".to_string(),
            "acme/proj_pay/key_bob/max-age".to_string(),
            "acme/proj_web/key_bot/max-age".to_string(),
        ])
    );
    assert!(pd.iter().all(|m| m.payload["event_action"] == "trigger"));
    assert!(pd.iter().all(|m| m.payload.get("routing_key").is_none()));

    // Routes: payments-* adds payments-hook, for payments keys only.
    let pay = by(&msgs, "payments-hook");
    assert_eq!(pay.len(), 1);
    let names: BTreeSet<&str> = pay[0].payload["notices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["key_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["ci-deploy", "old-batch"]));

    // owner_fallback: only the key without an owner e-mail.
    let fb = by(&msgs, "fallback-hook");
    assert_eq!(fb.len(), 1);
    let notices = fb[0].payload["notices"].as_array().unwrap();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0]["key_name"], "svc-bot");
    assert_eq!(notices[0]["owner_type"], "service_account");

    // Nothing for ops without alerts; ids are unique and stable across recomposition.
    assert!(by(&msgs, "ops-hook").is_empty());
    let ids: BTreeSet<&str> = msgs.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), msgs.len());
    assert_eq!(compose(&warnings(), &[], &cfg, RUN, NOW), msgs);
}

#[test]
fn each_notice_kind_gets_its_own_message_and_dry_run_says_so() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let mut final_alice = alice_key();
    final_alice.stage = Stage::FinalNotice;
    let mut revoked_bob = bob_key();
    revoked_bob.stage = Stage::Revoked;
    revoked_bob.closed_at = Some(NOW);
    let mut resolved_bot = bot_key();
    resolved_bot.stage = Stage::Resolved;
    resolved_bot.resolution = Some("key deleted by owner".into());
    let notices = vec![
        notice(NoticeKind::FinalNotice, final_alice),
        Notice {
            kind: NoticeKind::Revoked,
            finding: std::sync::Arc::new(revoked_bob),
            dry_run: true,
            verdict: None,
            rotated: None,
            intel: None,
            key_expiry: None,
        },
        notice(NoticeKind::Resolved, resolved_bot),
    ];
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    let team: Vec<&OutboxMessage> = msgs
        .iter()
        .filter(|m| m.recipient == "security@example.com")
        .collect();
    let kinds: BTreeSet<MessageKind> = team.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            MessageKind::FinalNotice,
            MessageKind::Revoked,
            MessageKind::Resolved
        ])
    );
    assert_eq!(team.len(), 3);
    let subject = |k| {
        team.iter().find(|m| m.kind == k).unwrap().payload["subject"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(subject(MessageKind::FinalNotice).starts_with("[keysweep] Final notice"));
    assert!(subject(MessageKind::Revoked).contains("would be revoked (dry-run)"));
    let revoked_text = team
        .iter()
        .find(|m| m.kind == MessageKind::Revoked)
        .unwrap()
        .payload["text"]
        .as_str()
        .unwrap();
    assert!(revoked_text.contains("would be revoked (dry-run)"));
    assert!(revoked_text.contains("old-batch"));
    let resolved = team
        .iter()
        .find(|m| m.kind == MessageKind::Resolved)
        .unwrap();
    assert!(
        resolved.payload["text"]
            .as_str()
            .unwrap()
            .contains("resolved: key deleted by owner")
    );

    // PagerDuty: trigger for the final notice, resolve for resolved; a dry-run "would be
    // revoked" keeps the incident open (the key still exists).
    let pd = by(&msgs, "pd");
    let action = |key: &str| {
        pd.iter()
            .find(|m| m.payload["dedup_key"].as_str().unwrap().contains(key))
            .unwrap()
            .payload["event_action"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(action("key_alice"), "trigger");
    assert_eq!(action("key_bob"), "trigger");
    assert_eq!(action("key_bot"), "resolve");
}

#[test]
fn enforcer_alerts_go_to_ops_channels_only() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let alerts = vec![
        EnforcerAlert::IncompleteListing {
            organization: "acme".into(),
            project_id: "proj_pay".into(),
            reason: "page 3 timed out".into(),
        },
        EnforcerAlert::KillSwitchOn {
            path: "/etc/keysweep/STOP".into(),
            withheld: 2,
        },
    ];
    let msgs = compose(&[], &alerts, &cfg, RUN, NOW);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].channel, "ops-hook");
    assert_eq!(msgs[0].kind, MessageKind::Alert);
    assert_eq!(msgs[0].payload["type"], "keysweep.alerts");
    let listed: Vec<&str> = msgs[0].payload["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec!["incomplete_listing", "kill_switch_on"]);
}

#[test]
fn slack_split_keeps_every_key_and_stays_within_limits() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let mut notices = Vec::new();
    for p in 0..7 {
        for k in 0..60 {
            let mut f = finding(
                (&format!("proj_{p}"), &format!("project-{p}")),
                (
                    &format!("key_{p}_{k}"),
                    &format!("key-name-{p}-{k}"),
                    &format!("sk-proj-***{p:02}{k:02}"),
                ),
                (OwnerType::User, "dev@example.com", Some("dev@example.com")),
                "idle",
                Action::Notify,
                Stage::Warned,
            );
            f.reason = format!("unused for 120 days; {}", "detail ".repeat(k % 13 * 10));
            notices.push(notice(NoticeKind::Warning, f));
        }
    }
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    let slack = by(&msgs, "slack");
    assert!(slack.len() > 1, "420 long lines must be split");
    let mut seen = Vec::new();
    for m in &slack {
        let blocks = m.payload["blocks"].as_array().unwrap();
        assert!(blocks.len() <= SLACK_MAX_BLOCKS, "{} blocks", blocks.len());
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(
                    t.chars().count() <= SLACK_MAX_TEXT,
                    "text of {} chars",
                    t.len()
                );
                for line in t.lines() {
                    if let Some(rest) = line.strip_prefix("• *key-name-") {
                        seen.push(rest.split('*').next().unwrap().to_string());
                    }
                }
            }
        }
        assert!(m.payload["text"].as_str().unwrap().contains("part"));
    }
    let expected: Vec<String> = (0..7)
        .flat_map(|p| (0..60).map(move |k| format!("{p}-{k}")))
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    let mut exp_sorted = expected.clone();
    exp_sorted.sort();
    assert_eq!(
        sorted, exp_sorted,
        "every key exactly once across the parts"
    );
    let ids: BTreeSet<&str> = slack.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), slack.len());
}

/// `n` warnings of revoking findings, spread over three projects, with key ids `kid00000z`….
/// Across the parts of one digest, every one of the `n` keys is named exactly once, and no part
/// names more than [`MAX_NOTICES_PER_DIGEST`].
fn assert_each_key_once(channel: &str, recipient: &str, parts: &[&OutboxMessage], n: usize) {
    let mut count = vec![0usize; n];
    for m in parts {
        let text = m.payload.to_string();
        // Every key id in the message, once (an e-mail names each in text and HTML).
        let here: BTreeSet<usize> = text
            .match_indices("kid")
            .filter_map(|(at, _)| {
                let id = text.get(at + 3..at + 9)?;
                id.strip_suffix('z')?.parse().ok()
            })
            .collect();
        assert!(
            here.len() <= MAX_NOTICES_PER_DIGEST,
            "{channel}: {} keys in one message",
            here.len()
        );
        for i in here {
            count[i] += 1;
        }
    }
    assert!(
        count.iter().all(|&c| c == 1),
        "{channel}/{recipient}: a key is missing or repeated"
    );
}

#[test]
fn large_digests_go_out_in_parts_that_keep_every_key_once() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let n = 2 * MAX_NOTICES_PER_DIGEST + 7;
    let notices = many_warnings(n);
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    let mut groups: std::collections::BTreeMap<(String, String), Vec<&OutboxMessage>> =
        Default::default();
    for m in msgs
        .iter()
        .filter(|m| m.channel != "pd" && m.channel != "slack")
    {
        groups
            .entry((m.channel.clone(), m.recipient.clone()))
            .or_default()
            .push(m);
    }
    assert!(!groups.is_empty(), "no digest composed");
    let mut emails = 0;
    for ((channel, recipient), parts) in &groups {
        assert_eq!(
            parts.len(),
            3,
            "{channel}/{recipient}: {n} notices in parts of {MAX_NOTICES_PER_DIGEST}"
        );
        assert_each_key_once(channel, recipient, parts, n);
        // E-mail subjects say which part a message is.
        if channel == "sec-email" {
            let mut labels: Vec<String> = parts
                .iter()
                .filter_map(|m| {
                    let subject = m.payload["subject"].as_str()?;
                    let at = subject.rfind("(part ")?;
                    Some(subject[at..].to_string())
                })
                .collect();
            labels.sort();
            assert_eq!(
                labels,
                ["(part 1 of 3)", "(part 2 of 3)", "(part 3 of 3)"],
                "{channel}/{recipient}"
            );
            emails += 1;
        }
    }
    assert!(emails > 0, "no e-mail digest composed");
    let ids: BTreeSet<&str> = msgs.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        msgs.len(),
        "message ids must stay unique across parts"
    );
}

#[test]
fn rendered_payloads_never_carry_secrets() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let alerts = vec![EnforcerAlert::AdminKeyExpiring {
        organization: "acme".into(),
        key_id: "key_admin".into(),
        redacted_value: "sk-admin-***zz".into(),
        expires_at: NOW + 5 * DAY,
    }];
    for m in compose(&warnings(), &alerts, &cfg, RUN, NOW) {
        let s: String = m.payload.to_string();
        assert_no_secret("payload", &s);
        assert!(!s.contains("/services/"));
        if let Value::Object(o) = &m.payload {
            assert!(!o.contains_key("routing_key"));
        }
    }
}

/// Every channel shows each key's own expiry: its date, `never`, `expired at …` (as of the
/// message's time) or `unknown`; webhooks and PagerDuty carry it as data too.
#[test]
fn every_channel_shows_each_keys_expiry() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let msgs = compose(&warnings(), &[], &cfg, RUN, NOW);
    let later = "2026-03-04T09:00:00Z";
    let expired = "expired at 2026-02-28T09:00:00Z";

    let email = by(&msgs, "sec-email");
    let team = email
        .iter()
        .find(|m| m.recipient == "security@example.com")
        .unwrap();
    let text = team.payload["text"].as_str().unwrap();
    // Each key's block: its name first, its expiry among its lines.
    for (name, want) in [
        ("ci-deploy", "never"),
        ("old-batch", later),
        ("svc-bot", expired),
    ] {
        let block = text
            .split("\n\n")
            .find(|b| b.contains(&format!("Key             {name}\n")))
            .unwrap_or_else(|| panic!("no block for {name}:\n{text}"));
        assert!(
            block.contains(&format!("\n  Expires         {want}\n")),
            "{name}:\n{block}"
        );
    }
    let html = team.payload["html"].as_str().unwrap();
    assert!(html.contains("<th>Expires</th>") && html.contains(&format!("<td>{expired}</td>")));

    let slack = by(&msgs, "slack")[0].payload.to_string();
    for want in ["never", later, expired, "unknown"] {
        assert!(
            slack.contains(&format!("expires: {want}")),
            "{want}: {slack}"
        );
    }

    let hook = by(&msgs, "hook");
    let notices = hook[0].payload["notices"].as_array().unwrap();
    let notice = |key: &str| notices.iter().find(|n| n["key_id"] == key).unwrap();
    assert!(notice("key_alice")["expires_at"].is_null());
    assert_eq!(notice("key_alice")["expiry_state"], "none");
    assert_eq!(notice("key_bob")["expires_at"], later);
    assert_eq!(notice("key_bob")["expires_at_unix"], NOW + 3 * DAY);
    assert_eq!(notice("key_bob")["expiry_state"], "set");
    assert_eq!(notice("key_bot")["expiry_state"], "expired");

    let pd = by(&msgs, "pd");
    let bot = pd
        .iter()
        .find(|m| m.payload["dedup_key"] == "acme/proj_web/key_bot/max-age")
        .unwrap();
    assert_eq!(
        bot.payload["payload"]["custom_details"]["expiry_state"],
        "expired"
    );
}

/// An `expire` finding is not revoked: the warning's subject says the keys get an expiry at
/// the deadline, and the key's "Expires" line shows the expiry its status announces, not the
/// "never" the key was listed with before keysweep's write.
#[test]
fn expire_warnings_say_expiry_not_revocation_and_agree_with_their_status() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let mut alice = alice_key();
    alice.action = Action::Expire;
    let deadline = alice.deadline;
    let msgs = compose(&[notice(NoticeKind::Warning, alice)], &[], &cfg, RUN, NOW);
    let mail = msgs
        .iter()
        .find(|m| m.recipient == "alice@example.com")
        .unwrap();
    let subject = mail.payload["subject"].as_str().unwrap();
    assert!(!subject.contains("revoked"), "{subject}");
    assert!(
        subject.contains("gets an expiry at the deadline"),
        "{subject}"
    );
    let text = mail.payload["text"].as_str().unwrap();
    let date = keysweep::timefmt::rfc3339(deadline);
    assert!(
        text.contains(&format!("the expiry is set to {date}")),
        "{text}"
    );
    let expires_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Expires"))
        .unwrap();
    assert!(expires_line.contains(&date), "{expires_line}");
    assert!(!expires_line.contains("never"), "{expires_line}");
}

/// A service-account key under `service_account_keys = "notify-only"` is never written to: its
/// `expire` warning names the rule instead of announcing an expiry, its "Expires" line shows the
/// key's own expiry, and the subject counts it among neither revocations nor expiries.
#[test]
fn a_not_enforced_key_announces_no_expiry() {
    let cfg = NotifySettings::from(&config(&offline_endpoints()));
    let mut alice = alice_key();
    alice.action = Action::Expire;
    let mut n = notice(NoticeKind::Warning, alice);
    n.verdict = Some(Verdict::NotifyOnly {
        by: NotifyOnlyBy::ServiceAccountKeys,
    });
    let msgs = compose(&[n], &[], &cfg, RUN, NOW);
    let mail = msgs
        .iter()
        .find(|m| m.recipient == "alice@example.com")
        .unwrap();
    let subject = mail.payload["subject"].as_str().unwrap();
    assert!(
        !subject.contains("expiry") && !subject.contains("revoked"),
        "{subject}"
    );
    let text = mail.payload["text"].as_str().unwrap();
    assert!(
        text.contains("notification only: service-account keys are not enforced"),
        "{text}"
    );
    assert!(!text.contains("the expiry is set"), "{text}");
    let expires_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Expires"))
        .unwrap();
    assert!(expires_line.contains("never"), "{expires_line}");
}
