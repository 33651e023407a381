//! Dead letters in PostgreSQL, and the audit trail of what operators do with them.

use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use deadpool_postgres::GenericClient;

use crate::{Store, StoreError};

pub use skeelo_domain::policy::ParkReason as Reason;

/// Where a dead letter stands (the `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LetterState {
    /// Waiting for an operator.
    Parked,
    /// Sent back to its queue by an operator.
    Requeued,
    /// Put aside by an operator; restorable until its `restore_until`.
    Archived,
}

impl LetterState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            LetterState::Parked => "parked",
            LetterState::Requeued => "requeued",
            LetterState::Archived => "archived",
        }
    }

    /// Parses the stored name.
    pub fn from_name(s: &str) -> Option<LetterState> {
        [
            LetterState::Parked,
            LetterState::Requeued,
            LetterState::Archived,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
    }
}

impl std::fmt::Display for LetterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure to park.
pub struct NewDeadLetter<'a> {
    /// Identity across redeliveries (event id, else message id, else a digest).
    pub message_key: &'a str,
    /// The body's event id, when readable.
    pub event_id: Option<&'a str>,
    /// The contract, when readable.
    pub contract_id: Option<&'a str>,
    /// The event type (or the queue's type when the body cannot say).
    pub event_type: &'a str,
    /// The routing key it came with, to publish it again as it was.
    pub routing_key: &'a str,
    /// The AMQP message id.
    pub message_id: Option<&'a str>,
    /// The original body, byte for byte.
    pub body: &'a [u8],
    /// Why.
    pub reason: Reason,
    /// Finer class (e.g. `invalid_document`, `http_422_unknown_product`).
    pub error_class: &'a str,
    /// The last error, in words.
    pub last_error: &'a str,
    /// Attempts made.
    pub attempts: i32,
    /// When it first failed (from its retry header), if before now.
    pub first_failed_at: Option<OffsetDateTime>,
    /// The letter a requeue sent this message back from, when it is such a copy.
    pub requeued_from: Option<i64>,
}

/// A stored dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its id, for `show`, `requeue`, `purge` and `restore`.
    pub id: i64,
    /// Event id, when readable.
    pub event_id: Option<String>,
    /// Contract, when readable.
    pub contract_id: Option<String>,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Original routing key.
    pub routing_key: String,
    /// AMQP message id.
    pub message_id: Option<String>,
    /// Original body.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// invalid / refused / exhausted / broker.
    pub reason: String,
    /// Finer class.
    pub error_class: String,
    /// Last error.
    pub last_error: String,
    /// Attempts made.
    pub attempts: i32,
    /// First failure.
    #[serde(with = "time::serde::rfc3339")]
    pub first_failed_at: OffsetDateTime,
    /// Last failure.
    #[serde(with = "time::serde::rfc3339")]
    pub last_failed_at: OffsetDateTime,
    /// Where it stands.
    pub state: LetterState,
    /// When an operator requeued it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub requeued_at: Option<OffsetDateTime>,
    /// Who requeued it.
    pub requeued_by: Option<String>,
    /// When it was archived.
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    /// Who archived it.
    pub archived_by: Option<String>,
    /// Restorable until.
    #[serde(with = "time::serde::rfc3339::option")]
    pub restore_until: Option<OffsetDateTime>,
}

/// Which letters an operator means. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// These ids only.
    pub ids: Vec<i64>,
    /// In this state (`parked` unless said otherwise by the caller).
    pub state: Option<LetterState>,
    /// Of this event type.
    pub event_type: Option<String>,
    /// With this reason.
    pub reason: Option<String>,
    /// With this error class.
    pub error_class: Option<String>,
    /// Of this contract.
    pub contract_id: Option<String>,
    /// Failed last at or after.
    pub since: Option<OffsetDateTime>,
    /// With at least this many attempts.
    pub min_attempts: Option<i32>,
    /// Parked no later than the letter with this id (ids grow): what an operator
    /// confirmed, without the letters parked since.
    pub up_to_id: Option<i64>,
}

