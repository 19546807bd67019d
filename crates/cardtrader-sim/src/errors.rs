//! The API's error answers: the documented `{error_code, errors, extra{message}, request_id}` envelope.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// An error answered with CardTrader's envelope.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 401, missing or unknown bearer token.
    #[error("You are not authorized to access this page")]
    Unauthorized,
    /// 404 with the given message.
    #[error("{0}")]
    NotFound(String),
    /// 422 `missing_parameter` naming the parameters.
    #[error("Missing required parameter(s) {0}")]
    MissingParameter(String),
    /// 422 `validation_error` with per-field `errors` (an object).
    #[error("{message}")]
    Validation { errors: Value, message: String },
    /// 400 for a body that is not JSON.
    #[error("{0}")]
    BadRequest(String),
}

impl ApiError {
    /// A validation error on one field.
    pub(crate) fn field(field: &str, message: &str) -> Self {
        Self::Validation {
            errors: json!({ field: [message] }),
            message: format!("{field} {message}"),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, Value) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", json!([])),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", json!([])),
            Self::MissingParameter(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_parameter",
                json!([]),
            ),
            Self::Validation { errors, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_error",
                errors.clone(),
            ),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", json!([])),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, errors) = self.parts();
        (status, Json(envelope(code, errors, &self.to_string()))).into_response()
    }
}

/// The documented error envelope with a fresh `request_id`.
pub(crate) fn envelope(code: &str, errors: Value, message: &str) -> Value {
    json!({"error_code": code, "errors": errors, "extra": {"message": message},
        "request_id": uuid::Uuid::new_v4().to_string()})
}

/// Parses a JSON body leniently: no Content-Type needed (the doc's curl examples send none), empty = `{}`.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|err| ApiError::BadRequest(format!("invalid JSON body: {err}")))
}
