//! What a running job may do, and the only way it reaches PostgreSQL: [`JobContext::begin`] opens a
//! [`Fenced`] unit of work whose commit first checks (and holds) the job's fence in the same
//! transaction, and [`JobContext::read`] a read-only transaction. A handler holds no pool of its
//! own, so a write that skips the fence cannot be written. The context also tells the handler when
//! to stop: a cancellation, a shutdown, or a lease it could not renew ([`JobContext::lease_token`],
//! which CardTrader calls watch, fires before the lease runs out; [`JobContext::read_stop_token`]
//! fires at a shutdown too, for reads a stopping worker need not wait for).

use std::{
    ops::{Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::storage::Pg;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Enqueued, Job, JobError, JobKind, Lease, NewJob, QueueLimit, store,
    wake::{Changes, Subject},
    worker::JobFailure,
};
use crate::domain::UserId;

/// The longest wait for a lost answer to settle that a job sleeps through in its worker slot.
pub const WAIT_IN_SLOT: std::time::Duration = std::time::Duration::from_secs(1);

/// A running job's view of its claim, and its way to the database.
#[derive(Debug, Clone)]
pub struct JobContext {
    lease: Lease,
    pool: Pg,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
    lease_token: CancellationToken,
    /// A child of `shutdown`, also cancelled with `lease_token`.
    read_stop_token: CancellationToken,
    changes: Changes,
}

/// Flags the heartbeat sets while the handler runs, and the one a unit of work sets when it ended
/// the job.
#[derive(Debug, Default)]
struct Signals {
    cancel_requested: AtomicBool,
    lease_lost: AtomicBool,
    /// A committed unit recorded the job as succeeded ([`Fenced::settle_succeeded`]).
    settled: AtomicBool,
}

impl JobContext {
    /// The context of `lease`; `shutdown` is the worker's.
    pub(super) fn new(
        lease: Lease,
        pool: Pg,
        shutdown: CancellationToken,
        changes: Changes,
    ) -> Self {
        Self {
            lease,
            pool,
            signals: Arc::default(),
            read_stop_token: shutdown.child_token(),
            shutdown,
            lease_token: CancellationToken::new(),
            changes,
        }
    }

    /// Tells the job's watchers that it moved (call after committing its progress).
    pub fn announce(&self) {
        self.changes.publish(Subject::Job(self.lease.job.id));
    }

    /// The context of a lease claimed outside a worker (benchmarks, tests driving a handler's parts
    /// by hand). No heartbeat renews it; its writes are fenced like any job's.
    pub fn detached(lease: Lease, pool: Pg) -> Self {
        Self::new(lease, pool, CancellationToken::new(), Changes::default())
    }

    /// The job as claimed.
    pub fn job(&self) -> &Job {
        &self.lease.job
    }

    /// What the job does.
    pub fn kind(&self) -> &JobKind {
        &self.lease.job.kind
    }

    /// The seller it works for.
    pub fn user_id(&self) -> UserId {
        self.lease.job.user_id
    }

    /// The claim: job, owner, fence.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Whether a failure now would use the job's last attempt: the moment to end the work in a
    /// state a person can act on rather than leave it half done.
    pub fn is_last_attempt(&self) -> bool {
        self.lease.job.attempts >= self.lease.job.max_attempts
    }

    /// Whether the job should stop at this safe point, and why.
    pub fn should_stop(&self) -> Option<JobFailure> {
        if self.lease_lost() {
            Some(JobFailure::LeaseLost)
        } else if self.signals.cancel_requested.load(Ordering::Relaxed)
            || self.lease.job.cancel_requested
        {
            Some(JobFailure::Cancelled)
        } else if self.shutdown.is_cancelled() {
            Some(JobFailure::Interrupted)
        } else {
            None
        }
    }

    /// Fires when this worker can no longer count on its lease (taken over, or not renewed in time
    /// to finish a CardTrader call before it runs out). Every CardTrader call of the job watches it,
    /// so a worker that lost its lease sends nothing more.
    pub fn lease_token(&self) -> CancellationToken {
        self.lease_token.clone()
    }

    /// Fires when the lease is lost or the worker stops. For CardTrader reads only (the export): a
    /// read abandoned halfway changes nothing, so a draining replica hands the job back at once
    /// instead of waiting out an export that may take minutes. A write's outcome must be known, so
    /// writes watch [`Self::lease_token`] alone and run to their end.
    pub fn read_stop_token(&self) -> CancellationToken {
        self.read_stop_token.clone()
    }

    /// Whether the lease was lost (see [`Self::lease_token`]).
    pub fn lease_lost(&self) -> bool {
        self.signals.lease_lost.load(Ordering::Relaxed)
    }

    /// Whether one of the job's committed units already recorded it as succeeded: the worker has
    /// nothing left to write, and the lease ended with that commit.
    pub fn settled(&self) -> bool {
        self.signals.settled.load(Ordering::Acquire)
    }

    /// Opens a unit of work: every write the job makes goes through one, and its commit checks the
    /// fence in the same transaction.
    pub async fn begin(&self) -> Result<Fenced, JobError> {
        if self.lease_lost() {
            return Err(JobError::LeaseLost);
        }
        Ok(Fenced {
            tx: self.pool.begin().await?,
            job_id: self.lease.job.id,
            fence: self.lease.fence,
            fence_held: false,
            settles: false,
            signals: self.signals.clone(),
        })
    }

    /// A read-only transaction, for what the job reads outside a unit of work.
    pub async fn read(&self) -> Result<ReadOnly, JobError> {
        Ok(ReadOnly {
            tx: self.pool.begin_with("BEGIN READ ONLY").await?,
        })
    }

    /// Waits until `at` if it is still ahead; `true` after a sleep (look again), `false` when `at`
    /// had passed (or there is none). For a write whose answer was lost: until it has settled, "it
    /// did not apply" cannot be decided. A wait longer than [`WAIT_IN_SLOT`] is not slept through:
    /// the job goes back to the queue until `at` ([`JobFailure::Deferred`], no attempt spent), so
    /// a few lost answers cannot hold every worker slot while the work behind them queues.
    pub async fn wait_until(
        &self,
        at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<bool, JobFailure> {
        let Some(left) = at.and_then(|at| (at - chrono::Utc::now()).to_std().ok()) else {
            return Ok(false);
        };
        if left > WAIT_IN_SLOT {
            tracing::info!(
                ?left,
                "a write may still land; the job waits in the queue, not in its slot"
            );
            return Err(JobFailure::Deferred { wait: left });
        }
        tracing::info!(
            ?left,
            "a write may still land; waiting before deciding it did not"
        );
        tokio::select! {
            () = tokio::time::sleep(left) => Ok(true),
            () = self.lease_token.cancelled() => Err(JobFailure::LeaseLost),
        }
    }

    /// Replaces the job's progress counters, fenced, in a unit of work of its own.
    pub async fn record_progress(&self, progress: &serde_json::Value) -> Result<(), JobError> {
        let mut unit = self.begin().await?;
        unit.record_progress(progress).await?;
        unit.commit().await
    }

    pub(super) fn note_cancel_requested(&self, requested: bool) {
        self.signals
            .cancel_requested
            .store(requested, Ordering::Relaxed);
    }

    /// The lease is gone, or about to be: stop every call and write of this job.
    pub(super) fn lose_lease(&self) {
        self.signals.lease_lost.store(true, Ordering::Relaxed);
        self.lease_token.cancel();
        self.read_stop_token.cancel();
    }
}

/// One transaction of a job's writes. Dereferences to the connection, so store functions take it as
/// `&mut PgConnection`; [`Fenced::commit`] checks the fence before committing, and a unit dropped
/// without commit rolls back.
#[derive(Debug)]
pub struct Fenced {
    tx: Transaction<'static, Postgres>,
    job_id: Uuid,
    fence: i64,
    /// Set once a fenced update of the job row ran in this transaction: its row lock already
    /// holds off any takeover until the commit.
    fence_held: bool,
    /// Whether this unit records the job as succeeded.
    settles: bool,
    signals: Arc<Signals>,
}

impl Fenced {
    /// Adds `deltas` to the job's progress counters (fenced) and returns whether a cancellation
    /// was requested.
    pub async fn add_progress(&mut self, deltas: &serde_json::Value) -> Result<bool, JobError> {
        let cancel = store::add_progress(&mut self.tx, self.job_id, self.fence, deltas).await?;
        self.fence_held = true;
        Ok(cancel)
    }

    /// Replaces the job's progress counters (fenced).
    pub async fn record_progress(&mut self, progress: &serde_json::Value) -> Result<(), JobError> {
        store::record_progress(&mut self.tx, self.job_id, self.fence, progress).await?;
        self.fence_held = true;
        Ok(())
    }

    /// Asks for more work in this unit: it is queued if and only if this unit commits.
    pub async fn enqueue(&mut self, new: &NewJob) -> Result<Enqueued, JobError> {
        store::enqueue_in(&mut self.tx, new, QueueLimit::Unbounded).await
    }

    /// Records the job as succeeded in this unit (fenced): the work it commits is the job's last,
    /// and the job ends with it instead of in a transaction of its own after the handler returns.
    /// The handler must return `Ok` once this unit has committed.
    pub async fn settle_succeeded(&mut self) -> Result<(), JobError> {
        store::succeed_in(&mut self.tx, self.job_id, self.fence).await?;
        self.fence_held = true;
        self.settles = true;
        Ok(())
    }

    /// Checks that this claim still holds the job (holding the job row, so a takeover waits for
    /// this commit) and commits; [`JobError::LeaseLost`] rolls everything back.
    pub async fn commit(mut self) -> Result<(), JobError> {
        if !self.fence_held {
            store::lock_fenced(&mut self.tx, self.job_id, self.fence).await?;
        }
        self.tx.commit().await?;
        if self.settles {
            self.signals.settled.store(true, Ordering::Release);
        }
        Ok(())
    }
}

impl Deref for Fenced {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for Fenced {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// A read-only transaction (PostgreSQL refuses writes in it); dropped, it ends.
#[derive(Debug)]
pub struct ReadOnly {
    tx: Transaction<'static, Postgres>,
}

impl Deref for ReadOnly {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for ReadOnly {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
