//! Is the fleet healthy: each queue's backlog and consumers (from the broker itself),
//! Skeelo in outage mode, dead letters parked by reason, results waiting for the
//! broker, repair runs waiting for approval and the latest one.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use skeelo_broker as broker;

use super::{render, unavailable, when, Page};
use crate::auth::Signed;
use crate::App;

struct QueueRow {
    name: String,
    messages: String,
    consumers: String,
    /// Nobody consumes a queue that has work: worth a look.
    idle: bool,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    page: Page,
    queues: Vec<QueueRow>,
    broker_error: Option<String>,
    outage: Option<String>,
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
    let outage = match app.store.outages_now(Duration::from_secs(60)).await {
        Ok(o) => o
            .into_iter()
            .find(|o| o.downstream == "skeelo")
            .map(|o| when(o.since)),
        Err(e) => return unavailable(e),
    };
    let (queues, broker_error) = match queues(&app.settings.amqp_url).await {
        Ok(q) => (q, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    render(Overview {
        page: signed.page(),
        queues,
        broker_error,
        outage,
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

/// Each queue's messages and consumers, as the broker counts them now.
async fn queues(amqp_url: &str) -> Result<Vec<QueueRow>, String> {
    let read = async {
        let connection = broker::connect(amqp_url, "skeelo-console overview")
            .await
            .map_err(|e| e.to_string())?;
        let mut channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        for name in broker::operator_queues() {
            let depth = broker::queue_depth(&connection, &mut channel, &name).await;
            rows.push(QueueRow {
                messages: depth.map_or("-".into(), |(m, _)| m.to_string()),
                consumers: depth.map_or("-".into(), |(_, c)| c.to_string()),
                idle: depth.is_some_and(|(m, c)| m > 0 && c == 0) && name != broker::DEAD_QUEUE,
                name,
            });
        }
        let _ = connection.close(200, "done".into()).await;
        Ok(rows)
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(r) => r,
        Err(_) => Err("the broker did not answer within 5 s".into()),
    }
}
