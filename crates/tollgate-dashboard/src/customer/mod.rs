//! The customer's billing dashboard, `/dashboard`: every page shows the signed-in account only
//! (the account comes from the session, never from the URL).

pub mod auto_top_up;
pub mod billing;
pub mod keys;
pub mod limits;
pub mod overview;
pub mod range;
pub mod requests;
pub mod serverless;
pub mod top_ups;
pub mod usage;

use crate::error::PageError;
use crate::layout::{self, Chrome};
use crate::session::{self, Area, CustomerSession};
use crate::{fmt, DashboardState};
use axum::routing::get;
use maud::{html, Markup};
use std::collections::BTreeMap;
use tollgate_core::ids::{AccountId, ApiKeyId};
use tollgate_core::machine::MAX_EVENT_SKEW_MS;
use tollgate_core::{Nanos, Timestamp};
use tollgate_query::serverless::{ServerlessUsage, ServerlessUsageQuery, ServerlessUsageRow};
use tollgate_query::timeframe::{Range, RangeSpec, Timeframe};
use tollgate_query::usage::{UsageQuery, UsageRow};

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .merge(session::routes(Area::Customer))
        .route("/dashboard", get(overview::page))
        .merge(billing::routes())
        .merge(keys::routes())
        .merge(limits::routes())
        .merge(usage::routes())
        .merge(serverless::routes())
        .merge(requests::routes())
        .merge(top_ups::routes())
        .merge(auto_top_up::routes())
}

/// The chrome of a customer page in `section`.
pub fn chrome<'a>(who: &'a CustomerSession, section: &'static str) -> Chrome<'a> {
    Chrome {
        area: Area::Customer,
        section,
        who: who.account.as_str(),
        csrf: &who.session.csrf,
    }
}

/// How many endpoints (or apps) a spend chart shows by name; the rest are one "Other" series.
pub const TOP_ENDPOINTS: usize = 5;

/// Which usage a spend read counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Of {
    /// Model endpoints only (the usage page).
    Models,
    /// Everything the ledger charged for usage: model endpoints and serverless runner time
    /// (the overview, the console). A key filter leaves serverless time out: runners have no
    /// key.
    All,
}

/// Spend per bucket of a range, per endpoint (or serverless line, or app): what the spend
/// charts draw, from the usage queries' time series (the rollups), and the range's summary
/// rows.
pub struct Spend {
    /// The buckets' width and the time zone their labels are in.
    pub timeframe: Timeframe,
    pub tz: chrono_tz::Tz,
    /// Each bucket's start and label, in order.
    pub buckets: Vec<(Timestamp, String)>,
    /// The top series by total over the range, largest first, then "Other" if any is left:
    /// each with its total per bucket. Model endpoints are named by their id, serverless lines
    /// by [`tollgate_core::serverless::Line::describe`] (or by app, on the serverless page).
    pub series: Vec<(String, Vec<Nanos>)>,
    /// The range's model usage rows (fal's grouping: endpoint, unit, price, discount).
    pub summary: Vec<UsageRow>,
    /// The range's serverless usage rows (app, environment, machine type, surge, price,
    /// discount), when the read counts them.
    pub serverless: Vec<ServerlessUsageRow>,
}

impl Spend {
    /// The total of the range: the sum of its summary rows, models' and serverless'.
    pub fn total(&self) -> Result<Nanos, PageError> {
        let mut sum = Nanos::ZERO;
        for r in &self.summary {
            add(&mut sum, r.total)?;
        }
        for r in &self.serverless {
            add(&mut sum, r.total)?;
        }
        Ok(sum)
    }

    /// Whether the range has no usage at all.
    pub fn is_empty(&self) -> bool {
        self.summary.is_empty() && self.serverless.is_empty()
    }
}

/// Adds an amount to a sum of amounts the store answered; an overflow is the server's fault
/// (500), never a silently wrong figure.
pub fn add(sum: &mut Nanos, amount: Nanos) -> Result<(), PageError> {
    *sum = sum
        .checked_add(amount)
        .map_err(|e| PageError::internal(format!("a sum of amounts overflowed: {e}")))?;
    Ok(())
}

/// The part of `range` a usage read covers: no usage is dated later than the engine's clock
/// allows (`skew_ms` ahead), so the read stops there and a range that runs into the future
/// (this month, today) reads no empty hours; its buckets are still the whole range's.
fn readable(range: &Range, now: Timestamp, skew_ms: i64) -> Range {
    let mut read = range.clone();
    read.end = read.end.min(now.plus_ms(skew_ms)).max(read.start);
    read
}

/// Amounts per bucket label, per series name: what [`ranked`] turns into a chart's series.
pub type PerBucket = BTreeMap<String, BTreeMap<String, Nanos>>;

