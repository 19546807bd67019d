-- A push job that gives up (out of attempts, or failing for good) no longer strands the seller's
-- pending pushes: each counts another round and waits `retry_at` for the re-queuer, which queues a
-- new push job then; past the last round a push ends failed with the reason. NULL `retry_at`: a job
-- is expected to look at the row (it was just edited, or just re-queued).
ALTER TABLE inventory_pushes ADD COLUMN rounds integer NOT NULL DEFAULT 0;
ALTER TABLE inventory_pushes ADD COLUMN retry_at timestamptz;
ALTER TABLE inventory_pushes ADD CONSTRAINT inventory_pushes_rounds_check CHECK (rounds >= 0);

-- The re-queuer's look: pending rows whose retry time has come, or that no job touched for long.
CREATE INDEX inventory_pushes_requeue_idx ON inventory_pushes (retry_at, updated_at)
    WHERE state = 'pending';
