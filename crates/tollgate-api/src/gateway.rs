//! The gateway API (docs/reference/API.md section 2): the life of one request, and bulk usage
//! events. Called with an operator key; every call is idempotent on the request or event id.

use crate::admin::{parse_account, parse_time, rfc3339};
use crate::auth::{operator, verify_key};
use crate::error::{parse_json, ApiError};
use crate::money::Number;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tollgate_core::decimal::de_opt as lenient_opt;
use tollgate_core::ids::{EndpointId, MachineType, RequestId};
use tollgate_core::machine::{Completion, Op, Outcome, RequestRecord, UsageEvent};
use tollgate_core::price::Output;
use tollgate_store::Scope;

/// The most events one `POST /v1/usage-events` may carry.
pub const MAX_EVENTS_PER_CALL: usize = 10_000;

fn request_id(s: &str) -> Result<RequestId, ApiError> {
    uuid::Uuid::parse_str(s).map_err(|_| {
        ApiError::validation(format!("request_id `{s}` is not a UUID")).with("field", "request_id")
    })?;
    RequestId::parse(s).map_err(|e| ApiError::validation(e.to_string()).with("field", "request_id"))
}

fn endpoint_id(s: &str) -> Result<EndpointId, ApiError> {
    EndpointId::parse(s)
        .map_err(|e| ApiError::validation(e.to_string()).with("field", "endpoint_id"))
}

fn machine(s: Option<String>) -> Result<Option<MachineType>, ApiError> {
    s.map(|m| {
        MachineType::parse(&m)
            .map_err(|e| ApiError::validation(e.to_string()).with("field", "machine_type"))
    })
    .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    request_id: String,
    endpoint_id: String,
    caller_key: String,
}

pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator(&state, &headers).await?;
    let req: SubmitBody = parse_json(&body)?;
    let request_id = request_id(&req.request_id)?;
    let endpoint = endpoint_id(&req.endpoint_id)?;
    let caller = verify_key(&state, &req.caller_key).await?;
    if caller.scope == Scope::Operator {
        return Err(ApiError::unauthorized(
            "caller_key must be a customer's key, not an operator key",
        ));
    }
    let account = caller
        .account
        .clone()
        .expect("customer keys belong to an account");
    let outcome = state
        .engine
        .execute(Op::Submit {
            request_id,
            account,
            api_key: Some(caller.key_id),
            endpoint,
        })
        .await??;
    let Outcome::Submitted { request, replayed } = outcome else {
        return Err(ApiError::server("unexpected outcome"));
    };
    // A repeat gets the first answer (the request was queued), whatever happened since.
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({ "request_id": request.id.as_str(), "status": "IN_QUEUE" })),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    machine_type: Option<String>,
    #[serde(default)]
    num_gpus: Option<u32>,
    #[serde(default, deserialize_with = "lenient_opt")]
    hold_units: Option<Decimal>,
}

pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    operator(&state, &headers).await?;
    let request_id = request_id(&id)?;
    let req: StartBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        StartBody::default()
    } else {
        parse_json(&body)?
    };
    let outcome = state
        .engine
        .execute(Op::Start {
            request_id: request_id.clone(),
            machine_type: machine(req.machine_type)?,
            num_gpus: req.num_gpus,
            hold_units: req.hold_units,
        })
        .await??;
    let Outcome::Started {
        hold,
        limit,
        in_progress,
        ..
    } = outcome
    else {
        return Err(ApiError::server("unexpected outcome"));
    };
    Ok(Json(json!({
        "request_id": request_id.as_str(),
        "status": "IN_PROGRESS",
        "hold_nano_usd": hold.0,
        "hold": Number::usd(hold),
        "concurrency": { "limit": limit, "in_progress": in_progress },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    status_code: u16,
    #[serde(default)]
    output: Option<Output>,
    #[serde(default, deserialize_with = "lenient_opt")]
    billable_units: Option<Decimal>,
    #[serde(default, deserialize_with = "lenient_opt")]
    inference_seconds: Option<Decimal>,
}

/// The billing result of a finished request, as the complete call and `GET` render it.
#[derive(Serialize)]
pub struct BillingResult {
    pub request_id: String,
    pub status: &'static str,
    pub billed: bool,
    pub endpoint_id: String,
    pub unit: String,
    pub output_units: Number,
    pub unit_price: Number,
    pub percent_discount: Option<Number>,
    pub cost_subtotal: Number,
    pub cost_discount: Number,
    pub cost_total: Number,
    pub cost_subtotal_nano_usd: i64,
    pub cost_discount_nano_usd: i64,
    pub cost_estimate_nano_usd: i64,
    pub balance_nano_usd: i64,
    pub status_code: u16,
}

pub fn billing_result(r: &RequestRecord, c: &Completion) -> BillingResult {
    let ch = &c.charge;
    BillingResult {
        request_id: r.id.to_string(),
        status: r.status.as_str(),
        billed: c.billed,
        endpoint_id: r.endpoint.to_string(),
        unit: c.unit.clone(),
        output_units: Number(ch.quantity),
        unit_price: Number(ch.unit_price),
        percent_discount: ch.percent_discount.map(Number),
        cost_subtotal: Number::usd(ch.subtotal_nanos),
        cost_discount: Number::usd(ch.discount_nanos),
        cost_total: Number::usd(ch.total_nanos),
        cost_subtotal_nano_usd: ch.subtotal_nanos.0,
        cost_discount_nano_usd: ch.discount_nanos.0,
        cost_estimate_nano_usd: ch.total_nanos.0,
        balance_nano_usd: c.balance_after.0,
        status_code: c.status_code,
    }
}

pub async fn complete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator(&state, &headers).await?;
    let request_id = request_id(&id)?;
    let req: CompleteBody = parse_json(&body)?;
    let outcome = state
        .engine
        .execute(Op::Complete {
            request_id,
            status_code: req.status_code,
            output: req.output.unwrap_or_default(),
            billable_units: req.billable_units,
            inference_seconds: req.inference_seconds,
        })
        .await??;
    let Outcome::Completed {
        request,
        completion,
        replayed,
    } = outcome
    else {
        return Err(ApiError::server("unexpected outcome"));
    };
    let units = completion.charge.quantity.to_string();
    let mut resp = Json(billing_result(&request, &completion)).into_response();
    let h = resp.headers_mut();
    h.insert(
        "x-fal-billable-units",
        HeaderValue::from_str(&units).expect("a decimal is a header value"),
    );
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    operator(&state, &headers).await?;
    let request_id = request_id(&id)?;
    state
        .engine
        .execute(Op::Cancel {
            request_id: request_id.clone(),
        })
        .await??;
    Ok(Json(
        json!({ "request_id": request_id.as_str(), "status": "CANCELLED", "billed": false }),
    ))
}

fn ms_to_seconds(ms: Option<i64>) -> Option<Number> {
    ms.map(|m| Number(Decimal::new(m, 3)))
}

pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    operator(&state, &headers).await?;
    let request_id = RequestId::parse(&id).map_err(|e| ApiError::validation(e.to_string()))?;
    let lookup = request_id.clone();
    let r = state
        .engine
        .read(move |rd| rd.request(&lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown request {request_id}")))?;
    let mut body = json!({
        "request_id": r.id.as_str(),
        "status": r.status.as_str(),
        "endpoint_id": r.endpoint.as_str(),
        "username": r.account.as_str(),
        "submitted_at": rfc3339(r.submitted_at),
        "started_at": r.started_at.map(rfc3339),
        "finished_at": r.finished_at.map(rfc3339),
        "queue_seconds": ms_to_seconds(r.queue_ms),
        "inference_seconds": ms_to_seconds(r.inference_ms),
        "hold_nano_usd": r.hold.0,
        "hold_expires_at": r.hold_expires_at.map(rfc3339),
        "price_version": r.price_version,
        "machine_type": r.machine_type.as_ref().map(|m| m.as_str()),
        "num_gpus": r.num_gpus,
    });
    if let Some(c) = &r.completion {
        body["billing"] = serde_json::to_value(billing_result(&r, c)).expect("serializes");
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    event_id: String,
    endpoint_id: String,
    username: String,
    timestamp: String,
    status_code: u16,
    #[serde(default)]
    output: Option<Output>,
    #[serde(default, deserialize_with = "lenient_opt")]
    billable_units: Option<Decimal>,
    #[serde(default, deserialize_with = "lenient_opt")]
    queue_seconds: Option<Decimal>,
    #[serde(default, deserialize_with = "lenient_opt")]
    inference_seconds: Option<Decimal>,
    #[serde(default)]
    machine_type: Option<String>,
    #[serde(default)]
    num_gpus: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsBody {
    events: Vec<EventBody>,
}

fn event_op(e: EventBody) -> Result<Op, ApiError> {
    Ok(Op::UsageEvent(UsageEvent {
        event_id: RequestId::parse(&e.event_id)
            .map_err(|err| ApiError::validation(err.to_string()).with("field", "event_id"))?,
        account: parse_account(&e.username)?,
        endpoint: endpoint_id(&e.endpoint_id)?,
        api_key: None,
        timestamp: parse_time("timestamp", &e.timestamp)?,
        status_code: e.status_code,
        output: e.output.unwrap_or_default(),
        billable_units: e.billable_units,
        queue_seconds: e.queue_seconds,
        inference_seconds: e.inference_seconds,
        machine_type: machine(e.machine_type)?,
        num_gpus: e.num_gpus,
    }))
}

/// Bulk after-the-fact metering. A malformed event refuses the whole call (nothing written);
/// an event the engine rejects (unknown endpoint or account) gets its own error in the
/// results while the others are billed.
pub async fn usage_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<EventResults>, ApiError> {
    operator(&state, &headers).await?;
    let req: EventsBody = parse_json(&body)?;
    if req.events.len() > MAX_EVENTS_PER_CALL {
        return Err(
            ApiError::validation(format!("at most {MAX_EVENTS_PER_CALL} events per call"))
                .with("field", "events"),
        );
    }
    let mut ops = Vec::with_capacity(req.events.len());
    for (i, e) in req.events.into_iter().enumerate() {
        ops.push(event_op(e).map_err(|err| {
            let msg = format!("events[{i}]: {}", err.message);
            ApiError {
                message: msg,
                ..err
            }
            .with("index", i)
        })?);
    }
    let ids: Vec<String> = ops
        .iter()
        .map(|op| op.request_id().expect("events have ids").to_string())
        .collect();
    let answers = state.engine.execute_many(ops).await?;
    let results: Vec<EventResult> = answers
        .into_iter()
        .zip(ids)
        .map(|(a, event_id)| match a {
            Ok(Outcome::Completed {
                request,
                completion,
                replayed,
            }) => EventResult::Settled {
                event_id,
                duplicate: replayed,
                result: billing_result(&request, &completion),
            },
            Ok(_) => EventResult::Refused {
                event_id,
                status_code: 500,
                error: ApiError::server("unexpected outcome").object(),
            },
            Err(rej) => {
                let e = ApiError::from(rej);
                EventResult::Refused {
                    event_id,
                    status_code: e.status.as_u16(),
                    error: e.object(),
                }
            }
        })
        .collect();
    Ok(Json(EventResults { results }))
}

#[derive(Serialize)]
pub struct EventResults {
    results: Vec<EventResult>,
}

/// One event's answer, serialized directly (a bulk call answers thousands of them).
#[derive(Serialize)]
#[serde(untagged)]
enum EventResult {
    /// Billed, or free (a 5xx): `billed` in the result says which.
    Settled {
        event_id: String,
        duplicate: bool,
        #[serde(flatten)]
        result: BillingResult,
    },
    Refused {
        event_id: String,
        status_code: u16,
        error: Value,
    },
}
