//! What the ERP is told about each event (CONTRACT §3).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::lifecycle::{Status, Verdict};

/// How an event ended. Every event the ERP publishes ends with at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Skeelo now matches the contract.
    Applied,
    /// Recorded; takes effect when the contract's sync arrives.
    Deferred,
    /// This event id was handled before.
    Duplicate,
    /// A newer event already decided this; nothing changed.
    Superseded,
    /// Not allowed after a cancel: create a new contract.
    Rejected,
    /// Could not be applied; parked for operators (see `detail`).
    DeadLettered,
}

impl Outcome {
    /// Every outcome, for metrics that want their series to exist from the start.
    pub const ALL: [Outcome; 6] = [
        Outcome::Applied,
        Outcome::Deferred,
        Outcome::Duplicate,
        Outcome::Superseded,
        Outcome::Rejected,
        Outcome::DeadLettered,
    ];

    /// The wire name, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Deferred => "deferred",
            Outcome::Duplicate => "duplicate",
            Outcome::Superseded => "superseded",
            Outcome::Rejected => "rejected",
            Outcome::DeadLettered => "dead_lettered",
        }
    }

    /// Parses the wire name (as stored in the database).
    pub fn from_name(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl From<Verdict> for Outcome {
    fn from(v: Verdict) -> Outcome {
        match v {
            Verdict::Applied => Outcome::Applied,
            Verdict::Deferred => Outcome::Deferred,
            Verdict::Superseded => Outcome::Superseded,
            Verdict::Rejected => Outcome::Rejected,
        }
    }
}

/// The message published to `skeelo.results` with routing key `result.<type>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventResult {
    /// The body's event id, or the AMQP `message_id` when the body could not be read.
    pub event_id: String,
    /// The contract, when it could be read.
    pub contract_id: Option<String>,
    /// The event type; for a message whose type cannot be known, the routing key's.
    #[serde(rename = "type")]
    pub event_type: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The subscription's status at Skeelo afterwards; `null` when Skeelo does not hold it.
    pub skeelo_status: Option<Status>,
    /// Why, in words.
    pub detail: String,
    /// When the fleet decided.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl EventResult {
    /// The routing key on `skeelo.results`.
    pub fn routing_key(&self) -> String {
        format!("result.{}", self.event_type)
    }
}
