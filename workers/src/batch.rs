//! Deliveries that arrived together, applied together. One transaction locks all their
//! contracts; one statement marks those about to be called; Skeelo is called for every
//! contract at once (in delivery order within a contract); one statement writes what
//! was decided. The database's round trips are paid per batch, not per event, and that
//! is what keeps the fleet's own cost small when Skeelo is fast.
//!
//! Anything out of the ordinary leaves the batch for the one-event path in
//! [`crate::handler`], after the batch's transaction has ended, where every failure has
//! its answer: an unreadable body, a contract whose Skeelo state is uncertain, a second
//! copy of an event in the same batch, a product the catalogue does not know, a failed
//! call, a database error. An event that leaves takes the later events of its contract
//! with it, so a contract's events are never applied out of the order they came in.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use lapin::message::Delivery;
use skeelo_shared::event::{self, Event, EventType};
use skeelo_shared::lifecycle::{self, Decision, Held, Target, Verdict};
use skeelo_shared::outcome::{EventResult, Outcome};
use skeelo_shared::pacer;
use skeelo_shared::store::apply::{self as store, ContractWrite, EventWrite, Locked};
use skeelo_shared::store::ContractState;

use crate::handler::{self, ApplyError, Disposition, Message, Start, CALL_BUDGET_SPENT};
use crate::App;

/// How each delivery of a batch was settled, in the batch's order.
pub(crate) type Settled = Vec<(Disposition, Option<Outcome>)>;

/// Handles deliveries of the queue of `queue_type` that arrived together.
pub(crate) async fn handle(app: &App, queue_type: EventType, deliveries: &[Delivery]) -> Settled {
    let started = Instant::now();
    let msgs: Vec<Message<'_>> = deliveries
        .iter()
        .map(|d| Message::from_delivery(queue_type.as_str(), d))
        .collect();
    let mut alone: Vec<usize> = Vec::new();
    let mut items: Vec<Item> = Vec::with_capacity(msgs.len());
    for (index, msg) in msgs.iter().enumerate() {
        match event::parse(msg.routing_key, msg.body) {
            Ok(event) => items.push(Item { index, event }),
            // Parked by the one-event path, which knows how to tell the ERP.
            Err(_) => alone.push(index),
        }
    }
    let Run { done, handed } = run(app, &msgs, items).await;

    let mut settled: Vec<Option<(Disposition, Option<Outcome>)>> = vec![None; msgs.len()];
    let told = futures_util::future::join_all(
        done.iter()
            .map(|(_, r)| handler::tell(app, r, Disposition::Ack)),
    );
    for ((index, result), s) in done.iter().zip(told.await) {
        tracing::info!(
            event_id = %result.event_id,
            contract_id = result.contract_id.as_deref().unwrap_or_default(),
            r#type = %result.event_type,
            attempt = msgs[*index].attempts + 1,
            outcome = result.outcome.as_str(),
            skeelo_status = result.skeelo_status.map(|s| s.as_str()),
            detail = %result.detail,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "event handled"
        );
        settled[*index] = Some(s);
    }
    let msgs = &msgs;
    let on_their_own = handed.into_iter().map(|(index, event, start)| async move {
        (
            index,
            handler::handle_parsed(app, &msgs[index], event, start).await,
        )
    });
    let unparsed = alone
        .into_iter()
        .map(|index| async move { (index, handler::handle(app, &msgs[index]).await) });
    let (a, b) = futures_util::future::join(
        futures_util::future::join_all(on_their_own),
        futures_util::future::join_all(unparsed),
    )
    .await;
    for (index, s) in a.into_iter().chain(b) {
        settled[index] = Some(s);
    }
    settled
        .into_iter()
        .map(|s| s.unwrap_or((Disposition::Requeue, None)))
        .collect()
}

/// A delivery whose body is a valid event.
struct Item {
    index: usize,
    event: Event,
}

