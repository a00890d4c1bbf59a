//! Properties of spending limits, driven by random operation sequences through [`apply`] (pure,
//! no I/O), over accounts that each have an account-level block limit (a day), a block limit on
//! one of their keys (a week) and an alert limit (a month), in a time zone of the sequence.
//!
//! Sequences come from [`tollgate_core::testing`]; each submit and usage event is made with one
//! of two keys or none, and now and then the clock jumps hours ahead, so periods roll. After
//! every operation the limits are checked against a model of what each operation adds to them.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use std::collections::{BTreeSet, HashMap};
use tollgate_core::events::{EventData, NewEvent};
use tollgate_core::ids::{AccountId, ApiKeyId, LimitId, PurchaseId, RequestId};
use tollgate_core::limits::{LimitAction, LimitScope, LimitState, Period, SpendingLimit};
use tollgate_core::machine::{
    apply, AccountState, BatchState, Op, Outcome, Rejection, RequestRecord, RequestStatus,
};
use tollgate_core::testing::{
    account_id, fresh_state, to_op_in, Statuses, Timed, REAL_ACCOUNTS, T0,
};
use tollgate_core::{Nanos, Timestamp};

const KEYS: [&str; 2] = ["k0", "k1"];
const ZONES: [&str; 3] = ["UTC", "America/New_York", "Asia/Kolkata"];
const CENT: i64 = 10_000_000;

/// Each account's limits: the amounts in cents of its account block limit, its key `k0` block
/// limit and its alert limit; and the zone of them all.
#[derive(Clone, Debug)]
struct Setup {
    amounts: Vec<(i64, i64, i64)>,
    zone: usize,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::collection::vec((1i64..300, 1i64..300, 1i64..500), REAL_ACCOUNTS),
        0..ZONES.len(),
    )
        .prop_map(|(amounts, zone)| Setup { amounts, zone })
}

#[derive(Clone, Debug)]
struct KeyedStep {
    timed: Timed,
    /// The key a submit or usage event is made with (an index into [`KEYS`]).
    key: Option<usize>,
    /// Hours the clock jumps before the step (most often none).
    jump_ms: i64,
}

fn keyed() -> impl Strategy<Value = KeyedStep> {
    (
        tollgate_core::testing::timed(Statuses::Base),
        prop_oneof![2 => Just(None), 3 => (0..KEYS.len()).prop_map(Some)],
        prop_oneof![25 => Just(0i64), 1 => 3 * 3_600_000i64..40 * 3_600_000],
    )
        .prop_map(|(timed, key, jump_ms)| KeyedStep {
            timed,
            key,
            jump_ms,
        })
}

fn key(i: usize) -> ApiKeyId {
    ApiKeyId::parse(KEYS[i]).unwrap()
}

fn op_of(step: &KeyedStep, now: Timestamp, state: &BatchState) -> Op {
    let mut op = to_op_in(&step.timed.step, now, state);
    let k = step.key.map(key);
    match &mut op {
        Op::Submit { api_key, .. } => *api_key = k,
        Op::UsageEvent(e) => e.api_key = k,
        _ => {}
    }
    op
}

fn limits_of(i: usize, setup: &Setup, now: Timestamp) -> Vec<LimitState> {
    let (block, key_block, alert) = setup.amounts[i];
    let tz = ZONES[setup.zone].parse().unwrap();
    let limit = |id: &str, scope, period, action, cents: i64, thresholds: &[u32]| {
        LimitState::new(
            SpendingLimit {
                id: LimitId::parse(id).unwrap(),
                scope,
                period,
                timezone: tz,
                amount: Nanos(cents * CENT),
                action,
                alert_at_percent: thresholds.to_vec(),
                created_at: now,
            },
            now,
            Nanos::ZERO,
            Nanos::ZERO,
        )
    };
    vec![
        limit(
            "lim_day",
            LimitScope::Account,
            Period::Day,
            LimitAction::Block,
            block,
            &[50, 80, 100],
        ),
        limit(
            "lim_key",
            LimitScope::ApiKey(key(0)),
            Period::Week,
            LimitAction::Block,
            key_block,
            &[],
        ),
        limit(
            "lim_alert",
            LimitScope::Account,
            Period::Month,
            LimitAction::Alert,
            alert,
            &[25, 50, 100, 200],
        ),
    ]
}

