//! Tower layers around every RPC: metrics (outermost, so shed and refused calls are counted too), the
//! per-RPC deadline, and the mapping of load-shed errors to `RESOURCE_EXHAUSTED`.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body::{Body, Frame};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tower::{BoxError, Layer, Service};

use super::status::{code_of_layer_error, resource_exhausted};
use crate::{metrics::Metrics, shutdown::AnswerBy};

/// Shed RPCs (tower's `Overloaded`) become `RESOURCE_EXHAUSTED` with a `retry-after-ms` hint.
pub(crate) fn shed_to_status(
    metrics: Metrics,
    retry_after: Duration,
) -> impl Fn(BoxError) -> BoxError + Clone {
    move |err: BoxError| {
        if err.is::<tower::load_shed::error::Overloaded>() {
            metrics.rpc_shed.inc();
            return resource_exhausted(
                "OVERLOADED",
                "the server is at its concurrency limit; retry after the delay",
                retry_after,
            )
            .into();
        }
        err
    }
}

/// How much earlier than the caller's own deadline the server gives up (see `Deadline::call`).
const CALLER_DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// Bounds each RPC by the configured timeout, or by the caller's shorter `grpc-timeout`, answering
/// `DEADLINE_EXCEEDED` (tonic's own timeout answers `CANCELLED`, which callers would not retry right).
#[derive(Debug, Clone)]
pub(crate) struct DeadlineLayer {
    ceiling: Duration,
    draining: CancellationToken,
}

impl DeadlineLayer {
    /// No RPC runs longer than `ceiling`; handlers that answer with what they have answer at once
    /// when `draining` is cancelled.
    pub(crate) fn new(ceiling: Duration, draining: CancellationToken) -> Self {
        Self { ceiling, draining }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            ceiling: self.ceiling,
            draining: self.draining.clone(),
        }
    }
}

/// When the RPC's budget runs out, for handlers that answer with what they have before then
/// (CreatePurchase answers with the saga's current state), and the server's drain signal, at which
/// they answer at once.
#[derive(Debug, Clone)]
pub(crate) struct RpcDeadline {
    at: tokio::time::Instant,
    draining: CancellationToken,
}

impl RpcDeadline {
    /// When a handler that answers with what it has should answer: `margin` before the RPC's
    /// deadline (30 s from now if the layer set none), so the caller gets an answer rather than
    /// DEADLINE_EXCEEDED; or as soon as the server drains.
    pub(crate) fn answer_by<T>(request: &tonic::Request<T>, margin: Duration) -> AnswerBy {
        let (at, draining) = request.extensions().get::<RpcDeadline>().map_or_else(
            || {
                let at = tokio::time::Instant::now() + Duration::from_secs(30);
                (at, CancellationToken::new())
            },
            |deadline| (deadline.at, deadline.draining.clone()),
        );
        let at = at
            .checked_sub(margin)
            .unwrap_or_else(tokio::time::Instant::now);
        AnswerBy::new(at, draining)
    }
}

/// The service [`DeadlineLayer`] produces.
#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
    inner: S,
    ceiling: Duration,
    draining: CancellationToken,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // tonic's own timer on the caller's `grpc-timeout` sits outside this layer and answers
        // CANCELLED; ending a few milliseconds earlier makes the answer DEADLINE_EXCEEDED instead.
        let budget = grpc_timeout(request.headers()).map_or(self.ceiling, |t| {
            t.saturating_sub(CALLER_DEADLINE_MARGIN).min(self.ceiling)
        });
        // The deadline is fixed now, when tonic arms its timer, not at the first poll of the future
        // below: under load that poll can come later than the margin, and tonic's CANCELLED would win.
        let deadline = tokio::time::Instant::now() + budget;
        request.extensions_mut().insert(RpcDeadline {
            at: deadline,
            draining: self.draining.clone(),
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, future).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(super::status::deadline_exceeded().into()),
            }
        })
    }
}

