//! The in-process handle tests use to drive and inspect a running simulator.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::admin::upsert_product;
use crate::model::{Faults, Product, Subscription};
use crate::state::Sim;

/// Access to a simulator started with [`crate::spawn`], sharing its state directly
/// so tests can assert on it without going through HTTP.
///
/// Dropping every handle does not stop the server; call [`SimHandle::shutdown`].
#[derive(Debug, Clone)]
pub struct SimHandle {
    pub(crate) sim: Sim,
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Arc<watch::Sender<bool>>,
}

impl SimHandle {
    /// Where the simulator listens, for clients that need the raw address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to configure a client with, e.g. `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the partner holds for one contract, to check what a client synced.
    pub fn subscription(&self, external_id: &str) -> Option<Subscription> {
        self.sim.lock().subscriptions.get(external_id).cloned()
    }

    /// Changes a subscription as the partner's own support would, behind the client's
    /// back (no call, no anomaly): for tests of drift. `false` when there is none.
    pub fn tamper(&self, external_id: &str, change: impl FnOnce(&mut Subscription)) -> bool {
        match self.sim.lock().subscriptions.get_mut(external_id) {
            Some(s) => {
                change(s);
                true
            }
            None => false,
        }
    }

    /// Every subscription, sorted by `external_id`.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.sim.lock().subscriptions.values().cloned().collect()
    }

    /// Calls a correct client would never make, oldest first; empty is the goal.
    pub fn anomalies(&self) -> Vec<String> {
        self.sim.lock().anomalies.clone()
    }

    /// How many times `operation` (e.g. `create_subscription`) was answered with `status`.
    pub fn request_count(&self, operation: &str, status: u16) -> u64 {
        self.sim
            .lock()
            .counters
            .iter()
            .filter(|((op, code), _)| *op == operation && *code == status)
            .map(|(_, count)| *count)
            .sum()
    }

    /// All partner calls answered, whatever their status, to measure client chattiness.
    pub fn total_requests(&self) -> u64 {
        self.sim.lock().total_requests()
    }

    /// Replaces the faults; an out-of-range or NaN `error_rate` is clamped into 0..=1.
    pub fn set_faults(&self, faults: Faults) {
        self.sim.lock().faults = faults.sanitized();
    }

    /// The faults currently in force.
    pub fn faults(&self) -> Faults {
        self.sim.lock().faults.clone()
    }

    /// Revokes every issued token, so the next call with one of them gets 401.
    pub fn expire_tokens(&self) {
        self.sim.lock().expire_tokens();
    }

    /// Adds `sku` to the catalogue (renaming it if present).
    pub fn add_product(&self, sku: &str, name: &str) {
        upsert_product(&mut self.sim.lock().catalogue, Product::new(sku, name));
    }

    /// Removes `sku` from the catalogue, so new references to it get 422 unknown_product.
    pub fn remove_product(&self, sku: &str) {
        self.sim
            .lock()
            .catalogue
            .retain(|product| product.sku != sku);
    }

    /// The current catalogue.
    pub fn products(&self) -> Vec<Product> {
        self.sim.lock().catalogue.clone()
    }

    /// The most partner calls accepted in any one-second window, to check a
    /// client's own throttling against the partner's limit.
    pub fn max_accepted_in_one_second(&self) -> u64 {
        self.sim.lock().max_accepted_in_one_second()
    }

    /// Time from the first accepted partner call to the last (`None` before any): the
    /// span over which a backlog's calls were spread.
    pub fn accepted_span(&self) -> Option<std::time::Duration> {
        self.sim.lock().accepted_span()
    }

    /// When each recently accepted partner call arrived and its operation (e.g.
    /// `create_subscription`), oldest first (the last 200 000): for a benchmark's
    /// figures of how evenly the rate was used.
    pub fn accepted_times(&self) -> Vec<(std::time::Instant, &'static str)> {
        self.sim.lock().accepted_times()
    }

    /// The calls that carried their client's slot timing, oldest first: where their
    /// lateness at the partner came from (see [`crate::StampedCall`]).
    pub fn stamped_calls(&self) -> Vec<crate::StampedCall> {
        self.sim.lock().stamped()
    }

    /// When calls were refused for the rate (429) and their operation, oldest first.
    pub fn refused_times(&self) -> Vec<(std::time::Instant, &'static str)> {
        self.sim.lock().refused_times()
    }

    /// Whether some call about this contract was failed on purpose (the `error_rate`
    /// fault), so that a benchmark can tell healthy events from those it hit.
    pub fn failed_on_purpose(&self, external_id: &str) -> bool {
        self.sim.lock().failed_on_purpose(external_id)
    }

    /// Forgets subscriptions, counters and anomalies, keeping configuration,
    /// catalogue, faults and tokens, so one simulator can serve several scenarios.
    pub fn reset(&self) {
        self.sim.lock().reset();
    }

    /// Stops accepting connections and ends the server task once in-flight
    /// requests finish. Idempotent.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}
