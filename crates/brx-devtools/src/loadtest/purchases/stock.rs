//! The stock invariant after a phase: every item's CardTrader and local quantities against what they
//! were when the phase started and the units its completed purchases sold; nothing left reserved or
//! locked.

use std::collections::{BTreeMap, HashMap, HashSet};

use backon::Retryable;
use futures::{StreamExt, TryStreamExt};

use super::Seller;
use crate::loadtest::{rig::Rig, simulator::SimProduct};

/// Exports read at once while the stock is read.
const EXPORT_CONCURRENCY: usize = 16;
/// Violations described in full; the rest are only counted.
const DESCRIBED: usize = 10;

/// Both sides' stock at an instant when no purchase runs, by product id. The simulator gives each
/// seller its own range of ids, so a product id alone names one seller's product.
#[derive(Debug)]
pub(super) struct Stock {
    cardtrader: HashMap<i64, i64>,
    local: HashMap<i64, LocalRow>,
}

#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct LocalRow {
    product_id: i64,
    quantity: i32,
    reserved_quantity: i32,
}

impl Stock {
    /// Every seller's export from the simulator and every row of `inventory_items`.
    pub(super) async fn read(rig: &Rig, sellers: &[Seller]) -> anyhow::Result<Self> {
        let exports: Vec<Vec<SimProduct>> = futures::stream::iter(sellers)
            .map(|seller| export(rig, seller.number))
            .buffer_unordered(EXPORT_CONCURRENCY)
            .try_collect()
            .await?;
        let cardtrader = exports
            .into_iter()
            .flatten()
            .map(|product| (product.id, product.quantity))
            .collect();
        let rows: Vec<LocalRow> =
            sqlx::query_as("SELECT product_id, quantity, reserved_quantity FROM inventory_items")
                .fetch_all(&rig.monitor)
                .await?;
        let local = rows.into_iter().map(|row| (row.product_id, row)).collect();
        Ok(Self { cardtrader, local })
    }

    /// CardTrader's quantity of a product; 0 when it has none (CardTrader deletes a product at 0).
    pub(super) fn cardtrader(&self, product_id: i64) -> i64 {
        self.cardtrader.get(&product_id).copied().unwrap_or(0)
    }
}

/// One seller's export, retried a few times: the phase's calls may still fill its rate-limit window.
async fn export(rig: &Rig, seller: u32) -> anyhow::Result<Vec<SimProduct>> {
    let api = rig.simulator.api();
    let read = || api.export(seller, None);
    read.retry(brx_sync::retry::full_jitter(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(5),
        Some(5),
    ))
    .await
}

/// One line of a purchase of the phase, with the purchase's state and the line's.
#[derive(Debug, sqlx::FromRow)]
struct LineRow {
    purchase_state: String,
    line_state: Option<String>,
    product_id: i64,
    quantity: i32,
    recreated_product_id: Option<i64>,
}

/// What the check found.
#[derive(Debug, Default)]
pub(super) struct Check {
    /// Items checked (every item, less those a purchase in requires_attention holds).
    pub(super) items: usize,
    /// Broken invariants, the first few described.
    pub(super) violations: Vec<String>,
    /// All broken invariants.
    pub(super) violation_count: usize,
    /// Refused items whose local quantity was lowered to CardTrader's.
    pub(super) corrected: usize,
    /// Refused items whose local quantity was left for the next sync to correct (another purchase
    /// held a reservation on the item when the refusing one released).
    pub(super) deferred: usize,
    /// Items a give-back re-created on CardTrader under a new id.
    pub(super) recreated: usize,
    /// Items left unchecked because a purchase in requires_attention holds them.
    pub(super) held: usize,
    /// The phase's purchases by final state.
    pub(super) states: BTreeMap<String, u64>,
}

impl Check {
    fn violation(&mut self, description: String) {
        self.violation_count += 1;
        if self.violations.len() < DESCRIBED {
            self.violations.push(description);
        }
    }
}

