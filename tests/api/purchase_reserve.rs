//! The purchase's reservation step against the real PostgreSQL: stock reserved under an idempotency
//! key, replays and key conflicts, short or unknown items leaving nothing behind, and concurrent
//! buyers never reserving more than there is.

use brx_sync::{
    domain::UserId,
    purchase::{self, NewPurchase, PurchaseError, PurchaseLine, Reserved},
};

use crate::helpers::TestDatabase;

async fn seller_with_items(db: &TestDatabase, items: &[(i64, i32)]) -> UserId {
    let user = UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    for (product_id, quantity) in items {
        sqlx::query(
            "INSERT INTO inventory_items (user_id, product_id, blueprint_id, name, quantity, price_cents, currency) \
             VALUES ($1, $2, 1, 'Card', $3, 100, 'EUR')",
        )
        .bind(user.as_uuid())
        .bind(product_id)
        .bind(quantity)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    user
}

fn purchase(user: UserId, key: &str, lines: &[(i64, i32)]) -> NewPurchase {
    NewPurchase {
        user_id: user,
        idempotency_key: key.into(),
        lines: lines
            .iter()
            .map(|&(product_id, quantity)| PurchaseLine {
                product_id,
                quantity,
            })
            .collect(),
        buyer_ref: "order-1".into(),
        deadline: chrono::Utc::now() + chrono::Duration::seconds(30),
    }
}

async fn reserved(db: &TestDatabase, user: UserId) -> Vec<(i64, i32)> {
    sqlx::query_as(
        "SELECT product_id, reserved_quantity FROM inventory_items WHERE user_id = $1 ORDER BY product_id",
    )
    .bind(user.as_uuid())
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn purchases(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM purchases")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_purchase_reserves_its_lines_once_and_a_replay_touches_nothing() {
    let db = TestDatabase::new().await;
    let user = seller_with_items(&db, &[(1, 5), (2, 5)]).await;
    let request = purchase(user, "k-1", &[(2, 1), (1, 2), (2, 1)]);

    let first = purchase::reserve(&db.pool, &request, 1_000).await.unwrap();
    let replay = purchase::reserve(&db.pool, &request, 1_000).await.unwrap();

    let Reserved::Created(id) = first else {
        panic!("{first:?}")
    };
    assert_eq!(replay, Reserved::Replay(id));
    assert_eq!(reserved(&db, user).await, vec![(1, 2), (2, 2)]);
    let lines: Vec<(i32, i64, i32)> = sqlx::query_as(
        "SELECT line, product_id, quantity FROM purchase_lines WHERE purchase_id = $1 ORDER BY line",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(lines, vec![(0, 2, 1), (1, 1, 2), (2, 2, 1)]);
}

#[tokio::test]
async fn the_same_key_with_another_request_is_a_conflict() {
    let db = TestDatabase::new().await;
    let user = seller_with_items(&db, &[(1, 5)]).await;
    purchase::reserve(&db.pool, &purchase(user, "k-1", &[(1, 1)]), 1_000)
        .await
        .unwrap();

    let other = purchase::reserve(&db.pool, &purchase(user, "k-1", &[(1, 2)]), 1_000).await;

    assert!(
        matches!(other, Err(PurchaseError::KeyConflict)),
        "{other:?}"
    );
    assert_eq!(reserved(&db, user).await, vec![(1, 1)]);
}

#[tokio::test]
async fn a_short_or_unknown_item_reserves_nothing_and_records_nothing() {
    let db = TestDatabase::new().await;
    let user = seller_with_items(&db, &[(1, 5), (2, 1)]).await;

    let short = purchase::reserve(&db.pool, &purchase(user, "k-1", &[(1, 2), (2, 2)]), 1_000).await;
    let unknown =
        purchase::reserve(&db.pool, &purchase(user, "k-2", &[(1, 1), (9, 1)]), 1_000).await;

    assert!(
        matches!(
            short,
            Err(PurchaseError::InsufficientStock {
                product_id: 2,
                available: 1,
                requested: 2
            })
        ),
        "{short:?}"
    );
    assert!(
        matches!(unknown, Err(PurchaseError::UnknownItem(9))),
        "{unknown:?}"
    );
    assert_eq!(reserved(&db, user).await, vec![(1, 0), (2, 0)]);
    assert_eq!(purchases(&db).await, 0);
}

#[tokio::test]
async fn two_hundred_buyers_racing_for_ten_units_reserve_exactly_ten() {
    let db = TestDatabase::new().await;
    let user = seller_with_items(&db, &[(1, 10)]).await;

    let buyers: Vec<_> = (0..200)
        .map(|n| {
            let (pool, request) = (
                db.pool.clone(),
                purchase(user, &format!("k-{n}"), &[(1, 1)]),
            );
            tokio::spawn(async move { purchase::reserve(&pool, &request, 1_000).await })
        })
        .collect();
    let (mut won, mut short) = (0, 0);
    for buyer in buyers {
        match buyer.await.unwrap() {
            Ok(Reserved::Created(_)) => won += 1,
            Err(PurchaseError::InsufficientStock { .. }) => short += 1,
            other => panic!("{other:?}"),
        }
    }

    assert_eq!((won, short), (10, 190));
    assert_eq!(reserved(&db, user).await, vec![(1, 10)]);
    assert_eq!(purchases(&db).await, 10);
}

#[tokio::test]
async fn a_step_from_a_worker_whose_lease_was_taken_over_is_not_appended() {
    use brx_sync::purchase::saga::{Event, Saga};
    let db = TestDatabase::new().await;
    let user = seller_with_items(&db, &[(1, 5)]).await;
    let (reserved, lease) = purchase::reserve_with(
        &db.pool,
        &purchase(user, "k-1", &[(1, 1)]),
        1_000,
        Some(("worker-a", std::time::Duration::from_secs(30))),
    )
    .await
    .unwrap();
    let (Reserved::Created(id), Some(lease)) = (reserved, lease) else {
        panic!("{reserved:?}")
    };
    let mut saga = Saga::new(1);
    saga.apply(&Event::DecrementSent {
        line: 0,
        settled_by: None,
    });
    let mut stale = lease.clone();
    stale.fence -= 1;
    let events = [Event::DecrementSent {
        line: 0,
        settled_by: None,
    }];

    let stale = brx_sync::jobs::JobContext::detached(stale, db.pool.clone());
    let mut unit = stale.begin().await.unwrap();
    purchase::append(&mut unit, id, 0, &events, &saga)
        .await
        .unwrap();
    let refused = unit.commit().await;
    let current = brx_sync::jobs::JobContext::detached(lease, db.pool.clone());
    let mut unit = current.begin().await.unwrap();
    purchase::append(&mut unit, id, 0, &events, &saga)
        .await
        .unwrap();
    unit.commit().await.unwrap();

    assert!(
        matches!(refused, Err(brx_sync::jobs::JobError::LeaseLost)),
        "{refused:?}"
    );
    assert_eq!(
        purchase::step_log(&db.pool, id).await.unwrap(),
        vec![Event::DecrementSent {
            line: 0,
            settled_by: None,
        }]
    );
    let stored = purchase::load(&db.pool, id).await.unwrap().unwrap();
    assert_eq!(stored.saga, saga);
    let locks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM purchase_product_locks WHERE purchase_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(locks, 1, "the reservation took the product's lock");
}
