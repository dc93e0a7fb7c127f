//! The sweep's side of the listing: every page of keys is evaluated and recorded as it
//! arrives, then dropped, so a sweep's memory follows its findings and not its keys.
//!
//! Pages travel over a bounded channel (the listing waits when recording lags; nothing is
//! dropped) to one recorder task. It evaluates each page (pure, `evaluate.rs`) and writes the
//! keys' observations in batches, one transaction per batch on a blocking thread, while the
//! next batch gathers. A project's evaluation is kept only if its listing completes, and only
//! then are its absent keys marked gone. Before a changed key's row is overwritten, its stored
//! `last_used_at` tells whether a dormant key woke up (`Recorded::woke`, issue 16). This
//! module never deletes, notifies or writes a
//! finding: that waits until the whole listing is in.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::inventory::{Key, KeyTally, Listing, ProjectRef};
use crate::openai::KeySink;
use crate::state::{self, Store};

use super::evaluate::{Evaluator, OpenFindings, Step};
use super::report::SweepError;

/// A batch is written once it holds this many keys...
const BATCH_KEYS: usize = 5_000;
/// ...or once its first page has waited this long.
const BATCH_WAIT: Duration = Duration::from_millis(50);

enum Msg {
    Page {
        org: usize,
        project_id: Arc<str>,
        keys: Vec<Key>,
    },
    End {
        org: usize,
        project_id: Arc<str>,
        complete: bool,
    },
}

impl Msg {
    fn keys(&self) -> usize {
        match self {
            Msg::Page { keys, .. } => keys.len(),
            Msg::End { .. } => 0,
        }
    }
}

/// One project's keys, on their way to the recorder.
pub(crate) struct Sink {
    org: usize,
    project_id: Arc<str>,
    now: i64,
    tally: KeyTally,
    tx: mpsc::Sender<Msg>,
    waits: Arc<AtomicU64>,
}

impl KeySink for Sink {
    type Kept = KeyTally;

    async fn page(&mut self, keys: Vec<Key>) -> bool {
        self.tally.add(&keys, self.now);
        let msg = Msg::Page {
            org: self.org,
            project_id: self.project_id.clone(),
            keys,
        };
        // A send fails only when the recorder has stopped on an error, which then fails the
        // sweep before anything is planned: stop listing, there is nothing to list for.
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                // The listing waits for the recorder: counted, for the sweep's log.
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.tx.send(msg).await.is_ok()
            }
        }
    }

    async fn finish(self, listing: &Listing) -> KeyTally {
        let complete = listing.is_complete();
        let _ = self
            .tx
            .send(Msg::End {
                org: self.org,
                project_id: self.project_id,
                complete,
            })
            .await;
        // An incomplete project counts no keys, as if none had been listed.
        if complete {
            self.tally
        } else {
            KeyTally::default()
        }
    }
}

/// What the recorder kept of one organisation: the evaluation of its completely listed
/// projects, and which projects those are.
#[derive(Default)]
pub(crate) struct Recorded {
    pub step: Step,
    pub complete: HashSet<String>,
    /// Keys idle at least `[usage] wake_after` whose `last_used_at` moved past that gap.
    pub woke: Vec<Woke>,
}

/// A dormant key used again (issue 16): its previous and new `last_used_at`.
pub(crate) struct Woke {
    pub project_id: String,
    pub key_id: String,
    /// The stored `last_used_at`, or its `created_at` when it had never been used.
    pub idle_since: i64,
    pub last_used_at: i64,
    /// The key's name and owner as this listing gave them: the owner's kind and the API's
    /// e-mail for them (never a display name, which the owner chooses), to route the alert by.
    pub key_name: String,
    pub owner_kind: crate::inventory::OwnerType,
    pub owner_email: Option<String>,
}

