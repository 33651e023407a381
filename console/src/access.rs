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

/// An address or a range of them (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`), for the
/// proxies in front of the console: pods move, so their range is what is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Net {
    type Err = String;

    fn from_str(raw: &str) -> Result<Net, String> {
        let raw = raw.trim();
        let (addr, prefix) = raw.split_once('/').unwrap_or((raw, ""));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{raw}` is not an address or a range like 10.0.0.0/8"))?;
        let addr = canonical(addr);
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            most
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(|| format!("`{raw}`: the prefix is 0 to {most}"))?
        };
        Ok(Net { addr, prefix })
    }
}

impl Net {
    /// Whether `ip` is in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address seen through IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry: an address, with or without a port (`a.b.c.d:p`,
/// `[v6]:p`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// Whether `ip` is in any of `nets`.
pub(crate) fn among(nets: &[Net], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

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
    trusted: &[Net],
) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !among(trusted, peer) {
        return Some(peer);
    }
    let forwarded: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|a| forwarded_address(a.trim()))
        .collect();
    // From the right: past our own proxies, the first address is the client. An entry
    // that cannot be read ends the walk at the last hop we trust (the peer): reading
    // past it would believe whatever the client wrote further left.
    let mut client = peer;
    for hop in forwarded.into_iter().rev() {
        match hop {
            Some(a) if among(trusted, a) => client = a,
            Some(a) => return Some(a),
            None => return Some(peer),
        }
    }
    Some(client)
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
    if !peer.is_some_and(|p| among(&app.settings.sign_in_proxies, p)) {
        tracing::warn!(peer = ?peer, "a request that did not come through the sign-in proxy was refused");
        return refuse(
            StatusCode::FORBIDDEN,
            "this console is reached through its sign-in proxy only",
        );
    }
    // One value, one name: a proxy that appends its header to the client's own would
    // otherwise let the client's come first.
    let mut values = request.headers().get_all(header).iter();
    let only = match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    };
    let Some(name) = only
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.contains(',') && n.len() <= 64)
        .map(str::to_string)
    else {
        tracing::warn!("the sign-in proxy named nobody, or more than one name");
        return refuse(
            StatusCode::FORBIDDEN,
            "the sign-in proxy must name one person in its header",
        );
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

/// Failures one name may have from one address before it must wait.
const NAME_AT_ADDRESS_FAILURES: u32 = 5;
/// Failures one name may have from anywhere (guesses spread over many addresses);
/// higher, so that a stranger cannot easily hold someone else's name.
const NAME_FAILURES: u32 = 50;
/// Failures an address may have (many people may share one) before it must wait.
const ADDRESS_FAILURES: u32 = 20;
/// The first wait; each further failure doubles it, up to [`LONGEST`].
const FIRST_WAIT: Duration = Duration::from_secs(30);
const LONGEST: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FORGET: Duration = Duration::from_secs(15 * 60);
/// The most keys kept (a flood of made-up names cannot take the console's memory);
/// when full, the keys that failed longest ago make room.
const MOST_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Option<Instant>,
}

/// Failed sign-ins by name, by name at an address and by address, in this console's
/// memory.
#[derive(Debug, Default)]
pub(crate) struct Throttle(Mutex<HashMap<String, Failures>>);

/// An address as the throttle counts it: IPv6 by its /64 (one subscriber's block).
fn address_key(ip: Option<IpAddr>) -> String {
    match ip.map(canonical) {
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(v4) => v4.to_string(),
        None => "?".into(),
    }
}

/// One more failure under `key`, and the wait it earns.
fn count(all: &mut HashMap<String, Failures>, key: String, allowed: u32, now: Instant) {
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

/// Room in a full table: forgotten failures go, then — a tenth at a time, the
/// longest-quiet first — keys that hold nobody back now. A key that holds someone
/// is never dropped: flooding the table cannot free a held name.
fn make_room(all: &mut HashMap<String, Failures>, now: Instant) {
    all.retain(|_, f| now.duration_since(f.last) < FORGET || f.until.is_some_and(|u| u > now));
    if all.len() < MOST_KEYS {
        return;
    }
    let mut quiet: Vec<(Instant, String)> = all
        .iter()
        .filter(|(_, f)| f.until.is_none_or(|u| u <= now))
        .map(|(k, f)| (f.last, k.clone()))
        .collect();
    quiet.sort_unstable();
    for (_, k) in quiet.into_iter().take(MOST_KEYS / 10) {
        all.remove(&k);
    }
}

impl Throttle {
    fn keys(name: &str, ip: Option<IpAddr>) -> [(String, u32); 3] {
        let name = name.to_lowercase();
        let at = address_key(ip);
        [
            (format!("name@ip:{name}@{at}"), NAME_AT_ADDRESS_FAILURES),
            (format!("name:{name}"), NAME_FAILURES),
            (format!("ip:{at}"), ADDRESS_FAILURES),
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
        for (key, allowed) in Self::keys(name, ip) {
            if all.len() >= MOST_KEYS && !all.contains_key(&key) {
                make_room(&mut all, now);
                if all.len() >= MOST_KEYS {
                    // Full of keys that hold someone back: those keep holding; this
                    // failure goes uncounted under a new key.
                    continue;
                }
            }
            count(&mut all, key, allowed, now);
        }
    }

    /// A failure to count against its address only (a form too large to be a
    /// sign-in: its name is not a name to hold).
    pub(crate) fn failed_address(&self, ip: Option<IpAddr>, now: Instant) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = format!("ip:{}", address_key(ip));
        if all.len() >= MOST_KEYS && !all.contains_key(&key) {
            make_room(&mut all, now);
        }
        if all.len() < MOST_KEYS || all.contains_key(&key) {
            count(&mut all, key, ADDRESS_FAILURES, now);
        }
    }

    /// A successful sign-in clears its name's failures at that address (not the
    /// address's, which others may share, nor the name's from elsewhere).
    pub(crate) fn succeeded(&self, name: &str, ip: Option<IpAddr>) {
        let [(at, _), _, _] = Self::keys(name, ip);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&at);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|a| a.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)));
    const OTHER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 8)));

    #[test]
    fn a_name_that_keeps_failing_at_one_address_waits_longer_and_longer() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..NAME_AT_ADDRESS_FAILURES - 1 {
            t.failed("Ana", IP, now);
        }
        assert_eq!(
            t.wait("ana", IP, now),
            None,
            "four failures cost nothing yet"
        );
        t.failed("ana", IP, now);
        assert_eq!(t.wait("ANA", IP, now), Some(FIRST_WAIT));
        t.failed("ana", IP, now);
        assert_eq!(t.wait("ana", IP, now), Some(FIRST_WAIT * 2));
        for _ in 0..6 {
            t.failed("ana", IP, now);
        }
        assert_eq!(t.wait("ana", IP, now), Some(LONGEST));
        assert_eq!(t.wait("ana", OTHER, now), None, "Ana elsewhere is not held");
        assert_eq!(t.wait("bruno", IP, now), None, "other names are not held");
        assert_eq!(t.wait("ana", IP, now + LONGEST), None, "the wait ends");
    }

    #[test]
    fn guesses_at_one_name_from_many_addresses_hold_that_name() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..NAME_FAILURES {
            let ip = IpAddr::from([192, 0, 2, u8::try_from(i % 250).unwrap_or(0)]);
            t.failed("ana", Some(ip), now);
        }
        assert_eq!(t.wait("ana", OTHER, now), Some(FIRST_WAIT));
    }

    #[test]
    fn an_address_that_tries_many_names_waits_too() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..ADDRESS_FAILURES {
            t.failed(&format!("guess{i}"), IP, now);
        }
        assert_eq!(t.wait("someone", IP, now), Some(FIRST_WAIT));
        assert_eq!(t.wait("someone", OTHER, now), None);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_block() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..ADDRESS_FAILURES {
            let ip = IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, u16::try_from(i).unwrap_or(0)]);
            t.failed(&format!("guess{i}"), Some(ip), now);
        }
        let same_block = IpAddr::from([0x2001, 0xdb8, 1, 2, 9, 9, 9, 9]);
        assert_eq!(t.wait("someone", Some(same_block), now), Some(FIRST_WAIT));
    }

    #[test]
    fn a_success_clears_the_name_at_its_address_and_old_failures_are_forgotten() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..NAME_AT_ADDRESS_FAILURES - 1 {
            t.failed("ana", IP, now);
        }
        t.succeeded("ana", IP);
        t.failed("ana", IP, now);
        assert_eq!(t.wait("ana", IP, now), None);
        let later = now + FORGET;
        for _ in 0..NAME_AT_ADDRESS_FAILURES - 1 {
            t.failed("ana", IP, later);
        }
        assert_eq!(
            t.wait("ana", IP, later),
            None,
            "older failures count no more"
        );
    }

    #[test]
    fn a_full_table_makes_room_and_still_counts_a_real_name() {
        let t = Throttle::default();
        let now = Instant::now();
        for i in 0..MOST_KEYS {
            t.failed(&format!("made-up-{i}"), None, now);
        }
        assert!(t.len() <= MOST_KEYS);
        let later = now + Duration::from_secs(1);
        for _ in 0..NAME_AT_ADDRESS_FAILURES {
            t.failed("ana", IP, later);
        }
        assert_eq!(t.wait("ana", IP, later), Some(FIRST_WAIT));
        assert!(t.len() <= MOST_KEYS);
    }

    #[test]
    fn flooding_the_table_does_not_free_a_held_name() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..NAME_AT_ADDRESS_FAILURES {
            t.failed("ana", IP, now);
        }
        let later = now + Duration::from_secs(1);
        for i in 0..(2 * MOST_KEYS) {
            t.failed(&format!("flood-{i}"), OTHER, later);
            t.failed_address(OTHER, later);
        }
        assert!(t.len() <= MOST_KEYS);
        assert!(t.wait("ana", IP, later).is_some(), "Ana is still held");
    }

    #[test]
    fn ranges_of_proxies_hold_their_addresses_and_mapped_ipv4_is_ipv4() {
        let net: Net = "10.0.0.0/8".parse().unwrap_or(Net {
            addr: IpAddr::from([0, 0, 0, 0]),
            prefix: 32,
        });
        assert!(net.contains(IpAddr::from([10, 200, 3, 4])));
        assert!(!net.contains(IpAddr::from([11, 0, 0, 1])));
        let mapped: IpAddr = "::ffff:10.1.2.3"
            .parse()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert!(net.contains(mapped));
        let one: Result<Net, _> = "127.0.0.1".parse();
        assert!(one.is_ok_and(|n| n.contains(IpAddr::from([127, 0, 0, 1]))));
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("proxy.local".parse::<Net>().is_err());
        let all6: Result<Net, _> = "::/0".parse();
        assert!(all6.is_ok_and(|n| n.contains(IpAddr::from([0x2001, 0, 0, 0, 0, 0, 0, 1]))));
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_last_untrusted_address() {
        let proxy = IpAddr::from([10, 0, 0, 1]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9, 10.0.0.1"),
        );
        let proxies: Vec<Net> = ["10.0.0.0/24"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(
            client_ip(Some(proxy), &h, &proxies),
            Some(IpAddr::from([203, 0, 113, 9])),
            "a forged first hop is not believed"
        );
        assert_eq!(
            client_ip(Some(proxy), &h, &[]),
            Some(proxy),
            "no proxy trusted: the peer"
        );
        // Ports are read; an entry that cannot be read stops the walk at the peer.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9:5555"),
        );
        assert_eq!(
            client_ip(Some(proxy), &h, &proxies),
            Some(IpAddr::from([203, 0, 113, 9]))
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, unknown"),
        );
        assert_eq!(client_ip(Some(proxy), &h, &proxies), Some(proxy));
    }
}
