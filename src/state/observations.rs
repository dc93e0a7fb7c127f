//! Key observations: every key seen in a listing, with when it was first and last seen and when
//! it disappeared. A sweep writes only the rows whose key changed ([`record_changed`]) and,
//! after a complete listing, records when the project was listed ([`touch_listed`], one row of
//! `project_listings`) instead of rewriting every present key. A present key's `last_seen` is
//! read as the later of its row's `last_seen` (the last listing that wrote it) and its
//! project's `last_listed`; [`mark_gone`] writes that value into the row of a key that
//! disappears, before the project's time moves on. So `last_seen` is still the last complete
//! listing that showed the key (or the last one that changed it, if later listings were
//! partial), and every reader goes through [`get_observation`] / [`project_observations`].
//!
//! "Gone" is only ever concluded from a *complete* listing: `mark_gone` must not be called for a
//! project whose listing was incomplete, or keys that merely were not returned would be recorded
//! as deleted. Both functions run in one transaction with prepared statements, so a project of
//! 100k keys costs one commit, not 100k.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::inventory::Key;
use crate::state::batch::{self, MultiInsert};
use crate::state::{StateError, in_tx};

/// One row of `key_observations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    pub organization: String,
    pub project_id: String,
    pub key_id: String,
    pub key_name: String,
    pub redacted_value: String,
    /// `Owner::display()` at the last sighting.
    pub owner: String,
    pub owner_type: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub first_seen: i64,
    /// The last listing that showed the key: the row's own time, or for a present key its
    /// project's last complete listing if that is later (see the module docs).
    pub last_seen: i64,
    /// When a complete listing first lacked the key; cleared if it shows up again.
    pub gone_at: Option<i64>,
}

/// Records that `keys` (all of project `project_id` of `organization`) were listed at `now`:
/// inserts new keys with `first_seen = now`, refreshes the snapshot and `last_seen` of known ones
/// and clears their `gone_at`.
pub fn record_observations<'k>(
    conn: &Connection,
    organization: &'k str,
    project_id: &'k str,
    keys: impl IntoIterator<Item = &'k Key>,
    now: i64,
) -> Result<(), StateError> {
    observe_batched(conn, now, |w| {
        for key in keys {
            w.push(organization, project_id, key)?;
        }
        Ok(())
    })
}

/// Writes observation rows in multi-row statements (`state::batch`), across pages and
/// projects, the keys' strings borrowed rather than copied. Rows are written as the batches
/// fill and the rest when [`observe_batched`] returns, so the caller must not read
/// `key_observations` for a project whose rows it has pushed before then.
pub struct ObservationWriter<'c, 'k> {
    insert: MultiInsert<'c, 'k>,
    now: i64,
}

impl<'k> ObservationWriter<'_, 'k> {
    /// The row of one key listed at `now` (see [`record_observations`]). A `last_used_at` the
    /// listing did not give (`null`, or left out) keeps the one stored: a key once used stays
    /// used, and a wake-up is judged against its real last use, never against its creation.
    pub fn push(
        &mut self,
        organization: &'k str,
        project_id: &'k str,
        key: &'k Key,
    ) -> Result<(), StateError> {
        self.insert.push([
            batch::text_ref(organization),
            batch::text_ref(project_id),
            batch::text_ref(&key.id),
            batch::text_ref(&key.name),
            batch::text_ref(&key.redacted_value),
            batch::text_ref(key.owner.display()),
            batch::text_ref(key.owner.kind.as_str()),
            batch::int(key.created_at),
            batch::int(key.last_used_at),
            batch::int(self.now),
            batch::int(self.now),
            batch::int(None),
        ])
    }

    /// Like [`record_changed`]: pushes the keys whose snapshot differs from `known`, and
    /// returns how many.
    pub fn record_changed(
        &mut self,
        organization: &'k str,
        project_id: &'k str,
        keys: &'k [Key],
        known: &Fingerprints,
    ) -> Result<usize, StateError> {
        let mut changed = 0;
        for k in keys.iter().filter(|k| is_changed(k, known)) {
            self.push(organization, project_id, k)?;
            changed += 1;
        }
        Ok(changed)
    }
}

