//! Caller authentication: tokens are required, verified, and scoped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brx_sync::{
    api::auth::{Claims, mint_token},
    domain::UserId,
};
use jsonwebtoken::{EncodingKey, Header};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// Claims the server would accept but for what the test breaks, signed with the server's own key.
fn signed_with_the_app_secret(app: &TestApp, claims: &impl serde::Serialize) -> String {
    let secret =
        secrecy::ExposeSecret::expose_secret(app.config.auth.jwt_hs256_secret.as_ref().unwrap());
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::default(), claims, &key).unwrap()
}

fn seller() -> UserId {
    UserId::from_uuid(uuid::Uuid::new_v4()).unwrap()
}

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated() {
    let app = spawn_app().await;

    let status = app.get_stats(None).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let app = spawn_app().await;
    let an_hour_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let claims = Claims {
        sub: "ops".into(),
        exp: an_hour_ago,
        role: Some("service".into()),
        ..Claims::default()
    };
    let token = signed_with_the_app_secret(&app, &claims);

    let status = app.get_stats(Some(&token)).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_unauthenticated() {
    let app = spawn_app().await;
    let forged = mint_token(
        "not-the-server-secret",
        None,
        "service",
        Duration::from_secs(60),
    )
    .unwrap();

    let status = app.get_stats(Some(&forged)).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_token_without_exp_is_unauthenticated() {
    let app = spawn_app().await;
    let claims = serde_json::json!({ "sub": "ops", "role": "service" });
    let token = signed_with_the_app_secret(&app, &claims);

    let status = app.get_stats(Some(&token)).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_seller_token_on_a_service_only_rpc_is_permission_denied() {
    let app = spawn_app().await;

    let status = app
        .get_stats(Some(&app.seller_token(seller())))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_service_token_is_accepted() {
    let app = spawn_app().await;

    let response = app.get_stats(Some(&app.service_token())).await;

    assert!(response.is_ok(), "{response:?}");
}

#[tokio::test]
async fn health_needs_no_token() {
    let app = spawn_app().await;

    let response = app
        .health()
        .await
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;

    assert!(response.is_ok());
}

#[tokio::test]
async fn with_auth_disabled_by_setting_a_call_without_token_is_served() {
    let app = spawn_app_with(|config| {
        config.auth.dev_mode = true;
        config.auth.auth_disabled = true;
    })
    .await;

    let response = app.get_stats(None).await;

    assert!(response.is_ok(), "{response:?}");
}

#[tokio::test]
async fn with_no_jwt_key_configured_every_authenticated_rpc_is_refused() {
    let app = spawn_app_with(|config| {
        config.auth.dev_mode = true;
        config.auth.jwt_hs256_secret = None;
    })
    .await;
    let token = mint_token("anything", None, "service", Duration::from_secs(60)).unwrap();

    let status = app.get_stats(Some(&token)).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn an_rs256_token_is_verified_with_the_configured_public_key() {
    let app = spawn_app_with(|config| {
        config.auth.jwt_hs256_secret = None;
        config.auth.jwt_rs256_public_key_path = Some("tests/fixtures/jwt_rs256_public.pem".into());
    })
    .await;
    let private = std::fs::read("tests/fixtures/jwt_rs256_private.pem").unwrap();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let claims = Claims {
        sub: "ops".into(),
        exp,
        role: Some("service".into()),
        ..Claims::default()
    };
    let token = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    let hs256 = mint_token("whatever", None, "service", Duration::from_secs(60)).unwrap();

    let accepted = app.get_stats(Some(&token)).await;
    let refused = app.get_stats(Some(&hs256)).await.unwrap_err();

    assert!(accepted.is_ok(), "{accepted:?}");
    assert_eq!(
        refused.code(),
        Code::Unauthenticated,
        "an HS256 token must not pass an RS256 server"
    );
}
