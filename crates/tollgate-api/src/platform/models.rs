//! fal's model catalog operations: `GET /v1/models` (search, public), `GET /v1/models/pricing`
//! and `POST /v1/models/pricing/estimate` (API scope; an ADMIN key includes API).
//!
//! Prices are the caller's: the account's own price version when one is in force (enterprise
//! pricing), else the public one, exactly as a request submitted now would be priced
//! ([`tollgate_core::quote`]).

use super::paging;
use crate::error::ApiError;
use crate::extract::{Api, Customer, FromQuery, Json, NoParams, Params};
use crate::openapi::{tags, CustomerErrors};
use crate::query_string::{Query, MAX_IDS};
use crate::wire::{Number, Time};
use crate::AppState;
use axum::extract::State;
use rust_decimal::Decimal;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_core::catalog::EndpointStatus;
use tollgate_core::ids::EndpointId;
use tollgate_query::catalog::ModelsQuery;
use tollgate_query::prices::Estimate;
use tollgate_query::{Cursor, QueryError};
use utoipa::{IntoParams, ToSchema};

/// Models per page of `GET /v1/models` when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest `limit` accepted by `GET /v1/models`.
pub const MAX_LIMIT: usize = 200;
/// fal's smallest `unit_quantity`.
const MIN_UNIT_QUANTITY: Decimal = Decimal::from_parts(1, 0, 0, false, 6);

const EXPAND_OPENAPI: &str = "openapi-3.0";
const EXPAND_ENTERPRISE: &str = "enterprise_status";

// ---------------------------------------------------------------------------------------------
// GET /v1/models

/// A model's lifecycle state.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelStatus {
    Active,
    Deprecated,
}

impl From<EndpointStatus> for ModelStatus {
    fn from(s: EndpointStatus) -> Self {
        match s {
            EndpointStatus::Active => ModelStatus::Active,
            EndpointStatus::Deprecated => ModelStatus::Deprecated,
        }
    }
}

impl From<ModelStatus> for EndpointStatus {
    fn from(s: ModelStatus) -> Self {
        match s {
            ModelStatus::Active => EndpointStatus::Active,
            ModelStatus::Deprecated => EndpointStatus::Deprecated,
        }
    }
}

/// What `expand` may name.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub enum ModelsExpand {
    #[serde(rename = "openapi-3.0")]
    OpenApi,
    #[serde(rename = "enterprise_status")]
    EnterpriseStatus,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelsParams {
    /// Maximum number of items to return: default 50, at most 200.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 200)]
    limit: usize,
    /// Pagination cursor from a previous response (its `next_cursor`, unchanged).
    #[param(value_type = Option<String>, min_length = 1)]
    cursor: Option<Cursor>,
    /// Endpoint id(s) to retrieve: 1-50, repeated (`?endpoint_id=a&endpoint_id=b`) or
    /// comma-separated; unknown ids are simply absent.
    #[param(value_type = Option<Vec<EndpointId>>, style = Form, explode)]
    endpoint_id: Vec<EndpointId>,
    /// Free text: a case-insensitive substring of the id, display name, description or
    /// category.
    #[param(value_type = Option<String>)]
    q: Option<String>,
    /// A category (e.g. `text-to-image`), matched ignoring case.
    #[param(value_type = Option<String>)]
    category: Option<String>,
    /// Only models in this state.
    #[param(value_type = Option<ModelStatus>)]
    status: Option<ModelStatus>,
    /// `openapi-3.0` (answered with the error form: tollgate holds no model schemas) and
    /// `enterprise_status` (`ready` for active endpoints, the error form for deprecated ones).
    #[param(value_type = Option<Vec<ModelsExpand>>, style = Form, explode)]
    expand: Vec<String>,
}

