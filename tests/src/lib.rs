//! Test harness: every test gets its own RabbitMQ vhost, its own PostgreSQL database
//! and its own simulator, so tests run in parallel and never see each other's
//! messages. The broker and database are real; only Skeelo is simulated.
//!
//! `TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672`) and
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) say
//! where the servers are; the harness creates and drops what it uses on them.

pub mod erp;
pub mod process;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lapin::types::FieldTable;
use serde_json::Value;
use skeelo_broker::{self as broker, Publisher, EVENTS_EXCHANGE};
use skeelo_domain::event::EventType;
use skeelo_domain::outcome::EventResult;
use skeelo_partner::api::{ClientConfig, Credentials};
use skeelo_sim::{SimConfig, SimHandle};
use skeelo_workers::{Running, Settings};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Runs `script command` (a deploy script that starts services of its own) and returns
/// the `NAME=value` lines it printed; panics with its output when it fails.
pub fn script_vars(
    script: &std::path::Path,
    command: &str,
) -> std::collections::HashMap<String, String> {
    let out = std::process::Command::new(script)
        .arg(command)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", script.display()));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{} {command} failed:\n{text}",
        script.display()
    );
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One isolated world: vhost, database, simulator, and (once started) a fleet.
pub struct World {
    /// The vhost's name.
    pub vhost: String,
    /// `AMQP_URL` for this world.
    pub amqp_url: String,
    /// The database's name.
    pub db_name: String,
    /// `DATABASE_URL` for this world.
    pub database_url: String,
    /// The simulated Skeelo.
    pub sim: SimHandle,
    fleets: Vec<(oneshot::Sender<()>, Running)>,
    erp: Option<(lapin::Connection, Publisher)>,
    results: Arc<Mutex<Vec<EventResult>>>,
}

fn amqp_base() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

fn admin_db_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("running rabbitmqctl (is RabbitMQ installed?)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn admin_db() -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&admin_db_url(), tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL for the test database")?;
    tokio::spawn(conn);
    Ok(client)
}

impl World {
    /// A fresh vhost, database and simulator.
    pub async fn new() -> anyhow::Result<World> {
        Self::with_sim(SimConfig::default()).await
    }

    /// Same, with the simulator configured.
    pub async fn with_sim(config: SimConfig) -> anyhow::Result<World> {
        let id = Uuid::new_v4().simple().to_string();
        let vhost = format!("skeelo-test-{}", &id[..12]);
        rabbitmqctl(&["add_vhost", &vhost])?;
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
        let db_name = format!("skeelo_test_{}", &id[..12]);
        admin_db()
            .await?
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await?;
        // The test's database on the same server, with the same parameters (sslmode…).
        let base = admin_db_url();
        let (base, query) = match base.split_once('?') {
            Some((b, q)) => (b.to_string(), format!("?{q}")),
            None => (base, String::new()),
        };
        let database_url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{db_name}{query}"),
            None => bail!("TEST_DATABASE_URL has no database part"),
        };
        let sim = skeelo_sim::spawn(config).await?;
        Ok(World {
            amqp_url: format!("{}/{}", amqp_base(), vhost),
            vhost,
            db_name,
            database_url,
            sim,
            fleets: Vec::new(),
            erp: None,
            results: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The environment every program of the fleet reads, pointed at this world: its
    /// database, broker and simulator (with the simulator's credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.database_url.clone()),
            ("AMQP_URL", self.amqp_url.clone()),
            ("SKEELO_BASE_URL", self.sim.base_url()),
            ("SKEELO_CLIENT_ID", "demo-client".into()),
            ("SKEELO_CLIENT_SECRET", "demo-secret".into()),
        ]
    }

