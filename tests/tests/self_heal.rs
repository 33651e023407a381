//! Dead letters that requeue themselves once their cause clears, through the real
//! broker, database and partner fake: a letter waiting for a product is applied once
//! Skeelo sells it, one whose attempts ran out while Skeelo failed once Skeelo answers
//! again, each at most once per change of its cause; invalid input stays for people.

use std::time::{Duration, Instant};

use skeelo_domain::event::EventType::*;
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_sim::Faults;
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(60);
const SWEEP: Duration = Duration::from_millis(300);

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The letters' states and who requeued them, by error class.
async fn letters(w: &World) -> Vec<(String, String, Option<String>)> {
    let db = w.db().await.expect("db");
    db.query(
        "SELECT error_class, state, requeued_by FROM dead_letters ORDER BY id",
        &[],
    )
    .await
    .expect("letters")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_waiting_for_a_product_is_applied_once_skeelo_sells_it() {
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.self_heal = Some(SWEEP);
    let addr = w.start_fleet(settings).await.expect("fleet");
    let kids = sample::event(Sync, "SH1", 1, &["SKEELO-EBOOKS", "SKEELO-KIDS"]);
    let broken = serde_json::json!({"event_id": "not-a-uuid", "type": "sync"});
    w.publish(&kids).await.expect("published");
    w.publish(&broken).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&kids), WAIT)
        .await
        .expect("a result");
    assert_eq!(
        w.result_for(&kids).map(|r| r.outcome),
        Some(Outcome::DeadLettered)
    );
    until("both parked", async || letters(&w).await.len() == 2).await;
    // Several sweeps while Skeelo still does not sell it: it stays parked.
    tokio::time::sleep(SWEEP * 5).await;
    assert!(
        letters(&w)
            .await
            .iter()
            .all(|(_, state, _)| state == "parked"),
        "{:?}",
        letters(&w).await
    );

    w.sim.add_product("SKEELO-KIDS", "Skeelo Kids");
    until(
        "the subscription created with the new product",
        async || {
            w.sim
                .subscription("SH1")
                .is_some_and(|s| s.products.iter().any(|p| p == "SKEELO-KIDS"))
        },
    )
    .await;
    until("a second result, applied", async || {
        w.results()
            .iter()
            .any(|r| r.contract_id.as_deref() == Some("SH1") && r.outcome == Outcome::Applied)
    })
    .await;
    let all = letters(&w).await;
    assert!(
        all.contains(&(
            "unknown_product".into(),
            "requeued".into(),
            Some("fleet (catalogue cleared)".into())
        )),
        "{all:?}"
    );
    // Invalid input stays for people, whatever the probes say.
    assert!(
        all.iter()
            .any(|(class, state, _)| class != "unknown_product" && state == "parked"),
        "{all:?}"
    );
    let db = w.db().await.expect("db");
    let audit: Vec<(String, String, i32)> = db
        .query(
            "SELECT operator, target, count FROM operator_actions WHERE action = 'requeue'",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "fleet");
    assert!(audit[0].1.contains("product Skeelo now sells"), "{audit:?}");
    assert_eq!(audit[0].2, 1);
    assert_eq!(
        World::metric(
            addr,
            r#"skeelo_dead_letters_self_requeued_total{cause="catalogue"}"#
        )
        .await
        .expect("metric"),
        1.0
    );
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_whose_attempts_ran_out_is_applied_once_skeelo_answers_again() {
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.retry.max_attempts = 2;
    settings.outage.trip.consecutive = 10_000;
    settings.outage.trip.min_calls = 10_000;
    settings.self_heal = Some(SWEEP);
    w.start_fleet(settings).await.expect("fleet");
    w.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let sync = sample::event(Sync, "SH2", 1, &["SKEELO-EBOOKS"]);
    w.publish(&sync).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("a result");
    assert_eq!(
        w.result_for(&sync).map(|r| r.outcome),
        Some(Outcome::DeadLettered)
    );
    // While Skeelo keeps failing, the probe fails too: it stays parked.
    tokio::time::sleep(SWEEP * 5).await;
    assert_eq!(
        w.dead_letters("parked").await.expect("letters"),
        vec![("exhausted".into(), "transient".into())]
    );
    w.sim.set_faults(Faults::default());
    until("the subscription created", async || {
        w.sim.subscription("SH2").is_some()
    })
    .await;
    assert_eq!(
        letters(&w).await,
        vec![(
            "transient".into(),
            "requeued".into(),
            Some("fleet (partner cleared)".into())
        )]
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_message_is_requeued_by_the_fleet_at_most_once_per_change_of_its_cause() {
    let w = World::new().await.expect("world");
    let store = skeelo_store::Store::connect(&w.database_url, 2).expect("store");
    store.migrate().await.expect("migrated");
    let db = w.db().await.expect("db");
    let park = async || -> i64 {
        db.query_one(
            "INSERT INTO dead_letters (message_key, type, routing_key, body, reason,
                 error_class, last_error)
             VALUES ('m-1', 'sync', 'contract.sync', '\\x7b7d', 'exhausted', 'transient', 'x')
             RETURNING id",
            &[],
        )
        .await
        .expect("parked")
        .get(0)
    };
    let first = park().await;
    assert!(!store
        .requeued_under("m-1", "partner:t1")
        .await
        .expect("read"));
    assert!(store
        .mark_auto_requeued(first, "partner:t1", "fleet")
        .await
        .expect("mark"));
    // The same message fails again for the same cause: not again under t1.
    let again = park().await;
    assert!(store
        .requeued_under("m-1", "partner:t1")
        .await
        .expect("read"));
    // The cause changed (Skeelo went down and came back): once more.
    assert!(!store
        .requeued_under("m-1", "partner:t2")
        .await
        .expect("read"));
    assert!(store
        .mark_auto_requeued(again, "partner:t2", "fleet")
        .await
        .expect("mark"));
    // Marked once: a second process that sent the same copy learns it was first.
    assert!(!store
        .mark_auto_requeued(again, "partner:t2", "fleet")
        .await
        .expect("mark"));
    // A cause's state keeps its time until it changes.
    let up = store.cause_state("partner", "up").await.expect("state");
    assert_eq!(store.cause_state("partner", "up").await.expect("state"), up);
    store.cause_state("partner", "down").await.expect("state");
    assert!(store.cause_state("partner", "up").await.expect("state") > up);
    w.close().await.expect("cleanup");
}
