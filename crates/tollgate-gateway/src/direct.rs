//! fal's direct API on the direct listener: `POST /{endpoint}[/{path}]` answers with the
//! model server's output. No queue and no retries: the request is submitted and started in
//! one batch (over the concurrency limit it is refused with 429, having held nothing), its
//! upstream called once, and the request settled with the answer, as the lifecycle API
//! would settle it.

use crate::dispatch::{attempt_call, Verdict};
use crate::queue::{cost, endpoint_at, json_input};
use crate::Gateway;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::{Extension, Router};
use std::sync::Arc;
use tollgate_api::error::ApiError;
use tollgate_api::extract::{Api, Customer};
use tollgate_api::AppState;
use tollgate_core::gateway::{Bill, GatewayInput, GatewayResult};
use tollgate_core::ids::RequestId;
use tollgate_core::machine::{Op, Outcome, Rejection};

pub fn router(gw: Arc<Gateway>) -> Router {
    let limit = gw.config.max_body_bytes;
    Router::new()
        .fallback(call)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(Extension(gw.clone()))
        .with_state(gw.api.clone())
}

async fn call(
    State(api): State<AppState>,
    Extension(gw): Extension<Arc<Gateway>>,
    customer: Customer<Api>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the direct API takes POST /{endpoint}[/{path}]",
        ));
    }
    let path = parts.uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (endpoint, sub_path) = endpoint_at(&gw, &segments).ok_or_else(|| {
        ApiError::not_found(format!("no endpoint served by the gateway at {path}"))
    })?;
    let body = axum::body::to_bytes(body, gw.config.max_body_bytes)
        .await
        .map_err(|_| ApiError::payload_too_large(gw.config.max_body_bytes))?;
    let input = GatewayInput {
        path: sub_path,
        input: Arc::from(json_input(&body)?),
        webhook: None,
        no_retry: true,
    };
    let def = api
        .engine
        .catalog()
        .endpoints
        .get(&endpoint)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("unknown endpoint {endpoint}")))?;
    let request_id = RequestId::parse_uuid(&uuid::Uuid::new_v4().to_string())
        .expect("a v4 UUID is a request id");
    let ops = vec![
        Op::Submit {
            request_id: request_id.clone(),
            account: customer.account.clone(),
            api_key: Some(customer.key_id.clone()),
            endpoint: endpoint.clone(),
        },
        // Held (and counted against the concurrency limit) before waiting for a slot, so a
        // call over the limit is refused at once. Priced on the first upstream's machine.
        Op::Start {
            request_id: request_id.clone(),
            machine_type: def.upstreams.first().and_then(|u| u.machine_type.clone()),
            num_gpus: None,
            hold_units: None,
        },
    ];
    let mut answers = api.engine.execute_many(ops).await?.into_iter();
    answers.next().expect("a submission's answer")?;
    if let Err(e) = answers.next().expect("a start's answer") {
        // Not started: the submission is withdrawn, having held nothing.
        let _ = api
            .engine
            .execute(Op::Cancel {
                request_id: request_id.clone(),
            })
            .await;
        return Err(e.into());
    }
    let Some(slot) = gw.upstreams.take(&def, None).await else {
        let _ = api.engine.execute(Op::Cancel { request_id }).await;
        return Err(ApiError::not_found(format!(
            "endpoint {endpoint} has no upstream"
        )));
    };
    let verdict = attempt_call(&gw, &slot.upstream, &request_id, &input).await;
    drop(slot);
    gw.wake.notify_one();
    let (result, settle) = match verdict {
        Verdict::Done(result, Bill::Deferred) => (result, None),
        Verdict::Done(
            result,
            Bill::Rate {
                billable_units,
                output,
                inference_seconds,
            },
        ) => {
            let op = Op::Complete {
                request_id: request_id.clone(),
                status_code: result.status_code,
                output: *output,
                billable_units,
                inference_seconds: Some(inference_seconds),
            };
            (result, Some(op))
        }
        // A server error: recorded as failed, not billed.
        Verdict::Done(result, Bill::Unbilled) if result.status_code >= 500 => {
            let op = Op::Complete {
                request_id: request_id.clone(),
                status_code: result.status_code,
                output: Default::default(),
                billable_units: None,
                inference_seconds: None,
            };
            (result, Some(op))
        }
        // A failed attempt (429, 503, 504, no answer): voided.
        Verdict::Done(result, Bill::Unbilled) | Verdict::Retry { result, .. } => (
            result,
            Some(Op::Cancel {
                request_id: request_id.clone(),
            }),
        ),
    };
    let mut billed = None;
    if let Some(op) = settle {
        match api.engine.execute(op).await? {
            Ok(Outcome::Completed { request, .. }) => billed = cost(&request),
            Ok(_) => {}
            Err(e @ Rejection::OutputMismatch { .. }) => {
                tracing::error!(request_id = %request_id, endpoint = %endpoint, error = %e, "a model server's answer lacks what the endpoint's price measures and its missing_units refuses to bill it otherwise: voided");
                let _ = api
                    .engine
                    .execute(Op::Cancel {
                        request_id: request_id.clone(),
                    })
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(answer(&result, &request_id, billed))
}

fn answer(result: &GatewayResult, request_id: &RequestId, cost: Option<i64>) -> Response {
    let mut resp = crate::queue::answer(result, cost);
    resp.headers_mut().insert(
        "x-fal-request-id",
        request_id.as_str().parse().expect("a UUID"),
    );
    resp
}
