//! Serverless runners in-process: bulks of runner events that heartbeat live runners (beside
//! the bulk usage events: `settle.runner_events_bulk.inprocess`, driven from `engine.rs`), and
//! the per-minute settlement of 10,000 running runners on a clock the bench moves, with
//! `start` decisions made while it runs (`runners.settle_10k`) and the same `start` load
//! without it (`runners.settle_10k.start_baseline`), and the sweep's deletion of runner event
//! ids past their retention, with `start` decisions made while it runs
//! (`runners.prune_events`).

use super::baseline::{ACCOUNTS, COST_NANOS};
use super::engine::{account_name, drive, pick, seed, start_engine_with, BULK_EVENTS};
use super::invoices::{Starts, START_CALLERS};
use super::report::Row;
use super::Plan;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_core::ids::{AccountId, AppName, MachineType, RunnerEventId, RunnerId};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::serverless::{
    RunnerEvent, RunnerState, ServerlessSettings, MIN_EVENT_RETENTION_MS,
};
use tollgate_core::Timestamp;
use tollgate_engine::{system_clock, Clock, Engine, EVENT_PRUNE_LIMIT, RUNNER_SWEEP_LIMIT};
use tollgate_store::sqlite::SqliteStore;

/// The bench catalog's machine type (`[machines]` in `BENCH_CATALOG`).
pub const MACHINE: &str = "GPU-H100";
/// Its price, 0.0005 USD per GPU-second, per GPU-millisecond in nano-USD.
pub const NANOS_PER_GPU_MS: i64 = 500;
/// The app every bench runner runs.
pub const APP: &str = "bench-app";
/// How far in the past the heartbeat rows' runners start reporting, and how far their
/// reports' time moves per call of a caller (or wrk thread): the runners report a past time
/// that moves ahead of the clock's pace, never into the future (a call reports at most the
/// clock's now), so every report bills the time since the runner's previous one.
pub const HEARTBEAT_BACK_MS: i64 = 3_600_000;
pub const HEARTBEAT_STEP_MS: i64 = 10;

const SEC: i64 = 1_000;
const MIN: i64 = 60_000;

/// The in-process heartbeat row's name.
pub const BULK_ROW: &str = "settle.runner_events_bulk.inprocess";
/// The settlement row's name (its operations are runners settled, not requests).
pub const SETTLE_ROW: &str = "runners.settle_10k";
/// The pruning row's name (its operations are event ids deleted, not requests).
pub const PRUNE_ROW: &str = "runners.prune_events";
/// Runner events per bulk when the settlement row seeds its runners.
const SEED_BULK: usize = 1_000;
/// The settlement rows' runners are on the first half of the bench accounts; their `start`
/// callers on the other half.
const RUNNER_ACCOUNTS: usize = ACCOUNTS / 2;

/// GPUs of the `r`-th runner: 1 to 8.
pub fn gpus(r: usize) -> u32 {
    1 + (r % 8) as u32
}

/// A report that runner `runner` of `account` (the bench app on `gpus` of the bench machine) is
/// `RUNNING` from `at` on.
pub fn running(
    event_id: &str,
    runner: &str,
    account: AccountId,
    gpus: u32,
    at: i64,
) -> RunnerEvent {
    RunnerEvent {
        event_id: RunnerEventId::parse(event_id).expect("a valid event id"),
        runner: RunnerId::parse(runner).expect("a valid runner id"),
        account,
        app: AppName::parse(APP).expect("a valid app"),
        environment: None,
        machine_type: MachineType::parse(MACHINE).expect("a valid machine type"),
        num_gpus: gpus,
        state: RunnerState::Running,
        at: Timestamp(at),
        is_surge: false,
    }
}

