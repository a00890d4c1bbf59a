//! `GET /v1/models/usage` and `GET /v1/models/billing-events` (ADMIN scope): what an account
//! was billed, grouped as fal groups it, and request by request. Assembled by
//! `tollgate-query` from the rollups and line items; rendered here in fal's shape.

use super::paging;
use crate::error::ApiError;
use crate::extract::{names_of, Admin, Customer, FromQuery, Params};
use crate::openapi::{tags, AdminErrors};
use crate::query_string::{Query, MAX_IDS};
use crate::wire::{Number, Time};
use crate::AppState;
use axum::extract::State;
use serde::Serialize;
use tollgate_core::ids::{ApiKeyId, EndpointId, RequestId};
use tollgate_query::timeframe::{parse_timezone, resolve, Moment, RangeSpec, Timeframe};
use tollgate_query::usage::{AuthMethod, BillingEvent, UsageRow};
use tollgate_query::Cursor;
use utoipa::{IntoParams, ToSchema};

/// Usage rows per page by default, and at most.
pub(crate) const USAGE_LIMIT: (usize, usize) = (1000, 10_000);
/// Billing events per page by default, and at most (fal's cap).
const EVENTS_LIMIT: (usize, usize) = (100, 10_000);

// ---------------------------------------------------------------------------------------------
// The time range, shared by usage and analytics

/// fal's time-range parameters (docs/reference/fal-billing.md section 4).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RangeParams {
    /// Start: an RFC 3339 date-time with offset (`2025-01-01T00:00:00Z`) or a date
    /// (`2025-01-01`, local midnight in `timezone`). Default: a day before `end`.
    #[param(value_type = Option<String>, example = "2025-01-01T00:00:00Z")]
    start: (),
    /// End, exclusive; as `start`. Default: now.
    #[param(value_type = Option<String>, example = "2025-02-01")]
    end: (),
    /// The IANA time zone buckets are aligned in (a day is a local calendar day). Default UTC.
    #[param(value_type = Option<String>, example = "America/New_York")]
    timezone: (),
    /// The bucket width. Default by the range's length: minute under 2 hours, hour under 2
    /// days, day under 64 days, week (Monday 00:00 local) under 183 days, else month.
    #[param(value_type = Option<TimeframeName>)]
    timeframe: (),
    /// Snap `start` and `end` out to bucket edges (default `true`).
    #[param(value_type = Option<BoundToTimeframe>)]
    bound_to_timeframe: (),
}

/// A bucket width.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeframeName {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl TimeframeName {
    pub fn of(t: Timeframe) -> TimeframeName {
        match t {
            Timeframe::Minute => TimeframeName::Minute,
            Timeframe::Hour => TimeframeName::Hour,
            Timeframe::Day => TimeframeName::Day,
            Timeframe::Week => TimeframeName::Week,
            Timeframe::Month => TimeframeName::Month,
        }
    }
}

/// `true` or `false`, as fal sends it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum BoundToTimeframe {
    True,
    False,
}

/// A `start` or `end` parameter, parsed.
pub(crate) fn moment(q: &Query, name: &str) -> Result<Option<Moment>, ApiError> {
    q.one(name)?
        .map(|t| Moment::parse(t).map_err(|e| ApiError::invalid(name, format!("{name} {e}"))))
        .transpose()
}

/// The range a query names, parsed (each error names its parameter).
pub(crate) fn range_spec(q: &Query) -> Result<RangeSpec, ApiError> {
    Ok(RangeSpec {
        tz: q
            .one("timezone")?
            .map(|t| parse_timezone(t).map_err(|e| ApiError::invalid("timezone", e)))
            .transpose()?
            .unwrap_or(chrono_tz::Tz::UTC),
        end: moment(q, "end")?,
        start: moment(q, "start")?,
        timeframe: timeframe(q)?,
        bound_to_timeframe: q.flag("bound_to_timeframe", true)?,
    })
}

/// The `timeframe` parameter, parsed.
pub(crate) fn timeframe(q: &Query) -> Result<Option<Timeframe>, ApiError> {
    q.one("timeframe")?
        .map(|t| {
            Timeframe::parse(t).ok_or_else(|| {
                ApiError::invalid(
                    "timeframe",
                    format!("unknown timeframe '{t}'; allowed: minute, hour, day, week, month"),
                )
            })
        })
        .transpose()
}

/// fal's `auth_method` and `auth_method_structured` fields of a row, when asked for.
#[derive(Default, Serialize, ToSchema)]
pub struct AuthFields {
    /// The key's alias ("API Key" when it has none; "None" for usage reported without a key).
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_method_structured: Option<AuthMethodStructured>,
}

