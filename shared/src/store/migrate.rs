//! A small migration runner: the SQL files in `migrations/`, applied in order, each in
//! its own transaction, under a PostgreSQL advisory lock so that replicas starting
//! together take turns instead of racing to create the same tables.

use super::StoreError;

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
];

/// Any fixed number unique to this schema; every replica asks for the same lock.
const LOCK_KEY: i64 = 0x056b_6565_6c6f;

pub(super) async fn run(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_pending(client).await;
    // Unlock even when a migration failed, so a fixed replica is not stuck behind it.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result?;
    unlocked?;
    Ok(())
}

async fn apply_pending(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "migration applied");
    }
    Ok(())
}
