//! The create path of a push. CardTrader merges a create into an identical product, so a create
//! is never sent twice: the blueprint's quantities and the instant the create settles are recorded
//! first, and an attempt that finds them decides from the export what the earlier one did.

use chrono::Utc;
use serde_json::Value;

use super::{Pending, Run, transient};
use crate::inventory::{
    decide::{self, CreateOutcome},
    outbox,
};
use crate::{
    jobs::{JobKind, NewJob, TargetedScope, worker::JobFailure},
    marketplace::{
        ExportFilter,
        types::{NewProduct, Product},
    },
};

impl Run<'_> {
    /// A create. An earlier attempt's create is decided from the export (see the module doc);
    /// otherwise the blueprint's quantities and the instant the create will have settled are
    /// recorded (fenced: a worker whose lease was taken over sends nothing), then it is sent.
    pub(super) async fn create(&self, row: &Pending) -> Result<(), JobFailure> {
        let Some(tag) = row.create_tag.as_deref() else {
            return self.failed(row, "a create without a tag").await;
        };
        let fields = &row.fields;
        let blueprint_id = fields["blueprint_id"].as_i64().unwrap_or_default();
        let quantity = fields["quantity"].as_i64().unwrap_or_default();
        let settled_by = fields
            .get("settled_by")
            .and_then(|at| serde_json::from_value::<chrono::DateTime<Utc>>(at.clone()).ok());
        let mut products = self.blueprint_products(blueprint_id).await?;
        if let Some(before) = fields.get("before").and_then(Value::as_object) {
            loop {
                match decide::decide_create(&products, before, tag, quantity) {
                    CreateOutcome::Applied(product) => {
                        return self.adopt(row, product, None).await;
                    }
                    // The earlier create may still land: look again once it cannot.
                    _ if self.context.wait_until(settled_by).await? => {
                        products = self.blueprint_products(blueprint_id).await?;
                    }
                    CreateOutcome::NotApplied => break,
                    CreateOutcome::Unknown => {
                        return self
                            .failed(
                                row,
                                "the outcome of an earlier attempt of this create is unknown: the \
                                 blueprint's products changed by other amounts; check CardTrader",
                            )
                            .await;
                    }
                }
            }
        }
        let options = self.options();
        let mut unit = self.context.begin().await?;
        outbox::save_create_intent(
            &mut unit,
            row,
            &products,
            options.settled_by(self.handler.write_grace),
        )
        .await
        .map_err(transient)?;
        unit.commit().await?;
        let new = NewProduct {
            blueprint_id,
            price: decide::cents_to_price(fields["price_cents"].as_i64().unwrap_or_default()),
            quantity,
            description: fields["description"].as_str().map(str::to_owned),
            user_data_field: Some(tag.to_owned()),
            properties: fields["properties"].as_object().cloned(),
            graded: fields["graded"].as_bool(),
        };
        let created = self
            .marketplace()
            .create_product(self.credentials.seller(), options, &new)
            .await;
        crate::failpoint::crash_point("push.after_create");
        match created {
            Ok(resource) => {
                let products = self.blueprint_products(blueprint_id).await?;
                match products.iter().find(|product| product.id == resource.id) {
                    Some(product) => self.adopt(row, product, resource.expansion_id).await,
                    None => Err(JobFailure::Transient(
                        "the created product is not in the export yet".into(),
                    )),
                }
            }
            // Unknown outcome or a passing failure: the next attempt decides from the export.
            Err(err) => self.refused_or_retry(row, err).await,
        }
    }

    pub(super) async fn blueprint_products(
        &self,
        blueprint_id: i64,
    ) -> Result<Vec<Product>, JobFailure> {
        self.marketplace()
            .export_products(
                self.credentials.seller(),
                self.options(),
                ExportFilter::Blueprint(blueprint_id),
            )
            .await
            .map_err(|err| self.call_failure(err))
    }

    /// Records the created product locally and queues a targeted sync of its blueprint, which
    /// maps it to the shop's print.
    pub(super) async fn adopt(
        &self,
        row: &Pending,
        product: &Product,
        expansion_id: Option<i64>,
    ) -> Result<(), JobFailure> {
        let user_id = self.context.user_id();
        let mut unit = self.context.begin().await?;
        let expansion_id = product.expansion_id().or(expansion_id);
        outbox::adopt_created(&mut unit, user_id, row, product, expansion_id)
            .await
            .map_err(transient)?;
        // A targeted sync of the blueprint maps the new product to the shop's print.
        let scope = TargetedScope {
            blueprint_ids: vec![product.blueprint_id],
            expansion_ids: Vec::new(),
        };
        unit.enqueue(&NewJob::new(user_id, JobKind::SyncTargeted(scope)))
            .await?;
        unit.commit().await?;
        self.count(row, "single", "pushed");
        tracing::info!(product_id = product.id, "created on CardTrader");
        Ok(())
    }
}
