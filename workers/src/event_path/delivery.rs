//! What the event path knows of each delivery while it handles a batch: the message,
//! the valid event still to decide, or what to park.

use lapin::message::Delivery;
use skeelo_broker::Envelope;
use skeelo_domain::event::{self, Event};
use skeelo_domain::outcome::{EventResult, Outcome};
use skeelo_domain::policy::ParkReason;
use time::OffsetDateTime;

/// What the event path needs of a delivery.
pub(super) struct Message<'d> {
    pub(super) delivery: &'d Delivery,
    pub(super) envelope: Envelope,
    /// The event type for labels and results when the body cannot say.
    pub(super) label: &'static str,
}

impl Message<'_> {
    /// Identity across redeliveries, for the dead-letter table.
    pub(super) fn key(&self, event_id: Option<&str>) -> String {
        if let Some(id) = event_id {
            return id.to_string();
        }
        if let Some(id) = &self.envelope.message_id {
            return format!("message:{id}");
        }
        // FNV-1a over routing key and body: stable, and enough to tell copies apart.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let key = self.envelope.routing_key.bytes();
        for b in key.chain(self.delivery.data.iter().copied()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("digest:{h:016x}")
    }
}

/// A valid event still to decide.
pub(super) struct Work {
    pub(super) index: usize,
    pub(super) event: Event,
    /// Tries in this process so far.
    pub(super) tries: u32,
}

/// A message to park as a dead letter.
pub(super) struct Park {
    pub(super) index: usize,
    /// The event, when the body was valid.
    pub(super) event: Option<Event>,
    pub(super) reason: ParkReason,
    pub(super) class: String,
    pub(super) error: String,
    pub(super) attempts: u32,
}

impl Park {
    pub(super) fn of_event(
        w: Work,
        msgs: &[Message<'_>],
        reason: ParkReason,
        class: String,
        error: String,
    ) -> Park {
        let spent = u32::from(reason == ParkReason::Exhausted || reason == ParkReason::Refused);
        Park {
            index: w.index,
            attempts: msgs[w.index].envelope.attempts.saturating_add(spent),
            event: Some(w.event),
            reason,
            class,
            error,
        }
    }

    /// The event id: the event's, or read from a body that is otherwise unreadable.
    pub(super) fn event_id(&self, msg: &Message<'_>) -> Option<String> {
        match &self.event {
            Some(e) => Some(e.event_id.to_string()),
            None => event::peek_event_id(&msg.delivery.data).map(|u| u.to_string()),
        }
    }

    /// The contract, likewise.
    pub(super) fn contract_id(&self, msg: &Message<'_>) -> Option<String> {
        match &self.event {
            Some(e) => Some(e.contract_id.to_string()),
            None => event::peek_contract_id(&msg.delivery.data).map(String::from),
        }
    }

    pub(super) fn event_type(&self, msg: &Message<'_>) -> &'static str {
        self.event
            .as_ref()
            .map_or(msg.label, |e| e.event_type.as_str())
    }

    /// What the ERP is told of a parked message.
    pub(super) fn result(&self, msg: &Message<'_>, id: i64) -> EventResult {
        EventResult {
            event_id: self
                .event_id(msg)
                .or_else(|| msg.envelope.message_id.clone())
                .unwrap_or_else(|| "unknown".into()),
            contract_id: self.contract_id(msg),
            event_type: self.event_type(msg).to_string(),
            outcome: Outcome::DeadLettered,
            skeelo_status: None,
            detail: format!(
                "dead letter {id} ({}, {}): {}",
                self.reason.as_str(),
                self.class,
                self.error
            ),
            at: OffsetDateTime::now_utc(),
        }
    }
}
