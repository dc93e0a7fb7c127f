//! The revocation counter behind the rolling `max_revocations_per_day` cap.
//!
//! A row is written for every *successful* revocation, in the same transaction as its outcome
//! audit record, so the cap survives restarts. This module only counts; `revoke` enforces.

use rusqlite::{Connection, params};

use crate::state::StateError;

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
