//! The gRPC transport, and the only one: proto ↔ domain conversion, authentication, the tower layers,
//! and the mapping of errors to `Status`. Handlers are thin; the capabilities do the work.

pub mod auth;
pub mod pb;
pub mod status;

mod accounts;
mod admin;
mod blueprints;
mod fields;
mod health;
mod inventory;
mod layers;
mod pages;
mod purchases;
mod streams;
mod sync;

use std::{future::Future, time::Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    transport::{Server, server::TcpIncoming},
};
use tower::ServiceBuilder;

pub use health::HealthBridge;

use crate::{config::ServerConfig, metrics::Metrics, readiness::Readiness, storage::Storage};
use accounts::AccountApi;
use admin::AdminApi;
use blueprints::BlueprintApi;
use inventory::InventoryApi;
use pb::v1::{
    account_service_server::AccountServiceServer, admin_service_server::AdminServiceServer,
    blueprint_service_server::BlueprintServiceServer,
    inventory_service_server::InventoryServiceServer,
    purchase_service_server::PurchaseServiceServer, sync_service_server::SyncServiceServer,
};
use purchases::PurchaseApi;
use sync::SyncApi;

/// What the gRPC server is built from.
#[derive(Debug)]
pub struct GrpcParts {
    /// Storage pools.
    pub storage: Storage,
    /// Readiness flag.
    pub readiness: Readiness,
    /// Metric handles.
    pub metrics: Metrics,
    /// Caller token verification.
    pub authenticator: auth::Authenticator,
    /// Sellers' CardTrader connections.
    pub accounts: crate::accounts::Accounts,
    /// Blueprint → print mappings.
    pub catalog: crate::blueprints::BlueprintCatalog,
    /// Sellers' items and the storefront's offers.
    pub inventory: crate::inventory::Inventory,
    /// Dead jobs and lane counts, for operators.
    pub jobs: crate::jobs::Jobs,
    /// Bulk syncs.
    pub syncs: crate::sync::Syncs,
    /// Purchases (PurchaseService).
    pub purchases: crate::purchase::Purchases,
    /// Job and purchase changes, which wake WatchSync/WatchPurchase streams.
    pub changes: crate::jobs::wake::Changes,
}

/// Builds the health bridge and the server future. When `shutdown` is cancelled the server stops
/// accepting, open streams end at once (UNAVAILABLE, watch again), and the future returns once
/// in-flight RPCs have drained.
pub fn grpc_server(
    listener: TcpListener,
    config: &ServerConfig,
    parts: GrpcParts,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    HealthBridge,
    impl Future<Output = Result<(), tonic::transport::Error>> + use<>,
)> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let streams = streams::Streams::new(
        streams::StreamSettings::from_config(config),
        parts.changes,
        shutdown.clone(),
        parts.metrics.clone(),
    );
    let admin = AdminServiceServer::new(AdminApi {
        storage: parts.storage,
        readiness: parts.readiness.clone(),
        metrics: parts.metrics.clone(),
        started_at: Instant::now(),
        concurrency_limit: config.rpc_concurrency_limit,
        marketplace: parts.accounts.marketplace().clone(),
        lanes: Default::default(),
        jobs: parts.jobs,
    });
    let blueprint_service = BlueprintServiceServer::new(BlueprintApi {
        catalog: parts.catalog,
        syncs: parts.syncs.clone(),
    });
    let sync_service = SyncServiceServer::new(SyncApi {
        syncs: parts.syncs,
        streams: streams.clone(),
    });
    let purchase_service = PurchaseServiceServer::new(PurchaseApi {
        purchases: parts.purchases,
        streams,
    });
    let inventory_service = InventoryServiceServer::new(InventoryApi {
        inventory: parts.inventory,
    });
    let accounts = AccountServiceServer::new(AccountApi {
        accounts: parts.accounts,
    });
    let services = vec![
        <AdminServiceServer<AdminApi> as NamedService>::NAME,
        <AccountServiceServer<AccountApi> as NamedService>::NAME,
        <BlueprintServiceServer<BlueprintApi> as NamedService>::NAME,
        <SyncServiceServer<SyncApi> as NamedService>::NAME,
        <PurchaseServiceServer<PurchaseApi> as NamedService>::NAME,
        <InventoryServiceServer<InventoryApi> as NamedService>::NAME,
    ];
    let bridge = HealthBridge::new(reporter, parts.readiness, parts.metrics.clone(), services);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Outermost first: count everything (shed calls included), shed past the global limit, bound the
    // RPC's time, then authenticate.
    let limit = usize::try_from(config.rpc_concurrency_limit).unwrap_or(usize::MAX);
    let layers = ServiceBuilder::new()
        .layer(layers::RpcMetricsLayer::new(parts.metrics.clone()))
        .map_err(layers::shed_to_status(
            parts.metrics,
            config.rpc_shed_retry_after,
        ))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limit))
        .layer(layers::DeadlineLayer::new(
            config.rpc_timeout,
            shutdown.clone(),
        ))
        .layer(auth::AuthLayer::new(parts.authenticator))
        .into_inner();

    // Nagle's algorithm would hold a lone small response back ~40 ms waiting for the peer's delayed ACK;
    // RPCs are latency-bound, so every accepted connection gets TCP_NODELAY. Keepalive finds dead peers.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(config.grpc_keepalive_interval))
        .http2_keepalive_timeout(Some(config.grpc_keepalive_timeout));
    if !config.grpc_max_connection_age.is_zero() {
        builder = builder
            .max_connection_age(config.grpc_max_connection_age)
            .max_connection_age_grace(config.grpc_max_connection_age_grace);
    }
    let server = builder
        .trace_fn(rpc_span)
        .layer(layers)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(accounts)
        .add_service(blueprint_service)
        .add_service(sync_service)
        .add_service(purchase_service)
        .add_service(inventory_service)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
    Ok((bridge, server))
}

/// The server span of one RPC, named and attributed after OpenTelemetry's RPC conventions
/// (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, recorded when the RPC ends),
/// continuing the caller's trace when it sent a W3C `traceparent`.
fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let full_name = path.trim_start_matches('/');
    let (service, method) = full_name.split_once('/').unwrap_or((full_name, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %full_name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        method = %path,
    );
    crate::telemetry::continue_remote_trace(&span, request.headers());
    span
}
