//! The ERP's contract events (CONTRACT §1), parsed once at the edge.
//!
//! Everything past [`parse`] works with values that are valid by construction: a
//! [`Document`] has correct check digits, an [`Email`] is plausible, a [`Version`] is at
//! least 1 and the event's type agrees with its routing key. Invalid input becomes an
//! [`InvalidEvent`] that names the field and the reason, so the ERP can fix its side;
//! it is never retried, because sending the same bytes again cannot make them valid.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

pub use crate::ids::{ContractId, Sku};
use crate::mask;

/// The six things the ERP can do to a contract; each has its own routing key and queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// Create the subscription, or update its subscriber details and products.
    Sync,
    /// The contract is suspended (arrears): access removed until `reactivate`.
    Suspend,
    /// Clears a `suspend`.
    Reactivate,
    /// Terminal: the contract ends for good.
    Cancel,
    /// An operator blocks the subscriber by hand.
    Block,
    /// Clears a `block`.
    Unblock,
}

impl EventType {
    /// All types, in the order operators read them.
    pub const ALL: [EventType; 6] = [
        EventType::Sync,
        EventType::Suspend,
        EventType::Reactivate,
        EventType::Cancel,
        EventType::Block,
        EventType::Unblock,
    ];

    /// The name used in bodies, routing keys, queue names and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Sync => "sync",
            EventType::Suspend => "suspend",
            EventType::Reactivate => "reactivate",
            EventType::Cancel => "cancel",
            EventType::Block => "block",
            EventType::Unblock => "unblock",
        }
    }

    /// Parses a type name as it appears in a body or on the command line.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Reads the type from a routing key `contract.<type>`.
    pub fn from_routing_key(key: &str) -> Option<EventType> {
        key.strip_prefix("contract.").and_then(EventType::from_name)
    }

    /// The routing key the ERP publishes this type with.
    pub fn routing_key(self) -> String {
        format!("contract.{}", self.as_str())
    }

    /// Access-granting events (sync, reactivate, unblock) are the ones a customer waits for.
    pub fn grants_access(self) -> bool {
        matches!(
            self,
            EventType::Sync | EventType::Reactivate | EventType::Unblock
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message cannot be an event. `reason()` is a short, bounded code (a metric label
/// and the dead letter's reason); `Display` is the sentence the ERP team reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// The body is not UTF-8 JSON, or not a JSON object.
    #[error("body is not a UTF-8 JSON object: {0}")]
    NotJson(String),
    /// A required field is absent or null.
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    /// A field is present but breaks its rule.
    #[error("field `{field}` is invalid: {why}")]
    InvalidField {
        /// Path of the field, e.g. `contract.version`.
        field: &'static str,
        /// What the rule is, in words.
        why: String,
    },
    /// `subscriber.document` is not a CPF or CNPJ with valid check digits.
    #[error("field `subscriber.document` is not a valid CPF or CNPJ ({0})")]
    InvalidDocument(String),
    /// `subscriber.email` is not a plausible address.
    #[error("field `subscriber.email` is not a plausible e-mail address")]
    InvalidEmail,
    /// The routing key is not `contract.<type>` for a known type.
    #[error("routing key `{0}` is not contract.<sync|suspend|reactivate|cancel|block|unblock>")]
    UnknownRoutingKey(String),
    /// The body's `type` disagrees with the routing key it was published with.
    #[error("body type `{body}` does not match routing key `{routing_key}`")]
    TypeMismatch {
        /// The body's `type`.
        body: String,
        /// The routing key the message came with.
        routing_key: String,
    },
    /// One or more products are not in Skeelo's catalogue.
    #[error("unknown product(s) not in Skeelo's catalogue: {}", .0.iter().map(Sku::as_str).collect::<Vec<_>>().join(", "))]
    UnknownProduct(Vec<Sku>),
}

impl InvalidEvent {
    /// A short code from a fixed set, safe as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidEvent::NotJson(_) => "not_json",
            InvalidEvent::MissingField(_) => "missing_field",
            InvalidEvent::InvalidField { .. } => "invalid_field",
            InvalidEvent::InvalidDocument(_) => "invalid_document",
            InvalidEvent::InvalidEmail => "invalid_email",
            InvalidEvent::UnknownRoutingKey(_) => "unknown_routing_key",
            InvalidEvent::TypeMismatch { .. } => "type_mismatch",
            InvalidEvent::UnknownProduct(_) => "unknown_product",
        }
    }
}

