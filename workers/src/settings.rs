//! The fleet process's settings: read from the environment (the same names for every
//! process of the fleet), a flag overriding its variable, checked before anything
//! starts. Kept in the library so the rules are tested without starting a process.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Parser;
use skeelo_domain::event::EventType;
use skeelo_partner::api::{ClientConfig, Credentials};

use crate::{Outage, Retry, Settings, Trip};

/// Consumes the ERP's contract events from RabbitMQ and makes Skeelo match them.
///
/// Every setting comes from the environment (the same names for every process of the
/// fleet); a flag overrides its variable. Missing required settings stop the process
/// at once with the variable's name: there is no silent fallback.
///
/// Examples:
///   skeelo-workers                          # every consumer
///   skeelo-workers --consumers sync,cancel  # a dedicated deployment
#[derive(Parser, Debug)]
#[command(
    name = "skeelo-workers",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
pub struct Cli {
    /// Which consumers to run: all, or a comma-separated subset of
    /// sync,suspend,reactivate,cancel,block,unblock.
    #[arg(long, env = "SKEELO_CONSUMERS", default_value = "all", value_parser = parse_consumers)]
    consumers: Consumers,

    /// RabbitMQ, e.g. amqp://guest:guest@127.0.0.1:5672/%2f. For a cluster, its nodes
    /// separated by commas (one vhost): the first that accepts is used, and when it
    /// goes away the next. amqps:// is TLS, checked against the system's CAs plus
    /// ?cacertfile=/path/ca.pem; &certfile=…&keyfile=… (PEM) give a client
    /// certificate.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,

    /// PostgreSQL, e.g. postgres://postgres@127.0.0.1:5432/skeelo. TLS as libpq:
    /// ?sslmode=disable|prefer (default)|require|verify-ca|verify-full,
    /// &sslrootcert=/path/ca.pem (or system), &sslcert=…&sslkey=… (client certificate).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// The Skeelo partner API (the supplier's "Servidor" in the ERP).
    #[arg(long, env = "SKEELO_BASE_URL")]
    skeelo_base_url: String,

    /// Partner client id.
    #[arg(long, env = "SKEELO_CLIENT_ID")]
    skeelo_client_id: String,

    /// Partner client secret (never logged).
    #[arg(long, env = "SKEELO_CLIENT_SECRET", hide_env_values = true)]
    skeelo_client_secret: String,

    /// The partner's request rate (requests per second), shared by every process of
    /// the fleet (coordinated through the database), or `unlimited`.
    #[arg(long, env = "SKEELO_RATE_PER_SECOND", value_parser = parse_rate)]
    skeelo_rate_per_second: Rate,

    /// How the rate is shared when several event types wait: type=weight, comma
    /// separated; unnamed types keep their default (grant access 4, remove it 1).
    #[arg(long, env = "SKEELO_LANE_WEIGHTS", default_value = "sync=4,reactivate=4,unblock=4,suspend=1,block=1,cancel=1", value_parser = skeelo_partner::pacer::Weights::parse)]
    lane_weights: skeelo_partner::pacer::Weights,

    /// The least share of the partner rate left unused, in percent (0.5 to 25): room
    /// for calls that arrive a little late at the partner's clock. It grows after a 429
    /// and falls back to this while none comes. 1.5 % leaves 15 ms in every second;
    /// raise it for a partner far away on a jittery network.
    #[arg(long, env = "SKEELO_RATE_MARGIN_PERCENT", default_value_t = skeelo_partner::pacer::Margin::FLOOR * 100.0, value_parser = parse_margin)]
    rate_margin_percent: f64,

    /// Timeout of one Skeelo request, in seconds.
    #[arg(long, env = "SKEELO_TIMEOUT_SECONDS", default_value_t = 10)]
    skeelo_timeout_seconds: u64,

    /// Runtime threads; 0 means one per core.
    #[arg(long, env = "SKEELO_THREADS", default_value_t = 0)]
    threads: usize,

    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9090")]
    http_addr: SocketAddr,

