//! Money: integer nano-USD with checked arithmetic, and exact decimal USD at the edges.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Nano-USD per USD.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// The largest single amount an operator or a customer may ask to move at once (a purchase, a
/// lock threshold), 1,000,000 USD: anything above is a typo, not a sale.
pub const MAX_AMOUNT: Nanos = Nanos(1_000_000 * NANOS_PER_USD);

/// An amount of money in integer nano-USD (1 USD = 1,000,000,000). Signed, because system
/// ledger accounts (purchases, revenue) carry the other side of every transfer.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount overflows the nano-USD range")]
    Overflow,
    #[error(
        "`{0}` is not a USD amount: write plain digits with an optional point, such as \"25.00\""
    )]
    NotDecimal(String),
    #[error("`{0}` has more than 9 decimal places (finer than one nano-USD)")]
    TooPrecise(String),
    #[error("amount must not be negative")]
    Negative,
}

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    pub fn checked_add(self, other: Nanos) -> Result<Nanos, MoneyError> {
        self.0
            .checked_add(other.0)
            .map(Nanos)
            .ok_or(MoneyError::Overflow)
    }
    pub fn checked_sub(self, other: Nanos) -> Result<Nanos, MoneyError> {
        self.0
            .checked_sub(other.0)
            .map(Nanos)
            .ok_or(MoneyError::Overflow)
    }
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }
    /// Exact USD value.
    pub fn to_usd(self) -> Decimal {
        Decimal::from_i128_with_scale(self.0 as i128, 9).normalize()
    }
    /// Exact conversion from USD; fails if finer than one nano-USD or out of range.
    pub fn from_usd_exact(usd: Decimal) -> Result<Nanos, MoneyError> {
        let scaled = usd
            .checked_mul(Decimal::from(NANOS_PER_USD))
            .ok_or(MoneyError::Overflow)?;
        if scaled.fract() != Decimal::ZERO {
            return Err(MoneyError::TooPrecise(usd.to_string()));
        }
        scaled.to_i64().map(Nanos).ok_or(MoneyError::Overflow)
    }
    /// Parses a USD amount such as "25.00" exactly, by the one decimal grammar
    /// ([`crate::decimal`]: no exponent, no `+`, no separators, no spaces). Rejects negatives.
    pub fn parse_usd(s: &str) -> Result<Nanos, MoneyError> {
        let d = crate::decimal::parse(s).map_err(|_| MoneyError::NotDecimal(s.to_string()))?;
        if d.is_sign_negative() && !d.is_zero() {
            return Err(MoneyError::Negative);
        }
        Nanos::from_usd_exact(d)
    }

    /// As [`Nanos::parse_usd`], with a sign: `"-2.50"` is minus 2.5 USD.
    pub fn parse_signed_usd(s: &str) -> Result<Nanos, MoneyError> {
        let d = crate::decimal::parse(s).map_err(|_| MoneyError::NotDecimal(s.to_string()))?;
        Nanos::from_usd_exact(d)
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} USD", self.to_usd())
    }
}

/// The one rule by which an exact decimal USD cost becomes whole nano-USD: to the nearest
/// nano-USD, halves away from zero. Applied exactly once per line item, to the total.
pub fn round_usd_to_nanos(usd: Decimal) -> Result<Nanos, MoneyError> {
    let scaled = usd
        .checked_mul(Decimal::from(NANOS_PER_USD))
        .ok_or(MoneyError::Overflow)?
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    scaled.to_i64().map(Nanos).ok_or(MoneyError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn parses_usd_exactly() {
        assert_eq!(Nanos::parse_usd("25.00").unwrap(), Nanos(25_000_000_000));
        assert_eq!(Nanos::parse_usd("0.000000001").unwrap(), Nanos(1));
        assert_eq!(
            Nanos::parse_usd("0.0000000001"),
            Err(MoneyError::TooPrecise("0.0000000001".into()))
        );
        assert_eq!(Nanos::parse_usd("-1"), Err(MoneyError::Negative));
        assert!(matches!(
            Nanos::parse_usd("ten"),
            Err(MoneyError::NotDecimal(_))
        ));
        assert_eq!(Nanos::parse_usd("99999999999"), Err(MoneyError::Overflow));
        for loose in ["1_0", "1e3", "+5", " 5", "5 ", ".5", ""] {
            assert_eq!(
                Nanos::parse_usd(loose),
                Err(MoneyError::NotDecimal(loose.into())),
                "{loose:?}"
            );
        }
    }

    #[test]
    fn rounds_half_away_from_zero_once() {
        let d = |s| Decimal::from_str(s).unwrap();
        assert_eq!(round_usd_to_nanos(d("0.0000000015")).unwrap(), Nanos(2));
        assert_eq!(round_usd_to_nanos(d("0.0000000014999")).unwrap(), Nanos(1));
        assert_eq!(round_usd_to_nanos(d("0.05")).unwrap(), Nanos(50_000_000));
    }

    #[test]
    fn checked_arithmetic_reports_overflow() {
        assert_eq!(
            Nanos(i64::MAX).checked_add(Nanos(1)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(Nanos(5).checked_sub(Nanos(7)), Ok(Nanos(-2)));
        assert_eq!(Nanos(1_500_000_000).to_usd().to_string(), "1.5");
    }
}
