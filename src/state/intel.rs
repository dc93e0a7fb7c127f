//! The audit log's history of keys, kept between sweeps (issue 16): per organisation, the
//! high-water mark of the last successful read (`intel_marks`), each key's creator, scopes and
//! deletion as folded from its events (`key_history`), and the ids of the events inside the
//! re-read margin (`audit_events_seen`), so an event read twice is applied once.
//!
//! Plain rows: `intel` decides what they mean and when to advance the mark. Nothing here may
//! hold a secret (ids, e-mails and scope names only).

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::state::StateError;

/// One key's history as stored. Each `…_at` beside a value is the `effective_at` of the event
/// that set it, so a late event never overrides a newer one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHistoryRow {
    pub key_id: String,
    pub project_id: Option<String>,
    pub created_at: Option<i64>,
    pub created_by: Option<String>,
    /// `None`: unknown. `Some([])`: All permissions.
    pub scopes: Option<Vec<String>>,
    pub scopes_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub ends_set_at: Option<i64>,
    pub deleted_at: Option<i64>,
    pub deleted_by: Option<String>,
}

/// The organisation's high-water mark: the sweep time of its last successful read.
pub fn mark(conn: &Connection, organization: &str) -> Result<Option<i64>, StateError> {
    Ok(conn
        .query_row(
            "SELECT read_to FROM intel_marks WHERE organization = ?1",
            params![organization],
            |r| r.get(0),
        )
        .optional()?)
}

/// How many key histories of the organisation are stored (to size what holds them).
pub fn history_count(conn: &Connection, organization: &str) -> Result<usize, StateError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM key_history WHERE organization = ?1",
        params![organization],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The columns [`history_row`] reads, in its order.
const HISTORY_COLUMNS: &str = "key_id, project_id, created_at, created_by, scopes, scopes_at, \
     ends_at, ends_set_at, deleted_at, deleted_by";

fn history_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyHistoryRow> {
    let scopes: Option<String> = r.get(4)?;
    Ok(KeyHistoryRow {
        key_id: r.get(0)?,
        project_id: r.get(1)?,
        created_at: r.get(2)?,
        created_by: r.get(3)?,
        // A value that does not decode is unknown, never "All permissions".
        scopes: scopes.and_then(|s| serde_json::from_str(&s).ok()),
        scopes_at: r.get(5)?,
        ends_at: r.get(6)?,
        ends_set_at: r.get(7)?,
        deleted_at: r.get(8)?,
        deleted_by: r.get(9)?,
    })
}

/// Hands every stored key history of the organisation to `each`, one row at a time: 100k
/// rows collected first would double what the caller keeps of them.
pub fn each_history(
    conn: &Connection,
    organization: &str,
    mut each: impl FnMut(KeyHistoryRow),
) -> Result<(), StateError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {HISTORY_COLUMNS} FROM key_history WHERE organization = ?1"
    ))?;
    let mut rows = stmt.query(params![organization])?;
    while let Some(r) = rows.next()? {
        each(history_row(r)?);
    }
    Ok(())
}

/// The stored history of each of `key_ids` that has one, handed to `each`.
pub fn histories_of<'k>(
    conn: &Connection,
    organization: &str,
    key_ids: impl IntoIterator<Item = &'k str>,
    mut each: impl FnMut(KeyHistoryRow),
) -> Result<(), StateError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {HISTORY_COLUMNS} FROM key_history WHERE organization = ?1 AND key_id = ?2"
    ))?;
    for key_id in key_ids {
        if let Some(row) = stmt
            .query_row(params![organization, key_id], history_row)
            .optional()?
        {
            each(row);
        }
    }
    Ok(())
}

/// The ids of the events already applied that are still inside the re-read margin.
pub fn seen_events(conn: &Connection, organization: &str) -> Result<HashSet<String>, StateError> {
    let mut stmt =
        conn.prepare("SELECT event_id FROM audit_events_seen WHERE organization = ?1")?;
    let ids = stmt.query_map(params![organization], |r| r.get::<_, String>(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// What one successful read adds besides the changed histories (which [`record_read`] takes
/// one at a time): the events applied (id, `effective_at`), the new mark, and what to forget
/// (seen events older than `forget_seen_before`, histories of keys deleted before
/// `forget_deleted_before`).
#[derive(Debug, Clone, Default)]
pub struct ReadResult<'a> {
    pub applied: Vec<(&'a str, i64)>,
    pub read_to: i64,
    pub forget_seen_before: i64,
    pub forget_deleted_before: i64,
}

/// Records a successful read in one go (the caller's transaction): `changed`, the histories
/// the read changed, made one at a time (a first read changes every key's), and `r`.
pub fn record_read(
    conn: &Connection,
    organization: &str,
    changed: impl IntoIterator<Item = KeyHistoryRow>,
    r: &ReadResult<'_>,
) -> Result<(), StateError> {
    let mut put = conn.prepare_cached(
        "INSERT OR REPLACE INTO key_history (organization, key_id, project_id, created_at, \
         created_by, scopes, scopes_at, ends_at, ends_set_at, deleted_at, deleted_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for h in changed {
        let scopes = match &h.scopes {
            Some(s) => Some(
                serde_json::to_string(s).map_err(|source| StateError::Corrupt {
                    table: "key_history",
                    row: h.key_id.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        put.execute(params![
            organization,
            h.key_id,
            h.project_id,
            h.created_at,
            h.created_by,
            scopes,
            h.scopes_at,
            h.ends_at,
            h.ends_set_at,
            h.deleted_at,
            h.deleted_by
        ])?;
    }
    let mut seen = conn.prepare_cached(
        "INSERT OR IGNORE INTO audit_events_seen (organization, event_id, effective_at) \
         VALUES (?1, ?2, ?3)",
    )?;
    for (id, at) in &r.applied {
        seen.execute(params![organization, id, at])?;
    }
    conn.execute(
        "DELETE FROM audit_events_seen WHERE organization = ?1 AND effective_at < ?2",
        params![organization, r.forget_seen_before],
    )?;
    conn.execute(
        "DELETE FROM key_history WHERE organization = ?1 AND deleted_at < ?2",
        params![organization, r.forget_deleted_before],
    )?;
    conn.execute(
        "INSERT INTO intel_marks (organization, read_to) VALUES (?1, ?2) \
         ON CONFLICT (organization) DO UPDATE SET read_to = excluded.read_to",
        params![organization, r.read_to],
    )?;
    Ok(())
}
