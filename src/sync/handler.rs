//! The sync job: stream the seller's export, cut it into chunks, and keep a few chunks in flight, each
//! mapped through the catalogue in one batch and written as one transaction; once every chunk is in,
//! sweep what CardTrader no longer lists. A failed or cancelled sync sweeps nothing.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt, TryStreamExt, stream::TryChunksError};
use roaring::RoaringTreemap;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::{
    chunk::{ChunkError, ChunkTarget, write_chunk},
    expansions::ExpansionFill,
    scope::{SyncProgress, SyncScope},
    store::{self, SweepScope, SweepSettings, SyncRow},
    upsert,
};
use crate::{
    accounts::{AccountError, Accounts},
    blueprints::{BlueprintCatalog, Resolution},
    config::{CardTraderConfig, SyncConfig},
    domain::BlueprintId,
    jobs::{
        JobContext, JobError, KindName,
        worker::{JobFailure, JobHandler},
    },
    marketplace::{CallOptions, MarketplaceError, Seller, export::ExportError, types::Product},
    metrics::Metrics,
};

/// How long a chunk's catalogue lookup may take before unanswered blueprints count as unknown.
const CATALOG_BUDGET: Duration = Duration::from_secs(30);

/// Mapped chunks waiting for the writer while it holds a chunk transaction.
const MAPPED_AHEAD: usize = 2;

/// How often the progress of chunks that needed no transaction is written to the job (and a
/// cancellation looked for) while nothing else writes it.
const UNCHANGED_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One chunk of the export, mapped: the rows to write, and what the rows found unchanged add.
#[derive(Debug)]
struct MappedChunk {
    product_ids: Vec<i64>,
    changed: Vec<SyncRow>,
    unchanged: SyncProgress,
}

/// What one chunk did, whether or not it needed a transaction.
#[derive(Debug)]
struct WrittenChunk {
    /// Counters of all of its rows.
    progress: SyncProgress,
    /// Read in its transaction.
    cancel_requested: bool,
    /// No transaction: `progress` is not on the job row yet.
    skipped: bool,
}

/// Tuning of the sync.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Products per chunk transaction.
    pub chunk_size: usize,
    /// Chunks of one sync mapped or written at once.
    pub chunks_in_flight: usize,
    /// `SET LOCAL statement_timeout` of each chunk transaction.
    pub statement_timeout: Duration,
    /// Rows per sweep DELETE.
    pub sweep_batch: i64,
    /// How long the export may take, rate-limit waits included.
    pub export_budget: Duration,
}

impl SyncSettings {
    /// From `BRX_SYNC_*`, and the export timeout of `BRX_CARDTRADER_*`.
    pub fn from_config(sync: &SyncConfig, cardtrader: &CardTraderConfig) -> Self {
        Self {
            chunk_size: sync.chunk_size as usize,
            chunks_in_flight: chunks_in_flight(sync.chunks_in_flight),
            statement_timeout: sync.statement_timeout,
            sweep_batch: 20_000,
            export_budget: cardtrader.export_timeout * 2,
        }
    }
}

/// `BRX_SYNC_CHUNKS_IN_FLIGHT`, with 0 resolved for this machine. Measured with `brx-sync loadtest
/// --scenario isolation` on 2 cores: a second chunk in flight left the import's throughput unchanged
/// but raised GetSyncStatus p99 from ~2x to ~5x its idle value.
fn chunks_in_flight(configured: u32) -> usize {
    match configured {
        0 => {
            let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
            if cores <= 2 { 1 } else { 2 }
        }
        chunks => chunks as usize,
    }
}

/// Runs sync jobs.
#[derive(Debug, Clone)]
pub struct SyncHandler {
    /// The job kind this instance runs.
    pub kind: KindName,
    /// Sellers' credentials.
    pub accounts: Accounts,
    /// Blueprint → print.
    pub catalog: BlueprintCatalog,
    /// Metric handles.
    pub metrics: Metrics,
    /// Chunk transactions open at once, shared by every sync handler of the replica.
    pub writers: Arc<Semaphore>,
    /// Tuning.
    pub settings: SyncSettings,
}

/// Why a sync attempt stopped early: a job outcome, or a CardTrader error still to be classified
/// (which needs the account to be told).
#[derive(Debug)]
enum Stop {
    Job(JobFailure),
    Marketplace(MarketplaceError),
}

