//! What happens to one delivery, whatever its queue: parse, decide, bring Skeelo in
//! line, commit, tell the ERP. The consumer loop acks only after this returns, and
//! every path that acks has first made the message's fate durable: applied and
//! committed, parked as a dead letter, or handed to a delay queue with confirms.
//!
//! Failures, by what the event needs:
//! - invalid input, or Skeelo refusing (4xx): parked at once, never retried;
//! - Skeelo failing (5xx, timeout): a few immediate tries, then delayed retries through
//!   the broker, each costing one attempt; when attempts run out, parked;
//! - throttling (429), a Skeelo outage, a database failure: postponed without costing
//!   an attempt — none of them says anything about the event.

use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::types::FieldTable;
use skeelo_shared::broker::{self, long_string, DELAY_EXCHANGE};
use skeelo_shared::event::{self, Event, InvalidEvent};
use skeelo_shared::lifecycle::{self, Call, Held, Target};
use skeelo_shared::outcome::{EventResult, Outcome};
use skeelo_shared::pacer;
use skeelo_shared::skeelo::{NewSubscription, SkeeloError};
use skeelo_shared::store::apply::{self as store, ContractWrite, EventWrite};
use skeelo_shared::store::dead::{NewDeadLetter, Reason};
use skeelo_shared::store::{ContractState, NewHistory, StoreError};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::App;

/// The start of the error text when an event's calls outlived the call budget.
pub(crate) const CALL_BUDGET_SPENT: &str = "Skeelo calls took longer than the call budget";

/// What the consumer loop does with the delivery once the handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Its fate is durable elsewhere (applied, parked, or in a delay queue): remove it.
    Ack,
    /// Nothing could be made durable (the broker or database refused): give it back.
    Requeue,
}

/// What the handler needs of a delivery.
pub(crate) struct Message<'a> {
    /// The type its queue stands for (labels and results when the body cannot say).
    queue_type: &'static str,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    message_id: Option<String>,
    pub(crate) redelivered: bool,
    /// Attempts that failed before this delivery (our header).
    pub(crate) attempts: i64,
    /// When the first attempt failed (our header).
    first_failure: Option<OffsetDateTime>,
}

impl ApplyError {
    /// A call may still be in flight: the call budget ran out and the request was
    /// dropped while Skeelo may still be working on it.
    fn in_flight(&self) -> bool {
        matches!(self, ApplyError::Skeelo(SkeeloError::Transient(m)) if m.starts_with(CALL_BUDGET_SPENT))
    }

    /// The database refused the data itself (SQLSTATE class 22 data exception, 23
    /// integrity): no retry can help, and it says nothing about the database's health.
    fn data_refused(&self) -> Option<String> {
        let e = match self {
            ApplyError::Db(e) | ApplyError::Store(StoreError::Query(e)) => e,
            _ => return None,
        };
        let code = e.code()?.code();
        (code.starts_with("22") || code.starts_with("23")).then(|| format!("SQLSTATE {code}"))
    }
}

impl<'a> Message<'a> {
    pub(crate) fn from_delivery(queue_type: &'static str, d: &'a Delivery) -> Message<'a> {
        let headers = d.properties.headers().as_ref();
        Message {
            queue_type,
            routing_key: d.routing_key.as_str(),
            body: &d.data,
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_string()),
            redelivered: d.redelivered,
            attempts: broker::header_int(headers, broker::ATTEMPTS_HEADER)
                .unwrap_or(0)
                .max(0),
            first_failure: broker::header_str(headers, broker::FIRST_FAILURE_HEADER)
                .and_then(|s| OffsetDateTime::parse(&s, &Rfc3339).ok()),
        }
    }

    /// Identity across redeliveries, for the dead-letter table.
    fn key(&self, event_id: Option<&str>) -> String {
        if let Some(id) = event_id {
            return id.to_string();
        }
        if let Some(id) = &self.message_id {
            return format!("message:{id}");
        }
        // FNV-1a over routing key and body: stable, and enough to tell copies apart.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.routing_key.bytes().chain(self.body.iter().copied()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("digest:{h:016x}")
    }
}