/// The real accounts with their limits and plenty of credits, so that limits, not credits,
/// refuse most starts.
fn start_state(setup: &Setup, now: Timestamp) -> BatchState {
    let mut s = fresh_state();
    for i in 0..REAL_ACCOUNTS {
        s.accounts.get_mut(&account_id(i)).unwrap().limits = limits_of(i, setup, now);
        let funded = apply(
            &mut s,
            &tollgate_core::catalog::Catalog::default(),
            now,
            Op::Purchase {
                account: account_id(i),
                purchase_id: PurchaseId::parse("fund").unwrap(),
                amount: Nanos(1_000 * 1_000_000_000),
                paid: true,
                expires_at: None,
            },
        );
        assert!(funded.is_ok(), "{funded:?}");
    }
    s
}

fn total(l: &LimitState) -> i128 {
    i128::from(l.spent.0) + i128::from(l.held.0)
}

/// What the operation adds to a limit's `spent` and `held`: the model.
struct Effect {
    spent: i64,
    held: i64,
    /// Spend this operation may take past a block limit: a completion's cost above its hold,
    /// a late completion's or a usage event's whole cost.
    may_pass: bool,
}

fn effect(
    l_before: &LimitState,
    acct: &AccountId,
    before: &HashMap<RequestId, RequestRecord>,
    s: &BatchState,
    op: &Op,
    result: &Result<Outcome, Rejection>,
) -> Effect {
    let none = Effect {
        spent: 0,
        held: 0,
        may_pass: false,
    };
    let applies = |r: &RequestRecord| {
        &r.account == acct && l_before.limit.scope.applies_to(r.api_key.as_ref())
    };
    match (op, result) {
        (
            Op::Start { request_id, .. },
            Ok(Outcome::Started {
                hold,
                replayed: false,
                ..
            }),
        ) if applies(&s.requests[request_id]) => Effect {
            held: hold.0,
            ..none
        },
        (
            Op::Complete { request_id, .. },
            Ok(Outcome::Completed {
                completion,
                replayed: false,
                ..
            }),
        ) if applies(&s.requests[request_id]) => {
            let prev = &before[request_id];
            let cost = if completion.billed {
                completion.charge.total_nanos.0
            } else {
                0
            };
            if completion.late {
                Effect {
                    spent: cost,
                    held: 0,
                    may_pass: true,
                }
            } else {
                Effect {
                    spent: cost,
                    held: -prev.hold.0,
                    may_pass: cost > prev.hold.0,
                }
            }
        }
        (Op::Cancel { request_id } | Op::Expire { request_id }, Ok(o))
            if matches!(
                o,
                Outcome::Cancelled { replayed: false } | Outcome::Expired { expired: true }
            ) && applies(&s.requests[request_id])
                && before[request_id].status == RequestStatus::InProgress =>
        {
            Effect {
                held: -before[request_id].hold.0,
                ..none
            }
        }
        (
            Op::UsageEvent(e),
            Ok(Outcome::Completed {
                completion,
                replayed: false,
                ..
            }),
        ) if applies(&s.requests[&e.event_id])
            && completion.billed
            && e.timestamp >= l_before.period_start =>
        {
            Effect {
                spent: completion.charge.total_nanos.0,
                held: 0,
                may_pass: true,
            }
        }
        _ => none,
    }
}

/// The account without its limits (what a refusal must leave as it was).
fn without_limits(a: &AccountState) -> AccountState {
    AccountState {
        limits: Vec::new(),
        ..a.clone()
    }
}

/// Notices already recorded: `(account, limit, period start, threshold)` for alerts
/// (threshold 0 for `reached`).
type Seen = BTreeSet<(AccountId, String, Timestamp, u32)>;

