//! One round: one transaction for everything a batch can decide now. It locks the
//! contracts, reads what was decided before, lets [`decide::contract`] decide, calls
//! Skeelo for every contract at once (in order within a contract), and writes the
//! contracts' states, the decided ids, their story, the dead letters and the results
//! for the ERP in one go. What it could not finish it hands back with the failure.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use futures_util::future::{maybe_done, MaybeDone};

use skeelo_domain::decide::{self, Incoming, Report};
use skeelo_domain::event::{ContractId, Event, Sku};
use skeelo_domain::lifecycle::Held;
use skeelo_domain::outcome::{EventResult, Outcome};
use skeelo_domain::policy::{Failure, ParkReason};
use skeelo_partner::api::SkeeloError;
use skeelo_partner::pacer;
use skeelo_store::apply::{self as store, ContractWrite, EventWrite};
use skeelo_store::dead::NewDeadLetter;
use skeelo_store::{ContractState, NewHistory, StoreError};
use time::OffsetDateTime;

use super::calls::{self, StepEnd};
use super::delivery::{Message, Park, Work};
use crate::App;

/// What a round ended with. Every work item and park it was given is in exactly one
/// of these.
#[derive(Default)]
pub(super) struct Round {
    /// Decided and committed: the ERP will be told.
    pub(super) told: Vec<(usize, EventResult)>,
    /// Parked and committed: the ERP will be told.
    pub(super) parked: Vec<(usize, EventResult, Park)>,
    /// Failed; the failure policy decides what follows.
    pub(super) failed: Vec<Failed>,
    /// Parks that could not be written.
    pub(super) unparked: Vec<(Park, Failure, String)>,
    /// Parks not tried (the round is split to find which event the database refuses).
    pub(super) parks_again: Vec<Park>,
    /// Not tried (an earlier event of the contract failed): again, at no cost.
    pub(super) again: Vec<Work>,
    /// Another attempt's calls to its contract may still land for this long.
    pub(super) waiting: Vec<(Work, std::time::Duration)>,
    /// The database refused the data of a round of several events: each should be
    /// tried alone to find which.
    pub(super) split: bool,
}

/// An event that failed in this round.
pub(super) struct Failed {
    pub(super) work: Work,
    pub(super) failure: Failure,
    /// The dead-letter class, should it be parked.
    pub(super) class: String,
    /// In words.
    pub(super) error: String,
}

impl Failed {
    fn skeelo(work: Work, e: &SkeeloError) -> Failed {
        Failed {
            work,
            failure: e.failure(),
            class: e.class(),
            error: match e {
                SkeeloError::Rejected { .. } => format!("Skeelo refused: {e}"),
                _ => e.to_string(),
            },
        }
    }

    fn store(work: Work, e: &StoreError) -> Failed {
        let failure = e.failure();
        let (class, error) = match failure {
            Failure::DatabaseRefused => (
                "database_refused".to_string(),
                format!(
                    "the database refused the event's data (SQLSTATE {}): {e}",
                    e.sqlstate().unwrap_or("?")
                ),
            ),
            Failure::StateUnreadable => (
                "unreadable_state".to_string(),
                format!("the contract's stored state is unreadable: {e}"),
            ),
            _ => ("database".to_string(), e.to_string()),
        };
        Failed {
            work,
            failure,
            class,
            error,
        }
    }
}

/// One contract's part of the round.
struct Contract {
    id: String,
    state: ContractState,
    work: Vec<Work>,
    /// Skeelo must be read back before planning (its answers were never recorded).
    read_back: bool,
}

