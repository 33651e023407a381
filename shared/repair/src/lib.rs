//! Drift repair: compares every contract the fleet knows with what Skeelo holds, and
//! brings Skeelo back to what the contract's facts say.
//!
//! A repair is not a side door: it decides with the same rules as an event
//! ([`skeelo_domain::drift`] over [`skeelo_domain::lifecycle`]), calls Skeelo through
//! the same convergence ([`skeelo_partner::converge`]) and partner rate — in the
//! [`pacer::BACKGROUND`] lane, so it only takes what the events leave unused — holds
//! the contract's row lock and uncertainty mark as an event does, and tells the
//! contract's story. A run compares first and changes nothing until the
//! [`Guard`] agrees; each run leaves its summary in `repair_runs`.

mod guard;
pub mod words;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde::Serialize;
use skeelo_domain::drift::{self, Kind};
use skeelo_domain::lifecycle::{self, Held, Target};
use skeelo_partner::api::{SkeeloClient, SkeeloError};
use skeelo_partner::converge::converge;
use skeelo_partner::pacer;
use skeelo_store::apply;
use skeelo_store::repairs::{self, RepairLine, RunTotals};
use skeelo_store::{Store, StoreError};

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
    /// Contracts compared, differences by kind, and what was changed.
    pub compared: i64,
    /// Of those, the ones that differ.
    pub differing: i64,
    /// Differences found, by kind.
    pub found: BTreeMap<String, i64>,
    /// Contracts calls would change.
    pub to_change: i64,
    /// The most the guard allowed.
    pub allowed: i64,
    /// Contracts brought back in line.
    pub repaired: i64,
    /// Differences left for people.
    pub left_for_people: i64,
    /// Repairs that failed (tried again by the next run).
    pub failed: i64,
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
/// Reads of Skeelo in flight at once while comparing.
const READS_AT_ONCE: usize = 8;
/// Contracts read from the database per page.
const PAGE: i64 = 500;
/// How long one contract's repair calls may take.
const CALL_BUDGET: Duration = Duration::from_secs(30);

