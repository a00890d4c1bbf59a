//! The one error type of the HTTP edge, rendered as fal's envelope:
//! `{"error": {"type", "message", "request_id"?, ...}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use tollgate_core::machine::Rejection;
use tollgate_core::price::RateError;
use tollgate_engine::EngineError;

#[derive(Debug)]
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
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
    /// The `error` object: type, message and the extra fields.
    pub fn object(&self) -> Value {
        let mut err = Map::new();
        err.insert("type".into(), json!(self.kind));
        err.insert("message".into(), json!(self.message));
        err.extend(self.extra.clone());
        Value::Object(err)
    }

    /// The whole body: fal's envelope around [`ApiError::object`].
    pub fn body(&self) -> Value {
        json!({ "error": self.object() })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.retry {
            resp.headers_mut()
                .insert("x-fal-needs-retry", HeaderValue::from_static("1"));
        }
        resp
    }
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
            other => {
                tracing::error!(error = %other, "engine error");
                ApiError::server("the operation could not be committed; it is safe to retry")
            }
        }
    }
}

impl From<tollgate_store::StoreError> for ApiError {
    fn from(e: tollgate_store::StoreError) -> Self {
        ApiError::from(EngineError::Store(e))
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
                ApiError::validation(msg).with("field", field)
            }
            Rejection::UnknownMachine(_)
            | Rejection::InvalidUsage(_)
            | Rejection::BadStatus(_)
            | Rejection::Money(_) => ApiError::validation(msg),
            Rejection::AccountLocked { balance, .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                "account_locked",
                format!("User is locked. Reason: Exhausted balance. Top up your balance to continue. ({msg})"),
            )
            .with("balance_nano_usd", balance.0),
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
            Rejection::WrongState { .. } | Rejection::Conflict(_) => ApiError::conflict(msg),
        }
    }
}

/// Parses a JSON body into `T`, answering malformed input with a 400 that names where.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::validation(
            "the request body is empty; a JSON object is expected",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::validation(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::validation(format!("invalid JSON body at `{path}`: {inner}"))
                .with("field", path)
        }
    })
}

/// Gives every error the same envelope, including those axum answers by itself (405 for a
/// method a path does not have, 413 for an oversized body, 400 for an undecodable path).
pub async fn envelope(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
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
    let kind = match status.as_u16() {
        401 | 403 => "authorization_error",
        404 => "not_found",
        429 => "rate_limited",
        500.. => "server_error",
        _ => "validation_error",
    };
    let mut out = ApiError::new(status, kind, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
