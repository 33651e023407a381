//! Field readers that accept what real OAuth and JSON servers send for a value: a
//! number as a string (`"expires_in": "3600"`), an id as a number, `null` where a field
//! may be absent. The partner's meaning is kept; only its spelling is forgiven.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A string, also from a number or a boolean; `null` reads as empty.
pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_string(d)?.unwrap_or_default())
}

/// An optional string, also from a number or a boolean; `null` reads as absent.
pub(crate) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, found {}",
            kind(&other)
        ))),
    }
}

/// A list of strings, each read as [`string`]; `null` reads as empty.
pub(crate) fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| opt_string(v).map(Option::unwrap_or_default))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "expected a list, found {}",
            kind(&other)
        ))),
    }
}

/// A whole number of seconds, also written as a string (`"3600"`) or with a fraction
/// (`3600.0`); `null`, an empty string or a negative number read as absent.
pub(crate) fn opt_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let number = |f: f64| (f.is_finite() && f >= 0.0).then(|| f.min(u64::MAX as f64) as u64);
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_u64().or_else(|| n.as_f64().and_then(number))),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(number)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a number of seconds"))),
        other => Err(serde::de::Error::custom(format!(
            "expected a number of seconds, found {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Sample {
        #[serde(default, deserialize_with = "super::string")]
        id: String,
        #[serde(default, deserialize_with = "super::opt_string")]
        phone: Option<String>,
        #[serde(default, deserialize_with = "super::strings")]
        products: Vec<String>,
        #[serde(default, deserialize_with = "super::opt_seconds")]
        expires_in: Option<u64>,
    }

    fn read(v: serde_json::Value) -> Result<Sample, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_as_strings_and_strings_as_numbers_are_read() {
        let s = read(
            json!({"id": 77, "phone": 11987654321u64, "products": ["A", 2],
            "expires_in": "3600"}),
        )
        .expect("read");
        assert_eq!(s.id, "77");
        assert_eq!(s.phone.as_deref(), Some("11987654321"));
        assert_eq!(s.products, ["A", "2"]);
        assert_eq!(s.expires_in, Some(3600));
        assert_eq!(
            read(json!({"expires_in": 3600.0}))
                .expect("read")
                .expires_in,
            Some(3600)
        );
        assert_eq!(
            read(json!({"expires_in": " 60 "}))
                .expect("read")
                .expires_in,
            Some(60)
        );
    }

    #[test]
    fn null_and_absent_read_as_absent() {
        let s = read(json!({"id": null, "phone": null, "products": null, "expires_in": null}))
            .expect("read");
        assert_eq!(s, read(json!({})).expect("read"));
        assert_eq!(
            read(json!({"expires_in": ""})).expect("read").expires_in,
            None
        );
        assert_eq!(
            read(json!({"expires_in": -5})).expect("read").expires_in,
            None
        );
    }

    #[test]
    fn what_cannot_mean_the_field_is_refused_with_why() {
        let e = read(json!({"expires_in": "soon"})).expect_err("not a number");
        assert!(e.contains("`soon` is not a number of seconds"), "{e}");
        let e = read(json!({"id": {"x": 1}})).expect_err("an object");
        assert!(e.contains("expected a string, found an object"), "{e}");
    }
}
