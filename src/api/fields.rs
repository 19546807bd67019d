//! Request fields every service parses the same way (paging is in [`super::pages`]).

use tonic::Status;

use super::status;
use crate::domain::UserId;

/// The `user_id` field as a seller id.
pub(crate) fn user_id(raw: &str) -> Result<UserId, Status> {
    UserId::parse(raw).map_err(|err| status::invalid_argument("user_id", err))
}
