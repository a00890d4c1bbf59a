//! The one error type of the HTTP edge, rendered as fal's envelope:
//! `{"error": {"type", "message", ...}}`, with the fields that explain tollgate's own errors.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use tollgate_core::machine::{LockReason, Rejection};
use tollgate_core::price::RateError;
use tollgate_engine::EngineError;
use tollgate_query::timeframe::RangeError;
use tollgate_query::QueryError;
use tollgate_store::StoreError;
use utoipa::ToSchema;

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// Extra fields inside the error object (e.g. `available_nano_usd`).
    pub extra: Map<String, Value>,
    pub retry: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            extra: Map::new(),
            retry: false,
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_error", message)
    }
    /// A refused parameter or field, named in `error.field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(message).with("field", field.into())
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authorization_error", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "authorization_error", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    /// A body over the call's limit of `limit` bytes, named in `error.limit_bytes`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than this call's limit of {limit} bytes"),
        )
        .with("limit_bytes", limit)
    }
    /// An error of `status` with the type fal gives it (a 413 is `payload_too_large`).
    pub fn of_status(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 | 403 => "authorization_error",
            404 => "not_found",
            413 => "payload_too_large",
            429 => "rate_limited",
            500.. => "server_error",
            _ => "validation_error",
        };
        Self::new(status, kind, message)
    }
    /// A call that the server stopped waiting for after `limit_s` seconds (`request_timeout_s`):
    /// 408 while its body was still arriving; 503 once it was being handled, when it may have
    /// been applied, so a repeat with the same id is safe.
    pub fn request_timeout(body_received: bool, limit_s: u64) -> Self {
        if body_received {
            let mut e = Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "the call was not answered within {limit_s} s; it may have been applied: \
                     repeat it with the same id"
                ),
            );
            e.retry = true;
            e
        } else {
            Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body was not received within {limit_s} s"),
            )
        }
    }
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
    /// The `error` object: type, message and the extra fields.
    pub fn object(&self) -> ErrorObject<'_> {
        ErrorObject {
            kind: self.kind,
            message: &self.message,
            extra: &self.extra,
        }
    }
}

/// fal's envelope: `{"error": {...}}`.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub error: ErrorObject<'a>,
}

/// The `error` object as it goes out: [`ErrorDetail`] documents it.
#[derive(Serialize)]
pub struct ErrorObject<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

/// An error inside another answer (a usage event's result) is its `error` object.
impl Serialize for ApiError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.object().serialize(s)
    }
}

/// The answer carries the error itself too (in its extensions), so that the call's request id
/// can be added to the envelope where it is known ([`crate::observe`]).
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = Envelope {
            error: self.object(),
        };
        let mut resp = (self.status, axum::Json(envelope)).into_response();
        if self.retry {
            resp.headers_mut()
                .insert("x-fal-needs-retry", HeaderValue::from_static("1"));
        }
        resp.extensions_mut().insert(self);
        resp
    }
}

/// An error with its causes, `outer: inner: ...` (a cause whose text its outer error already
/// shows is not repeated).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(input) => {
                let mut e = ApiError::validation(input.message);
                if let Some(f) = input.field {
                    e = e.with("field", f);
                }
                if let Some(l) = input.line {
                    e = e.with("line", l);
                }
                e
            }
            EngineError::Store(StoreError::NotFound(what)) => {
                ApiError::not_found(format!("{what} not found"))
            }
            EngineError::Store(StoreError::AlreadyExists(what)) => {
                ApiError::conflict(format!("{what} already exists"))
            }
            EngineError::WrongState(message) => ApiError::conflict(message),
            other => {
                tracing::error!(error = %chain(&other), "the engine failed; answered 500");
                ApiError::server("the operation could not be committed; it is safe to retry")
            }
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let message = e.to_string();
        match e {
            QueryError::Engine(e) => e.into(),
            QueryError::UnknownAccount(_) => ApiError::not_found(message),
            QueryError::UnknownEndpoints(_) | QueryError::NoPrice(_) => {
                ApiError::not_found(message).with("field", "endpoint_id")
            }
            QueryError::BadCursor => ApiError::invalid("cursor", message),
            QueryError::Invalid(e) => e.into(),
            QueryError::Overflow(_) => ApiError::validation(message),
            QueryError::OutOfRange(_) => {
                tracing::error!(error = %message, "stored totals out of range");
                ApiError::server(message)
            }
        }
    }
}

