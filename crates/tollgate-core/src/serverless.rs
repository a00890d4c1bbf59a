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
//! arrives (to `min(at, cap_at)`, in the state before the report; then over the gap, if the
//! grace ran out, to `at`, where the new state starts) and when the per-minute settlement runs
//! (`Op::SettleRunner`: to `min(cap_at, the start of the current UTC minute)`).
//! A report whose `at` is before `settled_until` (the settlement ran between the report's `at`
//! and its arrival) takes effect from `settled_until`: seconds already accounted are not
//! accounted again, in either state. Sent as they happen, reports are exact.
//!
//! **Pieces.** Accounted time is cut at UTC minute edges into pieces; each billed piece is one
//! line item (`billed_at` = the piece's start, so every rollup and every bucket of any time
//! zone holds exactly its seconds) whose endpoint is the runner's [`Line`] key and whose request
//! id is [`line_item_request_id`]. Its quantity is GPU-seconds (`ms × num_gpus / 1000`, exact).
//! It is charged as a usage event is, without a hold: the ledger's charge (the balance may go
//! below zero; the account then locks by the derived rule), the month's subtotal (volume
//! tiers), the credit lots, an invoice-billed account's open period, and the account's own
//! spending limits (a runner has no key) in the period of the piece's start. Every piece, billed
//! or not, adds its runner-milliseconds to the runner-state history ([`RunnerMinute`]). A piece
//! also ends where the account's next terms take effect (`effective_from`), so it is priced
//! whole by the terms in force through it: machine price and discount. (The catalog's
//! `[machines]` and `[machines_surge]` are not versioned: a change applies to the time not yet
//! accounted.)
//!
//! **Months.** An invoice-billed account's piece accrues to its open period when the piece is
//! accounted. Before the first batch of a month closes the periods of the month before, the
//! runners of those accounts with time due are settled up to the month's start
//! ([`settle_before_close`]), so a month's last minute is on its own invoice; what arrives
//! later still (a report of that time after the close) accrues to the next period, like a late
//! usage event. Request ids under [`REQUEST_ID_PREFIX`] are the runners': a request or usage
//! event may not take one.
//!
//! **Exact sums.** A runner keeps its current [`Segment`], a (unit price, percent discount)
//! with the GPU-seconds billed under it and the nano-USD charged so far. A piece is charged the
//! difference of the segment's rounded cumulative amounts: subtotal `S(q) =
//! round(q × unit_price)`, total `T(q) = round(S(q) × (100 − percent) / 100)`, discount `S − T`
//! (each non-negative and non-decreasing in `q`). So a runner billed under one price is charged
//! exactly `T(total GPU-seconds)`, however many settlements cut its time. A new price or
//! discount starts a new segment.
//!
//! **Idempotency.** Every event id is kept (`RunnerEventRecord`) for the retention
//! (`ServerlessSettings::event_retention_ms`, a week by default, after which the sweep deletes
//! it); an event whose id is known is a duplicate (answered as one, changing nothing) if it says
//! the same thing, else refused. An event of a runner older than its last report is refused
//! (`time going backwards`) unless it is a duplicate. So an event sent again after its id was
//! deleted is judged as a new one: if the runner reported a later time since, it is refused as
//! going backwards; if its `at` is the runner's last report's, it is applied as a report at that
//! instant, whose time before it is already accounted (the cursor is there or beyond), so it
//! bills nothing then (its state is the runner's from that instant: the same one, unless the
//! runner reported another state at that very millisecond). A runner reported `TERMINATED`
//! takes no more reports (refused, however late or early they are, unless duplicates), so no
//! report sent again can bring it back. Billing never depends on the ids:
//! the cursor only moves forward, so no second is billed twice. A bulk of events is validated whole before any is applied: one refused
//! event refuses the bulk, and nothing is written ([`crate::machine::Rejection::InvalidRunnerEvent`]).
//! An operation's accounting is computed on copies of its runners and accounts and written to
//! the batch's state only when all of it succeeded, so a refusal at any point changes nothing.

use crate::catalog::Catalog;
use crate::events::EventData;
use crate::ids::{
    AccountId, AppName, EndpointId, EnvironmentName, MachineType, RequestId, RunnerEventId,
    RunnerId,
};
use crate::limits;
use crate::machine::{
    month_of, roll_month, AccountState, BatchState, LineItem, Outcome, Rejection, TransferRecord,
};
use crate::money::{round_usd_to_nanos, MoneyError, Nanos};
use crate::pricing::Charge;
use crate::time::Timestamp;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The deployment's serverless settings (configuration, set on every batch by the engine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerlessSettings {
    /// How long after its last report a runner is still accounted (`[serverless] grace_s`).
    pub grace_ms: i64,
    /// How long an applied event id is kept to answer its repeat as a duplicate
    /// (`[serverless] event_retention_h`): the sweep deletes the ids received longer ago. An
    /// event whose id is gone is judged as a new one (see the module's "Idempotency").
    pub event_retention_ms: i64,
}

impl Default for ServerlessSettings {
    fn default() -> Self {
        ServerlessSettings {
            grace_ms: DEFAULT_GRACE_MS,
            event_retention_ms: DEFAULT_EVENT_RETENTION_MS,
        }
    }
}

/// `[serverless] grace_s` when unset: 300 s.
pub const DEFAULT_GRACE_MS: i64 = 300_000;
/// The longest grace accepted (one day).
pub const MAX_GRACE_MS: i64 = 86_400_000;
/// `[serverless] event_retention_h` when unset: 168 hours (a week).
pub const DEFAULT_EVENT_RETENTION_MS: i64 = 168 * 3_600_000;
/// The shortest event-id retention accepted (one hour).
pub const MIN_EVENT_RETENTION_MS: i64 = 3_600_000;
/// The longest event-id retention accepted (8760 hours, a year).
pub const MAX_EVENT_RETENTION_MS: i64 = 8_760 * 3_600_000;
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
        let key = format!(
            "{ENDPOINT_PREFIX}{}/{}/{}/{}",
            self.app,
            self.environment.as_ref().map_or("", |e| e.as_str()),
            self.machine_type,
            if self.is_surge { SURGE } else { STANDARD },
        );
        // Its parts are slugs (letters, digits, `-`, `_`, `.`) of at most 64 + 32 + 64
        // characters: the key is always a valid endpoint id of at most 200.
        EndpointId::parse(&key).expect("a line's key is an endpoint id")
    }

    /// The line an endpoint key names (`None` for a model endpoint, or for anything under the
    /// prefix that [`Line::endpoint`] does not write).
    pub fn of(endpoint: &EndpointId) -> Option<Line> {
        let rest = endpoint.as_str().strip_prefix(ENDPOINT_PREFIX)?;
        let mut parts = rest.split('/');
        let (app, environment, machine_type, kind) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let environment = match environment {
            "" => None,
            e => Some(EnvironmentName::parse(e).ok()?),
        };
        Some(Line {
            app: AppName::parse(app).ok()?,
            environment,
            machine_type: MachineType::parse(machine_type).ok()?,
            is_surge: match kind {
                STANDARD => false,
                SURGE => true,
                _ => return None,
            },
        })
    }

    /// Whether an endpoint id is a serverless line's key (under [`ENDPOINT_PREFIX`]).
    pub fn is_key(endpoint: &str) -> bool {
        endpoint.starts_with(ENDPOINT_PREFIX)
    }

    /// How invoices, statements and reports name the line: `my-app (production) on GPU-H100`,
    /// then ` (surge)` for surge usage; an app without an environment is just `my-app on
    /// GPU-H100`. Decided in one place.
    pub fn describe(&self) -> String {
        let mut text = self.app.to_string();
        if let Some(env) = &self.environment {
            text.push_str(&format!(" ({env})"));
        }
        text.push_str(&format!(" on {}", self.machine_type));
        if self.is_surge {
            text.push_str(" (surge)");
        }
        text
    }
}

/// The last part of a line's key: how its seconds are priced.
const STANDARD: &str = "standard";
const SURGE: &str = "surge";

/// The prefix of the request id of every runner's line items: no request or usage event may
/// take an id under it.
pub const REQUEST_ID_PREFIX: &str = "runner:";

/// The request id of a runner's line items and charge transfers: `runner:<runner_id>`.
pub fn line_item_request_id(runner: &RunnerId) -> RequestId {
    // A runner id is at most 100 printable characters: with the prefix, a valid request id.
    RequestId::parse(&format!("{REQUEST_ID_PREFIX}{runner}")).expect("a runner's request id")
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

/// A runner event as stored (its id kept for the retention: duplicates are found by it).
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
    let duplicates = validate(state, catalog, now, &events)?;
    let mut work = Work::new(state, catalog, now);
    let mut results = Vec::with_capacity(events.len());
    for (e, duplicate) in events.into_iter().zip(duplicates) {
        let billed = if duplicate {
            Nanos::ZERO
        } else {
            work.report(&e)?
        };
        results.push((
            e.account,
            RunnerEventResult {
                event_id: e.event_id,
                runner: e.runner,
                duplicate,
                billed,
                balance_after: Nanos::ZERO,
            },
        ));
    }
    let effects = work.into_effects();
    effects.write(state);
    let results = results
        .into_iter()
        .map(|(account, r)| RunnerEventResult {
            balance_after: state.accounts[&account].credit.balance,
            ..r
        })
        .collect();
    Ok(Outcome::RunnerEvents { results })
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
    settle_until(state, catalog, now, runner, minute_of(now))
}

