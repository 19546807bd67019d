//! The purchases scenario (issue #6): concurrent buyers calling PurchaseService.Purchase over many
//! sellers' items: closed-loop for the most the service does, then paced at `--rate` for the latency
//! at that rate, clean and then with CardTrader faults and some stock lowered behind the shop's back.
//! After each phase the stock of both sides is checked against the sales, and the rate is set
//! against the raw CardTrader calls a purchase makes, measured in the same run.

mod answers;
mod buyers;
mod ceiling;
mod figures;
mod report;
mod stock;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::PgPool;

use super::{LoadtestArgs, measure::thousands, rig::Rig, scale};
use brx_sync::config::Config;
use brx_sync::domain::UserId;
use brx_sync::jobs::KindName;
use cardtrader_sim::Faults;

/// Units every item gets on both sides before the first sync: more than any phase can sell.
const STOCK: i64 = 100_000;
/// Share of the items whose CardTrader stock is lowered behind the shop's back before the faults
/// phase.
const LOWERED_SHARE: f64 = 0.05;
/// The replica's CardTrader request timeout in this scenario: a timeout-after-apply fault hangs its
/// request until the client gives up, and the default 30 s would hold a worker slot that long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Sellers set up at once (exports and quantity changes against the simulator).
const SETUP_CONCURRENCY: usize = 16;
/// How often the purchases table is read while the last purchases end.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The faults of the faults phase, on every CardTrader call.
fn faults() -> Faults {
    Faults {
        error_5xx_rate: 0.04,
        timeout_after_apply_rate: 0.01,
        ..Faults::default()
    }
}

/// The replica's settings for this scenario: the command line's, with the short CardTrader request
/// timeout the faults phase needs.
pub(super) fn replica_config(mut config: Config) -> Config {
    config.cardtrader.request_timeout = REQUEST_TIMEOUT;
    config
}

/// A seller as the shop lists it after the sync.
#[derive(Debug, Clone)]
struct Seller {
    /// Simulator seller number (`sim-token-N`).
    number: u32,
    user: UserId,
    items: Vec<Item>,
}

/// One item on sale: its CardTrader product and blueprint.
#[derive(Debug, Clone, Copy)]
struct Item {
    product_id: i64,
    blueprint_id: i64,
}

/// The buying phases, in the order they run; their purchases' idempotency keys start with the
/// phase's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Every buyer sends its next purchase as soon as the previous one answered: the throughput.
    /// With a fixed number of buyers its latency is buyers / rate (Little's law), so it is not the
    /// phase to judge latency by.
    ClosedLoop,
    /// The buyers together offer `--rate` purchases a second; no faults.
    Paced,
    /// Paced as well, with CardTrader faults and some stock lowered behind the shop's back.
    Faults,
}

impl Phase {
    fn key_prefix(self) -> &'static str {
        match self {
            Phase::ClosedLoop => "closed",
            Phase::Paced => "paced",
            Phase::Faults => "faults",
        }
    }

    /// How the report and the progress lines name the phase.
    fn name(self) -> &'static str {
        match self {
            Phase::ClosedLoop => "closed loop",
            Phase::Paced => "paced",
            Phase::Faults => "paced with faults",
        }
    }

    fn faults(self) -> Option<Faults> {
        match self {
            Phase::ClosedLoop | Phase::Paced => None,
            Phase::Faults => Some(faults()),
        }
    }

    fn paced(self) -> bool {
        self != Phase::ClosedLoop
    }
}

/// Runs the scenario and prints its report; fails when the stock invariant was violated.
pub(super) async fn run(rig: &Rig, args: &LoadtestArgs) -> anyhow::Result<()> {
    print_settings(&rig.config);
    let users = rig
        .connect_sellers(args.sellers(), args.connect_concurrency)
        .await?;
    rig.stock_up(args.sellers(), STOCK, SETUP_CONCURRENCY)
        .await?;
    let sellers = Arc::new(sync_sellers(rig, &users, args.timeout).await?);
    let closed_loop = run_phase(rig, &sellers, args, Phase::ClosedLoop).await?;
    let paced = run_phase(rig, &sellers, args, Phase::Paced).await?;
    let lowered = lower_stock(rig, &sellers).await?;
    let faulted = run_phase(rig, &sellers, args, Phase::Faults).await?;
    let peak_in_10s = rig.simulator.stats(args.sellers()).await?.peak_in_10s;
    println!(
        "  run:   ceiling: {} pairs of CardTrader calls straight to the simulator, after 11 s for the \
         sellers' rate-limit windows to empty",
        thousands(sellers.len() as u64 * ceiling::PAIRS_PER_SELLER)
    );
    let ceiling = ceiling::measure(rig, &sellers, &lowered, args.buyers()).await?;
    let report = report::Report {
        config: &rig.config,
        args,
        sellers: &sellers,
        lowered: lowered.len(),
        peak_in_10s,
        ceiling,
        phases: [closed_loop, paced, faulted],
    };
    report.print();
    report.verdict()
}

fn print_settings(config: &Config) {
    println!(
        "  replica: interactive concurrency {}, PostgreSQL pool {}, CardTrader request timeout {:?} \
         (set for this scenario), purchase deadline {:?}, RPC timeout {:?}",
        config.jobs.interactive_concurrency,
        config.storage.pg_max_connections,
        config.cardtrader.request_timeout,
        config.jobs.purchase_deadline,
        config.server.rpc_timeout,
    );
}

