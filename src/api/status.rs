//! The one place where errors become `tonic::Status`, following DESIGN.md §3 and Google's error
//! model (AIP-193): every non-OK status carries a `google.rpc.ErrorInfo` with a stable reason in
//! [`DOMAIN`]; bad input a `BadRequest` naming the field; answers worth retrying later a
//! `RetryInfo` (and, for older callers, `retry-after-ms` metadata); unmet preconditions a
//! `PreconditionFailure`. Callers act on those details, never on the message text. Internal causes
//! go to the log with their chain; callers get a generic message. An outage of a database is
//! `UNAVAILABLE` with a retry delay, never `INTERNAL`.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth::AuthError;
use crate::{
    accounts::AccountError, inventory::InventoryError, jobs::JobError, purchase::PurchaseError,
    sync::SyncError,
};

/// Metadata key telling a shed or throttled caller how long to wait before retrying.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The `ErrorInfo.domain` of every error this service returns.
pub const DOMAIN: &str = "brx-sync.brx.sync.v1";

/// How long a caller should wait after a database outage before trying again.
pub const OUTAGE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A status with `ErrorInfo { reason, domain }` and whatever else `details` holds.
pub fn with_reason(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(reason, DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
}

/// Bad input: `INVALID_ARGUMENT` with a `BadRequest` field violation naming the offending field.
pub fn invalid_argument(field: &str, reason: impl std::fmt::Display) -> Status {
    let description = reason.to_string();
    with_reason(
        Code::InvalidArgument,
        "INVALID_FIELD",
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// Bad input in several fields at once: one `BadRequest` violation per field.
pub fn invalid_arguments(message: impl Into<String>, violations: &[(&str, &str)]) -> Status {
    let mut details = ErrorDetails::new();
    for (field, description) in violations {
        details.add_bad_request_violation(*field, *description);
    }
    with_reason(Code::InvalidArgument, "INVALID_FIELD", message, details)
}

/// A precondition the caller can fix: `FAILED_PRECONDITION` with a `PreconditionFailure` whose
/// violation names its `kind` (e.g. `ACCOUNT`) and `subject`.
pub fn failed_precondition(
    reason: &str,
    kind: &str,
    subject: &str,
    message: impl Into<String>,
) -> Status {
    let message = message.into();
    with_reason(
        Code::FailedPrecondition,
        reason,
        message.clone(),
        ErrorDetails::with_precondition_failure_violation(kind, subject, message),
    )
}

/// Queue full or load shed: `RESOURCE_EXHAUSTED` with `RetryInfo` and a `retry-after-ms` hint.
pub fn resource_exhausted(reason: &str, message: &str, retry_after: Duration) -> Status {
    retry_later(Code::ResourceExhausted, reason, message, retry_after)
}

/// Try again later, here or on another replica: `UNAVAILABLE` with `RetryInfo` and a
/// `retry-after-ms` hint.
pub fn unavailable(reason: &str, message: &str, retry_after: Duration) -> Status {
    retry_later(Code::Unavailable, reason, message, retry_after)
}

fn retry_later(code: Code, reason: &str, message: &str, retry_after: Duration) -> Status {
    let mut status = with_reason(
        code,
        reason,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    );
    status
        .metadata_mut()
        .insert(RETRY_AFTER_MS, MetadataValue::from(millis(retry_after)));
    status
}

/// A status of `code` whose only detail is its `ErrorInfo`.
fn plain(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_reason(code, reason, message, ErrorDetails::new())
}

/// Anything unexpected. A database that cannot be reached is an outage, answered `UNAVAILABLE`
/// with a retry delay; everything else is logged with its whole cause chain and answered with a
/// generic `INTERNAL`.
pub fn internal(context: &str, err: &(dyn std::error::Error + 'static)) -> Status {
    let causes: Vec<&(dyn std::error::Error + 'static)> =
        std::iter::successors(Some(err), |cause| cause.source()).collect();
    let outage = causes.iter().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(crate::storage::is_outage)
    });
    let chain = causes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    if outage {
        tracing::warn!(error = %chain, "{context}: database unavailable");
        return unavailable(
            "DATABASE_UNAVAILABLE",
            "the database is unavailable; retry shortly",
            OUTAGE_RETRY_AFTER,
        );
    }
    tracing::error!(error = %chain, "{context}");
    plain(Code::Internal, "INTERNAL", "internal error")
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        let message = err.to_string();
        match err {
            AuthError::NotThisUser => plain(Code::PermissionDenied, "NOT_THIS_SELLER", message),
            AuthError::NeedsServiceRole => {
                plain(Code::PermissionDenied, "SERVICE_ROLE_REQUIRED", message)
            }
            AuthError::InvalidToken(ref cause) => {
                // The caller learns only that the token was refused; why is for the operator.
                tracing::info!(error = %cause, "refused a caller token");
                plain(Code::Unauthenticated, "TOKEN_INVALID", message)
            }
            AuthError::NoIdentity => plain(Code::Unauthenticated, "NO_IDENTITY", message),
            AuthError::NoKeyConfigured => {
                plain(Code::Unauthenticated, "NO_KEY_CONFIGURED", message)
            }
            AuthError::MissingBearer => plain(Code::Unauthenticated, "TOKEN_MISSING", message),
            AuthError::SubjectNotAUser => {
                plain(Code::Unauthenticated, "SUBJECT_NOT_A_USER", message)
            }
        }
    }
}

/// A purchase that ran and was undone: `ABORTED`, the caller may try again with a new key.
pub fn purchase_undone(id: uuid::Uuid, reason: &str) -> Status {
    plain(
        Code::Aborted,
        "PURCHASE_UNDONE",
        format!("purchase {id} failed and was undone: {reason}"),
    )
}

/// The RPC ran past its deadline.
pub fn deadline_exceeded() -> Status {
    plain(
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
        "deadline exceeded: the call took longer than its grpc-timeout or BRX_RPC_TIMEOUT",
    )
}

/// The seller cannot be acted for until their account is connected again.
fn not_connected(message: String) -> Status {
    failed_precondition("ACCOUNT_NOT_CONNECTED", "ACCOUNT", "user_id", message)
}

impl From<AccountError> for Status {
    fn from(err: AccountError) -> Self {
        let message = err.to_string();
        match err {
            AccountError::NotFound => plain(Code::NotFound, "ACCOUNT_NOT_FOUND", message),
            AccountError::NotConnected(_) => not_connected(message),
            AccountError::TokenRejected => failed_precondition(
                "CARDTRADER_TOKEN_REJECTED",
                "CARDTRADER_TOKEN",
                "cardtrader_token",
                message,
            ),
            AccountError::CardTraderAccountTaken => failed_precondition(
                "CARDTRADER_ACCOUNT_TAKEN",
                "CARDTRADER_ACCOUNT",
                "cardtrader_token",
                message,
            ),
            AccountError::EncryptionNotConfigured => failed_precondition(
                "ENCRYPTION_NOT_CONFIGURED",
                "SERVER_CONFIGURATION",
                "BRX_ENCRYPTION_KEYS",
                message,
            ),
            AccountError::TokenUnreadable(_) => failed_precondition(
                "STORED_TOKEN_UNREADABLE",
                "ACCOUNT",
                "user_id",
                "the stored CardTrader token cannot be decrypted with the configured keys: call ConnectAccount again",
            ),
            AccountError::CardTraderUnavailable(_) => unavailable(
                "CARDTRADER_UNAVAILABLE",
                "CardTrader is unavailable; retry shortly",
                CARDTRADER_RETRY_AFTER,
            ),
            AccountError::RateLimited(retry_after) => unavailable(
                "CARDTRADER_RATE_LIMITED",
                "the seller's CardTrader rate limit is used up; retry after the delay",
                retry_after,
            ),
            AccountError::Internal(cause) => internal("account operation failed", cause.as_ref()),
        }
    }
}

/// How long a caller should wait after CardTrader could not be reached (the breaker's pause is of
/// this order).
const CARDTRADER_RETRY_AFTER: Duration = Duration::from_secs(5);

impl From<SyncError> for Status {
    fn from(err: SyncError) -> Self {
        let message = err.to_string();
        match err {
            SyncError::NotConnected(_) => not_connected(message),
            SyncError::NotFound | SyncError::Jobs(JobError::NotFound) => {
                plain(Code::NotFound, "SYNC_NOT_FOUND", "no such sync")
            }
            SyncError::Jobs(JobError::QueueFull {
                lane, retry_after, ..
            }) => resource_exhausted(
                "QUEUE_FULL",
                &format!("the {lane} sync queue is full; retry after the delay"),
                retry_after,
            ),
            SyncError::Jobs(JobError::Contended) => plain(
                Code::Aborted,
                "CONTENDED",
                "the queued sync changed while joining it; retry",
            ),
            SyncError::Account(err) => err.into(),
            SyncError::Database(err) | SyncError::Jobs(JobError::Database(err)) => {
                internal("sync operation failed", &err)
            }
            other => internal("sync operation failed", &other),
        }
    }
}

impl From<JobError> for Status {
    fn from(err: JobError) -> Self {
        let message = err.to_string();
        match err {
            JobError::NotFound => plain(Code::NotFound, "JOB_NOT_FOUND", message),
            JobError::WrongState(_) => {
                failed_precondition("JOB_WRONG_STATE", "JOB_STATE", "job_id", message)
            }
            JobError::QueueFull {
                lane, retry_after, ..
            } => resource_exhausted(
                "QUEUE_FULL",
                &format!("the {lane} queue is full; retry after the delay"),
                retry_after,
            ),
            JobError::Database(err) => internal("job operation failed", &err),
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
        let message = err.to_string();
        match err {
            PurchaseError::InsufficientStock { product_id, .. } => failed_precondition(
                "INSUFFICIENT_STOCK",
                "STOCK",
                &format!("items/{product_id}"),
                message,
            ),
            PurchaseError::UnknownItem(product_id) => failed_precondition(
                "UNKNOWN_ITEM",
                "STOCK",
                &format!("items/{product_id}"),
                message,
            ),
            PurchaseError::NotConnected(_) => not_connected(message),
            PurchaseError::WrongState(_) => failed_precondition(
                "PURCHASE_WRONG_STATE",
                "PURCHASE_STATE",
                "purchase_id",
                message,
            ),
            PurchaseError::KeyConflict => {
                plain(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", message)
            }
            PurchaseError::NotFound => plain(Code::NotFound, "PURCHASE_NOT_FOUND", message),
            PurchaseError::QueueFull => {
                resource_exhausted("QUEUE_FULL", &message, Duration::from_millis(500))
            }
            PurchaseError::Database(err) => internal("purchase operation failed", &err),
            other => internal("purchase operation failed", &other),
        }
    }
}

impl From<InventoryError> for Status {
    fn from(err: InventoryError) -> Self {
        let message = err.to_string();
        match err {
            InventoryError::NotFound => plain(
                Code::NotFound,
                "ITEM_NOT_FOUND",
                "no such item for this seller",
            ),
            InventoryError::BelowReserved { .. } => {
                failed_precondition("BELOW_RESERVED", "STOCK", "quantity", message)
            }
            InventoryError::Reserved { .. } => {
                failed_precondition("ITEM_RESERVED", "STOCK", "item_id", message)
            }
            InventoryError::NotConnected(_) => not_connected(message),
            InventoryError::Accounts(err) => err.into(),
            InventoryError::Database(err) => internal("inventory operation failed", &err),
            other => internal("inventory operation failed", &other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhausted_carries_the_retry_hint() {
        let status = resource_exhausted("QUEUE_FULL", "busy", Duration::from_millis(250));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
    }

    fn reason_of(status: &Status) -> String {
        let details = status.get_error_details();
        let info = details.error_info().expect("every error carries ErrorInfo");
        assert_eq!(info.domain, DOMAIN);
        info.reason.clone()
    }

    #[test]
    fn retryable_answers_carry_retry_info_and_a_stable_reason() {
        for status in [
            resource_exhausted("QUEUE_FULL", "busy", Duration::from_millis(250)),
            unavailable("CACHE_UNAVAILABLE", "later", Duration::from_millis(250)),
        ] {
            let details = status.get_error_details();
            let retry = details.retry_info().expect("RetryInfo");
            assert_eq!(retry.retry_delay, Some(Duration::from_millis(250)));
            assert!(!reason_of(&status).is_empty());
        }
    }

    #[test]
    fn bad_input_names_each_field_in_a_bad_request() {
        let one = invalid_argument("user_id", "not a UUID");
        let details = one.get_error_details();
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "user_id");
        assert_eq!(violations[0].description, "not a UUID");
        assert_eq!(reason_of(&one), "INVALID_FIELD");

        let two = invalid_arguments("both", &[("a", "x"), ("b", "y")]);
        let fields: Vec<_> = two
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, ["a", "b"]);
    }

    #[test]
    fn a_seller_whose_token_was_rejected_is_told_to_connect_again() {
        let status = Status::from(SyncError::NotConnected(Some(
            crate::accounts::AccountStatus::TokenInvalid,
        )));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&status), "ACCOUNT_NOT_CONNECTED");
        assert!(
            status.message().contains("ConnectAccount again"),
            "{}",
            status.message()
        );
        let details = status.get_error_details();
        let violation = &details
            .precondition_failure()
            .expect("PreconditionFailure")
            .violations[0];
        assert_eq!(
            (violation.r#type.as_str(), violation.subject.as_str()),
            ("ACCOUNT", "user_id")
        );
    }

    #[test]
    fn a_database_outage_is_unavailable_with_a_retry_delay_never_internal() {
        for outage in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            let status = Status::from(PurchaseError::Database(outage));
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(reason_of(&status), "DATABASE_UNAVAILABLE");
            assert_eq!(
                status.get_error_details().retry_info().unwrap().retry_delay,
                Some(OUTAGE_RETRY_AFTER)
            );
        }
        let through_anyhow = Status::from(AccountError::Internal(anyhow::Error::from(
            sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(through_anyhow.code(), Code::Unavailable);
        let bug = Status::from(PurchaseError::Database(sqlx::Error::RowNotFound));
        assert_eq!(bug.code(), Code::Internal);
        assert_eq!(reason_of(&bug), "INTERNAL");
    }

    #[test]
    fn internal_hides_the_cause_from_the_caller() {
        let cause = std::io::Error::other("password=hunter2");
        let status = internal("test", &cause);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
