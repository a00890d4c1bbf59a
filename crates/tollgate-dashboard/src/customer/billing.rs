//! Billing: the account's invoices (each with its detail page and PDF), payments, credit
//! activity, monthly statements and FOCUS reports.
//!
//! `/dashboard/billing` is the entry: the newest of each, and every month since the account
//! was created with its statement and FOCUS report. The invoices, payments and credit activity
//! have pages of their own, paged with the queries' cursors. Every figure is what the API
//! answers: invoices are the API's [`InvoiceView`] (the PDF is the API's bytes), statements,
//! payments and activity the same `tollgate-query` reads, the FOCUS CSV the API's rendering.
//! An invoice, statement or report is only ever the signed-in account's: another account's
//! invoice id is not found, exactly like an unknown one.

use super::chrome;
use crate::error::PageError;
use crate::layout::{self, empty, stat};
use crate::session::CustomerSession;
use crate::{fmt, DashboardState};
use axum::extract::{Path, Query, State};
use axum::response::{Html, Response};
use axum::routing::get;
use maud::{html, Markup};
use serde::Deserialize;
use std::collections::HashMap;
use tollgate_api::invoices::{InvoiceKindView, InvoiceStatusView, InvoiceView};
use tollgate_api::payments::history::PaymentStatus;
use tollgate_core::serverless::Line;
use tollgate_core::statement::MovementKind;
use tollgate_core::{Nanos, Timestamp};
use tollgate_query::invoices::InvoiceFilter;
use tollgate_query::month::Month;
use tollgate_query::{Cursor, Page};
use tollgate_store::{ActivityRecord, BillingMode, InvoiceRecord, PaymentRecord};

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new()
        .route("/dashboard/billing", get(billing))
        .route("/dashboard/billing/invoices", get(invoices))
        .route("/dashboard/billing/payments", get(payments))
        .route("/dashboard/billing/activity", get(activity))
        .route("/dashboard/invoices/{invoice_id}", get(invoice))
        .route("/dashboard/invoices/{invoice_id}/pdf", get(invoice_pdf))
        .route("/dashboard/statements/{month}", get(statement))
        .route("/dashboard/focus.csv", get(focus_csv))
}

const SECTION: &str = "/dashboard/billing";
/// Rows of each list on the billing page.
const SUMMARY_ROWS: usize = 10;
/// Rows of a list's own page.
const PAGE_ROWS: usize = 50;

/// A list page's position: the cursor of the page after the one before.
#[derive(Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    cursor: Option<String>,
}

