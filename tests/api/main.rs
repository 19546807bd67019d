//! The integration suite: each test starts the real server on port 0 against the real PostgreSQL,
//! MariaDB and Redis of this machine, with its own database and key prefix.

// A failed unwrap is how a test reports a broken expectation.
#![allow(clippy::unwrap_used)]
// The futures of job handlers written here nest every layer of the CardTrader client (rate limiter,
// retries, deadlines); a non-incremental build (CI) computes their layout past the default depth.
#![recursion_limit = "256"]

mod helpers;

mod accounts;
mod admin;
mod auth;
mod blueprints;
mod catalog_outage;
mod dashboards;
mod deploy;
mod errors;
mod expansions;
mod health;
mod inventory;
mod jobs;
mod jobs_order;
mod legacy_import;
mod lifecycle;
mod load_shedding;
mod marketplace;
mod metrics;
mod pooler;
mod purchase_crash;
mod purchase_guarantees;
mod purchase_reserve;
mod purchases;
mod push_guarantees;
mod rate_limit;
mod reflection;
mod retention;
mod secrets;
mod storage;
mod streams;
mod sync_chunks;
mod sync_faults;
mod sync_jobs;
mod sync_rpc;
mod sync_scheduler;
mod telemetry;
mod webhooks;
