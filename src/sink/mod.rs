//! Sinks: where `action = "rotate"` hands a freshly minted service-account key — a file
//! (`file.rs`, written atomically with mode 0600) or a program of the operator's (`exec.rs`, the
//! key on its stdin, run without a shell in a cleared environment).
//!
//! A sink gets the minted secret and the key's metadata, nothing else: never the admin key, never
//! a channel's secret (an exec sink's environment is cleared and only `PATH` and the names its
//! `env = [...]` lists are passed on; the loader refuses names that hold keysweep's secrets).
//! The secret stays in a `SecretString` (zeroed on drop); any buffer built from it here is a
//! `Zeroizing` one. A sink's error never contains the secret, and an exec sink's output is never
//! logged: only its length is reported.

mod exec;
mod file;
mod meta;

pub use meta::{KeyMeta, SinkError};

use secrecy::SecretString;

use crate::config::{SinkConfig, SinkKind};

/// Hands `secret` to `sink`. `Ok` only once the sink confirmed: the file is in place, or the
/// program exited 0.
pub async fn deliver(
    sink: &SinkConfig,
    meta: &KeyMeta,
    secret: &SecretString,
) -> Result<(), SinkError> {
    let result = match &sink.kind {
        // A file is in place or not: the rename is atomic.
        SinkKind::File { path, format } => {
            file::write(path, *format, meta, secret).map_err(exec::Unconfirmed::from)
        }
        SinkKind::Exec {
            command,
            env,
            timeout,
        } => exec::run(&sink.name, command, env, *timeout, meta, secret).await,
    };
    result.map_err(|u| SinkError {
        sink: sink.name.clone(),
        kind: sink.kind.type_name(),
        message: u.message,
        ambiguous: u.killed,
    })
}
