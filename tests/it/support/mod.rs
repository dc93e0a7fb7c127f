//! Shared support for the one integration-test binary: every fixture, launcher and assertion
//! that more than one test file needs lives here, so test files never import from each other.
//!
//! - [`process`]: the `keysweep` binary and `keysweep simulate` as child processes, signals;
//! - [`net`], [`wait`]: free ports, an HTTP client, `eventually` and `poll` (hang guards only);
//! - [`secrets`]: the one secret assertion and the Standard Webhooks secret;
//! - [`config`]: a `Config` from TOML text through the real loader;
//! - [`sim`], [`acme`], [`listing`]: the simulated API, the end-to-end organisation and the
//!   client-level scan fixture;
//! - [`state_file`], [`openmetrics`]: reading what the daemon leaves behind;
//! - [`receivers`], [`smtp_server`]: real receivers for every notification channel;
//! - [`tools`]: external tools (systemd-analyze, promtool, bash), required under `CI`.
//!
//! Nothing here may talk to anything but loopback, hold a real secret, or assert a speed.

pub mod acme;
pub mod config;
pub mod listing;
pub mod net;
pub mod openmetrics;
pub mod process;
pub mod receivers;
pub mod secrets;
pub mod sim;
pub mod smtp_server;
pub mod state_file;
pub mod time;
pub mod tools;
pub mod wait;
