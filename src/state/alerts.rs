//! De-duplication of enforcer alerts: a standing condition (an incomplete listing, a cap hit, an
//! expiring admin key) alerts once, then again only after its repeat interval.
//!
//! This module remembers what was raised; `notify` decides where it goes. It must never name
//! notify's alert type: an alert reaches it through the [`RaisedAlert`] trait, which `notify`
//! implements.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::state::StateError;

/// What the `alerts` table keeps of an alert: its identity across sweeps and its JSON form.
pub trait RaisedAlert: serde::Serialize {
    /// Stable identity for de-duplicating repeated alerts across sweeps.
    fn dedup_key(&self) -> String;
}

/// Whether an alert with `dedup_key` should be raised at `now`: never raised, or last raised at
/// least `repeat_interval` ago.
pub fn should_raise(
    conn: &Connection,
    dedup_key: &str,
    now: i64,
    repeat_interval: Duration,
) -> Result<bool, StateError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT last_raised FROM alerts WHERE dedup_key = ?1")?
        .query_row(params![dedup_key], |r| r.get(0))
        .optional()?;
    let interval = i64::try_from(repeat_interval.as_secs()).unwrap_or(i64::MAX);
    Ok(match last {
        None => true,
        Some(last) => now.saturating_sub(last) >= interval,
    })
}

/// Records that `alert` was raised at `now` (keeps its first time, updates the last).
pub fn record_raised(
    conn: &Connection,
    alert: &impl RaisedAlert,
    now: i64,
) -> Result<(), StateError> {
    let data = serde_json::to_string(alert).map_err(|source| StateError::Encode {
        what: "enforcer alert",
        source,
    })?;
    conn.prepare_cached(
        "INSERT INTO alerts (dedup_key, first_raised, last_raised, data) VALUES (?1, ?2, ?2, ?3)
         ON CONFLICT (dedup_key) DO UPDATE SET last_raised = excluded.last_raised,
                                               data = excluded.data",
    )?
    .execute(params![alert.dedup_key(), now, data])?;
    Ok(())
}

/// Forgets an alert once its condition cleared, so a recurrence alerts at once.
pub fn clear_alert(conn: &Connection, dedup_key: &str) -> Result<bool, StateError> {
    let n = conn
        .prepare_cached("DELETE FROM alerts WHERE dedup_key = ?1")?
        .execute(params![dedup_key])?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;

    #[derive(serde::Serialize)]
    struct KillSwitch {
        path: &'static str,
    }

    impl RaisedAlert for KillSwitch {
        fn dedup_key(&self) -> String {
            "kill-switch".to_string()
        }
    }

    #[test]
    fn raises_once_per_interval() {
        let store = Store::open_in_memory().unwrap();
        let alert = KillSwitch { path: "/run/stop" };
        let key = alert.dedup_key();
        let hour = Duration::from_secs(3600);
        store
            .with_conn(|c| {
                assert!(should_raise(c, &key, 1000, hour)?);
                record_raised(c, &alert, 1000)?;
                assert!(!should_raise(c, &key, 1000 + 3599, hour)?);
                assert!(should_raise(c, &key, 1000 + 3600, hour)?);
                record_raised(c, &alert, 5000)?;
                assert!(!should_raise(c, &key, 5001, hour)?);
                assert!(clear_alert(c, &key)?);
                assert!(should_raise(c, &key, 5001, hour)?);
                Ok(())
            })
            .unwrap();
    }
}