#[allow(clippy::too_many_arguments)]
fn check_step(
    before_accounts: &HashMap<AccountId, AccountState>,
    before_requests: &HashMap<RequestId, RequestRecord>,
    events_before: usize,
    s: &BatchState,
    op: &Op,
    now: Timestamp,
    result: &Result<Outcome, Rejection>,
    seen: &mut Seen,
) -> Result<(), TestCaseError> {
    // The spending-limit notices among the events the operation recorded.
    let limit_events: Vec<&NewEvent> = s.events[events_before..]
        .iter()
        .filter(|e| {
            matches!(
                e.data,
                EventData::SpendingLimitAlert { .. } | EventData::SpendingLimitReached { .. }
            )
        })
        .collect();
    // A refusal changes nothing, but for a block limit's follow-up: the limit it names is
    // marked reached for its period (notified once).
    if let Err(e) = result {
        for (id, a) in &s.accounts {
            prop_assert_eq!(without_limits(a), without_limits(&before_accounts[id]));
        }
        prop_assert_eq!(&s.requests, before_requests);
        match e {
            Rejection::SpendingLimitExceeded {
                account,
                limit_id,
                required,
                resets_at,
                ..
            } => {
                let b = &before_accounts[account];
                let r = op.request_id().map(|id| &before_requests[id]);
                prop_assert!(r.is_some());
                let r = r.unwrap();
                let mut notified = false;
                for (lb, la) in b.limits.iter().zip(&s.accounts[account].limits) {
                    let rolled = lb.at(now);
                    if &lb.limit.id != limit_id {
                        prop_assert_eq!(la, lb, "another limit changed");
                        continue;
                    }
                    prop_assert_eq!(lb.limit.action, LimitAction::Block);
                    prop_assert!(lb.limit.scope.applies_to(r.api_key.as_ref()));
                    prop_assert!(
                        total(&rolled) + i128::from(required.0) > i128::from(lb.limit.amount.0),
                        "refused a hold that fit"
                    );
                    prop_assert_eq!(*resets_at, rolled.resets_at);
                    prop_assert_eq!(
                        la,
                        &LimitState {
                            reached: true,
                            ..rolled.clone()
                        }
                    );
                    notified = !rolled.reached;
                }
                prop_assert_eq!(s.events.len() - events_before, usize::from(notified));
                prop_assert_eq!(limit_events.len(), usize::from(notified));
            }
            _ => {
                prop_assert_eq!(&s.accounts, before_accounts);
                prop_assert_eq!(s.events.len(), events_before);
            }
        }
    }

    for (acct, a) in &s.accounts {
        let b = &before_accounts[acct];
        prop_assert_eq!(a.limits.len(), b.limits.len());
        for (lb, la) in b.limits.iter().zip(&a.limits) {
            let (before, after) = (lb.at(now), la.at(now));
            prop_assert_eq!(before.period_start, after.period_start);
            let amount = i128::from(lb.limit.amount.0);
            // `held` is exactly the holds of the running requests the limit applies to.
            let running: i64 = s
                .requests
                .values()
                .filter(|r| {
                    &r.account == acct
                        && r.status == RequestStatus::InProgress
                        && la.limit.scope.applies_to(r.api_key.as_ref())
                })
                .map(|r| r.hold.0)
                .sum();
            prop_assert_eq!(la.held, Nanos(running), "{} held", la.limit.id);
            if result.is_err() {
                continue;
            }
            // What the operation added is what the model says.
            let fx = effect(&before, acct, before_requests, s, op, result);
            prop_assert_eq!(
                after.spent.0,
                before.spent.0 + fx.spent,
                "{} spent",
                la.limit.id
            );
            prop_assert_eq!(
                after.held.0,
                before.held.0 + fx.held,
                "{} held",
                la.limit.id
            );
            if lb.limit.action == LimitAction::Block {
                // A start is admitted only if its hold fits.
                if let (
                    Op::Start { .. },
                    Ok(Outcome::Started {
                        replayed: false, ..
                    }),
                ) = (op, result)
                {
                    if fx.held > 0 {
                        prop_assert!(
                            total(&after) <= amount,
                            "{} admitted a hold past the limit",
                            la.limit.id
                        );
                    }
                }
                // Spend passes the limit only by costs above holds and usage events.
                if total(&after) > amount && total(&after) > total(&before) {
                    prop_assert!(fx.may_pass, "{:?} took {} past its limit", op, la.limit.id);
                }
            }
            // Thresholds notified are exactly those the spend reaches.
            let passed: Vec<u32> = after
                .limit
                .alert_at_percent
                .iter()
                .copied()
                .filter(|p| i128::from(after.spent.0) * 100 >= amount * i128::from(*p))
                .collect();
            prop_assert_eq!(&after.alerted, &passed);
            if after.spent >= after.limit.amount {
                prop_assert!(after.reached);
            }
        }
    }

    // Each notice once per threshold (or `reached`) per period, for the operation's account.
    for e in limit_events {
        prop_assert_eq!(Some(&e.account), account_of(op, before_requests));
        prop_assert_eq!(e.at, now);
        let (facts, threshold) = match &e.data {
            EventData::SpendingLimitAlert {
                limit,
                threshold_percent,
            } => {
                prop_assert!(
                    i128::from(limit.spent_nano_usd.0) * 100
                        >= i128::from(limit.amount_nano_usd.0) * i128::from(*threshold_percent)
                );
                (limit, *threshold_percent)
            }
            EventData::SpendingLimitReached { limit } => (limit, 0),
            _ => unreachable!("only spending-limit notices are kept"),
        };
        prop_assert!(
            seen.insert((
                e.account.clone(),
                facts.limit_id.clone(),
                facts.period_start,
                threshold
            )),
            "{} notified twice for {} in one period",
            facts.limit_id,
            threshold
        );
    }
    Ok(())
}

