//! Serverless, `/dashboard/serverless`: what the account's own serverless apps cost over a
//! range it picks (the usage page's range controls, [`super::range`]; this month by default)
//! and how their runners ran.
//!
//! - Cost by app, environment and machine type, surge time apart: a row per line, unit price
//!   and discount (GPU-seconds, the unit price per GPU-second, the discount, the cost), with
//!   the totals at standard and at surge prices and in all. The rows are the summary of
//!   `tollgate_query::serverless::usage`, the same read as the API's
//!   `GET /v1/serverless/usage?expand=summary`, so every figure is the API's, exactly.
//! - Spend per day (per hour for a range of one or two days) by app, a stacked chart over its
//!   table ([`super::spend_chart`]), from the same read's time series.
//! - The runner-state history of one app (a select of the account's apps, the first by
//!   default): how many of its runners were running, idle, pending and draining in each
//!   bucket's busiest minute (fal's `max` aggregation), from
//!   `tollgate_query::serverless::runner_history`, as the API's
//!   `GET /v1/serverless/apps/{owner}/{name}/runners/history?aggregation=max` answers it. Its
//!   buckets are UTC hours or days over the page's range (its last 90 days when it is longer,
//!   the most one history spans), drawn as lines over the table of the same counts.
//!
//! The account's apps are those of its runners (the latest [`RUNNERS_READ`]) and of its usage
//! in the range. An account that never ran a runner sees what the page is for instead of an
//! empty chart. Anything the page cannot show (a range the controls refuse, an app that is not
//! the account's) is a 400 page that says what is wrong, with the form to correct it.

use super::range::{self, Asked, Controls, View};
use super::{add, buckets, chrome, ranked, spend_chart, PerBucket, Spend};
use crate::error::PageError;
use crate::layout::{self, empty};
use crate::session::CustomerSession;
use crate::{fmt, DashboardState};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono_tz::Tz;
use maud::{html, Markup};
use rust_decimal::Decimal;
use std::collections::BTreeSet;
use tollgate_core::ids::AppName;
use tollgate_core::{Nanos, Timestamp};
use tollgate_query::serverless::{
    Aggregation, RunnerHistory, RunnerHistoryQuery, ServerlessUsage, ServerlessUsageRow,
    HISTORY_MAX_RANGE_MS,
};
use tollgate_query::timeframe::{Moment, Range, RangeSpec, Timeframe};

/// The page's path, its section in the navigation.
pub const SECTION: &str = "/dashboard/serverless";

/// How many of the account's latest runners name its apps (with the apps of the range's
/// usage).
pub const RUNNERS_READ: usize = 1_000;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new().route(SECTION, get(page))
}

/// The controls of the page: the shared range controls, keeping the app shown.
fn controls<'a>(app: Option<&'a AppName>) -> Controls<'a> {
    Controls {
        path: SECTION,
        name: "serverless",
        label: "Serverless range",
        keys: None,
        kept: app.map(|a| ("app", a.to_string())).into_iter().collect(),
    }
}

pub async fn page(
    State(state): State<DashboardState>,
    who: CustomerSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let mut asked = Asked::parse(raw.as_deref());
    // Runners have no key: the page has no key filter.
    asked.key.clear();
    let now = state.engine().now();
    let view = match View::check(&asked, &[], now) {
        Ok(view) => view,
        Err(why) => return refused(&who, &asked, &why),
    };
    let spec = view.spec().map_err(PageError::bad_request)?;
    let range = tollgate_query::timeframe::resolve(&spec, now)
        .map_err(|e| PageError::bad_request(e.to_string()))?;
    let usage = super::serverless_usage(&state, &who.account, &range, true).await?;
    let apps = apps(&state, &who, &usage).await?;
    let Some(first) = apps.first() else {
        let body = no_apps();
        return Ok(
            layout::html(layout::page(&chrome(&who, SECTION), "Serverless", body)).into_response(),
        );
    };
    let app = if asked.app.is_empty() {
        first.clone()
    } else if let Some(a) = apps.iter().find(|a| a.as_str() == asked.app) {
        a.clone()
    } else {
        let why = format!(
            "No app of this account is named '{}': pick one of its apps.",
            asked.app
        );
        return refused(&who, &asked, &why);
    };
    let spend = by_app(&range, usage)?;
    let (history_spec, shortened) = history_spec(&range, view.days());
    let history = tollgate_query::serverless::runner_history(
        state.engine(),
        RunnerHistoryQuery {
            account: who.account.clone(),
            app: app.clone(),
            range: history_spec,
            aggregation: Aggregation::Max,
        },
    )
    .await?;
    let body = html! {
        (range::controls(&controls(Some(&app)), &asked, Some(&view), None))
        (range::shown(&view, html! {}))
        (costs(&view, &spend)?)
        h2 #history-title { "Runners of " (app) }
        (app_form(&apps, &app, &view))
        (history_chart(&app, &history, shortened))
    };
    Ok(layout::html(layout::page(&chrome(&who, SECTION), "Serverless", body)).into_response())
}

