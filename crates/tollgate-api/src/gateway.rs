//! The gateway API (docs/reference/API.md section 2): the life of one request, and bulk usage
//! events. Called with an operator key; every call is idempotent on the request or event id.

use crate::auth::verify_key;
use crate::error::{ApiError, ErrorDetail, ErrorResponse};
use crate::extract::{Json, LifecycleId, NoParams, Operator, OptionalJson, Params, Path};
use crate::openapi::{tags, OperatorErrors, Replayed};
use crate::wire::{self, Number, Time};
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::decimal::DecimalInput;
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, MachineType, RequestId};
use tollgate_core::machine::{Completion, Op, Outcome, RequestRecord, RequestStatus, UsageEvent};
use tollgate_core::price::Output;
use tollgate_core::Timestamp;
use tollgate_store::Scope;
use utoipa::ToSchema;

/// The most events one `POST /v1/usage-events` may carry.
pub const MAX_EVENTS_PER_CALL: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// Submit

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// The gateway's id of the request: a UUID (UUIDv7s, which sort by time, are cheapest to
    /// store); the idempotency key of every call about it.
    #[schema(value_type = String, format = Uuid)]
    request_id: LifecycleId,
    endpoint_id: EndpointId,
    /// The key the end user presented (`key_id:key_secret`): a customer's key.
    caller_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct Submitted {
    request_id: RequestId,
    /// Always `IN_QUEUE`: the first answer, also when replayed.
    #[schema(value_type = String, example = "IN_QUEUE")]
    status: RequestStatus,
}

