//! Serverless runner time (API.md section 8, docs/serverless.md): the platform reports each
//! runner's states in time order; tollgate bills the seconds spent in the billed states
//! (`SETUP`, `IDLE`, `RUNNING`, `DRAINING`, `TERMINATING`) × `num_gpus` at the machine type's
//! per-second price (the account's own `machine_prices` term if it has one; surge runners at
//! the catalog's `[machines_surge]` price), drawn from the owner's credits as the runner runs.
//!
//! **The timeline.** A report at `at` says the runner is in `state` from `at` on. Each report
//! covers at most the grace (`ServerlessSettings::grace_ms`) after it: a runner is accounted up
//! to `min(next report's at, last report's at + grace)` and no further until it reports again
//! (the gap is not billed). `RunnerRecord::cap_at` is that limit (`last_at + grace`; the
//! report's own `at` for `TERMINATED`).
//!
//! **One cursor.** `RunnerRecord::settled_until` is the time up to which the runner's time is
//! accounted (billed if its state is billed, counted in the runner-state history whatever the
//! state). It only moves forward, so no second is accounted twice. It moves when a report
//! arrives (to `min(at, cap_at)`, in the state before the report) and when the per-minute
//! settlement runs (`Op::SettleRunner`: to `min(cap_at, the start of the current UTC minute)`).
//! A report whose `at` is before `settled_until` (the settlement ran between the report's `at`
//! and its arrival) takes effect from `settled_until`: seconds already accounted are not
//! accounted again, in either state. Sent as they happen, reports are exact.
//!
//! **Pieces.** Accounted time is cut at UTC minute edges into pieces; each billed piece is one
//! line item (`billed_at` = the piece's start, so every rollup and every bucket of any time
//! zone holds exactly its seconds) whose endpoint is the runner's [`Line`] key and whose request
//! id is [`line_item_request_id`]. Its quantity is GPU-seconds (`ms × num_gpus / 1000`, exact).
//!
//! **Exact sums.** A runner keeps a running [`Segment`] per (unit price, percent discount): the
//! GPU-seconds billed under it and the nano-USD charged so far. A piece is charged the
//! difference of the segment's rounded cumulative amounts: subtotal `S(q) =
//! round(q × unit_price)`, total `T(q) = round(S(q) × (100 − percent) / 100)`, discount `S − T`
//! (each non-negative and non-decreasing in `q`). So a runner billed under one price is charged
//! exactly `T(total GPU-seconds)`, however many settlements cut its time. A new price or
//! discount starts a new segment.
//!
//! **Idempotency.** Every event id is kept (`RunnerEventRecord`); an event whose id is known is
//! a duplicate (answered as one, changing nothing) if it says the same thing, else refused.
//! An event of a runner older than its last report is refused (`time going backwards`) unless
//! it is a duplicate. A bulk of events is validated whole before any is applied: one refused
//! event refuses the bulk, and nothing is written ([`crate::machine::Rejection::InvalidRunnerEvent`]).

use crate::catalog::Catalog;
use crate::ids::{
    AccountId, AppName, EndpointId, EnvironmentName, MachineType, RequestId, RunnerEventId,
    RunnerId,
};
use crate::machine::{BatchState, Outcome, Rejection};
use crate::money::Nanos;
use crate::time::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The deployment's serverless settings (configuration, set on every batch by the engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerlessSettings {
    /// How long after its last report a runner is still accounted (`[serverless] grace_s`).
    pub grace_ms: i64,
}

impl Default for ServerlessSettings {
    fn default() -> Self {
        ServerlessSettings {
            grace_ms: DEFAULT_GRACE_MS,
        }
    }
}

/// `[serverless] grace_s` when unset: 300 s.
pub const DEFAULT_GRACE_MS: i64 = 300_000;
/// The longest grace accepted (one day).
pub const MAX_GRACE_MS: i64 = 86_400_000;
/// How far in the future (tollgate's clock) a report's `at` may be.
pub const MAX_EVENT_SKEW_MS: i64 = 300_000;
/// The most GPUs one runner may report.
pub const MAX_GPUS: u32 = 64;
/// The prefix of every serverless line's endpoint key; the catalog refuses endpoints under it.
pub const ENDPOINT_PREFIX: &str = "serverless/";

/// A runner's state, as fal's runners report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RunnerState {
    Pending,
    DockerPull,
    Setup,
    Idle,
    Running,
    Draining,
    Terminating,
    Terminated,
}

