//! Persistent state in SQLite: key observations, findings, revocation counter, audit log,
//! outbox and sweep history.
//!
//! [`Store`] owns the one connection of the process behind a mutex. Everything that writes goes
//! through [`Store::tx`] so that a sweep commits its findings, outbox rows and audit records
//! atomically; the per-table modules (`findings`, `observations`, `audit`, …) are plain functions
//! on a `&rusqlite::Connection` (a `&Transaction` derefs to one) so they compose inside it.
//!
//! Durability is chosen for the audit log: WAL with `synchronous = FULL`, so a record whose
//! transaction committed survives a crash or power loss right after. The database file is created
//! with mode 0600 (the -wal/-shm files inherit it).
//!
//! `state/` is the only module that runs SQL, and it knows no type of the modules that store
//! things here through it (`notify` converts its messages and alerts to and from the plain rows
//! of `outbox` and `alerts`).
//!
//! Nothing in state may ever hold a secret: the types stored here (findings, keys, audit records)
//! only carry ids, names and `redacted_value`s. Do not add a column or field that could.

pub mod alerts;
pub mod audit;
mod batch;
mod checkpoint;
pub mod cli;
mod conn;
pub mod findings;
pub mod intel;
mod lock;
pub mod observations;
pub mod outbox;
pub mod revocations;
pub mod rotations;
pub mod schema;
pub mod sweeps;

pub use lock::SweepLock;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, Transaction, TransactionBehavior};

/// Errors of the state database. Messages name the file or the row; they never contain a secret
/// because nothing stored here is one. A message never repeats its source: print the chain
/// (`{:#}`, or [`crate::error_chain`]) to see the cause.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the state database {path}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state database {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot open the state database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state database {path} has schema version {found}, but this keysweep only knows \
         versions up to {known}; it was written by a newer keysweep (upgrade keysweep, or point \
         `state_path` at another file)"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("state database migration to version {version} failed")]
    Migration {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON column did not decode: the row was written by something else or damaged.
    #[error("corrupt {table} row {row}")]
    Corrupt {
        table: &'static str,
        row: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Another process sweeps with this state database ([`SweepLock`]).
    #[error(
        "another keysweep process is sweeping with this state database (it holds {path}): \
         the daemon, or a `run --once`. Two at once would take each other's writes in flight \
         for a crash's leftovers; stop the other one, or wait for it to finish"
    )]
    Busy { path: PathBuf },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a command's output failed (e.g. a closed pipe).
    #[error("cannot write output")]
    Output(#[source] std::io::Error),
}

