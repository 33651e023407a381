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
    /// Its backlog's age as estimated (see [`backlog_age`]), when it has one.
    backlog_age: String,
    /// Messages wait and the fleet handles none.
    stalled: bool,
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
    /// The latest repair runs (`repair_runs`), newest first.
    repairs: Vec<RepairRow>,
    rate: RateCard,
}

/// One repair run, as `skeelo-ops check --runs` lists it.
struct RepairRow {
    id: i64,
    started: String,
    trigger: String,
    by: String,
    state: String,
    compared: i64,
    differing: i64,
    repaired: i64,
    left: i64,
    failed: i64,
}

/// The partner rate in use.
struct RateCard {
    /// The allowed rate, or ∞ when the fleet runs unlimited.
    allowed: String,
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
        let last = app.store.repair_runs(5).await?;
        Ok::<_, skeelo_store::StoreError>((parked, outbox, awaiting, last))
    };
    let (parked, outbox, awaiting, last) = match read.await {
        Ok(r) => r,
        Err(e) => return unavailable(e),
    };
    let outage = match app.store.outages_now(skeelo_explain::OUTAGE_FRESH).await {
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
    let t = signed.t();
    for q in &mut queues {
        let Some(kind) = EventType::ALL
            .into_iter()
            .find(|t| broker::queue_name(*t) == q.name)
        else {
            continue;
        };
        let h = handled.iter().find(|h| h.event_type == kind.as_str());
        if let Some(h) = h {
            q.last_handled = when(h.last);
        }
        let waiting = q.messages.parse::<u64>().unwrap_or(0);
        match backlog_age(waiting, now, h) {
            BacklogAge::None => {}
            BacklogAge::About(d) => q.backlog_age = format!("~{}", seconds(d)),
            BacklogAge::Stalled(for_) => {
                q.stalled = true;
                q.backlog_age = match for_ {
                    Some(d) => format!("{} {}", t.stalled_for, seconds(d)),
                    None => t.stalled.to_string(),
                };
            }
        }
    }
    let allowed = app.settings.partner.rate().map(|r| r.get());
    let per_s = |w| app.rate.rate_over(Duration::from_secs(w));
    let ten = per_s(10);
    let latest = app.rate.latest();
    let rate = RateCard {
        allowed: allowed.map_or_else(|| "∞".into(), |a| a.to_string()),
        last_10s: ten.map_or_else(|| "…".into(), |r| format!("{r:.1}")),
        last_minute: per_s(60).map_or_else(|| "…".into(), |r| format!("{r:.1}")),
        percent: ten.zip(allowed).map_or_else(String::new, |(r, a)| {
            format!("{:.0} %", 100.0 * r / f64::from(a))
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
        repairs: last
            .iter()
            .map(|r| RepairRow {
                id: r.id,
                started: when(r.started_at),
                trigger: r.trigger.clone(),
                by: r.requested_by.clone(),
                state: r.state.replace('_', " "),
                compared: r.compared,
                differing: r.differing,
                repaired: r.repaired,
                left: r.left_for_people,
                failed: r.failed,
            })
            .collect(),
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
                stalled: false,
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

/// What the overview says of a queue's backlog age. RabbitMQ does not tell the age
/// of a quorum queue's oldest message, so it is estimated from what the fleet
/// recorded, and says which estimate it is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BacklogAge {
    /// Nothing waits.
    None,
    /// The fleet is working the queue: the latest first-seen event it handled (within
    /// the last minute) had waited this long since the ERP acted; what waits now
    /// came after it (first in, first out).
    About(Duration),
    /// Messages wait and nothing was handled for this long (or ever, in the lines
    /// read): the queue is stalled.
    Stalled(Option<Duration>),
}

/// How recent a handled event must be for its wait to speak for the backlog.
const RECENT: Duration = Duration::from_secs(60);

pub(crate) fn backlog_age(
    waiting: u64,
    now: time::OffsetDateTime,
    handled: Option<&skeelo_store::pulse::Handled>,
) -> BacklogAge {
    if waiting == 0 {
        return BacklogAge::None;
    }
    let ago = |t: time::OffsetDateTime| Duration::try_from(now - t).unwrap_or_default();
    let Some(h) = handled else {
        return BacklogAge::Stalled(None);
    };
    match h.waited {
        Some((waited, at)) if ago(at) <= RECENT => BacklogAge::About(waited),
        _ if ago(h.last) <= RECENT => BacklogAge::About(Duration::ZERO),
        _ => BacklogAge::Stalled(Some(ago(h.last))),
    }
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
    use skeelo_store::pulse::Handled;

    fn handled(last_ago: i64, waited: Option<(u64, i64)>, now: time::OffsetDateTime) -> Handled {
        Handled {
            event_type: "sync".into(),
            last: now - time::Duration::seconds(last_ago),
            waited: waited
                .map(|(w, ago)| (Duration::from_secs(w), now - time::Duration::seconds(ago))),
        }
    }

    #[test]
    fn an_empty_queue_has_no_backlog_age() {
        let now = time::OffsetDateTime::now_utc();
        let h = handled(3_600, Some((9, 3_600)), now);
        assert_eq!(backlog_age(0, now, Some(&h)), BacklogAge::None);
    }

    #[test]
    fn a_queue_being_worked_is_as_old_as_the_wait_of_its_latest_fresh_event() {
        let now = time::OffsetDateTime::now_utc();
        let h = handled(1, Some((40, 2)), now);
        assert_eq!(
            backlog_age(5, now, Some(&h)),
            BacklogAge::About(Duration::from_secs(40))
        );
        // Only requeued letters handled lately: their old waits say nothing.
        let h = handled(1, Some((259_200, 3_600)), now);
        assert_eq!(
            backlog_age(5, now, Some(&h)),
            BacklogAge::About(Duration::ZERO)
        );
    }

    #[test]
    fn a_queue_with_work_and_nothing_handled_for_long_is_stalled() {
        let now = time::OffsetDateTime::now_utc();
        let h = handled(10_800, Some((2, 10_800)), now);
        assert_eq!(
            backlog_age(1, now, Some(&h)),
            BacklogAge::Stalled(Some(Duration::from_secs(10_800)))
        );
        assert_eq!(backlog_age(1, now, None), BacklogAge::Stalled(None));
    }

    #[test]
    fn durations_read_in_the_unit_people_expect() {
        assert_eq!(seconds(Duration::from_secs(59)), "59 s");
        assert_eq!(seconds(Duration::from_secs(600)), "10 min");
        assert_eq!(seconds(Duration::from_secs(10_800)), "3 h");
    }
}
