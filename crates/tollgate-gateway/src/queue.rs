//! fal's queue API on the queue listener (API.md section 10):
//!
//! - `POST /{endpoint}[/{path}]`: submit (`?fal_webhook=`, `x-fal-no-retry`);
//! - `GET /{owner}/{app}/requests/{id}/status[?logs=1]`, `.../status/stream`: status;
//! - `GET /{owner}/{app}/requests/{id}`: the result;
//! - `PUT /{owner}/{app}/requests/{id}/cancel`.
//!
//! Endpoint ids have two or more segments and a submission may add a path below its
//! endpoint, so paths are read here rather than by a route table: the longest prefix that is
//! an endpoint served by the gateway is the endpoint. A request's URLs name its endpoint's
//! first two segments (`owner/app`), as fal's clients build them from an endpoint id.

use crate::Gateway;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tollgate_api::error::ApiError;
use tollgate_api::extract::{Api, Customer};
use tollgate_api::AppState;
use tollgate_core::gateway::{GatewayInput, GatewayResult, GatewayState};
use tollgate_core::ids::{EndpointId, RequestId};
use tollgate_core::machine::{Op, Outcome, Rejection, RequestRecord, RequestStatus};
use tollgate_store::GatewayView;

/// The scheme the queue listener serves (`http`, `https`), for URLs built from `Host`.
#[derive(Clone, Copy)]
struct Scheme(&'static str);

pub fn router(gw: Arc<Gateway>, scheme: &'static str) -> Router {
    let limit = gw.config.max_body_bytes;
    Router::new()
        .fallback(call)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(Extension(Scheme(scheme)))
        .layer(Extension(gw.clone()))
        .with_state(gw.api.clone())
}

/// What a path asks for.
enum Call {
    Submit { endpoint: EndpointId, path: String },
    Result(Named),
    Status(Named),
    Stream(Named),
    Cancel(Named),
}

/// A request as its URLs name it: `owner/app` and its id.
struct Named {
    app: String,
    id: RequestId,
}

/// The endpoint served by the gateway that the longest prefix of `segments` names, and the
/// path below it (`""` or `/...`).
pub(crate) fn endpoint_at(gw: &Gateway, segments: &[&str]) -> Option<(EndpointId, String)> {
    let catalog = gw.api.engine.catalog();
    (2..=segments.len()).rev().find_map(|n| {
        let endpoint = EndpointId::parse(&segments[..n].join("/")).ok()?;
        catalog
            .endpoints
            .get(&endpoint)
            .filter(|d| !d.upstreams.is_empty())?;
        let rest = &segments[n..];
        let path = if rest.is_empty() {
            String::new()
        } else {
            format!("/{}", rest.join("/"))
        };
        Some((endpoint, path))
    })
}

/// The caller's input: the body, which must be JSON.
pub(crate) fn json_input(body: &Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body)
        .ok()
        .filter(|text| serde_json::from_str::<Value>(text).is_ok())
        .ok_or_else(|| {
            ApiError::invalid("body", "the request body must be JSON (the model's input)")
        })
}

fn route(gw: &Gateway, method: &Method, path: &str) -> Result<Call, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_found = || ApiError::not_found(format!("no such endpoint or request: {path}"));
    if method == Method::POST {
        let (endpoint, path) = endpoint_at(gw, &segments).ok_or_else(|| {
            ApiError::not_found(format!("no endpoint served by the gateway at {path}"))
        })?;
        return Ok(Call::Submit { endpoint, path });
    }
    if segments.len() < 4 || segments[2] != "requests" {
        return Err(not_found());
    }
    let named = || -> Result<Named, ApiError> {
        Ok(Named {
            app: format!("{}/{}", segments[0], segments[1]),
            id: RequestId::parse_uuid(segments[3]).map_err(|_| not_found())?,
        })
    };
    match (method.clone(), &segments[4..]) {
        (Method::GET, []) => Ok(Call::Result(named()?)),
        (Method::GET, ["status"]) => Ok(Call::Status(named()?)),
        (Method::GET, ["status", "stream"]) => Ok(Call::Stream(named()?)),
        (Method::PUT, ["cancel"]) => Ok(Call::Cancel(named()?)),
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} {path} is not a call of the queue API"),
        )),
    }
}

