//! The partner rate, fleet-wide: several processes together stay under it, and a wave
//! of one event type does not make a new customer wait behind it.

use std::num::NonZeroU32;
use std::time::Duration;

use skeelo_domain::event::EventType::*;
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_sim::SimConfig;
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_one_partner_rate_and_never_draw_a_429() {
    let rate = 20;
    let mut w = World::with_sim(SimConfig {
        rate_per_second: Some(rate),
        ..SimConfig::default()
    })
    .await
    .expect("world");
    for _ in 0..3 {
        let mut settings = w.settings();
        settings.rate_per_second = NonZeroU32::new(rate);
        w.start_fleet(settings).await.expect("fleet");
    }
    let events: Vec<_> = (0..120)
        .map(|i| sample::event(Sync, &format!("RT{i:03}"), 1, &["SKEELO-EBOOKS"]))
        .collect();
    for e in &events {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(&events, WAIT).await.expect("all applied");
    assert!(w.results().iter().all(|r| r.outcome == Outcome::Applied));
    let throttled: u64 = ["token", "list_products", "create_subscription"]
        .iter()
        .map(|op| w.sim.request_count(op, 429))
        .sum();
    assert_eq!(throttled, 0, "the fleet stayed under the partner rate");
    let busiest = w.sim.max_accepted_in_one_second();
    assert!(
        busiest <= u64::from(rate),
        "{busiest} calls in one second, over {rate}"
    );
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_customer_does_not_wait_behind_a_wave_of_suspensions() {
    let mut w = World::new().await.expect("world");
    // Contracts that exist at Skeelo, so that suspending them costs a call each.
    let synced: Vec<_> = (0..120)
        .map(|i| sample::event(Sync, &format!("WV{i:03}"), 1, &["SKEELO-EBOOKS"]))
        .collect();
    let settings = w.settings();
    w.start_fleet(settings).await.expect("unlimited fleet");
    for e in &synced {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(&synced, WAIT).await.expect("synced");
    w.stop_fleets().await.expect("stopped");

    // The monthly arrears run: every contract suspended at once, at 20 calls/s.
    let wave: Vec<_> = (0..120)
        .map(|i| sample::event(Suspend, &format!("WV{i:03}"), 2, &[]))
        .collect();
    for e in &wave {
        w.publish(e).await.expect("published");
    }
    let mut settings = w.settings();
    settings.rate_per_second = NonZeroU32::new(20);
    w.start_fleet(settings).await.expect("paced fleet");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut signups = Vec::new();
    for i in 0..4 {
        let e = sample::event(Sync, &format!("NEW{i}"), 1, &["SKEELO-AUDIOBOOKS"]);
        w.publish(&e).await.expect("published");
        w.wait_for_events(std::slice::from_ref(&e), WAIT)
            .await
            .expect("signed up");
        let waiting = wave.iter().filter(|s| w.result_for(s).is_none()).count();
        assert!(
            waiting >= 20,
            "sign-up {i} came after the wave ({waiting} suspensions left)"
        );
        signups.push(e);
    }
    w.wait_for_events(&wave, WAIT)
        .await
        .expect("the wave drains");
    assert!(w.results().iter().all(|r| r.outcome == Outcome::Applied));
    w.close().await.expect("cleanup");
}