impl FromQuery for ModelsParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let status = match q.one("status")? {
            None => None,
            Some("active") => Some(ModelStatus::Active),
            Some("deprecated") => Some(ModelStatus::Deprecated),
            Some(other) => {
                return Err(ApiError::invalid(
                    "status",
                    format!("status must be 'active' or 'deprecated', got '{other}'"),
                ))
            }
        };
        Ok(ModelsParams {
            limit: q.limit(DEFAULT_LIMIT, MAX_LIMIT)?,
            cursor: q.cursor()?,
            endpoint_id: q.ids("endpoint_id", EndpointId::parse)?,
            q: q.one("q")?.map(str::to_string),
            category: q.one("category")?.map(str::to_string),
            status,
            expand: super::expand::<ModelsExpand>(q)?.unwrap_or_default(),
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    display_name: String,
    category: String,
    description: String,
    status: ModelStatus,
    /// tollgate keeps no tags: always empty.
    tags: Vec<String>,
    /// When the endpoint's public price in force took effect.
    updated_at: Time,
    /// Always null: tollgate has no users to favour models.
    is_favorited: Option<bool>,
    /// Always empty: tollgate holds no thumbnails.
    thumbnail_url: String,
    /// Always empty.
    model_url: String,
    /// When the endpoint's first public price took effect.
    date: Time,
    highlighted: bool,
    pinned: bool,
}

/// fal's form of an expansion that has no value.
#[derive(Serialize, ToSchema)]
pub struct ExpansionError {
    error: ExpansionErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ExpansionErrorDetail {
    code: &'static str,
    message: &'static str,
}

impl ExpansionError {
    fn new(code: &'static str, message: &'static str) -> Self {
        ExpansionError {
            error: ExpansionErrorDetail { code, message },
        }
    }
}

/// `ready`, or the error form for a deprecated endpoint.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EnterpriseStatus {
    #[schema(value_type = String, example = "ready")]
    Ready(&'static str),
    Error(ExpansionError),
}

#[derive(Serialize, ToSchema)]
pub struct Model {
    endpoint_id: EndpointId,
    metadata: ModelMetadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    openapi: Option<ExpansionError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enterprise_status: Option<EnterpriseStatus>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    models: Vec<Model>,
    next_cursor: Option<String>,
    has_more: bool,
}

/// Model search
///
/// Lists, finds (`endpoint_id`) and searches (`q`, `category`, `status`) the catalog's model
/// endpoints, in `endpoint_id` order with keyset paging (`limit` default 50, at most 200).
/// No key is needed; a key that is sent must be a valid customer key (`API` or `ADMIN`; 401
/// or 403 otherwise). Metadata tollgate does not hold has its schema-valid empty value:
/// `tags` `[]`, `thumbnail_url` and `model_url` `""`, `is_favorited` `null`, `highlighted` and
/// `pinned` false; `date` is when the endpoint's first public price took effect and
/// `updated_at` when its public price in force did. Unknown parameters answer 400.
#[utoipa::path(
    get, path = "/v1/models", tag = tags::FAL, operation_id = "getModels",
    security((), ("Key" = ["API"])),
    params(ModelsParams),
    responses(CustomerErrors, (status = 200, description = "The models.", body = ModelList))
)]
pub async fn list(
    State(state): State<AppState>,
    _: Option<Customer<Api>>,
    Params(p): Params<ModelsParams>,
) -> Result<axum::Json<ModelList>, ApiError> {
    let catalog = state.engine.catalog();
    let query = ModelsQuery {
        endpoints: p.endpoint_id,
        text: p.q,
        category: p.category,
        status: p.status.map(Into::into),
        cursor: p.cursor,
        limit: p.limit,
    };
    let page = tollgate_query::catalog::models(&catalog, &query, state.engine.now())?;
    let openapi = p.expand.iter().any(|e| e == EXPAND_OPENAPI);
    let enterprise = p.expand.iter().any(|e| e == EXPAND_ENTERPRISE);
    let models = page
        .items
        .into_iter()
        .map(|m| Model {
            endpoint_id: m.def.id.clone(),
            metadata: ModelMetadata {
                display_name: m.def.display_name.clone(),
                category: m.def.category.clone(),
                description: m.def.description.clone(),
                status: m.def.status.into(),
                tags: Vec::new(),
                updated_at: Time(m.updated_at),
                is_favorited: None,
                thumbnail_url: String::new(),
                model_url: String::new(),
                date: Time(m.date),
                highlighted: false,
                pinned: false,
            },
            openapi: openapi.then(|| {
                ExpansionError::new(
                    "not_available",
                    "tollgate holds prices, not model schemas: see the platform's \
                     documentation of this endpoint",
                )
            }),
            enterprise_status: enterprise.then(|| match m.def.status {
                EndpointStatus::Active => EnterpriseStatus::Ready("ready"),
                EndpointStatus::Deprecated => EnterpriseStatus::Error(ExpansionError::new(
                    "deprecated",
                    "this endpoint is deprecated",
                )),
            }),
        })
        .collect();
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(ModelList {
        models,
        next_cursor,
        has_more,
    }))
}

