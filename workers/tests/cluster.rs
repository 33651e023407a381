//! A RabbitMQ cluster: two `skeelo-workers` processes run against three nodes
//! (`deploy/cluster.sh`), with every queue a quorum queue replicated on all three.
//! While events stream in, the node the fleet is connected to is stopped (phase 1),
//! and later the node leading the sync queue (phase 2), each started again before the
//! next so a majority always stands. Afterwards every event has a result, none was
//! dead-lettered, every contract is right at Skeelo, and Skeelo saw no call a correct
//! client would not make.
//!
//! It starts and stops RabbitMQ nodes of its own (ports 5681-5683; the broker on 5672
//! is left alone) and needs root, so it is `#[ignore]`d and CI runs it alone:
//! `cargo test -p skeelo-workers --test cluster -- --ignored`.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use skeelo_sim::SimConfig;
use skeelo_tests::process::WorkerProcess;
use skeelo_tests::{erp, World};

const NODES: [&str; 3] = [
    "skeelo-a@localhost",
    "skeelo-b@localhost",
    "skeelo-c@localhost",
];
const MANAGEMENT_PORTS: [u16; 3] = [15681, 15682, 15683];

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster.sh")
}

/// The three nodes, up and joined; stopped and wiped when dropped (also on a failure).
struct Cluster {
    amqp_url: String,
    management_url: String,
}

impl Cluster {
    fn start() -> Cluster {
        let mut vars = skeelo_tests::script_vars(&script(), "start");
        let mut var = |name: &str| {
            vars.remove(name)
                .unwrap_or_else(|| panic!("deploy/cluster.sh printed no {name}"))
        };
        Cluster {
            amqp_url: var("AMQP_URL"),
            management_url: var("RABBITMQ_MANAGEMENT_URL"),
        }
    }

    fn ctl(node: &str, args: &[&str]) {
        let status = Command::new("rabbitmqctl")
            .args(["-q", "-n", node])
            .args(args)
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl -n {node} {args:?} failed");
    }

    /// Stops RabbitMQ on `node` (its connections close, its replicas go away).
    fn stop_node(node: &str) {
        Self::ctl(node, &["stop_app"]);
    }

    fn start_node(node: &str) {
        Self::ctl(node, &["start_app"]);
        Self::ctl(node, &["await_startup"]);
    }

