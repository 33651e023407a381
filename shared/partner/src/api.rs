//! The Skeelo partner API (CONTRACT §4): the one place that knows its paths, bodies and
//! status codes, so the real API can replace the model here and nowhere else.
//!
//! The client owns what every call needs: an OAuth token fetched once and shared (with
//! one refresh when Skeelo answers 401), the partner rate (every call waits its turn),
//! and a shared pause when Skeelo answers 429 (the whole process waits `Retry-After`,
//! and a throttled call is sent again without counting as a failure). Errors say what
//! the caller must do: [`SkeeloError::is_transient`] means "try again later".

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::answer::{self, Answer};
use crate::pacer::Pacer;
use crate::token::{Token, Tokens};
use skeelo_domain::event::{Email, Phone, Sku};
use skeelo_domain::lifecycle::{Changes, Held, Profile, Status};
use skeelo_telemetry::metrics::Metrics;

/// Partner credentials. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    /// `SKEELO_CLIENT_ID`.
    pub client_id: String,
    /// `SKEELO_CLIENT_SECRET`.
    pub client_secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish()
    }
}

/// How to reach Skeelo.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The supplier's *Servidor*, without a trailing slash.
    pub base_url: String,
    /// Partner credentials.
    pub credentials: Credentials,
    /// Limit for one request, connect included.
    pub timeout: Duration,
}

/// Why a call failed, sorted by what the caller must do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SkeeloError {
    /// Skeelo is down or unreachable (connection error, timeout, 502/503/504, the token
    /// endpoint failing, credentials refused): counts toward outage mode.
    #[error("Skeelo is unavailable: {0}")]
    Unavailable(String),
    /// Skeelo failed this request (500, 408): the same call may work
    /// later, but it says nothing about Skeelo as a whole.
    #[error("Skeelo failed: {0}")]
    Transient(String),
    /// Skeelo kept answering 429 past every `Retry-After`: the partner rate, not a
    /// failure of the event (costs no retry attempt).
    #[error("Skeelo kept throttling (429) this process")]
    Throttled,
    /// Skeelo understood and refused (4xx other than those handled here): sending the
    /// same request again cannot work. (Its message is kept but not displayed: it may
    /// echo personal data.)
    #[error("Skeelo refused the request ({status} {code})")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Skeelo's error code, e.g. `unknown_product`.
        code: String,
        /// Skeelo's message.
        message: String,
    },
}

impl SkeeloError {
    /// `true` when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, SkeeloError::Rejected { .. })
    }

    /// What the failure means for the event (see [`crate::policy`]).
    pub fn failure(&self) -> skeelo_domain::policy::Failure {
        use skeelo_domain::policy::Failure;
        match self {
            SkeeloError::Unavailable(_) => Failure::PartnerUnavailable,
            SkeeloError::Transient(_) => Failure::PartnerFailed,
            SkeeloError::Throttled => Failure::PartnerThrottled,
            SkeeloError::Rejected { .. } => Failure::PartnerRefused,
        }
    }

    /// A short, bounded class for dead letters and metrics.
    pub fn class(&self) -> String {
        match self {
            SkeeloError::Unavailable(_) => "unavailable".into(),
            SkeeloError::Transient(_) => "transient".into(),
            SkeeloError::Throttled => "throttled".into(),
            SkeeloError::Rejected { status, code, .. } => format!("http_{status}_{code}"),
        }
    }
}

pub use skeelo_domain::product::Product;

