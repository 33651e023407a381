//! `skeelo-ops check`: what Skeelo really holds, next to what it should hold.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use skeelo_domain::event::Sku;
use skeelo_domain::lifecycle::{self, Target};

use crate::partner::{ask, PartnerArgs};
use crate::table;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Most contracts to check (newest change first).
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    /// One JSON array, for scripts.
    #[arg(long)]
    json: bool,
    /// Print only the contracts that differ.
    #[arg(long)]
    drift_only: bool,
    /// PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    partner: PartnerArgs,
}

#[derive(Serialize)]
struct Row {
    contract_id: String,
    should_be: String,
    skeelo_has: String,
    products_should_be: Vec<Sku>,
    products_at_skeelo: Vec<Sku>,
    ok: bool,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let store = crate::database(&a.database_url).await?;
    let skeelo = a.partner.client(&store)?;
    let ids = store.recent_contracts(a.limit).await?;
    let mut rows = Vec::new();
    for id in ids {
        let Some(state) = store.contract(&id).await? else {
            continue;
        };
        let target = lifecycle::target(&state.facts);
        let at_skeelo = ask(&skeelo, &id)
            .await
            .with_context(|| format!("asking Skeelo for contract {id}"))?
            .map(|s| s.held());
        let ok = lifecycle::holds(&target, at_skeelo.as_ref());
        let (should_be, products_should_be) = match target {
            Target::Absent => ("absent".to_string(), Vec::new()),
            Target::Withdrawn => ("cancelled".to_string(), Vec::new()),
            Target::Present(h) => (h.status.as_str().to_string(), h.profile.products),
        };
        let (skeelo_has, products_at_skeelo) = match at_skeelo {
            None => ("absent".to_string(), Vec::new()),
            Some(h) => (h.status.as_str().to_string(), h.profile.products),
        };
        rows.push(Row {
            contract_id: id,
            should_be,
            skeelo_has,
            products_should_be,
            products_at_skeelo,
            ok,
        });
    }
    let drift = rows.iter().filter(|r| !r.ok).count();
    if a.drift_only {
        rows.retain(|r| !r.ok);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.contract_id.clone(),
                    r.should_be.clone(),
                    r.skeelo_has.clone(),
                    r.products_at_skeelo
                        .iter()
                        .map(Sku::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    if r.ok { "ok".into() } else { "DRIFT".into() },
                ]
            })
            .collect();
        table::print(
            &[
                "CONTRACT",
                "SHOULD BE",
                "AT SKEELO",
                "PRODUCTS AT SKEELO",
                "CHECK",
            ],
            &cells,
        );
        println!("{drift} contract(s) differ from Skeelo");
    }
    Ok(if drift == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
