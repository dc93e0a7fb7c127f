//! Issue 14's rows on names and rails, each against the real sweep and the simulated
//! Administration API over HTTP, with a real SQLite state file: the kill switch fails closed and
//! is read again before every write (row 3); repeated re-check skips raise an alert and `max_age`
//! is not kept alive by use (row 4); selectors and exemptions match ids (row 1); a channel's
//! messages per sweep are capped with one summary for the rest (row 9); owner mail only reaches
//! owners whose project access is active (row 14).
//!
//! These tests talk to nothing but loopback and assert no timing.

use std::sync::Arc;
use std::time::Duration;

use keysweep::config::Config;
use keysweep::metrics::Metrics;
use keysweep::notify::alert::EnforcerAlert;
use keysweep::sim::{
    Fault, FaultKind, SimAccess, SimEffect, SimKey, SimMember, SimOrg, SimOwnerRef, SimProject,
    SimServer, SimUser,
};
use keysweep::state::Store;
use keysweep::state::audit::{self, AuditKind};
use keysweep::sweep::{SweepOptions, SweepReport, Sweeper};

use crate::support::config::config_from_toml;
use crate::support::receivers::Receiver;
use crate::support::secrets::whsec;
use crate::support::smtp_server::{self, TestPki};
use crate::support::time::DAY;
use crate::support::wait::PATIENCE;

const ADMIN_KEY: &str = "sk-admin-hardening-names-0001";
const KEY_ENV: &str = "KS_HARDENING_NAMES_ADMIN_KEY";
/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;
const PROJECT: &str = "proj_k";
const PD_KEY_ENV: &str = "KS_HARDENING_NAMES_PD_KEY";

/// `n` user keys `key_00…`, all 400 days old and never used, in one project; users
/// `user_0…` own them in turn (`owners` of them), every membership active.
fn org(n: usize, owners: usize) -> SimOrg {
    let users: Vec<SimUser> = (0..owners)
        .map(|i| SimUser {
            id: format!("user_{i}"),
            name: format!("User {i}"),
            email: format!("user{i}@example.com"),
            created_at: NOW - 900 * DAY,
        })
        .collect();
    let keys = (0..n)
        .map(|i| SimKey {
            id: format!("key_{i:02}"),
            name: format!("key-{i:02}"),
            redacted_value: format!("sk-proj-****{i:04}"),
            created_at: NOW - 400 * DAY,
            last_used_at: None,
            owner: SimOwnerRef::User {
                id: format!("user_{}", i % owners),
            },
            expires_at: None,
            scopes: Vec::new(),
        })
        .collect();
    SimOrg {
        format: keysweep::sim::FORMAT_VERSION,
        generated_at: NOW,
        admin_api_keys: Vec::new(),
        projects: vec![SimProject {
            id: PROJECT.into(),
            name: Some("kproject".into()),
            created_at: NOW - 800 * DAY,
            archived_at: None,
            external_key_id: None,
            members: users
                .iter()
                .map(|u| SimMember {
                    user_id: u.id.clone(),
                    role: "member".into(),
                    added_at: NOW - 800 * DAY,
                    access: SimAccess::Active,
                })
                .collect(),
            service_accounts: Vec::new(),
            keys,
        }],
        users,
    }
}

async fn start(org: SimOrg) -> SimServer {
    crate::support::sim::start_sim(org, ADMIN_KEY).await
}

/// Enforce mode, one `max_age = 90d` revoking policy (7 days' warning), caps lifted; `extra`
/// is appended (tables such as `[[channels]]`, or lines of `[safety]` after `safety_extra`).
fn config(sim: &SimServer, dir: &std::path::Path, safety_extra: &str, extra: &str) -> Config {
    let text = config_text(sim, dir, &format!("{safety_extra}\n{extra}"));
    config_from_toml(
        &text,
        &[(KEY_ENV, ADMIN_KEY), (PD_KEY_ENV, "pd-routing-key-hn")],
    )
}

