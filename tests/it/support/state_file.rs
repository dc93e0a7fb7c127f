//! Reading a state database that a daemon or a `run --once` left behind (or is still writing):
//! the audit records as JSON and the WAL file next to it. Read-only: never writes the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Every audit record (the hashed JSON), in chain order. Reads the live database (WAL: readers
/// never block the daemon); empty while the file or its schema does not exist yet.
pub fn audit_records(state: &Path) -> Vec<Value> {
    if !state.exists() {
        return Vec::new();
    }
    let conn = rusqlite::Connection::open(state).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let Ok(mut st) = conn.prepare("SELECT record FROM audit ORDER BY seq") else {
        return Vec::new();
    };
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
        .collect()
}

/// SQLite's write-ahead log of the database at `db`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}
