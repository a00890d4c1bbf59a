//! An account's negotiated terms (discounts, a contractual concurrency limit, the lock
//! threshold) and an operator's change to them: applied to the terms as they are, and checked
//! whole, so that a change either applies entirely or is refused without effect.

use crate::catalog::Catalog;
use crate::ids::{AccountId, EndpointId};
use crate::machine::AccountState;
use crate::money::Nanos;
use crate::price::PriceRule;
use crate::pricing::{Discounts, VolumeTier};
use crate::time::Timestamp;
use rust_decimal::Decimal;

/// The terms an account is stored with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Terms {
    pub discounts: Discounts,
    /// A contractual concurrency limit that replaces the tier table.
    pub concurrency_override: Option<u32>,
    /// A prepaid account locks once its balance is at or below this.
    pub lock_threshold: Nanos,
}

impl Terms {
    /// The account's terms as loaded.
    pub fn of(account: &AccountState) -> Terms {
        Terms {
            discounts: account.discounts.clone(),
            concurrency_override: account.concurrency_override,
            lock_threshold: account.credit.lock_threshold,
        }
    }
}

/// A change of an account's terms: each `Some` sets its term, `None` leaves it as it is; and
/// prices of the account's own, each a new account-scoped price version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TermsChange {
    /// Sets the flat percent discount.
    pub percent_discount: Option<Decimal>,
    /// Replaces the list of volume tiers.
    pub volume_tiers: Option<Vec<VolumeTier>>,
    /// `Some(Some(n))`: a contractual limit of `n`; `Some(None)`: back to the tier table.
    pub concurrency_limit: Option<Option<u32>>,
    pub lock_threshold: Option<Nanos>,
    /// New prices for the account, in order.
    pub prices: Vec<(EndpointId, PriceRule)>,
    /// When the new prices take effect (default: now).
    pub effective_from: Option<Timestamp>,
}

/// Why a change was refused: the offending field as the operator API names it
/// (`percent_discount`, `volume_tiers[0].percent`, `concurrency_limit`,
/// `prices.<endpoint>.<field>`), and a message that names it too.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TermsError {
    pub field: String,
    pub message: String,
}

