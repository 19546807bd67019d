//! The sync's chunk transaction against the real PostgreSQL: set-based upserts that skip unchanged
//! rows, reserved rows left to the saga, the sweep, fencing, a real deadlock retried, item counts.

use std::time::Duration;

use brx_sync::{
    domain::UserId,
    jobs::{JobContext, JobKind, Lane, NewJob, QueueLimit, Ranking, store as jobs},
    metrics::Metrics,
    sync::{
        SweepScope, SweepSettings, SyncRow,
        chunk::{ChunkError, ChunkOutcome, ChunkTarget, write_chunk},
        sweep,
    },
};
use tokio::sync::Semaphore;

use crate::helpers::{TestDatabase, wait_until};

fn row(product_id: i64, quantity: i32) -> SyncRow {
    SyncRow {
        product_id,
        blueprint_id: product_id % 50 + 1,
        expansion_id: Some(1),
        print: Some((1_000_000 + product_id, "cards_prints".into())),
        print_unknown: false,
        name: format!("Card {product_id}"),
        quantity,
        price_cents: 100 + product_id,
        currency: "EUR".into(),
        properties: serde_json::json!({"condition": "Near Mint"}),
        description: None,
        user_data_field: None,
        tag: None,
        graded: Some(false),
    }
}

async fn lease_for(db: &TestDatabase, user: UserId) -> JobContext {
    let new = NewJob::new(user, JobKind::SyncFull);
    jobs::enqueue(&db.pool, &new, QueueLimit::Unbounded)
        .await
        .unwrap();
    let claimed = jobs::claim(
        &db.pool,
        Lane::Bulk,
        "test",
        Duration::from_secs(60),
        Ranking::default(),
    )
    .await
    .unwrap()
    .unwrap();
    JobContext::detached(claimed, db.pool.clone())
}

