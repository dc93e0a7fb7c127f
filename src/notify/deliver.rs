//! Delivery: sends what the outbox says is due and records each outcome.
//!
//! At-least-once: a message is marked sent only after the receiver accepted it, so a crash in
//! between re-sends it later with the same id (`Message-ID`, `webhook-id`, `dedup_key`), which
//! receivers use to de-duplicate. Failures back off (30 s doubling to 1 h, jittered; stored in
//! the database, so it holds across restarts). After `max_attempts` the message is
//! dead-lettered and an `EnforcerAlert::DeliveryFailed` is enqueued to `ops_channels` — except
//! for messages that are themselves delivery alerts, so a dead ops channel cannot loop.
//!
//! A channel that fails in a way that says the channel itself is unwell (no connection, a
//! timeout, a 429, 502, 503 or 504, an SMTP 421; `SendFailure::channel_wide`) is tried once
//! per call: its other due messages wait, untried and with
//! no attempt counted, until the failed one's next attempt. A dead receiver then costs one
//! timeout per call, not one per message (40 digests to a blackholed Slack held a sweep for 13
//! minutes), and its messages are not spent on an outage.
//!
//! The database is reached through [`OutboxDb`]; no lock is held across a network call.
//! Secrets are read from the channel config only by the senders and scrubbed from every error.

use std::collections::HashMap;

use secrecy::ExposeSecret;
use serde_json::Value;

use tokio_util::sync::CancellationToken;

use crate::config::{ChannelConfig, ChannelKind};
use crate::metrics::{Metrics, NotificationOutcome};
use crate::notify::alert::EnforcerAlert;
use crate::notify::digest::Digest;
pub use crate::notify::failure::{SendFailure, Undelivered};
use crate::notify::outbox::{self, OutboxDb, StoredMessage};
use crate::notify::route::{self, CHANNEL_RECIPIENT};
use crate::notify::settings::NotifySettings;
use crate::notify::{
    MessageKind, NotifyError, OutboxMessage, email, http, pagerduty, scrub, slack, webhook,
};

/// How long a message claimed for one attempt is kept from other deliverers: far longer than
/// any send's timeouts, and the time after which a message whose deliverer died is due again.
const CLAIM_LEASE_SECS: i64 = 600;
/// Upper bound of messages handled by one `deliver_due` call (guards against any loop).
const MAX_PER_CALL: usize = 10_000;

/// What one `deliver_due` call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryReport {
    /// Accepted by the receiver.
    pub sent: u32,
    /// Failed and scheduled for another attempt.
    pub failed: u32,
    /// Failed for the last time and dead-lettered.
    pub dead: u32,
    /// Not tried: their channel had just failed in this call, so they wait for its next
    /// attempt (no attempt counted).
    pub postponed: u32,
    /// The `DeliveryFailed` alerts raised (and enqueued to `ops_channels`) for dead letters,
    /// and the `RecipientsRefused` ones for e-mails some recipients did not get.
    pub alerts: Vec<EnforcerAlert>,
}

impl DeliveryReport {
    /// Adds a later delivery's figures to this one (one sweep delivers more than once).
    pub fn absorb(&mut self, later: DeliveryReport) {
        self.sent += later.sent;
        self.failed += later.failed;
        self.dead += later.dead;
        self.postponed += later.postponed;
        self.alerts.extend(later.alerts);
    }
}

/// Holds the HTTP client (one per process: it pools connections) and, when given, the metrics
/// that count deliveries per channel and outcome.
#[derive(Debug, Clone)]
pub struct Notifier {
    http: reqwest::Client,
    metrics: Option<Metrics>,
}

impl Notifier {
    pub fn new() -> Result<Notifier, NotifyError> {
        Ok(Notifier {
            http: http::client()?,
            metrics: None,
        })
    }

