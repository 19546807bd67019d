//! One CardTrader call, end to end: rate-limit tokens, breaker admission, the HTTP exchange with its
//! timeout, classification of the answer, metrics, and retries of idempotent calls.

use std::time::{Duration, Instant};

use backon::Retryable;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::{Serialize, de::DeserializeOwned};
use tracing::Instrument;

use super::{
    CallOptions, Seller,
    breaker::{Admission, CircuitBreaker},
    error::{MarketplaceError, html_message, scope_of_429},
    types::ErrorBody,
};
use crate::{
    metrics::Metrics,
    rate_limit::{RateLimiter, Scope},
    retry::full_jitter,
};

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    pub(super) base_url: String,
    pub(super) limiter: RateLimiter,
    pub(super) breaker: CircuitBreaker,
    pub(super) metrics: Metrics,
    pub(super) attempts: u32,
    pub(super) request_timeout: Duration,
    pub(super) export_timeout: Duration,
    /// Longest product object a streamed export may carry (`BRX_SYNC_MAX_PRODUCT_BYTES`).
    pub(super) max_export_product_bytes: usize,
}

/// What kind of call this is: its metric label, request line, limit scope and idempotency.
#[derive(Debug, Clone)]
pub(crate) struct CallSpec {
    pub(crate) endpoint: &'static str,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) scope: Scope,
    pub(crate) idempotent: bool,
    pub(crate) timeout: Duration,
}

impl Inner {
    pub(super) fn read(&self, endpoint: &'static str, path: String, scope: Scope) -> CallSpec {
        CallSpec {
            endpoint,
            method: Method::GET,
            path,
            scope,
            idempotent: true,
            timeout: self.request_timeout,
        }
    }

    pub(super) fn write(
        &self,
        endpoint: &'static str,
        method: Method,
        path: String,
        idempotent: bool,
    ) -> CallSpec {
        CallSpec {
            endpoint,
            method,
            path,
            scope: Scope::General,
            idempotent,
            timeout: self.request_timeout,
        }
    }

