//! `skeelo-ops contract show ID`: everything the fleet knows of one contract.

use std::process::ExitCode;

use serde_json::json;
use skeelo_domain::lifecycle::{self, Target};

use crate::table;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Command {
    /// Facts, what Skeelo holds, and the history of events.
    Show {
        /// The ERP contract id.
        id: String,
        /// Show personal data unmasked (written to the audit trail).
        #[arg(long)]
        reveal: bool,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
        /// Who is looking, for the audit trail of --reveal; defaults to $USER.
        #[arg(long, env = "SKEELO_OPERATOR")]
        operator: Option<String>,
        /// PostgreSQL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

pub(crate) async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Show {
        id,
        reveal,
        json,
        operator,
        database_url,
    } = command;
    let store = crate::database(&database_url).await?;
    let Some(state) = store.contract(&id).await? else {
        eprintln!("no contract {id}: the fleet has received no event for it");
        return Ok(ExitCode::from(3));
    };
    if reveal {
        let who = crate::dead::operator(&operator);
        store
            .audit(
                &who,
                "reveal",
                &format!("contract {id}"),
                1,
                &json!({ "contract": id }),
            )
            .await?;
    }
    let history = store.history(&id).await?;
    let f = &state.facts;
    let want = match lifecycle::target(f) {
        Target::Absent => "not at Skeelo (not synced yet)".to_string(),
        Target::Withdrawn => {
            "not at Skeelo, or cancelled there (cancelled before its sync)".to_string()
        }
        Target::Present(h) => h.status.as_str().to_string(),
    };
    let subscriber = skeelo_explain::subscriber(f, reveal);
    let fmt_time = skeelo_explain::fmt_time;
    if json {
        let doc = json!({
            "contract_id": id,
            "facts": {
                "synced_version": f.synced.as_ref().map(|s| s.version.get()),
                "plan": f.synced.as_ref().map(|s| &s.details.plan),
                "products": f.synced.as_ref().map(|s| &s.details.products),
                "suspended": f.suspended.map(|t| json!({"on": t.on, "version": t.version.get()})),
                "blocked": f.blocked.map(|t| json!({"on": t.on, "version": t.version.get()})),
                "cancelled_version": f.cancelled.map(|v| v.get()),
            },
            "subscriber": subscriber,
            "skeelo_should_be": want,
            "skeelo": state.held.as_ref().map(|h| json!({"status": h.status.as_str(), "products": h.profile.products})),
            "history": history.iter().map(|h| json!({
                "event_id": h.event_id, "type": h.event_type, "version": h.version, "actor": h.actor,
                "occurred_at": fmt_time(h.occurred_at), "received_at": fmt_time(Some(h.received_at)),
                "outcome": h.outcome, "skeelo_status": h.skeelo_status, "skeelo_calls": h.skeelo_calls,
                "detail": h.detail })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    let toggle = |t: Option<lifecycle::Toggle>| match t {
        None => "-".to_string(),
        Some(t) => format!("{} ({})", if t.on { "yes" } else { "no" }, t.version),
    };
    println!("Contract {id}");
    match &f.synced {
        Some(s) => println!(
            "  synced      {} — plan {} ({} months, {}), products {}",
            s.version,
            s.details.plan.code,
            s.details.plan.months,
            s.details.plan.monthly_value,
            s.details.products.join(",")
        ),
        None => println!("  synced      no (events wait for the sync)"),
    }
    if let Some(s) = &subscriber {
        println!("  subscriber  {}", s);
    }
    println!("  suspended   {}", toggle(f.suspended));
    println!("  blocked     {}", toggle(f.blocked));
    println!(
        "  cancelled   {}",
        f.cancelled
            .map(|v| format!("yes ({v})"))
            .unwrap_or_else(|| "-".into())
    );
    println!("  Skeelo should be: {want}");
    match &state.held {
        Some(h) => println!(
            "  Skeelo holds:     {} with {}",
            h.status.as_str(),
            h.profile.products.join(",")
        ),
        None => println!("  Skeelo holds:     nothing"),
    }
    println!("\nHistory");
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|h| {
            vec![
                fmt_time(Some(h.received_at)),
                h.event_type.clone(),
                skeelo_explain::version_cell(h.version),
                h.outcome.clone(),
                h.skeelo_status.clone().unwrap_or_else(|| "-".into()),
                h.skeelo_calls.to_string(),
                h.actor.clone().unwrap_or_default(),
                h.detail.clone(),
            ]
        })
        .collect();
    table::print(
        &[
            "RECEIVED",
            "TYPE",
            "VERSION",
            "OUTCOME",
            "AT SKEELO",
            "CALLS",
            "ACTOR",
            "DETAIL",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
