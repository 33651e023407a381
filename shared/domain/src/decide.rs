//! What a batch of deliveries does to one contract, decided before any call, with no
//! I/O: which events were seen before (repeat the first result, or a duplicate), which
//! the lifecycle rules apply, which name products Skeelo does not sell, and whether
//! Skeelo must be called at all. A single event is a batch of one: this is the only
//! place these rules live.
//!
//! The event path around it locks the contracts, asks the catalogue, calls Skeelo for
//! the [`Step::Apply`] steps in order and writes what [`Step::report`] says.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use crate::event::{Event, Sku};
use crate::lifecycle::{self, Decision, Facts, Held, Status, Target, Verdict};
use crate::outcome::Outcome;

/// The first decision about an event id, repeated to the ERP when it may not have
/// received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// How it ended.
    pub outcome: Outcome,
    /// Skeelo's status then.
    pub skeelo_status: Option<Status>,
    /// Why.
    pub detail: String,
}

/// One delivered event, in delivery order.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The event.
    pub event: &'a Event,
    /// The delivery may be a second copy of one whose result the ERP never got (the
    /// broker's redelivered flag, a delayed round, a retry here): if the event was
    /// decided before, the first result is told again rather than "duplicate".
    pub repeat_first: bool,
}

/// What one event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Decided before: the ERP is told the first result again.
    Repeat(Processed),
    /// Decided before: a duplicate, no call.
    Duplicate {
        /// How it ended the first time.
        first: Outcome,
    },
    /// The same event id earlier in this batch, on a delivery that may be a second
    /// copy: the ERP is told that step's result again.
    Echo {
        /// The earlier step's position in this contract's steps.
        of: usize,
    },
    /// The rules decide; Skeelo is brought to `target` (if it differs).
    Apply {
        /// The decision.
        decision: Box<Decision>,
        /// What Skeelo must hold afterwards.
        target: Target,
    },
    /// A sync that would reach Skeelo names products Skeelo does not sell: invalid,
    /// parked, and the facts are left as they were.
    UnknownProduct(Vec<Sku>),
}

/// One contract's steps, one per incoming event and in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractPlan {
    /// The steps.
    pub steps: Vec<Step>,
    /// Some step needs a call to Skeelo (checked against what it holds now: its state
    /// changes only by calls, so if no step differs from it, none calls at all).
    pub calls: bool,
}

/// Decides a contract's events in order.
///
/// `facts` and `held` are the contract's stored state read under its lock; `seen`
/// holds the first decisions of event ids decided before; `unknown` the SKUs the
/// catalogue does not know (read after every SKU of the batch was looked up).
pub fn contract(
    facts: &Facts,
    held: Option<&Held>,
    seen: &HashMap<Uuid, Processed>,
    unknown: &BTreeSet<Sku>,
    events: &[Incoming<'_>],
) -> ContractPlan {
    let mut facts = facts.clone();
    let mut calls = false;
    let mut here: HashMap<Uuid, usize> = HashMap::new();
    let mut steps = Vec::with_capacity(events.len());
    for incoming in events {
        let event = incoming.event;
        let step = if let Some(first) = seen.get(&event.event_id) {
            if incoming.repeat_first {
                Step::Repeat(first.clone())
            } else {
                Step::Duplicate {
                    first: first.outcome,
                }
            }
        } else if let Some(&of) = here.get(&event.event_id) {
            match &steps[of] {
                Step::Apply { decision, .. } if !incoming.repeat_first => Step::Duplicate {
                    first: Outcome::from(decision.verdict),
                },
                _ => Step::Echo { of },
            }
        } else {
            let decision = lifecycle::decide(&facts, event);
            let missing = match (&decision.verdict, &event.sync) {
                // Only a sync that will reach Skeelo is judged against the catalogue; a
                // late or duplicate one is not, whatever Skeelo sells today.
                (Verdict::Applied, Some(sync)) => sync
                    .products
                    .iter()
                    .filter(|p| unknown.contains(*p))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            if missing.is_empty() {
                let target = lifecycle::target(&decision.facts);
                calls |= !lifecycle::plan(held, &target).is_empty();
                facts = decision.facts.clone();
                here.insert(event.event_id, steps.len());
                Step::Apply {
                    decision: Box::new(decision),
                    target,
                }
            } else {
                // Not decided: a later copy (after the catalogue learns the product,
                // or an operator's requeue) is judged afresh.
                Step::UnknownProduct(missing)
            }
        };
        steps.push(step);
    }
    ContractPlan { steps, calls }
}

/// What is recorded and told of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What the ERP is told.
    pub told: Outcome,
    /// Skeelo's status in the result.
    pub skeelo_status: Option<Status>,
    /// Why, in words.
    pub detail: String,
    /// The outcome in the contract's story (a repeated result is a duplicate there).
    pub recorded: Outcome,
    /// The event id becomes decided (only the step that decided it).
    pub decides: bool,
}

impl Step {
    /// The report of a step that ended: `status` is Skeelo's status once this step's
    /// calls (if any) returned; `earlier` are the reports of the contract's steps
    /// before it in this batch, by position.
    ///
    /// `None` for [`Step::UnknownProduct`], which is parked instead.
    pub fn report(&self, status: Option<Status>, earlier: &[Option<Report>]) -> Option<Report> {
        let report = match self {
            Step::Repeat(first) => Report {
                told: first.outcome,
                skeelo_status: first.skeelo_status,
                detail: first.detail.clone(),
                recorded: Outcome::Duplicate,
                decides: false,
            },
            Step::Duplicate { first } => Report {
                told: Outcome::Duplicate,
                skeelo_status: status,
                detail: format!("event already handled ({})", first.as_str()),
                recorded: Outcome::Duplicate,
                decides: false,
            },
            Step::Echo { of } => {
                let first = earlier.get(*of)?.as_ref()?;
                Report {
                    told: first.told,
                    skeelo_status: first.skeelo_status,
                    detail: first.detail.clone(),
                    recorded: Outcome::Duplicate,
                    decides: false,
                }
            }
            Step::Apply { decision, .. } => Report {
                told: Outcome::from(decision.verdict),
                skeelo_status: status,
                detail: decision.detail.clone(),
                recorded: Outcome::from(decision.verdict),
                decides: true,
            },
            Step::UnknownProduct(_) => return None,
        };
        Some(report)
    }
}

#[cfg(test)]
mod tests;
