//! `BlueprintService`: checked ids in, one call into [`BlueprintCatalog`], mappings out.

use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::{auth, fields::FieldCheck, layers::RpcDeadline, pb::v1 as pb, status};
use crate::{
    blueprints::{BlueprintCatalog, Resolution},
    domain::BlueprintId,
    sync::Syncs,
};

/// Most ids one ResolveBlueprints or InvalidateBlueprints call may carry.
pub(crate) const MAX_IDS: usize = 5_000;

/// Budget of one resolve when the caller sent no deadline.
const DEFAULT_BUDGET: Duration = Duration::from_secs(10);
/// Kept from the caller's deadline to encode and send what was resolved by then.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);
/// How long a caller of InvalidateBlueprints should wait before retrying while Redis is unreachable.
const CACHE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Handler state of `BlueprintService`.
#[derive(Debug, Clone)]
pub(crate) struct BlueprintApi {
    pub(crate) catalog: BlueprintCatalog,
    /// Queues remaps of rows stored unmapped once their blueprints are invalidated.
    pub(crate) syncs: Syncs,
}

#[tonic::async_trait]
impl pb::blueprint_service_server::BlueprintService for BlueprintApi {
    async fn resolve_blueprints(
        &self,
        request: Request<pb::ResolveBlueprintsRequest>,
    ) -> Result<Response<pb::ResolveBlueprintsResponse>, Status> {
        auth::caller(&request)?;
        let ids = blueprint_ids(&request.get_ref().blueprint_ids)?;
        // Within the caller's own deadline, less a little to encode the answer: ids the catalogue
        // could not answer by then come back UNKNOWN beside the cached ones, not as DEADLINE_EXCEEDED.
        let deadline = RpcDeadline::answer_by(&request, ANSWER_MARGIN)
            .at()
            .into_std()
            .min(Instant::now() + DEFAULT_BUDGET);
        let answers = self.catalog.resolve_many(&ids, deadline).await;
        let mappings = ids
            .iter()
            .map(|id| encode(*id, answers.get(id).unwrap_or(&Resolution::Unknown)))
            .collect();
        Ok(Response::new(pb::ResolveBlueprintsResponse { mappings }))
    }

    async fn invalidate_blueprints(
        &self,
        request: Request<pb::InvalidateBlueprintsRequest>,
    ) -> Result<Response<pb::InvalidateBlueprintsResponse>, Status> {
        auth::require_service(&request)?;
        let ids = blueprint_ids(&request.get_ref().blueprint_ids)?;
        let invalidated = self.catalog.invalidate(&ids).await.map_err(|error| {
            tracing::warn!(%error, "blueprint invalidation could not reach Redis");
            status::unavailable(
                "CACHE_UNAVAILABLE",
                "the shared cache is unreachable, so caches cannot be invalidated; retry shortly",
                CACHE_RETRY_AFTER,
            )
        })?;
        let raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let remaps_queued = self.syncs.remap_blueprints(&raw).await?;
        Ok(Response::new(pb::InvalidateBlueprintsResponse {
            invalidated,
            remaps_queued,
        }))
    }
}

/// Distinct, positive ids in request order, at most [`MAX_IDS`]; every id that is not positive is
/// named by its index.
fn blueprint_ids(raw: &[i64]) -> Result<Vec<BlueprintId>, Status> {
    let mut check = FieldCheck::default();
    check.require(
        !raw.is_empty(),
        "blueprint_ids",
        "at least one id is required",
    );
    if !check.require(
        raw.len() <= MAX_IDS,
        "blueprint_ids",
        format!("at most {MAX_IDS} ids per call, got {}", raw.len()),
    ) {
        return check.finish_with(None);
    }
    let mut seen = std::collections::HashSet::with_capacity(raw.len());
    let mut ids = Vec::with_capacity(raw.len());
    for (index, &value) in raw.iter().enumerate() {
        if let Some(id) = check.take(&format!("blueprint_ids[{index}]"), BlueprintId::new(value))
            && seen.insert(id)
        {
            ids.push(id);
        }
    }
    check.finish_with(Some(ids))
}

fn encode(id: BlueprintId, resolution: &Resolution) -> pb::BlueprintMapping {
    let (state, print_id, print_table) = match resolution {
        Resolution::Mapped(print) => (
            pb::MappingState::Mapped,
            print.print_id,
            print.table.to_string(),
        ),
        Resolution::Unmapped => (pb::MappingState::Unmapped, 0, String::new()),
        Resolution::Unknown => (pb::MappingState::Unknown, 0, String::new()),
    };
    pb::BlueprintMapping {
        blueprint_id: id.get(),
        state: state.into(),
        print_id,
        print_table,
    }
}
