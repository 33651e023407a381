//! Drift repair runs: one row per comparison of the fleet's contracts with Skeelo, and
//! the contract-level write a repair makes (what Skeelo holds now, and a line in the
//! contract's story) in the caller's transaction, under the contract's row lock.

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;
use time::OffsetDateTime;
use tokio_postgres::types::Json;

use skeelo_domain::lifecycle::Held;

use crate::{text, Store, StoreError};

/// A repair run as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepairRun {
    /// Its id: what `--approve` names.
    pub id: i64,
    /// `operator` or `periodic`.
    pub trigger: String,
    /// Who asked (an operator's name, or `fleet`).
    pub requested_by: String,
    /// When it began.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it ended, if it did.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// `running`, `done`, `awaiting_approval`, `approved`, `failed` or `abandoned`.
    pub state: String,
    /// Contracts compared with Skeelo.
    pub compared: i64,
    /// Of those, the ones that differ.
    pub differing: i64,
    /// Differences found, by kind.
    pub found: BTreeMap<String, i64>,
    /// Contracts the run would change.
    pub to_change: i64,
    /// A run the guard stopped: the contracts it would change (all its approval covers).
    pub scope: Vec<String>,
    /// The most the blast-radius guard let it change.
    pub allowed: i64,
    /// Contracts brought back to what the facts say.
    pub repaired: i64,
    /// Differences no call may repair (a cancel at Skeelo is final): for people.
    pub left_for_people: i64,
    /// Repairs that failed (Skeelo refused or did not answer): tried again next run.
    pub failed: i64,
    /// The run awaiting approval that this one carries out.
    pub approves: Option<i64>,
    /// Who approved this run (set on a run awaiting approval once approved).
    pub approved_by: Option<String>,
    /// Why it stopped, in words.
    pub note: String,
}

/// What a run found and did, written when it ends.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunTotals {
    /// Contracts compared with Skeelo.
    pub compared: i64,
    /// Of those, the ones that differ.
    pub differing: i64,
    /// Differences found, by kind.
    pub found: BTreeMap<String, i64>,
    /// Contracts the run would change.
    pub to_change: i64,
    /// The most the guard let it change.
    pub allowed: i64,
    /// Contracts repaired.
    pub repaired: i64,
    /// Differences left for people.
    pub left_for_people: i64,
    /// Repairs that failed.
    pub failed: i64,
}

/// A line of a contract's story written by a repair.
pub struct RepairLine<'a> {
    /// The contract.
    pub contract_id: &'a str,
    /// The run (the line's event id is `repair-<run>`).
    pub run: i64,
    /// Who asked for the run.
    pub actor: &'a str,
    /// `repaired`, `left_for_people` or `failed`.
    pub outcome: &'a str,
    /// Skeelo's status afterwards.
    pub skeelo_status: Option<&'a str>,
    /// Calls made.
    pub calls: i32,
    /// What differed and what was done, in words.
    pub detail: &'a str,
}

const COLUMNS: &str = "id, trigger, requested_by, started_at, finished_at, state, compared,
     differing, found, to_change, allowed, repaired, left_for_people, failed, approves,
     approved_by, note, scope";

fn run_of(r: &tokio_postgres::Row) -> Result<RepairRun, StoreError> {
    let found: Json<BTreeMap<String, i64>> = r.try_get(8)?;
    let scope: Json<Vec<String>> = r.try_get(17)?;
    Ok(RepairRun {
        id: r.try_get(0)?,
        trigger: r.try_get(1)?,
        requested_by: r.try_get(2)?,
        started_at: r.try_get(3)?,
        finished_at: r.try_get(4)?,
        state: r.try_get(5)?,
        compared: r.try_get(6)?,
        differing: r.try_get(7)?,
        found: found.0,
        to_change: r.try_get(9)?,
        scope: scope.0,
        allowed: r.try_get(10)?,
        repaired: r.try_get(11)?,
        left_for_people: r.try_get(12)?,
        failed: r.try_get(13)?,
        approves: r.try_get(14)?,
        approved_by: r.try_get(15)?,
        note: r.try_get(16)?,
    })
}

