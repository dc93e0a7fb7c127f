//! Issue 16 in the sweep: `keysweep run --once` (the real binary) against the simulator over
//! HTTP, its ops alerts caught by a real webhook receiver. An unavailable audit log or usage
//! never fails a sweep: one enforcer alert says what is missing, once, not at every sweep. A key
//! idle for `[usage] wake_after` and used again raises one alert in the next sweep; a key in the
//! log but hidden from the listing raises the inventory-gap alert.
//! These tests never assert on timings.

use keysweep::sim::SimOrg;

use crate::support::config::write_config_file;
use crate::support::listing::{ADMIN_KEY, active_projects};
use crate::support::process::run_to_end;
use crate::support::receivers::Receiver;
use crate::support::sim::start_frozen;
use crate::support::time::{DAY, DEC_1_2026 as NOW, HOUR, rfc3339};

const ADMIN_KEY_ENV: &str = "KS_INTEL_SWEEP_ADMIN_KEY";
const SECRET_ENV: &str = "KS_INTEL_SWEEP_HOOK_SECRET";
const SECRET: &str = "whsec_aW50ZWxzd2VlcHRlc3RzZWNyZXQxMjM0NQ==";

/// The ops channel is a webhook to `rx`'s `/ops`; one policy that finds nothing soon.
fn extra(rx: &Receiver) -> String {
    format!(
        "ops_channels = [\"ops\"]\n\
         [[channels]]\nname = \"ops\"\ntype = \"webhook\"\nurl = \"{}\"\nsecret_env = \"{SECRET_ENV}\"\n\
         [[policies]]\nname = \"old\"\nmax_age = \"3650d\"\n",
        rx.url("/ops")
    )
}

/// `run --once` at `at`; returns (success, stdout, stderr).
async fn sweep(config: &std::path::Path, at: i64) -> (bool, String, String) {
    let now = rfc3339(at);
    let args = [
        "run",
        "--once",
        "--now",
        &now,
        "--config",
        config.to_str().unwrap(),
    ];
    let env = [(ADMIN_KEY_ENV, ADMIN_KEY), (SECRET_ENV, SECRET)];
    let (status, out, err) = run_to_end(&args, &env).await;
    (status.success(), out, err)
}

/// The bodies received on `/ops` that mention `what`.
fn ops_mentioning(rx: &Receiver, what: &str) -> Vec<String> {
    rx.requests("/ops")
        .iter()
        .map(|r| r.json().to_string())
        .filter(|b| b.contains(what))
        .collect()
}

#[tokio::test]
async fn with_audit_logging_off_the_sweep_completes_and_one_alert_says_so_once() {
    let org = SimOrg::generate(2, 3, 16, NOW);
    let sim = start_frozen(org, NOW, ADMIN_KEY).await;
    sim.set_audit_logging(false);
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra(&rx));

    let (ok, out, err) = sweep(&config, NOW).await;
    assert!(ok, "{out}\n{err}");
    let alerts = ops_mentioning(&rx, "acme: the audit log could not be read");
    assert_eq!(alerts.len(), 1, "{:?}", rx.requests("/ops"));
    assert!(
        ops_mentioning(&rx, "usage").is_empty(),
        "usage is available: {alerts:?}"
    );

    // The next sweep completes too, and does not say it again.
    let (ok, out, err) = sweep(&config, NOW + HOUR).await;
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        ops_mentioning(&rx, "acme: the audit log could not be read").len(),
        1,
        "{:?}",
        rx.requests("/ops")
    );
}

#[tokio::test]
async fn with_the_audit_log_on_the_sweep_raises_no_intel_alert() {
    let org = SimOrg::generate(2, 3, 17, NOW);
    let sim = start_frozen(org, NOW, ADMIN_KEY).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra(&rx));
    let (ok, out, err) = sweep(&config, NOW).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        ops_mentioning(&rx, "could not be read").is_empty(),
        "{:?}",
        rx.requests("/ops")
    );
    let stats = sim.stats();
    assert!(
        stats.keys().any(|k| k.contains("audit_logs")),
        "the sweep reads the log: {stats:?}"
    );
}

