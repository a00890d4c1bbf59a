//! tollgate's HTTP edge: the operator API (accounts, credits, keys, terms, catalog), the
//! gateway API (the life of one request, bulk usage events), fal's Platform API for customers,
//! and the OpenAPI document generated from them.
//!
//! Architecture invariant: handlers parse into domain types (in extractors: [`extract`]),
//! call the engine or a read (`tollgate-query`), and render typed answers; JSON types live
//! only here, and no billing rule does. Every route is registered with its documentation
//! ([`routes`]), so what is served and what is documented are one list.

pub mod admin;
pub mod admin_accounts;
pub mod admin_keys;
pub mod auth;
pub mod error;
pub mod extract;
pub mod focus;
pub mod gateway;
pub mod invoices;
pub mod json;
pub mod limits;
pub mod meta;
pub mod observe;
pub mod openapi;
pub mod payments;
pub mod platform;
pub mod portal;
pub mod query_string;
pub mod serverless;
pub mod statements;
#[cfg(feature = "testing")]
pub mod testing;
pub mod webhooks;
pub mod wire;

use extract::body_limit;
use openapi::ApiDoc;
use std::sync::Arc;
use std::time::Duration;
use tollgate_engine::Engine;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use webhooks::deliver::{spawn_dispatcher, spawn_webhook_dispatcher};

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// The `[webhooks]` settings (the hosts a webhook URL may name; how deliveries are sent).
    pub webhooks: Arc<webhooks::WebhookSettings>,
    /// The payment provider (`[stripe]`, `[top_ups]`); `None`: payments are off, and their
    /// calls answer 503 `payments_not_configured`.
    pub payments: Option<Arc<payments::Payments>>,
}

impl AppState {
    /// The state of a server on `engine` with the default settings.
    pub fn new(engine: Engine) -> AppState {
        AppState {
            engine,
            webhooks: Arc::default(),
            payments: None,
        }
    }
}

/// The largest request body a call takes, unless its route says otherwise.
pub const DEFAULT_BODY_BYTES: usize = 1024 * 1024;
/// The largest body of `POST /v1/usage-events` and `POST /v1/runners/events` (a bulk call
/// of 10,000 events fits).
pub const BULK_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The largest catalog document `PUT /v1/admin/catalog` takes.
pub const CATALOG_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Every route with its documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi::serve))
        .routes(routes!(meta::healthz))
        .routes(routes!(meta::readyz))
        .routes(routes!(meta::metrics))
        // Operator
        .routes(routes!(
            admin::create_account,
            admin_accounts::list_accounts
        ))
        .routes(routes!(admin::show_account))
        .routes(routes!(admin::purchase))
        .routes(routes!(admin::create_key, admin_keys::account_keys))
        .routes(routes!(
            admin_keys::operator_keys,
            admin_keys::create_operator_key
        ))
        .routes(routes!(admin_keys::revoke_key))
        .routes(routes!(admin::set_pricing))
        .routes(routes!(admin::adjust))
        .routes(routes!(admin::unlock))
        .routes(routes!(limits::create_for, limits::list_for))
        .routes(routes!(limits::change_for, limits::delete_for))
        .routes(routes!(portal::create, portal::end))
        .routes(routes!(admin::apply_catalog).layer(body_limit(CATALOG_BODY_BYTES)))
        .routes(routes!(admin::reconciliation))
        .routes(routes!(invoices::admin_invoices))
        .routes(routes!(invoices::close_periods))
        .routes(routes!(invoices::pay_invoice))
        .routes(routes!(invoices::void_invoice))
        .routes(routes!(invoices::set_issuer))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::show, webhooks::delete))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::delivery))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(payments::refunds::refund_purchase))
        // Gateway
        .routes(routes!(gateway::submit))
        .routes(routes!(gateway::show))
        .routes(routes!(gateway::start))
        .routes(routes!(gateway::complete))
        .routes(routes!(gateway::cancel))
        .routes(routes!(gateway::billable_units))
        .routes(routes!(gateway::usage_events).layer(body_limit(BULK_BODY_BYTES)))
        .routes(routes!(serverless::runner_events).layer(body_limit(BULK_BODY_BYTES)))
        // fal's Platform API
        .routes(routes!(platform::keys::list, platform::keys::create))
        .routes(routes!(platform::keys::revoke))
        .routes(routes!(platform::models::list))
        .routes(routes!(platform::models::pricing))
        .routes(routes!(platform::models::estimate))
        .routes(routes!(platform::account::billing))
        .routes(routes!(platform::usage::usage))
        .routes(routes!(platform::usage::billing_events))
        .routes(routes!(platform::requests::by_endpoint))
        .routes(routes!(platform::analytics::analytics))
        .routes(routes!(platform::serverless::usage))
        .routes(routes!(platform::serverless::runner_history))
        // Invoices (customer reads)
        .routes(routes!(invoices::account_invoices))
        .routes(routes!(invoices::account_invoice))
        .routes(routes!(invoices::account_invoice_pdf))
        // Payments: history, top-ups, the auto top-up rule, the provider's events
        .routes(routes!(payments::history::account_payments))
        .routes(routes!(payments::top_ups::create_own))
        .routes(routes!(payments::top_ups::show_own))
        .routes(routes!(
            payments::auto_top_up::set_own,
            payments::auto_top_up::show_own
        ))
        .routes(routes!(payments::webhook::receive))
        // Credit activity and statements (customer reads)
        .routes(routes!(statements::credit_activity))
        .routes(routes!(statements::statement))
        // FOCUS billing reports (customer reads)
        .routes(routes!(focus::focus))
        // Spending limits (customer, ADMIN key)
        .routes(routes!(limits::create_own, limits::list_own))
        .routes(routes!(limits::change_own, limits::delete_own))
}

