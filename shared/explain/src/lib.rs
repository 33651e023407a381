//! The answer a support agent needs about one contract, on one screen: has the
//! subscriber access, and why; what the ERP told the fleet and what became of each
//! event; what Skeelo holds right now (asked live); what is stuck and what unsticks
//! it; and what will happen next by itself.
//!
//! The findings are worked out once ([`findings`], pure, from the stored facts and the
//! live read, with the lifecycle rules) and then said in the reader's language
//! ([`Lang`]): English, or Portuguese for the ISP's support staff. `skeelo-ops explain`
//! prints them; the console's contract page shows them; both read them through
//! [`explain`], so the two never tell a different story.

mod live;
mod words;

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use skeelo_domain::event::Sku;
use skeelo_domain::lifecycle::{self, Facts, Held, Status, Target, Toggle};
use skeelo_domain::mask;
use skeelo_store::dead::{DeadLetter, Filter, LetterState};
use skeelo_store::{ContractState, HistoryEntry, Store, StoreError};
use time::format_description::well_known::Rfc3339;

pub use live::{ask, PartnerArgs, Patience, SetupError, BRIEF};
pub use words::Lang;

/// One thing worth saying about a contract, worked out from its facts, its story,
/// its dead letters and Skeelo's live answer; said in words by [`words`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Each variant's comment says what its fields hold; scripts read them by these names.
#[allow(missing_docs)]
pub enum Finding {
    /// Skeelo holds an active subscription, as the facts say it should.
    HasAccess { products: Vec<Sku> },
    /// No sync has been applied yet: the ERP has not sent it, or it is parked
    /// (`sync_parked`); `recorded` later events wait for it.
    AwaitingSync {
        recorded: usize,
        sync_parked: bool,
        /// The parked sync was sent back and waits in the requeue queue.
        sync_requeued: bool,
    },
    /// Suspended by the ERP (arrears).
    Suspended { event: Option<EventRef> },
    /// Blocked by hand in the ERP.
    Blocked { event: Option<EventRef> },
    /// Cancelled for good.
    Cancelled { event: Option<EventRef> },
    /// Cancelled before its sync was applied: never given access.
    CancelledBeforeSync,
    /// Events that came after the cancel: the ERP must create a new contract.
    RejectedAfterCancel { count: usize },
    /// Skeelo holds something else than the facts call for (changed behind the
    /// fleet's back, or a call whose answer was lost).
    Drift {
        should: String,
        holds: String,
        /// Skeelo gives access although the facts say it should not.
        gives_access: bool,
        /// Calls the rules allow bring it back (a repair run does); `false` when
        /// Skeelo cancelled it, which is final there.
        repairable: bool,
    },
    /// Skeelo could not be asked now.
    SkeeloUnreachable { error: String },
    /// Calls to Skeelo for this contract may still be on their way.
    CallsInFlight { for_seconds: u64 },
    /// An event failed and is tried again by itself.
    Retrying {
        event_type: String,
        attempt: i32,
        at: String,
        error: String,
    },
    /// The fleet is in outage mode for Skeelo: events wait in their queues.
    Outage { since: String, error: String },
    /// A dead letter parked for people, and how to clear it.
    Parked {
        id: i64,
        event_type: String,
        reason: String,
        error_class: String,
        error: String,
        fix: Fix,
    },
    /// Nothing is pending: the fleet and Skeelo agree, and no letter waits.
    NothingPending,
    /// A dead letter sent back (by people or by the fleet) and not handled yet: it
    /// waits its turn in the requeue queue.
    Requeued { id: i64, by: String, at: String },
}

/// The event behind a fact: its version, when the ERP acted and who.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRef {
    /// The event's version.
    version: i64,
    /// When the ERP acted (RFC 3339).
    at: Option<String>,
    /// Who acted in the ERP.
    actor: Option<String>,
}

