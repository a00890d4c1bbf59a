//! Gateway mode: requests that tollgate queues and dispatches to the platform's model servers
//! itself (API.md section 10), as requests of [`Source::Gateway`].
//!
//! A gateway request is an ordinary request of the state machine (held when it starts, settled
//! when it ends, a 5xx voided) with a [`GatewayRecord`] beside it: the caller's input, where
//! the answer goes, the dispatcher's lease and the model server's answer. Both are written by
//! the same operations in the same commit, so a request is durable when its submission is
//! answered, and money moves only through the request's state: however many times a model
//! server is called (retries, a server that died mid-call), the request is billed once.
//!
//! - [`Op::GatewaySubmit`](crate::machine::Op::GatewaySubmit): queued, holding nothing.
//! - [`Op::Dispatch`](crate::machine::Op::Dispatch): its turn came; the hold is taken (a
//!   request over the account's concurrency limit is refused and stays queued) and the
//!   dispatcher's lease written. A request whose lease ran out (its dispatcher died) is taken
//!   over without a second hold.
//! - [`Op::GatewayAnswer`](crate::machine::Op::GatewayAnswer): the model server's answer (or
//!   the last failure), stored with the request's settlement, or kept aside while the model
//!   server's units are awaited.
//! - [`Op::GatewayUnits`](crate::machine::Op::GatewayUnits): the awaited units, billed.
//! - [`Op::GatewayCancel`](crate::machine::Op::GatewayCancel): removed from the queue or its
//!   call ended, never billed.

use crate::ids::{AccountId, ApiKeyId, EndpointId, RequestId};
use crate::price::Output;
use crate::time::Timestamp;
use rust_decimal::Decimal;
use std::sync::Arc;

/// The most attempts a request gets (fal's gateway: 10).
pub const MAX_ATTEMPTS: u32 = 10;

/// What a caller submitted, kept until the request is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayInput {
    /// The path below the endpoint (`""` or `/...`), sent to the model server as is.
    pub path: String,
    /// The JSON input, as the caller sent it.
    pub input: Arc<str>,
    /// `fal_webhook`: where the completed request is posted.
    pub webhook: Option<String>,
    /// `x-fal-no-retry`: one attempt only.
    pub no_retry: bool,
}

/// Where a gateway request is in the gateway's hands (its money is in the request's status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GatewayState {
    /// Waiting for its turn; holds nothing.
    Queued,
    /// Dispatched: a model server is being called under a lease.
    Running,
    /// Answered; billed once the model server posts its units.
    AwaitingUnits,
    /// Finished: answered, failed, refused or cancelled; its result is stored.
    Done,
}

impl GatewayState {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayState::Queued => "queued",
            GatewayState::Running => "running",
            GatewayState::AwaitingUnits => "awaiting_units",
            GatewayState::Done => "done",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => GatewayState::Queued,
            "running" => GatewayState::Running,
            "awaiting_units" => GatewayState::AwaitingUnits,
            "done" => GatewayState::Done,
            _ => return None,
        })
    }
}

/// A dispatcher's claim on a request: no other dispatcher calls a model server for it until
/// `until` has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The dispatcher (one per server process).
    pub owner: Arc<str>,
    pub until: Timestamp,
}

/// What the caller gets back: the model server's answer, or the error tollgate completed the
/// request with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayResult {
    pub status_code: u16,
    pub content_type: Option<String>,
    pub body: Arc<[u8]>,
    /// Why tollgate ended the request, when it did (`upstream_unavailable`,
    /// `insufficient_credits`, `request_cancelled`, ...); `None` for a model server's answer.
    pub error_type: Option<String>,
}

