//! Usage, `/dashboard/usage`: what the account was billed per endpoint over a range it picks (a
//! preset or its own dates, in the time zone it names, optionally of one API key), as fal's
//! usage rows (endpoint, unit, unit price, discount) with their total, a chart of spend per day
//! (per hour for a range of one or two days), and the same rows as CSV
//! (`/dashboard/usage.csv`, the same parameters).
//!
//! The rows are the summary of `tollgate_query::usage`, the same read as the API's
//! `GET /v1/models/usage?expand=summary`, so every figure is the API's. A range is whole local
//! days, both dates included, at most [`MAX_DAYS`]; anything the page cannot show (an unknown
//! zone, an end before the start, a range too long, a key that is not the account's) is a 400
//! page that says what is wrong, with the form to correct it.

use super::{chrome, spend, spend_chart, Spend};
use crate::error::PageError;
use crate::layout::{self, empty};
use crate::session::CustomerSession;
use crate::{fmt, DashboardState};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use maud::{html, Markup};
use tollgate_core::ids::AccountId;
use tollgate_core::{Nanos, Timestamp};
use tollgate_query::keys::KeyOwner;
use tollgate_query::timeframe::{parse_timezone, Moment, RangeSpec, Timeframe};
use tollgate_query::usage::{UsageQuery, UsageRow};
use tollgate_store::{ApiKeyRecord, Scope};

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route("/dashboard/usage", get(page))
        .route("/dashboard/usage.csv", get(csv))
}

/// The longest range shown at once, in days: a (leap) year.
pub const MAX_DAYS: i64 = 366;

/// Zones offered in the time-zone field's suggestions; any IANA name may be typed.
pub const COMMON_ZONES: &[&str] = &[
    "UTC",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Toronto",
    "America/Mexico_City",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Dublin",
    "Europe/Lisbon",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Amsterdam",
    "Europe/Madrid",
    "Europe/Rome",
    "Europe/Stockholm",
    "Europe/Warsaw",
    "Europe/Istanbul",
    "Africa/Lagos",
    "Africa/Johannesburg",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Shanghai",
    "Asia/Hong_Kong",
    "Asia/Seoul",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
];

/// The ranges offered as links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preset {
    Today,
    Last7Days,
    ThisMonth,
    LastMonth,
}

impl Preset {
    const ALL: [Preset; 4] = [
        Preset::Today,
        Preset::Last7Days,
        Preset::ThisMonth,
        Preset::LastMonth,
    ];

    /// Its spelling in the `range` parameter.
    fn slug(self) -> &'static str {
        match self {
            Preset::Today => "today",
            Preset::Last7Days => "7d",
            Preset::ThisMonth => "month",
            Preset::LastMonth => "last-month",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Preset::Today => "Today",
            Preset::Last7Days => "Last 7 days",
            Preset::ThisMonth => "This month",
            Preset::LastMonth => "Last month",
        }
    }

    fn parse(slug: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.slug() == slug)
    }

    /// Its first and last day (both included) when it is `today`: this month runs to today.
    fn days(self, today: NaiveDate) -> (NaiveDate, NaiveDate) {
        let month_start = today.with_day(1).unwrap_or(today);
        match self {
            Preset::Today => (today, today),
            Preset::Last7Days => (today.checked_sub_days(Days::new(6)).unwrap_or(today), today),
            Preset::ThisMonth => (month_start, today),
            Preset::LastMonth => {
                let last = month_start.pred_opt().unwrap_or(month_start);
                (last.with_day(1).unwrap_or(last), last)
            }
        }
    }
}

/// The range shown when none is asked for.
const DEFAULT_PRESET: Preset = Preset::ThisMonth;

/// The parameters as the visitor sent them (the form shows them back as typed): `range` (a
/// preset), `start` and `end` (dates, both included: they win over `range`), `tz` (an IANA
/// zone, default UTC) and `key` (an API key id; empty: every key).
#[derive(Clone, Debug, Default)]
struct Asked {
    range: String,
    start: String,
    end: String,
    tz: String,
    key: String,
}

