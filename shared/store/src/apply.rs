//! The event transaction: lock contracts, read what was decided, write what was
//! decided. Every statement takes any number of contracts and events, so a batch of
//! deliveries costs the same round trips as one: the database work per event is what
//! limits the fleet when Skeelo is fast.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use time::OffsetDateTime;
use tokio_postgres::types::{Json, ToSql};

use crate::dead::{self, NewDeadLetter};
use crate::{state_of, text, ContractState, NewHistory, Processed, StoreError, Uncertain};
use skeelo_domain::lifecycle::{Held, Status};
use skeelo_domain::outcome::{EventResult, Outcome};

/// What [`lock`] read under the row locks.
#[derive(Debug, Default)]
pub struct Locked {
    /// Every locked contract's state, uncertainty mark included.
    pub contracts: HashMap<String, ContractState>,
    /// Locked contracts whose stored state does not read, with why.
    pub unreadable: HashMap<String, String>,
    /// The event ids decided before, with their first decision.
    pub seen: HashMap<uuid::Uuid, Processed>,
    /// Event ids decided before whose stored decision does not read, with why.
    pub unreadable_events: HashMap<uuid::Uuid, String>,
}

/// Takes the row locks of `contract_ids` (creating rows on first sight), always in the
/// database's order of ids so that two lockers never wait on each other in a circle,
/// then reads their uncertainty marks and which of `event_ids` were decided before.
/// The reads are statements of their own: each takes its snapshot after the locks are
/// held, so it sees what the previous holder committed.
pub async fn lock(
    tx: &Transaction<'_>,
    contract_ids: &[&str],
    event_ids: &[uuid::Uuid],
) -> Result<Locked, StoreError> {
    let locking = tx
        .prepare_cached(
            "INSERT INTO contracts (id)
             SELECT id FROM unnest($1::text[]) AS t(id) ORDER BY id
             ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id
             RETURNING id, facts, skeelo",
        )
        .await?;
    let rows = tx.query(&locking, &[&contract_ids]).await?;
    let mut contracts = HashMap::with_capacity(rows.len());
    let mut unreadable = HashMap::new();
    for row in &rows {
        let id = row.try_get::<_, String>(0)?;
        match state_of(row, 1, 2) {
            Ok(state) => {
                contracts.insert(id, state);
            }
            Err(e) => {
                unreadable.insert(id, e.to_string());
            }
        }
    }
    let marks = tx
        .prepare_cached(
            "SELECT contract_id, owner,
                    EXTRACT(EPOCH FROM (calls_until - clock_timestamp()))::float8
             FROM skeelo_uncertain WHERE contract_id = ANY($1::text[])",
        )
        .await?;
    let decided = tx
        .prepare_cached(
            "SELECT event_id, outcome, skeelo_status, detail
             FROM processed_events WHERE event_id = ANY($1::uuid[])",
        )
        .await?;
    // Sent together: one round trip for both.
    let (by_contract, by_event): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) =
        (&[&contract_ids], &[&event_ids]);
    let (marks, decided) =
        tokio::try_join!(tx.query(&marks, by_contract), tx.query(&decided, by_event))?;
    for row in &marks {
        let id: String = row.get(0);
        let left: Option<f64> = row.get(2);
        if let Some(state) = contracts.get_mut(&id) {
            state.uncertain = Some(Uncertain {
                owner: row.get(1),
                may_land_for: std::time::Duration::try_from_secs_f64(left.unwrap_or(0.0).max(0.0))
                    .unwrap_or_default(),
            });
        }
    }
    let mut seen = HashMap::with_capacity(decided.len());
    let mut unreadable_events = HashMap::new();
    for row in &decided {
        let outcome: String = row.get(1);
        let status: Option<String> = row.get(2);
        let Some(outcome) = Outcome::from_name(&outcome) else {
            // Written by a newer version, say: this event alone cannot be judged.
            unreadable_events.insert(row.get(0), format!("unknown stored outcome {outcome}"));
            continue;
        };
        let first = Processed {
            outcome,
            skeelo_status: status.as_deref().and_then(Status::from_name),
            detail: row.get(3),
        };
        seen.insert(row.get(0), first);
    }
    Ok(Locked {
        contracts,
        unreadable,
        seen,
        unreadable_events,
    })
}

/// A contract's new state.
pub struct ContractWrite<'a> {
    /// The contract.
    pub contract_id: &'a str,
    /// Its state after the events applied to it.
    pub state: &'a ContractState,
    /// Every call made for it has its answer recorded here: its uncertainty mark goes.
    pub settled: bool,
}

/// A line of a contract's story; `decided` also records the event id as decided.
pub struct EventWrite<'a> {
    /// The event id to record as decided (none for a duplicate's line).
    pub decided: Option<uuid::Uuid>,
    /// The line (none when the contract is not known: an unreadable body).
    pub history: Option<NewHistory<'a>>,
    /// What the ERP is told: it goes to the results outbox with the rest.
    pub result: &'a EventResult,
}

