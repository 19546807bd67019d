//! Pure decisions of the driver: what a step is called, whether it calls CardTrader, and what
//! CardTrader would merge or re-create. Unit tested here, without a database or a simulator.

use crate::{
    marketplace::types::{NewProduct, Product},
    purchase::{ProductSnapshot, saga::Step},
};

pub(super) fn snapshot(product: &Product) -> ProductSnapshot {
    ProductSnapshot {
        blueprint_id: product.blueprint_id,
        price_cents: product.price_cents,
        currency: product.price_currency.clone(),
        properties: product.properties_hash.clone(),
        description: product.description.clone(),
        user_data_field: product.user_data_field.clone(),
        graded: product.graded,
    }
}

/// Whether CardTrader would merge a create of `snapshot` into `product`: same blueprint and
/// properties.
pub(super) fn same_kind(snapshot: &ProductSnapshot, product: &Product) -> bool {
    product.blueprint_id == snapshot.blueprint_id && product.properties_hash == snapshot.properties
}

pub(super) fn recreation(snapshot: &ProductSnapshot, quantity: i32) -> NewProduct {
    NewProduct {
        blueprint_id: snapshot.blueprint_id,
        price: snapshot.price_cents as f64 / 100.0,
        quantity: i64::from(quantity),
        description: snapshot.description.clone(),
        user_data_field: snapshot.user_data_field.clone(),
        properties: Some(snapshot.properties.clone()),
        graded: snapshot.graded,
    }
}

/// Whether a step calls CardTrader (the others are local transactions).
pub(super) fn calls_cardtrader(step: Step) -> bool {
    matches!(
        step,
        Step::TakeStock { .. }
            | Step::VerifyTake { .. }
            | Step::GiveBack { .. }
            | Step::VerifyGiveBack { .. }
    )
}

pub(super) fn step_name(step: Step) -> &'static str {
    match step {
        Step::TakeStock { .. } => "take_stock",
        Step::VerifyTake { .. } => "verify_take",
        Step::GiveBack { .. } => "give_back",
        Step::VerifyGiveBack { .. } => "verify_give_back",
        Step::Finalize => "finalize",
        Step::Release => "release",
        Step::Stop => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(blueprint_id: i64, condition: &str, price_cents: i64) -> Product {
        serde_json::from_value(serde_json::json!({
            "id": 7,
            "blueprint_id": blueprint_id,
            "quantity": 3,
            "price_cents": price_cents,
            "price_currency": "EUR",
            "description": "mint copy",
            "properties_hash": { "condition": condition, "mtg_foil": false },
            "graded": false,
            "user_data_field": "shelf-4",
        }))
        .unwrap()
    }

    #[test]
    fn a_recreation_lists_what_the_snapshot_saw_with_the_quantity_given_back() {
        let seen = snapshot(&product(11, "Near Mint", 1_250));

        let new = recreation(&seen, 2);

        assert_eq!(new.blueprint_id, 11);
        assert_eq!(new.quantity, 2);
        assert!(
            (new.price - 12.5).abs() < f64::EPSILON,
            "price in major units"
        );
        assert_eq!(new.description.as_deref(), Some("mint copy"));
        assert_eq!(new.user_data_field.as_deref(), Some("shelf-4"));
        assert_eq!(new.properties, Some(seen.properties.clone()));
        assert_eq!(new.graded, Some(false));
    }

    #[test]
    fn cardtrader_merges_by_blueprint_and_properties_not_by_price() {
        let seen = snapshot(&product(11, "Near Mint", 1_250));

        assert!(same_kind(&seen, &product(11, "Near Mint", 999)));
        assert!(!same_kind(&seen, &product(11, "Played", 1_250)));
        assert!(!same_kind(&seen, &product(12, "Near Mint", 1_250)));
    }

    #[test]
    fn only_take_and_give_back_steps_call_cardtrader() {
        for step in [
            Step::TakeStock { line: 0 },
            Step::VerifyTake { line: 0 },
            Step::GiveBack { line: 1 },
            Step::VerifyGiveBack { line: 1 },
        ] {
            assert!(calls_cardtrader(step), "{}", step_name(step));
        }
        for step in [Step::Finalize, Step::Release, Step::Stop] {
            assert!(!calls_cardtrader(step), "{}", step_name(step));
        }
    }
}
