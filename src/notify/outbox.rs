//! The outbox as `notify` sees it: channel-ready [`OutboxMessage`]s go in before anything is
//! sent and come back as [`StoredMessage`]s; failures back off with jitter; error texts are
//! scrubbed before they are kept.
//!
//! The SQL lives in `state::outbox`; this file converts between notify's types and the state
//! rows and must never run SQL itself. Functions take a plain `&rusqlite::Connection` (a
//! `&Transaction` derefs to one), so a sweep enqueues inside its own transaction. Nothing stored
//! may contain a secret: payloads are rendered without secrets and every error text passes
//! through `scrub` (URLs are removed: a Slack webhook URL is a secret).

use rand::Rng;
use rusqlite::Connection;

use crate::notify::{MessageKind, OutboxMessage, scrub};
use crate::state::StateError;
use crate::state::outbox::{self as rows, NewOutboxRow, OutboxRow, Payload};

pub use crate::state::outbox::{OutboxDb, OutboxDepth};

/// First retry delay.
pub const BACKOFF_BASE_SECS: i64 = 30;
/// Longest retry delay.
pub const BACKOFF_MAX_SECS: i64 = 3600;
/// Longest error text kept in `last_error`.
const MAX_ERROR_LEN: usize = 500;

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Row id.
    pub id: i64,
    pub message_id: String,
    pub channel: String,
    pub recipient: String,
    pub kind: MessageKind,
    /// `Null` when the stored payload cannot be read (see `unreadable`).
    pub payload: serde_json::Value,
    /// Why the stored payload cannot be read (a damaged row): delivery dead-letters the message
    /// at once, with its alert, and goes on with the others.
    pub unreadable: Option<String>,
    pub created_at: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub status: String,
    pub last_error: Option<String>,
    pub sent_at: Option<i64>,
}

/// Writes messages as `pending`, due now. A message id already present (same sweep composed
/// twice) is ignored, so enqueueing is idempotent. Returns how many rows were inserted. For
/// the few messages made outside a sweep (a dead letter's alert); a sweep packs its messages
/// on the thread that composed them (`compose::Composed`) and queues them with
/// [`enqueue_packed`].
pub fn enqueue(
    conn: &Connection,
    messages: &[OutboxMessage],
    now: i64,
) -> Result<usize, StateError> {
    let packed = (messages.iter().cloned())
        .map(pack)
        .collect::<Result<Vec<_>, _>>()?;
    enqueue_packed(conn, &packed, now)
}

/// A message whose payload is in its stored form already ([`pack`]): made by the thread that
/// composed it, so the transaction that queues it only writes it.
#[derive(Debug)]
pub struct PackedMessage {
    message_id: String,
    channel: String,
    recipient: String,
    kind: MessageKind,
    payload: Payload,
}

/// Serialises (and, if large, packs) `m`'s payload: see `state::outbox::Payload`.
pub fn pack(m: OutboxMessage) -> Result<PackedMessage, StateError> {
    Ok(PackedMessage {
        payload: payload(&m.payload)?,
        message_id: m.message_id,
        channel: m.channel,
        recipient: m.recipient,
        kind: m.kind,
    })
}

/// [`enqueue`] for packed messages.
pub fn enqueue_packed(
    conn: &Connection,
    messages: &[PackedMessage],
    now: i64,
) -> Result<usize, StateError> {
    let rows = messages.iter().map(|m| NewOutboxRow {
        message_id: &m.message_id,
        channel: &m.channel,
        recipient: &m.recipient,
        kind: m.kind.as_str(),
        payload: &m.payload,
    });
    rows::insert_all(conn, rows, now)
}

fn payload(value: &serde_json::Value) -> Result<Payload, StateError> {
    let json = serde_json::to_string(value).map_err(|source| StateError::Encode {
        what: "outbox payload",
        source,
    })?;
    Ok(Payload::new(json))
}

/// Pending messages whose next attempt is due, oldest first.
pub fn due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<StoredMessage>, StateError> {
    Ok(rows::due(conn, now, limit)?
        .into_iter()
        .map(from_row)
        .collect())
}

/// Claims the oldest due message for one delivery attempt, until `lease_until`
/// (`state::outbox::claim_due`): two deliverers never send the same message at once.
pub fn claim_due(
    conn: &Connection,
    now: i64,
    lease_until: i64,
) -> Result<Option<StoredMessage>, StateError> {
    Ok(rows::claim_due(conn, now, lease_until)?.map(from_row))
}

