//! A full run's logs hold no personal data and no secret: the CPFs, e-mails, phones and
//! names of the events, and the client secret, never appear, whatever happened
//! (applied, dead-lettered, refused by Skeelo, retried).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skeelo_shared::broker::{self, Publisher, EVENTS_EXCHANGE};
use skeelo_shared::event::EventType::*;
use skeelo_shared::sample;
use skeelo_sim::{Faults, SimConfig};
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let log_path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("logs-{port}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_skeelo-workers"))
        .env("AMQP_URL", &w.amqp_url)
        .env("DATABASE_URL", &w.database_url)
        .env("SKEELO_BASE_URL", w.sim.base_url())
        .env("SKEELO_CLIENT_ID", "demo-client")
        .env("SKEELO_CLIENT_SECRET", secret)
        .env("SKEELO_RATE_PER_SECOND", "200")
        .env("SKEELO_RETRY_DELAYS", "100ms")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("skeelo-workers starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
    // Wait until every event was handled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        let handled: f64 = text
            .lines()
            .filter(|l| l.starts_with("skeelo_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if handled >= events.len() as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {handled} of {} handled",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let status = worker.wait().expect("exits");
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
