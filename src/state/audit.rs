//! The append-only, hash-chained audit log: every decision to act and every action.
//!
//! # Chain
//!
//! Records are numbered `seq = 1, 2, 3, …` without gaps. Each row stores
//!
//! - `record`: the record's canonical JSON, i.e. the exact output of `serde_json::to_string` on
//!   [`AuditRecord`] — compact, fields in the struct's declaration order, object keys inside
//!   `inputs`/`response` in serde_json's map order (sorted), UTF-8, no trailing newline;
//! - `prev_hash`: the previous row's `hash`, or 64 `0`s ([`GENESIS_HASH`]) for `seq = 1`;
//! - `hash` = lowercase hex of SHA-256(`prev_hash` as its 64 ASCII hex digits ‖ `record` bytes).
//!
//! [`verify`] hashes the *stored bytes*, so it never depends on re-serialising a record: an
//! independent verifier needs only `sqlite3` and `sha256sum`. Because of that, a field may be
//! added to [`AuditRecord`] later (at the end, with `#[serde(default)]`) without invalidating
//! old records. Never rename or remove one.
//!
//! # What the chain proves
//!
//! Any change to a stored record, its `at`/`kind` copies, or the removal or reordering of a row
//! before the head breaks the chain, and so does cutting off the tail (the highest `seq` ever
//! used is kept in `sqlite_sequence`). Someone able to rewrite the whole file consistently —
//! recomputing every later hash — is not detected by the chain alone; compare the head hash that
//! [`verify`] reports against one recorded elsewhere (logs, a ticket) to catch that.
//!
//! # Intent and outcome
//!
//! Before a DELETE, the revoker appends an [`AuditKind::Intent`] with [`append_durable`]; after
//! it, an [`AuditKind::Outcome`] whose `refers_to` is the intent's `seq`. A crash in between
//! leaves an intent without outcome: [`unmatched_intents`] finds it, and the next run re-reads the
//! key and writes an [`AuditKind::Reconciled`] record referring to it.
//!
//! Records never contain a secret: keys appear by id, name and `redacted_value` only, and
//! `response` carries an HTTP status and a short error, never a request header.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params, types::ValueRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Mode;
use crate::inventory::Key;
use crate::policy::finding::Finding;
use crate::state::batch::{self, MultiInsert};
use crate::state::{StateError, Store, in_tx};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A configuration was loaded (at start or on reload): its hash and mode.
    Config,
    /// A sweep of an organisation started or finished (with its summary in `inputs`).
    Sweep,
    /// Policy decided to act on a key: a finding was opened or moved to a new stage, with the
    /// deadline fixed for it.
    Decision,
    /// A warning, reminder or final notice about a finding was queued for delivery.
    Notice,
    /// A due action was not taken, and why: dry-run, cap, kill switch, incomplete listing, the
    /// re-read key changed, a service-account key under `notify-only`.
    Skipped,
    /// A DELETE is about to be sent. Written durably before the request.
    Intent,
    /// What the DELETE returned. `refers_to` is the intent's `seq`.
    Outcome,
    /// A later run settled an intent that had no outcome (crash in between): the key was found
    /// gone ("deleted") or still present ("not deleted"). `refers_to` is the intent's `seq`.
    Reconciled,
    /// A finding closed without revocation: the key was rotated or deleted by its owner, or no
    /// longer violates the policy.
    Resolved,
    /// A key was exempted (or its exemption expired) for a policy.
    Exempted,
    /// An enforcer alert was raised to the operators.
    Alert,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Config => "config",
            AuditKind::Sweep => "sweep",
            AuditKind::Decision => "decision",
            AuditKind::Notice => "notice",
            AuditKind::Skipped => "skipped",
            AuditKind::Intent => "intent",
            AuditKind::Outcome => "outcome",
            AuditKind::Reconciled => "reconciled",
            AuditKind::Resolved => "resolved",
            AuditKind::Exempted => "exempted",
            AuditKind::Alert => "alert",
        }
    }
}

