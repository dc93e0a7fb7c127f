//! Issue 17, what rotation still lacked, through the real binary against the simulator: the new
//! key gets the old key's scopes as the audit log tells them (never All permissions unless the
//! policy says `scopes = []`); rotations count against every cap, the per-project percentage
//! included; a SIGTERM to the daemon while a sink runs lets the hand-over finish and the old key
//! get its expiry; an old key's expiry that fails after the sink confirmed is set by the next
//! sweep at the promised time; PagerDuty resolves, never pages, on a rotated notice; a warning's
//! "rotates at" time is the planner's (the earliest deadline of the key's findings).
//!
//! These tests must never print a minted secret, and never assert on how long anything took.

use keysweep::sim::{Fault, FaultKind, FaultRoute, SimOrg};
use keysweep::state::Store;

use crate::rotate::{
    ADMIN_KEY, ENFORCE_SA, FILE_SINK, KEY_ENV, OLD, PROJECT, SCOPES, World, due, first_warning,
    world_of, world_with,
};
use crate::support::net::http;
use crate::support::process::{combined, keysweep, output};
use crate::support::receivers::Receiver;
use crate::support::secrets::{assert_no_secret, whsec};
use crate::support::time::{DAY, rfc3339, unix_now};

/// The server times a write itself: an expiry lands within a few seconds of the target.
const SLACK: i64 = 10;

/// Reads the audit log back far enough to see the old key's creation (200 days ago).
const BACKFILL: &str = "[audit_log]\nbackfill = \"365d\"\n";

/// Gives the old key `scopes` (the simulator's log tells them in its creation event).
fn old_scopes(scopes: &[&str]) -> impl FnOnce(&mut SimOrg) + use<> {
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_string()).collect();
    move |org: &mut SimOrg| {
        for p in &mut org.projects {
            for k in p.keys.iter_mut().filter(|k| k.id == OLD) {
                k.scopes.clone_from(&scopes);
            }
        }
    }
}

