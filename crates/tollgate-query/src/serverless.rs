//! What an account's serverless apps cost and how their runners ran: fal's
//! `GET /serverless/usage` (runner time grouped by app, environment, machine type, surge, unit
//! price and discount) and `GET /serverless/apps/{owner}/{name}/runners/history` (runner counts
//! by state, bucketed).
//!
//! Usage is the serverless share of the usage rollups ([`Service::Serverless`]): each billed
//! piece of runner time is a line item whose endpoint key names its line
//! ([`tollgate_core::serverless::Line`]), grouped and paged exactly as the model usage is
//! ([`crate::usage`]'s [`Grouped`]), so the buckets, the summary and the ledger are sums of
//! the same integers. The history comes from the per-minute runner-state rollup
//! ([`tollgate_store::Reader::runner_history`]): runner-milliseconds per state and minute.

use crate::cursor::Cursor;
use crate::timeframe::{self, Range, RangeError, RangeSpec, SeriesBucket, Timeframe};
use crate::usage::Grouped;
use crate::QueryError;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_core::ids::{AccountId, AppName, EndpointId};
use tollgate_core::rollup::{UsageKey, UsagePrice, UsageTotals};
use tollgate_core::serverless::Line;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::Engine;
use tollgate_store::{RollupQuery, RunnerMinuteTotals, Service};

/// The longest range one runner-state history may span (fal's cap).
pub const HISTORY_MAX_RANGE_MS: i64 = 90 * DAY_MS;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// A serverless usage read.
#[derive(Clone, Debug)]
pub struct ServerlessUsageQuery {
    pub account: AccountId,
    pub range: Range,
    /// Only these apps, exactly (empty: all).
    pub apps: Vec<AppName>,
    /// Only apps whose name contains this, case-insensitively (AND with `apps`).
    pub search: Option<String>,
    pub time_series: bool,
    pub summary: bool,
    pub cursor: Option<Cursor>,
    pub limit: usize,
}

/// One row of fal's serverless usage: a line (app, environment, machine type, surge) at one
/// unit price and discount. The quantity is GPU-seconds; the unit is always `second`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerlessUsageRow {
    pub line: Line,
    pub quantity: Decimal,
    /// USD per GPU-second before the discount.
    pub unit_price: Decimal,
    pub percent_discount: Option<Decimal>,
    pub subtotal: Nanos,
    pub discount: Nanos,
    pub total: Nanos,
}

/// The serverless usage of a range: its time series (one page of rows) and its summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerlessUsage {
    pub time_series: Option<Vec<SeriesBucket<ServerlessUsageRow>>>,
    pub summary: Option<Vec<ServerlessUsageRow>>,
    /// Of the time series' rows.
    pub next_cursor: Option<Cursor>,
}

/// A row's group: the line's key, its price and discount (the cursor holds it, so it is the
/// stored key, not the decoded line).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct LineGroup {
    endpoint: EndpointId,
    price: UsagePrice,
    percent_discount: Option<Decimal>,
}

impl ServerlessUsageQuery {
    /// Whether a line is asked for: its app among `apps` (when given) and containing
    /// `search` (when given).
    fn wants(&self, line: &Line, search: Option<&str>) -> bool {
        (self.apps.is_empty() || self.apps.contains(&line.app))
            && search.is_none_or(|s| line.app.as_str().to_lowercase().contains(s))
    }
}

impl LineGroup {
    fn row(&self, t: &UsageTotals) -> Option<ServerlessUsageRow> {
        Some(ServerlessUsageRow {
            line: Line::of(&self.endpoint)?,
            quantity: t.quantity.normalize(),
            unit_price: self.price.unit_price(t),
            percent_discount: self.percent_discount,
            subtotal: t.subtotal,
            discount: t.discount,
            total: t.total,
        })
    }
}

/// fal's `GET /serverless/usage`: the serverless rollup rows of the range filtered by app,
/// each into its bucket and group, the summary over the whole range, and one page of the
/// series' rows in (bucket, line, price, discount) order.
pub async fn usage(
    engine: &Engine,
    q: ServerlessUsageQuery,
) -> Result<ServerlessUsage, QueryError> {
    let after: Option<(Timestamp, LineGroup)> = Cursor::key(q.cursor.as_ref())?;
    let rq = RollupQuery {
        account: q.account.clone(),
        from: q.range.start,
        to: q.range.end,
        endpoints: Vec::new(),
        api_keys: Vec::new(),
        whole_hours: q.range.whole_hours(),
        service: Some(Service::Serverless),
    };
    let rows = engine.read(move |r| r.usage(&rq)).await?;
    let search = q.search.as_ref().map(|s| s.to_lowercase());
    let group_of = |k: &UsageKey| {
        let line = Line::of(&k.endpoint)?;
        q.wants(&line, search.as_deref()).then(|| LineGroup {
            endpoint: k.endpoint.clone(),
            price: k.price,
            percent_discount: k.percent_discount,
        })
    };
    let grouped = Grouped::of(&rows, &q.range, q.time_series, q.summary, group_of)?;
    let mut answer = ServerlessUsage {
        time_series: None,
        summary: None,
        next_cursor: None,
    };
    if q.time_series {
        // Every group was decoded by `group_of`, so `row` always has its line.
        let (series, next) =
            grouped.series_page(&q.range, after.as_ref(), q.limit, |g, t| g.row(t));
        answer.time_series = Some(
            series
                .into_iter()
                .map(|b| SeriesBucket {
                    bucket: b.bucket,
                    results: b.results.into_iter().flatten().collect(),
                })
                .collect(),
        );
        answer.next_cursor = next;
    }
    if q.summary {
        answer.summary = Some(
            grouped
                .summary
                .iter()
                .filter_map(|(g, t)| g.row(t))
                .collect(),
        );
    }
    Ok(answer)
}

