//! Chaos: while ≥ 300 contracts with random histories flow through two real
//! `skeelo-workers` processes, one is killed with SIGKILL, RabbitMQ and PostgreSQL are
//! restarted, and Skeelo is down for 30 s with its tokens revoked. Afterwards every
//! contract is right at Skeelo, no valid event was dead-lettered, and every event has
//! a result.
//!
//! It restarts the machine's RabbitMQ and PostgreSQL, so it never runs with other
//! tests: it is `#[ignore]`d and CI runs it alone, after the rest
//! (`cargo test -p skeelo-workers --test chaos -- --ignored`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use serde_json::Value;
use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::process::WorkerProcess;
use skeelo_tests::{erp, World};

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
    erp::read_results(w.amqp_url.clone(), results.clone());

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

    erp::publish_all(&w.amqp_url, &batches[0], Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("chaos {:?}: SIGKILL worker a", started.elapsed());
    a.kill();
    erp::publish_all(&w.amqp_url, &batches[1], Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    a = worker(&w, "worker-a2").await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("chaos {:?}: restart RabbitMQ", started.elapsed());
    sh("rabbitmqctl", &["stop_app"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sh("rabbitmqctl", &["start_app"]);
    sh("rabbitmqctl", &["await_startup"]);
    erp::publish_all(&w.amqp_url, &batches[2], Duration::ZERO).await;

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
    erp::publish_all(&w.amqp_url, &batches[3], Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    w.sim.set_faults(normal);
    eprintln!("chaos {:?}: Skeelo back", started.elapsed());

    // Every event ends with a result, and everything is right.
    erp::assert_all_right(&w.sim, &all, &histories, &results, Duration::from_secs(300)).await;
    eprintln!("chaos {:?}: every event has a result", started.elapsed());

    for p in [a, b] {
        let status = p.stop().expect("worker exits");
        assert!(status.success(), "a SIGTERM stop exits 0: {status:?}");
    }
    w.close().await.expect("cleanup");
}
