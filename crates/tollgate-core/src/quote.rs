//! What an account would pay before anything runs: the unit prices and cost estimates of fal's
//! `GET /models/pricing` and `POST /models/pricing/estimate`, computed with the rules that
//! bill a request, so a quote and a line item for the same units always agree.
//!
//! Prices are the account's own: its price version in force when it has one (enterprise
//! pricing), else the public one, with its own machine prices over the catalog's, exactly as a
//! request submitted at `now` would be priced. A
//! list price is the rule's base rate per billable unit; what depends on a request's output
//! (attribute-selected rates, multipliers, first blocks, add-ons, minimums, cost steps) is not
//! in it.

use crate::catalog::{Catalog, EndpointDef};
use crate::ids::EndpointId;
use crate::machine::{percent_discount_at, AccountState};
use crate::money::{MoneyError, Nanos};
use crate::price::{Rated, Unit};
use crate::pricing::Charge;
use crate::time::Timestamp;
use rust_decimal::Decimal;

/// What one billable unit of an endpoint costs an account, before its percent discount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPrice {
    pub unit_price: Decimal,
    /// The unit as fal's pricing shows it (`megapixel`, `1M tokens`, ...).
    pub unit: String,
}

/// Why an endpoint cannot be quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("{0} has no price in force")]
    NoPrice(EndpointId),
    #[error("the estimate for {0} overflows")]
    Overflow(EndpointId),
}

/// The list price of `def` for the account now; `None` when no version is in force.
pub fn list_price(
    catalog: &Catalog,
    def: &EndpointDef,
    acct: &AccountState,
    now: Timestamp,
) -> Option<ListPrice> {
    let rule = &catalog.price_at(&def.id, &acct.credit.id, now)?.rule;
    let machine_price = acct.machine_price_at(catalog, def.machine_type.as_ref(), now);
    let unit_price = rule.headline_unit_price(machine_price)?;
    Some(ListPrice {
        unit_price,
        unit: rule.unit_label(),
    })
}

/// What `units` billable units of `def` cost the account now: units x its list price, with its
/// percent discount applied and rounded once to nano-USD, as a line item is ([`Charge::new`]).
pub fn units_cost(
    catalog: &Catalog,
    def: &EndpointDef,
    acct: &AccountState,
    units: Decimal,
    now: Timestamp,
) -> Result<Nanos, QuoteError> {
    let price =
        list_price(catalog, def, acct, now).ok_or_else(|| QuoteError::NoPrice(def.id.clone()))?;
    let overflow = |_| QuoteError::Overflow(def.id.clone());
    let subtotal = units
        .checked_mul(price.unit_price)
        .ok_or(MoneyError::Overflow)
        .map_err(overflow)?;
    let rated = Rated {
        quantity: units,
        unit_price: price.unit_price,
        subtotal,
        blended: false,
    };
    Charge::new(&rated, percent_discount_at(acct, def, now))
        .map(|c| c.total_nanos)
        .map_err(overflow)
}

/// A typical request of `def` in the unit its price is shown in: the endpoint's `hold_units`,
/// counted per `tokens.per` for a token price (shown per `1M tokens`, held in tokens).
pub fn typical_request_units(
    catalog: &Catalog,
    def: &EndpointDef,
    acct: &AccountState,
    now: Timestamp,
) -> Result<Decimal, QuoteError> {
    let per = catalog
        .price_at(&def.id, &acct.credit.id, now)
        .and_then(|v| match (&v.rule.unit, &v.rule.tokens) {
            (Unit::Token, Some(t)) => Some(t.per),
            _ => None,
        });
    match per {
        Some(per) => def
            .hold_units
            .checked_div(per)
            .ok_or_else(|| QuoteError::Overflow(def.id.clone())),
        None => Ok(def.hold_units),
    }
}

/// The account's billed requests of one endpoint over a window: how many, and their total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub requests: u64,
    pub total: Nanos,
}

/// What one request of `def` costs the account by its history: the average of its billed
/// requests, rounded up to the nano-USD (an average never understates a request); with no
/// history, a typical request ([`typical_request_units`]) at its list price and discount.
pub fn per_request_cost(
    catalog: &Catalog,
    def: &EndpointDef,
    acct: &AccountState,
    history: History,
    now: Timestamp,
) -> Result<Nanos, QuoteError> {
    if history.requests == 0 {
        let units = typical_request_units(catalog, def, acct, now)?;
        return units_cost(catalog, def, acct, units, now);
    }
    let total = u128::try_from(history.total.0).unwrap_or(0);
    let average = total.div_ceil(u128::from(history.requests));
    // At most `total`, which fits.
    Ok(Nanos(i64::try_from(average).unwrap_or(i64::MAX)))
}