/// One audit record. The field order is part of the hashed format (see the module docs): append
/// new fields at the end, with `#[serde(default)]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it happened (Unix seconds; the sweep's `now`, which `--now` may move).
    pub at: i64,
    /// The sweep (or command) that wrote it, also carried in the logs' spans.
    pub run_id: String,
    pub kind: AuditKind,
    /// The mode in effect (after `--dry-run`).
    pub mode: Mode,
    pub organization: Option<String>,
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    /// The only form of a key's value that may ever be recorded.
    pub redacted_value: Option<String>,
    /// Owner as displayed (e-mail, service-account name or id) and its type, e.g.
    /// `alice@example.com (user)`.
    pub owner: Option<String>,
    pub policy: Option<String>,
    /// SHA-256 of the effective configuration (without secrets) the decision was made under.
    pub config_hash: String,
    /// What the decision saw: `created_at`, `last_used_at`, `deadline`, stage, cap counts, …
    #[serde(default)]
    pub inputs: serde_json::Value,
    /// What the API answered: `{"status": 200, "deleted": true}`, or an error summary.
    #[serde(default)]
    pub response: serde_json::Value,
    /// One human sentence: what and why.
    pub message: String,
    /// For `outcome` and `reconciled`: the `seq` of the intent being answered.
    #[serde(default)]
    pub refers_to: Option<i64>,
}

impl AuditRecord {
    /// A record with no key attached; fill the rest with the `with_*` helpers or directly.
    pub fn new(
        at: i64,
        run_id: impl Into<String>,
        kind: AuditKind,
        mode: Mode,
        config_hash: impl Into<String>,
        message: impl Into<String>,
    ) -> AuditRecord {
        AuditRecord {
            at,
            run_id: run_id.into(),
            kind,
            mode,
            organization: None,
            project_id: None,
            key_id: None,
            key_name: None,
            redacted_value: None,
            owner: None,
            policy: None,
            config_hash: config_hash.into(),
            inputs: serde_json::Value::Null,
            response: serde_json::Value::Null,
            message: message.into(),
            refers_to: None,
        }
    }

    /// Identifies the key and records the inputs seen in this listing (`created_at`,
    /// `last_used_at`, owner access). Existing `inputs` entries are kept.
    pub fn with_key(mut self, key: &Key) -> AuditRecord {
        self.organization = Some(key.organization.clone());
        self.project_id = Some(key.project_id.clone());
        self.key_id = Some(key.id.clone());
        self.key_name = Some(key.name.clone());
        self.redacted_value = Some(key.redacted_value.clone());
        self.owner = Some(format!(
            "{} ({})",
            key.owner.display(),
            key.owner.kind.as_str()
        ));
        self.merge_inputs([
            ("created_at", serde_json::json!(key.created_at)),
            last_use_input(key.last_used_at, key.last_used_unknown),
            (
                "owner_project_access",
                serde_json::to_value(key.owner_access).unwrap_or(serde_json::Value::Null),
            ),
        ]);
        self
    }

    /// Identifies the key and policy of a finding and records its inputs and lifecycle
    /// (`created_at`, `last_used_at`, `stage`, `detected_at`, `deadline`, `reason`).
    pub fn with_finding(mut self, finding: &Finding) -> AuditRecord {
        self.organization = Some(finding.id.organization.clone());
        self.project_id = Some(finding.id.project_id.clone());
        self.key_id = Some(finding.id.key_id.clone());
        self.key_name = Some(finding.key_name.clone());
        self.redacted_value = Some(finding.redacted_value.clone());
        self.owner = Some(format!(
            "{} ({})",
            finding.owner,
            finding.owner_type.as_str()
        ));
        self.policy = Some(finding.id.policy.clone());
        self.merge_inputs([
            ("created_at", serde_json::json!(finding.created_at)),
            last_use_input(finding.last_used_at, finding.last_used_unknown),
            ("action", serde_json::json!(finding.action)),
            ("stage", serde_json::json!(finding.stage)),
            ("detected_at", serde_json::json!(finding.detected_at)),
            ("deadline", serde_json::json!(finding.deadline)),
            ("reason", serde_json::json!(finding.reason)),
        ]);
        self
    }

    pub fn with_response(mut self, response: serde_json::Value) -> AuditRecord {
        self.response = response;
        self
    }

