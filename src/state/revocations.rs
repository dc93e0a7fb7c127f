//! The revocation counter behind the rolling `max_revocations_per_day` cap.
//!
//! A row stands for every write that ends or shortens a key (a DELETE, a set expiry, a
//! rotation's expiry on the replaced key) that went through or may still be going through. It
//! is taken as a *reservation* in the same transaction as the write's `intent` record (for a
//! rotation, the intent to mint: the expiry that ends it is owed once a key is minted, so its
//! slot is taken before), after counting the rows of the last 24 hours in that transaction: the
//! transaction is `IMMEDIATE`, so the write lock is held from the count to the commit, and two
//! sweeps (two organisations of one daemon, or a `run --once` beside it) can never both take
//! the last slot. A DELETE or expiry set the API refused gives its slot back in its outcome's
//! transaction (one that timed out or got a 5xx may have gone through, and keeps it); one a
//! crash interrupted is settled by reconciliation (kept if it went through or the key ended,
//! given back if not). A rotation keeps its slot unless its mint was refused or its new key was
//! deleted again, and its owed expiry is counted again, uncapped ([`ensure_counted`]), when
//! that slot has left the last 24 hours. This module only counts; `revoke` and `rotate`
//! enforce.

use rusqlite::{Connection, OptionalExtension, params};

use crate::state::StateError;

/// One slot of the rolling cap, taken by [`reserve`] (its row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation(i64);

impl Reservation {
    /// The slot's id, for the write's intent record: reconciliation settles that very slot.
    pub fn id(self) -> i64 {
        self.0
    }
}

/// Takes a slot of the rolling cap for a write of `key_id` about to be sent at `at`: counts the
/// slots taken since `at - 24 h` and, when fewer than `cap`, writes one. `Ok(None)`: the cap is
/// reached, nothing written. Must run in the transaction that writes the write's intent.
pub fn reserve(
    conn: &Connection,
    at: i64,
    cap: u32,
    (organization, project_id, key_id): (&str, &str, &str),
    run_id: &str,
) -> Result<Option<Reservation>, StateError> {
    if revocations_since(conn, at - 86400)? >= u64::from(cap) {
        return Ok(None);
    }
    record_revocation(conn, at, organization, project_id, key_id, run_id)?;
    Ok(Some(Reservation(conn.last_insert_rowid())))
}

/// Makes sure a write of `key_id` about to be sent at `at` is counted in the last 24 hours,
/// without the cap: for an expiry already owed (a rotation's old key), whose slot was taken when
/// the rotation began, which may have left the window since, or never existed (a rotation an
/// older release began).
pub fn ensure_counted(
    conn: &Connection,
    at: i64,
    (organization, project_id, key_id): (&str, &str, &str),
    run_id: &str,
) -> Result<(), StateError> {
    let counted: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM revocations
             WHERE key_id = ?1 AND organization = ?2 AND at >= ?3",
        )?
        .query_row(params![key_id, organization, at - 86400], |r| r.get(0))?;
    if counted == 0 {
        record_revocation(conn, at, organization, project_id, key_id, run_id)?;
    }
    Ok(())
}

/// Gives back the slot of a write that failed.
pub fn release(conn: &Connection, reservation: Reservation) -> Result<(), StateError> {
    conn.prepare_cached("DELETE FROM revocations WHERE rowid = ?1")?
        .execute(params![reservation.0])?;
    Ok(())
}

