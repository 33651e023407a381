//! `skeelo-workers`: the fleet process.
//!
//! [`run`] takes its settings and a shutdown future, so tests start and stop a whole
//! fleet in-process exactly as the binary does. It migrates the database, loads the
//! catalogue, serves `/metrics`, `/healthz` and `/readyz`, and runs one consumer per
//! event type asked for, reconnecting to RabbitMQ by itself when the connection is lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use skeelo_broker::Publisher;
use skeelo_domain::event::EventType;
use skeelo_partner::api::{ClientConfig, SkeeloClient};
use skeelo_partner::pacer::Pacer;
use skeelo_store::Store;
use skeelo_telemetry::metrics::Metrics;
use tokio::sync::{Notify, RwLock};
use tokio_util::sync::CancellationToken;

mod catalogue;
mod consumer;
mod event_path;
mod held;
mod http;
mod outage;
mod queues;
mod reconcile;
mod relay;
mod self_heal;
pub mod settings;

pub use outage::Trip;

/// Everything a fleet process needs to know; the binary reads it from the environment.
/// (No `Debug`: the URLs may carry passwords.)
#[derive(Clone)]
pub struct Settings {
    /// `AMQP_URL`: one broker, or a cluster's nodes separated by commas.
    pub amqp_url: String,
    /// `RABBITMQ_MANAGEMENT_URL`: the broker's count of unacknowledged messages per
    /// queue, to find deliveries held but not handled. `None`: not watched.
    pub management_url: Option<String>,
    /// How long messages may stay held but not handled before the consumer is
    /// started again.
    pub held_after: Duration,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// How to reach Skeelo (`SKEELO_*`).
    pub skeelo: ClientConfig,
    /// `SKEELO_RATE_PER_SECOND`: the partner rate, shared by every process of the
    /// fleet through the database; `None` for a partner without one.
    pub rate_per_second: Option<std::num::NonZeroU32>,
    /// How the rate is shared between event types when several wait.
    pub weights: skeelo_partner::pacer::Weights,
    /// The least share of the rate left unused (grows after a 429).
    pub margin: skeelo_partner::pacer::Margin,
    /// `HTTP_ADDR`: metrics and health. Port 0 picks a free one (tests).
    pub http_addr: SocketAddr,
    /// The event types this process consumes (dedicated deployments run a subset).
    pub consumers: Vec<EventType>,
    /// Unacknowledged deliveries per consumer: how many events of one type are worked
    /// on at once.
    pub prefetch: u16,
    /// Database connections in the pool.
    pub db_pool_size: usize,
    /// How transient failures are retried.
    pub retry: Retry,
    /// When a downstream counts as down, and how often to ask it while it is.
    pub outage: Outage,
    /// How often the queues' depth and consumers are read from the broker.
    pub queue_watch: Duration,
    /// `SKEELO_STOP_GRACE_SECONDS`: how long a stop waits for the work in flight.
    pub stop_grace: Duration,
    /// The periodic drift repair.
    pub repair: Repair,
    /// `SKEELO_SELF_HEAL_INTERVAL`: how often dead letters whose cause can clear are
    /// looked at; `None`: off.
    pub self_heal: Option<Duration>,
}

/// The periodic drift repair (`SKEELO_REPAIR_*`).
#[derive(Debug, Clone)]
pub struct Repair {
    /// How often; `None`: off.
    pub interval: Option<Duration>,
    /// The blast-radius guard.
    pub guard: skeelo_repair::Guard,
}

impl Settings {
    /// Batches of one event type in progress at once: the database pool is shared out
    /// between the types consumed, so a wave of one type waiting for the partner rate
    /// never holds the connections another type needs.
    pub(crate) fn batches_per_type(&self) -> usize {
        (self.db_pool_size / self.consumers.len().max(1)).max(1)
    }

    /// Deliveries handled together at most. A batch's calls share one call budget and
    /// its results go out when its last call is done, so under a partner rate a batch
    /// holds a tenth of a second of it: batching saves nothing when the rate is the
    /// limit, and small batches keep calls waiting for every slot.
    pub(crate) fn batch_size(&self) -> usize {
        let prefetch = usize::from(self.prefetch).max(1);
        match self.rate_per_second {
            Some(rate) => prefetch.min((rate.get() as usize / 10).max(1)),
            None => prefetch,
        }
    }
}

