//! Persistent state in SQLite: key observations, findings, revocation counter, audit log,
//! outbox and sweep history.

pub mod schema;
