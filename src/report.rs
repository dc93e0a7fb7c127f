//! Rendering of `keysweep scan`: the inventory (and any findings) as a table, JSON or CSV; and
//! the lines `scan`, `run --once` and the demo share (findings as rows, withheld revocations).
//!
//! Pure formatting over `Inventory` and [`FindingRow`] (built from a sweep's report by
//! [`finding_rows`], for `scan` and the demo alike): no I/O besides the writer it is given,
//! no clock (the caller passes `now`), no network. It only ever shows a key's `redacted_value`,
//! never a secret (none reaches it). Text that comes from the API (key and project names,
//! e-mails) is untrusted: control characters are neutralised in the table so a key name cannot
//! drive the terminal, and CSV cells that a spreadsheet would run as a formula are defused.
//!
//! A key's expiry: the table's EXPIRES (date and days left, `never`, `expired (date)`, or
//! `unknown` when the API's answer lacked the field); CSV `expires_at` (RFC 3339, empty when
//! none) and `expiry_state`; JSON `expires_at` as the API gives it (seconds or `null`, left out
//! when unknown) and `expiry_state` (`none`, `set`, `expired`, `unknown`).

use std::io::{self, Write};

use serde::Serialize;

use crate::config::Action;
use crate::intel::{Intel, UsageSummary};
use crate::inventory::{Expiry, ExpiryStatus, Inventory, Key};
use crate::policy::Plan;
use crate::sweep::SweepReport;
use crate::timefmt::rfc3339;

mod csv_export;
pub mod plan;
mod rows;

pub use plan::{NextStep, PlanContext, Planned, next_step};
pub use rows::FindingRow;
use rows::{access_str, days_since, unjudged_projects};

/// Output format of `keysweep scan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Findings, exemptions and the plan of a sweep as report rows, each with its [`NextStep`].
pub fn finding_rows(report: &SweepReport, ctx: &PlanContext, now: i64) -> Vec<FindingRow> {
    let planned = Planned::index(&report.plan);
    let mut rows: Vec<FindingRow> = report
        .findings
        .iter()
        .map(|v| {
            let word = planned
                .get(&v.finding.id)
                .copied()
                .unwrap_or(Planned::NotDue);
            let step = next_step(&v.finding, word, ctx, now);
            let step = match v.rotation {
                Some((start, deadline)) => plan::rotation_step(step, start, deadline, now),
                None => step,
            };
            finding_row(v, step)
        })
        .collect();
    for (key, reason) in &report.exempted {
        let rail = ctx.exemption_key(&key.organization, &key.project_id, &key.id);
        let step = plan::nothing("exempted", Some(rail), format!("exempted: {reason}"));
        rows.push(exemption_row(key, "exempted", step));
    }
    // The exemption's end goes in `why`, not in DEADLINE: no action falls due then.
    for (key, reason, until) in &report.expired_exemptions {
        let ended = until.map_or_else(String::new, |t| format!(" at {}", rfc3339(t)));
        let why = format!("exemption expired{ended} ({reason}): the key's findings proceed");
        let step = plan::nothing("exemption_expired", None, why);
        rows.push(exemption_row(key, "exemption_expired", step));
    }
    rows
}

fn finding_row(v: &crate::sweep::FindingView, step: NextStep) -> FindingRow {
    FindingRow {
        organization: v.finding.id.organization.clone(),
        project_id: v.finding.id.project_id.clone(),
        key_id: v.finding.id.key_id.clone(),
        key_name: v.finding.key_name.clone(),
        policy: v.finding.id.policy.clone(),
        action: match v.finding.action {
            Action::Notify => "notify".into(),
            Action::Revoke => "revoke".into(),
            Action::Expire => "expire".into(),
        },
        state: step.state.clone(),
        deadline: v.finding.action.enforces().then_some(v.finding.deadline),
        note: v.finding.reason.clone(),
        plan: Some(step),
    }
}