impl Asked {
    /// The first value of each parameter; unknown ones are ignored.
    fn parse(raw: Option<&str>) -> Asked {
        let mut asked = Asked::default();
        let mut seen = [false; 5];
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let (i, into) = match name.as_ref() {
                "range" => (0, &mut asked.range),
                "start" => (1, &mut asked.start),
                "end" => (2, &mut asked.end),
                "tz" => (3, &mut asked.tz),
                "key" => (4, &mut asked.key),
                _ => continue,
            };
            if !seen[i] {
                seen[i] = true;
                *into = value.trim().to_string();
            }
        }
        asked
    }
}

/// A range to show, checked.
struct View {
    /// The preset it is (asked for, or whose days the dates are).
    preset: Option<Preset>,
    /// The first and last local day, both included.
    first: NaiveDate,
    last: NaiveDate,
    tz: Tz,
    key: Option<ApiKeyRecord>,
}

/// The local date of `now` in `tz`.
fn today_in(tz: Tz, now: Timestamp) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(now.0)
        .unwrap_or_default()
        .with_timezone(&tz)
        .date_naive()
}

fn date(text: &str, which: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        format!("The {which} date '{text}' is not a date: write it as YYYY-MM-DD, e.g. 2026-11-01.")
    })
}

impl View {
    /// Checks what was asked against the account's keys, at `now`; the error says what is
    /// wrong.
    fn check(asked: &Asked, keys: &[ApiKeyRecord], now: Timestamp) -> Result<View, String> {
        let tz = if asked.tz.is_empty() {
            Tz::UTC
        } else {
            parse_timezone(&asked.tz).map_err(|e| format!("Time zone: {e}."))?
        };
        let key = if asked.key.is_empty() {
            None
        } else {
            Some(
                keys.iter()
                    .find(|k| k.key_id.as_str() == asked.key)
                    .cloned()
                    .ok_or_else(|| {
                        format!("No API key of this account has the id '{}'.", asked.key)
                    })?,
            )
        };
        let today = today_in(tz, now);
        let (preset, first, last) = match (asked.start.is_empty(), asked.end.is_empty()) {
            (true, true) => {
                let preset = if asked.range.is_empty() {
                    DEFAULT_PRESET
                } else {
                    Preset::parse(&asked.range).ok_or_else(|| {
                        format!(
                            "Unknown range '{}': pick one of {}, or give a start and an end date.",
                            asked.range,
                            Preset::ALL.map(Preset::slug).join(", ")
                        )
                    })?
                };
                let (first, last) = preset.days(today);
                (Some(preset), first, last)
            }
            (false, false) => {
                let first = date(&asked.start, "start")?;
                let last = date(&asked.end, "end")?;
                let preset = Preset::ALL
                    .into_iter()
                    .find(|p| p.days(today) == (first, last));
                (preset, first, last)
            }
            (true, false) => return Err("Give a start date as well as the end date.".into()),
            (false, true) => return Err("Give an end date as well as the start date.".into()),
        };
        if last < first {
            return Err(format!(
                "The end date {last} is before the start date {first}: the end must be on or \
                 after the start."
            ));
        }
        let days = (last - first).num_days() + 1;
        if days > MAX_DAYS {
            return Err(format!(
                "The range from {first} to {last} is {days} days long: the page shows at most \
                 {MAX_DAYS} days at a time. Pick a shorter range."
            ));
        }
        let view = View {
            preset,
            first,
            last,
            tz,
            key,
        };
        // Dates outside the years the reads take are refused by the range's own rules.
        tollgate_query::timeframe::resolve(&view.spec()?, now).map_err(|e| {
            let mut m = e.message.chars();
            let first = m.next().map(|c| c.to_uppercase().collect::<String>());
            format!("{}{}.", first.unwrap_or_default(), m.as_str())
        })?;
        Ok(view)
    }

    fn days(&self) -> i64 {
        (self.last - self.first).num_days() + 1
    }

