//! The sync job: stream the seller's export, resolve each chunk's blueprints in one batch, write the
//! chunk as one transaction, and, once every chunk is in, sweep what CardTrader no longer lists. A
//! failed or cancelled sync sweeps nothing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::{
    chunk::{ChunkError, write_chunk},
    store::{self, SweepScope, SyncRow},
};
use crate::{
    accounts::{AccountError, Accounts},
    blueprints::{BlueprintCatalog, Resolution},
    domain::{BlueprintId, UserId},
    jobs::worker::{JobContext, JobFailure, JobHandler},
    marketplace::{CallOptions, ExportFilter, MarketplaceError, types::Product},
    metrics::Metrics,
};

/// Job kind of a full sync (bulk lane).
pub const KIND_FULL: &str = "sync_full";
/// Job kind of a sync of listed blueprints or expansions (interactive lane).
pub const KIND_TARGETED: &str = "sync_targeted";

/// What a sync covers, as stored in the job's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum SyncScope {
    /// The whole inventory.
    #[default]
    Full,
    /// One blueprint.
    Blueprint {
        /// Its id.
        blueprint_id: i64,
    },
    /// One expansion.
    Expansion {
        /// Its id.
        expansion_id: i64,
    },
}

/// Progress counters, stored on the job in the same transaction as each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncProgress {
    /// Chunks written.
    pub chunks_done: u64,
    /// Products read from the export.
    pub products_seen: u64,
    /// Rows inserted or changed.
    pub written: u64,
    /// Rows already up to date.
    pub unchanged: u64,
    /// Rows swept because CardTrader no longer lists them.
    pub deleted: u64,
    /// Products stored without a shop print.
    pub unmapped: u64,
}

/// Tuning of the sync.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Products per chunk transaction.
    pub chunk_size: usize,
    /// `SET LOCAL statement_timeout` of each chunk transaction.
    pub statement_timeout: Duration,
    /// Rows per sweep DELETE.
    pub sweep_batch: i64,
    /// How long the export may take, rate-limit waits included.
    pub export_budget: Duration,
}

/// Runs sync jobs.
#[derive(Debug, Clone)]
pub struct SyncHandler {
    /// The job kind this instance runs.
    pub kind: &'static str,
    /// PostgreSQL.
    pub pool: PgPool,
    /// Sellers' credentials.
    pub accounts: Accounts,
    /// Blueprint → print.
    pub catalog: BlueprintCatalog,
    /// Metric handles.
    pub metrics: Metrics,
    /// Tuning.
    pub settings: SyncSettings,
}

#[tonic::async_trait]
impl JobHandler for SyncHandler {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn run(&self, context: JobContext) -> Result<(), JobFailure> {
        let job_id = context.lease.job.id;
        let result = self.sync(&context).await;
        // The seen-set only matters to this attempt's sweep; a retry starts a new one.
        if let Err(error) = store::forget_seen(&self.pool, job_id).await {
            tracing::warn!(%error, "could not drop the sync's seen-set");
        }
        result
    }
}

impl SyncSettings {
    /// From `BRX_SYNC_*`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            chunk_size: config.sync_chunk_size as usize,
            statement_timeout: config.sync_statement_timeout,
            sweep_batch: 5_000,
            export_budget: config.cardtrader_export_timeout * 2,
        }
    }
}

impl SyncHandler {
    async fn sync(&self, context: &JobContext) -> Result<(), JobFailure> {
        let user_id = context.lease.job.user_id;
        let scope: SyncScope =
            serde_json::from_value(context.lease.job.payload.clone()).unwrap_or_default();
        let credentials = self
            .accounts
            .credentials(user_id)
            .await
            .map_err(account_failure)?;
        let filter = match scope {
            SyncScope::Full => ExportFilter::All,
            SyncScope::Blueprint { blueprint_id } => ExportFilter::Blueprint(blueprint_id),
            SyncScope::Expansion { expansion_id } => ExportFilter::Expansion(expansion_id),
        };
        let export = self
            .accounts
            .marketplace()
            .export_stream(
                credentials.seller(),
                CallOptions::bulk(self.settings.export_budget),
                filter,
            )
            .await;
        let export = match export {
            Ok(export) => export,
            Err(error) => return Err(self.marketplace_failure(user_id, error).await),
        };
        let mut export = std::pin::pin!(export);
        let mut progress = SyncProgress::default();
        let mut chunk = Vec::with_capacity(self.settings.chunk_size);
        while let Some(product) = export.next().await {
            chunk.push(product.map_err(|err| JobFailure::Transient(err.to_string()))?);
            if chunk.len() == self.settings.chunk_size {
                self.flush(context, &mut chunk, &mut progress).await?;
                if let Some(stop) = context.should_stop() {
                    return Err(stop);
                }
            }
        }
        if !chunk.is_empty() {
            self.flush(context, &mut chunk, &mut progress).await?;
        }
        let sweep_scope = match scope {
            SyncScope::Full => SweepScope::All,
            SyncScope::Blueprint { blueprint_id } => SweepScope::Blueprint(blueprint_id),
            SyncScope::Expansion { expansion_id } => SweepScope::Expansion(expansion_id),
        };
        progress.deleted = store::sweep(
            &self.pool,
            user_id,
            context.lease.job.id,
            sweep_scope,
            self.settings.sweep_batch,
        )
        .await
        .map_err(|err| JobFailure::Transient(err.to_string()))?;
        crate::jobs::store::record_progress(&self.pool, &context.lease, &json(&progress))
            .await
            .map_err(|err| JobFailure::Transient(err.to_string()))?;
        if scope == SyncScope::Full {
            self.accounts
                .record_sync(user_id)
                .await
                .map_err(account_failure)?;
        }
        tracing::info!(?progress, "sync finished");
        Ok(())
    }

