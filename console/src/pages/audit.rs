//! Who did what, when, to how many.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use skeelo_domain::mask;

use super::{render, unavailable, when, Page};
use crate::auth::Signed;
use crate::App;

struct Line {
    at: String,
    who: String,
    action: String,
    target: String,
    count: i32,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct Audit {
    page: Page,
    lines: Vec<Line>,
}

pub(crate) async fn page(State(app): State<Arc<App>>, signed: Signed) -> Response {
    let entries = match app.store.audit_log(500).await {
        Ok(e) => e,
        Err(e) => return unavailable(e),
    };
    render(Audit {
        page: signed.page(),
        lines: entries
            .into_iter()
            .map(|e| Line {
                at: when(e.at),
                who: e.operator,
                action: e.action,
                target: mask::text(&e.target),
                count: e.count,
            })
            .collect(),
    })
}