/// Submit a request
///
/// A caller submitted a request to an endpoint. Authenticates the caller's key (`caller_key`,
/// 401), checks the endpoint (404) and whether the account is locked (403 `account_locked`: a
/// prepaid balance at or below the lock threshold, e.g. no credits). The request is
/// `IN_QUEUE`; queue time is never billed. Nothing is held or billed yet; the price version
/// in force now is the one it will be billed with.
///
/// Idempotent on `request_id`: a repeat with the same endpoint and caller answers 200 with the
/// first answer (`IN_QUEUE`), whatever happened since; the same id for another request
/// answers 409.
#[utoipa::path(
    post, path = "/v1/requests", tag = tags::GATEWAY, operation_id = "submitRequest",
    security(("Key" = ["OPERATOR"])),
    request_body = SubmitBody,
    responses(
        OperatorErrors,
        (status = 201, description = "The request was queued.", body = Submitted),
        (status = 200, description = "A repeat: the request already exists.", body = Submitted),
        (status = 401, description = "`authorization_error`: the operator key or the \
            `caller_key` is missing, unknown, wrong or revoked, or `caller_key` is an operator \
            key.", body = ErrorResponse),
        (status = 403, description = "`authorization_error`: the calling key is not an \
            `OPERATOR` key; or `account_locked`: the caller's account is locked \
            (`error.balance_nano_usd`).", body = ErrorResponse),
        (status = 404, description = "`not_found`: unknown endpoint, or the endpoint has no \
            price in force.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the `request_id` was already used for \
            another request.", body = ErrorResponse),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Json(body): Json<SubmitBody>,
) -> Result<(StatusCode, axum::Json<Submitted>), ApiError> {
    let caller = verify_key(&state, &body.caller_key).await?;
    let account = match (caller.scope, caller.account) {
        (Scope::Api | Scope::Admin, Some(account)) => account,
        _ => {
            return Err(ApiError::unauthorized(
                "caller_key must be a customer's key, not an operator key",
            ))
        }
    };
    let outcome = state
        .engine
        .execute(Op::Submit {
            request_id: body.request_id.0,
            account,
            api_key: Some(caller.key_id),
            endpoint: body.endpoint_id,
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
        axum::Json(Submitted {
            request_id: request.id,
            status: RequestStatus::InQueue,
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Start

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// The machine the runner uses (compute prices bill its per-second price).
    #[serde(default)]
    machine_type: Option<MachineType>,
    /// GPUs of that machine (1 to 64, default 1).
    #[serde(default, deserialize_with = "wire::num_gpus")]
    #[schema(minimum = 1, maximum = 64)]
    num_gpus: Option<u32>,
    /// Billable units to hold (default: the endpoint's `hold_units`).
    #[serde(default, deserialize_with = "tollgate_core::decimal::de_opt")]
    #[schema(value_type = Option<DecimalInput>)]
    hold_units: Option<Decimal>,
}

#[derive(Serialize, ToSchema)]
pub struct Concurrency {
    limit: u32,
    in_progress: u32,
}

#[derive(Serialize, ToSchema)]
pub struct Started {
    request_id: RequestId,
    #[schema(value_type = String, example = "IN_PROGRESS")]
    status: RequestStatus,
    /// What is held for the request, exactly.
    hold_nano_usd: i64,
    /// The same, in USD.
    hold: Number,
    concurrency: Concurrency,
}

/// The header of a 429: the request was not started and may be retried later.
pub struct NeedsRetry;

impl utoipa::PartialSchema for NeedsRetry {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(["1"]))
            .description(Some(
                "`1`: the request was not started and may be retried later (fal's \
                 `X-Fal-needs-retry`).",
            ))
            .into()
    }
}

impl ToSchema for NeedsRetry {}

/// Start a request
///
/// A runner picked the request up. Checks the account's lock (403 `account_locked`) and
/// concurrency limit (429 `concurrent_requests_limit` with header `x-fal-needs-retry: 1`; the
/// request stays `IN_QUEUE` and may be started later), then holds the estimated cost: the
/// endpoint's `hold_units` (or the body's) at the price version of the request, with the
/// account's discount. A `block` spending limit of the account, or of the key the request was
/// submitted with, refuses a start whose hold would take its period's spend (settled charges
/// plus the holds of running requests) past its amount: 403 `spending_limit_exceeded` naming
/// `error.limit_id` and when it resets (`error.resets_at`). Then the hold is placed (402
/// `insufficient_credits` when the available balance cannot cover it). The request becomes `IN_PROGRESS` and must be completed within the endpoint's hold
/// timeout, or it expires unbilled. Nothing is billed yet.
///
/// The body is optional. Idempotent: starting a request in progress answers the same hold
/// again and holds nothing more; a request already finished answers 409.
#[utoipa::path(
    post, path = "/v1/requests/{request_id}/start", tag = tags::GATEWAY,
    operation_id = "startRequest", security(("Key" = ["OPERATOR"])),
    params(("request_id" = String, Path, format = Uuid,
        description = "The request's id (the UUID given at submission).")),
    request_body(content = Option<StartBody>, description = "Optional."),
    responses(
        OperatorErrors,
        (status = 200, description = "The request is in progress.", body = Started),
        (status = 402, description = "`insufficient_credits`: the available balance cannot \
            cover the hold (`error.available_nano_usd`, `error.required_nano_usd`). The \
            request stays `IN_QUEUE`.", body = ErrorResponse),
        (status = 403, description = "`authorization_error`: not an `OPERATOR` key; or \
            `account_locked`: the account is locked; or `spending_limit_exceeded`: a block \
            spending limit would be passed (`error.limit_id`, `error.resets_at`, \
            `error.amount_nano_usd`, `error.spent_nano_usd`, `error.held_nano_usd`, \
            `error.required_nano_usd`). The request stays `IN_QUEUE`.", body = ErrorResponse),
        (status = 404, description = "`not_found`: unknown request (or its endpoint or price \
            left the catalog).", body = ErrorResponse),
        (status = 409, description = "`conflict`: the request is already finished, cancelled \
            or expired.", body = ErrorResponse),
        (status = 429, description = "`concurrent_requests_limit`: the account has as many \
            requests in progress as its limit (`error.limit`, `error.in_progress`). The \
            request stays `IN_QUEUE`; retry later.", body = ErrorResponse,
            headers(("x-fal-needs-retry" = NeedsRetry))),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(LifecycleId(request_id)): Path<LifecycleId>,
    OptionalJson(body): OptionalJson<StartBody>,
) -> Result<axum::Json<Started>, ApiError> {
    let outcome = state
        .engine
        .execute(Op::Start {
            request_id: request_id.clone(),
            machine_type: body.machine_type,
            num_gpus: body.num_gpus,
            hold_units: body.hold_units,
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
    Ok(axum::Json(Started {
        request_id,
        status: RequestStatus::InProgress,
        hold_nano_usd: hold.0,
        hold: Number::usd(hold),
        concurrency: Concurrency { limit, in_progress },
    }))
}

// ---------------------------------------------------------------------------------------------
// Complete

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"status_code": 200, "output": {"images": [{"width": 1920, "height": 1080}]}}))]
pub struct CompleteBody {
    /// The runner's final HTTP status: 200-399 bills the output, 400-499 is the caller's
    /// error (free unless the endpoint bills a 4xx's inference seconds), 500-599 is free.
    #[serde(deserialize_with = "wire::status")]
    #[schema(minimum = 200, maximum = 599)]
    status_code: u16,
    /// What the request produced; the endpoint's price decides what counts.
    #[serde(default)]
    output: Option<Output>,
    /// The quantity already in the priced unit (fal's `x-fal-billable-units`); wins over
    /// `output`.
    #[serde(default, deserialize_with = "tollgate_core::decimal::de_opt")]
    #[schema(value_type = Option<DecimalInput>)]
    billable_units: Option<Decimal>,
    /// Inference time (default: the time between start and complete as tollgate saw it).
    #[serde(default, deserialize_with = "tollgate_core::decimal::de_opt")]
    #[schema(value_type = Option<DecimalInput>)]
    inference_seconds: Option<Decimal>,
}