/// A subscription as Skeelo returns it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Subscription {
    /// Skeelo's own id.
    #[serde(default, deserialize_with = "crate::lenient::string")]
    pub id: String,
    /// Our contract id.
    #[serde(deserialize_with = "crate::lenient::string")]
    pub external_id: String,
    /// CPF/CNPJ digits.
    #[serde(default, deserialize_with = "crate::lenient::string")]
    pub document: String,
    /// Full name.
    #[serde(default, deserialize_with = "crate::lenient::string")]
    pub name: String,
    /// Contact address.
    #[serde(default, deserialize_with = "crate::lenient::string")]
    pub email: String,
    /// Contact number.
    #[serde(default, deserialize_with = "crate::lenient::opt_string")]
    pub phone: Option<String>,
    /// SKUs.
    #[serde(default, deserialize_with = "crate::lenient::strings")]
    pub products: Vec<String>,
    /// `active`, `inactive` or `cancelled`.
    #[serde(deserialize_with = "crate::lenient::string")]
    pub status: String,
    /// Last change at Skeelo.
    #[serde(default, deserialize_with = "crate::lenient::opt_string")]
    pub updated_at: Option<String>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("external_id", &self.external_id)
            .field("status", &self.status)
            .field("products", &self.products)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// What the lifecycle rules compare against. Values Skeelo stored are taken as they
    /// are; an unknown status reads as inactive, which the next plan corrects.
    pub fn held(&self) -> Held {
        let mut products: Vec<Sku> = self.products.iter().map(|p| Sku::from_partner(p)).collect();
        products.sort();
        products.dedup();
        Held {
            profile: Profile {
                name: self.name.clone(),
                email: Email::from_partner(&self.email),
                phone: self.phone.as_deref().map(Phone::from_partner),
                products,
            },
            status: Status::from_name(&self.status).unwrap_or(Status::Inactive),
        }
    }
}

/// What `POST /v1/subscriptions` needs.
#[derive(Clone)]
pub struct NewSubscription<'a> {
    /// Our contract id.
    pub external_id: &'a str,
    /// CPF/CNPJ digits.
    pub document: &'a str,
    /// The profile to create.
    pub profile: &'a Profile,
}

/// A client of the Skeelo partner API. Cheap to clone; clones share token, rate and pause.
#[derive(Clone)]
pub struct SkeeloClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
    tokens: Tokens<SkeeloError>,
    pacer: Pacer,
    /// The least pause after a 429, shared by this process's calls.
    backoff: std::sync::Mutex<crate::backoff::Backoff>,
    metrics: Metrics,
}

tokio::task_local! {
    /// Requests sent and not answered yet, counted for whoever runs calls under
    /// [`counting_sent`].
    static SENT: Arc<AtomicUsize>;
}

/// Runs `calls`, counting in `sent` the requests that left and were not answered. A
/// caller that drops `calls` (its time ran out) learns from `sent` whether one may
/// still land at Skeelo (non-zero), or whether it was only waiting for its turn in
/// the partner rate (zero: nothing of it can land).
pub async fn counting_sent<F: std::future::Future>(sent: Arc<AtomicUsize>, calls: F) -> F::Output {
    SENT.scope(sent, calls).await
}

/// How long one call sits out 429s before it gives up (as `Throttled`, which costs the
/// event nothing): long enough to ride a burst, short enough not to hold a database
/// connection and the contract's lock for minutes.
const MAX_THROTTLED_WAIT: Duration = Duration::from_secs(15);
/// Turns a call gives up as stale before it goes anyway.
const MAX_STALE_TURNS: usize = 3;
/// Longest token lifetime believed (guards the arithmetic against absurd answers).
const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);
/// The longest `Retry-After` honoured as given (a larger one is capped, not ignored).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Set when the call it belongs to is given up (dropped), under the lock `leave`
/// counts a request under.
#[derive(Default)]
struct GivenUp(Arc<std::sync::Mutex<bool>>);

impl Drop for GivenUp {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

/// Adds the call's timing (`slot,sent` in microseconds since the Unix epoch) as
/// a header, for a benchmark's partner fake to tell where a call's lateness comes
/// from (docs/performance.md, "Where a call's lateness comes from"). Only in builds
/// with the `slot-stamps` feature: a real partner has no use for it.
#[cfg(feature = "slot-stamps")]
fn stamped(request: reqwest::RequestBuilder, turn: &crate::pacer::Turn) -> reqwest::RequestBuilder {
    let Some(slot) = turn.slot() else {
        return request;
    };
    let (now, wall) = (Instant::now(), std::time::SystemTime::now());
    let epoch_us = |at: Instant| {
        let at = match at.checked_duration_since(now) {
            Some(ahead) => wall.checked_add(ahead),
            None => wall.checked_sub(now.duration_since(at)),
        };
        at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros())
    };
    request.header(
        "x-skeelo-slot-stamps",
        format!("{},{}", epoch_us(slot), epoch_us(now)),
    )
}

