//! The partner's subscription rules: validation, the status life cycle and the
//! detection of calls a correct client never makes.

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{ApiError, Outcome, Reply};
use crate::fields;
use crate::model::Subscription;
use crate::state::{Operation, State};

const ACTIVE: &str = "active";
const INACTIVE: &str = "inactive";
const CANCELLED: &str = "cancelled";

impl State {
    /// `GET /v1/products`.
    pub(crate) fn list_products(&self) -> Outcome {
        Ok(Reply::ok(json!({ "products": self.catalogue })))
    }

    /// `POST /v1/subscriptions`.
    pub(crate) fn create_subscription(&mut self, body: &[u8]) -> Outcome {
        let map = fields::object(body)?;
        let external_id = fields::required_text(&map, "external_id")?;
        let document = fields::required_text(&map, "document")?;
        let name = fields::required_text(&map, "name")?;
        let email = fields::required_text(&map, "email")?;
        let phone = fields::text(&map, "phone")?;
        let products = fields::text_list(&map, "products")?
            .ok_or_else(|| ApiError::invalid_request("products is required"))?;
        if !valid_document(&document) {
            return Err(ApiError::invalid_document());
        }
        let products = self.checked_products(products)?;
        if self.subscriptions.contains_key(&external_id) {
            return Err(ApiError::already_exists(&external_id));
        }
        let subscription = Subscription {
            id: uuid::Uuid::new_v4().to_string(),
            external_id: external_id.clone(),
            document,
            name,
            email,
            phone,
            products,
            status: ACTIVE.to_owned(),
            updated_at: now_rfc3339(),
        };
        let body = to_json(&subscription);
        self.subscriptions.insert(external_id, subscription);
        Ok(Reply::created(body))
    }

    /// `GET /v1/subscriptions/{external_id}`.
    pub(crate) fn get_subscription(&self, external_id: &str) -> Outcome {
        self.subscriptions
            .get(external_id)
            .map(|subscription| Reply::ok(to_json(subscription)))
            .ok_or_else(|| ApiError::subscription_not_found(external_id))
    }

    /// `PATCH /v1/subscriptions/{external_id}`.
    pub(crate) fn update_subscription(&mut self, external_id: &str, body: &[u8]) -> Outcome {
        let map = fields::object(body)?;
        let name = fields::optional_text(&map, "name")?;
        let email = fields::optional_text(&map, "email")?;
        let phone = fields::nullable_text(&map, "phone")?;
        let products = fields::text_list(&map, "products")?;
        let current = self.existing(external_id)?;
        if current.status == CANCELLED {
            return Err(ApiError::cancelled(external_id));
        }
        let mut next = current.clone();
        if let Some(products) = products {
            next.products = self.checked_products(products)?;
        }
        if let Some(name) = name {
            next.name = name;
        }
        if let Some(email) = email {
            next.email = email;
        }
        if let Some(phone) = phone {
            next.phone = phone;
        }
        self.store_change(
            Operation::UpdateSubscription,
            current,
            next,
            "PATCH changes nothing",
        )
    }

    /// `PUT /v1/subscriptions/{external_id}/status`.
    pub(crate) fn set_status(&mut self, external_id: &str, body: &[u8]) -> Outcome {
        let map = fields::object(body)?;
        let status = fields::text(&map, "status")?
            .filter(|status| [ACTIVE, INACTIVE, CANCELLED].contains(&status.as_str()))
            .ok_or_else(|| {
                ApiError::invalid_request("status must be one of active, inactive, cancelled")
            })?;
        let current = self.existing(external_id)?;
        if current.status == CANCELLED {
            return Err(ApiError::cancelled(external_id));
        }
        let mut next = current.clone();
        next.status = status;
        self.store_change(
            Operation::SetStatus,
            current,
            next,
            "status is already the one requested",
        )
    }

    fn existing(&self, external_id: &str) -> Result<Subscription, ApiError> {
        self.subscriptions
            .get(external_id)
            .cloned()
            .ok_or_else(|| ApiError::subscription_not_found(external_id))
    }

    /// Saves `next` if it differs from `current`; an unchanged write is answered
    /// normally but recorded as an anomaly, since a correct client diffs first.
    fn store_change(
        &mut self,
        op: Operation,
        current: Subscription,
        mut next: Subscription,
        noop: &str,
    ) -> Outcome {
        if next == current {
            self.anomaly(format!("{op}: {:?}: {noop}", current.external_id));
            return Ok(Reply::ok(to_json(&current)));
        }
        next.updated_at = now_rfc3339();
        let body = to_json(&next);
        self.subscriptions.insert(next.external_id.clone(), next);
        Ok(Reply::ok(body))
    }

