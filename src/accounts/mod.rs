//! Sellers' CardTrader connections: checking a token with `/info`, keeping it (and the webhook shared
//! secret) encrypted at rest, handing it to other capabilities, and marking it invalid when CardTrader
//! answers 401. Tokens are never logged or returned.

mod crypto;
mod store;

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

pub use crypto::{DecryptError, Keyring, Sealed};

use crate::{
    domain::UserId,
    marketplace::{CallOptions, MarketplaceClient, MarketplaceError, Seller, types::Info},
};

/// How long ConnectAccount waits for CardTrader's `/info` (rate-limit wait included).
const CONNECT_BUDGET: Duration = Duration::from_secs(15);

/// Where an account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// Token stored and, as far as we know, valid.
    Connected,
    /// CardTrader refused the stored token; the seller must connect again.
    TokenInvalid,
    /// The seller disconnected; no secrets are kept.
    Disconnected,
}

/// Why a seller cannot be synced, bought from or edited, and what to do about it; `None`: no
/// account was ever connected.
pub fn not_connected_reason(status: Option<AccountStatus>) -> &'static str {
    match status {
        None => "no CardTrader account is connected for this seller: call ConnectAccount first",
        Some(AccountStatus::TokenInvalid) => {
            "CardTrader rejected this seller's token: call ConnectAccount again with a new token"
        }
        Some(AccountStatus::Disconnected) => {
            "the seller disconnected their CardTrader account: call ConnectAccount to connect it again"
        }
        Some(AccountStatus::Connected) => "the seller's CardTrader account is connected",
    }
}

/// An account as callers see it: no secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// The seller.
    pub user_id: UserId,
    /// Connection state.
    pub status: AccountStatus,
    /// Their CardTrader user id, once known.
    pub cardtrader_user_id: Option<i64>,
    /// When the account was first connected.
    pub connected_at: DateTime<Utc>,
    /// When the last sync finished, if ever.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// When anything last changed.
    pub updated_at: DateTime<Utc>,
}

/// A seller's account as another service (the Python one `import-legacy` moves shops from) left
/// it, to be stored as if it had been connected here.
#[derive(Debug, Clone)]
pub struct ImportedAccount {
    /// The seller.
    pub user_id: UserId,
    /// Where it stands.
    pub status: AccountStatus,
    /// The CardTrader token, if one is kept.
    pub token: Option<SecretString>,
    /// The webhook shared secret, if known.
    pub shared_secret: Option<SecretString>,
    /// The CardTrader user, when `/info` was asked.
    pub cardtrader_user_id: Option<i64>,
    /// The CardTrader app, when `/info` was asked.
    pub cardtrader_app_id: Option<i64>,
}

/// A connected seller's decrypted credentials, for calls to CardTrader on their behalf.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The seller.
    pub user_id: UserId,
    /// Rate-limit key (the user id as text).
    pub key: String,
    /// Bearer token.
    pub token: SecretString,
    /// Secret that signs their webhooks.
    pub shared_secret: SecretString,
}

impl Credentials {
    /// The seller as the marketplace client wants it.
    pub fn seller(&self) -> Seller<'_> {
        Seller {
            key: &self.key,
            token: &self.token,
        }
    }
}

/// What can go wrong with accounts, named for what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// No account for this user.
    #[error("no account for this user")]
    NotFound,
    /// The account exists but holds no usable token.
    #[error("{}", not_connected_reason(Some(*.0)))]
    NotConnected(AccountStatus),
    /// CardTrader refused the token.
    #[error("CardTrader rejected the token")]
    TokenRejected,
    /// The CardTrader user behind the token is already connected to another seller.
    #[error("this CardTrader account is connected to another seller")]
    CardTraderAccountTaken,
    /// CardTrader could not be asked (down, breaker open, timeout).
    #[error("CardTrader is unavailable: {0}")]
    CardTraderUnavailable(String),
    /// The seller's rate limit left no room before the deadline.
    #[error("rate limited by CardTrader; retry in {0:?}")]
    RateLimited(Duration),
    /// `BRX_ENCRYPTION_KEYS` is not set, so no token can be stored.
    #[error("no encryption key is configured (BRX_ENCRYPTION_KEYS)")]
    EncryptionNotConfigured,
    /// The stored token or secret cannot be opened with the configured keys (a key removed from
    /// `BRX_ENCRYPTION_KEYS`, or a corrupted row): the seller has to connect again.
    #[error("the stored CardTrader token cannot be decrypted with the configured keys: {0}")]
    TokenUnreadable(String),
    /// Anything else; logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AccountError {
    fn from(err: sqlx::Error) -> Self {
        AccountError::Internal(err.into())
    }
}

/// The accounts capability.
#[derive(Debug, Clone)]
pub struct Accounts {
    pg: crate::storage::Pg,
    keyring: Option<Arc<Keyring>>,
    marketplace: MarketplaceClient,
}

impl Accounts {
    /// Accounts stored in `pg`, secrets sealed with `keyring` when configured.
    pub fn new(
        pg: crate::storage::Pg,
        keyring: Option<Keyring>,
        marketplace: MarketplaceClient,
    ) -> Self {
        Self {
            pg,
            keyring: keyring.map(Arc::new),
            marketplace,
        }
    }

