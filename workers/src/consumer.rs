//! The one consumer loop, shared by every queue: the dedicated consumers differ only in
//! their queue, never in code. A consumer stops taking work while a downstream is down
//! (outage mode) and starts again when the prober says it answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
use crate::held::Held;
use crate::queues::{CANCELLED, HELD};
use crate::App;

/// Requeued dead letters one process works on at once.
const REQUEUE_PREFETCH: u16 = 16;
/// How long connecting to the broker and declaring the shared topology may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay down while the client recovers it by itself.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// One broker connection's life: topology, publisher, a consumer per queue. Returns
/// `Ok` after a clean shutdown (in-flight work finished) and `Err` when the
/// connection is lost and must be rebuilt. `earlier` holds the work of lost sessions
/// that is still going on: a stop waits for it too.
pub(crate) async fn session(
    app: Arc<App>,
    stop: CancellationToken,
    earlier: &mut Vec<TaskTracker>,
) -> anyhow::Result<()> {
    let url = &app.settings.amqp_url;
    let nodes = broker::nodes(url);
    let first = app.broker_node.load(Ordering::Relaxed);
    let opened = async {
        // The first session connects without the client's own recovery, so a failure
        // that waiting cannot fix (a certificate, a password) is seen and stops the
        // process; later sessions let the client recover a connection by itself.
        let recover = app.broker_ever_up.load(Ordering::Relaxed);
        let (connection, node) =
            broker::connect_from(url, "skeelo-workers", first, recover).await?;
        // A node that accepts the connection but fails what follows (booting, in a
        // minority partition) is not tried first again.
        app.broker_node.store(node + 1, Ordering::Relaxed);
        let publisher = Publisher::open(&connection).await?;
        broker::declare_shared(publisher.channel(), &app.settings.retry.delays).await?;
        Ok::<_, broker::BrokerError>((connection, publisher, node))
    };
    // A broker that does not answer must neither hang the process nor keep it from
    // stopping: the attempt has a time limit (each node of a cluster its own), and a
    // stop ends it at once.
    let limit = BROKER_TIMEOUT * u32::try_from(nodes.len().max(1)).unwrap_or(1);
    let (connection, publisher, node) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        opened = tokio::time::timeout(limit, opened) => match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("RabbitMQ at {} cannot be used", broker::redacted(url))))
            }
            Err(_) => anyhow::bail!(
                "RabbitMQ at {} did not answer within {limit:?}",
                broker::redacted(url)
            ),
        },
    };
    app.broker_node.store(node, Ordering::Relaxed);
    let connection = Arc::new(connection);
    declare_unconsumed(&app, &connection).await;
    *app.publisher.write().await = Some(publisher);
    app.broker_up.store(true, Ordering::Relaxed);
    app.broker_ever_up.store(true, Ordering::Relaxed);
    let reached = nodes.get(node).copied().unwrap_or(url.as_str());
    tracing::info!(broker = %broker::redacted(reached), nodes = nodes.len(), "connected to RabbitMQ");

    let tracker = TaskTracker::new();
    let lost = CancellationToken::new();
    let epoch = Epoch::new(&lost);
    let mut sources: Vec<Source> = app
        .settings
        .consumers
        .iter()
        .map(|t| Source::Work(*t))
        .collect();
    sources.push(Source::Dead);
    sources.push(Source::Requeue);
    let mut loops = Vec::new();
    for source in sources {
        loops.push(tokio::spawn(consume(
            app.clone(),
            connection.clone(),
            source,
            stop.clone(),
            lost.clone(),
            tracker.clone(),
            epoch.clone(),
        )));
    }
    let watcher = tokio::spawn(watch_queues(app.clone(), connection.clone(), lost.clone()));
    let watchdog = tokio::spawn(watch_connection(connection.clone(), lost.clone()));
    let recoveries = tokio::spawn(watch_recoveries(
        connection.events_listener(),
        epoch.clone(),
        lost.clone(),
    ));
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
    watchdog.abort();
    recoveries.abort();
    let mut result = Ok(());
    // The channels stay open until the work in flight is acked on them: closing a
    // channel hands its unacked deliveries back to the broker.
    let mut channels = Vec::new();
    for l in loops {
        match l.await {
            Ok(Ok(opened)) => channels.extend(opened),
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(anyhow::anyhow!("consumer task failed: {e}")),
        }
    }
    tracker.close();
    earlier.retain(|t| !t.is_empty());
    earlier.push(tracker.clone());
    if stop.is_cancelled() {
        wait_for_work(&app, &stop, earlier).await;
    } else if !tracker.is_empty() {
        // Lost: the broker took this session's deliveries back with the connection,
        // and no ack reaches it any more. The work in flight ends beside the next
        // session rather than before it: a round under way records what its calls did
        // (the redelivered events then find it), and nothing more of its batch starts
        // (`event_path::handle`). Waiting for it here held the new connection for as
        // long as the slowest of it (a wait for another attempt's calls: a minute).
        tracing::info!(
            batches = tracker.len(),
            "the lost session's work in flight ends beside the next session"
        );
    }
    relay_stop.cancel();
    // The results of the last events go out before the connection closes (or wait in
    // the outbox for the next process).
    if let Err(e) = relay.await {
        tracing::error!(error = %e, "the results relay failed");
    }
    // On a connection that is gone these may never be answered: bounded.
    let closing = futures_util::future::join_all(
        channels
            .iter()
            .map(|c| c.close(200, "consumer stopped".into())),
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    if stop.is_cancelled() {
        let closing = connection.close(200, "skeelo-workers stopping".into());
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
    } else if result.is_ok() {
        // Lost without a stop: the caller connects again.
        result = Err(anyhow::anyhow!("the broker connection was lost"));
    }
    if !stop.is_cancelled() {
        // A cluster's node that went away is tried last next time.
        app.broker_node.store(node + 1, Ordering::Relaxed);
    }
    result
}

