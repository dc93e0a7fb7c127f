//! Persisted findings: one row per (organisation, project, key, policy).
//!
//! The whole [`Finding`] is stored as JSON in `data`; `stage` and `deadline` are copied into
//! indexed columns so open findings can be selected without decoding every row. This module
//! stores what `policy::lifecycle` decided and never decides a transition itself.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::policy::finding::{Finding, FindingId, Stage};
use crate::state::batch::{self, MultiInsert};
use crate::state::{StateError, in_tx};

/// Number of findings in one (organisation, policy, stage), for reports and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingCount {
    pub organization: String,
    pub policy: String,
    pub stage: Stage,
    pub count: u64,
}

/// Inserts or replaces the finding with `finding.id`. `now` records when it was last written.
pub fn upsert_finding(conn: &Connection, finding: &Finding, now: i64) -> Result<(), StateError> {
    let data = serde_json::to_string(finding).map_err(|source| StateError::Encode {
        what: "finding",
        source,
    })?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO findings (organization, project_id, key_id, policy, stage, deadline, data, \
                               updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (organization, project_id, key_id, policy) DO UPDATE SET
             stage = excluded.stage,
             deadline = excluded.deadline,
             data = excluded.data,
             updated_at = excluded.updated_at",
    )?;
    stmt.execute(params![
        finding.id.organization,
        finding.id.project_id,
        finding.id.key_id,
        finding.id.policy,
        finding.stage.as_str(),
        finding.deadline,
        data,
        now,
    ])?;
    Ok(())
}

/// Upserts many findings in one transaction (the caller's, if one is open), in multi-row
/// statements: the rows written are those of one [`upsert_finding`] per finding, in order.
pub fn upsert_findings<'f>(
    conn: &Connection,
    findings: impl IntoIterator<Item = &'f Finding>,
    now: i64,
) -> Result<(), StateError> {
    in_tx(conn, |conn| {
        let mut insert = MultiInsert::new(
            conn,
            "INSERT INTO findings (organization, project_id, key_id, policy, stage, deadline, \
                                   data, updated_at) VALUES",
            8,
            "ON CONFLICT (organization, project_id, key_id, policy) DO UPDATE SET
                 stage = excluded.stage,
                 deadline = excluded.deadline,
                 data = excluded.data,
                 updated_at = excluded.updated_at",
        );
        for f in findings {
            let data = serde_json::to_string(f).map_err(|source| StateError::Encode {
                what: "finding",
                source,
            })?;
            insert.push([
                batch::text_ref(&f.id.organization),
                batch::text_ref(&f.id.project_id),
                batch::text_ref(&f.id.key_id),
                batch::text_ref(&f.id.policy),
                batch::text_ref(f.stage.as_str()),
                batch::int(f.deadline),
                batch::text(data),
                batch::int(now),
            ])?;
        }
        insert.finish()?;
        Ok(())
    })
}

/// How many of a key's latest write decisions in a row were re-check skips: its `skipped`
/// audit records of a re-check (their response names the `recheck`) since its last `intent` or
/// `reconciled` record, leaving out those whose re-check reason `ignore` holds for (the kill
/// switch's). Neither those nor the plan's withholdings (dry-run, caps: `skipped` records
/// without a `recheck`, written before any re-check) count or end the run. The count lives in
/// the audit log, which already holds every skip with its key, so no schema change is needed.
pub fn consecutive_recheck_skips(
    conn: &Connection,
    organization: &str,
    project_id: &str,
    key_id: &str,
    ignore: impl Fn(&str) -> bool,
) -> Result<u32, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, json_extract(record, '$.response.recheck') FROM audit
         WHERE kind IN ('skipped', 'intent', 'reconciled')
           AND json_extract(record, '$.key_id') = ?3
           AND json_extract(record, '$.project_id') = ?2
           AND json_extract(record, '$.organization') = ?1
         ORDER BY seq DESC",
    )?;
    let mut rows = stmt.query(params![organization, project_id, key_id])?;
    let mut skips = 0u32;
    while let Some(row) = rows.next()? {
        let kind: String = row.get(0)?;
        let recheck: Option<String> = row.get(1)?;
        if kind != "skipped" {
            break;
        }
        if recheck.is_some_and(|reason| !ignore(&reason)) {
            skips = skips.saturating_add(1);
        }
    }
    Ok(skips)
}

/// The open findings (detected, warned, final notice) of one organisation, ordered by deadline.
pub fn open_findings(conn: &Connection, organization: &str) -> Result<Vec<Finding>, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT organization, project_id, key_id, policy, data FROM findings
         WHERE organization = ?1 AND stage IN ('detected', 'warned', 'final_notice')
         ORDER BY deadline, project_id, key_id, policy",
    )?;
    collect(stmt.query(params![organization])?)
}

/// The closed findings of one organisation that still owe a restore (`expiry.restore_pending`):
/// the sweep retries moving their expiry back out. Few rows; the JSON is only read for closed
/// findings of that organisation.
pub fn pending_restores(conn: &Connection, organization: &str) -> Result<Vec<Finding>, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT organization, project_id, key_id, policy, data FROM findings
         WHERE organization = ?1 AND stage NOT IN ('detected', 'warned', 'final_notice')
           AND json_extract(data, '$.expiry.restore_pending') = 1
         ORDER BY project_id, key_id, policy",
    )?;
    collect(stmt.query(params![organization])?)
}

