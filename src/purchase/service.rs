//! What `PurchaseService` calls: start a purchase and wait for its outcome, read and list purchases,
//! and the operators' retry and resolution of purchases that need a person.

use std::time::Duration;

use crate::storage::Pg;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    NewPurchase, PurchaseError, Reserved,
    driver::{Change, PurchaseEvents, refresh_attention_gauge},
    saga::{Event, Saga},
    store::{self, StoredPurchase},
};
use crate::{
    accounts::{AccountError, AccountStatus, Accounts},
    domain::UserId,
    jobs::{Lane, wake::JobWakeups, worker::LocalStart},
    metrics::Metrics,
    shutdown::AnswerBy,
};

/// How often a waiting caller re-reads a purchase another replica may be driving (this replica's
/// own driver announces every change at once).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Purchases, as the RPCs see them.
#[derive(Debug, Clone)]
pub struct Purchases {
    pool: Pg,
    accounts: Accounts,
    wakeups: JobWakeups,
    events: PurchaseEvents,
    metrics: Metrics,
    policy: PurchasePolicy,
    /// Starts a new purchase on this replica's worker at once, when it has a free slot.
    local: Option<LocalStart>,
}

/// The limits a purchase request is held to.
#[derive(Debug, Clone, Copy)]
pub struct PurchasePolicy {
    /// Jobs queued per lane past which new purchases are refused (`BRX_JOB_MAX_QUEUE_DEPTH`).
    pub max_queue_depth: i64,
    /// How long a purchase may take stock before it is compensated (`BRX_PURCHASE_DEADLINE`).
    pub deadline: Duration,
}

impl PurchasePolicy {
    /// From the jobs section of the configuration.
    pub fn from_config(jobs: &crate::config::JobsConfig) -> Self {
        Self {
            max_queue_depth: jobs.max_queue_depth,
            deadline: jobs.purchase_deadline,
        }
    }
}

/// What a purchase request led to.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The purchase as it stands (terminal unless the caller's wait ran out first).
    pub purchase: StoredPurchase,
    /// Whether this was a replay of a request stored earlier under the same key.
    pub replayed: bool,
}

impl Purchases {
    /// The service over `pool`; new purchases wake workers through `wakeups`.
    pub fn new(
        pool: Pg,
        accounts: Accounts,
        wakeups: JobWakeups,
        events: PurchaseEvents,
        metrics: Metrics,
        policy: PurchasePolicy,
        local: Option<LocalStart>,
    ) -> Self {
        Self {
            pool,
            accounts,
            wakeups,
            events,
            metrics,
            policy,
            local,
        }
    }

