//! Unit tests of the daemon's pure parts: slot counting and reload validation. The life cycle
//! itself (schedules, signals, shutdown, the ops endpoints) is tested over real sockets in
//! `tests/it/daemon.rs`.

use chrono::{DateTime, Utc};

use super::*;
use crate::daemon::org_loop::{next_fire_not, slots_between};
use crate::daemon::schedule::CronSchedule;

/// A configuration as an operator would write it, loaded through the real loader; the cron
/// expression is set afterwards, unvalidated, so a test can hand the daemon a bad one.
fn config(cron: &str, orgs: &[&str]) -> Config {
    let mut toml = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
    for name in orgs {
        toml.push_str(&format!(
            "[[organizations]]\nname = {name:?}\nbase_url = \"http://127.0.0.1:1/v1\"\n"
        ));
    }
    let env = [("OPENAI_ADMIN_KEY".to_string(), "sk-admin-test".to_string())];
    let mut config = crate::config::load_from_str(&toml, &env).unwrap();
    config.schedule.cron = cron.to_string();
    config
}

/// After the wall clock steps back past the slot just swept, the next slot is the one after
/// it, not the same slot again; a last slot far ahead (a clock that was wrong, then mended)
/// is not waited for.
#[test]
fn a_clock_stepped_back_does_not_bring_the_last_slot_back() {
    let cron = CronSchedule::parse("0 * * * *").unwrap();
    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let tz = chrono_tz::Tz::UTC;
    let swept = Some(t("2026-01-01T10:00:00Z"));
    let stepped_back = t("2026-01-01T09:59:40Z");
    let next = next_fire_not(&cron, tz, stepped_back, swept);
    assert_eq!(next, Some(t("2026-01-01T11:00:00Z")));
    let far = Some(t("2031-01-01T10:00:00Z"));
    let next = next_fire_not(&cron, tz, stepped_back, far);
    assert_eq!(next, Some(t("2026-01-01T10:00:00Z")));
    assert_eq!(next_fire_not(&cron, tz, stepped_back, None), next);
}

#[test]
fn slots_between_counts_the_half_open_interval() {
    let cron = CronSchedule::parse("* * * * * *").unwrap();
    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let tz = chrono_tz::Tz::UTC;
    assert_eq!(
        slots_between(
            &cron,
            tz,
            t("2026-01-01T00:00:00.300Z"),
            t("2026-01-01T00:00:02.700Z")
        ),
        2
    );
    assert_eq!(
        slots_between(
            &cron,
            tz,
            t("2026-01-01T00:00:00Z"),
            t("2026-01-01T00:00:00.900Z")
        ),
        0
    );
}

#[test]
fn a_reload_with_an_unparsable_schedule_is_refused() {
    let current = config("0 * * * *", &["acme"]);
    let bad = config("61 * * * *", &["acme"]);
    let err = check_reload(&current, Ok(bad)).unwrap_err();
    assert!(err.contains("organizations.acme"), "{err}");
    let err = check_reload(&current, Err("file: key: nope".into())).unwrap_err();
    assert_eq!(err, "file: key: nope");
    assert!(check_reload(&current, Ok(config("*/5 * * * *", &["acme"]))).is_ok());
}
