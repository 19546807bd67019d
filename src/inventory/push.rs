//! The `inventory_push` job: sends a seller's pending edits to CardTrader, oldest first, until none
//! is left. Updates carry absolute values (`PUT /products/:id`, idempotent, so a retry is
//! harmless); when many are pending they go as `bulk_update` / `bulk_destroy` batches whose job is
//! polled once a second, and a per-item error marks that item's push failed, not the batch. A push
//! clears its outbox row only if the row's version is still the one it sent, so an edit made
//! meanwhile is pushed next. A create is tagged through `user_data_field` and, when its outcome is
//! unknown, looked for in the export before anything is sent again (CardTrader merges creates into
//! identical products, so a blind retry would add the quantity twice).

use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::{
    accounts::{AccountError, Accounts, Credentials},
    domain::UserId,
    jobs::{
        JobContext, KindName, NewJob,
        worker::{JobFailure, JobHandler},
    },
    marketplace::{
        CallOptions, ExportFilter, MarketplaceError,
        types::{BulkJob, BulkUpdateItem, NewProduct, Product, ProductUpdate},
    },
    metrics::Metrics,
    sync::scope::SyncScope,
};

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
    /// Pushes by outcome.
    pub metrics: Metrics,
}

/// One outstanding push as the outbox holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Pending {
    id: Uuid,
    product_id: Option<i64>,
    op: String,
    fields: Value,
    version: i64,
    create_tag: Option<String>,
}

#[tonic::async_trait]
impl JobHandler for PushHandler {
    fn kind(&self) -> KindName {
        KindName::InventoryPush
    }

    async fn run(&self, context: &JobContext) -> Result<(), JobFailure> {
        let user_id = context.user_id();
        let credentials = match self.accounts.credentials(user_id).await {
            Ok(credentials) => credentials,
            // The edits stay pending; connecting again queues nothing by itself, the next edit does.
            Err(AccountError::NotConnected(_) | AccountError::NotFound) => {
                return Err(JobFailure::Permanent(
                    "the seller is not connected; edits stay pending".into(),
                ));
            }
            Err(err) => return Err(JobFailure::Transient(err.to_string())),
        };
        let run = Run {
            handler: self,
            context,
            credentials,
            user_id,
        };
        loop {
            if let Some(stop) = context.should_stop() {
                return Err(stop);
            }
            let pending = run.pending().await?;
            if pending.is_empty() {
                return Ok(());
            }
            let held = run.held_by_purchases(&pending).await?;
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
            run.push(ready).await?;
        }
    }
}

/// One attempt for one seller.
struct Run<'a> {
    handler: &'a PushHandler,
    context: &'a JobContext,
    credentials: Credentials,
    user_id: UserId,
}

