//! Account adjustments on top of rating: percent discounts and volume tiers, producing fal's
//! `unit_price`, `percent_discount`, `cost_subtotal`, `cost_discount`, `cost_total`, and the one
//! rounding to whole nano-USD.

use crate::money::{round_usd_to_nanos, MoneyError, Nanos};
use crate::price::Rated;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A discount that applies once the account's billed subtotal in the current calendar month
/// (UTC), before this request, reaches `from_usd`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeTier {
    #[serde(deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub from_usd: Decimal,
    #[serde(deserialize_with = "crate::decimal::de_text")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::decimal::ExactDecimal))]
    pub percent: Decimal,
}

/// An account's negotiated discounts. Overridden prices are account-scoped price versions and
/// live with the catalog; these apply on top of whichever price is in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Discounts {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decimal::de_text_opt"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::decimal::ExactDecimal>)
    )]
    pub percent_discount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_tiers: Vec<VolumeTier>,
}

impl Discounts {
    /// The percent that applies given the month-to-date billed subtotal: the larger of the flat
    /// discount and the highest volume tier reached. `None` when no discount applies.
    pub fn percent_for(&self, month_subtotal: Nanos) -> Option<Decimal> {
        let spent = month_subtotal.to_usd();
        let tier = self
            .volume_tiers
            .iter()
            .filter(|t| spent >= t.from_usd)
            .map(|t| t.percent)
            .max();
        [self.percent_discount, tier]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_zero())
            .max()
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        let pct_ok = |p: &Decimal| *p >= Decimal::ZERO && *p <= Decimal::ONE_HUNDRED;
        if let Some(p) = &self.percent_discount {
            if !pct_ok(p) {
                return Err((
                    "percent_discount".into(),
                    "must be between 0 and 100".into(),
                ));
            }
        }
        for (i, t) in self.volume_tiers.iter().enumerate() {
            if !pct_ok(&t.percent) {
                return Err((
                    format!("volume_tiers[{i}].percent"),
                    "must be between 0 and 100".into(),
                ));
            }
            if t.from_usd.is_sign_negative() {
                return Err((
                    format!("volume_tiers[{i}].from_usd"),
                    "must not be negative".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A rated request with the account's discount applied: what a line item records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub quantity: Decimal,
    pub unit_price: Decimal,
    pub percent_discount: Option<Decimal>,
    pub subtotal_nanos: Nanos,
    pub discount_nanos: Nanos,
    /// What the account pays: `subtotal_nanos - discount_nanos`, exactly.
    pub total_nanos: Nanos,
    /// `unit_price` is an effective average, not a listed rate ([`crate::price::Rated`]).
    #[serde(default)]
    pub blended: bool,
}

impl Charge {
    pub const FREE: Charge = Charge {
        quantity: Decimal::ZERO,
        unit_price: Decimal::ZERO,
        percent_discount: None,
        subtotal_nanos: Nanos::ZERO,
        discount_nanos: Nanos::ZERO,
        total_nanos: Nanos::ZERO,
        blended: false,
    };

    /// Applies `percent` to the exact subtotal, then rounds: the total is the exact discounted
    /// cost rounded once to nano-USD; the subtotal is rounded the same way and the discount is
    /// their difference, so the three displayed amounts always add up.
    pub fn new(rated: &Rated, percent: Option<Decimal>) -> Result<Charge, MoneyError> {
        let percent = percent.filter(|p| !p.is_zero());
        let exact_total = match percent {
            Some(p) => {
                let keep = (Decimal::ONE_HUNDRED - p) / Decimal::ONE_HUNDRED;
                rated
                    .subtotal
                    .checked_mul(keep)
                    .ok_or(MoneyError::Overflow)?
            }
            None => rated.subtotal,
        };
        let subtotal_nanos = round_usd_to_nanos(rated.subtotal)?;
        let total_nanos = round_usd_to_nanos(exact_total)?;
        Ok(Charge {
            quantity: rated.quantity,
            unit_price: rated.unit_price,
            percent_discount: percent.map(|p| p.normalize()),
            subtotal_nanos,
            discount_nanos: subtotal_nanos.checked_sub(total_nanos)?,
            total_nanos,
            blended: rated.blended,
        })
    }
}