    /// A management API answer from any node that is up.
    async fn api(path: &str) -> Value {
        let client = reqwest::Client::new();
        for port in MANAGEMENT_PORTS {
            let answer = client
                .get(format!("http://127.0.0.1:{port}/api/{path}"))
                .basic_auth("guest", Some("guest"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(a) = answer {
                if a.status().is_success() {
                    if let Ok(v) = a.json::<Value>().await {
                        return v;
                    }
                }
            }
        }
        panic!("no node's management API answered {path}");
    }

    /// The nodes the workers' connections are on.
    async fn fleet_nodes() -> Vec<String> {
        let connections = Self::api("connections?columns=node,client_properties").await;
        let mut nodes: Vec<String> = connections
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["client_properties"]["connection_name"] == "skeelo-workers")
            .filter_map(|c| c["node"].as_str().map(str::to_string))
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// The quorum queue's leader and its members.
    async fn queue(name: &str) -> (String, Vec<String>) {
        let q = Self::api(&format!("queues/%2F/{name}")).await;
        let leader = q["leader"].as_str().unwrap_or_default().to_string();
        let members = q["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect();
        (leader, members)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").status();
    }
}

async fn worker(w: &World, cluster: &Cluster, name: &str) -> WorkerProcess {
    let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster");
    let _ = std::fs::create_dir_all(&log_dir);
    let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("log file");
    let env = [
        ("AMQP_URL", cluster.amqp_url.as_str()),
        ("RABBITMQ_MANAGEMENT_URL", cluster.management_url.as_str()),
        ("SKEELO_RATE_PER_SECOND", "60"),
        ("SKEELO_PREFETCH", "8"),
        ("SKEELO_RETRY_DELAYS", "200ms,1s,2s"),
        ("RUST_LOG", "info"),
    ];
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_skeelo-workers"));
    WorkerProcess::start(binary, w, &env, Stdio::from(log))
        .await
        .expect("skeelo-workers starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts RabbitMQ nodes of its own (needs root): run alone (CI runs it after the other tests)"]
async fn the_fleet_fails_over_between_the_nodes_of_a_cluster() {
    let cluster = Cluster::start();
    let config = SimConfig {
        rate_per_second: Some(120),
        ..SimConfig::default()
    };
    let w = World::with_sim(config).await.expect("world");
    let a = worker(&w, &cluster, "worker-a").await;
    let b = worker(&w, &cluster, "worker-b").await;
    let results = Arc::new(Mutex::new(Vec::new()));
    erp::read_results(cluster.amqp_url.clone(), results.clone());
    let started = Instant::now();

    for q in ["erp.contracts.sync", "erp.contracts.cancel", "erp.results"] {
        let (_, members) = Cluster::queue(q).await;
        assert_eq!(
            members.len(),
            3,
            "{q} is replicated on all three nodes: {members:?}"
        );
    }

    let (histories, all) = skeelo_tests::random_histories(240, "CL");
    let parts: Vec<Vec<Value>> = all
        .chunks(all.len().div_ceil(3))
        .map(<[Value]>::to_vec)
        .collect();
    let pace = Duration::from_millis(8);
    erp::publish_all(&cluster.amqp_url, &parts[0], pace).await;

    // Phase 1: the node the fleet is connected to goes away mid-stream.
    // The management API lists a new connection once the node has emitted its
    // statistics (every 5 s by default): ask until it does.
    let deadline = Instant::now() + Duration::from_secs(20);
    let connected = loop {
        let nodes = Cluster::fleet_nodes().await;
        if !nodes.is_empty() || Instant::now() > deadline {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(!connected.is_empty(), "the workers' connections are listed");
    let victim = connected[0].clone();
    let stream = tokio::spawn({
        let url = cluster.amqp_url.clone();
        let part = parts[1].clone();
        async move { erp::publish_all(&url, &part, pace).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    eprintln!(
        "cluster {:?}: stopping {victim}, which the fleet is connected to",
        started.elapsed()
    );
    Cluster::stop_node(&victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved = loop {
        let nodes = Cluster::fleet_nodes().await;
        // Both workers connected again, to the nodes still up.
        let connections = Cluster::api("connections?columns=client_properties")
            .await
            .as_array()
            .map_or(0, |c| {
                c.iter()
                    .filter(|c| c["client_properties"]["connection_name"] == "skeelo-workers")
                    .count()
            });
        if connections >= 2 && !nodes.contains(&victim) {
            break nodes;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not reconnect to the other nodes: {nodes:?}, {connections} connections"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("cluster {:?}: the fleet is on {moved:?}", started.elapsed());
    stream.await.expect("publishing");
    Cluster::start_node(&victim);
    eprintln!("cluster {:?}: {victim} is back", started.elapsed());

    // Phase 2: the node leading a work queue goes away mid-stream.
    let (leader, _) = Cluster::queue("erp.contracts.sync").await;
    assert!(
        NODES.contains(&leader.as_str()),
        "the sync queue has a leader: {leader}"
    );
    let stream = tokio::spawn({
        let url = cluster.amqp_url.clone();
        let part = parts[2].clone();
        async move { erp::publish_all(&url, &part, pace).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    eprintln!(
        "cluster {:?}: stopping {leader}, the sync queue's leader",
        started.elapsed()
    );
    Cluster::stop_node(&leader);
    stream.await.expect("publishing");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (new_leader, _) = Cluster::queue("erp.contracts.sync").await;
    assert_ne!(new_leader, leader, "another node leads the sync queue");
    Cluster::start_node(&leader);
    eprintln!("cluster {:?}: {leader} is back", started.elapsed());

    // Every event ends with a result, and everything is right.
    erp::assert_all_right(&w.sim, &all, &histories, &results, Duration::from_secs(240)).await;
    eprintln!("cluster {:?}: every event has a result", started.elapsed());

    for p in [a, b] {
        let status = p.stop().expect("worker exits");
        assert!(status.success(), "a SIGTERM stop exits 0: {status:?}");
    }
    w.close().await.expect("cleanup");
    drop(cluster);
}