/// The ERP's contract version: grows with every change the ERP makes to a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Version(i64);

impl Version {
    /// Accepts integers ≥ 1.
    pub fn new(v: i64) -> Option<Version> {
        (v >= 1).then_some(Version(v))
    }

    /// The number, for storage.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Version {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, Self::Error> {
        Version::new(v).ok_or_else(|| format!("version {v} is below 1"))
    }
}

impl From<Version> for i64 {
    fn from(v: Version) -> i64 {
        v.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A CPF (11 digits) or CNPJ (14 digits) with valid check digits, kept as digits only
/// (the form Skeelo wants). `Debug` and `Display` mask it, so it never reaches a log whole.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Document(String);

impl Document {
    /// Accepts punctuation (`.`, `-`, `/`, spaces) around the digits.
    pub fn parse(raw: &str) -> Result<Document, String> {
        let mut digits = String::with_capacity(14);
        for c in raw.chars() {
            match c {
                '0'..='9' => digits.push(c),
                '.' | '-' | '/' | ' ' => {}
                _ => return Err("only digits and . - / are allowed".into()),
            }
        }
        let d: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
        let ok = match d.len() {
            11 => cpf_ok(&d),
            14 => cnpj_ok(&d),
            n => return Err(format!("{n} digits; a CPF has 11 and a CNPJ 14")),
        };
        if !ok {
            return Err("check digits do not match".into());
        }
        if d.iter().all(|&x| x == d[0]) {
            return Err("all digits are equal".into());
        }
        Ok(Document(digits))
    }

    /// The digits, for Skeelo and the database only.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

fn cpf_ok(d: &[u32]) -> bool {
    let check = |n: usize| {
        let sum: u32 = (0..n).map(|i| d[i] * (n as u32 + 1 - i as u32)).sum();
        let r = (sum * 10) % 11;
        if r == 10 {
            0
        } else {
            r
        }
    };
    check(9) == d[9] && check(10) == d[10]
}

fn cnpj_ok(d: &[u32]) -> bool {
    const W1: [u32; 12] = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    const W2: [u32; 13] = [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
    let check = |w: &[u32]| {
        let sum: u32 = w.iter().zip(d).map(|(w, x)| w * x).sum();
        let r = sum % 11;
        if r < 2 {
            0
        } else {
            11 - r
        }
    };
    check(&W1) == d[12] && check(&W2) == d[13]
}

impl TryFrom<String> for Document {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Document::parse(&s)
    }
}

impl From<Document> for String {
    fn from(d: Document) -> String {
        d.0
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask::document(&self.0))
    }
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask::document(&self.0))
    }
}

/// A plausible e-mail address (one `@`, a dotted domain, no spaces). Masked in `Debug`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// Plausible, not verified: Skeelo and the ERP own verification.
    pub fn parse(raw: &str) -> Option<Email> {
        let s = raw.trim();
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (local, domain) = s.split_once('@')?;
        let labels_ok = domain
            .split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
        let plausible = !local.is_empty()
            && local.len() <= 64
            && !domain.contains('@')
            && domain.contains('.')
            && labels_ok;
        plausible.then(|| Email(s.to_string()))
    }

    /// The address, for Skeelo and the database only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An address as Skeelo stored it: taken as it is, since only our own input is
    /// validated; comparing it with ours is what matters.
    pub fn from_partner(s: &str) -> Email {
        Email(s.to_string())
    }
}

impl TryFrom<String> for Email {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Email::parse(&s).ok_or_else(|| "not a plausible e-mail address".into())
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask::email(&self.0))
    }
}

/// A phone number as the ERP typed it (8 to 15 digits with `+ ( ) - .` and spaces).
/// Masked in `Debug`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Phone(String);