async fn call(
    State(api): State<AppState>,
    Extension(gw): Extension<Arc<Gateway>>,
    Extension(scheme): Extension<Scheme>,
    customer: Customer<Api>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let call = route(&gw, &parts.method, parts.uri.path())?;
    let base = base_url(&gw, scheme, &parts.headers);
    match call {
        Call::Submit { endpoint, path } => {
            let body = axum::body::to_bytes(body, gw.config.max_body_bytes)
                .await
                .map_err(|_| ApiError::payload_too_large(gw.config.max_body_bytes))?;
            submit(&api, &gw, &customer, endpoint, path, &parts, body, &base).await
        }
        Call::Status(n) => {
            let logs = query_flag(parts.uri.query(), "logs");
            let (view, request) = find(&api, &customer, &n).await?;
            let status = status_body(&view, &request, &base, &n, logs);
            let code = if status["status"] == "COMPLETED" {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok((code, axum::Json(status)).into_response())
        }
        Call::Stream(n) => stream(api, gw, customer, n, base).await,
        Call::Result(n) => {
            let (view, request) = find(&api, &customer, &n).await?;
            result(&view, &request)
        }
        Call::Cancel(n) => cancel(&api, &gw, &customer, &n).await,
    }
}

fn query_flag(query: Option<&str>, name: &str) -> bool {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(k, v)| k == name && (v == "1" || v == "true"))
}