/// What a batch's run ended with.
#[derive(Default)]
struct Run {
    /// Decided and committed: the ERP is told these.
    done: Vec<(usize, EventResult)>,
    /// Handed to the one-event path, and where it begins.
    handed: Vec<(usize, Event, Start)>,
}

/// One contract's part of the batch.
struct Contract<'b> {
    id: &'b str,
    state: ContractState,
    steps: Vec<Step<'b>>,
    /// Some step may call Skeelo: the contract is marked uncertain first.
    calls: bool,
}

enum Step<'b> {
    /// Decided before: the ERP is told again (`repeat`) or told it is a duplicate.
    Seen {
        item: &'b Item,
        repeat: Option<(Outcome, Option<lifecycle::Status>, String)>,
        first: Outcome,
    },
    /// Applied here: Skeelo is brought to the target.
    Apply {
        item: &'b Item,
        decision: Box<Decision>,
        target: Target,
    },
    /// Left for the one-event path.
    Leave { item: &'b Item },
}

/// What came of one step once Skeelo was called.
enum Ended<'b> {
    Done {
        item: &'b Item,
        result: EventResult,
        decided: bool,
        calls: i32,
    },
    Handed {
        item: &'b Item,
        start: Start,
    },
}

async fn run(app: &App, msgs: &[Message<'_>], items: Vec<Item>) -> Run {
    if items.is_empty() {
        return Run::default();
    }
    let batch = uuid::Uuid::new_v4();
    match transact(app, msgs, &items, batch).await {
        Ok(run) => run,
        Err(Failed { error, in_flight }) => {
            // Nothing was committed. Calls may have been made and their answers lost
            // with the transaction; their contracts keep the batch's mark. If every
            // call has returned, the batch's name lets the events read Skeelo back at
            // once; if one may still be in flight, fresh attempts wait it out.
            tracing::warn!(error = %error, events = items.len(), "a batch failed; its events are handled one by one");
            app.metrics
                .batches_failed
                .with_label_values(&[items[0].event.event_type.as_str()])
                .inc();
            let start = || Start {
                attempt: if in_flight {
                    uuid::Uuid::new_v4()
                } else {
                    batch
                },
                failure: None,
            };
            Run {
                done: Vec::new(),
                handed: items
                    .into_iter()
                    .map(|item| (item.index, item.event, start()))
                    .collect(),
            }
        }
    }
}

/// A batch transaction that ended without committing.
struct Failed {
    error: ApplyError,
    /// A call to Skeelo outlived the call budget and may still land.
    in_flight: bool,
}

impl<E: Into<ApplyError>> From<E> for Failed {
    fn from(e: E) -> Failed {
        Failed {
            error: e.into(),
            in_flight: false,
        }
    }
}

/// One contract's calls, done.
struct Called<'b> {
    /// Its new state; none if no step was applied.
    state: Option<ContractState>,
    /// Every call made has its answer here.
    settled: bool,
    /// A call outlived the call budget.
    in_flight: bool,
    ends: Vec<Ended<'b>>,
}

