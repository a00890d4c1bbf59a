//! `GET /v1/serverless/usage` (ADMIN scope) and
//! `GET /v1/serverless/apps/{owner}/{name}/runners/history` (API scope): what the account's
//! serverless apps cost, and how many of their runners ran, in fal's shapes. Assembled by
//! `tollgate-query` ([`tollgate_query::serverless`]) from the rollups; rendered here.

use super::paging;
use super::usage::{moment, range_spec, timeframe, RangeParams, TimeframeName, USAGE_LIMIT};
use crate::error::ApiError;
use crate::extract::{names_of, Admin, Api, Customer, FromQuery, Owner, Params, Path2};
use crate::openapi::{tags, AdminErrors, CustomerErrors};
use crate::query_string::Query;
use crate::wire::Number;
use crate::AppState;
use axum::extract::State;
use serde::Serialize;
use tollgate_core::ids::{AppName, EnvironmentName, MachineType};
use tollgate_query::serverless::{
    Aggregation, HistoryPoint, RunnerHistoryQuery, ServerlessUsageQuery, ServerlessUsageRow,
};
use tollgate_query::timeframe::{resolve, RangeSpec};
use tollgate_query::Cursor;
use utoipa::{IntoParams, ToSchema};

/// The longest `search` term.
const MAX_SEARCH_CHARS: usize = 64;

// ---------------------------------------------------------------------------------------------
// GET /v1/serverless/usage

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ServerlessExpand {
    TimeSeries,
    Summary,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ServerlessUsageParams {
    /// Rows per page: default 1000, at most 10000.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 10000)]
    limit: usize,
    /// Pagination cursor from a previous response (its `next_cursor`, unchanged).
    #[param(value_type = Option<String>, min_length = 1)]
    cursor: Option<Cursor>,
    /// Only these apps, matched exactly against a row's `app` (the deployed name, without the
    /// owner): 1-50, repeated or comma-separated.
    #[param(value_type = Option<Vec<AppName>>, style = Form, explode)]
    app: Vec<AppName>,
    /// Only apps whose name contains this term, case-insensitively (1 to 64 characters);
    /// with `app`, both must match.
    #[param(value_type = Option<String>, min_length = 1, max_length = 64)]
    search: Option<String>,
    /// `time_series` (buckets) and/or `summary` (the whole range). Default `time_series`.
    #[param(value_type = Option<Vec<ServerlessExpand>>, style = Form, explode)]
    expand: Vec<String>,
    #[param(ignore)]
    range: RangeSpec,
}

impl FromQuery for ServerlessUsageParams {
    fn names() -> Vec<String> {
        [names_of::<Self>(), names_of::<RangeParams>()].concat()
    }
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let expand =
            super::expand::<ServerlessExpand>(q)?.unwrap_or_else(|| vec!["time_series".into()]);
        if expand.is_empty() {
            return Err(ApiError::invalid(
                "expand",
                "expand must include at least one of `time_series` or `summary`",
            ));
        }
        let search = q.one("search")?.map(str::trim).map(str::to_string);
        if let Some(s) = &search {
            if s.is_empty() || s.chars().count() > MAX_SEARCH_CHARS {
                return Err(ApiError::invalid(
                    "search",
                    format!("search must be 1 to {MAX_SEARCH_CHARS} characters"),
                ));
            }
        }
        Ok(ServerlessUsageParams {
            limit: q.limit(USAGE_LIMIT.0, USAGE_LIMIT.1)?,
            cursor: q.cursor()?,
            app: q.ids("app", AppName::parse)?,
            search,
            expand,
            range: range_spec(q)?,
        })
    }
}

/// One row: an app's runner time on one machine type, surge or not, at one unit price and
/// discount. The quantity is GPU-seconds (seconds × GPUs); `unit` is always `second`.
#[derive(Serialize, ToSchema)]
pub struct ServerlessUsageItem {
    /// The app's deployed name, without the owner.
    app: AppName,
    /// The app's environment, `null` when it has none.
    environment: Option<EnvironmentName>,
    #[schema(example = "GPU-H100")]
    machine_type: MachineType,
    #[schema(value_type = String, example = "second")]
    unit: &'static str,
    /// GPU-seconds.
    quantity: Number,
    /// USD per GPU-second before the discount (the account's own machine price if it has
    /// one; the surge price on a surge row).
    unit_price: Number,
    /// `null` when no percentage discount applies.
    percent_discount: Option<Number>,
    cost_subtotal: Number,
    cost_discount: Number,
    cost_total: Number,
    /// fal's older name of `cost_total`.
    cost: Number,
    #[schema(value_type = String, example = "USD")]
    currency: &'static str,
    /// Whether the time was billed at surge prices (surge rows are apart).
    is_surge: bool,
    /// `cost_subtotal` exactly.
    cost_subtotal_nano_usd: i64,
    /// `cost_discount` exactly.
    cost_discount_nano_usd: i64,
    /// `cost_total` exactly: the sum of the line items, as drawn from the balance.
    cost_total_nano_usd: i64,
}

