//! The state database on a real SQLite file in a temp dir: migrations, the per-table functions,
//! and the audit chain under tampering (SQL edits, deleted rows, a flipped byte in the file) and
//! under a SIGKILL right after a durable append.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keysweep::config::{Action, Mode};
use keysweep::inventory::{Key, Owner, OwnerAccess, OwnerType};
use keysweep::policy::finding::{Finding, FindingId, Stage};
use keysweep::state::audit::{self, AuditError, AuditKind, AuditRecord, GENESIS_HASH};
use keysweep::state::cli::{AuditFormat, audit_list, audit_verify};
use keysweep::state::sweeps::{self, SweepStatus};
use keysweep::state::{StateError, Store, findings, observations, revocations, schema};
use rusqlite::Connection;

use crate::support::state_file::wal_path;

const DAY: i64 = 86_400;
const T0: i64 = 1_750_000_000;

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nested").join("keysweep.db")
}

fn key(project: &str, id: &str, created_at: i64) -> Key {
    Key {
        organization: "org-a".into(),
        project_id: project.into(),
        project_name: Some(format!("{project} name")),
        id: id.into(),
        name: format!("{id} name"),
        redacted_value: format!("sk-proj-…{}", &id[id.len().saturating_sub(4)..]),
        created_at,
        last_used_at: Some(created_at + DAY),
        last_used_unknown: false,
        owner: Owner {
            kind: OwnerType::User,
            id: Some("user_1".into()),
            name: Some("Alice".into()),
            email: Some("alice@example.com".into()),
        },
        owner_access: OwnerAccess::Active,
        expires_at: keysweep::inventory::Expiry::Unknown,
    }
}

fn finding(project: &str, key_id: &str, policy: &str, stage: Stage, deadline: i64) -> Finding {
    Finding {
        dry_run_noted_at: None,
        warned_dry_run: false,
        final_notice_dry_run: false,
        withheld: None,
        rotation_withheld: None,
        expiry: Default::default(),
        id: FindingId {
            organization: "org-a".into(),
            project_id: project.into(),
            key_id: key_id.into(),
            policy: policy.into(),
        },
        project_name: Some("Project".into()),
        key_name: format!("{key_id} name"),
        redacted_value: "sk-proj-…abcd".into(),
        owner_type: OwnerType::User,
        owner: "alice@example.com".into(),
        owner_email: Some("alice@example.com".into()),
        created_at: T0 - 100 * DAY,
        last_used_at: None,
        last_used_unknown: false,
        expires_at: keysweep::inventory::Expiry::Unknown,
        action: Action::Revoke,
        reason: "older than 90d".into(),
        stage,
        detected_at: T0,
        deadline,
        warned_at: Some(T0),
        final_notice_at: None,
        last_notified_at: Some(T0),
        closed_at: None,
        resolution: None,
    }
}

fn record(at: i64, kind: AuditKind, key_id: &str, message: &str) -> AuditRecord {
    let mut r = AuditRecord::new(at, "run-1", kind, Mode::Enforce, "cfg-hash", message)
        .with_key(&key("proj_1", key_id, T0 - 100 * DAY));
    r.policy = Some("rotate-90d".into());
    r
}

/// Appends `n` records, each with a unique marker in its message.
fn append_n(store: &Store, n: usize) -> Vec<audit::AuditEntry> {
    (0..n)
        .map(|i| {
            audit::append_durable(
                store,
                &record(
                    T0 + i as i64,
                    AuditKind::Decision,
                    &format!("key_{i}"),
                    &format!("marker-{i:04}-decision"),
                ),
            )
            .unwrap()
        })
        .collect()
}

fn verify_line(store: &Store) -> (Result<audit::VerifyReport, AuditError>, String) {
    let mut out = Vec::new();
    let res = audit_verify(store, &mut out);
    (res, String::from_utf8(out).unwrap())
}

/// What an attacker with write access to the file does first: remove the append-only triggers.
fn drop_triggers(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    conn
}

