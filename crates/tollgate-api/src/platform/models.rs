//! fal's model catalog operations: `GET /v1/models` (search, public), `GET /v1/models/pricing`
//! and `POST /v1/models/pricing/estimate` (API scope; an ADMIN key includes API).
//!
//! Prices are the caller's: the account's own price version when one is in force (enterprise
//! pricing), else the public one, exactly as a request submitted now would be priced. The
//! shown `unit_price` is the rule's base rate per billable unit; attribute-conditional rates,
//! multipliers, first blocks, add-ons, minimums and cost steps are not in it (they depend on a
//! request's output).

use crate::admin::{account_row, rfc3339};
use crate::auth::customer;
use crate::error::{parse_json, ApiError};
use crate::money::Number;
use crate::platform::params::{page, Query, MAX_IDS};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::str::FromStr;
use tollgate_core::catalog::{Catalog, EndpointDef, EndpointStatus};
use tollgate_core::ids::{AccountId, EndpointId};
use tollgate_core::machine::{percent_discount_at, AccountState};
use tollgate_core::money::MoneyError;
use tollgate_core::price::{Rated, Unit};
use tollgate_core::pricing::Charge;
use tollgate_core::time::MS_PER_DAY;
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::Scope;

/// Models per page of `GET /v1/models` when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest `limit` accepted by `GET /v1/models`.
pub const MAX_LIMIT: usize = 200;
/// `historical_api_price` averages the account's billed requests of this many trailing days.
pub const HISTORY_WINDOW_DAYS: i64 = 30;
/// fal's smallest `unit_quantity`.
const MIN_UNIT_QUANTITY: Decimal = Decimal::from_parts(1, 0, 0, false, 6);

const EXPAND_OPENAPI: &str = "openapi-3.0";
const EXPAND_ENTERPRISE: &str = "enterprise_status";

// ---------------------------------------------------------------------------------------------
// GET /v1/models

/// `GET /v1/models`: list, find (`endpoint_id`) and search (`q`, `category`, `status`) the
/// catalog, in `endpoint_id` order with keyset paging (the cursor is the last id shown).
///
/// Authentication is optional (the catalog is public); a key that is sent must be a valid
/// customer key. Metadata tollgate does not hold is given its schema-valid empty value: `tags`
/// `[]`, `thumbnail_url` and `model_url` `""`, `is_favorited` `null`; `date` is when the
/// endpoint's first public price took effect and `updated_at` when its public price in force
/// did. `expand=openapi-3.0` answers fal's error form (tollgate holds no model schemas);
/// `expand=enterprise_status` is `ready` for active endpoints and fal's error form for
/// deprecated ones.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        customer(&state, &headers, Scope::Api).await?;
    }
    let query = Query::parse(
        raw.as_deref(),
        &[
            "limit",
            "cursor",
            "endpoint_id",
            "q",
            "category",
            "status",
            "expand",
        ],
    )?;
    let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after: Option<String> = query.cursor()?;
    let ids = query.list("endpoint_id", MAX_IDS)?;
    let text = query.one("q")?.map(str::to_lowercase);
    let category = query.one("category")?;
    let status = query.one("status")?.map(parse_status).transpose()?;
    let expand = query
        .expand(&[EXPAND_OPENAPI, EXPAND_ENTERPRISE])?
        .unwrap_or_default();

    let catalog = state.engine.catalog();
    let (shown, next_cursor) = page(
        catalog
            .endpoints
            .values()
            .filter(|d| after.as_deref().is_none_or(|a| d.id.as_str() > a))
            .filter(|d| ids.is_empty() || ids.iter().any(|i| i == d.id.as_str()))
            .filter(|d| category.is_none_or(|c| d.category.eq_ignore_ascii_case(c)))
            .filter(|d| status.is_none_or(|s| d.status == s))
            .filter(|d| text.as_deref().is_none_or(|t| mentions(d, t))),
        limit,
        |last| last.id.to_string(),
    );
    let now = state.engine.now();
    let models: Vec<Value> = shown
        .into_iter()
        .map(|d| model_view(&catalog, d, now, &expand))
        .collect();
    Ok(Json(json!({
        "models": models,
        "has_more": next_cursor.is_some(),
        "next_cursor": next_cursor,
    })))
}

fn parse_status(s: &str) -> Result<EndpointStatus, ApiError> {
    match s {
        "active" => Ok(EndpointStatus::Active),
        "deprecated" => Ok(EndpointStatus::Deprecated),
        other => Err(ApiError::validation(format!(
            "status must be 'active' or 'deprecated', got '{other}'"
        ))
        .with("field", "status")),
    }
}

fn status_str(s: EndpointStatus) -> &'static str {
    match s {
        EndpointStatus::Active => "active",
        EndpointStatus::Deprecated => "deprecated",
    }
}

