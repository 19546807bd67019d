//! Runs purchase sagas on the durable job worker. Each attempt folds the step log back into the saga
//! and carries on from [`Saga::next_step`], so a purchase whose worker died is resumed by whichever
//! worker takes its lease over. CardTrader is only called between transactions: every step writes
//! its intent (with what CardTrader showed before) to the step log first and its result after, so an
//! unknown outcome is decided by re-reading CardTrader, never by sending again.

mod calls;
mod decide;
mod give_back;
mod record;
mod take;

use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    LineMemo,
    saga::{Event, Phase, Saga, Step},
    store::{self, StoredPurchase},
};
use crate::{
    accounts::{Accounts, Credentials},
    jobs::{
        JobContext, JobKind, KindName,
        worker::{JobFailure, JobHandler},
    },
    marketplace::{MarketplaceError, types::Product},
    metrics::Metrics,
};
use calls::call_failure;
use decide::{calls_cardtrader, step_name};
pub(crate) use record::refresh_attention_gauge;
use record::transient;

/// Tells waiting callers on this replica that a purchase moved, and whether it has ended; they
/// re-read it. Callers whose purchase another replica drives find out by polling. Watchers
/// (WatchPurchase), here and on other replicas, hear it through the change hub.
#[derive(Debug, Clone)]
pub struct PurchaseEvents {
    sender: broadcast::Sender<Change>,
    changes: crate::jobs::wake::Changes,
}

/// One announcement: the purchase, and whether it has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The purchase.
    pub id: Uuid,
    /// Whether it reached a terminal state.
    pub ended: bool,
}

impl Default for PurchaseEvents {
    fn default() -> Self {
        // A lagging receiver just re-reads its purchase, so a small buffer is enough.
        let (sender, _) = broadcast::channel(1024);
        Self {
            sender,
            changes: crate::jobs::wake::Changes::default(),
        }
    }
}

impl PurchaseEvents {
    /// Announcements that also reach `changes` (watchers here and on other replicas).
    pub fn announcing(changes: crate::jobs::wake::Changes) -> Self {
        Self {
            changes,
            ..Self::default()
        }
    }

    /// Announces that purchase `id` changed (and `ended`).
    pub fn changed(&self, id: Uuid, ended: bool) {
        // No receiver is fine: nobody is waiting.
        let _ = self.sender.send(Change { id, ended });
        self.changes
            .publish(crate::jobs::wake::Subject::Purchase(id));
    }

    /// A receiver of every announcement from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }
}

/// The `purchase` job kind.
#[derive(Debug, Clone)]
pub struct PurchaseHandler {
    /// Sellers' tokens and the CardTrader client.
    pub accounts: Accounts,
    /// Step latency, outcomes, compensations.
    pub metrics: Metrics,
    /// Wakes callers waiting on this replica.
    pub events: PurchaseEvents,
    /// Budget of one CardTrader call (rate-limit wait included).
    pub call_budget: Duration,
    /// How long CardTrader may still apply a write after the client stopped waiting for it (a
    /// request queued on its side): one request timeout. Added to a write's deadline to know when
    /// it has settled.
    pub write_grace: Duration,
}

#[tonic::async_trait]
impl JobHandler for PurchaseHandler {
    fn kind(&self) -> KindName {
        KindName::Purchase
    }

    async fn run(&self, context: &JobContext) -> Result<(), JobFailure> {
        let mut run = self.start(context).await?;
        let result = run.drive().await;
        self.events
            .changed(run.purchase.id, run.saga.phase.is_terminal());
        result
    }

    /// The job is ending without its purchase having ended (its last attempt failed, or every
    /// worker holding it died): what is left must happen without CardTrader. Nothing taken there
    /// yet: the purchase is undone locally; a sale being finalized: it is committed; anything else
    /// (stock taken, an outcome unknown): it waits for a person, with the reason.
    async fn give_up(&self, context: &JobContext, reason: &str) -> Result<(), JobFailure> {
        let mut run = self.start(context).await?;
        if run.saga.phase.is_terminal() {
            return Ok(());
        }
        // The worker records this job as failed or dead after the saga ends: it must not succeed.
        run.settles_job = false;
        tracing::error!(purchase_id = %run.purchase.id, %reason, "purchase driver giving up");
        run.record(
            vec![Event::GaveUp {
                reason: format!("its job is out of attempts: {reason}"),
            }],
            Also::Nothing,
        )
        .await?;
        let result = run.drive().await;
        self.events
            .changed(run.purchase.id, run.saga.phase.is_terminal());
        result
    }
}

impl PurchaseHandler {
    /// Loads the job's purchase for an attempt.
    async fn start<'a>(&'a self, context: &'a JobContext) -> Result<Run<'a>, JobFailure> {
        let JobKind::Purchase {
            purchase_id: id, ..
        } = *context.kind()
        else {
            return Err(JobFailure::Permanent("not a purchase job".into()));
        };
        let loaded = {
            let mut read = context.read().await?;
            store::load(&mut *read, id).await.map_err(transient)?
        };
        let Some(purchase) = loaded else {
            return Err(JobFailure::Permanent(format!("no purchase {id}")));
        };
        Ok(Run {
            handler: self,
            context,
            seq: purchase.steps,
            saga: purchase.saga.clone(),
            purchase,
            credentials: None,
            settles_job: true,
            unanswered: std::collections::HashMap::new(),
        })
    }
}

