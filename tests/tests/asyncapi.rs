//! The AsyncAPI document the ERP team reads (docs/asyncapi.yaml) says what the code
//! does: its examples pass the workers' own decoder, and its enums are the code's.

use serde_json::Value;
use skeelo_domain::event::{self, EventType};
use skeelo_domain::outcome::{EventResult, Outcome};

fn document() -> Value {
    let text = include_str!("../../docs/asyncapi.yaml");
    serde_yaml::from_str(text).expect("docs/asyncapi.yaml is valid YAML")
}

fn examples(doc: &Value, message: &str) -> Vec<(String, Value)> {
    doc["components"]["messages"][message]["examples"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap_or("?").to_string(),
                        e["payload"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    s.sort();
    s
}

#[test]
fn every_event_example_passes_the_workers_decoder() {
    let doc = document();
    let found = examples(&doc, "ContractEvent");
    assert_eq!(
        found.len(),
        EventType::ALL.len(),
        "one example per event type"
    );
    let mut types = Vec::new();
    for (name, payload) in found {
        let t = payload["type"].as_str().unwrap_or_default();
        let parsed = event::parse(&format!("contract.{t}"), payload.to_string().as_bytes());
        let e = parsed.unwrap_or_else(|err| panic!("example `{name}` is refused: {err}"));
        types.push(e.event_type);
    }
    types.sort();
    let mut all = EventType::ALL.to_vec();
    all.sort();
    assert_eq!(types, all, "every type has its example");
}

#[test]
fn every_result_example_reads_as_a_result() {
    let doc = document();
    let found = examples(&doc, "Result");
    assert!(!found.is_empty());
    for (name, payload) in found {
        let r: Result<EventResult, _> = serde_json::from_value(payload);
        assert!(r.is_ok(), "example `{name}`: {r:?}");
    }
}

#[test]
fn the_documents_enums_are_the_codes() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let mut types: Vec<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_string())
        .collect();
    types.sort();
    assert_eq!(
        strings(&schemas["ContractEvent"]["properties"]["type"]["enum"]),
        types
    );
    assert_eq!(
        strings(&doc["channels"]["contract.{type}"]["parameters"]["type"]["schema"]["enum"]),
        types
    );
    let mut outcomes: Vec<String> = Outcome::ALL
        .iter()
        .map(|o| o.as_str().to_string())
        .collect();
    outcomes.sort();
    assert_eq!(
        strings(&schemas["Result"]["properties"]["outcome"]["enum"]),
        outcomes
    );
    assert_eq!(
        doc["channels"]["contract.{type}"]["bindings"]["amqp"]["exchange"]["name"],
        skeelo_broker::EVENTS_EXCHANGE
    );
    assert_eq!(
        doc["channels"]["result.{type}"]["bindings"]["amqp"]["exchange"]["name"],
        skeelo_broker::RESULTS_EXCHANGE
    );
}
