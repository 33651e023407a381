//! Where the fleet's next partner-rate slots go: the one rule every ledger applies
//! (the database's row for a fleet, memory for a process alone).
//!
//! The partner counts calls in any sliding second. An even schedule (one slot every
//! interval, GCRA) never exceeds that count, but loses for good every slot nobody was
//! ready to take: a round's transaction at start-up, a hand-over between processes, a
//! contract's next event waiting for its previous one. The partner's own count is kinder:
//! a slot missed early in a second can still be taken later in that second. So the
//! schedule keeps the last `rate` slots it handed out, like the partner, and lets the
//! fleet make up a short gap at twice the rate, never placing a slot where the
//! partner would see one call too many, and never running ahead of the even schedule
//! (so over any stretch of work the fleet takes what the even schedule would have
//! given, not more: bursts stay the partner's exception, not the fleet's habit).
//!
//! Times are seconds since the Unix epoch on the ledger's clock, so that every
//! process of the fleet places a slot at the same moment.

/// Slots begin this far after the ledger's clock reads the lease: the answer has to
/// reach the process before its first slot is due.
pub const LEAD: f64 = 0.005;

/// The longest gap the fleet makes up. A longer one is idleness: the schedule starts
/// afresh from the next slot, so that work arriving after a quiet spell starts at the
/// even pace instead of with a burst. A quarter of a second covers the gaps measured at
/// start-up and between processes (21–151 ms, docs/performance.md).
pub const CATCH_UP: f64 = 0.25;

/// The state of one schedule, as a ledger keeps it between leases.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// When the next slot is due on the even schedule: behind the clock after a gap,
    /// `-inf` before the first lease.
    pub next: f64,
    /// The last slots handed out, oldest first (at most a rate's worth are kept).
    pub recent: Vec<f64>,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            next: f64::NEG_INFINITY,
            recent: Vec::new(),
        }
    }
}

impl Schedule {
    /// Places `n` slots `interval` seconds apart on average, for a partner allowing
    /// `rate` calls a second, no earlier than `now + LEAD` nor before `paused_until`
    /// (a 429's end). Returns them in order; `self` remembers them.
    ///
    /// Every slot keeps two rules the partner would check: no more than `rate` slots
    /// in any `rate × interval` (a second and the margin's room), and no two slots
    /// closer than half an interval (a gap is made up at twice the rate at most).
    pub fn lease(
        &mut self,
        now: f64,
        paused_until: f64,
        n: usize,
        interval: f64,
        rate: u32,
    ) -> Vec<f64> {
        let rate = rate.max(1) as usize;
        let window = interval * rate as f64;
        let earliest = (now + LEAD).max(paused_until);
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let mut t = earliest.max(self.next);
            if let Some(last) = self.recent.last() {
                t = t.max(last + interval / 2.0);
            }
            if self.recent.len() >= rate {
                t = t.max(self.recent[self.recent.len() - rate] + window);
            }
            // Behind the even schedule by more than a gap worth making up: start it
            // afresh from here. Otherwise it moves on by one interval from where it
            // was, so the slots that follow come closer until it is caught up.
            let from = if t - self.next > CATCH_UP {
                t
            } else {
                self.next
            };
            self.next = from + interval;
            self.recent.push(t);
            slots.push(t);
        }
        let excess = self.recent.len().saturating_sub(rate);
        self.recent.drain(..excess);
        slots
    }
}

