//! An account's negotiated terms (discounts, a contractual concurrency limit, the lock
//! threshold, the low-balance level, how it pays, its own machine prices), versioned like
//! prices, and an operator's change to them: applied to the terms as they are, and checked
//! whole, so that a change either applies entirely or is refused without effect.
//!
//! Each change is a new version effective from its `effective_from` (default now), never
//! before the account's latest version; the fields a change does not name keep their value
//! from the version before. Which version applies: a request's discount and machine prices
//! are those in force when it was submitted (a usage event's, at its timestamp), like its
//! price version; the lock threshold, the concurrency limit and the billing mode are admission
//! rules, in force when the admission is decided (the batch's `now`).

use crate::catalog::Catalog;
use crate::ids::MachineType;
use crate::ids::{AccountId, EndpointId};
use crate::machine::AccountState;
use crate::money::Nanos;
use crate::money::MAX_AMOUNT;
use crate::price::MachinePrices;
use crate::price::PriceRule;
use crate::pricing::{Discounts, VolumeTier};
use crate::time::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How an account pays: a term, so an account may move from one to the other at a date.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BillingMode {
    /// Prepaid credits: a hold may not take the available balance below zero, and the account
    /// locks while its balance is at or below its lock threshold.
    #[default]
    Prepaid,
    /// Invoiced afterwards: never limited by credit, never locked for its balance.
    Invoice,
}

impl BillingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingMode::Prepaid => "prepaid",
            BillingMode::Invoice => "invoice",
        }
    }

    /// The lowest available balance a hold may leave: zero when prepaid, none when invoiced.
    pub fn floor(self) -> Option<Nanos> {
        match self {
            BillingMode::Prepaid => Some(Nanos::ZERO),
            BillingMode::Invoice => None,
        }
    }
}

/// The highest per-second machine price an account may be given, in USD (a GPU-second of the
/// dearest machine costs a few thousandths of a dollar; this bounds typing errors, not
/// prices).
pub const MAX_MACHINE_PRICE_USD: Decimal = Decimal::ONE_THOUSAND;

/// The terms an account is stored with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Terms {
    pub discounts: Discounts,
    /// A contractual concurrency limit that replaces the tier table.
    pub concurrency_override: Option<u32>,
    /// A prepaid account locks once its balance is at or below this.
    pub lock_threshold: Nanos,
    /// The balance below which the account is told its balance is low; `None`: never.
    pub low_balance: Option<Nanos>,
    pub billing: BillingMode,
    /// The account's own per-second prices of machine types, which replace the catalog's.
    pub machine_prices: MachinePrices,
}

impl Terms {
    /// The account's terms as loaded (for an account with no version: only those it carries
    /// outside its schedule).
    pub fn of(account: &AccountState) -> Terms {
        Terms {
            discounts: account.discounts.clone(),
            concurrency_override: account.concurrency_override,
            lock_threshold: account.credit.lock_threshold,
            low_balance: None,
            billing: account.billing(),
            machine_prices: MachinePrices::new(),
        }
    }
}

/// One version of an account's terms: in force from `effective_from` until the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TermsVersion {
    pub effective_from: Timestamp,
    pub terms: Terms,
}

/// An account's terms over time: versions in order of `effective_from`, at most one per
/// instant. Before the first version (and for an account with none) the default terms apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TermsSchedule {
    versions: Vec<TermsVersion>,
}

static DEFAULT_TERMS: Terms = Terms {
    discounts: Discounts {
        percent_discount: None,
        volume_tiers: Vec::new(),
    },
    concurrency_override: None,
    lock_threshold: Nanos::ZERO,
    low_balance: None,
    billing: BillingMode::Prepaid,
    machine_prices: BTreeMap::new(),
};

impl TermsSchedule {
    /// The schedule of `versions`, in any order; of two versions from the same instant, the
    /// later in the list is kept.
    /// The schedule of a new account that pays by `billing`: none for the default terms, else
    /// one version with that mode, in force from the beginning.
    pub fn first(billing: BillingMode) -> TermsSchedule {
        if billing == DEFAULT_TERMS.billing {
            return TermsSchedule::default();
        }
        TermsSchedule::new(vec![TermsVersion {
            effective_from: Timestamp(0),
            terms: Terms {
                billing,
                ..Terms::default()
            },
        }])
    }