impl From<JobFailure> for Stop {
    fn from(failure: JobFailure) -> Self {
        Stop::Job(failure)
    }
}

#[tonic::async_trait]
impl JobHandler for SyncHandler {
    fn kind(&self) -> KindName {
        self.kind
    }

    async fn run(&self, context: &JobContext) -> Result<(), JobFailure> {
        match self.sync(context).await {
            Ok(()) => Ok(()),
            Err(Stop::Job(failure)) => Err(failure),
            Err(Stop::Marketplace(error)) => Err(self.marketplace_failure(context, error).await),
        }
    }
}

impl SyncHandler {
    async fn sync(&self, context: &JobContext) -> Result<(), Stop> {
        let user_id = context.user_id();
        let scope = SyncScope::of_job(context.kind())
            .ok_or_else(|| JobFailure::Permanent("not a sync job".into()))?;
        let credentials = self
            .accounts
            .credentials(user_id)
            .await
            .map_err(account_failure)?;
        let sweep_scope = sweep_scope(&scope);
        let (stored, read_since) = {
            let mut read = context.read().await.map_err(JobFailure::from)?;
            let stored = store::count_in_scope(&mut read, user_id, sweep_scope)
                .await
                .map_err(transient)?;
            // Database time, like the rows' `updated_at`: a row changed after this keeps its
            // quantity (the export may predate the change) and is not swept.
            let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
                .fetch_one(&mut *read)
                .await
                .map_err(transient)?;
            (stored, now)
        };
        // This attempt starts from zero, whatever an earlier (failed or taken-over) attempt counted.
        let mut progress = SyncProgress {
            chunks_total: stored.div_ceil(self.settings.chunk_size as u64),
            ..SyncProgress::default()
        };
        context
            .record_progress(&progress.to_json())
            .await
            .map_err(JobFailure::from)?;

        let options = match scope {
            SyncScope::Full => CallOptions::bulk(self.settings.export_budget),
            SyncScope::Targeted { .. } => CallOptions::interactive(self.settings.export_budget),
        }
        // Everything a sync sends CardTrader is a read: a stopping worker abandons it.
        .stopped_by(context.read_stop_token());
        let expansions = Arc::new(ExpansionFill::new(
            &self.catalog,
            self.accounts.marketplace(),
            credentials.seller(),
            options.clone(),
            context,
        ));
        let products = self
            .export(credentials.seller(), &scope, options)
            .try_chunks(self.settings.chunk_size)
            .map_err(|TryChunksError(_, stop)| stop)
            .and_then(move |products| {
                // Owned, not borrowed: a future borrowing a local here trips rustc's higher-ranked
                // `Send` check of the job's future.
                let expansions = expansions.clone();
                async move { expansions.fill(products).await.map_err(Stop::Job) }
            });
        // Rows stored before this sync may already hold what the export says: those chunks are
        // compared first and written only where they differ. A first import has nothing to compare.
        let compare = stored > 0;
        let seen = self
            .map_and_write(context, products, compare, read_since, &mut progress)
            .await?;
        progress.chunks_total = progress.chunks_done;
        let sweep = SweepSettings {
            batch: self.settings.sweep_batch,
            statement_timeout: self.settings.statement_timeout,
        };
        progress.deleted = store::sweep(
            context,
            sweep_scope,
            &seen,
            sweep,
            read_since,
            &self.metrics,
        )
        .await
        .map_err(chunk_failure)?;
        self.metrics
            .sync_rows
            .with_label_values(&["deleted"])
            .inc_by(progress.deleted);
        let mut unit = context.begin().await.map_err(JobFailure::from)?;
        unit.record_progress(&progress.to_json())
            .await
            .map_err(JobFailure::from)?;
        if scope == SyncScope::Full {
            self.accounts
                .record_sync(&mut unit, user_id)
                .await
                .map_err(account_failure)?;
        }
        unit.commit().await.map_err(JobFailure::from)?;
        self.refresh_statistics(context, progress.written + progress.deleted)
            .await;
        tracing::info!(
            products_seen = progress.products_seen,
            written = progress.written,
            unchanged = progress.unchanged,
            deleted = progress.deleted,
            unmapped = progress.unmapped,
            chunks = progress.chunks_done,
            "sync finished"
        );
        Ok(())
    }