/// One message by its stable id (for tests, `keysweep demo` and diagnostics).
pub fn get(conn: &Connection, message_id: &str) -> Result<Option<StoredMessage>, StateError> {
    Ok(rows::get(conn, message_id)?.map(from_row))
}

/// Every message, oldest first (diagnostics and tests).
pub fn all(conn: &Connection) -> Result<Vec<StoredMessage>, StateError> {
    Ok(rows::all(conn)?.into_iter().map(from_row).collect())
}

/// The receiver accepted the message.
pub fn mark_sent(conn: &Connection, id: i64, now: i64) -> Result<(), StateError> {
    rows::mark_sent(conn, id, now)
}

/// A failed attempt: counts it, keeps the (scrubbed) error and schedules the next attempt.
/// Returns the attempts made so far.
pub fn mark_failed(
    conn: &Connection,
    id: i64,
    error: &str,
    next_attempt_at: i64,
) -> Result<u32, StateError> {
    rows::mark_failed(conn, id, &clean_error(error), next_attempt_at)
}

/// Hands a claimed message back untried, due at `until`, saying `why` in its last error: no
/// attempt is counted. False when it is no longer pending.
pub fn postpone(conn: &Connection, id: i64, why: &str, until: i64) -> Result<bool, StateError> {
    rows::postpone(conn, id, &clean_error(why), until)
}

/// Gives up on a message after its last attempt and queues its alert's messages, in one
/// transaction: a crash between the two never leaves a dead letter whose alert is lost.
/// Returns false (and writes nothing) when the message is no longer pending.
pub fn dead_letter(
    conn: &Connection,
    id: i64,
    error: &str,
    alert: &[OutboxMessage],
    now: i64,
) -> Result<bool, StateError> {
    let error = clean_error(error);
    crate::state::in_tx(conn, |c| {
        if rows::mark_failed(c, id, &error, now)? == 0 {
            return Ok(false);
        }
        rows::mark_dead(c, id, &error)?;
        enqueue(c, alert, now)?;
        Ok(true)
    })
}

/// A copy of a message for the recipients a relay refused for now ([`sent_in_part`]).
#[derive(Debug)]
pub struct Deferred {
    pub message: OutboxMessage,
    /// Attempts made so far: the copy keeps counting towards `max_attempts`.
    pub attempts: u32,
    pub error: String,
    pub next_attempt_at: i64,
}

/// The receiver took the message for some of its recipients (e-mail): marks it sent, and
/// queues the copy for those refused for now and the alert's messages, in one transaction, so
/// a crash never leaves a recipient without their copy. Returns false (and writes nothing) when
/// the message is no longer pending.
pub fn sent_in_part(
    conn: &Connection,
    id: i64,
    rest: Option<Deferred>,
    alert: &[OutboxMessage],
    now: i64,
) -> Result<bool, StateError> {
    let rest = rest
        .map(|d| Ok::<_, StateError>((pack(d.message)?, d.attempts, d.error, d.next_attempt_at)));
    let rest = rest.transpose()?;
    crate::state::in_tx(conn, |c| {
        if !rows::mark_sent_if_pending(c, id, now)? {
            return Ok(false);
        }
        if let Some((m, attempts, error, next)) = &rest {
            let row = NewOutboxRow {
                message_id: &m.message_id,
                channel: &m.channel,
                recipient: &m.recipient,
                kind: m.kind.as_str(),
                payload: &m.payload,
            };
            let written =
                rows::insert_deferred(c, &row, *attempts, &clean_error(error), *next, now)?;
            if written == 0 {
                // No path reuses a copy's id; if one ever did, say so rather than lose them.
                tracing::error!(message_id = %m.message_id, channel = %m.channel, "the copy for recipients refused for now was not queued: its id is taken");
            }
        }
        enqueue(c, alert, now)?;
        Ok(true)
    })
}

/// Gives up on a message after its last attempt (the caller raises the enforcer alert).
pub fn mark_dead(conn: &Connection, id: i64, error: &str) -> Result<(), StateError> {
    rows::mark_dead(conn, id, &clean_error(error))
}