impl SkeeloClient {
    /// Builds a client whose every request waits for a turn from `pacer`; fails only
    /// when the TLS backend cannot start.
    pub fn new(
        config: ClientConfig,
        metrics: Metrics,
        pacer: Pacer,
    ) -> Result<SkeeloClient, SkeeloError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("skeelo-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SkeeloError::Transient(format!("cannot build the HTTP client: {e}")))?;
        Ok(SkeeloClient {
            inner: Arc::new(Inner {
                http,
                base: config.base_url.trim_end_matches('/').to_string(),
                credentials: config.credentials,
                tokens: Tokens::new(),
                pacer,
                backoff: std::sync::Mutex::new(crate::backoff::Backoff::default()),
                metrics,
            }),
        })
    }

    /// `GET /v1/products`: the catalogue.
    pub async fn products(&self) -> Result<Vec<Product>, SkeeloError> {
        #[derive(Deserialize)]
        struct Catalogue {
            products: Vec<Product>,
        }
        let (status, body) = self
            .call("list_products", Method::GET, "/v1/products".into(), None)
            .await?;
        match status {
            StatusCode::OK => parse::<Catalogue>("list_products", body).map(|c| c.products),
            _ => Err(refusal(status, &body.value)),
        }
    }

    /// `POST /v1/subscriptions`. A `409 already_exists` means an earlier attempt got
    /// through (a crash, a lost answer): the existing subscription is adopted, not failed.
    pub async fn create(&self, new: &NewSubscription<'_>) -> Result<Subscription, SkeeloError> {
        let body = serde_json::json!({
            "external_id": new.external_id,
            "document": new.document,
            "name": new.profile.name,
            "email": new.profile.email.as_str(),
            "phone": new.profile.phone.as_ref().map(Phone::as_str),
            "products": new.profile.products,
        });
        let (status, answer) = self
            .call(
                "create_subscription",
                Method::POST,
                "/v1/subscriptions".into(),
                Some(body),
            )
            .await?;
        match status {
            StatusCode::CREATED | StatusCode::OK => subscription("create_subscription", answer),
            StatusCode::CONFLICT if error_code(&answer.value) == "already_exists" => {
                tracing::info!(
                    contract_id = new.external_id,
                    "subscription already existed at Skeelo; adopting it"
                );
                self.get(new.external_id).await?.ok_or_else(|| {
                    SkeeloError::Transient(
                        "Skeelo said the subscription exists but cannot find it".into(),
                    )
                })
            }
            _ => Err(refusal(status, &answer.value)),
        }
    }

    /// `GET /v1/subscriptions/{external_id}`; `None` when Skeelo does not hold it.
    pub async fn get(&self, external_id: &str) -> Result<Option<Subscription>, SkeeloError> {
        let path = format!("/v1/subscriptions/{}", path_segment(external_id));
        let (status, body) = self
            .call("get_subscription", Method::GET, path, None)
            .await?;
        match status {
            StatusCode::OK => subscription("get_subscription", body).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(refusal(status, &body.value)),
        }
    }

    /// `PATCH /v1/subscriptions/{external_id}`. `Ok(None)` when Skeelo no longer holds
    /// it; a cancelled subscription is returned as Skeelo reports it, not as an error.
    pub async fn update(
        &self,
        external_id: &str,
        changes: &Changes,
    ) -> Result<Option<Subscription>, SkeeloError> {
        let mut body = serde_json::Map::new();
        if let Some(n) = &changes.name {
            body.insert("name".into(), Value::from(n.as_str()));
        }
        if let Some(e) = &changes.email {
            body.insert("email".into(), Value::from(e.as_str()));
        }
        if let Some(p) = &changes.phone {
            body.insert(
                "phone".into(),
                p.as_ref().map_or(Value::Null, |p| Value::from(p.as_str())),
            );
        }
        if let Some(p) = &changes.products {
            let skus: Vec<&str> = p.iter().map(Sku::as_str).collect();
            body.insert("products".into(), Value::from(skus));
        }
        let path = format!("/v1/subscriptions/{}", path_segment(external_id));
        let (status, answer) = self
            .call(
                "update_subscription",
                Method::PATCH,
                path,
                Some(Value::Object(body)),
            )
            .await?;
        self.changed("update_subscription", external_id, status, answer)
            .await
    }

