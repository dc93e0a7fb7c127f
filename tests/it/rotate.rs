//! Issue 17: `action = "rotate"` through the real binary (`keysweep run --once`) against the
//! simulated Administration API: a due service-account key is replaced by a new key of the same
//! account, handed to a sink, and the old key then expires after the overlap; a failing sink
//! leaves no new key and the old one untouched; a SIGKILL while the mint's answer is lost leaves
//! an orphan the next run deletes before rotating; a SIGKILL while the sink runs leaves the new
//! key for a person to confirm. The minted secret appears in no output, log or database byte.

use std::path::PathBuf;
use std::time::Duration;

use keysweep::sim::{
    Fault, FaultKind, FaultRoute, SimAccess, SimEffect, SimKey, SimOptions, SimOrg, SimOwnerRef,
    SimServer, SimServiceAccount,
};
use keysweep::state::{Store, audit, rotations};

use crate::support::process::{combined, keysweep, output};
use crate::support::secrets::{assert_no_secret, assert_no_secret_in_bytes};
use crate::support::time::{DAY, rfc3339, unix_now};
use crate::support::wait::{PATIENCE, eventually};

pub(crate) const ADMIN_KEY: &str = "sk-admin-ROTATE-5e1d77a0c4-DO-NOT-LEAK";
pub(crate) const KEY_ENV: &str = "KEYSWEEP_IT_ROTATE_ADMIN_KEY";
pub(crate) const PROJECT: &str = "proj_rotate";
pub(crate) const SA: &str = "svc_acct_rotate_bot";
pub(crate) const OLD: &str = "key_rot_sa_old";
const USER_KEY: &str = "key_rot_user";
/// The server times a write itself: an expiry lands within a few seconds of the target.
const SLACK: i64 = 10;

pub(crate) struct World {
    pub(crate) sim: SimServer,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    pub(crate) base: i64,
    /// Environment variables the binary gets besides the admin key (channel secrets).
    pub(crate) env: Vec<(String, String)>,
}

fn key(id: &str, owner: SimOwnerRef, created_at: i64) -> SimKey {
    SimKey {
        id: id.to_string(),
        name: format!("{id}-name"),
        redacted_value: format!("sk-proj-****{}", &id[id.len() - 4..]),
        created_at,
        last_used_at: Some(created_at + DAY),
        owner,
        expires_at: None,
        scopes: Vec::new(),
    }
}

fn org(now: i64) -> SimOrg {
    let mut org = SimOrg::generate(1, 2, 17, now);
    let p = org.projects.iter_mut().find(|p| !p.is_archived()).unwrap();
    p.id = PROJECT.to_string();
    let user = p.members[0].user_id.clone();
    p.service_accounts.push(SimServiceAccount {
        id: SA.into(),
        name: "rotate-bot".into(),
        role: "member".into(),
        created_at: now - 400 * DAY,
        access: SimAccess::Active,
    });
    p.keys = vec![
        key(
            OLD,
            SimOwnerRef::ServiceAccount { id: SA.into() },
            now - 200 * DAY,
        ),
        key(USER_KEY, SimOwnerRef::User { id: user }, now - 200 * DAY),
    ];
    org.projects.retain(|p| p.id == PROJECT);
    org
}

/// A world whose rotate policy uses `sink` (a `[[sinks]]` body without its name) and sets
/// `policy_extra` (e.g. `scopes`), under `safety_extra`.
async fn world(sink: &str, policy_extra: &str, safety_extra: &str) -> World {
    world_with("", sink, policy_extra, safety_extra).await
}

/// [`world`] with `top` (top-level keys and whole tables, e.g. `owner_fallback` and
/// `[[channels]]`) added to the configuration.
pub(crate) async fn world_with(
    top: &str,
    sink: &str,
    policy_extra: &str,
    safety_extra: &str,
) -> World {
    world_of(|_| {}, top, sink, policy_extra, safety_extra).await
}

/// [`world_with`] whose simulated organisation `tweak` changes first (e.g. the old key's scopes,
/// which the simulator's audit log then tells).
pub(crate) async fn world_of(
    tweak: impl FnOnce(&mut SimOrg),
    top: &str,
    sink: &str,
    policy_extra: &str,
    safety_extra: &str,
) -> World {
    let base = unix_now();
    let mut org = org(base);
    tweak(&mut org);
    let sim = crate::support::sim::start_sim_with(org, SimOptions::new(ADMIN_KEY)).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = sink.replace("$DIR", dir.path().to_str().unwrap());
    let extra = format!(
        r#"mode = "enforce"
{top}

[limits]
max_retries = 1
request_timeout = "5s"

[[policies]]
name = "rotate-90d"
max_age = "90d"
action = "rotate"
sink = "store"
overlap = "24h"
warn_before = "7d"
final_notice = "1d"
{policy_extra}

[[sinks]]
name = "store"
{sink}

[safety]
max_revocations_per_run = 100
max_revocations_per_project_percent = 100
max_revocations_per_day = 100
{safety_extra}
"#
    );
    let config =
        crate::support::config::write_config_file(dir.path(), &sim.base_url(), KEY_ENV, &extra);
    World {
        sim,
        dir,
        config,
        base,
        env: Vec::new(),
    }
}

