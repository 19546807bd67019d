//! Request fields every service parses the same way: seller ids, page sizes, keyset page tokens.

use base64::Engine;
use chrono::{DateTime, Utc};
use tonic::Status;
use uuid::Uuid;

use super::status;
use crate::domain::UserId;

/// The `user_id` field as a seller id.
pub(crate) fn user_id(raw: &str) -> Result<UserId, Status> {
    UserId::parse(raw).map_err(|err| status::invalid_argument("user_id", err))
}

/// The `page_size` field: 1..=100, 0 meaning the default of 20.
pub(crate) fn page_size(raw: u32) -> Result<i64, Status> {
    match raw {
        0 => Ok(20),
        size @ 1..=100 => Ok(i64::from(size)),
        _ => Err(status::invalid_argument(
            "page_size",
            "must be between 1 and 100",
        )),
    }
}

/// The (created_at, id) position a page token from [`encode_page_token`] names.
pub(crate) fn page_token(raw: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    let invalid = || status::invalid_argument("page_token", "not a token from a previous page");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (micros, id) = text.split_once('/').ok_or_else(invalid)?;
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let at = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    Ok(Some((at, Uuid::try_parse(id).map_err(|_| invalid())?)))
}

/// A token for the page after the row created at `at` with `id`, in newest-first order.
pub(crate) fn encode_page_token(at: DateTime<Utc>, id: Uuid) -> String {
    let raw = format!("{}/{}", at.timestamp_micros(), id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}
