//! The page shell (head, navigation, who is signed in, sign-out) and the small components
//! pages share. The navigation of each area is one list ([`CUSTOMER_NAV`], [`CONSOLE_NAV`]):
//! a new section is one line there and its routes.

use crate::assets;
use crate::session::Area;
use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

/// A section of an area's navigation: its label and path.
pub struct Section {
    pub label: &'static str,
    pub path: &'static str,
}

/// The customer dashboard's sections, in the navigation's order.
pub const CUSTOMER_NAV: &[Section] = &[
    Section {
        label: "Overview",
        path: "/dashboard",
    },
    Section {
        label: "Usage",
        path: "/dashboard/usage",
    },
    Section {
        label: "Serverless",
        path: "/dashboard/serverless",
    },
    Section {
        label: "Requests",
        path: "/dashboard/requests",
    },
    Section {
        label: "Billing",
        path: "/dashboard/billing",
    },
    Section {
        label: "Auto top-up",
        path: "/dashboard/auto-top-up",
    },
    Section {
        label: "Limits",
        path: "/dashboard/limits",
    },
    Section {
        label: "API keys",
        path: "/dashboard/keys",
    },
];

/// The operator console's sections.
pub const CONSOLE_NAV: &[Section] = &[
    Section {
        label: "Accounts",
        path: "/console",
    },
    Section {
        label: "Catalog",
        path: "/console/catalog",
    },
    Section {
        label: "Invoices",
        path: "/console/invoices",
    },
    Section {
        label: "Webhooks",
        path: "/console/webhooks",
    },
    Section {
        label: "Reconciliation",
        path: "/console/reconciliation",
    },
];

/// Who a page is for, and where in the navigation it is.
pub struct Chrome<'a> {
    pub area: Area,
    /// The path of the current section (one of the area's navigation paths).
    pub section: &'static str,
    /// Shown beside sign-out: the account, or "operator".
    pub who: &'a str,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: &'a str,
}

/// A rendered page as an HTML answer.
pub fn html(page: Markup) -> Html<String> {
    Html(page.into_string())
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            meta name="htmx-config"
                content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"selfRequestsOnly":true}"#;
            title { (title) " · tollgate" }
            link rel="stylesheet" href=(assets::url("uPlot.min.css"));
            link rel="stylesheet" href=(assets::url("dashboard.css"));
            script src=(assets::url("htmx.min.js")) defer {}
            script src=(assets::url("uPlot.iife.min.js")) defer {}
            script src=(assets::url("dashboard.js")) defer {}
        }
    }
}

/// A page without navigation: sign-in and error pages.
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                header.top {
                    a.brand href="/dashboard" { (brand()) }
                }
                (body)
            }
        }
    }
}

fn brand() -> Markup {
    html! { span.logo aria-hidden="true" { "◆" } " tollgate" }
}

/// A page of an area, with its navigation and sign-out.
pub fn page(chrome: &Chrome, title: &str, body: Markup) -> Markup {
    let (nav, home, area_name) = match chrome.area {
        Area::Customer => (CUSTOMER_NAV, "/dashboard", "Billing dashboard"),
        Area::Console => (CONSOLE_NAV, "/console", "Operator console"),
    };
    let logout = match chrome.area {
        Area::Customer => "/dashboard/logout",
        Area::Console => "/console/logout",
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.(match chrome.area { Area::Customer => "customer", Area::Console => "console" }) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href=(home) { (brand()) span.area { (area_name) } }
                    nav aria-label="Sections" {
                        ul {
                            @for s in nav {
                                li {
                                    @if s.path == chrome.section {
                                        a href=(s.path) aria-current="page" { (s.label) }
                                    } @else {
                                        a href=(s.path) { (s.label) }
                                    }
                                }
                            }
                        }
                    }
                    form.who method="post" action=(logout) {
                        span.account title="Signed in" { (chrome.who) }
                        input type="hidden" name="csrf" value=(chrome.csrf);
                        button.link type="submit" { "Sign out" }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A figure in a card: its label, the value, and a line under it.
pub fn stat(label: &str, value: Markup, detail: Option<Markup>) -> Markup {
    html! {
        div.stat {
            dt { (label) }
            dd {
                span.value { (value) }
                @if let Some(d) = detail { span.detail { (d) } }
            }
        }
    }
}

/// What a page shows when there is nothing yet: what it is, and what to do next.
pub fn empty(title: &str, hint: Markup) -> Markup {
    html! {
        div.empty role="status" {
            p.title { (title) }
            p { (hint) }
        }
    }
}

/// A hidden CSRF field for a form of the session.
pub fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A chart drawn by the dashboard's script from the table inside it: the table is the
/// chart's data and what a browser without JavaScript shows. `kind` is `stacked-bars`
/// (amounts: `data-value` attributes of the cells are exact USD decimals, stacked) or `lines`
/// (counts: one line per series, drawn as steps over the buckets); the table's first column is
/// the x axis (labels, `data-x` in seconds), each other column a series.
pub fn chart(id: &str, caption: &str, kind: &str, table: Markup) -> Markup {
    html! {
        figure.chart id=(id) data-chart=(kind) {
            figcaption { (caption) }
            div.plot aria-hidden="true" {}
            div.chart-table { (table) }
        }
    }
}
