//! The worker that runs jobs of one lane: claims while it has free slots, keeps each lease alive with
//! heartbeats (which also carry cancellation requests), and records the outcome. Stopping hands running
//! jobs back to the queue instead of leaving their leases to expire.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{JobError, Lane, Lease, Ranking, store};
use crate::{metrics::Metrics, retry::full_jitter};

/// Most jobs one claim takes at once (bounded so one replica does not sweep a deep queue that other
/// replicas could share).
const MAX_CLAIM_BATCH: usize = 16;

/// How a job's run ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobFailure {
    /// Worth another attempt after a backoff.
    #[error("{0}")]
    Transient(String),
    /// CardTrader asked us to slow down: run again after `wait`, without spending an attempt.
    #[error("rate limited for {wait:?}")]
    RateLimited {
        /// How long to wait.
        wait: Duration,
    },
    /// Retrying cannot help (e.g. the seller's token is invalid).
    #[error("{0}")]
    Permanent(String),
    /// The job noticed a cancellation request and stopped.
    #[error("cancelled")]
    Cancelled,
    /// The worker is shutting down: the job goes back to the queue as it is.
    #[error("interrupted by shutdown")]
    Interrupted,
}

/// What a kind of job does.
#[tonic::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// The `kind` this handler runs.
    fn kind(&self) -> &'static str;

    /// Runs one attempt. Check [`JobContext::should_stop`] at safe points.
    async fn run(&self, context: JobContext) -> Result<(), JobFailure>;
}

/// What a running job can see of its lease.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The claim: job, owner and fence (to pass to fenced writes).
    pub lease: Lease,
    cancel_requested: Arc<AtomicBool>,
    lease_lost: Arc<AtomicBool>,
    shutdown: CancellationToken,
    changes: super::wake::Changes,
}

impl JobContext {
    /// Tells the job's watchers that it moved (call after committing its progress).
    pub fn announce(&self) {
        self.changes
            .publish(super::wake::Subject::Job(self.lease.job.id));
    }

    /// Whether the job should stop at this safe point, and why.
    pub fn should_stop(&self) -> Option<JobFailure> {
        if self.lease_lost.load(Ordering::Relaxed) {
            Some(JobFailure::Transient("lease lost".into()))
        } else if self.cancel_requested.load(Ordering::Relaxed) || self.lease.job.cancel_requested {
            Some(JobFailure::Cancelled)
        } else if self.shutdown.is_cancelled() {
            Some(JobFailure::Interrupted)
        } else {
            None
        }
    }
}

/// Settings of one lane's worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Identifies this replica in `lease_owner`.
    pub owner: String,
    /// The lane it serves.
    pub lane: Lane,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Lease length; a dead worker's jobs are taken over after this.
    pub lease: Duration,
    /// How often to poll for work when idle (wake-ups may come sooner).
    pub poll_interval: Duration,
    /// How claims order the lane's due jobs.
    pub ranking: Ranking,
    /// First and largest retry backoff.
    pub retry_min: Duration,
    /// Largest retry backoff.
    pub retry_max: Duration,
}

/// Runs the jobs of one lane.
pub struct Worker {
    pool: PgPool,
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
    settings: WorkerSettings,
    wake: Arc<tokio::sync::Notify>,
    metrics: Metrics,
    slots: Arc<Semaphore>,
    handed: mpsc::UnboundedSender<(Lease, OwnedSemaphorePermit)>,
    handed_in: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(Lease, OwnedSemaphorePermit)>>>,
    backlog: Arc<AtomicBool>,
    changes: super::wake::Changes,
}

/// A free slot of a worker, held for a job about to be handed to it.
#[derive(Debug)]
pub struct Slot(OwnedSemaphorePermit);

/// Hands a worker jobs this replica has just created already claimed (see
/// [`super::store::insert_claimed`]), so they start without a claim round trip or a wake-up.
#[derive(Debug, Clone)]
pub struct LocalStart {
    slots: Arc<Semaphore>,
    handed: mpsc::UnboundedSender<(Lease, OwnedSemaphorePermit)>,
    owner: String,
    lease: Duration,
    /// Set while queued jobs may be waiting: a free slot goes to them first (the claim loop
    /// clears it once a claim finds nothing), so new work cannot starve queued work.
    backlog: Arc<AtomicBool>,
}