/// A gateway request's own row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRecord {
    pub request_id: RequestId,
    pub account: AccountId,
    pub endpoint: EndpointId,
    pub api_key: Option<ApiKeyId>,
    pub input: GatewayInput,
    pub submitted_at: Timestamp,
    pub state: GatewayState,
    pub lease: Option<Lease>,
    /// How many times it was dispatched (taken over after a lease ran out included).
    pub dispatches: u32,
    pub result: Option<GatewayResult>,
    pub finished_at: Option<Timestamp>,
}

/// How a model server's answer is billed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bill {
    /// Rated by the endpoint's price as a completion with `result`'s status code: units from
    /// `x-fal-billable-units`, else measured from `output`, else the endpoint's
    /// `missing_units`; `inference_seconds` measured by the dispatcher (the answering
    /// attempt's call).
    Rate {
        billable_units: Option<Decimal>,
        output: Box<Output>,
        inference_seconds: Decimal,
    },
    /// `x-fal-billable-units-webhook: 1`: billed when the model server posts its units.
    Deferred,
    /// Not billed: every attempt failed, or the request could not start (its hold or a
    /// spending limit refused it when its turn came).
    Unbilled,
}

use crate::ids::MachineType;
use crate::ledger::TransferKind;
use crate::machine::{
    complete, lookup, release, start, submit as submit_request, BatchState, Completion, Ctx,
    Outcome, Rating, Rejection, RequestRecord, RequestStatus, Source,
};
use crate::pricing::Charge;

const GATEWAY: &[Source] = &[Source::Gateway];

fn record<'s>(state: &'s BatchState, id: &RequestId) -> Result<&'s GatewayRecord, Rejection> {
    state
        .gateway
        .get(id)
        .ok_or_else(|| Rejection::UnknownRequest(id.clone()))
}

fn put(state: &mut BatchState, g: GatewayRecord) {
    state.dirty_gateway.insert(g.request_id.clone());
    state.gateway.insert(g.request_id.clone(), g);
}

pub(crate) fn submit(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    account: AccountId,
    api_key: Option<ApiKeyId>,
    endpoint: EndpointId,
    input: GatewayInput,
) -> Result<Outcome, Rejection> {
    let outcome = submit_request(
        state,
        cx,
        request_id.clone(),
        account.clone(),
        api_key.clone(),
        endpoint.clone(),
        Source::Gateway,
    )?;
    if let Outcome::Submitted {
        replayed: false, ..
    } = outcome
    {
        put(
            state,
            GatewayRecord {
                request_id,
                account,
                endpoint,
                api_key,
                input,
                submitted_at: cx.now,
                state: GatewayState::Queued,
                lease: None,
                dispatches: 0,
                result: None,
                finished_at: None,
            },
        );
    }
    Ok(outcome)
}

pub(crate) fn dispatch(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    lease: Lease,
    machine_type: Option<MachineType>,
) -> Result<Outcome, Rejection> {
    let req = lookup(state, &request_id, GATEWAY)?.clone();
    let g = record(state, &request_id)?.clone();
    let resumed = match (req.status, g.state) {
        (RequestStatus::InQueue, GatewayState::Queued) => {
            // Refused (over the concurrency limit, short of credits, ...): nothing written,
            // the request stays queued.
            start(
                state,
                cx,
                request_id.clone(),
                Source::Gateway,
                machine_type,
                None,
                None,
            )?;
            false
        }
        (RequestStatus::InProgress, GatewayState::Running) => {
            if let Some(held) = g.lease.as_ref().filter(|l| l.until > cx.now) {
                if held.owner != lease.owner {
                    return Err(Rejection::Leased {
                        id: request_id,
                        owner: held.owner.clone(),
                        until: held.until,
                    });
                }
            }
            true
        }
        (status, _) => {
            return Err(Rejection::WrongState {
                id: request_id,
                status,
                action: "dispatch",
            })
        }
    };
    // A dispatched request's hold lasts while it runs: its dispatcher's lease, renewed while
    // it calls, says whether anyone still does, and a request whose dispatcher died is taken
    // over, not expired.
    let mut request = state.requests[&request_id].clone();
    request.hold_expires_at = None;
    state.put_request(request.clone());
    let g = GatewayRecord {
        state: GatewayState::Running,
        lease: Some(lease),
        dispatches: g.dispatches + 1,
        ..g
    };
    put(state, g.clone());
    Ok(Outcome::Dispatched {
        gateway: g,
        request,
        resumed,
    })
}

