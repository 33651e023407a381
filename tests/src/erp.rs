//! The ERP's side for tests in which the broker goes away (a restart, a cluster node
//! stopped): a publisher and a results reader that connect again by themselves, and the
//! end-state check those tests share.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use skeelo_broker::{self as broker, Publisher, EVENTS_EXCHANGE, RESULTS_QUEUE};
use skeelo_domain::outcome::{EventResult, Outcome};
use skeelo_sim::SimHandle;

/// Publishes every event with confirms to any node of `amqp_url` (one broker or a
/// cluster's), `pause` apart, connecting again — to the next node — when one goes away;
/// an event whose confirm was lost is published again, as a real publisher would.
pub async fn publish_all(amqp_url: &str, events: &[Value], pause: Duration) {
    let mut i = 0;
    let mut node = 0;
    while i < events.len() {
        let attempt = async {
            let (conn, at) = broker::connect_from(amqp_url, "erp-test", node, false).await?;
            node = at;
            let publisher = Publisher::open(&conn).await?;
            while i < events.len() {
                let e = &events[i];
                let key = format!("contract.{}", e["type"].as_str().unwrap_or("sync"));
                let id = e["event_id"].as_str().unwrap_or_default();
                publisher
                    .publish_json(EVENTS_EXCHANGE, &key, id, e.to_string().as_bytes())
                    .await?;
                i += 1;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            let _ = conn.close(200, "done".into()).await;
            Ok::<(), anyhow::Error>(())
        };
        if attempt.await.is_err() {
            node += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Starts consuming the results queue on `channel`, as the ERP does.
pub async fn consume_results(
    channel: &lapin::Channel,
    tag: &str,
) -> lapin::Result<lapin::Consumer> {
    channel
        .basic_consume(
            RESULTS_QUEUE.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Collects what `consumer` delivers into `results`, acknowledging each, until it ends.
pub async fn collect(mut consumer: lapin::Consumer, results: &Mutex<Vec<EventResult>>) {
    while let Some(Ok(d)) = consumer.next().await {
        if let Ok(r) = serde_json::from_slice::<EventResult>(&d.data) {
            if let Ok(mut v) = results.lock() {
                v.push(r);
            }
        }
        let _ = d.ack(BasicAckOptions::default()).await;
    }
}

/// Reads the results into `results` for the rest of the test, connecting again (to the
/// next node) when the broker goes away.
pub fn read_results(amqp_url: String, results: Arc<Mutex<Vec<EventResult>>>) {
    tokio::spawn(async move {
        let mut node = 0;
        loop {
            let session = async {
                let (conn, at) =
                    broker::connect_from(&amqp_url, "erp-test-results", node, false).await?;
                node = at;
                let channel = conn.create_channel().await?;
                collect(
                    consume_results(&channel, "erp-test-results").await?,
                    &results,
                )
                .await;
                Ok::<(), anyhow::Error>(())
            };
            let _ = session.await;
            node += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

/// Waits up to `limit` for a result for every event of `all`, then checks the end:
/// no valid event dead-lettered, every contract of `histories` right at Skeelo, and no
/// call a correct client never makes.
pub async fn assert_all_right(
    sim: &SimHandle,
    all: &[Value],
    histories: &BTreeMap<String, Vec<Value>>,
    results: &Mutex<Vec<EventResult>>,
    limit: Duration,
) {
    let wanted: HashSet<String> = all
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_string))
        .collect();
    let deadline = Instant::now() + limit;
    loop {
        let got: HashSet<String> = results
            .lock()
            .map(|v| v.iter().map(|r| r.event_id.clone()).collect())
            .unwrap_or_default();
        let missing = wanted.difference(&got).count();
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} events have no result");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dead: Vec<EventResult> = results
        .lock()
        .map(|v| {
            v.iter()
                .filter(|r| r.outcome == Outcome::DeadLettered)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    assert!(dead.is_empty(), "valid events were dead-lettered: {dead:?}");
    let wrong = crate::wrong_at_skeelo(sim, histories);
    assert!(
        wrong.is_empty(),
        "{} contracts wrong at Skeelo:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        sim.anomalies().is_empty(),
        "calls a correct client never makes: {:?}",
        sim.anomalies()
    );
}
