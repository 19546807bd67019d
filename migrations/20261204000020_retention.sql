-- Retention: what has ended is deleted after a while, a bounded batch per statement, oldest first
-- (src/retention.rs runs it; each owner's store holds its deletes). Every index below is partial on
-- what retention may touch, so it hands out the next batch without reading live rows, and stays as
-- small as the history kept.

-- Ended jobs, oldest first. Queued, running and dead jobs are never candidates.
CREATE INDEX jobs_ended_idx ON jobs (finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');
-- Each seller's latest ended sync is kept (GetSyncStatus reports it, and the scheduler reads it so a
-- seller whose syncs keep failing is not queued every round): one probe per candidate sync.
CREATE INDEX jobs_ended_syncs_idx ON jobs (user_id, kind, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled') AND kind IN ('sync_full', 'sync_targeted');

-- When retention dropped an ended purchase's step log and line snapshots; the purchase row and its
-- lines stay (an idempotent replay must still find the purchase, and GetPurchase its lines).
ALTER TABLE purchases ADD COLUMN pruned_at timestamptz;
ALTER TABLE purchases ADD CONSTRAINT purchases_pruned_check
    CHECK (pruned_at IS NULL OR state IN ('completed', 'failed'));
-- Ended purchases whose log is still kept, oldest first; a pruned purchase leaves the index.
CREATE INDEX purchases_prunable_idx ON purchases (finished_at)
    WHERE state IN ('completed', 'failed') AND pruned_at IS NULL;

-- Applied webhook events, oldest first (unapplied ones are the apply job's backlog).
CREATE INDEX webhook_events_applied_idx ON webhook_events (applied_at) WHERE applied_at IS NOT NULL;
-- Order records by their last delivery, oldest first.
CREATE INDEX webhook_orders_updated_idx ON webhook_orders (updated_at);
