//! Every Prometheus metric of the service: names as constants, help text registered once at start-up,
//! one registry per `App` (so tests running several apps in one process never mix their counters).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// RPCs handled, by full method path and gRPC status code.
pub const RPC_REQUESTS_TOTAL: &str = "brx_rpc_requests_total";
/// RPC latency until the response (or stream) ended, by method.
pub const RPC_DURATION_SECONDS: &str = "brx_rpc_duration_seconds";
/// RPCs being handled now.
pub const RPC_IN_FLIGHT: &str = "brx_rpc_in_flight";
/// RPCs refused by load shedding.
pub const RPC_SHED_TOTAL: &str = "brx_rpc_shed_total";
/// Server streams open now, by method.
pub const STREAMS_OPEN: &str = "brx_streams_open";
/// Server streams refused, by method and the bound that refused them (`replica`, `caller`).
pub const STREAMS_REFUSED_TOTAL: &str = "brx_streams_refused_total";
/// Server streams that ended, by method and why (`finished`, `lifetime`, `shutdown`, `error`,
/// `cancelled` when the caller went away).
pub const STREAMS_ENDED_TOTAL: &str = "brx_streams_ended_total";
/// Re-reads of what an open stream watches, by method and cause (`notice`: a change notice woke
/// it; `backstop`: none came within `BRX_STREAM_RECHECK_INTERVAL`).
pub const STREAM_REREADS_TOTAL: &str = "brx_stream_rereads_total";
/// Connections of a storage pool, by pool and state (`in_use`, `idle`, `max`).
pub const POOL_CONNECTIONS: &str = "brx_pool_connections";
/// 1 when the pool's last check succeeded, by pool.
pub const POOL_UP: &str = "brx_pool_up";
/// 1 while the replica reports SERVING.
pub const SERVING: &str = "brx_serving";
/// Time callers waited for a CardTrader rate-limit token, by scope.
pub const RATE_LIMIT_WAIT_SECONDS: &str = "brx_rate_limit_wait_seconds";
/// 429s from CardTrader that halved a seller's rate, by scope.
pub const RATE_LIMIT_PENALTIES_TOTAL: &str = "brx_rate_limit_penalties_total";
/// 1 while the limiter runs in-process because Redis is unreachable.
pub const RATE_LIMIT_FALLBACK: &str = "brx_rate_limit_fallback";
/// CardTrader calls, by endpoint and outcome (HTTP status, `timeout`, `connect`, `breaker_open`).
pub const CARDTRADER_REQUESTS_TOTAL: &str = "brx_cardtrader_requests_total";
/// CardTrader call latency, by endpoint.
pub const CARDTRADER_DURATION_SECONDS: &str = "brx_cardtrader_duration_seconds";
/// CardTrader 429 answers, by endpoint.
pub const CARDTRADER_429_TOTAL: &str = "brx_cardtrader_429_total";
/// Blueprint lookups, by the level that answered (`l1`, `redis`, `negative`, `mysql`, `unknown`).
pub const BLUEPRINT_LOOKUPS_TOTAL: &str = "brx_blueprint_lookups_total";
/// 1 while the blueprint cache runs without Redis.
pub const BLUEPRINT_CACHE_DEGRADED: &str = "brx_blueprint_cache_degraded";
/// Blueprint → expansion lookups, by the level that answered (`l1`, `redis`, `cardtrader`, `unknown`).
pub const EXPANSION_LOOKUPS_TOTAL: &str = "brx_expansion_lookups_total";
/// Catalogue (MySQL) query latency.
pub const CATALOG_QUERY_SECONDS: &str = "brx_catalog_query_seconds";
/// Ids per catalogue query.
pub const CATALOG_BATCH_SIZE: &str = "brx_catalog_batch_size";
/// Catalogue queries sent.
pub const CATALOG_QUERIES_TOTAL: &str = "brx_catalog_queries_total";
/// Sync chunk transactions rerun, by reason (`deadlock`, `serialization`, `timeout`, `connection`).
pub const SYNC_CHUNK_RETRIES_TOTAL: &str = "brx_sync_chunk_retries_total";
/// Sweep batch transactions rerun after a deadlock, serialization failure, timeout or lost
/// connection, by reason.
pub const SYNC_SWEEP_RETRIES_TOTAL: &str = "brx_sync_sweep_retries_total";
/// Sync rows by what the chunk did with them (`written`, `unchanged`, `deleted`, `unmapped`).
pub const SYNC_ROWS_TOTAL: &str = "brx_sync_rows_total";
/// Latency of one sync chunk transaction, reruns included.
pub const SYNC_CHUNK_SECONDS: &str = "brx_sync_chunk_seconds";
/// Jobs that ended an attempt, by kind and outcome (`succeeded`, `failed`, `cancelled`, `retried`,
/// `rate_limited`, `interrupted`, `dead` when out of attempts, `panicked` for a handler's panic;
/// `lease_lost` when another worker had taken the job over or the lease could not be renewed).
pub const JOBS_FINISHED_TOTAL: &str = "brx_jobs_finished_total";
/// Jobs queued, running and dead (out of attempts, waiting for an operator) across all replicas, by
/// lane and state, as last read by this replica.
pub const JOBS: &str = "brx_jobs";
/// Jobs queued by the periodic scheduler, by kind.
pub const JOBS_SCHEDULED_TOTAL: &str = "brx_jobs_scheduled_total";
/// Purchases that ended, by outcome (`completed`, `failed`, `requires_attention`).
pub const PURCHASES_TOTAL: &str = "brx_purchases_total";
/// Latency of one purchase saga step, by step (`reserve`, `take_stock`, `verify_take`, `give_back`,
/// `verify_give_back`, `finalize`, `release`), CardTrader calls included.
pub const PURCHASE_STEP_SECONDS: &str = "brx_purchase_step_seconds";
/// Purchase lines given back on CardTrader, by how (`increment`, `recreate`).
pub const PURCHASE_COMPENSATIONS_TOTAL: &str = "brx_purchase_compensations_total";
/// Purchases in `requires_attention` across all replicas, as last read by this replica.
pub const PURCHASES_REQUIRING_ATTENTION: &str = "brx_purchases_requiring_attention";
/// Local edits settled on CardTrader, by `op` (`update`, `delete`, `create`), `via` (`single`,
/// `bulk`) and `outcome` (`pushed`, `refused`).
pub const INVENTORY_PUSHES_TOTAL: &str = "brx_inventory_pushes_total";
/// Circuit breaker on the CardTrader host: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "brx_cardtrader_breaker_state";
/// Estimated live rows of each of the service's PostgreSQL tables, by table, as last read by this
/// replica (`pg_stat_user_tables.n_live_tup`, refreshed every retention interval).
pub const TABLE_ROWS: &str = "brx_table_rows";
/// Bytes of each of the service's PostgreSQL tables with their indexes and TOAST, by table, as last
/// read by this replica (`pg_total_relation_size`, refreshed every retention interval).
pub const TABLE_BYTES: &str = "brx_table_bytes";
/// Rows retention deleted (for `purchase_steps`, the step logs of ended purchases), by table.
pub const RETENTION_DELETED_TOTAL: &str = "brx_retention_deleted_total";
/// CardTrader webhook deliveries answered, by HTTP status (`200`, `400`, `401`, `413`, `500`).
pub const WEBHOOK_REQUESTS_TOTAL: &str = "brx_webhook_requests_total";
/// Time to answer a CardTrader webhook delivery (verify, store, queue).
pub const WEBHOOK_DURATION_SECONDS: &str = "brx_webhook_duration_seconds";