pub(crate) const FILE_SINK: &str =
    "type = \"file\"\npath = \"$DIR/{project_id}-{service_account_id}.key\"\nformat = \"raw\"\n";
pub(crate) const SCOPES: &str = "scopes = [\"api.model.read\"]";
pub(crate) const ENFORCE_SA: &str = "service_account_keys = \"enforce\"";

impl World {
    pub(crate) fn cmd(&self, now: i64) -> tokio::process::Command {
        let mut c = keysweep(
            &[
                "--config",
                self.config.to_str().unwrap(),
                "run",
                "--once",
                "--now",
                &rfc3339(now),
            ],
            &[(KEY_ENV, ADMIN_KEY)],
        );
        c.env("RUST_LOG", "info");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `run --once --now now` to its end: its combined output, which holds no admin key.
    pub(crate) async fn run(&self, now: i64) -> String {
        let out = output(self.cmd(now)).await;
        let text = combined(&out);
        assert_no_secret("keysweep output", &text, &[ADMIN_KEY]);
        assert!(out.status.success(), "{text}");
        text
    }

    /// Rewrites the configuration's `max_revocations_per_run` (100 in [`world`]) to `cap`.
    pub(crate) fn cap_writes_per_run(&self, cap: u32) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let key = "max_revocations_per_run = ";
        let lines: Vec<String> = (text.lines())
            .map(|l| match l.starts_with(key) {
                true => format!("{key}{cap}"),
                false => l.to_string(),
            })
            .collect();
        assert!(text.lines().any(|l| l.starts_with(key)), "{text}");
        std::fs::write(&self.config, lines.join("\n") + "\n").unwrap();
    }

    pub(crate) fn sink_file(&self) -> PathBuf {
        self.dir.path().join(format!("{PROJECT}-{SA}.key"))
    }

    /// The service account's keys in the simulator.
    pub(crate) fn sa_keys(&self) -> Vec<keysweep::sim::SimKeySnapshot> {
        self.sim
            .keys(PROJECT)
            .into_iter()
            .filter(|k| matches!(&k.owner, SimOwnerRef::ServiceAccount { id } if id == SA))
            .collect()
    }

    pub(crate) fn mints(&self) -> u64 {
        self.sim
            .stats()
            .iter()
            .filter(|(k, _)| {
                k.starts_with("POST")
                    && k.ends_with("/service_accounts/{service_account_id}/api_keys")
            })
            .map(|(_, n)| *n)
            .sum()
    }

    pub(crate) fn rotation_rows(&self) -> Vec<rotations::RotationRow> {
        let store = Store::open(&self.dir.path().join("keysweep.db")).unwrap();
        store.with_conn(rotations::all).unwrap()
    }

    /// The audit chain verifies, and no byte of the state files holds `secret`.
    pub(crate) fn assert_state_clean(&self, secret: &str) {
        let store = Store::open(&self.dir.path().join("keysweep.db")).unwrap();
        let report = store.with_conn(|c| Ok(audit::verify(c))).unwrap();
        assert!(report.is_ok(), "audit verify: {report:?}");
        drop(store);
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("keysweep.db") {
                let bytes = std::fs::read(&path).unwrap();
                assert_no_secret_in_bytes(&name, &bytes, &[secret]);
            }
        }
    }
}

/// The sweep that first warns about the key never rotates it, and sets the user key's fallback
/// expiry; the rotation is planned for `deadline − overlap`.
pub(crate) async fn first_warning(w: &World) {
    let out = w.run(w.base).await;
    assert_eq!(w.mints(), 0, "minted in the sweep that first warns:\n{out}");
    let old = w.sim.key(PROJECT, OLD).unwrap();
    assert_eq!(
        old.expires_at, None,
        "the old key got an expiry before rotation"
    );
    // User keys cannot be minted: rotate falls back to expire (deadline = first warning + 7d).
    let user = w.sim.key(PROJECT, USER_KEY).unwrap();
    let to = user
        .expires_at
        .expect("the user key got no fallback expiry");
    assert!(
        (to - (w.base + 7 * DAY)).abs() <= SLACK,
        "user key expiry {to}"
    );
}

