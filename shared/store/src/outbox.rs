//! The results outbox: results written with the outcome they report, relayed to the
//! broker afterwards (see `migrations/0004_results_outbox.sql`).

use std::time::Duration;

use deadpool_postgres::GenericClient;

use crate::{Store, StoreError};

/// A result waiting for the broker.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The row, to delete or release once the broker answered.
    pub id: i64,
    /// The event it reports (the AMQP `message_id`).
    pub event_id: String,
    /// `result.<type>` on `skeelo.results`.
    pub routing_key: String,
    /// The JSON body, as published.
    pub body: Vec<u8>,
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Results not yet taken by the broker.
    pub depth: i64,
    /// Age of the oldest of them; zero when there is none.
    pub oldest: Duration,
}

impl Store {
    /// Leases up to `limit` unsent results, oldest first, for `lease`: no other relay
    /// takes them meanwhile. Rows another relay holds are skipped, not waited for.
    pub async fn lease_results(
        &self,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<Pending>, StoreError> {
        let client = self.pool.get().await?;
        let st = client
            .prepare_cached(
                "UPDATE results_outbox SET lease_until = now() + make_interval(secs => $2)
                 WHERE id IN (SELECT id FROM results_outbox
                              WHERE lease_until IS NULL OR lease_until < now()
                              ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, event_id, routing_key, body::text",
            )
            .await?;
        let rows = client
            .query(&st, &[&limit.max(1), &lease.as_secs_f64()])
            .await?;
        let mut pending: Vec<Pending> = rows
            .iter()
            .map(|r| Pending {
                id: r.get(0),
                event_id: r.get(1),
                routing_key: r.get(2),
                body: r.get::<_, String>(3).into_bytes(),
            })
            .collect();
        pending.sort_by_key(|p| p.id);
        Ok(pending)
    }

    /// The broker took these: they leave the outbox (the contract's story keeps the
    /// record of what the ERP was told).
    pub async fn results_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let st = client
            .prepare_cached("DELETE FROM results_outbox WHERE id = ANY($1)")
            .await?;
        client.execute(&st, &[&ids]).await?;
        Ok(())
    }

    /// The broker refused these: they wait for the next try, by any relay.
    pub async fn results_refused(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let st = client
            .prepare_cached("UPDATE results_outbox SET lease_until = NULL WHERE id = ANY($1)")
            .await?;
        client.execute(&st, &[&ids]).await?;
        Ok(())
    }

    /// How many results wait, and for how long the oldest has.
    pub async fn results_backlog(&self) -> Result<Backlog, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
                 FROM results_outbox",
                &[],
            )
            .await?;
        let oldest: f64 = row.get(1);
        Ok(Backlog {
            depth: row.get(0),
            oldest: Duration::try_from_secs_f64(oldest.max(0.0)).unwrap_or_default(),
        })
    }
}
