//! `/_sim/*`: inspection and control for demos and for tests in other processes.
//! These routes need no token and bypass rate limits, faults and counters.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State as Shared};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use serde_json::{json, Value};

use crate::api::{named, path_id};
use crate::error::{ApiError, Outcome, Reply};
use crate::fields;
use crate::model::{Faults, Product};
use crate::state::{Sim, State};
use crate::subscriptions::to_json;

pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/_sim/state", get(state))
        .route("/_sim/subscriptions/{external_id}", get(subscription))
        .route("/_sim/faults", put(set_faults).get(faults))
        .route("/_sim/tokens/expire", post(expire_tokens))
        .route("/_sim/products", post(add_product))
        .route("/_sim/products/{sku}", delete(remove_product))
        .route("/_sim/reset", post(reset))
}

/// The whole state as the JSON document `GET /_sim/state` serves.
pub(crate) fn snapshot(state: &State) -> Value {
    let subscriptions: Vec<Value> = state.subscriptions.values().map(to_json).collect();
    let requests: Vec<Value> = state
        .counters
        .iter()
        .map(|((operation, status), count)| {
            json!({ "operation": operation, "status": status, "count": count })
        })
        .collect();
    let per_second: serde_json::Map<String, Value> = state
        .accepted_per_second
        .iter()
        .map(|(second, count)| (second.to_string(), json!(count)))
        .collect();
    json!({
        "subscriptions": subscriptions,
        "requests": requests,
        "anomalies": state.anomalies,
        "accepted_per_second": per_second,
        "max_accepted_in_one_second": state.max_accepted_in_one_second(),
        "faults": state.faults,
        "products": state.catalogue,
    })
}

async fn state(Shared(sim): Shared<Sim>) -> Response {
    named("sim_state", Reply::ok(snapshot(&sim.lock())))
}

async fn subscription(
    Shared(sim): Shared<Sim>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let outcome = path_id(path).and_then(|external_id| sim.lock().get_subscription(&external_id));
    named("sim_subscription", outcome)
}

async fn faults(Shared(sim): Shared<Sim>) -> Response {
    named("sim_faults", Reply::ok(json!(sim.lock().faults)))
}

async fn set_faults(Shared(sim): Shared<Sim>, body: Result<Bytes, BytesRejection>) -> Response {
    named("sim_set_faults", apply_faults(&sim, body))
}

fn apply_faults(sim: &Sim, body: Result<Bytes, BytesRejection>) -> Outcome {
    let body = body.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))?;
    let map = fields::object(&body)?;
    let mut state = sim.lock();
    let faults = merge_faults(state.faults.clone(), &map)?;
    state.faults = faults;
    Ok(Reply::ok(json!(state.faults)))
}

/// Applies the fields present in `map`; `rate_per_second: null` lifts the limit.
fn merge_faults(mut faults: Faults, map: &fields::Object) -> Result<Faults, ApiError> {
    if let Some(value) = map.get("error_rate") {
        faults.error_rate = value
            .as_f64()
            .filter(|rate| (0.0..=1.0).contains(rate))
            .ok_or_else(|| ApiError::invalid_request("error_rate must be a number in 0..=1"))?;
    }
    if let Some(value) = map.get("latency_ms") {
        faults.latency_ms = value.as_u64().ok_or_else(|| {
            ApiError::invalid_request("latency_ms must be a non-negative integer")
        })?;
    }
    if let Some(value) = map.get("down") {
        faults.down = value
            .as_bool()
            .ok_or_else(|| ApiError::invalid_request("down must be a boolean"))?;
    }
    if let Some(value) = map.get("rate_per_second") {
        faults.rate_per_second = match value {
            Value::Null => None,
            other => Some(
                other
                    .as_u64()
                    .and_then(|rate| u32::try_from(rate).ok())
                    .ok_or_else(|| {
                        ApiError::invalid_request(
                            "rate_per_second must be null or a non-negative 32-bit integer",
                        )
                    })?,
            ),
        };
    }
    if let Some(value) = map.get("throttle_all") {
        faults.throttle_all = value
            .as_bool()
            .ok_or_else(|| ApiError::invalid_request("throttle_all must be a boolean"))?;
    }
    if let Some(value) = map.get("retry_after") {
        faults.retry_after = match value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            _ => {
                return Err(ApiError::invalid_request(
                    "retry_after must be null or a string (\"0\", \"1\", an HTTP date)",
                ))
            }
        };
    }
    if let Some(value) = map.get("expires_in_as_string") {
        faults.expires_in_as_string = value
            .as_bool()
            .ok_or_else(|| ApiError::invalid_request("expires_in_as_string must be a boolean"))?;
    }
    Ok(faults)
}

