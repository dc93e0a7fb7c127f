//! The OpenAI Administration API: the client, its wire types, and the inventory collector.
//!
//! This is the only module that knows the wire format or holds an admin key. Everything it hands
//! out is in the crate's own terms (`crate::inventory` types, [`ProjectUser`] and
//! [`ServiceAccount`] included); wire structs stay private to `types.rs`. It must never log, print or put into an error the admin
//! key or a minted key's value, and it never writes on its own initiative: `delete_*`, `update_key`
//! and `mint_service_account_key` are called by their callers (`revoke`, the enforcer). An expiry
//! is always written against the wall clock (`expires_in_seconds = ceil(target − now)` at each
//! attempt), never against `--now`.
//!
//! - `client.rs`: [`AdminClient`], one per organisation: the endpoints, in the crate's terms.
//! - `transport.rs`: sending one request (pacing, bearer header, bounded body, retries, the
//!   checked DELETE) and mapping answers to [`Error`]; the only place the admin key is exposed.
//! - `pager.rs`: the cursor pager every listing uses, and [`KeyPages`].
//! - `retry.rs`: the retry policy (pure).
//! - `ratelimit.rs`: the shared requests-per-second ceiling.
//! - `collect.rs`: [`collect_inventory`], the concurrent listing of every configured project.
//! - `identity.rs`: the shape every id must have (`^[A-Za-z0-9_-]{1,128}$`, checked by the
//!   pager on every listed object and owner) and [`identity_changed`], the re-check's "is this
//!   still the listed key" (same id, same owner).
//! - `error.rs`: [`Error`], with the expiry writes' own refusals (`ExpiryRefused`, `KeyEnded`).
//! - `intel.rs`: the audit log's `api_key.*` events and each key's usage and cost
//!   ([`AdminClient::key_events`], [`AdminClient::usage_by_key`]); a 4xx there is
//!   [`IntelError::Unavailable`], never a sweep failure.
//! - `types.rs`: the wire types, and [`MintedKey`] (the one domain type that holds a secret).

mod client;
mod collect;
mod error;
mod identity;
mod intel;
mod pager;
mod ratelimit;
mod retry;
mod transport;
mod types;

#[cfg(test)]
mod fuzz;

pub use client::{AdminClient, KeyUpdate, MintRequest, endpoint, expires_in_seconds};
pub use collect::{KeySink, ProjectSelector, collect_inventory, collect_with};
pub use error::{ApiErrorBody, Error, RequestContext};
pub use identity::{identity_changed, is_valid_id};
pub use intel::{Actor, IntelError, KeyEvent, KeyEventKind, KeyUsage};
pub use types::MintedKey;
// Defined with the other domain types; re-exported where the endpoints that return them are.
pub use crate::inventory::{ProjectUser, ServiceAccount};
pub use pager::KeyPages;
pub use ratelimit::RateLimiter;
pub use transport::{ClientShared, DeleteOutcome};