/// Where the one-event path begins when a batch hands an event over.
pub(crate) struct Start {
    /// Names the calls of this handling (see `skeelo_uncertain`). A batch whose calls
    /// for the contract have all returned passes its own, so the event may read Skeelo
    /// back at once; otherwise a fresh one, fenced behind any calls still in flight.
    pub(crate) attempt: uuid::Uuid,
    /// The batch already tried once and failed this way: judged as the first try.
    pub(crate) failure: Option<ApplyError>,
}

impl Start {
    pub(crate) fn fresh() -> Start {
        Start {
            attempt: uuid::Uuid::new_v4(),
            failure: None,
        }
    }
}

/// Why applying an event stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    Invalid(InvalidEvent),
    /// Another attempt's calls to Skeelo may still be in flight: wait this long.
    #[error("another attempt's calls to Skeelo may still be in flight")]
    Fenced(Duration),
    #[error(transparent)]
    Skeelo(#[from] SkeeloError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Handles one delivery from the queue of `queue_type`, on its own.
pub(crate) async fn handle(app: &App, msg: &Message<'_>) -> (Disposition, Option<Outcome>) {
    match event::parse(msg.routing_key, msg.body) {
        Ok(event) => handle_parsed(app, msg, event, Start::fresh()).await,
        Err(invalid) => {
            let event_id = event::peek_event_id(msg.body).map(|u| u.to_string());
            let contract_id = event::peek_contract_id(msg.body);
            let span = tracing::info_span!(
                "event",
                event_id = event_id
                    .as_deref()
                    .or(msg.message_id.as_deref())
                    .unwrap_or("unknown"),
                contract_id = contract_id.as_deref().unwrap_or("unknown"),
                r#type = msg.queue_type,
            );
            let park = Parking {
                from_dead_queue: false,
                event_id: event_id.as_deref(),
                contract_id: contract_id.as_deref(),
                event: None,
                reason: Reason::Invalid,
                class: invalid.reason().to_string(),
                error: invalid.to_string(),
                attempts: msg.attempts,
            };
            park_and_tell(app, msg, &park).instrument(span).await
        }
    }
}

/// Handles one valid event on its own, from `start`.
pub(crate) async fn handle_parsed(
    app: &App,
    msg: &Message<'_>,
    event: Event,
    start: Start,
) -> (Disposition, Option<Outcome>) {
    let span = tracing::info_span!(
        "event",
        event_id = %event.event_id,
        contract_id = %event.contract_id,
        r#type = event.event_type.as_str(),
        version = event.version.get(),
        attempt = msg.attempts + 1,
    );
    handle_event(app, msg, event, start).instrument(span).await
}

async fn handle_event(
    app: &App,
    msg: &Message<'_>,
    event: Event,
    start: Start,
) -> (Disposition, Option<Outcome>) {
    let started = Instant::now();
    let mut tries = 0;
    // Its own unrecorded calls have all returned when it tries again, so it may read
    // Skeelo back at once.
    let attempt = start.attempt;
    let mut first_failure = start.failure;
    let result = loop {
        tries += 1;
        let failure = match first_failure.take() {
            Some(failure) => failure,
            None => {
                // A delayed copy, a redelivery or a second try here may find its own
                // earlier attempt committed: then the ERP gets that attempt's result again.
                let repeat_first = msg.redelivered || msg.attempts > 0 || tries > 1;
                // Every Skeelo call of this event waits for its turn in the event type's lane.
                let lane = pacer::lane(event.event_type);
                let applied = pacer::LANE.scope(lane, apply(app, &event, repeat_first, attempt));
                match applied.await {
                    Ok(result) => {
                        app.skeelo_health.success();
                        app.db_health.success();
                        break result;
                    }
                    Err(e) => e,
                }
            }
        };
        if !matches!(failure, ApplyError::Fenced(_) | ApplyError::Invalid(_))
            && !failure.in_flight()
        {
            // Every call of this attempt has returned: nothing of it can land later.
            if let Err(e) = app
                .store
                .release_uncertain(&event.contract_id, attempt)
                .await
            {
                tracing::warn!(error = %e, "could not release the contract's uncertainty mark");
            }
        }
        let id = event.event_id.to_string();
        let parking = |reason, class: String, error: String, attempts| Parking {
            from_dead_queue: false,
            event_id: Some(&id),
            contract_id: Some(&event.contract_id),
            event: Some(&event),
            reason,
            class,
            error,
            attempts,
        };
        if let Some(code) = failure.data_refused() {
            let error = format!("the database refused the event's data ({code}): {failure}");
            let p = parking(
                Reason::Refused,
                "database_refused".into(),
                error,
                msg.attempts + 1,
            );
            return park_and_tell(app, msg, &p).await;
        }
        match failure {
            ApplyError::Fenced(wait) => {
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "another attempt's calls may still be in flight; waiting"
                );
                return delay_at_least(app, msg, wait).await;
            }
            ApplyError::Invalid(invalid) => {
                let class = invalid.reason().to_string();
                let p = parking(Reason::Invalid, class, invalid.to_string(), msg.attempts);
                return park_and_tell(app, msg, &p).await;
            }
            ApplyError::Skeelo(e @ SkeeloError::Throttled) => {
                return postpone(app, msg, &e.to_string()).await;
            }
            ApplyError::Skeelo(e @ (SkeeloError::Unavailable(_) | SkeeloError::Transient(_))) => {
                app.db_health.success();
                if matches!(e, SkeeloError::Unavailable(_)) {
                    app.skeelo_health.failure(&e.to_string());
                }
                if app.skeelo_health.is_down() {
                    return postpone(app, msg, &e.to_string()).await;
                }
                if tries > app.settings.retry.immediate {
                    return retry_later(app, msg, &event, &e.to_string()).await;
                }
                let pause = backoff(app.settings.retry.immediate_base, tries);
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "Skeelo failed; trying again");
                tokio::time::sleep(pause).await;
            }
            ApplyError::Skeelo(e @ SkeeloError::Rejected { .. }) => {
                let error = format!("Skeelo refused: {e}");
                let p = parking(Reason::Refused, e.class(), error, msg.attempts + 1);
                return park_and_tell(app, msg, &p).await;
            }
            ApplyError::Store(StoreError::Corrupt(e)) => {
                let error = format!("the contract's stored state is unreadable: {e}");
                let p = parking(
                    Reason::Refused,
                    "unreadable_state".into(),
                    error,
                    msg.attempts + 1,
                );
                return park_and_tell(app, msg, &p).await;
            }
            e => {
                app.db_health.failure(&e.to_string());
                return postpone(app, msg, &e.to_string()).await;
            }
        }
    };
    tracing::info!(
        outcome = result.outcome.as_str(),
        skeelo_status = result.skeelo_status.map(|s| s.as_str()),
        detail = %result.detail,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "event handled"
    );
    tell(app, &result, Disposition::Ack).await
}

