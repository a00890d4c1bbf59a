//! Decimal input that accepts a JSON string ("1.5") or number (1.5). A number is read through
//! its shortest decimal text, so what the client wrote is what is billed; catalogs, where
//! prices live, refuse floats and take decimal strings or integers (see `catalog::document`).

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::str::FromStr;

struct Lenient;

impl Visitor<'_> for Lenient {
    type Value = Decimal;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decimal number or a decimal string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        Decimal::from_str(v.trim())
            .or_else(|_| Decimal::from_scientific(v.trim()))
            .map_err(|_| E::custom(format!("`{v}` is not a decimal number")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        if !v.is_finite() {
            return Err(E::custom("not a finite number"));
        }
        self.visit_str(&format!("{v}"))
    }
}

/// `#[serde(deserialize_with = "lenient")]`
pub fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(Lenient)
}

/// `#[serde(default, deserialize_with = "lenient_opt")]`
pub fn lenient_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<Decimal>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a decimal number, a decimal string or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            lenient(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "lenient_opt")]
        v: Option<Decimal>,
    }

    #[test]
    fn numbers_and_strings_read_as_written() {
        let v = |s: &str| serde_json::from_str::<T>(s).map(|t| t.v);
        assert_eq!(v(r#"{"v": 1.5}"#).unwrap(), Some(Decimal::new(15, 1)));
        assert_eq!(v(r#"{"v": 0.1}"#).unwrap(), Some(Decimal::new(1, 1)));
        assert_eq!(v(r#"{"v": "0.30"}"#).unwrap(), Some(Decimal::new(30, 2)));
        assert_eq!(v(r#"{"v": 7}"#).unwrap(), Some(Decimal::from(7)));
        assert_eq!(v(r#"{"v": null}"#).unwrap(), None);
        assert_eq!(v(r#"{}"#).unwrap(), None);
        assert!(v(r#"{"v": "ten"}"#).is_err());
        assert!(v(r#"{"v": true}"#).is_err());
    }
}
