//! Builds the application from the command line: loads and validates the configuration, sets up
//! telemetry, and runs the chosen command. Errors are reported here, once, with their chain.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::cli::{
    AuditArgs, AuditCommand, AuditFormatArg, Cli, Command, NotifyCommand, OutputFormat,
    RotationCommand, RunArgs, ScanArgs,
};
use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::report;
use crate::state::{Store, SweepLock};
use crate::sweep::{SweepOptions, SweepReport, Sweeper};

mod delivery;
mod outcome;
use delivery::{
    BETWEEN_SWEEPS_LAST_SEND, BetweenSweeps, Deliverer, SweeperCache, flush_outbox, sweeper_for,
};

/// Exit status for "the command ran but the result is not clean" (incomplete listing, broken
/// audit chain, failed sweep).
pub const EXIT_INCOMPLETE: u8 = 1;
/// Exit status for a configuration or usage error.
pub const EXIT_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    // Before any thread or large block exists (why: `malloc.rs`).
    crate::malloc::fix_mmap_threshold();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        // The reader went away (`keysweep scan | head`): there is no one left to tell, so no
        // message; the shell's status for a process killed by SIGPIPE.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(141),
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line: reported once, here.
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Whether `e` was caused by writing to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(config::default_config_path)
}

/// Loads the configuration and starts telemetry with its log settings; load warnings are logged
/// once telemetry is up.
fn load(cli: &Cli) -> Result<Config> {
    load_with(cli, config::load)
}

/// [`load`] for the commands that never call the Administration API (`audit`, `notify`): the
/// admin keys are not read, so an auditor needs none.
fn load_without_admin_keys(cli: &Cli) -> Result<Config> {
    load_with(cli, config::load_without_admin_keys)
}

fn load_with(cli: &Cli, read: fn(&Path) -> Result<Config, config::LoadError>) -> Result<Config> {
    let config = read(&config_path(cli))?;
    // The daemon and `run --once` log their progress; the other commands speak through their
    // output and log only warnings unless RUST_LOG says otherwise.
    let default = if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    crate::telemetry::init_with_default(config.log.format, default).ok();
    // What a valid configuration silently leaves out is said by the commands that look at keys.
    let gaps = matches!(
        cli.command,
        Command::CheckConfig | Command::Scan(_) | Command::Run(_)
    );
    for w in crate::daemon::config_warnings(&config, gaps) {
        tracing::warn!("{w}");
    }
    Ok(config)
}