async fn expire_tokens(Shared(sim): Shared<Sim>) -> Response {
    let revoked = sim.lock().expire_tokens();
    named(
        "sim_expire_tokens",
        Reply::ok(json!({ "revoked": revoked })),
    )
}

async fn add_product(Shared(sim): Shared<Sim>, body: Result<Bytes, BytesRejection>) -> Response {
    named("sim_add_product", insert_product(&sim, body))
}

fn insert_product(sim: &Sim, body: Result<Bytes, BytesRejection>) -> Outcome {
    let body = body.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))?;
    let map = fields::object(&body)?;
    let product = Product::new(
        fields::required_text(&map, "sku")?,
        fields::required_text(&map, "name")?,
    );
    let mut state = sim.lock();
    let status = upsert_product(&mut state.catalogue, product);
    Ok(Reply {
        status,
        body: json!({ "products": state.catalogue }),
    })
}

/// Adds the product, or renames it if the SKU is already there.
pub(crate) fn upsert_product(catalogue: &mut Vec<Product>, product: Product) -> StatusCode {
    match catalogue.iter_mut().find(|known| known.sku == product.sku) {
        Some(known) => {
            known.name = product.name;
            StatusCode::OK
        }
        None => {
            catalogue.push(product);
            StatusCode::CREATED
        }
    }
}

async fn remove_product(
    Shared(sim): Shared<Sim>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    named(
        "sim_remove_product",
        path_id(path).and_then(|sku| delete_product(&sim, &sku)),
    )
}

fn delete_product(sim: &Sim, sku: &str) -> Outcome {
    let mut state = sim.lock();
    let before = state.catalogue.len();
    state.catalogue.retain(|product| product.sku != sku);
    if state.catalogue.len() == before {
        return Err(ApiError::not_found(format!(
            "product {sku:?} is not in the catalogue"
        )));
    }
    Ok(Reply::ok(json!({ "products": state.catalogue })))
}

async fn reset(Shared(sim): Shared<Sim>) -> Response {
    sim.lock().reset();
    named("sim_reset", Reply::ok(json!({ "reset": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_merge_only_given_fields() {
        let start = Faults {
            rate_per_second: Some(5),
            ..Faults::default()
        };
        let map = fields::object(br#"{"down": true}"#).expect("object");
        let merged = merge_faults(start.clone(), &map).expect("valid");
        assert!(merged.down);
        assert_eq!(merged.rate_per_second, Some(5));
        let map = fields::object(br#"{"rate_per_second": null, "latency_ms": 5}"#).expect("object");
        let merged = merge_faults(start.clone(), &map).expect("valid");
        assert_eq!(merged.rate_per_second, None);
        assert_eq!(merged.latency_ms, 5);
        for bad in [
            &br#"{"error_rate": 1.5}"#[..],
            br#"{"latency_ms": -1}"#,
            br#"{"down": "yes"}"#,
            br#"{"rate_per_second": 1e12}"#,
        ] {
            let map = fields::object(bad).expect("object");
            assert!(merge_faults(start.clone(), &map).is_err());
        }
    }
}
