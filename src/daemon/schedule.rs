//! Schedules as the daemon and the sweep use them: each organisation's effective schedule, its
//! [`Cadence`] (when the next sweep comes, which one sends a final notice) and the start-up
//! warnings about a schedule too coarse for a policy. The cron parser itself is
//! `config::cron`, re-exported here.
//!
//! This module is pure: no clock reads, no sleeping, no I/O.

use chrono::DateTime;
use chrono_tz::Tz;

pub use crate::config::cron::{CronSchedule, ScheduleError};
use crate::config::{Config, OrgConfig, Schedule, duration_text};

/// An organisation's sweeps as the lifecycle and the plan need them: when the next one starts
/// at the latest, and which one sends a final notice due at a given time. Times are Unix
/// seconds.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: CronSchedule,
    tz: Tz,
    /// The longest random delay of a slot (`jitter`), in seconds.
    jitter: i64,
}

impl Cadence {
    /// `None` only for an expression that does not parse, which loading refuses.
    pub fn of(schedule: &Schedule) -> Option<Cadence> {
        Some(Cadence {
            cron: CronSchedule::parse(&schedule.cron).ok()?,
            tz: schedule.timezone,
            jitter: i64::try_from(schedule.jitter.as_secs()).unwrap_or(i64::MAX),
        })
    }

    /// When the next scheduled sweep after `now` starts at the latest: its slot plus the
    /// jitter. A final notice due before then goes out at `now` (`policy::lifecycle`).
    pub fn next_sweep_by(&self, now: i64) -> Option<i64> {
        let after = DateTime::from_timestamp(now, 0)?;
        let slot = self.cron.next_fire(after, self.tz)?.timestamp();
        Some(slot.saturating_add(self.jitter))
    }

    /// The scheduled sweep after `now` that sends a final notice due at `due` under that rule:
    /// the last slot at or before `due - jitter`, whose next sweep may start after `due`; the
    /// next slot when that one is not after `now` (a sweep that warned could not also give it);
    /// `due` itself when the schedule has no such slot.
    pub fn sweep_sending(&self, due: i64, now: i64) -> i64 {
        let last = DateTime::from_timestamp(due.saturating_sub(self.jitter), 0)
            .and_then(|t| self.cron.previous_fire(t, self.tz));
        let slot = last.map_or(due, |t| t.timestamp().min(due));
        if slot > now {
            return slot;
        }
        self.next_slot(now).unwrap_or(due)
    }

    /// The first slot after `now`.
    fn next_slot(&self, now: i64) -> Option<i64> {
        let after = DateTime::from_timestamp(now, 0)?;
        Some(self.cron.next_fire(after, self.tz)?.timestamp())
    }

    /// The shortest and the longest time between two slots, over a year of slots (at most
    /// [`GAP_SAMPLE`]) from a fixed date.
    fn slot_gaps(&self) -> (i64, i64) {
        let from =
            DateTime::from_timestamp(GAP_FROM, 0).and_then(|t| self.cron.next_fire(t, self.tz));
        let Some(mut slot) = from else {
            return (0, 0);
        };
        let end = slot.timestamp().saturating_add(400 * 86_400);
        let (mut shortest, mut longest) = (i64::MAX, 0);
        for _ in 0..GAP_SAMPLE {
            let Some(next) = self.cron.next_fire(slot, self.tz) else {
                break;
            };
            let gap = (next - slot).num_seconds();
            (shortest, longest) = (shortest.min(gap), longest.max(gap));
            if next.timestamp() > end {
                break;
            }
            slot = next;
        }
        (shortest.min(longest), longest)
    }
}

/// 2026-01-01T00:00:00Z: where [`Cadence::slot_gaps`] starts counting.
const GAP_FROM: i64 = 1_767_225_600;

/// How many slots [`Cadence::slot_gaps`] looks at, at most: two days of a schedule every
/// minute, three weeks of one every five minutes in working hours (weekends included).
const GAP_SAMPLE: usize = 6_000;

