//! brx-sync's developer tools, kept out of the service binary: the demo (the whole service on one
//! machine, step by step), the load tests, the shop-catalogue fixture, and the benchmarks' echo
//! ceiling. They drive the real service (`brx-sync` as a library) against the CardTrader simulator
//! (`cardtrader-sim`).
//!
//! # Layout
//! - [`demo`]: `brx-devtools demo`: catalogue, simulator, one replica, a sync, purchases, edits, webhooks.
//! - [`loadtest`]: `brx-devtools loadtest`: syncs at once, RPC isolation, purchases, webhooks.
//! - [`echo`]: the minimal tonic echo service the RPC benchmark measures as its ceiling.

pub mod demo;
pub mod loadtest;

/// Package `bench.v1`: the minimal echo service the RPC benchmark measures as its ceiling.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod echo {
    tonic::include_proto!("bench.v1");
}
