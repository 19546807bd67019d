//! Logs and traces: a tracing subscriber (pretty or JSON) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, an OpenTelemetry OTLP exporter. The returned guard flushes pending spans on shutdown.
//!
//! One trace across services: an RPC continues the caller's W3C `traceparent`
//! ([`continue_remote_trace`]); a job stores the `traceparent` of the request that queued it
//! ([`current_traceparent`]) and its spans continue it ([`continue_trace`]); CardTrader calls send
//! theirs ([`traceparent_of`]).

use std::collections::HashMap;

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, TelemetryConfig};

/// Flushes and stops trace export when dropped or shut down.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("trace export shutdown failed: {err}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Installs the global subscriber. Call once, from `main`, inside the Tokio runtime.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&config.log_filter)?;
    let fmt_layer = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
    };
    let provider = config
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| otlp_provider(endpoint, &config.otel_service_name))
        .transpose()?;
    let otel_layer = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("brx-sync")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build())
}

/// The W3C `traceparent` of `span`, when it is part of an exported trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// The W3C `traceparent` of the current span, when it is part of an exported trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes `span` continue the trace of a stored `traceparent`, and link to it.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    adopt(span, &carrier);
}

/// Makes `span` continue the trace a caller sent in its `traceparent` header, if any.
pub fn continue_remote_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    adopt(span, &Headers(headers));
}

fn adopt(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent = TraceContextPropagator::new().extract(carrier);
    let remote = parent.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    // A span that is not recorded (no OTLP exporter) has nothing to attach to.
    if span.set_parent(parent).is_ok() {
        span.add_link(remote);
    }
}

/// Reads a W3C trace context from HTTP/2 headers (gRPC metadata).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_outside_an_exported_trace_has_no_traceparent_to_hand_on() {
        assert_eq!(traceparent_of(&tracing::Span::none()), None);
        continue_trace(&tracing::Span::none(), Some("not a traceparent"));
    }
}