/// The start-up warnings a schedule deserves, one line each, from one look at each
/// organisation's slots:
/// - a `jitter` not shorter than the shortest time between two slots: a sweep it delays can
///   run into the next slot, which is then skipped (and the final notices timed by [`Cadence`]
///   assume every slot runs);
/// - a `revoke` or `expire` policy whose final notice the schedule can miss: the sweep that
///   warns gives no final notice, so unless the next sweep comes at least `final_notice` before
///   the deadline (`warn_before` after the warning), a key can end with no final notice. One
///   line per policy and organisation it may apply to.
pub fn schedule_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let text = |s: i64| duration_text(std::time::Duration::from_secs(s.unsigned_abs()));
    for org in &config.organizations {
        let enforcing: Vec<_> = (config.policies.iter())
            .filter(|p| p.action.enforces())
            .filter(|p| {
                let orgs = &p.selector.organizations;
                orgs.is_empty() || orgs.iter().any(|o| o == &org.name)
            })
            .collect();
        let schedule = effective_schedule(config, org);
        let cadence = Cadence::of(schedule).filter(|c| c.jitter > 0 || !enforcing.is_empty());
        let Some(cadence) = cadence else {
            continue;
        };
        let (shortest, longest) = cadence.slot_gaps();
        if cadence.jitter > 0 && cadence.jitter >= shortest {
            out.push(format!(
                "organization {:?}: jitter ({}) is not shorter than the shortest time between two \
                 slots of schedule {:?} ({}): a sweep it delays can run into the next slot, which \
                 is then skipped; make jitter shorter",
                org.name,
                text(cadence.jitter),
                schedule.cron,
                text(shortest),
            ));
        }
        let gap = longest.saturating_add(cadence.jitter);
        for p in enforcing {
            let needed = gap.saturating_add(secs(p.final_notice));
            if secs(p.warn_before) >= needed {
                continue;
            }
            out.push(format!(
                "policy {:?}: warn_before ({}) is shorter than the longest wait for the next sweep \
                 of organization {:?} ({}: schedule {:?} plus jitter) plus final_notice ({}): \
                 the sweep after a warning can come too late for the final notice, and a key can \
                 end without one; make warn_before at least {}, or sweep more often",
                p.name,
                text(secs(p.warn_before)),
                org.name,
                text(gap),
                schedule.cron,
                text(secs(p.final_notice)),
                text(needed),
            ));
        }
    }
    out
}

/// The schedule that applies to `org`: its own, else the global one.
pub fn effective_schedule<'a>(config: &'a Config, org: &'a OrgConfig) -> &'a Schedule {
    org.schedule.as_ref().unwrap_or(&config.schedule)
}

/// One organisation's effective schedule: all that readiness (`ops`) needs to know of the
/// configuration.
#[derive(Debug, Clone)]
pub struct OrgSchedule {
    pub organization: String,
    pub schedule: Schedule,
}