// ---------------------------------------------------------------------------------------------
// GET /v1/models/pricing

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PricingParams {
    /// 1-50 endpoint ids, repeated or comma-separated.
    #[param(value_type = Vec<EndpointId>, style = Form, explode, min_items = 1, max_items = 50)]
    endpoint_id: Vec<EndpointId>,
}

impl FromQuery for PricingParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let ids = q.ids("endpoint_id", EndpointId::parse)?;
        if ids.is_empty() {
            return Err(ApiError::invalid(
                "endpoint_id",
                format!("endpoint_id is required: give 1-{MAX_IDS} endpoint ids"),
            ));
        }
        Ok(PricingParams { endpoint_id: ids })
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModelPrice {
    endpoint_id: EndpointId,
    /// USD per unit, before the account's percent discount: the rule's base rate (rates that
    /// depend on a request's output are not in it).
    unit_price: Number,
    unit: String,
    #[schema(value_type = String, example = "USD")]
    currency: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ModelPricing {
    /// Always null: every price fits one page.
    next_cursor: Option<String>,
    has_more: bool,
    prices: Vec<ModelPrice>,
}

/// Pricing
///
/// The caller's unit price of 1-50 endpoints, in the order asked: the account's own price
/// version when one is in force (enterprise pricing), else the public one, exactly as a
/// request submitted now would be priced. The price shown is the rule's base rate per billable
/// unit; attribute-conditional rates, multipliers, first blocks, add-ons, minimums and cost
/// steps are not in it (they depend on a request's output). Any unknown id answers 404 naming
/// every unknown id. Needs a customer key (`API` or `ADMIN`).
#[utoipa::path(
    get, path = "/v1/models/pricing", tag = tags::FAL, operation_id = "getPricing",
    security(("Key" = ["API"])),
    params(PricingParams),
    responses(
        CustomerErrors,
        (status = 200, description = "The prices.", body = ModelPricing),
        (status = 404, description = "`not_found`: an endpoint is not in the catalog (all \
            are named), or has no price in force.", body = crate::error::ErrorResponse),
    )
)]
pub async fn pricing(
    State(state): State<AppState>,
    who: Customer<Api>,
    Params(p): Params<PricingParams>,
) -> Result<axum::Json<ModelPricing>, ApiError> {
    let prices =
        tollgate_query::prices::list_prices(&state.engine, &who.account, &p.endpoint_id).await?;
    Ok(axum::Json(ModelPricing {
        next_cursor: None,
        has_more: false,
        prices: prices
            .into_iter()
            .map(|(endpoint_id, p)| ModelPrice {
                endpoint_id,
                unit_price: Number(p.unit_price),
                unit: p.unit,
                currency: "USD",
            })
            .collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// POST /v1/models/pricing/estimate

/// `estimate_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EstimateType {
    /// Calls x the account's average billed cost per request.
    HistoricalApiPrice,
    /// Units x the account's unit price.
    UnitPrice,
}

impl EstimateType {
    fn quantity_field(self) -> &'static str {
        match self {
            EstimateType::UnitPrice => "unit_quantity",
            EstimateType::HistoricalApiPrice => "call_quantity",
        }
    }
}

/// A JSON number (fal's quantities are numbers, not strings), read as the core reads one.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Decimal;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
            tollgate_core::decimal::from_number(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V).map(Some)
}

/// One endpoint of an estimate: the quantity its type takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Quantity {
    #[serde(default, deserialize_with = "number")]
    unit_quantity: Option<Decimal>,
    #[serde(default, deserialize_with = "number")]
    call_quantity: Option<Decimal>,
}