/// One line per revocation the plan withheld, with the safety rail that withheld it (for
/// `run --once` and the demo).
pub fn write_withheld(out: &mut dyn Write, plan: &Plan) -> io::Result<()> {
    for w in &plan.withheld {
        writeln!(
            out,
            "  withheld ({}): {}",
            plan::rail_key(w.reason),
            w.action.describe()
        )?;
    }
    Ok(())
}

/// A key that no policy acts on because of an exemption (current or lapsed).
fn exemption_row(key: &Key, state: &str, step: NextStep) -> FindingRow {
    FindingRow {
        organization: key.organization.clone(),
        project_id: key.project_id.clone(),
        key_id: key.id.clone(),
        key_name: key.name.clone(),
        policy: "-".into(),
        action: "none".into(),
        state: state.into(),
        deadline: None,
        note: step.why.clone(),
        plan: Some(step),
    }
}

/// Writes the report for `inv` (and `findings`, if any) in `format`.
pub fn render(
    inv: &Inventory,
    findings: &[FindingRow],
    now: i64,
    format: Format,
    out: &mut dyn Write,
) -> io::Result<()> {
    render_with_intel(inv, findings, now, format, None, out)
}

/// [`render`], with what the audit log and usage said of each key (`scan`): JSON's
/// `created_by`, `scopes` and `usage` (null when unknown, as without `intel`), and the table's
/// CREATED BY column (only when `intel` is given).
pub fn render_with_intel(
    inv: &Inventory,
    findings: &[FindingRow],
    now: i64,
    format: Format,
    intel: Option<&Intel>,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Table => render_table(inv, findings, now, intel, out),
        Format::Json => render_json(inv, findings, now, intel, out),
        Format::Csv => csv_export::render_csv(inv, findings, now, out),
    }
}

// ---- shared helpers ----------------------------------------------------------------------------

fn date(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| ts.to_string())
}

/// The EXPIRES cell: the date and how far off it is, `never`, `expired (date)`, or `unknown`
/// when the API's answer did not carry the field (an older API version).
fn expires_cell(e: Expiry, now: i64) -> String {
    match e {
        Expiry::Never => "never".to_string(),
        Expiry::Unknown => "unknown".to_string(),
        Expiry::At(at) if e.is_expired(now) => format!("expired ({})", date(at)),
        Expiry::At(at) => format!("{} (in {}d)", date(at), days_since(now, at)),
    }
}

/// Replaces control characters (ANSI escapes, newlines, …) so API-supplied text stays on its
/// line and cannot drive the terminal.
fn clean(s: &str) -> String {
    crate::text::terminal(s)
}

/// `1 key`, `2 keys`.
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

// ---- table -------------------------------------------------------------------------------------

