//! Requeued dead letters never swamp new customers: they wait in their own queue,
//! taken a few at a time, and call Skeelo only in the partner rate's lowest lane. A
//! requeue of 1 000 letters during a stream of sign-ups leaves the sign-ups' p99
//! within the wave target of docs/performance.md (2 s).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use skeelo_domain::event::EventType;
use skeelo_domain::sample;
use skeelo_tests::World;

/// The wave target for sign-ups (docs/performance.md).
const WAVE_P99: Duration = Duration::from_secs(2);
const LETTERS: usize = 1000;
const RATE: u32 = 50;

/// Parks `letters` as exhausted dead letters, as the fleet parks them.
async fn park(w: &World, letters: &[Value]) {
    let db = w.db().await.expect("db");
    let ids: Vec<String> = letters
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let contracts: Vec<String> = letters
        .iter()
        .map(|e| e["contract_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let bodies: Vec<Vec<u8>> = letters
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap_or_default())
        .collect();
    db.execute(
        "INSERT INTO dead_letters (message_key, event_id, contract_id, type, routing_key,
             message_id, body, reason, error_class, last_error, attempts)
         SELECT id, id, c, 'sync', 'contract.sync', id, b, 'exhausted', 'transient',
                'Skeelo answered 503 Service Unavailable', 8
         FROM unnest($1::text[], $2::text[], $3::bytea[]) AS t(id, c, b)",
        &[&ids, &contracts, &bodies],
    )
    .await
    .expect("letters parked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeue_of_1000_letters_leaves_sign_ups_within_the_wave_target() {
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.rate_per_second = std::num::NonZeroU32::new(RATE);
    settings.prefetch = 256;
    w.start_fleet(settings).await.expect("fleet");
    let letters: Vec<Value> = (0..LETTERS)
        .map(|i| sample::event(EventType::Sync, &format!("DL{i:04}"), 1, &["SKEELO-EBOOKS"]))
        .collect();
    park(&w, &letters).await;

    let requeue = Command::new(env!("CARGO_BIN_EXE_skeelo-ops"))
        .args(["dead", "requeue", "--all", "--yes", "--json"])
        .env("DATABASE_URL", &w.database_url)
        .env("AMQP_URL", &w.amqp_url)
        .env("SKEELO_OPERATOR", "ops.teste")
        .output()
        .expect("skeelo-ops runs");
    let said: Value = serde_json::from_slice(&requeue.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&requeue.stderr)));
    assert_eq!(said["requeued"], LETTERS as u64, "{said}");
    let requeued_at = Instant::now();

    // New customers sign up one by one while the letters are worked off (1 000
    // letters take at least 20 s at 50/s; the sign-ups, a few seconds).
    let letters_done = || {
        w.results()
            .iter()
            .filter(|r| {
                r.contract_id
                    .as_deref()
                    .is_some_and(|c| c.starts_with("DL"))
            })
            .count()
    };
    let mut took = Vec::new();
    for i in 0..40 {
        if letters_done() >= LETTERS {
            break;
        }
        let sign_up = sample::event(
            EventType::Sync,
            &format!("NEW{i:02}"),
            1,
            &["SKEELO-EBOOKS"],
        );
        let sent = Instant::now();
        w.publish(&sign_up).await.expect("published");
        w.wait_for_events(std::slice::from_ref(&sign_up), Duration::from_secs(30))
            .await
            .expect("the sign-up's result");
        took.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let during = requeued_at.elapsed();
    let done_during = letters_done();
    assert!(
        took.len() >= 20,
        "only {} sign-ups came while the letters were worked off",
        took.len()
    );
    took.sort();
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    println!(
        "sign-ups p50 {:?}, p99 {p99:?} ({} of them); {done_during} of {LETTERS} requeued letters applied in the {during:?} the sign-ups took",
        took[took.len() / 2],
        took.len()
    );
    assert!(p99 <= WAVE_P99, "sign-ups p99 {p99:?} above {WAVE_P99:?}");

    // And every letter is applied in the end, with a new result for the ERP.
    w.wait_for_events(&letters, Duration::from_secs(120))
        .await
        .expect("every requeued letter applied");
    let db = w.db().await.expect("db");
    let created: i64 = db
        .query_one(
            "SELECT count(*) FROM contracts WHERE id LIKE 'DL%' AND skeelo_status = 'active'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(created, LETTERS as i64);
    w.close().await.expect("cleanup");
}