/// Retries of transient failures: a few at once in the process, then delayed through
/// the broker (one queue per delay), each delayed round costing one attempt.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Immediate tries after the first, in the process, before a delayed retry.
    pub immediate: u32,
    /// First pause between immediate tries (doubles, with jitter).
    pub immediate_base: Duration,
    /// Delays of the delayed rounds; the last one repeats.
    pub delays: Vec<Duration>,
    /// Rounds before the event is parked as a dead letter.
    pub max_attempts: u32,
    /// Longest time one event may spend calling Skeelo; a call still running then is
    /// dropped. It bounds how long an attempt whose transaction died can still reach
    /// Skeelo.
    pub call_budget: Duration,
}

impl Retry {
    /// How long another attempt waits before reading Skeelo back after unrecorded
    /// calls: past the call budget, so a late answer cannot land after the read.
    pub fn fence(&self) -> Duration {
        self.call_budget + self.call_budget / 3
    }
}

/// Outage mode settings.
#[derive(Debug, Clone)]
pub struct Outage {
    /// When a downstream trips.
    pub trip: Trip,
    /// How often the prober asks a downstream that is down.
    pub probe_interval: Duration,
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
    /// A broker session was opened once since the start.
    broker_ever_up: AtomicBool,
    /// Which of `AMQP_URL`'s nodes to try first: the one reached last, or the next
    /// after a node was lost.
    broker_node: std::sync::atomic::AtomicUsize,
    skeelo_health: outage::Downstream,
    db_health: outage::Downstream,
    /// The fleet is stopping: waits end early.
    stop: CancellationToken,
    /// Calls this process is making, so its own waiting events wake when they end.
    calls: event_path::InFlight,
    /// Times in a row the broker refused to take an event back (to a delay queue).
    broker_refusals: AtomicU32,
    /// Results were written to the outbox: the relay sends them now.
    outbox_wake: Notify,
    /// The queues this process cannot consume now.
    queues: queues::QueueStates,
    /// The broker's management API, when configured, and the vhost to read in it.
    management: Option<(skeelo_broker::management::Management, String)>,
}

impl App {
    /// The queues this process consumes: its event types' and the broker's dead letters.
    fn consumed_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self
            .settings
            .consumers
            .iter()
            .map(|t| skeelo_broker::queue_name(*t))
            .collect();
        queues.push(skeelo_broker::DEAD_QUEUE.to_string());
        queues
    }

    /// The confirm-mode publisher of the current broker session.
    async fn publisher(&self) -> Option<Publisher> {
        self.publisher.read().await.clone()
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
    // The endpoints answer from the start: /healthz at once, /readyz once the fleet is
    // built, so a slow database or Skeelo at start never gets the process restarted.
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("binding HTTP_ADDR {}", settings.http_addr))?;
    let http_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    // A stop is heard from the first moment, even while the database is still being
    // waited for at start.
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let endpoints = Arc::new(http::Endpoints::new(metrics.clone()));
    tokio::spawn(http::serve(listener, endpoints.clone(), stop.clone()));
    let built = tokio::select! {
        built = build(settings, metrics, stop.clone()) => built,
        _ = stop.cancelled() => {
            tracing::info!("stopped before the fleet was ready");
            let done = tokio::spawn(async { Ok(()) });
            return Ok(Running { http_addr, done });
        }
    };
    let app = match built {
        Ok(app) => app,
        Err(e) => {
            stop.cancel();
            return Err(e);
        }
    };
    endpoints.ready(app.clone());
    tokio::spawn(probe(app.clone(), Probe::Skeelo, stop.clone()));
    tokio::spawn(probe(app.clone(), Probe::Database, stop.clone()));
    tokio::spawn(count_parked(app.clone(), stop.clone()));
    tokio::spawn(reconcile::run(app.clone(), stop.clone()));
    tokio::spawn(self_heal::run(app.clone(), stop.clone()));
    if app.settings.consumers.contains(&EventType::Sync) {
        tokio::spawn(warm_catalogue(app.clone(), stop.clone()));
    }
    tracing::info!(%http_addr, consumers = ?app.settings.consumers.iter().map(|t| t.as_str()).collect::<Vec<_>>(), "skeelo-workers started");
    let done = tokio::spawn(supervise(app, stop));
    Ok(Running { http_addr, done })
}

