//! The lifecycle rules of CONTRACT §2 as user stories, through the real broker and
//! database, with the simulator as Skeelo.

use std::time::Duration;

use serde_json::{json, Value};
use skeelo_domain::event::EventType::{self, *};
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(30);

fn ev(t: EventType, contract: &str, version: i64) -> Value {
    sample::event(t, contract, version, &["SKEELO-EBOOKS"])
}

async fn world() -> World {
    let mut w = World::new().await.expect("a test world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("the fleet starts");
    w
}

/// Publishes one by one, waiting for each result, so the order is exactly the one given.
async fn deliver_in_order(w: &World, events: &[Value]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for e in events {
        let before = w.results().len();
        w.publish(e).await.expect("published");
        w.wait_results(before + 1, WAIT).await.expect("a result");
        outcomes.push(w.result_for(e).expect("its own result").outcome);
    }
    outcomes
}

#[tokio::test]
async fn the_erp_syncs_a_new_contract_and_skeelo_has_it_active() {
    let w = world().await;
    let sync = sample::event(Sync, "48213", 1, &["SKEELO-EBOOKS", "SKEELO-AUDIOBOOKS"]);
    let outcomes = deliver_in_order(&w, std::slice::from_ref(&sync)).await;
    assert_eq!(outcomes, vec![Outcome::Applied]);
    let r = w.result_for(&sync).expect("result");
    assert_eq!(r.contract_id.as_deref(), Some("48213"));
    assert_eq!(r.event_type, "sync");
    assert_eq!(r.skeelo_status.map(|s| s.as_str()), Some("active"));
    let sub = w.sim.subscription("48213").expect("created at Skeelo");
    assert_eq!(sub.status, "active");
    let mut products = sub.products.clone();
    products.sort();
    assert_eq!(products, vec!["SKEELO-AUDIOBOOKS", "SKEELO-EBOOKS"]);
    assert_eq!(
        sub.document,
        sync["subscriber"]["document"]
            .as_str()
            .map(|d| d.replace(['.', '-'], ""))
            .unwrap_or_default()
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn one_contracts_events_delivered_in_reverse_order_end_as_in_order() {
    let w = world().await;
    let history = [
        sample::event(Sync, "R1", 1, &["SKEELO-EBOOKS"]),
        ev(Suspend, "R1", 2),
        ev(Block, "R1", 3),
        ev(Reactivate, "R1", 4),
        sample::event(Sync, "R1", 5, &["SKEELO-EBOOKS", "SKEELO-MINIBOOKS"]),
    ];
    let reversed: Vec<Value> = history.iter().rev().cloned().collect();
    let outcomes = deliver_in_order(&w, &reversed).await;
    // sync v5 creates; reactivate v4 applies; block v3 applies; suspend v2 and sync v1 are late.
    assert_eq!(
        outcomes,
        vec![
            Outcome::Applied,
            Outcome::Applied,
            Outcome::Applied,
            Outcome::Superseded,
            Outcome::Superseded
        ]
    );
    let sub = w.sim.subscription("R1").expect("created");
    assert_eq!(sub.status, "inactive", "still blocked by hand");
    let mut products = sub.products.clone();
    products.sort();
    assert_eq!(
        products,
        vec!["SKEELO-EBOOKS", "SKEELO-MINIBOOKS"],
        "the newest sync's products"
    );
    assert!(w.sim.anomalies().is_empty(), "{:?}", w.sim.anomalies());
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_suspend_before_its_sync_waits_for_it() {
    let w = world().await;
    let suspend = ev(Suspend, "D1", 2);
    let sync = ev(Sync, "D1", 1);
    let outcomes = deliver_in_order(&w, &[suspend, sync]).await;
    assert_eq!(outcomes, vec![Outcome::Deferred, Outcome::Applied]);
    assert_eq!(
        w.sim.subscription("D1").map(|s| s.status).as_deref(),
        Some("inactive")
    );
    assert_eq!(w.sim.request_count("create_subscription", 201), 1);
    assert_eq!(w.sim.request_count("set_status", 200), 1);
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_reactivate_after_cancel_is_rejected_and_the_erp_told_to_create_a_new_contract() {
    let w = world().await;
    let reactivate = ev(Reactivate, "X1", 4);
    let outcomes = deliver_in_order(
        &w,
        &[
            ev(Sync, "X1", 1),
            ev(Suspend, "X1", 2),
            ev(Cancel, "X1", 3),
            reactivate.clone(),
        ],
    )
    .await;
    assert_eq!(outcomes.last(), Some(&Outcome::Rejected));
    let r = w.result_for(&reactivate).expect("result");
    assert!(r.detail.contains("new contract"), "{}", r.detail);
    assert_eq!(r.skeelo_status.map(|s| s.as_str()), Some("cancelled"));
    assert_eq!(
        w.sim.subscription("X1").map(|s| s.status).as_deref(),
        Some("cancelled")
    );
    assert!(
        w.sim.anomalies().is_empty(),
        "no call after cancel: {:?}",
        w.sim.anomalies()
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_contract_cancelled_before_its_sync_never_reaches_skeelo() {
    let w = world().await;
    let outcomes = deliver_in_order(&w, &[ev(Cancel, "C0", 2), ev(Sync, "C0", 1)]).await;
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Superseded]);
    assert!(w.sim.subscription("C0").is_none());
    assert_eq!(w.sim.request_count("create_subscription", 201), 0);
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_duplicate_event_causes_no_call() {
    let w = world().await;
    let sync = ev(Sync, "DUP", 1);
    let outcomes = deliver_in_order(&w, &[sync.clone(), sync.clone()]).await;
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Duplicate]);
    assert_eq!(w.sim.request_count("create_subscription", 201), 1);
    assert_eq!(w.results().len(), 2, "each delivery gets a result");
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_later_sync_changes_the_products_with_one_update() {
    let w = world().await;
    let first = sample::event(Sync, "P1", 1, &["SKEELO-EBOOKS"]);
    let later = sample::event(Sync, "P1", 2, &["SKEELO-AUDIOBOOKS"]);
    let outcomes = deliver_in_order(&w, &[first, later]).await;
    assert_eq!(outcomes, vec![Outcome::Applied, Outcome::Applied]);
    let sub = w.sim.subscription("P1").expect("created");
    assert_eq!(sub.products, vec!["SKEELO-AUDIOBOOKS"]);
    assert_eq!(w.sim.request_count("update_subscription", 200), 1);
    assert!(w.sim.anomalies().is_empty(), "{:?}", w.sim.anomalies());
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn invalid_messages_are_dead_lettered_with_their_reason_and_never_reach_skeelo() {
    let w = world().await;
    let mut bad_cpf = ev(Sync, "I2", 1);
    bad_cpf["subscriber"]["document"] = json!("529.982.247-26");
    let mut no_version = ev(Suspend, "I3", 1);
    if let Some(c) = no_version["contract"].as_object_mut() {
        c.remove("version");
    }
    let mismatched = ev(Block, "I4", 1);
    let unknown_product = sample::event(Sync, "I5", 1, &["SKEELO-NOPE"]);

    let calls_before = w.sim.total_requests();
    w.publish_raw("contract.sync", "msg-not-json", b"{not json")
        .await
        .expect("published");
    w.publish(&bad_cpf).await.expect("published");
    w.publish(&no_version).await.expect("published");
    let id = mismatched["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    w.publish_raw("contract.unblock", &id, mismatched.to_string().as_bytes())
        .await
        .expect("published");
    w.publish(&unknown_product).await.expect("published");
    let results = w.wait_results(5, WAIT).await.expect("five results");

    let reason_of = |event_id: &str| {
        results
            .iter()
            .find(|r| r.event_id == event_id)
            .map(|r| (r.outcome, r.detail.clone()))
            .unwrap_or((Outcome::Applied, format!("no result for {event_id}")))
    };
    for (event_id, reason) in [
        ("msg-not-json".to_string(), "not_json"),
        (
            bad_cpf["event_id"].as_str().unwrap_or_default().to_string(),
            "invalid_document",
        ),
        (
            no_version["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            "missing_field",
        ),
        (id.clone(), "type_mismatch"),
        (
            unknown_product["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            "unknown_product",
        ),
    ] {
        let (outcome, detail) = reason_of(&event_id);
        assert_eq!(outcome, Outcome::DeadLettered, "{event_id}: {detail}");
        assert!(
            detail.contains(reason),
            "{event_id}: `{detail}` should name {reason}"
        );
    }
    // Only the catalogue refresh for the unknown product may have reached Skeelo.
    assert_eq!(w.sim.request_count("create_subscription", 201), 0);
    assert_eq!(w.sim.request_count("create_subscription", 422), 0);
    assert!(
        w.sim.total_requests() - calls_before <= 2,
        "no subscription call for invalid input"
    );
    // Parked where operators can find them, not lost and not blocking the queues.
    let db = w.db().await.expect("db");
    let rows = db
        .query("SELECT reason, error_class FROM dead_letters WHERE state = 'parked' ORDER BY error_class", &[])
        .await
        .expect("dead letters");
    let parked: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        parked,
        [
            "invalid_document",
            "missing_field",
            "not_json",
            "type_mismatch",
            "unknown_product"
        ]
        .iter()
        .map(|c| ("invalid".to_string(), c.to_string()))
        .collect::<Vec<_>>()
    );
    // The queue keeps flowing after them.
    let ok = ev(Sync, "I6", 1);
    assert_eq!(deliver_in_order(&w, &[ok]).await, vec![Outcome::Applied]);
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn every_event_is_in_the_contracts_history() {
    let w = world().await;
    let events = [
        ev(Sync, "H1", 1),
        ev(Block, "H1", 2),
        ev(Reactivate, "H1", 3),
    ];
    deliver_in_order(&w, &events).await;
    let db = w.db().await.expect("db");
    let rows = db
        .query(
            "SELECT type, outcome, actor FROM contract_events WHERE contract_id = 'H1' ORDER BY id",
            &[],
        )
        .await
        .expect("history");
    let story: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        story,
        vec![
            ("sync".into(), "applied".into()),
            ("block".into(), "applied".into()),
            ("reactivate".into(), "applied".into())
        ]
    );
    let actor: Option<String> = rows[0].get(2);
    assert_eq!(actor.as_deref(), Some("operador.demo"));
    w.close().await.expect("cleanup");
}
