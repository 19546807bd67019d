//! The ceiling: the two CardTrader calls a purchase makes (the export filtered by the item's blueprint,
//! then a decrement of one unit), sent straight to the simulator by as many workers as there are
//! buyers, over the same sellers and items, without the service.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Item, Seller};
use crate::loadtest::{rig::Rig, simulator::SimulatorApi};

/// Pairs per seller: 180 requests, below the simulator's 200 per 10 s, so none is refused and the
/// figure is the simulator's speed, not its rate limit.
pub(super) const PAIRS_PER_SELLER: u64 = 90;
/// How long the phases' requests take to leave every seller's 10-second window, with a margin.
const WINDOW: Duration = Duration::from_secs(11);

/// What the ceiling measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ceiling {
    /// Pairs answered 2xx (and whose export listed the item).
    pub(super) pairs: u64,
    /// Pairs that failed either call.
    pub(super) failed: u64,
    /// First pair sent → last pair answered.
    pub(super) elapsed: Duration,
    /// Workers.
    pub(super) workers: u32,
}

impl Ceiling {
    /// Successful pairs per second.
    pub(super) fn rate(&self) -> f64 {
        self.pairs as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Waits for the sellers' rate-limit windows to empty, then sends `PAIRS_PER_SELLER` pairs for every
/// seller, spread evenly, from `workers` workers; items in `skip` (stock lowered) are left alone.
pub(super) async fn measure(
    rig: &Rig,
    sellers: &[Seller],
    skip: &HashSet<i64>,
    workers: u32,
) -> anyhow::Result<Ceiling> {
    tokio::time::sleep(WINDOW).await;
    let targets: Arc<Vec<Seller>> = Arc::new(
        sellers
            .iter()
            .map(|seller| Seller {
                items: seller
                    .items
                    .iter()
                    .filter(|item| !skip.contains(&item.product_id))
                    .copied()
                    .collect(),
                ..seller.clone()
            })
            .filter(|seller| !seller.items.is_empty())
            .collect(),
    );
    let total = targets.len() as u64 * PAIRS_PER_SELLER;
    let (next, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let simulator = rig.simulator.api();
        let (targets, next, failed) = (targets.clone(), next.clone(), failed.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let seller = &targets[(n % targets.len() as u64) as usize];
                let item = seller.items[rand::random_range(0..seller.items.len())];
                if let Err(err) = pair(&simulator, seller.number, item).await {
                    tracing::debug!(error = format!("{err:#}"), "ceiling pair failed");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    let failed = failed.load(Ordering::Relaxed);
    Ok(Ceiling {
        pairs: total - failed,
        failed,
        elapsed: started.elapsed(),
        workers,
    })
}

/// What a purchase's line sends: the export of the item's blueprint (the product must be in it),
/// then a decrement of one unit.
async fn pair(simulator: &SimulatorApi, seller: u32, item: Item) -> anyhow::Result<()> {
    let (product, blueprint) = (item.product_id, item.blueprint_id);
    let listed = simulator.export(seller, Some(blueprint)).await?;
    anyhow::ensure!(
        listed.iter().any(|p| p.id == product && p.quantity >= 1),
        "product {product} is not in its blueprint's export"
    );
    simulator.increment(seller, product, -1).await
}
