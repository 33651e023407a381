//! Bringing Skeelo to what the rules decided, and knowing whose calls may still land.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skeelo_domain::decide::{ContractPlan, Step};
use skeelo_domain::lifecycle::{Facts, Held};
use skeelo_partner::api::{self as skeelo, SkeeloError};
use skeelo_partner::converge::converge;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::App;

/// How one step of a contract ended once Skeelo was called.
#[derive(Debug)]
pub(super) enum StepEnd {
    /// Done; Skeelo holds this afterwards, after this many calls.
    Done(Option<Held>, i32),
    /// A call failed, and every call made has its answer.
    Failed(SkeeloError),
    /// A call may still land at Skeelo: it outlived the budget (no error), or it failed
    /// with no answer from Skeelo itself (a timeout, a cut connection, a gateway).
    MayLand(Option<SkeeloError>),
    /// An earlier step of the contract failed: not tried.
    NotReached,
}

/// A contract's steps, called.
pub(super) struct Called {
    pub(super) ends: Vec<StepEnd>,
    /// The facts after the last step done, if any step was.
    pub(super) facts: Option<Facts>,
    /// What Skeelo holds after the last step done.
    pub(super) held: Option<Held>,
}

impl Called {
    /// Every call made has its answer in `ends`: nothing failed or is in flight.
    pub(super) fn settled(&self) -> bool {
        self.ends.iter().all(|e| matches!(e, StepEnd::Done(..)))
    }

    /// A call may still land at Skeelo.
    pub(super) fn may_land(&self) -> bool {
        self.ends.iter().any(|e| matches!(e, StepEnd::MayLand(_)))
    }

    /// What the calls say of Skeelo's health: `Some(true)` if a call got its answer
    /// and none found Skeelo unavailable, `Some(false)` if one did, `None` if no call
    /// was answered either way.
    pub(super) fn partner_answered(&self) -> Option<bool> {
        let unavailable = self.ends.iter().any(|e| match e {
            StepEnd::Failed(e) | StepEnd::MayLand(Some(e)) => {
                e.failure() == skeelo_domain::policy::Failure::PartnerUnavailable
            }
            _ => false,
        });
        let answered = self
            .ends
            .iter()
            .any(|e| matches!(e, StepEnd::Done(_, made) if *made > 0));
        match (unavailable, answered) {
            (true, _) => Some(false),
            (false, true) => Some(true),
            (false, false) => None,
        }
    }
}

/// Calls Skeelo for each step in turn, until one fails; all of them together end by
/// `deadline` (the call budget), after which a call still running is dropped.
pub(super) async fn steps(
    app: &App,
    contract_id: &str,
    mut held: Option<Held>,
    plan: &ContractPlan,
    deadline: tokio::time::Instant,
) -> Called {
    let mut ends = Vec::with_capacity(plan.steps.len());
    let mut facts = None;
    let mut stopped = false;
    for step in &plan.steps {
        if stopped {
            ends.push(StepEnd::NotReached);
            continue;
        }
        let Step::Apply { decision, target } = step else {
            ends.push(StepEnd::Done(held.clone(), 0));
            continue;
        };
        let document = decision
            .facts
            .synced
            .as_ref()
            .map(|s| s.details.subscriber.document.digits().to_string());
        let sent = Arc::new(AtomicUsize::new(0));
        let calls = skeelo::counting_sent(
            sent.clone(),
            converge(
                &app.skeelo,
                contract_id,
                document.as_deref(),
                held.clone(),
                target,
            ),
        );
        match tokio::time::timeout_at(deadline, calls).await {
            Ok(Ok((now, made))) => {
                held = now;
                facts = Some(decision.facts.clone());
                ends.push(StepEnd::Done(held.clone(), made));
            }
            Ok(Err(e)) if sent.load(Ordering::SeqCst) > 0 => {
                stopped = true;
                tracing::warn!(contract_id, error = %e, "a call to Skeelo got no answer of Skeelo's own; it may still land");
                ends.push(StepEnd::MayLand(Some(e)));
            }
            Ok(Err(e)) => {
                stopped = true;
                ends.push(StepEnd::Failed(e));
            }
            Err(_) if sent.load(Ordering::SeqCst) == 0 => {
                // Out of time while waiting for a turn in the partner rate (or a 429's
                // Retry-After): nothing was sent that could still land.
                stopped = true;
                ends.push(StepEnd::Failed(SkeeloError::Throttled));
            }
            Err(_) => {
                stopped = true;
                tracing::warn!(
                    contract_id,
                    budget_ms = app.settings.retry.call_budget.as_millis() as u64,
                    "Skeelo calls took longer than the call budget; one may still land"
                );
                ends.push(StepEnd::MayLand(None));
            }
        }
    }
    Called { ends, facts, held }
}

/// The calls this process is making, by contract, so that an event of this process
/// waiting for them wakes the moment they end; an event of another process learns it
/// from the mark's `calls_until` (see `Store::calls_may_land`).
#[derive(Default)]
pub(crate) struct InFlight {
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

impl InFlight {
    /// The calls for these contracts have all returned (or their marks are gone).
    pub(crate) fn ended(&self, contract_ids: &[&str]) {
        let Ok(mut waiters) = self.waiters.lock() else {
            return;
        };
        for id in contract_ids {
            if let Some(n) = waiters.remove(*id) {
                n.notify_waiters();
            }
        }
    }

    fn watch(&self, contract_id: &str) -> Option<Arc<Notify>> {
        let mut waiters = self.waiters.lock().ok()?;
        Some(waiters.entry(contract_id.to_string()).or_default().clone())
    }

    fn forget(&self, contract_id: &str) {
        if let Ok(mut waiters) = self.waiters.lock() {
            if waiters
                .get(contract_id)
                .is_some_and(|n| Arc::strong_count(n) == 1)
            {
                waiters.remove(contract_id);
            }
        }
    }
}

/// Waits until the calls behind a contract's mark can no longer land: woken at once
/// by an owner in this process, otherwise asking the database at a pace that slows
/// from 20 ms to half a second. Returns `false` if the fleet is stopping or `lost`
/// (the channel the event came on is gone) is cancelled.
pub(super) async fn wait_for(
    app: &App,
    lost: &CancellationToken,
    contract_id: &str,
    at_most: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + at_most;
    let mut pause = Duration::from_millis(20);
    let ended = loop {
        let watch = app.calls.watch(contract_id);
        let notified = watch.as_ref().map(|n| n.notified());
        if matches!(app.store.calls_may_land(contract_id).await, Ok(None)) {
            break true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break true;
        }
        let nap = tokio::time::sleep(pause.min(deadline - now));
        tokio::select! {
            _ = app.stop.cancelled() => break false,
            _ = lost.cancelled() => break false,
            _ = nap => {}
            _ = async { if let Some(n) = notified { n.await } else { std::future::pending().await } } => {}
        }
        pause = (pause * 2).min(Duration::from_millis(500));
    };
    app.calls.forget(contract_id);
    ended
}
