-- CardTrader's order webhooks. The intake stores each verified delivery once (CardTrader's event id is
-- the key, so a redelivery changes nothing) and the `webhook_apply` job applies a seller's events to
-- local stock in arrival order, each in its own transaction.
CREATE TABLE webhook_events (
    id               uuid        NOT NULL,
    -- Arrival order: the apply job takes a seller's events in this order.
    seq              bigint      GENERATED ALWAYS AS IDENTITY,
    user_id          uuid        NOT NULL,
    cause            text        NOT NULL,
    object_id        bigint      NOT NULL,
    mode             text        NOT NULL,
    -- CardTrader's `time`, when it sent one.
    event_time       timestamptz,
    body             jsonb       NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    applied_at       timestamptz,
    -- What applying did (or why it changed nothing); `error` when it could not be applied at all.
    outcome          text,
    error            text,
    -- Order lines whose product the seller has no local row for: [{product_id, blueprint_id}].
    unknown_products jsonb,
    -- When the targeted sync of those products' blueprints was queued.
    sync_queued_at   timestamptz,
    CONSTRAINT webhook_events_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_events_cause_check CHECK (cause <> ''),
    CONSTRAINT webhook_events_applied_check CHECK (applied_at IS NOT NULL OR (outcome IS NULL AND error IS NULL))
);

-- The apply job's next event: a seller's unapplied events in arrival order. Partial, so the index stays
-- as small as the backlog however many events are kept.
CREATE INDEX webhook_events_unapplied_idx ON webhook_events (user_id, seq) WHERE applied_at IS NULL;
-- Events whose unknown products still wait for their targeted sync to be queued.
CREATE INDEX webhook_events_sync_pending_idx ON webhook_events (user_id)
    WHERE unknown_products IS NOT NULL AND sync_queued_at IS NULL;

-- What the webhooks did to a seller's stock for each CardTrader order, so each order moves stock at
-- most once however many times and in whatever states it is delivered. Written in the same transaction
-- as the stock change it records.
CREATE TABLE webhook_orders (
    user_id             uuid        NOT NULL,
    order_id            bigint      NOT NULL,
    via_cardtrader_zero boolean     NOT NULL DEFAULT false,
    last_state          text,
    stock_taken         boolean     NOT NULL DEFAULT false,
    stock_restored      boolean     NOT NULL DEFAULT false,
    -- Seen cancelled: no later (or late) delivery of the order takes stock again.
    canceled            boolean     NOT NULL DEFAULT false,
    -- What was taken from local rows, [[product_id, amount], …]: a cancellation gives back exactly this.
    taken               jsonb       NOT NULL DEFAULT '[]',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_orders_pkey PRIMARY KEY (user_id, order_id),
    CONSTRAINT webhook_orders_restored_check CHECK (NOT stock_restored OR stock_taken)
);
