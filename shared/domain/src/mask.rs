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

/// Which kind of personal data a field of this name holds, if any (English and
/// Portuguese names, as ERPs send them).
fn kind_of(key: &str) -> Option<fn(&str) -> String> {
    let key = key.to_ascii_lowercase();
    let digits_document =
        |s: &str| document(&s.chars().filter(char::is_ascii_digit).collect::<String>());
    match key.as_str() {
        "name" | "nome" | "full_name" | "fullname" | "first_name" | "last_name"
        | "nome_completo" | "razao_social" | "social_name" => Some(name),
        "document" | "documento" | "cpf" | "cnpj" | "cpf_cnpj" | "tax_id" => Some(digits_document),
        "email" | "e-mail" | "e_mail" | "mail" => Some(email),
        "phone" | "telefone" | "celular" | "mobile" | "fone" | "whatsapp" => Some(phone),
        _ => None,
    }
}

/// Masks personal data anywhere in a JSON value that need not be an event: fields
/// named like personal data (at any depth), and CPF/CNPJ numbers, phone numbers and
/// e-mail addresses inside any string.
pub fn json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match (kind_of(k), &*v) {
                    (Some(f), Value::String(s)) => *v = Value::from(f(s)),
                    (Some(f), Value::Number(n)) => *v = Value::from(f(&n.to_string())),
                    _ => json(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(json),
        Value::String(s) => *s = text(s),
        _ => {}
    }
}

/// A stored message body for people: JSON with personal data masked (an event's
/// subscriber fields and anything that looks like it elsewhere), or, when it is not
/// JSON, its first 2 000 characters with personal data masked. `reveal` shows it as
/// it came.
pub fn body(raw: &[u8], reveal: bool) -> serde_json::Value {
    match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(mut v) => {
            if !reveal {
                event_body(&mut v);
                json(&mut v);
            }
            v
        }
        Err(_) => {
            let text: String = String::from_utf8_lossy(raw).chars().take(2000).collect();
            serde_json::Value::from(if reveal { text } else { self::text(&text) })
        }
    }
}

/// Masks personal data in text that is not readable JSON (a broken body, an error
/// message): the values of fields named like personal data (`"cpf": "…"`), then every
/// e-mail address, and every run of 10 to 14 digits (with the usual separators) that
/// stands alone as a CPF, CNPJ or phone number would.
pub fn text(raw: &str) -> String {
    mask_emails(&mask_digit_runs(&mask_named_fields(raw)))
}

/// `"name" : "Maria"` → `"name" : "M."`, with the key matched as [`kind_of`] does; a
/// bare value (a number) is masked up to the next `,` `}` `]` or line end.
fn mask_named_fields(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..open]);
        let after_open = &rest[open + 1..];
        let Some(close) = after_open.find('"') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let key = &after_open[..close];
        out.push('"');
        out.push_str(key);
        out.push('"');
        rest = &after_open[close + 1..];
        let Some(f) = kind_of(key) else { continue };
        let trimmed = rest.trim_start();
        let Some(value) = trimmed.strip_prefix(':') else {
            continue;
        };
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        out.push(':');
        let value_trimmed = value.trim_start();
        out.push_str(&value[..value.len() - value_trimmed.len()]);
        if let Some(body) = value_trimmed.strip_prefix('"') {
            let end = string_end(body);
            out.push('"');
            out.push_str(&f(&body[..end]));
            match body.get(end..) {
                Some(tail) if tail.starts_with('"') => {
                    out.push('"');
                    rest = &tail[1..];
                }
                _ => rest = "",
            }
        } else {
            let end = value_trimmed
                .find([',', '}', ']', '\n'])
                .unwrap_or(value_trimmed.len());
            let bare = value_trimmed[..end].trim_end();
            out.push_str(&f(bare));
            rest = &value_trimmed[bare.len()..];
        }
    }
    out.push_str(rest);
    out
}

/// Where a JSON string's content ends (its closing quote, escapes skipped), or the
/// text's end.
fn string_end(body: &str) -> usize {
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return i,
            _ => {}
        }
    }
    body.len()
}

