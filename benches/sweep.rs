//! `cargo bench --bench sweep -- [SCENARIO…] [--projects N] [--keys K|MIN-MAX] [--concurrency C]
//! [--latency-ms MS] [--rps R] [--eval-rounds N] [--policies light|demo|expire] [--steady N]
//! [--intel] [--no-listing]`: a full keysweep sweep against the simulated Administration API,
//! measured against the physical bound.
//!
//! Scenarios: `quick` (the default, CI-sized), `small` (10 × 100), `wide` (1,000 × 100–300),
//! `deep` (100 × 10,000), `deep100k` (10 × 10,000, the 100k-key memory target), `ceiling`
//! (a requests-per-second ceiling), `scale` (100, 1,000 and 5,000 projects × 100–300 keys, with
//! per-key costs), `idle` (RSS of an idle `keysweep run` daemon), `all`.
//! Flags after the scenario names override its parameters. See `benches/README.md` for what
//! each figure means and the recorded results.
//!
//! Three processes, so that every memory figure is keysweep's alone:
//! - the orchestrator (this binary, no flag) runs each scenario in a fresh child process;
//! - the sweeper (`--sweeper`) runs the real `Sweeper` (dry-run, real SQLite file in a
//!   tempdir) and reads its own `VmHWM`;
//! - the simulator (`--serve`) serves the generated organisation with `SimOptions.latency`
//!   and answers `stats` / `reset` / `window` commands on stdin with one JSON line on stdout.
//!
//! This bench never talks to anything but its own simulator on 127.0.0.1; the admin key is
//! made up per run and passed to the children in the environment, never on a command line.
//! It measures and reports; it never asserts a speed (the verdicts are printed, not enforced),
//! so it exits 0 unless a run could not be carried out at all.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use keysweep::config;
use keysweep::metrics::Metrics;
use keysweep::openai::{AdminClient, ClientShared, collect_inventory};
use keysweep::policy::Policies;
use keysweep::sim::{SimOptions, SimOrg, SimServer};
use keysweep::state::Store;
use keysweep::sweep::{SweepOptions, Sweeper};
use serde::{Deserialize, Serialize};

/// Environment variable carrying the made-up admin key to the children.
const KEY_ENV: &str = "KEYSWEEP_BENCH_ADMIN_KEY";
/// The API's page size: what the minimum request count is computed with.
const PAGE: usize = 100;

#[derive(Debug, Clone, Parser)]
#[command(about = "keysweep sweep benchmark (see benches/README.md)")]
struct Args {
    /// Scenarios to run: quick, small, wide, deep, deep100k, ceiling, idle, all.
    scenarios: Vec<String>,
    /// Active projects (one archived project is always added, and not listed).
    #[arg(long)]
    projects: Option<usize>,
    /// Keys per project: `K` or `MIN-MAX` (uniform).
    #[arg(long)]
    keys: Option<String>,
    /// Latency the simulator adds to every request.
    #[arg(long)]
    latency_ms: Option<u64>,
    /// `limits.concurrency` (1–256).
    #[arg(long)]
    concurrency: Option<usize>,
    /// `limits.requests_per_second` (and the simulator's own limit).
    #[arg(long)]
    rps: Option<f64>,
    /// Rounds of policy evaluation over the whole inventory.
    #[arg(long)]
    eval_rounds: Option<u32>,
    /// Policy set: `light` (two policies, few findings), `demo` (the demo's three, many) or
    /// `expire` (`light` with `action = "expire"`, in enforce mode: the simulator takes the writes).
    #[arg(long)]
    policies: Option<String>,
    /// Steady-state sweeps after the first (each with its own peak RSS).
    #[arg(long)]
    steady: Option<u32>,
    /// Set `[usage]` and `[audit_log]` in the configuration (issue 16's reads); their requests
    /// are reported apart from the inventory minimum in every run.
    #[arg(long)]
    intel: bool,
    /// Skip the "listing alone" phase and the evaluation rounds (which hold every key).
    #[arg(long)]
    no_listing: bool,
    /// Seed of the generated organisation.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Skip the steady-state sweeps (`--steady 0`).
    #[arg(long)]
    no_second_sweep: bool,
    /// Leave glibc's mmap threshold rising as blocks are freed, as before `keysweep::malloc`
    /// (for comparison: the binary and the sweeper fix it).
    #[arg(long)]
    glibc_dynamic_threshold: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: run one scenario in this process.
    #[arg(long, hide = true)]
    sweeper: bool,
    /// Internal: serve the simulated API.
    #[arg(long, hide = true)]
    serve: bool,
    /// Internal: the clock of the generated organisation.
    #[arg(long, hide = true)]
    now: Option<i64>,
    /// Internal: scenario name, for the report.
    #[arg(long, hide = true)]
    name: Option<String>,
    /// Internal: where the sweeper writes its figures as JSON, for the summary table.
    #[arg(long, hide = true)]
    summary: Option<PathBuf>,
}

/// One measured configuration.
#[derive(Debug, Clone)]
struct Scenario {
    name: String,
    projects: usize,
    min_keys: usize,
    max_keys: usize,
    latency_ms: u64,
    concurrency: usize,
    rps: Option<f64>,
    eval_rounds: u32,
    policies: String,
    /// Steady-state sweeps after the first.
    steady: u32,
    intel: bool,
    /// Run the "listing alone" phase and the evaluation rounds.
    listing: bool,
}