/// Every organisation's effective schedule, in configuration order.
pub fn org_schedules(config: &Config) -> Vec<OrgSchedule> {
    config
        .organizations
        .iter()
        .map(|org| OrgSchedule {
            organization: org.name.clone(),
            schedule: effective_schedule(config, org).clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn tz(name: &str) -> Tz {
        name.parse().unwrap()
    }

    /// (expression, zone, after (RFC 3339), expected next fire (RFC 3339, any offset)).
    #[rustfmt::skip]
    const CASES: &[(&str, &str, &str, &str)] = &[
        // 5-field, UTC.
        ("0 */6 * * *", "UTC", "2026-05-01T00:00:00Z", "2026-05-01T06:00:00Z"),
        ("0 */6 * * *", "UTC", "2026-05-01T23:59:59Z", "2026-05-02T00:00:00Z"),
        ("*/10 * * * *", "UTC", "2026-05-01T10:05:00Z", "2026-05-01T10:10:00Z"),
        ("*/10 * * * *", "UTC", "2026-05-01T10:10:00Z", "2026-05-01T10:20:00Z"),
        ("*/10 * * * *", "UTC", "2026-05-01T10:59:30Z", "2026-05-01T11:00:00Z"),
        ("@daily", "UTC", "2026-05-01T10:00:00Z", "2026-05-02T00:00:00Z"),
        ("@hourly", "UTC", "2026-05-01T10:00:00Z", "2026-05-01T11:00:00Z"),
        ("30 9 * * MON-FRI", "UTC", "2026-05-01T10:00:00Z", "2026-05-04T09:30:00Z"),
        // Strictly after: a call exactly on a slot returns the next one.
        ("0 0 * * *", "UTC", "2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z"),
        // Sub-second parts are dropped: 00:00:00.5 is still "on" the midnight slot.
        ("0 0 * * *", "UTC", "2026-05-01T00:00:00.500Z", "2026-05-02T00:00:00Z"),
        // 6-field, with seconds.
        ("* * * * * *", "UTC", "2026-05-01T10:00:00Z", "2026-05-01T10:00:01Z"),
        ("* * * * * *", "UTC", "2026-05-01T10:00:00.999Z", "2026-05-01T10:00:01Z"),
        ("*/15 * * * * *", "UTC", "2026-05-01T10:00:16Z", "2026-05-01T10:00:30Z"),
        ("30 0 12 * * *", "UTC", "2026-05-01T12:00:30Z", "2026-05-02T12:00:30Z"),
        // Day-of-month OR day-of-week (Vixie): the 1st of the month OR any Monday.
        // 2026-06-01 is a Monday; the next Monday is 2026-06-08.
        ("0 9 1 * MON", "UTC", "2026-05-30T00:00:00Z", "2026-06-01T09:00:00Z"),
        ("0 9 1 * MON", "UTC", "2026-06-01T09:00:00Z", "2026-06-08T09:00:00Z"),
        // 2026-07-01 is a Wednesday: it fires for the day-of-month alone.
        ("0 9 1 * MON", "UTC", "2026-06-29T09:00:00Z", "2026-07-01T09:00:00Z"),
        // `+` asks for AND: after 2026-06-01 the next 1st that is a Monday is 2027-02-01.
        ("0 9 1 * +MON", "UTC", "2026-06-01T09:00:00Z", "2027-02-01T09:00:00Z"),
        // Europe/Berlin spring forward, 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        // A daily 02:30 does not exist that day: it fires at the first instant after the gap.
        ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-29T03:00:00+02:00"),
        // The day after, it is back at 02:30 CEST.
        ("30 2 * * *", "Europe/Berlin", "2026-03-29T12:00:00Z", "2026-03-30T02:30:00+02:00"),
        // A daily 09:00 keeps its wall-clock time across the change (08:00Z before, 07:00Z after).
        ("0 9 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", "2026-03-28T09:00:00+01:00"),
        ("0 9 * * *", "Europe/Berlin", "2026-03-28T08:00:00Z", "2026-03-29T09:00:00+02:00"),
        // Hourly across the gap: 01:00 CET is followed by 03:00 CEST, one real hour later.
        ("0 * * * *", "Europe/Berlin", "2026-03-29T00:00:00Z", "2026-03-29T03:00:00+02:00"),
        // Europe/Berlin fall back, 2026-10-25: 03:00 CEST goes back to 02:00 CET.
        // A daily 02:30 fires once, at its first occurrence (+02:00) ...
        ("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", "2026-10-25T02:30:00+02:00"),
        // ... and not again at 02:30 CET an hour later: next is the following day.
        ("30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00Z", "2026-10-26T02:30:00+01:00"),
        // Every 30 minutes follows real time through the repeated hour: 02:30 CEST, then
        // 02:00 CET (a real 30 minutes later).
        ("*/30 * * * *", "Europe/Berlin", "2026-10-25T00:30:00Z", "2026-10-25T02:00:00+01:00"),
        ("0 9 * * *", "Europe/Berlin", "2026-10-25T06:00:00Z", "2026-10-25T09:00:00+01:00"),
        // America/New_York: spring forward 2026-03-08 (02:00 EST → 03:00 EDT),
        // fall back 2026-11-01 (02:00 EDT → 01:00 EST).
        ("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-08T03:00:00-04:00"),
        ("0 0 * * *", "America/New_York", "2026-03-08T04:00:00Z", "2026-03-08T00:00:00-05:00"),
        ("0 0 * * *", "America/New_York", "2026-03-08T06:00:00Z", "2026-03-09T00:00:00-04:00"),
        ("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", "2026-11-01T01:30:00-04:00"),
        ("30 1 * * *", "America/New_York", "2026-11-01T05:30:00Z", "2026-11-02T01:30:00-05:00"),
        ("0 12 * * *", "America/New_York", "2026-11-01T12:00:00Z", "2026-11-01T12:00:00-05:00"),
    ];

    #[test]
    fn next_fire_table() {
        let mut failures = Vec::new();
        for &(expr, zone, after, expected) in CASES {
            let schedule = CronSchedule::parse(expr).unwrap();
            let got = schedule.next_fire(utc(after), tz(zone));
            if got != Some(utc(expected)) {
                failures.push(format!(
                    "{expr:?} in {zone} after {after}: expected {expected}, got {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn five_and_six_fields_are_accepted_seven_and_four_are_not() {
        assert!(!CronSchedule::parse("0 */6 * * *").unwrap().has_seconds());
        assert!(CronSchedule::parse("*/5 * * * * *").unwrap().has_seconds());
        for bad in ["* * * *", "0 0 0 * * * 2026", "", "   "] {
            match CronSchedule::parse(bad) {
                Err(ScheduleError::FieldCount { .. }) => {}
                other => panic!("{bad:?}: expected FieldCount error, got {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_expressions_are_refused_with_the_expression_named() {
        for bad in [
            "61 * * * *",
            "* 25 * * *",
            "x * * * *",
            "0/10 * * * *",
            "* * * * 8",
        ] {
            let err = CronSchedule::parse(bad).unwrap_err();
            assert!(
                matches!(err, ScheduleError::Invalid { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn a_pattern_that_never_fires_is_refused() {
        let err = CronSchedule::parse("0 0 30 2 *").unwrap_err();
        assert!(matches!(err, ScheduleError::NeverFires { .. }), "{err:?}");
    }

    #[test]
    fn interval_is_the_gap_between_the_next_two_fires() {
        let s = CronSchedule::parse("0 */6 * * *").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 5, 1, 1, 0, 0).unwrap();
        assert_eq!(
            s.interval_after(now, Tz::UTC),
            Some(chrono::Duration::hours(6))
        );
        let s = CronSchedule::parse("* * * * * *").unwrap();
        assert_eq!(
            s.interval_after(now, Tz::UTC),
            Some(chrono::Duration::seconds(1))
        );
        // A daily job across the Berlin spring-forward night: 23 real hours.
        let s = CronSchedule::parse("0 1 * * *").unwrap();
        let now = utc("2026-03-28T00:30:00Z");
        assert_eq!(
            s.interval_after(now, tz("Europe/Berlin")),
            Some(chrono::Duration::hours(23))
        );
    }

    #[test]
    fn consecutive_fires_are_strictly_increasing_across_both_berlin_changes() {
        let s = CronSchedule::parse("*/20 * * * *").unwrap();
        for start in ["2026-03-28T22:00:00Z", "2026-10-24T22:00:00Z"] {
            let mut t = utc(start);
            for _ in 0..20 {
                let next = s.next_fire(t, tz("Europe/Berlin")).unwrap();
                assert!(next > t, "{next} after {t}");
                // Every 20 wall-clock minutes is every 20 real minutes, DST or not.
                assert_eq!(next - t, chrono::Duration::minutes(20), "after {t}");
                t = next;
            }
        }
    }

    #[test]
    fn a_cadence_knows_the_next_sweep_and_the_one_that_sends_a_final_notice() {
        // Mondays at 00:00 UTC, up to an hour late.
        let schedule = Schedule {
            cron: "0 0 * * 1".into(),
            timezone: Tz::UTC,
            run_on_start: true,
            jitter: std::time::Duration::from_secs(3600),
            retry_failed_after: crate::config::DEFAULT_RETRY_FAILED_AFTER,
        };
        let c = Cadence::of(&schedule).unwrap();
        let at = |s: &str| utc(s).timestamp();
        // From a Wednesday: next Monday's slot, plus the jitter.
        assert_eq!(
            c.next_sweep_by(at("2026-12-02T10:00:00Z")),
            Some(at("2026-12-07T01:00:00Z"))
        );
        let wed = at("2026-11-25T10:00:00Z");
        // Due on a Thursday: the Monday before sends it.
        assert_eq!(
            c.sweep_sending(at("2026-12-10T12:00:00Z"), wed),
            at("2026-12-07T00:00:00Z")
        );
        // Due within the jitter after a slot: that slot's sweep may start after it, so the one
        // a week before sends it.
        assert_eq!(
            c.sweep_sending(at("2026-12-07T00:30:00Z"), wed),
            at("2026-11-30T00:00:00Z")
        );
        // Due exactly an hour after a slot: that slot's sweep is the last one before.
        assert_eq!(
            c.sweep_sending(at("2026-12-07T01:00:00Z"), wed),
            at("2026-12-07T00:00:00Z")
        );
        // The sending slot is not after now (the sweep that warned could not send it): the
        // next slot does, late.
        assert_eq!(
            c.sweep_sending(at("2026-12-03T00:00:00Z"), at("2026-11-30T00:00:00Z")),
            at("2026-12-07T00:00:00Z")
        );
        // A week between slots, and an hour of jitter.
        assert_eq!(c.slot_gaps().1 + c.jitter, 7 * 86_400 + 3600);
        // A bad expression (loading refuses it) gives no cadence.
        let bad = Schedule {
            cron: "nonsense".into(),
            ..schedule
        };
        assert!(Cadence::of(&bad).is_none());
    }

    #[test]
    fn longest_gaps_span_nights_weekends_and_short_months() {
        let gap = |cron: &str| {
            let schedule = Schedule {
                cron: cron.into(),
                timezone: Tz::UTC,
                run_on_start: true,
                jitter: std::time::Duration::ZERO,
                retry_failed_after: crate::config::DEFAULT_RETRY_FAILED_AFTER,
            };
            Cadence::of(&schedule).unwrap().slot_gaps().1 / 60
        };
        assert_eq!(gap("0 */6 * * *"), 6 * 60);
        // Friday 17:55 to Monday 09:00.
        assert_eq!(gap("*/5 9-17 * * 1-5"), 63 * 60 + 5);
        // The 31st: from one to the next skips the months without one (March 31 to May 31).
        assert_eq!(gap("0 0 31 * *"), 61 * 24 * 60);
    }

    #[test]
    fn a_policy_whose_final_notice_the_schedule_can_miss_is_warned_about() {
        let toml = |schedule: &str, warn_before: &str, action: &str| {
            format!(
                "schedule = \"{schedule}\"\n[[organizations]]\nname = \"acme\"\n\
                 admin_key_env = \"K\"\n[[policies]]\nname = \"old\"\nmax_age = \"90d\"\n\
                 action = \"{action}\"\nwarn_before = \"{warn_before}\"\n\
                 final_notice = \"1d\"\n"
            )
        };
        let env = [("K".to_string(), "sk-admin-test".to_string())];
        let warnings = |schedule: &str, warn_before: &str, action: &str| {
            let text = toml(schedule, warn_before, action);
            let config = crate::config::load_from_str(&text, &env).unwrap();
            schedule_warnings(&config)
        };
        let weekly = warnings("0 0 * * 1", "7d", "expire");
        assert_eq!(weekly.len(), 1, "{weekly:?}");
        assert!(
            weekly[0].contains("policy \"old\": warn_before (7d)")
                && weekly[0].contains("(7d: schedule \"0 0 * * 1\" plus jitter)")
                && weekly[0].contains("make warn_before at least 8d"),
            "{}",
            weekly[0]
        );
        assert_eq!(warnings("0 0 * * 1", "7d", "revoke").len(), 1);
        // Room for a sweep between the warning and the final notice; or nothing to be final about.
        assert!(warnings("0 0 * * 1", "8d", "expire").is_empty());
        assert!(warnings("0 0 * * 1", "7d", "notify").is_empty());
        assert!(warnings("0 */6 * * *", "7d", "expire").is_empty());
        // Per organisation: its own schedule, and only the policies that select it.
        let two = |selected: &str| {
            let text = toml("0 */6 * * *", "7d", "expire")
                .replace(
                    "[[policies]]",
                    "[[organizations]]\nname = \"weekly\"\nadmin_key_env = \"K\"\n\
                     schedule = \"0 0 * * 1\"\n[[policies]]",
                )
                .replace(
                    "max_age = \"90d\"",
                    &format!("max_age = \"90d\"\nmatch = {{ organizations = [\"{selected}\"] }}"),
                );
            let config = crate::config::load_from_str(&text, &env).unwrap();
            schedule_warnings(&config)
        };
        // A jitter as long as the time between slots.
        let jittery = |jitter: &str| {
            let text = format!(
                "jitter = \"{jitter}\"\n{}",
                toml("0 */6 * * *", "7d", "expire")
            );
            let config = crate::config::load_from_str(&text, &env).unwrap();
            schedule_warnings(&config)
        };
        let six = jittery("6h");
        assert!(six.len() == 1 && six[0].contains("jitter (6h)"), "{six:?}");
        assert!(jittery("5h").is_empty());
        let weekly = two("weekly");
        assert!(
            weekly.len() == 1 && weekly[0].contains("organization \"weekly\""),
            "{weekly:?}"
        );
        assert!(two("acme").is_empty());
    }
}
