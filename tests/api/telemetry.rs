//! With OTEL_EXPORTER_OTLP_ENDPOINT set, every RPC's span reaches an OTLP collector, flushed on
//! shutdown; a caller's W3C `traceparent` is continued through the RPC, the job it queues, the job's
//! chunks and its CardTrader calls: one trace.

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
    let (endpoint, mut spans_rx) = collector().await;
    let mut process = ServeProcess::spawn(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "brx-sync-under-test"),
    ]);
    process.wait_until_ready().await;
    let channel = process.channel().await;
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
                if span.name == "grpc.health.v1.Health/Check"
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

/// An in-process OTLP collector: the spans exported to its address arrive on the receiver.
async fn collector() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (spans_tx, spans_rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans_tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{collector_addr}"), spans_rx)
}

/// One exported span, flattened: its trace, name, kind and string/int attributes.
#[derive(Debug)]
struct SeenSpan {
    trace_id: Vec<u8>,
    name: String,
    kind: i32,
    attributes: Vec<(String, String)>,
}

impl SeenSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn flatten(exports: Vec<ExportTraceServiceRequest>) -> Vec<SeenSpan> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    exports
        .into_iter()
        .flat_map(|export| export.resource_spans)
        .flat_map(|resource| resource.scope_spans)
        .flat_map(|scope| scope.spans)
        .map(|span| SeenSpan {
            trace_id: span.trace_id,
            name: span.name,
            kind: span.kind,
            attributes: span
                .attributes
                .into_iter()
                .map(|kv| {
                    let value = match kv.value.and_then(|v| v.value) {
                        Some(Value::StringValue(s)) => s,
                        Some(Value::IntValue(i)) => i.to_string(),
                        Some(Value::BoolValue(b)) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    (kv.key, value)
                })
                .collect(),
        })
        .collect()
}

#[tokio::test]
async fn one_start_sync_is_one_trace_from_the_rpc_through_the_jobs_chunks_to_the_cardtrader_export()
{
    use brx_sync::pb::v1::{
        ConnectAccountRequest, GetSyncRequest, StartSyncRequest, SyncState,
        account_service_client::AccountServiceClient, sync_service_client::SyncServiceClient,
    };
    use cardtrader_sim::{SimulatorConfig, SimulatorHandle};

    let (endpoint, mut spans_rx) = collector().await;
    let simulator =
        SimulatorHandle::start(SimulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let base_url = simulator.base_url();
    let mut process = ServeProcess::spawn(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("BRX_CARDTRADER_BASE_URL", base_url.as_str()),
        ("BRX_EXPANSION_LEARN", "false"),
    ]);
    process.wait_until_ready().await;
    let channel = process.channel().await;
    let secret = crate::helpers::PROTECTED_ENV[0].1;
    let token =
        brx_sync::api::auth::mint_token(secret, None, "service", Duration::from_secs(600)).unwrap();
    let seller = simulator.add_seller(1_500);
    let user = uuid::Uuid::new_v4().to_string();
    AccountServiceClient::new(channel.clone())
        .connect_account(crate::helpers::authorized(
            ConnectAccountRequest {
                user_id: user.clone(),
                cardtrader_token: seller.token,
            },
            &token,
        ))
        .await
        .unwrap();

    // The caller's trace: a W3C traceparent it started.
    let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let mut request = crate::helpers::authorized(
        StartSyncRequest {
            user_id: user,
            ..StartSyncRequest::default()
        },
        &token,
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let mut syncs = SyncServiceClient::new(channel);
    let job_id = syncs
        .start_sync(request)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .job_id;
    crate::helpers::wait_until("the sync to succeed", Duration::from_secs(60), || {
        let mut syncs = syncs.clone();
        let request = crate::helpers::authorized(
            GetSyncRequest {
                job_id: job_id.clone(),
            },
            &token,
        );
        async move {
            let job = syncs.get_sync(request).await.unwrap().into_inner().job;
            job.unwrap().state() == SyncState::Succeeded
        }
    })
    .await;
    process.sigterm();
    tokio::time::timeout(Duration::from_secs(20), process.child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut exports = Vec::new();
    while let Ok(Some(export)) = tokio::time::timeout(Duration::from_secs(2), spans_rx.recv()).await
    {
        exports.push(export);
    }

    let spans = flatten(exports);
    let ours = hex::decode(&trace_id).unwrap();
    let in_trace: Vec<&SeenSpan> = spans.iter().filter(|s| s.trace_id == ours).collect();
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    let rpc = in_trace
        .iter()
        .find(|s| s.name == "brx.sync.v1.SyncService/StartSync")
        .unwrap_or_else(|| panic!("no StartSync span in the caller's trace: {names:?}"));
    assert_eq!(rpc.kind, SERVER);
    assert_eq!(rpc.attribute("rpc.system"), Some("grpc"));
    assert_eq!(
        rpc.attribute("rpc.service"),
        Some("brx.sync.v1.SyncService")
    );
    assert_eq!(rpc.attribute("rpc.method"), Some("StartSync"));
    assert_eq!(rpc.attribute("rpc.grpc.status_code"), Some("0"));
    assert!(
        names.contains(&"job sync_full"),
        "the job continues the trace: {names:?}"
    );
    assert!(
        names.iter().filter(|name| **name == "sync.chunk").count() >= 2,
        "its chunks are in the trace: {names:?}"
    );
    let export = in_trace
        .iter()
        .find(|s| s.name == "GET products_export")
        .unwrap_or_else(|| panic!("no CardTrader export call in the trace: {names:?}"));
    assert_eq!(export.kind, CLIENT);
    assert_eq!(export.attribute("http.response.status_code"), Some("200"));
}