    /// Events of one type taken from the broker at once (the consumer's prefetch).
    /// Under a backlog they are handled in batches of up to this many, one database
    /// transaction each; lower it to hold fewer events unacknowledged per process.
    #[arg(long, env = "SKEELO_PREFETCH", default_value_t = 256)]
    prefetch: u16,

    /// Database connections in the pool.
    #[arg(long, env = "SKEELO_DB_POOL_SIZE", default_value_t = 16)]
    db_pool_size: usize,

    /// Delivery rounds of an event that keeps failing transiently (Skeelo 5xx or
    /// timeouts) before it is parked as a dead letter. Throttling, outages and database
    /// failures never count.
    #[arg(long, env = "SKEELO_MAX_ATTEMPTS", default_value_t = 8)]
    max_attempts: u32,

    /// Delays between rounds, through the broker's delay queues (the last repeats).
    /// Units: ms, s, m, h.
    #[arg(long, env = "SKEELO_RETRY_DELAYS", default_value = "1s,5s,30s,2m,10m", value_parser = parse_delays)]
    retry_delays: Delays,

    /// Immediate tries within a round, in the process, before the round ends.
    #[arg(long, env = "SKEELO_IMMEDIATE_RETRIES", default_value_t = 2)]
    immediate_retries: u32,

    /// First pause between immediate tries, in milliseconds (doubles, with jitter).
    #[arg(long, env = "SKEELO_RETRY_BASE_MS", default_value_t = 100)]
    retry_base_ms: u64,

    /// Outage mode: this many failures of Skeelo (or the database) in a row pause the
    /// consumers until a probe gets an answer.
    #[arg(long, env = "SKEELO_OUTAGE_AFTER", default_value_t = 5)]
    outage_after: u32,

    /// Outage mode also trips when more than half of the calls in this window failed
    /// (with at least 20 calls in it), in seconds.
    #[arg(long, env = "SKEELO_OUTAGE_WINDOW_SECONDS", default_value_t = 30)]
    outage_window_seconds: u64,

    /// How often the queues' depth and consumers are read from the broker, in seconds.
    #[arg(long, env = "SKEELO_QUEUE_WATCH_SECONDS", default_value_t = 5)]
    queue_watch_seconds: u64,

    /// The RabbitMQ management API, e.g. http://guest:guest@127.0.0.1:15672 (several
    /// nodes of a cluster separated by commas). Optional, but without it a consumer
    /// that the broker believes holds messages it never received (a queue deleted and
    /// declared again under it) cannot be seen or healed, and
    /// skeelo_queue_messages_unacked is not exported.
    #[arg(long, env = "RABBITMQ_MANAGEMENT_URL", hide_env_values = true)]
    rabbitmq_management_url: Option<String>,

    /// A consumer is started again when, for this long, the broker counts messages of
    /// its queue as delivered and unacknowledged that no consumer's channel counts as
    /// its own, while this process holds none and receives none, in seconds. Keep it above the broker's statistics interval (5 s
    /// by default): the broker's figures lag that much.
    #[arg(long, env = "SKEELO_HELD_AFTER_SECONDS", default_value_t = 30)]
    held_after_seconds: u64,

    /// How often a downstream in outage is probed, in milliseconds (backs off to 8x).
    #[arg(long, env = "SKEELO_PROBE_INTERVAL_MS", default_value_t = 2000)]
    probe_interval_ms: u64,

    /// On SIGTERM, how long the work in flight may take to finish, in seconds. Work
    /// still waiting after it (for the partner rate, or for a database or Skeelo that
    /// does not answer) is given back to the broker unfinished and redelivered, as
    /// after a crash. Keep it below the orchestrator's own grace (30 s in Kubernetes).
    #[arg(long, env = "SKEELO_STOP_GRACE_SECONDS", default_value_t = 20)]
    stop_grace_seconds: u64,

    /// How often the fleet compares every contract with Skeelo and repairs drift (a
    /// subscription changed behind its back), or `off`. One process of the fleet runs
    /// it at a time, in the partner rate's lowest lane. Units: s, m, h.
    #[arg(long, env = "SKEELO_REPAIR_INTERVAL", default_value = "24h", value_parser = parse_interval)]
    repair_interval: Interval,