/// What clears a parked letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fix {
    /// The product must exist at Skeelo first; then requeue.
    ProductThenRequeue,
    /// The event's data is wrong: the ERP must send a corrected event.
    CorrectInErp,
    /// Skeelo refused it: read its answer, fix at Skeelo or in the ERP, then requeue.
    ReadRefusalThenRequeue,
    /// Skeelo or the database did not answer in time: requeue once they are healthy.
    RequeueWhenHealthy,
    /// RabbitMQ gave up on it (it failed delivery after delivery): read it first.
    InspectFirst,
}

impl Fix {
    fn of(letter: &DeadLetter) -> Fix {
        if letter.error_class.contains("unknown_product") {
            Fix::ProductThenRequeue
        } else {
            match letter.reason.as_str() {
                "invalid" => Fix::CorrectInErp,
                "refused" => Fix::ReadRefusalThenRequeue,
                "broker" => Fix::InspectFirst,
                _ => Fix::RequeueWhenHealthy,
            }
        }
    }

    /// The command that acts on it, when one does.
    fn command(self, id: i64) -> Option<String> {
        match self {
            Fix::CorrectInErp => None,
            Fix::InspectFirst => Some(format!("skeelo-ops dead show {id}")),
            _ => Some(format!("skeelo-ops dead requeue {id}")),
        }
    }
}

/// An outage note older than this is a process that stopped probing (it refreshes
/// its note at least every 16 s while it probes).
pub const OUTAGE_FRESH: Duration = Duration::from_secs(60);

/// What Skeelo answered when asked now.
#[derive(Debug, Clone)]
pub enum Live {
    /// Skeelo's answer: its subscription, or none.
    Holds(Option<Held>),
    /// Why Skeelo could not be asked (masked).
    Unreachable(String),
}

/// What the fleet is waiting for, as it noted it.
#[derive(Debug, Clone, Default)]
pub struct Waiting {
    /// Calls for this contract may still land for this long.
    pub in_flight: Option<Duration>,
    /// Its events going round again after a failure.
    pub retries: Vec<skeelo_store::waits::Retry>,
    /// Skeelo in outage mode (some process sees it so now).
    pub outage: Option<skeelo_store::waits::Outage>,
}