/// How runner counts are summed up within a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// The peak: the largest minute's count (runner-ms of the minute / 60 000).
    Max,
    /// The mean: runner-ms in the bucket / the bucket's ms.
    Avg,
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Max => "max",
            Aggregation::Avg => "avg",
        }
    }

    pub fn parse(text: &str) -> Option<Aggregation> {
        match text {
            "max" => Some(Aggregation::Max),
            "avg" => Some(Aggregation::Avg),
            _ => None,
        }
    }
}

/// A runner-state history read: one app of one account.
#[derive(Clone, Debug)]
pub struct RunnerHistoryQuery {
    pub account: AccountId,
    pub app: AppName,
    /// `start`, `end` and `timeframe` (UTC; `bound_to_timeframe` is always on: buckets are
    /// whole).
    pub range: RangeSpec,
    pub aggregation: Aggregation,
}

/// Runner counts by state in one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerCounts {
    pub running: Decimal,
    pub idle: Decimal,
    pub pending: Decimal,
    pub draining: Decimal,
}

/// One bucket of a runner-state history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPoint {
    /// The bucket's start (UTC).
    pub timestamp: Timestamp,
    pub counts: RunnerCounts,
}

/// A runner-state history: every bucket of the range up to now, oldest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerHistory {
    /// The bucket width (resolved when the caller left it to fal's pick).
    pub timeframe: Timeframe,
    pub aggregation: Aggregation,
    pub history: Vec<HistoryPoint>,
}

/// The range of a history: fal's `start`, `end` (default the last day) and `timeframe` in UTC,
/// snapped out to whole buckets, the range as asked at most [`HISTORY_MAX_RANGE_MS`] long.
pub fn history_range(spec: &RangeSpec, now: Timestamp) -> Result<Range, RangeError> {
    let utc = RangeSpec {
        tz: chrono_tz::Tz::UTC,
        ..*spec
    };
    let asked = timeframe::resolve(
        &RangeSpec {
            bound_to_timeframe: false,
            ..utc
        },
        now,
    )?;
    if asked.end.0 - asked.start.0 > HISTORY_MAX_RANGE_MS {
        return Err(RangeError::new(
            "start",
            "the range from start to end may span at most 90 days",
        ));
    }
    timeframe::resolve(
        &RangeSpec {
            bound_to_timeframe: true,
            ..utc
        },
        now,
    )
}

/// fal's runner-state history of one app: the range's minutes summed into buckets, each
/// column aggregated by `aggregation`. Buckets after `now` are left out (nothing ran there
/// yet); a bucket without runners counts zero.
pub async fn runner_history(
    engine: &Engine,
    q: RunnerHistoryQuery,
) -> Result<RunnerHistory, QueryError> {
    let now = engine.now();
    let range = history_range(&q.range, now)?;
    let rq = tollgate_store::RunnerHistoryQuery {
        account: q.account.clone(),
        app: q.app.clone(),
        from: range.start,
        to: range.end,
    };
    let minutes = engine.read(move |r| r.runner_history(&rq)).await?;
    Ok(RunnerHistory {
        timeframe: range.timeframe,
        aggregation: q.aggregation,
        history: buckets_of(&range, &minutes, q.aggregation, now),
    })
}

/// Per column: the bucket's runner-ms, and its largest minute's.
#[derive(Clone, Copy, Default)]
struct Sums {
    total: [i64; 4],
    peak: [i64; 4],
}

fn columns(m: &RunnerMinuteTotals) -> [i64; 4] {
    [m.running_ms, m.idle_ms, m.pending_ms, m.draining_ms]
}

