//! How a CardTrader call can fail, classified by what the caller can do about it.

use std::time::Duration;

use crate::rate_limit::Scope;

/// A failed CardTrader call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MarketplaceError {
    /// CardTrader answered 429, or our own limiter had no token before the deadline.
    #[error("rate limited on {scope:?} (retry in {retry_after:?})")]
    RateLimited {
        /// The limit that was hit.
        scope: Scope,
        /// How long until a call may succeed.
        retry_after: Duration,
    },
    /// 401: the seller's token is invalid or revoked.
    #[error("CardTrader rejected the token")]
    Unauthorized,
    /// 404: no such product, job or resource (or another seller's).
    #[error("not found on CardTrader: {message}")]
    NotFound {
        /// CardTrader's message.
        message: String,
    },
    /// 4xx with CardTrader's validation details.
    #[error("CardTrader refused the request ({code}): {message}")]
    Validation {
        /// `error_code`, e.g. `validation_error`, `missing_parameter`.
        code: String,
        /// Human message.
        message: String,
        /// Field errors, as CardTrader sent them (`{field: [msg]}` or `[]`).
        errors: serde_json::Value,
    },
    /// 5xx, an HTML error page, a refused connection, an unreadable answer, or the breaker is open.
    #[error("CardTrader unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
    },
    /// No answer in time. For a call that changes data the outcome is unknown: it may have applied.
    #[error("CardTrader did not answer in time")]
    Timeout,
    /// The caller stopped the call before it was sent (its job lost its lease): nothing went out.
    #[error("the call was stopped before it was sent")]
    Cancelled,
}

impl MarketplaceError {
    /// Whether repeating an idempotent call may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MarketplaceError::RateLimited { .. }
                | MarketplaceError::Unavailable { .. }
                | MarketplaceError::Timeout
        )
    }

    /// Whether the failure says CardTrader itself is unhealthy (feeds the circuit breaker).
    pub(crate) fn is_host_failure(&self) -> bool {
        matches!(
            self,
            MarketplaceError::Unavailable { .. } | MarketplaceError::Timeout
        )
    }
}

/// The message of an HTML error page: the text of its first `<p>`, else a fixed description.
pub(crate) fn html_message(body: &str) -> String {
    let paragraph = body
        .split_once("<p>")
        .and_then(|(_, rest)| rest.split_once("</p>"))
        .map(|(text, _)| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    paragraph.unwrap_or_else(|| "an HTML error page".to_owned())
}

/// Which limit a 429 body names: "per 10 seconds" is the general one, "per second" the endpoint's.
pub(crate) fn scope_of_429(body: &str, call_scope: Scope) -> Scope {
    if body.contains("10 seconds") {
        Scope::General
    } else if body.contains("per second") {
        call_scope
    } else {
        Scope::General
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_of_an_html_page_is_its_first_paragraph() {
        let page = "<!DOCTYPE html><html><body><h1>Oops</h1><p>We're sorry, but something went wrong.</p></body></html>";
        assert_eq!(html_message(page), "We're sorry, but something went wrong.");
        assert_eq!(html_message("<html></html>"), "an HTML error page");
    }

    #[test]
    fn a_429_body_names_its_scope() {
        assert_eq!(
            scope_of_429(
                r#"{"error":"Too many requests: max 200 requests per 10 seconds"}"#,
                Scope::Marketplace
            ),
            Scope::General
        );
        assert_eq!(
            scope_of_429(
                r#"{"error":"Too many requests: max 10 requests per second"}"#,
                Scope::Marketplace
            ),
            Scope::Marketplace
        );
        assert_eq!(
            scope_of_429(
                r#"{"error":"Too many requests: max 1 request per second"}"#,
                Scope::Jobs
            ),
            Scope::Jobs
        );
    }
}