    /// The repair's blast-radius guard: the most of the compared contracts one run may
    /// change, in percent. Above it the run changes nothing and waits for an
    /// operator's `skeelo-ops check --repair --approve RUN_ID`.
    #[arg(long, env = "SKEELO_REPAIR_MAX_PERCENT", default_value_t = 5.0)]
    repair_max_percent: f64,

    /// How often parked dead letters whose cause can clear by itself are looked at, or
    /// `off`. A letter waiting for a product is requeued once Skeelo's catalogue has
    /// it; one whose attempts ran out while Skeelo failed, once Skeelo answers again
    /// with our credentials — by the fleet, at most once per change of the cause, in
    /// the partner rate's lowest lane. Invalid input and Skeelo's refusals stay for
    /// people. Units: s, m, h.
    #[arg(long, env = "SKEELO_SELF_HEAL_INTERVAL", default_value = "1m", value_parser = parse_interval)]
    self_heal_interval: Interval,

    /// The repair's blast-radius guard: the most contracts one run may change.
    #[arg(long, env = "SKEELO_REPAIR_MAX_COUNT", default_value_t = 500)]
    repair_max_count: u64,
}

#[derive(Debug, Clone, Copy)]
struct Interval(Option<Duration>);

fn parse_interval(raw: &str) -> Result<Interval, String> {
    if matches!(raw.trim(), "off" | "0") {
        return Ok(Interval(None));
    }
    let d = parse_delays(raw)?;
    match d.0.as_slice() {
        [one] => Ok(Interval(Some(*one))),
        _ => Err(format!("`{raw}`: one interval, e.g. 6h, or off")),
    }
}

#[derive(Debug, Clone, Copy)]
struct Rate(Option<NonZeroU32>);

fn parse_rate(raw: &str) -> Result<Rate, String> {
    skeelo_partner::pacer::parse_rate(raw).map(Rate)
}

fn parse_margin(raw: &str) -> Result<f64, String> {
    raw.trim()
        .trim_end_matches('%')
        .parse::<f64>()
        .ok()
        .filter(|m| (0.5..=25.0).contains(m))
        .ok_or_else(|| format!("`{raw}`: a percentage from 0.5 to 25, e.g. 1 or 2.5"))
}

#[derive(Debug, Clone)]
struct Delays(Vec<Duration>);

