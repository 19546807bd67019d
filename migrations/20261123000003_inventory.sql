-- Sellers' stock: one row per seller and CardTrader product. PostgreSQL is the source of truth; a sync
-- writes only rows that changed, and the saga owns `reserved_quantity` while a purchase is in flight.
CREATE TABLE inventory_items (
    user_id           uuid        NOT NULL,
    product_id        bigint      NOT NULL,
    blueprint_id      bigint      NOT NULL,
    expansion_id      bigint,
    -- The shop's print, NULL while the catalogue has none (or could not be asked).
    print_id          bigint,
    print_table       text,
    name              text        NOT NULL,
    quantity          integer     NOT NULL,
    reserved_quantity integer     NOT NULL DEFAULT 0,
    price_cents       bigint      NOT NULL,
    currency          text        NOT NULL,
    properties        jsonb       NOT NULL DEFAULT '{}',
    description       text,
    user_data_field   text,
    tag               text,
    graded            boolean,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inventory_items_pkey PRIMARY KEY (user_id, product_id),
    CONSTRAINT inventory_items_quantity_check CHECK (quantity >= 0),
    CONSTRAINT inventory_items_reserved_check CHECK (reserved_quantity >= 0 AND reserved_quantity <= quantity),
    CONSTRAINT inventory_items_price_check CHECK (price_cents >= 0),
    CONSTRAINT inventory_items_print_check CHECK ((print_id IS NULL) = (print_table IS NULL))
);

-- Scoped syncs and listing by blueprint.
CREATE INDEX inventory_items_user_blueprint_idx ON inventory_items (user_id, blueprint_id);
CREATE INDEX inventory_items_user_expansion_idx ON inventory_items (user_id, expansion_id);
-- The remap of rows stored unmapped when the catalogue gains their print.
CREATE INDEX inventory_items_unmapped_idx ON inventory_items (blueprint_id) WHERE print_id IS NULL;
-- The storefront: every seller's available stock of a print, cheapest first.
CREATE INDEX inventory_items_offers_idx ON inventory_items (print_id, price_cents)
    WHERE print_id IS NOT NULL AND quantity > reserved_quantity;

-- Products a running sync has seen, by job: the sweep deletes the seller's rows it did not see. A side
-- table rather than a generation column on the items, because stamping a generation would rewrite every
-- unchanged row on every sync.
CREATE TABLE sync_seen (
    job_id     uuid   NOT NULL,
    product_id bigint NOT NULL,
    CONSTRAINT sync_seen_pkey PRIMARY KEY (job_id, product_id)
);
