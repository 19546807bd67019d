//! `SyncService`: checked input in, one call into [`Syncs`], jobs out.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    accounts::timestamp,
    auth,
    fields::{self, FieldCheck, user_id},
    pages::{PageRequest, RECORD_PAGES},
    pb::v1 as pb,
    status,
    streams::{BoxedStream, Source, Streams},
};
use crate::{
    jobs::{Enqueued, Job, JobState, wake::Subject},
    sync::{
        Syncs,
        scope::{MAX_TARGETED_IDS, SyncProgress, SyncScope},
    },
};

/// The `method` label of WatchSync's stream metrics.
const WATCH_SYNC: &str = "/brx.sync.v1.SyncService/WatchSync";

/// Handler state of `SyncService`.
#[derive(Debug, Clone)]
pub(crate) struct SyncApi {
    pub(crate) syncs: Syncs,
    /// Bounds and wake-ups of WatchSync streams.
    pub(crate) streams: Streams,
}

type WatchStream = BoxedStream<pb::WatchSyncResponse>;

#[tonic::async_trait]
impl pb::sync_service_server::SyncService for SyncApi {
    async fn start_sync(
        &self,
        request: Request<pb::StartSyncRequest>,
    ) -> Result<Response<pb::StartSyncResponse>, Status> {
        let mut check = FieldCheck::default();
        let seller = check.seller(&request, &request.get_ref().user_id)?;
        let body = request.into_inner();
        let scope = scope(&mut check, &body);
        let (user_id, scope) = check.finish_with(seller.zip(scope))?;
        let enqueued = self.syncs.start(user_id, scope, body.priority).await?;
        let coalesced = matches!(enqueued, Enqueued::Coalesced(_));
        let mut job = encode(enqueued.job());
        job.coalesced = coalesced;
        Ok(Response::new(pb::StartSyncResponse { job: Some(job) }))
    }

    async fn get_sync(
        &self,
        request: Request<pb::GetSyncRequest>,
    ) -> Result<Response<pb::GetSyncResponse>, Status> {
        let job = self.owned_job(&request, &request.get_ref().job_id).await?;
        Ok(Response::new(pb::GetSyncResponse {
            job: Some(encode(&job)),
        }))
    }

    async fn list_syncs(
        &self,
        request: Request<pb::ListSyncsRequest>,
    ) -> Result<Response<pb::ListSyncsResponse>, Status> {
        let mut check = FieldCheck::default();
        let seller = check.seller(&request, &request.get_ref().user_id)?;
        let body = request.into_inner();
        let page = PageRequest::parse(&mut check, body.page_size, &body.page_token, RECORD_PAGES);
        let user_id = check.finish_with(seller)?;
        let jobs = self.syncs.list(user_id, page.after, page.size).await?;
        Ok(Response::new(pb::ListSyncsResponse {
            next_page_token: page.next_token(&jobs, |job| Some((job.created_at, job.id))),
            syncs: jobs.iter().map(encode).collect(),
        }))
    }

    type WatchSyncStream = WatchStream;

    async fn watch_sync(
        &self,
        request: Request<pb::WatchSyncRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let job_id = job_id(&request.get_ref().job_id)?;
        let admitted = self.streams.admit(&request, WATCH_SYNC)?;
        let subscription = admitted.subscribe(Subject::Job(job_id));
        let first = self.owned_job(&request, &request.get_ref().job_id).await?;
        let syncs = self.syncs.clone();
        let source = Source {
            read: Box::new(move || {
                let syncs = syncs.clone();
                Box::pin(async move { syncs.get(job_id).await.map_err(Status::from) })
            }),
            encode: |job: &Job| pb::WatchSyncResponse {
                job: Some(encode(job)),
            },
            is_terminal: |job: &Job| job.state.is_terminal(),
        };
        Ok(Response::new(admitted.follow(subscription, first, source)))
    }

    async fn cancel_sync(
        &self,
        request: Request<pb::CancelSyncRequest>,
    ) -> Result<Response<pb::CancelSyncResponse>, Status> {
        let job = self.owned_job(&request, &request.get_ref().job_id).await?;
        Ok(Response::new(pb::CancelSyncResponse {
            job: Some(encode(&self.syncs.cancel(job.id).await?)),
        }))
    }