/// A key's scopes as the simulator stores them (`GET /_sim/projects/{p}/api_keys/{k}`).
async fn stored_scopes(w: &World, key: &str) -> Vec<String> {
    let base = w.sim.base_url().trim_end_matches("/v1").to_string();
    let url = format!("{base}/_sim/projects/{PROJECT}/api_keys/{key}");
    let v: serde_json::Value = http().get(url).send().await.unwrap().json().await.unwrap();
    serde_json::from_value(v["scopes"].clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

fn new_key(w: &World) -> keysweep::sim::SimKeySnapshot {
    w.sa_keys()
        .into_iter()
        .find(|k| k.id != OLD)
        .expect("no new key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_key_gets_the_old_keys_scopes_from_the_audit_log_not_the_policys() {
    let logged = ["api.model.read", "api.files.write"];
    let policy = "scopes = [\"api.responses.write\"]";
    let w = world_of(old_scopes(&logged), BACKFILL, FILE_SINK, policy, ENFORCE_SA).await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let new = new_key(&w);
    assert_eq!(stored_scopes(&w, &new.id).await, logged, "{out}");
    assert_eq!(stored_scopes(&w, OLD).await, logged);
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "{out}"
    );
    let secret = std::fs::read_to_string(w.sink_file()).unwrap();
    assert_no_secret("keysweep output", &out, &[secret.trim()]);
    w.assert_state_clean(secret.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_all_permissions_key_is_never_rotated_into_all_permissions_by_default() {
    // The log says All permissions (`[]`) and the policy has no scopes: no rotation, an alert.
    let w = world_of(old_scopes(&[]), BACKFILL, FILE_SINK, "", ENFORCE_SA).await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 0, "{out}");
    assert!(
        out.contains("not rotated: the policy configures no scopes and the audit log says the old key has All permissions"),
        "{out}"
    );
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None, "{out}");

    // The same with the policy's scopes: those, never All permissions.
    let w = world_of(old_scopes(&[]), BACKFILL, FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let new = new_key(&w);
    assert_eq!(
        stored_scopes(&w, &new.id).await,
        ["api.model.read"],
        "{out}"
    );

    // `scopes = []` says All permissions explicitly: the new key has them.
    let w = world_of(
        old_scopes(&[]),
        BACKFILL,
        FILE_SINK,
        "scopes = []",
        ENFORCE_SA,
    )
    .await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let new = new_key(&w);
    assert!(stored_scopes(&w, &new.id).await.is_empty(), "{out}");
}

/// Answers every update of the old key 500: its expiry cannot be set after the sink confirmed.
fn fail_old_key_updates(w: &World) -> keysweep::sim::FaultId {
    w.sim.faults().add(
        Fault::on(FaultRoute::UpdateKey)
            .project(PROJECT)
            .object(OLD)
            .times(50)
            .respond(FaultKind::Status(500)),
    )
}

/// The old key's expiry fails after the sink confirmed (500 on every update): the row stays
/// `delivered`, an alert says so, and the next sweep sets the expiry at the promised time
/// without a second mint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_old_key_expiry_after_the_sink_confirmed_is_set_by_the_next_sweep_at_the_promised_time()
 {
    let w = world_with("", FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let fault = fail_old_key_updates(&w);
    let before = unix_now();
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    assert!(
        w.sim.faults().hits(fault) > 0,
        "the update was never tried:\n{out}"
    );
    let secret = std::fs::read_to_string(w.sink_file()).unwrap();
    let secret = secret.trim().to_string();
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None, "{out}");
    assert!(
        out.contains("setting the old key's expiry failed"),
        "no alert:\n{out}"
    );
    let rows = w.rotation_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "delivered", "{out}");
    let promised = rows[0].old_expires_at.expect("no promised expiry");
    assert!(
        promised >= before + DAY && promised <= unix_now() + DAY,
        "promised {promised}"
    );
    assert_eq!(w.sa_keys().len(), 2, "the new key must stay: {out}");

    w.sim.faults().clear();
    // The next sweep is a day later: the slot the rotation took when it began has left the
    // rolling window, so the owed expiry is counted again (never refused for the cap).
    let retry = due(&w) + DAY + 600;
    let out = w.run(retry).await;
    assert_eq!(w.mints(), 1, "a second mint:\n{out}");
    let at = w.sim.key(PROJECT, OLD).unwrap().expires_at;
    let at = at.expect("the old key still has no expiry");
    assert!(
        (at - promised).abs() <= SLACK,
        "expiry {at}, promised {promised}\n{out}"
    );
    assert_eq!(w.rotation_rows()[0].status, "done");
    assert!(out.contains("rotated: new key"), "{out}");
    assert_no_secret("keysweep output", &out, &[secret.as_str()]);
    let store = keysweep::state::Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    let counted = store
        .with_conn(|c| keysweep::state::revocations::revocations_since(c, retry - DAY))
        .unwrap();
    assert_eq!(counted, 1, "the owed expiry in the retry's day");
    drop(store);
    w.assert_state_clean(&secret);
}

/// The old key's expiry fails after the sink confirmed, then the rotate policy is removed (its
/// rotations failing, say): the rotation begun under it is still settled. The next sweep sets
/// the owed expiry at the promised time and announces the rotation, to the key's owner route
/// too (from its stored finding, since no rotate policy plans it any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_owed_an_expiry_is_settled_after_its_policy_is_removed() {
    let rx = Receiver::start().await;
    let mut w = world_with(&channels(&rx), FILE_SINK, SCOPES, ENFORCE_SA).await;
    with_channel_secrets(&mut w);
    first_warning(&w).await;
    fail_old_key_updates(&w);
    let out = w.run(due(&w)).await;
    let rows = w.rotation_rows();
    assert_eq!(rows[0].status, "delivered", "{out}");
    let promised = rows[0].old_expires_at.unwrap();
    w.sim.faults().clear();
    let text = std::fs::read_to_string(&w.config).unwrap();
    let rotate = "action = \"rotate\"\nsink = \"store\"\noverlap = \"24h\"\n";
    assert!(text.contains(rotate) && text.contains(SCOPES), "{text}");
    let text = (text.replace(rotate, "action = \"notify\"\n")).replace(SCOPES, "");
    std::fs::write(&w.config, text).unwrap();
    let out = w.run(due(&w) + DAY + 600).await;
    let at = w.sim.key(PROJECT, OLD).unwrap().expires_at;
    let at = at.unwrap_or_else(|| panic!("the owed expiry was not set:\n{out}"));
    assert!((at - promised).abs() <= SLACK, "{at} vs {promised}\n{out}");
    assert_eq!(w.rotation_rows()[0].status, "done", "{out}");
    assert_eq!(w.mints(), 1, "{out}");
    let rotated = notices(&rx, "keysweep.notices.rotated", "rotate-90d");
    assert_eq!(rotated.len(), 1, "{rotated:?}\n{out}");
}

/// Two due keys of one service account and a file sink, whose path names the account, not the
/// key: the first is rotated into the file, the second is not (rotating it would overwrite the
/// first one's new key, leaving it alive with nobody holding it); the re-check says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_takes_one_key_per_service_account() {
    let w = world_of(
        |o| {
            let p = o.projects.iter_mut().find(|p| p.id == PROJECT).unwrap();
            let mut twin = p.keys.iter().find(|k| k.id == OLD).unwrap().clone();
            twin.id = "key_rot_sa_twin".into();
            twin.name = "twin".into();
            p.keys.push(twin);
        },
        "",
        FILE_SINK,
        SCOPES,
        ENFORCE_SA,
    )
    .await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "both keys were rotated into one file:\n{out}");
    let rows = w.rotation_rows();
    assert_eq!(rows.len(), 1, "{out}");
    let rotated = rows[0].old_key_id.clone();
    let other = if rotated == OLD {
        "key_rot_sa_twin"
    } else {
        OLD
    };
    assert_eq!(w.sim.key(PROJECT, other).unwrap().expires_at, None, "{out}");
    let records = crate::support::state_file::audit_records(&w.dir.path().join("keysweep.db"));
    let said = records.iter().any(|r| {
        r["kind"] == "skipped"
            && r["key_id"] == other
            && (r["message"].as_str()).is_some_and(|m| m.contains("one file per service account"))
    });
    assert!(said, "no skipped record for {other}:\n{out}");
    // The file still holds the new key: its last four characters match the new key's.
    let secret = std::fs::read_to_string(w.sink_file()).unwrap();
    let new = rows[0].new_key_id.clone().unwrap();
    let new = w.sim.key(PROJECT, &new).unwrap();
    assert!(
        new.redacted_value
            .ends_with(&secret.trim()[secret.trim().len() - 4..])
    );
}

/// A finished rotation promised that the old key stops at the end of the overlap. Someone then
/// removes that expiry in the dashboard: while the caps allow no write the set-back waits like
/// any write; then the next sweep sets it back (an alert says so) instead of trusting the
/// finished rotation for good, and mints nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_key_expiry_removed_after_its_rotation_is_set_back() {
    let w = world_with("", FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    assert_eq!(w.rotation_rows()[0].status, "done", "{out}");
    let promised = w.rotation_rows()[0].old_expires_at.unwrap();
    w.sim.set_expires_at(PROJECT, OLD, None).unwrap();
    w.cap_writes_per_run(0);
    let out = w.run(due(&w) + 600).await;
    assert_eq!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at,
        None,
        "past the cap:\n{out}"
    );
    w.cap_writes_per_run(100);
    let out = w.run(due(&w) + 900).await;
    let at = w.sim.key(PROJECT, OLD).unwrap().expires_at;
    let at = at.expect("the old key's expiry was not set back");
    assert!(
        (at - promised).abs() <= SLACK,
        "expiry {at}, promised {promised}\n{out}"
    );
    assert!(out.contains("set back"), "no alert:\n{out}");
    assert_eq!(w.mints(), 1, "{out}");
    // In place again: the next sweep sets nothing back.
    let out = w.run(due(&w) + 1200).await;
    assert!(!out.contains("set back"), "{out}");
}