impl Filter {
    fn sql(&self) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut clauses = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |clause: &str, p: Box<dyn ToSql + Sync + Send>| {
            params.push(p);
            clauses.push(clause.replace('?', &format!("${}", params.len())));
        };
        if !self.ids.is_empty() {
            add("id = ANY(?)", Box::new(self.ids.clone()));
        }
        if let Some(s) = self.state {
            add("state = ?", Box::new(s.as_str()));
        }
        if let Some(t) = &self.event_type {
            add("type = ?", Box::new(t.clone()));
        }
        if let Some(r) = &self.reason {
            add("reason = ?", Box::new(r.clone()));
        }
        if let Some(c) = &self.error_class {
            add("error_class = ?", Box::new(c.clone()));
        }
        if let Some(c) = &self.contract_id {
            add("contract_id = ?", Box::new(c.clone()));
        }
        if let Some(t) = self.since {
            add("last_failed_at >= ?", Box::new(t));
        }
        if let Some(a) = self.min_attempts {
            add("attempts >= ?", Box::new(a));
        }
        if let Some(id) = self.up_to_id {
            add("id <= ?", Box::new(id));
        }
        let sql = if clauses.is_empty() {
            "true".to_string()
        } else {
            clauses.join(" AND ")
        };
        (sql, params)
    }
}

/// Counts of parked letters that share a reason, class and type.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// invalid / refused / exhausted / broker.
    pub reason: String,
    /// Finer class.
    pub error_class: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// How many.
    pub count: i64,
    /// The oldest first failure among them.
    #[serde(with = "time::serde::rfc3339")]
    pub oldest: OffsetDateTime,
    /// The newest last failure among them.
    #[serde(with = "time::serde::rfc3339")]
    pub newest: OffsetDateTime,
}

const COLUMNS: &str = "id, event_id, contract_id, type, routing_key, message_id, body, reason,
    error_class, last_error, attempts, first_failed_at, last_failed_at, state, requeued_at,
    requeued_by, archived_at, archived_by, restore_until";

fn letter(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        event_id: r.get(1),
        contract_id: r.get(2),
        event_type: r.get(3),
        routing_key: r.get(4),
        message_id: r.get(5),
        body: r.get(6),
        reason: r.get(7),
        error_class: r.get(8),
        last_error: r.get(9),
        attempts: r.get(10),
        first_failed_at: r.get(11),
        last_failed_at: r.get(12),
        // The column's CHECK allows only these three.
        state: LetterState::from_name(r.get(13)).unwrap_or(LetterState::Parked),
        requeued_at: r.get(14),
        requeued_by: r.get(15),
        archived_at: r.get(16),
        archived_by: r.get(17),
        restore_until: r.get(18),
    }
}

fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

