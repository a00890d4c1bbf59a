//! Invoices, `GET /console/invoices`: every account's invoices, newest first, a page at a time
//! (optionally one account's, or one status), with the operator's three calls on them, through
//! the operator API's own functions: close billing periods (`POST /console/invoices/close`,
//! as `POST /v1/admin/invoices/close`), mark an open invoice paid with a reference
//! (`.../{invoice_id}/pay`) or void it with a reason (`.../{invoice_id}/void`).

use super::{chrome, done, form_error, invalid, parse_time, refusal, refused, respond};
use crate::error::PageError;
use crate::layout::{self, csrf, empty};
use crate::session::{ConsoleSession, Post};
use crate::{fmt, DashboardState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{html, Markup};
use serde::Deserialize;
use tollgate_api::error::ApiError;
use tollgate_core::ids::AccountId;
use tollgate_core::machine::{InvoiceKind, InvoiceStatus};
use tollgate_query::invoices::InvoiceFilter;
use tollgate_query::Cursor;
use tollgate_store::InvoiceRecord;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route("/console/invoices", get(list))
        .route("/console/invoices/close", post(close))
        .route("/console/invoices/{invoice_id}/pay", post(pay))
        .route("/console/invoices/{invoice_id}/void", post(void))
}

/// Invoices per page.
pub const PAGE: usize = 50;

/// The list's filters and what a form that redirected here did.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    username: String,
    status: String,
    cursor: String,
    done: String,
    issued: String,
    invoice: String,
}

/// The close form, as posted.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct CloseForm {
    username: String,
    until: String,
}

/// The pay and void forms, as posted.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusForm {
    payment_reference: String,
    reason: String,
}

/// What the page shows besides the list.
#[derive(Default)]
struct View {
    notice: Option<Markup>,
    close: CloseForm,
    close_error: Option<String>,
    /// A refused pay or void: the invoice, the form as posted and why.
    row_error: Option<(String, StatusForm, String)>,
}

fn kind_text(k: InvoiceKind) -> &'static str {
    match k {
        InvoiceKind::TopUp => "top-up",
        InvoiceKind::Usage => "usage",
        InvoiceKind::CreditNote => "credit note",
    }
}

fn status_badge(i: &InvoiceRecord) -> Markup {
    html! {
        @match i.status {
            InvoiceStatus::Open => span.badge.warn { "open" },
            InvoiceStatus::Paid => span.badge.ok { "paid" },
            InvoiceStatus::Void => span.badge { "void" },
        }
        @if let Some(r) = &i.status_reference {
            br;
            span.muted.small {
                @match i.status { InvoiceStatus::Void => "Reason: ", _ => "Ref: " }
                (r)
            }
        }
    }
}

/// A table of invoices, newest first: with their account when `show_account`, and, given the
/// session's CSRF token, the pay and void forms of each open one (`row_error`: one refused,
/// opened, with the form as posted and why).
pub fn table(items: &[InvoiceRecord], show_account: bool, csrf_token: Option<&str>) -> Markup {
    rows(items, show_account, csrf_token, None)
}

