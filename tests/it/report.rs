//! `keysweep scan`'s report rendered from a real inventory collected over HTTP from the simulated
//! API: every key appears exactly once in every format, incomplete projects are reported, and
//! the admin key appears nowhere.

use std::collections::BTreeSet;

use keysweep::report::{FindingRow, Format, render};
use keysweep::sim::{Fault, FaultKind, SimOrg};

use crate::support::listing::{
    ADMIN_KEY, NOW, active_projects, assert_no_secret, limits, scan, setup, sim,
};

fn render_to_string(
    inv: &keysweep::inventory::Inventory,
    f: &[FindingRow],
    format: Format,
) -> String {
    let mut out = Vec::new();
    render(inv, f, NOW, format, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_no_secret(&text);
    assert!(!text.contains(ADMIN_KEY));
    text
}

#[tokio::test]
async fn every_key_once_in_every_format_and_incomplete_projects_reported() {
    let org = SimOrg::generate(3, 120, 31, NOW);
    let projects = active_projects(&org);
    let sim = sim(org.clone()).await;
    sim.faults()
        .add(Fault::on_list_keys(&projects[2]).respond(FaultKind::Status(500)));
    let s = setup(&sim, limits(), |_| {});
    let inv = scan(&s).await;
    let expected: BTreeSet<String> = org
        .projects
        .iter()
        .filter(|p| p.id == projects[0] || p.id == projects[1])
        .flat_map(|p| p.keys.iter().map(|k| k.id.clone()))
        .collect();
    assert_eq!(expected.len(), 240);

    let finding = FindingRow {
        organization: "acme".into(),
        project_id: projects[0].clone(),
        key_id: expected.iter().next().unwrap().clone(),
        key_name: "k".into(),
        policy: "max-age".into(),
        action: "notify".into(),
        state: "open".into(),
        deadline: None,
        note: String::new(),
        plan: None,
    };

    // JSON: the documented shape, every key once.
    let v: serde_json::Value = serde_json::from_str(&render_to_string(
        &inv,
        std::slice::from_ref(&finding),
        Format::Json,
    ))
    .unwrap();
    let keys = v["keys"].as_array().unwrap();
    let ids: BTreeSet<String> = keys
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 240);
    assert_eq!(ids, expected);
    let ps = v["projects"].as_array().unwrap();
    assert_eq!(ps.len(), 3);
    let failed = ps.iter().find(|p| p["id"] == projects[2].as_str()).unwrap();
    assert_eq!(failed["complete"], false);
    assert!(failed["error"].as_str().unwrap().contains("HTTP 500"));
    assert_eq!(v["findings"].as_array().unwrap().len(), 1);

    // CSV: one row per key (none of them has a finding here).
    let csv_text = render_to_string(&inv, &[], Format::Csv);
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 240);
    let csv_ids: BTreeSet<String> = rows.iter().map(|r| r[3].to_string()).collect();
    assert_eq!(csv_ids, expected);

    // Table: a header, one line per key, then the summary and the incomplete project.
    let table = render_to_string(&inv, &[finding], Format::Table);
    let key_lines = table.lines().skip(1).take_while(|l| !l.is_empty()).count();
    assert_eq!(key_lines, 240);
    assert!(table.contains("240 keys in 3 projects of 1 organization; 1 INCOMPLETE"));
    assert!(table.contains(&format!("acme / {}", projects[2])));
    assert!(table.contains("Plan (what the next sweeps do"));
}
