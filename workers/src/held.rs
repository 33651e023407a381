//! Deliveries held but not handled: the broker counts messages of a queue as delivered
//! and unacknowledged that no consumer's channel counts as its own. RabbitMQ does this
//! without a word when a quorum queue is deleted and declared again under a live
//! consumer (no `basic.cancel`; the new queue checks messages out to the old
//! registration, and the client never sees them). Only closing the channel gives them
//! back, so such a consumer is replaced.
//!
//! The broker's figures lag by its statistics interval and name no consumer, so the
//! rule is one a healthy consumer cannot meet for long: orphaned messages in its queue
//! for a whole `bound`, while this consumer had nothing in work and received nothing.
//! Work another process holds is counted by that process's channel, so it is never
//! taken for orphans. Replacing a consumer that meets the rule costs nothing (it holds
//! no deliveries); when several idle consumers share the queue, each is replaced once.

use std::time::{Duration, Instant};

/// One consumer's watch; a new consumer starts a new one.
pub(crate) struct Held {
    bound: Duration,
    /// Since when the broker has counted unacknowledged messages while this consumer
    /// had none in work, and how many it had received then.
    since: Option<(Instant, u64)>,
}

impl Held {
    pub(crate) fn new(bound: Duration) -> Held {
        Held { bound, since: None }
    }

    /// One look. `broker`: the queue's orphaned messages as the broker counts them
    /// (`None` when unknown); `in_work`: deliveries this consumer is working on;
    /// `received`: deliveries it has received in all. True when the consumer holds
    /// messages it is not handling and must be replaced.
    pub(crate) fn look(
        &mut self,
        now: Instant,
        broker: Option<u64>,
        in_work: i64,
        received: u64,
    ) -> bool {
        let suspicious = broker.is_some_and(|n| n > 0) && in_work <= 0;
        if !suspicious {
            self.since = None;
            return false;
        }
        match self.since {
            Some((start, seen)) if seen == received => now.duration_since(start) >= self.bound,
            _ => {
                self.since = Some((now, received));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(30);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn messages_unacked_at_the_broker_and_none_here_for_the_bound_are_held() {
        let t0 = Instant::now();
        let mut h = Held::new(BOUND);
        assert!(!h.look(t0, Some(1), 0, 7));
        assert!(!h.look(at(t0, 29), Some(1), 0, 7));
        assert!(h.look(at(t0, 30), Some(3), 0, 7));
    }

    #[test]
    fn work_in_progress_here_is_not_held() {
        let t0 = Instant::now();
        let mut h = Held::new(BOUND);
        for s in 0..100 {
            assert!(!h.look(at(t0, s), Some(256), 12, 7));
        }
    }

    #[test]
    fn a_delivery_received_starts_the_watch_again() {
        let t0 = Instant::now();
        let mut h = Held::new(BOUND);
        assert!(!h.look(t0, Some(1), 0, 7));
        // Handled and acked; the broker's figure still shows it (its statistics lag).
        assert!(!h.look(at(t0, 20), Some(1), 0, 8));
        assert!(!h.look(at(t0, 49), Some(1), 0, 8));
        assert!(h.look(at(t0, 50), Some(1), 0, 8));
    }

    #[test]
    fn nothing_unacked_or_an_unknown_count_ends_the_watch() {
        let t0 = Instant::now();
        for gap in [Some(0), None] {
            let mut h = Held::new(BOUND);
            assert!(!h.look(t0, Some(2), 0, 1));
            assert!(!h.look(at(t0, 15), gap, 0, 1));
            assert!(!h.look(at(t0, 31), Some(2), 0, 1), "the watch began again");
            assert!(h.look(at(t0, 61), Some(2), 0, 1));
        }
    }

    #[test]
    fn work_in_between_ends_the_watch() {
        let t0 = Instant::now();
        let mut h = Held::new(BOUND);
        assert!(!h.look(t0, Some(2), 0, 1));
        assert!(!h.look(at(t0, 10), Some(2), 1, 1));
        assert!(!h.look(at(t0, 31), Some(2), 0, 1));
        assert!(!h.look(at(t0, 60), Some(2), 0, 1));
        assert!(h.look(at(t0, 61), Some(2), 0, 1));
    }
}
