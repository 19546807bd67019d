//! Runs purchase sagas on the durable job worker. Each attempt folds the step log back into the saga
//! and carries on from [`Saga::next_step`], so a purchase whose worker died is resumed by whichever
//! worker takes its lease over. CardTrader is only called between transactions: every step writes
//! its intent (with what CardTrader showed before) to the step log first and its result after, so an
//! unknown outcome is decided by re-reading CardTrader, never by sending again.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    GiveBackPlan, LineMemo, ProductSnapshot, PurchaseError,
    evidence::{self, Unknown},
    saga::{Event, LineStatus, Phase, Saga, Step},
    store::{self, StoredLine, StoredPurchase},
    verdict::{self, Evidence, Verdict},
};
use crate::{
    accounts::{AccountError, Accounts, Credentials},
    jobs::{
        JobContext, JobKind, KindName,
        worker::{JobFailure, JobHandler},
    },
    marketplace::{
        CallOptions, ExportFilter, MarketplaceError,
        types::{NewProduct, Product},
    },
    metrics::Metrics,
    retry::full_jitter,
};

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
            outcome?;
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

    /// Takes this purchase's CardTrader locks, waiting while another purchase holds one of its
    /// products. A purchase that cannot get them before its deadline is undone (nothing was taken).
    async fn lock_products(&mut self) -> Result<(), JobFailure> {
        let mut waits = full_jitter(Duration::from_millis(5), Duration::from_millis(100), None);
        loop {
            let mut unit = self.context.begin().await?;
            let locked = store::lock_products(&mut unit, self.purchase.user_id, self.purchase.id)
                .await
                .map_err(transient)?;
            if let Some(ids) = locked {
                unit.commit().await?;
                let mut mine: Vec<i64> = self
                    .purchase
                    .lines
                    .iter()
                    .map(StoredLine::local_product_id)
                    .collect();
                mine.sort_unstable();
                mine.dedup();
                if mine != ids {
                    // A give-back re-pointed a line to a re-created product while we waited.
                    self.reload_lines().await?;
                }
                return Ok(());
            }
            // Another purchase holds one of them: this unit's locks go back before waiting.
            drop(unit);
            if Utc::now() > self.purchase.deadline {
                return self
                    .record(vec![Event::DeadlinePassed], Also::Nothing)
                    .await;
            }
            if let Some(stop) = self
                .context
                .should_stop()
                .filter(|s| *s != JobFailure::Cancelled)
            {
                return Err(stop);
            }
            let wait = waits.next().unwrap_or(Duration::from_millis(100));
            tokio::time::sleep(wait).await;
        }
    }

    async fn reload_lines(&mut self) -> Result<(), JobFailure> {
        let mut read = self.context.read().await?;
        if let Some(fresh) = store::load(&mut *read, self.purchase.id)
            .await
            .map_err(transient)?
        {
            self.purchase.lines = fresh.lines;
        }
        Ok(())
    }

    /// Confirms CardTrader has the line's quantity, records the snapshot and the intent, then sends
    /// the decrement.
    async fn take_stock(&mut self, line: usize) -> Result<(), JobFailure> {
        if Utc::now() > self.purchase.deadline {
            return self
                .record(vec![Event::DeadlinePassed], Also::Nothing)
                .await;
        }
        let (product_id, quantity) = self.line_item(line)?;
        // Before the read: every sale after this instant may be missing from what it shows.
        let seen_at = Utc::now();
        let seen = match self.read_product(line).await {
            Ok(seen) => seen,
            Err(MarketplaceError::Unauthorized) => {
                // Nothing was seen: the local quantity is left as it is.
                return self
                    .refuse(line, "CardTrader rejected the seller's token", None)
                    .await;
            }
            Err(err) => return Err(call_failure(err)),
        };
        let product = match seen {
            Seen::Absent => {
                let reason = format!("product {product_id} is no longer on CardTrader");
                return self.refuse(line, &reason, Some(0)).await;
            }
            Seen::Present(product) if product.quantity < i64::from(quantity) => {
                let reason = format!(
                    "CardTrader has {} of product {product_id}, {quantity} wanted",
                    product.quantity
                );
                return self.refuse(line, &reason, Some(product.quantity)).await;
            }
            Seen::Present(product) => product,
        };
        let memo = LineMemo {
            seen_quantity: product.quantity,
            seen_at: Some(seen_at),
            product: Some(snapshot(&product)),
            give_back: None,
        };
        // The call's deadline is fixed before the intent is recorded, so the recorded
        // `settled_by` is never earlier than the call can really end.
        let options = self.options();
        let sent_event = Event::DecrementSent {
            line,
            settled_by: Some(options.settled_by(self.handler.write_grace)),
        };
        self.record(vec![sent_event], Also::Memo(line, memo))
            .await?;
        let credentials = self.credentials()?;
        let sent = self
            .marketplace()
            .increment_product(
                credentials.seller(),
                options,
                product_id,
                -i64::from(quantity),
            )
            .await;
        crate::failpoint::crash_point("purchase.after_decrement");
        match sent {
            Ok(_) => {
                self.record(vec![Event::Taken { line }], Also::Nothing)
                    .await
            }
            // The next step verifies it.
            Err(err) if outcome_unknown(&err) => {
                tracing::info!(error = %err, line, "decrement outcome unknown; verifying");
                Ok(())
            }
            // The lease was lost before the call went out: whoever holds it now verifies.
            Err(MarketplaceError::Cancelled) => Err(JobFailure::LeaseLost),
            Err(MarketplaceError::RateLimited { retry_after, .. }) => {
                self.record(vec![Event::NotTaken { line }], Also::Nothing)
                    .await?;
                Err(JobFailure::RateLimited { wait: retry_after })
            }
            // Refused outright (a 404 or 4xx): the quantity seen just before stands.
            Err(err) => self.refuse(line, &err.to_string(), None).await,
        }
    }

    /// Decides from CardTrader whether the sent decrement was applied: the product's quantity
    /// then and now, and the sales of it meanwhile. "Applied" is decided as soon as only it fits;
    /// "not applied" only once the decrement can no longer land; anything else needs a person.
    async fn verify_take(&mut self, line: usize) -> Result<(), JobFailure> {
        let (_, quantity) = self.line_item(line)?;
        let memo = self.memo(line).cloned();
        let before = memo.as_ref().map_or(0, |memo| memo.seen_quantity);
        let read_at = memo
            .and_then(|memo| memo.seen_at)
            .unwrap_or(self.purchase.created_at);
        let settled_by = self.settled_by(line);
        // Lets a test make a sale on CardTrader between the decrement and its verification.
        crate::failpoint::pause("purchase.before_verify").await;
        loop {
            let judged = self
                .judge(line, read_at, before, -i64::from(quantity))
                .await;
            let evidence = match judged {
                Ok(evidence) => evidence,
                Err(unknown) => return self.unknown(line, unknown).await,
            };
            let event = match verdict::decide(&evidence) {
                Verdict::Applied => Event::Taken { line },
                _ if self.context.wait_until(settled_by).await? => continue,
                Verdict::NotApplied if self.saga.phase == Phase::Taking => Event::NotTaken { line },
                Verdict::NotApplied => Event::Refused {
                    line,
                    reason: "the decrement was not applied".into(),
                },
                Verdict::Ambiguous => Event::Undecidable {
                    line,
                    reason: evidence.to_string(),
                },
            };
            return self.record(vec![event], Also::Nothing).await;
        }
    }

    /// Reads what CardTrader shows of `line`'s product and its sales since `read_at`, when it
    /// held `before` and a write of `delta` was sent.
    async fn judge(
        &self,
        line: usize,
        read_at: chrono::DateTime<Utc>,
        before: i64,
        delta: i64,
    ) -> Result<Evidence, Unknown> {
        let (product_id, _) = self.line_item(line).map_err(|_| Unknown::TooMany)?;
        let credentials = self.credentials().map_err(|err| {
            Unknown::Unreadable(MarketplaceError::Unavailable {
                reason: err.to_string(),
            })
        })?;
        let options = self.options();
        let (seen, sales) = evidence::sales_around(
            self.context,
            self.marketplace(),
            credentials.seller(),
            &options,
            product_id,
            read_at,
            self.read_product(line),
        )
        .await?;
        let now = match seen {
            Seen::Present(product) => product.quantity,
            Seen::Absent => 0,
        };
        Ok(Evidence {
            before,
            now,
            delta,
            sales,
        })
    }

    /// When the last write sent for `line` will have settled, from the step log.
    fn settled_by(&self, line: usize) -> Option<chrono::DateTime<Utc>> {
        self.saga.settled_by(line)
    }

    /// The sales could not be established: try again later (a sale landed meanwhile, CardTrader
    /// could not be read), or hand the line to a person when they cannot be known.
    async fn unknown(&mut self, line: usize, unknown: Unknown) -> Result<(), JobFailure> {
        match unknown {
            Unknown::Unreadable(err) => self.unreadable(line, err).await,
            Unknown::Moving => Err(JobFailure::Transient(
                "a sale of the product landed while it was being read".into(),
            )),
            Unknown::Storage(err) => Err(JobFailure::Transient(err)),
            Unknown::TooMany => {
                let reason = "too many orders since the product was read to tell".to_owned();
                self.record(vec![Event::Undecidable { line, reason }], Also::Nothing)
                    .await
            }
        }
    }

    /// Gives a taken line back: increments the product again, or re-creates it if it is gone.
    async fn give_back(&mut self, line: usize) -> Result<(), JobFailure> {
        let (product_id, quantity) = self.line_item(line)?;
        let read_at = Utc::now();
        let seen = match self.read_product(line).await {
            Ok(seen) => seen,
            Err(err) => return self.give_back_failed(line, err).await,
        };
        let plan = match &seen {
            Seen::Present(product) => GiveBackPlan::Increment {
                from: product.quantity,
                read_at: Some(read_at),
            },
            Seen::Absent => GiveBackPlan::Recreate {
                merged_into: self.identical_product(line).await?,
            },
        };
        let mut memo = self.memo(line).cloned().unwrap_or(LineMemo {
            seen_quantity: 0,
            seen_at: None,
            product: None,
            give_back: None,
        });
        memo.give_back = Some(plan);
        let Some(product) = memo.product.clone() else {
            // Never happens: a line is only taken after its snapshot was stored.
            let reason = "no snapshot of the product to give it back from".to_owned();
            return self
                .record(
                    vec![Event::Undecidable { line, reason }],
                    Also::Memo(line, memo),
                )
                .await;
        };
        let options = self.options();
        let sent_event = Event::GiveBackSent {
            line,
            settled_by: Some(options.settled_by(self.handler.write_grace)),
        };
        self.record(vec![sent_event], Also::Memo(line, memo))
            .await?;
        let credentials = self.credentials()?;
        let seller = credentials.seller();
        let sent = match plan {
            GiveBackPlan::Increment { .. } => self
                .marketplace()
                .increment_product(seller, options, product_id, i64::from(quantity))
                .await
                .map(|_| product_id),
            GiveBackPlan::Recreate { .. } => self
                .marketplace()
                .create_product(seller, options, &recreation(&product, quantity))
                .await
                .map(|created| created.id),
        };
        crate::failpoint::crash_point("purchase.after_give_back");
        match sent {
            Ok(new_id) => self.given_back(line, plan, product_id, new_id).await,
            Err(err) if outcome_unknown(&err) => {
                tracing::info!(error = %err, line, "give-back outcome unknown; verifying");
                Ok(())
            }
            Err(MarketplaceError::Cancelled) => Err(JobFailure::LeaseLost),
            Err(err) => self.give_back_failed(line, err).await,
        }
    }

    /// Decides from CardTrader whether the sent give-back was applied.
    async fn verify_give_back(&mut self, line: usize) -> Result<(), JobFailure> {
        let (product_id, quantity) = self.line_item(line)?;
        let quantity = i64::from(quantity);
        let Some(plan) = self.memo(line).and_then(|memo| memo.give_back) else {
            return self
                .record(
                    vec![Event::GiveBackFailed {
                        line,
                        reason: "no record of how it was sent".into(),
                    }],
                    Also::Nothing,
                )
                .await;
        };
        let settled_by = self.settled_by(line);
        let decided: Result<Option<i64>, String> = match plan {
            GiveBackPlan::Increment { from, read_at } => {
                let read_at = read_at.unwrap_or(self.purchase.created_at);
                loop {
                    let evidence = match self.judge(line, read_at, from, quantity).await {
                        Ok(evidence) => evidence,
                        Err(unknown) => return self.unknown(line, unknown).await,
                    };
                    match verdict::decide(&evidence) {
                        Verdict::Applied => break Ok(Some(product_id)),
                        _ if self.context.wait_until(settled_by).await? => continue,
                        Verdict::NotApplied => break Ok(None),
                        Verdict::Ambiguous => break Err(evidence.to_string()),
                    }
                }
            }
            GiveBackPlan::Recreate { merged_into } => {
                let products = match self.read_blueprint(line).await {
                    Ok(products) => products,
                    Err(err) => return self.unreadable(line, err).await,
                };
                let snapshot = self.memo(line).and_then(|memo| memo.product.clone());
                let identical: Vec<&Product> = products
                    .iter()
                    .filter(|p| snapshot.as_ref().is_some_and(|s| same_kind(s, p)))
                    .collect();
                let decided = match merged_into {
                    Some((id, before)) => match identical.iter().find(|p| p.id == id) {
                        Some(p) if p.quantity == before + quantity => Ok(Some(id)),
                        Some(p) if p.quantity == before => Ok(None),
                        _ => Err(format!("product {id} it merged into moved")),
                    },
                    None => match identical.as_slice() {
                        [] => Ok(None),
                        [p] if p.quantity == quantity => Ok(Some(p.id)),
                        _ => Err(format!(
                            "{} identical products after the re-create",
                            identical.len()
                        )),
                    },
                };
                if decided == Ok(None) && self.context.wait_until(settled_by).await? {
                    // The re-create may still land: look again once it cannot.
                    return Ok(());
                }
                decided
            }
        };
        match decided {
            Ok(Some(new_id)) => self.given_back(line, plan, product_id, new_id).await,
            Ok(None) => {
                self.record(
                    vec![Event::GiveBackFailed {
                        line,
                        reason: "the give-back was not applied".into(),
                    }],
                    Also::Nothing,
                )
                .await?;
                // Sent again after the job's backoff, not at once.
                Err(JobFailure::Transient("give-back not applied".into()))
            }
            Err(reason) => {
                self.record(vec![Event::Undecidable { line, reason }], Also::Nothing)
                    .await
            }
        }
    }

    async fn given_back(
        &mut self,
        line: usize,
        plan: GiveBackPlan,
        old: i64,
        new: i64,
    ) -> Result<(), JobFailure> {
        let by = match plan {
            GiveBackPlan::Increment { .. } => "increment",
            GiveBackPlan::Recreate { .. } => "recreate",
        };
        let also = if new == old {
            Also::Nothing
        } else {
            Also::Repoint { line, old, new }
        };
        self.record(vec![Event::GivenBack { line }], also).await?;
        self.handler
            .metrics
            .purchase_compensations
            .with_label_values(&[by])
            .inc();
        Ok(())
    }

    /// A give-back that failed without doubt: counted (the saga bounds them), then retried after the
    /// job's backoff.
    async fn give_back_failed(
        &mut self,
        line: usize,
        err: MarketplaceError,
    ) -> Result<(), JobFailure> {
        let reason = err.to_string();
        self.record(vec![Event::GiveBackFailed { line, reason }], Also::Nothing)
            .await?;
        if self.saga.phase.is_terminal() {
            return Ok(());
        }
        Err(call_failure(err))
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

    /// The last local transaction: the sale or the release, the locks dropped, the event logged.
    async fn finish(&mut self, also: Also, event: Event) -> Result<(), JobFailure> {
        self.record(vec![event], also).await
    }

    /// For each refused line, CardTrader's quantity as seen: the local item is lowered to it.
    fn corrections(&self) -> Vec<(i64, i64)> {
        self.purchase
            .lines
            .iter()
            .filter(|line| self.saga.lines.get(line.line) == Some(&LineStatus::Refused))
            .filter_map(|line| Some((line.local_product_id(), line.memo.as_ref()?.seen_quantity)))
            .collect()
    }

    /// Writes `events` (and `also`) in one fenced transaction, then folds them into the saga.
    async fn record(&mut self, events: Vec<Event>, also: Also) -> Result<(), JobFailure> {
        let mut next = self.saga.clone();
        for event in &events {
            next.apply(event);
        }
        let purchase = &self.purchase;
        let user_id = purchase.user_id;
        let result: Result<(), PurchaseError> = async {
            let mut unit = self.context.begin().await.map_err(jobs_error)?;
            match &also {
                Also::Nothing => {}
                Also::Memo(line, memo) => {
                    store::save_memo(&mut unit, purchase.id, *line, memo).await?
                }
                Also::Repoint { line, old, new } => {
                    store::repoint(&mut unit, user_id, purchase.id, *line, *old, *new).await?
                }
                Also::Sale => {
                    store::commit_sale(&mut unit, user_id, &purchase.lines).await?;
                    store::unlock_products(&mut unit, purchase.id).await?;
                }
                Also::Release(corrections) => {
                    store::release(&mut unit, user_id, &purchase.lines, corrections).await?;
                    store::unlock_products(&mut unit, purchase.id).await?;
                }
            }
            store::append(&mut unit, purchase.id, self.seq, &events, &next).await?;
            unit.commit().await.map_err(jobs_error)?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {}
            Err(PurchaseError::LeaseLost) => return Err(JobFailure::LeaseLost),
            Err(err) => return Err(transient(err)),
        }
        self.seq += events.len() as i32;
        match also {
            Also::Memo(line, memo) => {
                if let Some(stored) = self.purchase.lines.get_mut(line) {
                    stored.memo = Some(memo);
                }
            }
            Also::Repoint { line, new, .. } => {
                if let Some(stored) = self.purchase.lines.get_mut(line) {
                    stored.recreated_product_id = Some(new);
                }
            }
            _ => {}
        }
        self.saga = next;
        self.handler
            .events
            .changed(self.purchase.id, self.saga.phase.is_terminal());
        // Every step boundary: a test may kill the driver right after any entry of the log.
        crate::failpoint::crash_point("purchase.after_record");
        Ok(())
    }

    fn line_item(&self, line: usize) -> Result<(i64, i32), JobFailure> {
        let stored = self
            .purchase
            .lines
            .get(line)
            .ok_or_else(|| JobFailure::Permanent(format!("the purchase has no line {line}")))?;
        Ok((stored.local_product_id(), stored.quantity))
    }

    /// The seller's token, read by [`Self::ensure_credentials`] before any CardTrader step.
    fn credentials(&self) -> Result<Credentials, JobFailure> {
        self.credentials
            .clone()
            .ok_or_else(|| JobFailure::Transient("the seller's token was not read".into()))
    }

    /// Reads the seller's token if not read yet; `false` when it is gone for good (the seller
    /// disconnected, the token cannot be opened), after recording that the driver gave up on
    /// CardTrader.
    async fn ensure_credentials(&mut self) -> Result<bool, JobFailure> {
        if self.credentials.is_some() {
            return Ok(true);
        }
        match self
            .handler
            .accounts
            .credentials(self.purchase.user_id)
            .await
        {
            Ok(credentials) => {
                self.credentials = Some(credentials);
                Ok(true)
            }
            Err(
                err @ (AccountError::NotFound
                | AccountError::NotConnected(_)
                | AccountError::EncryptionNotConfigured
                | AccountError::TokenUnreadable(_)),
            ) => {
                let reason = format!("the seller's CardTrader token cannot be used: {err}");
                self.record(vec![Event::GaveUp { reason }], Also::Nothing)
                    .await?;
                Ok(false)
            }
            Err(err) => Err(JobFailure::Transient(format!(
                "reading the seller's token: {err}"
            ))),
        }
    }

    fn memo(&self, line: usize) -> Option<&LineMemo> {
        self.purchase.lines.get(line)?.memo.as_ref()
    }

    fn marketplace(&self) -> &crate::marketplace::MarketplaceClient {
        self.handler.accounts.marketplace()
    }

    fn options(&self) -> CallOptions {
        CallOptions::interactive(self.handler.call_budget).stopped_by(self.context.lease_token())
    }

    /// The blueprint of a line's product: from the snapshot, else from the local item.
    fn blueprint(&self, line: usize) -> Option<i64> {
        self.memo(line)
            .and_then(|memo| memo.product.as_ref())
            .map(|product| product.blueprint_id)
            .or_else(|| self.purchase.lines.get(line)?.blueprint_id)
    }

    /// The seller's products of the line's blueprint, as CardTrader has them now.
    async fn read_blueprint(&self, line: usize) -> Result<Vec<Product>, MarketplaceError> {
        // The shop no longer has the item, and never took a snapshot of it: nothing to find.
        let Some(blueprint) = self.blueprint(line) else {
            return Ok(Vec::new());
        };
        let credentials =
            self.credentials
                .as_ref()
                .ok_or_else(|| MarketplaceError::Unavailable {
                    reason: "the seller's token was not read".into(),
                })?;
        self.marketplace()
            .export_products(
                credentials.seller(),
                self.options(),
                ExportFilter::Blueprint(blueprint),
            )
            .await
    }

    /// The line's product as CardTrader has it now.
    async fn read_product(&self, line: usize) -> Result<Seen, MarketplaceError> {
        let (product_id, _) = self
            .line_item(line)
            .map_err(|err| MarketplaceError::NotFound {
                message: err.to_string(),
            })?;
        let products = self.read_blueprint(line).await?;
        Ok(products
            .into_iter()
            .find(|product| product.id == product_id)
            .map_or(Seen::Absent, |product| Seen::Present(Box::new(product))))
    }

    /// A product CardTrader would merge a re-create of the line's snapshot into, and its quantity.
    async fn identical_product(&self, line: usize) -> Result<Option<(i64, i64)>, JobFailure> {
        let Some(snapshot) = self.memo(line).and_then(|memo| memo.product.clone()) else {
            return Ok(None);
        };
        let products = self.read_blueprint(line).await.map_err(call_failure)?;
        Ok(products
            .iter()
            .find(|product| same_kind(&snapshot, product))
            .map(|product| (product.id, product.quantity)))
    }
}