/// Parses the `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Counts every RPC by method and final gRPC code, and times it until its response body ends.
#[derive(Debug, Clone)]
pub(crate) struct RpcMetricsLayer {
    metrics: Metrics,
}

impl RpcMetricsLayer {
    /// Records into `metrics`.
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] produces.
#[derive(Debug, Clone)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, ResBody> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RecordedBody<ResBody>>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut recorder = RpcRecorder::start(self.metrics.clone(), request.uri().path());
        let future = self.inner.call(request);
        Box::pin(async move {
            // tonic enters the RPC's span when it polls, not when it calls: take it here.
            recorder.span = tracing::Span::current();
            match future.await.map_err(Into::into) {
                Ok(response) => {
                    // A trailers-only response (every error a handler returns) has its status in the
                    // headers; otherwise it comes in the trailers at the end of the body.
                    if let Some(code) = code_in(response.headers()) {
                        recorder.finish(code);
                    }
                    Ok(response.map(|inner| RecordedBody {
                        inner,
                        recorder: Some(recorder),
                    }))
                }
                Err(err) => {
                    recorder.finish(code_of_layer_error(&*err));
                    Err(err)
                }
            }
        })
    }
}

fn code_in(headers: &http::HeaderMap) -> Option<Code> {
    let raw = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(raw))
}

/// Records one RPC exactly once: at its final code, or when dropped before one was seen (the caller
/// went away mid-stream, counted as `Cancelled`).
#[derive(Debug)]
struct RpcRecorder {
    metrics: Metrics,
    method: String,
    started: Instant,
    code: Option<Code>,
    /// The RPC's span, which gets the final code as `rpc.grpc.status_code`.
    span: tracing::Span,
}

impl RpcRecorder {
    fn start(metrics: Metrics, method: &str) -> Self {
        metrics.rpc_in_flight.inc();
        Self {
            metrics,
            method: method.to_owned(),
            started: Instant::now(),
            code: None,
            span: tracing::Span::none(),
        }
    }

    fn finish(&mut self, code: Code) {
        self.code.get_or_insert(code);
    }
}

impl Drop for RpcRecorder {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        self.span.record("rpc.grpc.status_code", code as i32);
        // Unknown paths would let any caller mint label values; they all share one.
        let method = if code == Code::Unimplemented {
            "unknown"
        } else {
            self.method.as_str()
        };
        let code_label = format!("{code:?}");
        self.metrics
            .rpc_requests
            .with_label_values(&[method, code_label.as_str()])
            .inc();
        self.metrics
            .rpc_duration
            .with_label_values(&[method])
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics.rpc_in_flight.dec();
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports the RPC's final code to its recorder when the trailers pass.
    pub(crate) struct RecordedBody<B> {
        #[pin]
        inner: B,
        recorder: Option<RpcRecorder>,
    }
}

impl<B> std::fmt::Debug for RecordedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for RecordedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_in) {
                    if let Some(recorder) = this.recorder.as_mut() {
                        recorder.finish(code);
                    }
                    this.recorder.take();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(recorder) = this.recorder.as_mut() {
                    recorder.finish(Code::Internal);
                }
                this.recorder.take();
            }
            Poll::Ready(None) => {
                // Body ended: a trailers-only response already recorded its code in the headers.
                if let Some(recorder) = this.recorder.as_mut() {
                    recorder.finish(Code::Ok);
                }
                this.recorder.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with_timeout(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        headers
    }

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(
            grpc_timeout(&headers_with_timeout("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&headers_with_timeout("2S")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            grpc_timeout(&headers_with_timeout("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            grpc_timeout(&headers_with_timeout("5u")),
            Some(Duration::from_micros(5))
        );
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        assert_eq!(grpc_timeout(&headers_with_timeout("m")), None);
        assert_eq!(grpc_timeout(&headers_with_timeout("123456789S")), None);
        assert_eq!(grpc_timeout(&headers_with_timeout("10x")), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