#[tokio::test]
async fn a_key_idle_sixty_days_then_used_raises_the_wake_up_alert_in_the_next_sweep_once() {
    let org = SimOrg::generate(2, 3, 18, NOW);
    let active = active_projects(&org);
    let (project, key) = (org.projects.iter())
        .filter(|p| active.contains(&p.id))
        .find_map(|p| {
            (p.keys.iter())
                .find(|k| k.created_at < NOW - 61 * DAY)
                .map(|k| (p.id.clone(), k.id.clone()))
        })
        .expect("a key older than 61 days");
    let sim = start_frozen(org, NOW, ADMIN_KEY).await;
    sim.set_last_used(&project, &key, Some(NOW - 60 * DAY))
        .unwrap();
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra(&rx));

    // First sighting: idle, nothing woke.
    let (ok, out, err) = sweep(&config, NOW).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        ops_mentioning(&rx, "woke up").is_empty(),
        "{:?}",
        rx.requests("/ops")
    );

    // Used again after 60 idle days: the next sweep says so, at once, to the ops channel.
    sim.set_last_used(&project, &key, Some(NOW)).unwrap();
    let (ok, out, err) = sweep(&config, NOW + HOUR).await;
    assert!(ok, "{out}\n{err}");
    let woke = ops_mentioning(&rx, "woke up");
    assert_eq!(woke.len(), 1, "{:?}", rx.requests("/ops"));
    assert!(
        woke[0].contains(&key) && woke[0].contains("idle 60 day"),
        "{woke:?}"
    );

    // Nothing new: not said again.
    let (ok, out, err) = sweep(&config, NOW + 2 * HOUR).await;
    assert!(ok, "{out}\n{err}");
    assert_eq!(ops_mentioning(&rx, "woke up").len(), 1);
}

/// One organisation whose first key was last used at `last_used`, its ops receiver and a
/// configuration file: the set-up of the wake-up tests that watch one key.
struct OneKey {
    sim: keysweep::sim::SimServer,
    rx: Receiver,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    project: String,
    key: String,
}

async fn one_key(last_used: i64) -> OneKey {
    let org = SimOrg::generate(1, 3, 19, NOW);
    let active = active_projects(&org);
    let p = (org.projects.iter())
        .find(|p| active.contains(&p.id))
        .unwrap();
    let (project, key) = (p.id.clone(), p.keys[0].id.clone());
    let sim = start_frozen(org, NOW, ADMIN_KEY).await;
    sim.set_last_used(&project, &key, Some(last_used)).unwrap();
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra(&rx));
    OneKey {
        sim,
        rx,
        _dir: dir,
        config,
        project,
        key,
    }
}

#[tokio::test]
async fn a_key_used_within_wake_after_raises_nothing() {
    let OneKey {
        sim,
        rx,
        _dir,
        config,
        project,
        key,
    } = one_key(NOW - 20 * DAY).await;
    let (ok, out, err) = sweep(&config, NOW).await;
    assert!(ok, "{out}\n{err}");
    sim.set_last_used(&project, &key, Some(NOW)).unwrap();
    let (ok, out, err) = sweep(&config, NOW + HOUR).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        ops_mentioning(&rx, "woke up").is_empty(),
        "{:?}",
        rx.requests("/ops")
    );
}

/// A listing that leaves `last_used_at` out says nothing about the key's use: the stored last
/// use is kept, so the next listing (used yesterday, as every day) is no wake-up of a key
/// "idle since its creation".
#[tokio::test]
async fn a_listing_without_last_used_at_raises_no_wake_up_after_it() {
    let OneKey {
        sim,
        rx,
        _dir,
        config,
        project,
        key,
    } = one_key(NOW - DAY).await;
    let (ok, out, err) = sweep(&config, NOW).await;
    assert!(ok, "{out}\n{err}");
    let omit = sim.faults().add(
        keysweep::sim::Fault::on_list_keys(&project)
            .respond(keysweep::sim::FaultKind::OmitLastUsed),
    );
    let (ok, out, err) = sweep(&config, NOW + HOUR).await;
    assert!(ok, "{out}\n{err}");
    assert!(sim.faults().hits(omit) >= 1);
    sim.faults().clear();
    sim.set_last_used(&project, &key, Some(NOW + HOUR)).unwrap();
    let (ok, out, err) = sweep(&config, NOW + 2 * HOUR).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        ops_mentioning(&rx, "woke up").is_empty(),
        "{:?}",
        rx.requests("/ops")
    );
}