fn snapshot(product: &Product) -> ProductSnapshot {
    ProductSnapshot {
        blueprint_id: product.blueprint_id,
        price_cents: product.price_cents,
        currency: product.price_currency.clone(),
        properties: product.properties_hash.clone(),
        description: product.description.clone(),
        user_data_field: product.user_data_field.clone(),
        graded: product.graded,
    }
}

/// Whether CardTrader would merge a create of `snapshot` into `product`: same blueprint and
/// properties.
fn same_kind(snapshot: &ProductSnapshot, product: &Product) -> bool {
    product.blueprint_id == snapshot.blueprint_id && product.properties_hash == snapshot.properties
}

fn recreation(snapshot: &ProductSnapshot, quantity: i32) -> NewProduct {
    NewProduct {
        blueprint_id: snapshot.blueprint_id,
        price: snapshot.price_cents as f64 / 100.0,
        quantity: i64::from(quantity),
        description: snapshot.description.clone(),
        user_data_field: snapshot.user_data_field.clone(),
        properties: Some(snapshot.properties.clone()),
        graded: snapshot.graded,
    }
}

/// Whether a failed write may still have been applied: no answer in time, a 5xx, a connection lost.
fn outcome_unknown(err: &MarketplaceError) -> bool {
    matches!(
        err,
        MarketplaceError::Timeout | MarketplaceError::Unavailable { .. }
    )
}