/// `--now` for rehearsals; the wall clock otherwise.
pub fn parse_now(now: Option<&str>) -> Result<i64> {
    match now {
        None => Ok(chrono::Utc::now().timestamp()),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp())
            .with_context(|| {
                format!("--now {s:?} is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)")
            }),
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::CheckConfig => {
            let config = load(&cli)?;
            usable(&config).map_err(|e| anyhow::anyhow!(e))?;
            print!("{}", config::render_effective(&config));
            println!("# config hash: {}", config.hash);
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan(args) => scan(load(&cli)?, args).await,
        Command::Run(args) => run(load(&cli)?, args, config_path(&cli)).await,
        Command::Audit(args) => audit(&cli, args),
        Command::Notify(args) => match &args.command {
            NotifyCommand::Test { channel } => {
                notify_test(load_without_admin_keys(&cli)?, channel).await
            }
            NotifyCommand::RetryDead { channel } => {
                notify_retry_dead(load_without_admin_keys(&cli)?, channel.as_deref())
            }
        },
        Command::Rotation(args) => match &args.command {
            RotationCommand::Confirm { new_key_id } => {
                rotation_confirm(load_without_admin_keys(&cli)?, new_key_id)
            }
        },
        Command::Demo(args) => {
            refuse_demo_config(&cli)?;
            crate::telemetry::init_with_default(None, "warn").ok();
            crate::demo::run(args).await
        }
        Command::Simulate(args) => {
            crate::telemetry::init(None).ok();
            crate::sim::run(args.clone(), shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `demo` runs with its own configuration (`config/demo.toml`) against its own simulator: a
/// `--config` on its command line would be silently ignored, so it is refused. A
/// `KEYSWEEP_CONFIG` in the environment is for the other commands and does not stop the demo.
fn refuse_demo_config(cli: &Cli) -> Result<()> {
    let from_env = std::env::var_os("KEYSWEEP_CONFIG").map(PathBuf::from);
    match &cli.config {
        Some(path) if from_env.as_ref() != Some(path) => bail!(
            "demo does not take --config: it runs its own configuration (config/demo.toml) against a simulated organisation; to try {} use `keysweep check-config --config {0}` and `keysweep scan --config {0}`",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// Resolves on SIGINT or SIGTERM (for the one-shot commands; the daemon has its own handling).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn scan(config: Config, args: &ScanArgs) -> Result<ExitCode> {
    let now = parse_now(args.now.as_deref())?;
    // Read-only: an existing state file gives real deadlines; none is created.
    let store = if config.state_path.exists() {
        Some(open_existing(&config.state_path)?)
    } else {
        None
    };
    let sweeper = Sweeper::new(Arc::new(config), store, Metrics::new())?;
    let tty = std::io::stderr().is_terminal();
    let progress = move |done: usize, known: usize| {
        if tty {
            eprint!("\rlisting projects: {done}/{known}   ");
        }
    };
    let intel = sweeper.intel(now).await;
    for line in intel.missing() {
        eprintln!("note: {line}");
    }
    let (report, mut inventory) = sweeper.preview_with(now, Some(&progress), &intel).await?;
    if tty {
        eprint!("\r{:40}\r", "");
    }
    let format = match args.format {
        Some(OutputFormat::Table) => report::Format::Table,
        Some(OutputFormat::Json) => report::Format::Json,
        Some(OutputFormat::Csv) => report::Format::Csv,
        None if std::io::stdout().is_terminal() => report::Format::Table,
        None => report::Format::Json,
    };
    let ctx = plan_context(&sweeper.config, &report, now, true, false);
    for line in intel.gap_notes(&inventory, now) {
        eprintln!("warning: {line}");
    }
    if args.unrestricted {
        keep_unrestricted(&mut inventory, &intel);
    }
    let intel = (Some(&intel), args.unrestricted);
    print_report(&report, &inventory, now, format, &ctx, intel)?;
    Ok(finish(&report, &sweeper.config, true))
}

/// `scan --unrestricted`: only the keys known to have All permissions.
fn keep_unrestricted(inventory: &mut crate::inventory::Inventory, intel: &crate::intel::Intel) {
    for org in &mut inventory.orgs {
        for p in &mut org.projects {
            p.keys.retain(|k| {
                intel
                    .key(&k.organization, &k.id)
                    .scopes
                    .is_some_and(<[_]>::is_empty)
            });
        }
    }
}

/// What the plan needs besides the report: the rules in force, the kill switch as it is now,
/// and the exemption entries that cover the report's exempted keys.
fn plan_context(
    config: &Config,
    report: &SweepReport,
    now: i64,
    read_only: bool,
    force_dry_run: bool,
) -> report::PlanContext {
    let mut ctx = report::PlanContext::from_config(config, read_only, force_dry_run);
    ctx.kill_switch_on = config
        .safety
        .kill_switch_file
        .as_ref()
        .is_some_and(|p| p.exists());
    ctx.with_exemptions(config, report, now)
}

fn print_report(
    report: &SweepReport,
    inventory: &crate::inventory::Inventory,
    now: i64,
    format: report::Format,
    ctx: &report::PlanContext,
    (intel, narrowed): (Option<&crate::intel::Intel>, bool),
) -> Result<()> {
    let mut rows = report::finding_rows(report, ctx, now);
    if narrowed {
        // `scan --unrestricted` narrowed the keys: findings follow them.
        let shown: std::collections::HashSet<(&str, &str)> = (inventory.keys())
            .map(|k| (k.organization.as_str(), k.id.as_str()))
            .collect();
        rows.retain(|r| shown.contains(&(r.organization.as_str(), r.key_id.as_str())));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    report::render_with_intel(inventory, &rows, now, format, intel, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Exit 0 only when every listing was complete; otherwise say which were not, and what that
/// means: for a sweep, nothing was revoked there; for `scan` (which never revokes), the plan
/// leaves those projects out.
fn finish(report: &SweepReport, config: &Config, read_only: bool) -> ExitCode {
    let mut clean = true;
    for org in &report.inventory.orgs {
        if let Some(e) = &org.error {
            eprintln!("error: {}", org_error(org, e, config));
            clean = false;
        }
        for p in &org.projects {
            if let crate::inventory::Listing::Incomplete(reason) = &p.listing {
                eprintln!(
                    "error: organisation {} project {}: listing incomplete: {reason}",
                    org.organization, p.project.id
                );
                clean = false;
            }
        }
    }
    for r in &report.revocations {
        if let crate::revoke::Outcome::Failed { error } = &r.outcome {
            eprintln!(
                "error: revocation of {} in {} failed: {error}",
                r.target, r.project_id
            );
            clean = false;
        }
    }
    for e in &report.expiries {
        if let crate::revoke::expiry::ExpiryOutcome::Failed { error } = &e.outcome {
            eprintln!(
                "error: the expiry of key {} in {} could not be written ({}): {error}",
                e.key_id, e.project_id, e.write
            );
            clean = false;
        }
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        if read_only {
            eprintln!(
                "keysweep: incomplete — the plan leaves out the keys of the projects listed above; no sweep acts in them until they list completely"
            );
        } else {
            eprintln!(
                "keysweep: incomplete — nothing was revoked in the projects listed above, and the writes that failed are retried by the next sweep"
            );
        }
        ExitCode::from(EXIT_INCOMPLETE)
    }
}

async fn run(config: Config, args: &RunArgs, path: PathBuf) -> Result<ExitCode> {
    if !args.once {
        return serve(config, path, args.dry_run)
            .await
            .map(|()| ExitCode::SUCCESS);
    }
    let now = parse_now(args.now.as_deref())?;
    // A clock of one's choosing would make warned keys due early, or record revocations
    // outside today's cap: it may drive writes only to a simulated API.
    if let (Some(_), false, config::Mode::Enforce) = (&args.now, args.dry_run, config.mode)
        && let Some((i, host)) = config.remote_organization()
    {
        bail!(
            "--now rehearses a sweep at another time and never writes to a real API, but mode is \
             \"enforce\" and organizations[{i}] is at {host}: add --dry-run"
        );
    }
    let (store, _lock) = open_for_sweeps(&config)?;
    let sweeper = Sweeper::new(Arc::new(config), Some(store.clone()), Metrics::new())?;
    let config_of_sweeper = sweeper.config.clone();
    let mut opts = SweepOptions::new(now);
    opts.force_dry_run = args.dry_run;
    let cancel = opts.cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    let swept = sweeper.run_once(&opts).await;
    publish_audit_head(&store, None);
    let report = match swept {
        Ok(report) => report,
        // The sweep began and could not go on (a damaged state row, a state file gone): exit 1,
        // the run's failure, not 2, which says the configuration or the command is wrong. The
        // chain can carry the API's text: neutralised for the terminal.
        Err(e) => {
            let chain = crate::error_chain(&e);
            eprintln!("error: the sweep failed: {}", crate::text::terminal(&chain));
            return Ok(ExitCode::from(EXIT_INCOMPLETE));
        }
    };
    print_summary(&report, &store, now)?;
    Ok(finish(&report, &config_of_sweeper, false))
}

/// An organisation's listing error, naming the organisation once (the client's errors start
/// with it already) and, when the admin key was refused, where that key came from.
fn org_error(
    org: &crate::inventory::OrgInventory<crate::inventory::KeyTally>,
    e: &str,
    config: &Config,
) -> String {
    let named = if e.starts_with(&format!("organization {}", org.organization)) {
        e.to_string()
    } else {
        format!("organisation {}: {e}", org.organization)
    };
    let source = config
        .organizations
        .iter()
        .position(|o| o.name == org.organization)
        .map(|i| (i, &config.organizations[i].admin_key_source));
    match source {
        Some((i, source)) if org.unauthorized => format!(
            "{named} (the admin key of organizations[{i}] was read from {}; check that it is the right, unexpired key)",
            source.replace("env ", "environment variable ")
        ),
        _ => named,
    }
}

/// Open findings in the state after a sweep, whatever this sweep touched.
fn open_findings_in_state(store: &Store) -> Result<u64> {
    let by_stage = store.with_conn(crate::state::findings::findings_by_stage)?;
    Ok(by_stage
        .iter()
        .filter(|(stage, _)| stage.is_open())
        .map(|(_, n)| n)
        .sum())
}

/// One expiry write's outcome, as `run --once` prints it.
fn expiry_line(o: &crate::revoke::expiry::ExpiryOutcome, enforce: bool) -> String {
    use crate::revoke::expiry::ExpiryOutcome as E;
    let t = crate::sweep::fmt_time;
    // Reasons and errors can carry the API's text (a renamed key's name, an error message).
    let clean = crate::text::terminal;
    match o {
        E::Set { to, reset, .. } if *reset => {
            format!(
                "EXPIRY SET BACK to {} (moved later outside keysweep)",
                t(*to)
            )
        }
        E::Set { to, .. } => format!("EXPIRY SET to {}", t(*to)),
        E::AlreadyEnds { at } => format!("already ends at {}: nothing written", t(*at)),
        E::Restored { to, .. } => format!("expiry moved back out to {}", t(*to)),
        E::Skipped { reason } => format!("kept ({})", clean(reason)),
        E::Refused { error } => format!("expiry REFUSED by the organisation ({})", clean(error)),
        E::KeyExpired => "already expired: nothing written".to_string(),
        E::Failed { error } => format!("FAILED ({})", clean(error)),
        // Outside enforce mode every write comes back not attempted.
        E::Cancelled if !enforce => "not attempted (dry-run)".to_string(),
        E::Cancelled => "not attempted (shutdown)".to_string(),
    }
}

/// What `run --once` prints: the plan's outcome, one line per action, then the totals.
fn print_summary(report: &SweepReport, store: &Store, now: i64) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mode = report.mode.map(|m| m.as_str()).unwrap_or("?");
    writeln!(
        out,
        "run {} ({mode}) at {}",
        report.run_id,
        crate::sweep::fmt_time(now)
    )?;
    for r in &report.revocations {
        let what = match &r.outcome {
            crate::revoke::Outcome::Deleted => "REVOKED".to_string(),
            crate::revoke::Outcome::SkippedAfterRecheck { reason } => {
                format!("kept ({})", crate::text::terminal(reason))
            }
            crate::revoke::Outcome::Failed { error } => {
                format!("FAILED ({})", crate::text::terminal(error))
            }
            crate::revoke::Outcome::Cancelled => "not attempted (shutdown)".to_string(),
        };
        writeln!(
            out,
            "  {}/{} {}: {what}",
            r.organization, r.project_id, r.target
        )?;
    }
    for e in &report.expiries {
        writeln!(
            out,
            "  {}/{} key {}: {}",
            e.organization,
            e.project_id,
            e.key_id,
            expiry_line(&e.outcome, report.mode == Some(config::Mode::Enforce))
        )?;
    }
    report::write_withheld(&mut out, &report.plan)?;
    // Counted in the state: a finding this sweep did not touch (its organisation could not be
    // listed, its project was incomplete) is still open.
    let open = open_findings_in_state(store)?;
    writeln!(
        out,
        "keys: {}, open findings: {open}, revoked: {}, expiries set: {}, withheld: {}, notifications queued: {}, delivered: {}, alerts: {}",
        report.inventory.key_count(),
        report.revoked_count(),
        report.expiries_set_count(),
        report.plan.withheld.len(),
        report.notices_queued,
        report.delivery.sent,
        report.alerts.len(),
    )?;
    Ok(())
}

/// Publishes the audit chain's head after a sweep (and at daemon start): a log line with its
/// hash and `seq`, and the `seq` as the `keysweep_audit_head_seq` gauge. The hash goes to the
/// log only: as a metric label it would be a new series per sweep. Shipped off the host, the
/// line is what `audit verify --expect-head` checks the database against; a `seq` that goes
/// down between scrapes is a rewound log. A head that cannot be read is a warning: the sweep
/// itself is done.
fn publish_audit_head(store: &Store, metrics: Option<&Metrics>) {
    match store.with_conn(crate::state::audit::head) {
        Ok(head) => {
            let (seq, hash) = head
                .map_or((0, crate::state::audit::GENESIS_HASH.to_string()), |h| {
                    (h.seq, h.hash)
                });
            tracing::info!(
                audit_seq = seq,
                audit_head = %hash,
                "audit chain head (keep it elsewhere; check with `keysweep audit verify --expect-head`)"
            );
            if let Some(m) = metrics {
                m.set_audit_head_seq(seq);
            }
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the audit chain head")
        }
    }
}

/// Opens the state database for a command that sweeps, once it holds the sweeping lock (one
/// sweeping process per database: `state::SweepLock`; keep it as long as the process may sweep),
/// and marks sweeps a previous process left `running` (crash, SIGKILL) as interrupted, so
/// history and readiness do not show them running.
fn open_for_sweeps(config: &Config) -> Result<(Store, SweepLock)> {
    let lock = SweepLock::acquire(&config.state_path)?;
    let store = named(&config.state_path, Store::open(&config.state_path))?;
    let cut_short = store
        .tx(|tx| crate::state::sweeps::mark_interrupted(tx, chrono::Utc::now().timestamp()))?;
    for s in &cut_short {
        tracing::warn!(run_id = %s.run_id, organization = %s.organization, "a previous sweep was interrupted; unfinished deletes are reconciled by the next sweep");
    }
    Ok((store, lock))
}

fn audit(cli: &Cli, args: &AuditArgs) -> Result<ExitCode> {
    let path = match &args.state {
        Some(p) => p.clone(),
        // The trail needs no secret: none is read (`state_path_of`).
        None => config::state_path_of(&config_path(cli))?,
    };
    let store = open_existing(&path)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.command {
        Some(AuditCommand::Verify { ref expect_head }) => {
            let expected = expect_head
                .as_deref()
                .map(|h| h.trim().to_ascii_lowercase());
            match crate::state::cli::audit_verify_anchored(&store, expected.as_deref(), &mut out) {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(_) => Ok(ExitCode::from(EXIT_INCOMPLETE)),
            }
        }
        None => {
            let since = args.since.as_deref().map(parse_since).transpose()?;
            let format = match args.format {
                AuditFormatArg::Table => crate::state::cli::AuditFormat::Table,
                AuditFormatArg::Json => crate::state::cli::AuditFormat::Json,
            };
            crate::state::cli::audit_list(&store, since, format, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open_existing(path: &Path) -> Result<Store> {
    named(path, Store::open_existing(path))
}

/// The result of opening the state database at `path`, its error naming the file once: most
/// `StateError`s of an open name it themselves (it is not said again), the others (a failed
/// migration, SQLite itself) get it in front.
fn named(path: &Path, opened: Result<Store, crate::state::StateError>) -> Result<Store> {
    opened.map_err(|e| {
        let file = path.display().to_string();
        if e.to_string().contains(&file) {
            anyhow::Error::new(e)
        } else {
            anyhow::Error::new(e).context(file)
        }
    })
}

/// `--since` takes a date (midnight UTC) or an RFC 3339 time.
fn parse_since(s: &str) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    match chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .unwrap_or_default()),
        Err(_) => bail!("--since {s:?} is not a date (YYYY-MM-DD) or an RFC 3339 time"),
    }
}

async fn notify_test(config: Config, channel: &str) -> Result<ExitCode> {
    let ch = named_channel(&config, channel)?;
    let now = chrono::Utc::now().timestamp();
    match crate::notify::send_test(ch, now).await {
        Ok(()) => {
            println!(
                "test message sent through channel {channel:?} ({})",
                ch.kind.type_name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "error: test message through channel {channel:?} failed: {}",
                crate::error_chain(&e)
            );
            Ok(ExitCode::from(EXIT_INCOMPLETE))
        }
    }
}

/// The channel called `name`, or an error that lists the configured ones.
fn named_channel<'c>(config: &'c Config, name: &str) -> Result<&'c crate::config::ChannelConfig> {
    config.channel(name).ok_or_else(|| {
        let names: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
        anyhow::anyhow!(
            "no channel named {name:?} (configured: {})",
            names.join(", ")
        )
    })
}

/// Requeues dead-lettered messages. It does not deliver them itself: the daemon may be running,
/// and one process delivering the outbox is what keeps a message from going out twice.
fn notify_retry_dead(config: Config, channel: Option<&str>) -> Result<ExitCode> {
    if let Some(name) = channel {
        named_channel(&config, name)?;
    }
    let store = open_existing(&config.state_path)?;
    let requeued = store.tx(|tx| crate::notify::outbox::requeue_dead(tx, channel))?;
    tracing::info!(
        requeued,
        channel = channel.unwrap_or("*"),
        "dead-lettered messages requeued"
    );
    println!(
        "requeued {requeued} dead-lettered message(s){}; the daemon (or the next `run --once`) delivers them",
        channel
            .map(|c| format!(" of channel {c:?}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// `rotation confirm`: a person says the sink holds the new key of an interrupted hand-over.
/// Exits 2 when no rotation awaits a confirmation for that key.
fn rotation_confirm(config: Config, new_key_id: &str) -> Result<ExitCode> {
    let store = open_existing(&config.state_path)?;
    let now = chrono::Utc::now().timestamp();
    let shown = crate::text::terminal(new_key_id);
    match crate::rotate::confirm(&store, &config, new_key_id, now)? {
        Some(c) => {
            println!(
                "confirmed: the sink holds new key {shown}; old key {} (organization {}, project \
                 {}) is owed an expiry at {}, set by the next enforce sweep",
                c.old_key_id,
                c.organization,
                c.project_id,
                crate::timefmt::rfc3339(c.old_expires_at)
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "keysweep: no rotation awaits a confirmation for key {shown} (its hand-over was \
                 not interrupted, it was settled already, or keysweep did not mint it)"
            );
            Ok(ExitCode::from(2))
        }
    }
}

/// The daemon: wires `sweep::Sweeper` into `daemon::run` (schedules, signals, ops endpoints).
async fn serve(config: Config, path: PathBuf, force_dry_run: bool) -> Result<()> {
    let (store, _lock) = open_for_sweeps(&config)?;
    let metrics = Metrics::new();
    publish_audit_head(&store, Some(&metrics));
    tracing::info!(
        config = %path.display(),
        mode = if force_dry_run { "dry-run" } else { config.mode.as_str() },
        config_hash = %config.hash,
        "keysweep daemon starting"
    );
    let cache: SweeperCache = Arc::new(tokio::sync::Mutex::new(None));
    // Shutdown stops the delivery between sweeps from claiming as it begins, not after the
    // sweeps drained.
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Until the daemon says which `Arc` is in force (at its start), the loaded configuration.
    let (in_force_tx, in_force) = tokio::sync::watch::channel(Arc::new(config.clone()));
    let deliverer = Deliverer {
        cache: cache.clone(),
        in_force,
        store: store.clone(),
        metrics: metrics.clone(),
    };
    let between = BetweenSweeps::start(deliverer.clone(), shutdown.clone());
    let deps = crate::daemon::DaemonDeps {
        sweep: daemon_sweep(store.clone(), metrics.clone(), force_dry_run, cache.clone()),
        reload: Arc::new(move || {
            let c = config::load(&path).map_err(|e| e.to_string())?;
            usable(&c)?;
            Ok(c)
        }),
        metrics,
        db_ready: {
            let store = store.clone();
            Arc::new(move || store.ping().is_ok())
        },
        on_shutdown: Some(flush_outbox(deliverer, between.clone())),
        on_config: Some(Arc::new(move |c| {
            in_force_tx.send_replace(c);
        })),
        shutdown,
    };
    let ran = crate::daemon::run(config, deps).await;
    // Stopped by the shutdown hook, unless that ran out of grace or the daemon ended another
    // way; a send still under way gets a few seconds more, then is cut off.
    if tokio::time::timeout(BETWEEN_SWEEPS_LAST_SEND, between.stop())
        .await
        .is_err()
    {
        between.abort();
    }
    // A delete whose sweep was dropped at the end of the grace still writes its outcome, even
    // when the daemon ended with an error.
    crate::revoke::drain_in_flight().await;
    // So does a rotation's hand-over: the sink finishes, then the old key gets its expiry.
    crate::rotate::drain_in_flight().await;
    ran?;
    Ok(())
}

/// How the daemon sweeps one organisation: with the sweeper of the request's configuration (a
/// SIGHUP reload brings a new config and hash, and the next sweep builds new clients and
/// policies from it), delivering the outbox as it goes.
fn daemon_sweep(
    store: Store,
    metrics: Metrics,
    force_dry_run: bool,
    cache: SweeperCache,
) -> crate::daemon::SweepFn {
    use crate::daemon::SweepResult;
    Arc::new(move |req: crate::daemon::SweepRequest| {
        let store = store.clone();
        let metrics = metrics.clone();
        let cache = cache.clone();
        Box::pin(async move {
            let sweeper =
                match sweeper_for(&cache, &req.config, store.clone(), metrics.clone()).await {
                    Ok(s) => s,
                    Err(reason) => return SweepResult::Failed { reason },
                };
            let opts = SweepOptions {
                now: chrono::Utc::now().timestamp(),
                force_dry_run,
                run_id: req.run_id.clone(),
                organizations: Some(vec![req.organization.clone()]),
                cancel: req.cancel.clone(),
                deliver: true,
            };
            let swept = sweeper.run_once(&opts).await;
            publish_audit_head(&store, Some(&metrics));
            match swept {
                Err(e) => SweepResult::Failed {
                    reason: crate::error_chain(&e),
                },
                Ok(_) if req.cancel.is_cancelled() => SweepResult::Cancelled,
                Ok(report) => outcome::sweep_result(&report),
            }
        }) as crate::daemon::BoxFuture<SweepResult>
    })
}

/// Whether a sweep can be built from `config`: its clients (a `ca_file` that holds no
/// certificate, a base URL the client refuses) and its policies. The loader checks what it
/// reads, not what the clients make of it; a reload accepted without this would fail every
/// sweep after it, the good configuration gone.
fn usable(config: &Config) -> Result<(), String> {
    Sweeper::new(Arc::new(config.clone()), None, Metrics::new())
        .map(drop)
        .map_err(|e| crate::error_chain(&e))
}