    pub fn new(versions: Vec<TermsVersion>) -> TermsSchedule {
        let mut out: Vec<TermsVersion> = Vec::with_capacity(versions.len());
        for v in versions {
            match out.binary_search_by(|o| o.effective_from.cmp(&v.effective_from)) {
                Ok(i) => out[i] = v,
                Err(i) => out.insert(i, v),
            }
        }
        TermsSchedule { versions: out }
    }

    pub fn versions(&self) -> &[TermsVersion] {
        &self.versions
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The terms in force at `at`: the latest version effective at or before it, else the
    /// defaults.
    pub fn at(&self, at: Timestamp) -> &Terms {
        let n = self.versions.partition_point(|v| v.effective_from <= at);
        match n {
            0 => &DEFAULT_TERMS,
            n => &self.versions[n - 1].terms,
        }
    }

    pub fn latest(&self) -> Option<&TermsVersion> {
        self.versions.last()
    }

    /// Versions that take effect after `at`: scheduled, not yet in force.
    pub fn after(&self, at: Timestamp) -> &[TermsVersion] {
        let n = self.versions.partition_point(|v| v.effective_from <= at);
        &self.versions[n..]
    }

    /// Whether a new version may take effect from `at`: never before the latest version (as
    /// prices: versions are never back-dated, so what was billed stays what was in force).
    /// `Err` holds when that latest version takes effect.
    pub fn may_take_effect(&self, at: Timestamp) -> Result<(), Timestamp> {
        match self.latest() {
            Some(v) if at < v.effective_from => Err(v.effective_from),
            _ => Ok(()),
        }
    }

    /// The schedule with `version` added (replacing one from the same instant).
    fn with(&self, version: TermsVersion) -> TermsSchedule {
        let mut all = self.versions.clone();
        all.push(version);
        TermsSchedule::new(all)
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
    /// `Some(Some(n))`: the low-balance level; `Some(None)`: none.
    pub low_balance: Option<Option<Nanos>>,
    pub billing: Option<BillingMode>,
    /// The account's own machine prices to change, by machine type: `Some` sets one, `None`
    /// removes it (the catalog's applies again); machine types not named keep theirs.
    pub machine_prices: BTreeMap<MachineType, Option<Decimal>>,
    /// New prices for the account, in order.
    pub prices: Vec<(EndpointId, PriceRule)>,
    /// When the new terms and prices take effect (default: now).
    pub effective_from: Option<Timestamp>,
}

impl TermsChange {
    /// Whether the change sets any term (as opposed to only adding prices).
    pub fn sets_terms(&self) -> bool {
        self.percent_discount.is_some()
            || self.volume_tiers.is_some()
            || self.concurrency_limit.is_some()
            || self.lock_threshold.is_some()
            || self.low_balance.is_some()
            || self.billing.is_some()
            || !self.machine_prices.is_empty()
    }
}

/// Why a change was refused: the offending field as the operator API names it
/// (`percent_discount`, `volume_tiers[0].percent`, `concurrency_limit`, `low_balance_usd`,
/// `machine_prices.<machine type>`, `prices.<endpoint>.<field>`), and a message that names it too.
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
    let amount = |field: &str, n: Nanos| {
        if n.is_negative() || n > MAX_AMOUNT {
            Err(TermsError::new(
                field,
                format!("{field} must be between 0 and {MAX_AMOUNT}"),
            ))
        } else {
            Ok(n)
        }
    };
    if let Some(threshold) = change.lock_threshold {
        next.lock_threshold = amount("lock_threshold_usd", threshold)?;
    }
    if let Some(low) = change.low_balance {
        next.low_balance = low.map(|n| amount("low_balance_usd", n)).transpose()?;
    }
    if let Some(billing) = change.billing {
        next.billing = billing;
    }
    for (machine, price) in &change.machine_prices {
        match price {
            Some(p) => {
                if p.is_sign_negative() && !p.is_zero() || *p > MAX_MACHINE_PRICE_USD {
                    let field = format!("machine_prices.{machine}");
                    return Err(TermsError::new(
                        field.clone(),
                        format!(
                            "{field} must be between 0 and {MAX_MACHINE_PRICE_USD} USD per \
                             second, got {p}"
                        ),
                    ));
                }
                next.machine_prices.insert(machine.clone(), p.normalize());
            }
            None => {
                next.machine_prices.remove(machine);
            }
        }
    }
    if change.effective_from.is_some() && change.prices.is_empty() && !change.sets_terms() {
        return Err(TermsError::new(
            "effective_from",
            "effective_from dates the change's terms and prices, and the change has neither",
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

/// The account's terms schedule after `change`, or `None` when the change sets no term (only
/// prices). The new version takes effect from the change's `effective_from` (default `now`),
/// never before the account's latest version, and keeps the terms the change does not name
/// from the version in force then (the latest: nothing later exists). A change from the same
/// instant as the latest version is applied to it, so that concurrent changes of different
/// terms all stick.
pub fn schedule(
    account: &AccountState,
    change: &TermsChange,
    now: Timestamp,
) -> Result<Option<TermsSchedule>, TermsError> {
    let at = change.effective_from.unwrap_or(now);
    // Checked whole first: the prices too, even when no term changes.
    let next = apply(&account.terms_at(at), change)?;
    if !change.sets_terms() {
        return Ok(None);
    }
    account.terms.may_take_effect(at).map_err(|latest| {
        TermsError::new(
            "effective_from",
            format!(
                "the account's terms already have a version effective from a later time \
                 ({}); versions cannot be back-dated",
                crate::time::rfc3339(latest)
            ),
        )
    })?;
    let base = Terms::of(account);
    let current = if account.terms.is_empty() && base != Terms::default() {
        // No version yet, but terms: they become the first version, in force from the
        // beginning (as they were).
        TermsSchedule::new(vec![TermsVersion {
            effective_from: Timestamp(0),
            terms: base,
        }])
    } else {
        account.terms.clone()
    };
    Ok(Some(current.with(TermsVersion {
        effective_from: at,
        terms: next,
    })))
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
                         from a later time ({}); versions cannot be back-dated",
                        crate::time::rfc3339(latest)
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
            ..Terms::default()
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

    fn account() -> AccountState {
        AccountState::new(crate::ledger::CreditAccount::new_prepaid(
            AccountId::parse("acme").unwrap(),
        ))
    }

    #[test]
    fn each_change_of_terms_is_a_version_that_keeps_the_fields_it_does_not_name() {
        let mut acct = account();
        let discount = |p: &str, at: Option<i64>| TermsChange {
            percent_discount: Some(d(p)),
            effective_from: at.map(Timestamp),
            ..TermsChange::default()
        };
        // A change dated now, then one scheduled later that names another field.
        acct.terms = schedule(&acct, &discount("10", None), Timestamp(1_000))
            .unwrap()
            .unwrap();
        let limit = TermsChange {
            concurrency_limit: Some(Some(4)),
            effective_from: Some(Timestamp(5_000)),
            ..TermsChange::default()
        };
        acct.terms = schedule(&acct, &limit, Timestamp(2_000)).unwrap().unwrap();
        assert_eq!(acct.terms.versions().len(), 2);
        assert_eq!(
            acct.terms_at(Timestamp(999)),
            Terms::default(),
            "before any"
        );
        let t = acct.terms_at(Timestamp(1_000));
        assert_eq!(
            (t.discounts.percent_discount, t.concurrency_override),
            (Some(d("10")), None)
        );
        let t = acct.terms_at(Timestamp(5_000));
        assert_eq!(
            (t.discounts.percent_discount, t.concurrency_override),
            (Some(d("10")), Some(4)),
            "the discount is kept from the version before"
        );
        assert_eq!(acct.terms.after(Timestamp(2_000)).len(), 1, "scheduled");
        // In force now: what `use_terms_at` makes current.
        acct.use_terms_at(Timestamp(4_999));
        assert_eq!(acct.concurrency_override, None);
        acct.use_terms_at(Timestamp(5_000));
        assert_eq!(acct.concurrency_override, Some(4));
        // Never before the latest version; a change from the same instant is merged into it.
        let e = schedule(&acct, &discount("20", None), Timestamp(4_000)).unwrap_err();
        assert_eq!(e.field, "effective_from");
        acct.terms = schedule(&acct, &discount("20", Some(5_000)), Timestamp(4_000))
            .unwrap()
            .unwrap();
        assert_eq!(acct.terms.versions().len(), 2);
        let t = acct.terms_at(Timestamp(6_000));
        assert_eq!(
            (t.discounts.percent_discount, t.concurrency_override),
            (Some(d("20")), Some(4)),
            "concurrent changes of different fields both stick"
        );
        // A change of prices only makes no terms version; a bad term refuses it whole.
        let prices_only = TermsChange {
            prices: vec![(
                EndpointId::parse("fal-ai/flux/dev").unwrap(),
                PriceRule::per_unit(Unit::Image, Some(d("0.02"))),
            )],
            ..TermsChange::default()
        };
        assert_eq!(schedule(&acct, &prices_only, Timestamp(9_000)), Ok(None));
        assert_eq!(
            schedule(&acct, &discount("101", None), Timestamp(9_000))
                .unwrap_err()
                .field,
            "percent_discount"
        );
    }

    #[test]
    fn an_account_with_terms_but_no_version_keeps_them_from_the_beginning() {
        let mut acct = account();
        acct.concurrency_override = Some(9);
        let change = TermsChange {
            percent_discount: Some(d("5")),
            effective_from: Some(Timestamp(10_000)),
            ..TermsChange::default()
        };
        acct.terms = schedule(&acct, &change, Timestamp(1)).unwrap().unwrap();
        assert_eq!(acct.terms_at(Timestamp(0)).concurrency_override, Some(9));
        assert_eq!(
            acct.terms_at(Timestamp(9_999)).discounts.percent_discount,
            None
        );
        let later = acct.terms_at(Timestamp(10_000));
        assert_eq!(
            (later.discounts.percent_discount, later.concurrency_override),
            (Some(d("5")), Some(9))
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

    #[test]
    fn low_balance_billing_and_machine_prices_are_terms_checked_like_the_others() {
        let h100 = MachineType::parse("GPU-H100").unwrap();
        let a100 = MachineType::parse("GPU-A100").unwrap();
        let next = apply(
            &current(),
            &TermsChange {
                low_balance: Some(Some(Nanos(5_000_000_000))),
                billing: Some(BillingMode::Invoice),
                machine_prices: BTreeMap::from([
                    (h100.clone(), Some(d("0.000400"))),
                    (a100.clone(), Some(d("0"))),
                ]),
                ..TermsChange::default()
            },
        )
        .unwrap();
        assert_eq!(next.low_balance, Some(Nanos(5_000_000_000)));
        assert_eq!(next.billing, BillingMode::Invoice);
        assert_eq!(
            next.machine_prices,
            BTreeMap::from([(h100.clone(), d("0.0004")), (a100.clone(), d("0"))])
        );
        assert_eq!(next.lock_threshold, Nanos(7), "kept");
        // `null` clears the low-balance level; a machine price named null is removed, the
        // others are kept.
        let next = apply(
            &next,
            &TermsChange {
                low_balance: Some(None),
                machine_prices: BTreeMap::from([(a100, None)]),
                ..TermsChange::default()
            },
        )
        .unwrap();
        assert_eq!(next.low_balance, None);
        assert_eq!(next.billing, BillingMode::Invoice, "kept");
        assert_eq!(
            next.machine_prices,
            BTreeMap::from([(h100.clone(), d("0.0004"))])
        );

        let low = |n: i64| TermsChange {
            low_balance: Some(Some(Nanos(n))),
            ..TermsChange::default()
        };
        assert_eq!(refused(low(-1)).0, "low_balance_usd");
        assert_eq!(
            refused(low(crate::money::MAX_AMOUNT.0 + 1)).0,
            "low_balance_usd"
        );
        assert!(apply(&current(), &low(crate::money::MAX_AMOUNT.0)).is_ok());
        let machine = |p: &str| TermsChange {
            machine_prices: BTreeMap::from([(h100.clone(), Some(d(p)))]),
            ..TermsChange::default()
        };
        assert_eq!(refused(machine("-0.0001")).0, "machine_prices.GPU-H100");
        assert_eq!(refused(machine("1000.000001")).0, "machine_prices.GPU-H100");
        assert!(apply(&current(), &machine("1000")).is_ok());
        assert!(
            apply(&current(), &machine("-0")).is_ok(),
            "minus zero is zero"
        );
        // Each is a term: alone, it makes a version.
        for change in [low(1), machine("0.1")] {
            assert!(change.sets_terms());
        }
        assert!(TermsChange {
            billing: Some(BillingMode::Prepaid),
            ..TermsChange::default()
        }
        .sets_terms());
    }

    #[test]
    fn the_billing_mode_in_force_decides_the_floor_and_the_lock() {
        // A new invoice-billed account: its mode is its first version, from the beginning.
        let mut acct = account();
        acct.terms = TermsSchedule::first(BillingMode::Invoice);
        assert_eq!(acct.terms.versions()[0].effective_from, Timestamp(0));
        assert!(TermsSchedule::first(BillingMode::Prepaid).is_empty());
        acct.use_terms_at(Timestamp(1));
        assert_eq!(acct.billing(), BillingMode::Invoice);
        assert_eq!(acct.credit.floor, None);
        assert!(
            !acct.is_locked(),
            "an invoice account is never locked for its balance"
        );
        assert!(
            acct.credit.hold(Nanos(1_000)).is_ok(),
            "nor limited by credit"
        );
        acct.credit.held = Nanos::ZERO;
        // Prepaid from 5 s: the changes it does not name are kept, the mode changes.
        let prepaid = TermsChange {
            billing: Some(BillingMode::Prepaid),
            lock_threshold: Some(Nanos(10)),
            effective_from: Some(Timestamp(5_000)),
            ..TermsChange::default()
        };
        acct.terms = schedule(&acct, &prepaid, Timestamp(2_000))
            .unwrap()
            .unwrap();
        acct.use_terms_at(Timestamp(4_999));
        assert_eq!(acct.billing(), BillingMode::Invoice);
        assert!(!acct.is_locked());
        acct.use_terms_at(Timestamp(5_000));
        assert_eq!(acct.billing(), BillingMode::Prepaid);
        assert_eq!(acct.credit.floor, Some(Nanos::ZERO));
        assert!(acct.is_locked(), "no credits, at or below its threshold");
        assert!(acct.credit.hold(Nanos(1)).is_err());
        // `Terms::of` carries the mode of an account without versions.
        let mut bare = account();
        bare.credit.floor = None;
        assert_eq!(Terms::of(&bare).billing, BillingMode::Invoice);
    }

    #[test]
    fn the_machine_price_in_force_replaces_the_catalogs() {
        let h100 = MachineType::parse("GPU-H100").unwrap();
        let a100 = MachineType::parse("GPU-A100").unwrap();
        let mut catalog = Catalog::default();
        catalog.machines.insert(h100.clone(), d("0.000525"));
        catalog.machines.insert(a100.clone(), d("0.000275"));
        let mut acct = account();
        let at = |t| Some(Timestamp(t));
        assert_eq!(
            acct.machine_price_at(&catalog, Some(&h100), Timestamp(0)),
            Some(d("0.000525"))
        );
        let change = TermsChange {
            machine_prices: BTreeMap::from([(h100.clone(), Some(d("0.0004")))]),
            effective_from: at(10_000),
            ..TermsChange::default()
        };
        acct.terms = schedule(&acct, &change, Timestamp(1_000)).unwrap().unwrap();
        let price =
            |m: &MachineType, t: i64| acct.machine_price_at(&catalog, Some(m), Timestamp(t));
        assert_eq!(price(&h100, 9_999), Some(d("0.000525")), "not yet");
        assert_eq!(price(&h100, 10_000), Some(d("0.0004")));
        assert_eq!(price(&a100, 10_000), Some(d("0.000275")), "the catalog's");
        assert_eq!(
            acct.machine_price_at(&catalog, None, Timestamp(10_000)),
            None
        );
    }
}