/// The configuration text of [`config`]; `extra` follows the `[safety]` table's caps.
fn config_text(sim: &SimServer, dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"mode = "enforce"
state_path = "{state}"

[[organizations]]
name = "acme"
base_url = "{base}"
admin_key_env = "{KEY_ENV}"

[limits]
max_retries = 1
request_timeout = "20s"

[[policies]]
name = "max-age"
max_age = "90d"
action = "revoke"
warn_before = "7d"
final_notice = "1d"

[safety]
max_revocations_per_run = 1000
max_revocations_per_project_percent = 100
max_revocations_per_day = 1000
{extra}"#,
        state = dir.join("state.db").display(),
        base = sim.base_url(),
    )
}

fn sweeper(config: Config) -> Sweeper {
    let store = Store::open(&config.state_path).unwrap();
    Sweeper::new(Arc::new(config), Some(store), Metrics::new()).unwrap()
}

async fn sweep(s: &Sweeper, now: i64) -> SweepReport {
    s.run_once(&SweepOptions::new(now)).await.unwrap()
}

fn remaining(sim: &SimServer, n: usize) -> usize {
    (0..n)
        .filter(|i| sim.key_exists(PROJECT, &format!("key_{i:02}")))
        .count()
}

fn kill_switch_alerts(r: &SweepReport) -> Vec<u64> {
    r.alerts
        .iter()
        .filter_map(|a| match a {
            EnforcerAlert::KillSwitchOn { withheld, .. } => Some(*withheld),
            _ => None,
        })
        .collect()
}

// ---- row 3: the kill switch ---------------------------------------------------------------