#[derive(Serialize, ToSchema)]
pub struct AuthMethodStructured {
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_id: Option<ApiKeyId>,
}

/// Which of the auth fields `expand` asked for.
#[derive(Clone, Copy, Default)]
struct AuthExpand {
    label: bool,
    structured: bool,
}

impl AuthExpand {
    fn of(expand: &[String]) -> AuthExpand {
        AuthExpand {
            label: expand.iter().any(|e| e == "auth_method"),
            structured: expand.iter().any(|e| e == "auth_method_structured"),
        }
    }

    fn any(self) -> bool {
        self.label || self.structured
    }

    fn fields(self, auth: Option<AuthMethod>) -> AuthFields {
        let Some(a) = auth else {
            return AuthFields::default();
        };
        AuthFields {
            auth_method: self.label.then(|| a.detail.clone()),
            auth_method_structured: self.structured.then_some(AuthMethodStructured {
                detail: a.detail,
                api_key_id: a.api_key,
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GET /v1/models/usage

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum UsageExpand {
    TimeSeries,
    Summary,
    AuthMethod,
    AuthMethodStructured,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Rows per page: default 1000, at most 10000.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 10000)]
    limit: usize,
    /// Pagination cursor from a previous response (its `next_cursor`, unchanged).
    #[param(value_type = Option<String>, min_length = 1)]
    cursor: Option<Cursor>,
    /// Only these endpoints: 1-50, repeated or comma-separated.
    #[param(value_type = Option<Vec<EndpointId>>, style = Form, explode)]
    endpoint_id: Vec<EndpointId>,
    /// Only usage made with these keys: 1-50, repeated or comma-separated.
    #[param(value_type = Option<Vec<ApiKeyId>>, style = Form, explode)]
    api_key_id: Vec<ApiKeyId>,
    /// Team member logins (1-50). tollgate's requests are made with API keys, so this
    /// matches nothing.
    #[param(value_type = Option<Vec<String>>, style = Form, explode)]
    login_username: Vec<String>,
    /// `time_series` (buckets), `summary` (the whole range), and `auth_method` /
    /// `auth_method_structured` (group and label rows by key). Default `time_series`; at
    /// least one of `time_series` or `summary`.
    #[param(value_type = Option<Vec<UsageExpand>>, style = Form, explode)]
    expand: Vec<String>,
    #[param(ignore)]
    range: RangeSpec,
}

impl FromQuery for UsageParams {
    fn names() -> Vec<String> {
        [names_of::<Self>(), names_of::<RangeParams>()].concat()
    }
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let expand = super::expand::<UsageExpand>(q)?.unwrap_or_else(|| vec!["time_series".into()]);
        if !expand.iter().any(|e| e == "time_series" || e == "summary") {
            return Err(ApiError::invalid(
                "expand",
                "expand must include at least one of `time_series` or `summary`",
            ));
        }
        Ok(UsageParams {
            limit: q.limit(USAGE_LIMIT.0, USAGE_LIMIT.1)?,
            cursor: q.cursor()?,
            endpoint_id: q.ids("endpoint_id", EndpointId::parse)?,
            api_key_id: q.ids("api_key_id", ApiKeyId::parse)?,
            login_username: q.list("login_username", MAX_IDS)?,
            expand,
            range: range_spec(q)?,
        })
    }
}

/// One usage row: fal's grouping by endpoint, unit, unit price and percent discount.
#[derive(Serialize, ToSchema)]
pub struct UsageItem {
    endpoint_id: EndpointId,
    unit: String,
    quantity: Number,
    /// USD per unit before the discount (for blended prices, the row's average rate).
    unit_price: Number,
    percent_discount: Option<Number>,
    cost_subtotal: Number,
    cost_discount: Number,
    cost_total: Number,
    /// fal's older name of `cost_total`.
    cost: Number,
    #[schema(value_type = String, example = "USD")]
    currency: &'static str,
    #[serde(flatten)]
    auth: AuthFields,
}

#[derive(Serialize, ToSchema)]
pub struct UsageBucket {
    /// The bucket's start in the range's time zone, with its offset.
    bucket: String,
    results: Vec<UsageItem>,
}

#[derive(Serialize, ToSchema)]
pub struct UsageAnswer {
    /// Cursor for the next page of the time series, null if no more pages.
    next_cursor: Option<String>,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_series: Option<Vec<UsageBucket>>,
    /// The whole range, the same on every page.
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Vec<UsageItem>>,
}

fn usage_item(row: UsageRow, auth: AuthExpand) -> UsageItem {
    UsageItem {
        endpoint_id: row.endpoint,
        unit: row.unit,
        quantity: Number(row.quantity),
        unit_price: Number(row.unit_price),
        percent_discount: row.percent_discount.map(Number),
        cost_subtotal: Number::usd(row.subtotal),
        cost_discount: Number::usd(row.discount),
        cost_total: Number::usd(row.total),
        cost: Number::usd(row.total),
        currency: "USD",
        auth: auth.fields(row.auth),
    }
}

/// Usage
///
/// The account's billed usage, grouped per bucket by endpoint, unit, unit price and percent
/// discount (and key when `auth_method` or `auth_method_structured` is expanded), with the
/// quantity, the pre-discount unit price and `cost_subtotal`, the discount and the final
/// `cost_total`. Answered from per-minute usage rollups written in the same commit as the
/// line items, so it never scans line items and always agrees with the billing events and
/// the ledger. `start` and `end` resolve to whole minutes; buckets carry the time zone's
/// offset at their start, across daylight-saving changes (a day may be 23 or 25 hours); only
/// buckets with usage appear. Paging (`limit` default 1000, at most 10000) is over the time
/// series' rows in order, with an opaque keyset cursor, so a page never repeats or skips a row
/// while usage arrives; `summary` covers the whole range and is the same on every page. Needs
/// a customer key with `ADMIN` scope and shows only that key's account; every bad parameter
/// answers 400 naming it.
#[utoipa::path(
    get, path = "/v1/models/usage", tag = tags::FAL, operation_id = "getUsage",
    security(("Key" = ["ADMIN"])),
    params(UsageParams, RangeParams),
    responses(AdminErrors, (status = 200, description = "The usage.", body = UsageAnswer))
)]
pub async fn usage(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(p): Params<UsageParams>,
) -> Result<axum::Json<UsageAnswer>, ApiError> {
    let auth = AuthExpand::of(&p.expand);
    let q = tollgate_query::usage::UsageQuery {
        account: who.account,
        range: resolve(&p.range, state.engine.now())?,
        endpoints: p.endpoint_id,
        api_keys: p.api_key_id,
        by_login: !p.login_username.is_empty(),
        time_series: p.expand.iter().any(|e| e == "time_series"),
        summary: p.expand.iter().any(|e| e == "summary"),
        by_key: auth.any(),
        cursor: p.cursor,
        limit: p.limit,
    };
    let usage = tollgate_query::usage::usage(&state.engine, q).await?;
    let (next_cursor, has_more) = paging(usage.next_cursor);
    Ok(axum::Json(UsageAnswer {
        next_cursor,
        has_more,
        time_series: usage.time_series.map(|series| {
            series
                .into_iter()
                .map(|b| UsageBucket {
                    bucket: b.bucket,
                    results: b.results.into_iter().map(|r| usage_item(r, auth)).collect(),
                })
                .collect()
        }),
        summary: usage
            .summary
            .map(|rows| rows.into_iter().map(|r| usage_item(r, auth)).collect()),
    }))
}