/// After a finished rotation a person deletes the new key (it did not work) and removes the
/// old key's expiry to keep the service running. keysweep does not set that expiry back: the
/// old key would end with no successor. The rotation is abandoned (the audit log says why), and
/// the next sweep rotates the key afresh, as the policy says, instead of leaving it unrotated
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_key_whose_successor_was_deleted_keeps_the_expiry_a_person_gave_it() {
    let w = world_with("", FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    let row = w.rotation_rows()[0].clone();
    assert_eq!(row.status, "done", "{out}");
    let new_id = row.new_key_id.clone().unwrap();
    w.sim.remove_key(PROJECT, &new_id).unwrap();
    w.sim.set_expires_at(PROJECT, OLD, None).unwrap();
    let out = w.run(due(&w) + 900).await;
    assert_eq!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at,
        None,
        "set back with no successor:\n{out}"
    );
    assert!(!out.contains("set back: it stops working"), "{out}");
    let store = Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    let rows = store
        .with_conn(|c| keysweep::state::audit::list(c, None))
        .unwrap();
    assert!(
        rows.iter()
            .any(|r| r.record.message.contains("rotation abandoned")
                && r.record.message.contains(&new_id)),
        "the reason is not in the audit log:\n{out}"
    );
    assert_eq!(w.rotation_rows()[0].status, "abandoned", "{out}");
    assert!(out.contains("rotates the key afresh"), "no alert:\n{out}");
    assert_eq!(w.mints(), 1, "{out}");
    drop(store);
    let out = w.run(due(&w) + 1200).await;
    assert_eq!(w.mints(), 2, "not rotated afresh:\n{out}");
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["abandoned", "done"], "{out}");
}

/// The old key's expiry is set, then its answer never comes and the run is killed: the intent
/// has no outcome. The next run answers it from a read of the key (the expiry is in place)
/// before settling the rotation, so the audit log says the write happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_key_expiry_cut_short_by_a_crash_is_answered_in_the_audit_log() {
    let w = world_with("", FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let fault = w.sim.faults().add(
        Fault::on(FaultRoute::UpdateKey)
            .project(PROJECT)
            .object(OLD)
            .once()
            .after_effect()
            .respond(FaultKind::Delay(std::time::Duration::from_secs(120))),
    );
    let mut child = w.cmd(due(&w)).spawn().unwrap();
    crate::support::wait::eventually("the update", || w.sim.faults().hits(fault) > 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some());
    let db = w.dir.path().join("keysweep.db");
    let unmatched = || {
        let store = Store::open(&db).unwrap();
        (store.with_conn(keysweep::state::audit::unmatched_intents)).unwrap()
    };
    let pending = unmatched();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].record.inputs["write"], "rotate_expire_old");

    w.sim.faults().clear();
    let out = w.run(due(&w) + 600).await;
    assert!(unmatched().is_empty(), "still unanswered:\n{out}");
    let store = Store::open(&db).unwrap();
    let rows = store
        .with_conn(|c| keysweep::state::audit::list(c, None))
        .unwrap();
    let answer = rows
        .iter()
        .find(|r| r.record.refers_to == Some(pending[0].seq))
        .expect("an answer to the intent");
    assert_eq!(
        answer.record.response["took_effect"], true,
        "{:?}",
        answer.record
    );
    assert_eq!(w.rotation_rows()[0].status, "done", "{out}");
    assert_eq!(w.mints(), 1, "{out}");
}

/// The old key's expiry is owed (500 on every update after the sink confirmed) and its promised
/// time passes before the next sweep (keysweep down longer than the overlap): a target in the
/// past cannot be sent, so the old key ends as soon as it can instead of living on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_old_key_expiry_whose_time_has_passed_ends_the_key_at_once() {
    let w = world_with("", FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    fail_old_key_updates(&w);
    let out = w.run(due(&w)).await;
    assert_eq!(w.rotation_rows()[0].status, "delivered", "{out}");
    let promised = w.rotation_rows()[0].old_expires_at.unwrap();
    w.sim.faults().clear();
    // Two days pass on the API's clock: the promised time is behind it.
    w.sim.advance_clock(2 * DAY);
    assert!(w.sim.now() > promised);
    let out = w.run(due(&w) + 2 * DAY).await;
    assert_eq!(w.mints(), 1, "a second mint:\n{out}");
    let at = w.sim.key(PROJECT, OLD).unwrap().expires_at;
    let at = at.expect("the old key still has no expiry");
    let now = w.sim.now();
    assert!(
        at > now && at <= now + 900 + SLACK,
        "expiry {at}, now {now}\n{out}"
    );
    assert_eq!(w.rotation_rows()[0].status, "done", "{out}");
}

/// An exec sink that takes the key, says so (`dir/got`), then holds on like a slow secret store
/// until the test releases it (`dir/release`), and confirms.
fn slow_sink(dir: &std::path::Path) -> String {
    let body = format!(
        "read -r k\nprintf '%s' \"$k\" > {d}/got.tmp\nmv {d}/got.tmp {d}/got\n\
         while [ ! -e {d}/release ]; do sleep 0.1; done\nexit 0\n",
        d = dir.display()
    );
    crate::rotate::exec_sink(&dir.join("slow-store.sh"), &body, "60s")
}

/// A world for the daemon (`keysweep run`): one sweep at start, `grace` to shut down, the
/// rotation due now by the wall clock (the keys were warned 6 days and 2 hours ago).
async fn daemon_world(tweak: impl FnOnce(&mut SimOrg), grace: &str, sink: &str) -> World {
    let port = crate::support::net::free_port();
    let top = format!(
        "schedule = \"0 0 1 1 *\"\nrun_on_start = true\nshutdown_grace = \"{grace}\"\n\n[server]\n\
         listen = \"127.0.0.1:{port}\"\n"
    );
    let w = world_of(tweak, &top, sink, SCOPES, ENFORCE_SA).await;
    w.run(unix_now() - 6 * DAY - 7200).await;
    assert_eq!(w.mints(), 0);
    w
}

