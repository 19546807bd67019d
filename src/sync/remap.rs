//! The remap job: fills the print of a seller's rows stored unmapped once the catalogue knows their
//! blueprints, and settles rows stored while the catalogue could not be asked. Queued for every seller
//! concerned when blueprints are invalidated (the catalogue gained prints) and when the catalogue is
//! back after an outage ([`super::unknown_prints`]); a full sync maps them too.

use std::time::{Duration, Instant};

use crate::storage::Pg;

use crate::{
    blueprints::{BlueprintCatalog, Resolution},
    domain::{BlueprintId, UserId},
    jobs::{
        JobContext, JobError, JobKind, KindName,
        worker::{JobFailure, JobHandler},
    },
};

/// Blueprints looked up and rows updated per transaction.
const BATCH: usize = 5_000;
/// Budget of one batch's catalogue lookup.
const CATALOG_BUDGET: Duration = Duration::from_secs(30);

/// Runs remap jobs.
#[derive(Debug, Clone)]
pub struct RemapHandler {
    /// Blueprint → print.
    pub catalog: BlueprintCatalog,
}

#[tonic::async_trait]
impl JobHandler for RemapHandler {
    fn kind(&self) -> KindName {
        KindName::RemapUnmapped
    }

    async fn run(&self, context: &JobContext) -> Result<(), JobFailure> {
        let blueprints: Vec<i64> = {
            let mut read = context.read().await?;
            sqlx::query_scalar(
                "SELECT DISTINCT blueprint_id FROM inventory_items \
                 WHERE user_id = $1 AND print_id IS NULL ORDER BY blueprint_id",
            )
            .bind(context.user_id().as_uuid())
            .fetch_all(&mut *read)
            .await
            .map_err(transient)?
        };
        let mut mapped_rows = 0;
        for batch in blueprints.chunks(BATCH) {
            mapped_rows += self.remap(context, batch).await?;
            if let Some(stop) = context.should_stop() {
                return Err(stop);
            }
        }
        let progress =
            serde_json::json!({"blueprints": blueprints.len(), "rows_mapped": mapped_rows});
        context.record_progress(&progress).await?;
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
        // Fenced: a remap whose lease was taken over leaves the rows to the worker that took it.
        let mut unit = context.begin().await?;
        let updated = sqlx::query(
            "UPDATE inventory_items i SET print_id = m.print_id, print_table = m.print_table, \
                 print_unknown = false, updated_at = now() \
             FROM UNNEST($2::bigint[], $3::bigint[], $4::text[]) AS m(blueprint_id, print_id, print_table) \
             WHERE i.user_id = $1 AND i.print_id IS NULL AND i.blueprint_id = m.blueprint_id",
        )
        .bind(context.user_id().as_uuid())
        .bind(&found)
        .bind(&prints)
        .bind(&tables)
        .execute(&mut *unit)
        .await
        .map_err(transient)?;
        // The catalogue answered "no print" for these: the rows are unmapped, no longer unknown.
        sqlx::query(
            "UPDATE inventory_items SET print_unknown = false \
             WHERE user_id = $1 AND print_unknown AND blueprint_id = ANY($2)",
        )
        .bind(context.user_id().as_uuid())
        .bind(&unmapped)
        .execute(&mut *unit)
        .await
        .map_err(transient)?;
        unit.commit().await?;
        Ok(updated.rows_affected())
    }
}

/// Queues a remap for every seller holding unmapped rows of these blueprints (one queued remap per
/// seller: requests coalesce), and returns how many were queued.
pub async fn queue_for_blueprints(pool: &Pg, blueprints: &[i64]) -> Result<u64, JobError> {
    let mut tx = pool.begin().await?;
    let sellers: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM inventory_items \
         WHERE print_id IS NULL AND blueprint_id = ANY($1) ORDER BY user_id",
    )
    .bind(blueprints)
    .fetch_all(&mut *tx)
    .await?;
    let sellers: Vec<UserId> = sellers
        .into_iter()
        .filter_map(|id| UserId::from_uuid(id).ok())
        .collect();
    let kind = JobKind::RemapUnmapped;
    let queued = crate::jobs::store::enqueue_for_sellers_in(
        &mut tx,
        &sellers,
        &kind,
        kind.default_priority(),
    )
    .await?;
    tx.commit().await?;
    Ok(queued)
}

fn transient(error: impl std::fmt::Display) -> JobFailure {
    JobFailure::Transient(error.to_string())
}