    async fn get_sync_status(
        &self,
        request: Request<pb::GetSyncStatusRequest>,
    ) -> Result<Response<pb::GetSyncStatusResponse>, Status> {
        let user_id = user_id(&request.get_ref().user_id)?;
        auth::require_user(&request, user_id)?;
        let status = self.syncs.status(user_id).await?;
        Ok(Response::new(pb::GetSyncStatusResponse {
            status: Some(pb::SyncStatus {
                user_id: user_id.to_string(),
                last_finished: status.last_finished.as_ref().map(encode),
                current: status.current.as_ref().map(encode),
                item_count: status.item_count,
            }),
        }))
    }
}

impl SyncApi {
    /// The job `raw_job_id` of the request, if the caller may see it (NOT_FOUND before
    /// PERMISSION_DENIED would leak which ids exist, so another seller's job is PERMISSION_DENIED only
    /// once found).
    async fn owned_job<T>(&self, request: &Request<T>, raw_job_id: &str) -> Result<Job, Status> {
        let job = self.syncs.get(job_id(raw_job_id)?).await?;
        auth::require_user(request, job.user_id)?;
        Ok(job)
    }
}

fn job_id(raw: &str) -> Result<Uuid, Status> {
    fields::uuid(raw).map_err(|reason| status::invalid_argument("job_id", reason))
}

/// The sync asked for: no ids for a full sync, blueprint and/or expansion ids for a targeted one.
fn scope(check: &mut FieldCheck, request: &pb::StartSyncRequest) -> Option<SyncScope> {
    let (blueprint_ids, expansion_ids) = (&request.blueprint_ids, &request.expansion_ids);
    if blueprint_ids.is_empty() && expansion_ids.is_empty() {
        return Some(SyncScope::Full);
    }
    if blueprint_ids.len() + expansion_ids.len() > MAX_TARGETED_IDS {
        check.reject_together(
            &["blueprint_ids", "expansion_ids"],
            format!("at most {MAX_TARGETED_IDS} blueprint and expansion ids per targeted sync"),
        );
        return None;
    }
    Some(SyncScope::Targeted {
        blueprint_ids: positive_ids(check, "blueprint_ids", blueprint_ids),
        expansion_ids: positive_ids(check, "expansion_ids", expansion_ids),
    })
}

/// The ids, sorted and without repeats; each one that is not positive is recorded in `check` by
/// its index.
fn positive_ids(check: &mut FieldCheck, field: &str, ids: &[i64]) -> Vec<i64> {
    for (index, id) in ids.iter().enumerate() {
        check.require(
            *id > 0,
            &format!("{field}[{index}]"),
            "ids must be positive",
        );
    }
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn encode(job: &Job) -> pb::SyncJob {
    let state = match job.state {
        JobState::Queued => pb::SyncState::Queued,
        JobState::Running => pb::SyncState::Running,
        JobState::Succeeded => pb::SyncState::Succeeded,
        JobState::Cancelled => pb::SyncState::Cancelled,
        // Out of attempts: failed, as far as a caller of the sync API can tell.
        JobState::Failed | JobState::Dead => pb::SyncState::Failed,
    };
    let (scope, blueprint_ids, expansion_ids) = match SyncScope::of_job(&job.kind) {
        Some(SyncScope::Full) => (pb::SyncScope::Full, Vec::new(), Vec::new()),
        Some(SyncScope::Targeted {
            blueprint_ids,
            expansion_ids,
        }) => (pb::SyncScope::Targeted, blueprint_ids, expansion_ids),
        None => (pb::SyncScope::Unspecified, Vec::new(), Vec::new()),
    };
    let progress = SyncProgress::from_json(&job.progress);
    pb::SyncJob {
        job_id: job.id.to_string(),
        user_id: job.user_id.to_string(),
        scope: scope.into(),
        state: state.into(),
        progress: Some(pb::SyncProgress {
            chunks_total: progress.chunks_total,
            chunks_done: progress.chunks_done,
            products_seen: progress.products_seen,
            written: progress.written,
            unchanged: progress.unchanged,
            deleted: progress.deleted,
            unmapped: progress.unmapped,
        }),
        attempts: u32::try_from(job.attempts).unwrap_or(0),
        last_error: job.last_error.clone().unwrap_or_default(),
        created_at: Some(timestamp(job.created_at)),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
        coalesced: false,
        cancel_requested: job.cancel_requested,
        blueprint_ids,
        expansion_ids,
    }
}
