-- Jobs that must not coalesce with each other (one per purchase, say) carry a key of their own: at most
-- one queued and one running job per seller, kind and key. Syncs keep the empty key and coalesce per
-- seller and kind as before.
ALTER TABLE jobs ADD COLUMN dedupe_key text NOT NULL DEFAULT '';
DROP INDEX jobs_one_queued_per_user_kind;
DROP INDEX jobs_one_running_per_user_kind;
CREATE UNIQUE INDEX jobs_one_queued_per_user_kind_key ON jobs (user_id, kind, dedupe_key)
    WHERE state = 'queued';
CREATE UNIQUE INDEX jobs_one_running_per_user_kind_key ON jobs (user_id, kind, dedupe_key)
    WHERE state = 'running';
