//! Skeelo's catalogue, as events are judged against it.

use serde::{Deserialize, Serialize};

/// A product of Skeelo's catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The SKU events name.
    pub sku: String,
    /// The name operators read.
    pub name: String,
}