/// When the rotation is due: an hour past `deadline − overlap`.
pub(crate) fn due(w: &World) -> i64 {
    w.base + 6 * DAY + 3600
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_rotation_hands_the_new_key_to_a_file_sink_and_the_old_key_expires_after_the_overlap()
{
    let policy = format!("{SCOPES}\nmax_lifetime = \"180d\"");
    let w = world(FILE_SINK, &policy, ENFORCE_SA).await;
    first_warning(&w).await;
    // `scan` shows the planned rotation: deadline − overlap.
    let scan = keysweep(
        &[
            "--config",
            w.config.to_str().unwrap(),
            "scan",
            "--now",
            &rfc3339(w.base + 3600),
        ],
        &[(KEY_ENV, ADMIN_KEY)],
    );
    let scan = combined(&output(scan).await);
    let start = rfc3339(w.base + 6 * DAY);
    assert!(scan.contains("rotate at"), "{scan}");
    assert!(scan.contains(&start[..10]), "{start} not in\n{scan}");
    assert_eq!(w.mints(), 0, "scan minted");

    let before = unix_now();
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let keys = w.sa_keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let new = keys.iter().find(|k| k.id != OLD).unwrap();
    assert!(
        new.name.starts_with(&format!("{OLD}-name-ks-")),
        "{}",
        new.name
    );
    assert_eq!(new.scopes, vec!["api.model.read".to_string()]);
    // The policy's max_lifetime gives the new key its expiry.
    let new_expiry = new.expires_at.expect("the new key has no expiry");
    assert!(
        new_expiry >= before + 180 * DAY - SLACK && new_expiry <= unix_now() + 180 * DAY + SLACK,
        "new key expires at {new_expiry}"
    );
    // The sink holds the new key's secret, mode 0600.
    let secret = std::fs::read_to_string(w.sink_file()).unwrap();
    let secret = secret.trim();
    assert!(secret.len() > 8, "{secret}");
    let last4 = &secret[secret.len() - 4..];
    assert!(
        new.redacted_value.ends_with(last4),
        "{} vs ..{last4}",
        new.redacted_value
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(w.sink_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // Only then the old key got now + overlap (wall clock).
    let old = w.sim.key(PROJECT, OLD).unwrap();
    let at = old.expires_at.expect("the old key got no expiry");
    assert!(
        at >= before + DAY - SLACK && at <= unix_now() + DAY + SLACK,
        "old key expires at {at}, rotation at {before}"
    );
    assert!(out.contains("rotated: new key"), "{out}");
    assert_no_secret("keysweep output", &out, &[secret]);
    let rows = w.rotation_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "done");
    assert_eq!(rows[0].new_key_id.as_deref(), Some(new.id.as_str()));

    // A later sweep mints nothing more.
    let later = w.run(due(&w) + 3600).await;
    assert_eq!(w.mints(), 1, "{later}");
    assert_no_secret("keysweep output", &later, &[secret]);
    w.assert_state_clean(secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_sink_that_exits_non_zero_leaves_no_new_key_and_the_old_key_untouched() {
    let dir = tempfile::tempdir().unwrap();
    // Reads the key, says something about it on stderr, and fails.
    let body = format!(
        "read -r k\necho \"refused $k\" >&2\nprintf '%s' \"$k\" > {}/got\nexit 3\n",
        dir.path().display()
    );
    let sink = exec_sink(&dir.path().join("store-key.sh"), &body, "20s");
    let w = world(&sink, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;

    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let secret = std::fs::read_to_string(dir.path().join("got")).unwrap();
    assert!(secret.len() > 8);
    let keys = w.sa_keys();
    assert_eq!(
        keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        [OLD],
        "the new key was left"
    );
    assert_eq!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at,
        None,
        "the old key was touched"
    );
    assert!(out.contains("rotation failed"), "{out}");
    assert!(out.contains("exit status: 3"), "{out}");
    assert_no_secret("keysweep output", &out, &[secret.as_str()]);
    assert_eq!(w.rotation_rows()[0].status, "sink_failed");
    // The new key is gone again and no expiry is owed: the rotation's day slot went back.
    let store = Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    let counted = store
        .with_conn(|c| keysweep::state::revocations::revocations_since(c, due(&w) - DAY))
        .unwrap();
    assert_eq!(counted, 0);
    drop(store);
    w.assert_state_clean(&secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_scopes_under_notify_only_or_in_dry_run_nothing_is_minted() {
    // No scopes configured: never All permissions by default; an alert says why.
    let w = world(FILE_SINK, "", ENFORCE_SA).await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 0, "{out}");
    assert!(
        out.contains("not rotated: the policy configures no scopes"),
        "{out}"
    );

    // service_account_keys = "notify-only" (the default): announced, not performed.
    let w = world(FILE_SINK, SCOPES, "").await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 0, "{out}");
    assert!(out.contains("service_account_notify_only"), "{out}");
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None);
    assert!(!w.sink_file().exists());

    // --dry-run: "would rotate", nothing written.
    let w = world(FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let mut cmd = w.cmd(due(&w));
    cmd.arg("--dry-run");
    let out = combined(&output(cmd).await);
    assert_eq!(w.mints(), 0, "{out}");
    assert!(out.contains("would rotate"), "{out}");
    assert!(!w.sink_file().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_the_mints_answer_is_lost_leaves_an_orphan_that_the_next_run_deletes() {
    let w = world(FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    // The mint takes effect, then its answer hangs: keysweep never learns the new key's id.
    let id = w.sim.faults().add(
        Fault::on(FaultRoute::CreateServiceAccountKey)
            .once()
            .after_effect()
            .respond(FaultKind::Delay(Duration::from_secs(120))),
    );
    let mut child = w.cmd(due(&w)).spawn().unwrap();
    eventually("the mint", || w.sim.faults().hits(id) > 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().unwrap();
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "the child was not killed");
    let orphans: Vec<String> = w
        .sa_keys()
        .into_iter()
        .map(|k| k.id)
        .filter(|k| k != OLD)
        .collect();
    assert_eq!(
        orphans.len(),
        1,
        "the mint did not take effect before the kill"
    );
    assert_eq!(w.rotation_rows()[0].status, "minting");

    // The next run finds the orphan by its nonce, deletes it and rotates afresh.
    let out = w.run(due(&w) + 600).await;
    assert!(
        !w.sim.key_exists(PROJECT, &orphans[0]),
        "the orphan is still there:\n{out}"
    );
    assert!(out.contains("never handed to a sink were deleted"), "{out}");
    let keys = w.sa_keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let new = keys.iter().find(|k| k.id != OLD).unwrap();
    let secret = std::fs::read_to_string(w.sink_file()).unwrap();
    let secret = secret.trim();
    assert!(new.redacted_value.ends_with(&secret[secret.len() - 4..]));
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "rotation not done"
    );
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["abandoned", "done"]);
    assert_no_secret("keysweep output", &out, &[secret]);
    w.assert_state_clean(secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_the_sink_runs_leaves_the_new_key_for_a_person_and_mints_no_other() {
    let dir = tempfile::tempdir().unwrap();
    // The sink takes the key, then hangs (as a slow secret store would) until it is killed.
    let (w, new, secret) = interrupted_hand_over(dir.path()).await;
    let new = [new];
    let ids: Vec<String> = w.sa_keys().into_iter().map(|k| k.id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&new[0]), "{ids:?}");

    // The next run: the new key stays (someone may have it), the old one is untouched, a person
    // is asked to confirm, and no further key is minted for the account.
    let out = w.run(due(&w) + 600).await;
    assert_eq!(w.mints(), 1, "{out}");
    assert!(w.sim.key_exists(PROJECT, &new[0]));
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None);
    assert!(out.contains("a person must confirm"), "{out}");
    assert_no_secret("keysweep output", &out, &[secret.as_str()]);

    // `rotation confirm` of another key is refused, naming it.
    let refused = confirm(&w, OLD).await;
    assert_eq!(refused.status.code(), Some(2), "{}", combined(&refused));
    assert_eq!(w.rotation_rows()[0].status, "minted");

    // Once a person deleted the new key, the next run rotates afresh (here the sink hangs no
    // more: it is replaced by a file sink).
    w.sim.faults().clear();
    let text = std::fs::read_to_string(&w.config).unwrap();
    let start = text.find("[[sinks]]").unwrap();
    let end = text.find("[safety]").unwrap();
    let file_sink = FILE_SINK.replace("$DIR", w.dir.path().to_str().unwrap());
    let text = format!(
        "{}[[sinks]]\nname = \"store\"\n{file_sink}\n{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&w.config, text).unwrap();
    w.sim.remove_key(PROJECT, &new[0]).unwrap();
    let out = w.run(due(&w) + 1200).await;
    assert_eq!(w.mints(), 2, "{out}");
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "{out}"
    );
    w.assert_state_clean(&secret);
}

/// A run killed while its exec sink holds the new key: the row stays `minted`. Returns the
/// world, the new key's id and the secret the sink got.
async fn interrupted_hand_over(dir: &std::path::Path) -> (World, String, String) {
    let body = format!(
        "echo $$ > {d}/pid\nread -r k\nprintf '%s' \"$k\" > {d}/got\nexec sleep 60\n",
        d = dir.display()
    );
    let sink = exec_sink(&dir.join("slow-store.sh"), &body, "90s");
    let w = world(&sink, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let mut child = w.cmd(due(&w)).spawn().unwrap();
    let got = dir.join("got");
    eventually("the sink to get the key", || got.exists()).await;
    child.start_kill().unwrap();
    let _ = tokio::time::timeout(PATIENCE, child.wait()).await.unwrap();
    let pid = std::fs::read_to_string(dir.join("pid")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status();
    let secret = std::fs::read_to_string(&got).unwrap();
    let new = w.rotation_rows()[0].new_key_id.clone().unwrap();
    assert_eq!(w.rotation_rows()[0].status, "minted");
    (w, new, secret)
}

/// An exec sink that stores the key, then hangs past its timeout and is killed: it may hold
/// the key, so keysweep keeps the new key (deleting it would leave the store with a dead key)
/// and waits for a person, as after a crash during the hand-over; the old key is untouched.
/// The person confirms, and the next run ends the old key after the overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_at_its_timeout_keeps_the_new_key_for_a_person_to_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "read -r k\nprintf '%s' \"$k\" > {d}/got\nexec sleep 30\n",
        d = dir.path().display()
    );
    let sink = exec_sink(&dir.path().join("hanging-store.sh"), &body, "1s");
    let w = world(&sink, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let out = w.run(due(&w)).await;
    let row = w.rotation_rows()[0].clone();
    assert_eq!(row.status, "minted", "{out}");
    let new = row.new_key_id.clone().unwrap();
    assert!(w.sim.key_exists(PROJECT, &new), "deleted:\n{out}");
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None, "{out}");
    assert!(out.contains("the sink gave no answer"), "{out}");
    assert!(out.contains("was killed"), "{out}");
    let secret = std::fs::read_to_string(dir.path().join("got")).unwrap();
    assert_no_secret("keysweep output", &out, &[secret.as_str()]);
    // Still waiting in the next sweep: nothing minted, nothing deleted.
    let out = w.run(due(&w) + 600).await;
    assert_eq!(w.mints(), 1, "{out}");
    assert!(w.sim.key_exists(PROJECT, &new), "{out}");
    let confirmed = confirm(&w, &new).await;
    assert!(confirmed.status.success(), "{}", combined(&confirmed));
    let out = w.run(due(&w) + 1200).await;
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "the old key has no expiry after the confirmation:\n{out}"
    );
    assert_eq!(w.rotation_rows()[0].status, "done", "{out}");
    w.assert_state_clean(&secret);
}

/// `keysweep rotation confirm NEW_KEY_ID` as a process: its output and status.
async fn confirm(w: &World, new_key_id: &str) -> std::process::Output {
    let mut c = keysweep(
        &[
            "--config",
            w.config.to_str().unwrap(),
            "rotation",
            "confirm",
            new_key_id,
        ],
        &[(KEY_ENV, ADMIN_KEY)],
    );
    c.envs(w.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    output(c).await
}

/// A crash while the sink ran, and a person confirms that the sink holds the new key
/// (`rotation confirm`): the next run sets the old key's expiry at the end of the overlap from
/// the confirmation, keeps the new key and mints nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_confirms_an_interrupted_hand_over_and_the_old_key_then_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (w, new, secret) = interrupted_hand_over(dir.path()).await;
    let before = unix_now();
    let confirmed = confirm(&w, &new).await;
    let text = combined(&confirmed);
    assert!(confirmed.status.success(), "{text}");
    assert!(text.contains("confirmed"), "{text}");
    assert_eq!(w.rotation_rows()[0].status, "delivered");

    let out = w.run(due(&w) + 600).await;
    assert_eq!(w.mints(), 1, "{out}");
    assert!(
        w.sim.key_exists(PROJECT, &new),
        "the confirmed key was deleted"
    );
    let at = w
        .sim
        .key(PROJECT, OLD)
        .unwrap()
        .expires_at
        .expect("no expiry on the old key");
    assert!(
        at >= before + DAY - SLACK && at <= unix_now() + DAY + SLACK,
        "old key's expiry {at}\n{out}"
    );
    assert_eq!(w.rotation_rows()[0].status, "done", "{out}");
    assert_no_secret("keysweep output", &out, &[secret.as_str()]);
    assert_no_secret("confirm output", &text, &[secret.as_str()]);
    w.assert_state_clean(&secret);
}

/// Both answers given: someone deleted the new key, someone else confirmed it. The old key is
/// the only one left working, so it gets no expiry: the rotation is abandoned instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_key_deleted_since_leaves_the_old_key_working() {
    let dir = tempfile::tempdir().unwrap();
    let (w, new, _secret) = interrupted_hand_over(dir.path()).await;
    w.sim.remove_key(PROJECT, &new).unwrap();
    assert!(confirm(&w, &new).await.status.success());
    // No fresh rotation in this run (the caps allow no write): only the settling is seen.
    w.cap_writes_per_run(0);
    let out = w.run(due(&w) + 600).await;
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None, "{out}");
    assert_eq!(w.rotation_rows()[0].status, "abandoned", "{out}");
}

/// A mint answered with a 503 after it took effect (the client does not re-send a mint): the
/// orphan is found by its nonce and deleted in the same run, the old key is untouched, and the
/// next run rotates. Another policy's `expire` never gives the key an earlier expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_answered_5xx_after_its_effect_is_cleaned_up_at_once_and_the_next_run_rotates() {
    let also_expire = format!(
        "{SCOPES}\n\n[[policies]]\nname = \"expire-60d\"\nmax_age = \"60d\"\naction = \"expire\"\n"
    );
    let w = world(FILE_SINK, &also_expire, ENFORCE_SA).await;
    // `first_warning` also checks the service-account key got no expiry from `expire-60d`.
    first_warning(&w).await;
    answer_the_next_mint_503(&w);
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    assert_eq!(
        w.sa_keys()
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>(),
        [OLD],
        "the key minted behind the 503 was left:\n{out}"
    );
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None, "{out}");
    assert!(out.contains("minting the new key failed"), "{out}");
    assert!(!w.sink_file().exists());

    let out = w.run(due(&w) + 600).await;
    assert_eq!(w.mints(), 2, "{out}");
    let secret = std::fs::read_to_string(w.sink_file()).unwrap();
    assert_eq!(w.sa_keys().len(), 2);
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "{out}"
    );
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["abandoned", "done"]);
    w.assert_state_clean(secret.trim());
}