fn rows(
    items: &[InvoiceRecord],
    show_account: bool,
    csrf_token: Option<&str>,
    row_error: Option<&(String, StatusForm, String)>,
) -> Markup {
    html! {
        div.table-wrap tabindex="0" {
            table.invoices {
                thead { tr {
                    th scope="col" { "Number" }
                    @if show_account { th scope="col" { "Account" } }
                    th scope="col" { "Kind" }
                    th scope="col" { "Status" }
                    th scope="col" { "Issued" }
                    th scope="col" { "Period" }
                    th.num scope="col" { "Total" }
                    @if csrf_token.is_some() { th scope="col" { span.visually-hidden { "Actions" } } }
                } }
                tbody {
                    @for i in items {
                        @let id = i.invoice_id();
                        @let error = row_error.filter(|(e, _, _)| *e == id);
                        tr id=(id) {
                            th scope="row" { span.mono { (i.number()) } }
                            @if show_account {
                                td { a href={ "/console/accounts/" (i.account) } { (i.account) } }
                            }
                            td {
                                (kind_text(i.kind))
                                @if let Some((y, n)) = i.corrects {
                                    br; span.small.muted { "corrects " (InvoiceRecord::id_of(y, n)) }
                                }
                            }
                            td.wrap[i.status_reference.is_some()] { (status_badge(i)) }
                            td { (fmt::date(i.issued_at)) }
                            td { (fmt::period(i.period_start, i.period_end)) }
                            td.num { (fmt::usd(i.total)) }
                            @if let Some(token) = csrf_token {
                                td {
                                    @if i.status == InvoiceStatus::Open {
                                        (actions(i, &id, token, error))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The pay and void forms of an open invoice, folded.
fn actions(
    i: &InvoiceRecord,
    id: &str,
    token: &str,
    error: Option<&(String, StatusForm, String)>,
) -> Markup {
    let posted = error.map(|(_, f, _)| f.clone()).unwrap_or_default();
    html! {
        details.actions-fold open[error.is_some()] {
            summary { "Pay or void" }
            @if let Some((_, _, message)) = error { (form_error(message)) }
            form method="post" action={ "/console/invoices/" (id) "/pay" } {
                (csrf(token))
                label for={ "ref-" (id) } { "Payment reference" }
                input id={ "ref-" (id) } type="text" name="payment_reference" required
                    maxlength="200" autocomplete="off" value=(posted.payment_reference)
                    placeholder="wire 2026-12-03 #4411";
                button.primary type="submit" { "Mark paid" }
            }
            form method="post" action={ "/console/invoices/" (id) "/void" }
                data-confirm={ "Void invoice " (i.number()) "? It then bills nothing; this cannot be undone." } {
                (csrf(token))
                label for={ "reason-" (id) } { "Reason to void" }
                input id={ "reason-" (id) } type="text" name="reason" required maxlength="500"
                    autocomplete="off" value=(posted.reason)
                    placeholder="issued to the wrong account";
                button.danger type="submit" { "Void" }
            }
        }
    }
}

impl ListQuery {
    async fn notice(&self, state: &DashboardState) -> Result<Option<Markup>, PageError> {
        Ok(match self.done.as_str() {
            "closed" => {
                let Ok(n) = self.issued.parse::<usize>() else {
                    return Ok(None);
                };
                Some(done(html! {
                    @if n == 0 {
                        "Nothing to close: no account had charges in its open billing period."
                    } @else {
                        "Closed: " (n) " usage invoice" @if n != 1 { "s" } " issued (listed first below)."
                    }
                }))
            }
            "paid" | "voided" => {
                let found =
                    tollgate_query::invoices::show(state.engine(), None, &self.invoice).await?;
                found.map(|i| {
                    done(html! {
                        "Invoice " strong { (i.number()) } " of " (i.account) " is "
                        @match i.status {
                            InvoiceStatus::Paid => "paid",
                            InvoiceStatus::Void => "void",
                            InvoiceStatus::Open => "open",
                        }
                        @if let Some(r) = &i.status_reference { " (" (r) ")" }
                        "."
                    })
                })
            }
            _ => None,
        })
    }
}

async fn list(
    State(state): State<DashboardState>,
    who: ConsoleSession,
    Query(q): Query<ListQuery>,
) -> Result<Response, PageError> {
    let view = View {
        notice: q.notice(&state).await?,
        ..View::default()
    };
    render(&state, &who, &q, view, StatusCode::OK).await
}

async fn render(
    state: &DashboardState,
    who: &ConsoleSession,
    q: &ListQuery,
    view: View,
    mut status: StatusCode,
) -> Result<Response, PageError> {
    let engine = state.engine();
    let mut filter_error = None;
    let account = match q.username.trim() {
        "" => None,
        u => match AccountId::parse(u) {
            Ok(a) => Some(a),
            Err(e) => {
                filter_error = Some(format!("Account: {e}."));
                None
            }
        },
    };
    let invoice_status = match q.status.as_str() {
        "" => None,
        s => match InvoiceStatus::parse(s) {
            Some(s) => Some(s),
            None => {
                filter_error = Some(format!("Status: `{s}` is not open, paid or void."));
                None
            }
        },
    };
    let cursor = Some(q.cursor.trim())
        .filter(|c| !c.is_empty())
        .map(Cursor::new);
    let page = match &filter_error {
        Some(_) => {
            status = StatusCode::BAD_REQUEST;
            None
        }
        None => Some(
            tollgate_query::invoices::list(
                engine,
                InvoiceFilter {
                    account: account.clone(),
                    status: invoice_status,
                    kind: None,
                },
                cursor.as_ref(),
                PAGE,
            )
            .await?,
        ),
    };
    let filtered = account.is_some() || invoice_status.is_some();
    let query = |c: Option<&Cursor>| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(a) = &account {
            s.append_pair("username", a.as_str());
        }
        if let Some(st) = invoice_status {
            s.append_pair("status", st.as_str());
        }
        if let Some(c) = c {
            s.append_pair("cursor", c.as_str());
        }
        format!("/console/invoices?{}", s.finish())
    };
    let body = html! {
        @if let Some(n) = &view.notice { (n) }
        @if let Some((id, _, message)) = &view.row_error { (refused(message, id)) }
        @if let Some(e) = &view.close_error { (refused(e, "close-periods")) }
        form.filters method="get" action="/console/invoices" role="search" {
            div {
                label for="f-username" { "Account" }
                input #f-username type="search" name="username" value=(q.username)
                    autocomplete="off" spellcheck="false" placeholder="every account";
            }
            div {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" selected[invoice_status.is_none()] { "any" }
                    @for s in [InvoiceStatus::Open, InvoiceStatus::Paid, InvoiceStatus::Void] {
                        option value=(s.as_str()) selected[invoice_status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Show" }
            @if filtered { a href="/console/invoices" { "Every invoice" } }
        }
        @if let Some(e) = &filter_error { (super::form_error(e)) }
        @if let Some(page) = &page {
            @if page.items.is_empty() {
                @if filtered || cursor.is_some() {
                    (empty("No invoice matches", html! { a href="/console/invoices" { "Show every invoice" } "." }))
                } @else {
                    (empty("No invoices yet", html! {
                        "A paid purchase issues a top-up invoice (add credits on an account's page); "
                        "an invoice-billed account's charges are invoiced when its period closes."
                    }))
                }
            } @else {
                (rows(&page.items, true, Some(&who.session.csrf), view.row_error.as_ref()))
                nav.pager aria-label="Pages" {
                    @if cursor.is_some() { a href=(query(None)) { "First page" } } @else { span {} }
                    @if let Some(next) = &page.next_cursor {
                        a rel="next" href=(query(Some(next))) { "Next" }
                    }
                }
            }
        }
        h2 { "Close billing periods" }
        form.card #close-periods method="post" action="/console/invoices/close"
            data-confirm="Close these billing periods now? A usage invoice is issued for each period with charges." {
            (csrf(&who.session.csrf))
            @if let Some(e) = &view.close_error { (form_error(e)) }
            p.hint { "Issues a usage invoice for each invoice-billed period with charges. Periods also close by themselves at each month's start (UTC)." }
            div.grid-2 {
                div {
                    label for="close-username" { "Account (optional)" }
                    input #close-username type="text" name="username" value=(view.close.username)
                        autocomplete="off" spellcheck="false" placeholder="every account with charges";
                }
                div {
                    label for="close-until" { "Until, UTC (optional)" }
                    input #close-until type="datetime-local" name="until" value=(view.close.until)
                        aria-describedby="until-hint";
                }
            }
            p #until-hint .hint { "Only periods whose every charge was recorded before this time close, ending there. Empty: every charge so far, ending now." }
            button.primary type="submit" { "Close billing periods" }
        }
    };
    Ok(respond(
        status,
        layout::page(&chrome(who, "/console/invoices"), "Invoices", body),
    ))
}

async fn close(
    State(state): State<DashboardState>,
    Post { who, form }: Post<ConsoleSession, CloseForm>,
) -> Result<Response, PageError> {
    let result = async {
        let username = match form.username.trim() {
            "" => None,
            u => Some(AccountId::parse(u).map_err(|e| invalid(format!("Account: {e}.")))?),
        };
        let until = parse_time("Until", &form.until)?;
        tollgate_api::invoices::close(&state.api, username, until).await
    }
    .await;
    match result {
        Ok(issued) => Ok(Redirect::to(&format!(
            "/console/invoices?done=closed&issued={}",
            issued.len()
        ))
        .into_response()),
        Err(e) => {
            let (status, message) = refusal(e);
            let view = View {
                close: form,
                close_error: Some(message),
                ..View::default()
            };
            render(&state, &who, &ListQuery::default(), view, status).await
        }
    }
}

/// After a pay or void: back to the list with its notice, or the list again with the reason
/// beside the invoice's forms.
async fn after(
    state: &DashboardState,
    who: &ConsoleSession,
    invoice_id: String,
    form: StatusForm,
    result: Result<InvoiceRecord, ApiError>,
    done: &str,
) -> Result<Response, PageError> {
    match result {
        Ok(i) => Ok(Redirect::to(&format!(
            "/console/invoices?done={done}&invoice={}",
            i.invoice_id()
        ))
        .into_response()),
        Err(e) => {
            let (status, message) = refusal(e);
            let view = View {
                row_error: Some((invoice_id, form, message)),
                ..View::default()
            };
            render(state, who, &ListQuery::default(), view, status).await
        }
    }
}

async fn pay(
    State(state): State<DashboardState>,
    Path(invoice_id): Path<String>,
    Post { who, form }: Post<ConsoleSession, StatusForm>,
) -> Result<Response, PageError> {
    let result = tollgate_api::invoices::pay(
        &state.api,
        &invoice_id,
        form.payment_reference.trim().to_string(),
    )
    .await;
    after(&state, &who, invoice_id, form, result, "paid").await
}

async fn void(
    State(state): State<DashboardState>,
    Path(invoice_id): Path<String>,
    Post { who, form }: Post<ConsoleSession, StatusForm>,
) -> Result<Response, PageError> {
    let result =
        tollgate_api::invoices::void(&state.api, &invoice_id, form.reason.trim().to_string()).await;
    after(&state, &who, invoice_id, form, result, "voided").await
}
