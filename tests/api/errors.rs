//! The error model seen by a caller: every non-OK status carries `google.rpc` details
//! (`ErrorInfo` with a stable reason, `BadRequest` per bad field, `RetryInfo` when waiting helps,
//! `PreconditionFailure` when the caller must fix something first). Asserted on the details,
//! never on the message text.

use std::time::Duration;

use brx_sync::{
    api::status::DOMAIN,
    pb::v1::{
        CreateItemRequest, CreatePurchaseRequest, GetStatsRequest, GetSyncRequest,
        ListInventoryRequest, PurchaseLine, StartSyncRequest, UpdateItemRequest,
        inventory_service_client::InventoryServiceClient,
        purchase_service_client::PurchaseServiceClient, sync_service_client::SyncServiceClient,
    },
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{TcpProxy, authorized, spawn_app, spawn_app_behind, wait_for};

fn reason(status: &Status) -> String {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(info.domain, DOMAIN);
    info.reason.clone()
}

#[tokio::test]
async fn an_update_with_nothing_to_change_names_every_editable_field() {
    let app = spawn_app().await;
    let seller = uuid::Uuid::new_v4();
    let request = UpdateItemRequest {
        user_id: seller.to_string(),
        product_id: 1,
        ..UpdateItemRequest::default()
    };

    let status = InventoryServiceClient::new(app.channel().await)
        .update_item(authorized(request, &app.service_token()))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "INVALID_FIELD");
    let details = status.get_error_details();
    let fields: Vec<_> = details
        .bad_request()
        .expect("BadRequest")
        .field_violations
        .iter()
        .map(|violation| violation.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "price_cents",
            "quantity",
            "description",
            "properties",
            "user_data_field"
        ]
    );
}

/// The field paths of a status's `BadRequest`, in order.
fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(status), "INVALID_FIELD");
    status
        .get_error_details()
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest on {status:?}"))
        .field_violations
        .iter()
        .map(|violation| violation.field.clone())
        .collect()
}

#[tokio::test]
async fn a_request_with_several_bad_fields_names_every_one_in_one_answer() {
    let app = spawn_app().await;
    let token = app.service_token();
    let line = |item_id, quantity| PurchaseLine { item_id, quantity };

    let purchase = PurchaseServiceClient::new(app.channel().await)
        .create_purchase(authorized(
            CreatePurchaseRequest {
                user_id: "not-a-seller".into(),
                idempotency_key: " ".into(),
                lines: vec![line(7, 0), line(-1, 1), line(7, 1)],
                buyer_ref: "b".repeat(201),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&purchase),
        [
            "user_id",
            "idempotency_key",
            "buyer_ref",
            "lines[0].quantity",
            "lines[1].item_id",
            "lines[2].item_id",
        ]
    );

    let mut inventory = InventoryServiceClient::new(app.channel().await);
    let properties = prost_types::Struct {
        fields: [(
            "condition".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::ListValue(
                    prost_types::ListValue::default(),
                )),
            },
        )]
        .into(),
    };
    let create = inventory
        .create_item(authorized(
            CreateItemRequest {
                user_id: uuid::Uuid::new_v4().to_string(),
                blueprint_id: 0,
                price_cents: 0,
                quantity: 1,
                properties: Some(properties),
                ..CreateItemRequest::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&create),
        ["blueprint_id", "price_cents", "properties.condition"]
    );

    let list = inventory
        .list_inventory(authorized(
            ListInventoryRequest {
                user_id: uuid::Uuid::new_v4().to_string(),
                page_size: 10_000,
                page_token: "%%%".into(),
                ..ListInventoryRequest::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&list), ["page_size", "page_token"]);
}

#[tokio::test]
async fn a_bad_field_and_a_bad_token_carry_their_reasons() {
    let app = spawn_app().await;
    let mut syncs = SyncServiceClient::new(app.channel().await);

    let bad_id = syncs
        .get_sync(authorized(
            GetSyncRequest {
                job_id: "not-a-uuid".into(),
            },
            &app.service_token(),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    let details = bad_id.get_error_details();
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "job_id"
    );

    let forged = app
        .admin()
        .await
        .get_stats(authorized(GetStatsRequest {}, "not.a.jwt"))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);
    assert_eq!(reason(&forged), "TOKEN_INVALID");
}

#[tokio::test]
async fn a_sync_of_a_seller_never_connected_is_a_precondition_naming_the_account() {
    let app = spawn_app().await;
    let status = SyncServiceClient::new(app.channel().await)
        .start_sync(authorized(
            StartSyncRequest {
                user_id: uuid::Uuid::new_v4().to_string(),
                ..StartSyncRequest::default()
            },
            &app.service_token(),
        ))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "ACCOUNT_NOT_CONNECTED");
    let details = status.get_error_details();
    let violation = &details.precondition_failure().unwrap().violations[0];
    assert_eq!(violation.r#type, "ACCOUNT");
    assert_eq!(violation.subject, "user_id");
}

#[tokio::test]
async fn an_rpc_during_a_postgres_outage_is_unavailable_with_a_retry_delay_not_internal() {
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let app = spawn_app_behind(&proxy, |config| {
        config.storage.pg_acquire_timeout = Duration::from_millis(500);
    })
    .await;
    let syncs = SyncServiceClient::new(app.channel().await);
    proxy.cut().await;

    // The first call may still find a pooled connection that dies under it; what matters is what
    // callers get once the pool knows PostgreSQL is gone.
    let status = wait_for(
        "an RPC to fail on the outage",
        Duration::from_secs(20),
        || {
            let request = authorized(
                GetSyncRequest {
                    job_id: uuid::Uuid::new_v4().to_string(),
                },
                &app.service_token(),
            );
            let mut syncs = syncs.clone();
            async move {
                match syncs.get_sync(request).await {
                    Err(status) if status.code() != Code::NotFound => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "DATABASE_UNAVAILABLE");
    assert!(status.get_error_details().retry_info().is_some());
    proxy.restore();
}