/// `q` matches a case-insensitive substring of the id, display name, description or category.
fn mentions(d: &EndpointDef, lowercase_text: &str) -> bool {
    [d.id.as_str(), &d.display_name, &d.description, &d.category]
        .iter()
        .any(|field| field.to_lowercase().contains(lowercase_text))
}

/// fal's `{"error": {"code", "message"}}` form of an expansion that has no value.
fn expansion_error(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

fn model_view(catalog: &Catalog, d: &EndpointDef, now: Timestamp, expand: &[String]) -> Value {
    let public = catalog
        .versions
        .get(&(d.id.clone(), None))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let first = public.first().map(|v| v.effective_from);
    let in_force = public
        .iter()
        .rev()
        .find(|v| v.effective_from <= now)
        .map(|v| v.effective_from)
        .or(first);
    // Every catalog entry has a public price, so both times exist; the epoch is never shown.
    let time = |t: Option<Timestamp>| rfc3339(t.unwrap_or_default());
    let mut model = json!({
        "endpoint_id": d.id.as_str(),
        "metadata": {
            "display_name": d.display_name,
            "category": d.category,
            "description": d.description,
            "status": status_str(d.status),
            "tags": [],
            "updated_at": time(in_force),
            "is_favorited": null,
            "thumbnail_url": "",
            "model_url": "",
            "date": time(first),
            "highlighted": false,
            "pinned": false,
        },
    });
    if expand.iter().any(|e| e == EXPAND_OPENAPI) {
        model["openapi"] = expansion_error(
            "not_available",
            "tollgate holds prices, not model schemas: see the platform's documentation of this endpoint",
        );
    }
    if expand.iter().any(|e| e == EXPAND_ENTERPRISE) {
        model["enterprise_status"] = match d.status {
            EndpointStatus::Active => json!("ready"),
            EndpointStatus::Deprecated => {
                expansion_error("deprecated", "this endpoint is deprecated")
            }
        };
    }
    model
}

// ---------------------------------------------------------------------------------------------
// Prices

/// What `account` pays per billable unit of `def` now, before its percent discount, and the
/// unit's label: the base rate of the price version in force for it (its own, else the public
/// one). `None` when no version is in force.
fn unit_price(
    catalog: &Catalog,
    def: &EndpointDef,
    account: &AccountId,
    now: Timestamp,
) -> Option<(Decimal, String)> {
    let rule = &catalog.price_at(&def.id, account, now)?.rule;
    let price = rule.headline_unit_price(catalog.machine_price(def.machine_type.as_ref()))?;
    Some((price, rule.unit_label()))
}

/// What `units` billable units of `def` cost the account now: units x its unit price, with its
/// percent discount applied and rounded once to nano-USD, as a line item is (`Charge::new`).
fn cost_of_units(
    catalog: &Catalog,
    def: &EndpointDef,
    acct: &AccountState,
    units: Decimal,
    now: Timestamp,
) -> Result<Option<Nanos>, MoneyError> {
    let Some((unit_price, _)) = unit_price(catalog, def, &acct.credit.id, now) else {
        return Ok(None);
    };
    let subtotal = units.checked_mul(unit_price).ok_or(MoneyError::Overflow)?;
    let rated = Rated {
        quantity: units,
        unit_price,
        subtotal,
        blended: false,
    };
    Ok(Some(
        Charge::new(&rated, percent_discount_at(acct, def, now))?.total_nanos,
    ))
}

/// The endpoint's `hold_units` in the unit its price is shown in: a token price counts held
/// tokens but is shown per `tokens.per` tokens (`1M tokens`); every other price holds billable
/// units, the unit it is shown in.
fn hold_units(
    catalog: &Catalog,
    def: &EndpointDef,
    acct: &AccountState,
    now: Timestamp,
) -> Decimal {
    let per = catalog
        .price_at(&def.id, &acct.credit.id, now)
        .and_then(|v| match (&v.rule.unit, &v.rule.tokens) {
            (Unit::Token, Some(t)) => Some(t.per),
            _ => None,
        });
    match per {
        Some(per) if !per.is_zero() => def.hold_units / per,
        _ => def.hold_units,
    }
}

fn no_price(id: &EndpointId) -> ApiError {
    ApiError::not_found(format!("{id} has no price in force")).with("field", "endpoint_id")
}

/// `GET /v1/models/pricing?endpoint_id=...`: the caller's unit price of 1-50 endpoints, in the
/// order asked. Any unknown id answers 404 naming every unknown id. All prices fit one page:
/// `next_cursor` is null and `has_more` false.
pub async fn pricing(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Api).await?;
    let query = Query::parse(raw.as_deref(), &["endpoint_id"])?;
    let ids = query.list("endpoint_id", MAX_IDS)?;
    if ids.is_empty() {
        return Err(ApiError::validation(format!(
            "endpoint_id is required: give 1-{MAX_IDS} endpoint ids"
        ))
        .with("field", "endpoint_id"));
    }
    let catalog = state.engine.catalog();
    let now = state.engine.now();
    let defs: Vec<Option<&EndpointDef>> = ids
        .iter()
        .map(|id| {
            EndpointId::parse(id)
                .ok()
                .and_then(|id| catalog.endpoints.get(&id))
        })
        .collect();
    let unknown: Vec<&str> = ids
        .iter()
        .zip(&defs)
        .filter(|(_, d)| d.is_none())
        .map(|(id, _)| id.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(
            ApiError::not_found(format!("unknown endpoint_id: {}", unknown.join(", ")))
                .with("field", "endpoint_id"),
        );
    }
    let mut prices = Vec::with_capacity(defs.len());
    for def in defs.into_iter().flatten() {
        let (price, unit) =
            unit_price(&catalog, def, &account, now).ok_or_else(|| no_price(&def.id))?;
        prices.push(json!({
            "endpoint_id": def.id.as_str(),
            "unit_price": Number(price),
            "unit": unit,
            "currency": "USD",
        }));
    }
    Ok(Json(json!({
        "next_cursor": null,
        "has_more": false,
        "prices": prices,
    })))
}

