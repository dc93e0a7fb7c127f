//! One organisation "acme" on the simulated API, listed through the real client
//! (`AdminClient`, `collect_inventory`) as `keysweep scan` does: the fixture of the client
//! tests (`openai`) and the report tests (`report`). Every scan checks that the admin key
//! appears nowhere in the inventory.
//!
//! The admin key here is made up; it must never appear in any inventory, error or report.

use std::time::Duration;

use keysweep::config::{Config, Limits, OrgConfig};
use keysweep::inventory::Inventory;
use keysweep::metrics::Metrics;
use keysweep::openai::{AdminClient, ClientShared, collect_inventory};
use keysweep::sim::{SimOrg, SimServer};
use secrecy::SecretString;

use super::config::config_from_toml;

pub const ADMIN_KEY: &str = "sk-admin-TEST-3f9c2b7e1d-DO-NOT-LEAK";
/// 2026-01-01T00:00:00Z
pub const NOW: i64 = 1_767_225_600;

pub fn limits() -> Limits {
    Limits {
        concurrency: 4,
        requests_per_second: None,
        max_retries: 2,
        request_timeout: Duration::from_secs(10),
        max_response_bytes: 4 << 20,
    }
}

pub fn org_cfg(name: &str, base_url: &str, key: &str) -> OrgConfig {
    OrgConfig {
        admin_key_id: None,
        admin_key_source: "test".into(),
        name: name.to_string(),
        base_url: base_url.parse().unwrap(),
        admin_key: SecretString::from(key.to_string()),
        projects: vec![],
        exclude_projects: vec![],
        include_archived: false,
        ca_file: None,
        schedule: None,
    }
}

/// A loaded configuration (the real loader fills every default) with the organisations and
/// limits under test put in afterwards: they point at simulators on ports chosen at run time.
pub fn config(organizations: Vec<OrgConfig>, limits: Limits) -> Config {
    let toml = "[[organizations]]\nname = \"placeholder\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
    let mut config = config_from_toml(toml, &[("OPENAI_ADMIN_KEY", ADMIN_KEY)]);
    config.organizations = organizations;
    config.limits = limits;
    config
}

/// The simulator serving `org` with [`ADMIN_KEY`].
pub async fn sim(org: SimOrg) -> SimServer {
    super::sim::start_sim(org, ADMIN_KEY).await
}

/// One organisation `acme` on `sim`, scanned with `limits`.
pub struct Setup {
    pub config: Config,
    pub clients: Vec<AdminClient>,
}

pub fn setup(sim: &SimServer, limits: Limits, tweak: impl FnOnce(&mut OrgConfig)) -> Setup {
    let mut org = org_cfg("acme", &sim.base_url(), ADMIN_KEY);
    tweak(&mut org);
    let config = config(vec![org], limits);
    let shared = ClientShared::new(Metrics::new(), &config.limits);
    let clients = config
        .organizations
        .iter()
        .map(|o| AdminClient::new(o, &config.limits, shared.clone()).unwrap())
        .collect();
    Setup { config, clients }
}

/// Lists everything; neither the inventory's Debug nor its JSON holds the admin key.
pub async fn scan(s: &Setup) -> Inventory {
    let inv = collect_inventory(&s.config, &s.clients, None).await;
    assert_no_secret(&format!("{inv:?}"));
    assert_no_secret(&serde_json::to_string(&inv).unwrap());
    inv
}

/// Neither the admin key nor a recognisable part of it is in `text`.
pub fn assert_no_secret(text: &str) {
    super::secrets::assert_no_secret("the text", text, &[ADMIN_KEY, "3f9c2b7e1d"]);
}

pub fn active_projects(org: &SimOrg) -> Vec<String> {
    org.projects
        .iter()
        .filter(|p| !p.is_archived())
        .map(|p| p.id.clone())
        .collect()
}