/// A mint answered 503 before it took effect: no key is found, in that sweep nor in one a
/// minute later (a restart, the daemon's retry: a key made late could still be coming), so the
/// row keeps the account's rotation in hand and nothing is minted beside it. Once the mint is
/// 15 minutes old a search that finds nothing gives it up, and the key is rotated afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mint_is_given_up_only_once_it_is_old_enough() {
    // Twenty minutes of wall clock pass for the row; or the clock stepped back a day since
    // the mint (its start is then in the future): no young mint either.
    for shift in [-1200, 86_400] {
        let w = world(FILE_SINK, SCOPES, ENFORCE_SA).await;
        first_warning(&w).await;
        w.sim.faults().add(
            Fault::on(FaultRoute::CreateServiceAccountKey)
                .once()
                .respond(FaultKind::Status(503)),
        );
        let out = w.run(due(&w)).await;
        assert_eq!(w.sa_keys().len(), 1, "{out}");
        assert_eq!(w.rotation_rows()[0].status, "minting", "{out}");
        let mints = w.mints();
        let out = w.run(due(&w) + 60).await;
        assert_eq!(
            w.mints(),
            mints,
            "minted beside a mint still searched for:\n{out}"
        );
        assert_eq!(w.rotation_rows()[0].status, "minting", "{out}");
        let db = w.dir.path().join("keysweep.db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("UPDATE rotations SET started_at = started_at + ?1", [shift])
            .unwrap();
        drop(conn);
        let out = w.run(due(&w) + 120).await;
        let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
        assert_eq!(statuses, ["abandoned", "done"], "shift {shift}: {out}");
        assert_eq!(w.mints(), mints + 1, "{out}");
    }
}

