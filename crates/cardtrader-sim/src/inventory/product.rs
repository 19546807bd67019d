//! One seller product and the three shapes CardTrader renders it in: export rows, the `resource` of
//! single-product calls, and marketplace listings.

use std::io::Write;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::catalogue::{
    blueprint_expansion, blueprint_game, blueprint_name, expansion_code, expansion_name,
    fixed_properties,
};

/// Currency every simulated account uses.
pub(crate) const CURRENCY: &str = "EUR";

/// A product in a seller's inventory; `properties` holds the editable properties only.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Product {
    pub(crate) id: i64,
    pub(crate) blueprint_id: i64,
    pub(crate) quantity: i64,
    pub(crate) price_cents: i64,
    /// `None` renders `null`; `Some("")` is the other observed "no description".
    pub(crate) description: Option<String>,
    /// Observed as `true`, `false`, `null` and `0`; kept as a raw value so all four survive.
    pub(crate) graded: Value,
    pub(crate) properties: Map<String, Value>,
    pub(crate) tag: Option<String>,
    pub(crate) user_data_field: Option<String>,
    pub(crate) bundle_size: i64,
}

#[derive(Serialize)]
struct ExpansionRef {
    id: i64,
}

/// The `/products/export` row, serialised straight from borrowed fields to keep streaming cheap.
#[derive(Serialize)]
pub(crate) struct ExportRow<'a> {
    id: i64,
    name_en: String,
    quantity: i64,
    description: &'a Option<String>,
    price_cents: i64,
    price_currency: &'static str,
    game_id: i64,
    category_id: i64,
    blueprint_id: i64,
    properties_hash: &'a Map<String, Value>,
    user_id: i64,
    graded: &'a Value,
    tag: &'a Option<String>,
    user_data_field: &'a Option<String>,
    bundle_size: i64,
    bundled_quantity: i64,
    uploaded_images: [u8; 0],
    /// Not in the documented export; sent only when the simulator's switch asks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    expansion: Option<ExpansionRef>,
}