// ---------------------------------------------------------------------------------------------
// POST /v1/models/pricing/estimate

/// A parsed estimate request: per endpoint, the units (`unit_price`) or calls
/// (`historical_api_price`) to price.
enum Estimate {
    UnitPrice(Vec<(EndpointDef, Decimal)>),
    Historical(Vec<(EndpointDef, u64)>),
}

impl Estimate {
    fn kind(&self) -> &'static str {
        match self {
            Estimate::UnitPrice(_) => "unit_price",
            Estimate::Historical(_) => "historical_api_price",
        }
    }

    /// Parses and checks the whole body before anything is read: the shape is fal's `oneOf`,
    /// unknown fields are refused (a misspelt quantity must not price as nothing), every
    /// endpoint must be in the catalog, and each error names its field path, e.g.
    /// `endpoints.fal-ai/flux/dev.unit_quantity`.
    fn parse(body: &[u8], catalog: &Catalog) -> Result<Estimate, ApiError> {
        let invalid = |field: &str, message: String| {
            ApiError::validation(format!("`{field}` {message}")).with("field", field)
        };
        let body: Value = parse_json(body)?;
        let Value::Object(fields) = body else {
            return Err(ApiError::validation("the body must be a JSON object"));
        };
        if let Some(other) = fields
            .keys()
            .find(|k| !["estimate_type", "endpoints"].contains(&k.as_str()))
        {
            return Err(invalid(
                other,
                "is not a field of an estimate (estimate_type, endpoints)".into(),
            ));
        }
        let kind = match fields.get("estimate_type") {
            Some(Value::String(s)) if s == "unit_price" || s == "historical_api_price" => {
                s.as_str()
            }
            Some(other) => {
                return Err(invalid(
                    "estimate_type",
                    format!("must be 'unit_price' or 'historical_api_price', got {other}"),
                ))
            }
            None => return Err(invalid("estimate_type", "is required".into())),
        };
        let quantity_field = match kind {
            "unit_price" => "unit_quantity",
            _ => "call_quantity",
        };
        let endpoints = match fields.get("endpoints") {
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(invalid(
                    "endpoints",
                    format!("must be an object of endpoint ids to {{\"{quantity_field}\": ...}}"),
                ))
            }
            None => return Err(invalid("endpoints", "is required".into())),
        };
        if endpoints.is_empty() || endpoints.len() > MAX_IDS {
            return Err(invalid(
                "endpoints",
                format!("must name 1-{MAX_IDS} endpoints, got {}", endpoints.len()),
            ));
        }
        let mut lines = Vec::with_capacity(endpoints.len());
        for (id, spec) in endpoints {
            let path = format!("endpoints.{id}");
            let def = EndpointId::parse(id)
                .ok()
                .and_then(|id| catalog.endpoints.get(&id))
                .ok_or_else(|| invalid(&path, "is not an endpoint of the catalog".into()))?;
            let Value::Object(spec) = spec else {
                return Err(invalid(
                    &path,
                    format!("must be an object {{\"{quantity_field}\": ...}}"),
                ));
            };
            if let Some(other) = spec.keys().find(|k| *k != quantity_field) {
                return Err(invalid(
                    &format!("{path}.{other}"),
                    format!("is not a field of a {kind} estimate (it takes {quantity_field})"),
                ));
            }
            let field = format!("{path}.{quantity_field}");
            let quantity = match spec.get(quantity_field) {
                Some(Value::Number(n)) => {
                    let text = n.to_string();
                    Decimal::from_str(&text)
                        .or_else(|_| Decimal::from_scientific(&text))
                        .map_err(|_| invalid(&field, format!("is out of range: {text}")))?
                }
                Some(other) => {
                    return Err(invalid(&field, format!("must be a number, got {other}")))
                }
                None => return Err(invalid(&field, "is required".into())),
            };
            lines.push((def.clone(), quantity, field));
        }
        if kind == "unit_price" {
            let mut out = Vec::with_capacity(lines.len());
            for (def, q, field) in lines {
                if q < MIN_UNIT_QUANTITY {
                    return Err(invalid(
                        &field,
                        format!("must be at least 0.000001, got {q}"),
                    ));
                }
                out.push((def, q));
            }
            Ok(Estimate::UnitPrice(out))
        } else {
            let mut out = Vec::with_capacity(lines.len());
            for (def, q, field) in lines {
                let calls = Some(q)
                    .filter(|q| q.fract().is_zero() && *q >= Decimal::ONE)
                    .and_then(|q| q.to_u64())
                    .ok_or_else(|| {
                        invalid(&field, format!("must be an integer of at least 1, got {q}"))
                    })?;
                out.push((def, calls));
            }
            Ok(Estimate::Historical(out))
        }
    }
}

