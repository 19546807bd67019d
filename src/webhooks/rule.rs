//! CardTrader's stock rule for external systems, applied once per order: what one delivery of an
//! order does to local stock, given what earlier deliveries of the same order already did.

use std::fmt;

use super::payload::Cause;

/// What earlier deliveries of an order did (its `webhook_orders` row; all false when first seen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Its items were taken from local stock.
    pub(crate) stock_taken: bool,
    /// They were given back.
    pub(crate) stock_restored: bool,
    /// The order was seen cancelled.
    pub(crate) canceled: bool,
}

/// What one delivery does to local stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Take the order's items from local stock.
    Take,
    /// Give back what was taken.
    Restore,
    /// Change nothing, for this reason.
    Keep(Reason),
}

/// Why a delivery changes no stock; stored as the event's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// An earlier delivery took the stock.
    AlreadyTaken,
    /// An earlier delivery gave it back.
    AlreadyRestored,
    /// Cancelled before anything was taken: nothing to give back.
    NothingToRestore,
    /// The order was cancelled earlier; a late delivery of an older state must not take again.
    AlreadyCanceled,
    /// The state does not mean the stock left (e.g. CardTrader Zero `paid`: the weekly merged order
    /// of items already taken at `hub_pending`).
    StateMovesNoStock,
    /// Destroyed in a state other than a cancellation (a CT0 original closed into the weekly
    /// order, say): what was sold stays sold.
    DestroyedNotCanceled,
    /// A cause this service does not know.
    UnknownCause,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::AlreadyTaken => "stock already taken for this order",
            Reason::AlreadyRestored => "stock already given back for this order",
            Reason::NothingToRestore => "cancelled before any stock was taken",
            Reason::AlreadyCanceled => "order already cancelled",
            Reason::StateMovesNoStock => "this state does not move stock",
            Reason::DestroyedNotCanceled => "destroyed without a cancellation: stock stays sold",
            Reason::UnknownCause => "unknown cause",
        })
    }
}

/// Whether an order in `state` has taken its items from the seller's stock on CardTrader. CT0 stock
/// moves at `hub_pending` (and `closed` is a hub_pending order merged into the weekly one); regular
/// stock moves at `paid`, and the states after it (or a cancellation request, only possible from
/// paid or sent) imply it was paid, so an order first seen there takes its stock then.
pub(crate) fn sold(state: &str, via_cardtrader_zero: bool) -> bool {
    if via_cardtrader_zero {
        matches!(state, "hub_pending" | "closed")
    } else {
        matches!(
            state,
            "paid" | "sent" | "arrived" | "done" | "request_for_cancel" | "lost"
        )
    }
}

/// Whether a delivery says the order was cancelled: state `canceled`, or destroyed while a
/// cancellation was requested (the request was granted, the order is gone).
fn cancelled(cause: Cause, state: &str) -> bool {
    state == "canceled" || (cause == Cause::Destroy && state == "request_for_cancel")
}

/// What a live delivery of an order does, given what earlier ones did. Each order takes its stock at
/// most once and gives it back at most once, after which nothing takes it again.
pub(crate) fn decide(seen: Seen, cause: Cause, state: &str, via_cardtrader_zero: bool) -> Action {
    if cause == Cause::Other {
        return Action::Keep(Reason::UnknownCause);
    }
    if cancelled(cause, state) {
        return match (seen.stock_taken, seen.stock_restored) {
            (true, false) => Action::Restore,
            (true, true) => Action::Keep(Reason::AlreadyRestored),
            (false, _) => Action::Keep(Reason::NothingToRestore),
        };
    }
    if seen.canceled {
        return Action::Keep(Reason::AlreadyCanceled);
    }
    if cause == Cause::Destroy {
        return Action::Keep(Reason::DestroyedNotCanceled);
    }
    if seen.stock_taken {
        return Action::Keep(Reason::AlreadyTaken);
    }
    if sold(state, via_cardtrader_zero) {
        Action::Take
    } else {
        Action::Keep(Reason::StateMovesNoStock)
    }
}