fn write_aligned(out: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let mut widths = vec![0usize; cols];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = w - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn key_row(k: &Key, now: i64) -> Vec<String> {
    let project = match &k.project_name {
        Some(n) => format!("{} ({})", k.project_id, n),
        None => k.project_id.clone(),
    };
    let owner = format!(
        "{} ({}, {})",
        k.owner.display(),
        k.owner.kind.as_str(),
        access_str(k.owner_access)
    );
    let created = format!(
        "{} ({}d)",
        date(k.created_at),
        days_since(k.created_at, now)
    );
    let last_used = match k.last_used_at {
        Some(t) => format!("{} ({}d idle)", date(t), days_since(t, now)),
        None if k.last_used_unknown => "unknown".to_string(),
        None => "never".to_string(),
    };
    let expires = expires_cell(k.expires_at, now);
    [
        k.organization.as_str(),
        &project,
        &k.id,
        &k.name,
        &k.redacted_value,
        &owner,
        &created,
        &last_used,
        &expires,
    ]
    .iter()
    .map(|s| clean(s))
    .collect()
}

fn render_table(
    inv: &Inventory,
    findings: &[FindingRow],
    now: i64,
    intel: Option<&Intel>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let header = [
        "ORGANIZATION",
        "PROJECT",
        "KEY",
        "NAME",
        "VALUE",
        "OWNER",
        "CREATED (AGE)",
        "LAST USED",
        "EXPIRES",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    rows.extend(inv.keys().map(|k| key_row(k, now)));
    if let Some(intel) = intel {
        // After OWNER: who created the key, per the audit log (`-`: unknown).
        rows[0].insert(6, "CREATED BY".to_string());
        for (row, k) in rows.iter_mut().skip(1).zip(inv.keys()) {
            let by = intel.key(&k.organization, &k.id).created_by.unwrap_or("-");
            row.insert(6, clean(by));
        }
    }
    write_aligned(out, &rows)?;

    let projects: usize = inv.orgs.iter().map(|o| o.projects.len()).sum();
    let incomplete = incomplete_listings(inv);
    writeln!(out)?;
    writeln!(
        out,
        "{} in {} of {}; {}",
        counted(inv.keys().count(), "key", "keys"),
        counted(projects, "project", "projects"),
        counted(inv.orgs.len(), "organization", "organizations"),
        if incomplete.is_empty() {
            "every listing complete".to_string()
        } else {
            format!("{} INCOMPLETE", incomplete.len())
        }
    )?;
    if !incomplete.is_empty() {
        writeln!(out)?;
        writeln!(out, "Incomplete listings:")?;
        for (what, reason) in &incomplete {
            writeln!(out, "  {}: {}", clean(what), clean(reason))?;
        }
    }
    writeln!(out)?;
    write_plan_section(out, inv, findings)
}

/// The plan under the inventory table: each key with a finding, then what the others get.
fn write_plan_section(
    out: &mut dyn Write,
    inv: &Inventory,
    findings: &[FindingRow],
) -> io::Result<()> {
    let unjudged = unjudged_projects(inv);
    let in_gaps = (inv.keys())
        .filter(|k| unjudged.contains(&(k.organization.as_str(), k.project_id.as_str())))
        .count();
    if findings.is_empty() && unjudged.is_empty() {
        writeln!(out, "Plan: nothing; no key violates a policy.")?;
    } else if findings.is_empty() {
        writeln!(
            out,
            "Plan: nothing in the projects listed completely; the keys of the incomplete \
             listings above ({}) are not judged, and no sweep acts on them until they list \
             completely.",
            counted(in_gaps, "key listed", "keys listed")
        )?;
    } else {
        writeln!(
            out,
            "Plan (what the next sweeps do to each key with a finding, and what withholds it):"
        )?;
        write_plan_table(out, findings)?;
        let planned: std::collections::HashSet<(&str, &str, &str)> = findings
            .iter()
            .map(|f| {
                (
                    f.organization.as_str(),
                    f.project_id.as_str(),
                    f.key_id.as_str(),
                )
            })
            .collect();
        let others = inv
            .keys()
            .filter(|k| {
                !planned.contains(&(
                    k.organization.as_str(),
                    k.project_id.as_str(),
                    k.id.as_str(),
                )) && !unjudged.contains(&(k.organization.as_str(), k.project_id.as_str()))
            })
            .count();
        let others = counted(others, "other key", "other keys");
        writeln!(out, "{others}: nothing planned.")?;
        if in_gaps > 0 {
            writeln!(
                out,
                "{} in the incomplete listings above: not judged (no sweep acts on them until \
                 they list completely).",
                counted(in_gaps, "key", "keys")
            )?;
        }
    }
    Ok(())
}

/// What was not listed in full, and why: failed organisations first, then their incomplete
/// projects.
fn incomplete_listings(inv: &Inventory) -> Vec<(String, String)> {
    inv.orgs
        .iter()
        .flat_map(|o| {
            let org_err = o
                .error
                .as_ref()
                .map(|e| (format!("{} (organization)", o.organization), e.clone()));
            org_err
                .into_iter()
                .chain(o.projects.iter().filter_map(|p| match &p.listing {
                    crate::inventory::Listing::Complete => None,
                    crate::inventory::Listing::Incomplete(reason) => Some((
                        format!(
                            "{} / {} ({})",
                            o.organization,
                            p.project.id,
                            p.project.display_name()
                        ),
                        reason.clone(),
                    )),
                }))
        })
        .collect()
}

fn time_or_dash(t: Option<i64>) -> String {
    t.map(rfc3339).unwrap_or_else(|| "-".to_string())
}

fn write_plan_table(out: &mut dyn Write, findings: &[FindingRow]) -> io::Result<()> {
    let header = [
        "ORGANIZATION",
        "PROJECT",
        "KEY",
        "NAME",
        "POLICY",
        "STATE",
        "DEADLINE",
        "NEXT",
        "WHEN",
        "THEN",
        "WITHHELD BY",
        "WHY",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for f in findings {
        let deadline = time_or_dash(f.deadline);
        let (next, when, then, withheld_by, why) = match &f.plan {
            Some(p) => (
                p.next,
                time_or_dash(p.next_at),
                match p.then_at {
                    Some(t) => format!("{} {}", p.then, rfc3339(t)),
                    None => p.then.to_string(),
                },
                p.withheld_by.clone().unwrap_or_else(|| "-".into()),
                p.why.clone(),
            ),
            None => ("-", "-".into(), "-".into(), "-".into(), f.note.clone()),
        };
        rows.push(
            [
                f.organization.as_str(),
                &f.project_id,
                &f.key_id,
                &f.key_name,
                &f.policy,
                &f.state,
                &deadline,
                next,
                &when,
                &then,
                &withheld_by,
                &why,
            ]
            .iter()
            .map(|s| clean(s))
            .collect(),
        );
    }
    write_aligned(out, &rows)
}

// ---- JSON --------------------------------------------------------------------------------------

#[derive(Serialize)]
struct JsonReport<'a> {
    generated_at: i64,
    /// `generated_at` in RFC 3339.
    generated_at_rfc3339: String,
    complete: bool,
    organizations: Vec<JsonOrg<'a>>,
    projects: Vec<JsonProject<'a>>,
    keys: Vec<JsonKey<'a>>,
    findings: Vec<JsonFinding<'a>>,
}

/// A finding as JSON: the row's fields as they always were (`deadline` in Unix seconds), its
/// RFC 3339 companion, and the `plan` (times in RFC 3339).
#[derive(Serialize)]
struct JsonFinding<'a> {
    #[serde(flatten)]
    row: &'a FindingRow,
    deadline_rfc3339: Option<String>,
}

#[derive(Serialize)]
struct JsonOrg<'a> {
    organization: &'a str,
    complete: bool,
    error: Option<&'a str>,
    admin_keys: &'a [crate::inventory::AdminKeyInfo],
}

