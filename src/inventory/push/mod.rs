//! The `inventory_push` job: sends a seller's pending edits to CardTrader, oldest first, until none
//! is left. Updates carry absolute values (`PUT /products/:id`, idempotent, so a retry is
//! harmless); when many are pending they go as `bulk_update` / `bulk_destroy` batches whose job is
//! polled once a second, and a per-item error marks that item's push failed, not the batch. A push
//! clears its outbox row only if the row's version is still the one it sent, so an edit made
//! meanwhile is pushed next. A create is tagged through `user_data_field`; before it is sent, the
//! blueprint's quantities and the instant the create will have settled are recorded, and an attempt
//! that finds them (the previous one lost the answer, or died, or its lease was taken over) decides
//! from the export, and never "not sent" before that instant: CardTrader merges creates into
//! identical products, so a second send would add the quantity twice.
//!
//! Nothing is stranded: a seller who disconnected (or whose token CardTrader rejects) has their
//! pending pushes end failed with the reason, and a job that gives up leaves them to the re-queuer
//! ([`super::requeue`]) with a backoff. Every write goes through the job's fenced unit of work.
//!
//! Here: the job and single updates and deletions; `bulk` the batches, `create` the creates;
//! the pure decisions are `inventory::decide`, the recorded writes `inventory::outbox`.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde_json::Value;

use super::{
    decide::{self, RETRY_ROUNDS},
    outbox::{self, Op, Pending},
};
use crate::{
    accounts::{AccountError, Accounts, Credentials},
    jobs::{
        JobContext, KindName,
        worker::{JobFailure, JobHandler},
    },
    marketplace::{CallOptions, MarketplaceError},
    metrics::Metrics,
};

mod bulk;
mod create;

/// From this many pending updates (or deletions) on, they go as bulk batches: the CardTrader docs
/// ask for batches to touch "more than a few" products, and a batch costs two calls plus polls.
pub const BULK_FROM: usize = 10;
/// Items per bulk call (CardTrader documents no cap; 100 is what the old service used).
const BATCH: usize = 100;
/// How long a bulk job may take on CardTrader before this attempt gives up on it (the items stay
/// pending and are sent again: bulk updates are absolute, so that is harmless).
const BULK_JOB_PATIENCE: Duration = Duration::from_secs(120);
/// `/jobs/:uuid` allows one call a second.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Pending rows read per round.
const ROUND: i64 = 500;

/// The `inventory_push` job kind.
#[derive(Debug, Clone)]
pub struct PushHandler {
    /// Sellers' tokens and the CardTrader client.
    pub accounts: Accounts,
    /// Budget of one CardTrader call (rate-limit wait included).
    pub call_budget: Duration,
    /// How long CardTrader may still apply a write after the client stopped waiting (one request
    /// timeout): a lost create has settled this long after its call's deadline.
    pub write_grace: Duration,
    /// Pushes by outcome.
    pub metrics: Metrics,
}

#[tonic::async_trait]
impl JobHandler for PushHandler {
    fn kind(&self) -> KindName {
        KindName::InventoryPush
    }

    async fn run(&self, context: &JobContext) -> Result<(), JobFailure> {
        let credentials = match self.accounts.credentials(context.user_id()).await {
            Ok(credentials) => credentials,
            Err(err @ (AccountError::NotConnected(_) | AccountError::NotFound)) => {
                let reason = format!("not pushed: {err}");
                return self.fail_all(context, &reason).await;
            }
            Err(AccountError::TokenUnreadable(err)) => {
                let reason = format!("not pushed: the seller's token cannot be decrypted: {err}");
                return self.fail_all(context, &reason).await;
            }
            Err(err) => return Err(JobFailure::Transient(err.to_string())),
        };
        let run = Run {
            handler: self,
            context,
            credentials,
            token_rejected: AtomicBool::new(false),
        };
        match run.push_all().await {
            Err(_) if run.token_rejected.load(Ordering::Relaxed) => {
                self.token_rejected(context).await?;
                Ok(())
            }
            done => done,
        }
    }

    /// The job is ending with edits still pending: they wait for the re-queuer with a backoff, or
    /// end failed once they have waited every round.
    async fn give_up(&self, context: &JobContext, reason: &str) -> Result<(), JobFailure> {
        let mut unit = context.begin().await?;
        let (rescheduled, failed) =
            outbox::schedule_retry(&mut unit, context.user_id(), reason, &RETRY_ROUNDS)
                .await
                .map_err(transient)?;
        unit.commit().await?;
        tracing::warn!(
            rescheduled,
            failed,
            reason,
            "push job gave up; pending edits wait for the re-queuer"
        );
        Ok(())
    }
}