/// `calls` requests of `def` at its [`per_request_cost`].
pub fn calls_cost(
    catalog: &Catalog,
    def: &EndpointDef,
    acct: &AccountState,
    calls: u64,
    history: History,
    now: Timestamp,
) -> Result<Nanos, QuoteError> {
    let per_call = per_request_cost(catalog, def, acct, history, now)?;
    u128::try_from(per_call.0)
        .ok()
        .and_then(|p| p.checked_mul(u128::from(calls)))
        .and_then(|c| i64::try_from(c).ok())
        .map(Nanos)
        .ok_or_else(|| QuoteError::Overflow(def.id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::document;
    use crate::ids::AccountId;
    use crate::ledger::CreditAccount;
    use crate::pricing::Discounts;

    const CATALOG: &str = r#"
prices_read_on = "2026-09-15"

[[endpoint]]
id = "fal-ai/flux/dev"
name = "FLUX.1 [dev]"
category = "text-to-image"
hold_units = "4"
price = { unit = "megapixel", unit_price = "0.025", rounding = "up" }

[[endpoint]]
id = "llm/chat"
name = "Chat"
category = "llm"
hold_units = "2000000"
price = { unit = "token", unit_price = "10", tokens = { per = "1000000", input = "2.5", output = "10" } }
"#;

    fn setup() -> (Catalog, AccountState) {
        let doc = document::parse(CATALOG).expect("catalog");
        let mut catalog = Catalog::default();
        for (i, e) in doc.endpoints.into_iter().enumerate() {
            catalog.insert_version(crate::catalog::PriceVersion {
                id: i as i64 + 1,
                endpoint: e.def.id.clone(),
                account: None,
                effective_from: Timestamp(0),
                rule: e.rule,
            });
            catalog.endpoints.insert(e.def.id.clone(), e.def);
        }
        let id = AccountId::parse("acme").unwrap();
        (catalog, AccountState::new(CreditAccount::new_prepaid(id)))
    }

    fn def<'a>(c: &'a Catalog, id: &str) -> &'a EndpointDef {
        &c.endpoints[&EndpointId::parse(id).unwrap()]
    }

    #[test]
    fn units_are_priced_and_discounted_as_a_line_item_is() {
        let (catalog, mut acct) = setup();
        let flux = def(&catalog, "fal-ai/flux/dev");
        let now = Timestamp(1);
        let p = list_price(&catalog, flux, &acct, now).unwrap();
        assert_eq!(
            (p.unit_price, p.unit.as_str()),
            (Decimal::new(25, 3), "megapixel")
        );
        // 3 MP at 0.025 = 0.075 USD; with 10% off, 0.0675.
        assert_eq!(
            units_cost(&catalog, flux, &acct, Decimal::from(3), now),
            Ok(Nanos(75_000_000))
        );
        acct.discounts = Discounts {
            percent_discount: Some(Decimal::from(10)),
            volume_tiers: Vec::new(),
        };
        assert_eq!(
            units_cost(&catalog, flux, &acct, Decimal::from(3), now),
            Ok(Nanos(67_500_000))
        );
        assert_eq!(
            units_cost(&catalog, flux, &acct, Decimal::MAX, now),
            Err(QuoteError::Overflow(flux.id.clone()))
        );
    }

    #[test]
    fn a_request_costs_its_average_rounded_up_or_a_typical_one() {
        let (catalog, acct) = setup();
        let now = Timestamp(1);
        let flux = def(&catalog, "fal-ai/flux/dev");
        let history = History {
            requests: 3,
            total: Nanos(100),
        };
        assert_eq!(
            per_request_cost(&catalog, flux, &acct, history, now),
            Ok(Nanos(34))
        );
        assert_eq!(
            calls_cost(&catalog, flux, &acct, 10, history, now),
            Ok(Nanos(340))
        );
        // No history: hold_units (4 MP) at the list price.
        let none = History::default();
        assert_eq!(
            per_request_cost(&catalog, flux, &acct, none, now),
            Ok(Nanos(100_000_000))
        );
        // A token price is shown per 1M tokens: 2M tokens held are 2 of its units.
        let chat = def(&catalog, "llm/chat");
        assert_eq!(
            typical_request_units(&catalog, chat, &acct, now),
            Ok(Decimal::from(2))
        );
        assert_eq!(
            calls_cost(&catalog, flux, &acct, u64::MAX, history, now),
            Err(QuoteError::Overflow(flux.id.clone()))
        );
    }
}