/// The billing result of a finished request, as the complete call and `GET` render it.
#[derive(Serialize, ToSchema)]
pub struct BillingResult {
    pub request_id: RequestId,
    pub status: RequestStatus,
    /// Whether anything was charged (a 5xx, or a free 4xx, is not).
    pub billed: bool,
    pub endpoint_id: EndpointId,
    /// The unit billed, as fal's pricing shows it.
    pub unit: String,
    /// Billable units (`x-fal-billable-units`).
    pub output_units: Number,
    /// USD per unit before the discount.
    pub unit_price: Number,
    pub percent_discount: Option<Number>,
    pub cost_subtotal: Number,
    pub cost_discount: Number,
    pub cost_total: Number,
    pub cost_subtotal_nano_usd: i64,
    pub cost_discount_nano_usd: i64,
    /// The exact charge, nano-USD (`cost_total`).
    pub cost_estimate_nano_usd: i64,
    /// The account's balance right after this request settled.
    pub balance_nano_usd: i64,
    pub status_code: u16,
    /// Completed after its hold expired: billed without a hold and without a concurrency
    /// slot (the work was done).
    pub late: bool,
}

pub fn billing_result(r: &RequestRecord, c: &Completion) -> BillingResult {
    let ch = &c.charge;
    BillingResult {
        request_id: r.id.clone(),
        status: r.status,
        billed: c.billed,
        endpoint_id: r.endpoint.clone(),
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
        late: c.late,
    }
}

/// Header `x-fal-billable-units`: the billable units as an exact decimal string.
pub struct BillableUnits;

impl utoipa::PartialSchema for BillableUnits {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(tollgate_core::decimal::PATTERN))
            .description(Some(
                "The billable units of the request as an exact decimal string (fal's \
                 `x-fal-billable-units`); `0` when nothing was billed.",
            ))
            .into()
    }
}

impl ToSchema for BillableUnits {}

