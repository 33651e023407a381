//! What happens to an event after a failure: one pure function, [`next`], from what
//! failed, how often the event has been tried, and whether a downstream is in outage.
//! Each adapter classifies its own failures into a [`Failure`]; nothing else decides.
//!
//! The principles, in the order the table below applies them:
//! - the event's own fault (invalid input, a refusal by Skeelo or by the database's
//!   constraints, a state this version cannot read) is parked at once: retrying cannot
//!   help;
//! - what says nothing about the event (throttling, an outage, the database away)
//!   postpones it without spending an attempt, so an outage of any length parks nothing;
//! - calls of another attempt that may still land are waited for, in the process, only
//!   as long as they really can;
//! - Skeelo failing this request is tried again a few times at once, then in delayed
//!   rounds through the broker, each costing an attempt, until the attempts run out;
//! - a broker that refuses to take the event back is asked again after a pause that
//!   grows with every refusal in a row: no path loops without back-off.

use std::time::Duration;

/// Why a message was parked as a dead letter (stored in `dead_letters.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParkReason {
    /// Invalid input: never retried.
    Invalid,
    /// Refused: by Skeelo (a 4xx that retrying cannot fix), or by the database's rules.
    Refused,
    /// Transient failures until the attempts ran out.
    Exhausted,
    /// RabbitMQ dead-lettered it itself (delivery limit, rejection elsewhere).
    Broker,
}

impl ParkReason {
    /// Every reason, for metrics whose series should exist from the start.
    pub const ALL: [ParkReason; 4] = [
        ParkReason::Invalid,
        ParkReason::Refused,
        ParkReason::Exhausted,
        ParkReason::Broker,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::Invalid => "invalid",
            ParkReason::Refused => "refused",
            ParkReason::Exhausted => "exhausted",
            ParkReason::Broker => "broker",
        }
    }
}

/// A failure, as the adapter that saw it classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The event is invalid (including products Skeelo does not sell).
    Invalid,
    /// Skeelo understood and refused (4xx).
    PartnerRefused,
    /// Skeelo kept answering 429: the partner rate, not the event.
    PartnerThrottled,
    /// Skeelo is down or unreachable.
    PartnerUnavailable,
    /// Skeelo failed this request (500, an unreadable answer).
    PartnerFailed,
    /// One of the event's calls may still land at Skeelo: it outlived the call budget,
    /// or its request left and no answer came (a timeout, a cut connection, a gateway
    /// that gave up). Never tried again at once: the next try waits until it cannot
    /// land any more, then reads Skeelo back.
    CallMayStillLand,
    /// Another attempt's calls to this contract may still land, for at most this long.
    CallsInFlight(Duration),
    /// The database did not answer or failed (connection, timeout, serialization).
    DatabaseUnavailable,
    /// The database refused the data itself (SQLSTATE class 22 or 23).
    DatabaseRefused,
    /// The contract's stored state does not read as this version expects.
    StateUnreadable,
    /// The broker did not take the event back (to a delay queue).
    BrokerRefused,
}

/// Where the event stands when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    /// Tries of this delivery in this process, the failed one included (1 = first).
    pub tries_here: u32,
    /// Delayed rounds already spent (our attempts header).
    pub attempts: u32,
    /// Quick tries allowed in the process after the first.
    pub immediate: u32,
    /// Rounds after which a failing event is parked.
    pub max_attempts: u32,
    /// First pause between quick tries (doubles).
    pub immediate_base: Duration,
    /// Skeelo is in outage mode.
    pub partner_down: bool,
    /// The message came from RabbitMQ's own dead-letter queue: it never goes back to a
    /// work queue (the broker took it away from the workers on purpose).
    pub from_dead_queue: bool,
    /// Refusals by the broker in a row, this one included (for [`Failure::BrokerRefused`]).
    pub broker_refusals: u32,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Park it as a dead letter and tell the ERP.
    Park(ParkReason),
    /// Try again in this process after a pause of up to this (jitter takes up to half off).
    TryAgain(Duration),
    /// Wait in this process until another attempt's calls end, at most this long, then
    /// try again; costs nothing.
    WaitForCalls(Duration),
    /// A delayed round through the broker; costs an attempt.
    DelayRound,
    /// A delayed round that costs no attempt.
    Postpone,
    /// Give the delivery back to its queue after this pause.
    Requeue(Duration),
}