    /// Counts every delivery outcome in `keysweep_notifications_total{channel, outcome}`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Notifier {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, channel: &str, outcome: NotificationOutcome) {
        if let Some(m) = &self.metrics {
            m.notification(channel, outcome);
        }
    }

    /// Sends one rendered payload to a channel. Used by delivery and by `send_test`. `Ok` with
    /// the recipients it did not reach when the receiver took it for the others (e-mail).
    pub async fn send(
        &self,
        ch: &ChannelConfig,
        message_id: &str,
        payload: &Value,
    ) -> Result<Undelivered, SendFailure> {
        let all = Undelivered::default;
        let result = match &ch.kind {
            ChannelKind::Email(e) => email::send(e, message_id, payload).await,
            ChannelKind::Slack(s) => (slack::send(&self.http, s, payload).await).map(|()| all()),
            ChannelKind::PagerDuty(p) => {
                (pagerduty::send(&self.http, p, payload).await).map(|()| all())
            }
            ChannelKind::Webhook(w) => {
                (webhook::send(&self.http, w, message_id, payload).await).map(|()| all())
            }
        };
        // Belt and braces: every sender scrubs its own secrets; scrub all of them once more.
        let secrets = channel_secrets(ch);
        result
            .map(|u| u.scrub_with(|why| scrub(why, &secrets)))
            .map_err(|f| SendFailure {
                error: scrub(&f.error, &secrets),
                ..f
            })
    }

    /// Sends every due message (including ones enqueued while running, such as the alerts
    /// for dead letters) and records the outcomes.
    pub async fn deliver_due<D: OutboxDb + Sync>(
        &self,
        db: &D,
        settings: &NotifySettings,
        now: i64,
    ) -> Result<DeliveryReport, NotifyError> {
        self.deliver_due_until(db, settings, now, &CancellationToken::new())
            .await
    }

    /// [`Notifier::deliver_due`] that claims no further message once `stop` is cancelled; the
    /// send under way finishes and its outcome is recorded.
    pub async fn deliver_due_until<D: OutboxDb + Sync>(
        &self,
        db: &D,
        settings: &NotifySettings,
        now: i64,
        stop: &CancellationToken,
    ) -> Result<DeliveryReport, NotifyError> {
        let mut report = DeliveryReport::default();
        let mut handled = 0usize;
        // Channels found unwell in this call, with when their messages are next due.
        let mut unwell: HashMap<String, (i64, String)> = HashMap::new();
        // Failures that may be about one message (a 500): a second one on the same channel in
        // this call says it is the channel.
        let mut suspect: HashMap<String, u32> = HashMap::new();
        let started = std::time::Instant::now();
        // One message at a time, each claimed as it is picked (`outbox::claim_due`): another
        // organisation's sweep delivering at the same moment (the daemon sweeps organisations
        // side by side), the shutdown flush or another process never sends it a second time.
        while handled < MAX_PER_CALL && !stop.is_cancelled() {
            // From the later of the caller's clock and the wall clock: a `run --once --now` in
            // the past must not claim for less than a lease of real time.
            let lease = now.max(chrono::Utc::now().timestamp()) + CLAIM_LEASE_SECS;
            let Some(m) = db.with(|c| outbox::claim_due(c, now, lease))? else {
                break;
            };
            handled += 1;
            if let (Some((until, why)), None) = (unwell.get(&m.channel), &m.unreadable) {
                if db.with(|c| outbox::postpone(c, m.id, why, *until))? {
                    report.postponed += 1;
                    self.count(&m.channel, NotificationOutcome::Postponed);
                }
                continue;
            }
            let outcome = match (settings.channel(&m.channel), &m.unreadable) {
                (_, Some(why)) => Err(SendFailure {
                    error: format!("the stored message cannot be read: {why}"),
                    retryable: false,
                    channel_wide: false,
                    about_recipients: false,
                }),
                (Some(ch), None) => self.send(ch, &m.message_id, &m.payload).await,
                (None, None) => Err(SendFailure {
                    error: format!("channel {:?} is no longer configured", m.channel),
                    retryable: false,
                    channel_wide: false,
                    about_recipients: false,
                }),
            };
            match outcome {
                Ok(u) if !u.is_empty() => {
                    self.sent_in_part(db, settings, &m, &u, now, &mut report)?
                }
                Ok(_) => {
                    // The channel works: earlier failures were about their messages.
                    suspect.remove(&m.channel);
                    db.with(|c| outbox::mark_sent(c, m.id, now))?;
                    tracing::info!(message_id = %m.message_id, channel = %m.channel, kind = m.kind.as_str(), "notification delivered");
                    report.sent += 1;
                    self.count(&m.channel, NotificationOutcome::Sent);
                }
                Err(f) => {
                    let next = self.failed(db, settings, &m, &f, now, &mut report)?;
                    let seen = suspect.entry(m.channel.clone()).or_default();
                    *seen += u32::from(f.retryable && !f.channel_wide && !f.about_recipients);
                    let suspected = !f.channel_wide && *seen >= 2;
                    if (f.channel_wide || suspected) && settings.channel(&m.channel).is_some() {
                        // On the call's clock, plus the time this call has taken so far (a
                        // timeout or two): otherwise the wait could be over at the next tick.
                        // Tripped on suspicion, the others wait the shortest backoff, not the
                        // failing message's own (an hour once it has failed often).
                        let first = || now + outbox::backoff_secs(1, &mut rand::rng());
                        let until = next.filter(|_| !suspected).unwrap_or_else(first)
                            + i64::try_from(started.elapsed().as_secs()).unwrap_or(0);
                        tracing::warn!(channel = %m.channel, next_attempt_at = until, "channel failing; its other due messages wait for its next attempt, untried");
                        let why =
                            format!("not tried: the channel failed just before ({})", f.error);
                        unwell.insert(m.channel.clone(), (until, why));
                    }
                }
            }
        }
        Ok(report)
    }

    /// Records a failed attempt: another try later with backoff (`Some` of its time), or, after
    /// the last attempt (or for a channel no longer configured, or a stored message that cannot
    /// be read), a dead letter and its alert (`None`).
    fn failed<D: OutboxDb>(
        &self,
        db: &D,
        settings: &NotifySettings,
        m: &StoredMessage,
        f: &SendFailure,
        now: i64,
        report: &mut DeliveryReport,
    ) -> Result<Option<i64>, NotifyError> {
        let attempts = m.attempts + 1;
        let max_attempts = settings.notifications.max_attempts.max(1);
        let unknown_channel = settings.channel(&m.channel).is_none();
        if attempts < max_attempts && !unknown_channel && m.unreadable.is_none() {
            let next = now + outbox::backoff_secs(attempts, &mut rand::rng());
            db.with(|c| outbox::mark_failed(c, m.id, &f.error, next))?;
            tracing::warn!(message_id = %m.message_id, channel = %m.channel, attempts, retryable = f.retryable, next_attempt_at = next, error = %f.error, "notification failed; will retry");
            report.failed += 1;
            self.count(&m.channel, NotificationOutcome::Failed);
            return Ok(Some(next));
        }
        // One run id per death: a message requeued (`notify retry-dead`) and dead again
        // raises its alert again, while composing the same death twice stays one message.
        let (alert, msgs) = alert_about(m, "dead-letter", settings, now, || {
            EnforcerAlert::DeliveryFailed {
                channel: m.channel.clone(),
                message_id: m.message_id.clone(),
                attempts,
                error: f.error.clone(),
            }
        });
        // The dead letter and its alert are written together; a message another deliverer
        // settled meanwhile is left as it is.
        if !db.with(|c| outbox::dead_letter(c, m.id, &f.error, &msgs, now))? {
            return Ok(None);
        }
        tracing::error!(message_id = %m.message_id, channel = %m.channel, attempts, error = %f.error, "notification dead-lettered");
        report.dead += 1;
        self.count(&m.channel, NotificationOutcome::Dead);
        report.alerts.extend(alert);
        Ok(None)
    }

    /// The relay took the message for some recipients only: it is sent. Those refused for now
    /// get a copy of their own, tried again after the backoff and counting the attempts made;
    /// those refused for good, and those refused for now at the last attempt, are named in a
    /// `RecipientsRefused` alert (none for a delivery alert: no loop).
    fn sent_in_part<D: OutboxDb>(
        &self,
        db: &D,
        settings: &NotifySettings,
        m: &StoredMessage,
        u: &Undelivered,
        now: i64,
        report: &mut DeliveryReport,
    ) -> Result<(), NotifyError> {
        let attempts = m.attempts + 1;
        let last = attempts >= settings.notifications.max_attempts.max(1);
        let mut gone: Vec<(String, String)> = u.refused.clone();
        let mut rest = None;
        if !u.deferred.is_empty() && last {
            let at_last = |(to, why): &(String, String)| {
                (to.clone(), format!("{why} (for now, at the last attempt)"))
            };
            gone.extend(u.deferred.iter().map(at_last));
        } else if !u.deferred.is_empty() {
            let to: Vec<&str> = u.deferred.iter().map(|(to, _)| to.as_str()).collect();
            let mut payload = m.payload.clone();
            payload["to"] = Value::from(to.clone());
            rest = Some(outbox::Deferred {
                message: OutboxMessage {
                    message_id: format!("{}/deferred-{attempts}", m.message_id),
                    channel: m.channel.clone(),
                    recipient: to.join(", "),
                    kind: m.kind,
                    payload,
                },
                attempts,
                error: each_with_reason(&u.deferred),
                next_attempt_at: now + outbox::backoff_secs(attempts, &mut rand::rng()),
            });
        }
        let given_up = each_with_reason(&gone);
        let (alert, msgs) = if gone.is_empty() {
            (None, Vec::new())
        } else {
            alert_about(m, "refused", settings, now, || {
                EnforcerAlert::RecipientsRefused {
                    channel: m.channel.clone(),
                    message_id: m.message_id.clone(),
                    recipients: gone.iter().map(|(to, _)| to.clone()).collect(),
                    error: given_up.clone(),
                }
            })
        };
        if !db.with(|c| outbox::sent_in_part(c, m.id, rest, &msgs, now))? {
            return Ok(());
        }
        tracing::warn!(message_id = %m.message_id, channel = %m.channel, given_up = %crate::text::log_field(&given_up), deferred = u.deferred.len() * usize::from(!last), "notification delivered to some recipients only");
        report.sent += 1;
        self.count(&m.channel, NotificationOutcome::Sent);
        report.alerts.extend(alert);
        Ok(())
    }

    /// `keysweep notify test --channel NAME`: renders a test message for the channel and sends
    /// it right away (not through the outbox). The error names the channel and is scrubbed.
    pub async fn send_test(&self, ch: &ChannelConfig, now: i64) -> Result<(), NotifyError> {
        let run_id = format!("test-{now}");
        let digest = Digest::test(&run_id, now);
        let (recipient, to) = match &ch.kind {
            ChannelKind::Email(e) => {
                if e.to.is_empty() {
                    return Err(NotifyError::Channel {
                        channel: ch.name.clone(),
                        message: "no `to` address to send a test message to".to_string(),
                    });
                }
                (e.to.join(", "), e.to.clone())
            }
            _ => (CHANNEL_RECIPIENT.to_string(), Vec::new()),
        };
        for m in route::render_digest(ch, &recipient, &to, &digest, &run_id) {
            let sent = self.send(ch, &m.message_id, &m.payload).await;
            let error = match sent {
                Ok(u) if u.is_empty() => continue,
                Ok(u) => {
                    let refused = (u.refused.iter()).map(|(to, why)| format!("{to} ({why})"));
                    let deferred =
                        (u.deferred.iter()).map(|(to, why)| format!("{to} (for now: {why})"));
                    let all = refused.chain(deferred).collect::<Vec<_>>().join("; ");
                    crate::text::terminal(&format!(
                        "the others got it, but the relay refused {all}"
                    ))
                }
                Err(f) => f.error,
            };
            return Err(NotifyError::Send {
                channel: ch.name.clone(),
                error,
            });
        }
        Ok(())
    }
}