/// A claim of a new sync for `user` whose lease ran out and was taken over by another worker.
async fn taken_over_lease(db: &TestDatabase, user: UserId) -> JobContext {
    let new = NewJob::new(user, JobKind::SyncFull);
    jobs::enqueue(&db.pool, &new, QueueLimit::Unbounded)
        .await
        .unwrap();
    let (short, long) = (Duration::from_millis(200), Duration::from_secs(60));
    let stale = jobs::claim(&db.pool, Lane::Bulk, "dead", short, Ranking::default())
        .await
        .unwrap()
        .unwrap();
    // The rescuer's claim is refused until the stale lease has run out, then taken over.
    wait_until(
        "the stale lease to run out and be taken over",
        WAIT,
        || async {
            jobs::claim(&db.pool, Lane::Bulk, "rescuer", long, Ranking::default())
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    JobContext::detached(stale, db.pool.clone())
}

fn seller() -> UserId {
    UserId::from_uuid(uuid::Uuid::new_v4()).unwrap()
}

const TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the waits for the database to reach a state the test set up.
const WAIT: Duration = Duration::from_secs(10);

/// The seen-set of a sync whose export listed these product ids.
fn seen(ids: std::ops::RangeInclusive<i64>) -> roaring::RoaringTreemap {
    ids.map(brx_sync::sync::seen_key).collect()
}

async fn write(
    job: &JobContext,
    user: UserId,
    rows: Vec<SyncRow>,
    metrics: &Metrics,
) -> Result<ChunkOutcome, ChunkError> {
    let writers = Semaphore::new(4);
    let target = ChunkTarget {
        job,
        writers: &writers,
        statement_timeout: TIMEOUT,
        read_since: chrono::Utc::now(),
    };
    write_chunk(target, user, rows, metrics).await
}

/// The sync's sweep for `job`, `batch` rows a transaction.
async fn sweep_rows(
    job: &JobContext,
    scope: SweepScope<'_>,
    seen: &roaring::RoaringTreemap,
    batch: i64,
    read_since: chrono::DateTime<chrono::Utc>,
) -> Result<u64, ChunkError> {
    let settings = SweepSettings {
        batch,
        statement_timeout: TIMEOUT,
    };
    let metrics = Metrics::new().unwrap();
    sweep(job, scope, seen, settings, read_since, &metrics).await
}

#[tokio::test]
async fn a_resync_rewrites_only_the_rows_that_changed() {
    let db = TestDatabase::new().await;
    let user = seller();
    let lease = lease_for(&db, user).await;
    let metrics = Metrics::new().unwrap();

    let mut rows: Vec<SyncRow> = (1..=1_000).map(|id| row(id, 3)).collect();
    let first = write(&lease, user, rows.clone(), &metrics).await.unwrap();
    let same = write(&lease, user, rows.clone(), &metrics).await.unwrap();
    for changed in rows.iter_mut().take(10) {
        changed.price_cents += 1;
    }
    let ten = write(&lease, user, rows.clone(), &metrics).await.unwrap();

    assert_eq!(
        (first.progress.written, first.progress.unchanged),
        (1_000, 0)
    );
    assert_eq!((same.progress.written, same.progress.unchanged), (0, 1_000));
    assert_eq!((ten.progress.written, ten.progress.unchanged), (10, 990));
}

#[tokio::test]
async fn a_row_changed_by_another_writer_is_compared_in_full_at_the_next_sync() {
    let db = TestDatabase::new().await;
    let user = seller();
    let lease = lease_for(&db, user).await;
    let metrics = Metrics::new().unwrap();
    let rows: Vec<SyncRow> = (1..=20).map(|id| row(id, 3)).collect();
    write(&lease, user, rows.clone(), &metrics).await.unwrap();
    // A local writer (a purchase, an edit) changes a row without knowing about fingerprints.
    sqlx::query("UPDATE inventory_items SET quantity = 9 WHERE product_id = 5")
        .execute(&db.pool)
        .await
        .unwrap();

    let again = write(&lease, user, rows.clone(), &metrics).await.unwrap();

    assert_eq!(
        again.progress.written, 1,
        "only the touched row is rewritten"
    );
    let quantity: i32 =
        sqlx::query_scalar("SELECT quantity FROM inventory_items WHERE product_id = 5")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(quantity, 3, "upstream wins again");
    let settled = write(&lease, user, rows, &metrics).await.unwrap();
    assert_eq!(settled.progress.written, 0);
}

#[tokio::test]
async fn a_reserved_row_keeps_its_local_quantity() {
    let db = TestDatabase::new().await;
    let user = seller();
    let lease = lease_for(&db, user).await;
    let metrics = Metrics::new().unwrap();
    write(&lease, user, vec![row(1, 5), row(2, 5)], &metrics)
        .await
        .unwrap();
    sqlx::query("UPDATE inventory_items SET reserved_quantity = 2 WHERE product_id = 1")
        .execute(&db.pool)
        .await
        .unwrap();

    let upstream = [row(1, 1), row(2, 1)];
    write(&lease, user, upstream.to_vec(), &metrics)
        .await
        .unwrap();

    let quantities: Vec<(i64, i32)> =
        sqlx::query_as("SELECT product_id, quantity FROM inventory_items ORDER BY product_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        quantities,
        vec![(1, 5), (2, 1)],
        "the saga owns reserved rows until it ends"
    );
}

#[tokio::test]
async fn the_sweep_deletes_what_this_sync_did_not_see_but_spares_reserved_rows_and_other_scopes() {
    let db = TestDatabase::new().await;
    let user = seller();
    let metrics = Metrics::new().unwrap();
    let old = lease_for(&db, user).await;
    let before: Vec<SyncRow> = (1..=100).map(|id| row(id, 1)).collect();
    write(&old, user, before.clone(), &metrics).await.unwrap();
    jobs::succeed(&db.pool, old.lease()).await.unwrap();
    sqlx::query("UPDATE inventory_items SET reserved_quantity = 1 WHERE product_id = 100")
        .execute(&db.pool)
        .await
        .unwrap();
    let other_seller = seller();
    let other = lease_for(&db, other_seller).await;
    write(&other, other_seller, vec![row(5, 1)], &metrics)
        .await
        .unwrap();

    let new = lease_for(&db, user).await;
    let after: Vec<SyncRow> = (1..=60).map(|id| row(id, 1)).collect();
    write(&new, user, after.clone(), &metrics).await.unwrap();
    let deleted = sweep_rows(&new, SweepScope::All, &seen(1..=60), 7, chrono::Utc::now())
        .await
        .unwrap();

    assert_eq!(deleted, 39, "61..=99 gone, 100 is reserved");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory_items WHERE user_id = $1")
        .bind(user.as_uuid())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 61);
    let untouched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inventory_items WHERE user_id = $1")
            .bind(other_seller.as_uuid())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(untouched, 1);
}

#[tokio::test]
async fn a_scoped_sweep_only_touches_its_blueprint() {
    let db = TestDatabase::new().await;
    let user = seller();
    let metrics = Metrics::new().unwrap();
    let old = lease_for(&db, user).await;
    let rows: Vec<SyncRow> = (1..=100).map(|id| row(id, 1)).collect();
    write(&old, user, rows.clone(), &metrics).await.unwrap();
    jobs::succeed(&db.pool, old.lease()).await.unwrap();

    // Blueprint 2 holds products 1, 51; the scoped export now only lists product 1.
    let scoped = lease_for(&db, user).await;
    write(&scoped, user, vec![row(1, 1)], &metrics)
        .await
        .unwrap();
    let deleted = sweep_rows(
        &scoped,
        SweepScope::Targeted {
            blueprint_ids: &[2],
            expansion_ids: &[],
        },
        &seen(1..=1),
        100,
        chrono::Utc::now(),
    )
    .await
    .unwrap();

    assert_eq!(deleted, 1);
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_writes_nothing() {
    let db = TestDatabase::new().await;
    let user = seller();
    let stale = taken_over_lease(&db, user).await;

    let result = write(&stale, user, vec![row(1, 1)], &Metrics::new().unwrap()).await;

    assert!(matches!(result, Err(ChunkError::LeaseLost)));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory_items")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the whole chunk rolled back");
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_sweeps_nothing() {
    let db = TestDatabase::new().await;
    let user = seller();
    let metrics = Metrics::new().unwrap();
    let old = lease_for(&db, user).await;
    write(
        &old,
        user,
        (1..=10).map(|id| row(id, 1)).collect(),
        &metrics,
    )
    .await
    .unwrap();
    jobs::succeed(&db.pool, old.lease()).await.unwrap();
    let stale = taken_over_lease(&db, user).await;

    // The stale attempt saw nothing: unfenced, its sweep would delete every row.
    let result = sweep_rows(
        &stale,
        SweepScope::All,
        &roaring::RoaringTreemap::new(),
        100,
        chrono::Utc::now(),
    )
    .await;

    assert!(matches!(result, Err(ChunkError::LeaseLost)), "{result:?}");
    assert_eq!(
        brx_sync::sync::item_count(&db.pool, user).await.unwrap(),
        10
    );
}

#[tokio::test]
async fn a_deadlock_on_the_first_attempt_is_retried_and_the_data_is_right() {
    let db = TestDatabase::new().await;
    // The first insert into the table raises a genuine 40P01; later ones pass (sequences ignore rollback).
    sqlx::raw_sql(
        "CREATE SEQUENCE deadlock_once; \
         CREATE FUNCTION deadlock_once() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF nextval('deadlock_once') = 1 THEN \
             RAISE EXCEPTION 'deadlock detected (test)' USING ERRCODE = '40P01'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER deadlock_once BEFORE INSERT ON inventory_items FOR EACH STATEMENT EXECUTE FUNCTION deadlock_once();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let user = seller();
    let lease = lease_for(&db, user).await;
    let metrics = Metrics::new().unwrap();

    let outcome = write(&lease, user, vec![row(2, 4), row(1, 3)], &metrics)
        .await
        .unwrap();

    assert_eq!(outcome.progress.written, 2);
    assert_eq!(
        metrics
            .sync_chunk_retries
            .with_label_values(&["deadlock"])
            .get(),
        1
    );
    let stored: Vec<(i64, i32)> =
        sqlx::query_as("SELECT product_id, quantity FROM inventory_items ORDER BY product_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, vec![(1, 3), (2, 4)]);
    assert_eq!(
        jobs::get(&db.pool, lease.job().id).await.unwrap().progress["chunks_done"],
        1
    );
}

#[tokio::test]
async fn two_transactions_locking_rows_in_opposite_order_deadlock_for_real_and_the_chunk_survives()
{
    let db = TestDatabase::new().await;
    let user = seller();
    let lease = lease_for(&db, user).await;
    let metrics = Metrics::new().unwrap();
    write(&lease, user, vec![row(1, 1), row(2, 1)], &metrics)
        .await
        .unwrap();

    // A rival holds row 2 and will then want row 1; the chunk (sorted: 1 then 2) holds 1 and wants 2.
    let mut rival = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE inventory_items SET quantity = 9 WHERE product_id = 2")
        .execute(&mut *rival)
        .await
        .unwrap();
    let chunk = {
        let lease = lease.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move { write(&lease, user, vec![row(1, 7), row(2, 7)], &metrics).await })
    };
    wait_until(
        "the chunk to wait for the rival's lock on row 2",
        WAIT,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            waiting > 0
        },
    )
    .await;
    let rival_result = sqlx::query("UPDATE inventory_items SET quantity = 9 WHERE product_id = 1")
        .execute(&mut *rival)
        .await;
    match rival_result {
        Ok(_) => rival.commit().await.unwrap(),
        Err(_) => rival.rollback().await.unwrap(),
    }

    let outcome = chunk.await.unwrap();

    assert!(outcome.is_ok(), "{outcome:?}");
    let quantities: Vec<i32> =
        sqlx::query_scalar("SELECT quantity FROM inventory_items ORDER BY product_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        quantities,
        vec![7, 7],
        "the chunk's transaction (rerun if it was the victim) wins last"
    );
}

#[tokio::test]
async fn the_item_counter_follows_inserts_updates_sweeps_and_purges() {
    let db = TestDatabase::new().await;
    let (user, other) = (seller(), seller());
    let metrics = Metrics::new().unwrap();
    let counter = |user: UserId| {
        let pool = db.pool.clone();
        async move { brx_sync::sync::item_count(&pool, user).await.unwrap() }
    };
    let old = lease_for(&db, user).await;
    write(
        &old,
        user,
        (1..=50).map(|id| row(id, 1)).collect(),
        &metrics,
    )
    .await
    .unwrap();
    // Half of them again with a change (updates), and ten new ones.
    write(
        &old,
        user,
        (25..=60).map(|id| row(id, 2)).collect(),
        &metrics,
    )
    .await
    .unwrap();
    jobs::succeed(&db.pool, old.lease()).await.unwrap();
    let theirs = lease_for(&db, other).await;
    write(&theirs, other, vec![row(1, 1)], &metrics)
        .await
        .unwrap();
    assert_eq!(counter(user).await, 60);

    let new = lease_for(&db, user).await;
    write(
        &new,
        user,
        (1..=40).map(|id| row(id, 2)).collect(),
        &metrics,
    )
    .await
    .unwrap();
    let swept = sweep_rows(&new, SweepScope::All, &seen(1..=40), 7, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(swept, 20);
    assert_eq!(counter(user).await, 40);

    sqlx::query("DELETE FROM inventory_items WHERE user_id = $1")
        .bind(user.as_uuid())
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(counter(user).await, 0);
    assert_eq!(
        counter(other).await,
        1,
        "other sellers' counts are their own"
    );
}

/// The stale check a chunk runs probes the primary key once per row, whatever the statistics say:
/// here they were taken when one seller held every row, which made `NOT EXISTS` a hash anti-join
/// over the whole table for each chunk of a new seller; and for that seller's own rows, while the
/// statistics still say it has none (its first import), no index that merely starts with the seller
/// is walked instead.
#[tokio::test]
async fn the_stale_check_probes_the_primary_key_whatever_the_statistics() {
    use sqlx::Row;

    let db = TestDatabase::new().await;
    sqlx::query(
        "INSERT INTO inventory_items (user_id, product_id, blueprint_id, name, quantity, \
             price_cents, currency, sync_hash) \
         SELECT $1, g, g, 'Card ' || g, 1, 100, 'EUR', g FROM generate_series(1, 50000) g",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = db.pool.pool().acquire().await.unwrap();
    sqlx::raw_sql("ANALYZE inventory_items")
        .execute(&mut *conn)
        .await
        .unwrap();
    // A seller whose import began after that ANALYZE: statistics know nothing of its rows.
    let importing = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO inventory_items (user_id, product_id, blueprint_id, expansion_id, name, \
             quantity, price_cents, currency, sync_hash) \
         SELECT $1, g, g % 100, g % 7, 'Card ' || g, 1, 100, 'EUR', g \
         FROM generate_series(1, 50000) g",
    )
    .bind(importing)
    .execute(&mut *conn)
    .await
    .unwrap();
    let ids = (1..=1_000)
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sellers = [("new", uuid::Uuid::new_v4()), ("importing", importing)];
    for ((which, seller), plan_mode) in sellers
        .into_iter()
        .flat_map(|seller| ["force_custom_plan", "force_generic_plan"].map(|mode| (seller, mode)))
    {
        let explain = format!(
            "BEGIN; SET LOCAL plan_cache_mode = {plan_mode}; \
             PREPARE stale_{which}_{plan_mode} AS {}; \
             EXPLAIN (FORMAT JSON) EXECUTE stale_{which}_{plan_mode}('{seller}', \
                 '{{{ids}}}', '{{{ids}}}'); ROLLBACK",
            brx_sync::sync::upsert::STALE_ROWS
        );
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(explain))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        let plan: serde_json::Value = rows[0].get(0);
        let nodes = crate::helpers::plan_nodes(&plan[0]["Plan"]);
        let items: Vec<_> = nodes
            .iter()
            .filter(|node| node["Relation Name"] == "inventory_items")
            .collect();
        assert!(!items.is_empty(), "{plan:#}");
        for node in items {
            assert_eq!(
                (node["Node Type"].as_str(), node["Index Name"].as_str()),
                (Some("Index Scan"), Some("inventory_items_pkey")),
                "{which} seller, {plan_mode}\n{plan:#}"
            );
        }
        assert!(
            !nodes.iter().any(|node| node["Node Type"] == "Hash"),
            "{which} seller, {plan_mode}: no hash of the table\n{plan:#}"
        );
    }
}
