//! Signing in and out, the session every page needs, and the checks every action
//! makes: an anti-forgery token from the session's own forms, and the operator role.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::header::{ACCEPT_LANGUAGE, COOKIE, REFERER, RETRY_AFTER, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use skeelo_store::accounts::{Role, Session};

use crate::access::{client_ip, Vouched};
use crate::i18n::{Lang, Words};
use crate::pages::{render, Page};
use crate::App;

/// The session cookie. `__Host-`: the browser takes it only from this host, Secure,
/// for the whole path, so a sibling subdomain cannot plant one.
pub(crate) const COOKIE_NAME: &str = "__Host-skeelo_console";

/// The `Set-Cookie` value of a new session.
pub(crate) fn session_cookie(token: &str, ttl: std::time::Duration) -> String {
    format!(
        "{COOKIE_NAME}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        ttl.as_secs()
    )
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn browser_lang(headers: &HeaderMap) -> Lang {
    Lang::pick(
        None,
        headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()),
    )
}

/// A signed-in request: its session and language.
pub(crate) struct Signed {
    pub(crate) session: Session,
    pub(crate) lang: Lang,
    token: String,
    /// Signed in by the trusted sign-in proxy: signing out is the proxy's.
    through_proxy: bool,
}

impl Signed {
    /// What every page shows of who is signed in.
    pub(crate) fn page(&self) -> Page {
        Page {
            t: self.lang.words(),
            user: self.session.account.name.clone(),
            operator: self.session.account.role == Role::Operator,
            csrf: self.session.csrf.clone(),
            lang_choice: self.session.account.lang.clone().unwrap_or_default(),
            through_proxy: self.through_proxy,
        }
    }

    /// The words.
    pub(crate) fn t(&self) -> &'static Words {
        self.lang.words()
    }

    /// The refusal to answer with when the form did not come from this session's own
    /// pages (its anti-forgery token); `None` when it did.
    pub(crate) fn forged(&self, csrf: &str) -> Option<Response> {
        if !csrf.is_empty() && constant_time_eq(csrf.as_bytes(), self.session.csrf.as_bytes()) {
            None
        } else {
            tracing::warn!(user = %self.session.account.name, "a form without this session's anti-forgery token was refused");
            Some(crate::pages::refusal(
                StatusCode::FORBIDDEN,
                self.page(),
                self.t().csrf_refused,
            ))
        }
    }

    /// The refusal to answer with when the account may not act (requeue, reveal);
    /// `None` for an operator.
    pub(crate) fn not_operator(&self) -> Option<Response> {
        if self.session.account.role == Role::Operator {
            None
        } else {
            tracing::warn!(user = %self.session.account.name, "an action by a viewer was refused");
            Some(crate::pages::refusal(
                StatusCode::FORBIDDEN,
                self.page(),
                self.t().forbidden,
            ))
        }
    }

    /// Either refusal, for an operator's action.
    pub(crate) fn refused_action(&self, csrf: &str) -> Option<Response> {
        self.forged(csrf).or_else(|| self.not_operator())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<Arc<App>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        let browser = parts
            .headers
            .get(ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(v) = parts.extensions.get::<Vouched>() {
            return Ok(Signed {
                lang: Lang::pick(v.session.account.lang.as_deref(), browser.as_deref()),
                session: v.session.clone(),
                token: v.token.clone(),
                through_proxy: true,
            });
        }
        let to_login = || Redirect::to("/login").into_response();
        let Some(token) = cookie(&parts.headers, COOKIE_NAME) else {
            return Err(to_login());
        };
        match app.store.session(&token).await {
            Ok(Some(session)) => {
                let lang = Lang::pick(session.account.lang.as_deref(), browser.as_deref());
                Ok(Signed {
                    session,
                    lang,
                    token,
                    through_proxy: false,
                })
            }
            Ok(None) => Err(to_login()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the session");
                Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database does not answer",
                )
                    .into_response())
            }
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    t: &'static Words,
    failed: bool,
    /// Too many failed sign-ins: seconds to wait.
    wait_s: Option<u64>,
}

pub(crate) async fn login_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.settings.trusted_header.is_some() {
        // The sign-in proxy signs people in.
        return Redirect::to("/").into_response();
    }
    render(LoginPage {
        t: browser_lang(&headers).words(),
        failed: false,
        wait_s: None,
    })
}

/// How long a sign-in waits for its turn to be checked.
const SIGN_IN_QUEUE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Deserialize)]
pub(crate) struct Credentials {
    name: String,
    password: String,
}

