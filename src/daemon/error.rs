//! How the daemon fails to start or stops unexpectedly, and why a reload is refused.
//!
//! Messages name the address or the reason; they must never carry a secret (a refused reload
//! says why the configuration is invalid, never what a secret holds).

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("ops server stopped: {0}")]
    Ops(io::Error),
    #[error("daemon supervisor stopped unexpectedly: {0}")]
    Supervisor(String),
}

/// Why a reload requested through [`crate::daemon::DaemonControl::reload`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration, keeping the old one: {0}")]
    Invalid(String),
    #[error("the daemon is shutting down")]
    Stopped,
}