    pub fn refers_to(mut self, intent_seq: i64) -> AuditRecord {
        self.refers_to = Some(intent_seq);
        self
    }

    fn merge_inputs<const N: usize>(&mut self, entries: [(&str, serde_json::Value); N]) {
        if !self.inputs.is_object() {
            self.inputs = serde_json::Value::Object(serde_json::Map::new());
        }
        if let serde_json::Value::Object(map) = &mut self.inputs {
            for (k, v) in entries {
                map.entry(k).or_insert(v);
            }
        }
    }

    /// The canonical JSON that is stored and hashed.
    pub fn canonical_json(&self) -> Result<String, StateError> {
        serde_json::to_string(self).map_err(|source| StateError::Encode {
            what: "audit record",
            source,
        })
    }
}

/// A key's last use as a decision input. `last_used_at: null` means "never used", so a listing
/// that left the field out is recorded as `last_used_unknown: true` instead.
fn last_use_input(at: Option<i64>, unknown: bool) -> (&'static str, serde_json::Value) {
    if unknown {
        ("last_used_unknown", serde_json::Value::Bool(true))
    } else {
        ("last_used_at", serde_json::json!(at))
    }
}

/// Position of an appended record in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub hash: String,
}

/// A stored record with its position in the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub hash: String,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Number of records checked.
    pub records: u64,
    /// `seq` of the head (0 for an empty log).
    pub last_seq: i64,
    /// Hash of the head ([`GENESIS_HASH`] for an empty log). Record it elsewhere to detect a
    /// consistent rewrite of the whole file later.
    pub last_hash: String,
}

/// Why the audit log did not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The chain does not hold at record `seq`: tampering, a deleted row, or corruption.
    #[error("audit chain broken at record {seq}: {reason}")]
    Broken { seq: i64, reason: String },
    /// The database could not be read (e.g. "database disk image is malformed"). For an audit
    /// log this is a failed verification too.
    #[error("audit log unreadable")]
    Unreadable(#[from] StateError),
    /// The chain holds, but no record has the head hash published earlier (`--expect-head`):
    /// records up to it were cut off or the whole log was rebuilt.
    #[error("the expected head {expected} is not in the audit log")]
    HeadNotFound { expected: String },
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Unreadable(StateError::Sqlite(e))
    }
}

/// SHA-256(prev_hash ‖ record), lowercase hex.
pub fn chain_hash(prev_hash: &[u8], record: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(record);
    hex::encode(hasher.finalize())
}

/// Appends records after the current head in multi-row statements (see [`append_batched`]).
pub struct Appender<'c> {
    insert: MultiInsert<'c, 'static>,
    seq: i64,
    prev_hash: String,
}

impl Appender<'_> {
    /// Appends `record` (written with the batch it falls in) and returns its position: the
    /// same `seq` and `hash` that [`append`] would give it at this point of the chain.
    pub fn push(&mut self, record: &AuditRecord) -> Result<AuditEntry, StateError> {
        let json = record.canonical_json()?;
        let seq = self.seq + 1;
        let hash = chain_hash(self.prev_hash.as_bytes(), json.as_bytes());
        let prev_hash = std::mem::replace(&mut self.prev_hash, hash.clone());
        self.insert.push([
            batch::int(seq),
            batch::int(record.at),
            batch::text(record.kind.as_str()),
            batch::text(json),
            batch::text(prev_hash),
            batch::text(hash.as_str()),
        ])?;
        self.seq = seq;
        Ok(AuditEntry { seq, hash })
    }
}