impl Store {
    /// Letters matching `filter`, newest failure first.
    pub async fn dead_letters(
        &self,
        filter: &Filter,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let client = self.pool.get().await?;
        let (cond, mut params) = filter.sql();
        params.push(Box::new(limit.max(1)));
        let sql = format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE {cond} ORDER BY last_failed_at DESC, id DESC LIMIT ${}",
            params.len()
        );
        let rows = client.query(&sql, &refs(&params)).await?;
        Ok(rows.iter().map(letter).collect())
    }

    /// The ids of every letter matching `filter`, in id order (a selection taken once,
    /// so that letters parked again meanwhile are not taken in a second time).
    pub async fn dead_letter_ids(
        &self,
        filter: &Filter,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let client = self.pool.get().await?;
        let (cond, mut params) = filter.sql();
        params.push(Box::new(limit.max(1)));
        let sql = format!(
            "SELECT id FROM dead_letters WHERE {cond} ORDER BY id LIMIT ${}",
            params.len()
        );
        let rows = client.query(&sql, &refs(&params)).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The newest letter matching `filter`, if any.
    pub async fn newest_dead_letter_id(&self, filter: &Filter) -> Result<Option<i64>, StoreError> {
        let client = self.pool.get().await?;
        let (cond, params) = filter.sql();
        let sql = format!("SELECT max(id) FROM dead_letters WHERE {cond}");
        Ok(client.query_one(&sql, &refs(&params)).await?.get(0))
    }

    /// How many letters match `filter`.
    pub async fn count_dead_letters(&self, filter: &Filter) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        let (cond, params) = filter.sql();
        let sql = format!("SELECT count(*) FROM dead_letters WHERE {cond}");
        Ok(client.query_one(&sql, &refs(&params)).await?.get(0))
    }

    /// One letter.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let client = self.pool.get().await?;
        let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
        Ok(client.query_opt(&sql, &[&id]).await?.as_ref().map(letter))
    }

    /// Parked letters grouped by reason, class and type, largest group first.
    pub async fn dead_letter_groups(&self, filter: &Filter) -> Result<Vec<Group>, StoreError> {
        let client = self.pool.get().await?;
        let (cond, params) = filter.sql();
        let sql = format!(
            "SELECT reason, error_class, type, count(*), min(first_failed_at), max(last_failed_at)
             FROM dead_letters WHERE {cond}
             GROUP BY reason, error_class, type ORDER BY count(*) DESC, reason, error_class, type"
        );
        let rows = client.query(&sql, &refs(&params)).await?;
        Ok(rows
            .iter()
            .map(|r| Group {
                reason: r.get(0),
                error_class: r.get(1),
                event_type: r.get(2),
                count: r.get(3),
                oldest: r.get(4),
                newest: r.get(5),
            })
            .collect())
    }

    /// Parked letters per reason, for the metrics.
    pub async fn parked_by_reason(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT reason, count(*) FROM dead_letters WHERE state = 'parked' GROUP BY reason",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Marks a parked letter requeued, once the broker confirmed the copy (or names who
    /// requeued it, when the fleet parked the copy again first and marked it then).
    /// `false` when it was no longer parked (another operator got there first).
    pub async fn mark_requeued(&self, id: i64, operator: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE dead_letters SET state = 'requeued', requeued_at = now(), requeued_by = $2
                 WHERE id = $1 AND (state = 'parked' OR (state = 'requeued' AND requeued_by IS NULL))",
                &[&id, &operator],
            )
            .await?;
        Ok(n == 1)
    }

    /// Archives the parked letters matching `filter`; they stay restorable for
    /// `retention`. The audit line (`purge`, `what`) is written in the same
    /// transaction: no purge without its line.
    pub async fn archive(
        &self,
        filter: &Filter,
        operator: &str,
        retention: Duration,
        what: &str,
    ) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let (cond, mut params) = filter.sql();
        params.push(Box::new(operator.to_string()));
        let op = params.len();
        let until = time::Duration::try_from(retention)
            .ok()
            .and_then(|r| OffsetDateTime::now_utc().checked_add(r))
            .ok_or_else(|| {
                StoreError::Config(format!("a retention of {retention:?} is too long"))
            })?;
        params.push(Box::new(until));
        let until = params.len();
        let sql = format!(
            "UPDATE dead_letters SET state = 'archived', archived_at = now(), archived_by = ${op},
                    restore_until = ${until}
             WHERE state = 'parked' AND {cond}"
        );
        let n = tx.execute(&sql, &refs(&params)).await?;
        let days = retention.as_secs() / 86_400;
        audit_in(
            &tx,
            operator,
            "purge",
            what,
            n,
            &serde_json::json!({ "retention_days": days }),
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Brings archived letters back to parked while their retention lasts, with the
    /// audit line (`restore`, `what`) in the same transaction. One letter per message
    /// at most: one whose message is parked again meanwhile stays archived, and of
    /// several archived letters of one message only the latest comes back.
    pub async fn restore(
        &self,
        ids: &[i64],
        operator: &str,
        what: &str,
    ) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                "UPDATE dead_letters d SET state = 'parked', archived_at = NULL, archived_by = NULL,
                        restore_until = NULL
                 WHERE d.id IN (
                     SELECT DISTINCT ON (a.message_key) a.id FROM dead_letters a
                     WHERE a.id = ANY($1) AND a.state = 'archived' AND a.restore_until > now()
                       AND NOT EXISTS (SELECT 1 FROM dead_letters p
                                       WHERE p.message_key = a.message_key AND p.state = 'parked')
                     ORDER BY a.message_key, a.id DESC)",
                &[&ids],
            )
            .await?;
        // The ids asked for, a thousand at most: the count says how many there were.
        let named: Vec<i64> = ids.iter().take(1_000).copied().collect();
        audit_in(
            &tx,
            operator,
            "restore",
            what,
            n,
            &serde_json::json!({ "ids": named }),
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Deletes archived letters whose retention has passed.
    pub async fn delete_expired(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM dead_letters WHERE state = 'archived' AND restore_until <= now()",
                &[],
            )
            .await?)
    }

    /// The audit trail, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT at, operator, action, target, count FROM operator_actions
                 ORDER BY id DESC LIMIT $1",
                &[&limit.max(1)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                at: r.get(0),
                operator: r.get(1),
                action: r.get(2),
                target: r.get(3),
                count: r.get(4),
            })
            .collect())
    }

    /// Writes an operator action to the audit trail.
    pub async fn audit(
        &self,
        operator: &str,
        action: &str,
        target: &str,
        count: i64,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        audit_in(&client, operator, action, target, count, detail).await
    }
}