/// The state database. Cheap to clone; all clones share one connection.
///
/// The connection is synchronous: async callers run state work in `spawn_blocking`. Calls do not
/// nest: calling [`Store::tx`] (or [`audit::append_durable`]) from inside a `tx` closure on the
/// same store deadlocks. Inside a closure, use the functions on the `&Transaction` you were given.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Option<PathBuf>,
    /// Whether the file is in WAL mode (a file system may refuse it): only then is a bulk
    /// transaction's checkpoint taken apart.
    wal: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    ///
    /// Refuses a database whose schema is newer than this binary knows: an older keysweep must
    /// not write into tables whose meaning it does not understand.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(parent)?;
        }
        create_private_file(path)?;
        Self::open_file(path)
    }

    /// Like [`Store::open`] but refuses to create the file: for read-mostly commands such as
    /// `keysweep audit verify`, where a mistyped path must not yield a fresh, empty — and so
    /// trivially "valid" — audit log.
    pub fn open_existing(path: &Path) -> Result<Store, StateError> {
        if !path.exists() {
            return Err(StateError::Missing {
                path: path.to_path_buf(),
            });
        }
        Self::open_file(path)
    }

    /// A private in-memory database, for unit tests.
    pub fn open_in_memory() -> Result<Store, StateError> {
        let mut conn = Connection::open_in_memory()?;
        // "memory": no WAL, and no second connection could see this database anyway.
        let wal = conn::configure(&conn).map_err(StateError::Sqlite)?;
        migrate(&mut conn, Path::new(":memory:"))?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: None,
            wal,
        })
    }

    fn open_file(path: &Path) -> Result<Store, StateError> {
        let open_err = |source| StateError::Open {
            path: path.to_path_buf(),
            source,
        };
        let (mut conn, wal) = conn::connect(path).map_err(open_err)?;
        migrate(&mut conn, path)?;
        warn_if_readable_by_others(path);
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: Some(path.to_path_buf()),
            wal,
        })
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` in one write transaction and commits it if `f` returns `Ok`; on `Err` (or a
    /// panic) everything `f` wrote is rolled back.
    ///
    /// The transaction is `IMMEDIATE`: it takes the write lock up front, so two processes never
    /// both read the audit head and then race to append after it.
    pub fn tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        immediate_tx(&mut self.lock(), f)
    }

    /// Like [`Store::tx`], for a transaction that writes many rows (a sweep's commit): its page
    /// cache's memory is released afterwards (`PRAGMA shrink_memory`), so the daemon does not
    /// keep it between sweeps.
    ///
    /// The cache keeps SQLite's default size (2 MiB): a first sweep's commit dirties more (about
    /// 2 KiB per new finding) and spills the surplus to the WAL before its commit, which stays
    /// atomic. Raising the cache for the commit (64, then 16 MiB) was measured (issue 15,
    /// `benches/README.md`): it made the commit no faster, and every sweep's peak RSS 12–22 MiB
    /// larger (at 100k keys: 79 → 65 MiB in a first sweep).
    ///
    /// Its WAL checkpoint is taken on a thread of its own (`checkpoint.rs`), not inside the
    /// commit: the sweep goes on meanwhile.
    pub fn bulk_tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.bulk_tx_then(f, checkpoint::start)
            .map(|(value, _)| value)
    }

    /// [`Store::bulk_tx`], with the checkpoint started by `checkpoint` (tests look at the file
    /// first) and its thread returned, if one was started, for tests to wait on.
    fn bulk_tx_then<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StateError>,
        checkpoint: impl FnOnce(&Path) -> Option<std::thread::JoinHandle<()>>,
    ) -> Result<(T, Option<std::thread::JoinHandle<()>>), StateError> {
        // An in-memory store is never in WAL mode.
        let mut held = Paused::new(self.lock(), self.wal);
        let result = immediate_tx(&mut held.conn, f);
        // The transaction is over either way; failing to release the cache costs only memory,
        // and must not turn a committed sweep into a failed one.
        if let Err(e) = held.conn.execute_batch("PRAGMA shrink_memory") {
            tracing::warn!(error = %e, "cannot release the state database's page cache");
        }
        let paused = held.pages.is_some();
        // Restores the threshold (as a panic in `f` would, unwinding) and releases the lock.
        drop(held);
        let value = result?;
        let checkpoint = (self.path.as_deref())
            .filter(|_| paused)
            .and_then(checkpoint);
        Ok((value, checkpoint))
    }

    /// Runs `f` on the connection without opening a transaction: for reads, and for the
    /// per-table functions that open their own when called outside one.
    pub fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let conn = self.lock();
        f(&conn)
    }

    /// Whether the database answers a trivial query (for `/readyz`). A connection in use (a
    /// sweep's commit, which can take seconds) is answering its user: reachable, without
    /// waiting for it, so a readiness probe never queues behind a commit.
    pub fn ping(&self) -> Result<(), StateError> {
        let conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a closure dropped its `Transaction`, which rolled back; the connection
        // itself is intact, so a poisoned lock is safe to keep using.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The connection with its automatic checkpoints paused (a file database's in WAL mode; an
/// in-memory one, or a file whose file system refused WAL, has no WAL to checkpoint apart),
/// until this is dropped, a panic included: a connection left paused would let its WAL grow
/// until the process ends.
struct Paused<'a> {
    conn: MutexGuard<'a, Connection>,
    /// The threshold to restore (`None`: nothing was paused).
    pages: Option<i64>,
}

impl<'a> Paused<'a> {
    fn new(conn: MutexGuard<'a, Connection>, wal_file: bool) -> Paused<'a> {
        let pages = wal_file
            .then(|| conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get::<_, i64>(0)))
            .and_then(Result::ok)
            .filter(|_| (conn.pragma_update(None, "wal_autocheckpoint", 0_i64)).is_ok());
        Paused { conn, pages }
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        // Failing to restore costs time (the WAL is checkpointed at close, or by the next
        // bulk transaction's thread), never data.
        if let Some(pages) = self.pages
            && let Err(e) = self.conn.pragma_update(None, "wal_autocheckpoint", pages)
        {
            tracing::warn!(error = %e, "cannot restore the state database's checkpoints");
        }
    }
}

fn immediate_tx<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> Result<T, StateError>,
) -> Result<T, StateError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// Runs `f` inside a transaction: the caller's if one is open, else a new `IMMEDIATE` one that is
/// committed on success. Lets the per-table functions be both fast (one transaction for 100k
/// rows) and atomic when called on a bare connection.
pub(crate) fn in_tx<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StateError>,
) -> Result<T, StateError> {
    if !conn.is_autocommit() {
        return f(conn);
    }
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// Applies the missing steps of [`schema::MIGRATIONS`] in one transaction. The version is read
/// again inside the transaction, so two processes starting together migrate only once.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let known = schema::MIGRATIONS.len();
    let too_new = |found| StateError::TooNew {
        path: path.to_path_buf(),
        found,
        known,
    };
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > known as i64 {
        return Err(too_new(version));
    }
    if version == known as i64 {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > known as i64 {
        return Err(too_new(version));
    }
    for (step, sql) in schema::MIGRATIONS
        .iter()
        .enumerate()
        .skip(version.max(0) as usize)
    {
        let target = step + 1;
        tx.execute_batch(sql)
            .and_then(|()| tx.pragma_update(None, "user_version", target as i64))
            .map_err(|source| StateError::Migration {
                version: target,
                source,
            })?;
    }
    tx.commit()?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| StateError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates the database file with mode 0600 if it does not exist yet. SQLite would create it with
/// the umask's mode (often world-readable), and its -wal/-shm files copy the main file's mode.
fn create_private_file(path: &Path) -> Result<(), StateError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StateError::CreateFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// An existing file is not chmod-ed behind the operator's back (it may be shared on purpose),
/// but a readable audit log and finding history deserve a warning.
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "the state database is accessible to other users; consider chmod 600"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_store_is_migrated() {
        let store = Store::open_in_memory().unwrap();
        let v: i64 = store
            .with_conn(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(v, schema::MIGRATIONS.len() as i64);
    }

    fn insert_revocation(c: &Connection) -> Result<(), StateError> {
        c.execute(
            "INSERT INTO revocations (at, organization, project_id, key_id, run_id) \
             VALUES (1, 'o', 'p', 'k', 'r')",
            [],
        )?;
        Ok(())
    }

    fn revocations(store: &Store) -> i64 {
        store
            .with_conn(|c| Ok(c.query_row("SELECT count(*) FROM revocations", [], |r| r.get(0))?))
            .unwrap()
    }

    fn failure() -> Result<(), StateError> {
        Err(StateError::Missing {
            path: PathBuf::from("x"),
        })
    }

    #[test]
    fn tx_rolls_back_on_error() {
        let store = Store::open_in_memory().unwrap();
        let res: Result<(), StateError> = store.tx(|tx| {
            insert_revocation(tx)?;
            failure()
        });
        assert!(res.is_err());
        assert_eq!(revocations(&store), 0);
    }

    /// On a new database: writes 8 MiB of rows in one bulk transaction that then returns
    /// `fail` or `Ok`, and returns how much the WAL grew before the end and the rows after it.
    /// 8 × 256 outbox rows of 4,000 bytes: more than the page cache holds.
    fn write_rows(tx: &Transaction<'_>) -> Result<(), StateError> {
        for i in 0..8 * 256 {
            tx.execute(
                "INSERT INTO outbox (message_id, channel, recipient, kind, payload, \
                 created_at, next_attempt_at) VALUES (?1, 'c', 'r', 'k', ?2, 0, 0)",
                rusqlite::params![format!("m{i}"), "x".repeat(4000)],
            )?;
        }
        Ok(())
    }

    fn bulk_write(fail: bool) -> (u64, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let wal = dir.path().join("s.db-wal");
        let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let before = size();
        let write = |tx: &Transaction<'_>| {
            write_rows(tx)?;
            let grown = size() - before;
            if fail {
                // Any error ends the transaction the same way.
                return Err(rusqlite::Error::InvalidQuery.into());
            }
            Ok(grown)
        };
        // The checkpoint's thread is waited for: the directory goes when this returns.
        let result = (store.bulk_tx_then(write, checkpoint::start)).map(|(grown, thread)| {
            if let Some(t) = thread {
                t.join().unwrap();
            }
            grown
        });
        let rows = store
            .with_conn(|c| Ok(c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?))
            .unwrap();
        (result.unwrap_or(0), rows)
    }

    /// A bulk transaction larger than the page cache spills to the WAL before its end, and
    /// stays atomic: all of its rows when it commits, none when it fails after the spill. It
    /// runs with the connection's own cache, which is left as it was.
    #[test]
    fn a_bulk_transaction_that_spills_is_still_all_or_nothing() {
        let (grown, rows) = bulk_write(false);
        assert!(grown > 4 << 20, "the commit did not spill ({grown} bytes)");
        assert_eq!(rows, 8 * 256);
        assert_eq!(bulk_write(true).1, 0, "a failed bulk transaction left rows");
        let store = Store::open_in_memory().unwrap();
        let cache = |s: &Store| {
            s.with_conn(|c| Ok(c.query_row("PRAGMA cache_size", [], |r| r.get::<_, i64>(0))?))
                .unwrap()
        };
        let default = cache(&store);
        let inside =
            store.bulk_tx(|tx| Ok(tx.query_row("PRAGMA cache_size", [], |r| r.get::<_, i64>(0))?));
        assert_eq!(inside.unwrap(), default);
        assert_eq!(cache(&store), default);
    }

    /// A bulk transaction's checkpoint is not taken by its commit (the rows stay in the WAL)
    /// but by a thread of its own, after which the rows are in the database file; the
    /// connection's own threshold is left as it was.
    #[test]
    fn a_bulk_transactions_checkpoint_is_taken_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).unwrap();
        let threshold = |s: &Store| {
            s.with_conn(|c| {
                Ok(c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get::<_, i64>(0))?)
            })
            .unwrap()
        };
        let before = threshold(&store);
        let db_size = || std::fs::metadata(&path).unwrap().len();
        let small = db_size();
        let ((), checkpoint) = store
            .bulk_tx_then(write_rows, |p| {
                // Committed, and still all in the WAL: the commit did not checkpoint.
                assert_eq!(db_size(), small, "the commit checkpointed by itself");
                checkpoint::start(p)
            })
            .unwrap();
        let checkpoint = checkpoint.expect("a checkpoint thread");
        checkpoint.join().unwrap();
        assert!(
            db_size() > small + (4 << 20),
            "the rows reached the database file ({small} → {} bytes)",
            db_size()
        );
        assert_eq!(threshold(&store), before);
        // A panic inside the transaction leaves the threshold as it was too.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.bulk_tx(|_| -> Result<(), StateError> { panic!("inside the transaction") })
        }));
        assert!(panicked.is_err());
        assert_eq!(threshold(&store), before);
        // An in-memory store has nothing to checkpoint.
        let mem = Store::open_in_memory().unwrap();
        let started = mem.bulk_tx_then(|_| Ok(()), checkpoint::start).unwrap().1;
        assert!(started.is_none());
        // Nor has a file whose file system refused WAL.
        assert!(store.wal, "a file store is in WAL mode here");
        let mut refused = Store::open(&dir.path().join("d.db")).unwrap();
        refused.wal = false;
        let started = refused
            .bulk_tx_then(|_| Ok(()), checkpoint::start)
            .unwrap()
            .1;
        assert!(started.is_none());
    }

    #[test]
    fn in_tx_joins_an_open_transaction() {
        let store = Store::open_in_memory().unwrap();
        let res: Result<(), StateError> = store.tx(|tx| {
            in_tx(tx, insert_revocation)?;
            // The outer transaction decides: rolling it back undoes the inner write too.
            failure()
        });
        assert!(res.is_err());
        assert_eq!(revocations(&store), 0);
    }

    /// A readiness ping while a long transaction holds the connection answers at once.
    #[test]
    fn ping_does_not_wait_for_a_transaction_in_progress() {
        let store = Store::open_in_memory().unwrap();
        let (held, release) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                store
                    .tx(|_| {
                        held.wait();
                        release.wait();
                        Ok(())
                    })
                    .unwrap();
            });
            held.wait();
            // The transaction ends only after this answer: a ping that waited for the
            // connection would not answer within the time.
            let (tx, rx) = std::sync::mpsc::channel();
            let pinger = &store;
            s.spawn(move || tx.send(pinger.ping().is_ok()));
            let answer = rx.recv_timeout(std::time::Duration::from_secs(10));
            release.wait();
            assert_eq!(answer, Ok(true), "the ping waited for the transaction");
        });
        assert!(store.ping().is_ok());
    }
}
