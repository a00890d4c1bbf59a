//! The dispatcher: each endpoint's next requests started on free upstream slots, each call
//! run with fal's runner conventions, each request settled once.
//!
//! A round, per endpoint with upstreams: take the free slots, read as many next requests
//! ([`Reader::gateway_candidates`](tollgate_store::Reader::gateway_candidates): a few of each
//! account's, the accounts taking turns), and dispatch them in one batch
//! ([`Op::Dispatch`]: the hold is taken and the lease written in one commit). A request over
//! its account's concurrency limit is refused and stays queued, holding nothing; one that can
//! no longer be held (credits, a spending limit, a lock) is completed unbilled with that error
//! as its result. Each dispatched request gets a slot and a task that calls its upstream,
//! retries what fal's gateway retries, and answers the engine with what it got
//! ([`Op::GatewayAnswer`]). Rounds run when woken (a submission, a finished call) and every
//! `poll`, which also finds requests other servers queued and leases that ran out.

use crate::upstream::{Slot, UpstreamState};
use crate::Gateway;
use axum::response::IntoResponse;
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tollgate_api::error::ApiError;
use tollgate_core::catalog::EndpointDef;
use tollgate_core::gateway::{
    Bill, GatewayInput, GatewayRecord, GatewayResult, Lease, MAX_ATTEMPTS,
};
use tollgate_core::ids::RequestId;
use tollgate_core::machine::{Op, Outcome, Rejection};
use tollgate_core::price::{Dims, Output};
use tollgate_engine::{AdminCmd, AdminReply, EngineError};

/// The most requests of one account a round reads per endpoint.
const PER_ACCOUNT: usize = 4;
/// Gateway rows past their retention deleted per step.
const PRUNE_LIMIT: usize = 256;

/// Runs rounds until the task is aborted.
pub async fn run(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(gw.config.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = gw.wake.notified() => {}
        }
        if let Err(e) = round(&gw).await {
            tracing::warn!(error = %e, "gateway dispatch round failed; retrying at the next tick");
        }
    }
}

/// One round over every endpoint with upstreams.
pub async fn round(gw: &Arc<Gateway>) -> Result<(), EngineError> {
    let catalog = gw.api.engine.catalog();
    for def in catalog
        .endpoints
        .values()
        .filter(|d| !d.upstreams.is_empty())
    {
        while dispatch_endpoint(gw, def).await? {}
    }
    Ok(())
}

