//! A small migration runner: the SQL files in `migrations/`, applied in order in
//! one transaction, under a PostgreSQL advisory lock so that replicas starting
//! together take turns instead of racing to create the same tables.

use crate::StoreError;

/// The migrations, in order. A file is never edited once released; changes get a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "contracts",
        include_str!("../../../migrations/0001_contracts.sql"),
    ),
    (
        2,
        "dead_letters",
        include_str!("../../../migrations/0002_dead_letters.sql"),
    ),
    (
        3,
        "partner_rate",
        include_str!("../../../migrations/0003_partner_rate.sql"),
    ),
    (
        4,
        "results_outbox",
        include_str!("../../../migrations/0004_results_outbox.sql"),
    ),
    (
        5,
        "calls_until",
        include_str!("../../../migrations/0005_calls_until.sql"),
    ),
    (
        6,
        "repair_runs",
        include_str!("../../../migrations/0006_repair_runs.sql"),
    ),
    (
        7,
        "self_heal",
        include_str!("../../../migrations/0007_self_heal.sql"),
    ),
    (
        8,
        "console",
        include_str!("../../../migrations/0008_console.sql"),
    ),
    (
        9,
        "waits",
        include_str!("../../../migrations/0009_waits.sql"),
    ),
    (
        10,
        "rate_in_use",
        include_str!("../../../migrations/0010_rate_in_use.sql"),
    ),
    (
        11,
        "rate_window",
        include_str!("../../../migrations/0011_rate_window.sql"),
    ),
    (
        12,
        "rate_schedule",
        include_str!("../../../migrations/0012_rate_schedule.sql"),
    ),
];

/// Any fixed number unique to this schema; every replica asks for the same lock.
const LOCK_KEY: i64 = 0x056b_6565_6c6f;

pub(super) async fn run(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    // One transaction for the lock and every pending migration: the lock is released
    // by the commit or the rollback, whatever happens to this connection afterwards.
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tracing::info!(version, name, "migration applied");
    }
    tx.commit().await?;
    Ok(())
}