    /// Maps one chunk's blueprints and writes it with the progress it completes.
    async fn flush(
        &self,
        context: &JobContext,
        chunk: &mut Vec<Product>,
        progress: &mut SyncProgress,
    ) -> Result<(), JobFailure> {
        let user_id = context.lease.job.user_id;
        let mut rows = self.rows(user_id, chunk).await?;
        let unmapped = rows.iter().filter(|row| row.print.is_none()).count() as u64;
        let mut next = *progress;
        next.chunks_done += 1;
        next.products_seen += rows.len() as u64;
        next.unmapped += unmapped;
        let outcome = write_chunk(
            &self.pool,
            &context.lease,
            user_id,
            &mut rows,
            &json(&next),
            self.settings.statement_timeout,
            &self.metrics,
        )
        .await
        .map_err(|err| match err {
            ChunkError::LeaseLost => JobFailure::Transient("lease lost".into()),
            ChunkError::Database(err) => JobFailure::Transient(err.to_string()),
        })?;
        next.written += outcome.written;
        next.unchanged += outcome.unchanged;
        *progress = next;
        chunk.clear();
        Ok(())
    }

    /// Products → rows, with prints from one batched catalogue lookup. A blueprint the catalogue
    /// cannot answer right now keeps the print already stored for that product.
    async fn rows(&self, user_id: UserId, chunk: &[Product]) -> Result<Vec<SyncRow>, JobFailure> {
        let ids: Vec<BlueprintId> = chunk
            .iter()
            .filter_map(|p| BlueprintId::new(p.blueprint_id).ok())
            .collect();
        let resolutions = self
            .catalog
            .resolve_many(&ids, Instant::now() + Duration::from_secs(30))
            .await;
        let unknown: Vec<i64> = chunk
            .iter()
            .filter(|p| {
                BlueprintId::new(p.blueprint_id)
                    .ok()
                    .and_then(|id| resolutions.get(&id))
                    == Some(&Resolution::Unknown)
            })
            .map(|p| p.id)
            .collect();
        let mut kept = std::collections::HashMap::new();
        if !unknown.is_empty() {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|err| JobFailure::Transient(err.to_string()))?;
            for (product_id, print_id, table) in store::stored_prints(&mut conn, user_id, &unknown)
                .await
                .map_err(|err| JobFailure::Transient(err.to_string()))?
            {
                if let (Some(print_id), Some(table)) = (print_id, table) {
                    kept.insert(product_id, (print_id, table));
                }
            }
        }
        Ok(chunk
            .iter()
            .map(|product| {
                let print = match BlueprintId::new(product.blueprint_id)
                    .ok()
                    .and_then(|id| resolutions.get(&id))
                {
                    Some(Resolution::Mapped(print)) => {
                        Some((print.print_id, print.table.to_string()))
                    }
                    Some(Resolution::Unknown) => kept.get(&product.id).cloned(),
                    _ => None,
                };
                row(product, print)
            })
            .collect())
    }

    async fn marketplace_failure(&self, user_id: UserId, error: MarketplaceError) -> JobFailure {
        if let Err(err) = self.accounts.note_cardtrader_error(user_id, &error).await {
            tracing::warn!(error = %err, "could not record the CardTrader error on the account");
        }
        match error {
            MarketplaceError::Unauthorized => {
                JobFailure::Permanent("CardTrader rejected the seller's token".into())
            }
            MarketplaceError::RateLimited { retry_after, .. } => {
                JobFailure::RateLimited { wait: retry_after }
            }
            other => JobFailure::Transient(other.to_string()),
        }
    }
}

fn row(product: &Product, print: Option<(i64, String)>) -> SyncRow {
    SyncRow {
        product_id: product.id,
        blueprint_id: product.blueprint_id,
        expansion_id: product
            .expansion
            .as_ref()
            .and_then(|e| e.get("id"))
            .and_then(serde_json::Value::as_i64),
        print,
        name: product.name_en.clone(),
        quantity: i32::try_from(product.quantity).unwrap_or(i32::MAX).max(0),
        price_cents: product.price_cents.max(0),
        currency: product.price_currency.clone(),
        properties: serde_json::Value::Object(product.properties_hash.clone()),
        description: product.description.clone(),
        user_data_field: product.user_data_field.clone(),
        tag: product.tag.clone(),
        graded: product.graded,
    }
}

fn json(progress: &SyncProgress) -> serde_json::Value {
    serde_json::to_value(progress).unwrap_or_default()
}

fn account_failure(error: AccountError) -> JobFailure {
    match error {
        AccountError::NotFound
        | AccountError::NotConnected(_)
        | AccountError::EncryptionNotConfigured => JobFailure::Permanent(error.to_string()),
        other => JobFailure::Transient(other.to_string()),
    }
}
