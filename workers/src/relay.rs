//! The results relay: sends what the outbox holds to `skeelo.results`, with confirms and
//! `mandatory`, and deletes each row the broker took.
//!
//! A result the broker returns (no queue bound: `erp.results` deleted) or nacks (a full
//! queue with `reject-publish`) stays in the outbox and is sent again after a pause
//! that doubles up to half a minute, with a metric and a warning, never a hot loop; after
//! several refusals in a row the relay replaces its channel, since a channel that keeps
//! being refused may be the fault. Several processes relay at once without sending a
//! row twice: each leases the rows it sends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use skeelo_broker::{BrokerError, Publisher, RESULTS_EXCHANGE};
use skeelo_store::outbox::Pending;
use tokio_util::sync::CancellationToken;

use crate::App;

/// Rows taken at once.
const BATCH: i64 = 512;
/// How long a relay holds rows it is sending before another may take them.
const LEASE: Duration = Duration::from_secs(30);
/// How often the relay looks without being woken (rows of a process that died).
const POLL: Duration = Duration::from_secs(1);
/// How often the backlog gauges are read.
const GAUGES: Duration = Duration::from_secs(5);
/// The longest pause after refusals.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// Refusals in a row after which the channel is replaced.
const REOPEN_AFTER: u32 = 5;
/// How long the broker may take to confirm a batch: well inside the lease, so that no
/// other relay takes rows this one may still be sending.
const CONFIRMS: Duration = Duration::from_secs(20);
/// How long the last sending may take when the fleet stops.
const LAST_SEND: Duration = Duration::from_secs(5);

/// Runs until `stop` (then sends what it can for a few seconds) or until the broker
/// connection is `lost`.
pub(crate) async fn run(
    app: Arc<App>,
    connection: Arc<Connection>,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let mut relay = Relay {
        app,
        connection,
        publisher: None,
        refusals: 0,
        last_warning: None,
    };
    let mut gauges_at = Instant::now();
    loop {
        let pause = match relay.send_all().await {
            Ok(()) => POLL,
            Err(pause) => pause,
        };
        if gauges_at.elapsed() >= GAUGES {
            relay.gauges().await;
            gauges_at = Instant::now();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = lost.cancelled() => return,
            _ = relay.app.outbox_wake.notified(), if relay.refusals == 0 => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
    // Stopping: what the last events wrote goes out now if the broker takes it; what
    // it does not take waits in the outbox for the next process.
    let _ = tokio::time::timeout(LAST_SEND, relay.send_all()).await;
    relay.gauges().await;
}

/// Why the broker did not take results (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Returned: no queue is bound for the routing key.
    Unroutable,
    /// Nacked: the broker refused to take it.
    Nacked,
    /// The channel failed, or confirms did not come in time.
    Channel,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Unroutable => "unroutable",
            Refusal::Nacked => "nacked",
            Refusal::Channel => "channel",
        }
    }
}

struct Relay {
    app: Arc<App>,
    connection: Arc<Connection>,
    publisher: Option<Publisher>,
    /// Refusals in a row.
    refusals: u32,
    last_warning: Option<Instant>,
}

impl Relay {
    /// Sends until the outbox is empty; on a refusal, the pause before trying again.
    async fn send_all(&mut self) -> Result<(), Duration> {
        loop {
            let rows = match self.app.store.lease_results(BATCH, LEASE).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the results outbox");
                    return Err(POLL);
                }
            };
            if rows.is_empty() {
                return Ok(());
            }
            let more = rows.len() as i64 == BATCH;
            self.send(rows).await?;
            if !more {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, rows: Vec<Pending>) -> Result<(), Duration> {
        let publisher = match self.publisher().await {
            Ok(p) => p,
            Err(e) => {
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let _ = self.app.store.results_refused(&ids).await;
                return Err(self.refused(Refusal::Channel, rows.len(), &e.to_string()));
            }
        };
        let sends = rows.iter().map(|r| {
            publisher.publish_json(RESULTS_EXCHANGE, &r.routing_key, &r.event_id, &r.body)
        });
        let Ok(answers) =
            tokio::time::timeout(CONFIRMS, futures_util::future::join_all(sends)).await
        else {
            // The rows stay leased until their lease runs out, then any relay sends
            // them again (the ERP may get a result twice, never none).
            self.publisher = None;
            return Err(self.refused(
                Refusal::Channel,
                rows.len(),
                "no confirm from the broker in time",
            ));
        };
        let mut sent = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        let mut why: Option<(Refusal, String)> = None;
        for (row, answer) in rows.iter().zip(answers) {
            match answer {
                Ok(()) => sent.push(row.id),
                Err(e) => {
                    let reason = match &e {
                        BrokerError::Unroutable { .. } => Refusal::Unroutable,
                        BrokerError::Nacked => Refusal::Nacked,
                        BrokerError::Amqp(_)
                        | BrokerError::Node { .. }
                        | BrokerError::Url(_)
                        | BrokerError::Tls(_) => Refusal::Channel,
                    };
                    self.app
                        .metrics
                        .results_refused
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    if why.is_none() {
                        why = Some((reason, e.to_string()));
                    }
                    refused.push(row.id);
                }
            }
        }
        if let Err(e) = self.app.store.results_sent(&sent).await {
            // They were sent: their lease runs out and they are sent again (the ERP
            // may get a result twice, never none).
            tracing::warn!(error = %e, "could not delete sent results from the outbox");
        }
        self.app.metrics.results_published.inc_by(sent.len() as u64);
        if let Some((reason, error)) = why {
            let _ = self.app.store.results_refused(&refused).await;
            if reason == Refusal::Channel {
                self.publisher = None;
            }
            return Err(self.refused(reason, refused.len(), &error));
        }
        if self.refusals > 0 {
            tracing::info!(after = self.refusals, "the broker takes results again");
        }
        self.refusals = 0;
        Ok(())
    }

    async fn publisher(&mut self) -> Result<Publisher, BrokerError> {
        if let Some(p) = &self.publisher {
            return Ok(p.clone());
        }
        let p = Publisher::open(&self.connection).await?;
        self.publisher = Some(p.clone());
        Ok(p)
    }

    /// Counts a refusal in a row and says how long to pause before the next try.
    fn refused(&mut self, reason: Refusal, n: usize, error: &str) -> Duration {
        self.refusals = self.refusals.saturating_add(1);
        let pause = Duration::from_millis(100)
            .saturating_mul(1u32 << self.refusals.min(16))
            .min(MAX_PAUSE);
        if self.refusals % REOPEN_AFTER == 0 {
            // A channel that keeps being refused may itself be the fault.
            self.publisher = None;
        }
        let quiet = self
            .last_warning
            .is_some_and(|at| at.elapsed() < Duration::from_secs(30));
        if !quiet || self.refusals == 1 {
            self.last_warning = Some(Instant::now());
            tracing::warn!(
                reason = reason.as_str(),
                results = n,
                refusals_in_a_row = self.refusals,
                pause_ms = pause.as_millis() as u64,
                error,
                "the broker did not take results for the ERP; they wait in the outbox"
            );
        }
        pause
    }

    async fn gauges(&self) {
        match self.app.store.results_backlog().await {
            Ok(b) => {
                self.app.metrics.outbox_depth.set(b.depth);
                self.app.metrics.outbox_oldest.set(b.oldest.as_secs_f64());
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the outbox backlog"),
        }
    }
}
