//! The one consumer loop, shared by every queue: the dedicated consumers differ only in
//! their queue, never in code. A consumer stops taking work while a downstream is down
//! (outage mode) and starts again when the prober says it answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use skeelo_shared::broker::{self, Publisher};
use skeelo_shared::event::EventType;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch;
use crate::handler::{self, Disposition};
use crate::App;

/// Where a consumer takes its work from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The work queue of one event type.
    Work(EventType),
    /// What RabbitMQ dead-lettered by itself, to be parked in the database.
    Dead,
}

impl Source {
    fn queue(self) -> String {
        match self {
            Source::Work(t) => broker::queue_name(t),
            Source::Dead => broker::DEAD_QUEUE.to_string(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Source::Work(t) => t.as_str(),
            Source::Dead => "dead",
        }
    }
}

/// One broker connection's life: topology, publisher, a consumer per queue. Returns
/// `Ok` after a clean shutdown (in-flight work finished) and `Err` when the
/// connection is lost and must be rebuilt.
pub(crate) async fn session(app: Arc<App>, stop: CancellationToken) -> anyhow::Result<()> {
    let connection = Arc::new(broker::connect(&app.settings.amqp_url, "skeelo-workers").await?);
    let publisher = Publisher::open(&connection).await?;
    broker::declare_topology(publisher.channel(), &app.settings.retry.delays).await?;
    *app.publisher.write().await = Some(publisher);
    app.broker_up.store(true, Ordering::Relaxed);

    let tracker = TaskTracker::new();
    let lost = CancellationToken::new();
    let mut sources: Vec<Source> = app
        .settings
        .consumers
        .iter()
        .map(|t| Source::Work(*t))
        .collect();
    sources.push(Source::Dead);
    let mut loops = Vec::new();
    for source in sources {
        loops.push(tokio::spawn(consume(
            app.clone(),
            connection.clone(),
            source,
            stop.clone(),
            lost.clone(),
            tracker.clone(),
        )));
    }
    let watcher = tokio::spawn(watch_queues(app.clone(), connection.clone(), lost.clone()));
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = lost.cancelled() => {}
    }
    watcher.abort();
    let mut result = Ok(());
    // The channels stay open until the work in flight is acked on them: closing a
    // channel hands its unacked deliveries back to the broker.
    let mut channels = Vec::new();
    for l in loops {
        match l.await {
            Ok(Ok(channel)) => channels.push(channel),
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(anyhow::anyhow!("consumer task failed: {e}")),
        }
    }
    tracker.close();
    tracker.wait().await;
    for channel in channels {
        let _ = channel.close(200, "consumer stopped".into()).await;
    }
    if stop.is_cancelled() {
        let _ = connection
            .close(200, "skeelo-workers stopping".into())
            .await;
    }
    result
}

