//! A connected seller whose CardTrader products the test chooses, created through the simulator's
//! API as a seller would list them.

use std::time::Duration;

use brx_sync::{
    domain::UserId,
    pb::v1::{
        ConnectAccountRequest, StartSyncRequest, SyncJob, WatchSyncRequest,
        sync_service_client::SyncServiceClient,
    },
};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use super::{TestApp, authorized};

/// A new simulator account holding one product of each of `blueprints` (in that order), connected
/// to a new shop seller; returns the seller, the CardTrader token and the product ids.
pub(crate) async fn seller_listing(
    app: &TestApp,
    blueprints: &[i64],
) -> (UserId, String, Vec<i64>) {
    let account = app.simulator.add_seller(0);
    let client = reqwest::Client::new();
    let mut products = Vec::with_capacity(blueprints.len());
    for &blueprint in blueprints {
        let response: Value = client
            .post(format!("{}/products", app.simulator.base_url()))
            .bearer_auth(&account.token)
            .json(&json!({"blueprint_id": blueprint, "price": 1.5, "quantity": 2}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        products.push(response["resource"]["id"].as_i64().unwrap());
    }
    let user = UserId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let request = ConnectAccountRequest {
        user_id: user.to_string(),
        cardtrader_token: account.token.clone(),
    };
    app.accounts()
        .await
        .connect_account(authorized(request, &app.service_token()))
        .await
        .unwrap();
    (user, account.token, products)
}

/// Starts a sync of `user` (full when both lists are empty) and watches it to its end.
pub(crate) async fn sync_to_end(
    app: &TestApp,
    user: UserId,
    blueprint_ids: Vec<i64>,
    expansion_ids: Vec<i64>,
) -> SyncJob {
    let mut sync = SyncServiceClient::new(app.channel().await);
    let token = app.service_token();
    let request = StartSyncRequest {
        user_id: user.to_string(),
        blueprint_ids,
        expansion_ids,
        priority: 0,
    };
    let job = sync
        .start_sync(authorized(request, &token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let watch = async {
        let mut updates = sync
            .watch_sync(authorized(WatchSyncRequest { job_id: job.job_id }, &token))
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        while let Some(update) = updates.next().await {
            last = Some(update.unwrap().job.unwrap());
        }
        last.unwrap()
    };
    tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .expect("the sync ends within a minute")
}