/// The body as read; [`EstimateBody::estimate`] checks it against its type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateBody {
    estimate_type: EstimateType,
    endpoints: BTreeMap<String, Quantity>,
}

impl EstimateBody {
    /// The estimate asked for; each refusal names its field path, e.g.
    /// `endpoints.fal-ai/flux/dev.unit_quantity`.
    fn estimate(self) -> Result<Estimate, ApiError> {
        let kind = self.estimate_type;
        let wanted = kind.quantity_field();
        if self.endpoints.is_empty() || self.endpoints.len() > MAX_IDS {
            return Err(ApiError::invalid(
                "endpoints",
                format!(
                    "`endpoints` must name 1-{MAX_IDS} endpoints, got {}",
                    self.endpoints.len()
                ),
            ));
        }
        let mut units = Vec::new();
        let mut calls = Vec::new();
        for (id, q) in self.endpoints {
            let path = format!("endpoints.{id}");
            let endpoint = EndpointId::parse(&id).map_err(|e| {
                ApiError::invalid(&path, format!("`{path}` is not an endpoint id: {e}"))
            })?;
            let (quantity, other) = match kind {
                EstimateType::UnitPrice => (q.unit_quantity, q.call_quantity),
                EstimateType::HistoricalApiPrice => (q.call_quantity, q.unit_quantity),
            };
            if other.is_some() {
                let other_field = match kind {
                    EstimateType::UnitPrice => "call_quantity",
                    EstimateType::HistoricalApiPrice => "unit_quantity",
                };
                let field = format!("{path}.{other_field}");
                return Err(ApiError::invalid(
                    &field,
                    format!("`{field}` is not a field of this estimate (it takes {wanted})"),
                ));
            }
            let field = format!("{path}.{wanted}");
            let q = quantity
                .ok_or_else(|| ApiError::invalid(&field, format!("`{field}` is required")))?;
            match kind {
                EstimateType::UnitPrice if q < MIN_UNIT_QUANTITY => {
                    return Err(ApiError::invalid(
                        &field,
                        format!("`{field}` must be at least 0.000001, got {q}"),
                    ))
                }
                EstimateType::UnitPrice => units.push((endpoint, q)),
                EstimateType::HistoricalApiPrice => {
                    let n = Some(q)
                        .filter(|q| q.fract().is_zero() && *q >= Decimal::ONE)
                        .and_then(|q| u64::try_from(q).ok())
                        .ok_or_else(|| {
                            ApiError::invalid(
                                &field,
                                format!("`{field}` must be an integer of at least 1, got {q}"),
                            )
                        })?;
                    calls.push((endpoint, n));
                }
            }
        }
        Ok(match kind {
            EstimateType::UnitPrice => Estimate::UnitPrice(units),
            EstimateType::HistoricalApiPrice => Estimate::Historical(calls),
        })
    }
}

/// The documented shape of an estimate: fal's `oneOf`. (It is read as [`EstimateBody`],
/// whose errors can name the field at fault.)
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PricingEstimateRequest {
    Historical(HistoricalEstimate),
    Units(UnitEstimate),
}