/// The account's apps, by name: those of its latest runners and of its usage in the range.
async fn apps(
    state: &DashboardState,
    who: &CustomerSession,
    usage: &ServerlessUsage,
) -> Result<BTreeSet<AppName>, PageError> {
    let account = who.account.clone();
    let runners = state
        .engine()
        .read(move |r| r.runners(&account, RUNNERS_READ))
        .await?;
    let mut apps: BTreeSet<AppName> = runners.into_iter().map(|r| r.app).collect();
    for r in usage.summary.iter().flatten() {
        apps.insert(r.line.app.clone());
    }
    Ok(apps)
}

/// The range's spend per bucket by app, from the series of the same read as its rows (the
/// summary), so the chart and the table agree.
fn by_app(range: &Range, usage: ServerlessUsage) -> Result<Spend, PageError> {
    let mut per_bucket = PerBucket::new();
    for b in usage.time_series.unwrap_or_default() {
        let into = per_bucket.entry(b.bucket).or_default();
        for r in b.results {
            add(
                into.entry(r.line.app.to_string()).or_insert(Nanos::ZERO),
                r.total,
            )?;
        }
    }
    let buckets = buckets(range);
    let series = ranked(&buckets, &per_bucket)?;
    Ok(Spend {
        timeframe: range.timeframe,
        tz: range.tz,
        buckets,
        series,
        summary: Vec::new(),
        serverless: usage.summary.unwrap_or_default(),
    })
}

/// The range's costs: the chart of spend by app and the table by line, or what the page
/// shows when nothing was billed in the range.
fn costs(view: &View, spend: &Spend) -> Result<Markup, PageError> {
    if spend.serverless.is_empty() {
        return Ok(empty(
            &format!("No serverless usage from {} to {}", view.first, view.last),
            html! {
                "This part of the page shows what your apps' runners cost, by app, environment \
                 and machine type, and a chart of their spend over the range. Nothing was billed \
                 in this range: pick a longer one above."
            },
        ));
    }
    let per = if view.days() <= 2 { "hour" } else { "day" };
    let caption = format!("Spend per {per} by app ({})", view.tz.name());
    Ok(html! {
        (spend_chart("serverless-chart", &caption, spend))
        h2 { "By app and machine type" }
        (cost_table(&spend.serverless, view)?)
        p.hint {
            "Rows group runner time by app, environment, machine type, surge, unit price and \
             discount, as " code { "GET /v1/serverless/usage" } " does; quantities are \
             GPU-seconds (seconds × GPUs), amounts are exact. Model requests are on the "
            a href="/dashboard/usage" { "Usage" } " page."
        }
    })
}

/// The page saying what is wrong with the request (400), with the range controls as sent.
fn refused(who: &CustomerSession, asked: &Asked, why: &str) -> Result<Response, PageError> {
    let app = AppName::parse(&asked.app).ok();
    let body = range::controls(&controls(app.as_ref()), asked, None, Some(why));
    Ok((
        StatusCode::BAD_REQUEST,
        layout::html(layout::page(&chrome(who, SECTION), "Serverless", body)),
    )
        .into_response())
}

/// What an account that never ran a runner sees.
fn no_apps() -> Markup {
    empty(
        "No serverless apps yet",
        html! {
            "This page shows what your own serverless apps cost: the seconds their runners \
             spend setting up, idle, running, draining and terminating, times their GPUs, at \
             each machine type's price per GPU-second, and how many runners each app had \
             running, idle, pending and draining. It fills in once a runner of one of your \
             apps starts. Requests to models are on the "
            a href="/dashboard/usage" { "Usage" } " page."
        },
    )
}

/// A sum of decimals the store answered (GPU-seconds); an overflow is the server's fault.
fn add_quantity(sum: &mut Decimal, q: Decimal) -> Result<(), PageError> {
    *sum = sum
        .checked_add(q)
        .ok_or_else(|| PageError::internal("a sum of GPU-seconds overflowed"))?;
    Ok(())
}

