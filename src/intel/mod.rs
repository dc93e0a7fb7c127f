//! What the audit log and the usage endpoints add to the key listing (issue 16): each key's
//! creator (`created_by`), its scopes rebuilt from its events, and its requests and cost over
//! `[usage] window`.
//!
//! [`gather`] reads, per organisation, the `api_key.*` events back to `[audit_log] backfill` and
//! the usage and costs grouped by key; [`rebuild`] (pure) turns the events into each key's
//! creator and scopes. With a state store, the log's history is kept between sweeps
//! (`state::intel`): the first read goes back to `[audit_log] backfill`, each later one only to
//! [`AUDIT_LOG_MARGIN`] before the last successful read, events already applied are skipped by
//! id, and a failed read does not advance the mark. [`Intel::facts`] hands the rules what they
//! judge by (keys known to have All permissions, the last usage bucket). Either source may be unavailable (audit logging off, a key without the
//! scope, an error): then its fields are null (unknown, never "no creator" or "all
//! permissions") and [`Intel::missing`] says once, per organisation, what is missing. This
//! module writes only its own history tables (and only when asked to persist: never for
//! `scan`), never fails a scan or a sweep, and never sees the admin key (the clients hold it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::config::{IntelSettings, PolicyConfig};
use crate::openai::{AdminClient, KeyEvent, KeyEventKind, KeyUsage};
use crate::policy::{KeyFacts, OrgFacts};
use crate::state::Store;
use crate::state::intel::{self as stored, KeyHistoryRow};

mod gaps;
pub use gaps::{Gaps, Logged, gaps, logged_alive};

/// How far before the last successful read each later read of the audit log starts again:
/// the log lags (an event can appear after later ones, and OpenAI gives no figure), so the
/// last six hours are read twice; an event already applied is recognised by its id.
pub const AUDIT_LOG_MARGIN: i64 = 6 * 3600;

/// Seconds in a usage bucket (`bucket_width = "1d"`).
const BUCKET_SECS: i64 = 86_400;

/// Each key's history by key id: a row per key the log has shown since the backfill (100k at a
/// large organisation). A sweep holds it whole only until its facts are made and its read
/// recorded ([`Intel::park`]), then the rows of its findings' keys ([`Intel::unpark`]).
pub type History = HashMap<Box<str>, KeyHistory>;

/// One key's creator and scopes, as the log tells them. Its strings are shared through a
/// [`Pool`]: 100k keys' histories name a few thousand creators, a few hundred projects and a
/// handful of scope lists, and each copied into every row made the history of a 100k-key
/// organisation with a long backfill 45 MiB (`benches/README.md`, eleventh session).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHistory {
    /// The e-mail of the actor of `api_key.created` (`None`: not in the log, or no e-mail).
    pub created_by: Option<Arc<str>>,
    /// The key's scopes: `data.scopes` of its creation, replaced by each update that sets
    /// scopes. `None`: unknown (no event carried them). `Some([])`: all permissions.
    pub scopes: Option<Arc<[String]>>,
    /// When its `api_key.created` says it was created (`None`: not in the log read).
    pub created_at: Stamp,
    /// The project of its creation.
    pub project_id: Option<Arc<str>>,
    /// The expiry the latest update with `expires_in_seconds` set (`effective_at` + seconds).
    pub ends_at: Stamp,
    /// The `effective_at` of the event that set `scopes` (a late, older event never
    /// overrides a newer one).
    pub scopes_at: Stamp,
    /// The `effective_at` of the update that set `ends_at`.
    pub ends_set_at: Stamp,
    /// When its `api_key.deleted` took effect, and the e-mail of who deleted it.
    pub deleted_at: Stamp,
    pub deleted_by: Option<Arc<str>>,
}

/// A moment the log may not have told (`get` is `None`), in 8 bytes where an `Option<i64>` takes
/// 16: five per key in a history of 100k keys. `i64::MIN` is no time the API gives; a value
/// that is would read as unknown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stamp(i64);

impl Stamp {
    pub const NONE: Stamp = Stamp(i64::MIN);

    pub fn get(self) -> Option<i64> {
        (self != Stamp::NONE).then_some(self.0)
    }

    pub fn is_none(self) -> bool {
        self == Stamp::NONE
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp::NONE
    }
}

