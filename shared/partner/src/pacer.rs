//! The partner rate, for the whole fleet: every call to Skeelo waits for a *slot*.
//!
//! Slots are handed out by PostgreSQL, which every process already has: one row keeps
//! the fleet's schedule (the even schedule's next slot and the last slots leased, see
//! [`crate::schedule`]). A process leases a few slots at a time under the row's lock,
//! so any number of processes together get disjoint slots, never more than the partner
//! rate in any one-second window, and a gap nobody was ready to fill is made up within
//! the second. Inside a process, a guard keeps calls within the partner's count
//! whatever the ledger says, and a dispatcher gives each slot to a waiting call by
//! weighted round robin over *lanes* (event types): access-granting events go ahead of
//! a wave of access-removing ones, and a lane with nothing waiting leaves its share to
//! the others, so the whole rate is used.
//!
//! A 429 pauses the fleet: the pause is written to the same row, so every process's next
//! lease starts after it, and this process drops the slots it holds inside it.
//!
//! When PostgreSQL is slow, a lease's first slot begins as far ahead as its answers
//! take to come back (calls slow down; a gap of at most a quarter of a second, and the
//! ledger's own delay, are made up after, within the partner's count); when it
//! is down, no slot is leased and no call is made until it answers — the fleet is in
//! database outage mode then anyway.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use skeelo_domain::event::EventType;

use crate::schedule::{self, Schedule, Spacing};

/// How long a lease or a pause may take at the ledger before it counts as failed.
const LEDGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Slots leased at once, at most: about a tenth of a second of the rate.
const LEASE_SECONDS: f64 = 0.1;

/// Leases remembered to set the lead of the next one (see `Inner::lead`).
const LEASES_TIMED: usize = 8;
/// The lead of a process's first lease, before any was timed: more than the 1.9–31 ms
/// whole round trips of first leases measured on a busy two-core machine
/// (docs/performance.md, "The first slot after a gap"). It only delays the process's
/// first call.
const FIRST_LEAD: Duration = Duration::from_millis(40);
/// The most lead asked for (the schedule allows no more): a lead only delays the
/// first slot after a gap, which the schedule makes up.
const MOST_LEAD: Duration = Duration::from_millis((schedule::CATCH_UP * 1000.0) as u64);

/// The share of the rate left unused, so that the partner, counting calls in any
/// sliding second by its own clock, never sees one too many. `rate + 1` calls spaced
/// at `1 / (rate × (1 − m))` span `m / (1 − m)` seconds more than one second: that is
/// the time by which the arrival of a call may lag the one a second after it (timer
/// lateness, scheduling, the network) without a 429.
///
/// It adapts: at its floor while the partner never throttles, doubled (by at least
/// [`Margin::STEP`]) at each 429, and back to the floor by half its excess every
/// [`Margin::HALF_LIFE`] without one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin {
    floor: f64,
    /// The margin right after the last change, and when that was.
    raised: f64,
    since: Option<Instant>,
}

impl Margin {
    /// The floor, measured (docs/performance.md, "The partner's own count"): 1.5 %
    /// leaves 15 ms a second for arrival jitter. On a two-core machine shared by three
    /// worker processes, the broker, the database and the partner fake, jitter used up
    /// to 14 ms of it; at 1 % four rows in forty drew a 429 (after which the margin
    /// grows by itself), at 1.5 % one in fifty, and every other row waiting at
    /// start-up used 98.2–98.8 % of the rate.
    pub const FLOOR: f64 = 0.015;
    /// The least floor: below it, the room in a second is under a timer's own
    /// lateness, and slots are dropped as late instead of used (measured at 0 %: 17 %
    /// of the rate used).
    pub const MIN: f64 = 0.005;
    /// The least a 429 adds.
    pub const STEP: f64 = 0.02;
    /// The most it can grow to.
    pub const MAX: f64 = 0.25;
    /// How fast it falls back while no 429 comes.
    pub const HALF_LIFE: Duration = Duration::from_secs(300);

    /// A margin at `floor` (clamped to MIN..=MAX).
    pub fn new(floor: f64) -> Margin {
        let floor = if floor.is_finite() {
            floor.clamp(Self::MIN, Self::MAX)
        } else {
            Self::FLOOR
        };
        Margin {
            floor,
            raised: floor,
            since: None,
        }
    }

    /// The least it falls back to.
    pub fn floor(&self) -> f64 {
        self.floor
    }

    /// The margin in force at `now`.
    pub fn at(&self, now: Instant) -> f64 {
        let Some(since) = self.since else {
            return self.floor;
        };
        let halves =
            now.saturating_duration_since(since).as_secs_f64() / Self::HALF_LIFE.as_secs_f64();
        self.floor + (self.raised - self.floor) * 0.5_f64.powf(halves)
    }

    /// The partner said 429 at `now`: space calls wider. Returns the new margin.
    pub fn throttled(&mut self, now: Instant) -> f64 {
        let m = self.at(now);
        self.raised = (m * 2.0).max(m + Self::STEP).min(Self::MAX);
        self.since = Some(now);
        self.raised
    }

    /// The time between two slots at `rate` calls a second, at `now`.
    pub fn interval(&self, rate: NonZeroU32, now: Instant) -> Duration {
        Duration::from_secs_f64(1.0 / (f64::from(rate.get()) * (1.0 - self.at(now))))
    }
}

impl Default for Margin {
    fn default() -> Margin {
        Margin::new(Margin::FLOOR)
    }
}

