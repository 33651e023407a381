//! Which queues this process cannot consume now, and why: named by `/readyz` and by
//! `skeelo_queue_unavailable{queue,reason}`, so an SRE sees the one type that is stuck
//! while the others work.

use std::collections::BTreeMap;
use std::sync::Mutex;

use skeelo_telemetry::metrics::Metrics;

/// The reason label of a consumer the broker cancelled.
pub(crate) const CANCELLED: &str = "cancelled";
/// The reason label of a consumer replaced because the broker counted messages
/// delivered to it that it never received.
pub(crate) const HELD: &str = "held";

#[derive(Default)]
pub(crate) struct QueueStates {
    down: Mutex<BTreeMap<String, (&'static str, String)>>,
    /// Queues declared and consumed in this broker session.
    up: Mutex<std::collections::BTreeSet<String>>,
    /// Per queue, the unacknowledged messages that no consumer's channel counts, at the
    /// broker's last reading; `None` when unknown (no management API, or it did not
    /// answer).
    orphaned: Mutex<Option<(std::time::Instant, std::collections::HashMap<String, u64>)>>,
}

impl QueueStates {
    /// The broker refused this queue for `reason`.
    pub(crate) fn down(&self, metrics: &Metrics, queue: &str, reason: &'static str, error: &str) {
        if let Ok(mut down) = self.down.lock() {
            if let Some((before, _)) = down.insert(queue.to_string(), (reason, error.to_string())) {
                metrics
                    .queue_unavailable
                    .with_label_values(&[queue, before])
                    .set(0);
            }
        }
        metrics
            .queue_unavailable
            .with_label_values(&[queue, reason])
            .set(1);
    }

    /// The queue is declared and consumed (again). Its series exist at 0 for every
    /// reason, so dashboards and alerts see them before anything goes wrong.
    pub(crate) fn up(&self, metrics: &Metrics, queue: &str) {
        let before = self.down.lock().ok().and_then(|mut d| d.remove(queue));
        if let Ok(mut up) = self.up.lock() {
            up.insert(queue.to_string());
        }
        if before.is_some() {
            tracing::info!(queue, "the queue is consumed again");
        }
        for reason in skeelo_broker::QUEUE_REFUSALS {
            metrics
                .queue_unavailable
                .with_label_values(&[queue, reason])
                .set(0);
        }
        for reason in skeelo_broker::QUEUE_REFUSALS
            .into_iter()
            .chain([CANCELLED, HELD])
        {
            metrics
                .consumer_restarts
                .with_label_values(&[queue, reason]);
        }
    }

    /// The broker's latest orphaned counts, or `None` when they are not known.
    pub(crate) fn set_orphaned(&self, counts: Option<std::collections::HashMap<String, u64>>) {
        if let Ok(mut orphaned) = self.orphaned.lock() {
            *orphaned = counts.map(|c| (std::time::Instant::now(), c));
        }
    }

    /// One queue's unacknowledged messages that no consumer's channel counts, as the
    /// broker last counted them, unless that reading is older than `fresh` (then they
    /// are unknown).
    pub(crate) fn orphaned(&self, queue: &str, fresh: std::time::Duration) -> Option<u64> {
        let orphaned = self.orphaned.lock().ok()?;
        let (read_at, counts) = orphaned.as_ref()?;
        (read_at.elapsed() <= fresh).then(|| counts.get(queue).copied().unwrap_or(0))
    }

    /// A new broker session: every queue is declared again before it counts as up.
    pub(crate) fn session_ended(&self) {
        self.set_orphaned(None);
        if let Ok(mut up) = self.up.lock() {
            up.clear();
        }
    }

    /// Of `queues`, those not consumed yet in this session (and not refused either).
    pub(crate) fn starting<'q>(&self, queues: &'q [String]) -> Vec<&'q str> {
        let up = self.up.lock().map(|u| u.clone()).unwrap_or_default();
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        queues
            .iter()
            .filter(|q| !up.contains(*q) && !down.contains_key(*q))
            .map(String::as_str)
            .collect()
    }

    /// The queues down now: (queue, reason, error).
    pub(crate) fn unavailable(&self) -> Vec<(String, &'static str, String)> {
        self.down
            .lock()
            .map(|d| {
                d.iter()
                    .map(|(q, (r, e))| (q.clone(), *r, e.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
