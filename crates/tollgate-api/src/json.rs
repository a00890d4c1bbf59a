//! Request bodies: one JSON object, read strictly.
//!
//! `serde_json` reads more than a money-moving API should accept: a struct from a JSON array,
//! by position (`[50]` as `{"percent_discount": 50}`), and the last of two equal keys. So a body
//! is read in two steps. First it is parsed into a JSON tree that refuses a duplicate key at
//! any depth and anything after the value (`{...} trailing-garbage`); its top level must be an
//! object. Then the request type is deserialized from that tree by a deserializer that gives
//! a struct only a JSON object, never an array, and names the path of anything refused
//! (`output.images[0].width`). Everything else is the request type's own serde rules
//! (`deny_unknown_fields`, the core's decimal grammar, the ids' syntax).

use crate::error::ApiError;
use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Parses `body` as one JSON object into `T`, or answers a 400 naming where it went wrong.
pub fn from_slice<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::validation(
            "the request body is empty; a JSON object is expected",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let UniqueKeys(tree) = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match duplicate_key(&inner) {
            Some(key) => {
                let field = if path == "." {
                    key
                } else {
                    format!("{path}.{key}")
                };
                ApiError::invalid(
                    &field,
                    format!("invalid JSON body: `{field}` is given twice"),
                )
            }
            None => ApiError::validation(format!("invalid JSON body: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))?;
    if !tree.is_object() {
        return Err(ApiError::validation(
            "the request body must be a JSON object (`{...}`)",
        ));
    }
    serde_path_to_error::deserialize(Node(&tree)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = |name: &str| match path.as_str() {
            "" | "." => name.to_string(),
            parent => format!("{parent}.{name}"),
        };
        // A missing field is named by serde's message, at the object's path (an unknown
        // field's path already ends with it, except in a flattened struct, which is read as a
        // whole and named at its object).
        match missing_field(&inner.to_string()) {
            Some(name) => ApiError::invalid(at(&name), format!("invalid JSON body: {inner}")),
            None if path.is_empty() || path == "." => {
                ApiError::validation(format!("invalid JSON body: {inner}"))
            }
            None => ApiError::invalid(&path, format!("invalid JSON body at `{path}`: {inner}")),
        }
    })
}

/// The field a `missing field `x`` message of serde names.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(name, _)| name.to_string())
}

const DUPLICATE: &str = "duplicate key `";

/// The key named by a duplicate-key error of [`UniqueKeys`].
fn duplicate_key(e: &serde_json::Error) -> Option<String> {
    let text = e.to_string();
    let rest = text.strip_prefix(DUPLICATE)?;
    rest.split_once('`').map(|(key, _)| key.to_string())
}

/// A JSON tree whose objects have no key twice.
struct UniqueKeys(Value);

impl<'de> de::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("{DUPLICATE}{key}`")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A deserializer over a parsed JSON tree that gives a struct only an object.
#[derive(Clone, Copy)]
struct Node<'a>(&'a Value);

impl<'a> IntoDeserializer<'a, serde_json::Error> for Node<'a> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for Node<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Node));
                let v = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(v)
            }
            Value::Object(map) => {
                let mut m = MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Node(v))));
                let v = visitor.visit_map(&mut m)?;
                m.end()?;
                Ok(v)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // Request enums are names (`"prepaid"`, `"megapixel"`): only a string is one. (An
        // object such as `{"prepaid": null}` would read as the same variant.)
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct identifier ignored_any
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => de::Unexpected::Unsigned(u),
            (_, Some(i)) => de::Unexpected::Signed(i),
            _ => de::Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        width: u64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default, deserialize_with = "tollgate_core::decimal::de_opt")]
        amount: Option<Decimal>,
        #[serde(default)]
        map: std::collections::BTreeMap<String, u32>,
    }

    fn field(r: Result<Body, ApiError>) -> Option<String> {
        let e = r.expect_err("refused");
        assert_eq!(e.kind, "validation_error");
        e.extra
            .get("field")
            .map(|f| f.as_str().expect("text").to_string())
    }

    #[test]
    fn an_object_is_read_with_its_nested_values() {
        let b: Body = from_slice(
            br#" {"name": "a", "items": [{"width": 3}], "amount": "1.50", "map": {"k": 1}} "#,
        )
        .unwrap();
        assert_eq!(b.items, vec![Inner { width: 3 }]);
        assert_eq!(b.amount, Some(Decimal::new(150, 2)));
        assert_eq!(b.map["k"], 1);
    }

    #[test]
    fn arrays_never_stand_for_objects() {
        for body in [
            &br#"["a"]"#[..],
            br#"["a", [], "1"]"#,
            br#""a""#,
            br#"5"#,
            br#"null"#,
        ] {
            let e = from_slice::<Body>(body).expect_err("refused");
            assert!(e.message.contains("JSON object"), "{}", e.message);
        }
        assert_eq!(
            field(from_slice(br#"{"name": "a", "items": [[3]]}"#)).as_deref(),
            Some("items[0]")
        );
    }

    #[test]
    fn nothing_may_follow_the_object() {
        for body in [
            &br#"{"name": "a"} trailing-garbage"#[..],
            br#"{"name": "a"}{"name": "b"}"#,
            br#"{"name": "a"},"#,
        ] {
            let e = from_slice::<Body>(body).expect_err("refused");
            assert!(e.message.contains("trailing"), "{}", e.message);
        }
        assert!(from_slice::<Body>(b"{\"name\": \"a\"}\n\t ").is_ok());
    }

    #[test]
    fn a_key_given_twice_is_named() {
        assert_eq!(
            field(from_slice(br#"{"name": "a", "name": "b"}"#)).as_deref(),
            Some("name")
        );
        assert_eq!(
            field(from_slice(br#"{"name": "a", "map": {"k": 1, "k": 2}}"#)).as_deref(),
            Some("map.k")
        );
        assert_eq!(
            field(from_slice(
                br#"{"name": "a", "items": [{"width": 1}, {"width": 1, "width": 2}]}"#
            ))
            .as_deref(),
            Some("items[1].width")
        );
    }

    #[test]
    fn refusals_name_their_path() {
        assert_eq!(
            field(from_slice(
                br#"{"name": "a", "items": [{"width": "wide"}]}"#
            ))
            .as_deref(),
            Some("items[0].width")
        );
        assert_eq!(
            field(from_slice(br#"{"name": "a", "amount": "1e3"}"#)).as_deref(),
            Some("amount")
        );
        assert_eq!(
            field(from_slice(br#"{"name": 5}"#)).as_deref(),
            Some("name")
        );
        assert_eq!(
            field(from_slice(br#"{"name": "a", "extra": 1}"#)).as_deref(),
            Some("extra")
        );
        assert_eq!(
            field(from_slice(
                br#"{"name": "a", "items": [{"width": 1, "depth": 2}]}"#
            ))
            .as_deref(),
            Some("items[0].depth")
        );
        assert_eq!(field(from_slice(br#"{}"#)).as_deref(), Some("name"));
        let e = from_slice::<Body>(b"").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = from_slice::<Body>(br#"{"name": "#).unwrap_err();
        assert!(e.message.contains("JSON"), "{}", e.message);
    }
}