impl PageQuery {
    fn cursor(&self) -> Option<Cursor> {
        self.cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(Cursor::new)
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

async fn invoice_page(
    state: &DashboardState,
    who: &CustomerSession,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<InvoiceView>, PageError> {
    let engine = state.engine();
    let filter = InvoiceFilter {
        account: Some(who.account.clone()),
        ..InvoiceFilter::default()
    };
    let page = tollgate_query::invoices::list(engine, filter, cursor, limit).await?;
    let issuer = tollgate_query::invoices::issuer(engine).await?;
    Ok(Page {
        items: page
            .items
            .into_iter()
            .map(|i| tollgate_api::invoices::view(i, issuer.as_ref()))
            .collect(),
        next_cursor: page.next_cursor,
    })
}

/// The numbers of the invoices the credit notes among `rows` correct, by invoice id (their
/// own account's top-up invoices, read one by one: a page holds few credit notes).
async fn corrected_numbers(
    state: &DashboardState,
    rows: &[InvoiceView],
) -> Result<HashMap<String, String>, PageError> {
    let mut numbers = HashMap::new();
    for id in rows.iter().filter_map(|i| i.corrects_invoice_id.as_deref()) {
        if numbers.contains_key(id) {
            continue;
        }
        let Some((year, seq)) = InvoiceRecord::parse_id(id) else {
            continue;
        };
        if let Some(i) = state.engine().read(move |r| r.invoice(year, seq)).await? {
            numbers.insert(id.to_string(), i.number());
        }
    }
    Ok(numbers)
}

async fn payment_page(
    state: &DashboardState,
    who: &CustomerSession,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<PaymentRecord>, PageError> {
    Ok(tollgate_query::payments::list(state.engine(), who.account.clone(), cursor, limit).await?)
}

async fn activity_page(
    state: &DashboardState,
    who: &CustomerSession,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<ActivityRecord>, PageError> {
    Ok(tollgate_query::statements::credit_activity(
        state.engine(),
        who.account.clone(),
        None,
        None,
        cursor,
        limit,
    )
    .await?)
}

/// Every month from the account's creation to now, newest first.
fn months_since(created: Timestamp, now: Timestamp) -> Vec<Month> {
    let first = Month::of(created.min(now));
    let mut m = Month::of(now);
    let mut out = vec![m];
    while m > first {
        m = Month::of(m.start().minus_ms(1));
        out.push(m);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Pieces

/// `November 2026`.
fn month_name(m: Month) -> String {
    chrono::DateTime::from_timestamp_millis(m.start().0)
        .unwrap_or_default()
        .format("%B %Y")
        .to_string()
}

fn kind_label(k: InvoiceKindView) -> &'static str {
    match k {
        InvoiceKindView::TopUp => "Top-up",
        InvoiceKindView::Usage => "Usage",
        InvoiceKindView::CreditNote => "Credit note",
    }
}

fn status_badge(s: InvoiceStatusView) -> Markup {
    match s {
        InvoiceStatusView::Paid => html! { span.badge.ok { "Paid" } },
        InvoiceStatusView::Open => html! { span.badge.warn { "Open" } },
        InvoiceStatusView::Void => html! { span.badge { "Void" } },
    }
}

/// What a movement was, in words. A dispute takes a payment's credits back while it is open
/// (or lost) and gives them back when it is won: the sign tells which.
fn movement_label(k: MovementKind, amount: Nanos) -> &'static str {
    match k {
        MovementKind::Purchase => "Purchase",
        MovementKind::Grant => "Free credits",
        MovementKind::Usage => "Usage",
        MovementKind::Expiry => "Credits expired",
        MovementKind::Refund => "Refund of a payment",
        MovementKind::Dispute if amount > Nanos::ZERO => "Dispute won: credits given back",
        MovementKind::Dispute => "Payment disputed: credits taken back",
        MovementKind::Adjustment => "Adjustment",
    }
}

/// A signed amount: `+$25.00`, `-$0.0012`.
fn signed(n: Nanos) -> String {
    if n > Nanos::ZERO {
        format!("+{}", fmt::usd(n))
    } else {
        fmt::usd(n)
    }
}

/// An exact amount in a cell, with its nano-USD in `data-nano-usd`.
fn amount(n: Nanos) -> Markup {
    html! { span data-nano-usd=(n.0) { (fmt::usd(n)) } }
}

fn invoice_href(id: &str) -> String {
    format!("/dashboard/invoices/{id}")
}

/// The invoices, with the number of the invoice each credit note corrects (`corrected`, by
/// id; its id when it was not found).
fn invoices_table(rows: &[InvoiceView], corrected: &HashMap<String, String>) -> Markup {
    html! {
        div.table-wrap tabindex="0" {
            table.rows #invoices-table {
                thead { tr {
                    th scope="col" { "Number" }
                    th scope="col" { "Kind" }
                    th scope="col" { "Issued" }
                    th scope="col" { "Period" }
                    th scope="col" { "Status" }
                    th.num scope="col" { "Total" }
                    th scope="col" { span.visually-hidden { "Download" } }
                } }
                tbody {
                    @for i in rows {
                        tr data-invoice=(i.invoice_id) {
                            th scope="row" { a href=(invoice_href(&i.invoice_id)) { (i.number) } }
                            td {
                                (kind_label(i.kind))
                                @if let Some(c) = &i.corrects_invoice_id {
                                    br; span.small {
                                        "corrects " a href=(invoice_href(c)) { (corrected.get(c).unwrap_or(c)) }
                                    }
                                }
                            }
                            td { (fmt::date(i.issued_at.0)) }
                            td { (fmt::period(i.period_start.0, i.period_end.0)) }
                            td { (status_badge(i.status)) }
                            td.num { (amount(Nanos(i.total_nano_usd))) }
                            td {
                                a.pdf href={ (invoice_href(&i.invoice_id)) "/pdf" }
                                    aria-label={ "PDF of invoice " (i.number) } { "PDF" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A payment's status as the API answers it (`PaymentStatus::of`: a dispute first, then what
/// was refunded), as a badge.
pub fn payment_status_badge(s: PaymentStatus) -> Markup {
    match s {
        PaymentStatus::Succeeded => html! { span.badge.ok data-status="succeeded" { "Succeeded" } },
        PaymentStatus::PartiallyRefunded => {
            html! { span.badge.warn data-status="partially_refunded" { "Partially refunded" } }
        }
        PaymentStatus::Refunded => html! { span.badge data-status="refunded" { "Refunded" } },
        PaymentStatus::Disputed => html! { span.badge.bad data-status="disputed" { "Disputed" } },
    }
}

fn payments_table(rows: &[PaymentRecord]) -> Markup {
    html! {
        div.table-wrap tabindex="0" {
            table #payments-table {
                thead { tr {
                    th scope="col" { "Date" }
                    th.num scope="col" { "Amount" }
                    th scope="col" { "Status" }
                    th.num scope="col" { "Refunded" }
                    th scope="col" { "Purchase" }
                    th scope="col" { "Payment reference" }
                    th scope="col" { "Invoice" }
                    th scope="col" { "Credits expire" }
                } }
                tbody {
                    @for p in rows {
                        tr data-purchase=(p.purchase_id) {
                            td { (fmt::datetime(p.created_at)) }
                            td.num { (amount(p.amount)) }
                            td {
                                (payment_status_badge(PaymentStatus::of(p)))
                                @if p.disputed > Nanos::ZERO {
                                    br; span.small.muted { (fmt::usd(p.disputed)) " taken back while disputed" }
                                }
                            }
                            td.num data-field="refunded" {
                                @if p.refunded > Nanos::ZERO { (amount(p.refunded)) }
                                @else { span.muted { "—" } }
                            }
                            td { code { (p.purchase_id) } }
                            td data-field="provider-reference" {
                                @match &p.provider_reference {
                                    Some(r) => code { (r) },
                                    None => span.muted { "Added by your platform" },
                                }
                            }
                            td {
                                @if let Some((y, n)) = p.invoice {
                                    @let id = InvoiceRecord::id_of(y, n);
                                    a href=(invoice_href(&id)) { (id) }
                                } @else {
                                    span.muted { "None" }
                                }
                            }
                            td {
                                @if let Some(at) = p.expires_at { (fmt::date(at)) }
                                @else { span.muted { "Never" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn activity_table(rows: &[ActivityRecord]) -> Markup {
    html! {
        div.table-wrap tabindex="0" {
            table #activity-table {
                thead { tr {
                    th scope="col" { "When (UTC)" }
                    th scope="col" { "What" }
                    th scope="col" { "Reference" }
                    th.num scope="col" { "Amount" }
                    th.num scope="col" { "Balance after" }
                } }
                tbody {
                    @for r in rows {
                        tr data-kind=(r.kind.as_str()) {
                            td {
                                @if r.kind == MovementKind::Usage { (r.reference) }
                                @else { (fmt::datetime(r.at)) }
                            }
                            td { (movement_label(r.kind, r.amount)) }
                            td {
                                @if r.kind == MovementKind::Usage {
                                    @let month = r.reference.get(..7).unwrap_or_default();
                                    a href={ "/dashboard/statements/" (month) } { "Month's statement" }
                                } @else {
                                    code { (r.reference) }
                                }
                            }
                            td.num data-nano-usd=(r.amount.0) {
                                span.(if r.amount < Nanos::ZERO { "neg" } else { "pos" }) { (signed(r.amount)) }
                            }
                            td.num data-nano-usd=(r.balance_after.0) { (fmt::usd(r.balance_after)) }
                        }
                    }
                }
            }
        }
    }
}

/// Links of a paged list: back to its newest rows, and on to older ones.
fn pager(path: &str, paged: bool, next: Option<&Cursor>) -> Markup {
    html! {
        @if paged || next.is_some() {
            nav.pager aria-label="Pages" {
                span { @if paged { a href=(path) { "← Newest" } } }
                span {
                    @if let Some(c) = next {
                        a href={ (path) "?cursor=" (encode(c.as_str())) } { "Older →" }
                    }
                }
            }
        }
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn back_to_billing() -> Markup {
    html! { p.back { a href=(SECTION) { "← Billing" } } }
}

fn no_invoices() -> Markup {
    empty(
        "No invoices yet",
        html! {
            "A top-up invoice is issued with every purchase of credits, and an account billed \
             monthly gets a usage invoice when each month closes. Ask your platform to add \
             credits to get started."
        },
    )
}

fn no_payments() -> Markup {
    empty(
        "No payments yet",
        html! {
            "Each purchase of credits appears here with its invoice. Free credits are not \
             payments: they show in the credit activity."
        },
    )
}

fn no_activity() -> Markup {
    empty(
        "No credit activity yet",
        html! {
            "Purchases, free credits, usage (one line a day) and adjustments will appear here \
             with the balance after each. Make a request with one of your "
            a href="/dashboard/keys" { "API keys" } " to see usage."
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Pages

/// `GET /dashboard/billing`: the newest invoices, payments and credit activity, and every
/// month's statement and FOCUS report.
pub async fn billing(
    State(state): State<DashboardState>,
    who: CustomerSession,
) -> Result<Html<String>, PageError> {
    let engine = state.engine();
    let now = engine.now();
    let account = tollgate_query::account(engine, &who.account).await?;
    let invoices = invoice_page(&state, &who, None, SUMMARY_ROWS).await?;
    let corrected = corrected_numbers(&state, &invoices.items).await?;
    let payments = payment_page(&state, &who, None, SUMMARY_ROWS).await?;
    let activity = activity_page(&state, &who, None, SUMMARY_ROWS).await?;
    let months = months_since(account.created_at, now);
    let balance = account.state.credit.balance;

    let body = html! {
        div.section-head {
            p.lead { "Invoices, payments and every movement of your balance. Amounts are USD, times UTC." }
            @if account.billing != BillingMode::Invoice {
                (super::top_ups::add_credits_button(&state))
            }
        }
        nav.subnav aria-label="Billing sections" {
            ul {
                li { a href="#invoices" { "Invoices" } }
                li { a href="#payments" { "Payments" } }
                li { a href="#activity" { "Credit activity" } }
                li { a href="#statements" { "Statements & reports" } }
            }
        }
        dl.stats {
            (stat("Balance", html! {
                span data-nano-usd=(balance.0) title=(fmt::usd(balance)) { (fmt::usd_cents(balance)) }
            }, Some(html! { "As of " (fmt::datetime(now)) })))
            (stat("Customer since", html! { (fmt::date(account.created_at)) },
                Some(html! { (months.len()) " statement" @if months.len() != 1 { "s" } })))
        }

        section #invoices aria-labelledby="invoices-h" {
            div.section-head {
                h2 #invoices-h { "Invoices" }
                @if invoices.next_cursor.is_some() {
                    a href="/dashboard/billing/invoices" { "All invoices →" }
                }
            }
            @if invoices.items.is_empty() { (no_invoices()) } @else { (invoices_table(&invoices.items, &corrected)) }
        }

        section #payments aria-labelledby="payments-h" {
            div.section-head {
                h2 #payments-h { "Payments" }
                @if payments.next_cursor.is_some() {
                    a href="/dashboard/billing/payments" { "All payments →" }
                }
            }
            @if payments.items.is_empty() { (no_payments()) } @else { (payments_table(&payments.items)) }
        }

        section #activity aria-labelledby="activity-h" {
            div.section-head {
                h2 #activity-h { "Credit activity" }
                @if activity.next_cursor.is_some() {
                    a href="/dashboard/billing/activity" { "All activity →" }
                }
            }
            @if activity.items.is_empty() { (no_activity()) } @else { (activity_table(&activity.items)) }
        }

        section #statements aria-labelledby="statements-h" {
            div.section-head { h2 #statements-h { "Monthly statements and FOCUS reports" } }
            p.hint {
                "A statement is a month's opening balance, what moved it and its closing balance. "
                "A FOCUS report is the month's charges as a CSV in the FinOps Foundation's format, "
                "for cost tools and spreadsheets."
            }
            div.table-wrap tabindex="0" {
                table.rows #months-table {
                    thead { tr {
                        th scope="col" { "Month" }
                        th scope="col" { "Statement" }
                        th scope="col" { "FOCUS report" }
                    } }
                    tbody {
                        @for (i, m) in months.iter().enumerate() {
                            tr data-month=(m) {
                                th scope="row" {
                                    (month_name(*m))
                                    @if i == 0 { " " span.badge { "so far" } }
                                }
                                td { a href={ "/dashboard/statements/" (m) } { "Statement" } }
                                td {
                                    a href={ "/dashboard/focus.csv?month=" (m) } download
                                        aria-label={ "FOCUS report of " (month_name(*m)) ", CSV" } { "CSV" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        "Billing",
        body,
    )))
}

/// `GET /dashboard/billing/invoices`: every invoice, newest first, a page at a time.
pub async fn invoices(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, PageError> {
    let cursor = q.cursor();
    let page = invoice_page(&state, &who, cursor.as_ref(), PAGE_ROWS).await?;
    let corrected = corrected_numbers(&state, &page.items).await?;
    let path = "/dashboard/billing/invoices";
    let body = html! {
        (back_to_billing())
        @if page.items.is_empty() { (no_invoices()) } @else { (invoices_table(&page.items, &corrected)) }
        (pager(path, cursor.is_some(), page.next_cursor.as_ref()))
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        "Invoices",
        body,
    )))
}

/// `GET /dashboard/billing/payments`: every payment, newest first, a page at a time.
pub async fn payments(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, PageError> {
    let cursor = q.cursor();
    let page = payment_page(&state, &who, cursor.as_ref(), PAGE_ROWS).await?;
    let path = "/dashboard/billing/payments";
    let body = html! {
        (back_to_billing())
        @if page.items.is_empty() { (no_payments()) } @else { (payments_table(&page.items)) }
        (pager(path, cursor.is_some(), page.next_cursor.as_ref()))
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        "Payments",
        body,
    )))
}

/// `GET /dashboard/billing/activity`: every movement of the balance, newest first, a page at
/// a time.
pub async fn activity(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, PageError> {
    let cursor = q.cursor();
    let page = activity_page(&state, &who, cursor.as_ref(), PAGE_ROWS).await?;
    let path = "/dashboard/billing/activity";
    let body = html! {
        (back_to_billing())
        p.hint {
            "Usage is one line a day, dated the end of that day (UTC), after the day's other \
             movements. The balance after each line is the running balance in this order."
        }
        @if page.items.is_empty() { (no_activity()) } @else { (activity_table(&page.items)) }
        (pager(path, cursor.is_some(), page.next_cursor.as_ref()))
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        "Credit activity",
        body,
    )))
}

/// `GET /dashboard/invoices/{invoice_id}`: one of the account's invoices.
pub async fn invoice(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Path(invoice_id): Path<String>,
) -> Result<Html<String>, PageError> {
    let inv = tollgate_api::invoices::own_invoice(&state.api, &who.account, &invoice_id).await?;
    let corrected = corrected_numbers(&state, std::slice::from_ref(&inv)).await?;
    let pdf = format!("{}/pdf", invoice_href(&inv.invoice_id));
    let body = html! {
        (back_to_billing())
        @match inv.status {
            InvoiceStatusView::Paid => p.notice role="status" {
                strong { "Paid" }
                @if let Some(at) = inv.paid_at { " on " (fmt::datetime(at.0)) }
                @if let Some(r) = &inv.payment_reference { " (reference " (r) ")" }
                "."
            },
            InvoiceStatusView::Open => p.notice.warn role="status" {
                strong { "Open" } ": this invoice is awaiting payment."
            },
            InvoiceStatusView::Void => p.notice.error role="status" {
                strong { "Void" }
                @if let Some(at) = inv.voided_at { " since " (fmt::datetime(at.0)) }
                @if let Some(r) = &inv.void_reason { ": " (r) }
                ". Nothing is owed on it."
            },
        }
        dl.stats {
            (stat("Total", html! {
                span #invoice-total data-nano-usd=(inv.total_nano_usd) { (fmt::usd_exact(inv.total.0)) }
            }, Some(html! { (inv.currency) })))
            (stat("Issued", html! { (fmt::date(inv.issued_at.0)) }, Some(html! { (fmt::datetime(inv.issued_at.0)) })))
            (stat("Kind", html! { (kind_label(inv.kind)) }, Some(html! {
                @match inv.kind {
                    InvoiceKindView::TopUp => "A purchase of credits",
                    InvoiceKindView::Usage => "Charges of a billing period",
                    InvoiceKindView::CreditNote => "A refund of a purchase of credits",
                }
            })))
        }
        div.grid-2 {
            div.panel {
                h2 { "Details" }
                dl.details {
                    dt { "Number" } dd #invoice-number { (inv.number) }
                    dt { "Invoice id" } dd { code { (inv.invoice_id) } }
                    dt { "Status" } dd { (status_badge(inv.status)) }
                    dt { "Period" } dd {
                        (fmt::datetime(inv.period_start.0)) " – " (fmt::datetime(inv.period_end.0))
                    }
                    @if let Some(p) = &inv.purchase_id {
                        dt { "Purchase" } dd { code { (p) } }
                    }
                    @if let Some(c) = &inv.corrects_invoice_id {
                        dt { "Corrects" } dd { a #corrects href=(invoice_href(c)) { "invoice " (corrected.get(c).unwrap_or(c)) } }
                    }
                    dt { "Billed to" } dd { (inv.username) }
                }
            }
            div.panel {
                h2 { "Issued by" }
                @if let Some(issuer) = &inv.issuer {
                    p.issuer {
                        strong { (issuer.name) } br;
                        (issuer.address)
                        @if let Some(e) = &issuer.email { br; (e) }
                        @if let Some(t) = &issuer.tax_id { br; "Tax id " (t) }
                    }
                } @else {
                    p.muted { "Your platform has not set the issuer's details yet." }
                }
            }
        }
        h2 { "Lines" }
        div.table-wrap tabindex="0" {
            table #invoice-lines {
                thead { tr {
                    th scope="col" { "Endpoint" }
                    th scope="col" { "Unit" }
                    th.num scope="col" { "Quantity" }
                    th.num scope="col" { "Unit price" }
                    th.num scope="col" { "Discount" }
                    th.num scope="col" { "Subtotal" }
                    th.num scope="col" { "Discount amount" }
                    th.num scope="col" { "Total" }
                    th scope="col" { "Charge period (UTC)" }
                } }
                tbody {
                    @for l in &inv.lines {
                        tr {
                            td {
                                @match &l.endpoint_id {
                                    Some(e) if !Line::is_key(e) => { code { (e) } }
                                    Some(_) => { (l.description) }
                                    None => { "Credits" }
                                }
                            }
                            td { (l.unit) }
                            td.num { (fmt::quantity(l.quantity.0)) }
                            td.num { (fmt::usd_exact(l.unit_price.0)) }
                            td.num { (fmt::percent(l.percent_discount.0)) }
                            td.num { (fmt::usd_exact(l.cost_subtotal.0)) }
                            td.num { (fmt::usd_exact(l.cost_discount.0)) }
                            td.num data-nano-usd=(l.cost_total_nano_usd) { (fmt::usd_exact(l.cost_total.0)) }
                            td { (fmt::period(l.charge_period_start.0, l.charge_period_end.0)) }
                        }
                    }
                }
                tfoot {
                    tr { th scope="row" colspan="7" { "Subtotal" } td.num { (fmt::usd_exact(inv.subtotal.0)) } td {} }
                    tr { th scope="row" colspan="7" { "Discount" } td.num { (fmt::usd_exact(inv.discount.0)) } td {} }
                    tr { th scope="row" colspan="7" { "Total (" (inv.currency) ")" }
                        td.num data-nano-usd=(inv.total_nano_usd) { (fmt::usd_exact(inv.total.0)) } td {} }
                }
            }
        }
        p.actions {
            a.button.primary #invoice-pdf href=(pdf) download={ (inv.number) ".pdf" } { "Download PDF" }
        }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        &format!("Invoice {}", inv.number),
        body,
    )))
}

/// `GET /dashboard/invoices/{invoice_id}/pdf`: the invoice's PDF, the same bytes as the
/// API's.
pub async fn invoice_pdf(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Path(invoice_id): Path<String>,
) -> Result<Response, PageError> {
    let inv = tollgate_api::invoices::own_invoice(&state.api, &who.account, &invoice_id).await?;
    Ok(tollgate_api::invoices::pdf_response(&inv))
}

/// `GET /dashboard/statements/{month}`: a month's statement.
pub async fn statement(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Path(month): Path<String>,
) -> Result<Html<String>, PageError> {
    let engine = state.engine();
    let now = engine.now();
    let month = tollgate_query::statements::statement_month(&month, now)
        .map_err(|e| PageError::bad_request(format!("The month {e}.")))?;
    let account = tollgate_query::account(engine, &who.account).await?;
    let s = tollgate_query::statements::statement(engine, who.account.clone(), month).await?;
    let current = month == Month::of(now);
    let previous = Month::of(month.start().minus_ms(1));
    let next = Month::of(month.end());
    let first = Month::of(account.created_at.min(now));
    let m = &s.moved;
    let lines: [(&str, &str, Nanos); 7] = [
        ("purchases", "Purchases", m.purchases),
        ("grants", "Free credits", m.grants),
        ("usage", "Usage", m.usage),
        ("expired", "Credits expired", m.expired),
        ("refunds", "Refunds", m.refunds),
        ("disputes", "Disputes", m.disputes),
        ("adjustments", "Adjustments", m.adjustments),
    ];
    let body = html! {
        (back_to_billing())
        p.lead {
            (fmt::datetime(month.start())) " to "
            @if current { (fmt::datetime(now)) " (the month so far)" } @else { (fmt::datetime(month.end())) }
        }
        dl.stats {
            (stat("Opening balance", html! {
                span #opening data-nano-usd=(s.opening.0) { (fmt::usd(s.opening)) }
            }, Some(html! { "On " (fmt::date(month.start())) })))
            (stat("Closing balance", html! {
                span #closing data-nano-usd=(s.closing.0) { (fmt::usd(s.closing)) }
            }, Some(html! { @if current { "Now" } @else { "On " (fmt::date(month.end())) } })))
        }
        h2 { "Movements" }
        div.table-wrap.compact tabindex="0" {
            table.rows #statement-movements {
                tbody {
                    tr { th scope="row" { "Opening balance" } td.num data-field="opening" data-nano-usd=(s.opening.0) { (fmt::usd(s.opening)) } }
                    @for (field, label, n) in &lines {
                        tr {
                            th scope="row" { (label) }
                            td.num data-field=(field) data-nano-usd=(n.0) { (signed(*n)) }
                        }
                    }
                }
                tfoot {
                    tr { th scope="row" { "Closing balance" } td.num data-field="closing" data-nano-usd=(s.closing.0) { (fmt::usd(s.closing)) } }
                }
            }
        }
        h2 { "Usage by endpoint" }
        @if s.usage.is_empty() {
            (empty("No usage this month", html! {
                "Requests made with your " a href="/dashboard/keys" { "API keys" }
                " appear here by endpoint and unit, on the day they were charged."
            }))
        } @else {
            div.table-wrap tabindex="0" {
                table #statement-usage {
                    thead { tr {
                        th scope="col" { "Endpoint" }
                        th scope="col" { "Unit" }
                        th.num scope="col" { "Quantity" }
                        th.num scope="col" { "Requests" }
                        th.num scope="col" { "Cost" }
                    } }
                    tbody {
                        @for u in &s.usage {
                            tr data-endpoint=(u.endpoint) {
                                td {
                                    @if Line::is_key(u.endpoint.as_str()) {
                                        (tollgate_api::invoices::line_name(&u.endpoint))
                                    } @else {
                                        code { (u.endpoint) }
                                    }
                                }
                                td { (u.unit) }
                                td.num { (fmt::quantity(u.quantity)) }
                                td.num { (u.requests) }
                                td.num data-nano-usd=(u.cost.0) { (fmt::usd(u.cost)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Months" {
            span { @if previous >= first {
                a href={ "/dashboard/statements/" (previous) } { "← " (month_name(previous)) }
            } }
            span { a href={ "/dashboard/focus.csv?month=" (month) } download { "FOCUS report (CSV)" } }
            span { @if !current {
                a href={ "/dashboard/statements/" (next) } { (month_name(next)) " →" }
            } }
        }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, SECTION),
        &format!("Statement for {}", month_name(month)),
        body,
    )))
}

#[derive(Deserialize)]
pub struct FocusQuery {
    #[serde(default)]
    month: Option<String>,
}

/// `GET /dashboard/focus.csv?month=YYYY-MM`: the month's FOCUS report, the API's CSV of
/// `source=invoice&billing_month=YYYY-MM` (default: the current month).
pub async fn focus_csv(
    State(state): State<DashboardState>,
    who: CustomerSession,
    Query(q): Query<FocusQuery>,
) -> Result<Response, PageError> {
    let month = match q.month.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => {
            Month::parse(m).map_err(|e| PageError::bad_request(format!("The month {e}.")))?
        }
        None => Month::of(state.engine().now()),
    };
    Ok(tollgate_api::focus::focus_report(
        &state.api,
        who.account,
        tollgate_api::focus::FocusArgs::billing_month(month),
        tollgate_query::focus::DEFAULT_PAGE_SPAN_MS,
    )
    .await?)
}
