-- ListInventory pages filtered by blueprint or expansion walk these in product id order and stop at
-- the page's end (keyset on the primary key), so their plan never needs a sort of every matching row.
-- The filter column comes first, the seller second: an index that starts with user_id would also be a
-- candidate for the chunk's probes by (user_id, product_id), and with statistics that predate a
-- seller's import PostgreSQL may pick it and read the whole seller's range for every probe; these
-- cannot serve such a probe at all, which leaves it to the primary key. Scoped syncs, sweeps and
-- remaps filter on the leading column and the seller just as well.
CREATE INDEX inventory_items_blueprint_user_product_idx
    ON inventory_items (blueprint_id, user_id, product_id);
CREATE INDEX inventory_items_expansion_user_product_idx
    ON inventory_items (expansion_id, user_id, product_id);
DROP INDEX inventory_items_user_blueprint_idx;
DROP INDEX inventory_items_user_expansion_idx;