impl Phone {
    /// Checks the shape only; Skeelo stores it as given.
    pub fn parse(raw: &str) -> Option<Phone> {
        let s = raw.trim();
        let allowed = s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '(' | ')' | '-' | '.' | ' '));
        let digits = s.chars().filter(char::is_ascii_digit).count();
        (allowed && (8..=15).contains(&digits)).then(|| Phone(s.to_string()))
    }

    /// The number, for Skeelo and the database only.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A number as Skeelo stored it (see [`Email::from_partner`]).
    pub fn from_partner(s: &str) -> Phone {
        Phone(s.to_string())
    }
}

impl TryFrom<String> for Phone {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Phone::parse(&s).ok_or_else(|| "not a phone number".into())
    }
}

impl From<Phone> for String {
    fn from(p: Phone) -> String {
        p.0
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask::phone(&self.0))
    }
}

/// The person behind the contract, as Skeelo needs them. `Debug` masks the name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    /// The ERP's customer id (kept for operators; Skeelo keys by contract).
    pub id: String,
    /// Full name.
    pub name: String,
    /// CPF or CNPJ, digits only.
    pub document: Document,
    /// Contact address.
    pub email: Email,
    /// Optional contact number.
    pub phone: Option<Phone>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .field("name", &mask::name(&self.name))
            .field("document", &self.document)
            .field("email", &self.email)
            .field("phone", &self.phone)
            .finish()
    }
}

/// The SVA plan the contract is on (kept for operators; Skeelo only sees the products).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The ERP's plan code.
    pub code: String,
    /// Contract length in months.
    pub months: u32,
    /// Monthly price as a decimal string, exactly as the ERP sent it.
    pub monthly_value: String,
}

/// What a `sync` carries: who the subscriber is and which products the plan gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDetails {
    /// The plan (not sent to Skeelo).
    pub plan: Plan,
    /// Skeelo SKUs, sorted and without repeats, so equal sets compare equal.
    pub products: Vec<Sku>,
    /// The subscriber.
    pub subscriber: Subscriber,
}

/// A valid event from the ERP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The idempotency key.
    pub event_id: Uuid,
    /// What the ERP did.
    pub event_type: EventType,
    /// When the ERP did it.
    pub occurred_at: OffsetDateTime,
    /// The ERP contract id (Skeelo's `external_id`).
    pub contract_id: ContractId,
    /// The contract's version after this change.
    pub version: Version,
    /// Present on every `sync`; ignored on other types.
    pub sync: Option<SyncDetails>,
    /// Who acted in the ERP, for the audit trail.
    pub actor: Option<String>,
}

/// Why a body cannot be read as JSON before trying, when the reason is a known one: a
/// declared encoding, compressed bytes, a byte-order mark, nothing at all.
fn not_plain_json(content_encoding: Option<&str>, body: &[u8]) -> Option<String> {
    let encoding = content_encoding.map(str::trim).unwrap_or("");
    if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
        return Some(format!(
            "the message declares content-encoding `{encoding}`, which the fleet does not read: publish the JSON as it is, without content-encoding"
        ));
    }
    if body.starts_with(&[0x1f, 0x8b]) {
        return Some(
            "the body is gzip-compressed (it starts with 1f 8b): publish the JSON uncompressed"
                .into(),
        );
    }
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Some("the body starts with a UTF-8 byte-order mark (ef bb bf), which JSON does not allow: publish it without one".into());
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some("the body is empty".into());
    }
    None
}

/// Longest contract id accepted (CONTRACT §1).
pub const MAX_CONTRACT_ID_LEN: usize = crate::ids::MAX_ID_LEN;

/// Parses and validates one message from the ERP. The routing key is the one the broker
/// delivered the message with; the body's `type` must agree with it.
pub fn parse(routing_key: &str, body: &[u8]) -> Result<Event, InvalidEvent> {
    parse_encoded(routing_key, None, body)
}