impl Product {
    /// The export row of this product owned by `user_id`, with the undocumented `expansion`
    /// object when `with_expansion`.
    pub(crate) fn export_row(&self, user_id: i64, with_expansion: bool) -> ExportRow<'_> {
        let game = blueprint_game(self.blueprint_id);
        ExportRow {
            id: self.id,
            name_en: blueprint_name(self.blueprint_id),
            quantity: self.quantity,
            description: &self.description,
            price_cents: self.price_cents,
            price_currency: CURRENCY,
            game_id: game.id,
            category_id: game.single_category,
            blueprint_id: self.blueprint_id,
            properties_hash: &self.properties,
            user_id,
            graded: &self.graded,
            tag: &self.tag,
            user_data_field: &self.user_data_field,
            bundle_size: self.bundle_size,
            bundled_quantity: self.quantity * self.bundle_size,
            uploaded_images: [],
            expansion: with_expansion.then(|| ExpansionRef {
                id: blueprint_expansion(self.blueprint_id),
            }),
        }
    }

    /// Appends the export row to `buf` as JSON, written by hand: serde_json at opt-level 0 made a
    /// million-row export take ~25 s in the test profile, and the stream is the simulator's hot path.
    pub(crate) fn write_export_json(&self, user_id: i64, with_expansion: bool, buf: &mut Vec<u8>) {
        let game = blueprint_game(self.blueprint_id);
        // Writing into a Vec cannot fail.
        let _ = write!(buf, "{{\"id\":{},\"name_en\":", self.id);
        write_str(buf, &blueprint_name(self.blueprint_id));
        let _ = write!(buf, ",\"quantity\":{},\"description\":", self.quantity);
        write_opt_str(buf, self.description.as_deref());
        let _ = write!(
            buf,
            ",\"price_cents\":{},\"price_currency\":\"{CURRENCY}\",\"game_id\":{},\"category_id\":{},\
             \"blueprint_id\":{},\"properties_hash\":{{",
            self.price_cents, game.id, game.single_category, self.blueprint_id
        );
        for (i, (name, value)) in self.properties.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            write_str(buf, name);
            buf.push(b':');
            write_value(buf, value);
        }
        let _ = write!(buf, "}},\"user_id\":{user_id},\"graded\":");
        write_value(buf, &self.graded);
        buf.extend_from_slice(b",\"tag\":");
        write_opt_str(buf, self.tag.as_deref());
        buf.extend_from_slice(b",\"user_data_field\":");
        write_opt_str(buf, self.user_data_field.as_deref());
        let _ = write!(
            buf,
            ",\"bundle_size\":{},\"bundled_quantity\":{},\"uploaded_images\":[]",
            self.bundle_size,
            self.quantity * self.bundle_size,
        );
        if with_expansion {
            let expansion = blueprint_expansion(self.blueprint_id);
            let _ = write!(buf, ",\"expansion\":{{\"id\":{expansion}}}");
        }
        buf.push(b'}');
    }

    /// The export row as a JSON value.
    pub(crate) fn export_json(&self, user_id: i64, with_expansion: bool) -> Value {
        serde_json::to_value(self.export_row(user_id, with_expansion)).unwrap_or(Value::Null)
    }

    /// The `resource` of single-product responses: `price` object, `properties`, `graded` as an int.
    pub(crate) fn resource_json(&self) -> Value {
        let game = blueprint_game(self.blueprint_id);
        let graded = i64::from(self.graded == Value::Bool(true) || self.graded == json!(1));
        json!({
            "id": self.id, "quantity": self.quantity, "bundle_size": self.bundle_size,
            "description": self.description, "graded": graded, "game_id": game.id,
            "category_id": game.single_category, "expansion_id": blueprint_expansion(self.blueprint_id),
            "blueprint_id": self.blueprint_id,
            "price": {"cents": self.price_cents, "currency": CURRENCY},
            "properties": self.properties, "user_data_field": self.user_data_field, "tag": self.tag,
        })
    }

    /// A marketplace listing: flat and nested price, expansion, the seller's `user`, fixed props merged.
    pub(crate) fn marketplace_json(&self, user: Value, on_vacation: bool) -> Value {
        let expansion = blueprint_expansion(self.blueprint_id);
        let mut props = self.properties.clone();
        props.extend(fixed_properties(self.blueprint_id));
        json!({
            "id": self.id, "blueprint_id": self.blueprint_id, "name_en": blueprint_name(self.blueprint_id),
            "expansion": {"id": expansion, "code": expansion_code(expansion), "name_en": expansion_name(expansion)},
            "price_cents": self.price_cents, "price_currency": CURRENCY, "quantity": self.quantity,
            "description": self.description, "properties_hash": props, "graded": Value::Null,
            "bundle_size": self.bundle_size, "on_vacation": on_vacation, "user": user,
            "price": money_full(self.price_cents),
        })
    }
}

fn write_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Rare (user-supplied text): let serde_json do the escaping.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

fn write_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(buf, s),
        None => buf.extend_from_slice(b"null"),
    }
}

fn write_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => buf.extend_from_slice(b"null"),
        Value::Bool(b) => buf.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::String(s) => write_str(buf, s),
        other => {
            let _ = serde_json::to_writer(&mut *buf, other);
        }
    }
}

/// `{cents, currency, currency_symbol, formatted}`, the marketplace money shape.
pub(crate) fn money_full(cents: i64) -> Value {
    json!({"cents": cents, "currency": CURRENCY, "currency_symbol": "€",
        "formatted": format!("€{}.{:02}", cents / 100, cents % 100)})
}

/// `{cents, currency}`.
pub(crate) fn money(cents: i64) -> Value {
    json!({"cents": cents, "currency": CURRENCY})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Generator;

    #[test]
    fn hand_written_export_rows_match_serde() {
        let g = Generator::new(3, 1, 300);
        let mut odd = g.product(0);
        odd.description = Some("quote \" backslash \\ newline \n".into());
        odd.graded = json!(0);
        odd.user_data_field = Some("sku-1".into());
        for p in (0..g.count).map(|i| g.product(i)).chain([odd]) {
            for with_expansion in [false, true] {
                let mut buf = Vec::new();
                p.write_export_json(7, with_expansion, &mut buf);
                let parsed: Value = serde_json::from_slice(&buf).unwrap();
                assert_eq!(parsed, p.export_json(7, with_expansion));
                assert_eq!(parsed.get("expansion").is_some(), with_expansion);
            }
        }
    }
}