impl LocalStart {
    /// The `lease_owner` a job handed to this worker must carry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The lease length such a job must be claimed for.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// A free slot, if the worker has one now and no queued job is waiting for it; without one,
    /// queue the job instead.
    pub fn try_slot(&self) -> Option<Slot> {
        if self.backlog.load(Ordering::Relaxed) {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok().map(Slot)
    }

    /// Tells the worker a job was queued rather than handed to it, so free slots go to the queue
    /// until it is drained.
    pub fn queued(&self) {
        self.backlog.store(true, Ordering::Relaxed);
    }

    /// Runs the claimed `lease` in `slot`. Should the worker have stopped, the job's lease runs out
    /// and another worker rescues it.
    pub fn start(&self, lease: Lease, slot: Slot) {
        if self.handed.send((lease, slot.0)).is_err() {
            tracing::warn!(
                "the worker has stopped; the job will be rescued when its lease runs out"
            );
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&&str> = self.handlers.keys().collect();
        f.debug_struct("Worker")
            .field("settings", &self.settings)
            .field("kinds", &kinds)
            .finish()
    }
}

impl Worker {
    /// A worker for `settings.lane` running `handlers`.
    pub fn new(
        pool: PgPool,
        handlers: Vec<Arc<dyn JobHandler>>,
        settings: WorkerSettings,
        metrics: Metrics,
    ) -> Self {
        let handlers = handlers
            .into_iter()
            .map(|handler| (handler.kind(), handler))
            .collect();
        let (handed, handed_in) = mpsc::unbounded_channel();
        Self {
            pool,
            handlers,
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            settings,
            wake: Arc::new(tokio::sync::Notify::new()),
            metrics,
            handed,
            handed_in: std::sync::Mutex::new(Some(handed_in)),
            // Until the first claim looks, assume there is queued work.
            backlog: Arc::new(AtomicBool::new(true)),
            changes: super::wake::Changes::default(),
        }
    }

    /// This worker, telling `changes` whenever one of its jobs starts, moves or settles.
    pub fn announcing(self, changes: super::wake::Changes) -> Self {
        Self { changes, ..self }
    }

    /// A handle that starts jobs claimed at creation on this worker's free slots.
    pub fn local_start(&self) -> LocalStart {
        LocalStart {
            slots: self.slots.clone(),
            handed: self.handed.clone(),
            owner: self.settings.owner.clone(),
            lease: self.settings.lease,
            backlog: self.backlog.clone(),
        }
    }

    /// The lane this worker serves.
    pub fn lane(&self) -> Lane {
        self.settings.lane
    }

    /// A handle that wakes the worker before its next poll (new work was queued).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Claims and runs jobs until `shutdown`; running jobs are then interrupted and handed back.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let slots = self.slots.clone();
        let mut handed = self
            .handed_in
            .lock()
            .map_err(|_| anyhow::anyhow!("worker state poisoned"))?
            .take()
            .ok_or_else(|| anyhow::anyhow!("the worker is already running"))?;
        let this = Arc::new(self);
        let mut running = tokio::task::JoinSet::new();
        let spawn = |running: &mut tokio::task::JoinSet<()>, lease: Lease, permit| {
            let this = this.clone();
            let shutdown = shutdown.clone();
            running.spawn(async move {
                this.execute(lease, shutdown).await;
                drop(permit);
            });
        };
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                Some((lease, permit)) = handed.recv() => {
                    spawn(&mut running, lease, permit);
                    continue;
                }
                permit = slots.clone().acquire_owned() => permit?,
            };
            // Every free slot is filled by one claim: claiming one job per round trip capped a busy
            // lane at a few hundred jobs a second while slots stood idle.
            let mut permits = vec![permit];
            while permits.len() < MAX_CLAIM_BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let wanted = permits.len();
            match store::claim_many(
                &this.pool,
                this.settings.lane,
                &this.settings.owner,
                this.settings.lease,
                this.settings.ranking,
                wanted,
            )
            .await
            {
                Ok(leases) => {
                    let drained = leases.len() < wanted;
                    for (lease, permit) in leases.into_iter().zip(permits) {
                        spawn(&mut running, lease, permit);
                    }
                    if !drained {
                        continue;
                    }
                    this.backlog.store(false, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, lane = this.settings.lane.as_str(), "claiming a job failed");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some((lease, permit)) = handed.recv() => spawn(&mut running, lease, permit),
                () = this.wake.notified() => {}
                () = tokio::time::sleep(this.settings.poll_interval) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        // Jobs handed over but not started go back to the queue, like interrupted ones.
        handed.close();
        while let Ok((lease, _permit)) = handed.try_recv() {
            this.settle(&lease, Err(JobFailure::Interrupted)).await;
        }
        while running.join_next().await.is_some() {}
        Ok(())
    }

    async fn execute(&self, lease: Lease, shutdown: CancellationToken) {
        let job = &lease.job;
        let span = tracing::info_span!("job", job_id = %job.id, kind = %job.kind, user_id = %job.user_id, attempt = job.attempts);
        let _entered = span.enter();
        let Some(handler) = self.handlers.get(job.kind.as_str()).cloned() else {
            self.settle(
                &lease,
                Err(JobFailure::Permanent(format!(
                    "no handler for kind '{}'",
                    job.kind
                ))),
            )
            .await;
            return;
        };
        let context = JobContext {
            lease: lease.clone(),
            cancel_requested: Arc::new(AtomicBool::new(false)),
            lease_lost: Arc::new(AtomicBool::new(false)),
            shutdown,
            changes: self.changes.clone(),
        };
        context.announce();
        // The heartbeat runs inside this task, not beside it: if the task dies (a crash, an abort), the
        // lease stops being extended and another worker takes the job over.
        let run = handler.run(context.clone());
        let beat = heartbeat(self.pool.clone(), context.clone(), self.settings.lease);
        tokio::pin!(run, beat);
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            () = &mut beat => run.await,
        };
        if context.lease_lost.load(Ordering::Relaxed) {
            // Whatever the job did after the takeover was refused by the fence; settling would be too.
            self.settle(&lease, Err(JobFailure::Transient("lease lost".into())))
                .await;
            return;
        }
        self.settle(&lease, outcome).await;
    }

    async fn settle(&self, lease: &Lease, outcome: Result<(), JobFailure>) {
        let job = &lease.job;
        let (label, result) = match outcome {
            Ok(()) => ("succeeded", store::succeed(&self.pool, lease).await),
            Err(JobFailure::Cancelled) => ("cancelled", store::cancelled(&self.pool, lease).await),
            Err(JobFailure::Permanent(error)) => {
                tracing::warn!(%error, "job failed for good");
                ("failed", store::fail(&self.pool, lease, &error).await)
            }
            Err(JobFailure::RateLimited { wait }) => (
                "rate_limited",
                store::retry_later(&self.pool, lease, wait, "rate limited by CardTrader", false)
                    .await,
            ),
            Err(JobFailure::Interrupted) => (
                "interrupted",
                store::retry_later(
                    &self.pool,
                    lease,
                    Duration::ZERO,
                    "interrupted by shutdown",
                    false,
                )
                .await,
            ),
            Err(JobFailure::Transient(error)) if job.attempts >= job.max_attempts => {
                tracing::warn!(%error, attempts = job.attempts, "job failed; no attempts left");
                let error = format!("{error} (after {} attempts)", job.attempts);
                ("failed", store::fail(&self.pool, lease, &error).await)
            }
            Err(JobFailure::Transient(error)) => {
                let attempt = usize::try_from(job.attempts.max(1) - 1).unwrap_or(0);
                let delay = full_jitter(self.settings.retry_min, self.settings.retry_max, None)
                    .nth(attempt)
                    .unwrap_or(self.settings.retry_max);
                tracing::info!(%error, ?delay, "job attempt failed; retrying later");
                (
                    "retried",
                    store::retry_later(&self.pool, lease, delay, &error, true).await,
                )
            }
        };
        let label = match result {
            Ok(()) => label,
            Err(JobError::LeaseLost) => {
                tracing::warn!(
                    "lease was taken over while the job ran; its outcome is not recorded"
                );
                "lease_lost"
            }
            Err(error) => {
                tracing::error!(%error, "recording the job's outcome failed; its lease will expire and it will be retried");
                "unrecorded"
            }
        };
        self.metrics
            .jobs_finished
            .with_label_values(&[job.kind.as_str(), label])
            .inc();
        self.changes.publish(super::wake::Subject::Job(job.id));
    }
}

/// Extends the lease every third of its length; records cancellation requests and a lost lease.
async fn heartbeat(pool: PgPool, context: JobContext, lease: Duration) {
    let mut every = tokio::time::interval(lease / 3);
    every.tick().await;
    loop {
        every.tick().await;
        crate::failpoint::pause("jobs.heartbeat").await;
        match store::heartbeat(&pool, &context.lease, lease).await {
            Ok(cancel) => context.cancel_requested.store(cancel, Ordering::Relaxed),
            Err(JobError::LeaseLost) => {
                context.lease_lost.store(true, Ordering::Relaxed);
                return;
            }
            // A missed beat is not fatal: the lease is three beats long.
            Err(error) => tracing::warn!(%error, "lease heartbeat failed"),
        }
    }
}
