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
use skeelo_tests::process::{wait_handled, wait_handled_every, WorkerProcess as Worker};
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
                     --only NAME              one scenario: ceiling, throughput, rate, margin, memory, latency, wave\n\n\
                     environment:\n\
                     BENCH_RATE_ROW=R/N/P     one rate row alone (e.g. 50/300/3: 50/s, 300 events, 3 processes)\n\
                     BENCH_GAPS=1             the widest gaps, the tightest windows and each 429, in detail\n\
                     BENCH_STAMPS=1           where each call's lateness came from (the workers built with\n\
                     \x20                        `cargo build --release -p skeelo-workers --features slot-stamps`)\n\
                     BENCH_LOGS=DIR           keep each worker's log there (BENCH_RUST_LOG sets its filter)\n\
                     BENCH_TIMES=FILE         every call the partner accepted in a rate row: ms after the first, and what it was"
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

async fn start_worker(
    w: &World,
    rate: Option<u32>,
    consumers: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Worker> {
    let rate = rate.map_or("unlimited".to_string(), |r| r.to_string());
    // The log level a fleet ships with: a line per event is part of its cost.
    // BENCH_RUST_LOG overrides it, to look inside a run (with BENCH_LOGS).
    let log = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
    let mut env = vec![
        ("SKEELO_RATE_PER_SECOND", rate.as_str()),
        ("SKEELO_CONSUMERS", consumers),
        ("RUST_LOG", log.as_str()),
        ("SKEELO_REPAIR_INTERVAL", "off"),
        ("SKEELO_SELF_HEAL_INTERVAL", "off"),
    ];
    env.extend_from_slice(extra);
    // BENCH_LOGS=DIR keeps each worker's log there, to find out what a stall was.
    let stderr = match std::env::var_os("BENCH_LOGS") {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            let file = std::path::Path::new(&dir)
                .join(format!("worker-{}.log", uuid::Uuid::new_v4().simple()));
            Stdio::from(std::fs::File::create(&file).with_context(|| file.display().to_string())?)
        }
        None => Stdio::null(),
    };
    Worker::start(&worker_binary()?, w, &env, stderr).await
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
        let warm = start_worker(&w, None, "all", &[]).await?;
        drop(warm); // declares the topology and migrates, then stops
    }
    publish_many(&w.amqp_url, &syncs("TP", n)).await?;
    let worker = start_worker(&w, None, "all", &[]).await?;
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
        let warm = start_worker(&w, None, "all", &[]).await?;
        drop(warm);
    }
    publish_many(&w.amqp_url, &syncs("RSS", n)).await?;
    let worker = start_worker(&w, None, "all", &[]).await?;
    let took = wait_handled(&[worker.port], n, Duration::from_secs(1800)).await?;
    let (_, hwm_kib) = cpu_and_peak_rss(worker.pid())?;
    drop(worker);
    w.close().await?;
    Ok((hwm_kib, n as f64 / took.as_secs_f64()))
}

/// How fully and how evenly a run used the partner rate, from the simulator's record
/// of every call it accepted (whatever the operation: tokens and the catalogue count
/// against the partner's rate as much as subscriptions do).
struct RateFigures {
    calls: usize,
    /// Calls over the span from the first accepted call to the last, against the rate:
    /// n calls exactly 1/rate apart are 100 %.
    use_of_rate: f64,
    /// The same from the moment the processes were started (start-up included).
    from_start: f64,
    /// The most calls accepted in any sliding second.
    busiest_second: u64,
    /// The shortest time in which rate + 1 calls arrived: at least a second, or some
    /// second held one call too many. How much room the spacing left.
    tightest_ms: f64,
    /// The longest time between two calls.
    widest_gap_ms: f64,
    throttled: u64,
}

