//! What a repair says in a contract's story and in its run's report: statuses,
//! products and calls, never personal data (a contact difference is named, not shown).

use skeelo_domain::drift::Kind;
use skeelo_domain::event::Sku;
use skeelo_domain::lifecycle::{Call, Held, Status, Target};

/// What Skeelo holds, in a few words.
pub fn held(h: Option<&Held>) -> String {
    match h {
        None => "nothing".into(),
        Some(h) if h.status == Status::Cancelled => "cancelled".into(),
        Some(h) => format!(
            "{} with {}",
            h.status.as_str(),
            products(&h.profile.products)
        ),
    }
}

/// What the facts call for, in a few words.
pub fn target(t: &Target) -> String {
    match t {
        Target::Absent => "nothing (never synced)".into(),
        Target::Withdrawn => "no access (cancelled before its sync)".into(),
        Target::Present(h) => held(Some(h)),
    }
}

fn products(p: &[Sku]) -> String {
    if p.is_empty() {
        "no products".into()
    } else {
        p.iter().map(Sku::as_str).collect::<Vec<_>>().join(", ")
    }
}

/// The calls made, in words.
pub fn calls(calls: &[Call]) -> String {
    let words: Vec<String> = calls
        .iter()
        .map(|c| match c {
            Call::Create => "subscription created".to_string(),
            Call::SetStatus(s) => format!("status set to {}", s.as_str()),
            Call::Update(ch) => {
                let mut parts = Vec::new();
                if let Some(p) = &ch.products {
                    parts.push(format!("products set to {}", products(p)));
                }
                if ch.name.is_some() || ch.email.is_some() || ch.phone.is_some() {
                    parts.push("contact data set".to_string());
                }
                parts.join(", ")
            }
        })
        .collect();
    words.join(", ")
}

/// Why a difference is left for people, and what they can do.
pub fn for_people(kinds: &[Kind]) -> &'static str {
    if kinds.contains(&Kind::CancelledAtSkeelo) {
        "Skeelo cancelled this subscription, and a cancel is final there: no call can \
         restore it. The ERP must create a new contract for the customer, or Skeelo's \
         support must restore the subscription."
    } else {
        "Skeelo holds a subscription for a contract the ERP never synced: the fleet did \
         not create it and has no call for it. Ask Skeelo's support whose it is."
    }
}

/// The kinds, as listed in a line.
pub fn kinds(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
