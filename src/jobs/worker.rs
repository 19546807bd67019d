//! The worker that runs jobs of one lane: claims while it has free slots, keeps each lease alive with
//! heartbeats (which also carry cancellation requests) and stops a job whose lease it cannot renew,
//! catches a handler's panic as a failed attempt, and records the outcome; a job out of attempts
//! gives up through its handler and ends dead. Stopping hands running jobs back to the queue
//! instead of leaving their leases to expire.

use std::{
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::storage::Pg;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{JobContext, JobError, KindName, Lane, Lease, Ranking, store};
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
    /// The job must wait `wait` before it can go on (a lost answer settling): it goes back to the
    /// queue until then instead of holding its slot, without spending an attempt.
    #[error("deferred for {wait:?}")]
    Deferred {
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
    /// The lease was taken over or could not be renewed: this worker stops, records nothing, and
    /// whoever holds the lease now carries on.
    #[error("the lease on the job was lost")]
    LeaseLost,
}

impl From<JobError> for JobFailure {
    fn from(err: JobError) -> Self {
        match err {
            JobError::LeaseLost => JobFailure::LeaseLost,
            other => JobFailure::Transient(other.to_string()),
        }
    }
}

/// What a kind of job does.
#[tonic::async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// The kind this handler runs.
    fn kind(&self) -> KindName;

    /// Runs one attempt. Check [`JobContext::should_stop`] at safe points; write only through
    /// [`JobContext::begin`].
    async fn run(&self, context: &JobContext) -> Result<(), JobFailure>;

    /// The job is ending without having done its work (out of attempts, or failed for good): leave
    /// what it worked on in a state a person can act on. Runs under the job's lease, before the job
    /// is recorded dead or failed. Most kinds have nothing to do.
    async fn give_up(&self, _context: &JobContext, _reason: &str) -> Result<(), JobFailure> {
        Ok(())
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
    /// The longest one CardTrader call of a job may take (rate-limit wait and retries included).
    /// A job whose lease could not be renewed is stopped this long before the lease runs out, so
    /// its last call has ended before anyone can take the job over (`Config::validate` keeps the
    /// lease at least 1.5 times this).
    pub call_budget: Duration,
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
    pool: Pg,
    handlers: HashMap<KindName, Arc<dyn JobHandler>>,
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
        let kinds: Vec<&KindName> = self.handlers.keys().collect();
        f.debug_struct("Worker")
            .field("settings", &self.settings)
            .field("kinds", &kinds)
            .finish()
    }
}