    /// The CardTrader client these accounts call through.
    pub fn marketplace(&self) -> &MarketplaceClient {
        &self.marketplace
    }

    /// Checks `token` with CardTrader and stores it; connecting again replaces the token (idempotent).
    #[tracing::instrument(skip_all, fields(user_id = %user_id), err)]
    pub async fn connect(
        &self,
        user_id: UserId,
        token: SecretString,
    ) -> Result<Account, AccountError> {
        let keyring = self
            .keyring
            .as_ref()
            .ok_or(AccountError::EncryptionNotConfigured)?;
        let info = self.check_token(user_id, &token, CONNECT_BUDGET).await?;
        let token_sealed =
            keyring.seal(token.expose_secret().as_bytes(), &context(user_id, "token"));
        let secret_sealed = keyring.seal(
            info.shared_secret.as_bytes(),
            &context(user_id, "shared_secret"),
        );
        // Both were sealed by the current key, so one key id describes the row.
        let connection = store::Connection {
            user_id: user_id.as_uuid(),
            cardtrader_user_id: info.user_id,
            cardtrader_app_id: info.id,
            token_ciphertext: &token_sealed.bytes,
            shared_secret_ciphertext: &secret_sealed.bytes,
            encryption_key_id: &token_sealed.key_id,
        };
        let row = store::upsert_connected(&self.pg, &connection)
            .await
            .map_err(
                |err| match err.as_database_error().and_then(|db| db.constraint()) {
                    Some("accounts_cardtrader_user_id_key") => AccountError::CardTraderAccountTaken,
                    _ => err.into(),
                },
            )?;
        // Typed fields: a number when CardTrader said, absent when it did not (never "Some(…)").
        tracing::info!(cardtrader_user_id = info.user_id, "account connected");
        account(row)
    }

    /// Asks CardTrader's `/info` whether `token` works, within `budget` (rate-limit wait included),
    /// storing nothing: what ConnectAccount checks, and `import-legacy --verify`.
    pub async fn check_token(
        &self,
        user_id: UserId,
        token: &SecretString,
        budget: Duration,
    ) -> Result<Info, AccountError> {
        let key = user_id.to_string();
        let seller = Seller { key: &key, token };
        self.marketplace
            .info(seller, CallOptions::interactive(budget))
            .await
            .map_err(connect_error)
    }

    /// Of `users`, those with an account, and where each stands.
    pub async fn statuses(
        &self,
        users: &[UserId],
    ) -> Result<HashMap<UserId, AccountStatus>, AccountError> {
        let ids: Vec<uuid::Uuid> = users.iter().map(|user| user.as_uuid()).collect();
        let mut found = HashMap::with_capacity(ids.len());
        for (user_id, raw) in store::statuses(&self.pg, &ids).await? {
            let user = UserId::from_uuid(user_id).map_err(anyhow::Error::from)?;
            found.insert(user, status(&raw)?);
        }
        Ok(found)
    }

    /// Stores an account brought over from another service, in the caller's transaction, unless the
    /// seller already has one (returns false then, and writes nothing). Its secrets are sealed as
    /// ConnectAccount seals them; a `Connected` account must bring both.
    pub async fn insert_imported_in(
        &self,
        conn: &mut sqlx::PgConnection,
        account: &ImportedAccount,
    ) -> Result<bool, AccountError> {
        let keyring = self
            .keyring
            .as_ref()
            .ok_or(AccountError::EncryptionNotConfigured)?;
        let user_id = account.user_id;
        let seal = |secret: &Option<SecretString>, field: &str| {
            secret.as_ref().map(|plain| {
                keyring.seal(plain.expose_secret().as_bytes(), &context(user_id, field))
            })
        };
        let token = seal(&account.token, "token");
        let shared_secret = seal(&account.shared_secret, "shared_secret");
        let key_id = token
            .as_ref()
            .or(shared_secret.as_ref())
            .map(|sealed| sealed.key_id.as_str());
        let row = store::ImportedRow {
            user_id: user_id.as_uuid(),
            status: status_name(account.status),
            cardtrader_user_id: account.cardtrader_user_id,
            cardtrader_app_id: account.cardtrader_app_id,
            token_ciphertext: token.as_ref().map(|sealed| sealed.bytes.as_slice()),
            shared_secret_ciphertext: shared_secret.as_ref().map(|sealed| sealed.bytes.as_slice()),
            encryption_key_id: key_id,
        };
        store::insert_imported(conn, &row).await.map_err(|err| {
            match err.as_database_error().and_then(|db| db.constraint()) {
                Some("accounts_cardtrader_user_id_key") => AccountError::CardTraderAccountTaken,
                _ => err.into(),
            }
        })
    }

    /// The account of `user_id`.
    pub async fn get(&self, user_id: UserId) -> Result<Account, AccountError> {
        let row = store::find(&self.pg, user_id.as_uuid()).await?;
        account(row.ok_or(AccountError::NotFound)?)
    }

