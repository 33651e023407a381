//! One contract: its facts and why, what Skeelo held at the last call, its dead
//! letters and its whole story. (The live answer from Skeelo and "what happens next"
//! are `skeelo-ops explain`'s; see the console's docs.)

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use skeelo_domain::lifecycle::{self, Target};
use skeelo_domain::mask;
use skeelo_store::dead::{Filter, LetterState};

use super::dead::{history_rows, HistoryRow};
use super::{refusal, render, skus, unavailable, Page};
use crate::auth::Signed;
use crate::App;

struct Letter {
    id: i64,
    event_type: String,
    reason: String,
    class: String,
}

#[derive(Template)]
#[template(path = "contract.html")]
struct Contract {
    page: Page,
    id: String,
    subscriber: String,
    facts: Vec<(String, String)>,
    should_be: String,
    holds: String,
    letters: Vec<Letter>,
    history: Vec<HistoryRow>,
}

pub(crate) async fn page(
    State(app): State<Arc<App>>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    let read = async {
        let state = app.store.contract(&id).await?;
        let history = app.store.history(&id).await?;
        let letters = app
            .store
            .dead_letters(
                &Filter {
                    contract_id: Some(id.clone()),
                    state: Some(LetterState::Parked),
                    ..Filter::default()
                },
                50,
            )
            .await?;
        Ok::<_, skeelo_store::StoreError>((state, history, letters))
    };
    let (state, history, letters) = match read.await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let Some(state) = state else {
        return refusal(StatusCode::NOT_FOUND, signed.page(), signed.t().not_found);
    };
    let f = &state.facts;
    let toggle = |t: Option<lifecycle::Toggle>| {
        t.map(|t| format!("{} (v{})", if t.on { "yes" } else { "no" }, t.version.get()))
            .unwrap_or_else(|| "-".into())
    };
    let facts = vec![
        (
            "synced".to_string(),
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
        ("suspended".to_string(), toggle(f.suspended)),
        ("blocked".to_string(), toggle(f.blocked)),
        (
            "cancelled".to_string(),
            f.cancelled
                .map(|v| format!("v{}", v.get()))
                .unwrap_or_else(|| "-".into()),
        ),
    ];
    let subscriber = f
        .synced
        .as_ref()
        .map(|s| {
            let s = &s.details.subscriber;
            format!(
                "{} · {} · {}",
                mask::name(&s.name),
                mask::document(s.document.digits()),
                mask::email(s.email.as_str())
            )
        })
        .unwrap_or_default();
    let describe = |h: Option<&lifecycle::Held>| match h {
        None => "-".to_string(),
        Some(h) => format!("{} [{}]", h.status.as_str(), skus(&h.profile.products)),
    };
    let should_be = match lifecycle::target(f) {
        Target::Absent => "-".to_string(),
        Target::Withdrawn => "cancelled".to_string(),
        Target::Present(h) => describe(Some(&h)),
    };
    render(Contract {
        page: signed.page(),
        subscriber,
        facts,
        should_be,
        holds: describe(state.held.as_ref()),
        letters: letters
            .into_iter()
            .map(|d| Letter {
                id: d.id,
                event_type: d.event_type,
                reason: d.reason,
                class: d.error_class,
            })
            .collect(),
        history: history_rows(history),
        id,
    })
}
