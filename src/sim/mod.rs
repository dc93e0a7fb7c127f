//! The simulated OpenAI Administration API: `keysweep simulate`, `keysweep demo`, the tests and
//! the benchmark all talk to it over real HTTP.
//!
//! It is a second, independent implementation of `openapi-admin.yaml` (spec commit f85dbe2, plus
//! the November 2026 additions read from openai-python 3.51.0): it builds its JSON with its own
//! structs (`wire`) and must never import `crate::openai`, so a misreading of the spec in the
//! client is not silently mirrored here.
//!
//! Served under `/v1` (Bearer auth; 401/404/400 with OpenAI's `{"error": …}` envelope):
//!
//! | route | notes |
//! | --- | --- |
//! | `GET /organization/projects` | `limit` 1–100 (default 20), `after`, `include_archived` |
//! | `GET /organization/projects/{project_id}` | archived projects too |
//! | `GET …/{project_id}/api_keys` | `owner_project_access=active\|inactive\|any`; omitted hides inactive owners' keys |
//! | `GET`, `DELETE …/{project_id}/api_keys/{api_key_id}` | DELETE of a service-account key deletes only that key (400 with `refuse_service_account_key_delete`, the August 2026 API) |
//! | `POST …/{project_id}/api_keys/{api_key_id}` | `{expires_in_seconds?, scopes?}`: at least one, no nulls, expiry > 0 and within `max_key_lifetime`; expired key → 400 |
//! | `GET …/{project_id}/service_accounts`, `GET`/`DELETE …/service_accounts/{id}` | DELETE removes the account and all its keys; archived project → 400 |
//! | `POST …/service_accounts/{id}/api_keys` | mints a key: `{name?, scopes?, expires_in_seconds?\|null}` → `value` once |
//! | `GET …/{project_id}/users` | members with access; archived project → 400 |
//! | `GET /organization/admin_api_keys` | `after`, `limit`, `order=asc\|desc` |
//! | `GET /organization/audit_logs` | `api_key.*`, `service_account.*`, `user.added`; filters, `after`/`before`; 403 with logging off (`audit_log`) |
//! | `GET /organization/usage/completions`, `GET /organization/costs` | daily (or hourly, minute) buckets per key or project, `page` (`usage`) |
//!
//! Every key has `expires_at` (null: never). An expired key (`expires_at` ≤ the simulator's
//! clock) stays listed and readable by default; with `hide_expired_keys` it drops out and answers
//! 404. Scopes are stored per key but, as on OpenAI, never shown on the key object.
//!
//! Lists are ordered by id (admin keys by creation time) and paged with `after` = the id of the
//! last object received. Outside `/v1`, without auth (`control`): `GET /_sim/stats` answers
//! `{"requests": {"GET /v1/organization/projects/{project_id}/api_keys": 21, …}}` (one counter
//! per method and route template served, 401s/429s/faults included), `POST /_sim/reset-stats`
//! zeroes it, `GET`/`POST /_sim/clock` reads, sets or advances the clock, and
//! `GET /_sim/projects/{project_id}/api_keys/{api_key_id}` shows a key as stored, scopes included.
//!
//! Module map: `model` (the organisation and its JSON file format), `generate` (seeded and demo
//! organisations), `state` (indexed data: `pages`, `write`, `hooks`), `wire` (response shapes),
//! `body` (request validation), `faults` (scripted misbehaviour), `conn` (resettable
//! connections), `clock` (the simulated time), `shared` (state shared by handlers),
//! `respond` (answers, errors, fault rendering), `handlers` (`/v1` routes), `control`
//! (`/_sim/` routes), `server` (the handle, router and middleware), `options`, `cli`
//! (`keysweep simulate`).
//!
//! The admin key it accepts is a secret like any other: it is never echoed in a response, never
//! logged, and `SimOptions`'s `Debug` redacts it.

mod audit_log;
mod body;
mod cli;
mod clock;
mod conn;
mod control;
mod faults;
mod generate;
mod handlers;
mod history;
mod intel_handlers;
mod model;
mod options;
mod respond;
mod server;
mod shared;
mod state;
mod usage;
mod wire;

pub use cli::{SimulateArgs, run};
pub use faults::{Fault, FaultBook, FaultId, FaultKind, FaultRoute, SimEffect};
pub use history::{SimHistory, SimKeyHistory, SimUsage};
pub use model::{
    FORMAT_VERSION, SimAccess, SimAdminKey, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject,
    SimServiceAccount, SimUser,
};
pub use options::{SimError, SimOptions};
pub use server::SimServer;
pub use state::SimKeySnapshot;
