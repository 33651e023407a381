//! `skeelo-ops explain`: the answer a support agent needs about one customer, on one
//! screen — has the subscriber access, and why; what the ERP told the fleet and what
//! became of each event; what Skeelo holds right now (asked live); what is stuck and
//! the command that unsticks it; and what will happen next by itself.
//!
//! The findings are worked out once ([`findings`], from the stored facts and the live
//! read, with the lifecycle rules) and then said in the reader's language
//! ([`words`]): English, or Portuguese for the ISP's support staff.

mod words;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};
use skeelo_domain::event::{Document, Sku};
use skeelo_domain::lifecycle::{self, Facts, Held, Status, Target, Toggle};
use skeelo_domain::mask;
use skeelo_store::dead::{DeadLetter, Filter, LetterState};
use skeelo_store::HistoryEntry;
use time::format_description::well_known::Rfc3339;

use crate::partner::{ask, PartnerArgs};
use crate::table;
pub(crate) use words::Lang;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The ERP contract id.
    #[arg(required_unless_present = "document", conflicts_with = "document")]
    contract: Option<String>,
    /// Or the subscriber's CPF or CNPJ, with or without punctuation: explains each of
    /// their contracts. Never printed back unmasked, not even when it is not valid.
    #[arg(long)]
    document: Option<String>,
    /// The language of the text: `en` or `pt-BR`.
    #[arg(long, default_value = "en", value_parser = Lang::parse)]
    lang: Lang,
    /// Show personal data unmasked (written to the audit trail).
    #[arg(long)]
    reveal: bool,
    /// Who is looking, for the audit trail of --reveal; defaults to $USER.
    #[arg(long, env = "SKEELO_OPERATOR")]
    operator: Option<String>,
    /// A JSON array with one object per contract, for scripts.
    #[arg(long)]
    json: bool,
    /// PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    partner: PartnerArgs,
}

/// Checked here rather than by the argument parser, whose errors quote the value.
fn parse_document(raw: &str) -> anyhow::Result<Document> {
    Document::parse(raw).map_err(|e| anyhow::anyhow!("--document is not a CPF or CNPJ: {e}"))
}

/// One thing worth saying about a contract, worked out from its facts, its story,
/// its dead letters and Skeelo's live answer; said in words by [`words`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Finding {
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
pub(crate) struct EventRef {
    version: i64,
    at: Option<String>,
    actor: Option<String>,
}

/// What clears a parked letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Fix {
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
const OUTAGE_FRESH: Duration = Duration::from_secs(60);

/// What Skeelo answered when asked now.
#[derive(Debug, Clone)]
pub(crate) enum Live {
    Holds(Option<Held>),
    Unreachable(String),
}

/// What the fleet is waiting for, as it noted it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Waiting {
    /// Calls for this contract may still land for this long.
    pub(crate) in_flight: Option<Duration>,
    /// Its events going round again after a failure.
    pub(crate) retries: Vec<skeelo_store::waits::Retry>,
    /// Skeelo in outage mode (some process sees it so now).
    pub(crate) outage: Option<skeelo_store::waits::Outage>,
}

