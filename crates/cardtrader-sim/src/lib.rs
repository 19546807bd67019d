//! A faithful CardTrader API v2 simulator, for testing a CardTrader integration without the real
//! marketplace: the documented shapes, the observed quirks, per-token rate limits, streaming export of
//! lazily generated inventories, bulk jobs, cart/purchase/orders, signed webhooks and fault switches.
//! Start it in-process with [`SimulatorHandle::start`], or run the `cardtrader-sim` binary. See the
//! crate's README for the routes, quirks and switches.
//!
//! Layout: `catalogue`/`inventory` generate data from ids, `ops`/`props` apply product writes,
//! `rate_limit`/`faults` decide how a request is answered, `routes/` and `admin` are the HTTP edges,
//! `handle` is the in-process API tests drive.

mod admin;
mod catalogue;
mod commerce;
mod errors;
mod faults;
mod handle;
mod hash;
mod inventory;
mod jobs;
mod ops;
mod props;
mod rate_limit;
mod routes;
mod state;
mod webhook;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use catalogue::{CATALOGUE_BLUEPRINTS, MAX_BLUEPRINT, blueprint_expansion};
pub use handle::SimulatorHandle;
pub use rate_limit::TokenStats;
pub use webhook::sign as webhook_signature;

/// Arguments of the `cardtrader-sim` binary.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorArgs {
    /// Listen address.
    #[arg(long, env = "BRX_SIM_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// Seeded sellers (`sim-token-1` … `sim-token-N`).
    #[arg(long, env = "BRX_SIM_SELLERS", default_value_t = 10)]
    pub sellers: u32,
    /// Products generated for each seeded seller.
    #[arg(long, env = "BRX_SIM_PRODUCTS_PER_SELLER", default_value_t = 1000)]
    pub products_per_seller: u64,
    /// Seed of every generated value.
    #[arg(long, env = "BRX_SIM_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Marketplace requests allowed per second and token (the doc says both 1 and 10).
    #[arg(long, env = "BRX_SIM_MARKETPLACE_PER_SECOND", default_value_t = 10)]
    pub marketplace_per_second: u32,
    /// Requests allowed per 10 seconds and token, all endpoints together.
    #[arg(long, env = "BRX_SIM_GENERAL_PER_10S", default_value_t = 200)]
    pub general_per_10s: u32,
    /// Job polls allowed per second and token.
    #[arg(long, env = "BRX_SIM_JOBS_PER_SECOND", default_value_t = 1)]
    pub jobs_per_second: u32,
    /// Send Retry-After/X-RateLimit-* headers on 429 (CardTrader sends none).
    #[arg(long, env = "BRX_SIM_RATE_LIMIT_HEADERS")]
    pub rate_limit_headers: bool,
    /// Add the undocumented `expansion: {id}` object to `/products/export` rows (the documented
    /// export has none; one client maps it, CARDTRADER.md §2.4).
    #[arg(long, env = "BRX_SIM_EXPORT_EXPANSION")]
    pub export_expansion: bool,
}

/// Everything that shapes a simulator run.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Seeded sellers, `sim-token-1` … `sim-token-N`.
    pub sellers: u32,
    /// Products generated for each seeded seller.
    pub products_per_seller: u64,
    /// Seed of every generated value.
    pub seed: u64,
    /// Marketplace requests per second and token.
    pub marketplace_per_second: u32,
    /// Requests per 10 seconds and token, all endpoints.
    pub general_per_10s: u32,
    /// Job polls per second and token.
    pub jobs_per_second: u32,
    /// Send Retry-After/X-RateLimit-* headers on 429.
    pub rate_limit_headers: bool,
    /// Add the undocumented `expansion` object to export rows (off: the documented shape).
    pub export_expansion: bool,
    /// Faults active from the start.
    pub faults: Faults,
    /// How long a bulk job takes from submission to `completed` (a third of it `pending`).
    pub job_duration_ms: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            sellers: 10,
            products_per_seller: 1000,
            seed: 42,
            marketplace_per_second: 10,
            general_per_10s: 200,
            jobs_per_second: 1,
            rate_limit_headers: false,
            export_expansion: false,
            faults: Faults::default(),
            job_duration_ms: 300,
        }
    }
}

impl From<&SimulatorArgs> for SimulatorConfig {
    fn from(args: &SimulatorArgs) -> Self {
        Self {
            sellers: args.sellers,
            products_per_seller: args.products_per_seller,
            seed: args.seed,
            marketplace_per_second: args.marketplace_per_second,
            general_per_10s: args.general_per_10s,
            jobs_per_second: args.jobs_per_second,
            rate_limit_headers: args.rate_limit_headers,
            export_expansion: args.export_expansion,
            ..Self::default()
        }
    }
}

/// Injected misbehaviour; rates are probabilities per request in `0.0..=1.0`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Added to every API request.
    pub latency_ms: u64,
    /// Share of requests answered 500/502/503 with the JSON envelope.
    pub error_5xx_rate: f64,
    /// Share of requests answered 500/502/503 with an HTML page.
    pub html_error_rate: f64,
    /// Share of requests that hang 60 s, then answer 504 without doing anything.
    pub timeout_rate: f64,
    /// Share of requests applied, then hung 60 s (the client cannot know the outcome).
    pub timeout_after_apply_rate: f64,
    /// Share of requests held for `apply_delay_ms` before they are applied and answered: a client
    /// with a shorter timeout gives up, and the write lands later (a request queued on the server).
    pub delayed_apply_rate: f64,
    /// How long a delayed request is held.
    pub apply_delay_ms: u64,
    /// The next N API requests answer 429.
    pub burst_429: u32,
    /// Extra delay before `/products/export` starts answering.
    pub export_delay_ms: u64,
    /// When not empty, the rates above apply only to requests whose path ends with this (e.g.
    /// `/increment`), so a test can fail one kind of call and let the others through.
    pub path_ends_with: String,
    /// When not 0, only this many requests are faulted (latency excepted); then the rates stop.
    pub max_faulted: u32,
}

/// One simulated CardTrader account: its token, ids and webhook secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimSeller {
    /// Bearer token, `sim-token-{n}`.
    pub token: String,
    /// CardTrader user id.
    pub user_id: i64,
    /// CardTrader app id (`/info` `id`).
    pub app_id: i64,
    /// Public username, as in marketplace listings and `/shipping_methods?username=`.
    pub username: String,
    /// Hex secret the account's webhooks are signed with.
    pub shared_secret: String,
}

/// Serves the simulator until SIGTERM/SIGINT.
pub async fn run(args: SimulatorArgs) -> anyhow::Result<()> {
    let handle = SimulatorHandle::start(SimulatorConfig::from(&args), args.addr).await?;
    tracing::info!(base_url = %handle.base_url(), sellers = args.sellers, "CardTrader simulator listening");
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
