//! The fleet process as SREs and the ERP meet it: endpoints, dedicated consumers,
//! tokens that expire, subscriptions that already exist, and stopping without loss.

use std::time::Duration;

use skeelo_domain::event::EventType::{self, *};
use skeelo_domain::lifecycle::Profile;
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_partner::api::{NewSubscription, SkeeloClient};
use skeelo_sim::{Faults, SimConfig};
use skeelo_telemetry::metrics::Metrics;
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(30);

fn ev(t: EventType, contract: &str, version: i64) -> serde_json::Value {
    sample::event(t, contract, version, &["SKEELO-EBOOKS"])
}

/// A subscription that Skeelo holds without the fleet having recorded it (another
/// process, or a crash after the call): returns a client and the sync that made it.
async fn created_behind_the_fleets_back(
    settings: &skeelo_workers::Settings,
    contract_id: &str,
) -> (SkeeloClient, serde_json::Value) {
    let client = SkeeloClient::new(
        settings.skeelo.clone(),
        Metrics::new().expect("metrics"),
        skeelo_partner::pacer::Pacer::unlimited(),
    )
    .expect("client");
    let sync = ev(Sync, contract_id, 1);
    let event = skeelo_domain::event::parse("contract.sync", sync.to_string().as_bytes())
        .expect("valid sample");
    let details = event.sync.expect("details");
    client
        .create(&NewSubscription {
            external_id: contract_id,
            document: details.subscriber.document.digits(),
            profile: &Profile::from_sync(&details),
        })
        .await
        .expect("created directly");
    (client, sync)
}