impl Scenario {
    fn preset(name: &str) -> Option<Scenario> {
        let s = |projects, min_keys, max_keys, concurrency, rps, eval_rounds| Scenario {
            name: name.to_string(),
            projects,
            min_keys,
            max_keys,
            latency_ms: 20,
            concurrency,
            rps,
            eval_rounds,
            policies: "light".to_string(),
            steady: 3,
            intel: false,
            listing: true,
        };
        // The scaling series: one steady-state sweep, no listing-alone phase (it holds every key).
        let scale = |projects| Scenario {
            steady: 1,
            listing: false,
            ..s(projects, 100, 300, 32, None, 0)
        };
        Some(match name {
            "quick" => s(10, 100, 100, 16, None, 20),
            "small" => s(10, 100, 100, 16, None, 50),
            "wide" => s(1000, 100, 300, 128, None, 5),
            "deep" => Scenario {
                steady: 1,
                ..s(100, 10_000, 10_000, 100, None, 2)
            },
            "deep100k" => s(10, 10_000, 10_000, 10, None, 10),
            "ceiling" => s(100, 100, 300, 32, Some(50.0), 10),
            "scale-100" => scale(100),
            "scale-1000" => scale(1000),
            "scale-5000" => scale(5000),
            _ => return None,
        })
    }

    /// The flags override the preset's parameters.
    fn with_overrides(mut self, a: &Args) -> Result<Scenario> {
        if let Some(p) = a.projects {
            self.projects = p;
        }
        if let Some(k) = &a.keys {
            (self.min_keys, self.max_keys) = parse_keys(k)?;
        }
        if let Some(l) = a.latency_ms {
            self.latency_ms = l;
        }
        if let Some(c) = a.concurrency {
            self.concurrency = c;
        }
        if a.rps.is_some() {
            self.rps = a.rps;
        }
        if let Some(r) = a.eval_rounds {
            self.eval_rounds = r;
        }
        if let Some(p) = &a.policies {
            self.policies = p.clone();
        }
        if let Some(n) = a.steady {
            self.steady = n;
        }
        if a.no_second_sweep {
            self.steady = 0;
        }
        self.intel |= a.intel;
        if a.no_listing {
            self.listing = false;
        }
        if !(1..=256).contains(&self.concurrency) {
            bail!("--concurrency must be between 1 and 256");
        }
        if !matches!(self.policies.as_str(), "light" | "demo" | "expire") {
            bail!("--policies must be light, demo or expire");
        }
        Ok(self)
    }

    fn keys_text(&self) -> String {
        if self.min_keys == self.max_keys {
            group(self.min_keys as u64)
        } else {
            format!(
                "{}–{}",
                group(self.min_keys as u64),
                group(self.max_keys as u64)
            )
        }
    }

    /// The flags that recreate this scenario in a child process.
    fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--name".to_string(),
            self.name.clone(),
            "--projects".into(),
            self.projects.to_string(),
            "--keys".into(),
            format!("{}-{}", self.min_keys, self.max_keys),
            "--latency-ms".into(),
            self.latency_ms.to_string(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--eval-rounds".into(),
            self.eval_rounds.to_string(),
            "--policies".into(),
            self.policies.clone(),
            "--steady".into(),
            self.steady.to_string(),
        ];
        if let Some(r) = self.rps {
            v.push("--rps".into());
            v.push(r.to_string());
        }
        if self.intel {
            v.push("--intel".into());
        }
        if !self.listing {
            v.push("--no-listing".into());
        }
        v
    }
}

fn parse_keys(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: usize = a.trim().parse().context("--keys: expected K or MIN-MAX")?;
    let b: usize = b.trim().parse().context("--keys: expected K or MIN-MAX")?;
    if b < a {
        bail!("--keys: MAX must not be below MIN");
    }
    Ok((a, b))
}

