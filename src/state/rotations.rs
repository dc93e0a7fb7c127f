//! The `rotations` table: one row per rotation of a service-account key (`action = "rotate"`),
//! from the mint's intent to the old key's expiry. It holds ids, the nonce put into the new
//! key's name and the rotation's status — never a secret: the minted value lives only in memory.
//!
//! Statuses: `minting` (intent written, the key may or may not exist: a crash here leaves an
//! orphan that the nonce finds), `minted` (the new key's id recorded; the secret may be with the
//! sink), `delivered` (the sink confirmed; the old key's expiry is owed), `done`,
//! `unannounced` (done, but its sweep was dropped by a shutdown before it could say so),
//! `cleanup_pending` (the sink failed and deleting the new key failed too), `sink_failed` (the
//! new key deleted again), `abandoned` (an orphan deleted, or the new key gone). Plain rows:
//! this module decides nothing.

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use crate::state::StateError;

/// A rotation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRow {
    pub id: i64,
    pub organization: String,
    pub project_id: String,
    pub service_account_id: String,
    pub old_key_id: String,
    pub policy: String,
    pub nonce: String,
    pub new_key_id: Option<String>,
    pub new_redacted_value: Option<String>,
    pub status: String,
    /// The `seq` of the mint's intent audit record.
    pub intent_seq: Option<i64>,
    /// Wall-clock Unix seconds when the mint was about to be sent.
    pub started_at: i64,
    pub updated_at: i64,
    /// The expiry owed to (or given to) the old key.
    pub old_expires_at: Option<i64>,
    pub detail: Option<String>,
}

/// What a new rotation row starts with.
#[derive(Debug, Clone)]
pub struct NewRotation<'a> {
    pub organization: &'a str,
    pub project_id: &'a str,
    pub service_account_id: &'a str,
    pub old_key_id: &'a str,
    pub policy: &'a str,
    pub nonce: &'a str,
    pub intent_seq: i64,
    pub started_at: i64,
}

/// A rotation performed (the old key has its expiry) whose "rotated" messages are not queued
/// yet: its sweep queues them and marks it done in one transaction ([`mark_announced`]); one
/// that failed or was dropped by a shutdown first leaves that to the next sweep.
pub const UNANNOUNCED: &str = "unannounced";

/// Statuses under which a rotation is not finished and needs a later sweep's attention.
pub const UNSETTLED: [&str; 5] = [
    "minting",
    "minted",
    "delivered",
    "cleanup_pending",
    UNANNOUNCED,
];

const COLUMNS: &str = "id, organization, project_id, service_account_id, old_key_id, policy, nonce, \
     new_key_id, new_redacted_value, status, intent_seq, started_at, updated_at, old_expires_at, \
     detail";

fn decode(r: &Row<'_>) -> rusqlite::Result<RotationRow> {
    Ok(RotationRow {
        id: r.get(0)?,
        organization: r.get(1)?,
        project_id: r.get(2)?,
        service_account_id: r.get(3)?,
        old_key_id: r.get(4)?,
        policy: r.get(5)?,
        nonce: r.get(6)?,
        new_key_id: r.get(7)?,
        new_redacted_value: r.get(8)?,
        status: r.get(9)?,
        intent_seq: r.get(10)?,
        started_at: r.get(11)?,
        updated_at: r.get(12)?,
        old_expires_at: r.get(13)?,
        detail: r.get(14)?,
    })
}

/// Records a rotation about to mint (status `minting`); returns its id.
pub fn begin(conn: &Connection, r: &NewRotation<'_>) -> Result<i64, StateError> {
    conn.prepare_cached(
        "INSERT INTO rotations (organization, project_id, service_account_id, old_key_id, policy,
             nonce, status, intent_seq, started_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'minting', ?7, ?8, ?8)",
    )?
    .execute(params![
        r.organization,
        r.project_id,
        r.service_account_id,
        r.old_key_id,
        r.policy,
        r.nonce,
        r.intent_seq,
        r.started_at
    ])?;
    Ok(conn.last_insert_rowid())
}

/// A change to a rotation row: the status, and any of the other fields that became known.
#[derive(Debug, Clone, Default)]
pub struct RotationUpdate<'a> {
    pub status: &'a str,
    pub new_key_id: Option<&'a str>,
    pub new_redacted_value: Option<&'a str>,
    pub old_expires_at: Option<i64>,
    pub detail: Option<&'a str>,
}

/// Applies `u` to row `id` at `now`; fields left `None` keep their value.
pub fn update(
    conn: &Connection,
    id: i64,
    u: &RotationUpdate<'_>,
    now: i64,
) -> Result<(), StateError> {
    conn.prepare_cached(
        "UPDATE rotations SET status = ?2,
             new_key_id = coalesce(?3, new_key_id),
             new_redacted_value = coalesce(?4, new_redacted_value),
             old_expires_at = coalesce(?5, old_expires_at),
             detail = coalesce(?6, detail),
             updated_at = ?7
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        u.status,
        u.new_key_id,
        u.new_redacted_value,
        u.old_expires_at,
        u.detail,
        now
    ])?;
    Ok(())
}

