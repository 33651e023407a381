//! What the fleet needs to requeue dead letters whose cause cleared: the candidates,
//! when each cause last changed state (shared by the whole fleet), and a claim that
//! makes each letter requeued by the fleet at most once per such change.

use time::OffsetDateTime;

use crate::{Store, StoreError};

/// A parked letter whose cause may clear by itself.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The letter.
    pub id: i64,
    /// Its message across redeliveries.
    pub message_key: String,
    /// invalid, refused or exhausted.
    pub reason: String,
    /// The error class.
    pub error_class: String,
    /// Its routing key, to publish it again.
    pub routing_key: String,
    /// The AMQP message id to publish it with.
    pub message_id: String,
    /// The message as received.
    pub body: Vec<u8>,
}

impl Store {
    /// Parked letters whose cause may clear by itself (see
    /// `skeelo_domain::policy::heals`), oldest failure first.
    pub async fn healable_letters(&self, limit: i64) -> Result<Vec<Candidate>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, message_key, reason, error_class, routing_key,
                        COALESCE(event_id, message_id, ''), body
                 FROM dead_letters
                 WHERE state = 'parked'
                   AND (reason = 'exhausted'
                        OR (reason = 'invalid' AND error_class = 'unknown_product')
                        OR (reason = 'refused' AND error_class = 'http_422_unknown_product'))
                 ORDER BY last_failed_at, id LIMIT $1",
                &[&limit.max(1)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Candidate {
                id: r.get(0),
                message_key: r.get(1),
                reason: r.get(2),
                error_class: r.get(3),
                routing_key: r.get(4),
                message_id: r.get(5),
                body: r.get(6),
            })
            .collect())
    }

    /// Records a cause's state as a probe found it; returns since when it has been in
    /// that state (now, if it just changed).
    pub async fn cause_state(
        &self,
        cause: &str,
        state: &str,
    ) -> Result<OffsetDateTime, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO self_heal_causes (cause, state) VALUES ($1, $2)
                 ON CONFLICT (cause) DO UPDATE
                 SET state = EXCLUDED.state,
                     changed_at = CASE WHEN self_heal_causes.state = EXCLUDED.state
                                       THEN self_heal_causes.changed_at ELSE now() END
                 RETURNING changed_at",
                &[&cause, &state],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Claims a parked letter for a requeue by the fleet under `token` (the cause's
    /// change): `false` when it is no longer parked, or when its message was already
    /// requeued by the fleet under the same token (it failed again for the same cause:
    /// it stays for people until the cause changes again).
    pub async fn claim_auto_requeue(
        &self,
        id: i64,
        token: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE dead_letters d
                 SET state = 'requeued', requeued_at = now(), requeued_by = $3, auto_token = $2
                 WHERE id = $1 AND state = 'parked'
                   AND NOT EXISTS (SELECT 1 FROM dead_letters o
                                   WHERE o.message_key = d.message_key AND o.auto_token = $2)",
                &[&id, &token, &by],
            )
            .await?;
        Ok(n == 1)
    }

    /// Gives back a claim whose publish failed: parked again, for the next sweep.
    pub async fn unclaim_auto_requeue(&self, id: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE dead_letters
                 SET state = 'parked', requeued_at = NULL, requeued_by = NULL, auto_token = NULL
                 WHERE id = $1 AND state = 'requeued'",
                &[&id],
            )
            .await?;
        Ok(())
    }
}
