//! Delivery over real sockets: e-mail over STARTTLS with AUTH, the HTTP channels with their
//! signatures, receivers down and back (same ids), dead letters and their alert, and
//! `notify test`. Never talks to anything but loopback receivers.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_starttls_with_auth_lists_every_key_and_no_secret() {
    let live = Live::start().await;
    let cfg = &live.cfg;
    let (_dir, db, msgs, report) = deliver_warnings(cfg).await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.dead, 0);
    assert_eq!(report.sent as usize, msgs.len());

    let received = live.smtp.messages();
    assert_eq!(
        received.len(),
        3,
        "team digest + one per owner with an e-mail"
    );
    assert_eq!(
        live.smtp.logins.lock().unwrap().len(),
        3,
        "AUTH on every connection"
    );
    let team_id = by(&msgs, "sec-email")
        .into_iter()
        .find(|m| m.recipient == "security@example.com")
        .unwrap()
        .message_id;
    let mut saw_team = false;
    for r in &received {
        let raw = String::from_utf8_lossy(&r.data);
        assert_no_secret("raw e-mail", &raw);
        let parsed = mail_parser::MessageParser::default()
            .parse(&r.data[..])
            .unwrap();
        assert!(r.from.contains("keysweep@example.com"));
        let text = parsed.body_text(0).unwrap().to_string();
        let html = parsed.body_html(0).unwrap().to_string();
        if r.to == vec!["security@example.com".to_string()] {
            saw_team = true;
            assert_eq!(
                parsed.subject().unwrap(),
                // The service-account key is only reported (`service_account_keys` =
                // "notify-only") and bob's key expires before the deadline: the subject counts
                // neither among the revocations.
                "[keysweep] 3 API keys violate policy; 1 will be revoked, 1 ends at its own \
                 expiry before the deadline, 1 is only reported"
            );
            assert_eq!(parsed.message_id().unwrap(), format!("{team_id}@keysweep"));
            assert_lists_max_age_keys("the team mail's text", &text);
            assert_lists_max_age_keys("the team mail's HTML", &html);
            assert!(text.contains("2026-03-15T09:00:00Z"));
        } else {
            assert_eq!(r.to.len(), 1);
            let owner = &r.to[0];
            assert!(owner == "alice@example.com" || owner == "bob@example.com");
            let to = parsed.to().unwrap().first().unwrap().address().unwrap();
            assert_eq!(to, owner);
        }
    }
    assert!(saw_team);
    assert_outbox_clean(&db);
    let depth = with_db(&db, outbox::depth).unwrap();
    assert_eq!(depth.pending, 0);
}