impl From<Option<i64>> for Stamp {
    fn from(t: Option<i64>) -> Self {
        t.map_or(Stamp::NONE, Stamp)
    }
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// What [`KeyHistory::fold`] reads of an event, its strings shared through the pool. A first
/// read holds every event until they are sorted: 100k events at a large organisation, 550
/// bytes each as the client gives them (with the actor's kind, user and key, which no history
/// keeps), about 200 here.
struct Folded {
    id: Box<str>,
    effective_at: i64,
    key: Option<Box<str>>,
    project: Option<Arc<str>>,
    /// The actor's e-mail.
    by: Option<Arc<str>>,
    change: Change,
}

enum Change {
    Created {
        scopes: Option<Arc<[String]>>,
    },
    Updated {
        scopes: Option<Arc<[String]>>,
        expires_in_seconds: Option<i64>,
    },
    Deleted,
}

impl Folded {
    fn new(e: KeyEvent, pool: &mut Pool) -> Folded {
        let change = match e.kind {
            KeyEventKind::Created { scopes } => Change::Created {
                scopes: scopes.as_deref().map(|s| pool.scopes(s)),
            },
            KeyEventKind::Updated {
                scopes,
                expires_in_seconds,
            } => Change::Updated {
                scopes: scopes.as_deref().map(|s| pool.scopes(s)),
                expires_in_seconds,
            },
            KeyEventKind::Deleted => Change::Deleted,
        };
        Folded {
            id: e.id.into_boxed_str(),
            effective_at: e.effective_at,
            key: e.key_id.map(String::into_boxed_str),
            project: pool.opt(e.project_id.as_deref()),
            by: pool.opt(e.actor.email.as_deref()),
            change,
        }
    }
}

/// The strings and scope lists of one organisation's histories, each kept once and shared.
#[derive(Default)]
struct Pool {
    strs: HashSet<Arc<str>>,
    scopes: HashSet<Arc<[String]>>,
}

impl Pool {
    fn str(&mut self, s: &str) -> Arc<str> {
        intern(&mut self.strs, s)
    }

    fn opt(&mut self, s: Option<&str>) -> Option<Arc<str>> {
        s.map(|s| self.str(s))
    }

    fn scopes(&mut self, s: &[String]) -> Arc<[String]> {
        intern(&mut self.scopes, s)
    }
}

/// The kept copy of `v` in `kept`, made and kept if there is none yet.
fn intern<T: ?Sized + Eq + std::hash::Hash>(kept: &mut HashSet<Arc<T>>, v: &T) -> Arc<T>
where
    for<'a> Arc<T>: From<&'a T>,
{
    if let Some(k) = kept.get(v) {
        return k.clone();
    }
    let new = Arc::from(v);
    kept.insert(Arc::clone(&new));
    new
}

impl KeyHistory {
    /// An `api_key.deleted` event was seen.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.get().is_some()
    }

    /// Folds one event in, as a read does (the tests' way in).
    #[cfg(test)]
    fn apply(&mut self, e: &KeyEvent, pool: &mut Pool) {
        self.fold(&Folded::new(e.clone(), pool));
    }

    /// Folds one event in. Commutative up to ties: a value is replaced only by an event at
    /// least as recent as the one that set it, so events may arrive late and be applied again.
    fn fold(&mut self, e: &Folded) {
        let newer = |at: Stamp| at.get().is_none_or(|at| e.effective_at >= at);
        match &e.change {
            Change::Created { scopes } => {
                self.created_by.clone_from(&e.by);
                self.created_at = Stamp(e.effective_at);
                if e.project.is_some() {
                    self.project_id.clone_from(&e.project);
                }
                // A key's creation is its first event: it never overrides scopes an update set,
                // even one in the same second (event ids are random, so their order decides
                // nothing, and an update there narrowed what the creation set).
                if self.scopes_at.is_none() {
                    self.scopes.clone_from(scopes);
                    self.scopes_at = Stamp(e.effective_at);
                }
            }
            Change::Updated {
                scopes,
                expires_in_seconds,
            } => {
                if scopes.is_some() && newer(self.scopes_at) {
                    self.scopes.clone_from(scopes);
                    self.scopes_at = Stamp(e.effective_at);
                }
                if let Some(secs) = expires_in_seconds
                    && newer(self.ends_set_at)
                {
                    // Never the unknown mark: an expiry far in the past is still one.
                    let ends = e.effective_at.saturating_add(*secs).max(i64::MIN + 1);
                    self.ends_at = Stamp(ends);
                    self.ends_set_at = Stamp(e.effective_at);
                }
            }
            Change::Deleted => {
                self.deleted_at = Stamp(e.effective_at);
                self.deleted_by.clone_from(&e.by);
            }
        }
    }

    fn from_row(r: KeyHistoryRow, pool: &mut Pool) -> (Box<str>, KeyHistory) {
        let h = KeyHistory {
            created_by: pool.opt(r.created_by.as_deref()),
            scopes: r.scopes.as_deref().map(|s| pool.scopes(s)),
            created_at: r.created_at.into(),
            project_id: pool.opt(r.project_id.as_deref()),
            ends_at: r.ends_at.into(),
            scopes_at: r.scopes_at.into(),
            ends_set_at: r.ends_set_at.into(),
            deleted_at: r.deleted_at.into(),
            deleted_by: pool.opt(r.deleted_by.as_deref()),
        };
        (r.key_id.into_boxed_str(), h)
    }

