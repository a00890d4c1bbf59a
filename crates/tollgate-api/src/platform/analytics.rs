//! `GET /v1/models/analytics` (API scope): request counts by outcome, queue and execution
//! duration percentiles and billed execution time, per bucket and endpoint. Assembled by
//! `tollgate-query` from the activity rollups; rendered here in fal's shape.

use super::paging;
use super::usage::{range_spec, RangeParams};
use crate::error::ApiError;
use crate::extract::{names_of, variants, Api, Customer, FromQuery, Params};
use crate::openapi::{tags, CustomerErrors};
use crate::query_string::Query;
use crate::wire::Number;
use crate::AppState;
use axum::extract::State;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use tollgate_core::ids::EndpointId;
use tollgate_query::analytics::{AnalyticsRow, Metric, Value, UNTRACKED};
use tollgate_query::timeframe::{resolve, RangeSpec};
use tollgate_query::Cursor;
use utoipa::{IntoParams, ToSchema};

/// Rows (bucket x endpoint) per page by default, and at most.
const LIMIT: (usize, usize) = (1000, 10_000);

/// What `expand` may name: the parts of the answer, and the metrics tollgate keeps.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum AnalyticsExpand {
    TimeSeries,
    Summary,
    RequestCount,
    SuccessCount,
    UserErrorCount,
    ErrorCount,
    P50PrepareDuration,
    P75PrepareDuration,
    P90PrepareDuration,
    P95PrepareDuration,
    P99PrepareDuration,
    P25Duration,
    P50Duration,
    P75Duration,
    P90Duration,
    P95Duration,
    P99Duration,
    TotalBillableDuration,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsParams {
    /// Rows (bucket x endpoint) per page: default 1000, at most 10000.
    #[param(value_type = Option<usize>, minimum = 1, maximum = 10000)]
    limit: usize,
    /// Pagination cursor from a previous response (its `next_cursor`, unchanged).
    #[param(value_type = Option<String>, min_length = 1)]
    cursor: Option<Cursor>,
    /// The endpoints: 1-50, repeated or comma-separated (required).
    #[param(value_type = Vec<EndpointId>, style = Form, explode, min_items = 1, max_items = 50)]
    endpoint_id: Vec<EndpointId>,
    /// `time_series` and/or `summary`, and the metrics to include (at least one). Default
    /// `time_series,request_count`. fal's error-cause and cold-boot metrics are not known to
    /// tollgate and answer 400.
    #[param(value_type = Option<Vec<AnalyticsExpand>>, style = Form, explode)]
    expand: Vec<String>,
    #[param(ignore)]
    metrics: Vec<Metric>,
    #[param(ignore)]
    range: RangeSpec,
}

impl FromQuery for AnalyticsParams {
    fn names() -> Vec<String> {
        [names_of::<Self>(), names_of::<RangeParams>()].concat()
    }
    fn from_query(q: &Query) -> Result<Self, ApiError> {
        let limit = q.limit(LIMIT.0, LIMIT.1)?;
        let range = range_spec(q)?;
        let endpoint_id = q.ids("endpoint_id", EndpointId::parse)?;
        if endpoint_id.is_empty() {
            return Err(ApiError::invalid(
                "endpoint_id",
                "endpoint_id is required: 1-50 endpoint ids",
            ));
        }
        let documented = variants::<AnalyticsExpand>();
        let mut allowed: Vec<&str> = documented.iter().map(String::as_str).collect();
        allowed.extend(UNTRACKED);
        let expand = q
            .expand(&allowed)?
            .unwrap_or_else(|| vec!["time_series".into(), "request_count".into()]);
        if let Some(m) = expand.iter().find(|e| UNTRACKED.contains(&e.as_str())) {
            return Err(ApiError::invalid(
                "expand",
                format!(
                    "`{m}` is not tracked by tollgate: runners report outcomes and durations, \
                     not failure causes or cold boots"
                ),
            ));
        }
        if !expand.iter().any(|e| e == "time_series" || e == "summary") {
            return Err(ApiError::invalid(
                "expand",
                "expand must include at least one of `time_series` or `summary`",
            ));
        }
        let metrics: Vec<Metric> = expand.iter().filter_map(|e| Metric::parse(e)).collect();
        if metrics.is_empty() {
            return Err(ApiError::invalid(
                "expand",
                "expand must name at least one metric, e.g. request_count",
            ));
        }
        Ok(AnalyticsParams {
            limit,
            cursor: q.cursor()?,
            endpoint_id,
            expand,
            metrics,
            range,
        })
    }
}