/// Complete a request
///
/// The runner finished. Rates the output with the price version in force at submission and
/// the account's overrides and discount, settles the hold (the actual cost is charged; the
/// rest of the hold is released) and frees the concurrency slot. What is billed: for status
/// codes 200-399, the output (`billable_units` if given, else what `output` measures in the
/// price's unit; compute prices bill `inference_seconds` x GPUs); for 400-499, nothing,
/// unless the endpoint bills a 4xx's inference seconds; for 500-599, nothing: the hold is
/// voided. Queue time is never billed.
///
/// **Output mismatch.** A successful completion (200-399) without `billable_units` whose
/// `output` lacks what the price measures (no `images` for an image or megapixel price, no
/// `video_seconds` for a per-second video price, no `tokens` for a token price, ...) is
/// refused with 422 `output_mismatch`: `error.field` names the missing field and
/// `error.unexpected` the measured fields the output carries instead (`images` sent to a video
/// price). Nothing is billed, the request stays `IN_PROGRESS` with its hold, and the refusal
/// is not kept as its answer: a corrected completion is accepted. An endpoint whose catalog
/// entry sets `missing_units` bills such an output as one unit (`one_unit`) or as its
/// inference seconds x GPUs at its machine's price (`compute_seconds`) instead.
///
/// **Late completion.** A request whose hold expired (`EXPIRED`) is still billed when its
/// completion arrives (the work was done), without a hold and without taking a concurrency
/// slot: `late: true`, and inference seconds not reported are measured from start to the
/// hold's expiry. A 5xx bills nothing. An endpoint whose catalog entry says
/// `late_completion = "refuse"` answers 409 `request_expired` instead.
///
/// Idempotent: a repeat answers the first answer (header `idempotent-replayed: true`) and
/// bills nothing again. Completing a request that was never started or was cancelled answers
/// 409.
#[utoipa::path(
    post, path = "/v1/requests/{request_id}/complete", tag = tags::GATEWAY,
    operation_id = "completeRequest", security(("Key" = ["OPERATOR"])),
    params(("request_id" = String, Path, format = Uuid,
        description = "The request's id (the UUID given at submission).")),
    request_body = CompleteBody,
    responses(
        OperatorErrors,
        (status = 200, description = "The billing result (the first answer, when replayed).",
            body = BillingResult, headers(
                ("x-fal-billable-units" = BillableUnits),
                ("idempotent-replayed" = Replayed),
            )),
        (status = 404, description = "`not_found`: unknown request.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the request is `IN_QUEUE` (never started) \
            or `CANCELLED`; or `request_expired`: it expired and its endpoint refuses late \
            completions.", body = ErrorResponse),
        (status = 422, description = "`output_mismatch`: a successful output lacks what the \
            price measures (`error.field`) or carries only what it cannot measure \
            (`error.unexpected`); nothing was billed and the request stays `IN_PROGRESS`.",
            body = ErrorResponse),
    )
)]
pub async fn complete(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(LifecycleId(request_id)): Path<LifecycleId>,
    Json(body): Json<CompleteBody>,
) -> Result<(HeaderMap, axum::Json<BillingResult>), ApiError> {
    let outcome = state
        .engine
        .execute(Op::Complete {
            request_id,
            status_code: body.status_code,
            output: body.output.unwrap_or_default(),
            billable_units: body.billable_units,
            inference_seconds: body.inference_seconds,
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
    let mut headers = Replayed::header(replayed);
    headers.insert(
        "x-fal-billable-units",
        HeaderValue::from_str(&completion.charge.quantity.to_string())
            .expect("a decimal is a header value"),
    );
    Ok((headers, axum::Json(billing_result(&request, &completion))))
}

/// The units a model server bills for a request it answered with
/// `x-fal-billable-units-webhook: 1`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"billable_units": "2.5"}))]
pub struct BillableUnitsBody {
    #[serde(deserialize_with = "tollgate_core::decimal::de")]
    #[schema(value_type = DecimalInput)]
    billable_units: Decimal,
}

/// Post a request's billable units
///
/// fal's deferred billing: a model server that answered a gateway request with
/// `x-fal-billable-units-webhook: 1` (API.md section 10) posts the units here once it knows
/// them, with the request's `x-fal-request-id`. The request is then billed those units, as a
/// completion with its answer's status, and completed. Idempotent: a second post answers the
/// first billing result and bills nothing more (`idempotent-replayed: true`).
#[utoipa::path(
    post, path = "/v1/requests/billable-units/{request_id}", tag = tags::GATEWAY,
    operation_id = "postBillableUnits", security(("Key" = ["OPERATOR"])),
    params(("request_id" = String, Path, format = Uuid,
        description = "The request's id (the model server's `x-fal-request-id`).")),
    request_body = BillableUnitsBody,
    responses(
        OperatorErrors,
        (status = 200, description = "The billing result (the first answer, when replayed).",
            body = BillingResult, headers(("idempotent-replayed" = Replayed))),
        (status = 404, description = "`not_found`: unknown request.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the request was cancelled or its hold \
            expired and its endpoint refuses late completions.", body = ErrorResponse),
    )
)]
pub async fn billable_units(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(LifecycleId(request_id)): Path<LifecycleId>,
    Json(body): Json<BillableUnitsBody>,
) -> Result<(HeaderMap, axum::Json<BillingResult>), ApiError> {
    let id = request_id.clone();
    let source = state
        .engine
        .read(move |r| r.request(&id))
        .await?
        .map(|r| r.source)
        .ok_or_else(|| ApiError::not_found(format!("unknown request {request_id}")))?;
    // A queued gateway request's units complete it with its stored answer; a direct one's
    // (a lifecycle request) complete it as a success.
    let op = if source == tollgate_core::machine::Source::Gateway {
        Op::GatewayUnits {
            request_id,
            billable_units: body.billable_units,
        }
    } else {
        Op::Complete {
            request_id,
            status_code: 200,
            output: Output::default(),
            billable_units: Some(body.billable_units),
            inference_seconds: None,
        }
    };
    let Outcome::Completed {
        request,
        completion,
        replayed,
    } = state.engine.execute(op).await??
    else {
        return Err(ApiError::server("unexpected outcome"));
    };
    Ok((
        Replayed::header(replayed),
        axum::Json(billing_result(&request, &completion)),
    ))
}

