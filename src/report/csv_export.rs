//! `scan --format csv`: one row per key and finding, every cell a spreadsheet would evaluate as
//! a formula defused, a key of an incomplete listing said to be unknown, never "nothing". It
//! renders what the report hands it and decides nothing.

use std::io::{self, Write};

use crate::inventory::{ExpiryStatus, Inventory, Key};
use crate::timefmt::rfc3339;

use super::rows::{FindingRow, access_str, days_since, unjudged_projects};

/// A cell a spreadsheet would evaluate as a formula gets a leading `'`.
fn defuse(s: &str) -> std::borrow::Cow<'_, str> {
    crate::text::csv(s).into()
}

const CSV_HEADER: [&str; 27] = [
    "organization",
    "project_id",
    "project_name",
    "key_id",
    "name",
    "redacted_value",
    "owner_type",
    "owner",
    "owner_email",
    "owner_project_access",
    "created_at",
    "age_days",
    "last_used_at",
    "idle_days",
    "expires_at",
    "expiry_state",
    "policy",
    "action",
    "state",
    "deadline",
    "reason",
    "next_action",
    "next_at",
    "then",
    "then_at",
    "withheld_by",
    "why",
];

/// One row per key and finding; a key without findings has one row with empty finding columns
/// (and `next_action` = `nothing`). Findings of keys no longer listed (closed as gone) follow.
pub(super) fn render_csv(
    inv: &Inventory,
    findings: &[FindingRow],
    now: i64,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut by_key: std::collections::HashMap<(&str, &str, &str), Vec<&FindingRow>> =
        std::collections::HashMap::new();
    for f in findings {
        by_key
            .entry((&f.organization, &f.project_id, &f.key_id))
            .or_default()
            .push(f);
    }
    let mut w = csv::Writer::from_writer(out);
    w.write_record(CSV_HEADER)?;
    let unjudged = unjudged_projects(inv);
    for k in inv.keys() {
        let key = key_cells(k, now);
        match by_key.remove(&(
            k.organization.as_str(),
            k.project_id.as_str(),
            k.id.as_str(),
        )) {
            Some(rows) => {
                for f in rows {
                    w.write_record(key.iter().cloned().chain(finding_cells(Some(f))))?;
                }
            }
            None if unjudged.contains(&(k.organization.as_str(), k.project_id.as_str())) => {
                w.write_record(key.iter().cloned().chain(unjudged_cells()))?;
            }
            None => w.write_record(key.iter().cloned().chain(finding_cells(None)))?,
        }
    }
    // Findings whose key the listing no longer has, in the order they came.
    for f in findings {
        if by_key.contains_key(&(
            f.organization.as_str(),
            f.project_id.as_str(),
            f.key_id.as_str(),
        )) {
            let mut key = vec![String::new(); 16];
            key[0] = defuse(&f.organization).into_owned();
            key[1] = defuse(&f.project_id).into_owned();
            key[3] = defuse(&f.key_id).into_owned();
            key[4] = defuse(&f.key_name).into_owned();
            w.write_record(key.into_iter().chain(finding_cells(Some(f))))?;
        }
    }
    w.flush()
}

/// The 16 inventory columns of a key.
fn key_cells(k: &Key, now: i64) -> Vec<String> {
    let (last_used, idle) = match k.last_used_at {
        Some(t) => (rfc3339(t), days_since(t, now).to_string()),
        None if k.last_used_unknown => ("unknown".to_string(), String::new()),
        None => (String::new(), String::new()),
    };
    vec![
        defuse(&k.organization).into_owned(),
        defuse(&k.project_id).into_owned(),
        defuse(k.project_name.as_deref().unwrap_or("")).into_owned(),
        defuse(&k.id).into_owned(),
        defuse(&k.name).into_owned(),
        defuse(&k.redacted_value).into_owned(),
        k.owner.kind.as_str().to_string(),
        defuse(k.owner.display()).into_owned(),
        defuse(k.owner.email.as_deref().unwrap_or("")).into_owned(),
        access_str(k.owner_access).to_string(),
        rfc3339(k.created_at),
        days_since(k.created_at, now).to_string(),
        last_used,
        idle,
        // Empty when the key has no expiry (never, or unknown); `expiry_state` tells which.
        k.expires_at.at().map(rfc3339).unwrap_or_default(),
        ExpiryStatus::of(k.expires_at, now).as_str().to_string(),
    ]
}

/// The 11 finding and plan columns of a key whose project's listing stopped short: nothing is
/// known of it, and nothing is done to it until its project lists completely.
fn unjudged_cells() -> Vec<String> {
    let mut cells = vec![String::new(); 11];
    cells[5] = "unknown".into();
    cells[9] = "listing incomplete".into();
    cells[10] = "the project's listing is incomplete: no sweep judges or acts on its keys until \
                 it lists completely"
        .into();
    cells
}

/// The 11 finding and plan columns: empty but `next_action` = `nothing` without a finding.
fn finding_cells(f: Option<&FindingRow>) -> Vec<String> {
    let Some(f) = f else {
        let mut cells = vec![String::new(); 11];
        cells[5] = "nothing".into();
        return cells;
    };
    let time = |t: Option<i64>| t.map(rfc3339).unwrap_or_default();
    let mut cells = vec![
        defuse(&f.policy).into_owned(),
        f.action.clone(),
        f.state.clone(),
        time(f.deadline),
        defuse(&f.note).into_owned(),
    ];
    match &f.plan {
        Some(p) => cells.extend([
            p.next.to_string(),
            time(p.next_at),
            p.then.to_string(),
            time(p.then_at),
            p.withheld_by.clone().unwrap_or_default(),
            defuse(&p.why).into_owned(),
        ]),
        None => cells.extend(std::iter::repeat_n(String::new(), 6)),
    }
    cells
}
