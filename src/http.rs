//! The admin HTTP listener: Prometheus `/metrics`, `/livez` and `/readyz` for probes that do not
//! speak gRPC. It is for the cluster only; the public listener serves CardTrader's webhooks alone
//! (`webhooks::routes`), so nothing an operator reads is reachable from the Internet.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{metrics::Metrics, readiness::Readiness, storage::Storage};

/// What the admin listener's handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Metric handles and registry.
    pub metrics: Metrics,
    /// Readiness flag.
    pub readiness: Readiness,
    /// Pools, for the pool gauges refreshed at scrape time.
    pub storage: Storage,
}

/// The admin listener's routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    // Pool usage is read when scraped rather than pushed, so it is never stale.
    for pool in state.storage.snapshot() {
        let name = pool.kind.name();
        let gauge = |label: &str, value: u32| {
            state
                .metrics
                .pool_connections
                .with_label_values(&[name, label])
                .set(i64::from(value));
        };
        gauge("in_use", pool.in_use);
        gauge("idle", pool.idle);
        gauge("max", pool.max_size);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let ready = state.readiness.current();
    if ready.serving() {
        (StatusCode::OK, "ready")
    } else if ready.draining {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unreachable or migrations pending",
        )
    }
}