/// What a set of rows adds up to: GPU-seconds, discount and cost.
#[derive(Default)]
struct Totals {
    quantity: Decimal,
    discount: Nanos,
    total: Nanos,
}

impl Totals {
    fn of<'a>(rows: impl Iterator<Item = &'a ServerlessUsageRow>) -> Result<Totals, PageError> {
        let mut t = Totals::default();
        for r in rows {
            add_quantity(&mut t.quantity, r.quantity)?;
            add(&mut t.discount, r.discount)?;
            add(&mut t.total, r.total)?;
        }
        Ok(t)
    }
}

/// A discount as the usage page shows it: negative, with its percentage; a dash for none.
fn discount_cell(discount: Nanos, percent: Option<Decimal>) -> Markup {
    html! {
        @if discount == Nanos::ZERO && percent.is_none() {
            span.muted { "—" }
        } @else {
            (fmt::usd(Nanos(discount.0.saturating_neg())))
            @if let Some(p) = percent {
                " " span.muted { "(" (fmt::percent(p)) ")" }
            }
        }
    }
}

/// The cost table: a row per line, unit price and discount (the query's order: by app,
/// environment, machine type, standard before surge), then the totals at standard and at
/// surge prices (when there is surge time) and in all.
fn cost_table(rows: &[ServerlessUsageRow], view: &View) -> Result<Markup, PageError> {
    let all = Totals::of(rows.iter())?;
    let any_surge = rows.iter().any(|r| r.line.is_surge);
    let standard = Totals::of(rows.iter().filter(|r| !r.line.is_surge))?;
    let surge = Totals::of(rows.iter().filter(|r| r.line.is_surge))?;
    let foot = |label: &str, id: &str, t: &Totals| {
        html! {
            tr id=(id) data-quantity=(t.quantity.normalize()) data-nano-usd=(t.total.0) {
                th scope="row" colspan="4" { (label) }
                td.num { (fmt::quantity(t.quantity)) }
                td {}
                td.num data-nano-usd=(t.discount.0) {
                    @if t.discount == Nanos::ZERO { span.muted { "—" } }
                    @else { (fmt::usd(Nanos(t.discount.0.saturating_neg()))) }
                }
                td.num { (fmt::usd(t.total)) }
            }
        }
    };
    Ok(html! {
        div.table-wrap tabindex="0" {
            table #serverless-table {
                caption { "Serverless cost by app and machine type: " (view.describe()) " (" (view.tz.name()) ")" }
                thead { tr {
                    th scope="col" { "App" }
                    th scope="col" { "Environment" }
                    th scope="col" { "Machine type" }
                    th scope="col" { "Prices" }
                    th.num scope="col" { "GPU-seconds" }
                    th.num scope="col" { "Unit price" }
                    th.num scope="col" { "Discount" }
                    th.num scope="col" { "Cost" }
                } }
                tbody {
                    @for r in rows {
                        tr data-app=(r.line.app)
                            data-environment=(r.line.environment.as_ref().map_or("", |e| e.as_str()))
                            data-machine-type=(r.line.machine_type)
                            data-surge=(r.line.is_surge)
                            data-quantity=(r.quantity.normalize())
                            data-unit-price=(r.unit_price.normalize())
                            data-discount-nano-usd=(r.discount.0)
                            data-nano-usd=(r.total.0) {
                            td.nowrap { code { (r.line.app) } }
                            td {
                                @match &r.line.environment {
                                    Some(e) => { (e) }
                                    None => { span.muted { "—" } }
                                }
                            }
                            td.nowrap { (r.line.machine_type) }
                            td {
                                @if r.line.is_surge { span.badge.warn { "surge" } }
                                @else { "standard" }
                            }
                            td.num { (fmt::quantity(r.quantity)) }
                            td.num { (fmt::usd_exact(r.unit_price)) span.muted { "/s" } }
                            td.num { (discount_cell(r.discount, r.percent_discount)) }
                            td.num { (fmt::usd(r.total)) }
                        }
                    }
                }
                tfoot {
                    @if any_surge {
                        (foot("At standard prices", "serverless-standard", &standard))
                        (foot("At surge prices", "serverless-surge", &surge))
                    }
                    (foot("Total", "serverless-total", &all))
                }
            }
        }
    })
}

/// The form that picks the app whose runners are shown, keeping the range.
fn app_form(apps: &BTreeSet<AppName>, app: &AppName, view: &View) -> Markup {
    let kept: Vec<(String, String)> = form_urlencoded::parse(view.query().as_bytes())
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    html! {
        form.filters #app-form method="get" action=(SECTION) aria-label="App" {
            @for (name, value) in &kept {
                input type="hidden" name=(name) value=(value);
            }
            div {
                label for="app" { "App" }
                select #app name="app" {
                    @for a in apps {
                        option value=(a) selected[a == app] { (a) }
                    }
                }
            }
            button type="submit" { "Show its runners" }
        }
    }
}