    /// Stops whatever runs for the seller (queued jobs are cancelled, running ones stop at their next
    /// checkpoint), forgets their token and shared secret, and with `purge_inventory` deletes their
    /// local stock, all in one transaction.
    #[tracing::instrument(skip_all, fields(user_id = %user_id), err)]
    pub async fn disconnect(
        &self,
        user_id: UserId,
        purge_inventory: bool,
    ) -> Result<Account, AccountError> {
        let mut tx = self.pg.begin().await?;
        let row = store::disconnect(&mut *tx, user_id.as_uuid())
            .await?
            .ok_or(AccountError::NotFound)?;
        let cancelled = crate::jobs::store::cancel_all_for(&mut *tx, user_id)
            .await
            .map_err(|err| AccountError::Internal(err.into()))?;
        let purged = if purge_inventory {
            store::purge_inventory(&mut *tx, user_id.as_uuid()).await?
        } else {
            0
        };
        tx.commit().await?;
        tracing::info!(cancelled, purged, "account disconnected");
        account(row)
    }

    /// The decrypted credentials of a connected seller.
    pub async fn credentials(&self, user_id: UserId) -> Result<Credentials, AccountError> {
        let row = store::find(&self.pg, user_id.as_uuid())
            .await?
            .ok_or(AccountError::NotFound)?;
        let status = status(&row.status)?;
        let (Some(token), Some(secret), Some(key_id), AccountStatus::Connected) = (
            row.token_ciphertext,
            row.shared_secret_ciphertext,
            row.encryption_key_id,
            status,
        ) else {
            return Err(AccountError::NotConnected(status));
        };
        let keyring = self
            .keyring
            .as_ref()
            .ok_or(AccountError::EncryptionNotConfigured)?;
        let open = |bytes: Vec<u8>, field: &str| -> Result<SecretString, AccountError> {
            let sealed = Sealed {
                key_id: key_id.clone(),
                bytes,
            };
            let plain = keyring
                .open(&sealed, &context(user_id, field))
                .map_err(|err| AccountError::TokenUnreadable(err.to_string()))?;
            let text = String::from_utf8(plain)
                .map_err(|err| AccountError::TokenUnreadable(err.to_string()))?;
            Ok(SecretString::from(text))
        };
        Ok(Credentials {
            user_id,
            key: user_id.to_string(),
            token: open(token, "token")?,
            shared_secret: open(secret, "shared_secret")?,
        })
    }

    /// Records, in the caller's unit of work, that a full sync of this seller finished.
    pub async fn record_sync(
        &self,
        conn: &mut sqlx::PgConnection,
        user_id: UserId,
    ) -> Result<(), AccountError> {
        store::record_sync(conn, user_id.as_uuid()).await?;
        Ok(())
    }

    /// Call after any CardTrader error made with this seller's token, in the caller's unit of work:
    /// a 401 marks the account `token_invalid`, so nothing keeps hammering CardTrader with a dead
    /// token.
    pub async fn note_cardtrader_error(
        &self,
        conn: &mut sqlx::PgConnection,
        user_id: UserId,
        error: &MarketplaceError,
    ) -> Result<(), AccountError> {
        if matches!(error, MarketplaceError::Unauthorized)
            && store::mark_token_invalid(conn, user_id.as_uuid()).await?
        {
            tracing::warn!(%user_id, "CardTrader rejected the stored token: account marked token_invalid");
        }
        Ok(())
    }
}

/// Authenticated context of a sealed value: a ciphertext opens only in its own row and column.
fn context(user_id: UserId, field: &str) -> Vec<u8> {
    format!("accounts/{user_id}/{field}").into_bytes()
}

fn connect_error(error: MarketplaceError) -> AccountError {
    match error {
        MarketplaceError::Unauthorized => AccountError::TokenRejected,
        MarketplaceError::RateLimited { retry_after, .. } => AccountError::RateLimited(retry_after),
        MarketplaceError::Unavailable { reason } => AccountError::CardTraderUnavailable(reason),
        MarketplaceError::Timeout => {
            AccountError::CardTraderUnavailable("no answer in time".into())
        }
        other => AccountError::CardTraderUnavailable(other.to_string()),
    }
}

fn status_name(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Connected => "connected",
        AccountStatus::TokenInvalid => "token_invalid",
        AccountStatus::Disconnected => "disconnected",
    }
}

fn status(raw: &str) -> Result<AccountStatus, AccountError> {
    match raw {
        "connected" => Ok(AccountStatus::Connected),
        "token_invalid" => Ok(AccountStatus::TokenInvalid),
        "disconnected" => Ok(AccountStatus::Disconnected),
        other => Err(anyhow::anyhow!("unknown account status '{other}'").into()),
    }
}

fn account(row: store::AccountRow) -> Result<Account, AccountError> {
    Ok(Account {
        user_id: UserId::from_uuid(row.user_id).map_err(anyhow::Error::from)?,
        status: status(&row.status)?,
        cardtrader_user_id: row.cardtrader_user_id,
        connected_at: row.created_at,
        last_sync_at: row.last_sync_at,
        updated_at: row.updated_at,
    })
}
