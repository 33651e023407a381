//! Chaos: while ≥ 300 contracts with random histories flow through two real
//! `skeelo-workers` processes, one is killed with SIGKILL, RabbitMQ and PostgreSQL are
//! restarted, and Skeelo is down for 30 s with its tokens revoked. Afterwards every
//! contract is right at Skeelo, no valid event was dead-lettered, and every event has
//! a result.
//!
//! It restarts the machine's RabbitMQ and PostgreSQL, so it never runs with other
//! tests: it is `#[ignore]`d and CI runs it alone, after the rest
//! (`cargo test -p skeelo-workers --test chaos -- --ignored`).

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use rand::seq::SliceRandom;
use serde_json::Value;
use skeelo_broker::{self as broker, Publisher, EVENTS_EXCHANGE, RESULTS_QUEUE};
use skeelo_domain::outcome::{EventResult, Outcome};
use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::process::WorkerProcess;
use skeelo_tests::World;

/// A worker process with this test's settings, logging to target/tmp/chaos/NAME.log.
async fn worker(w: &World, name: &str) -> WorkerProcess {
    let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    let _ = std::fs::create_dir_all(&log_dir);
    let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("log file");
    let env = [
        ("SKEELO_RATE_PER_SECOND", "40"),
        ("SKEELO_PREFETCH", "8"),
        ("SKEELO_RETRY_DELAYS", "200ms,1s,2s"),
        ("SKEELO_PROBE_INTERVAL_MS", "500"),
        ("RUST_LOG", "info"),
    ];
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_skeelo-workers"));
    WorkerProcess::start(binary, w, &env, Stdio::from(log))
        .await
        .expect("skeelo-workers starts")
}

fn sh(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .expect("command runs");
    assert!(status.success(), "{program} {args:?} failed");
}

fn pg_version() -> String {
    let out = Command::new("sh")
        .args(["-c", "ls /etc/postgresql | sort -V | tail -n 1"])
        .output()
        .expect("ls");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The ERP's side: publishes with confirms, reconnecting when the broker restarts.
async fn publish_all(amqp_url: &str, events: &[Value]) {
    let mut i = 0;
    while i < events.len() {
        let attempt = async {
            let conn = broker::connect(amqp_url, "erp-chaos").await?;
            let publisher = Publisher::open(&conn).await?;
            while i < events.len() {
                let e = &events[i];
                let key = format!("contract.{}", e["type"].as_str().unwrap_or("sync"));
                let id = e["event_id"].as_str().unwrap_or_default();
                publisher
                    .publish_json(EVENTS_EXCHANGE, &key, id, e.to_string().as_bytes())
                    .await?;
                i += 1;
            }
            let _ = conn.close(200, "done".into()).await;
            Ok::<(), anyhow::Error>(())
        };
        if attempt.await.is_err() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The ERP's results reader, reconnecting when the broker restarts.
fn read_results(amqp_url: String, results: Arc<Mutex<Vec<EventResult>>>) {
    tokio::spawn(async move {
        loop {
            let session = async {
                let conn = broker::connect(&amqp_url, "erp-chaos-results").await?;
                let channel = conn.create_channel().await?;
                let mut consumer = channel
                    .basic_consume(
                        RESULTS_QUEUE.into(),
                        "erp-chaos".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                while let Some(Ok(d)) = consumer.next().await {
                    if let Ok(r) = serde_json::from_slice::<EventResult>(&d.data) {
                        if let Ok(mut v) = results.lock() {
                            v.push(r);
                        }
                    }
                    let _ = d.ack(BasicAckOptions::default()).await;
                }
                Ok::<(), anyhow::Error>(())
            };
            let _ = session.await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts RabbitMQ and PostgreSQL: run alone (CI runs it after the other tests)"]
async fn the_fleet_survives_kills_restarts_and_an_outage() {
    let config = SimConfig {
        rate_per_second: Some(60),
        ..SimConfig::default()
    };
    let w = World::with_sim(config).await.expect("world");
    let mut a = worker(&w, "worker-a").await;
    let b = worker(&w, "worker-b").await;
    let results = Arc::new(Mutex::new(Vec::new()));
    read_results(w.amqp_url.clone(), results.clone());

    let mut rng = rand::rng();
    let mut histories = BTreeMap::new();
    let mut all = Vec::new();
    for c in 0..320 {
        let id = format!("CH{c:04}");
        let h = skeelo_domain::sample::history(&mut rng, &id, 7);
        all.extend(h.iter().cloned());
        histories.insert(id, h);
    }
    all.shuffle(&mut rng);
    let batches: Vec<Vec<Value>> = all
        .chunks(all.len().div_ceil(4))
        .map(<[Value]>::to_vec)
        .collect();
    let started = Instant::now();

    publish_all(&w.amqp_url, &batches[0]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("chaos {:?}: SIGKILL worker a", started.elapsed());
    a.kill();
    publish_all(&w.amqp_url, &batches[1]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    a = worker(&w, "worker-a2").await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("chaos {:?}: restart RabbitMQ", started.elapsed());
    sh("rabbitmqctl", &["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sh("rabbitmqctl", &["start_app"]);
    sh("rabbitmqctl", &["await_startup"]);
    publish_all(&w.amqp_url, &batches[2]).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("chaos {:?}: restart PostgreSQL", started.elapsed());
    sh(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &pg_version(),
            "main",
            "restart",
            "-m",
            "fast",
        ],
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "chaos {:?}: Skeelo down for 30 s, tokens revoked",
        started.elapsed()
    );
    let normal = w.sim.faults();
    w.sim.expire_tokens();
    w.sim.set_faults(Faults {
        down: true,
        ..normal.clone()
    });
    publish_all(&w.amqp_url, &batches[3]).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    w.sim.set_faults(normal);
    eprintln!("chaos {:?}: Skeelo back", started.elapsed());

    // Every event ends with a result.
    let wanted: HashSet<String> = all
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_string))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
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
    eprintln!("chaos {:?}: every event has a result", started.elapsed());

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
    let wrong = skeelo_tests::wrong_at_skeelo(&w.sim, &histories);
    assert!(
        wrong.is_empty(),
        "{} contracts wrong at Skeelo:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        w.sim.anomalies().is_empty(),
        "calls a correct client never makes: {:?}",
        w.sim.anomalies()
    );

    for p in [a, b] {
        let status = p.stop().expect("worker exits");
        assert!(status.success(), "a SIGTERM stop exits 0: {status:?}");
    }
    w.close().await.expect("cleanup");
}
