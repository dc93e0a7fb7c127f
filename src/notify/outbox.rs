//! The outbox: every message is written to the state database before it is sent, and its
//! delivery state (attempts, next attempt, last error, sent/dead) lives there, so retries and
//! backoff survive restarts.
//!
//! Functions take a plain `&rusqlite::Connection` (the `outbox` table of
//! `state::schema::MIGRATIONS[0]`); the [`OutboxDb`] trait is how `deliver` reaches the
//! connection without knowing about `state::Store`. Nothing stored here may contain a secret:
//! payloads are rendered without secrets and every error text passes through `scrub` (URLs are
//! removed: a Slack webhook URL is a secret).

use rand::Rng;
use rusqlite::{Connection, OptionalExtension, params};

use crate::notify::{MessageKind, NotifyError, OutboxMessage, scrub};

/// First retry delay.
pub const BACKOFF_BASE_SECS: i64 = 30;
/// Longest retry delay.
pub const BACKOFF_MAX_SECS: i64 = 3600;
/// Longest error text kept in `last_error`.
const MAX_ERROR_LEN: usize = 500;

/// Access to the state database's connection for the delivery loop.
///
/// Minimal on purpose: `state::Store` implements it by locking its connection (or running a
/// transaction) and passing it to `f`. `f` never awaits, so no lock is held across a network
/// call. A `std::sync::Mutex<Connection>` implements it too (used by tests and tools).
pub trait OutboxDb {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T;
}

impl OutboxDb for std::sync::Mutex<Connection> {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-call; SQLite itself stays
        // consistent (each statement is atomic), so keep going.
        let guard = self.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }
}

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Row id.
    pub id: i64,
    pub message_id: String,
    pub channel: String,
    pub recipient: String,
    pub kind: MessageKind,
    pub payload: serde_json::Value,
    pub created_at: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub status: String,
    pub last_error: Option<String>,
    pub sent_at: Option<i64>,
}

/// Messages waiting (including those backing off) and dead-lettered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct OutboxDepth {
    pub pending: u64,
    pub dead: u64,
}

/// Writes messages as `pending`, due now. A message id already present (same sweep composed
/// twice) is ignored, so enqueueing is idempotent. Returns how many rows were inserted.
pub fn enqueue(
    conn: &Connection,
    messages: &[OutboxMessage],
    now: i64,
) -> Result<usize, NotifyError> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox
             (message_id, channel, recipient, kind, payload, created_at, attempts, next_attempt_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?6, 'pending')",
    )?;
    let mut inserted = 0;
    for m in messages {
        let payload = serde_json::to_string(&m.payload).map_err(|source| NotifyError::Payload {
            message_id: m.message_id.clone(),
            source,
        })?;
        inserted += stmt.execute(params![
            m.message_id,
            m.channel,
            m.recipient,
            m.kind.as_str(),
            payload,
            now
        ])?;
    }
    Ok(inserted)
}

/// Pending messages whose next attempt is due, oldest first.
pub fn due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<StoredMessage>, NotifyError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, message_id, channel, recipient, kind, payload, created_at, attempts,
                next_attempt_at, status, last_error, sent_at
           FROM outbox
          WHERE status = 'pending' AND next_attempt_at <= ?1
          ORDER BY next_attempt_at, id
          LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![now, limit], row_to_raw)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(from_raw(r?)?);
    }
    Ok(out)
}

/// One message by its stable id (for tests, `keysweep demo` and diagnostics).
pub fn get(conn: &Connection, message_id: &str) -> Result<Option<StoredMessage>, NotifyError> {
    let raw = conn
        .query_row(
            "SELECT id, message_id, channel, recipient, kind, payload, created_at, attempts,
                    next_attempt_at, status, last_error, sent_at
               FROM outbox WHERE message_id = ?1",
            params![message_id],
            row_to_raw,
        )
        .optional()?;
    raw.map(from_raw).transpose()
}

/// Every row, oldest first (diagnostics and tests).
pub fn all(conn: &Connection) -> Result<Vec<StoredMessage>, NotifyError> {
    let mut stmt = conn.prepare(
        "SELECT id, message_id, channel, recipient, kind, payload, created_at, attempts,
                next_attempt_at, status, last_error, sent_at
           FROM outbox ORDER BY id",
    )?;
    let rows = stmt.query_map([], row_to_raw)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(from_raw(r?)?);
    }
    Ok(out)
}

