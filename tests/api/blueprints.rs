//! The blueprint catalogue against the real MariaDB and Redis: each level, negative caching, TTL
//! jitter, one query for a stampede, degraded modes, pool exhaustion, and the RPCs' limits.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use brx_sync::{
    blueprints::{Resolution, fixture},
    config::Config,
    domain::{BlueprintId, UserId},
    metrics::Metrics,
    pb::v1::{
        InvalidateBlueprintsRequest, MappingState, ResolveBlueprintsRequest,
        blueprint_service_client::BlueprintServiceClient,
    },
};
use secrecy::SecretString;
use tonic::Code;

use crate::helpers::{CatalogDb, CatalogueLock, TcpProxy, authorized, spawn_app_with, wait_until};

fn ids(raw: impl IntoIterator<Item = i64>) -> Vec<BlueprintId> {
    raw.into_iter()
        .map(|id| BlueprintId::new(id).unwrap())
        .collect()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn lookups(metrics: &Metrics, level: &str) -> u64 {
    metrics.blueprint_lookups.with_label_values(&[level]).get()
}

fn mapped(resolution: &Resolution) -> (i64, String) {
    match resolution {
        Resolution::Mapped(print) => (print.print_id, print.table.to_string()),
        other => panic!("expected a mapping, got {other:?}"),
    }
}

#[tokio::test]
async fn a_mapping_is_found_in_each_catalogue_table() {
    let db = CatalogDb::seeded(100).await;
    let (catalog, metrics, _) = db.catalog(|_| {});

    let answers = catalog.resolve_many(&ids([1, 7, 8, 9]), soon()).await;

    assert_eq!(
        mapped(&answers[&BlueprintId::new(1).unwrap()]),
        (fixture::print_id_of(1), "cards_prints".into())
    );
    assert_eq!(
        mapped(&answers[&BlueprintId::new(7).unwrap()]).1,
        "op_prints"
    );
    assert_eq!(
        mapped(&answers[&BlueprintId::new(8).unwrap()]).1,
        "pk_prints"
    );
    assert_eq!(
        mapped(&answers[&BlueprintId::new(9).unwrap()]).1,
        "sealed_products"
    );
    assert_eq!(
        metrics.catalog_queries.get(),
        1,
        "one UNION ALL query for all four"
    );
}

#[tokio::test]
async fn each_level_answers_in_turn_l1_then_redis_then_mysql() {
    let db = CatalogDb::seeded(100).await;
    let (first, first_metrics, _) = db.catalog(|_| {});
    first.resolve_many(&ids(1..=10), soon()).await;
    first.resolve_many(&ids(1..=10), soon()).await;
    assert_eq!(lookups(&first_metrics, "mysql"), 10);
    assert_eq!(lookups(&first_metrics, "l1"), 10);

    // Another replica: empty L1, same Redis.
    let (second, second_metrics, _) = db.catalog(|_| {});
    let answers = second.resolve_many(&ids(1..=10), soon()).await;

    assert_eq!(lookups(&second_metrics, "redis"), 10);
    assert_eq!(
        second_metrics.catalog_queries.get(),
        0,
        "Redis answered, MySQL was not asked"
    );
    assert_eq!(
        mapped(&answers[&BlueprintId::new(3).unwrap()]).0,
        fixture::print_id_of(3)
    );
}

#[tokio::test]
async fn unmapped_ids_are_negative_cached_so_the_next_replica_does_not_ask_mysql() {
    let db = CatalogDb::seeded(100).await;
    let (first, first_metrics, _) = db.catalog(|_| {});

    let answers = first.resolve_many(&ids([500_001, 500_002]), soon()).await;

    assert!(
        answers
            .values()
            .all(|resolution| *resolution == Resolution::Unmapped)
    );
    assert_eq!(first_metrics.catalog_queries.get(), 1);
    let (second, second_metrics, _) = db.catalog(|_| {});
    let again = second.resolve_many(&ids([500_001, 500_002]), soon()).await;
    assert!(
        again
            .values()
            .all(|resolution| *resolution == Resolution::Unmapped)
    );
    assert_eq!(second_metrics.catalog_queries.get(), 0);
    assert_eq!(lookups(&second_metrics, "negative"), 2);
}

#[tokio::test]
async fn cached_entries_carry_jittered_ttls_around_their_nominal_lifetime() {
    let db = CatalogDb::seeded(300).await;
    let (catalog, _, storage) = db.catalog(|_| {});
    catalog
        .resolve_many(&ids((1..=200).chain(900_001..=900_050)), soon())
        .await;

    let mut conn = storage.redis.get().await.unwrap();
    let ttls = |range: std::ops::RangeInclusive<i64>| {
        let keys: Vec<String> = range
            .map(|id| format!("{}bp:{id}", db.config.storage.redis_key_prefix))
            .collect();
        let mut pipe = deadpool_redis::redis::pipe();
        for key in &keys {
            pipe.cmd("TTL").arg(key);
        }
        pipe
    };
    let positive: Vec<i64> = ttls(1..=200).query_async(&mut conn).await.unwrap();
    let negative: Vec<i64> = ttls(900_001..=900_050)
        .query_async(&mut conn)
        .await
        .unwrap();

    let day = 86_400.0;
    assert!(
        positive
            .iter()
            .all(|&ttl| ttl as f64 >= day * 0.89 && ttl as f64 <= day * 1.1),
        "{positive:?}"
    );
    assert!(
        negative.iter().all(|&ttl| (530..=660).contains(&ttl)),
        "{negative:?}"
    );
    let distinct: std::collections::HashSet<&i64> = positive.iter().collect();
    assert!(
        distinct.len() > 50,
        "entries written together must not expire together"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_callers_for_the_same_cold_ids_cause_one_mysql_query() {
    let db = CatalogDb::seeded(2_000).await;
    let (catalog, metrics, _) = db.catalog(|_| {});
    let wanted = ids(1..=1_000);

    let callers: Vec<_> = (0..200)
        .map(|_| {
            let catalog = catalog.clone();
            let wanted = wanted.clone();
            tokio::spawn(async move { catalog.resolve_many(&wanted, soon()).await })
        })
        .collect();
    let mut all = Vec::new();
    for caller in callers {
        all.push(caller.await.unwrap());
    }

    assert_eq!(
        metrics.catalog_queries.get(),
        1,
        "the stampede shared one query"
    );
    assert!(all.iter().all(|answers| answers.len() == 1_000
        && answers.values().all(|r| matches!(r, Resolution::Mapped(_)))));
}

#[tokio::test]
async fn with_redis_down_answers_keep_coming_from_mysql_and_redis_is_used_again_when_it_returns() {
    let db = CatalogDb::seeded(500).await;
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let (catalog, metrics, storage) = db.catalog(|config| {
        config.storage.redis_url = SecretString::from(format!("redis://{}/0", proxy.addr));
        config.storage.redis_timeout = Duration::from_millis(300);
    });
    catalog.resolve_many(&ids(1..=10), soon()).await;

    proxy.cut().await;
    let during = catalog.resolve_many(&ids(11..=20), soon()).await;

    assert!(
        during
            .values()
            .all(|resolution| matches!(resolution, Resolution::Mapped(_)))
    );
    assert!(catalog.redis_degraded());
    assert_eq!(metrics.blueprint_cache_degraded.get(), 1);

    proxy.restore();
    // After a failure Redis is left alone for a while, then tried by the next lookup that misses L1:
    // look up ids not asked for before (so not in L1) until one of them finds Redis back.
    let mut unasked = 100..;
    wait_until(
        "the cache to find Redis back",
        Duration::from_secs(10),
        || {
            let probe = ids(unasked.next());
            let catalog = &catalog;
            async move {
                catalog.resolve_many(&probe, soon()).await;
                !catalog.redis_degraded()
            }
        },
    )
    .await;
    catalog.resolve_many(&ids(21..=30), soon()).await;

    assert!(!catalog.redis_degraded());
    assert_eq!(metrics.blueprint_cache_degraded.get(), 0);
    let mut conn = storage.redis.get().await.unwrap();
    let cached: Option<String> = deadpool_redis::redis::cmd("GET")
        .arg(format!("{}bp:25", db.config.storage.redis_key_prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(cached.is_some(), "answers are written to Redis again");
}

#[tokio::test]
async fn with_mysql_down_cached_answers_are_served_and_the_rest_reported_unknown() {
    let db = CatalogDb::seeded(500).await;
    let proxy = TcpProxy::start("127.0.0.1:3306".parse().unwrap()).await;
    let route = |config: &mut Config| {
        config.storage.mysql_url =
            SecretString::from(format!("mysql://root@{}/{}", proxy.addr, db.name));
        config.catalog.mysql_acquire_timeout = Duration::from_millis(500);
    };
    let (warm, _, _) = db.catalog(route);
    warm.resolve_many(&ids(1..=5), soon()).await;

    proxy.cut().await;
    let (cold, metrics, _) = db.catalog(route);
    let answers = cold.resolve_many(&ids(1..=10), soon()).await;

    for id in 1..=5 {
        assert!(
            matches!(
                answers[&BlueprintId::new(id).unwrap()],
                Resolution::Mapped(_)
            ),
            "id {id} was cached"
        );
    }
    for id in 6..=10 {
        assert_eq!(
            answers[&BlueprintId::new(id).unwrap()],
            Resolution::Unknown,
            "id {id}: unknown, not unmapped"
        );
    }
    assert_eq!(lookups(&metrics, "unknown"), 5);
}

#[tokio::test]
async fn an_exhausted_pool_answers_unknown_at_the_timeout_instead_of_hanging() {
    let db = CatalogDb::seeded(100).await;
    let (catalog, _, storage) = db.catalog(|config| {
        config.storage.mysql_max_connections = 1;
        config.catalog.mysql_acquire_timeout = Duration::from_millis(300);
    });
    let _held = storage.mysql.get_conn().await.unwrap();

    let started = Instant::now();
    let answers = catalog.resolve_many(&ids([1, 2]), soon()).await;

    assert!(
        answers
            .values()
            .all(|resolution| *resolution == Resolution::Unknown)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unknown_answers_are_not_cached_so_a_later_call_maps_them() {
    let db = CatalogDb::seeded(100).await;
    let (catalog, _, storage) = db.catalog(|config| {
        config.storage.mysql_max_connections = 1;
        config.catalog.mysql_acquire_timeout = Duration::from_millis(200);
    });
    let held = storage.mysql.get_conn().await.unwrap();
    assert_eq!(
        catalog.resolve_many(&ids([4]), soon()).await[&BlueprintId::new(4).unwrap()],
        Resolution::Unknown
    );
    drop(held);

    let later = catalog.resolve_many(&ids([4]), soon()).await;

    assert!(matches!(
        later[&BlueprintId::new(4).unwrap()],
        Resolution::Mapped(_)
    ));
}

async fn rpc_app(db: &CatalogDb) -> crate::helpers::TestApp {
    let url = db.config.storage.mysql_url.clone();
    spawn_app_with(|config| config.storage.mysql_url = url).await
}

#[tokio::test]
async fn resolve_blueprints_answers_each_id_with_its_state() {
    let db = CatalogDb::seeded(100).await;
    let app = rpc_app(&db).await;
    let seller = UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let mut client = BlueprintServiceClient::new(app.channel().await);

    let request = ResolveBlueprintsRequest {
        blueprint_ids: vec![8, 700_000, 8],
    };
    let response = client
        .resolve_blueprints(authorized(request, &app.seller_token(seller)))
        .await
        .unwrap()
        .into_inner();

    let states: HashMap<i64, MappingState> = response
        .mappings
        .iter()
        .map(|m| (m.blueprint_id, m.state()))
        .collect();
    assert_eq!(response.mappings.len(), 2, "duplicates answered once");
    assert_eq!(states[&8], MappingState::Mapped);
    assert_eq!(states[&700_000], MappingState::Unmapped);
    assert_eq!(response.mappings[0].print_table, "pk_prints");
}

#[tokio::test]
async fn resolve_blueprints_refuses_more_than_5000_ids_naming_the_limit_and_bad_ids_naming_their_index()
 {
    let db = CatalogDb::seeded(10).await;
    let app = rpc_app(&db).await;
    let mut client = BlueprintServiceClient::new(app.channel().await);
    let token = app.service_token();

    let too_many = ResolveBlueprintsRequest {
        blueprint_ids: (1..=5_001).collect(),
    };
    let status = client
        .resolve_blueprints(authorized(too_many, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("blueprint_ids") && status.message().contains("5000"),
        "{}",
        status.message()
    );

    let negative = ResolveBlueprintsRequest {
        blueprint_ids: vec![3, -1],
    };
    let status = client
        .resolve_blueprints(authorized(negative, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("blueprint_ids[1]"),
        "{}",
        status.message()
    );

    let empty = ResolveBlueprintsRequest {
        blueprint_ids: vec![],
    };
    assert_eq!(
        client
            .resolve_blueprints(authorized(empty, &token))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    let anonymous = client
        .resolve_blueprints(ResolveBlueprintsRequest {
            blueprint_ids: vec![1],
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn only_the_service_role_may_invalidate_and_invalidation_drops_the_cached_entry() {
    let db = CatalogDb::seeded(100).await;
    let app = rpc_app(&db).await;
    let mut client = BlueprintServiceClient::new(app.channel().await);
    let seller = UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let resolve = ResolveBlueprintsRequest {
        blueprint_ids: vec![5, 6],
    };
    client
        .resolve_blueprints(authorized(resolve, &app.service_token()))
        .await
        .unwrap();

    let request = || InvalidateBlueprintsRequest {
        blueprint_ids: vec![5, 6],
    };
    let denied = client
        .invalidate_blueprints(authorized(request(), &app.seller_token(seller)))
        .await
        .unwrap_err();
    let done = client
        .invalidate_blueprints(authorized(request(), &app.service_token()))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(done.invalidated, 2);
}

#[tokio::test]
async fn a_caller_whose_budget_ends_while_mysql_hangs_still_gets_the_answers_redis_had() {
    let db = CatalogDb::seeded(500).await;
    let (warm, _, _) = db.catalog(|_| {});
    warm.resolve_many(&ids(1..=5), soon()).await;
    let (cold, metrics, _) = db.catalog(|_| {});
    let lock = CatalogueLock::take(&db).await;

    let answers = cold
        .resolve_many(&ids(1..=10), Instant::now() + Duration::from_secs(1))
        .await;
    lock.release().await;

    for id in 1..=5 {
        assert!(
            matches!(
                answers[&BlueprintId::new(id).unwrap()],
                Resolution::Mapped(_)
            ),
            "id {id} was in Redis, got {:?}",
            answers[&BlueprintId::new(id).unwrap()]
        );
    }
    for id in 6..=10 {
        assert_eq!(
            answers[&BlueprintId::new(id).unwrap()],
            Resolution::Unknown,
            "id {id}: unknown, not unmapped"
        );
    }
    assert_eq!(lookups(&metrics, "redis"), 5);
}

#[tokio::test]
async fn resolve_blueprints_during_a_catalogue_hang_answers_cached_ids_and_only_the_uncached_unknown()
 {
    let db = CatalogDb::seeded(500).await;
    let app = rpc_app(&db).await;
    // Another replica cached 1..=5 in the Redis both share.
    let prefix = app.config.storage.redis_key_prefix.clone();
    let (other, _, _) = db.catalog(|config| config.storage.redis_key_prefix = prefix);
    other.resolve_many(&ids(1..=5), soon()).await;
    let mut client = BlueprintServiceClient::new(app.channel().await);
    let lock = CatalogueLock::take(&db).await;

    let mut request = authorized(
        ResolveBlueprintsRequest {
            blueprint_ids: (1..=10).collect(),
        },
        &app.service_token(),
    );
    request.set_timeout(Duration::from_millis(1_500));
    let answer = client.resolve_blueprints(request).await;
    lock.release().await;

    let states: HashMap<i64, MappingState> = answer
        .expect("answered before the caller's deadline")
        .into_inner()
        .mappings
        .iter()
        .map(|m| (m.blueprint_id, m.state()))
        .collect();
    for id in 1..=5 {
        assert_eq!(states[&id], MappingState::Mapped, "id {id} was in Redis");
    }
    for id in 6..=10 {
        assert_eq!(states[&id], MappingState::Unknown, "id {id}");
    }
}