/// Heartbeats: `callers` concurrent callers for `duration`, each with `BULK_EVENTS` live
/// runners of its own spread over the `accounts` bench accounts (as the usage rows spread
/// their events), each call one bulk (`Op::RunnerEvents`, as `POST /v1/runners/events` makes)
/// reporting every runner of its caller `RUNNING` at the caller's next time. Counts events;
/// latency per call.
pub async fn heartbeats(
    engine: &Engine,
    callers: usize,
    duration: Duration,
    accounts: usize,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    let names: Arc<Vec<AccountId>> = Arc::new(
        (0..accounts)
            .map(|i| AccountId::parse(&account_name(i)).expect("valid"))
            .collect(),
    );
    let base = engine.now().0 - HEARTBEAT_BACK_MS;
    let (calls, el, h) = drive(engine, callers, duration, move |engine, c, n| {
        let names = names.clone();
        async move {
            let at = (base + (n as i64 + 1) * HEARTBEAT_STEP_MS).min(engine.now().0);
            let events = (0..BULK_EVENTS)
                .map(|i| {
                    running(
                        &format!("hb-{c}-{n}-{i}"),
                        &format!("hb-{c}-{i}"),
                        names[pick(c, i as u64, names.len())].clone(),
                        gpus(i),
                        at,
                    )
                })
                .collect();
            let t = Instant::now();
            let answer = engine.execute(Op::RunnerEvents(events)).await?;
            let latency = t.elapsed();
            match answer {
                Ok(Outcome::RunnerEvents { results })
                    if results.len() == BULK_EVENTS && results.iter().all(|r| !r.duplicate) => {}
                other => anyhow::bail!("runner events not applied: {other:?}"),
            }
            Ok(latency)
        }
    })
    .await?;
    Ok((calls * BULK_EVENTS as u64, el, h))
}

