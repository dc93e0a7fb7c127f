//! The simulator's clock: what "now" is for expiry (`expires_at`, `expires_in_seconds`, minted
//! keys' `created_at`).
//!
//! It starts at `SimOptions::now` (default: the wall clock) and then runs with real time, or
//! stands still when frozen; tests set and advance it (`SimServer::set_clock`,
//! `POST /_sim/clock`) so that expiry can be observed without waiting. It is the only place in
//! the simulator that reads the wall clock, and it never touches the organisation.

use std::sync::Mutex;
use std::time::Instant;

/// Unix seconds of the wall clock.
fn wall_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[derive(Debug)]
struct Reading {
    /// Simulated Unix seconds at `taken`.
    at: i64,
    taken: Instant,
    frozen: bool,
}

#[derive(Debug)]
pub(crate) struct SimClock(Mutex<Reading>);

impl SimClock {
    pub fn new(start: Option<i64>, frozen: bool) -> Self {
        SimClock(Mutex::new(Reading {
            at: start.unwrap_or_else(wall_now),
            taken: Instant::now(),
            frozen,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reading> {
        // Three plain fields: a panic elsewhere cannot leave them inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(r: &Reading) -> i64 {
        if r.frozen {
            r.at
        } else {
            let elapsed = i64::try_from(r.taken.elapsed().as_secs()).unwrap_or(i64::MAX);
            r.at.saturating_add(elapsed)
        }
    }

    /// The simulated Unix time in seconds.
    pub fn now(&self) -> i64 {
        Self::read(&self.lock())
    }

    pub fn frozen(&self) -> bool {
        self.lock().frozen
    }

    /// Jumps to `at` (and freezes or unfreezes it when `frozen` is given).
    pub fn set(&self, at: i64, frozen: Option<bool>) {
        let mut r = self.lock();
        r.at = at;
        r.taken = Instant::now();
        if let Some(f) = frozen {
            r.frozen = f;
        }
    }

    /// Moves the clock by `seconds` (negative: back).
    pub fn advance(&self, seconds: i64, frozen: Option<bool>) {
        let mut r = self.lock();
        let now = Self::read(&r);
        r.at = now.saturating_add(seconds);
        r.taken = Instant::now();
        if let Some(f) = frozen {
            r.frozen = f;
        }
    }
}