fn daemon(w: &World) -> crate::support::process::Proc {
    crate::support::process::Proc::spawn(crate::support::process::keysweep(
        &["--config", w.config.to_str().unwrap(), "run"],
        &[(KEY_ENV, ADMIN_KEY)],
    ))
}

/// SIGTERM while the first of two due rotations is in its sink, the grace long enough for
/// it: the hand-over finishes and is announced in its sweep, no second mint starts, and the
/// daemon exits 0; the next run rotates the other key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_starts_no_new_mint_and_the_hand_over_in_flight_finishes_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let w = daemon_world(second_old_key, "30s", &slow_sink(dir.path())).await;
    let mut proc = daemon(&w);
    let got = dir.path().join("got");
    crate::support::wait::eventually("the sink to get the key", || got.exists()).await;
    proc.signal("-TERM");
    crate::support::wait::eventually("the shutdown to begin", || {
        proc.stderr().iter().any(|l| l.contains("shutting down"))
    })
    .await;
    std::fs::write(dir.path().join("release"), "").unwrap();
    let (status, _) = proc.wait().await;
    let log = format!("{:#?}{:#?}", proc.stdout(), proc.stderr());
    assert_eq!(status.code(), Some(0), "{log}");
    let secret = std::fs::read_to_string(&got).unwrap();
    proc.assert_no_secret(&[secret.as_str(), ADMIN_KEY]);
    assert_eq!(w.mints(), 1, "a new mint after SIGTERM:\n{log}");
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "{log}"
    );
    assert_eq!(w.sim.key(PROJECT, OLD2).unwrap().expires_at, None, "{log}");
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["done"], "{log}");

    let out = w.run(unix_now()).await;
    assert_eq!(w.mints(), 2, "{out}");
    assert!(
        w.sim.key(PROJECT, OLD2).unwrap().expires_at.is_some(),
        "{out}"
    );
}

/// The daemon gets SIGTERM while an exec sink holds the new key, and the sink confirms only
/// after the shutdown grace (1 s) ran out and the daemon dropped the sweep: the hand-over
/// finishes, the old key gets now + overlap, no alert and no orphan, and the daemon exits 0.
/// The next sweep announces the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_sink_runs_lets_the_hand_over_finish_and_the_old_key_expire() {
    let dir = tempfile::tempdir().unwrap();
    let w = daemon_world(|_| {}, "1s", &slow_sink(dir.path())).await;
    let mut proc = daemon(&w);
    let got = dir.path().join("got");
    crate::support::wait::eventually("the sink to get the key", || got.exists()).await;
    let sent = unix_now();
    proc.signal("-TERM");
    // The grace runs out while the sink still holds on: the daemon drops the sweep.
    crate::support::wait::eventually("the grace to run out", || {
        proc.stderr()
            .iter()
            .any(|l| l.contains("shutdown grace expired"))
    })
    .await;
    std::fs::write(dir.path().join("release"), "").unwrap();
    let (status, _) = proc.wait().await;
    let log = format!("{:#?}{:#?}", proc.stdout(), proc.stderr());
    assert_eq!(status.code(), Some(0), "{log}");
    let secret = std::fs::read_to_string(&got).unwrap();
    proc.assert_no_secret(&[secret.as_str(), ADMIN_KEY]);
    let terminated = unix_now();

    assert_eq!(w.mints(), 1, "{log}");
    let keys = w.sa_keys();
    assert_eq!(
        keys.len(),
        2,
        "an orphan, or the new key deleted: {keys:?}\n{log}"
    );
    let new = new_key(&w);
    assert!(new.redacted_value.ends_with(&secret[secret.len() - 4..]));
    let at = w.sim.key(PROJECT, OLD).unwrap().expires_at;
    let at = at.expect("the old key got no expiry");
    assert!(
        at >= sent + DAY - SLACK && at <= terminated + DAY + SLACK,
        "old key expires at {at}, SIGTERM at {terminated}\n{log}"
    );
    assert!(!log.contains("a person must confirm"), "{log}");
    assert!(!log.contains("rotation failed"), "{log}");
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["unannounced"], "{log}");

    // The next sweep announces it, mints nothing, and settles the row: even a dry run, since
    // the rotation really happened and announcing writes nothing to the API.
    let mut next = w.cmd(unix_now());
    next.arg("--dry-run");
    let out = output(next).await;
    let out = combined(&out);
    assert_no_secret("keysweep output", &out, &[ADMIN_KEY]);
    assert!(out.contains("dry-run"), "{out}");
    assert_eq!(w.mints(), 1, "{out}");
    assert!(out.contains("rotated: new key"), "{out}");
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["done"], "{out}");
    assert_no_secret("keysweep output", &out, &[secret.as_str()]);
    w.assert_state_clean(&secret);
}

const HOOK_ENV: &str = "KEYSWEEP_IT_ROTATE_MORE_HOOK";
const PD_ENV: &str = "KEYSWEEP_IT_ROTATE_MORE_PD";

/// `top` for a world whose `owner_fallback` (a service-account key's notice route) is a webhook
/// and a PagerDuty channel on `rx`, and whose ops channel is the webhook.
fn channels(rx: &Receiver) -> String {
    format!(
        "owner_fallback = [\"hook\", \"pd\"]\nops_channels = [\"hook\"]\n\n[[channels]]\nname = \
         \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\nsecret_env = \"{HOOK_ENV}\"\n\n[[channels]]\n\
         name = \"pd\"\ntype = \"pagerduty\"\nrouting_key_env = \"{PD_ENV}\"\nurl = \"{}\"\n",
        rx.url("/hook"),
        rx.url("/pd/enqueue")
    )
}

/// An e-mail channel that mails owners, on a port where no server listens.
const OWNER_MAIL: &str = "[[channels]]\nname = \"mail\"\ntype = \"email\"\nsmtp_host = \
                          \"127.0.0.1\"\nsmtp_port = 9\nsmtp_tls = \"none\"\nfrom = \
                          \"keysweep@example.com\"\nowner = true\n";

