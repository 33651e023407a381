//! `skeelo-ops`: the operators' command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod contract;
mod dead;
mod explain;
mod publish;
mod repair;
mod sample;
mod subscribers;
mod table;
mod user;

/// The operators' command line for the Skeelo bridge.
///
/// Reads the same environment as the fleet: DATABASE_URL for reports, AMQP_URL for
/// publishing. Tables are for people; add --json for scripts.
///
/// Examples:
///   skeelo-ops sample --contracts 20 > events.jsonl   # example ERP events
///   skeelo-ops publish events.jsonl                    # publish them as the ERP does
///   skeelo-ops subscribers --status active             # "Assinantes ativos"
///   skeelo-ops subscribers --status cancelled,suspended
///   skeelo-ops contract show 48213                     # facts, Skeelo state, history
///   skeelo-ops explain 48213 --lang pt-BR              # has access? why? what next?
///   skeelo-ops explain --document 529.982.247-25       # every contract of a subscriber
///   skeelo-ops check                                   # compare with Skeelo itself
///   skeelo-ops check --repair                          # and bring Skeelo back in line
///   skeelo-ops check --repair --approve 12             # carry out a run the guard stopped
///   skeelo-ops dead groups                             # what failed, grouped
///   skeelo-ops dead requeue --class unknown_product --dry-run
#[derive(Parser, Debug)]
#[command(name = "skeelo-ops", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish events from a JSON-lines file (or - for stdin) to erp.contracts, with
    /// publisher confirms: the ERP's side, for demos and tests.
    Publish(publish::Args),
    /// List subscribers by status (the ERP's "Assinantes ativos" and "cancelados ou
    /// suspensos").
    Subscribers(subscribers::Args),
    /// One contract: its facts, what Skeelo holds and its history.
    Contract {
        #[command(subcommand)]
        command: contract::Command,
    },
    /// The dead letters: list, groups, show, requeue, purge, restore.
    Dead {
        #[command(subcommand)]
        command: dead::Command,
    },
    /// Why has this customer access or not: facts and why, each event's outcome,
    /// Skeelo's state asked live, dead letters with the command that clears them, and
    /// what happens next. English or Portuguese (--lang pt-BR).
    Explain(explain::Args),
    /// Ask Skeelo (the partner API) for every contract the fleet knows and compare
    /// with what it should hold: drift shows here first. Exits 1 on any difference.
    /// With --repair, bring Skeelo back in line behind a blast-radius guard.
    Check(check::Args),
    /// Print example ERP events (valid JSON lines) for random contract histories.
    Sample(sample::Args),
    /// The web console's accounts: add (password from standard input), remove, list.
    User {
        #[command(subcommand)]
        command: user::Command,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Publish(a) => publish::run(a).await,
            Command::Subscribers(a) => subscribers::run(a).await,
            Command::Contract { command } => contract::run(command).await,
            Command::Sample(a) => sample::run(a),
            Command::Check(a) => check::run(a).await,
            Command::Explain(a) => explain::run(a).await,
            Command::Dead { command } => dead::run(command).await,
            Command::User { command } => user::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to the fleet's database named by `DATABASE_URL`.
async fn database(url: &str) -> anyhow::Result<skeelo_store::Store> {
    use anyhow::Context;
    let store = skeelo_store::Store::connect(url, 2).context("DATABASE_URL")?;
    store
        .reach()
        .await
        .context("cannot reach the database at DATABASE_URL")?;
    Ok(store)
}
