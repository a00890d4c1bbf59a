//! `GET /v1/models/analytics` (API scope): request counts by outcome, queue and execution
//! duration percentiles and billed execution time, per bucket and endpoint.
//!
//! Answered from the per-minute activity rollups: counts add, and percentiles come from merging
//! the minutes' duration histograms (values within 1% of the exact percentile), so a month's
//! query merges rollup rows instead of scanning requests.

use super::params::{page, Query};
use super::timeframe;
use super::usage::{after_cursor, parse_endpoint, parse_ids};
use crate::auth::customer;
use crate::error::ApiError;
use crate::money::Number;
use crate::AppState;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tollgate_core::ids::EndpointId;
use tollgate_core::rollup::{ActivityTotals, Durations};
use tollgate_core::Timestamp;
use tollgate_store::{RollupQuery, Scope};

/// Rows (bucket x endpoint) per page by default, and at most.
const LIMIT: (usize, usize) = (1000, 10_000);

/// The metrics tollgate keeps, as `expand` names them.
const COUNTS: [&str; 4] = [
    "request_count",
    "success_count",
    "user_error_count",
    "error_count",
];
const PREPARE: [(&str, u8); 5] = [
    ("p50_prepare_duration", 50),
    ("p75_prepare_duration", 75),
    ("p90_prepare_duration", 90),
    ("p95_prepare_duration", 95),
    ("p99_prepare_duration", 99),
];
const DURATION: [(&str, u8); 6] = [
    ("p25_duration", 25),
    ("p50_duration", 50),
    ("p75_duration", 75),
    ("p90_duration", 90),
    ("p95_duration", 95),
    ("p99_duration", 99),
];
const BILLABLE: &str = "total_billable_duration";

/// Metrics fal offers that tollgate cannot know: the gateway reports outcomes and durations,
/// not why a runner failed or whether it booted cold.
const UNTRACKED: [&str; 8] = [
    "startup_error_count",
    "connection_error_count",
    "timeout_error_count",
    "runtime_error_count",
    "cold_boot_count",
    "p50_cold_boot_duration",
    "p75_cold_boot_duration",
    "p90_cold_boot_duration",
];

fn seconds(ms: u64) -> Number {
    Number(Decimal::new(ms as i64, 3).normalize())
}

fn render(endpoint: &EndpointId, t: &ActivityTotals, metrics: &[String]) -> Value {
    let mut row = Map::new();
    row.insert("endpoint_id".into(), json!(endpoint.as_str()));
    let percentile = |d: &Durations, p: u8| d.percentile_ms(p).map(seconds);
    for m in metrics {
        let v = match m.as_str() {
            "request_count" => json!(t.requests),
            "success_count" => json!(t.successes),
            "user_error_count" => json!(t.user_errors),
            "error_count" => json!(t.errors),
            BILLABLE => json!(seconds(t.billable_ms.max(0) as u64)),
            name => {
                let found = PREPARE
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, p)| percentile(&t.prepare_ms, *p))
                    .or_else(|| {
                        DURATION
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, p)| percentile(&t.duration_ms, *p))
                    });
                match found {
                    // No request in the row measured this duration: the field is left out
                    // (fal's schema has no null for it).
                    Some(None) | None => continue,
                    Some(Some(v)) => json!(v),
                }
            }
        };
        row.insert(m.clone(), v);
    }
    Value::Object(row)
}

/// `GET /v1/models/analytics`.
pub async fn analytics(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, account) = customer(&state, &headers, Scope::Api).await?;
    let q = Query::parse(
        raw.as_deref(),
        &[
            "limit",
            "cursor",
            "start",
            "end",
            "timezone",
            "timeframe",
            "bound_to_timeframe",
            "endpoint_id",
            "expand",
        ],
    )?;
    let limit = q.limit(LIMIT.0, LIMIT.1)?;
    let range = timeframe::resolve(&q, state.engine.now())?;
    let endpoints = parse_ids(&q, "endpoint_id", parse_endpoint)?;
    if endpoints.is_empty() {
        return Err(
            ApiError::validation("endpoint_id is required: 1-50 endpoint ids")
                .with("field", "endpoint_id"),
        );
    }
    let mut allowed: Vec<&str> = vec!["time_series", "summary", BILLABLE];
    allowed.extend(COUNTS);
    allowed.extend(PREPARE.iter().map(|(n, _)| *n));
    allowed.extend(DURATION.iter().map(|(n, _)| *n));
    allowed.extend(UNTRACKED);
    let expand = q
        .expand(&allowed)?
        .unwrap_or_else(|| vec!["time_series".into(), "request_count".into()]);
    if let Some(m) = expand.iter().find(|e| UNTRACKED.contains(&e.as_str())) {
        return Err(ApiError::validation(format!(
            "`{m}` is not tracked by tollgate: runners report outcomes and durations, not \
             failure causes or cold boots"
        ))
        .with("field", "expand"));
    }
    let time_series = expand.iter().any(|e| e == "time_series");
    let summary = expand.iter().any(|e| e == "summary");
    let metrics: Vec<String> = expand
        .iter()
        .filter(|e| *e != "time_series" && *e != "summary")
        .cloned()
        .collect();
    if !time_series && !summary {
        return Err(ApiError::validation(
            "expand must include at least one of `time_series` or `summary`",
        )
        .with("field", "expand"));
    }
    if metrics.is_empty() {
        return Err(ApiError::validation(
            "expand must name at least one metric, e.g. request_count",
        )
        .with("field", "expand"));
    }
    let after: Option<(Timestamp, EndpointId)> = q.cursor()?;

    let rq = RollupQuery {
        account,
        from: range.start,
        to: range.end,
        endpoints,
        api_keys: Vec::new(),
        whole_hours: range.whole_hours(),
    };
    let rows = state.engine.read(move |r| r.activity(&rq)).await?;
    let mut buckets: BTreeMap<(Timestamp, EndpointId), ActivityTotals> = BTreeMap::new();
    let mut totals: BTreeMap<EndpointId, ActivityTotals> = BTreeMap::new();
    for (k, t) in &rows {
        if summary {
            totals.entry(k.endpoint.clone()).or_default().add(t);
        }
        if time_series {
            buckets
                .entry((range.bucket_start(k.slot), k.endpoint.clone()))
                .or_default()
                .add(t);
        }
    }

    let mut body = json!({ "next_cursor": null, "has_more": false });
    if time_series {
        let (rows, next) = page(after_cursor(&buckets, after.as_ref()), limit, |(k, _)| *k);
        body["has_more"] = json!(next.is_some());
        body["next_cursor"] = json!(next);
        body["time_series"] = json!(range.time_series(rows, |e, t| render(e, t, &metrics)));
    }
    if summary {
        body["summary"] = json!(totals
            .iter()
            .map(|(e, t)| render(e, t, &metrics))
            .collect::<Vec<_>>());
    }
    Ok(Json(body))
}