/// Runs one round. `work` is in delivery order.
pub(super) async fn run(
    app: &App,
    label: &str,
    msgs: &[Message<'_>],
    work: Vec<Work>,
    parks: Vec<Park>,
) -> Round {
    let mut round = Round::default();
    if work.is_empty() && parks.is_empty() {
        return round;
    }
    let skus = skus_of(&work);
    let id = uuid::Uuid::new_v4();
    let mut catalogue = judging(app, &skus);
    let mut ended = transact(app, msgs, work, parks, id, &mut round, &mut catalogue).await;
    // Once: the answer is there when the round begins again.
    while let Ok(Ended::CatalogueSlow { work, parks }) = ended {
        // The contracts are released: the read is waited for holding nothing, as
        // long as it takes, and the round begins again on its answer.
        (&mut catalogue).await;
        ended = transact(app, msgs, work, parks, id, &mut round, &mut catalogue).await;
    }
    match ended {
        Ok(_) => {}
        Err(Unwritten { error, work, parks }) => {
            // Nothing of the round was committed: everything fails the same way.
            let n = work.len() + parks.len();
            round.split = n > 1 && error.failure() == Failure::DatabaseRefused;
            if round.split {
                round.again.extend(work);
                round.parks_again.extend(parks);
            } else {
                for w in work {
                    round.failed.push(Failed::store(w, &error));
                }
                for p in parks {
                    round.unparked.push((p, error.failure(), error.to_string()));
                }
            }
            if error.failure() == Failure::DatabaseUnavailable {
                app.db_health.failure(&error.to_string());
            }
            app.metrics.batches_failed.with_label_values(&[label]).inc();
            tracing::warn!(error = %error, events = n, "a round's transaction failed; nothing of it was written");
        }
    }
    round
}

/// The SKUs the round's syncs name, each once.
fn skus_of(work: &[Work]) -> Vec<Sku> {
    let skus: BTreeSet<Sku> = work
        .iter()
        .filter_map(|w| w.event.sync.as_ref())
        .flat_map(|s| s.products.iter().cloned())
        .collect();
    skus.into_iter().collect()
}

/// The catalogue's answer for a round's SKUs, on its way: the SKUs Skeelo does not
/// sell (a refresh first if one is unknown, see [`crate::catalogue`]).
type Judging<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Option<Vec<Sku>>, SkeeloError>> + Send + 'a>>;

/// A round without syncs gets its answer at once: it pays nothing for the catalogue.
fn judging<'a>(app: &'a App, skus: &'a [Sku]) -> MaybeDone<Judging<'a>> {
    maybe_done(if skus.is_empty() {
        Box::pin(std::future::ready(Ok(None)))
    } else {
        Box::pin(app.catalogue.unknown(&app.store, &app.skeelo, skus))
    })
}

/// Runs `step` to its end while the catalogue's answer comes in, so that a round that
/// needs a refresh (the first syncs after start-up, a new product) locks its
/// contracts in the meantime and calls as soon as the answer is there (done one after
/// the other, the partner's slots went unused meanwhile: docs/performance.md, "The
/// catalogue read while the round locks"). The catalogue's future must never wait for
/// a connection of the main pool or a contract's lock: the round holds both.
async fn meanwhile<T>(step: impl Future<Output = T>, side: &mut MaybeDone<Judging<'_>>) -> T {
    let mut step = std::pin::pin!(step);
    std::future::poll_fn(|cx| {
        // Done already: it stays done and keeps its output.
        let _ = std::pin::Pin::new(&mut *side).poll(cx);
        step.as_mut().poll(cx)
    })
    .await
}

/// What the catalogue's answer means for the round's syncs: the SKUs Skeelo does not
/// sell; if the refresh failed, the syncs naming a SKU the list in hand does not know
/// cannot be judged now and fail with it, and the rest go on.
fn judged(
    app: &App,
    work: Vec<Work>,
    answer: Result<Option<Vec<Sku>>, SkeeloError>,
    round: &mut Round,
) -> (Vec<Work>, BTreeSet<Sku>) {
    match answer {
        Ok(unknown) => (work, unknown.unwrap_or_default().into_iter().collect()),
        Err(e) => {
            if e.failure() == Failure::PartnerUnavailable {
                app.skeelo_health.failure(&e.to_string());
            }
            let stale = app.catalogue.unknown_now(&skus_of(&work));
            let (cannot, can): (Vec<Work>, Vec<Work>) = work.into_iter().partition(|w| {
                w.event
                    .sync
                    .as_ref()
                    .is_some_and(|s| s.products.iter().any(|p| stale.contains(p)))
            });
            for w in cannot {
                round.failed.push(Failed::skeelo(w, &e));
            }
            (can, BTreeSet::new())
        }
    }
}

/// How a transaction that did not fail ended.
enum Ended {
    /// Committed (or nothing to write).
    Done,
    /// The catalogue's answer did not come within a call budget after the contracts
    /// were locked: the transaction was given up, nothing of it written, to wait for
    /// the answer without holding the contracts (a slow partner, or a rate so low that
    /// the read waits long for its slot).
    CatalogueSlow { work: Vec<Work>, parks: Vec<Park> },
}

/// The round's transaction failed before its commit: nothing of it was written.
struct Unwritten {
    error: StoreError,
    work: Vec<Work>,
    parks: Vec<Park>,
}

async fn transact(
    app: &App,
    msgs: &[Message<'_>],
    work: Vec<Work>,
    parks: Vec<Park>,
    round_id: uuid::Uuid,
    round: &mut Round,
    catalogue: &mut MaybeDone<Judging<'_>>,
) -> Result<Ended, Unwritten> {
    // Should the database fail before the catalogue answered, a refresh under way is
    // dropped with the round and the syncs fail with the database's error: a database
    // failure costs no attempt, and the next round reads the catalogue again.
    let mut client = match meanwhile(app.store.begin(), catalogue).await {
        Ok(c) => c,
        Err(error) => return Err(Unwritten { error, work, parks }),
    };
    let tx = match meanwhile(client.transaction(), catalogue).await {
        Ok(tx) => tx,
        Err(e) => {
            return Err(Unwritten {
                error: e.into(),
                work,
                parks,
            })
        }
    };
    let ids: BTreeSet<&str> = work.iter().map(|w| w.event.contract_id.as_str()).collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    let event_ids: Vec<uuid::Uuid> = work.iter().map(|w| w.event.event_id).collect();
    let locking = store::lock(&tx, &ids, &event_ids);
    let mut locked = match meanwhile(locking, catalogue).await {
        Ok(l) => l,
        Err(error) => return Err(Unwritten { error, work, parks }),
    };
    // The contracts are held from here: a catalogue read that does not answer holds
    // them one call budget at most (the round's calls have their own).
    let budget = app.settings.retry.call_budget;
    if tokio::time::timeout(budget, &mut *catalogue).await.is_err() {
        drop(locked);
        drop(tx);
        return Ok(Ended::CatalogueSlow { work, parks });
    }
    let answer = std::pin::Pin::new(catalogue)
        .take_output()
        .expect("the catalogue's answer was awaited just above");
    // The contracts of syncs that fail here were locked too (a new one's row is
    // created, empty, if the rest of the round commits), as those of failed calls are.
    let (work, unknown) = judged(app, work, answer, round);
    let unknown = &unknown;
    if work.is_empty() && parks.is_empty() {
        // Every event failed with the catalogue: nothing to write.
        return Ok(Ended::Done);
    }

    // One contract at a time, its events in delivery order.
    let mut by_contract: BTreeMap<ContractId, Vec<Work>> = BTreeMap::new();
    for w in work {
        if let Some(why) = locked.unreadable_events.get(&w.event.event_id) {
            let e = StoreError::Corrupt(why.clone());
            round.failed.push(Failed::store(w, &e));
            continue;
        }
        by_contract
            .entry(w.event.contract_id.clone())
            .or_default()
            .push(w);
    }
    let mut contracts = Vec::with_capacity(by_contract.len());
    for (id, work) in by_contract {
        if let Some(why) = locked.unreadable.remove(id.as_str()) {
            let e = StoreError::Corrupt(why);
            round
                .failed
                .extend(work.into_iter().map(|w| Failed::store(w, &e)));
            continue;
        }
        let state = locked.contracts.remove(id.as_str()).unwrap_or_default();
        let mut read_back = false;
        if let Some(mark) = state.uncertain {
            if !mark.may_land_for.is_zero() {
                round
                    .waiting
                    .extend(work.into_iter().map(|w| (w, mark.may_land_for)));
                continue;
            }
            read_back = true;
        }
        contracts.push(Contract {
            id: id.into(),
            state,
            work,
            read_back,
        });
    }

    // Skeelo's state of a contract whose answers were never recorded is read back
    // first; every call of this round waits for its turn in the event type's lane, or
    // in the lowest lane when the round holds only requeued dead letters (they take
    // only the rate the events leave unused).
    let requeued = contracts
        .iter()
        .flat_map(|c| &c.work)
        .all(|w| msgs[w.index].envelope.requeued_from.is_some());
    let lane = contracts.first().map(|c| {
        if requeued {
            pacer::BACKGROUND
        } else {
            pacer::lane(c.work[0].event.event_type)
        }
    });
    let calls_of_round = async {
        read_back(app, &mut contracts, round).await;
        let plans: Vec<_> = contracts
            .iter()
            .map(|c| {
                let incoming: Vec<Incoming<'_>> = c
                    .work
                    .iter()
                    .map(|w| Incoming {
                        event: &w.event,
                        repeat_first: w.tries > 0 || msgs[w.index].envelope.may_repeat(),
                    })
                    .collect();
                decide::contract(
                    &c.state.facts,
                    c.state.held.as_ref(),
                    &locked.seen,
                    unknown,
                    &incoming,
                )
            })
            .collect();
        let calling: Vec<&str> = contracts
            .iter()
            .zip(&plans)
            .filter(|(_, p)| p.calls)
            .map(|(c, _)| c.id.as_str())
            .collect();
        if !calling.is_empty() {
            app.store
                .mark_uncertain(&calling, round_id, app.settings.retry.fence())
                .await?;
        }
        let deadline = tokio::time::Instant::now() + app.settings.retry.call_budget;
        let called = futures_util::future::join_all(
            contracts
                .iter()
                .zip(&plans)
                .map(|(c, p)| calls::steps(app, &c.id, c.state.held.clone(), p, deadline)),
        )
        .await;
        Ok::<_, StoreError>((plans, called))
    };
    let called = match lane {
        Some(lane) => pacer::LANE.scope(lane, calls_of_round).await,
        None => calls_of_round.await,
    };
    let (plans, called) = match called {
        Ok(c) => c,
        Err(error) => {
            let work = contracts.into_iter().flat_map(|c| c.work).collect();
            return Err(Unwritten { error, work, parks });
        }
    };

    // What to write: each contract's new state, and a line, a decided id and a result
    // per event that ended; failures are handed back.
    let mut states = Vec::new();
    let mut ended: Vec<(Work, EventResult, Report, i32)> = Vec::new();
    let mut parks = parks;
    // Contracts whose calls all returned, and of those the ones left unrecorded.
    let mut returned: Vec<String> = Vec::new();
    let mut unsettled: Vec<String> = Vec::new();
    for ((contract, plan), called) in contracts.iter().zip(&plans).zip(&called) {
        // Skeelo's health is recorded here, once per contract that called.
        match called.partner_answered() {
            Some(true) => app.skeelo_health.success(),
            Some(false) => app.skeelo_health.failure("Skeelo is unavailable"),
            None => {}
        }
        if plan.calls && !called.may_land() {
            returned.push(contract.id.clone());
            if !called.settled() {
                unsettled.push(contract.id.clone());
            }
        }
        // A contract read back is written even if no step moved its facts: what
        // Skeelo holds is known again, and its mark can go.
        if called.facts.is_some() || (contract.read_back && called.settled()) {
            states.push((
                contract.id.clone(),
                ContractState {
                    facts: called
                        .facts
                        .clone()
                        .unwrap_or_else(|| contract.state.facts.clone()),
                    held: called.held.clone(),
                    uncertain: None,
                },
                called.settled(),
            ));
        }
    }
    let mut contracts_work = Vec::new();
    for ((contract, plan), called) in contracts.into_iter().zip(plans).zip(called) {
        let mut reports: Vec<Option<Report>> = Vec::with_capacity(plan.steps.len());
        for ((w, step), end) in contract.work.into_iter().zip(&plan.steps).zip(called.ends) {
            match end {
                StepEnd::Done(held, made) => {
                    let status = held.as_ref().map(|h: &Held| h.status);
                    match step.report(status, &reports) {
                        Some(report) => {
                            reports.push(Some(report.clone()));
                            let result = result_of(&w.event, &report);
                            ended.push((w, result, report, made));
                        }
                        None => {
                            reports.push(None);
                            let unknown = match step {
                                decide::Step::UnknownProduct(u) => u.join(", "),
                                _ => String::new(),
                            };
                            parks.push(Park::of_event(
                                w,
                                msgs,
                                ParkReason::Invalid,
                                "unknown_product".into(),
                                format!("products Skeelo does not sell: {unknown}"),
                            ));
                        }
                    }
                }
                StepEnd::Failed(e) => {
                    reports.push(None);
                    round.failed.push(Failed::skeelo(w, &e));
                }
                StepEnd::MayLand(e) => {
                    reports.push(None);
                    let budget = app.settings.retry.call_budget;
                    let error = match e {
                        Some(e) => format!("{e}; the call may still land at Skeelo"),
                        None => format!(
                            "Skeelo calls took longer than the call budget ({budget:?}); one may still land"
                        ),
                    };
                    round.failed.push(Failed {
                        work: w,
                        failure: Failure::CallMayStillLand,
                        class: "transient".into(),
                        error,
                    });
                }
                StepEnd::NotReached => {
                    reports.push(None);
                    round.again.push(w);
                }
            }
        }
        contracts_work.push(contract.id);
    }

    // Parks: their ids go into the ERP's result.
    let mut parked = Vec::with_capacity(parks.len());
    let mut remaining = parks.into_iter();
    while let Some(p) = remaining.next() {
        let msg = &msgs[p.index];
        let event_id = p.event_id(msg);
        let contract_id = p.contract_id(msg);
        let key = msg.key(event_id.as_deref());
        let letter = NewDeadLetter {
            message_key: &key,
            event_id: event_id.as_deref(),
            contract_id: contract_id.as_deref(),
            event_type: p.event_type(msg),
            routing_key: &msg.envelope.routing_key,
            message_id: msg.envelope.message_id.as_deref(),
            body: &msg.delivery.data,
            reason: p.reason,
            error_class: &p.class,
            last_error: &p.error,
            attempts: i32::try_from(p.attempts).unwrap_or(i32::MAX),
            first_failed_at: msg.envelope.first_failure,
            requeued_from: msg.envelope.requeued_from,
        };
        match store::park(&tx, &letter).await {
            Ok(id) => {
                let result = p.result(msg, id);
                parked.push((result, p));
            }
            Err(error) => {
                // The transaction is lost: nothing of the round can be written.
                let work: Vec<Work> = ended.into_iter().map(|(w, ..)| w).collect();
                let mut rest: Vec<Park> = parked.into_iter().map(|(_, p)| p).collect();
                rest.push(p);
                rest.extend(remaining);
                release(app, &returned, round_id).await;
                let callers: Vec<&str> = contracts_work.iter().map(String::as_str).collect();
                app.calls.ended(&callers);
                return Err(Unwritten {
                    error,
                    work,
                    parks: rest,
                });
            }
        }
    }

    let ids_text: Vec<String> = ended
        .iter()
        .map(|(w, ..)| w.event.event_id.to_string())
        .collect();
    let mut writes: Vec<EventWrite<'_>> = Vec::with_capacity(ended.len() + parked.len());
    for ((w, result, report, made), id) in ended.iter().zip(&ids_text) {
        writes.push(EventWrite {
            decided: report.decides.then_some(w.event.event_id),
            history: Some(NewHistory {
                contract_id: w.event.contract_id.as_str(),
                event_id: id,
                event_type: w.event.event_type.as_str(),
                version: Some(w.event.version.get()),
                actor: w.event.actor.as_deref(),
                occurred_at: Some(w.event.occurred_at),
                outcome: report.recorded,
                skeelo_status: report.skeelo_status,
                skeelo_calls: *made,
                detail: &report.detail,
            }),
            result,
        });
    }
    for (result, p) in &parked {
        writes.push(EventWrite {
            decided: None,
            history: result.contract_id.as_deref().map(|contract_id| NewHistory {
                contract_id,
                event_id: &result.event_id,
                event_type: &result.event_type,
                version: p.event.as_ref().map(|e| e.version.get()),
                actor: p.event.as_ref().and_then(|e| e.actor.as_deref()),
                occurred_at: p.event.as_ref().map(|e| e.occurred_at),
                outcome: Outcome::DeadLettered,
                skeelo_status: None,
                skeelo_calls: 0,
                detail: &result.detail,
            }),
            result,
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
    let written = async {
        if !writes.is_empty() || !contract_writes.is_empty() {
            store::write(&tx, &contract_writes, &writes).await?;
        }
        tx.commit().await?;
        Ok::<_, StoreError>(())
    }
    .await;
    drop(writes);
    drop(contract_writes);
    // Calls that all returned but went unrecorded (all of them, if nothing was
    // committed): others may read Skeelo back now.
    release(
        app,
        if written.is_ok() {
            &unsettled
        } else {
            &returned
        },
        round_id,
    )
    .await;
    let callers: Vec<&str> = contracts_work.iter().map(String::as_str).collect();
    app.calls.ended(&callers);
    if let Err(error) = written {
        let work: Vec<Work> = ended.into_iter().map(|(w, ..)| w).collect();
        let parks = parked.into_iter().map(|(_, p)| p).collect();
        return Err(Unwritten { error, work, parks });
    }
    app.db_health.success();
    round.told = ended.into_iter().map(|(w, r, ..)| (w.index, r)).collect();
    round.parked = parked.into_iter().map(|(r, p)| (p.index, r, p)).collect();
    Ok(Ended::Done)
}

/// Reads Skeelo back for the contracts whose last calls went unrecorded. A contract
/// whose read fails leaves the round: its first event fails with the error, the
/// others go again.
async fn read_back(app: &App, contracts: &mut Vec<Contract>, round: &mut Round) {
    let reads = contracts.iter().map(|c| async move {
        if !c.read_back {
            return None;
        }
        tracing::warn!(contract_id = %c.id, "Skeelo's state of this contract is uncertain; reading it back");
        Some(app.skeelo.get(&c.id).await.map(|s| s.map(|s| s.held())))
    });
    let answers = futures_util::future::join_all(reads).await;
    let mut kept = Vec::with_capacity(contracts.len());
    for (mut c, answer) in contracts.drain(..).zip(answers) {
        match answer {
            None => kept.push(c),
            Some(Ok(held)) => {
                c.state.held = held;
                kept.push(c);
            }
            Some(Err(e)) => {
                if e.failure() == Failure::PartnerUnavailable {
                    app.skeelo_health.failure(&e.to_string());
                }
                let mut work = c.work.into_iter();
                if let Some(first) = work.next() {
                    round.failed.push(Failed::skeelo(first, &e));
                }
                round.again.extend(work);
            }
        }
    }
    *contracts = kept;
}

async fn release(app: &App, contract_ids: &[String], owner: uuid::Uuid) {
    if contract_ids.is_empty() {
        return;
    }
    let contract_ids: Vec<&str> = contract_ids.iter().map(String::as_str).collect();
    if let Err(e) = app.store.release_uncertain(&contract_ids, owner).await {
        // The mark's fence still ends the wait of other events; it only takes longer.
        tracing::warn!(error = %e, "could not say that the calls to Skeelo ended");
    }
}

/// The ERP's result for an event that ended.
fn result_of(event: &Event, report: &Report) -> EventResult {
    EventResult {
        event_id: event.event_id.to_string(),
        contract_id: Some(event.contract_id.to_string()),
        event_type: event.event_type.as_str().to_string(),
        outcome: report.told,
        skeelo_status: report.skeelo_status,
        detail: report.detail.clone(),
        at: OffsetDateTime::now_utc(),
    }
}
