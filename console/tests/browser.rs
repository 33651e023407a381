//! The console in a real headless Chromium (Debian's `chromium` and `chromedriver`,
//! through WebDriver), against a real fleet, broker, database and partner fake:
//! signing in as viewer and operator, what a viewer may not do, an operator requeueing
//! an `unknown_product` group once the product appears, a subscriber found by CPF with
//! personal data masked, forms without the anti-forgery token refused, and no CPF,
//! e-mail or phone of the test subjects in any page, URL or server log line.
//!
//! With `CONSOLE_SCREENSHOTS=DIR`, each page's screenshot is saved there (the README's
//! come from here).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use skeelo_domain::event::EventType::Sync;
use skeelo_domain::outcome::Outcome;
use skeelo_domain::sample;
use skeelo_store::accounts::Role;
use skeelo_tests::World;

mod common;
use common::*;

/// ChromeDriver on a free port, and a headless Chromium session through it.
async fn browser(lang: &str) -> (Running, Client) {
    // The WebDriver client's TLS (unused here: the driver is on localhost) needs one
    // crypto provider chosen for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; deploy/test.sh installs it)");
    let driver = Running(driver);
    wait_http(&format!("http://127.0.0.1:{port}/status")).await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,860",
                     format!("--lang={lang}")],
            "prefs": { "intl.accept_languages": lang },
        }),
    );
    let client = ClientBuilder::rustls()
        .expect("a TLS setup")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

/// Everything seen: each page's HTML and URL, checked for personal data at the end.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    /// The page now on screen, checked at the end with the others, with no
    /// screenshot.
    async fn look(&mut self, c: &Client) -> String {
        let html = c.source().await.expect("the page");
        let url = c.current_url().await.expect("the url").to_string();
        self.0.push((url, html.clone()));
        html
    }

    async fn page(&mut self, c: &Client, shot: &str) -> String {
        let html = c.source().await.expect("the page");
        let url = c.current_url().await.expect("the url").to_string();
        self.0.push((url, html.clone()));
        if let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS") {
            // A relative folder is the workspace's (tests run in the crate's folder).
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(dir);
            let png = c.screenshot().await.expect("a screenshot");
            std::fs::create_dir_all(&dir).expect("the screenshots folder");
            std::fs::write(dir.join(format!("{shot}.png")), png).expect("the screenshot saved");
        }
        html
    }
}

