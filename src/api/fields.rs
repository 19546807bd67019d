//! Request fields every service parses the same way, and [`FieldCheck`], which gathers every bad
//! field of a request into one answer (paging is in [`super::pages`]).

use std::fmt::Display;

use tonic::{Request, Status};
use uuid::Uuid;

use super::{auth, status};
use crate::domain::UserId;

/// The `user_id` field as a seller id, for requests that carry nothing else to check.
pub(crate) fn user_id(raw: &str) -> Result<UserId, Status> {
    UserId::parse(raw).map_err(|err| status::invalid_argument("user_id", err))
}

/// A UUID field (purchase and job ids), surrounding spaces forgiven.
pub(crate) fn uuid(raw: &str) -> Result<Uuid, &'static str> {
    Uuid::try_parse(raw.trim()).map_err(|_| "must be a UUID")
}

/// The bad fields of one request, gathered so that a caller hears about all of them in one answer
/// (one `BadRequest` field violation each) instead of fixing them one round trip at a time.
///
/// A check that fails records a violation and hands back `None` (or nothing), so the handler goes
/// on checking the other fields; [`FieldCheck::finish`] turns what was recorded into the answer.
#[derive(Debug, Default)]
#[must_use = "a FieldCheck reports nothing until finish() is called"]
pub(crate) struct FieldCheck {
    /// `(field paths, description)`, in the order the fields were checked: usually one field, several
    /// when one description covers them together (e.g. "give at least one of these").
    violations: Vec<(Vec<String>, String)>,
}

impl FieldCheck {
    /// Records `field` as bad, with a description of what it must be.
    pub(crate) fn reject(&mut self, field: impl Into<String>, description: impl Display) {
        self.violations
            .push((vec![field.into()], description.to_string()));
    }

    /// Records each of `fields` as bad for one reason they share: one violation per field, the
    /// reason told once in the message.
    pub(crate) fn reject_together(&mut self, fields: &[&str], description: impl Display) {
        let fields = fields.iter().map(|field| (*field).to_owned()).collect();
        self.violations.push((fields, description.to_string()));
    }

    /// Records `field` as bad unless `holds`; answers `holds`.
    pub(crate) fn require(&mut self, holds: bool, field: &str, description: impl Display) -> bool {
        if !holds {
            self.reject(field, description);
        }
        holds
    }

    /// The parsed value of `field`, or `None` with the parse error recorded against `field`.
    pub(crate) fn take<T, E: Display>(&mut self, field: &str, parsed: Result<T, E>) -> Option<T> {
        parsed.map_err(|err| self.reject(field, err)).ok()
    }

    /// The `user_id` field; once it parses, the caller must be allowed to act for that seller, and a
    /// caller who is not hears PERMISSION_DENIED before any other field is judged.
    pub(crate) fn seller<T>(
        &mut self,
        request: &Request<T>,
        raw: &str,
    ) -> Result<Option<UserId>, Status> {
        let user_id = self.take("user_id", UserId::parse(raw));
        if let Some(user_id) = user_id {
            auth::require_user(request, user_id)?;
        }
        Ok(user_id)
    }

    /// `Ok` when every field was good; otherwise INVALID_ARGUMENT with one `BadRequest` violation
    /// per bad field, and a message that lists them all.
    pub(crate) fn finish(self) -> Result<(), Status> {
        let listed: Vec<String> = self
            .violations
            .iter()
            .map(|(fields, description)| format!("{}: {description}", fields.join(", ")))
            .collect();
        let message = match listed.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            all => format!("{} problems: {}", all.len(), all.join("; ")),
        };
        let violations: Vec<(&str, &str)> = self
            .violations
            .iter()
            .flat_map(|(fields, description)| {
                fields
                    .iter()
                    .map(move |field| (field.as_str(), description.as_str()))
            })
            .collect();
        Err(status::invalid_arguments(message, &violations))
    }

    /// `value` when every field was good. `value` must be `None` only where a check failed, and
    /// so recorded a violation; a `None` without one would be a bug here, answered as INTERNAL.
    pub(crate) fn finish_with<T>(self, value: Option<T>) -> Result<T, Status> {
        self.finish()?;
        value.ok_or_else(|| {
            let bug = std::io::Error::other("a request check lost a value without recording why");
            status::internal("checking the request", &bug)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn every_bad_field_is_one_violation_in_the_order_checked() {
        let mut check = FieldCheck::default();
        check.require(false, "price_cents", "must be at least 1");
        check.require(true, "quantity", "must be at least 1");
        assert_eq!(check.take("user_id", UserId::parse("nope")), None);
        let err = check.finish().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let details = err.get_error_details();
        let fields: Vec<&str> = details
            .bad_request()
            .expect("BadRequest")
            .field_violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(fields, ["price_cents", "user_id"]);
        assert!(err.message().starts_with("2 problems: price_cents:"));
    }

    #[test]
    fn one_bad_field_reads_as_before_and_a_clean_check_hands_back_the_value() {
        let mut check = FieldCheck::default();
        check.reject("quantity", "must be at least 1");
        assert_eq!(
            check.finish().unwrap_err().message(),
            "quantity: must be at least 1"
        );
        assert_eq!(FieldCheck::default().finish_with(Some(7)).unwrap(), 7);
        let mut check = FieldCheck::default();
        check.reject_together(&["price_cents", "quantity"], "give at least one");
        let err = check.finish().unwrap_err();
        assert_eq!(err.message(), "price_cents, quantity: give at least one");
        let details = err.get_error_details();
        assert_eq!(
            details
                .bad_request()
                .expect("BadRequest")
                .field_violations
                .len(),
            2
        );
    }
}