fn user_version(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn open_creates_a_private_file_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    store
        .tx(|tx| findings::upsert_finding(tx, &finding("p", "k", "pol", Stage::Detected, T0), T0))
        .unwrap();
    // The settings the audit log's durability rests on.
    let (sync, fk, busy): (i64, i64, i64) = store
        .with_conn(|c| {
            let get = |p: &str| c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
            Ok((
                get("synchronous")?,
                get("foreign_keys")?,
                get("busy_timeout")?,
            ))
        })
        .unwrap();
    assert_eq!(
        (sync, fk),
        (2, 1),
        "synchronous must be FULL (2), foreign_keys ON"
    );
    assert!(busy > 0);
    drop(store);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "state file mode {mode:o}");
    }
    assert_eq!(user_version(&path), schema::MIGRATIONS.len() as i64);

    // Reopening twice neither re-runs a migration (it would fail on CREATE TABLE) nor loses data.
    for _ in 0..2 {
        let store = Store::open(&path).unwrap();
        let all = store.with_conn(findings::all_findings).unwrap();
        assert_eq!(all.len(), 1);
    }
    assert_eq!(user_version(&path), schema::MIGRATIONS.len() as i64);
    let journal: String = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[test]
fn a_database_from_a_newer_keysweep_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(Store::open(&path).unwrap());
    let newer = schema::MIGRATIONS.len() as i64 + 1;
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StateError::TooNew { found, .. } if found == newer),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("newer keysweep"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // And it was left untouched.
    assert_eq!(user_version(&path), newer);
}

#[test]
fn open_existing_refuses_a_missing_file_and_a_non_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let err = Store::open_existing(&missing).unwrap_err();
    assert!(matches!(err, StateError::Missing { .. }), "{err:?}");
    assert!(!missing.exists(), "open_existing must not create the file");

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
    let err = Store::open(&garbage).unwrap_err();
    assert!(matches!(err, StateError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.db"), "{err}");
}

#[test]
fn findings_round_trip_and_open_ones_are_selected_by_stage() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(&dir)).unwrap();
    let a = finding("p1", "k1", "rotate-90d", Stage::Warned, T0 + 14 * DAY);
    let b = finding("p1", "k2", "rotate-90d", Stage::Detected, T0 + 7 * DAY);
    let c = finding("p2", "k3", "idle-45d", Stage::Revoked, T0);
    let mut other_org = finding("p9", "k9", "rotate-90d", Stage::Detected, T0);
    other_org.id.organization = "org-b".into();
    store
        .tx(|tx| {
            findings::upsert_findings(
                tx,
                &[a.clone(), b.clone(), c.clone(), other_org.clone()],
                T0,
            )
        })
        .unwrap();

    let got = store
        .with_conn(|c| findings::get_finding(c, &a.id))
        .unwrap();
    assert_eq!(got.as_ref(), Some(&a));
    let open = store
        .with_conn(|c| findings::open_findings(c, "org-a"))
        .unwrap();
    // Ordered by deadline; the revoked one and the other organisation's are not there.
    assert_eq!(open, vec![b.clone(), a.clone()]);

    // A transition overwrites the row: the closed finding leaves the open set.
    let mut a2 = a.clone();
    a2.stage = Stage::Resolved;
    a2.closed_at = Some(T0 + DAY);
    a2.resolution = Some("key deleted by owner".into());
    store
        .with_conn(|c| findings::upsert_finding(c, &a2, T0 + DAY))
        .unwrap();
    let open = store
        .with_conn(|c| findings::open_findings(c, "org-a"))
        .unwrap();
    assert_eq!(open, vec![b.clone()]);
    assert_eq!(
        store
            .with_conn(|c| findings::get_finding(c, &a.id))
            .unwrap(),
        Some(a2)
    );
    let missing = FindingId {
        policy: "nope".into(),
        ..a.id.clone()
    };
    assert_eq!(
        store
            .with_conn(|c| findings::get_finding(c, &missing))
            .unwrap(),
        None
    );

    assert_eq!(store.with_conn(findings::all_findings).unwrap().len(), 4);
    let by_stage = store.with_conn(findings::findings_by_stage).unwrap();
    let count = |s| {
        by_stage
            .iter()
            .find(|(st, _)| *st == s)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count(Stage::Detected), 2);
    assert_eq!(count(Stage::Resolved), 1);
    assert_eq!(count(Stage::Revoked), 1);
    assert_eq!(count(Stage::Warned), 0);
    let counts = store.with_conn(findings::finding_counts).unwrap();
    assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 4);
}

