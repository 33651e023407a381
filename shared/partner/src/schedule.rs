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
//! given, not more: at most [`CATCH_UP`] of slots, and a slow ledger's own delay, are
//! ever made up at once).
//!
//! Times are seconds since the Unix epoch on the ledger's clock, so that every
//! process of the fleet places a slot at the same moment.

/// The least time between the ledger's clock reading a lease and its first slot: the
/// answer has to reach the process before its first slot is due. A lessee asks for
/// more when its leases take longer (see [`Spacing::lead`]).
pub const LEAD: f64 = 0.005;

/// The longest gap the fleet makes up (besides a slow ledger's own delay, see
/// [`Spacing::lead`]). A longer one is idleness: the schedule starts
/// afresh from the next slot, so that work arriving after a quiet spell makes up
/// nothing. A quarter of a second covers the gaps measured at start-up and between
/// processes (21–151 ms, docs/performance.md). The end of a 429's pause also starts
/// it afresh: what the pause held is not made up at twice the rate.
pub const CATCH_UP: f64 = 0.25;

/// How slots are spaced for one lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spacing {
    /// The even schedule's interval for this lessee (its margin in force).
    pub interval: f64,
    /// The partner's rate, calls a second.
    pub rate: u32,
    /// The least time `rate + 1` slots may span: a second and the room of the
    /// margin's floor. From the floor, not the lessee's margin: a margin grown after a
    /// 429 spaces that process's own slots, and must not hold back everyone else's.
    pub window: f64,
    /// How long after the ledger's clock reads this lease its first slot may begin:
    /// how long the lessee's leases take to come back (at least [`LEAD`], at most
    /// [`CATCH_UP`]). A first slot that arrives already due is sent late, and a late
    /// call bunches with the calls a second after it: the first call after a gap is
    /// the one such a slot starts (docs/performance.md, "The first slot after a gap").
    pub lead: f64,
}

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
    /// Places `n` slots, no earlier than `now + s.lead` nor before `paused_until` (a
    /// 429's end). Returns them in order; `self` remembers them.
    ///
    /// Every slot keeps two rules the partner would check: `rate + 1` slots never
    /// span less than `window` (never more than the rate in any second, the margin's
    /// room kept), and no two slots come closer than half an interval (a gap is made
    /// up at twice the rate at most).
    pub fn lease(&mut self, now: f64, paused_until: f64, n: usize, s: Spacing) -> Vec<f64> {
        if n == 0 {
            return Vec::new();
        }
        let rate = s.rate.max(1) as usize;
        // Not a number (a caller's arithmetic gone wrong) reads as the least lead.
        let lead = if s.lead.is_nan() {
            LEAD
        } else {
            s.lead.clamp(LEAD, CATCH_UP)
        };
        let earliest = (now + lead).max(paused_until);
        // Out of a 429's pause since the last slot: nothing is made up after it.
        if self.recent.last().is_some_and(|last| paused_until > *last) {
            self.next = f64::NEG_INFINITY;
        }
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let mut t = earliest.max(self.next);
            if let Some(last) = self.recent.last() {
                t = t.max(last + s.interval / 2.0);
            }
            if self.recent.len() >= rate {
                t = t.max(self.recent[self.recent.len() - rate] + s.window);
            }
            // Behind the even schedule by more than a gap worth making up: start it
            // afresh from here. Otherwise it moves on by one interval from where it
            // was, so the slots that follow come closer until it is caught up. The
            // time a slow ledger's answer takes is not idleness: it is made up too.
            let afresh = t - (lead - LEAD) - self.next > CATCH_UP;
            self.next = if afresh { t } else { self.next } + s.interval;
            self.recent.push(t);
            slots.push(t);
        }
        let excess = self.recent.len().saturating_sub(rate);
        self.recent.drain(..excess);
        slots
    }

    /// When the next slot begins, as a ledger that keeps only that time reads it
    /// (GCRA, the fleet's version before this schedule): the earliest time from which
    /// slots an interval apart can follow the recent ones without breaking the
    /// window, so that the previous version, leasing from it during a rolling update,
    /// never puts one call too many into a second this version has filled.
    pub fn tat(&self, s: Spacing) -> f64 {
        match self.recent.last() {
            Some(last) => (last + s.interval).max(self.window_free(s)),
            None => self.next,
        }
    }

    /// The earliest time from which slots one floor spacing apart can follow the
    /// recent ones with no `rate + 1` of them spanning less than the window.
    fn window_free(&self, s: Spacing) -> f64 {
        let rate = s.rate.max(1) as usize;
        let spacing = s.window / rate as f64;
        let tail = &self.recent[self.recent.len().saturating_sub(rate)..];
        // The k-th slot to come has, `rate` slots before it, recent[len - rate + k].
        let before = rate - tail.len();
        tail.iter()
            .enumerate()
            .map(|(j, t)| t + s.window - (j + before) as f64 * spacing)
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// The schedule as a ledger's row keeps it: `next` and `recent` as this version
    /// wrote them, `tat` as any version did. What is not a time, or lies beyond any
    /// slot a lease could have placed by now (a hand-edited row), is dropped, and the
    /// slots a version that keeps only `tat` leased are counted (see `adopt`).
    pub fn from_row(
        next: f64,
        mut recent: Vec<f64>,
        tat: f64,
        now: f64,
        paused_until: f64,
        s: Spacing,
    ) -> Schedule {
        let limit = now.max(paused_until) + 2.0 * s.window + CATCH_UP;
        let plausible = |t: f64| t.is_finite() && t <= limit;
        recent.retain(|t| plausible(*t));
        recent.sort_by(f64::total_cmp);
        let mut schedule = Schedule {
            next: if plausible(next) {
                next
            } else {
                f64::NEG_INFINITY
            },
            recent,
        };
        if plausible(tat) {
            schedule.adopt(tat, s);
        }
        schedule
    }

    /// Takes account of slots leased by a version of the fleet that keeps only `tat`
    /// (during a rolling update, both versions lease from the same row): when `tat`
    /// is later than this version leaves it, slots it does not know of run up to
    /// `tat`. They are counted one floor spacing apart and ending a spacing before
    /// `tat`, one more than can fit (a row only that version leased from: a whole
    /// second's worth), and the even schedule goes on after them.
    fn adopt(&mut self, tat: f64, s: Spacing) {
        let rate = s.rate.max(1) as usize;
        let spacing = s.window / rate as f64;
        let unknown = match self.recent.last() {
            None => rate,
            Some(last) => {
                // This version leaves at most the last slot plus a grown margin's
                // interval (a third over the floor's), or where the window frees; the
                // other version's lease adds at least one interval more.
                let free = self.window_free(s);
                if tat <= (last + 1.5 * spacing).max(free + 0.5 * spacing) {
                    return;
                }
                let from = (last + spacing).max(free);
                (((tat - from) / spacing).ceil() as usize + 1).clamp(1, rate)
            }
        };
        self.recent
            .extend((1..=unknown).rev().map(|k| tat - k as f64 * spacing));
        self.recent.sort_by(f64::total_cmp);
        let excess = self.recent.len().saturating_sub(rate);
        self.recent.drain(..excess);
        self.next = self.next.max(tat);
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
    const SPACING: Spacing = Spacing {
        interval: INTERVAL,
        rate: RATE,
        window: INTERVAL * RATE as f64,
        lead: LEAD,
    };

    /// Leases at each `(offset from start, slots)`.
    fn drive(s: &mut Schedule, start: f64, leases: &[(f64, usize)]) -> Vec<f64> {
        let mut all = Vec::new();
        for (at, n) in leases {
            all.extend(s.lease(start + at, f64::NEG_INFINITY, *n, SPACING));
        }
        all
    }

    #[test]
    fn a_steady_fleet_gets_the_even_schedule() {
        let mut s = Schedule::default();
        let slots = s.lease(100.0, f64::NEG_INFINITY, 200, SPACING);
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
        slots.extend(s.lease(resumed, f64::NEG_INFINITY, 300, SPACING));
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
    fn a_slow_ledgers_lead_delays_the_first_slot_and_is_made_up_like_a_gap() {
        let slow = Spacing {
            lead: 0.03,
            ..SPACING
        };
        let mut s = Schedule::default();
        let mut slots = s.lease(0.0, f64::NEG_INFINITY, 2, slow);
        assert!((slots[0] - 0.03).abs() < 1e-9, "{slots:?}");
        // Behind the even schedule by 10 ms more than the longest gap made up, 25 ms
        // of it the lead's own (beyond the least): the gap is made up all the same.
        let resumed = slots[1] + INTERVAL + CATCH_UP - 0.02;
        let after = s.lease(resumed, f64::NEG_INFINITY, 40, slow);
        assert!((after[0] - (resumed + 0.03)).abs() < 1e-9, "{after:?}");
        assert!(
            (after[1] - after[0] - INTERVAL / 2.0).abs() < 1e-9,
            "made up at twice the rate: {after:?}"
        );
        slots.extend(after);
        assert!(busiest(&slots, 1.0) <= RATE as usize);
        assert!(busiest(&slots, SPACING.window) <= RATE as usize);
    }

    #[test]
    fn a_lead_that_is_not_a_time_reads_as_the_least_or_the_most() {
        for (lead, first) in [
            (f64::NAN, LEAD),
            (-1.0, LEAD),
            (0.0, LEAD),
            (f64::INFINITY, CATCH_UP),
            (1e12, CATCH_UP),
        ] {
            let mut s = Schedule::default();
            let slots = s.lease(10.0, f64::NEG_INFINITY, 3, Spacing { lead, ..SPACING });
            assert!(
                (slots[0] - (10.0 + first)).abs() < 1e-9,
                "{lead}: {slots:?}"
            );
            assert!(
                (slots[1] - slots[0] - INTERVAL).abs() < 1e-9,
                "{lead}: {slots:?}"
            );
        }
    }

    #[test]
    fn a_long_gap_is_idleness_and_starts_the_schedule_afresh() {
        let mut s = Schedule::default();
        let mut slots = drive(&mut s, 0.0, &[(0.0, 10)]);
        let resumed = slots[9] + 2.0;
        let after = s.lease(resumed, f64::NEG_INFINITY, 20, SPACING);
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
            let got = s.lease(now, f64::NEG_INFINITY, n, SPACING);
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
        let before = s.lease(0.0, f64::NEG_INFINITY, 5, SPACING);
        let after = s.lease(before[4], 3.0, 5, SPACING);
        assert!(after[0] >= 3.0);
        for pair in after.windows(2) {
            assert!((pair[1] - pair[0] - INTERVAL).abs() < 1e-9, "{pair:?}");
        }
    }

    #[test]
    fn a_lower_rate_keeps_its_own_window() {
        // The rate was lowered while slots of the higher one are remembered.
        let mut s = Schedule::default();
        let mut slots = s.lease(0.0, f64::NEG_INFINITY, 100, SPACING);
        let slow = 1.0 / (10.0 * 0.99);
        let slow = Spacing {
            interval: slow,
            rate: 10,
            window: slow * 10.0,
            lead: LEAD,
        };
        slots.extend(s.lease(slots[99], f64::NEG_INFINITY, 30, slow));
        assert_eq!(s.recent.len(), 10);
        assert!(busiest(&slots[100..], 1.0) <= 10);
    }

    #[test]
    fn a_short_pause_with_slots_leased_ahead_is_not_made_up_after() {
        // Slots were leased 80 ms ahead when a 429 asked for the shortest pause.
        let mut s = Schedule::default();
        let before = s.lease(0.0, f64::NEG_INFINITY, 5, SPACING);
        let paused_until = before[4] - 0.08 + 0.25;
        let after = s.lease(before[4] - 0.08, paused_until, 5, SPACING);
        assert!((after[0] - paused_until).abs() < 1e-9);
        for pair in after.windows(2) {
            assert!((pair[1] - pair[0] - INTERVAL).abs() < 1e-9, "{pair:?}");
        }
    }

    #[test]
    fn a_grown_margin_spaces_its_own_slots_not_everyone_elses() {
        // Three processes always ready, one of them with a margin grown to 25 %.
        let grown = Spacing {
            interval: 1.0 / (50.0 * 0.75),
            ..SPACING
        };
        let mut s = Schedule::default();
        let mut slots = Vec::new();
        let mut now = 0.0;
        for i in 0..600 {
            let spacing = if i % 3 == 0 { grown } else { SPACING };
            let got = s.lease(now, f64::NEG_INFINITY, 1, spacing);
            now = got[0] - 0.05;
            slots.extend(got);
        }
        assert!(busiest(&slots, 1.0) <= RATE as usize);
        // Each lease moves the even schedule by its own interval: the fleet takes
        // their mean, not the grown one's window for everyone.
        let mean = (grown.interval + 2.0 * INTERVAL) / 3.0;
        let took = (slots[599] - slots[0]) / 599.0;
        assert!(took < mean * 1.01, "{took} s a slot against {mean}");
    }

    #[test]
    fn slots_leased_by_a_version_that_keeps_only_tat_are_counted() {
        let mut s = Schedule::default();
        let ours = s.lease(0.0, f64::NEG_INFINITY, 40, SPACING);
        // The other version leases 30 slots from `tat` alone, right after ours.
        let from = s.tat(SPACING);
        let theirs: Vec<f64> = (0..30).map(|k| from + k as f64 * INTERVAL).collect();
        let tat = from + 30.0 * INTERVAL;
        s.adopt(tat, SPACING);
        // A gap after theirs, then this version makes up what it can.
        let mut later = s.lease(tat + 0.1, f64::NEG_INFINITY, 60, SPACING);
        assert!(later[0] >= tat);
        let mut all = [ours, theirs].concat();
        all.append(&mut later);
        all.sort_by(f64::total_cmp);
        assert!(busiest(&all, 1.0) <= RATE as usize);
        // Our own `tat` is not mistaken for theirs.
        let mut again = s.clone();
        again.adopt(s.tat(SPACING), SPACING);
        assert_eq!(again, s);
        // A row that only the other version ever leased from.
        let mut fresh = Schedule::default();
        fresh.adopt(5.0, SPACING);
        assert_eq!(fresh.recent.len(), RATE as usize);
        let first = fresh.lease(4.9, f64::NEG_INFINITY, 1, SPACING);
        assert!(first[0] >= 5.0);
    }

    #[test]
    fn a_damaged_row_is_read_as_a_fresh_one() {
        // Not a time, or later than any lease could have placed a slot by now.
        let mut s = Schedule::from_row(
            1e12,
            vec![f64::NAN, 3.0, f64::INFINITY, 1.0, 1e12],
            f64::INFINITY,
            10.0,
            f64::NEG_INFINITY,
            SPACING,
        );
        assert_eq!(s.next, f64::NEG_INFINITY);
        assert_eq!(s.recent, vec![1.0, 3.0]);
        let slots = s.lease(10.0, f64::NEG_INFINITY, 2, SPACING);
        assert!((slots[0] - (10.0 + LEAD)).abs() < 1e-9, "{slots:?}");
        assert!(s.lease(10.0, f64::NEG_INFINITY, 0, SPACING).is_empty());
        assert_eq!(s.recent.len(), 4, "asking for none forgets nothing");
        // A long pause (a Retry-After of an hour) is a time, not damage.
        let paused = Schedule::from_row(3600.0, vec![3600.0], 3600.02, 10.0, 3600.0, SPACING);
        assert_eq!(paused.recent, vec![3600.0]);
    }

    #[test]
    fn the_previous_version_leasing_after_a_gap_made_up_stays_within_the_rate() {
        // This version makes up a 150 ms gap, then the previous version (which reads
        // only `tat`) leases a second of slots from where this one left it.
        let mut s = Schedule::default();
        let mut ours = s.lease(0.0, f64::NEG_INFINITY, 2, SPACING);
        let resumed = ours[1] + 0.15;
        ours.extend(s.lease(resumed, f64::NEG_INFINITY, 20, SPACING));
        let tat = s.tat(SPACING);
        let theirs: Vec<f64> = (0..60).map(|k| tat + k as f64 * INTERVAL).collect();
        let mut all = [ours.clone(), theirs].concat();
        all.sort_by(f64::total_cmp);
        assert!(busiest(&all, 1.0) <= RATE as usize);
        // Where only this version leases, `tat` says where the even schedule goes on.
        let mut alone = s.clone();
        let next = alone.lease(tat - 0.05, f64::NEG_INFINITY, 1, SPACING);
        assert!(next[0] <= tat + 1e-9, "{} after {tat}", next[0]);
    }
}
