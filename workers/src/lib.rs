//! `skeelo-workers`: the fleet process.
//!
//! [`run`] takes its settings and a shutdown future, so tests start and stop a whole
//! fleet in-process exactly as the binary does. It migrates the database, loads the
//! catalogue, serves `/metrics`, `/healthz` and `/readyz`, and runs one consumer per
//! event type asked for, reconnecting to RabbitMQ by itself when the connection is lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use skeelo_shared::broker::{BrokerError, Publisher, RESULTS_EXCHANGE};
use skeelo_shared::event::EventType;
use skeelo_shared::metrics::Metrics;
use skeelo_shared::outcome::EventResult;
use skeelo_shared::skeelo::{ClientConfig, SkeeloClient};
use skeelo_shared::store::Store;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

mod catalogue;
mod consumer;
mod handler;
mod http;

/// Everything a fleet process needs to know; the binary reads it from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// How to reach Skeelo (`SKEELO_*`).
    pub skeelo: ClientConfig,
    /// `HTTP_ADDR`: metrics and health. Port 0 picks a free one (tests).
    pub http_addr: SocketAddr,
    /// The event types this process consumes (dedicated deployments run a subset).
    pub consumers: Vec<EventType>,
    /// Unacknowledged deliveries per consumer: how many events of one type are worked
    /// on at once.
    pub prefetch: u16,
    /// Database connections in the pool.
    pub db_pool_size: usize,
    /// Attempts at a transient failure before the event goes back to its queue.
    pub max_attempts: u32,
    /// First back-off pause; it doubles per attempt (with jitter).
    pub retry_base: Duration,
}

/// A running fleet's shared parts.
pub(crate) struct App {
    settings: Settings,
    store: Store,
    skeelo: SkeeloClient,
    metrics: Metrics,
    catalogue: catalogue::Catalogue,
    publisher: RwLock<Option<Publisher>>,
    broker_up: AtomicBool,
}

impl App {
    /// Publishes a result with confirms; failures are logged and returned so the
    /// delivery goes back to the queue (its redelivery repeats the result).
    async fn publish_result(&self, result: &EventResult) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(result).map_err(|e| {
            BrokerError::Amqp(lapin::Error::from(std::io::Error::other(e.to_string())))
        })?;
        let publisher = self.publisher.read().await.clone();
        let Some(publisher) = publisher else {
            return Err(BrokerError::Nacked);
        };
        let outcome = publisher
            .publish_json(
                RESULTS_EXCHANGE,
                &result.routing_key(),
                &result.event_id,
                &body,
            )
            .await;
        match &outcome {
            Ok(()) => self.metrics.results_published.inc(),
            Err(e) => tracing::error!(error = %e, "could not publish the result"),
        }
        outcome
    }
}

/// What [`run`] hands back to whoever started it.
pub struct Running {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_addr: SocketAddr,
    /// Resolves when the fleet has stopped.
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the fleet; it runs until `shutdown` resolves, then stops taking work,
/// finishes what is in flight and returns.
pub async fn start(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let metrics = Metrics::new().context("registering metrics")?;
    let store =
        Store::connect(&settings.database_url, settings.db_pool_size).context("DATABASE_URL")?;
    migrate_with_patience(&store).await?;
    let skeelo = SkeeloClient::new(settings.skeelo.clone(), metrics.clone())
        .context("building the Skeelo client")?;
    let catalogue = catalogue::Catalogue::load(&store, &skeelo).await?;
    let app = Arc::new(App {
        settings,
        store,
        skeelo,
        metrics,
        catalogue,
        publisher: RwLock::new(None),
        broker_up: AtomicBool::new(false),
    });
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(app.settings.http_addr)
        .await
        .with_context(|| format!("binding HTTP_ADDR {}", app.settings.http_addr))?;
    let http_addr = listener.local_addr()?;
    tokio::spawn(http::serve(listener, app.clone(), stop.clone()));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    tracing::info!(%http_addr, consumers = ?app.settings.consumers.iter().map(|t| t.as_str()).collect::<Vec<_>>(), "skeelo-workers started");
    let done = tokio::spawn(supervise(app, stop));
    Ok(Running { http_addr, done })
}

/// Starts the fleet and waits until it has stopped.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let running = start(settings, shutdown).await?;
    running.done.await.context("the fleet task failed")?
}

/// Replicas and the database often start together: wait for it a little before giving up.
async fn migrate_with_patience(store: &Store) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(200);
    for attempt in 1.. {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 8 => {
                tracing::warn!(attempt, error = %e, "database not ready; waiting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("migrating the database"),
        }
    }
    Ok(())
}

/// Keeps a broker session alive until shutdown: connects, declares the topology,
/// consumes; when the connection is lost for good, waits and starts over.
async fn supervise(app: Arc<App>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(250);
    while !stop.is_cancelled() {
        match consumer::session(app.clone(), stop.clone()).await {
            Ok(()) => break,
            Err(e) => {
                app.broker_up.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, pause_ms = pause.as_millis() as u64, "broker session ended; reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
    app.broker_up.store(false, Ordering::Relaxed);
    tracing::info!("skeelo-workers stopped");
    Ok(())
}