/// One row: an endpoint's metrics, those asked for (a duration no request in the row
/// measured is left out). Counts are integers, durations seconds.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AnalyticsItem {
    endpoint_id: EndpointId,
    request_count: Option<u64>,
    success_count: Option<u64>,
    user_error_count: Option<u64>,
    error_count: Option<u64>,
    p50_prepare_duration: Option<f64>,
    p75_prepare_duration: Option<f64>,
    p90_prepare_duration: Option<f64>,
    p95_prepare_duration: Option<f64>,
    p99_prepare_duration: Option<f64>,
    p25_duration: Option<f64>,
    p50_duration: Option<f64>,
    p75_duration: Option<f64>,
    p90_duration: Option<f64>,
    p95_duration: Option<f64>,
    p99_duration: Option<f64>,
    total_billable_duration: Option<f64>,
}

/// A row as it goes out: its endpoint and its metrics by fal's names.
struct Row(AnalyticsRow);

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.values.len() + 1))?;
        map.serialize_entry("endpoint_id", &self.0.endpoint)?;
        for (metric, value) in &self.0.values {
            match value {
                Value::Count(n) => map.serialize_entry(metric.name(), n)?,
                Value::Seconds(s) => map.serialize_entry(metric.name(), &Number(*s))?,
            }
        }
        map.end()
    }
}

#[derive(Serialize, ToSchema)]
pub struct AnalyticsBucket {
    /// The bucket's start in the range's time zone, with its offset.
    bucket: String,
    #[schema(value_type = Vec<AnalyticsItem>)]
    results: Vec<Row>,
}

#[derive(Serialize, ToSchema)]
pub struct AnalyticsAnswer {
    next_cursor: Option<String>,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_series: Option<Vec<AnalyticsBucket>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<AnalyticsItem>>)]
    summary: Option<Vec<Row>>,
}

/// Analytics
///
/// Time-bucketed metrics per endpoint: request counts by outcome (2xx/3xx success, 4xx user
/// error, 5xx error; cancelled and expired requests never ran and are not counted), queue
/// (`prepare`) and execution duration percentiles in seconds, and billed execution time
/// (`total_billable_duration`). `expand` selects the metrics. Percentiles come from mergeable
/// per-minute histograms, within 1% of the exact value. Time range, buckets and paging (rows
/// are bucket x endpoint; `limit` default 1000, at most 10000) follow `GET /v1/models/usage`.
/// Needs a customer key (`API` or `ADMIN`) and shows only that key's account.
#[utoipa::path(
    get, path = "/v1/models/analytics", tag = tags::FAL, operation_id = "getAnalytics",
    security(("Key" = ["API"])),
    params(AnalyticsParams, RangeParams),
    responses(
        CustomerErrors,
        (status = 200, description = "The analytics.", body = AnalyticsAnswer),
    )
)]
pub async fn analytics(
    State(state): State<AppState>,
    who: Customer<Api>,
    Params(p): Params<AnalyticsParams>,
) -> Result<axum::Json<AnalyticsAnswer>, ApiError> {
    let q = tollgate_query::analytics::AnalyticsQuery {
        account: who.account,
        range: resolve(&p.range, state.engine.now())?,
        endpoints: p.endpoint_id,
        metrics: p.metrics,
        time_series: p.expand.iter().any(|e| e == "time_series"),
        summary: p.expand.iter().any(|e| e == "summary"),
        cursor: p.cursor,
        limit: p.limit,
    };
    let a = tollgate_query::analytics::analytics(&state.engine, q).await?;
    let (next_cursor, has_more) = paging(a.next_cursor);
    Ok(axum::Json(AnalyticsAnswer {
        next_cursor,
        has_more,
        time_series: a.time_series.map(|series| {
            series
                .into_iter()
                .map(|b| AnalyticsBucket {
                    bucket: b.bucket,
                    results: b.results.into_iter().map(Row).collect(),
                })
                .collect()
        }),
        summary: a.summary.map(|rows| rows.into_iter().map(Row).collect()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_query::analytics::METRICS;

    /// The documented `expand` values are the answer's parts and every metric tollgate keeps.
    #[test]
    fn the_documented_expand_values_are_the_metrics_kept() {
        let mut kept = vec!["time_series".to_string(), "summary".to_string()];
        kept.extend(METRICS.iter().map(|(name, _)| name.to_string()));
        assert_eq!(variants::<AnalyticsExpand>(), kept);
    }
}
