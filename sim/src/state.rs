//! The simulator's memory and the gate every partner call passes through:
//! outage, rate limit, transient faults and bearer-token check, then counting.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{ApiError, Outcome};
use crate::model::{Faults, Product, SimConfig, Subscription};

/// How many distinct unix seconds of accepted-call counts are kept, so a long-running
/// demo does not grow without bound (the overall maxima are kept separately).
const SECONDS_KEPT: usize = 86_400;
/// How many accepted calls' instants are kept for [`State::accepted_times`]: a
/// benchmark's worth (an hour at 50/s), bounded for a long-running demo.
const CALLS_KEPT: usize = 200_000;
/// How many subjects of injected failures are kept.
const FAILED_KEPT: usize = 100_000;

/// The partner operations, named as they appear in counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Operation {
    Token,
    ListProducts,
    CreateSubscription,
    GetSubscription,
    UpdateSubscription,
    SetStatus,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::ListProducts => "list_products",
            Self::CreateSubscription => "create_subscription",
            Self::GetSubscription => "get_subscription",
            Self::UpdateSubscription => "update_subscription",
            Self::SetStatus => "set_status",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a call must present a bearer token, and the one it presented.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// `/oauth/token`: credentials travel in the body instead.
    Exempt,
    /// Every other partner call.
    Bearer(Option<String>),
}

