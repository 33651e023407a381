//! Results that can never be lost or falsified. When the broker will not take a result
//! (its queue was deleted, or it is full and refuses publishes), the event has still
//! been applied at Skeelo: the ERP must hear about it later, once, as `applied`. The
//! event must not be handled again and again, recorded thousands of times, or parked
//! as a dead letter only because its result could not be sent yet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use skeelo_broker::{self as broker, Publisher, RESULTS_EXCHANGE, RESULTS_QUEUE};
use skeelo_domain::event::EventType::*;
use skeelo_domain::outcome::{EventResult, Outcome};
use skeelo_domain::sample;
use skeelo_tests::World;

/// How long a queue's deletion takes to reach its consumers' channels. A queue of the
/// same name declared before that would take the ERP's old consumer over.
const GONE: Duration = Duration::from_secs(1);
/// How long the broker keeps refusing results in each story.
const HELD: Duration = Duration::from_secs(3);
/// How long the results may take once the broker takes them again.
const DELIVERED_WITHIN: Duration = Duration::from_secs(15);
/// How long nothing more may arrive after that.
const QUIET: Duration = Duration::from_secs(2);

/// A world with a fleet, and an operator's connection and channel on its broker.
async fn fleet_and_operator() -> (
    World,
    std::net::SocketAddr,
    lapin::Connection,
    lapin::Channel,
) {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    let addr = w.start_fleet(settings).await.expect("fleet");
    let conn = broker::connect(&w.amqp_url, "erp-test-operator")
        .await
        .expect("connect");
    let channel = conn.create_channel().await.expect("channel");
    (w, addr, conn, channel)
}