#[test]
fn wake_after_is_read_checked_and_hash_neutral_at_its_default() {
    let base = "[[organizations]]\nname = \"acme\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
    let env = vec![("OPENAI_ADMIN_KEY".to_string(), "sk-admin-test".to_string())];
    let load = |extra: &str| keysweep::config::load_from_str(&format!("{extra}\n{base}"), &env);
    let plain = load("").unwrap();
    assert_eq!(plain.intel.wake_after.as_secs(), 30 * DAY as u64);
    let same = load("[usage]\nwake_after = \"30d\"\n").unwrap();
    assert_eq!(
        same.hash, plain.hash,
        "the default written out keeps the hash"
    );
    let set = load("[usage]\nwake_after = \"7d\"\n").unwrap();
    assert_eq!(set.intel.wake_after.as_secs(), 7 * DAY as u64);
    assert_ne!(set.hash, plain.hash);
    let e = load("[usage]\nwake_after = \"12h\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("usage.wake_after"), "{e}");
}

#[tokio::test]
async fn a_key_in_the_log_but_hidden_from_the_listing_raises_the_inventory_gap_alert_once() {
    let org = SimOrg::generate(2, 3, 20, NOW);
    let active = active_projects(&org);
    let project = active[0].clone();
    let archived = (org.projects.iter())
        .find(|p| !active.contains(&p.id))
        .map(|p| p.id.clone());
    let creator = org.users[0].id.clone();
    let sim = start_frozen(org, NOW, ADMIN_KEY).await;
    let hidden = "key_HiddenFromList01";
    sim.log_key_created(&project, hidden, &creator, None, NOW - 10 * DAY);
    // Not gaps: deleted, created after the listing began, or in a project not listed.
    sim.log_key_created(
        &project,
        "key_DeletedLater0001",
        &creator,
        None,
        NOW - 9 * DAY,
    );
    sim.log_key_deleted(&project, "key_DeletedLater0001", &creator, NOW - 8 * DAY);
    sim.log_key_created(&project, "key_CreatedAfter0001", &creator, None, NOW + 600);
    if let Some(a) = &archived {
        sim.log_key_created(a, "key_ArchivedProj0001", &creator, None, NOW - 9 * DAY);
    }
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_file(dir.path(), &sim.base_url(), ADMIN_KEY_ENV, &extra(&rx));
    let (ok, out, err) = sweep(&config, NOW + 120).await;
    assert!(ok, "{out}\n{err}");
    let gaps = ops_mentioning(&rx, "Inventory gap in acme");
    assert_eq!(gaps.len(), 1, "{:?}", rx.requests("/ops"));
    assert!(gaps[0].contains(hidden), "{gaps:?}");
    for not_gap in ["DeletedLater", "CreatedAfter", "ArchivedProj"] {
        assert!(!gaps[0].contains(not_gap), "{not_gap}: {gaps:?}");
    }
    // The same gap next sweep (still before the later key's creation): not said again.
    let (ok, out, err) = sweep(&config, NOW + 300).await;
    assert!(ok, "{out}\n{err}");
    assert_eq!(ops_mentioning(&rx, "Inventory gap in acme").len(), 1);
    // Much later, past any repeat interval: the key created since the last sweep (and still
    // not listed) is a gap; the one said before, created before that sweep, is not said again
    // (the history kept between sweeps would otherwise repeat it for as long as it is kept).
    let (ok, out, err) = sweep(&config, NOW + 30 * DAY).await;
    assert!(ok, "{out}\n{err}");
    let gaps = ops_mentioning(&rx, "Inventory gap in acme");
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(gaps[1].contains("key_CreatedAfter0001"), "{gaps:?}");
    assert!(!gaps[1].contains(hidden), "{gaps:?}");
}
