//! `skeelo-ops explain`: the answer a support agent needs about one customer, on one
//! screen — has the subscriber access, and why; what the ERP told the fleet and what
//! became of each event; what Skeelo holds right now (asked live); what is stuck and
//! the command that unsticks it; and what will happen next by itself.
//! The findings and their words are `skeelo_explain`'s, shared with the console's
//! contract page; this prints them, or hands them to scripts as JSON.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use skeelo_domain::event::Document;
use skeelo_domain::mask;
use skeelo_explain::{
    describe_held, fmt_time, subscriber, version_cell, Explanation, Finding, Lang, Live,
    PartnerArgs, Patience,
};

use crate::table;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The ERP contract id.
    #[arg(required_unless_present = "document", conflicts_with = "document")]
    contract: Option<String>,
    /// Or the subscriber's CPF or CNPJ, with or without punctuation: explains each of
    /// their contracts. Never printed back unmasked, not even when it is not valid.
    #[arg(long)]
    document: Option<String>,
    /// The language of the text: `en` or `pt-BR`.
    #[arg(long, default_value = "en", value_parser = Lang::parse)]
    lang: Lang,
    /// Show personal data unmasked (written to the audit trail).
    #[arg(long)]
    reveal: bool,
    /// Who is looking, for the audit trail of --reveal; defaults to $USER.
    #[arg(long, env = "SKEELO_OPERATOR")]
    operator: Option<String>,
    /// A JSON array with one object per contract, for scripts.
    #[arg(long)]
    json: bool,
    /// PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    partner: PartnerArgs,
}

/// Checked here rather than by the argument parser, whose errors quote the value.
fn parse_document(raw: &str) -> anyhow::Result<Document> {
    Document::parse(raw).map_err(|e| anyhow::anyhow!("--document is not a CPF or CNPJ: {e}"))
}

pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let document = a.document.as_deref().map(parse_document).transpose()?;
    let store = crate::database(&a.database_url).await?;
    let ids = match (&a.contract, &document) {
        (Some(id), _) => vec![id.clone()],
        (None, Some(doc)) => store.contracts_by_document(doc.digits()).await?,
        (None, None) => anyhow::bail!("name a contract, or a subscriber with --document"),
    };
    let mut known = Vec::new();
    for id in ids {
        if store.contract(&id).await?.is_some() {
            known.push(id);
        }
    }
    if known.is_empty() {
        let asked = match (&a.contract, &document) {
            // A document typed where the contract goes is not echoed either.
            (Some(id), _) => match Document::parse(id) {
                Ok(doc) => a.lang.document_as_contract(&mask::document(doc.digits())),
                Err(_) => a.lang.no_contract(id),
            },
            (_, Some(doc)) => a.lang.no_subscriber(&mask::document(doc.digits())),
            _ => String::new(),
        };
        eprintln!("{asked}");
        return Ok(ExitCode::from(3));
    }
    if a.reveal {
        let who = crate::dead::operator(&a.operator);
        store
            .audit(
                &who,
                "reveal",
                &format!("explain {}", known.join(",")),
                i64::try_from(known.len()).unwrap_or(i64::MAX),
                &json!({ "contracts": known }),
            )
            .await?;
    }
    let skeelo = a.partner.client(&store, Duration::from_secs(10))?;
    let mut docs = Vec::new();
    let mut first = true;
    for id in &known {
        let Some(explained) =
            skeelo_explain::explain(&store, &skeelo, id, Patience::Patient).await?
        else {
            continue;
        };
        let story = Story {
            found: explained.findings(a.lang),
            explained,
            lang: a.lang,
            reveal: a.reveal,
        };
        if a.json {
            docs.push(story.json());
        } else {
            if !first {
                println!();
            }
            first = false;
            story.print();
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One contract's explanation, and for whom.
struct Story {
    explained: Explanation,
    found: Vec<Finding>,
    lang: Lang,
    reveal: bool,
}

impl Story {
    fn json(&self) -> Value {
        let Story {
            explained: e,
            found,
            lang,
            reveal,
        } = self;
        let (lang, reveal) = (*lang, *reveal);
        json!({
        "contract_id": e.id,
        "headline": lang.headline(found),
        "subscriber": subscriber(&e.state.facts, reveal),
        "skeelo_should_be": e.should_hold(lang),
        "skeelo_now": match &e.live {
            Live::Holds(h) => json!({ "asked": true, "holds": describe_held(h.as_ref(), lang) }),
            Live::Unreachable(err) => json!({ "asked": false, "error": err }),
        },
        "findings": found.iter().map(|f| {
            let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                o.insert("text".into(), Value::String(lang.finding(f)));
                if let Some(next) = lang.next(f) {
                    o.insert("next".into(), Value::String(next));
                }
            }
            v
        }).collect::<Vec<_>>(),
        "history": e.history.iter().map(|h| json!({
            "event_id": h.event_id, "type": h.event_type, "version": h.version,
            "actor": h.actor, "occurred_at": fmt_time(h.occurred_at),
            "received_at": fmt_time(Some(h.received_at)), "outcome": h.outcome,
            "outcome_text": lang.outcome(&h.outcome), "detail": mask::text(&h.detail),
        })).collect::<Vec<_>>(),
        })
    }

    fn print(&self) {
        let Story {
            explained: e,
            found,
            lang,
            reveal,
        } = self;
        let (lang, reveal) = (*lang, *reveal);
        println!("{}", lang.title(&e.id, &lang.headline(found)));
        if let Some(s) = subscriber(&e.state.facts, reveal) {
            let field = |k: &str| s[k].as_str().unwrap_or("-").to_string();
            println!(
                "  {:<13}{} · {} · {} · {}",
                lang.label("subscriber"),
                field("name"),
                field("document"),
                field("email"),
                field("phone"),
            );
        }
        println!("  {:<13}{}", lang.label("should_hold"), e.should_hold(lang));
        println!("  {:<13}{}", lang.label("holds_now"), e.holds_now(lang));
        println!();
        for f in found {
            println!("  - {}", lang.finding(f));
            if let Some(next) = lang.next(f) {
                println!("    → {next}");
            }
        }
        println!("\n{}", lang.label("events"));
        let rows: Vec<Vec<String>> = e
            .history
            .iter()
            .map(|h| {
                vec![
                    fmt_time(Some(h.received_at)),
                    h.event_type.clone(),
                    version_cell(h.version),
                    lang.outcome(&h.outcome),
                    h.actor.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table::print(&lang.history_header(), &rows);
    }
}
