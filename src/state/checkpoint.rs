//! The WAL checkpoint of a bulk transaction (a first sweep's commit: tens of MiB), taken on a
//! thread of its own with a connection of its own, so the sweep goes on while the pages are
//! copied into the database file.
//!
//! SQLite checkpoints on the commit that leaves the WAL over 1,000 pages, inside the
//! committing call: at 200k keys that was 0.13–0.2 s of a first sweep's 0.7 s commit, spent
//! before any notice could be delivered or any key acted on. A checkpoint adds nothing to
//! durability (a committed transaction is in the WAL, fsync'd: `synchronous = FULL`), so it
//! can come later; if the process ends first, the next commit past the threshold, or the last
//! connection's close, takes it. The store's own connection gets its threshold back as soon as
//! the transaction ends, so a small commit of the sweep's that reaches the checkpoint lock
//! before this thread does takes the checkpoint inline (nothing is lost, only the time).
//!
//! This must never touch the store's own connection, never wait for a reader or a writer
//! (`PASSIVE`), and never turn a failure into anything but a log line.

use std::path::Path;

/// Starts the checkpoint of the database at `path` on a thread of its own. Returns the thread,
/// for tests to wait on; a thread that cannot be started leaves the checkpoint to the next
/// commit (`None`).
pub(super) fn start(path: &Path) -> Option<std::thread::JoinHandle<()>> {
    let path = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("state-checkpoint".into())
        .spawn(move || {
            if let Err(e) = checkpoint(&path) {
                tracing::warn!(
                    "cannot checkpoint the state database (the next commit will): {}",
                    crate::error_chain(&e)
                );
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the state database's checkpoint thread");
            None
        }
    }
}

fn checkpoint(path: &Path) -> Result<(), rusqlite::Error> {
    // Set up as the store's own (a checkpoint syncs the database file as its connection's
    // `synchronous` says: never a weaker default, before the WAL may be reused).
    let (conn, _) = super::conn::connect(path)?;
    // (busy, WAL frames, frames checkpointed): a passive checkpoint that could not copy every
    // frame (a reader holds an older snapshot) leaves the rest to the next one.
    let _: (i64, i64, i64) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(())
}