/// The minutes of `range` summed into its buckets (see [`runner_history`]).
fn buckets_of(
    range: &Range,
    minutes: &[(Timestamp, RunnerMinuteTotals)],
    aggregation: Aggregation,
    now: Timestamp,
) -> Vec<HistoryPoint> {
    let mut sums: BTreeMap<Timestamp, Sums> = BTreeMap::new();
    for (slot, m) in minutes {
        let s = sums.entry(range.bucket_start(*slot)).or_default();
        for (i, ms) in columns(m).into_iter().enumerate() {
            s.total[i] = s.total[i].saturating_add(ms);
            s.peak[i] = s.peak[i].max(ms);
        }
    }
    // The current minute counts as begun: a bucket holding it is shown.
    let shown_until = Timestamp(now.0 - now.0.rem_euclid(MINUTE_MS) + MINUTE_MS);
    range
        .buckets()
        .into_iter()
        .filter(|b| b.start < shown_until)
        .map(|b| {
            let s = sums.get(&b.start).copied().unwrap_or_default();
            let count = |i: usize| match aggregation {
                Aggregation::Max => ratio(s.peak[i], MINUTE_MS),
                Aggregation::Avg => ratio(s.total[i], b.end.0 - b.start.0),
            };
            HistoryPoint {
                timestamp: b.start,
                counts: RunnerCounts {
                    running: count(0),
                    idle: count(1),
                    pending: count(2),
                    draining: count(3),
                },
            }
        })
        .collect()
}

/// `ms / per` as a decimal of at most 6 places (a count of runners: 1.5 is one runner all the
/// time and another half of it).
fn ratio(ms: i64, per: i64) -> Decimal {
    if per <= 0 {
        return Decimal::ZERO;
    }
    (Decimal::from(ms) / Decimal::from(per))
        .round_dp(6)
        .normalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeframe::Moment;

    fn at(text: &str) -> Timestamp {
        Timestamp(
            chrono::DateTime::parse_from_rfc3339(text)
                .expect("a test instant")
                .timestamp_millis(),
        )
    }

    fn range(start: &str, end: &str, timeframe: Timeframe) -> Range {
        history_range(
            &RangeSpec {
                start: Some(Moment::At(at(start))),
                end: Some(Moment::At(at(end))),
                timeframe: Some(timeframe),
                ..RangeSpec::default()
            },
            at(end),
        )
        .expect("a valid range")
    }

    fn minute(running_ms: i64, idle_ms: i64) -> RunnerMinuteTotals {
        RunnerMinuteTotals {
            running_ms,
            idle_ms,
            ..RunnerMinuteTotals::default()
        }
    }

    #[test]
    fn max_is_the_busiest_minute_and_avg_the_time_over_the_bucket() {
        let r = range(
            "2026-03-01T10:00:00Z",
            "2026-03-01T12:00:00Z",
            Timeframe::Hour,
        );
        // 10:00-11:00: two runners for one minute, one for another (30 s idle too);
        // 11:00-12:00: nothing.
        let minutes = [
            (at("2026-03-01T10:05:00Z"), minute(120_000, 0)),
            (at("2026-03-01T10:06:00Z"), minute(60_000, 30_000)),
        ];
        let now = at("2026-03-01T12:00:00Z");
        let max = buckets_of(&r, &minutes, Aggregation::Max, now);
        assert_eq!(max.len(), 2, "{max:?}");
        assert_eq!(max[0].timestamp, at("2026-03-01T10:00:00Z"));
        assert_eq!(max[0].counts.running, Decimal::from(2));
        assert_eq!(max[0].counts.idle, Decimal::new(5, 1));
        assert_eq!(max[1].counts, RunnerCounts::default());
        let avg = buckets_of(&r, &minutes, Aggregation::Avg, now);
        // 180 runner-seconds over an hour: 0.05 runners on average.
        assert_eq!(avg[0].counts.running, Decimal::new(5, 2));
        assert_eq!(avg[0].counts.idle, Decimal::new(8333, 6));
    }

    #[test]
    fn buckets_after_now_are_left_out() {
        let r = range(
            "2026-03-01T00:00:00Z",
            "2026-03-02T00:00:00Z",
            Timeframe::Hour,
        );
        let shown = buckets_of(&r, &[], Aggregation::Max, at("2026-03-01T05:30:00Z"));
        assert_eq!(shown.len(), 6, "00:00 to 05:00, the current hour included");
    }

    #[test]
    fn a_history_spans_at_most_ninety_days() {
        let spec = |days: i64| RangeSpec {
            start: Some(Moment::At(Timestamp(0))),
            end: Some(Moment::At(Timestamp(days * DAY_MS))),
            ..RangeSpec::default()
        };
        assert!(history_range(&spec(90), Timestamp(100 * DAY_MS)).is_ok());
        let e = history_range(&spec(91), Timestamp(100 * DAY_MS)).unwrap_err();
        assert_eq!(e.field, "start");
        // fal's pick: day buckets under 64 days.
        let r = history_range(&spec(30), Timestamp(100 * DAY_MS)).unwrap();
        assert_eq!(r.timeframe, Timeframe::Day);
    }
}
