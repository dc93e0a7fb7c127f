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
        "keysweep_keys_by_expiry",
        "keysweep_keys_expiring_within_7d",
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

/// The panel for keys that never expire queries the series the daemon exports for such a key:
/// a sweep's tally of one never-expiring key, through the real `Metrics`, yields a sample whose
/// name and `expiry` label the panel's query selects.
#[test]
fn grafana_shows_keys_that_never_expire_from_an_exported_series() {
    let d = dashboard();
    let panels: Vec<&serde_json::Value> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .filter(|p| {
            p["title"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase()
                .contains("never expire")
        })
        .collect();
    assert!(!panels.is_empty(), "no panel shows keys that never expire");

    let exported = never_expiring_key_metrics();
    let selector = regex::Regex::new(r"(keysweep_[a-z0-9_]+)\{([^}]*)\}").unwrap();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap_or_default();
            let caps = selector
                .captures(expr)
                .unwrap_or_else(|| panic!("{title}: no metric selector in {expr}"));
            let (name, matchers) = (&caps[1], &caps[2]);
            assert!(
                matchers.contains(r#"expiry="none""#),
                "{title}: {expr} does not select keys without expiry"
            );
            let sample = exported
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(r#"expiry="none""#))
                .unwrap_or_else(|| {
                    panic!(
                        "{title}: the daemon exports no {name} with expiry=\"none\":\n{exported}"
                    )
                });
            assert!(sample.ends_with(" 1"), "{title}: {sample}");
        }
    }
}

/// `/metrics` as a sweep leaves it after listing one project with one key that never expires.
fn never_expiring_key_metrics() -> String {
    let m = keysweep::metrics::Metrics::new();
    m.observe_inventory(
        "acme",
        &[super::kit::one_key_project(
            keysweep::inventory::Expiry::Never,
            86_400,
        )],
    );
    m.encode()
}
