//! Who gets in, over plain HTTP against the console binary: sign-ins that keep
//! failing are held back (by name, before the password is checked), each account
//! chooses its language, and the trusted sign-in proxy mode (SSO) takes a name only
//! from the proxies' own addresses, only for accounts that exist, with password
//! sign-in off.

use reqwest::header::{COOKIE, RETRY_AFTER, SET_COOKIE};
use reqwest::StatusCode;
use skeelo_store::accounts::Role;
use skeelo_tests::World;

mod common;
use common::*;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

async fn sign_in_status(base: &str, name: &str, password: &str) -> reqwest::Response {
    no_redirects()
        .post(format!("{base}/login"))
        .form(&[("name", name), ("password", password)])
        .send()
        .await
        .expect("an answer")
}

fn log_file(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("skeelo-console-{tag}-{}.log", free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sign_ins_are_held_back_and_each_account_chooses_its_language() {
    let w = World::new().await.expect("world");
    let store = skeelo_store::Store::connect(&w.database_url, 2).expect("store");
    store.migrate().await.expect("schema");
    for (name, role) in [("otto", Role::Operator), ("vera", Role::Viewer)] {
        store
            .put_account(name, Some(PASSWORD), role, None)
            .await
            .expect("account");
    }
    let log = log_file("throttle");
    let (_console, base) = console(&w, &log).await;

    // Five wrong passwords for one name; then even the right one waits.
    for _ in 0..5 {
        let r = sign_in_status(&base, "otto", "not the password").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let held = sign_in_status(&base, "otto", PASSWORD).await;
    assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = held
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=30).contains(&retry), "{retry}");
    let page = held.text().await.expect("a page");
    assert!(page.contains("login-wait"), "{page}");
    // The name is held, not everyone behind the same address.
    assert_eq!(
        sign_in_status(&base, "vera", PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );

    // Thirty guesses sent at once: only the first few are checked, the rest are held
    // (they all passed the first look before any had failed).
    let guesses = (0..30).map(|i| {
        let base = base.clone();
        tokio::spawn(async move {
            sign_in_status(&base, "carla", &format!("guess number {i}"))
                .await
                .status()
        })
    });
    let mut checked = 0;
    let mut held = 0;
    for g in guesses {
        match g.await.expect("a guess") {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => held += 1,
            other => panic!("a guess was answered {other}"),
        }
    }
    assert!(checked <= 6, "{checked} guesses were checked, {held} held");
    assert_eq!(checked + held, 30);

    // Vera chooses Portuguese, then the browser's language again.
    let vera = Http::sign_in(&base, "vera").await;
    let home = vera.get("/").await;
    assert!(home.contains("Overview"), "{home}");
    let token = csrf_of(&home);
    assert_eq!(
        vera.post("/account/lang", &[("csrf", &token), ("lang", "pt-BR")])
            .await,
        StatusCode::SEE_OTHER
    );
    let home = vera.get("/").await;
    assert!(home.contains("Visão geral"), "{home}");
    assert!(
        home.contains(r#"<option value="pt-BR" selected>"#),
        "{home}"
    );
    assert_eq!(
        vera.post("/account/lang", &[("csrf", &token), ("lang", "fr")])
            .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        vera.post("/account/lang", &[("lang", "en")]).await,
        StatusCode::FORBIDDEN,
        "no anti-forgery token, no change"
    );
    assert_eq!(
        vera.post("/account/lang", &[("csrf", &token), ("lang", "")])
            .await,
        StatusCode::SEE_OTHER
    );
    assert!(vera.get("/").await.contains("Overview"));
    let kept = store.accounts().await.expect("accounts");
    assert_eq!(
        kept.iter()
            .find(|a| a.name == "vera")
            .map(|a| a.lang.clone()),
        Some(None)
    );
    let _ = std::fs::remove_file(&log);
    w.close().await.expect("cleanup");
}

/// A request as the sign-in proxy sends it: the person's name in the header.
async fn as_proxy(base: &str, name: Option<&str>, cookie: Option<&str>) -> reqwest::Response {
    let mut r = no_redirects().get(format!("{base}/dead"));
    if let Some(n) = name {
        r = r.header("X-Forwarded-User", n);
    }
    if let Some(c) = cookie {
        r = r.header(COOKIE, c);
    }
    r.send().await.expect("an answer")
}

async fn page_of_bia_has_sign_out(base: &str) -> bool {
    let page = as_proxy(base, Some("sso.bia"), None)
        .await
        .text()
        .await
        .expect("a page");
    assert!(page.contains("sso.bia"), "{page}");
    page.contains("Sair</button>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_sign_in_proxy_names_the_person_and_nobody_else_may() {
    let w = World::new().await.expect("world");
    let store = skeelo_store::Store::connect(&w.database_url, 2).expect("store");
    store.migrate().await.expect("schema");
    store
        .put_account("sso.ana", None, Role::Operator, None)
        .await
        .expect("account without a password");
    store
        .put_account("sso.bia", None, Role::Viewer, Some("pt-BR"))
        .await
        .expect("account without a password");
    // No password opens an account made without one — not even its placeholder.
    for guess in ["", "!no-password", "no-password"] {
        assert!(store
            .sign_in("sso.ana", guess, std::time::Duration::from_secs(60))
            .await
            .expect("checked")
            .is_none());
    }

    // Without the proxies' addresses the mode refuses to start.
    let out = console_command(&w, &[("SKEELO_CONSOLE_TRUSTED_HEADER", "X-Forwarded-User")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("SKEELO_CONSOLE_SIGN_IN_PROXIES"), "{said}");

    let log = log_file("sso");
    let (_console, base) = console_with(
        &w,
        &log,
        &[
            ("SKEELO_CONSOLE_TRUSTED_HEADER", "X-Forwarded-User"),
            ("SKEELO_CONSOLE_SIGN_IN_PROXIES", "127.0.0.0/8,::1"),
        ],
    )
    .await;
    let first = as_proxy(&base, Some("sso.ana"), None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let cookie = first
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap_or_default().to_string();
    let page = first.text().await.expect("a page");
    assert!(
        page.contains("sso.ana") && !page.contains("Read-only account"),
        "{page}"
    );
    // The same person with the session's cookie: no new session.
    let again = as_proxy(&base, Some("sso.ana"), Some(&cookie)).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.headers().get(SET_COOKIE).is_none());
    // Another person behind the same browser gets their own session, not Ana's.
    let other = as_proxy(&base, Some("sso.bia"), Some(&cookie)).await;
    assert_eq!(other.status(), StatusCode::OK);
    assert!(other.headers().get(SET_COOKIE).is_some());
    let page = other.text().await.expect("a page");
    assert!(
        page.contains("sso.bia") && page.contains("Conta só de leitura"),
        "{page}"
    );
    // No name, or a name with no account: refused. So is a password sign-in.
    for name in [None, Some(""), Some("mallory")] {
        assert_eq!(
            as_proxy(&base, name, Some(&cookie)).await.status(),
            StatusCode::FORBIDDEN,
            "{name:?}"
        );
    }
    assert_eq!(
        sign_in_status(&base, "sso.ana", "anything at all")
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // A name the client slipped in beside the proxy's, or a list of names: refused.
    let two = no_redirects()
        .get(format!("{base}/dead"))
        .header("X-Forwarded-User", "sso.bia")
        .header("X-Forwarded-User", "sso.ana")
        .send()
        .await
        .expect("an answer");
    assert_eq!(two.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        as_proxy(&base, Some("sso.bia, sso.ana"), None)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // Signed in by the proxy, the page offers no sign-out of its own.
    assert!(!page_of_bia_has_sign_out(&base).await);
    let login = no_redirects()
        .get(format!("{base}/login"))
        .header("X-Forwarded-User", "sso.ana")
        .send()
        .await
        .expect("an answer");
    assert_eq!(login.status(), StatusCode::SEE_OTHER);

    // A console that trusts another address takes no name from this one; its health
    // check answers anyone.
    let log2 = log_file("sso-untrusted");
    let (_other, base2) = console_with(
        &w,
        &log2,
        &[
            ("SKEELO_CONSOLE_TRUSTED_HEADER", "X-Forwarded-User"),
            ("SKEELO_CONSOLE_SIGN_IN_PROXIES", "10.9.9.9"),
        ],
    )
    .await;
    assert_eq!(
        as_proxy(&base2, Some("sso.ana"), None).await.status(),
        StatusCode::FORBIDDEN
    );
    let health = reqwest::get(format!("{base2}/healthz"))
        .await
        .expect("an answer");
    assert_eq!(health.status(), StatusCode::OK);
    for l in [&log, &log2] {
        let _ = std::fs::remove_file(l);
    }
    w.close().await.expect("cleanup");
}