/// Dispatches what the endpoint's free slots take; whether any request left the queue (so
/// more may be dispatched now).
async fn dispatch_endpoint(gw: &Arc<Gateway>, def: &EndpointDef) -> Result<bool, EngineError> {
    let free = gw.upstreams.free(def);
    if free == 0 {
        return Ok(false);
    }
    let engine = &gw.api.engine;
    let now = engine.now();
    let endpoint = def.id.clone();
    let candidates = engine
        .read(move |r| r.gateway_candidates(&endpoint, now, PER_ACCOUNT.min(free), free))
        .await?;
    let mut slots = Vec::with_capacity(candidates.len());
    for _ in &candidates {
        match gw.upstreams.try_take(def) {
            Some(slot) => slots.push(slot),
            None => break,
        }
    }
    if slots.is_empty() {
        return Ok(false);
    }
    let lease = Lease {
        owner: gw.owner.clone(),
        until: now.plus_ms(millis(gw.config.lease)),
    };
    let ops = candidates
        .iter()
        .zip(&slots)
        .map(|(c, slot)| Op::Dispatch {
            request_id: c.request_id.clone(),
            lease: lease.clone(),
            machine_type: slot.upstream.def.machine_type.clone(),
        })
        .collect();
    let answers = engine.execute_many(ops).await?;
    let mut moved = false;
    for ((candidate, answer), slot) in candidates.iter().zip(answers).zip(slots) {
        match answer {
            Ok(Outcome::Dispatched { gateway, .. }) => {
                moved = true;
                spawn_call(gw, def.clone(), gateway, slot);
            }
            // Waits in the queue (its account is at its limit), or is another's now.
            Err(
                Rejection::ConcurrencyLimit { .. }
                | Rejection::Leased { .. }
                | Rejection::WrongState { .. },
            ) => {}
            Ok(other) => {
                tracing::error!(request_id = %candidate.request_id, ?other, "unexpected answer to a dispatch")
            }
            // It cannot start (its hold is not covered, a spending limit or a lock refuses it,
            // its price is gone): it completes unbilled with that error as its result.
            Err(e) => {
                let result = error_result(ApiError::from(e)).await;
                let op = Op::GatewayAnswer {
                    request_id: candidate.request_id.clone(),
                    result,
                    bill: Bill::Unbilled,
                };
                match engine.execute(op).await? {
                    Ok(_) => moved = true,
                    // Left queued: the next round tries it again.
                    Err(e) => {
                        tracing::warn!(request_id = %candidate.request_id, error = %e, "a refused gateway request could not be completed")
                    }
                }
                let _ = gw.finished.send(candidate.request_id.clone());
            }
        }
    }
    Ok(moved)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn spawn_call(gw: &Arc<Gateway>, def: EndpointDef, g: GatewayRecord, slot: Slot) {
    let id = g.request_id.clone();
    let mut running = gw.running.lock().expect("running calls");
    let task = tokio::spawn(call(gw.clone(), def, g, slot));
    running.insert(id, task.abort_handle());
}

/// Calls the request's upstreams until an answer or the last attempt, then settles it.
async fn call(gw: Arc<Gateway>, def: EndpointDef, g: GatewayRecord, first: Slot) {
    let mut attempt = 0;
    let mut slot = first;
    let (result, bill) = loop {
        attempt += 1;
        let verdict = attempt_call(&gw, &slot.upstream, &g.request_id, &g.input).await;
        match verdict {
            Verdict::Done(result, bill) => {
                gw.upstreams.answered(&slot.upstream);
                break (result, bill);
            }
            Verdict::Retry { result, retry } => {
                gw.upstreams.failed(&slot.upstream);
                if !retry || g.input.no_retry || attempt >= MAX_ATTEMPTS {
                    break (result, Bill::Unbilled);
                }
                let failed = slot.upstream.def.url.clone();
                drop(slot);
                tokio::time::sleep(backoff(&gw, attempt)).await;
                match gw.upstreams.take(&def, Some(&failed)).await {
                    Some(next) => slot = next,
                    // The catalog no longer names an upstream: the request fails unbilled.
                    None => return settle(&gw, &def, &g, result, Bill::Unbilled).await,
                }
            }
        }
    };
    drop(slot);
    settle(&gw, &def, &g, result, bill).await;
}

/// Records the request's answer, then frees what its call held.
async fn settle(
    gw: &Arc<Gateway>,
    def: &EndpointDef,
    g: &GatewayRecord,
    result: GatewayResult,
    bill: Bill,
) {
    let id = g.request_id.clone();
    let op = Op::GatewayAnswer {
        request_id: id.clone(),
        result: result.clone(),
        bill,
    };
    let mut answered = gw.api.engine.execute(op).await;
    if let Ok(Err(e @ Rejection::OutputMismatch { .. })) = &answered {
        // The endpoint's catalog refuses to bill an output without its units: the caller
        // gets the answer, unbilled, rather than the model server being called again.
        tracing::error!(request_id = %id, endpoint = %def.id, error = %e, "a model server's answer lacks what the endpoint's price measures and its missing_units refuses to bill it otherwise: completed unbilled");
        let op = Op::GatewayAnswer {
            request_id: id.clone(),
            result,
            bill: Bill::Unbilled,
        };
        answered = gw.api.engine.execute(op).await;
    }
    match answered {
        Ok(Ok(_)) => {}
        // Cancelled meanwhile: nothing to settle.
        Ok(Err(Rejection::WrongState { .. })) => {}
        Ok(Err(e)) => tracing::warn!(request_id = %id, error = %e, "a gateway answer was refused"),
        // Not settled: the lease runs out and the request is dispatched again.
        Err(e) => tracing::warn!(request_id = %id, error = %e, "a gateway answer was not recorded"),
    }
    gw.running.lock().expect("running calls").remove(&id);
    let _ = gw.finished.send(id);
    gw.wake.notify_one();
}

/// The delay before attempt `attempt + 1`: doubling from `retry_base`, up to `retry_max`,
/// drawn at random in its upper half.
fn backoff(gw: &Gateway, attempt: u32) -> Duration {
    let full = gw
        .config
        .retry_base
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(gw.config.retry_max);
    let half = full / 2;
    let jitter = rand::random::<u64>() % (millis(half).max(1) as u64);
    half + Duration::from_millis(jitter)
}

/// What one attempt ended with.
pub(crate) enum Verdict {
    /// The request's answer, billed as `Bill` says.
    Done(GatewayResult, Bill),
    /// A failed attempt (503, 504, 429, a refused connection, a timeout): `result` is what the
    /// caller gets if no attempt follows; `retry` false when the model server said not to.
    Retry { result: GatewayResult, retry: bool },
}

/// Calls `upstream` once with `input`, as fal's gateway calls a model server.
pub(crate) async fn attempt_call(
    gw: &Gateway,
    upstream: &UpstreamState,
    request_id: &RequestId,
    input: &GatewayInput,
) -> Verdict {
    let url = format!("{}{}", upstream.def.url, input.path);
    let started = Instant::now();
    let sent = gw
        .upstreams
        .client
        .post(&url)
        .timeout(Duration::from_secs(u64::from(upstream.def.timeout_s)))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-fal-request-id", request_id.as_str())
        .body(input.input.to_string())
        .send()
        .await;
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            let (status, kind) = if e.is_timeout() {
                (504, "upstream_timeout")
            } else {
                (503, "upstream_unavailable")
            };
            tracing::info!(request_id = %request_id, upstream = %upstream.def.url, error = %e, "upstream call failed");
            return Verdict::Retry {
                result: tollgate_error(
                    status,
                    kind,
                    &format!("the model server did not answer: {e}"),
                ),
                retry: true,
            };
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = match read_capped(resp, gw.config.max_body_bytes).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return Verdict::Done(
                tollgate_error(
                    502,
                    "result_too_large",
                    &format!(
                        "the model server's answer is larger than the gateway keeps ({} bytes)",
                        gw.config.max_body_bytes
                    ),
                ),
                Bill::Unbilled,
            )
        }
        Err(e) => {
            let (status, kind) = if e.is_timeout() {
                (504, "upstream_timeout")
            } else {
                (503, "upstream_unavailable")
            };
            return Verdict::Retry {
                result: tollgate_error(
                    status,
                    kind,
                    &format!("the model server's answer broke off: {e}"),
                ),
                retry: true,
            };
        }
    };
    let elapsed = started.elapsed();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let needs_retry = text("x-fal-needs-retry").map(|v| v == "1" || v == "true");
    let result = GatewayResult {
        status_code: status,
        content_type: headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: Arc::from(body.as_slice()),
        error_type: None,
    };
    if matches!(status, 429 | 503 | 504) || needs_retry == Some(true) {
        return Verdict::Retry {
            result,
            retry: needs_retry != Some(false),
        };
    }
    match status {
        200..=299 if text("x-fal-billable-units-webhook").as_deref() == Some("1") => {
            Verdict::Done(result, Bill::Deferred)
        }
        200..=299 | 400..=499 => {
            let billable_units = text("x-fal-billable-units").and_then(|v| {
                let units = tollgate_core::decimal::parse(&v).ok();
                if units.is_none() {
                    tracing::warn!(request_id = %request_id, value = %v, "x-fal-billable-units is not a decimal: ignored");
                }
                units
            });
            let output = if status < 300 {
                measure(&body)
            } else {
                Output::default()
            };
            Verdict::Done(
                result,
                Bill::Rate {
                    billable_units,
                    output: Box::new(output),
                    inference_seconds: Decimal::new(millis(elapsed), 3),
                },
            )
        }
        // Other 5xx: the model server's error, not billed, not retried.
        500..=599 => Verdict::Done(result, Bill::Unbilled),
        _ => Verdict::Done(
            tollgate_error(
                502,
                "upstream_bad_answer",
                &format!("the model server answered with status {status}"),
            ),
            Bill::Unbilled,
        ),
    }
}

