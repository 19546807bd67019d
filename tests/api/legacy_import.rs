//! `brx-sync import-legacy` against a fixture of the Python service's database (LEGACY.md): real
//! Fernet tokens (good ones the simulator knows, a revoked one, an undecryptable one, a
//! disconnection), plaintext and NULL webhook secrets, stale rows and rows that cannot be keyed,
//! pending edits. The syncs the import queues run on a real replica against the simulator.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use brx_sync::{
    blueprints::fixture,
    config::Config,
    legacy::{
        ImportError, ImportOptions, ImportReport, Importer, KeyError, LegacyDb, LegacyKey, Outcome,
        ProgressMode, SkipReason,
    },
    pb::v1::{
        AccountStatus, GetAccountRequest, InventoryFilter, ListInventoryRequest,
        inventory_service_client::InventoryServiceClient,
    },
};
use cardtrader_sim::{Faults, SimSeller, webhook_signature};
use fernet::Fernet;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    CatalogDb, LegacyDatabase, OldItem, TEST_ENCRYPTION_KEY, TestApp, TestDatabase, authorized,
    spawn_app_with, test_config, wait_until,
};

/// Prints the catalogue has: blueprints above it are sold unmapped.
const CATALOGUE_PRINTS: i64 = 100;
/// A blueprint the catalogue has no print for.
const UNMAPPED_BLUEPRINT: i64 = 150;
/// Rows each good seller has that cannot be keyed: no id, not a number, a duplicated pair, a
/// negative quantity.
const UNKEYABLE_ROWS: u64 = 5;
/// Rows each good seller has for products CardTrader no longer holds.
const STALE_ROWS: usize = 2;

/// A seller the simulator knows, as the old service left them.
struct GoodSeller {
    user: Uuid,
    sim: SimSeller,
    /// CardTrader's products of the seller, as exported.
    products: Vec<Value>,
}

/// The old database of a small shop and who is in it.
struct Shop {
    legacy: LegacyDatabase,
    /// The first keeps its webhook secret in the old database, the second has NULL there.
    good: Vec<GoodSeller>,
    revoked: Uuid,
    unreadable: Uuid,
    disconnected: Uuid,
}

impl Shop {
    fn sellers(&self) -> u64 {
        self.good.len() as u64 + 3
    }

    /// Rows that would be carried over.
    fn carried_rows(&self) -> u64 {
        let good: usize = self
            .good
            .iter()
            .map(|seller| seller.products.len() + STALE_ROWS)
            .sum();
        // The revoked and the disconnected sellers' two rows each.
        good as u64 + 4
    }
}

