//! Command-line interface (clap). Only parses arguments: `app` decides what they mean.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "keysweep",
    version,
    about = "Keeps an organisation's OpenAI API keys clean"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "KEYSWEEP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the simulated Administration API with a sample organisation and scan it (no account,
    /// no network, no secret needed).
    Demo(DemoArgs),
    /// One read-only inventory of every configured organisation, with findings and the plan.
    Scan(ScanArgs),
    /// The daemon: sweep on schedule and serve /healthz, /readyz and /metrics.
    Run(RunArgs),
    /// Validate the configuration and print it with defaults filled in and secrets redacted.
    CheckConfig,
    /// List or verify the audit log.
    Audit(AuditArgs),
    /// Notification tools.
    Notify(NotifyArgs),
    /// Rotation tools.
    Rotation(RotationArgs),
    /// Serve a simulated OpenAI Administration API (for tests, benchmarks and demos).
    Simulate(crate::sim::SimulateArgs),
}

#[derive(Debug, Args)]
pub struct RotationArgs {
    #[command(subcommand)]
    pub command: RotationCommand,
}

#[derive(Debug, Subcommand)]
pub enum RotationCommand {
    /// Confirm that the sink holds a new key whose hand-over a crash interrupted (the
    /// "a person must confirm" alert): the next enforce sweep then sets the old key's expiry
    /// (now + the policy's overlap). The other way out is deleting the new key.
    Confirm {
        /// The new key's id, as the alert names it.
        #[arg(value_name = "NEW_KEY_ID")]
        new_key_id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Walk through the whole lifecycle in enforce mode: warnings, the passage of time, the
    /// final notice, the revocation and the audit trail.
    #[arg(long)]
    pub enforce: bool,
    /// Where the demo keeps its state and rendered messages (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Output format (default: table on a terminal, JSON otherwise).
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Evaluate as of this moment (RFC 3339) instead of now.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// Show only the keys the audit log says have All permissions (scopes `[]`); keys whose
    /// scopes are unknown are left out.
    #[arg(long)]
    pub unrestricted: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run one sweep with actions (honouring mode), then exit.
    #[arg(long)]
    pub once: bool,
    /// Never delete anything, whatever the configuration says.
    #[arg(long)]
    pub dry_run: bool,
    /// Evaluate as of this moment (RFC 3339) instead of now (only with --once).
    #[arg(long, value_name = "RFC3339", requires = "once")]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only records at or after this date (YYYY-MM-DD) or time (RFC 3339).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: AuditFormatArg,
    /// The state database to read (default: `state_path` from the configuration, of which
    /// nothing else is used: no secret is read for `audit`, so an auditor needs none). Accepted
    /// before or after `verify`.
    #[arg(long, value_name = "FILE", global = true)]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormatArg {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exits non-zero if any record was changed, removed or reordered.
    Verify {
        /// A head hash published earlier (the `audit chain head` log line of a sweep, kept
        /// away from this host): fail unless that record is still in the chain. Catches a
        /// cut-off tail with a rewound `sqlite_sequence` and a rebuilt log.
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(subcommand)]
    pub command: NotifyCommand,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test message through one channel and report the outcome.
    Test {
        /// The channel's `name` in `[[channels]]`.
        #[arg(long, value_name = "NAME")]
        channel: String,
    },
    /// Put dead-lettered messages back in the outbox (after fixing their channel); the daemon,
    /// or the next `run --once`, delivers them with their original message ids.
    RetryDead {
        /// Only this channel's messages.
        #[arg(long)]
        channel: Option<String>,
    },
}