impl RunnerState {
    pub const ALL: [RunnerState; 8] = [
        RunnerState::Pending,
        RunnerState::DockerPull,
        RunnerState::Setup,
        RunnerState::Idle,
        RunnerState::Running,
        RunnerState::Draining,
        RunnerState::Terminating,
        RunnerState::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Pending => "PENDING",
            RunnerState::DockerPull => "DOCKER_PULL",
            RunnerState::Setup => "SETUP",
            RunnerState::Idle => "IDLE",
            RunnerState::Running => "RUNNING",
            RunnerState::Draining => "DRAINING",
            RunnerState::Terminating => "TERMINATING",
            RunnerState::Terminated => "TERMINATED",
        }
    }

    pub fn parse(s: &str) -> Option<RunnerState> {
        RunnerState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether seconds in this state are billed (fal-billing.md section 5).
    pub fn is_billed(self) -> bool {
        matches!(
            self,
            RunnerState::Setup
                | RunnerState::Idle
                | RunnerState::Running
                | RunnerState::Draining
                | RunnerState::Terminating
        )
    }

    /// The runner-state history's column this state counts in (`None`: `TERMINATED`).
    pub fn history(self) -> Option<HistoryState> {
        match self {
            RunnerState::Pending | RunnerState::DockerPull | RunnerState::Setup => {
                Some(HistoryState::Pending)
            }
            RunnerState::Idle => Some(HistoryState::Idle),
            RunnerState::Running => Some(HistoryState::Running),
            RunnerState::Draining | RunnerState::Terminating => Some(HistoryState::Draining),
            RunnerState::Terminated => None,
        }
    }
}

/// The four columns of fal's runner-state history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HistoryState {
    Running,
    Idle,
    Pending,
    Draining,
}

/// What a serverless line item is billed as: the key its usage is grouped by (fal's
/// `/serverless/usage` rows: app, environment, machine type, surge; the unit price and the
/// discount are the line item's own). Stored as the line item's endpoint, under
/// [`ENDPOINT_PREFIX`]: `serverless/<app>/<environment or empty>/<machine_type>/<standard|surge>`,
/// so invoices, statements, rollups and reports carry serverless usage through the same rows
/// as model usage, and reads that are about models leave these out.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Line {
    pub app: AppName,
    pub environment: Option<EnvironmentName>,
    pub machine_type: MachineType,
    pub is_surge: bool,
}

impl Line {
    /// The endpoint key line items and rollups store.
    pub fn endpoint(&self) -> EndpointId {
        todo!("serverless::Line::endpoint")
    }

    /// The line an endpoint key names (`None` for a model endpoint).
    pub fn of(endpoint: &EndpointId) -> Option<Line> {
        let _ = endpoint;
        todo!("serverless::Line::of")
    }

    /// Whether an endpoint id is a serverless line's key (under [`ENDPOINT_PREFIX`]).
    pub fn is_key(endpoint: &str) -> bool {
        endpoint.starts_with(ENDPOINT_PREFIX)
    }

    /// How invoices, statements and reports name the line: `my-app (production) on
    /// GPU-H100 ×surge`-like text, decided in one place.
    pub fn describe(&self) -> String {
        todo!("serverless::Line::describe")
    }
}

/// The request id of a runner's line items and charge transfers: `runner:<runner_id>`.
pub fn line_item_request_id(runner: &RunnerId) -> RequestId {
    let _ = runner;
    todo!("serverless::line_item_request_id")
}

/// One report of a runner's state (an element of `POST /v1/runners/events`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerEvent {
    pub event_id: RunnerEventId,
    pub runner: RunnerId,
    pub account: AccountId,
    pub app: AppName,
    pub environment: Option<EnvironmentName>,
    pub machine_type: MachineType,
    pub num_gpus: u32,
    pub state: RunnerState,
    pub at: Timestamp,
    pub is_surge: bool,
}

/// A runner event as stored (its id kept forever: duplicates are found by it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerEventRecord {
    pub event_id: RunnerEventId,
    pub runner: RunnerId,
    pub account: AccountId,
    pub state: RunnerState,
    pub at: Timestamp,
    /// When tollgate applied it (the batch's `now`).
    pub received_at: Timestamp,
}

/// A price segment of a runner: what it has been billed so far under one unit price and
/// discount (see the module's "Exact sums").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub unit_price: Decimal,
    pub percent_discount: Option<Decimal>,
    /// GPU-seconds billed under this segment.
    pub quantity: Decimal,
    pub subtotal: Nanos,
    pub total: Nanos,
}

