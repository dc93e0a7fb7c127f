//! Cron expressions: parsing a `schedule` string and computing its fire times. The one parser
//! of the configuration's `schedule` (loading refuses what it refuses) and of the daemon's loop
//! (`daemon::schedule`, which re-exports it).
//!
//! This module is pure: no clock reads, no sleeping, no I/O. The scheduler loop in
//! `daemon/org_loop.rs` reads the wall clock and asks [`CronSchedule::next_fire`] what comes after it,
//! which is what makes the DST behaviour table-testable.
//!
//! Semantics (croner 4, OCPS / Vixie cron):
//! - 5 fields (`min hour dom month dow`) or 6 fields with seconds first; `@daily`-style
//!   nicknames are accepted as 5-field patterns. A 7th (year) field is refused.
//! - Day-of-month and day-of-week combine with OR when both are restricted (Vixie); a `+` before
//!   the day-of-week asks for AND.
//! - Times are wall-clock times in the given IANA zone. A fixed time that falls into a
//!   spring-forward gap fires at the first instant after the gap; a fixed time repeated by a
//!   fall-back fires once, at its first occurrence; interval patterns (`*/10 * * * *`) follow
//!   real time through both.

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Why a schedule string was refused. Messages quote the expression (never a secret: cron
/// strings are not secret) so `check-config` can show exactly what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "cron expression `{expr}` has {fields} fields; expected 5 (minute hour day-of-month month \
         day-of-week) or 6 (seconds first)"
    )]
    FieldCount { expr: String, fields: usize },
    #[error("invalid cron expression `{expr}`: {reason}")]
    Invalid { expr: String, reason: String },
    #[error("cron expression `{expr}` never fires")]
    NeverFires { expr: String },
}

/// A parsed cron schedule. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    with_seconds: bool,
}

impl CronSchedule {
    /// Parses a 5-field (minute resolution) or 6-field (seconds first) cron expression.
    pub fn parse(expr: &str) -> Result<CronSchedule, ScheduleError> {
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        let nickname = trimmed.starts_with('@');
        // Choose the parser by field count ourselves: croner's `Seconds::Optional` would also
        // accept a 7-field pattern with a year, which no crontab user means.
        let seconds = match fields {
            1 if nickname => Seconds::Disallowed,
            5 => Seconds::Disallowed,
            6 => Seconds::Required,
            _ => {
                return Err(ScheduleError::FieldCount {
                    expr: expr.to_string(),
                    fields,
                });
            }
        };
        let cron = CronParser::builder()
            .seconds(seconds)
            .year(Year::Disallowed)
            // Vixie OR semantics for day-of-month / day-of-week, as in every crontab.
            .dom_and_dow(false)
            .build()
            .parse(trimmed)
            .map_err(|e| ScheduleError::Invalid {
                expr: expr.to_string(),
                reason: e.to_string(),
            })?;
        let schedule = CronSchedule {
            expr: trimmed.to_string(),
            cron,
            with_seconds: seconds == Seconds::Required,
        };
        // `0 0 30 2 *` parses but never matches; refuse it at load rather than having a daemon
        // that silently never sweeps. Any reference instant works: a pattern that fires at all
        // fires within a few years of any date (leap days included).
        let reference = DateTime::<Utc>::UNIX_EPOCH;
        if schedule.next_fire(reference, Tz::UTC).is_none() {
            return Err(ScheduleError::NeverFires {
                expr: expr.to_string(),
            });
        }
        Ok(schedule)
    }

    /// The expression as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// True for 6-field expressions (second resolution).
    pub fn has_seconds(&self) -> bool {
        self.with_seconds
    }

    /// The first fire time strictly after `after`, evaluated as wall-clock time in `tz`.
    ///
    /// Sub-second parts of `after` are dropped first, so an instant a few milliseconds past a
    /// slot never yields that same slot again. `None` only when no future time matches.
    pub fn next_fire(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let after = after.with_nanosecond(0).unwrap_or(after);
        let local = after.with_timezone(&tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last fire time at or before `at`, evaluated as wall-clock time in `tz`.
    pub fn previous_fire(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&tz);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The length of the schedule's period around `now`: the gap between the next two fire
    /// times. Readiness uses it ("older than twice the interval").
    pub fn interval_after(&self, now: DateTime<Utc>, tz: Tz) -> Option<chrono::Duration> {
        let first = self.next_fire(now, tz)?;
        let second = self.next_fire(first, tz)?;
        Some(second - first)
    }
}

impl std::fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.expr)
    }
}
