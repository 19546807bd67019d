//! With OTEL_EXPORTER_OTLP_ENDPOINT set, every RPC's span reaches an OTLP collector, flushed on shutdown.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokio::sync::mpsc;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::ServeProcess;

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

#[tokio::test]
async fn rpc_spans_are_exported_to_the_otlp_collector_and_flushed_at_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (spans_tx, mut spans_rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans_tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://{collector_addr}");
    let mut process = ServeProcess::spawn(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "brx-sync-under-test"),
    ]);
    process.wait_until_ready().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", process.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    process.sigterm();
    tokio::time::timeout(Duration::from_secs(20), process.child.wait())
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

    assert!(found, "no rpc span for the health check was exported");
    assert!(
        service_names
            .iter()
            .any(|name| name.contains("brx-sync-under-test")),
        "{service_names:?}"
    );
}
