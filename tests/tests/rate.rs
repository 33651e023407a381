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

/// The spacing of the ledger tests: 20/s, slots 50 ms apart.
const INTERVAL: Duration = Duration::from_millis(50);
const SPACING: skeelo_partner::schedule::Spacing = skeelo_partner::schedule::Spacing {
    interval: 0.05,
    rate: 20,
    window: 1.0,
    lead: skeelo_partner::schedule::LEAD,
};

/// A world of its own and the fleet's store on its fresh database.
async fn ledger() -> (World, skeelo_store::Store) {
    let w = World::new().await.expect("world");
    let store = skeelo_store::Store::connect(&w.database_url, 2).expect("store");
    store.migrate().await.expect("schema");
    (w, store)
}

/// The ledger on a database that never leased before: the first lease creates the
/// row (on the rate's single connection, so it must not ask for a second one), leases
/// never overlap, a short gap is made up at twice the rate, and a pause moves the next
/// lease past its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_leases_from_a_fresh_database_and_honours_a_pause() {
    let (w, store) = ledger().await;
    let lease = |n| store.lease_partner_slots("skeelo", n, SPACING);
    let first = tokio::time::timeout(Duration::from_secs(5), lease(4))
        .await
        .expect("the first lease answers")
        .expect("first lease")
        .slots;
    assert_eq!(first.len(), 4);
    let spaced = |slots: &[std::time::SystemTime]| -> Vec<Duration> {
        slots
            .windows(2)
            .map(|p| p[1].duration_since(p[0]).expect("in order"))
            .collect()
    };
    for gap in spaced(&first) {
        assert!(gap.abs_diff(INTERVAL) < Duration::from_millis(1), "{gap:?}");
    }
    let first = first[0];
    // Before any pause (its column is '-infinity'), the ledger reads: 4 leased, some
    // of them still ahead of now (a lease begins 5 ms ahead, so at most 4 intervals
    // and those 5 ms).
    let read = store
        .rate_ledger("skeelo")
        .await
        .expect("the ledger reads")
        .expect("the row exists");
    assert_eq!(read.leased, 4);
    assert!(read.paused_for.is_zero());
    assert!(
        read.ahead <= INTERVAL * 4 + Duration::from_millis(5),
        "{:?}",
        read.ahead
    );
    let second = lease(2).await.expect("second lease").slots;
    let gap = second[0].duration_since(first).expect("in order");
    // (The row keeps times to the microsecond.)
    assert!(
        gap + Duration::from_micros(2) >= INTERVAL * 4,
        "the second lease began {gap:?} after the first, inside its 4 slots"
    );
    // Nobody takes a slot for two intervals after the last one: the next lease makes
    // the gap up, its slots half an interval apart, never closer. (A gap of more than
    // 250 ms would be idleness, not made up: 150 ms of slack for a slow machine.)
    let idle_until = second[1] + INTERVAL * 2;
    if let Ok(wait) = idle_until.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let third = lease(3).await.expect("third lease").slots;
    for gap in spaced(&third) {
        assert!(
            gap.abs_diff(INTERVAL / 2) < Duration::from_millis(1),
            "a gap is made up at twice the rate: {gap:?}"
        );
    }
    let paused_at = std::time::SystemTime::now();
    store
        .pause_partner("skeelo", Duration::from_secs(2))
        .await
        .expect("pause");
    let read = store
        .rate_ledger("skeelo")
        .await
        .expect("the ledger reads")
        .expect("the row exists");
    assert_eq!(read.leased, 9, "every slot leased is counted");
    assert!(
        read.paused_for > Duration::from_millis(1500),
        "{:?}",
        read.paused_for
    );
    let after = lease(1).await.expect("lease after the pause").slots;
    let past = after[0].duration_since(paused_at).unwrap_or_default();
    assert!(
        past >= Duration::from_millis(1500),
        "a lease after a 2 s pause began only {past:?} after the pause"
    );
    w.close().await.expect("cleanup");
}

/// The ledger answers with its own clock's reading, and a lessee's lead keeps the
/// first slot that far after it (the pacer sets the lead from those readings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_says_when_the_ledger_read_its_clock_and_keeps_the_lead() {
    let (w, store) = ledger().await;
    let asked = std::time::SystemTime::now();
    let first = store
        .lease_partner_slots("skeelo", 2, SPACING)
        .await
        .expect("a lease");
    let answered = std::time::SystemTime::now();
    // One machine, one clock: the reading falls while the lease was under way.
    let slack = Duration::from_millis(5);
    assert!(first.read_at + slack >= asked && first.read_at <= answered + slack);
    let lead = Duration::from_secs_f64(skeelo_partner::schedule::LEAD);
    assert!(first.slots[0] + Duration::from_micros(2) >= first.read_at + lead);
    // After a second of nothing (idleness: nothing made up), a long lead is kept.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slow = skeelo_partner::schedule::Spacing {
        lead: 0.1,
        ..SPACING
    };
    let after = store
        .lease_partner_slots("skeelo", 1, slow)
        .await
        .expect("a lease with a long lead");
    let ahead = after.slots[0]
        .duration_since(after.read_at)
        .expect("after the reading");
    assert!(
        ahead + Duration::from_micros(2) >= Duration::from_millis(100),
        "the first slot began {ahead:?} after the ledger's reading, not the lead's 100 ms"
    );
    w.close().await.expect("cleanup");
}