/// Writes one audit line on `client` (a transaction, when the action is one).
async fn audit_in(
    client: &impl deadpool_postgres::GenericClient,
    operator: &str,
    action: &str,
    target: &str,
    count: impl TryInto<i32>,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    let count: i32 = count.try_into().unwrap_or(i32::MAX);
    client
        .execute(
            "INSERT INTO operator_actions (operator, action, target, count, detail)
             VALUES ($1, $2, $3, $4, $5)",
            &[&operator, &action, &target, &count, detail],
        )
        .await?;
    Ok(())
}

/// One line of the audit trail.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// When.
    pub at: OffsetDateTime,
    /// Who (an operator, or `fleet`).
    pub operator: String,
    /// What: requeue, purge, restore, reveal, …
    pub action: String,
    /// On what, in words.
    pub target: String,
    /// On how many.
    pub count: i32,
}

/// Parks one letter in the caller's transaction; returns its id.
pub(super) async fn insert(
    client: &impl GenericClient,
    d: &NewDeadLetter<'_>,
) -> Result<i64, StoreError> {
    let key = crate::text(d.message_key);
    if let Some(from) = d.requeued_from {
        // A requeue publishes the copy first and marks the letter requeued once the
        // broker confirmed it; the fleet may park the copy again in between. The
        // letter it came from is then marked requeued here (the requeue's own mark
        // names who, after), so that the copy is a new parked letter rather than
        // folded into the old one, which the mark would then take out of sight.
        let st = client
            .prepare_cached(
                "UPDATE dead_letters SET state = 'requeued', requeued_at = now()
                 WHERE id = $1 AND message_key = $2 AND state = 'parked'",
            )
            .await?;
        client.execute(&st, &[&from, &key]).await?;
    }
    let message_id = d.message_id.map(crate::text);
    let contract_id = d.contract_id.map(crate::text);
    let error = crate::text(d.last_error);
    let st = client
        .prepare_cached(
            "INSERT INTO dead_letters (message_key, event_id, contract_id, type, routing_key,
                 message_id, body, reason, error_class, last_error, attempts, first_failed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, COALESCE($12, now()))
             ON CONFLICT (message_key) WHERE state = 'parked' DO UPDATE
               SET reason = EXCLUDED.reason, error_class = EXCLUDED.error_class,
                   last_error = EXCLUDED.last_error,
                   attempts = GREATEST(dead_letters.attempts, EXCLUDED.attempts),
                   last_failed_at = now()
             RETURNING id",
        )
        .await?;
    let row = client
        .query_one(
            &st,
            &[
                &key,
                &d.event_id,
                &contract_id,
                &d.event_type,
                &crate::text(d.routing_key),
                &message_id,
                &d.body,
                &d.reason.as_str(),
                &d.error_class,
                &error,
                &d.attempts,
                &d.first_failed_at,
            ],
        )
        .await?;
    Ok(row.get(0))
}