/// Everything the simulator remembers.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) token_ttl: Duration,
    pub(crate) faults: Faults,
    pub(crate) catalogue: Vec<Product>,
    /// Token → expiry (`None` when the ttl overflows the clock: never expires).
    pub(crate) tokens: HashMap<String, Option<Instant>>,
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    pub(crate) counters: BTreeMap<(&'static str, u16), u64>,
    pub(crate) anomalies: Vec<String>,
    /// Instants of the calls accepted within the last second (the sliding window).
    recent: VecDeque<Instant>,
    pub(crate) accepted_per_second: BTreeMap<u64, u64>,
    max_per_unix_second: u64,
    max_sliding: u64,
    /// The first and the last accepted call.
    accepted_span: Option<(Instant, Instant)>,
    /// When each recent accepted call arrived and what it was, oldest first (at most
    /// [`CALLS_KEPT`]).
    accepted_times: VecDeque<(Instant, &'static str)>,
    /// When calls were refused for the rate (at most [`CALLS_KEPT`]): a benchmark
    /// shows the calls of the second before each.
    refused_times: Vec<(Instant, &'static str)>,
    /// The contracts (external ids) a call for which was failed on purpose: a
    /// benchmark tells the events hit by an injected fault from the healthy ones.
    failed_subjects: BTreeSet<String>,
    /// Calls that said when their slot was, oldest first (at most [`CALLS_KEPT`]).
    stamped: Vec<StampedCall>,
}

/// A call that carried the client's timing of its slot (the
/// `x-skeelo-slot-stamps` header of a client built with the `slot-stamps` feature):
/// where a call's lateness at the partner comes from. Times are microseconds since
/// the Unix epoch, on this machine's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StampedCall {
    /// When the client's slot for it began.
    pub slot_us: u64,
    /// When the client handed the request to its HTTP stack (its turn came, and was
    /// not stale).
    pub sent_us: u64,
    /// When the simulator's router saw it (where the rate is counted).
    pub arrived_us: u64,
    /// The answer's status (429: refused for the rate).
    pub status: u16,
}

impl StampedCall {
    /// Reads the header's `slot,sent` (`None`: not two numbers).
    pub(crate) fn read(header: &str, arrived_us: u64, status: u16) -> Option<StampedCall> {
        let mut parts = header.split(',').map(|p| p.trim().parse::<u64>().ok());
        let (Some(Some(slot_us)), Some(Some(sent_us)), None) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(StampedCall {
            slot_us,
            sent_us,
            arrived_us,
            status,
        })
    }
}

impl State {
    pub(crate) fn new(config: SimConfig) -> Self {
        Self {
            faults: config.faults(),
            client_id: config.client_id,
            client_secret: config.client_secret,
            token_ttl: config.token_ttl,
            catalogue: config.products,
            tokens: HashMap::new(),
            subscriptions: BTreeMap::new(),
            counters: BTreeMap::new(),
            anomalies: Vec::new(),
            recent: VecDeque::new(),
            accepted_per_second: BTreeMap::new(),
            max_per_unix_second: 0,
            max_sliding: 0,
            accepted_span: None,
            accepted_times: VecDeque::new(),
            refused_times: Vec::new(),
            failed_subjects: BTreeSet::new(),
            stamped: Vec::new(),
        }
    }

    /// Runs one partner call: the gate, then `work` if the gate lets it through,
    /// then the bookkeeping every answered call gets.
    /// `subject` is the contract the call is about, when it names one.
    pub(crate) fn handle(
        &mut self,
        op: Operation,
        auth: &Auth,
        subject: Option<&str>,
        work: impl FnOnce(&mut Self) -> Outcome,
    ) -> Outcome {
        let outcome = self.gate(op, auth, subject).and_then(|()| work(self));
        let status = match &outcome {
            Ok(reply) => reply.status,
            Err(err) => err.status,
        };
        *self
            .counters
            .entry((op.as_str(), status.as_u16()))
            .or_insert(0) += 1;
        if let Err(err) = &outcome {
            if err.status.as_u16() == 422 || err.code == "subscription_cancelled" {
                self.anomaly(format!(
                    "{op}: {} {}: {}",
                    err.status.as_u16(),
                    err.code,
                    err.message
                ));
            }
        }
        outcome
    }

    pub(crate) fn anomaly(&mut self, description: String) {
        tracing::warn!(anomaly = %description, "client made a call a correct client never makes");
        self.anomalies.push(description);
    }

    fn gate(&mut self, op: Operation, auth: &Auth, subject: Option<&str>) -> Result<(), ApiError> {
        if self.faults.down {
            return Err(ApiError::unavailable(
                "simulated outage: the partner API is down",
            ));
        }
        if self.faults.throttle_all {
            return Err(ApiError::rate_limited(self.faults.retry_after.clone()));
        }
        self.admit(Instant::now(), unix_second(), op.as_str())?;
        if op != Operation::Token
            && self.faults.error_rate > 0.0
            && rand::random::<f64>() < self.faults.error_rate
        {
            if let Some(s) = subject {
                if self.failed_subjects.len() < FAILED_KEPT {
                    self.failed_subjects.insert(s.to_owned());
                }
            }
            return Err(ApiError::unavailable(
                "simulated transient failure; try again later",
            ));
        }
        match auth {
            Auth::Exempt => Ok(()),
            Auth::Bearer(token) => self.check_token(token.as_deref()),
        }
    }

    /// The sliding-window rate limit; an accepted call is recorded for the
    /// throughput figures a benchmark reads.
    fn admit(&mut self, now: Instant, second: u64, op: &'static str) -> Result<(), ApiError> {
        while let Some(front) = self.recent.front() {
            if now.duration_since(*front) >= Duration::from_secs(1) {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if let Some(limit) = self.faults.rate_per_second {
            if self.recent.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                if self.refused_times.len() < CALLS_KEPT {
                    self.refused_times.push((now, op));
                }
                return Err(ApiError::rate_limited(self.faults.retry_after.clone()));
            }
        }
        self.recent.push_back(now);
        self.accepted_span = Some(
            self.accepted_span
                .map_or((now, now), |(first, _)| (first, now)),
        );
        self.max_sliding = self.max_sliding.max(self.recent.len() as u64);
        if self.accepted_times.len() == CALLS_KEPT {
            self.accepted_times.pop_front();
        }
        self.accepted_times.push_back((now, op));
        let count = self.accepted_per_second.entry(second).or_insert(0);
        *count += 1;
        self.max_per_unix_second = self.max_per_unix_second.max(*count);
        while self.accepted_per_second.len() > SECONDS_KEPT {
            self.accepted_per_second.pop_first();
        }
        Ok(())
    }

    /// The most partner calls accepted within any one second, sliding or aligned
    /// to unix seconds (the sliding figure is never smaller, the max is for safety).
    pub(crate) fn max_accepted_in_one_second(&self) -> u64 {
        self.max_sliding.max(self.max_per_unix_second)
    }

    pub(crate) fn total_requests(&self) -> u64 {
        self.counters.values().sum()
    }

    /// Forgets what happened, keeping configuration, catalogue, faults and tokens.
    pub(crate) fn reset(&mut self) {
        self.subscriptions.clear();
        self.counters.clear();
        self.anomalies.clear();
        self.recent.clear();
        self.accepted_per_second.clear();
        self.max_per_unix_second = 0;
        self.max_sliding = 0;
        self.accepted_span = None;
        self.accepted_times.clear();
        self.refused_times.clear();
        self.failed_subjects.clear();
        self.stamped.clear();
    }

    /// Keeps a stamped call (the oldest are kept when there are too many).
    pub(crate) fn stamp(&mut self, call: StampedCall) {
        if self.stamped.len() < CALLS_KEPT {
            self.stamped.push(call);
        }
    }

    /// The stamped calls, oldest first.
    pub(crate) fn stamped(&self) -> Vec<StampedCall> {
        self.stamped.clone()
    }

    /// Time from the first accepted call to the last.
    pub(crate) fn accepted_span(&self) -> Option<Duration> {
        self.accepted_span.map(|(first, last)| last - first)
    }

    /// When the recent accepted calls arrived and their operations, oldest first.
    pub(crate) fn accepted_times(&self) -> Vec<(Instant, &'static str)> {
        self.accepted_times.iter().copied().collect()
    }

    /// When calls were refused for the rate, oldest first.
    pub(crate) fn refused_times(&self) -> Vec<(Instant, &'static str)> {
        self.refused_times.clone()
    }

    /// Whether a call about `external_id` was failed on purpose.
    pub(crate) fn failed_on_purpose(&self, external_id: &str) -> bool {
        self.failed_subjects.contains(external_id)
    }
}

fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Shared access to the state; the lock is only ever held for synchronous work.
#[derive(Debug, Clone)]
pub(crate) struct Sim(Arc<Mutex<State>>);

impl Sim {
    pub(crate) fn new(config: SimConfig) -> Self {
        Self(Arc::new(Mutex::new(State::new(config))))
    }

    /// A panic while holding the lock cannot leave the state half-updated in a way
    /// that matters for a simulator, so a poisoned lock is simply taken over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Microseconds since the Unix epoch (0 before it).
pub(crate) fn epoch_us(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reply;
    use serde_json::json;

    fn state_with_rate(rate: Option<u32>) -> State {
        State::new(SimConfig {
            rate_per_second: rate,
            ..SimConfig::default()
        })
    }

    #[test]
    fn slot_stamps_are_read_only_when_whole() {
        let call = StampedCall::read("10, 13", 20, 429).expect("two numbers");
        assert_eq!(
            (call.slot_us, call.sent_us, call.arrived_us, call.status),
            (10, 13, 20, 429)
        );
        for bad in ["", "1", "1,2,3", "1,x", "-1,2"] {
            assert_eq!(StampedCall::read(bad, 20, 200), None, "{bad:?}");
        }
    }

    #[test]
    fn sliding_window_refuses_beyond_the_rate() {
        let mut state = state_with_rate(Some(2));
        let start = Instant::now();
        assert!(state.admit(start, 10, "token").is_ok());
        assert!(state
            .admit(start + Duration::from_millis(100), 10, "token")
            .is_ok());
        let refused = state
            .admit(start + Duration::from_millis(900), 11, "token")
            .expect_err("third call within one second");
        assert_eq!(refused.code, "rate_limited");
        // One second after the first call its slot frees up.
        assert!(state
            .admit(start + Duration::from_millis(1000), 11, "token")
            .is_ok());
        assert!(state
            .admit(start + Duration::from_millis(1050), 11, "token")
            .is_err());
        assert_eq!(state.max_accepted_in_one_second(), 2);
        assert_eq!(state.accepted_per_second.get(&10), Some(&2));
        assert_eq!(state.accepted_per_second.get(&11), Some(&1));
    }

    #[test]
    fn sliding_maximum_spans_unix_second_boundaries() {
        let mut state = state_with_rate(None);
        let start = Instant::now();
        for i in 0..4 {
            let second = if i < 2 { 20 } else { 21 };
            state
                .admit(start + Duration::from_millis(i * 100), second, "token")
                .expect("unlimited");
        }
        assert_eq!(state.max_accepted_in_one_second(), 4);
    }

    #[test]
    fn handle_counts_and_records_422_as_anomaly() {
        let mut state = state_with_rate(None);
        let auth = Auth::Exempt;
        let ok = state.handle(Operation::ListProducts, &auth, None, |_| {
            Ok(Reply::ok(json!({})))
        });
        assert!(ok.is_ok());
        let bad = state.handle(Operation::CreateSubscription, &auth, None, |_| {
            Err(ApiError::invalid_document())
        });
        assert!(bad.is_err());
        assert_eq!(state.counters.get(&("list_products", 200)), Some(&1));
        assert_eq!(state.counters.get(&("create_subscription", 422)), Some(&1));
        assert_eq!(state.anomalies.len(), 1);
        assert_eq!(state.total_requests(), 2);
    }

    #[test]
    fn injected_failures_name_their_contract_and_accepted_calls_are_timed() {
        let mut state = state_with_rate(None);
        state.faults.error_rate = 1.0;
        let auth = Auth::Exempt;
        let failed = state.handle(Operation::SetStatus, &auth, Some("C1"), |_| {
            Ok(Reply::ok(json!({})))
        });
        assert!(failed.is_err());
        assert!(state.failed_on_purpose("C1"));
        assert!(!state.failed_on_purpose("C2"));
        // Tokens are never failed on purpose, and an accepted call is timed.
        let token = state.handle(Operation::Token, &auth, Some("C2"), |_| {
            Ok(Reply::ok(json!({})))
        });
        assert!(token.is_ok());
        assert!(!state.failed_on_purpose("C2"));
        assert_eq!(state.accepted_times().len(), 2);
        state.reset();
        assert!(!state.failed_on_purpose("C1"));
        assert!(state.accepted_times().is_empty());
    }
}