/// Runs one comparison of every contract with Skeelo and repairs what the guard
/// allows. `Ok(None)`: another run is working.
pub async fn run(
    store: &Store,
    skeelo: &SkeeloClient,
    request: &Request,
    progress: &mut (dyn Progress + Send),
) -> Result<Option<Report>, RepairError> {
    let approved = match request.approve {
        None => None,
        Some(id) => Some(approve(store, id, &request.by).await?),
    };
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
    let calls = pacer::LANE.scope(pacer::BACKGROUND, async {
        let found = survey(store, skeelo, run, progress).await?;
        let mut totals = RunTotals {
            compared: found.compared,
            differing: found.differences.len() as i64,
            ..RunTotals::default()
        };
        for d in &found.differences {
            for k in &d.drift.kinds {
                *totals.found.entry(k.as_str().to_string()).or_default() += 1;
            }
        }
        totals.to_change = found
            .differences
            .iter()
            .filter(|d| d.drift.repairable())
            .count() as i64;
        totals.allowed = match approved {
            Some(n) => n,
            None => request.guard.allows(found.compared as u64) as i64,
        };
        if totals.to_change > totals.allowed {
            let note = match request.approve {
                Some(id) => format!(
                    "{} contracts would change, more than the {} approved with run {id}: \
                     nothing changed; compare again and approve this run if it is right",
                    totals.to_change, totals.allowed
                ),
                None => format!(
                    "{} of {} contracts would change, more than the guard's {}: nothing \
                     changed. A mass difference usually means a wrong configuration \
                     (partner account, SKEELO_BASE_URL), not drift",
                    totals.to_change, totals.compared, totals.allowed
                ),
            };
            let differences = found
                .differences
                .iter()
                .map(|d| d.report("found", String::new()))
                .collect();
            return Ok::<_, RepairError>(("awaiting_approval", totals, differences, note));
        }
        let mut differences = Vec::with_capacity(found.differences.len());
        for (i, d) in found.differences.iter().enumerate() {
            let line = repair_one(store, skeelo, run, &request.by, &d.contract_id).await?;
            match line.result {
                "repaired" => totals.repaired += 1,
                "left_for_people" => totals.left_for_people += 1,
                "failed" => totals.failed += 1,
                _ => {}
            }
            differences.push(line);
            progress.step("repaired", i as u64 + 1);
            if i % 50 == 49 {
                store.repair_heartbeat(run).await?;
            }
        }
        let note = format!(
            "{} repaired, {} left for people, {} failed",
            totals.repaired, totals.left_for_people, totals.failed
        );
        Ok(("done", totals, differences, note))
    });
    match calls.await {
        Ok((state, totals, differences, note)) => {
            store.finish_repair_run(run, state, &totals, &note).await?;
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
                compared: totals.compared,
                differing: totals.differing,
                found: totals.found,
                to_change: totals.to_change,
                allowed: totals.allowed,
                repaired: totals.repaired,
                left_for_people: totals.left_for_people,
                failed: totals.failed,
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

/// Marks run `id` approved and returns how many changes it found.
async fn approve(store: &Store, id: i64, by: &str) -> Result<i64, RepairError> {
    match store.approve_repair_run(id, by).await? {
        Some(r) => Ok(r.to_change),
        None => Err(RepairError::Approval(match store.repair_run(id).await? {
            None => format!("there is no repair run {id}"),
            Some(r) => format!(
                "repair run {id} is {}, not awaiting approval: only a run the guard \
                 stopped can be approved",
                r.state.replace('_', " ")
            ),
        })),
    }
}

/// A contract found to differ.
struct Found {
    contract_id: String,
    drift: drift::Drift,
    target: Target,
    held: Option<Held>,
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
}

/// Compares every contract with Skeelo, reading in the background lane. Contracts
/// never synced and with nothing recorded at Skeelo are not read: no rule could call
/// for them.
async fn survey(
    store: &Store,
    skeelo: &SkeeloClient,
    run: i64,
    progress: &mut (dyn Progress + Send),
) -> Result<Survey, RepairError> {
    let mut after = String::new();
    let mut compared = 0i64;
    let mut differences = Vec::new();
    loop {
        let ids = store.contract_ids_after(&after, PAGE).await?;
        let Some(last) = ids.last() else {
            break;
        };
        after = last.clone();
        let mut reads = stream::iter(ids)
            .map(|id| async move {
                let Some(state) = store.contract(&id).await? else {
                    return Ok::<_, RepairError>(None);
                };
                let target = lifecycle::target(&state.facts);
                if target == Target::Absent && state.held.is_none() {
                    return Ok(None);
                }
                let held = read(skeelo, &id).await?;
                Ok(Some((id, target, held)))
            })
            .buffered(READS_AT_ONCE);
        while let Some(read) = reads.next().await {
            let Some((contract_id, target, held)) = read? else {
                continue;
            };
            compared += 1;
            progress.step("compared", compared as u64);
            if let Some(drift) = drift::drift(&target, held.as_ref()) {
                differences.push(Found {
                    contract_id,
                    drift,
                    target,
                    held,
                });
            }
        }
        store.repair_heartbeat(run).await?;
    }
    Ok(Survey {
        compared,
        differences,
    })
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

/// Repairs one contract under its row lock, as an event would: reads Skeelo again
/// (it may have changed since the comparison), plans with the rules, marks the
/// contract uncertain while calling, and writes what Skeelo holds afterwards with a
/// line in the contract's story. A failure is recorded and left to the next run.
async fn repair_one(
    store: &Store,
    skeelo: &SkeeloClient,
    run: i64,
    by: &str,
    contract_id: &str,
) -> Result<Difference, RepairError> {
    let mut client = store.begin().await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let mut locked = apply::lock(&tx, &[contract_id], &[]).await?;
    let Some(state) = locked.contracts.remove(contract_id) else {
        let why = locked.unreadable.remove(contract_id).unwrap_or_default();
        return Ok(failed_line(
            contract_id,
            format!("its stored state is unreadable: {why}"),
        ));
    };
    if state.uncertain.is_some_and(|m| !m.may_land_for.is_zero()) {
        return Ok(failed_line(
            contract_id,
            "an event's calls to Skeelo may still land: left to the next run".into(),
        ));
    }
    let target = lifecycle::target(&state.facts);
    let held = read(skeelo, contract_id).await?;
    let Some(d) = drift::drift(&target, held.as_ref()) else {
        // Back in line since the comparison (an event's calls, say): record what
        // Skeelo holds, nothing to tell.
        return Ok(Difference {
            contract_id: contract_id.to_string(),
            kinds: Vec::new(),
            should_be: words::target(&target),
            skeelo_had: words::held(held.as_ref()),
            result: "in_line",
            detail: "in line again by the time its turn came".into(),
        });
    };
    let found = Found {
        contract_id: contract_id.to_string(),
        drift: d.clone(),
        target: target.clone(),
        held: held.clone(),
    };
    let had = words::held(held.as_ref());
    if !d.repairable() {
        let detail = format!(
            "repair run {run}: Skeelo had {had}, the facts say {} ({}). {}",
            words::target(&target),
            words::kinds(&d.kinds),
            words::for_people(&d.kinds)
        );
        let line = RepairLine {
            contract_id,
            run,
            actor: by,
            outcome: "left_for_people",
            skeelo_status: held.as_ref().map(|h| h.status.as_str()),
            calls: 0,
            detail: &detail,
        };
        // What Skeelo holds is recorded, so the next event plans from it and never
        // calls a subscription Skeelo cancelled.
        repairs::record(&tx, held.as_ref(), &line).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(found.report("left_for_people", detail));
    }
    let owner = uuid::Uuid::new_v4();
    store
        .mark_uncertain(&[contract_id], owner, CALL_BUDGET + Duration::from_secs(5))
        .await?;
    let document = state
        .facts
        .synced
        .as_ref()
        .map(|s| s.details.subscriber.document.digits().to_string());
    let called = tokio::time::timeout(
        CALL_BUDGET,
        converge(
            skeelo,
            contract_id,
            document.as_deref(),
            held.clone(),
            &target,
        ),
    )
    .await;
    match called {
        Ok(Ok((now, made))) => {
            let detail = format!(
                "repair run {run}: Skeelo had {had}, the facts say {} ({}): {}",
                words::target(&target),
                words::kinds(&d.kinds),
                words::calls(&d.calls)
            );
            let line = RepairLine {
                contract_id,
                run,
                actor: by,
                outcome: "repaired",
                skeelo_status: now.as_ref().map(|h| h.status.as_str()),
                calls: made,
                detail: &detail,
            };
            repairs::record(&tx, now.as_ref(), &line).await?;
            tx.commit().await.map_err(StoreError::from)?;
            Ok(found.report("repaired", detail))
        }
        outcome => {
            // Nothing recorded: the mark stays, and whoever comes next reads Skeelo
            // back before planning (as after an event's failed call).
            drop(tx);
            if let Err(e) = store.release_uncertain(&[contract_id], owner).await {
                tracing::warn!(contract_id, error = %e, "could not say that the repair's calls ended");
            }
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("Skeelo took longer than {CALL_BUDGET:?}"),
            };
            tracing::warn!(contract_id, run, error = %why, "a repair failed; the next run tries again");
            Ok(found.report(
                "failed",
                format!("repair run {run}: {why}; the next run tries again"),
            ))
        }
    }
}

fn failed_line(contract_id: &str, detail: String) -> Difference {
    Difference {
        contract_id: contract_id.to_string(),
        kinds: Vec::new(),
        should_be: String::new(),
        skeelo_had: String::new(),
        result: "failed",
        detail,
    }
}
