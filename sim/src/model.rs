//! The records the partner API exposes and the knobs that change how it behaves.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A catalogue entry; subscriptions may only reference SKUs the catalogue holds,
/// which is how the bridge's product mapping gets exercised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The identifier the bridge sends in `products`.
    pub sku: String,
    /// Display name, only for people reading the catalogue.
    pub name: String,
}

impl Product {
    /// Saves callers from building the struct by hand when seeding catalogues.
    pub fn new(sku: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            sku: sku.into(),
            name: name.into(),
        }
    }
}

/// A subscription exactly as the partner API returns it, so tests can compare
/// what the bridge sent with what the partner holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Partner-assigned identifier (a UUID), never sent by the client.
    pub id: String,
    /// The client's own key (the ERP contract), unique across subscriptions.
    pub external_id: String,
    /// CPF (11 digits) or CNPJ (14 digits), digits only.
    pub document: String,
    /// Subscriber's name.
    pub name: String,
    /// Subscriber's e-mail.
    pub email: String,
    /// Subscriber's phone, when known.
    pub phone: Option<String>,
    /// SKUs granted by this subscription, in the order the client sent them.
    pub products: Vec<String>,
    /// `active`, `inactive` or `cancelled`; cancelled is terminal.
    pub status: String,
    /// RFC 3339 time of the last change that actually changed something.
    pub updated_at: String,
}

/// Simulated misbehaviour of the partner, adjustable while running so tests and
/// demos can provoke retries, outages and throttling on demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Probability (0..=1) that a partner call other than `/oauth/token` answers 503.
    pub error_rate: f64,
    /// Delay added before every partner call is handled.
    pub latency_ms: u64,
    /// When true every partner call, token included, answers 503, as in an outage.
    pub down: bool,
    /// Accepted partner calls allowed in any sliding one-second window; `None` is unlimited.
    pub rate_per_second: Option<u32>,
    /// When true every partner call, token included, answers 429, as a partner
    /// throttling everyone for a while.
    pub throttle_all: bool,
    /// The `Retry-After` a 429 carries, as real partners send it (`"1"`, `"0"`, an HTTP
    /// date); `None` sends none.
    pub retry_after: Option<String>,
    /// The token answer's `expires_in` is a string (`"3600"`), as some OAuth servers
    /// send it.
    pub expires_in_as_string: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            latency_ms: 0,
            down: false,
            rate_per_second: None,
            throttle_all: false,
            retry_after: Some("1".into()),
            expires_in_as_string: false,
        }
    }
}

impl Faults {
    /// Keeps a probability usable whatever a caller passed (NaN or out of range).
    pub(crate) fn sanitized(mut self) -> Self {
        self.error_rate = if self.error_rate.is_nan() {
            0.0
        } else {
            self.error_rate.clamp(0.0, 1.0)
        };
        self
    }
}

/// How a simulator starts: the one client it accepts, its catalogue and its
/// initial faults.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The only `client_id` that `/oauth/token` accepts.
    pub client_id: String,
    /// The secret that must accompany `client_id`.
    pub client_secret: String,
    /// Initial partner rate limit per sliding second; `None` is unlimited.
    pub rate_per_second: Option<u32>,
    /// Initial probability (0..=1) of a transient 503 on non-token calls.
    pub error_rate: f64,
    /// Initial delay added before each partner call.
    pub latency: Duration,
    /// How long an issued access token stays valid.
    pub token_ttl: Duration,
    /// The initial catalogue.
    pub products: Vec<Product>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            client_id: "demo-client".to_owned(),
            client_secret: "demo-secret".to_owned(),
            rate_per_second: None,
            error_rate: 0.0,
            latency: Duration::ZERO,
            token_ttl: Duration::from_secs(3600),
            products: default_catalogue(),
        }
    }
}

impl SimConfig {
    /// The faults a simulator starts with, derived from this configuration.
    pub(crate) fn faults(&self) -> Faults {
        Faults {
            error_rate: self.error_rate,
            latency_ms: u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
            rate_per_second: self.rate_per_second,
            ..Faults::default()
        }
        .sanitized()
    }
}

/// The catalogue the partner offers unless told otherwise.
pub fn default_catalogue() -> Vec<Product> {
    vec![
        Product::new("SKEELO-EBOOKS", "Skeelo Ebooks"),
        Product::new("SKEELO-AUDIOBOOKS", "Skeelo Audiobooks"),
        Product::new("SKEELO-MINIBOOKS", "Skeelo Minibooks"),
    ]
}
