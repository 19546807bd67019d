//! AccountService against the simulator: tokens checked with /info, stored encrypted, scoped to the
//! seller, and marked invalid when CardTrader later refuses them.

use brx_sync::{
    accounts::{AccountStatus, Accounts},
    domain::UserId,
    marketplace::{CallOptions, MarketplaceClient},
    metrics::Metrics,
    pb::v1::{
        AccountStatus as PbStatus, ConnectAccountRequest, DisconnectAccountRequest,
        GetAccountRequest,
    },
    rate_limit::{Limits, RateLimiter},
    storage::Storage,
};
use cardtrader_sim::Faults;
use tonic::Code;

use crate::helpers::{TestApp, authorized, spawn_app};

fn new_seller() -> UserId {
    UserId::from_uuid(uuid::Uuid::new_v4()).unwrap()
}

async fn connect(
    app: &TestApp,
    seller: UserId,
    cardtrader_token: &str,
) -> Result<brx_sync::pb::v1::Account, tonic::Status> {
    let request = ConnectAccountRequest {
        user_id: seller.to_string(),
        cardtrader_token: cardtrader_token.into(),
    };
    app.accounts()
        .await
        .connect_account(authorized(request, &app.seller_token(seller)))
        .await
        .map(|answer| answer.into_inner().account.unwrap())
}

