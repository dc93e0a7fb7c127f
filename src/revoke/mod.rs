//! Revocation: the only code that deletes anything or writes a key's expiry, and the rails
//! right around each write.
//!
//! For every approved action, in order:
//! 1. re-read each key (GET) and re-evaluate it against the policies: a key that is gone, was
//!    used since the listing, was renamed, changed owner, is now exempted or no longer violates
//!    is NOT deleted (`recheck.rs`, the same judgement before an expiry set);
//! 2. write a durable `intent` audit record (committed before the request leaves), taking a
//!    slot of the rolling-day cap in the same transaction (none left: skipped, not sent);
//! 3. send the DELETE (the client never retries it blindly);
//! 4. write a durable `outcome` audit record with the API's answer (a failed DELETE gives its
//!    slot back).
//!
//! Cancellation (SIGTERM) is honoured only between actions: never between an intent and its
//! outcome (`critical.rs`). A crash between the two is settled by [`reconcile`] on the next run:
//! the key is looked up, and a `reconciled` record says whether it was deleted. Nothing here
//! runs in dry-run mode; `plan` never approves an action then.
//!
//! [`expiry`] does the same for `action = "expire"`: it sets a key's expiry (re-read, intent,
//! update, outcome) and moves an expiry keysweep set back out.
//!
//! This module deletes and records (audit, revocation count), nothing else: it never composes
//! or queues a notice and never writes a finding. What a deletion means for findings and people
//! is the sweep's and `notify`'s, told through [`RevocationResult`] and `reconcile`'s hook.

mod context;
mod critical;
mod execute;
pub mod expiry;
mod outcome;
mod recheck;
pub(crate) use recheck::acted_on_since;
mod reconcile;

pub use context::{
    Context, cap_reached_reason, is_cap_reached_reason, is_kill_switch_reason, kill_switch_engaged,
};
pub use critical::drain_in_flight;
pub use execute::execute;
pub use outcome::{Outcome, RevocationResult};
pub use reconcile::{
    ConfirmedDelete, InterruptedDelete, InterruptedExpiry, confirmed_deletes, intent_policies,
    reconcile,
};
