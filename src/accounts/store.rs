//! SQL of the `accounts` table. Functions take an executor; callers own transactions.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// One row of `accounts`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct AccountRow {
    pub(super) user_id: Uuid,
    pub(super) status: String,
    pub(super) cardtrader_user_id: Option<i64>,
    pub(super) token_ciphertext: Option<Vec<u8>>,
    pub(super) shared_secret_ciphertext: Option<Vec<u8>>,
    pub(super) encryption_key_id: Option<String>,
    pub(super) last_sync_at: Option<DateTime<Utc>>,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
}

/// The columns of [`AccountRow`], as a literal so queries stay `&'static str` (sqlx's injection guard).
macro_rules! columns {
    () => {
        "user_id, status, cardtrader_user_id, token_ciphertext, \
         shared_secret_ciphertext, encryption_key_id, last_sync_at, created_at, updated_at"
    };
}

/// What a successful token check stores.
#[derive(Debug)]
pub(super) struct Connection<'a> {
    pub(super) user_id: Uuid,
    pub(super) cardtrader_user_id: Option<i64>,
    pub(super) cardtrader_app_id: i64,
    pub(super) token_ciphertext: &'a [u8],
    pub(super) shared_secret_ciphertext: &'a [u8],
    pub(super) encryption_key_id: &'a str,
}

pub(super) async fn upsert_connected(
    executor: impl PgExecutor<'_>,
    connection: &Connection<'_>,
) -> Result<AccountRow, sqlx::Error> {
    let sql = concat!(
        "INSERT INTO accounts (user_id, status, cardtrader_user_id, cardtrader_app_id, token_ciphertext, \
             shared_secret_ciphertext, encryption_key_id) \
         VALUES ($1, 'connected', $2, $3, $4, $5, $6) \
         ON CONFLICT ON CONSTRAINT accounts_pkey DO UPDATE SET \
             status = 'connected', cardtrader_user_id = EXCLUDED.cardtrader_user_id, \
             cardtrader_app_id = EXCLUDED.cardtrader_app_id, token_ciphertext = EXCLUDED.token_ciphertext, \
             shared_secret_ciphertext = EXCLUDED.shared_secret_ciphertext, \
             encryption_key_id = EXCLUDED.encryption_key_id, updated_at = now() \
         RETURNING ",
        columns!()
    );
    sqlx::query_as(sql)
        .bind(connection.user_id)
        .bind(connection.cardtrader_user_id)
        .bind(connection.cardtrader_app_id)
        .bind(connection.token_ciphertext)
        .bind(connection.shared_secret_ciphertext)
        .bind(connection.encryption_key_id)
        .fetch_one(executor)
        .await
}

/// An account brought over from another service (`import-legacy`).
#[derive(Debug)]
pub(super) struct ImportedRow<'a> {
    pub(super) user_id: Uuid,
    pub(super) status: &'static str,
    pub(super) cardtrader_user_id: Option<i64>,
    pub(super) cardtrader_app_id: Option<i64>,
    pub(super) token_ciphertext: Option<&'a [u8]>,
    pub(super) shared_secret_ciphertext: Option<&'a [u8]>,
    pub(super) encryption_key_id: Option<&'a str>,
}

/// Inserts `row` unless the seller has an account; whether it did.
pub(super) async fn insert_imported(
    executor: impl PgExecutor<'_>,
    row: &ImportedRow<'_>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO accounts (user_id, status, cardtrader_user_id, cardtrader_app_id, token_ciphertext, \
             shared_secret_ciphertext, encryption_key_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT ON CONSTRAINT accounts_pkey DO NOTHING",
    )
    .bind(row.user_id)
    .bind(row.status)
    .bind(row.cardtrader_user_id)
    .bind(row.cardtrader_app_id)
    .bind(row.token_ciphertext)
    .bind(row.shared_secret_ciphertext)
    .bind(row.encryption_key_id)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The status of each of `user_ids` that has an account.
pub(super) async fn statuses(
    executor: impl PgExecutor<'_>,
    user_ids: &[Uuid],
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("SELECT user_id, status FROM accounts WHERE user_id = ANY($1)")
        .bind(user_ids)
        .fetch_all(executor)
        .await
}

pub(super) async fn find(
    executor: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<Option<AccountRow>, sqlx::Error> {
    let sql = concat!("SELECT ", columns!(), " FROM accounts WHERE user_id = $1");
    sqlx::query_as(sql)
        .bind(user_id)
        .fetch_optional(executor)
        .await
}

/// Forgets the secrets; the row stays so the seller's history (and later their inventory) remains.
pub(super) async fn disconnect(
    executor: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<Option<AccountRow>, sqlx::Error> {
    let sql = concat!(
        "UPDATE accounts SET status = 'disconnected', token_ciphertext = NULL, shared_secret_ciphertext = NULL, \
             encryption_key_id = NULL, updated_at = now() \
         WHERE user_id = $1 RETURNING ",
        columns!()
    );
    sqlx::query_as(sql)
        .bind(user_id)
        .fetch_optional(executor)
        .await
}

/// CardTrader answered 401 for this seller's token.
pub(super) async fn mark_token_invalid(
    executor: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE accounts SET status = 'token_invalid', updated_at = now() WHERE user_id = $1 AND status = 'connected'",
    )
    .bind(user_id)
    .execute(executor)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// A full sync of this seller finished.
pub(super) async fn record_sync(
    executor: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE accounts SET last_sync_at = now(), updated_at = now() WHERE user_id = $1")
        .bind(user_id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Deletes the seller's local stock; returns how many rows went.
pub(super) async fn purge_inventory(
    executor: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM inventory_items WHERE user_id = $1")
        .bind(user_id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}