impl Store {
    /// Starts a run, unless another is working: `None` then. A run whose heartbeat is
    /// older than `stale` is marked abandoned first (its process died), so a crash
    /// never blocks repairs for good.
    pub async fn start_repair_run(
        &self,
        trigger: &str,
        requested_by: &str,
        approves: Option<i64>,
        stale: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE repair_runs
                 SET state = 'abandoned', finished_at = now(),
                     note = 'its process stopped before it ended'
                 WHERE state = 'running'
                   AND heartbeat_at < now() - make_interval(secs => $1)",
                &[&stale.as_secs_f64()],
            )
            .await?;
        let row = client
            .query_opt(
                "INSERT INTO repair_runs (trigger, requested_by, approves)
                 VALUES ($1, $2, $3)
                 ON CONFLICT ((true)) WHERE state = 'running' DO NOTHING
                 RETURNING id",
                &[&trigger, &text(requested_by), &approves],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The run is still working.
    pub async fn repair_heartbeat(&self, id: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE repair_runs SET heartbeat_at = now() WHERE id = $1 AND state = 'running'",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// Records the contracts a run the guard stopped would change: an approval covers
    /// those and no others.
    pub async fn set_repair_scope(&self, id: i64, contract_ids: &[&str]) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE repair_runs SET scope = $2 WHERE id = $1",
                &[&id, &Json(contract_ids)],
            )
            .await?;
        Ok(())
    }

    /// Parked dead letters of one contract.
    pub async fn parked_letters_of(&self, contract_id: &str) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM dead_letters WHERE contract_id = $1 AND state = 'parked'",
                &[&contract_id],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Ends a run with what it found and did; `state` is `done`, `awaiting_approval`
    /// or `failed`. `false` when the run was no longer working (taken for abandoned).
    pub async fn finish_repair_run(
        &self,
        id: i64,
        state: &str,
        totals: &RunTotals,
        note: &str,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE repair_runs
                 SET state = $2, finished_at = now(), heartbeat_at = now(), compared = $3,
                     differing = $4, found = $5, to_change = $6, allowed = $7,
                     repaired = $8, left_for_people = $9, failed = $10, note = $11
                 WHERE id = $1 AND state = 'running'",
                &[
                    &id,
                    &state,
                    &totals.compared,
                    &totals.differing,
                    &Json(&totals.found),
                    &totals.to_change,
                    &totals.allowed,
                    &totals.repaired,
                    &totals.left_for_people,
                    &totals.failed,
                    &text(note),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// One run.
    pub async fn repair_run(&self, id: i64) -> Result<Option<RepairRun>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM repair_runs WHERE id = $1"),
                &[&id],
            )
            .await?;
        row.as_ref().map(run_of).transpose()
    }

    /// The latest runs, newest first.
    pub async fn repair_runs(&self, limit: i64) -> Result<Vec<RepairRun>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM repair_runs ORDER BY id DESC LIMIT $1"),
                &[&limit.max(1)],
            )
            .await?;
        rows.iter().map(run_of).collect()
    }

    /// Records an operator's approval of a run awaiting it (once: a second approval of
    /// the same run finds it approved already and gets `None`).
    pub async fn approve_repair_run(
        &self,
        id: i64,
        by: &str,
    ) -> Result<Option<RepairRun>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE repair_runs SET state = 'approved', approved_by = $2
                     WHERE id = $1 AND state = 'awaiting_approval'
                     RETURNING {COLUMNS}"
                ),
                &[&id, &text(by)],
            )
            .await?;
        row.as_ref().map(run_of).transpose()
    }

    /// When the latest periodic run began (abandoned ones do not count), for the
    /// fleet's schedule: shared through the database, so processes started at
    /// different times do not each run their own.
    pub async fn last_periodic_repair(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT max(started_at) FROM repair_runs
                 WHERE trigger = 'periodic' AND state <> 'abandoned'",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Runs awaiting an operator's approval.
    pub async fn repair_runs_awaiting(&self) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM repair_runs WHERE state = 'awaiting_approval'",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// A page of every contract id, in id order, after `after`.
    pub async fn contract_ids_after(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id FROM contracts WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &limit.max(1)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// Writes what a repair found Skeelo to hold afterwards (its facts are not touched:
/// a repair moves Skeelo, never the facts), clears the contract's uncertainty mark and
/// tells its story, in the caller's transaction.
pub async fn record(
    tx: &Transaction<'_>,
    held: Option<&Held>,
    line: &RepairLine<'_>,
) -> Result<(), StoreError> {
    let event_id = format!("repair-{}", line.run);
    let detail = text(line.detail);
    let st = tx
        .prepare_cached(
            "WITH c AS (
                 UPDATE contracts SET skeelo = $2, skeelo_status = $3, updated_at = now()
                 WHERE id = $1),
             u AS (DELETE FROM skeelo_uncertain WHERE contract_id = $1)
             INSERT INTO contract_events (contract_id, event_id, type, actor, outcome,
                                          skeelo_status, skeelo_calls, detail)
             VALUES ($1, $4, 'repair', $5, $6, $7, $8, $9)",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &line.contract_id,
            &held.map(Json),
            &held.map(|h| h.status.as_str()),
            &event_id,
            &text(line.actor),
            &line.outcome,
            &line.skeelo_status,
            &line.calls,
            &detail,
        ],
    )
    .await?;
    Ok(())
}
