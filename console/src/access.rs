//! Who may reach the console and how often they may try: the trusted sign-in proxy
//! mode (SSO: a reverse proxy that authenticates people names them in a header; off
//! unless configured, and believed only from the proxies' own addresses), the client's
//! address behind those proxies, and the sign-in throttle (a name, or an address,
//! that keeps failing waits longer and longer before it may try again).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{HeaderValue, SET_COOKIE};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use skeelo_store::accounts::Session;

use crate::auth::{session_cookie, COOKIE_NAME};
use crate::App;

/// The peer's address, as the server saw the connection.
pub(crate) fn peer(request_extensions: &axum::http::Extensions) -> Option<IpAddr> {
    request_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The address a request comes from: the peer, or — when the peer is one of the
/// trusted proxies — the last address in `X-Forwarded-For` that is not one of them.
pub(crate) fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .unwrap_or(peer),
    )
}

/// A session the trusted proxy vouched for, for the handlers to use.
#[derive(Debug, Clone)]
pub(crate) struct Vouched {
    pub(crate) token: String,
    pub(crate) session: Session,
}

fn refuse(status: StatusCode, why: &'static str) -> Response {
    (status, why).into_response()
}

/// In trusted-proxy mode, every request but `/healthz` must come from a trusted proxy
/// and name an account: its session is the cookie's when that is the same person's,
/// else a new one (its cookie set on the answer). A password never signs in here.
pub(crate) async fn trusted_proxy(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(header) = &app.settings.trusted_header else {
        return next.run(request).await;
    };
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let peer = peer(request.extensions());
    if !peer.is_some_and(|p| app.settings.trusted_proxies.contains(&p)) {
        tracing::warn!(peer = ?peer, "a request that did not come through the sign-in proxy was refused");
        return refuse(
            StatusCode::FORBIDDEN,
            "this console is reached through its sign-in proxy only",
        );
    }
    let Some(name) = request
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
    else {
        tracing::warn!("the sign-in proxy named nobody");
        return refuse(StatusCode::FORBIDDEN, "the sign-in proxy named nobody");
    };
    let current = match crate::auth::cookie(request.headers(), COOKIE_NAME) {
        Some(token) => match app.store.session(&token).await {
            Ok(s) => s
                .filter(|s| s.account.name == name)
                .map(|session| Vouched { token, session }),
            Err(e) => return crate::pages::unavailable(e),
        },
        None => None,
    };
    let (vouched, new) = match current {
        Some(v) => (v, false),
        None => match app
            .store
            .open_session(&name, app.settings.session_ttl)
            .await
        {
            Ok(Some((token, session))) => {
                tracing::info!(user = %name, "signed in through the sign-in proxy");
                (Vouched { token, session }, true)
            }
            Ok(None) => {
                tracing::warn!(user = %name, "the sign-in proxy named no console account");
                return refuse(
                    StatusCode::FORBIDDEN,
                    "you have no account on this console: ask for one (skeelo-ops user add NAME --role viewer --no-password)",
                );
            }
            Err(e) => return crate::pages::unavailable(e),
        },
    };
    let cookie = new.then(|| session_cookie(&vouched.token, app.settings.session_ttl));
    request.extensions_mut().insert(vouched);
    let mut response = next.run(request).await;
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(SET_COOKIE, v);
    }
    response
}

/// Failures a name may have before it must wait.
const NAME_FAILURES: u32 = 5;
/// Failures an address may have (many people may share one) before it must wait.
const ADDRESS_FAILURES: u32 = 20;
/// The first wait; each further failure doubles it, up to [`LONGEST`].
const FIRST_WAIT: Duration = Duration::from_secs(30);
const LONGEST: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FORGET: Duration = Duration::from_secs(15 * 60);
/// The most keys kept (a flood of made-up names cannot take the console's memory).
const MOST_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Option<Instant>,
}

