//! Remaps owed after a catalogue outage. A sync that could not ask the catalogue (and found nothing
//! cached) stores the row with `print_unknown`; once MySQL answers again, every seller holding such
//! rows gets the remap job ([`super::remap`]), so their prints are filled without a full sync. Each
//! replica looks when the storage supervisor sees MySQL come back, and every
//! `BRX_REMAP_UNKNOWN_INTERVAL` while MySQL is up: an outage shorter than the supervisor's checks
//! leaves flagged rows too. Queueing coalesces per seller, so replicas looking at once queue one job.

use std::time::Duration;

use crate::storage::Pg;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::UserId,
    jobs::{
        Enqueued, JobError, JobKind, Lane, NewJob, QueueLimit, store as jobs, wake::JobWakeups,
    },
    storage::{PoolKind, PoolState, Storage},
};

/// Sellers one round queues at most; the next round takes the rest.
const ROUND_LIMIT: i64 = 1_000;
/// Remaps own nothing callers wait on: they run after the work callers asked for.
const REMAP_PRIORITY: i32 = -1;

/// Queues the remaps owed after a catalogue outage.
#[derive(Debug, Clone)]
pub struct UnknownPrintWatch {
    pool: Pg,
    storage: Storage,
    wakeups: JobWakeups,
    interval: Duration,
    max_queue_depth: i64,
}

impl UnknownPrintWatch {
    /// A watch over `pool`'s rows, looking every `interval` and whenever `storage` sees MySQL come
    /// back; it never pushes the bulk lane past `max_queue_depth`.
    pub fn new(
        pool: Pg,
        storage: Storage,
        wakeups: JobWakeups,
        interval: Duration,
        max_queue_depth: i64,
    ) -> Self {
        Self {
            pool,
            storage,
            wakeups,
            interval,
            max_queue_depth,
        }
    }

    /// Looks until `shutdown`; a failed round is logged and tried again next time.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut came_up = self.storage.watch_up(PoolKind::Mysql);
        // A first look at once: rows a replica left flagged before this one started are not kept
        // waiting for the first interval.
        came_up.mark_changed();
        let first = tokio::time::Instant::now() + self.interval;
        let mut every = tokio::time::interval_at(first, self.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = every.tick() => {}
                changed = came_up.changed() => {
                    if changed.is_err() {
                        // The storage is gone: only the shutdown is left to wait for.
                        shutdown.cancelled().await;
                        return Ok(());
                    }
                }
            }
            if self.storage.state(PoolKind::Mysql) != PoolState::Up {
                continue;
            }
            match self.round().await {
                Ok(0) => {}
                Ok(queued) => tracing::info!(
                    queued,
                    "queued remaps of rows stored while the catalogue was unreachable"
                ),
                Err(error) => {
                    tracing::warn!(%error, "queueing remaps after a catalogue outage failed")
                }
            }
        }
    }

    /// One round: queues a remap for each seller with rows whose print is unknown (joining a remap
    /// already queued) and returns how many new jobs it queued.
    pub async fn round(&self) -> Result<u64, JobError> {
        let sellers: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM inventory_items WHERE print_unknown LIMIT $1",
        )
        .bind(ROUND_LIMIT)
        .fetch_all(&self.pool)
        .await?;
        let mut queued = 0;
        for seller in sellers {
            let Ok(user_id) = UserId::from_uuid(seller) else {
                continue;
            };
            let limit = QueueLimit::Depth(self.max_queue_depth);
            match jobs::enqueue(&self.pool, &remap(user_id), limit).await {
                Ok(Enqueued::Created(_)) => queued += 1,
                Ok(Enqueued::Coalesced(_)) => {}
                // A full lane takes no more now; the next round comes back for the rest.
                Err(JobError::QueueFull { .. }) => break,
                Err(other) => return Err(other),
            }
        }
        if queued > 0 {
            self.wakeups.announce(Lane::Bulk);
        }
        Ok(queued)
    }
}

fn remap(user_id: UserId) -> NewJob {
    NewJob::new(user_id, JobKind::RemapUnmapped).with_priority(REMAP_PRIORITY)
}
