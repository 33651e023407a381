//! OAuth2 client-credentials tokens: issuing them from a form body and checking
//! the bearer token every other partner call carries.

use std::collections::HashMap;
use std::time::Instant;

use axum::http::{header, HeaderMap};
use serde_json::json;

use crate::error::{ApiError, Outcome, Reply};
use crate::state::State;

impl State {
    /// `POST /oauth/token`.
    pub(crate) fn issue_token(&mut self, body: &[u8]) -> Outcome {
        let form = parse_form(body);
        let field = |key: &str| form.get(key).map(String::as_str);
        let valid = field("grant_type") == Some("client_credentials")
            && field("client_id") == Some(self.client_id.as_str())
            && field("client_secret") == Some(self.client_secret.as_str());
        if !valid {
            return Err(ApiError::invalid_client());
        }
        let now = Instant::now();
        self.tokens
            .retain(|_, expiry| expiry.is_none_or(|expiry| now < expiry));
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.tokens
            .insert(token.clone(), now.checked_add(self.token_ttl));
        let ttl = self.token_ttl.as_secs();
        let expires_in = if self.faults.expires_in_as_string {
            json!(ttl.to_string())
        } else {
            json!(ttl)
        };
        Ok(Reply::ok(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
        })))
    }

    pub(crate) fn check_token(&self, token: Option<&str>) -> Result<(), ApiError> {
        let Some(token) = token else {
            return Err(ApiError::invalid_token(
                "missing Authorization: Bearer <token> header",
            ));
        };
        match self.tokens.get(token) {
            Some(expiry) if expiry.is_none_or(|expiry| Instant::now() < expiry) => Ok(()),
            Some(_) => Err(ApiError::invalid_token("the access token has expired")),
            None => Err(ApiError::invalid_token(
                "the access token is unknown or was revoked",
            )),
        }
    }

    /// Revokes every token; returns how many were live or stale.
    pub(crate) fn expire_tokens(&mut self) -> usize {
        let revoked = self.tokens.len();
        self.tokens.clear();
        revoked
    }
}

/// The token from an `Authorization: Bearer …` header, if there is a usable one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// Decodes an `application/x-www-form-urlencoded` body. The first occurrence of a
/// key wins; pairs that do not decode to UTF-8 are dropped.
pub(crate) fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut form = HashMap::new();
    for pair in body.split(|byte| *byte == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = match pair.iter().position(|byte| *byte == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        if let (Some(key), Some(value)) = (url_decode(key), url_decode(value)) {
            form.entry(key).or_insert(value);
        }
    }
    form
}

fn url_decode(input: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let decoded = input
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match decoded {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    // A stray '%' is kept as is, as lenient decoders do.
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn form_decoding_handles_plus_percent_and_repeats() {
        let form = parse_form(b"a=x+y&b=%41%2b%3D&c&a=second&d=100%&e=%zz&&");
        assert_eq!(form.get("a").map(String::as_str), Some("x y"));
        assert_eq!(form.get("b").map(String::as_str), Some("A+="));
        assert_eq!(form.get("c").map(String::as_str), Some(""));
        assert_eq!(form.get("d").map(String::as_str), Some("100%"));
        assert_eq!(form.get("e").map(String::as_str), Some("%zz"));
    }

    #[test]
    fn form_decoding_drops_invalid_utf8() {
        let form = parse_form(b"a=%FF&b=ok");
        assert!(!form.contains_key("a"));
        assert_eq!(form.get("b").map(String::as_str), Some("ok"));
    }

    #[test]
    fn bearer_requires_the_scheme() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&headers).as_deref(), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}
