//! Fault injection on API requests: latency, JSON or HTML 5xx answers, hangs before or after the
//! request is applied. Dice are rolled per request against the current [`Faults`].

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use rand::Rng;

use super::{Faults, errors::envelope, state::SimState};

/// How long a "timeout" fault hangs; longer than any sane client read timeout.
const HANG: Duration = Duration::from_secs(60);

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Pass,
    Json5xx(StatusCode),
    Html5xx(StatusCode),
    Timeout,
    TimeoutAfterApply,
    DelayedApply,
}

fn roll(faults: &Faults, rng: &mut impl Rng) -> Action {
    let statuses = [
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
    ];
    let status = statuses[rng.random_range(0..statuses.len())];
    let hit = |rate: f64, rng: &mut dyn rand::RngCore| rate > 0.0 && rng.random::<f64>() < rate;
    if hit(faults.timeout_rate, rng) {
        Action::Timeout
    } else if hit(faults.timeout_after_apply_rate, rng) {
        Action::TimeoutAfterApply
    } else if hit(faults.delayed_apply_rate, rng) {
        Action::DelayedApply
    } else if hit(faults.error_5xx_rate, rng) {
        Action::Json5xx(status)
    } else if hit(faults.html_error_rate, rng) {
        Action::Html5xx(status)
    } else {
        Action::Pass
    }
}

/// Runs `req` through the active faults.
pub(crate) async fn apply(state: Arc<SimState>, req: Request, next: Next) -> Response {
    let faults = state.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let in_scope =
        faults.path_ends_with.is_empty() || req.uri().path().ends_with(&faults.path_ends_with);
    let mut action = if in_scope {
        roll(&faults, &mut rand::rng())
    } else {
        Action::Pass
    };
    if action != Action::Pass && !state.take_fault(&faults) {
        action = Action::Pass;
    }
    match action {
        Action::Pass => next.run(req).await,
        Action::Json5xx(status) => json_error(status),
        Action::Html5xx(status) => html_error(status),
        Action::Timeout => {
            hang(&state).await;
            html_error(StatusCode::GATEWAY_TIMEOUT)
        }
        Action::TimeoutAfterApply => {
            let response = next.run(req).await;
            hang(&state).await;
            response
        }
        Action::DelayedApply => {
            // Applied even if the client stopped waiting: a server does not know it left.
            let delay = Duration::from_millis(faults.apply_delay_ms);
            let held = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                next.run(req).await
            });
            held.await
                .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR))
        }
    }
}

async fn hang(state: &SimState) {
    tokio::select! {
        () = tokio::time::sleep(HANG) => {}
        () = state.cancel.cancelled() => {}
    }
}

fn json_error(status: StatusCode) -> Response {
    let body = envelope(
        "internal_server_error",
        serde_json::json!([]),
        "Something went wrong",
    );
    (status, Json(body)).into_response()
}

/// The HTML error page some CardTrader errors come back as, message in the first `<p>`.
fn html_error(status: StatusCode) -> Response {
    let message = status.canonical_reason().unwrap_or("Error");
    let page = format!(
        "<!DOCTYPE html>\n<html>\n<head><title>{message} ({})</title></head>\n<body>\n\
         <div class=\"dialog\"><h1>{message}</h1><p>We're sorry, but something went wrong.</p></div>\n\
         </body>\n</html>\n",
        status.as_u16()
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_faults_means_every_request_passes() {
        let mut rng = rand::rng();
        assert!((0..1000).all(|_| roll(&Faults::default(), &mut rng) == Action::Pass));
    }

    #[test]
    fn certain_faults_always_fire() {
        let mut rng = rand::rng();
        let faults = Faults {
            html_error_rate: 1.0,
            ..Faults::default()
        };
        assert!(matches!(roll(&faults, &mut rng), Action::Html5xx(_)));
        let faults = Faults {
            timeout_rate: 1.0,
            error_5xx_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(roll(&faults, &mut rng), Action::Timeout);
    }
}
