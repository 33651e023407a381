//! The simulator over real HTTP, as the bridge and other processes see it.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use skeelo_sim::{spawn, Faults, SimConfig, SimHandle};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn start() -> Result<(SimHandle, Client), Box<dyn std::error::Error>> {
    Ok((spawn(SimConfig::default()).await?, Client::new()))
}

async fn token_response(
    sim: &SimHandle,
    client: &Client,
    body: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}/oauth/token", sim.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
}

async fn token(sim: &SimHandle, client: &Client) -> Result<String, Box<dyn std::error::Error>> {
    let response = token_response(
        sim,
        client,
        "grant_type=client_credentials&client_id=demo-client&client_secret=demo-secret",
    )
    .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await?;
    Ok(body["access_token"].as_str().ok_or("no token")?.to_owned())
}

fn subscription_body(external_id: &str) -> Value {
    json!({
        "external_id": external_id,
        "document": "12345678901",
        "name": "Ana Souza",
        "email": "ana@example.com",
        "phone": null,
        "products": ["SKEELO-EBOOKS"],
    })
}

async fn create(
    sim: &SimHandle,
    client: &Client,
    token: &str,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}/v1/subscriptions", sim.base_url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
}

async fn error_code(response: reqwest::Response) -> Result<String, Box<dyn std::error::Error>> {
    let body: Value = response.json().await?;
    Ok(body["error"]["code"]
        .as_str()
        .ok_or("no error code")?
        .to_owned())
}

