//! Is the fleet healthy: each queue's backlog and consumers (from the broker itself)
//! and how old its backlog is at least, the partner rate in use (from the fleet's rate
//! ledger), Skeelo in outage mode, dead letters parked by reason, results waiting for
//! the broker, repair runs waiting for approval and the latest one. Each figure says
//! where it comes from.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use skeelo_broker as broker;
use skeelo_domain::event::EventType;

use super::{render, unavailable, when, Page};
use crate::auth::Signed;
use crate::App;

struct QueueRow {
    name: String,
    messages: String,
    consumers: String,
    /// Nobody consumes a queue that has work: worth a look.
    idle: bool,
    /// For a work queue: when the fleet last handled an event of its type.
    last_handled: String,
    /// The age its backlog has at least (see [`backlog_age`]), when it has one.
    backlog_age: String,
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
    rate: RateCard,
}

/// The partner rate in use.
struct RateCard {
    allowed: u32,
    last_10s: String,
    last_minute: String,
    percent: String,
    /// Slots already promised ahead of now.
    ahead_s: String,
    /// Skeelo asked the fleet to pause (429).
    paused_s: Option<String>,
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
    let handled = match app.store.recently_handled().await {
        Ok(h) => h,
        Err(e) => return unavailable(e),
    };
    let (mut queues, broker_error) = match queues(&app.settings.amqp_url).await {
        Ok(q) => (q, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let now = time::OffsetDateTime::now_utc();
    for q in &mut queues {
        let Some(h) = EventType::ALL
            .into_iter()
            .find(|t| broker::queue_name(*t) == q.name)
            .and_then(|t| handled.iter().find(|h| h.event_type == t.as_str()))
        else {
            continue;
        };
        q.last_handled = when(h.last);
        let waiting = q.messages.parse::<u64>().unwrap_or(0);
        if let Some(age) = backlog_age(waiting, now - h.last, h.waited) {
            q.backlog_age = seconds(age);
        }
    }
    let allowed = app.settings.partner.rate().get();
    let per_s = |w| app.rate.rate_over(Duration::from_secs(w));
    let ten = per_s(10);
    let latest = app.rate.latest();
    let rate = RateCard {
        allowed,
        last_10s: ten.map_or_else(|| "…".into(), |r| format!("{r:.1}")),
        last_minute: per_s(60).map_or_else(|| "…".into(), |r| format!("{r:.1}")),
        percent: ten.map_or_else(String::new, |r| {
            format!("{:.0} %", 100.0 * r / f64::from(allowed))
        }),
        ahead_s: latest
            .as_ref()
            .map_or_else(|| "-".into(), |l| format!("{:.1}", l.ahead.as_secs_f64())),
        paused_s: latest
            .filter(|l| !l.paused_for.is_zero())
            .map(|l| format!("{:.0}", l.paused_for.as_secs_f64().ceil())),
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
        rate,
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
                last_handled: String::new(),
                backlog_age: String::new(),
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

/// The least age a queue's backlog has. The broker does not tell the age of a quorum
/// queue's oldest message, so it is bounded from below by what the fleet recorded:
/// the event it handled last had waited `waited` since the ERP acted (the queue is
/// first in, first out, so what still waits came no earlier), and nothing was handled
/// for `since_last`. `None` when nothing waits.
pub(crate) fn backlog_age(
    waiting: u64,
    since_last: time::Duration,
    waited: Option<Duration>,
) -> Option<Duration> {
    if waiting == 0 {
        return None;
    }
    let idle = Duration::try_from(since_last).unwrap_or_default();
    Some(idle.max(waited.unwrap_or_default()))
}

/// A duration as the overview shows it.
fn seconds(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s} s"),
        120..7_200 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_queue_has_no_backlog_age() {
        assert_eq!(
            backlog_age(0, time::Duration::hours(1), Some(Duration::from_secs(9))),
            None
        );
    }

    #[test]
    fn the_age_is_the_longer_of_the_last_wait_and_the_time_since_the_last_handled() {
        let s = Duration::from_secs;
        assert_eq!(
            backlog_age(5, time::Duration::seconds(2), Some(s(40))),
            Some(s(40))
        );
        assert_eq!(
            backlog_age(5, time::Duration::seconds(300), Some(s(40))),
            Some(s(300))
        );
        // A clock a little ahead of the database's gives no negative age.
        assert_eq!(
            backlog_age(5, time::Duration::seconds(-1), None),
            Some(s(0))
        );
    }

    #[test]
    fn durations_read_in_the_unit_people_expect() {
        assert_eq!(seconds(Duration::from_secs(59)), "59 s");
        assert_eq!(seconds(Duration::from_secs(600)), "10 min");
        assert_eq!(seconds(Duration::from_secs(10_800)), "3 h");
    }
}
