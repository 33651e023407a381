//! Subscribers by status (the ERP's *Assinantes ativos* and *cancelados ou suspensos*,
//! and more), and the search by contract id or CPF/CNPJ. The search is a form POST:
//! the document never reaches a URL, a log line or the browser's history.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use skeelo_domain::mask;
use skeelo_store::reports::SubscriberState;

use super::{render, skus, unavailable, Page};
use crate::auth::Signed;
use crate::i18n::Words;
use crate::App;

pub(crate) struct Row {
    contract: String,
    name: String,
    email: String,
    state: String,
    skeelo: String,
    products: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "subscribers.html")]
struct Subscribers {
    page: Page,
    status: String,
    rows: Vec<Row>,
    searched: bool,
}

#[derive(Deserialize, Default)]
pub(crate) struct Status {
    #[serde(default)]
    status: String,
}

fn state_of(name: &str) -> SubscriberState {
    match name {
        "suspended" => SubscriberState::Suspended,
        "blocked" => SubscriberState::Blocked,
        "cancelled" => SubscriberState::Cancelled,
        "awaiting-sync" => SubscriberState::AwaitingSync,
        "all" => SubscriberState::All,
        _ => SubscriberState::Active,
    }
}

pub(crate) async fn list(
    State(app): State<Arc<App>>,
    signed: Signed,
    Query(q): Query<Status>,
) -> Response {
    let status = if q.status.is_empty() {
        "active".to_string()
    } else {
        q.status
    };
    let rows = match app.store.subscribers(&[state_of(&status)], 500).await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    render(Subscribers {
        page: signed.page(),
        status,
        searched: false,
        rows: rows
            .into_iter()
            .map(|r| Row {
                contract: r.contract_id,
                name: r.name.as_deref().map(mask::name).unwrap_or_default(),
                email: r.email.as_deref().map(mask::email).unwrap_or_default(),
                state: state_words(signed.t(), &r.state),
                skeelo: r.skeelo_status.unwrap_or_default(),
                products: r.products.join(", "),
                updated: r.updated_at,
            })
            .collect(),
    })
}

#[derive(Deserialize)]
pub(crate) struct Search {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    q: String,
}

pub(crate) async fn search(
    State(app): State<Arc<App>>,
    signed: Signed,
    Form(s): Form<Search>,
) -> Response {
    if let Some(r) = signed.forged(&s.csrf) {
        return r;
    }
    let q = s.q.trim();
    let digits: String = q.chars().filter(char::is_ascii_digit).collect();
    // Who looked up which subscriber is in the audit trail (the document masked).
    let looked_for = if digits.len() == 11 || digits.len() == 14 {
        format!("subscriber search by document {}", mask::document(&digits))
    } else {
        format!("subscriber search by contract {}", mask::text(q))
    };
    if let Err(e) = app
        .store
        .audit(
            &signed.session.account.name,
            "search",
            &looked_for,
            1,
            &serde_json::json!({}),
        )
        .await
    {
        return unavailable(e);
    }
    let found = async {
        let mut ids = Vec::new();
        if !q.is_empty() && app.store.contract(q).await?.is_some() {
            ids.push(q.to_string());
        }
        // A CPF has 11 digits and a CNPJ 14, whatever the punctuation.
        if digits.len() == 11 || digits.len() == 14 {
            for id in app.store.contracts_by_document(&digits).await? {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        let mut rows = Vec::new();
        for id in ids {
            if let Some(state) = app.store.contract(&id).await? {
                rows.push(row_of(signed.t(), id, &state));
            }
        }
        Ok::<_, skeelo_store::StoreError>(rows)
    };
    match found.await {
        Ok(rows) => render(Subscribers {
            page: signed.page(),
            status: String::new(),
            searched: true,
            rows,
        }),
        Err(e) => unavailable(e),
    }
}

/// A subscriber's state (as the store names it) in the page's language.
fn state_words(t: &Words, state: &str) -> String {
    match state {
        "active" => t.active.to_string(),
        "suspended" => t.suspended.to_string(),
        "blocked" => t.blocked.to_string(),
        "suspended+blocked" => format!("{} + {}", t.suspended, t.blocked),
        "cancelled" => t.cancelled.to_string(),
        "awaiting-sync" => t.awaiting_sync.to_string(),
        other => other.to_string(),
    }
}

fn row_of(t: &Words, contract: String, state: &skeelo_store::ContractState) -> Row {
    let f = &state.facts;
    let subscriber = f.synced.as_ref().map(|s| &s.details.subscriber);
    let named = if f.cancelled.is_some() {
        "cancelled"
    } else if f.synced.is_none() {
        "awaiting-sync"
    } else if f.is_suspended() && f.is_blocked() {
        "suspended+blocked"
    } else if f.is_suspended() {
        "suspended"
    } else if f.is_blocked() {
        "blocked"
    } else {
        "active"
    };
    Row {
        contract,
        name: subscriber.map(|s| mask::name(&s.name)).unwrap_or_default(),
        email: subscriber
            .map(|s| mask::email(s.email.as_str()))
            .unwrap_or_default(),
        state: state_words(t, named),
        skeelo: state
            .held
            .as_ref()
            .map(|h| h.status.as_str().to_string())
            .unwrap_or_default(),
        products: f
            .synced
            .as_ref()
            .map(|s| skus(&s.details.products))
            .unwrap_or_default(),
        updated: String::new(),
    }
}
