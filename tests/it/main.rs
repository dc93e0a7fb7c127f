//! The one integration-test binary: every test drives real servers over real sockets.
//! Shared fixtures live in `support`; test files never import from each other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod alerts_e2e;
mod architecture;
mod cli;
mod cli_truth;
mod config;
mod daemon;
mod daemon_bin;
mod deploy;
mod enforce;
mod errors;
mod expire;
mod expiry_display;
mod faults;
mod hardening_names;
mod hardening_net;
mod hostile;
mod intel;
mod intel_data;
mod intel_notices;
mod intel_sweep;
mod migration;
mod notify;
mod openai;
mod openai_expiry;
mod replay;
mod report;
mod rotate;
mod rotate_more;
mod rotate_notices;
mod scan_plan;
mod sim;
mod sim_audit_log;
mod sim_nov2026;
mod state;
mod truth;