/// The receiver accepted the message.
pub fn mark_sent(conn: &Connection, id: i64, now: i64) -> Result<(), NotifyError> {
    conn.execute(
        "UPDATE outbox SET status = 'sent', sent_at = ?2, last_error = NULL WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

/// A failed attempt: counts it, keeps the (scrubbed) error and schedules the next attempt.
/// Returns the attempts made so far.
pub fn mark_failed(
    conn: &Connection,
    id: i64,
    error: &str,
    next_attempt_at: i64,
) -> Result<u32, NotifyError> {
    let error = clean_error(error);
    let attempts: i64 = conn.query_row(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3
          WHERE id = ?1 RETURNING attempts",
        params![id, error, next_attempt_at],
        |r| r.get(0),
    )?;
    Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
}

/// Gives up on a message after its last attempt (the caller raises the enforcer alert).
pub fn mark_dead(conn: &Connection, id: i64, error: &str) -> Result<(), NotifyError> {
    conn.execute(
        "UPDATE outbox SET status = 'dead', last_error = ?2 WHERE id = ?1",
        params![id, clean_error(error)],
    )?;
    Ok(())
}

/// Puts dead-lettered messages (of `channel`, or of every channel) back in the queue with a
/// fresh set of attempts, due at once: after the operator fixed the channel. Each keeps its
/// `message_id`, so a receiver that did get an earlier attempt can tell the repeat. Returns how
/// many were requeued.
pub fn requeue_dead(conn: &Connection, channel: Option<&str>) -> Result<usize, NotifyError> {
    Ok(conn.execute(
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = created_at
          WHERE status = 'dead' AND (?1 IS NULL OR channel = ?1)",
        params![channel],
    )?)
}

pub fn depth(conn: &Connection) -> Result<OutboxDepth, NotifyError> {
    let (pending, dead): (i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(status = 'pending'), 0), COALESCE(SUM(status = 'dead'), 0) FROM outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(OutboxDepth {
        pending: u64::try_from(pending).unwrap_or(0),
        dead: u64::try_from(dead).unwrap_or(0),
    })
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

type RawRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    String,
    Option<String>,
    Option<i64>,
);

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn from_raw(r: RawRow) -> Result<StoredMessage, NotifyError> {
    let (
        id,
        message_id,
        channel,
        recipient,
        kind,
        payload,
        created_at,
        attempts,
        next,
        status,
        last_error,
        sent_at,
    ) = r;
    let payload = serde_json::from_str(&payload).map_err(|source| NotifyError::Payload {
        message_id: message_id.clone(),
        source,
    })?;
    // An unknown kind (written by a newer version) is delivered like an alert digest.
    let kind = MessageKind::parse(&kind).unwrap_or(MessageKind::Alert);
    Ok(StoredMessage {
        id,
        message_id,
        channel,
        recipient,
        kind,
        payload,
        created_at,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: next,
        status,
        last_error,
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute_batch(crate::state::schema::MIGRATIONS[0])
            .unwrap();
        (dir, conn)
    }

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
        let (_d, conn) = open();
        assert_eq!(enqueue(&conn, &[msg("a"), msg("b")], 100).unwrap(), 2);
        assert_eq!(enqueue(&conn, &[msg("a")], 200).unwrap(), 0);
        let due_now = due(&conn, 100, 10).unwrap();
        assert_eq!(due_now.len(), 2);
        let a = &due_now[0];
        assert_eq!(a.message_id, "a");
        assert_eq!(a.payload, json!({"text": "hello"}));

        let attempts = mark_failed(
            &conn,
            a.id,
            "connect to https://hooks.slack.com/services/X/Y/Z failed",
            160,
        )
        .unwrap();
        assert_eq!(attempts, 1);
        mark_sent(&conn, due_now[1].id, 101).unwrap();
        assert!(due(&conn, 159, 10).unwrap().is_empty());
        let again = due(&conn, 160, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        let err = again[0].last_error.clone().unwrap();
        assert!(!err.contains("hooks.slack.com"), "{err}");
        assert_eq!(
            depth(&conn).unwrap(),
            OutboxDepth {
                pending: 1,
                dead: 0
            }
        );
        mark_dead(&conn, a.id, "gave up").unwrap();
        assert_eq!(
            depth(&conn).unwrap(),
            OutboxDepth {
                pending: 0,
                dead: 1
            }
        );
        assert!(due(&conn, 10_000, 10).unwrap().is_empty());
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
