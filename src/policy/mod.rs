//! Policy: what violates, what is due, and what may be deleted — all pure.
//!
//! - [`rules`]: the configured policies and exemptions, compiled once; judges one key at a time.
//! - [`lifecycle`]: one (key, policy) finding advanced by one sweep: notices due, revoke due.
//! - [`expiry`]: the `expire` action: which expiry to set on a key, which to move back out.
//! - [`facts`]: what the audit log and usage say about keys (issue 16), as the rules read it.
//! - [`observation`]: what the rules hand the lifecycle (a violation, an observation).
//! - [`plan`](mod@plan): the safety rails (service-account rule, incomplete listings, caps, kill switch,
//!   dry-run) applied to this sweep's revoke-due findings.
//! - [`verdict`]: what keysweep will actually do to a finding's key (mode, per-key rules,
//!   this sweep's plan); every notice, count and plan line reads it.
//! - [`finding`]: the persisted lifecycle records, shared with `state` and `notify`.
//!
//! Invariant: nothing under `policy/` does I/O, reads a clock (`now` is always passed in, Unix
//! seconds) or is async. That is what lets the property tests replay weeks of sweeps in
//! milliseconds and lets `scan --now` rehearse a policy before it is enabled.

pub mod expiry;
pub mod facts;
pub mod finding;
pub mod lifecycle;
pub mod observation;
pub mod plan;
pub mod rotation;
pub mod rules;
pub mod verdict;

pub use facts::{KeyFacts, OrgFacts, Scopes};
pub use lifecycle::{Observation, Transition, advance, mark_revoked, revoked_notice};
pub use plan::{
    Candidate, Plan, PlanInput, PlannedAction, ProjectFacts, Target, Withheld, WithheldAction,
    Write, default_safety, plan, project_facts,
};
pub use rules::{Evaluation, ExemptionHit, Policies, PolicyError, Violation};

#[cfg(test)]
mod tests;
