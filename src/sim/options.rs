//! The simulator's run-time options ([`SimOptions`]) and its error type ([`SimError`]).
//!
//! Kept apart from `mod.rs` so that the simulator's files import them from a sibling, never
//! from their parent. `SimOptions` holds the admin key: its `Debug` must never show it.

use std::path::PathBuf;
use std::time::Duration;

/// How the simulator behaves at run time (the organisation is separate: `SimOrg`).
#[derive(Clone)]
pub struct SimOptions {
    /// The only Bearer token accepted (change it live with `SimServer::set_admin_key`).
    pub admin_key: String,
    /// The least time from a request's arrival to its answer, the server's work included (the
    /// handler runs at once and the answer waits for the rest): to within a few hundred
    /// microseconds (a tokio sleep, its last 2 ms on a blocking thread; concurrent requests
    /// overlap).
    pub latency: Duration,
    /// Probability in `0..=1` that a GET answers 500 (seeded: same seed, same sequence).
    pub fail_rate: f64,
    /// Requests per second allowed (token bucket, one second of burst); excess gets 429.
    pub rate_limit: Option<f64>,
    /// Seed of the random failures.
    pub seed: u64,
    /// Where the simulator's clock starts, in Unix seconds (`None`: the wall clock). It decides
    /// which keys have expired and what `expires_in_seconds` means.
    pub now: Option<i64>,
    /// The clock stands still instead of running with real time (until set or advanced).
    pub freeze_clock: bool,
    /// The organisation's expiry limit: an `expires_in_seconds` longer than this is refused
    /// with 400 (`None`: no limit).
    pub max_key_lifetime: Option<Duration>,
    /// Expired keys drop out of listings and GET/DELETE/update answer 404. By default they stay
    /// listed with their past `expires_at` (the API documents neither; both must be handled).
    pub hide_expired_keys: bool,
    /// The August 2026 API: DELETE of a service-account key answers 400 instead of deleting it.
    pub refuse_service_account_key_delete: bool,
    /// The organisation's audit logging is on (off: `GET /organization/audit_logs` answers 403).
    pub audit_logging: bool,
    /// What the organisation file says of its past (creators, logged scopes, usage).
    pub history: super::history::SimHistory,
}

impl SimOptions {
    /// No latency, no random failures, no rate limit; the wall clock, no expiry limit, expired
    /// keys listed, the November 2026 API.
    pub fn new(admin_key: impl Into<String>) -> Self {
        SimOptions {
            admin_key: admin_key.into(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            rate_limit: None,
            seed: 0,
            now: None,
            freeze_clock: false,
            max_key_lifetime: None,
            hide_expired_keys: false,
            refuse_service_account_key_delete: false,
            audit_logging: true,
            history: super::history::SimHistory::default(),
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
            .field("now", &self.now)
            .field("freeze_clock", &self.freeze_clock)
            .field("max_key_lifetime", &self.max_key_lifetime)
            .field("hide_expired_keys", &self.hide_expired_keys)
            .field(
                "refuse_service_account_key_delete",
                &self.refuse_service_account_key_delete,
            )
            .field("audit_logging", &self.audit_logging)
            .finish_non_exhaustive()
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
