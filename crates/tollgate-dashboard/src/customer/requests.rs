//! Requests, `/dashboard/requests`: the account's billed requests (its line items, as
//! `tollgate_query::usage` reads them for fal's billing events), newest first, a page at a time
//! with the read's keyset cursor ("Older"), each with its time, id, endpoint, status, quantity
//! and unit, cost, queue and inference durations and the key it was made with; and a search by
//! exact request id.
//!
//! The search reads the signed-in account's line items only: an id of another account's request
//! is answered exactly like an id nobody used. The search form is a plain GET form; with
//! JavaScript, htmx swaps just the results in and keeps the URL (`hx-push-url`).

use super::chrome;
use crate::error::PageError;
use crate::layout::{self, empty};
use crate::session::CustomerSession;
use crate::{fmt, DashboardState};
use axum::extract::{RawQuery, State};
use axum::response::Html;
use axum::routing::get;
use maud::{html, Markup};
use tollgate_core::ids::RequestId;
use tollgate_core::Timestamp;
use tollgate_query::usage::{BillingEvent, BillingEventsQuery};
use tollgate_query::Cursor;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new().route("/dashboard/requests", get(page))
}

/// Requests per page.
pub const PAGE_SIZE: usize = 50;

/// The parameters: `q` (a request id to find) and `cursor` (the page after which to go on).
#[derive(Default)]
struct Asked {
    q: String,
    cursor: String,
}

impl Asked {
    fn parse(raw: Option<&str>) -> Asked {
        let mut asked = Asked::default();
        let (mut q, mut cursor) = (None, None);
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "q" => q = q.or(Some(value.trim().to_string())),
                "cursor" => cursor = cursor.or(Some(value.trim().to_string())),
                _ => {}
            }
        }
        asked.q = q.unwrap_or_default();
        asked.cursor = cursor.unwrap_or_default();
        asked
    }
}

/// Every line item of the account, whenever billed.
fn all_time(
    who: &CustomerSession,
    cursor: Option<Cursor>,
    limit: usize,
    ids: Vec<RequestId>,
) -> BillingEventsQuery {
    BillingEventsQuery {
        account: who.account.clone(),
        from: Timestamp(0),
        to: Timestamp(i64::MAX),
        endpoints: Vec::new(),
        request_ids: ids,
        api_keys: Vec::new(),
        by_login: false,
        by_key: true,
        cursor,
        limit,
    }
}

/// What the results region shows.
enum Results {
    /// A page of the list, and the cursor of the next (older) one.
    List {
        items: Vec<BillingEvent>,
        older: Option<Cursor>,
        paged: bool,
    },
    /// The answer to a search: the request, or nothing.
    Search(Option<Box<BillingEvent>>),
}

pub async fn page(
    State(state): State<DashboardState>,
    who: CustomerSession,
    RawQuery(raw): RawQuery,
) -> Result<Html<String>, PageError> {
    let asked = Asked::parse(raw.as_deref());
    let engine = state.engine();
    let results = if !asked.q.is_empty() {
        // Not an id at all is not found, like an id of no request of this account.
        let found = match RequestId::parse(&asked.q) {
            Ok(id) => {
                tollgate_query::usage::billing_events(engine, all_time(&who, None, 1, vec![id]))
                    .await?
                    .items
                    .into_iter()
                    .next()
            }
            Err(_) => None,
        };
        Results::Search(found.map(Box::new))
    } else {
        let cursor = (!asked.cursor.is_empty()).then(|| Cursor::new(asked.cursor.clone()));
        let paged = cursor.is_some();
        let page = tollgate_query::usage::billing_events_newest_first(
            engine,
            all_time(&who, cursor, PAGE_SIZE, Vec::new()),
        )
        .await?;
        Results::List {
            items: page.items,
            older: page.next_cursor,
            paged,
        }
    };
    let nothing_yet =
        matches!(&results, Results::List { items, paged: false, .. } if items.is_empty());

    let body = html! {
        @if nothing_yet {
            (empty("No billed requests yet", html! {
                "Each request made with one of your "
                a href="/dashboard/keys" { "API keys" }
                " appears here once it finishes, newest first: when it ran, its endpoint and \
                 status, what it was billed, and how long it queued and ran. You can then find \
                 any of them by its request id."
            }))
        } @else {
            p.lead { "Every billed request of your account, newest first. Times are UTC." }
            form.filters #request-search role="search" method="get" action="/dashboard/requests"
                hx-get="/dashboard/requests" hx-select="#results" hx-target="#results"
                hx-swap="outerHTML" hx-push-url="true" {
                div {
                    label for="q" { "Request id" }
                    input #q type="search" name="q" value=(asked.q) autocomplete="off"
                        spellcheck="false" size="38" aria-describedby="q-hint";
                }
                button.primary type="submit" { "Find" }
            }
            p.hint #q-hint { "The exact id, as your API answered it when the request was submitted." }
            (results_region(&asked, &results))
        }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, "/dashboard/requests"),
        "Requests",
        body,
    )))
}