/// A first sweep's digest is large: it is stored packed, as a BLOB a fraction of its JSON's
/// size, and the e-mail delivered from it over a real SMTP server still names every key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_digest_is_stored_packed_and_delivered_whole() {
    const N: usize = 300;
    let live = Live::start().await;
    let cfg = &live.cfg;
    let (_dir, db) = open_db();
    // Queued as a sweep queues them: composed and packed first, then written in a transaction.
    let warnings = many_warnings(N);
    let composed = Composed::new(&warnings, &[], cfg, RUN, NOW).unwrap();
    {
        let mut conn = db.lock().unwrap();
        let tx = conn.transaction().unwrap();
        assert_eq!(composed.queue(&tx, NOW).unwrap(), composed.len());
        tx.commit().unwrap();
    }
    let msgs = compose(&warnings, &[], cfg, RUN, NOW);
    let team: Vec<OutboxMessage> = by(&msgs, "sec-email")
        .into_iter()
        .filter(|m| m.recipient == "security@example.com")
        .collect();
    assert!(!team.is_empty());
    for m in &team {
        let (kind, stored): (String, i64) = with_db(&db, |c| {
            c.query_row(
                "SELECT typeof(payload), length(CAST(payload AS BLOB)) FROM outbox \
                 WHERE message_id = ?1",
                [&m.message_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .unwrap();
        let json = m.payload.to_string().len() as i64;
        assert_eq!(kind, "blob", "{}", m.message_id);
        assert!(
            stored * 4 < json,
            "{stored} bytes stored for {json} of JSON"
        );
    }
    // What comes out of the outbox is what went in.
    let stored = with_db(&db, outbox::all).unwrap();
    for m in &msgs {
        let back = stored
            .iter()
            .find(|s| s.message_id == m.message_id)
            .unwrap();
        assert_eq!(back.payload, m.payload, "{}", m.message_id);
    }

    let report = Notifier::new()
        .unwrap()
        .deliver_due(&db, cfg, NOW)
        .await
        .unwrap();
    assert_eq!((report.failed, report.dead), (0, 0), "{report:?}");
    assert_eq!(report.sent as usize, msgs.len());
    let mut seen = vec![0usize; N];
    for r in live.smtp.messages() {
        if r.to != vec!["security@example.com".to_string()] {
            continue;
        }
        let parsed = mail_parser::MessageParser::default()
            .parse(&r.data[..])
            .unwrap();
        let text = parsed.body_text(0).unwrap().to_string();
        for (i, count) in seen.iter_mut().enumerate() {
            *count += text.matches(&format!("kid{i:05}z")).count();
        }
    }
    assert!(
        seen.iter().all(|&c| c == 1),
        "a key is missing from or repeated in the team's mail"
    );
}

/// A stored message that cannot be read (its packed payload damaged on disk) is dead-lettered
/// at once with its alert, and the messages after it are still delivered: one damaged row never
/// stops the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stored_message_is_dead_lettered_and_the_rest_still_go_out() {
    let live = Live::start().await;
    let cfg = &live.cfg;
    let (_dir, db) = open_db();
    let msgs = compose(&many_warnings(300), &[], cfg, RUN, NOW);
    with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    // The first packed row (the oldest due) loses the second half of its bytes.
    let damaged: String = with_db(&db, |c| {
        let id: String = c
            .query_row(
                "SELECT message_id FROM outbox WHERE typeof(payload) = 'blob' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        c.execute(
            "UPDATE outbox SET payload = substr(payload, 1, length(payload) / 2) \
             WHERE message_id = ?1",
            [&id],
        )
        .unwrap();
        id
    });
    let report = Notifier::new()
        .unwrap()
        .deliver_due(&db, cfg, NOW)
        .await
        .unwrap();
    assert_eq!(report.dead, 1, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    // Every other message, and the alert about the dead one, went out.
    assert_eq!(report.sent as usize, msgs.len() - 1 + report.alerts.len());
    assert!(
        report.alerts.iter().any(|a| matches!(a,
            EnforcerAlert::DeliveryFailed { message_id, .. } if *message_id == damaged)),
        "{:?}",
        report.alerts
    );
    let dead = with_db(&db, |c| outbox::get(c, &damaged)).unwrap().unwrap();
    assert_eq!(dead.status, "dead");
    assert!(dead.unreadable.is_some());
    let error = dead.last_error.unwrap_or_default();
    assert!(error.contains("cannot be read"), "{error}");
    assert_eq!(with_db(&db, outbox::depth).unwrap().pending, 0);
}

/// `send_timeout` bounds each answer of the relay, not the whole session: a relay that is slow
/// at every step (EHLO twice, AUTH, MAIL, RCPT, DATA, and the end of the message, which it
/// scans) but answers each within the timeout gets the message once, not cut off after it
/// accepted it and sent it again. The session takes over four timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_slow_at_each_step_within_the_timeout_gets_the_message_once() {
    let pki = TestPki::new();
    let slow = std::time::Duration::from_millis(1300);
    let smtp = smtp_server::start_slow(&pki, 0, (SMTP_USER, SMTP_PASSWORD), slow);
    let ep = Endpoints {
        smtp_port: smtp.port,
        ca_file: Some(pki.ca_pem.clone()),
        http: "http://127.0.0.1:9".into(),
    };
    let keysweep::config::ChannelKind::Email(mut ch) = email_channel(&ep).kind else {
        panic!("not an e-mail channel");
    };
    ch.send_timeout = std::time::Duration::from_secs(2);
    let payload = serde_json::json!({
        "to": ["security@example.com"], "subject": "s", "text": "t", "html": "<p>t</p>"
    });
    let sent = keysweep::notify::email::send(&ch, "ks-slow-relay", &payload).await;
    assert_eq!(sent, Ok(Default::default()));
    assert_eq!(smtp.messages().len(), 1);

    // A relay that takes the connection and never greets is given up, and retried later.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    ch.smtp_port = silent.local_addr().unwrap().port();
    ch.send_timeout = std::time::Duration::from_millis(500);
    let failed = keysweep::notify::email::send(&ch, "ks-silent-relay", &payload)
        .await
        .unwrap_err();
    assert!(failed.retryable);
    assert!(
        failed.error.contains("no answer to the connection"),
        "{}",
        failed.error
    );
}

/// A relay that refuses `gone@` for good (550), `grey@` for now (451) and `many@` as one too
/// many (552, also for now), the ops webhook and an empty outbox.
struct PickyRelay {
    smtp: smtp_server::SmtpServer,
    rx: Receiver,
    cfg: NotifySettings,
    _pki: TestPki,
    _dir: tempfile::TempDir,
    db: Mutex<Connection>,
}

const THREE: [&str; 3] = [
    "security@example.com",
    "gone@example.com",
    "grey@example.com",
];

async fn picky_relay(max_attempts: u32) -> PickyRelay {
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, SMTP_USER, SMTP_PASSWORD);
    smtp.refuse("gone@example.com", 550);
    smtp.refuse("grey@example.com", 451);
    // "Too many recipients": later, whatever its first digit says (RFC 5321 4.5.3.1.10).
    smtp.refuse("many@example.com", 552);
    let rx = Receiver::start().await;
    let ep = Endpoints {
        smtp_port: smtp.port,
        ca_file: Some(pki.ca_pem.clone()),
        http: rx.url(""),
    };
    let tweaks = Tweaks {
        max_attempts,
        ..Tweaks::default()
    };
    let cfg = NotifySettings::from(&config_with(&ep, &tweaks));
    let (_dir, db) = open_db();
    PickyRelay {
        smtp,
        rx,
        cfg,
        _pki: pki,
        _dir,
        db,
    }
}

/// A warning e-mail on `sec-email` to `to`.
fn mail_to(id: &str, to: &[&str]) -> OutboxMessage {
    OutboxMessage {
        message_id: id.into(),
        channel: "sec-email".into(),
        recipient: to.join(", "),
        kind: MessageKind::Warning,
        payload: serde_json::json!({"to": to, "subject": "s", "text": "t", "html": "<p>t</p>"}),
    }
}

/// One address the relay refuses does not keep an e-mail from the others. Refused for good
/// (550): the others get it and an alert names that address. Refused for now (451): it gets a
/// copy of its own after the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_recipient_does_not_keep_an_email_from_the_others() {
    let PickyRelay {
        smtp,
        rx,
        cfg,
        db,
        _pki,
        _dir,
    } = picky_relay(3).await;
    with_db(&db, |c| {
        outbox::enqueue(c, &[mail_to("ks-three", &THREE)], NOW)
    })
    .unwrap();
    let notifier = Notifier::new().unwrap();

    let r = notifier.deliver_due(&db, &cfg, NOW).await.unwrap();
    // The e-mail and the alert on the ops webhook.
    assert_eq!((r.sent, r.failed, r.dead), (2, 0, 0), "{r:?}");
    let got: Vec<Vec<String>> = smtp.messages().into_iter().map(|m| m.to).collect();
    assert_eq!(got, [vec!["security@example.com".to_string()]]);
    let [
        EnforcerAlert::RecipientsRefused {
            recipients, error, ..
        },
    ] = &r.alerts[..]
    else {
        panic!("{:?}", r.alerts);
    };
    assert_eq!(recipients, &["gone@example.com"]);
    assert!(error.contains("550"), "{error}");
    let ops = rx.requests("/ops");
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].json()["alerts"][0]["alert"], "recipients_refused");
    // The greylisted address has a copy of its own, waiting out the backoff.
    let copy = with_db(&db, |c| outbox::get(c, "ks-three/deferred-1"))
        .unwrap()
        .unwrap();
    assert_eq!((copy.status.as_str(), copy.attempts), ("pending", 1));
    assert_eq!(copy.payload["to"], serde_json::json!(["grey@example.com"]));
    assert!(
        copy.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("451")
    );
    assert!(copy.next_attempt_at > NOW);
    let early = notifier.deliver_due(&db, &cfg, NOW + 1).await.unwrap();
    assert_eq!(early.sent, 0);

    smtp.accept("grey@example.com");
    let later = notifier
        .deliver_due(&db, &cfg, copy.next_attempt_at)
        .await
        .unwrap();
    assert_eq!((later.sent, later.alerts.len()), (1, 0), "{later:?}");
    let last = smtp.messages().pop().unwrap();
    assert_eq!(last.to, ["grey@example.com"]);
    let parsed = mail_parser::MessageParser::default()
        .parse(&last.data[..])
        .unwrap();
    assert_eq!(parsed.message_id(), Some("ks-three/deferred-1@keysweep"));
    assert_eq!(with_db(&db, outbox::depth).unwrap().pending, 0);
}