impl PushHandler {
    /// Every pending push of the job's seller ends failed with `reason`: none can run.
    async fn fail_all(&self, context: &JobContext, reason: &str) -> Result<(), JobFailure> {
        let mut unit = context.begin().await?;
        let failed = outbox::fail_all_pending(&mut unit, context.user_id(), reason)
            .await
            .map_err(transient)?;
        unit.commit().await?;
        if failed > 0 {
            tracing::warn!(
                failed,
                reason,
                "pending pushes failed: they can no longer run"
            );
        }
        Ok(())
    }

    /// CardTrader answered 401: the account is marked `token_invalid` (so nothing keeps trying the
    /// dead token) and the pending pushes fail with the reason, in one unit of work.
    async fn token_rejected(&self, context: &JobContext) -> Result<(), JobFailure> {
        let reason = "not pushed: CardTrader rejected the seller's token";
        let mut unit = context.begin().await?;
        self.accounts
            .note_cardtrader_error(
                &mut unit,
                context.user_id(),
                &MarketplaceError::Unauthorized,
            )
            .await
            .map_err(|err| JobFailure::Transient(err.to_string()))?;
        outbox::fail_all_pending(&mut unit, context.user_id(), reason)
            .await
            .map_err(transient)?;
        unit.commit().await?;
        Ok(())
    }
}

/// One attempt for one seller.
struct Run<'a> {
    handler: &'a PushHandler,
    context: &'a JobContext,
    credentials: Credentials,
    /// Set when CardTrader answered 401 to any call of this attempt.
    token_rejected: AtomicBool,
}

