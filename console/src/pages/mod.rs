//! The console's pages. Every page is rendered on the server from a template; numbers
//! link to where they come from.

pub(crate) mod audit;
pub(crate) mod contract;
pub(crate) mod dead;
pub(crate) mod overview;
pub(crate) mod subscribers;

use askama::Template;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::i18n::Words;

/// What every signed-in page shows: the words, who is signed in, what they may do,
/// and the anti-forgery token its forms carry.
pub(crate) struct Page {
    pub(crate) t: &'static Words,
    pub(crate) user: String,
    pub(crate) operator: bool,
    pub(crate) csrf: String,
    /// The account's chosen language (`en`, `pt-BR`), empty for the browser's.
    pub(crate) lang_choice: String,
    /// Signed in by the trusted sign-in proxy (no sign-out here: it is the proxy's).
    pub(crate) through_proxy: bool,
}

/// A template as an HTML response.
pub(crate) fn render(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "refusal.html")]
struct Refusal {
    page: Page,
    message: &'static str,
}

/// A refusal, in the page's language.
pub(crate) fn refusal(status: StatusCode, page: Page, message: &'static str) -> Response {
    let mut r = render(Refusal { page, message });
    *r.status_mut() = status;
    r
}

/// A form whose only field is its anti-forgery token.
#[derive(serde::Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    pub(crate) csrf: String,
}

/// An operator's reveal of personal data, allowed (operator, this session's form)
/// and written to the audit trail before anything is shown; the refusal otherwise.
pub(crate) async fn audit_reveal(
    app: &crate::App,
    signed: &crate::auth::Signed,
    csrf: &str,
    target: String,
    detail: serde_json::Value,
) -> Option<Response> {
    if let Some(r) = signed.refused_action(csrf) {
        return Some(r);
    }
    app.store
        .audit(&signed.session.account.name, "reveal", &target, 1, &detail)
        .await
        .err()
        .map(unavailable)
}

/// A database that does not answer.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "a page could not read the database");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the database does not answer; try again",
    )
        .into_response()
}

/// SKUs as a list people read.
pub(crate) fn skus(products: &[skeelo_domain::event::Sku]) -> String {
    products
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A time as people read it (UTC, to the second).
pub(crate) fn when(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub(crate) async fn style() -> Response {
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../templates/style.css"),
    )
        .into_response()
}
