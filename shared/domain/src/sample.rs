//! Example events as the ERP would publish them: for the demo, the tests and the
//! benchmark, and as a reference for the ERP team. Every body here passes
//! [`crate::event::parse`] (the tests make sure of it).

use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::EventType;

/// The simulator's default catalogue.
pub const PRODUCTS: [&str; 3] = ["SKEELO-EBOOKS", "SKEELO-AUDIOBOOKS", "SKEELO-MINIBOOKS"];

/// A valid, formatted CPF made from any number (its first nine digits are `n`).
pub fn cpf(n: u64) -> String {
    let mut d: Vec<u32> = format!("{:09}", n % 1_000_000_000)
        .bytes()
        .map(|b| u32::from(b - b'0'))
        .collect();
    if d.iter().all(|&x| x == d[0]) {
        d[8] = (d[8] + 1) % 10; // 000.000.000-00 and the like are not valid CPFs
    }
    for len in [9usize, 10] {
        let sum: u32 = (0..len).map(|i| d[i] * (len as u32 + 1 - i as u32)).sum();
        let r = (sum * 10) % 11;
        d.push(if r == 10 { 0 } else { r });
    }
    let s: String = d.iter().map(|x| char::from(b'0' + *x as u8)).collect();
    format!("{}.{}.{}-{}", &s[0..3], &s[3..6], &s[6..9], &s[9..11])
}

/// One event body. `products` matters only for `sync`.
pub fn event(t: EventType, contract_id: &str, version: i64, products: &[&str]) -> Value {
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "2026-01-01T00:00:00Z".into());
    let mut body = json!({
        "event_id": Uuid::new_v4().to_string(),
        "type": t.as_str(),
        "occurred_at": now,
        "contract": { "id": contract_id, "version": version },
        "actor": "operador.demo",
    });
    if t == EventType::Sync {
        let seed: u64 = contract_id
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        body["contract"]["plan"] =
            json!({ "code": "SVA-LEITURA", "months": 12, "monthly_value": "9.90" });
        body["contract"]["products"] = json!(products);
        body["subscriber"] = json!({
            "id": format!("S{contract_id}"),
            "name": format!("Assinante {contract_id}"),
            "document": cpf(seed),
            "email": format!("assinante{contract_id}@example.com.br"),
            "phone": format!("+55 11 9{:04}-{:04}", seed % 10_000, (seed / 10_000) % 10_000),
        });
    }
    body
}

/// A contract's history as the ERP makes it: versions grow by one per change; it
/// starts with a sync most of the time; after a cancel the ERP may still try a
/// reactivate, unblock or (if the contract had been synced) a sync — the attempts
/// the fleet must reject.
pub fn history(rng: &mut impl Rng, contract_id: &str, max_events: usize) -> Vec<Value> {
    let n = rng.random_range(1..=max_events.max(1));
    let mut events = Vec::with_capacity(n);
    let mut synced = false;
    let mut cancelled = false;
    for i in 0..n {
        let mut t = if i == 0 && rng.random_bool(0.85) {
            EventType::Sync
        } else {
            *EventType::ALL.choose(rng).unwrap_or(&EventType::Sync)
        };
        if t == EventType::Sync && cancelled && !synced {
            t = EventType::Reactivate;
        }
        match t {
            EventType::Sync if !cancelled => synced = true,
            EventType::Cancel => cancelled = true,
            _ => {}
        }
        let k = rng.random_range(1..=PRODUCTS.len());
        let products: Vec<&str> = PRODUCTS.choose_multiple(rng, k).copied().collect();
        events.push(event(t, contract_id, i as i64 + 1, &products));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse, Document};

    #[test]
    fn samples_are_valid_events() {
        for n in [0, 1, 123_456_789, 999_999_999, 42] {
            assert!(Document::parse(&cpf(n)).is_ok(), "{}", cpf(n));
        }
        let mut rng = rand::rng();
        for c in 0..50 {
            for e in history(&mut rng, &format!("C{c}"), 8) {
                let key = format!("contract.{}", e["type"].as_str().unwrap_or(""));
                assert!(parse(&key, e.to_string().as_bytes()).is_ok(), "{e}");
            }
        }
    }
}