#[derive(Serialize)]
struct JsonProject<'a> {
    organization: &'a str,
    id: &'a str,
    name: Option<&'a str>,
    archived: bool,
    complete: bool,
    error: Option<&'a str>,
    keys: usize,
}

#[derive(Serialize)]
struct JsonKey<'a> {
    organization: &'a str,
    project_id: &'a str,
    project_name: Option<&'a str>,
    id: &'a str,
    name: &'a str,
    redacted_value: &'a str,
    owner_type: &'static str,
    /// What a human reads: e-mail, else name, else id.
    owner: &'a str,
    owner_id: Option<&'a str>,
    owner_name: Option<&'a str>,
    owner_email: Option<&'a str>,
    owner_project_access: &'static str,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds, `null` when no use is recorded. Left out when the API's answer omitted
    /// the field (the key's last use is unknown), like `expires_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_used_at: Option<Option<i64>>,
    age_days: i64,
    idle_days: Option<i64>,
    /// Unix seconds, `null` when the key never expires: as the API gives it. Left out when the
    /// API's answer did not carry the field (an older version), so `null` keeps meaning "never".
    #[serde(skip_serializing_if = "Expiry::is_unknown")]
    expires_at: Expiry,
    /// `none`, `set`, `expired` or `unknown` at `generated_at` (the metrics' words): says
    /// outright what a reader that takes a missing field for `null` (jq does) would confuse.
    expiry_state: &'static str,
    /// The e-mail of whoever created the key, per the audit log; `null` when unknown.
    created_by: Option<&'a str>,
    /// The key's scopes rebuilt from the audit log (`[]`: all permissions); `null` when unknown.
    scopes: Option<&'a [String]>,
    /// `{window_days, requests, cost_usd}` from the usage endpoints; `null` when unavailable.
    usage: Option<UsageSummary>,
}