/// One attempt at one purchase.
struct Run<'a> {
    handler: &'a PurchaseHandler,
    context: &'a JobContext,
    purchase: StoredPurchase,
    saga: Saga,
    /// The next step-log sequence number.
    seq: i32,
    /// The seller's token, read when the first CardTrader call needs it.
    credentials: Option<Credentials>,
    /// Whether the write that ends the saga also ends its job (in the same transaction, saving
    /// the worker a commit of its own); not while the worker is giving the job up.
    settles_job: bool,
    /// Lines whose last write this run saw end without an answer, and when that write will have
    /// settled (sooner than the logged instant, which had to allow for the call's whole deadline).
    unanswered: std::collections::HashMap<usize, chrono::DateTime<chrono::Utc>>,
}

/// A local write that commits together with the events it belongs to.
enum Also {
    Nothing,
    Memo(usize, LineMemo),
    Repoint { line: usize, old: i64, new: i64 },
    Sale,
    Release(Vec<(i64, i64)>),
}

/// What CardTrader showed of one product.
enum Seen {
    Present(Box<Product>),
    Absent,
}

impl Run<'_> {
    async fn drive(&mut self) -> Result<(), JobFailure> {
        // The reservation took the locks when the products were free; they outlive crashes.
        let locked_at_reserve =
            matches!(self.context.kind(), JobKind::Purchase { locked: true, .. });
        if self.saga.phase == Phase::Taking && !locked_at_reserve {
            self.lock_products().await?;
        }
        loop {
            if let Some(stop) = self.context.should_stop() {
                // A cancellation request means nothing to a purchase: only the deadline undoes one.
                if stop != JobFailure::Cancelled {
                    return Err(stop);
                }
            }
            let step = self.saga.next_step();
            if calls_cardtrader(step) && !self.ensure_credentials().await? {
                // The seller's token is gone for good: what is left is local, or a person's.
                continue;
            }
            let started = Instant::now();
            let outcome = match step {
                Step::Stop => break,
                Step::TakeStock { line } => self.take_stock(line).await,
                Step::VerifyTake { line } => self.verify_take(line).await,
                Step::GiveBack { line } => self.give_back(line).await,
                Step::VerifyGiveBack { line } => self.verify_give_back(line).await,
                Step::Finalize => self.finish(Also::Sale, Event::Finalized).await,
                Step::Release => {
                    let corrections = self.corrections();
                    self.finish(Also::Release(corrections), Event::Released)
                        .await
                }
            };
            self.handler
                .metrics
                .purchase_step_seconds
                .with_label_values(&[step_name(step)])
                .observe(started.elapsed().as_secs_f64());
            match outcome {
                Ok(()) => {}
                // A step whose record ended the saga (and its job) has nothing left to retry,
                // whatever it returns: e.g. the give-back failure that used the last allowance.
                Err(_) if self.saga.phase.is_terminal() => {}
                Err(failure) => return Err(failure),
            }
        }
        let outcome = match self.saga.phase {
            Phase::Completed => "completed",
            Phase::Failed { .. } => "failed",
            _ => "requires_attention",
        };
        self.handler
            .metrics
            .purchases
            .with_label_values(&[outcome])
            .inc();
        if let Phase::RequiresAttention { reason, .. } = &self.saga.phase {
            tracing::error!(purchase_id = %self.purchase.id, %reason, "purchase requires attention");
            if let Ok(mut read) = self.context.read().await {
                refresh_attention_gauge(&mut read, &self.handler.metrics).await;
            }
        }
        Ok(())
    }

    /// CardTrader could not be read to decide an outcome: try again later, and on the job's last
    /// attempt hand it to a person rather than guess.
    async fn unreadable(&mut self, line: usize, err: MarketplaceError) -> Result<(), JobFailure> {
        let job = self.context.job();
        if job.attempts >= job.max_attempts {
            let reason = format!("CardTrader could not be read: {err}");
            return self
                .record(vec![Event::Undecidable { line, reason }], Also::Nothing)
                .await;
        }
        Err(call_failure(err))
    }

    /// Records that CardTrader cannot take the line; `seen` is the quantity CardTrader showed, which
    /// the release lowers the local item to.
    async fn refuse(
        &mut self,
        line: usize,
        reason: &str,
        seen: Option<i64>,
    ) -> Result<(), JobFailure> {
        let event = Event::Refused {
            line,
            reason: reason.to_owned(),
        };
        let also = match seen {
            Some(seen_quantity) => {
                let mut memo = self.memo(line).cloned().unwrap_or(LineMemo {
                    seen_quantity,
                    seen_at: None,
                    product: None,
                    give_back: None,
                });
                memo.seen_quantity = seen_quantity;
                Also::Memo(line, memo)
            }
            None => Also::Nothing,
        };
        self.record(vec![event], also).await
    }

    fn line_item(&self, line: usize) -> Result<(i64, i32), JobFailure> {
        let stored = self
            .purchase
            .lines
            .get(line)
            .ok_or_else(|| JobFailure::Permanent(format!("the purchase has no line {line}")))?;
        Ok((stored.local_product_id(), stored.quantity))
    }

    fn memo(&self, line: usize) -> Option<&LineMemo> {
        self.purchase.lines.get(line)?.memo.as_ref()
    }

    /// The blueprint of a line's product: from the snapshot, else from the local item.
    fn blueprint(&self, line: usize) -> Option<i64> {
        self.memo(line)
            .and_then(|memo| memo.product.as_ref())
            .map(|product| product.blueprint_id)
            .or_else(|| self.purchase.lines.get(line)?.blueprint_id)
    }
}
