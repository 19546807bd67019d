//! After a phase: waits until every stored event is applied, then checks the invariant. Every item's
//! local quantity is its quantity at the phase's start less the units of the distinct orders whose
//! deliveries were answered 200, exactly; each such order took stock once (one `took …` outcome, one
//! `webhook_orders` row with `stock_taken`); every event answered 200 is stored, and none failed.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use sqlx::PgPool;

use super::{Phase, deliveries::Ledger};
use crate::loadtest::measure;

/// How often `webhook_events` is read while the last events are applied.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Violations described in full; the rest are only counted.
const DESCRIBED: usize = 10;

/// Every item's local quantity at an instant, by product id (the simulator gives each seller its own
/// range of ids, so a product id alone names one seller's product).
#[derive(Debug)]
pub(super) struct Stock(HashMap<i64, i64>);

impl Stock {
    /// Every row of `inventory_items`.
    pub(super) async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        let rows: Vec<(i64, i32)> =
            sqlx::query_as("SELECT product_id, quantity FROM inventory_items")
                .fetch_all(pool)
                .await?;
        Ok(Self(
            rows.into_iter()
                .map(|(product, quantity)| (product, i64::from(quantity)))
                .collect(),
        ))
    }
}

/// Waits until no stored event is left unapplied; returns how long that took.
pub(super) async fn wait_until_applied(
    pool: &PgPool,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE applied_at IS NULL")
                .fetch_one(pool)
                .await?;
        if pending == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            anyhow::bail!("{pending} webhook events still unapplied after {timeout:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// What the check found for one phase.
#[derive(Debug)]
pub(super) struct Check {
    pub(super) items: usize,
    /// Distinct orders with a delivery answered 200, and the units they took.
    pub(super) orders: u64,
    pub(super) units: i64,
    /// Distinct orders none of whose deliveries was answered 200: stored or not, nobody can say.
    pub(super) uncertain: u64,
    /// Events of the phase in `webhook_events`, and distinct event ids answered 200.
    pub(super) events_stored: i64,
    pub(super) events_answered: usize,
    /// The phase's events' outcomes, most frequent first.
    pub(super) outcomes: Vec<(String, i64)>,
    /// Stored → applied, µs, as `received_at` and `applied_at` say.
    pub(super) apply_lag: Histogram<u64>,
    pub(super) violations: Vec<String>,
    pub(super) violation_count: usize,
}

impl Check {
    fn violation(&mut self, text: String) {
        self.violation_count += 1;
        if self.violations.len() < DESCRIBED {
            self.violations.push(text);
        }
    }
}

/// Checks the stock and the phase's events against `before` and what the senders delivered.
pub(super) async fn check(
    pool: &PgPool,
    before: &Stock,
    ledger: &Ledger,
    phase: Phase,
) -> anyhow::Result<Check> {
    let (low, high) = phase.order_range();
    let stored = ledger.orders.values().filter(|order| order.stored).count() as u64;
    let taken = ledger.taken();
    let mut check = Check {
        items: before.0.len(),
        orders: stored,
        units: taken.values().sum(),
        uncertain: ledger.orders.len() as u64 - stored,
        events_stored: 0,
        events_answered: ledger.events.len(),
        outcomes: outcomes(pool, low, high).await?,
        apply_lag: apply_lag(pool, low, high).await?,
        violations: Vec::new(),
        violation_count: 0,
    };
    check_stock(&mut check, before, &Stock::read(pool).await?, &taken);
    let (events, failed, took, taken_orders): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL), \
                count(*) FILTER (WHERE outcome LIKE 'took %'), \
                (SELECT count(*) FROM webhook_orders \
                 WHERE order_id >= $1 AND order_id < $2 AND stock_taken) \
         FROM webhook_events WHERE object_id >= $1 AND object_id < $2",
    )
    .bind(low)
    .bind(high)
    .fetch_one(pool)
    .await?;
    check.events_stored = events;
    let answered = check.events_answered as i64;
    // With uncertain orders a refused delivery may still have been stored; the counts then only
    // bound each other.
    let exact = check.uncertain == 0;
    let orders = stored as i64;
    if events < answered || (exact && events != answered) {
        check.violation(format!(
            "{events} events stored, {answered} distinct event ids answered 200"
        ));
    }
    for (what, count) in [
        ("took stock", took),
        ("are marked stock_taken", taken_orders),
    ] {
        if count < orders || (exact && count != orders) {
            check.violation(format!(
                "{count} orders {what}, {orders} orders had a delivery answered 200"
            ));
        }
    }
    if failed > 0 {
        check.violation(format!("{failed} events could not be applied (error set)"));
    }
    Ok(check)
}

/// Every item's quantity against its start less the units taken; an item an uncertain order named
/// is only checked not to have lost more than that order could take.
fn check_stock(check: &mut Check, before: &Stock, after: &Stock, taken: &HashMap<i64, i64>) {
    for (product, &start) in &before.0 {
        let Some(&now) = after.0.get(product) else {
            check.violation(format!("product {product}: local row gone"));
            continue;
        };
        let expected = start - taken.get(product).copied().unwrap_or(0);
        if now != expected && (check.uncertain == 0 || now > expected) {
            check.violation(format!(
                "product {product}: local {now}, expected {expected} ({start} at the start)"
            ));
        }
    }
}

/// The phase's events grouped by outcome.
async fn outcomes(pool: &PgPool, low: i64, high: i64) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT coalesce(outcome, 'none'), count(*) FROM webhook_events \
         WHERE object_id >= $1 AND object_id < $2 GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .bind(low)
    .bind(high)
    .fetch_all(pool)
    .await?)
}

/// Stored → applied of each of the phase's events, µs.
async fn apply_lag(pool: &PgPool, low: i64, high: i64) -> anyhow::Result<Histogram<u64>> {
    let lags: Vec<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM applied_at - received_at) * 1000000)::bigint \
         FROM webhook_events WHERE object_id >= $1 AND object_id < $2 AND applied_at IS NOT NULL",
    )
    .bind(low)
    .bind(high)
    .fetch_all(pool)
    .await?;
    let mut histogram = measure::histogram();
    for lag in lags {
        histogram.saturating_record(lag.max(0).unsigned_abs());
    }
    Ok(histogram)
}