/// An e-mail the relay takes for nobody fails and is tried again like any other failure; the
/// copy for a recipient still refused for now counts the attempts made before it and is
/// dead-lettered, with its alert, at the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_no_recipient_is_taken_for_fails_and_the_last_deferral_is_named() {
    let PickyRelay {
        smtp,
        cfg,
        db,
        _pki,
        _dir,
        ..
    } = picky_relay(3).await;
    let notifier = Notifier::new().unwrap();
    with_db(&db, |c| {
        outbox::enqueue(c, &[mail_to("ks-none", &THREE[1..])], NOW)
    })
    .unwrap();
    let none = notifier.deliver_due(&db, &cfg, NOW).await.unwrap();
    assert_eq!((none.sent, none.failed), (0, 1), "{none:?}");
    let row = with_db(&db, |c| outbox::get(c, "ks-none"))
        .unwrap()
        .unwrap();
    let why = row.last_error.unwrap_or_default();
    assert!(
        why.contains("took none of the recipients: gone@example.com"),
        "{why}"
    );
    assert!(smtp.messages().is_empty());

    // The second attempt reaches `gone@`; `grey@` gets its copy, and its last attempt (the
    // third of `max_attempts`) fails too.
    smtp.accept("gone@example.com");
    let mut now = row.next_attempt_at;
    let second = notifier.deliver_due(&db, &cfg, now).await.unwrap();
    assert_eq!(second.sent, 1, "{second:?}");
    let copy = with_db(&db, |c| outbox::get(c, "ks-none/deferred-2"))
        .unwrap()
        .unwrap();
    assert_eq!(copy.attempts, 2);
    now = copy.next_attempt_at;
    let r = notifier.deliver_due(&db, &cfg, now).await.unwrap();
    assert_eq!((r.failed, r.dead), (0, 1), "{r:?}");
    let [
        EnforcerAlert::DeliveryFailed {
            message_id, error, ..
        },
    ] = &r.alerts[..]
    else {
        panic!("{:?}", r.alerts);
    };
    assert_eq!(message_id, "ks-none/deferred-2");
    assert!(error.contains("grey@example.com (for now: "), "{error}");
    let got: Vec<Vec<String>> = smtp.messages().into_iter().map(|m| m.to).collect();
    assert_eq!(got, [vec!["gone@example.com".to_string()]]);
}