/// The batch's transaction. An error means nothing of it was committed.
async fn transact(
    app: &App,
    msgs: &[Message<'_>],
    items: &[Item],
    batch: uuid::Uuid,
) -> Result<Run, Failed> {
    let mut by_contract: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for item in items {
        by_contract
            .entry(item.event.contract_id.as_str())
            .or_default()
            .push(item);
    }
    let ids: Vec<&str> = by_contract.keys().copied().collect();
    let event_ids: Vec<uuid::Uuid> = items.iter().map(|i| i.event.event_id).collect();

    let mut client = app.store.begin().await?;
    let tx = client.transaction().await?;
    let mut locked = store::lock(&tx, &ids, &event_ids).await?;

    let mut contracts = Vec::with_capacity(by_contract.len());
    let mut applying = HashSet::new();
    for (id, items) in by_contract {
        contracts.push(plan(app, msgs, &mut locked, &mut applying, id, items).await);
    }
    let marked: Vec<&str> = contracts.iter().filter(|c| c.calls).map(|c| c.id).collect();
    if !marked.is_empty() {
        app.store.mark_uncertain(&marked, batch).await?;
    }
    // Every contract at once; each contract's steps in order.
    let lane = pacer::lane(items[0].event.event_type);
    let deadline = tokio::time::Instant::now() + app.settings.retry.call_budget;
    let ended = pacer::LANE
        .scope(
            lane,
            futures_util::future::join_all(contracts.iter().map(|c| call(app, c, batch, deadline))),
        )
        .await;

    let mut states = Vec::new();
    let mut writes = Vec::new();
    let mut run = Run::default();
    let mut decided_here = Vec::new();
    let in_flight = ended.iter().any(|c| c.in_flight);
    for (contract, called) in contracts.iter().zip(ended) {
        if let Some(state) = called.state {
            states.push((contract.id, state, called.settled));
        }
        for end in called.ends {
            match end {
                Ended::Done {
                    item,
                    result,
                    decided,
                    calls,
                } => {
                    decided_here.push((item, result, decided, calls));
                }
                Ended::Handed { item, start } => {
                    run.handed.push((item.index, item.event.clone(), start));
                }
            }
        }
    }
    let event_ids_text: Vec<String> = decided_here
        .iter()
        .map(|(item, ..)| item.event.event_id.to_string())
        .collect();
    for ((item, result, decided, calls), id) in decided_here.iter().zip(&event_ids_text) {
        let entry = handler::history(
            &item.event,
            id,
            if *decided {
                result.outcome
            } else {
                Outcome::Duplicate
            },
            result.skeelo_status,
            *calls,
            &result.detail,
        );
        writes.push(EventWrite {
            decided: decided.then_some(item.event.event_id),
            history: entry,
        });
    }
    let contract_writes: Vec<ContractWrite<'_>> = states
        .iter()
        .map(|(id, state, settled)| ContractWrite {
            contract_id: id,
            state,
            settled: *settled,
        })
        .collect();
    // From here on, calls have been made: a failure says whether one may still land.
    let failed = |e: ApplyError| Failed {
        error: e,
        in_flight,
    };
    if !writes.is_empty() || !contract_writes.is_empty() {
        store::write(&tx, &contract_writes, &writes)
            .await
            .map_err(|e| failed(e.into()))?;
    }
    tx.commit().await.map_err(|e| failed(e.into()))?;
    app.db_health.success();
    if !marked.is_empty() {
        app.skeelo_health.success();
    }
    run.done = decided_here
        .into_iter()
        .map(|(item, result, ..)| (item.index, result))
        .collect();
    Ok(run)
}

/// Decides a contract's events in order, before any call: which are seen, which apply
/// and which leave the batch.
async fn plan<'b>(
    app: &App,
    msgs: &[Message<'_>],
    locked: &mut Locked,
    applying: &mut HashSet<uuid::Uuid>,
    id: &'b str,
    items: Vec<&'b Item>,
) -> Contract<'b> {
    let state = locked.contracts.remove(id).unwrap_or_default();
    let mut facts = state.facts.clone();
    let mut calls = false;
    // Calls whose answers were never recorded: the one-event path reads Skeelo back
    // (or waits out another attempt's calls).
    let mut leaving = state.uncertain.is_some();
    let mut steps = Vec::with_capacity(items.len());
    for item in items {
        let event = &item.event;
        let msg = &msgs[item.index];
        if leaving || !applying.insert(event.event_id) {
            // A second copy in this batch is judged once the first is committed.
            leaving = true;
            steps.push(Step::Leave { item });
            continue;
        }
        if let Some(first) = locked.seen.get(&event.event_id) {
            // A redelivery may mean the ERP never got the first result: repeat it.
            let repeat = (msg.redelivered || msg.attempts > 0)
                .then(|| (first.outcome, first.skeelo_status, first.detail.clone()));
            steps.push(Step::Seen {
                item,
                repeat,
                first: first.outcome,
            });
            continue;
        }
        let decision = lifecycle::decide(&facts, event);
        if let (Verdict::Applied, Some(sync)) = (decision.verdict, &event.sync) {
            // Only a sync that will reach Skeelo is judged against the catalogue.
            let known = app
                .catalogue
                .unknown(&app.store, &app.skeelo, &sync.products)
                .await;
            if !matches!(known, Ok(None)) {
                leaving = true;
                steps.push(Step::Leave { item });
                continue;
            }
        }
        let target = lifecycle::target(&decision.facts);
        // Skeelo's state changes only by calls: if no target differs from what it holds
        // now, no step calls at all.
        calls |= !lifecycle::plan(state.held.as_ref(), &target).is_empty();
        facts = decision.facts.clone();
        steps.push(Step::Apply {
            item,
            decision: Box::new(decision),
            target,
        });
    }
    Contract {
        id,
        state,
        steps,
        calls,
    }
}

