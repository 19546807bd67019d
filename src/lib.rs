//! brx-sync keeps a card shop's seller inventories in step with the CardTrader marketplace and serves
//! the shop's other services over gRPC (package `brx.sync.v1`).
//!
//! # Layout
//! - [`accounts`]: sellers' CardTrader connections, tokens encrypted at rest.
//! - [`app`]: builds the replica (listeners, pools, layers) and runs it until shutdown.
//! - [`blueprints`]: CardTrader blueprint → shop print, from MySQL behind an L1 and a Redis cache;
//!   blueprint → CardTrader expansion, learnt from CardTrader's reference exports.
//! - [`config`]: the one typed configuration, from flags and `BRX_*` environment variables.
//! - [`api`]: the gRPC transport: handlers, auth, tower layers, the single error → `Status` mapping.
//! - [`jobs`]: durable jobs in PostgreSQL, typed kinds, fenced units of work, leases, dead letters.
//! - [`marketplace`]: the CardTrader API client: rate limiter, circuit breaker, retries, tolerant types.
//! - [`http`]: the admin HTTP listener: `/metrics`, `/livez`, `/readyz` (webhooks have the public one).
//! - [`sync`]: bulk sync of CardTrader inventories: streamed export, chunk transactions, sweep, scheduler.
//! - [`purchase`]: purchases as compensating sagas: pure state machine, fenced step log, the driver job.
//! - [`inventory`]: listing, edits committed with their push outbox row, pushes, storefront offers.
//! - [`webhooks`]: CardTrader order webhooks: signed intake, stock applied once per order.
//! - [`storage`]: PostgreSQL, MySQL and Redis pools, their supervisor, migrations.
//! - [`rate_limit`]: per-seller adaptive CardTrader rate limits in Redis, with an in-process fallback.
//! - [`retry`]: the named, bounded, full-jitter retry policies every retry uses.
//! - [`rounds`]: the clock of the periodic rounds (scheduler, push re-queuer, retention).
//! - [`readiness`]: the SERVING flag behind health, `/readyz` and shutdown.
//! - [`retention`]: deletes what ended long ago through each table's owner; table-size gauges.
//! - [`domain`]: pure identifier types shared by the capabilities.
//! - [`metrics`], [`telemetry`], [`shutdown`]: Prometheus metrics, logs and traces, the stop signal.

// The CardTrader call futures (limiter + breaker + retries + reqwest) nest deeper than the default 128.
#![recursion_limit = "256"]

pub mod accounts;
pub mod api;
pub mod app;
pub mod blueprints;
pub mod config;
pub mod domain;
pub mod failpoint;
pub mod http;
pub mod inventory;
pub mod jobs;
pub mod legacy;
pub mod marketplace;
pub mod metrics;
pub mod purchase;
pub mod rate_limit;
pub mod readiness;
pub mod retention;
pub mod retry;
pub mod rounds;
pub mod shutdown;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod webhooks;

pub use api::pb;
pub use app::App;

/// Crate version and the git revision it was built from, e.g. `0.1.0 (3f2a9c1)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BRX_GIT_REV"), ")");