    /// `PUT /v1/subscriptions/{external_id}/status`. Same answers as [`Self::update`].
    pub async fn set_status(
        &self,
        external_id: &str,
        to: Status,
    ) -> Result<Option<Subscription>, SkeeloError> {
        let path = format!("/v1/subscriptions/{}/status", path_segment(external_id));
        let body = serde_json::json!({ "status": to.as_str() });
        let (status, answer) = self
            .call("set_status", Method::PUT, path, Some(body))
            .await?;
        self.changed("set_status", external_id, status, answer)
            .await
    }

    async fn changed(
        &self,
        operation: &'static str,
        external_id: &str,
        status: StatusCode,
        answer: Answer,
    ) -> Result<Option<Subscription>, SkeeloError> {
        match status {
            StatusCode::OK => subscription(operation, answer).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::CONFLICT if error_code(&answer.value) == "subscription_cancelled" => {
                tracing::warn!(
                    contract_id = external_id,
                    operation,
                    "Skeelo holds this subscription as cancelled already"
                );
                self.get(external_id).await
            }
            _ => Err(refusal(status, &answer.value)),
        }
    }

    /// Sends one request: waits for the rate and any shared pause, adds the token,
    /// refreshes it once on 401, and sits out 429s without failing.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<(StatusCode, Answer), SkeeloError> {
        let mut refreshed = false;
        let started = Instant::now();
        loop {
            let token = self.token().await?;
            let mut request = self
                .inner
                .http
                .request(method.clone(), format!("{}{}", self.inner.base, path))
                .bearer_auth(&token);
            if let Some(b) = &body {
                request = request.json(b);
            }
            let (status, answer) = self.send(operation, request).await?;
            match status {
                StatusCode::UNAUTHORIZED if !refreshed => {
                    refreshed = true;
                    self.inner.tokens.forget(&token);
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(SkeeloError::Unavailable(
                        "Skeelo refused a freshly issued token".into(),
                    ))
                }
                StatusCode::TOO_MANY_REQUESTS if started.elapsed() < MAX_THROTTLED_WAIT => {}
                StatusCode::TOO_MANY_REQUESTS => return Err(SkeeloError::Throttled),
                StatusCode::FORBIDDEN => {
                    tracing::error!(
                        operation,
                        "Skeelo answered 403: check the partner account's permissions"
                    );
                    return Err(SkeeloError::Unavailable(format!(
                        "{operation} answered 403"
                    )));
                }
                StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_EARLY => {
                    return Err(SkeeloError::Transient(format!(
                        "{operation} answered {}",
                        status.as_u16()
                    )))
                }
                StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT => {
                    return Err(SkeeloError::Unavailable(format!(
                        "{operation} answered {}",
                        status.as_u16()
                    )))
                }
                s if s.is_server_error() => {
                    return Err(SkeeloError::Transient(format!(
                        "{operation} answered {}",
                        s.as_u16()
                    )))
                }
                _ => return Ok((status, answer)),
            }
        }
    }

    /// One HTTP exchange, paced and measured. A 429 sets the shared pause.
    async fn send(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Answer), SkeeloError> {
        // The turn is waited for and the request sent on the partner's own thread,
        // where neither waits for this process's other work (see `crate::wire`): the
        // call's lane and its count of requests sent go along.
        let lane = crate::pacer::LANE
            .try_with(|l| *l)
            .unwrap_or(crate::pacer::OTHER);
        let sent = SENT.try_with(Arc::clone).ok();
        // Given up when this future is dropped (its round ran out of time): the task
        // on the other thread, which an abort may not stop before its next await,
        // then neither counts nor sends the request (see `leave`).
        let given_up = GivenUp::default();
        let client = self.clone();
        let flag = given_up.0.clone();
        let leaving =
            crate::pacer::LANE.scope(lane, async move { client.leave(request, sent, flag).await });
        let left = crate::wire::run(leaving).await;
        drop(given_up);
        let (started, result) = match left {
            Ok(Some(left)) => left,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled otherwise (the partner's runtime is gone; a call is given up
            // only once this future is dropped, so never here): had the request left,
            // it stays counted as sent.
            Ok(None) | Err(_) => {
                self.count(operation, "error");
                return Err(SkeeloError::Unavailable(format!(
                    "{operation}: error: the call's task ended before it was answered"
                )));
            }
        };
        let timer = self.inner.metrics.api_timer(operation);
        let may_land = match &result {
            Err(e) => !e.is_connect(),
            Ok(r) => matches!(
                r.status(),
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
            ),
        };
        if !may_land {
            let _ = SENT.try_with(|n| n.fetch_sub(1, Ordering::SeqCst));
        }
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                let label = if e.is_timeout() { "timeout" } else { "error" };
                self.count(operation, label);
                timer.observe(started.elapsed().as_secs_f64());
                return Err(SkeeloError::Unavailable(format!(
                    "{operation}: {label}: {}",
                    without_url(&e)
                )));
            }
        };
        let status = response.status();
        self.count(operation, status.as_str());
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Never sooner than the floor, whatever Retry-After says (0, a past date,
            // nothing at all): a partner that keeps throttling is not called faster.
            let asked = retry_after(response.headers());
            let wait = match self.inner.backoff.lock() {
                Ok(mut b) => b.throttled(Instant::now(), asked),
                Err(_) => crate::backoff::MAX_FLOOR,
            };
            self.pause_for(wait);
            self.inner.metrics.throttled.inc();
        } else if let Ok(mut b) = self.inner.backoff.lock() {
            b.answered();
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response.bytes().await;
        timer.observe(started.elapsed().as_secs_f64());
        let bytes = bytes.map_err(|e| {
            SkeeloError::Unavailable(format!(
                "{operation}: reading the answer: {}",
                without_url(&e)
            ))
        })?;
        Ok((
            status,
            answer::read(status, content_type.as_deref(), &bytes),
        ))
    }

    /// Waits for the call's turn and sends the request: when it left, and what came of
    /// it (`None`: the caller gave the call up first, and nothing was sent).
    async fn leave(
        &self,
        request: reqwest::RequestBuilder,
        sent: Option<Arc<AtomicUsize>>,
        given_up: Arc<std::sync::Mutex<bool>>,
    ) -> Option<(Instant, reqwest::Result<reqwest::Response>)> {
        // A turn that went stale is given up for another, a few times at most: on a
        // process too busy to send on time, calls go late rather than not at all
        // (the margin grows by itself if the partner then throttles).
        let mut turn = self.wait_turn(false).await;
        for _ in 0..MAX_STALE_TURNS {
            if !turn.stale() {
                break;
            }
            self.inner.metrics.turns_stale.inc();
            tracing::debug!("a partner-rate turn went stale before its call left");
            turn = self.wait_turn(true).await;
        }
        #[cfg(feature = "slot-stamps")]
        let request = stamped(request, &turn);
        // Counted down only when Skeelo's own answer came, or when the request never
        // left (no connection): a request dropped on the way, timed out, cut, or answered
        // by a gateway that gave up (502, 504) stays counted, since Skeelo may still act
        // on it.
        {
            // Counted under the lock the caller takes to give the call up: either the
            // caller, having given up, reads the count with this request in it, or
            // the request never leaves.
            let given_up = given_up.lock().unwrap_or_else(|p| p.into_inner());
            if *given_up {
                return None;
            }
            if let Some(n) = &sent {
                n.fetch_add(1, Ordering::SeqCst);
            }
        }
        Some((Instant::now(), request.send().await))
    }

    fn count(&self, operation: &str, status: &str) {
        self.inner
            .metrics
            .api_requests
            .with_label_values(&[operation, status])
            .inc();
    }

    /// Waits for this call's turn in the partner rate (and any 429 pause).
    async fn wait_turn(&self, again: bool) -> crate::pacer::Turn {
        let started = Instant::now();
        let turn = if again {
            self.inner.pacer.turn_again().await
        } else {
            self.inner.pacer.turn().await
        };
        let waited = started.elapsed().as_secs_f64();
        if waited > 0.0 {
            self.inner.metrics.rate_limit_wait.inc_by(waited);
        }
        if let Some(margin) = self.inner.pacer.margin() {
            self.inner.metrics.rate_margin.set(margin);
        }
        turn
    }

    fn pause_for(&self, wait: Duration) {
        self.inner.pacer.pause(wait.min(MAX_RETRY_AFTER));
    }

    /// The cached token, or a new one. One task fetches while the others wait for it.
    async fn token(&self) -> Result<String, SkeeloError> {
        self.inner.tokens.get(|| self.fetch_token()).await
    }

    async fn fetch_token(&self) -> Result<Token, SkeeloError> {
        /// As OAuth servers really answer: `expires_in` may be a string, or absent
        /// (five minutes are assumed); `token_type` and the rest are not needed.
        #[derive(Deserialize)]
        struct Granted {
            #[serde(deserialize_with = "crate::lenient::string")]
            access_token: String,
            #[serde(default, deserialize_with = "crate::lenient::opt_seconds")]
            expires_in: Option<u64>,
        }
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            form_escape(&self.inner.credentials.client_id),
            form_escape(&self.inner.credentials.client_secret)
        );
        let started = Instant::now();
        loop {
            let request = self
                .inner
                .http
                .post(format!("{}/oauth/token", self.inner.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.clone());
            let (status, body) = self.send("token", request).await?;
            match status {
                StatusCode::OK => {
                    let a: Granted = parse("token", body)?;
                    if a.access_token.trim().is_empty() {
                        return Err(SkeeloError::Unavailable(
                            "token: Skeelo granted an empty access_token".into(),
                        ));
                    }
                    self.inner.metrics.token_refreshes.inc();
                    // Refresh a little early, so a token never expires mid-request.
                    let ttl =
                        Duration::from_secs(a.expires_in.unwrap_or(300).max(1)).min(MAX_TOKEN_TTL);
                    let margin = (ttl / 10).min(Duration::from_secs(30));
                    return Ok(Token {
                        value: a.access_token,
                        expires: Instant::now() + ttl - margin,
                    });
                }
                StatusCode::TOO_MANY_REQUESTS if started.elapsed() < MAX_THROTTLED_WAIT => {}
                StatusCode::TOO_MANY_REQUESTS => return Err(SkeeloError::Throttled),
                StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST => {
                    tracing::error!(
                        client_id = %self.inner.credentials.client_id,
                        "Skeelo refused the partner credentials: check SKEELO_CLIENT_ID and SKEELO_CLIENT_SECRET"
                    );
                    // Unavailable on purpose: a credentials mistake must park nothing;
                    // events wait until the operator fixes the configuration.
                    return Err(SkeeloError::Unavailable(
                        "Skeelo refused the partner credentials".into(),
                    ));
                }
                s => {
                    return Err(SkeeloError::Unavailable(format!(
                        "token endpoint answered {}",
                        s.as_u16()
                    )))
                }
            }
        }
    }
}