/// Reads every queue's depth and consumers every few seconds (a passive declare), for
/// `skeelo_queue_messages` and `skeelo_queue_consumers`: how far behind, and whether
/// anyone is consuming at all.
async fn watch_queues(app: Arc<App>, connection: Arc<Connection>, lost: CancellationToken) {
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let mut queues: Vec<String> = EventType::ALL.into_iter().map(broker::queue_name).collect();
    queues.extend(
        app.settings
            .retry
            .delays
            .iter()
            .map(|d| broker::delay_queue_name(*d)),
    );
    queues.push(broker::DEAD_QUEUE.to_string());
    queues.push(broker::RESULTS_QUEUE.to_string());
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    while !lost.is_cancelled() {
        for q in &queues {
            match channel
                .queue_declare(q.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(info) => {
                    app.metrics
                        .queue_messages
                        .with_label_values(&[q])
                        .set(i64::from(info.message_count()));
                    app.metrics
                        .queue_consumers
                        .with_label_values(&[q])
                        .set(i64::from(info.consumer_count()));
                }
                // A passive declare of a missing queue closes the channel: stop here;
                // the next session starts a new watcher.
                Err(_) => return,
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

async fn consume(
    app: Arc<App>,
    connection: Arc<Connection>,
    source: Source,
    stop: CancellationToken,
    lost: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<Channel> {
    let outcome = consume_until_stopped(&app, &connection, source, &stop, &lost, &tracker).await;
    if outcome.is_err() {
        lost.cancel();
    }
    outcome
}

fn paused(app: &App) -> bool {
    app.skeelo_health.is_down() || app.db_health.is_down()
}

async fn consume_until_stopped(
    app: &Arc<App>,
    connection: &Connection,
    source: Source,
    stop: &CancellationToken,
    lost: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(app.settings.prefetch, BasicQosOptions::default())
        .await?;
    let queue = source.queue();
    let batches = Arc::new(tokio::sync::Semaphore::new(app.settings.batches_per_type()));
    let mut skeelo_down = app.skeelo_health.watch();
    let mut db_down = app.db_health.watch();
    loop {
        // Outage mode: take no new work until every downstream answers again.
        while paused(app) {
            tokio::select! {
                _ = stop.cancelled() => return Ok(channel),
                _ = lost.cancelled() => return Ok(channel),
                _ = skeelo_down.changed() => {}
                _ = db_down.changed() => {}
            }
        }
        let tag = format!(
            "skeelo-workers.{}.{}",
            source.label(),
            uuid::Uuid::new_v4().simple()
        );
        // Deliveries that are already here when the consumer wakes are taken together:
        // a batch costs the database's round trips once. Nothing waits for a batch to
        // fill, so a lone event is as quick as ever; while this type's batches are all
        // busy, deliveries gather for the next one.
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?
            .ready_chunks(app.settings.batch_size());
        tracing::info!(queue = %queue, prefetch = app.settings.prefetch, "consuming");
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    tracing::info!(queue = %queue, "stopped taking work");
                    return Ok(channel);
                }
                _ = lost.cancelled() => return Ok(channel),
                permit = batches.clone().acquire_owned() => permit?,
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    tracing::info!(queue = %queue, "stopped taking work");
                    return Ok(channel);
                }
                _ = lost.cancelled() => return Ok(channel),
                _ = skeelo_down.changed() => {}
                _ = db_down.changed() => {}
                next = deliveries.next() => match next {
                    Some(chunk) => {
                        if let Some(e) = dispatch(app, source, chunk, tracker, permit) {
                            tracing::warn!(queue = %queue, error = %e, "consumer interrupted; waiting for recovery");
                            channel.wait_for_recovery(e).await?;
                        }
                    }
                    None => anyhow::bail!("the broker ended the consumer on {queue}"),
                }
            }
            if paused(app) {
                let _ = channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                tracing::warn!(queue = %queue, "outage mode: stopped taking work");
                // Deliveries already sent before the cancel still come out of the
                // stream: hand them to the handler (they will be postponed at no cost)
                // rather than leave them unacknowledged on the channel.
                let drain = async {
                    while let Some(chunk) = deliveries.next().await {
                        let Ok(permit) = batches.clone().acquire_owned().await else {
                            break;
                        };
                        if dispatch(app, source, chunk, tracker, permit).is_some() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
                break;
            }
        }
    }
}

/// Starts the work on deliveries that arrived together; returns the consumer's error,
/// if one came with them.
fn dispatch(
    app: &Arc<App>,
    source: Source,
    chunk: Vec<lapin::Result<Delivery>>,
    tracker: &TaskTracker,
    permit: OwnedSemaphorePermit,
) -> Option<lapin::Error> {
    let mut error = None;
    let mut batch = Vec::with_capacity(chunk.len());
    for next in chunk {
        match next {
            Ok(delivery) => batch.push(delivery),
            Err(e) => error = Some(e),
        }
    }
    match source {
        _ if batch.is_empty() => {}
        Source::Work(t) => {
            tracker.spawn(work(app.clone(), t, batch, permit));
        }
        Source::Dead => {
            for delivery in batch {
                tracker.spawn(work_dead(app.clone(), delivery));
            }
        }
    }
    error
}

async fn work(
    app: Arc<App>,
    t: EventType,
    deliveries: Vec<Delivery>,
    permit: OwnedSemaphorePermit,
) {
    let started = std::time::Instant::now();
    let gauge = app.metrics.in_flight.with_label_values(&[t.as_str()]);
    let n = deliveries.len();
    gauge.add(n as i64);
    app.metrics
        .batch_events
        .with_label_values(&[t.as_str()])
        .observe(n as f64);
    let handled = std::panic::AssertUnwindSafe(batch::handle(&app, t, &deliveries))
        .catch_unwind()
        .await;
    // A bug must not leave deliveries unsettled (their prefetch slots would be lost):
    // they go back, and after enough deliveries RabbitMQ dead-letters them.
    let settled = handled.unwrap_or_else(|_| {
        tracing::error!(queue = %broker::queue_name(t), events = n, "the handler panicked; the deliveries go back to their queue");
        vec![(Disposition::Requeue, None); n]
    });
    let settling = deliveries
        .iter()
        .zip(&settled)
        .map(|(delivery, (disposition, _))| settle(delivery, *disposition));
    futures_util::future::join_all(settling).await;
    let took = started.elapsed().as_secs_f64();
    for outcome in settled.iter().filter_map(|(_, o)| *o) {
        app.metrics.event_done(t.as_str(), outcome, took);
    }
    gauge.sub(n as i64);
    drop(permit);
}

async fn work_dead(app: Arc<App>, delivery: Delivery) {
    let gauge = app.metrics.in_flight.with_label_values(&["dead"]);
    gauge.inc();
    let handled = std::panic::AssertUnwindSafe(handler::handle_dead(&app, &delivery))
        .catch_unwind()
        .await;
    // Broker dead letters are counted in skeelo_dead_letters_total; the `type` label
    // of the event metrics stays an event type.
    let (disposition, _) = handled.unwrap_or_else(|_| {
        tracing::error!(
            queue = broker::DEAD_QUEUE,
            "the handler panicked; the delivery goes back to its queue"
        );
        (Disposition::Requeue, None)
    });
    settle(&delivery, disposition).await;
    gauge.dec();
}

async fn settle(delivery: &Delivery, disposition: Disposition) {
    let settled = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(e) = settled {
        // After a reconnect the old delivery tag is void; the broker redelivers the
        // message and idempotency makes that harmless.
        tracing::warn!(error = %e, "could not settle the delivery; the broker will redeliver it");
    }
}