/// Everything said about a contract, pure: the same inputs give the same findings.
pub fn findings(
    facts: &Facts,
    history: &[HistoryEntry],
    parked: &[DeadLetter],
    requeued: &[DeadLetter],
    live: &Live,
    waiting: &Waiting,
    lang: Lang,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let target = lifecycle::target(facts);
    // Letters sent back that no worker has handled yet (no line of their event since).
    let sent_back: Vec<(&DeadLetter, time::OffsetDateTime)> = requeued
        .iter()
        .filter_map(|l| l.requeued_at.map(|at| (l, at)))
        .filter(|(l, at)| {
            !history
                .iter()
                .any(|h| l.event_id.as_deref() == Some(h.event_id.as_str()) && h.received_at > *at)
        })
        .collect();
    let cause = |t: Option<Toggle>, kind: &str| {
        t.map(|t| t.version.get()).map(|version| {
            let line = history
                .iter()
                .find(|h| h.event_type == kind && h.version == Some(version));
            EventRef {
                version,
                at: line
                    .and_then(|h| h.occurred_at)
                    .and_then(|t| t.format(&Rfc3339).ok()),
                actor: line.and_then(|h| h.actor.clone()),
            }
        })
    };
    match &target {
        Target::Absent => out.push(Finding::AwaitingSync {
            recorded: history.iter().filter(|h| h.outcome == "deferred").count(),
            sync_parked: parked.iter().any(|l| l.event_type == "sync"),
            sync_requeued: sent_back.iter().any(|(l, _)| l.event_type == "sync"),
        }),
        Target::Withdrawn => out.push(Finding::CancelledBeforeSync),
        Target::Present(want) => match want.status {
            Status::Cancelled => out.push(Finding::Cancelled {
                event: facts.cancelled.map(|v| {
                    let toggle = Toggle {
                        version: v,
                        on: true,
                    };
                    cause(Some(toggle), "cancel").unwrap_or(EventRef {
                        version: v.get(),
                        at: None,
                        actor: None,
                    })
                }),
            }),
            Status::Inactive => {
                if facts.is_suspended() {
                    out.push(Finding::Suspended {
                        event: cause(facts.suspended, "suspend"),
                    });
                }
                if facts.is_blocked() {
                    out.push(Finding::Blocked {
                        event: cause(facts.blocked, "block"),
                    });
                }
            }
            Status::Active => {
                if let Live::Holds(Some(h)) = live {
                    if lifecycle::holds(&target, Some(h)) {
                        out.push(Finding::HasAccess {
                            products: h.profile.products.clone(),
                        });
                    }
                }
            }
        },
    }
    let rejected = history.iter().filter(|h| h.outcome == "rejected").count();
    if rejected > 0 {
        out.push(Finding::RejectedAfterCancel { count: rejected });
    }
    match live {
        Live::Unreachable(error) => out.push(Finding::SkeeloUnreachable {
            error: error.clone(),
        }),
        Live::Holds(held) => {
            if !lifecycle::holds(&target, held.as_ref()) {
                out.push(Finding::Drift {
                    should: describe_target(&target, lang),
                    holds: describe_held(held.as_ref(), lang),
                    gives_access: held.as_ref().is_some_and(|h| h.status == Status::Active),
                    repairable: skeelo_domain::drift::drift(&target, held.as_ref())
                        .is_some_and(|d| d.repairable()),
                });
            }
        }
    }
    if let Some(o) = &waiting.outage {
        out.push(Finding::Outage {
            since: o.since.format(&Rfc3339).unwrap_or_default(),
            error: mask::text(&o.last_error),
        });
    }
    for r in &waiting.retries {
        out.push(Finding::Retrying {
            event_type: r.event_type.clone(),
            attempt: r.attempt,
            at: r.next_at.format(&Rfc3339).unwrap_or_default(),
            error: mask::text(&r.last_error),
        });
    }
    if let Some(d) = waiting.in_flight {
        out.push(Finding::CallsInFlight {
            for_seconds: d.as_secs().max(1),
        });
    }
    for l in parked {
        out.push(Finding::Parked {
            id: l.id,
            event_type: l.event_type.clone(),
            reason: l.reason.clone(),
            error_class: l.error_class.clone(),
            error: mask::text(&l.last_error),
            fix: Fix::of(l),
        });
    }
    for (l, at) in &sent_back {
        out.push(Finding::Requeued {
            id: l.id,
            by: l.requeued_by.clone().unwrap_or_default(),
            at: at.format(&Rfc3339).unwrap_or_default(),
        });
    }
    let pending = out.iter().any(|f| {
        matches!(
            f,
            Finding::AwaitingSync { .. }
                | Finding::Drift { .. }
                | Finding::SkeeloUnreachable { .. }
                | Finding::CallsInFlight { .. }
                | Finding::Retrying { .. }
                | Finding::Outage { .. }
                | Finding::Parked { .. }
                | Finding::Requeued { .. }
        )
    });
    if !pending {
        out.push(Finding::NothingPending);
    }
    out
}

/// What `target` asks of Skeelo, in words.
pub fn describe_target(target: &Target, lang: Lang) -> String {
    match target {
        Target::Absent => lang.nothing(),
        Target::Withdrawn => lang.nothing_active(),
        Target::Present(h) => describe_held(Some(h), lang),
    }
}