/// `--sweeper`: one scenario, in this process.
fn sweeper(args: &Args) -> Result<()> {
    // As the binary's `main` does, first (why: `keysweep::malloc`).
    if !args.glibc_dynamic_threshold {
        keysweep::malloc::fix_mmap_threshold();
    }
    // The sweep's own log (phase timings in its `sweep finished` line), on request.
    if let Ok(filter) = std::env::var("KEYSWEEP_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let name = args.name.clone().unwrap_or_else(|| "custom".into());
    let base = Scenario::preset("quick")
        .context("quick preset")?
        .with_overrides(args)?;
    let scenario = Scenario { name, ..base };
    let rt = tokio::runtime::Runtime::new()?;
    let summary = rt.block_on(run_sweeper(&scenario))?;
    if let Some(path) = &args.summary {
        std::fs::write(path, serde_json::to_vec(&summary)?)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.serve {
        return serve(&args);
    }
    if args.sweeper {
        return sweeper(&args);
    }

    let mut names: Vec<String> = if args.scenarios.is_empty() {
        vec!["quick".into()]
    } else {
        args.scenarios.clone()
    };
    if names.iter().any(|n| n == "all") {
        names = ["small", "wide", "deep100k", "deep", "ceiling", "idle"]
            .map(String::from)
            .to_vec();
    }
    let names: Vec<String> = (names.into_iter())
        .flat_map(|n| {
            if n == "scale" {
                ["scale-100", "scale-1000", "scale-5000"]
                    .map(String::from)
                    .to_vec()
            } else {
                vec![n]
            }
        })
        .collect();
    print_machine();
    let dir = tempfile::tempdir()?;
    let mut summaries = Vec::new();
    for name in &names {
        if name == "idle" {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(idle_daemon())?;
            continue;
        }
        let Some(preset) = Scenario::preset(name) else {
            bail!(
                "unknown scenario {name:?} (quick, small, wide, deep, deep100k, ceiling, scale, idle, all)"
            );
        };
        let scenario = preset.with_overrides(&args)?;
        let summary_path = dir.path().join(format!("{name}.json"));
        // A fresh process per scenario: its peak RSS is this scenario's alone.
        let status = Command::new(std::env::current_exe()?)
            .arg("--sweeper")
            .args(scenario.to_args())
            .args(
                args.glibc_dynamic_threshold
                    .then_some("--glibc-dynamic-threshold"),
            )
            .arg("--summary")
            .arg(&summary_path)
            .status()
            .context("running the sweeper process")?;
        if !status.success() {
            bail!("scenario {name} failed ({status})");
        }
        let text = std::fs::read(&summary_path).context("reading the sweeper's figures")?;
        summaries.push(serde_json::from_slice::<Summary>(&text)?);
    }
    print_summaries(&summaries);
    Ok(())
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cpus} CPUs ({cpu}); load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

// ---- the simulator process ---------------------------------------------------------------

/// What the simulator process announces once it listens.
#[derive(Serialize, Deserialize)]
struct Ready {
    base_url: String,
    /// Keys of each *listed* (active) project, in listing order (by id).
    key_counts: Vec<usize>,
    /// Projects the default listing hides (archived).
    hidden_projects: usize,
    generate_seconds: f64,
}

#[derive(Serialize, Deserialize, Default)]
struct Window {
    /// Most requests that arrived within any 1 s window since the server started.
    max_in_1s: u64,
    /// Requests seen by the sampler since the server started.
    sampled: u64,
}

fn serve(args: &Args) -> Result<()> {
    let admin_key = std::env::var(KEY_ENV).context("the admin key variable is not set")?;
    let (min_keys, max_keys) = parse_keys(args.keys.as_deref().unwrap_or("100"))?;
    let now = args.now.context("--now")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let t = Instant::now();
        let org = SimOrg::generate_range(
            args.projects.unwrap_or(10),
            min_keys,
            max_keys,
            args.seed,
            now,
        );
        let generate_seconds = t.elapsed().as_secs_f64();
        // The simulator lists projects by id; the generator sorts them that way too.
        let mut listed: Vec<_> = org.projects.iter().filter(|p| !p.is_archived()).collect();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        let key_counts = listed.iter().map(|p| p.keys.len()).collect();
        let hidden_projects = org.projects.len() - listed.len();
        let opts = SimOptions {
            latency: Duration::from_millis(args.latency_ms.unwrap_or(20)),
            rate_limit: args.rps,
            seed: args.seed,
            ..SimOptions::new(admin_key)
        };
        let server = Arc::new(SimServer::start("127.0.0.1:0".parse()?, org, opts).await?);
        let ready = Ready {
            base_url: server.base_url(),
            key_counts,
            hidden_projects,
            generate_seconds,
        };
        let sampler = Sampler::start(server.clone());
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&ready)?)?;
        out.flush()?;
        drop(out);
        // Commands arrive on stdin; EOF (the sweeper exited) ends the server.
        let lines = tokio::task::spawn_blocking(move || -> Result<()> {
            for line in std::io::stdin().lock().lines() {
                let reply = match line?.trim() {
                    "stats" => serde_json::to_string(&server.stats())?,
                    // The arrival log is kept: the window check covers every phase.
                    "reset" => {
                        server.reset_stats();
                        sampler.rebase();
                        "{}".to_string()
                    }
                    "window" => serde_json::to_string(&sampler.window())?,
                    other => bail!("unknown command {other:?}"),
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{reply}")?;
                out.flush()?;
            }
            sampler.stop();
            Ok(())
        });
        lines.await?
    })
}

/// Samples the simulator's request counter every half millisecond, so the busiest 1 s window
/// can be found afterwards. The counter is bumped by the outermost middleware, on arrival.
struct Sampler {
    /// (when, requests so far): a new entry each time the count changed.
    log: Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
    /// Requests counted before the server's last `reset_stats`.
    offset: Arc<std::sync::Mutex<u64>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(server: Arc<SimServer>) -> Sampler {
        let log = Arc::new(std::sync::Mutex::new(vec![(Instant::now(), 0)]));
        let offset = Arc::new(std::sync::Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, o, s) = (log.clone(), offset.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let served: u64 = server.stats().values().sum();
                let total = served + *o.lock().unwrap_or_else(|e| e.into_inner());
                let mut log = l.lock().unwrap_or_else(|e| e.into_inner());
                if log.last().is_none_or(|last| last.1 < total) {
                    log.push((Instant::now(), total));
                }
                drop(log);
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        Sampler { log, offset, stop }
    }

    /// The server's counter went back to zero: shift the log so totals keep growing.
    fn rebase(&self) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let total = log.last().map_or(0, |l| l.1);
        log.push((Instant::now(), total));
        *self.offset.lock().unwrap_or_else(|e| e.into_inner()) = total;
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Two pointers over the samples: for each sample `i`, the arrivals in `(t_i, t_j]` with
    /// `t_j` the last sample within 1 s of `t_i`. Every such interval is at most 1 s long, so
    /// this never overstates; it can miss arrivals in the last half millisecond of a window.
    fn window(&self) -> Window {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let mut best = 0;
        let mut j = 0;
        for i in 0..log.len() {
            if j < i {
                j = i;
            }
            while j + 1 < log.len() && log[j + 1].0 - log[i].0 <= Duration::from_secs(1) {
                j += 1;
            }
            best = best.max(log[j].1 - log[i].1);
        }
        Window {
            max_in_1s: best,
            sampled: log.last().map_or(0, |l| l.1),
        }
    }
}

/// The sweeper's handle on its simulator process.
struct SimChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ready: Ready,
}