    fn to_row(&self, key_id: &str) -> KeyHistoryRow {
        KeyHistoryRow {
            key_id: key_id.to_string(),
            project_id: self.project_id.as_deref().map(str::to_string),
            created_at: self.created_at.get(),
            created_by: self.created_by.as_deref().map(str::to_string),
            scopes: self.scopes.as_deref().map(<[String]>::to_vec),
            scopes_at: self.scopes_at.get(),
            ends_at: self.ends_at.get(),
            ends_set_at: self.ends_set_at.get(),
            deleted_at: self.deleted_at.get(),
            deleted_by: self.deleted_by.as_deref().map(str::to_string),
        }
    }
}

/// A key's usage over the window, as `scan --format json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageSummary {
    pub window_days: u32,
    pub requests: u64,
    pub cost_usd: f64,
}

/// What one organisation's log and usage said (or why they could not be read).
#[derive(Debug, Clone)]
pub struct OrgIntel {
    pub organization: String,
    /// By the log's key id. `Err`: why the log could not be read.
    pub history: Result<History, String>,
    /// By `api_key_id`. `Err`: why usage could not be read.
    pub usage: Result<BTreeMap<String, KeyUsage>, String>,
    pub window_days: u32,
    /// When this sweep's log read failed: each key's creator as the stored history from earlier
    /// sweeps knows it (key id → e-mail). A creator never changes, so a log outage need not
    /// send a service-account key's notices past its creator; scopes and deletions, which do
    /// change, are not taken from it.
    pub creators_kept: HashMap<String, String>,
    /// The state file holds `history` as it is (this sweep's read was recorded there), so a
    /// sweep may let it go while it lists and read back only the keys it needs
    /// ([`Intel::park`]).
    in_store: bool,
    /// `history` is let go until [`Intel::unpark`] reads its keys back.
    parked: bool,
}

/// The `Err` of a source the configuration turns off (`[audit_log] enabled = false`,
/// `[usage] enabled = false`): unknown like an unreadable one, but not missing — no alert.
pub const OFF: &str = "turned off by the configuration";

/// Which of the rules' facts some policy judges ([`Intel::facts`] collects only those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Some policy judges `unrestricted`. Else no key's scopes are collected: `None`, as if
    /// the log were unknown, which no rule then reads.
    pub scopes: bool,
    /// Some policy judges `max_idle`. Else no key's last use is collected: none, as if usage
    /// were unavailable, which no rule then reads.
    pub last_use: bool,
}

impl Wanted {
    pub const ALL: Wanted = Wanted {
        scopes: true,
        last_use: true,
    };

    /// What `policies` judge.
    pub fn of(policies: &[PolicyConfig]) -> Wanted {
        Wanted {
            scopes: policies.iter().any(|p| p.unrestricted),
            last_use: policies.iter().any(|p| p.max_idle.is_some()),
        }
    }
}

/// Every organisation's [`OrgIntel`].
#[derive(Debug, Clone, Default)]
pub struct Intel {
    pub orgs: Vec<OrgIntel>,
}

/// What the report shows for one key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyIntel<'a> {
    pub created_by: Option<&'a str>,
    pub scopes: Option<&'a [String]>,
    pub usage: Option<UsageSummary>,
    /// The e-mail of who deleted the key, when the log says it was deleted.
    pub deleted_by: Option<&'a str>,
}

/// Each key's creator and scopes from its events, in any order (sorted here, oldest first).
pub fn rebuild(events: &[KeyEvent]) -> History {
    let mut pool = Pool::default();
    let mut folded: Vec<Folded> = (events.iter().cloned())
        .map(|e| Folded::new(e, &mut pool))
        .collect();
    folded.sort_by(|a, b| (a.effective_at, &a.id).cmp(&(b.effective_at, &b.id)));
    let mut out = History::new();
    for e in &folded {
        let Some(key) = &e.key else { continue };
        out.entry(key.clone()).or_default().fold(e);
    }
    out
}