/// A relay that refuses one message's every recipient for now (greylisting, a full mailbox)
/// is not down: the channel's next message goes out in the same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_refused_for_now_does_not_hold_back_the_channels_other_mail() {
    let PickyRelay {
        smtp,
        cfg,
        db,
        _pki,
        _dir,
        ..
    } = picky_relay(3).await;
    // Two such messages in one delivery are still about their recipients, not the relay.
    let msgs = [
        mail_to("ks-grey", &["grey@example.com"]),
        mail_to("ks-grey-2", &["grey@example.com"]),
        mail_to("ks-team", &["security@example.com"]),
    ];
    with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    let r = Notifier::new()
        .unwrap()
        .deliver_due(&db, &cfg, NOW)
        .await
        .unwrap();
    assert_eq!((r.sent, r.failed, r.postponed), (1, 2, 0), "{r:?}");
    let got: Vec<Vec<String>> = smtp.messages().into_iter().map(|m| m.to).collect();
    assert_eq!(got, [vec!["security@example.com".to_string()]]);
}

/// With one attempt in all, recipients refused for now are given up with those refused for
/// good, in the one alert, while the others get the message; a 552 to RCPT is "for now".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_last_attempt_recipients_refused_for_now_are_named_with_the_others() {
    let PickyRelay {
        smtp,
        cfg,
        db,
        _pki,
        _dir,
        ..
    } = picky_relay(1).await;
    let to = [
        "security@example.com",
        "grey@example.com",
        "many@example.com",
    ];
    with_db(&db, |c| outbox::enqueue(c, &[mail_to("ks-once", &to)], NOW)).unwrap();
    let r = Notifier::new()
        .unwrap()
        .deliver_due(&db, &cfg, NOW)
        .await
        .unwrap();
    let [
        EnforcerAlert::RecipientsRefused {
            recipients, error, ..
        },
    ] = &r.alerts[..]
    else {
        panic!("{:?}", r.alerts);
    };
    assert_eq!(recipients, &["grey@example.com", "many@example.com"]);
    assert!(
        error.contains("(451)") && error.contains("(552)") && error.contains("at the last attempt"),
        "{error}"
    );
    let got: Vec<Vec<String>> = smtp.messages().into_iter().map(|m| m.to).collect();
    assert_eq!(got, [vec!["security@example.com".to_string()]]);
    let depth = with_db(&db, outbox::depth).unwrap();
    assert_eq!((depth.pending, depth.dead), (0, 0));
}

