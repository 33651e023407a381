//! A full run's logs hold no personal data and no secret: the CPFs, e-mails, phones and
//! names of the events, and the client secret, never appear, whatever happened
//! (applied, dead-lettered, refused by Skeelo, retried).

use std::process::Stdio;
use std::time::Duration;

use skeelo_broker::{self as broker, Publisher, EVENTS_EXCHANGE};
use skeelo_domain::event::EventType::*;
use skeelo_domain::sample;
use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::process::{wait_handled, WorkerProcess};
use skeelo_tests::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_runs_logs_hold_no_personal_data_or_secret() {
    let secret = "s3cr3t-Partner-Key-7781";
    let w = World::with_sim(SimConfig {
        client_secret: secret.into(),
        ..SimConfig::default()
    })
    .await
    .expect("world");
    let log_path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("logs-{}.log", w.vhost));
    let log = std::fs::File::create(&log_path).expect("log file");
    let env = [
        ("SKEELO_CLIENT_SECRET", secret),
        ("SKEELO_RATE_PER_SECOND", "200"),
        ("SKEELO_RETRY_DELAYS", "100ms"),
        ("RUST_LOG", "debug"),
    ];
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_skeelo-workers"));
    let worker = WorkerProcess::start(binary, &w, &env, Stdio::from(log))
        .await
        .expect("skeelo-workers starts");

    // Every path: applied, updated, deferred, dead-lettered (bad e-mail, unknown
    // product), refused by Skeelo (a product it stopped selling), and retried (faults).
    let mut events = Vec::new();
    for i in 0..20 {
        events.push(sample::event(
            Sync,
            &format!("LG{i:02}"),
            1,
            &["SKEELO-EBOOKS"],
        ));
        events.push(sample::event(Suspend, &format!("LG{i:02}"), 2, &[]));
    }
    let mut bad_email = sample::event(Sync, "LGBAD", 1, &["SKEELO-EBOOKS"]);
    bad_email["subscriber"]["email"] = serde_json::json!("maria.sem.arroba.example.com.br");
    events.push(bad_email);
    events.push(sample::event(Sync, "LGUNK", 1, &["SKEELO-NOPE"]));
    w.sim.remove_product("SKEELO-MINIBOOKS");
    events.push(sample::event(Sync, "LGREF", 1, &["SKEELO-MINIBOOKS"]));
    w.sim.set_faults(Faults {
        error_rate: 0.2,
        ..Faults::default()
    });
    let conn = broker::connect(&w.amqp_url, "erp-logs")
        .await
        .expect("connect");
    let publisher = Publisher::open(&conn).await.expect("publisher");
    for e in &events {
        let key = format!("contract.{}", e["type"].as_str().unwrap_or("sync"));
        let id = e["event_id"].as_str().unwrap_or_default();
        publisher
            .publish_json(EVENTS_EXCHANGE, &key, id, e.to_string().as_bytes())
            .await
            .expect("published");
    }
    // Wait until every event was handled, then stop as SIGTERM does.
    wait_handled(&[worker.port], events.len(), Duration::from_secs(60))
        .await
        .expect("every event handled");
    let status = worker.stop().expect("exits");
    assert!(status.success());
    let _ = conn.close(200, "done".into()).await;

    let logs = std::fs::read_to_string(&log_path).expect("logs");
    assert!(logs.lines().count() > events.len(), "a full run was logged");
    assert!(logs.contains("\"event_id\""), "lines name their event");
    let mut secrets = vec![secret.to_string()];
    for e in &events {
        let sub = &e["subscriber"];
        for field in ["document", "email", "phone", "name"] {
            if let Some(v) = sub[field].as_str() {
                secrets.push(v.to_string());
                if field == "document" {
                    secrets.push(v.chars().filter(char::is_ascii_digit).collect());
                }
            }
        }
    }
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "the logs contain `{s}`: see {}",
            log_path.display()
        );
    }
    w.close().await.expect("cleanup");
}

/// A reader of stderr that stops reading (a log collector that hangs, a pipe nobody
/// drains) holds neither the fleet's events nor its exit: lines wait for the log
/// writer's thread, or are dropped and counted, while the work goes on. Written where
/// they were logged, the first lines past the pipe's 64 KiB stopped every thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_holds_no_event_and_no_exit() {
    let w = World::with_sim(SimConfig::default()).await.expect("world");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_skeelo-workers"));
    // Piped and never read: the pipe fills and stays full.
    let worker = WorkerProcess::start(binary, &w, &[("RUST_LOG", "debug")], Stdio::piped())
        .await
        .expect("skeelo-workers starts");
    // Each sync logs a few lines of a few hundred bytes at debug level: these fill the
    // pipe several times over.
    let events: Vec<_> = (0..600)
        .map(|i| sample::event(Sync, &format!("NR{i:04}"), 1, &["SKEELO-EBOOKS"]))
        .collect();
    let conn = broker::connect(&w.amqp_url, "erp-unread-logs")
        .await
        .expect("connect");
    let publisher = Publisher::open(&conn).await.expect("publisher");
    for e in &events {
        let id = e["event_id"].as_str().unwrap_or_default();
        publisher
            .publish_json(
                EVENTS_EXCHANGE,
                "contract.sync",
                id,
                e.to_string().as_bytes(),
            )
            .await
            .expect("published");
    }
    wait_handled(&[worker.port], events.len(), Duration::from_secs(60))
        .await
        .expect("every event handled while nobody reads the logs");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", worker.port))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    // About five lines an event: they waited for the writer, none was dropped.
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skeelo_log_lines_dropped_total "))
        .map(str::trim);
    assert_eq!(dropped, Some("0"), "lines were dropped, or are not counted");
    let started = std::time::Instant::now();
    let status = worker.stop().expect("exits");
    assert!(
        status.success(),
        "SIGTERM ends it by itself, not the SIGKILL after 10 s: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let _ = conn.close(200, "done".into()).await;
    w.close().await.expect("cleanup");
}