/// Arms the simulator to answer the next mint with a 503 after it took effect: a key exists
/// that keysweep never learns the id of.
fn answer_the_next_mint_503(w: &World) {
    w.sim.faults().add(
        Fault::on(FaultRoute::CreateServiceAccountKey)
            .once()
            .after_effect()
            .respond(FaultKind::Status(503)),
    );
}

/// The same lost mint with the API's clock 20 minutes behind keysweep's: the orphan's
/// `created_at` (the API's clock) is still inside the window around the intent (keysweep's
/// clock), so it is found by its nonce and deleted, not left alive beside the next mint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mint_is_found_with_the_apis_clock_behind_keysweeps() {
    let w = world(FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    w.sim.advance_clock(-1200);
    answer_the_next_mint_503(&w);
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let ids: Vec<String> = w.sa_keys().into_iter().map(|k| k.id).collect();
    assert_eq!(ids, [OLD], "the key minted behind the 503 was left:\n{out}");
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["abandoned"], "{out}");
}

/// Writes an executable `/bin/sh` script at `script` (`body` follows the `#!` line) and returns
/// an exec sink's settings that run it with `timeout`.
pub(crate) fn exec_sink(script: &std::path::Path, body: &str, timeout: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(script, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o700)).unwrap();
    format!(
        "type = \"exec\"\ncommand = [{:?}]\ntimeout = \"{timeout}\"\n",
        script.display().to_string()
    )
}