pub(crate) fn answer(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    result: GatewayResult,
    bill: Bill,
) -> Result<Outcome, Rejection> {
    let req = lookup(state, &request_id, GATEWAY)?.clone();
    let g = record(state, &request_id)?.clone();
    crate::policy::final_status(result.status_code)?;
    let outcome = match (req.status, g.state, bill) {
        (status, _, _) if status.is_final() => {
            return replay(&req);
        }
        (_, GatewayState::AwaitingUnits, _) => {
            return Ok(Outcome::AwaitingUnits { replayed: true })
        }
        (RequestStatus::InQueue, _, Bill::Unbilled) => fail_queued(state, cx, req, &result)?,
        (RequestStatus::InProgress, _, Bill::Deferred) => {
            // Billed when the units come, or voided by the sweeper if they never do.
            let def = cx
                .catalog
                .endpoints
                .get(&req.endpoint)
                .ok_or_else(|| Rejection::UnknownEndpoint(req.endpoint.clone()))?;
            let timeout_ms = i64::from(def.hold_timeout_s) * 1000;
            state.put_request(RequestRecord {
                hold_expires_at: Some(cx.now.plus_ms(timeout_ms)),
                ..req
            });
            put(
                state,
                GatewayRecord {
                    state: GatewayState::AwaitingUnits,
                    lease: None,
                    result: Some(result),
                    ..g
                },
            );
            return Ok(Outcome::AwaitingUnits { replayed: false });
        }
        (
            RequestStatus::InProgress,
            _,
            Bill::Rate {
                billable_units,
                output,
                inference_seconds,
            },
        ) => complete(
            state,
            cx,
            request_id,
            Source::Gateway,
            Rating::Rate {
                status_code: result.status_code,
                output: *output,
                billable_units,
                inference_seconds: Some(inference_seconds),
            },
        )?,
        (RequestStatus::InProgress, _, Bill::Unbilled) => complete(
            state,
            cx,
            request_id,
            Source::Gateway,
            Rating::Unbilled {
                status_code: result.status_code,
            },
        )?,
        (status, _, _) => {
            return Err(Rejection::WrongState {
                id: request_id,
                status,
                action: "answer",
            })
        }
    };
    finish(state, cx, g, result);
    Ok(outcome)
}

/// The first answer again: a request is answered once.
fn replay(req: &RequestRecord) -> Result<Outcome, Rejection> {
    match &req.completion {
        Some(completion) => Ok(Outcome::Completed {
            request: req.clone(),
            completion: completion.clone(),
            replayed: true,
        }),
        None => Err(Rejection::WrongState {
            id: req.id.clone(),
            status: req.status,
            action: "answer",
        }),
    }
}

fn finish(state: &mut BatchState, cx: &Ctx, g: GatewayRecord, result: GatewayResult) {
    if let Some(url) = &g.input.webhook {
        // Posted to the caller's `fal_webhook` through the outbox, from this commit on.
        state.event(
            &g.account,
            cx.now,
            crate::events::EventData::RequestCompleted {
                request_id: g.request_id.clone(),
                endpoint_id: g.endpoint.clone(),
                url: url.clone(),
            },
        );
    }
    put(
        state,
        GatewayRecord {
            state: GatewayState::Done,
            lease: None,
            result: Some(result),
            finished_at: Some(cx.now),
            ..g
        },
    );
}

