//! `keysweep simulate`: the flags and the serve loop around [`SimServer`].
//!
//! It prints exactly one line when ready, on stderr —
//! `simulated Admin API listening on http://ADDR/v1` — which scripts and tests wait for, then a
//! one-line summary of what it serves. It never prints the admin key (the flag's environment
//! value is hidden from `--help` and `Debug` redacts it).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use super::history::SimHistory;
use super::model::SimOrg;
use super::options::SimOptions;
use super::server::SimServer;

/// Flags of `keysweep simulate`.
#[derive(Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// The admin key clients must present as `Authorization: Bearer …`.
    #[arg(long, env = "OPENAI_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: String,
    /// Number of active projects to generate (plus one archived project).
    #[arg(long, default_value_t = 3)]
    pub projects: usize,
    /// Exact number of keys in each generated active project.
    #[arg(long, default_value_t = 25)]
    pub keys_per_project: usize,
    /// Seed of the generated organisation and of the random failures.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Serve this organisation file (JSON, see `keysweep::sim::model`) instead of generating.
    #[arg(long, conflicts_with = "demo")]
    pub org_file: Option<PathBuf>,
    /// Serve the small curated organisation of `keysweep demo`.
    #[arg(long)]
    pub demo: bool,
    /// Latency of every request, in milliseconds: its answer leaves this long after it arrived
    /// (or when ready, if later).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0 to 1) that a GET answers 500.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Requests per second before answering 429 with Retry-After.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// The clock the organisation's ages are relative to, and where the simulator's clock
    /// starts (RFC 3339; default: now). The clock then runs with real time unless frozen, and
    /// `POST /_sim/clock` sets or advances it.
    #[arg(long, value_parser = parse_rfc3339)]
    pub now: Option<DateTime<Utc>>,
    /// Keep the simulator's clock still (until `POST /_sim/clock` moves it).
    #[arg(long)]
    pub freeze_clock: bool,
    /// The organisation's expiry limit (e.g. `90d`): a key update or mint asking for a longer
    /// `expires_in_seconds` gets 400.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_key_lifetime: Option<Duration>,
    /// Expired keys drop out of listings and answer 404 (default: listed with their past
    /// `expires_at`, and refused for updates with 400).
    #[arg(long)]
    pub hide_expired_keys: bool,
    /// Answer DELETE of a service-account key with 400, as the August 2026 API did.
    #[arg(long)]
    pub refuse_service_account_key_delete: bool,
    /// Write the organisation being served to this JSON file (then serve it).
    #[arg(long)]
    pub dump_org: Option<PathBuf>,
    /// The organisation's audit logging is off: `GET /organization/audit_logs` answers 403.
    #[arg(long)]
    pub audit_logging_off: bool,
}

impl std::fmt::Debug for SimulateArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulateArgs")
            .field("listen", &self.listen)
            .field("admin_key", &"[REDACTED]")
            .field("projects", &self.projects)
            .field("keys_per_project", &self.keys_per_project)
            .field("seed", &self.seed)
            .field("org_file", &self.org_file)
            .field("demo", &self.demo)
            .field("latency_ms", &self.latency_ms)
            .field("fail_rate", &self.fail_rate)
            .field("rate_limit", &self.rate_limit)
            .field("now", &self.now)
            .field("freeze_clock", &self.freeze_clock)
            .field("max_key_lifetime", &self.max_key_lifetime)
            .field("hide_expired_keys", &self.hide_expired_keys)
            .field(
                "refuse_service_account_key_delete",
                &self.refuse_service_account_key_delete,
            )
            .field("dump_org", &self.dump_org)
            .field("audit_logging_off", &self.audit_logging_off)
            .finish()
    }
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected an RFC 3339 time like 2026-01-31T12:00:00Z: {e}"))
}

/// Serves the simulated API until `shutdown` resolves.
pub async fn run(args: SimulateArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if args.admin_key.trim().is_empty() {
        bail!("--admin-key (or OPENAI_ADMIN_KEY) must not be empty");
    }
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!(
            "--fail-rate must be between 0 and 1, got {}",
            args.fail_rate
        );
    }
    if let Some(r) = args.rate_limit
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate-limit must be a positive number of requests per second, got {r}");
    }
    if args.max_key_lifetime.is_some_and(|d| d.as_secs() == 0) {
        bail!("--max-key-lifetime must be at least one second");
    }
    let now = args.now.unwrap_or_else(Utc::now).timestamp();
    let history = match &args.org_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(anyhow::Error::from)
            .and_then(|text| Ok(SimHistory::from_org_json(&text)?))
            .with_context(|| format!("cannot read the history of {}", path.display()))?,
        None => SimHistory::default(),
    };
    let org = if let Some(path) = &args.org_file {
        SimOrg::from_json_file(path)?
    } else if args.demo {
        SimOrg::demo(now)
    } else {
        SimOrg::generate(args.projects, args.keys_per_project, args.seed, now)
    };
    if let Some(path) = &args.dump_org {
        std::fs::write(path, org.to_json_pretty())
            .with_context(|| format!("cannot write --dump-org {}", path.display()))?;
    }
    let archived = org.projects.iter().filter(|p| p.is_archived()).count();
    let (projects, keys) = (org.projects.len(), org.total_key_count());
    let opts = SimOptions {
        admin_key: args.admin_key.clone(),
        latency: Duration::from_millis(args.latency_ms),
        fail_rate: args.fail_rate,
        rate_limit: args.rate_limit,
        seed: args.seed,
        now: Some(now),
        freeze_clock: args.freeze_clock,
        max_key_lifetime: args.max_key_lifetime,
        hide_expired_keys: args.hide_expired_keys,
        refuse_service_account_key_delete: args.refuse_service_account_key_delete,
        audit_logging: !args.audit_logging_off,
        history,
    };
    let server = SimServer::start(args.listen, org, opts)
        .await
        .with_context(|| format!("cannot serve on {}", args.listen))?;
    eprintln!("simulated Admin API listening on {}", server.base_url());
    eprintln!(
        "serving {projects} projects ({archived} archived) with {keys} keys; stats at http://{}/_sim/stats",
        server.addr()
    );
    shutdown.await;
    server.shutdown().await;
    Ok(())
}
