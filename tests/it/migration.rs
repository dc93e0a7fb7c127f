//! Issue 15: the upgrade of a state database written at schema version 2 (before the
//! per-project `project_listings` table) to version 3, by the real sweep against the simulator.
//!
//! The version-2 database is built from the released migration steps (`MIGRATIONS[..2]`) and
//! filled with the rows a version-2 sweep writes: for a first sweep those are the same rows as
//! today's (every key inserted with `first_seen = last_seen = now`; findings, audit records and
//! outbox rows in unchanged tables), so they are copied from a first sweep, plus one row written
//! by hand for a key deleted since. Then the new code sweeps it twice and the test checks that
//! nothing was lost, that "gone" is still concluded (with the right `last_seen`, including one
//! that only `project_listings` knew), and that `keysweep audit verify` passes on the file that
//! crossed the migration. Loopback and a temporary directory only; nothing is timed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use keysweep::metrics::Metrics;
use keysweep::policy::finding::Finding;
use keysweep::sim::{Fault, FaultKind, SimOrg, SimServer};
use keysweep::state::audit::{self, AuditRow};
use keysweep::state::observations::{self, Observation};
use keysweep::state::{self, Store, schema};
use keysweep::sweep::{SweepOptions, Sweeper};

use crate::support::config::{ISSUE_3_POLICIES, config_from_toml};
use crate::support::process::{describe, keysweep, output};
use crate::support::time::DAY;

const ADMIN_KEY: &str = "sk-admin-MIGRATION-0c41d7e9b2-DO-NOT-LEAK";
const KEY_ENV: &str = "KEYSWEEP_IT_MIGRATION_ADMIN_KEY";
const ORG: &str = "acme";
/// 2026-01-01T00:00:00Z, the first sweep (written at version 2).
const T0: i64 = 1_767_225_600;
/// The first sweep after the upgrade.
const T1: i64 = T0 + DAY;
/// The second.
const T2: i64 = T0 + 2 * DAY;
/// A key the version-2 database knows and the API no longer has.
const GHOST: &str = "key_ghostDeletedBeforeUpgrade01";

/// Two projects of 600 keys, recently used; every 4th key is 200 days old, so `rotate-90d`
/// opens findings (dry-run: nothing is deleted).
fn org() -> SimOrg {
    let mut org = SimOrg::generate(2, 600, 15, T0);
    for p in org.projects.iter_mut().filter(|p| !p.is_archived()) {
        for (i, k) in p.keys.iter_mut().enumerate() {
            k.created_at = if i.is_multiple_of(4) {
                T0 - 200 * DAY
            } else {
                T0 - 10 * DAY
            };
            k.last_used_at = Some(T0 - DAY);
            k.expires_at = None;
        }
    }
    org
}

fn sweeper(sim: &SimServer, db: &Path) -> Sweeper {
    let text = format!(
        r#"mode = "dry-run"
state_path = "{state}"

[[organizations]]
name = "{ORG}"
base_url = "{base}"
admin_key_env = "{KEY_ENV}"

[limits]
max_retries = 1
request_timeout = "10s"
{ISSUE_3_POLICIES}"#,
        state = db.display(),
        base = sim.base_url(),
    );
    let config = config_from_toml(&text, &[(KEY_ENV, ADMIN_KEY)]);
    let store = Store::open(&config.state_path).unwrap();
    Sweeper::new(Arc::new(config), Some(store), Metrics::new()).unwrap()
}

async fn sweep(s: &Sweeper, now: i64) {
    assert!(sweep_once(s, now).await, "sweep at {now} incomplete");
}

/// One sweep; whether its listing was complete.
async fn sweep_once(s: &Sweeper, now: i64) -> bool {
    s.run_once(&SweepOptions::new(now))
        .await
        .unwrap()
        .complete()
}

/// The tables of schema version 2, in the order they are copied.
const V2_TABLES: &[&str] = &[
    "key_observations",
    "findings",
    "revocations",
    "audit",
    "outbox",
    "alerts",
    "sweeps",
    "rotations",
];