fn rate_figures(w: &World, rate: u32, started: Instant) -> RateFigures {
    let accepted = w.sim.accepted_times();
    let times: Vec<Instant> = accepted.iter().map(|(at, _)| *at).collect();
    let rate_n = rate as usize;
    let span = match (times.first(), times.last()) {
        (Some(first), Some(last)) => last.duration_since(*first).as_secs_f64(),
        _ => 0.0,
    };
    let from_start = times
        .last()
        .map_or(0.0, |last| last.duration_since(started).as_secs_f64());
    let tightest = times
        .windows(rate_n + 1)
        .map(|w| w[rate_n].duration_since(w[0]).as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    let widest = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .fold(0.0, f64::max);
    let throttled = [
        "token",
        "list_products",
        "create_subscription",
        "get_subscription",
        "update_subscription",
        "set_status",
    ]
    .iter()
    .map(|op| w.sim.request_count(op, 429))
    .sum();
    if std::env::var_os("BENCH_STAMPS").is_some() {
        print_stamps(&w.sim.stamped_calls(), times.len());
    }
    // BENCH_TIMES=FILE: every accepted call, ms after the first, and what it was.
    if let (Some(path), Some(first)) = (std::env::var_os("BENCH_TIMES"), times.first()) {
        let wall = SystemTime::now() - first.elapsed();
        let header = format!(
            "# first call at {:.6} s since the Unix epoch\n",
            wall.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        );
        let lines: String = std::iter::once(header)
            .chain(accepted.iter().map(|(t, op)| {
                format!(
                    "{:.3} {op}\n",
                    t.duration_since(*first).as_secs_f64() * 1000.0
                )
            }))
            .collect();
        if let Err(e) = std::fs::write(&path, lines) {
            eprintln!(
                "BENCH_TIMES: {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
    if std::env::var_os("BENCH_GAPS").is_some() {
        let mut gaps: Vec<(usize, f64)> = times
            .windows(2)
            .enumerate()
            .map(|(i, w)| (i, w[1].duration_since(w[0]).as_secs_f64() * 1000.0))
            .collect();
        gaps.sort_by(|a, b| b.1.total_cmp(&a.1));
        // Where the span beyond a full row went: each gap's time over the floor's
        // interval (a made-up gap's calls come closer and count below it), summed for
        // the first second, the last second and the rest. A full row sums to zero.
        let interval = 1000.0 / (f64::from(rate) * (1.0 - skeelo_partner::pacer::Margin::FLOOR));
        let (mut head, mut middle, mut tail) = (0.0, 0.0, 0.0);
        if let (Some(first), Some(last)) = (times.first(), times.last()) {
            for pair in times.windows(2) {
                let over = pair[1].duration_since(pair[0]).as_secs_f64() * 1000.0 - interval;
                if pair[1].duration_since(*first) <= Duration::from_secs(1) {
                    head += over;
                } else if last.duration_since(pair[0]) <= Duration::from_secs(1) {
                    tail += over;
                } else {
                    middle += over;
                }
            }
        }
        eprintln!(
            "lost to a full row: first second {head:.0} ms, middle {middle:.0} ms, last second {tail:.0} ms (a call is {interval:.1} ms)"
        );
        for (i, ms) in gaps.iter().take(4) {
            let around: Vec<&str> = accepted[i.saturating_sub(2)..(i + 3).min(accepted.len())]
                .iter()
                .map(|(_, op)| *op)
                .collect();
            eprintln!("gap of {ms:.0} ms after call #{i}: calls around it {around:?}");
        }
        // The tightest windows of rate + 1 calls (where arrival jitter ate most of the
        // margin's room), one per stretch: when they began, and how long the partner had
        // been without a call before their first one (a call after a gap is the first
        // of its process, its round, or its connection).
        let tight_ms: f64 = std::env::var("BENCH_TIGHT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1008.0);
        let mut windows: Vec<(usize, f64)> = times
            .windows(rate_n + 1)
            .enumerate()
            .map(|(i, w)| (i, w[rate_n].duration_since(w[0]).as_secs_f64() * 1000.0))
            .filter(|(_, ms)| *ms < tight_ms)
            .collect();
        windows.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut shown: Vec<usize> = Vec::new();
        for (i, ms) in windows {
            if shown.iter().any(|s| s.abs_diff(i) <= rate_n) {
                continue;
            }
            shown.push(i);
            let gap_before = |j: usize| {
                j.checked_sub(1).map_or(f64::NAN, |k| {
                    times[j].duration_since(times[k]).as_secs_f64() * 1000.0
                })
            };
            eprintln!(
                "tight: {} calls within {ms:.1} ms from +{:.3} s; first call {} after {:.1} ms without one; last after {:.1} ms",
                rate_n + 1,
                times[i].duration_since(started).as_secs_f64(),
                accepted[i].1,
                gap_before(i),
                gap_before(i + rate_n),
            );
        }
        // Each 429: the calls accepted in the second before it, and how they were
        // spaced at both ends of that second (arrival jitter shows as a spacing far
        // from the interval).
        for (refused, refused_op) in w.sim.refused_times() {
            let inside: Vec<Instant> = times
                .iter()
                .copied()
                .filter(|t| *t <= refused && refused.duration_since(*t) < Duration::from_secs(1))
                .collect();
            let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1000.0;
            let spacing = |ts: &[Instant]| -> Vec<String> {
                ts.windows(2)
                    .map(|p| format!("{:.1}", ms(p[0], p[1])))
                    .collect()
            };
            let before_first: Vec<Instant> = times
                .iter()
                .copied()
                .filter(|t| inside.first().is_some_and(|f| t <= f))
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            // The first call of that second is the one that came late (or the refused
            // one came early): what it was says whose call it was.
            let first_op = accepted
                .iter()
                .find(|(t, _)| inside.first() == Some(t))
                .map_or("none", |(_, op)| *op);
            eprintln!(
                "429 at +{:.3} s ({refused_op}): {} accepted in the second before it, the first ({first_op}) {:.1} ms before; spacing around the first {:?}, at the end {:?}",
                refused.duration_since(started).as_secs_f64(),
                inside.len(),
                inside.first().map_or(0.0, |f| ms(*f, refused)),
                spacing(&[before_first.as_slice(), inside.get(1..4).unwrap_or_default()].concat()),
                spacing(&inside[inside.len().saturating_sub(6)..]),
            );
        }
    }
    let n = times.len();
    RateFigures {
        calls: n,
        use_of_rate: n.saturating_sub(1) as f64 / span / f64::from(rate),
        from_start: n as f64 / from_start / f64::from(rate),
        busiest_second: w.sim.max_accepted_in_one_second(),
        tightest_ms: tightest * 1000.0,
        widest_gap_ms: widest * 1000.0,
        throttled,
    }
}

/// Where the calls' lateness at the partner came from (BENCH_STAMPS=1, workers built
/// with `--features slot-stamps`): from the slot to the request handed to the HTTP
/// client (the pacer's timer and the turn), from there to the partner's router (the
/// connection, both processes' runtimes), and in all; then the latest calls.
fn print_stamps(stamped: &[skeelo_sim::StampedCall], calls: usize) {
    if stamped.is_empty() {
        eprintln!("stamps: no call carried its slot's timing (build the workers with `cargo build --release -p skeelo-workers --features slot-stamps`)");
        return;
    }
    let ms = |from: u64, to: u64| (to as f64 - from as f64) / 1000.0;
    let first = stamped.iter().map(|c| c.arrived_us).min().unwrap_or(0);
    let figures = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        format!("{:.2}/{:.2}/{:.2}", at(0.5), at(0.99), v[v.len() - 1])
    };
    eprintln!(
        "stamps: {} calls stamped ({calls} accepted); lateness after the slot, p50/p99/max ms: to the HTTP client {}, from there to the partner {}, in all {}",
        stamped.len(),
        figures(stamped.iter().map(|c| ms(c.slot_us, c.sent_us)).collect()),
        figures(stamped.iter().map(|c| ms(c.sent_us, c.arrived_us)).collect()),
        figures(stamped.iter().map(|c| ms(c.slot_us, c.arrived_us)).collect()),
    );
    let mut latest: Vec<&skeelo_sim::StampedCall> = stamped.iter().collect();
    latest.sort_by_key(|c| std::cmp::Reverse(c.arrived_us.saturating_sub(c.slot_us)));
    for c in latest.iter().take(3) {
        eprintln!(
            "stamps: {:.1} ms late at +{:.3} s ({:.1} to the HTTP client, {:.1} from there), answered {}",
            ms(c.slot_us, c.arrived_us),
            ms(first, c.arrived_us) / 1000.0,
            ms(c.slot_us, c.sent_us),
            ms(c.sent_us, c.arrived_us),
            c.status
        );
    }
}

/// When the events come: waiting for the fleet as it starts (a restart during a
/// wave), or at once into a fleet that is running idle (a burst).
#[derive(Clone, Copy, PartialEq)]
enum Arrival {
    Backlog,
    Burst,
}

/// Mixed histories (syncs, suspensions, blocks, cancellations, duplicates, the ERP's
/// late attempts) for about `n` events, all published at once, and `processes`
/// workers against a partner that allows `rate` calls a second.
async fn rate_use(
    processes: usize,
    rate: u32,
    n: usize,
    arrival: Arrival,
    env: &[(&str, &str)],
) -> anyhow::Result<RateFigures> {
    let w = World::with_sim(SimConfig {
        rate_per_second: Some(rate),
        ..SimConfig::default()
    })
    .await?;
    {
        let warm = start_worker(&w, Some(rate), "all", env).await?;
        drop(warm);
    }
    // A history holds four events on average, and one in 37 is published twice.
    let (_, mut events) = skeelo_tests::random_histories(n.div_ceil(4), "RATE");
    events.truncate(n);
    if arrival == Arrival::Backlog {
        publish_many(&w.amqp_url, &events).await?;
    }
    // The warm-up's calls (token, catalogue) are not part of the measured window.
    w.sim.reset();
    // Start them together, and time from the start: a process that is up first works
    // inside the measured window, never before it.
    let mut started = Instant::now();
    let starting = (0..processes).map(|_| start_worker(&w, Some(rate), "all", env));
    let workers: Vec<Worker> = futures_util::future::join_all(starting)
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    if arrival == Arrival::Burst {
        // A fleet that has run for a while: up, idle, its catalogue read; what it did
        // before the burst is not part of it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        w.sim.reset();
        started = Instant::now();
        publish_many(&w.amqp_url, &events).await?;
    }
    let ports: Vec<u16> = workers.iter().map(|w| w.port).collect();
    // The partner's record times the calls: the workers are asked how far they are only
    // now and then, as Prometheus would.
    wait_handled_every(
        &ports,
        events.len(),
        Duration::from_secs(900),
        Duration::from_millis(500),
    )
    .await?;
    let figures = rate_figures(&w, rate, started);
    if std::env::var_os("BENCH_GAPS").is_some() {
        for p in &ports {
            let text = reqwest::get(format!("http://127.0.0.1:{p}/metrics"))
                .await?
                .text()
                .await?;
            for line in text.lines().filter(|l| {
                l.starts_with("skeelo_partner_turns_stale_total")
                    || l.starts_with("skeelo_rate_limit_wait_seconds_total")
            }) {
                println!("worker :{p}: {line}");
            }
        }
    }
    drop(workers);
    w.close().await?;
    Ok(figures)
}

struct Latency {
    /// Publish → result at the ERP, in ms, sorted, for events none of whose calls was
    /// failed on purpose.
    healthy_ms: Vec<f64>,
    /// The same for every event, those a 503 hit included.
    all_ms: Vec<f64>,
    /// Events one of whose calls was failed on purpose (they retry; not in the figure).
    hit: usize,
}

/// Syncs published one by one at half the partner rate; the time from each publish to
/// its result on `erp.results`, as the ERP sees it. `error_rate` of all partner calls
/// fail with 503 (the simulator names the contracts they were for).
async fn latency_at_half_rate(rate: u32, seconds: u64, error_rate: f64) -> anyhow::Result<Latency> {
    let w = World::with_sim(SimConfig {
        rate_per_second: Some(rate),
        ..SimConfig::default()
    })
    .await?;
    let worker = start_worker(&w, Some(rate), "all", &[]).await?;
    w.sim.set_faults(Faults {
        error_rate,
        ..w.sim.faults()
    });
    let conn = broker::connect(&w.amqp_url, "bench-erp").await?;
    let publisher = Publisher::open(&conn).await?;
    let arrived = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, Instant>::new()));
    let channel = conn.create_channel().await?;
    let mut results = skeelo_tests::erp::consume_results(&channel, "bench-erp-results").await?;
    let record = arrived.clone();
    tokio::spawn(async move {
        while let Some(Ok(d)) = results.next().await {
            let at = Instant::now();
            if let Ok(r) = serde_json::from_slice::<skeelo_domain::outcome::EventResult>(&d.data) {
                if let Ok(mut m) = record.lock() {
                    m.entry(r.event_id).or_insert(at);
                }
            }
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
    let every = Duration::from_secs_f64(2.0 / f64::from(rate));
    let n = (seconds as f64 / every.as_secs_f64()) as usize;
    let mut published = Vec::with_capacity(n);
    let mut next = Instant::now();
    for e in syncs("LAT", n) {
        tokio::time::sleep_until(next.into()).await;
        published.push((e.clone(), Instant::now()));
        publish_sync(&publisher, &e).await?;
        next += every;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrived.lock().map_or(0, |m| m.len()) < n {
        if Instant::now() > deadline {
            bail!("not every latency event got its result in two minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrived = arrived.lock().map(|m| m.clone()).unwrap_or_default();
    let mut healthy_ms = Vec::new();
    let mut all_ms = Vec::new();
    let mut hit = 0;
    for (e, at) in &published {
        let contract = e["contract"]["id"].as_str().unwrap_or_default();
        let id = e["event_id"].as_str().unwrap_or_default();
        let Some(done) = arrived.get(id) else {
            continue;
        };
        let ms = done.duration_since(*at).as_secs_f64() * 1000.0;
        all_ms.push(ms);
        if w.sim.failed_on_purpose(contract) {
            hit += 1;
        } else {
            healthy_ms.push(ms);
        }
    }
    healthy_ms.sort_by(f64::total_cmp);
    all_ms.sort_by(f64::total_cmp);
    drop(worker);
    let _ = conn.close(200, "done".into()).await;
    w.close().await?;
    Ok(Latency {
        healthy_ms,
        all_ms,
        hit,
    })
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
        let fast = start_worker(&w, None, "all", &[]).await?;
        publish_many(&w.amqp_url, &existing).await?;
        wait_handled(&[fast.port], backlog, Duration::from_secs(900)).await?;
    }
    let suspensions: Vec<Value> = (0..backlog)
        .map(|i| sample::event(EventType::Suspend, &format!("WAVE{i:06}"), 2, &[]))
        .collect();
    publish_many(&w.amqp_url, &suspensions).await?;
    let worker = start_worker(&w, Some(rate), "all", &[]).await?;
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

fn print_rate(what: &str, rate: u32, f: &RateFigures) {
    println!(
        "[rate] {what}: {} calls, {:.1} % of the rate from the first call to the last ({:.1} % from start-up); busiest second {} of {rate}; {rate} + 1 calls never within {:.0} ms; widest gap {:.0} ms; 429s {}",
        f.calls,
        f.use_of_rate * 100.0,
        f.from_start * 100.0,
        f.busiest_second,
        f.tightest_ms,
        f.widest_gap_ms,
        f.throttled
    );
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

    if o.runs("rate") {
        let sizes: &[usize] = if o.quick { &[300] } else { &[300, 3000] };
        for rate in [20, 50] {
            for &n in sizes {
                for processes in [1, 3] {
                    // BENCH_RATE_ROW=RATE/EVENTS/PROCESSES runs that row alone.
                    if std::env::var("BENCH_RATE_ROW")
                        .is_ok_and(|r| r != format!("{rate}/{n}/{processes}"))
                    {
                        continue;
                    }
                    let f = rate_use(processes, rate, n, Arrival::Backlog, &[]).await?;
                    print_rate(
                        &format!("partner rate {rate}/s, {n} events waiting at start-up, {processes} process(es)"),
                        rate,
                        &f,
                    );
                }
            }
        }
        for rate in [20, 50] {
            if std::env::var_os("BENCH_RATE_ROW").is_some() {
                break;
            }
            let f = rate_use(3, rate, 300, Arrival::Burst, &[]).await?;
            print_rate(
                &format!(
                    "partner rate {rate}/s, 300 events at once into a running fleet, 3 processes"
                ),
                rate,
                &f,
            );
        }
    }

    if o.runs("margin") {
        // What the margin buys: the same run with less of it, down to the least.
        let n = if o.quick { 300 } else { 3000 };
        for margin in ["1", "1.5", "2"] {
            let f = rate_use(
                3,
                50,
                n,
                Arrival::Backlog,
                &[("SKEELO_RATE_MARGIN_PERCENT", margin)],
            )
            .await?;
            print_rate(
                &format!("margin {margin} %: partner rate 50/s, {n} events, 3 processes"),
                50,
                &f,
            );
        }
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
        let seconds = if o.quick { 5 } else { 20 };
        for error_rate in [0.0, 0.05] {
            let lat = latency_at_half_rate(50, seconds, error_rate).await?;
            println!(
                "[latency] half the partner rate (25/s of 50/s), {:.0} % of calls answered 503: {} healthy syncs ({} hit by a 503 left out): publish → result p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all {} syncs: p99 {:.1} ms, max {:.1} ms",
                error_rate * 100.0,
                lat.healthy_ms.len(),
                lat.hit,
                percentile(&lat.healthy_ms, 0.5),
                percentile(&lat.healthy_ms, 0.99),
                lat.healthy_ms.last().copied().unwrap_or(f64::NAN),
                lat.all_ms.len(),
                percentile(&lat.all_ms, 0.99),
                lat.all_ms.last().copied().unwrap_or(f64::NAN),
            );
        }
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