/// Publishes the result, then lets the delivery go; if the ERP cannot be told, the
/// delivery goes back and its redelivery repeats the result.
pub(crate) async fn tell(
    app: &App,
    result: &EventResult,
    then: Disposition,
) -> (Disposition, Option<Outcome>) {
    match app.publish_result(result).await {
        Ok(()) => (then, Some(result.outcome)),
        Err(_) => (Disposition::Requeue, None),
    }
}

/// Exponential back-off with jitter, so retries of a wave do not arrive together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1 << attempt.min(8))
        .min(Duration::from_secs(10));
    ceiling.mul_f64(rand::random_range(0.5..=1.0))
}

/// A transient failure that costs an attempt: a delay queue, or parked when spent.
async fn retry_later(
    app: &App,
    msg: &Message<'_>,
    event: &Event,
    error: &str,
) -> (Disposition, Option<Outcome>) {
    let attempts = msg.attempts + 1;
    if attempts >= i64::from(app.settings.retry.max_attempts) {
        let id = event.event_id.to_string();
        let park = Parking {
            from_dead_queue: false,
            event_id: Some(&id),
            contract_id: Some(&event.contract_id),
            event: Some(event),
            reason: Reason::Exhausted,
            class: "transient".into(),
            error: format!("gave up after {attempts} attempts: {error}"),
            attempts,
        };
        return park_and_tell(app, msg, &park).await;
    }
    let step = usize::try_from(attempts - 1).unwrap_or(0);
    app.metrics
        .retries
        .with_label_values(&[event.event_type.as_str()])
        .inc();
    delay(app, msg, attempts, step, error).await
}