/// Writes `v2` as a version-2 database: the released steps only, then the rows of `seed` (a
/// database after one first sweep), then the ghost key's row as version 2 wrote it.
fn build_v2(seed: &Path, v2: &Path, ghost_project: &str) {
    let conn = rusqlite::Connection::open(v2).unwrap();
    for step in &schema::MIGRATIONS[..2] {
        conn.execute_batch(step).unwrap();
    }
    conn.pragma_update(None, "user_version", 2).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS seed", [seed.to_str().unwrap()])
        .unwrap();
    for table in V2_TABLES {
        conn.execute_batch(&format!(
            "INSERT INTO main.{table} SELECT * FROM seed.{table}"
        ))
        .unwrap();
    }
    conn.execute_batch("DETACH DATABASE seed").unwrap();
    conn.execute(
        "INSERT INTO key_observations VALUES (?1, ?2, ?3, 'ghost', 'sk-...host', \
         'ghost@example.com', 'user', ?4, NULL, ?4, ?5, NULL)",
        rusqlite::params![ORG, ghost_project, GHOST, T0 - 30 * DAY, T0],
    )
    .unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

fn user_version(store: &Store) -> i64 {
    store
        .with_conn(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
        .unwrap()
}

fn observations_of(store: &Store, projects: &[String]) -> BTreeMap<String, Observation> {
    let mut out = BTreeMap::new();
    for p in projects {
        let rows = store
            .with_conn(|c| observations::project_observations(c, ORG, p))
            .unwrap();
        out.extend(rows.into_iter().map(|o| (o.key_id.clone(), o)));
    }
    out
}

fn findings(store: &Store) -> BTreeMap<String, Finding> {
    store
        .with_conn(|c| state::findings::open_findings(c, ORG))
        .unwrap()
        .into_iter()
        .map(|f| (format!("{}/{}", f.id.key_id, f.id.policy), f))
        .collect()
}

fn audit_rows(store: &Store) -> Vec<AuditRow> {
    store.with_conn(|c| audit::list(c, None)).unwrap()
}

/// What the version-2 database held, to compare with after the upgrade.
struct Before {
    audit: Vec<AuditRow>,
    findings: BTreeMap<String, Finding>,
    keys: usize,
}

/// Nothing was lost at T1: the chain written at version 2 is a prefix of today's, every open
/// finding is the same finding (detected at T0, not opened again), every key is still known;
/// and the keys gone from the first listing after the upgrade were last seen at T0, as their
/// version-2 rows said.
fn assert_kept_at_t1(store: &Store, projects: &[String], before: &Before, removed: &str) {
    let audit_t1 = audit_rows(store);
    assert_eq!(&audit_t1[..before.audit.len()], &before.audit[..]);
    let findings_t1 = findings(store);
    for (id, f) in &before.findings {
        let now = findings_t1.get(id).unwrap_or_else(|| panic!("{id} lost"));
        let (was, is) = ((f.detected_at, f.deadline), (now.detected_at, now.deadline));
        assert_eq!(was, is, "{id}");
    }
    let obs = observations_of(store, projects);
    assert_eq!(obs.len(), before.keys + 1, "the ghost row and every key");
    for gone in [GHOST, removed] {
        let o = &obs[gone];
        assert_eq!((o.gone_at, o.last_seen), (Some(T1), T0), "{gone}");
    }
    assert_eq!(obs[GHOST].first_seen, T0 - 30 * DAY);
    for (id, o) in obs.iter().filter(|(_, o)| o.gone_at.is_none()) {
        assert_eq!((o.first_seen, o.last_seen), (T0, T1), "{id}");
    }
}

/// At T2: the key removed since T1 was last seen at T1, which its row (written at T0) does not
/// say and only `project_listings` knew; an unchanged key's row was not rewritten.
fn assert_gone_at_t2(store: &Store, projects: &[String], removed: &str, kept: &str) {
    let obs = observations_of(store, projects);
    assert_eq!(
        (obs[removed].gone_at, obs[removed].last_seen),
        (Some(T2), T1)
    );
    assert_eq!((obs[kept].gone_at, obs[kept].last_seen), (None, T2));
    let ghost = (obs[GHOST].gone_at, obs[GHOST].last_seen);
    assert_eq!(ghost, (Some(T1), T0), "a gone key keeps its time");
    let stored: i64 = store
        .with_conn(|c| {
            Ok(c.query_row(
                "SELECT last_seen FROM key_observations WHERE key_id = ?1",
                [kept],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(stored, T0, "the stored column of an unchanged key");
}

/// The upgrade keeps every row and the chain, gone-detection works across it, and
/// `keysweep audit verify` passes on the file that crossed it.
#[tokio::test]
async fn a_version_2_database_upgrades_keeps_its_rows_and_still_detects_gone_keys() {
    let org = org();
    let projects: Vec<String> = org
        .projects
        .iter()
        .filter(|p| !p.is_archived())
        .map(|p| p.id.clone())
        .collect();
    let sim = crate::support::sim::start_sim(org, ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let (seed, db) = (dir.path().join("seed.db"), dir.path().join("state.db"));

    // What a version-2 keysweep wrote after its first sweep at T0.
    sweep(&sweeper(&sim, &seed), T0).await;
    build_v2(&seed, &db, &projects[0]);
    let raw = Store::open_existing(&seed).unwrap();
    let before = Before {
        audit: audit_rows(&raw),
        findings: findings(&raw),
        keys: observations_of(&raw, &projects).len(),
    };
    drop(raw);
    // More than one multi-row batch of findings and decision records.
    assert!(before.findings.len() > 256, "{}", before.findings.len());

    let ids: Vec<String> = sim.keys(&projects[1]).into_iter().map(|k| k.id).collect();
    let (removed_t1, removed_t2, kept) = (&ids[3], &ids[4], &ids[5]);
    sim.remove_key(&projects[1], removed_t1).unwrap();

    // The new code opens it (step 3 runs) and sweeps at T1, then at T2.
    let s = sweeper(&sim, &db);
    let store = s.store().unwrap().clone();
    assert_eq!(user_version(&store), 6);
    assert_eq!(user_version(&store), schema::MIGRATIONS.len() as i64);
    sweep(&s, T1).await;
    assert_kept_at_t1(&store, &projects, &before, removed_t1);
    sim.remove_key(&projects[1], removed_t2).unwrap();
    sweep(&s, T2).await;
    assert_gone_at_t2(&store, &projects, removed_t2, kept);
    drop(s);

    let out = output(keysweep(
        &["audit", "verify", "--state", db.to_str().unwrap()],
        &[("RUST_LOG", "warn")],
    ))
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    let verified = store.with_conn(|c| Ok(audit::verify(c))).unwrap().unwrap();
    assert!(verified.records > before.audit.len() as u64);
}

/// After the upgrade, a partial listing concludes nothing: the broken project's time is not
/// advanced, so its keys (one of them deleted meanwhile) keep the last complete listing's
/// `last_seen` and none is marked gone; the next complete listing marks the deleted one gone,
/// last seen at that earlier listing.
#[tokio::test]
async fn a_partial_listing_moves_no_last_seen_and_marks_nothing_gone() {
    let org = org();
    let projects: Vec<String> = org
        .projects
        .iter()
        .filter(|p| !p.is_archived())
        .map(|p| p.id.clone())
        .collect();
    let sim = crate::support::sim::start_sim(org, ADMIN_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let s = sweeper(&sim, &dir.path().join("state.db"));
    let store = s.store().unwrap().clone();
    sweep(&s, T0).await;
    sweep(&s, T1).await;

    let broken = &projects[1];
    let deleted = sim.keys(broken)[7].id.clone();
    sim.remove_key(broken, &deleted).unwrap();
    sim.faults().add(
        Fault::on_list_keys(broken)
            .page(2)
            .respond(FaultKind::Status(500)),
    );
    assert!(!sweep_once(&s, T2).await, "the listing should be partial");
    let listed = |p: &str| {
        store
            .with_conn(|c| observations::last_listed(c, ORG, p))
            .unwrap()
    };
    assert_eq!((listed(&projects[0]), listed(broken)), (Some(T2), Some(T1)));
    let obs = observations_of(&store, std::slice::from_ref(broken));
    for (id, o) in &obs {
        assert_eq!((o.gone_at, o.last_seen), (None, T1), "{id}");
    }

    sim.faults().clear();
    let t3 = T2 + DAY;
    sweep(&s, t3).await;
    let obs = observations_of(&store, std::slice::from_ref(broken));
    assert_eq!(
        (obs[&deleted].gone_at, obs[&deleted].last_seen),
        (Some(t3), T1)
    );
    let present = obs.values().filter(|o| o.gone_at.is_none());
    assert!(present.clone().count() > 500);
    assert!(present.into_iter().all(|o| o.last_seen == t3));
}
