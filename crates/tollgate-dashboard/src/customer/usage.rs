//! Usage, `/dashboard/usage`: what the account was billed per model endpoint over a range it
//! picks (a preset or its own dates, in the time zone it names, optionally of one API key), as
//! fal's usage rows (endpoint, unit, unit price, discount) with their total, a chart of spend
//! per day (per hour for a range of one or two days), and the same rows as CSV
//! (`/dashboard/usage.csv`, the same parameters). Serverless runner time is not here: it has
//! its own page ([`super::serverless`]), which the page links to.
//!
//! The rows are the summary of `tollgate_query::usage`, the same read as the API's
//! `GET /v1/models/usage?expand=summary`, so every figure is the API's. The range controls are
//! the shared ones ([`super::range`]): whole local days, both dates included, at most
//! [`super::range::MAX_DAYS`]; anything the page cannot show is a 400 page that says what is
//! wrong, with the form to correct it.

use super::range::{self, key_label, Asked, Controls, View};
use super::{chrome, spend, spend_chart, Of, Spend};
use crate::error::PageError;
use crate::layout::{self, empty};
use crate::session::CustomerSession;
use crate::{fmt, DashboardState};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{html, Markup};
use tollgate_core::ids::AccountId;
use tollgate_core::Nanos;
use tollgate_query::keys::KeyOwner;
use tollgate_query::timeframe::RangeSpec;
use tollgate_query::usage::{UsageQuery, UsageRow};
use tollgate_store::ApiKeyRecord;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route("/dashboard/usage", get(page))
        .route("/dashboard/usage.csv", get(csv))
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
    let (_, spend) = spend(&state, &who.account, &spec, api_keys, Of::Models).await?;
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
    let controls = range::controls(
        &Controls {
            path: "/dashboard/usage",
            name: "usage",
            label: "Usage range",
            keys: Some(keys),
            kept: Vec::new(),
        },
        asked,
        view,
        error,
    );
    let body = html! {
        (controls)
        p.hint #serverless-hint {
            "Your serverless apps' runner time is on its own page: "
            a href=(super::serverless::SECTION) { "Serverless" } "."
        }
        @if let Some((v, spend)) = shown {
            (range::shown(v, html! {
                @if let Some(k) = &v.key { ", only key " strong { (key_label(k)) } }
            }))
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
