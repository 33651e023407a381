//! What the fleet needs to requeue dead letters whose cause cleared: the candidates,
//! when each cause last changed state (shared by the whole fleet), and the mark that
//! makes each message requeued by the fleet at most once per such change.

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
    /// A page of the parked letters whose cause may clear by itself (see
    /// `skeelo_domain::policy::heals`), in id order after `after`.
    pub async fn healable_letters(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Candidate>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, message_key, reason, error_class, routing_key,
                        COALESCE(event_id, message_id, ''), body
                 FROM dead_letters
                 WHERE state = 'parked' AND id > $2
                   AND (reason = 'exhausted'
                        OR (reason = 'invalid' AND error_class = 'unknown_product')
                        OR (reason = 'refused' AND error_class = 'http_422_unknown_product'))
                 ORDER BY id LIMIT $1",
                &[&limit.max(1), &after],
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

    /// The letter's message was requeued by the fleet under `token` before (it failed
    /// again for the same cause: it stays for people until the cause changes again).
    pub async fn requeued_under(&self, message_key: &str, token: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM dead_letters
                                WHERE message_key = $1 AND auto_token = $2)",
                &[&message_key, &token],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Marks a letter the fleet requeued (once the broker confirmed the copy) under
    /// `token` (also when the copy was parked again first, which marked it without a
    /// name). `false` when it was no longer parked (an operator, or another process,
    /// got there first: the second copy is a duplicate the event path recognises).
    pub async fn mark_auto_requeued(
        &self,
        id: i64,
        token: &str,
        by: &str,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE dead_letters
                 SET state = 'requeued', requeued_at = now(), requeued_by = $3, auto_token = $2
                 WHERE id = $1 AND (state = 'parked' OR (state = 'requeued' AND requeued_by IS NULL))",
                &[&id, &token, &by],
            )
            .await?;
        Ok(n == 1)
    }
}