/// An exec sink script at `script` that stores the key it reads in `dir/file` and exits `exit`.
fn write_store_script(
    script: &std::path::Path,
    dir: &std::path::Path,
    exit: u8,
    file: &str,
) -> String {
    let body = format!(
        "read -r k\nprintf '%s' \"$k\" > {}/{file}\nexit {exit}\n",
        dir.display()
    );
    exec_sink(script, &body, "20s")
}

/// A first run whose exec sink fails and whose every DELETE of the new key answers 500: the
/// row stays `cleanup_pending`, the new key is left and the old one untouched. Returns the
/// world, the stranded key's id and the secret the failed sink got.
async fn stranded_by_a_failed_cleanup(dir: &std::path::Path) -> (World, String, String) {
    let script = dir.join("store-key.sh");
    let sink = write_store_script(&script, dir, 3, "first");
    let w = world(&sink, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    w.sim.faults().add(
        Fault::on(FaultRoute::DeleteKey)
            .project(PROJECT)
            .times(50)
            .respond(FaultKind::Status(500)),
    );
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let first = std::fs::read_to_string(dir.join("first")).unwrap();
    let keys = w.sa_keys();
    assert_eq!(keys.len(), 2, "the new key is not left: {keys:?}\n{out}");
    let stranded = keys.iter().find(|k| k.id != OLD).unwrap().id.clone();
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None, "{out}");
    assert!(out.contains("deleting the new key failed too"), "{out}");
    assert_eq!(w.rotation_rows()[0].status, "cleanup_pending");
    assert_no_secret("keysweep output", &out, &[first.as_str()]);
    w.sim.faults().clear();
    (w, stranded, first)
}