/// Runs `f` with an [`ObservationWriter`] for rows listed at `now`, then writes what it still
/// holds. Joins the caller's transaction if one is open (else runs in its own).
pub fn observe_batched<'k, T>(
    conn: &Connection,
    now: i64,
    f: impl FnOnce(&mut ObservationWriter<'_, 'k>) -> Result<T, StateError>,
) -> Result<T, StateError> {
    in_tx(conn, |conn| {
        let mut writer = ObservationWriter {
            insert: MultiInsert::new(
                conn,
                "INSERT INTO key_observations (organization, project_id, key_id, key_name,
                     redacted_value, owner, owner_type, created_at, last_used_at, first_seen,
                     last_seen, gone_at) VALUES",
                12,
                "ON CONFLICT (organization, project_id, key_id) DO UPDATE SET
                     key_name = excluded.key_name,
                     redacted_value = excluded.redacted_value,
                     owner = excluded.owner,
                     owner_type = excluded.owner_type,
                     created_at = excluded.created_at,
                     last_used_at = COALESCE(excluded.last_used_at, last_used_at),
                     last_seen = excluded.last_seen,
                     gone_at = NULL",
            ),
            now,
        };
        let value = f(&mut writer)?;
        writer.insert.finish()?;
        Ok(value)
    })
}

/// What a steady-state sweep compares instead of rewriting every row: for each key of the
/// project that is not gone, a hash of its id → a hash of the snapshot columns.
pub type Fingerprints = HashMap<u64, u64, foldhash::fast::RandomState>;

/// The hasher of ids and snapshots: foldhash (a fraction of SipHash's cost, which was 6% of a
/// sweep's instructions), seeded at random once per process. The hashes are only compared
/// within the process (never stored), and a seed nobody knows keeps a key name chosen to
/// collide with another snapshot from being crafted.
fn hasher() -> &'static foldhash::quality::RandomState {
    static STATE: std::sync::OnceLock<foldhash::quality::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(foldhash::quality::RandomState::default)
}

fn hash_id(key_id: &str) -> u64 {
    hasher().hash_one(key_id)
}

fn hash_snapshot(
    key_name: &str,
    redacted_value: &str,
    owner: &str,
    owner_type: &str,
    created_at: i64,
    last_used_at: Option<i64>,
) -> u64 {
    hasher().hash_one((
        key_name,
        redacted_value,
        owner,
        owner_type,
        created_at,
        last_used_at,
    ))
}

/// The fingerprints of the project's keys that are not gone.
pub fn fingerprints(
    conn: &Connection,
    organization: &str,
    project_id: &str,
) -> Result<Fingerprints, StateError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key_id, key_name, redacted_value, owner, owner_type, created_at, last_used_at
           FROM key_observations
          WHERE organization = ?1 AND project_id = ?2 AND gone_at IS NULL",
    )?;
    let mut rows = stmt.query(params![organization, project_id])?;
    let mut out = Fingerprints::default();
    // Borrowed: no String for the thousands of rows of a deep project.
    while let Some(r) = rows.next()? {
        let s = |i: usize| -> Result<&str, StateError> {
            Ok(r.get_ref(i)?.as_str().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e))
            })?)
        };
        out.insert(
            hash_id(s(0)?),
            hash_snapshot(s(1)?, s(2)?, s(3)?, s(4)?, r.get(5)?, r.get(6)?),
        );
    }
    Ok(out)
}

/// Like [`record_observations`] for the keys whose snapshot differs from `known` (new keys,
/// renamed, used since, owner changed, back after being gone); an unchanged key is not
/// rewritten, its `last_seen` is advanced by [`touch_listed`] once the listing is complete.
/// Returns how many rows were written.
pub fn record_changed(
    conn: &Connection,
    organization: &str,
    project_id: &str,
    keys: &[Key],
    known: &Fingerprints,
    now: i64,
) -> Result<usize, StateError> {
    observe_batched(conn, now, |w| {
        w.record_changed(organization, project_id, keys, known)
    })
}

/// Whether `k` differs from its stored snapshot in `known` (or is not there).
pub fn is_changed(k: &Key, known: &Fingerprints) -> bool {
    let snapshot = hash_snapshot(
        &k.name,
        &k.redacted_value,
        k.owner.display(),
        k.owner.kind.as_str(),
        k.created_at,
        k.last_used_at,
    );
    known.get(&hash_id(&k.id)) != Some(&snapshot)
}

/// Whether `known` holds a row for `key_id`: a key it does not hold has no stored row that is
/// not gone, so there is nothing stored about it to compare with.
pub fn is_known(key_id: &str, known: &Fingerprints) -> bool {
    known.contains_key(&hash_id(key_id))
}

