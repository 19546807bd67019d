//! The driver's CardTrader side: the seller's token, and the reads that tell what CardTrader holds
//! now. Writes (take, give back) are steps in `mod.rs`, each between two recorded log entries.

use super::{Also, Run, Seen, decide::same_kind};
use crate::{
    accounts::{AccountError, Credentials},
    jobs::worker::JobFailure,
    marketplace::{CallOptions, ExportFilter, MarketplaceError, types::Product},
    purchase::saga::Event,
};

impl Run<'_> {
    /// The seller's token, read by [`Self::ensure_credentials`] before any CardTrader step.
    pub(super) fn credentials(&self) -> Result<Credentials, JobFailure> {
        self.credentials
            .clone()
            .ok_or_else(|| JobFailure::Transient("the seller's token was not read".into()))
    }

    /// Reads the seller's token if not read yet; `false` when it is gone for good (the seller
    /// disconnected, the token cannot be opened), after recording that the driver gave up on
    /// CardTrader.
    pub(super) async fn ensure_credentials(&mut self) -> Result<bool, JobFailure> {
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

    pub(super) fn marketplace(&self) -> &crate::marketplace::MarketplaceClient {
        self.handler.accounts.marketplace()
    }

    pub(super) fn options(&self) -> CallOptions {
        CallOptions::interactive(self.handler.call_budget).stopped_by(self.context.lease_token())
    }

    /// The seller's products of the line's blueprint, as CardTrader has them now.
    pub(super) async fn read_blueprint(
        &self,
        line: usize,
    ) -> Result<Vec<Product>, MarketplaceError> {
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
    pub(super) async fn read_product(&self, line: usize) -> Result<Seen, MarketplaceError> {
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
    pub(super) async fn identical_product(
        &self,
        line: usize,
    ) -> Result<Option<(i64, i64)>, JobFailure> {
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

/// Whether a failed write may still have been applied: no answer in time, a 5xx, a connection lost.
pub(super) fn outcome_unknown(err: &MarketplaceError) -> bool {
    matches!(
        err,
        MarketplaceError::Timeout | MarketplaceError::Unavailable { .. }
    )
}

pub(super) fn call_failure(err: MarketplaceError) -> JobFailure {
    match err {
        MarketplaceError::RateLimited { retry_after, .. } => {
            JobFailure::RateLimited { wait: retry_after }
        }
        MarketplaceError::Cancelled => JobFailure::LeaseLost,
        other => JobFailure::Transient(other.to_string()),
    }
}
