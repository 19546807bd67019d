//! Identifiers parsed once at the edge, so the code behind it never sees a malformed one.

use std::fmt;

use uuid::Uuid;

/// A seller of the shop: the UUID the shop's user service gave them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UserId(Uuid);

/// An identifier that did not parse; carries the reason for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(String);

impl UserId {
    /// Parses a user id as sent by a caller: a hyphenated UUID, not nil.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let uuid =
            Uuid::try_parse(raw.trim()).map_err(|_| InvalidId(format!("'{raw}' is not a UUID")))?;
        Self::from_uuid(uuid)
    }

    /// Wraps a UUID that came from storage or a verified token; refuses the nil UUID.
    pub fn from_uuid(uuid: Uuid) -> Result<Self, InvalidId> {
        if uuid.is_nil() {
            return Err(InvalidId("the nil UUID is not a user id".into()));
        }
        Ok(Self(uuid))
    }

    /// The underlying UUID, for storage.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A CardTrader blueprint (a printing of a card, as CardTrader catalogues it): a positive integer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct BlueprintId(i64);

impl BlueprintId {
    /// Accepts positive ids only.
    pub fn new(raw: i64) -> Result<Self, InvalidId> {
        if raw <= 0 {
            return Err(InvalidId(format!(
                "{raw} is not a blueprint id (must be positive)"
            )));
        }
        Ok(Self(raw))
    }

    /// The raw id, for storage and CardTrader calls.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for BlueprintId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hyphenated_uuid_parses_and_round_trips() {
        let raw = "0b5c1a0e-7f3e-4d7e-9a51-6a0f3c2b9d11";
        assert_eq!(UserId::parse(raw).unwrap().to_string(), raw);
    }

    #[test]
    fn blueprint_ids_are_positive() {
        assert_eq!(BlueprintId::new(7).unwrap().get(), 7);
        assert!(BlueprintId::new(0).is_err());
        assert!(BlueprintId::new(-3).is_err());
    }

    #[test]
    fn garbage_and_the_nil_uuid_are_refused() {
        assert!(UserId::parse("seller-1").is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("00000000-0000-0000-0000-000000000000").is_err());
    }
}
