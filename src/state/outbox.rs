//! The outbox table: every message is written here before it is sent, with its delivery state
//! (attempts, next attempt, last error, sent/dead), so retries and backoff survive restarts.
//!
//! This file holds the outbox's SQL and how a payload is stored, and nothing else: rows go in
//! and out as plain strings and numbers, and payloads as [`Payload`] (in) and JSON text (out). What a message is (its kind, its JSON payload), when to
//! retry and how to scrub an error belong to `notify`, which converts to and from these rows;
//! this module must never name a `notify` type. Nothing stored here may contain a secret: the
//! caller hands in payloads rendered without secrets and error texts already scrubbed.
//!
//! A large payload (a first sweep's digest part: ~450 KB of text and HTML for 500 keys) is
//! stored lz4-compressed, as a BLOB in the same column ([`Payload`]): a first sweep's commit
//! then writes ~1 MB of messages instead of ~9 MB at 100k keys (issue 15). Reading gives the
//! JSON text back either way; a packed value that does not unpack is an error, never a
//! truncated message.

use std::sync::Mutex;

use rusqlite::types::{FromSqlError, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

use crate::state::batch::{self, MultiInsert};
use crate::state::{StateError, Store, in_tx};

/// Access to the state database's connection for the delivery loop.
///
/// Minimal on purpose: [`Store`] implements it by locking its connection and passing it to `f`.
/// `f` never awaits, so no lock is held across a network call. A `Mutex<Connection>`
/// implements it too (used by tests and tools).
pub trait OutboxDb {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T;
}

impl OutboxDb for Mutex<Connection> {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-call; SQLite itself stays
        // consistent (each statement is atomic), so keep going.
        let guard = self.lock().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }
}

/// The outbox lives in the state database; delivery borrows the connection through this.
impl OutboxDb for Store {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        let conn = self.lock();
        f(&conn)
    }
}

/// Payloads of this many bytes of JSON or more are stored packed. Alerts and a steady sweep's
/// notices stay below it, and stay readable with `sqlite3`.
const PACK_FROM: usize = 16 * 1024;
/// What a packed payload starts with, before the JSON's length (u32, little-endian) and the lz4
/// block. A BLOB without it is not ours.
const PACKED_MAGIC: &[u8; 4] = b"ksz\x01";
/// The largest JSON a packed payload may claim to hold. A digest part is under 1 MB; a
/// corrupted length must not make the delivery loop allocate gigabytes.
const MAX_UNPACKED: usize = 64 << 20;

/// A message's JSON payload, in the form it is stored in (see the module docs). Packing is
/// done by whoever makes the payload (a sweep's compose thread), so a transaction only
/// writes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Stored);

#[derive(Clone, PartialEq, Eq)]
enum Stored {
    Text(String),
    Packed(Vec<u8>),
}

impl Payload {
    /// Stores `json` as it is, or packed from [`PACK_FROM`] bytes on.
    pub fn new(json: String) -> Payload {
        if json.len() < PACK_FROM || json.len() > MAX_UNPACKED {
            return Payload(Stored::Text(json));
        }
        let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
        let block = lz4_flex::block::compress(json.as_bytes());
        let mut packed = Vec::with_capacity(PACKED_MAGIC.len() + 4 + block.len());
        packed.extend_from_slice(PACKED_MAGIC);
        packed.extend_from_slice(&len.to_le_bytes());
        packed.extend_from_slice(&block);
        Payload(Stored::Packed(packed))
    }

    /// Bytes written to the database.
    pub fn stored_len(&self) -> usize {
        match &self.0 {
            Stored::Text(t) => t.len(),
            Stored::Packed(p) => p.len(),
        }
    }

    fn value(&self) -> ToSqlOutput<'_> {
        match &self.0 {
            Stored::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Stored::Packed(p) => ToSqlOutput::Borrowed(ValueRef::Blob(p)),
        }
    }
}