/// The exec sink fails and deleting the new key fails too (500s on every DELETE): the row stays
/// `cleanup_pending`, the new key is left and the old one untouched. The next run, the faults
/// gone and the sink working, first deletes that key, then rotates afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cleanup_after_a_failed_sink_is_retried_by_the_next_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let (w, stranded, first) = stranded_by_a_failed_cleanup(dir.path()).await;
    write_store_script(&dir.path().join("store-key.sh"), dir.path(), 0, "second");
    let out = w.run(due(&w) + 600).await;
    assert!(
        w.sim.key(PROJECT, &stranded).is_none(),
        "the stranded key was not deleted:\n{out}"
    );
    assert_eq!(w.mints(), 2, "{out}");
    let second = std::fs::read_to_string(dir.path().join("second")).unwrap();
    let keys = w.sa_keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let new = keys.iter().find(|k| k.id != OLD).unwrap();
    assert!(new.redacted_value.ends_with(&second[second.len() - 4..]));
    assert!(
        w.sim.key(PROJECT, OLD).unwrap().expires_at.is_some(),
        "{out}"
    );
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["sink_failed", "done"], "{out}");
    assert_no_secret("keysweep output", &out, &[first.as_str(), second.as_str()]);
    w.assert_state_clean(&first);
    w.assert_state_clean(&second);
}

/// The same stranded key, and the next run's caps allow no write: the run deletes the stranded
/// key (undoing keysweep's own write is never held back), but the fresh rotation that settling
/// allows is held back by the cap like any other, not started around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_rotation_starts_afresh_only_within_the_caps() {
    let dir = tempfile::tempdir().unwrap();
    let (w, stranded, first) = stranded_by_a_failed_cleanup(dir.path()).await;
    write_store_script(&dir.path().join("store-key.sh"), dir.path(), 0, "second");
    w.cap_writes_per_run(0);
    let out = w.run(due(&w) + 600).await;
    assert!(
        w.sim.key(PROJECT, &stranded).is_none(),
        "the stranded key was not deleted:\n{out}"
    );
    assert_eq!(w.mints(), 1, "a key was minted past the cap:\n{out}");
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None, "{out}");
    let statuses: Vec<String> = w.rotation_rows().into_iter().map(|r| r.status).collect();
    assert_eq!(statuses, ["sink_failed"], "{out}");
    w.assert_state_clean(&first);
}

/// A warned world whose `[safety]` names a kill-switch file (not there yet): the world, the
/// directory the file goes in, and the file's path.
async fn kill_switch_world() -> (World, tempfile::TempDir, std::path::PathBuf) {
    let stop = tempfile::tempdir().unwrap();
    let switch = stop.path().join("stop");
    let safety = format!(
        "{ENFORCE_SA}\nkill_switch_file = {:?}",
        switch.to_str().unwrap()
    );
    let w = world(FILE_SINK, SCOPES, &safety).await;
    first_warning(&w).await;
    (w, stop, switch)
}

/// A due rotation held back is recorded once per spell and reason
/// (`Finding::rotation_withheld`), not every sweep: two dry-runs write one `skipped` record,
/// two sweeps under the kill switch (another reason) one more; once nothing holds it back the
/// key is rotated and its finding forgets the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_rotation_is_recorded_once_per_spell_and_reason() {
    let (w, _stop, switch) = kill_switch_world().await;
    let store = || Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    let withheld = || {
        (store()
            .with_conn(|c| audit::list(c, None))
            .unwrap()
            .into_iter())
        .filter(|r| r.record.key_id.as_deref() == Some(OLD))
        .filter(|r| r.record.message.starts_with("rotation withheld"))
        .map(|r| r.record.message)
        .collect::<Vec<_>>()
    };
    let mark = || {
        let all = store().with_conn(keysweep::state::findings::all_findings);
        (all.unwrap().into_iter())
            .find(|f| f.id.key_id == OLD)
            .and_then(|f| f.rotation_withheld)
    };
    for hour in [0, 1] {
        let mut cmd = w.cmd(due(&w) + hour * 3600);
        cmd.arg("--dry-run");
        let out = output(cmd).await;
        assert!(out.status.success(), "{}", combined(&out));
    }
    assert_eq!(withheld(), ["rotation withheld: dry_run"]);
    assert_eq!(mark().as_deref(), Some("dry_run"));
    std::fs::write(&switch, "on").unwrap();
    for hour in [2, 3] {
        let out = combined(&output(w.cmd(due(&w) + hour * 3600)).await);
        assert!(out.contains("kill_switch"), "{out}");
    }
    assert_eq!(
        withheld(),
        [
            "rotation withheld: dry_run",
            "rotation withheld: kill_switch"
        ]
    );
    assert_eq!(w.mints(), 0);
    std::fs::remove_file(&switch).unwrap();
    w.run(due(&w) + 4 * 3600).await;
    assert_eq!(w.mints(), 1, "rotated once nothing holds it back");
    assert_eq!(withheld().len(), 2);
    assert_eq!(mark(), None, "the spell is over");
}

/// A kill switch put in place while the rotation re-reads the old key (its answer slow) stops
/// the mint: it is read again at the last moment, as before a DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_put_in_place_during_the_recheck_stops_the_mint() {
    let (w, _stop, switch) = kill_switch_world().await;
    let slow = w.sim.faults().add(
        Fault::on_get_key(PROJECT, OLD)
            .once()
            .respond(FaultKind::Delay(std::time::Duration::from_secs(2))),
    );
    let child = w.cmd(due(&w)).output();
    let switched = async {
        crate::support::wait::eventually("the re-check", || w.sim.faults().hits(slow) > 0).await;
        std::fs::write(&switch, "incident").unwrap();
    };
    let (out, ()) = tokio::join!(child, switched);
    let out = combined(&out.unwrap());
    assert_eq!(w.mints(), 0, "minted past the kill switch:\n{out}");
    assert!(out.contains("kill_switch"), "{out}");
}

