-- Sellers connected to CardTrader. One row per shop user; the CardTrader token and the webhook shared
-- secret are stored encrypted (AES-256-GCM) with the id of the key that encrypted them, so keys can rotate.
CREATE TABLE accounts (
    user_id                  uuid        NOT NULL,
    status                   text        NOT NULL DEFAULT 'connected',
    cardtrader_user_id       bigint,
    cardtrader_app_id        bigint,
    token_ciphertext         bytea,
    shared_secret_ciphertext bytea,
    encryption_key_id        text,
    last_sync_at             timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_pkey PRIMARY KEY (user_id),
    CONSTRAINT accounts_status_check
        CHECK (status IN ('connected', 'token_invalid', 'disconnected')),
    -- A connected account can always be used: its secrets and their key id are all present.
    CONSTRAINT accounts_connected_has_secrets_check
        CHECK (status <> 'connected'
               OR (token_ciphertext IS NOT NULL
                   AND shared_secret_ciphertext IS NOT NULL
                   AND encryption_key_id IS NOT NULL))
);

-- One CardTrader user belongs to one shop seller at a time; a disconnected account keeps its history
-- without blocking the CardTrader user from being connected elsewhere.
CREATE UNIQUE INDEX accounts_cardtrader_user_id_key
    ON accounts (cardtrader_user_id)
    WHERE status <> 'disconnected';

-- The periodic scheduler picks the stalest connected accounts first.
CREATE INDEX accounts_connected_last_sync_idx
    ON accounts (last_sync_at NULLS FIRST)
    WHERE status = 'connected';
