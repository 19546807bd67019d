//! The admin listener exposes per-RPC counters and latency, pool gauges and liveness; the public
//! listener exposes none of it.

use brx_sync::pb::v1::GetStatsRequest;

use crate::helpers::{authorized, spawn_app};

#[tokio::test]
async fn metrics_count_rpcs_by_method_and_code_and_time_them() {
    let app = spawn_app().await;
    let mut admin = app.admin().await;
    admin
        .get_stats(authorized(GetStatsRequest {}, &app.service_token()))
        .await
        .unwrap();
    admin
        .get_stats(authorized(GetStatsRequest {}, &app.service_token()))
        .await
        .unwrap();
    admin.get_stats(GetStatsRequest {}).await.unwrap_err();

    let (status, body) = app.admin_get("/metrics").await;

    assert_eq!(status, 200);
    assert!(
        body.contains(
            r#"brx_rpc_requests_total{code="Ok",method="/brx.sync.v1.AdminService/GetStats"} 2"#
        ),
        "{body}"
    );
    assert!(
        body.contains(r#"brx_rpc_requests_total{code="Unauthenticated",method="/brx.sync.v1.AdminService/GetStats"} 1"#),
        "{body}"
    );
    assert!(body.contains(
        r#"brx_rpc_duration_seconds_count{method="/brx.sync.v1.AdminService/GetStats"} 3"#
    ));
    assert!(body.contains(r#"brx_pool_connections{pool="postgres",state="max"}"#));
    assert!(body.contains(r#"brx_pool_up{pool="postgres"} 1"#));
    assert!(body.contains("brx_serving 1"));
    assert!(body.contains("brx_rpc_in_flight 0"));
}

#[tokio::test]
async fn unknown_methods_share_one_label_so_callers_cannot_inflate_the_series() {
    let app = spawn_app().await;
    let mut client = tonic::client::Grpc::new(app.channel().await);
    client.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/brx.sync.v1.AdminService/NoSuchMethod");
    let codec = tonic_prost::ProstCodec::<GetStatsRequest, GetStatsRequest>::default();
    let status = client
        .unary(
            authorized(GetStatsRequest {}, &app.service_token()),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    let (_, body) = app.admin_get("/metrics").await;

    assert!(
        body.contains(r#"brx_rpc_requests_total{code="Unimplemented",method="unknown"} 1"#),
        "{body}"
    );
    assert!(!body.contains("NoSuchMethod"));
}

#[tokio::test]
async fn livez_answers_ok() {
    let app = spawn_app().await;

    assert_eq!(app.admin_get("/livez").await, (200, "ok".to_owned()));
}

#[tokio::test]
async fn metrics_and_probes_are_on_the_admin_listener_only_and_webhooks_on_the_public_one_only() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();

    for path in ["/metrics", "/livez", "/readyz"] {
        let public = client
            .get(format!("http://{}{path}", app.http_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(public.status(), 404, "{path} is not public");
        assert_eq!(
            app.admin_get(path).await.0,
            200,
            "{path} is on the admin listener"
        );
    }
    let webhook_path = format!("/webhooks/cardtrader/{}", uuid::Uuid::new_v4());
    let on_admin = client
        .post(format!("http://{}{webhook_path}", app.admin_addr))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        on_admin.status(),
        404,
        "webhooks are not on the admin listener"
    );
    let on_public = client
        .post(format!("http://{}{webhook_path}", app.http_addr))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_ne!(
        on_public.status(),
        404,
        "webhooks are on the public listener"
    );
}
