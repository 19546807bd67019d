//! After the chaos: waiting for the work to end, and the invariants, each printed with what it
//! compared. A violated invariant fails the soak.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::work::{CREATED_UNITS, Created, Ledger, Shop};
use crate::loadtest::simulator::SimulatorProcess;

/// Most requests CardTrader allows one token in 10 seconds (the simulator's default).
const GENERAL_PER_10S: u64 = 200;

/// Pending pushes, less those of items a purchase in REQUIRES_ATTENTION still holds: those wait for
/// the person who resolves the purchase, by design, and would keep the soak waiting forever.
const PENDING_PUSHES: &str = "SELECT count(*) FROM inventory_pushes ip WHERE ip.state = 'pending' \
     AND NOT EXISTS (SELECT 1 FROM purchase_lines l JOIN purchases p ON p.id = l.purchase_id \
                     WHERE p.state = 'requires_attention' AND p.user_id = ip.user_id \
                       AND l.product_id = ip.product_id)";

/// What the checks found.
#[derive(Debug, Default)]
pub(super) struct Report {
    violations: Vec<String>,
    pub(super) syncs_succeeded: u64,
    pub(super) peak_connections: i64,
}

impl Report {
    fn check(&mut self, holds: bool, what: &str, detail: String) {
        println!(
            "    {} {what}: {detail}",
            if holds { "ok " } else { "FAIL" }
        );
        if !holds {
            self.violations.push(format!("{what}: {detail}"));
        }
    }

    /// `Ok` when every invariant held.
    pub(super) fn outcome(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.violations.is_empty(),
            "{} invariants violated:\n  {}",
            self.violations.len(),
            self.violations.join("\n  ")
        );
        Ok(())
    }
}

/// Waits until every purchase has ended, every edit was pushed and every webhook applied, then syncs
/// every seller twice over (the second round reads CardTrader after the first has landed); how long
/// that took.
pub(super) async fn settle(
    monitor: &sqlx::PgPool,
    shop: &Shop,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        // Push jobs are judged by their pushes (they retry those held for a person forever).
        let (open_purchases, unapplied, other_jobs): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               (SELECT count(*) FROM purchases \
                 WHERE state NOT IN ('completed', 'failed', 'requires_attention')), \
               (SELECT count(*) FROM webhook_events WHERE applied_at IS NULL), \
               (SELECT count(*) FROM jobs WHERE state IN ('queued', 'running') \
                 AND kind NOT LIKE 'sync%' AND kind <> 'inventory_push')",
        )
        .fetch_one(monitor)
        .await?;
        let pending_pushes: i64 = sqlx::query_scalar(PENDING_PUSHES)
            .fetch_one(monitor)
            .await?;
        if open_purchases + pending_pushes + unapplied + other_jobs == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still open after {timeout:?}: {open_purchases} purchases, {pending_pushes} pushes, \
             {unapplied} webhook events, {other_jobs} other jobs"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for _round in 0..2 {
        let mut jobs = Vec::new();
        for seller in &shop.sellers {
            jobs.push(shop.start_sync(seller.user).await?);
        }
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE id::text = ANY($1) \
                 AND state NOT IN ('succeeded', 'failed', 'dead', 'cancelled')",
            )
            .bind(&jobs)
            .fetch_one(monitor)
            .await?;
            if open == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{open} final syncs still running"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(started.elapsed())
}