/// The kill switch fails closed for rotations as for deletes: a switch file that is a dangling
/// symlink (it exists, though `Path::exists` says no) holds every due rotation back, and no key
/// is minted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_switch_that_is_a_dangling_symlink_holds_rotations_back() {
    let (w, stop, switch) = kill_switch_world().await;
    std::os::unix::fs::symlink(stop.path().join("no-such-target"), &switch).unwrap();
    assert!(!switch.exists(), "the symlink dangles");
    let out = combined(&output(w.cmd(due(&w))).await);
    assert_eq!(w.mints(), 0, "minted under the kill switch:\n{out}");
    let store = Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    let held = (store
        .with_conn(|c| audit::list(c, None))
        .unwrap()
        .into_iter())
    .filter(|r| r.record.key_id.as_deref() == Some(OLD))
    .any(|r| r.record.message == "rotation withheld: kill_switch");
    assert!(held, "{out}");
}

/// A rotation takes its old key's slot of the rolling-day cap when it begins, before anything
/// is minted: when another process fills the day after this sweep planned the rotation, the
/// rotation is withheld with that reason, nothing is minted, and no old key is left owing an
/// expiry the cap would then refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_day_was_filled_after_planning_mints_nothing() {
    let w = world(FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let held = w.sim.faults().add(
        Fault::on_get_key(PROJECT, OLD)
            .once()
            .respond(FaultKind::Delay(Duration::from_secs(3))),
    );
    let now = due(&w);
    let run = tokio::spawn(output(w.cmd(now)));
    eventually("the rotation's re-check is held", || {
        w.sim.faults().hits(held) == 1
    })
    .await;
    // Another process fills the day (the configuration's cap is 100).
    let store = Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    store
        .tx(|tx| {
            for i in 0..100 {
                let key = format!("key_elsewhere_{i}");
                keysweep::state::revocations::record_revocation(
                    tx, now, "other", "proj_x", &key, "run-x",
                )?;
            }
            Ok(())
        })
        .unwrap();
    let out = combined(&run.await.unwrap());
    assert_eq!(w.mints(), 0, "minted with the day full:\n{out}");
    assert!(!w.sink_file().exists());
    assert!(w.rotation_rows().is_empty());
    let withheld = (store
        .with_conn(|c| audit::list(c, None))
        .unwrap()
        .into_iter())
    .filter(|r| r.record.key_id.as_deref() == Some(OLD))
    .filter(|r| r.record.message.contains("the rolling-day cap"))
    .map(|r| r.record.message)
    .collect::<Vec<_>>();
    assert_eq!(withheld.len(), 1, "{withheld:?}\n{out}");
    assert!(
        withheld[0].starts_with("rotation withheld: "),
        "{withheld:?}"
    );
    assert_eq!(w.sim.key(PROJECT, OLD).unwrap().expires_at, None);
}

/// A key renamed between the listing and the rotation's re-check is someone acting on it: no
/// key is minted, and the next sweep, which lists the new name, rotates it. Renamed before
/// every re-check, `max_recheck_skips` (3) times in a row, it raises the same alert as a key
/// kept from its DELETE.
#[tokio::test]
async fn a_key_renamed_before_its_rotation_is_left_for_the_next_sweep() {
    let w = world(FILE_SINK, SCOPES, ENFORCE_SA).await;
    first_warning(&w).await;
    let now = due(&w);
    for i in 0..3 {
        w.sim.faults().add(
            Fault::on_get_key(PROJECT, OLD)
                .once()
                .respond(FaultKind::Apply(SimEffect::rename(
                    PROJECT,
                    OLD,
                    format!("renamed\u{202e} by its owner {i}"),
                ))),
        );
        let out = w.run(now + 60 * i).await;
        assert_eq!(w.mints(), 0, "minted for a key renamed meanwhile:\n{out}");
    }
    assert!(!w.sink_file().exists());
    let store = Store::open(&w.dir.path().join("keysweep.db")).unwrap();
    let records = (store
        .with_conn(|c| audit::list(c, None))
        .unwrap()
        .into_iter())
    .map(|r| serde_json::to_string(&r.record).unwrap())
    .collect::<Vec<_>>();
    let renamed = records
        .iter()
        .filter(|r| r.contains(OLD) && r.contains("renamed"));
    assert!(renamed.clone().count() >= 3, "{records:?}");
    assert!(
        renamed.clone().all(|r| !r.contains('\u{202e}')),
        "{records:?}"
    );
    let streak = (records.iter()).filter(|r| r.contains("kept by the re-check 3 times in a row"));
    assert_eq!(streak.count(), 1, "{records:?}");

    let out = w.run(now + 600).await;
    assert_eq!(w.mints(), 1, "the next sweep rotates it:\n{out}");
    assert!(w.sink_file().exists());
}