#[tokio::test]
async fn token_flow_and_bad_credentials() -> TestResult {
    let (sim, client) = start().await?;
    let response = token_response(
        &sim,
        &client,
        "grant_type=client_credentials&client_id=demo-client&client_secret=demo-secret",
    )
    .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["access_token"].as_str().map(str::len), Some(32));

    for bad in [
        "grant_type=client_credentials&client_id=demo-client&client_secret=wrong",
        "grant_type=password&client_id=demo-client&client_secret=demo-secret",
        "",
    ] {
        let response = token_response(&sim, &client, bad).await?;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(response).await?, "invalid_client");
    }

    let response = client
        .get(format!("{}/v1/products", sim.base_url()))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await?, "invalid_token");

    let token = token(&sim, &client).await?;
    let products: Value = client
        .get(format!("{}/v1/products", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(products["products"][0]["sku"], "SKEELO-EBOOKS");
    assert_eq!(products["products"].as_array().map(Vec::len), Some(3));
    assert_eq!(sim.request_count("token", 200), 2);
    assert_eq!(sim.request_count("token", 401), 3);
    assert_eq!(sim.request_count("list_products", 401), 1);
    assert_eq!(sim.total_requests(), 7);
    sim.shutdown();
    Ok(())
}

#[tokio::test]
async fn subscription_round_trip() -> TestResult {
    let (sim, client) = start().await?;
    let token = token(&sim, &client).await?;
    let url = format!("{}/v1/subscriptions/c-1", sim.base_url());

    let response = create(&sim, &client, &token, &subscription_body("c-1")).await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await?;
    assert_eq!(created["status"], "active");
    assert_eq!(created["phone"], Value::Null);
    assert!(created["id"].as_str().is_some_and(|id| id.len() == 36));

    let fetched: Value = client
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(fetched, created);

    let response = client
        .patch(&url)
        .bearer_auth(&token)
        .json(&json!({"email": "ana@new.example", "products": ["SKEELO-EBOOKS", "SKEELO-AUDIOBOOKS"]}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await?;
    assert_eq!(patched["email"], "ana@new.example");
    assert_eq!(patched["name"], "Ana Souza");
    assert_eq!(
        patched["products"],
        json!(["SKEELO-EBOOKS", "SKEELO-AUDIOBOOKS"])
    );

    let response = client
        .put(format!("{url}/status"))
        .bearer_auth(&token)
        .json(&json!({"status": "inactive"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let inactive: Value = response.json().await?;
    assert_eq!(inactive["status"], "inactive");

    let held = sim.subscription("c-1").ok_or("missing")?;
    assert_eq!(held.status, "inactive");
    assert_eq!(held.email, "ana@new.example");
    assert!(sim.anomalies().is_empty(), "{:?}", sim.anomalies());

    let response = client
        .get(format!("{}/v1/subscriptions/none", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await?, "not_found");
    sim.shutdown();
    Ok(())
}

#[tokio::test]
async fn duplicate_create_is_409_and_not_an_anomaly() -> TestResult {
    let (sim, client) = start().await?;
    let token = token(&sim, &client).await?;
    create(&sim, &client, &token, &subscription_body("c-2")).await?;
    let response = create(&sim, &client, &token, &subscription_body("c-2")).await?;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await?, "already_exists");
    assert!(sim.anomalies().is_empty());
    assert_eq!(sim.request_count("create_subscription", 409), 1);
    Ok(())
}

#[tokio::test]
async fn changes_after_cancel_are_409_and_anomalies() -> TestResult {
    let (sim, client) = start().await?;
    let token = token(&sim, &client).await?;
    create(&sim, &client, &token, &subscription_body("c-3")).await?;
    let status_url = format!("{}/v1/subscriptions/c-3/status", sim.base_url());
    let response = client
        .put(&status_url)
        .bearer_auth(&token)
        .json(&json!({"status": "cancelled"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(sim.anomalies().is_empty());

    let response = client
        .put(&status_url)
        .bearer_auth(&token)
        .json(&json!({"status": "active"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(response).await?, "subscription_cancelled");
    let response = client
        .patch(format!("{}/v1/subscriptions/c-3", sim.base_url()))
        .bearer_auth(&token)
        .json(&json!({"name": "Other"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(sim.anomalies().len(), 2, "{:?}", sim.anomalies());
    assert_eq!(
        sim.subscription("c-3").ok_or("missing")?.status,
        "cancelled"
    );
    Ok(())
}

#[tokio::test]
async fn validation_failures_are_422() -> TestResult {
    let (sim, client) = start().await?;
    let token = token(&sim, &client).await?;

    let mut body = subscription_body("c-4");
    body["products"] = json!(["SKEELO-COMICS"]);
    let response = create(&sim, &client, &token, &body).await?;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(response).await?, "unknown_product");

    let mut body = subscription_body("c-4");
    body["document"] = json!("123.456.789-01");
    let response = create(&sim, &client, &token, &body).await?;
    assert_eq!(error_code(response).await?, "invalid_document");

    let response = client
        .post(format!("{}/v1/subscriptions", sim.base_url()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(response).await?, "invalid_request");

    // A product removed from the catalogue can no longer be referenced.
    create(&sim, &client, &token, &subscription_body("c-5")).await?;
    sim.remove_product("SKEELO-AUDIOBOOKS");
    let response = client
        .patch(format!("{}/v1/subscriptions/c-5", sim.base_url()))
        .bearer_auth(&token)
        .json(&json!({"products": ["SKEELO-AUDIOBOOKS"]}))
        .send()
        .await?;
    assert_eq!(error_code(response).await?, "unknown_product");
    sim.add_product("SKEELO-AUDIOBOOKS", "Skeelo Audiobooks");

    assert!(sim.subscription("c-4").is_none());
    assert_eq!(sim.anomalies().len(), 4, "{:?}", sim.anomalies());
    assert_eq!(sim.request_count("create_subscription", 422), 3);
    Ok(())
}

#[tokio::test]
async fn beyond_the_rate_is_429_with_retry_after() -> TestResult {
    let sim = spawn(SimConfig {
        rate_per_second: Some(3),
        ..SimConfig::default()
    })
    .await?;
    let client = Client::new();
    let token = token(&sim, &client).await?;
    let mut limited = 0;
    for _ in 0..6 {
        let response = client
            .get(format!("{}/v1/products", sim.base_url()))
            .bearer_auth(&token)
            .send()
            .await?;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                Some("1")
            );
            assert_eq!(error_code(response).await?, "rate_limited");
            limited += 1;
        }
    }
    assert!(limited >= 1, "no call was limited");
    assert!(sim.max_accepted_in_one_second() <= 3);
    assert_eq!(sim.request_count("list_products", 429), limited);

    // Admin routes are never limited, and lifting the limit takes effect at once.
    let state: Value = client
        .get(format!("{}/_sim/state", sim.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(state["faults"]["rate_per_second"], 3);
    let faults: Value = client
        .put(format!("{}/_sim/faults", sim.base_url()))
        .json(&json!({"rate_per_second": null}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(faults["rate_per_second"], Value::Null);
    let response = client
        .get(format!("{}/v1/products", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn error_rate_one_gives_503_without_state_change() -> TestResult {
    let (sim, client) = start().await?;
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    // The token endpoint is exempt from transient errors.
    let token = token(&sim, &client).await?;
    let response = create(&sim, &client, &token, &subscription_body("c-6")).await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(response).await?, "unavailable");
    assert!(sim.subscription("c-6").is_none());
    assert_eq!(sim.request_count("create_subscription", 503), 1);

    sim.set_faults(Faults::default());
    let response = create(&sim, &client, &token, &subscription_body("c-6")).await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    Ok(())
}

#[tokio::test]
async fn down_answers_503_to_everything() -> TestResult {
    let (sim, client) = start().await?;
    let token = token(&sim, &client).await?;
    sim.set_faults(Faults {
        down: true,
        ..Faults::default()
    });
    let response = token_response(
        &sim,
        &client,
        "grant_type=client_credentials&client_id=demo-client&client_secret=demo-secret",
    )
    .await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = create(&sim, &client, &token, &subscription_body("c-7")).await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(sim.subscriptions().is_empty());

    // Recovery through the admin API, as a demo in another process would do it.
    client
        .put(format!("{}/_sim/faults", sim.base_url()))
        .json(&json!({"down": false}))
        .send()
        .await?
        .error_for_status()?;
    assert!(!sim.faults().down);
    let response = create(&sim, &client, &token, &subscription_body("c-7")).await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    Ok(())
}

#[tokio::test]
async fn expired_tokens_get_401() -> TestResult {
    let (sim, client) = start().await?;
    let old = token(&sim, &client).await?;
    sim.expire_tokens();
    let response = create(&sim, &client, &old, &subscription_body("c-8")).await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await?, "invalid_token");

    let fresh = token(&sim, &client).await?;
    client
        .post(format!("{}/_sim/tokens/expire", sim.base_url()))
        .send()
        .await?
        .error_for_status()?;
    let response = create(&sim, &client, &fresh, &subscription_body("c-8")).await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(sim.subscription("c-8").is_none());
    Ok(())
}

#[tokio::test]
async fn tokens_expire_after_the_ttl() -> TestResult {
    let sim = spawn(SimConfig {
        token_ttl: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await?;
    let client = Client::new();
    let token = token(&sim, &client).await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let response = client
        .get(format!("{}/v1/products", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn latency_delays_partner_calls() -> TestResult {
    let sim = spawn(SimConfig {
        latency: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await?;
    let client = Client::new();
    let started = Instant::now();
    token(&sim, &client).await?;
    assert!(started.elapsed() >= Duration::from_millis(200));
    Ok(())
}

#[tokio::test]
async fn state_endpoint_shape() -> TestResult {
    let (sim, client) = start().await?;
    let token = token(&sim, &client).await?;
    create(&sim, &client, &token, &subscription_body("b-2")).await?;
    create(&sim, &client, &token, &subscription_body("b-1")).await?;
    client
        .put(format!("{}/v1/subscriptions/b-1/status", sim.base_url()))
        .bearer_auth(&token)
        .json(&json!({"status": "active"}))
        .send()
        .await?;

    let state: Value = client
        .get(format!("{}/_sim/state", sim.base_url()))
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<&str> = state["subscriptions"]
        .as_array()
        .ok_or("subscriptions")?
        .iter()
        .filter_map(|s| s["external_id"].as_str())
        .collect();
    assert_eq!(ids, ["b-1", "b-2"]);
    let requests = state["requests"].as_array().ok_or("requests")?;
    assert!(
        requests.contains(&json!({"operation": "create_subscription", "status": 201, "count": 2}))
    );
    assert!(requests.contains(&json!({"operation": "token", "status": 200, "count": 1})));
    // Re-setting the status it already has is a no-op a correct client avoids.
    assert_eq!(state["anomalies"].as_array().map(Vec::len), Some(1));
    let per_second = state["accepted_per_second"]
        .as_object()
        .ok_or("per second")?;
    assert_eq!(
        per_second.values().filter_map(Value::as_u64).sum::<u64>(),
        4
    );
    assert!(state["max_accepted_in_one_second"]
        .as_u64()
        .is_some_and(|n| (1..=4).contains(&n)));
    assert_eq!(
        state["faults"],
        json!({"error_rate": 0.0, "latency_ms": 0, "down": false, "rate_per_second": null,
            "throttle_all": false, "retry_after": "1", "expires_in_as_string": false})
    );

    let one: Value = client
        .get(format!("{}/_sim/subscriptions/b-2", sim.base_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(one["external_id"], "b-2");
    let missing = client
        .get(format!("{}/_sim/subscriptions/zzz", sim.base_url()))
        .send()
        .await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Admin calls are not partner calls.
    assert_eq!(sim.total_requests(), 4);

    let response = client
        .post(format!("{}/_sim/products", sim.base_url()))
        .json(&json!({"sku": "SKEELO-KIDS", "name": "Skeelo Kids"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client
        .delete(format!("{}/_sim/products/SKEELO-KIDS", sim.base_url()))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);

    client
        .post(format!("{}/_sim/reset", sim.base_url()))
        .send()
        .await?
        .error_for_status()?;
    assert!(sim.subscriptions().is_empty());
    assert!(sim.anomalies().is_empty());
    assert_eq!(sim.total_requests(), 0);
    // Tokens survive a reset.
    let response = client
        .get(format!("{}/v1/products", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() -> TestResult {
    let (sim, client) = start().await?;
    let response = client
        .get(format!("{}/nope", sim.base_url()))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await?, "not_found");
    let response = client
        .delete(format!("{}/v1/products", sim.base_url()))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(response).await?, "method_not_allowed");
    Ok(())
}

#[tokio::test]
async fn shutdown_stops_the_server() -> TestResult {
    let (sim, client) = start().await?;
    token(&sim, &client).await?;
    sim.shutdown();
    let fresh = Client::new();
    let mut refused = false;
    for _ in 0..50 {
        if fresh
            .get(format!("{}/_sim/state", sim.base_url()))
            .send()
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "server still answering after shutdown");
    Ok(())
}