/// `notify test` on a channel whose `to` the relay partly refuses fails, naming each refused
/// address with the relay's answer, and says that the others got it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_names_the_recipients_the_relay_refused() {
    let PickyRelay {
        smtp,
        cfg,
        _pki,
        _dir,
        ..
    } = picky_relay(3).await;
    let mut ch = cfg.channel("sec-email").unwrap().clone();
    let ChannelKind::Email(e) = &mut ch.kind else {
        panic!("not an e-mail channel");
    };
    e.to = vec!["security@example.com".into(), "gone@example.com".into()];
    let err = Notifier::new()
        .unwrap()
        .send_test(&ch, NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the others got it, but the relay refused gone@example.com (")
            && err.contains("550"),
        "{err}"
    );
    assert_no_secret("notify test error", &err);
    let got: Vec<Vec<String>> = smtp.messages().into_iter().map(|m| m.to).collect();
    assert_eq!(got, [vec!["security@example.com".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_then_back_delivers_once_with_the_same_message_id() {
    let pki = TestPki::new();
    let port = free_port();
    let rx = Receiver::start().await;
    let cfg = NotifySettings::from(&config_with(
        &Endpoints {
            smtp_port: port,
            ca_file: Some(pki.ca_pem.clone()),
            http: rx.url(""),
        },
        &Tweaks {
            max_attempts: 10,
            ..Tweaks::default()
        },
    ));
    let (_dir, db) = open_db();
    let notifier = Notifier::new().unwrap();
    let only_team: Vec<OutboxMessage> = compose(&warnings(), &[], &cfg, RUN, NOW)
        .into_iter()
        .filter(|m| m.recipient == "security@example.com")
        .collect();
    assert_eq!(only_team.len(), 1);
    with_db(&db, |c| outbox::enqueue(c, &only_team, NOW)).unwrap();

    // Nothing listens: the attempt fails and is scheduled for later.
    let r1 = notifier.deliver_due(&db, &cfg, NOW).await.unwrap();
    assert_eq!((r1.sent, r1.failed, r1.dead), (0, 1, 0));
    let row = with_db(&db, |c| outbox::get(c, &only_team[0].message_id))
        .unwrap()
        .unwrap();
    assert_eq!(row.attempts, 1);
    assert!(row.next_attempt_at > NOW);
    assert_no_secret("smtp error", row.last_error.as_deref().unwrap());

    // The same sweep composed again (e.g. after a restart) does not add a second message.
    let again: Vec<OutboxMessage> = compose(&warnings(), &[], &cfg, RUN, NOW)
        .into_iter()
        .filter(|m| m.recipient == "security@example.com")
        .collect();
    assert_eq!(again, only_team);
    assert_eq!(
        with_db(&db, |c| outbox::enqueue(c, &again, NOW)).unwrap(),
        0
    );
    assert_eq!(
        with_db(&db, outbox::all)
            .unwrap()
            .iter()
            .filter(|m| m.recipient == "security@example.com")
            .count(),
        1
    );

    // The server comes back; before the backoff expires nothing is sent.
    let smtp = smtp_server::start(&pki, port, SMTP_USER, SMTP_PASSWORD);
    let early = notifier
        .deliver_due(&db, &cfg, row.next_attempt_at - 1)
        .await
        .unwrap();
    assert_eq!(early.sent, 0);
    assert!(smtp.messages().is_empty());

    let later = row.next_attempt_at;
    let r2 = notifier.deliver_due(&db, &cfg, later).await.unwrap();
    assert!(r2.sent >= 1, "{r2:?}");
    let team: Vec<_> = smtp
        .messages()
        .into_iter()
        .filter(|m| m.to == vec!["security@example.com".to_string()])
        .collect();
    assert_eq!(team.len(), 1, "delivered exactly once");
    let parsed = mail_parser::MessageParser::default()
        .parse(&team[0].data[..])
        .unwrap();
    assert_eq!(
        parsed.message_id().unwrap(),
        format!("{}@keysweep", only_team[0].message_id)
    );

    // A further run sends nothing more.
    let r3 = notifier.deliver_due(&db, &cfg, later + 7200).await.unwrap();
    assert_eq!(r3.sent, 0);
    assert_eq!(
        smtp.messages()
            .iter()
            .filter(|m| m.to == vec!["security@example.com".to_string()])
            .count(),
        1
    );
    assert_outbox_clean(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_refuses_an_untrusted_relay_and_reports_bad_credentials() {
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, SMTP_USER, "another-password");
    let ep = Endpoints {
        smtp_port: smtp.port,
        ca_file: None,
        http: "http://127.0.0.1:9".into(),
    };
    let notifier = Notifier::new().unwrap();

    // Without `smtp_ca_file` the private CA is not trusted: nothing is sent in clear.
    let untrusted = email_channel(&ep);
    let err = notifier
        .send_test(&untrusted, NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_no_secret("tls error", &err);

    // Trusted relay, wrong password: refused by the server, and the error holds no password.
    let ep = Endpoints {
        ca_file: Some(pki.ca_pem.clone()),
        ..ep
    };
    let wrong = email_channel(&ep);
    let err = notifier
        .send_test(&wrong, NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("535"), "{err}");
    assert_no_secret("auth error", &err);
    assert!(smtp.messages().is_empty());
    assert!(smtp.logins.lock().unwrap().is_empty());

    // Plain SMTP is refused for anything but a loopback host.
    let mut plain = email_channel(&ep);
    if let ChannelKind::Email(e) = &mut plain.kind {
        e.smtp_tls = SmtpTls::None;
        e.smtp_host = "mail.example.com".into();
    }
    let err = notifier
        .send_test(&plain, NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("loopback"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_channels_receive_complete_payloads_and_valid_signatures() {
    let rx = Receiver::start().await;
    // E-mail is covered elsewhere; keep this test to the HTTP channels.
    let cfg = NotifySettings::from(&config_with(
        &http_only(&rx),
        &Tweaks {
            max_age_notify: &["slack", "pd", "hook"],
            ..Tweaks::default()
        },
    ));
    let (_dir, db, msgs, report) = deliver_warnings(&cfg).await;
    assert_eq!(report.sent as usize, msgs.len(), "{report:?}");

    // Slack: Block Kit listing every key by name and redacted value.
    let slack = rx.requests(SLACK_PATH);
    assert_eq!(slack.len(), 1);
    let body = slack[0].json();
    assert!(body["blocks"].as_array().unwrap().len() <= SLACK_MAX_BLOCKS);
    let s = body.to_string();
    for red in [
        "sk-proj-***a1b2",
        "sk-proj-***c3d4",
        "sk-svcacct-***e5f6",
        "sk-proj-***g7h8",
    ] {
        assert!(s.contains(red), "slack lacks {red}");
    }

    // PagerDuty: routing key added at send time, dedup keys per finding.
    let pd = rx.requests("/pd/enqueue");
    assert_eq!(pd.len(), 3);
    for r in &pd {
        let e = r.json();
        assert_eq!(e["routing_key"], ROUTING_KEY);
        assert_eq!(e["event_action"], "trigger");
        assert!(e["dedup_key"].as_str().unwrap().starts_with("acme/"));
        assert!(e["payload"]["summary"].as_str().unwrap().contains("sk-"));
    }

    // Webhooks: every request verifies with an implementation that is not ours.
    let verifier = standardwebhooks::Webhook::new(&webhook_secret()).unwrap();
    for path in ["/hook", "/payments", "/fallback"] {
        let reqs = rx.requests(path);
        assert_eq!(reqs.len(), 1, "{path}");
        let r = &reqs[0];
        verifier.verify(&r.body, &r.headers).unwrap();
        let id = r.header("webhook-id").unwrap();
        assert!(msgs.iter().any(|m| m.message_id == id));
        let v = r.json();
        assert_eq!(v["type"], "keysweep.notices.warning");
        assert_eq!(v["run_id"], RUN);
        assert_eq!(v["generated_at"], "2026-03-01T09:00:00Z");
        for n in v["notices"].as_array().unwrap() {
            for field in [
                "project_id",
                "project_name",
                "key_name",
                "redacted_value",
                "owner",
                "policy",
                "reason",
            ] {
                assert!(n[field].is_string(), "{field} missing in {n}");
            }
            assert_eq!(n["deadline"], "2026-03-15T09:00:00Z");
        }
    }
    assert_eq!(
        rx.requests("/hook")[0].json()["notices"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_outbox_clean(&db);
}

/// Two deliverers at once on one state file (the daemon's sweeps of two organisations, or a
/// sweep and another process): each message is claimed by one of them, so a slow receiver
/// gets every message exactly once and every row ends `sent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliverers_at_once_send_each_message_once() {
    let rx = Receiver::start().await;
    rx.set_delay(std::time::Duration::from_millis(150));
    let cfg = NotifySettings::from(&config_with(
        &http_only(&rx),
        &Tweaks {
            max_attempts: 1,
            max_age_notify: &["hook", "pd"],
            routing: false,
            slack_url: None,
        },
    ));
    let (_dir, db) = open_db();
    let notices = vec![
        notice(NoticeKind::Warning, alice_key()),
        notice(NoticeKind::FinalNotice, alice_key()),
    ];
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    assert!(msgs.len() >= 4, "{}", msgs.len());
    with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    let (a, b) = (Notifier::new().unwrap(), Notifier::new().unwrap());
    let (ra, rb) = tokio::join!(a.deliver_due(&db, &cfg, NOW), b.deliver_due(&db, &cfg, NOW));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!((ra.sent + rb.sent) as usize, msgs.len(), "{ra:?} {rb:?}");
    assert!(ra.sent > 0 && rb.sent > 0, "both delivered: {ra:?} {rb:?}");
    // A message sent twice arrives twice with the same body.
    let mut bodies: Vec<(String, Vec<u8>)> = (rx.requests("/").iter())
        .map(|r| (r.path.clone(), r.body.to_vec()))
        .collect();
    let received = bodies.len();
    bodies.sort();
    bodies.dedup();
    assert_eq!(received, bodies.len(), "a message was sent twice");
    assert_eq!(received, msgs.len());
    assert!(
        with_db(&db, outbox::all)
            .unwrap()
            .iter()
            .all(|m| m.status == "sent")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_down_then_back_get_the_same_ids() {
    let rx = Receiver::start().await;
    // Slack refuses connections (nothing listens), the webhook answers 500, PagerDuty 429.
    let dead_port = free_port();
    let cfg = NotifySettings::from(&config_with(
        &http_only(&rx),
        &Tweaks {
            max_attempts: 10,
            max_age_notify: &["hook", "pd", "slack"],
            routing: false,
            slack_url: Some(format!("http://127.0.0.1:{dead_port}{SLACK_PATH}")),
        },
    ));
    rx.set_status("/hook", 500);
    rx.set_status("/pd", 429);
    // The receiver's error body is anyone's text: it must reach the log and the alerts as one
    // harmless line.
    rx.set_body(
        "/hook",
        "overloaded\r\nretry later \u{1b}[2J\u{202e}gnp.exe",
    );

    let (_dir, db) = open_db();
    let notices = vec![notice(NoticeKind::Warning, alice_key())];
    let msgs = compose(&notices, &[], &cfg, RUN, NOW);
    assert_eq!(msgs.len(), 3);
    with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    let notifier = Notifier::new().unwrap();
    let r1 = notifier.deliver_due(&db, &cfg, NOW).await.unwrap();
    assert_eq!((r1.sent, r1.failed), (0, 3), "{r1:?}");
    for row in with_db(&db, outbox::all).unwrap() {
        let e = row.last_error.unwrap();
        assert_no_secret("delivery error", &e);
        assert!(!e.contains("/services/"), "{e}");
        assert!(!e.chars().any(keysweep::text::is_unsafe), "{e:?}");
        if row.channel == "hook" {
            assert!(
                e.contains("HTTP 500 Internal Server Error: overloaded  retry later"),
                "{e}"
            );
        }
    }

    // Receivers come back (Slack on a fresh receiver at the same port).
    rx.set_status("/hook", 200);
    rx.set_status("/pd", 202);
    let slack_rx = Receiver::start_on(dead_port).await;
    let next = with_db(&db, outbox::all)
        .unwrap()
        .iter()
        .map(|m| m.next_attempt_at)
        .max()
        .unwrap();
    let r2 = notifier.deliver_due(&db, &cfg, next).await.unwrap();
    assert_eq!((r2.sent, r2.failed, r2.dead), (3, 0, 0), "{r2:?}");

    let hooks = rx.requests("/hook");
    assert_eq!(hooks.len(), 2, "one failed attempt, one accepted");
    let verifier = standardwebhooks::Webhook::new(&webhook_secret()).unwrap();
    for h in &hooks {
        verifier.verify(&h.body, &h.headers).unwrap();
    }
    assert_eq!(hooks[0].header("webhook-id"), hooks[1].header("webhook-id"));
    let pd = rx.requests("/pd");
    assert_eq!(pd.len(), 2);
    assert_eq!(pd[0].json()["dedup_key"], pd[1].json()["dedup_key"]);
    assert_eq!(slack_rx.requests(SLACK_PATH).len(), 1);
    assert_eq!(with_db(&db, outbox::depth).unwrap().pending, 0);
}

/// A channel whose receiver is down is tried once per delivery call: its other due messages
/// wait, untried and with no attempt spent, for the failed one's next attempt, while another
/// channel's messages go out in the same call. When the receiver is back, every one arrives.
/// Before, each message was tried in turn (a blackholed receiver cost a timeout per message)
/// and each spent its attempts on the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_channel_is_tried_once_per_call_and_the_others_still_go_out() {
    let rx = Receiver::start().await;
    let cfg = NotifySettings::from(&config_with(
        &http_only(&rx),
        &Tweaks {
            max_attempts: 3,
            max_age_notify: &["hook", "pd"],
            routing: false,
            slack_url: None,
        },
    ));
    rx.set_status("/hook", 503);
    let (_dir, db) = open_db();
    for run in ["run-1", "run-2", "run-3", "run-4"] {
        let msgs = compose(
            &[notice(NoticeKind::Warning, alice_key())],
            &[],
            &cfg,
            run,
            NOW,
        );
        with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    }
    let notifier = Notifier::new().unwrap();
    let r1 = notifier.deliver_due(&db, &cfg, NOW).await.unwrap();
    assert_eq!(
        (r1.sent, r1.failed, r1.postponed, r1.dead),
        (4, 1, 3, 0),
        "{r1:?}"
    );
    assert_eq!(rx.requests("/hook").len(), 1);
    assert_eq!(rx.requests("/pd").len(), 4);
    let rows = with_db(&db, outbox::all).unwrap();
    let hook: Vec<_> = rows.iter().filter(|m| m.channel == "hook").collect();
    let spent: Vec<u32> = hook.iter().map(|m| m.attempts).collect();
    assert_eq!(spent.iter().sum::<u32>(), 1, "{spent:?}");
    let next = hook.iter().map(|m| m.next_attempt_at).max().unwrap();
    assert!(hook.iter().all(|m| m.next_attempt_at == next && next > NOW));
    for m in hook.iter().filter(|m| m.attempts == 0) {
        let why = m.last_error.as_deref().unwrap_or_default();
        assert!(
            why.starts_with("not tried: the channel failed just before (HTTP 503"),
            "{why}"
        );
    }

    rx.set_status("/hook", 200);
    let r2 = notifier.deliver_due(&db, &cfg, next).await.unwrap();
    assert_eq!((r2.sent, r2.failed, r2.postponed), (4, 0, 0), "{r2:?}");
    assert_eq!(rx.requests("/hook").len(), 5);
    assert_eq!(with_db(&db, outbox::depth).unwrap().pending, 0);

    // A 500 may be about one message (a receiver choking on its payload): the next is tried;
    // a second 500 in the same call says it is the channel, and the third waits.
    rx.set_status("/hook", 500);
    for run in ["run-5", "run-6", "run-7"] {
        let msgs = compose(
            &[notice(NoticeKind::Warning, alice_key())],
            &[],
            &cfg,
            run,
            next,
        );
        with_db(&db, |c| outbox::enqueue(c, &msgs, next)).unwrap();
    }
    let r3 = notifier.deliver_due(&db, &cfg, next).await.unwrap();
    assert_eq!((r3.sent, r3.failed, r3.postponed), (3, 2, 1), "{r3:?}");
}

/// A webhook channel `hook` whose receiver answers 503, given up after `max_attempts`, and
/// one warning for it queued.
struct RefusingHook {
    rx: Receiver,
    cfg: NotifySettings,
    _dir: tempfile::TempDir,
    db: Mutex<Connection>,
    msgs: Vec<OutboxMessage>,
}

async fn refusing_hook(max_attempts: u32) -> RefusingHook {
    let rx = Receiver::start().await;
    let cfg = NotifySettings::from(&config_with(
        &http_only(&rx),
        &Tweaks {
            max_attempts,
            max_age_notify: &["hook"],
            routing: false,
            slack_url: None,
        },
    ));
    rx.set_status("/hook", 503);
    let (_dir, db) = open_db();
    let msgs = compose(
        &[notice(NoticeKind::Warning, alice_key())],
        &[],
        &cfg,
        RUN,
        NOW,
    );
    with_db(&db, |c| outbox::enqueue(c, &msgs, NOW)).unwrap();
    RefusingHook {
        rx,
        cfg,
        _dir,
        db,
        msgs,
    }
}

/// A dead letter requeued (`notify retry-dead`) that dies again raises its alert again: each
/// death is its own alert, written with the dead letter in one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_dead_letter_that_dies_again_raises_a_second_alert() {
    let RefusingHook {
        rx, cfg, _dir, db, ..
    } = refusing_hook(1).await;
    let notifier = Notifier::new().unwrap();
    let first = notifier.deliver_due(&db, &cfg, NOW).await.unwrap();
    assert_eq!((first.dead, first.alerts.len()), (1, 1), "{first:?}");
    assert_eq!(
        with_db(&db, |c| outbox::requeue_dead(c, Some("hook"))).unwrap(),
        1
    );
    let second = notifier.deliver_due(&db, &cfg, NOW + 60).await.unwrap();
    assert_eq!((second.dead, second.alerts.len()), (1, 1), "{second:?}");
    // Both alerts reached the ops channel: the second was not taken for the first.
    let alerts = (rx.requests("/ops").iter())
        .filter(|r| r.json()["alerts"][0]["alert"] == "delivery_failed")
        .count();
    assert_eq!(alerts, 2);
    assert_eq!(with_db(&db, outbox::depth).unwrap().dead, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_after_max_attempts_raises_one_alert_without_looping() {
    let RefusingHook {
        rx,
        cfg,
        _dir,
        db,
        msgs,
    } = refusing_hook(3).await;
    assert_eq!(msgs.len(), 1);
    let notifier = Notifier::new().unwrap();

    let mut now = NOW;
    let mut reports = Vec::new();
    for _ in 0..3 {
        let r = notifier.deliver_due(&db, &cfg, now).await.unwrap();
        reports.push(r);
        now += 3601;
    }
    assert_eq!(reports[0].failed, 1);
    assert_eq!(reports[1].failed, 1);
    assert_eq!(reports[2].dead, 1, "{:?}", reports[2]);
    assert_eq!(rx.requests("/hook").len(), 3);
    let alerts = &reports[2].alerts;
    assert_eq!(alerts.len(), 1);
    match &alerts[0] {
        EnforcerAlert::DeliveryFailed {
            channel,
            message_id,
            attempts,
            error,
        } => {
            assert_eq!(channel, "hook");
            assert_eq!(message_id, &msgs[0].message_id);
            assert_eq!(*attempts, 3);
            assert!(error.contains("503"), "{error}");
        }
        other => panic!("unexpected alert {other:?}"),
    }
    // The alert reached the ops channel in the same delivery run.
    let ops = rx.requests("/ops");
    assert_eq!(ops.len(), 1);
    let body = ops[0].json();
    assert_eq!(body["type"], "keysweep.alerts");
    assert_eq!(body["alerts"][0]["alert"], "delivery_failed");
    assert_eq!(body["alerts"][0]["message_id"], msgs[0].message_id.as_str());
    assert_eq!(with_db(&db, outbox::depth).unwrap().dead, 1);

    // If the ops channel is dead too, its delivery alert is dead-lettered without raising
    // another alert.
    rx.set_status("/ops", 500);
    let more = compose(
        &[notice(NoticeKind::Warning, bob_key())],
        &[],
        &cfg,
        "run-2",
        now,
    );
    with_db(&db, |c| outbox::enqueue(c, &more, now)).unwrap();
    let mut raised = 0;
    let mut dead = 0;
    for _ in 0..8 {
        let r = notifier.deliver_due(&db, &cfg, now).await.unwrap();
        raised += r.alerts.len();
        dead += r.dead;
        now += 3601;
    }
    assert_eq!(raised, 1, "only the notice's dead letter raises an alert");
    assert_eq!(dead, 2, "the notice and its delivery alert");
    assert_eq!(with_db(&db, outbox::depth).unwrap().pending, 0);
    assert_outbox_clean(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_reports_success_and_scrubbed_failure() {
    let rx = Receiver::start().await;
    let cfg = NotifySettings::from(&config(&http_only(&rx)));
    let notifier = Notifier::new().unwrap();
    notifier
        .send_test(cfg.channel("hook").unwrap(), NOW)
        .await
        .unwrap();
    let r = &rx.requests("/hook")[0];
    standardwebhooks::Webhook::new(&webhook_secret())
        .unwrap()
        .verify(&r.body, &r.headers)
        .unwrap();
    assert_eq!(r.json()["type"], "keysweep.test");
    notifier
        .send_test(cfg.channel("slack").unwrap(), NOW)
        .await
        .unwrap();
    assert_eq!(rx.requests(SLACK_PATH).len(), 1);

    rx.set_status(SLACK_PATH, 404);
    // The receiver echoes the path it refused: the token in it is no URL, and still scrubbed.
    rx.set_body(SLACK_PATH, &format!("Cannot POST {SLACK_PATH}"));
    let err = notifier
        .send_test(cfg.channel("slack").unwrap(), NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("404"), "{err}");
    assert_no_secret("send_test error", &err);
    // SMTP with nothing listening: an error naming the channel, without the password.
    let err = notifier
        .send_test(cfg.channel("sec-email").unwrap(), NOW)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("sec-email"), "{err}");
    assert_no_secret("send_test error", &err);
}
