//! The customer's billing dashboard, `/dashboard`: every page shows the signed-in account only
//! (the account comes from the session, never from the URL).

pub mod auto_top_up;
pub mod billing;
pub mod keys;
pub mod limits;
pub mod overview;
pub mod range;
pub mod requests;
pub mod top_ups;
pub mod usage;

use crate::error::PageError;
use crate::layout::{self, Chrome};
use crate::session::{self, Area, CustomerSession};
use crate::{fmt, DashboardState};
use axum::routing::get;
use maud::{html, Markup};
use std::collections::BTreeMap;
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId};
use tollgate_core::machine::MAX_EVENT_SKEW_MS;
use tollgate_core::{Nanos, Timestamp};
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

/// How many endpoints a spend chart shows by name; the rest are one "Other" series.
pub const TOP_ENDPOINTS: usize = 5;

/// Spend per bucket of a range, per endpoint: what the spend charts draw, from the usage
/// query's time series (the rollups), and the range's summary rows.
pub struct Spend {
    /// The buckets' width and the time zone their labels are in.
    pub timeframe: Timeframe,
    pub tz: chrono_tz::Tz,
    /// Each bucket's start and label, in order.
    pub buckets: Vec<(Timestamp, String)>,
    /// The top endpoints by total over the range, largest first, then "Other" if any endpoint
    /// is left: each with its total per bucket.
    pub series: Vec<(String, Vec<Nanos>)>,
    /// The range's usage rows (fal's grouping: endpoint, unit, price, discount).
    pub summary: Vec<UsageRow>,
}

impl Spend {
    /// The total of the range: the sum of its summary rows.
    pub fn total(&self) -> Result<Nanos, PageError> {
        let mut sum = Nanos::ZERO;
        for r in &self.summary {
            add(&mut sum, r.total)?;
        }
        Ok(sum)
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

/// Reads the account's spend over `spec` (resolved at the engine's clock), optionally only of
/// some keys.
pub async fn spend(
    state: &DashboardState,
    account: &AccountId,
    spec: &RangeSpec,
    api_keys: Vec<ApiKeyId>,
) -> Result<(Range, Spend), PageError> {
    let now = state.engine().now();
    let range = tollgate_query::timeframe::resolve(spec, now)
        .map_err(|e| PageError::bad_request(e.to_string()))?;
    // No usage is dated later than the engine's clock allows (a usage event's timestamp at
    // most `MAX_EVENT_SKEW_MS` ahead): the read stops there, so a range that runs into the
    // future (this month, today) reads no empty hours; its buckets are still the whole range's.
    let mut read = range.clone();
    read.end = read.end.min(now.plus_ms(MAX_EVENT_SKEW_MS)).max(read.start);
    // One read: the series and the summary come from the same rollup rows, so the chart and
    // the table always agree (the page limit is above any range's rows: at most 366 days).
    let q = UsageQuery {
        account: account.clone(),
        range: read,
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
    let summary = answer.summary.unwrap_or_default();
    let mut per_bucket: BTreeMap<String, BTreeMap<EndpointId, Nanos>> = BTreeMap::new();
    for b in answer.time_series.unwrap_or_default() {
        let into = per_bucket.entry(b.bucket).or_default();
        for r in b.results {
            add(into.entry(r.endpoint).or_insert(Nanos::ZERO), r.total)?;
        }
    }
    let mut totals: BTreeMap<&EndpointId, Nanos> = BTreeMap::new();
    for r in &summary {
        add(totals.entry(&r.endpoint).or_insert(Nanos::ZERO), r.total)?;
    }
    let mut ranked: Vec<(&EndpointId, Nanos)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let top: Vec<EndpointId> = ranked
        .iter()
        .take(TOP_ENDPOINTS)
        .map(|(e, _)| (*e).clone())
        .collect();
    let buckets: Vec<(Timestamp, String)> = range
        .buckets()
        .into_iter()
        .map(|b| (b.start, b.label))
        .collect();
    let mut series: Vec<(String, Vec<Nanos>)> = top
        .iter()
        .map(|e| (e.to_string(), vec![Nanos::ZERO; buckets.len()]))
        .collect();
    for (i, (_, label)) in buckets.iter().enumerate() {
        let Some(row) = per_bucket.get(label) else {
            continue;
        };
        for (endpoint, total) in row {
            let s = top.iter().position(|e| e == endpoint).unwrap_or(top.len());
            if s == series.len() {
                series.push(("Other".to_string(), vec![Nanos::ZERO; buckets.len()]));
            }
            add(&mut series[s].1[i], *total)?;
        }
    }
    let (timeframe, tz) = (range.timeframe, range.tz);
    Ok((
        range,
        Spend {
            timeframe,
            tz,
            buckets,
            series,
            summary,
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
