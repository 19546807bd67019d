-- Each attempt of a sync (each claim, with its own fence) keeps its own seen-set. Keyed by job alone,
-- a worker whose lease was taken over could drop or pollute the seen-set of the attempt that took over,
-- and that attempt's sweep would then delete rows CardTrader still lists.
ALTER TABLE sync_seen ADD COLUMN fence bigint NOT NULL DEFAULT 0;
ALTER TABLE sync_seen DROP CONSTRAINT sync_seen_pkey;
ALTER TABLE sync_seen ADD CONSTRAINT sync_seen_pkey PRIMARY KEY (job_id, fence, product_id);
