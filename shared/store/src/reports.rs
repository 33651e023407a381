//! What operators read about contracts (`skeelo-ops subscribers`, `check`): the
//! queries live here, beside the schema they read.

use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// Contracts by the state the ERP's screens show ("Assinantes ativos", "cancelados ou
/// suspensos").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubscriberState {
    /// Synced, not suspended, not blocked, not cancelled.
    Active,
    /// Suspended by the ERP (arrears).
    Suspended,
    /// Blocked by hand.
    Blocked,
    /// Cancelled for good.
    Cancelled,
    /// Events arrived, but the contract's sync has not.
    AwaitingSync,
    /// Every contract.
    All,
}

impl SubscriberState {
    fn condition(self) -> &'static str {
        match self {
            SubscriberState::Active => "synced AND NOT cancelled AND NOT suspended AND NOT blocked",
            SubscriberState::Suspended => "synced AND suspended AND NOT cancelled",
            SubscriberState::Blocked => "synced AND blocked AND NOT cancelled",
            SubscriberState::Cancelled => "cancelled",
            SubscriberState::AwaitingSync => "NOT synced AND NOT cancelled",
            SubscriberState::All => "true",
        }
    }
}

/// One subscriber as the fleet records it (personal data unmasked: the caller masks).
#[derive(Debug, Clone)]
pub struct SubscriberRow {
    /// The ERP contract.
    pub contract_id: String,
    /// The ERP subscriber.
    pub subscriber_id: Option<String>,
    /// Name, from the last sync.
    pub name: Option<String>,
    /// E-mail, from the last sync.
    pub email: Option<String>,
    /// `active`, `suspended`, `blocked`, `suspended+blocked`, `cancelled`, `awaiting-sync`.
    pub state: String,
    /// What Skeelo last answered.
    pub skeelo_status: Option<String>,
    /// The products of the last sync.
    pub products: Vec<String>,
    /// Last change, RFC 3339 in UTC.
    pub updated_at: String,
}

impl Store {
    /// Subscribers in any of `states`, most recently changed first.
    pub async fn subscribers(
        &self,
        states: &[SubscriberState],
        limit: i64,
    ) -> Result<Vec<SubscriberRow>, StoreError> {
        let client = self.pool.get().await?;
        let condition = if states.is_empty() {
            "true".to_string()
        } else {
            states
                .iter()
                .map(|s| format!("({})", s.condition()))
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        let sql = format!(
            "SELECT id, subscriber_id,
                    facts #>> '{{synced,details,subscriber,name}}',
                    facts #>> '{{synced,details,subscriber,email}}',
                    CASE WHEN cancelled THEN 'cancelled' WHEN NOT synced THEN 'awaiting-sync'
                         WHEN suspended AND blocked THEN 'suspended+blocked'
                         WHEN suspended THEN 'suspended' WHEN blocked THEN 'blocked' ELSE 'active' END,
                    skeelo_status,
                    COALESCE(ARRAY(SELECT jsonb_array_elements_text(facts #> '{{synced,details,products}}')), '{{}}'),
                    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
             FROM contracts WHERE {condition} ORDER BY updated_at DESC, id LIMIT $1"
        );
        let rows = client.query(&sql, &[&limit.max(1)]).await?;
        Ok(rows
            .iter()
            .map(|r| SubscriberRow {
                contract_id: r.get(0),
                subscriber_id: r.get(1),
                name: r.get(2),
                email: r.get(3),
                state: r.get(4),
                skeelo_status: r.get(5),
                products: r.get(6),
                updated_at: r.get(7),
            })
            .collect())
    }

    /// The contracts whose latest sync names this CPF or CNPJ (digits only), most
    /// recently changed first. The document is a parameter, never part of the SQL text,
    /// so it reaches no statement log.
    pub async fn contracts_by_document(&self, digits: &str) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id FROM contracts
                 WHERE facts #>> '{synced,details,subscriber,document}' = $1
                 ORDER BY updated_at DESC, id",
                &[&digits],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The most recently changed contracts' ids.
    pub async fn recent_contracts(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id FROM contracts ORDER BY updated_at DESC, id LIMIT $1",
                &[&limit.max(1)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Fails with the database's own error when it cannot be reached (unlike
    /// [`Store::ping`], which only says yes or no).
    pub async fn reach(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}
