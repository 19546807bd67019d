//! `brx-sync loadtest`: the real replica, in-process, against the simulator in a child process. `scale`
//! starts many sellers' full syncs at once and reports throughput, job latency, peak RSS and PostgreSQL
//! connections; `isolation` measures GetSyncStatus latency while one large sync runs; `purchases`
//! measures PurchaseService.Purchase over many sellers, closed-loop and then paced, clean and with
//! CardTrader faults, and checks that stock adds up on both sides afterwards; `webhooks` measures
//! how fast `POST /webhooks/cardtrader/{user_id}` answers signed order deliveries and checks that each
//! order took local stock once.
//!
//! Layout: `rig` sets up and tears down everything a scenario needs, `simulator` is the child process,
//! `measure` holds the samplers and number formatting, `scale`, `isolation`, `purchases` and
//! `webhooks` are the scenarios.

mod isolation;
mod measure;
mod purchases;
mod rig;
mod scale;
mod simulator;
mod soak;
mod webhooks;

use std::time::Duration;

use brx_sync::config::Config;

/// Arguments of `brx-sync loadtest`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Scenario::Scale)]
    pub scenario: Scenario,
    /// Sellers; 1,000 for scale and 100 for purchases and webhooks when omitted (isolation always
    /// uses one).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub sellers: Option<u32>,
    /// Products per seller; 1,000 for scale, 200,000 for isolation and 10 for purchases and webhooks
    /// when omitted.
    #[arg(long)]
    pub products: Option<u64>,
    /// ConnectAccount calls in flight while the sellers are connected.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_concurrency: u32,
    /// Concurrent GetSyncStatus callers (isolation).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub status_callers: u32,
    /// Calls per second of each GetSyncStatus caller (isolation); 0 calls back to back, which
    /// measures how the box degrades when the probe itself saturates the CPU.
    #[arg(long, default_value_t = 50)]
    pub status_rate: u32,
    /// How long each idle phase measures GetSyncStatus (isolation).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub idle_for: Duration,
    /// Concurrent buyers calling PurchaseService.CreatePurchase (100 for purchases and 8 for the soak
    /// when omitted).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub buyers: Option<u32>,
    /// How long each purchases phase (closed loop, paced, paced with faults) keeps buying, each
    /// webhooks phase (ceiling, closed loop, paced) keeps sending (20 s when omitted), and the soak's
    /// chaos runs (3 minutes when omitted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Replica processes the soak runs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,
    /// The PgBouncer (transaction mode) the soak's replicas reach PostgreSQL through; `.ci/run`
    /// starts one on this port.
    #[arg(long, default_value = "127.0.0.1:6433")]
    pub pgbouncer: std::net::SocketAddr,
    /// The soak's replicas reach PostgreSQL directly instead of through `--pgbouncer`.
    #[arg(long)]
    pub direct: bool,
    /// `BRX_LOG` of the soak's replicas, whose logs go to the soak's standard error.
    #[arg(long, default_value = "error")]
    pub replica_log: String,
    /// `BRX_JOB_LEASE` of the soak's replicas (their CardTrader budgets follow from it).
    #[arg(long = "replica-lease", id = "replica_lease", default_value = "6s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Purchases per second the buyers offer together in the paced purchases phases, each buyer
    /// on its own evenly spaced schedule.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Purchases each purchases phase makes instead of running for `--duration`.
    #[arg(long = "purchases-per-phase", id = "purchases_per_phase", value_parser = clap::value_parser!(u64).range(1..))]
    pub purchases: Option<u64>,
    /// Concurrent senders POSTing webhook deliveries (webhooks).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub senders: u32,
    /// Deliveries per second the senders offer together in the paced webhooks phase, each sender on
    /// its own evenly spaced schedule.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_rate: u32,
    /// Longest wait for the syncs (or the purchases) to end before the run counts as failed.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The load test scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Many sellers' full syncs started at once: throughput, job latency, RSS, connections.
    Scale,
    /// GetSyncStatus p99 while one large sync runs, against its idle p99.
    Isolation,
    /// Concurrent buyers calling Purchase, closed-loop (throughput), then paced at `--rate` clean and
    /// with CardTrader faults and stock lowered behind the shop's back: purchases/s against the raw
    /// CardTrader calls, latency, outcomes, compensations, and the stock invariant after each phase.
    Purchases,
    /// Concurrent senders POSTing signed CardTrader order deliveries to the webhook route,
    /// closed-loop and then paced at `--webhook-rate`, redeliveries and updates included: latency
    /// against `GET /livez` on the same port, time until every event is applied, and local stock
    /// taken exactly once per order.
    Webhooks,
    /// Several replica processes through PgBouncer with every kind of work at once, CardTrader
    /// faults, and replicas killed, drained and cut off from Redis and the catalogue; then every
    /// invariant checked: nothing lost, nothing done twice.
    Soak,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Scale => "scale",
            Scenario::Isolation => "isolation",
            Scenario::Purchases => "purchases",
            Scenario::Webhooks => "webhooks",
            Scenario::Soak => "soak",
        }
    }
}

