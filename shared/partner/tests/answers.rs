//! The client against a partner that answers oddly but legally, and one that answers
//! what cannot be read: a stand-in HTTP server (the partner's API is private).

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use skeelo_partner::api::{ClientConfig, Credentials, SkeeloClient, SkeeloError};
use skeelo_partner::pacer::Pacer;
use skeelo_telemetry::metrics::Metrics;

/// Serves `token` at /oauth/token and `products` at /v1/products; returns the base URL.
async fn partner(
    token: (&'static str, &'static [u8]),
    products: (&'static str, &'static [u8]),
) -> String {
    let app = Router::new()
        .route(
            "/oauth/token",
            post(move || async move {
                (StatusCode::OK, [(header::CONTENT_TYPE, token.0)], token.1).into_response()
            }),
        )
        .route(
            "/v1/products",
            get(move || async move {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, products.0)],
                    products.1,
                )
                    .into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn client(base_url: String) -> SkeeloClient {
    SkeeloClient::new(
        ClientConfig {
            base_url,
            credentials: Credentials {
                client_id: "id".into(),
                client_secret: "secret".into(),
            },
            timeout: Duration::from_secs(5),
        },
        Metrics::new().expect("metrics"),
        Pacer::unlimited(),
    )
    .expect("client")
}

const JSON: &str = "application/json";

#[tokio::test]
async fn odd_but_legal_answers_are_read() {
    // A byte-order mark, expires_in as a string, token_type and extra fields.
    let token: &[u8] = b"\xEF\xBB\xBF{\"access_token\": \"t1\", \"token_type\": \"Bearer\", \"expires_in\": \"3600\", \"scope\": null}";
    let products: &[u8] = br#"{"products": [{"sku": "SKEELO-EBOOKS", "name": "Skeelo Ebooks"}]}"#;
    let c = client(partner((JSON, token), (JSON, products)).await);
    let listed = c.products().await.expect("read");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sku, "SKEELO-EBOOKS");
}

#[tokio::test]
async fn a_token_without_expires_in_is_read() {
    let token: &[u8] = br#"{"access_token": "t1"}"#;
    let c = client(partner((JSON, token), (JSON, br#"{"products": []}"#)).await);
    assert!(c.products().await.expect("read").is_empty());
}

#[tokio::test]
async fn an_unreadable_answer_is_a_partner_wide_failure_that_says_what_it_was() {
    let html: &[u8] =
        b"<html><body>Manutencao programada. Contato: suporte@example.com</body></html>";
    let c = client(partner(("text/html", html), (JSON, b"{}")).await);
    let e = c.products().await.expect_err("unreadable");
    assert!(
        matches!(e, SkeeloError::Unavailable(_)),
        "counts toward outage mode and parks nothing: {e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("token: unreadable answer"), "{text}");
    assert!(text.contains("HTTP 200 (text/html"), "{text}");
    assert!(text.contains("<html><body>Manutencao"), "{text}");
    assert!(!text.contains("suporte@"), "personal data masked: {text}");

    // A readable body of the wrong shape says what was missing.
    let c = client(partner((JSON, br#"{"token": "t1"}"#), (JSON, b"{}")).await);
    let text = c.products().await.expect_err("wrong shape").to_string();
    assert!(text.contains("missing field `access_token`"), "{text}");
    assert!(text.contains("HTTP 200 (application/json"), "{text}");
}
