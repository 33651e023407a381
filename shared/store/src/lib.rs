//! PostgreSQL: contracts and their facts, processed event ids, what Skeelo holds, the
//! catalogue and each contract's story.
//!
//! An event is applied inside one transaction that holds the contract's row lock
//! (`SELECT … FOR UPDATE`) from reading the facts until the new facts are written, so
//! two consumers with events of the same contract take turns and no update is lost.

use std::collections::BTreeSet;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use time::OffsetDateTime;
use tokio_postgres::types::Json;

use skeelo_domain::lifecycle::{Facts, Held, Status};
use skeelo_domain::outcome::{EventResult, Outcome};
use skeelo_domain::policy::Failure;
use skeelo_domain::product::Product;

pub mod accounts;
pub mod apply;
pub mod dead;
mod migrate;
pub mod outbox;
pub mod pulse;
pub mod repairs;
pub mod reports;
pub mod self_heal;
pub mod tls;
pub mod waits;

/// What went wrong talking to PostgreSQL. Always worth another try later, except
/// [`StoreError::Config`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `DATABASE_URL` cannot be used.
    #[error("DATABASE_URL is not usable: {0}")]
    Config(String),
    /// No connection from the pool.
    #[error("no database connection: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A query failed.
    #[error("database error: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    /// A stored value no longer reads as this version of the code expects.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// PostgreSQL's own words and SQLSTATE for an error it sent (its message names objects,
/// never row values; the detail, which may, is left out), or the client's error with
/// its causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// A pool's failure; a connection the server refused is said in the server's words.
fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    }
}

impl StoreError {
    /// A failure that waiting cannot fix: a `DATABASE_URL` or certificate file that
    /// cannot be used, a certificate not trusted (or refused by the server), refused
    /// credentials, a database that does not exist, a server without TLS when TLS is
    /// required. A process meeting one at start-up stops with it.
    pub fn is_permanent(&self) -> bool {
        let query = match self {
            StoreError::Config(_) => return true,
            StoreError::Query(e) => e,
            StoreError::Pool(deadpool_postgres::PoolError::Backend(e)) => e,
            StoreError::Pool(_) | StoreError::Corrupt(_) | StoreError::Timeout(_) => return false,
        };
        if let Some(code) = query.code() {
            // 28: authorization (password, pg_hba); 3D000: no such database.
            return code.code().starts_with("28") || code.code() == "3D000";
        }
        // A TLS refusal travels inside an I/O error, whose own source skips it.
        let is_tls = |e: &(dyn std::error::Error + 'static)| {
            e.downcast_ref::<rustls::Error>().is_some()
                || e.downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref)
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        };
        let mut source = std::error::Error::source(query);
        while let Some(e) = source {
            if is_tls(e) {
                return true;
            }
            source = e.source();
        }
        query.to_string().contains("does not support TLS")
    }

    /// What the failure means for an event, by SQLSTATE class: the data refused
    /// (22 data exception, 23 integrity) is the event's fault and never heals;
    /// anything else says the database is away or busy, not that the event is wrong.
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Corrupt(_) => Failure::StateUnreadable,
            StoreError::Query(e) => match e.code().map(|c| c.code()) {
                Some(code) if code.starts_with("22") || code.starts_with("23") => {
                    Failure::DatabaseRefused
                }
                _ => Failure::DatabaseUnavailable,
            },
            StoreError::Config(_) | StoreError::Pool(_) | StoreError::Timeout(_) => {
                Failure::DatabaseUnavailable
            }
        }
    }

    /// The SQLSTATE, when the database gave one (for dead letters' error class).
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StoreError::Query(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// A pool of connections to the fleet's database.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// A few connections only for marking contracts uncertain while the main pool's
    /// connection holds the contract's transaction open: never waits on the main pool,
    /// so a task never waits for a second connection from the pool it holds one of.
    marks: Pool,
    /// One connection only for the partner rate's leases and pauses: a lease is on the
    /// way from the rate to a call, and waiting behind other statements for a
    /// connection is a gap in the rate (and with a pool shared with event work, a wait
    /// that work holding that pool could lengthen without end).
    rate: Pool,
}

