//! Dead letters: the groups, a filtered list, one letter, and requeueing — one, a
//! group or a filter, always every letter that matches (not the page on screen), after
//! a confirmation that says how many.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use skeelo_broker::{self as broker, Publisher};
use skeelo_domain::mask;
use skeelo_store::dead::{Filter, LetterState};

use super::{refusal, render, unavailable, when, Page};
use crate::auth::Signed;
use crate::App;

/// A selection of parked letters, as the forms and links carry it. No personal data:
/// reasons, classes, types and ids only.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Selection {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    class: String,
    #[serde(default, rename = "type")]
    event_type: String,
    /// One letter (text: a form's flattened fields arrive as text).
    #[serde(default)]
    id: Option<String>,
}

impl Selection {
    fn filter(&self) -> Filter {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Filter {
            ids: self.id().into_iter().collect(),
            state: Some(LetterState::Parked),
            reason: some(&self.reason),
            error_class: some(&self.class),
            event_type: some(&self.event_type),
            ..Filter::default()
        }
    }

    fn id(&self) -> Option<i64> {
        self.id.as_deref().and_then(|i| i.trim().parse().ok())
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = self.id() {
            parts.push(format!("id {id}"));
        }
        for (k, v) in [
            ("reason", &self.reason),
            ("class", &self.class),
            ("type", &self.event_type),
        ] {
            if !v.trim().is_empty() {
                parts.push(format!("{k} {}", v.trim()));
            }
        }
        if parts.is_empty() {
            "every parked letter".into()
        } else {
            parts.join(", ")
        }
    }
}

struct GroupRow {
    reason: String,
    class: String,
    event_type: String,
    count: i64,
    first: String,
    last: String,
}

struct LetterRow {
    id: i64,
    event_type: String,
    contract: String,
    reason: String,
    class: String,
    attempts: i32,
    last: String,
    error: String,
}

#[derive(Template)]
#[template(path = "dead.html")]
struct Groups {
    page: Page,
    groups: Vec<GroupRow>,
    letters: Vec<LetterRow>,
    matched: i64,
    reason: String,
    class: String,
    event_type: String,
}

pub(crate) async fn groups(
    State(app): State<Arc<App>>,
    signed: Signed,
    Query(sel): Query<Selection>,
) -> Response {
    let filter = sel.filter();
    let read = async {
        let groups = app
            .store
            .dead_letter_groups(&Filter {
                state: Some(LetterState::Parked),
                ..Filter::default()
            })
            .await?;
        let letters = app.store.dead_letters(&filter, 100).await?;
        let matched = app.store.count_dead_letters(&filter).await?;
        Ok::<_, skeelo_store::StoreError>((groups, letters, matched))
    };
    let (groups, letters, matched) = match read.await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    render(Groups {
        page: signed.page(),
        groups: groups
            .into_iter()
            .map(|g| GroupRow {
                reason: g.reason,
                class: g.error_class,
                event_type: g.event_type,
                count: g.count,
                first: when(g.oldest),
                last: when(g.newest),
            })
            .collect(),
        letters: letters
            .into_iter()
            .map(|d| LetterRow {
                id: d.id,
                event_type: d.event_type,
                contract: d.contract_id.unwrap_or_default(),
                reason: d.reason,
                class: d.error_class,
                attempts: d.attempts,
                last: when(d.last_failed_at),
                error: mask::text(&d.last_error),
            })
            .collect(),
        matched,
        reason: sel.reason,
        class: sel.class,
        event_type: sel.event_type,
    })
}

/// One line of a contract's story, for people.
pub(crate) struct HistoryRow {
    pub(crate) received: String,
    pub(crate) event_type: String,
    pub(crate) version: String,
    pub(crate) outcome: String,
    pub(crate) actor: String,
    pub(crate) detail: String,
}

pub(crate) fn history_rows(history: Vec<skeelo_store::HistoryEntry>) -> Vec<HistoryRow> {
    history
        .into_iter()
        .map(|h| HistoryRow {
            received: when(h.received_at),
            event_type: h.event_type,
            version: h
                .version
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "-".into()),
            outcome: h.outcome.replace('_', " "),
            actor: h.actor.unwrap_or_default(),
            detail: mask::text(&h.detail),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "letter.html")]
struct One {
    page: Page,
    id: i64,
    state: String,
    event_type: String,
    contract: String,
    reason: String,
    class: String,
    attempts: i32,
    first: String,
    last: String,
    error: String,
    body: String,
    revealed: bool,
    parked: bool,
    history: Vec<HistoryRow>,
}

