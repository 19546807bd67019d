-- Which purchase may touch a product on CardTrader right now. Deciding whether a sent decrement or
-- give-back was applied compares CardTrader's quantity with the one seen before the call, which only
-- works if no other purchase changes that product in between. The lock is a row, not a session lock,
-- so it outlives a crashed worker: the replica that resumes the purchase still holds it.
CREATE TABLE purchase_product_locks (
    user_id     uuid        NOT NULL,
    product_id  bigint      NOT NULL,
    purchase_id uuid        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT purchase_product_locks_pkey PRIMARY KEY (user_id, product_id),
    CONSTRAINT purchase_product_locks_purchase_fkey FOREIGN KEY (purchase_id) REFERENCES purchases (id)
);

CREATE INDEX purchase_product_locks_purchase_idx ON purchase_product_locks (purchase_id);
