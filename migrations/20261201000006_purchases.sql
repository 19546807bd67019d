-- Purchases of a seller's items on the shop, run as compensating sagas (DESIGN.md §6). The step log is
-- the source of the saga's state; `saga` and `state` are its latest fold, kept for queries and RPCs.
CREATE TABLE purchases (
    id              uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    idempotency_key text        NOT NULL,
    -- SHA-256 of the request (lines and buyer): the same key with another request is refused.
    request_hash    bytea       NOT NULL,
    buyer_ref       text        NOT NULL DEFAULT '',
    state           text        NOT NULL DEFAULT 'taking',
    saga            jsonb       NOT NULL,
    failure_reason  text,
    -- Past this instant a purchase still taking stock is compensated instead.
    deadline        timestamptz NOT NULL,
    -- What an operator decided about a purchase in requires_attention, and why.
    resolution      text,
    resolution_note text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT purchases_pkey PRIMARY KEY (id),
    CONSTRAINT purchases_idempotency_key UNIQUE (user_id, idempotency_key),
    CONSTRAINT purchases_state_check CHECK (state IN
        ('taking', 'finalizing', 'completed', 'compensating', 'failed', 'requires_attention'))
);

-- ListPurchases by seller and state, newest first (keyset).
CREATE INDEX purchases_user_state_idx ON purchases (user_id, state, created_at DESC, id DESC);
-- The REQUIRES_ATTENTION gauge and the operators' queue.
CREATE INDEX purchases_attention_idx ON purchases (created_at) WHERE state = 'requires_attention';

CREATE TABLE purchase_lines (
    purchase_id          uuid    NOT NULL,
    line                 integer NOT NULL,
    -- The seller's item: inventory_items.product_id, CardTrader's product id.
    product_id           bigint  NOT NULL,
    quantity             integer NOT NULL,
    -- The CardTrader product as it was before its stock was taken, to re-create it if the decrement
    -- deleted it (quantity reaching 0).
    snapshot             jsonb,
    -- The id CardTrader gave the re-created product; the local row is re-pointed to it.
    recreated_product_id bigint,
    CONSTRAINT purchase_lines_pkey PRIMARY KEY (purchase_id, line),
    CONSTRAINT purchase_lines_purchase_fkey FOREIGN KEY (purchase_id) REFERENCES purchases (id),
    CONSTRAINT purchase_lines_quantity_check CHECK (quantity >= 1)
);

-- Each step's intent before it runs and its result after, in order, with the fence of the claim that
-- wrote it: a worker whose lease was taken over cannot append.
CREATE TABLE purchase_steps (
    purchase_id uuid        NOT NULL,
    seq         integer     NOT NULL,
    event       jsonb       NOT NULL,
    fence       bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT purchase_steps_pkey PRIMARY KEY (purchase_id, seq),
    CONSTRAINT purchase_steps_purchase_fkey FOREIGN KEY (purchase_id) REFERENCES purchases (id)
);
