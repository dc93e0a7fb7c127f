//! The daemon's delivery around its sweeps: every 10 s between them, and the flush at
//! shutdown, both with the configuration in force (a reload's channels from the moment it is
//! accepted, before any sweep). It sends only what the outbox holds and never composes a
//! message; a send under way at shutdown is let finish, never cut off inside the grace.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::Store;
use crate::sweep::Sweeper;

/// The last sweeper built, reused until a reload puts another configuration in force.
pub(super) type SweeperCache = Arc<tokio::sync::Mutex<Option<Arc<Sweeper>>>>;

/// The cached sweeper if it was built from this very `config` (the one a reload put in
/// force), else a new one, cached in its place. Compared by identity, not by hash: the hash
/// leaves secrets out, and an admin key rotated in its file must reach the clients at the next
/// SIGHUP. `Err` is why it could not be built, with its cause.
pub(super) async fn sweeper_for(
    cache: &SweeperCache,
    config: &Arc<Config>,
    store: Store,
    metrics: Metrics,
) -> Result<Arc<Sweeper>, String> {
    let mut slot = cache.lock().await;
    if let Some(s) = slot.as_ref().filter(|s| Arc::ptr_eq(&s.config, config)) {
        return Ok(s.clone());
    }
    let sweeper =
        Sweeper::new(config.clone(), Some(store), metrics).map_err(|e| crate::error_chain(&e))?;
    let sweeper = Arc::new(sweeper);
    *slot = Some(sweeper.clone());
    Ok(sweeper)
}

/// How often the daemon delivers what the outbox has due between sweeps.
const DELIVERY_TICK: std::time::Duration = std::time::Duration::from_secs(10);

/// What the delivery around the sweeps works with: the sweeper cache the sweeps share, and
/// what builds a sweeper for the configuration in force when the cache holds another.
#[derive(Clone)]
pub(super) struct Deliverer {
    pub cache: SweeperCache,
    pub in_force: watch::Receiver<Arc<Config>>,
    pub store: Store,
    pub metrics: Metrics,
}

impl Deliverer {
    /// The sweeper of the configuration in force (the cached one, or built and cached). A
    /// configuration a sweeper cannot be built from is said, and nothing is delivered with it.
    async fn sweeper(&self) -> Option<Arc<Sweeper>> {
        let config = self.in_force.borrow().clone();
        let built = sweeper_for(
            &self.cache,
            &config,
            self.store.clone(),
            self.metrics.clone(),
        );
        match built.await {
            Ok(s) => Some(s),
            Err(reason) => {
                tracing::warn!(%reason, "cannot deliver the outbox: no sweeper for the configuration in force");
                None
            }
        }
    }
}

/// Between sweeps, every [`DELIVERY_TICK`], delivers what the outbox has due with the
/// configuration in force (a reload's channels at once, not at the next sweep, which on a daily
/// schedule comes after the messages died on the old channel's backoff): a failed message is
/// retried on its own backoff (from 15 s). Safe beside a sweep's own delivery: each message is
/// claimed by one deliverer (`state::outbox::claim_due`).
async fn deliver_between_sweeps(deliverer: Deliverer, stop: CancellationToken) {
    let mut tick = tokio::time::interval(DELIVERY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        // Only the wait is cut short: a delivery under way finishes, and marks what it sent.
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(sweeper) = deliverer.sweeper().await else {
            continue;
        };
        let now = chrono::Utc::now().timestamp();
        if let Err(e) = sweeper.deliver_outbox_until(now, &stop).await {
            tracing::warn!(
                "cannot deliver the outbox between sweeps: {}",
                crate::error_chain(&e)
            );
        }
    }
}

/// How long the delivery between sweeps may still take once the daemon has stopped.
pub(super) const BETWEEN_SWEEPS_LAST_SEND: std::time::Duration = std::time::Duration::from_secs(5);

/// The task that delivers between sweeps, and how to stop it.
#[derive(Clone)]
pub(super) struct BetweenSweeps {
    stop: CancellationToken,
    task: tokio_util::task::TaskTracker,
    abort: tokio::task::AbortHandle,
}

impl BetweenSweeps {
    /// Starts the task; it claims no message once `stop` is cancelled.
    pub(super) fn start(deliverer: Deliverer, stop: CancellationToken) -> BetweenSweeps {
        let task = tokio_util::task::TaskTracker::new();
        let abort = (task.spawn(deliver_between_sweeps(deliverer, stop.clone()))).abort_handle();
        task.close();
        BetweenSweeps { stop, task, abort }
    }

    /// Cuts a send under way off (its message stays claimed for ten minutes).
    pub(super) fn abort(&self) {
        self.abort.abort();
    }

    /// Stops claiming messages and waits for a delivery under way to finish and record its
    /// outcome. Aborting it instead would leave its message claimed for ten minutes, and sent
    /// again after the restart if the receiver had it already.
    pub(super) async fn stop(&self) {
        self.stop.cancel();
        self.task.wait().await;
    }
}

/// At shutdown, stops the delivery between sweeps (letting a send under way finish), then
/// flushes what the outbox can within the grace period, with the configuration in force; the
/// rest waits for the next start (it is in the database).
pub(super) fn flush_outbox(
    deliverer: Deliverer,
    between: BetweenSweeps,
) -> crate::daemon::ShutdownHook {
    // `stop` fires some time before the grace runs out: no message is claimed after it, so the
    // one being sent can finish and be marked before the hook is dropped.
    Box::new(move |stop| {
        Box::pin(async move {
            between.stop().await;
            let now = chrono::Utc::now().timestamp();
            if let Some(s) = deliverer.sweeper().await {
                let _ = s.deliver_outbox_until(now, &stop).await;
            }
        })
    })
}
