//! Each product's expansion for the rows a sync writes. The documented export does not carry it: an
//! export asked for by expansion says it through its filter (the marketplace client records that), and
//! the others get it from their blueprint through the shared expansion index. A product whose expansion
//! stays unknown (CardTrader could not be asked) keeps the one its row already holds, so a sync never
//! clears what an earlier one learnt.

use std::collections::HashMap;

use crate::{
    blueprints::{BlueprintCatalog, ExpansionLookup},
    jobs::{JobContext, worker::JobFailure},
    marketplace::{CallOptions, MarketplaceClient, Seller, types::Product},
};

/// Fills in the expansions of one sync's chunks, one chunk after the other.
#[derive(Debug)]
pub(super) struct ExpansionFill {
    lookup: ExpansionLookup,
    job: JobContext,
}

impl ExpansionFill {
    /// For the sync `job`, as `seller`, learning within `options` (the sync's own).
    pub(super) fn new(
        catalog: &BlueprintCatalog,
        marketplace: &MarketplaceClient,
        seller: Seller<'_>,
        options: CallOptions,
        job: &JobContext,
    ) -> Self {
        Self {
            lookup: catalog.expansion_lookup(marketplace, seller, options),
            job: job.clone(),
        }
    }

    /// `products` with every expansion that can be known recorded on them.
    pub(super) async fn fill(
        &self,
        mut products: Vec<Product>,
    ) -> Result<Vec<Product>, JobFailure> {
        let blueprints: Vec<i64> = without_expansion(&products)
            .map(|product| product.blueprint_id)
            .collect();
        if blueprints.is_empty() {
            return Ok(products);
        }
        let known = self.lookup.expansions_of(&blueprints).await;
        for product in &mut products {
            if let Some(&expansion) = known.get(&product.blueprint_id) {
                product.learn_expansion(expansion);
            }
        }
        let unknown: Vec<i64> = without_expansion(&products)
            .map(|product| product.id)
            .collect();
        if unknown.is_empty() {
            return Ok(products);
        }
        let stored = self.stored_expansions(&unknown).await?;
        for product in &mut products {
            if let Some(&expansion) = stored.get(&product.id) {
                product.learn_expansion(expansion);
            }
        }
        Ok(products)
    }

    async fn stored_expansions(
        &self,
        product_ids: &[i64],
    ) -> Result<HashMap<i64, i64>, JobFailure> {
        let mut read = self.job.read().await?;
        let stored: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT product_id, expansion_id FROM inventory_items \
             WHERE user_id = $1 AND product_id = ANY($2) AND expansion_id IS NOT NULL",
        )
        .bind(self.job.user_id().as_uuid())
        .bind(product_ids)
        .fetch_all(&mut *read)
        .await
        .map_err(|err| JobFailure::Transient(err.to_string()))?;
        Ok(stored.into_iter().collect())
    }
}

fn without_expansion(products: &[Product]) -> impl Iterator<Item = &Product> {
    products
        .iter()
        .filter(|product| product.expansion_id().is_none())
}