/// [`parse`], for a message whose publisher declared a `content_encoding`: the fleet
/// reads plain JSON only, and says so rather than report the bytes as broken JSON.
pub fn parse_encoded(
    routing_key: &str,
    content_encoding: Option<&str>,
    body: &[u8],
) -> Result<Event, InvalidEvent> {
    let key_type = EventType::from_routing_key(routing_key)
        .ok_or_else(|| InvalidEvent::UnknownRoutingKey(routing_key.to_string()))?;
    if let Some(why) = not_plain_json(content_encoding, body) {
        return Err(InvalidEvent::NotJson(why));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| InvalidEvent::NotJson(e.to_string()))?;
    let Value::Object(root) = value else {
        return Err(InvalidEvent::NotJson(
            "the top level is not an object".into(),
        ));
    };

    let event_id = {
        let raw = req_str(&root, "event_id", "event_id")?;
        Uuid::parse_str(raw).map_err(|_| invalid("event_id", "not a UUID"))?
    };
    let type_name = req_str(&root, "type", "type")?;
    let event_type = EventType::from_name(type_name)
        .ok_or_else(|| invalid("type", format!("`{type_name}` is not a known event type")))?;
    if event_type != key_type {
        return Err(InvalidEvent::TypeMismatch {
            body: type_name.to_string(),
            routing_key: routing_key.to_string(),
        });
    }
    let occurred_at =
        OffsetDateTime::parse(req_str(&root, "occurred_at", "occurred_at")?, &Rfc3339)
            .map_err(|_| invalid("occurred_at", "not an RFC 3339 timestamp"))?;

    let contract = req_obj(&root, "contract", "contract")?;
    let contract_id = ContractId::parse(req_str(contract, "id", "contract.id")?)
        .map_err(|why| invalid("contract.id", why))?;
    let version = match present(contract, "version") {
        None => return Err(InvalidEvent::MissingField("contract.version")),
        Some(v) => v
            .as_i64()
            .and_then(Version::new)
            .ok_or_else(|| invalid("contract.version", "must be an integer ≥ 1"))?,
    };

    // Plan, products and subscriber matter only to a sync; on other types they are
    // ignored, so a stale CPF carried by a cancel can never keep a customer's access.
    let sync = match event_type {
        EventType::Sync => Some(SyncDetails {
            plan: opt_plan(contract)?.ok_or(InvalidEvent::MissingField("contract.plan"))?,
            products: opt_products(contract)?
                .ok_or(InvalidEvent::MissingField("contract.products"))?,
            subscriber: opt_subscriber(&root)?.ok_or(InvalidEvent::MissingField("subscriber"))?,
        }),
        _ => None,
    };
    let actor = match present(&root, "actor") {
        None => None,
        Some(Value::String(s)) => Some(non_empty(s, "actor", 128)?),
        Some(_) => return Err(invalid("actor", "must be a string")),
    };

    Ok(Event {
        event_id,
        event_type,
        occurred_at,
        contract_id,
        version,
        sync,
        actor,
    })
}

/// Reads the `event_id` of a body that may be otherwise invalid, so even a rejected
/// message's result can name the event the ERP sent.
pub fn peek_event_id(body: &[u8]) -> Option<Uuid> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        event_id: Option<&'a str>,
    }
    serde_json::from_slice::<Peek<'_>>(body)
        .ok()?
        .event_id
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// Reads the contract id of a body that may be otherwise invalid (for the history).
pub fn peek_contract_id(body: &[u8]) -> Option<ContractId> {
    let v: Value = serde_json::from_slice(body).ok()?;
    ContractId::parse(v.get("contract")?.get("id")?.as_str()?).ok()
}

fn invalid(field: &'static str, why: impl Into<String>) -> InvalidEvent {
    InvalidEvent::InvalidField {
        field,
        why: why.into(),
    }
}

/// A field that is there and not null.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn req_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'a str, InvalidEvent> {
    match present(obj, key) {
        None => Err(InvalidEvent::MissingField(path)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(path, "must be a string")),
    }
}

fn req_obj<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'a Map<String, Value>, InvalidEvent> {
    match present(obj, key) {
        None => Err(InvalidEvent::MissingField(path)),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(invalid(path, "must be an object")),
    }
}

fn non_empty(s: &str, path: &'static str, max: usize) -> Result<String, InvalidEvent> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max {
        return Err(invalid(path, format!("must be 1 to {max} characters")));
    }
    if t.chars().any(char::is_control) {
        return Err(invalid(path, "must not contain control characters"));
    }
    Ok(t.to_string())
}

