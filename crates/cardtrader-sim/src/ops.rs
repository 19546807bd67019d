//! Product writes shared by the single-product routes and bulk jobs: merge-on-create, partial update,
//! delete, increment. Each works on one seller's locked inventory and never awaits.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    catalogue::blueprint_exists,
    inventory::{Inventory, Product},
    props::{self, Messages},
};

/// A product in a create/update payload; writes take `price` in major units.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProductInput {
    pub(crate) id: Option<i64>,
    blueprint_id: Option<i64>,
    price: Option<f64>,
    quantity: Option<i64>,
    description: Option<String>,
    error_mode: Option<String>,
    user_data_field: Option<String>,
    tag: Option<String>,
    properties: Option<Map<String, Value>>,
    graded: Option<Value>,
}

/// Why a write was refused.
#[derive(Debug)]
pub(crate) enum OpError {
    /// No such product for this seller.
    NotFound,
    /// Per-field errors, `{field: [message]}`.
    Invalid(Value),
}

/// A successful write: the product as it now is (quantity 0 once deleted) and warnings.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) product: Product,
    pub(crate) warnings: Messages,
}

fn invalid(field: &str, message: &str) -> OpError {
    OpError::Invalid(json!({ field: [message] }))
}

fn price_cents(price: f64) -> Result<i64, OpError> {
    if !price.is_finite() || price <= 0.0 {
        return Err(invalid("price", "must be greater than 0"));
    }
    Ok((price * 100.0).round() as i64)
}

fn wrap_warnings(property_warnings: Messages) -> Messages {
    let mut warnings = Map::new();
    if !property_warnings.is_empty() {
        warnings.insert("properties".into(), Value::Object(property_warnings));
    }
    warnings
}

/// `POST /products`: adds the quantity to an identical product if there is one, else creates.
pub(crate) fn create(inv: &mut Inventory, input: ProductInput) -> Result<Outcome, OpError> {
    let blueprint_id = input
        .blueprint_id
        .ok_or_else(|| invalid("blueprint_id", "Blueprint cant be blank"))?;
    if !blueprint_exists(blueprint_id) {
        return Err(invalid("blueprint_id", "Blueprint not found"));
    }
    let price_cents = price_cents(
        input
            .price
            .ok_or_else(|| invalid("price", "can't be blank"))?,
    )?;
    let quantity = input
        .quantity
        .ok_or_else(|| invalid("quantity", "can't be blank"))?;
    if quantity < 1 {
        return Err(invalid("quantity", "must be greater than 0"));
    }
    let strict = input.error_mode.as_deref() == Some("strict");
    let checked = props::for_create(blueprint_id, input.properties.as_ref(), strict)
        .map_err(|errors| OpError::Invalid(json!({ "properties": errors })))?;
    let warnings = wrap_warnings(checked.warnings);
    if let Some(mut existing) = inv.identical(blueprint_id, &checked.properties) {
        existing.quantity += quantity;
        inv.put(existing.clone());
        return Ok(Outcome {
            product: existing,
            warnings,
        });
    }
    let product = inv.create(Product {
        id: 0,
        blueprint_id,
        quantity,
        price_cents,
        description: input.description,
        graded: input.graded.unwrap_or(json!(false)),
        properties: checked.properties,
        tag: input.tag,
        user_data_field: input.user_data_field,
        bundle_size: 1,
    });
    Ok(Outcome { product, warnings })
}

/// `PUT /products/:id`: sets the given fields; foil and fixed properties are read-only.
pub(crate) fn update(
    inv: &mut Inventory,
    id: i64,
    input: ProductInput,
) -> Result<Outcome, OpError> {
    let mut product = inv.get(id).ok_or(OpError::NotFound)?;
    if let Some(price) = input.price {
        product.price_cents = price_cents(price)?;
    }
    if let Some(quantity) = input.quantity {
        if quantity < 1 {
            return Err(invalid("quantity", "must be greater than 0"));
        }
        product.quantity = quantity;
    }
    let strict = input.error_mode.as_deref() == Some("strict");
    let checked = props::for_update(
        product.blueprint_id,
        &product.properties,
        input.properties.as_ref(),
        strict,
    )
    .map_err(|errors| OpError::Invalid(json!({ "properties": errors })))?;
    product.properties = checked.properties;
    if input.description.is_some() {
        product.description = input.description;
    }
    if input.user_data_field.is_some() {
        product.user_data_field = input.user_data_field;
    }
    if input.tag.is_some() {
        product.tag = input.tag;
    }
    if let Some(graded) = input.graded {
        product.graded = graded;
    }
    inv.put(product.clone());
    Ok(Outcome {
        product,
        warnings: wrap_warnings(checked.warnings),
    })
}

/// `DELETE /products/:id`, whatever the quantity.
pub(crate) fn destroy(inv: &mut Inventory, id: i64) -> Result<Product, OpError> {
    inv.delete(id).ok_or(OpError::NotFound)
}

/// Sets the quantity to `quantity`, deleting the product when it is ≤ 0.
pub(crate) fn set_quantity(
    inv: &mut Inventory,
    id: i64,
    quantity: i64,
) -> Result<Product, OpError> {
    let mut product = inv.get(id).ok_or(OpError::NotFound)?;
    product.quantity = quantity.max(0);
    if quantity <= 0 {
        inv.delete(id);
    } else {
        inv.put(product.clone());
    }
    Ok(product)
}

/// `POST /products/:id/increment`: adds `delta`; a result ≤ 0 deletes the product.
pub(crate) fn increment(inv: &mut Inventory, id: i64, delta: i64) -> Result<Outcome, OpError> {
    let current = inv.get(id).ok_or(OpError::NotFound)?;
    let product = set_quantity(inv, id, current.quantity + delta)?;
    Ok(Outcome {
        product,
        warnings: Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Generator;

    fn input(v: Value) -> ProductInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn create_merges_into_an_identical_product() {
        let mut inv = Inventory::new(Generator::new(1, 1, 0));
        let body = json!({"blueprint_id": 10, "price": 1.5, "quantity": 2});
        let first = create(&mut inv, input(body.clone())).unwrap().product;
        let second = create(&mut inv, input(body)).unwrap().product;
        assert_eq!(first.id, second.id);
        assert_eq!(second.quantity, 4);
        assert_eq!(first.price_cents, 150);
        assert_eq!(inv.len(), 1);
    }

    #[test]
    fn different_properties_make_a_new_product() {
        let mut inv = Inventory::new(Generator::new(1, 1, 0));
        create(
            &mut inv,
            input(json!({"blueprint_id": 10, "price": 1.0, "quantity": 1})),
        )
        .unwrap();
        let body = json!({"blueprint_id": 10, "price": 1.0, "quantity": 1, "properties": {"condition": "Played"}});
        create(&mut inv, input(body)).unwrap();
        assert_eq!(inv.len(), 2);
    }

    #[test]
    fn increment_to_zero_deletes() {
        let mut inv = Inventory::new(Generator::new(1, 1, 3));
        let id = 100_000_002;
        let q = inv.get(id).unwrap().quantity;
        increment(&mut inv, id, -q).unwrap();
        assert!(inv.get(id).is_none());
        assert!(matches!(increment(&mut inv, id, 1), Err(OpError::NotFound)));
    }

    #[test]
    fn unknown_blueprints_are_refused() {
        let mut inv = Inventory::new(Generator::new(1, 1, 0));
        let err = create(
            &mut inv,
            input(json!({"blueprint_id": 9_999_999, "price": 1.0, "quantity": 1})),
        );
        assert!(matches!(err, Err(OpError::Invalid(_))));
    }
}
