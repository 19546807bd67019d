//! Giving stock back when a purchase is undone: raise (or re-create) each taken line's product on
//! CardTrader, and verify from a re-read when the outcome is unknown.

use chrono::Utc;

use super::{
    Also, Run, Seen,
    calls::{call_failure, outcome_unknown},
    decide::{recreation, same_kind},
};
use crate::{
    jobs::worker::JobFailure,
    marketplace::{MarketplaceError, types::Product},
    purchase::{
        GiveBackPlan, LineMemo,
        saga::Event,
        verdict::{self, Verdict},
    },
};

impl Run<'_> {
    /// Gives a taken line back: increments the product again, or re-creates it if it is gone.
    pub(super) async fn give_back(&mut self, line: usize) -> Result<(), JobFailure> {
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
        self.unanswered.remove(&line);
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
                self.note_unanswered(line);
                Ok(())
            }
            Err(MarketplaceError::Cancelled) => Err(JobFailure::LeaseLost),
            Err(err) => self.give_back_failed(line, err).await,
        }
    }

    /// Decides from CardTrader whether the sent give-back was applied.
    pub(super) async fn verify_give_back(&mut self, line: usize) -> Result<(), JobFailure> {
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

    pub(super) async fn given_back(
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
    pub(super) async fn give_back_failed(
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
}