/// The base of the URLs in answers: the configured one, else the caller's `Host`.
fn base_url(gw: &Gateway, scheme: Scheme, headers: &HeaderMap) -> String {
    if let Some(base) = &gw.config.public_queue_url {
        return base.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("{}://{host}", scheme.0)
}

/// `owner/app` of an endpoint: its first two segments.
pub(crate) fn app_of(endpoint: &EndpointId) -> String {
    endpoint
        .as_str()
        .split('/')
        .take(2)
        .collect::<Vec<_>>()
        .join("/")
}

fn urls(base: &str, app: &str, id: &RequestId) -> (String, String, String) {
    let response = format!("{base}/{app}/requests/{id}");
    (
        response.clone(),
        format!("{response}/status"),
        format!("{response}/cancel"),
    )
}

#[allow(clippy::too_many_arguments)]
async fn submit(
    api: &AppState,
    gw: &Arc<Gateway>,
    customer: &Customer<Api>,
    endpoint: EndpointId,
    path: String,
    parts: &axum::http::request::Parts,
    body: Bytes,
    base: &str,
) -> Result<Response, ApiError> {
    let input = json_input(&body)?;
    let webhook = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "fal_webhook")
        .map(|(_, v)| v.into_owned());
    if let Some(url) = &webhook {
        tollgate_api::webhooks::check_url(url, api.webhooks.allowed_hosts.as_deref())
            .map_err(|e| ApiError::invalid("fal_webhook", e.message))?;
    }
    let no_retry = parts
        .headers
        .get("x-fal-no-retry")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
    let request_id = RequestId::parse_uuid(&uuid::Uuid::new_v4().to_string())
        .expect("a v4 UUID is a request id");
    let op = Op::GatewaySubmit {
        request_id: request_id.clone(),
        account: customer.account.clone(),
        api_key: Some(customer.key_id.clone()),
        endpoint: endpoint.clone(),
        input: GatewayInput {
            path,
            input: Arc::from(input),
            webhook,
            no_retry,
        },
    };
    match api.engine.execute(op).await? {
        Ok(Outcome::Submitted { .. }) => {}
        Ok(other) => {
            return Err(ApiError::server(format!(
                "unexpected answer to a submission: {other:?}"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    gw.wake.notify_one();
    let id = request_id.clone();
    let position = api
        .engine
        .read(move |r| r.gateway_request(&id))
        .await?
        .and_then(|v| v.queue_position)
        .unwrap_or(0);
    let (response_url, status_url, cancel_url) = urls(base, &app_of(&endpoint), &request_id);
    Ok(axum::Json(json!({
        "request_id": request_id.as_str(),
        "gateway_request_id": request_id.as_str(),
        "status": "IN_QUEUE",
        "queue_position": position,
        "response_url": response_url,
        "status_url": status_url,
        "cancel_url": cancel_url,
    }))
    .into_response())
}

/// The request `n` names, if it is the caller's and its URL names its endpoint: else 404.
async fn find(
    api: &AppState,
    customer: &Customer<Api>,
    n: &Named,
) -> Result<(GatewayView, RequestRecord), ApiError> {
    let id = n.id.clone();
    let found = api
        .engine
        .read(move |r| {
            let view = r.gateway_request(&id)?;
            let request = r.request(&id)?;
            Ok(view.zip(request))
        })
        .await?;
    match found {
        Some((view, request))
            if view.record.account == customer.account
                && app_of(&view.record.endpoint) == n.app =>
        {
            Ok((view, request))
        }
        _ => Err(ApiError::not_found(format!("request {} not found", n.id))),
    }
}

/// fal's status names of a request.
fn status_name(view: &GatewayView, request: &RequestRecord) -> &'static str {
    match (view.record.state, request.status) {
        (GatewayState::Done, _) => "COMPLETED",
        // Units never came: voided when its hold ran out; its answer is there.
        (GatewayState::AwaitingUnits, RequestStatus::Expired) => "COMPLETED",
        (GatewayState::Queued, _) => "IN_QUEUE",
        _ => "IN_PROGRESS",
    }
}

pub(crate) fn cost(request: &RequestRecord) -> Option<i64> {
    request
        .completion
        .as_ref()
        .map(|c| if c.billed { c.charge.total_nanos.0 } else { 0 })
}

fn status_body(
    view: &GatewayView,
    request: &RequestRecord,
    base: &str,
    n: &Named,
    logs: bool,
) -> Value {
    let status = status_name(view, request);
    let (response_url, status_url, cancel_url) = urls(base, &n.app, &n.id);
    let mut body = json!({
        "status": status,
        "request_id": n.id.as_str(),
        "response_url": response_url,
        "status_url": status_url,
        "cancel_url": cancel_url,
        "logs": if logs { json!([]) } else { Value::Null },
    });
    if status == "IN_QUEUE" {
        body["queue_position"] = json!(view.queue_position.unwrap_or(0));
    }
    if status == "COMPLETED" {
        // fal's `Completed` tells a failed request apart by its `error` and `error_type`.
        if let Some(r) = view.record.result.as_ref().filter(|r| r.status_code >= 400) {
            body["error"] = json!(format!("Invalid status code: {}", r.status_code));
            body["error_type"] = json!(r.error_type);
        }
        let mut metrics = json!({});
        if let Some(ms) = request.inference_ms {
            // Seconds in a JSON number, as fal's clients read it (a Decimal would render as
            // a string).
            metrics["inference_time"] = json!(tollgate_api::wire::Number(
                rust_decimal::Decimal::new(ms, 3)
            ));
        }
        // A cancelled request has no billing: it cost nothing.
        metrics["cost_nano_usd"] = json!(cost(request).unwrap_or(0));
        body["metrics"] = metrics;
    }
    body
}

fn result(view: &GatewayView, request: &RequestRecord) -> Result<Response, ApiError> {
    let done = status_name(view, request) == "COMPLETED";
    let Some(result) = view.record.result.as_ref().filter(|_| done) else {
        return Ok((
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"detail": "Request is still in progress", "status": status_name(view, request)})),
        )
            .into_response());
    };
    Ok(answer(result, cost(request)))
}

/// A stored answer as the caller gets it: the model server's status, media type and body
/// (`x-fal-error-type` when tollgate ended the request), and its cost once billed.
pub(crate) fn answer(result: &GatewayResult, cost: Option<i64>) -> Response {
    let status = StatusCode::from_u16(result.status_code).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, result.body.to_vec()).into_response();
    let headers = resp.headers_mut();
    if let Some(ct) = result.content_type.as_ref().and_then(|c| c.parse().ok()) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(kind) = result.error_type.as_ref().and_then(|k| k.parse().ok()) {
        headers.insert("x-fal-error-type", kind);
    }
    if let Some(nanos) = cost {
        headers.insert(
            "x-tollgate-cost-nano-usd",
            nanos.to_string().parse().expect("digits"),
        );
    }
    resp
}