fn render_json(
    inv: &Inventory,
    findings: &[FindingRow],
    now: i64,
    intel: Option<&Intel>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let no_intel = Intel::default();
    let intel = intel.unwrap_or(&no_intel);
    let report = JsonReport {
        generated_at: now,
        generated_at_rfc3339: rfc3339(now),
        complete: inv.is_complete(),
        organizations: inv
            .orgs
            .iter()
            .map(|o| JsonOrg {
                organization: &o.organization,
                complete: o.is_complete(),
                error: o.error.as_deref(),
                admin_keys: &o.admin_keys,
            })
            .collect(),
        projects: inv
            .orgs
            .iter()
            .flat_map(|o| o.projects.iter())
            .map(|p| JsonProject {
                organization: &p.project.organization,
                id: &p.project.id,
                name: p.project.name.as_deref(),
                archived: p.project.archived,
                complete: p.listing.is_complete(),
                error: match &p.listing {
                    crate::inventory::Listing::Complete => None,
                    crate::inventory::Listing::Incomplete(r) => Some(r.as_str()),
                },
                keys: p.keys.len(),
            })
            .collect(),
        keys: inv
            .keys()
            .map(|k| JsonKey {
                organization: &k.organization,
                project_id: &k.project_id,
                project_name: k.project_name.as_deref(),
                id: &k.id,
                name: &k.name,
                redacted_value: &k.redacted_value,
                owner_type: k.owner.kind.as_str(),
                owner: k.owner.display(),
                owner_id: k.owner.id.as_deref(),
                owner_name: k.owner.name.as_deref(),
                owner_email: k.owner.email.as_deref(),
                owner_project_access: access_str(k.owner_access),
                created_at: k.created_at,
                last_used_at: (!k.last_used_unknown).then_some(k.last_used_at),
                age_days: days_since(k.created_at, now),
                idle_days: k.last_used_at.map(|t| days_since(t, now)),
                expires_at: k.expires_at,
                expiry_state: ExpiryStatus::of(k.expires_at, now).as_str(),
                created_by: intel.key(&k.organization, &k.id).created_by,
                scopes: intel.key(&k.organization, &k.id).scopes,
                usage: intel.key(&k.organization, &k.id).usage,
            })
            .collect(),
        findings: findings
            .iter()
            .map(|row| JsonFinding {
                row,
                deadline_rfc3339: row.deadline.map(rfc3339),
            })
            .collect(),
    };
    let doc = serde_json::to_string_pretty(&report).map_err(io::Error::other)?;
    writeln!(out, "{}", crate::text::json(&doc))
}

#[cfg(test)]
mod tests {
    use super::rows::DAY;
    use super::*;
    use crate::inventory::{
        Key, Listing, OrgInventory, Owner, OwnerAccess, OwnerType, ProjectInventory, ProjectRef,
    };

    const NOW: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn key(id: &str, name: &str, owner: Owner, last_used: Option<i64>) -> Key {
        Key {
            organization: "acme".into(),
            project_id: "proj_1".into(),
            project_name: Some("Payments".into()),
            id: id.into(),
            name: name.into(),
            redacted_value: "sk-pro...Qx9".into(),
            created_at: NOW - 400 * DAY,
            last_used_at: last_used,
            last_used_unknown: false,
            owner,
            owner_access: OwnerAccess::Active,
            expires_at: Expiry::Never,
        }
    }

    fn user() -> Owner {
        Owner {
            kind: OwnerType::User,
            id: Some("user_1".into()),
            name: Some("Dana".into()),
            email: Some("dana@example.com".into()),
        }
    }

