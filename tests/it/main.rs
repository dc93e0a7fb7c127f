//! The one integration-test binary: every test drives real servers over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alerts_e2e;
mod cli;
mod config;
mod daemon;
mod daemon_bin;
mod deploy;
mod enforce;
mod errors;
mod faults;
mod notify;
mod openai;
mod receivers;
mod report;
mod sim;
mod smtp_server;
mod state;
