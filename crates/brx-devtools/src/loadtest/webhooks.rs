//! The webhooks scenario (issue #7): concurrent senders POSTing signed CardTrader order deliveries to
//! `POST /webhooks/cardtrader/{user_id}` on the side port, closed-loop for the most it answers, then
//! paced at `--webhook-rate` for the latency at that rate, against `GET /livez` on the same port as a
//! ceiling. After each phase every event must be applied and every order must have taken its units
//! from local stock exactly once, redeliveries and later updates of the same order notwithstanding.

mod ceiling;
mod check;
pub(super) mod deliveries;
mod report;
mod senders;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};

use super::{
    LoadtestArgs,
    measure::{self, thousands},
    rig::Rig,
    scale,
};
use brx_sync::config::Config;
use brx_sync::domain::UserId;
use brx_sync::jobs::KindName;

/// Units every item gets on CardTrader before the first sync: more than any phase can take.
const STOCK: i64 = 1_000_000;
/// Sellers set up at once (exports and quantity changes against the simulator).
const SETUP_CONCURRENCY: usize = 16;

/// A seller as the shop lists it after the sync, with what it takes to sign its deliveries.
#[derive(Debug, Clone)]
struct Seller {
    /// `http://…/webhooks/cardtrader/{user}` on the replica's side port.
    url: String,
    /// The shared secret CardTrader signs this seller's webhooks with (`GET /info`).
    secret: String,
    items: Vec<Item>,
}

/// One item on sale, with what an order line shows of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Item {
    pub(super) product_id: i64,
    pub(super) blueprint_id: i64,
    name: String,
    price_cents: i64,
    properties: serde_json::Value,
}

impl Item {
    /// The items `user` has in the shop after its sync, by product id.
    pub(super) async fn of_seller(
        monitor: &sqlx::PgPool,
        user: brx_sync::domain::UserId,
    ) -> Result<Vec<Self>, sqlx::Error> {
        sqlx::query_as(
            "SELECT product_id, blueprint_id, name, price_cents, properties FROM inventory_items \
             WHERE user_id = $1 ORDER BY product_id",
        )
        .bind(user.as_uuid())
        .fetch_all(monitor)
        .await
    }
}

/// The sending phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Every sender POSTs its next delivery as soon as the previous one answered: the most the route
    /// answers. Its latency is senders / rate (Little's law), so it is not the phase to judge by.
    ClosedLoop,
    /// The senders together offer `--webhook-rate` deliveries a second.
    Paced,
}

impl Phase {
    /// How the report and the progress lines name the phase.
    fn name(self) -> &'static str {
        match self {
            Phase::ClosedLoop => "closed loop",
            Phase::Paced => "paced",
        }
    }

    /// The phase's order ids start here, so each phase's events and orders can be told apart.
    fn first_order(self) -> i64 {
        match self {
            Phase::ClosedLoop => 1_000_000_000,
            Phase::Paced => 2_000_000_000,
        }
    }

    /// One past the phase's last possible order id.
    fn order_range(self) -> (i64, i64) {
        (self.first_order(), self.first_order() + 1_000_000_000)
    }
}

/// Runs the scenario and prints its report; fails when an answer was not 200 or the stock invariant
/// was violated.
pub(super) async fn run(rig: &Rig, args: &LoadtestArgs) -> anyhow::Result<()> {
    print_settings(&rig.config);
    let users = rig
        .connect_sellers(args.sellers(), args.connect_concurrency)
        .await?;
    rig.stock_up(args.sellers(), STOCK, SETUP_CONCURRENCY)
        .await?;
    let sellers = Arc::new(sync_sellers(rig, &users, args.timeout).await?);
    println!(
        "  run:   ceiling: GET /livez on the side port, {} senders back to back for {:?}",
        args.senders,
        args.duration()
    );
    let ceiling = ceiling::measure(rig, args.senders, args.duration()).await?;
    let closed_loop = run_phase(rig, &sellers, args, Phase::ClosedLoop).await?;
    let paced = run_phase(rig, &sellers, args, Phase::Paced).await?;
    let report = report::Report {
        args,
        config: &rig.config,
        sellers: &sellers,
        ceiling,
        phases: [closed_loop, paced],
    };
    report.print();
    report.verdict()
}

fn print_settings(config: &Config) {
    println!(
        "  replica: PostgreSQL pool {}, interactive concurrency {} (the apply jobs' lane), job poll \
         interval {:?}",
        config.storage.pg_max_connections,
        config.jobs.interactive_concurrency,
        config.jobs.poll_interval,
    );
}

/// Fully syncs every seller (as the scale scenario does) and returns what the shop then lists, with
/// each seller's webhook URL and shared secret.
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
    let secrets = shared_secrets(rig, users.len()).await?;
    let mut sellers = Vec::with_capacity(users.len());
    for (user, secret) in users.iter().zip(secrets) {
        let items = Item::of_seller(&rig.monitor, *user).await?;
        if !items.is_empty() {
            let url = format!("http://{}/webhooks/cardtrader/{user}", rig.http_addr);
            sellers.push(Seller { url, secret, items });
        }
    }
    anyhow::ensure!(
        !sellers.is_empty(),
        "the shop lists no items after the sync"
    );
    let items: usize = sellers.iter().map(|seller| seller.items.len()).sum();
    println!(
        "  setup: {} full syncs ended in {:.1} s; the shop lists {} items of {} sellers",
        users.len(),
        started.elapsed().as_secs_f64(),
        thousands(items as u64),
        sellers.len()
    );
    Ok(sellers)
}

/// The shared secret of simulator sellers 1..=n, in order, as CardTrader's `GET /info` shows it.
async fn shared_secrets(rig: &Rig, n: usize) -> anyhow::Result<Vec<String>> {
    let api = rig.simulator.api();
    futures::stream::iter(1..=n as u32)
        .map(|seller| {
            let api = api.clone();
            async move { api.shared_secret(seller).await }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// What one phase measured and found.
#[derive(Debug)]
struct PhaseRun {
    phase: Phase,
    answers: senders::Answers,
    /// The replica's PostgreSQL connections while the senders ran.
    connections: measure::ConnectionPeak,
    /// Last answer → every event of the run applied.
    applied_after: Duration,
    check: check::Check,
}

/// Sends for `--duration`, waits until every stored event is applied, and checks the stock against
/// the phase's start.
async fn run_phase(
    rig: &Rig,
    sellers: &Arc<Vec<Seller>>,
    args: &LoadtestArgs,
    phase: Phase,
) -> anyhow::Result<PhaseRun> {
    let before = check::Stock::read(&rig.monitor).await?;
    let sampler =
        measure::ConnectionSampler::start(rig.database_options.clone(), &rig.database).await?;
    let answers = senders::send(sellers, phase, args).await;
    let connections = sampler.finish().await?;
    let answers = answers?;
    let applied_after = check::wait_until_applied(&rig.monitor, args.timeout).await?;
    let check = check::check(&rig.monitor, &before, &answers.ledger, phase).await?;
    println!(
        "  run:   {} phase: {} deliveries answered in {:.1} s, every event applied {:.1} s later; \
         stock checked",
        phase.name(),
        thousands(answers.total()),
        answers.wall.as_secs_f64(),
        applied_after.as_secs_f64()
    );
    Ok(PhaseRun {
        phase,
        answers,
        connections,
        applied_after,
        check,
    })
}
