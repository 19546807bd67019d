-- A fingerprint of the upstream content the last sync wrote into the row, so a re-sync can tell which
-- products changed from (id, hash) pairs alone and send only those rows in full. Any other writer
-- (a purchase, a local edit) that changes a row without setting a new hash has it cleared by the
-- trigger below, so the next sync compares that row in full instead of trusting a stale fingerprint.
ALTER TABLE inventory_items ADD COLUMN sync_hash bigint;

CREATE FUNCTION inventory_items_clear_sync_hash() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.sync_hash := NULL;
    RETURN NEW;
END $$;

-- The WHEN clause keeps the function off the sync's own updates, which always bring a new hash.
CREATE TRIGGER inventory_items_clear_sync_hash BEFORE UPDATE ON inventory_items
    FOR EACH ROW WHEN (NEW.sync_hash IS NOT DISTINCT FROM OLD.sync_hash)
    EXECUTE FUNCTION inventory_items_clear_sync_hash();
