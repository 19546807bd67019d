//! Lazy, deterministic inventory generation: product `i` of seller `s` is a pure function of
//! (seed, s, i), and the products holding a given blueprint can be found by inverting the layout.

use serde_json::{Value, json};

use super::product::Product;
use crate::{
    catalogue::{CATALOGUE_BLUEPRINTS, Schema, UNMAPPED_BLUEPRINTS},
    hash::{mix, mix3},
};

/// Product ids of seller `n` live in `[n * ID_SPACE, (n + 1) * ID_SPACE)`, so the owner of any id is
/// a division away and ids never collide across sellers.
pub(crate) const ID_SPACE: i64 = 100_000_000;
/// Products created through the API take ids from here on (within the seller's space), above every
/// generated id, so the export stays in id order by appending them.
pub(crate) const CREATED_OFFSET: i64 = 90_000_000;
/// Most generated products a seller may have.
pub(crate) const MAX_GENERATED: u64 = (CREATED_OFFSET - 1) as u64;
/// One generated product in `UNMAPPED_ONE_IN` uses a blueprint the shop does not map (~2%).
const UNMAPPED_ONE_IN: u64 = 50;
/// Walks the mapped blueprints in a scattered order; coprime with 300,000.
const STRIDE: i64 = 7_919;
/// STRIDE⁻¹ mod 300,000, so a blueprint's slot can be found without scanning.
const STRIDE_INV: i64 = mod_inverse(STRIDE, CATALOGUE_BLUEPRINTS);

const fn mod_inverse(a: i64, m: i64) -> i64 {
    let (mut old_r, mut r, mut old_s, mut s) = (a, m, 1_i64, 0_i64);
    while r != 0 {
        let q = old_r / r;
        (old_r, r) = (r, old_r - q * r);
        (old_s, s) = (s, old_s - q * s);
    }
    old_s.rem_euclid(m)
}

/// The owner (seller number) of a product id.
pub(crate) fn owner_of(product_id: i64) -> u32 {
    u32::try_from(product_id / ID_SPACE).unwrap_or(0)
}

/// Generates one seller's base inventory.
#[derive(Debug, Clone)]
pub(crate) struct Generator {
    seed: u64,
    seller: u32,
    offset: i64,
    /// Number of generated products (indices `0..count`).
    pub(crate) count: u64,
}

impl Generator {
    /// The generator of seller `seller` holding `count` products.
    pub(crate) fn new(seed: u64, seller: u32, count: u64) -> Self {
        let offset = (mix(seed, u64::from(seller)) % CATALOGUE_BLUEPRINTS as u64) as i64;
        Self {
            seed,
            seller,
            offset,
            count: count.min(MAX_GENERATED),
        }
    }

    /// Id of the first product of this seller's space.
    pub(crate) fn base(&self) -> i64 {
        i64::from(self.seller) * ID_SPACE
    }

    /// The generated index behind `id`, if `id` is one of this seller's generated products.
    pub(crate) fn index_of(&self, id: i64) -> Option<u64> {
        let index = id - self.base() - 1;
        (0..self.count as i64)
            .contains(&index)
            .then_some(index as u64)
    }

    fn unmapped(&self, index: u64) -> bool {
        mix3(self.seed, u64::from(self.seller), index).is_multiple_of(UNMAPPED_ONE_IN)
    }

    /// (blueprint, k): k tells apart the products of one blueprint, so (blueprint, properties) is unique.
    fn slot(&self, index: u64) -> (i64, u64) {
        if self.unmapped(index) {
            let n = UNMAPPED_BLUEPRINTS as u64;
            return (CATALOGUE_BLUEPRINTS + 1 + (index % n) as i64, index / n);
        }
        let n = CATALOGUE_BLUEPRINTS as u64;
        let pos = (index % n) as i64;
        let blueprint = (pos * STRIDE + self.offset) % CATALOGUE_BLUEPRINTS + 1;
        (blueprint, index / n)
    }

    /// Blueprint of generated product `index`, without building the product.
    pub(crate) fn blueprint_of(&self, index: u64) -> i64 {
        self.slot(index).0
    }