/// A queued request that could not start when its turn came: completed unbilled with the
/// refusal's status, having held nothing.
fn fail_queued(
    state: &mut BatchState,
    cx: &Ctx,
    req: RequestRecord,
    result: &GatewayResult,
) -> Result<Outcome, Rejection> {
    let def = cx
        .catalog
        .endpoints
        .get(&req.endpoint)
        .ok_or_else(|| Rejection::UnknownEndpoint(req.endpoint.clone()))?;
    let unit = cx
        .catalog
        .version(req.price_version)
        .map(|v| v.rule.unit_label())
        .unwrap_or_else(|| def.id.to_string());
    let balance_after = state.account_mut(&req.account)?.credit.balance;
    let completion = Completion {
        status_code: result.status_code,
        billed: false,
        unit,
        charge: Charge::FREE,
        balance_after,
        late: false,
    };
    let done = RequestRecord {
        status: if result.status_code < 400 {
            RequestStatus::Completed
        } else {
            RequestStatus::Failed
        },
        finished_at: Some(cx.now),
        completion: Some(completion.clone()),
        ..req
    };
    state.completed.push(done.id.clone());
    state.put_request(done.clone());
    Ok(Outcome::Completed {
        request: done,
        completion,
        replayed: false,
    })
}

pub(crate) fn units(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    billable_units: Decimal,
) -> Result<Outcome, Rejection> {
    let req = lookup(state, &request_id, GATEWAY)?.clone();
    let g = record(state, &request_id)?.clone();
    if req.status.is_final() && req.status != RequestStatus::Expired {
        return replay(&req);
    }
    let Some(result) = g
        .result
        .clone()
        .filter(|_| g.state == GatewayState::AwaitingUnits)
    else {
        return Err(Rejection::Invalid {
            field: "request_id",
            reason: format!(
                "request {request_id} does not await billable units: its model server did not \
                 answer with `x-fal-billable-units-webhook: 1`"
            ),
        });
    };
    // Measured from dispatch to the answer was the model server's business; what it posts is
    // what is billed, as a completion with its answer's status.
    let outcome = complete(
        state,
        cx,
        request_id,
        Source::Gateway,
        Rating::Rate {
            status_code: result.status_code,
            output: Output::default(),
            billable_units: Some(billable_units),
            inference_seconds: None,
        },
    )?;
    finish(state, cx, g, result);
    Ok(outcome)
}

pub(crate) fn cancel(
    state: &mut BatchState,
    cx: &Ctx,
    request_id: RequestId,
    account: AccountId,
) -> Result<Outcome, Rejection> {
    let req = lookup(state, &request_id, GATEWAY)?.clone();
    if req.account != account {
        return Err(Rejection::UnknownRequest(request_id));
    }
    let g = record(state, &request_id)?.clone();
    if g.state == GatewayState::AwaitingUnits {
        return Err(Rejection::WrongState {
            id: request_id,
            status: RequestStatus::Completed,
            action: "cancel",
        });
    }
    let bills = cx
        .catalog
        .endpoints
        .get(&req.endpoint)
        .is_some_and(|d| d.cancellation == crate::catalog::Cancellation::ComputeSeconds);
    let outcome = if bills && req.status == RequestStatus::InProgress {
        complete(
            state,
            cx,
            request_id,
            Source::Gateway,
            Rating::CancelledComputeSeconds,
        )?
    } else {
        release(state, cx, request_id, TransferKind::Void, GATEWAY)?
    };
    if matches!(
        outcome,
        Outcome::Cancelled { replayed: false }
            | Outcome::Completed {
                replayed: false,
                ..
            }
    ) {
        let body: Arc<[u8]> =
            Arc::from(
            &br#"{"detail":"Request was cancelled before it completed","error_type":"request_cancelled"}"#[..],
        );
        finish(
            state,
            cx,
            g,
            GatewayResult {
                status_code: 400,
                content_type: Some("application/json".into()),
                body,
                error_type: Some("request_cancelled".into()),
            },
        );
    }
    Ok(outcome)
}