fn mask_digit_runs(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    let in_run =
        |c: char| c.is_ascii_digit() || matches!(c, '.' | '-' | '/' | ' ' | '(' | ')' | '+');
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < chars.len() {
        let starts = (chars[i].is_ascii_digit() || matches!(chars[i], '+' | '('))
            && (i == 0 || !chars[i - 1].is_alphanumeric());
        if !starts {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut end = i;
        while end < chars.len() && in_run(chars[end]) {
            end += 1;
        }
        // The run ends at its last digit; what follows must not be a letter or digit.
        let mut last = end;
        while last > i && !chars[last - 1].is_ascii_digit() {
            last -= 1;
        }
        let run: String = chars[i..last].iter().collect();
        let digits: String = run.chars().filter(char::is_ascii_digit).collect();
        let bounded = last == chars.len() || !chars[last].is_alphanumeric();
        if bounded && (10..=14).contains(&digits.len()) && last > i {
            out.push_str(&match digits.len() {
                11 | 14 => document(&digits),
                _ => phone(&digits),
            });
            i = last;
        } else {
            let stop = last.max(i + 1);
            out.extend(&chars[i..stop]);
            i = stop;
        }
    }
    out
}

fn mask_emails(raw: &str) -> String {
    let local_char = |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-');
    let domain_char = |c: char| c.is_alphanumeric() || matches!(c, '.' | '-');
    let chars: Vec<char> = raw.chars().collect();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    let mut emitted = 0;
    while i < chars.len() {
        if chars[i] != '@' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > emitted && local_char(chars[start - 1]) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < chars.len() && domain_char(chars[end]) {
            end += 1;
        }
        let domain: String = chars[i + 1..end].iter().collect();
        let domain = domain.trim_end_matches('.');
        if start < i && domain.contains('.') {
            out.extend(&chars[emitted..start]);
            let local: String = chars[start..i].iter().collect();
            out.push_str(&email(&format!("{local}@{domain}")));
            emitted = i + 1 + domain.chars().count();
            i = emitted;
        } else {
            i += 1;
        }
    }
    out.extend(&chars[emitted.min(chars.len())..]);
    out
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

    const SUBJECT: [&str; 6] = [
        "Maria",
        "Silva",
        "529.982.247",
        "52998224725",
        "maria.silva@",
        "98765",
    ];

    fn leaks(text: &str) -> Vec<&'static str> {
        SUBJECT.into_iter().filter(|s| text.contains(s)).collect()
    }

    #[test]
    fn a_body_that_is_not_json_loses_its_personal_data() {
        let broken = r#"{"event_id": "7b1e0c1a-5d5e-4c39-9a51-0d6c3b1f1e2a", "type": "sync",
            "subscriber": {"id": "10077", "name": "Maria da Silva", "document": "529.982.247-25",
            "email": "maria.silva@example.com.br", "phone": "+55 (11) 98765-4321",},
            "contract": {"id": "C1", "products": ["SKEELO-EBOOKS"]},}"#;
        let masked = text(broken);
        assert!(leaks(&masked).is_empty(), "{masked}");
        for kept in [
            "7b1e0c1a-5d5e-4c39-9a51-0d6c3b1f1e2a",
            "10077",
            "C1",
            "SKEELO-EBOOKS",
            "m***@example.com.br",
            "***4321",
        ] {
            assert!(masked.contains(kept), "{kept} stays: {masked}");
        }
    }

    #[test]
    fn personal_data_is_found_without_field_names_too() {
        let loose =
            "cliente Maria: cpf 52998224725, mail maria.silva@example.com, tel 11 98765 4321; \
                     pedido 2026-11-29T10:00:00Z versao 12 id 1234567";
        let masked = text(loose);
        for gone in ["52998224725", "maria.silva@", "98765"] {
            assert!(!masked.contains(gone), "{gone}: {masked}");
        }
        for kept in ["2026-11-29T10:00:00Z", "versao 12", "id 1234567"] {
            assert!(masked.contains(kept), "{kept} stays: {masked}");
        }
    }

    #[test]
    fn named_fields_at_any_depth_and_numbers_are_masked_in_json() {
        let mut v = serde_json::json!({"cliente": {"nome": "Maria da Silva", "cpf": 52998224725u64,
            "contatos": [{"telefone": "11987654321"}, {"obs": "escreva para maria.silva@example.com"}]},
            "id": "10077"});
        json(&mut v);
        let text = v.to_string();
        assert!(leaks(&text).is_empty(), "{text}");
        assert!(text.contains("10077"));
    }

    #[test]
    fn text_without_personal_data_is_unchanged() {
        for plain in [
            "",
            "no quotes at all",
            r#"{"type": "sync", "version": 3, "products": ["A", "B"]}"#,
            r#"unterminated "name"#,
            "ação ✓ émoji 🙂 \"escaped\"",
        ] {
            assert_eq!(text(plain), plain);
        }
        assert_eq!(text(r#"{"name": "Maria"#), r#"{"name": "M."#);
    }
}
