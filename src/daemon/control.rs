//! [`DaemonControl`]: how signals (and tests) tell the daemon to shut down or reload.
//!
//! It only sends requests; what they do is decided by the supervisor. It must never stop the
//! daemon or change its configuration itself.

use tokio::sync::{mpsc, oneshot};

use crate::daemon::error::ReloadError;

/// Sends the daemon what the signals mean. Cheap to clone.
#[derive(Clone)]
pub struct DaemonControl {
    tx: mpsc::UnboundedSender<Control>,
}

/// One request to the supervisor.
pub(super) enum Control {
    Shutdown,
    Reload(Option<oneshot::Sender<Result<(), String>>>),
}

impl DaemonControl {
    /// A control and the receiving end the supervisor reads.
    pub(super) fn channel() -> (DaemonControl, mpsc::UnboundedReceiver<Control>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (DaemonControl { tx }, rx)
    }

    /// What SIGTERM / SIGINT do.
    pub fn shutdown(&self) {
        // A send error means the daemon is already gone, which is what was asked.
        let _ = self.tx.send(Control::Shutdown);
    }

    /// What SIGHUP does, without waiting for the outcome. Returns false if the daemon is gone.
    pub fn request_reload(&self) -> bool {
        self.tx.send(Control::Reload(None)).is_ok()
    }

    /// Reloads and reports whether the new configuration was taken.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Control::Reload(Some(reply)))
            .map_err(|_| ReloadError::Stopped)?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(ReloadError::Invalid(reason)),
            Err(_) => Err(ReloadError::Stopped),
        }
    }
}