/// Runs `f` with an [`Appender`] positioned after the current head, then writes what is still
/// buffered. The records, their order and their hashes are exactly those of one [`append`] per
/// record, in `BATCH_ROWS`-row INSERTs. Joins the caller's transaction if one is open (else runs
/// in its own); `f` must not write audit records any other way while it runs.
pub fn append_batched<T>(
    conn: &Connection,
    f: impl FnOnce(&mut Appender<'_>) -> Result<T, StateError>,
) -> Result<T, StateError> {
    in_tx(conn, |conn| {
        let (seq, prev_hash) = match head(conn)? {
            Some(h) => (h.seq, h.hash),
            None => (0, GENESIS_HASH.to_string()),
        };
        let mut appender = Appender {
            insert: MultiInsert::new(
                conn,
                "INSERT INTO audit (seq, at, kind, record, prev_hash, hash) VALUES",
                6,
                "",
            ),
            seq,
            prev_hash,
        };
        let value = f(&mut appender)?;
        appender.insert.finish()?;
        Ok(value)
    })
}

/// Appends `records` in order with [`append_batched`].
pub fn append_all<'r>(
    conn: &Connection,
    records: impl IntoIterator<Item = &'r AuditRecord>,
) -> Result<(), StateError> {
    append_batched(conn, |log| {
        for r in records {
            log.push(r)?;
        }
        Ok(())
    })
}

/// Appends `record` after the current head and returns its position.
///
/// Joins the caller's transaction if one is open (the record then commits or rolls back with
/// the findings and outbox rows written alongside it); otherwise it runs in its own.
pub fn append(conn: &Connection, record: &AuditRecord) -> Result<AuditEntry, StateError> {
    let json = record.canonical_json()?;
    in_tx(conn, |conn| {
        let (seq, prev_hash) = match head(conn)? {
            Some(h) => (h.seq + 1, h.hash),
            None => (1, GENESIS_HASH.to_string()),
        };
        let hash = chain_hash(prev_hash.as_bytes(), json.as_bytes());
        conn.prepare_cached(
            "INSERT INTO audit (seq, at, kind, record, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            seq,
            record.at,
            record.kind.as_str(),
            json,
            prev_hash,
            hash
        ])?;
        Ok(AuditEntry { seq, hash })
    })
}

/// Appends `record` in its own transaction and commits it (fsync'd: `synchronous = FULL`) before
/// returning. Used for the intent before a DELETE and the outcome after it. Must not be called
/// from inside a [`Store::tx`] closure of the same store.
pub fn append_durable(store: &Store, record: &AuditRecord) -> Result<AuditEntry, StateError> {
    store.tx(|tx| append(tx, record))
}

