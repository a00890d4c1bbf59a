//! The catalog, `GET /console/catalog`: every endpoint with its unit and the public price in
//! force, each endpoint's price versions with the dates they take effect (public and
//! account-specific), the machine prices, the concurrency tier table, and the date the prices
//! were read on: the engine's catalog snapshot, which every request is priced from.

use super::{chrome, respond};
use crate::error::PageError;
use crate::layout::{self, empty};
use crate::session::ConsoleSession;
use crate::{fmt, DashboardState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use maud::{html, Markup};
use rust_decimal::Decimal;
use tollgate_core::catalog::{Catalog, EndpointStatus};
use tollgate_core::ids::EndpointId;
use tollgate_core::price::PriceRule;
use tollgate_core::Nanos;

pub fn routes() -> axum::Router<DashboardState> {
    axum::Router::new().route("/console/catalog", get(page))
}

/// A price's headline USD per unit as the pricing API shows it (for a machine-priced rule,
/// the machine's price), before any discount.
fn price_amount(catalog: &Catalog, endpoint: &EndpointId, rule: &PriceRule) -> Markup {
    let machine = catalog
        .endpoints
        .get(endpoint)
        .and_then(|d| catalog.machine_price(d.machine_type.as_ref()));
    html! {
        @match rule.headline_unit_price(machine) {
            Some(p) => (fmt::usd_exact(p)),
            None => span.muted { "by its rule" },
        }
    }
}

/// A price with its unit: `$0.025 / megapixel`.
pub fn price_text(catalog: &Catalog, endpoint: &EndpointId, rule: &PriceRule) -> Markup {
    html! { (price_amount(catalog, endpoint, rule)) span.muted { " / " (rule.unit_label()) } }
}

/// A machine's price per hour: per second times 3,600, exactly; a price too large for that
/// (no real one is) shows per second instead, never a wrong figure.
fn per_hour(per_second: Decimal) -> Markup {
    match per_second.checked_mul(Decimal::from(3600)) {
        Some(h) => html! { (fmt::usd_exact(h)) },
        None => html! { (fmt::usd_exact(per_second)) span.muted { " / second" } },
    }
}

async fn page(
    State(state): State<DashboardState>,
    who: ConsoleSession,
) -> Result<Response, PageError> {
    let engine = state.engine();
    let catalog = engine.catalog();
    let now = engine.now();
    let read_on = tollgate_query::catalog::prices_read_on(engine).await?;
    let body = html! {
        p.lead {
            "What every request is priced from, as of " (fmt::datetime(now)) "."
            @if let Some(d) = &read_on { " Prices read on " strong #read-on { (d) } "." }
        }
        @if catalog.endpoints.is_empty() {
            (empty("No catalog yet", html! {
                "Apply one with " code { "tollgate catalog apply catalog/sample.toml" }
                " or " code { "PUT /v1/admin/catalog" } "; its endpoints and prices show here."
            }))
        } @else {
            nav.toc aria-label="On this page" {
                ul {
                    li { a href="#endpoints" { "Endpoints (" (catalog.endpoints.len()) ")" } }
                    li { a href="#machines" { "Machine prices" } }
                    li { a href="#concurrency" { "Concurrency tiers" } }
                }
            }
            h2 #endpoints { "Endpoints" }
            div.table-wrap tabindex="0" {
                table #catalog-endpoints {
                    caption { "USD per unit: the public price in force now, before account discounts, and every price version, oldest first" }
                    thead { tr {
                        th scope="col" { "Endpoint" }
                        th scope="col" { "Unit" }
                        th.num scope="col" { "Price now" }
                        th scope="col" { "Price versions" }
                    } }
                    tbody {
                        @for (id, def) in &catalog.endpoints {
                            @let current = catalog.public_price_at(id, now);
                            @let unit = current.or(catalog.latest(id, None)).map(|v| v.rule.unit_label()).unwrap_or_default();
                            tr {
                                th scope="row" {
                                    code { (id) }
                                    br;
                                    span.muted { (def.display_name) " · " (def.category) }
                                    @if def.status == EndpointStatus::Deprecated { " " span.badge.warn { "deprecated" } }
                                    @if def.partner { " " span.badge { "partner" } }
                                }
                                td { (unit) }
                                td.num {
                                    @match current {
                                        Some(v) => (price_amount(&catalog, id, &v.rule)),
                                        None => span.muted { "not yet in force" },
                                    }
                                }
                                td {
                                    ul.versions {
                                        @for ((_, account), versions) in catalog.versions.range((id.clone(), None)..).take_while(|((e, _), _)| e == id) {
                                            @for v in versions {
                                                li {
                                                    @match account {
                                                        Some(a) => { a href={ "/console/accounts/" (a) } { (a) } ": " },
                                                        None => { "public: " },
                                                    }
                                                    (price_amount(&catalog, id, &v.rule))
                                                    @if v.rule.unit_label() != unit { span.muted { " / " (v.rule.unit_label()) } }
                                                    " from " (fmt::datetime(v.effective_from))
                                                    @if v.effective_from > now { " " span.badge.warn { "scheduled" } }
                                                    @else if account.is_none() && current.is_some_and(|c| c.id == v.id) { " " span.badge.ok { "in force" } }
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
            h2 #machines { "Machine prices" }
            @if catalog.machines.is_empty() {
                (empty("No machine types", html! { "Add a " code { "[machines]" } " table to the catalog document to price GPU-seconds." }))
            } @else {
                div.table-wrap tabindex="0" {
                    table #catalog-machines {
                        caption { "Per second of one machine (per GPU for GPU types); accounts may have their own" }
                        thead { tr {
                            th scope="col" { "Machine type" }
                            th.num scope="col" { "USD per second" }
                            th.num scope="col" { "USD per hour" }
                        } }
                        tbody {
                            @for (m, p) in &catalog.machines {
                                tr {
                                    th scope="row" { code { (m) } }
                                    td.num { (fmt::usd_exact(*p)) }
                                    td.num { (per_hour(*p)) }
                                }
                            }
                        }
                    }
                }
            }
            h2 #concurrency { "Concurrency tiers" }
            div.table-wrap tabindex="0" {
                table #catalog-concurrency {
                    caption { "Requests at once, by paid purchases in the trailing 28 days (unless a contract sets a limit)" }
                    thead { tr {
                        th.num scope="col" { "Paid in 28 days, from" }
                        th.num scope="col" { "Limit" }
                    } }
                    tbody {
                        @for t in catalog.concurrency.rows() {
                            tr {
                                td.num {
                                    @match Nanos::from_usd_exact(t.paid_28d_usd) {
                                        Ok(n) => (fmt::usd(n)),
                                        Err(_) => (fmt::usd_exact(t.paid_28d_usd)),
                                    }
                                }
                                td.num { (t.limit) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        layout::page(&chrome(&who, "/console/catalog"), "Catalog", body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_price_per_hour_is_exact_or_shown_per_second() {
        assert_eq!(
            per_hour(Decimal::new(125, 5)).into_string(),
            "$4.50",
            "0.00125 USD per second"
        );
        let huge = Decimal::MAX / Decimal::from(2);
        assert_eq!(
            per_hour(huge).into_string(),
            format!(
                "{}<span class=\"muted\"> / second</span>",
                fmt::usd_exact(huge)
            )
        );
    }
}