/// During a rolling update the fleet's previous version leases from the same row by
/// moving `tat` alone: a lease after it begins after those slots, and a row that
/// version alone leased from counts them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_leased_by_the_previous_version_are_never_overlapped() {
    let (w, store) = ledger().await;
    let client = w.db().await.expect("a connection");
    // The previous version's lease of `n` slots, word for word.
    let previous = |n: f64| {
        let client = &client;
        async move {
            let tat: f64 = client
                .query_one(
                    "UPDATE partner_rate
                     SET tat = GREATEST(tat, clock_timestamp() + interval '5 milliseconds',
                                        paused_until)
                               + make_interval(secs => $1)
                     WHERE name = 'skeelo'
                     RETURNING EXTRACT(EPOCH FROM tat)::float8",
                    &[&(0.05 * n)],
                )
                .await
                .expect("the previous version's lease")
                .get(0);
            skeelo_partner::schedule::wall_clock(tat).expect("a time")
        }
    };
    let ours = store
        .lease_partner_slots("skeelo", 4, SPACING)
        .await
        .expect("a lease")
        .slots;
    let theirs_end = previous(10.0).await;
    assert!(theirs_end > ours[3] + INTERVAL * 10);
    let after = store
        .lease_partner_slots("skeelo", 3, SPACING)
        .await
        .expect("a lease after theirs")
        .slots;
    assert!(
        after[0] + Duration::from_micros(2) >= theirs_end,
        "a slot {:?} before the end of the previous version's lease",
        theirs_end.duration_since(after[0]).unwrap_or_default()
    );
    // Only the previous version ever leased from this row: a second of slots up to
    // its `tat` is counted, so the next lease comes after it, evenly.
    client
        .execute("DELETE FROM partner_rate", &[])
        .await
        .expect("a fresh row");
    client
        .execute(
            "INSERT INTO partner_rate (name, tat) VALUES ('skeelo', clock_timestamp())",
            &[],
        )
        .await
        .expect("a fresh row");
    let theirs_end = previous(20.0).await;
    let first = store
        .lease_partner_slots("skeelo", 4, SPACING)
        .await
        .expect("a lease")
        .slots;
    assert!(first[0] + Duration::from_micros(2) >= theirs_end);
    for pair in first.windows(2) {
        let gap = pair[1].duration_since(pair[0]).expect("in order");
        assert!(gap.abs_diff(INTERVAL) < Duration::from_millis(1), "{gap:?}");
    }
    w.close().await.expect("cleanup");
}

/// SIGTERM while a batch waits for a partner that takes 20 s to answer: the stop ends
/// once its grace is over instead of waiting out the work in hand, and what was given
/// back unfinished is applied by the next fleet, once each, with no call the partner
/// would not expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_work_waits_on_a_slow_partner_ends_within_the_grace_and_loses_nothing() {
    let mut w = World::new().await.expect("world");
    let grace = Duration::from_secs(2);
    let mut settings = w.settings();
    settings.stop_grace = grace;
    // The calls, not a budget or a timeout, must be what holds the work.
    settings.retry.call_budget = Duration::from_secs(40);
    settings.skeelo.timeout = Duration::from_secs(40);
    w.start_fleet(settings).await.expect("fleet");
    let first = sample::event(Sync, "SG000", 1, &["SKEELO-EBOOKS"]);
    w.publish(&first).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&first), WAIT)
        .await
        .expect("a first result");
    w.sim.set_faults(skeelo_sim::Faults {
        latency_ms: 20_000,
        ..skeelo_sim::Faults::default()
    });
    let events: Vec<_> = (1..6)
        .map(|i| sample::event(Sync, &format!("SG{i:03}"), 1, &["SKEELO-EBOOKS"]))
        .collect();
    for e in &events {
        w.publish(e).await.expect("published");
    }
    // The calls are on their way to the slow partner.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = std::time::Instant::now();
    w.stop_fleets().await.expect("stopped");
    let took = stopping.elapsed();
    assert!(
        took >= grace,
        "the stop took {took:?}: nothing was in flight, so the grace was not tried"
    );
    assert!(
        took < grace + Duration::from_secs(8),
        "the stop took {took:?} with a grace of {grace:?} (the partner answers in 20 s)"
    );
    w.sim.set_faults(skeelo_sim::Faults::default());
    let settings = w.settings();
    w.start_fleet(settings).await.expect("next fleet");
    w.wait_for_events(&events, WAIT).await.expect("all applied");
    for i in 0..6 {
        assert!(w.sim.subscription(&format!("SG{i:03}")).is_some());
    }
    assert_eq!(w.sim.anomalies(), Vec::<String>::new());
    w.close().await.expect("cleanup");
}