/// The current head of the chain, if any record exists. Not verified: it is what a sweep
/// publishes (a log line, a metric) so that a later `audit verify --expect-head` is anchored.
pub fn head(conn: &Connection) -> Result<Option<AuditEntry>, StateError> {
    Ok(conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| {
            Ok(AuditEntry {
                seq: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()?)
}

/// Recomputes the whole chain from the first record. Reads row by row, so memory stays flat for
/// any log size.
///
/// The chain and `sqlite_sequence` are read in one read transaction: a sweep appending while
/// `audit verify` runs must not make the log's end look cut off.
pub fn verify(conn: &Connection) -> Result<VerifyReport, AuditError> {
    // A caller inside a transaction already reads one snapshot (and cannot open another).
    if !conn.is_autocommit() {
        return verify_in(conn);
    }
    let snapshot = conn.unchecked_transaction()?;
    let report = verify_in(&snapshot);
    // Read-only: ending the transaction cannot lose anything, and the report is what counts.
    let _ = snapshot.rollback();
    report
}

fn verify_in(conn: &Connection) -> Result<VerifyReport, AuditError> {
    let mut stmt =
        conn.prepare("SELECT seq, at, kind, record, prev_hash, hash FROM audit ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut expected_seq: i64 = 1;
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut records: u64 = 0;
    while let Some(row) = rows.next()? {
        prev_hash = verify_row(row, expected_seq, &prev_hash)?;
        records += 1;
        expected_seq += 1;
    }
    let last_seq = expected_seq - 1;
    check_tail(conn, last_seq)?;
    Ok(VerifyReport {
        records,
        last_seq,
        last_hash: prev_hash,
    })
}

/// Checks one row against the chain so far; returns its hash, the next row's `prev_hash`.
fn verify_row(
    row: &rusqlite::Row<'_>,
    expected_seq: i64,
    prev_hash: &str,
) -> Result<String, AuditError> {
    let broken = |reason: String| AuditError::Broken {
        seq: expected_seq,
        reason,
    };
    // Column values are read defensively: a tampered row may hold any type.
    let seq: i64 = row
        .get(0)
        .map_err(|e| broken(format!("unreadable seq: {e}")))?;
    if seq != expected_seq {
        return Err(if seq > expected_seq {
            let missing = if seq - expected_seq == 1 {
                format!("record {expected_seq} is missing")
            } else {
                format!("records {expected_seq} to {} are missing", seq - 1)
            };
            broken(format!("{missing} (deleted from the log)"))
        } else {
            broken(format!("unexpected seq {seq}"))
        });
    }
    let stored_prev = text_column(row, 4).map_err(|e| broken(format!("prev_hash {e}")))?;
    if stored_prev != prev_hash.as_bytes() {
        return Err(broken(format!(
            "prev_hash does not link to {} (a record before it was removed, replaced or \
             reordered)",
            if seq == 1 {
                "the start of the log".to_string()
            } else {
                format!("record {}", seq - 1)
            }
        )));
    }
    let record = text_column(row, 3).map_err(|e| broken(format!("record {e}")))?;
    let stored_hash = text_column(row, 5).map_err(|e| broken(format!("hash {e}")))?;
    let computed = chain_hash(prev_hash.as_bytes(), record);
    if stored_hash != computed.as_bytes() {
        return Err(broken(
            "hash mismatch: the record or its hash was altered".to_string(),
        ));
    }
    let parsed: AuditRecord = serde_json::from_slice(record)
        .map_err(|e| broken(format!("not a valid audit record: {e}")))?;
    let at: Option<i64> = row.get(1).ok();
    let kind = text_column(row, 2).ok();
    if at != Some(parsed.at) || kind != Some(parsed.kind.as_str().as_bytes()) {
        return Err(broken(
            "the `at`/`kind` columns disagree with the hashed record".to_string(),
        ));
    }
    Ok(computed)
}

/// The highest seq ever handed out survives a deleted tail (AUTOINCREMENT): a log that ends
/// before it was cut off.
fn check_tail(conn: &Connection, last_seq: i64) -> Result<(), AuditError> {
    let highest: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    // AUTOINCREMENT writes the row with the first record and never removes it: a log with
    // records and no such row had it deleted, which would hide a cut-off end.
    if highest.is_none() && last_seq > 0 {
        return Err(AuditError::Broken {
            seq: last_seq + 1,
            reason: "the log's highest seq (sqlite_sequence) was removed, so a cut-off end \
                     cannot be ruled out"
                .to_string(),
        });
    }
    if let Some(highest) = highest
        && highest > last_seq
    {
        return Err(AuditError::Broken {
            seq: last_seq + 1,
            reason: format!(
                "records {} to {highest} are missing (the end of the log was cut off)",
                last_seq + 1
            ),
        });
    }
    Ok(())
}

/// The `seq` of the record whose hash is `hash` (0 for [`GENESIS_HASH`]), if any. Meaningful
/// only after [`verify`] passed: then every stored hash is the one the chain computes, so a
/// published head found here is still part of the chain.
pub fn seq_of_hash(conn: &Connection, hash: &str) -> Result<Option<i64>, StateError> {
    if hash == GENESIS_HASH {
        return Ok(Some(0));
    }
    Ok(conn
        .query_row(
            "SELECT seq FROM audit WHERE hash = ?1 ORDER BY seq LIMIT 1",
            params![hash],
            |r| r.get(0),
        )
        .optional()?)
}

/// Calls `f` for every record at or after `since` (Unix seconds), in chain order, without
/// loading the log into memory.
pub fn for_each(
    conn: &Connection,
    since: Option<i64>,
    mut f: impl FnMut(AuditRow) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, hash, record FROM audit WHERE at >= ?1 ORDER BY seq")?;
    let mut rows = stmt.query(params![since.unwrap_or(i64::MIN)])?;
    while let Some(row) = rows.next()? {
        f(decode_row(row)?)?;
    }
    Ok(())
}

/// The DELETE intents (no `write` in their inputs: not an expiry update, not a rotation's) at
/// or after `since` (Unix seconds) and the outcomes that answer them, in chain order: the
/// deletes of the sweeps since then, read by `revoke::confirmed_deletes`. Filtered here, so a
/// sweep after one that set thousands of expiries does not decode their records.
pub fn delete_writes_since(conn: &Connection, since: i64) -> Result<Vec<AuditRow>, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, hash, record FROM audit a WHERE a.at >= ?1 AND (
             (a.kind = 'intent' AND json_extract(a.record, '$.inputs.write') IS NULL)
             OR (a.kind = 'outcome' AND EXISTS (
                 SELECT 1 FROM audit i
                 WHERE i.seq = json_extract(a.record, '$.refers_to') AND i.kind = 'intent'
                   AND json_extract(i.record, '$.inputs.write') IS NULL)))
         ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![since])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode_row(row)?);
    }
    Ok(out)
}

