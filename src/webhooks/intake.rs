//! `POST /webhooks/cardtrader/{user_id}`: checks the size and the `Signature` (with the seller's
//! verification key, cached briefly), parses the delivery, and in one statement stores it and makes
//! sure the seller's apply job will run. No CardTrader call and no stock change happens here, so
//! CardTrader gets its answer in milliseconds.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;
use std::sync::Arc;

use super::{WebhookIntake, apply, payload::Envelope, store};
use crate::{
    accounts::AccountError,
    domain::UserId,
    jobs::{JobError, QueueLimit},
};

/// Why a delivery was not stored, named for the answer CardTrader gets.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    /// No signature, a wrong one, or no connected seller behind the URL: the same answer for all,
    /// so the endpoint tells a caller without the secret nothing about which sellers exist.
    #[error("not authorized: {0}")]
    Unauthorized(&'static str),
    /// Signed, but not a delivery this service understands.
    #[error("malformed delivery: {0}")]
    Malformed(String),
    /// Storage or decryption failed; CardTrader may deliver again.
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<sqlx::Error> for IntakeError {
    fn from(err: sqlx::Error) -> Self {
        IntakeError::Internal(err.into())
    }
}

impl From<JobError> for IntakeError {
    fn from(err: JobError) -> Self {
        IntakeError::Internal(err.into())
    }
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        let status = match &self {
            IntakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            IntakeError::Malformed(_) => StatusCode::BAD_REQUEST,
            IntakeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // The cause is logged once, here; the caller gets the status only.
        match &self {
            IntakeError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "webhook not stored");
            }
            other => tracing::info!(reason = %other, "webhook refused"),
        }
        status.into_response()
    }
}

/// Stores one delivery. The body arrives already bounded by the route's size limit (413 past it).
#[tracing::instrument(skip_all, fields(user_id = %raw_user))]
pub(crate) async fn receive(
    State(intake): State<WebhookIntake>,
    Path(raw_user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, IntakeError> {
    // Checked before any lookup, so an unsigned request costs no database work.
    let signature = headers
        .get("signature")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| STANDARD.decode(value.trim()).ok())
        .ok_or(IntakeError::Unauthorized(
            "missing or undecodable signature",
        ))?;
    let user_id = UserId::parse(&raw_user).map_err(|_| IntakeError::Unauthorized("no seller"))?;
    intake.verify_signature(user_id, &body, &signature).await?;
    // Parsed only once signed: unauthenticated input is never interpreted.
    let envelope = Envelope::parse(&body).map_err(|err| IntakeError::Malformed(err.to_string()))?;
    // serde_json accepted it, so it is UTF-8.
    let text = std::str::from_utf8(&body).map_err(|err| IntakeError::Malformed(err.to_string()))?;
    let job = apply::job(user_id);
    let intake_row =
        store::store_event_queued(&intake.pool, user_id, &envelope, text, &job).await?;
    if !intake_row.connected {
        // Disconnected since its key was cached (perhaps on another replica): refused, and the
        // key forgotten.
        intake.keys.invalidate(&user_id);
        return Err(IntakeError::Unauthorized("no connected seller"));
    }
    if intake_row.stored {
        if !intake_row.queued {
            // Another request queued the job between the statement's look and its insert, and it
            // may have been claimed since: one queued now sees the committed event.
            crate::jobs::store::enqueue(&intake.pool, &job, QueueLimit::Unbounded).await?;
        }
        // Workers would find the job at their next poll; this gets it applied at once.
        intake.wakeups.announce(crate::jobs::Lane::Interactive);
    }
    Ok(StatusCode::OK)
}

impl WebhookIntake {
    /// Checks `signature` with the seller's verification key, cached for [`KEY_TTL`](super::KEY_TTL). A cached
    /// key that does not match may be an old connection's (the seller connected again since): the
    /// stored key decides before the delivery is refused.
    async fn verify_signature(
        &self,
        user_id: UserId,
        body: &[u8],
        signature: &[u8],
    ) -> Result<(), IntakeError> {
        if let Some(key) = self.keys.get(&user_id) {
            if verify(key.expose_secret(), body, signature).is_ok() {
                return Ok(());
            }
            self.keys.invalidate(&user_id);
        }
        let key = match self.accounts.credentials(user_id).await {
            Ok(credentials) => Arc::new(credentials.shared_secret),
            Err(AccountError::NotFound | AccountError::NotConnected(_)) => {
                return Err(IntakeError::Unauthorized("no connected seller"));
            }
            Err(other) => return Err(IntakeError::Internal(other.into())),
        };
        verify(key.expose_secret(), body, signature)?;
        // Kept only once it verified a delivery: a flood of bad signatures caches nothing.
        self.keys.insert(user_id, key);
        Ok(())
    }
}

/// Constant-time check of `signature` against HMAC-SHA256(`body`, `secret`).
fn verify(secret: &str, body: &[u8], signature: &[u8]) -> Result<(), IntakeError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .map_err(|_| IntakeError::Unauthorized("unusable secret"))?;
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(signature)
        .map_err(|_| IntakeError::Unauthorized("signature does not match"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulators_signature_verifies_and_any_change_does_not() {
        let body = br#"{"id": 1}"#;
        let signature = STANDARD
            .decode(cardtrader_sim::webhook_signature("s3cret", body))
            .unwrap();

        assert!(verify("s3cret", body, &signature).is_ok());
        assert!(verify("other", body, &signature).is_err());
        assert!(verify("s3cret", br#"{"id": 2}"#, &signature).is_err());
        assert!(verify("s3cret", body, &signature[..31]).is_err());
    }
}
