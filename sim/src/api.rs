//! The HTTP surface: partner routes, admin routes, JSON fallbacks and the
//! one-line-per-request log.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Request, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::admin;
use crate::auth::bearer;
use crate::error::{ApiError, Outcome};
use crate::state::{Auth, Operation, Sim, State};

/// Attached to responses so the request log can name the operation.
#[derive(Debug, Clone, Copy)]
struct OperationName(&'static str);

/// Tags a response with the operation name the request log reports.
pub(crate) fn named(operation: &'static str, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(OperationName(operation));
    response
}

pub(crate) fn router(sim: Sim) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/v1/products", get(list_products))
        .route("/v1/subscriptions", post(create_subscription))
        .route(
            "/v1/subscriptions/{external_id}",
            get(get_subscription).patch(update_subscription),
        )
        .route("/v1/subscriptions/{external_id}/status", put(set_status))
        .merge(admin::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(sim.clone(), log_request))
        .with_state(sim)
}

/// Runs a partner call: the simulated latency, then the gate and `work` under one
/// lock (so a refused call changes nothing), then the response.
async fn partner(
    sim: &Sim,
    op: Operation,
    auth: Auth,
    subject: Option<&str>,
    work: impl FnOnce(&mut State) -> Outcome,
) -> Response {
    let latency = sim.lock().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let outcome = sim.lock().handle(op, &auth, subject, work);
    named(op.as_str(), outcome)
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| ApiError::invalid_request(rejection.body_text()))
}

pub(crate) fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::not_found("malformed path segment"))
}

async fn token(Shared(sim): Shared<Sim>, body: Result<Bytes, BytesRejection>) -> Response {
    partner(&sim, Operation::Token, Auth::Exempt, None, |state| {
        state.issue_token(&body_bytes(body)?)
    })
    .await
}

async fn list_products(Shared(sim): Shared<Sim>, headers: HeaderMap) -> Response {
    partner(
        &sim,
        Operation::ListProducts,
        Auth::Bearer(bearer(&headers)),
        None,
        |state| state.list_products(),
    )
    .await
}

async fn create_subscription(
    Shared(sim): Shared<Sim>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let auth = Auth::Bearer(bearer(&headers));
    let subject = body.as_ref().ok().and_then(|b| {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        v.get("external_id")?.as_str().map(str::to_owned)
    });
    partner(
        &sim,
        Operation::CreateSubscription,
        auth,
        subject.as_deref(),
        |state| state.create_subscription(&body_bytes(body)?),
    )
    .await
}

async fn get_subscription(
    Shared(sim): Shared<Sim>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let auth = Auth::Bearer(bearer(&headers));
    let subject = path.as_ref().ok().map(|Path(id)| id.clone());
    partner(
        &sim,
        Operation::GetSubscription,
        auth,
        subject.as_deref(),
        |state| state.get_subscription(&path_id(path)?),
    )
    .await
}

async fn update_subscription(
    Shared(sim): Shared<Sim>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let auth = Auth::Bearer(bearer(&headers));
    let subject = path.as_ref().ok().map(|Path(id)| id.clone());
    partner(
        &sim,
        Operation::UpdateSubscription,
        auth,
        subject.as_deref(),
        |state| state.update_subscription(&path_id(path)?, &body_bytes(body)?),
    )
    .await
}

async fn set_status(
    Shared(sim): Shared<Sim>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let auth = Auth::Bearer(bearer(&headers));
    let subject = path.as_ref().ok().map(|Path(id)| id.clone());
    partner(
        &sim,
        Operation::SetStatus,
        auth,
        subject.as_deref(),
        |state| state.set_status(&path_id(path)?, &body_bytes(body)?),
    )
    .await
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// One structured line per request. Neither path, body nor headers are logged,
/// so no token, secret or personal data leaks into logs.
async fn log_request(Shared(sim): Shared<Sim>, request: Request, next: Next) -> Response {
    let arrived_us = crate::state::epoch_us(std::time::SystemTime::now());
    let stamps = request
        .headers()
        .get("x-skeelo-slot-stamps")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let started = Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    if let Some(call) = stamps
        .and_then(|h| crate::state::StampedCall::read(&h, arrived_us, response.status().as_u16()))
    {
        sim.lock().stamp(call);
    }
    let operation = response
        .extensions()
        .get::<OperationName>()
        .map_or("unrouted", |name| name.0);
    tracing::info!(
        operation,
        method = %method,
        status = response.status().as_u16(),
        duration_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0,
        "request"
    );
    response
}