/// What the phase's purchases did to one item.
#[derive(Debug, Default, Clone, Copy)]
struct Ledger {
    /// Units of completed purchases.
    sold: i64,
    /// A line of it was refused by CardTrader, so its local quantity may have been corrected.
    refused: bool,
    /// A purchase in requires_attention has a line of it: its outcome is an operator's to decide.
    held: bool,
}

/// Checks the invariants of the phase whose idempotency keys start with `phase`, against `before`,
/// read when it started. Every purchase of the phase must have ended.
pub(super) async fn check(
    rig: &Rig,
    sellers: &[Seller],
    before: &Stock,
    phase: &str,
) -> anyhow::Result<Check> {
    let after = Stock::read(rig, sellers).await?;
    let pattern = format!("{phase}-%");
    let lines: Vec<LineRow> = sqlx::query_as(
        "SELECT p.state AS purchase_state, p.saga->'lines'->>l.line AS line_state, \
                l.product_id, l.quantity, l.recreated_product_id \
         FROM purchases p JOIN purchase_lines l ON l.purchase_id = p.id \
         WHERE p.idempotency_key LIKE $1",
    )
    .bind(&pattern)
    .fetch_all(&rig.monitor)
    .await?;
    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM purchases WHERE idempotency_key LIKE $1 GROUP BY state",
    )
    .bind(&pattern)
    .fetch_all(&rig.monitor)
    .await?;
    let stray_locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM purchase_product_locks k JOIN purchases p ON p.id = k.purchase_id \
         WHERE p.state <> 'requires_attention'",
    )
    .fetch_one(&rig.monitor)
    .await?;
    let states = states
        .into_iter()
        .map(|(state, count)| (state, count.unsigned_abs()))
        .collect();
    Ok(evaluate(before, &after, &lines, states, stray_locks))
}

/// The invariants over what was read; pure, so the rules can be tested.
fn evaluate(
    before: &Stock,
    after: &Stock,
    lines: &[LineRow],
    states: BTreeMap<String, u64>,
    stray_locks: i64,
) -> Check {
    let mut check = Check {
        states,
        ..Check::default()
    };
    if stray_locks > 0 {
        check.violation(format!(
            "{stray_locks} product locks held by purchases that ended"
        ));
    }
    let items = Items::follow(before, lines);
    let ledgers = items.ledgers(lines, &mut check);
    for &item in &items.identities {
        check_item(&mut check, &items, ledgers.get(&item), before, after, item);
    }
    check_strays(&mut check, &items, &ledgers, after);
    check
}

/// The items of the phase, each named by its product id at the phase's start, and the ids a
/// give-back re-created it under since (`purchase_lines.recreated_product_id`), in order.
#[derive(Debug)]
struct Items {
    identities: Vec<i64>,
    /// Product id → the item it is (one of) the id(s) of.
    owner: HashMap<i64, i64>,
    /// Item → its product id now.
    current: HashMap<i64, i64>,
}

impl Items {
    fn follow(before: &Stock, lines: &[LineRow]) -> Self {
        let next: HashMap<i64, i64> = lines
            .iter()
            .filter_map(|line| Some((line.product_id, line.recreated_product_id?)))
            .collect();
        let mut identities: Vec<i64> = before.local.keys().copied().collect();
        identities.sort_unstable();
        let (mut owner, mut current) = (HashMap::new(), HashMap::new());
        for &item in &identities {
            let mut id = item;
            owner.insert(id, item);
            // Bounded by the number of re-creates, in case a cycle ever shows up.
            for _ in 0..=next.len() {
                match next.get(&id) {
                    Some(&new) if !owner.contains_key(&new) => {
                        owner.insert(new, item);
                        id = new;
                    }
                    _ => break,
                }
            }
            current.insert(item, id);
        }
        Self {
            identities,
            owner,
            current,
        }
    }

    /// Sold units, refusals and holds by item; a line naming no item is a violation.
    fn ledgers(&self, lines: &[LineRow], check: &mut Check) -> HashMap<i64, Ledger> {
        let mut ledgers: HashMap<i64, Ledger> = HashMap::new();
        for line in lines {
            let Some(&item) = self.owner.get(&line.product_id) else {
                check.violation(format!(
                    "a {} purchase has a line of product {}, which is no item of the shop",
                    line.purchase_state, line.product_id
                ));
                continue;
            };
            let ledger = ledgers.entry(item).or_default();
            match line.purchase_state.as_str() {
                "completed" => ledger.sold += i64::from(line.quantity),
                "requires_attention" => ledger.held = true,
                _ => {}
            }
            ledger.refused |= line.line_state.as_deref() == Some("refused");
        }
        ledgers
    }
}

