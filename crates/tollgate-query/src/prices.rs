//! An account's prices and cost estimates: fal's `GET /models/pricing` and
//! `POST /models/pricing/estimate`, priced by the core ([`tollgate_core::quote`]) with the
//! account's own prices and discounts, exactly as a request submitted now would be.

use crate::QueryError;
use rust_decimal::Decimal;
use tollgate_core::catalog::EndpointDef;
use tollgate_core::ids::{AccountId, EndpointId};
use tollgate_core::quote::{self, History, ListPrice, QuoteError};
use tollgate_core::time::MS_PER_DAY;
use tollgate_core::Nanos;
use tollgate_engine::Engine;

/// `historical_api_price` averages the account's billed requests of this many trailing days.
pub const HISTORY_WINDOW_DAYS: i64 = 30;

impl From<QuoteError> for QueryError {
    fn from(e: QuoteError) -> Self {
        match e {
            QuoteError::NoPrice(id) => QueryError::NoPrice(id),
            QuoteError::Overflow(id) => QueryError::Overflow(id),
        }
    }
}

/// The catalog's definitions of `ids`, in order; every unknown id is named in the error.
fn defs(engine: &Engine, ids: &[EndpointId]) -> Result<Vec<EndpointDef>, QueryError> {
    let catalog = engine.catalog();
    let unknown: Vec<EndpointId> = ids
        .iter()
        .filter(|id| !catalog.endpoints.contains_key(*id))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(QueryError::UnknownEndpoints(unknown));
    }
    Ok(ids.iter().map(|id| catalog.endpoints[id].clone()).collect())
}

/// The account's list price of each endpoint, in the order asked.
pub async fn list_prices(
    engine: &Engine,
    account: &AccountId,
    endpoints: &[EndpointId],
) -> Result<Vec<(EndpointId, ListPrice)>, QueryError> {
    let defs = defs(engine, endpoints)?;
    let acct = crate::account(engine, account).await?.state;
    let (catalog, now) = (engine.catalog(), engine.now());
    defs.into_iter()
        .map(|def| {
            let price = quote::list_price(&catalog, &def, &acct, now)
                .ok_or_else(|| QueryError::NoPrice(def.id.clone()))?;
            Ok((def.id, price))
        })
        .collect()
}

/// What to estimate, per endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Estimate {
    /// Units of each endpoint at the account's list price and discount.
    UnitPrice(Vec<(EndpointId, Decimal)>),
    /// Calls of each endpoint at the account's average billed cost per request over the last
    /// [`HISTORY_WINDOW_DAYS`] days (a typical request when it has none).
    Historical(Vec<(EndpointId, u64)>),
}

/// The estimate's total, summed exactly from each endpoint's cost rounded as a line item is.
pub async fn estimate(
    engine: &Engine,
    account: &AccountId,
    estimate: &Estimate,
) -> Result<Nanos, QueryError> {
    let ids: Vec<EndpointId> = match estimate {
        Estimate::UnitPrice(lines) => lines.iter().map(|(e, _)| e.clone()).collect(),
        Estimate::Historical(lines) => lines.iter().map(|(e, _)| e.clone()).collect(),
    };
    let defs = defs(engine, &ids)?;
    let acct = crate::account(engine, account).await?.state;
    let (catalog, now) = (engine.catalog(), engine.now());
    let costs: Vec<Nanos> = match estimate {
        Estimate::UnitPrice(lines) => defs
            .iter()
            .zip(lines)
            .map(|(def, (_, units))| quote::units_cost(&catalog, def, &acct, *units, now))
            .collect::<Result<_, _>>()?,
        Estimate::Historical(lines) => {
            let since = now.minus_ms(HISTORY_WINDOW_DAYS * MS_PER_DAY);
            let (account, endpoints) = (account.clone(), ids.clone());
            let history = engine
                .read(move |r| {
                    endpoints
                        .iter()
                        .map(|e| r.endpoint_history(&account, e, since, now))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            defs.iter()
                .zip(lines)
                .zip(history)
                .map(|((def, (_, calls)), (requests, total))| {
                    let history = History { requests, total };
                    quote::calls_cost(&catalog, def, &acct, *calls, history, now)
                })
                .collect::<Result<_, _>>()?
        }
    };
    defs.iter()
        .zip(costs)
        .try_fold(Nanos::ZERO, |sum, (def, cost)| {
            sum.checked_add(cost)
                .map_err(|_| QueryError::Overflow(def.id.clone()))
        })
}