fn with_channel_secrets(w: &mut World) {
    w.env
        .push((HOOK_ENV.into(), whsec(b"rotate-more-webhook-key-00000001")));
    w.env
        .push((PD_ENV.into(), "R0UT1NGKEYROTATEMORE000000000000".into()));
}

/// The webhook notices of `kind` about the old key under `policy`.
fn notices(rx: &Receiver, kind: &str, policy: &str) -> Vec<serde_json::Value> {
    rx.requests("/hook")
        .iter()
        .map(|r| r.json())
        .filter(|m| m["type"] == kind)
        .flat_map(|m| m["notices"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["key_id"] == OLD && n["policy"] == policy)
        .collect()
}

/// A key under a `rotate` policy and an `expire` policy with an earlier deadline: the warning
/// says the new key is minted `overlap` before the EARLIER deadline and the key ends then, as
/// `scan` and the planner say, and the rotation happens then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warnings_rotation_time_is_the_earliest_deadline_of_the_keys_findings_as_scan_says() {
    let rx = Receiver::start().await;
    let policies = format!(
        "{SCOPES}\n\n[[policies]]\nname = \"expire-60d\"\nmax_age = \"60d\"\naction = \
         \"expire\"\nwarn_before = \"3d\"\nfinal_notice = \"1d\"\n"
    );
    let mut w = world_with(&channels(&rx), FILE_SINK, &policies, ENFORCE_SA).await;
    with_channel_secrets(&mut w);
    let out = w.run(w.base).await;
    let earliest = w.base + 3 * DAY;
    let warnings = notices(&rx, "keysweep.notices.warning", "rotate-90d");
    assert_eq!(warnings.len(), 1, "{warnings:?}\n{out}");
    let status = warnings[0]["status"].as_str().unwrap();
    assert!(status.contains("will be rotated"), "{status}");
    assert!(
        status.contains(&format!("at {} keysweep mints", rfc3339(earliest - DAY))),
        "{status}"
    );
    assert!(status.contains(&rfc3339(earliest)), "{status}");
    assert!(!status.contains(&rfc3339(w.base + 6 * DAY)), "{status}");
    // The expire policy's own warning on that key announces the rotation too: the rotation
    // replaces its expiry, so "the expiry is set to …" would be a write that never happens.
    let expire = notices(&rx, "keysweep.notices.warning", "expire-60d");
    assert_eq!(expire.len(), 1, "{expire:?}\n{out}");
    let status = expire[0]["status"].as_str().unwrap();
    assert!(status.contains("will be rotated"), "{status}");
    assert!(!status.contains("expiry is set"), "{status}");
    assert_eq!(expire[0]["verdict"], warnings[0]["verdict"], "{expire:?}");

    // `scan` says the same time.
    let mut scan = keysweep(
        &[
            "--config",
            w.config.to_str().unwrap(),
            "scan",
            "--format",
            "json",
            "--now",
            &rfc3339(w.base + 3600),
        ],
        &[(KEY_ENV, ADMIN_KEY)],
    );
    scan.envs(w.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let scan = combined(&output(scan).await);
    assert!(
        scan.contains(&format!("rotate at {}", rfc3339(earliest - DAY))),
        "{scan}"
    );

    // And the rotation happens then.
    let out = w.run(earliest - DAY + 600).await;
    assert_eq!(w.mints(), 1, "{out}");
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "{out}"
    );
}

/// PagerDuty never pages for a rotation: the rotated notice resolves the finding's incident
/// under its dedup key (the warning triggered it), and no event says "Rotated".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_resolves_the_findings_incident_on_a_rotated_notice_and_never_pages() {
    let rx = Receiver::start().await;
    // PagerDuty is an ops channel too: the ops "rotated" announcement must not page either.
    let chans = channels(&rx).replace(
        "ops_channels = [\"hook\"]",
        "ops_channels = [\"hook\", \"pd\"]",
    );
    let mut w = world_with(&chans, FILE_SINK, SCOPES, ENFORCE_SA).await;
    with_channel_secrets(&mut w);
    first_warning(&w).await;
    let events = |rx: &Receiver| -> Vec<serde_json::Value> {
        rx.requests("/pd/enqueue")
            .iter()
            .map(|r| r.json())
            .collect()
    };
    let old_events = |rx: &Receiver| -> Vec<serde_json::Value> {
        events(rx)
            .into_iter()
            .filter(|e| e["dedup_key"].as_str().is_some_and(|k| k.contains(OLD)))
            .collect()
    };
    let warned = old_events(&rx);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["event_action"], "trigger");
    let dedup = warned[0]["dedup_key"].clone();

    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    // The webhook got the rotated notice: the same sweep's PagerDuty event is about it.
    let rotated = notices(&rx, "keysweep.notices.rotated", "rotate-90d");
    assert_eq!(rotated.len(), 1);
    // It says what keysweep did, not "notification only".
    assert_eq!(rotated[0]["verdict"], "rotate", "{rotated:?}");
    assert!(rotated[0]["withheld_by"].is_null(), "{rotated:?}");
    let after: Vec<serde_json::Value> = old_events(&rx).into_iter().skip(1).collect();
    assert!(
        after
            .iter()
            .any(|e| e["event_action"] == "resolve" && e["dedup_key"] == dedup),
        "no resolve under {dedup}: {after:?}\n{out}"
    );
    for e in events(&rx) {
        let text = e.to_string();
        assert!(
            !(e["event_action"] == "trigger" && text.contains("Rotated")),
            "paged for a rotation: {text}"
        );
        assert!(
            !text.contains("rotated: new key"),
            "paged for a rotation: {text}"
        );
    }
    // The other ops channel still hears of it, as a rotation, not as an expiry problem.
    let hook: Vec<String> = (rx.requests("/hook").iter())
        .map(|r| r.json().to_string())
        .filter(|t| t.contains("rotated: new key") && t.contains("\"alert\":\"rotation\""))
        .collect();
    assert_eq!(hook.len(), 1, "{hook:?}\n{out}");
    assert!(hook[0].contains("Rotation of key"), "{hook:?}");
}