pub(crate) async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(c): Form<Credentials>,
) -> Response {
    if app.settings.trusted_header.is_some() {
        return (
            StatusCode::FORBIDDEN,
            "password sign-in is off: this console signs people in through its sign-in proxy",
        )
            .into_response();
    }
    let ip = client_ip(Some(peer.ip()), &headers, &app.settings.trusted_proxies);
    let name = c.name.trim();
    let held = |wait: std::time::Duration| {
        tracing::warn!(client = ?ip, "a sign-in was refused: too many failures");
        let mut r = render(LoginPage {
            t: browser_lang(&headers).words(),
            failed: false,
            wait_s: Some(wait.as_secs().max(1)),
        });
        *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
        r
    };
    if name.chars().count() > 64 || c.password.len() > 1024 {
        // Not a sign-in: counted against the address only (a name is not made up of
        // whatever was sent), and held like any other failure.
        if let Some(wait) = app.throttle.wait("", ip, Instant::now()) {
            return held(wait);
        }
        app.throttle.failed_address(ip, Instant::now());
        return (
            StatusCode::BAD_REQUEST,
            "the name or the password is too long",
        )
            .into_response();
    }
    // Checked before the password, which costs the server far more than the refusal.
    if let Some(wait) = app.throttle.wait(name, ip, Instant::now()) {
        return held(wait);
    }
    // Each check costs tens of milliseconds and 19 MiB by design: a few at a time, so
    // a flood of sign-ins cannot take the console's memory or its database pool; a
    // sign-in that cannot get its turn soon is told to come back.
    let turn = tokio::time::timeout(SIGN_IN_QUEUE, app.sign_ins.acquire()).await;
    let Ok(Ok(_turn)) = turn else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many sign-ins at once; try again in a moment",
        )
            .into_response();
    };
    // Checked again with the turn in hand: sign-ins sent all at once all passed the
    // first check before any of them failed.
    if let Some(wait) = app.throttle.wait(name, ip, Instant::now()) {
        return held(wait);
    }
    match app
        .store
        .sign_in(name, &c.password, app.settings.session_ttl)
        .await
    {
        Ok(Some((token, session))) => {
            app.throttle.succeeded(name, ip);
            tracing::info!(user = %session.account.name, role = session.account.role.as_str(), "signed in");
            let cookie = session_cookie(&token, app.settings.session_ttl);
            let mut response = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(SET_COOKIE, v);
            }
            response
        }
        Ok(None) => {
            app.throttle.failed(name, ip, Instant::now());
            tracing::warn!(client = ?ip, "a sign-in was refused (wrong name or password)");
            let mut r = render(LoginPage {
                t: browser_lang(&headers).words(),
                failed: true,
                wait_s: None,
            });
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot sign in: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer",
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct Csrf {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn logout(
    State(app): State<Arc<App>>,
    signed: Signed,
    Form(f): Form<Csrf>,
) -> Response {
    if let Some(r) = signed.forged(&f.csrf) {
        return r;
    }
    if let Err(e) = app.store.sign_out(&signed.token).await {
        tracing::warn!(error = %e, "cannot end the session");
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static(
            "__Host-skeelo_console=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[derive(Deserialize)]
pub(crate) struct LangChoice {
    #[serde(default)]
    csrf: String,
    /// `en`, `pt-BR`, or empty for the browser's.
    #[serde(default)]
    lang: String,
}

/// The signed-in person chooses the language of their pages (kept on the account).
pub(crate) async fn choose_lang(
    State(app): State<Arc<App>>,
    signed: Signed,
    headers: HeaderMap,
    Form(f): Form<LangChoice>,
) -> Response {
    if let Some(r) = signed.forged(&f.csrf) {
        return r;
    }
    let lang = match f.lang.as_str() {
        "en" => Some("en"),
        "pt-BR" => Some("pt-BR"),
        "" => None,
        _ => {
            return (StatusCode::BAD_REQUEST, "the languages are en and pt-BR").into_response();
        }
    };
    if let Err(e) = app
        .store
        .set_account_lang(&signed.session.account.name, lang)
        .await
    {
        return crate::pages::unavailable(e);
    }
    Redirect::to(&back_to(headers.get(REFERER).and_then(|v| v.to_str().ok()))).into_response()
}

/// The page to go back to after a choice: the one it was made on, as its `Referer`
/// names it — a path of this console only, and for a page that answered a form
/// (reachable only by POST) the page the form came from.
fn back_to(referer: Option<&str>) -> String {
    let path = referer
        .and_then(|r| r.split_once("://"))
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .filter(|p| {
            p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control)
        });
    let Some(path) = path else {
        return "/".into();
    };
    let bare = path.split(['?', '#']).next().unwrap_or("/");
    if bare == "/dead/confirm" || bare == "/dead/act" {
        return "/dead".into();
    }
    if bare == "/subscribers/search" {
        return "/subscribers".into();
    }
    if let Some(letter) = bare.strip_suffix("/reveal") {
        return letter.to_string();
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; __Host-skeelo_console=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE_NAME).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn a_language_choice_goes_back_to_a_page_of_this_console() {
        assert_eq!(
            back_to(Some("https://c.example/dead?class=x")),
            "/dead?class=x"
        );
        assert_eq!(back_to(Some("https://c.example/dead/confirm")), "/dead");
        assert_eq!(back_to(Some("https://c.example/dead/act")), "/dead");
        assert_eq!(
            back_to(Some("https://c.example/dead/12/reveal")),
            "/dead/12"
        );
        assert_eq!(
            back_to(Some("https://c.example/subscribers/search")),
            "/subscribers"
        );
        for elsewhere in [
            "https://c.example//evil.example/",
            "https://c.example/\\evil.example",
            "https://c.example/a\tb",
            "not a url",
        ] {
            assert_eq!(back_to(Some(elsewhere)), "/", "{elsewhere}");
        }
        assert_eq!(back_to(None), "/");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