/// Only the size: a payload is a message for someone, and `Debug` ends up in logs.
impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Stored::Text(t) => write!(f, "Payload({} bytes of JSON)", t.len()),
            Stored::Packed(p) => write!(f, "Payload({} bytes packed)", p.len()),
        }
    }
}

/// The JSON text of a stored payload: a TEXT value as it is, a BLOB unpacked.
fn unpack(value: ValueRef<'_>) -> Result<String, FromSqlError> {
    let bad = |why: &str| FromSqlError::Other(format!("outbox payload: {why}").into());
    let bytes = match value {
        ValueRef::Text(t) => return String::from_utf8(t.to_vec()).map_err(|_| bad("not UTF-8")),
        ValueRef::Blob(b) => b,
        _ => return Err(FromSqlError::InvalidType),
    };
    let rest = bytes
        .strip_prefix(PACKED_MAGIC.as_slice())
        .ok_or_else(|| bad("a BLOB that keysweep did not pack"))?;
    let (len, block) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("packed payload cut short"))?;
    let len = usize::try_from(u32::from_le_bytes(*len)).unwrap_or(usize::MAX);
    if len > MAX_UNPACKED {
        return Err(bad("packed payload claims more than 64 MiB"));
    }
    let mut json = vec![0; len];
    match lz4_flex::block::decompress_into(block, &mut json) {
        Ok(n) if n == len => {}
        _ => return Err(bad("packed payload does not unpack to its length")),
    }
    String::from_utf8(json).map_err(|_| bad("unpacked payload is not UTF-8"))
}

/// A message to insert.
#[derive(Debug, Clone, Copy)]
pub struct NewOutboxRow<'a> {
    pub message_id: &'a str,
    pub channel: &'a str,
    pub recipient: &'a str,
    pub kind: &'a str,
    pub payload: &'a Payload,
}

/// One row of the outbox, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub message_id: String,
    pub channel: String,
    pub recipient: String,
    pub kind: String,
    /// The JSON text (unpacked), or why the stored value could not be read (a damaged packed
    /// row): such a row is returned, not an error, so one damaged row cannot stop the others.
    pub payload: Result<String, String>,
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

const COLUMNS: &str = "id, message_id, channel, recipient, kind, payload, created_at, attempts, \
                       next_attempt_at, status, last_error, sent_at";

/// Writes a message as `pending`, due at `now`. A message id already present is ignored, so
/// inserting is idempotent. Returns how many rows were inserted (0 or 1). The sweep writes
/// through [`insert_all`]; this one-row form is the reference the tests hold it to.
#[cfg(test)]
pub fn insert(conn: &Connection, row: &NewOutboxRow<'_>, now: i64) -> Result<usize, StateError> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR IGNORE INTO outbox
             (message_id, channel, recipient, kind, payload, created_at, attempts, next_attempt_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?6, 'pending')",
    )?;
    Ok(stmt.execute(params![
        row.message_id,
        row.channel,
        row.recipient,
        row.kind,
        row.payload.value(),
        now
    ])?)
}

/// Like [`insert`] for many rows, in multi-row statements inside one transaction (the
/// caller's, if one is open): the same rows, ids and counts as one [`insert`] per row, in order.
/// Returns how many rows were inserted.
pub fn insert_all<'a>(
    conn: &Connection,
    rows: impl IntoIterator<Item = NewOutboxRow<'a>>,
    now: i64,
) -> Result<usize, StateError> {
    in_tx(conn, |conn| {
        let mut insert: MultiInsert<'_, 'a> = MultiInsert::new(
            conn,
            "INSERT OR IGNORE INTO outbox (message_id, channel, recipient, kind, payload, \
                 created_at, attempts, next_attempt_at, status) VALUES",
            9,
            "",
        );
        // The values are bound by reference: a digest's payload is not copied to be written.
        for row in rows {
            insert.push([
                batch::text_ref(row.message_id),
                batch::text_ref(row.channel),
                batch::text_ref(row.recipient),
                batch::text_ref(row.kind),
                row.payload.value(),
                batch::int(now),
                batch::int(0),
                batch::int(now),
                batch::text_ref("pending"),
            ])?;
        }
        insert.finish()
    })
}

