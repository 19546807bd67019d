//! A seeded MySQL catalogue database per test.

use brx_sync::{
    blueprints::{BlueprintCatalog, fixture},
    config::Config,
    metrics::Metrics,
    storage::Storage,
};
use secrecy::SecretString;

use super::{MYSQL_ADMIN_URL, test_config};

/// A catalogue database of its own, seeded with prints for blueprints 1..=prints, dropped after.
pub(crate) struct CatalogDb {
    pub(crate) config: Config,
    pub(crate) name: String,
}

impl CatalogDb {
    pub(crate) async fn seeded(prints: i64) -> Self {
        let (mut config, _) = test_config();
        let name = format!("brx_test_catalog_{}", uuid::Uuid::new_v4().simple());
        config.storage.mysql_url =
            SecretString::from(format!("mysql://root@127.0.0.1:3306/{name}"));
        fixture::seed(&config.storage.mysql_url, &config.catalog, prints)
            .await
            .unwrap();
        Self { config, name }
    }

    /// A catalogue with its own metrics (and L1) over this database; `adjust` may reroute pools.
    pub(crate) fn catalog(
        &self,
        adjust: impl FnOnce(&mut Config),
    ) -> (BlueprintCatalog, Metrics, Storage) {
        let mut config = self.config.clone();
        adjust(&mut config);
        let storage = Storage::connect_lazy(&config.storage).unwrap();
        let metrics = Metrics::new().unwrap();
        let catalog = BlueprintCatalog::new(
            &config.catalog,
            storage.mysql.clone(),
            storage.redis.clone(),
            &config.storage.redis_key_prefix,
            metrics.clone(),
        );
        (catalog, metrics, storage)
    }
}

impl Drop for CatalogDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use mysql_async::prelude::Queryable;
                if let Ok(mut conn) = mysql_async::Conn::from_url(MYSQL_ADMIN_URL).await {
                    let _ = conn
                        .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                        .await;
                    let _ = conn.disconnect().await;
                }
            });
        })
        .join();
    }
}

/// Holds `LOCK TABLES … WRITE` on the first catalogue table of a test's catalogue: every lookup
/// query then waits on the lock while connections and pings still succeed, as while a schema change
/// holds the shop's catalogue. Only this test's database is locked.
pub(crate) struct CatalogueLock(mysql_async::Conn);

impl CatalogueLock {
    pub(crate) async fn take(db: &CatalogDb) -> Self {
        use mysql_async::prelude::Queryable;
        let url = secrecy::ExposeSecret::expose_secret(&db.config.storage.mysql_url).to_owned();
        let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
        let table = &db.config.catalog.tables[0];
        conn.query_drop(format!("LOCK TABLES `{table}` WRITE"))
            .await
            .unwrap();
        Self(conn)
    }

    pub(crate) async fn release(mut self) {
        use mysql_async::prelude::Queryable;
        self.0.query_drop("UNLOCK TABLES").await.unwrap();
        self.0.disconnect().await.unwrap();
    }
}
