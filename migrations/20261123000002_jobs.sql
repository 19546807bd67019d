-- Durable background work: syncs, pushes, webhook application, saga recovery. Any replica may claim any
-- job (FOR UPDATE SKIP LOCKED); a claim takes a lease and bumps the fence, and every later write of the
-- claimant checks the fence, so a worker whose lease was taken over can no longer write.
CREATE TABLE jobs (
    id               uuid        NOT NULL,
    user_id          uuid        NOT NULL,
    kind             text        NOT NULL,
    lane             text        NOT NULL,
    state            text        NOT NULL DEFAULT 'queued',
    payload          jsonb       NOT NULL DEFAULT '{}',
    priority         integer     NOT NULL DEFAULT 0,
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 5,
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    fence            bigint      NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    last_error       text,
    progress         jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jobs_pkey PRIMARY KEY (id),
    CONSTRAINT jobs_lane_check CHECK (lane IN ('interactive', 'bulk')),
    CONSTRAINT jobs_state_check CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT jobs_running_has_lease_check
        CHECK (state <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- Per seller and kind at most one queued and one running job: further requests coalesce into the
-- queued one. Enforced here rather than by a check-then-insert, which would race.
CREATE UNIQUE INDEX jobs_one_queued_per_user_kind ON jobs (user_id, kind) WHERE state = 'queued';
CREATE UNIQUE INDEX jobs_one_running_per_user_kind ON jobs (user_id, kind) WHERE state = 'running';

-- The claim scans queued jobs of one lane in priority and due order.
CREATE INDEX jobs_claimable_idx ON jobs (lane, priority DESC, run_at) WHERE state = 'queued';
-- Running jobs whose lease ran out are taken over by the claim too.
CREATE INDEX jobs_running_lease_idx ON jobs (lane, lease_expires_at) WHERE state = 'running';
-- ListSyncs and per-seller lookups.
CREATE INDEX jobs_user_created_idx ON jobs (user_id, created_at DESC);
