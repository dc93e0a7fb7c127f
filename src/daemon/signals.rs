//! Turns process signals into daemon controls: SIGTERM and SIGINT ask for a shutdown, SIGHUP for
//! a configuration reload.
//!
//! This module only forwards; what a shutdown or a reload does is decided in one place, the
//! supervisor in `daemon/supervisor.rs`. It must never exit the process itself.

use std::io;

use super::DaemonControl;

#[cfg(unix)]
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    /// Registers the handlers. From here on these signals no longer kill the process.
    pub(crate) fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Forwards signals until the daemon is gone.
    pub(crate) async fn forward(mut self, control: DaemonControl) {
        let mut stopping = false;
        loop {
            let name = tokio::select! {
                Some(()) = self.term.recv() => "SIGTERM",
                Some(()) = self.int.recv() => "SIGINT",
                Some(()) = self.hup.recv() => "SIGHUP",
                else => return,
            };
            if name == "SIGHUP" {
                tracing::info!(signal = name, "reloading the configuration");
                if !control.request_reload() {
                    return;
                }
                continue;
            }
            if stopping {
                // Interrupting a sweep between a delete and its audit record is exactly what
                // the grace period exists to avoid, so a second signal does not shorten it.
                tracing::warn!(
                    signal = name,
                    "already shutting down; waiting for the grace period"
                );
            } else {
                tracing::info!(signal = name, "shutdown requested");
                stopping = true;
            }
            control.shutdown();
        }
    }
}

#[cfg(not(unix))]
pub(crate) struct Signals;

#[cfg(not(unix))]
impl Signals {
    pub(crate) fn install() -> io::Result<Signals> {
        Ok(Signals)
    }

    pub(crate) async fn forward(self, control: DaemonControl) {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("shutdown requested (Ctrl-C)");
            control.shutdown();
        }
    }
}