fn ids(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn observations_track_first_last_seen_and_gone_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(&dir)).unwrap();
    let keys = vec![
        key("p1", "key_a", T0),
        key("p1", "key_b", T0),
        key("p1", "key_c", T0),
    ];
    store
        .with_conn(|c| observations::record_observations(c, "org-a", "p1", &keys, T0))
        .unwrap();

    // Next sweep: key_b is gone from a complete listing, key_a was renamed.
    let mut renamed = keys[0].clone();
    renamed.name = "renamed".into();
    let now = T0 + 3600;
    let present = vec![renamed.clone(), keys[2].clone()];
    let gone = store
        .tx(|tx| {
            observations::record_observations(tx, "org-a", "p1", &present, now)?;
            observations::mark_gone(
                tx,
                "org-a",
                "p1",
                &present.iter().map(|k| k.id.clone()).collect(),
                now,
            )
        })
        .unwrap();
    assert_eq!(gone, vec!["key_b".to_string()]);

    let obs = store
        .with_conn(|c| observations::project_observations(c, "org-a", "p1"))
        .unwrap();
    assert_eq!(obs.len(), 3);
    let a = &obs[0];
    assert_eq!(
        (a.key_id.as_str(), a.key_name.as_str()),
        ("key_a", "renamed")
    );
    assert_eq!((a.first_seen, a.last_seen, a.gone_at), (T0, now, None));
    let b = &obs[1];
    assert_eq!((b.first_seen, b.last_seen, b.gone_at), (T0, T0, Some(now)));
    assert_eq!(b.owner, "alice@example.com");

    // Marking again does not move gone_at; a key that reappears is no longer gone.
    let later = now + 3600;
    let again = store
        .with_conn(|c| observations::mark_gone(c, "org-a", "p1", &ids(&["key_a", "key_c"]), later))
        .unwrap();
    assert!(again.is_empty());
    store
        .with_conn(|c| observations::record_observations(c, "org-a", "p1", &keys[1..2], later))
        .unwrap();
    let b = store
        .with_conn(|c| observations::get_observation(c, "org-a", "p1", "key_b"))
        .unwrap()
        .unwrap();
    assert_eq!((b.first_seen, b.last_seen, b.gone_at), (T0, later, None));
}

#[test]
fn observations_of_a_100k_key_project_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(&dir)).unwrap();
    let keys: Vec<Key> = (0..100_000)
        .map(|i| key("big", &format!("key_{i:06}"), T0))
        .collect();
    store
        .with_conn(|c| observations::record_observations(c, "org-a", "big", &keys, T0))
        .unwrap();
    // Every other key disappears.
    let present: HashSet<String> = keys.iter().step_by(2).map(|k| k.id.clone()).collect();
    let gone = store
        .with_conn(|c| observations::mark_gone(c, "org-a", "big", &present, T0 + 60))
        .unwrap();
    assert_eq!(gone.len(), 50_000);
    assert_eq!(gone[0], "key_000001");
    let n: i64 = store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM key_observations WHERE gone_at IS NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(n, 50_000);
}

#[test]
fn revocations_are_counted_over_a_rolling_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    for (i, at) in [T0 - 2 * DAY, T0 - DAY - 1, T0 - DAY, T0 - 60, T0]
        .into_iter()
        .enumerate()
    {
        store
            .tx(|tx| revocations::record_revocation(tx, at, "org-a", "p", &format!("k{i}"), "run"))
            .unwrap();
    }
    drop(store);
    // Persisted: a restart sees the same count.
    let store = Store::open(&path).unwrap();
    let since = |s| {
        store
            .with_conn(|c| revocations::revocations_since(c, s))
            .unwrap()
    };
    assert_eq!(since(T0 - DAY), 3);
    assert_eq!(since(T0 - DAY + 1), 2);
    assert_eq!(since(T0 + 1), 0);
    assert_eq!(since(i64::MIN), 5);
}