/// What Skeelo holds, in words.
pub fn describe_held(held: Option<&Held>, lang: Lang) -> String {
    match held {
        None => lang.nothing(),
        Some(h) => format!(
            "{} [{}]",
            lang.status(h.status),
            h.profile
                .products
                .iter()
                .map(Sku::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Why a contract could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The fleet's database did not answer.
    #[error("reading contract {id}: {source}")]
    Store {
        /// The contract.
        id: String,
        /// What the database said.
        #[source]
        source: StoreError,
    },
}

/// Everything known about one contract, read once: its facts and story, its letters,
/// what Skeelo answered now, and what the fleet is waiting for.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The ERP contract id.
    pub id: String,
    /// The contract as the fleet holds it.
    pub state: ContractState,
    /// Its story, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Its letters parked for people.
    pub parked: Vec<DeadLetter>,
    /// Skeelo's answer now.
    pub live: Live,
    /// What the fleet is waiting for.
    pub waiting: Waiting,
    /// Its letters sent back (by people or by the fleet).
    requeued: Vec<DeadLetter>,
}

impl Explanation {
    /// The findings, in `lang` where they quote a state.
    pub fn findings(&self, lang: Lang) -> Vec<Finding> {
        findings(
            &self.state.facts,
            &self.history,
            &self.parked,
            &self.requeued,
            &self.live,
            &self.waiting,
            lang,
        )
    }

    /// What Skeelo should hold, in `lang`.
    pub fn should_hold(&self, lang: Lang) -> String {
        describe_target(&lifecycle::target(&self.state.facts), lang)
    }

    /// What Skeelo holds now, in `lang`, or that it could not be asked.
    pub fn holds_now(&self, lang: Lang) -> String {
        match &self.live {
            Live::Holds(h) => lang.asked_now(&describe_held(h.as_ref(), lang)),
            Live::Unreachable(_) => lang.not_asked(),
        }
    }
}

/// Explains contract `id`, asking Skeelo live through `skeelo` (paced with the fleet)
/// with `patience`; `None` when the fleet has never heard of it.
pub async fn explain(
    store: &Store,
    skeelo: &skeelo_partner::api::SkeeloClient,
    id: &str,
    patience: Patience,
) -> Result<Option<Explanation>, ExplainError> {
    let failed = |source| ExplainError::Store {
        id: id.to_string(),
        source,
    };
    let Some(state) = store.contract(id).await.map_err(failed)? else {
        return Ok(None);
    };
    let history = store.history(id).await.map_err(failed)?;
    let letters = |state| {
        let filter = Filter {
            contract_id: Some(id.to_string()),
            state: Some(state),
            ..Filter::default()
        };
        async move { store.dead_letters(&filter, 20).await }
    };
    let parked = letters(LetterState::Parked).await.map_err(failed)?;
    let requeued = letters(LetterState::Requeued).await.map_err(failed)?;
    let live = match ask(skeelo, id, patience).await {
        Ok(s) => Live::Holds(s.map(|s| s.held())),
        Err(e) => Live::Unreachable(mask::text(&e.to_string())),
    };
    let waiting = Waiting {
        in_flight: store.calls_may_land(id).await.map_err(failed)?,
        retries: store.retries_of(id).await.map_err(failed)?,
        outage: store
            .outages_now(OUTAGE_FRESH)
            .await
            .map_err(failed)?
            .into_iter()
            .find(|o| o.downstream == "skeelo"),
    };
    Ok(Some(Explanation {
        id: id.to_string(),
        state,
        history,
        parked,
        live,
        waiting,
        requeued,
    }))
}

/// The subscriber's details, masked unless `reveal` (the caller audits a reveal).
pub fn subscriber(facts: &Facts, reveal: bool) -> Option<Value> {
    facts.synced.as_ref().map(|s| {
        let sub = &s.details.subscriber;
        if reveal {
            json!({ "id": sub.id, "name": sub.name, "document": sub.document.digits(),
                    "email": sub.email.as_str(), "phone": sub.phone.as_ref().map(|p| p.as_str()) })
        } else {
            json!({ "id": sub.id, "name": mask::name(&sub.name),
                    "document": mask::document(sub.document.digits()),
                    "email": mask::email(sub.email.as_str()),
                    "phone": sub.phone.as_ref().map(|p| mask::phone(p.as_str())) })
        }
    })
}

/// RFC 3339, or nothing.
pub fn fmt_time(t: Option<time::OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// A version as the history tables show it: `v3`, or `-`.
pub fn version_cell(version: Option<i64>) -> String {
    version.map_or_else(|| "-".into(), |v| format!("v{v}"))
}

#[cfg(test)]
mod tests;