/// One finding by its identity.
pub fn get_finding(conn: &Connection, id: &FindingId) -> Result<Option<Finding>, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT organization, project_id, key_id, policy, data FROM findings
         WHERE organization = ?1 AND project_id = ?2 AND key_id = ?3 AND policy = ?4",
    )?;
    let row = stmt
        .query_row(
            params![id.organization, id.project_id, id.key_id, id.policy],
            |r| r.get::<_, String>(4),
        )
        .optional()?;
    row.map(|data| decode(&id.dedup_key(), &data)).transpose()
}

/// Every finding, open and closed, in a stable order (for reports).
pub fn all_findings(conn: &Connection) -> Result<Vec<Finding>, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT organization, project_id, key_id, policy, data FROM findings
         ORDER BY organization, project_id, key_id, policy",
    )?;
    collect(stmt.query([])?)
}

/// Number of findings per stage, over all organisations and policies.
pub fn findings_by_stage(conn: &Connection) -> Result<Vec<(Stage, u64)>, StateError> {
    let mut stmt =
        conn.prepare_cached("SELECT stage, count(*) FROM findings GROUP BY stage ORDER BY stage")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let stage: String = row.get(0)?;
        let count: i64 = row.get(1)?;
        out.push((parse_stage(&stage)?, count.max(0) as u64));
    }
    Ok(out)
}

/// Read from the index `findings_open` alone (schema step 6).
const FINDING_COUNTS: &str = "SELECT organization, policy, stage, count(*) FROM findings
     GROUP BY organization, policy, stage ORDER BY organization, policy, stage";

/// Number of findings per (organisation, policy, stage), for the metrics and dashboards.
pub fn finding_counts(conn: &Connection) -> Result<Vec<FindingCount>, StateError> {
    let mut stmt = conn.prepare_cached(FINDING_COUNTS)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let stage: String = row.get(2)?;
        let count: i64 = row.get(3)?;
        out.push(FindingCount {
            organization: row.get(0)?,
            policy: row.get(1)?,
            stage: parse_stage(&stage)?,
            count: count.max(0) as u64,
        });
    }
    Ok(out)
}

fn parse_stage(s: &str) -> Result<Stage, StateError> {
    Stage::parse(s).ok_or_else(|| StateError::Corrupt {
        table: "findings",
        row: format!("stage {s:?}"),
        source: <serde_json::Error as serde::de::Error>::custom("unknown stage"),
    })
}

fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<Finding>, StateError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let data: String = row.get(4)?;
        match serde_json::from_str(&data) {
            Ok(f) => out.push(f),
            Err(source) => {
                // Name the row in the error; the id columns are plain NOT NULL text.
                let id = FindingId {
                    organization: row.get(0)?,
                    project_id: row.get(1)?,
                    key_id: row.get(2)?,
                    policy: row.get(3)?,
                };
                return Err(StateError::Corrupt {
                    table: "findings",
                    row: id.dedup_key(),
                    source,
                });
            }
        }
    }
    Ok(out)
}

fn decode(row: &str, data: &str) -> Result<Finding, StateError> {
    serde_json::from_str(data).map_err(|source| StateError::Corrupt {
        table: "findings",
        row: row.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action;
    use crate::inventory::{Expiry, OwnerType};
    use crate::state::Store;

    /// The findings' gauges are counted from the index alone (schema step 6), not by looking
    /// up every finding's row and JSON after each sweep.
    #[test]
    fn finding_counts_read_the_index_alone() {
        let store = Store::open_in_memory().unwrap();
        let plan: Vec<String> = store
            .with_conn(|c| {
                let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {FINDING_COUNTS}"))?;
                let rows = st.query_map([], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("COVERING INDEX findings_open")),
            "{plan:?}"
        );
    }

    fn finding(i: usize) -> Finding {
        Finding {
            dry_run_noted_at: None,
            warned_dry_run: false,
            final_notice_dry_run: false,
            withheld: None,
            rotation_withheld: None,
            expiry: Default::default(),
            id: FindingId {
                organization: "org".into(),
                project_id: format!("p{}", i % 170 % 3),
                // Ids repeat: later rows update earlier ones, within a statement and across.
                key_id: format!("k{}", i % 170),
                policy: "rotate-90d".into(),
            },
            project_name: None,
            key_name: format!("key {i}"),
            redacted_value: "sk-…abcd".into(),
            owner_type: OwnerType::User,
            owner: "alice@example.com".into(),
            owner_email: None,
            created_at: 1,
            last_used_at: None,
            last_used_unknown: false,
            expires_at: Expiry::Unknown,
            action: Action::Revoke,
            reason: "old".into(),
            stage: if i.is_multiple_of(2) {
                Stage::Detected
            } else {
                Stage::Warned
            },
            detected_at: 2,
            deadline: i as i64,
            warned_at: None,
            final_notice_at: None,
            last_notified_at: None,
            closed_at: None,
            resolution: None,
        }
    }

    fn table(store: &Store) -> Vec<(String, String, String, String, i64, String, i64)> {
        store
            .with_conn(|c| {
                let mut s = c.prepare(
                    "SELECT project_id, key_id, policy, stage, deadline, data, updated_at
                       FROM findings ORDER BY rowid",
                )?;
                let rows = s.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .unwrap()
    }

    /// The multi-row upsert leaves the table as one upsert per finding does, rowids included.
    #[test]
    fn batched_upserts_write_what_single_upserts_write() {
        let all: Vec<Finding> = (0..400).map(finding).collect();
        let (one, many) = (
            Store::open_in_memory().unwrap(),
            Store::open_in_memory().unwrap(),
        );
        for f in &all {
            one.with_conn(|c| upsert_finding(c, f, 9)).unwrap();
        }
        many.tx(|tx| upsert_findings(tx, &all, 9)).unwrap();
        assert_eq!(table(&one), table(&many));
        assert_eq!(table(&many).len(), 170);
    }
}
