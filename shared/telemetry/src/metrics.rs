//! The Prometheus metrics of CONTRACT §5, plus what SREs need to see a backlog move.
//!
//! One [`Metrics`] per process, handed to whoever records; no global registry, so tests
//! can run several fleets in one process and read each one's figures.

use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use skeelo_domain::event::EventType;
use skeelo_domain::outcome::Outcome;

/// Errors building the registry (only on a programming error such as a duplicate name).
pub type Error = prometheus::Error;

/// Every metric the fleet exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `skeelo_events_total{type,outcome}`: events handled, by how they ended.
    pub events: IntCounterVec,
    /// `skeelo_event_duration_seconds{type}`: from delivery to ack.
    pub event_duration: HistogramVec,
    /// `skeelo_api_requests_total{operation,status}`: calls to Skeelo by HTTP status
    /// (or `timeout` / `error` when none came back).
    pub api_requests: IntCounterVec,
    /// `skeelo_api_request_duration_seconds{operation}`.
    pub api_duration: HistogramVec,
    /// `skeelo_retries_total{type}`: transient failures that sent an event round again.
    pub retries: IntCounterVec,
    /// `skeelo_dead_letters_total{type,reason}`.
    pub dead_letters: IntCounterVec,
    /// `skeelo_events_in_flight{type}`: deliveries being worked on now.
    pub in_flight: IntGaugeVec,
    /// `skeelo_batch_events{type}`: deliveries handled together in one transaction
    /// (large under a backlog, one when events come one by one).
    pub batch_events: HistogramVec,
    /// `skeelo_batches_failed_total{type}`: rounds whose transaction failed and
    /// committed nothing (a database error, usually); their events went to the
    /// failure policy.
    pub batches_failed: IntCounterVec,
    /// `skeelo_last_processed_timestamp_seconds{type}`: alert on age, not only depth.
    pub last_processed: GaugeVec,
    /// `skeelo_token_refreshes_total`: OAuth tokens fetched.
    pub token_refreshes: IntCounter,
    /// `skeelo_rate_limit_wait_seconds_total`: time spent waiting for the partner rate.
    pub rate_limit_wait: Counter,
    /// `skeelo_partner_rate_margin_ratio`: the share of the partner rate this process
    /// leaves unused now (its floor, or more for a while after a 429).
    pub rate_margin: Gauge,
    /// `skeelo_partner_turns_stale_total`: turns given up because the call could not
    /// leave soon enough after its slot (a busy process); each costs one slot.
    pub turns_stale: IntCounter,
    /// `skeelo_log_lines_dropped_total`: log lines dropped because stderr's reader
    /// fell far behind (see [`crate::logs::init`]).
    pub log_lines_dropped: IntCounter,
    /// The writer's count as far as `log_lines_dropped` has been moved to it.
    log_lines_synced: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `skeelo_results_published_total`: result messages confirmed by the broker.
    pub results_published: IntCounter,
    /// `skeelo_results_outbox_depth`: results written but not yet taken by the broker.
    pub outbox_depth: IntGauge,
    /// `skeelo_results_outbox_oldest_age_seconds`: how long the oldest of them has
    /// waited (alert on this: a result the ERP does not get is an event it thinks lost).
    pub outbox_oldest: Gauge,
    /// `skeelo_results_refused_total{reason}`: results the broker did not take
    /// (`unroutable`: no queue bound; `nacked`: refused, e.g. a full queue;
    /// `channel`: the channel failed); each waits in the outbox for the next try.
    pub results_refused: IntCounterVec,
    /// `skeelo_api_throttled_total`: 429 answers from Skeelo.
    pub throttled: IntCounter,
    /// `skeelo_queue_unavailable{queue,reason}`: 1 while this process cannot consume
    /// the queue (the broker refused its declaration or its consumer); the other types
    /// go on.
    pub queue_unavailable: IntGaugeVec,
    /// `skeelo_consumer_restarts_total{queue,reason}`: consumers replaced by a fresh
    /// channel and consumer (the broker cancelled one, or refused the queue).
    pub consumer_restarts: IntCounterVec,
    /// `skeelo_outage_mode{downstream}`: 1 while consumers are paused because Skeelo
    /// or the database keeps failing.
    pub outage_mode: IntGaugeVec,
    /// `skeelo_dead_letters_parked{reason}`: dead letters waiting for an operator now.
    pub dead_letters_parked: IntGaugeVec,
    /// `skeelo_queue_messages{queue}`: messages waiting in each queue (work, delay,
    /// dead, results), as RabbitMQ counts them.
    pub queue_messages: IntGaugeVec,
    /// `skeelo_queue_consumers{queue}`: consumers attached to each queue.
    pub queue_consumers: IntGaugeVec,
    /// `skeelo_queue_messages_unacked{queue}`: messages delivered and not yet
    /// acknowledged, as RabbitMQ counts them (from its management API, which lags by
    /// its statistics interval). Compared with `skeelo_events_in_flight`, it shows
    /// messages held by a consumer that is not handling them.
    pub queue_unacked: IntGaugeVec,
    /// `skeelo_repair_runs_total{trigger,state}`: drift repair runs this process made,
    /// by how they ended (`done`, `awaiting_approval`, `failed`).
    pub repair_runs: IntCounterVec,
    /// `skeelo_repair_last_run_differences{kind}`: differences with Skeelo the latest
    /// finished run found, by kind (whoever ran it, fleet or operator).
    pub repair_differences: IntGaugeVec,
    /// `skeelo_repair_last_run_contracts{result}`: what the latest finished run did
    /// (`repaired`, `left_for_people`, `failed`).
    pub repair_contracts: IntGaugeVec,
    /// `skeelo_repair_last_run_timestamp_seconds`: when the latest run ended (alert
    /// when reconciliation stopped happening).
    pub repair_last_run: Gauge,
    /// `skeelo_repair_awaiting_approval`: runs the blast-radius guard stopped that no
    /// operator approved yet.
    pub repair_awaiting: IntGauge,
    /// `skeelo_dead_letters_self_requeued_total{cause}`: dead letters the fleet
    /// requeued by itself once their cause cleared (`catalogue`, `partner`).
    pub self_requeued: IntCounterVec,
}