impl TermsError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> TermsError {
        TermsError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The terms after `change`, or the first reason to refuse it. Every part is checked, the
/// prices included, before anything is applied: a caller that writes the result and the prices
/// only on `Ok` changes all or nothing.
pub fn apply(current: &Terms, change: &TermsChange) -> Result<Terms, TermsError> {
    let mut next = current.clone();
    if let Some(p) = change.percent_discount {
        next.discounts.percent_discount = Some(p);
    }
    if let Some(tiers) = &change.volume_tiers {
        next.discounts.volume_tiers = tiers.clone();
    }
    next.discounts
        .validate()
        .map_err(|(f, m)| TermsError::new(f.clone(), format!("`{f}` {m}")))?;
    if let Some(limit) = change.concurrency_limit {
        if limit == Some(0) {
            return Err(TermsError::new(
                "concurrency_limit",
                "concurrency_limit must be at least 1 (or null to use the tier table)",
            ));
        }
        next.concurrency_override = limit;
    }
    if let Some(threshold) = change.lock_threshold {
        if threshold.is_negative() || threshold > crate::money::MAX_AMOUNT {
            return Err(TermsError::new(
                "lock_threshold_usd",
                format!(
                    "lock_threshold_usd must be between 0 and {}",
                    crate::money::MAX_AMOUNT
                ),
            ));
        }
        next.lock_threshold = threshold;
    }
    if change.effective_from.is_some() && change.prices.is_empty() {
        return Err(TermsError::new(
            "effective_from",
            "effective_from dates the change's prices, and the change has none",
        ));
    }
    for (endpoint, rule) in &change.prices {
        rule.validate().map_err(|(f, m)| {
            TermsError::new(
                format!("prices.{endpoint}.{f}"),
                format!("prices.{endpoint}.{f} {m}"),
            )
        })?;
    }
    Ok(next)
}

/// Checks when the change's prices take effect against the account's price versions in
/// `catalog`: as the catalog's own, a new version is never dated before the latest version of
/// the same endpoint and account (versions are never back-dated, so what was billed stays what
/// was in force).
pub fn check_effective(
    catalog: &Catalog,
    account: &AccountId,
    change: &TermsChange,
    now: Timestamp,
) -> Result<(), TermsError> {
    let at = change.effective_from.unwrap_or(now);
    for (endpoint, _) in &change.prices {
        catalog
            .may_take_effect(endpoint, Some(account), at)
            .map_err(|latest| {
                TermsError::new(
                    "effective_from",
                    format!(
                        "the account's price of {endpoint} already has a version effective \
                         from a later time ({} ms); versions cannot be back-dated",
                        latest.0
                    ),
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::price::Unit;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn current() -> Terms {
        Terms {
            discounts: Discounts {
                percent_discount: Some(d("5")),
                volume_tiers: vec![VolumeTier {
                    from_usd: d("100"),
                    percent: d("10"),
                }],
            },
            concurrency_override: Some(3),
            lock_threshold: Nanos(7),
        }
    }

    fn refused(change: TermsChange) -> (String, String) {
        let e = apply(&current(), &change).unwrap_err();
        (e.field, e.message)
    }

    #[test]
    fn a_change_sets_only_the_terms_it_names() {
        assert_eq!(apply(&current(), &TermsChange::default()), Ok(current()));
        let tiers = vec![VolumeTier {
            from_usd: d("0"),
            percent: d("2.5"),
        }];
        let next = apply(
            &current(),
            &TermsChange {
                volume_tiers: Some(tiers.clone()),
                concurrency_limit: Some(None),
                ..TermsChange::default()
            },
        )
        .unwrap();
        assert_eq!(next.discounts.percent_discount, Some(d("5")), "kept");
        assert_eq!(next.discounts.volume_tiers, tiers);
        assert_eq!(next.concurrency_override, None, "back to the tier table");
        assert_eq!(next.lock_threshold, Nanos(7), "kept");

        let next = apply(
            &current(),
            &TermsChange {
                percent_discount: Some(d("100")),
                concurrency_limit: Some(Some(1)),
                lock_threshold: Some(Nanos::ZERO),
                ..TermsChange::default()
            },
        )
        .unwrap();
        assert_eq!(next.discounts.percent_discount, Some(d("100")));
        assert_eq!(
            next.discounts.volume_tiers,
            current().discounts.volume_tiers
        );
        assert_eq!(next.concurrency_override, Some(1));
        assert_eq!(next.lock_threshold, Nanos::ZERO);
    }

    #[test]
    fn a_refusal_names_the_field_as_the_api_does() {
        let percent = |p: &str| TermsChange {
            percent_discount: Some(d(p)),
            ..TermsChange::default()
        };
        assert_eq!(
            refused(percent("100.5")),
            (
                "percent_discount".into(),
                "`percent_discount` must be between 0 and 100".into()
            )
        );
        assert_eq!(refused(percent("-1")).0, "percent_discount");
        let tiers = |from: &str, percent: &str| TermsChange {
            volume_tiers: Some(vec![
                VolumeTier {
                    from_usd: d("0"),
                    percent: d("1"),
                },
                VolumeTier {
                    from_usd: d(from),
                    percent: d(percent),
                },
            ]),
            ..TermsChange::default()
        };
        assert_eq!(refused(tiers("10", "101")).0, "volume_tiers[1].percent");
        assert_eq!(refused(tiers("-10", "1")).0, "volume_tiers[1].from_usd");
        assert_eq!(
            refused(TermsChange {
                concurrency_limit: Some(Some(0)),
                ..TermsChange::default()
            })
            .0,
            "concurrency_limit"
        );
        assert_eq!(
            refused(TermsChange {
                lock_threshold: Some(Nanos(-1)),
                ..TermsChange::default()
            })
            .0,
            "lock_threshold_usd"
        );
        let flux = EndpointId::parse("fal-ai/flux/dev").unwrap();
        assert_eq!(
            refused(TermsChange {
                prices: vec![
                    (
                        flux.clone(),
                        PriceRule::per_unit(Unit::Image, Some(d("0.02")))
                    ),
                    (flux, PriceRule::per_unit(Unit::Image, Some(d("-0.02")))),
                ],
                ..TermsChange::default()
            }),
            (
                "prices.fal-ai/flux/dev.unit_price".into(),
                "prices.fal-ai/flux/dev.unit_price must not be negative".into()
            )
        );
    }

    #[test]
    fn a_bad_price_refuses_the_whole_change() {
        // Valid terms beside it are not applied either: the caller gets no terms to write.
        let change = TermsChange {
            percent_discount: Some(d("50")),
            concurrency_limit: Some(Some(9)),
            prices: vec![(
                EndpointId::parse("fal-ai/flux/dev").unwrap(),
                PriceRule::per_unit(Unit::Megapixel, None),
            )],
            ..TermsChange::default()
        };
        assert_eq!(
            apply(&current(), &change).unwrap_err().field,
            "prices.fal-ai/flux/dev.unit_price"
        );
    }

    #[test]
    fn prices_are_dated_never_before_the_accounts_latest_version() {
        let flux = EndpointId::parse("fal-ai/flux/dev").unwrap();
        let acme = AccountId::parse("acme").unwrap();
        let rule = PriceRule::per_unit(Unit::Image, Some(d("0.02")));
        let mut catalog = Catalog::default();
        catalog.insert_version(crate::catalog::PriceVersion {
            id: 1,
            endpoint: flux.clone(),
            account: Some(acme.clone()),
            effective_from: Timestamp(1_000),
            rule: rule.clone(),
        });
        let at = |t: Option<i64>| TermsChange {
            prices: vec![(flux.clone(), rule.clone())],
            effective_from: t.map(Timestamp),
            ..TermsChange::default()
        };
        let now = Timestamp(5_000);
        assert!(check_effective(&catalog, &acme, &at(None), now).is_ok());
        assert!(check_effective(&catalog, &acme, &at(Some(1_000)), now).is_ok());
        assert!(check_effective(&catalog, &acme, &at(Some(9_000)), now).is_ok());
        let e = check_effective(&catalog, &acme, &at(Some(999)), now).unwrap_err();
        assert_eq!(e.field, "effective_from");
        // Another account's versions do not date this one's.
        let other = AccountId::parse("other").unwrap();
        assert!(check_effective(&catalog, &other, &at(Some(0)), now).is_ok());
        // A date without prices dates nothing: refused.
        let dateless = TermsChange {
            effective_from: Some(Timestamp(9_000)),
            ..TermsChange::default()
        };
        assert_eq!(refused(dateless).0, "effective_from");
    }
}
