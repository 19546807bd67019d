//! Taking stock: lock the lines' products, lower each on CardTrader, and decide from a re-read
//! when a take's outcome is unknown (never by sending it again).

use std::time::Duration;

use chrono::Utc;

use super::{
    Also, Run, Seen, calls::call_failure, calls::outcome_unknown, decide::snapshot,
    record::transient,
};
use crate::{
    jobs::worker::JobFailure,
    marketplace::MarketplaceError,
    purchase::{
        LineMemo,
        evidence::{self, Unknown},
        saga::{Event, Phase},
        store::{self, StoredLine},
        verdict::{self, Evidence, Verdict},
    },
    retry::full_jitter,
};

impl Run<'_> {
    /// Takes this purchase's CardTrader locks, waiting while another purchase holds one of its
    /// products. A purchase that cannot get them before its deadline is undone (nothing was taken).
    pub(super) async fn lock_products(&mut self) -> Result<(), JobFailure> {
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

    pub(super) async fn reload_lines(&mut self) -> Result<(), JobFailure> {
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
    pub(super) async fn take_stock(&mut self, line: usize) -> Result<(), JobFailure> {
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
        self.unanswered.remove(&line);
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
                self.note_unanswered(line);
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
    pub(super) async fn verify_take(&mut self, line: usize) -> Result<(), JobFailure> {
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
    pub(super) async fn judge(
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

    /// When the last write sent for `line` will have settled: from the step log (the call's
    /// deadline plus the grace, recorded before it was sent), or sooner when this run saw the call
    /// end without an answer.
    pub(super) fn settled_by(&self, line: usize) -> Option<chrono::DateTime<Utc>> {
        let logged = self.saga.settled_by(line);
        match (logged, self.unanswered.get(&line)) {
            (Some(logged), Some(&seen)) => Some(logged.min(seen)),
            (logged, _) => logged,
        }
    }

    /// This run saw the write just sent for `line` end without an answer: it was sent once and is
    /// no longer retried, so it lands within the grace from now or not at all. A run that did not
    /// see it end (a takeover after a crash) keeps to the logged instant.
    pub(super) fn note_unanswered(&mut self, line: usize) {
        let grace =
            chrono::TimeDelta::from_std(self.handler.write_grace).unwrap_or(chrono::TimeDelta::MAX);
        self.unanswered.insert(line, Utc::now() + grace);
    }

    /// The sales could not be established: try again later (a sale landed meanwhile, CardTrader
    /// could not be read), or hand the line to a person when they cannot be known.
    pub(super) async fn unknown(
        &mut self,
        line: usize,
        unknown: Unknown,
    ) -> Result<(), JobFailure> {
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
}