#[test]
fn sweeps_record_start_finish_and_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(&dir)).unwrap();
    store
        .with_conn(|c| {
            assert!(sweeps::last_sweep(c, "org-a")?.is_none());
            sweeps::sweep_started(c, "run-1", "org-a", T0)?;
            sweeps::sweep_finished(
                c,
                "run-1",
                "org-a",
                T0 + 5,
                SweepStatus::Completed,
                &serde_json::json!({"keys": 10}),
            )?;
            sweeps::sweep_started(c, "run-2", "org-a", T0 + 100)?;
            let last = sweeps::last_sweep(c, "org-a")?.unwrap();
            assert_eq!(
                (last.run_id.as_str(), last.status),
                ("run-2", SweepStatus::Running)
            );
            let done = sweeps::last_completed_sweep(c, "org-a")?.unwrap();
            assert_eq!(done.run_id, "run-1");
            assert_eq!(done.finished_at, Some(T0 + 5));
            assert_eq!(done.summary, Some(serde_json::json!({"keys": 10})));
            // The process died during run-2; the next one finds it.
            let interrupted = sweeps::mark_interrupted(c, T0 + 200)?;
            assert_eq!(interrupted.len(), 1);
            assert_eq!(interrupted[0].run_id, "run-2");
            assert_eq!(
                sweeps::last_sweep(c, "org-a")?.unwrap().status,
                SweepStatus::Interrupted
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_failed_transaction_rolls_back_findings_and_audit_records_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(&dir)).unwrap();
    append_n(&store, 2);
    let res: Result<(), StateError> = store.tx(|tx| {
        findings::upsert_finding(tx, &finding("p", "k", "pol", Stage::Detected, T0), T0)?;
        audit::append(tx, &record(T0, AuditKind::Decision, "k", "opened"))?;
        Err(StateError::Missing {
            path: PathBuf::from("simulated failure"),
        })
    });
    assert!(res.is_err());
    assert!(store.with_conn(findings::all_findings).unwrap().is_empty());
    let (res, _) = verify_line(&store);
    assert_eq!(res.unwrap().records, 2);
    // The next append continues the chain where the committed head is.
    let e = audit::append_durable(&store, &record(T0, AuditKind::Notice, "k", "x")).unwrap();
    assert_eq!(e.seq, 3);
    assert_eq!(verify_line(&store).0.unwrap().last_hash, e.hash);
}

#[test]
fn audit_chain_verifies_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    let (res, line) = verify_line(&store);
    assert_eq!(res.unwrap().records, 0);
    assert_eq!(
        line,
        format!("audit chain OK: 0 records, head {GENESIS_HASH}\n")
    );

    let entries = append_n(&store, 5);
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    drop(store);
    let store = Store::open(&path).unwrap();
    let (res, line) = verify_line(&store);
    let report = res.unwrap();
    assert_eq!(report.records, 5);
    assert_eq!(report.last_hash, entries[4].hash);
    assert_eq!(
        line,
        format!("audit chain OK: 5 records, head {}\n", entries[4].hash)
    );

    // `list` and the table/JSON listings, with --since.
    let rows = store.with_conn(|c| audit::list(c, Some(T0 + 3))).unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(rows[0].record.message, "marker-0003-decision");
    assert_eq!(rows[0].record.inputs["created_at"], T0 - 100 * DAY);

    let mut out = Vec::new();
    audit_list(&store, Some(T0 + 3), AuditFormat::Json, &mut out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let arr = json.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["seq"], 4);
    assert_eq!(arr[0]["kind"], "decision");
    assert_eq!(arr[0]["key_id"], "key_3");
    assert_eq!(arr[1]["hash"], entries[4].hash.as_str());

    let mut out = Vec::new();
    audit_list(&store, None, AuditFormat::Table, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert!(lines[0].contains("SEQ") && lines[0].contains("MESSAGE"));
    assert!(lines[1].contains("decision") && lines[1].contains("marker-0000-decision"));
    assert!(lines[1].contains("enforce") && lines[1].contains("rotate-90d"));

    let mut out = Vec::new();
    audit_list(&store, Some(T0 + 1000), AuditFormat::Json, &mut out).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn plain_sql_cannot_update_or_delete_audit_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 2);
    let conn = Connection::open(&path).unwrap();
    let err = conn
        .execute("UPDATE audit SET record = 'x' WHERE seq = 1", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = conn
        .execute("DELETE FROM audit WHERE seq = 2", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert_eq!(verify_line(&store).0.unwrap().records, 2);
}

#[test]
fn verify_fails_after_one_byte_of_a_record_is_changed_with_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 5);
    let conn = drop_triggers(&path);
    let changed = conn
        .execute(
            "UPDATE audit SET record = replace(record, 'marker-0002', 'marker-0003') WHERE seq = 3",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let (res, line) = verify_line(&store);
    match res {
        Err(AuditError::Broken { seq, reason }) => {
            assert_eq!(seq, 3);
            assert!(reason.contains("hash mismatch"), "{reason}");
        }
        other => panic!("expected a broken chain, got {other:?}"),
    }
    assert!(
        line.starts_with("audit chain BROKEN at record 3: hash mismatch"),
        "{line}"
    );

    // Recomputing that record's hash only moves the break to the next link.
    let (prev, rec): (String, String) = conn
        .query_row(
            "SELECT prev_hash, record FROM audit WHERE seq = 3",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let forged = audit::chain_hash(prev.as_bytes(), rec.as_bytes());
    conn.execute("UPDATE audit SET hash = ?1 WHERE seq = 3", [forged])
        .unwrap();
    match verify_line(&store).0 {
        Err(AuditError::Broken { seq, reason }) => {
            assert_eq!(seq, 4);
            assert!(reason.contains("prev_hash"), "{reason}");
        }
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn verify_fails_after_an_indexed_column_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 3);
    let conn = drop_triggers(&path);
    conn.execute("UPDATE audit SET kind = 'notice' WHERE seq = 2", [])
        .unwrap();
    match verify_line(&store).0 {
        Err(AuditError::Broken { seq: 2, reason }) => assert!(reason.contains("kind"), "{reason}"),
        other => panic!("expected a broken chain at 2, got {other:?}"),
    }
}

#[test]
fn verify_fails_after_a_middle_row_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 5);
    drop_triggers(&path)
        .execute("DELETE FROM audit WHERE seq = 3", [])
        .unwrap();
    let (res, line) = verify_line(&store);
    match res {
        Err(AuditError::Broken { seq, reason }) => {
            assert_eq!(seq, 3);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected a broken chain, got {other:?}"),
    }
    assert!(
        line.starts_with("audit chain BROKEN at record 3: record 3 is missing"),
        "{line}"
    );
}

#[test]
fn verify_fails_after_rows_are_renumbered_to_hide_a_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 4);
    let conn = drop_triggers(&path);
    conn.execute_batch(
        "DELETE FROM audit WHERE seq = 2; UPDATE audit SET seq = seq - 1 WHERE seq > 2;",
    )
    .unwrap();
    match verify_line(&store).0 {
        Err(AuditError::Broken { seq: 2, reason }) => {
            assert!(reason.contains("prev_hash"), "{reason}");
        }
        other => panic!("expected a broken chain at 2, got {other:?}"),
    }
}

