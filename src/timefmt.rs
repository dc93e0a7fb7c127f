//! How keysweep writes a moment for people and machines alike: RFC 3339 in UTC with whole
//! seconds (`2026-12-15T00:00:00Z`), the one form in notices, alerts, reports, audit messages
//! and JSON. Pure; never decides anything.

/// `ts` (Unix seconds) as RFC 3339 in UTC. A time chrono cannot represent (beyond ±262,000
/// years: none the API gives) is `@` and the number, so it never reads as a date.
pub fn rfc3339(ts: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(ts, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("@{ts}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_with_whole_seconds_and_a_marked_number_out_of_range() {
        assert_eq!(rfc3339(1_772_355_600), "2026-03-01T09:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MAX), format!("@{}", i64::MAX));
        // The same as the `%Y-%m-%dT%H:%M:%SZ` format string the reports once used.
        for ts in [1, 86_399, 4_102_444_800, -62_135_596_800] {
            let f = chrono::DateTime::from_timestamp(ts, 0).unwrap();
            assert_eq!(rfc3339(ts), f.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
    }
}
