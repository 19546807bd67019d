//! With OTEL_EXPORTER_OTLP_ENDPOINT set, every RPC's span reaches an OTLP collector, flushed on shutdown.

use std::{process::Stdio, time::Duration};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokio::sync::mpsc;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn rpc_spans_are_exported_to_the_otlp_collector_and_flushed_at_shutdown() {
    crate::helpers::init_process();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (spans_tx, mut spans_rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans_tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let grpc_addr = format!("127.0.0.1:{}", free_port());
    let database = format!("brx_test_{}", uuid::Uuid::new_v4().simple());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_brx-sync"))
        .env_clear()
        .env("BRX_GRPC_ADDR", &grpc_addr)
        .env("BRX_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "BRX_DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{database}"),
        )
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .env("OTEL_SERVICE_NAME", "brx-sync-under-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut health = None;
    for _ in 0..100 {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
        {
            health = Some(HealthClient::new(channel));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health
        .unwrap()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();

    let mut found = false;
    let mut service_names = Vec::new();
    while let Ok(Some(export)) = tokio::time::timeout(Duration::from_secs(2), spans_rx.recv()).await
    {
        for resource_spans in export.resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            for attribute in resource
                .attributes
                .iter()
                .filter(|a| a.key == "service.name")
            {
                service_names.push(format!("{:?}", attribute.value));
            }
            for span in resource_spans
                .scope_spans
                .iter()
                .flat_map(|scope| &scope.spans)
            {
                let method = span.attributes.iter().find(|a| a.key == "method");
                if span.name == "rpc"
                    && format!("{method:?}").contains("/grpc.health.v1.Health/Check")
                {
                    found = true;
                }
            }
        }
    }
    let admin = sqlx::PgPool::connect(crate::helpers::POSTGRES_ADMIN_URL)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();

    assert!(found, "no rpc span for the health check was exported");
    assert!(
        service_names
            .iter()
            .any(|name| name.contains("brx-sync-under-test")),
        "{service_names:?}"
    );
}