/// Every record at or after `since`, in chain order.
pub fn list(conn: &Connection, since: Option<i64>) -> Result<Vec<AuditRow>, StateError> {
    let mut out = Vec::new();
    for_each(conn, since, |row| {
        out.push(row);
        Ok(())
    })?;
    Ok(out)
}

/// Intents that no outcome or reconciliation answers, oldest first: each is a DELETE whose
/// result is unknown. An intent is answered by a later `outcome`/`reconciled` record whose
/// `refers_to` is its `seq`, or — for records written without `refers_to` — by a later `outcome`
/// of the same run for the same key, or a later `reconciled` record for the same key.
pub fn unmatched_intents(conn: &Connection) -> Result<Vec<AuditRow>, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, hash, record FROM audit WHERE kind IN ('intent', 'outcome', 'reconciled')
         ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut open: BTreeMap<i64, AuditRow> = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let row = decode_row(row)?;
        match row.record.kind {
            AuditKind::Intent => {
                open.insert(row.seq, row);
            }
            AuditKind::Outcome | AuditKind::Reconciled => match row.record.refers_to {
                Some(seq) => {
                    open.remove(&seq);
                }
                None => {
                    let answered = |intent: &AuditRecord| {
                        same_key(intent, &row.record)
                            && (row.record.kind == AuditKind::Reconciled
                                || intent.run_id == row.record.run_id)
                    };
                    open.retain(|_, intent| !answered(&intent.record));
                }
            },
            _ => {}
        }
    }
    Ok(open.into_values().collect())
}

fn same_key(a: &AuditRecord, b: &AuditRecord) -> bool {
    a.organization == b.organization && a.project_id == b.project_id && a.key_id == b.key_id
}

fn decode_row(row: &rusqlite::Row<'_>) -> Result<AuditRow, StateError> {
    let seq: i64 = row.get(0)?;
    let hash: String = row.get(1)?;
    let record: String = row.get(2)?;
    let record = serde_json::from_str(&record).map_err(|source| StateError::Corrupt {
        table: "audit",
        row: seq.to_string(),
        source,
    })?;
    Ok(AuditRow { seq, hash, record })
}

