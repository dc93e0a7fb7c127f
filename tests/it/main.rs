//! The one integration-test binary: every test drives real servers over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod config;
mod daemon;
mod deploy;
