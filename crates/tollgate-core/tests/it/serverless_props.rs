//! Properties of serverless runner billing, driven through [`apply`] (pure, no I/O): random
//! runner histories (several runners of two accounts, random states, gaps below and above the
//! grace, 1 to 8 GPUs, the sample catalog's machines with GPU-B200's 12-decimal price, standard
//! and surge), each report applied when it happens (`now = at`), delivered with per-minute
//! settlements of random runners at random times and duplicates re-sent any time later.
//!
//! An independent model reads the histories by the grace rule: report `i` covers
//! `[at_i, min(at_{i+1}, at_i + grace))` in its state. Whatever the interleaving, each runner's
//! line items total `T(q) = round(round(q × price) × (100 − percent) / 100)` for its billed
//! GPU-seconds `q`, to the nano-USD; the ledger charges exactly the line items; and the
//! runner-state history holds exactly the modelled runner-milliseconds of each column.

use proptest::prelude::*;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::HashMap;
use std::str::FromStr;
use tollgate_core::catalog::Catalog;
use tollgate_core::events::EventData;
use tollgate_core::ids::{
    AppName, EnvironmentName, MachineType, PurchaseId, RunnerEventId, RunnerId,
};
use tollgate_core::ledger::TransferKind;
use tollgate_core::machine::{apply, BatchState, Op, Outcome};
use tollgate_core::money::round_usd_to_nanos;
use tollgate_core::serverless::{
    line_item_request_id, name_live_runners, HistoryState, RunnerEvent, RunnerState,
};
use tollgate_core::testing::{account_id, discounts, fresh_state, T0};
use tollgate_core::{Nanos, Timestamp};

const SAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../catalog/sample.toml"
));

/// The machines runners run on: two with surge prices (one of them GPU-B200, priced to 12
/// decimals), one CPU size without.
const MACHINES: [&str; 3] = ["GPU-B200", "GPU-H100", "XS"];

/// The sample catalog's machine prices and surge prices (parsed once).
fn catalog() -> &'static Catalog {
    static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    CATALOG.get_or_init(|| {
        let doc = tollgate_core::catalog::document::parse(SAMPLE).expect("catalog/sample.toml");
        Catalog {
            machines: doc.machines,
            machines_surge: doc.machines_surge,
            ..Catalog::default()
        }
    })
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// One runner's history as generated.
#[derive(Clone, Debug)]
struct RunnerPlan {
    /// `alice` (no discount) or `bob` (10 %).
    account: usize,
    machine: usize,
    num_gpus: u32,
    /// Only on a machine with a surge price.
    surge: bool,
    start_ms: i64,
    /// The time since the previous report (or the start) and the state, per report.
    reports: Vec<(i64, RunnerState)>,
}

/// Gaps mostly well within the grace, some right at it, some past it.
fn gap_ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => 1_000i64..90_000,
        1 => 0i64..1_000,
        1 => 295_000i64..305_000,
        2 => 120_000i64..1_200_000,
    ]
}

fn runner_plan() -> impl Strategy<Value = RunnerPlan> {
    (
        0usize..2,
        0..MACHINES.len(),
        1u32..=8,
        any::<bool>(),
        0i64..600_000,
        prop::collection::vec(
            (gap_ms(), prop::sample::select(RunnerState::ALL.to_vec())),
            1..14,
        ),
    )
        .prop_map(
            |(account, machine, num_gpus, surge, start_ms, mut reports)| {
                // A terminated runner reports nothing more.
                if let Some(end) = reports
                    .iter()
                    .position(|(_, state)| *state == RunnerState::Terminated)
                {
                    reports.truncate(end + 1);
                }
                RunnerPlan {
                    account,
                    machine,
                    num_gpus,
                    surge: surge && MACHINES[machine] != "XS",
                    start_ms,
                    reports,
                }
            },
        )
}

/// Everything a case sends: the runners' histories, settlements `(runner, ms after T0)` and
/// duplicates `(runner, report, delay ms)`.
#[derive(Clone, Debug)]
struct Case {
    grace_ms: i64,
    runners: Vec<RunnerPlan>,
    settlements: Vec<(usize, i64)>,
    duplicates: Vec<(usize, usize, i64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(300_000i64), Just(60_000i64), Just(120_500i64)],
        prop::collection::vec(runner_plan(), 1..5),
        prop::collection::vec((0usize..8, 0i64..8_000_000), 0..40),
        prop::collection::vec((0usize..8, 0usize..14, 0i64..1_800_000), 0..12),
    )
        .prop_map(|(grace_ms, runners, settlements, duplicates)| Case {
            grace_ms,
            runners,
            settlements,
            duplicates,
        })
}

