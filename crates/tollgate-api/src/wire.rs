//! How values cross the edge, in both directions, with their OpenAPI schemas.
//!
//! Money goes out as USD in a JSON number (as fal does) beside the exact integer nano-USD; the
//! conversion to a JSON number is the only place a binary float appears, at the very end of
//! rendering. Money comes in as a decimal string (a JSON number may be inexact), times as
//! RFC 3339 strings, in both directions.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::de::{self, Deserialize, Deserializer};
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use tollgate_core::money::MAX_AMOUNT;
use tollgate_core::{Nanos, Timestamp};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// An exact decimal (a USD amount, a quantity, a percent) rendered as a JSON number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Number(pub Decimal);

impl Number {
    /// The USD value of an amount of nano-USD.
    pub fn usd(n: Nanos) -> Number {
        Number(n.to_usd())
    }
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Shortest round-trip formatting reproduces any decimal of up to 15 significant
        // digits exactly, which covers every displayed price and amount below 1M USD at
        // nano-USD precision.
        s.serialize_f64(self.0.to_f64().unwrap_or_default())
    }
}

impl PartialSchema for Number {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::Number).into()
    }
}

impl ToSchema for Number {
    fn name() -> Cow<'static, str> {
        "Number".into()
    }
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-09-15T12:00:00.000Z`.
pub fn rfc3339(t: Timestamp) -> String {
    tollgate_core::time::rfc3339(t)
}

/// A time in an answer: RFC 3339 in UTC with milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time(pub Timestamp);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

impl PartialSchema for Time {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "An RFC 3339 time in UTC with milliseconds, e.g. `2026-09-15T12:00:00.000Z`.",
            ))
            .into()
    }
}

impl ToSchema for Time {
    fn name() -> Cow<'static, str> {
        "Timestamp".into()
    }
}

/// `#[serde(deserialize_with = "wire::time")]`: an RFC 3339 time with any offset.
pub fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let text = String::deserialize(d)?;
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|t| Timestamp(t.timestamp_millis()))
        .map_err(|e| de::Error::custom(format!("`{text}` is not an RFC 3339 time: {e}")))
}

/// `#[serde(default, deserialize_with = "wire::time_opt")]`: as [`time`], or `null`.
pub fn time_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    #[derive(serde::Deserialize)]
    struct T(#[serde(deserialize_with = "time")] Timestamp);
    Option::<T>::deserialize(d).map(|t| t.map(|T(t)| t))
}

/// `#[serde(deserialize_with = "wire::usd")]`: a USD amount as a decimal string, exactly, by
/// the core's decimal grammar, at most 9 decimals (a nano-USD), not negative, at most the
/// core's [`MAX_AMOUNT`]. A JSON number is refused: it may be inexact.
pub fn usd<'de, D: Deserializer<'de>>(d: D) -> Result<Nanos, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Nanos;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "a USD amount as a decimal string such as \"25.00\" (a JSON number may be inexact)",
            )
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Nanos, E> {
            parse_usd(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

/// A USD amount as [`usd`] reads it, from text (a form field): exactly, by the core's decimal
/// grammar, at most 9 decimals, not negative, at most the core's [`MAX_AMOUNT`]; `Err` says
/// why not.
pub fn parse_usd(text: &str) -> Result<Nanos, String> {
    let n = Nanos::parse_usd(text).map_err(|e| e.to_string())?;
    if n > MAX_AMOUNT {
        return Err(format!(
            "{text} USD exceeds the largest amount accepted ({MAX_AMOUNT})"
        ));
    }
    Ok(n)
}

/// `#[serde(deserialize_with = "wire::signed_usd")]`: as [`usd`], with an optional leading
/// `-`, at most the core's [`MAX_AMOUNT`] either way.
pub fn signed_usd<'de, D: Deserializer<'de>>(d: D) -> Result<Nanos, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Nanos;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "a signed USD amount as a decimal string such as \"-2.50\" (a JSON number may \
                 be inexact)",
            )
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Nanos, E> {
            let n = Nanos::parse_signed_usd(v).map_err(E::custom)?;
            if n.0.unsigned_abs() > MAX_AMOUNT.0.unsigned_abs() {
                return Err(E::custom(format!(
                    "{v} USD exceeds the largest amount accepted ({MAX_AMOUNT} either way)"
                )));
            }
            Ok(n)
        }
    }
    d.deserialize_str(V)
}

/// The schema of [`signed_usd`]: `SignedUsdString`.
pub struct SignedUsdString;

impl PartialSchema for SignedUsdString {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^-?[0-9]+(\\.[0-9]{1,9})?$"))
            .description(Some(
                "A signed USD amount as a decimal string of plain digits with an optional \
                 leading `-` and at most 9 decimal places (nano-USD precision), at most 1000000 \
                 either way, e.g. `\"-2.50\"`. JSON numbers are refused: they may be inexact.",
            ))
            .examples(["-2.50"])
            .into()
    }
}

impl ToSchema for SignedUsdString {
    fn name() -> Cow<'static, str> {
        "SignedUsdString".into()
    }
}

/// The schema of [`usd`]: `UsdString`.
pub struct UsdString;

impl PartialSchema for UsdString {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9]+(\\.[0-9]{1,9})?$"))
            .description(Some(
                "A non-negative USD amount as a decimal string of plain digits with at most 9 \
                 decimal places (nano-USD precision), at most 1000000, e.g. `\"25.00\"`. JSON \
                 numbers are refused: they may be inexact.",
            ))
            .examples(["25.00"])
            .into()
    }
}

impl ToSchema for UsdString {
    fn name() -> Cow<'static, str> {
        "UsdString".into()
    }
}

/// `#[serde(deserialize_with = "wire::status")]`: a final HTTP status, 200 to 599 (the core's
/// rule, [`tollgate_core::policy::final_status`]).
pub fn status<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let code = u16::deserialize(d)?;
    tollgate_core::policy::final_status(code).map_err(de::Error::custom)
}

/// `#[serde(default, deserialize_with = "wire::num_gpus")]`: GPUs of a request, 1 to 64 (the
/// core's rule, [`tollgate_core::machine::num_gpus_in_range`]), or absent.
pub fn num_gpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u32>::deserialize(d)?
        .map(|n| tollgate_core::machine::num_gpus_in_range(n).map_err(de::Error::custom))
        .transpose()
}

/// `#[serde(deserialize_with = "wire::gpus")]`: as [`num_gpus`], required.
pub fn gpus<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    tollgate_core::machine::num_gpus_in_range(n).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Amount {
        #[serde(deserialize_with = "usd")]
        v: Nanos,
    }

    #[test]
    fn usd_amounts_are_plain_decimal_strings() {
        let v = |s: &str| serde_json::from_str::<Amount>(s).map(|a| a.v);
        assert_eq!(v(r#"{"v": "25.00"}"#).unwrap(), Nanos(25_000_000_000));
        assert_eq!(v(r#"{"v": "1000000"}"#).unwrap().0, 1_000_000_000_000_000);
        for bad in [
            r#"{"v": 25}"#,
            r#"{"v": "1_0"}"#,
            r#"{"v": "1e3"}"#,
            r#"{"v": "+5"}"#,
            r#"{"v": "-5"}"#,
            r#"{"v": "1000000.01"}"#,
            r#"{"v": "0.0000000001"}"#,
        ] {
            assert!(v(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_render_in_utc_with_milliseconds() {
        assert_eq!(
            rfc3339(Timestamp(1_757_937_600_123)),
            "2025-09-15T12:00:00.123Z"
        );
    }
}
