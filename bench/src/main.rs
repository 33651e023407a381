//! The fleet's benchmark: everything measured side by side in one run, on this machine,
//! with RabbitMQ, PostgreSQL, the simulator and the worker processes sharing it.
//!
//! Run it with `deploy/bench.sh` (it builds the release binaries first), or
//! `cargo run --release -p bench -- --help` for the knobs. It prints one block of
//! figures per scenario; docs/performance.md keeps the last run's figures.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use skeelo_broker::{self as broker, Publisher, EVENTS_EXCHANGE};
use skeelo_domain::event::EventType;
use skeelo_domain::sample;
use skeelo_sim::{Faults, SimConfig};
use skeelo_tests::process::{wait_handled, WorkerProcess as Worker};
use skeelo_tests::World;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

struct Opts {
    throughput_events: usize,
    rss_events: usize,
    quick: bool,
    only: Option<String>,
}

impl Opts {
    fn runs(&self, scenario: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == scenario)
    }
}

fn opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        throughput_events: 60_000,
        rss_events: 100_000,
        quick: false,
        only: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => {
                o.quick = true;
                o.throughput_events = 3_000;
                o.rss_events = 10_000;
            }
            "--throughput-events" => {
                i += 1;
                o.throughput_events = args.get(i).context("a number")?.parse()?;
            }
            "--only" => {
                i += 1;
                o.only = Some(args.get(i).context("a scenario name")?.clone());
            }
            "--rss-events" => {
                i += 1;
                o.rss_events = args.get(i).context("a number")?.parse()?;
            }
            "--help" | "-h" => {
                println!(
                    "bench: measures the fleet on this machine (RabbitMQ and PostgreSQL must run: deploy/services.sh)\n\n\
                     --quick                  small sizes, for a smoke run (figures not comparable)\n\
                     --throughput-events N    events for the throughput scenario (default 60000)\n\
                     --rss-events N           backlog for the memory scenario (default 100000)\n\
                     --only NAME              one scenario: ceiling, throughput, rate, memory, latency, wave"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (try --help)"),
        }
        i += 1;
    }
    Ok(o)
}

fn worker_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|d| d.join("skeelo-workers"))
        .context("no folder for the binaries")?;
    if !path.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// Publishes one sync as the ERP does (confirmed).
async fn publish_sync(publisher: &Publisher, e: &serde_json::Value) -> anyhow::Result<()> {
    let eid = e["event_id"].as_str().unwrap_or_default();
    publisher
        .publish_json(
            EVENTS_EXCHANGE,
            "contract.sync",
            eid,
            e.to_string().as_bytes(),
        )
        .await?;
    Ok(())
}

async fn start_worker(w: &World, rate: Option<u32>, consumers: &str) -> anyhow::Result<Worker> {
    let rate = rate.map_or("unlimited".to_string(), |r| r.to_string());
    // The log level a fleet ships with: a line per event is part of its cost.
    let env = [
        ("SKEELO_RATE_PER_SECOND", rate.as_str()),
        ("SKEELO_CONSUMERS", consumers),
        ("RUST_LOG", "info"),
    ];
    Worker::start(&worker_binary()?, w, &env, Stdio::null()).await
}