    fn inventory() -> Inventory {
        let sa = Owner {
            kind: OwnerType::ServiceAccount,
            id: Some("svc_acct_1".into()),
            name: Some("batch-bot".into()),
            email: None,
        };
        Inventory {
            orgs: vec![OrgInventory {
                unauthorized: false,
                organization: "acme".into(),
                error: None,
                admin_keys: vec![],
                projects: vec![
                    ProjectInventory {
                        project: ProjectRef {
                            organization: "acme".into(),
                            id: "proj_1".into(),
                            name: Some("Payments".into()),
                            archived: false,
                        },
                        keys: vec![
                            key("key_1", "ci", user(), Some(NOW - 3 * DAY)),
                            key("key_2", "=cmd()\x1b[31m", sa, None),
                        ],
                        listing: Listing::Complete,
                    },
                    ProjectInventory {
                        project: ProjectRef {
                            organization: "acme".into(),
                            id: "proj_2".into(),
                            name: None,
                            archived: false,
                        },
                        keys: vec![],
                        listing: Listing::Incomplete("HTTP 500 server error".into()),
                    },
                ],
            }],
        }
    }

    fn finding() -> FindingRow {
        FindingRow {
            organization: "acme".into(),
            project_id: "proj_1".into(),
            key_id: "key_1".into(),
            key_name: "ci".into(),
            policy: "max-age".into(),
            action: "revoke".into(),
            state: "warned".into(),
            deadline: Some(NOW + 7 * DAY),
            note: "older than 365d".into(),
            plan: Some(NextStep {
                state: "warned".into(),
                next: "final-notice",
                next_at: Some(NOW + 6 * DAY),
                then: "nothing",
                then_at: None,
                withheld_by: Some("safety.service_account_keys".into()),
                why: "would revoke, but a service-account key is only reported".into(),
            }),
        }
    }