/// The unfinished rotations of organisation `org` (see [`UNSETTLED`]), oldest first.
pub fn unsettled(conn: &Connection, org: &str) -> Result<Vec<RotationRow>, StateError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM rotations WHERE organization = ?1
         AND status IN ('minting', 'minted', 'delivered', 'cleanup_pending', 'unannounced')
         ORDER BY id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![org], decode)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The latest rotation of one old key, if any.
pub fn latest_for_key(
    conn: &Connection,
    org: &str,
    project_id: &str,
    old_key_id: &str,
) -> Result<Option<RotationRow>, StateError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM rotations
         WHERE organization = ?1 AND project_id = ?2 AND old_key_id = ?3
         ORDER BY id DESC LIMIT 1"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![org, project_id, old_key_id], decode)
        .optional()?)
}

/// The latest rotation of a service account's keys in a project that handed its new key to a
/// sink (`delivered`, `done`, `unannounced`): with a file sink, its new key is what the file
/// holds now.
pub fn latest_handed_over(
    conn: &Connection,
    org: &str,
    project_id: &str,
    service_account_id: &str,
) -> Result<Option<RotationRow>, StateError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM rotations
         WHERE organization = ?1 AND project_id = ?2 AND service_account_id = ?3
           AND status IN ('delivered', 'done', 'unannounced') AND new_key_id IS NOT NULL
         ORDER BY id DESC LIMIT 1"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![org, project_id, service_account_id], decode)
        .optional()?)
}

/// The rotation whose hand-over of `new_key_id` a crash interrupted (`minted`), if any.
pub fn awaiting_confirmation(
    conn: &Connection,
    new_key_id: &str,
) -> Result<Option<RotationRow>, StateError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM rotations WHERE status = 'minted' AND new_key_id = ?1
         ORDER BY id DESC LIMIT 1"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![new_key_id], decode)
        .optional()?)
}

/// Whether the old key needs no new rotation: its latest rotation is done (the old key now
/// expires) or unfinished (see [`UNSETTLED`]; reconciliation settles it first). The rotation
/// phase asks it after reconciling; the planner's caps count unfinished rotations as due,
/// since a settled one may start afresh in the same sweep.
pub fn in_hand(
    conn: &Connection,
    org: &str,
    project_id: &str,
    old_key_id: &str,
) -> Result<bool, StateError> {
    Ok(latest_for_key(conn, org, project_id, old_key_id)?
        .is_some_and(|r| r.status == "done" || UNSETTLED.contains(&r.status.as_str())))
}

/// Marks `unannounced` rows done, in the transaction that queues their "rotated" messages. The
/// time the rotation was performed (`updated_at`) stays: the hour a finished rotation is left
/// alone counts from it.
pub fn mark_announced(conn: &Connection, ids: &[i64]) -> Result<(), StateError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE rotations SET status = 'done' WHERE id = ?1 AND status = 'unannounced'",
    )?;
    for id in ids {
        stmt.execute(params![id])?;
    }
    Ok(())
}

/// (organisation, key id) → the key it replaced, for every key keysweep minted.
pub type Replacements = std::collections::HashMap<(String, String), String>;

/// Every key keysweep minted, as (organisation, new key id) → the old key it replaced.
pub fn replacements(conn: &Connection) -> Result<Replacements, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT organization, new_key_id, old_key_id FROM rotations WHERE new_key_id IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every rotation row (tests, `scan`).
pub fn all(conn: &Connection) -> Result<Vec<RotationRow>, StateError> {
    let sql = format!("SELECT {COLUMNS} FROM rotations ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], decode)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One rotation by id.
pub fn get(conn: &Connection, id: i64) -> Result<Option<RotationRow>, StateError> {
    let sql = format!("SELECT {COLUMNS} FROM rotations WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![id], decode)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;

    #[test]
    fn a_key_is_in_hand_while_its_latest_rotation_is_unfinished_or_done() {
        let store = Store::open_in_memory().unwrap();
        let in_hand = |key: &str| store.with_conn(|c| in_hand(c, "o", "p", key)).unwrap();
        assert!(!in_hand("key_old"), "never rotated");
        let id = store
            .with_conn(|c| {
                begin(
                    c,
                    &NewRotation {
                        organization: "o",
                        project_id: "p",
                        service_account_id: "sa",
                        old_key_id: "key_old",
                        policy: "rot",
                        nonce: "n1",
                        intent_seq: 1,
                        started_at: 10,
                    },
                )
            })
            .unwrap();
        let set = |status: &str| {
            let u = RotationUpdate {
                status,
                ..RotationUpdate::default()
            };
            store.with_conn(|c| update(c, id, &u, 20)).unwrap();
        };
        for status in UNSETTLED.into_iter().chain(["done"]) {
            set(status);
            assert!(in_hand("key_old"), "{status}");
        }
        // A failed rotation left nothing behind: the key is rotated again.
        set("sink_failed");
        assert!(!in_hand("key_old"));
        assert!(!in_hand("key_other"), "another key");
    }
}