/// Handles to every metric; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// See [`RPC_REQUESTS_TOTAL`].
    pub rpc_requests: IntCounterVec,
    /// See [`RPC_DURATION_SECONDS`].
    pub rpc_duration: HistogramVec,
    /// See [`RPC_IN_FLIGHT`].
    pub rpc_in_flight: IntGauge,
    /// See [`RPC_SHED_TOTAL`].
    pub rpc_shed: IntCounter,
    /// See [`STREAMS_OPEN`].
    pub streams_open: IntGaugeVec,
    /// See [`STREAMS_REFUSED_TOTAL`].
    pub streams_refused: IntCounterVec,
    /// See [`STREAMS_ENDED_TOTAL`].
    pub streams_ended: IntCounterVec,
    /// See [`STREAM_REREADS_TOTAL`].
    pub stream_rereads: IntCounterVec,
    /// See [`POOL_CONNECTIONS`].
    pub pool_connections: IntGaugeVec,
    /// See [`POOL_UP`].
    pub pool_up: IntGaugeVec,
    /// See [`SERVING`].
    pub serving: IntGauge,
    /// See [`RATE_LIMIT_WAIT_SECONDS`].
    pub rate_limit_wait: HistogramVec,
    /// See [`RATE_LIMIT_PENALTIES_TOTAL`].
    pub rate_limit_penalties: IntCounterVec,
    /// See [`RATE_LIMIT_FALLBACK`].
    pub rate_limit_fallback: IntGauge,
    /// See [`CARDTRADER_REQUESTS_TOTAL`].
    pub cardtrader_requests: IntCounterVec,
    /// See [`CARDTRADER_DURATION_SECONDS`].
    pub cardtrader_duration: HistogramVec,
    /// See [`CARDTRADER_429_TOTAL`].
    pub cardtrader_429: IntCounterVec,
    /// See [`BREAKER_STATE`].
    pub breaker_state: IntGauge,
    /// See [`BLUEPRINT_LOOKUPS_TOTAL`].
    pub blueprint_lookups: IntCounterVec,
    /// See [`BLUEPRINT_CACHE_DEGRADED`].
    pub blueprint_cache_degraded: IntGauge,
    /// See [`EXPANSION_LOOKUPS_TOTAL`].
    pub expansion_lookups: IntCounterVec,
    /// See [`CATALOG_QUERY_SECONDS`].
    pub catalog_query_seconds: Histogram,
    /// See [`CATALOG_BATCH_SIZE`].
    pub catalog_batch_size: Histogram,
    /// See [`CATALOG_QUERIES_TOTAL`].
    pub catalog_queries: IntCounter,
    /// See [`SYNC_CHUNK_RETRIES_TOTAL`].
    pub sync_chunk_retries: IntCounterVec,
    /// See [`SYNC_SWEEP_RETRIES_TOTAL`].
    pub sync_sweep_retries: IntCounterVec,
    /// See [`SYNC_ROWS_TOTAL`].
    pub sync_rows: IntCounterVec,
    /// See [`SYNC_CHUNK_SECONDS`].
    pub sync_chunk_seconds: Histogram,
    /// See [`JOBS_FINISHED_TOTAL`].
    pub jobs_finished: IntCounterVec,
    /// See [`JOBS`].
    pub jobs: IntGaugeVec,
    /// See [`JOBS_SCHEDULED_TOTAL`].
    pub jobs_scheduled: IntCounterVec,
    /// See [`PURCHASES_TOTAL`].
    pub purchases: IntCounterVec,
    /// See [`PURCHASE_STEP_SECONDS`].
    pub purchase_step_seconds: HistogramVec,
    /// See [`PURCHASE_COMPENSATIONS_TOTAL`].
    pub purchase_compensations: IntCounterVec,
    /// See [`PURCHASES_REQUIRING_ATTENTION`].
    pub purchases_requiring_attention: IntGauge,
    /// See [`INVENTORY_PUSHES_TOTAL`].
    pub inventory_pushes: IntCounterVec,
    /// See [`TABLE_ROWS`].
    pub table_rows: IntGaugeVec,
    /// See [`TABLE_BYTES`].
    pub table_bytes: IntGaugeVec,
    /// See [`RETENTION_DELETED_TOTAL`].
    pub retention_deleted: IntCounterVec,
    /// See [`WEBHOOK_REQUESTS_TOTAL`].
    pub webhook_requests: IntCounterVec,
    /// See [`WEBHOOK_DURATION_SECONDS`].
    pub webhook_duration: HistogramVec,
}