impl Worker {
    /// A worker for `settings.lane` running `handlers`.
    pub fn new(
        pool: Pg,
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

    fn context(&self, lease: Lease, shutdown: CancellationToken) -> JobContext {
        JobContext::new(lease, self.pool.clone(), shutdown, self.changes.clone())
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
        let mut running = RunningJobs::default();
        let spawn = |running: &mut RunningJobs, lease: Lease, permit| {
            let this = this.clone();
            let shutdown = shutdown.clone();
            let job = format!("{} job {}", lease.job.kind.name(), lease.job.id);
            running.spawn(job, async move {
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
            // lane at a few hundred jobs a second while slots stood idle. Only one slot is held
            // while the claim runs: holding them all kept local starts (a purchase started on the
            // replica that took it) from finding a free slot, so under load nearly every purchase
            // was queued and claimed instead, and waited for it.
            let wanted = (1 + slots.available_permits()).min(MAX_CLAIM_BATCH);
            // Let a test hold a claim in progress, and know when one is.
            let _ = crate::failpoint::hit("jobs.claiming");
            crate::failpoint::pause("jobs.claim").await;
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
                    let mut permit = Some(permit);
                    for lease in leases {
                        match permit
                            .take()
                            .map_or_else(|| slots.clone().try_acquire_owned().ok(), Some)
                        {
                            Some(permit) => spawn(&mut running, lease, permit),
                            // A local start took the slot while the claim ran: the job goes back
                            // to the queue at once, its attempt given back, for the next claim.
                            None => this.hand_back(lease).await,
                        }
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
                () = running.join_next(), if !running.is_empty() => {}
            }
        }
        // Jobs handed over but not started go back to the queue, like interrupted ones.
        handed.close();
        while let Ok((lease, _permit)) = handed.try_recv() {
            let context = this.context(lease, shutdown.clone());
            this.settle(&context, None, Err(JobFailure::Interrupted))
                .await;
        }
        running.finish(this.settings.lane.as_str()).await;
        Ok(())
    }

    /// Puts a job claimed without a free slot back in the queue, its attempt given back.
    async fn hand_back(&self, lease: Lease) {
        let queued = store::retry_later(
            &self.pool,
            &lease,
            Duration::ZERO,
            "claimed when no slot was free; queued again",
            false,
        )
        .await;
        if let Err(error) = queued {
            // Its lease runs out and any worker rescues it.
            tracing::warn!(%error, job_id = %lease.job.id, "handing back a claimed job failed");
        }
        self.backlog.store(true, Ordering::Relaxed);
    }

    /// Runs the job in its span, which continues the trace of the request that queued it.
    async fn execute(&self, lease: Lease, shutdown: CancellationToken) {
        let job = &lease.job;
        let span = tracing::info_span!(
            "job",
            otel.name = %format!("job {}", job.kind.name()),
            job_id = %job.id,
            kind = %job.kind.name(),
            user_id = %job.user_id,
            attempt = job.attempts
        );
        crate::telemetry::continue_trace(&span, job.trace_parent.as_deref());
        self.execute_in_span(lease, shutdown).instrument(span).await;
    }

    async fn execute_in_span(&self, lease: Lease, shutdown: CancellationToken) {
        let job = &lease.job;
        let context = self.context(lease.clone(), shutdown);
        context.announce();
        let Some(handler) = self.handlers.get(&job.kind.name()).cloned() else {
            let error = format!("no handler for kind '{}' on this worker", job.kind.name());
            self.settle(&context, None, Err(JobFailure::Permanent(error)))
                .await;
            return;
        };
        if job.attempts > job.max_attempts {
            // Its last attempt's worker died or hung: running it again could kill this one too.
            let error = job
                .last_error
                .clone()
                .unwrap_or_else(|| "out of attempts".into());
            self.settle(&context, Some(&handler), Err(JobFailure::Transient(error)))
                .await;
            return;
        }
        // The heartbeat runs inside this task, not beside it: if the task dies, the lease stops being
        // extended and another worker takes the job over. Both futures end with this block, before
        // the settle: a heartbeat left alive mid-transaction (behind a pooler each one is a
        // transaction) would hold the job's row while the settle waits for it, forever.
        let caught = {
            let run = AssertUnwindSafe(handler.run(&context)).catch_unwind();
            let beat = keep_lease(&self.pool, &context, &self.settings);
            tokio::pin!(run, beat);
            tokio::select! {
                caught = &mut run => caught,
                () = &mut beat => run.await,
            }
        };
        let outcome = match caught {
            Ok(outcome) => outcome,
            Err(panic) => {
                if crate::failpoint::is_simulated_crash(panic.as_ref()) {
                    // A test killed the worker here: record nothing, as a dead process would not.
                    return;
                }
                let message = panic_message(panic.as_ref());
                tracing::error!(%message, "job handler panicked");
                self.count(job.kind.name(), "panicked");
                Err(JobFailure::Transient(format!(
                    "the handler panicked: {message}"
                )))
            }
        };
        if context.lease_lost() && !context.settled() {
            // Whatever the job did after losing the lease was refused by the fence; settling would be too.
            self.count(job.kind.name(), "lease_lost");
            return;
        }
        self.settle(&context, Some(&handler), outcome).await;
    }

    /// Records how the attempt ended. A job that will not run again without having done its work
    /// (out of attempts, or failed for good) first lets its handler give up cleanly.
    async fn settle(
        &self,
        context: &JobContext,
        handler: Option<&Arc<dyn JobHandler>>,
        outcome: Result<(), JobFailure>,
    ) {
        let lease = context.lease();
        let job = &lease.job;
        let give_up = |reason: String| async move {
            if let Some(handler) = handler {
                let gave_up = AssertUnwindSafe(handler.give_up(context, &reason))
                    .catch_unwind()
                    .await;
                match gave_up {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::error!(error = %err, "the job could not give up cleanly")
                    }
                    Err(panic) => tracing::error!(
                        message = panic_message(panic.as_ref()),
                        "the job panicked while giving up"
                    ),
                }
            }
            reason
        };
        let (label, result) = match outcome {
            // Its last unit of work ended it, in the same transaction as its last write.
            Ok(()) if context.settled() => ("succeeded", Ok(())),
            Ok(()) => ("succeeded", store::succeed(&self.pool, lease).await),
            Err(JobFailure::Cancelled) => ("cancelled", store::cancelled(&self.pool, lease).await),
            Err(JobFailure::LeaseLost) => ("lease_lost", Ok(())),
            Err(JobFailure::Permanent(error)) => {
                tracing::warn!(%error, "job failed for good");
                let error = give_up(error).await;
                ("failed", store::fail(&self.pool, lease, &error).await)
            }
            Err(JobFailure::Deferred { wait }) => (
                "deferred",
                store::retry_later(
                    &self.pool,
                    lease,
                    wait,
                    "waiting until a lost answer can no longer land",
                    false,
                )
                .await,
            ),
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
                tracing::error!(%error, attempts = job.attempts, "job out of attempts: dead");
                let error = give_up(format!("{error} (after {} attempts)", job.attempts)).await;
                ("dead", store::bury(&self.pool, lease, &error).await)
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
        self.count(job.kind.name(), label);
        context.announce();
    }

    fn count(&self, kind: KindName, outcome: &str) {
        self.metrics
            .jobs_finished
            .with_label_values(&[kind.as_str(), outcome])
            .inc();
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The jobs a worker is running, by task, so a drain can say which ones it is waiting for.
#[derive(Default)]
struct RunningJobs {
    tasks: tokio::task::JoinSet<()>,
    /// "kind job id" of each task.
    jobs: HashMap<tokio::task::Id, String>,
}

impl RunningJobs {
    fn spawn(&mut self, job: String, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.tasks.spawn(task).id();
        self.jobs.insert(id, job);
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Waits for the next job to end.
    async fn join_next(&mut self) {
        if let Some(ended) = self.tasks.join_next_with_id().await {
            let id = match ended {
                Ok((id, ())) => id,
                Err(error) => error.id(),
            };
            self.jobs.remove(&id);
        }
    }

    /// Waits for every job to reach a safe point and hand itself back, naming the ones still
    /// running every few seconds: a drain that runs into its grace period says what it waited for.
    async fn finish(mut self, lane: &str) {
        const REPORT_EVERY: Duration = Duration::from_secs(5);
        while !self.is_empty() {
            if tokio::time::timeout(REPORT_EVERY, self.join_next())
                .await
                .is_err()
            {
                let mut still_running = self.jobs.values().cloned().collect::<Vec<_>>();
                still_running.sort();
                tracing::warn!(
                    lane,
                    still_running = still_running.join(", "),
                    "stopping: waiting for running jobs to reach a safe point"
                );
            }
        }
    }
}

/// How long before the lease runs out a job stops (`call_budget`, but never more than two thirds of
/// the lease), and how often the lease is renewed: every third of it, and at least twice before that
/// stopping point. Found by the soak: with the lease exactly 1.5 × the budget (the defaults: 30 s and
/// 20 s) the first beat was due at the very instant the job gave up, so every job longer than a third
/// of the lease was stopped without one renewal tried.
fn beat_schedule(lease: Duration, call_budget: Duration) -> (Duration, Duration) {
    let margin = call_budget.min(lease * 2 / 3);
    let beat_every = (lease / 3).min((lease - margin) / 2);
    (margin, beat_every)
}

/// Extends the lease every third of its length and passes on cancellation requests. Returns once
/// the lease is lost: taken over, or not renewed in time for a CardTrader call started now to end
/// before the lease does (`call_budget` before it runs out), having told the job to stop.
async fn keep_lease(pool: &Pg, context: &JobContext, settings: &WorkerSettings) {
    let lease = settings.lease;
    let (margin, beat_every) = beat_schedule(lease, settings.call_budget);
    let mut renewed_at = context.lease().renewed_at;
    let mut next_beat = Instant::now() + beat_every;
    loop {
        let give_up_at = renewed_at + lease - margin;
        tokio::time::sleep_until(next_beat.min(give_up_at).into()).await;
        if Instant::now() >= give_up_at {
            tracing::warn!(
                ?lease,
                "the lease could not be renewed; stopping the job before it runs out"
            );
            context.lose_lease();
            return;
        }
        crate::failpoint::pause("jobs.heartbeat").await;
        let sent = Instant::now();
        next_beat = sent + beat_every;
        let renewed = if crate::failpoint::hit("jobs.heartbeat_fails") {
            Err(JobError::Database(sqlx::Error::PoolTimedOut))
        } else {
            store::heartbeat(pool, context.lease(), lease).await
        };
        match renewed {
            Ok(cancel) => {
                renewed_at = sent;
                context.note_cancel_requested(cancel);
            }
            // The job's last unit ended it meanwhile: the lease ended with it, nothing was lost. (A
            // beat that waited on that commit may see it before the handler has noted it; then it
            // stops the job's calls, of which there are none left, and the worker still reads the
            // job as settled.)
            Err(JobError::LeaseLost) if context.settled() => return,
            Err(JobError::LeaseLost) => {
                context.lose_lease();
                return;
            }
            // A missed beat is not fatal yet: the job is stopped only when the lease is about to end.
            Err(error) => tracing::warn!(%error, "lease heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_renewed_at_least_twice_before_a_job_would_stop() {
        let second = Duration::from_secs(1);
        // The defaults, the soak's, the 1.5x boundary the configuration allows, and a long lease.
        for (lease, budget) in [(30, 20), (6, 4), (15, 10), (120, 20)] {
            let (lease, budget) = (second * lease, second * budget);
            let (margin, beat_every) = beat_schedule(lease, budget);
            assert_eq!(margin, budget);
            assert!(beat_every <= lease / 3);
            assert!(
                beat_every * 2 <= lease - margin,
                "lease {lease:?}, budget {budget:?}: beats every {beat_every:?}, stops {margin:?} \
                 before the end"
            );
        }
    }
}
