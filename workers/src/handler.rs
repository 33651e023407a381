//! What happens to one delivery, whatever its queue: parse, decide, bring Skeelo in
//! line, commit, tell the ERP. The consumer loop acks only after this returns.

use std::time::{Duration, Instant};

use lapin::message::Delivery;
use skeelo_shared::event::{self, Event, EventType, InvalidEvent};
use skeelo_shared::lifecycle::{self, Call, Held, Target};
use skeelo_shared::outcome::{EventResult, Outcome};
use skeelo_shared::skeelo::{NewSubscription, SkeeloError};
use skeelo_shared::store::{self, Applied, ContractState, NewHistory, StoreError};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::App;

/// What the consumer loop does with the delivery once the handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Done (the result is published): remove it from the queue.
    Ack,
    /// Cannot ever be applied: reject to the dead-letter exchange.
    DeadLetter,
    /// Could not finish now (Skeelo or the database kept failing): give it back.
    Requeue,
}

/// Why applying an event stopped.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Skeelo(#[from] SkeeloError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl ApplyError {
    fn is_transient(&self) -> bool {
        match self {
            ApplyError::Skeelo(e) => e.is_transient(),
            ApplyError::Store(StoreError::Corrupt(_)) => false,
            _ => true,
        }
    }
}

/// Handles one delivery from the queue of `queue_type`.
pub(crate) async fn handle(
    app: &App,
    queue_type: EventType,
    delivery: &Delivery,
) -> (Disposition, Option<Outcome>) {
    let routing_key = delivery.routing_key.as_str();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string());
    match event::parse(routing_key, &delivery.data) {
        Ok(event) => {
            let span = tracing::info_span!(
                "event",
                event_id = %event.event_id,
                contract_id = %event.contract_id,
                r#type = event.event_type.as_str(),
                version = event.version.get(),
            );
            handle_event(app, event, delivery.redelivered)
                .instrument(span)
                .await
        }
        Err(invalid) => {
            let event_id = event::peek_event_id(&delivery.data)
                .map(|u| u.to_string())
                .or(message_id)
                .unwrap_or_else(|| "unknown".into());
            let contract_id = event::peek_contract_id(&delivery.data);
            let span = tracing::info_span!(
                "event",
                event_id = %event_id,
                contract_id = contract_id.as_deref().unwrap_or("unknown"),
                r#type = queue_type.as_str(),
            );
            let invalid = Invalid {
                event_id: &event_id,
                contract_id: contract_id.as_deref(),
                event_type: queue_type.as_str(),
                error: &invalid,
            };
            dead_letter_invalid(app, &invalid).instrument(span).await
        }
    }
}

struct Invalid<'a> {
    event_id: &'a str,
    contract_id: Option<&'a str>,
    event_type: &'a str,
    error: &'a InvalidEvent,
}

async fn dead_letter_invalid(app: &App, inv: &Invalid<'_>) -> (Disposition, Option<Outcome>) {
    tracing::warn!(reason = inv.error.reason(), error = %inv.error, "invalid event: dead-lettered");
    app.metrics
        .dead_letters
        .with_label_values(&[inv.event_type, inv.error.reason()])
        .inc();
    let detail = format!("invalid event ({}): {}", inv.error.reason(), inv.error);
    if let Some(contract_id) = inv.contract_id {
        let entry = NewHistory {
            contract_id,
            event_id: inv.event_id,
            event_type: inv.event_type,
            version: None,
            actor: None,
            occurred_at: None,
            outcome: Outcome::DeadLettered,
            skeelo_status: None,
            skeelo_calls: 0,
            detail: &detail,
        };
        if let Err(e) = app.store.record_history(&entry).await {
            tracing::warn!(error = %e, "could not record the invalid event in the history");
        }
    }
    let result = EventResult {
        event_id: inv.event_id.to_string(),
        contract_id: inv.contract_id.map(str::to_string),
        event_type: inv.event_type.to_string(),
        outcome: Outcome::DeadLettered,
        skeelo_status: None,
        detail,
        at: OffsetDateTime::now_utc(),
    };
    match app.publish_result(&result).await {
        Ok(()) => (Disposition::DeadLetter, Some(Outcome::DeadLettered)),
        Err(_) => (Disposition::Requeue, None),
    }
}