/// A counter of the engine's metrics, by its sample's name and labels (0 if absent).
pub fn counter(engine: &Engine, sample: &str) -> u64 {
    engine
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `tollgate_runner_events_total{result="applied"}`.
pub const EVENTS_APPLIED: &str = "tollgate_runner_events_total{result=\"applied\"}";

/// Checks, after heartbeat rows on a database with no other billing, that the runners of the
/// first `accounts` bench accounts are each billed exactly their reported time (first to last
/// report, all `RUNNING`) × GPUs × the machine price, that the ledger's line items are those
/// bills and nothing else, and that the ledger reconciles (each runner's bill against its line
/// items among the rest).
pub async fn billed_as_reported(engine: &Engine, accounts: usize) -> anyhow::Result<String> {
    let (mut runners, mut billed, mut gpu_ms) = (0usize, 0i128, 0i128);
    for i in 0..accounts {
        let account = AccountId::parse(&account_name(i))?;
        for r in engine.read(move |r| r.runners(&account, 100_000)).await? {
            let ms = i128::from(r.last_at.0 - r.first_at.0) * i128::from(r.num_gpus);
            anyhow::ensure!(
                r.state == RunnerState::Running
                    && i128::from(r.billed.0) == ms * i128::from(NANOS_PER_GPU_MS)
                    && r.settled_until == r.last_at,
                "runner {} billed {} nano-USD for {ms} GPU-ms reported, settled until {:?}",
                r.id,
                r.billed,
                r.settled_until
            );
            runners += 1;
            billed += i128::from(r.billed.0);
            gpu_ms += ms;
        }
    }
    let rec = engine.read(|r| r.reconcile()).await?;
    anyhow::ensure!(
        rec.is_clean(),
        "the ledger does not reconcile after the runner events: {}",
        rec.summary()
    );
    anyhow::ensure!(
        rec.billed_nanos == billed && billed > 0,
        "the line items total {} nano-USD, the runners were billed {billed}",
        rec.billed_nanos
    );
    Ok(format!(
        "{runners} runners each billed their reported time x GPUs ({:.1} GPU-s, {billed} \
         nano-USD = the line items); ledger reconciled",
        gpu_ms as f64 / 1000.0
    ))
}

/// The rows `runners.settle_10k` and `runners.settle_10k.start_baseline`.
///
/// 10,000 runners (1,000 with `--quick`) over the first 500 bench accounts, 1 to 8 GPUs each,
/// reported `RUNNING` at the start of a minute (one bulk of events per 1,000 runners), the
/// engine on a clock the bench holds and moves. The first minute is settled (the clock moved
/// into the next minute, the sweep run until no runner is due): every runner now has its price
/// segment and a line item, as in steady state. Then 4 callers make submit/start/complete on
/// the other 500 accounts for the row's time, nothing due (the baseline); then the clock moves
/// into the next minute and the same callers run while the sweep settles every runner
/// (`RUNNER_SWEEP_LIMIT` a batch) until none is due: the runners settled per second over the
/// settlement's time, the latency of the `start`s made meanwhile. Checked after it: every
/// runner billed exactly one more minute × its GPUs and settled up to the minute, the ledger
/// reconciled with the lifecycles' charges besides.
pub async fn run(plan: &Plan, wanted: &dyn Fn(&str) -> bool) -> anyhow::Result<Vec<Row>> {
    let baseline_row = format!("{SETTLE_ROW}.start_baseline");
    let (want_settle, want_baseline) = (wanted(SETTLE_ROW), wanted(&baseline_row));
    if !want_settle && !want_baseline {
        return Ok(Vec::new());
    }
    let runners = if plan.quick { 1_000 } else { 10_000 };
    let HeldClock {
        dir: _dir,
        path,
        minute0,
        now,
        engine,
    } = HeldClock::start().await?;

    let t = Instant::now();
    for from in (0..runners).step_by(SEED_BULK) {
        let events: Vec<RunnerEvent> = (from..(from + SEED_BULK).min(runners))
            .map(|i| {
                running(
                    &format!("seed-{i}"),
                    &runner_id(i),
                    AccountId::parse(&account_name(i % RUNNER_ACCOUNTS)).expect("valid"),
                    gpus(i),
                    minute0,
                )
            })
            .collect();
        let n = events.len();
        match engine.execute(Op::RunnerEvents(events)).await? {
            Ok(Outcome::RunnerEvents { results })
                if results.len() == n && results.iter().all(|r| !r.duplicate) => {}
            other => anyhow::bail!("the runners' first reports were not applied: {other:?}"),
        }
    }
    let seeded = t.elapsed();
    // The first minute, alone and untimed by the rows: every runner gets its price segment.
    now.store(minute0 + MIN + SEC, Ordering::SeqCst);
    let (first_took, _) = settle_all(&engine, &path, minute0 + MIN, runners).await?;
    eprintln!(
        "  ({runners} runners reported RUNNING in {:.1} s; their first minute settled alone in \
         {:.0} ms)",
        seeded.as_secs_f64(),
        first_took.as_secs_f64() * 1000.0
    );
    let before = billing(&engine, runners).await?;
    let billed_before = engine.read(|r| r.reconcile()).await?.billed_nanos;

    let lifecycle_accounts = RUNNER_ACCOUNTS..ACCOUNTS;
    let quiet = Starts::begin_on(&engine, "quiet", lifecycle_accounts.clone());
    tokio::time::sleep(plan.duration).await;
    let (quiet_n, quiet_el, quiet_h) = quiet.end().await?;

    now.store(minute0 + 2 * MIN + SEC, Ordering::SeqCst);
    let starts = Starts::begin_on(&engine, "settling", lifecycle_accounts);
    let (took, sweeps) = settle_all(&engine, &path, minute0 + 2 * MIN, runners).await?;
    let (n, _, h) = starts.end().await?;
    let check = one_more_minute(
        &engine,
        &before,
        minute0 + 2 * MIN,
        billed_before,
        quiet_n + n,
    )
    .await?;

    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    let mut rows = Vec::new();
    if want_settle {
        rows.push(Row::new(
            SETTLE_ROW,
            "tollgate",
            START_CALLERS,
            runners as u64,
            took,
            Some(&h),
            format!(
                "runners settled/s: the minute's settlement of {runners} running runners (over \
                 {RUNNER_ACCOUNTS} accounts, 1-8 GPUs each; the sweep, {sweeps} call(s), {} \
                 runners a batch) took {:.0} ms in all (the first minute's, alone: {:.0} ms); \
                 latency of start of {START_CALLERS} callers (submit+start+complete on the \
                 {} other accounts) during it, {n} starts; the same callers without the \
                 settlement ({baseline_row}): p50/p99 {}/{} us; {check}",
                RUNNER_SWEEP_LIMIT,
                took.as_secs_f64() * 1000.0,
                first_took.as_secs_f64() * 1000.0,
                ACCOUNTS - RUNNER_ACCOUNTS,
                q(&quiet_h, 0.5),
                q(&quiet_h, 0.99),
            ),
        ));
    }
    if want_baseline {
        rows.push(Row::new(
            &baseline_row,
            "tollgate",
            START_CALLERS,
            quiet_n,
            quiet_el,
            Some(&quiet_h),
            format!(
                "start decisions/s of {START_CALLERS} callers (submit+start+complete on the {} \
                 accounts without runners) with {runners} runners live and none due, just \
                 before their settlement ({SETTLE_ROW}); latency of start",
                ACCOUNTS - RUNNER_ACCOUNTS
            ),
        ));
    }
    Ok(rows)
}

/// 200,000 applied runner event ids (20,000 with `--quick`): 1,000 runners on the first 500
/// bench accounts, each reporting `PENDING` (free, so no line items) 200 times (20) a few
/// milliseconds apart, then `TERMINATED` (so no runner is due for settlement), one bulk per
/// round. The retention is set to its shortest (an hour) and the clock moved past it; then 4
/// callers make submit/start/complete on the other 500 accounts while the sweep deletes every
/// id (`EVENT_PRUNE_LIMIT` a batch): the ids deleted per second over the sweep's time, the
/// latency of the `start`s made meanwhile. Checked after it: the pruning counter counts every
/// id and the table is empty.
pub async fn prune(plan: &Plan, wanted: &dyn Fn(&str) -> bool) -> anyhow::Result<Vec<Row>> {
    if !wanted(PRUNE_ROW) {
        return Ok(Vec::new());
    }
    const PRUNED: &str = "tollgate_runner_events_pruned_total";
    let runners = SEED_BULK;
    let rounds = if plan.quick { 20 } else { 200 };
    let ids = runners * rounds;
    let HeldClock {
        dir: _dir,
        path,
        minute0,
        now,
        engine,
    } = HeldClock::start().await?;
    engine.set_serverless_settings(ServerlessSettings {
        event_retention_ms: MIN_EVENT_RETENTION_MS,
        ..ServerlessSettings::default()
    })?;
    let t = Instant::now();
    for round in 0..rounds {
        let state = if round + 1 == rounds {
            RunnerState::Terminated
        } else {
            RunnerState::Pending
        };
        let events: Vec<RunnerEvent> = (0..runners)
            .map(|i| RunnerEvent {
                state,
                ..running(
                    &format!("old-{round}-{i}"),
                    &runner_id(i),
                    AccountId::parse(&account_name(i % RUNNER_ACCOUNTS)).expect("valid"),
                    gpus(i),
                    minute0 + round as i64 * 5,
                )
            })
            .collect();
        match engine.execute(Op::RunnerEvents(events)).await? {
            Ok(Outcome::RunnerEvents { results })
                if results.len() == runners && results.iter().all(|r| !r.duplicate) => {}
            other => anyhow::bail!("the runners' reports were not applied: {other:?}"),
        }
    }
    eprintln!(
        "  ({ids} runner event ids applied in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    // Past the retention: every id is due for deletion.
    now.store(
        minute0 + MIN_EVENT_RETENTION_MS + MIN + SEC,
        Ordering::SeqCst,
    );
    let pruned_before = counter(&engine, PRUNED);
    let starts = Starts::begin_on(&engine, "pruning", RUNNER_ACCOUNTS..ACCOUNTS);
    let (mut took, mut sweeps) = (Duration::ZERO, 0);
    while counter(&engine, PRUNED) - pruned_before < ids as u64 {
        anyhow::ensure!(sweeps < 10, "ids still kept after {sweeps} sweeps");
        let t = Instant::now();
        engine.sweep_expired().await?;
        took += t.elapsed();
        sweeps += 1;
    }
    let (n, _, h) = starts.end().await?;
    let pruned = counter(&engine, PRUNED) - pruned_before;
    let c =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let left: i64 = c.query_row("SELECT COUNT(*) FROM runner_events", [], |r| r.get(0))?;
    anyhow::ensure!(
        pruned == ids as u64 && left == 0,
        "the sweep deleted {pruned} event ids of {ids}; {left} are left"
    );
    let q = |p: f64| h.value_at_quantile(p);
    Ok(vec![Row::new(
        PRUNE_ROW,
        "tollgate",
        START_CALLERS,
        ids as u64,
        took,
        Some(&h),
        format!(
            "runner event ids deleted/s: the sweep ({sweeps} call(s), {EVENT_PRUNE_LIMIT} ids a \
             batch) deleted {ids} ids past the retention (of {runners} runners) in {:.0} ms; \
             latency of start of {START_CALLERS} callers (submit+start+complete on the {} \
             other accounts) during it, {n} starts, p50/p99 {}/{} us; every id deleted and \
             counted",
            took.as_secs_f64() * 1000.0,
            ACCOUNTS - RUNNER_ACCOUNTS,
            q(0.5),
            q(0.99),
        ),
    )])
}

/// A seeded database of the bench accounts and an engine on it whose clock the bench holds:
/// at the start of the current minute plus a second (`minute0 + SEC`), moved by storing into
/// `now`.
struct HeldClock {
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    minute0: i64,
    now: Arc<AtomicI64>,
    engine: Engine,
}

impl HeldClock {
    async fn start() -> anyhow::Result<HeldClock> {
        let dir = tempfile::tempdir()?;
        let path = seed(dir.path(), ACCOUNTS)?;
        let system = system_clock()().0;
        let minute0 = system - system.rem_euclid(MIN);
        let now = Arc::new(AtomicI64::new(minute0 + SEC));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || Timestamp(now.load(Ordering::SeqCst)))
        };
        let engine = start_engine_with(Box::new(SqliteStore::open(&path)?), clock).await?;
        Ok(HeldClock {
            dir,
            path,
            minute0,
            now,
            engine,
        })
    }
}