/// The running recorder of one sweep. Dropping it (a sweep aborted at shutdown) stops the task
/// after the batch being written.
pub(crate) struct Recorder {
    tx: mpsc::Sender<Msg>,
    names: Vec<String>,
    now: i64,
    /// Pages that found the channel full: how often the recorder held the listing back.
    waits: Arc<AtomicU64>,
    task: Option<JoinHandle<Result<Finished, SweepError>>>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the recorder keeps of a project until its listing ends.
#[derive(Default)]
struct Pending {
    step: Step,
    ids: state::observations::ListedIds,
}

enum Write {
    Observe {
        org: usize,
        project_id: Arc<str>,
        keys: Vec<Key>,
    },
    Gone {
        org: usize,
        project_id: Arc<str>,
        ids: state::observations::ListedIds,
    },
}

/// Each organisation's open findings, in the order of the recorder's names, being loaded (on a
/// blocking thread) while the listing starts: a steady sweep at 1,000 projects has 20k of them,
/// 50 ms of JSON that used to come before the first request.
pub(crate) type OpenLoad = JoinHandle<Result<Vec<Arc<OpenFindings>>, SweepError>>;

/// Per organisation: the evaluation of its completely listed projects, and its open findings.
pub(crate) type Finished = (Vec<Recorded>, Vec<Arc<OpenFindings>>);

impl Recorder {
    /// `names`: every organisation being swept, in the order the sinks will name them; `open`:
    /// their open findings, awaited before the first page is evaluated (pages wait in the
    /// channel meanwhile). `capacity`: pages that may wait in the channel.
    pub(crate) fn start(
        store: Store,
        evaluator: Evaluator,
        names: Vec<String>,
        open: OpenLoad,
        capacity: usize,
        wake_after: i64,
    ) -> Recorder {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let now = evaluator.now;
        let task = tokio::spawn(record(
            rx,
            store,
            (evaluator, wake_after),
            open,
            names.clone(),
        ));
        Recorder {
            tx,
            names,
            now,
            waits: Arc::default(),
            task: Some(task),
        }
    }

    /// The sink for one project's keys.
    pub(crate) fn sink(&self, project: &ProjectRef) -> Sink {
        let org = self
            .names
            .iter()
            .position(|n| *n == project.organization)
            .unwrap_or(usize::MAX);
        Sink {
            org,
            project_id: Arc::from(project.id.as_str()),
            now: self.now,
            tally: KeyTally::default(),
            tx: self.tx.clone(),
            waits: self.waits.clone(),
        }
    }

