//! The accounts: searched by username prefix, with their balance, lock and tier.

use super::chrome;
use crate::error::PageError;
use crate::layout::{self, empty};
use crate::session::ConsoleSession;
use crate::{fmt, DashboardState};
use axum::extract::{Query, State};
use axum::response::Html;
use maud::html;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
}

pub async fn list(
    State(state): State<DashboardState>,
    who: ConsoleSession,
    Query(query): Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    let engine = state.engine();
    let catalog = engine.catalog();
    let prefix = query.q.trim().to_string();
    let rows = tollgate_query::accounts::list(engine, &prefix, None, 100)
        .await?
        .items;
    let body = html! {
        form.filters method="get" action="/console" role="search" {
            div {
                label for="q" { "Username starts with" }
                input #q type="search" name="q" value=(prefix) autocomplete="off";
            }
            button type="submit" { "Search" }
        }
        @if rows.is_empty() {
            (empty("No accounts", html! { "Create one with " code { "tollgate account create" } " or the operator API." }))
        } @else {
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Account" }
                        th.num scope="col" { "Balance" }
                        th scope="col" { "State" }
                        th.num scope="col" { "Concurrency" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td { a href={ "/console/accounts/" (r.state.credit.id) } { (r.state.credit.id) } }
                                td.num { (fmt::usd(r.state.credit.balance)) }
                                td {
                                    @match r.state.lock_reason() {
                                        Some(reason) => span.badge.bad { "locked: " (reason.as_str()) },
                                        None => span.badge.ok { "active" },
                                    }
                                }
                                td.num { (r.state.concurrency_limit(&catalog)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::html(layout::page(
        &chrome(&who, "/console"),
        "Accounts",
        body,
    )))
}