impl From<RangeError> for ApiError {
    fn from(e: RangeError) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let msg = r.to_string();
        match r {
            Rejection::UnknownRequest(_)
            | Rejection::UnknownEndpoint(_)
            | Rejection::UnknownAccount(_) => ApiError::not_found(msg),
            Rejection::NoPrice(_) => ApiError::not_found(msg),
            Rejection::Invalid { field, .. }
            | Rejection::InvalidUsage(RateError::Invalid { field, .. }) => {
                ApiError::invalid(field, msg)
            }
            Rejection::BadStatus(_) => ApiError::invalid("status_code", msg),
            Rejection::UnknownMachine(_) => ApiError::invalid("machine_type", msg),
            Rejection::InvalidUsage(_) | Rejection::Money(_) => ApiError::validation(msg),
            Rejection::InvalidRunnerEvent { index, event_id, .. } => ApiError::validation(msg)
                .with("index", index)
                .with("event_id", event_id),
            Rejection::AccountLocked {
                balance, reason, ..
            } => ApiError::new(
                StatusCode::FORBIDDEN,
                "account_locked",
                match reason {
                    LockReason::ExhaustedBalance => format!("User is locked. Reason: Exhausted balance. Top up your balance to continue. ({msg})"),
                    LockReason::PaymentDisputed => format!("User is locked. Reason: Payment disputed. Contact support to continue. ({msg})"),
                },
            )
            .with("balance_nano_usd", balance.0)
            .with("lock_reason", reason.as_str()),
            Rejection::ConcurrencyLimit { limit, in_progress } => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "concurrent_requests_limit",
                    msg,
                )
                .with("limit", limit)
                .with("in_progress", in_progress);
                e.retry = true;
                e
            }
            Rejection::InsufficientCredits {
                available,
                required,
            } => ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_credits", msg)
                .with("available_nano_usd", available.0)
                .with("required_nano_usd", required.0),
            Rejection::SpendingLimitExceeded {
                limit_id,
                amount,
                spent,
                held,
                required,
                resets_at,
                ..
            } => ApiError::new(StatusCode::FORBIDDEN, "spending_limit_exceeded", msg)
                .with("limit_id", limit_id.as_str())
                .with("resets_at", tollgate_core::time::rfc3339(resets_at))
                .with("amount_nano_usd", amount.0)
                .with("spent_nano_usd", spent.0)
                .with("held_nano_usd", held.0)
                .with("required_nano_usd", required.0),
            Rejection::WrongState { .. } | Rejection::Conflict(_) | Rejection::Leased { .. } => {
                ApiError::conflict(msg)
            }
            Rejection::PaymentMethodRequired(_) => {
                ApiError::new(StatusCode::CONFLICT, "payment_method_required", msg)
            }
            Rejection::NotRefundable { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_refundable", msg)
            }
            Rejection::RequestExpired(_) => {
                ApiError::new(StatusCode::CONFLICT, "request_expired", msg)
            }
            Rejection::OutputMismatch { unit, mismatch } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "output_mismatch",
                msg,
            )
            .with("field", mismatch.missing)
            .with("unexpected", mismatch.unexpected)
            .with("unit", unit),
        }
    }
}

/// Gives every error of the API the same envelope, including those axum answers by itself (405 for a
/// method a path does not have, 413 for an oversized body, 400 for an undecodable path).
pub async fn envelope(resp: Response) -> Response {
    let status = resp.status();
    // JSON is the API's own; an HTML page is the dashboard's, which explains itself.
    let is_own = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
        });
    if is_own || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = ApiError::of_status(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The envelope's schema, as the document describes it.

/// fal's error envelope, extended with fields that explain tollgate's own errors.
#[derive(ToSchema)]
#[schema(as = ErrorResponse)]
#[allow(dead_code)]
pub struct ErrorResponse {
    error: ErrorDetail,
}

/// The error's category: fal's (`authorization_error`, `validation_error`, `not_found`,
/// `rate_limited`, `server_error`, `not_implemented`) and tollgate's own.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ErrorType {
    AuthorizationError,
    ValidationError,
    NotFound,
    RateLimited,
    ServerError,
    NotImplemented,
    Conflict,
    AccountLocked,
    InsufficientCredits,
    ConcurrentRequestsLimit,
    SpendingLimitExceeded,
    PayloadTooLarge,
    RequestTimeout,
    /// `PUT /v1/account/auto-top-up` without a card saved for off-session charges.
    PaymentMethodRequired,
    /// An operator refund of free credits, or beyond what the purchase allows.
    NotRefundable,
    /// A payment call on a server without a payment provider.
    PaymentsNotConfigured,
    /// The payment provider refused a call or did not answer.
    PaymentProviderError,
}

/// Error details.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    #[schema(inline)]
    r#type: ErrorType,
    /// Human-readable error message.
    message: String,
    /// Link to relevant documentation.
    docs_url: Option<String>,
    /// The call's request id, as in its `x-request-id` header (the caller's, or a new one):
    /// quote it when reporting a problem; the server's log line of the call carries it.
    request_id: Option<String>,
    /// `validation_error`: the offending field or parameter, as a path into the request body
    /// (`output.images[0].width`, `amount_usd`), the name of a path or query parameter, or,
    /// for a catalog, a path into the document (`endpoint[3].price.unit_price`; empty for a
    /// pure TOML syntax error).
    field: Option<String>,
    /// `validation_error` of `PUT /v1/admin/catalog`: the line of the catalog document at
    /// fault.
    #[schema(minimum = 1)]
    line: Option<u64>,
    /// `validation_error` of `POST /v1/usage-events`: the position of the event at fault in
    /// `events`.
    #[schema(minimum = 0)]
    index: Option<u64>,
    /// `insufficient_credits`: what the account can still hold, nano-USD.
    available_nano_usd: Option<i64>,
    /// `insufficient_credits`, `spending_limit_exceeded`: the hold the request needs, nano-USD.
    required_nano_usd: Option<i64>,
    /// `concurrent_requests_limit`: the account's limit of requests in progress.
    #[schema(minimum = 0)]
    limit: Option<u32>,
    /// `concurrent_requests_limit`: the account's requests in progress.
    #[schema(minimum = 0)]
    in_progress: Option<u32>,
    /// `spending_limit_exceeded`: the spending limit that refused the start.
    limit_id: Option<String>,
    /// `spending_limit_exceeded`: when the limit's period ends and it admits again (RFC 3339).
    resets_at: Option<String>,
    /// `spending_limit_exceeded`: the limit's amount, nano-USD.
    amount_nano_usd: Option<i64>,
    /// `spending_limit_exceeded`: the charges recorded in the limit's period, nano-USD.
    spent_nano_usd: Option<i64>,
    /// `spending_limit_exceeded`: the holds of the running requests the limit counts, nano-USD.
    held_nano_usd: Option<i64>,
    /// `account_locked`: the account's balance, nano-USD.
    balance_nano_usd: Option<i64>,
    /// `payload_too_large`: the call's body limit, in bytes.
    #[schema(minimum = 0)]
    limit_bytes: Option<u64>,
}
