//! One contract: `skeelo-ops explain`'s answer (the same findings, from the same
//! library, in the reader's language) — the facts and why, what Skeelo holds when the
//! page is asked for (a brief live read, paced with the fleet), what is stuck and what
//! happens next — then its dead letters and its whole story.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use skeelo_domain::lifecycle;
use skeelo_explain::{Finding, Patience};

use super::dead::{history_rows, HistoryRow};
use super::{audit_reveal, refusal, render, skus, unavailable, CsrfOnly, Page};
use crate::auth::Signed;
use crate::App;

struct Letter {
    id: i64,
    event_type: String,
    reason: String,
    class: String,
}

/// A finding as the page shows it: what, what next, and the letter it is about.
struct Found {
    kind: String,
    text: String,
    next: Option<String>,
    letter: Option<i64>,
}

#[derive(Template)]
#[template(path = "contract.html")]
struct Contract {
    page: Page,
    id: String,
    /// The subscriber's data is shown unmasked (an operator asked; audited).
    revealed: bool,
    headline: String,
    subscriber: String,
    facts: Vec<(String, String)>,
    should_label: String,
    should_be: String,
    now_label: String,
    holds_now: String,
    skeelo_unreachable: bool,
    held_last: String,
    found: Vec<Found>,
    letters: Vec<Letter>,
    history: Vec<HistoryRow>,
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    contract(&app, &signed, id, false).await
}

/// An operator reveals the subscriber's personal data; the audit trail records it
/// first.
pub(crate) async fn reveal(
    State(app): State<Arc<App>>,
    signed: Signed,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let target = format!("contract {id} (console)");
    let detail = serde_json::json!({ "contracts": [id] });
    if let Some(r) = audit_reveal(&app, &signed, &f.csrf, target, detail).await {
        return r;
    }
    contract(&app, &signed, id, true).await
}

async fn contract(app: &App, signed: &Signed, id: String, reveal: bool) -> Response {
    let explained =
        match skeelo_explain::explain(&app.store, &app.skeelo, &id, Patience::Brief).await {
            Ok(e) => e,
            Err(e) => return unavailable(e),
        };
    let Some(e) = explained else {
        return refusal(StatusCode::NOT_FOUND, signed.page(), signed.t().not_found);
    };
    let lang = signed.lang.explain();
    let f = &e.state.facts;
    let w = signed.t();
    let toggle = |t: Option<lifecycle::Toggle>| {
        t.map(|t| format!("{} (v{})", if t.on { w.yes } else { w.no }, t.version.get()))
            .unwrap_or_else(|| "-".into())
    };
    let facts = vec![
        (
            w.fact_synced.to_string(),
            f.synced
                .as_ref()
                .map(|s| {
                    format!(
                        "v{} · {} · {}",
                        s.version.get(),
                        s.details.plan.code,
                        skus(&s.details.products)
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ),
        (w.fact_suspended.to_string(), toggle(f.suspended)),
        (w.fact_blocked.to_string(), toggle(f.blocked)),
        (
            w.fact_cancelled.to_string(),
            f.cancelled
                .map(|v| format!("v{}", v.get()))
                .unwrap_or_else(|| "-".into()),
        ),
    ];
    // The same masking as `skeelo-ops explain`, unless revealed (audited above).
    let subscriber = skeelo_explain::subscriber(f, reveal)
        .map(|s| {
            ["name", "document", "email", "phone"]
                .iter()
                .filter_map(|k| s[*k].as_str().map(str::to_string))
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .unwrap_or_default();
    let findings = e.findings(lang);
    let found = findings
        .iter()
        .map(|finding| Found {
            kind: serde_json::to_value(finding)
                .ok()
                .and_then(|v| v["kind"].as_str().map(str::to_string))
                .unwrap_or_default(),
            text: lang.finding(finding),
            next: lang.next(finding),
            letter: match finding {
                Finding::Parked { id, .. } | Finding::Requeued { id, .. } => Some(*id),
                _ => None,
            },
        })
        .collect();
    render(Contract {
        page: signed.page(),
        revealed: reveal,
        headline: lang.headline(&findings),
        subscriber,
        facts,
        should_label: lang.label("should_hold"),
        should_be: e.should_hold(lang),
        now_label: lang.label("holds_now"),
        holds_now: e.holds_now(lang),
        skeelo_unreachable: matches!(e.live, skeelo_explain::Live::Unreachable(_)),
        held_last: skeelo_explain::describe_held(e.state.held.as_ref(), lang),
        found,
        letters: e
            .parked
            .iter()
            .map(|d| Letter {
                id: d.id,
                event_type: d.event_type.clone(),
                reason: d.reason.clone(),
                class: d.error_class.clone(),
            })
            .collect(),
        history: history_rows(e.history, lang),
        id,
    })
}
