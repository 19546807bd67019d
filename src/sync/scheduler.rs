//! The periodic scheduler: queues full syncs for connected accounts whose last sync is older than
//! `BRX_SYNC_STALE_AFTER`, stalest first, never past the queue depth. Every replica runs it; a
//! transaction-scoped advisory lock lets one round run at a time, and the queued-job index makes a
//! double enqueue impossible anyway. It also refreshes the job gauges.

use std::time::Duration;

use crate::storage::Pg;
use tokio_util::sync::CancellationToken;

use chrono::{DateTime, Utc};

use crate::{
    domain::UserId,
    jobs::{JobError, JobKind, KindName, Lane, store as jobs, wake::JobWakeups},
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
    pool: Pg,
    wakeups: JobWakeups,
    metrics: Metrics,
    settings: SchedulerSettings,
}

impl SyncScheduler {
    /// A scheduler over `pool`.
    pub fn new(
        pool: Pg,
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
        let mut rounds = crate::rounds::Rounds::every(self.settings.interval);
        while rounds.next(&shutdown).await {
            if let Err(error) = self.refresh_gauges().await {
                tracing::warn!(%error, "could not read the job counts");
            }
            match self.round().await {
                Ok(0) => {}
                Ok(queued) => tracing::info!(queued, "scheduled full syncs of stale accounts"),
                Err(error) => tracing::warn!(%error, "scheduling stale accounts failed"),
            }
        }
        Ok(())
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
        let due = self.due_accounts(&mut tx, room).await?;
        let inserted =
            jobs::enqueue_for_sellers_in(&mut tx, &due, &JobKind::SyncFull, SCHEDULED_PRIORITY)
                .await?;
        tx.commit().await?;
        let queued = inserted;
        if queued > 0 {
            self.metrics
                .jobs_scheduled
                .with_label_values(&[KindName::SyncFull.as_str()])
                .inc_by(queued);
            self.wakeups.announce(Lane::Bulk);
        }
        Ok(queued)
    }

    /// Up to `room` connected accounts whose last sync is older than `stale_after`, stalest
    /// first, skipping those with a full sync queued or running, or requested within `stale_after`
    /// (a seller whose syncs keep failing is not re-queued every round).
    async fn due_accounts(
        &self,
        conn: &mut sqlx::PgConnection,
        room: i64,
    ) -> Result<Vec<UserId>, JobError> {
        let mut due = Vec::new();
        let mut after: Option<(Option<DateTime<Utc>>, uuid::Uuid)> = None;
        while (due.len() as i64) < room {
            let page: Vec<(uuid::Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
                "SELECT user_id, last_sync_at FROM accounts \
                 WHERE status = 'connected' \
                   AND (last_sync_at IS NULL OR last_sync_at < now() - make_interval(secs => $1)) \
                   AND ($2 OR (coalesce(last_sync_at, '-infinity'), user_id) \
                               > (coalesce($3, '-infinity'::timestamptz), $4)) \
                 ORDER BY coalesce(last_sync_at, '-infinity'), user_id LIMIT $5",
            )
            .bind(self.settings.stale_after.as_secs_f64())
            .bind(after.is_none())
            .bind(after.and_then(|(at, _)| at))
            .bind(after.map(|(_, id)| id))
            .bind(ROUND_LIMIT)
            .fetch_all(&mut *conn)
            .await?;
            let Some(&(last_id, last_at)) = page.last() else {
                break;
            };
            after = Some((last_at, last_id));
            let candidates: Vec<UserId> = page
                .iter()
                .filter_map(|(id, _)| UserId::from_uuid(*id).ok())
                .collect();
            let busy = jobs::recently_requested(
                &mut *conn,
                &candidates,
                KindName::SyncFull,
                self.settings.stale_after,
            )
            .await?;
            due.extend(
                candidates
                    .into_iter()
                    .filter(|user| !busy.contains(user))
                    .take(usize::try_from(room).unwrap_or(0).saturating_sub(due.len())),
            );
            if (page.len() as i64) < ROUND_LIMIT {
                break;
            }
        }
        Ok(due)
    }

    async fn refresh_gauges(&self) -> Result<(), JobError> {
        for counts in jobs::lane_counts(&self.pool).await? {
            let gauge = |state| {
                self.metrics
                    .jobs
                    .with_label_values(&[counts.lane.as_str(), state])
            };
            gauge("queued").set(counts.queued);
            gauge("running").set(counts.running);
            gauge("dead").set(counts.dead);
        }
        Ok(())
    }
}