    fn rendered(format: Format, findings: &[FindingRow]) -> String {
        let mut buf = Vec::new();
        render(&inventory(), findings, NOW, format, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn table_lists_every_key_incomplete_projects_and_findings() {
        let t = rendered(Format::Table, &[finding()]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ORGANIZATION"));
        let k1 = lines[1];
        for part in [
            "acme",
            "proj_1 (Payments)",
            "key_1",
            "ci",
            "sk-pro...Qx9",
            "dana@example.com (user, active)",
            "2024-11-27 (400d)",
            "2025-12-29 (3d idle)",
        ] {
            assert!(k1.contains(part), "{part:?} missing from {k1:?}");
        }
        let k2 = lines[2];
        assert!(k2.contains("batch-bot (service_account, active)"), "{k2}");
        // Never used, and never expires.
        assert!(
            k2.contains("(400d)  never  ") && k2.ends_with("  never"),
            "{k2}"
        );
        // The escape character never reaches the terminal.
        assert!(!t.contains('\x1b'));
        assert!(t.contains("2 keys in 2 projects of 1 organization; 1 INCOMPLETE"));
        assert!(t.contains("acme / proj_2 (proj_2): HTTP 500 server error"));
        assert!(t.contains("Plan (what the next sweeps do"));
        let plan = t.lines().find(|l| l.contains("max-age")).unwrap();
        for part in [
            "2026-01-08T00:00:00Z",
            "final-notice  2026-01-07T00:00:00Z  nothing  safety.service_account_keys",
        ] {
            assert!(plan.contains(part), "{part:?} missing from {plan:?}");
        }
        assert!(!t.contains("service_account_notify_only"));
        assert!(t.contains("1 other key: nothing planned."));
    }

    #[test]
    fn table_without_findings_says_nothing_is_planned() {
        let mut inv = inventory();
        inv.orgs[0].projects.truncate(1);
        let mut buf = Vec::new();
        render(&inv, &[], NOW, Format::Table, &mut buf).unwrap();
        let t = String::from_utf8(buf).unwrap();
        assert!(
            t.contains("Plan: nothing; no key violates a policy."),
            "{t}"
        );
    }

    /// A key of a project whose listing stopped short was not judged: no output says "nothing"
    /// of it (the table counts it apart; CSV says `unknown`, withheld by the listing).
    #[test]
    fn keys_of_an_incomplete_listing_are_not_judged_in_any_format() {
        let mut inv = inventory();
        let mut k = inv.orgs[0].projects[0].keys.remove(1);
        k.project_id = "proj_2".into();
        let gap = k.id.clone();
        inv.orgs[0].projects[1].keys.push(k);
        let out = |format: Format, findings: &[FindingRow]| {
            let mut buf = Vec::new();
            render(&inv, findings, NOW, format, &mut buf).unwrap();
            String::from_utf8(buf).unwrap()
        };
        let t = out(Format::Table, &[]);
        assert!(!t.contains("no key violates"), "{t}");
        assert!(
            t.contains("incomplete listings above (1 key listed) are not judged"),
            "{t}"
        );
        let t = out(Format::Table, &[finding()]);
        assert!(t.contains("0 other keys: nothing planned."), "{t}");
        assert!(
            t.contains("1 key in the incomplete listings above: not judged"),
            "{t}"
        );
        let text = out(Format::Csv, &[]);
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let headers = r.headers().unwrap().clone();
        let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        let row = rows.iter().find(|r| r[col("key_id")] == *gap).unwrap();
        assert_eq!(&row[col("next_action")], "unknown");
        assert_eq!(&row[col("withheld_by")], "listing incomplete");
        let complete = rows.iter().find(|r| &r[col("key_id")] == "key_1").unwrap();
        assert_eq!(&complete[col("next_action")], "nothing");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&rendered(Format::Json, &[finding()])).unwrap();
        assert_eq!(v["generated_at"], NOW);
        assert_eq!(v["complete"], false);
        let projects = v["projects"].as_array().unwrap();
        assert_eq!(projects.len(), 2);
        assert_eq!(projects[0]["organization"], "acme");
        assert_eq!(projects[0]["id"], "proj_1");
        assert_eq!(projects[0]["name"], "Payments");
        assert_eq!(projects[0]["complete"], true);
        assert!(projects[0]["error"].is_null());
        assert_eq!(projects[1]["complete"], false);
        assert_eq!(projects[1]["error"], "HTTP 500 server error");
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        let k = &keys[0];
        assert_eq!(k["organization"], "acme");
        assert_eq!(k["project_id"], "proj_1");
        assert_eq!(k["project_name"], "Payments");
        assert_eq!(k["id"], "key_1");
        assert_eq!(k["name"], "ci");
        assert_eq!(k["redacted_value"], "sk-pro...Qx9");
        assert_eq!(k["owner_type"], "user");
        assert_eq!(k["owner"], "dana@example.com");
        assert_eq!(k["owner_email"], "dana@example.com");
        assert_eq!(k["owner_project_access"], "active");
        assert_eq!(k["created_at"], NOW - 400 * DAY);
        assert_eq!(k["last_used_at"], NOW - 3 * DAY);
        assert!(keys[1]["last_used_at"].is_null());
        assert_eq!(keys[1]["owner_type"], "service_account");
        assert_eq!(keys[1]["owner"], "batch-bot");
        assert_eq!(v["findings"][0]["policy"], "max-age");
        assert_eq!(v["findings"][0]["deadline"], NOW + 7 * DAY);
        assert_eq!(v["findings"][0]["deadline_rfc3339"], "2026-01-08T00:00:00Z");
        assert_eq!(v["generated_at_rfc3339"], "2026-01-01T00:00:00Z");
        let plan = &v["findings"][0]["plan"];
        assert_eq!(plan["next"], "final-notice");
        assert_eq!(plan["next_at"], "2026-01-07T00:00:00Z");
        assert!(plan["then_at"].is_null());
        assert_eq!(plan["withheld_by"], "safety.service_account_keys");
    }

    #[test]
    fn csv_one_row_per_key_and_finding_with_the_plan() {
        let text = rendered(Format::Csv, &[finding(), finding()]);
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let headers = r.headers().unwrap().clone();
        let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        // key_1 has two findings, key_2 none.
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[0][col("key_id")], "key_1");
        assert_eq!(&rows[1][col("key_id")], "key_1");
        assert_eq!(&rows[0][col("deadline")], "2026-01-08T00:00:00Z");
        assert_eq!(&rows[0][col("next_action")], "final-notice");
        assert_eq!(&rows[0][col("next_at")], "2026-01-07T00:00:00Z");
        assert_eq!(&rows[0][col("withheld_by")], "safety.service_account_keys");
        assert_eq!(&rows[2][col("key_id")], "key_2");
        assert_eq!(&rows[2][col("policy")], "");
        assert_eq!(&rows[2][col("next_action")], "nothing");
    }

    #[test]
    fn csv_one_row_per_key_and_formulas_defused() {
        let text = rendered(Format::Csv, &[]);
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let headers = r.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
        assert_eq!(&rows[0][col("key_id")], "key_1");
        assert_eq!(&rows[0][col("owner_email")], "dana@example.com");
        assert_eq!(&rows[0][col("created_at")], "2024-11-27T00:00:00Z");
        assert_eq!(&rows[0][col("age_days")], "400");
        assert_eq!(&rows[0][col("idle_days")], "3");
        assert_eq!(&rows[1][col("last_used_at")], "");
        assert!(rows[1][col("name")].starts_with("'="));
    }

    /// `inventory()` with proj_1's keys expiring in every way: key_1 in 10 days, key_2 never,
    /// key_3 expired yesterday, key_4 unknown (an answer without the field).
    fn expiry_inventory() -> Inventory {
        let mut inv = inventory();
        let keys = &mut inv.orgs[0].projects[0].keys;
        keys[0].expires_at = Expiry::At(NOW + 10 * DAY + 3600);
        keys.push(Key {
            expires_at: Expiry::At(NOW - DAY),
            ..key("key_3", "expired", user(), None)
        });
        keys.push(Key {
            expires_at: Expiry::Unknown,
            ..key("key_4", "old-api", user(), None)
        });
        inv
    }

    fn expiry_rendered(format: Format) -> String {
        let mut buf = Vec::new();
        render(&expiry_inventory(), &[], NOW, format, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn table_shows_each_keys_expiry() {
        let t = expiry_rendered(Format::Table);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("  EXPIRES"), "{}", lines[0]);
        for (i, want) in [
            "2026-01-11 (in 10d)",
            "never",
            "expired (2025-12-31)",
            "unknown",
        ]
        .iter()
        .enumerate()
        {
            let line = lines[i + 1];
            assert!(line.ends_with(&format!("  {want}")), "{want}: {line}");
        }
    }

    #[test]
    fn json_gives_expires_at_as_the_api_does_and_omits_it_when_unknown() {
        let v: serde_json::Value = serde_json::from_str(&expiry_rendered(Format::Json)).unwrap();
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys[0]["expires_at"], NOW + 10 * DAY + 3600);
        assert_eq!(keys[0]["expiry_state"], "set");
        assert!(keys[1]["expires_at"].is_null() && keys[1].get("expires_at").is_some());
        assert_eq!(keys[1]["expiry_state"], "none");
        assert_eq!(keys[2]["expires_at"], NOW - DAY);
        assert_eq!(keys[2]["expiry_state"], "expired");
        assert!(keys[3].get("expires_at").is_none(), "{}", keys[3]);
        assert_eq!(keys[3]["expiry_state"], "unknown");
    }

    #[test]
    fn csv_gives_rfc3339_or_empty_and_the_state() {
        let text = expiry_rendered(Format::Csv);
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let headers = r.headers().unwrap().clone();
        let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (&r[col("expires_at")], &r[col("expiry_state")]))
            .collect();
        assert_eq!(
            got,
            [
                ("2026-01-11T01:00:00Z", "set"),
                ("", "none"),
                ("2025-12-31T00:00:00Z", "expired"),
                ("", "unknown"),
            ]
        );
    }

    #[test]
    fn empty_inventory_renders_in_every_format() {
        for f in [Format::Table, Format::Json, Format::Csv] {
            let mut buf = Vec::new();
            render(&Inventory::default(), &[], NOW, f, &mut buf).unwrap();
            assert!(!buf.is_empty());
        }
    }
}