/// A timer's own lateness: it fires up to a millisecond after its time.
const TICK: Duration = Duration::from_millis(1);

/// How late a slot may still be used: half the room the margin leaves in a second
/// (the other half is for the network), never less than the timer's own tick (a
/// timer fires up to a millisecond after its time) and never more than half an
/// interval. A slot reached later is dropped rather than sent late: the call a second
/// after it, in another process, may be on time. (Within a process the local guard
/// keeps calls within the rate whatever the lateness.)
fn late_allowed(interval: Duration, rate: NonZeroU32) -> Duration {
    let tick = TICK.as_secs_f64();
    let room = (interval.as_secs_f64() * f64::from(rate.get()) - 1.0).max(0.0);
    Duration::from_secs_f64((room / 2.0).max(tick).min(interval.as_secs_f64() / 2.0))
}

/// Which queue a call waits in. Event types, plus one for everything else (the
/// catalogue, probes, operators' reads).
pub type Lane = usize;

/// The lane of calls made for no event.
pub const OTHER: Lane = 6;
/// The lowest lane: requeued dead letters and drift repairs. It gets a turn only when
/// no other lane of the process waits, so work an operator (or the fleet itself) sends
/// back never delays a sign-up waiting in the same process. (Across processes the
/// fleet's slots are leased first come: a process with only background work takes its
/// share of the rate.)
pub const BACKGROUND: Lane = 7;
const LANES: usize = 8;

/// The lane of an event type.
pub fn lane(t: EventType) -> Lane {
    EventType::ALL.iter().position(|x| *x == t).unwrap_or(OTHER)
}

tokio::task_local! {
    /// The lane of the event this task is handling.
    pub static LANE: Lane;
}

/// Weights per lane: how the rate is shared when several lanes wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights(pub [u32; LANES]);

impl Default for Weights {
    /// Access-granting events (sync, reactivate, unblock) 4, access-removing ones 1,
    /// other calls 2.
    fn default() -> Weights {
        let mut w = [1; LANES];
        for t in EventType::ALL {
            w[lane(t)] = if t.grants_access() { 4 } else { 1 };
        }
        w[OTHER] = 2;
        Weights(w)
    }
}

impl Weights {
    /// Parses `sync=4,suspend=1,…`; unnamed types keep their default.
    pub fn parse(raw: &str) -> Result<Weights, String> {
        let mut w = Weights::default();
        for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: write type=weight, e.g. sync=4"))?;
            let t = EventType::from_name(name.trim())
                .ok_or_else(|| format!("`{name}` is not an event type"))?;
            let v: u32 = value
                .trim()
                .parse()
                .ok()
                .filter(|v| (1..=1000).contains(v))
                .ok_or_else(|| format!("`{part}`: a weight is a whole number from 1 to 1000"))?;
            w.0[lane(t)] = v;
        }
        Ok(w)
    }
}

/// Smooth weighted round robin (as nginx balances upstreams): picks among the lanes
/// that have waiters, each in proportion to its weight, without bursts.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    current: [i64; LANES],
}

impl RoundRobin {
    pub(crate) fn pick(&mut self, weights: &Weights, waiting: &[bool; LANES]) -> Option<Lane> {
        let mut waiting = *waiting;
        if waiting[BACKGROUND] && waiting[..BACKGROUND].iter().any(|w| *w) {
            waiting[BACKGROUND] = false;
        }
        let total: i64 = (0..LANES)
            .filter(|l| waiting[*l])
            .map(|l| i64::from(weights.0[l]))
            .sum();
        if total == 0 {
            return None;
        }
        let mut best: Option<Lane> = None;
        for l in (0..LANES).filter(|l| waiting[*l]) {
            self.current[l] += i64::from(weights.0[l]);
            if best.is_none_or(|b| self.current[l] > self.current[b]) {
                best = Some(l);
            }
        }
        if let Some(b) = best {
            self.current[b] -= total;
        }
        best
    }
}

/// A ledger failure, in words (the ledger's own error type stays its own).
pub type LedgerError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed future, so the ledger can be a trait object.
pub type LedgerFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, LedgerError>> + Send + 'a>>;

/// A ledger's answer to a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// When each slot begins, on the wall clock.
    pub slots: Vec<std::time::SystemTime>,
    /// When the ledger read its clock to place them. How long the answer took from
    /// there to reach the lessee sets how far ahead its next first slot begins (see
    /// [`Spacing::lead`]); measured from the ledger's own reading, it leaves out the
    /// wait for a connection or the row's lock, which happen before it.
    pub read_at: std::time::SystemTime,
}

/// Where the fleet keeps its shared partner-rate state: the database in production
/// (`skeelo_store::Store`), a fake in tests. Every process of the fleet leases its
/// slots from the same ledger, so the fleet together stays within the rate.
pub trait SlotLedger: Send + Sync + 'static {
    /// Leases `n` slots from the row `name`, spaced as `spacing` says
    /// ([`Schedule::lease`] places them). Slots of different leases never overlap.
    fn lease(&self, name: &str, n: usize, spacing: Spacing) -> LedgerFuture<'_, Lease>;

    /// No slot of the row `name` begins before `wait` from now (a 429's Retry-After).
    fn pause(&self, name: &str, wait: Duration) -> LedgerFuture<'_, ()>;
}

/// Hands out turns to call Skeelo. Cheap to clone.
#[derive(Clone)]
pub struct Pacer {
    inner: Option<Arc<Inner>>,
    /// The 429 pause, kept even without a rate: a partner that throttles must be
    /// waited for, never hammered.
    paused_until: Arc<Mutex<Option<Instant>>>,
}

