//! Issue 17, the notices of `action = "rotate"`: through the real binary against the simulator,
//! with a real webhook receiver as `owner_fallback` (a service-account key has no owner e-mail).
//! The warning about a key under a `rotate` policy says it will be rotated — when the new key
//! goes to the sink and when the old key ends — or, under `service_account_keys = "notify-only"`,
//! that the rotation is only announced; never that "the expiry is set". These tests must never
//! see or print a minted secret beyond comparing it with the sink's file.

use crate::rotate::{ENFORCE_SA, FILE_SINK, OLD, PROJECT, SCOPES, World, due, world_with};
use crate::support::receivers::Receiver;
use crate::support::secrets::{assert_no_secret, whsec};
use crate::support::time::{DAY, rfc3339};

const HOOK_ENV: &str = "KEYSWEEP_IT_ROTATE_HOOK_SECRET";

/// A rotate world whose `owner_fallback` and `ops_channels` are a webhook on `rx`.
async fn hooked(rx: &Receiver, safety_extra: &str) -> World {
    let top = format!(
        "owner_fallback = [\"hook\"]\nops_channels = [\"hook\"]\n\n[[channels]]\nname = \
         \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\nsecret_env = \"{HOOK_ENV}\"\n",
        rx.url("/hook")
    );
    let mut w = world_with(&top, FILE_SINK, SCOPES, safety_extra).await;
    w.env
        .push((HOOK_ENV.into(), whsec(b"rotate-notices-webhook-key-00001")));
    w
}

/// The notices about the old key of the given webhook `type` (e.g. `keysweep.notices.warning`).
fn old_key_notices(rx: &Receiver, kind: &str) -> Vec<serde_json::Value> {
    rx.requests("/hook")
        .iter()
        .map(|r| r.json())
        .filter(|m| m["type"] == kind)
        .flat_map(|m| m["notices"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["key_id"] == OLD)
        .collect()
}

/// The one warning about the old key: its status line and the deadline.
fn warning(rx: &Receiver) -> (String, i64) {
    let warnings = old_key_notices(rx, "keysweep.notices.warning");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let n = &warnings[0];
    let status = n["status"].as_str().unwrap().to_string();
    (status, n["deadline_unix"].as_i64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warning_for_a_key_under_a_rotate_policy_says_it_will_be_rotated() {
    let rx = Receiver::start().await;
    let w = hooked(&rx, ENFORCE_SA).await;
    let out = w.run(w.base).await;
    let (status, deadline) = warning(&rx);
    assert_eq!(deadline, w.base + 7 * DAY, "{status}");
    assert!(status.contains("will be rotated"), "{status}\n{out}");
    assert!(status.contains("sink"), "{status}");
    // The new key goes to the sink at deadline − overlap (24 h); the old one ends at the deadline.
    assert!(status.contains(&rfc3339(deadline - DAY)), "{status}");
    assert!(status.contains(&rfc3339(deadline)), "{status}");
    assert!(!status.contains("expiry is set"), "{status}");
    let warned = old_key_notices(&rx, "keysweep.notices.warning");
    assert_eq!(warned[0]["verdict"], "rotate", "{warned:?}");
    let titles: Vec<String> = (rx.requests("/hook").iter())
        .filter(|r| r.json()["type"] == "keysweep.notices.warning")
        .map(|r| r.json()["title"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        titles.iter().any(|t| t.contains("rotated")),
        "no title says rotated: {titles:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_notify_only_the_warning_says_the_rotation_is_only_announced() {
    let rx = Receiver::start().await;
    let w = hooked(&rx, "").await;
    let out = w.run(w.base).await;
    let (status, deadline) = warning(&rx);
    assert!(status.contains("would be rotated"), "{status}\n{out}");
    assert!(status.contains("only announced"), "{status}");
    assert!(status.contains("notify-only"), "{status}");
    assert!(status.contains(&rfc3339(deadline)), "{status}");
    assert!(!status.contains("expiry is set"), "{status}");
    assert_eq!(w.mints(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_route_gets_a_rotated_notice_with_the_new_key_but_never_its_secret() {
    let rx = Receiver::start().await;
    let w = hooked(&rx, ENFORCE_SA).await;
    w.run(w.base).await;
    assert!(old_key_notices(&rx, "keysweep.notices.rotated").is_empty());
    let out = w.run(due(&w)).await;
    assert_eq!(w.mints(), 1, "{out}");
    let secret = std::fs::read_to_string(w.sink_file()).unwrap();
    let secret = secret.trim();
    let new = (w.sa_keys().into_iter())
        .find(|k| k.id != OLD)
        .expect("no new key");
    let old_expiry = w.sim.key(PROJECT, OLD).unwrap().expires_at.unwrap();
    let rotated = old_key_notices(&rx, "keysweep.notices.rotated");
    assert_eq!(rotated.len(), 1, "{rotated:?}\n{out}");
    let status = rotated[0]["status"].as_str().unwrap();
    assert!(status.contains(&new.id), "{status}");
    assert!(status.contains(&new.redacted_value), "{status}");
    assert!(status.contains("\"store\""), "{status}");
    // When the old key stops working: the expiry keysweep set (the server times it itself).
    let said = rfc3339(old_expiry);
    assert!(
        status.contains(&said[..16]) || status.contains(&rfc3339(old_expiry - 1)[..16]),
        "{said} not in {status}"
    );
    for r in rx.requests("/hook") {
        assert_no_secret("webhook body", &r.json().to_string(), &[secret]);
    }
}

/// The sweep that performed a rotation fails before it queues the "rotated" messages (the
/// outbox refuses them, as a full disk would): the rotation is left `unannounced`, and the next
/// sweep tells the owner route, once, with no second mint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_sweep_failed_before_announcing_it_is_announced_by_the_next() {
    let rx = Receiver::start().await;
    let w = hooked(&rx, ENFORCE_SA).await;
    w.run(w.base).await;
    let db = w.dir.path().join("keysweep.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_rotated BEFORE INSERT ON outbox WHEN NEW.kind = 'rotated'
         BEGIN SELECT RAISE(ABORT, 'no space left on device'); END;",
    )
    .unwrap();
    let out = crate::support::process::output(w.cmd(due(&w))).await;
    let text = crate::support::process::combined(&out);
    assert!(!out.status.success(), "the sweep did not fail:\n{text}");
    assert_eq!(w.mints(), 1, "{text}");
    assert!(old_key_notices(&rx, "keysweep.notices.rotated").is_empty());

    conn.execute_batch("DROP TRIGGER refuse_rotated;").unwrap();
    let out = w.run(due(&w) + 3600).await;
    let rotated = old_key_notices(&rx, "keysweep.notices.rotated");
    assert_eq!(rotated.len(), 1, "{rotated:?}\n{out}");
    let new = (w.sa_keys().into_iter())
        .find(|k| k.id != OLD)
        .expect("no new key");
    let status = rotated[0]["status"].as_str().unwrap();
    assert!(status.contains(&new.id), "{status}");
    assert_eq!(w.mints(), 1, "{out}");
    // Announced once: the sweep after does not tell it again.
    w.run(due(&w) + 7200).await;
    assert_eq!(old_key_notices(&rx, "keysweep.notices.rotated").len(), 1);
}