/// Not the event's fault (throttling, an outage): back later, no attempt spent.
async fn postpone(app: &App, msg: &Message<'_>, why: &str) -> (Disposition, Option<Outcome>) {
    delay(app, msg, msg.attempts, 0, why).await
}

/// Back after at least `wait` (the shortest configured delay that long), no attempt spent.
async fn delay_at_least(
    app: &App,
    msg: &Message<'_>,
    wait: Duration,
) -> (Disposition, Option<Outcome>) {
    let delays = &app.settings.retry.delays;
    let step = delays
        .iter()
        .position(|d| *d >= wait)
        .unwrap_or(delays.len().saturating_sub(1));
    delay(
        app,
        msg,
        msg.attempts,
        step,
        "waiting for another attempt's calls to Skeelo",
    )
    .await
}

/// Hands a copy to the delay queue of `step` (confirmed), then acks the original.
async fn delay(
    app: &App,
    msg: &Message<'_>,
    attempts: i64,
    step: usize,
    error: &str,
) -> (Disposition, Option<Outcome>) {
    let delays = &app.settings.retry.delays;
    let Some(wait) = delays.get(step.min(delays.len().saturating_sub(1))) else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return (Disposition::Requeue, None);
    };
    let first = msg.first_failure.unwrap_or_else(OffsetDateTime::now_utc);
    let mut headers = FieldTable::default();
    headers.insert(
        broker::ATTEMPTS_HEADER.into(),
        lapin::types::AMQPValue::LongLongInt(attempts),
    );
    headers.insert(
        broker::FIRST_FAILURE_HEADER.into(),
        long_string(&first.format(&Rfc3339).unwrap_or_default()),
    );
    let short: String = error.chars().take(500).collect();
    headers.insert(broker::LAST_ERROR_HEADER.into(), long_string(&short));
    headers.insert(
        broker::DELAY_HEADER.into(),
        long_string(&wait.as_millis().to_string()),
    );
    let message_id = msg.message_id.clone().unwrap_or_default();
    let Some(publisher) = app.publisher().await else {
        return (Disposition::Requeue, None);
    };
    match publisher
        .publish(
            DELAY_EXCHANGE,
            msg.routing_key,
            &message_id,
            msg.body,
            headers,
        )
        .await
    {
        Ok(()) => {
            tracing::warn!(attempts, delay_ms = wait.as_millis() as u64, error = %short, "will try again later");
            (Disposition::Ack, None)
        }
        Err(e) => {
            tracing::error!(error = %e, "could not hand the event to its delay queue; requeueing");
            tokio::time::sleep(Duration::from_millis(500)).await;
            (Disposition::Requeue, None)
        }
    }
}

/// A dead letter to park.
struct Parking<'a> {
    /// From the broker's dead-letter queue: if it cannot be parked, it goes back there,
    /// never to a work queue (the broker took it away from the workers on purpose).
    from_dead_queue: bool,
    event_id: Option<&'a str>,
    contract_id: Option<&'a str>,
    event: Option<&'a Event>,
    reason: Reason,
    class: String,
    error: String,
    attempts: i64,
}