/// The alert `raise` makes about message `m`, with its messages for the ops channels, composed
/// under the run id `{what}/{message id}/{now}` (one per event). None for a message that is
/// itself a delivery alert: a failing ops channel never raises another (no loop).
fn alert_about(
    m: &StoredMessage,
    what: &str,
    settings: &NotifySettings,
    now: i64,
    raise: impl FnOnce() -> EnforcerAlert,
) -> (Option<EnforcerAlert>, Vec<OutboxMessage>) {
    if m.kind == MessageKind::DeliveryAlert {
        return (None, Vec::new());
    }
    let alert = raise();
    let run_id = format!("{what}/{}/{now}", m.message_id);
    let msgs = route::compose(&[], std::slice::from_ref(&alert), settings, &run_id, now);
    (Some(alert), msgs)
}

/// `to: why; to: why`: recipients with the relay's answers, as the alert and the log say them.
fn each_with_reason(pairs: &[(String, String)]) -> String {
    let each = pairs.iter().map(|(to, why)| format!("{to}: {why}"));
    each.collect::<Vec<_>>().join("; ")
}

/// [`Notifier::deliver_due`] with a fresh client (convenience for one-shot callers).
pub async fn deliver_due<D: OutboxDb + Sync>(
    db: &D,
    settings: &NotifySettings,
    now: i64,
) -> Result<DeliveryReport, NotifyError> {
    Notifier::new()?.deliver_due(db, settings, now).await
}

/// [`Notifier::send_test`] with a fresh client.
pub async fn send_test(channel: &ChannelConfig, now: i64) -> Result<(), NotifyError> {
    Notifier::new()?.send_test(channel, now).await
}

fn channel_secrets(ch: &ChannelConfig) -> Vec<&str> {
    match &ch.kind {
        ChannelKind::Email(e) => e.smtp_password.iter().map(|p| p.expose_secret()).collect(),
        ChannelKind::Slack(s) => super::slack::secrets(s.webhook_url.expose_secret()),
        ChannelKind::PagerDuty(p) => vec![p.routing_key.expose_secret()],
        ChannelKind::Webhook(w) => vec![w.secret.expose_secret()],
    }
}
