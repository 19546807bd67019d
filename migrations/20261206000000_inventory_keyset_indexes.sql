-- ListInventory pages filtered by blueprint or expansion walk these in product id order and stop at
-- the page's end (keyset on the primary key), so their plan never needs a sort of every matching row
-- and does not depend on the table's statistics. The old two-column indexes are prefixes of these:
-- scoped syncs, sweeps and remaps use the new ones just as well.
CREATE INDEX inventory_items_user_blueprint_product_idx
    ON inventory_items (user_id, blueprint_id, product_id);
CREATE INDEX inventory_items_user_expansion_product_idx
    ON inventory_items (user_id, expansion_id, product_id);
DROP INDEX inventory_items_user_blueprint_idx;
DROP INDEX inventory_items_user_expansion_idx;
