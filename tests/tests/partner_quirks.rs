//! Partners as they really are: an OAuth server that writes numbers as strings, and a
//! partner that throttles with `Retry-After: 0`. The fleet forgives the first and does
//! not flood the second; every valid event is applied either way.

use std::time::Duration;

use skeelo_domain::event::EventType::Sync;
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(60);

fn syncs(prefix: &str, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| sample::event(Sync, &format!("{prefix}{i}"), 1, &["SKEELO-EBOOKS"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_expires_in_is_a_string_is_accepted() {
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    w.sim.set_faults(Faults {
        expires_in_as_string: true,
        ..Faults::default()
    });
    w.start_fleet(w.settings()).await.expect("fleet");
    let events = syncs("TQ", 5);
    for e in &events {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(&events, WAIT).await.expect("results");
    for e in &events {
        assert_eq!(w.result_for(e).map(|r| r.outcome), Some(Outcome::Applied));
    }
    assert!(w.dead_letters("parked").await.expect("dead").is_empty());
    assert_eq!(w.sim.request_count("token", 200), 1, "one token, kept");
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_throttling_with_retry_after_zero_is_not_flooded() {
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    let mut settings = w.settings();
    settings.rate_per_second = None;
    w.start_fleet(settings).await.expect("fleet");
    let normal = w.sim.faults();
    w.sim.set_faults(Faults {
        throttle_all: true,
        retry_after: Some("0".into()),
        ..normal.clone()
    });
    let before = w.sim.total_requests();
    let events = syncs("RA", 10);
    for e in &events {
        w.publish(e).await.expect("published");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = w.sim.total_requests() - before;
    eprintln!("{during} requests in 3 s to a partner answering 429 with Retry-After: 0");
    assert!(
        (1..=300).contains(&during),
        "{during} requests in 3 s to a partner answering 429 with Retry-After: 0"
    );
    w.sim.set_faults(normal);
    w.wait_for_events(&events, WAIT).await.expect("results");
    for e in &events {
        assert_eq!(w.result_for(e).map(|r| r.outcome), Some(Outcome::Applied));
    }
    assert!(w.dead_letters("parked").await.expect("dead").is_empty());
    w.close().await.expect("cleanup");
}
