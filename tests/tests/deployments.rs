//! The deployments, checked without a container engine: every consumer group is
//! deployed once with its probes, resources and secrets, every event type has a
//! consumer, KEDA scales each group on its own queues, and every compose service has a
//! healthcheck.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;
use skeelo_domain::event::EventType;

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn consumers_in(args: &Value) -> Vec<String> {
    let args: Vec<&str> = args
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    args.windows(2)
        .find(|w| w[0] == "--consumers")
        .map(|w| w[1].split(',').map(str::to_string).collect())
        .unwrap_or_default()
}

fn every_type() -> BTreeSet<String> {
    EventType::ALL
        .iter()
        .map(|t| t.as_str().to_string())
        .collect()
}

#[test]
fn kubernetes_runs_every_consumer_group_with_probes_secrets_and_scaling() {
    let docs = documents(include_str!("../../deploy/k8s/workers.yaml"));
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    let scaled: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ScaledObject")
        .collect();
    assert!(!deployments.is_empty());
    let mut covered = BTreeSet::new();
    for d in &deployments {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{name}: resources"
        );
        let from_secret = c["envFrom"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["secretRef"]["name"] == "skeelo-bridge");
        assert!(from_secret, "{name}: credentials come from the Secret");
        let types = consumers_in(&c["args"]);
        for t in &types {
            assert!(
                EventType::from_name(t).is_some(),
                "{name}: unknown consumer {t}"
            );
            assert!(
                covered.insert(t.clone()),
                "{name}: {t} is consumed by two groups"
            );
        }
        let scaler = scaled
            .iter()
            .find(|s| s["spec"]["scaleTargetRef"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} has no ScaledObject"));
        let queues: BTreeSet<String> = scaler["spec"]["triggers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["metadata"]["queueName"].as_str().map(str::to_string))
            .collect();
        let own: BTreeSet<String> = types.iter().map(|t| format!("erp.contracts.{t}")).collect();
        assert_eq!(queues, own, "{name} scales on its own queues");
    }
    assert_eq!(covered, every_type(), "every event type has a consumer");
    // The console: one Deployment reading the fleet's settings, probed, behind a
    // ClusterIP Service (TLS comes from the ingress in front of it).
    let console = documents(include_str!("../../deploy/k8s/console.yaml"));
    let deployment = console
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a console Deployment");
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"][0], "skeelo-console");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    let from: Vec<&str> = c["envFrom"]
        .as_array()
        .expect("envFrom")
        .iter()
        .filter_map(|e| {
            e["configMapRef"]["name"]
                .as_str()
                .or(e["secretRef"]["name"].as_str())
        })
        .collect();
    assert_eq!(from, ["skeelo-bridge", "skeelo-bridge"]);
    assert!(console
        .iter()
        .any(|d| d["kind"] == "Service" && d["spec"]["type"] == "ClusterIP"));
    let secret = documents(include_str!("../../deploy/k8s/secret.example.yaml"));
    let keys: BTreeSet<&str> = secret[0]["stringData"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for k in [
        "AMQP_URL",
        "KEDA_AMQP_URL",
        "RABBITMQ_MANAGEMENT_URL",
        "DATABASE_URL",
        "SKEELO_CLIENT_ID",
        "SKEELO_CLIENT_SECRET",
    ] {
        assert!(keys.contains(k), "the Secret carries {k}");
    }
}

#[test]
fn compose_has_every_service_healthy_and_every_type_consumed() {
    let compose = &documents(include_str!("../../compose.yaml"))[0];
    let services = compose["services"].as_object().expect("services");
    for name in [
        "rabbitmq",
        "postgres",
        "skeelo-sim",
        "console",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "compose runs {name}");
    }
    let mut covered = BTreeSet::new();
    for (name, s) in services {
        let check = if s["healthcheck"].is_null() {
            &compose["x-worker"]["healthcheck"]
        } else {
            &s["healthcheck"]
        };
        assert!(check["test"].is_array(), "{name} has a healthcheck");
        for t in consumers_in(&s["command"]) {
            covered.insert(t);
        }
    }
    assert_eq!(
        covered,
        every_type(),
        "every event type has a worker service"
    );
}