fn opt_plan(contract: &Map<String, Value>) -> Result<Option<Plan>, InvalidEvent> {
    if present(contract, "plan").is_none() {
        return Ok(None);
    }
    let plan = req_obj(contract, "plan", "contract.plan")?;
    let code = non_empty(
        req_str(plan, "code", "contract.plan.code")?,
        "contract.plan.code",
        64,
    )?;
    let months = match present(plan, "months") {
        None => return Err(InvalidEvent::MissingField("contract.plan.months")),
        Some(v) => v
            .as_u64()
            .filter(|m| (1..=600).contains(m))
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| invalid("contract.plan.months", "must be an integer from 1 to 600"))?,
    };
    let monthly_value = match present(plan, "monthly_value") {
        None => return Err(InvalidEvent::MissingField("contract.plan.monthly_value")),
        Some(Value::String(s)) if is_money(s) => s.clone(),
        Some(Value::Number(n)) if is_money(&n.to_string()) => n.to_string(),
        Some(_) => {
            return Err(invalid(
                "contract.plan.monthly_value",
                "must be a decimal such as \"9.90\"",
            ))
        }
    };
    Ok(Some(Plan {
        code,
        months,
        monthly_value,
    }))
}

fn is_money(s: &str) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    !int.is_empty()
        && int.len() <= 9
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 2
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(s.contains('.') && frac.is_empty())
}

fn opt_products(contract: &Map<String, Value>) -> Result<Option<Vec<Sku>>, InvalidEvent> {
    let Some(value) = present(contract, "products") else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(invalid("contract.products", "must be a list of SKUs"));
    };
    if items.is_empty() {
        return Err(invalid("contract.products", "must not be empty"));
    }
    if items.len() > 32 {
        return Err(invalid("contract.products", "has more than 32 entries"));
    }
    let mut skus = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str().map(Sku::parse) {
            Some(Ok(sku)) => skus.push(sku),
            _ => {
                return Err(invalid(
                    "contract.products",
                    "every entry must be a non-empty SKU string",
                ))
            }
        }
    }
    skus.sort();
    skus.dedup();
    Ok(Some(skus))
}

