//! The account page's "Serverless" card: the account's live runners (reported within their
//! grace and not terminated, [`RunnerRecord::is_live`]), each with its app, machine, state
//! and since when, as the store keeps them ([`tollgate_store::Reader::runners`]). Shown only
//! when the account has live runners: an operator deciding about a locked account sees what
//! still runs (the runners its `account.locked` event named).

use crate::error::PageError;
use crate::fmt;
use crate::DashboardState;
use maud::{html, Markup};
use tollgate_core::ids::AccountId;
use tollgate_core::serverless::RunnerRecord;
use tollgate_core::Timestamp;

/// How many of the account's latest runners are read for the card.
pub const RUNNERS_READ: usize = 200;

/// The account's live runners at `now`, the latest reported first.
pub async fn live_runners(
    state: &DashboardState,
    account: &AccountId,
    now: Timestamp,
) -> Result<Vec<RunnerRecord>, PageError> {
    let a = account.clone();
    let runners = state
        .engine()
        .read(move |r| r.runners(&a, RUNNERS_READ))
        .await?;
    Ok(runners.into_iter().filter(|r| r.is_live(now)).collect())
}

/// The card (nothing when no runner is live).
pub fn card(runners: &[RunnerRecord]) -> Markup {
    html! {
        @if !runners.is_empty() {
            section.card #serverless aria-labelledby="serverless-title" {
                h2 #serverless-title { "Serverless" }
                p {
                    (runners.len()) " live runner" @if runners.len() != 1 { "s" }
                    ", billed per GPU-second while in a billed state."
                }
                div.table-wrap tabindex="0" {
                    table #live-runners {
                        caption { "Live runners, the latest reported first" }
                        thead { tr {
                            th scope="col" { "Runner" }
                            th scope="col" { "App" }
                            th scope="col" { "Machine" }
                            th scope="col" { "State" }
                            th scope="col" { "Since" }
                        } }
                        tbody {
                            @for r in runners {
                                tr data-runner-id=(r.id) data-state=(r.state.as_str()) {
                                    td.mono.wrap { (r.id) }
                                    td {
                                        code { (r.app) }
                                        @if let Some(e) = &r.environment { " " span.muted { "(" (e) ")" } }
                                    }
                                    td.nowrap {
                                        (r.machine_type) " × " (r.num_gpus)
                                        @if r.is_surge { " " span.badge.warn { "surge" } }
                                    }
                                    td {
                                        span.badge.(if r.state.is_billed() { "ok" } else { "muted" }) { (r.state.as_str()) }
                                    }
                                    td.nowrap { (fmt::datetime(r.state_at)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