fn subscription(operation: &str, answer: Answer) -> Result<Subscription, SkeeloError> {
    parse(operation, answer)
}

/// The answer as a `T`. One that cannot be read is a partner-wide failure: the same
/// request would get the same answer, and the fault is the partner's or the
/// configuration's, never the event's; it counts toward outage mode and parks nothing.
fn parse<T: serde::de::DeserializeOwned>(
    operation: &str,
    answer: Answer,
) -> Result<T, SkeeloError> {
    let unreadable = |why: String| {
        SkeeloError::Unavailable(format!("{operation}: unreadable answer from Skeelo: {why}"))
    };
    if let Some(why) = answer.unreadable {
        return Err(unreadable(why));
    }
    let looks = |e: serde_json::Error| answer.describe(&e.to_string());
    serde_json::from_value(answer.value.clone()).map_err(|e| unreadable(looks(e)))
}

fn error_code(body: &Value) -> &str {
    body.pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn refusal(status: StatusCode, body: &Value) -> SkeeloError {
    let message = body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let code = match error_code(body) {
        "" => format!("http_{}", status.as_u16()),
        c => c.to_string(),
    };
    if status.is_client_error() {
        SkeeloError::Rejected {
            status: status.as_u16(),
            code,
            message,
        }
    } else {
        SkeeloError::Transient(format!("unexpected answer {} ({code})", status.as_u16()))
    }
}

/// `Retry-After` in seconds or as an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let raw = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when =
        time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc2822).ok()?;
    let wait = when - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// Error text without the request URL (a URL may carry what a log must not).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<skeelo>");
    }
    text
}

