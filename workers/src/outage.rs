//! Outage mode: when a downstream (Skeelo, the database) keeps failing, the consumers
//! stop taking new work and a prober asks the downstream until it answers; then they
//! drain the backlog. Failing events during an outage cost no retry attempt, so an
//! outage of any length dead-letters nothing.
//!
//! A downstream trips after `consecutive` failures in a row, or when more than half of
//! at least `min_calls` outcomes in the last `window` failed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// When a downstream counts as down.
#[derive(Debug, Clone, Copy)]
pub struct Trip {
    /// Failures in a row.
    pub consecutive: u32,
    /// The window for the failure ratio.
    pub window: Duration,
    /// Outcomes needed in the window before the ratio counts.
    pub min_calls: usize,
}

/// The state of one downstream; pure, with time passed in, so it is tested exactly.
#[derive(Debug)]
pub(crate) struct Health {
    trip: Trip,
    consecutive: u32,
    recent: VecDeque<(Instant, bool)>,
    down: bool,
}

impl Health {
    pub(crate) fn new(trip: Trip) -> Health {
        Health {
            trip,
            consecutive: 0,
            recent: VecDeque::new(),
            down: false,
        }
    }

    /// Records an outcome; returns `true` when this one tripped the downstream.
    pub(crate) fn record(&mut self, ok: bool, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.trip.window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, ok));
        if ok {
            self.consecutive = 0;
            return false;
        }
        self.consecutive += 1;
        if self.down {
            return false;
        }
        let failed = self.recent.iter().filter(|(_, ok)| !ok).count();
        let ratio_tripped =
            self.recent.len() >= self.trip.min_calls && failed * 2 > self.recent.len();
        if self.consecutive >= self.trip.consecutive || ratio_tripped {
            self.down = true;
            return true;
        }
        false
    }

    /// The prober got an answer: back to normal.
    pub(crate) fn recovered(&mut self) {
        self.down = false;
        self.consecutive = 0;
        self.recent.clear();
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down
    }
}

/// One downstream, shared by every task of the process.
pub(crate) struct Downstream {
    pub(crate) name: &'static str,
    health: Mutex<Health>,
    down_tx: watch::Sender<bool>,
}

impl Downstream {
    pub(crate) fn new(name: &'static str, trip: Trip) -> Downstream {
        let (down_tx, _) = watch::channel(false);
        Downstream {
            name,
            health: Mutex::new(Health::new(trip)),
            down_tx,
        }
    }

    pub(crate) fn success(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.record(true, Instant::now());
        }
    }

    /// Records a failure; logs and signals when it trips.
    pub(crate) fn failure(&self, error: &str) {
        let tripped = self
            .health
            .lock()
            .map(|mut h| h.record(false, Instant::now()))
            .unwrap_or(false);
        if tripped {
            tracing::error!(
                downstream = self.name,
                error,
                "outage mode on: consumers pause until it answers"
            );
            self.down_tx.send_replace(true);
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.health.lock().map(|h| h.is_down()).unwrap_or(false)
    }

    pub(crate) fn recovered(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.recovered();
        }
        tracing::warn!(
            downstream = self.name,
            "outage mode off: it answers again; draining the backlog"
        );
        self.down_tx.send_replace(false);
    }

    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.down_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trip() -> Trip {
        Trip {
            consecutive: 3,
            window: Duration::from_secs(10),
            min_calls: 10,
        }
    }

    #[test]
    fn trips_after_failures_in_a_row() {
        let mut h = Health::new(trip());
        let t = Instant::now();
        assert!(!h.record(false, t));
        assert!(!h.record(false, t));
        assert!(h.record(false, t), "third in a row");
        assert!(h.is_down());
        assert!(!h.record(false, t), "trips once");
        h.recovered();
        assert!(!h.is_down());
    }

    #[test]
    fn a_success_resets_the_run() {
        let mut h = Health::new(trip());
        let t = Instant::now();
        for _ in 0..3 {
            assert!(!h.record(false, t));
            assert!(!h.record(false, t));
            assert!(!h.record(true, t), "never three in a row");
        }
        // 6 of 9 failed, but fewer than 10 outcomes: not yet. The tenth makes 7 of 10.
        assert!(h.record(false, t), "the ratio trips it");
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let mut h = Health::new(trip());
        let t = Instant::now();
        for _ in 0..6 {
            h.record(false, t);
            h.record(true, t);
        }
        let later = t + Duration::from_secs(11);
        assert!(!h.record(true, later));
        assert!(!h.record(false, later), "the old failures no longer count");
    }
}