/// The longest pause between quick tries, and before a requeue.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Decides what follows a failure.
pub fn next(failure: Failure, s: &Situation) -> Next {
    match failure {
        Failure::Invalid => Next::Park(ParkReason::Invalid),
        Failure::PartnerRefused | Failure::DatabaseRefused | Failure::StateUnreadable => {
            Next::Park(ParkReason::Refused)
        }
        Failure::BrokerRefused => Next::Requeue(doubling(
            Duration::from_millis(250),
            s.broker_refusals.saturating_sub(1),
        )),
        // Parking needs the database; a broker dead letter waits in its own queue.
        Failure::DatabaseUnavailable if s.from_dead_queue => {
            Next::Requeue(doubling(Duration::from_millis(500), s.tries_here))
        }
        Failure::PartnerThrottled | Failure::DatabaseUnavailable => Next::Postpone,
        Failure::CallsInFlight(at_most) => Next::WaitForCalls(at_most),
        Failure::PartnerUnavailable | Failure::PartnerFailed | Failure::CallMayStillLand
            if s.partner_down =>
        {
            Next::Postpone
        }
        Failure::PartnerUnavailable | Failure::PartnerFailed if s.tries_here <= s.immediate => {
            Next::TryAgain(doubling(s.immediate_base, s.tries_here))
        }
        Failure::PartnerUnavailable | Failure::PartnerFailed | Failure::CallMayStillLand => {
            if s.attempts.saturating_add(1) >= s.max_attempts {
                Next::Park(ParkReason::Exhausted)
            } else {
                Next::DelayRound
            }
        }
    }
}

/// `base` doubled `times` times, at most [`MAX_PAUSE`].
fn doubling(base: Duration, times: u32) -> Duration {
    base.saturating_mul(1u32 << times.min(16)).min(MAX_PAUSE)
}

/// A cause of a dead letter that can clear by itself, so the fleet can requeue the
/// letter once a probe shows it gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heals {
    /// Skeelo did not sell a product the sync names: clears when the product is in
    /// Skeelo's catalogue.
    Catalogue,
    /// Skeelo kept failing (or refused our credentials) until the attempts ran out:
    /// clears when Skeelo answers again with our credentials.
    Partner,
}

impl Heals {
    /// The name in metrics and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Heals::Catalogue => "catalogue",
            Heals::Partner => "partner",
        }
    }
}

