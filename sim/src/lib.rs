//! An in-memory simulator of the Skeelo partner API.
//!
//! It answers the same routes, status codes and error envelopes as the partner,
//! and can be made to misbehave (rate limits, transient 503s, outages, latency,
//! token revocation) so the bridge's retry and throttling logic can be exercised
//! locally. It also records calls a correct client never makes ("anomalies") and
//! per-operation counters, readable in-process through [`SimHandle`] or from
//! another process through `GET /_sim/state`.

mod admin;
mod api;
mod auth;
mod error;
mod fields;
mod handle;
mod model;
mod state;
mod subscriptions;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use handle::SimHandle;
pub use model::{default_catalogue, Faults, Product, SimConfig, Subscription};
pub use state::StampedCall;

use state::Sim;

/// Starts a simulator on an ephemeral loopback port in a background task, for
/// tests that need a partner without a separate process.
pub async fn spawn(config: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let sim = Sim::new(config);
    let (stop, mut stopped) = watch::channel(false);
    let shutdown = async move {
        if stopped.wait_for(|stop| *stop).await.is_err() {
            // The sender lives in every handle; if it is gone nobody can ask
            // for a stop any more, so keep serving.
            std::future::pending::<()>().await;
        }
    };
    let server_sim = sim.clone();
    tokio::spawn(async move {
        if let Err(err) = serve_sim(listener, server_sim, shutdown).await {
            tracing::error!(error = %err, "simulator stopped with an error");
        }
    });
    Ok(SimHandle {
        sim,
        addr,
        stop: Arc::new(stop),
    })
}

/// Serves the simulator on `listener` until `shutdown` completes; the binary's
/// entry point, also usable by anything that wants to own the listener.
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_sim(listener, Sim::new(config), shutdown).await
}

async fn serve_sim(
    listener: TcpListener,
    sim: Sim,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::router(sim))
        .with_graceful_shutdown(shutdown)
        .await
}
