//! Drift repair against a real fleet, broker, database and partner fake: Skeelo's
//! state changed behind the fleet's back is brought back by `skeelo-ops check
//! --repair` and by the fleet's periodic reconciliation, through the lifecycle rules
//! (no call after a cancel), and a mass difference waits for an operator's approval.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use skeelo_domain::event::EventType::{self, *};
use skeelo_domain::sample;
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(30);
const BOTH: [&str; 2] = ["SKEELO-AUDIOBOOKS", "SKEELO-EBOOKS"];

fn ops(w: &World, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skeelo-ops"))
        .args(args)
        .envs(w.env())
        .env("SKEELO_RATE_PER_SECOND", "50")
        .env("SKEELO_OPERATOR", "ops.teste")
        .output()
        .expect("skeelo-ops runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ev(t: EventType, id: &str, version: i64) -> Value {
    sample::event(t, id, version, &BOTH)
}

/// A fleet (started with `settings`) that synced contracts `prefix`01..`prefix``n`,
/// then handled `more`.
async fn base(
    prefix: &str,
    n: usize,
    more: &[Value],
    repair_every: Option<Duration>,
) -> (World, std::net::SocketAddr) {
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.repair.interval = repair_every;
    let addr = w.start_fleet(settings).await.expect("fleet");
    let mut events: Vec<Value> = (1..=n)
        .map(|i| ev(Sync, &format!("{prefix}{i:02}"), 1))
        .collect();
    for e in &events {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(&events, WAIT).await.expect("results");
    for e in more {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(more, WAIT).await.expect("results");
    events.extend_from_slice(more);
    (w, addr)
}

fn status(w: &World, id: &str) -> String {
    w.sim
        .subscriptions()
        .into_iter()
        .find(|s| s.external_id == id)
        .map(|s| s.status)
        .unwrap_or_default()
}

fn products(w: &World, id: &str) -> Vec<String> {
    let mut p: Vec<String> = w
        .sim
        .subscriptions()
        .into_iter()
        .find(|s| s.external_id == id)
        .map(|s| s.products)
        .unwrap_or_default();
    p.sort();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_repair_brings_skeelo_back_and_leaves_a_cancel_for_people() {
    let (w, _) = base("RP", 30, &[ev(Suspend, "RP02", 2)], None).await;
    // Behind the fleet's back: a product removed, a suspended subscription
    // reactivated, a subscription cancelled by Skeelo's support.
    assert!(w
        .sim
        .tamper("RP01", |s| s.products = vec!["SKEELO-EBOOKS".into()]));
    assert!(w.sim.tamper("RP02", |s| s.status = "active".into()));
    assert!(w.sim.tamper("RP03", |s| s.status = "cancelled".into()));

    let out = ops(&w, &["check", "--repair"]);
    let said = text(&out);
    println!("$ skeelo-ops check --repair\n{said}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancel is left for people:\n{said}"
    );
    for words in [
        "compared 30 contract(s) with Skeelo, 3 differ",
        "cancelled_at_skeelo 1, products 1, status 1",
        "2 repaired, 1 left for people, 0 failed",
        "RP03: repair run",
        "a cancel is final there",
    ] {
        assert!(said.contains(words), "`{words}` missing:\n{said}");
    }
    assert_eq!(products(&w, "RP01"), BOTH);
    assert_eq!(status(&w, "RP02"), "inactive");
    assert_eq!(status(&w, "RP03"), "cancelled");

    // Every repair went through the rules: no call a correct client would not make.
    assert_eq!(w.sim.anomalies(), Vec::<String>::new());
    // The story tells it.
    let db = w.db().await.expect("db");
    let lines = db
        .query(
            "SELECT contract_id, outcome, actor, detail FROM contract_events
             WHERE type = 'repair' ORDER BY contract_id",
            &[],
        )
        .await
        .expect("history");
    let lines: Vec<(String, String, String, String)> = lines
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        (lines[0].0.as_str(), lines[0].1.as_str()),
        ("RP01", "repaired")
    );
    assert!(
        lines[0]
            .3
            .contains("products set to SKEELO-AUDIOBOOKS, SKEELO-EBOOKS"),
        "{lines:?}"
    );
    assert_eq!(
        (lines[1].0.as_str(), lines[1].1.as_str()),
        ("RP02", "repaired")
    );
    assert!(lines[1].3.contains("status set to inactive"), "{lines:?}");
    assert_eq!(
        (lines[2].0.as_str(), lines[2].1.as_str()),
        ("RP03", "left_for_people")
    );
    assert!(lines.iter().all(|l| l.2 == "ops.teste"));

    // The run's summary is kept.
    println!(
        "$ skeelo-ops check --runs\n{}",
        text(&ops(&w, &["check", "--runs"]))
    );
    let runs = ops(&w, &["check", "--runs", "--json"]);
    let runs: Value = serde_json::from_slice(&runs.stdout).expect("runs as JSON");
    let run = &runs[0];
    assert_eq!(run["state"], "done");
    assert_eq!(run["trigger"], "operator");
    assert_eq!(run["compared"], 30);
    assert_eq!(run["found"]["products"], 1);
    assert_eq!(run["found"]["status"], 1);
    assert_eq!(run["found"]["cancelled_at_skeelo"], 1);
    assert_eq!(
        (run["repaired"].as_i64(), run["left_for_people"].as_i64()),
        (Some(2), Some(1))
    );

    // The fleet now knows Skeelo cancelled RP03: a later event makes no call to it.
    let suspend = ev(Suspend, "RP03", 5);
    w.publish(&suspend).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&suspend), WAIT)
        .await
        .expect("result");
    assert_eq!(w.sim.anomalies(), Vec::<String>::new());

    // A second repair finds only what people must decide, and changes nothing.
    let again = ops(&w, &["check", "--repair", "--json"]);
    let report: Value = serde_json::from_slice(&again.stdout).expect("report as JSON");
    assert_eq!(report["differing"], 1, "{report}");
    assert_eq!(report["repaired"], 0);
    assert_eq!(report["differences"][0]["contract_id"], "RP03");
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_difference_changes_nothing_until_an_operator_approves_it() {
    let (w, _) = base("RG", 20, &[], None).await;
    for i in 1..=8 {
        assert!(w.sim.tamper(&format!("RG{i:02}"), |s| s.products =
            vec!["SKEELO-EBOOKS".into()]));
    }
    let out = ops(&w, &["check", "--repair"]);
    let said = text(&out);
    println!("$ skeelo-ops check --repair\n{said}");
    assert_eq!(out.status.code(), Some(3), "{said}");
    for words in [
        "STOPPED by the blast-radius guard",
        "8 of 20 contracts would change, more than the guard's 1",
        "nothing changed",
    ] {
        assert!(said.contains(words), "`{words}` missing:\n{said}");
    }
    let run: i64 = said
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("skeelo-ops check --repair --approve ")
        })
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("no approval command in:\n{said}"));
    for i in 1..=8 {
        assert_eq!(
            products(&w, &format!("RG{i:02}")),
            ["SKEELO-EBOOKS"],
            "unchanged before approval"
        );
    }

    // Something else drifts meanwhile: the approval does not cover it.
    assert!(w
        .sim
        .tamper("RG20", |s| s.products = vec!["SKEELO-EBOOKS".into()]));
    let approved = ops(&w, &["check", "--repair", "--approve", &run.to_string()]);
    let said = text(&approved);
    println!("$ skeelo-ops check --repair --approve {run}\n{said}");
    assert!(approved.status.success(), "{said}");
    assert!(
        said.contains("8 repaired, 0 left for people, 0 failed"),
        "{said}"
    );
    for i in 1..=8 {
        assert_eq!(products(&w, &format!("RG{i:02}")), BOTH);
    }
    assert_eq!(products(&w, "RG20"), ["SKEELO-EBOOKS"], "not approved");
    assert!(
        said.contains("RG20: repair run") && said.contains("not among the contracts approved"),
        "{said}"
    );
    let twice = ops(&w, &["check", "--repair", "--approve", &run.to_string()]);
    assert!(!twice.status.success());
    assert!(
        text(&twice).contains("not awaiting approval"),
        "{}",
        text(&twice)
    );
    let none = ops(&w, &["check", "--repair", "--approve", "999999"]);
    assert!(
        text(&none).contains("there is no repair run 999999"),
        "{}",
        text(&none)
    );
    assert_eq!(w.sim.anomalies(), Vec::<String>::new());
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleets_periodic_reconciliation_repairs_drift_by_itself() {
    let (w, addr) = base(
        "RF",
        25,
        &[ev(Cancel, "RF05", 2)],
        Some(Duration::from_secs(1)),
    )
    .await;
    // Skeelo's support brings back a cancelled contract, and removes a product.
    assert!(w.sim.tamper("RF05", |s| s.status = "active".into()));
    assert!(w
        .sim
        .tamper("RF06", |s| s.products = vec!["SKEELO-EBOOKS".into()]));
    let deadline = Instant::now() + WAIT;
    while status(&w, "RF05") != "cancelled" || products(&w, "RF06") != BOTH {
        assert!(
            Instant::now() < deadline,
            "not repaired: RF05 {} RF06 {:?}",
            status(&w, "RF05"),
            products(&w, "RF06")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(w.sim.anomalies(), Vec::<String>::new());
    let db = w.db().await.expect("db");
    // A run may have been under way when the contracts changed: the repairs may be
    // split over two runs, but every one is the fleet's own.
    let row = db
        .query_one(
            "SELECT COALESCE(sum(repaired), 0)::int8, count(*) FILTER (WHERE trigger <> 'periodic')
             FROM repair_runs",
            &[],
        )
        .await
        .expect("runs");
    assert_eq!(row.get::<_, i64>(0), 2, "both repaired by periodic runs");
    assert_eq!(row.get::<_, i64>(1), 0);
    let actor: String = db
        .query_one(
            "SELECT actor FROM contract_events WHERE type = 'repair' AND contract_id = 'RF05'",
            &[],
        )
        .await
        .expect("story")
        .get(0);
    assert_eq!(actor, "fleet");
    // Counted in the fleet's metrics (the gauges follow the latest run, which may
    // already be a later one that found nothing).
    let deadline = Instant::now() + WAIT;
    loop {
        let runs = World::metric(
            addr,
            "skeelo_repair_runs_total{state=\"done\",trigger=\"periodic\"}",
        )
        .await
        .unwrap_or(0.0);
        let last = World::metric(addr, "skeelo_repair_last_run_timestamp_seconds")
            .await
            .unwrap_or(0.0);
        if runs >= 1.0 && last > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics: runs {runs}, last {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.close().await.expect("cleanup");
}