    /// Whole local days, both dates included: by hour for one or two days, else by day.
    fn spec(&self) -> Result<RangeSpec, String> {
        let end = self
            .last
            .succ_opt()
            .ok_or_else(|| format!("The end date {} is too far in the future.", self.last))?;
        Ok(RangeSpec {
            start: Some(Moment::Date(self.first)),
            end: Some(Moment::Date(end)),
            tz: self.tz,
            timeframe: Some(if self.days() <= 2 {
                Timeframe::Hour
            } else {
                Timeframe::Day
            }),
            bound_to_timeframe: false,
        })
    }

    /// The query string of this view: its preset, or its dates, and the zone and key.
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        match self.preset {
            Some(p) => {
                q.append_pair("range", p.slug());
            }
            None => {
                q.append_pair("start", &self.first.to_string());
                q.append_pair("end", &self.last.to_string());
            }
        }
        keep(
            &mut q,
            Some(self.tz),
            self.key.as_ref().map(|k| k.key_id.as_str()),
        );
        q.finish()
    }

    /// What the page shows, in words: "Last 7 days: 2026-11-12 to 2026-11-18".
    fn describe(&self) -> String {
        let days = if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{} to {}", self.first, self.last)
        };
        match self.preset {
            Some(p) => format!("{}: {days}", p.label()),
            None => days,
        }
    }
}

/// Appends the zone (unless UTC, the default) and the key (when one is picked).
fn keep(q: &mut form_urlencoded::Serializer<String>, tz: Option<Tz>, key: Option<&str>) {
    if let Some(tz) = tz.filter(|tz| *tz != Tz::UTC) {
        q.append_pair("tz", tz.name());
    }
    if let Some(key) = key {
        q.append_pair("key", key);
    }
}

/// Every key of the account, revoked ones too (their usage stays), oldest first.
async fn account_keys(
    state: &DashboardState,
    account: &AccountId,
) -> Result<Vec<ApiKeyRecord>, PageError> {
    let owner = KeyOwner::Account(account.clone());
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            tollgate_query::keys::all_keys(state.engine(), &owner, cursor.as_ref(), 1_000).await?;
        keys.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(keys),
        }
    }
}

/// A key as the filter lists it: its alias, the start of its id, and whether it is an admin
/// key or revoked.
fn key_label(k: &ApiKeyRecord) -> String {
    let alias = if k.alias.is_empty() {
        "API Key"
    } else {
        &k.alias
    };
    let id = k.key_id.as_str();
    let mut label = format!("{alias} · {}", id.get(..8).unwrap_or(id));
    if k.scope == Scope::Admin {
        label.push_str(" (admin)");
    }
    if k.revoked_at.is_some() {
        label.push_str(" (revoked)");
    }
    label
}

fn sum(rows: &[UsageRow], of: impl Fn(&UsageRow) -> Nanos) -> Result<Nanos, PageError> {
    let mut total = Nanos::ZERO;
    for r in rows {
        super::add(&mut total, of(r))?;
    }
    Ok(total)
}

pub async fn page(
    State(state): State<DashboardState>,
    who: CustomerSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let (asked, keys, view, spec) = match checked(&state, &who, raw.as_deref()).await? {
        Ok(checked) => checked,
        Err(refusal) => return Ok(refusal),
    };
    let api_keys = view.key.iter().map(|k| k.key_id.clone()).collect();
    let (_, spend) = spend(&state, &who.account, &spec, api_keys).await?;
    let body = render(&asked, &keys, Some((&view, &spend)), None)?;
    Ok(layout::html(layout::page(
        &chrome(&who, "/dashboard/usage"),
        "Usage",
        body,
    ))
    .into_response())
}

/// The page saying what is wrong with the request (400), with the form as it was sent.
/// What the query string asks, the account's keys, the view it resolves to and its range;
/// or, when the input is refused, the page that says why (400).
async fn checked(
    state: &DashboardState,
    who: &CustomerSession,
    raw: Option<&str>,
) -> Result<Result<(Asked, Vec<ApiKeyRecord>, View, RangeSpec), Response>, PageError> {
    let asked = Asked::parse(raw);
    let keys = account_keys(state, &who.account).await?;
    let view = match View::check(&asked, &keys, state.engine().now()) {
        Ok(view) => view,
        Err(why) => return refused(who, &asked, &keys, &why).map(Err),
    };
    let spec = view.spec().map_err(PageError::bad_request)?;
    Ok(Ok((asked, keys, view, spec)))
}

