//! Reading the body of a partner's answer as real servers send it: a UTF-8 byte-order
//! mark is skipped, an empty body is no body, and a body that is not JSON is described
//! (status, content type, its first bytes with personal data masked) instead of being
//! turned into `null`, so the error says what was wrong.

use reqwest::StatusCode;
use serde_json::Value;

/// How many bytes of an unreadable body an error quotes.
const QUOTED: usize = 80;

/// A partner's answer: its JSON, or why there is none.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The body's JSON; `Null` for an empty or unreadable body.
    pub value: Value,
    /// Set when the body was not empty and could not be read as JSON.
    pub unreadable: Option<String>,
    /// How the answer looked: status, content type, size and first bytes (masked).
    looks: String,
}

impl Answer {
    /// Why this answer cannot be used: `why`, and how the answer looked.
    pub(crate) fn describe(&self, why: &str) -> String {
        format!("{}: {why}", self.looks)
    }
}

/// Reads `bytes`, answered with `status` and `content_type`.
pub(crate) fn read(status: StatusCode, content_type: Option<&str>, bytes: &[u8]) -> Answer {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let looks = looks(status, content_type, body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Answer {
            value: Value::Null,
            unreadable: None,
            looks,
        };
    }
    match serde_json::from_slice(body) {
        Ok(value) => Answer {
            value,
            unreadable: None,
            looks,
        },
        Err(e) => Answer {
            value: Value::Null,
            unreadable: Some(format!("{looks}: {e}")),
            looks,
        },
    }
}

/// `HTTP 200 (text/html, 512 bytes) starting with `<html>…``, personal data masked.
fn looks(status: StatusCode, content_type: Option<&str>, body: &[u8]) -> String {
    let cut = body.len().min(QUOTED);
    let start = String::from_utf8_lossy(&body[..cut]);
    let start = skeelo_domain::mask::text(&start);
    let more = if body.len() > cut { "…" } else { "" };
    format!(
        "HTTP {} ({}, {} bytes) starting with `{}{more}`",
        status.as_u16(),
        content_type.unwrap_or("no content type"),
        body.len(),
        start.escape_debug()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let a = read(
            StatusCode::OK,
            Some("application/json"),
            b"\xEF\xBB\xBF{\"a\": 1}",
        );
        assert_eq!(a.value["a"], 1);
        assert!(a.unreadable.is_none());
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_described_too() {
        let a = read(StatusCode::OK, Some("application/json"), br#"{"token": 1}"#);
        assert!(a.unreadable.is_none());
        let why = a.describe("missing field `access_token`");
        assert_eq!(
            why,
            "HTTP 200 (application/json, 12 bytes) starting with `{\\\"token\\\": 1}`: missing field `access_token`"
        );
    }

    #[test]
    fn an_empty_body_is_no_body() {
        for empty in [&b""[..], b"  \n"] {
            let a = read(StatusCode::NO_CONTENT, None, empty);
            assert!(a.value.is_null() && a.unreadable.is_none());
        }
    }

    #[test]
    fn a_body_that_is_not_json_is_described_with_personal_data_masked() {
        let html = b"<html><body>Erro: cliente 529.982.247-25 maria@example.com</body></html>";
        let a = read(StatusCode::OK, Some("text/html; charset=utf-8"), html);
        let why = a.unreadable.expect("described");
        let head = format!("HTTP 200 (text/html; charset=utf-8, {} bytes) starting with `<html><body>Erro: cliente", html.len());
        assert!(why.starts_with(&head), "{why}");
        assert!(why.contains("expected value"), "{why}");
        assert!(!why.contains("529.982") && !why.contains("maria@"), "{why}");
    }

    #[test]
    fn a_long_body_is_quoted_in_part() {
        let long = vec![b'x'; 500];
        let why = read(StatusCode::BAD_GATEWAY, None, &long)
            .unreadable
            .expect("described");
        assert!(why.contains("no content type, 500 bytes"), "{why}");
        assert!(why.contains("…`: expected value"), "{why}");
        assert!(why.len() < 250, "{why}");
    }
}