/// Every invariant, printed one by one.
pub(super) async fn verify(
    monitor: &sqlx::PgPool,
    shop: &Shop,
    ledger: &Ledger,
    simulator: &SimulatorProcess,
    sellers: u32,
) -> anyhow::Result<Report> {
    println!("\n  invariants");
    let mut report = Report::default();
    let api = simulator.api();
    let sales = ledger
        .sales
        .lock()
        .map(|sales| sales.clone())
        .unwrap_or_default();
    let prices = ledger
        .prices
        .lock()
        .map(|prices| prices.clone())
        .unwrap_or_default();
    let restocked = ledger
        .restocked
        .lock()
        .map(|restocked| restocked.clone())
        .unwrap_or_default();

    let creates = ledger
        .creates
        .lock()
        .map(|creates| creates.clone())
        .unwrap_or_default();
    let (mut creates_wrong, mut first_create_wrong) = (0, None);
    let (mut stock_wrong, mut local_wrong, mut price_wrong, mut reserved) = (0, 0, 0, 0_i64);
    let (mut products, mut first_wrong) = (0, None);
    let mut attention_products = 0;
    for (index, seller) in shop.sellers.iter().enumerate() {
        let exported = api.export(seller.number, None).await?;
        let upstream: HashMap<i64, (i64, i64)> = exported
            .iter()
            .map(|product| (product.id, (product.quantity, product.price_cents)))
            .collect();
        for (_, blueprint, created) in creates.iter().filter(|(of, _, _)| *of == index) {
            let listed: Vec<i64> = exported
                .iter()
                .filter(|product| product.blueprint_id == *blueprint)
                .map(|product| product.quantity)
                .collect();
            let once = listed == [i64::from(CREATED_UNITS)];
            let holds = match created {
                Created::Yes => once,
                Created::No => listed.is_empty(),
                Created::Maybe => once || listed.is_empty(),
            };
            if !holds {
                creates_wrong += 1;
                first_create_wrong.get_or_insert(format!(
                    "sim-token-{} blueprint {blueprint} ({created:?}): CardTrader lists {listed:?}",
                    seller.number
                ));
            }
        }
        let completed: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
            "SELECT l.product_id, sum(l.quantity)::int8 FROM purchase_lines l \
             JOIN purchases p ON p.id = l.purchase_id \
             WHERE p.user_id = $1 AND p.state = 'completed' GROUP BY l.product_id",
        )
        .bind(seller.user.as_uuid())
        .fetch_all(monitor)
        .await?
        .into_iter()
        .collect();
        let needing_attention: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT l.product_id FROM purchase_lines l \
             JOIN purchases p ON p.id = l.purchase_id \
             WHERE p.user_id = $1 AND p.state = 'requires_attention'",
        )
        .bind(seller.user.as_uuid())
        .fetch_all(monitor)
        .await?;
        let local: HashMap<i64, (i32, i32)> = sqlx::query_as::<_, (i64, i32, i32)>(
            "SELECT product_id, quantity, reserved_quantity FROM inventory_items WHERE user_id = $1",
        )
        .bind(seller.user.as_uuid())
        .fetch_all(monitor)
        .await?
        .into_iter()
        .map(|(id, quantity, reserved)| (id, (quantity, reserved)))
        .collect();
        for item in seller.all_items() {
            let id = item.product_id;
            products += 1;
            if needing_attention.contains(&id) {
                // A person decides what these took; their stock is not the formula's.
                attention_products += 1;
                continue;
            }
            // Restocks set the quantity; the sum of their changes is the last one less the start.
            let restocks = restocked
                .get(&(index, id))
                .map_or(0, |last| last - super::STOCK);
            let expected = super::STOCK - completed.get(&id).copied().unwrap_or(0) + restocks
                - sales.get(&(index, id)).copied().unwrap_or(0);
            let (on_cardtrader, price) = upstream.get(&id).copied().unwrap_or((0, 0));
            if on_cardtrader != expected {
                stock_wrong += 1;
                first_wrong.get_or_insert(format!(
                    "sim-token-{} product {id}: CardTrader {on_cardtrader}, expected {expected}",
                    seller.number
                ));
            }
            let (quantity, held) = local.get(&id).copied().unwrap_or((0, 0));
            if i64::from(quantity) != on_cardtrader {
                local_wrong += 1;
            }
            reserved += i64::from(held);
            if let Some(accepted) = prices.get(&(index, id))
                && *accepted != price
            {
                price_wrong += 1;
            }
        }
    }
    let totals = ledger.totals();
    report.check(
        stock_wrong == 0,
        "CardTrader stock = initial - completed purchase units - CardTrader sales + accepted restocks",
        format!(
            "{stock_wrong} of {products} products differ{} ({} restocked by the shop, \
             {attention_products} held for a person)",
            first_wrong.map(|first| format!(", e.g. {first}")).unwrap_or_default(),
            restocked.len()
        ),
    );
    let count = |kind: Created| {
        creates
            .iter()
            .filter(|(_, _, created)| *created == kind)
            .count()
    };
    report.check(
        creates_wrong == 0,
        "every accepted create on CardTrader exactly once, refused ones not at all",
        format!(
            "{} accepted, {} refused, {} unanswered; {creates_wrong} wrong{}",
            count(Created::Yes),
            count(Created::No),
            count(Created::Maybe),
            first_create_wrong
                .map(|first| format!(", e.g. {first}"))
                .unwrap_or_default()
        ),
    );
    report.check(
        local_wrong == 0,
        "local quantity = CardTrader's after the final sync",
        format!("{local_wrong} of {products} products differ"),
    );
    report.check(
        reserved == 0,
        "no reservation dangling",
        format!("{reserved} units still reserved"),
    );
    report.check(
        price_wrong == 0,
        "every accepted price edit is CardTrader's price",
        format!("{price_wrong} of {} edited products differ", prices.len()),
    );

    let (open, attention_without_reason, failed, completed): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state NOT IN ('completed', 'failed', 'requires_attention')), \
                count(*) FILTER (WHERE state = 'requires_attention' AND failure_reason IS NULL), \
                count(*) FILTER (WHERE state = 'failed'), \
                count(*) FILTER (WHERE state = 'completed') \
         FROM purchases",
    )
    .fetch_one(monitor)
    .await?;
    report.check(
        open == 0 && attention_without_reason == 0,
        "every purchase ended; REQUIRES_ATTENTION only with a reason",
        format!(
            "{completed} completed, {failed} undone, {attention_products} products held for a \
             person, {open} open, {attention_without_reason} held without a reason; {} answered, \
             {} given up by their buyer",
            totals.purchases, totals.purchases_given_up
        ),
    );

    let reasons: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(failure_reason, '(none)'), count(*) FROM purchases \
         WHERE state = 'requires_attention' GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(monitor)
    .await?;
    for (reason, count) in reasons {
        println!("         {count} held for a person: {reason}");
    }

    let (pending, pushes_failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'failed') \
         FROM inventory_pushes",
    )
    .fetch_one(monitor)
    .await?;
    let pushes_open: i64 = sqlx::query_scalar(PENDING_PUSHES)
        .fetch_one(monitor)
        .await?;
    report.check(
        pushes_open == 0 && pushes_failed == 0,
        "every accepted edit pushed",
        format!(
            "{pushes_open} pending, {pushes_failed} failed; {} waiting for a person to resolve a \
             purchase of their item",
            pending - pushes_open
        ),
    );

    let acknowledged = ledger
        .acknowledged
        .lock()
        .map(|ids| ids.clone())
        .unwrap_or_default();
    let (stored, applied): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE applied_at IS NOT NULL AND outcome <> 'error') \
         FROM webhook_events WHERE id = ANY($1)",
    )
    .bind(&acknowledged)
    .fetch_one(monitor)
    .await?;
    report.check(
        stored == acknowledged.len() as i64 && applied == stored,
        "every acknowledged webhook stored once and applied",
        format!(
            "{} acknowledged, {stored} stored, {applied} applied, {} never taken by a replica",
            acknowledged.len(),
            ledger
                .unacknowledged
                .load(std::sync::atomic::Ordering::Relaxed)
        ),
    );

    let per_token = simulator.stats_per_token(sellers).await?;
    let peak = per_token
        .iter()
        .map(|stats| stats.peak_in_10s)
        .max()
        .unwrap_or(0);
    let rejected: u64 = per_token.iter().map(|stats| stats.rejected_429).sum();
    report.check(
        peak <= GENERAL_PER_10S,
        "no seller over CardTrader's limit, all replicas together",
        format!(
            "busiest seller sent {peak} requests in 10 s (limit {GENERAL_PER_10S}); {rejected} \
             answered 429 (the injected bursts included)"
        ),
    );

    let (stale_leases, dead, succeeded): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'running' AND lease_expires_at < now()), \
                count(*) FILTER (WHERE state IN ('dead', 'failed')), \
                count(*) FILTER (WHERE state = 'succeeded' AND kind LIKE 'sync%') \
         FROM jobs",
    )
    .fetch_one(monitor)
    .await?;
    report.check(
        stale_leases == 0,
        "no job running without a live lease",
        format!("{stale_leases} running past their lease; {dead} jobs ended dead or failed"),
    );
    let ended_badly: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT kind, coalesce(last_error, '(none)'), count(*) FROM jobs \
         WHERE state IN ('dead', 'failed') GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .fetch_all(monitor)
    .await?;
    for (kind, error, count) in ended_badly {
        println!("         {count} {kind} ended dead or failed: {error}");
    }
    report.syncs_succeeded = u64::try_from(succeeded).unwrap_or(0);
    report.peak_connections = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_one(monitor)
    .await?;
    Ok(report)
}
