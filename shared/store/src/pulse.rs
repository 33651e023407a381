//! What the console's overview reads to say how the fleet is doing right now: the
//! partner-rate slots it has taken (sampled twice, that is the rate in use) and, for
//! each event type, when the fleet last handled one and how long that one had waited.

use std::time::Duration;

use time::OffsetDateTime;

use crate::{Store, StoreError};

/// The partner-rate ledger at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLedger {
    /// Slots leased since the ledger began.
    pub leased: i64,
    /// Slots already leased ahead of now (the fleet is that far into its queue of
    /// turns), zero when idle.
    pub ahead: Duration,
    /// Skeelo asked us to pause (a 429's `Retry-After`) for this much longer.
    pub paused_for: Duration,
    /// The database's clock when read (the one the ledger keeps).
    pub at: OffsetDateTime,
}

/// The latest handling of one event type.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The event type.
    pub event_type: String,
    /// When the fleet last recorded one.
    pub last: OffsetDateTime,
    /// How long the latest event of the type seen for the first time (not a requeued
    /// letter nor a redelivery) had waited since the ERP acted (`occurred_at`), and
    /// when it was handled.
    pub waited: Option<(Duration, OffsetDateTime)>,
}

/// How many of the latest story lines the overview looks at: bounded, so the page
/// costs the same on a table of millions.
const RECENT_LINES: i64 = 5_000;

impl Store {
    /// The partner-rate ledger `name` now; `None` before its first lease.
    pub async fn rate_ledger(&self, name: &str) -> Result<Option<RateLedger>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT leased,
                        EXTRACT(EPOCH FROM GREATEST(tat, clock_timestamp()) - clock_timestamp())::float8,
                        -- never paused is '-infinity'
                        EXTRACT(EPOCH FROM GREATEST(paused_until, clock_timestamp())
                                           - clock_timestamp())::float8,
                        clock_timestamp()
                 FROM partner_rate WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| RateLedger {
            leased: r.get(0),
            ahead: Duration::try_from_secs_f64(r.get(1)).unwrap_or_default(),
            paused_for: Duration::try_from_secs_f64(r.get(2)).unwrap_or_default(),
            at: r.get(3),
        }))
    }

    /// For each event type among the latest story lines: when it was last handled,
    /// and how long the latest first-seen event of it had waited since the ERP acted.
    pub async fn recently_handled(&self) -> Result<Vec<Handled>, StoreError> {
        let client = self.pool.get().await?;
        let last = client
            .query(
                "SELECT type, max(received_at) FROM contract_events
                 WHERE id > (SELECT coalesce(max(id), 0) FROM contract_events) - $1
                 GROUP BY type",
                &[&RECENT_LINES],
            )
            .await?;
        let fresh = client
            .query(
                "SELECT DISTINCT ON (c.type) c.type,
                        EXTRACT(EPOCH FROM c.received_at - c.occurred_at)::float8, c.received_at
                 FROM contract_events c
                 WHERE c.id > (SELECT coalesce(max(id), 0) FROM contract_events) - $1
                   AND c.occurred_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM contract_events p
                                   WHERE p.contract_id = c.contract_id
                                     AND p.event_id = c.event_id AND p.id < c.id)
                 ORDER BY c.type, c.id DESC",
                &[&RECENT_LINES],
            )
            .await?;
        Ok(last
            .iter()
            .map(|r| {
                let event_type: String = r.get(0);
                let waited = fresh
                    .iter()
                    .find(|f| f.get::<_, &str>(0) == event_type)
                    .and_then(|f| {
                        let secs: f64 = f.get(1);
                        let d = Duration::try_from_secs_f64(secs.max(0.0)).ok()?;
                        Some((d, f.get::<_, OffsetDateTime>(2)))
                    });
                Handled {
                    event_type,
                    last: r.get(1),
                    waited,
                }
            })
            .collect())
    }
}