fn runner_id(i: usize) -> String {
    format!("rn-{i:05}")
}

/// Runs the sweep until no runner is due up to `until` (the minute the clock is in), checking
/// that it settled each of the `runners` once: the time the sweeps took and how many calls.
async fn settle_all(
    engine: &Engine,
    path: &Path,
    until: i64,
    runners: usize,
) -> anyhow::Result<(Duration, usize)> {
    const SETTLED: &str = "tollgate_runner_settlements_total";
    let settled_before = counter(engine, SETTLED);
    let (mut took, mut sweeps) = (Duration::ZERO, 0);
    loop {
        let t = Instant::now();
        engine.sweep_expired().await?;
        took += t.elapsed();
        sweeps += 1;
        let due = due(path, until)?;
        if due == 0 {
            break;
        }
        anyhow::ensure!(
            sweeps < 100,
            "{due} runners still due after {sweeps} sweeps"
        );
    }
    let settled = counter(engine, SETTLED) - settled_before;
    anyhow::ensure!(
        settled == runners as u64,
        "the sweep settled {settled} runners, {runners} are running"
    );
    Ok((took, sweeps))
}

/// Runners due for settlement up to `until`, read from the database file.
fn due(path: &Path, until: i64) -> anyhow::Result<i64> {
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(c.query_row(
        "SELECT COUNT(*) FROM runners WHERE settled_until < MIN(cap_at, ?1)",
        [until],
        |r| r.get(0),
    )?)
}

