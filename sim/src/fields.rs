//! Hand-rolled reading of JSON request bodies, so that any malformed body becomes
//! a 422 `invalid_request` with a useful message instead of an extractor rejection.

use serde_json::{Map, Value};

use crate::error::ApiError;

pub(crate) type Object = Map<String, Value>;

/// The body as a JSON object.
pub(crate) fn object(body: &[u8]) -> Result<Object, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid_request("the body must be a JSON object")),
        Err(err) => Err(ApiError::invalid_request(format!(
            "the body is not valid JSON: {err}"
        ))),
    }
}

/// A string field: absent or null gives `None`, any other type is refused.
pub(crate) fn text(map: &Object, key: &str) -> Result<Option<String>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(ApiError::invalid_request(format!("{key} must be a string"))),
    }
}

/// A string field that must be present and not blank.
pub(crate) fn required_text(map: &Object, key: &str) -> Result<String, ApiError> {
    let value =
        text(map, key)?.ok_or_else(|| ApiError::invalid_request(format!("{key} is required")))?;
    not_blank(key, value)
}

/// A string field that may be absent (unchanged) but, if given, must not be null or blank.
pub(crate) fn optional_text(map: &Object, key: &str) -> Result<Option<String>, ApiError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Null) => Err(ApiError::invalid_request(format!("{key} must not be null"))),
        Some(_) => text(map, key)?
            .map(|value| not_blank(key, value))
            .transpose(),
    }
}

/// A field where absent means "leave alone" and null means "clear".
pub(crate) fn nullable_text(map: &Object, key: &str) -> Result<Option<Option<String>>, ApiError> {
    if map.contains_key(key) {
        text(map, key).map(Some)
    } else {
        Ok(None)
    }
}

/// A list of strings; absent gives `None`, null or any other shape is refused.
pub(crate) fn text_list(map: &Object, key: &str) -> Result<Option<Vec<String>>, ApiError> {
    let Some(value) = map.get(key) else {
        return Ok(None);
    };
    let invalid = || ApiError::invalid_request(format!("{key} must be a list of strings"));
    let Value::Array(items) = value else {
        return Err(invalid());
    };
    items
        .iter()
        .map(|item| item.as_str().map(str::to_owned).ok_or_else(invalid))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn not_blank(key: &str, value: String) -> Result<String, ApiError> {
    if value.trim().is_empty() {
        Err(ApiError::invalid_request(format!(
            "{key} must not be empty"
        )))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_invalid_requests() {
        for body in [&b"not json"[..], b"[1,2]", b"", b"\"text\""] {
            let err = object(body).expect_err("must be refused");
            assert_eq!(err.code, "invalid_request");
        }
    }

    #[test]
    fn nullable_text_tells_absent_from_null() {
        let map = object(br#"{"phone": null, "name": "A"}"#).expect("object");
        assert_eq!(nullable_text(&map, "phone").expect("ok"), Some(None));
        assert_eq!(nullable_text(&map, "email").expect("ok"), None);
        assert!(optional_text(&map, "phone").is_err());
        assert_eq!(
            optional_text(&map, "name").expect("ok").as_deref(),
            Some("A")
        );
    }

    #[test]
    fn lists_must_hold_strings() {
        let map = object(br#"{"a": ["x"], "b": [1], "c": null}"#).expect("object");
        assert_eq!(
            text_list(&map, "a").expect("ok"),
            Some(vec!["x".to_owned()])
        );
        assert!(text_list(&map, "b").is_err());
        assert!(text_list(&map, "c").is_err());
        assert_eq!(text_list(&map, "d").expect("ok"), None);
    }
}