/// Puts dead-lettered messages (of `channel`, or of every channel) back in the queue with a
/// fresh set of attempts, due at once: after the operator fixed the channel. Each keeps its
/// `message_id`, so a receiver that did get an earlier attempt can tell the repeat. Returns how
/// many were requeued.
pub fn requeue_dead(conn: &Connection, channel: Option<&str>) -> Result<usize, StateError> {
    rows::requeue_dead(conn, channel)
}

pub fn depth(conn: &Connection) -> Result<OutboxDepth, StateError> {
    rows::depth(conn)
}

/// Delay before the next attempt after `attempts` failures: 30 s doubling up to 1 h, with
/// "equal jitter" (half fixed, half random) so many messages failing together spread out.
pub fn backoff_secs(attempts: u32, rng: &mut impl Rng) -> i64 {
    let exp = attempts.saturating_sub(1).min(20);
    let delay = BACKOFF_BASE_SECS
        .saturating_mul(1i64 << exp)
        .min(BACKOFF_MAX_SECS);
    let half = delay / 2;
    half + rng.random_range(0..=delay - half)
}

fn clean_error(error: &str) -> String {
    let s = scrub(error, &[]);
    if s.chars().count() > MAX_ERROR_LEN {
        s.chars().take(MAX_ERROR_LEN).collect()
    } else {
        s
    }
}

fn from_row(r: OutboxRow) -> StoredMessage {
    let read = r.payload.and_then(|text| {
        serde_json::from_str(&text).map_err(|e| format!("outbox payload: not JSON: {e}"))
    });
    let (payload, unreadable) = match read {
        Ok(payload) => (payload, None),
        Err(why) => (serde_json::Value::Null, Some(why)),
    };
    // An unknown kind (written by a newer version) is delivered like an alert digest.
    let kind = MessageKind::parse(&r.kind).unwrap_or(MessageKind::Alert);
    StoredMessage {
        id: r.id,
        message_id: r.message_id,
        channel: r.channel,
        recipient: r.recipient,
        kind,
        payload,
        unreadable,
        created_at: r.created_at,
        attempts: r.attempts,
        next_attempt_at: r.next_attempt_at,
        status: r.status,
        last_error: r.last_error,
        sent_at: r.sent_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(id: &str) -> OutboxMessage {
        OutboxMessage {
            message_id: id.to_string(),
            channel: "ops".into(),
            recipient: "channel".into(),
            kind: MessageKind::Warning,
            payload: json!({"text": "hello"}),
        }
    }

    #[test]
    fn enqueue_is_idempotent_and_due_respects_backoff() {
        let store = crate::state::Store::open_in_memory().unwrap();
        store.with(|conn| {
            assert_eq!(enqueue(conn, &[msg("a"), msg("b")], 100).unwrap(), 2);
            assert_eq!(enqueue(conn, &[msg("a")], 200).unwrap(), 0);
            let due_now = due(conn, 100, 10).unwrap();
            assert_eq!(due_now.len(), 2);
            let a = &due_now[0];
            assert_eq!(a.message_id, "a");
            assert_eq!(a.payload, json!({"text": "hello"}));

            let attempts = mark_failed(
                conn,
                a.id,
                "connect to https://hooks.slack.com/services/X/Y/Z failed",
                160,
            )
            .unwrap();
            assert_eq!(attempts, 1);
            mark_sent(conn, due_now[1].id, 101).unwrap();
            assert!(due(conn, 159, 10).unwrap().is_empty());
            let again = due(conn, 160, 10).unwrap();
            assert_eq!(again.len(), 1);
            assert_eq!(again[0].attempts, 1);
            let err = again[0].last_error.clone().unwrap();
            assert!(!err.contains("hooks.slack.com"), "{err}");
            assert_eq!(
                depth(conn).unwrap(),
                OutboxDepth {
                    pending: 1,
                    dead: 0
                }
            );
            mark_dead(conn, a.id, "gave up").unwrap();
            assert_eq!(
                depth(conn).unwrap(),
                OutboxDepth {
                    pending: 0,
                    dead: 1
                }
            );
            assert!(due(conn, 10_000, 10).unwrap().is_empty());
        });
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps_at_an_hour() {
        let mut rng = rand::rng();
        for attempts in 1..30u32 {
            let nominal = (30i64 << (attempts - 1).min(20)).min(3600);
            for _ in 0..20 {
                let d = backoff_secs(attempts, &mut rng);
                assert!(d >= nominal / 2 && d <= nominal, "attempt {attempts}: {d}");
            }
        }
    }
}