fn account_of<'a>(
    op: &'a Op,
    requests: &'a HashMap<RequestId, RequestRecord>,
) -> Option<&'a AccountId> {
    op.account().or_else(|| {
        op.request_id()
            .and_then(|id| requests.get(id))
            .map(|r| &r.account)
    })
}

fn run(setup: &Setup, steps: &[KeyedStep]) -> Result<(usize, usize), TestCaseError> {
    let catalog = crate::ledger_props::catalog();
    let mut now = Timestamp(T0);
    let mut s = start_state(setup, now);
    let mut seen = Seen::new();
    let (mut admitted, mut refused) = (0, 0);
    for step in steps {
        now = now.plus_ms(step.timed.dt_ms + step.jump_ms);
        let op = op_of(step, now, &s);
        let (accounts, requests, events) = (s.accounts.clone(), s.requests.clone(), s.events.len());
        let result = apply(&mut s, &catalog, now, op.clone());
        match &result {
            Ok(Outcome::Started {
                replayed: false, ..
            }) => admitted += 1,
            Err(Rejection::SpendingLimitExceeded { .. }) => refused += 1,
            _ => {}
        }
        check_step(
            &accounts, &requests, events, &s, &op, now, &result, &mut seen,
        )?;
    }
    Ok((admitted, refused))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of starts, completions, cancels, expiries and usage events keeps every
    /// limit's period spend as the model says: a block limit never admits a start whose hold
    /// takes `spent + held` past its amount, spend passes it only by completions that cost
    /// more than their holds and by usage events, `held` is always the holds of the running
    /// requests it applies to, a refusal changes nothing but its limit's `reached`, and each
    /// threshold is notified once per period.
    #[test]
    fn limits_hold_after_every_operation(
        setup in setup(),
        steps in prop::collection::vec(keyed(), 1..100),
    ) {
        run(&setup, &steps)?;
    }
}

/// The property above does reach what it is about: over many sequences, starts are admitted
/// and refused by limits.
#[test]
fn random_sequences_admit_and_refuse_starts_by_their_limits() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut admitted, mut refused) = (0, 0);
    for _ in 0..64 {
        let setup = setup().new_tree(&mut runner).unwrap().current();
        let steps = prop::collection::vec(keyed(), 60..100)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let (a, r) = run(&setup, &steps).unwrap();
        admitted += a;
        refused += r;
    }
    assert!(
        admitted > 50 && refused > 10,
        "admitted {admitted}, refused {refused}"
    );
}

