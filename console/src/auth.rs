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
    // Checked before the password, which costs the server far more than the refusal.
    if let Some(wait) = app.throttle.wait(name, ip, Instant::now()) {
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
        return r;
    }
    // Each check costs tens of milliseconds and 19 MiB by design: a few at a time, so
    // a flood of sign-ins cannot take the console's memory or its database pool.
    let Ok(_turn) = app.sign_ins.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    };
    match app
        .store
        .sign_in(name, &c.password, app.settings.session_ttl)
        .await
    {
        Ok(Some((token, session))) => {
            app.throttle.succeeded(name);
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
    // Back to the page the choice was made on (this console's own pages only).
    let back = headers
        .get(REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.split_once("://"))
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .filter(|p| p.starts_with('/') && !p.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    Redirect::to(&back).into_response()
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
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
