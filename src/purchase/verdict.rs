//! Whether a CardTrader write whose answer was lost took effect, decided purely from what can be
//! observed: the product's quantity before and now, and the sales CardTrader made of it meanwhile
//! (its order list and the webhook orders this service stored). A quantity that moved by the
//! write's amount is not enough on its own: a sale of the same amount looks the same. When the
//! evidence fits both outcomes, or neither, the verdict is [`Verdict::Ambiguous`], never a guess.

use chrono::{DateTime, TimeDelta, Utc};

/// How far CardTrader's clock and ours may disagree (both NTP-synchronised servers; a second is
/// generous): a sale stamped within this of the moment the quantity was read may or may not be
/// reflected in that read.
pub const CLOCK_MARGIN: TimeDelta = TimeDelta::seconds(1);

/// One sale of the product on CardTrader: from `GET /orders`, or from a stored webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    /// The order.
    pub order_id: i64,
    /// Units of the product it bought.
    pub units: i64,
    /// When it was sold, if the order says.
    pub at: Option<DateTime<Utc>>,
    /// Whether the order was cancelled (or is being): its units may have gone back on sale.
    pub cancelled: bool,
}

/// The sales of the product made since a quantity was read at `read_at`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SalesSince {
    /// Units certainly sold after the read.
    pub sure: i64,
    /// Units sold around the read (or at an unknown time after the window opened): they may or may
    /// not be reflected in it.
    pub maybe: i64,
    /// Whether an order of the product was cancelled meanwhile, which may have put units back.
    pub relisted: bool,
}

impl SalesSince {
    /// Sorts `sales` (one entry per order) against a quantity read at `read_at`.
    pub fn of(sales: &[Sale], read_at: DateTime<Utc>) -> Self {
        let mut since = Self::default();
        for sale in sales.iter().filter(|sale| sale.units > 0) {
            let at = sale.at;
            if at.is_some_and(|at| at < read_at - CLOCK_MARGIN) {
                // Sold before the read: already in the quantity it showed.
                continue;
            }
            if sale.cancelled {
                since.relisted = true;
            }
            if at.is_some_and(|at| at > read_at + CLOCK_MARGIN) {
                since.sure += sale.units;
            } else {
                since.maybe += sale.units;
            }
        }
        since
    }
}

/// What a re-read of CardTrader shows about a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// The product's quantity when the write was planned.
    pub before: i64,
    /// Its quantity now (0 when CardTrader no longer lists it).
    pub now: i64,
    /// What the write adds (negative for a decrement).
    pub delta: i64,
    /// The sales since `before` was read.
    pub sales: SalesSince,
}

/// The verdict on a write whose answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Only "applied" explains what CardTrader shows.
    Applied,
    /// Only "not applied" explains it.
    NotApplied,
    /// Both, or neither: a person has to look.
    Ambiguous,
}

/// Decides from `evidence`: the quantity must have moved by the write plus the sales if it applied,
/// by the sales alone if not.
pub fn decide(evidence: &Evidence) -> Verdict {
    if evidence.sales.relisted {
        return Verdict::Ambiguous;
    }
    let moved = evidence.now - evidence.before;
    let (sure, maybe) = (evidence.sales.sure, evidence.sales.maybe);
    // Sales only ever lower the quantity: by at least `sure`, at most `sure + maybe`.
    let explains = |write: i64| (write - sure - maybe..=write - sure).contains(&moved);
    match (explains(evidence.delta), explains(0)) {
        (true, false) => Verdict::Applied,
        (false, true) => Verdict::NotApplied,
        _ => Verdict::Ambiguous,
    }
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CardTrader had {}, the write was {:+}, now it shows {}; sold since: {}",
            self.before, self.delta, self.now, self.sales.sure
        )?;
        if self.sales.maybe > 0 {
            write!(f, " (+{} around the read)", self.sales.maybe)?;
        }
        if self.sales.relisted {
            f.write_str("; an order of it was cancelled meanwhile")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(before: i64, now: i64, delta: i64, sure: i64, maybe: i64) -> Evidence {
        Evidence {
            before,
            now,
            delta,
            sales: SalesSince {
                sure,
                maybe,
                relisted: false,
            },
        }
    }

    #[test]
    fn without_sales_the_quantity_alone_decides() {
        assert_eq!(decide(&evidence(5, 3, -2, 0, 0)), Verdict::Applied);
        assert_eq!(decide(&evidence(5, 5, -2, 0, 0)), Verdict::NotApplied);
        assert_eq!(decide(&evidence(5, 4, -2, 0, 0)), Verdict::Ambiguous);
        assert_eq!(
            decide(&evidence(2, 0, -2, 0, 0)),
            Verdict::Applied,
            "deleted at 0"
        );
    }

    #[test]
    fn a_sale_of_the_same_amount_is_not_mistaken_for_the_write() {
        // The quantity moved by 2, and CardTrader sold 2: the decrement did not apply.
        assert_eq!(decide(&evidence(5, 3, -2, 2, 0)), Verdict::NotApplied);
        // It moved by 4: the sale and the decrement.
        assert_eq!(decide(&evidence(5, 1, -2, 2, 0)), Verdict::Applied);
    }

    #[test]
    fn a_sale_that_may_predate_the_read_leaves_it_ambiguous_when_both_fit() {
        // 2 sold around the read: moved 2 fits "applied, the sale was already counted" and "not
        // applied, the sale came after".
        assert_eq!(decide(&evidence(5, 3, -2, 0, 2)), Verdict::Ambiguous);
        // Moved 4 fits only "applied and sold after".
        assert_eq!(decide(&evidence(5, 1, -2, 0, 2)), Verdict::Applied);
        // Moved 0 fits only "not applied, sold before".
        assert_eq!(decide(&evidence(5, 5, -2, 0, 2)), Verdict::NotApplied);
    }

    #[test]
    fn a_give_back_is_judged_the_same_way() {
        assert_eq!(decide(&evidence(3, 5, 2, 0, 0)), Verdict::Applied);
        assert_eq!(decide(&evidence(3, 3, 2, 0, 0)), Verdict::NotApplied);
        // Given back 2, then 2 sold: it looks untouched, and the orders say why.
        assert_eq!(decide(&evidence(3, 3, 2, 2, 0)), Verdict::Applied);
    }

    #[test]
    fn a_cancelled_order_meanwhile_makes_any_reading_ambiguous() {
        let mut relisted = evidence(5, 3, -2, 0, 0);
        relisted.sales.relisted = true;
        assert_eq!(decide(&relisted), Verdict::Ambiguous);
    }

    #[test]
    fn sales_are_sorted_against_the_read_with_a_margin_for_clocks() {
        let read_at = Utc::now();
        let sale = |order_id, seconds: i64, cancelled| Sale {
            order_id,
            units: 1,
            at: Some(read_at + TimeDelta::seconds(seconds)),
            cancelled,
        };
        let sales = [
            sale(1, -60, true),
            sale(2, 0, false),
            sale(3, 1, false),
            sale(4, 30, false),
            Sale {
                order_id: 5,
                units: 3,
                at: None,
                cancelled: false,
            },
        ];

        let since = SalesSince::of(&sales, read_at);

        assert_eq!(
            since,
            SalesSince {
                sure: 1,
                maybe: 5,
                relisted: false
            },
            "the cancelled order predates the read"
        );
    }
}
