-- Jobs that used every attempt end `dead` (a dead letter an operator can retry) instead of looping;
-- `failed` stays for jobs that found retrying cannot help. The kinds are a closed set, as `JobKind` is
-- in Rust, so a typo in code fails at the insert rather than leaving a job no worker runs.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'dead'));
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('sync_full', 'sync_targeted', 'remap_unmapped', 'purchase', 'inventory_push',
                    'webhook_apply'));

-- The operators' dead-letter queue and the dead-job gauge.
CREATE INDEX jobs_dead_idx ON jobs (finished_at DESC) WHERE state = 'dead';
