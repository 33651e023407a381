//! TLS-only services (`deploy/tls.sh`: a CA made for the run, PostgreSQL on 5443 and a
//! RabbitMQ node on 5671 that accept TLS only): the fleet handles a sync end to end
//! over `sslmode=verify-full`, and over `sslmode=require`, with `amqps://` and the CA;
//! and it stops within seconds, non-zero and naming the cause, on a
//! wrong CA or a wrong password — waiting cannot fix those.
//!
//! It starts services of its own and needs root, so it is `#[ignore]`d and CI runs it
//! alone: `cargo test -p skeelo-workers --test tls -- --ignored`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use skeelo_broker::{self as broker, Publisher, EVENTS_EXCHANGE, RESULTS_QUEUE};
use skeelo_domain::event::EventType::Sync;
use skeelo_domain::outcome::{EventResult, Outcome};
use skeelo_domain::sample;
use skeelo_sim::SimConfig;
use skeelo_tests::process::WorkerProcess;
use skeelo_tests::World;

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tls.sh")
}

/// Where the TLS-only services are.
struct Services {
    ca: String,
    other_ca: String,
    /// `postgres://user:password@localhost:5443`
    database: String,
    /// `amqps://guest:guest@localhost:5671`
    amqps: String,
}

impl Services {
    fn start() -> Services {
        let mut vars = skeelo_tests::script_vars(&script(), "start");
        let mut var = |name: &str| {
            vars.remove(name)
                .unwrap_or_else(|| panic!("deploy/tls.sh printed no {name}"))
        };
        Services {
            ca: var("CA"),
            other_ca: var("OTHER_CA"),
            database: var("DATABASE"),
            amqps: var("AMQPS"),
        }
    }

    /// A new database on the TLS-only PostgreSQL, over TLS.
    fn database(&self, name: &str) -> String {
        let status = Command::new("psql")
            .arg(format!(
                "{}/postgres?sslmode=verify-full&sslrootcert={}",
                self.database, self.ca
            ))
            .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
            .status()
            .expect("psql runs");
        assert!(status.success(), "database {name} created");
        format!("{}/{name}", self.database)
    }
}

/// Runs the worker binary with these settings until it exits or `limit` passes;
/// returns its status (None: still running, then killed) and what it wrote.
fn run_until_exit(env: &[(&str, String)], limit: Duration) -> (Option<i32>, String, Duration) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skeelo-workers"));
    command
        .env("SKEELO_BASE_URL", "http://127.0.0.1:9")
        .env("SKEELO_CLIENT_ID", "demo-client")
        .env("SKEELO_CLIENT_SECRET", "demo-secret")
        .env("SKEELO_RATE_PER_SECOND", "unlimited")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let started = Instant::now();
    let mut child = command.spawn().expect("skeelo-workers starts");
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
    }
    (status, err, started.elapsed())
}