// ---------------------------------------------------------------------------------------------
// Cancel and show

#[derive(Serialize, ToSchema)]
pub struct Cancelled {
    request_id: RequestId,
    #[schema(value_type = String, example = "CANCELLED")]
    status: RequestStatus,
    /// Always false: a cancelled request is never billed.
    billed: bool,
}

/// Cancel a request
///
/// The caller gave up on a request `IN_QUEUE` or `IN_PROGRESS`: nothing is billed, the hold is
/// released and the concurrency slot freed. No body. Idempotent: cancelling a cancelled
/// request answers the same; a finished or expired request answers 409.
#[utoipa::path(
    post, path = "/v1/requests/{request_id}/cancel", tag = tags::GATEWAY,
    operation_id = "cancelRequest", security(("Key" = ["OPERATOR"])),
    params(("request_id" = String, Path, format = Uuid,
        description = "The request's id (the UUID given at submission).")),
    responses(
        OperatorErrors,
        (status = 200, description = "The request is cancelled.", body = Cancelled),
        (status = 404, description = "`not_found`: unknown request.", body = ErrorResponse),
        (status = 409, description = "`conflict`: the request already finished or expired.",
            body = ErrorResponse),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(LifecycleId(request_id)): Path<LifecycleId>,
) -> Result<axum::Json<Cancelled>, ApiError> {
    state
        .engine
        .execute(Op::Cancel {
            request_id: request_id.clone(),
        })
        .await??;
    Ok(axum::Json(Cancelled {
        request_id,
        status: RequestStatus::Cancelled,
        billed: false,
    }))
}

/// A request as the gateway sees it.
#[derive(Serialize, ToSchema)]
pub struct RequestView {
    request_id: RequestId,
    status: RequestStatus,
    endpoint_id: EndpointId,
    username: AccountId,
    submitted_at: Time,
    started_at: Option<Time>,
    finished_at: Option<Time>,
    /// Time in the queue, never billed.
    queue_seconds: Option<Number>,
    inference_seconds: Option<Number>,
    /// What is held now, nano-USD (0 once finished).
    hold_nano_usd: i64,
    hold_expires_at: Option<Time>,
    /// The price version the request is billed with.
    price_version: i64,
    machine_type: Option<MachineType>,
    num_gpus: u32,
    /// Once finished: the billing result.
    #[serde(skip_serializing_if = "Option::is_none")]
    billing: Option<BillingResult>,
}

fn seconds(ms: Option<i64>) -> Option<Number> {
    ms.map(|m| Number(Decimal::new(m, 3)))
}