/// Waits for the work of the sessions in `trackers` (closed) to end, at most the stop
/// grace after a stop: what has not finished by then goes back to the broker when the
/// channels close (or went back with a lost connection), and the uncertainty marks of
/// any calls it made are read back by whoever gets it next, as after a crash (the
/// process exits right after). Sessions whose work ended are let go.
pub(crate) async fn wait_for_work(
    app: &App,
    stop: &CancellationToken,
    trackers: &mut Vec<TaskTracker>,
) {
    trackers.retain(|t| !t.is_empty());
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(app.settings.stop_grace).await;
    };
    tokio::select! {
        _ = futures_util::future::join_all(trackers.iter().map(TaskTracker::wait)) => {}
        _ = grace => {
            tracing::error!(
                grace_seconds = app.settings.stop_grace.as_secs(),
                batches = trackers.iter().map(TaskTracker::len).sum::<usize>(),
                "work still in flight at the end of the stop grace; its deliveries go back to the broker"
            );
        }
    }
    // Waited for once: a later call in the same stop does not start a second grace.
    trackers.clear();
}

/// Which life of the session's connection deliveries came in. Their delivery tags end
/// with it, also when the client recovers the connection in place: the work on them
/// then stops, since the broker gives them out again (an ack or a retry copy from it
/// would be void, or a second event).
#[derive(Clone)]
pub(crate) struct Epoch {
    lost: CancellationToken,
    current: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Epoch {
    fn new(lost: &CancellationToken) -> Epoch {
        Epoch {
            lost: lost.clone(),
            current: Arc::new(std::sync::Mutex::new(lost.child_token())),
        }
    }

    /// Cancelled when this life of the connection ends (or the session does).
    fn token(&self) -> CancellationToken {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn end(&self) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current.cancel();
        *current = self.lost.child_token();
    }
}

/// Ends the epoch at each recovery of the connection in place (the client says
/// `Connected` again; its first `Connected` came before this listened).
async fn watch_recoveries(
    mut events: impl futures_util::Stream<Item = lapin::Event> + Unpin,
    epoch: Epoch,
    lost: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = lost.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(lapin::Event::Connected) => {
                tracing::info!("the broker connection was recovered in place; the work on its earlier deliveries stops (the broker gives them out again)");
                epoch.end();
            }
            Some(_) => {}
            None => return,
        }
    }
}

/// Ends the session when the connection stays down: the client's own recovery may
/// retry for many minutes, or never complete, after a broker restart; past
/// [`RECOVERY_LIMIT`] a new connection is made from scratch.
async fn watch_connection(connection: Arc<Connection>, lost: CancellationToken) {
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let status = connection.status();
        if status.connected() {
            if down_since.take().is_some() {
                tracing::info!("the broker connection recovered");
            }
            continue;
        }
        let since = *down_since.get_or_insert_with(std::time::Instant::now);
        if status.closed() || status.errored() || since.elapsed() > RECOVERY_LIMIT {
            tracing::error!(
                down_ms = since.elapsed().as_millis() as u64,
                "the broker connection did not recover; connecting again from scratch"
            );
            lost.cancel();
            return;
        }
    }
}

