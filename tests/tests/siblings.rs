//! An event of a contract whose last attempt may have left calls to Skeelo unanswered
//! waits until they cannot land any more: past the call budget. With production's
//! delays, that wait is a two-minute delay round. It must be spent only when calls
//! really may still be in flight; a sibling that waits for calls long answered (a
//! plain 503, say) leaves its result two minutes late for nothing. So: the convergence
//! workload, with production's delay rounds and call budget, and every result in a
//! minute.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use skeelo_domain::outcome::Outcome;
use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::World;

/// Every result well before the first two-minute delay round could end.
const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_waits_only_for_calls_that_are_really_in_flight() {
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    w.sim.set_faults(Faults {
        error_rate: 0.05,
        latency_ms: 0,
        down: false,
        rate_per_second: None,
        ..Faults::default()
    });
    let mut settings = w.settings();
    // Production's rounds: a fence of the call budget and a third lands in the 2 m one.
    settings.retry.delays = [1, 5, 30, 120, 600]
        .into_iter()
        .map(Duration::from_secs)
        .collect();
    settings.retry.call_budget = Duration::from_secs(45);
    w.start_fleet(settings).await.expect("fleet");

    let (histories, all) = skeelo_tests::random_histories(300, "SIB");

    let started = Instant::now();
    for e in &all {
        w.publish(e).await.expect("published");
    }
    // Deliveries per event id, and each id's type, to say what is missing.
    let mut deliveries: HashMap<&str, (usize, &str)> = HashMap::new();
    for e in &all {
        let id = e["event_id"].as_str().expect("an event id");
        let t = e["type"].as_str().expect("a type");
        deliveries.entry(id).or_insert((0, t)).0 += 1;
    }
    let results = loop {
        let results = w.results();
        let mut got: HashMap<&str, usize> = HashMap::new();
        for r in &results {
            *got.entry(r.event_id.as_str()).or_default() += 1;
        }
        let mut missing: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, (n, t)) in &deliveries {
            let short = n.saturating_sub(got.get(id).copied().unwrap_or(0));
            if short > 0 {
                *missing.entry(t).or_default() += short;
            }
        }
        if missing.is_empty() {
            break results;
        }
        assert!(
            started.elapsed() < WITHIN,
            "{} of {} deliveries have no result {WITHIN:?} after the first publish \
             (missing by type: {missing:?}); a sibling waited for calls that were no \
             longer in flight",
            missing.values().sum::<usize>(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{} results in {:.1} s from the first publish",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(results.len(), all.len(), "exactly one result per delivery");
    let dead: Vec<_> = results
        .iter()
        .filter(|r| r.outcome == Outcome::DeadLettered)
        .collect();
    assert!(
        dead.is_empty(),
        "no valid event may be dead-lettered: {dead:?}"
    );
    let wrong = skeelo_tests::wrong_at_skeelo(&w.sim, &histories);
    assert!(
        wrong.is_empty(),
        "{} contracts wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        w.sim.request_count("create_subscription", 503) + w.sim.request_count("set_status", 503)
            > 0,
        "the injected failures really happened"
    );
    w.close().await.expect("cleanup");
}
