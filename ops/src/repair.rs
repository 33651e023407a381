//! `skeelo-ops check --repair`: a drift repair run from the command line, its report
//! for people (or JSON), and the list of recent runs.

use std::io::IsTerminal;
use std::process::ExitCode;

use skeelo_partner::api::SkeeloClient;
use skeelo_repair::{Progress, Report, Request};
use skeelo_store::Store;

use crate::table;

/// Exit code of a run the guard stopped.
const STOPPED_BY_GUARD: u8 = 3;

/// Progress on a terminal's standard error, rewritten in place; nothing elsewhere.
struct OnTerminal {
    on: bool,
    shown: bool,
}

impl Progress for OnTerminal {
    fn step(&mut self, stage: &str, done: u64) {
        if self.on && done % 25 == 0 {
            eprint!("\r{stage} {done}   ");
            self.shown = true;
        }
    }
}

pub(crate) async fn run(
    store: &Store,
    skeelo: &SkeeloClient,
    request: &Request,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut progress = OnTerminal {
        on: !json && std::io::stderr().is_terminal(),
        shown: false,
    };
    let report = skeelo_repair::run(store, skeelo, request, &mut progress).await;
    if progress.shown {
        eprintln!();
    }
    let Some(report) = report? else {
        eprintln!(
            "another repair run is working now (see `skeelo-ops check --runs`); try again once it ends"
        );
        return Ok(ExitCode::from(1));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(match report.state {
        "awaiting_approval" => ExitCode::from(STOPPED_BY_GUARD),
        _ if report.totals.left_for_people + report.totals.failed > 0 => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

fn print(r: &Report) {
    let t = &r.totals;
    let kinds: Vec<String> = t.found.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "repair run {}: compared {} contract(s) with Skeelo, {} differ{}",
        r.run,
        t.compared,
        t.differing,
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    );
    if !r.differences.is_empty() {
        let rows: Vec<Vec<String>> = r
            .differences
            .iter()
            .map(|d| {
                vec![
                    d.contract_id.clone(),
                    d.kinds
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    d.skeelo_had.clone(),
                    d.should_be.clone(),
                    d.result.replace('_', " "),
                ]
            })
            .collect();
        println!();
        table::print(
            &[
                "CONTRACT",
                "DIFFERS IN",
                "SKEELO HAD",
                "SHOULD BE",
                "RESULT",
            ],
            &rows,
        );
        println!();
    }
    if r.state == "awaiting_approval" {
        println!("STOPPED by the blast-radius guard: {}.", r.note);
        println!("Review the differences above (skeelo-ops check --drift-only), fix the");
        println!("configuration if that is the cause, or approve this run:");
        println!("  skeelo-ops check --repair --approve {}", r.run);
        return;
    }
    println!(
        "{} repaired, {} left for people, {} failed{}",
        t.repaired,
        t.left_for_people,
        t.failed,
        if t.failed > 0 {
            " (the next run tries the failed again)"
        } else {
            ""
        }
    );
    for d in r.differences.iter().filter(|d| d.result != "repaired") {
        println!("  {}: {}", d.contract_id, d.detail);
    }
}

pub(crate) async fn runs(store: &Store, n: i64, json: bool) -> anyhow::Result<ExitCode> {
    let runs = store.repair_runs(n).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let found: Vec<String> = r.found.iter().map(|(k, n)| format!("{k} {n}")).collect();
            vec![
                r.id.to_string(),
                r.started_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                format!("{} ({})", r.trigger, r.requested_by),
                r.state.replace('_', " "),
                r.compared.to_string(),
                found.join(", "),
                format!(
                    "{} repaired, {} for people, {} failed",
                    r.repaired, r.left_for_people, r.failed
                ),
            ]
        })
        .collect();
    table::print(
        &["RUN", "STARTED", "BY", "STATE", "COMPARED", "FOUND", "DONE"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