async fn cancel(
    api: &AppState,
    gw: &Gateway,
    customer: &Customer<Api>,
    n: &Named,
) -> Result<Response, ApiError> {
    // Only the caller's requests of this endpoint exist for it.
    if find(api, customer, n).await.is_err() {
        return Ok((
            StatusCode::NOT_FOUND,
            axum::Json(json!({"status": "NOT_FOUND"})),
        )
            .into_response());
    }
    let op = Op::GatewayCancel {
        request_id: n.id.clone(),
        account: customer.account.clone(),
    };
    match api.engine.execute(op).await? {
        // Cancelled before: it is completed, for the caller.
        Ok(Outcome::Cancelled { replayed: true }) => Ok((
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "ALREADY_COMPLETED"})),
        )
            .into_response()),
        Ok(_) => {
            if let Some(call) = gw.running.lock().expect("running calls").remove(&n.id) {
                call.abort();
            }
            let _ = gw.finished.send(n.id.clone());
            gw.wake.notify_one();
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({"status": "CANCELLATION_REQUESTED"})),
            )
                .into_response())
        }
        Err(Rejection::UnknownRequest(_)) => Ok((
            StatusCode::NOT_FOUND,
            axum::Json(json!({"status": "NOT_FOUND"})),
        )
            .into_response()),
        Err(Rejection::WrongState { .. }) => Ok((
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "ALREADY_COMPLETED"})),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

/// How often a status stream looks again without being woken (a request another server
/// runs).
const STREAM_POLL: Duration = Duration::from_millis(500);

/// Server-sent events of the request's status, one each time it changes, until it completes.
async fn stream(
    api: AppState,
    gw: Arc<Gateway>,
    customer: Customer<Api>,
    n: Named,
    base: String,
) -> Result<Response, ApiError> {
    // Listening before the first read: a request that finishes between the two is seen
    // finished by the read or wakes the stream, rather than waiting for the next poll.
    let finished = gw.finished.subscribe();
    let first = find(&api, &customer, &n).await?;
    struct S {
        api: AppState,
        customer: Customer<Api>,
        n: Named,
        base: String,
        next: Option<(GatewayView, RequestRecord)>,
        last: Option<Value>,
        finished: tokio::sync::broadcast::Receiver<RequestId>,
        done: bool,
    }
    let state = S {
        api,
        customer,
        n,
        base,
        next: Some(first),
        last: None,
        finished,
        done: false,
    };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let (view, request) = match s.next.take() {
                Some(found) => found,
                None => {
                    let wait = tokio::time::sleep(STREAM_POLL);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            () = &mut wait => break,
                            got = s.finished.recv() => match got {
                                Ok(id) if id == s.n.id => break,
                                Ok(_) => continue,
                                Err(_) => break,
                            },
                        }
                    }
                    match find(&s.api, &s.customer, &s.n).await {
                        Ok(found) => found,
                        Err(_) => return None,
                    }
                }
            };
            let body = status_body(&view, &request, &s.base, &s.n, false);
            if s.last.as_ref() == Some(&body) {
                continue;
            }
            s.done = body["status"] == "COMPLETED";
            s.last = Some(body.clone());
            let event = Event::default().data(body.to_string());
            return Some((Ok::<_, std::convert::Infallible>(event), s));
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
