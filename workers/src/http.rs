//! `/metrics`, `/healthz` (the process is alive) and `/readyz` (broker and database
//! answer, and every queue of this process is consumed). They answer from the first
//! moment; `/readyz` says `starting` until the fleet is built, and names any queue
//! the broker refuses.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use skeelo_telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use crate::App;

pub(crate) struct Endpoints {
    metrics: Metrics,
    app: OnceLock<Arc<App>>,
}

impl Endpoints {
    pub(crate) fn new(metrics: Metrics) -> Endpoints {
        Endpoints {
            metrics,
            app: OnceLock::new(),
        }
    }

    pub(crate) fn ready(&self, app: Arc<App>) {
        let _ = self.app.set(app);
    }
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    endpoints: Arc<Endpoints>,
    stop: CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(endpoints);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

async fn metrics(State(e): State<Arc<Endpoints>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        e.metrics.render(),
    )
}

async fn ready(State(e): State<Arc<Endpoints>>) -> impl IntoResponse {
    let Some(app) = e.app.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_string());
    };
    let broker = app.broker_up.load(Ordering::Relaxed);
    let database = app.store.ping().await;
    let mut body = format!(
        "broker: {}\ndatabase: {}\n",
        if broker { "up" } else { "down" },
        if database { "up" } else { "down" }
    );
    let unavailable = app.queues.unavailable();
    for (queue, reason, error) in &unavailable {
        body.push_str(&format!("queue {queue}: unavailable ({reason}): {error}\n"));
    }
    let consumed = app.consumed_queues();
    let starting = app.queues.starting(&consumed);
    for queue in &starting {
        body.push_str(&format!("queue {queue}: starting\n"));
    }
    let code = if broker && database && unavailable.is_empty() && starting.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}
