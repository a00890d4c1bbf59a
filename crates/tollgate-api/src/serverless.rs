//! `POST /v1/runners/events` (operator key): the platform reports its serverless runners'
//! states (API.md section 8, docs/serverless.md). A call is one bulk, validated whole and
//! applied as one operation ([`Op::RunnerEvents`]): any refused event refuses the call and
//! nothing is written. The billing rule is the core's ([`tollgate_core::serverless`]).

use crate::error::{ApiError, ErrorResponse};
use crate::extract::{NoParams, Operator, Params};
use crate::gateway::place_in_event;
use crate::openapi::{tags, OperatorErrors};
use crate::wire::{self, Number};
use crate::AppState;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tollgate_core::ids::{
    AccountId, AppName, EnvironmentName, MachineType, RunnerEventId, RunnerId,
};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::serverless::{RunnerEvent, RunnerEventResult, RunnerState};
use tollgate_core::Timestamp;
use utoipa::ToSchema;

/// The most events one `POST /v1/runners/events` may carry.
pub const MAX_RUNNER_EVENTS_PER_CALL: usize = 10_000;

/// One report of a runner's state.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerEventBody {
    /// Your id of this report; the idempotency key (a report sent again with the same id and
    /// content is a duplicate; the same id for another report is refused).
    event_id: RunnerEventId,
    /// The runner, unique across the platform. Its account, app, environment, machine type,
    /// GPUs and surge are fixed by its first report.
    runner_id: RunnerId,
    /// The account that owns the app and pays for the runner.
    username: AccountId,
    /// The app's name as deployed, without the owner.
    app: AppName,
    /// The app's environment, when it has one.
    #[serde(default)]
    environment: Option<EnvironmentName>,
    /// A machine type of the catalog's `[machines]` (and `[machines_surge]` for a surge
    /// runner).
    machine_type: MachineType,
    /// GPUs of the runner, 1 to 64.
    #[serde(deserialize_with = "wire::gpus")]
    #[schema(minimum = 1, maximum = 64)]
    num_gpus: u32,
    /// The state the runner is in from `at` on.
    state: RunnerState,
    /// When the runner entered `state` (RFC 3339); not before the runner's previous report,
    /// at most 5 minutes in the future.
    #[serde(deserialize_with = "wire::time")]
    #[schema(value_type = String, format = DateTime)]
    at: Timestamp,
    /// Whether the runner runs at surge prices (default false).
    #[serde(default)]
    is_surge: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerEventsBody {
    /// 1 to 10000 reports; a runner's reports in time order.
    #[schema(min_items = 1, max_items = 10000)]
    events: Vec<RunnerEventBody>,
}

impl RunnerEventBody {
    fn event(self) -> RunnerEvent {
        RunnerEvent {
            event_id: self.event_id,
            runner: self.runner_id,
            account: self.username,
            app: self.app,
            environment: self.environment,
            machine_type: self.machine_type,
            num_gpus: self.num_gpus,
            state: self.state,
            at: self.at,
            is_surge: self.is_surge,
        }
    }
}

/// One report's answer.
#[derive(Serialize, ToSchema)]
pub struct RunnerEventResultView {
    event_id: RunnerEventId,
    runner_id: RunnerId,
    /// The report was applied before (same id, same content): nothing changed, nothing billed.
    duplicate: bool,
    /// What this report billed: the runner's time since it was last accounted, in the state
    /// it was in (zero for a duplicate and for unbilled states).
    billed_usd: Number,
    /// `billed_usd` exactly.
    billed_nano_usd: i64,
    /// The account's balance after the call's reports of it.
    balance_nano_usd: i64,
}

impl From<RunnerEventResult> for RunnerEventResultView {
    fn from(r: RunnerEventResult) -> Self {
        RunnerEventResultView {
            event_id: r.event_id,
            runner_id: r.runner,
            duplicate: r.duplicate,
            billed_usd: Number::usd(r.billed),
            billed_nano_usd: r.billed.0,
            balance_nano_usd: r.balance_after.0,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RunnerEventResults {
    /// One per report, in order.
    results: Vec<RunnerEventResultView>,
}

/// Report runner states
///
/// The platform's serverless runners, reported as they change state and at least once a
/// minute while they live (each report a new `event_id`). Seconds in `SETUP`, `IDLE`,
/// `RUNNING`, `DRAINING` and `TERMINATING` are billed × `num_gpus` at the machine type's
/// per-second price (the account's own if it has one; a surge runner's at the catalog's
/// surge price), and drawn from the owner's credits (no hold: the balance may go negative and
/// the account locks). `PENDING`, `DOCKER_PULL` and `TERMINATED` are free. A report covers
/// at most the grace (`[serverless] grace_s`, default 300 s) after its `at`: a runner that
/// stops reporting is billed up to its last report plus the grace, and no further until it
/// reports again. Between reports, tollgate bills running runners every minute.
///
/// The call is one bulk, validated whole: a malformed body (a missing or unknown field, an
/// unknown state, GPUs outside 1 to 64, a bad id or time, no events, more than 10000) or an
/// event refused by the billing rules (an unknown account, a machine type the catalog does
/// not price, a time before the runner's previous report or more than 5 minutes ahead, a
/// report of a runner already `TERMINATED`, a runner's fixed fields changed, an event id
/// reused for another report) refuses the whole
/// call with 400 `validation_error`, `error.index` naming the event (and `error.field` the
/// field, or `error.event_id` the event): nothing is written, so the corrected bulk can be
/// sent again. Idempotent on `event_id`.
#[utoipa::path(
    post, path = "/v1/runners/events", tag = tags::GATEWAY, operation_id = "reportRunnerEvents",
    security(("Key" = ["OPERATOR"])),
    request_body = RunnerEventsBody,
    responses(
        OperatorErrors,
        (status = 200, description = "One result per report, in order.",
            body = RunnerEventResults),
        (status = 400, description = "`validation_error`: the body or an event is malformed or \
            refused (`error.index`, and `error.field` or `error.event_id`); nothing was \
            written.", body = ErrorResponse),
        (status = 413, description = "`payload_too_large`: the body is larger than 16 MiB \
            (`error.limit_bytes`); nothing was written.", body = ErrorResponse),
    )
)]
pub async fn runner_events(
    State(state): State<AppState>,
    _: Operator,
    _: Params<NoParams>,
    crate::extract::Body(body): crate::extract::Body,
) -> Result<axum::Json<RunnerEventResults>, ApiError> {
    let body: RunnerEventsBody = crate::json::from_slice(&body).map_err(place_in_event)?;
    if body.events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "events is empty: send 1 to 10000 runner events",
        ));
    }
    if body.events.len() > MAX_RUNNER_EVENTS_PER_CALL {
        return Err(ApiError::invalid(
            "events",
            format!("at most {MAX_RUNNER_EVENTS_PER_CALL} events per call"),
        ));
    }
    let events = body
        .events
        .into_iter()
        .map(RunnerEventBody::event)
        .collect();
    match state.engine.execute(Op::RunnerEvents(events)).await?? {
        Outcome::RunnerEvents { results } => Ok(axum::Json(RunnerEventResults {
            results: results.into_iter().map(Into::into).collect(),
        })),
        other => {
            tracing::error!(outcome = ?other, "runner events answered another outcome");
            Err(ApiError::server("unexpected outcome"))
        }
    }
}
