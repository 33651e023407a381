//! The fleet's periodic drift repair: every `SKEELO_REPAIR_INTERVAL`, one process
//! compares every contract with Skeelo and repairs what drifted (see
//! [`skeelo_repair`]). The schedule lives in the database (the latest periodic run's
//! start), so a fleet of several processes, restarted at any time, runs one
//! reconciliation per interval; the runs table's single-running index makes a second
//! process that finds it due at the same moment stand aside.
//!
//! It also keeps the repair gauges current from the latest run in the database,
//! whoever ran it (an operator's `check --repair` included).

use std::sync::Arc;
use std::time::Duration;

use skeelo_repair::{Request, Trigger};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::App;

/// How often the schedule and the gauges are looked at.
const TICK: Duration = Duration::from_secs(30);

pub(crate) async fn run(app: Arc<App>, stop: CancellationToken) {
    let started = OffsetDateTime::now_utc();
    let tick = app.settings.repair.interval.map_or(TICK, |i| i.min(TICK));
    loop {
        gauges(&app).await;
        if let Some(interval) = app.settings.repair.interval {
            if due(&app, interval, started).await {
                let request = Request {
                    trigger: Trigger::Periodic,
                    by: "fleet".into(),
                    guard: app.settings.repair.guard,
                    approve: None,
                };
                let mut quiet = ();
                let ran = tokio::select! {
                    _ = stop.cancelled() => return,
                    ran = skeelo_repair::run(&app.store, &app.skeelo, &request, &mut quiet) => ran,
                };
                match ran {
                    Ok(Some(report)) => {
                        app.metrics
                            .repair_runs
                            .with_label_values(&["periodic", report.state])
                            .inc();
                        if report.state == "awaiting_approval" {
                            tracing::error!(
                                run = report.run,
                                to_change = report.totals.to_change,
                                allowed = report.totals.allowed,
                                "the drift repair's guard stopped the run: nothing changed; review with `skeelo-ops check --drift-only` and approve with `skeelo-ops check --repair --approve {}`",
                                report.run
                            );
                        }
                        gauges(&app).await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        app.metrics
                            .repair_runs
                            .with_label_values(&["periodic", "failed"])
                            .inc();
                        tracing::warn!(error = %e, "the periodic drift repair failed; it runs again at the next interval");
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// A periodic run is due when the latest one (or, before any, this process) started
/// an interval ago, and the downstreams answer.
async fn due(app: &App, interval: Duration, started: OffsetDateTime) -> bool {
    if app.skeelo_health.is_down() || app.db_health.is_down() {
        return false;
    }
    let last = match app.store.last_periodic_repair().await {
        Ok(last) => last.unwrap_or(started),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the repair schedule");
            return false;
        }
    };
    OffsetDateTime::now_utc() - last >= interval
}

async fn gauges(app: &App) {
    if let Ok(n) = app.store.repair_runs_awaiting().await {
        app.metrics.repair_awaiting.set(n);
    }
    let Ok(runs) = app.store.repair_runs(10).await else {
        return;
    };
    let Some(last) = runs.iter().find(|r| {
        r.finished_at.is_some() && matches!(r.state.as_str(), "done" | "awaiting_approval")
    }) else {
        return;
    };
    let m = &app.metrics;
    for kind in skeelo_domain::drift::Kind::ALL {
        let n = last.found.get(kind.as_str()).copied().unwrap_or(0);
        m.repair_differences
            .with_label_values(&[kind.as_str()])
            .set(n);
    }
    for (result, n) in [
        ("repaired", last.repaired),
        ("left_for_people", last.left_for_people),
        ("failed", last.failed),
    ] {
        m.repair_contracts.with_label_values(&[result]).set(n);
    }
    if let Some(t) = last.finished_at {
        m.repair_last_run.set(t.unix_timestamp() as f64);
    }
}