/// One item's invariants.
///
/// CardTrader: its quantity now (under its current id) + the units sold == its quantity at the start.
/// Local: its quantity now + the units sold == its quantity at the start, unless a line of it was
/// refused by CardTrader. A refusing purchase lowers the local quantity to what CardTrader showed when
/// it released, if no other purchase holds a reservation on the item then; CardTrader's quantity did
/// not move between that read and the correction (the refusing purchase held the product's lock), and
/// from then on sales move both sides alike and give-backs restore CardTrader only what it had lost.
/// So a refused item passes when its local quantity is what the sales alone leave (if that is above
/// CardTrader's, the correction was deferred to the next sync, which the design allows), or equals
/// CardTrader's now and is below what the sales alone leave (corrected); anything else is a violation.
fn check_item(
    check: &mut Check,
    items: &Items,
    ledger: Option<&Ledger>,
    before: &Stock,
    after: &Stock,
    item: i64,
) {
    let ledger = ledger.copied().unwrap_or_default();
    if ledger.held {
        check.held += 1;
        return;
    }
    check.items += 1;
    let now_id = items.current.get(&item).copied().unwrap_or(item);
    if now_id != item {
        check.recreated += 1;
    }
    let sold = ledger.sold;
    let (ct_start, ct_now) = (before.cardtrader(item), after.cardtrader(now_id));
    if ct_now + sold != ct_start {
        check.violation(format!(
            "item {item}: CardTrader had {ct_start}, {sold} sold, so {} expected, but it has {ct_now} \
             (product {now_id})",
            ct_start - sold
        ));
    }
    let local_start = before
        .local
        .get(&item)
        .map_or(0, |row| i64::from(row.quantity));
    let Some(row) = after.local.get(&now_id) else {
        check.violation(format!("item {item}: no local row for product {now_id}"));
        return;
    };
    let (local_now, expected) = (i64::from(row.quantity), local_start - sold);
    if local_now == expected {
        check.deferred += usize::from(ledger.refused && ct_now < expected);
    } else if ledger.refused && local_now == ct_now && ct_now < expected {
        check.corrected += 1;
    } else {
        let refused = if ledger.refused {
            format!(" and not CardTrader's {ct_now} (a line was refused)")
        } else {
            String::new()
        };
        check.violation(format!(
            "item {item}: local had {local_start}, {sold} sold, so {expected} expected{refused}, but \
             it has {local_now} (product {now_id})"
        ));
    }
}

