//! The simulated Administration API, in this test process on a loopback port.
//! Never bound to anything but 127.0.0.1.

use keysweep::sim::{SimOptions, SimOrg, SimServer};

/// Serves `org` on 127.0.0.1 (any port), accepting `admin_key`.
pub async fn start_sim(org: SimOrg, admin_key: &str) -> SimServer {
    start_sim_with(org, SimOptions::new(admin_key)).await
}

/// Serves `org` on 127.0.0.1 (any port) with the given options.
pub async fn start_sim_with(org: SimOrg, opts: SimOptions) -> SimServer {
    SimServer::start("127.0.0.1:0".parse().unwrap(), org, opts)
        .await
        .unwrap()
}

/// The simulator with its clock frozen at `now`, so sweeps run with `--now` and the simulated
/// time (the audit log's and usage's) agree.
pub async fn start_frozen(org: SimOrg, now: i64, admin_key: &str) -> SimServer {
    let opts = SimOptions {
        now: Some(now),
        freeze_clock: true,
        ..SimOptions::new(admin_key)
    };
    start_sim_with(org, opts).await
}