/// Percent-encodes a path segment (contract ids are the ERP's, not ours).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn form_escape(s: &str) -> String {
    path_segment(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("48213"), "48213");
        assert_eq!(path_segment("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past");
    }

    #[test]
    fn errors_say_what_to_do() {
        let body = serde_json::json!({"error": {"code": "unknown_product", "message": "x"}});
        let e = refusal(StatusCode::UNPROCESSABLE_ENTITY, &body);
        assert!(!e.is_transient());
        assert!(e.to_string().contains("unknown_product"));
        assert!(refusal(StatusCode::BAD_GATEWAY, &Value::Null).is_transient());
    }

    /// A partner that answers every request (a token, an empty catalogue) and counts
    /// them, and a client of it paced by `pacer`.
    async fn counted_partner(
        pacer: crate::pacer::Pacer,
    ) -> (SkeeloClient, Arc<std::sync::atomic::AtomicU64>) {
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                if request.uri().path() == "/oauth/token" {
                    axum::Json(serde_json::json!({"access_token": "t", "expires_in": 300}))
                } else {
                    axum::Json(serde_json::json!({"products": []}))
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = SkeeloClient::new(
            ClientConfig {
                base_url: format!("http://{addr}"),
                credentials: Credentials {
                    client_id: "id".into(),
                    client_secret: "secret".into(),
                },
                timeout: Duration::from_secs(5),
            },
            Metrics::new().expect("metrics"),
            pacer,
        )
        .expect("a client");
        (client, seen)
    }

    /// A call given up while it waits for its turn never leaves, not even when its
    /// turn comes after (it waits on the partner's thread, which the caller's drop
    /// reaches only through the task's abort and the given-up flag), and the count
    /// of requests that may land says so.
    #[tokio::test]
    async fn a_call_given_up_before_its_turn_is_never_sent() {
        let (client, seen) = counted_partner(crate::pacer::Pacer::local(
            std::num::NonZeroU32::new(1).expect("non-zero"),
        ))
        .await;
        // At 1 call a second, the token takes the first slot and the catalogue waits
        // a second for the next: it is given up long before.
        let sent = Arc::new(AtomicUsize::new(0));
        let call = counting_sent(sent.clone(), client.products());
        assert!(
            tokio::time::timeout(Duration::from_millis(500), call)
                .await
                .is_err(),
            "the catalogue waited for its turn"
        );
        assert_eq!(sent.load(Ordering::SeqCst), 0, "nothing of it can land");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "only the token reached the partner"
        );
    }

    /// The flag alone: a call whose caller gave it up just as its turn came neither
    /// counts itself as sent nor leaves.
    #[tokio::test]
    async fn a_call_given_up_as_its_turn_comes_neither_counts_nor_leaves() {
        let (client, seen) = counted_partner(crate::pacer::Pacer::unlimited()).await;
        let sent = Arc::new(AtomicUsize::new(0));
        let request = client
            .inner
            .http
            .get(format!("{}/v1/products", client.inner.base));
        let left = client
            .leave(
                request,
                Some(sent.clone()),
                Arc::new(std::sync::Mutex::new(true)),
            )
            .await;
        assert!(left.is_none(), "nothing left");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 0);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn credentials_never_show_the_secret() {
        let c = Credentials {
            client_id: "id".into(),
            client_secret: "s3cr3t".into(),
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
