//! `skeelo-workers`: consumes the ERP's contract events and makes Skeelo match them.

use std::process::ExitCode;

use clap::Parser;
use skeelo_workers::settings::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held until the run is over: what is logged until then is written out.
    let logs = skeelo_telemetry::logs::init();
    let threads = cli.threads();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(skeelo_workers::run(settings, shutdown_signal()));
    drop(runtime);
    if let Err(e) = &outcome {
        tracing::error!(error = format!("{e:#}"), "skeelo-workers failed");
    }
    // The log lines first, then the line for whoever started it by hand.
    drop(logs);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
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