/// Writes what the transaction decided, in one statement: contracts' new states, the
/// marks of settled contracts cleared, event ids decided, the story told, the results
/// into the outbox.
pub async fn write(
    tx: &Transaction<'_>,
    contracts: &[ContractWrite<'_>],
    events: &[EventWrite<'_>],
) -> Result<(), StoreError> {
    let n = contracts.len();
    let mut c_id = Vec::with_capacity(n);
    // Serialized straight into the statement's buffer, with no JSON tree in between.
    let mut c_facts = Vec::with_capacity(n);
    let mut c_held: Vec<Option<Json<&Held>>> = Vec::with_capacity(n);
    let mut c_synced = Vec::with_capacity(n);
    let mut c_suspended = Vec::with_capacity(n);
    let mut c_blocked = Vec::with_capacity(n);
    let mut c_cancelled = Vec::with_capacity(n);
    let mut c_subscriber = Vec::with_capacity(n);
    let mut c_status = Vec::with_capacity(n);
    let mut settled = Vec::with_capacity(n);
    for c in contracts {
        let f = &c.state.facts;
        c_id.push(c.contract_id);
        c_facts.push(Json(f));
        c_held.push(c.state.held.as_ref().map(Json));
        c_synced.push(f.synced.is_some());
        c_suspended.push(f.is_suspended());
        c_blocked.push(f.is_blocked());
        c_cancelled.push(f.cancelled.is_some());
        c_subscriber.push(f.synced.as_ref().map(|s| s.details.subscriber.id.as_str()));
        c_status.push(c.state.held.as_ref().map(|h| h.status.as_str()));
        if c.settled {
            settled.push(c.contract_id);
        }
    }
    let m = events.len();
    let mut p_id = Vec::with_capacity(m);
    let mut p_contract = Vec::with_capacity(m);
    let mut p_type = Vec::with_capacity(m);
    let mut p_outcome = Vec::with_capacity(m);
    let mut p_status = Vec::with_capacity(m);
    let mut p_detail = Vec::with_capacity(m);
    let mut h_contract = Vec::with_capacity(m);
    let mut h_event = Vec::with_capacity(m);
    let mut h_type = Vec::with_capacity(m);
    let mut h_version = Vec::with_capacity(m);
    let mut h_actor = Vec::with_capacity(m);
    let mut h_occurred: Vec<Option<OffsetDateTime>> = Vec::with_capacity(m);
    let mut h_outcome = Vec::with_capacity(m);
    let mut h_status = Vec::with_capacity(m);
    let mut h_calls = Vec::with_capacity(m);
    let mut h_detail = Vec::with_capacity(m);
    let mut r_event = Vec::with_capacity(m);
    let mut r_key = Vec::with_capacity(m);
    let mut r_body = Vec::with_capacity(m);
    for e in events {
        let result = crate::storable(e.result);
        r_event.push(text(&result.event_id).into_owned());
        r_key.push(result.routing_key());
        r_body.push(Json(result));
        let Some(h) = &e.history else {
            continue;
        };
        let detail = text(h.detail);
        if let Some(id) = e.decided {
            p_id.push(id);
            p_contract.push(h.contract_id);
            p_type.push(h.event_type);
            p_outcome.push(h.outcome.as_str());
            p_status.push(h.skeelo_status.map(Status::as_str));
            p_detail.push(detail.clone());
        }
        h_contract.push(h.contract_id);
        h_event.push(text(h.event_id));
        h_type.push(h.event_type);
        h_version.push(h.version);
        h_actor.push(h.actor);
        h_occurred.push(h.occurred_at);
        h_outcome.push(h.outcome.as_str());
        h_status.push(h.skeelo_status.map(Status::as_str));
        h_calls.push(h.skeelo_calls);
        h_detail.push(detail);
    }
    let st = tx
        .prepare_cached(
            "WITH c AS (
                 UPDATE contracts AS c
                 SET facts = n.facts, skeelo = n.skeelo, synced = n.synced,
                     suspended = n.suspended, blocked = n.blocked, cancelled = n.cancelled,
                     subscriber_id = COALESCE(n.subscriber_id, c.subscriber_id),
                     skeelo_status = n.skeelo_status, updated_at = now()
                 FROM unnest($1::text[], $2::jsonb[], $3::jsonb[], $4::bool[], $5::bool[],
                             $6::bool[], $7::bool[], $8::text[], $9::text[])
                      AS n(id, facts, skeelo, synced, suspended, blocked, cancelled,
                           subscriber_id, skeelo_status)
                 WHERE c.id = n.id),
             u AS (DELETE FROM skeelo_uncertain WHERE contract_id = ANY($10::text[])),
             w AS (DELETE FROM event_retries WHERE event_id = ANY($18::text[])),
             o AS (INSERT INTO results_outbox (event_id, routing_key, body)
                   SELECT * FROM unnest($27::text[], $28::text[], $29::jsonb[])),
             p AS (INSERT INTO processed_events
                       (event_id, contract_id, type, outcome, skeelo_status, detail)
                   SELECT * FROM unnest($11::uuid[], $12::text[], $13::text[], $14::text[],
                                        $15::text[], $16::text[]))
             INSERT INTO contract_events (contract_id, event_id, type, version, actor,
                                          occurred_at, outcome, skeelo_status, skeelo_calls,
                                          detail)
             SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::int8[],
                                  $21::text[], $22::timestamptz[], $23::text[], $24::text[],
                                  $25::int4[], $26::text[])",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &c_id,
            &c_facts,
            &c_held,
            &c_synced,
            &c_suspended,
            &c_blocked,
            &c_cancelled,
            &c_subscriber,
            &c_status,
            &settled,
            &p_id,
            &p_contract,
            &p_type,
            &p_outcome,
            &p_status,
            &p_detail,
            &h_contract,
            &h_event,
            &h_type,
            &h_version,
            &h_actor,
            &h_occurred,
            &h_outcome,
            &h_status,
            &h_calls,
            &h_detail,
            &r_event,
            &r_key,
            &r_body,
        ],
    )
    .await?;
    Ok(())
}

/// Parks a dead letter in the caller's transaction; returns its id (a redelivered
/// failure updates its parked row and gets the same id).
pub async fn park(tx: &Transaction<'_>, letter: &NewDeadLetter<'_>) -> Result<i64, StoreError> {
    dead::insert(tx, letter).await
}