    /// Refreshes the items' statistics after a sync that changed a large share of them, so the
    /// pages read right after a bulk load are planned on what the table now holds. Best effort: the
    /// sync is done, and autovacuum analyzes later where it runs.
    async fn refresh_statistics(&self, context: &JobContext, changed: u64) {
        let refresh = async {
            let mut unit = context.begin().await?;
            let statement_timeout = self.settings.statement_timeout;
            let analyzed = store::refresh_statistics(&mut unit, changed, statement_timeout).await?;
            unit.commit().await?;
            Ok::<_, JobError>(analyzed)
        };
        match refresh.await {
            Ok(true) => tracing::info!(changed, "refreshed the inventory's statistics"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, changed, "could not refresh the inventory's statistics")
            }
        }
    }

    /// The products of `scope`, one export call after another.
    fn export<'a>(
        &'a self,
        seller: Seller<'a>,
        scope: &SyncScope,
        options: CallOptions,
    ) -> impl Stream<Item = Result<Product, Stop>> + 'a {
        let marketplace = self.accounts.marketplace();
        futures::stream::iter(scope.export_filters())
            .then(move |filter| marketplace.export_stream(seller, options.clone(), filter))
            .map_err(Stop::Marketplace)
            .map_ok(|products| products.map_err(|err| Stop::Job(export_failure(err))))
            .try_flatten()
    }

    /// Maps the export's chunks and writes them, two stages running at once: while the writer holds a
    /// chunk transaction, the next chunks are read, mapped through the catalogue and compared with
    /// what is stored (at most [`MAPPED_AHEAD`] of them wait for the writer). Returns the product ids
    /// the export listed, with `progress` counting what every chunk did.
    async fn map_and_write(
        &self,
        context: &JobContext,
        chunks: impl Stream<Item = Result<Vec<Product>, Stop>>,
        compare: bool,
        read_since: chrono::DateTime<chrono::Utc>,
        progress: &mut SyncProgress,
    ) -> Result<RoaringTreemap, Stop> {
        let (mapped_tx, mapped_rx) = tokio::sync::mpsc::channel::<MappedChunk>(MAPPED_AHEAD);
        let map_stage = async move {
            let mut chunks = std::pin::pin!(chunks);
            while let Some(products) = chunks.try_next().await? {
                let chunk = self.map_chunk(context, products, compare).await?;
                if mapped_tx.send(chunk).await.is_err() {
                    // The writer stopped; its error is the sync's.
                    break;
                }
            }
            Ok::<(), Stop>(())
        };
        let write_stage = async {
            // Memory stays bounded: at most `chunks_in_flight` chunks are being written, MAPPED_AHEAD
            // wait, and one more is being read and mapped.
            let mut written = std::pin::pin!(
                tokio_stream::wrappers::ReceiverStream::new(mapped_rx)
                    .map(|chunk| self.write(context, chunk, read_since))
                    .buffer_unordered(self.settings.chunks_in_flight)
            );
            // The product ids this attempt's export listed: what the sweep keeps. Per attempt and in
            // memory, because an attempt is never resumed (a takeover re-reads the export), and a
            // compressed bitmap holds a million ids in a few hundred kilobytes.
            let mut seen = RoaringTreemap::new();
            // What chunks that needed no transaction did, not yet on the job row.
            let mut unrecorded = SyncProgress::default();
            let mut recorded_at = Instant::now();
            while let Some((chunk, product_ids)) = written.try_next().await? {
                seen.extend(product_ids.into_iter().map(store::seen_key));
                progress.add(&chunk.progress);
                crate::failpoint::pause("sync.after_chunk").await;
                let mut cancel_requested = chunk.cancel_requested;
                if chunk.skipped {
                    unrecorded.add(&chunk.progress);
                    if recorded_at.elapsed() >= UNCHANGED_PROGRESS_EVERY {
                        cancel_requested = self.add_progress(context, &unrecorded).await?;
                        unrecorded = SyncProgress::default();
                        recorded_at = Instant::now();
                    }
                }
                if cancel_requested {
                    return Err(JobFailure::Cancelled.into());
                }
                if let Some(stop) = context.should_stop() {
                    return Err(stop.into());
                }
            }
            Ok(seen)
        };
        let ((), seen) = tokio::try_join!(map_stage, write_stage)?;
        Ok(seen)
    }

    /// One chunk's products as rows, and, when `compare`, which of them differ from what is stored:
    /// a chunk where none does needs no transaction.
    async fn map_chunk(
        &self,
        context: &JobContext,
        products: Vec<Product>,
        compare: bool,
    ) -> Result<MappedChunk, Stop> {
        let rows = self.rows(context, &products).await?;
        let product_ids: Vec<i64> = products.iter().map(|product| product.id).collect();
        drop(products);
        if !compare {
            return Ok(MappedChunk {
                product_ids,
                changed: rows,
                unchanged: SyncProgress::default(),
            });
        }
        let stale = {
            let mut read = context.read().await.map_err(JobFailure::from)?;
            upsert::stale_rows(&mut read, context.user_id(), &rows)
                .await
                .map_err(transient)?
        };
        let (changed, same): (Vec<SyncRow>, Vec<SyncRow>) = rows
            .into_iter()
            .partition(|row| stale.contains(&row.product_id));
        let unchanged = SyncProgress {
            products_seen: same.len() as u64,
            unchanged: same.len() as u64,
            unmapped: same.iter().filter(|row| row.print.is_none()).count() as u64,
            ..SyncProgress::default()
        };
        Ok(MappedChunk {
            product_ids,
            changed,
            unchanged,
        })
    }

    /// Adds progress that no chunk transaction carried (fenced, like every write of the job);
    /// whether a cancellation was requested.
    async fn add_progress(
        &self,
        context: &JobContext,
        progress: &SyncProgress,
    ) -> Result<bool, Stop> {
        let mut unit = context.begin().await.map_err(JobFailure::from)?;
        let cancel_requested = unit
            .add_progress(&progress.to_json())
            .await
            .map_err(JobFailure::from)?;
        unit.commit().await.map_err(JobFailure::from)?;
        context.announce();
        Ok(cancel_requested)
    }

    /// Writes the changed rows of one chunk with the progress they add, in one chunk transaction;
    /// a chunk without changed rows opens none. Returns what it did and the product ids it holds.
    async fn write(
        &self,
        context: &JobContext,
        chunk: MappedChunk,
        read_since: chrono::DateTime<chrono::Utc>,
    ) -> Result<(WrittenChunk, Vec<i64>), Stop> {
        // Lets a test change rows between the export's reading and this chunk's write.
        crate::failpoint::pause("sync.before_chunk_write").await;
        let MappedChunk {
            product_ids,
            changed,
            unchanged,
        } = chunk;
        self.count_unchanged(&unchanged);
        if changed.is_empty() {
            let progress = SyncProgress {
                chunks_done: 1,
                ..unchanged
            };
            let skipped = WrittenChunk {
                progress,
                cancel_requested: false,
                skipped: true,
            };
            return Ok((skipped, product_ids));
        }
        let rows = changed;
        let target = ChunkTarget {
            job: context,
            writers: &self.writers,
            statement_timeout: self.settings.statement_timeout,
            read_since,
        };
        let span = tracing::info_span!("sync.chunk", rows = rows.len());
        let outcome = write_chunk(target, context.user_id(), rows, &self.metrics)
            .instrument(span)
            .await
            .map_err(chunk_failure)?;
        context.announce();
        let mut progress = outcome.progress;
        progress.add(&unchanged);
        let written = WrittenChunk {
            progress,
            cancel_requested: outcome.cancel_requested,
            skipped: false,
        };
        Ok((written, product_ids))
    }

    /// The rows metrics of rows found unchanged before any transaction (`write_chunk` counts the
    /// rows it is given).
    fn count_unchanged(&self, unchanged: &SyncProgress) {
        let rows = &self.metrics.sync_rows;
        rows.with_label_values(&["unchanged"])
            .inc_by(unchanged.unchanged);
        rows.with_label_values(&["unmapped"])
            .inc_by(unchanged.unmapped);
    }

    /// Products → rows, with prints from one batched catalogue lookup. A blueprint the catalogue
    /// cannot answer right now keeps the print already stored for that product, or is marked
    /// unknown (a remap is owed once the catalogue answers again).
    async fn rows(
        &self,
        context: &JobContext,
        chunk: &[Product],
    ) -> Result<Vec<SyncRow>, JobFailure> {
        let ids: Vec<BlueprintId> = chunk
            .iter()
            .filter_map(|p| BlueprintId::new(p.blueprint_id).ok())
            .collect();
        let resolutions = self
            .catalog
            .resolve_many(&ids, Instant::now() + CATALOG_BUDGET)
            .await;
        let resolution = |product: &Product| {
            BlueprintId::new(product.blueprint_id)
                .ok()
                .and_then(|id| resolutions.get(&id))
        };
        let unknown: Vec<i64> = chunk
            .iter()
            .filter(|product| resolution(product) == Some(&Resolution::Unknown))
            .map(|product| product.id)
            .collect();
        let kept = stored_prints(context, &unknown).await?;
        Ok(chunk
            .iter()
            .map(|product| {
                let print = match resolution(product) {
                    Some(Resolution::Mapped(print)) => {
                        Some((print.print_id, print.table.to_string()))
                    }
                    Some(Resolution::Unknown) => kept.get(&product.id).cloned(),
                    _ => None,
                };
                let unknown = print.is_none() && resolution(product) == Some(&Resolution::Unknown);
                row(product, print, unknown)
            })
            .collect())
    }

    async fn marketplace_failure(
        &self,
        context: &JobContext,
        error: MarketplaceError,
    ) -> JobFailure {
        if let Err(err) = self.note_on_account(context, &error).await {
            tracing::warn!(error = %err, "could not record the CardTrader error on the account");
        }
        match error {
            MarketplaceError::Unauthorized => {
                JobFailure::Permanent("CardTrader rejected the seller's token".into())
            }
            MarketplaceError::RateLimited { retry_after, .. } => {
                JobFailure::RateLimited { wait: retry_after }
            }
            MarketplaceError::Cancelled => context.should_stop().unwrap_or(JobFailure::LeaseLost),
            other => JobFailure::Transient(other.to_string()),
        }
    }

    /// A 401 marks the account `token_invalid`, in a unit of work of the job.
    async fn note_on_account(
        &self,
        context: &JobContext,
        error: &MarketplaceError,
    ) -> Result<(), String> {
        if !matches!(error, MarketplaceError::Unauthorized) {
            return Ok(());
        }
        let mut unit = context.begin().await.map_err(|err| err.to_string())?;
        self.accounts
            .note_cardtrader_error(&mut unit, context.user_id(), error)
            .await
            .map_err(|err| err.to_string())?;
        unit.commit().await.map_err(|err| err.to_string())
    }
}

