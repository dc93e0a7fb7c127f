//! The one integration-test binary: every test drives real servers over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config;
mod daemon;
mod deploy;
mod faults;
mod notify;
mod openai;
mod receivers;
mod report;
mod sim;
mod smtp_server;
mod state;