    /// Waits for everything sent to be recorded; returns, per organisation, the evaluation of its
    /// completely listed projects, and its open findings. Call it once every sink is gone.
    pub(crate) async fn finish(mut self) -> Result<Finished, SweepError> {
        let Some(task) = self.task.take() else {
            return Err(SweepError::Recorder("finished twice".to_string()));
        };
        let waits = self.waits.load(Ordering::Relaxed);
        tracing::debug!(pages = waits, "pages that waited for the recorder");
        // The recorder's loop ends when every sender is gone: the sinks are, this is the last.
        drop(self);
        task.await
            .map_err(|e| SweepError::Recorder(e.to_string()))?
    }
}

/// Everything the recorder carries from batch to batch. It travels into each batch's blocking
/// task and back, so evaluation and writing never occupy an async worker (the listing's
/// responses are waiting to be polled there).
struct Books {
    evaluator: Evaluator,
    /// `[usage] wake_after` in seconds.
    wake_after: i64,
    open: Vec<Arc<OpenFindings>>,
    names: Vec<String>,
    accepted: Vec<Recorded>,
    pending: HashMap<(usize, Arc<str>), Pending>,
    /// Each listed project's stored snapshots, loaded at its first page: a key whose snapshot
    /// did not change is not rewritten.
    known: Known,
}

impl Books {
    /// Evaluates a batch and writes what it says, in one transaction.
    fn batch(&mut self, store: &Store, batch: Vec<Msg>) -> Result<(), state::StateError> {
        let mut writes = Vec::with_capacity(batch.len());
        for msg in batch {
            match msg {
                Msg::Page {
                    org,
                    project_id,
                    keys,
                } => {
                    let Some(open) = self.open.get(org) else {
                        continue;
                    };
                    let p = self.pending.entry((org, project_id.clone())).or_default();
                    for k in &keys {
                        self.evaluator.key(k, open, &mut p.step);
                        p.ids.insert(state::observations::listed_id(&k.id));
                    }
                    writes.push(Write::Observe {
                        org,
                        project_id,
                        keys,
                    });
                }
                Msg::End {
                    org,
                    project_id,
                    complete,
                } => {
                    let p = self
                        .pending
                        .remove(&(org, project_id.clone()))
                        .unwrap_or_default();
                    if !complete {
                        self.known.remove(&(org, project_id));
                    } else if let Some(into) = self.accepted.get_mut(org) {
                        into.step.absorb(p.step);
                        into.complete.insert(project_id.to_string());
                        writes.push(Write::Gone {
                            org,
                            project_id,
                            ids: p.ids,
                        });
                    }
                }
            }
        }
        let now = self.evaluator.now;
        let (names, known, wake_after) = (&self.names, &mut self.known, self.wake_after);
        let woke = store.tx(|tx| {
            let mut woke = Vec::new();
            // Every page's changed rows first, in multi-row statements across projects; then
            // the ends of the projects listed completely. A project's pages come before its
            // end, so its end reads its rows written.
            state::observations::observe_batched(tx, now, |rows| {
                for w in &writes {
                    woke.extend(woken(tx, w, names, known, wake_after)?);
                    observe(tx, rows, w, names, known)?;
                }
                Ok(())
            })?;
            for w in &writes {
                gone(tx, w, names, known, now)?;
            }
            Ok(woke)
        })?;
        for (org, w) in woke {
            if let Some(into) = self.accepted.get_mut(org) {
                into.woke.push(w);
            }
        }
        Ok(())
    }
}

async fn record(
    mut rx: mpsc::Receiver<Msg>,
    store: Store,
    (evaluator, wake_after): (Evaluator, i64),
    open: OpenLoad,
    names: Vec<String>,
) -> Result<Finished, SweepError> {
    // On an error the receiver is dropped: the sinks' sends fail and the listing stops.
    let open = open
        .await
        .map_err(|e| SweepError::Recorder(e.to_string()))??;
    // With the blocking task of the batch being written while the next one gathers.
    let mut books = Some(Books {
        accepted: open.iter().map(|_| Recorded::default()).collect(),
        evaluator,
        wake_after,
        open,
        names,
        pending: HashMap::new(),
        known: Known::new(),
    });
    let mut working: Option<JoinHandle<Result<Books, state::StateError>>> = None;
    while let Some(first) = rx.recv().await {
        // Gather a batch: one commit (one fsync) per batch, not per page.
        let mut batch_keys = first.keys();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch_keys < BATCH_KEYS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => {
                    batch_keys += msg.keys();
                    batch.push(msg);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Batches stay in order: the previous one is committed before this one starts.
        if let Some(prev) = working.take() {
            books = Some(finish_batch(prev).await?);
        }
        let mut b = books.take().ok_or_else(lost)?;
        let store = store.clone();
        working = Some(tokio::task::spawn_blocking(move || {
            b.batch(&store, batch)?;
            Ok(b)
        }));
    }
    if let Some(prev) = working.take() {
        books = Some(finish_batch(prev).await?);
    }
    // A project whose task died never ended: its evaluation is dropped with `pending`.
    let books = books.ok_or_else(lost)?;
    Ok((books.accepted, books.open))
}

fn lost() -> SweepError {
    SweepError::Recorder("the recorder lost its state".to_string())
}

async fn finish_batch(
    h: JoinHandle<Result<Books, state::StateError>>,
) -> Result<Books, SweepError> {
    h.await
        .map_err(|e| SweepError::Recorder(e.to_string()))?
        .map_err(SweepError::State)
}

/// Stored snapshots of the projects being listed, by (organisation, project).
type Known = HashMap<(usize, Arc<str>), state::observations::Fingerprints>;

/// The changed rows of a page (`Write::Observe`), compared with the project's stored
/// snapshots (loaded at its first page, before any of its rows is pushed).
fn observe<'k>(
    tx: &rusqlite::Connection,
    rows: &mut state::observations::ObservationWriter<'_, 'k>,
    w: &'k Write,
    names: &'k [String],
    known: &mut Known,
) -> Result<(), state::StateError> {
    use state::observations as obs;
    if let Write::Observe {
        org,
        project_id,
        keys,
    } = w
    {
        let org_name = &names[*org];
        let prints = match known.entry((*org, project_id.clone())) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(obs::fingerprints(tx, org_name, project_id)?),
        };
        rows.record_changed(org_name, project_id, keys, prints)?;
    }
    Ok(())
}