/// The body, or `None` when it is longer than `cap`.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// What a price can measure in a fal output: its images and their sizes
/// (`{"images": [{"width": 1024, "height": 768, ...}]}`).
pub fn measure(body: &[u8]) -> Output {
    let Ok(serde_json::Value::Object(v)) = serde_json::from_slice(body) else {
        return Output::default();
    };
    let images = v
        .get("images")
        .and_then(|i| i.as_array())
        .map(|images| {
            images
                .iter()
                .filter_map(|i| {
                    Some(Dims {
                        width: i.get("width")?.as_u64()?,
                        height: i.get("height")?.as_u64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Output {
        images,
        ..Output::default()
    }
}

/// A result tollgate made: fal's error body (`{"detail": ...}`) with its type.
pub fn tollgate_error(status: u16, kind: &str, message: &str) -> GatewayResult {
    let body = serde_json::json!({ "detail": message, "error_type": kind });
    GatewayResult {
        status_code: status,
        content_type: Some("application/json".into()),
        body: Arc::from(body.to_string().into_bytes()),
        error_type: Some(kind.to_string()),
    }
}

/// An API error as a stored result: its status and envelope.
pub async fn error_result(e: ApiError) -> GatewayResult {
    let kind = e.kind.to_string();
    let resp = e.into_response();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    GatewayResult {
        status_code: status,
        content_type: Some("application/json".into()),
        body: Arc::from(body.to_vec()),
        error_type: Some(kind),
    }
}

/// Renews this server's leases every third of a lease (and ends the calls of requests it no
/// longer holds: cancelled, or taken over after its lease ran out), and deletes the results
/// past their retention.
pub async fn renew_leases(gw: Arc<Gateway>) {
    let every = gw.config.lease / 3;
    let mut last_prune: Option<Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        let ids: Vec<_> = gw
            .running
            .lock()
            .expect("running calls")
            .keys()
            .cloned()
            .collect();
        if !ids.is_empty() {
            let cmd = AdminCmd::RenewGatewayLeases {
                owner: gw.owner.to_string(),
                requests: ids.clone(),
                lease_ms: millis(gw.config.lease),
            };
            match gw.api.engine.admin(cmd).await {
                Ok(AdminReply::Held(held)) => {
                    let mut running = gw.running.lock().expect("running calls");
                    for id in ids.iter().filter(|id| !held.contains(id)) {
                        if let Some(call) = running.remove(id) {
                            call.abort();
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "gateway leases not renewed"),
            }
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_prune = Some(Instant::now());
            prune(&gw).await;
        }
    }
}

/// Deletes the gateway requests finished longer ago than the retention, a page at a time.
pub async fn prune(gw: &Gateway) {
    let engine = &gw.api.engine;
    loop {
        let before = engine.now().plus_ms(-millis(gw.config.result_retention));
        match engine
            .admin(AdminCmd::PruneGatewayResults {
                before,
                limit: PRUNE_LIMIT,
            })
            .await
        {
            Ok(AdminReply::Count(n)) if n == PRUNE_LIMIT => continue,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "gateway results past their retention not deleted");
                return;
            }
        }
    }
}
