//! The optional global requests-per-second ceiling, shared by every organisation's client.
//!
//! A pacer rather than a bursty bucket: each request (every attempt, retries included) reserves
//! the next free slot, slots being `1/rps` apart, then sleeps until its slot. So no window of
//! length `T` ever sees more than `⌊T·rps⌋ + 1` requests, whatever the concurrency. The
//! reservation happens under a short synchronous lock and is never undone, which keeps
//! `acquire` cancellation-safe (a dropped waiter merely leaves a gap). A waiter woken late (a
//! runtime busy elsewhere) would go out together with those whose slots came after its own, so
//! the gap is also kept on the times requests actually leave: one that finds the last request
//! left less than `1/rps` ago takes a new slot. This module must never let a request through
//! without a slot.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Shared with `Arc` by every [`crate::openai::AdminClient`].
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
    /// When the last request was let through.
    left: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `None` when `rps` is not a positive finite number (no ceiling then makes no sense; the
    /// config loader rejects such values anyway).
    pub fn new(rps: f64) -> Option<Self> {
        if !(rps.is_finite() && rps > 0.0) {
            return None;
        }
        Some(Self {
            // Whole nanoseconds, rounded: exact for the usual rates (10 → 100 ms).
            interval: Duration::from_nanos((1e9 / rps).round() as u64),
            next: Mutex::new(None),
            left: Mutex::new(None),
        })
    }

    /// Time between two requests.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Waits for this request's slot.
    pub async fn acquire(&self) {
        loop {
            tokio::time::sleep_until(self.reserve()).await;
            let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if left.is_none_or(|l| now >= l + self.interval) {
                *left = Some(now);
                return;
            }
        }
    }

    /// The next free slot, taken.
    fn reserve(&self) -> Instant {
        {
            // A poisoned lock only means another task panicked while holding a plain Instant;
            // the value is still meaningful, so keep pacing.
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = match *next {
                Some(n) if n > now => n,
                _ => now,
            };
            *next = Some(slot + self.interval);
            slot
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn rejects_nonsense() {
        assert!(RateLimiter::new(0.0).is_none());
        assert!(RateLimiter::new(-1.0).is_none());
        assert!(RateLimiter::new(f64::NAN).is_none());
        assert_eq!(
            RateLimiter::new(4.0).unwrap().interval(),
            Duration::from_millis(250)
        );
    }

    /// Waiters whose slots passed while the runtime was busy (here: a blocking sleep on the
    /// only thread) still leave `1/rps` apart; before, all three went out at once.
    #[tokio::test(start_paused = true)]
    async fn waiters_woken_late_still_leave_apart() {
        let rl = Arc::new(RateLimiter::new(10.0).unwrap());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let rl = rl.clone();
            set.spawn(async move {
                rl.acquire().await;
                Instant::now()
            });
        }
        tokio::task::yield_now().await;
        // Every slot (0, 100, 200 ms) passes while no task can run.
        tokio::time::advance(Duration::from_millis(300)).await;
        let mut times = set.join_all().await;
        times.sort();
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(100), "{times:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paces_concurrent_callers() {
        let rl = Arc::new(RateLimiter::new(10.0).unwrap());
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..25 {
            let rl = rl.clone();
            set.spawn(async move {
                rl.acquire().await;
                Instant::now()
            });
        }
        let mut times = set.join_all().await;
        times.sort();
        // First slot immediately, then every 100 ms: the 25th at 2.4 s.
        assert_eq!(times[0] - start, Duration::ZERO);
        assert_eq!(times[24] - start, Duration::from_millis(2400));
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(100));
        }
    }
}