impl Metrics {
    /// Creates and registers every metric. Fails only on a duplicate name, which is a programming error.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        // Buckets from 0.5 ms to ~16 s: cheap reads sit in the first buckets, bulk operations in the last.
        let latency_buckets = prometheus::exponential_buckets(0.0005, 2.0, 16)?;
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help)?);
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(latency_buckets.clone());
            register(&registry, HistogramVec::new(opts, labels)?)
        };
        let metrics = Self {
            rpc_requests: counter_vec(
                RPC_REQUESTS_TOTAL,
                "RPCs handled, by method and gRPC status code.",
                &["method", "code"],
            )?,
            rpc_duration: histogram_vec(
                RPC_DURATION_SECONDS,
                "RPC latency until the response ended.",
                &["method"],
            )?,
            rpc_in_flight: gauge(RPC_IN_FLIGHT, "RPCs being handled now.")?,
            rpc_shed: register(
                &registry,
                IntCounter::new(RPC_SHED_TOTAL, "RPCs refused by load shedding.")?,
            )?,
            streams_open: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(STREAMS_OPEN, "Server streams open now, by method."),
                    &["method"],
                )?,
            )?,
            streams_refused: counter_vec(
                STREAMS_REFUSED_TOTAL,
                "Server streams refused, by method and the bound that refused them.",
                &["method", "limit"],
            )?,
            streams_ended: counter_vec(
                STREAMS_ENDED_TOTAL,
                "Server streams that ended, by method and why.",
                &["method", "reason"],
            )?,
            stream_rereads: counter_vec(
                STREAM_REREADS_TOTAL,
                "Re-reads of what an open stream watches, by method and cause.",
                &["method", "cause"],
            )?,
            pool_connections: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        POOL_CONNECTIONS,
                        "Storage pool connections, by pool and state.",
                    ),
                    &["pool", "state"],
                )?,
            )?,
            pool_up: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(POOL_UP, "1 when the storage pool's last check succeeded."),
                    &["pool"],
                )?,
            )?,
            serving: gauge(SERVING, "1 while the replica reports SERVING.")?,
            rate_limit_wait: histogram_vec(
                RATE_LIMIT_WAIT_SECONDS,
                "Wait for a CardTrader rate-limit token, by scope.",
                &["scope"],
            )?,
            rate_limit_penalties: counter_vec(
                RATE_LIMIT_PENALTIES_TOTAL,
                "CardTrader 429s that halved a seller's rate, by scope.",
                &["scope"],
            )?,
            rate_limit_fallback: gauge(
                RATE_LIMIT_FALLBACK,
                "1 while rate limits run in-process because Redis is unreachable.",
            )?,
            cardtrader_requests: counter_vec(
                CARDTRADER_REQUESTS_TOTAL,
                "CardTrader calls, by endpoint and outcome.",
                &["endpoint", "outcome"],
            )?,
            cardtrader_duration: histogram_vec(
                CARDTRADER_DURATION_SECONDS,
                "CardTrader call latency, by endpoint.",
                &["endpoint"],
            )?,
            cardtrader_429: counter_vec(
                CARDTRADER_429_TOTAL,
                "CardTrader 429 answers, by endpoint.",
                &["endpoint"],
            )?,
            breaker_state: gauge(
                BREAKER_STATE,
                "CardTrader circuit breaker: 0 closed, 1 half-open, 2 open.",
            )?,
            blueprint_lookups: counter_vec(
                BLUEPRINT_LOOKUPS_TOTAL,
                "Blueprint lookups, by the level that answered.",
                &["level"],
            )?,
            blueprint_cache_degraded: gauge(
                BLUEPRINT_CACHE_DEGRADED,
                "1 while the blueprint cache runs without Redis.",
            )?,
            expansion_lookups: counter_vec(
                EXPANSION_LOOKUPS_TOTAL,
                "Blueprint to expansion lookups, by the level that answered.",
                &["level"],
            )?,
            catalog_query_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(CATALOG_QUERY_SECONDS, "Catalogue (MySQL) query latency.")
                        .buckets(latency_buckets.clone()),
                )?,
            )?,
            catalog_batch_size: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(CATALOG_BATCH_SIZE, "Ids per catalogue query.")
                        .buckets(prometheus::exponential_buckets(1.0, 4.0, 9)?),
                )?,
            )?,
            catalog_queries: register(
                &registry,
                IntCounter::new(CATALOG_QUERIES_TOTAL, "Catalogue queries sent.")?,
            )?,
            sync_chunk_retries: counter_vec(
                SYNC_CHUNK_RETRIES_TOTAL,
                "Sync chunk transactions rerun, by reason.",
                &["reason"],
            )?,
            sync_sweep_retries: counter_vec(
                SYNC_SWEEP_RETRIES_TOTAL,
                "Sync sweep batches rerun, by reason.",
                &["reason"],
            )?,
            sync_rows: counter_vec(
                SYNC_ROWS_TOTAL,
                "Sync rows by what the chunk did with them.",
                &["result"],
            )?,
            sync_chunk_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(SYNC_CHUNK_SECONDS, "Sync chunk transaction latency.")
                        .buckets(latency_buckets.clone()),
                )?,
            )?,
            jobs_finished: counter_vec(
                JOBS_FINISHED_TOTAL,
                "Job attempts that ended, by kind and outcome.",
                &["kind", "outcome"],
            )?,
            jobs: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(JOBS, "Jobs across all replicas, by lane and state."),
                    &["lane", "state"],
                )?,
            )?,
            jobs_scheduled: counter_vec(
                JOBS_SCHEDULED_TOTAL,
                "Jobs queued by the periodic scheduler, by kind.",
                &["kind"],
            )?,
            purchases: counter_vec(
                PURCHASES_TOTAL,
                "Purchases that ended, by outcome.",
                &["outcome"],
            )?,
            purchase_step_seconds: histogram_vec(
                PURCHASE_STEP_SECONDS,
                "Latency of one purchase saga step, CardTrader calls included.",
                &["step"],
            )?,
            purchase_compensations: counter_vec(
                PURCHASE_COMPENSATIONS_TOTAL,
                "Purchase lines given back on CardTrader, by how.",
                &["by"],
            )?,
            purchases_requiring_attention: gauge(
                PURCHASES_REQUIRING_ATTENTION,
                "Purchases waiting for an operator, across all replicas.",
            )?,
            inventory_pushes: counter_vec(
                INVENTORY_PUSHES_TOTAL,
                "Local inventory edits settled on CardTrader.",
                &["op", "via", "outcome"],
            )?,
            table_rows: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(TABLE_ROWS, "Estimated live rows of each table, by table."),
                    &["table"],
                )?,
            )?,
            table_bytes: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        TABLE_BYTES,
                        "Bytes of each table with its indexes and TOAST, by table.",
                    ),
                    &["table"],
                )?,
            )?,
            retention_deleted: counter_vec(
                RETENTION_DELETED_TOTAL,
                "Rows deleted by retention, by table.",
                &["table"],
            )?,
            webhook_requests: counter_vec(
                WEBHOOK_REQUESTS_TOTAL,
                "CardTrader webhook deliveries answered, by HTTP status.",
                &["code"],
            )?,
            webhook_duration: histogram_vec(
                WEBHOOK_DURATION_SECONDS,
                "Time to answer a CardTrader webhook delivery.",
                &["code"],
            )?,
            registry,
        };
        Ok(metrics)
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec fails only on metric families that violate the format, which `new` rules out.
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "metrics encoding failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

/// Registers `metric` and hands it back, so construction and registration stay one expression.
fn register<M>(registry: &Registry, metric: M) -> Result<M, prometheus::Error>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}