    /// Generated product `index`.
    pub(crate) fn product(&self, index: u64) -> Product {
        let (blueprint_id, k) = self.slot(index);
        let schema = Schema::of(blueprint_id);
        let h = mix3(self.seed, u64::from(self.seller), blueprint_id as u64);
        // Two thirds of a blueprint's first copies are Near Mint/English/non-foil, as in real stock.
        let skew = if h.is_multiple_of(3) { h >> 8 } else { 0 };
        let properties = schema.variant((k + skew) % schema.variants());
        let r = mix3(self.seed ^ 0x5eed, u64::from(self.seller), index);
        let base = (r >> 8) % 1000;
        Product {
            id: self.base() + 1 + index as i64,
            blueprint_id,
            quantity: if r.is_multiple_of(3) {
                1 + ((r >> 3) % 8) as i64
            } else {
                1
            },
            price_cents: 10 + (base * base / 20) as i64,
            description: description_quirk(r >> 20),
            graded: graded_quirk(r >> 28),
            properties,
            tag: (r >> 36)
                .is_multiple_of(10)
                .then(|| format!("shelf-{}", (r >> 40) % 50)),
            user_data_field: None,
            bundle_size: 1,
        }
    }

    /// Indices of the generated products that hold `blueprint_id`, in index order.
    pub(crate) fn indices_for(&self, blueprint_id: i64) -> Vec<u64> {
        let (first, step, mapped) = if blueprint_id > CATALOGUE_BLUEPRINTS {
            (
                (blueprint_id - CATALOGUE_BLUEPRINTS - 1) as u64,
                UNMAPPED_BLUEPRINTS as u64,
                false,
            )
        } else {
            let n = CATALOGUE_BLUEPRINTS;
            let pos = ((blueprint_id - 1 - self.offset).rem_euclid(n) as i128 * STRIDE_INV as i128
                % n as i128) as u64;
            (pos, n as u64, true)
        };
        (first..self.count)
            .step_by(step as usize)
            .filter(|i| self.unmapped(*i) != mapped)
            .collect()
    }
}

/// `description` as seen live: mostly `null`, sometimes `""`, sometimes text.
fn description_quirk(r: u64) -> Option<String> {
    match r % 10 {
        0..=5 => None,
        6 | 7 => Some(String::new()),
        _ => Some("Ships in a toploader".into()),
    }
}

/// `graded` as seen live: mostly `false`, sometimes `true`, `null` or `0`.
fn graded_quirk(r: u64) -> Value {
    match r % 20 {
        0 => json!(true),
        1 => Value::Null,
        2 => json!(0),
        _ => json!(false),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generation_is_deterministic() {
        let a = Generator::new(7, 3, 1000);
        let b = Generator::new(7, 3, 1000);
        assert_eq!(a.product(17), b.product(17));
        assert_ne!(a.product(17), Generator::new(8, 3, 1000).product(17));
    }

    #[test]
    fn products_are_unique_by_blueprint_and_properties() {
        let g = Generator::new(1, 1, 20_000);
        let keys: HashSet<_> = (0..g.count)
            .map(|i| {
                let p = g.product(i);
                (
                    p.blueprint_id,
                    serde_json::to_string(&p.properties).unwrap(),
                )
            })
            .collect();
        assert_eq!(keys.len() as u64, g.count);
    }

    #[test]
    fn about_two_percent_are_unmapped() {
        let g = Generator::new(1, 2, 10_000);
        let unmapped = (0..g.count)
            .filter(|i| g.product(*i).blueprint_id > CATALOGUE_BLUEPRINTS)
            .count();
        assert!((120..300).contains(&unmapped), "{unmapped}");
    }

    #[test]
    fn indices_for_inverts_the_layout() {
        let g = Generator::new(9, 4, 700_000);
        for index in [0, 1, 299_999, 300_000, 650_001] {
            let bp = g.product(index).blueprint_id;
            let found = g.indices_for(bp);
            assert!(found.contains(&index), "{index} {bp} {found:?}");
            assert!(found.iter().all(|i| g.product(*i).blueprint_id == bp));
        }
    }

    #[test]
    fn ids_are_unique_across_sellers_and_map_back_to_owners() {
        let a = Generator::new(1, 1, 10).product(9);
        let b = Generator::new(1, 2, 10).product(0);
        assert!(a.id < b.id);
        assert_eq!(owner_of(a.id), 1);
        assert_eq!(owner_of(b.id), 2);
        assert_eq!(Generator::new(1, 1, 10).index_of(a.id), Some(9));
    }

    #[test]
    fn quirks_all_occur() {
        let g = Generator::new(1, 1, 2_000);
        let products: Vec<_> = (0..g.count).map(|i| g.product(i)).collect();
        for graded in [json!(true), json!(false), Value::Null, json!(0)] {
            assert!(products.iter().any(|p| p.graded == graded));
        }
        assert!(products.iter().any(|p| p.description.is_none()));
        assert!(
            products
                .iter()
                .any(|p| p.description.as_deref() == Some(""))
        );
    }
}