/// Settles one runner up to `min(cap_at, until, the start of now's UTC minute)`
/// (`Op::SettleRunner` with `until`); a no-op when there is nothing to settle or the runner is
/// unknown. Time that ends by the start of now's month (settled before that month's usage
/// periods are closed, [`settle_before_close`]) is charged as of its own month: an empty open
/// period of an invoice-billed account that began before that month starts in it, and the
/// month's subtotal (volume tiers) it counts toward is its own while the account's is not
/// already a later one's.
pub fn settle_until(
    state: &mut BatchState,
    catalog: &Catalog,
    now: Timestamp,
    runner: RunnerId,
    until: Timestamp,
) -> Result<Outcome, Rejection> {
    let nothing = Ok(Outcome::RunnerSettled {
        billed: Nanos::ZERO,
        moved: false,
    });
    let Some(r) = state.runners.get(&runner) else {
        return nothing;
    };
    let until = r.cap_at.min(until).min(minute_of(now));
    if r.settled_until >= until {
        return nothing;
    }
    let mut r = r.clone();
    let mut work = Work::new(state, catalog, now);
    work.as_of_piece = until <= crate::time::month_start(now);
    let billed = work.account(&mut r, until)?;
    work.runners.insert(r.id.clone(), r);
    work.into_effects().write(state);
    Ok(Outcome::RunnerSettled {
        billed,
        moved: true,
    })
}

/// Settles, before the batch's elapsed usage periods are closed
/// ([`crate::machine::close_elapsed_periods`]), the time of an earlier month still due of the
/// batch's runners (`state.runners`) whose account is invoice-billed at `now` with an open
/// period that began before now's month: each up to `min(cap_at, the start of now's month)`,
/// as an `Op::SettleRunner` with that `until` (so notices and the auto top-up rule follow as
/// for any settlement), so the month's last minutes accrue to the month's invoice, not the
/// next one's. In runner id order. A settlement refused (an overflow, a machine price gone
/// from the catalog) leaves its runner as it was; the sweep settles it later, like late time,
/// into the next period.
pub fn settle_before_close(state: &mut BatchState, catalog: &Catalog, now: Timestamp) {
    let edge = crate::time::month_start(now);
    let mut due: Vec<RunnerId> = state
        .runners
        .values()
        .filter(|r| r.settled_until < r.cap_at.min(edge))
        .filter(|r| {
            state.accounts.get(&r.account).is_some_and(|a| {
                a.billing() == crate::terms::BillingMode::Invoice && a.period.start < edge
            })
        })
        .map(|r| r.id.clone())
        .collect();
    due.sort();
    for runner in due {
        let op = crate::machine::Op::SettleRunner {
            runner,
            until: Some(edge),
        };
        // A refusal changes nothing (see above).
        let _ = crate::machine::apply(state, catalog, now, op);
    }
}

/// Fills the `running_runners` of the batch's `account.locked` events: the runners alive at
/// `now` among those the batch touched (`state.runners`) and `stored` (the locked accounts'
/// live runners as the store has them; the batch's copy wins).
pub fn name_live_runners(state: &mut BatchState, stored: Vec<RunnerRecord>, now: Timestamp) {
    let locked: HashSet<AccountId> = state
        .events
        .iter()
        .filter(|e| matches!(e.data, EventData::AccountLocked { .. }))
        .map(|e| e.account.clone())
        .collect();
    if locked.is_empty() {
        return;
    }
    let mut live: HashMap<&AccountId, BTreeMap<&RunnerId, LiveRunner>> = HashMap::new();
    let batch = state.runners.values();
    let others = stored.iter().filter(|r| !state.runners.contains_key(&r.id));
    for r in batch.chain(others) {
        if locked.contains(&r.account) && r.is_live(now) {
            live.entry(&r.account).or_default().insert(&r.id, r.into());
        }
    }
    let named: HashMap<AccountId, Vec<LiveRunner>> = live
        .into_iter()
        .map(|(a, runners)| (a.clone(), runners.into_values().collect()))
        .collect();
    for e in &mut state.events {
        if let EventData::AccountLocked {
            running_runners, ..
        } = &mut e.data
        {
            *running_runners = named.get(&e.account).cloned().unwrap_or_default();
        }
    }
}

/// The start of the UTC minute of `at`.
fn minute_of(at: Timestamp) -> Timestamp {
    crate::rollup::Grain::Minute.slot_of(at)
}

// ---------------------------------------------------------------------------------------------
// Validation: the whole bulk, before anything is applied.

/// What a runner's first report fixes.
#[derive(PartialEq, Eq)]
struct Fixed<'a> {
    account: &'a AccountId,
    app: &'a AppName,
    environment: Option<&'a EnvironmentName>,
    machine_type: &'a MachineType,
    num_gpus: u32,
    is_surge: bool,
}

