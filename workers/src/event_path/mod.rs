//! The event path: what happens to deliveries, whatever their queue and however many
//! arrived together (a single event is a batch of one).
//!
//! Each round is one transaction ([`round`]): the decisions come from the pure
//! [`skeelo_domain::decide`], the I/O around them runs once per round, and the result
//! for the ERP is written to the outbox in the same transaction as the outcome it
//! reports. A delivery is acked once its round commits; a relay publishes the results
//! afterwards, so a broker that refuses a result delays it and never causes a
//! redelivery. What a round could not finish goes to the failure policy
//! ([`skeelo_domain::policy`]): park, try again here, wait for another attempt's calls,
//! a delayed round through the broker, or back to the queue after a pause.

mod calls;
mod delivery;
mod round;

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use skeelo_broker::{self as broker, Envelope, DELAY_EXCHANGE};
use skeelo_domain::event::{self, Event, EventType};
use skeelo_domain::outcome::{EventResult, Outcome};
use skeelo_domain::policy::{self, Failure, Next, ParkReason, Situation};
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

pub(crate) use calls::InFlight;
use delivery::{Message, Park, Work};

use crate::App;

/// Where deliveries come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// The work queue of one event type.
    Work(EventType),
    /// What RabbitMQ dead-lettered by itself, to be parked in the database.
    Dead,
    /// Dead letters sent back by operators or the fleet, every type in one queue.
    Requeue,
}

impl Source {
    pub(crate) fn queue(self) -> String {
        match self {
            Source::Work(t) => broker::queue_name(t),
            Source::Dead => broker::DEAD_QUEUE.to_string(),
            Source::Requeue => broker::REQUEUE_QUEUE.to_string(),
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Source::Work(t) => t.as_str(),
            Source::Dead => "dead",
            Source::Requeue => "requeue",
        }
    }
}

/// Deliveries being handled, and which of them are settled (acked or given back), so
/// that whatever happens to the handler none is left unsettled.
pub(crate) struct Batch {
    pub(crate) source: Source,
    pub(crate) deliveries: Vec<Delivery>,
    settled: Mutex<Vec<bool>>,
    started: Instant,
    /// The channel the deliveries came on is gone (its session lost, or replaced by
    /// the client's recovery): the broker has them back, and nothing more of the
    /// batch is started.
    pub(crate) lost: CancellationToken,
}

impl Batch {
    pub(crate) fn new(source: Source, deliveries: Vec<Delivery>, lost: CancellationToken) -> Batch {
        let n = deliveries.len();
        Batch {
            source,
            deliveries,
            settled: Mutex::new(vec![false; n]),
            started: Instant::now(),
            lost,
        }
    }

    fn claim(&self, index: usize) -> bool {
        match self.settled.lock() {
            Ok(mut s) => match s.get_mut(index) {
                Some(done) if !*done => {
                    *done = true;
                    true
                }
                _ => false,
            },
            Err(_) => false,
        }
    }

    async fn ack(&self, index: usize) {
        if self.claim(index) {
            if let Err(e) = self.deliveries[index].ack(BasicAckOptions::default()).await {
                // After a reconnect the delivery tag is void; the broker redelivers the
                // message and idempotency makes that harmless.
                tracing::warn!(error = %e, "could not ack the delivery; the broker will redeliver it");
            }
        }
    }

    async fn requeue(&self, index: usize) {
        if self.claim(index) {
            let nack = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(e) = self.deliveries[index].nack(nack).await {
                tracing::warn!(error = %e, "could not give the delivery back; the broker will redeliver it");
            }
        }
    }

    /// Gives back every delivery not settled yet (after a panic in the handler).
    pub(crate) async fn requeue_rest(&self) -> usize {
        let mut n = 0;
        for i in 0..self.deliveries.len() {
            if self.claim(i) {
                n += 1;
                let nack = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let _ = self.deliveries[i].nack(nack).await;
            }
        }
        n
    }
}

