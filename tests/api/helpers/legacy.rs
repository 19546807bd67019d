//! The Python service's database, as LEGACY.md describes it, in a fresh PostgreSQL database per
//! test, with real Fernet tokens made by the `fernet` crate.

use fernet::Fernet;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{POSTGRES_ADMIN_URL, drop_database};

/// The old service's schema (LEGACY.md), shared with the legacy_import bench.
const SCHEMA: &str = include_str!("../../fixtures/legacy_schema.sql");

/// One row of `user_inventory_items` to write.
#[derive(Debug, Clone)]
pub(crate) struct OldItem {
    pub(crate) blueprint_id: i32,
    pub(crate) quantity: i32,
    pub(crate) price_cents: i32,
    pub(crate) properties: Option<Value>,
    pub(crate) external_stock_id: Option<String>,
}

impl OldItem {
    /// A row of CardTrader product `product_id`.
    pub(crate) fn of(product_id: i64, blueprint_id: i32, quantity: i32) -> Self {
        Self {
            blueprint_id,
            quantity,
            price_cents: 150,
            properties: None,
            external_stock_id: Some(product_id.to_string()),
        }
    }

    /// The same row with another `external_stock_id`.
    pub(crate) fn external(mut self, external: Option<&str>) -> Self {
        self.external_stock_id = external.map(str::to_owned);
        self
    }
}

/// The old service's database and its Fernet key; dropped after the test.
pub(crate) struct LegacyDatabase {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) pool: PgPool,
    /// `FERNET_KEY` as the old service's settings held it.
    pub(crate) key: String,
    fernet: Fernet,
}

impl LegacyDatabase {
    pub(crate) async fn new() -> Self {
        let name = format!("brx_test_legacy_{}", Uuid::new_v4().simple());
        let admin = PgPool::connect(POSTGRES_ADMIN_URL).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let pool = PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
        let key = Fernet::generate_key();
        let fernet = Fernet::new(&key).unwrap();
        Self {
            name,
            url,
            pool,
            key,
            fernet,
        }
    }

    /// `plain` encrypted as the old service encrypted tokens.
    pub(crate) fn encrypt(&self, plain: &str) -> String {
        self.fernet.encrypt(plain.as_bytes())
    }

    /// A seller row with an already encrypted token.
    pub(crate) async fn add_seller(
        &self,
        user_id: Uuid,
        token_encrypted: &str,
        webhook_secret: Option<&str>,
        sync_status: &str,
    ) {
        sqlx::query(
            "INSERT INTO user_sync_settings (user_id, cardtrader_token_encrypted, webhook_secret, \
                 sync_status, last_sync_at) \
             VALUES ($1, $2, $3, $4::sync_status_enum, now() - interval '1 day')",
        )
        .bind(user_id)
        .bind(token_encrypted)
        .bind(webhook_secret)
        .bind(sync_status)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Inventory rows of `user_id`, in order (their old ids follow it).
    pub(crate) async fn add_items(&self, user_id: Uuid, items: &[OldItem]) {
        let blueprints: Vec<i32> = items.iter().map(|item| item.blueprint_id).collect();
        let quantities: Vec<i32> = items.iter().map(|item| item.quantity).collect();
        let prices: Vec<i32> = items.iter().map(|item| item.price_cents).collect();
        let properties: Vec<Option<Value>> =
            items.iter().map(|item| item.properties.clone()).collect();
        let externals: Vec<Option<String>> = items
            .iter()
            .map(|item| item.external_stock_id.clone())
            .collect();
        sqlx::query(
            "INSERT INTO user_inventory_items (user_id, blueprint_id, quantity, price_cents, \
                 properties, external_stock_id) \
             SELECT $1, b, q, p, props, ext FROM UNNEST($2::int[], $3::int[], $4::int[], $5::jsonb[], $6::text[]) \
             WITH ORDINALITY AS r(b, q, p, props, ext, n) ORDER BY n",
        )
        .bind(user_id)
        .bind(&blueprints)
        .bind(&quantities)
        .bind(&prices)
        .bind(&properties)
        .bind(&externals)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A Celery task row.
    pub(crate) async fn add_operation(
        &self,
        operation_id: &str,
        operation_type: &str,
        status: &str,
        metadata: Value,
    ) {
        sqlx::query(
            "INSERT INTO sync_operations (operation_id, operation_type, status, operation_metadata) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(operation_id)
        .bind(operation_type)
        .bind(status)
        .bind(metadata)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Every row of the three tables, as text: equal before and after means nothing was written.
    pub(crate) async fn contents(&self) -> String {
        let mut all = String::new();
        for table in [
            "user_sync_settings",
            "user_inventory_items",
            "sync_operations",
        ] {
            let sql = format!(
                "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {table} t"
            );
            let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&self.pool)
                .await
                .unwrap();
            all.push_str(&rows);
        }
        all
    }
}

impl Drop for LegacyDatabase {
    fn drop(&mut self) {
        drop_database(&self.name);
    }
}
