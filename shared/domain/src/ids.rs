//! Identities: a contract and a product are names, not any string. Each is parsed once
//! at the edge; once a value exists it is valid, and a function that takes a
//! [`ContractId`] cannot be handed a SKU by mistake.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest contract id or SKU accepted (CONTRACT §1).
pub const MAX_ID_LEN: usize = 64;

/// Trims `raw` and checks it is 1 to [`MAX_ID_LEN`] characters with no control
/// character: what an id is in this contract.
fn clean(raw: &str) -> Result<String, String> {
    let t = raw.trim();
    if t.is_empty() || t.chars().count() > MAX_ID_LEN {
        return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
    }
    if t.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(t.to_string())
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses an id from outside (trimmed; 1 to 64 characters; no control
            /// characters).
            pub fn parse(raw: &str) -> Result<$name, String> {
                clean(raw).map($name)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(raw: String) -> Result<$name, String> {
                $name::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id!(
    /// An ERP contract id; Skeelo knows the subscription by it (`external_id`).
    ContractId
);

id!(
    /// A Skeelo product SKU, as the ISP registered it for the supplier.
    Sku
);

impl Sku {
    /// A SKU as Skeelo holds it on a subscription, taken as it says it: compared with
    /// ours, never sent as ours. An entry that is not a valid SKU keeps its text, so
    /// it differs from every SKU an event can name and a sync corrects it.
    pub fn from_partner(raw: &str) -> Sku {
        Sku(raw.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_trimmed_and_bounded() {
        assert_eq!(ContractId::parse(" 48213 ").expect("valid"), "48213");
        assert_eq!(
            Sku::parse("SKEELO-EBOOKS").expect("valid").as_str(),
            "SKEELO-EBOOKS"
        );
        assert!(ContractId::parse("   ").is_err());
        assert!(ContractId::parse(&"9".repeat(65)).is_err());
        assert!(ContractId::parse(&"9".repeat(64)).is_ok());
        assert!(Sku::parse("A\u{7}B").is_err());
    }

    #[test]
    fn stored_ids_are_checked_when_read_back() {
        let id: ContractId = serde_json::from_str("\"48213\"").expect("valid");
        assert_eq!(serde_json::to_string(&id).expect("serialized"), "\"48213\"");
        assert!(serde_json::from_str::<Sku>("\"\"").is_err());
    }
}