/// The part of the page a search replaces (`#results`).
fn results_region(asked: &Asked, results: &Results) -> Markup {
    html! {
        div #results {
            @match results {
                Results::Search(Some(e)) => {
                    p #search-status role="status" {
                        "The billed request " code { (asked.q) } ". "
                        a href="/dashboard/requests" { "Show all requests" }
                    }
                    (table(std::slice::from_ref(e)))
                }
                Results::Search(None) => {
                    div.notice.warn #search-status role="status" {
                        p { "No billed request with the id " code { (asked.q) } "." }
                        p.hint {
                            "Only requests of this account that were billed are found: a request \
                             still running appears once it finishes, and one that failed on the \
                             platform's side (5xx) is not billed. "
                            a href="/dashboard/requests" { "Show all requests" }
                        }
                    }
                }
                Results::List { items, older, paged } => {
                    @if items.is_empty() {
                        p.notice role="status" { "No older billed requests." }
                    } @else {
                        (table(items))
                    }
                    nav.pager aria-label="Pages" {
                        span {
                            @if *paged { a href="/dashboard/requests" { "← Newest" } }
                        }
                        span {
                            @if let Some(c) = older {
                                a #older rel="next" href={ "/dashboard/requests?" (cursor_query(c)) } { "Older →" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn cursor_query(c: &Cursor) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("cursor", c.as_str())
        .finish()
}

fn status_badge(code: u16) -> Markup {
    html! {
        @if code < 400 {
            span.badge.ok { (code) }
        } @else if code < 500 {
            span.badge.warn { (code) }
        } @else {
            span.badge.bad { (code) }
        }
    }
}

fn duration(ms: Option<i64>) -> Markup {
    html! {
        @match ms {
            Some(ms) => (fmt::duration_ms(ms)),
            None => span.muted title="Not reported" { "—" },
        }
    }
}

fn table(items: &[BillingEvent]) -> Markup {
    html! {
        div.table-wrap tabindex="0" {
            table.dense #requests-table {
                caption { "Billed requests, newest first (times in UTC)" }
                thead { tr {
                    th scope="col" { "Time (UTC)" }
                    th scope="col" { "Request id" }
                    th scope="col" { "Endpoint" }
                    th scope="col" { "Status" }
                    th.num scope="col" { "Quantity" }
                    th.num scope="col" { "Cost" }
                    th.num scope="col" { "Queue" }
                    th.num scope="col" { "Inference" }
                    th scope="col" { "Key" }
                } }
                tbody {
                    @for e in items {
                        tr data-request-id=(e.request_id) data-nano-usd=(e.charge.total_nanos.0)
                            data-status=(e.status_code)
                            data-queue-ms=[e.queue_ms] data-inference-ms=[e.inference_ms] {
                            td.nowrap {
                                time datetime=(tollgate_query::timeframe::label(e.billed_at, chrono_tz::Tz::UTC)) {
                                    (fmt::utc_seconds(e.billed_at))
                                }
                            }
                            td.nowrap { code.request-id { (e.request_id) } }
                            td.nowrap { code { (e.endpoint) } }
                            td { (status_badge(e.status_code)) }
                            td.num {
                                (fmt::quantity(e.charge.quantity)) " " span.unit { (e.unit) }
                            }
                            td.num { (fmt::usd(e.charge.total_nanos)) }
                            td.num { (duration(e.queue_ms)) }
                            td.num { (duration(e.inference_ms)) }
                            td {
                                @match &e.auth {
                                    Some(a) if a.api_key.is_some() => (a.detail),
                                    _ => span.muted title="Reported as usage, without a key" { "No key" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
