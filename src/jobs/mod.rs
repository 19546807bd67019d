//! Durable jobs in PostgreSQL, and the only module that writes the `jobs` table. Work is asked for
//! with a typed [`JobKind`] inside the caller's transaction ([`store::enqueue_in`]), coalescing as
//! the kind says; workers claim with `FOR UPDATE SKIP LOCKED`, keep a lease alive with heartbeats
//! and carry a fence (each claim bumps it). A handler reaches PostgreSQL only through its
//! [`JobContext`]: every write goes through a [`Fenced`] unit of work that checks the fence in the
//! same transaction, so a worker whose lease was taken over changes nothing. A handler that cannot
//! renew its lease is cancelled before the lease runs out; a takeover counts as an attempt; a panic
//! is a failed attempt; a job out of attempts ends `dead`, where an operator can retry it.
//! Layout: [`kind`] (what work exists), [`store`] (the SQL), [`context`] (what a handler may do),
//! [`worker`] (the per-lane runtime), [`wake`] (Redis wake-ups).

pub mod context;
pub mod kind;
pub mod service;
pub mod store;
pub mod wake;
pub mod worker;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use context::{Fenced, JobContext, ReadOnly};
pub use kind::{JobKind, KindName, TargetedScope};
pub use service::Jobs;
pub use store::LaneCounts;

use crate::domain::UserId;

/// Which worker pool runs a job; each lane has its own concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Someone is waiting: purchases, pushes, webhooks, targeted syncs.
    Interactive,
    /// Background: full syncs, remaps.
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

/// Where a job is in its life (the `state` column, CHECK-constrained to these values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for `run_at` and a free worker.
    Queued,
    /// Claimed by a worker holding the lease.
    Running,
    /// Finished its work.
    Succeeded,
    /// Gave up because retrying cannot help (e.g. the seller's token is invalid); `last_error` says why.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
    /// Used every attempt (failures, panics, workers that died holding it): a dead letter with its
    /// last error, which an operator can send back to the queue.
    Dead,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    /// The `state` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    /// Whether the job will never run again on its own.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == raw)
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Job id.
    pub id: Uuid,
    /// The seller it works for.
    pub user_id: UserId,
    /// What it does, with its input.
    pub kind: JobKind,
    /// Its lane.
    pub lane: Lane,
    /// Its state.
    pub state: JobState,
    /// Claims so far, takeovers of a dead worker's lease included (a rescheduled 429 or a job
    /// handed back at shutdown gives its attempt back).
    pub attempts: i32,
    /// Claims allowed before it ends dead.
    pub max_attempts: i32,
    /// Not claimed before this instant.
    pub run_at: DateTime<Utc>,
    /// Bumped by every claim; writes of an older claimant are refused.
    pub fence: i64,
    /// Set by a cancellation of a running job; the worker stops at its next checkpoint.
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
    /// The W3C `traceparent` of the request that queued it; its spans continue that trace.
    pub trace_parent: Option<String>,
}

/// A request for work: the seller, the kind, and how urgent it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The seller.
    pub user_id: UserId,
    /// What to do.
    pub kind: JobKind,
    /// Higher runs first within the lane.
    pub priority: i32,
    /// Claims allowed before it ends dead.
    pub max_attempts: i32,
    /// The trace of the request that queues it (the current span's, taken by [`NewJob::new`]).
    pub trace_parent: Option<String>,
}

impl NewJob {
    /// `kind` for `user_id`, with the kind's priority and attempts.
    pub fn new(user_id: UserId, kind: JobKind) -> Self {
        Self {
            user_id,
            priority: kind.default_priority(),
            max_attempts: kind.max_attempts(),
            kind,
            trace_parent: crate::telemetry::current_traceparent(),
        }
    }

    /// The same request with another priority.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The same request with another allowance of attempts.
    pub fn with_max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }
}

/// How far a new job may grow its lane's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// Refused past this many queued jobs in the lane (a caller who can be told to retry).
    Depth(i64),
    /// Always queued: refusing would lose what the caller is committing (an outbox row, a stored
    /// event, a reservation whose job must run).
    Unbounded,
}

/// The result of an enqueue: a new job, or the queued one the request joined.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// A new job was queued.
    Created(Job),
    /// A job of this seller, kind and key was already queued; the request joined (and, for kinds
    /// that widen, widened) it.
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
    /// When the claim (or the last renewal) was sent: the lease runs at least until this plus its
    /// length, because the database stamps it later than this process sent it.
    pub renewed_at: Instant,
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
    /// The job is not in a state that allows this (e.g. retrying a job that is not dead).
    #[error("{0}")]
    WrongState(String),
    /// The queued job kept changing under a coalescing request; asking again will succeed.
    #[error("the queued job kept changing; retry")]
    Contended,
    /// The lease was taken over (or the job finished elsewhere): this worker must stop writing.
    #[error("the lease on this job was lost")]
    LeaseLost,
    /// A stored job could not be read.
    #[error(transparent)]
    Kind(#[from] kind::KindError),
    /// Storage failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}