/// The bytes of a TEXT (or BLOB) column, without insisting on valid UTF-8: a flipped byte must
/// surface as a hash mismatch, not as a conversion error.
fn text_column<'r>(row: &'r rusqlite::Row<'_>, idx: usize) -> Result<&'r [u8], String> {
    match row.get_ref(idx) {
        // keysweep writes these columns as TEXT only. A BLOB with the same bytes would pass
        // the hash but match no `kind IN (…)` look-up (an intent never reconciled).
        Ok(ValueRef::Text(b)) => Ok(b),
        Ok(other) => Err(format!("has type {:?}", other.data_type())),
        Err(e) => Err(format!("unreadable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: i64, kind: AuditKind, key: &str) -> AuditRecord {
        let mut r = AuditRecord::new(at, "run-1", kind, Mode::Enforce, "cfg", "m");
        r.organization = Some("org".into());
        r.project_id = Some("proj".into());
        r.key_id = Some(key.into());
        r
    }

    #[test]
    fn first_record_links_to_genesis_and_hash_is_documented_formula() {
        let store = Store::open_in_memory().unwrap();
        let r = rec(10, AuditKind::Decision, "k1");
        let e = store.tx(|tx| append(tx, &r)).unwrap();
        assert_eq!(e.seq, 1);
        let json = serde_json::to_string(&r).unwrap();
        let mut h = Sha256::new();
        h.update(GENESIS_HASH.as_bytes());
        h.update(json.as_bytes());
        assert_eq!(e.hash, hex::encode(h.finalize()));
        // Declaration order: `at` first, `refers_to` last.
        assert!(json.starts_with("{\"at\":10,\"run_id\":\"run-1\",\"kind\":\"decision\""));
        assert!(json.ends_with(",\"refers_to\":null}"));
    }

    /// The chain written in batches (after a head written row by row, with a short last
    /// batch) is the chain written one `append` at a time: same rows, same hashes, and the
    /// sequence the tail check reads.
    #[test]
    fn batched_appends_write_the_chain_that_single_appends_write() {
        let records: Vec<AuditRecord> = (0..300_i64)
            .map(|i| rec(i, AuditKind::Decision, &format!("k{i}")))
            .collect();
        let one = Store::open_in_memory().unwrap();
        for r in &records {
            one.tx(|tx| append(tx, r)).unwrap();
        }
        let many = Store::open_in_memory().unwrap();
        many.tx(|tx| append(tx, &records[0])).unwrap();
        let entries = many
            .tx(|tx| {
                append_batched(tx, |log| {
                    records[1..]
                        .iter()
                        .map(|r| log.push(r))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .unwrap();
        let rows = |s: &Store| s.with_conn(|c| list(c, None)).unwrap();
        assert_eq!(rows(&one), rows(&many));
        let last = rows(&one).pop().unwrap();
        assert_eq!(
            entries.last().map(|e| (e.seq, e.hash.clone())),
            Some((last.seq, last.hash))
        );
        let report = many.with_conn(|c| Ok(verify(c))).unwrap().unwrap();
        assert_eq!(report.records, 300);
        // And the next single append continues the batched chain.
        many.tx(|tx| append(tx, &records[0])).unwrap();
        assert_eq!(
            many.with_conn(|c| Ok(verify(c))).unwrap().unwrap().records,
            301
        );
    }

    /// A failure inside the closure writes nothing, batches already flushed included.
    #[test]
    fn a_failed_batch_appends_nothing() {
        let store = Store::open_in_memory().unwrap();
        let res = store.tx(|tx| {
            append_batched(tx, |log| {
                for i in 0..200 {
                    log.push(&rec(i, AuditKind::Decision, "k"))?;
                }
                Err::<(), _>(StateError::Missing { path: "x".into() })
            })
        });
        assert!(res.is_err());
        assert_eq!(store.with_conn(head).unwrap(), None);
    }

    #[test]
    fn empty_log_verifies_with_genesis_head() {
        let store = Store::open_in_memory().unwrap();
        let report = store.with_conn(|c| Ok(verify(c))).unwrap().unwrap();
        assert_eq!(report.records, 0);
        assert_eq!(report.last_hash, GENESIS_HASH);
    }

    #[test]
    fn outcome_with_refers_to_answers_only_its_intent() {
        let store = Store::open_in_memory().unwrap();
        let i1 = append_durable(&store, &rec(1, AuditKind::Intent, "k1")).unwrap();
        let i2 = append_durable(&store, &rec(2, AuditKind::Intent, "k2")).unwrap();
        append_durable(&store, &rec(3, AuditKind::Outcome, "k1").refers_to(i1.seq)).unwrap();
        let open = store.with_conn(unmatched_intents).unwrap();
        assert_eq!(open.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![i2.seq]);
    }

    #[test]
    fn outcome_without_refers_to_matches_same_run_and_key() {
        let store = Store::open_in_memory().unwrap();
        append_durable(&store, &rec(1, AuditKind::Intent, "k1")).unwrap();
        let mut other_run = rec(2, AuditKind::Outcome, "k1");
        other_run.run_id = "run-2".into();
        append_durable(&store, &other_run).unwrap();
        assert_eq!(store.with_conn(unmatched_intents).unwrap().len(), 1);
        append_durable(&store, &rec(3, AuditKind::Outcome, "k1")).unwrap();
        assert!(store.with_conn(unmatched_intents).unwrap().is_empty());
    }
}
