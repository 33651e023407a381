//! `skeelo-console`: the operators' web console. Server-rendered pages (askama
//! templates, no front-end build, usable without JavaScript) over the same database
//! and broker as the fleet. It never originates lifecycle events — the ERP is the
//! source of truth — it reads, explains and requeues.
//!
//! Access: accounts from `skeelo-ops user` (Argon2id), two roles (viewer, operator),
//! a session cookie that is `Secure`, `HttpOnly` and `SameSite=Strict`, and an
//! anti-forgery token in every form, checked on every action. Personal data is masked
//! everywhere unless an operator reveals it, and every action and reveal is in the
//! audit trail. A search by CPF is a POST, so the number never reaches a URL or a log.

pub mod access;
mod auth;
mod i18n;
mod jobs;
mod pages;
mod pulse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use skeelo_partner::api::SkeeloClient;
use skeelo_store::Store;
use tokio_util::sync::CancellationToken;

/// What the console needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL`: the fleet's database.
    pub database_url: String,
    /// `AMQP_URL`: the fleet's broker, for requeues.
    pub amqp_url: String,
    /// How long a session lasts.
    pub session_ttl: Duration,
    /// How long purged (archived) dead letters stay restorable, in days.
    pub retention_days: u32,
    /// Skeelo, asked live on a contract's page.
    pub partner: skeelo_explain::PartnerArgs,
    /// The reverse proxies in front of the console: their `X-Forwarded-For` (the
    /// client the sign-in throttle counts) and `X-Forwarded-Host` (what the Origin
    /// check compares with) are believed.
    pub trusted_proxies: Vec<access::Net>,
    /// Trusted sign-in proxy mode (SSO), off unless set: the header in which the
    /// proxy names the person (an account made with `--no-password`); password
    /// sign-in is off then.
    pub trusted_header: Option<axum::http::HeaderName>,
    /// The sign-in proxies whose `trusted_header` is believed (required with it):
    /// nobody else may name a person, not even the other proxies.
    pub sign_in_proxies: Vec<access::Net>,
}

pub(crate) struct App {
    pub(crate) settings: Settings,
    pub(crate) store: Store,
    /// Skeelo, paced with the fleet, in the lane of calls made for no event.
    pub(crate) skeelo: SkeeloClient,
    /// Sign-ins checked at once.
    pub(crate) sign_ins: tokio::sync::Semaphore,
    /// Requeues running or recently ended, for their progress pages.
    pub(crate) jobs: jobs::Jobs,
    /// The partner-rate ledger, sampled.
    pub(crate) rate: Arc<pulse::Samples>,
    /// Failed sign-ins, by name and address.
    pub(crate) throttle: access::Throttle,
    /// Work that outlives its request (requeues): waited for when the console stops.
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the console stops: a requeue ends at its next letter.
    pub(crate) stop: CancellationToken,
}

/// The console's routes.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/dead", get(pages::dead::groups))
        .route("/dead/{id}", get(pages::dead::one))
        .route("/dead/{id}/reveal", post(pages::dead::reveal))
        .route("/dead/confirm", post(pages::dead::confirm))
        .route("/dead/act", post(pages::dead::act))
        .route("/dead/jobs/{id}", get(pages::dead::job))
        .route("/subscribers", get(pages::subscribers::list))
        .route("/subscribers/search", post(pages::subscribers::search))
        .route("/contract/{id}", get(pages::contract::page))
        .route("/contract/{id}/reveal", post(pages::contract::reveal))
        .route("/audit", get(pages::audit::page))
        .route("/style.css", get(pages::style))
        .route("/account/lang", post(auth::choose_lang))
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            access::trusted_proxy,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        // Every form of the console is small; nothing larger is read.
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

/// What every answer carries, and what every form must come from. Pages hold
/// personal data (masked, or revealed on request): not cached, not framed, no referrer
/// sent to other sites (`same-origin`: with `no-referrer` a browser sends its own forms
/// with `Origin: null`), nothing loaded from elsewhere. A POST whose `Origin` is another site's is
/// refused before it reaches a handler (the session's token guards the rest; this also
/// covers the sign-in form, which has no session yet).
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        // Behind a trusted proxy that rewrites Host, the host the browser used is
        // the one it forwards.
        let from_proxy = access::peer(request.extensions()).is_some_and(|p| {
            access::among(&app.settings.trusted_proxies, p)
                || access::among(&app.settings.sign_in_proxies, p)
        });
        // A chain of proxies appends: the first is the host the browser used.
        let forwarded = from_proxy
            .then(|| request.headers().get("x-forwarded-host"))
            .flatten()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split(',').next())
            .map(|h| h.trim().to_string());
        let host = forwarded.or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        if let (Some(origin), Some(host)) = (origin, host) {
            let same = origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest == host);
            if !same {
                tracing::warn!("a form posted from another site was refused");
                return (
                    StatusCode::FORBIDDEN,
                    "forms are accepted from this console only",
                )
                    .into_response();
            }
        }
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Serves the console on `listener` until `stop`.
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database_url, 8)?;
    store.migrate().await?;
    // A page answers in seconds: a call waits 5 s at most.
    let skeelo = settings.partner.client(&store, Duration::from_secs(5))?;
    let rate = Arc::new(pulse::Samples::default());
    let tasks = tokio_util::task::TaskTracker::new();
    tokio::spawn(pulse::sample(store.clone(), rate.clone(), stop.clone()));
    let app = router(Arc::new(App {
        settings,
        store,
        skeelo,
        sign_ins: tokio::sync::Semaphore::new(2),
        jobs: jobs::Jobs::default(),
        rate,
        throttle: access::Throttle::default(),
        tasks: tasks.clone(),
        stop: stop.clone(),
    }));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await?;
    // A requeue under way stops at its next letter (the stop token) and writes its
    // audit line for what it sent.
    tasks.close();
    if tokio::time::timeout(STOP_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "a requeue was still running when the console stopped: its letters published so far are requeued, the rest stay parked"
        );
    }
    Ok(())
}

/// How long a stopping console waits for requeues under way.
const STOP_GRACE: Duration = Duration::from_secs(25);

/// Where a console listens by default: this machine only (put TLS in front of it to
/// serve others; its cookies are `Secure`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8088";

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}
