//! The simulated OpenAI Administration API: `keysweep simulate`, `keysweep demo`, the tests and
//! the benchmark all talk to it over real HTTP.
//!
//! It is a second, independent implementation of `openapi-admin.yaml` (spec commit f85dbe2):
//! it builds its JSON with its own structs (`wire`) and must never import `crate::openai`, so a
//! misreading of the spec in the client is not silently mirrored here.
//!
//! Served under `/v1` (Bearer auth; 401/404/400 with OpenAI's `{"error": …}` envelope):
//!
//! | route | notes |
//! | --- | --- |
//! | `GET /organization/projects` | `limit` 1–100 (default 20), `after`, `include_archived` |
//! | `GET /organization/projects/{project_id}` | archived projects too |
//! | `GET …/{project_id}/api_keys` | `owner_project_access=active\|inactive\|any`; omitted hides inactive owners' keys |
//! | `GET`, `DELETE …/{project_id}/api_keys/{api_key_id}` | DELETE of a service-account key → 400 |
//! | `GET …/{project_id}/service_accounts`, `GET`/`DELETE …/service_accounts/{id}` | DELETE removes the account and all its keys; archived project → 400 |
//! | `GET …/{project_id}/users` | members with access; archived project → 400 |
//! | `GET /organization/admin_api_keys` | `after`, `limit`, `order=asc\|desc` |
//!
//! Lists are ordered by id (admin keys by creation time) and paged with `after` = the id of the
//! last object received. Outside `/v1`, without auth: `GET /_sim/stats` answers
//! `{"requests": {"GET /v1/organization/projects/{project_id}/api_keys": 21, …}}` (one counter
//! per method and route template served, 401s/429s/faults included) and `POST /_sim/reset-stats`
//! zeroes it.
//!
//! Module map: `model` (the organisation and its JSON file format), `generate` (seeded and demo
//! organisations), `state` (indexed data, pages, hooks), `wire` (response shapes), `faults`
//! (scripted misbehaviour), `conn` (resettable connections), `server` (HTTP), `cli`
//! (`keysweep simulate`).
//!
//! The admin key it accepts is a secret like any other: it is never echoed in a response, never
//! logged, and `SimOptions`'s `Debug` redacts it.

mod body;
mod cli;
mod clock;
mod conn;
mod control;
mod faults;
mod generate;
mod handlers;
mod model;
mod options;
mod respond;
mod server;
mod shared;
mod state;
mod wire;

pub use cli::{SimulateArgs, run};
pub use faults::{Fault, FaultBook, FaultId, FaultKind, FaultRoute, SimEffect};
pub use model::{
    FORMAT_VERSION, SimAccess, SimAdminKey, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject,
    SimServiceAccount, SimUser,
};
pub use options::{SimError, SimOptions};
pub use server::SimServer;
pub use state::SimKeySnapshot;