impl Run<'_> {
    fn options(&self) -> CallOptions {
        CallOptions::interactive(self.handler.call_budget).stopped_by(self.context.lease_token())
    }

    fn marketplace(&self) -> &crate::marketplace::MarketplaceClient {
        self.handler.accounts.marketplace()
    }

    /// Pushes round after round until nothing is pending.
    async fn push_all(&self) -> Result<(), JobFailure> {
        loop {
            if let Some(stop) = self.context.should_stop() {
                return Err(stop);
            }
            let pending = self.pending().await?;
            if pending.is_empty() {
                return Ok(());
            }
            let held = self.held_by_purchases(&pending).await?;
            let (ready, deferred): (Vec<Pending>, Vec<Pending>) = pending
                .into_iter()
                .partition(|row| row.product_id.is_none_or(|id| !held.contains(&id)));
            if ready.is_empty() {
                // A purchase in flight compares CardTrader's quantity before and after its own
                // decrement; a push landing in between would confuse it. Come back after it.
                return Err(JobFailure::Transient(format!(
                    "{} items are held by purchases in flight",
                    deferred.len()
                )));
            }
            self.push(ready).await?;
        }
    }

    async fn pending(&self) -> Result<Vec<Pending>, JobFailure> {
        let mut read = self.context.read().await?;
        outbox::pending(&mut read, self.context.user_id(), ROUND)
            .await
            .map_err(transient)
    }

    async fn held_by_purchases(&self, pending: &[Pending]) -> Result<Vec<i64>, JobFailure> {
        let ids: Vec<i64> = pending.iter().filter_map(|row| row.product_id).collect();
        let mut read = self.context.read().await?;
        outbox::held_by_purchases(&mut read, self.context.user_id(), &ids)
            .await
            .map_err(transient)
    }

    /// Pushes one round: creates one by one, updates and deletions singly or in batches.
    async fn push(&self, rows: Vec<Pending>) -> Result<(), JobFailure> {
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for row in rows {
            match row.op {
                Op::Create => self.create(&row).await?,
                Op::Delete => deletes.push(row),
                Op::Update => updates.push(row),
            }
        }
        if updates.len() >= BULK_FROM {
            for batch in updates.chunks(BATCH) {
                self.bulk_update(batch).await?;
            }
        } else {
            for row in &updates {
                self.update(row).await?;
            }
        }
        if deletes.len() >= BULK_FROM {
            for batch in deletes.chunks(BATCH) {
                self.bulk_destroy(batch).await?;
            }
        } else {
            for row in &deletes {
                self.delete(row).await?;
            }
        }
        Ok(())
    }

    /// The update carrying the row's edited fields with the item's values now; `None` when the
    /// item is gone locally (a sync swept it), which leaves nothing to push.
    async fn wanted(
        &self,
        row: &Pending,
    ) -> Result<Option<crate::marketplace::types::ProductUpdate>, JobFailure> {
        let Some(product_id) = row.product_id else {
            return Ok(None);
        };
        let mut read = self.context.read().await?;
        let values = outbox::item_values(&mut read, self.context.user_id(), product_id)
            .await
            .map_err(transient)?;
        Ok(values.map(|values| decide::update_of(values, |field| row.fields.get(field).is_some())))
    }

    async fn update(&self, row: &Pending) -> Result<(), JobFailure> {
        let (Some(product_id), Some(update)) = (row.product_id, self.wanted(row).await?) else {
            return self.settled(row).await;
        };
        let result = self
            .marketplace()
            .update_product(
                self.credentials.seller(),
                self.options(),
                product_id,
                &update,
            )
            .await;
        match result {
            Ok(_) => {
                self.count(row, "single", "pushed");
                self.settled(row).await
            }
            Err(err) => self.refused_or_retry(row, err).await,
        }
    }

    async fn delete(&self, row: &Pending) -> Result<(), JobFailure> {
        let Some(product_id) = row.product_id else {
            return self.settled(row).await;
        };
        let result = self
            .marketplace()
            .delete_product(self.credentials.seller(), self.options(), product_id)
            .await;
        match result {
            Ok(()) => {
                self.count(row, "single", "pushed");
                self.settled(row).await
            }
            Err(err) => self.refused_or_retry(row, err).await,
        }
    }

    /// A push CardTrader refused for good marks the row failed; anything passing fails the attempt
    /// (the rows stay pending and the job retries with backoff).
    async fn refused_or_retry(
        &self,
        row: &Pending,
        err: MarketplaceError,
    ) -> Result<(), JobFailure> {
        match err {
            MarketplaceError::Validation {
                message, errors, ..
            } => {
                self.count(row, "single", "refused");
                let detail = if errors.is_null() || errors == Value::Array(Vec::new()) {
                    message
                } else {
                    format!("{message} {errors}")
                };
                self.failed(row, &detail).await
            }
            MarketplaceError::NotFound { .. } => {
                self.count(row, "single", "refused");
                self.failed(row, "the product no longer exists on CardTrader")
                    .await
            }
            other => Err(self.call_failure(other)),
        }
    }

    fn count(&self, row: &Pending, via: &str, outcome: &str) {
        self.handler
            .metrics
            .inventory_pushes
            .with_label_values(&[row.op.as_str(), via, outcome])
            .inc();
    }

    /// Clears the row if no edit came in since it was read; otherwise the newer edit stays pending.
    async fn settled(&self, row: &Pending) -> Result<(), JobFailure> {
        let mut unit = self.context.begin().await?;
        outbox::settle(&mut unit, row).await.map_err(transient)?;
        unit.commit().await?;
        Ok(())
    }

    async fn failed(&self, row: &Pending, reason: &str) -> Result<(), JobFailure> {
        tracing::warn!(push_id = %row.id, product_id = row.product_id, reason, "CardTrader refused a push");
        let mut unit = self.context.begin().await?;
        outbox::mark_failed(&mut unit, row, reason)
            .await
            .map_err(transient)?;
        unit.commit().await?;
        Ok(())
    }

    /// What a failed call means for the attempt; a 401 is remembered, so the run ends by marking
    /// the account and failing the pending pushes rather than retrying a dead token.
    fn call_failure(&self, err: MarketplaceError) -> JobFailure {
        match err {
            MarketplaceError::RateLimited { retry_after, .. } => {
                JobFailure::RateLimited { wait: retry_after }
            }
            MarketplaceError::Unauthorized => {
                self.token_rejected.store(true, Ordering::Relaxed);
                JobFailure::Permanent("CardTrader rejected the seller's token".into())
            }
            MarketplaceError::Cancelled => JobFailure::LeaseLost,
            other => JobFailure::Transient(other.to_string()),
        }
    }
}

fn transient(err: sqlx::Error) -> JobFailure {
    JobFailure::Transient(err.to_string())
}
