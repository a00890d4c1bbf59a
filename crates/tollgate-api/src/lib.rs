//! tollgate's HTTP edge: the operator API (accounts, credits, keys, catalog), the gateway API
//! (the life of one request, bulk usage events), the customer API, and the OpenAPI document.
//!
//! Architecture invariant: handlers parse into domain types, call the engine or a read, and
//! render; JSON types live only here, and no billing rule does.

pub mod admin;
pub mod auth;
pub mod customer;
pub mod error;
pub mod gateway;
pub mod money;
pub mod openapi;
pub mod platform;

use axum::routing::{get, post, put};
use axum::Router;
use std::time::Duration;
use tollgate_engine::Engine;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
}

/// The whole API under `/v1`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/admin/accounts", post(admin::create_account))
        .route("/v1/admin/accounts/{username}", get(admin::show_account))
        .route(
            "/v1/admin/accounts/{username}/purchases",
            post(admin::purchase),
        )
        .route(
            "/v1/admin/accounts/{username}/keys",
            post(admin::create_key),
        )
        .route(
            "/v1/admin/accounts/{username}/pricing",
            put(admin::set_pricing),
        )
        .route("/v1/admin/catalog", put(admin::apply_catalog))
        .route("/v1/admin/reconciliation", get(admin::reconciliation))
        .route("/v1/requests", post(gateway::submit))
        .route("/v1/requests/{request_id}", get(gateway::show))
        .route("/v1/requests/{request_id}/start", post(gateway::start))
        .route(
            "/v1/requests/{request_id}/complete",
            post(gateway::complete),
        )
        .route("/v1/requests/{request_id}/cancel", post(gateway::cancel))
        .route("/v1/usage-events", post(gateway::usage_events))
        .route(
            "/v1/keys",
            get(platform::keys::list).post(platform::keys::create),
        )
        .route(
            "/v1/keys/{key_id}",
            axum::routing::delete(platform::keys::revoke),
        )
        .route("/v1/models", get(platform::models::list))
        .route("/v1/models/pricing", get(platform::models::pricing))
        .route(
            "/v1/models/pricing/estimate",
            post(platform::models::estimate),
        )
        .route("/v1/account/billing", get(customer::billing))
        .route("/v1/models/usage", get(platform::usage::usage))
        .route(
            "/v1/models/billing-events",
            get(platform::usage::billing_events),
        )
        .route("/v1/models/analytics", get(platform::analytics::analytics))
        .fallback(|| async { error::ApiError::not_found("no such path; see GET /v1/openapi.json") })
        .layer(axum::middleware::map_response(error::envelope))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state(state)
}

/// Voids expired holds every `every` until the engine stops.
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
