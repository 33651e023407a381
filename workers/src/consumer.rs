//! The one consumer loop, shared by every event type: the dedicated consumers differ
//! only in their queue, never in code.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use skeelo_shared::broker::{self, Publisher};
use skeelo_shared::event::EventType;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{self, Disposition, Timer};
use crate::App;

/// One broker connection's life: topology, publisher, a consumer per type. Returns
/// `Ok` after a clean shutdown (in-flight work finished) and `Err` when the
/// connection is lost and must be rebuilt.
pub(crate) async fn session(app: Arc<App>, stop: CancellationToken) -> anyhow::Result<()> {
    let connection = Arc::new(broker::connect(&app.settings.amqp_url, "skeelo-workers").await?);
    let publisher = Publisher::open(&connection).await?;
    broker::declare_topology(publisher.channel()).await?;
    *app.publisher.write().await = Some(publisher);
    app.broker_up.store(true, Ordering::Relaxed);

    let tracker = TaskTracker::new();
    let lost = CancellationToken::new();
    let mut loops = Vec::new();
    for t in app.settings.consumers.clone() {
        loops.push(tokio::spawn(consume(
            app.clone(),
            connection.clone(),
            t,
            stop.clone(),
            lost.clone(),
            tracker.clone(),
        )));
    }
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = lost.cancelled() => {}
    }
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
    // Stop taking work first, then let what is in flight finish and be acked.
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

async fn consume(
    app: Arc<App>,
    connection: Arc<Connection>,
    t: EventType,
    stop: CancellationToken,
    lost: CancellationToken,
    tracker: TaskTracker,
) -> anyhow::Result<Channel> {
    let outcome = consume_until_stopped(&app, &connection, t, &stop, &tracker).await;
    if outcome.is_err() {
        lost.cancel();
    }
    outcome
}

async fn consume_until_stopped(
    app: &Arc<App>,
    connection: &Connection,
    t: EventType,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(app.settings.prefetch, BasicQosOptions::default())
        .await?;
    let queue = broker::queue_name(t);
    let tag = format!(
        "skeelo-workers.{}.{}",
        t.as_str(),
        uuid::Uuid::new_v4().simple()
    );
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %queue, prefetch = app.settings.prefetch, "consuming");
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                tracing::info!(queue = %queue, "stopped taking work");
                return Ok(channel);
            }
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    tracker.spawn(work(app.clone(), t, delivery));
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %queue, error = %e, "consumer interrupted; waiting for recovery");
                    channel.wait_for_recovery(e).await?;
                }
                None => anyhow::bail!("the broker ended the consumer on {queue}"),
            }
        }
    }
}

async fn work(app: Arc<App>, t: EventType, delivery: Delivery) {
    let timer = Timer::start();
    let gauge = app.metrics.in_flight.with_label_values(&[t.as_str()]);
    gauge.inc();
    let (disposition, outcome) = handler::handle(&app, t, &delivery).await;
    let acked = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::DeadLetter => {
            delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Disposition::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(e) = acked {
        // After a reconnect the old delivery tag is void; the broker redelivers the
        // message and idempotency makes that harmless.
        tracing::warn!(error = %e, "could not settle the delivery; the broker will redeliver it");
    }
    if let Some(o) = outcome {
        app.metrics.event_done(t.as_str(), o, timer.seconds());
    }
    gauge.dec();
}
