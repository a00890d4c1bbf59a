//! The ledger's reconciliation, `/console/reconciliation`: the check
//! `GET /v1/admin/reconciliation` runs (balances against transfers, holds, in-progress counts,
//! credit lots, line items against charges, rollups, statements and invoices against their
//! sources): clean, or each discrepancy. The check reads the whole ledger, seconds on a large
//! one, so the page shows the last check this server ran, and runs one when staff ask
//! (`POST /console/reconciliation`); opening the page reads nothing.

use super::{chrome, respond};
use crate::error::PageError;
use crate::layout::{self, stat};
use crate::session::{ConsoleSession, Post};
use crate::{fmt, DashboardState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{html, Markup};
use std::sync::Arc;
use tollgate_core::ids::AccountId;
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::{InvoiceRecord, Reconciliation};

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new().route("/console/reconciliation", get(page).post(check))
}

/// A reconciliation and when it ran.
#[derive(Clone, Debug)]
pub struct Checked {
    pub at: Timestamp,
    pub result: Arc<Reconciliation>,
}

/// Runs the check and shows the page with its result.
async fn check(
    State(state): State<DashboardState>,
    _: Post<ConsoleSession, serde::de::IgnoredAny>,
) -> Result<Response, PageError> {
    let engine = state.engine();
    let at = engine.now();
    let result = Arc::new(engine.read(|r| r.reconcile()).await?);
    *state
        .last_reconciliation
        .lock()
        .expect("the last reconciliation") = Some(Checked { at, result });
    Ok(Redirect::to("/console/reconciliation").into_response())
}

fn check_form(csrf: &str, label: &str) -> Markup {
    html! {
        form.inline #check-now method="post" action="/console/reconciliation" {
            (layout::csrf(csrf))
            button.primary type="submit" { (label) }
        }
    }
}

/// A ledger total: exact, or the raw figure when it exceeds the amounts tollgate writes (a
/// corrupt ledger, shown as it is).
fn total(v: i128) -> String {
    match i64::try_from(v) {
        Ok(n) => fmt::usd(Nanos(n)),
        Err(_) => format!("{v} nano-USD"),
    }
}

fn account_link(a: &AccountId) -> Markup {
    html! { a href={ "/console/accounts/" (a) } { (a) } }
}

/// One kind of discrepancy: its title, what it means, the table's head and rows.
fn mismatches(title: &str, meaning: &str, head: &[&str], rows: Vec<Markup>) -> Markup {
    html! {
        @if !rows.is_empty() {
            section.mismatch {
                h3 { (title) " (" (rows.len()) ")" }
                p.hint { (meaning) }
                div.table-wrap tabindex="0" {
                    table {
                        thead { tr { @for h in head { th scope="col" { (h) } } } }
                        tbody { @for r in rows { (r) } }
                    }
                }
            }
        }
    }
}

fn amounts(v: &[(AccountId, Nanos, Nanos)]) -> Vec<Markup> {
    v.iter()
        .map(|(a, x, y)| {
            html! { tr { td { (account_link(a)) } td.num { (fmt::usd(*x)) } td.num { (fmt::usd(*y)) } } }
        })
        .collect()
}

