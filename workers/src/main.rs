//! `skeelo-workers`: consumes the ERP's contract events and makes Skeelo match them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use skeelo_shared::event::EventType;
use skeelo_shared::skeelo::{ClientConfig, Credentials};
use skeelo_workers::Settings;

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
struct Cli {
    /// Which consumers to run: all, or a comma-separated subset of
    /// sync,suspend,reactivate,cancel,block,unblock.
    #[arg(long, env = "SKEELO_CONSUMERS", default_value = "all", value_parser = parse_consumers)]
    consumers: Consumers,

    /// RabbitMQ, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,

    /// PostgreSQL, e.g. postgres://postgres@127.0.0.1:5432/skeelo
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

    /// The partner's request rate (requests per second) for this process.
    #[arg(long, env = "SKEELO_RATE_PER_SECOND")]
    skeelo_rate_per_second: NonZeroU32,

    /// Timeout of one Skeelo request, in seconds.
    #[arg(long, env = "SKEELO_TIMEOUT_SECONDS", default_value_t = 10)]
    skeelo_timeout_seconds: u64,

    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:9090")]
    http_addr: SocketAddr,

    /// Events of one type worked on at once (the consumer's prefetch).
    #[arg(long, env = "SKEELO_PREFETCH", default_value_t = 32)]
    prefetch: u16,

    /// Database connections in the pool.
    #[arg(long, env = "SKEELO_DB_POOL_SIZE", default_value_t = 16)]
    db_pool_size: usize,

    /// Attempts at a transiently failing event before it goes back to its queue.
    #[arg(long, env = "SKEELO_MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: u32,

    /// First pause after a transient failure, in milliseconds (doubles per attempt).
    #[arg(long, env = "SKEELO_RETRY_BASE_MS", default_value_t = 200)]
    retry_base_ms: u64,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    skeelo_shared::telemetry::init();
    if !cli.skeelo_base_url.starts_with("http://") && !cli.skeelo_base_url.starts_with("https://") {
        eprintln!("error: SKEELO_BASE_URL must start with http:// or https://");
        return ExitCode::from(2);
    }
    let settings = Settings {
        amqp_url: cli.amqp_url,
        database_url: cli.database_url,
        skeelo: ClientConfig {
            base_url: cli.skeelo_base_url,
            credentials: Credentials {
                client_id: cli.skeelo_client_id,
                client_secret: cli.skeelo_client_secret,
            },
            rate_per_second: Some(cli.skeelo_rate_per_second),
            timeout: Duration::from_secs(cli.skeelo_timeout_seconds.max(1)),
        },
        http_addr: cli.http_addr,
        consumers: cli.consumers.0,
        prefetch: cli.prefetch.max(1),
        db_pool_size: cli.db_pool_size.max(1),
        max_attempts: cli.max_attempts.max(1),
        retry_base: Duration::from_millis(cli.retry_base_ms),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(skeelo_workers::run(settings, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "skeelo-workers failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes, compose) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested: finishing the work in flight");
}