/// A call's turn: the slot it was given, and how late after it the call may still
/// leave.
#[derive(Debug, Clone, Copy)]
pub struct Turn {
    slot: Option<Instant>,
    late: Duration,
}

impl Turn {
    /// The slot it was given (`None` without a rate), for the timing a benchmark's
    /// build sends along (the `slot-stamps` feature).
    #[cfg_attr(not(feature = "slot-stamps"), allow(dead_code))]
    pub(crate) fn slot(&self) -> Option<Instant> {
        self.slot
    }

    /// The slot has passed by more than a slot may be late: the task was woken late
    /// (a busy runtime), and a call sent now could bunch with the fleet's next second
    /// at the partner. Checked right before the call leaves, since the wake-up after
    /// the grant is the least predictable part of the way; a stale turn is given up
    /// for another (`Pacer::turn_again`).
    pub fn stale(&self) -> bool {
        self.slot
            .is_some_and(|s| Instant::now().saturating_duration_since(s) > self.late)
    }
}

struct Inner {
    ledger: Arc<dyn SlotLedger>,
    rate: NonZeroU32,
    margin: Mutex<Margin>,
    /// When this process last gave out its latest slots, a rate's worth at most,
    /// oldest first (see [`Inner::local_guard`]).
    grants: Mutex<VecDeque<Instant>>,
    /// How long the last leases took to come back, newest last.
    lease_took: Mutex<VecDeque<Duration>>,
    queues: Mutex<Queues>,
    wake: Notify,
    paused_until: Arc<Mutex<Option<Instant>>>,
    weights: Weights,
    fates: Fates,
}

/// What became of the slots leased, counted: where the rate goes.
#[derive(Default, Debug)]
struct Fates {
    leased: std::sync::atomic::AtomicU64,
    granted: std::sync::atomic::AtomicU64,
    late: std::sync::atomic::AtomicU64,
    guard_late: std::sync::atomic::AtomicU64,
    paused: std::sync::atomic::AtomicU64,
    unclaimed: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Queues {
    lanes: [VecDeque<oneshot::Sender<Instant>>; LANES],
    robin: RoundRobin,
}

impl Queues {
    fn waiting(&self) -> [bool; LANES] {
        std::array::from_fn(|l| !self.lanes[l].is_empty())
    }

    /// Calls still waiting: those given up meanwhile (their round ran out of time)
    /// are forgotten first, so that no slot is leased from the fleet for them.
    fn waiting_now(&mut self) -> usize {
        for lane in &mut self.lanes {
            lane.retain(|tx| !tx.is_closed());
        }
        self.lanes.iter().map(VecDeque::len).sum()
    }
}

/// The partner rate as the fleet's settings write it: a whole number of requests a
/// second, or `unlimited` (`None`).
pub fn parse_rate(raw: &str) -> Result<Option<NonZeroU32>, String> {
    if raw.trim() == "unlimited" {
        return Ok(None);
    }
    raw.trim().parse::<NonZeroU32>().map(Some).map_err(|_| {
        format!("`{raw}`: a whole number of requests per second above 0, or unlimited")
    })
}

/// The name of the fleet's row in `partner_rate` (readers of the ledger use it too).
pub const LEDGER_ROW: &str = "skeelo";

impl Pacer {
    /// No limit at all (a partner without a rate, or a benchmark of our own cost).
    pub fn unlimited() -> Pacer {
        Pacer {
            inner: None,
            paused_until: Arc::new(Mutex::new(None)),
        }
    }

    /// This process alone (tests, tools that run apart from a fleet).
    pub fn local(rate: NonZeroU32) -> Pacer {
        Pacer::build(
            Arc::new(Local::default()),
            rate,
            Weights::default(),
            Margin::default(),
        )
    }

    /// The whole fleet's rate, coordinated through `ledger`.
    pub fn fleet(
        ledger: impl SlotLedger,
        rate: NonZeroU32,
        weights: Weights,
        margin: Margin,
    ) -> Pacer {
        Pacer::build(Arc::new(ledger), rate, weights, margin)
    }

    fn build(
        ledger: Arc<dyn SlotLedger>,
        rate: NonZeroU32,
        weights: Weights,
        margin: Margin,
    ) -> Pacer {
        let paused_until = Arc::new(Mutex::new(None));
        let inner = Arc::new(Inner {
            ledger,
            rate,
            margin: Mutex::new(margin),
            grants: Mutex::new(VecDeque::new()),
            lease_took: Mutex::new(VecDeque::new()),
            queues: Mutex::new(Queues::default()),
            wake: Notify::new(),
            paused_until: paused_until.clone(),
            weights,
            fates: Fates::default(),
        });
        // On the partner's thread: its timers fire on time however busy the process.
        crate::wire::spawn(dispatch(Arc::downgrade(&inner)));
        Pacer {
            inner: Some(inner),
            paused_until,
        }
    }

    /// The share of the rate left unused now (`None` without a rate).
    pub fn margin(&self) -> Option<f64> {
        let inner = self.inner.as_ref()?;
        inner.margin.lock().ok().map(|m| m.at(Instant::now()))
    }

    /// Waits for this call's turn (in the task's lane, see [`LANE`]).
    pub async fn turn(&self) -> Turn {
        self.queue(false).await
    }

    /// Waits for another turn after one that went stale before the call left (see
    /// [`Turn::stale`]): at the head of its lane, since it has waited once already.
    pub async fn turn_again(&self) -> Turn {
        self.queue(true).await
    }

