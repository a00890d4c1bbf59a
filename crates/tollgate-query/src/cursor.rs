//! Keyset paging with opaque cursors.
//!
//! A cursor is the base64url (no padding) of the JSON of the last key a page showed: opaque,
//! so clients cannot depend on the key's shape, and JSON, so the key can be any serde type.
//! A read resumes strictly after the key, so a page never repeats or skips an item while new
//! ones arrive.

use crate::QueryError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A position in a paged list, as the previous page's `next_cursor` gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    /// A cursor as a caller sent it; it is checked when a read decodes it.
    pub fn new(text: impl Into<String>) -> Cursor {
        Cursor(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn encode<K: Serialize>(key: &K) -> Cursor {
        // Cursor keys are plain structs and tuples of strings and numbers, which serialize.
        let json = serde_json::to_vec(key).expect("cursor keys serialize to JSON");
        Cursor(URL_SAFE_NO_PAD.encode(json))
    }

    /// The key this cursor holds; anything malformed (not base64url, not JSON, not the shape
    /// this read writes) is [`QueryError::BadCursor`].
    pub(crate) fn decode<K: DeserializeOwned>(&self) -> Result<K, QueryError> {
        URL_SAFE_NO_PAD
            .decode(self.0.trim())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(QueryError::BadCursor)
    }

    /// [`Cursor::decode`] of an optional cursor.
    pub(crate) fn key<K: DeserializeOwned>(
        cursor: Option<&Cursor>,
    ) -> Result<Option<K>, QueryError> {
        cursor.map(Cursor::decode).transpose()
    }
}

/// One page of a list, and the cursor of the next page when more follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<Cursor>,
}

impl<T> Page<T> {
    /// The first `limit` of `items` (already in order and after the request's cursor); the next
    /// cursor holds `key` of the last item shown, when more follow.
    pub(crate) fn of<K: Serialize>(
        items: impl IntoIterator<Item = T>,
        limit: usize,
        key: impl Fn(&T) -> K,
    ) -> Page<T> {
        let mut items: Vec<T> = items.into_iter().take(limit.saturating_add(1)).collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = match items.last() {
            Some(last) if more => Some(Cursor::encode(&key(last))),
            _ => None,
        };
        Page { items, next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let key = ("fal-ai/flux/dev".to_string(), 1_736_899_200_000_i64);
        let c = Cursor::encode(&key);
        assert!(c
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(c.decode::<(String, i64)>().unwrap(), key);
        for bad in ["!!!", "bm90IGpzb24", "", "eyJhIjoxfQ=="] {
            assert!(matches!(
                Cursor::new(bad).decode::<(String, i64)>(),
                Err(QueryError::BadCursor)
            ));
        }
        // Valid JSON of the wrong shape is malformed too.
        let other = Cursor::encode(&serde_json::json!({"page": 2}));
        assert!(other.decode::<(String, i64)>().is_err());
    }

    #[test]
    fn a_page_takes_its_limit_and_points_after_its_last_item() {
        let p = Page::of(1..=5, 2, |i| *i);
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(p.next_cursor.unwrap().decode::<i32>().unwrap(), 2);
        let last = Page::of(1..=2, 2, |i| *i);
        assert_eq!((last.items.len(), last.next_cursor), (2, None));
    }
}