fn refused(
    who: &CustomerSession,
    asked: &Asked,
    keys: &[ApiKeyRecord],
    why: &str,
) -> Result<Response, PageError> {
    let body = render(asked, keys, None, Some(why))?;
    Ok((
        StatusCode::BAD_REQUEST,
        layout::html(layout::page(
            &chrome(who, "/dashboard/usage"),
            "Usage",
            body,
        )),
    )
        .into_response())
}

/// The page: presets, the form, what it shows, and the chart and table (or the empty state,
/// or what is wrong with the request).
fn render(
    asked: &Asked,
    keys: &[ApiKeyRecord],
    shown: Option<(&View, &Spend)>,
    error: Option<&str>,
) -> Result<Markup, PageError> {
    let view = shown.map(|(v, _)| v);
    // Preset links keep the zone and key in force (only valid ones: a link never repeats an
    // error).
    let tz = match view {
        Some(v) => Some(v.tz),
        None => parse_timezone(&asked.tz).ok(),
    };
    let key = match view {
        Some(v) => v.key.as_ref().map(|k| k.key_id.as_str().to_string()),
        None => keys
            .iter()
            .find(|k| k.key_id.as_str() == asked.key)
            .map(|k| k.key_id.as_str().to_string()),
    };
    let preset_href = |p: Preset| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("range", p.slug());
        keep(&mut q, tz, key.as_deref());
        format!("/dashboard/usage?{}", q.finish())
    };
    // The form shows the view's values, or what was typed when it could not be shown.
    let (start, end, tz_text, key_value) = match view {
        Some(v) => (
            v.first.to_string(),
            v.last.to_string(),
            v.tz.name().to_string(),
            v.key
                .as_ref()
                .map(|k| k.key_id.as_str().to_string())
                .unwrap_or_default(),
        ),
        None => (
            asked.start.clone(),
            asked.end.clone(),
            if asked.tz.is_empty() {
                "UTC".to_string()
            } else {
                asked.tz.clone()
            },
            asked.key.clone(),
        ),
    };
    let mut zones: Vec<&str> = COMMON_ZONES.to_vec();
    if !zones.contains(&tz_text.as_str()) {
        zones.insert(0, &tz_text);
    }

    let body = html! {
        nav aria-label="Ranges" {
            ul.presets {
                @for p in Preset::ALL {
                    li {
                        a href=(preset_href(p))
                            aria-current=[view.and_then(|v| v.preset).filter(|c| *c == p).map(|_| "true")] {
                            (p.label())
                        }
                    }
                }
            }
        }
        form.filters #usage-filters method="get" action="/dashboard/usage" aria-label="Usage range" {
            div {
                label for="start" { "From" }
                input #start type="date" name="start" value=(start) required;
            }
            div {
                label for="end" { "To (included)" }
                input #end type="date" name="end" value=(end) required;
            }
            div {
                label for="tz" { "Time zone" }
                input #tz type="text" name="tz" value=(tz_text) list="tz-list" autocomplete="off"
                    spellcheck="false" aria-describedby="tz-hint";
                datalist #tz-list {
                    @for z in &zones { option value=(z) {} }
                }
            }
            div {
                label for="key" { "API key" }
                select #key name="key" {
                    option value="" selected[key_value.is_empty()] { "All keys" }
                    @for k in keys {
                        option value=(k.key_id.as_str()) selected[k.key_id.as_str() == key_value] {
                            (key_label(k))
                        }
                    }
                }
            }
            button.primary type="submit" { "Show" }
        }
        p.hint #tz-hint {
            "Days run from midnight to midnight in the time zone (an IANA name such as "
            code { "Europe/Berlin" } "); both dates are included."
        }
        @if let Some(why) = error {
            p.notice.error #usage-error role="alert" { (why) }
        }
        @if let Some((v, spend)) = shown {
            p.lead #range-shown {
                "Showing " strong { (v.describe()) } " in " strong { (v.tz.name()) }
                @if let Some(k) = &v.key { ", only key " strong { (key_label(k)) } }
                "."
            }
            @if spend.summary.is_empty() {
                (empty(&format!("No usage from {} to {}", v.first, v.last), html! {
                    "This page shows what you were billed per endpoint (quantity, unit price, \
                     discount and total) and a chart of your spend over the range. Requests made \
                     with one of your "
                    a href="/dashboard/keys" { "API keys" }
                    " appear here within moments of finishing. Pick a longer range above"
                    @if v.key.is_some() { ", or all keys" }
                    "."
                }))
            } @else {
                @let total = spend.total()?;
                @let discount = sum(&spend.summary, |r| r.discount)?;
                @let per = if v.days() <= 2 { "hour" } else { "day" };
                (spend_chart("usage-chart", &format!("Spend per {per} by endpoint ({})", v.tz.name()), spend))
                div.actions.table-head {
                    h2 { "By endpoint" }
                    a.button #usage-csv href={ "/dashboard/usage.csv?" (v.query()) } download {
                        "Download CSV"
                    }
                }
                div.table-wrap tabindex="0" {
                    table #usage-table {
                        caption { "Usage by endpoint: " (v.describe()) " (" (v.tz.name()) ")" }
                        thead { tr {
                            th scope="col" { "Endpoint" }
                            th scope="col" { "Unit" }
                            th.num scope="col" { "Quantity" }
                            th.num scope="col" { "Unit price" }
                            th.num scope="col" { "Discount" }
                            th.num scope="col" { "Total" }
                        } }
                        tbody {
                            @for r in &spend.summary {
                                tr data-endpoint=(r.endpoint) data-unit=(r.unit)
                                    data-quantity=(r.quantity.normalize())
                                    data-unit-price=(r.unit_price.normalize())
                                    data-nano-usd=(r.total.0) {
                                    td.nowrap { code { (r.endpoint) } }
                                    td { (r.unit) }
                                    td.num { (fmt::quantity(r.quantity)) }
                                    td.num { (fmt::usd_exact(r.unit_price)) }
                                    td.num {
                                        @if r.discount == Nanos::ZERO && r.percent_discount.is_none() {
                                            span.muted { "—" }
                                        } @else {
                                            (fmt::usd(Nanos(r.discount.0.saturating_neg())))
                                            @if let Some(p) = r.percent_discount {
                                                " " span.muted { "(" (fmt::percent(p)) ")" }
                                            }
                                        }
                                    }
                                    td.num { (fmt::usd(r.total)) }
                                }
                            }
                        }
                        tfoot { tr {
                            th scope="row" colspan="4" { "Total" }
                            td.num data-nano-usd=(discount.0) {
                                @if discount == Nanos::ZERO { span.muted { "—" } }
                                @else { (fmt::usd(Nanos(discount.0.saturating_neg()))) }
                            }
                            td.num #usage-total data-nano-usd=(total.0) { (fmt::usd(total)) }
                        } }
                    }
                }
                p.hint {
                    "Rows group usage by endpoint, unit, unit price and discount, as "
                    code { "GET /v1/models/usage" } " does; amounts are exact."
                }
            }
        }
    };
    Ok(body)
}