impl Run<'_> {
    fn options(&self) -> CallOptions {
        CallOptions::interactive(self.handler.call_budget).stopped_by(self.context.lease_token())
    }

    async fn pending(&self) -> Result<Vec<Pending>, JobFailure> {
        let mut read = self.context.read().await?;
        sqlx::query_as(
            "SELECT id, product_id, op, fields, version, create_tag FROM inventory_pushes \
             WHERE user_id = $1 AND state = 'pending' ORDER BY updated_at, id LIMIT $2",
        )
        .bind(self.user_id.as_uuid())
        .bind(ROUND)
        .fetch_all(&mut *read)
        .await
        .map_err(transient)
    }

    async fn held_by_purchases(&self, pending: &[Pending]) -> Result<Vec<i64>, JobFailure> {
        let ids: Vec<i64> = pending.iter().filter_map(|row| row.product_id).collect();
        let mut read = self.context.read().await?;
        sqlx::query_scalar(
            "SELECT product_id FROM purchase_product_locks \
             WHERE user_id = $1 AND product_id = ANY($2)",
        )
        .bind(self.user_id.as_uuid())
        .bind(&ids)
        .fetch_all(&mut *read)
        .await
        .map_err(transient)
    }

    /// Pushes one round: creates one by one, updates and deletions singly or in batches.
    async fn push(&self, rows: Vec<Pending>) -> Result<(), JobFailure> {
        let mut updates = Vec::new();
        let mut deletes = Vec::new();
        for row in rows {
            match row.op.as_str() {
                "create" => self.create(&row).await?,
                "delete" => deletes.push(row),
                _ => updates.push(row),
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

    /// The absolute values of the row's edited fields, read from the item now; `None` when the item
    /// is gone locally (a sync swept it), which leaves nothing to push.
    async fn wanted(&self, row: &Pending) -> Result<Option<ProductUpdate>, JobFailure> {
        let Some(product_id) = row.product_id else {
            return Ok(None);
        };
        type Values = (i64, i32, Option<String>, Value, Option<String>);
        let mut read = self.context.read().await?;
        let values: Option<Values> = sqlx::query_as(
            "SELECT price_cents, quantity, description, properties, user_data_field \
             FROM inventory_items WHERE user_id = $1 AND product_id = $2",
        )
        .bind(self.user_id.as_uuid())
        .bind(product_id)
        .fetch_optional(&mut *read)
        .await
        .map_err(transient)?;
        let Some((price_cents, quantity, description, properties, user_data_field)) = values else {
            return Ok(None);
        };
        let edited = |field: &str| row.fields.get(field).is_some();
        Ok(Some(ProductUpdate {
            price: edited("price_cents").then(|| cents_to_price(price_cents)),
            quantity: edited("quantity").then_some(i64::from(quantity)),
            description: if edited("description") {
                Some(description.unwrap_or_default())
            } else {
                None
            },
            properties: match properties {
                Value::Object(map) if edited("properties") => Some(map),
                _ => None,
            },
            user_data_field: if edited("user_data_field") {
                Some(user_data_field.unwrap_or_default())
            } else {
                None
            },
        }))
    }

    async fn update(&self, row: &Pending) -> Result<(), JobFailure> {
        let (Some(product_id), Some(update)) = (row.product_id, self.wanted(row).await?) else {
            return self.settled(row).await;
        };
        let result = self
            .handler
            .accounts
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
            .handler
            .accounts
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

    async fn bulk_update(&self, rows: &[Pending]) -> Result<(), JobFailure> {
        let mut items = Vec::new();
        let mut sent = Vec::new();
        for row in rows {
            match (row.product_id, self.wanted(row).await?) {
                (Some(id), Some(update)) => {
                    items.push(BulkUpdateItem { id, update });
                    sent.push(row);
                }
                _ => self.settled(row).await?,
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        let marketplace = self.handler.accounts.marketplace();
        let uuid = marketplace
            .bulk_update(self.credentials.seller(), self.options(), &items)
            .await
            .map_err(call_failure)?;
        let job = self.await_bulk_job(&uuid).await?;
        self.record_results(&sent, &job).await
    }

    async fn bulk_destroy(&self, rows: &[Pending]) -> Result<(), JobFailure> {
        let ids: Vec<i64> = rows.iter().filter_map(|row| row.product_id).collect();
        let marketplace = self.handler.accounts.marketplace();
        let uuid = marketplace
            .bulk_destroy(self.credentials.seller(), self.options(), &ids)
            .await
            .map_err(call_failure)?;
        let job = self.await_bulk_job(&uuid).await?;
        let sent: Vec<&Pending> = rows.iter().collect();
        self.record_results(&sent, &job).await
    }

    /// Polls the bulk job once a second until CardTrader has finished it.
    async fn await_bulk_job(&self, uuid: &str) -> Result<BulkJob, JobFailure> {
        let give_up = Instant::now() + BULK_JOB_PATIENCE;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let job = self
                .handler
                .accounts
                .marketplace()
                .bulk_job(self.credentials.seller(), self.options(), uuid)
                .await;
            match job {
                Ok(job) if job.finished() => return Ok(job),
                Ok(_) => {}
                // A poll that failed is just tried again next second.
                Err(err) if err.is_transient() => {
                    tracing::debug!(%err, uuid, "polling a bulk job failed");
                }
                Err(err) => return Err(call_failure(err)),
            }
            if Instant::now() > give_up {
                return Err(JobFailure::Transient(format!(
                    "CardTrader's bulk job {uuid} did not finish in {BULK_JOB_PATIENCE:?}"
                )));
            }
        }
    }

    /// Settles each sent row by its item's result: applied clears it, an error marks it failed.
    async fn record_results(&self, sent: &[&Pending], job: &BulkJob) -> Result<(), JobFailure> {
        if job.state == "unprocessable" {
            return Err(JobFailure::Transient(format!(
                "CardTrader could not process bulk job {}",
                job.uuid
            )));
        }
        for (index, row) in sent.iter().enumerate() {
            match job.results.iter().find(|result| result.job_index == index) {
                Some(result) if result.applied() => {
                    self.count(row, "bulk", "pushed");
                    self.settled(row).await?
                }
                Some(result) => {
                    self.count(row, "bulk", "refused");
                    self.failed(row, &result.error_text()).await?
                }
                None => {
                    self.count(row, "bulk", "refused");
                    self.failed(row, "CardTrader's bulk job reported nothing for this item")
                        .await?
                }
            }
        }
        Ok(())
    }

    /// A create. Before sending, the quantities of the seller's products of that blueprint are
    /// saved on the outbox row; an attempt that finds them there (the previous one may have sent
    /// the create and lost the answer, or died) decides from the export instead of sending again:
    /// the tag on a product means it was created, a product grown by exactly this quantity means
    /// CardTrader merged the create into it, nothing changed means it was not applied.
    async fn create(&self, row: &Pending) -> Result<(), JobFailure> {
        let Some(tag) = row.create_tag.as_deref() else {
            return self.failed(row, "a create without a tag").await;
        };
        let fields = &row.fields;
        let blueprint_id = fields["blueprint_id"].as_i64().unwrap_or_default();
        let quantity = fields["quantity"].as_i64().unwrap_or_default();
        let products = self.blueprint_products(blueprint_id).await?;
        if let Some(before) = fields.get("before").and_then(Value::as_object) {
            match decide_create(&products, before, tag, quantity) {
                CreateOutcome::Applied(product) => return self.adopt(row, product).await,
                CreateOutcome::NotApplied => {}
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
        self.save_before(row, &products).await?;
        let new = NewProduct {
            blueprint_id,
            price: cents_to_price(fields["price_cents"].as_i64().unwrap_or_default()),
            quantity,
            description: fields["description"].as_str().map(str::to_owned),
            user_data_field: Some(tag.to_owned()),
            properties: fields["properties"].as_object().cloned(),
            graded: fields["graded"].as_bool(),
        };
        let created = self
            .handler
            .accounts
            .marketplace()
            .create_product(self.credentials.seller(), self.options(), &new)
            .await;
        match created {
            Ok(resource) => {
                let products = self.blueprint_products(blueprint_id).await?;
                match products.iter().find(|product| product.id == resource.id) {
                    Some(product) => self.adopt(row, product).await,
                    None => Err(JobFailure::Transient(
                        "the created product is not in the export yet".into(),
                    )),
                }
            }
            // Unknown outcome or a passing failure: the next attempt decides from the export.
            Err(err) => self.refused_or_retry(row, err).await,
        }
    }

    async fn blueprint_products(&self, blueprint_id: i64) -> Result<Vec<Product>, JobFailure> {
        self.handler
            .accounts
            .marketplace()
            .export_products(
                self.credentials.seller(),
                self.options(),
                ExportFilter::Blueprint(blueprint_id),
            )
            .await
            .map_err(call_failure)
    }

    /// Saves what the blueprint's products held before the create is sent.
    async fn save_before(&self, row: &Pending, products: &[Product]) -> Result<(), JobFailure> {
        let before: serde_json::Map<String, Value> = products
            .iter()
            .map(|product| (product.id.to_string(), Value::from(product.quantity)))
            .collect();
        let mut unit = self.context.begin().await?;
        sqlx::query(
            "UPDATE inventory_pushes SET fields = fields || jsonb_build_object('before', $3::jsonb) \
             WHERE id = $1 AND version = $2",
        )
        .bind(row.id)
        .bind(row.version)
        .bind(Value::Object(before))
        .execute(&mut *unit)
        .await
        .map_err(transient)?;
        unit.commit().await?;
        Ok(())
    }

    /// Records the created product locally (CardTrader may have merged the create into an identical
    /// product the seller already had: its row then takes CardTrader's new quantity) and queues a
    /// targeted sync of the blueprint, which maps it to the shop's print.
    async fn adopt(&self, row: &Pending, product: &Product) -> Result<(), JobFailure> {
        let mut unit = self.context.begin().await?;
        let expansion_id = product
            .expansion
            .as_ref()
            .and_then(|expansion| expansion.get("id"))
            .and_then(Value::as_i64);
        sqlx::query(
            "INSERT INTO inventory_items (user_id, product_id, blueprint_id, expansion_id, name, \
                 quantity, price_cents, currency, properties, description, user_data_field, tag, graded) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT ON CONSTRAINT inventory_items_pkey DO UPDATE SET \
                 quantity = greatest(EXCLUDED.quantity, inventory_items.reserved_quantity), \
                 price_cents = EXCLUDED.price_cents, properties = EXCLUDED.properties, \
                 description = EXCLUDED.description, user_data_field = EXCLUDED.user_data_field, \
                 updated_at = now()",
        )
        .bind(self.user_id.as_uuid())
        .bind(product.id)
        .bind(product.blueprint_id)
        .bind(expansion_id)
        .bind(&product.name_en)
        .bind(i32::try_from(product.quantity).unwrap_or(i32::MAX))
        .bind(product.price_cents)
        .bind(&product.price_currency)
        .bind(Value::Object(product.properties_hash.clone()))
        .bind(&product.description)
        .bind(&product.user_data_field)
        .bind(&product.tag)
        .bind(product.graded)
        .execute(&mut *unit)
        .await
        .map_err(transient)?;
        sqlx::query(
            "UPDATE inventory_pushes SET state = 'done', product_id = $2, last_error = NULL, \
                 updated_at = now() WHERE id = $1",
        )
        .bind(row.id)
        .bind(product.id)
        .execute(&mut *unit)
        .await
        .map_err(transient)?;
        let scope = SyncScope::Targeted {
            blueprint_ids: vec![product.blueprint_id],
            expansion_ids: Vec::new(),
        };
        unit.enqueue(&NewJob::new(self.user_id, scope.job_kind()))
            .await?;
        unit.commit().await?;
        self.count(row, "single", "pushed");
        tracing::info!(product_id = product.id, "created on CardTrader");
        Ok(())
    }

    /// A push CardTrader refused for good marks the row failed; anything passing fails the attempt
    /// (the rows stay pending and the job retries with backoff).
    async fn refused_or_retry(
        &self,
        row: &Pending,
        err: MarketplaceError,
    ) -> Result<(), JobFailure> {
        if matches!(
            err,
            MarketplaceError::Validation { .. } | MarketplaceError::NotFound { .. }
        ) {
            self.count(row, "single", "refused");
        }
        match err {
            MarketplaceError::Validation {
                message, errors, ..
            } => {
                let detail = if errors.is_null() || errors == Value::Array(Vec::new()) {
                    message
                } else {
                    format!("{message} {errors}")
                };
                self.failed(row, &detail).await
            }
            MarketplaceError::NotFound { .. } => {
                self.failed(row, "the product no longer exists on CardTrader")
                    .await
            }
            other => Err(call_failure(other)),
        }
    }

    /// Clears the row if no edit came in since it was read; otherwise the newer edit stays pending.
    fn count(&self, row: &Pending, via: &str, outcome: &str) {
        self.handler
            .metrics
            .inventory_pushes
            .with_label_values(&[row.op.as_str(), via, outcome])
            .inc();
    }

    async fn settled(&self, row: &Pending) -> Result<(), JobFailure> {
        let mut unit = self.context.begin().await?;
        sqlx::query("DELETE FROM inventory_pushes WHERE id = $1 AND version = $2")
            .bind(row.id)
            .bind(row.version)
            .execute(&mut *unit)
            .await
            .map_err(transient)?;
        unit.commit().await?;
        Ok(())
    }

    async fn failed(&self, row: &Pending, reason: &str) -> Result<(), JobFailure> {
        tracing::warn!(push_id = %row.id, product_id = ?row.product_id, reason, "CardTrader refused a push");
        let mut unit = self.context.begin().await?;
        sqlx::query(
            "UPDATE inventory_pushes SET state = 'failed', last_error = $3, updated_at = now() \
             WHERE id = $1 AND version = $2",
        )
        .bind(row.id)
        .bind(row.version)
        .bind(reason)
        .execute(&mut *unit)
        .await
        .map_err(transient)?;
        unit.commit().await?;
        Ok(())
    }
}

/// What the export says about a create that may have been sent.
#[derive(Debug, PartialEq)]
enum CreateOutcome<'a> {
    /// Created (the tag is on it) or merged (it grew by exactly the create's quantity).
    Applied(&'a Product),
    /// Nothing changed: safe to send.
    NotApplied,
    /// Quantities moved by other amounts: sending could list the units twice.
    Unknown,
}

fn decide_create<'a>(
    products: &'a [Product],
    before: &serde_json::Map<String, Value>,
    tag: &str,
    quantity: i64,
) -> CreateOutcome<'a> {
    if let Some(tagged) = products
        .iter()
        .find(|product| product.user_data_field.as_deref() == Some(tag))
    {
        return CreateOutcome::Applied(tagged);
    }
    let was = |product: &Product| before.get(&product.id.to_string()).and_then(Value::as_i64);
    if let Some(merged) = products
        .iter()
        .find(|product| was(product).is_some_and(|was| product.quantity == was + quantity))
    {
        return CreateOutcome::Applied(merged);
    }
    let unchanged = products
        .iter()
        .all(|product| was(product) == Some(product.quantity))
        && products.len() == before.len();
    if unchanged {
        CreateOutcome::NotApplied
    } else {
        CreateOutcome::Unknown
    }
}

/// CardTrader takes prices in major units on writes.
fn cents_to_price(cents: i64) -> f64 {
    cents as f64 / 100.0
}

fn transient(err: sqlx::Error) -> JobFailure {
    JobFailure::Transient(err.to_string())
}

fn call_failure(err: MarketplaceError) -> JobFailure {
    match err {
        MarketplaceError::RateLimited { retry_after, .. } => {
            JobFailure::RateLimited { wait: retry_after }
        }
        MarketplaceError::Unauthorized => {
            JobFailure::Permanent("CardTrader rejected the seller's token".into())
        }
        MarketplaceError::Cancelled => JobFailure::LeaseLost,
        other => JobFailure::Transient(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: i64, quantity: i64, tag: Option<&str>) -> Product {
        serde_json::from_value(serde_json::json!({
            "id": id, "blueprint_id": 7, "quantity": quantity, "price_cents": 100,
            "price_currency": "EUR", "user_data_field": tag,
        }))
        .unwrap()
    }

    fn before(pairs: &[(i64, i64)]) -> serde_json::Map<String, Value> {
        pairs
            .iter()
            .map(|(id, quantity)| (id.to_string(), Value::from(*quantity)))
            .collect()
    }

    #[test]
    fn a_create_is_decided_by_its_tag_a_merge_or_nothing_changed() {
        let tagged = [product(1, 4, None), product(2, 3, Some("t"))];
        assert_eq!(
            decide_create(&tagged, &before(&[(1, 4)]), "t", 3),
            CreateOutcome::Applied(&tagged[1])
        );
        let merged = [product(1, 7, None)];
        assert_eq!(
            decide_create(&merged, &before(&[(1, 4)]), "t", 3),
            CreateOutcome::Applied(&merged[0])
        );
        let untouched = [product(1, 4, None)];
        assert_eq!(
            decide_create(&untouched, &before(&[(1, 4)]), "t", 3),
            CreateOutcome::NotApplied
        );
        let sold_meanwhile = [product(1, 2, None)];
        assert_eq!(
            decide_create(&sold_meanwhile, &before(&[(1, 4)]), "t", 3),
            CreateOutcome::Unknown
        );
    }

    #[test]
    fn prices_are_sent_in_major_units() {
        assert_eq!(cents_to_price(1_234), 12.34);
        assert_eq!(cents_to_price(0), 0.0);
    }
}