fn call_failure(err: MarketplaceError) -> JobFailure {
    match err {
        MarketplaceError::RateLimited { retry_after, .. } => {
            JobFailure::RateLimited { wait: retry_after }
        }
        MarketplaceError::Cancelled => JobFailure::LeaseLost,
        other => JobFailure::Transient(other.to_string()),
    }
}

fn transient(err: PurchaseError) -> JobFailure {
    match err {
        PurchaseError::LeaseLost => JobFailure::LeaseLost,
        other => JobFailure::Transient(other.to_string()),
    }
}

fn jobs_error(err: crate::jobs::JobError) -> PurchaseError {
    match err {
        crate::jobs::JobError::LeaseLost => PurchaseError::LeaseLost,
        crate::jobs::JobError::Database(err) => PurchaseError::Database(err),
        other => PurchaseError::Internal(other.to_string()),
    }
}

/// Whether a step calls CardTrader (the others are local transactions).
fn calls_cardtrader(step: Step) -> bool {
    matches!(
        step,
        Step::TakeStock { .. }
            | Step::VerifyTake { .. }
            | Step::GiveBack { .. }
            | Step::VerifyGiveBack { .. }
    )
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::TakeStock { .. } => "take_stock",
        Step::VerifyTake { .. } => "verify_take",
        Step::GiveBack { .. } => "give_back",
        Step::VerifyGiveBack { .. } => "verify_give_back",
        Step::Finalize => "finalize",
        Step::Release => "release",
        Step::Stop => "stop",
    }
}

/// Re-reads how many purchases wait for a person.
pub async fn refresh_attention_gauge(conn: &mut sqlx::PgConnection, metrics: &Metrics) {
    match store::attention_count(conn).await {
        Ok(count) => metrics.purchases_requiring_attention.set(count),
        Err(err) => tracing::warn!(error = %err, "counting purchases requiring attention failed"),
    }
}