/// The series of a spend chart: the [`TOP_ENDPOINTS`] names of the largest totals over the
/// range, largest first (ties by name), then "Other" for the rest, each with its amount per
/// bucket of `buckets` (matched by label).
pub fn ranked(
    buckets: &[(Timestamp, String)],
    per_bucket: &PerBucket,
) -> Result<Vec<(String, Vec<Nanos>)>, PageError> {
    let mut totals: BTreeMap<&str, Nanos> = BTreeMap::new();
    for row in per_bucket.values() {
        for (name, amount) in row {
            add(totals.entry(name).or_insert(Nanos::ZERO), *amount)?;
        }
    }
    let mut ranked: Vec<(&str, Nanos)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let top: Vec<&str> = ranked.iter().take(TOP_ENDPOINTS).map(|(n, _)| *n).collect();
    let mut series: Vec<(String, Vec<Nanos>)> = top
        .iter()
        .map(|n| (n.to_string(), vec![Nanos::ZERO; buckets.len()]))
        .collect();
    for (i, (_, label)) in buckets.iter().enumerate() {
        let Some(row) = per_bucket.get(label) else {
            continue;
        };
        for (name, amount) in row {
            let s = top.iter().position(|n| n == name).unwrap_or(top.len());
            if s == series.len() {
                series.push(("Other".to_string(), vec![Nanos::ZERO; buckets.len()]));
            }
            add(&mut series[s].1[i], *amount)?;
        }
    }
    Ok(series)
}

/// The account's serverless usage over `range` (resolved), as `GET /v1/serverless/usage`
/// answers it: the summary and, when `time_series`, every row of the series (one page).
pub async fn serverless_usage(
    state: &DashboardState,
    account: &AccountId,
    range: &Range,
    time_series: bool,
) -> Result<ServerlessUsage, PageError> {
    let now = state.engine().now();
    let q = ServerlessUsageQuery {
        account: account.clone(),
        range: readable(range, now, tollgate_core::serverless::MAX_EVENT_SKEW_MS),
        apps: Vec::new(),
        search: None,
        time_series,
        summary: true,
        cursor: None,
        limit: usize::MAX / 2,
    };
    Ok(tollgate_query::serverless::usage(state.engine(), q).await?)
}

/// The range's buckets: each one's start and label.
pub fn buckets(range: &Range) -> Vec<(Timestamp, String)> {
    range
        .buckets()
        .into_iter()
        .map(|b| (b.start, b.label))
        .collect()
}

/// Reads the account's spend over `spec` (resolved at the engine's clock): of model endpoints
/// only, optionally only of some keys, or of everything the ledger charged for usage (`of`).
pub async fn spend(
    state: &DashboardState,
    account: &AccountId,
    spec: &RangeSpec,
    api_keys: Vec<ApiKeyId>,
    of: Of,
) -> Result<(Range, Spend), PageError> {
    let now = state.engine().now();
    let range = tollgate_query::timeframe::resolve(spec, now)
        .map_err(|e| PageError::bad_request(e.to_string()))?;
    let with_serverless = of == Of::All && api_keys.is_empty();
    // One read per service: the series and the summary come from the same rollup rows, so the
    // chart and the table always agree (the page limit is above any range's rows: at most 366
    // days).
    let q = UsageQuery {
        account: account.clone(),
        range: readable(&range, now, MAX_EVENT_SKEW_MS),
        endpoints: Vec::new(),
        api_keys,
        by_login: false,
        time_series: true,
        summary: true,
        by_key: false,
        cursor: None,
        limit: usize::MAX / 2,
    };
    let answer = tollgate_query::usage::usage(state.engine(), q).await?;
    let mut per_bucket = PerBucket::new();
    for b in answer.time_series.unwrap_or_default() {
        let into = per_bucket.entry(b.bucket).or_default();
        for r in b.results {
            add(
                into.entry(r.endpoint.to_string()).or_insert(Nanos::ZERO),
                r.total,
            )?;
        }
    }
    let serverless = if with_serverless {
        let usage = serverless_usage(state, account, &range, true).await?;
        for b in usage.time_series.unwrap_or_default() {
            let into = per_bucket.entry(b.bucket).or_default();
            for r in b.results {
                add(
                    into.entry(r.line.describe()).or_insert(Nanos::ZERO),
                    r.total,
                )?;
            }
        }
        usage.summary.unwrap_or_default()
    } else {
        Vec::new()
    };
    let buckets = buckets(&range);
    let series = ranked(&buckets, &per_bucket)?;
    let (timeframe, tz) = (range.timeframe, range.tz);
    Ok((
        range,
        Spend {
            timeframe,
            tz,
            buckets,
            series,
            summary: answer.summary.unwrap_or_default(),
            serverless,
        },
    ))
}

/// A spend chart: stacked bars per bucket, one series per top endpoint and "Other", over the
/// table of the same figures (exact amounts). Buckets are labelled in the range's time zone
/// (`data-tz`, which the script draws the axis in): by date, or by hour for hourly buckets.
pub fn spend_chart(id: &str, caption: &str, spend: &Spend) -> Markup {
    let hourly = matches!(spend.timeframe, Timeframe::Hour | Timeframe::Minute);
    let table = html! {
        div.table-wrap tabindex="0" {
            table data-tz=(spend.tz.name()) {
                thead {
                    tr {
                        th scope="col" { @if hourly { "Hour" } @else { "Day" } }
                        @for (name, _) in &spend.series {
                            th.num scope="col" data-series { (name) }
                        }
                    }
                }
                tbody {
                    @for (i, (start, label)) in spend.buckets.iter().enumerate() {
                        tr {
                            th scope="row" data-x=(start.0 / 1000) {
                                @if hourly {
                                    (label.get(11..16).unwrap_or(label))
                                } @else {
                                    (label.get(..10).unwrap_or(label))
                                }
                            }
                            @for (_, values) in &spend.series {
                                td.num data-value=(values[i].to_usd().normalize()) { (fmt::usd(values[i])) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::chart(id, caption, "stacked-bars", table)
}