    /// Refuses an empty list or an SKU outside the catalogue; drops repeats.
    fn checked_products(&self, products: Vec<String>) -> Result<Vec<String>, ApiError> {
        if products.is_empty() {
            return Err(ApiError::invalid_request("products must not be empty"));
        }
        let mut unique: Vec<String> = Vec::with_capacity(products.len());
        for sku in products {
            if !self.catalogue.iter().any(|product| product.sku == sku) {
                return Err(ApiError::unknown_product(&sku));
            }
            if !unique.contains(&sku) {
                unique.push(sku);
            }
        }
        Ok(unique)
    }
}

/// CPF or CNPJ: 11 or 14 ASCII digits, nothing else.
pub(crate) fn valid_document(document: &str) -> bool {
    matches!(document.len(), 11 | 14) && document.bytes().all(|byte| byte.is_ascii_digit())
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

pub(crate) fn to_json(subscription: &Subscription) -> Value {
    serde_json::to_value(subscription).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SimConfig;

    fn create_body(external_id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "external_id": external_id,
            "document": "12345678901",
            "name": "Ana",
            "email": "ana@example.com",
            "phone": null,
            "products": ["SKEELO-EBOOKS", "SKEELO-EBOOKS"],
        }))
        .expect("serializable")
    }

    #[test]
    fn documents_are_11_or_14_digits() {
        assert!(valid_document("12345678901"));
        assert!(valid_document("12345678000190"));
        assert!(!valid_document("123.456.789-01"));
        assert!(!valid_document("1234567890"));
        assert!(!valid_document("١٢٣٤٥٦٧٨٩٠١"));
    }

    #[test]
    fn create_then_noop_patch_is_an_anomaly() {
        let mut state = State::new(SimConfig::default());
        let created = state
            .create_subscription(&create_body("c-1"))
            .expect("created");
        assert_eq!(created.body["status"], "active");
        assert_eq!(created.body["products"], json!(["SKEELO-EBOOKS"]));
        let dup = state
            .create_subscription(&create_body("c-1"))
            .expect_err("dup");
        assert_eq!(dup.code, "already_exists");
        assert!(state.anomalies.is_empty());
        let same = state
            .update_subscription("c-1", br#"{"name": "Ana"}"#)
            .expect("answered");
        assert_eq!(same.body["name"], "Ana");
        assert_eq!(state.anomalies.len(), 1);
        let changed = state
            .update_subscription("c-1", br#"{"phone": "5511999990000"}"#)
            .expect("answered");
        assert_eq!(changed.body["phone"], "5511999990000");
        assert_eq!(state.anomalies.len(), 1);
    }

    #[test]
    fn cancelled_is_terminal() {
        let mut state = State::new(SimConfig::default());
        state
            .create_subscription(&create_body("c-2"))
            .expect("created");
        state
            .set_status("c-2", br#"{"status": "cancelled"}"#)
            .expect("cancelled");
        let again = state
            .set_status("c-2", br#"{"status": "active"}"#)
            .expect_err("terminal");
        assert_eq!(again.code, "subscription_cancelled");
        let patch = state
            .update_subscription("c-2", br#"{"name": "B"}"#)
            .expect_err("terminal");
        assert_eq!(patch.code, "subscription_cancelled");
    }

    #[test]
    fn bad_inputs_are_refused_without_panicking() {
        let mut state = State::new(SimConfig::default());
        for body in [
            &b"{"[..],
            br#"{"external_id": "", "document": "12345678901", "name": "A", "email": "e", "products": ["SKEELO-EBOOKS"]}"#,
            br#"{"external_id": "x", "document": "12345678901", "name": "A", "email": "e", "products": []}"#,
            br#"{"external_id": "x", "document": 1, "name": "A", "email": "e", "products": ["SKEELO-EBOOKS"]}"#,
        ] {
            let err = state.create_subscription(body).expect_err("refused");
            assert_eq!(err.code, "invalid_request");
        }
        let err = state
            .set_status("nope", br#"{"status": "paused"}"#)
            .expect_err("bad status");
        assert_eq!(err.code, "invalid_request");
        let err = state
            .set_status("nope", br#"{"status": "active"}"#)
            .expect_err("missing");
        assert_eq!(err.code, "not_found");
    }
}