impl Intel {
    /// What is known of `key_id` in `organization`.
    pub fn key(&self, organization: &str, key_id: &str) -> KeyIntel<'_> {
        let Some(o) = self.orgs.iter().find(|o| o.organization == organization) else {
            return KeyIntel::default();
        };
        let h = o.history.as_ref().ok().and_then(|m| m.get(key_id));
        let usage = o.usage.as_ref().ok().map(|m| {
            let u = m.get(key_id).cloned().unwrap_or_default();
            UsageSummary {
                window_days: o.window_days,
                requests: u.requests,
                // Whole cents' precision is what a reader needs; sums of floats drift below it.
                cost_usd: (u.cost_usd * 10_000.0).round() / 10_000.0,
            }
        });
        let kept = || o.creators_kept.get(key_id).map(String::as_str);
        KeyIntel {
            created_by: h.and_then(|h| h.created_by.as_deref()).or_else(kept),
            scopes: h.and_then(|h| h.scopes.as_deref()),
            usage,
            deleted_by: h
                .filter(|h| h.is_deleted())
                .and_then(|h| h.deleted_by.as_deref()),
        }
    }

    /// What the rules judge by (`policy::KeyFacts`): per organisation, the keys the log shows
    /// with All permissions (none known when the log could not be read: the `unrestricted`
    /// condition is then undecided), and when usage last saw each key used: the end of its
    /// last daily bucket with requests, capped at `now` (the API says only the day, so the
    /// key counts as used as late as that day allows). Unavailable usage gives no use at all,
    /// so `max_idle` falls back to `last_used_at`.
    ///
    /// Only the facts some policy judges are collected ([`Wanted`]): at 100k keys, each set
    /// took 7 MiB of every sweep, for nothing without a policy that reads it.
    pub fn facts(&self, now: i64, wanted: Wanted) -> Arc<KeyFacts> {
        let mut f = KeyFacts::default();
        for o in &self.orgs {
            let unrestricted = o.history.as_ref().ok().filter(|_| wanted.scopes).map(|h| {
                (h.iter())
                    .filter(|(_, h)| {
                        !h.is_deleted() && h.scopes.as_ref().is_some_and(|s| s.is_empty())
                    })
                    .map(|(id, _)| id.to_string())
                    .collect()
            });
            let used = o.usage.as_ref().ok().filter(|_| wanted.last_use);
            let used_at = (used.into_iter().flatten())
                .filter_map(|(id, u)| {
                    let end = u.last_used_bucket?.saturating_add(BUCKET_SECS).min(now);
                    Some((id.clone(), end))
                })
                .collect();
            f.insert(
                o.organization.clone(),
                OrgFacts {
                    unrestricted,
                    used_at,
                },
            );
        }
        Arc::new(f)
    }

    /// Keeps each organisation's history, usage and kept creators of only the keys `keep`
    /// names (organisation, key id), and gives the rest back: [`Intel::key`] answers for a kept
    /// key exactly as before. After its listing, a sweep keeps only what its notices and
    /// rotations read (`sweep/owners.rs`): the usage of every used key is about 8 MiB at 100k
    /// keys, and a history not parked ([`Intel::park`]) up to 18 MiB.
    pub fn retain_keys(&mut self, keep: impl Fn(&str, &str) -> bool) {
        for o in &mut self.orgs {
            let OrgIntel {
                organization,
                history,
                usage,
                creators_kept,
                ..
            } = o;
            let org = organization.as_str();
            if let Ok(h) = history {
                h.retain(|id, _| keep(org, id));
                h.shrink_to_fit();
            }
            if let Ok(u) = usage {
                u.retain(|id, _| keep(org, id));
            }
            creators_kept.retain(|id, _| keep(org, id));
            creators_kept.shrink_to_fit();
        }
    }

    /// Lets go of each organisation's history that the state file holds as it is (a sweep's
    /// recorded read), until [`Intel::unpark`]: while a sweep lists, nothing reads it (the
    /// rules' facts are made before), and at 100k keys it was 14–18 MiB of the listing's peak.
    /// Returns how many keys' histories were let go.
    pub fn park(&mut self) -> usize {
        let mut n = 0;
        for o in self.orgs.iter_mut().filter(|o| o.in_store) {
            if let Ok(h) = &mut o.history {
                n += h.len();
                *h = History::new();
                o.parked = true;
            }
        }
        n
    }

    /// Reads back from `store` the histories of the keys `keys` names (organisation, key id)
    /// for each parked organisation: afterwards [`Intel::key`] answers for those keys as
    /// before [`Intel::park`]. An organisation whose history cannot be read back has none
    /// this sweep (`Err`, said once by [`Intel::missing`]): unknown, never "no creator".
    pub fn unpark(&mut self, store: &Store, keys: &HashSet<(&str, &str)>) {
        for o in self.orgs.iter_mut().filter(|o| o.parked) {
            o.parked = false;
            let org = o.organization.as_str();
            let ids = (keys.iter()).filter(|(ko, _)| *ko == org).map(|(_, k)| *k);
            let mut pool = Pool::default();
            let mut history = History::new();
            let read = store.with_conn(|c| {
                stored::histories_of(c, org, ids, |row| {
                    let (id, h) = KeyHistory::from_row(row, &mut pool);
                    history.insert(id, h);
                })
            });
            o.history = match read {
                Ok(()) => Ok(history),
                Err(e) => Err(format!(
                    "the stored audit-log history cannot be read back: {}",
                    crate::error_chain(&e)
                )),
            };
        }
    }

    /// How many keys' histories are held, over every organisation whose log was read.
    pub fn history_len(&self) -> usize {
        (self.orgs.iter())
            .filter_map(|o| o.history.as_ref().ok())
            .map(HashMap::len)
            .sum()
    }

    /// One line per organisation and missing source: what is unknown and why.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        for o in &self.orgs {
            if let Err(why) = o.history.as_ref().map_err(String::as_str)
                && why != OFF
            {
                out.push(format!(
                    "organisation {}: the audit log is unavailable, so created_by and scopes are \
                     null: {why}",
                    o.organization
                ));
            }
            if let Err(why) = o.usage.as_ref().map_err(String::as_str)
                && why != OFF
            {
                out.push(format!(
                    "organisation {}: usage is unavailable, so usage is null: {why}",
                    o.organization
                ));
            }
        }
        out
    }
}