/// Whether a parked letter (its stored reason and error class) can heal by itself.
/// Invalid input, Skeelo's refusals and what RabbitMQ dead-lettered (a message that
/// kept killing its worker) stay parked for people.
pub fn heals(reason: &str, class: &str) -> Option<Heals> {
    match (reason, class) {
        ("invalid", "unknown_product") | ("refused", "http_422_unknown_product") => {
            Some(Heals::Catalogue)
        }
        ("exhausted", _) => Some(Heals::Partner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tries_here: u32, attempts: u32) -> Situation {
        Situation {
            tries_here,
            attempts,
            immediate: 2,
            max_attempts: 8,
            immediate_base: Duration::from_millis(100),
            partner_down: false,
            from_dead_queue: false,
            broker_refusals: 0,
        }
    }

    fn down(mut s: Situation) -> Situation {
        s.partner_down = true;
        s
    }

    fn dead_queue(mut s: Situation) -> Situation {
        s.from_dead_queue = true;
        s
    }

    fn refusals(n: u32) -> Situation {
        let mut s = at(1, 0);
        s.broker_refusals = n;
        s
    }

    #[test]
    fn the_table() {
        use Failure::*;
        let ms = Duration::from_millis;
        let cases: &[(&str, Failure, Situation, Next)] = &[
            (
                "invalid is parked",
                Invalid,
                at(1, 0),
                Next::Park(ParkReason::Invalid),
            ),
            (
                "invalid is parked even in an outage",
                Invalid,
                down(at(1, 0)),
                Next::Park(ParkReason::Invalid),
            ),
            (
                "a refusal is parked",
                PartnerRefused,
                at(1, 0),
                Next::Park(ParkReason::Refused),
            ),
            (
                "the database refusing the data is parked",
                DatabaseRefused,
                at(1, 3),
                Next::Park(ParkReason::Refused),
            ),
            (
                "an unreadable state is parked",
                StateUnreadable,
                at(1, 0),
                Next::Park(ParkReason::Refused),
            ),
            (
                "throttling postpones",
                PartnerThrottled,
                at(1, 7),
                Next::Postpone,
            ),
            (
                "the database away postpones",
                DatabaseUnavailable,
                at(3, 7),
                Next::Postpone,
            ),
            (
                "a broker dead letter waits in its queue",
                DatabaseUnavailable,
                dead_queue(at(1, 0)),
                Next::Requeue(ms(1000)),
            ),
            (
                "… longer each time",
                DatabaseUnavailable,
                dead_queue(at(3, 0)),
                Next::Requeue(ms(4000)),
            ),
            (
                "calls in flight are waited for",
                CallsInFlight(ms(700)),
                at(1, 0),
                Next::WaitForCalls(ms(700)),
            ),
            (
                "a first failure is tried again at once",
                PartnerFailed,
                at(1, 0),
                Next::TryAgain(ms(200)),
            ),
            (
                "a second one too, after a longer pause",
                PartnerFailed,
                at(2, 0),
                Next::TryAgain(ms(400)),
            ),
            (
                "Skeelo unavailable is tried again at once",
                PartnerUnavailable,
                at(1, 0),
                Next::TryAgain(ms(200)),
            ),
            (
                "quick tries spent: a delayed round",
                PartnerFailed,
                at(3, 0),
                Next::DelayRound,
            ),
            (
                "quick tries spent: a delayed round, later too",
                PartnerUnavailable,
                at(3, 6),
                Next::DelayRound,
            ),
            (
                "attempts spent: parked",
                PartnerFailed,
                at(3, 7),
                Next::Park(ParkReason::Exhausted),
            ),
            (
                "in an outage: postponed, not spent",
                PartnerFailed,
                down(at(3, 7)),
                Next::Postpone,
            ),
            (
                "in an outage, even the first failure",
                PartnerUnavailable,
                down(at(1, 0)),
                Next::Postpone,
            ),
            (
                "outliving the budget is never retried at once",
                CallMayStillLand,
                at(1, 0),
                Next::DelayRound,
            ),
            (
                "outliving the budget spends an attempt",
                CallMayStillLand,
                at(1, 7),
                Next::Park(ParkReason::Exhausted),
            ),
            (
                "outliving the budget in an outage",
                CallMayStillLand,
                down(at(1, 7)),
                Next::Postpone,
            ),
            (
                "the broker refusing: a pause",
                BrokerRefused,
                refusals(1),
                Next::Requeue(ms(250)),
            ),
            (
                "… that grows",
                BrokerRefused,
                refusals(4),
                Next::Requeue(ms(2000)),
            ),
            (
                "… up to a bound",
                BrokerRefused,
                refusals(40),
                Next::Requeue(MAX_PAUSE),
            ),
        ];
        for (name, failure, situation, want) in cases {
            assert_eq!(next(*failure, situation), *want, "{name}");
        }
    }

    #[test]
    fn with_no_quick_tries_the_first_failure_is_a_delayed_round() {
        let mut s = at(1, 0);
        s.immediate = 0;
        assert_eq!(next(Failure::PartnerFailed, &s), Next::DelayRound);
    }

    #[test]
    fn with_one_attempt_the_first_failure_past_quick_tries_parks() {
        let mut s = at(3, 0);
        s.max_attempts = 1;
        assert_eq!(
            next(Failure::PartnerFailed, &s),
            Next::Park(ParkReason::Exhausted)
        );
        // Throttling never parks, whatever the attempts.
        assert_eq!(next(Failure::PartnerThrottled, &s), Next::Postpone);
    }

    #[test]
    fn pauses_never_overflow() {
        assert_eq!(doubling(Duration::from_secs(10), u32::MAX), MAX_PAUSE);
        let s = dead_queue(at(u32::MAX, u32::MAX));
        assert_eq!(
            next(Failure::DatabaseUnavailable, &s),
            Next::Requeue(MAX_PAUSE)
        );
        let s = at(u32::MAX, u32::MAX);
        assert_eq!(
            next(Failure::PartnerFailed, &s),
            Next::Park(ParkReason::Exhausted)
        );
    }

    #[test]
    fn only_causes_that_clear_by_themselves_heal() {
        assert_eq!(heals("invalid", "unknown_product"), Some(Heals::Catalogue));
        assert_eq!(
            heals("refused", "http_422_unknown_product"),
            Some(Heals::Catalogue)
        );
        for class in ["transient", "unavailable", "throttled"] {
            assert_eq!(heals("exhausted", class), Some(Heals::Partner));
        }
        for (reason, class) in [
            ("invalid", "invalid_document"),
            ("invalid", "not_json"),
            ("refused", "http_422_invalid_document"),
            ("refused", "database_refused"),
            ("broker", "delivery_limit"),
        ] {
            assert_eq!(heals(reason, class), None, "{reason}/{class}");
        }
    }
}