/// The range of the runner-state history: the page's range in UTC buckets (hours for one or
/// two days, else days), its last [`HISTORY_MAX_RANGE_MS`] when it is longer; and whether it
/// was shortened so.
fn history_spec(range: &Range, days: i64) -> (RangeSpec, bool) {
    let start = range
        .start
        .max(Timestamp(range.end.0.saturating_sub(HISTORY_MAX_RANGE_MS)));
    let spec = RangeSpec {
        start: Some(Moment::At(start)),
        end: Some(Moment::At(range.end)),
        tz: Tz::UTC,
        timeframe: Some(if days <= 2 {
            Timeframe::Hour
        } else {
            Timeframe::Day
        }),
        bound_to_timeframe: true,
    };
    (spec, start > range.start)
}

/// The runner-state history: lines per state over the table of the same counts (what a
/// browser without JavaScript shows), or a note when the range has no bucket yet.
fn history_chart(app: &AppName, h: &RunnerHistory, shortened: bool) -> Markup {
    let hourly = matches!(h.timeframe, Timeframe::Hour | Timeframe::Minute);
    let label = |t: Timestamp| {
        if hourly {
            fmt::datetime(t)
        } else {
            fmt::date(t)
        }
    };
    let columns = ["Running", "Idle", "Pending", "Draining"];
    let table = html! {
        div.table-wrap tabindex="0" {
            table #history-table data-tz="UTC" {
                thead {
                    tr {
                        th scope="col" { @if hourly { "Hour (UTC)" } @else { "Day (UTC)" } }
                        @for c in columns { th.num scope="col" data-series { (c) } }
                    }
                }
                tbody {
                    @for p in &h.history {
                        @let counts = [p.counts.running, p.counts.idle, p.counts.pending, p.counts.draining];
                        tr data-timestamp=(tollgate_core::time::rfc3339(p.timestamp)) {
                            th scope="row" data-x=(p.timestamp.0 / 1000) { (label(p.timestamp)) }
                            @for c in counts {
                                td.num data-value=(c.normalize()) { (fmt::quantity(c)) }
                            }
                        }
                    }
                }
            }
        }
    };
    let per = if hourly { "hour" } else { "day" };
    html! {
        @if h.history.is_empty() {
            (empty(&format!("No runner history of {app} in this range yet"), html! {
                "The range begins after now."
            }))
        } @else {
            (layout::chart(
                "runner-history",
                &format!("Runners of {app} by state, the busiest minute of each {per} (UTC)"),
                "lines",
                table,
            ))
            p.hint {
                "A runner counts where it spent the minute: running (processing requests), idle \
                 (warm, waiting; billed), pending (being scheduled, pulling its image or setting \
                 up) or draining (finishing before it stops). A fraction is a runner there for \
                 part of the minute."
                @if shortened {
                    " The history shows the range's last 90 days, the most one history spans."
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp(
            chrono::DateTime::parse_from_rfc3339(text)
                .expect("a test instant")
                .timestamp_millis(),
        )
    }

    #[test]
    fn the_history_spans_the_range_or_its_last_ninety_days() {
        let range = |start: &str, end: &str| {
            tollgate_query::timeframe::resolve(
                &RangeSpec {
                    start: Some(Moment::At(at(start))),
                    end: Some(Moment::At(at(end))),
                    timeframe: Some(Timeframe::Day),
                    ..RangeSpec::default()
                },
                at(end),
            )
            .expect("a range")
        };
        let r = range("2026-11-01T00:00:00Z", "2026-11-25T00:00:00Z");
        let (spec, shortened) = history_spec(&r, 24);
        assert!(!shortened);
        assert_eq!(spec.start, Some(Moment::At(r.start)));
        assert_eq!(spec.timeframe, Some(Timeframe::Day));
        let r = range("2025-11-25T00:00:00Z", "2026-11-25T00:00:00Z");
        let (spec, shortened) = history_spec(&r, 365);
        assert!(shortened);
        assert_eq!(
            spec.start,
            Some(Moment::At(Timestamp(r.end.0 - HISTORY_MAX_RANGE_MS)))
        );
        let (spec, _) = history_spec(&range("2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z"), 1);
        assert_eq!(spec.timeframe, Some(Timeframe::Hour));
    }
}
