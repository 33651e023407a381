//! `/metrics`, `/healthz` (the process is alive) and `/readyz` (broker and database
//! answer: send work here).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::App;

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    stop: CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(app);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn ready(State(app): State<Arc<App>>) -> impl IntoResponse {
    let broker = app.broker_up.load(Ordering::Relaxed);
    let database = app.store.ping().await;
    let body = format!(
        "broker: {}\ndatabase: {}\n",
        if broker { "up" } else { "down" },
        if database { "up" } else { "down" }
    );
    let code = if broker && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}