impl LoadtestArgs {
    fn duration(&self) -> Duration {
        let default = match self.scenario {
            Scenario::Soak => Duration::from_secs(180),
            _ => Duration::from_secs(20),
        };
        self.duration.unwrap_or(default)
    }

    fn buyers(&self) -> u32 {
        let default = if self.scenario == Scenario::Soak {
            8
        } else {
            100
        };
        self.buyers.unwrap_or(default)
    }

    /// The PgBouncer the soak's replicas go through, unless `--direct`.
    fn pooler(&self) -> Option<std::net::SocketAddr> {
        (!self.direct).then_some(self.pgbouncer)
    }

    fn sellers(&self) -> u32 {
        match self.scenario {
            Scenario::Scale => self.sellers.unwrap_or(1_000),
            Scenario::Isolation => 1,
            Scenario::Purchases | Scenario::Webhooks => self.sellers.unwrap_or(100),
            Scenario::Soak => self.sellers.unwrap_or(12),
        }
    }

    fn products(&self) -> u64 {
        let default = match self.scenario {
            Scenario::Scale => 1_000,
            Scenario::Isolation => 200_000,
            Scenario::Purchases | Scenario::Webhooks => 10,
            Scenario::Soak => 40,
        };
        self.products.unwrap_or(default)
    }
}

/// Runs the chosen scenario and prints its report; tears everything down whatever the outcome, and
/// fails when a sync failed (or, for purchases and webhooks, when the stock invariant was violated).
pub async fn run(config: Config, args: LoadtestArgs) -> anyhow::Result<()> {
    if args.scenario == Scenario::Soak {
        return soak::run(config, &args).await;
    }
    let (sellers, products) = (args.sellers(), args.products());
    println!(
        "brx-sync loadtest ({}): {} sellers x {} products on one replica\n",
        args.scenario.name(),
        measure::thousands(u64::from(sellers)),
        measure::thousands(products)
    );
    let config = match args.scenario {
        Scenario::Purchases => purchases::replica_config(config),
        Scenario::Scale | Scenario::Isolation | Scenario::Webhooks | Scenario::Soak => config,
    };
    let rig = rig::Rig::start(config, sellers, products).await?;
    let scenario = async {
        match args.scenario {
            Scenario::Scale => scale::run(&rig, &args).await,
            Scenario::Isolation => isolation::run(&rig, &args).await,
            Scenario::Purchases => purchases::run(&rig, &args).await,
            Scenario::Webhooks => webhooks::run(&rig, &args).await,
            Scenario::Soak => Err(anyhow::anyhow!("the soak runs its own replicas")),
        }
    };
    let outcome = tokio::select! {
        outcome = scenario => outcome,
        () = brx_sync::shutdown::signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let stopped = rig.stop().await;
    outcome.and(stopped)
}