/// Where the audit log's history is kept between reads.
#[derive(Clone, Copy)]
pub struct Kept<'a> {
    pub store: &'a Store,
    /// Record this read (a sweep); `false` reads the stored history without changing it
    /// (`scan`, which never writes).
    pub persist: bool,
}

/// Reads the log back to `now − backfill` and the usage over `[now − window, now)` for every
/// client, with no history kept. Never fails: what cannot be read is an `Err` in its
/// [`OrgIntel`].
pub async fn gather(clients: &[AdminClient], settings: IntelSettings, now: i64) -> Intel {
    gather_kept(clients, settings, now, None).await
}

/// [`gather`], with the log's history kept in `kept`: only the events since the last
/// successful read (less [`AUDIT_LOG_MARGIN`], never before the backfill) are read, on top of
/// the stored history.
pub async fn gather_kept(
    clients: &[AdminClient],
    settings: IntelSettings,
    now: i64,
    kept: Option<Kept<'_>>,
) -> Intel {
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let horizon = now.saturating_sub(secs(settings.audit_backfill));
    let start = now.saturating_sub(secs(settings.usage_window));
    // Every organisation at once: each is a handful of paged requests, and the listing waits
    // for all of them (its rules need the facts before its first page).
    let reads = clients.iter().map(|c| async move {
        let read_history = async {
            if settings.audit_log_enabled {
                org_history(c, horizon, now, kept).await
            } else {
                Err(HistoryFailed::from(OFF.to_string()))
            }
        };
        let read_usage = async {
            if settings.usage_enabled {
                c.usage_by_key(start, now).await.map_err(|e| e.to_string())
            } else {
                Err(OFF.to_string())
            }
        };
        let (history, usage) = tokio::join!(read_history, read_usage);
        let (history, creators_kept, in_store) = match history {
            Ok((h, in_store)) => (Ok(h), HashMap::new(), in_store),
            Err(f) => (Err(f.message), f.creators, false),
        };
        OrgIntel {
            organization: c.org_name().to_string(),
            history,
            usage,
            window_days: settings.window_days(),
            creators_kept,
            in_store,
            parked: false,
        }
    });
    let orgs = futures_util::future::join_all(reads).await;
    Intel { orgs }
}

/// What the stored history of an organisation holds, and the pool its strings are shared in.
#[derive(Default)]
struct Stored {
    mark: Option<i64>,
    history: History,
    seen: HashSet<String>,
    pool: Pool,
}

fn load(store: &Store, organization: &str) -> Result<Stored, crate::state::StateError> {
    store.with_conn(|c| {
        let mut st = Stored {
            mark: stored::mark(c, organization)?,
            seen: stored::seen_events(c, organization)?,
            ..Stored::default()
        };
        // Sized once: a map that doubles as it fills holds both tables while it moves.
        st.history.reserve(stored::history_count(c, organization)?);
        stored::each_history(c, organization, |row| {
            let (id, h) = KeyHistory::from_row(row, &mut st.pool);
            st.history.insert(id, h);
        })?;
        Ok(st)
    })
}

/// Why an organisation's history could not be read this sweep, and the creators the stored
/// history still knows.
struct HistoryFailed {
    message: String,
    creators: HashMap<String, String>,
}

impl From<String> for HistoryFailed {
    fn from(message: String) -> Self {
        HistoryFailed {
            message,
            creators: HashMap::new(),
        }
    }
}

