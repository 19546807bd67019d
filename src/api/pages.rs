//! One pagination for every List RPC: `page_size` checked against the RPC's bounds, and an opaque
//! keyset token naming the last row of the previous page (its sort key, `/`-joined, base64url).
//! Keyset rather than offset: rows written between two pages never shift or repeat a page.

use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::fields::FieldCheck;

/// The page sizes an RPC accepts, and what 0 (not given) means.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageBounds {
    /// Size of a page when the caller gives none.
    pub(crate) default: i64,
    /// Largest page.
    pub(crate) max: i64,
}

/// ListSyncs, ListPurchases, ListDeadJobs: records with a history behind them.
pub(crate) const RECORD_PAGES: PageBounds = PageBounds {
    default: 20,
    max: 100,
};

/// ListInventory, ListOffers: item rows, cheap to read in bulk.
pub(crate) const ITEM_PAGES: PageBounds = PageBounds {
    default: 100,
    max: 500,
};

/// A row's sort key, as a page token carries it.
pub(crate) trait PageKey: Sized {
    /// The key's parts, each without `/`.
    fn to_parts(&self) -> Vec<String>;
    /// The key from its parts; `None` if they are not a key of this shape.
    fn from_parts(parts: &[&str]) -> Option<Self>;
}

/// Product id order (ListInventory).
impl PageKey for i64 {
    fn to_parts(&self) -> Vec<String> {
        vec![self.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [id] => id.parse().ok(),
            _ => None,
        }
    }
}

/// Newest-first order of records: (created or ended at, id).
impl PageKey for (DateTime<Utc>, Uuid) {
    fn to_parts(&self) -> Vec<String> {
        vec![self.0.timestamp_micros().to_string(), self.1.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [micros, id] => Some((
                DateTime::from_timestamp_micros(micros.parse().ok()?)?,
                Uuid::try_parse(id).ok()?,
            )),
            _ => None,
        }
    }
}

/// Cheapest-first order of offers: (price, seller, product).
impl PageKey for (i64, Uuid, i64) {
    fn to_parts(&self) -> Vec<String> {
        vec![self.0.to_string(), self.1.to_string(), self.2.to_string()]
    }

    fn from_parts(parts: &[&str]) -> Option<Self> {
        match parts {
            [price, user, product] => Some((
                price.parse().ok()?,
                Uuid::try_parse(user).ok()?,
                product.parse().ok()?,
            )),
            _ => None,
        }
    }
}

/// A checked page request: how many rows, after which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageRequest<K> {
    /// Rows to return at most.
    pub(crate) size: i64,
    /// The last row of the previous page; `None` for the first page.
    pub(crate) after: Option<K>,
}

impl<K: PageKey> PageRequest<K> {
    /// From the request's `page_size` and `page_token`; a bad one is recorded in `check` against its
    /// field (and the default stands in for it, so the other fields are still checked).
    pub(crate) fn parse(
        check: &mut FieldCheck,
        page_size: impl Into<i64>,
        page_token: &str,
        bounds: PageBounds,
    ) -> Self {
        let size = match page_size.into() {
            0 => bounds.default,
            size if (1..=bounds.max).contains(&size) => size,
            _ => {
                check.reject("page_size", format!("must be between 1 and {}", bounds.max));
                bounds.default
            }
        };
        let after = decode(page_token).unwrap_or_else(|| {
            check.reject("page_token", "not a token from a previous page");
            None
        });
        Self { size, after }
    }

    /// The token of the page after `rows`: empty when `rows` is the last page (shorter than asked).
    /// `key` gives a row's sort key.
    pub(crate) fn next_token<T>(&self, rows: &[T], key: impl FnOnce(&T) -> Option<K>) -> String {
        match rows.last() {
            Some(last) if rows.len() as i64 == self.size => {
                key(last).map_or_else(String::new, encode)
            }
            _ => String::new(),
        }
    }
}

fn encode<K: PageKey>(key: K) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.to_parts().join("/"))
}

/// The key in `raw`: `Some(None)` for no token (the first page), `None` for one that is not ours.
fn decode<K: PageKey>(raw: &str) -> Option<Option<K>> {
    if raw.is_empty() {
        return Some(None);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let parts: Vec<&str> = text.split('/').collect();
    K::from_parts(&parts).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page request parsed on its own, as a handler's checked fields would end.
    fn parse<K: PageKey>(
        page_size: i64,
        page_token: &str,
        bounds: PageBounds,
    ) -> Result<PageRequest<K>, tonic::Status> {
        let mut check = FieldCheck::default();
        let page = PageRequest::parse(&mut check, page_size, page_token, bounds);
        check.finish_with(Some(page))
    }

    #[test]
    fn every_key_shape_round_trips_through_its_token() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        let record: PageRequest<(DateTime<Utc>, Uuid)> =
            parse(0, &encode((at, id)), RECORD_PAGES).unwrap();
        assert_eq!(record.after, Some((at, id)));
        assert_eq!(record.size, 20);
        let offer: PageRequest<(i64, Uuid, i64)> =
            parse(7, &encode((250, id, 9)), ITEM_PAGES).unwrap();
        assert_eq!(offer.after, Some((250, id, 9)));
        let item: PageRequest<i64> = parse(500, &encode(42), ITEM_PAGES).unwrap();
        assert_eq!(item.after, Some(42));
    }

    #[test]
    fn a_token_of_another_shape_or_garbage_is_refused_naming_the_field() {
        for token in ["%%%", &encode(42), &encode((1, Uuid::nil(), 2))] {
            let err = parse::<(DateTime<Utc>, Uuid)>(0, token, RECORD_PAGES).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with("page_token"), "{}", err.message());
        }
    }

    #[test]
    fn a_page_size_out_of_bounds_is_refused_naming_the_field() {
        for size in [-1, 101] {
            let err = parse::<i64>(size, "", RECORD_PAGES).unwrap_err();
            assert!(err.message().starts_with("page_size"), "{}", err.message());
        }
    }

    #[test]
    fn a_bad_size_and_a_bad_token_are_both_named() {
        let err = parse::<i64>(-1, "%%%", RECORD_PAGES).unwrap_err();
        assert!(
            err.message().starts_with("2 problems: page_size:"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn only_a_full_page_has_a_next_token() {
        let request = PageRequest::<i64> {
            size: 2,
            after: None,
        };
        assert_eq!(request.next_token(&[1_i64], |row| Some(*row)), "");
        let token = request.next_token(&[1_i64, 2], |row| Some(*row));
        assert_eq!(decode::<i64>(&token), Some(Some(2)));
    }
}