/// Pending rows whose next attempt is due, oldest first.
pub fn due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<OutboxRow>, StateError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM outbox
          WHERE status = 'pending' AND next_attempt_at <= ?1
          ORDER BY next_attempt_at, id
          LIMIT ?2"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![now, limit], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Claims the oldest due pending row for one delivery attempt: its next attempt moves to
/// `lease_until`, in the one statement that picks it, so no other deliverer (another
/// organisation's sweep, the shutdown flush, another process) picks it up while this one sends.
/// The attempt's outcome (`mark_sent`, `mark_failed`, `mark_dead`) replaces the lease; a
/// deliverer that dies mid-send leaves the row due again at `lease_until`, never lost.
pub fn claim_due(
    conn: &Connection,
    now: i64,
    lease_until: i64,
) -> Result<Option<OutboxRow>, StateError> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE outbox SET next_attempt_at = ?2
          WHERE id = (SELECT id FROM outbox
                       WHERE status = 'pending' AND next_attempt_at <= ?1
                       ORDER BY next_attempt_at, id
                       LIMIT 1)
          RETURNING {COLUMNS}"
    ))?;
    Ok(stmt.query_row(params![now, lease_until], row).optional()?)
}

/// One row by its message id.
pub fn get(conn: &Connection, message_id: &str) -> Result<Option<OutboxRow>, StateError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM outbox WHERE message_id = ?1"),
            params![message_id],
            row,
        )
        .optional()?)
}

/// Every row, oldest first.
pub fn all(conn: &Connection) -> Result<Vec<OutboxRow>, StateError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM outbox ORDER BY id"))?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The receiver accepted the message.
pub fn mark_sent(conn: &Connection, id: i64, now: i64) -> Result<(), StateError> {
    conn.execute(
        "UPDATE outbox SET status = 'sent', sent_at = ?2, last_error = NULL
          WHERE id = ?1 AND status = 'pending'",
        params![id, now],
    )?;
    Ok(())
}

/// [`mark_sent`] that says whether it marked the row (false: it is no longer pending; another
/// deliverer settled it).
pub fn mark_sent_if_pending(conn: &Connection, id: i64, now: i64) -> Result<bool, StateError> {
    let changed = conn.execute(
        "UPDATE outbox SET status = 'sent', sent_at = ?2, last_error = NULL
          WHERE id = ?1 AND status = 'pending'",
        params![id, now],
    )?;
    Ok(changed > 0)
}

/// A copy of a message for the recipients a relay refused for now: written as pending with
/// the attempts made so far and the relay's answer, due at `next_attempt_at`. Ignored when its
/// id is present already. Returns how many rows were inserted (0 or 1).
pub fn insert_deferred(
    conn: &Connection,
    row: &NewOutboxRow<'_>,
    attempts: u32,
    last_error: &str,
    next_attempt_at: i64,
    now: i64,
) -> Result<usize, StateError> {
    Ok(conn.execute(
        "INSERT OR IGNORE INTO outbox
             (message_id, channel, recipient, kind, payload, created_at, attempts,
              next_attempt_at, status, last_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9)",
        params![
            row.message_id,
            row.channel,
            row.recipient,
            row.kind,
            row.payload.value(),
            now,
            attempts,
            next_attempt_at,
            last_error
        ],
    )?)
}

/// A failed attempt: counts it, keeps the error and schedules the next attempt. Returns the
/// attempts made so far (0: the row is no longer pending; another deliverer settled it).
pub fn mark_failed(
    conn: &Connection,
    id: i64,
    error: &str,
    next_attempt_at: i64,
) -> Result<u32, StateError> {
    let attempts: Option<i64> = conn
        .query_row(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3
              WHERE id = ?1 AND status = 'pending' RETURNING attempts",
            params![id, error, next_attempt_at],
            |r| r.get(0),
        )
        .optional()?;
    Ok(attempts.map_or(0, |a| u32::try_from(a).unwrap_or(u32::MAX)))
}

