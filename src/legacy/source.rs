//! The Python service's database, read-only: every connection starts with
//! `default_transaction_read_only = on`, so even a bug here could not write to it. Its schema is
//! described in LEGACY.md (`user_sync_settings`, `user_inventory_items`, `sync_operations`).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

/// Connections the import holds on the old database: one per seller read at once, plus one.
const MAX_CONNECTIONS: u32 = 8;

/// What can go wrong reading the old database.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `--from` is not a PostgreSQL URL.
    #[error("--from / BRX_LEGACY_DATABASE_URL is not a PostgreSQL URL: {0}")]
    BadUrl(String),
    /// The database does not have the old service's tables.
    #[error("the database given with --from is not the Python service's: {0}")]
    NotLegacy(String),
    /// A query failed.
    #[error("reading the old database failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// One row of `user_sync_settings`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LegacySeller {
    /// The shop's seller id (ours too).
    pub user_id: Uuid,
    /// The Fernet token of the CardTrader API token.
    pub cardtrader_token_encrypted: String,
    /// CardTrader's webhook shared secret, in plaintext; NULL when `/info` failed at onboarding.
    pub webhook_secret: Option<String>,
    /// `idle`, `initial_sync`, `active` or `error`.
    pub sync_status: String,
    /// End of the last successful sync.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// Why the last sync failed, when `sync_status` is `error`.
    pub last_error: Option<String>,
}

/// One row of `user_inventory_items`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LegacyItem {
    /// The old local id.
    pub id: i64,
    /// CardTrader's blueprint id.
    pub blueprint_id: i32,
    /// May be negative in the wild.
    pub quantity: i32,
    /// In the seller's CardTrader currency.
    pub price_cents: i32,
    /// CardTrader's `properties_hash`, as exported.
    pub properties: Option<serde_json::Value>,
    /// The CardTrader product id as text; NULL for rows never pushed.
    pub external_stock_id: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// The seller's free field.
    pub user_data_field: Option<String>,
    /// Graded.
    pub graded: Option<bool>,
}

/// A `sync_update` or `sync_delete` of `sync_operations` still `pending`: a local edit that may
/// never have reached CardTrader.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct PendingEdit {
    /// The Celery task id.
    pub operation_id: String,
    /// `sync_update` or `sync_delete`.
    pub operation_type: String,
    /// The seller, when the task's metadata names one (`user_id`).
    #[serde(skip)]
    pub user_id: Option<Uuid>,
    /// The task's metadata as the old service wrote it.
    pub operation_metadata: Option<serde_json::Value>,
    /// When the edit was queued.
    pub created_at: Option<DateTime<Utc>>,
}

/// The old database.
#[derive(Debug, Clone)]
pub struct LegacyDb {
    pool: PgPool,
}

impl LegacyDb {
    /// Connects read-only and checks that the old service's tables are there.
    pub async fn connect(url: &SecretString) -> Result<Self, SourceError> {
        let options = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|err| SourceError::BadUrl(err.to_string()))?
            .application_name("brx-sync import-legacy")
            .options([("default_transaction_read_only", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        let db = Self { pool };
        db.check_schema().await?;
        Ok(db)
    }

    /// The tables and columns the import reads, so a wrong `--from` is named as such.
    async fn check_schema(&self) -> Result<(), SourceError> {
        let wanted = [
            ("user_sync_settings", "cardtrader_token_encrypted"),
            ("user_sync_settings", "webhook_secret"),
            ("user_inventory_items", "external_stock_id"),
            ("user_inventory_items", "blueprint_id"),
            ("sync_operations", "operation_type"),
        ];
        let found: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() \
               AND table_name IN ('user_sync_settings', 'user_inventory_items', 'sync_operations')",
        )
        .fetch_all(&self.pool)
        .await?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(table, column)| !found.iter().any(|(t, c)| t == table && c == column))
            .map(|(table, column)| format!("{table}.{column}"))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(SourceError::NotLegacy(format!("no {}", missing.join(", "))))
        }
    }

    /// Every seller, or only `only` when not empty, in user id order.
    pub async fn sellers(&self, only: &[Uuid]) -> Result<Vec<LegacySeller>, SourceError> {
        Ok(sqlx::query_as(
            "SELECT user_id, cardtrader_token_encrypted, webhook_secret, sync_status::text AS sync_status, \
                    last_sync_at, last_error \
             FROM user_sync_settings \
             WHERE cardinality($1::uuid[]) = 0 OR user_id = ANY($1) \
             ORDER BY user_id",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The seller's inventory rows, in old id order.
    pub async fn items_of(&self, user_id: Uuid) -> Result<Vec<LegacyItem>, SourceError> {
        Ok(sqlx::query_as(
            "SELECT id, blueprint_id, quantity, price_cents, properties, external_stock_id::text AS external_stock_id, \
                    description, user_data_field, graded \
             FROM user_inventory_items WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The `sync_update` / `sync_delete` operations still pending, oldest first. The seller is
    /// read from the metadata's `user_id` (the table has no column of its own for it).
    pub async fn pending_edits(&self) -> Result<Vec<PendingEdit>, SourceError> {
        Ok(sqlx::query_as(
            "SELECT operation_id::text AS operation_id, operation_type::text AS operation_type, \
                    CASE WHEN operation_metadata->>'user_id' ~* \
                              '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' \
                         THEN (operation_metadata->>'user_id')::uuid END AS user_id, \
                    operation_metadata, created_at \
             FROM sync_operations \
             WHERE status::text = 'pending' AND operation_type::text IN ('sync_update', 'sync_delete') \
             ORDER BY created_at, operation_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