/// A runner's reports as events, in time order.
fn events_of(i: usize, plan: &RunnerPlan) -> Vec<RunnerEvent> {
    let mut at = T0 + plan.start_ms;
    plan.reports
        .iter()
        .enumerate()
        .map(|(n, (gap, state))| {
            if n > 0 {
                at += gap;
            }
            RunnerEvent {
                event_id: RunnerEventId::parse(&format!("re-{i}-{n}")).unwrap(),
                runner: RunnerId::parse(&format!("rn-{i}")).unwrap(),
                account: account_id(plan.account),
                // One app per runner, so the history's rows are the runner's.
                app: AppName::parse(&format!("app-{i}")).unwrap(),
                environment: i
                    .is_multiple_of(2)
                    .then(|| EnvironmentName::parse("production").unwrap()),
                machine_type: MachineType::parse(MACHINES[plan.machine]).unwrap(),
                num_gpus: plan.num_gpus,
                state: *state,
                at: Timestamp(at),
                is_surge: plan.surge,
            }
        })
        .collect()
}

enum Action {
    Events(Vec<RunnerEvent>),
    Settle(usize),
}

/// The case's deliveries in time order: each report at its `at` (reports at the same time in
/// one bulk), settlements and duplicates at theirs.
fn deliveries(c: &Case, events: &[Vec<RunnerEvent>]) -> Vec<(i64, Action)> {
    let mut timed: Vec<(i64, u8, Action)> = Vec::new();
    for evs in events {
        for e in evs {
            timed.push((e.at.0, 0, Action::Events(vec![e.clone()])));
        }
    }
    for &(runner, report, delay) in &c.duplicates {
        let Some(e) = events.get(runner).and_then(|evs| evs.get(report)) else {
            continue;
        };
        timed.push((e.at.0 + delay, 1, Action::Events(vec![e.clone()])));
    }
    for &(runner, after) in &c.settlements {
        if runner < events.len() {
            timed.push((T0 + after, 1, Action::Settle(runner)));
        }
    }
    // Stable: at one time, reports first in their runner's order, then the rest.
    timed.sort_by_key(|(at, rank, _)| (*at, *rank));
    let mut out: Vec<(i64, Action)> = Vec::new();
    for (at, _, action) in timed {
        match (out.last_mut(), action) {
            (Some((t, Action::Events(bulk))), Action::Events(more)) if *t == at => {
                bulk.extend(more)
            }
            (_, action) => out.push((at, action)),
        }
    }
    out
}

/// The modelled runner-milliseconds of each report: `[at_i, min(at_{i+1}, at_i + grace))`.
fn covered(events: &[RunnerEvent], grace_ms: i64) -> Vec<(RunnerState, i64)> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let cap = if e.state == RunnerState::Terminated {
                e.at.0
            } else {
                e.at.0 + grace_ms
            };
            let end = events.get(i + 1).map_or(cap, |next| next.at.0.min(cap));
            (e.state, end - e.at.0)
        })
        .collect()
}

/// `T(q)`: the whole of `q` GPU-seconds at `price` with `percent` off, rounded as the module
/// says (the subtotal once, then the discounted total of that).
fn t(q: Decimal, price: Decimal, percent: Option<Decimal>) -> i64 {
    let s = round_usd_to_nanos(q * price).unwrap().0;
    let keep = match percent {
        Some(p) => (Decimal::ONE_HUNDRED - p) / Decimal::ONE_HUNDRED,
        None => Decimal::ONE,
    };
    (Decimal::from(s) * keep)
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
        .to_i64()
        .unwrap()
}

