//! Syncs while the MySQL catalogue is down or hung: what Redis knows is still mapped, the rest is
//! stored as unknown, and unknown rows are remapped once the catalogue answers again, without a full
//! sync: when the storage supervisor sees MySQL come back, or at the periodic check.

use std::time::Duration;

use brx_sync::{
    blueprints::fixture,
    config::Config,
    domain::{BlueprintId, UserId},
    pb::v1::{PoolState, SyncState},
};
use secrecy::SecretString;

use crate::helpers::{
    CatalogDb, CatalogueLock, TcpProxy, TestApp, seller_listing, spawn_app_with, sync_to_end,
};

async fn app(db: &CatalogDb, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let url = db.config.storage.mysql_url.clone();
    spawn_app_with(|config| {
        config.storage.mysql_url = url;
        config.jobs.poll_interval = Duration::from_millis(100);
        adjust(config);
    })
    .await
}

/// (blueprint, print id, print unknown) of the seller's rows, by blueprint.
async fn rows(app: &TestApp, user: UserId) -> Vec<(i64, Option<i64>, bool)> {
    let pool = crate::helpers::pg_like_the_app(&app.config);
    let rows = sqlx::query_as(
        "SELECT blueprint_id, print_id, print_unknown FROM inventory_items WHERE user_id = $1 \
         ORDER BY blueprint_id",
    )
    .bind(user.as_uuid())
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

/// Polls until every row of the seller has its print; panics after 20 s saying what is left.
async fn until_all_mapped(app: &TestApp, user: UserId) -> Vec<(i64, Option<i64>, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = rows(app, user).await;
        if now.iter().all(|(_, print, _)| print.is_some()) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows still without a print 20 s after the catalogue came back: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls GetStats until the app's supervisor reports MySQL in `state`; panics after 20 s.
async fn until_mysql_is(app: &TestApp, state: PoolState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = app.get_stats(Some(&app.service_token())).await.unwrap();
        let mysql = stats
            .pools
            .iter()
            .find(|pool| pool.name == "mysql")
            .unwrap();
        if mysql.state() == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "MySQL never became {state:?}, last {:?}",
            mysql.state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many jobs of `kind` the seller has, in any state.
async fn jobs_of(app: &TestApp, user: UserId, kind: &str) -> i64 {
    let pool = crate::helpers::pg_like_the_app(&app.config);
    let count = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE user_id = $1 AND kind = $2")
        .bind(user.as_uuid())
        .bind(kind)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    count
}

#[tokio::test]
async fn a_sync_during_a_catalogue_hang_stores_what_redis_knows_mapped_and_the_rest_unknown() {
    let db = CatalogDb::seeded(1_000).await;
    let app = app(&db, |config| {
        config.catalog.query_timeout = Duration::from_millis(500)
    })
    .await;
    let (user, _, _) = seller_listing(&app, &[1, 2, 3, 4, 5, 6]).await;
    // Another replica cached the prints of blueprints 1..=3 in the Redis both share.
    let prefix = app.config.storage.redis_key_prefix.clone();
    let (other, _, _) = db.catalog(|config| config.storage.redis_key_prefix = prefix);
    let cached: Vec<BlueprintId> = (1..=3).map(|id| BlueprintId::new(id).unwrap()).collect();
    other
        .resolve_many(&cached, std::time::Instant::now() + Duration::from_secs(10))
        .await;
    let lock = CatalogueLock::take(&db).await;

    let synced = sync_to_end(&app, user, vec![], vec![]).await;
    lock.release().await;

    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    let stored = rows(&app, user).await;
    for &(blueprint, print, unknown) in &stored[..3] {
        assert_eq!(
            (print, unknown),
            (Some(fixture::print_id_of(blueprint)), false),
            "blueprint {blueprint} was in Redis"
        );
    }
    for &(blueprint, print, unknown) in &stored[3..] {
        assert_eq!((print, unknown), (None, true), "blueprint {blueprint}");
    }
}

#[tokio::test]
async fn rows_stored_while_mysql_was_down_are_mapped_once_it_is_back_without_a_full_sync() {
    let db = CatalogDb::seeded(1_000).await;
    let proxy = TcpProxy::start("127.0.0.1:3306".parse().unwrap()).await;
    let route = SecretString::from(format!("mysql://root@{}/{}", proxy.addr, db.name));
    let app = app(&db, |config| config.storage.mysql_url = route).await;
    let (user, _, _) = seller_listing(&app, &[1, 2, 3, 4]).await;
    proxy.cut().await;
    until_mysql_is(&app, PoolState::Down).await;
    let synced = sync_to_end(&app, user, vec![], vec![]).await;
    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    assert!(
        rows(&app, user).await.iter().all(|row| row.1.is_none()),
        "stored without a print while MySQL is down"
    );

    proxy.restore();
    let mapped = until_all_mapped(&app, user).await;

    for (blueprint, print, unknown) in mapped {
        assert_eq!(
            (print, unknown),
            (Some(fixture::print_id_of(blueprint)), false)
        );
    }
    assert_eq!(
        jobs_of(&app, user, "sync_full").await,
        1,
        "no second full sync"
    );
    assert!(jobs_of(&app, user, "remap_unmapped").await >= 1);
}

#[tokio::test]
async fn rows_stored_while_the_catalogue_hung_unseen_by_health_checks_are_mapped_by_the_periodic_check()
 {
    let db = CatalogDb::seeded(1_000).await;
    let app = app(&db, |config| {
        config.catalog.query_timeout = Duration::from_millis(300);
        config.sync.remap_unknown_interval = Duration::from_millis(300);
        // One check at start-up and none after: only the periodic look can notice the end.
        config.storage.health_check_interval = Duration::from_secs(3_600);
    })
    .await;
    let (user, _, _) = seller_listing(&app, &[1, 2, 3]).await;
    let lock = CatalogueLock::take(&db).await;
    let synced = sync_to_end(&app, user, vec![], vec![]).await;
    assert_eq!(
        synced.state(),
        SyncState::Succeeded,
        "{}",
        synced.last_error
    );
    assert!(
        rows(&app, user).await.iter().all(|row| row.1.is_none()),
        "stored without a print while the catalogue hangs"
    );

    lock.release().await;
    let mapped = until_all_mapped(&app, user).await;

    for (blueprint, print, unknown) in mapped {
        assert_eq!(
            (print, unknown),
            (Some(fixture::print_id_of(blueprint)), false)
        );
    }
    assert_eq!(
        jobs_of(&app, user, "sync_full").await,
        1,
        "no second full sync"
    );
}