#[test]
fn verify_fails_after_the_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 4);
    drop_triggers(&path)
        .execute("DELETE FROM audit WHERE seq >= 3", [])
        .unwrap();
    match verify_line(&store).0 {
        Err(AuditError::Broken { seq: 3, reason }) => {
            assert!(reason.contains("records 3 to 4 are missing"), "{reason}");
        }
        other => panic!("expected a broken chain at 3, got {other:?}"),
    }
}

/// Removing the tail and the `sqlite_sequence` row that remembers it leaves no hash to break:
/// a log with records and no such row is broken too.
#[test]
fn verify_fails_after_the_tail_and_its_sequence_row_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 4);
    drop_triggers(&path)
        .execute_batch(
            "DELETE FROM audit WHERE seq >= 3; DELETE FROM sqlite_sequence WHERE name = 'audit';",
        )
        .unwrap();
    match verify_line(&store).0 {
        Err(AuditError::Broken { seq: 3, reason }) => {
            assert!(reason.contains("sqlite_sequence"), "{reason}");
        }
        other => panic!("expected a broken chain at 3, got {other:?}"),
    }
}

/// A `kind` re-typed as a BLOB keeps its bytes, and so the hash, but no look-up by kind finds
/// the record again (an intent never reconciled): verify refuses it.
#[test]
fn verify_fails_when_a_column_is_retyped_as_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 3);
    drop_triggers(&path)
        .execute(
            "UPDATE audit SET kind = CAST(kind AS BLOB) WHERE seq = 2",
            [],
        )
        .unwrap();
    match verify_line(&store).0 {
        Err(AuditError::Broken { seq: 2, .. }) => {}
        other => panic!("expected a broken chain at 2, got {other:?}"),
    }
}