/// Releases a claimed row untried, due at `until`, with `why` as its last error; the attempts
/// stay as they were.
pub fn postpone(conn: &Connection, id: i64, why: &str, until: i64) -> Result<bool, StateError> {
    let n = conn.execute(
        "UPDATE outbox SET next_attempt_at = ?3, last_error = ?2
          WHERE id = ?1 AND status = 'pending'",
        params![id, why, until],
    )?;
    Ok(n == 1)
}

/// Gives up on a message after its last attempt.
pub fn mark_dead(conn: &Connection, id: i64, error: &str) -> Result<(), StateError> {
    conn.execute(
        "UPDATE outbox SET status = 'dead', last_error = ?2 WHERE id = ?1 AND status = 'pending'",
        params![id, error],
    )?;
    Ok(())
}

/// Puts dead-lettered rows (of `channel`, or of every channel) back in the queue with a fresh
/// set of attempts, due at once. Each keeps its `message_id`. Returns how many were requeued.
pub fn requeue_dead(conn: &Connection, channel: Option<&str>) -> Result<usize, StateError> {
    Ok(conn.execute(
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = created_at
          WHERE status = 'dead' AND (?1 IS NULL OR channel = ?1)",
        params![channel],
    )?)
}

pub fn depth(conn: &Connection) -> Result<OutboxDepth, StateError> {
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

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    let attempts: i64 = r.get(7)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        message_id: r.get(1)?,
        channel: r.get(2)?,
        recipient: r.get(3)?,
        kind: r.get(4)?,
        payload: unpack(r.get_ref(5)?).map_err(|e| e.to_string()),
        created_at: r.get(6)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_at: r.get(8)?,
        status: r.get(9)?,
        last_error: r.get(10)?,
        sent_at: r.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_row<'a>(id: &'a str, payload: &'a Payload) -> NewOutboxRow<'a> {
        NewOutboxRow {
            message_id: id,
            channel: "ops",
            recipient: "channel",
            kind: "warning",
            payload,
        }
    }

    fn empty() -> Payload {
        Payload::new("{}".to_string())
    }

    /// A digest-like JSON payload of about `bytes` bytes: many similar table rows.
    fn digest_json(bytes: usize) -> String {
        let mut html = String::new();
        let mut i = 0;
        while html.len() < bytes {
            html.push_str(&format!(
                "<tr><td>key-{i}</td><td>sk-proj-****{:04}</td><td>older than 700d</td></tr>\n",
                i * 7919 % 10_000
            ));
            i += 1;
        }
        serde_json::json!({ "subject": "digest", "html": html }).to_string()
    }

    fn stored(c: &Connection, id: &str) -> (String, i64) {
        c.query_row(
            "SELECT typeof(payload), length(CAST(payload AS BLOB)) FROM outbox WHERE message_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// A large payload is stored packed (a BLOB several times smaller) and read back as the
    /// same JSON text; a small one is stored as its text.
    #[test]
    fn large_payloads_are_packed_and_read_back_whole() {
        let store = Store::open_in_memory().unwrap();
        let big = digest_json(200_000);
        let small = digest_json(1_000);
        let (p_big, p_small) = (Payload::new(big.clone()), Payload::new(small.clone()));
        store.with(|c| {
            insert_all(c, [new_row("big", &p_big), new_row("small", &p_small)], 5).unwrap();
            let (kind, len) = stored(c, "big");
            assert_eq!(kind, "blob");
            assert!(
                len * 4 < big.len() as i64,
                "{len} bytes stored for {}",
                big.len()
            );
            assert_eq!(stored(c, "small"), ("text".to_string(), small.len() as i64));
            assert_eq!(get(c, "big").unwrap().unwrap().payload, Ok(big.clone()));
            assert_eq!(get(c, "small").unwrap().unwrap().payload, Ok(small));
            assert_eq!(due(c, 5, 10).unwrap()[0].payload, Ok(big));
        });
    }

    /// A stored BLOB that does not unpack to exactly what it claims is read as a reason, never
    /// as a shortened or empty message, and a huge claimed length is refused before any
    /// allocation. The row comes back (with its reason), so the rows after it still do.
    #[test]
    fn a_damaged_packed_payload_is_read_as_a_reason() {
        let big = digest_json(50_000);
        let Payload(Stored::Packed(good)) = Payload::new(big) else {
            panic!("not packed");
        };
        let mut cut = good.clone();
        cut.truncate(good.len() / 2);
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut longer = good.clone();
        let claimed = u32::from_le_bytes([good[4], good[5], good[6], good[7]]) + 1;
        longer[4..8].copy_from_slice(&claimed.to_le_bytes());
        let mut foreign = good.clone();
        foreign[0] = b'X';
        for (name, blob, why) in [
            ("cut", cut, "does not unpack to its length"),
            ("huge", huge, "claims more than 64 MiB"),
            ("longer", longer, "does not unpack to its length"),
            ("foreign", foreign, "did not pack"),
            ("short", PACKED_MAGIC.to_vec(), "cut short"),
        ] {
            let store = Store::open_in_memory().unwrap();
            let after = empty();
            store.with(|c| {
                c.execute(
                    "INSERT INTO outbox (message_id, channel, recipient, kind, payload, \
                     created_at, next_attempt_at) VALUES ('m', 'ops', 'channel', 'warning', ?1, 1, 1)",
                    [&blob],
                )
                .unwrap();
                insert_all(c, [new_row("after", &after)], 1).unwrap();
                let err = get(c, "m").unwrap().unwrap().payload.unwrap_err();
                assert!(err.contains(why), "{name}: {err}");
                let due = due(c, 1, 10).unwrap();
                assert_eq!(due.len(), 2, "{name}");
                assert_eq!(due[1].payload, Ok("{}".to_string()), "{name}");
            });
        }
    }

    #[test]
    fn batched_inserts_write_what_single_inserts_write() {
        let ids: Vec<String> = (0..300).map(|i| format!("m{}", i % 200)).collect();
        let (one, many) = (
            Store::open_in_memory().unwrap(),
            Store::open_in_memory().unwrap(),
        );
        let p = empty();
        let single: usize = ids
            .iter()
            .map(|id| one.with(|c| insert(c, &new_row(id, &p), 7)).unwrap())
            .sum();
        let batched = many
            .with(|c| insert_all(c, ids.iter().map(|id| new_row(id, &p)), 7))
            .unwrap();
        assert_eq!((single, batched), (200, 200));
        assert_eq!(one.with(all).unwrap(), many.with(all).unwrap());
    }

    #[test]
    fn rows_go_in_once_and_come_out_due_in_order() {
        let store = Store::open_in_memory().unwrap();
        let p = empty();
        store.with(|c| {
            assert_eq!(insert(c, &new_row("a", &p), 100).unwrap(), 1);
            assert_eq!(insert(c, &new_row("b", &p), 100).unwrap(), 1);
            assert_eq!(insert(c, &new_row("a", &p), 200).unwrap(), 0);
            let due_now = due(c, 100, 10).unwrap();
            assert_eq!(due_now.len(), 2);
            assert_eq!(due_now[0].message_id, "a");
            assert_eq!(mark_failed(c, due_now[0].id, "down", 160).unwrap(), 1);
            mark_sent(c, due_now[1].id, 101).unwrap();
            assert!(due(c, 159, 10).unwrap().is_empty());
            mark_dead(c, due_now[0].id, "gave up").unwrap();
            assert_eq!(
                depth(c).unwrap(),
                OutboxDepth {
                    pending: 0,
                    dead: 1
                }
            );
            assert_eq!(requeue_dead(c, Some("ops")).unwrap(), 1);
            let a = get(c, "a").unwrap().unwrap();
            assert_eq!((a.status.as_str(), a.attempts), ("pending", 0));
            assert_eq!(all(c).unwrap().len(), 2);
        });
    }
}