/// The mappings already stored for these products, to keep them when the catalogue cannot be asked.
async fn stored_prints(
    context: &JobContext,
    product_ids: &[i64],
) -> Result<HashMap<i64, (i64, String)>, JobFailure> {
    if product_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut read = context.read().await.map_err(JobFailure::from)?;
    let stored = store::stored_prints(&mut read, context.user_id(), product_ids)
        .await
        .map_err(transient)?;
    Ok(stored
        .into_iter()
        .filter_map(|(product_id, print_id, table)| Some((product_id, (print_id?, table?))))
        .collect())
}

fn chunk_failure(error: ChunkError) -> JobFailure {
    match error {
        ChunkError::LeaseLost => JobFailure::LeaseLost,
        ChunkError::Database(err) => transient(err),
    }
}

/// A product past the size bound stays past it however often the export is read again: the sync
/// fails for good, naming the setting, until the seller shrinks the product or an operator raises
/// `BRX_SYNC_MAX_PRODUCT_BYTES`. Anything else about the stream may go better next time.
fn export_failure(error: ExportError) -> JobFailure {
    match error {
        ExportError::ProductTooLarge { .. } => JobFailure::Permanent(error.to_string()),
        // The lease was lost or the worker is stopping; the worker settles by its own flags.
        ExportError::Stopped => JobFailure::Interrupted,
        other => transient(other),
    }
}

fn sweep_scope(scope: &SyncScope) -> SweepScope<'_> {
    match scope {
        SyncScope::Full => SweepScope::All,
        SyncScope::Targeted {
            blueprint_ids,
            expansion_ids,
        } => SweepScope::Targeted {
            blueprint_ids,
            expansion_ids,
        },
    }
}

fn row(product: &Product, print: Option<(i64, String)>, print_unknown: bool) -> SyncRow {
    SyncRow {
        product_id: product.id,
        blueprint_id: product.blueprint_id,
        expansion_id: product.expansion_id(),
        print,
        print_unknown,
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

fn transient(error: impl std::fmt::Display) -> JobFailure {
    JobFailure::Transient(error.to_string())
}

fn account_failure(error: AccountError) -> JobFailure {
    match error {
        AccountError::NotFound
        | AccountError::NotConnected(_)
        | AccountError::EncryptionNotConfigured => JobFailure::Permanent(error.to_string()),
        other => transient(other),
    }
}