/// Whether a transaction other than this probe's holds the contract's row (a round
/// locked it): the probe's own upsert of the row waits for it and gives up.
async fn locked_by_a_round(
    db: &tokio_postgres::Client,
    contract: &str,
) -> Result<bool, tokio_postgres::Error> {
    db.batch_execute("BEGIN; SET LOCAL lock_timeout = '50ms'")
        .await?;
    let probe = db
        .execute(
            "INSERT INTO contracts (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id",
            &[&contract],
        )
        .await;
    db.batch_execute("ROLLBACK").await?;
    match probe {
        Ok(_) => Ok(false),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Waits until the fleet has read Skeelo's catalogue (it does by itself a second
/// after start) and taken it in: its copy is stored only after the list in hand was
/// replaced, so a round starting after this wait cannot join that read and miss a
/// product added since.
async fn catalogue_read_once(w: &World) {
    let db = w.db().await.expect("database");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let stored: i64 = db
            .query_one("SELECT count(*) FROM catalogue", &[])
            .await
            .expect("catalogue")
            .get(0);
        if stored > 0 && w.sim.request_count("list_products", 200) > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no catalogue read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the event's result, and it is applied.
async fn applied(w: &World, event: &serde_json::Value) {
    w.wait_for_events(std::slice::from_ref(event), WAIT)
        .await
        .expect("result");
    assert_eq!(
        w.result_for(event).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
}

/// A round whose syncs need Skeelo's catalogue read again (a product it has not seen)
/// locks its contracts while the catalogue is on its way, and calls as soon as the
/// answer is there (docs/performance.md, "The catalogue read while the round locks").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_locks_its_contracts_while_the_catalogue_is_read() {
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    // Every partner call takes a second: long enough to see the round's lock while
    // the catalogue's answer is on its way, well inside the call budget (3 s).
    w.sim.set_faults(skeelo_sim::Faults {
        latency_ms: 1000,
        ..w.sim.faults()
    });
    w.start_fleet(w.settings()).await.expect("fleet");
    catalogue_read_once(&w).await;
    let deadline = std::time::Instant::now() + WAIT;
    w.sim.add_product("SKEELO-NEW", "New product");
    let event = sample::event(Sync, "OVERLAP1", 1, &["SKEELO-NEW"]);
    w.publish(&event).await.expect("published");
    let db = w.db().await.expect("database");
    // How many catalogue reads Skeelo had answered when the lock was first seen.
    let answered_when_locked = loop {
        if locked_by_a_round(&db, "OVERLAP1").await.expect("probe") {
            break Some(w.sim.request_count("list_products", 200));
        }
        if w.result_for(&event).is_some() || std::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        answered_when_locked,
        Some(1),
        "the round held the contract before Skeelo answered the second catalogue read"
    );
    applied(&w, &event).await;
    assert_eq!(w.sim.request_count("list_products", 200), 2);
    assert_eq!(w.sim.request_count("create_subscription", 201), 1);
    w.close().await.expect("cleanup");
}

/// A catalogue read that does not answer holds a round's contracts no longer than the
/// round's calls could (the call budget), and the sync applies once Skeelo answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_read_that_does_not_answer_holds_the_contracts_no_longer_than_the_call_budget()
{
    let mut w = World::with_sim(SimConfig::default()).await.expect("world");
    let mut settings = w.settings();
    settings.retry.call_budget = Duration::from_secs(2);
    w.start_fleet(settings).await.expect("fleet");
    catalogue_read_once(&w).await;
    // From now on a call takes longer than the client waits (5 s).
    let normal = w.sim.faults();
    w.sim.set_faults(skeelo_sim::Faults {
        latency_ms: 10_000,
        ..normal.clone()
    });
    w.sim.add_product("SKEELO-SLOW", "Slow product");
    let event = sample::event(Sync, "SLOWCAT1", 1, &["SKEELO-SLOW"]);
    w.publish(&event).await.expect("published");
    let db = w.db().await.expect("database");
    // The oldest open transaction of the fleet, over eight seconds: past the client's
    // own timeout (5 s), so a wait the budget does not bound would be seen.
    let mut oldest = 0.0_f64;
    let watch = std::time::Instant::now();
    while watch.elapsed() < Duration::from_secs(8) {
        let age: f64 = db
            .query_one(
                "SELECT COALESCE(max(EXTRACT(EPOCH FROM clock_timestamp() - xact_start)), 0)::float8
                 FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND xact_start IS NOT NULL",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        oldest = oldest.max(age);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        oldest > 1.0,
        "a round waited for the catalogue with its contracts held: {oldest:.1} s"
    );
    assert!(
        oldest < 4.0,
        "no round held its contracts much past the call budget (2 s): {oldest:.1} s"
    );
    w.sim.set_faults(normal);
    applied(&w, &event).await;
    w.close().await.expect("cleanup");
}