async fn type_into(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

async fn sign_in(c: &Client, base: &str, name: &str) {
    c.goto(&format!("{base}/login"))
        .await
        .expect("the login page");
    type_into(c, "#name", name).await;
    type_into(c, "#password", PASSWORD).await;
    c.find(Locator::Css("#sign-in"))
        .await
        .expect("the button")
        .click()
        .await
        .expect("clicked");
    c.wait()
        .for_element(Locator::Css("#user"))
        .await
        .expect("signed in");
}

/// The text of the element `css`.
async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// Waits for an element only the next page has (a click returns before it loads).
async fn arrived(c: &Client, css: &str) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

/// The personal data of the test subjects, as the ERP sent it and as digits.
fn personal(events: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for e in events {
        let s = &e["subscriber"];
        for field in ["document", "email", "phone", "name"] {
            if let Some(v) = s[field].as_str() {
                out.push(v.to_string());
                let digits: String = v.chars().filter(char::is_ascii_digit).collect();
                if digits.len() >= 8 {
                    out.push(digits);
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_operators_requeue_and_personal_data_stays_masked() {
    let mut w = World::new().await.expect("world");
    w.sim.remove_product("SKEELO-MINIBOOKS");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    let store = skeelo_store::Store::connect(&w.database_url, 2).expect("store");
    store
        .put_account("vera", Some(PASSWORD), Role::Viewer, None)
        .await
        .expect("viewer");
    store
        .put_account("otto", Some(PASSWORD), Role::Operator, None)
        .await
        .expect("operator");
    store
        .put_account("paula", Some(PASSWORD), Role::Viewer, Some("pt-BR"))
        .await
        .expect("viewer in Portuguese");

    // Three sign-ups naming a product Skeelo does not sell yet, and one that works.
    let parked: Vec<Value> = (1..=3)
        .map(|i| {
            sample::event(
                Sync,
                &format!("CN{i}"),
                1,
                &["SKEELO-EBOOKS", "SKEELO-MINIBOOKS"],
            )
        })
        .collect();
    let fine = sample::event(Sync, "CN9", 1, &["SKEELO-EBOOKS"]);
    // Names a product Skeelo will still not sell after the group's requeue.
    let stuck = sample::event(Sync, "CN5", 1, &["SKEELO-KIDS"]);
    let all: Vec<Value> = parked.iter().chain([&fine, &stuck]).cloned().collect();
    for e in &all {
        w.publish(e).await.expect("published");
    }
    w.wait_for_events(&all, WAIT).await.expect("results");
    assert_eq!(
        w.result_for(&parked[0]).map(|r| r.outcome),
        Some(Outcome::DeadLettered)
    );

    let log = std::env::temp_dir().join(format!("skeelo-console-{}.log", free_port()));
    let (_console, base) = console(&w, &log).await;
    let mut seen = Seen::default();

    // A viewer reads, and has no way to act.
    let (_driver, c) = browser("en-US").await;
    c.goto(&format!("{base}/")).await.expect("the console");
    seen.page(&c, "login").await;
    sign_in(&c, &base, "vera").await;
    arrived(&c, "#parked-total").await;
    let html = seen.page(&c, "overview").await;
    assert!(html.contains("Dead letters parked now"), "{html}");
    // The broker's own count of each queue, with the fleet consuming it.
    assert!(
        html.contains("erp.contracts.sync") && html.contains("skeelo.requeue"),
        "{html}"
    );
    click(&c, "#nav-dead").await;
    arrived(&c, "#groups").await;
    let html = seen.page(&c, "dead-letters-viewer").await;
    assert!(html.contains("unknown_product"), "{html}");
    assert!(
        !html.contains("requeue-group"),
        "a viewer sees no requeue button"
    );
    assert!(html.contains("Read-only account"));

    // Even a hand-made request with the viewer's own token is refused.
    let vera = Http::sign_in(&base, "vera").await;
    let token = csrf_of(&vera.get("/dead").await);
    assert!(!token.is_empty());
    let forbidden = reqwest::StatusCode::FORBIDDEN;
    assert_eq!(
        vera.post(
            "/dead/confirm",
            &[
                ("csrf", &token),
                ("action", "requeue"),
                ("class", "unknown_product")
            ]
        )
        .await,
        forbidden
    );
    assert_eq!(
        vera.post("/dead/1/reveal", &[("csrf", &token)]).await,
        forbidden,
        "a viewer cannot reveal"
    );

    // An operator's form without the anti-forgery token, or with another session's,
    // is refused.
    let otto = Http::sign_in(&base, "otto").await;
    let own = csrf_of(&otto.get("/dead").await);
    assert_ne!(own, token);
    for form in [
        vec![("action", "requeue"), ("class", "unknown_product")],
        vec![
            ("csrf", token.as_str()),
            ("action", "purge"),
            ("class", "unknown_product"),
        ],
    ] {
        assert_eq!(otto.post("/dead/act", &form).await, forbidden);
    }
    // A form of ticked rows with none ticked means nothing, not every letter.
    assert_eq!(
        otto.post(
            "/dead/act",
            &[
                ("csrf", own.as_str()),
                ("ticked", "1"),
                ("action", "purge"),
                ("expect", "4")
            ]
        )
        .await,
        reqwest::StatusCode::BAD_REQUEST
    );
    // Nor a search or a sign-out without it, nor a form from another site.
    assert_eq!(
        otto.post("/subscribers/search", &[("q", "CN9")]).await,
        forbidden
    );
    assert_eq!(otto.post("/logout", &[]).await, forbidden);
    let elsewhere = reqwest::Client::new()
        .post(format!("{base}/login"))
        .header(reqwest::header::ORIGIN, "https://evil.example")
        .form(&[("name", "otto"), ("password", PASSWORD)])
        .send()
        .await
        .expect("an answer");
    assert_eq!(elsewhere.status(), forbidden);
    // Pages are not cached, framed or allowed to load from elsewhere.
    let headers = otto.headers("/dead").await;
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
    ] {
        assert_eq!(
            headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
    assert!(headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("frame-ancestors 'none'")));
    assert_eq!(
        w.dead_letters("parked").await.expect("letters").len(),
        4,
        "nothing was requeued by refused forms"
    );

    // The operator requeues the group once Skeelo sells the product.
    click(&c, "form[action='/logout'] button").await;
    arrived(&c, "#sign-in").await;
    sign_in(&c, &base, "otto").await;
    w.sim.add_product("SKEELO-MINIBOOKS", "Skeelo Minibooks");
    click(&c, "#nav-dead").await;
    arrived(&c, "#groups").await;
    let html = seen.page(&c, "dead-letters").await;
    assert!(html.contains("requeue-group"), "{html}");
    click(&c, "#letters a[href^='/dead/']").await;
    arrived(&c, "#body").await;
    let html = seen.page(&c, "dead-letter").await;
    assert!(html.contains("products Skeelo does not sell"), "{html}");
    c.back().await.expect("back");
    arrived(&c, "#groups").await;
    click(&c, "button.requeue-group[data-class=unknown_product]").await;
    arrived(&c, "#confirm").await;
    let html = seen.page(&c, "requeue-confirm").await;
    let count = text_of(&c, "#count").await;
    assert_eq!(count, "4", "{html}");
    click(&c, "#confirm").await;
    arrived(&c, "#requeued").await;
    let html = seen.page(&c, "requeued").await;
    assert!(html.contains("4</b> dead letter(s) sent back"), "{html}");
    let deadline = Instant::now() + WAIT;
    while !parked.iter().all(|e| {
        w.results().iter().any(|r| {
            r.event_id == e["event_id"].as_str().unwrap_or_default()
                && r.outcome == Outcome::Applied
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "the requeued events were not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(w.sim.subscription("CN1").is_some());
    // The operator sees it: the contract's page says it has access, applied.
    c.goto(&format!("{base}/contract/CN1"))
        .await
        .expect("CN1's page");
    arrived(&c, "#headline").await;
    assert_eq!(text_of(&c, "#headline").await, "HAS ACCESS");
    let html = seen.look(&c).await;
    assert!(html.contains(">applied<"), "{html}");

    // The one whose product is still not sold is parked again — and the requeue ended
    // rather than taking it again and again. The operator reveals it (audited) and
    // sends that one letter back, which parks it once more.
    let db = w.db().await.expect("db");
    let parked_again = async || -> i64 {
        db.query_one(
            "SELECT count(*) FROM dead_letters WHERE contract_id = 'CN5' AND state = 'parked'",
            &[],
        )
        .await
        .expect("count")
        .get(0)
    };
    let deadline = Instant::now() + WAIT;
    while parked_again().await != 1 {
        assert!(Instant::now() < deadline, "CN5 was not parked again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    click(&c, "#nav-dead").await;
    arrived(&c, "#groups").await;
    click(&c, "#letters a[href^='/dead/']").await;
    arrived(&c, "#reveal").await;
    seen.look(&c).await;
    click(&c, "#reveal").await;
    arrived(&c, "#revealed").await;
    let revealed = c.source().await.expect("the page");
    let email = stuck["subscriber"]["email"].as_str().expect("an e-mail");
    assert!(
        revealed.contains(email),
        "an operator sees what the reveal shows"
    );
    click(&c, "#requeue-one").await;
    arrived(&c, "#confirm").await;
    seen.look(&c).await;
    let one = text_of(&c, "#count").await;
    assert_eq!(one, "1");
    click(&c, "#confirm").await;
    arrived(&c, "#requeued").await;
    seen.look(&c).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'requeued'),
                        count(*) FILTER (WHERE state = 'parked')
                 FROM dead_letters WHERE contract_id = 'CN5'",
                &[],
            )
            .await
            .expect("counts");
        let (requeued, parked): (i64, i64) = (row.get(0), row.get(1));
        assert!(requeued <= 2, "a requeue took a letter twice: {requeued}");
        if requeued == 2 && parked == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "CN5: {requeued} requeued, {parked} parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The operator purges that letter, ticked in the list: it is archived, restorable
    // for the retention the page states; then restores it from the Archived tab.
    click(&c, "#nav-dead").await;
    arrived(&c, "#groups").await;
    click(&c, "#letters input[type=checkbox]").await;
    click(&c, "#purge-ticked").await;
    arrived(&c, "#confirm").await;
    let html = seen.page(&c, "purge-confirm").await;
    assert!(html.contains("restorable for 30 days"), "{html}");
    assert_eq!(text_of(&c, "#count").await, "1");
    click(&c, "#confirm").await;
    arrived(&c, "#acted").await;
    seen.look(&c).await;
    assert_eq!(text_of(&c, "#acted-count").await, "1");
    let state_of_cn5 = async || -> Vec<String> {
        db.query(
            "SELECT state FROM dead_letters WHERE contract_id = 'CN5' ORDER BY id",
            &[],
        )
        .await
        .expect("states")
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(state_of_cn5().await, ["requeued", "requeued", "archived"]);
    c.goto(&format!("{base}/dead?state=archived"))
        .await
        .expect("the archived letters");
    arrived(&c, "#restore-ticked").await;
    let html = seen.page(&c, "dead-letters-archived").await;
    assert!(html.contains("Restorable until"), "{html}");
    click(&c, "#letters input[type=checkbox]").await;
    click(&c, "#restore-ticked").await;
    arrived(&c, "#confirm").await;
    seen.look(&c).await;
    assert_eq!(text_of(&c, "#count").await, "1");
    click(&c, "#confirm").await;
    arrived(&c, "#acted").await;
    seen.look(&c).await;
    assert_eq!(state_of_cn5().await, ["requeued", "requeued", "parked"]);

    let revealed_by: i64 = db
        .query_one(
            "SELECT count(*) FROM operator_actions WHERE operator = 'otto' AND action = 'reveal'",
            &[],
        )
        .await
        .expect("audit")
        .get(0);
    assert_eq!(revealed_by, 1, "the reveal is in the audit trail");

    // A subscriber found by CPF, in any punctuation, masked; the CPF in no URL.
    click(&c, "#nav-subscribers").await;
    arrived(&c, "#subscribers").await;
    seen.page(&c, "subscribers").await;
    let cpf = fine["subscriber"]["document"]
        .as_str()
        .expect("a CPF")
        .to_string();
    let digits: String = cpf.chars().filter(char::is_ascii_digit).collect();
    let punctuated = format!(
        "{}.{}.{}-{}",
        &digits[0..3],
        &digits[3..6],
        &digits[6..9],
        &digits[9..11]
    );
    type_into(&c, "#q", &punctuated).await;
    click(&c, "#search").await;
    arrived(&c, "#searched").await;
    let html = seen.page(&c, "subscriber-search").await;
    assert!(html.contains("/contract/CN9"), "{html}");
    click(&c, "a[href='/contract/CN9']").await;
    arrived(&c, "#should-be").await;
    let html = seen.page(&c, "contract").await;
    assert!(html.contains("SKEELO-EBOOKS"), "{html}");
    // explain's answer: the headline, Skeelo asked live, and what is going on.
    assert_eq!(text_of(&c, "#headline").await, "HAS ACCESS");
    assert!(
        text_of(&c, "#holds-now").await.contains("asked just now"),
        "{html}"
    );
    assert!(html.contains("finding has_access"), "{html}");
    // An operator may reveal the subscriber (audited); a viewer may not.
    click(&c, "#reveal-subscriber").await;
    arrived(&c, "#subscriber.revealed").await;
    let email = fine["subscriber"]["email"].as_str().expect("an e-mail");
    assert!(text_of(&c, "#subscriber").await.contains(email));
    let vera_token = csrf_of(&vera.get("/contract/CN9").await);
    assert_eq!(
        vera.post("/contract/CN9/reveal", &[("csrf", &vera_token)])
            .await,
        forbidden
    );
    c.goto(&format!("{base}/contract/CN9"))
        .await
        .expect("CN9's page");
    arrived(&c, "#should-be").await;
    click(&c, "#nav-audit").await;
    arrived(&c, "#audit").await;
    let html = seen.page(&c, "audit").await;
    assert!(html.contains("otto") && html.contains("requeue"), "{html}");
    c.close().await.expect("closed");

    // Portuguese for an account that chose it.
    let (_driver_pt, c) = browser("en-US").await;
    sign_in(&c, &base, "paula").await;
    arrived(&c, "#parked-total").await;
    let html = seen.page(&c, "visao-geral").await;
    assert!(html.contains("Mensagens paradas agora"), "{html}");
    click(&c, "#nav-dead").await;
    arrived(&c, "#groups").await;
    let html = seen.page(&c, "mensagens-paradas").await;
    assert!(html.contains("Conta só de leitura"), "{html}");
    // On a phone's screen.
    c.set_window_size(390, 844)
        .await
        .expect("a phone-sized window");
    click(&c, "#nav-subscribers").await;
    arrived(&c, "#subscribers").await;
    let html = seen.page(&c, "assinantes-celular").await;
    assert!(html.contains("Assinantes"), "{html}");
    c.close().await.expect("closed");

    // The overview's partner rate in use, once the ledger was sampled over 10 s, is
    // a figure; the work queues say when their type was last handled.
    let deadline = Instant::now() + WAIT;
    let rate = loop {
        let html = otto.get("/").await;
        seen.0.push((format!("{base}/"), html.clone()));
        let figure = html
            .split("id=\"rate-10s\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|r| r.parse::<f64>().ok());
        if let Some(r) = figure {
            assert!(html.contains("Last handled"), "{html}");
            break r;
        }
        assert!(Instant::now() < deadline, "no rate in use: {html}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!((0.0..=50.0).contains(&rate), "{rate}");

    // No personal data of the test subjects anywhere people or logs can see it.
    let secrets = personal(&all);
    assert!(!secrets.is_empty());
    for (url, html) in &seen.0 {
        for s in &secrets {
            assert!(!url.contains(s.as_str()), "{s} in the URL {url}");
            assert!(!html.contains(s.as_str()), "{s} in the page {url}");
        }
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("signed in"), "the log is read: {logged}");
    for s in &secrets {
        assert!(!logged.contains(s.as_str()), "{s} in the console's log");
    }
    let _ = std::fs::remove_file(&log);
    w.close().await.expect("cleanup");
}
