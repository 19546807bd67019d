//! The periodic scheduler: queues full syncs for connected accounts whose last sync is older than
//! `BRX_SYNC_STALE_AFTER`, stalest first, never past the queue depth. Every replica runs it; an
//! advisory lock lets one round run at a time, and the queued-job index makes a double enqueue
//! impossible anyway. It also refreshes the job gauges.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::handler::KIND_FULL;
use crate::{
    jobs::{JobError, Lane, store as jobs, wake::JobWakeups},
    metrics::Metrics,
};

/// Key of the advisory lock that makes one replica at a time run a round.
const ROUND_LOCK: i64 = 0x6272_785f_7363_6864; // "brx_schd"
/// Most syncs one round queues, so a backlog after an outage is fed in steadily.
const ROUND_LIMIT: i64 = 1_000;
/// Scheduled syncs run after the ones callers asked for at the same time; aging evens it out.
const SCHEDULED_PRIORITY: i32 = -1;

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// An account whose last sync is older than this gets a full sync.
    pub stale_after: Duration,
    /// Time between rounds.
    pub interval: Duration,
    /// Queued bulk jobs the scheduler never pushes the lane beyond.
    pub max_queue_depth: i64,
}

/// Queues full syncs for stale accounts.
#[derive(Debug, Clone)]
pub struct SyncScheduler {
    pool: PgPool,
    wakeups: JobWakeups,
    metrics: Metrics,
    settings: SchedulerSettings,
}

impl SyncScheduler {
    /// A scheduler over `pool`.
    pub fn new(
        pool: PgPool,
        wakeups: JobWakeups,
        metrics: Metrics,
        settings: SchedulerSettings,
    ) -> Self {
        Self {
            pool,
            wakeups,
            metrics,
            settings,
        }
    }

    /// Runs a round every interval until `shutdown`; a failed round is logged and retried next time.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // The first round one interval after start, not at once: a rolling restart of N replicas
        // then does not run N rounds back to back.
        let first = tokio::time::Instant::now() + self.settings.interval;
        let mut every = tokio::time::interval_at(first, self.settings.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = every.tick() => {}
            }
            if let Err(error) = self.refresh_gauges().await {
                tracing::warn!(%error, "could not read the job counts");
            }
            match self.round().await {
                Ok(0) => {}
                Ok(queued) => tracing::info!(queued, "scheduled full syncs of stale accounts"),
                Err(error) => tracing::warn!(%error, "scheduling stale accounts failed"),
            }
        }
    }

    /// One round: queues full syncs for the stalest accounts that need one and returns how many.
    /// Returns 0 at once when another replica's round holds the lock.
    pub async fn round(&self) -> Result<u64, JobError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(ROUND_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let queued = jobs::queued_in_lane(&mut *tx, Lane::Bulk).await?;
        let room = (self.settings.max_queue_depth - queued).clamp(0, ROUND_LIMIT);
        // An account is skipped while a full sync is queued or running, and for `stale_after` after
        // its last one was requested, so a seller whose syncs keep failing is not re-queued every
        // round. Equal `run_at`s would let claims pick in any order: a millisecond per rank keeps
        // the stalest first.
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, user_id, kind, lane, payload, priority, max_attempts, run_at) \
             SELECT gen_random_uuid(), user_id, $1, 'bulk', '{\"scope\": \"full\"}', $2, 5, \
                    now() + make_interval(secs => rank / 1000.0) \
             FROM ( \
                 SELECT a.user_id, row_number() OVER (ORDER BY a.last_sync_at NULLS FIRST) AS rank \
                 FROM accounts a \
                 WHERE a.status = 'connected' \
                   AND (a.last_sync_at IS NULL OR a.last_sync_at < now() - make_interval(secs => $3)) \
                   AND NOT EXISTS ( \
                       SELECT 1 FROM jobs j WHERE j.user_id = a.user_id AND j.kind = $1 \
                         AND (j.state IN ('queued', 'running') \
                              OR j.created_at > now() - make_interval(secs => $3))) \
                 ORDER BY a.last_sync_at NULLS FIRST LIMIT $4) stale \
             ON CONFLICT (user_id, kind, dedupe_key) WHERE state = 'queued' DO NOTHING",
        )
        .bind(KIND_FULL)
        .bind(SCHEDULED_PRIORITY)
        .bind(self.settings.stale_after.as_secs_f64())
        .bind(room)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let queued = inserted.rows_affected();
        if queued > 0 {
            self.metrics
                .jobs_scheduled
                .with_label_values(&[KIND_FULL])
                .inc_by(queued);
            self.wakeups.announce(Lane::Bulk);
        }
        Ok(queued)
    }

    async fn refresh_gauges(&self) -> Result<(), JobError> {
        for (lane, queued, running) in jobs::lane_counts(&self.pool).await? {
            let gauge = |state| self.metrics.jobs.with_label_values(&[lane.as_str(), state]);
            gauge("queued").set(queued);
            gauge("running").set(running);
        }
        Ok(())
    }
}
