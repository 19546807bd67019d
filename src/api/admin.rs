//! `AdminService`: what this replica is doing, answered from memory.

use std::time::Instant;

use tonic::{Request, Response, Status};

use super::{
    auth,
    fields::{self, FieldCheck},
    pages::{PageRequest, RECORD_PAGES},
    pb::v1 as pb,
    status,
};
use crate::{
    jobs::Jobs,
    marketplace::{BreakerState, MarketplaceClient},
    metrics::Metrics,
    readiness::Readiness,
    storage::{PoolKind, PoolSnapshot, PoolState, Storage},
};

/// Handler state of `AdminService`.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    pub(crate) storage: Storage,
    pub(crate) readiness: Readiness,
    pub(crate) metrics: Metrics,
    pub(crate) started_at: Instant,
    pub(crate) concurrency_limit: u32,
    pub(crate) marketplace: MarketplaceClient,
    pub(crate) lanes: std::sync::Arc<LaneCache>,
    pub(crate) jobs: Jobs,
}

/// Lane counts are read from PostgreSQL at most once a second, whatever the GetStats rate, so the RPC
/// stays an in-memory answer for pollers and dashboards.
#[derive(Debug, Default)]
pub(crate) struct LaneCache {
    value: std::sync::Mutex<(Option<std::time::Instant>, Vec<pb::LaneStats>)>,
    refreshing: std::sync::atomic::AtomicBool,
}

/// Clears the refreshing flag however the refresh ends (an RPC cancelled mid-query included).
struct Refreshing<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

const LANE_STATS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        auth::require_service(&request)?;
        crate::failpoint::pause("admin.get_stats").await;
        let in_flight = u32::try_from(self.metrics.rpc_in_flight.get()).unwrap_or(0);
        Ok(Response::new(pb::GetStatsResponse {
            version: crate::VERSION.to_owned(),
            uptime_seconds: self.started_at.elapsed().as_secs(),
            pools: self
                .storage
                .snapshot()
                .into_iter()
                .map(encode_pool)
                .collect(),
            rpc: Some(pb::RpcStats {
                in_flight,
                concurrency_limit: self.concurrency_limit,
                shed_total: self.metrics.rpc_shed.get(),
            }),
            serving: self.readiness.current().serving(),
            cardtrader: Some(self.cardtrader_stats()),
            lanes: self.lane_stats().await,
        }))
    }

    async fn list_dead_jobs(
        &self,
        request: Request<pb::ListDeadJobsRequest>,
    ) -> Result<Response<pb::ListDeadJobsResponse>, Status> {
        auth::require_service(&request)?;
        let request = request.into_inner();
        let mut check = FieldCheck::default();
        let page = PageRequest::parse(
            &mut check,
            request.page_size,
            &request.page_token,
            RECORD_PAGES,
        );
        check.finish()?;
        let dead = self.jobs.dead(page.after, page.size).await?;
        // Dead jobs are listed by when they ended; every dead job has ended.
        let next_page_token = page.next_token(&dead, |last| Some((last.finished_at?, last.id)));
        let jobs = dead
            .into_iter()
            .map(|job| pb::DeadJob {
                job_id: job.id.to_string(),
                kind: job.kind.name().as_str().to_owned(),
                user_id: job.user_id.to_string(),
                attempts: u32::try_from(job.attempts).unwrap_or(0),
                last_error: job.last_error.unwrap_or_default(),
                finished_at: job.finished_at.map(super::accounts::timestamp),
            })
            .collect();
        Ok(Response::new(pb::ListDeadJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        auth::require_service(&request)?;
        let raw = &request.get_ref().job_id;
        let id = fields::uuid(raw).map_err(|reason| status::invalid_argument("job_id", reason))?;
        let job = self.jobs.revive(id).await?;
        Ok(Response::new(pb::RetryJobResponse {
            job_id: job.id.to_string(),
            state: job.state.as_str().to_owned(),
        }))
    }
}

impl AdminApi {
    /// Queue depth per lane, at most a second old; one caller refreshes while the others read.
    async fn lane_stats(&self) -> Vec<pb::LaneStats> {
        use std::sync::atomic::Ordering;
        let cache = &self.lanes;
        let (read_at, value) = cache
            .value
            .lock()
            .map(|guard| guard.clone())
            .unwrap_or_default();
        let fresh = read_at.is_some_and(|at| at.elapsed() < LANE_STATS_MAX_AGE);
        if fresh || cache.refreshing.swap(true, Ordering::AcqRel) {
            return value;
        }
        let _refreshing = Refreshing(&cache.refreshing);
        let counts = self.query_lane_stats().await;
        if let Ok(mut guard) = cache.value.lock() {
            *guard = (Some(std::time::Instant::now()), counts.clone());
        }
        counts
    }

    /// A bounded query on the partial indexes, skipped when PostgreSQL is down.
    async fn query_lane_stats(&self) -> Vec<pb::LaneStats> {
        if !self.readiness.current().database_ready {
            return Vec::new();
        }
        let counts =
            tokio::time::timeout(std::time::Duration::from_secs(1), self.jobs.lane_counts()).await;
        match counts {
            Ok(Ok(counts)) => counts
                .into_iter()
                .inspect(|counts| self.refresh_job_gauges(counts))
                .map(|counts| pb::LaneStats {
                    lane: counts.lane.as_str().to_owned(),
                    queued: u64::try_from(counts.queued).unwrap_or(0),
                    running: u64::try_from(counts.running).unwrap_or(0),
                    dead: u64::try_from(counts.dead).unwrap_or(0),
                })
                .collect(),
            Ok(Err(error)) => {
                tracing::warn!(%error, "GetStats could not count the job queues");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// The `brx_jobs` gauges follow what GetStats read (the scheduler refreshes them too).
    fn refresh_job_gauges(&self, counts: &crate::jobs::LaneCounts) {
        let lane = counts.lane.as_str();
        for (state, value) in [
            ("queued", counts.queued),
            ("running", counts.running),
            ("dead", counts.dead),
        ] {
            self.metrics
                .jobs
                .with_label_values(&[lane, state])
                .set(value);
        }
    }

    fn cardtrader_stats(&self) -> pb::CardTraderStats {
        let breaker = match self.marketplace.breaker_state() {
            BreakerState::Closed => pb::BreakerState::Closed,
            BreakerState::HalfOpen => pb::BreakerState::HalfOpen,
            BreakerState::Open => pb::BreakerState::Open,
        };
        // The limiter leaves its fallback on its next call after Redis answers again; with no call
        // since, the supervisor's Redis check is what says whether the fallback is still true now.
        let redis_up = self
            .storage
            .snapshot()
            .into_iter()
            .any(|pool| pool.kind == PoolKind::Redis && pool.state == PoolState::Up);
        pb::CardTraderStats {
            breaker: breaker.into(),
            rate_limit_fallback: self.marketplace.limiter().is_degraded() && !redis_up,
        }
    }
}

fn encode_pool(pool: PoolSnapshot) -> pb::PoolStats {
    let state = match pool.state {
        PoolState::Connecting => pb::PoolState::Connecting,
        PoolState::Up => pb::PoolState::Up,
        PoolState::Down => pb::PoolState::Down,
    };
    pb::PoolStats {
        name: pool.kind.name().to_owned(),
        state: state.into(),
        max_size: pool.max_size,
        size: pool.size,
        idle: pool.idle,
        in_use: pool.in_use,
        waiting: pool.waiting,
        consecutive_failures: pool.consecutive_failures,
        last_error: pool.last_error,
    }
}
