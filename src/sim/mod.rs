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

mod cli;
mod conn;
mod faults;
mod generate;
mod model;
mod server;
mod state;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

pub use cli::{SimulateArgs, run};
pub use faults::{Fault, FaultBook, FaultId, FaultKind, FaultRoute, SimEffect};
pub use model::{
    FORMAT_VERSION, SimAccess, SimAdminKey, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject,
    SimServiceAccount, SimUser,
};
pub use server::SimServer;
pub use state::SimKeySnapshot;

/// How the simulator behaves at run time (the organisation is separate: [`SimOrg`]).
#[derive(Clone)]
pub struct SimOptions {
    /// The only Bearer token accepted (change it live with [`SimServer::set_admin_key`]).
    pub admin_key: String,
    /// Added to every request with a tokio sleep (concurrent requests overlap).
    pub latency: Duration,
    /// Probability in `0..=1` that a GET answers 500 (seeded: same seed, same sequence).
    pub fail_rate: f64,
    /// Requests per second allowed (token bucket, one second of burst); excess gets 429.
    pub rate_limit: Option<f64>,
    /// Seed of the random failures.
    pub seed: u64,
}

impl SimOptions {
    /// No latency, no random failures, no rate limit.
    pub fn new(admin_key: impl Into<String>) -> Self {
        SimOptions {
            admin_key: admin_key.into(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            rate_limit: None,
            seed: 0,
        }
    }
}

impl std::fmt::Debug for SimOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimOptions")
            .field("admin_key", &"[REDACTED]")
            .field("latency", &self.latency)
            .field("fail_rate", &self.fail_rate)
            .field("rate_limit", &self.rate_limit)
            .field("seed", &self.seed)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read organisation file {}", .path.display())]
    ReadOrg {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid organisation file {}: {message}", display_path(.path.as_ref()))]
    ParseOrg {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("invalid organisation: {0}")]
    InvalidOrg(String),
    #[error("unknown project {0}")]
    UnknownProject(String),
    #[error("unknown key {key} in project {project}")]
    UnknownKey { project: String, key: String },
    #[error("{owner} is not a member or service account of project {project}")]
    UnknownOwner { project: String, owner: String },
    #[error("a key with id {0} already exists")]
    DuplicateKey(String),
}

fn display_path(path: Option<&PathBuf>) -> String {
    path.map_or_else(|| "(text)".to_string(), |p| p.display().to_string())
}