async fn handle_event(
    app: &App,
    event: Event,
    redelivered: bool,
) -> (Disposition, Option<Outcome>) {
    let unknown = match app
        .catalogue
        .unknown_products(&app.store, &app.skeelo, &event)
        .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the products against Skeelo's catalogue now");
            tokio::time::sleep(app.settings.retry_base).await;
            return (Disposition::Requeue, None);
        }
    };
    if let Some(unknown) = unknown {
        let error = InvalidEvent::UnknownProduct(unknown);
        let id = event.event_id.to_string();
        let inv = Invalid {
            event_id: &id,
            contract_id: Some(&event.contract_id),
            event_type: event.event_type.as_str(),
            error: &error,
        };
        return dead_letter_invalid(app, &inv).await;
    }

    let started = std::time::Instant::now();
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        match apply(app, &event, redelivered).await {
            Ok(result) => break result,
            Err(e) if e.is_transient() && attempt < app.settings.max_attempts => {
                app.metrics
                    .retries
                    .with_label_values(&[event.event_type.as_str()])
                    .inc();
                let pause = backoff(app.settings.retry_base, attempt);
                tracing::warn!(attempt, error = %e, pause_ms = pause.as_millis() as u64, "transient failure; trying again");
                tokio::time::sleep(pause).await;
            }
            Err(e) if e.is_transient() => {
                tracing::error!(attempt, error = %e, "still failing; giving the event back to the queue");
                tokio::time::sleep(app.settings.retry_base).await;
                return (Disposition::Requeue, None);
            }
            Err(e) => {
                return dead_letter_refused(app, &event, &e).await;
            }
        }
    };
    tracing::info!(
        outcome = result.outcome.as_str(),
        skeelo_status = result.skeelo_status.map(|s| s.as_str()),
        detail = %result.detail,
        attempt,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "event handled"
    );
    match app.publish_result(&result).await {
        Ok(()) => (Disposition::Ack, Some(result.outcome)),
        Err(_) => (Disposition::Requeue, None),
    }
}

/// Exponential back-off with full jitter, so retries of a wave do not arrive together.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1 << attempt.min(8))
        .min(Duration::from_secs(10));
    let jitter = rand::random_range(0.5..=1.0);
    ceiling.mul_f64(jitter)
}

/// Skeelo refused for good (a 4xx that retrying cannot fix): park it and tell the ERP.
async fn dead_letter_refused(
    app: &App,
    event: &Event,
    e: &ApplyError,
) -> (Disposition, Option<Outcome>) {
    tracing::error!(error = %e, "Skeelo refused the event: dead-lettered");
    let t = event.event_type.as_str();
    app.metrics
        .dead_letters
        .with_label_values(&[t, "skeelo_rejected"])
        .inc();
    let detail = format!("Skeelo refused: {e}");
    let id = event.event_id.to_string();
    let entry = history(event, &id, Outcome::DeadLettered, None, 0, &detail);
    if let Err(err) = app.store.record_history(&entry).await {
        tracing::warn!(error = %err, "could not record the refusal in the history");
    }
    let result = result_of(event, Outcome::DeadLettered, None, detail);
    match app.publish_result(&result).await {
        Ok(()) => (Disposition::DeadLetter, Some(Outcome::DeadLettered)),
        Err(_) => (Disposition::Requeue, None),
    }
}

/// One attempt, in one transaction under the contract's row lock.
async fn apply(app: &App, event: &Event, redelivered: bool) -> Result<EventResult, ApplyError> {
    let mut client = app.store.begin().await?;
    let tx = client.transaction().await?;
    let state = store::lock(&tx, &event.contract_id).await?;
    let id = event.event_id.to_string();

    if let Some(first) = store::seen(&tx, event.event_id).await? {
        // A redelivery (the broker's hint) may mean the ERP never got the first result:
        // repeat it. A fresh copy of a known event id is a duplicate.
        let (outcome, status, detail) = if redelivered {
            (first.outcome, first.skeelo_status, first.detail)
        } else {
            let status = state.held.as_ref().map(|h| h.status);
            (
                Outcome::Duplicate,
                status,
                format!("event already handled ({})", first.outcome.as_str()),
            )
        };
        let entry = history(event, &id, Outcome::Duplicate, status, 0, &detail);
        store::record(&tx, &entry).await?;
        tx.commit().await?;
        return Ok(result_of(event, outcome, status, detail));
    }

    let decision = lifecycle::decide(&state.facts, event);
    let target = lifecycle::target(&decision.facts);
    let document = decision
        .facts
        .synced
        .as_ref()
        .map(|s| s.details.subscriber.document.digits().to_string());
    let (held, calls) = reconcile(
        app,
        &event.contract_id,
        document.as_deref(),
        state.held,
        &target,
    )
    .await?;
    let outcome = Outcome::from(decision.verdict);
    let status = held.as_ref().map(|h| h.status);
    let next = ContractState {
        facts: decision.facts,
        held,
    };
    let applied = Applied {
        contract_id: &event.contract_id,
        state: &next,
        history: history(event, &id, outcome, status, calls, &decision.detail),
    };
    store::save(&tx, event.event_id, &applied).await?;
    tx.commit().await?;
    Ok(result_of(event, outcome, status, decision.detail))
}

/// Calls Skeelo until it holds the target, re-planning after every answer (an adopted
/// subscription or one changed behind our back may need other calls than planned).
async fn reconcile(
    app: &App,
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
            (Call::Create, Target::Absent) => held,
            (Call::Update(changes), _) => {
                skeelo.update(contract_id, changes).await?.map(|s| s.held())
            }
            (Call::SetStatus(to), _) => {
                skeelo.set_status(contract_id, *to).await?.map(|s| s.held())
            }
        };
    }
}

fn history<'a>(
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

fn result_of(
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

/// Times one delivery for the metrics.
pub(crate) struct Timer(Instant);

impl Timer {
    pub(crate) fn start() -> Timer {
        Timer(Instant::now())
    }

    pub(crate) fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}