/// Everything said about a contract, pure: the same inputs give the same findings.
pub(crate) fn findings(
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

fn describe_target(target: &Target, lang: Lang) -> String {
    match target {
        Target::Absent => lang.nothing(),
        Target::Withdrawn => lang.nothing_active(),
        Target::Present(h) => describe_held(Some(h), lang),
    }
}

fn describe_held(held: Option<&Held>, lang: Lang) -> String {
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

pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let document = a.document.as_deref().map(parse_document).transpose()?;
    let store = crate::database(&a.database_url).await?;
    let ids = match (&a.contract, &document) {
        (Some(id), _) => vec![id.clone()],
        (None, Some(doc)) => store.contracts_by_document(doc.digits()).await?,
        (None, None) => anyhow::bail!("name a contract, or a subscriber with --document"),
    };
    let mut known = Vec::new();
    for id in ids {
        if let Some(state) = store.contract(&id).await? {
            known.push((id, state));
        }
    }
    if known.is_empty() {
        let asked = match (&a.contract, &document) {
            // A document typed where the contract goes is not echoed either.
            (Some(id), _) => match Document::parse(id) {
                Ok(doc) => a.lang.document_as_contract(&mask::document(doc.digits())),
                Err(_) => a.lang.no_contract(id),
            },
            (_, Some(doc)) => a.lang.no_subscriber(&mask::document(doc.digits())),
            _ => String::new(),
        };
        eprintln!("{asked}");
        return Ok(ExitCode::from(3));
    }
    if a.reveal {
        let who = crate::dead::operator(&a.operator);
        let ids: Vec<&str> = known.iter().map(|(id, _)| id.as_str()).collect();
        store
            .audit(
                &who,
                "reveal",
                &format!("explain {}", ids.join(",")),
                i64::try_from(ids.len()).unwrap_or(i64::MAX),
                &json!({ "contracts": ids }),
            )
            .await?;
    }
    let skeelo = a.partner.client(&store)?;
    let mut docs = Vec::new();
    for (i, (id, state)) in known.iter().enumerate() {
        let history = store.history(id).await?;
        let letters = |state| {
            let filter = Filter {
                contract_id: Some(id.clone()),
                state: Some(state),
                ..Filter::default()
            };
            let store = &store;
            async move { store.dead_letters(&filter, 20).await }
        };
        let parked = letters(LetterState::Parked).await?;
        let requeued = letters(LetterState::Requeued).await?;
        let live = match ask(&skeelo, id).await {
            Ok(s) => Live::Holds(s.map(|s| s.held())),
            Err(e) => Live::Unreachable(mask::text(&e.to_string())),
        };
        let waiting = Waiting {
            in_flight: store
                .calls_may_land(id)
                .await
                .with_context(|| format!("reading contract {id}'s calls in flight"))?,
            retries: store.retries_of(id).await?,
            outage: store
                .outages_now(OUTAGE_FRESH)
                .await?
                .into_iter()
                .find(|o| o.downstream == "skeelo"),
        };
        let story = Story {
            id,
            facts: &state.facts,
            history: &history,
            found: findings(
                &state.facts,
                &history,
                &parked,
                &requeued,
                &live,
                &waiting,
                a.lang,
            ),
            live,
            lang: a.lang,
            reveal: a.reveal,
        };
        if a.json {
            docs.push(story.json());
        } else {
            if i > 0 {
                println!();
            }
            story.print();
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The subscriber's details, masked unless `reveal` (the caller audits a reveal).
pub(crate) fn subscriber(facts: &Facts, reveal: bool) -> Option<Value> {
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
pub(crate) fn fmt_time(t: Option<time::OffsetDateTime>) -> String {
    t.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// A version as the history tables show it: `v3`, or `-`.
pub(crate) fn version_cell(version: Option<i64>) -> String {
    version.map_or_else(|| "-".into(), |v| format!("v{v}"))
}

/// One contract's explanation: what was read, what was found, and for whom.
struct Story<'a> {
    id: &'a str,
    facts: &'a Facts,
    history: &'a [HistoryEntry],
    live: Live,
    found: Vec<Finding>,
    lang: Lang,
    reveal: bool,
}

impl Story<'_> {
    fn json(&self) -> Value {
        let Story {
            id,
            facts,
            history,
            live,
            found,
            lang,
            reveal,
        } = self;
        let (lang, reveal) = (*lang, *reveal);
        json!({
        "contract_id": id,
        "headline": lang.headline(found),
        "subscriber": subscriber(facts, reveal),
        "skeelo_should_be": describe_target(&lifecycle::target(facts), lang),
        "skeelo_now": match live {
            Live::Holds(h) => json!({ "asked": true, "holds": describe_held(h.as_ref(), lang) }),
            Live::Unreachable(e) => json!({ "asked": false, "error": e }),
        },
        "findings": found.iter().map(|f| {
            let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                o.insert("text".into(), Value::String(lang.finding(f)));
                if let Some(next) = lang.next(f) {
                    o.insert("next".into(), Value::String(next));
                }
            }
            v
        }).collect::<Vec<_>>(),
        "history": history.iter().map(|h| json!({
            "event_id": h.event_id, "type": h.event_type, "version": h.version,
            "actor": h.actor, "occurred_at": fmt_time(h.occurred_at),
            "received_at": fmt_time(Some(h.received_at)), "outcome": h.outcome,
            "outcome_text": lang.outcome(&h.outcome), "detail": mask::text(&h.detail),
        })).collect::<Vec<_>>(),
        })
    }

    fn print(&self) {
        let Story {
            id,
            facts,
            history,
            live,
            found,
            lang,
            reveal,
        } = self;
        let (lang, reveal) = (*lang, *reveal);
        println!("{}", lang.title(id, &lang.headline(found)));
        if let Some(s) = subscriber(facts, reveal) {
            let field = |k: &str| s[k].as_str().unwrap_or("-").to_string();
            println!(
                "  {:<13}{} · {} · {} · {}",
                lang.label("subscriber"),
                field("name"),
                field("document"),
                field("email"),
                field("phone"),
            );
        }
        println!(
            "  {:<13}{}",
            lang.label("should_hold"),
            describe_target(&lifecycle::target(facts), lang)
        );
        let now = match live {
            Live::Holds(h) => lang.asked_now(&describe_held(h.as_ref(), lang)),
            Live::Unreachable(_) => lang.not_asked(),
        };
        println!("  {:<13}{}", lang.label("holds_now"), now);
        println!();
        for f in found {
            println!("  - {}", lang.finding(f));
            if let Some(next) = lang.next(f) {
                println!("    → {next}");
            }
        }
        println!("\n{}", lang.label("events"));
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|h| {
                vec![
                    fmt_time(Some(h.received_at)),
                    h.event_type.clone(),
                    version_cell(h.version),
                    lang.outcome(&h.outcome),
                    h.actor.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table::print(&lang.history_header(), &rows);
    }
}

#[cfg(test)]
mod tests;
