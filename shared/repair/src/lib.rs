//! Drift repair: compares every contract the fleet knows with what Skeelo holds, and
//! brings Skeelo back to what the contract's facts say.
//!
//! A repair is not a side door: it decides with the same rules as an event
//! ([`skeelo_domain::drift`] over [`skeelo_domain::lifecycle`]), calls Skeelo through
//! the same convergence ([`skeelo_partner::converge`]) and partner rate — in the
//! [`pacer::BACKGROUND`] lane, so in its process it only takes what the events leave
//! unused (across processes the fleet's slots are leased first come) — holds
//! the contract's row lock and uncertainty mark as an event does, and tells the
//! contract's story. A run compares first and changes nothing until the
//! [`Guard`] agrees; each run leaves its summary in `repair_runs`.

mod guard;
pub mod requeue;
pub mod words;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde::Serialize;
use skeelo_domain::drift::{self, Kind};
use skeelo_domain::lifecycle::{self, Held, Target};
use skeelo_partner::api::{self as skeelo, SkeeloClient, SkeeloError};
use skeelo_partner::converge::converge;
use skeelo_partner::pacer;
use skeelo_store::apply;
use skeelo_store::repairs::{self, RepairLine, RunTotals};
use skeelo_store::{ContractState, Store, StoreError};

pub use guard::Guard;

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `skeelo-ops check --repair`.
    Operator,
    /// The fleet's periodic reconciliation.
    Periodic,
}

impl Trigger {
    /// As recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Operator => "operator",
            Trigger::Periodic => "periodic",
        }
    }
}

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// Who starts it.
    pub trigger: Trigger,
    /// An operator's name, or `fleet`.
    pub by: String,
    /// The blast-radius guard.
    pub guard: Guard,
    /// Carry out this run awaiting approval: the guard then allows as many changes as
    /// that run found, and no more.
    pub approve: Option<i64>,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Skeelo could not be read, so nothing can be compared.
    #[error("Skeelo did not answer for contract {contract_id}: {error}")]
    Skeelo {
        /// The contract being read.
        contract_id: String,
        /// Why.
        error: SkeeloError,
    },
    /// `--approve` names a run that cannot be approved.
    #[error("{0}")]
    Approval(String),
}

/// One contract that differs, and what the run did about it.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The contract.
    pub contract_id: String,
    /// Kinds of difference.
    pub kinds: Vec<Kind>,
    /// What the facts call for, in words.
    pub should_be: String,
    /// What Skeelo held, in words.
    pub skeelo_had: String,
    /// `found` (nothing changed yet), `repaired`, `left_for_people`, `failed`, or
    /// `in_line` (back in line by the time its turn came).
    pub result: &'static str,
    /// What was done or why not, in words.
    pub detail: String,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The run's id.
    pub run: i64,
    /// `done`, `awaiting_approval` or `failed`.
    pub state: &'static str,
    /// What it compared, found and changed (as kept in `repair_runs`).
    #[serde(flatten)]
    pub totals: RunTotals,
    /// Every contract that differs.
    pub differences: Vec<Difference>,
    /// Why it stopped, in words.
    pub note: String,
}

/// How a run's caller learns of its progress (compared so far, of how many).
pub trait Progress: Send {
    /// Called as contracts are compared and repaired.
    fn step(&mut self, stage: &str, done: u64);
}

impl Progress for () {
    fn step(&mut self, _: &str, _: u64) {}
}

/// A run whose heartbeat stopped for this long is taken for dead.
const STALE: Duration = Duration::from_secs(120);
/// How often a working run says so (well within [`STALE`], whatever it waits for).
const HEARTBEAT: Duration = Duration::from_secs(20);
/// Reads of Skeelo in flight at once while comparing.
const READS_AT_ONCE: usize = 8;
/// Contracts read from the database per page.
const PAGE: i64 = 500;
/// How long one contract's repair may hold its row lock (re-reading Skeelo and
/// calling): its calls wait in the lowest lane, and an event of the same contract
/// waits for the lock meanwhile. A repair out of time is tried by the next run.
const LOCKED_BUDGET: Duration = Duration::from_secs(10);

