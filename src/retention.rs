//! Retention: every replica runs [`Retention`], which deletes what ended long enough ago (ended
//! jobs, the step logs of ended purchases, applied webhook events, order records long quiet) through
//! each table's owner, one bounded batch per statement, one replica's round at a time; and reports
//! the size of every table of the service as gauges.

use std::time::Duration;

use crate::storage::Pg;
use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::{
    config::RetentionConfig,
    jobs::{self, JobError},
    metrics::Metrics,
    purchase::{self, PurchaseError},
    webhooks,
};

/// Key of the advisory lock that makes one replica at a time run a round.
pub const ROUND_LOCK: i64 = 0x6272_785f_7265_746e; // "brx_retn"
/// Batches of one table a round deletes at most, so a round after a long outage (or the first one
/// on an old database) ends, and the next one carries on, rather than running for hours.
const MAX_BATCHES_PER_ROUND: usize = 1_000;
/// How long each kind of record is kept, and how retention runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Time between rounds (and table-size refreshes).
    pub interval: Duration,
    /// Rows one statement deletes at most.
    pub batch: i64,
    /// Ended jobs are kept this long after they ended.
    pub jobs: Duration,
    /// Completed or failed purchases keep their step log this long after they ended.
    pub purchases: Duration,
    /// Applied webhook events are kept this long after they were applied.
    pub webhooks: Duration,
    /// Webhook order records are kept this long after their last delivery (in effect never less
    /// than `webhooks`, so a redelivery of a stored event always finds its order's record).
    pub webhook_orders: Duration,
}

impl RetentionSettings {
    /// From `BRX_RETENTION_*`.
    pub fn from_config(config: &RetentionConfig) -> Self {
        Self {
            interval: config.interval,
            batch: i64::from(config.batch),
            jobs: config.jobs,
            purchases: config.purchases,
            webhooks: config.webhooks,
            webhook_orders: config.webhook_orders,
        }
    }
}

