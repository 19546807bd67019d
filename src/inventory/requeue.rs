//! The push re-queuer: pending pushes whose job gave up wait here with a backoff (see
//! [`super::push`]), and pending pushes no job has looked at for a while (their job was lost) are
//! picked up too. Each round queues one push job per seller concerned, in the same transaction
//! that marks their rows as awaited. Every replica runs it; a transaction-scoped advisory lock lets
//! one round run at a time, and queueing coalesces per seller anyway.

use std::time::Duration;

use crate::storage::Pg;
use tokio_util::sync::CancellationToken;

use super::{outbox, store::push_job};
use crate::jobs::{JobError, Lane, QueueLimit, store as jobs, wake::JobWakeups};

/// Key of the advisory lock that makes one replica at a time run a round.
const ROUND_LOCK: i64 = 0x6272_785f_7271_7565; // "brx_rque"
/// Sellers one round queues at most; the next round takes the rest.
const ROUND_LIMIT: i64 = 1_000;
/// A pending push no job looked at for this long lost its job (a push job that ran would have
/// touched or settled it): it is queued again.
const ORPHANED_AFTER: Duration = Duration::from_secs(600);

/// Queues push jobs for pending pushes that wait for one.
#[derive(Debug, Clone)]
pub struct PushRequeue {
    pool: Pg,
    wakeups: JobWakeups,
    interval: Duration,
}

impl PushRequeue {
    /// A re-queuer over `pool` running a round every `interval`.
    pub fn new(pool: Pg, wakeups: JobWakeups, interval: Duration) -> Self {
        Self {
            pool,
            wakeups,
            interval,
        }
    }

    /// Runs a round every interval until `shutdown`; a failed round is logged and tried next time.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut rounds = crate::rounds::Rounds::every(self.interval);
        while rounds.next(&shutdown).await {
            match self.round().await {
                Ok(0) => {}
                Ok(queued) => tracing::info!(queued, "pending pushes queued again"),
                Err(error) => tracing::warn!(%error, "re-queuing pending pushes failed"),
            }
        }
        Ok(())
    }

    /// One round: queues a push job for every seller whose pending pushes wait for one, and
    /// returns how many sellers. Returns 0 at once when another replica's round holds the lock.
    pub async fn round(&self) -> Result<u64, JobError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(ROUND_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let sellers = outbox::sellers_due(&mut tx, ORPHANED_AFTER, ROUND_LIMIT).await?;
        for seller in &sellers {
            outbox::clear_retry(&mut tx, *seller).await?;
            jobs::enqueue_in(&mut tx, &push_job(*seller), QueueLimit::Unbounded).await?;
        }
        tx.commit().await?;
        if !sellers.is_empty() {
            self.wakeups.announce(Lane::Interactive);
        }
        Ok(sellers.len() as u64)
    }
}