/// A contract as read under its row lock.
#[derive(Debug, Clone, Default)]
pub struct ContractState {
    /// The lifecycle facts.
    pub facts: Facts,
    /// What Skeelo held after the last successful call.
    pub held: Option<Held>,
    /// Calls were made whose answers were never recorded: ask Skeelo before planning.
    pub uncertain: Option<Uncertain>,
}

/// Who made the unrecorded calls, and whether they may still land.
#[derive(Debug, Clone, Copy)]
pub struct Uncertain {
    /// The attempt that made them.
    pub owner: uuid::Uuid,
    /// How much longer one of them may still land at Skeelo: zero once the owner
    /// said they all returned (or the fence ran out).
    pub may_land_for: std::time::Duration,
}

pub use skeelo_domain::decide::Processed;

/// One line of a contract's story.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The event id (or AMQP message id).
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// The contract version it carried.
    pub version: Option<i64>,
    /// Who acted in the ERP.
    pub actor: Option<String>,
    /// When the ERP acted.
    pub occurred_at: Option<OffsetDateTime>,
    /// When the fleet decided.
    pub received_at: OffsetDateTime,
    /// How it ended.
    pub outcome: String,
    /// Skeelo's status afterwards.
    pub skeelo_status: Option<String>,
    /// Calls made to Skeelo.
    pub skeelo_calls: i32,
    /// Why.
    pub detail: String,
}

/// A lease reads the fleet's schedule under the row's lock, with the ledger's clock.
const LEASE_READ: &str = "SELECT EXTRACT(EPOCH FROM tat)::float8, next_even, recent,
        EXTRACT(EPOCH FROM paused_until)::float8,
        EXTRACT(EPOCH FROM clock_timestamp())::float8
 FROM partner_rate WHERE name = $1 FOR UPDATE";

/// A lease writes the schedule back (see `skeelo_partner::schedule`).
const LEASE_WRITE: &str = "UPDATE partner_rate
 SET tat = to_timestamp($2), next_even = $3, recent = $4, leased = leased + $5
 WHERE name = $1";

impl Store {
    /// Opens a pool of at most `max_connections` to `url`; connects lazily.
    pub fn connect(url: &str, max_connections: usize) -> Result<Store, StoreError> {
        let (url, tls) = tls::split(url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Config(e.to_string()))?;
        config.ssl_mode(tls.ssl_mode());
        let connector = tls.connector()?;
        // Every statement is planned for its own arguments: a plan cached while the
        // tables were small (a fresh database, before autovacuum's first ANALYZE) would
        // scan them whole forever after. Planning is paid once per batch of events.
        let options = match config.get_options() {
            Some(given) => format!("{given} -c plan_cache_mode=force_custom_plan"),
            None => "-c plan_cache_mode=force_custom_plan".to_string(),
        };
        config.options(&options);
        let pool = |config: tokio_postgres::Config, size: usize| {
            let manager = Manager::from_config(
                config,
                connector.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(size.max(1))
                // Waiting for a free connection is queueing, not failure: every task
                // holds at most one connection of a pool, so the wait always ends.
                .wait_timeout(None)
                .create_timeout(Some(std::time::Duration::from_secs(10)))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Config(e.to_string()))
        };
        // The rate's connection locks the fleet's one ledger row for a lease: a session
        // that stops answering inside it (its process died, its network is cut) gives
        // the lock up within seconds instead of when TCP notices, and a lease never
        // waits on the lock beyond the pacer's own timeout. Its commits do not wait for
        // the disk: a lease lost in a database crash costs at most a second of calls
        // counted twice, and a lease that waits for the disk makes its first slots late.
        let mut rate_config = config.clone();
        rate_config.options(format!(
            "{options} -c idle_in_transaction_session_timeout=5s -c lock_timeout=5s -c synchronous_commit=off"
        ));
        Ok(Store {
            pool: pool(config.clone(), max_connections)?,
            marks: pool(config, 2)?,
            rate: pool(rate_config, 1)?,
        })
    }