/// Seconds since the Unix epoch, as the ledgers keep time.
pub fn epoch_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A time the ledger placed, on the wall clock (`None`: not a time, e.g. infinite).
pub fn wall_clock(t: f64) -> Option<std::time::SystemTime> {
    std::time::Duration::try_from_secs_f64(t)
        .ok()
        .and_then(|d| std::time::UNIX_EPOCH.checked_add(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most slots found in any window of `len` seconds (start included, end
    /// excluded, as the partner counts).
    fn busiest(slots: &[f64], len: f64) -> usize {
        let mut most = 0;
        let mut start = 0;
        for end in 0..slots.len() {
            while slots[end] - slots[start] >= len - 1e-9 {
                start += 1;
            }
            most = most.max(end - start + 1);
        }
        most
    }

    const RATE: u32 = 50;
    const INTERVAL: f64 = 1.0 / (50.0 * 0.99);

    /// Leases `n` slots at a time whenever `want(now)` asks, driving the clock to each
    /// lease's last slot: a fleet that is always ready (or not) to call.
    fn drive(s: &mut Schedule, start: f64, leases: &[(f64, usize)]) -> Vec<f64> {
        let mut all = Vec::new();
        for (at, n) in leases {
            all.extend(s.lease(start + at, f64::NEG_INFINITY, *n, INTERVAL, RATE));
        }
        all
    }

    #[test]
    fn a_steady_fleet_gets_the_even_schedule() {
        let mut s = Schedule::default();
        let slots = s.lease(100.0, f64::NEG_INFINITY, 200, INTERVAL, RATE);
        assert!((slots[0] - (100.0 + LEAD)).abs() < 1e-9);
        for pair in slots.windows(2) {
            assert!((pair[1] - pair[0] - INTERVAL).abs() < 1e-9, "{pair:?}");
        }
        assert_eq!(busiest(&slots, 1.0), RATE as usize);
        assert_eq!(s.recent.len(), RATE as usize, "a rate's worth is kept");
    }

    #[test]
    fn a_short_gap_is_made_up_at_twice_the_rate_without_a_second_above_it() {
        let mut s = Schedule::default();
        // Two slots (the token and the catalogue), then nobody is ready for 120 ms.
        let mut slots = drive(&mut s, 0.0, &[(0.0, 2)]);
        let resumed = slots[1] + 0.12;
        slots.extend(s.lease(resumed, f64::NEG_INFINITY, 300, INTERVAL, RATE));
        // The slots after the gap come half an interval apart until the even schedule
        // is caught up, then an interval apart.
        assert!((slots[3] - slots[2] - INTERVAL / 2.0).abs() < 1e-9);
        let even_end = slots[0] + INTERVAL * (slots.len() - 1) as f64;
        let last = slots[slots.len() - 1];
        // Where the even schedule would have ended, or within the echo of the gap a
        // window later (the partner's second forbids more).
        assert!(last - even_end < 0.13, "{} s late", last - even_end);
        assert!(last >= even_end - 1e-9, "never ahead of the even schedule");
        assert!(busiest(&slots, 1.0) <= RATE as usize);
        assert!(busiest(&slots, INTERVAL * f64::from(RATE)) <= RATE as usize);
        for pair in slots.windows(2) {
            assert!(pair[1] - pair[0] >= INTERVAL / 2.0 - 1e-9, "{pair:?}");
        }
    }

    #[test]
    fn a_long_gap_is_idleness_and_starts_the_schedule_afresh() {
        let mut s = Schedule::default();
        let mut slots = drive(&mut s, 0.0, &[(0.0, 10)]);
        let resumed = slots[9] + 2.0;
        let after = s.lease(resumed, f64::NEG_INFINITY, 20, INTERVAL, RATE);
        for pair in after.windows(2) {
            assert!(
                (pair[1] - pair[0] - INTERVAL).abs() < 1e-9,
                "no burst: {pair:?}"
            );
        }
        slots.extend(after);
        assert!(busiest(&slots, 1.0) <= RATE as usize);
    }

    #[test]
    fn no_window_ever_holds_more_than_the_rate_whatever_the_demand() {
        // Demand that comes and goes in every pattern the pseudo-random walk makes.
        let mut s = Schedule::default();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut now = 1000.0;
        let mut slots = Vec::new();
        for _ in 0..5000 {
            let n = (next() % 6) as usize;
            let got = s.lease(now, f64::NEG_INFINITY, n, INTERVAL, RATE);
            now = got.last().copied().unwrap_or(now) - 0.05 + (next() % 400) as f64 / 1000.0;
            slots.extend(got);
        }
        assert!(slots.windows(2).all(|p| p[1] > p[0]), "in order");
        assert!(busiest(&slots, 1.0) <= RATE as usize);
        assert!(busiest(&slots, INTERVAL * f64::from(RATE)) <= RATE as usize);
        for pair in slots.windows(2) {
            assert!(pair[1] - pair[0] >= INTERVAL / 2.0 - 1e-9);
        }
    }

    #[test]
    fn a_pause_holds_every_slot_and_is_not_made_up_after() {
        let mut s = Schedule::default();
        let before = s.lease(0.0, f64::NEG_INFINITY, 5, INTERVAL, RATE);
        let after = s.lease(before[4], 3.0, 5, INTERVAL, RATE);
        assert!(after[0] >= 3.0);
        for pair in after.windows(2) {
            assert!((pair[1] - pair[0] - INTERVAL).abs() < 1e-9, "{pair:?}");
        }
    }

    #[test]
    fn a_lower_rate_keeps_its_own_window() {
        // The rate was lowered while slots of the higher one are remembered.
        let mut s = Schedule::default();
        let mut slots = s.lease(0.0, f64::NEG_INFINITY, 100, INTERVAL, RATE);
        let slow = 1.0 / (10.0 * 0.99);
        slots.extend(s.lease(slots[99], f64::NEG_INFINITY, 30, slow, 10));
        assert_eq!(s.recent.len(), 10);
        assert!(busiest(&slots[100..], 1.0) <= 10);
    }
}