// ---------------------------------------------------------------------------------------------
// GET /v1/models/billing-events

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum EventsExpand {
    AuthMethod,
    AuthMethodStructured,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Events per page: default 100, at most 10000.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 10000)]
    limit: usize,
    /// Pagination cursor from a previous response (its `next_cursor`, unchanged).
    #[param(value_type = Option<String>, min_length = 1)]
    cursor: Option<Cursor>,
    /// Start, an exact instant: an RFC 3339 date-time with offset, or a date (midnight UTC).
    /// Default: a day before `end`. The range may span at most 90 days.
    #[param(value_type = Option<String>, example = "2025-01-01T00:00:00Z")]
    start: Option<Moment>,
    /// End, exclusive; as `start`. Default: now.
    #[param(value_type = Option<String>, example = "2025-01-02T00:00:00Z")]
    end: Option<Moment>,
    /// Only these endpoints: 1-50, repeated or comma-separated.
    #[param(value_type = Option<Vec<EndpointId>>, style = Form, explode)]
    endpoint_id: Vec<EndpointId>,
    /// Only these requests: 1-50, repeated or comma-separated.
    #[param(value_type = Option<Vec<RequestId>>, style = Form, explode)]
    request_id: Vec<RequestId>,
    /// Only requests made with these keys: 1-50, repeated or comma-separated.
    #[param(value_type = Option<Vec<ApiKeyId>>, style = Form, explode)]
    api_key_id: Vec<ApiKeyId>,
    /// Team member logins (1-50). tollgate's requests are made with API keys, so this
    /// matches nothing.
    #[param(value_type = Option<Vec<String>>, style = Form, explode)]
    login_username: Vec<String>,
    /// `auth_method` and `auth_method_structured` label each event with its key.
    #[param(value_type = Option<Vec<EventsExpand>>, style = Form, explode)]
    expand: Vec<String>,
}

