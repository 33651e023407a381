//! `skeelo-ops subscribers`: the ERP's "Assinantes ativos" and "Assinantes cancelados
//! ou suspensos", from the fleet's own records.

use std::process::ExitCode;

use serde::Serialize;
use skeelo_domain::mask;
use skeelo_store::reports::SubscriberState;

use crate::table;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Synced, not suspended, not blocked, not cancelled.
    Active,
    /// Suspended by the ERP (arrears).
    Suspended,
    /// Blocked by hand.
    Blocked,
    /// Cancelled for good.
    Cancelled,
    /// Events arrived, but the contract's sync has not.
    AwaitingSync,
    /// Every contract.
    All,
}

impl From<Status> for SubscriberState {
    fn from(s: Status) -> SubscriberState {
        match s {
            Status::Active => SubscriberState::Active,
            Status::Suspended => SubscriberState::Suspended,
            Status::Blocked => SubscriberState::Blocked,
            Status::Cancelled => SubscriberState::Cancelled,
            Status::AwaitingSync => SubscriberState::AwaitingSync,
            Status::All => SubscriberState::All,
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Which subscribers; several may be given, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "active")]
    status: Vec<Status>,
    /// Most rows to print (newest change first).
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// Show names and e-mails unmasked.
    #[arg(long)]
    reveal: bool,
    /// One JSON array, for scripts.
    #[arg(long)]
    json: bool,
    /// PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[derive(Serialize)]
struct Row {
    contract_id: String,
    subscriber_id: Option<String>,
    name: Option<String>,
    email: Option<String>,
    state: String,
    skeelo_status: Option<String>,
    products: Vec<String>,
    updated_at: String,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let store = crate::database(&a.database_url).await?;
    let states: Vec<SubscriberState> = a.status.iter().map(|s| (*s).into()).collect();
    let rows: Vec<Row> = store
        .subscribers(&states, a.limit)
        .await?
        .into_iter()
        .map(|r| Row {
            contract_id: r.contract_id,
            subscriber_id: r.subscriber_id,
            name: if a.reveal {
                r.name
            } else {
                r.name.as_deref().map(mask::name)
            },
            email: if a.reveal {
                r.email
            } else {
                r.email.as_deref().map(mask::email)
            },
            state: r.state,
            skeelo_status: r.skeelo_status,
            products: r.products,
            updated_at: r.updated_at,
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.contract_id.clone(),
                r.subscriber_id.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
                r.state.clone(),
                r.skeelo_status.clone().unwrap_or_else(|| "-".into()),
                r.products.join(","),
                r.updated_at.clone(),
            ]
        })
        .collect();
    table::print(
        &[
            "CONTRACT",
            "SUBSCRIBER",
            "NAME",
            "STATE",
            "AT SKEELO",
            "PRODUCTS",
            "UPDATED",
        ],
        &cells,
    );
    println!("{} subscriber(s)", rows.len());
    Ok(ExitCode::SUCCESS)
}
