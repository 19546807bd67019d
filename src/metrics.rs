//! Every Prometheus metric of the service: names as constants, help text registered once at start-up,
//! one registry per `App` (so tests running several apps in one process never mix their counters).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// RPCs handled, by full method path and gRPC status code.
pub const RPC_REQUESTS_TOTAL: &str = "brx_rpc_requests_total";
/// RPC latency until the response (or stream) ended, by method.
pub const RPC_DURATION_SECONDS: &str = "brx_rpc_duration_seconds";
/// RPCs being handled now.
pub const RPC_IN_FLIGHT: &str = "brx_rpc_in_flight";
/// RPCs refused by load shedding.
pub const RPC_SHED_TOTAL: &str = "brx_rpc_shed_total";
/// Connections of a storage pool, by pool and state (`in_use`, `idle`, `max`).
pub const POOL_CONNECTIONS: &str = "brx_pool_connections";
/// 1 when the pool's last check succeeded, by pool.
pub const POOL_UP: &str = "brx_pool_up";
/// 1 while the replica reports SERVING.
pub const SERVING: &str = "brx_serving";

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
    /// See [`POOL_CONNECTIONS`].
    pub pool_connections: IntGaugeVec,
    /// See [`POOL_UP`].
    pub pool_up: IntGaugeVec,
    /// See [`SERVING`].
    pub serving: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric. Fails only on a duplicate name, which is a programming error.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        // Buckets from 0.5 ms to ~16 s: cheap reads sit in the first buckets, bulk operations in the last.
        let latency_buckets = prometheus::exponential_buckets(0.0005, 2.0, 16)?;
        let metrics = Self {
            rpc_requests: IntCounterVec::new(
                Opts::new(
                    RPC_REQUESTS_TOTAL,
                    "RPCs handled, by method and gRPC status code.",
                ),
                &["method", "code"],
            )?,
            rpc_duration: HistogramVec::new(
                HistogramOpts::new(
                    RPC_DURATION_SECONDS,
                    "RPC latency until the response ended.",
                )
                .buckets(latency_buckets),
                &["method"],
            )?,
            rpc_in_flight: IntGauge::new(RPC_IN_FLIGHT, "RPCs being handled now.")?,
            rpc_shed: IntCounter::new(RPC_SHED_TOTAL, "RPCs refused by load shedding.")?,
            pool_connections: IntGaugeVec::new(
                Opts::new(
                    POOL_CONNECTIONS,
                    "Storage pool connections, by pool and state.",
                ),
                &["pool", "state"],
            )?,
            pool_up: IntGaugeVec::new(
                Opts::new(POOL_UP, "1 when the storage pool's last check succeeded."),
                &["pool"],
            )?,
            serving: IntGauge::new(SERVING, "1 while the replica reports SERVING.")?,
            registry,
        };
        metrics
            .registry
            .register(Box::new(metrics.rpc_requests.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.rpc_duration.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.rpc_in_flight.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.rpc_shed.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.pool_connections.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.pool_up.clone()))?;
        metrics
            .registry
            .register(Box::new(metrics.serving.clone()))?;
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