fn discrepancies(r: &Reconciliation) -> Markup {
    html! {
        (mismatches("Balances", "The stored balance differs from the sum of the account's posted transfers.",
            &["Account", "Stored", "From transfers"], amounts(&r.balance_mismatches)))
        (mismatches("Holds", "The stored held amount differs from the sum of the account's open holds.",
            &["Account", "Stored", "Open holds"], amounts(&r.held_mismatches)))
        (mismatches("Requests in progress", "The stored count differs from the account's requests in progress.",
            &["Account", "Stored", "From requests"],
            r.in_progress_mismatches.iter().map(|(a, s, t)| html! {
                tr { td { (account_link(a)) } td.num { (s) } td.num { (t) } }
            }).collect()))
        (mismatches("Credit lots", "What is left of the account's purchases does not add up to its balance.",
            &["Account", "Balance", "Sum of lots"], amounts(&r.lot_mismatches)))
        (mismatches("Line items", "A request's line item differs from the charges posted for it.",
            &["Request"],
            r.line_item_mismatches.iter().map(|id| html! { tr { td.mono { (id) } } }).collect()))
        (mismatches("Usage rollups", "The account's usage rollups do not add up to its line items.",
            &["Account", "Rollups", "Line items"], amounts(&r.rollup_mismatches)))
        (mismatches("Statements", "The account's daily or monthly balance rows do not end at its balance.",
            &["Account", "Balance", "Last closing", "Summed movements"],
            r.statement_mismatches.iter().map(|(a, b, c, m)| html! {
                tr { td { (account_link(a)) } td.num { (fmt::usd(*b)) } td.num { (fmt::usd(*c)) } td.num { (fmt::usd(*m)) } }
            }).collect()))
        (mismatches("Invoices", "A usage invoice's lines do not add up to its subtotal, discount and total.",
            &["Invoice"],
            r.invoice_mismatches.iter().map(|(y, n)| html! {
                tr { td.mono { (InvoiceRecord::id_of(*y, *n)) } }
            }).collect()))
        @if r.revenue_nanos != r.billed_nanos {
            (mismatches("Revenue", "Revenue posted in the ledger differs from the line items' totals.",
                &["Revenue", "Billed"],
                vec![html! { tr { td.num { (total(r.revenue_nanos)) } td.num { (total(r.billed_nanos)) } } }]))
        }
        @if r.purchased_nanos != r.credited_nanos {
            (mismatches("Credits", "The purchases recorded differ from the credits their transfers added.",
                &["Purchases", "Credited"],
                vec![html! { tr { td.num { (total(r.purchased_nanos)) } td.num { (total(r.credited_nanos)) } } }]))
        }
        @if r.adjusted_nanos != r.adjusted_in_ledger_nanos {
            (mismatches("Adjustments", "The adjustments recorded differ from what their transfers moved.",
                &["Recorded", "In the ledger"],
                vec![html! { tr { td.num { (total(r.adjusted_nanos)) } td.num { (total(r.adjusted_in_ledger_nanos)) } } }]))
        }
    }
}

async fn page(
    State(state): State<DashboardState>,
    who: ConsoleSession,
) -> Result<Response, PageError> {
    let last = state
        .last_reconciliation
        .lock()
        .expect("the last reconciliation")
        .clone();
    let Some(Checked { at, result }) = last else {
        let body = html! {
            p.lead { "The check compares every balance, hold, credit lot, line item, rollup,                 statement and invoice with the ledger. It reads the whole ledger, so it runs                 when you ask." }
            (layout::empty("Not checked yet on this server", html! {
                (check_form(&who.session.csrf, "Check the ledger now"))
            }))
        };
        return Ok(respond(
            StatusCode::OK,
            layout::page(
                &chrome(&who, "/console/reconciliation"),
                "Reconciliation",
                body,
            ),
        ));
    };
    let r = &*result;
    let clean = r.is_clean();
    let body = html! {
        div.actions {
            p.lead { "Checked " strong #checked-at { (fmt::datetime(at)) } " on this server." }
            (check_form(&who.session.csrf, "Check again"))
        }
        @if clean {
            p.notice #verdict role="status" {
                strong { "Clean." } " Every balance, hold, credit lot, line item, rollup, statement and invoice agrees with the ledger."
            }
        } @else {
            div.notice.error #verdict role="alert" {
                strong { "Discrepancies found." } " " (r.summary())
            }
        }
        dl.stats {
            (stat("Revenue", html! { (total(r.revenue_nanos)) }, Some(html! { "Posted charges" })))
            (stat("Billed", html! { (total(r.billed_nanos)) }, Some(html! { "Line items' totals" })))
            (stat("Purchased", html! { (total(r.purchased_nanos)) }, Some(html! { "Paid purchases and grants" })))
            (stat("Credited", html! { (total(r.credited_nanos)) }, Some(html! { "Credits added to accounts" })))
            (stat("Expired", html! { (total(r.expired_nanos)) }, Some(html! { "Credits expired unspent" })))
            (stat("Adjusted", html! { (total(r.adjusted_nanos)) }, Some(html! { "Operator adjustments, net" })))
        }
        @if !clean {
            h2 { "Discrepancies" }
            (discrepancies(r))
        }
    };
    Ok(respond(
        StatusCode::OK,
        layout::page(
            &chrome(&who, "/console/reconciliation"),
            "Reconciliation",
            body,
        ),
    ))
}
