//! Masks personal data before it can reach a log line, a metric or an operator's screen.
//!
//! Operators still need to tell subscribers apart, so each mask keeps a little: the last
//! digits of a document or phone, the first letter and the domain of an e-mail.

/// `52998224725` → `***.***.*47-25`; a CNPJ keeps its last four digits the same way.
pub fn document(digits: &str) -> String {
    let tail: String = last_chars(digits, 4);
    if digits.len() == 14 {
        format!("**.***.***/****-{}", &tail.get(2..).unwrap_or(""))
    } else {
        let (a, b) = tail.split_at(tail.len().min(2));
        format!("***.***.*{a}-{b}")
    }
}

/// `maria@example.com.br` → `m***@example.com.br`.
pub fn email(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

/// `+55 11 98765-4321` → `***4321`.
pub fn phone(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    format!("***{}", last_chars(&digits, 4))
}

/// A name keeps its first letter of each part: `Maria da Silva` → `M. d. S.`.
pub fn name(full: &str) -> String {
    full.split_whitespace()
        .filter_map(|p| p.chars().next())
        .map(|c| format!("{c}."))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Masks the subscriber's personal data inside an event body, in place, whatever else
/// the body holds (operators read dead letters that may be half valid).
pub fn event_body(body: &mut serde_json::Value) {
    let Some(sub) = body.get_mut("subscriber").and_then(|s| s.as_object_mut()) else {
        return;
    };
    let masked = |v: &serde_json::Value, f: fn(&str) -> String| match v.as_str() {
        Some(s) => serde_json::Value::from(f(s)),
        None => serde_json::Value::from("***"),
    };
    if let Some(v) = sub.get_mut("name") {
        *v = masked(v, name);
    }
    if let Some(v) = sub.get_mut("document") {
        let digits =
            |s: &str| document(&s.chars().filter(char::is_ascii_digit).collect::<String>());
        *v = masked(v, digits);
    }
    if let Some(v) = sub.get_mut("email") {
        *v = masked(v, email);
    }
    if let Some(v) = sub.get_mut("phone") {
        if !v.is_null() {
            *v = masked(v, phone);
        }
    }
}

fn last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_only_a_hint() {
        assert_eq!(document("52998224725"), "***.***.*47-25");
        assert_eq!(document("11222333000181"), "**.***.***/****-81");
        assert_eq!(email("maria@example.com.br"), "m***@example.com.br");
        assert_eq!(phone("+55 11 98765-4321"), "***4321");
        assert_eq!(name("Maria da Silva"), "M. d. S.");
        assert_eq!(email("broken"), "***");
    }

    #[test]
    fn an_event_body_loses_its_personal_data() {
        let mut body = serde_json::json!({"subscriber": {"name": "Maria da Silva",
            "document": "529.982.247-25", "email": "maria@example.com.br", "phone": "+55 11 98765-4321",
            "id": "10077"}, "contract": {"id": "1"}});
        event_body(&mut body);
        let text = body.to_string();
        for secret in ["Maria", "529.982", "maria@", "98765"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("10077"), "ids stay: operators need them");
    }
}
