//! The sync capability as callers use it: start (coalescing, bounded queue), look up, list, cancel,
//! status. The work itself is the job handler's.

use crate::storage::Pg;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::scope::SyncScope;
use crate::{
    accounts::{AccountError, AccountStatus, Accounts},
    domain::UserId,
    jobs::{
        Enqueued, Job, JobError, JobState, KindName, Lane, NewJob, QueueLimit, store,
        wake::{JobWakeups, Subject},
    },
};

/// The kinds that are syncs.
pub const SYNC_KINDS: [KindName; 2] = [KindName::SyncFull, KindName::SyncTargeted];

/// What can go wrong starting or reading syncs.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The seller has no connected account (`None`: none at all).
    #[error("{}", crate::accounts::not_connected_reason(*.0))]
    NotConnected(Option<AccountStatus>),
    /// No such sync.
    #[error("no such sync")]
    NotFound,
    /// A job queue error (full queue, storage).
    #[error(transparent)]
    Jobs(#[from] JobError),
    /// Storage failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Account lookup failure.
    #[error(transparent)]
    Account(#[from] AccountError),
}

/// A seller's sync state at a glance.
#[derive(Debug, Clone)]
pub struct SyncStatus {
    /// The most recent sync that ended.
    pub last_finished: Option<Job>,
    /// The sync queued or running now.
    pub current: Option<Job>,
    /// Items stored locally.
    pub item_count: u64,
}

/// The sync capability.
#[derive(Debug, Clone)]
pub struct Syncs {
    pool: Pg,
    accounts: Accounts,
    wakeups: JobWakeups,
    max_queue_depth: i64,
}

impl Syncs {
    /// Syncs stored in `pool`, refusing new jobs past `max_queue_depth` queued per lane, announcing
    /// new ones through `wakeups`.
    pub fn new(pool: Pg, accounts: Accounts, wakeups: JobWakeups, max_queue_depth: i64) -> Self {
        Self {
            pool,
            accounts,
            wakeups,
            max_queue_depth,
        }
    }

    /// Queues a sync of `scope`, or joins the queued one of the same kind.
    pub async fn start(
        &self,
        user_id: UserId,
        scope: SyncScope,
        priority: i32,
    ) -> Result<Enqueued, SyncError> {
        let account = match self.accounts.get(user_id).await {
            Ok(account) => account,
            Err(AccountError::NotFound) => return Err(SyncError::NotConnected(None)),
            Err(other) => return Err(other.into()),
        };
        if account.status != AccountStatus::Connected {
            return Err(SyncError::NotConnected(Some(account.status)));
        }
        let new = NewJob::new(user_id, scope.job_kind()).with_priority(priority);
        let enqueued =
            store::enqueue(&self.pool, &new, QueueLimit::Depth(self.max_queue_depth)).await?;
        match &enqueued {
            Enqueued::Created(_) => self.wakeups.announce(new.kind.lane()),
            // The queued job's scope may have grown: its watchers re-read it.
            Enqueued::Coalesced(job) => self.wakeups.changes().publish(Subject::Job(job.id)),
        }
        Ok(enqueued)
    }

    /// Queues a remap for every seller with unmapped rows of these blueprints (the catalogue was
    /// told they changed); returns how many sellers' remaps were queued.
    pub async fn remap_blueprints(&self, blueprint_ids: &[i64]) -> Result<u64, SyncError> {
        let queued = super::remap::queue_for_blueprints(&self.pool, blueprint_ids).await?;
        if queued > 0 {
            self.wakeups.announce(Lane::Bulk);
        }
        Ok(queued)
    }

    /// One sync.
    pub async fn get(&self, job_id: Uuid) -> Result<Job, SyncError> {
        match store::get(&self.pool, job_id).await {
            Ok(job) if SYNC_KINDS.contains(&job.kind.name()) => Ok(job),
            Ok(_) | Err(JobError::NotFound) => Err(SyncError::NotFound),
            Err(other) => Err(other.into()),
        }
    }

    /// A page of the seller's syncs, newest first.
    pub async fn list(
        &self,
        user_id: UserId,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<Job>, SyncError> {
        Ok(store::list_for_user(&self.pool, user_id, &SYNC_KINDS, before, limit).await?)
    }

    /// Cancels a queued sync now, or asks a running one to stop after its chunk.
    pub async fn cancel(&self, job_id: Uuid) -> Result<Job, SyncError> {
        self.get(job_id).await?;
        let job = store::cancel(&self.pool, job_id).await?;
        self.wakeups.changes().publish(Subject::Job(job_id));
        Ok(job)
    }

    /// The seller's last finished sync, current sync and item count.
    pub async fn status(&self, user_id: UserId) -> Result<SyncStatus, SyncError> {
        let finished = [
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Dead,
        ];
        let active = [JobState::Running, JobState::Queued];
        let last_finished =
            store::latest_in_states(&self.pool, user_id, &SYNC_KINDS, &finished).await?;
        let current = store::latest_in_states(&self.pool, user_id, &SYNC_KINDS, &active).await?;
        let item_count = super::store::item_count(&self.pool, user_id).await?;
        Ok(SyncStatus {
            last_finished,
            current,
            item_count,
        })
    }
}