/// Runs a case on accounts funded with `credits` each; returns the final state.
fn run(c: &Case, credits: Nanos) -> (BatchState, Vec<Vec<RunnerEvent>>) {
    let cat = catalog();
    let mut s = fresh_state();
    s.serverless.grace_ms = c.grace_ms;
    for a in 0..2 {
        let op = Op::Purchase {
            account: account_id(a),
            purchase_id: PurchaseId::parse("p0").unwrap(),
            amount: credits,
            paid: false,
            expires_at: None,
        };
        apply(&mut s, cat, Timestamp(T0 - 1), op).unwrap();
    }
    s.events.clear();
    let events: Vec<Vec<RunnerEvent>> = c
        .runners
        .iter()
        .enumerate()
        .map(|(i, p)| events_of(i, p))
        .collect();
    let mut last = T0;
    for (at, action) in deliveries(c, &events) {
        let now = Timestamp(at);
        last = last.max(at);
        match action {
            Action::Events(bulk) => {
                let n = bulk.len();
                let o = apply(&mut s, cat, now, Op::RunnerEvents(bulk)).unwrap();
                let Outcome::RunnerEvents { results } = o else {
                    panic!("{o:?}");
                };
                assert_eq!(results.len(), n);
            }
            Action::Settle(i) => {
                let runner = RunnerId::parse(&format!("rn-{i}")).unwrap();
                apply(
                    &mut s,
                    cat,
                    now,
                    Op::SettleRunner {
                        runner,
                        until: None,
                    },
                )
                .unwrap();
            }
        }
    }
    // In the end every runner is settled as far as its last report covers.
    let end = Timestamp(last + 86_400_000);
    for i in 0..events.len() {
        let runner = RunnerId::parse(&format!("rn-{i}")).unwrap();
        apply(
            &mut s,
            cat,
            end,
            Op::SettleRunner {
                runner,
                until: None,
            },
        )
        .unwrap();
    }
    (s, events)
}

/// The properties every case must have, whatever the interleaving.
fn check_sums(c: &Case, s: &BatchState, events: &[Vec<RunnerEvent>]) -> Result<(), TestCaseError> {
    let cat = catalog();
    for (i, evs) in events.iter().enumerate() {
        let plan = &c.runners[i];
        let runner = RunnerId::parse(&format!("rn-{i}")).unwrap();
        let request = line_item_request_id(&runner);
        let machine = MachineType::parse(MACHINES[plan.machine]).unwrap();
        let price = if plan.surge {
            cat.machines_surge[&machine]
        } else {
            cat.machines[&machine]
        };
        let percent = discounts(plan.account).percent_discount;
        let model = covered(evs, c.grace_ms);
        let billed_ms: i64 = model
            .iter()
            .filter(|(st, _)| st.is_billed())
            .map(|(_, ms)| ms)
            .sum();
        let q = Decimal::new(billed_ms * i64::from(plan.num_gpus), 3);
        let items: Vec<_> = s
            .line_items
            .iter()
            .filter(|l| l.request_id == request)
            .collect();
        let total: i64 = items.iter().map(|l| l.charge.total_nanos.0).sum();
        prop_assert_eq!(
            total,
            t(q, price, percent),
            "runner {} billed {} GPU-s",
            i,
            q
        );
        let quantity: Decimal = items.iter().map(|l| l.charge.quantity).sum();
        prop_assert_eq!(quantity, q);
        prop_assert_eq!(s.runners[&runner].billed, Nanos(total));
        for l in &items {
            prop_assert_eq!(l.charge.unit_price, price);
            prop_assert_eq!(l.charge.percent_discount, percent);
            prop_assert_eq!(
                l.charge.subtotal_nanos.0 - l.charge.discount_nanos.0,
                l.charge.total_nanos.0
            );
            prop_assert!(
                l.charge.total_nanos >= Nanos::ZERO && l.charge.discount_nanos >= Nanos::ZERO
            );
            // A piece lies within one UTC minute.
            let ms = l.inference_ms.unwrap();
            prop_assert!(ms > 0 && l.billed_at.0.rem_euclid(60_000) + ms <= 60_000);
        }
        // The history: every column's runner-milliseconds, free states included.
        let app = AppName::parse(&format!("app-{i}")).unwrap();
        for column in [
            HistoryState::Running,
            HistoryState::Idle,
            HistoryState::Pending,
            HistoryState::Draining,
        ] {
            let want: i64 = model
                .iter()
                .filter(|(st, _)| st.history() == Some(column))
                .map(|(_, ms)| ms)
                .sum();
            let got: i64 = s
                .runner_minutes
                .iter()
                .filter(|m| m.app == app && m.state == column)
                .map(|m| m.ms)
                .sum();
            prop_assert_eq!(got, want, "runner {} {:?}", i, column);
        }
    }
    // The ledger charges exactly the line items, in order, under their request ids.
    let charges: Vec<(String, i64)> = s
        .transfers
        .iter()
        .filter(|t| t.transfer.kind == TransferKind::Charge)
        .map(|t| {
            (
                t.request_id.as_ref().unwrap().to_string(),
                t.transfer.amount.0,
            )
        })
        .collect();
    let items: Vec<(String, i64)> = s
        .line_items
        .iter()
        .map(|l| (l.request_id.to_string(), l.charge.total_nanos.0))
        .collect();
    prop_assert_eq!(charges, items);
    let minutes_ok = s.runner_minutes.iter().all(|m| m.ms > 0 && m.ms <= 60_000);
    prop_assert!(minutes_ok);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn runner_time_is_billed_exactly_whatever_the_interleaving(c in case()) {
        let credits = Nanos(1_000_000 * 1_000_000_000);
        let (s, events) = run(&c, credits);
        check_sums(&c, &s, &events)?;
        for a in 0..2 {
            let charged: i64 = s
                .line_items
                .iter()
                .filter(|l| l.account == account_id(a))
                .map(|l| l.charge.total_nanos.0)
                .sum();
            prop_assert_eq!(s.accounts[&account_id(a)].credit.balance, Nanos(credits.0 - charged));
        }
        let locked = s
            .events
            .iter()
            .any(|e| matches!(e.data, EventData::AccountLocked { .. }));
        prop_assert!(!locked);
    }

    #[test]
    fn an_account_that_runs_out_locks_once_and_is_still_billed_exactly(c in case()) {
        // 2 cents: a few minutes of GPU time.
        let credits = Nanos(20_000_000);
        let (mut s, events) = run(&c, credits);
        check_sums(&c, &s, &events)?;
        let now = s.runners.values().map(|r| r.last_at).max().unwrap_or_default();
        name_live_runners(&mut s, Vec::new(), now);
        for a in 0..2 {
            let account = account_id(a);
            let locked: Vec<_> = s
                .events
                .iter()
                .filter(|e| e.account == account)
                .filter_map(|e| match &e.data {
                    EventData::AccountLocked { balance_nano_usd, running_runners, .. } => {
                        Some((*balance_nano_usd, running_runners.len()))
                    }
                    _ => None,
                })
                .collect();
            let balance = s.accounts[&account].credit.balance;
            // Nothing adds credits: the account locks once, when its balance reaches zero.
            prop_assert_eq!(locked.len(), usize::from(balance <= Nanos::ZERO), "{:?}", locked);
            if let Some((at_lock, _)) = locked.first() {
                prop_assert!(*at_lock <= Nanos::ZERO);
                prop_assert!(s.accounts[&account].is_locked());
            }
        }
    }
}

