//! The demo account's serverless history: its own app `img-gen` (production, on GPU-A100s)
//! ran two runners on each of the days 4 to 2 before today (UTC), one of them a surge runner on
//! one day, reported as a platform reports them (each state change, and the current state of
//! every live runner once a minute, ending with `TERMINATED`), through the engine's
//! `Op::RunnerEvents` as `POST /v1/runners/events` sends them. Each day's reports are one bulk,
//! sent with the engine's clock set to just after the day's last report, so the ledger dates
//! the charges on their day; every runner ends terminated, so nothing is left to settle.

use tollgate_core::ids::{
    AccountId, AppName, EnvironmentName, MachineType, RunnerEventId, RunnerId,
};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::serverless::{RunnerEvent, RunnerState};
use tollgate_core::time::{day_start, MS_PER_DAY};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::Engine;

/// The demo's app, its environment and its machine type (the sample catalog prices it, with a
/// surge price).
pub const APP: &str = "img-gen";
const ENVIRONMENT: &str = "production";
const MACHINE: &str = "GPU-A100";

const MIN: i64 = 60_000;

/// The days of the history, in days before today (UTC), oldest first; the surge is on the
/// middle one.
const DAYS_AGO: [i64; 3] = [4, 3, 2];
const SURGE_DAY: i64 = 3;

/// One runner's session: its states, each from a minute of the day (from midnight UTC), the
/// last `TERMINATED`.
struct Session {
    name: &'static str,
    is_surge: bool,
    states: Vec<(i64, RunnerState)>,
}

/// A day's two runners: `a` starts at 14:00, runs 42 minutes and idles 10 before it stops; `b`
/// joins at 14:20 for a shorter burst, as a surge runner on the surge day (running longer, then
/// draining).
fn sessions(surge: bool) -> Vec<Session> {
    use RunnerState::*;
    let m = |h: i64, min: i64| h * 60 + min;
    let a = Session {
        name: "a",
        is_surge: false,
        states: vec![
            (m(14, 0), Pending),
            (m(14, 1), Setup),
            (m(14, 3), Running),
            (m(14, 45), Idle),
            (m(14, 55), Terminated),
        ],
    };
    let b = if surge {
        Session {
            name: "b",
            is_surge: true,
            states: vec![
                (m(14, 20), Pending),
                (m(14, 21), Setup),
                (m(14, 22), Running),
                (m(14, 40), Draining),
                (m(14, 41), Terminated),
            ],
        }
    } else {
        Session {
            name: "b",
            is_surge: false,
            states: vec![
                (m(14, 20), Pending),
                (m(14, 21), Setup),
                (m(14, 22), Running),
                (m(14, 35), Idle),
                (m(14, 40), Terminated),
            ],
        }
    };
    vec![a, b]
}

/// What [`seed`] wrote.
#[derive(Clone, Debug, Default)]
pub struct SeededRunners {
    /// Runner events applied.
    pub events: u64,
    /// Runners that ran.
    pub runners: u64,
    /// Days with runner time.
    pub days: u64,
    /// What the reports billed, from the engine's answers.
    pub total: Nanos,
    /// The first and last report's time.
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
}

/// Reports the demo runners' days (see the module) for `account`, counting back from `now`;
/// `set_clock` sets the engine's clock (the caller sets it back afterwards).
pub async fn seed(
    engine: &Engine,
    account: &AccountId,
    now: Timestamp,
    set_clock: &(dyn Fn(Timestamp) + Sync),
) -> anyhow::Result<SeededRunners> {
    let today = day_start(now);
    let mut seeded = SeededRunners::default();
    for days_ago in DAYS_AGO {
        let day = today.minus_ms(days_ago * MS_PER_DAY);
        let date = &tollgate_api::wire::rfc3339(day)[..10];
        let mut bulk: Vec<RunnerEvent> = Vec::new();
        for s in sessions(days_ago == SURGE_DAY) {
            let runner = RunnerId::parse(&format!("{APP}-{date}-{}", s.name))?;
            // Each state at its minute, and the current state again every minute until the
            // next one (a live runner's heartbeat); the last, `TERMINATED`, once.
            for (i, &(minute, state)) in s.states.iter().enumerate() {
                let until = s.states.get(i + 1).map_or(minute + 1, |next| next.0);
                for at in minute..until {
                    bulk.push(RunnerEvent {
                        event_id: RunnerEventId::parse(&format!("{runner}-{at}"))?,
                        runner: runner.clone(),
                        account: account.clone(),
                        app: AppName::parse(APP)?,
                        environment: Some(EnvironmentName::parse(ENVIRONMENT)?),
                        machine_type: MachineType::parse(MACHINE)?,
                        num_gpus: 1,
                        state,
                        at: day.plus_ms(at * MIN),
                        is_surge: s.is_surge,
                    });
                }
            }
            seeded.runners += 1;
        }
        // In time order across the day's runners (each runner's own reports stay in order).
        bulk.sort_by_key(|e| e.at);
        let (first, last) = (bulk[0].at, bulk[bulk.len() - 1].at);
        seeded.first = seeded.first.or(Some(first));
        seeded.last = Some(last);
        set_clock(last.plus_ms(1_000));
        let n = bulk.len();
        match engine.execute(Op::RunnerEvents(bulk)).await? {
            Ok(Outcome::RunnerEvents { results }) if results.len() == n => {
                for r in &results {
                    anyhow::ensure!(!r.duplicate, "runner event {} was a duplicate", r.event_id);
                    seeded.total = seeded
                        .total
                        .checked_add(r.billed)
                        .map_err(|e| anyhow::anyhow!("the demo's runner time: {e}"))?;
                }
            }
            Ok(other) => anyhow::bail!("the demo's runner events were answered {other:?}"),
            Err(e) => anyhow::bail!("the demo's runner events were refused: {e}"),
        }
        seeded.events += n as u64;
        seeded.days += 1;
    }
    Ok(seeded)
}