/// Parks the message (durable first), records it in the contract's story, tells the ERP.
async fn park_and_tell(
    app: &App,
    msg: &Message<'_>,
    p: &Parking<'_>,
) -> (Disposition, Option<Outcome>) {
    let event_type = p.event.map_or(msg.queue_type, |e| e.event_type.as_str());
    let key = msg.key(p.event_id);
    let letter = NewDeadLetter {
        message_key: &key,
        event_id: p.event_id,
        contract_id: p.contract_id,
        event_type,
        routing_key: msg.routing_key,
        message_id: msg.message_id.as_deref(),
        body: msg.body,
        reason: p.reason,
        error_class: &p.class,
        last_error: &p.error,
        attempts: i32::try_from(p.attempts).unwrap_or(i32::MAX),
        first_failed_at: msg.first_failure,
    };
    let id = match app.store.park(&letter).await {
        Ok(id) => id,
        Err(e) => {
            app.db_health.failure(&e.to_string());
            tracing::error!(error = %e, "cannot park the dead letter now; it will come back");
            if p.from_dead_queue {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return (Disposition::Requeue, None);
            }
            return postpone(app, msg, &e.to_string()).await;
        }
    };
    let label = match p.reason {
        Reason::Invalid => p.class.as_str(),
        other => other.as_str(),
    };
    app.metrics
        .dead_letters
        .with_label_values(&[event_type, label])
        .inc();
    tracing::warn!(dead_letter = id, reason = p.reason.as_str(), class = %p.class, error = %p.error, "dead-lettered");
    let detail = format!(
        "dead letter {id} ({}, {}): {}",
        p.reason.as_str(),
        p.class,
        p.error
    );
    if let Some(contract_id) = p.contract_id {
        let id_text = p
            .event_id
            .or(msg.message_id.as_deref())
            .unwrap_or("unknown");
        let entry = NewHistory {
            contract_id,
            event_id: id_text,
            event_type,
            version: p.event.map(|e| e.version.get()),
            actor: p.event.and_then(|e| e.actor.as_deref()),
            occurred_at: p.event.map(|e| e.occurred_at),
            outcome: Outcome::DeadLettered,
            skeelo_status: None,
            skeelo_calls: 0,
            detail: &detail,
        };
        if let Err(e) = app.store.record_history(&entry).await {
            tracing::warn!(error = %e, "could not record the dead letter in the history");
        }
    }
    let result = EventResult {
        event_id: p
            .event_id
            .map(str::to_string)
            .or_else(|| msg.message_id.clone())
            .unwrap_or_else(|| "unknown".into()),
        contract_id: p.contract_id.map(str::to_string),
        event_type: event_type.to_string(),
        outcome: Outcome::DeadLettered,
        skeelo_status: None,
        detail,
        at: OffsetDateTime::now_utc(),
    };
    tell(app, &result, Disposition::Ack).await
}