/// Failed sign-ins by name and by address, in this console's memory.
#[derive(Debug, Default)]
pub(crate) struct Throttle(Mutex<HashMap<String, Failures>>);

impl Throttle {
    fn keys(name: &str, ip: Option<IpAddr>) -> [(String, u32); 2] {
        [
            (format!("name:{}", name.to_lowercase()), NAME_FAILURES),
            (
                format!("ip:{}", ip.map_or_else(|| "?".into(), |i| i.to_string())),
                ADDRESS_FAILURES,
            ),
        ]
    }

    /// How long this sign-in must wait before it may be checked, if at all.
    pub(crate) fn wait(&self, name: &str, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Self::keys(name, ip)
            .iter()
            .filter_map(|(k, _)| all.get(k).and_then(|f| f.until))
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// A failed sign-in.
    pub(crate) fn failed(&self, name: &str, ip: Option<IpAddr>, now: Instant) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MOST_KEYS {
            all.retain(|_, f| now.duration_since(f.last) < FORGET);
        }
        for (key, allowed) in Self::keys(name, ip) {
            if all.len() >= MOST_KEYS && !all.contains_key(&key) {
                continue;
            }
            let f = all.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                until: None,
            });
            if now.duration_since(f.last) >= FORGET {
                f.count = 0;
            }
            f.count += 1;
            f.last = now;
            if f.count >= allowed {
                let doublings = (f.count - allowed).min(10);
                f.until = Some(now + (FIRST_WAIT * 2u32.pow(doublings)).min(LONGEST));
            }
        }
    }

    /// A successful sign-in clears its name (not its address: others may share it).
    pub(crate) fn succeeded(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&format!("name:{}", name.to_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)));

    #[test]
    fn a_name_that_keeps_failing_waits_longer_and_longer() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..NAME_FAILURES - 1 {
            t.failed("Ana", IP, now);
        }
        assert_eq!(
            t.wait("ana", IP, now),
            None,
            "four failures cost nothing yet"
        );
        t.failed("ana", IP, now);
        assert_eq!(t.wait("ANA", None, now), Some(FIRST_WAIT));
        t.failed("ana", IP, now);
        assert_eq!(t.wait("ana", None, now), Some(FIRST_WAIT * 2));
        for _ in 0..20 {
            t.failed("ana", IP, now);
        }
        assert_eq!(t.wait("ana", None, now), Some(LONGEST));
        assert_eq!(t.wait("bruno", None, now), None, "other names are not held");
        assert_eq!(t.wait("ana", None, now + LONGEST), None, "the wait ends");
    }

    #[test]
    fn an_address_that_tries_many_names_waits_too() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..ADDRESS_FAILURES {
            t.failed(&format!("guess{i}"), IP, now);
        }
        assert_eq!(t.wait("someone", IP, now), Some(FIRST_WAIT));
        assert_eq!(t.wait("someone", None, now), None);
    }

    #[test]
    fn a_success_clears_the_name_and_old_failures_are_forgotten() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..NAME_FAILURES - 1 {
            t.failed("ana", None, now);
        }
        t.succeeded("ana");
        t.failed("ana", None, now);
        assert_eq!(t.wait("ana", None, now), None);
        let later = now + FORGET;
        for _ in 0..NAME_FAILURES - 1 {
            t.failed("ana", None, later);
        }
        assert_eq!(
            t.wait("ana", None, later),
            None,
            "older failures count no more"
        );
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_last_untrusted_address() {
        let proxy = IpAddr::from([10, 0, 0, 1]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9, 10.0.0.1"),
        );
        assert_eq!(
            client_ip(Some(proxy), &h, &[proxy]),
            Some(IpAddr::from([203, 0, 113, 9])),
            "a forged first hop is not believed"
        );
        assert_eq!(
            client_ip(Some(proxy), &h, &[]),
            Some(proxy),
            "no proxy trusted: the peer"
        );
    }
}
