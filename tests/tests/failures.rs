//! Each failure class, through the real broker and database: what is retried, what
//! waits without spending attempts, what is parked, and that nothing is lost.

use std::time::Duration;

use skeelo_domain::event::EventType::*;
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(60);

fn faults(error_rate: f64, down: bool, rate: Option<u32>) -> Faults {
    Faults {
        error_rate,
        latency_ms: 0,
        down,
        rate_per_second: rate,
        ..Faults::default()
    }
}

/// The fleet reads Skeelo's catalogue when it judges its first sync: one applied sync
/// before Skeelo is made to fail, so that the failures under test are the event's own.
async fn catalogue_read(w: &World) {
    let warm = sample::event(Sync, "WARM", 1, &["SKEELO-EBOOKS", "SKEELO-MINIBOOKS"]);
    w.publish(&warm).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&warm), WAIT)
        .await
        .expect("the catalogue read");
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_then_applies() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    let addr = w.start_fleet(settings).await.expect("fleet");
    catalogue_read(&w).await;
    w.sim.set_faults(faults(1.0, false, None));
    let sync = sample::event(Sync, "TR1", 1, &["SKEELO-EBOOKS"]);
    w.publish(&sync).await.expect("published");
    // Wait until it has failed a few times, then let Skeelo answer.
    // (After the first failed create, each try first reads the subscription back:
    // the create may have reached Skeelo.)
    let failed = |w: &World| {
        w.sim.request_count("create_subscription", 503)
            + w.sim.request_count("get_subscription", 503)
    };
    for _ in 0..200 {
        if failed(&w) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed(&w) >= 4);
    w.sim.set_faults(faults(0.0, false, None));
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("applied at last");
    assert_eq!(
        w.result_for(&sync).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    assert!(
        World::metric(addr, r#"skeelo_retries_total{type="sync"}"#)
            .await
            .expect("metric")
            >= 1.0
    );
    assert!(w.dead_letters("parked").await.expect("dead").is_empty());
    let told = w
        .results()
        .iter()
        .filter(|r| r.contract_id.as_deref() == Some("TR1"))
        .count();
    assert_eq!(told, 1, "one result, once it applied");
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_failure_that_never_ends_is_parked_after_the_last_attempt() {
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.retry.max_attempts = 3;
    // A failure of this one event, not an outage: keep outage mode out of the way.
    settings.outage.trip.consecutive = 10_000;
    settings.outage.trip.min_calls = 10_000;
    let addr = w.start_fleet(settings).await.expect("fleet");
    catalogue_read(&w).await;
    w.sim.set_faults(faults(1.0, false, None));
    let sync = sample::event(Sync, "EX1", 1, &["SKEELO-EBOOKS"]);
    w.publish(&sync).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("a result");
    let r = w.result_for(&sync).expect("result");
    assert_eq!(r.outcome, Outcome::DeadLettered);
    assert!(
        r.detail.contains("gave up after 3 attempts"),
        "{}",
        r.detail
    );
    assert_eq!(
        w.dead_letters("parked").await.expect("dead"),
        vec![("exhausted".into(), "transient".into())]
    );
    // 3 rounds of 3 tries each (1 + 2 immediate): the first a create, the others first
    // read back what the failed create may have left.
    assert_eq!(w.sim.request_count("create_subscription", 503), 1);
    assert_eq!(w.sim.request_count("get_subscription", 503), 8);
    assert_eq!(
        World::metric(addr, r#"skeelo_retries_total{type="sync"}"#)
            .await
            .expect("metric"),
        2.0
    );
    let db = w.db().await.expect("db");
    let row = db
        .query_one(
            "SELECT attempts, first_failed_at < last_failed_at, routing_key FROM dead_letters",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i32>(0), 3);
    assert!(
        row.get::<_, bool>(1),
        "first and last failure times are kept"
    );
    assert_eq!(row.get::<_, String>(2), "contract.sync");
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_refusal_from_skeelo_is_parked_at_once() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    catalogue_read(&w).await;
    // Skeelo stops selling a product the fleet's catalogue still lists.
    w.sim.remove_product("SKEELO-MINIBOOKS");
    let sync = sample::event(Sync, "RF1", 1, &["SKEELO-MINIBOOKS"]);
    w.publish(&sync).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("a result");
    let r = w.result_for(&sync).expect("result");
    assert_eq!(r.outcome, Outcome::DeadLettered);
    assert!(r.detail.contains("unknown_product"), "{}", r.detail);
    assert_eq!(
        w.sim.request_count("create_subscription", 422),
        1,
        "tried once, never again"
    );
    assert_eq!(
        w.dead_letters("parked").await.expect("dead"),
        vec![("refused".into(), "http_422_unknown_product".into())]
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn throttling_waits_without_spending_attempts() {
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.retry.max_attempts = 1; // one spent attempt would park the event
    let addr = w.start_fleet(settings).await.expect("fleet");
    w.sim.set_faults(faults(0.0, false, Some(5)));
    let events: Vec<_> = (0..20)
        .map(|i| sample::event(Sync, &format!("TH{i:02}"), 1, &["SKEELO-EBOOKS"]))
        .collect();
    for e in &events {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(&events, WAIT).await.expect("all results");
    assert!(
        w.results().iter().all(|r| r.outcome == Outcome::Applied),
        "{:?}",
        w.results()
            .iter()
            .filter(|r| r.outcome != Outcome::Applied)
            .collect::<Vec<_>>()
    );
    assert!(
        w.sim.request_count("create_subscription", 429) + w.sim.request_count("token", 429) > 0,
        "Skeelo did throttle"
    );
    assert_eq!(
        World::metric(addr, r#"skeelo_retries_total{type="sync"}"#)
            .await
            .expect("metric"),
        0.0
    );
    assert!(
        World::metric(addr, "skeelo_api_throttled_total")
            .await
            .expect("metric")
            > 0.0
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_thirty_second_outage_dead_letters_nothing_and_loses_nothing() {
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    let mut settings = w.settings();
    settings.retry.max_attempts = 2;
    let addr = w.start_fleet(settings).await.expect("fleet");
    w.sim.set_faults(faults(0.0, true, None));
    let events: Vec<_> = (0..40)
        .map(|i| {
            sample::event(
                if i % 4 == 0 { Sync } else { Suspend },
                &format!("OU{:02}", i / 4),
                1 + (i % 4) as i64,
                &["SKEELO-EBOOKS"],
            )
        })
        .collect();
    for e in &events {
        w.publish(e).await.expect("published");
    }
    let mut saw_outage = false;
    for _ in 0..300 {
        if World::metric(addr, r#"skeelo_outage_mode{downstream="skeelo"}"#)
            .await
            .expect("metric")
            == 1.0
        {
            saw_outage = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_outage, "outage mode is visible in the metrics");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during: Vec<_> = w
        .results()
        .into_iter()
        .filter(|r| r.outcome == Outcome::DeadLettered)
        .collect();
    assert!(
        during.is_empty(),
        "dead-lettered during the outage: {during:?}"
    );
    w.sim.set_faults(faults(0.0, false, None));
    w.wait_for_events(&events, WAIT)
        .await
        .expect("everything applied after");
    assert!(w.dead_letters("parked").await.expect("dead").is_empty());
    assert_eq!(
        World::metric(addr, r#"skeelo_outage_mode{downstream="skeelo"}"#)
            .await
            .expect("metric"),
        0.0
    );
    for c in 0..10 {
        let id = format!("OU{c:02}");
        assert_eq!(
            w.sim.subscription(&id).map(|s| s.status).as_deref(),
            Some("inactive"),
            "{id}"
        );
    }
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn what_rabbitmq_dead_letters_by_itself_reaches_the_table() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    // As when a message exceeds its delivery limit: RabbitMQ routes it to the dead
    // exchange with an x-death header naming where it came from.
    let sync = sample::event(Sync, "BR1", 1, &["SKEELO-EBOOKS"]);
    let mut death = lapin::types::FieldTable::default();
    death.insert(
        "reason".into(),
        skeelo_broker::long_string("delivery_limit"),
    );
    death.insert(
        "queue".into(),
        skeelo_broker::long_string("erp.contracts.sync"),
    );
    death.insert("count".into(), lapin::types::AMQPValue::LongLongInt(50));
    death.insert(
        "routing-keys".into(),
        lapin::types::AMQPValue::FieldArray(
            vec![skeelo_broker::long_string("contract.sync")].into(),
        ),
    );
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-death".into(),
        lapin::types::AMQPValue::FieldArray(
            vec![lapin::types::AMQPValue::FieldTable(death)].into(),
        ),
    );
    let conn = skeelo_broker::connect(&w.amqp_url, "test")
        .await
        .expect("connect");
    let publisher = skeelo_broker::Publisher::open(&conn)
        .await
        .expect("publisher");
    let id = sync["event_id"].as_str().unwrap_or_default();
    publisher
        .publish(
            skeelo_broker::DEAD_EXCHANGE,
            "erp.contracts.sync",
            id,
            sync.to_string().as_bytes(),
            headers,
        )
        .await
        .expect("published");
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("a result");
    assert_eq!(
        w.result_for(&sync).map(|r| r.outcome),
        Some(Outcome::DeadLettered)
    );
    assert_eq!(
        w.dead_letters("parked").await.expect("dead"),
        vec![("broker".into(), "delivery_limit".into())]
    );
    let db = w.db().await.expect("db");
    let row = db
        .query_one(
            "SELECT routing_key, type, contract_id FROM dead_letters",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(
        row.get::<_, String>(0),
        "contract.sync",
        "the original routing key, to requeue it as it was"
    );
    assert_eq!(row.get::<_, String>(1), "sync");
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("BR1"));
    assert!(w.sim.subscription("BR1").is_none(), "parked, not applied");
    let _ = conn.close(200, "done".into()).await;
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_call_that_got_no_answer_is_waited_out_and_read_back_before_it_is_made_again() {
    // The create leaves, Skeelo takes longer than the client waits: it may still act on
    // it. Trying again at once could create it twice; the fleet waits until the call
    // cannot land any more, asks Skeelo what it holds, and only then calls.
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.skeelo.timeout = Duration::from_millis(300);
    let fence = settings.retry.fence();
    let addr = w.start_fleet(settings).await.expect("fleet");
    // A first sync, so the token is in hand before Skeelo slows down.
    let first = sample::event(Sync, "NA0", 1, &["SKEELO-EBOOKS"]);
    w.publish(&first).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&first), WAIT)
        .await
        .expect("a result");

    let (sync, started) = a_create_gets_no_answer(&w, addr, "NA1").await;
    applied_after_its_fence_and_one_read_back(&w, &sync, started, fence).await;
    w.close().await.expect("cleanup");
}

/// Publishes a sync of `contract` whose create gets no answer within the client's
/// time limit (Skeelo slowed for it, then well again): the event then waits for its
/// call's fence. Returns it and when it was published.
async fn a_create_gets_no_answer(
    w: &World,
    addr: std::net::SocketAddr,
    contract: &str,
) -> (serde_json::Value, std::time::Instant) {
    w.sim.set_faults(Faults {
        latency_ms: 800,
        ..faults(0.0, false, None)
    });
    let sync = sample::event(Sync, contract, 1, &["SKEELO-EBOOKS"]);
    let published = std::time::Instant::now();
    w.publish(&sync).await.expect("published");
    let timed_out =
        r#"skeelo_api_requests_total{operation="create_subscription",status="timeout"}"#;
    let mut seen = false;
    for _ in 0..100 {
        if World::metric(addr, timed_out).await.expect("metric") >= 1.0 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the create timed out on the client's side");
    w.sim.set_faults(faults(0.0, false, None));
    (sync, published)
}

/// The sync whose create got no answer is applied, not before its fence, after Skeelo
/// was read back once, and with no second create.
async fn applied_after_its_fence_and_one_read_back(
    w: &World,
    sync: &serde_json::Value,
    published: std::time::Instant,
    fence: Duration,
) {
    w.wait_for_events(std::slice::from_ref(sync), WAIT)
        .await
        .expect("a result");
    assert_eq!(
        w.result_for(sync).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    assert!(
        published.elapsed() >= fence - Duration::from_millis(500),
        "it waited until the call could not land any more: {:?}",
        published.elapsed()
    );
    assert_eq!(
        w.sim.request_count("get_subscription", 404) + w.sim.request_count("get_subscription", 200),
        1,
        "Skeelo was read back once before the create was made again"
    );
    assert_eq!(w.sim.request_count("create_subscription", 409), 0);
    let contract = sync["contract"]["id"].as_str().expect("a contract id");
    assert_eq!(
        w.sim.subscription(contract).map(|s| s.status).as_deref(),
        Some("active")
    );
    assert!(w.sim.anomalies().is_empty(), "{:?}", w.sim.anomalies());
}

#[tokio::test]
async fn a_body_whose_text_the_database_cannot_hold_is_parked_once() {
    // A NUL inside the body's type: the event is invalid, and its result echoes the
    // type. PostgreSQL's text and jsonb cannot hold NUL; the fleet stores it replaced,
    // so the event is parked and told once, never sent round in a loop.
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    let mut body = sample::event(Sync, "NUL1", 1, &["SKEELO-EBOOKS"]);
    body["type"] = serde_json::json!("sync\u{0}");
    let id = body["event_id"].as_str().unwrap_or_default().to_string();
    w.publish_raw("contract.sync", &id, body.to_string().as_bytes())
        .await
        .expect("published");
    w.wait_results(1, WAIT).await.expect("a result");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let results = w.results();
    assert_eq!(results.len(), 1, "told once: {results:?}");
    assert_eq!(results[0].outcome, Outcome::DeadLettered);
    assert_eq!(results[0].event_id, id);
    assert_eq!(
        w.dead_letters("parked").await.expect("dead"),
        vec![("invalid".into(), "invalid_field".into())]
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_lost_broker_connection_is_replaced_at_once_while_an_event_waits() {
    // The first session, which connects without the client's own recovery: the cut
    // ends the session, and a new one begins.
    cut_while_an_event_waits(false).await;
}

#[tokio::test]
async fn a_connection_recovered_in_place_leaves_no_old_work_behind() {
    // A later session, which the client recovers in place after the cut: the
    // channels' deliveries are void all the same.
    cut_while_an_event_waits(true).await;
}

/// An event waits for its own unanswered call to stop mattering (seconds, up to a
/// minute in production) when the fleet's broker connection is cut (after a first cut,
/// with `recovering`). The broker has that event back at once; the fleet takes new
/// events at once too, rather than after the wait, and the old delivery's work ends
/// (one event in work: its copy given out again); that copy is applied once, with
/// Skeelo read back once, as if no connection had been lost.
async fn cut_while_an_event_waits(recovering: bool) {
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.skeelo.timeout = Duration::from_millis(300);
    settings.retry.call_budget = Duration::from_secs(30);
    let fence = settings.retry.fence();
    let addr = w.start_fleet(settings).await.expect("fleet");
    let first = sample::event(Sync, "LC0", 1, &["SKEELO-EBOOKS"]);
    w.publish(&first).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&first), WAIT)
        .await
        .expect("a result");
    if recovering {
        assert!(w.cut_fleet_connections().await.expect("cut") >= 1);
        let again = sample::event(Sync, "LC9", 1, &["SKEELO-EBOOKS"]);
        w.publish(&again).await.expect("published");
        w.wait_for_events(std::slice::from_ref(&again), WAIT)
            .await
            .expect("a result through the second session");
    }

    let (waits, published) = a_create_gets_no_answer(&w, addr, "LC1").await;
    // The round has ended and the event waits for its call's fence.
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(w.cut_fleet_connections().await.expect("cut") >= 1);
    let cut = std::time::Instant::now();
    // Of another type, so that it never shares a batch with the waiting event's copy
    // (a batch is in work until its last event is done).
    let next = sample::event(Suspend, "LC0", 2, &["SKEELO-EBOOKS"]);
    w.publish(&next).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&next), Duration::from_secs(8))
        .await
        .expect("an event published after the cut has its result at once");
    assert!(
        published.elapsed() < fence - Duration::from_secs(5),
        "the new session did not wait for the old one's work: {:?} after the cut, the wait ends {:?} after the publish",
        cut.elapsed(),
        fence
    );
    let in_work = r#"skeelo_events_in_flight{type="sync"}"#;
    let mut in_work_now = Vec::new();
    for _ in 0..100 {
        in_work_now.push(World::metric(addr, in_work).await.expect("metric"));
        if in_work_now.last() == Some(&1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        in_work_now.last(),
        Some(&1.0),
        "only the copy given out again is in work, not the old delivery too: {in_work_now:?}"
    );

    // One read-back: the old delivery's work did not read Skeelo back too.
    applied_after_its_fence_and_one_read_back(&w, &waits, published, fence).await;
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_letter_parked_again_before_its_requeue_is_marked_stays_in_sight() {
    // A requeue publishes a letter's copy, then marks the letter requeued once the
    // broker has confirmed it. A fleet quicker than that mark parks the copy again
    // first (its cause is not cleared): the copy must be a parked letter of its own,
    // and the mark, coming after, must mark the letter it sent back and name who.
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    let stuck = sample::event(Sync, "RQ1", 1, &["SKEELO-KIDS"]);
    w.publish(&stuck).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&stuck), WAIT)
        .await
        .expect("a result");
    assert_eq!(
        w.result_for(&stuck).map(|r| r.outcome),
        Some(Outcome::DeadLettered)
    );
    let db = w.db().await.expect("db");
    let row = db
        .query_one(
            "SELECT id, routing_key, body FROM dead_letters
             WHERE contract_id = 'RQ1' AND state = 'parked'",
            &[],
        )
        .await
        .expect("the letter");
    let (letter, routing_key, body): (i64, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
    let parked_at: time::OffsetDateTime = db
        .query_one(
            "SELECT last_failed_at FROM dead_letters WHERE id = $1",
            &[&letter],
        )
        .await
        .expect("when")
        .get(0);

    // The requeue's first half: the copy, confirmed by the broker; no mark yet.
    let connection = skeelo_broker::connect(&w.amqp_url, "operator")
        .await
        .expect("broker");
    let publisher = skeelo_broker::Publisher::open(&connection)
        .await
        .expect("publisher");
    let event_id = stuck["event_id"].as_str().expect("an event id");
    skeelo_broker::requeue_letter(&publisher, letter, &routing_key, event_id, &body)
        .await
        .expect("the copy confirmed");
    // The fleet parks the copy again: a new letter, or (the fault) the old one's
    // row updated in place.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let seen: i64 = db
            .query_one(
                "SELECT count(*) FROM dead_letters
                 WHERE contract_id = 'RQ1' AND (id <> $1 OR last_failed_at > $2)",
                &[&letter, &parked_at],
            )
            .await
            .expect("count")
            .get(0);
        if seen > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy was not parked again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The requeue's second half.
    let store = skeelo_store::Store::connect(&w.database_url, 1).expect("store");
    assert!(
        store
            .mark_requeued(letter, "ana.ops")
            .await
            .expect("marked"),
        "the letter sent back is marked requeued"
    );
    let rows = db
        .query(
            "SELECT id, state, requeued_by FROM dead_letters WHERE contract_id = 'RQ1' ORDER BY id",
            &[],
        )
        .await
        .expect("letters");
    let seen: Vec<(i64, String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].0, seen[0].1.as_str(), seen[0].2.as_deref()),
        (letter, "requeued", Some("ana.ops"))
    );
    assert_eq!(seen[1].1, "parked", "the copy stays in sight: {seen:?}");
    let _ = connection.close(200, "done".into()).await;
    w.close().await.expect("cleanup");
}
