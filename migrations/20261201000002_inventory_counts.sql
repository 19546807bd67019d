-- Items per seller, kept by statement-level triggers, so GetSyncStatus reads one row instead of
-- counting a seller's whole inventory (hundreds of milliseconds at 200,000 rows), whichever code path
-- inserts or deletes items. Statement-level with transition tables: one counter update per chunk, not
-- one per row.
CREATE TABLE inventory_counts (
    user_id uuid   NOT NULL,
    items   bigint NOT NULL DEFAULT 0,
    CONSTRAINT inventory_counts_pkey PRIMARY KEY (user_id),
    CONSTRAINT inventory_counts_items_check CHECK (items >= 0)
);

INSERT INTO inventory_counts (user_id, items)
SELECT user_id, count(*) FROM inventory_items GROUP BY user_id;

CREATE FUNCTION inventory_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- For INSERT … ON CONFLICT DO UPDATE the transition table holds only the rows really inserted.
    INSERT INTO inventory_counts AS c (user_id, items)
    SELECT user_id, count(*) FROM inserted GROUP BY user_id ORDER BY user_id
    ON CONFLICT ON CONSTRAINT inventory_counts_pkey DO UPDATE SET items = c.items + EXCLUDED.items;
    RETURN NULL;
END $$;

CREATE FUNCTION inventory_counts_subtract() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE inventory_counts c SET items = c.items - d.items
    FROM (SELECT user_id, count(*) AS items FROM deleted GROUP BY user_id ORDER BY user_id) d
    WHERE c.user_id = d.user_id;
    RETURN NULL;
END $$;

CREATE TRIGGER inventory_counts_on_insert AFTER INSERT ON inventory_items
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION inventory_counts_add();
CREATE TRIGGER inventory_counts_on_delete AFTER DELETE ON inventory_items
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION inventory_counts_subtract();