/// A fixed history of the kind the properties draw, in full: so a failure of the generator's
/// assumptions shows here first, and the sample catalog's surge prices are the ones used.
#[test]
fn a_fixed_interleaving_matches_the_model() {
    let c = Case {
        grace_ms: 300_000,
        runners: vec![
            RunnerPlan {
                account: 1,
                machine: 0,
                num_gpus: 8,
                surge: true,
                start_ms: 1_234,
                reports: vec![
                    (0, RunnerState::Setup),
                    (45_000, RunnerState::Running),
                    (400_000, RunnerState::Idle),
                    (59_999, RunnerState::Draining),
                    (1, RunnerState::Terminated),
                ],
            },
            RunnerPlan {
                account: 0,
                machine: 2,
                num_gpus: 1,
                surge: false,
                start_ms: 0,
                reports: vec![(0, RunnerState::Pending), (10_000, RunnerState::Running)],
            },
        ],
        settlements: vec![(0, 61_000), (0, 200_000), (1, 200_000), (0, 1_000_000)],
        duplicates: vec![(0, 1, 0), (0, 2, 600_000), (1, 0, 5)],
    };
    let (s, events) = run(&c, Nanos(1_000_000_000_000));
    check_sums(&c, &s, &events).unwrap();
    assert_eq!(
        catalog().machines_surge[&MachineType::parse("GPU-B200").unwrap()],
        d("0.002604166668")
    );
    // rn-0: SETUP 45 s, RUNNING 300 s (the grace; the gap after it is free), IDLE 59.999 s,
    // DRAINING 1 ms, × 8 GPUs at the surge price, 10 % off.
    let q = Decimal::new((45_000 + 300_000 + 59_999 + 1) * 8, 3);
    let rn0 = line_item_request_id(&RunnerId::parse("rn-0").unwrap());
    let total: i64 = s
        .line_items
        .iter()
        .filter(|l| l.request_id == rn0)
        .map(|l| l.charge.total_nanos.0)
        .sum();
    assert_eq!(total, t(q, d("0.002604166668"), Some(d("10"))));
    let runners: HashMap<_, _> = s
        .runners
        .iter()
        .map(|(k, r)| (k.to_string(), r.billed))
        .collect();
    assert_eq!(runners["rn-0"], Nanos(total));
}
