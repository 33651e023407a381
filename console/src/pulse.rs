//! The partner rate in use, as the overview shows it: the fleet's rate ledger counts
//! every slot leased; sampling it every few seconds gives the rate the whole fleet
//! takes (every process leases from the same row), with no per-call writes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use skeelo_partner::pacer::LEDGER_ROW;
use skeelo_store::pulse::RateLedger;
use skeelo_store::Store;
use tokio_util::sync::CancellationToken;

/// How often the ledger is read.
const EVERY: Duration = Duration::from_secs(2);
/// How far back samples are kept (the longest window shown, and a little).
const KEPT: Duration = Duration::from_secs(70);

/// The ledger's recent samples.
#[derive(Debug, Default)]
pub(crate) struct Samples(Mutex<VecDeque<RateLedger>>);

impl Samples {
    fn push(&self, s: RateLedger) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A ledger that went backwards (the row was dropped and made again) starts over.
        if all.back().is_some_and(|last| last.leased > s.leased) {
            all.clear();
        }
        while all.front().is_some_and(|first| s.at - first.at > KEPT) {
            all.pop_front();
        }
        all.push_back(s);
    }

    /// Slots leased per second over about the last `window`, once two samples span at
    /// least half of it.
    pub(crate) fn rate_over(&self, window: Duration) -> Option<f64> {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let last = all.back()?;
        let first = all.iter().find(|s| last.at - s.at <= window)?;
        let span = (last.at - first.at).as_seconds_f64();
        (span >= window.as_secs_f64() / 2.0).then(|| (last.leased - first.leased) as f64 / span)
    }

    /// The latest sample.
    pub(crate) fn latest(&self) -> Option<RateLedger> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .back()
            .cloned()
    }
}

/// Reads the ledger every [`EVERY`] until `stop`.
pub(crate) async fn sample(store: Store, samples: Arc<Samples>, stop: CancellationToken) {
    let mut failing = false;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.rate_ledger(LEDGER_ROW).await {
            Ok(read) => {
                failing = false;
                if let Some(s) = read {
                    samples.push(s);
                }
            }
            // Said once per run of failures, not every 2 s.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read the partner-rate ledger: the overview shows no rate in use");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn at(secs: i64, leased: i64) -> RateLedger {
        RateLedger {
            leased,
            ahead: Duration::ZERO,
            paused_for: Duration::ZERO,
            at: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs),
        }
    }

    #[test]
    fn the_rate_is_the_slots_leased_between_samples_over_their_span() {
        let s = Samples::default();
        assert_eq!(s.rate_over(Duration::from_secs(10)), None);
        for i in 0..=30 {
            s.push(at(i * 2, i * 40));
        }
        assert_eq!(s.rate_over(Duration::from_secs(10)), Some(20.0));
        assert_eq!(s.rate_over(Duration::from_secs(60)), Some(20.0));
    }

    #[test]
    fn too_short_a_span_says_nothing_yet() {
        let s = Samples::default();
        s.push(at(0, 0));
        s.push(at(2, 40));
        assert_eq!(s.rate_over(Duration::from_secs(60)), None);
        assert_eq!(s.rate_over(Duration::from_secs(4)), Some(20.0));
    }

    #[test]
    fn old_samples_are_dropped_and_a_ledger_made_again_starts_over() {
        let s = Samples::default();
        for i in 0..100 {
            s.push(at(i, i));
        }
        assert!(s.0.lock().map(|a| a.len()).unwrap_or(0) <= 72);
        s.push(at(100, 3));
        assert_eq!(s.0.lock().map(|a| a.len()).unwrap_or(0), 1);
        assert_eq!(s.latest().map(|l| l.leased), Some(3));
    }
}
