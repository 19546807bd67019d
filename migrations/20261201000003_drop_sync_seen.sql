-- A sync attempt now keeps the product ids it saw in memory (a compressed bitmap): an attempt is never
-- resumed, so the table bought no durability, and writing then deleting one row per product roughly
-- doubled the work of every chunk.
DROP TABLE sync_seen;
