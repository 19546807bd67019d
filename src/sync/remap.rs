//! The remap job: fills the print of a seller's rows stored unmapped once the catalogue knows their
//! blueprints, and settles rows stored while the catalogue could not be asked. Queued for every seller
//! concerned when blueprints are invalidated (the catalogue gained prints) and when the catalogue is
//! back after an outage ([`super::unknown_prints`]); a full sync maps them too.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::{
    blueprints::{BlueprintCatalog, Resolution},
    domain::BlueprintId,
    jobs::{
        JobError, Lane, store as jobs,
        worker::{JobContext, JobFailure, JobHandler},
    },
};

/// Job kind of a remap (bulk lane: nobody waits on it).
pub const KIND_REMAP: &str = "remap_unmapped";

/// Blueprints looked up and rows updated per transaction.
const BATCH: usize = 5_000;
/// Budget of one batch's catalogue lookup.
const CATALOG_BUDGET: Duration = Duration::from_secs(30);

/// Runs remap jobs.
#[derive(Debug, Clone)]
pub struct RemapHandler {
    /// PostgreSQL.
    pub pool: PgPool,
    /// Blueprint → print.
    pub catalog: BlueprintCatalog,
}

#[tonic::async_trait]
impl JobHandler for RemapHandler {
    fn kind(&self) -> &'static str {
        KIND_REMAP
    }

    async fn run(&self, context: JobContext) -> Result<(), JobFailure> {
        let user_id = context.lease.job.user_id;
        let blueprints: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT blueprint_id FROM inventory_items \
             WHERE user_id = $1 AND print_id IS NULL ORDER BY blueprint_id",
        )
        .bind(user_id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(transient)?;
        let mut mapped_rows = 0;
        for batch in blueprints.chunks(BATCH) {
            mapped_rows += self.remap(&context, batch).await?;
            if let Some(stop) = context.should_stop() {
                return Err(stop);
            }
        }
        let progress =
            serde_json::json!({"blueprints": blueprints.len(), "rows_mapped": mapped_rows});
        jobs::record_progress(&self.pool, &context.lease, &progress)
            .await
            .map_err(transient)?;
        tracing::info!(blueprints = blueprints.len(), mapped_rows, "remap finished");
        Ok(())
    }
}

impl RemapHandler {
    /// Maps the unmapped rows of these blueprints that the catalogue now knows; returns the rows.
    async fn remap(&self, context: &JobContext, blueprints: &[i64]) -> Result<u64, JobFailure> {
        let ids: Vec<BlueprintId> = blueprints
            .iter()
            .filter_map(|id| BlueprintId::new(*id).ok())
            .collect();
        let resolutions = self
            .catalog
            .resolve_many(&ids, Instant::now() + CATALOG_BUDGET)
            .await;
        let (mut found, mut prints, mut tables) = (Vec::new(), Vec::new(), Vec::new());
        let mut unmapped = Vec::new();
        for (id, resolution) in &resolutions {
            match resolution {
                Resolution::Mapped(print) => {
                    found.push(id.get());
                    prints.push(print.print_id);
                    tables.push(print.table.to_string());
                }
                Resolution::Unmapped => unmapped.push(id.get()),
                Resolution::Unknown => {}
            }
        }
        if found.is_empty() && unmapped.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await.map_err(transient)?;
        // Fenced: a remap whose lease was taken over leaves the rows to the worker that took it.
        jobs::lock_fenced(&mut *tx, &context.lease)
            .await
            .map_err(transient)?;
        let updated = sqlx::query(
            "UPDATE inventory_items i SET print_id = m.print_id, print_table = m.print_table, \
                 print_unknown = false, updated_at = now() \
             FROM UNNEST($2::bigint[], $3::bigint[], $4::text[]) AS m(blueprint_id, print_id, print_table) \
             WHERE i.user_id = $1 AND i.print_id IS NULL AND i.blueprint_id = m.blueprint_id",
        )
        .bind(context.lease.job.user_id.as_uuid())
        .bind(&found)
        .bind(&prints)
        .bind(&tables)
        .execute(&mut *tx)
        .await
        .map_err(transient)?;
        // The catalogue answered "no print" for these: the rows are unmapped, no longer unknown.
        sqlx::query(
            "UPDATE inventory_items SET print_unknown = false \
             WHERE user_id = $1 AND print_unknown AND blueprint_id = ANY($2)",
        )
        .bind(context.lease.job.user_id.as_uuid())
        .bind(&unmapped)
        .execute(&mut *tx)
        .await
        .map_err(transient)?;
        tx.commit().await.map_err(transient)?;
        Ok(updated.rows_affected())
    }
}

/// Queues a remap for every seller holding unmapped rows of these blueprints (one queued remap per
/// seller: requests coalesce), and returns how many were queued.
pub async fn queue_for_blueprints(pool: &PgPool, blueprints: &[i64]) -> Result<u64, JobError> {
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, user_id, kind, lane, payload, max_attempts) \
         SELECT gen_random_uuid(), user_id, $1, $2, '{}', 3 FROM ( \
             SELECT DISTINCT user_id FROM inventory_items \
             WHERE print_id IS NULL AND blueprint_id = ANY($3)) sellers \
         ON CONFLICT (user_id, kind, dedupe_key) WHERE state = 'queued' DO NOTHING",
    )
    .bind(KIND_REMAP)
    .bind(Lane::Bulk.as_str())
    .bind(blueprints)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected())
}

fn transient(error: impl std::fmt::Display) -> JobFailure {
    JobFailure::Transient(error.to_string())
}
