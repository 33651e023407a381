//! The one consumer loop, shared by every queue: the dedicated consumers differ only in
//! their queue, never in code. A consumer stops taking work while a downstream is down
//! (outage mode) and starts again when the prober says it answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use skeelo_broker::{self as broker, Publisher};
use skeelo_domain::event::EventType;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event_path::{self, Batch, Source};
use crate::App;

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
    // The relay stops after the work in flight, so the last events' results go out.
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn(crate::relay::run(
        app.clone(),
        connection.clone(),
        relay_stop.clone(),
        lost.clone(),
    ));
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
    relay_stop.cancel();
    // The results of the last events go out before the connection closes (or wait in
    // the outbox for the next process).
    if let Err(e) = relay.await {
        tracing::error!(error = %e, "the results relay failed");
    }
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
    let mut deliveries = Vec::with_capacity(chunk.len());
    for next in chunk {
        match next {
            Ok(delivery) => deliveries.push(delivery),
            Err(e) => error = Some(e),
        }
    }
    if !deliveries.is_empty() {
        tracker.spawn(work(app.clone(), Batch::new(source, deliveries), permit));
    }
    error
}

async fn work(app: Arc<App>, batch: Batch, permit: OwnedSemaphorePermit) {
    let label = batch.source.label();
    let gauge = app.metrics.in_flight.with_label_values(&[label]);
    let n = batch.deliveries.len();
    gauge.add(n as i64);
    if let Source::Work(_) = batch.source {
        app.metrics
            .batch_events
            .with_label_values(&[label])
            .observe(n as f64);
    }
    let mut permit = Some(permit);
    let handled = std::panic::AssertUnwindSafe(event_path::handle(&app, &batch, &mut permit))
        .catch_unwind()
        .await;
    // Every delivery is settled by the event path; whatever it left (a bug) goes back,
    // and after enough deliveries RabbitMQ dead-letters it.
    let left = batch.requeue_rest().await;
    if handled.is_err() || left > 0 {
        tracing::error!(
            queue = %batch.source.queue(),
            events = left,
            panicked = handled.is_err(),
            "deliveries were left unsettled; they go back to their queue"
        );
    }
    gauge.sub(n as i64);
    drop(permit);
}
