//! What the phases of one sweep share: the sweep's options, store, clients and mode, and its
//! clock (`now` for every decision, an `Instant` for the timings). Begins a sweep; decides
//! nothing itself.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::Mode;
use crate::openai::AdminClient;
use crate::policy::{KeyFacts, Policies};
use crate::revoke;
use crate::state::audit::{AuditKind, AuditRecord};
use crate::state::{self, Store};

use super::report::SweepError;
use super::sweeper::{SweepOptions, Sweeper};

/// The log target of a sweep's first and last line.
pub(super) const SWEEP_TARGET: &str = "keysweep::sweep";

/// One sweep in progress.
pub(super) struct Run<'a> {
    pub sweeper: &'a Sweeper,
    pub opts: &'a SweepOptions,
    pub store: Store,
    /// The clients of the organisations this sweep covers.
    pub clients: Vec<AdminClient>,
    /// `mode`, or dry-run when `--dry-run` says so.
    pub mode: Mode,
    pub started: Instant,
    /// What the audit log and usage add to this sweep's notices, once noted (`owners.rs`).
    pub key_notes: std::sync::OnceLock<super::notes::KeyNotes>,
    /// The policies judging with this sweep's audit log and usage (issue 16), once gathered;
    /// the re-checks before a write judge with the same.
    pub policies: OnceLock<Arc<Policies>>,
    /// Which key each key keysweep minted replaced, read once (`owners.rs`).
    pub replaced: OnceLock<state::rotations::Replacements>,
    /// The dedup keys of the alerts this sweep raised: a later phase's total of one of them
    /// goes out although it was just raised (`commit.rs`, `dedup_alerts`).
    pub raised: std::sync::Mutex<std::collections::HashSet<String>>,
    /// How many times this sweep has queued messages (`commit.rs`, `enqueue`): each time's
    /// message ids are its own.
    pub enqueued: std::sync::atomic::AtomicU32,
}

/// Seconds since the sweep started at the end of each long phase, for the last log line.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timings {
    pub listed_secs: f64,
    pub recorded_secs: f64,
    pub committed_secs: f64,
}

impl<'a> Run<'a> {
    /// Starts a sweep: its `sweeps` rows (one per organisation) and its first log line.
    pub(super) fn begin(
        sweeper: &'a Sweeper,
        opts: &'a SweepOptions,
    ) -> Result<Run<'a>, SweepError> {
        let Some(store) = sweeper.store().cloned() else {
            return Err(SweepError::State(state::StateError::Missing {
                path: sweeper.config.state_path.clone(),
            }));
        };
        let run = Run {
            sweeper,
            opts,
            store,
            clients: sweeper.clients_for(opts.organizations.as_deref()),
            mode: sweeper.mode(opts),
            started: Instant::now(),
            key_notes: std::sync::OnceLock::new(),
            policies: OnceLock::new(),
            replaced: OnceLock::new(),
            raised: std::sync::Mutex::default(),
            enqueued: std::sync::atomic::AtomicU32::new(0),
        };
        run.store.tx(|tx| {
            for c in &run.clients {
                state::sweeps::sweep_started(tx, run.run_id(), c.org_name(), run.now())?;
            }
            Ok(())
        })?;
        // The start and end of a sweep are logged under `keysweep::sweep`, whichever file the
        // phase lives in: the daemon's tests and log queries pair them by that target.
        tracing::info!(
            target: SWEEP_TARGET,
            run_id = run.run_id(),
            mode = run.mode.as_str(),
            organizations = run.clients.len(),
            "sweep started"
        );
        Ok(run)
    }
}

impl Run<'_> {
    pub fn now(&self) -> i64 {
        self.opts.now
    }

    pub fn run_id(&self) -> &str {
        &self.opts.run_id
    }

    pub fn dry_run(&self) -> bool {
        self.mode == Mode::DryRun
    }

    /// Seconds since the sweep started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// A debug line at the end of each phase after the listing, with the seconds since the
    /// sweep started: where a slow sweep spends its time, without a profiler.
    pub(super) fn phase_done(&self, phase: &'static str) {
        tracing::debug!(
            run_id = self.run_id(),
            phase,
            secs = self.elapsed(),
            "sweep phase done"
        );
    }

    /// The policies of this sweep: with its facts once gathered, else the configured ones.
    pub fn policies(&self) -> &Arc<Policies> {
        self.policies.get().unwrap_or(&self.sweeper.policies)
    }

    /// Sets this sweep's facts (once; a second call keeps the first) and returns its policies.
    pub fn with_facts(&self, facts: Arc<KeyFacts>) -> Arc<Policies> {
        (self.policies)
            .get_or_init(|| Arc::new(self.sweeper.policies.with_facts(facts)))
            .clone()
    }

    /// An audit record of this sweep.
    pub fn record(&self, kind: AuditKind, message: impl Into<String>) -> AuditRecord {
        AuditRecord::new(
            self.now(),
            self.run_id(),
            kind,
            self.mode,
            &self.sweeper.config.hash,
            message,
        )
    }

    /// What `revoke` needs, for reconciliation and enforcement.
    pub fn revoke_context(&self) -> revoke::Context<'_> {
        revoke::Context {
            store: &self.store,
            config: &self.sweeper.config,
            policies: self.policies(),
            clients: &self.clients,
            mode: self.mode,
            run_id: self.run_id(),
            now: self.now(),
            cancel: &self.opts.cancel,
        }
    }
}
