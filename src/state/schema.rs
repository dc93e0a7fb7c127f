//! The state database schema, as an ordered list of migrations applied with
//! `PRAGMA user_version`. Append new steps; never edit a released one.

/// Migration `i` brings the database from `user_version = i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
-- Every key seen in a listing (first/last seen), for "gone" detection and history.
CREATE TABLE key_observations (
    organization   TEXT NOT NULL,
    project_id     TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    key_name       TEXT NOT NULL,
    redacted_value TEXT NOT NULL,
    owner          TEXT NOT NULL,
    owner_type     TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    first_seen     INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL,
    gone_at        INTEGER,
    PRIMARY KEY (organization, project_id, key_id)
);

-- One row per (key, policy) finding; `data` is the JSON of policy::finding::Finding.
CREATE TABLE findings (
    organization TEXT NOT NULL,
    project_id   TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    policy       TEXT NOT NULL,
    stage        TEXT NOT NULL,
    deadline     INTEGER NOT NULL,
    data         TEXT NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (organization, project_id, key_id, policy)
);
CREATE INDEX findings_open ON findings (organization, stage);

-- Successful revocations, for the rolling 24 h cap.
CREATE TABLE revocations (
    at           INTEGER NOT NULL,
    organization TEXT NOT NULL,
    project_id   TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    run_id       TEXT NOT NULL
);
CREATE INDEX revocations_at ON revocations (at);

-- Append-only, hash-chained audit log. `hash` = SHA-256 over `prev_hash` and the record's
-- canonical JSON; `state::audit` is the only writer. `at` and `kind` are copies of fields of
-- `record` for indexed look-ups; `audit verify` checks that they agree with the hashed record.
-- AUTOINCREMENT keeps the highest seq ever used in sqlite_sequence, so a truncated tail shows.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    record    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_kind ON audit (kind);
-- Defence in depth: ordinary SQL cannot rewrite history. (Anyone who can write the file can drop
-- these triggers; the hash chain is what detects that.)
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Messages are written here before they are sent and marked sent once the receiver accepted
-- them. `message_id` is stable across retries (webhook-id / Message-ID / dedup_key).
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    message_id      TEXT NOT NULL UNIQUE,
    channel         TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    last_error      TEXT,
    sent_at         INTEGER
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);

-- Enforcer alerts already raised, so a standing condition alerts once per repeat interval.
CREATE TABLE alerts (
    dedup_key     TEXT PRIMARY KEY,
    first_raised  INTEGER NOT NULL,
    last_raised   INTEGER NOT NULL,
    data          TEXT NOT NULL
);

-- One row per sweep of an organisation.
CREATE TABLE sweeps (
    run_id       TEXT NOT NULL,
    organization TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    status       TEXT NOT NULL,
    summary      TEXT,
    PRIMARY KEY (run_id, organization)
);
"#,
    // Issue 17: one row per rotation of a service-account key (`state::rotations`). The row
    // is written with the mint's intent, before the request, and carries the random nonce
    // put into the new key's name, so a key minted just before a crash is found again.
    r#"
CREATE TABLE rotations (
    id                 INTEGER PRIMARY KEY,
    organization       TEXT NOT NULL,
    project_id         TEXT NOT NULL,
    service_account_id TEXT NOT NULL,
    old_key_id         TEXT NOT NULL,
    policy             TEXT NOT NULL,
    nonce              TEXT NOT NULL UNIQUE,
    new_key_id         TEXT,
    new_redacted_value TEXT,
    status             TEXT NOT NULL,
    intent_seq         INTEGER,
    started_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    old_expires_at     INTEGER,
    detail             TEXT
);
CREATE INDEX rotations_old_key ON rotations (organization, project_id, old_key_id);
CREATE INDEX rotations_status ON rotations (status);
"#,
    // Issue 15: when each project's keys were last listed completely. A sweep no longer
    // rewrites `key_observations.last_seen` of every unchanged key (10,000 row updates per deep
    // project per sweep): a present key (`gone_at IS NULL`) was last seen at the later of its
    // row's `last_seen` (the last listing that wrote it) and its project's `last_listed`, and
    // `mark_gone` writes that into the row when the key disappears. Rows written before this
    // step already carry their own `last_seen`, so nothing is backfilled.
    r#"
CREATE TABLE project_listings (
    organization TEXT NOT NULL,
    project_id   TEXT NOT NULL,
    last_listed  INTEGER NOT NULL,
    PRIMARY KEY (organization, project_id)
);
"#,
    // Issue 16: what the audit log said about keys, kept between sweeps (`state::intel`), so a
    // sweep reads only the events since the last successful read (less a safety margin) and
    // still knows each key's creator, scopes and deletion from the earlier reads.
    // `intel_marks.read_to`: the sweep time of the organisation's last successful read.
    // `audit_events_seen`: the ids of the events inside the re-read margin, so an event read
    // twice is applied once.
    r#"
CREATE TABLE intel_marks (
    organization TEXT PRIMARY KEY,
    read_to      INTEGER NOT NULL
);
CREATE TABLE key_history (
    organization TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    project_id   TEXT,
    created_at   INTEGER,
    created_by   TEXT,
    scopes       TEXT,
    scopes_at    INTEGER,
    ends_at      INTEGER,
    ends_set_at  INTEGER,
    deleted_at   INTEGER,
    deleted_by   TEXT,
    PRIMARY KEY (organization, key_id)
);
CREATE TABLE audit_events_seen (
    organization TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    effective_at INTEGER NOT NULL,
    PRIMARY KEY (organization, event_id)
);
"#,
    // Issue 15: a large `outbox.payload` is stored lz4-packed, as a BLOB in its TEXT column
    // (`state::outbox::Payload`; SQLite keeps a BLOB as it is whatever the column's affinity).
    // Nothing changes in the tables: this step only raises the version, so an older keysweep,
    // which would fail on every packed row it tried to deliver, refuses the file at start
    // instead ("written by a newer keysweep").
    r#"
-- outbox.payload: JSON text, or a packed BLOB (state::outbox).
"#,
    // Issue 15: the findings' gauges (`findings::finding_counts`, after every sweep) count the
    // findings by organisation, policy and stage. With `policy` in the index the count reads
    // the index alone; before, it looked up every row it counted, with its JSON (35 ms at 20k
    // findings). The look-ups by (organization, stage) use it as before.
    r#"
DROP INDEX findings_open;
CREATE INDEX findings_open ON findings (organization, stage, policy);
"#,
];