    /// Runs the call, retrying transient failures of idempotent calls within the caller's deadline.
    pub(super) async fn call_json<T: DeserializeOwned>(
        &self,
        seller: Seller<'_>,
        options: CallOptions,
        spec: CallSpec,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T, MarketplaceError> {
        let extra_attempts = if spec.retryable() {
            self.attempts.saturating_sub(1) as usize
        } else {
            0
        };
        let policy = full_jitter(
            Duration::from_millis(200),
            Duration::from_secs(5),
            Some(extra_attempts),
        );
        let attempt = || async {
            let bytes = self.attempt(seller, &options, &spec, body).await?;
            serde_json::from_slice::<T>(&bytes).map_err(|err| MarketplaceError::Unavailable {
                reason: format!("unexpected {} answer: {err}", spec.endpoint),
            })
        };
        attempt
            .retry(policy)
            .when(|err| err.is_transient() && Instant::now() < options.deadline)
            .notify(|err, wait| tracing::debug!(endpoint = spec.endpoint, error = %err, ?wait, "retrying CardTrader call"))
            .await
    }

    async fn attempt(
        &self,
        seller: Seller<'_>,
        options: &CallOptions,
        spec: &CallSpec,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<bytes::Bytes, MarketplaceError> {
        let admission = self.admit(seller, options, spec).await?;
        if options.is_cancelled() {
            return self
                .settle(admission, seller, spec, Err(MarketplaceError::Cancelled))
                .await;
        }
        let started = Instant::now();
        let span = client_span(spec);
        let mut request = self
            .http
            .request(
                spec.method.clone(),
                format!("{}{}", self.base_url, spec.path),
            )
            .bearer_auth(seller.token.expose_secret())
            .timeout(
                spec.timeout
                    .min(options.deadline.saturating_duration_since(started)),
            );
        request = with_traceparent(request, &span);
        if let Some(body) = body {
            request = request.json(body);
        }
        let result = self
            .exchange(request, seller, spec)
            .instrument(span.clone())
            .await;
        if let Ok((status, _)) = &result {
            span.record("http.response.status_code", status.as_u16());
        }
        let outcome = match &result {
            Ok((status, _)) => status.as_u16().to_string(),
            Err((_, label)) => label.clone(),
        };
        self.record(spec.endpoint, &outcome, Some(started.elapsed()));
        let result = result
            .map_err(|(err, _)| err)
            .and_then(|(status, bytes)| classify(status, bytes, seller, spec));
        self.settle(admission, seller, spec, result).await
    }

    /// Starts a call whose body the caller streams: limiter, breaker and status are handled here; the
    /// body is the caller's to read (its own failures are the caller's to retry).
    pub(super) async fn open_stream(
        &self,
        seller: Seller<'_>,
        options: &CallOptions,
        spec: &CallSpec,
    ) -> Result<reqwest::Response, MarketplaceError> {
        let admission = self.admit(seller, options, spec).await?;
        if options.is_cancelled() {
            return self
                .settle(admission, seller, spec, Err(MarketplaceError::Cancelled))
                .await;
        }
        let started = Instant::now();
        let span = client_span(spec);
        let request = self
            .http
            .request(
                spec.method.clone(),
                format!("{}{}", self.base_url, spec.path),
            )
            .bearer_auth(seller.token.expose_secret())
            .timeout(spec.timeout);
        // A stream is only ever a read (the export): abandoned when the caller stops.
        let send = with_traceparent(request, &span)
            .send()
            .instrument(span.clone());
        let sent = match &options.cancel {
            Some(cancel) => tokio::select! {
                sent = send => sent,
                () = cancel.cancelled() => {
                    return self
                        .settle(admission, seller, spec, Err(MarketplaceError::Cancelled))
                        .await;
                }
            },
            None => send.await,
        };
        if let Ok(response) = &sent {
            span.record("http.response.status_code", response.status().as_u16());
        }
        let result = match sent {
            Ok(response) if response.status().is_success() && !is_html(&response) => {
                self.record(
                    spec.endpoint,
                    response.status().as_str(),
                    Some(started.elapsed()),
                );
                Ok(response)
            }
            Ok(response) => {
                let status = response.status();
                self.record(spec.endpoint, status.as_str(), Some(started.elapsed()));
                let bytes = response.bytes().await.unwrap_or_default();
                let error = classify(status, bytes, seller, spec)
                    .err()
                    .unwrap_or_else(|| MarketplaceError::Unavailable {
                        reason: format!("{status}: an HTML page instead of the export"),
                    });
                Err(error)
            }
            Err(err) if err.is_timeout() => Err(MarketplaceError::Timeout),
            Err(err) => Err(MarketplaceError::Unavailable {
                reason: format!("connection failed: {err}"),
            }),
        };
        self.settle(admission, seller, spec, result).await
    }

    /// Rate-limit tokens first (waiting must not hold a breaker probe), then the breaker's admission.
    async fn admit(
        &self,
        seller: Seller<'_>,
        options: &CallOptions,
        spec: &CallSpec,
    ) -> Result<Admission, MarketplaceError> {
        let tokens = self.take_tokens(seller.key, options, spec.scope);
        match &options.cancel {
            Some(cancel) => tokio::select! {
                taken = tokens => taken?,
                () = cancel.cancelled() => return Err(MarketplaceError::Cancelled),
            },
            None => tokens.await?,
        }
        self.breaker.admit().ok_or_else(|| {
            self.record(spec.endpoint, "breaker_open", None);
            MarketplaceError::Unavailable {
                reason: "circuit breaker open".into(),
            }
        })
    }

    /// Bookkeeping after every call: a 429 penalizes the seller's bucket, and the breaker and its gauge
    /// learn whether CardTrader itself looked healthy.
    async fn settle<T>(
        &self,
        admission: Admission,
        seller: Seller<'_>,
        spec: &CallSpec,
        result: Result<T, MarketplaceError>,
    ) -> Result<T, MarketplaceError> {
        if let Err(MarketplaceError::RateLimited { scope, .. }) = &result {
            self.metrics
                .cardtrader_429
                .with_label_values(&[spec.endpoint])
                .inc();
            self.limiter.penalize(seller.key, *scope).await;
        }
        let host_failed = result
            .as_ref()
            .err()
            .is_some_and(MarketplaceError::is_host_failure);
        self.breaker.record(admission, !host_failed);
        self.metrics
            .breaker_state
            .set(self.breaker.state().gauge_value());
        result
    }

    /// General tokens for every call, plus the endpoint's own scope where it has one.
    async fn take_tokens(
        &self,
        seller: &str,
        options: &CallOptions,
        scope: Scope,
    ) -> Result<(), MarketplaceError> {
        for scope in [
            Some(Scope::General),
            (scope != Scope::General).then_some(scope),
        ]
        .into_iter()
        .flatten()
        {
            self.limiter
                .acquire(seller, scope, options.priority, options.deadline)
                .await
                .map_err(|limited| MarketplaceError::RateLimited {
                    scope,
                    retry_after: limited.retry_after,
                })?;
        }
        Ok(())
    }

    /// Sends and reads the body; transport failures come back with their metric label.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        _seller: Seller<'_>,
        _spec: &CallSpec,
    ) -> Result<(StatusCode, bytes::Bytes), (MarketplaceError, String)> {
        let transport = |err: reqwest::Error| {
            if err.is_timeout() {
                (MarketplaceError::Timeout, "timeout".to_owned())
            } else {
                let reason = format!("connection failed: {err}");
                (
                    MarketplaceError::Unavailable { reason },
                    "connect".to_owned(),
                )
            }
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        Ok((status, bytes))
    }

    fn record(&self, endpoint: &str, outcome: &str, elapsed: Option<Duration>) {
        self.metrics
            .cardtrader_requests
            .with_label_values(&[endpoint, outcome])
            .inc();
        if let Some(elapsed) = elapsed {
            self.metrics
                .cardtrader_duration
                .with_label_values(&[endpoint])
                .observe(elapsed.as_secs_f64());
        }
    }
}

fn is_html(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/html"))
}

/// Turns an HTTP answer into the body or a classified error.
fn classify(
    status: StatusCode,
    bytes: bytes::Bytes,
    _seller: Seller<'_>,
    spec: &CallSpec,
) -> Result<bytes::Bytes, MarketplaceError> {
    let text = String::from_utf8_lossy(&bytes);
    let looks_like_html = text.trim_start().starts_with('<');
    if looks_like_html {
        // CardTrader sometimes answers with an HTML page, whatever the status: never a usable result.
        return Err(MarketplaceError::Unavailable {
            reason: format!("{status}: {}", html_message(&text)),
        });
    }
    if status.is_success() {
        return Ok(bytes);
    }
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
    let message = body
        .extra
        .and_then(|extra| extra.message)
        .or(body.error.clone())
        .unwrap_or_else(|| status.to_string());
    Err(match status {
        StatusCode::TOO_MANY_REQUESTS => {
            let scope = scope_of_429(&text, spec.scope);
            // No Retry-After: the wait is the window of the limit that was hit.
            let retry_after = if scope == Scope::General {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(1)
            };
            MarketplaceError::RateLimited { scope, retry_after }
        }
        StatusCode::UNAUTHORIZED => MarketplaceError::Unauthorized,
        StatusCode::NOT_FOUND => MarketplaceError::NotFound { message },
        status if status.is_server_error() => MarketplaceError::Unavailable {
            reason: format!("{status}: {message}"),
        },
        _ => MarketplaceError::Validation {
            code: body
                .error_code
                .unwrap_or_else(|| status.as_u16().to_string()),
            message,
            errors: body.errors,
        },
    })
}

/// The client span of one CardTrader request, after OpenTelemetry's HTTP client conventions.
fn client_span(spec: &CallSpec) -> tracing::Span {
    tracing::info_span!(
        "cardtrader",
        otel.name = %format!("{} {}", spec.method, spec.endpoint),
        otel.kind = "client",
        http.request.method = %spec.method,
        url.path = %spec.path,
        server.address = "cardtrader",
        http.response.status_code = tracing::field::Empty,
    )
}

/// The request carrying `span`'s W3C `traceparent`, so CardTrader's side can join the trace.
fn with_traceparent(
    request: reqwest::RequestBuilder,
    span: &tracing::Span,
) -> reqwest::RequestBuilder {
    match crate::telemetry::traceparent_of(span) {
        Some(traceparent) => request.header("traceparent", traceparent),
        None => request,
    }
}
