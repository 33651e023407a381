//! A backlog is handled in batches (one transaction for many deliveries), and a batch
//! keeps every rule a lone event keeps: a contract's events in order, a second copy of
//! an event judged a duplicate, unknown products and unreadable bodies parked, failed
//! calls retried until the contract ends right, one result per delivery.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::seq::SliceRandom;
use serde_json::Value;
use skeelo_domain::event::EventType::{self, *};
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(120);

fn ev(t: EventType, contract: &str, version: i64) -> Value {
    sample::event(t, contract, version, &["SKEELO-EBOOKS"])
}

/// Declares the topology with a fleet, stops it, publishes `events`, and starts the
/// fleet again: the whole backlog is waiting when the consumers begin.
async fn backlog_then_fleet(w: &mut World, events: &[Value]) -> std::net::SocketAddr {
    let mut settings = w.settings();
    settings.prefetch = 64;
    w.start_fleet(settings.clone()).await.expect("fleet");
    w.stop_fleets().await.expect("stopped");
    for e in events {
        w.publish(e).await.expect("published");
    }
    w.start_fleet(settings).await.expect("fleet again")
}

/// Batches whose transaction failed, of all types.
async fn failed_batches(addr: std::net::SocketAddr) -> f64 {
    let mut n = 0.0;
    for t in EventType::ALL {
        let series = format!("skeelo_batches_failed_total{{type=\"{}\"}}", t.as_str());
        n += World::metric(addr, &series).await.expect("metric");
    }
    n
}

