//! `skeelo-ops explain` against a real fleet, broker, database and partner fake: one
//! test per situation a support agent asks about, checking the words that answer it
//! in both languages, and that personal data stays masked unless revealed.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use skeelo_domain::event::EventType::{self, *};
use skeelo_domain::sample;
use skeelo_tests::World;

const WAIT: Duration = Duration::from_secs(30);

fn ops(w: &World, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skeelo-ops"))
        .args(args)
        .envs(w.env())
        .env("SKEELO_RATE_PER_SECOND", "50")
        .env("SKEELO_OPERATOR", "suporte.teste")
        .output()
        .expect("skeelo-ops runs")
}

/// The explanation of `contract` in `lang`, which must succeed.
fn explain(w: &World, contract: &str, lang: &str) -> String {
    let out = ops(w, &["explain", contract, "--lang", lang]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A fleet that has handled `events`.
async fn fleet_after(events: &[Value]) -> World {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    for e in events {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(events, WAIT).await.expect("results");
    w
}

fn ev(t: EventType, id: &str, version: i64) -> Value {
    sample::event(t, id, version, &["SKEELO-EBOOKS"])
}

fn assert_has(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "`{w}` missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_subscriber_has_access_and_personal_data_is_masked() {
    let sync = ev(Sync, "XA1", 1);
    let w = fleet_after(std::slice::from_ref(&sync)).await;
    let en = explain(&w, "XA1", "en");
    assert_has(
        &en,
        &[
            "Contract XA1: HAS ACCESS",
            "active [SKEELO-EBOOKS] (asked just now)",
            "Nothing is pending",
            "applied",
        ],
    );
    let pt = explain(&w, "XA1", "pt-BR");
    assert_has(
        &pt,
        &["Contrato XA1: TEM ACESSO", "consultado agora", "aplicado"],
    );
    let cpf = sync["subscriber"]["document"].as_str().expect("a cpf");
    let digits: String = cpf.chars().filter(char::is_ascii_digit).collect();
    let email = sync["subscriber"]["email"].as_str().expect("an e-mail");
    for text in [&en, &pt] {
        assert!(!text.contains(&digits) && !text.contains(cpf), "{text}");
        assert!(!text.contains(email), "{text}");
        assert!(
            text.contains(&digits[7..9]),
            "the mask keeps the last digits"
        );
    }
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_before_the_sync_wait_for_it() {
    let w = fleet_after(&[ev(Suspend, "XD1", 2)]).await;
    let en = explain(&w, "XD1", "en");
    assert_has(
        &en,
        &[
            "NO ACCESS YET: the ERP has not sent the sync",
            "1 later event(s) are recorded",
            "When the sync is applied",
            "recorded, waits for the sync",
        ],
    );
    let pt = explain(&w, "XD1", "pt-BR");
    assert_has(
        &pt,
        &["SEM ACESSO AINDA", "registrado, aguarda a sincronização"],
    );
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_is_named_with_its_event_and_who_made_it() {
    let w = fleet_after(&[ev(Sync, "XS1", 1), ev(Suspend, "XS1", 2)]).await;
    let en = explain(&w, "XS1", "en");
    assert_has(
        &en,
        &[
            "NO ACCESS: suspended by the ERP",
            "Suspended by the ERP (event v2 of ",
            ", by operador.demo)",
            "inactive [SKEELO-EBOOKS] (asked just now)",
        ],
    );
    let pt = explain(&w, "XS1", "pt-BR");
    assert_has(&pt, &["SEM ACESSO: suspenso pelo ERP", "por operador.demo"]);
    // Shown in docs/operations.md (`-- --nocapture`).
    println!("$ skeelo-ops explain XS1\n{en}\n$ skeelo-ops explain XS1 --lang pt-BR\n{pt}");
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cancel_the_answer_is_create_a_new_contract() {
    let events = [
        ev(Sync, "XC1", 1),
        ev(Cancel, "XC1", 2),
        ev(Reactivate, "XC1", 3),
        // Older than the cancel: decided already, superseded.
        ev(Suspend, "XC1", 1),
    ];
    // One at a time: each type has its own queue, and a cancel that overtook its sync
    // would be another story ("cancelled before its sync", shown too).
    let mut w = fleet_after(&events[..1]).await;
    for e in &events[1..] {
        w.publish(e).await.expect("published");
        w.wait_for_events(std::slice::from_ref(e), WAIT)
            .await
            .expect("result");
    }
    let en = explain(&w, "XC1", "en");
    assert_has(
        &en,
        &[
            "NO ACCESS: cancelled",
            "Cancelled for good (event v2",
            "1 event(s) came after the cancel and were rejected",
            "create a new contract in the ERP",
            "rejected: create a new contract",
        ],
    );
    let pt = explain(&w, "XC1", "pt-BR");
    assert_has(
        &pt,
        &[
            "SEM ACESSO: cancelado",
            "crie um novo contrato no ERP",
            "rejeitado: crie um novo contrato",
        ],
    );
    w.stop_fleets().await.expect("stopped");
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_shown_with_the_command_that_clears_it() {
    let mut w = World::new().await.expect("world");
    w.sim.remove_product("SKEELO-MINIBOOKS");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    let sync = sample::event(Sync, "XP1", 1, &["SKEELO-MINIBOOKS"]);
    w.publish(&sync).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("result");
    let letters = w.dead_letters("parked").await.expect("letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let out = ops(&w, &["dead", "list", "--json"]);
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let id = listed[0]["id"].as_i64().expect("an id");
    let en = explain(&w, "XP1", "en");
    assert_has(
        &en,
        &[
            "Contract XP1: NO ACCESS YET: its sync is parked",
            "came but is parked",
            &format!("Dead letter #{id}: the sync event is parked (invalid, unknown_product)"),
            "SKEELO-MINIBOOKS",
            "once the product is in Skeelo's catalogue",
            "the fleet requeues it by itself",
            &format!("skeelo-ops dead requeue {id}"),
            "parked for people",
        ],
    );
    let pt = explain(&w, "XP1", "pt-BR");
    println!("$ skeelo-ops explain XP1\n{en}\n$ skeelo-ops explain XP1 --lang pt-BR\n{pt}");
    assert_has(
        &pt,
        &[
            "SEM ACESSO AINDA: a sincronização está parada",
            &format!("Mensagem parada #{id}"),
            "quando o produto estiver no catálogo da Skeelo",
            "a frota a reenvia sozinha",
            &format!("skeelo-ops dead requeue {id}"),
        ],
    );
    // Sent back while no worker takes it yet: it waits in the requeue queue.
    w.stop_fleets().await.expect("stopped");
    // The command explain names, as it names it.
    let out = ops(&w, &["dead", "requeue", &id.to_string(), "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let en = explain(&w, "XP1", "en");
    println!("$ skeelo-ops explain XP1   # requeued\n{en}");
    assert_has(
        &en,
        &[
            "NO ACCESS YET: its sync was sent back and waits its turn",
            &format!("Dead letter #{id} was sent back by suporte.teste"),
            "waits its turn in the requeue queue",
            "It gets a new result once handled",
        ],
    );
    let pt = explain(&w, "XP1", "pt-BR");
    assert_has(
        &pt,
        &[
            "a sincronização foi reenviada e aguarda a vez",
            "aguarda a vez na fila de reenvio",
        ],
    );
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_changed_behind_the_fleets_back_is_shown_as_drift_and_its_repair() {
    let w = fleet_after(&[
        ev(Sync, "XF1", 1),
        ev(Sync, "XF2", 1),
        ev(Suspend, "XF2", 2),
    ])
    .await;
    assert!(w.sim.tamper("XF1", |s| s.status = "cancelled".into()));
    assert!(w.sim.tamper("XF2", |s| s.status = "active".into()));
    let en = explain(&w, "XF1", "en");
    assert_has(
        &en,
        &[
            "NO ACCESS, but should have it: Skeelo differs",
            "it should be active [SKEELO-EBOOKS], it holds cancelled [SKEELO-EBOOKS]",
            "a cancel at Skeelo is final",
            "create a new contract in the ERP",
        ],
    );
    let pt = explain(&w, "XF1", "pt-BR");
    assert_has(
        &pt,
        &[
            "a Skeelo diverge",
            "deveria ser ativo [SKEELO-EBOOKS], está cancelado",
            "o cancelamento é definitivo",
        ],
    );
    // Reactivated behind the fleet's back: a repair brings it back, and says so.
    let en = explain(&w, "XF2", "en");
    assert_has(
        &en,
        &[
            "HAS ACCESS at Skeelo, but should not",
            "periodic reconciliation",
            "skeelo-ops check --repair",
        ],
    );
    let pt = explain(&w, "XF2", "pt-BR");
    println!("$ skeelo-ops explain XF2\n{en}\n$ skeelo-ops explain XF2 --lang pt-BR\n{pt}");
    assert_has(
        &pt,
        &["reconciliação periódica", "skeelo-ops check --repair"],
    );
    let out = ops(&w, &["check", "--repair", "--max-percent", "100"]);
    assert_eq!(out.status.code(), Some(1), "XF1 is left for people");
    let en = explain(&w, "XF2", "en");
    assert_has(&en, &["repaired: Skeelo brought back in line", "suspend"]);
    assert!(!en.contains("Skeelo differs"), "{en}");
    let pt = explain(&w, "XF2", "pt-BR");
    println!("$ skeelo-ops explain XF2\n{en}\n$ skeelo-ops explain XF2 --lang pt-BR\n{pt}");
    assert_has(&pt, &["reparado: Skeelo de volta ao que os fatos dizem"]);
    let en = explain(&w, "XF1", "en");
    assert_has(&en, &["changed at Skeelo, left for people"]);
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_found_by_document_in_any_punctuation_and_revealed_only_on_request() {
    let sync = ev(Sync, "XR1", 1);
    let w = fleet_after(std::slice::from_ref(&sync)).await;
    let cpf = sync["subscriber"]["document"].as_str().expect("a cpf");
    let digits: String = cpf.chars().filter(char::is_ascii_digit).collect();
    for given in [cpf, digits.as_str()] {
        let out = ops(&w, &["explain", "--document", given]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        assert_has(&text, &["Contract XR1: HAS ACCESS"]);
        assert!(!text.contains(&digits), "{text}");
    }
    let out = ops(&w, &["explain", "XR1", "--reveal", "--json"]);
    assert!(out.status.success());
    let doc: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        doc[0]["subscriber"]["document"].as_str(),
        Some(digits.as_str())
    );
    assert_eq!(doc[0]["findings"][0]["kind"], "has_access");
    let db = w.db().await.expect("db");
    let audited = db
        .query_one(
            "SELECT count(*) FROM operator_actions WHERE action = 'reveal' AND operator = 'suporte.teste'",
            &[],
        )
        .await
        .expect("audit")
        .get::<_, i64>(0);
    assert_eq!(audited, 1, "the reveal is in the audit trail");

    // Unknown people and contracts, and a document that is not one: clear answers.
    let out = ops(&w, &["explain", "--document", "529.982.247-25"]);
    assert_eq!(out.status.code(), Some(3));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("***.***.*47-25") && !said.contains("52998224725"),
        "{said}"
    );
    let out = ops(&w, &["explain", digits.as_str()]);
    assert_eq!(out.status.code(), Some(3));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--document") && !said.contains(&digits),
        "{said}"
    );
    let out = ops(&w, &["explain", "NOPE", "--lang", "pt-BR"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("contrato NOPE desconhecido"));
    let out = ops(&w, &["explain", "--document", "123.456.789-00"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not a CPF or CNPJ"), "{said}");
    assert!(
        !said.contains("123.456.789") && !said.contains("123456789"),
        "{said}"
    );
    let out = ops(&w, &["explain", "XR1", "--lang", "fr"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("en and pt-BR"));
    w.close().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_waiting_for_its_next_attempt_and_an_outage_are_said() {
    let mut w = World::new().await.expect("world");
    let mut settings = w.settings();
    settings.retry.delays = vec![Duration::from_secs(15)];
    // Outage mode after the first round's three failures.
    settings.outage.trip.consecutive = 3;
    w.start_fleet(settings).await.expect("fleet");
    let sync = ev(Sync, "XW1", 1);
    w.publish(&sync).await.expect("published");
    w.wait_for_events(std::slice::from_ref(&sync), WAIT)
        .await
        .expect("result");
    // Skeelo fails every call: the suspend goes round again, and outage mode starts.
    w.sim.set_faults(skeelo_sim::Faults {
        error_rate: 1.0,
        ..skeelo_sim::Faults::default()
    });
    w.publish(&ev(Suspend, "XW1", 2)).await.expect("published");
    let db = w.db().await.expect("db");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM event_retries WHERE contract_id = 'XW1'),
                        (SELECT count(*) FROM outages)",
                &[],
            )
            .await
            .expect("notes");
        let (retries, outages): (i64, i64) = (row.get(0), row.get(1));
        if retries > 0 && outages > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{retries} retries and {outages} outages noted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let en = explain(&w, "XW1", "en");
    assert_has(
        &en,
        &[
            "The suspend event failed",
            "is tried again by itself at about",
            "outage mode for Skeelo since",
            "Nothing is lost",
        ],
    );
    let pt = explain(&w, "XW1", "pt-BR");
    println!("$ skeelo-ops explain XW1\n{en}\n$ skeelo-ops explain XW1 --lang pt-BR\n{pt}");
    assert_has(
        &pt,
        &[
            "tentado de novo sozinho",
            "modo de indisponibilidade da Skeelo",
        ],
    );
    // Once Skeelo answers, the notes go with the event's end.
    w.sim.set_faults(skeelo_sim::Faults::default());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM event_retries), (SELECT count(*) FROM outages)",
                &[],
            )
            .await
            .expect("notes");
        if row.get::<_, i64>(0) == 0 && row.get::<_, i64>(1) == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the notes stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.close().await.expect("cleanup");
}
