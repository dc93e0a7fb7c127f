//! The deployment kit (`deploy/`) and the shipped configurations (`config/`) checked against
//! the real binary and the real tools, so a shipped file can never drift from the code:
//!
//! - every `*.toml` under `config/` and `deploy/`, and the TOML inside the Kubernetes ConfigMap,
//!   passes `keysweep check-config` (the built binary, dummy secrets in a clean environment);
//! - `config/keysweep.example.toml` names every key the loader accepts and shows the real
//!   defaults;
//! - the systemd unit passes `systemd-analyze verify` with the built binary in place, and its
//!   exposure score stays low;
//! - the Dockerfile's paths exist and its HEALTHCHECK command answers for a running daemon;
//! - the Kubernetes manifests parse and keep their invariants (one replica, Recreate, probes,
//!   locked-down security context, CronJob `Forbid`) and agree with the ConfigMap's TOML;
//! - the alerting rules pass `promtool check rules` and `promtool test rules`, and every metric
//!   the rules and the dashboard query exists in the daemon's `/metrics` output;
//! - every file under `deploy/` and `config/` is of a kind one of these tests checks.
//!
//! External tools (systemd-analyze, promtool, bash) are used where installed; where one is
//! missing its check is skipped, loudly, and under `CI` it fails instead (`.ci/run` sets `CI`
//! and installs every tool). These tests never touch the network and never use a real secret.
//!
//! One file per target; `kit` holds what they all read.

mod config_files;
mod container;
mod coverage;
mod grafana;
mod kit;
mod kubernetes;
mod prometheus;
mod systemd;
