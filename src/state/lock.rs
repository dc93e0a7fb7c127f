//! The sweeping lock: one process at a time sweeps with a state database (the daemon, or a
//! `run --once`). Two at once would each take the other's writes in flight for a crash's
//! leftovers: a DELETE intent "reconciled" before it is sent, a rotation's new key deleted as
//! an orphan between its mint and its record. An advisory `flock` on `<state>.lock`, held for
//! the process's life; the kernel releases it when the process ends, however it ends.
//!
//! It never touches the database itself (SQLite keeps its own locks on that file) and is not
//! taken by commands that only read or queue (`scan`, `audit`, `notify`).

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use super::StateError;

/// Held while this process may sweep; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct SweepLock {
    _file: File,
}

impl SweepLock {
    /// Takes the lock of the state database at `state`, or fails at once, naming the file,
    /// when another process holds it.
    pub fn acquire(state: &Path) -> Result<SweepLock, StateError> {
        let path = lock_path(state);
        // The lock comes before the database, so a first start creates the directory here.
        if let Some(parent) = state.parent().filter(|p| !p.as_os_str().is_empty()) {
            super::create_private_dir(parent)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .map_err(|source| StateError::CreateFile {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(SweepLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StateError::Busy { path }),
            Err(TryLockError::Error(source)) => Err(StateError::Lock { path, source }),
        }
    }
}

/// `<state>.lock`, beside the database and its `-wal` and `-shm` files.
fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let first = SweepLock::acquire(&db).unwrap();
        let err = SweepLock::acquire(&db).unwrap_err();
        assert!(matches!(&err, StateError::Busy { path } if path.ends_with("state.db.lock")));
        assert!(err.to_string().contains("state.db"), "{err}");
        drop(first);
        SweepLock::acquire(&db).unwrap();
    }
}