/// The keys of a page (`Write::Observe`) that woke up: changed since the stored snapshot
/// (read before the page's rows are written), seen before, idle at least `wake_after`
/// since their stored `last_used_at` (or creation), and used after that gap.
fn woken(
    tx: &rusqlite::Connection,
    w: &Write,
    names: &[String],
    known: &mut Known,
    wake_after: i64,
) -> Result<Vec<(usize, Woke)>, state::StateError> {
    use state::observations as obs;
    let Write::Observe {
        org,
        project_id,
        keys,
    } = w
    else {
        return Ok(Vec::new());
    };
    let org_name = &names[*org];
    let prints = match known.entry((*org, project_id.clone())) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(obs::fingerprints(tx, org_name, project_id)?),
    };
    let mut out = Vec::new();
    // A key without a stored row that is not gone (every key of a first sweep) cannot have
    // woken: it is not read back, one query per key.
    let stored = keys
        .iter()
        .filter(|k| obs::is_known(&k.id, prints) && obs::is_changed(k, prints));
    for k in stored {
        let Some(used) = k.last_used_at else { continue };
        let Some(o) = obs::get_observation(tx, org_name, project_id, &k.id)? else {
            continue;
        };
        let idle_since = o.last_used_at.unwrap_or(o.created_at);
        if o.gone_at.is_none() && used.saturating_sub(idle_since) >= wake_after {
            out.push((
                *org,
                Woke {
                    project_id: project_id.to_string(),
                    key_id: k.id.clone(),
                    idle_since,
                    last_used_at: used,
                    key_name: k.name.clone(),
                    owner_kind: k.owner.kind,
                    owner_email: k.owner.email.clone(),
                },
            ));
        }
    }
    Ok(out)
}

/// The end of a complete listing (`Write::Gone`): absent keys marked gone, then the
/// project's listing time advanced.
fn gone(
    tx: &rusqlite::Connection,
    w: &Write,
    names: &[String],
    known: &mut Known,
    now: i64,
) -> Result<(), state::StateError> {
    use state::observations as obs;
    if let Write::Gone {
        org,
        project_id,
        ids,
    } = w
    {
        let org_name = &names[*org];
        // The project's stored snapshots, loaded at its first page, hold every key stored as
        // present: when the listing returned all of them, none is gone, and the scan of the
        // project's rows (10,000 for a deep project, at the end of its listing, on the
        // sweep's critical path) is skipped. A project with no page has none loaded: scanned.
        let stored = known.remove(&(*org, project_id.clone()));
        if !stored.is_some_and(|prints| obs::all_listed(&prints, ids)) {
            obs::mark_gone_unlisted(tx, org_name, project_id, ids, now)?;
        }
        // Every key still present was in this complete listing.
        obs::touch_listed(tx, org_name, project_id, now)?;
    }
    Ok(())
}