const OLD2: &str = "key_rot_sa_old2";

/// A second key of the same service account, as old as the first.
fn second_old_key(org: &mut SimOrg) {
    for p in org.projects.iter_mut().filter(|p| p.id == PROJECT) {
        let mut k = p.keys.iter().find(|k| k.id == OLD).cloned().unwrap();
        k.id = OLD2.into();
        k.name = format!("{OLD2}-name");
        k.redacted_value = "sk-proj-****old2".into();
        p.keys.push(k);
    }
}

/// Two service-account keys due for rotation in one project of three keys under
/// `max_revocations_per_project_percent = 25` (one write per sweep): the first rotates, the
/// second is postponed by that cap — the owner is told so, the run and `scan` name the cap —
/// and the next sweep rotates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_count_against_the_per_project_percentage_cap_and_the_rest_is_postponed() {
    let rx = Receiver::start().await;
    let safety = format!("{ENFORCE_SA}\n");
    // An exec sink that stores each key by the key it replaces: a file sink holds one key per
    // service account, and would not take the second (`a_file_sink_takes_one_key_per_…`).
    let sink = "type = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \
                \"cat > \\\"$DIR/$KEYSWEEP_OLD_KEY_ID.key\\\"\"]\ntimeout = \"20s\"\n";
    let mut w = world_of(second_old_key, &channels(&rx), sink, SCOPES, &safety).await;
    with_channel_secrets(&mut w);
    let text = std::fs::read_to_string(&w.config).unwrap();
    let text = text.replace(
        "max_revocations_per_project_percent = 100",
        "max_revocations_per_project_percent = 25",
    );
    std::fs::write(&w.config, text).unwrap();
    first_warning(&w).await;

    // `scan` at the due time: one rotation goes ahead, the other waits for the cap.
    let mut scan = keysweep(
        &[
            "--config",
            w.config.to_str().unwrap(),
            "scan",
            "--format",
            "json",
            "--now",
            &rfc3339(due(&w)),
        ],
        &[(KEY_ENV, ADMIN_KEY)],
    );
    scan.envs(w.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let scan = combined(&output(scan).await);
    assert!(
        scan.contains("but safety.max_revocations_per_project_percent withholds it"),
        "{scan}"
    );

    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "{out}"
    );
    assert_eq!(w.sim.key(PROJECT, OLD2).unwrap().expires_at, None, "{out}");
    assert!(
        out.contains("withheld (safety.max_revocations_per_project_percent)"),
        "{out}"
    );
    // The owner is told (here by the final notice, due in the same sweep, which carries it).
    let postponed: Vec<serde_json::Value> = (rx.requests("/hook").iter())
        .map(|r| r.json())
        .filter(|m| {
            m["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("keysweep.notices."))
        })
        .flat_map(|m| m["notices"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["key_id"] == OLD2 && n["verdict"] == "postponed")
        .collect();
    assert_eq!(postponed.len(), 1, "{postponed:?}\n{out}");
    assert_eq!(
        postponed[0]["withheld_by"], "safety.max_revocations_per_project_percent",
        "{postponed:?}"
    );
    let status = postponed[0]["status"].as_str().unwrap_or_default();
    assert!(status.contains("postponed"), "{status}");

    // The next sweep: the cap allows one write again, and the first key's rotation is done.
    let out = w.run(due(&w) + 600).await;
    assert_eq!(w.mints(), 2, "{out}");
    assert!(
        w.sim.key(PROJECT, OLD2).unwrap().expires_at.is_some(),
        "{out}"
    );
}

/// A key keysweep minted was created, as the audit log says, by keysweep's admin key: its
/// notices go where the key it replaced had its go (that key's creator), not to the admin
/// key's owner nor past the person behind the service account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_keys_notices_go_to_the_creator_of_the_key_it_replaced() {
    let rx = Receiver::start().await;
    // The log read back far enough to know who created the 200-day-old key.
    // An e-mail channel that mails owners (its server absent: the mail waits in the outbox),
    // else nobody is told in person and no route is resolved.
    let top = format!(
        "{}\n{OWNER_MAIL}\n[audit_log]\nbackfill = \"3650d\"\n",
        channels(&rx)
    );
    // The webhook hears every notice of the policy, with the route the owner's copy took.
    let policy = format!("{SCOPES}\nnotify = [\"hook\", \"mail\"]");
    let mut w = world_with(&top, FILE_SINK, &policy, ENFORCE_SA).await;
    with_channel_secrets(&mut w);
    first_warning(&w).await;
    let old_route =
        notices(&rx, "keysweep.notices.warning", "rotate-90d")[0]["owner_route"].clone();
    assert_eq!(old_route["to"], "person", "{old_route}");
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let rows = w.rotation_rows();
    let new_key = rows[0].new_key_id.clone().unwrap();
    // A sweep after the old key ended closes its finding: from then on the sweep's findings
    // no longer name it, and only the chain back from the new key does.
    let out = w.run(w.base + 30 * DAY).await;
    let store = Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    let findings = store
        .with_conn(keysweep::state::findings::all_findings)
        .unwrap();
    drop(store);
    let old = (findings.iter()).find(|f| f.id.key_id == OLD);
    assert!(
        old.is_some_and(|f| !f.stage.is_open()),
        "the old key's finding is still open: {old:?}\n{out}"
    );

    // The new key is old enough for its own warning 100 days later.
    let out = w.run(w.base + 100 * DAY).await;
    let warned: Vec<serde_json::Value> = (rx.requests("/hook").iter())
        .map(|r| r.json())
        .filter(|m| m["type"] == "keysweep.notices.warning")
        .flat_map(|m| m["notices"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["key_id"] == new_key.as_str())
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}\n{out}");
    assert_eq!(warned[0]["owner_route"], old_route, "{warned:?}");
}

