//! The billing dashboard a platform hands to its customers (`/dashboard`) and the console its
//! own staff use (`/console`), served by the same binary as the API (API.md section 5).
//!
//! Pages are HTML rendered on the server from compiled templates ([`maud`]) over the same
//! queries and engine calls the API handlers make, so every number is the API's. Forms post
//! back to the server and work without JavaScript; two small vendored scripts (htmx for
//! in-page updates, uPlot for charts) and the dashboard's own script are embedded in the binary
//! ([`assets`]). Charts are drawn from the table beside them, which is what a browser without
//! JavaScript shows.
//!
//! Architecture invariant: a page never computes a billed amount; it shows what a query or
//! the engine answered. Every response carries a Content-Security-Policy without
//! `unsafe-inline` ([`security_headers`]), every form a CSRF token ([`session::Post`]), and
//! everything a customer typed is escaped by the templates.

pub mod assets;
pub mod console;
pub mod customer;
pub mod demo;
pub mod error;
pub mod fmt;
pub mod layout;
pub mod session;

use axum::http::{header, HeaderValue};
use axum::response::Response;
use std::sync::Arc;
use tollgate_api::AppState;

/// What every page handler gets: the API's state (the engine) and the dashboard's settings.
#[derive(Clone)]
pub struct DashboardState {
    pub api: AppState,
    pub config: Arc<DashboardConfig>,
    /// The last reconciliation of the ledger the console ran on this server, and when: a check
    /// reads the whole ledger (seconds on a large one), so it runs when staff ask for it and
    /// the page shows its result.
    pub last_reconciliation: Arc<std::sync::Mutex<Option<console::reconciliation::Checked>>>,
}

impl DashboardState {
    pub fn new(api: AppState, config: DashboardConfig) -> DashboardState {
        DashboardState {
            api,
            config: Arc::new(config),
            last_reconciliation: Arc::default(),
        }
    }

    pub fn engine(&self) -> &tollgate_engine::Engine {
        &self.api.engine
    }
}

/// The dashboard's settings.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// The URL customers reach tollgate at (`public_url`, without a trailing `/`), if the
    /// operator set one: links handed on are built on it, and an https one makes session
    /// cookies `Secure`.
    pub public_url: Option<String>,
    /// How long a signed-in session lasts.
    pub session_ttl_ms: i64,
}

impl DashboardConfig {
    /// Session cookies are `Secure` (sent over https only) when the public URL is https.
    pub fn secure_cookies(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            public_url: None,
            session_ttl_ms: DEFAULT_SESSION_TTL_MS,
        }
    }
}

/// Twelve hours: a working day signed in.
pub const DEFAULT_SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;

/// The dashboard's and the console's pages, with their state; merged into the API's router
/// ([`tollgate_api::router_with`]) so every call is observed the same way.
pub fn router(state: DashboardState) -> axum::Router {
    axum::Router::new()
        .merge(customer::routes())
        .merge(console::routes())
        .merge(assets::routes())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// The Content-Security-Policy of every page: scripts, styles, images and calls from this
/// server only, no inline script or style, no framing, forms posted here only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers every dashboard response carries: the CSP, no sniffing, no framing, no referrer
/// (a sign-in link's token never leaves in a `Referer`), and pages never cached (they show a
/// balance and a session's CSRF token).
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