#[tokio::test]
async fn connecting_a_valid_token_stores_it_encrypted_and_reports_the_cardtrader_user() {
    let app = spawn_app().await;
    let seller = new_seller();
    let token = app.simulator.token(1);
    let expected_user = app.simulator.seller(&token).unwrap().user_id;

    let account = connect(&app, seller, &token).await.unwrap();

    assert_eq!(account.status(), PbStatus::Connected);
    assert_eq!(account.cardtrader_user_id, expected_user);
    let pool = crate::helpers::pg_like_the_app(&app.config);
    let (token_ct, secret_ct): (Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT token_ciphertext, shared_secret_ciphertext FROM accounts WHERE user_id = $1",
    )
    .bind(seller.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    let shared_secret = app.simulator.seller(&token).unwrap().shared_secret;
    assert!(
        !contains(&token_ct, token.as_bytes()),
        "the token is not stored in plaintext"
    );
    assert!(
        !contains(&secret_ct, shared_secret.as_bytes()),
        "the shared secret is not stored in plaintext"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn get_account_never_returns_the_token() {
    let app = spawn_app().await;
    let seller = new_seller();
    let token = app.simulator.token(2);
    connect(&app, seller, &token).await.unwrap();

    let answer = app
        .accounts()
        .await
        .get_account(authorized(
            GetAccountRequest {
                user_id: seller.to_string(),
            },
            &app.seller_token(seller),
        ))
        .await
        .unwrap()
        .into_inner();
    let account = answer.account.clone().unwrap();

    assert_eq!(account.status(), PbStatus::Connected);
    assert!(!format!("{answer:?}").contains(&token));
}

#[tokio::test]
async fn a_token_cardtrader_rejects_is_a_failed_precondition_and_nothing_is_stored() {
    let app = spawn_app().await;
    let seller = new_seller();

    let status = connect(&app, seller, "not-a-real-token").await.unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition);
    let missing = app
        .accounts()
        .await
        .get_account(authorized(
            GetAccountRequest {
                user_id: seller.to_string(),
            },
            &app.service_token(),
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn with_cardtrader_down_connecting_is_unavailable() {
    let app = spawn_app().await;
    app.simulator.set_faults(Faults {
        error_5xx_rate: 1.0,
        ..Faults::default()
    });

    let status = connect(&app, new_seller(), &app.simulator.token(1))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn a_seller_cannot_connect_a_token_for_another_seller() {
    let app = spawn_app().await;
    let (me, victim) = (new_seller(), new_seller());
    let request = ConnectAccountRequest {
        user_id: victim.to_string(),
        cardtrader_token: app.simulator.token(1),
    };

    let status = app
        .accounts()
        .await
        .connect_account(authorized(request, &app.seller_token(me)))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn the_service_role_may_connect_for_any_seller_and_connecting_twice_is_idempotent() {
    let app = spawn_app().await;
    let seller = new_seller();
    let request = || ConnectAccountRequest {
        user_id: seller.to_string(),
        cardtrader_token: app.simulator.token(3),
    };
    let mut client = app.accounts().await;

    let first = client
        .connect_account(authorized(request(), &app.service_token()))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    let second = client
        .connect_account(authorized(request(), &app.service_token()))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();

    assert_eq!(first.cardtrader_user_id, second.cardtrader_user_id);
    assert_eq!(first.connected_at, second.connected_at);
}

#[tokio::test]
async fn one_cardtrader_account_cannot_be_connected_to_two_sellers() {
    let app = spawn_app().await;
    let token = app.simulator.token(4);
    connect(&app, new_seller(), &token).await.unwrap();

    let status = connect(&app, new_seller(), &token).await.unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn once_disconnected_a_cardtrader_account_may_be_connected_to_another_seller() {
    let app = spawn_app().await;
    let (first, second) = (new_seller(), new_seller());
    let token = app.simulator.token(7);
    connect(&app, first, &token).await.unwrap();
    let request = DisconnectAccountRequest {
        user_id: first.to_string(),
        purge_inventory: false,
    };
    app.accounts()
        .await
        .disconnect_account(authorized(request, &app.service_token()))
        .await
        .unwrap();

    let account = connect(&app, second, &token).await.unwrap();

    assert_eq!(account.status(), PbStatus::Connected);
}

#[tokio::test]
async fn malformed_input_names_the_field() {
    let app = spawn_app().await;
    let mut client = app.accounts().await;

    let bad_user = ConnectAccountRequest {
        user_id: "seller-7".into(),
        cardtrader_token: "x".into(),
    };
    let status = client
        .connect_account(authorized(bad_user, &app.service_token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("user_id"));

    let empty_token = ConnectAccountRequest {
        user_id: new_seller().to_string(),
        cardtrader_token: " ".into(),
    };
    let status = client
        .connect_account(authorized(empty_token, &app.service_token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("cardtrader_token"));
}

#[tokio::test]
async fn disconnecting_forgets_the_secrets() {
    let app = spawn_app().await;
    let seller = new_seller();
    connect(&app, seller, &app.simulator.token(5))
        .await
        .unwrap();

    let request = DisconnectAccountRequest {
        user_id: seller.to_string(),
        purge_inventory: false,
    };
    let account = app
        .accounts()
        .await
        .disconnect_account(authorized(request, &app.seller_token(seller)))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();

    assert_eq!(account.status(), PbStatus::Disconnected);
    let pool = crate::helpers::pg_like_the_app(&app.config);
    let left: (Option<Vec<u8>>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT token_ciphertext, shared_secret_ciphertext FROM accounts WHERE user_id = $1",
    )
    .bind(seller.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, (None, None));
}

#[tokio::test]
async fn a_401_on_a_later_call_marks_the_account_token_invalid() {
    let app = spawn_app().await;
    let seller = new_seller();
    let token = app.simulator.token(6);
    connect(&app, seller, &token).await.unwrap();
    // Store a token CardTrader does not know, sealed like a real one, as if it had been revoked.
    let keyring = app.keyring();
    let revoked = keyring.seal(
        b"revoked-token",
        format!("accounts/{seller}/token").as_bytes(),
    );
    let pool = crate::helpers::pg_like_the_app(&app.config);
    sqlx::query("UPDATE accounts SET token_ciphertext = $1 WHERE user_id = $2")
        .bind(&revoked.bytes)
        .bind(seller.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let storage = Storage::connect_lazy(&app.config.storage).unwrap();
    let metrics = Metrics::new().unwrap();
    let limiter = RateLimiter::new(
        storage.redis.clone(),
        &app.config.storage.redis_key_prefix,
        Limits::from_config(&app.config.cardtrader),
        metrics.clone(),
    );
    let client = MarketplaceClient::new(&app.config.cardtrader, limiter, metrics).unwrap();
    let accounts = Accounts::new(storage.pg.clone(), Some(keyring), client.clone());

    let credentials = accounts.credentials(seller).await.unwrap();
    let error = client
        .info(
            credentials.seller(),
            CallOptions::interactive(std::time::Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    let mut conn = storage.pg.pool().acquire().await.unwrap();
    accounts
        .note_cardtrader_error(&mut conn, seller, &error)
        .await
        .unwrap();

    assert_eq!(
        accounts.get(seller).await.unwrap().status,
        AccountStatus::TokenInvalid
    );
    let status = connect(&app, seller, &token).await.unwrap();
    assert_eq!(
        status.status(),
        PbStatus::Connected,
        "connecting again repairs the account"
    );
}

#[tokio::test]
async fn disconnecting_cancels_the_sellers_jobs_and_purges_their_inventory_when_asked() {
    use brx_sync::jobs::{JobKind, JobState, Lane, NewJob, QueueLimit, store as jobs};
    // The app runs no bulk jobs itself, so the test's own claim gets the sync.
    let app = crate::helpers::spawn_app_with(|config| config.jobs.bulk_concurrency = 0).await;
    let seller = new_seller();
    connect(&app, seller, &app.simulator.token(8))
        .await
        .unwrap();
    let pool = crate::helpers::pg_like_the_app(&app.config);
    let new_job = || NewJob::new(seller, JobKind::SyncFull);
    jobs::enqueue(&pool, &new_job(), QueueLimit::Depth(100))
        .await
        .unwrap();
    let running = jobs::claim(
        &pool,
        Lane::Bulk,
        "w",
        std::time::Duration::from_secs(60),
        brx_sync::jobs::Ranking::default(),
    )
    .await
    .unwrap()
    .unwrap();
    let queued = jobs::enqueue(&pool, &new_job(), QueueLimit::Depth(100))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO inventory_items (user_id, product_id, blueprint_id, name, quantity, price_cents, currency) \
         VALUES ($1, 1, 1, 'x', 1, 100, 'EUR'), ($1, 2, 2, 'y', 1, 100, 'EUR')",
    )
    .bind(seller.as_uuid())
    .execute(&pool)
    .await
    .unwrap();

    let request = DisconnectAccountRequest {
        user_id: seller.to_string(),
        purge_inventory: true,
    };
    app.accounts()
        .await
        .disconnect_account(authorized(request, &app.seller_token(seller)))
        .await
        .unwrap();

    assert_eq!(
        jobs::get(&pool, queued.job().id).await.unwrap().state,
        JobState::Cancelled
    );
    assert!(
        jobs::get(&pool, running.job.id)
            .await
            .unwrap()
            .cancel_requested,
        "the running sync is asked to stop"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inventory_items WHERE user_id = $1")
        .bind(seller.as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