/// What one round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Ended jobs.
    pub jobs: u64,
    /// Ended purchases whose step log and line snapshots were dropped.
    pub purchases: u64,
    /// Their step log entries.
    pub purchase_steps: u64,
    /// Applied webhook events.
    pub webhook_events: u64,
    /// Webhook order records.
    pub webhook_orders: u64,
}

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Deleting jobs failed.
    #[error(transparent)]
    Jobs(#[from] JobError),
    /// Pruning purchases failed.
    #[error(transparent)]
    Purchases(#[from] PurchaseError),
    /// Storage failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Deletes what is past retention, a round every interval, and keeps the table-size gauges fresh.
#[derive(Debug, Clone)]
pub struct Retention {
    pool: Pg,
    metrics: Metrics,
    settings: RetentionSettings,
}

impl Retention {
    /// Retention over `pool`.
    pub fn new(pool: Pg, metrics: Metrics, settings: RetentionSettings) -> Self {
        Self {
            pool,
            metrics,
            settings,
        }
    }

    /// Refreshes the table sizes at once, then every interval runs a round until `shutdown`; a
    /// failed round is logged and tried again next time.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.refresh_sizes_logged().await;
        let mut rounds = crate::rounds::Rounds::every(self.settings.interval);
        while rounds.next(&shutdown).await {
            match self.round(&shutdown).await {
                Ok(Some(swept)) if swept != Swept::default() => {
                    tracing::info!(?swept, "retention deleted what ended long ago");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "retention round failed"),
            }
            self.refresh_sizes_logged().await;
        }
        Ok(())
    }

    /// One round: deletes everything past retention, a batch per statement, and returns what it
    /// deleted; stops early at `stop` or after [`MAX_BATCHES_PER_ROUND`] batches of a table.
    /// Returns `None` at once when another replica's round holds the lock.
    pub async fn round(&self, stop: &CancellationToken) -> Result<Option<Swept>, RetentionError> {
        // The lock lives as long as this transaction, which writes nothing and holds no snapshot
        // between statements, so it holds back neither writers nor vacuum; the batches run on
        // other connections and commit one by one, so each holds its row locks briefly. A replica
        // that dies mid-round drops the connection, and with it the lock.
        let mut round = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(ROUND_LOCK)
            .fetch_one(&mut *round)
            .await?;
        if !locked {
            return Ok(None);
        }
        // Database time, like every timestamp retention compares.
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *round)
            .await?;
        let swept = self.sweep(now, stop).await;
        round.commit().await?;
        swept.map(Some)
    }

    async fn sweep(
        &self,
        now: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<Swept, RetentionError> {
        let settings = self.settings;
        // Nothing here predates 1970, so a retention reaching further back (humantime parses
        // millennia, PostgreSQL's timestamps stop at 4713 BC) keeps everything.
        let before = |kept: Duration| {
            TimeDelta::from_std(kept)
                .ok()
                .and_then(|kept| now.checked_sub_signed(kept))
                .map_or(DateTime::UNIX_EPOCH, |cutoff| {
                    cutoff.max(DateTime::UNIX_EPOCH)
                })
        };
        let (pool, batch) = (&self.pool, settings.batch);
        let jobs_cutoff = before(settings.jobs);
        let jobs = self
            .batches("jobs", stop, || async move {
                jobs::store::delete_ended_before(pool, jobs_cutoff, batch).await
            })
            .await?;
        let (purchases, purchase_steps) = self
            .prune_purchases(before(settings.purchases), stop)
            .await?;
        let events_cutoff = before(settings.webhooks);
        let webhook_events = self
            .batches("webhook_events", stop, || async move {
                webhooks::delete_events_applied_before(pool, events_cutoff, batch).await
            })
            .await?;
        let orders_cutoff = before(settings.webhook_orders.max(settings.webhooks));
        let webhook_orders = self
            .batches("webhook_orders", stop, || async move {
                webhooks::delete_orders_untouched_since(pool, orders_cutoff, batch).await
            })
            .await?;
        Ok(Swept {
            jobs,
            purchases,
            purchase_steps,
            webhook_events,
            webhook_orders,
        })
    }

    /// Runs `delete` (one statement deleting at most a batch) until a batch comes back short.
    async fn batches<F, Fut, E>(
        &self,
        table: &'static str,
        stop: &CancellationToken,
        mut delete: F,
    ) -> Result<u64, RetentionError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<u64, E>>,
        RetentionError: From<E>,
    {
        let mut total = 0;
        for _ in 0..MAX_BATCHES_PER_ROUND {
            let deleted = delete().await?;
            total += deleted;
            self.metrics
                .retention_deleted
                .with_label_values(&[table])
                .inc_by(deleted);
            if deleted < self.batch_len() || stop.is_cancelled() {
                break;
            }
        }
        Ok(total)
    }

    /// [`Self::batches`] for purchases, whose batch counts purchases but deletes their steps.
    async fn prune_purchases(
        &self,
        cutoff: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<(u64, u64), RetentionError> {
        let (mut purchases, mut steps) = (0, 0);
        for _ in 0..MAX_BATCHES_PER_ROUND {
            let mut tx = self.pool.begin().await?;
            let pruned = purchase::prune_ended_before(&mut tx, cutoff, self.settings.batch).await?;
            tx.commit().await?;
            purchases += pruned.purchases;
            steps += pruned.steps;
            self.metrics
                .retention_deleted
                .with_label_values(&["purchase_steps"])
                .inc_by(pruned.steps);
            if pruned.purchases < self.batch_len() || stop.is_cancelled() {
                break;
            }
        }
        Ok((purchases, steps))
    }

    fn batch_len(&self) -> u64 {
        u64::try_from(self.settings.batch).unwrap_or(0)
    }

    /// Reads the estimated rows and the bytes of every table of the service into the gauges.
    pub async fn refresh_sizes(&self) -> Result<(), sqlx::Error> {
        let sizes: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_live_tup, pg_total_relation_size(relid) \
             FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname <> '_sqlx_migrations'",
        )
        .fetch_all(&self.pool)
        .await?;
        for (table, rows, bytes) in sizes {
            self.metrics
                .table_rows
                .with_label_values(&[&table])
                .set(rows);
            self.metrics
                .table_bytes
                .with_label_values(&[&table])
                .set(bytes);
        }
        Ok(())
    }

    async fn refresh_sizes_logged(&self) {
        if let Err(error) = self.refresh_sizes().await {
            tracing::warn!(%error, "could not read the table sizes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_defaults_keep_order_records_longer_than_events() {
        let settings = RetentionSettings::from_config(&Config::defaults().retention);
        assert!(settings.webhook_orders > settings.webhooks);
        assert_eq!(settings.batch, 1_000);
    }
}