impl FromQuery for EventsParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        Ok(EventsParams {
            limit: q.limit(EVENTS_LIMIT.0, EVENTS_LIMIT.1)?,
            cursor: q.cursor()?,
            start: moment(q, "start")?,
            end: moment(q, "end")?,
            endpoint_id: q.ids("endpoint_id", EndpointId::parse)?,
            request_id: q.ids("request_id", RequestId::parse)?,
            api_key_id: q.ids("api_key_id", ApiKeyId::parse)?,
            login_username: q.list("login_username", MAX_IDS)?,
            expand: super::expand::<EventsExpand>(q)?.unwrap_or_default(),
        })
    }
}

/// One billed request.
#[derive(Serialize, ToSchema)]
pub struct BillingEventItem {
    request_id: RequestId,
    endpoint_id: EndpointId,
    /// When it was billed: a usage event's own time, or when the request completed.
    timestamp: Time,
    output_units: Number,
    unit_price: Number,
    percent_discount: Option<Number>,
    cost_subtotal: Number,
    cost_discount: Number,
    cost_total: Number,
    /// The exact charge (`cost_total`), nano-USD.
    cost_estimate_nano_usd: i64,
    #[serde(flatten)]
    auth: AuthFields,
}

#[derive(Serialize, ToSchema)]
pub struct BillingEvents {
    next_cursor: Option<String>,
    has_more: bool,
    billing_events: Vec<BillingEventItem>,
}

fn event_item(e: BillingEvent, auth: AuthExpand) -> BillingEventItem {
    let c = e.charge;
    BillingEventItem {
        request_id: e.request_id,
        endpoint_id: e.endpoint,
        timestamp: Time(e.billed_at),
        output_units: Number(c.quantity),
        unit_price: Number(c.unit_price),
        percent_discount: c.percent_discount.map(Number),
        cost_subtotal: Number::usd(c.subtotal_nanos),
        cost_discount: Number::usd(c.discount_nanos),
        cost_total: Number::usd(c.total_nanos),
        cost_estimate_nano_usd: c.total_nanos.0,
        auth: auth.fields(e.auth),
    }
}

/// Billing Events
///
/// One record per billed request (line item), with its request id, timestamp, endpoint,
/// output units and cost breakdown (`cost_subtotal`, `cost_discount`, `cost_total`;
/// `cost_estimate_nano_usd` is the exact charge). Ordered by (`timestamp`, `request_id`) with
/// an opaque keyset cursor (`limit` default 100, at most 10000): paging neither repeats nor
/// skips while usage arrives. `start` and `end` are exact instants (a plain date is midnight
/// UTC); the range may span at most 90 days. Needs a customer key with `ADMIN` scope and
/// shows only that key's account.
#[utoipa::path(
    get, path = "/v1/models/billing-events", tag = tags::FAL, operation_id = "getBillingEvents",
    security(("Key" = ["ADMIN"])),
    params(EventsParams),
    responses(
        AdminErrors,
        (status = 200, description = "The billing events.", body = BillingEvents),
    )
)]
pub async fn billing_events(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(p): Params<EventsParams>,
) -> Result<axum::Json<BillingEvents>, ApiError> {
    let (from, to) = tollgate_query::usage::events_range(p.start, p.end, state.engine.now())?;
    let auth = AuthExpand::of(&p.expand);
    let q = tollgate_query::usage::BillingEventsQuery {
        account: who.account,
        from,
        to,
        endpoints: p.endpoint_id,
        request_ids: p.request_id,
        api_keys: p.api_key_id,
        by_login: !p.login_username.is_empty(),
        by_key: auth.any(),
        cursor: p.cursor,
        limit: p.limit,
    };
    let page = tollgate_query::usage::billing_events(&state.engine, q).await?;
    let (next_cursor, has_more) = paging(page.next_cursor);
    Ok(axum::Json(BillingEvents {
        next_cursor,
        has_more,
        billing_events: page
            .items
            .into_iter()
            .map(|e| event_item(e, auth))
            .collect(),
    }))
}