/// Show a request
///
/// A request's status, timings (`queue_seconds`, `inference_seconds`), hold and, once
/// finished, its billing result. Usage events can be looked up by their `event_id` too.
/// Read-only.
#[utoipa::path(
    get, path = "/v1/requests/{request_id}", tag = tags::GATEWAY, operation_id = "getRequest",
    security(("Key" = ["OPERATOR"])),
    params(("request_id" = RequestId, Path,
        description = "The request's id (or a usage event's `event_id`).")),
    responses(
        OperatorErrors,
        (status = 200, description = "The request.", body = RequestView),
        (status = 404, description = "`not_found`: unknown request.", body = ErrorResponse),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    Path(request_id): Path<RequestId>,
) -> Result<axum::Json<RequestView>, ApiError> {
    let lookup = request_id.clone();
    let r = state
        .engine
        .read(move |rd| rd.request(&lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown request {request_id}")))?;
    Ok(axum::Json(RequestView {
        billing: r.completion.as_ref().map(|c| billing_result(&r, c)),
        request_id: r.id,
        status: r.status,
        endpoint_id: r.endpoint,
        username: r.account,
        submitted_at: Time(r.submitted_at),
        started_at: r.started_at.map(Time),
        finished_at: r.finished_at.map(Time),
        queue_seconds: seconds(r.queue_ms),
        inference_seconds: seconds(r.inference_ms),
        hold_nano_usd: r.hold.0,
        hold_expires_at: r.hold_expires_at.map(Time),
        price_version: r.price_version,
        machine_type: r.machine_type,
        num_gpus: r.num_gpus,
    }))
}

// ---------------------------------------------------------------------------------------------
// Usage events

/// A finished request, reported after the fact.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// Your id of the request; the idempotency key.
    event_id: RequestId,
    endpoint_id: EndpointId,
    username: AccountId,
    /// When the request finished (RFC 3339). It selects the price version; at most 5 minutes
    /// in the future.
    #[serde(deserialize_with = "wire::time")]
    #[schema(value_type = String, format = DateTime)]
    timestamp: Timestamp,
    #[serde(deserialize_with = "wire::status")]
    #[schema(minimum = 200, maximum = 599)]
    status_code: u16,
    #[serde(default)]
    output: Option<Output>,
    #[serde(default, deserialize_with = "tollgate_core::decimal::de_opt")]
    #[schema(value_type = Option<DecimalInput>)]
    billable_units: Option<Decimal>,
    /// Recorded, never billed (0 to one year).
    #[serde(default, deserialize_with = "tollgate_core::decimal::de_opt")]
    #[schema(value_type = Option<DecimalInput>)]
    queue_seconds: Option<Decimal>,
    /// Bills compute and GPU-second prices (default 0).
    #[serde(default, deserialize_with = "tollgate_core::decimal::de_opt")]
    #[schema(value_type = Option<DecimalInput>)]
    inference_seconds: Option<Decimal>,
    #[serde(default)]
    machine_type: Option<MachineType>,
    /// GPUs of that machine (1 to 64, default 1).
    #[serde(default, deserialize_with = "wire::num_gpus")]
    #[schema(minimum = 1, maximum = 64)]
    num_gpus: Option<u32>,
    /// The customer key the usage was made with: a key of `username` (else this event alone
    /// is refused, 400 naming `api_key_id`). Its spend counts toward that key's spending
    /// limits, and usage reads can filter by it.
    #[serde(default)]
    api_key_id: Option<ApiKeyId>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsBody {
    #[schema(max_items = 10000)]
    events: Vec<EventBody>,
}

impl EventBody {
    fn op(self) -> Op {
        Op::UsageEvent(UsageEvent {
            event_id: self.event_id,
            account: self.username,
            endpoint: self.endpoint_id,
            api_key: self.api_key_id,
            timestamp: self.timestamp,
            status_code: self.status_code,
            output: self.output.unwrap_or_default(),
            billable_units: self.billable_units,
            queue_seconds: self.queue_seconds,
            inference_seconds: self.inference_seconds,
            machine_type: self.machine_type,
            num_gpus: self.num_gpus,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventResults {
    /// One per event, in order.
    results: Vec<EventResult>,
}

/// One event's answer: billed (or free: `billed` says which), or refused on its own.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EventResult {
    Settled {
        event_id: RequestId,
        /// A repeat of an event already billed: this is its first result, billed once.
        duplicate: bool,
        #[serde(flatten)]
        result: BillingResult,
    },
    Refused {
        event_id: RequestId,
        /// The status this event's refusal would have as a call of its own.
        status_code: u16,
        #[schema(value_type = ErrorDetail)]
        error: Box<ApiError>,
    },
}

/// A refused body's error, placed in the event it came from: `events[3].timestamp` becomes
/// `error.index` 3 and `error.field` `timestamp`.
pub(crate) fn place_in_event(mut e: ApiError) -> ApiError {
    let Some(Value::String(field)) = e.extra.get("field").cloned() else {
        return e;
    };
    let Some(rest) = field.strip_prefix("events[") else {
        return e;
    };
    let Some((index, inner)) = rest.split_once(']') else {
        return e;
    };
    let Ok(index) = index.parse::<usize>() else {
        return e;
    };
    let inner = inner.trim_start_matches('.');
    e.message = format!("events[{index}]: {}", e.message);
    e = e.with("index", index);
    if !inner.is_empty() {
        e = e.with("field", inner);
    }
    e
}

/// Report usage events
///
/// After-the-fact metering in bulk, for platforms that do not call start and complete: each
/// event is a finished request, rated with the price version in force at its `timestamp` and
/// the account's terms, and charged to the balance at once (no hold, no concurrency check;
/// the balance may go negative). At most 10000 events per call, in a body of at most 16 MiB.
///
/// One rule decides what refuses the call and what an event answers alone. The call is
/// refused as a whole, with nothing written, when the body is not of the documented shape: any
/// event with a missing or unknown field, a value of the wrong type, or an id, username,
/// endpoint id, timestamp or status code that does not parse (400; `error.index` names the
/// event and `error.field` the field). Every event of a well-formed call gets one result, in
/// order: its billing result, or its own error for what the catalog, the accounts or the price
/// refuse (an unknown account or endpoint, no price in force, an output the price cannot rate,
/// a timestamp too far in the future), while the others are billed. An event whose successful
/// output lacks what the price measures is refused as a completion is (422 `output_mismatch`,
/// including a compute price without `inference_seconds`), unless the endpoint's
/// `missing_units` bills it otherwise. Idempotent on `event_id`: a duplicate answers the first
/// result with `duplicate: true` and bills nothing again; a refused event is not recorded, so
/// the same `event_id` sent again, corrected, is billed.
#[utoipa::path(
    post, path = "/v1/usage-events", tag = tags::GATEWAY, operation_id = "reportUsageEvents",
    security(("Key" = ["OPERATOR"])),
    request_body = EventsBody,
    responses(
        OperatorErrors,
        (status = 200, description = "One result per event, in order.", body = EventResults),
        (status = 400, description = "`validation_error`: the body or an event is malformed \
            (`error.index`, `error.field`); nothing was written.", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`: the body is larger than 16 MiB \
            (`error.limit_bytes`); nothing was written.", body = ErrorResponse),
    )
)]
pub async fn usage_events(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    crate::extract::Body(body): crate::extract::Body,
) -> Result<axum::Json<EventResults>, ApiError> {
    let body: EventsBody = crate::json::from_slice(&body).map_err(place_in_event)?;
    if body.events.len() > MAX_EVENTS_PER_CALL {
        return Err(ApiError::invalid(
            "events",
            format!("at most {MAX_EVENTS_PER_CALL} events per call"),
        ));
    }
    // An event's key must be one of its account's (the key cache answers; a key never changes
    // account): an event naming another is refused alone, and the others are billed.
    let mut refused: Vec<Option<ApiError>> = Vec::with_capacity(body.events.len());
    for (i, e) in body.events.iter().enumerate() {
        refused.push(match &e.api_key_id {
            Some(key) => {
                let ours = state
                    .engine
                    .api_key(key)
                    .await?
                    .is_some_and(|k| k.account.as_ref() == Some(&e.username));
                (!ours).then(|| {
                    ApiError::invalid(
                        "api_key_id",
                        format!(
                            "events[{i}]: `api_key_id` {key} names no key of account {}",
                            e.username
                        ),
                    )
                    .with("index", i)
                })
            }
            None => None,
        });
    }
    let ids: Vec<RequestId> = body.events.iter().map(|e| e.event_id.clone()).collect();
    let ops: Vec<Op> = body
        .events
        .into_iter()
        .zip(&refused)
        .filter(|(_, r)| r.is_none())
        .map(|(e, _)| e.op())
        .collect();
    let answers = if ops.is_empty() {
        Vec::new()
    } else {
        state.engine.execute_many(ops).await?
    };
    let mut answers = answers.into_iter();
    let results = refused
        .into_iter()
        .zip(ids)
        .map(|(refused, event_id)| {
            let answer = match refused {
                Some(e) => Err(e),
                None => answers
                    .next()
                    .expect("one answer per event sent")
                    .map_err(ApiError::from),
            };
            match answer {
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
                    error: Box::new(ApiError::server("unexpected outcome")),
                },
                Err(e) => EventResult::Refused {
                    event_id,
                    status_code: e.status.as_u16(),
                    error: Box::new(e),
                },
            }
        })
        .collect();
    Ok(axum::Json(EventResults { results }))
}
