//! What every call leaves behind: its request id (`x-request-id`, echoed in the error
//! envelope as `request_id`), one log line, and its count and latency in the metrics.
//!
//! The call's route is the matched route template (`/v1/requests/{request_id}/start`), never
//! the raw path, so the metrics' label sets stay bounded; a path no route matches is
//! `unmatched`. The log line names the method, route, status, latency, request id and, once a
//! key was checked, the key id and its account: never a key secret, a header value or a body.

use crate::error::{ApiError, Envelope};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tollgate_core::ids::{AccountId, ApiKeyId};
use tracing::Instrument;

/// The header that carries a call's request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// The longest request id taken from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The route label of a path no route matches.
pub const UNMATCHED: &str = "unmatched";

/// A call's request id: the caller's `x-request-id` when it is sane (1 to
/// [`MAX_REQUEST_ID_LEN`] visible ASCII characters), else a new UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallId(pub String);

impl CallId {
    /// A new request id (a UUIDv7: ids sort by time).
    pub fn fresh() -> CallId {
        CallId(uuid::Uuid::now_v7().to_string())
    }

    pub fn of(headers: &HeaderMap) -> CallId {
        let given = headers
            .get(REQUEST_ID)
            .map(HeaderValue::as_bytes)
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= MAX_REQUEST_ID_LEN
                    && v.iter().all(|b| b.is_ascii_graphic())
            });
        match given {
            // Visible ASCII only, so this is text.
            Some(v) => CallId(String::from_utf8_lossy(v).into_owned()),
            None => CallId::fresh(),
        }
    }
}

/// Who the call's key belongs to, once an extractor checked it ([`Caller::note`]).
#[derive(Clone, Debug, Default)]
pub struct Caller(Arc<OnceLock<(ApiKeyId, Option<AccountId>)>>);

impl Caller {
    /// Records the key that authenticated the call (in the call's extensions, if it is
    /// observed).
    pub fn note(
        extensions: &axum::http::Extensions,
        key_id: &ApiKeyId,
        account: Option<&AccountId>,
    ) {
        if let Some(caller) = extensions.get::<Caller>() {
            let _ = caller.0.set((key_id.clone(), account.cloned()));
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_5, 2.0, 16,
    ))
}

/// The HTTP metrics, registered once in the engine's registry.
pub struct HttpMetrics {
    requests: Family<RouteStatus, Counter>,
    duration: Family<Route, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub fn new(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "tollgate_http_requests",
            "HTTP calls answered, by route template and status",
            m.requests.clone(),
        );
        registry.register(
            "tollgate_http_request_duration_seconds",
            "Time from a call's arrival to its answer's headers, by route template",
            m.duration.clone(),
        );
        m
    }

    fn observe(&self, route: &str, status: StatusCode, seconds: f64) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.to_string(),
                status: status.as_u16(),
            })
            .inc();
        self.duration
            .get_or_create(&Route {
                route: route.to_string(),
            })
            .observe(seconds);
    }
}

/// Whether the request announced a body.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The middleware: request id in, request id out (header and error envelope), one log line,
/// the call's metrics. A call refused before its body was read (a missing or wrong key, a body
/// over the limit) closes its connection, so the rest of the body is never read.
pub async fn observe(
    State(metrics): State<Arc<HttpMetrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = CallId::of(req.headers());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_string();
    let method = req.method().clone();
    let body = has_body(req.headers());
    let caller = Caller::default();
    req.extensions_mut().insert(caller.clone());
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!(target: "tollgate::http", "call", request_id = %id.0);
    let mut resp = next.run(req).instrument(span).await;

    let status = resp.status();
    if let Some(error) = resp.extensions_mut().remove::<ApiError>() {
        resp = with_request_id(resp, error, &id);
    }
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if body
        && matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::PAYLOAD_TOO_LARGE
        )
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let took = started.elapsed();
    metrics.observe(&route, status, took.as_secs_f64());
    let (key_id, account) = match caller.0.get() {
        Some((key, account)) => (Some(key.as_str()), account.as_ref().map(AccountId::as_str)),
        None => (None, None),
    };
    tracing::info!(
        target: "tollgate::http",
        method = %method,
        route = %route,
        status = status.as_u16(),
        latency_us = took.as_micros() as u64,
        request_id = %id.0,
        key_id,
        account,
        "call"
    );
    resp
}

/// The error's envelope again, with the call's request id in it.
fn with_request_id(resp: Response, error: ApiError, id: &CallId) -> Response {
    let error = error.with("request_id", id.0.clone());
    let (mut parts, _) = resp.into_parts();
    let body = serde_json::to_vec(&Envelope {
        error: error.object(),
    })
    .expect("an envelope serializes");
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}