/// Handles a batch of deliveries until each is settled. `permit` is the batch's slot
/// among its type's batches: given back while only waiting remains.
pub(crate) async fn handle(app: &App, batch: &Batch, permit: &mut Option<OwnedSemaphorePermit>) {
    let msgs: Vec<Message<'_>> = batch
        .deliveries
        .iter()
        .map(|d| {
            let envelope = Envelope::of(d);
            let label = match batch.source {
                Source::Work(t) => t.as_str(),
                Source::Dead | Source::Requeue => {
                    EventType::from_routing_key(&envelope.routing_key)
                        .map_or("unknown", |t| t.as_str())
                }
            };
            Message {
                delivery: d,
                envelope,
                label,
            }
        })
        .collect();
    let mut work = Vec::new();
    let mut parks = Vec::new();
    for (index, msg) in msgs.iter().enumerate() {
        match batch.source {
            Source::Dead => parks.push(Park {
                index,
                event: None,
                reason: ParkReason::Broker,
                class: msg
                    .envelope
                    .death
                    .as_ref()
                    .map_or("unknown".into(), |d| d.reason.clone()),
                error: msg
                    .envelope
                    .death
                    .as_ref()
                    .map_or("RabbitMQ dead-lettered it".into(), |d| d.describe()),
                attempts: msg.envelope.attempts,
            }),
            Source::Work(_) | Source::Requeue => match event::parse_encoded(
                &msg.envelope.routing_key,
                msg.envelope.content_encoding.as_deref(),
                &msg.delivery.data,
            ) {
                Ok(event) => work.push(Work {
                    index,
                    event,
                    tries: 0,
                }),
                Err(invalid) => parks.push(Park {
                    index,
                    event: None,
                    reason: ParkReason::Invalid,
                    class: invalid.reason().to_string(),
                    error: invalid.to_string(),
                    attempts: msg.envelope.attempts,
                }),
            },
        }
    }

    let mut one_by_one = false;
    let mut waiting: Vec<(Work, Duration)> = Vec::new();
    while !work.is_empty() || !parks.is_empty() || !waiting.is_empty() {
        if batch.lost.is_cancelled() {
            // The broker has these deliveries back and gives them out again: a round
            // started now would do their work twice over.
            return;
        }
        if work.is_empty() && parks.is_empty() {
            // Only events waiting for another attempt's calls: the batch's slot goes
            // back, so the type's other batches do not wait behind this one.
            permit.take();
            work = wait_for_calls(app, batch, &msgs, std::mem::take(&mut waiting)).await;
            continue;
        }
        work.sort_by_key(|w| w.index);
        let (this_work, this_parks) = if one_by_one {
            match work.is_empty() {
                false => (vec![work.remove(0)], Vec::new()),
                true => (Vec::new(), vec![parks.remove(0)]),
            }
        } else {
            (std::mem::take(&mut work), std::mem::take(&mut parks))
        };
        let done = round::run(app, batch.source.label(), &msgs, this_work, this_parks).await;
        one_by_one |= done.split;
        settle_round(app, batch, &msgs, &done.told, &done.parked).await;
        for (w, at_most) in done.waiting {
            let msg = &msgs[w.index];
            let failure = Failure::CallsInFlight(at_most);
            match policy::next(failure, &situation(app, batch, msg, w.tries + 1)) {
                Next::WaitForCalls(at_most) => waiting.push((w, at_most)),
                _ => work.push(w),
            }
        }
        work.extend(done.again);
        parks.extend(done.parks_again);
        let mut pause = Duration::ZERO;
        for f in done.failed {
            let msg = &msgs[f.work.index];
            let situation = situation(app, batch, msg, f.work.tries + 1);
            log_failure(msg, &f.work.event, f.failure, &f.error);
            match policy::next(f.failure, &situation) {
                Next::TryAgain(ceiling) => {
                    pause = pause.max(ceiling.mul_f64(rand::random_range(0.5..=1.0)));
                    work.push(Work {
                        tries: f.work.tries + 1,
                        ..f.work
                    });
                }
                Next::WaitForCalls(at_most) => waiting.push((f.work, at_most)),
                Next::Park(reason) => {
                    let (class, error) = match reason {
                        ParkReason::Exhausted => (
                            "transient".to_string(),
                            format!(
                                "gave up after {} attempts: {}",
                                msg.envelope.attempts.saturating_add(1),
                                f.error
                            ),
                        ),
                        _ => (f.class, f.error),
                    };
                    parks.push(Park::of_event(f.work, &msgs, reason, class, error));
                }
                Next::DelayRound => {
                    app.metrics
                        .retries
                        .with_label_values(&[f.work.event.event_type.as_str()])
                        .inc();
                    let attempts = msg.envelope.attempts.saturating_add(1);
                    let wait = delay(app, batch, msg, f.work.index, attempts, &f.error).await;
                    note_retry(app, &f.work.event, attempts, wait, &f.error);
                }
                Next::Postpone => {
                    let wait = delay(
                        app,
                        batch,
                        msg,
                        f.work.index,
                        msg.envelope.attempts,
                        &f.error,
                    )
                    .await;
                    note_retry(app, &f.work.event, msg.envelope.attempts, wait, &f.error);
                }
                Next::Requeue(after) => requeue_after(app, batch, f.work.index, after).await,
            }
        }
        for (p, failure, error) in done.unparked {
            let msg = &msgs[p.index];
            tracing::error!(error = %error, "cannot park the dead letter now");
            match policy::next(failure, &situation(app, batch, msg, 1)) {
                Next::Requeue(after) => requeue_after(app, batch, p.index, after).await,
                // The database refuses the letter itself: it waits in its queue, asked
                // again after the longest pause, never in a loop.
                Next::Park(_) => requeue_after(app, batch, p.index, policy::MAX_PAUSE).await,
                // Back later through a delay queue, at no cost; judged again then.
                _ => {
                    delay(app, batch, msg, p.index, msg.envelope.attempts, &error).await;
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

fn situation(app: &App, batch: &Batch, msg: &Message<'_>, tries_here: u32) -> Situation {
    let retry = &app.settings.retry;
    Situation {
        tries_here,
        attempts: msg.envelope.attempts,
        immediate: retry.immediate,
        max_attempts: retry.max_attempts,
        immediate_base: retry.immediate_base,
        partner_down: app.skeelo_health.is_down(),
        from_dead_queue: matches!(batch.source, Source::Dead),
        broker_refusals: app.broker_refusals.load(Ordering::Relaxed),
    }
}

fn log_failure(msg: &Message<'_>, event: &Event, failure: Failure, error: &str) {
    tracing::warn!(
        event_id = %event.event_id,
        contract_id = %event.contract_id,
        r#type = event.event_type.as_str(),
        attempt = msg.envelope.attempts + 1,
        failure = ?failure,
        error = %error,
        "the event failed"
    );
}

/// Acks what a round committed, and counts and logs it.
async fn settle_round(
    app: &App,
    batch: &Batch,
    msgs: &[Message<'_>],
    told: &[(usize, EventResult)],
    parked: &[(usize, EventResult, Park)],
) {
    if told.is_empty() && parked.is_empty() {
        return;
    }
    // The results wait in the outbox: the relay sends them now.
    app.outbox_wake.notify_one();
    let took = batch.started.elapsed();
    for (index, result) in told {
        tracing::info!(
            event_id = %result.event_id,
            contract_id = result.contract_id.as_deref().unwrap_or_default(),
            r#type = %result.event_type,
            attempt = msgs[*index].envelope.attempts + 1,
            outcome = result.outcome.as_str(),
            skeelo_status = result.skeelo_status.map(|s| s.as_str()),
            detail = %result.detail,
            duration_ms = took.as_secs_f64() * 1000.0,
            "event handled"
        );
    }
    for (_, result, p) in parked {
        let label = match p.reason {
            ParkReason::Invalid => p.class.as_str(),
            other => other.as_str(),
        };
        app.metrics
            .dead_letters
            .with_label_values(&[&result.event_type, label])
            .inc();
        tracing::warn!(
            event_id = %result.event_id,
            contract_id = result.contract_id.as_deref().unwrap_or("unknown"),
            r#type = %result.event_type,
            reason = p.reason.as_str(),
            class = %p.class,
            error = %p.error,
            "dead-lettered"
        );
    }
    let acks = told
        .iter()
        .map(|(i, _)| *i)
        .chain(parked.iter().map(|(i, ..)| *i))
        .map(|i| batch.ack(i));
    futures_util::future::join_all(acks).await;
    if let Source::Work(_) | Source::Requeue = batch.source {
        let seconds = took.as_secs_f64();
        for (_, result) in told {
            app.metrics
                .event_done(&result.event_type, result.outcome, seconds);
        }
        for (_, result, _) in parked {
            app.metrics
                .event_done(&result.event_type, Outcome::DeadLettered, seconds);
        }
    }
}

/// Waits for the calls each waiting event's contract may still have in flight, then
/// hands the events back to be tried; on shutdown they go back to their queue.
async fn wait_for_calls(
    app: &App,
    batch: &Batch,
    msgs: &[Message<'_>],
    waiting: Vec<(Work, Duration)>,
) -> Vec<Work> {
    let waits = waiting.into_iter().map(|(w, at_most)| async move {
        tracing::info!(
            event_id = %w.event.event_id,
            contract_id = %w.event.contract_id,
            r#type = w.event.event_type.as_str(),
            at_most_ms = at_most.as_millis() as u64,
            attempt = msgs[w.index].envelope.attempts + 1,
            "another attempt's calls to Skeelo may still land; waiting for them to end"
        );
        let ended = calls::wait_for(app, &batch.lost, w.event.contract_id.as_str(), at_most).await;
        (w, ended)
    });
    let mut again = Vec::new();
    for (w, ended) in futures_util::future::join_all(waits).await {
        if ended {
            again.push(w);
        } else if batch.lost.is_cancelled() {
            // Back with the broker, with the session.
        } else {
            // The fleet is stopping: back later through a delay queue, at no cost.
            let msg = &msgs[w.index];
            let why = "the fleet stopped while it waited for another attempt's calls";
            delay(app, batch, msg, w.index, msg.envelope.attempts, why).await;
        }
    }
    again
}

/// Notes, where `skeelo-ops explain` reads it, that the event goes round again after
/// `wait` (in the background: a note that cannot be written costs nothing but the note).
fn note_retry(app: &App, event: &Event, attempts: u32, wait: Option<Duration>, error: &str) {
    let Some(wait) = wait else {
        return;
    };
    let store = app.store.clone();
    let (id, contract, kind) = (
        event.event_id.to_string(),
        event.contract_id.to_string(),
        event.event_type.as_str(),
    );
    let error = error.to_string();
    let next_at = OffsetDateTime::now_utc() + wait;
    let attempt = i32::try_from(attempts).unwrap_or(i32::MAX);
    tokio::spawn(async move {
        if let Err(e) = store
            .note_retry(&id, Some(&contract), kind, attempt, next_at, &error)
            .await
        {
            tracing::debug!(error = %e, "could not note the next attempt");
        }
    });
}

/// Sends a copy to the delay queue (confirmed), then acks the original; `attempts`
/// is what the copy carries (one more than now for a round that costs an attempt).
/// Returns the delay when the copy was sent.
async fn delay(
    app: &App,
    batch: &Batch,
    msg: &Message<'_>,
    index: usize,
    attempts: u32,
    error: &str,
) -> Option<Duration> {
    let delays = &app.settings.retry.delays;
    let step = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    let step = if attempts == msg.envelope.attempts {
        0
    } else {
        step
    };
    let Some(wait) = delays
        .get(step.min(delays.len().saturating_sub(1)))
        .copied()
    else {
        requeue_after(app, batch, index, Duration::from_secs(1)).await;
        return None;
    };
    let first = msg
        .envelope
        .first_failure
        .unwrap_or_else(OffsetDateTime::now_utc);
    let headers = broker::retry_headers(attempts, first, error, wait, msg.envelope.requeued_from);
    let message_id = msg.envelope.message_id.clone().unwrap_or_default();
    let publisher = app.publisher().await;
    // Only through the session the delivery came on (taken before this look, so it
    // cannot be the next one's): once that is lost, the broker has the delivery back,
    // and a copy sent through the next session would be a second event.
    if batch.lost.is_cancelled() {
        return None;
    }
    let sent = match publisher {
        Some(publisher) => publisher
            .publish(
                DELAY_EXCHANGE,
                &msg.envelope.routing_key,
                &message_id,
                &msg.delivery.data,
                headers,
            )
            .await
            .map_err(|e| e.to_string()),
        None => Err("no broker session".to_string()),
    };
    match sent {
        Ok(()) => {
            app.broker_refusals.store(0, Ordering::Relaxed);
            tracing::info!(
                attempts,
                delay_ms = wait.as_millis() as u64,
                "will try again later"
            );
            batch.ack(index).await;
            Some(wait)
        }
        Err(e) => {
            let refusals = app.broker_refusals.fetch_add(1, Ordering::Relaxed) + 1;
            let mut s = situation(app, batch, msg, 1);
            s.broker_refusals = refusals;
            let after = match policy::next(Failure::BrokerRefused, &s) {
                Next::Requeue(after) => after,
                _ => Duration::from_secs(1),
            };
            tracing::error!(error = %e, pause_ms = after.as_millis() as u64, refusals, "could not hand the event to its delay queue; it goes back to its queue after a pause");
            requeue_after(app, batch, index, after).await;
            None
        }
    }
}

/// Gives a delivery back to its queue after `after` (sooner if the fleet stops; at
/// once if the session is lost, which gave it back already).
async fn requeue_after(app: &App, batch: &Batch, index: usize, after: Duration) {
    tokio::select! {
        _ = app.stop.cancelled() => {}
        _ = batch.lost.cancelled() => {}
        _ = tokio::time::sleep(after) => {}
    }
    batch.requeue(index).await;
}