/// Runs one comparison of every contract with Skeelo and repairs what the guard
/// allows. `Ok(None)`: another run is working (nothing was changed, and an approval
/// given is not used up).
pub async fn run(
    store: &Store,
    skeelo: &SkeeloClient,
    request: &Request,
    progress: &mut (dyn Progress + Send),
) -> Result<Option<Report>, RepairError> {
    if let Some(id) = request.approve {
        // Checked before the run starts, used up only once it has.
        match store.repair_run(id).await? {
            Some(r) if r.state == "awaiting_approval" => {}
            other => return Err(not_approvable(id, other.as_ref())),
        }
    }
    let Some(run) = store
        .start_repair_run(
            request.trigger.as_str(),
            &request.by,
            request.approve,
            STALE,
        )
        .await?
    else {
        return Ok(None);
    };
    tracing::info!(
        run,
        trigger = request.trigger.as_str(),
        "drift repair run started"
    );
    let work = pacer::LANE.scope(
        pacer::BACKGROUND,
        work(store, skeelo, request, run, progress),
    );
    let beat = async {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if let Err(e) = store.repair_heartbeat(run).await {
                tracing::warn!(run, error = %e, "could not say the repair run is working");
            }
        }
    };
    let ended = tokio::select! {
        ended = work => ended,
        never = beat => never,
    };
    match ended {
        Ok((state, totals, differences, note)) => {
            if !store.finish_repair_run(run, state, &totals, &note).await? {
                tracing::warn!(
                    run,
                    "the repair run was taken for abandoned while it worked"
                );
            }
            tracing::info!(
                run,
                state,
                compared = totals.compared,
                differing = totals.differing,
                repaired = totals.repaired,
                left_for_people = totals.left_for_people,
                failed = totals.failed,
                "drift repair run ended"
            );
            Ok(Some(Report {
                run,
                state,
                totals,
                differences,
                note,
            }))
        }
        Err(e) => {
            let note = format!("stopped: {e}");
            if let Err(w) = store
                .finish_repair_run(run, "failed", &RunTotals::default(), &note)
                .await
            {
                tracing::warn!(run, error = %w, "could not record the failed run");
            }
            Err(e)
        }
    }
}

