//! Sweep history: one row per (run, organisation), for `/readyz`, the reports and for finding
//! sweeps a crash interrupted.
//!
//! Rows are written at the start and the end of a sweep; a row still `running` when the next
//! process starts belongs to a sweep that never finished.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::state::StateError;

/// How a sweep of one organisation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepStatus {
    /// Started and not (yet) finished.
    Running,
    /// Every project was listed completely and every due action was attempted.
    Completed,
    /// Finished, but some listing was incomplete (nothing in those projects was acted on).
    Incomplete,
    /// The organisation could not be swept (authentication, API unavailable, state error).
    Failed,
    /// Found `running` by a later process: the sweep was cut short by a crash or kill.
    Interrupted,
}

impl SweepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SweepStatus::Running => "running",
            SweepStatus::Completed => "completed",
            SweepStatus::Incomplete => "incomplete",
            SweepStatus::Failed => "failed",
            SweepStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<SweepStatus> {
        Some(match s {
            "running" => SweepStatus::Running,
            "completed" => SweepStatus::Completed,
            "incomplete" => SweepStatus::Incomplete,
            "failed" => SweepStatus::Failed,
            "interrupted" => SweepStatus::Interrupted,
            _ => return None,
        })
    }
}

/// One row of `sweeps`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepRow {
    pub run_id: String,
    pub organization: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub status: SweepStatus,
    /// Whatever summary the sweep stored (counts, durations); `None` while running.
    pub summary: Option<serde_json::Value>,
}

/// Records the start of a sweep of `organization`.
pub fn sweep_started(
    conn: &Connection,
    run_id: &str,
    organization: &str,
    now: i64,
) -> Result<(), StateError> {
    conn.prepare_cached(
        "INSERT INTO sweeps (run_id, organization, started_at, status) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (run_id, organization) DO UPDATE SET started_at = excluded.started_at,
             status = excluded.status, finished_at = NULL, summary = NULL",
    )?
    .execute(params![
        run_id,
        organization,
        now,
        SweepStatus::Running.as_str()
    ])?;
    Ok(())
}

/// Records the end of a sweep with its status and summary.
pub fn sweep_finished(
    conn: &Connection,
    run_id: &str,
    organization: &str,
    now: i64,
    status: SweepStatus,
    summary: &serde_json::Value,
) -> Result<(), StateError> {
    let summary = serde_json::to_string(summary).map_err(|source| StateError::Encode {
        what: "sweep summary",
        source,
    })?;
    // An upsert, so a sweep whose start row was lost (or never written) is still recorded.
    conn.prepare_cached(
        "INSERT INTO sweeps (run_id, organization, started_at, finished_at, status, summary)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5)
         ON CONFLICT (run_id, organization) DO UPDATE SET finished_at = excluded.finished_at,
             status = excluded.status, summary = excluded.summary",
    )?
    .execute(params![run_id, organization, now, status.as_str(), summary])?;
    Ok(())
}

/// The most recently started sweep of `organization`, finished or not.
pub fn last_sweep(conn: &Connection, organization: &str) -> Result<Option<SweepRow>, StateError> {
    query_one(
        conn,
        "SELECT run_id, organization, started_at, finished_at, status, summary FROM sweeps
         WHERE organization = ?1 ORDER BY started_at DESC, rowid DESC LIMIT 1",
        organization,
    )
}

/// The most recently finished sweep of `organization` whose status is `completed`.
pub fn last_completed_sweep(
    conn: &Connection,
    organization: &str,
) -> Result<Option<SweepRow>, StateError> {
    query_one(
        conn,
        "SELECT run_id, organization, started_at, finished_at, status, summary FROM sweeps
         WHERE organization = ?1 AND status = 'completed'
         ORDER BY finished_at DESC, rowid DESC LIMIT 1",
        organization,
    )
}

/// The most recently started sweep of `organization` that finished its work (`completed` or
/// `incomplete`: a `failed` or `interrupted` one may have stopped between its writes and their
/// commit) and did not start after `not_after` (a `--now` in the future must not move the
/// bound past the sweeps that follow it in real time).
pub fn last_finished_sweep(
    conn: &Connection,
    organization: &str,
    not_after: i64,
) -> Result<Option<SweepRow>, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT run_id, organization, started_at, finished_at, status, summary FROM sweeps
         WHERE organization = ?1 AND status IN ('completed', 'incomplete') AND started_at <= ?2
         ORDER BY started_at DESC, rowid DESC LIMIT 1",
    )?;
    let mut rows = stmt.query(params![organization, not_after])?;
    rows.next()?.map(from_row).transpose()
}

/// Marks every sweep still `running` as `interrupted` (call once at startup, before the first
/// sweep of this process). Returns the affected rows so they can be reported.
pub fn mark_interrupted(conn: &Connection, now: i64) -> Result<Vec<SweepRow>, StateError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE sweeps SET status = 'interrupted', finished_at = ?1 WHERE status = 'running'
         RETURNING run_id, organization, started_at, finished_at, status, summary",
    )?;
    let mut rows = stmt.query(params![now])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(from_row(row)?);
    }
    Ok(out)
}

fn query_one(
    conn: &Connection,
    sql: &str,
    organization: &str,
) -> Result<Option<SweepRow>, StateError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![organization])?;
    rows.next()?.map(from_row).transpose()
}

fn from_row(r: &rusqlite::Row<'_>) -> Result<SweepRow, StateError> {
    let status: String = r.get(4)?;
    build(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        &status,
        r.get(5)?,
    )
}

fn build(
    run_id: String,
    organization: String,
    started_at: i64,
    finished_at: Option<i64>,
    status: &str,
    summary: Option<String>,
) -> Result<SweepRow, StateError> {
    let corrupt = |source| StateError::Corrupt {
        table: "sweeps",
        row: format!("{run_id}/{organization}"),
        source,
    };
    let status = SweepStatus::parse(status).ok_or_else(|| {
        corrupt(<serde_json::Error as serde::de::Error>::custom(format!(
            "unknown status {status:?}"
        )))
    })?;
    let summary = summary
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(corrupt)?;
    Ok(SweepRow {
        run_id,
        organization,
        started_at,
        finished_at,
        status,
        summary,
    })
}