impl SimChild {
    fn start(s: &Scenario, admin_key: &str, now: i64) -> Result<SimChild> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--serve")
            .args(s.to_args())
            .args(["--now", &now.to_string()])
            .env(KEY_ENV, admin_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().context("starting the simulator process")?;
        let stdin = child.stdin.take().context("simulator stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("simulator stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let ready: Ready = serde_json::from_str(&line)
            .with_context(|| format!("simulator did not start: {line:?}"))?;
        Ok(SimChild {
            child,
            stdin,
            stdout,
            ready,
        })
    }

    fn ask(&mut self, cmd: &str) -> Result<String> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line)
    }

    /// Requests served since the last reset, by route template.
    fn stats(&mut self) -> Result<std::collections::BTreeMap<String, u64>> {
        Ok(serde_json::from_str(&self.ask("stats")?)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.ask("reset").map(drop)
    }

    fn window(&mut self) -> Result<Window> {
        Ok(serde_json::from_str(&self.ask("window")?)?)
    }

    /// CPU seconds the simulator has used so far.
    fn cpu(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        // Closing stdin ends the server; kill only if it does not go.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the sweeper process -------------------------------------------------------------------

/// The request floor and the wall-time floor of one scenario.
struct Bounds {
    project_pages: u64,
    key_pages: u64,
    /// The issue's formula: `max(longest chain × latency, minimum × latency / concurrency)`.
    issue: Duration,
    longest_chain: u64,
    /// A project found on project page `p` cannot start before `p` pages: the longest
    /// dependency chain, project pages included.
    critical_pages: u64,
    /// With a ceiling: `(requests − 1) / rps`.
    rate: Duration,
}

impl Bounds {
    fn new(s: &Scenario, counts: &[usize]) -> Bounds {
        let pages = |k: usize| k.div_ceil(PAGE).max(1) as u64;
        let project_pages = counts.len().div_ceil(PAGE).max(1) as u64;
        let key_pages: u64 = counts.iter().map(|&k| pages(k)).sum();
        let longest_chain = counts.iter().map(|&k| pages(k)).max().unwrap_or(0);
        let critical_pages = counts
            .iter()
            .enumerate()
            .map(|(i, &k)| (i / PAGE) as u64 + 1 + pages(k))
            .max()
            .unwrap_or(1);
        let lat = Duration::from_millis(s.latency_ms);
        let minimum = project_pages + key_pages;
        let issue =
            (lat * longest_chain as u32).max(lat.mul_f64(minimum as f64 / s.concurrency as f64));
        // Every request, the admin-key page included, takes a slot of the ceiling.
        let rate = s.rps.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(minimum as f64 / r)
        });
        Bounds {
            project_pages,
            key_pages,
            issue,
            longest_chain,
            critical_pages,
            rate,
        }
    }

    fn minimum(&self) -> u64 {
        self.project_pages + self.key_pages
    }

    /// The tightest floor we can state: the issue's, the dependency chain, the ceiling.
    fn best(&self, latency: Duration) -> Duration {
        self.issue
            .max(latency * self.critical_pages as u32)
            .max(self.rate)
    }
}

fn config_text(s: &Scenario, base_url: &str, db: &Path) -> String {
    let rps = s
        .rps
        .map(|r| format!("requests_per_second = {r:?}\n"))
        .unwrap_or_default();
    let policies = if s.policies == "demo" {
        r#"
[[policies]]
name = "rotate-90d"
max_age = "90d"
action = "revoke"
warn_before = "14d"
final_notice = "1d"
notify = ["security-team"]

[[policies]]
name = "idle-45d"
max_idle = "45d"
action = "notify"
notify = ["security-team"]

[[policies]]
name = "orphaned"
owner_lost_access = true
action = "revoke"
warn_before = "7d"
notify = ["security-team"]
"#
    } else {
        // Few findings: a mature organisation where keysweep has been running a while.
        r#"
[[policies]]
name = "rotate-700d"
max_age = "700d"
action = "ACTION"
warn_before = "14d"
notify = ["security-team"]

[[policies]]
name = "orphaned"
owner_lost_access = true
action = "notify"
notify = ["security-team"]
"#
    };
    // `expire`: the `light` set with its max-age policy setting expiries, in enforce mode.
    let (policies, mode) = if s.policies == "expire" {
        (policies.replace("ACTION", "expire"), "enforce")
    } else {
        (policies.replace("ACTION", "revoke"), "dry-run")
    };
    // Issue 15 measures the sweep without the audit-log and usage reads (issue 16), which are
    // on by default: `--intel` turns them on and counts their requests apart.
    let intel = if s.intel {
        "\n[usage]\nwindow = \"30d\"\n\n[audit_log]\nbackfill = \"90d\"\n"
    } else {
        "\n[usage]\nenabled = false\n\n[audit_log]\nenabled = false\n"
    };
    format!(
        r#"
mode = "{mode}"
state_path = {db:?}
ops_channels = ["security-team"]
owner_fallback = ["security-team"]

[[organizations]]
name = "bench"
base_url = "{base_url}"

[limits]
concurrency = {concurrency}
{rps}
{policies}
{intel}

[[channels]]
name = "security-team"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = 2525
smtp_tls = "none"
from = "keysweep@bench.example"
to = ["security@bench.example"]
"#,
        db = db.display().to_string(),
        concurrency = s.concurrency,
    )
}