/// `POST /v1/models/pricing/estimate`: what the caller's account would pay, in total.
///
/// - `unit_price`: per endpoint, `unit_quantity` x the account's unit price (as
///   `GET /v1/models/pricing` shows it), with its percent discount applied and rounded to
///   nano-USD as a line item is; the endpoint totals are summed exactly.
/// - `historical_api_price`: per endpoint, `call_quantity` x the account's average billed cost
///   per request over the last [`HISTORY_WINDOW_DAYS`] days (total / requests, rounded up to
///   the nano-USD). With no billed request in that window, the cost of the endpoint's
///   `hold_units` at the account's unit price and discount stands in for a request.
///
/// `total_cost` is USD; `total_cost_nano_usd` (a tollgate extension) is the same exactly.
pub async fn estimate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Api).await?;
    let catalog = state.engine.catalog();
    let estimate = Estimate::parse(&body, &catalog)?;
    let now = state.engine.now();
    let row = account_row(&state, &account).await?;
    let acct = &row.state;
    let overflow = |def: &EndpointDef, field: &str| {
        let path = format!("endpoints.{}.{field}", def.id);
        ApiError::validation(format!("`{path}` is too large: the estimate overflows"))
            .with("field", path)
    };
    let mut total = Nanos::ZERO;
    match &estimate {
        Estimate::UnitPrice(lines) => {
            for (def, units) in lines {
                let cost = cost_of_units(&catalog, def, acct, *units, now)
                    .map_err(|_| overflow(def, "unit_quantity"))?
                    .ok_or_else(|| no_price(&def.id))?;
                total = total
                    .checked_add(cost)
                    .map_err(|_| overflow(def, "unit_quantity"))?;
            }
        }
        Estimate::Historical(lines) => {
            let since = now.minus_ms(HISTORY_WINDOW_DAYS * MS_PER_DAY);
            let endpoints: Vec<EndpointId> = lines.iter().map(|(d, _)| d.id.clone()).collect();
            let history = state
                .engine
                .read(move |r| {
                    endpoints
                        .iter()
                        .map(|e| r.endpoint_history(&account, e, since, now))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?;
            for ((def, calls), (billed_calls, billed)) in lines.iter().zip(history) {
                let per_call = if billed_calls > 0 {
                    average_rounded_up(billed, billed_calls)
                } else {
                    cost_of_units(
                        &catalog,
                        def,
                        acct,
                        hold_units(&catalog, def, acct, now),
                        now,
                    )
                    .map_err(|_| overflow(def, "call_quantity"))?
                    .ok_or_else(|| no_price(&def.id))?
                };
                let cost = u128::try_from(per_call.0)
                    .ok()
                    .and_then(|p| p.checked_mul(u128::from(*calls)))
                    .and_then(|c| i64::try_from(c).ok())
                    .map(Nanos)
                    .ok_or_else(|| overflow(def, "call_quantity"))?;
                total = total
                    .checked_add(cost)
                    .map_err(|_| overflow(def, "call_quantity"))?;
            }
        }
    }
    Ok(Json(json!({
        "estimate_type": estimate.kind(),
        "total_cost": Number::usd(total),
        "currency": "USD",
        "total_cost_nano_usd": total.0,
    })))
}

/// `total / calls`, rounded up to the nano-USD (an average never understates a request).
fn average_rounded_up(total: Nanos, calls: u64) -> Nanos {
    let total = u128::try_from(total.0).unwrap_or(0);
    let average = total.div_ceil(u128::from(calls));
    // At most `total`, which fits.
    Nanos(i64::try_from(average).unwrap_or(i64::MAX))
}
