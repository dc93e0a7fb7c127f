//! `keysweep demo`: the whole product in one minute, with no account, network or secret.
//!
//! Starts the simulated Administration API in-process with a sample organisation (stale, idle,
//! orphaned, service-account and exempted keys), runs keysweep against it with
//! `config/demo.toml`, and prints the inventory, the findings and the plan, and the messages
//! that would go out. With `--enforce` it sets the expiries of the `expire` policy's keys on day
//! 0, then lets time pass (the simulator's clock with it) — the warning period, the final notice,
//! the deadline, where OpenAI ends the expiring keys and keysweep deletes the `revoke` ones — and
//! shows the expiries, the revocations and the audit trail.
//!
//! The demo never delivers a message: rendered messages stay in the demo's outbox (and are
//! written as text files under its `outbox/` folder). It only ever talks to its own simulator.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::cli::DemoArgs;
use crate::config::{self, Mode};
use crate::metrics::Metrics;
use crate::notify;
use crate::report;
use crate::sim::{SimOptions, SimOrg, SimServer};
use crate::state::Store;
use crate::sweep::{SweepOptions, SweepReport, Sweeper, fmt_time};

/// The shipped demo configuration, compiled in so `cargo run -- demo` works from any directory.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

const DAY: i64 = 86400;

/// The demo's later days with `--enforce`: what each shows, and how long after day 0 it is.
const ENFORCE_DAYS: [(&str, i64); 3] = [
    (
        "Day 7 — the orphaned keys' deadline: final notices are due, then revocation",
        7 * DAY + 60,
    ),
    (
        "Day 13 — one day before the rotate-90d deadline: final notices",
        13 * DAY + 60,
    ),
    (
        "Day 14 — the rotate-90d deadline: OpenAI ends those keys at the expiry set on day 0",
        14 * DAY + 120,
    ),
];

/// Everything one demo run works with: its folder, its simulator and keysweep's parts.
struct Demo {
    dir: PathBuf,
    outbox_dir: PathBuf,
    sim: SimServer,
    store: Store,
    sweeper: Sweeper,
    /// Outbox messages already printed (and the kinds whose full text was shown).
    seen: Vec<String>,
}

