//! 300 contracts with random histories, published in random order, against a Skeelo
//! that fails 5 % of its calls: every contract ends right at Skeelo, every event gets a
//! result, and Skeelo saw no call that a correct client would not make.

use std::time::Duration;

use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_random_contracts_in_random_order_with_failing_skeelo_all_end_right() {
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    w.sim.set_faults(Faults {
        error_rate: 0.05,
        latency_ms: 0,
        down: false,
        rate_per_second: None,
        ..Faults::default()
    });
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");

    let (histories, all) = skeelo_tests::random_histories(300, "RND");
    for e in &all {
        w.publish(e).await.expect("published");
    }
    let results = w
        .wait_results(all.len(), Duration::from_secs(240))
        .await
        .expect("every event gets a result");
    assert_eq!(results.len(), all.len(), "exactly one result per delivery");
    assert!(
        results
            .iter()
            .all(|r| r.outcome.as_str() != "dead_lettered"),
        "no valid event may be dead-lettered: {:?}",
        results
            .iter()
            .find(|r| r.outcome.as_str() == "dead_lettered")
    );

    let wrong = skeelo_tests::wrong_at_skeelo(&w.sim, &histories);
    assert!(
        wrong.is_empty(),
        "{} contracts wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        w.sim.anomalies().is_empty(),
        "calls a correct client never makes: {:?}",
        w.sim.anomalies()
    );
    assert!(
        w.sim.request_count("create_subscription", 503) + w.sim.request_count("set_status", 503)
            > 0,
        "the injected failures really happened"
    );
    w.close().await.expect("cleanup");
}