    /// When a purchase asked for now must have taken its stock, or be compensated.
    pub fn deadline_from_now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
            + chrono::Duration::from_std(self.policy.deadline).unwrap_or(chrono::Duration::MAX)
    }

    /// Reserves `purchase` and waits until its saga ends or `wait_until`, whichever comes first (the
    /// saga goes on either way). A replay waits for the stored purchase the same way.
    pub async fn purchase(
        &self,
        purchase: &NewPurchase,
        answer_by: &AnswerBy,
    ) -> Result<Outcome, PurchaseError> {
        let account = self
            .accounts
            .get(purchase.user_id)
            .await
            .map_err(|err| match err {
                AccountError::NotFound => PurchaseError::NotConnected(None),
                other => PurchaseError::Internal(other.to_string()),
            })?;
        if account.status != AccountStatus::Connected {
            return Err(PurchaseError::NotConnected(Some(account.status)));
        }
        // Subscribed before the saga can start, so the announcement of its end cannot be missed and
        // a purchase created here needs no read until then.
        let changes = self.events.subscribe();
        let started = std::time::Instant::now();
        // With a free slot here, the job is created claimed and started on it: no claim query, no
        // wake-up. Otherwise it is queued for any replica's worker.
        let slot = self.local.as_ref().and_then(LocalStart::try_slot);
        let claim = self
            .local
            .as_ref()
            .filter(|_| slot.is_some())
            .map(|local| (local.owner(), local.lease()));
        let reserved =
            store::reserve_with(&self.pool, purchase, self.policy.max_queue_depth, claim).await;
        self.metrics
            .purchase_step_seconds
            .with_label_values(&["reserve"])
            .observe(started.elapsed().as_secs_f64());
        let (id, fresh) = match reserved? {
            (Reserved::Created(id), Some(lease)) => {
                if let (Some(local), Some(slot)) = (&self.local, slot) {
                    local.start(lease, slot);
                }
                (id, true)
            }
            (Reserved::Created(id), None) => {
                if let Some(local) = &self.local {
                    local.queued();
                }
                self.wakeups.announce(Lane::Interactive);
                (id, true)
            }
            (Reserved::Replay(id), _) => (id, false),
        };
        let purchase = self
            .watch(
                id,
                answer_by,
                Watch {
                    changes,
                    read_first: !fresh,
                },
            )
            .await?;
        Ok(Outcome {
            purchase,
            replayed: !fresh,
        })
    }

    /// The purchase `id`.
    pub async fn get(&self, id: Uuid) -> Result<StoredPurchase, PurchaseError> {
        store::load(&self.pool, id)
            .await?
            .ok_or(PurchaseError::NotFound)
    }

    /// A page of the seller's purchases, newest first.
    pub async fn list(
        &self,
        user_id: UserId,
        state: Option<crate::purchase::saga::PurchaseState>,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<StoredPurchase>, PurchaseError> {
        store::list(&self.pool, user_id, state, before, limit).await
    }

    /// Re-reads purchase `id` until it ends or its answer is due; between reads, waits for the
    /// announcement of its end, or the poll interval (another replica may be driving it).
    async fn watch(
        &self,
        id: Uuid,
        answer_by: &AnswerBy,
        watch: Watch,
    ) -> Result<StoredPurchase, PurchaseError> {
        let Watch {
            mut changes,
            mut read_first,
        } = watch;
        loop {
            if read_first {
                let purchase = self.get(id).await?;
                if purchase.saga.phase.is_terminal() || answer_by.is_due() {
                    return Ok(purchase);
                }
            }
            read_first = true;
            let poll = tokio::time::sleep(POLL_INTERVAL);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    () = &mut poll => break,
                    () = answer_by.due() => break,
                    change = changes.recv() => match change {
                        Ok(change) if change.id != id || !change.ended => continue,
                        // Ours, or announcements were missed: re-read.
                        _ => break,
                    },
                }
            }
        }
    }

    /// Sends a purchase in `requires_attention` through its saga again: unknown outcomes are
    /// verified afresh and give-backs get a new allowance.
    pub async fn retry(&self, id: Uuid) -> Result<StoredPurchase, PurchaseError> {
        let mut tx = self.pool.begin().await?;
        let seq = self.lock_attention_case(&mut tx, id).await?;
        // Read under the row lock and on the same connection (a second one could wait behind
        // this very lock on a small pool): no other operator can change it now, and no driver
        // runs a purchase in requires_attention.
        let purchase = store::load(&mut *tx, id)
            .await?
            .ok_or(PurchaseError::NotFound)?;
        let saga = apply(&purchase.saga, &Event::Retried);
        store::append(&mut tx, id, seq, &[Event::Retried], &saga).await?;
        let job = store::driver_job(purchase.user_id, id, false);
        crate::jobs::store::enqueue_in(&mut tx, &job, crate::jobs::QueueLimit::Unbounded)
            .await
            .map_err(|err| PurchaseError::Internal(err.to_string()))?;
        refresh_attention_gauge(&mut tx, &self.metrics).await;
        let retried = store::load(&mut *tx, id)
            .await?
            .ok_or(PurchaseError::NotFound)?;
        tx.commit().await?;
        tracing::warn!(purchase_id = %id, "purchase retried by an operator");
        self.events.changed(id, false);
        self.wakeups.announce(Lane::Interactive);
        Ok(retried)
    }

    /// Settles a purchase in `requires_attention` by an operator's decision: `sold` keeps the sale
    /// (local stock lowered), otherwise it is undone (reservations released). The operator has made
    /// CardTrader agree; the decision and `note` are recorded.
    pub async fn resolve(
        &self,
        id: Uuid,
        sold: bool,
        note: &str,
    ) -> Result<StoredPurchase, PurchaseError> {
        let mut tx = self.pool.begin().await?;
        let seq = self.lock_attention_case(&mut tx, id).await?;
        // Read under the row lock, on the same connection (see `retry`).
        let purchase = store::load(&mut *tx, id)
            .await?
            .ok_or(PurchaseError::NotFound)?;
        if sold {
            store::commit_sale(&mut tx, purchase.user_id, &purchase.lines).await?;
        } else {
            store::release(&mut tx, purchase.user_id, &purchase.lines, &[]).await?;
        }
        store::unlock_products(&mut tx, id).await?;
        let event = Event::Resolved {
            sold,
            note: note.to_owned(),
        };
        let saga = apply(&purchase.saga, &event);
        store::append(&mut tx, id, seq, &[event], &saga).await?;
        let resolution = if sold { "sold" } else { "undone" };
        store::record_resolution(&mut tx, id, resolution, note).await?;
        refresh_attention_gauge(&mut tx, &self.metrics).await;
        let resolved = store::load(&mut *tx, id)
            .await?
            .ok_or(PurchaseError::NotFound)?;
        tx.commit().await?;
        tracing::warn!(purchase_id = %id, resolution, note, "purchase resolved by an operator");
        self.events.changed(id, true);
        Ok(resolved)
    }

    /// Locks the purchase row, checks it still needs attention, and returns the next step number.
    async fn lock_attention_case(
        &self,
        conn: &mut sqlx::PgConnection,
        id: Uuid,
    ) -> Result<i32, PurchaseError> {
        let state = store::lock_for_operator(&mut *conn, id)
            .await?
            .ok_or(PurchaseError::NotFound)?;
        if state != crate::purchase::saga::PurchaseState::RequiresAttention {
            return Err(PurchaseError::WrongState(format!(
                "the purchase is {}, not requires_attention",
                state.as_str()
            )));
        }
        let steps: i32 =
            sqlx::query_scalar("SELECT count(*)::int FROM purchase_steps WHERE purchase_id = $1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
        Ok(steps)
    }
}

/// Where a watch starts: the announcements it listens to, and whether the purchase must be read
/// before the first one (it may have moved already).
struct Watch {
    changes: tokio::sync::broadcast::Receiver<Change>,
    read_first: bool,
}

fn apply(saga: &Saga, event: &Event) -> Saga {
    let mut next = saga.clone();
    next.apply(event);
    next
}
