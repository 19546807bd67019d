-- The outbox of local inventory edits still to be pushed to CardTrader. One row per item holds the
-- latest wanted state (absolute values): a newer edit merges into it and bumps `version`, so it
-- supersedes an older pending one, and a push only clears the row if no edit came in meanwhile.
-- A create has no product id until CardTrader answers; its `create_tag` (sent as user_data_field)
-- finds it again in the export when the outcome of the create is unknown.
CREATE TABLE inventory_pushes (
    id           uuid        NOT NULL,
    user_id      uuid        NOT NULL,
    product_id   bigint,
    op           text        NOT NULL,
    fields       jsonb       NOT NULL DEFAULT '{}',
    version      bigint      NOT NULL DEFAULT 1,
    state        text        NOT NULL DEFAULT 'pending',
    last_error   text,
    create_tag   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inventory_pushes_pkey PRIMARY KEY (id),
    CONSTRAINT inventory_pushes_op_check CHECK (op IN ('update', 'delete', 'create')),
    CONSTRAINT inventory_pushes_state_check CHECK (state IN ('pending', 'failed', 'done')),
    CONSTRAINT inventory_pushes_create_check CHECK ((op = 'create') = (create_tag IS NOT NULL)),
    CONSTRAINT inventory_pushes_product_check CHECK (op = 'create' OR product_id IS NOT NULL)
);

-- One outstanding push per item: the newer edit supersedes.
CREATE UNIQUE INDEX inventory_pushes_one_per_item ON inventory_pushes (user_id, product_id)
    WHERE product_id IS NOT NULL AND state <> 'done';
CREATE UNIQUE INDEX inventory_pushes_create_tag ON inventory_pushes (create_tag) WHERE create_tag IS NOT NULL;
-- The push job reads a seller's pending rows oldest first.
CREATE INDEX inventory_pushes_pending_idx ON inventory_pushes (user_id, updated_at) WHERE state = 'pending';

-- The storefront by blueprint (the print index covers ListOffers by print).
CREATE INDEX inventory_items_offers_blueprint_idx ON inventory_items (blueprint_id, price_cents)
    WHERE quantity > reserved_quantity;