fn opt_subscriber(root: &Map<String, Value>) -> Result<Option<Subscriber>, InvalidEvent> {
    if present(root, "subscriber").is_none() {
        return Ok(None);
    }
    let sub = req_obj(root, "subscriber", "subscriber")?;
    let id = match present(sub, "id") {
        None => return Err(InvalidEvent::MissingField("subscriber.id")),
        Some(Value::String(s)) => non_empty(s, "subscriber.id", 64)?,
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(invalid("subscriber.id", "must be a string")),
    };
    let name = non_empty(
        req_str(sub, "name", "subscriber.name")?,
        "subscriber.name",
        200,
    )?;
    let document = Document::parse(req_str(sub, "document", "subscriber.document")?)
        .map_err(InvalidEvent::InvalidDocument)?;
    let email = Email::parse(req_str(sub, "email", "subscriber.email")?)
        .ok_or(InvalidEvent::InvalidEmail)?;
    let phone = match present(sub, "phone") {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(
            Phone::parse(s)
                .ok_or_else(|| invalid("subscriber.phone", "must have 8 to 15 digits"))?,
        ),
        Some(_) => return Err(invalid("subscriber.phone", "must be a string")),
    };
    Ok(Some(Subscriber {
        id,
        name,
        document,
        email,
        phone,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sync_body() -> Value {
        json!({
            "event_id": "0b6f3c1e-8a4e-4c59-9a57-3f0c2d1e9b10",
            "type": "sync",
            "occurred_at": "2026-11-28T14:03:11.250Z",
            "contract": {
                "id": "48213", "version": 3,
                "plan": { "code": "SVA-LEITURA", "months": 12, "monthly_value": "9.90" },
                "products": ["SKEELO-EBOOKS", "SKEELO-AUDIOBOOKS"]
            },
            "subscriber": {
                "id": "10077", "name": "Maria da Silva", "document": "529.982.247-25",
                "email": "maria@example.com.br", "phone": "+55 11 98765-4321"
            },
            "actor": "operador.joao",
            "some_future_field": true
        })
    }

    fn parse_value(key: &str, v: &Value) -> Result<Event, InvalidEvent> {
        parse(key, v.to_string().as_bytes())
    }

    #[test]
    fn the_contract_example_parses() {
        let e = parse_value("contract.sync", &sync_body()).expect("valid");
        assert_eq!(e.event_type, EventType::Sync);
        assert_eq!(e.contract_id, "48213");
        assert_eq!(e.version.get(), 3);
        let s = e.sync.expect("sync details");
        assert_eq!(s.products, vec!["SKEELO-AUDIOBOOKS", "SKEELO-EBOOKS"]);
        assert_eq!(s.subscriber.document.digits(), "52998224725");
        assert_eq!(s.plan.monthly_value, "9.90");
        assert_eq!(e.actor.as_deref(), Some("operador.joao"));
    }

    #[test]
    fn each_rule_has_its_reason() {
        type Case = (&'static str, Box<dyn Fn(&mut Value)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                "contract.sync",
                Box::new(|v| v["subscriber"]["document"] = json!("529.982.247-26")),
                "invalid_document",
            ),
            (
                "contract.sync",
                Box::new(|v| v["subscriber"]["document"] = json!("111.111.111-11")),
                "invalid_document",
            ),
            (
                "contract.sync",
                Box::new(|v| v["subscriber"]["document"] = json!("1234")),
                "invalid_document",
            ),
            (
                "contract.sync",
                Box::new(|v| v["subscriber"]["email"] = json!("maria@")),
                "invalid_email",
            ),
            (
                "contract.sync",
                Box::new(|v| {
                    v["contract"]
                        .as_object_mut()
                        .map(|c| c.remove("version"))
                        .map(drop)
                        .unwrap_or(())
                }),
                "missing_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["contract"]["version"] = json!(0)),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["contract"]["version"] = json!("3")),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["contract"]["version"] = json!(2.5)),
                "invalid_field",
            ),
            ("contract.suspend", Box::new(|_| {}), "type_mismatch"),
            ("contract.other", Box::new(|_| {}), "unknown_routing_key"),
            (
                "contract.sync",
                Box::new(|v| v["event_id"] = json!("not-a-uuid")),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["occurred_at"] = json!("yesterday")),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["contract"]["products"] = json!([])),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["contract"]["id"] = json!("")),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["contract"]["id"] = json!("x".repeat(65))),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["subscriber"] = Value::Null),
                "missing_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["contract"]["plan"]["monthly_value"] = json!("9,90")),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["subscriber"]["name"] = json!("Maria\u{0}da Silva")),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["contract"]["id"] = json!("48\u{0}213")),
                "invalid_field",
            ),
            (
                "contract.sync",
                Box::new(|v| v["actor"] = json!("op\u{7}")),
                "invalid_field",
            ),
        ];
        for (key, mutate, reason) in cases {
            let mut body = sync_body();
            mutate(&mut body);
            let err = parse_value(key, &body).expect_err("must be invalid");
            assert_eq!(err.reason(), reason, "{err}");
        }
    }

    #[test]
    fn a_body_that_is_not_plain_json_says_why() {
        let sync = br#"{"event_id": "x"}"#;
        let cases: [(Option<&str>, Vec<u8>, &str); 5] = [
            (
                Some("gzip"),
                sync.to_vec(),
                "declares content-encoding `gzip`",
            ),
            (None, vec![0x1f, 0x8b, 8, 0], "gzip-compressed"),
            (
                None,
                [&b"\xEF\xBB\xBF"[..], sync].concat(),
                "byte-order mark",
            ),
            (None, b"  ".to_vec(), "the body is empty"),
            (Some("identity"), b"{oops".to_vec(), "key must be a string"),
        ];
        for (encoding, body, why) in cases {
            let err = parse_encoded("contract.sync", encoding, &body).unwrap_err();
            assert_eq!(err.reason(), "not_json");
            assert!(err.to_string().contains(why), "{encoding:?}: {err}");
        }
    }

    #[test]
    fn not_json_is_named() {
        assert_eq!(
            parse("contract.sync", b"{oops").unwrap_err().reason(),
            "not_json"
        );
        assert_eq!(
            parse("contract.sync", b"[1,2]").unwrap_err().reason(),
            "not_json"
        );
        assert_eq!(
            parse("contract.sync", &[0xff, 0xfe]).unwrap_err().reason(),
            "not_json"
        );
    }

    #[test]
    fn other_types_need_no_sync_details() {
        let body = json!({
            "event_id": "0b6f3c1e-8a4e-4c59-9a57-3f0c2d1e9b11", "type": "suspend",
            "occurred_at": "2026-11-28T14:03:11Z", "contract": { "id": "48213", "version": 4 }
        });
        let e = parse_value("contract.suspend", &body).expect("valid");
        assert_eq!(e.event_type, EventType::Suspend);
        assert!(e.sync.is_none());
    }

    #[test]
    fn a_cancel_is_never_refused_for_a_stale_subscriber_block() {
        let mut body = sync_body();
        body["type"] = json!("cancel");
        body["subscriber"]["document"] = json!("529.982.247-26");
        let e = parse_value("contract.cancel", &body).expect("valid: the subscriber is not read");
        assert_eq!(e.event_type, EventType::Cancel);
        assert!(e.sync.is_none());
    }

    #[test]
    fn documents_follow_their_check_digits() {
        assert!(Document::parse("52998224725").is_ok());
        assert!(Document::parse("11.222.333/0001-81").is_ok());
        assert!(Document::parse("11.222.333/0001-82").is_err());
        assert!(Document::parse("00000000000").is_err());
        assert!(Document::parse("5299822472a").is_err());
    }

    #[test]
    fn personal_data_is_masked_in_debug() {
        let e = parse_value("contract.sync", &sync_body()).expect("valid");
        let dbg = format!("{e:?}");
        assert!(!dbg.contains("52998224725"), "{dbg}");
        assert!(!dbg.contains("maria@example.com.br"), "{dbg}");
        assert!(!dbg.contains("98765-4321"), "{dbg}");
    }

    #[test]
    fn peeks_read_broken_bodies() {
        let id = peek_event_id(br#"{"event_id":"0b6f3c1e-8a4e-4c59-9a57-3f0c2d1e9b10","type":1}"#);
        assert!(id.is_some());
        assert_eq!(peek_event_id(b"nope"), None);
        assert_eq!(
            peek_contract_id(br#"{"contract":{"id":" 7 "}}"#).map(String::from),
            Some("7".to_string())
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse("contract.sync", &bytes);
        }

        /// Valid bodies with random damage: every answer is a valid event or a typed
        /// error with a reason from the fixed set, never a panic.
        #[test]
        fn damaged_bodies_get_a_typed_answer(
            damage in proptest::collection::vec((0usize..12, any_json()), 1..6),
            key in proptest::sample::select(vec!["contract.sync", "contract.cancel", "contract.block", "nope"]),
        ) {
            let mut body = sync_body();
            if let Some(t) = key.strip_prefix("contract.") {
                body["type"] = json!(t);
            }
            let paths = ["/event_id", "/type", "/occurred_at", "/contract/id", "/contract/version",
                "/contract/products", "/contract/plan", "/subscriber/document", "/subscriber/email",
                "/subscriber/name", "/actor", "/subscriber"];
            for (field, value) in damage {
                // A path that an earlier change removed is simply not there any more.
                if let Some(slot) = body.pointer_mut(paths[field % paths.len()]) {
                    *slot = value;
                }
            }
            match parse(key, body.to_string().as_bytes()) {
                Ok(e) => {
                    proptest::prop_assert!(e.version.get() >= 1);
                    proptest::prop_assert!(!e.contract_id.as_str().is_empty());
                    proptest::prop_assert_eq!(Some(e.event_type), EventType::from_routing_key(key));
                    if let Some(s) = &e.sync {
                        proptest::prop_assert!(Document::parse(s.subscriber.document.digits()).is_ok());
                        proptest::prop_assert!(!s.products.is_empty());
                    }
                }
                Err(err) => {
                    let known = ["not_json", "missing_field", "invalid_field", "invalid_document",
                        "invalid_email", "unknown_routing_key", "type_mismatch", "unknown_product"];
                    proptest::prop_assert!(known.contains(&err.reason()));
                    proptest::prop_assert!(!err.to_string().is_empty());
                }
            }
        }
    }

    /// Any JSON value, with strings that include control characters and odd Unicode.
    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,40}".prop_map(Value::from),
            Just(json!("529.982.247-25")),
            Just(json!("a@b.co")),
            Just(json!(["SKEELO-EBOOKS"])),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