fn parse_delays(raw: &str) -> Result<Delays, String> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let split = part
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{part}` needs a unit: ms, s, m or h"))?;
        let (n, unit) = part.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("`{part}` is not a number and a unit"))?;
        let too_long = || format!("`{part}` is too long a delay");
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
            _ => return Err(format!("`{part}`: the unit must be ms, s, m or h")),
        };
        if d > Duration::from_secs(7 * 86_400) {
            return Err(too_long());
        }
        if d.is_zero() {
            return Err(format!("`{part}`: a delay must be more than zero"));
        }
        out.push(d);
    }
    if out.is_empty() {
        return Err("give at least one delay, e.g. 1s,5s,30s".into());
    }
    Ok(Delays(out))
}

#[derive(Debug, Clone)]
struct Consumers(Vec<EventType>);

fn parse_consumers(raw: &str) -> Result<Consumers, String> {
    if raw.trim() == "all" {
        return Ok(Consumers(EventType::ALL.to_vec()));
    }
    let mut types = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let t = EventType::from_name(name).ok_or_else(|| {
            format!("unknown consumer `{name}`; use all or some of sync,suspend,reactivate,cancel,block,unblock")
        })?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if types.is_empty() {
        return Err("name at least one consumer".into());
    }
    Ok(Consumers(types))
}

impl Cli {
    /// Runtime threads asked for; 0 means one per core.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The settings these flags and variables describe, or what is wrong with them.
    pub fn settings(self) -> Result<Settings, String> {
        let cli = self;
        if !cli.skeelo_base_url.starts_with("http://")
            && !cli.skeelo_base_url.starts_with("https://")
        {
            return Err("SKEELO_BASE_URL must start with http:// or https://".into());
        }
        skeelo_broker::check_urls(&cli.amqp_url).map_err(|e| format!("AMQP_URL: {e}"))?;
        if let Some(url) = &cli.rabbitmq_management_url {
            skeelo_broker::management::Management::new(url)
                .map_err(|e| format!("RABBITMQ_MANAGEMENT_URL: {e}"))?;
        }
        Ok(Settings {
            amqp_url: cli.amqp_url,
            management_url: cli.rabbitmq_management_url,
            held_after: Duration::from_secs(cli.held_after_seconds.max(1)),
            database_url: cli.database_url,
            skeelo: ClientConfig {
                base_url: cli.skeelo_base_url,
                credentials: Credentials {
                    client_id: cli.skeelo_client_id,
                    client_secret: cli.skeelo_client_secret,
                },
                timeout: Duration::from_secs(cli.skeelo_timeout_seconds.max(1)),
            },
            rate_per_second: cli.skeelo_rate_per_second.0,
            weights: cli.lane_weights,
            margin: skeelo_partner::pacer::Margin::new(cli.rate_margin_percent / 100.0),
            http_addr: cli.http_addr,
            consumers: cli.consumers.0,
            prefetch: cli.prefetch.max(1),
            db_pool_size: cli.db_pool_size.max(1),
            retry: Retry {
                immediate: cli.immediate_retries,
                immediate_base: Duration::from_millis(cli.retry_base_ms),
                delays: cli.retry_delays.0,
                max_attempts: cli.max_attempts.max(1),
                call_budget: Duration::from_secs(45),
            },
            outage: Outage {
                trip: Trip {
                    consecutive: cli.outage_after.max(1),
                    window: Duration::from_secs(cli.outage_window_seconds.max(1)),
                    min_calls: 20,
                },
                probe_interval: Duration::from_millis(cli.probe_interval_ms.max(50)),
            },
            queue_watch: Duration::from_secs(cli.queue_watch_seconds.max(1)),
            stop_grace: Duration::from_secs(cli.stop_grace_seconds),
            self_heal: cli.self_heal_interval.0,
            repair: crate::Repair {
                interval: cli.repair_interval.0,
                guard: skeelo_repair::Guard::from_percent(
                    cli.repair_max_percent,
                    cli.repair_max_count,
                )
                .map_err(|e| format!("SKEELO_REPAIR_MAX_PERCENT: {e}"))?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [(&str, &str); 6] = [
        ("--amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        (
            "--database-url",
            "postgres://postgres@127.0.0.1:5432/skeelo",
        ),
        ("--skeelo-base-url", "http://127.0.0.1:8080"),
        ("--skeelo-client-id", "id"),
        ("--skeelo-client-secret", "secret"),
        ("--skeelo-rate-per-second", "50"),
    ];

    /// The required flags, with `extra` (flag, value pairs) replacing or adding to them.
    fn with(extra: &[&str]) -> Result<Settings, String> {
        let mut pairs: Vec<(&str, &str)> = REQUIRED.to_vec();
        for pair in extra.chunks(2) {
            let (flag, value) = (pair[0], pair.get(1).copied().unwrap_or_default());
            match pairs.iter_mut().find(|(f, _)| *f == flag) {
                Some(p) => p.1 = value,
                None => pairs.push((flag, value)),
            }
        }
        let args =
            std::iter::once("skeelo-workers").chain(pairs.iter().flat_map(|(f, v)| [*f, *v]));
        Cli::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .settings()
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let s = with(&[]).expect("valid");
        assert_eq!(s.consumers, EventType::ALL.to_vec());
        assert_eq!(s.prefetch, 256);
        assert_eq!(s.db_pool_size, 16);
        assert_eq!(s.rate_per_second.map(NonZeroU32::get), Some(50));
        assert_eq!(s.retry.max_attempts, 8);
        assert_eq!(s.retry.immediate, 2);
        assert_eq!(
            s.retry.delays,
            [1, 5, 30, 120, 600].map(Duration::from_secs).to_vec()
        );
        assert_eq!(s.retry.call_budget, Duration::from_secs(45));
        assert_eq!(s.outage.trip.consecutive, 5);
        assert_eq!(s.http_addr.port(), 9090);
        assert_eq!(s.margin, skeelo_partner::pacer::Margin::default());
    }

    #[test]
    fn the_rate_margin_is_a_percentage() {
        let s = with(&["--rate-margin-percent", "2.5%"]).expect("valid");
        assert_eq!(s.margin, skeelo_partner::pacer::Margin::new(0.025));
        let s = with(&["--rate-margin-percent", "0.5"]).expect("valid");
        assert_eq!(s.margin, skeelo_partner::pacer::Margin::new(0.005));
    }

    #[test]
    fn the_periodic_repair_is_an_interval_or_off() {
        let s = with(&[]).expect("valid");
        assert_eq!(s.repair.interval, Some(Duration::from_secs(86_400)));
        assert_eq!(s.repair.guard, skeelo_repair::Guard::default());
        let s = with(&["--repair-interval", "off"]).expect("valid");
        assert_eq!(s.repair.interval, None);
        assert_eq!(s.self_heal, Some(Duration::from_secs(60)));
        let s = with(&["--self-heal-interval", "off"]).expect("valid");
        assert_eq!(s.self_heal, None);
        let s = with(&["--repair-interval", "6h", "--repair-max-percent", "2"]).expect("valid");
        assert_eq!(s.repair.interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(s.repair.guard.max_share, 0.02);
    }

    #[test]
    fn a_dedicated_deployment_names_its_consumers() {
        let s = with(&["--consumers", "cancel, sync,cancel"]).expect("valid");
        assert_eq!(s.consumers, vec![EventType::Cancel, EventType::Sync]);
    }

    #[test]
    fn bad_values_are_refused_with_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&["--consumers", "sync,renew"], "unknown consumer `renew`"),
            (&["--consumers", " , "], "name at least one consumer"),
            (&["--skeelo-rate-per-second", "0"], "above 0, or unlimited"),
            (&["--rate-margin-percent", "30"], "a percentage from 0.5 to 25"),
            (&["--rate-margin-percent", "0"], "a percentage from 0.5 to 25"),
            (&["--rate-margin-percent=-1"], "a percentage from 0.5 to 25"),
            (&["--rate-margin-percent", "NaN"], "a percentage from 0.5 to 25"),
            (&["--retry-delays", "5"], "needs a unit"),
            (&["--repair-interval", "1h,2h"], "one interval, e.g. 6h, or off"),
            (&["--repair-interval", "soon"], "is not a number and a unit"),
            (&["--repair-max-percent", "150"], "a percentage from 0 to 100"),
            (&["--retry-delays", "5d"], "the unit must be ms, s, m or h"),
            (&["--retry-delays", "0s"], "more than zero"),
            (&["--retry-delays", "99999999999h"], "too long"),
            (
                &["--skeelo-base-url", "ftp://x"],
                "must start with http:// or https://",
            ),
            (
                &["--rabbitmq-management-url", "amqp://guest:secret@h:5672"],
                "RABBITMQ_MANAGEMENT_URL: `amqp://guest:***@h:5672` is not a management API address",
            ),
            (
                &["--rabbitmq-management-url", "http://h:15672"],
                "no user",
            ),
            (
                &["--amqp-url", "amqp://u:p@a:5672/one,amqp://u:p@b:5672/two"],
                "AMQP_URL: the nodes name different vhosts",
            ),
            (
                &["--amqp-url", "http://u:secret@a:5672/x"],
                "`http://u:***@a:5672/x` is not an AMQP URL",
            ),
        ];
        for (extra, want) in cases {
            let Err(err) = with(extra) else {
                panic!("{extra:?} was accepted");
            };
            assert!(err.contains(want), "{extra:?}: {err}");
        }
    }

    #[test]
    fn unlimited_is_a_rate() {
        let s = with(&["--skeelo-rate-per-second", "unlimited"]).expect("valid");
        assert!(s.rate_per_second.is_none());
    }

    #[test]
    fn zero_sizes_are_raised_to_one() {
        let s = with(&[
            "--prefetch",
            "0",
            "--db-pool-size",
            "0",
            "--max-attempts",
            "0",
        ])
        .expect("valid");
        assert_eq!(
            (s.prefetch, s.db_pool_size, s.retry.max_attempts),
            (1, 1, 1)
        );
    }
}