/// Brings Skeelo to each step's target in turn.
async fn call<'b>(
    app: &App,
    contract: &Contract<'b>,
    batch: uuid::Uuid,
    deadline: tokio::time::Instant,
) -> Called<'b> {
    let mut held: Option<Held> = contract.state.held.clone();
    let mut facts = None;
    let mut settled = true;
    let mut in_flight = false;
    let mut leaving = false;
    let mut ends = Vec::with_capacity(contract.steps.len());
    for step in &contract.steps {
        let (item, decision, target) = match step {
            Step::Leave { item } => {
                leaving = true;
                ends.push(hand(item, Start::fresh()));
                continue;
            }
            Step::Seen {
                item,
                repeat,
                first,
            } => {
                let result = match repeat {
                    Some((outcome, status, detail)) => {
                        handler::result_of(&item.event, *outcome, *status, detail.clone())
                    }
                    None => handler::result_of(
                        &item.event,
                        Outcome::Duplicate,
                        held.as_ref().map(|h| h.status),
                        format!("event already handled ({})", first.as_str()),
                    ),
                };
                ends.push(Ended::Done {
                    item,
                    result,
                    decided: false,
                    calls: 0,
                });
                continue;
            }
            Step::Apply {
                item,
                decision,
                target,
            } => (item, decision, target),
        };
        if leaving {
            ends.push(hand(item, Start::fresh()));
            continue;
        }
        let document = decision
            .facts
            .synced
            .as_ref()
            .map(|s| s.details.subscriber.document.digits().to_string());
        let calls = handler::reconcile(
            app,
            None,
            contract.id,
            document.as_deref(),
            held.clone(),
            target,
        );
        match tokio::time::timeout_at(deadline, calls).await {
            Ok(Ok((now, calls))) => {
                held = now;
                facts = Some(decision.facts.clone());
                let outcome = Outcome::from(decision.verdict);
                let result = handler::result_of(
                    &item.event,
                    outcome,
                    held.as_ref().map(|h| h.status),
                    decision.detail.clone(),
                );
                ends.push(Ended::Done {
                    item,
                    result,
                    decided: true,
                    calls,
                });
            }
            Ok(Err(failure)) => {
                // Every call made has returned: the one-event path, named as this
                // batch, reads Skeelo back at once and judges the failure as its first try.
                settled = false;
                leaving = true;
                let start = Start {
                    attempt: batch,
                    failure: Some(failure),
                };
                ends.push(hand(item, start));
            }
            Err(_) => {
                // A call may still be in flight: a fresh attempt waits it out.
                settled = false;
                in_flight = true;
                leaving = true;
                let budget = app.settings.retry.call_budget;
                tracing::warn!(
                    contract_id = contract.id,
                    "{CALL_BUDGET_SPENT} ({budget:?}); the event is tried again on its own"
                );
                ends.push(hand(item, Start::fresh()));
            }
        }
    }
    let state = facts.map(|facts| ContractState {
        facts,
        held,
        uncertain: None,
    });
    Called {
        state,
        settled,
        in_flight,
        ends,
    }
}

fn hand(item: &Item, start: Start) -> Ended<'_> {
    Ended::Handed { item, start }
}