    /// Settings for a fleet process of this world (tests adjust them).
    pub fn settings(&self) -> Settings {
        Settings {
            amqp_url: self.amqp_url.clone(),
            database_url: self.database_url.clone(),
            skeelo: ClientConfig {
                base_url: self.sim.base_url(),
                credentials: Credentials {
                    client_id: "demo-client".into(),
                    client_secret: "demo-secret".into(),
                },
                timeout: Duration::from_secs(5),
            },
            rate_per_second: None,
            weights: skeelo_partner::pacer::Weights::default(),
            margin: skeelo_partner::pacer::Margin::default(),
            http_addr: "127.0.0.1:0".parse().expect("a valid address literal"),
            consumers: EventType::ALL.to_vec(),
            prefetch: 16,
            db_pool_size: 16,
            retry: skeelo_workers::Retry {
                immediate: 2,
                immediate_base: Duration::from_millis(10),
                delays: vec![Duration::from_millis(100), Duration::from_millis(300)],
                max_attempts: 6,
                call_budget: Duration::from_secs(3),
            },
            outage: skeelo_workers::Outage {
                trip: skeelo_workers::Trip {
                    consecutive: 8,
                    window: Duration::from_secs(10),
                    min_calls: 40,
                },
                probe_interval: Duration::from_millis(200),
            },
            queue_watch: Duration::from_secs(1),
            stop_grace: Duration::from_secs(20),
            management_url: Some(
                std::env::var("RABBITMQ_MANAGEMENT_URL")
                    .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into()),
            ),
            // Above the broker's statistics interval (5 s), whose figures lag that much.
            held_after: Duration::from_secs(6),
            // Off, as the periodic repair: a test that wants them sets the interval.
            self_heal: None,
            repair: skeelo_workers::Repair {
                interval: None,
                guard: skeelo_repair::Guard::default(),
            },
        }
    }

    /// Starts a fleet process (in this test process) and waits until its topology is
    /// declared; then connects as the ERP and listens for results.
    pub async fn start_fleet(
        &mut self,
        settings: Settings,
    ) -> anyhow::Result<std::net::SocketAddr> {
        self.start_fleet_until(settings, "/readyz").await
    }

    /// Starts a fleet process and returns once it has its broker session (`/readyz`
    /// says `broker: up`), ready or not: for tests of a fleet that cannot do all its
    /// work.
    pub async fn start_fleet_unready(
        &mut self,
        settings: Settings,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let addr = self.start_fleet_until(settings, "/healthz").await?;
        Ok(addr)
    }

    async fn start_fleet_until(
        &mut self,
        settings: Settings,
        path: &str,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let (tx, rx) = oneshot::channel();
        let running = skeelo_workers::start(settings, async {
            let _ = rx.await;
        })
        .await?;
        let addr = running.http_addr;
        self.fleets.push((tx, running));
        self.wait_until(addr, path).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Self::readiness(addr).await.contains("broker: up") {
            if Instant::now() > deadline {
                bail!("the fleet never reached its broker");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.erp.is_none() {
            self.connect_erp().await?;
        }
        Ok(addr)
    }

    /// What a fleet's `/readyz` says now (empty if it does not answer).
    pub async fn readiness(addr: std::net::SocketAddr) -> String {
        match reqwest::get(format!("http://{addr}/readyz")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn wait_until(&self, addr: std::net::SocketAddr, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://{addr}{path}");
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the fleet never answered {path}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn connect_erp(&mut self) -> anyhow::Result<()> {
        let conn = broker::connect(&self.amqp_url, "erp-test").await?;
        let publisher = Publisher::open(&conn).await?;
        let channel = conn.create_channel().await?;
        let consumer = erp::consume_results(&channel, "erp-test-results").await?;
        let results = self.results.clone();
        tokio::spawn(async move { erp::collect(consumer, &results).await });
        self.erp = Some((conn, publisher));
        Ok(())
    }

    /// One sample from a fleet's `/metrics`, e.g. `skeelo_outage_mode{downstream="skeelo"}`
    /// (labels in the order Prometheus prints them: sorted); 0 when absent.
    pub async fn metric(addr: std::net::SocketAddr, series: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// Dead letters by state, as (reason, error_class) pairs, sorted.
    pub async fn dead_letters(&self, state: &str) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self
            .db()
            .await?
            .query(
                "SELECT reason, error_class FROM dead_letters WHERE state = $1 ORDER BY reason, error_class",
                &[&state],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Publishes an event body as the ERP does (routing key from its `type`).
    pub async fn publish(&self, body: &Value) -> anyhow::Result<()> {
        let t = body["type"].as_str().unwrap_or("sync");
        let id = body["event_id"].as_str().unwrap_or("no-id");
        self.publish_raw(&format!("contract.{t}"), id, body.to_string().as_bytes())
            .await
    }

    /// Publishes any bytes with any routing key (for invalid input).
    pub async fn publish_raw(
        &self,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let Some((_, publisher)) = &self.erp else {
            bail!("start a fleet before publishing");
        };
        publisher
            .publish_json(EVENTS_EXCHANGE, routing_key, message_id, body)
            .await?;
        Ok(())
    }

    /// The results received so far.
    pub fn results(&self) -> Vec<EventResult> {
        self.results.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` results arrived.
    pub async fn wait_results(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<EventResult>> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.results();
            if r.len() >= n {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("only {} of {} results arrived in {:?}", r.len(), n, timeout);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every one of `events` has at least one result.
    pub async fn wait_for_events(&self, events: &[Value], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let results = self.results();
            let missing = events
                .iter()
                .filter(|e| {
                    let id = e["event_id"].as_str().unwrap_or_default();
                    !results.iter().any(|r| r.event_id == id)
                })
                .count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{missing} of {} events have no result after {:?}",
                    events.len(),
                    timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The result for one event id (the last one, if several).
    pub fn result_for(&self, event: &Value) -> Option<EventResult> {
        let id = event["event_id"].as_str()?;
        self.results().into_iter().rev().find(|r| r.event_id == id)
    }

    /// Messages waiting in the dead-letter queue (reads them without removing).
    pub async fn dead_queue_len(&self) -> anyhow::Result<u32> {
        let Some((conn, _)) = &self.erp else {
            bail!("no connection");
        };
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                broker::DEAD_QUEUE.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.message_count())
    }

    /// Closes this world's fleet connections at the broker, as an operator's force
    /// close does (the ERP's stays); says how many it closed. The management API
    /// lists a connection a few seconds after it opened: it waits up to 20 s for one.
    pub async fn cut_fleet_connections(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let cut = self.cut_listed_fleet_connections().await?;
            if cut > 0 || Instant::now() > deadline {
                return Ok(cut);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn cut_listed_fleet_connections(&self) -> anyhow::Result<usize> {
        let mut base = reqwest::Url::parse(
            &std::env::var("RABBITMQ_MANAGEMENT_URL")
                .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into()),
        )?;
        let user = base.username().to_string();
        let password = base.password().map(str::to_string);
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let http = reqwest::Client::new();
        let mut list = base.clone();
        list.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("not a base URL: {base}"))?
            .extend(["api", "vhosts", &self.vhost, "connections"]);
        let connections: Vec<Value> = http
            .get(list)
            .basic_auth(&user, password.as_deref())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut cut = 0;
        for c in connections {
            if c["user_provided_name"].as_str() != Some("skeelo-workers") {
                continue;
            }
            let name = c["name"].as_str().context("a connection without a name")?;
            let mut one = base.clone();
            one.path_segments_mut()
                .map_err(|()| anyhow::anyhow!("not a base URL: {base}"))?
                .extend(["api", "connections", name]);
            http.delete(one)
                .basic_auth(&user, password.as_deref())
                .header("X-Reason", "cut by a test")
                .send()
                .await?
                .error_for_status()?;
            cut += 1;
        }
        Ok(cut)
    }

    /// A connection to this world's database.
    pub async fn db(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Stops every fleet as SIGTERM does (stop taking work, finish what is in flight)
    /// and waits until they have stopped; the ERP side stays connected.
    pub async fn stop_fleets(&mut self) -> anyhow::Result<()> {
        for (stop, running) in self.fleets.drain(..) {
            let _ = stop.send(());
            running.done.await??;
        }
        Ok(())
    }

    /// Stops the fleets (SIGTERM-like: in-flight work finishes) and drops the vhost and
    /// the database. Tests call it at the end; a failed test leaves them for inspection.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.stop_fleets().await?;
        if let Some((conn, _)) = self.erp.take() {
            let _ = conn.close(200, "test done".into()).await;
        }
        self.sim.shutdown();
        rabbitmqctl(&["delete_vhost", &self.vhost])?;
        admin_db()
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .await?;
        Ok(())
    }
}

/// What Skeelo should hold at the end, worked out independently of the fleet's rules
/// module: apply the history in version order, the way a person reads CONTRACT §2.
#[derive(Debug, PartialEq, Eq)]
pub enum Expected {
    /// Never created, or cancelled: no access, ever again.
    Gone,
    /// Active or inactive, with these products.
    Live {
        /// `active` or `inactive`.
        status: &'static str,
        /// Sorted SKUs.
        products: Vec<String>,
    },
}

/// `count` contracts named `{prefix}0000`… with random histories of up to 7 events,
/// and every event to publish: each once, every 37th twice (as a publisher's
/// retransmit would), all shuffled.
pub fn random_histories(
    count: usize,
    prefix: &str,
) -> (std::collections::BTreeMap<String, Vec<Value>>, Vec<Value>) {
    use rand::seq::SliceRandom;
    let mut rng = rand::rng();
    let mut histories = std::collections::BTreeMap::new();
    let mut all = Vec::new();
    for c in 0..count {
        let id = format!("{prefix}{c:04}");
        let h = skeelo_domain::sample::history(&mut rng, &id, 7);
        all.extend(h.iter().cloned());
        histories.insert(id, h);
    }
    let dups: Vec<Value> = all.iter().step_by(37).cloned().collect();
    all.extend(dups);
    all.shuffle(&mut rng);
    (histories, all)
}

/// The end a contract's history calls for.
pub fn expected(history: &[Value]) -> Expected {
    let (mut synced, mut suspended, mut blocked, mut cancelled) = (false, false, false, false);
    let mut products = Vec::new();
    for e in history {
        let t = e["type"].as_str().unwrap_or_default();
        if cancelled {
            continue; // nothing moves a cancelled contract
        }
        match t {
            "sync" => {
                synced = true;
                products = e["contract"]["products"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "suspend" => suspended = true,
            "reactivate" => suspended = false,
            "block" => blocked = true,
            "unblock" => blocked = false,
            "cancel" => cancelled = true,
            _ => {}
        }
    }
    products.sort();
    if !synced || cancelled {
        return Expected::Gone;
    }
    let status = if suspended || blocked {
        "inactive"
    } else {
        "active"
    };
    Expected::Live { status, products }
}

/// What the simulator holds for a contract, in the same terms.
pub fn at_skeelo(sim: &SimHandle, contract_id: &str) -> Expected {
    match sim.subscription(contract_id) {
        None => Expected::Gone,
        Some(s) if s.status == "cancelled" => Expected::Gone,
        Some(s) => {
            let mut products = s.products.clone();
            products.sort();
            let status = if s.status == "active" {
                "active"
            } else {
                "inactive"
            };
            Expected::Live { status, products }
        }
    }
}

/// The contracts whose end at Skeelo differs from their history's, in words.
pub fn wrong_at_skeelo(
    sim: &SimHandle,
    histories: &std::collections::BTreeMap<String, Vec<Value>>,
) -> Vec<String> {
    histories
        .iter()
        .filter_map(|(id, h)| {
            let want = expected(h);
            let got = at_skeelo(sim, id);
            (got != want).then(|| format!("{id}: want {want:?}, got {got:?}"))
        })
        .collect()
}