/// What one measured phase cost: wall time, CPU seconds of this process and of the simulator,
/// this process's RSS before it and its peak RSS, and the requests the simulator served.
struct Cost {
    wall: Duration,
    cpu: f64,
    sim_cpu: f64,
    rss_before: Option<u64>,
    peak: Option<u64>,
    requests: BTreeMap<String, u64>,
}

/// Where a measurement starts: simulator counters reset and, if `reset_peak`, the peak RSS too.
struct Start {
    at: Instant,
    cpu: f64,
    sim_cpu: f64,
    rss_before: Option<u64>,
}

impl Start {
    fn now(sim: &mut SimChild, reset_peak: bool) -> Result<Start> {
        let rss_before = proc_status_kib("VmRSS");
        if reset_peak {
            reset_peak_rss();
        }
        sim.reset()?;
        Ok(Start {
            cpu: cpu_seconds("/proc/self/stat"),
            sim_cpu: sim.cpu(),
            rss_before,
            at: Instant::now(),
        })
    }

    fn cost(self, sim: &mut SimChild) -> Result<Cost> {
        let wall = self.at.elapsed();
        Ok(Cost {
            wall,
            peak: proc_status_kib("VmHWM"),
            cpu: cpu_seconds("/proc/self/stat") - self.cpu,
            sim_cpu: sim.cpu() - self.sim_cpu,
            rss_before: self.rss_before,
            requests: sim.stats()?,
        })
    }
}

/// Requests of one phase by kind, from the simulator's per-route counters.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Requests {
    /// Project and key list pages: what the minimum describes.
    inventory: u64,
    /// Project-user pages: owner e-mails the key objects lack, and the routes of
    /// service-account keys' notices (creator, project owners; issue 16), outside the minimum.
    routing: u64,
    /// The admin-key page (the expiry warning of keysweep's own key).
    admin: u64,
    /// Audit-log, usage and cost pages (issue 16).
    intel: u64,
    /// Writes (anything but GET): expiries set, keys deleted.
    writes: u64,
    /// Any other read (enforcement's re-reads of single keys, …).
    other: u64,
}

impl Requests {
    fn of(map: &BTreeMap<String, u64>) -> Requests {
        let mut r = Requests::default();
        for (route, &n) in map {
            let (method, path) = route.split_once(' ').unwrap_or(("GET", route));
            let slot = if method != "GET" {
                &mut r.writes
            } else if path.ends_with("/admin_api_keys") {
                &mut r.admin
            } else if path.contains("/audit_logs")
                || path.contains("/usage/")
                || path.ends_with("/costs")
            {
                &mut r.intel
            } else if path.ends_with("/users") {
                &mut r.routing
            } else if path.ends_with("/organization/projects") || path.ends_with("/api_keys") {
                &mut r.inventory
            } else {
                &mut r.other
            };
            *slot += n;
        }
        r
    }

    fn total(&self) -> u64 {
        self.inventory + self.routing + self.admin + self.intel + self.writes + self.other
    }

    /// `inventory + admin + intel + writes + other`, the non-zero terms named.
    fn text(&self) -> String {
        let mut parts = vec![format!("{} inventory", group(self.inventory))];
        for (n, what) in [
            (self.admin, "admin-key"),
            (self.routing, "project-user (routing)"),
            (self.intel, "intel (audit log, usage, costs)"),
            (self.writes, "writes"),
            (self.other, "other reads"),
        ] {
            if n > 0 {
                parts.push(format!("{} {what}", group(n)));
            }
        }
        format!("{} = {}", group(self.total()), parts.join(" + "))
    }
}

/// One sweep as measured: its cost and what it found.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SweepFig {
    wall: f64,
    /// CPU seconds (user + sys) of the sweeping process and of the simulator.
    cpu: f64,
    sim_cpu: f64,
    rss_before_kib: Option<u64>,
    /// `VmHWM`, reset just before the sweep.
    peak_kib: Option<u64>,
    requests: Requests,
    listed_keys: usize,
    findings: usize,
    /// Expiries this sweep set (`--policies expire`).
    expiries_set: usize,
    /// Keys whose due write the plan withheld (dry-run, caps, the service-account rule).
    withheld: usize,
    complete: bool,
}

/// What the sweeper hands the orchestrator for the summary table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    name: String,
    projects: usize,
    keys: u64,
    minimum: u64,
    /// The issue's bound and the dependency bound, in seconds.
    bound: f64,
    best_bound: f64,
    /// Sweep 1, then the steady-state sweeps.
    sweeps: Vec<SweepFig>,
    listing_wall: Option<f64>,
}

/// The listing alone, and policy evaluation over what it listed.
struct ListingRun {
    cost: Cost,
    complete: bool,
    eval: Duration,
    evaluated: u64,
    eval_keys: usize,
    policies: usize,
}

