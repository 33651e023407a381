//! Is the fleet healthy: dead letters parked by reason, results waiting for the
//! broker, repair runs waiting for approval and the latest one.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::{render, unavailable, when, Page};
use crate::auth::Signed;
use crate::App;

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    page: Page,
    parked: Vec<(String, i64)>,
    parked_total: i64,
    outbox: i64,
    outbox_oldest_s: u64,
    awaiting: i64,
    last_repair: Option<String>,
}

pub(crate) async fn page(State(app): State<Arc<App>>, signed: Signed) -> Response {
    let read = async {
        let parked = app.store.parked_by_reason().await?;
        let outbox = app.store.results_backlog().await?;
        let awaiting = app.store.repair_runs_awaiting().await?;
        let last = app.store.repair_runs(1).await?;
        Ok::<_, skeelo_store::StoreError>((parked, outbox, awaiting, last))
    };
    let (parked, outbox, awaiting, last) = match read.await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    render(Overview {
        page: signed.page(),
        parked_total: parked.iter().map(|(_, n)| n).sum(),
        parked,
        outbox: outbox.depth,
        outbox_oldest_s: outbox.oldest.as_secs(),
        awaiting,
        last_repair: last.first().map(|r| {
            format!(
                "#{} {} · {} · {} / {} / {}",
                r.id,
                when(r.started_at),
                r.state.replace('_', " "),
                r.repaired,
                r.left_for_people,
                r.failed
            )
        }),
    })
}