/// A simulator account listing one product of each of `blueprints`, with no shop seller yet.
async fn sim_seller(app: &TestApp, blueprints: &[i64]) -> (SimSeller, Vec<Value>) {
    let seller = app.simulator.add_seller(0);
    let client = reqwest::Client::new();
    for (n, &blueprint) in blueprints.iter().enumerate() {
        client
            .post(format!("{}/products", app.simulator.base_url()))
            .bearer_auth(&seller.token)
            .json(&json!({"blueprint_id": blueprint, "price": 1.5 + n as f64, "quantity": 2 + n}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    let products = export(app, &seller.token).await;
    (seller, products)
}

/// CardTrader's `/products/export` of `token`'s seller, in product id order.
async fn export(app: &TestApp, token: &str) -> Vec<Value> {
    let mut products: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/products/export", app.simulator.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    products.sort_by_key(|product| product["id"].as_i64());
    products
}

/// The old rows of a good seller: every product (the local quantity one above CardTrader's, as a
/// sale the old service missed would leave it), two stale products, and five unkeyable rows.
fn old_rows(products: &[Value], stale_base: i64) -> Vec<OldItem> {
    let mut rows: Vec<OldItem> = products
        .iter()
        .map(|product| OldItem {
            blueprint_id: product["blueprint_id"].as_i64().unwrap() as i32,
            quantity: product["quantity"].as_i64().unwrap() as i32 + 1,
            price_cents: product["price_cents"].as_i64().unwrap() as i32,
            properties: Some(product["properties_hash"].clone()),
            external_stock_id: Some(product["id"].to_string()),
        })
        .collect();
    for n in 0..STALE_ROWS as i64 {
        rows.push(OldItem::of(stale_base + n, 5, 3));
    }
    // Not an object, as no properties_hash is: stored as {} until the sync.
    rows[products.len()].properties = Some(json!(["stray"]));
    rows.push(OldItem::of(0, 6, 1).external(None));
    rows.push(OldItem::of(0, 6, 1).external(Some("abc")));
    rows.push(OldItem::of(stale_base + 50, 7, 1));
    rows.push(OldItem::of(stale_base + 50, 8, 1));
    rows.push(OldItem::of(stale_base + 51, 9, -2));
    rows
}

/// The shop: `good` sellers of `products` products each (the first keeps its webhook secret in
/// the old database, the others have NULL there), a revoked token, an undecryptable one, a
/// disconnected seller, and four Celery tasks.
async fn shop(app: &TestApp, good: usize, products: usize) -> Shop {
    let legacy = LegacyDatabase::new().await;
    let mut sellers = Vec::new();
    for n in 0..good {
        let mut blueprints: Vec<i64> = (1..products as i64).map(|b| b + n as i64).collect();
        blueprints.push(UNMAPPED_BLUEPRINT);
        let (sim, products) = sim_seller(app, &blueprints).await;
        let user = Uuid::new_v4();
        let secret = (n == 0).then_some(sim.shared_secret.as_str());
        legacy
            .add_seller(user, &legacy.encrypt(&sim.token), secret, "active")
            .await;
        let stale_base = 9_000_000_000 + 1_000 * n as i64;
        legacy
            .add_items(user, &old_rows(&products, stale_base))
            .await;
        sellers.push(GoodSeller {
            user,
            sim,
            products,
        });
    }
    let revoked = Uuid::new_v4();
    let revoked_token = legacy.encrypt(&format!("revoked-{}", Uuid::new_v4()));
    legacy
        .add_seller(revoked, &revoked_token, Some("0badc0de"), "error")
        .await;
    let unreadable = Uuid::new_v4();
    let other_key = Fernet::new(&Fernet::generate_key()).unwrap();
    legacy
        .add_seller(
            unreadable,
            &other_key.encrypt(b"sim-token-1"),
            None,
            "active",
        )
        .await;
    let disconnected = Uuid::new_v4();
    legacy
        .add_seller(disconnected, &legacy.encrypt(""), None, "idle")
        .await;
    for (user, base) in [(revoked, 8_000_000_000), (disconnected, 8_100_000_000)] {
        let rows = [OldItem::of(base, 3, 1), OldItem::of(base + 1, 4, 2)];
        legacy.add_items(user, &rows).await;
        legacy
            .add_items(unreadable, &[OldItem::of(base + 7, 3, 1)])
            .await;
    }
    let first = sellers[0].user;
    let first_product = sellers[0].products[0]["id"].to_string();
    legacy
        .add_operation(
            "task-1",
            "sync_update",
            "pending",
            json!({"user_id": first, "external_stock_id": first_product, "quantity": 9}),
        )
        .await;
    legacy
        .add_operation(
            "task-2",
            "sync_delete",
            "completed",
            json!({"user_id": first}),
        )
        .await;
    legacy
        .add_operation("task-3", "bulk_sync", "pending", json!({"user_id": first}))
        .await;
    legacy
        .add_operation("task-4", "sync_delete", "pending", json!({"item_id": 12}))
        .await;
    Shop {
        legacy,
        good: sellers,
        revoked,
        unreadable,
        disconnected,
    }
}

/// A replica (and its simulator) over a seeded catalogue; no job runs on it unless `workers`.
async fn app(catalogue: &CatalogDb, workers: bool) -> TestApp {
    let mysql_url = catalogue.config.storage.mysql_url.clone();
    spawn_app_with(|config| {
        config.storage.mysql_url = mysql_url;
        if !workers {
            config.jobs.bulk_concurrency = 0;
            config.jobs.interactive_concurrency = 0;
        }
    })
    .await
}

fn options(dry_run: bool, verify: bool) -> ImportOptions {
    ImportOptions {
        dry_run,
        verify,
        sellers: Vec::new(),
        concurrency: 3,
        progress: ProgressMode::Quiet,
    }
}

/// Runs an import into the database `config` names.
async fn import(
    config: &Config,
    shop: &LegacyDatabase,
    key: &str,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let (importer, storage) = Importer::from_config(config).unwrap();
    let legacy = LegacyDb::connect(&SecretString::from(shop.url.clone()))
        .await
        .unwrap();
    let key = LegacyKey::parse(&SecretString::from(key.to_owned())).unwrap();
    let report = importer.import(&legacy, &key, options).await;
    legacy.close().await;
    storage.close().await;
    report
}

/// Rows of each table the import writes, in a stable text form (ciphertexts as presence, since
/// each sealing draws a fresh nonce; timestamps left out).
async fn our_state(pool: &brx_sync::storage::Pg) -> BTreeMap<&'static str, String> {
    let queries = [
        (
            "accounts",
            "SELECT user_id, status, cardtrader_user_id, cardtrader_app_id, token_ciphertext IS NOT NULL, \
                    shared_secret_ciphertext IS NOT NULL, encryption_key_id, last_sync_at FROM accounts",
        ),
        (
            "inventory_items",
            "SELECT user_id, product_id, blueprint_id, expansion_id, print_id, print_table, print_unknown, \
                    name, quantity, reserved_quantity, price_cents, currency, properties, description, \
                    user_data_field, graded, sync_hash FROM inventory_items",
        ),
        (
            "jobs",
            "SELECT user_id, kind, lane, state, payload, priority, attempts FROM jobs",
        ),
        (
            "legacy_imports",
            "SELECT user_id, outcome, rows_carried, rows_skipped, sync_job_id IS NOT NULL, report \
             FROM legacy_imports",
        ),
        (
            "inventory_counts",
            "SELECT user_id, items FROM inventory_counts",
        ),
    ];
    let mut state = BTreeMap::new();
    for (table, query) in queries {
        let sql = format!(
            "SELECT coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '') FROM ({query}) r"
        );
        let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .unwrap();
        state.insert(table, rows);
    }
    state
}

async fn count(pool: &brx_sync::storage::Pg, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn pool_of(app: &TestApp) -> brx_sync::storage::Pg {
    crate::helpers::pg_like_the_app(&app.config)
}

fn outcome_of(report: &ImportReport, user: Uuid) -> Outcome {
    report
        .sellers
        .iter()
        .find(|seller| seller.user_id == user)
        .map(|seller| seller.outcome)
        .unwrap()
}

#[tokio::test]
async fn a_dry_run_reports_every_decision_and_writes_nothing_in_either_database() {
    let catalogue = CatalogDb::seeded(CATALOGUE_PRINTS).await;
    let app = app(&catalogue, false).await;
    let shop = shop(&app, 2, 6).await;
    let before = shop.legacy.contents().await;

    let report = import(
        &app.config,
        &shop.legacy,
        &shop.legacy.key,
        &options(true, true),
    )
    .await
    .unwrap();

    let summary = &report.summary;
    assert!(report.dry_run);
    assert_eq!(summary.sellers, shop.sellers());
    assert_eq!(
        (summary.moved, summary.tokens_invalid, summary.disconnected),
        (2, 1, 1)
    );
    assert_eq!(
        (summary.skipped, summary.failed, summary.already_moved),
        (1, 0, 0)
    );
    assert_eq!(summary.rows_carried, shop.carried_rows());
    assert_eq!(summary.syncs_queued, 0, "a dry run queues nothing");
    let skipped = |reason| summary.rows_skipped.get(&reason).copied().unwrap_or(0);
    assert_eq!(skipped(SkipReason::NoProductId), 2);
    assert_eq!(skipped(SkipReason::ProductIdNotANumber), 2);
    assert_eq!(skipped(SkipReason::DuplicateProductId), 4);
    assert_eq!(skipped(SkipReason::NegativeQuantity), 2);
    assert_eq!(
        summary.rows_skipped.values().sum::<u64>(),
        2 * UNKEYABLE_ROWS
    );
    // One pending update names the first seller; one pending delete names nobody; the completed
    // delete and the bulk sync are history.
    let first = report
        .sellers
        .iter()
        .find(|seller| seller.user_id == shop.good[0].user)
        .unwrap();
    assert_eq!(first.pending_edits.len(), 1);
    assert_eq!(first.pending_edits[0].operation_id, "task-1");
    assert_eq!(report.pending_edits_without_seller.len(), 1);
    assert_eq!(summary.pending_edits, 2);
    assert_eq!(outcome_of(&report, shop.unreadable), Outcome::Skipped);
    assert_eq!(outcome_of(&report, shop.revoked), Outcome::TokenInvalid);
    let table = report.table();
    assert!(table.contains("DRY RUN"), "{table}");

    let pool = pool_of(&app);
    for table in ["accounts", "inventory_items", "jobs", "legacy_imports"] {
        assert_eq!(count(&pool, table).await, 0, "{table} after a dry run");
    }
    assert_eq!(
        shop.legacy.contents().await,
        before,
        "the old database is only read"
    );
}

#[tokio::test]
async fn carried_rows_are_listed_with_their_prints_before_the_first_sync_and_a_second_run_changes_nothing()
 {
    let catalogue = CatalogDb::seeded(CATALOGUE_PRINTS).await;
    let app = app(&catalogue, false).await;
    let shop = shop(&app, 2, 6).await;

    let first = import(
        &app.config,
        &shop.legacy,
        &shop.legacy.key,
        &options(false, false),
    )
    .await
    .unwrap();
    // Without --verify the revoked token is stored as it was; its sync will find out.
    assert_eq!((first.summary.moved, first.summary.disconnected), (3, 1));
    assert_eq!(first.summary.syncs_queued, 3);
    assert_eq!(first.summary.rows_carried, shop.carried_rows());

    let seller = &shop.good[0];
    let mut inventory = InventoryServiceClient::new(app.channel().await);
    let items = inventory
        .list_inventory(authorized(
            ListInventoryRequest {
                user_id: seller.user.to_string(),
                filter: Some(InventoryFilter::default()),
                page_size: 500,
                page_token: String::new(),
            },
            &app.service_token(),
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), seller.products.len() + STALE_ROWS);
    for product in &seller.products {
        let item = items
            .iter()
            .find(|item| item.product_id == product["id"].as_i64().unwrap())
            .expect("every product carried");
        let blueprint = product["blueprint_id"].as_i64().unwrap();
        let print = if blueprint <= CATALOGUE_PRINTS {
            fixture::print_id_of(blueprint)
        } else {
            0
        };
        assert_eq!(item.print_id, print, "blueprint {blueprint}");
        assert_eq!(
            i64::from(item.quantity),
            product["quantity"].as_i64().unwrap() + 1,
            "the old local quantity, until the sync"
        );
        assert_eq!(item.price_cents, product["price_cents"].as_i64().unwrap());
        assert_eq!(
            item.properties.as_ref().map(|props| props.fields.len()),
            product["properties_hash"]
                .as_object()
                .map(|props| props.len())
        );
        assert_eq!((item.name.as_str(), item.currency.as_str()), ("", ""));
    }
    let pool = pool_of(&app);
    let stray: Value = sqlx::query_scalar(
        "SELECT properties FROM inventory_items WHERE user_id = $1 AND product_id = 9000000000",
    )
    .bind(seller.user)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        stray,
        json!({}),
        "an old non-object is not carried as properties"
    );
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'sync_full' AND state = 'queued'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(queued, 3);

    let before = our_state(&pool).await;
    let second = import(
        &app.config,
        &shop.legacy,
        &shop.legacy.key,
        &options(false, false),
    )
    .await
    .unwrap();
    assert_eq!(second.summary.already_moved, 4);
    assert_eq!((second.summary.moved, second.summary.rows_carried), (0, 0));
    assert_eq!(second.summary.skipped, 1, "the undecryptable token, again");
    assert_eq!(
        our_state(&pool).await,
        before,
        "a second run changes nothing"
    );

    // A seller chosen by --sellers that the old database lacks is named, not invented.
    let missing = Uuid::new_v4();
    let mut only = options(false, false);
    only.sellers = vec![shop.disconnected, missing];
    let third = import(&app.config, &shop.legacy, &shop.legacy.key, &only)
        .await
        .unwrap();
    assert_eq!(third.summary.sellers, 1);
    assert_eq!(third.sellers_not_found, vec![missing]);
}

#[tokio::test]
async fn a_full_run_moves_every_seller_and_the_queued_syncs_bring_cardtraders_inventory() {
    let catalogue = CatalogDb::seeded(CATALOGUE_PRINTS).await;
    let app = app(&catalogue, true).await;
    let shop = shop(&app, 2, 8).await;

    let report = import(
        &app.config,
        &shop.legacy,
        &shop.legacy.key,
        &options(false, true),
    )
    .await
    .unwrap();
    assert_eq!(report.summary.moved, 2);
    assert_eq!(report.summary.syncs_queued, 2);

    let pool = pool_of(&app);
    wait_until(
        "the queued syncs to succeed",
        Duration::from_secs(30),
        || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE kind = 'sync_full' AND state = 'succeeded'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            done == 2
        },
    )
    .await;
    for seller in &shop.good {
        let stored: Vec<(i64, i32, i64, String, String, Option<i64>)> = sqlx::query_as(
            "SELECT product_id, quantity, price_cents, name, currency, print_id FROM inventory_items \
             WHERE user_id = $1 ORDER BY product_id",
        )
        .bind(seller.user)
        .fetch_all(&pool)
        .await
        .unwrap();
        let upstream = export(&app, &seller.sim.token).await;
        let expected: Vec<(i64, i32, i64, String, String)> = upstream
            .iter()
            .map(|product| {
                (
                    product["id"].as_i64().unwrap(),
                    product["quantity"].as_i64().unwrap() as i32,
                    product["price_cents"].as_i64().unwrap(),
                    product["name_en"].as_str().unwrap().to_owned(),
                    product["price_currency"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let got: Vec<(i64, i32, i64, String, String)> = stored
            .iter()
            .map(|row| (row.0, row.1, row.2, row.3.clone(), row.4.clone()))
            .collect();
        assert_eq!(got, expected, "seller {} matches CardTrader", seller.user);
        assert!(stored.iter().any(|row| row.5.is_some()), "prints kept");
    }

    let mut accounts = app.accounts().await;
    let token = app.service_token();
    let mut status_of = async |user: Uuid| {
        accounts
            .get_account(authorized(
                GetAccountRequest {
                    user_id: user.to_string(),
                },
                &token,
            ))
            .await
            .map(|answer| answer.into_inner().account.unwrap())
    };
    for seller in &shop.good {
        let account = status_of(seller.user).await.unwrap();
        assert_eq!(account.status(), AccountStatus::Connected);
        assert_eq!(
            account.cardtrader_user_id, seller.sim.user_id,
            "/info asked"
        );
    }
    let revoked = status_of(shop.revoked).await.unwrap();
    assert_eq!(revoked.status(), AccountStatus::TokenInvalid);
    let disconnected = status_of(shop.disconnected).await.unwrap();
    assert_eq!(disconnected.status(), AccountStatus::Disconnected);
    let unreadable = status_of(shop.unreadable).await.unwrap_err();
    assert_eq!(unreadable.code(), tonic::Code::NotFound);

    // The webhook secrets were carried (the first from the old database, the second from /info):
    // CardTrader's signature verifies for each, and a wrong one does not.
    let client = reqwest::Client::new();
    for seller in &shop.good {
        let delivery = |secret: &str| {
            let body = serde_json::to_vec(&json!({
                "id": Uuid::new_v4(), "time": 1_764_633_600, "cause": "order.update",
                "object_class": "Order", "object_id": 1, "mode": "test",
                "data": {"id": 1, "state": "paid", "via_cardtrader_zero": false, "order_items": []},
            }))
            .unwrap();
            let signature = webhook_signature(secret, &body);
            client
                .post(format!(
                    "http://{}/webhooks/cardtrader/{}",
                    app.http_addr, seller.user
                ))
                .header("content-type", "application/json")
                .header("Signature", signature)
                .body(body)
                .send()
        };
        let good = delivery(&seller.sim.shared_secret).await.unwrap().status();
        let forged = delivery("00ff").await.unwrap().status();
        assert_eq!((good.as_u16(), forged.as_u16()), (200, 401));
    }
}

#[tokio::test]
async fn a_wrong_fernet_key_stops_the_import_before_anything_is_written() {
    let catalogue = CatalogDb::seeded(CATALOGUE_PRINTS).await;
    let app = app(&catalogue, false).await;
    let shop = shop(&app, 1, 3).await;
    let pool = pool_of(&app);

    let wrong = Fernet::generate_key();
    let refused = import(&app.config, &shop.legacy, &wrong, &options(false, false))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ImportError::Key(KeyError::Wrong { tokens: 4 })),
        "{refused:?}"
    );
    for table in ["accounts", "inventory_items", "jobs", "legacy_imports"] {
        assert_eq!(count(&pool, table).await, 0, "{table}");
    }

    // The binary: exit 64, the setting named, neither key nor token shown.
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{}", app.database_name);
    for key in [wrong.as_str(), "not-a-key"] {
        let output = import_command(&app, &database_url, &shop.legacy, key, &[])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains("BRX_LEGACY_FERNET_KEY"), "{stderr}");
        assert!(!stderr.contains(key) && !stderr.contains(&shop.legacy.key));
        assert!(!stderr.contains(&shop.good[0].sim.token));
    }
    assert_eq!(count(&pool, "accounts").await, 0);
}

/// `brx-sync import-legacy` from the old database into `database_url`, with the app's catalogue,
/// simulator and encryption key; `args` added.
fn import_command(
    app: &TestApp,
    database_url: &str,
    legacy: &LegacyDatabase,
    key: &str,
    args: &[&str],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_brx-sync"));
    command
        .arg("import-legacy")
        .args(args)
        .env_clear()
        .env("BRX_DATABASE_URL", database_url)
        .env(
            "BRX_MYSQL_URL",
            app.config.storage.mysql_url.expose_secret(),
        )
        .env("BRX_REDIS_KEY_PREFIX", &app.config.storage.redis_key_prefix)
        .env(
            "BRX_ENCRYPTION_KEYS",
            format!("test-key:{TEST_ENCRYPTION_KEY}"),
        )
        .env("BRX_CARDTRADER_BASE_URL", app.simulator.base_url())
        .env("BRX_LEGACY_DATABASE_URL", &legacy.url)
        .env("BRX_LEGACY_FERNET_KEY", key)
        .env("BRX_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn a_run_killed_midway_and_run_again_ends_as_an_uninterrupted_run_does() {
    let catalogue = CatalogDb::seeded(CATALOGUE_PRINTS).await;
    let app = app(&catalogue, false).await;
    let shop = shop(&app, 10, 3).await;

    // Uninterrupted, in-process, into a database of its own.
    let whole = TestDatabase::new().await;
    let (mut whole_config, _) = test_config();
    whole_config.storage = app.config.storage.clone();
    whole_config.storage.database_url =
        SecretString::from(format!("postgres://postgres@127.0.0.1:5432/{}", whole.name));
    whole_config.storage.pg_pooler = brx_sync::config::PgPooler::None;
    whole_config.cardtrader = app.config.cardtrader.clone();
    let report = import(
        &whole_config,
        &shop.legacy,
        &shop.legacy.key,
        &options(false, true),
    )
    .await
    .unwrap();
    assert_eq!(report.summary.moved, 10);

    // The binary, killed with SIGKILL once two sellers are in, then run again.
    let killed = TestDatabase::new().await;
    let killed_url = format!("postgres://postgres@127.0.0.1:5432/{}", killed.name);
    app.simulator.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let args = ["--verify", "--concurrency", "2"];
    let mut child = import_command(&app, &killed_url, &shop.legacy, &shop.legacy.key, &args)
        .spawn()
        .unwrap();
    wait_until("two sellers moved", Duration::from_secs(30), || async {
        count(&killed.pool, "legacy_imports").await >= 2
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let moved_when_killed = count(&killed.pool, "legacy_imports").await;
    assert!(
        (2..shop.sellers() as i64 - 1).contains(&moved_when_killed),
        "killed midway: {moved_when_killed} sellers in"
    );
    app.simulator.set_faults(Faults::default());
    let rerun = import_command(&app, &killed_url, &shop.legacy, &shop.legacy.key, &args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert_eq!(
        rerun.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(
        stdout.contains("already moved by an earlier run"),
        "{stdout}"
    );

    let resumed = our_state(&killed.pool).await;
    let uninterrupted = our_state(&whole.pool).await;
    for (table, rows) in &uninterrupted {
        assert_eq!(&resumed[table], rows, "{table}: resumed vs uninterrupted");
    }
}

#[tokio::test]
async fn sellers_cardtrader_could_not_verify_are_left_unwritten_and_the_next_run_moves_them() {
    let catalogue = CatalogDb::seeded(CATALOGUE_PRINTS).await;
    let app = app(&catalogue, false).await;
    let shop = shop(&app, 2, 3).await;
    let pool = pool_of(&app);
    app.simulator.set_faults(Faults {
        error_5xx_rate: 1.0,
        path_ends_with: "/info".into(),
        ..Faults::default()
    });

    let down = import(
        &app.config,
        &shop.legacy,
        &shop.legacy.key,
        &options(false, true),
    )
    .await
    .unwrap();
    // Both good sellers needed /info (verifying) and got only 5xx; the undecryptable one is
    // skipped before any call, the disconnected one needs none.
    for seller in &shop.good {
        let report = down
            .sellers
            .iter()
            .find(|s| s.user_id == seller.user)
            .unwrap();
        assert_eq!(report.outcome, Outcome::Failed);
        assert!(
            report.reason.as_deref().unwrap().contains("CardTrader"),
            "{:?}",
            report.reason
        );
    }
    assert_eq!(outcome_of(&down, shop.disconnected), Outcome::Disconnected);
    assert_eq!(outcome_of(&down, shop.unreadable), Outcome::Skipped);
    let recorded = count(&pool, "legacy_imports").await;
    assert_eq!(recorded as u64, shop.sellers() - 1 - down.summary.failed);
    assert_eq!(count(&pool, "accounts").await, recorded);
    let good: Vec<Uuid> = shop.good.iter().map(|seller| seller.user).collect();
    let half_written: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM inventory_items WHERE user_id = ANY($1)) \
              + (SELECT count(*) FROM accounts WHERE user_id = ANY($1)) \
              + (SELECT count(*) FROM jobs WHERE user_id = ANY($1))",
    )
    .bind(&good)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        half_written, 0,
        "a failed seller leaves nothing half-written"
    );

    app.simulator.set_faults(Faults::default());
    let again = import(
        &app.config,
        &shop.legacy,
        &shop.legacy.key,
        &options(false, true),
    )
    .await
    .unwrap();
    for seller in &shop.good {
        assert_eq!(outcome_of(&again, seller.user), Outcome::Moved);
    }
    assert_eq!(again.summary.failed, 0);
    assert_eq!(again.summary.already_moved, recorded as u64);
}
