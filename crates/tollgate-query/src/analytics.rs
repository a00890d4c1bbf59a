//! fal's `GET /models/analytics`: request counts by outcome, queue and execution duration
//! percentiles and billed execution time, per bucket and endpoint.
//!
//! Answered from the per-minute activity rollups: counts add, and percentiles come from
//! merging the minutes' duration histograms (values within 1% of the exact percentile), so a
//! month's query merges rollup rows instead of scanning requests.

use crate::cursor::{Cursor, Page};
use crate::timeframe::{Range, SeriesBucket};
use crate::usage::after_cursor;
use crate::QueryError;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use tollgate_core::ids::{AccountId, EndpointId};
use tollgate_core::rollup::{ActivityTotals, Durations};
use tollgate_core::Timestamp;
use tollgate_engine::Engine;
use tollgate_store::RollupQuery;

/// A metric tollgate keeps, by fal's name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    RequestCount,
    SuccessCount,
    UserErrorCount,
    ErrorCount,
    /// Billed execution time, in seconds.
    TotalBillableDuration,
    /// A percentile of the time requests waited in the queue, in seconds.
    PrepareDuration(u8),
    /// A percentile of requests' execution time, in seconds.
    Duration(u8),
}

/// Every metric tollgate keeps, in fal's order, with its name.
pub const METRICS: [(&str, Metric); 16] = [
    ("request_count", Metric::RequestCount),
    ("success_count", Metric::SuccessCount),
    ("user_error_count", Metric::UserErrorCount),
    ("error_count", Metric::ErrorCount),
    ("p50_prepare_duration", Metric::PrepareDuration(50)),
    ("p75_prepare_duration", Metric::PrepareDuration(75)),
    ("p90_prepare_duration", Metric::PrepareDuration(90)),
    ("p95_prepare_duration", Metric::PrepareDuration(95)),
    ("p99_prepare_duration", Metric::PrepareDuration(99)),
    ("p25_duration", Metric::Duration(25)),
    ("p50_duration", Metric::Duration(50)),
    ("p75_duration", Metric::Duration(75)),
    ("p90_duration", Metric::Duration(90)),
    ("p95_duration", Metric::Duration(95)),
    ("p99_duration", Metric::Duration(99)),
    ("total_billable_duration", Metric::TotalBillableDuration),
];

/// Metrics fal offers that tollgate cannot know: the gateway reports outcomes and durations,
/// not why a runner failed or whether it booted cold.
pub const UNTRACKED: [&str; 8] = [
    "startup_error_count",
    "connection_error_count",
    "timeout_error_count",
    "runtime_error_count",
    "cold_boot_count",
    "p50_cold_boot_duration",
    "p75_cold_boot_duration",
    "p90_cold_boot_duration",
];

impl Metric {
    pub fn parse(name: &str) -> Option<Metric> {
        METRICS.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
    }

    pub fn name(self) -> &'static str {
        METRICS
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .expect("every metric is named")
    }
}

/// A metric's value in one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Count(u64),
    Seconds(Decimal),
}

/// One row: an endpoint's metrics in a bucket (or over the range). A duration no request in
/// the row measured is left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalyticsRow {
    pub endpoint: EndpointId,
    pub values: Vec<(Metric, Value)>,
}

/// An analytics read.
#[derive(Clone, Debug)]
pub struct AnalyticsQuery {
    pub account: AccountId,
    pub range: Range,
    /// 1 to 50 endpoints.
    pub endpoints: Vec<EndpointId>,
    pub metrics: Vec<Metric>,
    pub time_series: bool,
    pub summary: bool,
    pub cursor: Option<Cursor>,
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analytics {
    pub time_series: Option<Vec<SeriesBucket<AnalyticsRow>>>,
    pub summary: Option<Vec<AnalyticsRow>>,
    pub next_cursor: Option<Cursor>,
}

fn seconds(ms: u64) -> Value {
    Value::Seconds(Decimal::new(i64::try_from(ms).unwrap_or(i64::MAX), 3).normalize())
}

fn row(endpoint: &EndpointId, t: &ActivityTotals, metrics: &[Metric]) -> AnalyticsRow {
    let percentile = |d: &Durations, p: u8| d.percentile_ms(p).map(seconds);
    AnalyticsRow {
        endpoint: endpoint.clone(),
        values: metrics
            .iter()
            .filter_map(|m| {
                let v = match *m {
                    Metric::RequestCount => Some(Value::Count(t.requests)),
                    Metric::SuccessCount => Some(Value::Count(t.successes)),
                    Metric::UserErrorCount => Some(Value::Count(t.user_errors)),
                    Metric::ErrorCount => Some(Value::Count(t.errors)),
                    Metric::TotalBillableDuration => {
                        Some(seconds(u64::try_from(t.billable_ms).unwrap_or(0)))
                    }
                    Metric::PrepareDuration(p) => percentile(&t.prepare_ms, p),
                    Metric::Duration(p) => percentile(&t.duration_ms, p),
                };
                v.map(|v| (*m, v))
            })
            .collect(),
    }
}

pub async fn analytics(engine: &Engine, q: AnalyticsQuery) -> Result<Analytics, QueryError> {
    let after: Option<(Timestamp, EndpointId)> = Cursor::key(q.cursor.as_ref())?;
    let rq = RollupQuery {
        account: q.account.clone(),
        from: q.range.start,
        to: q.range.end,
        endpoints: q.endpoints.clone(),
        api_keys: Vec::new(),
        whole_hours: q.range.whole_hours(),
        service: Some(tollgate_store::Service::Models),
    };
    let rows = engine.read(move |r| r.activity(&rq)).await?;
    let mut buckets: BTreeMap<(Timestamp, EndpointId), ActivityTotals> = BTreeMap::new();
    let mut totals: BTreeMap<EndpointId, ActivityTotals> = BTreeMap::new();
    for (k, t) in &rows {
        if q.summary {
            totals.entry(k.endpoint.clone()).or_default().add(t);
        }
        if q.time_series {
            buckets
                .entry((q.range.bucket_start(k.slot), k.endpoint.clone()))
                .or_default()
                .add(t);
        }
    }
    let mut answer = Analytics {
        time_series: None,
        summary: None,
        next_cursor: None,
    };
    if q.time_series {
        let page = Page::of(after_cursor(&buckets, after.as_ref()), q.limit, |(k, _)| *k);
        answer.next_cursor = page.next_cursor;
        answer.time_series = Some(
            q.range
                .time_series(page.items, |e, t| row(e, t, &q.metrics)),
        );
    }
    if q.summary {
        answer.summary = Some(totals.iter().map(|(e, t)| row(e, t, &q.metrics)).collect());
    }
    Ok(answer)
}