/// Settles the slot of a write of `key_id` by run `run_id` that a crash interrupted: `took`
/// (it went through) keeps its reservation, or counts it at `at` when its intent was written
/// before reservations existed; otherwise the reservation is given back. `slot` is the id its
/// intent recorded; an intent without one is matched by key and run.
pub fn settle_interrupted(
    conn: &Connection,
    took: bool,
    at: i64,
    (organization, project_id, key_id): (&str, &str, &str),
    (run_id, slot): (&str, Option<i64>),
) -> Result<(), StateError> {
    let reserved: Option<i64> = match slot {
        Some(id) => conn
            .prepare_cached("SELECT rowid FROM revocations WHERE rowid = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?,
        None => conn
            .prepare_cached(
                "SELECT rowid FROM revocations
                 WHERE key_id = ?1 AND run_id = ?2 AND organization = ?3
                 ORDER BY rowid DESC LIMIT 1",
            )?
            .query_row(params![key_id, run_id, organization], |r| r.get(0))
            .optional()?,
    };
    match (reserved, took) {
        (Some(_), true) => Ok(()),
        (None, true) => record_revocation(conn, at, organization, project_id, key_id, run_id),
        (Some(rowid), false) => release(conn, Reservation(rowid)),
        (None, false) => Ok(()),
    }
}

/// Records one successful revocation at `at` (Unix seconds).
pub fn record_revocation(
    conn: &Connection,
    at: i64,
    organization: &str,
    project_id: &str,
    key_id: &str,
    run_id: &str,
) -> Result<(), StateError> {
    conn.prepare_cached(
        "INSERT INTO revocations (at, organization, project_id, key_id, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![at, organization, project_id, key_id, run_id])?;
    Ok(())
}

/// Revocations at or after `since` (for the rolling cap: `since = now - 24 h`).
pub fn revocations_since(conn: &Connection, since: i64) -> Result<u64, StateError> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM revocations WHERE at >= ?1")?
        .query_row(params![since], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;

    const DAY: i64 = 86400;

    fn count(store: &Store, since: i64) -> u64 {
        store.with_conn(|c| revocations_since(c, since)).unwrap()
    }

    #[test]
    fn a_slot_is_taken_only_while_the_last_day_has_room_and_a_release_gives_it_back() {
        let store = Store::open_in_memory().unwrap();
        let take = |key: &str, at: i64| {
            store
                .tx(|tx| reserve(tx, at, 2, ("o", "p", key), "run-1"))
                .unwrap()
        };
        let first = take("k1", 1_000_000).unwrap();
        assert!(take("k2", 1_000_000).is_some());
        assert_eq!(take("k3", 1_000_000), None, "the cap of 2 is reached");
        assert_eq!(count(&store, 0), 2, "a refused slot writes nothing");
        store.tx(|tx| release(tx, first)).unwrap();
        assert!(take("k3", 1_000_000).is_some(), "the released slot is free");
        // The day rolls: slots older than 24 hours no longer count.
        assert_eq!(
            take("k4", 1_000_000 + DAY),
            None,
            "24 hours ago still counts"
        );
        assert!(take("k4", 1_000_000 + DAY + 1).is_some());
        assert!(take("k5", 1_000_000 + DAY + 1).is_some());
        assert_eq!(take("k6", 1_000_000 + DAY + 1), None);
        // An owed expiry is counted once per day whatever the cap.
        let owed = |at: i64| {
            store
                .tx(|tx| ensure_counted(tx, at, ("o", "p", "k6"), "run-2"))
                .unwrap();
        };
        owed(1_000_000 + DAY + 1);
        owed(1_000_000 + DAY + 2);
        assert_eq!(count(&store, 1_000_000 + 2), 3, "k4, k5 and k6 once");
        owed(1_000_000 + 2 * DAY + 2);
        assert_eq!(
            count(&store, 1_000_000 + DAY + 3),
            1,
            "k6 again, a day later"
        );
    }

    #[test]
    fn an_interrupted_write_keeps_its_slot_when_it_went_through_and_gives_it_back_when_not() {
        let store = Store::open_in_memory().unwrap();
        let at = 2_000_000;
        store
            .tx(|tx| {
                reserve(tx, at, 10, ("o", "p", "went"), "run-1")?;
                reserve(tx, at, 10, ("o", "p", "stayed"), "run-1")?;
                // Two writes of one key in one run: each intent names its own slot.
                reserve(tx, at, 10, ("o", "p", "twice"), "run-1")?;
                reserve(tx, at + 1, 10, ("o", "p", "twice"), "run-1")?;
                Ok(())
            })
            .unwrap();
        store
            .tx(|tx| {
                settle_interrupted(tx, true, at + 60, ("o", "p", "went"), ("run-1", None))?;
                settle_interrupted(tx, false, at + 60, ("o", "p", "stayed"), ("run-1", Some(2)))?;
                settle_interrupted(tx, false, at + 60, ("o", "p", "twice"), ("run-1", Some(3)))?;
                // An intent from before reservations: counted once it is known to have gone
                // through, and nothing to give back when it did not.
                settle_interrupted(tx, true, at + 60, ("o", "p", "older"), ("run-0", None))?;
                settle_interrupted(tx, false, at + 60, ("o", "p", "older2"), ("run-0", None))
            })
            .unwrap();
        let keys: Vec<(String, i64)> = store
            .with_conn(|c| {
                let mut s = c.prepare("SELECT key_id, at FROM revocations ORDER BY key_id")?;
                let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .unwrap();
        assert_eq!(
            keys,
            vec![
                ("older".to_string(), at + 60),
                ("twice".to_string(), at + 1),
                ("went".to_string(), at)
            ]
        );
    }
}