    async fn queue(&self, first: bool) -> Turn {
        let Some(inner) = &self.inner else {
            loop {
                let until = self.paused_until.lock().ok().and_then(|p| *p);
                match until {
                    Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                    _ => {
                        return Turn {
                            slot: None,
                            late: Duration::ZERO,
                        }
                    }
                }
            }
        };
        let lane = LANE.try_with(|l| *l).unwrap_or(OTHER);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut q) = inner.queues.lock() {
            let queue = &mut q.lanes[lane.min(LANES - 1)];
            if first {
                queue.push_front(tx);
            } else {
                queue.push_back(tx);
            }
        }
        inner.wake.notify_one();
        // The dispatcher never drops a sender without sending; if it is gone (the
        // runtime is shutting down), go ahead rather than hang.
        Turn {
            slot: rx.await.ok(),
            late: inner.late(),
        }
    }

    /// Skeelo said 429: nobody in the fleet calls before `wait` has passed, and this
    /// process spaces its calls wider for a while (see [`Margin`]).
    pub fn pause(&self, wait: Duration) {
        let now = Instant::now();
        let until = now + wait;
        // 429s to calls sent before the pause began say nothing new: the margin grows
        // once per pause, not once per call that was on its way.
        let mut fresh = true;
        if let Ok(mut p) = self.paused_until.lock() {
            fresh = p.is_none_or(|current| current <= now);
            if p.is_none_or(|current| current < until) {
                *p = Some(until);
            }
        }
        let Some(inner) = &self.inner else {
            return;
        };
        if fresh {
            if let Ok(mut m) = inner.margin.lock() {
                let margin = m.throttled(now);
                tracing::warn!(
                    margin_percent = margin * 100.0,
                    "Skeelo throttled a call; spacing calls wider until it stays quiet"
                );
            }
        }
        // Every 429 reaches the fleet (the row keeps the latest end): a later one may
        // ask for a longer wait than the first.
        let ledger = inner.ledger.clone();
        tokio::spawn(async move {
            let paused = tokio::time::timeout(LEDGER_TIMEOUT, ledger.pause(LEDGER_ROW, wait))
                .await
                .unwrap_or_else(|_| Err("the database did not answer in time".into()));
            if let Err(e) = paused {
                tracing::warn!(error = %e, "could not share the 429 pause with the fleet");
            }
        });
    }
}

/// Gives slots to waiting calls until the pacer is dropped. The next lease is taken
/// while the slots in hand are still being served, so that slots arrive before they are
/// due: a slot reached late is dropped (late sends bunch up), and a lease that arrived
/// late would be dropped whole.
async fn dispatch(weak: std::sync::Weak<Inner>) {
    let mut slots: VecDeque<Instant> = VecDeque::new();
    let mut leasing: Option<Leasing> = None;
    let mut reported = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let waiting = inner
            .queues
            .lock()
            .map(|mut q| q.waiting_now())
            .unwrap_or(0);
        let now = Instant::now();
        let late = inner.late();
        while let Some(slot) = slots.front().copied() {
            if now.duration_since(slot) <= late {
                break;
            }
            slots.pop_front();
            inner.thrown_away(&inner.fates.late, "late", slot);
        }
        inner.report_fates(&mut reported, waiting);
        // The next lease is asked for while the slots in hand last longer than it takes
        // to come back (its first slot would otherwise be late).
        let ahead = Duration::from_secs_f64(LEASE_SECONDS / 2.0).max(inner.lead() + late);
        let running_out = slots.back().is_none_or(|last| *last < now + ahead);
        if leasing.is_none() && waiting > slots.len() && running_out {
            let n = lease_size(&inner, waiting - slots.len());
            let lessee = inner.clone();
            // In a task of its own: its answer is timed when it comes (see
            // `Inner::lead`), not when this loop, busy giving out a slot, next looks.
            let task = tokio::spawn(async move { lease(&lessee, n).await });
            leasing = Some(Box::pin(async move {
                task.await
                    .unwrap_or_else(|e| Err(format!("the lease's task ended: {e}").into()))
            }));
        }
        let next = slots.front().copied();
        match (next, leasing.as_mut()) {
            (None, None) => {
                drop(inner);
                // Re-check after a short while in case a wake-up raced with the count
                // (and to notice that the pacer is gone).
                if let Some(inner) = weak.upgrade() {
                    let notified = inner.wake.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
                }
            }
            (None, Some(pending)) => {
                let leased = pending.await;
                leasing = None;
                take(&inner, &mut slots, leased).await;
            }
            (Some(slot), None) => {
                tokio::time::sleep_until(slot.into()).await;
                grant(&inner, &mut slots).await;
            }
            (Some(slot), Some(pending)) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(slot.into()) => grant(&inner, &mut slots).await,
                    leased = pending => {
                        leasing = None;
                        take(&inner, &mut slots, leased).await;
                    }
                }
            }
        }
    }
}

type Leasing =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Instant>, LedgerError>> + Send>>;

