//! Durable jobs in PostgreSQL: enqueue with per-seller coalescing, claim with `FOR UPDATE SKIP LOCKED`,
//! leases kept alive by heartbeats, fencing (each claim bumps `fence`; every write of the claimant checks
//! it), retries with full-jitter backoff, rescheduling without spending an attempt, cancellation, and
//! takeover of leases whose holder died. Workers are in [`worker`]; SQL is in [`store`]; Redis
//! wake-ups in [`wake`].

pub mod store;
pub mod wake;
pub mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::UserId;

/// Which worker pool runs a job; each lane has its own concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Someone is waiting: purchases, pushes, webhooks, targeted syncs.
    Interactive,
    /// Background: full syncs.
    Bulk,
}

impl Lane {
    /// The `lane` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Bulk => "bulk",
        }
    }

    /// The lane named by a `lane` column value.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "interactive" => Some(Lane::Interactive),
            "bulk" => Some(Lane::Bulk),
            _ => None,
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for `run_at` and a free worker.
    Queued,
    /// Claimed by a worker holding the lease.
    Running,
    /// Finished its work.
    Succeeded,
    /// Gave up: attempts exhausted or a permanent error; `last_error` says why.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// The `state` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job will never run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    fn parse(raw: &str) -> Option<Self> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == raw)
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Job id.
    pub id: Uuid,
    /// The seller it works for.
    pub user_id: UserId,
    /// What it does, e.g. `sync_full`.
    pub kind: String,
    /// Coalescing key within the seller and kind (see [`NewJob::dedupe_key`]).
    pub dedupe_key: String,
    /// Its lane.
    pub lane: Lane,
    /// Its state.
    pub state: JobState,
    /// Kind-specific input.
    pub payload: serde_json::Value,
    /// Claims so far (a rescheduled 429 gives its attempt back).
    pub attempts: i32,
    /// Claims allowed before it fails for good.
    pub max_attempts: i32,
    /// Not claimed before this instant.
    pub run_at: DateTime<Utc>,
    /// Bumped by every claim; writes of an older claimant are refused.
    pub fence: i64,
    /// Set by CancelSync on a running job; the worker stops at its next checkpoint.
    pub cancel_requested: bool,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Kind-specific progress counters.
    pub progress: serde_json::Value,
    /// When it was first requested.
    pub created_at: DateTime<Utc>,
    /// When it was first claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A request for work.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The seller.
    pub user_id: UserId,
    /// What to do.
    pub kind: String,
    /// Which lane.
    pub lane: Lane,
    /// Kind-specific input.
    pub payload: serde_json::Value,
    /// Higher runs first within the lane.
    pub priority: i32,
    /// Claims allowed.
    pub max_attempts: i32,
    /// Jobs of one seller and kind coalesce only when their keys are equal; empty for jobs that
    /// coalesce per seller and kind (syncs), a purchase id for jobs that never do.
    pub dedupe_key: String,
}

/// The result of an enqueue: a new job, or the queued one the request coalesced into.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// A new job was queued.
    Created(Job),
    /// A job of this seller and kind was already queued; the request joined it.
    Coalesced(Job),
}

impl Enqueued {
    /// The job, whichever it was.
    pub fn job(&self) -> &Job {
        match self {
            Enqueued::Created(job) | Enqueued::Coalesced(job) => job,
        }
    }
}

/// How a claim orders the due jobs of a lane: by effective due time, `run_at` moved earlier by
/// `aging` for each priority point and later by `turn` for each job its seller already runs in the
/// lane or has due ahead of it. Sellers thus take turns, yet a job that has waited longer than a few
/// turns outranks a newer seller's job, so no seller's work starves under sustained load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranking {
    /// A queued job gains one priority point per this much waiting.
    pub aging: Duration,
    /// What each job ahead of it from the same seller costs a job.
    pub turn: Duration,
}

impl Default for Ranking {
    /// The defaults of `BRX_JOB_AGING` and `BRX_JOB_TURN_COST`.
    fn default() -> Self {
        Self {
            aging: Duration::from_secs(60),
            turn: Duration::from_secs(1),
        }
    }
}

/// A claimed job: the lease the worker must keep and the fence its writes must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The job as claimed.
    pub job: Job,
    /// Who holds the lease.
    pub owner: String,
    /// The fence of this claim.
    pub fence: i64,
}

/// What can go wrong with jobs.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The lane already holds `BRX_MAX_QUEUE_DEPTH` queued jobs.
    #[error("the {lane} queue is full ({depth} jobs)")]
    QueueFull {
        /// The lane.
        lane: &'static str,
        /// Queued jobs in it.
        depth: i64,
        /// A hint for the caller.
        retry_after: Duration,
    },
    /// No such job.
    #[error("no such job")]
    NotFound,
    /// The queued job kept changing under a coalescing request; asking again will succeed.
    #[error("the queued job kept changing; retry")]
    Contended,
    /// The lease was taken over (or the job finished elsewhere): this worker must stop writing.
    #[error("the lease on this job was lost")]
    LeaseLost,
    /// Storage failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}