/// `audit verify` while a sweep appends: the chain and the highest seq are read in one
/// snapshot, so records appended meanwhile never look like a cut-off end.
#[test]
fn verify_while_records_are_appended_sees_one_consistent_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    store
        .tx(|tx| {
            for i in 0..20_000 {
                audit::append(tx, &record(T0 + i, AuditKind::Decision, "key_x", "bulk"))?;
            }
            Ok(())
        })
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let store = Store::open(&path).unwrap();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = record(T0, AuditKind::Decision, "key_y", "during verify");
                audit::append_durable(&store, &r).unwrap();
                n += 1;
            }
            n
        })
    };
    let conn = Connection::open(&path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let results: Vec<_> = (0..5).map(|_| audit::verify(&conn)).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = appender.join().unwrap();
    assert!(appended > 0, "nothing was appended while verify ran");
    for r in results {
        assert!(r.is_ok(), "{r:?}");
    }
}

#[test]
fn verify_fails_after_one_byte_of_the_database_file_is_flipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 5);
    assert_eq!(verify_line(&store).0.unwrap().records, 5);
    // Closing the last connection checkpoints the WAL into the main file.
    drop(store);
    assert!(
        !wal_path(&path).exists(),
        "WAL should be checkpointed and removed on close"
    );

    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"marker-0002-decision";
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "the record text should be in the file exactly once"
    );
    // Flip one bit of one byte: '0' (0x30) becomes '1' (0x31).
    bytes[hits[0] + "marker-000".len()] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    // The flipped byte lies inside the record's text, not in SQLite's page structure, so the
    // database still opens and the chain check itself must catch it. (A flip elsewhere could
    // instead yield "malformed"; `audit_verify` reports that as UNREADABLE, also a failure.)
    let store = Store::open(&path).unwrap();
    let (res, line) = verify_line(&store);
    match res {
        Err(AuditError::Broken { seq, reason }) => {
            assert_eq!(seq, 3);
            assert!(reason.contains("hash mismatch"), "{reason}");
        }
        other => panic!("tampered log must not verify: {other:?}"),
    }
    assert!(line.starts_with("audit chain BROKEN at record 3"), "{line}");
}

#[test]
fn a_durable_append_is_visible_to_another_connection_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    let other = Connection::open(&path).unwrap();
    let intent = record(T0, AuditKind::Intent, "key_1", "about to delete");
    let entry = audit::append_durable(&store, &intent).unwrap();
    let (seq, stored): (i64, String) = other
        .query_row(
            "SELECT seq, record FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(seq, entry.seq);
    assert_eq!(stored, intent.canonical_json().unwrap());
    // A second Store on the same file (the CLI next to the daemon) sees and extends the chain.
    let second = Store::open(&path).unwrap();
    let next = audit::append_durable(
        &second,
        &record(T0 + 1, AuditKind::Outcome, "key_1", "deleted").refers_to(entry.seq),
    )
    .unwrap();
    assert_eq!(next.seq, entry.seq + 1);
    assert_eq!(verify_line(&store).0.unwrap().last_hash, next.hash);
}

