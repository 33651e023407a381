//! The least pause after a 429, whatever the partner's `Retry-After` says.
//!
//! A `Retry-After: 0`, a date in the past, or none at all would otherwise let every
//! waiting call go again at once, and a partner that keeps answering 429 would be
//! called as fast as the network allows (with no configured rate, thousands of times a
//! second). The floor starts small, so a lone 429 costs little, and doubles for each
//! pause that ends in another 429, up to [`MAX_FLOOR`]; any other answer resets it.

use std::time::{Duration, Instant};

/// The floor after a first 429.
pub const MIN_FLOOR: Duration = Duration::from_millis(250);
/// The floor never grows past this.
pub const MAX_FLOOR: Duration = Duration::from_secs(8);
/// The pause when a 429 carries no usable `Retry-After`.
const UNSAID: Duration = Duration::from_secs(1);

/// The floor's state, shared by one process's calls.
#[derive(Debug)]
pub struct Backoff {
    floor: Duration,
    /// When the floor last changed; `None` while the partner is not throttling.
    raised_at: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            floor: MIN_FLOOR,
            raised_at: None,
        }
    }
}

impl Backoff {
    /// A 429 arrived at `now`, asking for `asked` (`None`: no `Retry-After`, or one that
    /// could not be read). Returns the pause to take. The floor doubles once per pause:
    /// the many calls released together by the last pause count as one.
    pub fn throttled(&mut self, now: Instant, asked: Option<Duration>) -> Duration {
        match self.raised_at {
            Some(at) if now.saturating_duration_since(at) >= self.floor => {
                self.floor = (self.floor * 2).min(MAX_FLOOR);
                self.raised_at = Some(now);
            }
            Some(_) => {}
            None => {
                self.floor = MIN_FLOOR;
                self.raised_at = Some(now);
            }
        }
        asked.unwrap_or(UNSAID).max(self.floor)
    }

    /// The partner answered something other than 429: throttling is over.
    pub fn answered(&mut self) {
        self.raised_at = None;
        self.floor = MIN_FLOOR;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: Option<Duration> = Some(Duration::ZERO);

    #[test]
    fn retry_after_zero_still_waits_the_floor() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.throttled(t0, ZERO), MIN_FLOOR);
    }

    #[test]
    fn the_floor_doubles_while_429s_go_on_and_stops_at_its_cap() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            let p = b.throttled(now, ZERO);
            pauses.push(p.as_millis());
            now += p;
        }
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
    }

    #[test]
    fn calls_released_together_raise_the_floor_once() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.throttled(t0, ZERO), MIN_FLOOR);
        let after = t0 + MIN_FLOOR;
        for i in 0..50 {
            let p = b.throttled(after + Duration::from_millis(i), ZERO);
            assert_eq!(p, MIN_FLOOR * 2, "call {i} of the burst");
        }
    }

    #[test]
    fn a_longer_retry_after_is_kept_and_a_missing_one_waits_a_second() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(
            b.throttled(t0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        let mut b = Backoff::default();
        assert_eq!(b.throttled(t0, None), Duration::from_secs(1));
    }

    #[test]
    fn another_answer_resets_the_floor() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        b.throttled(t0, ZERO);
        b.throttled(t0 + Duration::from_secs(1), ZERO);
        b.answered();
        assert_eq!(b.throttled(t0 + Duration::from_secs(2), ZERO), MIN_FLOOR);
    }
}
