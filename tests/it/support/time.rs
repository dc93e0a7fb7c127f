//! Clock helpers for tests: the wall clock as Unix seconds and timestamps as the CLI's `--now`
//! takes them. Never used to measure how fast anything is.

pub const HOUR: i64 = 3_600;
pub const DAY: i64 = 86_400;
/// 2026-12-01T00:00:00Z: the frozen clock of the audit-log and usage tests (issue 16).
pub const DEC_1_2026: i64 = 1_796_083_200;

pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `2026-03-01T09:00:00Z`, as `--now` and the rendered messages write it.
pub fn rfc3339(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