async fn take(
    inner: &Inner,
    slots: &mut VecDeque<Instant>,
    leased: Result<Vec<Instant>, LedgerError>,
) {
    match leased {
        Ok(more) => {
            inner
                .fates
                .leased
                .fetch_add(more.len() as u64, std::sync::atomic::Ordering::Relaxed);
            slots.extend(more);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot lease partner-rate slots; no call until the database answers");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The first slot in hand is due: it goes to a waiting call, unless it came too late
/// or falls inside a 429 pause.
async fn grant(inner: &Inner, slots: &mut VecDeque<Instant>) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(slot) = slots.pop_front() else {
        return;
    };
    let now = Instant::now();
    if now.duration_since(slot) > inner.late() {
        inner.thrown_away(&inner.fates.late, "late", slot);
        return;
    }
    let paused = inner.paused_until.lock().ok().and_then(|p| *p);
    if paused.is_some_and(|p| p > now) {
        inner.thrown_away(&inner.fates.paused, "inside a 429's pause", slot);
        return;
    }
    inner.local_guard().await;
    // The local guard may have held it: late by now, it is dropped after all.
    if Instant::now().duration_since(slot) > inner.late() {
        inner.thrown_away(&inner.fates.guard_late, "held by the local guard", slot);
        return;
    }
    // A waiter whose call was given up (its round ran out of time) is skipped: the
    // slot goes to the next one.
    let granted = inner.queues.lock().ok().and_then(|mut q| loop {
        let waiting = q.waiting();
        let l = q.robin.pick(&inner.weights, &waiting)?;
        let tx = q.lanes[l].pop_front()?;
        if !tx.is_closed() {
            break Some(tx);
        }
    });
    match granted.map(|tx| tx.send(slot)) {
        Some(Ok(())) => {
            if let Ok(mut grants) = inner.grants.lock() {
                grants.push_back(Instant::now());
                while grants.len() > inner.rate.get() as usize {
                    grants.pop_front();
                }
            }
            inner.fates.granted.fetch_add(1, Relaxed);
        }
        _ => inner.thrown_away(&inner.fates.unclaimed, "unclaimed", slot),
    };
}

impl Inner {
    /// A slot leased and not used: counted, and told at debug level one by one (a
    /// row that loses a slot in the middle loses it here).
    fn thrown_away(&self, fate: &std::sync::atomic::AtomicU64, why: &str, slot: Instant) {
        fate.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            why,
            late_ms = Instant::now().saturating_duration_since(slot).as_secs_f64() * 1000.0,
            "a partner-rate slot went unused"
        );
    }

    /// Every 10 s while calls wait: what became of the slots (debug level).
    fn report_fates(&self, last: &mut Instant, waiting: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if waiting == 0 || last.elapsed() < Duration::from_secs(10) {
            return;
        }
        *last = Instant::now();
        let f = &self.fates;
        tracing::debug!(
            waiting,
            leased = f.leased.load(Relaxed),
            granted = f.granted.load(Relaxed),
            late = f.late.load(Relaxed),
            guard_late = f.guard_late.load(Relaxed),
            paused = f.paused.load(Relaxed),
            unclaimed = f.unclaimed.load(Relaxed),
            "partner-rate slots so far"
        );
    }

    /// A second guard, inside the process, whatever the ledger handed out: never more
    /// than the rate in any second, and never two slots closer than half the partner's
    /// spacing (the ledger makes up a gap at twice the rate at most), each less a
    /// timer's tick so that a timer's lateness does not add up from slot to slot. It
    /// measures from slots actually given out: a slot it holds past its lateness is
    /// dropped without moving it. governor, the guard before this one, counted such a
    /// slot as sent, so that every later slot was held as long and dropped in turn, and
    /// a process stalled for up to 45 s (docs/performance.md, "The stalls").
    async fn local_guard(&self) {
        let rate = self.rate.get() as usize;
        let closest =
            Duration::from_secs_f64(0.5 / f64::from(self.rate.get())).saturating_sub(TICK);
        let ready = self.grants.lock().ok().and_then(|g| {
            let after_last = g.back().map(|l| *l + closest);
            let in_the_second = (g.len() >= rate)
                .then(|| g[g.len() - rate] + Duration::from_secs(1).saturating_sub(TICK));
            after_last.max(in_the_second)
        });
        if let Some(ready) = ready {
            if ready > Instant::now() {
                tokio::time::sleep_until(ready.into()).await;
            }
        }
    }

    /// The spacing of slots now.
    fn interval(&self) -> Duration {
        let now = Instant::now();
        self.margin
            .lock()
            .map(|m| m.interval(self.rate, now))
            .unwrap_or_else(|_| Margin::default().interval(self.rate, now))
    }

    /// How this process's slots are spaced now: its own margin for the even schedule,
    /// the floor's for the partner's second (see [`Spacing::window`]).
    fn spacing(&self) -> Spacing {
        let floor = self.margin.lock().map_or(Margin::FLOOR, |m| m.floor());
        let floor = Margin::new(floor).interval(self.rate, Instant::now());
        Spacing {
            interval: self.interval().as_secs_f64(),
            rate: self.rate.get(),
            window: floor.as_secs_f64() * f64::from(self.rate.get()),
            lead: self.lead().as_secs_f64(),
        }
    }

    /// How long after the ledger reads its clock for a lease its first slot should
    /// begin: the longest any of the last leases' answers took from that reading to
    /// this process, and a timer's tick, so that a first slot placed at the ledger's
    /// "now" arrives before it is due even while the ledger is slow (see
    /// [`Spacing::lead`]).
    fn lead(&self) -> Duration {
        let longest = self
            .lease_took
            .lock()
            .ok()
            .and_then(|t| t.iter().max().copied())
            .map_or(FIRST_LEAD, |d| d + TICK);
        longest.clamp(Duration::from_secs_f64(schedule::LEAD), MOST_LEAD)
    }

    /// How late a slot may be used, from the floor of the margin, not the margin in
    /// force: a margin grown after a 429 is this process's alone, and the other
    /// processes' slots after this one's keep the floor's spacing.
    fn late(&self) -> Duration {
        let floor = self.margin.lock().map_or(Margin::FLOOR, |m| m.floor());
        late_allowed(
            Margin::new(floor).interval(self.rate, Instant::now()),
            self.rate,
        )
    }
}

/// Slots for `waiting` calls, at most a lease's worth: a tenth of a second of the
/// rate, or as long as a lease takes to come back (with a slow ledger, a lease must
/// cover its own round trip, or the rate is capped by it).
fn lease_size(inner: &Inner, waiting: usize) -> usize {
    let covers = LEASE_SECONDS.max((inner.lead() + inner.late()).as_secs_f64());
    let per_lease = (covers / inner.interval().as_secs_f64()).floor().max(1.0) as usize;
    waiting.clamp(1, per_lease)
}

/// Leases `n` slots from the ledger. Its times are wall-clock times, read against this
/// machine's clock: every process places a slot at the same moment, however long the
/// answer took to arrive.
async fn lease(inner: &Inner, n: usize) -> Result<Vec<Instant>, LedgerError> {
    let spacing = inner.spacing();
    // Bounded: a connection that stopped answering (half open) must not hold every
    // call of the process; the dispatcher tries again.
    let lease = tokio::time::timeout(LEDGER_TIMEOUT, inner.ledger.lease(LEDGER_ROW, n, spacing))
        .await
        .map_err(|_| -> LedgerError { format!("no lease within {LEDGER_TIMEOUT:?}").into() })??;
    // An answer without slots would be asked again at once, and again: an error waits.
    if lease.slots.is_empty() {
        return Err(format!("the ledger leased no slot of the {n} asked for").into());
    }
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    // Against the ledger's own clock: a skew between the two clocks shifts the slots
    // by as much, so it is rightly part of how far ahead they must begin.
    let took = wall.duration_since(lease.read_at).unwrap_or_default();
    // One line a lease at debug level: with the partner's record of a run
    // (`BENCH_TIMES`), where each slot went and how far ahead it was placed.
    tracing::debug!(
        asked = n,
        took_ms = took.as_secs_f64() * 1000.0,
        first_ahead_ms = lease
            .slots
            .first()
            .map_or(f64::NAN, |t| match t.duration_since(wall) {
                Ok(d) => d.as_secs_f64() * 1000.0,
                Err(e) => -e.duration().as_secs_f64() * 1000.0,
            }),
        at = schedule::epoch_seconds(wall),
        "lease"
    );
    if let Ok(mut times) = inner.lease_took.lock() {
        times.push_back(took);
        while times.len() > LEASES_TIMED {
            times.pop_front();
        }
    }
    Ok(lease
        .slots
        .into_iter()
        .map(|t| match t.duration_since(wall) {
            Ok(ahead) => now + ahead,
            Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
        })
        .collect())
}

/// The ledger of a process alone: the same schedule, in memory.
#[derive(Default)]
struct Local {
    row: Mutex<(Schedule, f64)>,
}

impl SlotLedger for Local {
    fn lease(&self, _name: &str, n: usize, spacing: Spacing) -> LedgerFuture<'_, Lease> {
        Box::pin(async move {
            let read_at = std::time::SystemTime::now();
            let now = schedule::epoch_seconds(read_at);
            let mut row = self
                .row
                .lock()
                .map_err(|_| "the ledger's lock is poisoned")?;
            let (schedule, paused_until) = &mut *row;
            let paused_until = *paused_until;
            let slots = schedule
                .lease(now, paused_until, n, spacing)
                .into_iter()
                .map(|t| {
                    schedule::wall_clock(t)
                        .ok_or_else(|| format!("a slot placed at {t} s is not a time").into())
                })
                .collect::<Result<_, LedgerError>>()?;
            Ok(Lease { slots, read_at })
        })
    }

    fn pause(&self, _name: &str, wait: Duration) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let until = schedule::epoch_seconds(std::time::SystemTime::now() + wait);
            let mut row = self
                .row
                .lock()
                .map_err(|_| "the ledger's lock is poisoned")?;
            row.1 = row.1.max(until);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_share_the_rate_in_proportion() {
        let w = Weights::default();
        let mut rr = RoundRobin::default();
        let mut waiting = [false; LANES];
        waiting[lane(EventType::Sync)] = true;
        waiting[lane(EventType::Suspend)] = true;
        let mut counts = [0; LANES];
        for _ in 0..500 {
            let l = rr.pick(&w, &waiting).expect("someone waits");
            counts[l] += 1;
        }
        assert_eq!(counts[lane(EventType::Sync)], 400);
        assert_eq!(counts[lane(EventType::Suspend)], 100);
    }

    #[test]
    fn a_lane_alone_gets_every_slot() {
        let w = Weights::default();
        let mut rr = RoundRobin::default();
        let mut waiting = [false; LANES];
        waiting[lane(EventType::Suspend)] = true;
        for _ in 0..50 {
            assert_eq!(rr.pick(&w, &waiting), Some(lane(EventType::Suspend)));
        }
        assert_eq!(rr.pick(&w, &[false; LANES]), None);
    }

    #[test]
    fn no_lane_waits_long_behind_a_heavier_one() {
        let w = Weights::default();
        let mut rr = RoundRobin::default();
        let waiting = [true; LANES];
        let mut last_seen = [0usize; LANES];
        let mut longest_gap = [0usize; LANES];
        for i in 1..=1000 {
            let l = rr.pick(&w, &waiting).expect("someone waits");
            longest_gap[l] = longest_gap[l].max(i - last_seen[l]);
            last_seen[l] = i;
        }
        // Every lane but the background one gets its turn within its fair period.
        let total: u32 = w.0.iter().sum();
        for l in 0..BACKGROUND {
            let period = total.div_ceil(w.0[l]) as usize;
            assert!(longest_gap[l] <= period + 2, "lane {l}: {longest_gap:?}");
        }
    }

    #[test]
    fn the_background_lane_waits_behind_every_other() {
        let w = Weights::default();
        let mut rr = RoundRobin::default();
        let mut waiting = [false; LANES];
        waiting[BACKGROUND] = true;
        waiting[lane(EventType::Suspend)] = true;
        for _ in 0..100 {
            assert_eq!(rr.pick(&w, &waiting), Some(lane(EventType::Suspend)));
        }
        waiting[lane(EventType::Suspend)] = false;
        assert_eq!(rr.pick(&w, &waiting), Some(BACKGROUND));
    }

    #[test]
    fn weights_parse_with_clear_errors() {
        let w = Weights::parse("suspend=3, sync=9").expect("valid");
        assert_eq!(w.0[lane(EventType::Suspend)], 3);
        assert_eq!(w.0[lane(EventType::Sync)], 9);
        assert_eq!(
            w.0[lane(EventType::Block)],
            1,
            "unnamed types keep their default"
        );
        assert!(Weights::parse("sync").unwrap_err().contains("type=weight"));
        assert!(Weights::parse("nope=1")
            .unwrap_err()
            .contains("not an event type"));
        assert!(Weights::parse("sync=0").unwrap_err().contains("1 to 1000"));
    }

    #[test]
    fn the_margin_stays_at_its_floor_grows_at_each_429_and_falls_back() {
        let t0 = Instant::now();
        let mut m = Margin::default();
        assert_eq!(m.at(t0), Margin::FLOOR);
        assert_eq!(m.at(t0 + Duration::from_secs(3600)), Margin::FLOOR);
        // A 429 adds at least a step, a second one doubles.
        let first = m.throttled(t0);
        assert!(
            (first - (Margin::FLOOR + Margin::STEP)).abs() < 1e-9,
            "{first}"
        );
        let second = m.throttled(t0);
        assert!((second - 2.0 * first).abs() < 1e-9, "{second}");
        // Never beyond the most.
        for _ in 0..20 {
            m.throttled(t0);
        }
        assert!((m.at(t0) - Margin::MAX).abs() < 1e-9);
        // Half the excess goes in a half-life, nearly all in ten.
        let half = m.at(t0 + Margin::HALF_LIFE);
        let expected = Margin::FLOOR + (Margin::MAX - Margin::FLOOR) / 2.0;
        assert!((half - expected).abs() < 1e-6, "{half} vs {expected}");
        let later = m.at(t0 + Margin::HALF_LIFE * 10);
        assert!(later - Margin::FLOOR < 0.001, "{later}");
        // A 429 after a quiet spell starts from where the margin had fallen to.
        let again = m.throttled(t0 + Margin::HALF_LIFE * 10);
        assert!(again < 0.04, "{again}");
    }

    #[test]
    fn the_margin_is_clamped_and_sets_the_spacing() {
        let now = Instant::now();
        assert_eq!(Margin::new(f64::NAN), Margin::default());
        assert_eq!(Margin::new(-1.0).at(now), Margin::MIN);
        assert_eq!(Margin::new(0.0).at(now), Margin::MIN);
        assert_eq!(Margin::new(9.0).at(now), Margin::MAX);
        let rate = NonZeroU32::new(50).expect("non-zero");
        let narrowest = Margin::new(0.0).interval(rate, now).as_secs_f64();
        assert!((narrowest - 0.02 / 0.995).abs() < 1e-9, "{narrowest}");
        let spaced = Margin::new(0.2).interval(rate, now);
        assert_eq!(spaced, Duration::from_millis(25));
        // rate + 1 calls at this spacing span a second plus the margin's room.
        let room = spaced.as_secs_f64() * 50.0 - 1.0;
        assert!((room - 0.25).abs() < 1e-9, "{room}");
    }

    #[test]
    fn a_slot_may_be_late_by_half_the_room_the_margin_leaves() {
        let rate = NonZeroU32::new(50).expect("non-zero");
        let now = Instant::now();
        let at = |m: f64| late_allowed(Margin::new(m).interval(rate, now), rate);
        // 1 %: 1/0.99 - 1 = 10.1 ms of room in a second, half of it for lateness.
        let one = at(0.01).as_secs_f64() * 1000.0;
        assert!((one - 5.05).abs() < 0.01, "{one}");
        // The least margin leaves 2.5 ms; a wide one is capped at half an interval.
        let least = at(Margin::MIN).as_secs_f64() * 1000.0;
        assert!((least - 2.51).abs() < 0.01, "{least}");
        let capped =
            at(0.25).as_secs_f64() - (Margin::new(0.25).interval(rate, now) / 2).as_secs_f64();
        assert!(capped.abs() < 1e-6, "{capped}");
    }

    #[tokio::test]
    async fn a_burst_of_429s_widens_the_spacing_once() {
        let pacer = Pacer::local(NonZeroU32::new(50).expect("non-zero"));
        assert_eq!(pacer.margin(), Some(Margin::FLOOR));
        // Calls already on their way when the first 429 came get theirs too.
        for _ in 0..5 {
            pacer.pause(Duration::from_millis(40));
        }
        let once = pacer.margin().expect("a rate");
        assert!(
            (once - (Margin::FLOOR + Margin::STEP)).abs() < 1e-6,
            "{once}"
        );
        // A 429 after the pause is over is news: the margin doubles.
        tokio::time::sleep(Duration::from_millis(60)).await;
        pacer.pause(Duration::from_millis(40));
        let twice = pacer.margin().expect("a rate");
        assert!((twice - 2.0 * once).abs() < 1e-4, "{twice}");
        assert_eq!(Pacer::unlimited().margin(), None);
    }

    /// A ledger in memory, and what was asked of it.
    #[derive(Default)]
    struct FakeLedger {
        ledger: Local,
        state: Mutex<FakeRow>,
    }

    #[derive(Default)]
    struct FakeRow {
        leased: usize,
        pauses: Vec<Duration>,
    }

    impl SlotLedger for Arc<FakeLedger> {
        fn lease(&self, name: &str, n: usize, spacing: Spacing) -> LedgerFuture<'_, Lease> {
            let name = name.to_string();
            Box::pin(async move {
                self.state.lock().map_err(|_| "poisoned")?.leased += n;
                self.ledger.lease(&name, n, spacing).await
            })
        }

        fn pause(&self, name: &str, wait: Duration) -> LedgerFuture<'_, ()> {
            let name = name.to_string();
            Box::pin(async move {
                self.state.lock().map_err(|_| "poisoned")?.pauses.push(wait);
                self.ledger.pause(&name, wait).await
            })
        }
    }

    /// A ledger whose answers take `delay` to come back after it read its clock.
    struct SlowLedger {
        ledger: Local,
        delay: Duration,
    }

    impl SlotLedger for SlowLedger {
        fn lease(&self, name: &str, n: usize, spacing: Spacing) -> LedgerFuture<'_, Lease> {
            let name = name.to_string();
            Box::pin(async move {
                let slots = self.ledger.lease(&name, n, spacing).await;
                tokio::time::sleep(self.delay).await;
                slots
            })
        }

        fn pause(&self, name: &str, wait: Duration) -> LedgerFuture<'_, ()> {
            self.ledger.pause(name, wait)
        }
    }

    /// After a gap the first slot is placed at the ledger's "now": with a fixed lead
    /// shorter than the ledger's answer, every such slot came already late and was
    /// dropped, and the one waiting call never got a turn (the next lease after the
    /// drop starts at "now" again). The lead follows how long leases take.
    #[tokio::test]
    async fn the_first_slot_after_a_gap_arrives_before_it_is_due_on_a_slow_ledger() {
        let ledger = SlowLedger {
            ledger: Local::default(),
            delay: Duration::from_millis(30),
        };
        let rate = NonZeroU32::new(50).expect("non-zero");
        let pacer = Pacer::fleet(ledger, rate, Weights::default(), Margin::default());
        let inner = pacer.inner.clone().expect("a rate");
        let turn = || async {
            tokio::time::timeout(Duration::from_secs(2), pacer.turn())
                .await
                .expect("a turn within 2 s (every first slot came late and was dropped)")
        };
        // The first lease is not timed yet: its lead is a guess.
        turn().await;
        let late_at_first = inner.fates.late.load(std::sync::atomic::Ordering::Relaxed);
        let lead = inner.lead();
        assert!(
            lead >= Duration::from_millis(30) && lead <= MOST_LEAD,
            "the lead follows the ledger: {lead:?}"
        );
        for _ in 0..5 {
            // A gap longer than is ever made up: the next slot starts afresh at "now".
            tokio::time::sleep(Duration::from_millis(300)).await;
            turn().await;
        }
        // One lease whose answer came more than the allowance later than the longest
        // before it (a busy machine's timer) may still have its first slot dropped;
        // with the fixed lead every one was.
        let late = inner.fates.late.load(std::sync::atomic::Ordering::Relaxed) - late_at_first;
        assert!(late <= 1, "{late} first slots after a gap dropped as late");
    }

    #[tokio::test]
    async fn the_pacer_takes_its_turns_from_the_ledger_and_shares_pauses_with_it() {
        let ledger = Arc::new(FakeLedger::default());
        let rate = NonZeroU32::new(200).expect("non-zero");
        let pacer = Pacer::fleet(ledger.clone(), rate, Weights::default(), Margin::default());
        let started = Instant::now();
        for _ in 0..20 {
            LANE.scope(lane(EventType::Sync), pacer.turn()).await;
        }
        let took = started.elapsed();
        // 20 turns at 200/s (less the safety margin) take about 0.1 s, never much less.
        assert!(took >= Duration::from_millis(90), "{took:?}");
        let leased = ledger.state.lock().map(|r| r.leased).unwrap_or(0);
        assert!(leased >= 20, "every turn came from a leased slot: {leased}");

        pacer.pause(Duration::from_millis(300));
        // A second 429 within the pause widens nothing more here, but may ask for a
        // longer wait: the fleet learns of it too.
        pacer.pause(Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pauses = ledger
            .state
            .lock()
            .map(|r| r.pauses.clone())
            .unwrap_or_default();
        assert_eq!(
            pauses,
            vec![Duration::from_millis(300), Duration::from_millis(500)],
            "the fleet learns of every 429"
        );
        let margin = pacer.margin().expect("a rate");
        assert!(
            (margin - (Margin::FLOOR + Margin::STEP)).abs() < 1e-4,
            "{margin}"
        );
    }
}