#[tokio::test]
async fn metrics_and_health_endpoints_show_what_happened() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    let addr = w.start_fleet(settings).await.expect("fleet");
    w.publish(&ev(Sync, "M1", 1)).await.expect("published");
    w.wait_results(1, WAIT).await.expect("result");

    let get = |path: &str| reqwest::get(format!("http://{addr}{path}"));
    assert!(get("/healthz")
        .await
        .expect("healthz")
        .status()
        .is_success());
    assert!(get("/readyz").await.expect("readyz").status().is_success());
    let text = get("/metrics")
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    for name in [
        "skeelo_events_total",
        "skeelo_event_duration_seconds",
        "skeelo_api_requests_total",
        "skeelo_api_request_duration_seconds",
        "skeelo_retries_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        text.contains(r#"skeelo_events_total{outcome="applied",type="sync"} 1"#),
        "{text}"
    );
    assert!(text
        .contains(r#"skeelo_api_requests_total{operation="create_subscription",status="201"} 1"#));
    // Dead letters appear once one happens.
    w.publish_raw("contract.block", "junk", b"nope")
        .await
        .expect("published");
    w.wait_results(2, WAIT).await.expect("result");
    let text = get("/metrics")
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains(r#"skeelo_dead_letters_total{reason="not_json",type="block"} 1"#),
        "{text}"
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_dedicated_consumer_takes_only_its_own_type() {
    let mut w = World::new().await.expect("world");
    let mut only_sync = w.settings();
    only_sync.consumers = vec![Sync];
    w.start_fleet(only_sync).await.expect("sync fleet");
    let suspend = ev(Suspend, "Q1", 2);
    w.publish(&suspend).await.expect("published");
    w.publish(&ev(Sync, "Q1", 1)).await.expect("published");
    w.wait_results(1, WAIT).await.expect("the sync's result");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.results().len(), 1, "nobody consumes suspends yet");
    assert_eq!(
        w.sim.subscription("Q1").map(|s| s.status).as_deref(),
        Some("active")
    );

    let mut only_suspend = w.settings();
    only_suspend.consumers = vec![Suspend];
    w.start_fleet(only_suspend).await.expect("suspend fleet");
    w.wait_results(2, WAIT).await.expect("the suspend's result");
    assert_eq!(
        w.result_for(&suspend).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    assert_eq!(
        w.sim.subscription("Q1").map(|s| s.status).as_deref(),
        Some("inactive")
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_event_applies() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    w.publish(&ev(Sync, "T1", 1)).await.expect("published");
    w.wait_results(1, WAIT).await.expect("result");
    w.sim.expire_tokens();
    let second = ev(Sync, "T2", 1);
    w.publish(&second).await.expect("published");
    w.wait_results(2, WAIT).await.expect("result");
    assert_eq!(
        w.result_for(&second).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    assert_eq!(
        w.sim.request_count("token", 200),
        2,
        "one token at start, one after expiry"
    );
    assert_eq!(w.sim.request_count("create_subscription", 401), 1);
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_subscription_that_already_exists_at_skeelo_is_adopted() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    // Another process (or a crash after the call) created it already, then an operator
    // suspended it at Skeelo.
    let (client, sync) = created_behind_the_fleets_back(&settings, "A1").await;
    client
        .set_status("A1", skeelo_domain::lifecycle::Status::Inactive)
        .await
        .expect("status");

    w.start_fleet(settings).await.expect("fleet");
    w.publish(&sync).await.expect("published");
    w.wait_results(1, WAIT).await.expect("result");
    assert_eq!(
        w.result_for(&sync).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    assert_eq!(w.sim.request_count("create_subscription", 409), 1);
    assert_eq!(
        w.sim.subscription("A1").map(|s| s.status).as_deref(),
        Some("active"),
        "the adopted subscription is brought to what the facts say"
    );
    assert!(w.sim.anomalies().is_empty(), "{:?}", w.sim.anomalies());
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn stopping_finishes_the_work_in_flight_and_loses_nothing() {
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    w.sim.set_faults(Faults {
        error_rate: 0.0,
        latency_ms: 150,
        down: false,
        rate_per_second: None,
        ..Faults::default()
    });
    let mut settings = w.settings();
    settings.prefetch = 4;
    w.start_fleet(settings.clone()).await.expect("fleet");
    let events: Vec<_> = (0..20).map(|i| ev(Sync, &format!("S{i:02}"), 1)).collect();
    for e in &events {
        w.publish(e).await.expect("published");
    }
    w.wait_results(1, WAIT).await.expect("work has started");
    // SIGTERM-like stop in the middle of the backlog.
    w.stop_fleets().await.expect("a clean stop");
    tokio::time::sleep(Duration::from_millis(300)).await; // results in transit arrive
    let after_stop = w.results().len();
    assert!(after_stop < events.len(), "the stop came mid-backlog");
    // What was in flight finished: every subscription Skeelo has got its result.
    let created = w.sim.subscriptions().len();
    assert_eq!(created, after_stop, "a call whose result was never sent");

    w.start_fleet(settings).await.expect("fleet again");
    w.wait_for_events(&events, WAIT).await.expect("the rest");
    assert_eq!(w.sim.subscriptions().len(), events.len());
    assert_eq!(
        w.results().len(),
        events.len(),
        "no event was handled twice"
    );
    assert!(w.sim.anomalies().is_empty(), "{:?}", w.sim.anomalies());
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn replicas_migrating_at_once_do_not_race() {
    let w = World::new().await.expect("world");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = w.database_url.clone();
        tasks.push(tokio::spawn(async move {
            let store = skeelo_store::Store::connect(&url, 1)?;
            store.migrate().await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("migrated");
    }
    let db = w.db().await.expect("db");
    let n: i64 = db
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .expect("the migrations folder")
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "sql"))
        })
        .count();
    assert!(files >= 7);
    assert_eq!(n, files as i64, "each migration applied once");
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn a_sync_that_reached_skeelo_unrecorded_is_cancelled_when_the_cancel_wins() {
    // The sync's create reached Skeelo, then its transaction never committed (a crash,
    // a lost connection): the contract is marked uncertain and the facts know nothing.
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    let (_, sync) = created_behind_the_fleets_back(&settings, "U1").await;
    w.start_fleet(settings).await.expect("fleet");
    w.db()
        .await
        .expect("db")
        .execute(
            "INSERT INTO skeelo_uncertain (contract_id, owner, since, calls_until)
             VALUES ('U1', gen_random_uuid(), now() - interval '1 hour',
                     now() - interval '1 hour' + interval '1 minute')",
            &[],
        )
        .await
        .expect("marked");

    // The cancel comes first: the fleet reads Skeelo back and cancels what it finds.
    let cancel = ev(Cancel, "U1", 2);
    w.publish(&cancel).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&cancel), WAIT)
        .await
        .expect("result");
    w.publish(&sync).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("result");
    assert_eq!(
        w.result_for(&cancel).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    assert_eq!(
        w.result_for(&sync).map(|r| r.outcome),
        Some(Outcome::Superseded)
    );
    assert_eq!(
        w.sim.subscription("U1").map(|s| s.status).as_deref(),
        Some("cancelled")
    );
    let marks: i64 = w
        .db()
        .await
        .expect("db")
        .query_one("SELECT count(*) FROM skeelo_uncertain", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(marks, 0, "the answer is recorded; the doubt is gone");
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn another_attempts_calls_that_may_still_be_in_flight_are_waited_for() {
    // A worker died mid-call a moment ago: its call could still land at Skeelo. The
    // next event of that contract waits past the call budget before reading back.
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    let fence = settings.retry.fence();
    w.start_fleet(settings).await.expect("fleet");
    w.publish(&ev(Sync, "F1", 1)).await.expect("published");
    w.wait_results(1, WAIT).await.expect("synced");
    w.db()
        .await
        .expect("db")
        .execute(
            "INSERT INTO skeelo_uncertain (contract_id, owner, calls_until)
             VALUES ('F1', gen_random_uuid(), now() + make_interval(secs => $1))",
            &[&fence.as_secs_f64()],
        )
        .await
        .expect("marked");
    let started = std::time::Instant::now();
    let block = ev(Block, "F1", 2);
    w.publish(&block).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&block), WAIT)
        .await
        .expect("result");
    assert!(
        started.elapsed() >= fence - Duration::from_millis(300),
        "it waited: {:?}",
        started.elapsed()
    );
    assert_eq!(
        w.result_for(&block).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    assert_eq!(
        w.sim.subscription("F1").map(|s| s.status).as_deref(),
        Some("inactive")
    );
    assert_eq!(
        w.sim.request_count("get_subscription", 200),
        1,
        "read back once the fence passed"
    );
    w.close().await.expect("cleanup");
}
