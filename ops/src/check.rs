//! `skeelo-ops check`: what Skeelo really holds, next to what it should hold.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use skeelo_domain::event::Sku;
use skeelo_domain::lifecycle::{self, Target};

use crate::table;
use skeelo_explain::{ask, PartnerArgs, Patience};

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
    /// Bring Skeelo back to what the facts say, through the lifecycle rules and the
    /// partner rate (in its lowest lane), with a line in each contract's story. Every
    /// contract the fleet knows is compared first; nothing changes if more would
    /// change than the guard allows. Exits 0 when Skeelo is in line afterwards, 1 when
    /// differences remain (left for people, or failed), 3 when the guard stopped it.
    #[arg(long)]
    repair: bool,
    /// Carry out a repair run the guard stopped, once its differences are reviewed
    /// (implies --repair). It may change as many contracts as that run found, no more.
    #[arg(long, value_name = "RUN_ID")]
    approve: Option<i64>,
    /// The guard: the most of the compared contracts one run may change, in percent.
    #[arg(long, env = "SKEELO_REPAIR_MAX_PERCENT", default_value_t = 5.0)]
    max_percent: f64,
    /// The guard: the most contracts one run may change, whatever the base.
    #[arg(long, env = "SKEELO_REPAIR_MAX_COUNT", default_value_t = 500)]
    max_count: u64,
    /// Who repairs, for the audit trail (default: $USER).
    #[arg(long, env = "SKEELO_OPERATOR")]
    operator: Option<String>,
    /// List the latest repair runs (by operators and by the fleet) and exit.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "10")]
    runs: Option<i64>,
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
    if let Some(n) = a.runs {
        return crate::repair::runs(&store, n, a.json).await;
    }
    if a.repair || a.approve.is_some() {
        let guard = skeelo_repair::Guard::from_percent(a.max_percent, a.max_count)
            .map_err(anyhow::Error::msg)?;
        let request = skeelo_repair::Request {
            trigger: skeelo_repair::Trigger::Operator,
            by: crate::dead::operator(&a.operator),
            guard,
            approve: a.approve,
        };
        let skeelo = a.partner.client(&store, Duration::from_secs(10))?;
        return crate::repair::run(&store, &skeelo, &request, a.json).await;
    }
    let skeelo = a.partner.client(&store, Duration::from_secs(10))?;
    let ids = store.recent_contracts(a.limit).await?;
    let mut rows = Vec::new();
    for id in ids {
        let Some(state) = store.contract(&id).await? else {
            continue;
        };
        let target = lifecycle::target(&state.facts);
        let at_skeelo = ask(&skeelo, &id, Patience::Patient)
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
