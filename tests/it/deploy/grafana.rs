//! The Grafana dashboard (`deploy/grafana/`): well-formed (unique ids, no overlapping panels,
//! the datasource variable everywhere) and showing the metrics an operator needs.

use std::collections::BTreeSet;

use super::kit::{dashboard, dashboard_exprs};

#[test]
fn grafana_dashboard_is_well_formed_and_covers_the_metrics() {
    let d = dashboard();
    assert_eq!(d["uid"].as_str(), Some("keysweep"));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"organization"),
        "{vars:?}"
    );

    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id in {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            Some("${datasource}"),
            "{title}"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(
                !t["expr"].as_str().unwrap_or_default().trim().is_empty(),
                "{title}: empty query"
            );
        }
    }
    let exprs = dashboard_exprs(&d).join("\n");
    for needle in [
        "keysweep_keys_by_age",
        "keysweep_keys{",
        "keysweep_findings",
        "stage=\"final_notice\"",
        "keysweep_revocations_total",
        "keysweep_notifications_total",
        "keysweep_sweep_duration_seconds_bucket",
        "keysweep_api_requests_total",
    ] {
        assert!(
            exprs.contains(needle),
            "the dashboard shows nothing of {needle}"
        );
    }
}