async fn letter(app: &App, signed: &Signed, id: i64, reveal: bool) -> Response {
    let d = match app.store.dead_letter(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return refusal(StatusCode::NOT_FOUND, signed.page(), signed.t().not_found),
        Err(e) => return unavailable(e),
    };
    let history = match &d.contract_id {
        Some(c) => match app.store.history(c).await {
            Ok(h) => h,
            Err(e) => return unavailable(e),
        },
        None => Vec::new(),
    };
    let body = serde_json::to_string_pretty(&mask::body(&d.body, reveal)).unwrap_or_default();
    render(One {
        page: signed.page(),
        id: d.id,
        state: d.state.as_str().to_string(),
        parked: d.state == LetterState::Parked,
        event_type: d.event_type,
        contract: d.contract_id.unwrap_or_default(),
        reason: d.reason,
        class: d.error_class,
        attempts: d.attempts,
        first: when(d.first_failed_at),
        last: when(d.last_failed_at),
        error: if reveal {
            d.last_error
        } else {
            mask::text(&d.last_error)
        },
        body,
        revealed: reveal,
        history: history_rows(history),
    })
}

pub(crate) async fn one(
    State(app): State<Arc<App>>,
    signed: Signed,
    Path(id): Path<i64>,
) -> Response {
    letter(&app, &signed, id, false).await
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// An operator reveals one letter's personal data; the audit trail records it.
pub(crate) async fn reveal(
    State(app): State<Arc<App>>,
    signed: Signed,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = signed.refused_action(&f.csrf) {
        return r;
    }
    let who = &signed.session.account.name;
    if let Err(e) = app
        .store
        .audit(
            who,
            "reveal",
            &format!("dead letter {id} (console)"),
            1,
            &serde_json::json!({ "ids": [id] }),
        )
        .await
    {
        return unavailable(e);
    }
    letter(&app, &signed, id, true).await
}

#[derive(Deserialize)]
pub(crate) struct Requeue {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    selection: Selection,
    /// The count the operator confirmed (the confirmation page's), as text.
    #[serde(default)]
    expect: Option<String>,
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct Confirm {
    page: Page,
    count: i64,
    what: String,
    reason: String,
    class: String,
    event_type: String,
    id: String,
}

/// The page that says how many letters match now, and asks.
fn ask(signed: &Signed, selection: Selection, count: i64) -> Response {
    render(Confirm {
        page: signed.page(),
        count,
        what: selection.describe(),
        id: selection.id().map(|i| i.to_string()).unwrap_or_default(),
        reason: selection.reason,
        class: selection.class,
        event_type: selection.event_type,
    })
}

/// Says how many letters a requeue would send back, and asks.
pub(crate) async fn confirm(
    State(app): State<Arc<App>>,
    signed: Signed,
    Form(r): Form<Requeue>,
) -> Response {
    if let Some(resp) = signed.refused_action(&r.csrf) {
        return resp;
    }
    let count = match app.store.count_dead_letters(&r.selection.filter()).await {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    ask(&signed, r.selection, count)
}

#[derive(Template)]
#[template(path = "requeued.html")]
struct Done {
    page: Page,
    count: usize,
    stopped_early: Option<String>,
    what: String,
}

/// Requeues every parked letter of the selection, if it is still the count the
/// operator confirmed (otherwise asks again with the new count). It runs in a task of
/// its own, so a browser that gives up waiting does not stop it half-way (its audit
/// line is written when it ends).
pub(crate) async fn requeue(
    State(app): State<Arc<App>>,
    signed: Signed,
    Form(r): Form<Requeue>,
) -> Response {
    if let Some(resp) = signed.refused_action(&r.csrf) {
        return resp;
    }
    let filter = r.selection.filter();
    let now = match app.store.count_dead_letters(&filter).await {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    let expected: Option<i64> = r.expect.as_deref().and_then(|e| e.trim().parse().ok());
    if expected != Some(now) {
        return ask(&signed, r.selection, now);
    }
    let who = signed.session.account.name.clone();
    let what = format!("{} (console)", r.selection.describe());
    let task = {
        let app = app.clone();
        let (who, what) = (who.clone(), what.clone());
        tokio::spawn(async move {
            let connection =
                broker::connect(&app.settings.amqp_url, "skeelo-console requeue").await?;
            let publisher = Publisher::open(&connection).await?;
            let done = skeelo_repair::requeue::matching(
                &app.store,
                &publisher,
                &filter,
                &who,
                &what,
                &mut |_| {},
            )
            .await;
            let _ = connection.close(200, "done".into()).await;
            Ok::<_, anyhow::Error>(done?)
        })
    };
    match task.await {
        Ok(Ok(done)) => {
            tracing::info!(user = %who, requeued = done.ids.len(), "requeued from the console");
            render(Done {
                page: signed.page(),
                count: done.ids.len(),
                stopped_early: done.stopped_early,
                what: r.selection.describe(),
            })
        }
        Ok(Err(e)) => unavailable(e),
        Err(e) => unavailable(e),
    }
}
