//! Exact decimals as people write them, one grammar for every decimal tollgate reads: in an
//! HTTP body, in a catalog, in a stored price rule.
//!
//! A decimal is written as plain digits with an optional fraction and an optional leading
//! minus: `25`, `0.025`, `-3.5`. Nothing else: no `+`, no exponent (`1e3`), no digit
//! separators (`1_0`), no surrounding spaces, no leading or trailing point (`.5`, `5.`). Those
//! spellings are what lenient parsers accept and what a typo or a hostile client produces, and a
//! money amount must never be read as something its writer did not see.
//!
//! An integer number (JSON or TOML) is accepted wherever a decimal is. A fractional JSON number
//! is a binary float: it is accepted for quantities ([`de`]: seconds, units), read through its
//! shortest decimal text and refused when that text has more than 15 significant digits (a
//! float holds no more exactly), but refused for prices, percents and amounts ([`de_text`]), as
//! the catalog refuses TOML floats: a float can round away digits without a trace
//! (`1.00000000000000001` reads as 1), so exact values are written as decimal strings.
//!
//! Whether a value may be negative is a rule of the field that takes it (a price must not be,
//! an adjustment may), checked where the field is validated, so its message can name the field.

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// The grammar, as a regular expression (for documents that describe it).
pub const PATTERN: &str = "^-?[0-9]+(\\.[0-9]+)?$";

/// Why a text is not a decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("`{0}` is not a decimal: write plain digits with an optional point, such as \"25\" or \"0.025\"")]
    Syntax(String),
    #[error("`{0}` has more digits than an exact decimal holds (28)")]
    TooLong(String),
}

/// Parses `text` by the grammar of the module documentation, exactly.
pub fn parse(text: &str) -> Result<Decimal, DecimalError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return Err(DecimalError::Syntax(text.to_string()));
    }
    Decimal::from_str_exact(text).map_err(|_| DecimalError::TooLong(text.to_string()))
}

/// The most significant digits a JSON number may carry: a binary float holds any decimal of
/// this many exactly, so its shortest text is what the client wrote.
pub const MAX_NUMBER_DIGITS: usize = 15;

/// A number read from JSON (a binary float) as the decimal its shortest text spells (`0.1` is
/// 0.1, not 0.1000000000000000055...), when that is surely what was written: at most
/// [`MAX_NUMBER_DIGITS`] significant digits. Rust prints floats without exponents, so the text
/// is plain.
pub fn from_number(v: f64) -> Result<Decimal, String> {
    if !v.is_finite() {
        return Err("not a finite number".into());
    }
    let text = format!("{v}");
    let digits = text
        .trim_start_matches('-')
        .replace('.', "")
        .trim_start_matches('0')
        .trim_end_matches('0')
        .len();
    if digits > MAX_NUMBER_DIGITS {
        return Err(format!(
            "{text} has more than {MAX_NUMBER_DIGITS} significant digits, which a JSON number \
             may not hold exactly: write it as a decimal string"
        ));
    }
    parse(&text).map_err(|_| format!("{text} has more digits than an exact decimal holds"))
}

/// Reads a decimal; `floats` says whether a fractional JSON number is accepted.
struct Plain {
    floats: bool,
}

impl Visitor<'_> for Plain {
    type Value = Decimal;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.floats {
            f.write_str("a decimal: a number, or a string of digits such as \"0.025\"")
        } else {
            f.write_str("a decimal string such as \"0.025\" (or an integer)")
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        parse(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        if !self.floats {
            return Err(E::custom(format!(
                "{v} is a binary float, which may be inexact: write the decimal as a string, \
                 such as \"{v}\""
            )));
        }
        from_number(v).map_err(E::custom)
    }
}

/// `#[serde(deserialize_with = "tollgate_core::decimal::de")]`: a quantity: a decimal by this
/// module's grammar, or a number.
pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(Plain { floats: true })
}

/// `#[serde(deserialize_with = "tollgate_core::decimal::de_text")]`: a price, percent or
/// amount: a decimal by this module's grammar, or an integer.
pub fn de_text<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(Plain { floats: false })
}

/// As [`de`], or `null`.
pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    optional(d, Plain { floats: true })
}

/// As [`de_text`], or `null`.
pub fn de_text_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    optional(d, Plain { floats: false })
}

fn optional<'de, D: Deserializer<'de>>(d: D, plain: Plain) -> Result<Option<Decimal>, D::Error> {
    struct Opt(Plain);
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<Decimal>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            self.0.expecting(f)?;
            f.write_str(", or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self.0).map(Some)
        }
    }
    d.deserialize_option(Opt(plain))
}

/// A price read as [`de_text`] reads it, where a field attribute cannot reach it (a map's
/// values, a spanned value). Serializes as the decimal does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct PlainDecimal(pub Decimal);

impl<'de> serde::Deserialize<'de> for PlainDecimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_text(d).map(PlainDecimal)
    }
}

/// The OpenAPI schema of a decimal in a request body: a string by [`PATTERN`], or a JSON
/// number of the type `numbers` names.
#[cfg(feature = "openapi")]
fn schema(
    numbers: utoipa::openapi::schema::Type,
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, numbers]))
        .pattern(Some(PATTERN))
        .description(Some(description))
        .examples(["0.025"])
        .into()
}