/// A service-account key's DELETE that went through while keysweep was killed is settled by the
/// next run's reconcile phase, whose `revoked` notice goes where the key's warning went (its
/// creator, in person), not only to `owner_fallback`: the reconcile phase reads the stored
/// creator and the project's users first, as a sweep's notices are routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciled_revocation_of_a_service_account_key_is_told_to_its_creator() {
    let rx = Receiver::start().await;
    let top = format!(
        "{}\n{OWNER_MAIL}\n[audit_log]\nbackfill = \"3650d\"\n\n[[policies]]\nname = \
         \"revoke-180d\"\nmax_age = \"180d\"\naction = \"revoke\"\nwarn_before = \"7d\"\nnotify = \
         [\"hook\", \"mail\"]\n",
        channels(&rx)
    );
    // The rotate policy of this world looks at no project: the key is revoked, not rotated.
    let neutered = "[policies.match]\nprojects = [\"no-such-project-*\"]";
    let mut w = world_with(&top, FILE_SINK, neutered, ENFORCE_SA).await;
    with_channel_secrets(&mut w);
    w.run(w.base).await;
    let warned = notices(&rx, "keysweep.notices.warning", "revoke-180d");
    assert_eq!(warned.len(), 1, "{warned:?}");
    let route = warned[0]["owner_route"].clone();
    assert_eq!(route["to"], "person", "{route}");
    w.run(w.base + 6 * DAY + 12 * 3600).await;

    // The DELETE takes effect, then its answer never comes: the run is killed meanwhile.
    let fault = w.sim.faults().add(
        Fault::on(FaultRoute::DeleteKey)
            .once()
            .after_effect()
            .respond(FaultKind::Delay(std::time::Duration::from_secs(120))),
    );
    let mut child = w.cmd(w.base + 8 * DAY).spawn().unwrap();
    crate::support::wait::eventually("the DELETE", || w.sim.faults().hits(fault) > 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(
        w.sim.key(PROJECT, OLD).is_none(),
        "the DELETE did not go through"
    );
    let store = Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    let pending = (store.with_conn(keysweep::state::audit::unmatched_intents)).unwrap();
    drop(store);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(
        notices(&rx, "keysweep.notices.revoked", "revoke-180d").is_empty(),
        "told before the outcome was known"
    );

    w.sim.faults().clear();
    let out = w.run(w.base + 8 * DAY).await;
    let revoked = notices(&rx, "keysweep.notices.revoked", "revoke-180d");
    assert_eq!(revoked.len(), 1, "{revoked:?}\n{out}");
    assert_eq!(revoked[0]["owner_route"], route, "{revoked:?}");
    w.assert_state_clean(ADMIN_KEY);
}

/// A service-account key under a `rotate` policy is ended by its rotation only: another
/// `expire` policy never writes an earlier expiry on it, even when the rotate finding itself
/// has no expiry to write because the key's own expiry comes before the rotation's deadline.
/// (The user key beside it gets that policy's expiry: the policy is in force.) `scan` plans
/// the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_expire_policy_never_ends_a_rotated_key_whose_own_expiry_comes_first() {
    let own = unix_now() + 3 * DAY;
    let w = world_of(
        move |org: &mut SimOrg| {
            for p in &mut org.projects {
                for k in p.keys.iter_mut().filter(|k| k.id == OLD) {
                    k.expires_at = Some(own);
                }
            }
        },
        "[[policies]]\nname = \"expire-30d\"\nmax_age = \"30d\"\naction = \"expire\"\n\
         warn_before = \"1d\"\nfinal_notice = \"1h\"\n",
        FILE_SINK,
        SCOPES,
        ENFORCE_SA,
    )
    .await;
    let scan = keysweep(
        &[
            "--config",
            w.config.to_str().unwrap(),
            "scan",
            "--now",
            &rfc3339(w.base),
        ],
        &[(KEY_ENV, ADMIN_KEY)],
    );
    let scan = output(scan).await;
    let report: serde_json::Value = serde_json::from_slice(&scan.stdout).unwrap();
    let row = (report["findings"].as_array().unwrap().iter())
        .find(|f| f["key_id"] == OLD && f["policy"] == "expire-30d")
        .unwrap_or_else(|| panic!("no expire-30d row for the old key: {report}"));
    assert_ne!(row["plan"]["next"], "expire", "scan plans the write: {row}");
    let out = w.run(w.base).await;
    let user = w.sim.key(PROJECT, "key_rot_user").unwrap();
    assert!(
        user.expires_at.is_some_and(|at| at <= w.base + DAY + SLACK),
        "the expire policy set nothing on the user key:\n{out}"
    );
    assert_eq!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at,
        Some(own),
        "another policy moved the rotated key's expiry:\n{out}"
    );
}

/// Once a rotation has handed the new key over, another `expire` policy may end the old key
/// before the expiry the rotation promised, as it would any key: the replacement exists, and
/// only the lack of one is a reason to hold that policy's expiry back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_rotation_another_expire_policy_may_end_the_old_key_earlier() {
    let rx = Receiver::start().await;
    let mut w = world_with(&channels(&rx), FILE_SINK, SCOPES, ENFORCE_SA).await;
    with_channel_secrets(&mut w);
    // Warned a week ago, rotated now: the rotation's writes use the wall clock (`run_any`).
    run_any(&w, w.base - 7 * DAY).await;
    let out = run_any(&w, w.base).await;
    assert_eq!(w.mints(), 1, "{out}");
    let promised = w.sim.key(PROJECT, OLD).unwrap().expires_at;
    let promised = promised.unwrap_or_else(|| panic!("{:?}\n{out}", w.rotation_rows()));
    add_expire_30d(&w);
    let out = run_any(&w, w.base + 600).await;
    let at = w.sim.key(PROJECT, OLD).unwrap().expires_at.unwrap();
    // The policy's expiry is about an hour after its write, the rotation's a day after its own.
    assert!(
        at + 12 * 3600 < promised,
        "the other policy's expiry was held back: {at} vs promised {promised}\n{out}"
    );
    assert_eq!(w.mints(), 1, "{out}");
    // Its warning tells the deadline of its own expiry, not the rotation's (already past).
    let warned = notices(&rx, "keysweep.notices.warning", "expire-30d");
    assert_eq!(warned.len(), 1, "{warned:?}\n{out}");
    assert_eq!(
        warned[0]["deadline_unix"],
        w.base + 600 + 3600,
        "{warned:?}"
    );
}