/// Whole-table invariants: nothing reserved outside requires_attention, and no product on either side
/// that is not an item's current product.
fn check_strays(check: &mut Check, items: &Items, ledgers: &HashMap<i64, Ledger>, after: &Stock) {
    let current: HashSet<i64> = items.current.values().copied().collect();
    let held = |id: &i64| {
        items
            .owner
            .get(id)
            .and_then(|item| ledgers.get(item))
            .is_some_and(|ledger| ledger.held)
    };
    let mut rows: Vec<&LocalRow> = after.local.values().collect();
    rows.sort_unstable_by_key(|row| row.product_id);
    for row in rows {
        if row.reserved_quantity != 0 && !held(&row.product_id) {
            check.violation(format!(
                "product {}: {} units still reserved locally",
                row.product_id, row.reserved_quantity
            ));
        }
        if !current.contains(&row.product_id) {
            check.violation(format!(
                "local product {} is no item's current product",
                row.product_id
            ));
        }
    }
    let mut listed: Vec<(&i64, &i64)> = after.cardtrader.iter().collect();
    listed.sort_unstable();
    for (id, quantity) in listed {
        if !current.contains(id) {
            check.violation(format!(
                "CardTrader lists product {id} ({quantity} units), which is no item's current product"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(cardtrader: &[(i64, i64)], local: &[(i64, i32)]) -> Stock {
        Stock {
            cardtrader: cardtrader.iter().copied().collect(),
            local: local
                .iter()
                .map(|&(product_id, quantity)| {
                    let row = LocalRow {
                        product_id,
                        quantity,
                        reserved_quantity: 0,
                    };
                    (product_id, row)
                })
                .collect(),
        }
    }

    fn line(state: &str, line_state: &str, product_id: i64, recreated: Option<i64>) -> LineRow {
        LineRow {
            purchase_state: state.into(),
            line_state: Some(line_state.into()),
            product_id,
            quantity: 1,
            recreated_product_id: recreated,
        }
    }

    fn run(before: &Stock, after: &Stock, lines: &[LineRow]) -> Check {
        evaluate(before, after, lines, BTreeMap::new(), 0)
    }

    #[test]
    fn sales_taken_from_both_sides_keep_the_invariant() {
        let before = stock(&[(1, 10), (2, 5)], &[(1, 10), (2, 5)]);
        let after = stock(&[(1, 8), (2, 5)], &[(1, 8), (2, 5)]);
        let lines = [
            line("completed", "taken", 1, None),
            line("completed", "taken", 1, None),
        ];

        let check = run(&before, &after, &lines);

        assert_eq!(check.violation_count, 0, "{:?}", check.violations);
        assert_eq!(check.items, 2);
    }

    #[test]
    fn a_unit_missing_on_one_side_is_a_violation() {
        let before = stock(&[(1, 10)], &[(1, 10)]);
        let after = stock(&[(1, 9)], &[(1, 10)]);

        let check = run(&before, &after, &[line("completed", "taken", 1, None)]);

        assert_eq!(check.violation_count, 1, "{:?}", check.violations);
        assert!(check.violations[0].contains("local had 10"));
    }

    #[test]
    fn a_refused_item_passes_corrected_to_cardtrader_or_left_for_the_sync() {
        // Item 1 was lowered to 0 on CardTrader and corrected; item 2 was lowered to 1, sold once,
        // then refused with the correction deferred.
        let before = stock(&[(2, 1)], &[(1, 10), (2, 10)]);
        let after = stock(&[], &[(1, 0), (2, 9)]);
        let lines = [
            line("failed", "refused", 1, None),
            line("completed", "taken", 2, None),
            line("failed", "refused", 2, None),
        ];

        let check = run(&before, &after, &lines);

        assert_eq!(check.violation_count, 0, "{:?}", check.violations);
        assert_eq!((check.corrected, check.deferred), (1, 1));
    }

    #[test]
    fn a_refused_item_raised_above_its_sales_is_a_violation() {
        let before = stock(&[(1, 3)], &[(1, 10)]);
        let after = stock(&[(1, 3)], &[(1, 11)]);

        let check = run(&before, &after, &[line("failed", "refused", 1, None)]);

        assert_eq!(check.violation_count, 1, "{:?}", check.violations);
    }

    #[test]
    fn a_recreated_item_is_followed_to_its_new_product() {
        // Item 1 (1 unit) was taken to 0 and deleted by a purchase that was then undone: the give-back
        // re-created it as product 7; a later purchase, re-pointed to 7, sold it.
        let before = stock(&[(1, 1)], &[(1, 10)]);
        let after = stock(&[], &[(7, 9)]);
        let lines = [
            line("failed", "given_back", 1, Some(7)),
            line("completed", "taken", 7, None),
        ];

        let check = run(&before, &after, &lines);

        assert_eq!(check.violation_count, 0, "{:?}", check.violations);
        assert_eq!(check.recreated, 1);
    }

    #[test]
    fn a_product_no_item_accounts_for_is_a_violation() {
        let before = stock(&[(1, 5)], &[(1, 5)]);
        let after = stock(&[(1, 5), (9, 1)], &[(1, 5)]);

        let check = run(&before, &after, &[]);

        assert_eq!(check.violation_count, 1, "{:?}", check.violations);
        assert!(check.violations[0].contains("product 9"));
    }
}