/// A runner as the store keeps it: who owns it, what it runs on (fixed by its first report:
/// a later report that changes the account, app, environment, machine type, GPUs or surge is
/// refused), and where its timeline stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerRecord {
    pub id: RunnerId,
    pub account: AccountId,
    pub app: AppName,
    pub environment: Option<EnvironmentName>,
    pub machine_type: MachineType,
    pub num_gpus: u32,
    pub is_surge: bool,
    pub state: RunnerState,
    /// When the current state began (the `at` of the report that set it).
    pub state_at: Timestamp,
    /// The latest report's `at`.
    pub last_at: Timestamp,
    /// The runner's time is accounted up to here (see the module's "One cursor").
    pub settled_until: Timestamp,
    /// How far the runner may be accounted without another report: `last_at + grace`, or
    /// `last_at` once `TERMINATED`. Due for settlement while `settled_until < cap_at`.
    pub cap_at: Timestamp,
    /// The first report's `at`.
    pub first_at: Timestamp,
    /// The current price segment (`None` before the first billed piece).
    pub segment: Option<Segment>,
    /// Everything billed to the runner so far (all segments).
    pub billed: Nanos,
}

impl RunnerRecord {
    /// The line its billed pieces are recorded under.
    pub fn line(&self) -> Line {
        Line {
            app: self.app.clone(),
            environment: self.environment.clone(),
            machine_type: self.machine_type.clone(),
            is_surge: self.is_surge,
        }
    }

    /// Whether the runner is alive at `now`: not terminated and reported within its grace.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.state != RunnerState::Terminated && now < self.cap_at
    }
}

/// Time a runner spent in one history column within one UTC minute, summed per app: the
/// runner-state history's rollup (a batch's deltas; the store adds them up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerMinute {
    pub account: AccountId,
    pub app: AppName,
    /// The minute's start, UTC.
    pub slot: Timestamp,
    pub state: HistoryState,
    /// Runner-milliseconds (not × GPUs).
    pub ms: i64,
}

/// A runner named by an `account.locked` event: the runners alive when the account locked
/// (the platform decides whether to stop them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRunner {
    pub runner_id: RunnerId,
    pub app: AppName,
    pub environment: Option<EnvironmentName>,
    pub machine_type: MachineType,
    pub num_gpus: u32,
    pub state: RunnerState,
}

impl From<&RunnerRecord> for LiveRunner {
    fn from(r: &RunnerRecord) -> Self {
        LiveRunner {
            runner_id: r.id.clone(),
            app: r.app.clone(),
            environment: r.environment.clone(),
            machine_type: r.machine_type.clone(),
            num_gpus: r.num_gpus,
            state: r.state,
        }
    }
}

/// The answer to one event of a bulk, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerEventResult {
    pub event_id: RunnerEventId,
    pub runner: RunnerId,
    /// The id was applied before: nothing changed.
    pub duplicate: bool,
    /// What this event's report billed (the time since the runner's previous report).
    pub billed: Nanos,
    /// The account's balance after the bulk's events of it.
    pub balance_after: Nanos,
}

/// Applies a bulk of runner events (`Op::RunnerEvents`): every event is checked first (known
/// account, machine type in the catalog (and in `[machines_surge]` for a surge runner), GPUs
/// 1..=[`MAX_GPUS`], `at` not before the runner's last report nor past `now` +
/// [`MAX_EVENT_SKEW_MS`], a runner's fixed fields unchanged, a known event id saying the
/// same), in order, so events of one runner in one bulk must be in time order; then each is
/// applied: the runner's time since its last settlement accounted in its previous state, the
/// new state recorded. Each account touched is followed by its notices (lock, low balance,
/// spending limits) and auto top-up decision, as `machine::apply` does for one account.
pub fn apply_events(
    state: &mut BatchState,
    catalog: &Catalog,
    now: Timestamp,
    events: Vec<RunnerEvent>,
) -> Result<Outcome, Rejection> {
    let _ = (state, catalog, now, events);
    todo!("serverless::apply_events")
}

/// Settles one runner up to `min(cap_at, the start of now's UTC minute)` (`Op::SettleRunner`,
/// issued by the sweeper for runners that are due); a no-op when there is nothing to settle
/// or the runner is unknown.
pub fn settle(
    state: &mut BatchState,
    catalog: &Catalog,
    now: Timestamp,
    runner: RunnerId,
) -> Result<Outcome, Rejection> {
    let _ = (state, catalog, now, runner);
    todo!("serverless::settle")
}

/// Fills the `running_runners` of the batch's `account.locked` events: the runners alive at
/// `now` among those the batch touched (`state.runners`) and `stored` (the locked accounts'
/// live runners as the store has them; the batch's copy wins).
pub fn name_live_runners(state: &mut BatchState, stored: Vec<RunnerRecord>, now: Timestamp) {
    let _ = (state, stored, now);
    todo!("serverless::name_live_runners")
}