/// After a rotation, a person deletes the new key (it did not work) and removes the old key's
/// expiry, while another `expire` policy is due on the old key: that policy does not end it
/// either. The rotation's promised expiry is no longer in place, so the key keeps the rotation's
/// protection until the rotation phase abandons the rotation (the next sweep rotates afresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_whose_successor_was_deleted_gets_no_other_policys_expiry() {
    let w = world_with("", FILE_SINK, SCOPES, ENFORCE_SA).await;
    // Warned a week ago, rotated now (see `run_any`).
    run_any(&w, w.base - 7 * DAY).await;
    let out = run_any(&w, w.base).await;
    assert_eq!(w.mints(), 1, "{out}");
    let row = w.rotation_rows()[0].clone();
    w.sim
        .remove_key(PROJECT, &row.new_key_id.clone().unwrap())
        .unwrap();
    w.sim.set_expires_at(PROJECT, OLD, None).unwrap();
    add_expire_30d(&w);
    // Two hours on: past the hour a finished rotation is left alone.
    let out = run_any(&w, w.base + 7200).await;
    assert_eq!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at,
        None,
        "the old key got an expiry with no successor:\n{out}"
    );
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["abandoned"], "{out}");
}

/// The old key's expiry failed after the sink confirmed (`delivered`), then a person deleted
/// the new key, while another `expire` policy is due on the old key: that policy does not end
/// it, since the expiry the rotation owes is still to be judged. The rotation phase finds the
/// new key gone, abandons the rotation and rotates afresh: the old key ends a day after the
/// new successor, not an hour after the other policy's warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_rotation_whose_successor_was_deleted_gets_no_other_policys_expiry() {
    let w = world_with("", FILE_SINK, SCOPES, ENFORCE_SA).await;
    // Warned a week ago, rotated now (see `run_any`).
    run_any(&w, w.base - 7 * DAY).await;
    fail_old_key_updates(&w);
    let out = run_any(&w, w.base).await;
    let row = w.rotation_rows()[0].clone();
    assert_eq!(row.status, "delivered", "{out}");
    w.sim.faults().clear();
    w.sim
        .remove_key(PROJECT, &row.new_key_id.clone().unwrap())
        .unwrap();
    add_expire_30d(&w);
    let out = run_any(&w, w.base + 600).await;
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["abandoned", "done"], "{out}");
    let at = w.sim.key(PROJECT, OLD).unwrap().expires_at.unwrap();
    assert!(
        at > w.base + 600 + 12 * 3600,
        "the other policy ended the old key before a successor existed: {at}\n{out}"
    );
}

/// `run --once --now at` to its end, whatever its exit status: its combined output. For the
/// worlds warned a week before `base` and rotated at it, where the user key's expiry, due at
/// the same deadline, is refused as past and the run exits 1.
async fn run_any(w: &World, at: i64) -> String {
    combined(&output(w.cmd(at)).await)
}

/// Adds an `expire` policy that every key of the world violates, warning an hour ahead.
fn add_expire_30d(w: &World) {
    let mut text = std::fs::read_to_string(&w.config).unwrap();
    text.push_str(
        "\n[[policies]]\nname = \"expire-30d\"\nmax_age = \"30d\"\naction = \"expire\"\n\
         warn_before = \"1h\"\nfinal_notice = \"30m\"\n",
    );
    std::fs::write(&w.config, text).unwrap();
}

/// A rotation whose sweep fails before announcing it (the transaction that queues its messages
/// and marks it announced fails, as on a full disk) counts in the metrics once, when the next sweep announces it: not in the
/// failed sweep, and not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_announced_a_sweep_late_counts_once_in_the_metrics() {
    use keysweep::sweep::{SweepOptions, Sweeper};
    let w = world_with("", FILE_SINK, SCOPES, ENFORCE_SA).await;
    run_any(&w, w.base - 7 * DAY).await;
    let toml = std::fs::read_to_string(&w.config).unwrap();
    let env = [(KEY_ENV.to_string(), ADMIN_KEY.to_string())];
    let config = std::sync::Arc::new(keysweep::config::load_from_str(&toml, &env).unwrap());
    let db = w.dir.path().join("keysweep.db");
    let metrics = keysweep::metrics::Metrics::new();
    let sweeper = Sweeper::new(config, Some(Store::open(&db).unwrap()), metrics.clone()).unwrap();
    let rotated = || -> Vec<String> {
        (metrics.encode().lines())
            .filter(|l| l.starts_with("keysweep_revocations") && l.contains("\"rotated\""))
            .map(str::to_string)
            .collect()
    };
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_rotated BEFORE UPDATE ON rotations
         WHEN OLD.status = 'unannounced' AND NEW.status = 'done'
         BEGIN SELECT RAISE(ABORT, 'no space left on device'); END;",
    )
    .unwrap();
    let failed = sweeper.run_once(&SweepOptions::new(w.base)).await;
    assert!(failed.is_err(), "the sweep did not fail");
    assert_eq!(w.mints(), 1);
    assert!(
        rotated().iter().all(|l| l.ends_with(" 0")),
        "{:?}",
        rotated()
    );
    conn.execute_batch("DROP TRIGGER refuse_rotated;").unwrap();
    sweeper
        .run_once(&SweepOptions::new(w.base + 600))
        .await
        .unwrap();
    assert_eq!(w.mints(), 1);
    let lines = rotated();
    assert!(
        lines.len() == 1 && lines[0].ends_with(" 1"),
        "rotated counted {lines:?}"
    );
}