/// One attempt, in one transaction under the contract's row lock.
async fn apply(
    app: &App,
    event: &Event,
    repeat_first: bool,
    attempt: uuid::Uuid,
) -> Result<EventResult, ApplyError> {
    let mut client = app.store.begin().await?;
    let tx = client.transaction().await?;
    let mut locked = store::lock(&tx, &[&event.contract_id], &[event.event_id]).await?;
    let state = locked
        .contracts
        .remove(&event.contract_id)
        .unwrap_or_default();
    let seen = locked.seen.remove(&event.event_id);
    let id = event.event_id.to_string();

    if let Some(first) = seen {
        // A redelivery (the broker's hint) may mean the ERP never got the first result:
        // repeat it. A fresh copy of a known event id is a duplicate.
        let (outcome, status, detail) = if repeat_first {
            (first.outcome, first.skeelo_status, first.detail)
        } else {
            let status = state.held.as_ref().map(|h| h.status);
            (
                Outcome::Duplicate,
                status,
                format!("event already handled ({})", first.outcome.as_str()),
            )
        };
        let entry = EventWrite {
            decided: None,
            history: history(event, &id, Outcome::Duplicate, status, 0, &detail),
        };
        store::write(&tx, &[], &[entry]).await?;
        tx.commit().await?;
        return Ok(result_of(event, outcome, status, detail));
    }

    let decision = lifecycle::decide(&state.facts, event);
    if let (lifecycle::Verdict::Applied, Some(sync)) = (decision.verdict, &event.sync) {
        // Only a sync that will reach Skeelo is judged against the catalogue; a late
        // or duplicate one is not, whatever Skeelo sells today.
        if let Some(unknown) = app
            .catalogue
            .unknown(&app.store, &app.skeelo, &sync.products)
            .await?
        {
            return Err(ApplyError::Invalid(InvalidEvent::UnknownProduct(unknown)));
        }
    }
    let target = lifecycle::target(&decision.facts);
    let mut held = state.held;
    if let Some(mark) = state.uncertain {
        // Calls were made before whose answers were never recorded: ask Skeelo. If
        // another attempt made them, only once they cannot still be in flight.
        let fence = app.settings.retry.fence();
        if mark.owner != attempt && mark.age < fence {
            return Err(ApplyError::Fenced(fence - mark.age));
        }
        tracing::warn!("Skeelo's state of this contract is uncertain; reading it back");
        held = app.skeelo.get(&event.contract_id).await?.map(|s| s.held());
    }
    if !lifecycle::plan(held.as_ref(), &target).is_empty() {
        app.store
            .mark_uncertain(&[&event.contract_id], attempt)
            .await?;
    }
    let document = decision
        .facts
        .synced
        .as_ref()
        .map(|s| s.details.subscriber.document.digits().to_string());
    let budget = app.settings.retry.call_budget;
    let calls = reconcile(
        app,
        Some(&tx),
        &event.contract_id,
        document.as_deref(),
        held,
        &target,
    );
    let (held, calls) = tokio::time::timeout(budget, calls)
        .await
        .map_err(|_| SkeeloError::Transient(format!("{CALL_BUDGET_SPENT} ({budget:?})")))??;
    let outcome = Outcome::from(decision.verdict);
    let status = held.as_ref().map(|h| h.status);
    let next = ContractState {
        facts: decision.facts,
        held,
        uncertain: None,
    };
    let contract = ContractWrite {
        contract_id: &event.contract_id,
        state: &next,
        settled: true,
    };
    let entry = EventWrite {
        decided: Some(event.event_id),
        history: history(event, &id, outcome, status, calls, &decision.detail),
    };
    store::write(&tx, &[contract], &[entry]).await?;
    tx.commit().await?;
    Ok(result_of(event, outcome, status, decision.detail))
}

/// Calls Skeelo until it holds the target, re-planning after every answer (an adopted
/// subscription or one changed behind our back may need other calls than planned).
/// With `alive`, no call leaves once that transaction is gone; without it, the
/// uncertainty mark's fence alone keeps other attempts away (see `skeelo_uncertain`).
pub(crate) async fn reconcile(
    app: &App,
    alive: Option<&deadpool_postgres::Transaction<'_>>,
    contract_id: &str,
    document: Option<&str>,
    mut held: Option<Held>,
    target: &Target,
) -> Result<(Option<Held>, i32), ApplyError> {
    let mut made = 0;
    loop {
        let calls = lifecycle::plan(held.as_ref(), target);
        let Some(call) = calls.first() else {
            return Ok((held, made));
        };
        if made >= 6 {
            return Err(SkeeloError::Transient(
                "Skeelo did not reach the expected state after 6 calls".into(),
            )
            .into());
        }
        made += 1;
        // No call leaves once this transaction is gone: the row lock is what makes this
        // attempt the only one calling Skeelo for this contract.
        if let Some(tx) = alive {
            tx.simple_query("").await?;
        }
        let skeelo = &app.skeelo;
        held = match (call, target) {
            (Call::Create, Target::Present(want)) => {
                let new = NewSubscription {
                    external_id: contract_id,
                    document: document.unwrap_or_default(),
                    profile: &want.profile,
                };
                Some(skeelo.create(&new).await?.held())
            }
            (Call::Create, _) => held,
            (Call::Update(changes), _) => {
                skeelo.update(contract_id, changes).await?.map(|s| s.held())
            }
            (Call::SetStatus(to), _) => {
                skeelo.set_status(contract_id, *to).await?.map(|s| s.held())
            }
        };
    }
}