/// Starts a worker on `database_url` and `amqps`, publishes a sync for `contract` over
/// TLS as the ERP, and waits for its result: Applied, and the subscription at Skeelo.
async fn sync_end_to_end(w: &World, amqps: &str, database_url: &str, contract: &str) {
    let env = [
        ("AMQP_URL", amqps),
        ("DATABASE_URL", database_url),
        ("RUST_LOG", "info"),
    ];
    let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls");
    let _ = std::fs::create_dir_all(&log_dir);
    let log = std::fs::File::create(log_dir.join(format!("{contract}.log"))).expect("log file");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_skeelo-workers"));
    let worker = WorkerProcess::start(binary, w, &env, Stdio::from(log))
        .await
        .expect("the worker starts over TLS");
    let sync = sample::event(Sync, contract, 1, &["SKEELO-EBOOKS"]);
    let event_id = sync["event_id"].as_str().unwrap_or_default().to_string();
    let conn = broker::connect(amqps, "erp-tls")
        .await
        .expect("the ERP connects over TLS");
    let publisher = Publisher::open(&conn).await.expect("publisher");
    publisher
        .publish_json(
            EVENTS_EXCHANGE,
            "contract.sync",
            &event_id,
            sync.to_string().as_bytes(),
        )
        .await
        .expect("published over TLS");
    let channel = conn.create_channel().await.expect("channel");
    let deadline = Instant::now() + Duration::from_secs(30);
    let result = loop {
        let got = channel
            .basic_get(RESULTS_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        if let Some(m) = got {
            if let Ok(r) = serde_json::from_slice::<EventResult>(&m.delivery.data) {
                if r.event_id == event_id {
                    break r;
                }
            }
            continue;
        }
        assert!(Instant::now() < deadline, "no result for the sync over TLS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(result.outcome, Outcome::Applied);
    assert!(w.sim.subscription(contract).is_some(), "created at Skeelo");
    let status = worker.stop().expect("stops");
    assert!(status.success(), "{status:?}");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts TLS-only PostgreSQL and RabbitMQ of its own (needs root): run alone (CI runs it after the other tests)"]
async fn the_fleet_works_over_tls_and_stops_at_once_on_what_waiting_cannot_fix() {
    let tls = Services::start();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database = tls.database(&format!("skeelo_tls_{}", &id[..12]));
    let verified_db = format!("{database}?sslmode=verify-full&sslrootcert={}", tls.ca);
    let amqps = format!("{}/%2f?cacertfile={}", tls.amqps, tls.ca);

    // 1. verify-full, then require (encrypted, the certificate not checked: libpq's
    //    meaning), with amqps and the CA: a sync end to end each time.
    let w = World::with_sim(SimConfig::default()).await.expect("world");
    let required = format!("{database}?sslmode=require");
    for (mode, database_url) in [("verify-full", &verified_db), ("require", &required)] {
        let contract = format!("TLS{}{mode}", &id[..8]);
        sync_end_to_end(&w, &amqps, database_url, &contract).await;
        eprintln!("sslmode={mode} and amqps: a sync applied end to end");
    }

    // 3. What waiting cannot fix stops the process within seconds, naming the cause.
    let wrong_password = database.replacen(":skeelo@", ":wrong@", 1);
    let cases = [
        (
            "a CA that did not sign the database's certificate",
            amqps.clone(),
            format!(
                "{database}?sslmode=verify-full&sslrootcert={}",
                tls.other_ca
            ),
            "certificate",
        ),
        (
            "a wrong database password",
            amqps.clone(),
            format!(
                "{wrong_password}?sslmode=verify-full&sslrootcert={}",
                tls.ca
            ),
            "28P01",
        ),
        (
            "a CA that did not sign the broker's certificate",
            format!("{}/%2f?cacertfile={}", tls.amqps, tls.other_ca),
            verified_db.clone(),
            "certificate",
        ),
        (
            "a wrong broker password",
            format!(
                "{}/%2f?cacertfile={}",
                tls.amqps.replacen("guest:guest", "guest:wrong", 1),
                tls.ca
            ),
            verified_db.clone(),
            "AMQP_URL cannot be used",
        ),
    ];
    for (what, amqp_url, database_url, named) in cases {
        let (status, err, took) = run_until_exit(
            &[("AMQP_URL", amqp_url), ("DATABASE_URL", database_url)],
            Duration::from_secs(20),
        );
        eprintln!(
            "{what}: exit {status:?} after {took:?}: {}",
            err.lines().last().unwrap_or_default()
        );
        assert!(
            status.is_some_and(|c| c != 0),
            "{what}: exits non-zero (status {status:?}):\n{err}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{what}: within seconds ({took:?})"
        );
        assert!(
            err.contains(named),
            "{what}: names the cause ({named}):\n{err}"
        );
        assert!(
            !err.contains("skeelo@") && !err.contains(":wrong@"),
            "{what}: no password:\n{err}"
        );
    }
    w.close().await.expect("cleanup");
}
