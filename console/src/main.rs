//! `skeelo-console`: the operators' web console.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The operators' web console for the Skeelo bridge: dead letters, subscribers, a
/// contract's story and the audit trail, in a browser (English or Portuguese).
///
/// Reads the fleet's environment. Accounts are made with `skeelo-ops user add`.
/// Cookies are Secure: serve it on localhost, or behind TLS.
///
/// Example:
///   printf '%s\n' "$PASSWORD" | skeelo-ops user add ana --role operator
///   skeelo-console            # http://127.0.0.1:8088
#[derive(Parser, Debug)]
#[command(
    name = "skeelo-console",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    /// PostgreSQL (the fleet's).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// RabbitMQ (the fleet's), for requeues.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// Where the console listens.
    #[arg(long, env = "SKEELO_CONSOLE_ADDR", default_value = skeelo_console::DEFAULT_ADDR)]
    addr: SocketAddr,
    /// How long a session lasts, in hours.
    #[arg(long, env = "SKEELO_CONSOLE_SESSION_HOURS", default_value_t = 8)]
    session_hours: u64,
    /// How long purged (archived) dead letters stay restorable, in days (as
    /// `skeelo-ops dead purge`).
    #[arg(long, env = "SKEELO_DEAD_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    retention_days: u32,
    /// The reverse proxies in front of the console (comma-separated addresses or
    /// ranges, e.g. 10.0.0.0/8): their X-Forwarded-For and X-Forwarded-Host are
    /// believed.
    #[arg(long, env = "SKEELO_CONSOLE_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<skeelo_console::access::Net>,
    /// Trusted sign-in proxy mode (SSO), off unless set: the header in which the
    /// proxy names the person, e.g. X-Forwarded-User. Each name needs an account
    /// (`skeelo-ops user add NAME --role viewer --no-password`); password sign-in is
    /// off. Needs --sign-in-proxies.
    #[arg(long, env = "SKEELO_CONSOLE_TRUSTED_HEADER")]
    trusted_header: Option<axum::http::HeaderName>,
    /// The sign-in proxies (addresses or ranges) whose --trusted-header is believed;
    /// every other request is refused in that mode.
    #[arg(long, env = "SKEELO_CONSOLE_SIGN_IN_PROXIES", value_delimiter = ',')]
    sign_in_proxies: Vec<skeelo_console::access::Net>,
    /// Skeelo, asked live on a contract's page (paced with the fleet).
    #[command(flatten)]
    partner: skeelo_explain::PartnerArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.trusted_header.is_some() && cli.sign_in_proxies.is_empty() {
        eprintln!(
            "error: SKEELO_CONSOLE_TRUSTED_HEADER needs SKEELO_CONSOLE_SIGN_IN_PROXIES: the addresses of the \
             sign-in proxies whose word is taken (anyone else could name any account)"
        );
        return ExitCode::from(2);
    }
    if cli.trusted_header.is_none() && !cli.sign_in_proxies.is_empty() {
        eprintln!(
            "error: SKEELO_CONSOLE_SIGN_IN_PROXIES is set but SKEELO_CONSOLE_TRUSTED_HEADER is not: \
             name the header in which the proxy names people, or leave both unset"
        );
        return ExitCode::from(2);
    }
    // Held until the run is over: what is logged until then is written out.
    let logs = skeelo_telemetry::logs::init();
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
    let settings = skeelo_console::Settings {
        database_url: cli.database_url,
        amqp_url: cli.amqp_url,
        session_ttl: Duration::from_secs(cli.session_hours.clamp(1, 24 * 30) * 3600),
        retention_days: cli.retention_days,
        trusted_proxies: cli.trusted_proxies,
        trusted_header: cli.trusted_header,
        sign_in_proxies: cli.sign_in_proxies,
        partner: cli.partner,
    };
    let stop = CancellationToken::new();
    let result = runtime.block_on(async {
        let listener = skeelo_console::bind(cli.addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "skeelo-console listening");
        let on_signal = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        #[cfg(unix)]
        {
            let on_term = stop.clone();
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                tokio::spawn(async move {
                    term.recv().await;
                    on_term.cancel();
                });
            }
        }
        skeelo_console::serve(settings, listener, stop).await
    });
    drop(runtime);
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "skeelo-console failed");
    }
    // The log lines first, then the line for whoever started it by hand.
    drop(logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