/// After a *complete* listing and [`mark_gone`] (which reads the previous time, so call it
/// first): every key of the project still present was listed at `now`. One row, whatever the
/// number of keys.
pub fn touch_listed(
    conn: &Connection,
    organization: &str,
    project_id: &str,
    now: i64,
) -> Result<(), StateError> {
    conn.prepare_cached(
        "INSERT INTO project_listings (organization, project_id, last_listed) VALUES (?1, ?2, ?3)
         ON CONFLICT (organization, project_id) DO UPDATE SET last_listed = excluded.last_listed",
    )?
    .execute(params![organization, project_id, now])?;
    Ok(())
}

/// When the project was last listed completely, if it ever was since `project_listings`
/// exists (schema version 3).
pub fn last_listed(
    conn: &Connection,
    organization: &str,
    project_id: &str,
) -> Result<Option<i64>, StateError> {
    Ok(conn
        .prepare_cached(
            "SELECT last_listed FROM project_listings WHERE organization = ?1 AND project_id = ?2",
        )?
        .query_row(params![organization, project_id], |r| r.get(0))
        .optional()?)
}

/// A listing's key ids as [`mark_gone_unlisted`] takes them: a 64-bit hash of each id
/// ([`listed_id`]), 8 bytes a key where the id's `String` took about 50.
pub type ListedIds = HashSet<u64, foldhash::fast::RandomState>;

/// The entry of `key_id` in [`ListedIds`].
pub fn listed_id(key_id: &str) -> u64 {
    hash_id(key_id)
}

/// After a *complete* listing of the project: marks every key not in `present` and not yet
/// gone as gone at `now`, and keeps in its row when it was last seen (the project's previous
/// `last_listed`, if later than the row's own). Returns the ids newly marked, sorted.
pub fn mark_gone(
    conn: &Connection,
    organization: &str,
    project_id: &str,
    present: &HashSet<String>,
    now: i64,
) -> Result<Vec<String>, StateError> {
    mark_gone_where(
        conn,
        organization,
        project_id,
        |id| present.contains(id),
        now,
    )
}

/// Whether every key of `known` (a project's stored snapshots, read before its listing wrote
/// any row) is in `listed`: then [`mark_gone_unlisted`] would mark nothing, and need not scan.
pub fn all_listed(known: &Fingerprints, listed: &ListedIds) -> bool {
    known.keys().all(|id| listed.contains(id))
}

/// [`mark_gone`] with the listing's ids as [`ListedIds`]. A key whose id hashes like a listed
/// one (2^-64 per pair) is not marked gone: the safe direction, nothing is concluded for it.
pub fn mark_gone_unlisted(
    conn: &Connection,
    organization: &str,
    project_id: &str,
    listed: &ListedIds,
    now: i64,
) -> Result<Vec<String>, StateError> {
    mark_gone_where(
        conn,
        organization,
        project_id,
        |id| listed.contains(&hash_id(id)),
        now,
    )
}

fn mark_gone_where(
    conn: &Connection,
    organization: &str,
    project_id: &str,
    present: impl Fn(&str) -> bool,
    now: i64,
) -> Result<Vec<String>, StateError> {
    in_tx(conn, |conn| {
        let mut known = conn.prepare_cached(
            "SELECT key_id FROM key_observations
             WHERE organization = ?1 AND project_id = ?2 AND gone_at IS NULL",
        )?;
        let mut gone = Vec::new();
        let mut rows = known.query(params![organization, project_id])?;
        while let Some(row) = rows.next()? {
            // Borrowed: no String for the thousands of keys that are still there.
            let id = row.get_ref(0)?.as_str().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, Type::Text, Box::new(e))
            })?;
            if !present(id) {
                gone.push(id.to_string());
            }
        }
        drop(rows);
        gone.sort();
        let listed = last_listed(conn, organization, project_id)?;
        let mut update = conn.prepare_cached(
            "UPDATE key_observations SET gone_at = ?4, last_seen = MAX(last_seen, COALESCE(?5, last_seen))
             WHERE organization = ?1 AND project_id = ?2 AND key_id = ?3",
        )?;
        for id in &gone {
            update.execute(params![organization, project_id, id, now, listed])?;
        }
        Ok(gone)
    })
}