/// Calls of each endpoint at the account's average billed cost per request.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct HistoricalEstimate {
    #[schema(inline)]
    estimate_type: HistoricalTag,
    /// Endpoint ids to call quantities (1-50 endpoints).
    endpoints: BTreeMap<EndpointId, CallQuantity>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum HistoricalTag {
    HistoricalApiPrice,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CallQuantity {
    /// Number of API calls to estimate.
    #[schema(minimum = 1)]
    call_quantity: u64,
}

/// Units of each endpoint at the account's unit price.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UnitEstimate {
    #[schema(inline)]
    estimate_type: UnitTag,
    /// Endpoint ids to unit quantities (1-50 endpoints).
    endpoints: BTreeMap<EndpointId, UnitQuantity>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum UnitTag {
    UnitPrice,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct UnitQuantity {
    /// Billing units expected (images, seconds, 1M tokens, ...).
    #[schema(minimum = 0.000001)]
    unit_quantity: f64,
}

#[derive(Serialize, ToSchema)]
pub struct PricingEstimate {
    estimate_type: EstimateType,
    /// Total estimated cost across all endpoints, USD.
    total_cost: Number,
    #[schema(value_type = String, example = "USD")]
    currency: &'static str,
    /// tollgate's extension: `total_cost` exactly, in nano-USD.
    total_cost_nano_usd: i64,
}

/// Pricing estimate
///
/// What the caller's account would pay, in total.
///
/// - `unit_price`: per endpoint, `unit_quantity` x the account's unit price (as
///   `GET /v1/models/pricing` shows it), with its percent discount applied and rounded to
///   nano-USD as a line item is; the endpoint totals are summed exactly.
/// - `historical_api_price`: per endpoint, `call_quantity` x the account's average billed
///   cost per request over the last 30 days (total / requests, rounded up to the nano-USD).
///   With no billed request in that window, the cost of the endpoint's `hold_units` at the
///   account's unit price and discount stands in for a request.
///
/// The whole body is checked before anything is read: unknown fields are refused (a misspelt
/// quantity must not price as nothing), every endpoint must be in the catalog, and each error
/// names its field path (`endpoints.fal-ai/flux/dev.unit_quantity`). Needs a customer key
/// (`API` or `ADMIN`).
#[utoipa::path(
    post, path = "/v1/models/pricing/estimate", tag = tags::FAL, operation_id = "estimatePricing",
    security(("Key" = ["API"])),
    request_body = PricingEstimateRequest,
    responses(
        CustomerErrors,
        (status = 200, description = "The estimate.", body = PricingEstimate),
        (status = 404, description = "`not_found`: an endpoint has no price in force.",
            body = crate::error::ErrorResponse),
    )
)]
pub async fn estimate(
    State(state): State<AppState>,
    who: Customer<Api>,
    _: Params<NoParams>,
    Json(body): Json<EstimateBody>,
) -> Result<axum::Json<PricingEstimate>, ApiError> {
    let kind = body.estimate_type;
    let estimate = body.estimate()?;
    let total = tollgate_query::prices::estimate(&state.engine, &who.account, &estimate)
        .await
        .map_err(|e| match e {
            QueryError::UnknownEndpoints(ids) => {
                let path = format!("endpoints.{}", ids[0]);
                ApiError::invalid(&path, format!("`{path}` is not an endpoint of the catalog"))
            }
            QueryError::Overflow(id) => {
                let path = format!("endpoints.{id}.{}", kind.quantity_field());
                ApiError::invalid(
                    &path,
                    format!("`{path}` is too large: the estimate overflows"),
                )
            }
            other => other.into(),
        })?;
    Ok(axum::Json(PricingEstimate {
        estimate_type: kind,
        total_cost: Number::usd(total),
        currency: "USD",
        total_cost_nano_usd: total.0,
    }))
}