/// user+sys seconds and peak RSS (KiB) of a process, from /proc.
fn cpu_and_peak_rss(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit(')').next().context("stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3 of stat, utime 14, stime 15 (1-based).
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    let ticks = 100.0; // USER_HZ on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok(((utime + stime) / ticks, hwm))
}

/// The ERP: publishes many events with confirms, a window at a time.
async fn publish_many(amqp_url: &str, events: &[Value]) -> anyhow::Result<Duration> {
    let conn = broker::connect(amqp_url, "bench-erp").await?;
    let publisher = Publisher::open(&conn).await?;
    let started = Instant::now();
    for chunk in events.chunks(256) {
        let sends = chunk.iter().map(|e| {
            let key = format!("contract.{}", e["type"].as_str().unwrap_or("sync"));
            let id = e["event_id"].as_str().unwrap_or_default().to_string();
            let body = e.to_string();
            let p = publisher.clone();
            async move {
                p.publish_json(EVENTS_EXCHANGE, &key, &id, body.as_bytes())
                    .await
            }
        });
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
    }
    let took = started.elapsed();
    let _ = conn.close(200, "done".into()).await;
    Ok(took)
}

fn syncs(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            sample::event(
                EventType::Sync,
                &format!("{prefix}{i:06}"),
                1,
                &["SKEELO-EBOOKS"],
            )
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Milliseconds from each publish to the subscription's creation at Skeelo.
fn publish_to_call_ms(w: &World, published: &HashMap<String, SystemTime>) -> Vec<f64> {
    let mut ms: Vec<f64> = published
        .iter()
        .filter_map(|(id, at)| {
            let sub = w.sim.subscription(id)?;
            let created = OffsetDateTime::parse(&sub.updated_at, &Rfc3339).ok()?;
            let at = OffsetDateTime::from(*at);
            Some((created - at).as_seconds_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// Broker ceiling: publish (confirms) and consume (acks) the same messages, no work.
async fn ceiling(n: usize) -> anyhow::Result<f64> {
    let w = World::new().await?;
    let conn = broker::connect(&w.amqp_url, "bench-ceiling").await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), broker::long_string("quorum"));
    ch.queue_declare("bench.ceiling".into(), QueueDeclareOptions::durable(), args)
        .await?;
    let consumer_ch = conn.create_channel().await?;
    consumer_ch
        .basic_qos(200, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_ch
        .basic_consume(
            "bench.ceiling".into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let body = sample::event(EventType::Sync, "CEIL", 1, &["SKEELO-EBOOKS"]).to_string();
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            match consumer.next().await {
                Some(Ok(d)) => {
                    let _ = d.ack(BasicAckOptions::default()).await;
                    seen += 1;
                }
                _ => break,
            }
        }
        seen
    });
    let publisher = Publisher::open(&conn).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let sends = chunk.iter().map(|i| {
            let p = publisher.clone();
            let body = body.clone();
            async move {
                p.publish_json("", "bench.ceiling", &i.to_string(), body.as_bytes())
                    .await
            }
        });
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
    }
    let seen = consume.await?;
    let rate = seen as f64 / started.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    w.close().await?;
    Ok(rate)
}

async fn throughput(n: usize) -> anyhow::Result<(f64, f64)> {
    let w = World::new().await?;
    {
        let warm = start_worker(&w, None, "all").await?;
        drop(warm); // declares the topology and migrates, then stops
    }
    publish_many(&w.amqp_url, &syncs("TP", n)).await?;
    let worker = start_worker(&w, None, "all").await?;
    let (cpu_before, _) = cpu_and_peak_rss(worker.pid())?;
    let took = wait_handled(&[worker.port], n, Duration::from_secs(900)).await?;
    let (cpu_after, _) = cpu_and_peak_rss(worker.pid())?;
    drop(worker);
    w.close().await?;
    let rate = n as f64 / took.as_secs_f64();
    let cpu_us = (cpu_after - cpu_before) / n as f64 * 1e6;
    Ok((rate, cpu_us))
}

async fn peak_rss(n: usize) -> anyhow::Result<(u64, f64)> {
    let w = World::new().await?;
    {
        let warm = start_worker(&w, None, "all").await?;
        drop(warm);
    }
    publish_many(&w.amqp_url, &syncs("RSS", n)).await?;
    let worker = start_worker(&w, None, "all").await?;
    let took = wait_handled(&[worker.port], n, Duration::from_secs(1800)).await?;
    let (_, hwm_kib) = cpu_and_peak_rss(worker.pid())?;
    drop(worker);
    w.close().await?;
    Ok((hwm_kib, n as f64 / took.as_secs_f64()))
}

struct RateFigures {
    achieved_per_s: f64,
    /// Calls over the span from the first accepted call to the last (start-up left out).
    steady_per_s: f64,
    busiest_second: u64,
    throttled: u64,
}

async fn rate_use(processes: usize, rate: u32, n: usize) -> anyhow::Result<RateFigures> {
    let w = World::with_sim(SimConfig {
        rate_per_second: Some(rate),
        ..SimConfig::default()
    })
    .await?;
    {
        let warm = start_worker(&w, Some(rate), "all").await?;
        drop(warm);
    }
    publish_many(&w.amqp_url, &syncs("RATE", n)).await?;
    // The warm-up's calls (token, catalogue) are not part of the measured window.
    w.sim.reset();
    let calls_before = w.sim.request_count("create_subscription", 201);
    // Start them together, and time from the start: a process that is up first works
    // inside the measured window, never before it.
    let started = Instant::now();
    let starting = (0..processes).map(|_| start_worker(&w, Some(rate), "all"));
    let workers: Vec<Worker> = futures_util::future::join_all(starting)
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let ports: Vec<u16> = workers.iter().map(|w| w.port).collect();
    wait_handled(&ports, n, Duration::from_secs(900)).await?;
    let took = started.elapsed().as_secs_f64();
    let calls = w.sim.request_count("create_subscription", 201) - calls_before;
    let throttled = ["token", "list_products", "create_subscription"]
        .iter()
        .map(|op| w.sim.request_count(op, 429))
        .sum();
    let figures = RateFigures {
        achieved_per_s: calls as f64 / took,
        steady_per_s: w.sim.accepted_span().map_or(0.0, |span| {
            calls.saturating_sub(1) as f64 / span.as_secs_f64()
        }),
        busiest_second: w.sim.max_accepted_in_one_second(),
        throttled,
    };
    drop(workers);
    w.close().await?;
    Ok(figures)
}

async fn latency_at_half_rate(rate: u32, seconds: u64) -> anyhow::Result<Vec<f64>> {
    let w = World::with_sim(SimConfig::default()).await?;
    let worker = start_worker(&w, Some(rate), "all").await?;
    let conn = broker::connect(&w.amqp_url, "bench-erp").await?;
    let publisher = Publisher::open(&conn).await?;
    let every = Duration::from_secs_f64(2.0 / f64::from(rate));
    let mut published = HashMap::new();
    let mut next = Instant::now();
    let n = (seconds as f64 / every.as_secs_f64()) as usize;
    for (i, e) in syncs("LAT", n).iter().enumerate() {
        tokio::time::sleep_until(next.into()).await;
        let id = format!("LAT{i:06}");
        published.insert(id, SystemTime::now());
        publish_sync(&publisher, e).await?;
        next += every;
    }
    wait_handled(&[worker.port], n, Duration::from_secs(120)).await?;
    let ms = publish_to_call_ms(&w, &published);
    drop(worker);
    let _ = conn.close(200, "done".into()).await;
    w.close().await?;
    Ok(ms)
}

struct WaveFigures {
    sync_ms: Vec<f64>,
    use_of_rate: f64,
}

async fn wave(rate: u32, backlog: usize, window: Duration) -> anyhow::Result<WaveFigures> {
    let w = World::with_sim(SimConfig::default()).await?;
    // Contracts that exist at Skeelo, so each suspension costs a call.
    let existing = syncs("WAVE", backlog);
    {
        let fast = start_worker(&w, None, "all").await?;
        publish_many(&w.amqp_url, &existing).await?;
        wait_handled(&[fast.port], backlog, Duration::from_secs(900)).await?;
    }
    let suspensions: Vec<Value> = (0..backlog)
        .map(|i| sample::event(EventType::Suspend, &format!("WAVE{i:06}"), 2, &[]))
        .collect();
    publish_many(&w.amqp_url, &suspensions).await?;
    let worker = start_worker(&w, Some(rate), "all").await?;
    let status_calls = |w: &World| w.sim.request_count("set_status", 200);
    let conn = broker::connect(&w.amqp_url, "bench-erp").await?;
    let publisher = Publisher::open(&conn).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls_at_start = status_calls(&w) + w.sim.request_count("create_subscription", 201);
    let started = Instant::now();
    let mut published = HashMap::new();
    let mut i = 0;
    while started.elapsed() < window {
        let id = format!("SIGNUP{i:04}");
        let e = sample::event(EventType::Sync, &id, 1, &["SKEELO-AUDIOBOOKS"]);
        published.insert(id, SystemTime::now());
        publish_sync(&publisher, &e).await?;
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let calls = status_calls(&w) + w.sim.request_count("create_subscription", 201) - calls_at_start;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sync_ms = publish_to_call_ms(&w, &published);
    drop(worker);
    let _ = conn.close(200, "done".into()).await;
    w.sim.set_faults(Faults::default());
    w.close().await?;
    Ok(WaveFigures {
        sync_ms,
        use_of_rate: calls as f64 / (elapsed * f64::from(rate)),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = opts()?;
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string))
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {machine}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "run: {}",
        if o.quick {
            "--quick (small sizes)"
        } else {
            "full"
        }
    );

    let ceiling_rate = if o.runs("ceiling") || o.runs("throughput") {
        let r = ceiling(o.throughput_events).await?;
        println!("\n[ceiling] broker publish (confirms) + consume (acks), no work: {r:.0} msg/s");
        r
    } else {
        f64::NAN
    };

    if o.runs("throughput") {
        let (rate, cpu_us) = throughput(o.throughput_events).await?;
        println!(
            "[throughput] {} syncs, one process, unthrottled simulator: {rate:.0} events/s = {:.0} % of the ceiling; CPU {cpu_us:.0} µs/event",
            o.throughput_events,
            rate / ceiling_rate * 100.0
        );
    }

    let backlog = if o.quick { 600 } else { 3000 };
    for processes in [1, 3].into_iter().filter(|_| o.runs("rate")) {
        let f = rate_use(processes, 50, backlog).await?;
        println!(
            "[rate] partner rate 50/s, backlog {backlog}, {processes} process(es): achieved {:.1}/s = {:.1} % of allowed (from start-up; {:.1} % from the first call to the last); busiest second {} calls; 429s {}",
            f.achieved_per_s,
            f.achieved_per_s / 50.0 * 100.0,
            f.steady_per_s / 50.0 * 100.0,
            f.busiest_second,
            f.throttled
        );
    }

    if o.runs("memory") {
        let (hwm, drain_rate) = peak_rss(o.rss_events).await?;
        println!(
            "[memory] {} events drained at {drain_rate:.0}/s; worker peak RSS {:.1} MiB",
            o.rss_events,
            hwm as f64 / 1024.0
        );
    }

    if o.runs("latency") {
        let lat = latency_at_half_rate(50, if o.quick { 5 } else { 20 }).await?;
        println!(
        "[latency] at half the partner rate (25/s of 50/s), {} syncs: publish → Skeelo call p50 {:.1} ms, p99 {:.1} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    }

    if !o.runs("wave") {
        return Ok(());
    }
    let wave_backlog = if o.quick { 1000 } else { 5000 };
    let f = wave(
        50,
        wave_backlog,
        Duration::from_secs(if o.quick { 8 } else { 30 }),
    )
    .await?;
    println!(
        "[wave] partner rate 50/s, {wave_backlog} suspensions draining, {} sign-ups one by one: publish → Skeelo call p50 {:.0} ms, p99 {:.0} ms; partner rate used {:.1} %",
        f.sync_ms.len(),
        percentile(&f.sync_ms, 0.5),
        percentile(&f.sync_ms, 0.99),
        f.use_of_rate * 100.0
    );
    Ok(())
}