/// Declares the work queues of the types this process does not consume, each on its
/// own channel: the ERP's events of those types then wait in their queue for their
/// dedicated workers, whichever process starts first. A refusal concerns only that
/// queue; it is logged, and its own workers report it.
async fn declare_unconsumed(app: &App, connection: &Connection) {
    for t in EventType::ALL {
        if app.settings.consumers.contains(&t) {
            continue;
        }
        let declared = async {
            let channel = connection.create_channel().await?;
            broker::declare_work_queue(&channel, t).await?;
            let _ = channel.close(200, "declared".into()).await;
            Ok::<_, broker::BrokerError>(())
        };
        if let Err(e) = declared.await {
            tracing::warn!(queue = %broker::queue_name(t), error = %e, "could not declare the queue of a type this process does not consume");
        }
    }
}

/// Reads every queue's depth and consumers every few seconds (a passive declare), for
/// `skeelo_queue_messages` and `skeelo_queue_consumers`: how far behind, and whether
/// anyone is consuming at all.
async fn watch_queues(app: Arc<App>, connection: Arc<Connection>, lost: CancellationToken) {
    watch_queues_until_lost(&app, &connection, &lost).await;
    // No figures from a session that is over: no consumer is replaced on stale ones.
    app.queues.set_orphaned(None);
}

async fn watch_queues_until_lost(app: &App, connection: &Connection, lost: &CancellationToken) {
    let mut channel = loop {
        match connection.create_channel().await {
            Ok(c) => break c,
            Err(_) => tokio::select! {
                _ = lost.cancelled() => return,
                _ = tokio::time::sleep(app.settings.queue_watch) => {}
            },
        }
    };
    let mut queues = broker::operator_queues();
    queues.extend(
        app.settings
            .retry
            .delays
            .iter()
            .map(|d| broker::delay_queue_name(*d)),
    );
    let mut management_failing = Quiet::default();
    while !lost.is_cancelled() {
        read_unacked(app, &queues, &mut management_failing).await;
        for q in &queues {
            let (messages, consumers) = broker::queue_depth(connection, &mut channel, q)
                .await
                .unwrap_or((0, 0));
            app.metrics
                .queue_messages
                .with_label_values(&[q])
                .set(i64::from(messages));
            app.metrics
                .queue_consumers
                .with_label_values(&[q])
                .set(i64::from(consumers));
        }
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(app.settings.queue_watch) => {}
        }
    }
}

/// A failure said once, again at most once a minute while it lasts, and its end said.
#[derive(Default)]
struct Quiet(Option<std::time::Instant>);

impl Quiet {
    /// True when the failure should be logged now.
    fn failing(&mut self) -> bool {
        match self.0 {
            Some(last) if last.elapsed() < Duration::from_secs(60) => false,
            _ => {
                self.0 = Some(std::time::Instant::now());
                true
            }
        }
    }

    /// True when a failure had been said and is over now.
    fn recovered(&mut self) -> bool {
        self.0.take().is_some()
    }
}

