//! What the fleet is waiting for, kept where people can see it: an event's next
//! attempt after a failure, and Skeelo in outage mode. Written by the fleet, read by
//! `skeelo-ops explain`; nothing decides on it.

use time::OffsetDateTime;

use crate::{text, Store, StoreError};

/// An event that failed and is tried again later.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The event.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// Attempts spent so far.
    pub attempt: i32,
    /// When it is tried again (about: the broker's delay queue decides).
    pub next_at: OffsetDateTime,
    /// Why the last attempt failed.
    pub last_error: String,
}

/// Skeelo in outage mode, as one process sees it.
#[derive(Debug, Clone)]
pub struct Outage {
    /// `skeelo`.
    pub downstream: String,
    /// Since when.
    pub since: OffsetDateTime,
    /// The last probe's error.
    pub last_error: String,
}

impl Store {
    /// Notes that an event goes round again at `next_at` (replacing an earlier note).
    pub async fn note_retry(
        &self,
        event_id: &str,
        contract_id: Option<&str>,
        event_type: &str,
        attempt: i32,
        next_at: OffsetDateTime,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let client = self.marks.get().await?;
        client
            .execute(
                "INSERT INTO event_retries (event_id, contract_id, type, attempt, next_at, last_error)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (event_id) DO UPDATE
                 SET attempt = EXCLUDED.attempt, next_at = EXCLUDED.next_at,
                     last_error = EXCLUDED.last_error, noted_at = now()",
                &[
                    &text(event_id),
                    &contract_id.map(text),
                    &event_type,
                    &attempt,
                    &next_at,
                    &text(last_error),
                ],
            )
            .await?;
        Ok(())
    }

    /// A contract's events waiting for their next attempt.
    pub async fn retries_of(&self, contract_id: &str) -> Result<Vec<Retry>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT event_id, type, attempt, next_at, last_error FROM event_retries
                 WHERE contract_id = $1 ORDER BY next_at",
                &[&contract_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Retry {
                event_id: r.get(0),
                event_type: r.get(1),
                attempt: r.get(2),
                next_at: r.get(3),
                last_error: r.get(4),
            })
            .collect())
    }

    /// This process sees `downstream` in outage mode (called while it probes).
    pub async fn outage_seen(
        &self,
        downstream: &str,
        process: &str,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let client = self.marks.get().await?;
        client
            .execute(
                "INSERT INTO outages (downstream, process, last_error) VALUES ($1, $2, $3)
                 ON CONFLICT (downstream, process) DO UPDATE
                 SET seen_at = now(), last_error = EXCLUDED.last_error",
                &[&downstream, &process, &text(last_error)],
            )
            .await?;
        Ok(())
    }

    /// This process sees `downstream` answer again.
    pub async fn outage_over(&self, downstream: &str, process: &str) -> Result<(), StoreError> {
        let client = self.marks.get().await?;
        client
            .execute(
                "DELETE FROM outages WHERE downstream = $1 AND process = $2",
                &[&downstream, &process],
            )
            .await?;
        Ok(())
    }

    /// Outages some process saw within `fresh` (older rows are processes that stopped).
    pub async fn outages_now(&self, fresh: std::time::Duration) -> Result<Vec<Outage>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT downstream, min(since), (array_agg(last_error ORDER BY seen_at DESC))[1]
                 FROM outages WHERE seen_at > now() - make_interval(secs => $1)
                 GROUP BY downstream ORDER BY downstream",
                &[&fresh.as_secs_f64()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Outage {
                downstream: r.get(0),
                since: r.get(1),
                last_error: r.get(2),
            })
            .collect())
    }
}