/// Batches handled, and how many of them held more than one delivery.
async fn batches(addr: std::net::SocketAddr, t: &str) -> (f64, f64) {
    let all = World::metric(addr, &format!("skeelo_batch_events_count{{type=\"{t}\"}}"))
        .await
        .expect("metric");
    let single = World::metric(
        addr,
        &format!("skeelo_batch_events_bucket{{type=\"{t}\",le=\"1\"}}"),
    )
    .await
    .expect("metric");
    (all, all - single)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_in_batches_keeps_every_rule() {
    let mut w = World::new().await.expect("world");
    let mut histories: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut syncs = Vec::new();
    for c in 0..40 {
        let id = format!("BATCH{c:03}");
        let sync = ev(Sync, &id, 1);
        syncs.push(sync.clone());
        histories.insert(id, vec![sync]);
    }
    // Every contract's sync, then a second copy of every fifth (a retransmit), then a
    // product Skeelo does not sell, then a body that is not an event.
    let mut events: Vec<Value> = syncs.clone();
    let copies: Vec<Value> = syncs.iter().step_by(5).cloned().collect();
    events.extend(copies.iter().cloned());
    let unknown = sample::event(Sync, "BATCH-UNKNOWN", 1, &["NOT-SOLD"]);
    events.push(unknown.clone());
    let addr = backlog_then_fleet(&mut w, &events).await;
    w.publish_raw("contract.sync", "not-an-event", b"{not json")
        .await
        .expect("published");
    let deliveries = events.len() + 1;
    let results = w.wait_results(deliveries, WAIT).await.expect("results");
    assert_eq!(results.len(), deliveries, "exactly one result per delivery");

    let (all, several) = batches(addr, "sync").await;
    assert!(
        several >= 1.0,
        "a waiting backlog is taken in batches ({all} batches, {several} of several deliveries)"
    );

    let mut outcomes: HashMap<String, Vec<Outcome>> = HashMap::new();
    for r in &results {
        outcomes
            .entry(r.event_id.clone())
            .or_default()
            .push(r.outcome);
    }
    for copy in &copies {
        let id = copy["event_id"].as_str().expect("event id");
        let mut got = outcomes.remove(id).expect("results for the copied event");
        got.sort_by_key(|o| o.as_str());
        assert_eq!(
            got,
            vec![Outcome::Applied, Outcome::Duplicate],
            "two copies of {id}: applied once, the other a duplicate"
        );
    }
    let unknown_id = unknown["event_id"].as_str().expect("event id");
    assert_eq!(
        outcomes.remove(unknown_id),
        Some(vec![Outcome::DeadLettered]),
        "an unknown product is parked"
    );
    let dead: Vec<&Outcome> = outcomes
        .values()
        .flatten()
        .filter(|o| **o == Outcome::DeadLettered)
        .collect();
    assert_eq!(dead.len(), 1, "the unreadable body is parked, nothing else");
    assert!(
        outcomes
            .values()
            .flatten()
            .filter(|o| **o != Outcome::DeadLettered)
            .all(|o| *o == Outcome::Applied),
        "every other sync applied: {outcomes:?}"
    );
    assert_eq!(
        failed_batches(addr).await,
        0.0,
        "no batch fell back to one-by-one"
    );
    let parked = w.dead_letters("parked").await.expect("dead letters");
    assert_eq!(parked.len(), 2, "{parked:?}");

    let wrong = skeelo_tests::wrong_at_skeelo(&w.sim, &histories);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(w.sim.anomalies().is_empty(), "{:?}", w.sim.anomalies());
    assert_eq!(
        w.sim.request_count("create_subscription", 201),
        40,
        "one create per contract, the copies made none"
    );
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contracts_events_in_one_batch_apply_in_order() {
    let mut w = World::new().await.expect("world");
    // Each queue holds one type, so a contract has several events in one batch when it
    // has several events of one type: two suspensions and two reactivations here, all
    // waiting in a shuffled backlog.
    let mut histories: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut events = Vec::new();
    for c in 0..30 {
        let id = format!("ORDER{c:03}");
        let mut h = vec![
            ev(Sync, &id, 1),
            ev(Suspend, &id, 2),
            ev(Reactivate, &id, 3),
            ev(Suspend, &id, 4),
        ];
        if c % 2 == 0 {
            h.push(ev(Reactivate, &id, 5));
        }
        events.extend(h.iter().cloned());
        histories.insert(id, h);
    }
    events.shuffle(&mut rand::rng());
    let addr = backlog_then_fleet(&mut w, &events).await;
    let results = w.wait_results(events.len(), WAIT).await.expect("results");
    assert_eq!(
        results.len(),
        events.len(),
        "exactly one result per delivery"
    );
    let (_, suspensions) = batches(addr, "suspend").await;
    let (_, reactivations) = batches(addr, "reactivate").await;
    assert!(
        suspensions + reactivations >= 1.0,
        "batches of several deliveries"
    );
    assert_eq!(
        failed_batches(addr).await,
        0.0,
        "no batch fell back to one-by-one"
    );
    let wrong = skeelo_tests::wrong_at_skeelo(&w.sim, &histories);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(w.sim.anomalies().is_empty(), "{:?}", w.sim.anomalies());
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_inside_batches_end_right() {
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    let mut rng = rand::rng();
    let mut histories = BTreeMap::new();
    let mut all = Vec::new();
    for c in 0..80 {
        let id = format!("BFAIL{c:03}");
        let h = sample::history(&mut rng, &id, 5);
        all.extend(h.iter().cloned());
        histories.insert(id, h);
    }
    all.shuffle(&mut rng);
    let mut settings = w.settings();
    settings.prefetch = 64;
    w.start_fleet(settings.clone()).await.expect("fleet");
    w.stop_fleets().await.expect("stopped");
    for e in &all {
        w.publish(e).await.expect("published");
    }
    // One call in five fails: most batches hand some event to the one-event path.
    w.sim.set_faults(Faults {
        error_rate: 0.2,
        ..Faults::default()
    });
    let addr = w.start_fleet(settings).await.expect("fleet again");
    let results = w.wait_results(all.len(), WAIT).await.expect("results");
    assert_eq!(results.len(), all.len(), "exactly one result per delivery");
    assert!(
        results.iter().all(|r| r.outcome != Outcome::DeadLettered),
        "no valid event parked: {:?}",
        results.iter().find(|r| r.outcome == Outcome::DeadLettered)
    );
    let several: f64 = {
        let mut n = 0.0;
        for t in EventType::ALL {
            n += batches(addr, t.as_str()).await.1;
        }
        n
    };
    assert!(several >= 1.0, "batches of several deliveries");
    assert!(
        w.sim.request_count("create_subscription", 503) + w.sim.request_count("set_status", 503)
            > 0,
        "the injected failures really happened"
    );
    let wrong = skeelo_tests::wrong_at_skeelo(&w.sim, &histories);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(w.sim.anomalies().is_empty(), "{:?}", w.sim.anomalies());
    w.close().await.expect("cleanup");
}