/// The switch is turned on while the first DELETE is in flight (its answer held back by the
/// simulator after it took effect): no further DELETE is sent, and an alert says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_switch_turned_on_mid_enforcement_stops_the_remaining_deletes() {
    const N: usize = 4;
    let sim = start(org(N, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("STOP");
    let line = format!("kill_switch_file = \"{}\"", stop.display());
    let s = Arc::new(sweeper(config(&sim, dir.path(), &line, "")));
    let r1 = sweep(&s, NOW).await;
    assert_eq!(r1.revocations.len(), 0, "the first sweep only warns");

    // Every DELETE takes effect, then its answer waits: the window to turn the switch on.
    sim.faults().add(
        Fault::on(keysweep::sim::FaultRoute::DeleteKey)
            .after_effect()
            .respond(FaultKind::Delay(Duration::from_secs(3))),
    );
    let task = {
        let s = s.clone();
        tokio::spawn(async move { sweep(&s, NOW + 8 * DAY).await })
    };
    let start = std::time::Instant::now();
    while remaining(&sim, N) == N {
        assert!(start.elapsed() < PATIENCE, "no DELETE arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(&stop, b"stop").unwrap();
    let r2 = task.await.unwrap();

    assert_eq!(
        remaining(&sim, N),
        N - 1,
        "exactly the DELETE in flight went through"
    );
    assert_eq!(r2.revocations.iter().filter(|r| r.deleted()).count(), 1);
    assert_eq!(
        kill_switch_alerts(&r2),
        vec![(N - 1) as u64],
        "{:?}",
        r2.alerts
    );
    let store = s.store().unwrap();
    let rows = store.with_conn(|c| audit::list(c, None)).unwrap();
    let withheld = rows
        .iter()
        .filter(|r| r.record.kind == AuditKind::Skipped && r.record.message.contains("kill switch"))
        .count();
    assert_eq!(withheld, N - 1);
    assert_eq!(
        rows.iter()
            .filter(|r| r.record.kind == AuditKind::Intent)
            .count(),
        1,
        "no intent after the switch"
    );
}

/// A kill-switch path that cannot be examined counts as ON: a dangling symbolic link (which
/// `Path::exists` reports as absent) and a path under a regular file (not a directory).
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_switch_that_cannot_be_read_counts_as_on() {
    for case in ["dangling", "not-a-directory"] {
        const N: usize = 2;
        let sim = start(org(N, 1)).await;
        let dir = tempfile::tempdir().unwrap();
        let path = match case {
            "dangling" => {
                let link = dir.path().join("STOP");
                std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
                link
            }
            _ => {
                let file = dir.path().join("plain");
                std::fs::write(&file, b"").unwrap();
                file.join("STOP")
            }
        };
        let line = format!("kill_switch_file = \"{}\"", path.display());
        let s = sweeper(config(&sim, dir.path(), &line, ""));
        sweep(&s, NOW).await;
        let r2 = sweep(&s, NOW + 8 * DAY).await;
        assert_eq!(remaining(&sim, N), N, "{case}: nothing is deleted");
        assert!(
            r2.alerts
                .iter()
                .any(|a| matches!(a, EnforcerAlert::KillSwitchOn { .. })),
            "{case}: {:?}",
            r2.alerts
        );
    }
}

// ---- row 4: re-check skips ----------------------------------------------------------------

fn recheck_alerts(r: &SweepReport) -> Vec<(String, u32)> {
    r.alerts
        .iter()
        .filter_map(|a| match a {
            EnforcerAlert::RecheckSkips { key_id, skips, .. } => Some((key_id.clone(), *skips)),
            _ => None,
        })
        .collect()
}

/// A member renames a due key back and forth between each listing and its re-check: it is
/// kept every time, and the third consecutive skip raises an alert naming the key and why.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_renamed_back_and_forth_is_kept_but_alerted_after_three_skips() {
    let sim = start(org(1, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = sweeper(config(&sim, dir.path(), "", ""));
    sweep(&s, NOW).await;
    for (i, r) in renamed_back_and_forth(&sim, &s, 8).await.iter().enumerate() {
        let alerts = recheck_alerts(r);
        if i < 2 {
            assert!(alerts.is_empty(), "sweep {i}: {alerts:?}");
        } else {
            assert_eq!(alerts, vec![("key_00".to_string(), 3)], "{:?}", r.alerts);
            let text = format!("{:?}", r.alerts);
            assert!(text.contains("renamed"), "{text}");
        }
    }
}

/// A member names the key after the kill switch's reason: the renames still count as re-check
/// skips (the streak reads the recorded reason, never the message the name is in), and the
/// third raises the alert.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_named_after_the_kill_switch_reason_still_raises_the_skip_alert() {
    let sim = start(org(1, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = sweeper(config(&sim, dir.path(), "", ""));
    sweep(&s, NOW).await;
    let hostile = "x the kill switch is on";
    let reports = renamed_to(&sim, &s, 8, [hostile, "key-00", hostile]).await;
    assert_eq!(recheck_alerts(&reports[2]), vec![("key_00".to_string(), 3)]);
}

/// Three sweeps, from day `first_day` on, in each of which a member renames the due `key_00`
/// between its listing and its re-check (back and forth): each keeps the key.
async fn renamed_back_and_forth(sim: &SimServer, s: &Sweeper, first_day: i64) -> Vec<SweepReport> {
    renamed_to(sim, s, first_day, ["key-00-b", "key-00", "key-00-b"]).await
}

/// [`renamed_back_and_forth`] with the three names given.
async fn renamed_to(
    sim: &SimServer,
    s: &Sweeper,
    first_day: i64,
    names: [&str; 3],
) -> Vec<SweepReport> {
    let mut reports = Vec::new();
    for (i, name) in names.iter().enumerate() {
        sim.faults().add(
            Fault::on_get_key(PROJECT, "key_00")
                .once()
                .respond(FaultKind::Apply(SimEffect::rename(
                    PROJECT, "key_00", *name,
                ))),
        );
        let r = sweep(s, NOW + (first_day + i as i64) * DAY).await;
        assert!(sim.key_exists(PROJECT, "key_00"), "sweep {i}: kept");
        reports.push(r);
    }
    reports
}

/// The plan's holding back of a due key is recorded once per spell and reason, not every
/// sweep: three dry-run sweeps write one `skipped` record, the kill switch (another reason)
/// one more over two sweeps, and once the switch is off the key is revoked.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_held_back_sweep_after_sweep_is_recorded_once_per_reason() {
    let sim = start(org(1, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("STOP");
    let line = format!("kill_switch_file = \"{}\"", stop.display());
    let s = sweeper(config(&sim, dir.path(), &line, ""));
    sweep(&s, NOW).await;
    let withheld = |s: &Sweeper| -> Vec<String> {
        (s.store()
            .unwrap()
            .with_conn(|c| audit::list(c, None))
            .unwrap()
            .iter())
        .filter(|r| r.record.kind == AuditKind::Skipped)
        .filter(|r| r.record.key_id.as_deref() == Some("key_00"))
        .map(|r| {
            r.record.response["withheld"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
    };
    for day in [8, 9, 10] {
        let opts = SweepOptions {
            force_dry_run: true,
            ..SweepOptions::new(NOW + day * DAY)
        };
        let r = s.run_once(&opts).await.unwrap();
        assert!(
            !r.plan.withheld.is_empty(),
            "day {day}: held back by dry-run"
        );
    }
    assert_eq!(withheld(&s), ["dry_run"]);
    std::fs::write(&stop, b"stop").unwrap();
    for day in [11, 12] {
        sweep(&s, NOW + day * DAY).await;
        assert!(
            sim.key_exists(PROJECT, "key_00"),
            "day {day}: the switch holds it"
        );
    }
    assert_eq!(withheld(&s), ["dry_run", "kill_switch"]);
    std::fs::remove_file(&stop).unwrap();
    sweep(&s, NOW + 13 * DAY).await;
    assert!(
        !sim.key_exists(PROJECT, "key_00"),
        "revoked once the switch is off"
    );
    assert_eq!(withheld(&s), ["dry_run", "kill_switch"]);
    let verified = s
        .store()
        .unwrap()
        .with_conn(|c| Ok(audit::verify(c).is_ok()));
    assert!(verified.unwrap(), "the audit chain verifies");
}

/// A due key the plan held back (here by dry-run, two sweeps) was never re-checked: those
/// `skipped` records do not count toward `max_recheck_skips` (3), so the one re-check skip that
/// follows raises no alert, and the count then goes on from the re-check skips alone.
#[tokio::test(flavor = "multi_thread")]
async fn withholdings_by_the_plan_are_not_counted_as_recheck_skips() {
    let sim = start(org(1, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = sweeper(config(&sim, dir.path(), "", ""));
    sweep(&s, NOW).await;
    for day in [8, 9] {
        let opts = SweepOptions {
            force_dry_run: true,
            ..SweepOptions::new(NOW + day * DAY)
        };
        s.run_once(&opts).await.unwrap();
    }
    let store = s.store().unwrap();
    let withheld = store
        .with_conn(|c| audit::list(c, None))
        .unwrap()
        .iter()
        .filter(|r| r.record.kind == AuditKind::Skipped && r.record.message.contains("withheld"))
        .count();
    assert_eq!(withheld, 1, "one `skipped` record for the spell");
    for (i, r) in renamed_back_and_forth(&sim, &s, 10)
        .await
        .iter()
        .enumerate()
    {
        let alerts = recheck_alerts(r);
        if i < 2 {
            assert!(alerts.is_empty(), "re-check skip {}: {alerts:?}", i + 1);
        } else {
            assert_eq!(alerts, vec![("key_00".to_string(), 3)], "{:?}", r.alerts);
        }
    }
}

/// Under `max_age`, a key used between its listing and its re-check is still revoked: use is
/// no reason to keep an old key. Under `max_idle` it is (the key is no longer idle).
#[tokio::test(flavor = "multi_thread")]
async fn under_max_age_a_use_since_the_listing_does_not_save_the_key() {
    let sim = start(org(1, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let s = sweeper(config(&sim, dir.path(), "", ""));
    sweep(&s, NOW).await;
    let later = NOW + 8 * DAY;
    sim.faults().add(
        Fault::on_get_key(PROJECT, "key_00")
            .once()
            .respond(FaultKind::Apply(SimEffect::set_last_used(
                PROJECT,
                "key_00",
                Some(later - 60),
            ))),
    );
    let r = sweep(&s, later).await;
    assert!(!sim.key_exists(PROJECT, "key_00"), "{:?}", r.revocations);
    assert_eq!(r.revocations.iter().filter(|r| r.deleted()).count(), 1);
}

/// A listing that omits `last_used_at` (a field the spec requires) decides nothing under
/// `max_idle`: the due key is neither revoked nor closed, and is revoked once the field is back.
/// A re-read that omits it before the DELETE keeps the key too.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_whose_last_use_the_api_omitted_is_not_revoked_as_idle() {
    let sim = start(org(1, 1)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = (config_text(&sim, dir.path(), "")).replace(
        "name = \"max-age\"\nmax_age = \"90d\"",
        "name = \"idle\"\nmax_idle = \"30d\"",
    );
    let s = sweeper(config_from_toml(&text, &[(KEY_ENV, ADMIN_KEY)]));
    let first = sweep(&s, NOW).await;
    assert_eq!(first.findings.len(), 1, "never used for 400 days: warned");
    // Past the deadline, the listing omits the field: nothing is decided.
    sim.faults()
        .add(Fault::on_list_keys(PROJECT).respond(FaultKind::OmitLastUsed));
    let r = sweep(&s, NOW + 8 * DAY).await;
    assert!(sim.key_exists(PROJECT, "key_00"), "{:?}", r.revocations);
    assert!(r.revocations.is_empty(), "{:?}", r.revocations);
    // The listing says `null` again, but the re-read before the DELETE omits it: kept.
    sim.faults().clear();
    sim.faults()
        .add(Fault::on_get_key(PROJECT, "key_00").respond(FaultKind::OmitLastUsed));
    let r = sweep(&s, NOW + 9 * DAY).await;
    assert!(sim.key_exists(PROJECT, "key_00"), "{:?}", r.revocations);
    // Both answers whole: revoked, so the finding stayed open (closed, it would be warned
    // again with a new deadline).
    sim.faults().clear();
    let r = sweep(&s, NOW + 10 * DAY).await;
    assert!(!sim.key_exists(PROJECT, "key_00"), "{:?}", r.revocations);
}

/// A finding opened on a listing that left `last_used_at` out never records the key as "never
/// used": its decision record says the last use is unknown, and the stored finding takes the
/// real value from the next whole listing.
#[tokio::test(flavor = "multi_thread")]
async fn a_finding_opened_without_last_used_at_records_it_as_unknown() {
    let mut o = org(1, 1);
    o.projects[0].keys[0].last_used_at = Some(NOW - 3 * DAY);
    let sim = start(o).await;
    let dir = tempfile::tempdir().unwrap();
    let s = sweeper(config(&sim, dir.path(), "", ""));
    sim.faults()
        .add(Fault::on_list_keys(PROJECT).respond(FaultKind::OmitLastUsed));
    assert_eq!(
        sweep(&s, NOW).await.findings.len(),
        1,
        "400 days old: warned"
    );
    let state = dir.path().join("state.db");
    let decision = crate::support::state_file::audit_records(&state)
        .into_iter()
        .find(|r| r["kind"] == "decision" && r["key_id"] == "key_00")
        .expect("the finding's decision record");
    assert_eq!(decision["inputs"]["last_used_unknown"], true, "{decision}");
    assert!(
        decision["inputs"].get("last_used_at").is_none(),
        "{decision}"
    );
    let stored = |state: &std::path::Path| -> serde_json::Value {
        let conn = rusqlite::Connection::open(state).unwrap();
        let data: String = conn
            .query_row(
                "SELECT data FROM findings WHERE key_id = 'key_00'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        serde_json::from_str(&data).unwrap()
    };
    assert_eq!(stored(&state)["last_used_unknown"], true);
    sim.faults().clear();
    sweep(&s, NOW + DAY).await;
    let f = stored(&state);
    assert_eq!(f["last_used_at"], NOW - 3 * DAY, "{f}");
    assert!(f.get("last_used_unknown").is_none(), "{f}");
}

// ---- row 1: ids, not names ------------------------------------------------------------------

/// Two projects: `proj_k` (its keys due) is exempted by id, and `proj_x`, whose owner named it
/// "proj_k" to ride on that exemption. Only the real `proj_k` is exempted.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_named_after_an_exempted_project_id_is_not_exempted() {
    let mut o = org(1, 1);
    let mut other = o.projects[0].clone();
    other.id = "proj_x".into();
    other.name = Some(PROJECT.into());
    other.keys[0].id = "key_x".into();
    o.projects.push(other);
    let sim = start(o).await;
    let dir = tempfile::tempdir().unwrap();
    let exemption =
        format!("\n[[exemptions]]\nproject = \"{PROJECT}\"\nreason = \"break-glass project\"\n");
    let s = sweeper(config(&sim, dir.path(), "", &exemption));
    sweep(&s, NOW).await;
    let r = sweep(&s, NOW + 8 * DAY).await;
    assert!(
        sim.key_exists(PROJECT, "key_00"),
        "the exempted project's key stays"
    );
    assert!(
        !sim.key_exists("proj_x", "key_x"),
        "a project named like an exempted id is not exempted: {:?}",
        r.revocations
    );
}

/// `check-config` (the real binary) warns about every selector that matches names members
/// control, naming the configuration key, and says nothing about id selectors.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_warns_about_selectors_that_match_names_members_control() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keysweep.toml");
    std::fs::write(
        &file,
        format!(
            r#"[[organizations]]
name = "acme"
base_url = "http://127.0.0.1:9/v1"
admin_key_env = "{KEY_ENV}"
projects = ["proj_a", "payments-*"]
exclude_projects = ["sandbox"]

[[policies]]
name = "p"
max_age = "90d"
match = {{ projects = ["proj_a"], key_name = ["ci-*"] }}

[[exemptions]]
key_name = "break-glass-*"
reason = "emergency"

[[exemptions]]
key_id = "key_abc"
reason = "by id"

[[exemptions]]
project = "proj_b"
reason = "by id"
"#
        ),
    )
    .unwrap();
    let (status, out, err) = crate::support::process::run_to_end(
        &["check-config", "--config", file.to_str().unwrap()],
        &[(KEY_ENV, ADMIN_KEY)],
    )
    .await;
    assert!(status.success(), "{out}\n{err}");
    let all = format!("{out}\n{err}");
    for key in [
        "organizations[0].projects: \\\"payments-*\\\"",
        "organizations[0].exclude_projects",
        "policies[0].match.key_name",
        "exemptions[0].key_name",
    ] {
        assert!(all.contains(key), "no warning for {key}:\n{all}");
    }
    for quiet in [
        "\\\"proj_a\\\"",
        "exemptions[1]",
        "exemptions[2]",
        "policies[0].match.projects",
    ] {
        assert!(
            !all.contains(quiet),
            "an id selector was warned about ({quiet}):\n{all}"
        );
    }
}

// ---- row 9: a cap per channel and sweep -----------------------------------------------------

/// 60 keys break a policy routed to PagerDuty: the receiver gets 50 events and ONE summary
/// that lists the other 10; no finding is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn sixty_findings_reach_pagerduty_as_fifty_events_and_one_summary_of_the_rest() {
    const N: usize = 60;
    let sim = start(org(N, 3)).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let channels = format!(
        r#"
[[channels]]
name = "pd"
type = "pagerduty"
routing_key_env = "{PD_KEY_ENV}"
url = "{url}"

[[routes]]
projects = ["{PROJECT}"]
channels = ["pd"]
"#,
        url = rx.url("/pd/enqueue"),
    );
    let s = sweeper(config(&sim, dir.path(), "", &channels));
    let r = sweep(&s, NOW).await;
    assert_eq!(r.findings.len(), N);
    let got = rx.requests("/pd");
    assert_eq!(got.len(), 51, "50 events and one summary");
    let mut keys = std::collections::BTreeSet::new();
    let mut summaries = 0;
    for req in &got {
        let body = req.json();
        if body["payload"]["class"] == "overflow" {
            summaries += 1;
            let listed = body["payload"]["custom_details"]["findings"]
                .as_array()
                .unwrap();
            assert_eq!(listed.len(), N - 50);
            for f in listed {
                keys.insert(f["key_id"].as_str().unwrap().to_string());
            }
        } else {
            let k = body["payload"]["custom_details"]["key_id"]
                .as_str()
                .unwrap();
            keys.insert(k.to_string());
        }
    }
    assert_eq!(summaries, 1);
    assert_eq!(keys.len(), N, "every finding is in exactly one message");
}

/// Over the cap, PagerDuty gets one overflow event that stays within PagerDuty's 512 KB (the
/// 100 earliest deadlines listed, the rest counted), and every resolve goes out uncapped: the
/// revoked keys' incidents are closed, none is folded into a trigger that would stay open.
#[tokio::test(flavor = "multi_thread")]
async fn pagerduty_overflow_is_bounded_and_resolves_are_never_capped() {
    const N: usize = 160;
    let sim = start(org(N, 3)).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let channels = format!(
        "\n[[channels]]\nname = \"pd\"\ntype = \"pagerduty\"\nrouting_key_env = \"{PD_KEY_ENV}\"\n\
         url = \"{url}\"\n\n[[routes]]\nprojects = [\"{PROJECT}\"]\nchannels = [\"pd\"]\n",
        url = rx.url("/pd/enqueue"),
    );
    let s = sweeper(config(&sim, dir.path(), "", &channels));
    sweep(&s, NOW).await;
    let got = rx.requests("/pd");
    assert_eq!(got.len(), 51, "50 events and one summary");
    let overflow: Vec<_> = (got.iter())
        .filter(|r| r.json()["payload"]["class"] == "overflow")
        .collect();
    assert_eq!(overflow.len(), 1);
    let details = &overflow[0].json()["payload"]["custom_details"];
    assert_eq!(details["count"], N - 50);
    assert_eq!(details["not_listed"], N - 50 - 100);
    assert_eq!(details["findings"].as_array().unwrap().len(), 100);
    assert!(
        overflow[0].body.len() < 512 * 1024,
        "{}",
        overflow[0].body.len()
    );

    let r = sweep(&s, NOW + 8 * DAY).await;
    assert_eq!(r.revocations.iter().filter(|r| r.deleted()).count(), N);
    let resolves = (rx.requests("/pd").iter())
        .filter(|r| r.json()["event_action"] == "resolve")
        .count();
    assert_eq!(resolves, N, "every revoked key's incident is resolved");
}

// ---- row 14: owner mail only to owners with access ------------------------------------------

/// Two owners; one has lost access to the project. Owner mail (real SMTP) reaches only the one
/// with access; the other's keys go to `owner_fallback` (a real webhook receiver).
#[tokio::test(flavor = "multi_thread")]
async fn owner_mail_skips_owners_who_lost_project_access_and_their_keys_go_to_the_fallback() {
    let mut o = org(4, 2);
    o.projects[0].members[1].access = SimAccess::Inactive;
    let sim = start(o).await;
    let pki = TestPki::new();
    let smtp = smtp_server::start(&pki, 0, "hn-mailer", "hn-Pa55");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"mode = "dry-run"
state_path = "{state}"
owner_fallback = ["fallback"]

[[organizations]]
name = "acme"
base_url = "{base}"
admin_key_env = "{KEY_ENV}"

[[policies]]
name = "max-age"
max_age = "90d"
action = "revoke"
notify = ["mail"]

[[channels]]
name = "mail"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "starttls"
smtp_ca_file = "{ca}"
smtp_username_env = "KS_HN_SMTP_USER"
smtp_password_env = "KS_HN_SMTP_PASSWORD"
from = "keysweep <keysweep@example.com>"
owner = true

[[channels]]
name = "fallback"
type = "webhook"
url = "{hook}"
secret_env = "KS_HN_WEBHOOK_SECRET"
"#,
        state = dir.path().join("state.db").display(),
        base = sim.base_url(),
        port = smtp.port,
        ca = pki.ca_pem.display(),
        hook = rx.url("/fallback"),
    );
    let secret = whsec(b"hardening-names-webhook-key-0001");
    let config = config_from_toml(
        &text,
        &[
            (KEY_ENV, ADMIN_KEY),
            ("KS_HN_SMTP_USER", "hn-mailer"),
            ("KS_HN_SMTP_PASSWORD", "hn-Pa55"),
            ("KS_HN_WEBHOOK_SECRET", secret.as_str()),
        ],
    );
    let s = sweeper(config);
    let r = sweep(&s, NOW).await;
    assert_eq!(r.findings.len(), 4);

    let mails = smtp.messages();
    let to: Vec<&String> = mails.iter().flat_map(|m| m.to.iter()).collect();
    assert!(to.iter().any(|t| t.contains("user0@example.com")), "{to:?}");
    assert!(
        !to.iter().any(|t| t.contains("user1@example.com")),
        "mail to an owner without access: {to:?}"
    );
    let fallback: Vec<String> = rx
        .requests("/fallback")
        .iter()
        .flat_map(|r| {
            r.json()["notices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["key_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        fallback,
        vec!["key_01", "key_03"],
        "the fallback gets their keys"
    );
}

/// A webhook channel with `max_messages_per_sweep = 1` gets two kinds of notice in one sweep (a
/// final notice and a new key's warning): the first message, then ONE summary
/// (`keysweep.notices.overflow`) that lists the notices of the other.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_over_its_cap_gets_one_summary_of_the_rest() {
    let sim = start(org(1, 1)).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let channels = format!(
        r#"
[[channels]]
name = "hook"
type = "webhook"
url = "{url}"
secret_env = "KS_HN_HOOK_SECRET"
max_messages_per_sweep = 1

[[routes]]
projects = ["{PROJECT}"]
channels = ["hook"]
"#,
        url = rx.url("/hook"),
    );
    let text = config_text(&sim, dir.path(), &channels);
    let secret = whsec(b"hardening-names-webhook-key-0002");
    let s = sweeper(config_from_toml(
        &text,
        &[(KEY_ENV, ADMIN_KEY), ("KS_HN_HOOK_SECRET", secret.as_str())],
    ));
    sweep(&s, NOW).await;
    assert_eq!(rx.requests("/hook").len(), 1, "the first sweep's warning");
    let mut fresh = org(2, 1).projects[0].keys[1].clone();
    fresh.id = "key_new".into();
    sim.add_key(PROJECT, fresh).unwrap();
    sweep(&s, NOW + 6 * DAY + 3600).await;
    let got: Vec<serde_json::Value> = rx.requests("/hook").iter().map(|r| r.json()).collect();
    assert_eq!(got.len(), 3, "one message and one summary: {got:?}");
    let types: Vec<&str> = got[1..]
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(types[1], "keysweep.notices.overflow", "{types:?}");
    let listed: Vec<&str> = got[1..]
        .iter()
        .flat_map(|v| v["notices"].as_array().unwrap())
        .map(|n| n["key_id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&"key_00") && listed.contains(&"key_new"),
        "{listed:?}"
    );
}
