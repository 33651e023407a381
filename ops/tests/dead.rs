//! The dead-letter console, round trip: list, groups, show, requeue after the cause is
//! fixed, purge, restore, and the audit trail.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use skeelo_domain::event::EventType::*;
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_tests::World;

fn ops(w: &World, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skeelo-ops"))
        .args(args)
        .env("AMQP_URL", &w.amqp_url)
        .env("DATABASE_URL", &w.database_url)
        .env("SKEELO_OPERATOR", "ana.ops")
        .stdin(Stdio::null())
        .output()
        .expect("skeelo-ops runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_understands_requeues_and_purges_dead_letters() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");

    // The ISP sells a product Skeelo does not list yet, and the ERP sends two broken bodies.
    let sync = sample::event(Sync, "DL1", 1, &["SKEELO-KIDS"]);
    w.publish(&sync).await.expect("published");
    w.publish_raw("contract.block", "broken-1", b"<xml/>")
        .await
        .expect("published");
    w.publish_raw("contract.block", "broken-2", b"{")
        .await
        .expect("published");
    w.wait_results(3, Duration::from_secs(30))
        .await
        .expect("three results");
    assert!(w
        .results()
        .iter()
        .all(|r| r.outcome == Outcome::DeadLettered));

    let letters = json(&ops(&w, &["dead", "list", "--json"]));
    assert_eq!(letters.as_array().map(Vec::len), Some(3));

    let groups = json(&ops(&w, &["dead", "groups", "--json"]));
    let summary: Vec<(String, i64)> = groups
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            (
                g["error_class"].as_str().unwrap_or("").to_string(),
                g["count"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![("not_json".into(), 2), ("unknown_product".into(), 1)]
    );

    let kids = json(&ops(
        &w,
        &["dead", "list", "--class", "unknown_product", "--json"],
    ));
    let id = kids[0]["id"].as_i64().expect("an id");
    let id_text = id.to_string();
    let shown = ops(&w, &["dead", "show", &id_text]);
    assert!(shown.status.success(), "{}", text(&shown));
    let out = text(&shown);
    assert!(
        out.contains("unknown_product") && out.contains("SKEELO-KIDS"),
        "{out}"
    );
    assert!(
        !out.contains("assinanteDL1@"),
        "personal data is masked: {out}"
    );
    let revealed = text(&ops(&w, &["dead", "show", &id_text, "--reveal"]));
    assert!(
        revealed.contains("assinanteDL1@example.com.br"),
        "{revealed}"
    );

    // Nothing is touched without a selection, and a dry run touches nothing.
    let none = ops(&w, &["dead", "requeue"]);
    assert!(!none.status.success());
    assert!(text(&none).contains("say which letters"), "{}", text(&none));
    let dry = ops(
        &w,
        &["dead", "requeue", "--class", "unknown_product", "--dry-run"],
    );
    assert!(
        text(&dry).contains("1 dead letter(s) would be requeued"),
        "{}",
        text(&dry)
    );

    // The cause is fixed at Skeelo; the requeued event applies and gets a new result.
    w.sim.add_product("SKEELO-KIDS", "Skeelo Kids");
    let requeued = ops(&w, &["dead", "requeue", &id_text, "--json"]);
    assert!(requeued.status.success(), "{}", text(&requeued));
    let counted: serde_json::Value =
        serde_json::from_slice(&requeued.stdout).expect("one JSON object");
    assert_eq!(counted["matched"], 1, "{counted}");
    assert_eq!(counted["requeued"], 1, "{counted}");
    assert!(counted["stopped_early"].is_null(), "{counted}");
    w.wait_results(4, Duration::from_secs(30))
        .await
        .expect("a new result");
    assert_eq!(
        w.result_for(&sync).map(|r| r.outcome),
        Some(Outcome::Applied)
    );
    assert_eq!(
        w.sim.subscription("DL1").map(|s| s.status).as_deref(),
        Some("active")
    );
    let after = json(&ops(&w, &["dead", "list", "--state", "requeued", "--json"]));
    assert_eq!(after[0]["requeued_by"], "ana.ops");

    // Bulk purge asks first; without a terminal only --yes answers.
    let ask = ops(&w, &["dead", "purge", "--class", "not_json"]);
    assert!(!ask.status.success());
    assert!(text(&ask).contains("add --yes"), "{}", text(&ask));
    let purged = ops(&w, &["dead", "purge", "--class", "not_json", "--yes"]);
    assert!(
        text(&purged).contains("archived 2 dead letter(s)"),
        "{}",
        text(&purged)
    );
    assert_eq!(
        json(&ops(&w, &["dead", "list", "--json"]))
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let archived = json(&ops(&w, &["dead", "list", "--state", "archived", "--json"]));
    assert_eq!(archived.as_array().map(Vec::len), Some(2));
    assert!(
        archived[0]["restore_until"].is_string(),
        "retention is visible"
    );

    let one = archived[0]["id"].as_i64().expect("id").to_string();
    let restored = ops(&w, &["dead", "restore", &one]);
    assert!(restored.status.success(), "{}", text(&restored));
    assert_eq!(
        json(&ops(&w, &["dead", "list", "--json"]))
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Still within retention: nothing to delete.
    assert!(text(&ops(&w, &["dead", "purge", "--expired"])).contains("deleted 0"));

    let db = w.db().await.expect("db");
    let audit: Vec<(String, String, i32)> = db
        .query(
            "SELECT operator, action, count FROM operator_actions ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        audit,
        vec![
            ("ana.ops".into(), "reveal".into(), 1),
            ("ana.ops".into(), "requeue".into(), 1),
            ("ana.ops".into(), "purge".into(), 2),
            ("ana.ops".into(), "restore".into(), 1),
            ("ana.ops".into(), "delete_expired".into(), 0),
        ]
    );
    w.close().await.expect("cleanup");
}

/// A sync whose body is not JSON (a trailing comma) still carries a subscriber: no
/// output of the console shows the subscriber's data unless `--reveal`, which is
/// audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_body_shows_no_personal_data() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    let body = r#"{"event_id": "5f0c1d9e-2b7a-4c1e-9a0e-3d2f1b7c6a55", "type": "sync",
        "occurred_at": "2026-11-29T10:00:00Z", "actor": "operador.demo",
        "contract": {"id": "PII1", "version": 1, "products": ["SKEELO-EBOOKS"]},
        "subscriber": {"id": "S77", "name": "Joana Pereira Lima", "document": "529.982.247-25",
            "email": "joana.lima@example.com.br", "phone": "+55 (21) 99876-5432",},}"#;
    w.publish_raw("contract.sync", "broken-pii", body.as_bytes())
        .await
        .expect("published");
    w.wait_results(1, Duration::from_secs(30))
        .await
        .expect("a result");
    let letters = json(&ops(&w, &["dead", "list", "--json"]));
    let id = letters[0]["id"].as_i64().expect("an id").to_string();
    let subject = [
        "Joana",
        "Pereira",
        "529.982.247",
        "52998224725",
        "joana.lima@",
        "99876",
    ];
    for args in [
        vec!["dead", "list"],
        vec!["dead", "list", "--json"],
        vec!["dead", "groups"],
        vec!["dead", "groups", "--json"],
        vec!["dead", "show", &id],
        vec!["dead", "show", &id, "--json"],
    ] {
        let out = ops(&w, &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let out = text(&out);
        for secret in subject {
            assert!(!out.contains(secret), "{args:?} shows {secret}:\n{out}");
        }
    }
    let shown = text(&ops(&w, &["dead", "show", &id]));
    assert!(
        shown.contains("PII1") && shown.contains("j***@example.com.br"),
        "what operators need stays: {shown}"
    );

    let revealed = text(&ops(&w, &["dead", "show", &id, "--reveal"]));
    assert!(revealed.contains("joana.lima@example.com.br"), "{revealed}");
    let db = w.db().await.expect("db");
    let audited: i64 = db
        .query_one(
            "SELECT count(*) FROM operator_actions WHERE action = 'reveal' AND operator = 'ana.ops'",
            &[],
        )
        .await
        .expect("audit")
        .get(0);
    assert_eq!(audited, 1, "--reveal is in the audit trail");
    w.close().await.expect("cleanup");
}

/// A message purged, parked again and purged again has two archived letters: a
/// restore of both brings back the latest (one parked letter per message) instead of
/// failing, and says so with its audit line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_two_archived_letters_of_one_message_brings_back_the_latest() {
    let w = World::new().await.expect("world");
    let store = skeelo_store::Store::connect(&w.database_url, 2).expect("store");
    store.migrate().await.expect("schema");
    let db = w.db().await.expect("db");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id: i64 = db
            .query_one(
                "INSERT INTO dead_letters (message_key, type, routing_key, body, reason,
                                           error_class, last_error)
                 VALUES ('evt-1', 'sync', 'contract.sync', '\\x7b7d', 'refused', 'http_422', 'no')
                 RETURNING id",
                &[],
            )
            .await
            .expect("parked")
            .get(0);
        let filter = skeelo_store::dead::Filter {
            ids: vec![id],
            state: Some(skeelo_store::dead::LetterState::Parked),
            ..Default::default()
        };
        let n = store
            .archive(&filter, "ana.ops", Duration::from_secs(86_400), "test")
            .await
            .expect("archived");
        assert_eq!(n, 1);
        ids.push(id);
    }
    let n = store
        .restore(&ids, "ana.ops", "both")
        .await
        .expect("a restore of both does not fail");
    assert_eq!(n, 1);
    let states: Vec<(i64, String)> = db
        .query("SELECT id, state FROM dead_letters ORDER BY id", &[])
        .await
        .expect("states")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        states,
        vec![(ids[0], "archived".into()), (ids[1], "parked".into())]
    );
    let audit: Vec<(String, i32)> = db
        .query(
            "SELECT action, count FROM operator_actions ORDER BY id",
            &[],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        audit,
        vec![
            ("purge".into(), 1),
            ("purge".into(), 1),
            ("restore".into(), 1)
        ]
    );
    w.close().await.expect("cleanup");
}