type Ended = (&'static str, RunTotals, Vec<Difference>, String);

/// The run's work, in the lowest lane: compare, ask the guard, repair.
async fn work(
    store: &Store,
    skeelo: &SkeeloClient,
    request: &Request,
    run: i64,
    progress: &mut (dyn Progress + Send),
) -> Result<Ended, RepairError> {
    // Approved only once this run has started: a busy fleet does not use it up.
    let approved = match request.approve {
        None => None,
        Some(id) => Some(approve(store, id, &request.by).await?),
    };
    let found = survey(store, skeelo, progress).await?;
    let mut totals = RunTotals {
        compared: found.compared,
        differing: found.differences.len() as i64,
        failed: found.unread.len() as i64,
        ..RunTotals::default()
    };
    for d in &found.differences {
        for k in &d.drift.kinds {
            *totals.found.entry(k.as_str().to_string()).or_default() += 1;
        }
    }
    // An approval covers the contracts the approved run found, no others.
    let in_scope = |d: &Found| {
        approved
            .as_ref()
            .is_none_or(|ids| ids.contains(&d.contract_id))
    };
    let changing: Vec<&Found> = found
        .differences
        .iter()
        .filter(|d| d.drift.repairable() && in_scope(d))
        .collect();
    totals.to_change = changing.len() as i64;
    totals.allowed = match &approved {
        Some(ids) => ids.len() as i64,
        None => request.guard.allows(found.compared as u64) as i64,
    };
    let mut differences: Vec<Difference> = found.unread.clone();
    if totals.to_change > totals.allowed {
        let note = format!(
            "{} of {} contracts would change, more than the guard's {}: nothing \
             changed. A mass difference usually means a wrong configuration \
             (partner account, SKEELO_BASE_URL), not drift",
            totals.to_change, totals.compared, totals.allowed
        );
        differences.extend(
            found
                .differences
                .iter()
                .map(|d| d.report("found", String::new())),
        );
        let ids: Vec<&str> = changing.iter().map(|d| d.contract_id.as_str()).collect();
        store.set_repair_scope(run, &ids).await?;
        return Ok(("awaiting_approval", totals, differences, note));
    }
    for (i, d) in found.differences.iter().enumerate() {
        let line = if in_scope(d) {
            match repair_one(store, skeelo, run, &request.by, d).await {
                Ok(line) => line,
                Err(RepairError::Store(e)) if !e.is_permanent() => return Err(e.into()),
                Err(e) => d.report("failed", format!("repair run {run}: {e}")),
            }
        } else {
            d.report(
                "found",
                format!(
                    "repair run {run}: not among the contracts approved; the next run looks again"
                ),
            )
        };
        match line.result {
            "repaired" => totals.repaired += 1,
            "left_for_people" => totals.left_for_people += 1,
            "failed" => totals.failed += 1,
            _ => {}
        }
        differences.push(line);
        progress.step("repaired", i as u64 + 1);
    }
    let note = format!(
        "{} repaired, {} left for people, {} failed",
        totals.repaired, totals.left_for_people, totals.failed
    );
    Ok(("done", totals, differences, note))
}

/// Marks run `id` approved and returns the contracts it may change.
async fn approve(store: &Store, id: i64, by: &str) -> Result<BTreeSet<String>, RepairError> {
    match store.approve_repair_run(id, by).await? {
        Some(r) => Ok(r.scope.into_iter().collect()),
        None => Err(not_approvable(id, store.repair_run(id).await?.as_ref())),
    }
}

fn not_approvable(id: i64, run: Option<&skeelo_store::repairs::RepairRun>) -> RepairError {
    RepairError::Approval(match run {
        None => format!("there is no repair run {id}"),
        Some(r) => format!(
            "repair run {id} is {}, not awaiting approval: only a run the guard stopped \
             can be approved",
            r.state.replace('_', " ")
        ),
    })
}

/// A contract found to differ.
struct Found {
    contract_id: String,
    drift: drift::Drift,
    target: Target,
    held: Option<Held>,
    /// The stored state it was compared from: if it changed by the time of the repair,
    /// Skeelo is read again.
    stored: ContractState,
}

impl Found {
    fn report(&self, result: &'static str, detail: String) -> Difference {
        Difference {
            contract_id: self.contract_id.clone(),
            kinds: self.drift.kinds.clone(),
            should_be: words::target(&self.target),
            skeelo_had: words::held(self.held.as_ref()),
            result,
            detail,
        }
    }
}

struct Survey {
    compared: i64,
    differences: Vec<Found>,
    /// Contracts that could not be compared (a stored state that does not read, or a
    /// refusal of Skeelo's for that contract alone).
    unread: Vec<Difference>,
}

/// Compares every contract with Skeelo (the caller's lane). Contracts never synced and
/// with nothing recorded at Skeelo are not read: no rule could call for them. Skeelo
/// not answering at all stops the run; one contract that cannot be read does not.
async fn survey(
    store: &Store,
    skeelo: &SkeeloClient,
    progress: &mut (dyn Progress + Send),
) -> Result<Survey, RepairError> {
    let mut after = String::new();
    let mut compared = 0i64;
    let mut differences = Vec::new();
    let mut unread = Vec::new();
    loop {
        let ids = store.contract_ids_after(&after, PAGE).await?;
        let Some(last) = ids.last() else {
            break;
        };
        after = last.clone();
        let mut reads = stream::iter(ids)
            .map(|id| async move {
                let state = match store.contract(&id).await {
                    Ok(Some(state)) => state,
                    Ok(None) => return Ok(None),
                    Err(e) if e.is_permanent() => {
                        return Ok(Some(Err(unread_line(
                            &id,
                            format!("its stored state does not read: {e}"),
                        ))))
                    }
                    Err(e) => return Err(RepairError::Store(e)),
                };
                let target = lifecycle::target(&state.facts);
                if target == Target::Absent && state.held.is_none() {
                    return Ok(None);
                }
                match read(skeelo, &id).await {
                    Ok(held) => Ok(Some(Ok((id, target, held, state)))),
                    Err(RepairError::Skeelo { error, .. }) if !error.is_transient() => {
                        Ok(Some(Err(unread_line(
                            &id,
                            format!("Skeelo refused to show it: {error}"),
                        ))))
                    }
                    Err(e) => Err(e),
                }
            })
            .buffered(READS_AT_ONCE);
        while let Some(read) = reads.next().await {
            match read? {
                None => continue,
                Some(Err(line)) => unread.push(line),
                Some(Ok((contract_id, target, held, stored))) => {
                    compared += 1;
                    progress.step("compared", compared as u64);
                    if let Some(drift) = drift::drift(&target, held.as_ref()) {
                        differences.push(Found {
                            contract_id,
                            drift,
                            target,
                            held,
                            stored,
                        });
                    }
                }
            }
        }
    }
    Ok(Survey {
        compared,
        differences,
        unread,
    })
}

fn unread_line(contract_id: &str, detail: String) -> Difference {
    Difference {
        contract_id: contract_id.to_string(),
        kinds: Vec::new(),
        should_be: String::new(),
        skeelo_had: String::new(),
        result: "failed",
        detail,
    }
}

/// What Skeelo holds now; a passing failure is tried again a few times.
async fn read(skeelo: &SkeeloClient, contract_id: &str) -> Result<Option<Held>, RepairError> {
    let mut tries = 0u64;
    loop {
        tries += 1;
        match skeelo.get(contract_id).await {
            Ok(s) => return Ok(s.map(|s| s.held())),
            Err(e) if e.is_transient() && tries < 5 => {
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            Err(error) => {
                return Err(RepairError::Skeelo {
                    contract_id: contract_id.to_string(),
                    error,
                })
            }
        }
    }
}

/// Repairs one contract under its row lock, as an event would. Skeelo was read during
/// the comparison, without the lock; under it, the contract is left alone when an
/// event's calls are unrecorded (its next attempt reads Skeelo back) or one of its
/// events is parked (its fate is for that letter to decide), and Skeelo is read again
/// only if the stored state changed meanwhile. The calls hold the lock for at most
/// [`LOCKED_BUDGET`]; one that may still land keeps the contract's uncertainty mark, as
/// an event's does.
async fn repair_one(
    store: &Store,
    skeelo: &SkeeloClient,
    run: i64,
    by: &str,
    found: &Found,
) -> Result<Difference, RepairError> {
    let contract_id = found.contract_id.as_str();
    if store.parked_letters_of(contract_id).await? > 0 {
        return Ok(found.report(
            "failed",
            format!("repair run {run}: left alone while a dead letter of this contract is parked; the next run looks again"),
        ));
    }
    let mut client = store.begin().await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let mut locked = apply::lock(&tx, &[contract_id], &[]).await?;
    let Some(state) = locked.contracts.remove(contract_id) else {
        let why = locked.unreadable.remove(contract_id).unwrap_or_default();
        return Ok(found.report(
            "failed",
            format!("repair run {run}: its stored state does not read: {why}"),
        ));
    };
    if state.uncertain.is_some() {
        return Ok(found.report(
            "failed",
            format!("repair run {run}: an event's calls to Skeelo are unrecorded (its next attempt reads Skeelo back); the next run looks again"),
        ));
    }
    let target = lifecycle::target(&state.facts);
    let owner = uuid::Uuid::new_v4();
    let sent = Arc::new(AtomicUsize::new(0));
    let under_lock = async {
        let held = if state.facts == found.stored.facts && state.held == found.stored.held {
            found.held.clone()
        } else {
            read(skeelo, contract_id).await?
        };
        let Some(d) = drift::drift(&target, held.as_ref()) else {
            return Ok((held, None));
        };
        if !d.repairable() {
            return Ok((held, Some((d, None))));
        }
        store
            .mark_uncertain(
                &[contract_id],
                owner,
                LOCKED_BUDGET + Duration::from_secs(5),
            )
            .await?;
        let document = state
            .facts
            .synced
            .as_ref()
            .map(|s| s.details.subscriber.document.digits().to_string());
        let called = skeelo::counting_sent(
            sent.clone(),
            converge(
                skeelo,
                contract_id,
                document.as_deref(),
                held.clone(),
                &target,
            ),
        )
        .await;
        Ok::<_, RepairError>((held, Some((d, Some(called)))))
    };
    let outcome = tokio::time::timeout(LOCKED_BUDGET, under_lock).await;
    let failed = |why: String| {
        found.report(
            "failed",
            format!("repair run {run}: {why}; the next run tries again"),
        )
    };
    let (held, drifted) = match outcome {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            return Ok(release(store, contract_id, owner, &sent, failed(e.to_string())).await)
        }
        Err(_) => {
            return Ok(release(
                store,
                contract_id,
                owner,
                &sent,
                failed(format!(
                    "out of time after {LOCKED_BUDGET:?} (a busy partner rate, or a slow Skeelo)"
                )),
            )
            .await)
        }
    };
    let had = words::held(held.as_ref());
    let Some((d, called)) = drifted else {
        return Ok(Difference {
            result: "in_line",
            detail: "in line again by the time its turn came".into(),
            ..found.report("in_line", String::new())
        });
    };
    let (result, now, made, detail) = match called {
        None => (
            "left_for_people",
            held.clone(),
            0,
            format!(
                "repair run {run}: Skeelo had {had}, the facts say {} ({}). {}",
                words::target(&target),
                words::kinds(&d.kinds),
                words::for_people(&d.kinds)
            ),
        ),
        Some(Ok((now, made))) => (
            "repaired",
            now,
            made,
            format!(
                "repair run {run}: Skeelo had {had}, the facts say {} ({}): {}",
                words::target(&target),
                words::kinds(&d.kinds),
                words::calls(&d.calls)
            ),
        ),
        Some(Err(e)) => {
            tracing::warn!(contract_id, run, error = %e, "a repair failed; the next run tries again");
            return Ok(release(store, contract_id, owner, &sent, failed(e.to_string())).await);
        }
    };
    let line = RepairLine {
        contract_id,
        run,
        actor: by,
        outcome: result,
        skeelo_status: now.as_ref().map(|h| h.status.as_str()),
        calls: made,
        detail: &detail,
    };
    // What Skeelo holds is recorded (also where no call may repair it, so the next
    // event plans from it and never calls a subscription Skeelo cancelled), the mark
    // goes, and the story tells it.
    repairs::record(&tx, now.as_ref(), &line).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(found.report(result, detail))
}

/// After a repair that recorded nothing: if no request is left without an answer,
/// others may read Skeelo back at once; if one may still land, the mark keeps its
/// fence (as an event's would), and whoever comes next waits for it.
async fn release(
    store: &Store,
    contract_id: &str,
    owner: uuid::Uuid,
    sent: &AtomicUsize,
    line: Difference,
) -> Difference {
    if sent.load(Ordering::SeqCst) == 0 {
        if let Err(e) = store.release_uncertain(&[contract_id], owner).await {
            tracing::warn!(contract_id, error = %e, "could not say that the repair's calls ended");
        }
    }
    line
}
