//! `skeelo-ops subscribers`: the ERP's "Assinantes ativos" and "Assinantes cancelados
//! ou suspensos", from the fleet's own records.

use std::process::ExitCode;

use serde::Serialize;
use skeelo_shared::mask;

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

impl Status {
    fn condition(self) -> &'static str {
        match self {
            Status::Active => "synced AND NOT cancelled AND NOT suspended AND NOT blocked",
            Status::Suspended => "synced AND suspended AND NOT cancelled",
            Status::Blocked => "synced AND blocked AND NOT cancelled",
            Status::Cancelled => "cancelled",
            Status::AwaitingSync => "NOT synced AND NOT cancelled",
            Status::All => "true",
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
    let client = store.client().await?;
    let condition = a
        .status
        .iter()
        .map(|s| format!("({})", s.condition()))
        .collect::<Vec<_>>()
        .join(" OR ");
    let sql = format!(
        "SELECT id, subscriber_id,
                facts #>> '{{synced,details,subscriber,name}}',
                facts #>> '{{synced,details,subscriber,email}}',
                CASE WHEN cancelled THEN 'cancelled' WHEN NOT synced THEN 'awaiting-sync'
                     WHEN suspended AND blocked THEN 'suspended+blocked'
                     WHEN suspended THEN 'suspended' WHEN blocked THEN 'blocked' ELSE 'active' END,
                skeelo_status,
                COALESCE(ARRAY(SELECT jsonb_array_elements_text(facts #> '{{synced,details,products}}')), '{{}}'),
                to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
         FROM contracts WHERE {condition} ORDER BY updated_at DESC, id LIMIT $1"
    );
    let rows = client.query(&sql, &[&a.limit.max(1)]).await?;
    let rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            let name: Option<String> = r.get(2);
            let email: Option<String> = r.get(3);
            Row {
                contract_id: r.get(0),
                subscriber_id: r.get(1),
                name: if a.reveal {
                    name
                } else {
                    name.as_deref().map(mask::name)
                },
                email: if a.reveal {
                    email
                } else {
                    email.as_deref().map(mask::email)
                },
                state: r.get(4),
                skeelo_status: r.get(5),
                products: r.get(6),
                updated_at: r.get(7),
            }
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