    /// Marks contracts uncertain for the calls `owner` is about to make, committed at
    /// once (see [`ContractState::uncertain`]); the calls may land for `fence`.
    pub async fn mark_uncertain(
        &self,
        contract_ids: &[&str],
        owner: uuid::Uuid,
        fence: std::time::Duration,
    ) -> Result<(), StoreError> {
        let client = self.marks.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO skeelo_uncertain (contract_id, owner, calls_until)
                 SELECT id, $2, clock_timestamp() + make_interval(secs => $3)
                 FROM unnest($1::text[]) AS t(id) ORDER BY id
                 ON CONFLICT (contract_id) DO UPDATE
                 SET owner = EXCLUDED.owner, since = now(), calls_until = EXCLUDED.calls_until",
                    )
                    .await?,
                &[&contract_ids, &owner, &fence.as_secs_f64()],
            )
            .await?;
        Ok(())
    }

    /// How much longer calls behind a contract's mark may land; `None` when there is
    /// no mark or they cannot any more. Asked by an event waiting for another
    /// process's calls.
    pub async fn calls_may_land(
        &self,
        contract_id: &str,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        let client = self.marks.get().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT EXTRACT(EPOCH FROM calls_until - clock_timestamp())::float8
                         FROM skeelo_uncertain WHERE contract_id = $1",
                    )
                    .await?,
                &[&contract_id],
            )
            .await?;
        Ok(row
            .and_then(|r| r.get::<_, Option<f64>>(0))
            .filter(|s| *s > 0.0)
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()))
    }

    /// Brings the schema up to date; safe when several replicas start at once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        migrate::run(&mut client).await
    }

    /// The attempt `owner` ended and none of its calls is in flight any more: others
    /// may read Skeelo back at once (the mark stays: the answers are still unrecorded).
    pub async fn release_uncertain(
        &self,
        contract_ids: &[&str],
        owner: uuid::Uuid,
    ) -> Result<(), StoreError> {
        let client = self.marks.get().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE skeelo_uncertain SET calls_until = clock_timestamp()
                 WHERE contract_id = ANY($1) AND owner = $2",
                    )
                    .await?,
                &[&contract_ids, &owner],
            )
            .await?;
        Ok(())
    }

    /// Leases `n` partner-rate slots, spaced as `spacing` says
    /// (`skeelo_partner::schedule` places them): returns when each begins, on the
    /// database's clock. Slots of different leases never overlap, whichever process
    /// holds them: the row is locked while they are placed (on the rate's connection,
    /// whose session gives up a lock wait and an idle transaction after a few seconds,
    /// so a process that dies holding the lock does not hold the fleet's calls).
    pub async fn lease_partner_slots(
        &self,
        name: &str,
        n: usize,
        spacing: skeelo_partner::schedule::Spacing,
    ) -> Result<skeelo_partner::pacer::Lease, StoreError> {
        let mut client = self.rate.get().await?;
        let tx = client.transaction().await?;
        let read = tx.prepare_cached(LEASE_READ).await?;
        // The row is created by the first lease; on the same connection, since the
        // rate's pool has only this one.
        let row = loop {
            if let Some(r) = tx.query_opt(&read, &[&name]).await? {
                break r;
            }
            tx.execute(
                "INSERT INTO partner_rate (name) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&name],
            )
            .await?;
        };
        let corrupt = |e: tokio_postgres::Error| {
            StoreError::Corrupt(format!("partner_rate {name} is unreadable: {e}"))
        };
        let recent: Vec<Option<f64>> = row.try_get(2).map_err(corrupt)?;
        // A pause never set is '-infinity'.
        let paused_until: f64 = row.try_get(3).map_err(corrupt)?;
        let now: f64 = row.try_get(4).map_err(corrupt)?;
        let read_at = skeelo_partner::schedule::wall_clock(now)
            .ok_or_else(|| StoreError::Corrupt(format!("the database's clock read {now}")))?;
        let mut schedule = skeelo_partner::schedule::Schedule::from_row(
            row.try_get(1).map_err(corrupt)?,
            recent.into_iter().flatten().collect(),
            row.try_get(0).map_err(corrupt)?,
            now,
            paused_until,
            spacing,
        );
        let slots = schedule.lease(now, paused_until, n, spacing);
        // Checked before anything is written: a slot that is not a time (a pause set
        // to 'infinity' by hand) leaves the row as it was.
        let slots = slots
            .into_iter()
            .map(|t| {
                skeelo_partner::schedule::wall_clock(t).ok_or_else(|| {
                    StoreError::Corrupt(format!("partner_rate {name} placed a slot at {t}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        tx.execute(
            &tx.prepare_cached(LEASE_WRITE).await?,
            &[
                &name,
                &schedule.tat(spacing),
                &schedule.next,
                &schedule.recent,
                &i64::try_from(slots.len()).unwrap_or(i64::MAX),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(skeelo_partner::pacer::Lease { slots, read_at })
    }

    /// Opens the partner rate's connection and prepares its lease, at start-up, so
    /// that a process's first lease takes one round trip per statement like every
    /// other: on a busy two-core machine first leases took 33–131 ms with the
    /// connection opened by them, and the statement that writes the lease was prepared
    /// after the ledger's clock was read (the first slot came late). The pacer sets
    /// how far ahead slots begin from how long leases take, so a slow first one also
    /// held back the next ones. Bounded: a database that does not answer leaves the
    /// first lease to connect by itself.
    pub async fn warm_rate_ledger(&self) -> Result<(), StoreError> {
        let warm = async {
            let client = self.rate.get().await?;
            client.prepare_cached(LEASE_READ).await?;
            client.prepare_cached(LEASE_WRITE).await?;
            Ok::<_, StoreError>(())
        };
        let within = std::time::Duration::from_secs(5);
        tokio::time::timeout(within, warm)
            .await
            .map_err(|_| StoreError::Timeout(within))?
    }

    /// No partner-rate slot begins before `wait` from now (a 429's Retry-After).
    pub async fn pause_partner(
        &self,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<(), StoreError> {
        let client = self.rate.get().await?;
        client
            .execute(
                "UPDATE partner_rate
                 SET paused_until = GREATEST(paused_until, clock_timestamp() + make_interval(secs => $2))
                 WHERE name = $1",
                &[&name, &wait.as_secs_f64()],
            )
            .await?;
        Ok(())
    }

    /// `true` when a connection answers within two seconds. Uses the marks pool, so a
    /// busy main pool does not make a healthy database look down.
    pub async fn ping(&self) -> bool {
        let answer = async {
            match self.marks.get().await {
                Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), answer)
            .await
            .unwrap_or(false)
    }

    /// Replaces the catalogue with Skeelo's.
    pub async fn replace_catalogue(&self, products: &[Product]) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let skus: Vec<&str> = products.iter().map(|p| p.sku.as_str()).collect();
        tx.execute("DELETE FROM catalogue WHERE sku <> ALL($1)", &[&skus])
            .await?;
        for p in products {
            tx.execute(
                "INSERT INTO catalogue (sku, name) VALUES ($1, $2)
                 ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, refreshed_at = now()",
                &[&p.sku, &p.name],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The SKUs in the catalogue.
    pub async fn catalogue(&self) -> Result<BTreeSet<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client.query("SELECT sku FROM catalogue", &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A contract's story, oldest first.
    pub async fn history(&self, contract_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT event_id, type, version, actor, occurred_at, received_at, outcome,
                        skeelo_status, skeelo_calls, detail
                 FROM contract_events WHERE contract_id = $1 ORDER BY id",
                &[&contract_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| HistoryEntry {
                event_id: r.get(0),
                event_type: r.get(1),
                version: r.get(2),
                actor: r.get(3),
                occurred_at: r.get(4),
                received_at: r.get(5),
                outcome: r.get(6),
                skeelo_status: r.get(7),
                skeelo_calls: r.get(8),
                detail: r.get(9),
            })
            .collect())
    }

    /// A contract's facts and Skeelo state, without locking (for reports).
    pub async fn contract(&self, contract_id: &str) -> Result<Option<ContractState>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT facts, skeelo FROM contracts WHERE id = $1",
                &[&contract_id],
            )
            .await?;
        row.map(|r| state_of(&r, 0, 1)).transpose()
    }

    /// A connection for the event transaction: [`apply::lock`], then [`apply::write`],
    /// then commit.
    pub async fn begin(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// A line of history to write.
pub struct NewHistory<'a> {
    /// The contract.
    pub contract_id: &'a str,
    /// The event id (or AMQP message id).
    pub event_id: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Contract version carried.
    pub version: Option<i64>,
    /// ERP actor.
    pub actor: Option<&'a str>,
    /// When the ERP acted.
    pub occurred_at: Option<OffsetDateTime>,
    /// How it ended.
    pub outcome: Outcome,
    /// Skeelo's status afterwards.
    pub skeelo_status: Option<Status>,
    /// Calls made.
    pub skeelo_calls: i32,
    /// Why.
    pub detail: &'a str,
}

/// PostgreSQL text cannot hold NUL; values that reach us from outside (message ids,
/// error texts) are stored with it replaced, never refused.
pub(crate) fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// A result as it can be stored: PostgreSQL's jsonb cannot hold NUL either, and a
/// result may echo text from outside (an invalid body's type, an error).
pub(crate) fn storable(r: &EventResult) -> std::borrow::Cow<'_, EventResult> {
    let has_nul = |s: &str| s.contains('\0');
    if !has_nul(&r.event_id)
        && !has_nul(&r.event_type)
        && !has_nul(&r.detail)
        && !r.contract_id.as_deref().is_some_and(has_nul)
    {
        return std::borrow::Cow::Borrowed(r);
    }
    let mut clean = r.clone();
    clean.event_id = text(&r.event_id).into_owned();
    clean.event_type = text(&r.event_type).into_owned();
    clean.detail = text(&r.detail).into_owned();
    clean.contract_id = r.contract_id.as_deref().map(|c| text(c).into_owned());
    std::borrow::Cow::Owned(clean)
}

/// A contract's stored state, from the row's `facts` and `skeelo` columns. A value
/// this version cannot read is reported as corrupt, never a panic.
fn state_of(
    row: &tokio_postgres::Row,
    facts: usize,
    held: usize,
) -> Result<ContractState, StoreError> {
    let corrupt = |e: tokio_postgres::Error| StoreError::Corrupt(e.to_string());
    let Json(facts) = row.try_get::<_, Json<Facts>>(facts).map_err(corrupt)?;
    let held = row
        .try_get::<_, Option<Json<Held>>>(held)
        .map_err(corrupt)?
        .map(|Json(h)| h);
    Ok(ContractState {
        facts,
        held,
        uncertain: None,
    })
}

/// The fleet's partner-rate ledger is the `partner_rate` table: every process leases its
/// slots from the same row.
impl skeelo_partner::pacer::SlotLedger for Store {
    fn lease(
        &self,
        name: &str,
        n: usize,
        spacing: skeelo_partner::schedule::Spacing,
    ) -> skeelo_partner::pacer::LedgerFuture<'_, skeelo_partner::pacer::Lease> {
        let name = name.to_string();
        Box::pin(async move { Ok(self.lease_partner_slots(&name, n, spacing).await?) })
    }

    fn pause(
        &self,
        name: &str,
        wait: std::time::Duration,
    ) -> skeelo_partner::pacer::LedgerFuture<'_, ()> {
        let name = name.to_string();
        Box::pin(async move { Ok(self.pause_partner(&name, wait).await?) })
    }
}
