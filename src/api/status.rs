//! The one place where errors become `tonic::Status`, following DESIGN.md §3. Internal causes go to
//! the log with their chain; callers get a generic message.

use std::time::Duration;

use tonic::{Code, Status, metadata::MetadataValue};

use super::auth::AuthError;
use crate::{
    accounts::AccountError, inventory::InventoryError, jobs::JobError, purchase::PurchaseError,
    sync::SyncError,
};

/// Metadata key telling a shed or throttled caller how long to wait before retrying.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Bad input: `INVALID_ARGUMENT` naming the offending field.
pub fn invalid_argument(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Queue full or load shed: `RESOURCE_EXHAUSTED` with a `retry-after-ms` hint.
pub fn resource_exhausted(message: &str, retry_after: Duration) -> Status {
    let mut status = Status::resource_exhausted(message);
    status
        .metadata_mut()
        .insert(RETRY_AFTER_MS, MetadataValue::from(millis(retry_after)));
    status
}

/// Try again later, here or on another replica: `UNAVAILABLE` with a `retry-after-ms` hint.
pub fn unavailable(message: &str, retry_after: Duration) -> Status {
    let mut status = Status::unavailable(message);
    status
        .metadata_mut()
        .insert(RETRY_AFTER_MS, MetadataValue::from(millis(retry_after)));
    status
}

/// Anything unexpected: logged with its whole cause chain, answered with a generic `INTERNAL`.
pub fn internal(context: &str, err: &(dyn std::error::Error + 'static)) -> Status {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %chain, "{context}");
    Status::internal("internal error")
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::NotThisUser | AuthError::NeedsServiceRole => {
                Status::permission_denied(err.to_string())
            }
            AuthError::InvalidToken(ref cause) => {
                // The caller learns only that the token was refused; why is for the operator.
                tracing::info!(error = %cause, "refused a caller token");
                Status::unauthenticated(err.to_string())
            }
            AuthError::NoIdentity
            | AuthError::NoKeyConfigured
            | AuthError::MissingBearer
            | AuthError::SubjectNotAUser => Status::unauthenticated(err.to_string()),
        }
    }
}

/// A purchase that ran and was undone: `ABORTED`, the caller may try again with a new key.
pub fn purchase_undone(id: uuid::Uuid, reason: &str) -> Status {
    Status::aborted(format!("purchase {id} failed and was undone: {reason}"))
}

/// The RPC ran past its deadline.
pub fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("deadline exceeded")
}

impl From<AccountError> for Status {
    fn from(err: AccountError) -> Self {
        match err {
            AccountError::NotFound => Status::not_found("no account for this user"),
            AccountError::NotConnected(_)
            | AccountError::TokenRejected
            | AccountError::CardTraderAccountTaken
            | AccountError::EncryptionNotConfigured
            | AccountError::TokenUnreadable(_) => Status::failed_precondition(err.to_string()),
            AccountError::CardTraderUnavailable(_) => {
                Status::unavailable("CardTrader is unavailable")
            }
            AccountError::RateLimited(retry_after) => {
                unavailable("rate limited by CardTrader", retry_after)
            }
            AccountError::Internal(cause) => internal("account operation failed", cause.as_ref()),
        }
    }
}

impl From<SyncError> for Status {
    fn from(err: SyncError) -> Self {
        match err {
            SyncError::NotConnected => {
                Status::failed_precondition("the seller's CardTrader account is not connected")
            }
            SyncError::NotFound => Status::not_found("no such sync"),
            SyncError::Jobs(JobError::QueueFull {
                lane, retry_after, ..
            }) => resource_exhausted(&format!("the {lane} sync queue is full"), retry_after),
            SyncError::Jobs(JobError::NotFound) => Status::not_found("no such sync"),
            SyncError::Jobs(JobError::Contended) => {
                Status::aborted("the queued sync changed while joining it; retry")
            }
            SyncError::Account(err) => err.into(),
            other => internal("sync operation failed", &other),
        }
    }
}

impl From<JobError> for Status {
    fn from(err: JobError) -> Self {
        match err {
            JobError::NotFound => Status::not_found("no such job"),
            JobError::WrongState(_) => Status::failed_precondition(err.to_string()),
            JobError::QueueFull {
                lane, retry_after, ..
            } => resource_exhausted(&format!("the {lane} queue is full"), retry_after),
            other => internal("job operation failed", &other),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The gRPC code of an error that a layer below the handlers produced.
pub fn code_of_layer_error(err: &(dyn std::error::Error + Send + Sync + 'static)) -> Code {
    if let Some(status) = err.downcast_ref::<Status>() {
        return status.code();
    }
    if err.is::<tower::load_shed::error::Overloaded>() {
        return Code::ResourceExhausted;
    }
    Code::Unknown
}

impl From<PurchaseError> for Status {
    fn from(err: PurchaseError) -> Self {
        match err {
            PurchaseError::InsufficientStock { .. }
            | PurchaseError::UnknownItem(_)
            | PurchaseError::NotConnected
            | PurchaseError::WrongState(_) => Status::failed_precondition(err.to_string()),
            PurchaseError::KeyConflict => Status::already_exists(err.to_string()),
            PurchaseError::NotFound => Status::not_found(err.to_string()),
            PurchaseError::QueueFull => {
                resource_exhausted(&err.to_string(), Duration::from_millis(500))
            }
            other => internal("purchase operation failed", &other),
        }
    }
}

impl From<InventoryError> for Status {
    fn from(err: InventoryError) -> Self {
        match err {
            InventoryError::NotFound => Status::not_found("no such item for this seller"),
            InventoryError::BelowReserved { .. }
            | InventoryError::Reserved { .. }
            | InventoryError::NotConnected => Status::failed_precondition(err.to_string()),
            InventoryError::Accounts(err) => err.into(),
            other => internal("inventory operation failed", &other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhausted_carries_the_retry_hint() {
        let status = resource_exhausted("busy", Duration::from_millis(250));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
    }

    #[test]
    fn internal_hides_the_cause_from_the_caller() {
        let cause = std::io::Error::other("password=hunter2");
        let status = internal("test", &cause);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
