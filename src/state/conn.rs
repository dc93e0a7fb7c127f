//! Opening the state database's connections: the store's own and the checkpoint's
//! (`checkpoint.rs`) are set up alike, so a checkpoint never syncs more weakly than a commit.
//! It must never run a statement beyond this setup.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How long a writer waits for another process (the CLI next to the daemon) to release the
/// database before giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the existing file at `path`, set up ([`configure`]); and whether it is in
/// WAL mode. The store's own connection, and the checkpoint's (`checkpoint.rs`).
pub(super) fn connect(path: &Path) -> Result<(Connection, bool), rusqlite::Error> {
    // No CREATE flag: `open` created the file with the right mode; `open_existing` must not.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // The first statement that reads the file is where "file is not a database" surfaces.
    let wal = configure(&conn)?;
    Ok((conn, wal))
}

/// Sets the connection up; returns whether it is in WAL mode.
pub(super) fn configure(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // `journal_mode` answers with the mode in effect ("memory" for an in-memory database).
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(mode.eq_ignore_ascii_case("wal"))
}