#[test]
fn unmatched_intents_survive_a_restart_and_are_settled_by_reconciliation() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    let i1 =
        audit::append_durable(&store, &record(T0, AuditKind::Intent, "key_1", "delete")).unwrap();
    audit::append_durable(
        &store,
        &record(T0 + 1, AuditKind::Outcome, "key_1", "deleted")
            .refers_to(i1.seq)
            .with_response(serde_json::json!({"status": 200, "deleted": true})),
    )
    .unwrap();
    let i2 = audit::append_durable(
        &store,
        &record(T0 + 2, AuditKind::Intent, "key_2", "delete"),
    )
    .unwrap();
    drop(store); // "crash" before the outcome of key_2

    let store = Store::open(&path).unwrap();
    let open = store.with_conn(audit::unmatched_intents).unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].seq, i2.seq);
    assert_eq!(open[0].record.key_id.as_deref(), Some("key_2"));
    assert_eq!(open[0].record.organization.as_deref(), Some("org-a"));
    assert_eq!(open[0].record.project_id.as_deref(), Some("proj_1"));

    let mut settled = record(T0 + 3600, AuditKind::Reconciled, "key_2", "deleted");
    settled.run_id = "run-2".into();
    audit::append_durable(&store, &settled.refers_to(i2.seq)).unwrap();
    assert!(
        store
            .with_conn(audit::unmatched_intents)
            .unwrap()
            .is_empty()
    );
    assert_eq!(verify_line(&store).0.unwrap().records, 4);
}

/// Set in the child process of the SIGKILL test: the database it appends to.
const CRASH_CHILD_ENV: &str = "KEYSWEEP_TEST_STATE_CRASH_DB";

#[test]
fn a_sigkill_right_after_a_durable_intent_keeps_the_record() {
    if let Some(path) = std::env::var_os(CRASH_CHILD_ENV) {
        // Child: append the intent durably, report it, then wait to be killed mid-"DELETE".
        let store = Store::open(Path::new(&path)).unwrap();
        append_n(&store, 3);
        let e = audit::append_durable(
            &store,
            &record(T0 + 10, AuditKind::Intent, "key_x", "delete"),
        )
        .unwrap();
        use std::io::Write;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "APPENDED {} {}", e.seq, e.hash).unwrap();
        stdout.flush().unwrap();
        // Bounded, so an orphan cannot outlive a failed parent for long.
        std::thread::sleep(std::time::Duration::from_secs(120));
        std::process::exit(3);
    }

    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let test_name = format!(
        "{}::a_sigkill_right_after_a_durable_intent_keeps_the_record",
        module_path!().split_once("::").map_or("state", |(_, m)| m)
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            test_name.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // libtest prints "test <name> ... " before running it, so the marker may share a line.
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut appended = None;
    while let Ok(line) = lines_rx.recv_timeout(std::time::Duration::from_secs(120)) {
        if let Some(at) = line.find("APPENDED ") {
            appended = Some(line[at + "APPENDED ".len()..].trim().to_string());
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no checkpoint, no clean close
    let status = child.wait().unwrap();
    assert!(!status.success());
    let appended = appended.expect("the child never reported its append");
    let (seq, hash) = appended.split_once(' ').unwrap();

    assert!(
        wal_path(&path).exists(),
        "the killed child left its WAL behind"
    );
    let store = Store::open(&path).unwrap();
    let report = verify_line(&store).0.unwrap();
    assert_eq!(report.records, 4);
    assert_eq!(report.last_seq.to_string(), seq);
    assert_eq!(report.last_hash, hash);
    let open = store.with_conn(audit::unmatched_intents).unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].record.key_id.as_deref(), Some("key_x"));
}

#[test]
fn an_unreadable_audit_table_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let store = Store::open(&path).unwrap();
    append_n(&store, 2);
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE audit")
        .unwrap();
    let (res, line) = verify_line(&store);
    assert!(matches!(res, Err(AuditError::Unreadable(_))), "{res:?}");
    assert!(line.starts_with("audit chain UNREADABLE: "), "{line}");
    assert!(line.contains("no such table"), "{line}");
}