/// Fully syncs every seller (as the scale scenario does) and returns what the shop then lists.
async fn sync_sellers(
    rig: &Rig,
    users: &[UserId],
    timeout: Duration,
) -> anyhow::Result<Vec<Seller>> {
    let started = Instant::now();
    scale::start_all(rig, users).await?;
    scale::wait_for_jobs(&rig.monitor, users.len() as u64, timeout).await?;
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = $1 AND state <> 'succeeded'")
            .bind(KindName::SyncFull.as_str())
            .fetch_one(&rig.monitor)
            .await?;
    anyhow::ensure!(failed == 0, "{failed} full syncs did not succeed");
    let rows: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT user_id, product_id, blueprint_id FROM inventory_items ORDER BY product_id",
    )
    .fetch_all(&rig.monitor)
    .await?;
    let sellers: Vec<Seller> = (1..)
        .zip(users)
        .map(|(number, user)| Seller {
            number,
            user: *user,
            items: rows
                .iter()
                .filter(|(owner, _, _)| *owner == user.as_uuid())
                .map(|&(_, product_id, blueprint_id)| Item {
                    product_id,
                    blueprint_id,
                })
                .collect(),
        })
        .filter(|seller| !seller.items.is_empty())
        .collect();
    anyhow::ensure!(
        !sellers.is_empty(),
        "the shop lists no items after the sync"
    );
    println!(
        "  setup: {} full syncs ended in {:.1} s; the shop lists {} items of {} sellers",
        users.len(),
        started.elapsed().as_secs_f64(),
        thousands(rows.len() as u64),
        sellers.len()
    );
    Ok(sellers)
}

/// Lowers CardTrader's stock of a random `LOWERED_SHARE` of the items to 0, 1 or 2 units (0 deletes
/// the product) behind the shop's back; returns their product ids.
async fn lower_stock(rig: &Rig, sellers: &[Seller]) -> anyhow::Result<HashSet<i64>> {
    let items: Vec<(u32, i64)> = sellers
        .iter()
        .flat_map(|seller| {
            let number = seller.number;
            seller
                .items
                .iter()
                .map(move |item| (number, item.product_id))
        })
        .collect();
    let count = ((items.len() as f64 * LOWERED_SHARE).round() as usize).clamp(1, items.len());
    let chosen = rand::seq::index::sample(&mut rand::rng(), items.len(), count).into_vec();
    let api = rig.simulator.api();
    let mut lowered = HashSet::new();
    for (k, index) in chosen.into_iter().enumerate() {
        let (seller, product) = items[index];
        api.set_quantity(seller, product, (k % 3) as i64).await?;
        lowered.insert(product);
    }
    println!(
        "  setup: {count} items' CardTrader stock lowered to 0, 1 or 2 units behind the shop's back"
    );
    Ok(lowered)
}

/// What one phase measured and found.
#[derive(Debug)]
struct PhaseRun {
    phase: Phase,
    answers: answers::Answers,
    traffic: figures::Traffic,
    counters: figures::Counters,
    check: stock::Check,
    jobs: figures::JobSpans,
}

/// Buys for the phase's budget under its faults, waits for every purchase to end, and checks the
/// stock against the phase's start.
async fn run_phase(
    rig: &Rig,
    sellers: &Arc<Vec<Seller>>,
    args: &LoadtestArgs,
    phase: Phase,
) -> anyhow::Result<PhaseRun> {
    let before = stock::Stock::read(rig, sellers).await?;
    let api = rig.simulator.api();
    if let Some(faults) = phase.faults() {
        api.set_faults(&faults).await?;
    }
    let traffic_before = rig.simulator.stats_per_token(args.sellers()).await?;
    let counters_before = figures::Counters::read(rig).await?;
    let answers = buyers::buy(rig, sellers, phase, args).await?;
    let settled = settle(&rig.monitor, args.timeout).await?;
    let traffic = figures::Traffic::between(
        &traffic_before,
        &rig.simulator.stats_per_token(args.sellers()).await?,
    );
    let counters = figures::Counters::read(rig).await?.since(&counters_before);
    if phase.faults().is_some() {
        api.set_faults(&Faults::default()).await?;
    }
    let check = stock::check(rig, sellers, &before, phase.key_prefix()).await?;
    let jobs = figures::JobSpans::read(&rig.monitor, phase).await?;
    println!(
        "  run:   {} phase: {} purchases answered in {:.1} s, the last one ended {:.1} s later; \
         stock checked",
        phase.name(),
        thousands(answers.tally.total()),
        answers.wall.as_secs_f64(),
        settled.as_secs_f64()
    );
    Ok(PhaseRun {
        phase,
        answers,
        traffic,
        counters,
        check,
        jobs,
    })
}

/// Waits until no purchase is still running; returns how long that took.
async fn settle(pool: &PgPool, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM purchases \
             WHERE state NOT IN ('completed', 'failed', 'requires_attention')",
        )
        .fetch_one(pool)
        .await?;
        if running == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            anyhow::bail!("{running} purchases still running after {timeout:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