/// Reads Skeelo's catalogue a second after start, unless a sync needed it first: out
/// of the way of the consumers' start, and of the first burst.
async fn warm_catalogue(app: Arc<App>, stop: CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {
            app.catalogue.warm(&app.store, &app.skeelo).await;
        }
        _ = stop.cancelled() => {}
    }
}

async fn build(
    settings: Settings,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<Arc<App>> {
    let store =
        Store::connect(&settings.database_url, settings.db_pool_size).context("DATABASE_URL")?;
    migrate_with_patience(&store, &settings.database_url).await?;
    if settings.rate_per_second.is_some() {
        if let Err(e) = store.warm_rate_ledger().await {
            // Not fatal: the first lease connects by itself (and its first slot may
            // come too late to be used).
            tracing::warn!(error = %e, "cannot open the partner rate's connection yet");
        }
    }
    let pacer = match settings.rate_per_second {
        Some(rate) => Pacer::fleet(store.clone(), rate, settings.weights, settings.margin),
        None => Pacer::unlimited(),
    };
    let skeelo = SkeeloClient::new(settings.skeelo.clone(), metrics.clone(), pacer)
        .context("building the Skeelo client")?;
    let catalogue = catalogue::Catalogue::load(&store).await?;
    let trip = settings.outage.trip;
    let management = management(&settings)?;
    Ok(Arc::new(App {
        settings,
        store,
        skeelo,
        metrics,
        catalogue,
        publisher: RwLock::new(None),
        broker_up: AtomicBool::new(false),
        broker_ever_up: AtomicBool::new(false),
        // Each process starts at a node of its own, so a fleet spreads over a cluster.
        broker_node: std::sync::atomic::AtomicUsize::new(
            (uuid::Uuid::new_v4().as_u128() % 1024) as usize,
        ),
        skeelo_health: outage::Downstream::new("skeelo", trip),
        db_health: outage::Downstream::new("database", trip),
        stop,
        calls: event_path::InFlight::default(),
        broker_refusals: AtomicU32::new(0),
        outbox_wake: Notify::new(),
        queues: queues::QueueStates::default(),
        management,
    }))
}

/// The management API client, or `None` (said once: a fault cannot be seen without it).
fn management(
    settings: &Settings,
) -> anyhow::Result<Option<(skeelo_broker::management::Management, String)>> {
    let Some(url) = &settings.management_url else {
        tracing::warn!("RABBITMQ_MANAGEMENT_URL is not set: deliveries the broker holds for a consumer that never received them cannot be seen or healed");
        return Ok(None);
    };
    let management =
        skeelo_broker::management::Management::new(url).context("RABBITMQ_MANAGEMENT_URL")?;
    let vhost = skeelo_broker::vhost(&settings.amqp_url)
        .context("AMQP_URL is not an amqp:// or amqps:// URL")?;
    tracing::info!(management = %management.shown(), "the broker's unacknowledged counts are watched");
    Ok(Some((management, vhost)))
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
async fn migrate_with_patience(store: &Store, url: &str) -> anyhow::Result<()> {
    let database = skeelo_store::tls::shown(url);
    let mut pause = Duration::from_millis(200);
    for attempt in 1.. {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            // Waiting cannot fix a wrong certificate, password or database name.
            Err(e) if e.is_permanent() => {
                return Err(e).context(format!(
                    "DATABASE_URL {database} cannot be used (waiting will not fix this)"
                ))
            }
            Err(e) if attempt < 8 => {
                tracing::warn!(attempt, %database, error = %e, "database not ready; waiting");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("migrating the database"),
        }
    }
    Ok(())
}

/// This process, in the notes other programs read (the outage table).
fn process() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

#[derive(Clone, Copy)]
enum Probe {
    Skeelo,
    Database,
}

/// Waits for its downstream to go down, then asks it until it answers.
async fn probe(app: Arc<App>, which: Probe, stop: CancellationToken) {
    let health = match which {
        Probe::Skeelo => &app.skeelo_health,
        Probe::Database => &app.db_health,
    };
    let gauge = app.metrics.outage_mode.with_label_values(&[health.name]);
    let mut down = health.watch();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = down.wait_for(|d| *d) => if changed.is_err() { return },
        }
        gauge.set(1);
        let mut pause = app.settings.outage.probe_interval;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let answered = match which {
                Probe::Skeelo => app
                    .skeelo
                    .products()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Probe::Database => {
                    if app.store.ping().await {
                        Ok(())
                    } else {
                        Err("no answer".to_string())
                    }
                }
            };
            match answered {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(downstream = health.name, error = %e, "still down");
                    if let Probe::Skeelo = which {
                        // Seen by `skeelo-ops explain`; refreshed on every probe, so a
                        // row a stopped process left behind soon reads as stale.
                        if let Err(w) = app.store.outage_seen(health.name, process(), &e).await {
                            tracing::debug!(error = %w, "could not note the outage");
                        }
                    }
                    pause = (pause * 2).min(app.settings.outage.probe_interval * 8);
                }
            }
        }
        health.recovered();
        gauge.set(0);
        if let Probe::Skeelo = which {
            if let Err(w) = app.store.outage_over(health.name, process()).await {
                tracing::debug!(error = %w, "could not note the outage's end");
            }
        }
    }
}