/// The OpenAPI schema of a quantity in a request body ([`de`]): named `Decimal`.
#[cfg(feature = "openapi")]
pub struct DecimalInput;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for DecimalInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        schema(
            utoipa::openapi::schema::Type::Number,
            "A decimal quantity. Write it as a string of plain digits with an optional point and \
             minus (`\"2.5\"`; no exponent, `+`, separators or spaces): it is read exactly. A \
             JSON number is also accepted, read through its shortest decimal text, and refused \
             with more than 15 significant digits.",
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for DecimalInput {
    fn name() -> std::borrow::Cow<'static, str> {
        "Decimal".into()
    }
}

/// The OpenAPI schema of a price, percent or amount in a request body ([`de_text`]): named
/// `ExactDecimal`.
#[cfg(feature = "openapi")]
pub struct ExactDecimal;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ExactDecimal {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        schema(
            utoipa::openapi::schema::Type::Integer,
            "An exact decimal, such as a price or a percent: a string of plain digits with an \
             optional point and minus (`\"0.025\"`; no exponent, `+`, separators or spaces), \
             or an integer. A fractional JSON number is refused: a binary float may not hold it \
             exactly.",
        )
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ExactDecimal {
    fn name() -> std::borrow::Cow<'static, str> {
        "ExactDecimal".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimals_parse_exactly() {
        assert_eq!(parse("25").unwrap(), Decimal::from(25));
        assert_eq!(parse("0.025").unwrap(), Decimal::new(25, 3));
        assert_eq!(parse("-3.50").unwrap(), Decimal::new(-350, 2));
        assert_eq!(parse("007").unwrap(), Decimal::from(7));
    }

    #[test]
    fn loose_spellings_are_refused() {
        for bad in [
            "", "-", "+5", "1e3", "1E3", "1_0", " 1", "1 ", ".5", "5.", "1.2.3", "0x10", "ten",
            "--1", "1,5", "∞", "NaN", "١",
        ] {
            assert!(
                matches!(parse(bad), Err(DecimalError::Syntax(_))),
                "{bad:?} parsed"
            );
        }
        assert!(matches!(
            parse("123456789012345678901234567890"),
            Err(DecimalError::TooLong(_))
        ));
    }

    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "de_opt")]
        v: Option<Decimal>,
    }

    #[test]
    fn numbers_and_strings_read_as_written() {
        let v = |s: &str| serde_json::from_str::<T>(s).map(|t| t.v);
        assert_eq!(v(r#"{"v": 1.5}"#).unwrap(), Some(Decimal::new(15, 1)));
        assert_eq!(v(r#"{"v": 0.1}"#).unwrap(), Some(Decimal::new(1, 1)));
        assert_eq!(v(r#"{"v": 1e3}"#).unwrap(), Some(Decimal::from(1000)));
        assert_eq!(v(r#"{"v": "0.30"}"#).unwrap(), Some(Decimal::new(30, 2)));
        assert_eq!(v(r#"{"v": 7}"#).unwrap(), Some(Decimal::from(7)));
        assert_eq!(v(r#"{"v": -7}"#).unwrap(), Some(Decimal::from(-7)));
        assert_eq!(
            v(r#"{"v": 0.123456789012345}"#).unwrap(),
            Some(Decimal::new(123_456_789_012_345, 15))
        );
        assert_eq!(
            v(r#"{"v": 18446744073709551615}"#).unwrap(),
            Some(Decimal::from(u64::MAX))
        );
        assert_eq!(v(r#"{"v": null}"#).unwrap(), None);
        assert_eq!(v(r#"{}"#).unwrap(), None);
        for bad in [
            r#"{"v": "ten"}"#,
            r#"{"v": true}"#,
            r#"{"v": "1e3"}"#,
            r#"{"v": "+5"}"#,
            r#"{"v": "1_0"}"#,
            r#"{"v": 1e300}"#,
            r#"{"v": 0.1234567890123456789}"#,
            r#"{"v": 12345678901234567890123}"#,
        ] {
            assert!(v(bad).is_err(), "{bad}");
        }
    }

    #[derive(serde::Deserialize)]
    struct Price {
        #[serde(deserialize_with = "de_text")]
        v: Decimal,
    }

    #[test]
    fn prices_are_strings_or_integers() {
        let v = |s: &str| serde_json::from_str::<Price>(s).map(|t| t.v);
        assert_eq!(v(r#"{"v": "0.025"}"#).unwrap(), Decimal::new(25, 3));
        assert_eq!(v(r#"{"v": 3}"#).unwrap(), Decimal::from(3));
        // A float is refused even when it looks exact: 1.00000000000000001 would read as 1.
        for float in [
            r#"{"v": 0.025}"#,
            r#"{"v": 1.00000000000000001}"#,
            r#"{"v": 1.5}"#,
        ] {
            let e = v(float).unwrap_err().to_string();
            assert!(e.contains("string"), "{float}: {e}");
        }
    }
}