impl From<ServerlessUsageRow> for ServerlessUsageItem {
    fn from(r: ServerlessUsageRow) -> Self {
        ServerlessUsageItem {
            app: r.line.app,
            environment: r.line.environment,
            machine_type: r.line.machine_type,
            unit: "second",
            quantity: Number(r.quantity),
            unit_price: Number(r.unit_price),
            percent_discount: r.percent_discount.map(Number),
            cost_subtotal: Number::usd(r.subtotal),
            cost_discount: Number::usd(r.discount),
            cost_total: Number::usd(r.total),
            cost: Number::usd(r.total),
            currency: "USD",
            is_surge: r.line.is_surge,
            cost_subtotal_nano_usd: r.subtotal.0,
            cost_discount_nano_usd: r.discount.0,
            cost_total_nano_usd: r.total.0,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ServerlessUsageBucket {
    /// The bucket's start in the range's time zone, with its offset.
    bucket: String,
    results: Vec<ServerlessUsageItem>,
}

#[derive(Serialize, ToSchema)]
pub struct ServerlessUsageAnswer {
    /// Cursor for the next page of the time series, null if no more pages.
    next_cursor: Option<String>,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_series: Option<Vec<ServerlessUsageBucket>>,
    /// The whole range, the same on every page.
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Vec<ServerlessUsageItem>>,
}

/// Serverless usage
///
/// The runner time of the account's own serverless apps, grouped per bucket by app,
/// environment, machine type, surge, unit price and percent discount: GPU-seconds (`unit`
/// `second`), the per-GPU-second price before the discount, `cost_subtotal`, the discount and
/// `cost_total` (exact in the `*_nano_usd` fields). Surge and standard time of one machine are
/// separate rows (`is_surge`). `app` filters by exact app names (1-50), `search` by a
/// case-insensitive substring of the name; both given, both must match. Answered from the
/// per-minute usage rollups written with the line items, so the rows add up exactly to what
/// was drawn from the balance. Time range, time zone, buckets and paging (`limit` default
/// 1000, at most 10000, over the time series' rows) follow `GET /v1/models/usage`, which never
/// shows this usage. Needs a customer key with `ADMIN` scope and shows only that key's
/// account.
#[utoipa::path(
    get, path = "/v1/serverless/usage", tag = tags::FAL, operation_id = "serverlessGetUsage",
    security(("Key" = ["ADMIN"])),
    params(ServerlessUsageParams, RangeParams),
    responses(
        AdminErrors,
        (status = 200, description = "The serverless usage.", body = ServerlessUsageAnswer),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    who: Customer<Admin>,
    Params(p): Params<ServerlessUsageParams>,
) -> Result<axum::Json<ServerlessUsageAnswer>, ApiError> {
    let q = ServerlessUsageQuery {
        account: who.account,
        range: resolve(&p.range, state.engine.now())?,
        apps: p.app,
        search: p.search,
        time_series: p.expand.iter().any(|e| e == "time_series"),
        summary: p.expand.iter().any(|e| e == "summary"),
        cursor: p.cursor,
        limit: p.limit,
    };
    let usage = tollgate_query::serverless::usage(&state.engine, q).await?;
    let (next_cursor, has_more) = paging(usage.next_cursor);
    Ok(axum::Json(ServerlessUsageAnswer {
        next_cursor,
        has_more,
        time_series: usage.time_series.map(|series| {
            series
                .into_iter()
                .map(|b| ServerlessUsageBucket {
                    bucket: b.bucket,
                    results: b.results.into_iter().map(Into::into).collect(),
                })
                .collect()
        }),
        summary: usage
            .summary
            .map(|rows| rows.into_iter().map(Into::into).collect()),
    }))
}

// ---------------------------------------------------------------------------------------------
// GET /v1/serverless/apps/{owner}/{name}/runners/history

/// How runner counts are aggregated within a bucket.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AggregationName {
    /// The peak: the busiest minute's count.
    Max,
    /// The mean over the bucket.
    Avg,
}

impl From<Aggregation> for AggregationName {
    fn from(a: Aggregation) -> Self {
        match a {
            Aggregation::Max => AggregationName::Max,
            Aggregation::Avg => AggregationName::Avg,
        }
    }
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HistoryParams {
    /// Start: an RFC 3339 date-time with offset or a date (midnight UTC). Default: a day
    /// before `end`. The range may span at most 90 days.
    #[param(value_type = Option<String>, example = "2026-07-01T00:00:00Z")]
    start: (),
    /// End, exclusive; as `start`. Default: now.
    #[param(value_type = Option<String>, example = "2026-07-02T00:00:00Z")]
    end: (),
    /// The bucket width (UTC). Default by the range's length: minute under 2 hours, hour
    /// under 2 days, day under 64 days, else week.
    #[param(value_type = Option<TimeframeName>)]
    timeframe: (),
    /// `max` (default): each bucket's busiest minute, for capacity; `avg`: the mean number
    /// of runners over the bucket, for utilization.
    #[param(value_type = Option<AggregationName>)]
    aggregation: Aggregation,
    #[param(ignore)]
    range: RangeSpec,
}

impl FromQuery for HistoryParams {
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let aggregation = match q.one("aggregation")? {
            None => Aggregation::Max,
            Some(a) => Aggregation::parse(a).ok_or_else(|| {
                ApiError::invalid(
                    "aggregation",
                    format!("unknown aggregation '{a}'; allowed: max, avg"),
                )
            })?,
        };
        Ok(HistoryParams {
            start: (),
            end: (),
            timeframe: (),
            aggregation,
            range: RangeSpec {
                start: moment(q, "start")?,
                end: moment(q, "end")?,
                timeframe: timeframe(q)?,
                ..RangeSpec::default()
            },
        })
    }
}

/// Runner counts by state in one bucket (fractions: a runner there half the time counts 0.5).
#[derive(Serialize, ToSchema)]
pub struct HistoryItem {
    /// The bucket's start, UTC.
    #[schema(value_type = String, format = DateTime, example = "2026-07-01T12:00:00.000Z")]
    timestamp: crate::wire::Time,
    /// Runners processing requests (`RUNNING`).
    running: Number,
    /// Warm runners waiting for requests (`IDLE`; billed).
    idle: Number,
    /// Runners being scheduled or starting (`PENDING`, `DOCKER_PULL`, `SETUP`).
    pending: Number,
    /// Runners finishing their work before they stop (`DRAINING`, `TERMINATING`).
    draining: Number,
}

impl From<HistoryPoint> for HistoryItem {
    fn from(p: HistoryPoint) -> Self {
        HistoryItem {
            timestamp: crate::wire::Time(p.timestamp),
            running: Number(p.counts.running),
            idle: Number(p.counts.idle),
            pending: Number(p.counts.pending),
            draining: Number(p.counts.draining),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RunnerHistoryAnswer {
    /// `<owner>/<name>`.
    #[schema(example = "acme/my-app")]
    endpoint_id: String,
    /// The bucket width (resolved when it was left to the range's length).
    timeframe: TimeframeName,
    aggregation: AggregationName,
    /// One entry per bucket of the range up to now, oldest first; a bucket without runners
    /// counts zero.
    history: Vec<HistoryItem>,
}

/// Runner state history
///
/// How many runners of one of the account's apps were running, idle, pending and draining,
/// per bucket (UTC): with `aggregation=max` (default) each bucket's busiest minute, with
/// `avg` the mean over the bucket (runner-time in the bucket over its length). Counts add up
/// every runner of the app, whatever its environment or machine. Up to 90 days; default the
/// last day; the bucket width is picked from the range's length unless `timeframe` names
/// it. Needs a customer key (`API` or `ADMIN`) of the app's owner: another account's app
/// answers 403.
#[utoipa::path(
    get, path = "/v1/serverless/apps/{owner}/{name}/runners/history", tag = tags::FAL,
    operation_id = "getRunnerStateHistory", security(("Key" = ["API"])),
    params(
        ("owner" = String, Path, description = "The app owner's username: the key's account.",
            example = "acme"),
        ("name" = AppName, Path, description = "The app's name, without the owner."),
        HistoryParams,
    ),
    responses(
        CustomerErrors,
        (status = 200, description = "The runner-state history.", body = RunnerHistoryAnswer),
    )
)]
pub async fn runner_history(
    State(state): State<AppState>,
    who: Customer<Api>,
    Path2(Owner(owner), app): Path2<Owner, AppName>,
    Params(p): Params<HistoryParams>,
) -> Result<axum::Json<RunnerHistoryAnswer>, ApiError> {
    if owner != who.account {
        return Err(ApiError::forbidden(format!(
            "only the app's owner may read its runners: this key is of account {}, not {owner}",
            who.account
        )));
    }
    let q = RunnerHistoryQuery {
        account: owner.clone(),
        app: app.clone(),
        range: p.range,
        aggregation: p.aggregation,
    };
    let h = tollgate_query::serverless::runner_history(&state.engine, q).await?;
    Ok(axum::Json(RunnerHistoryAnswer {
        endpoint_id: format!("{owner}/{app}"),
        timeframe: TimeframeName::of(h.timeframe),
        aggregation: h.aggregation.into(),
        history: h.history.into_iter().map(Into::into).collect(),
    }))
}