/// The notices of one account's limits through [`apply`], in the batch's events: each alert
/// threshold once per period, `reached` once per period (by spend, or by a block limit's first
/// refusal), and all of it again in the next period.
#[test]
fn alert_thresholds_and_reached_are_notified_once_per_period_in_the_batch_events() {
    let catalog = crate::ledger_props::catalog();
    let alice = account_id(0);
    let mut s = fresh_state();
    let t0 = Timestamp(T0); // 2026-01-31T23:30:00Z
    let limit = |id: &str, action, thresholds: &[u32]| {
        LimitState::new(
            SpendingLimit {
                id: LimitId::parse(id).unwrap(),
                scope: LimitScope::Account,
                period: Period::Day,
                timezone: "UTC".parse().unwrap(),
                amount: Nanos(100_000_000),
                action,
                alert_at_percent: thresholds.to_vec(),
                created_at: t0,
            },
            t0,
            Nanos::ZERO,
            Nanos::ZERO,
        )
    };
    s.accounts.get_mut(&alice).unwrap().limits = vec![
        limit("lim_alert", LimitAction::Alert, &[50, 100]),
        limit("lim_block", LimitAction::Block, &[]),
    ];
    let mut n = 0;
    // A usage event of `units` megapixels (0.025 USD each) at `now`, its notices as
    // (limit, threshold; 0 for `reached`).
    let mut event = |s: &mut BatchState, now: Timestamp, units: i64| {
        n += 1;
        let before = s.events.len();
        let op = Op::UsageEvent(tollgate_core::machine::UsageEvent {
            event_id: RequestId::parse(&format!("ev-{n}")).unwrap(),
            account: alice.clone(),
            endpoint: tollgate_core::ids::EndpointId::parse(tollgate_core::testing::EP_MP).unwrap(),
            api_key: None,
            timestamp: now,
            status_code: 200,
            output: Default::default(),
            billable_units: Some(units.into()),
            queue_seconds: None,
            inference_seconds: None,
            machine_type: None,
            num_gpus: None,
        });
        assert!(apply(s, &catalog, now, op).is_ok());
        notices(&s.events[before..])
    };
    let start = |s: &mut BatchState, now: Timestamp, id: &str| {
        let before = s.events.len();
        let rid = RequestId::parse(id).unwrap();
        let submitted = apply(
            s,
            &catalog,
            now,
            Op::Submit {
                request_id: rid.clone(),
                account: alice.clone(),
                api_key: None,
                endpoint: tollgate_core::ids::EndpointId::parse(tollgate_core::testing::EP_MP)
                    .unwrap(),
            },
        );
        assert!(submitted.is_ok());
        let started = apply(
            s,
            &catalog,
            now,
            Op::Start {
                request_id: rid,
                machine_type: None,
                num_gpus: None,
                hold_units: None,
            },
        );
        (started, notices(&s.events[before..]))
    };
    let purchase = Op::Purchase {
        account: alice.clone(),
        purchase_id: PurchaseId::parse("fund").unwrap(),
        amount: Nanos(1_000_000_000_000),
        paid: true,
        expires_at: None,
    };
    assert!(apply(&mut s, &catalog, t0, purchase).is_ok());

    assert_eq!(event(&mut s, t0, 1), vec![]);
    assert_eq!(event(&mut s, t0, 1), vec![("lim_alert".into(), 50)]);
    assert_eq!(
        event(&mut s, t0, 2),
        vec![
            ("lim_alert".into(), 100),
            ("lim_alert".into(), 0),
            ("lim_block".into(), 0)
        ]
    );
    assert_eq!(event(&mut s, t0, 1), vec![]);
    // A refusal by a limit already reached this period notifies nothing more.
    let (refused, said) = start(&mut s, t0, "r-1");
    assert!(matches!(
        refused,
        Err(Rejection::SpendingLimitExceeded { .. })
    ));
    assert_eq!(said, vec![]);

    // The next UTC day: everything once more.
    let t1 = Timestamp(T0 + 30 * 60_000);
    assert_eq!(event(&mut s, t1, 2), vec![("lim_alert".into(), 50)]);
    let (refused, said) = start(&mut s, t1, "r-2");
    assert!(matches!(
        refused,
        Err(Rejection::SpendingLimitExceeded { .. })
    ));
    assert_eq!(
        said,
        vec![("lim_block".into(), 0)],
        "a first refusal is `reached`"
    );
    let (_, said) = start(&mut s, t1, "r-3");
    assert_eq!(said, vec![], "once per period");
    assert!(s.dirty_accounts.contains(&alice));
    let block = &s.accounts[&alice].limits[1];
    assert!(block.reached && block.spent == Nanos(50_000_000));
}

fn notices(events: &[NewEvent]) -> Vec<(String, u32)> {
    events
        .iter()
        .map(|e| match &e.data {
            EventData::SpendingLimitAlert {
                limit,
                threshold_percent,
            } => (limit.limit_id.clone(), *threshold_percent),
            EventData::SpendingLimitReached { limit } => (limit.limit_id.clone(), 0),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}