pub(crate) fn history<'a>(
    event: &'a Event,
    id: &'a str,
    outcome: Outcome,
    status: Option<lifecycle::Status>,
    calls: i32,
    detail: &'a str,
) -> NewHistory<'a> {
    NewHistory {
        contract_id: &event.contract_id,
        event_id: id,
        event_type: event.event_type.as_str(),
        version: Some(event.version.get()),
        actor: event.actor.as_deref(),
        occurred_at: Some(event.occurred_at),
        outcome,
        skeelo_status: status,
        skeelo_calls: calls,
        detail,
    }
}

pub(crate) fn result_of(
    event: &Event,
    outcome: Outcome,
    status: Option<lifecycle::Status>,
    detail: String,
) -> EventResult {
    EventResult {
        event_id: event.event_id.to_string(),
        contract_id: Some(event.contract_id.clone()),
        event_type: event.event_type.as_str().to_string(),
        outcome,
        skeelo_status: status,
        detail,
        at: OffsetDateTime::now_utc(),
    }
}

/// A message RabbitMQ dead-lettered by itself (a delivery limit reached by a message
/// that keeps killing its worker, say): parked like any other, with the broker's reason.
pub(crate) async fn handle_dead(app: &App, d: &Delivery) -> (Disposition, Option<Outcome>) {
    let headers = d.properties.headers().as_ref();
    let death = x_death(headers);
    let routing_key = death
        .as_ref()
        .and_then(|x| x.routing_key.clone())
        .unwrap_or_else(|| d.routing_key.as_str().to_string());
    let queue_type =
        event::EventType::from_routing_key(&routing_key).map_or("unknown", |t| t.as_str());
    let mut msg = Message::from_delivery(queue_type, d);
    msg.routing_key = &routing_key;
    let event_id = event::peek_event_id(msg.body).map(|u| u.to_string());
    let contract_id = event::peek_contract_id(msg.body);
    let class = death
        .as_ref()
        .map_or("unknown".to_string(), |x| x.reason.clone());
    let error = match &death {
        Some(x) => format!(
            "RabbitMQ dead-lettered it from {} ({}) after {} deliver{}",
            x.queue,
            x.reason,
            x.count,
            if x.count == 1 { "y" } else { "ies" }
        ),
        None => "RabbitMQ dead-lettered it".to_string(),
    };
    let park = Parking {
        from_dead_queue: true,
        event_id: event_id.as_deref(),
        contract_id: contract_id.as_deref(),
        event: None,
        reason: Reason::Broker,
        class,
        error,
        attempts: msg.attempts,
    };
    park_and_tell(app, &msg, &park).await
}

struct Death {
    reason: String,
    queue: String,
    routing_key: Option<String>,
    count: i64,
}

/// The newest `x-death` entry RabbitMQ added.
fn x_death(headers: Option<&FieldTable>) -> Option<Death> {
    use lapin::types::AMQPValue;
    let AMQPValue::FieldArray(deaths) = headers?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |k: &str| broker::header_str(Some(first), k);
    let routing_key = match first.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().iter().find_map(|k| match k {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        }),
        _ => None,
    };
    Some(Death {
        reason: text("reason").unwrap_or_else(|| "unknown".into()),
        queue: text("queue").unwrap_or_else(|| "?".into()),
        routing_key,
        count: broker::header_int(Some(first), "count").unwrap_or(1),
    })
}
