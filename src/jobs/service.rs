//! What operators and the admin API see of the jobs: queue depth per lane, the dead letters, and
//! sending a dead job back to the queue.

use crate::storage::Pg;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Job, JobError, store, wake::JobWakeups};

/// The jobs, as operators use them.
#[derive(Debug, Clone)]
pub struct Jobs {
    pool: Pg,
    wakeups: JobWakeups,
}

impl Jobs {
    /// Jobs stored in `pool`; a revived job wakes workers through `wakeups`.
    pub fn new(pool: Pg, wakeups: JobWakeups) -> Self {
        Self { pool, wakeups }
    }

    /// Queued, running and dead jobs per lane, across all replicas.
    pub async fn lane_counts(&self) -> Result<Vec<store::LaneCounts>, JobError> {
        store::lane_counts(&self.pool).await
    }

    /// A page of dead jobs, most recently buried first, after `before`.
    pub async fn dead(
        &self,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<Job>, JobError> {
        store::dead_jobs(&self.pool, before, limit).await
    }

    /// Sends dead job `id` back to the queue with a fresh allowance of attempts.
    pub async fn revive(&self, id: Uuid) -> Result<Job, JobError> {
        let job = store::revive(&self.pool, id).await?;
        tracing::warn!(job_id = %id, kind = %job.kind.name(), "dead job sent back to the queue by an operator");
        self.wakeups.announce(job.lane);
        Ok(job)
    }
}
