//! `skeelo-sim`: runs the Skeelo partner API simulator as a standalone server for
//! local demos and the compose deployment.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use skeelo_sim::{default_catalogue, Product, SimConfig};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// A stand-in for the Skeelo partner API, kept in memory.
///
/// Serves /oauth/token, /v1/products and /v1/subscriptions like the partner does,
/// plus /_sim/* (no auth) to inspect state and change faults at run time:
/// GET /_sim/state, PUT /_sim/faults, POST /_sim/tokens/expire, POST /_sim/reset,
/// POST /_sim/products, DELETE /_sim/products/{sku}.
///
/// On start it prints one line, `skeelo-sim listening on http://ADDR`, to stdout;
/// request logs go to stderr as JSON lines (filter with RUST_LOG, default info).
/// Stops cleanly on SIGTERM or Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "skeelo-sim", version)]
struct Args {
    /// Address to listen on. Use 0.0.0.0:8080 inside a container; port 0 picks a free port.
    #[arg(long, env = "SIM_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,

    /// The only client_id that /oauth/token accepts.
    #[arg(long, env = "SKEELO_CLIENT_ID", default_value = "demo-client")]
    client_id: String,

    /// The client_secret that must go with --client-id.
    #[arg(
        long,
        env = "SKEELO_CLIENT_SECRET",
        default_value = "demo-secret",
        hide_env_values = true
    )]
    client_secret: String,

    /// Partner calls accepted in any sliding one-second window; beyond it calls get
    /// 429 with Retry-After: 1. Unlimited when not set.
    #[arg(long, env = "SIM_RATE_PER_SECOND")]
    rate_per_second: Option<u32>,

    /// Probability (0 to 1) that a partner call other than /oauth/token answers 503
    /// before doing anything, to exercise client retries.
    #[arg(long, env = "SIM_ERROR_RATE", default_value_t = 0.0, value_parser = parse_error_rate)]
    error_rate: f64,

    /// Delay in milliseconds added before every partner call.
    #[arg(long, env = "SIM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,

    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, env = "SIM_TOKEN_TTL_SECS", default_value_t = 3600)]
    token_ttl_secs: u64,

    /// A catalogue entry as SKU=Name; repeat for several. When given, replaces the
    /// default catalogue (SKEELO-EBOOKS, SKEELO-AUDIOBOOKS, SKEELO-MINIBOOKS).
    #[arg(long = "product", value_name = "SKU=Name", value_parser = parse_product)]
    products: Vec<Product>,
}

fn parse_error_rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

fn parse_product(value: &str) -> Result<Product, String> {
    let (sku, name) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not SKU=Name"))?;
    let (sku, name) = (sku.trim(), name.trim());
    if sku.is_empty() || name.is_empty() {
        return Err(format!("{value:?} needs both a SKU and a name"));
    }
    Ok(Product::new(sku, name))
}

impl Args {
    fn config(self) -> SimConfig {
        SimConfig {
            client_id: self.client_id,
            client_secret: self.client_secret,
            rate_per_second: self.rate_per_second,
            error_rate: self.error_rate,
            latency: Duration::from_millis(self.latency_ms),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            products: if self.products.is_empty() {
                default_catalogue()
            } else {
                self.products
            },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(
        %addr,
        rate_per_second = args.rate_per_second,
        error_rate = args.error_rate,
        latency_ms = args.latency_ms,
        products = args.products.len(),
        "starting"
    );
    println!("skeelo-sim listening on http://{addr}");

    skeelo_sim::serve(listener, args.config(), shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (what `docker stop` sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, stopping"),
        () = terminate => tracing::info!("SIGTERM received, stopping"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn products_replace_the_default_catalogue() {
        let args = Args::try_parse_from([
            "skeelo-sim",
            "--product",
            "A=Alpha",
            "--product",
            "B = Beta Books",
            "--error-rate",
            "0.25",
        ])
        .expect("valid");
        let config = args.config();
        assert_eq!(
            config.products,
            vec![Product::new("A", "Alpha"), Product::new("B", "Beta Books")]
        );
        assert!((config.error_rate - 0.25).abs() < f64::EPSILON);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Args::try_parse_from(["skeelo-sim", "--error-rate", "1.5"]).is_err());
        assert!(Args::try_parse_from(["skeelo-sim", "--error-rate", "x"]).is_err());
        assert!(Args::try_parse_from(["skeelo-sim", "--product", "nope"]).is_err());
        assert!(Args::try_parse_from(["skeelo-sim", "--product", "=Name"]).is_err());
    }
}