/// Each runner's (billed nano-USD, settled until, GPUs), by id.
async fn billing(
    engine: &Engine,
    runners: usize,
) -> anyhow::Result<HashMap<String, (i64, i64, u32)>> {
    let mut all = HashMap::with_capacity(runners);
    for i in 0..RUNNER_ACCOUNTS {
        let account = AccountId::parse(&account_name(i))?;
        for r in engine.read(move |r| r.runners(&account, 100_000)).await? {
            all.insert(
                r.id.to_string(),
                (r.billed.0, r.settled_until.0, r.num_gpus),
            );
        }
    }
    anyhow::ensure!(
        all.len() == runners,
        "{} runners stored, {runners} reported",
        all.len()
    );
    Ok(all)
}

/// Checks that every runner was billed exactly one more minute × its GPUs and is settled up
/// to `until`, and that the ledger reconciles with those bills and the `lifecycles` requests
/// (0.001 USD each) as everything billed since `billed_before`.
async fn one_more_minute(
    engine: &Engine,
    before: &HashMap<String, (i64, i64, u32)>,
    until: i64,
    billed_before: i128,
    lifecycles: u64,
) -> anyhow::Result<String> {
    let after = billing(engine, before.len()).await?;
    let mut minute = 0i128;
    for (id, &(billed, settled_until, gpus)) in &after {
        let (was, was_until, _) = before
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("runner {id} is new"))?;
        let one_minute = MIN * i64::from(gpus) * NANOS_PER_GPU_MS;
        anyhow::ensure!(
            billed - was == one_minute && settled_until == until && was_until + MIN == until,
            "runner {id} ({gpus} GPUs) was billed {} nano-USD more, not {one_minute}, and is \
             settled until {settled_until}, not {until}",
            billed - was
        );
        minute += i128::from(billed - was);
    }
    let rec = engine.read(|r| r.reconcile()).await?;
    anyhow::ensure!(
        rec.is_clean(),
        "the ledger does not reconcile after the settlement: {}",
        rec.summary()
    );
    let expected = minute + i128::from(lifecycles) * i128::from(COST_NANOS);
    anyhow::ensure!(
        rec.billed_nanos - billed_before == expected,
        "billed {} nano-USD since the first minute, expected {expected} (the runners' minute \
         and {lifecycles} requests)",
        rec.billed_nanos - billed_before
    );
    Ok(format!(
        "every one of the {} runners billed exactly one more minute x its GPUs ({minute} \
         nano-USD) and settled up to the minute; ledger reconciled with {lifecycles} requests \
         besides",
        after.len()
    ))
}