/// One sweep without delivery at `now`, measured from a reset peak RSS. Dry-run unless the
/// scenario enforces (`--policies expire`).
async fn measure_sweep(
    s: &Scenario,
    sweeper: &Sweeper,
    sim: &mut SimChild,
    now: i64,
) -> Result<SweepFig> {
    let opts = SweepOptions {
        force_dry_run: s.policies != "expire",
        deliver: false,
        ..SweepOptions::new(now)
    };
    let start = Start::now(sim, true)?;
    let report = sweeper.run_once(&opts).await?;
    let cost = start.cost(sim)?;
    Ok(SweepFig {
        wall: cost.wall.as_secs_f64(),
        cpu: cost.cpu,
        sim_cpu: cost.sim_cpu,
        rss_before_kib: cost.rss_before,
        peak_kib: cost.peak,
        requests: Requests::of(&cost.requests),
        listed_keys: report.inventory.key_count(),
        findings: report.findings.len(),
        expiries_set: report.expiries_set_count(),
        withheld: report.withheld_key_count(),
        complete: report.complete(),
    })
}

/// The listing alone (what the bound is about), then policy evaluation throughput over its
/// inventory (a sweep keeps no keys).
async fn measure_listing(
    s: &Scenario,
    config: &config::Config,
    sim: &mut SimChild,
    now: i64,
) -> Result<ListingRun> {
    let shared = ClientShared::new(Metrics::new(), &config.limits);
    let clients = config
        .organizations
        .iter()
        .map(|o| AdminClient::new(o, &config.limits, shared.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Start::now(sim, true)?;
    let listing = collect_inventory(config, &clients, None).await;
    let cost = start.cost(sim)?;
    let policies = Policies::compile(&config.policies, &config.exemptions)?;
    let keys: Vec<_> = listing.keys().collect();
    let mut violations = 0usize;
    let t = Instant::now();
    for _ in 0..s.eval_rounds {
        for k in &keys {
            let e = std::hint::black_box(policies.evaluate(std::hint::black_box(k), now));
            violations += e.violations.len();
        }
    }
    let eval = t.elapsed();
    std::hint::black_box(violations);
    Ok(ListingRun {
        cost,
        complete: listing.is_complete(),
        eval,
        evaluated: keys.len() as u64 * u64::from(s.eval_rounds),
        eval_keys: keys.len(),
        policies: policies.names().count(),
    })
}

async fn run_sweeper(s: &Scenario) -> Result<Summary> {
    let admin_key = format!("sk-admin-bench-{}", uuid::Uuid::new_v4().simple());
    let now = chrono::Utc::now().timestamp();
    let mut sim = SimChild::start(s, &admin_key, now)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("keysweep.db");
    let text = config_text(s, &sim.ready.base_url, &db);
    let config = Arc::new(config::load_from_str(
        &text,
        &[("OPENAI_ADMIN_KEY".into(), admin_key.clone())],
    )?);
    let store = Store::open(&db)?;
    let sweeper = Sweeper::new(config.clone(), Some(store.clone()), Metrics::new())?;

    // Sweep 1: the first sweep of this organisation (every key new, every finding new). Then
    // the steady state against the same state database (observations and findings stored),
    // each sweep with its own peak RSS; then the listing alone, which holds every key.
    let mut sweeps = vec![measure_sweep(s, &sweeper, &mut sim, now).await?];
    for i in 1..=s.steady {
        sweeps.push(measure_sweep(s, &sweeper, &mut sim, now + 60 * i64::from(i)).await?);
    }
    let listing = if s.listing {
        Some(measure_listing(s, &config, &mut sim, now).await?)
    } else {
        None
    };
    let window = sim.window()?;

    let bounds = Bounds::new(s, &sim.ready.key_counts);
    let keys: u64 = sim.ready.key_counts.iter().map(|&k| k as u64).sum();
    print_scenario(s, &sim.ready);
    print_first_sweep(s, &bounds, &sweeps[0], listing.as_ref());
    for (i, r) in sweeps.iter().enumerate().skip(1) {
        print_steady(i + 1, r, &bounds);
    }
    print_resources(s, keys, &sweeps, listing.as_ref(), &window);
    drop(sim);
    Ok(Summary {
        name: s.name.clone(),
        projects: s.projects,
        keys,
        minimum: bounds.minimum(),
        bound: bounds.issue.as_secs_f64(),
        best_bound: bounds
            .best(Duration::from_millis(s.latency_ms))
            .as_secs_f64(),
        sweeps,
        listing_wall: listing.map(|l| l.cost.wall.as_secs_f64()),
    })
}

fn print_scenario(s: &Scenario, ready: &Ready) {
    let counts = &ready.key_counts;
    let keys_total: usize = counts.iter().sum();
    println!();
    println!(
        "== {}: {} projects × {} keys, latency {} ms, concurrency {}{}, policies {}{} ==",
        s.name,
        group(counts.len() as u64),
        s.keys_text(),
        s.latency_ms,
        s.concurrency,
        s.rps
            .map(|r| format!(", ceiling {r} requests/s"))
            .unwrap_or_default(),
        s.policies,
        if s.intel { ", intel" } else { "" },
    );
    println!(
        "organisation        {} keys in {} listed projects (+{} archived, not listed); generated in {:.2} s",
        group(keys_total as u64),
        group(counts.len() as u64),
        ready.hidden_projects,
        ready.generate_seconds,
    );
}

fn complete_text(complete: bool) -> &'static str {
    if complete { "complete" } else { "INCOMPLETE" }
}

/// Sweep 1 and the listing alone against the request floor and the wall-time floors.
fn print_first_sweep(
    s: &Scenario,
    bounds: &Bounds,
    first: &SweepFig,
    listing: Option<&ListingRun>,
) {
    let r = &first.requests;
    println!(
        "sweep 1             {:.3} s  (list + evaluate + commit; {}; SQLite; {} keys listed, {} findings, {})",
        first.wall,
        if s.policies == "expire" {
            "enforce"
        } else {
            "dry-run"
        },
        group(first.listed_keys as u64),
        group(first.findings as u64),
        complete_text(first.complete),
    );
    println!(
        "requests            {}; minimum {} ({} project + {} key pages) + 1 admin-key page: {}",
        r.text(),
        group(bounds.minimum()),
        group(bounds.project_pages),
        group(bounds.key_pages),
        verdict(r.inventory == bounds.minimum() && r.admin == 1),
    );
    if r.intel > 0 {
        println!(
            "                    intel: {} audit-log/usage/cost pages, outside the minimum{}",
            group(r.intel),
            if s.intel {
                " (--intel)"
            } else {
                " (not asked for with --intel: this build reads them anyway)"
            },
        );
    }
    if s.policies == "expire" {
        print_writes(first);
    }
    let Some(listing) = listing else {
        print_bounds(s, bounds, Duration::from_secs_f64(first.wall), None);
        return;
    };
    println!(
        "listing alone       {}  ({} requests, {})",
        secs(listing.cost.wall),
        group(listing.cost.requests.values().sum::<u64>()),
        complete_text(listing.complete),
    );
    print_bounds(
        s,
        bounds,
        Duration::from_secs_f64(first.wall),
        Some(listing.cost.wall),
    );
}

/// `--policies expire`: the writes against their bound, one update per expiry set (the plan's
/// caps already applied), and the single-key re-reads that precede them.
fn print_writes(r: &SweepFig) {
    println!(
        "writes              {} updates for {} expiries set ({} due writes withheld by a rail); re-reads {}: {}",
        group(r.requests.writes),
        group(r.expiries_set as u64),
        group(r.withheld as u64),
        group(r.requests.other),
        verdict(r.requests.writes == r.expiries_set as u64),
    );
}

/// A steady-state sweep: wall, CPU, requests, peak RSS.
fn print_steady(n: usize, r: &SweepFig, bounds: &Bounds) {
    println!(
        "sweep {n}             {:.3} s  (steady state; {}; {} findings; requests {}: {}; CPU keysweep {:.2} s, simulator {:.2} s; peak RSS {} from {})",
        r.wall,
        complete_text(r.complete),
        group(r.findings as u64),
        r.requests.text(),
        verdict(r.requests.inventory == bounds.minimum()),
        r.cpu,
        r.sim_cpu,
        mib(r.peak_kib),
        mib(r.rss_before_kib),
    );
    if r.requests.writes > 0 || r.expiries_set > 0 {
        print_writes(r);
    }
}

/// The issue's lower bound, the dependency bound, and how close sweep and listing came.
fn print_bounds(s: &Scenario, bounds: &Bounds, wall1: Duration, list_wall: Option<Duration>) {
    let best = bounds.best(Duration::from_millis(s.latency_ms));
    println!(
        "lower bound         {} = max({} pages × {} ms, {} × {} ms / {}) (issue formula)",
        secs(bounds.issue),
        bounds.longest_chain,
        s.latency_ms,
        group(bounds.minimum()),
        s.latency_ms,
        s.concurrency,
    );
    println!(
        "                    {} with the project-list pages in the chain ({} pages){}",
        secs(best),
        bounds.critical_pages,
        if s.rps.is_some() {
            format!(" and the ceiling ({})", secs(bounds.rate))
        } else {
            String::new()
        },
    );
    let target = if s.projects >= 1000 {
        " (target ≤ 1.2)"
    } else {
        ""
    };
    let listing = |b: Duration| {
        list_wall.map_or_else(String::new, |l| format!("listing {:.2} / ", ratio(l, b)))
    };
    println!(
        "ratio               {}sweep {:.2} of the issue bound{target}; {}sweep {:.2} of the dependency bound",
        listing(bounds.issue),
        ratio(wall1, bounds.issue),
        listing(best),
        ratio(wall1, best),
    );
}

/// CPU, peak RSS and the per-key figures, policy evaluation throughput and the request rate.
fn print_resources(
    s: &Scenario,
    keys: u64,
    sweeps: &[SweepFig],
    listing: Option<&ListingRun>,
    window: &Window,
) {
    let first = &sweeps[0];
    println!(
        "CPU during sweep 1  keysweep {:.2} s, simulator {:.2} s (wall {:.2} s)",
        first.cpu, first.sim_cpu, first.wall,
    );
    println!(
        "peak RSS            {} during sweep 1 (VmRSS before {}) — the sweeping process only",
        mib(first.peak_kib),
        mib(first.rss_before_kib),
    );
    if sweeps.len() > 1 {
        let peaks: Vec<String> = sweeps[1..].iter().map(|r| mib(r.peak_kib)).collect();
        println!(
            "                    {} in the steady-state sweeps 2–{} (each reset before it)",
            peaks.join(", "),
            sweeps.len(),
        );
    }
    for (i, r) in sweeps.iter().enumerate() {
        println!("per key, sweep {}    {}", i + 1, per_key(r, keys));
    }
    if let Some(listing) = listing {
        println!(
            "listing alone       CPU keysweep {:.2} s, simulator {:.2} s; peak RSS {} (VmRSS before {})",
            listing.cost.cpu,
            listing.cost.sim_cpu,
            mib(listing.cost.peak),
            mib(listing.cost.rss_before),
        );
        println!(
            "policy evaluation   {} keys/s ({} rounds × {} keys, {} policies, {:.2} s)",
            group((listing.evaluated as f64 / listing.eval.as_secs_f64().max(1e-9)) as u64),
            s.eval_rounds,
            group(listing.eval_keys as u64),
            listing.policies,
            listing.eval.as_secs_f64(),
        );
    }
    match s.rps {
        Some(r) => println!(
            "request rate        at most {} requests in any 1 s window (ceiling {r}; {} sampled): {}",
            window.max_in_1s,
            group(window.sampled),
            verdict(window.max_in_1s as f64 <= r),
        ),
        None => println!(
            "request rate        at most {} requests in any 1 s window (no ceiling)",
            group(window.max_in_1s)
        ),
    }
}

/// µs of CPU per key (keysweep, simulator) and bytes of peak RSS per key (all of it, and the
/// part above the RSS the sweep started from).
fn per_key(r: &SweepFig, keys: u64) -> String {
    let k = keys.max(1) as f64;
    let bytes = |kib: Option<u64>| kib.map_or(0.0, |v| v as f64 * 1024.0 / k);
    let growth = match (r.peak_kib, r.rss_before_kib) {
        (Some(p), Some(b)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    format!(
        "{:.2} µs CPU (simulator {:.2} µs); peak RSS {:.0} B ({:.0} B above the RSS before the sweep)",
        r.cpu * 1e6 / k,
        r.sim_cpu * 1e6 / k,
        bytes(r.peak_kib),
        bytes(growth),
    )
}

/// One line per sweep of every scenario run: what `benches/README.md`'s tables are made from.
fn print_summaries(summaries: &[Summary]) {
    if summaries.is_empty() {
        return;
    }
    println!();
    println!("== summary ==");
    println!(
        "| scenario | keys | sweep | wall | ratio (issue / dep.) | CPU keysweep | CPU simulator | µs CPU/key | requests (inventory / min, admin, routing, intel, writes) | peak RSS | B RSS/key |"
    );
    println!("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |");
    for s in summaries {
        for (i, r) in s.sweeps.iter().enumerate() {
            let k = s.keys.max(1) as f64;
            println!(
                "| {} | {} | {} | {:.3} s | {:.2} / {:.2} | {:.2} s | {:.2} s | {:.2} | {} / {}, {}, {}, {}, {} | {} | {:.0} |",
                s.name,
                group(s.keys),
                i + 1,
                r.wall,
                r.wall / s.bound.max(1e-9),
                r.wall / s.best_bound.max(1e-9),
                r.cpu,
                r.sim_cpu,
                r.cpu * 1e6 / k,
                group(r.requests.inventory),
                group(s.minimum),
                r.requests.admin,
                group(r.requests.routing),
                group(r.requests.intel),
                group(r.requests.writes),
                mib(r.peak_kib),
                r.peak_kib.map_or(0.0, |v| v as f64 * 1024.0 / k),
            );
        }
        if let Some(l) = s.listing_wall {
            println!(
                "| {} | {} | listing alone | {:.3} s | {:.2} / {:.2} | | | | | | |",
                s.name,
                group(s.keys),
                l,
                l / s.bound.max(1e-9),
                l / s.best_bound.max(1e-9),
            );
        }
    }
}

// ---- the idle daemon -----------------------------------------------------------------------

/// `keysweep run` with a schedule a year away and `run_on_start = false`: its resident memory
/// after it settled.
async fn idle_daemon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("keysweep.db");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = dir.path().join("keysweep.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
mode = "dry-run"
state_path = {db:?}
schedule = "0 0 1 1 *"
run_on_start = false

[[organizations]]
name = "bench"
base_url = "http://127.0.0.1:9/v1"

[[policies]]
name = "rotate-90d"
max_age = "90d"
action = "notify"

[server]
listen = "127.0.0.1:{port}"
"#,
            db = db.display().to_string()
        ),
    )?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keysweep"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("OPENAI_ADMIN_KEY", "sk-admin-bench-idle")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting keysweep run")?;
    let status = format!("/proc/{}/status", child.id());
    // Up when /healthz answers; then let it settle.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("keysweep run did not open its ops port");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = read_kib(&status, "VmRSS");
    let hwm = read_kib(&status, "VmHWM");
    let threads = read_kib(&status, "Threads");
    // SIGTERM, as systemd would; SIGKILL only if it does not stop.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!();
    println!("== idle: `keysweep run`, schedule a year away, run_on_start = false ==");
    println!(
        "idle daemon RSS     {} after 3 s (peak {}; {} threads): {}",
        mib(rss),
        mib(hwm),
        threads.unwrap_or(0),
        verdict(rss.is_some_and(|r| r <= 20 * 1024)),
    );
    Ok(())
}

// ---- /proc helpers ---------------------------------------------------------------------------

/// A `Name:  123 kB` line of a status file, in KiB (or the plain number for counts).
fn read_kib(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn proc_status_kib(field: &str) -> Option<u64> {
    read_kib("/proc/self/status", field)
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0), so the peak is this phase's.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}); it includes the setup");
    }
}

/// utime + stime of a `/proc/PID/stat`, assuming the usual 100 ticks per second.
fn cpu_seconds(path: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name may contain spaces; the fields after it are fixed.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    (tick(11) + tick(12)) / 100.0
}

// ---- formatting ------------------------------------------------------------------------------

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "OK" } else { "MISSED" }
}
