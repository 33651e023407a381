//! One queue the broker refuses stops only its own type: an operator declared
//! `erp.contracts.sync` by hand with other arguments (a classic queue), and the fleet
//! still handles every other type, names the sync queue in `/readyz` and in
//! `skeelo_queue_unavailable`, and takes the queue up by itself once it is fixed.

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use skeelo_domain::event::EventType::{self, *};
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(30);

fn ev(t: EventType, contract: &str, version: i64) -> serde_json::Value {
    sample::event(t, contract, version, &["SKEELO-EBOOKS"])
}

#[tokio::test]
async fn a_queue_the_broker_refuses_stops_only_its_own_type() {
    let mut w = World::new().await.expect("world");
    let operator = skeelo_broker::connect(&w.amqp_url, "operator")
        .await
        .expect("connected");
    let channel = operator.create_channel().await.expect("channel");
    channel
        .queue_declare(
            "erp.contracts.sync".into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("a classic queue where the fleet wants a quorum queue");

    let addr = w
        .start_fleet_unready(w.settings())
        .await
        .expect("the fleet starts");
    let others: Vec<_> = [Suspend, Reactivate, Cancel, Block, Unblock]
        .into_iter()
        .enumerate()
        .map(|(i, t)| ev(t, &format!("I{i}"), 2))
        .collect();
    for e in &others {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(&others, WAIT)
        .await
        .expect("the other five types are handled");
    assert!(others.iter().all(|e| w
        .result_for(e)
        .is_some_and(|r| r.outcome != Outcome::DeadLettered)));

    let readiness = World::readiness(addr).await;
    assert!(
        readiness.contains("queue erp.contracts.sync: unavailable (precondition_failed)"),
        "{readiness}"
    );
    let status = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .expect("readyz")
        .status();
    assert_eq!(status.as_u16(), 503, "not ready while a queue is refused");
    let series =
        r#"skeelo_queue_unavailable{queue="erp.contracts.sync",reason="precondition_failed"}"#;
    assert_eq!(World::metric(addr, series).await.expect("metric"), 1.0);

    // The operator removes the wrong queue: the fleet declares it as it should be.
    channel
        .queue_delete("erp.contracts.sync".into(), QueueDeleteOptions::default())
        .await
        .expect("deleted");
    let mut ready = false;
    for _ in 0..200 {
        if !World::readiness(addr).await.contains("unavailable") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the sync queue is taken up again by itself");
    assert_eq!(World::metric(addr, series).await.expect("metric"), 0.0);
    let sync = ev(Sync, "I9", 1);
    w.publish(&sync).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("the sync is handled");
    assert_eq!(
        w.result_for(&sync).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    let _ = operator.close(200, "done".into()).await;
    w.close().await.expect("cleanup");
}