impl<'a> Fixed<'a> {
    fn of_runner(r: &'a RunnerRecord) -> Fixed<'a> {
        Fixed {
            account: &r.account,
            app: &r.app,
            environment: r.environment.as_ref(),
            machine_type: &r.machine_type,
            num_gpus: r.num_gpus,
            is_surge: r.is_surge,
        }
    }

    fn of_event(e: &'a RunnerEvent) -> Fixed<'a> {
        Fixed {
            account: &e.account,
            app: &e.app,
            environment: e.environment.as_ref(),
            machine_type: &e.machine_type,
            num_gpus: e.num_gpus,
            is_surge: e.is_surge,
        }
    }

    /// The first field `other` changes, as `name` and the runner's value.
    fn changed_by(&self, other: &Fixed) -> Option<(&'static str, String)> {
        let env = |e: Option<&EnvironmentName>| e.map_or("none".to_string(), |e| e.to_string());
        [
            (self.account != other.account).then(|| ("username", self.account.to_string())),
            (self.app != other.app).then(|| ("app", self.app.to_string())),
            (self.environment != other.environment).then(|| ("environment", env(self.environment))),
            (self.machine_type != other.machine_type)
                .then(|| ("machine_type", self.machine_type.to_string())),
            (self.num_gpus != other.num_gpus).then(|| ("num_gpus", self.num_gpus.to_string())),
            (self.is_surge != other.is_surge).then(|| ("is_surge", self.is_surge.to_string())),
        ]
        .into_iter()
        .flatten()
        .next()
    }
}

/// What an event id says, for finding duplicates.
fn says(runner: &RunnerId, account: &AccountId, state: RunnerState, at: Timestamp) -> String {
    format!("{runner}\u{0}{account}\u{0}{}\u{0}{}", state.as_str(), at.0)
}

/// Checks every event of a bulk in order, against the state as the events before it would
/// leave it; returns which are duplicates, or the first refusal.
fn validate(
    state: &BatchState,
    catalog: &Catalog,
    now: Timestamp,
    events: &[RunnerEvent],
) -> Result<Vec<bool>, Rejection> {
    // The runners (what they are, their last report's time and state) and event ids as the
    // bulk's earlier events leave them.
    let mut runners: HashMap<&RunnerId, (Fixed, Timestamp, RunnerState)> = HashMap::new();
    let mut ids: HashMap<&RunnerEventId, String> = HashMap::new();
    let mut duplicates = Vec::with_capacity(events.len());
    for (index, e) in events.iter().enumerate() {
        let refuse = |reason: String| Rejection::InvalidRunnerEvent {
            index,
            event_id: e.event_id.to_string(),
            reason,
        };
        check_event(state, catalog, e).map_err(refuse)?;
        let known = match runners.get(&e.runner) {
            Some((fixed, last_at, last_state)) => {
                Some((fixed.changed_by(&Fixed::of_event(e)), *last_at, *last_state))
            }
            None => state.runners.get(&e.runner).map(|r| {
                (
                    Fixed::of_runner(r).changed_by(&Fixed::of_event(e)),
                    r.last_at,
                    r.state,
                )
            }),
        };
        if let Some((Some((field, was)), _, _)) = &known {
            return Err(refuse(format!(
                "runner {} was reported with {field} {was}; a runner's username, app, \
                 environment, machine_type, num_gpus and is_surge never change",
                e.runner
            )));
        }
        let said = says(&e.runner, &e.account, e.state, e.at);
        let first = ids.get(&e.event_id).cloned().or_else(|| {
            state
                .runner_events
                .get(&e.event_id)
                .map(|f| says(&f.runner, &f.account, f.state, f.at))
        });
        if let Some(first) = first {
            if first != said {
                return Err(refuse(format!(
                    "event_id {} was already used for another event",
                    e.event_id
                )));
            }
            duplicates.push(true);
            continue;
        }
        if let Some((_, last_at, RunnerState::Terminated)) = known {
            return Err(refuse(format!(
                "runner {} was reported TERMINATED at {}: a terminated runner takes no more \
                 reports (a new runner needs a new runner_id)",
                e.runner,
                crate::time::rfc3339(last_at)
            )));
        }
        check_time(now, e, known.map(|(_, last_at, _)| last_at)).map_err(refuse)?;
        runners.insert(&e.runner, (Fixed::of_event(e), e.at, e.state));
        ids.insert(&e.event_id, said);
        duplicates.push(false);
    }
    Ok(duplicates)
}

/// What an event must be whatever the runner's past: a known account, a machine type of the
/// catalog (with a surge price for a surge runner), GPUs in range.
fn check_event(state: &BatchState, catalog: &Catalog, e: &RunnerEvent) -> Result<(), String> {
    if !state.accounts.contains_key(&e.account) {
        return Err(format!("unknown account {}", e.account));
    }
    if !catalog.machines.contains_key(&e.machine_type) {
        return Err(format!(
            "unknown machine_type {}: not in the catalog's [machines]",
            e.machine_type
        ));
    }
    if e.is_surge && !catalog.machines_surge.contains_key(&e.machine_type) {
        return Err(format!(
            "machine_type {} has no surge price (the catalog's [machines_surge])",
            e.machine_type
        ));
    }
    if !(1..=MAX_GPUS).contains(&e.num_gpus) {
        return Err(format!(
            "num_gpus must be between 1 and {MAX_GPUS}, got {}",
            e.num_gpus
        ));
    }
    Ok(())
}

/// A new report's time: not past `now` + [`MAX_EVENT_SKEW_MS`], not before the runner's last.
fn check_time(now: Timestamp, e: &RunnerEvent, last_at: Option<Timestamp>) -> Result<(), String> {
    if e.at > now.plus_ms(MAX_EVENT_SKEW_MS) {
        return Err(format!(
            "at {} is more than {} s in the future",
            crate::time::rfc3339(e.at),
            MAX_EVENT_SKEW_MS / 1000
        ));
    }
    if let Some(last_at) = last_at.filter(|l| e.at < *l) {
        return Err(format!(
            "at {} is before runner {}'s last report at {}: time going backwards",
            crate::time::rfc3339(e.at),
            e.runner,
            crate::time::rfc3339(last_at)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Accounting: computed on copies, written to the batch's state only once all of it succeeded,
// so a refusal (an arithmetic overflow, a machine price gone from the catalog) changes nothing.

/// An operation's changes, not yet written to the batch's state.
struct Work<'s> {
    state: &'s BatchState,
    catalog: &'s Catalog,
    now: Timestamp,
    /// Copies of the accounts charged.
    accounts: HashMap<AccountId, AccountState>,
    /// Copies of the runners reported or settled.
    runners: HashMap<RunnerId, RunnerRecord>,
    /// Whether the time accounted is charged as of its own month (see [`settle_until`]).
    as_of_piece: bool,
    effects: Effects,
}

/// What a [`Work`] adds to the batch, in order.
#[derive(Default)]
struct Effects {
    accounts: Vec<(AccountId, AccountState)>,
    runners: Vec<(RunnerId, RunnerRecord)>,
    /// Each with the start of the open usage period it accrues to, if any.
    line_items: Vec<(LineItem, Option<Timestamp>)>,
    transfers: Vec<TransferRecord>,
    notices: Vec<(AccountId, EventData)>,
    minutes: Vec<RunnerMinute>,
    events: Vec<RunnerEventRecord>,
    now: Timestamp,
}

impl<'s> Work<'s> {
    fn new(state: &'s BatchState, catalog: &'s Catalog, now: Timestamp) -> Work<'s> {
        Work {
            state,
            catalog,
            now,
            accounts: HashMap::new(),
            runners: HashMap::new(),
            as_of_piece: false,
            effects: Effects {
                now,
                ..Effects::default()
            },
        }
    }

    fn into_effects(self) -> Effects {
        let mut effects = self.effects;
        effects.accounts = self.accounts.into_iter().collect();
        effects.runners = self.runners.into_iter().collect();
        effects
    }

    /// The runner as the operation has left it so far.
    fn runner(&self, id: &RunnerId) -> Option<RunnerRecord> {
        self.runners
            .get(id)
            .or_else(|| self.state.runners.get(id))
            .cloned()
    }

    /// Applies one report (already checked); returns what it billed.
    fn report(&mut self, e: &RunnerEvent) -> Result<Nanos, Rejection> {
        let grace = self.state.serverless.grace_ms;
        let cap_at = if e.state == RunnerState::Terminated {
            e.at
        } else {
            e.at.plus_ms(grace)
        };
        let mut billed = Nanos::ZERO;
        let r = match self.runner(&e.runner) {
            None => RunnerRecord {
                id: e.runner.clone(),
                account: e.account.clone(),
                app: e.app.clone(),
                environment: e.environment.clone(),
                machine_type: e.machine_type.clone(),
                num_gpus: e.num_gpus,
                is_surge: e.is_surge,
                state: e.state,
                state_at: e.at,
                last_at: e.at,
                settled_until: e.at,
                cap_at,
                first_at: e.at,
                segment: None,
                billed: Nanos::ZERO,
            },
            Some(mut r) => {
                // The previous state up to this report (within its grace), then the new
                // state from here, or from where the runner is already accounted to.
                let until = e.at.min(r.cap_at);
                billed = self.account(&mut r, until)?;
                r.settled_until = r.settled_until.max(e.at);
                if r.state != e.state {
                    r.state = e.state;
                    r.state_at = e.at;
                }
                r.last_at = e.at;
                r.cap_at = cap_at;
                r
            }
        };
        self.runners.insert(r.id.clone(), r);
        self.effects.events.push(RunnerEventRecord {
            event_id: e.event_id.clone(),
            runner: e.runner.clone(),
            account: e.account.clone(),
            state: e.state,
            at: e.at,
            received_at: self.now,
        });
        Ok(billed)
    }

    /// Accounts `r`'s time from `settled_until` to `until` in its current state, minute piece
    /// by minute piece (a piece also ends where the account's next terms take effect, so each
    /// piece is priced whole by the terms in force through it), and moves `settled_until`
    /// there; returns what it billed.
    fn account(&mut self, r: &mut RunnerRecord, until: Timestamp) -> Result<Nanos, Rejection> {
        let mut billed = Nanos::ZERO;
        let mut from = r.settled_until;
        while from < until {
            let slot = minute_of(from);
            let mut to = until.min(slot.plus_ms(60_000));
            if let Some(next) = self.next_terms_after(&r.account, from) {
                to = to.min(next);
            }
            let ms = to.ms_since(from);
            if let Some(state) = r.state.history() {
                self.effects.minutes.push(RunnerMinute {
                    account: r.account.clone(),
                    app: r.app.clone(),
                    slot,
                    state,
                    ms,
                });
            }
            if r.state.is_billed() {
                billed = billed.checked_add(self.charge(r, from, ms)?)?;
            }
            from = to;
        }
        r.settled_until = r.settled_until.max(until);
        Ok(billed)
    }

    /// When the account's next terms after `at` take effect (its machine prices and discounts
    /// may change there), if it has any.
    fn next_terms_after(&self, account: &AccountId, at: Timestamp) -> Option<Timestamp> {
        let acct = self
            .accounts
            .get(account)
            .or_else(|| self.state.accounts.get(account))?;
        acct.terms.after(at).first().map(|v| v.effective_from)
    }

    /// The account being charged, copied from the batch the first time.
    fn account_mut(&mut self, id: &AccountId) -> Result<&mut AccountState, Rejection> {
        if !self.accounts.contains_key(id) {
            let acct = self
                .state
                .accounts
                .get(id)
                .ok_or_else(|| Rejection::UnknownAccount(id.clone()))?;
            self.accounts.insert(id.clone(), acct.clone());
        }
        Ok(self.accounts.get_mut(id).expect("just inserted"))
    }

    /// Charges one billed piece of `r` (`ms` from `start`, within one UTC minute): its line
    /// item, the ledger's charge, what the charge changes on the account (the month's
    /// subtotal, the lots, the open usage period, the account's spending limits).
    fn charge(
        &mut self,
        r: &mut RunnerRecord,
        start: Timestamp,
        ms: i64,
    ) -> Result<Nanos, Rejection> {
        let (catalog, now, as_of_piece) = (self.catalog, self.now, self.as_of_piece);
        let acct = self.account_mut(&r.account)?;
        let unit_price = if r.is_surge {
            catalog.machines_surge.get(&r.machine_type).copied()
        } else {
            acct.machine_price_at(catalog, Some(&r.machine_type), start)
        }
        .ok_or_else(|| Rejection::UnknownMachine(r.machine_type.clone()))?;
        // Time of an earlier month settled before its period closes counts toward its own
        // month's subtotal, unless the account's is already a later month's.
        let recorded_as_of = if as_of_piece { start } else { now };
        if month_of(recorded_as_of) > acct.month {
            roll_month(acct, recorded_as_of);
        } else if !as_of_piece {
            roll_month(acct, now);
        }
        let percent = acct
            .discounts_at(start)
            .percent_for(acct.month_subtotal)
            .map(|p| p.normalize());
        let quantity = Decimal::new(ms * i64::from(r.num_gpus), 3).normalize();
        let (segment, charge) = r
            .segment
            .clone()
            .filter(|s| s.unit_price == unit_price && s.percent_discount == percent)
            .unwrap_or_else(|| Segment {
                unit_price,
                percent_discount: percent,
                ..Segment::default()
            })
            .add(quantity)?;
        let accrued = acct.record_charge_as_of(&charge, now, recorded_as_of)?;
        let transfer = acct.credit.charge(charge.total_nanos)?;
        let notices = if acct.limits.is_empty() {
            Vec::new()
        } else {
            // The account's limits only (a runner has no key), in the period of the piece.
            limits::spend(&mut acct.limits, None, charge.total_nanos, Some(start), now)?
        };
        let request_id = line_item_request_id(&r.id);
        let total = charge.total_nanos;
        r.segment = Some(segment);
        r.billed = r.billed.checked_add(total)?;
        let fx = &mut self.effects;
        fx.notices
            .extend(notices.into_iter().map(|n| (r.account.clone(), n)));
        fx.transfers.push(TransferRecord {
            transfer,
            request_id: Some(request_id.clone()),
            purchase_id: None,
            at: now,
        });
        let item = LineItem {
            request_id,
            account: r.account.clone(),
            endpoint: r.line().endpoint(),
            api_key: None,
            price_version: 0,
            unit: UNIT.to_string(),
            charge,
            status_code: 200,
            billed_at: start,
            queue_ms: None,
            inference_ms: Some(ms),
        };
        fx.line_items.push((item, accrued));
        Ok(total)
    }
}

/// The unit of serverless line items: GPU-seconds, as fal's `/serverless/usage` names them.
pub const UNIT: &str = "second";

impl Segment {
    /// The segment with `quantity` more GPU-seconds, and the charge of those: the difference
    /// of the segment's rounded cumulative subtotal and total (see the module's "Exact sums").
    fn add(self, quantity: Decimal) -> Result<(Segment, Charge), MoneyError> {
        let cumulative = self.quantity + quantity;
        let subtotal = round_usd_to_nanos(
            cumulative
                .checked_mul(self.unit_price)
                .ok_or(MoneyError::Overflow)?,
        )?;
        let total = match self.percent_discount {
            Some(p) => {
                let exact = Decimal::from(subtotal.0)
                    .checked_mul(Decimal::ONE_HUNDRED - p)
                    .ok_or(MoneyError::Overflow)?
                    / Decimal::ONE_HUNDRED;
                let nanos = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
                Nanos(nanos.to_i64().ok_or(MoneyError::Overflow)?)
            }
            None => subtotal,
        };
        let subtotal_nanos = subtotal.checked_sub(self.subtotal)?;
        let total_nanos = total.checked_sub(self.total)?;
        let charge = Charge {
            quantity,
            unit_price: self.unit_price,
            percent_discount: self.percent_discount,
            subtotal_nanos,
            discount_nanos: subtotal_nanos.checked_sub(total_nanos)?,
            total_nanos,
            blended: false,
        };
        let segment = Segment {
            quantity: cumulative.normalize(),
            subtotal,
            total,
            ..self
        };
        Ok((segment, charge))
    }
}

impl Effects {
    /// Writes the changes into the batch's state.
    fn write(self, state: &mut BatchState) {
        for (id, acct) in self.accounts {
            state.dirty_accounts.insert(id.clone());
            state.accounts.insert(id, acct);
        }
        for (id, r) in self.runners {
            state.dirty_runners.insert(id.clone());
            state.runners.insert(id, r);
        }
        for t in self.transfers {
            state.transfers.push(t);
        }
        for (item, accrued) in self.line_items {
            state.line_items.push(item);
            state.accrue(accrued);
        }
        state.runner_minutes.extend(self.minutes);
        for e in self.events {
            state.runner_events.insert(e.event_id.clone(), e.clone());
            state.new_runner_events.push(e);
        }
        for (account, data) in self.notices {
            state.event(&account, self.now, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::CreditAccount;
    use crate::machine::{apply, AccountState, Op};
    use crate::pricing::Discounts;
    use crate::terms::{Terms, TermsSchedule, TermsVersion};
    use std::str::FromStr;

    /// 2026-01-31T23:30:00Z: the month, the day and the hour change half an hour in.
    const T0: i64 = 1_769_902_200_000;
    const MIN: i64 = 60_000;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }
    fn mt(s: &str) -> MachineType {
        MachineType::parse(s).unwrap()
    }
    fn acme() -> AccountId {
        AccountId::parse("acme").unwrap()
    }
    fn rid(s: &str) -> RunnerId {
        RunnerId::parse(s).unwrap()
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.machines.insert(mt("GPU-H100"), dec("0.000525"));
        c.machines.insert(mt("GPU-B200"), dec("0.001736111112"));
        c.machines.insert(mt("XS"), dec("0.00001"));
        c.machines_surge.insert(mt("GPU-H100"), dec("0.0007875"));
        c
    }

    /// `acme`, prepaid, with `usd` of free credits.
    fn state(usd: i64) -> BatchState {
        let mut s = BatchState::default();
        s.accounts.insert(
            acme(),
            AccountState::new(CreditAccount::new_prepaid(acme())),
        );
        let purchase = Op::Purchase {
            account: acme(),
            purchase_id: crate::ids::PurchaseId::parse("p0").unwrap(),
            amount: Nanos(usd * 1_000_000_000),
            paid: false,
            expires_at: None,
        };
        apply(&mut s, &catalog(), Timestamp(0), purchase).unwrap();
        s.events.clear();
        s
    }

    /// A report of runner `runner` of `acme`'s `my-app` (production) on 2 GPU-H100.
    fn ev(id: &str, runner: &str, state: RunnerState, at: i64) -> RunnerEvent {
        RunnerEvent {
            event_id: RunnerEventId::parse(id).unwrap(),
            runner: rid(runner),
            account: acme(),
            app: AppName::parse("my-app").unwrap(),
            environment: Some(EnvironmentName::parse("production").unwrap()),
            machine_type: mt("GPU-H100"),
            num_gpus: 2,
            state,
            at: Timestamp(at),
            is_surge: false,
        }
    }

    fn send(
        s: &mut BatchState,
        now: i64,
        events: Vec<RunnerEvent>,
    ) -> Result<Vec<RunnerEventResult>, Rejection> {
        match apply(s, &catalog(), Timestamp(now), Op::RunnerEvents(events))? {
            Outcome::RunnerEvents { results } => Ok(results),
            o => panic!("{o:?}"),
        }
    }

    fn settle_at(s: &mut BatchState, now: i64, runner: &str) -> Nanos {
        let op = Op::SettleRunner {
            runner: rid(runner),
            until: None,
        };
        match apply(s, &catalog(), Timestamp(now), op).unwrap() {
            Outcome::RunnerSettled { billed, .. } => billed,
            o => panic!("{o:?}"),
        }
    }

    /// `round(round(q × price) × (100 − percent) / 100)` nano-USD, for `q` GPU-seconds.
    fn t(q: Decimal, price: &str, percent: i64) -> i64 {
        let s = round_usd_to_nanos(q * dec(price)).unwrap().0;
        let keep = Decimal::from(s) * Decimal::from(100 - percent) / Decimal::ONE_HUNDRED;
        keep.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
            .to_i64()
            .unwrap()
    }

    fn gpu_seconds(ms: i64, gpus: i64) -> Decimal {
        Decimal::new(ms * gpus, 3)
    }

    fn items_total(s: &BatchState) -> i64 {
        s.line_items.iter().map(|i| i.charge.total_nanos.0).sum()
    }

    #[test]
    fn a_line_key_names_its_line_and_back() {
        let env = |e: &str| Some(EnvironmentName::parse(e).unwrap());
        for (app, environment, machine, is_surge, key) in [
            (
                "my-app",
                env("production"),
                "GPU-H100",
                false,
                "serverless/my-app/production/GPU-H100/standard",
            ),
            (
                "a.b_c-D9",
                None,
                "GPU-B200",
                true,
                "serverless/a.b_c-D9//GPU-B200/surge",
            ),
            ("..x", env("-"), "XS", false, "serverless/..x/-/XS/standard"),
            (
                "standard",
                env("surge"),
                "serverless",
                true,
                "serverless/standard/surge/serverless/surge",
            ),
        ] {
            let line = Line {
                app: AppName::parse(app).unwrap(),
                environment,
                machine_type: mt(machine),
                is_surge,
            };
            assert_eq!(line.endpoint().as_str(), key);
            assert!(Line::is_key(key));
            assert_eq!(Line::of(&line.endpoint()), Some(line));
        }
        let long = Line {
            app: AppName::parse(&"a".repeat(64)).unwrap(),
            environment: env(&"e".repeat(32)),
            machine_type: mt(&"m".repeat(64)),
            is_surge: false,
        };
        assert_eq!(Line::of(&long.endpoint()), Some(long));
        for not_a_line in [
            "fal-ai/flux/dev",
            "serverless/my-app/production/GPU-H100",
            "serverless/my-app/production/GPU-H100/standard/x",
            "serverless/my-app/production/GPU-H100/spot",
            "serverless//production/GPU-H100/standard",
            "serverless/my-app/production//standard",
            "serverless/../production/GPU-H100/standard",
            "serverlessx/my-app/production/GPU-H100/standard",
        ] {
            assert_eq!(
                Line::of(&EndpointId::parse(not_a_line).unwrap()),
                None,
                "{not_a_line}"
            );
        }
    }

    #[test]
    fn a_line_is_described_in_words() {
        let line =
            Line::of(&EndpointId::parse("serverless/my-app/production/GPU-H100/surge").unwrap())
                .unwrap();
        assert_eq!(line.describe(), "my-app (production) on GPU-H100 (surge)");
        let line = Line::of(&EndpointId::parse("serverless/my-app//XS/standard").unwrap()).unwrap();
        assert_eq!(line.describe(), "my-app on XS");
        assert_eq!(line_item_request_id(&rid("rn-1")).as_str(), "runner:rn-1");
        let longest = rid(&"~".repeat(100));
        assert_eq!(line_item_request_id(&longest).as_str().len(), 107);
    }

    #[test]
    fn every_refusal_names_its_event_and_changes_nothing() {
        let mut s = state(100);
        send(&mut s, T0, vec![ev("e0", "rn-1", RunnerState::Running, T0)]).unwrap();
        let good = || ev("e1", "rn-1", RunnerState::Idle, T0 + MIN);
        let mut surge_cpu = ev("x", "rn-2", RunnerState::Running, T0);
        surge_cpu.machine_type = mt("XS");
        surge_cpu.is_surge = true;
        let cases: Vec<(RunnerEvent, &str)> = vec![
            (
                RunnerEvent {
                    account: AccountId::parse("ghost").unwrap(),
                    ..ev("x", "rn-2", RunnerState::Running, T0)
                },
                "unknown account ghost",
            ),
            (
                RunnerEvent {
                    machine_type: mt("GPU-B300"),
                    ..ev("x", "rn-2", RunnerState::Running, T0)
                },
                "unknown machine_type GPU-B300",
            ),
            (surge_cpu, "no surge price"),
            (
                RunnerEvent {
                    num_gpus: 0,
                    ..ev("x", "rn-2", RunnerState::Running, T0)
                },
                "between 1 and 64, got 0",
            ),
            (
                RunnerEvent {
                    num_gpus: 65,
                    ..ev("x", "rn-2", RunnerState::Running, T0)
                },
                "got 65",
            ),
            (
                ev(
                    "x",
                    "rn-2",
                    RunnerState::Running,
                    T0 + MIN + MAX_EVENT_SKEW_MS + 1,
                ),
                "in the future",
            ),
            (
                ev("x", "rn-1", RunnerState::Running, T0 - 1),
                "time going backwards",
            ),
            // Before the bulk's own earlier report of the runner.
            (
                ev("x", "rn-1", RunnerState::Running, T0 + MIN - 1),
                "time going backwards",
            ),
            (
                RunnerEvent {
                    num_gpus: 4,
                    ..ev("x", "rn-1", RunnerState::Running, T0 + MIN)
                },
                "num_gpus 2",
            ),
            (
                RunnerEvent {
                    is_surge: true,
                    ..ev("x", "rn-1", RunnerState::Running, T0 + MIN)
                },
                "is_surge false",
            ),
            (
                RunnerEvent {
                    environment: None,
                    ..ev("x", "rn-1", RunnerState::Running, T0 + MIN)
                },
                "environment production",
            ),
            (
                RunnerEvent {
                    app: AppName::parse("other").unwrap(),
                    ..ev("x", "rn-1", RunnerState::Running, T0 + MIN)
                },
                "app my-app",
            ),
            (
                RunnerEvent {
                    machine_type: mt("GPU-B200"),
                    ..ev("x", "rn-1", RunnerState::Running, T0 + MIN)
                },
                "machine_type GPU-H100",
            ),
            (
                ev("e0", "rn-1", RunnerState::Idle, T0),
                "already used for another event",
            ),
            (
                ev("e1", "rn-1", RunnerState::Running, T0 + MIN),
                "already used for another event",
            ),
        ];
        for (bad, reason) in cases {
            let before = format!("{s:?}");
            let event_id = bad.event_id.to_string();
            let e = send(&mut s, T0 + MIN, vec![good(), bad]).unwrap_err();
            let Rejection::InvalidRunnerEvent {
                index,
                event_id: id,
                reason: why,
            } = &e
            else {
                panic!("{e:?}");
            };
            assert_eq!((*index, id.as_str()), (1, event_id.as_str()), "{e}");
            assert!(why.contains(reason), "{reason}: {e}");
            assert_eq!(format!("{s:?}"), before, "{reason}");
        }
        // The same events without the bad one pass.
        send(&mut s, T0 + MIN, vec![good()]).unwrap();
    }

    #[test]
    fn pieces_are_cut_at_minute_edges_across_the_month() {
        let mut s = state(100);
        // 23:59:30.5 on 31 January to 00:00:40 on 1 February.
        let start = T0 + 29 * MIN + 30_500;
        let end = T0 + 30 * MIN + 40_000;
        send(
            &mut s,
            start,
            vec![ev("e0", "rn-1", RunnerState::Setup, start)],
        )
        .unwrap();
        let r = send(
            &mut s,
            end,
            vec![ev("e1", "rn-1", RunnerState::Terminated, end)],
        )
        .unwrap();
        let got: Vec<(i64, Decimal, Option<i64>)> = s
            .line_items
            .iter()
            .map(|i| (i.billed_at.0, i.charge.quantity, i.inference_ms))
            .collect();
        let month = T0 + 30 * MIN;
        assert_eq!(
            got,
            vec![
                (start, dec("59"), Some(29_500)),
                (month, dec("80"), Some(40_000)),
            ]
        );
        assert_eq!(crate::time::month_start(Timestamp(month)), Timestamp(month));
        let item = &s.line_items[0];
        assert_eq!(
            item.endpoint.as_str(),
            "serverless/my-app/production/GPU-H100/standard"
        );
        assert_eq!(item.request_id.as_str(), "runner:rn-1");
        assert_eq!(
            (item.unit.as_str(), item.status_code, item.price_version),
            ("second", 200, 0)
        );
        assert_eq!(item.api_key, None);
        let total = t(dec("139"), "0.000525", 0);
        assert_eq!(items_total(&s), total);
        assert_eq!(r[0].billed, Nanos(total));
        assert_eq!(r[0].balance_after, Nanos(100_000_000_000 - total));
        // The ledger charges the same, under the runner's request id.
        let charged: i64 = s
            .transfers
            .iter()
            .filter(|t| {
                t.request_id
                    .as_ref()
                    .is_some_and(|r| r.as_str() == "runner:rn-1")
            })
            .map(|t| t.transfer.amount.0)
            .sum();
        assert_eq!(charged, total);
        // SETUP counts as pending in the history, per minute slot, in runner-ms.
        let minutes: Vec<(i64, HistoryState, i64)> = s
            .runner_minutes
            .iter()
            .map(|m| (m.slot.0, m.state, m.ms))
            .collect();
        assert_eq!(
            minutes,
            vec![
                (T0 + 29 * MIN, HistoryState::Pending, 29_500),
                (month, HistoryState::Pending, 40_000),
            ]
        );
        let runner = &s.runners[&rid("rn-1")];
        assert_eq!(runner.billed, Nanos(total));
        assert_eq!(
            (runner.settled_until, runner.cap_at),
            (Timestamp(end), Timestamp(end))
        );
        assert!(!runner.is_live(Timestamp(end)));
        assert!(s.dirty_runners.contains(&rid("rn-1")));
        assert_eq!(s.new_runner_events.len(), 2);
    }

    #[test]
    fn a_silent_runner_is_billed_up_to_its_grace_and_the_gap_never() {
        let mut s = state(100);
        send(&mut s, T0, vec![ev("e0", "rn-1", RunnerState::Running, T0)]).unwrap();
        // Ten minutes later: only the grace (300 s) after the report is billed.
        let billed = settle_at(&mut s, T0 + 10 * MIN, "rn-1");
        let grace = t(gpu_seconds(300_000, 2), "0.000525", 0);
        assert_eq!(billed, Nanos(grace));
        assert_eq!(settle_at(&mut s, T0 + 20 * MIN, "rn-1"), Nanos::ZERO);
        // It reports again at +20 min: the gap is not billed; the new state runs from there.
        send(
            &mut s,
            T0 + 20 * MIN,
            vec![ev("e1", "rn-1", RunnerState::Idle, T0 + 20 * MIN)],
        )
        .unwrap();
        assert_eq!(items_total(&s), grace);
        let r = &s.runners[&rid("rn-1")];
        assert_eq!(r.settled_until, Timestamp(T0 + 20 * MIN));
        assert_eq!(r.state_at, Timestamp(T0 + 20 * MIN));
        send(
            &mut s,
            T0 + 21 * MIN,
            vec![ev("e2", "rn-1", RunnerState::Terminated, T0 + 21 * MIN)],
        )
        .unwrap();
        assert_eq!(items_total(&s), t(gpu_seconds(360_000, 2), "0.000525", 0));
        let running: i64 = s
            .runner_minutes
            .iter()
            .filter(|m| m.state == HistoryState::Running)
            .map(|m| m.ms)
            .sum();
        assert_eq!(running, 300_000);
    }

    #[test]
    fn settlement_stops_at_the_current_minute_and_a_late_report_starts_after_it() {
        let mut s = state(100);
        let m0 = T0 + 10 * MIN;
        send(
            &mut s,
            m0 + 10_000,
            vec![ev("e0", "rn-1", RunnerState::Running, m0 + 10_000)],
        )
        .unwrap();
        // At m0 + 2:10, the runner is settled to m0 + 2:00.
        let billed = settle_at(&mut s, m0 + 130_000, "rn-1");
        assert_eq!(billed, Nanos(t(gpu_seconds(110_000, 2), "0.000525", 0)));
        assert_eq!(
            s.runners[&rid("rn-1")].settled_until,
            Timestamp(m0 + 120_000)
        );
        assert_eq!(settle_at(&mut s, m0 + 170_000, "rn-1"), Nanos::ZERO);
        // A report of IDLE at m0 + 1:40 arrives at m0 + 2:20: it takes effect from m0 + 2:00.
        let r = send(
            &mut s,
            m0 + 140_000,
            vec![ev("e1", "rn-1", RunnerState::Idle, m0 + 100_000)],
        )
        .unwrap();
        assert_eq!(r[0].billed, Nanos::ZERO);
        send(
            &mut s,
            m0 + 180_000,
            vec![ev("e2", "rn-1", RunnerState::Terminated, m0 + 180_000)],
        )
        .unwrap();
        // RUNNING 110 s, IDLE 60 s: one price, so one cumulative rounding.
        assert_eq!(items_total(&s), t(gpu_seconds(170_000, 2), "0.000525", 0));
        let ms = |h| -> i64 {
            s.runner_minutes
                .iter()
                .filter(|m| m.state == h)
                .map(|m| m.ms)
                .sum()
        };
        assert_eq!(
            (ms(HistoryState::Running), ms(HistoryState::Idle)),
            (110_000, 60_000)
        );
        // Terminated: nothing more to settle, ever.
        assert_eq!(settle_at(&mut s, m0 + 60 * MIN, "rn-1"), Nanos::ZERO);
        assert_eq!(settle_at(&mut s, m0 + 60 * MIN, "rn-unknown"), Nanos::ZERO);
    }

    #[test]
    fn free_states_are_counted_but_not_billed() {
        let mut s = state(100);
        send(&mut s, T0, vec![ev("e0", "rn-1", RunnerState::Pending, T0)]).unwrap();
        send(
            &mut s,
            T0 + MIN,
            vec![ev("e1", "rn-1", RunnerState::DockerPull, T0 + MIN)],
        )
        .unwrap();
        settle_at(&mut s, T0 + 2 * MIN, "rn-1");
        send(
            &mut s,
            T0 + 2 * MIN,
            vec![ev("e2", "rn-1", RunnerState::Terminated, T0 + 2 * MIN)],
        )
        .unwrap();
        assert!(
            s.line_items.is_empty() && s.transfers.len() == 1,
            "{:?}",
            s.transfers
        );
        let pending: i64 = s.runner_minutes.iter().map(|m| m.ms).sum();
        assert_eq!(pending, 2 * MIN);
        assert!(s
            .runner_minutes
            .iter()
            .all(|m| m.state == HistoryState::Pending));
    }

    #[test]
    fn surge_runners_pay_the_surge_price() {
        let mut s = state(100);
        let surge = |id, state, at| RunnerEvent {
            is_surge: true,
            num_gpus: 8,
            ..ev(id, "rn-s", state, at)
        };
        send(&mut s, T0, vec![surge("e0", RunnerState::Running, T0)]).unwrap();
        send(
            &mut s,
            T0 + 90_000,
            vec![surge("e1", RunnerState::Terminated, T0 + 90_000)],
        )
        .unwrap();
        assert!(s
            .line_items
            .iter()
            .all(|i| i.charge.unit_price == dec("0.0007875")
                && i.endpoint.as_str() == "serverless/my-app/production/GPU-H100/surge"));
        assert_eq!(items_total(&s), t(gpu_seconds(90_000, 8), "0.0007875", 0));
    }

    #[test]
    fn an_account_machine_price_and_discount_apply() {
        let mut s = state(100);
        let acct = s.accounts.get_mut(&acme()).unwrap();
        let mut terms = Terms::of(acct);
        terms.machine_prices.insert(mt("GPU-H100"), dec("0.0004"));
        terms.discounts = Discounts {
            percent_discount: Some(dec("12.5")),
            volume_tiers: vec![],
        };
        acct.terms = TermsSchedule::new(vec![TermsVersion {
            effective_from: Timestamp(0),
            terms,
        }]);
        acct.use_terms_at(Timestamp(T0));
        send(
            &mut s,
            T0,
            vec![ev("e0", "rn-1", RunnerState::Running, T0 + 1)],
        )
        .unwrap();
        for minute in 1..=3 {
            settle_at(&mut s, T0 + minute * MIN + 7, "rn-1");
        }
        let q = gpu_seconds(3 * MIN - 1, 2);
        assert_eq!(items_total(&s), t_discounted(q));
        let item = &s.line_items[0];
        assert_eq!(item.charge.unit_price, dec("0.0004"));
        assert_eq!(item.charge.percent_discount, Some(dec("12.5")));
        let subtotal: i64 = s.line_items.iter().map(|i| i.charge.subtotal_nanos.0).sum();
        let discount: i64 = s.line_items.iter().map(|i| i.charge.discount_nanos.0).sum();
        assert_eq!(subtotal, round_usd_to_nanos(q * dec("0.0004")).unwrap().0);
        assert_eq!(subtotal - discount, items_total(&s));
    }

    #[test]
    fn a_price_change_mid_minute_cuts_the_piece_there() {
        use crate::terms::{schedule, TermsChange};
        // 2026-01-31T12:00:00Z; from 12:00:30 acme pays 0.0004 USD a GPU-second on GPU-H100.
        let noon = T0 - 690 * MIN;
        let mut s = state(100);
        let change = TermsChange {
            machine_prices: BTreeMap::from([(mt("GPU-H100"), Some(dec("0.0004")))]),
            effective_from: Some(Timestamp(noon + 30_000)),
            ..TermsChange::default()
        };
        let acct = s.accounts.get_mut(&acme()).unwrap();
        acct.terms = schedule(acct, &change, Timestamp(noon)).unwrap().unwrap();
        send(
            &mut s,
            noon,
            vec![ev("e0", "rn-1", RunnerState::Running, noon)],
        )
        .unwrap();
        settle_at(&mut s, noon + 2 * MIN + 5, "rn-1");
        let got: Vec<(i64, Decimal, Decimal)> = s
            .line_items
            .iter()
            .map(|i| (i.billed_at.0 - noon, i.charge.quantity, i.charge.unit_price))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, dec("60"), dec("0.000525")),
                (30_000, dec("60"), dec("0.0004")),
                (MIN, dec("120"), dec("0.0004")),
            ]
        );
        assert_eq!(
            items_total(&s),
            t(dec("60"), "0.000525", 0) + t(dec("180"), "0.0004", 0)
        );
        let segment = s.runners[&rid("rn-1")].segment.clone().unwrap();
        assert_eq!(
            (segment.unit_price, segment.quantity),
            (dec("0.0004"), dec("180"))
        );
        // The history's minute is whole: one piece's time each.
        let ms: Vec<(i64, i64)> = s
            .runner_minutes
            .iter()
            .map(|m| (m.slot.0 - noon, m.ms))
            .collect();
        assert_eq!(ms, vec![(0, 30_000), (0, 30_000), (MIN, MIN)]);
    }

    /// `acme` invoice-billed from the beginning (and `usd` of credits, unused by invoices).
    fn invoiced(usd: i64) -> BatchState {
        let mut s = state(usd);
        let acct = s.accounts.get_mut(&acme()).unwrap();
        acct.terms = TermsSchedule::first(crate::terms::BillingMode::Invoice);
        acct.use_terms_at(Timestamp(T0));
        s
    }

    /// The line items' totals, before and from 1 February (`T0 + 30 MIN`), and the periods
    /// their accruals went to, in order.
    fn by_month(s: &BatchState) -> ((i64, i64), Vec<i64>) {
        let feb = T0 + 30 * MIN;
        let sum = |f: &dyn Fn(i64) -> bool| -> i64 {
            s.line_items
                .iter()
                .filter(|i| f(i.billed_at.0))
                .map(|i| i.charge.total_nanos.0)
                .sum()
        };
        let periods = s.accruals.iter().map(|a| a.period_start.0).collect();
        ((sum(&|at| at < feb), sum(&|at| at >= feb)), periods)
    }

    #[test]
    fn the_months_last_minute_is_settled_into_its_invoice_before_it_closes() {
        let (jan, feb) = (crate::time::month_start(Timestamp(T0)).0, T0 + 30 * MIN);
        let mut s = invoiced(1);
        // Running from 23:58; the sweep at 23:59:05 settles its first minute into January's
        // period; the next sweep runs at 00:01:05 in February.
        let start = T0 + 28 * MIN;
        send(
            &mut s,
            start,
            vec![ev("e0", "rn-1", RunnerState::Running, start)],
        )
        .unwrap();
        settle_at(&mut s, start + MIN + 5_000, "rn-1");
        assert_eq!(s.accounts[&acme()].period.start.0, jan);
        // February's first batch: the close settles up to the month's start first.
        let now = Timestamp(feb + MIN + 5_000);
        crate::machine::close_elapsed_periods(&mut s, &catalog(), now);
        settle_at(&mut s, now.0, "rn-1");
        let ((before, after), periods) = by_month(&s);
        let minute = t(gpu_seconds(MIN, 2), "0.000525", 0);
        assert_eq!((before, after), (2 * minute, minute));
        assert_eq!(periods, vec![jan, jan, feb]);
        let invoice = &s.new_invoices[0];
        assert_eq!(
            (
                invoice.period_start.0,
                invoice.period_end.0,
                invoice.total.0
            ),
            (jan, feb, before)
        );
        assert_eq!(s.accounts[&acme()].period.start.0, feb);
        assert_eq!(s.accounts[&acme()].period.total.0, after);
    }

    #[test]
    fn a_months_only_runner_time_settled_after_it_is_invoiced_in_it() {
        let (jan, feb) = (crate::time::month_start(Timestamp(T0)).0, T0 + 30 * MIN);
        let mut s = invoiced(1);
        // An account with nothing else in January: its runner starts at 23:59:30, and its
        // first settlement runs in February.
        let start = T0 + 29 * MIN + 30_000;
        send(
            &mut s,
            start,
            vec![ev("e0", "rn-1", RunnerState::Running, start)],
        )
        .unwrap();
        assert_eq!(s.accounts[&acme()].period.charges, 0);
        let now = Timestamp(feb + 30_000);
        crate::machine::close_elapsed_periods(&mut s, &catalog(), now);
        // Counted in January's subtotal (volume tiers), as it would have been in January.
        let acct = &s.accounts[&acme()];
        assert_eq!(
            (acct.month, acct.month_subtotal),
            (
                crate::machine::month_of(Timestamp(start)),
                s.line_items[0].charge.subtotal_nanos
            )
        );
        let op = Op::SettleRunner {
            runner: rid("rn-1"),
            until: None,
        };
        apply(&mut s, &catalog(), now, op).unwrap();
        // Nothing more until the minute ends; then February's first minute.
        settle_at(&mut s, feb + MIN, "rn-1");
        let ((before, after), periods) = by_month(&s);
        assert_eq!(before, t(gpu_seconds(30_000, 2), "0.000525", 0));
        assert_eq!(periods, vec![jan, feb]);
        assert_eq!(s.new_invoices.len(), 1);
        let invoice = &s.new_invoices[0];
        assert_eq!(
            (
                invoice.period_start.0,
                invoice.period_end.0,
                invoice.total.0
            ),
            (jan, feb, before)
        );
        assert_eq!(s.accounts[&acme()].period.total.0, after);
        // Time settled after the month closed goes to the next period, like late usage.
        let mut late = invoiced(1);
        send(
            &mut late,
            start,
            vec![ev("e0", "rn-1", RunnerState::Running, start)],
        )
        .unwrap();
        late.accounts.get_mut(&acme()).unwrap().period.start = Timestamp(feb);
        crate::machine::close_elapsed_periods(&mut late, &catalog(), now);
        apply(
            &mut late,
            &catalog(),
            now,
            Op::SettleRunner {
                runner: rid("rn-1"),
                until: None,
            },
        )
        .unwrap();
        assert!(late.new_invoices.is_empty());
        assert_eq!(by_month(&late).1, vec![feb]);
    }

    #[test]
    fn a_settlement_that_moves_nothing_says_so() {
        let mut s = state(100);
        send(&mut s, T0, vec![ev("e0", "rn-1", RunnerState::Pending, T0)]).unwrap();
        let mut settle = |now: i64| {
            let op = Op::SettleRunner {
                runner: rid("rn-1"),
                until: None,
            };
            match apply(&mut s, &catalog(), Timestamp(now), op).unwrap() {
                Outcome::RunnerSettled { billed, moved } => (billed, moved),
                o => panic!("{o:?}"),
            }
        };
        // A free state moves the cursor without billing; then nothing is left in the minute.
        assert_eq!(settle(T0 + MIN + 1), (Nanos::ZERO, true));
        assert_eq!(settle(T0 + MIN + 2), (Nanos::ZERO, false));
    }

    /// `T(q)` at 0.0004 with 12.5 % off.
    fn t_discounted(q: Decimal) -> i64 {
        let s = round_usd_to_nanos(q * dec("0.0004")).unwrap().0;
        (Decimal::from(s) * dec("0.875"))
            .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
            .to_i64()
            .unwrap()
    }

    #[test]
    fn a_volume_tier_reached_mid_run_starts_a_new_segment() {
        let mut s = state(100);
        // 20 % off once the month's subtotal reaches 0.05 USD: 2 × H100 cost 0.00105 USD/s,
        // so the tier is reached within the first minute and applies from the next piece.
        s.accounts.get_mut(&acme()).unwrap().discounts = Discounts {
            percent_discount: None,
            volume_tiers: vec![crate::pricing::VolumeTier {
                from_usd: dec("0.05"),
                percent: dec("20"),
            }],
        };
        let m0 = T0 + 40 * MIN;
        send(&mut s, m0, vec![ev("e0", "rn-1", RunnerState::Running, m0)]).unwrap();
        for minute in 1..=3 {
            settle_at(&mut s, m0 + minute * MIN + 1, "rn-1");
        }
        let percents: Vec<_> = s
            .line_items
            .iter()
            .map(|i| i.charge.percent_discount)
            .collect();
        assert_eq!(percents, [None, Some(dec("20")), Some(dec("20"))]);
        let first = t(gpu_seconds(MIN, 2), "0.000525", 0);
        let rest = t(gpu_seconds(2 * MIN, 2), "0.000525", 20);
        assert_eq!(items_total(&s), first + rest);
        let segment = s.runners[&rid("rn-1")].segment.clone().unwrap();
        assert_eq!(
            (segment.quantity, segment.total, segment.percent_discount),
            (dec("240"), Nanos(rest), Some(dec("20")))
        );
        assert_eq!(s.runners[&rid("rn-1")].billed, Nanos(first + rest));
    }

    #[test]
    fn many_settlements_add_up_to_one_rounding_of_the_whole() {
        let mut s = state(1000);
        let b200 = |id: &str, state, at| RunnerEvent {
            machine_type: mt("GPU-B200"),
            num_gpus: 3,
            ..ev(id, "rn-b", state, at)
        };
        let start = T0 + 7_777;
        send(&mut s, start, vec![b200("e0", RunnerState::Running, start)]).unwrap();
        let mut at = start;
        for i in 1..50 {
            at += 13_337;
            if i % 3 == 0 {
                settle_at(&mut s, at, "rn-b");
            } else {
                let id = format!("e{i}");
                send(&mut s, at, vec![b200(&id, RunnerState::Idle, at)]).unwrap();
            }
        }
        send(&mut s, at, vec![b200("end", RunnerState::Terminated, at)]).unwrap();
        let q = gpu_seconds(at - start, 3);
        assert_eq!(items_total(&s), t(q, "0.001736111112", 0));
        assert!(s.line_items.len() > 10);
        assert_eq!(s.runners[&rid("rn-b")].billed, Nanos(items_total(&s)));
    }

    #[test]
    fn a_duplicate_is_answered_as_one_and_changes_nothing() {
        let mut s = state(100);
        let bulk = vec![
            ev("e0", "rn-1", RunnerState::Running, T0),
            ev("e1", "rn-1", RunnerState::Idle, T0 + 70_000),
        ];
        let first = send(&mut s, T0 + 70_000, bulk.clone()).unwrap();
        assert!(first.iter().all(|r| !r.duplicate));
        let before = format!("{s:?}");
        // Later, after time has moved on: still duplicates.
        let again = send(&mut s, T0 + 60 * MIN, bulk.clone()).unwrap();
        assert!(again.iter().all(|r| r.duplicate && r.billed == Nanos::ZERO));
        assert_eq!(again[1].balance_after, first[1].balance_after);
        assert_eq!(format!("{s:?}"), before);
        // A duplicate within one bulk, beside a new event.
        let r = send(
            &mut s,
            T0 + 80_000,
            vec![
                bulk[1].clone(),
                ev("e2", "rn-1", RunnerState::Running, T0 + 80_000),
                bulk[1].clone(),
            ],
        )
        .unwrap();
        assert_eq!(
            r.iter().map(|r| r.duplicate).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(s.new_runner_events.len(), 3);
    }

    #[test]
    fn an_event_sent_again_after_its_id_was_deleted_is_judged_as_new_and_bills_nothing_twice() {
        let mut s = state(100);
        let e0 = ev("e0", "rn-1", RunnerState::Running, T0);
        let e1 = ev("e1", "rn-1", RunnerState::Idle, T0 + 70_000);
        send(&mut s, T0 + 70_000, vec![e0.clone(), e1.clone()]).unwrap();
        // Idle until its grace ran out: 70 s running and 300 s idle, on 2 GPUs.
        settle_at(&mut s, T0 + 30 * MIN, "rn-1");
        let billed = s.runners[&rid("rn-1")].billed;
        assert_eq!(billed, Nanos(items_total(&s)));
        assert_eq!(billed, Nanos(t(gpu_seconds(370_000, 2), "0.000525", 0)));
        // The retention passed: the sweep deleted both ids (the batch no longer finds them).
        s.runner_events.clear();
        s.new_runner_events.clear();
        let before = format!("{s:?}");
        let later = T0 + 8 * 24 * 60 * MIN;
        // The first report, sent again: older than the runner's last, refused as any such
        // report is, alone or with the rest of its bulk, and nothing changes.
        for bulk in [vec![e0.clone()], vec![e0.clone(), e1.clone()]] {
            match send(&mut s, later, bulk) {
                Err(Rejection::InvalidRunnerEvent {
                    index,
                    event_id,
                    reason,
                }) => {
                    assert_eq!((index, event_id.as_str()), (0, "e0"));
                    assert!(reason.contains("time going backwards"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(format!("{s:?}"), before);
        }
        // The last report, sent again: a new report at the instant the runner is already
        // accounted past. Applied (not a duplicate), it bills nothing, now or at the next
        // settlement; the runner's timeline is as it was.
        let balance = s.accounts[&acme()].credit.balance;
        let r = send(&mut s, later, vec![e1.clone()]).unwrap();
        assert_eq!((r[0].duplicate, r[0].billed), (false, Nanos::ZERO));
        assert_eq!(r[0].balance_after, balance);
        assert_eq!(settle_at(&mut s, later + MIN, "rn-1"), Nanos::ZERO);
        let runner = &s.runners[&rid("rn-1")];
        assert_eq!(
            (
                runner.state,
                runner.settled_until,
                runner.cap_at,
                runner.billed
            ),
            (
                RunnerState::Idle,
                Timestamp(T0 + 370_000),
                Timestamp(T0 + 370_000),
                billed
            )
        );
        assert_eq!(s.accounts[&acme()].credit.balance, balance);
        assert_eq!(Nanos(items_total(&s)), billed);
        // Its id is kept again, from now.
        assert_eq!(s.new_runner_events.len(), 1);
        assert_eq!(s.new_runner_events[0].received_at, Timestamp(later));
    }

    #[test]
    fn a_terminated_runner_takes_no_more_reports_and_no_resend_brings_it_back() {
        let mut s = state(100);
        // Draining, then terminated at the same millisecond.
        let draining = ev("e0", "rn-1", RunnerState::Draining, T0);
        let terminated = ev("e1", "rn-1", RunnerState::Terminated, T0);
        send(
            &mut s,
            T0 + 1_000,
            vec![draining.clone(), terminated.clone()],
        )
        .unwrap();
        // Within the bulk too: a report after TERMINATED refuses the bulk it is in.
        let mut other = state(100);
        match send(
            &mut other,
            T0 + 1_000,
            vec![
                ev("x0", "rn-2", RunnerState::Terminated, T0),
                ev("x1", "rn-2", RunnerState::Running, T0 + 500),
            ],
        ) {
            Err(Rejection::InvalidRunnerEvent { index, reason, .. }) => {
                assert_eq!(index, 1);
                assert!(reason.contains("terminated runner"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // The termination repeated is a duplicate; anything else is refused, whether at the
        // same millisecond (the draining report sent again once its id was deleted) or later,
        // and nothing changes.
        let r = send(&mut s, T0 + 2_000, vec![terminated.clone()]).unwrap();
        assert!(r[0].duplicate);
        s.runner_events.clear();
        s.new_runner_events.clear();
        let before = format!("{s:?}");
        for e in [
            draining.clone(),
            ev("e2", "rn-1", RunnerState::Running, T0),
            ev("e3", "rn-1", RunnerState::Running, T0 + MIN),
        ] {
            match send(&mut s, T0 + 8 * 24 * 60 * MIN, vec![e]) {
                Err(Rejection::InvalidRunnerEvent { reason, .. }) => {
                    assert!(reason.contains("terminated runner"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(format!("{s:?}"), before);
        }
        assert_eq!(settle_at(&mut s, T0 + 10 * MIN, "rn-1"), Nanos::ZERO);
        assert_eq!(s.runners[&rid("rn-1")].billed, Nanos::ZERO);
    }

    #[test]
    fn a_runner_that_exhausts_the_balance_locks_the_account_naming_it() {
        let mut s = state(1);
        send(
            &mut s,
            T0,
            vec![
                ev("e0", "rn-1", RunnerState::Running, T0),
                RunnerEvent {
                    machine_type: mt("GPU-B200"),
                    num_gpus: 8,
                    ..ev("e1", "rn-2", RunnerState::Idle, T0)
                },
                ev("e2", "rn-3", RunnerState::Pending, T0),
            ],
        )
        .unwrap();
        // 8 × B200 costs about 0.83 USD a minute: the second minute passes 1 USD.
        settle_at(&mut s, T0 + MIN, "rn-2");
        assert!(s.events.is_empty(), "{:?}", s.events);
        settle_at(&mut s, T0 + 2 * MIN, "rn-2");
        assert!(s.accounts[&acme()].is_locked());
        let locked: Vec<_> = s
            .events
            .iter()
            .filter(|e| matches!(e.data, EventData::AccountLocked { .. }))
            .collect();
        assert_eq!(locked.len(), 1);
        // rn-3 the store knows too (the batch's copy wins); rn-9 is another account's; rn-old is
        // past its grace.
        let mut stale = s.runners[&rid("rn-1")].clone();
        stale.id = rid("rn-old");
        stale.cap_at = Timestamp(T0 + MIN);
        let mut other = stale.clone();
        other.id = rid("rn-9");
        other.account = AccountId::parse("other").unwrap();
        other.cap_at = Timestamp(T0 + 10 * MIN);
        let mut stored_rn3 = s.runners[&rid("rn-3")].clone();
        stored_rn3.state = RunnerState::Terminated;
        name_live_runners(
            &mut s,
            vec![stale, other, stored_rn3],
            Timestamp(T0 + 2 * MIN),
        );
        let EventData::AccountLocked {
            running_runners, ..
        } = &s.events[0].data
        else {
            panic!("{:?}", s.events);
        };
        let named: Vec<(&str, RunnerState)> = running_runners
            .iter()
            .map(|r| (r.runner_id.as_str(), r.state))
            .collect();
        assert_eq!(
            named,
            [
                ("rn-1", RunnerState::Running),
                ("rn-2", RunnerState::Idle),
                ("rn-3", RunnerState::Pending)
            ]
        );
        assert_eq!(running_runners[1].num_gpus, 8);
        // The runner keeps being billed (the platform decides whether to stop it).
        assert!(settle_at(&mut s, T0 + 3 * MIN, "rn-2") > Nanos::ZERO);
        assert!(s.accounts[&acme()].credit.balance.is_negative());
    }
}