pub async fn run(args: &DemoArgs) -> Result<ExitCode> {
    let now = chrono::Utc::now().timestamp();
    let mut demo = Demo::start(args, now).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    print_intro(&mut out, &demo.sim, args.enforce)?;
    let first = demo.day_zero(&mut out, now).await?;
    if !args.enforce {
        writeln!(out)?;
        writeln!(
            out,
            "Nothing was deleted (dry-run). Run `keysweep demo --enforce` to watch the warning period pass,"
        )?;
        writeln!(
            out,
            "the final notice go out and the revocation happen, with the audit trail."
        )?;
        writeln!(out, "State and rendered messages: {}", demo.dir.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    for (label, after) in ENFORCE_DAYS {
        demo.later_day(&mut out, label, now + after).await?;
    }
    demo.aftermath(&mut out, now, &first).await?;
    writeln!(out, "State and rendered messages: {}", demo.dir.display())?;
    drop(out);
    demo.sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn print_intro(out: &mut dyn Write, sim: &SimServer, enforce: bool) -> std::io::Result<()> {
    writeln!(
        out,
        "keysweep demo — a simulated organisation \"acme\" at {}",
        sim.base_url()
    )?;
    writeln!(
        out,
        "policies: rotate-90d (expire: the expiry is set to the deadline, warn 14d ahead), idle-45d (notify), orphaned (revoke, warn 7d ahead)"
    )?;
    writeln!(
        out,
        "exemption: break-glass-* (SEC-142). Mode: {}.",
        if enforce { "enforce" } else { "dry-run" }
    )?;
    writeln!(out)
}

impl Demo {
    /// Creates the demo's folder, starts the simulator with the sample organisation, and builds
    /// keysweep from `config/demo.toml` pointed at them.
    async fn start(args: &DemoArgs, now: i64) -> Result<Demo> {
        let dir = match &args.dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir()
                .join(format!("keysweep-demo-{}", uuid::Uuid::new_v4().simple())),
        };
        refuse_previous_run(&dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The simulator's admin key is made up on the spot: the demo needs no secret of yours.
        // It ends like the demo organisation's admin key (`sk-admin-****dEm0`), which is how
        // keysweep recognises its own key among the organisation's admin keys.
        let admin_key = format!("sk-admin-demo-{}dEm0", uuid::Uuid::new_v4().simple());
        let sim = SimServer::start(
            "127.0.0.1:0".parse()?,
            SimOrg::demo(now),
            SimOptions::new(admin_key.clone()),
        )
        .await
        .context("starting the simulated Administration API")?;

        let db = dir.join("keysweep-demo.db");
        let text = DEMO_CONFIG
            .replace("http://127.0.0.1:8089/v1", &sim.base_url())
            .replace(
                "\"keysweep-demo.db\"",
                &format!("{:?}", db.display().to_string()),
            );
        let mut config = config::load_from_str(&text, &[("OPENAI_ADMIN_KEY".into(), admin_key)])?;
        if args.enforce {
            config.mode = Mode::Enforce;
        }
        let store = Store::open(&db)?;
        let sweeper = Sweeper::new(Arc::new(config), Some(store.clone()), Metrics::new())?;
        Ok(Demo {
            outbox_dir: dir.join("outbox"),
            dir,
            sim,
            store,
            sweeper,
            seen: Vec::new(),
        })
    }

    /// The first sweep: the inventory, the findings and the plan, and the messages it queued.
    async fn day_zero(&mut self, out: &mut dyn Write, now: i64) -> Result<SweepReport> {
        section(
            out,
            &format!("Day 0 — {}: inventory, findings and plan", fmt_time(now)),
        )?;
        // The sweep keeps only a tally of the keys; the table lists them all.
        let listed = self.sweeper.list().await;
        let first = sweep(&self.sweeper, now).await?;
        print_report(out, &listed, &first, now, &self.sweeper.config)?;
        print_expiries(out, &first)?;
        section(
            out,
            "Messages queued by this sweep (one digest per channel and recipient)",
        )?;
        self.print_messages(out)?;
        Ok(first)
    }

    /// A sweep at `t`: its revocations, what the limits withheld, and the new messages.
    async fn later_day(&mut self, out: &mut dyn Write, label: &str, t: i64) -> Result<()> {
        section(out, &format!("{label} — {}", fmt_time(t)))?;
        // The simulated OpenAI lives through the same days: keys reach their expiry.
        self.sim.set_clock(t);
        let r = sweep(&self.sweeper, t).await?;
        print_expiries(out, &r)?;
        for rev in &r.revocations {
            writeln!(
                out,
                "  {} {}/{}: {:?}",
                rev.target, rev.organization, rev.project_id, rev.outcome
            )?;
        }
        report::write_withheld(out, &r.plan)?;
        self.print_messages(out)
    }

    /// What is left in the organisation after the deadlines, and the audit trail, verified.
    async fn aftermath(&self, out: &mut dyn Write, now: i64, first: &SweepReport) -> Result<()> {
        section(out, "What is left in the simulated organisation")?;
        let after = self.sweeper.preview(now + 14 * DAY + 180, None).await?;
        writeln!(
            out,
            "  {} keys remain (of {} at day 0)",
            after.0.inventory.key_count(),
            first.inventory.key_count()
        )?;
        section(
            out,
            "Audit trail (hash-chained; `keysweep audit verify` checks it)",
        )?;
        crate::state::cli::audit_list(
            &self.store,
            None,
            crate::state::cli::AuditFormat::Table,
            out,
        )?;
        crate::state::cli::audit_verify(&self.store, out)?;
        Ok(())
    }

    fn print_messages(&mut self, out: &mut dyn Write) -> Result<()> {
        print_messages(out, &self.store, &self.outbox_dir, &mut self.seen)
    }
}

/// A `--dir` that already holds a demo run is refused: its state would make this run's first
/// sweep a later one, and its messages would be listed as this run's.
fn refuse_previous_run(dir: &Path) -> Result<()> {
    let db = dir.join("keysweep-demo.db");
    if db.exists() || dir.join("outbox").exists() {
        anyhow::bail!(
            "{} already holds a previous demo run ({}); choose an empty folder, or remove it first",
            dir.display(),
            if db.exists() {
                "keysweep-demo.db"
            } else {
                "outbox/"
            }
        );
    }
    Ok(())
}

/// The expiry writes of a sweep, one line each.
fn print_expiries(out: &mut dyn Write, r: &SweepReport) -> std::io::Result<()> {
    for e in &r.expiries {
        let what = match &e.outcome {
            crate::revoke::expiry::ExpiryOutcome::Set { to, .. } => {
                format!("expiry set to {}", fmt_time(*to))
            }
            other => format!("{other:?}"),
        };
        writeln!(
            out,
            "  key {} {}/{}: {what}",
            e.key_id, e.organization, e.project_id
        )?;
    }
    Ok(())
}

fn section(out: &mut dyn Write, title: &str) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "=== {title}")?;
    Ok(())
}

async fn sweep(sweeper: &Sweeper, now: i64) -> Result<SweepReport> {
    let mut opts = SweepOptions::new(now);
    opts.deliver = false;
    Ok(sweeper.run_once(&opts).await?)
}

fn print_report(
    out: &mut dyn Write,
    listed: &crate::inventory::Inventory,
    r: &SweepReport,
    now: i64,
    config: &config::Config,
) -> Result<()> {
    let ctx =
        report::PlanContext::from_config(config, false, false).with_exemptions(config, r, now);
    let rows = report::finding_rows(r, &ctx, now);
    report::render(listed, &rows, now, report::Format::Table, out)?;
    Ok(())
}

/// Prints (and writes to `dir`) every outbox message not printed before: one line per message
/// with its subject, and the whole text of the first message of each kind in the demo.
fn print_messages(
    out: &mut dyn Write,
    store: &Store,
    dir: &Path,
    seen: &mut Vec<String>,
) -> Result<()> {
    let all = store.with_conn(notify::outbox::all)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fresh: Vec<_> = all
        .iter()
        .filter(|m| !seen.contains(&m.message_id))
        .collect();
    if fresh.is_empty() {
        writeln!(out, "  (no new messages)")?;
    }
    for m in fresh {
        let text = notify::render::preview(&m.payload);
        let file: PathBuf = dir.join(format!("{}-{}.txt", m.kind.as_str(), m.message_id));
        std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
        let subject = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("Subject: ");
        writeln!(
            out,
            "  [{:<12}] to {:<28} via {:<14} {subject}",
            m.kind.as_str(),
            m.recipient,
            m.channel
        )?;
        let first_of_kind = !seen
            .iter()
            .any(|id| id.starts_with(&format!("{}:", m.kind.as_str())));
        if first_of_kind {
            for line in text.lines().skip(1).take(30) {
                writeln!(out, "      {line}")?;
            }
            seen.push(format!("{}:", m.kind.as_str()));
        }
        seen.push(m.message_id.clone());
    }
    Ok(())
}
