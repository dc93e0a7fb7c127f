//! Bodies of `keysweep audit` and `keysweep audit verify`; argument parsing and exit codes stay
//! in `crate::cli`.
//!
//! Output goes to the writer the caller passes, so tests capture it. These commands only read:
//! they never append to or repair the log.

use std::io::Write;

use crate::state::audit::{self, AuditError, AuditRow, VerifyReport};
use crate::state::{StateError, Store};

/// Output format of `keysweep audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFormat {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON array of records, each with its `seq` and `hash` and the record's fields.
    Json,
}

/// `keysweep audit [--since DATE] [--format table|json]`: lists the records at or after `since`
/// (Unix seconds) in chain order. Streams: memory does not grow with the log.
pub fn audit_list(
    store: &Store,
    since: Option<i64>,
    format: AuditFormat,
    out: &mut dyn Write,
) -> Result<(), StateError> {
    let w = |r: std::io::Result<()>| r.map_err(StateError::Output);
    store.with_conn(|conn| match format {
        AuditFormat::Json => {
            w(out.write_all(b"["))?;
            let mut first = true;
            audit::for_each(conn, since, |row| {
                w(out.write_all(if first { b"\n  " } else { b",\n  " }))?;
                first = false;
                let doc = serde_json::to_string(&row).map_err(|source| StateError::Encode {
                    what: "audit record",
                    source,
                })?;
                w(out.write_all(crate::text::json(&doc).as_bytes()))
            })?;
            w(out.write_all(if first { b"]\n" } else { b"\n]\n" }))?;
            w(out.flush())
        }
        AuditFormat::Table => {
            // Two passes over the log, so every column is as wide as its widest cell without
            // holding the log in memory.
            let mut widths = HEADER.map(|h| h.chars().count());
            audit::for_each(conn, since, |row| {
                for (width, cell) in widths.iter_mut().zip(cells(&row)) {
                    *width = (*width).max(cell.chars().count());
                }
                Ok(())
            })?;
            w(write_cells(out, &HEADER.map(str::to_string), &widths))?;
            audit::for_each(conn, since, |row| {
                w(write_cells(out, &cells(&row), &widths))
            })?;
            w(out.flush())
        }
    })
}

/// `keysweep audit verify`: recomputes the chain and prints a one-line verdict. `Err` means the
/// log is broken or unreadable; the CLI exits non-zero on it.
pub fn audit_verify(store: &Store, out: &mut dyn Write) -> Result<VerifyReport, AuditError> {
    audit_verify_anchored(store, None, out)
}

/// `keysweep audit verify [--expect-head HASH]`: [`audit_verify`], and when `expect_head` is
/// given (a head a sweep published earlier, kept where the database cannot rewrite it), the
/// chain must still contain that record: the head itself, or a record that later ones follow
/// (the log grows between the publication and the check). A cut-off tail with a rewound
/// `sqlite_sequence`, or a rebuilt log, no longer holds it.
pub fn audit_verify_anchored(
    store: &Store,
    expect_head: Option<&str>,
    out: &mut dyn Write,
) -> Result<VerifyReport, AuditError> {
    let result = store
        .with_conn(|conn| {
            Ok(audit::verify(conn).and_then(|report| match expect_head {
                None => Ok((report, None)),
                Some(expected) => match audit::seq_of_hash(conn, expected)? {
                    Some(seq) => Ok((report, Some(seq))),
                    None => Err(AuditError::HeadNotFound {
                        expected: expected.to_string(),
                    }),
                },
            }))
        })
        .unwrap_or_else(|e| Err(AuditError::Unreadable(e)));
    let line = match &result {
        Ok((report, None)) => format!(
            "audit chain OK: {} records, head {}",
            report.records, report.last_hash
        ),
        Ok((report, Some(seq))) if *seq == report.last_seq => format!(
            "audit chain OK: {} records, head {} (record {seq}) is the expected head",
            report.records, report.last_hash
        ),
        Ok((report, Some(seq))) => format!(
            "audit chain OK: {} records, head {} (record {}); the expected head is record {seq}, \
             {} record(s) were appended after it",
            report.records,
            report.last_hash,
            report.last_seq,
            report.last_seq - seq
        ),
        Err(AuditError::Broken { seq, reason }) => {
            format!("audit chain BROKEN at record {seq}: {reason}")
        }
        Err(AuditError::HeadNotFound { expected }) => format!(
            "audit chain BROKEN: no record has the expected head {expected}; records up to it \
             were removed or the log was rebuilt"
        ),
        Err(AuditError::Unreadable(e)) => {
            format!("audit chain UNREADABLE: {}", crate::error_chain(e))
        }
    };
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| AuditError::Unreadable(StateError::Output(e)))?;
    result.map(|(report, _)| report)
}

const HEADER: [&str; 11] = [
    "SEQ",
    "TIME (UTC)",
    "KIND",
    "MODE",
    "ORG",
    "PROJECT",
    "KEY",
    "NAME",
    "REDACTED",
    "POLICY",
    "MESSAGE",
];

/// One record's cells, in [`HEADER`]'s order; the message on one line.
fn cells(row: &AuditRow) -> [String; 11] {
    let r = &row.record;
    let time = chrono::DateTime::from_timestamp(r.at, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| r.at.to_string());
    let dash = |v: &Option<String>| {
        v.as_deref()
            .map_or_else(|| "-".to_string(), crate::text::terminal)
    };
    [
        row.seq.to_string(),
        time,
        r.kind.as_str().to_string(),
        r.mode.as_str().to_string(),
        dash(&r.organization),
        dash(&r.project_id),
        dash(&r.key_id),
        dash(&r.key_name),
        dash(&r.redacted_value),
        dash(&r.policy),
        // One record per line, whatever the message holds.
        r.message.replace(['\n', '\r'], " "),
    ]
    .map(|c| crate::text::terminal(&c))
}

/// A line of cells padded to `widths` (SEQ right-aligned, the message last and unpadded).
fn write_cells(
    out: &mut dyn Write,
    cells: &[String; 11],
    widths: &[usize; 11],
) -> std::io::Result<()> {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        let pad = width.saturating_sub(cell.chars().count());
        if i == 0 {
            line.extend(std::iter::repeat_n(' ', pad));
            line.push_str(cell);
        } else if i + 1 == cells.len() {
            line.push_str(cell);
        } else {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', pad));
        }
        if i + 1 < cells.len() {
            line.push_str("  ");
        }
    }
    writeln!(out, "{}", line.trim_end())
}