/// The broker's unacknowledged counts, for `skeelo_queue_messages_unacked` and for the
/// consumers' check of deliveries held but not handled. When the API does not answer
/// the counts are unknown, and no consumer is replaced on stale figures.
async fn read_unacked(app: &App, queues: &[String], failing: &mut Quiet) {
    let Some((management, vhost)) = &app.management else {
        return;
    };
    match management.counts(vhost).await {
        Ok(counts) => {
            if failing.recovered() {
                tracing::info!(management = %management.shown(), "the management API answers again");
            }
            for q in queues {
                let n = counts.unacked.get(q).copied().unwrap_or(0);
                app.metrics
                    .queue_unacked
                    .with_label_values(&[q])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            app.queues.set_orphaned(Some(counts.orphaned));
        }
        Err(e) => {
            if failing.failing() {
                tracing::warn!(error = %e, "the broker's unacknowledged counts cannot be read; deliveries held but not handled are not watched meanwhile");
            }
            app.queues.set_orphaned(None);
            // Unknown, not what it was: a frozen figure would fire the alert, or hide it.
            for q in queues {
                let _ = app.metrics.queue_unacked.remove_label_values(&[q]);
            }
        }
    }
}

/// How one consumer's run ended.
enum Ended {
    /// Stopped or the connection was lost: its channel stays open until the work in
    /// flight is acked on it.
    Stopped(Channel),
    /// Its queue refused it (a declaration or the consume), or the broker cancelled
    /// the consumer: only this consumer starts again, on a new channel.
    Queue {
        channel: Channel,
        reason: &'static str,
        error: String,
    },
}

/// Runs one queue's consumer for the whole session. A queue that cannot be declared
/// or consumed affects its own type only: it is named in `/readyz` and
/// `skeelo_queue_unavailable`, and tried again after a pause that doubles up to half
/// a minute, while the other types go on. Returns every channel it opened.
async fn consume(
    app: Arc<App>,
    connection: Arc<Connection>,
    source: Source,
    stop: CancellationToken,
    lost: CancellationToken,
    tracker: TaskTracker,
    epoch: Epoch,
) -> anyhow::Result<Vec<Channel>> {
    let queue = source.queue();
    let mut channels = Vec::new();
    const FIRST_PAUSE: Duration = Duration::from_millis(500);
    let mut pause = FIRST_PAUSE;
    loop {
        let started = std::time::Instant::now();
        let ended =
            consume_until_stopped(&app, &connection, source, &stop, &lost, &tracker, &epoch).await;
        // A consumer that ran a while before it ended starts again as quickly as a new one.
        if started.elapsed() > Duration::from_secs(60) {
            pause = FIRST_PAUSE;
        }
        match ended {
            Ok(Ended::Stopped(channel)) => {
                channels.push(channel);
                return Ok(channels);
            }
            Ok(Ended::Queue {
                channel,
                reason,
                error,
            }) => {
                channels.push(channel);
                app.metrics
                    .consumer_restarts
                    .with_label_values(&[&queue, reason])
                    .inc();
                if reason == HELD {
                    tracing::warn!(queue = %queue, error = %error, "consumer replaced: the broker counted messages delivered to it that it never received");
                } else {
                    if reason != CANCELLED {
                        app.queues.down(&app.metrics, &queue, reason, &error);
                    }
                    tracing::error!(queue = %queue, reason, error = %error, pause_ms = pause.as_millis() as u64, "this queue cannot be consumed now; the other types go on; trying again");
                }
                let wait = if reason == HELD { FIRST_PAUSE } else { pause };
                tokio::select! {
                    _ = stop.cancelled() => return Ok(channels),
                    _ = lost.cancelled() => return Ok(channels),
                    _ = tokio::time::sleep(wait) => {}
                }
                // A consumer replaced for holding messages had nothing wrong with its
                // queue: its replacement starts at once, with no growing pause.
                if reason != HELD {
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
            Err(e) => {
                lost.cancel();
                return Err(e);
            }
        }
    }
}

/// A queue-level refusal ends only this consumer; anything else ends the session.
fn refused(channel: Channel, e: lapin::Error) -> anyhow::Result<Ended> {
    match broker::queue_refusal(&e) {
        Some(reason) => Ok(Ended::Queue {
            channel,
            reason,
            error: e.to_string(),
        }),
        None => Err(e.into()),
    }
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
    epoch: &Epoch,
) -> anyhow::Result<Ended> {
    let channel = connection.create_channel().await?;
    // Requeued dead letters are taken a few at a time: the bounded batch in which a
    // requeue of thousands moves, in the partner rate's lowest lane.
    let prefetch = match source {
        Source::Requeue => app.settings.prefetch.min(REQUEUE_PREFETCH),
        _ => app.settings.prefetch,
    };
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let queue = source.queue();
    if let Source::Work(t) = source {
        match broker::declare_work_queue(&channel, t).await {
            Ok(()) => {}
            Err(broker::BrokerError::Amqp(e)) => return refused(channel, e),
            Err(e) => return Err(e.into()),
        }
    }
    app.queues.up(&app.metrics, &queue);
    let batches = Arc::new(tokio::sync::Semaphore::new(match source {
        Source::Requeue => 1,
        _ => app.settings.batches_per_type(),
    }));
    let mut skeelo_down = app.skeelo_health.watch();
    let mut db_down = app.db_health.watch();
    loop {
        // Outage mode: take no new work until every downstream answers again.
        while paused(app) {
            tokio::select! {
                _ = stop.cancelled() => return Ok(Ended::Stopped(channel)),
                _ = lost.cancelled() => return Ok(Ended::Stopped(channel)),
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
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut deliveries = match consumer {
            Ok(c) => c.ready_chunks(app.settings.batch_size()),
            Err(e) => return refused(channel, e),
        };
        tracing::info!(queue = %queue, prefetch = app.settings.prefetch, "consuming");
        let in_work = app.metrics.in_flight.with_label_values(&[source.label()]);
        let mut held = Held::new(app.settings.held_after);
        let mut received = 0u64;
        let mut look = tokio::time::interval(app.settings.queue_watch);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    tracing::info!(queue = %queue, "stopped taking work");
                    return Ok(Ended::Stopped(channel));
                }
                _ = lost.cancelled() => return Ok(Ended::Stopped(channel)),
                permit = batches.clone().acquire_owned() => permit?,
            };
            // Biased: a delivery that is here is taken before the look, so a consumer
            // is never replaced with a delivery in hand.
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    tracing::info!(queue = %queue, "stopped taking work");
                    return Ok(Ended::Stopped(channel));
                }
                _ = lost.cancelled() => return Ok(Ended::Stopped(channel)),
                _ = skeelo_down.changed() => {}
                _ = db_down.changed() => {}
                next = deliveries.next() => match next {
                    Some(chunk) => {
                        received += chunk.len() as u64;
                        if let Some(e) = dispatch(app, source, chunk, tracker, &epoch.token(), permit) {
                            tracing::warn!(queue = %queue, error = %e, "consumer interrupted; waiting for recovery");
                            channel.wait_for_recovery(e).await?;
                        }
                    }
                    None => {
                        return Ok(Ended::Queue {
                            channel,
                            reason: CANCELLED,
                            error: "the broker ended the consumer (its queue deleted?)".into(),
                        })
                    }
                },
                _ = look.tick() => {
                    // Figures older than a few readings are stale: not acted on.
                    let fresh = app.settings.queue_watch * 3 + Duration::from_secs(5);
                    let broker = app.queues.orphaned(&queue, fresh);
                    if held.look(std::time::Instant::now(), broker, in_work.get(), received) {
                        // Closing the channel is what makes the broker give them back.
                        let _ = channel.close(200, "deliveries held but never received".into()).await;
                        return Ok(Ended::Queue {
                            channel,
                            reason: HELD,
                            error: format!(
                                "{} unacknowledged at the broker that no consumer's channel counts, for {:?}, none received or in work here",
                                broker.unwrap_or(0),
                                app.settings.held_after
                            ),
                        });
                    }
                }
            }
            if paused(app) {
                let cancelled = channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await;
                if let Err(e) = cancelled {
                    // A consumer that could not be cancelled would go on taking work
                    // through the outage: its channel is closed instead (what it holds
                    // goes back to the queue).
                    let _ = channel.close(200, "outage mode".into()).await;
                    return Ok(Ended::Queue {
                        channel,
                        reason: CANCELLED,
                        error: format!("outage mode: the consumer could not be cancelled: {e}"),
                    });
                }
                tracing::warn!(queue = %queue, "outage mode: stopped taking work");
                // Deliveries already sent before the cancel still come out of the
                // stream until the broker confirms the cancel: hand every one to the
                // handler (they are postponed at no cost) rather than leave any
                // unacknowledged on the channel, however long the handler takes. The
                // stream ends with the cancel's confirmation; a stop or a lost
                // connection ends the drain too (the channel's close then gives back
                // what is left). It is tracked, so a stop waits for it.
                let drain = {
                    let (app, tracker_inner, batches) =
                        (app.clone(), tracker.clone(), batches.clone());
                    let (stop, lost, epoch) = (stop.clone(), lost.clone(), epoch.clone());
                    async move {
                        let drained = async {
                            while let Some(chunk) = deliveries.next().await {
                                let Ok(permit) = batches.clone().acquire_owned().await else {
                                    break;
                                };
                                if dispatch(
                                    &app,
                                    source,
                                    chunk,
                                    &tracker_inner,
                                    &epoch.token(),
                                    permit,
                                )
                                .is_some()
                                {
                                    break;
                                }
                            }
                        };
                        tokio::select! {
                            _ = drained => {}
                            _ = stop.cancelled() => {}
                            _ = lost.cancelled() => {}
                        }
                    }
                };
                tracker.spawn(drain);
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
    gone: &CancellationToken,
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
        tracker.spawn(work(
            app.clone(),
            Batch::new(source, deliveries, gone.clone()),
            permit,
        ));
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
    if handled.is_ok() && batch.lost.is_cancelled() {
        if left > 0 {
            tracing::info!(
                queue = %batch.source.queue(),
                events = left,
                "not started: the broker took them back with their lost channel"
            );
        }
    } else if handled.is_err() || left > 0 {
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