#[tokio::test]
async fn a_missing_results_queue_delays_results_but_loses_and_falsifies_nothing() {
    let (w, addr, conn, channel) = fleet_and_operator().await;
    // Someone deletes the results queue; its binding goes with it, so every result the
    // fleet publishes now comes back unroutable.
    channel
        .queue_delete(RESULTS_QUEUE.into(), QueueDeleteOptions::default())
        .await
        .expect("results queue deleted");

    let events = sync_then_suspend(&w, "U1").await;
    tokio::time::sleep(HELD).await;
    held_without_harm(&w, addr, "U1", &events).await;

    // The queue comes back as the fleet declares it; the ERP listens on it again.
    declare_results_queue(&channel).await;
    let erp = Erp::listen(&conn).await;
    each_applied_exactly_once(&erp, &events).await;
    let _ = conn.close(200, "done".into()).await;
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_broker_that_nacks_results_delays_them_and_then_delivers_each_once() {
    let (w, addr, conn, channel) = fleet_and_operator().await;
    // A full queue holds its messages: nobody may be consuming it. The ERP's consumer
    // goes with the queue, which comes back, as the fleet declares it, once the
    // deletion has reached that consumer.
    channel
        .queue_delete(RESULTS_QUEUE.into(), QueueDeleteOptions::default())
        .await
        .expect("results queue deleted");
    tokio::time::sleep(GONE).await;
    declare_results_queue(&channel).await;
    // One message waiting, and a limit of zero: every further publish is nacked.
    let filler = Publisher::open(&conn).await.expect("publisher");
    filler
        .publish_json(
            RESULTS_EXCHANGE,
            "result.filler",
            "filler",
            b"{\"filler\":true}",
        )
        .await
        .expect("the filler is taken");
    rabbitmqctl(&[
        "set_policy",
        "-p",
        &w.vhost,
        "--apply-to",
        "queues",
        "results-full",
        r"^erp\.results$",
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = filler
            .publish_json(
                RESULTS_EXCHANGE,
                "result.filler",
                "probe",
                b"{\"filler\":true}",
            )
            .await;
        if matches!(probe, Err(broker::BrokerError::Nacked)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never started refusing results: {probe:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let events = sync_then_suspend(&w, "U2").await;
    tokio::time::sleep(HELD).await;
    held_without_harm(&w, addr, "U2", &events).await;

    // The queue takes results again. A quorum queue lets the publishers it refused go
    // only when it falls below a limit it still has; clearing the policy alone would
    // leave them refused. So the limit is raised first, then the policy goes.
    rabbitmqctl(&[
        "set_policy",
        "-p",
        &w.vhost,
        "--apply-to",
        "queues",
        "results-full",
        r"^erp\.results$",
        r#"{"max-length":1000000,"overflow":"reject-publish"}"#,
    ]);
    rabbitmqctl(&["clear_policy", "-p", &w.vhost, "results-full"]);
    // The ERP listens again and drains the filler with the results.
    let erp = Erp::listen(&conn).await;
    each_applied_exactly_once(&erp, &events).await;
    assert!(erp.others() >= 1, "the filler was drained too");
    let _ = conn.close(200, "done".into()).await;
    w.close().await.expect("cleanup");
}

/// Publishes a sync, waits until Skeelo holds it, then a suspend (so that the suspend
/// applies rather than waits for its sync): both are `applied` when all goes well.
async fn sync_then_suspend(w: &World, contract: &str) -> Vec<Value> {
    let sync = sample::event(Sync, contract, 1, &["SKEELO-EBOOKS"]);
    w.publish(&sync).await.expect("published");
    let deadline = Instant::now() + Duration::from_secs(15);
    while w.sim.subscription(contract).is_none() {
        assert!(
            Instant::now() < deadline,
            "the sync of {contract} never reached Skeelo"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let suspend = sample::event(Suspend, contract, 2, &["SKEELO-EBOOKS"]);
    w.publish(&suspend).await.expect("published");
    vec![sync, suspend]
}

/// While the broker refuses results: Skeelo has what the events call for, the
/// contract's story stays short, and nothing was dead-lettered.
async fn held_without_harm(w: &World, addr: SocketAddr, contract: &str, events: &[Value]) {
    assert_eq!(
        skeelo_tests::at_skeelo(&w.sim, contract),
        skeelo_tests::expected(events),
        "the events are applied at Skeelo even though their results wait"
    );
    let rows: i64 = w
        .db()
        .await
        .expect("db")
        .query_one(
            "SELECT count(*) FROM contract_events WHERE contract_id = $1",
            &[&contract],
        )
        .await
        .expect("count")
        .get(0);
    assert!(
        rows <= 4,
        "{rows} rows in contract_events for {contract} after {HELD:?}: the events were \
         handled again and again because their results could not be sent"
    );
    assert_eq!(
        w.dead_letters("parked").await.expect("dead letters"),
        Vec::<(String, String)>::new(),
        "a valid, applied event was parked because its result could not be sent"
    );
    assert_eq!(
        w.dead_queue_len().await.expect("dead queue"),
        0,
        "RabbitMQ dead-lettered an applied event because its result could not be sent"
    );
    assert_eq!(
        dead_letters_total(addr).await,
        0.0,
        "skeelo_dead_letters_total counts dead letters that never should have been"
    );
}

/// Every event gets one result, `applied`, and then nothing more arrives.
async fn each_applied_exactly_once(erp: &Erp, events: &[Value]) {
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().expect("an event id"))
        .collect();
    let deadline = Instant::now() + DELIVERED_WITHIN;
    loop {
        let results = erp.results();
        if ids
            .iter()
            .all(|id| results.iter().any(|r| r.event_id == *id))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every event got a result within {DELIVERED_WITHIN:?} of the broker taking \
             results again; got {results:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(QUIET).await;
    let results = erp.results();
    let mut by_event: BTreeMap<&str, Vec<Outcome>> = BTreeMap::new();
    for r in &results {
        by_event
            .entry(r.event_id.as_str())
            .or_default()
            .push(r.outcome);
    }
    for (id, e) in ids.iter().zip(events) {
        assert_eq!(
            by_event.get(id).map(Vec::as_slice),
            Some(&[Outcome::Applied][..]),
            "the {} of {} must get exactly one result, `applied`; all results: {results:?}",
            e["type"],
            e["contract"]["id"]
        );
    }
    assert_eq!(
        results.len(),
        ids.len(),
        "results for events nobody published: {results:?}"
    );
}

/// The ERP's side, listening on a results queue that came back: the harness's own
/// consumer went with the queue it consumed from.
struct Erp {
    results: Arc<Mutex<Vec<EventResult>>>,
    others: Arc<AtomicUsize>,
}

impl Erp {
    async fn listen(conn: &lapin::Connection) -> Erp {
        let channel = conn.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                RESULTS_QUEUE.into(),
                "erp-test-results-again".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consuming the results again");
        let erp = Erp {
            results: Arc::new(Mutex::new(Vec::new())),
            others: Arc::new(AtomicUsize::new(0)),
        };
        let (results, others) = (erp.results.clone(), erp.others.clone());
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(d)) = consumer.next().await {
                match serde_json::from_slice::<EventResult>(&d.data) {
                    Ok(r) => {
                        if let Ok(mut v) = results.lock() {
                            v.push(r);
                        }
                    }
                    Err(_) => {
                        others.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _ = d.ack(BasicAckOptions::default()).await;
            }
        });
        erp
    }

    fn results(&self) -> Vec<EventResult> {
        self.results.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Messages on the queue that are not results (the filler).
    fn others(&self) -> usize {
        self.others.load(Ordering::SeqCst)
    }
}

/// `erp.results` as the fleet declares it: a durable quorum queue bound to the results
/// exchange for every result.
async fn declare_results_queue(channel: &lapin::Channel) {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(RESULTS_QUEUE.into(), QueueDeclareOptions::durable(), args)
        .await
        .expect("results queue declared");
    let again = channel
        .queue_declare(
            RESULTS_QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("results queue there");
    assert_eq!(
        again.consumer_count(),
        0,
        "a consumer of the deleted queue came back on the new one"
    );
    channel
        .queue_bind(
            RESULTS_QUEUE.into(),
            RESULTS_EXCHANGE.into(),
            "result.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("results queue bound");
}

/// The sum of every `skeelo_dead_letters_total` series a fleet shows.
async fn dead_letters_total(addr: SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| {
            l.starts_with("skeelo_dead_letters_total{")
                || l.starts_with("skeelo_dead_letters_total ")
        })
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("running rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
