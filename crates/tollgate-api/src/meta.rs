//! Operating the server: liveness (`GET /healthz`), readiness (`GET /readyz`) and the metrics
//! (`GET /metrics`, Prometheus text format). No key: probes and scrapers call them without
//! one, as on an internal port; none of them shows an account, a key or an amount of one
//! account. They take any query string (probes and scrapers may add their own).

use crate::openapi::tags;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// How long `GET /readyz` waits for the writer and the database.
pub const READY_WITHIN: Duration = Duration::from_secs(5);

/// The process answers.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness
///
/// The process answers HTTP. Nothing else is checked (see `GET /readyz`). No key.
#[utoipa::path(
    get, path = "/healthz", tag = tags::META, operation_id = "getHealth",
    security(()),
    responses((status = 200, description = "The process answers.", body = Health))
)]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Whether the server can serve, check by check.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready`, or `unavailable` when a check failed.
    #[schema(example = "ready")]
    pub status: &'static str,
    pub checks: ReadyChecks,
}

/// Each check: `ok`, or why it failed.
#[derive(Serialize, ToSchema)]
pub struct ReadyChecks {
    /// The writer thread took a no-op job from its queue and answered within 5 s.
    #[schema(example = "ok")]
    pub writer: String,
    /// The database answered a read.
    #[schema(example = "ok")]
    pub database: String,
    /// The database's schema has every migration this server knows, and no newer one.
    #[schema(example = "ok")]
    pub migrations: String,
    /// No disk sync of the embedded database failed (after one, writes are refused until
    /// restart).
    #[schema(example = "ok")]
    pub disk_sync: String,
}

/// Readiness
///
/// Whether the server can take calls: the writer thread answers a no-op job (within 5 s),
/// the database answers a read, migrations are done, and no disk sync failed. 503 names the
/// check that failed. Probes share one check: those that arrive while it runs wait for its
/// answer, and an answer is reused for 1 s (a failed disk sync shows at once). No key.
#[utoipa::path(
    get, path = "/readyz", tag = tags::META, operation_id = "getReadiness",
    security(()),
    responses(
        (status = 200, description = "Every check passed.", body = Ready),
        (status = 503, description = "A check failed; its field says why.", body = Ready),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Ready>) {
    let r = state.engine.readiness(READY_WITHIN).await;
    let ready = r.is_ready();
    let show = |check: Result<(), String>| check.err().unwrap_or_else(|| "ok".to_string());
    if !ready {
        tracing::warn!(?r, "not ready");
    }
    let answer = Ready {
        status: if ready { "ready" } else { "unavailable" },
        checks: ReadyChecks {
            writer: show(r.writer),
            database: show(r.database),
            migrations: show(r.migrations),
            disk_sync: show(r.disk_sync),
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(answer))
}

/// Metrics
///
/// The server's metrics in Prometheus' text format (0.0.4), for a scraper; no key. HTTP calls
/// by route template and status, with latency histograms
/// (`tollgate_http_requests_total{route,status}`,
/// `tollgate_http_request_duration_seconds{route}`); admission decisions
/// (`tollgate_admission_total{outcome}`: `admitted`, `insufficient_credits`,
/// `concurrency_limit`, `locked`, `spending_limit`); what was billed (`tollgate_billed_units_total{endpoint,unit}`,
/// `tollgate_billed_nano_usd_total{endpoint}`); the write path (`tollgate_batch_size`,
/// `tollgate_commit_duration_seconds`, `tollgate_sync_duration_seconds`,
/// `tollgate_queue_depth`, `tollgate_failed_batches_total`); `tollgate_hold_expiries_total`;
/// `tollgate_store_conflicts_total` and `tollgate_store_retries_total`. Counters start at zero
/// when the server starts.
#[utoipa::path(
    get, path = "/metrics", tag = tags::META, operation_id = "getMetrics",
    security(()),
    responses((status = 200, description = "The metrics.",
        content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, tollgate_engine::metrics::CONTENT_TYPE)],
        state.engine.metrics().render(),
    )
}
