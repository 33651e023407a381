//! What SREs read names only what the workers export: every metric in the Grafana
//! dashboard and in the alert rules is checked against a live `/metrics`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use skeelo_domain::event::EventType::*;
use skeelo_domain::sample;
use skeelo_tests::World;

/// Metric names a live worker exports (histograms with their series suffixes).
async fn exported() -> BTreeSet<String> {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    let addr = w.start_fleet(settings).await.expect("fleet");
    w.publish(&sample::event(Sync, "OB1", 1, &["SKEELO-EBOOKS"]))
        .await
        .expect("published");
    w.publish_raw("contract.block", "junk", b"junk")
        .await
        .expect("published");
    w.wait_results(2, Duration::from_secs(30))
        .await
        .expect("results");
    tokio::time::sleep(Duration::from_secs(6)).await; // the queue watcher's first pass
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    w.close().await.expect("cleanup");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every `skeelo_…` name in a PromQL expression.
fn named_in(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("skeelo_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        found.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    found
}

fn dashboard_exprs() -> Vec<String> {
    let dash: Value = serde_json::from_str(include_str!(
        "../../deploy/grafana/dashboards/skeelo-bridge.json"
    ))
    .expect("the dashboard is JSON");
    dash["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

fn alert_exprs() -> Vec<String> {
    let rules: Value = serde_yaml::from_str(include_str!("../../deploy/prometheus/alerts.yml"))
        .expect("the alert rules are YAML");
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_exported_metrics() {
    let exported = exported().await;
    for name in [
        "skeelo_events_total",
        "skeelo_event_duration_seconds",
        "skeelo_api_requests_total",
        "skeelo_api_request_duration_seconds",
        "skeelo_retries_total",
        "skeelo_dead_letters_total",
    ] {
        assert!(
            exported.contains(name),
            "CONTRACT §5 metric {name} is not exported"
        );
    }
    let dashboard = dashboard_exprs();
    let alerts = alert_exprs();
    assert!(dashboard.len() >= 10, "the dashboard has its panels");
    assert!(alerts.len() >= 6, "the alert rules are there");
    let mut unknown = Vec::new();
    for expr in dashboard.iter().chain(&alerts) {
        for name in named_in(expr) {
            if !exported.contains(&name) {
                unknown.push(format!("{name} (in `{expr}`)"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by the workers:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn names_are_found_in_expressions() {
    assert_eq!(
        named_in("sum(rate(skeelo_events_total[5m])) / skeelo_x_bucket"),
        vec!["skeelo_events_total", "skeelo_x_bucket"]
    );
}