impl Metrics {
    /// Registers every metric, with the label values known up front already present at
    /// zero, so dashboards and `rate()` see a series before the first event.
    pub fn new() -> Result<Metrics, Error> {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new(
                "skeelo_events_total",
                "Events handled, by type and outcome.",
            ),
            &["type", "outcome"],
        )?;
        let event_duration = HistogramVec::new(
            HistogramOpts::new(
                "skeelo_event_duration_seconds",
                "Time from delivery to acknowledgement of an event.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["type"],
        )?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "skeelo_api_requests_total",
                "Requests to the Skeelo partner API, by operation and HTTP status.",
            ),
            &["operation", "status"],
        )?;
        let api_duration = HistogramVec::new(
            HistogramOpts::new(
                "skeelo_api_request_duration_seconds",
                "Latency of requests to the Skeelo partner API.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["operation"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "skeelo_retries_total",
                "Transient failures after which an event is tried again.",
            ),
            &["type"],
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "skeelo_dead_letters_total",
                "Events parked as dead letters, by type and reason.",
            ),
            &["type", "reason"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("skeelo_events_in_flight", "Deliveries being worked on now."),
            &["type"],
        )?;
        let batch_events = HistogramVec::new(
            HistogramOpts::new(
                "skeelo_batch_events",
                "Deliveries handled together in one database transaction.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["type"],
        )?;
        let batches_failed = IntCounterVec::new(
            Opts::new(
                "skeelo_batches_failed_total",
                "Rounds of a batch whose transaction failed and committed nothing; their events went to the failure policy.",
            ),
            &["type"],
        )?;
        let last_processed = GaugeVec::new(
            Opts::new(
                "skeelo_last_processed_timestamp_seconds",
                "Unix time at which the last event of this type was acknowledged.",
            ),
            &["type"],
        )?;
        let token_refreshes = IntCounter::new(
            "skeelo_token_refreshes_total",
            "OAuth access tokens fetched from Skeelo.",
        )?;
        let rate_limit_wait = Counter::new(
            "skeelo_rate_limit_wait_seconds_total",
            "Seconds spent waiting for the partner rate before calling Skeelo.",
        )?;
        let rate_margin = Gauge::new(
            "skeelo_partner_rate_margin_ratio",
            "Share of the partner rate this process leaves unused: SKEELO_RATE_MARGIN_PERCENT, or more for a while after a 429.",
        )?;
        let turns_stale = IntCounter::new(
            "skeelo_partner_turns_stale_total",
            "Partner-rate turns given up because the call could not leave soon enough after its slot.",
        )?;
        let log_lines_dropped = IntCounter::new(
            "skeelo_log_lines_dropped_total",
            "Log lines dropped because the reader of stderr fell too far behind.",
        )?;
        let results_published = IntCounter::new(
            "skeelo_results_published_total",
            "Result messages to the ERP confirmed by the broker.",
        )?;
        let outbox_depth = IntGauge::new(
            "skeelo_results_outbox_depth",
            "Results to the ERP written but not yet taken by the broker.",
        )?;
        let outbox_oldest = Gauge::new(
            "skeelo_results_outbox_oldest_age_seconds",
            "Age of the oldest result not yet taken by the broker (0 when none waits).",
        )?;
        let results_refused = IntCounterVec::new(
            Opts::new(
                "skeelo_results_refused_total",
                "Results the broker did not take (they wait in the outbox), by reason.",
            ),
            &["reason"],
        )?;
        let throttled = IntCounter::new(
            "skeelo_api_throttled_total",
            "429 answers from Skeelo (each one pauses calls for its Retry-After).",
        )?;
        let outage_mode = IntGaugeVec::new(
            Opts::new(
                "skeelo_outage_mode",
                "1 while consumers are paused because a downstream keeps failing.",
            ),
            &["downstream"],
        )?;
        let dead_letters_parked = IntGaugeVec::new(
            Opts::new(
                "skeelo_dead_letters_parked",
                "Dead letters waiting for an operator now, by reason.",
            ),
            &["reason"],
        )?;
        let queue_unavailable = IntGaugeVec::new(
            Opts::new(
                "skeelo_queue_unavailable",
                "1 while this process cannot consume the queue, by reason.",
            ),
            &["queue", "reason"],
        )?;
        let consumer_restarts = IntCounterVec::new(
            Opts::new(
                "skeelo_consumer_restarts_total",
                "Consumers replaced by a fresh channel and consumer, by queue and reason.",
            ),
            &["queue", "reason"],
        )?;
        let queue_messages = IntGaugeVec::new(
            Opts::new(
                "skeelo_queue_messages",
                "Messages waiting in the queue (ready, as RabbitMQ counts them).",
            ),
            &["queue"],
        )?;
        let queue_consumers = IntGaugeVec::new(
            Opts::new("skeelo_queue_consumers", "Consumers attached to the queue."),
            &["queue"],
        )?;
        registry.register(Box::new(queue_messages.clone()))?;
        registry.register(Box::new(queue_unavailable.clone()))?;
        registry.register(Box::new(consumer_restarts.clone()))?;
        let queue_unacked = IntGaugeVec::new(
            Opts::new(
                "skeelo_queue_messages_unacked",
                "Messages delivered and not yet acknowledged, as RabbitMQ counts them (management API).",
            ),
            &["queue"],
        )?;
        registry.register(Box::new(queue_consumers.clone()))?;
        registry.register(Box::new(queue_unacked.clone()))?;
        let repair_runs = IntCounterVec::new(
            Opts::new(
                "skeelo_repair_runs_total",
                "Drift repair runs this process made, by trigger and how they ended.",
            ),
            &["trigger", "state"],
        )?;
        let repair_differences = IntGaugeVec::new(
            Opts::new(
                "skeelo_repair_last_run_differences",
                "Differences with Skeelo found by the latest finished drift repair run, by kind.",
            ),
            &["kind"],
        )?;
        let repair_contracts = IntGaugeVec::new(
            Opts::new(
                "skeelo_repair_last_run_contracts",
                "Contracts the latest finished drift repair run repaired, left for people, or failed to repair.",
            ),
            &["result"],
        )?;
        let repair_last_run = Gauge::new(
            "skeelo_repair_last_run_timestamp_seconds",
            "When the latest drift repair run ended (Unix time; 0 before the first).",
        )?;
        let repair_awaiting = IntGauge::new(
            "skeelo_repair_awaiting_approval",
            "Drift repair runs stopped by the blast-radius guard and not approved yet.",
        )?;
        let self_requeued = IntCounterVec::new(
            Opts::new(
                "skeelo_dead_letters_self_requeued_total",
                "Dead letters the fleet requeued by itself once their cause cleared, by cause.",
            ),
            &["cause"],
        )?;
        registry.register(Box::new(self_requeued.clone()))?;
        for cause in ["catalogue", "partner"] {
            self_requeued.with_label_values(&[cause]);
        }
        registry.register(Box::new(repair_runs.clone()))?;
        registry.register(Box::new(repair_differences.clone()))?;
        registry.register(Box::new(repair_contracts.clone()))?;
        registry.register(Box::new(repair_last_run.clone()))?;
        registry.register(Box::new(repair_awaiting.clone()))?;
        for trigger in ["operator", "periodic"] {
            for state in ["done", "awaiting_approval", "failed"] {
                repair_runs.with_label_values(&[trigger, state]);
            }
        }
        for kind in skeelo_domain::drift::Kind::ALL {
            repair_differences.with_label_values(&[kind.as_str()]);
        }
        for result in ["repaired", "left_for_people", "failed"] {
            repair_contracts.with_label_values(&[result]);
        }
        registry.register(Box::new(outage_mode.clone()))?;
        registry.register(Box::new(dead_letters_parked.clone()))?;
        for d in ["skeelo", "database"] {
            outage_mode.with_label_values(&[d]);
        }
        for r in ["invalid", "refused", "exhausted", "broker"] {
            dead_letters_parked.with_label_values(&[r]);
        }
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(event_duration.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(api_duration.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(batch_events.clone()))?;
        registry.register(Box::new(batches_failed.clone()))?;
        registry.register(Box::new(last_processed.clone()))?;
        registry.register(Box::new(token_refreshes.clone()))?;
        registry.register(Box::new(rate_limit_wait.clone()))?;
        registry.register(Box::new(rate_margin.clone()))?;
        registry.register(Box::new(turns_stale.clone()))?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        registry.register(Box::new(results_published.clone()))?;
        registry.register(Box::new(throttled.clone()))?;
        registry.register(Box::new(outbox_depth.clone()))?;
        registry.register(Box::new(outbox_oldest.clone()))?;
        registry.register(Box::new(results_refused.clone()))?;
        for r in ["unroutable", "nacked", "channel"] {
            results_refused.with_label_values(&[r]);
        }
        for t in EventType::ALL {
            for o in Outcome::ALL {
                events.with_label_values(&[t.as_str(), o.as_str()]);
            }
            retries.with_label_values(&[t.as_str()]);
            in_flight.with_label_values(&[t.as_str()]);
            batch_events.with_label_values(&[t.as_str()]);
            batches_failed.with_label_values(&[t.as_str()]);
        }
        Ok(Metrics {
            registry,
            events,
            event_duration,
            api_requests,
            api_duration,
            retries,
            dead_letters,
            in_flight,
            batch_events,
            batches_failed,
            last_processed,
            token_refreshes,
            rate_limit_wait,
            rate_margin,
            turns_stale,
            log_lines_dropped,
            log_lines_synced: std::sync::Arc::default(),
            results_published,
            outbox_depth,
            outbox_oldest,
            results_refused,
            throttled,
            queue_unavailable,
            consumer_restarts,
            outage_mode,
            dead_letters_parked,
            queue_messages,
            queue_consumers,
            queue_unacked,
            repair_runs,
            repair_differences,
            repair_contracts,
            repair_last_run,
            repair_awaiting,
            self_requeued,
        })
    }

    /// The text exposition format served at `/metrics`.
    pub fn render(&self) -> String {
        // The count lives with the log writer; the counter moves up to meet it, by
        // what no concurrent render has added already.
        let dropped = u64::try_from(crate::logs::dropped_lines()).unwrap_or(u64::MAX);
        let shown = self
            .log_lines_synced
            .fetch_max(dropped, std::sync::atomic::Ordering::AcqRel);
        if dropped > shown {
            self.log_lines_dropped.inc_by(dropped - shown);
        }
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for I/O; a malformed family would be a bug
        // here, and an empty page says so to whoever scrapes it.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// One event finished.
    pub fn event_done(&self, t: &str, outcome: Outcome, seconds: f64) {
        self.events.with_label_values(&[t, outcome.as_str()]).inc();
        self.event_duration.with_label_values(&[t]).observe(seconds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_processed.with_label_values(&[t]).set(now);
    }

    /// A single histogram handle, for hot paths that observe often.
    pub fn api_timer(&self, operation: &str) -> Histogram {
        self.api_duration.with_label_values(&[operation])
    }
}
