//! The accounts, `GET /console`: searched by username prefix, a page at a time, each with its
//! balance, holds, lock and why, concurrency limit (and whether the tier table or a contract
//! sets it) and billing mode: the operator API's account list (`GET /v1/admin/accounts`).

use super::{chrome, form_error, respond};
use crate::error::PageError;
use crate::layout::{self, empty};
use crate::session::ConsoleSession;
use crate::{fmt, DashboardState};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;
use tollgate_core::machine::{AccountState, LockReason};
use tollgate_core::Nanos;
use tollgate_query::Cursor;
use tollgate_store::{AccountRow, BillingMode};

/// Accounts per page.
pub const PAGE: usize = 50;

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: String,
}

pub async fn list(
    State(state): State<DashboardState>,
    who: ConsoleSession,
    Query(query): Query<ListQuery>,
) -> Result<Response, PageError> {
    let engine = state.engine();
    let prefix = query.q.trim().to_string();
    let cursor = Some(query.cursor.trim())
        .filter(|c| !c.is_empty())
        .map(Cursor::new);
    let refused = match tollgate_api::admin_accounts::check_prefix(&prefix) {
        Err(e) => Some(super::refusal(e)),
        Ok(()) => None,
    };
    let page = match refused {
        Some(_) => None,
        None => Some(tollgate_query::accounts::list(engine, &prefix, cursor.as_ref(), PAGE).await?),
    };
    let catalog = engine.catalog();
    let body = html! {
        form.filters method="get" action="/console" role="search" {
            div {
                label for="q" { "Username starts with" }
                input #q type="search" name="q" value=(prefix) autocomplete="off"
                    spellcheck="false" maxlength="64" aria-describedby="q-hint";
            }
            button type="submit" { "Search" }
            @if !prefix.is_empty() || cursor.is_some() {
                a href="/console" { "All accounts" }
            }
        }
        p #q-hint .hint { "Usernames are letters, digits, " code { "-" } ", " code { "_" } " and " code { "." } "; the search is case-sensitive." }
        @if let Some((_, message)) = &refused {
            (form_error(message))
        }
        @if let Some(page) = &page {
            @if page.items.is_empty() {
                @if prefix.is_empty() && cursor.is_none() {
                    (empty("No accounts yet", html! {
                        "Create one with " code { "tollgate account create <username>" }
                        " or " code { "POST /v1/admin/accounts" } "; it shows here with its balance."
                    }))
                } @else {
                    (empty("No account matches", html! {
                        "No username starts with " code { (prefix) } ". "
                        a href="/console" { "Show every account" } "."
                    }))
                }
            } @else {
                div.table-wrap tabindex="0" {
                    table {
                        caption { "Accounts in username order" @if !prefix.is_empty() { ", starting with " code { (prefix) } } }
                        thead { tr {
                            th scope="col" { "Account" }
                            th.num scope="col" { "Balance" }
                            th.num scope="col" { "Held" }
                            th scope="col" { "State" }
                            th.num scope="col" { "Concurrency" }
                            th scope="col" { "Billing" }
                        } }
                        tbody {
                            @for r in &page.items {
                                (row(r, r.state.concurrency_limit(&catalog), tier_source(&r.state)))
                            }
                        }
                    }
                }
                nav.pager aria-label="Pages" {
                    @if cursor.is_some() {
                        a href={ "/console?q=" (prefix) } { "First page" }
                    } @else { span {} }
                    @if let Some(next) = &page.next_cursor {
                        a rel="next" href={ "/console?q=" (prefix) "&cursor=" (next.as_str()) } { "Next" }
                    }
                }
            }
        }
    };
    let status = refused.map_or(StatusCode::OK, |(s, _)| s);
    Ok(respond(
        status,
        layout::page(&chrome(&who, "/console"), "Accounts", body),
    ))
}

/// Where an account's concurrency limit comes from.
fn tier_source(s: &AccountState) -> &'static str {
    if s.concurrency_override.is_some() {
        "contract"
    } else {
        "tier"
    }
}

/// Why an account refuses new requests, in words.
pub fn lock_text(reason: LockReason) -> &'static str {
    match reason {
        LockReason::ExhaustedBalance => "exhausted balance",
        LockReason::PaymentDisputed => "payment disputed",
    }
}

/// The badge of an account's state: active, or locked and why.
pub fn state_badge(s: &AccountState) -> Markup {
    html! {
        @match s.lock_reason() {
            Some(reason) => span.badge.bad title=(reason.as_str()) { "locked: " (lock_text(reason)) },
            None => span.badge.ok { "active" },
        }
    }
}

pub fn billing_text(b: BillingMode) -> &'static str {
    match b {
        BillingMode::Prepaid => "prepaid",
        BillingMode::Invoice => "invoice",
    }
}

fn row(r: &AccountRow, limit: u32, source: &str) -> Markup {
    let s = &r.state;
    let balance = s.credit.balance;
    html! {
        tr {
            th scope="row" { a href={ "/console/accounts/" (s.credit.id) } { (s.credit.id) } }
            td.num {
                span.bad[balance < Nanos::ZERO] title=(fmt::usd(balance)) { (fmt::usd_cents(balance)) }
            }
            td.num { (fmt::usd_cents(s.credit.held)) }
            td { (state_badge(s)) }
            td.num { (limit) " " span.muted { "(" (source) ")" } }
            td { (billing_text(r.billing)) }
        }
    }
}