/// The whole API under `/v1`, and the operator's `/healthz`, `/readyz` and `/metrics`. Every
/// call is observed ([`observe`]: request id, log line, metrics in the engine's registry).
pub fn router(state: AppState) -> axum::Router {
    router_with(state, axum::Router::new())
}

/// The API and other routes served beside it (the dashboard's pages), observed and limited the
/// same way; a path neither has is the API's 404.
pub fn router_with(state: AppState, pages: axum::Router) -> axum::Router {
    let (router, _) = routes().split_for_parts();
    let http = state
        .engine
        .metrics()
        .register_once(observe::HttpMetrics::new);
    router
        .with_state(state)
        .merge(pages)
        .fallback(|| async { error::ApiError::not_found("no such path; see GET /v1/openapi.json") })
        .layer(body_limit(DEFAULT_BODY_BYTES))
        .layer(axum::middleware::map_response(error::envelope))
        .layer(axum::middleware::from_fn_with_state(http, observe::observe))
}

/// Closes the usage billing periods of past months: at once (catching up on months missed
/// while the server was down), then whenever the engine's clock has entered a new calendar
/// month (UTC), looked at every `every`, until the engine stops. A failed close is tried again
/// at the next look. (A period is closed at its month's end whenever this runs: the first
/// batch that touches an account in a later month closes its period too.)
pub fn spawn_month_close(engine: Engine, every: Duration) -> tokio::task::JoinHandle<()> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: the catch-up at startup.
    let looks = futures_util::stream::unfold(tick, |mut tick| async move {
        tick.tick().await;
        Some(((), tick))
    });
    spawn_month_close_on(engine, looks)
}

/// The month's close of [`spawn_month_close`], looking each time `looks` yields (the server's
/// timer, or whatever else paces it) until `looks` ends or the engine stops. A look closes the
/// periods of past months unless it already did so in the current month (by the engine's
/// clock). The next look is awaited only once the last one is over.
pub fn spawn_month_close_on<S>(engine: Engine, looks: S) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Stream<Item = ()> + Send + 'static,
{
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let mut looks = std::pin::pin!(looks);
        let mut closed_for = None;
        while looks.next().await.is_some() {
            let month = tollgate_core::time::month_start(engine.now());
            if closed_for == Some(month) {
                continue;
            }
            match engine.close_elapsed_months().await {
                Ok(issued) => {
                    if !issued.is_empty() {
                        tracing::info!(
                            issued = issued.len(),
                            "closed the usage billing periods of past months"
                        );
                    }
                    closed_for = Some(month);
                }
                Err(tollgate_engine::EngineError::Stopped) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "closing past billing periods failed; will retry")
                }
            }
        }
    })
}

/// Sweeps every `every` until the engine stops: voids expired holds, expires credits and
/// settles the serverless runners due ([`Engine::sweep_expired`], which sweeps again at once
/// while it finds a full page, so thousands of runners are settled each minute).
pub fn spawn_sweeper(engine: Engine, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match engine.sweep_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "voided expired holds"),
                Err(tollgate_engine::EngineError::Stopped) => return,
                Err(e) => tracing::warn!(error = %e, "hold expiry sweep failed; will retry"),
            }
        }
    })
}