/// Whether a delivery marks the order cancelled for good (see [`Seen::canceled`]).
pub(crate) fn marks_canceled(cause: Cause, state: &str) -> bool {
    cause != Cause::Other && cancelled(cause, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs deliveries of one order through the rule as the apply job does, returning the actions.
    fn lifecycle(ct0: bool, deliveries: &[(Cause, &str)]) -> Vec<Action> {
        let mut seen = Seen::default();
        deliveries
            .iter()
            .map(|&(cause, state)| {
                let action = decide(seen, cause, state, ct0);
                seen.stock_taken |= action == Action::Take;
                seen.stock_restored |= action == Action::Restore;
                seen.canceled |= marks_canceled(cause, state);
                action
            })
            .collect()
    }

    #[test]
    fn a_regular_order_takes_its_stock_once_when_paid() {
        let actions = lifecycle(
            false,
            &[
                (Cause::Create, "paid"),
                (Cause::Update, "sent"),
                (Cause::Update, "done"),
                (Cause::Update, "paid"),
            ],
        );

        assert_eq!(
            actions,
            vec![
                Action::Take,
                Action::Keep(Reason::AlreadyTaken),
                Action::Keep(Reason::AlreadyTaken),
                Action::Keep(Reason::AlreadyTaken),
            ]
        );
    }

    #[test]
    fn a_regular_order_first_seen_after_payment_takes_its_stock_then() {
        for state in ["sent", "arrived", "done", "request_for_cancel"] {
            assert_eq!(
                lifecycle(false, &[(Cause::Update, state)]),
                vec![Action::Take],
                "{state}"
            );
        }
    }

    #[test]
    fn a_ct0_order_takes_at_hub_pending_and_not_when_paid() {
        let actions = lifecycle(
            true,
            &[
                (Cause::Create, "hub_pending"),
                (Cause::Update, "closed"),
                (Cause::Destroy, "closed"),
            ],
        );
        let merged = lifecycle(true, &[(Cause::Create, "paid"), (Cause::Update, "sent")]);

        assert_eq!(
            actions,
            vec![
                Action::Take,
                Action::Keep(Reason::AlreadyTaken),
                Action::Keep(Reason::DestroyedNotCanceled),
            ]
        );
        assert_eq!(
            merged,
            vec![
                Action::Keep(Reason::StateMovesNoStock),
                Action::Keep(Reason::StateMovesNoStock)
            ]
        );
    }

    #[test]
    fn a_cancelled_order_gives_back_once_and_never_takes_again() {
        let actions = lifecycle(
            false,
            &[
                (Cause::Create, "paid"),
                (Cause::Update, "request_for_cancel"),
                (Cause::Destroy, "canceled"),
                (Cause::Destroy, "canceled"),
                (Cause::Update, "sent"),
            ],
        );

        assert_eq!(
            actions,
            vec![
                Action::Take,
                Action::Keep(Reason::AlreadyTaken),
                Action::Restore,
                Action::Keep(Reason::AlreadyRestored),
                Action::Keep(Reason::AlreadyCanceled),
            ]
        );
    }

    #[test]
    fn a_destroy_during_a_cancellation_request_gives_back() {
        let actions = lifecycle(
            false,
            &[
                (Cause::Create, "paid"),
                (Cause::Destroy, "request_for_cancel"),
            ],
        );

        assert_eq!(actions, vec![Action::Take, Action::Restore]);
    }

    #[test]
    fn an_order_first_seen_cancelled_or_in_an_unknown_cause_moves_nothing() {
        let cancelled_first = lifecycle(
            false,
            &[(Cause::Destroy, "canceled"), (Cause::Update, "paid")],
        );
        let unknown = lifecycle(false, &[(Cause::Other, "paid")]);

        assert_eq!(
            cancelled_first,
            vec![
                Action::Keep(Reason::NothingToRestore),
                Action::Keep(Reason::AlreadyCanceled)
            ]
        );
        assert_eq!(unknown, vec![Action::Keep(Reason::UnknownCause)]);
    }
}
