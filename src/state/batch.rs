//! Multi-row INSERT statements for the tables a sweep writes in bulk (key observations, and in
//! its commit audit records, findings, outbox rows): rows are buffered and written
//! [`BATCH_ROWS`] at a time with one cached prepared statement, so a first sweep's 22k findings
//! cost ~170 statements instead of 22k. The rows, their order and the resulting table contents
//! are exactly those of one INSERT per row (SQLite applies a multi-row VALUES list row by row,
//! in order, conflicts included).
//!
//! A [`MultiInsert`] must be used inside a transaction and finished ([`MultiInsert::finish`])
//! before anything else writes to its table: it never commits, and rows still buffered when it
//! is dropped are not written. Callers wrap it so that finishing cannot be forgotten.

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, params_from_iter};

use crate::state::StateError;

/// Rows per statement (the issue asked for 64–256). 128 rows of up to 12 columns are 1,536
/// parameters, far below SQLite's limit of 32,766; the per-statement cost (a step, a reset,
/// the bindings' bookkeeping) is then paid once per 128 rows. Not measured on a quiet machine
/// yet: see `benches/README.md`.
pub(crate) const BATCH_ROWS: usize = 128;

/// Buffers rows of `width` values for `INSERT … VALUES (…), (…) …`. Values are owned, or
/// borrowed for `'v` from rows that outlive the insert (no copy of a listed key's strings).
pub(crate) struct MultiInsert<'c, 'v> {
    conn: &'c Connection,
    head: &'static str,
    width: usize,
    /// The SQL of a full batch and of one row, built once.
    full_sql: String,
    row_sql: String,
    values: Vec<ToSqlOutput<'v>>,
    changed: usize,
}

impl<'c, 'v> MultiInsert<'c, 'v> {
    /// `head`: `INSERT … (columns) VALUES`; `tail`: what follows the rows (an `ON CONFLICT`
    /// clause, or nothing); `width`: values per row.
    pub(crate) fn new(
        conn: &'c Connection,
        head: &'static str,
        width: usize,
        tail: &'static str,
    ) -> MultiInsert<'c, 'v> {
        MultiInsert {
            conn,
            head,
            width,
            full_sql: sql(head, width, BATCH_ROWS, tail),
            row_sql: sql(head, width, 1, tail),
            values: Vec::with_capacity(width * BATCH_ROWS),
            changed: 0,
        }
    }

    /// Adds one row (exactly `width` values); writes the batch once it is full.
    pub(crate) fn push<const N: usize>(
        &mut self,
        row: [ToSqlOutput<'v>; N],
    ) -> Result<(), StateError> {
        debug_assert_eq!(N, self.width, "row width of {}", self.head);
        self.values.extend(row);
        if self.values.len() >= self.width * BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the rows still buffered. Returns the rows changed in all (SQLite's count: an
    /// `INSERT OR IGNORE` of an existing row counts 0, an upsert counts 1).
    pub(crate) fn finish(mut self) -> Result<usize, StateError> {
        self.flush()?;
        Ok(self.changed)
    }

    fn flush(&mut self) -> Result<(), StateError> {
        let rows = self.values.len() / self.width;
        if rows == 0 {
            return Ok(());
        }
        if rows == BATCH_ROWS {
            let values = params_from_iter(self.values.drain(..));
            self.changed += self.conn.prepare_cached(&self.full_sql)?.execute(values)?;
            return Ok(());
        }
        // The last, shorter batch: row by row with the cached one-row statement, so that no
        // statement of a varying size is parsed (or evicts the reused ones from the cache).
        let mut stmt = self.conn.prepare_cached(&self.row_sql)?;
        let mut values = self.values.drain(..);
        for _ in 0..rows {
            self.changed += stmt.execute(params_from_iter(values.by_ref().take(self.width)))?;
        }
        Ok(())
    }
}

fn sql(head: &str, width: usize, rows: usize, tail: &str) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    let mut out = String::with_capacity(head.len() + tail.len() + rows * (row.len() + 2) + 2);
    out.push_str(head);
    out.push(' ');
    for i in 0..rows {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&row);
    }
    out.push(' ');
    out.push_str(tail);
    out
}

/// A text value, owned.
pub(crate) fn text(s: impl Into<String>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(Value::Text(s.into()))
}

/// A text value borrowed for the insert's lifetime.
pub(crate) fn text_ref(s: &str) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
}

/// An integer value, or NULL.
pub(crate) fn int(i: impl Into<Option<i64>>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(i.into().map_or(Value::Null, Value::Integer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        c
    }

    fn rows(c: &Connection) -> Vec<(i64, String)> {
        let mut s = c.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Full batches, a short last one, and conflicts inside one statement are applied in order
    /// exactly as one statement per row would.
    #[test]
    fn batches_write_what_one_statement_per_row_writes() {
        let head = "INSERT INTO t (k, v) VALUES";
        let tail = "ON CONFLICT (k) DO UPDATE SET v = t.v || excluded.v";
        let input: Vec<(i64, String)> = (0..300_i64).map(|i| (i % 170, format!("v{i}"))).collect();
        let (one, many) = (table(), table());
        for (k, v) in &input {
            one.execute(&format!("{head} (?1, ?2) {tail}"), rusqlite::params![k, v])
                .unwrap();
        }
        let mut insert = MultiInsert::new(&many, head, 2, tail);
        for (k, v) in &input {
            insert.push([int(*k), text_ref(v)]).unwrap();
        }
        assert_eq!(insert.finish().unwrap(), 300);
        assert_eq!(rows(&one), rows(&many));
        assert_eq!(rows(&many).len(), 170);
    }

    #[test]
    fn nothing_pushed_writes_nothing() {
        let c = table();
        let insert = MultiInsert::new(&c, "INSERT INTO t (k, v) VALUES", 2, "");
        assert_eq!(insert.finish().unwrap(), 0);
        assert!(rows(&c).is_empty());
    }
}