/// One organisation's key histories: the stored ones and the events read since the mark; and
/// whether the state file now holds them as they are.
async fn org_history(
    c: &AdminClient,
    horizon: i64,
    now: i64,
    kept: Option<Kept<'_>>,
) -> Result<(History, bool), HistoryFailed> {
    let org = c.org_name();
    let mut st = match kept {
        Some(k) => load(k.store, org).map_err(|e| {
            format!(
                "the stored audit-log history cannot be read: {}",
                crate::error_chain(&e)
            )
        })?,
        None => Stored::default(),
    };
    let since = st
        .mark
        .map_or(horizon, |m| m.saturating_sub(AUDIT_LOG_MARGIN).max(horizon));
    let mut events: Vec<Folded> = Vec::new();
    let read = c.each_key_event(since, |e| {
        if e.key_id.is_some() {
            events.push(Folded::new(e, &mut st.pool));
        }
    });
    if let Err(e) = read.await {
        let creators = (st.history.into_iter())
            .filter_map(|(id, h)| Some((id.into_string(), h.created_by?.to_string())))
            .collect();
        return Err(HistoryFailed {
            message: e.to_string(),
            creators,
        });
    }
    events.sort_by(|a, b| (a.effective_at, &a.id).cmp(&(b.effective_at, &b.id)));
    let forget_seen_before = now.saturating_sub(AUDIT_LOG_MARGIN);
    let mut changed: HashSet<&str> = HashSet::new();
    let mut applied = Vec::new();
    for e in &events {
        let Some(key) = &e.key else { continue };
        if st.seen.contains(&*e.id) {
            continue;
        }
        // Only an event inside the margin can be read again; an older one would be forgotten
        // as soon as it was recorded (a first read's 100k ids).
        if e.effective_at >= forget_seen_before {
            st.seen.insert(e.id.to_string());
            applied.push((&*e.id, e.effective_at));
        }
        (st.history.entry(key.clone()).or_default()).fold(e);
        changed.insert(key);
    }
    let mut in_store = false;
    if let Some(k) = kept.filter(|k| k.persist) {
        // Made one at a time as they are written: a first read changes every key's.
        let rows = (changed.iter()).filter_map(|id| st.history.get(*id).map(|h| h.to_row(id)));
        let read = stored::ReadResult {
            applied,
            // Never later than the wall clock: a rehearsal with `--now` in the future must
            // not make later sweeps skip what happens until then.
            read_to: now.min(chrono::Utc::now().timestamp()),
            forget_seen_before,
            forget_deleted_before: horizon,
        };
        // The history read is true whether or not it could be kept: the next sweep then reads
        // from the previous mark again.
        match k.store.tx(|tx| stored::record_read(tx, org, rows, &read)) {
            Ok(()) => {
                // What the state file forgot, so is forgotten here: it now holds this history
                // as it is.
                (st.history).retain(|_, h| h.deleted_at.get().is_none_or(|d| d >= horizon));
                in_store = true;
            }
            Err(e) => tracing::warn!(
                organization = org,
                "cannot keep the audit log's history: {}",
                crate::error_chain(&e)
            ),
        }
    }
    Ok((st.history, in_store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::Actor;

    fn ev(id: &str, at: i64, key: &str, kind: KeyEventKind, email: Option<&str>) -> KeyEvent {
        KeyEvent {
            id: id.into(),
            effective_at: at,
            key_id: Some(key.into()),
            project_id: None,
            kind,
            actor: Actor {
                email: email.map(str::to_string),
                ..Actor::default()
            },
        }
    }

    #[test]
    fn scopes_follow_creation_then_updates_and_stay_unknown_without_them() {
        let s = |v: &[&str]| Some(v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>());
        // Newest first, as the log lists them.
        let events = vec![
            ev(
                "e4",
                40,
                "key_a",
                KeyEventKind::Updated {
                    scopes: None,
                    expires_in_seconds: None,
                },
                None,
            ),
            ev(
                "e3",
                30,
                "key_a",
                KeyEventKind::Updated {
                    scopes: s(&["api.all.read"]),
                    expires_in_seconds: None,
                },
                None,
            ),
            ev(
                "e2",
                20,
                "key_b",
                KeyEventKind::Created { scopes: None },
                Some("b@x"),
            ),
            ev(
                "e1",
                10,
                "key_a",
                KeyEventKind::Created { scopes: s(&[]) },
                Some("a@x"),
            ),
            ev("e5", 50, "key_c", KeyEventKind::Deleted, Some("c@x")),
        ];
        let h = rebuild(&events);
        assert_eq!(h["key_a"].created_by.as_deref(), Some("a@x"));
        assert_eq!(
            h["key_a"].scopes.as_deref(),
            s(&["api.all.read"]).as_deref()
        );
        assert_eq!(
            h["key_b"].scopes, None,
            "a missing data.scopes is unknown, never all"
        );
        assert_eq!(h["key_c"].created_by, None);
        assert!(h["key_c"].is_deleted());
        assert_eq!(h["key_c"].deleted_by.as_deref(), Some("c@x"));
        let only_created = rebuild(&events[3..4]);
        assert_eq!(
            only_created["key_a"].scopes.as_deref(),
            Some(&[][..]),
            "[] is all permissions"
        );
    }

    #[test]
    fn an_update_in_the_creations_second_keeps_its_scopes_whatever_the_event_ids() {
        let s = |v: &[&str]| Some(v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>());
        let created = |id| {
            ev(
                id,
                10,
                "key_a",
                KeyEventKind::Created { scopes: s(&[]) },
                None,
            )
        };
        let narrowed = |id| {
            let kind = KeyEventKind::Updated {
                scopes: s(&["api.model.read"]),
                expires_in_seconds: None,
            };
            ev(id, 10, "key_a", kind, None)
        };
        // Both orders of the ids (the sort key within a second) and both orders of arrival.
        for (c, u) in [("e1", "e2"), ("e2", "e1")] {
            for creation_first in [true, false] {
                let (mut h, mut pool) = (KeyHistory::default(), Pool::default());
                let (a, b) = (created(c), narrowed(u));
                if creation_first {
                    h.apply(&a, &mut pool);
                    h.apply(&b, &mut pool);
                } else {
                    h.apply(&b, &mut pool);
                    h.apply(&a, &mut pool);
                }
                let want = s(&["api.model.read"]);
                assert_eq!(
                    h.scopes.as_deref(),
                    want.as_deref(),
                    "{c} {u} {creation_first}"
                );
            }
        }
    }

    #[test]
    fn a_late_event_never_overrides_a_newer_one_and_applying_twice_changes_nothing() {
        let s = |v: &[&str]| Some(v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>());
        let created = ev(
            "e1",
            10,
            "key_a",
            KeyEventKind::Created { scopes: s(&[]) },
            Some("a@x"),
        );
        let restricted = ev(
            "e2",
            20,
            "key_a",
            KeyEventKind::Updated {
                scopes: s(&["api.model.read"]),
                expires_in_seconds: Some(100),
            },
            None,
        );
        let deleted = ev("e3", 30, "key_a", KeyEventKind::Deleted, Some("d@x"));
        // In order, then the creation arriving late (the log lags), then everything again.
        let (mut h, mut pool) = (KeyHistory::default(), Pool::default());
        for e in [
            &restricted,
            &deleted,
            &created,
            &created,
            &restricted,
            &deleted,
        ] {
            h.apply(e, &mut pool);
        }
        assert_eq!(h.created_by.as_deref(), Some("a@x"));
        assert_eq!(
            h.scopes.as_deref(),
            s(&["api.model.read"]).as_deref(),
            "the late creation's [] lost"
        );
        assert_eq!(
            (h.ends_at.get(), h.ends_set_at.get()),
            (Some(120), Some(20))
        );
        assert_eq!(
            (h.deleted_at.get(), h.deleted_by.as_deref()),
            (Some(30), Some("d@x"))
        );
        let (id, back) = KeyHistory::from_row(h.to_row("key_a"), &mut pool);
        assert_eq!((&*id, &back), ("key_a", &h));
        // Read back through the same pool, its strings are the pool's, not copies.
        let (by, back_by) = (h.created_by.unwrap(), back.created_by.unwrap());
        assert!(Arc::ptr_eq(&by, &back_by));
        assert!(Arc::ptr_eq(&h.scopes.unwrap(), &back.scopes.unwrap()));
    }

    #[test]
    fn facts_know_only_live_keys_with_all_permissions_and_usage_to_the_buckets_end() {
        let mut history = History::new();
        history.insert(
            "key_all".into(),
            KeyHistory {
                scopes: Some(Arc::from([])),
                ..KeyHistory::default()
            },
        );
        history.insert(
            "key_gone".into(),
            KeyHistory {
                scopes: Some(Arc::from([])),
                deleted_at: Stamp(20),
                ..KeyHistory::default()
            },
        );
        let mut usage = BTreeMap::new();
        usage.insert(
            "key_all".to_string(),
            KeyUsage {
                requests: 1,
                cost_usd: 0.0,
                last_used_bucket: Some(1_000),
            },
        );
        let intel = Intel {
            orgs: vec![OrgIntel {
                organization: "acme".into(),
                history: Ok(history),
                usage: Ok(usage),
                window_days: 30,
                creators_kept: HashMap::new(),
                in_store: false,
                parked: false,
            }],
        };
        let f = intel.facts(200_000, Wanted::ALL);
        use crate::policy::Scopes;
        assert_eq!(f.scopes("acme", "key_all"), Scopes::Unrestricted);
        assert_eq!(f.scopes("acme", "key_gone"), Scopes::NotKnownUnrestricted);
        assert_eq!(f.scopes("globex", "key_all"), Scopes::Undecided);
        assert_eq!(f.used_at("acme", "key_all"), Some(1_000 + BUCKET_SECS));
        assert_eq!(
            intel.facts(2_000, Wanted::ALL).used_at("acme", "key_all"),
            Some(2_000)
        );
        // What no policy judges is not collected, and nothing reads it as a fact.
        let no_scopes = Wanted {
            scopes: false,
            last_use: true,
        };
        let without = intel.facts(200_000, no_scopes);
        assert_eq!(without.scopes("acme", "key_all"), Scopes::Undecided);
        assert_eq!(
            without.used_at("acme", "key_all"),
            Some(1_000 + BUCKET_SECS)
        );
        let no_last_use = Wanted {
            scopes: true,
            last_use: false,
        };
        let without = intel.facts(200_000, no_last_use);
        assert_eq!(without.scopes("acme", "key_all"), Scopes::Unrestricted);
        assert_eq!(without.used_at("acme", "key_all"), None);
    }

    #[test]
    fn retaining_keys_keeps_what_they_answer_and_gives_back_the_rest() {
        let h = |by: &str| KeyHistory {
            created_by: Some(Arc::from(by)),
            scopes: Some(Arc::from(["api.model.read".to_string()])),
            deleted_at: Stamp(5),
            deleted_by: Some(Arc::from("d@x")),
            ..KeyHistory::default()
        };
        let used = |n| KeyUsage {
            requests: n,
            cost_usd: 0.5,
            last_used_bucket: Some(0),
        };
        let org = |name: &str, history: Result<History, String>| OrgIntel {
            organization: name.into(),
            history,
            usage: Ok([("key_a", 1), ("key_b", 2)]
                .map(|(k, n)| (k.to_string(), used(n)))
                .into()),
            window_days: 30,
            creators_kept: [("key_a", "a@x"), ("key_b", "b@x")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            in_store: false,
            parked: false,
        };
        let history: History = [("key_a", "a@x"), ("key_b", "b@x")]
            .map(|(k, by)| (Box::from(k), h(by)))
            .into();
        let mut intel = Intel {
            orgs: vec![
                org("acme", Ok(history.clone())),
                org("globex", Err("down".into())),
            ],
        };
        let all = intel.clone();
        intel.retain_keys(|o, k| (o, k) == ("acme", "key_a") || (o, k) == ("globex", "key_b"));
        assert_eq!(intel.history_len(), 1);
        for (o, k) in [("acme", "key_a"), ("globex", "key_b")] {
            assert_eq!(intel.key(o, k), all.key(o, k), "{o} {k}");
            assert!(intel.key(o, k).created_by.is_some(), "{o} {k}");
        }
        assert_eq!(all.key("acme", "key_b").created_by, Some("b@x"));
        assert_eq!(intel.key("acme", "key_b").created_by, None);
        assert_eq!(
            intel.key("acme", "key_b").usage.map(|u| u.requests),
            Some(0)
        );
        assert_eq!(intel.key("globex", "key_a").created_by, None);
        assert_eq!(intel.orgs[1].creators_kept.len(), 1);
    }

    #[test]
    fn a_parked_history_comes_back_for_the_keys_named_and_only_those() {
        let store = Store::open_in_memory().unwrap();
        let h = |by: &str| KeyHistory {
            created_by: Some(Arc::from(by)),
            scopes: Some(Arc::from([])),
            created_at: Stamp(10),
            project_id: Some(Arc::from("proj_a")),
            ..KeyHistory::default()
        };
        let history: History = [("key_a", "a@x"), ("key_b", "b@x"), ("key_c", "c@x")]
            .map(|(k, by)| (Box::from(k), h(by)))
            .into();
        let rows = history.iter().map(|(id, h)| h.to_row(id));
        let read = stored::ReadResult::default();
        (store.tx(|tx| stored::record_read(tx, "acme", rows, &read))).unwrap();
        let org = |name: &str, in_store| OrgIntel {
            organization: name.into(),
            history: Ok(history.clone()),
            usage: Err(OFF.into()),
            window_days: 30,
            creators_kept: HashMap::new(),
            in_store,
            parked: false,
        };
        // `globex`'s read was not recorded: its history stays where it is.
        let mut intel = Intel {
            orgs: vec![org("acme", true), org("globex", false)],
        };
        let all = intel.clone();
        assert_eq!(intel.park(), 3);
        assert_eq!(intel.history_len(), 3, "only acme's is let go");
        let keys: HashSet<(&str, &str)> =
            [("acme", "key_a"), ("acme", "key_c"), ("globex", "key_a")].into();
        intel.unpark(&store, &keys);
        for k in ["key_a", "key_c"] {
            assert_eq!(intel.key("acme", k), all.key("acme", k), "{k}");
        }
        assert_eq!(intel.key("acme", "key_a").created_by, Some("a@x"));
        assert_eq!(intel.key("acme", "key_b"), KeyIntel::default());
        assert_eq!(intel.history_len(), 2 + 3);
        // Read back, its strings are shared again.
        let acme = intel.orgs[0].history.as_ref().unwrap();
        let (a, c) = (&acme["key_a"], &acme["key_c"]);
        assert!(Arc::ptr_eq(
            a.project_id.as_ref().unwrap(),
            c.project_id.as_ref().unwrap()
        ));
        assert!(intel.missing().is_empty(), "{:?}", intel.missing());
    }

    #[test]
    fn an_unavailable_source_is_null_and_said_once() {
        let mut usage = BTreeMap::new();
        usage.insert(
            "key_a".to_string(),
            KeyUsage {
                requests: 1240,
                cost_usd: 3.1000000000000005,
                last_used_bucket: Some(5),
            },
        );
        let intel = Intel {
            orgs: vec![OrgIntel {
                organization: "acme".into(),
                history: Err("HTTP 403".into()),
                usage: Ok(usage),
                window_days: 30,
                creators_kept: HashMap::new(),
                in_store: false,
                parked: false,
            }],
        };
        let k = intel.key("acme", "key_a");
        assert_eq!((k.created_by, k.scopes), (None, None));
        let u = k.usage.unwrap();
        assert_eq!((u.window_days, u.requests, u.cost_usd), (30, 1240, 3.1));
        assert_eq!(intel.key("acme", "key_unused").usage.unwrap().requests, 0);
        assert_eq!(intel.key("globex", "key_a"), KeyIntel::default());
        let missing = intel.missing();
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("acme") && missing[0].contains("HTTP 403"));
    }
}