/// One observation by key.
pub fn get_observation(
    conn: &Connection,
    organization: &str,
    project_id: &str,
    key_id: &str,
) -> Result<Option<Observation>, StateError> {
    let mut stmt = conn.prepare_cached(&get_sql())?;
    Ok(stmt
        .query_row(params![organization, project_id, key_id], from_row)
        .optional()?)
}

/// The statement of [`get_observation`]. Its parameters are written `+?N`: SQLite marks a
/// statement whose plan looked at a bound `?N` (here its guess of how selective `x = ?N` is) to
/// be re-prepared when that binding is cleared, and the statement cache clears the bindings of
/// every statement it takes back, so each call parsed the whole statement again (~230k
/// instructions; two thirds of a 20k-key first sweep in callgrind). `+?N` is the same value and
/// still uses the primary keys; the planner does not look into it.
fn get_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM {FROM}
         WHERE o.organization = +?1 AND o.project_id = +?2 AND o.key_id = +?3"
    )
}

/// All observations of one project (present and gone), ordered by key id.
pub fn project_observations(
    conn: &Connection,
    organization: &str,
    project_id: &str,
) -> Result<Vec<Observation>, StateError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {FROM}
         WHERE o.organization = ?1 AND o.project_id = ?2 ORDER BY o.key_id"
    ))?;
    let rows = stmt.query_map(params![organization, project_id], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The row's columns, with `last_seen` of a present key raised to its project's `last_listed`
/// (see the module docs). A gone key keeps the `last_seen` that `mark_gone` wrote.
const COLUMNS: &str = "o.organization, o.project_id, o.key_id, o.key_name, o.redacted_value, \
    o.owner, o.owner_type, o.created_at, o.last_used_at, o.first_seen, \
    CASE WHEN o.gone_at IS NULL AND l.last_listed > o.last_seen THEN l.last_listed \
         ELSE o.last_seen END, \
    o.gone_at";

/// Every query using it pins `o.organization = ?1 AND o.project_id = ?2`, so the join names
/// those parameters (see [`get_sql`] for the `+`).
const FROM: &str = "key_observations o LEFT JOIN project_listings l \
    ON l.organization = +?1 AND l.project_id = +?2";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Observation> {
    Ok(Observation {
        organization: r.get(0)?,
        project_id: r.get(1)?,
        key_id: r.get(2)?,
        key_name: r.get(3)?,
        redacted_value: r.get(4)?,
        owner: r.get(5)?,
        owner_type: r.get(6)?,
        created_at: r.get(7)?,
        last_used_at: r.get(8)?,
        first_seen: r.get(9)?,
        last_seen: r.get(10)?,
        gone_at: r.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_that_returned_every_stored_key_has_none_gone() {
        let known: Fingerprints = [(hash_id("key_a"), 1), (hash_id("key_b"), 2)]
            .into_iter()
            .collect();
        let both: ListedIds = ["key_a", "key_b", "key_c"]
            .map(listed_id)
            .into_iter()
            .collect();
        let one: ListedIds = ["key_a", "key_c"].map(listed_id).into_iter().collect();
        assert!(all_listed(&known, &both));
        assert!(!all_listed(&known, &one));
        assert!(all_listed(&Fingerprints::default(), &ListedIds::default()));
    }

    /// `get_observation` is prepared once, not at every call (the statement cache clears the
    /// bindings of a statement it takes back, which re-prepares one whose plan looked at them).
    #[test]
    fn get_observation_is_not_prepared_again_at_each_call() {
        let store = crate::state::Store::open_in_memory().unwrap();
        store
            .with_conn(|c| {
                for i in 0..50 {
                    c.execute(
                        "INSERT INTO key_observations VALUES
                             ('o', ?1, ?2, 'n', 'r', 'ow', 'user', 1, 2, 3, 4, NULL)",
                        params![format!("p{}", i % 5), format!("k{i}")],
                    )?;
                }
                for p in 0..3 {
                    touch_listed(c, "o", &format!("p{p}"), 10)?;
                }
                for i in 0..50 {
                    let o = get_observation(c, "o", &format!("p{}", i % 5), &format!("k{i}"))?;
                    let o = o.unwrap();
                    assert_eq!(o.key_id, format!("k{i}"));
                    assert_eq!(o.last_seen, if i % 5 < 3 { 10 } else { 4 });
                }
                assert_eq!(get_observation(c, "o", "p1", "k0")?, None);
                let stmt = c.prepare_cached(&get_sql())?;
                assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
                Ok(())
            })
            .unwrap();
    }
}