/// The columns of the CSV, in order.
pub const CSV_COLUMNS: [&str; 9] = [
    "endpoint_id",
    "unit",
    "quantity",
    "unit_price_usd",
    "percent_discount",
    "cost_subtotal_usd",
    "cost_discount_usd",
    "cost_total_usd",
    "currency",
];

/// The usage rows as CSV: a header, then one line per row of the page's table, in its order,
/// every figure an exact decimal.
pub fn csv_text(rows: &[UsageRow]) -> String {
    use tollgate_api::focus::{line, plain};
    let mut out = String::new();
    line(&mut out, &CSV_COLUMNS.map(String::from));
    for r in rows {
        line(
            &mut out,
            &[
                r.endpoint.to_string(),
                r.unit.clone(),
                plain(r.quantity),
                plain(r.unit_price),
                r.percent_discount.map(plain).unwrap_or_default(),
                plain(r.subtotal.to_usd()),
                plain(r.discount.to_usd()),
                plain(r.total.to_usd()),
                "USD".to_string(),
            ],
        );
    }
    out
}

pub async fn csv(
    State(state): State<DashboardState>,
    who: CustomerSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let (_, _, view, spec) = match checked(&state, &who, raw.as_deref()).await? {
        Ok(checked) => checked,
        Err(refusal) => return Ok(refusal),
    };
    let now = state.engine().now();
    let range = tollgate_query::timeframe::resolve(&spec, now)
        .map_err(|e| PageError::bad_request(e.to_string()))?;
    let usage = tollgate_query::usage::usage(
        state.engine(),
        UsageQuery {
            account: who.account.clone(),
            range,
            endpoints: Vec::new(),
            api_keys: view.key.iter().map(|k| k.key_id.clone()).collect(),
            by_login: false,
            time_series: false,
            summary: true,
            by_key: false,
            cursor: None,
            limit: 1,
        },
    )
    .await?;
    let text = csv_text(&usage.summary.unwrap_or_default());
    let zone: String = view
        .tz
        .name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = format!("usage-{}-to-{}-{zone}.csv", view.first, view.last);
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .map_err(|e| PageError::bad_request(e.to_string()))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("a test date")
    }

    #[test]
    fn presets_are_whole_local_days_ending_today() {
        let days = |p: Preset, today: &str| {
            let (a, b) = p.days(d(today));
            (a.to_string(), b.to_string())
        };
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            days(Preset::Today, "2026-11-24"),
            s("2026-11-24", "2026-11-24")
        );
        assert_eq!(
            days(Preset::Last7Days, "2026-03-03"),
            s("2026-02-25", "2026-03-03")
        );
        assert_eq!(
            days(Preset::ThisMonth, "2026-11-01"),
            s("2026-11-01", "2026-11-01")
        );
        assert_eq!(
            days(Preset::LastMonth, "2026-01-15"),
            s("2025-12-01", "2025-12-31")
        );
        assert_eq!(
            days(Preset::LastMonth, "2024-03-31"),
            s("2024-02-01", "2024-02-29")
        );
        for p in Preset::ALL {
            assert_eq!(Preset::parse(p.slug()), Some(p));
        }
    }

    #[test]
    fn a_view_is_checked_and_says_what_is_wrong() {
        let now = Timestamp(1_795_514_400_000); // 2026-11-24T10:00Z
        let asked = |q: &str| Asked::parse(Some(q));
        let v = View::check(
            &asked("start=2026-11-01&end=2026-11-02&tz=Asia/Tokyo"),
            &[],
            now,
        )
        .expect("a view");
        assert_eq!((v.days(), v.tz.name()), (2, "Asia/Tokyo"));
        assert_eq!(v.spec().expect("a spec").timeframe, Some(Timeframe::Hour));
        let v = View::check(&asked("range=7d"), &[], now).expect("a view");
        assert_eq!(v.spec().expect("a spec").timeframe, Some(Timeframe::Day));
        assert_eq!(v.query(), "range=7d");
        // The first of each parameter counts; empty ones are absent.
        let v =
            View::check(&asked("start=&end=&range=today&range=7d&tz="), &[], now).expect("a view");
        assert_eq!((v.preset, v.tz), (Some(Preset::Today), Tz::UTC));
        let err = |q: &str| View::check(&asked(q), &[], now).err().expect("refused");
        assert!(err("start=2026-11-02&end=2026-11-01").contains("before the start date"));
        assert!(err("start=2025-11-23&end=2026-11-24").contains("367 days long"));
        assert!(View::check(&asked("start=2025-11-24&end=2026-11-24"), &[], now).is_ok());
        assert!(err("tz=Nowhere/Land").contains("unknown timezone 'Nowhere/Land'"));
        assert!(err("key=abc").contains("No API key of this account"));
    }
}
