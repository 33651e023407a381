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
}