/// Keeps `skeelo_dead_letters_parked` current (what waits for operators now).
async fn count_parked(app: Arc<App>, stop: CancellationToken) {
    loop {
        if let Ok(counts) = app.store.parked_by_reason().await {
            for reason in skeelo_domain::policy::ParkReason::ALL.map(|r| r.as_str()) {
                let n = counts
                    .iter()
                    .find(|(r, _)| r == reason)
                    .map_or(0, |(_, n)| *n);
                app.metrics
                    .dead_letters_parked
                    .with_label_values(&[reason])
                    .set(n);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Keeps a broker session alive until shutdown: connects, declares the topology,
/// consumes; when the connection is lost for good, waits and starts over.
async fn supervise(app: Arc<App>, stop: CancellationToken) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(250);
    // The work of lost sessions that is still going on.
    let mut earlier = Vec::new();
    while !stop.is_cancelled() {
        let began = std::time::Instant::now();
        match consumer::session(app.clone(), stop.clone(), &mut earlier).await {
            Ok(()) => break,
            // Before the first session, a failure that waiting cannot fix (TLS,
            // credentials, vhost, URL) stops the process, naming it; once it has run,
            // the same failure is a broker changed under it, and it waits.
            Err(e)
                if !app.broker_ever_up.load(Ordering::Relaxed)
                    && e.chain().any(|c| {
                        c.downcast_ref::<skeelo_broker::BrokerError>()
                            .is_some_and(skeelo_broker::BrokerError::is_permanent)
                    }) =>
            {
                stop.cancel();
                return Err(e.context("AMQP_URL cannot be used (waiting will not fix this)"));
            }
            Err(e) => {
                // A session that ran a while is followed at once; tries that fail, or
                // sessions a flapping broker drops at once, slow down.
                if app.broker_up.swap(false, Ordering::Relaxed)
                    && began.elapsed() >= Duration::from_secs(10)
                {
                    pause = Duration::from_millis(250);
                }
                app.queues.session_ended();
                // Logged once per try, and the tries slow down to one every 10 s.
                tracing::error!(
                    error = format!("{e:#}"),
                    pause_ms = pause.as_millis() as u64,
                    "no broker session; connecting again"
                );
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
    app.broker_up.store(false, Ordering::Relaxed);
    // A stop between sessions: a lost one's work may still be ending.
    consumer::wait_for_work(&app, &stop, &mut earlier).await;
    tracing::info!("skeelo-workers stopped");
    Ok(())
}
