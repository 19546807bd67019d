-- Sellers moved over from the Python service by `brx-sync import-legacy`, one row each, written in
-- the same transaction as the seller's account, carried items and queued sync. A seller with a row
-- here is never imported again: a second run changes nothing, and an interrupted run resumes with
-- the sellers it had not committed. `report` keeps what the run decided for the seller (rows
-- skipped and why, edits the old service may never have sent) for the operator to read later.
CREATE TABLE legacy_imports (
    user_id      uuid        NOT NULL,
    outcome      text        NOT NULL,
    rows_carried integer     NOT NULL,
    rows_skipped integer     NOT NULL,
    sync_job_id  uuid,
    report       jsonb       NOT NULL DEFAULT '{}',
    imported_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT legacy_imports_pkey PRIMARY KEY (user_id),
    CONSTRAINT legacy_imports_outcome_check
        CHECK (outcome IN ('connected', 'token_invalid', 'disconnected'))
);
