//! Properties of the ledger and the request state machine, driven by random operation sequences
//! through [`apply`] (pure, no I/O).
//!
//! Sequences run over a few accounts and small pools of request, event and purchase ids, so that
//! duplicates, conflicts and out-of-order calls (complete before start, start after cancel, ...)
//! happen often; `now` only moves forward, sometimes far enough for holds to time out and for
//! the calendar month to change, and for credit lots bought with a short expiry to expire. After
//! every operation the whole state is checked against the ledger's invariants.

use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::{BTreeSet, HashMap};
use tollgate_core::catalog::{Catalog, EndpointDef, EndpointStatus, PriceVersion};
use tollgate_core::ids::{AccountId, EndpointId, MachineType, PurchaseId, RequestId};
use tollgate_core::ledger::{CreditAccount, LedgerAccount, TransferKind};
use tollgate_core::machine::{
    apply, AccountState, BatchState, LineItem, Lot, Op, Outcome, PurchaseRecord, Rejection,
    RequestRecord, RequestStatus, Source, UsageEvent, PAID_CREDITS_EXPIRE_MS,
};
use tollgate_core::policy::FourXxPolicy;
use tollgate_core::price::{Dims, Output, PriceRule, Rounding, Unit};
use tollgate_core::pricing::{Discounts, VolumeTier};
use tollgate_core::{Nanos, Timestamp};

// ---------------------------------------------------------------------------------------------
// The catalog and the accounts.

const EP_MP: &str = "test/megapixel";
const EP_VIDEO: &str = "test/video";
const EP_GPU: &str = "test/gpu";
/// Never in the catalog.
const EP_UNKNOWN: &str = "test/unknown";
const ENDPOINTS: [&str; 4] = [EP_MP, EP_VIDEO, EP_GPU, EP_UNKNOWN];
const MACHINE: &str = "GPU-H100";

/// `alice` pays list price, `bob` has a flat 10% discount, `carol` a 20% volume tier from
/// 0.50 USD of monthly spend. `ghost` does not exist.
const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "ghost"];
const REAL_ACCOUNTS: usize = 3;

/// Lifecycle request ids, and usage event ids: `r0` is in both pools, so events and lifecycle
/// requests collide.
const REQUEST_IDS: [&str; 6] = ["r0", "r1", "r2", "r3", "r4", "r5"];
const EVENT_IDS: [&str; 4] = ["e0", "e1", "e2", "r0"];
const PURCHASE_IDS: [&str; 4] = ["p0", "p1", "p2", "p3"];
/// Purchase amounts in nano-USD: 0.05, 0.50, 5.00 USD, and an invalid zero.
const AMOUNTS: [i64; 4] = [50_000_000, 500_000_000, 5_000_000_000, 0];

/// 2026-01-31T23:30:00Z: the month changes half an hour in.
const T0: i64 = 1_769_902_200_000;

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal literal")
}

fn rule(unit: Unit, unit_price: Option<&str>) -> PriceRule {
    PriceRule {
        unit,
        unit_price: unit_price.map(d),
        per: None,
        rounding: Rounding::Exact,
        min_units: None,
        megapixel_divisor: None,
        include_input_images: false,
        base: None,
        rates: vec![],
        multipliers: vec![],
        add_ons: vec![],
        tokens: None,
        cost_step: None,
    }
}

fn endpoint(
    id: &str,
    hold_units: &str,
    hold_timeout_s: u32,
    machine: Option<&str>,
    four_xx: FourXxPolicy,
) -> EndpointDef {
    EndpointDef {
        id: EndpointId::parse(id).unwrap(),
        display_name: id.to_string(),
        category: "test".into(),
        description: String::new(),
        status: EndpointStatus::Active,
        partner: false,
        four_xx,
        machine_type: machine.map(|m| MachineType::parse(m).unwrap()),
        hold_units: d(hold_units),
        hold_timeout_s,
    }
}

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    c.machines
        .insert(MachineType::parse(MACHINE).unwrap(), d("0.000525"));
    let mut video_rule = rule(Unit::VideoSecond, Some("0.10"));
    video_rule.min_units = Some(d("5"));
    let defs = [
        (
            endpoint(EP_MP, "4", 600, None, FourXxPolicy::Free),
            rule(Unit::Megapixel, Some("0.025")),
        ),
        (
            endpoint(EP_VIDEO, "10", 30, None, FourXxPolicy::Free),
            video_rule,
        ),
        (
            endpoint(
                EP_GPU,
                "60",
                5,
                Some(MACHINE),
                FourXxPolicy::InferenceSeconds,
            ),
            rule(Unit::GpuSecond, None),
        ),
    ];
    for (i, (def, rule)) in defs.into_iter().enumerate() {
        c.insert_version(PriceVersion {
            id: i as i64 + 1,
            endpoint: def.id.clone(),
            account: None,
            effective_from: Timestamp(0),
            rule,
        });
        c.endpoints.insert(def.id.clone(), def);
    }
    c
}

fn account_id(i: usize) -> AccountId {
    AccountId::parse(ACCOUNTS[i]).unwrap()
}

fn fresh_state() -> BatchState {
    let mut s = BatchState::default();
    for i in 0..REAL_ACCOUNTS {
        let id = account_id(i);
        let mut a = AccountState::new(CreditAccount::new_prepaid(id.clone()));
        match i {
            1 => a.discounts.percent_discount = Some(d("10")),
            2 => {
                a.discounts = Discounts {
                    percent_discount: None,
                    volume_tiers: vec![VolumeTier {
                        from_usd: d("0.50"),
                        percent: d("20"),
                    }],
                }
            }
            _ => {}
        }
        s.accounts.insert(id, a);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Operations, as small numbers that index the pools above.

#[derive(Clone, Debug)]
struct Usage {
    status: u16,
    /// Output images (width, height).
    images: Vec<(u64, u64)>,
    /// Hundredths of a second of video.
    video_cs: Option<i64>,
    billable_units: Option<i64>,
    /// Milliseconds of inference; `None` lets a completion measure it.
    inference_ms: Option<i64>,
}

#[derive(Clone, Debug)]
enum Step {
    Submit {
        req: usize,
        account: usize,
        endpoint: usize,
    },
    Start {
        req: usize,
        num_gpus: Option<u32>,
        hold_units: Option<i64>,
    },
    Complete {
        req: usize,
        usage: Usage,
    },
    Cancel {
        req: usize,
    },
    Expire {
        req: usize,
    },
    Purchase {
        account: usize,
        pid: usize,
        amount: usize,
        paid: bool,
        /// An explicit expiry this many ms after `now` (0: now, which is refused).
        expires_in_ms: Option<i64>,
    },
    ExpireCredits {
        account: usize,
    },
    Event {
        id: usize,
        account: usize,
        endpoint: usize,
        /// How long before `now` the event happened (negative: in the future).
        back_ms: i64,
        usage: Usage,
        num_gpus: Option<u32>,
    },
}

#[derive(Clone, Debug)]
struct Timed {
    /// Milliseconds the clock moves forward before the step.
    dt_ms: i64,
    step: Step,
}

fn status_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => Just(200u16),
        1 => Just(201u16),
        1 => Just(404u16),
        1 => Just(422u16),
        1 => Just(500u16),
        1 => Just(503u16),
        1 => Just(99u16),
    ]
}

fn usage() -> impl Strategy<Value = Usage> {
    (
        status_code(),
        prop::collection::vec((1u64..=3000, 1u64..=3000), 0..4),
        prop::option::of(0i64..2000),
        prop_oneof![
            8 => Just(None),
            2 => (0i64..40).prop_map(Some),
            1 => Just(Some(-1i64)),
        ],
        prop::option::of(0i64..200_000),
    )
        .prop_map(
            |(status, images, video_cs, billable_units, inference_ms)| Usage {
                status,
                images,
                video_cs,
                billable_units,
                inference_ms,
            },
        )
}

/// Mostly real accounts, now and then the missing one.
fn account_ix() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 0..REAL_ACCOUNTS, 1 => Just(REAL_ACCOUNTS)]
}

fn endpoint_ix() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 0usize..3, 1 => Just(3usize)]
}

fn num_gpus() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![6 => Just(None), 3 => (1u32..=4).prop_map(Some), 1 => Just(Some(0u32))]
}

/// Mostly the default expiry, often one a few seconds away (so that lots expire within a
/// sequence), now and then `now` itself (refused).
fn expires_in_ms() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        5 => Just(None),
        4 => (1i64..20_000).prop_map(Some),
        1 => Just(Some(0i64)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let req = 0..REQUEST_IDS.len();
    prop_oneof![
        4 => (req.clone(), account_ix(), endpoint_ix()).prop_map(|(req, account, endpoint)| {
            Step::Submit { req, account, endpoint }
        }),
        4 => (
            req.clone(),
            num_gpus(),
            prop_oneof![6 => Just(None), 3 => (0i64..12).prop_map(Some), 1 => Just(Some(-1i64))],
        )
            .prop_map(|(req, num_gpus, hold_units)| Step::Start { req, num_gpus, hold_units }),
        4 => (req.clone(), usage()).prop_map(|(req, usage)| Step::Complete { req, usage }),
        1 => req.clone().prop_map(|req| Step::Cancel { req }),
        1 => req.prop_map(|req| Step::Expire { req }),
        4 => (
            account_ix(),
            0..PURCHASE_IDS.len(),
            0..AMOUNTS.len(),
            prop::bool::weighted(0.8),
            expires_in_ms(),
        )
            .prop_map(|(account, pid, amount, paid, expires_in_ms)| Step::Purchase {
                account,
                pid,
                amount,
                paid,
                expires_in_ms,
            }),
        2 => account_ix().prop_map(|account| Step::ExpireCredits { account }),
        2 => (
            0..EVENT_IDS.len(),
            account_ix(),
            endpoint_ix(),
            // One in eleven lands beyond the allowed clock skew, in the future.
            prop_oneof![10 => 0i64..600_000, 1 => -400_000i64..-300_001],
            usage(),
            num_gpus(),
        )
            .prop_map(|(id, account, endpoint, back_ms, usage, num_gpus)| Step::Event {
                id,
                account,
                endpoint,
                back_ms,
                usage,
                num_gpus,
            }),
    ]
}

fn timed() -> impl Strategy<Value = Timed> {
    (
        prop_oneof![
            8 => 0i64..3_000,
            3 => 3_000i64..40_000,
            1 => 600_000i64..1_800_000,
        ],
        step(),
    )
        .prop_map(|(dt_ms, step)| Timed { dt_ms, step })
}

fn output(u: &Usage) -> Output {
    Output {
        images: u
            .images
            .iter()
            .map(|&(width, height)| Dims { width, height })
            .collect(),
        video_seconds: u.video_cs.map(|cs| Decimal::new(cs, 2)),
        ..Output::default()
    }
}

fn to_op(step: &Step, now: Timestamp) -> Op {
    let rid = |i: usize| RequestId::parse(REQUEST_IDS[i]).unwrap();
    let ep = |i: usize| EndpointId::parse(ENDPOINTS[i]).unwrap();
    match step {
        Step::Submit {
            req,
            account,
            endpoint,
        } => Op::Submit {
            request_id: rid(*req),
            account: account_id(*account),
            api_key: None,
            endpoint: ep(*endpoint),
        },
        Step::Start {
            req,
            num_gpus,
            hold_units,
        } => Op::Start {
            request_id: rid(*req),
            machine_type: None,
            num_gpus: *num_gpus,
            hold_units: hold_units.map(Decimal::from),
        },
        Step::Complete { req, usage } => Op::Complete {
            request_id: rid(*req),
            status_code: usage.status,
            output: output(usage),
            billable_units: usage.billable_units.map(Decimal::from),
            inference_seconds: usage.inference_ms.map(|ms| Decimal::new(ms, 3)),
        },
        Step::Cancel { req } => Op::Cancel {
            request_id: rid(*req),
        },
        Step::Expire { req } => Op::Expire {
            request_id: rid(*req),
        },
        Step::Purchase {
            account,
            pid,
            amount,
            paid,
            expires_in_ms,
        } => Op::Purchase {
            account: account_id(*account),
            purchase_id: PurchaseId::parse(PURCHASE_IDS[*pid]).unwrap(),
            amount: Nanos(AMOUNTS[*amount]),
            paid: *paid,
            expires_at: expires_in_ms.map(|ms| now.plus_ms(ms)),
        },
        Step::ExpireCredits { account } => Op::ExpireCredits {
            account: account_id(*account),
        },
        Step::Event {
            id,
            account,
            endpoint,
            back_ms,
            usage,
            num_gpus,
        } => Op::UsageEvent(UsageEvent {
            event_id: RequestId::parse(EVENT_IDS[*id]).unwrap(),
            account: account_id(*account),
            endpoint: ep(*endpoint),
            api_key: None,
            timestamp: Timestamp(now.0 - back_ms),
            status_code: usage.status,
            output: output(usage),
            billable_units: usage.billable_units.map(Decimal::from),
            queue_seconds: Some(Decimal::new(1500, 3)),
            inference_seconds: usage.inference_ms.map(|ms| Decimal::new(ms, 3)),
            machine_type: None,
            num_gpus: *num_gpus,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Checking.

/// Everything `apply` may change.
#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    accounts: HashMap<AccountId, AccountState>,
    requests: HashMap<RequestId, RequestRecord>,
    purchases: HashMap<(AccountId, PurchaseId), PurchaseRecord>,
    dirty_accounts: BTreeSet<AccountId>,
    dirty_requests: BTreeSet<RequestId>,
    new_purchases: usize,
    transfers: usize,
    line_items: usize,
}

fn snapshot(s: &BatchState) -> Snapshot {
    Snapshot {
        accounts: s.accounts.clone(),
        requests: s.requests.clone(),
        purchases: s.purchases.clone(),
        dirty_accounts: s.dirty_accounts.clone(),
        dirty_requests: s.dirty_requests.clone(),
        new_purchases: s.new_purchases.len(),
        transfers: s.transfers.len(),
        line_items: s.line_items.len(),
    }
}

fn is_replay(o: &Outcome) -> bool {
    match o {
        Outcome::Submitted { replayed, .. }
        | Outcome::Started { replayed, .. }
        | Outcome::Completed { replayed, .. }
        | Outcome::Cancelled { replayed }
        | Outcome::Purchased { replayed, .. } => *replayed,
        Outcome::Expired { expired } => !*expired,
        Outcome::CreditsExpired { amount } => *amount == Nanos::ZERO,
    }
}

fn customer(a: &AccountId) -> LedgerAccount {
    LedgerAccount::Customer(a.clone())
}

/// A lot's place in the spending order: earliest expiry first, lots that never expire last,
/// then the older first, then by purchase id.
fn spend_key(l: &Lot) -> (bool, Option<Timestamp>, Timestamp, PurchaseId) {
    (
        l.expires_at.is_none(),
        l.expires_at,
        l.created_at,
        l.purchase_id.clone(),
    )
}

fn lot_sum(a: &AccountState) -> i64 {
    a.lots.iter().map(|l| l.remaining.0).sum()
}

/// Pairs each lot of `b` (before) with the same purchase's lot in `a` (after) and checks that
/// only `remaining` changed and never went up. Returns (lot after, amount taken from it).
fn lot_cuts<'a>(
    b: &AccountState,
    a: &'a AccountState,
) -> Result<Vec<(&'a Lot, i64)>, TestCaseError> {
    prop_assert_eq!(a.lots.len(), b.lots.len(), "a lot was added or dropped");
    let mut cuts = Vec::new();
    for lb in &b.lots {
        let la = a.lots.iter().find(|l| l.purchase_id == lb.purchase_id);
        prop_assert!(la.is_some(), "lot {} disappeared", lb.purchase_id);
        let la = la.unwrap();
        prop_assert_eq!(
            &Lot {
                remaining: lb.remaining,
                ..la.clone()
            },
            lb,
            "only what is left of a lot may change"
        );
        let cut = lb.remaining.0 - la.remaining.0;
        prop_assert!(cut >= 0, "lot {} went up by {}", lb.purchase_id, -cut);
        cuts.push((la, cut));
    }
    Ok(cuts)
}

/// A charge of `cost` took `min(cost, what the lots held)` from the lots, in spending order:
/// no lot that comes earlier in the order has anything left while a later one was cut.
fn check_spending(b: &AccountState, a: &AccountState, cost: Nanos) -> Result<(), TestCaseError> {
    let cuts = lot_cuts(b, a)?;
    let taken: i64 = cuts.iter().map(|(_, c)| c).sum();
    prop_assert_eq!(
        taken,
        cost.0.min(lot_sum(b)),
        "a charge of {} took {} from the lots",
        cost,
        taken
    );
    for (cut_lot, cut) in &cuts {
        if *cut == 0 {
            continue;
        }
        for (other, _) in &cuts {
            if spend_key(other) < spend_key(cut_lot) {
                prop_assert_eq!(
                    other.remaining,
                    Nanos::ZERO,
                    "lot {} was spent while {}, which expires earlier, still has credits",
                    cut_lot.purchase_id,
                    other.purchase_id
                );
            }
        }
    }
    Ok(())
}

/// Checks the state after `op` was applied at `now` with `result`, given the state before.
fn check_step(
    catalog: &Catalog,
    before: &Snapshot,
    s: &BatchState,
    op: &Op,
    now: Timestamp,
    result: &Result<Outcome, Rejection>,
) -> Result<(), TestCaseError> {
    let after = snapshot(s);
    let new_transfers = &s.transfers[before.transfers..];
    let new_items = &s.line_items[before.line_items..];

    // A rejected operation changes nothing; a repeat changes nothing either.
    match result {
        Err(e) => prop_assert_eq!(&after, before, "rejected ({}) but the state changed", e),
        Ok(o) if is_replay(o) => {
            prop_assert_eq!(&after, before, "a replay ({:?}) changed the state", o)
        }
        Ok(_) => {}
    }

    check_ledger(catalog, s)?;

    // Only ExpireCredits expires credits.
    if !matches!(op, Op::ExpireCredits { .. }) {
        prop_assert!(
            new_transfers
                .iter()
                .all(|t| t.transfer.kind != TransferKind::CreditExpiry),
            "{:?} expired credits",
            op
        );
    }

    // Finished requests never change again.
    for (id, r) in &before.requests {
        let now_r = &s.requests[id];
        if r.status.is_final() {
            prop_assert_eq!(now_r, r, "finished request {} changed", id);
        }
    }

    let Ok(outcome) = result else { return Ok(()) };
    match (op, outcome) {
        (
            Op::Start { request_id, .. },
            Outcome::Started {
                hold,
                limit,
                in_progress,
                replayed: false,
            },
        ) => {
            let r = &s.requests[request_id];
            let a = &s.accounts[&r.account];
            prop_assert_eq!(before.requests[request_id].status, RequestStatus::InQueue);
            prop_assert_eq!(r.status, RequestStatus::InProgress);
            prop_assert_eq!(r.hold, *hold);
            prop_assert!(hold.0 >= 0);
            // The hold fit: it never takes the available balance below the floor (0).
            prop_assert!(
                a.credit.available() >= Nanos::ZERO,
                "start left available {} < 0",
                a.credit.available()
            );
            prop_assert_eq!(*in_progress, a.in_progress);
            prop_assert!(
                *in_progress <= *limit,
                "{} in progress > limit {}",
                in_progress,
                limit
            );
            let b = &before.accounts[&r.account];
            prop_assert_eq!(a.credit.held, Nanos(b.credit.held.0 + hold.0));
            prop_assert_eq!(a.credit.balance, b.credit.balance);
            prop_assert_eq!(&a.lots, &b.lots, "a hold spends no lot");
            prop_assert_eq!(new_transfers.len(), 1);
            let t = &new_transfers[0].transfer;
            prop_assert_eq!(t.kind, TransferKind::Hold);
            prop_assert_eq!(t.amount, *hold);
            prop_assert_eq!(&t.debit, &customer(&r.account));
            prop_assert_eq!(r.hold_expires_at.is_some_and(|t| t > now), true);
        }
        (
            Op::Complete { request_id, .. },
            Outcome::Completed {
                completion,
                replayed: false,
                ..
            },
        ) => {
            let prev = &before.requests[request_id];
            prop_assert_eq!(prev.status, RequestStatus::InProgress);
            let r = &s.requests[request_id];
            prop_assert!(matches!(
                r.status,
                RequestStatus::Completed | RequestStatus::Failed
            ));
            let a = &s.accounts[&r.account];
            let b = &before.accounts[&r.account];
            let hold = prev.hold;
            let cost = completion.charge.total_nanos;
            prop_assert_eq!(completion.balance_after, a.credit.balance);
            prop_assert_eq!(a.credit.held, Nanos(b.credit.held.0 - hold.0));
            prop_assert_eq!(a.in_progress, b.in_progress - 1);
            let amount_of = |k: TransferKind| -> i64 {
                new_transfers
                    .iter()
                    .filter(|t| t.transfer.kind == k)
                    .map(|t| t.transfer.amount.0)
                    .sum()
            };
            for t in new_transfers {
                prop_assert_eq!(t.request_id.as_ref(), Some(request_id));
                prop_assert_eq!(&t.transfer.debit, &customer(&r.account));
            }
            if completion.billed {
                let (post, void) = (amount_of(TransferKind::Post), amount_of(TransferKind::Void));
                prop_assert_eq!(post, cost.0);
                prop_assert_eq!(a.credit.balance, Nanos(b.credit.balance.0 - cost.0));
                if cost <= hold {
                    // The hold settles exactly: what is not charged is released.
                    prop_assert_eq!(post + void, hold.0, "post {} + void {} != hold", post, void);
                } else {
                    prop_assert_eq!(void, 0);
                }
                prop_assert_eq!(new_items.len(), 1);
                prop_assert_eq!(&new_items[0].request_id, request_id);
                prop_assert_eq!(new_items[0].charge.total_nanos, cost);
                check_spending(b, a, cost)?;
            } else {
                prop_assert_eq!(cost, Nanos::ZERO);
                prop_assert_eq!(new_transfers.len(), 1);
                prop_assert_eq!(new_transfers[0].transfer.kind, TransferKind::Void);
                prop_assert_eq!(new_transfers[0].transfer.amount, hold);
                prop_assert_eq!(a.credit.balance, b.credit.balance);
                prop_assert!(new_items.is_empty());
                prop_assert_eq!(&a.lots, &b.lots);
            }
        }
        (Op::Cancel { request_id } | Op::Expire { request_id }, o)
            if matches!(
                o,
                Outcome::Cancelled { replayed: false } | Outcome::Expired { expired: true }
            ) =>
        {
            let prev = &before.requests[request_id];
            let r = &s.requests[request_id];
            let a = &s.accounts[&r.account];
            let b = &before.accounts[&r.account];
            prop_assert!(new_items.is_empty());
            prop_assert_eq!(a.credit.balance, b.credit.balance);
            prop_assert_eq!(&a.lots, &b.lots, "releasing a hold spends no lot");
            if matches!(o, Outcome::Expired { .. }) {
                prop_assert_eq!(prev.status, RequestStatus::InProgress);
                prop_assert_eq!(r.status, RequestStatus::Expired);
                let due = prev.hold_expires_at.expect("in progress has a deadline");
                prop_assert!(
                    due <= now,
                    "expired before its deadline {:?} > {:?}",
                    due,
                    now
                );
            } else {
                prop_assert_eq!(r.status, RequestStatus::Cancelled);
            }
            if prev.status == RequestStatus::InProgress {
                prop_assert_eq!(new_transfers.len(), 1);
                prop_assert_eq!(new_transfers[0].transfer.amount, prev.hold);
                prop_assert_eq!(a.credit.held, Nanos(b.credit.held.0 - prev.hold.0));
                prop_assert_eq!(a.in_progress, b.in_progress - 1);
            } else {
                prop_assert!(new_transfers.is_empty());
            }
        }
        (
            Op::Purchase {
                account,
                purchase_id,
                amount,
                paid,
                expires_at,
            },
            Outcome::Purchased {
                purchase,
                replayed: false,
            },
        ) => {
            prop_assert!(amount.0 > 0);
            let a = &s.accounts[account];
            let b = &before.accounts[account];
            prop_assert_eq!(a.credit.balance, Nanos(b.credit.balance.0 + amount.0));
            prop_assert_eq!(purchase.balance_after, a.credit.balance);
            prop_assert_eq!(new_transfers.len(), 1);
            prop_assert_eq!(&new_transfers[0].transfer.credit, &customer(account));
            prop_assert_eq!(new_transfers[0].transfer.amount, *amount);
            // An explicit expiry is in the future; without one, paid credits expire after a
            // year and free credits never.
            prop_assert!(expires_at.is_none_or(|e| e > now), "accepted a past expiry");
            let expiry = expires_at.or(paid.then(|| now.plus_ms(PAID_CREDITS_EXPIRE_MS)));
            prop_assert_eq!(purchase.expires_at, expiry);
            // The new lot repays any debt first; the other lots are untouched.
            let debt = (-b.credit.balance.0).max(0);
            let lot = Lot {
                purchase_id: purchase_id.clone(),
                remaining: Nanos((amount.0 - debt).max(0)),
                expires_at: expiry,
                created_at: now,
            };
            prop_assert_eq!(a.lots.len(), b.lots.len() + 1);
            prop_assert!(a.lots.contains(&lot), "{:?} not in {:?}", lot, a.lots);
            for l in &b.lots {
                prop_assert!(a.lots.contains(l), "a purchase changed lot {:?}", l);
            }
        }
        (
            Op::Purchase {
                account,
                purchase_id,
                amount,
                paid,
                expires_at,
            },
            Outcome::Purchased {
                purchase,
                replayed: true,
            },
        ) => {
            // A repeat is the same purchase: same amount, kind and (when given) expiry.
            let first = before
                .purchases
                .get(&(account.clone(), purchase_id.clone()));
            prop_assert_eq!(Some(purchase), first);
            prop_assert_eq!(purchase.amount, *amount);
            prop_assert_eq!(purchase.paid, *paid);
            prop_assert!(
                expires_at.is_none_or(|e| purchase.expires_at == Some(e)),
                "replayed {:?} for a purchase with expiry {:?}",
                purchase,
                expires_at
            );
        }
        (Op::ExpireCredits { account }, Outcome::CreditsExpired { amount }) => {
            let a = &s.accounts[account];
            let b = &before.accounts[account];
            prop_assert!(amount.0 >= 0);
            prop_assert_eq!(a.credit.held, b.credit.held);
            prop_assert_eq!(a.credit.balance, Nanos(b.credit.balance.0 - amount.0));
            prop_assert!(new_items.is_empty());
            // Never into what open holds reserve.
            prop_assert!(
                amount.0 <= b.credit.available().0.max(0),
                "expired {} with only {} not held",
                amount,
                b.credit.available()
            );
            if amount.0 > 0 {
                prop_assert!(a.credit.available() >= Nanos::ZERO);
            }
            // Lot by lot, only lots past their date, each with its own transfer.
            let cuts = lot_cuts(b, a)?;
            let mut total = 0;
            for (lot, cut) in &cuts {
                total += cut;
                let ts: Vec<_> = new_transfers
                    .iter()
                    .filter(|t| t.purchase_id.as_ref() == Some(&lot.purchase_id))
                    .collect();
                if *cut == 0 {
                    prop_assert!(ts.is_empty());
                    continue;
                }
                prop_assert!(
                    lot.expires_at.is_some_and(|e| e <= now),
                    "lot {} expired before its date {:?} (now {:?})",
                    lot.purchase_id,
                    lot.expires_at,
                    now
                );
                prop_assert_eq!(ts.len(), 1);
                let t = &ts[0].transfer;
                prop_assert_eq!(t.kind, TransferKind::CreditExpiry);
                prop_assert_eq!(&t.debit, &customer(account));
                prop_assert_eq!(&t.credit, &LedgerAccount::Expired);
                prop_assert_eq!(t.amount.0, *cut);
            }
            prop_assert_eq!(total, amount.0);
            let transferred: i64 = new_transfers.iter().map(|t| t.transfer.amount.0).sum();
            prop_assert_eq!(transferred, amount.0);
            // And it did its job: what is due is gone, unless open holds reserve all that is
            // left.
            let due_left: i64 = a
                .lots
                .iter()
                .filter(|l| l.expires_at.is_some_and(|e| e <= now))
                .map(|l| l.remaining.0)
                .sum();
            prop_assert!(
                due_left == 0 || a.credit.available() <= Nanos::ZERO,
                "{} due credits left with {} available",
                due_left,
                a.credit.available()
            );
        }
        (
            Op::UsageEvent(e),
            Outcome::Completed {
                completion,
                replayed: false,
                ..
            },
        ) => {
            prop_assert!(!before.requests.contains_key(&e.event_id));
            let a = &s.accounts[&e.account];
            let b = &before.accounts[&e.account];
            let cost = completion.charge.total_nanos;
            prop_assert_eq!(a.credit.held, b.credit.held);
            prop_assert_eq!(a.credit.balance, Nanos(b.credit.balance.0 - cost.0));
            prop_assert_eq!(completion.balance_after, a.credit.balance);
            prop_assert_eq!(new_items.len(), usize::from(completion.billed));
            prop_assert_eq!(new_transfers.len(), usize::from(completion.billed));
            if completion.billed {
                prop_assert_eq!(new_transfers[0].transfer.kind, TransferKind::Charge);
                prop_assert_eq!(new_transfers[0].transfer.amount, cost);
                check_spending(b, a, cost)?;
            } else {
                prop_assert_eq!(&a.lots, &b.lots);
            }
        }
        (
            Op::Submit { request_id, .. },
            Outcome::Submitted {
                replayed: false, ..
            },
        ) => {
            prop_assert!(!before.requests.contains_key(request_id));
            prop_assert_eq!(s.requests[request_id].status, RequestStatus::InQueue);
            prop_assert!(new_transfers.is_empty() && new_items.is_empty());
        }
        (_, o) if is_replay(o) => {}
        (op, o) => prop_assert!(false, "unexpected outcome {:?} for {:?}", o, op),
    }
    Ok(())
}

/// Invariants of the whole state, whatever happened.
fn check_ledger(catalog: &Catalog, s: &BatchState) -> Result<(), TestCaseError> {
    // Every transfer has two different sides and a non-negative amount.
    for t in &s.transfers {
        prop_assert_ne!(&t.transfer.debit, &t.transfer.credit, "{:?}", t);
        prop_assert!(
            t.transfer.amount >= Nanos::ZERO,
            "negative transfer {:?}",
            t
        );
    }
    for (id, a) in &s.accounts {
        prop_assert_eq!(&a.credit.id, id);
        let me = customer(id);
        let mut from_transfers = 0i64;
        for t in &s.transfers {
            let t = &t.transfer;
            match t.kind {
                TransferKind::Purchase | TransferKind::Grant if t.credit == me => {
                    from_transfers += t.amount.0
                }
                TransferKind::Post | TransferKind::Charge | TransferKind::CreditExpiry
                    if t.debit == me =>
                {
                    from_transfers -= t.amount.0
                }
                _ => {}
            }
        }
        prop_assert_eq!(
            a.credit.balance.0,
            from_transfers,
            "{}: balance differs from its posted transfers",
            id
        );
        let open: Vec<&RequestRecord> = s
            .requests
            .values()
            .filter(|r| &r.account == id && r.status == RequestStatus::InProgress)
            .collect();
        let open_holds: i64 = open.iter().map(|r| r.hold.0).sum();
        prop_assert_eq!(a.credit.held.0, open_holds, "{}: held != open holds", id);
        prop_assert_eq!(a.in_progress as usize, open.len(), "{}: in_progress", id);
        prop_assert!(a.credit.held >= Nanos::ZERO);
        prop_assert!(a.in_progress <= a.concurrency_limit(catalog));

        // The lots hold exactly the credits: what is left of them sums to the balance, or to
        // zero while the account is overdrawn.
        prop_assert_eq!(
            lot_sum(a),
            a.credit.balance.0.max(0),
            "{}: lots {:?} != max(balance {}, 0)",
            id,
            a.lots,
            a.credit.balance
        );
        prop_assert!(
            a.lots
                .windows(2)
                .all(|w| spend_key(&w[0]) <= spend_key(&w[1])),
            "{}: lots out of spending order: {:?}",
            id,
            a.lots
        );
        let mut pids = BTreeSet::new();
        for l in &a.lots {
            prop_assert!(
                pids.insert(&l.purchase_id),
                "two lots for {}",
                l.purchase_id
            );
            prop_assert!(l.remaining >= Nanos::ZERO);
            let p = s.purchases.get(&(id.clone(), l.purchase_id.clone()));
            prop_assert!(p.is_some(), "lot {} without a purchase", l.purchase_id);
            let p = p.unwrap();
            prop_assert!(l.remaining <= p.amount);
            prop_assert_eq!(l.expires_at, p.expires_at);
            prop_assert_eq!(l.created_at, p.created_at);
            if !p.paid && l.expires_at.is_some() {
                prop_assert!(l.expires_at > Some(l.created_at));
            }
        }
    }
    // Line items: one per billed request, each equal to the posted charges of its request, and
    // together equal to all posted charges.
    let posted = |req: Option<&RequestId>| -> i64 {
        s.transfers
            .iter()
            .filter(|t| matches!(t.transfer.kind, TransferKind::Post | TransferKind::Charge))
            .filter(|t| req.is_none() || t.request_id.as_ref() == req)
            .map(|t| t.transfer.amount.0)
            .sum()
    };
    let billed: i64 = s.line_items.iter().map(|l| l.charge.total_nanos.0).sum();
    prop_assert_eq!(billed, posted(None), "line items != posted charges");
    let mut seen = BTreeSet::new();
    for l in &s.line_items {
        prop_assert!(
            seen.insert(l.request_id.clone()),
            "two line items for {}",
            l.request_id
        );
        prop_assert_eq!(l.charge.total_nanos.0, posted(Some(&l.request_id)));
        let r = &s.requests[&l.request_id];
        let c = r.completion.as_ref().expect("a billed request is settled");
        prop_assert!(c.billed);
        prop_assert_eq!(&c.charge, &l.charge);
        prop_assert_eq!(
            l.charge.subtotal_nanos.0 - l.charge.discount_nanos.0,
            l.charge.total_nanos.0
        );
    }
    for r in s.requests.values() {
        if let Some(c) = &r.completion {
            prop_assert!(matches!(
                r.status,
                RequestStatus::Completed | RequestStatus::Failed
            ));
            prop_assert_eq!(
                c.billed,
                seen.contains(&r.id),
                "{} billed w/o line item",
                r.id
            );
        }
        if r.source == Source::Event {
            prop_assert_eq!(r.hold, Nanos::ZERO);
        }
        prop_assert_eq!(
            r.hold_expires_at.is_some(),
            r.status == RequestStatus::InProgress
        );
    }
    Ok(())
}

/// Runs `steps` from a fresh state, checking every step. Returns the state and the answers.
fn run_checked(
    catalog: &Catalog,
    steps: &[Timed],
) -> Result<(BatchState, Vec<Result<Outcome, Rejection>>), TestCaseError> {
    run_observed(catalog, steps, |_, _, _, _, _| {})
}

/// [`run_checked`], showing each step to `observe` (state before, state after, op, now, answer).
fn run_observed(
    catalog: &Catalog,
    steps: &[Timed],
    mut observe: impl FnMut(&Snapshot, &BatchState, &Op, Timestamp, &Result<Outcome, Rejection>),
) -> Result<(BatchState, Vec<Result<Outcome, Rejection>>), TestCaseError> {
    let mut s = fresh_state();
    let mut now = Timestamp(T0);
    let mut answers = Vec::new();
    for t in steps {
        now = now.plus_ms(t.dt_ms);
        let op = to_op(&t.step, now);
        let before = snapshot(&s);
        let result = apply(&mut s, catalog, now, op.clone());
        check_step(catalog, &before, &s, &op, now, &result)?;
        observe(&before, &s, &op, now, &result);
        answers.push(result);
    }
    Ok((s, answers))
}

fn statuses(s: &BatchState) -> Vec<(RequestId, RequestStatus)> {
    let mut v: Vec<_> = s
        .requests
        .iter()
        .map(|(id, r)| (id.clone(), r.status))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn positions(s: &BatchState) -> Vec<(AccountId, Nanos, Nanos, u32)> {
    let mut v: Vec<_> = s
        .accounts
        .iter()
        .map(|(id, a)| (id.clone(), a.credit.balance, a.credit.held, a.in_progress))
        .collect();
    v.sort();
    v
}

fn sorted_items(s: &BatchState) -> Vec<LineItem> {
    let mut v = s.line_items.clone();
    v.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every invariant holds after every operation of a random sequence.
    #[test]
    fn invariants_hold_after_every_operation(steps in prop::collection::vec(timed(), 1..80)) {
        let catalog = catalog();
        run_checked(&catalog, &steps)?;
    }

    /// Sending every operation twice in a row ends exactly where sending it once does: the
    /// second copy is answered as a repeat (or refused as the first was) and changes nothing.
    #[test]
    fn sending_everything_twice_changes_nothing(steps in prop::collection::vec(timed(), 1..60)) {
        let catalog = catalog();
        let (once, answers) = run_checked(&catalog, &steps)?;

        let mut twice = fresh_state();
        let mut now = Timestamp(T0);
        for (t, first_answer) in steps.iter().zip(&answers) {
            now = now.plus_ms(t.dt_ms);
            let op = to_op(&t.step, now);
            let a = apply(&mut twice, &catalog, now, op.clone());
            prop_assert_eq!(&a, first_answer, "same history, same answer");
            let before = snapshot(&twice);
            let b = apply(&mut twice, &catalog, now, op.clone());
            check_step(&catalog, &before, &twice, &op, now, &b)?;
            match (&a, &b) {
                (Err(e1), Err(e2)) => prop_assert_eq!(e1, e2),
                (Ok(_), Ok(o)) => prop_assert!(is_replay(o), "second {:?} answered {:?}", op, o),
                _ => prop_assert!(false, "{:?}: first {:?}, second {:?}", op, a, b),
            }
            match (&a, &b) {
                (
                    Ok(Outcome::Completed { completion: c1, .. }),
                    Ok(Outcome::Completed { completion: c2, .. }),
                ) => prop_assert_eq!(c1, c2),
                (Ok(Outcome::Started { hold: h1, .. }), Ok(Outcome::Started { hold: h2, .. })) => {
                    prop_assert_eq!(h1, h2)
                }
                (
                    Ok(Outcome::Purchased { purchase: p1, .. }),
                    Ok(Outcome::Purchased { purchase: p2, .. }),
                ) => prop_assert_eq!(p1, p2),
                (
                    Ok(Outcome::Submitted { request: r1, .. }),
                    Ok(Outcome::Submitted { request: r2, .. }),
                ) => prop_assert_eq!(r1, r2),
                _ => {}
            }
        }
        prop_assert_eq!(positions(&twice), positions(&once));
        prop_assert_eq!(statuses(&twice), statuses(&once));
        prop_assert_eq!(sorted_items(&twice), sorted_items(&once));
        prop_assert_eq!(&twice.accounts, &once.accounts);
        prop_assert_eq!(&twice.requests, &once.requests);
        prop_assert_eq!(&twice.transfers, &once.transfers);
        prop_assert_eq!(&twice.line_items, &once.line_items);
    }
}

// ---------------------------------------------------------------------------------------------
// Cost is monotonic in the quantity, through the whole path (submit, start, complete).

/// Completes one request on `endpoint` for a freshly funded account and returns its cost.
fn cost_of(
    account: usize,
    endpoint: &str,
    num_gpus: u32,
    status: u16,
    output: Output,
    inference_ms: i64,
) -> Nanos {
    let catalog = catalog();
    let mut s = fresh_state();
    let now = Timestamp(T0);
    let acct = account_id(account);
    let rid = RequestId::parse("r-mono").unwrap();
    let ok = |r: Result<Outcome, Rejection>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(apply(
        &mut s,
        &catalog,
        now,
        Op::Purchase {
            account: acct.clone(),
            purchase_id: PurchaseId::parse("fund").unwrap(),
            amount: Nanos(1_000 * 1_000_000_000),
            paid: true,
            expires_at: None,
        },
    ));
    ok(apply(
        &mut s,
        &catalog,
        now,
        Op::Submit {
            request_id: rid.clone(),
            account: acct,
            api_key: None,
            endpoint: EndpointId::parse(endpoint).unwrap(),
        },
    ));
    ok(apply(
        &mut s,
        &catalog,
        now,
        Op::Start {
            request_id: rid.clone(),
            machine_type: None,
            num_gpus: Some(num_gpus),
            hold_units: None,
        },
    ));
    match ok(apply(
        &mut s,
        &catalog,
        now.plus_ms(1000),
        Op::Complete {
            request_id: rid,
            status_code: status,
            output,
            billable_units: None,
            inference_seconds: Some(Decimal::new(inference_ms, 3)),
        },
    )) {
        Outcome::Completed { completion, .. } => completion.charge.total_nanos,
        o => panic!("unexpected {o:?}"),
    }
}

fn images(v: &[(u64, u64)]) -> Output {
    Output {
        images: v
            .iter()
            .map(|&(width, height)| Dims { width, height })
            .collect(),
        ..Output::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// More megapixels (bigger images, more images) never cost less.
    #[test]
    fn more_megapixels_never_cost_less(
        account in 0..REAL_ACCOUNTS,
        base in prop::collection::vec((1u64..=4000, 1u64..=4000), 0..4),
        grow in prop::collection::vec((0u64..=2000, 0u64..=2000), 4),
        extra in prop::collection::vec((1u64..=4000, 1u64..=4000), 0..3),
    ) {
        let bigger: Vec<(u64, u64)> = base
            .iter()
            .zip(&grow)
            .map(|(&(w, h), &(dw, dh))| (w + dw, h + dh))
            .chain(extra.iter().copied())
            .collect();
        let small = cost_of(account, EP_MP, 1, 200, images(&base), 1000);
        let large = cost_of(account, EP_MP, 1, 200, images(&bigger), 1000);
        prop_assert!(small <= large, "{:?} cost {} > {:?} cost {}", base, small, bigger, large);
        prop_assert!(small >= Nanos::ZERO);
    }

    /// More video seconds (below and above `min_units`) never cost less.
    #[test]
    fn more_video_seconds_never_cost_less(
        account in 0..REAL_ACCOUNTS,
        cs in 0i64..3000,
        more in 0i64..3000,
    ) {
        let video = |cs: i64| Output {
            video_seconds: Some(Decimal::new(cs, 2)),
            ..Output::default()
        };
        let small = cost_of(account, EP_VIDEO, 1, 200, video(cs), 1000);
        let large = cost_of(account, EP_VIDEO, 1, 200, video(cs + more), 1000);
        prop_assert!(small <= large, "{} cs cost {} > {} cs cost {}", cs, small, cs + more, large);
        // The minimum is 5 seconds at 0.10.
        let minimum = Nanos(if account == 0 { 500_000_000 } else { 400_000_000 });
        prop_assert!(small >= minimum, "{} below the 5 s minimum", small);
    }

    /// More GPU seconds or more GPUs never cost less, for a success and for a billed 4xx.
    #[test]
    fn more_gpu_seconds_never_cost_less(
        account in 0..REAL_ACCOUNTS,
        ms in 0i64..500_000,
        more in 0i64..500_000,
        gpus in 1u32..=4,
        more_gpus in 0u32..=4,
        status in prop_oneof![Just(200u16), Just(422u16)],
    ) {
        let small = cost_of(account, EP_GPU, gpus, status, Output::default(), ms);
        let large = cost_of(account, EP_GPU, gpus + more_gpus, status, Output::default(), ms + more);
        prop_assert!(small <= large, "{} ms x {} cost {} > {}", ms, gpus, small, large);
    }
}

// ---------------------------------------------------------------------------------------------
// A few fixed sequences, so that the paths the properties rely on are known to be reached.

#[test]
fn a_hold_settles_with_post_plus_void_equal_to_the_hold() {
    let catalog = catalog();
    let steps = [
        Step::Purchase {
            account: 0,
            pid: 0,
            amount: 1,
            paid: true,
            expires_in_ms: None,
        },
        Step::Submit {
            req: 0,
            account: 0,
            endpoint: 0,
        },
        Step::Start {
            req: 0,
            num_gpus: None,
            hold_units: None,
        },
        Step::Complete {
            req: 0,
            usage: Usage {
                status: 200,
                images: vec![(1920, 1080)],
                video_cs: None,
                billable_units: None,
                inference_ms: Some(1500),
            },
        },
    ];
    let timed: Vec<Timed> = steps
        .into_iter()
        .map(|step| Timed { dt_ms: 1000, step })
        .collect();
    let (s, answers) = run_checked(&catalog, &timed).unwrap();
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    let kinds: Vec<(TransferKind, i64)> = s
        .transfers
        .iter()
        .map(|t| (t.transfer.kind, t.transfer.amount.0))
        .collect();
    // 0.50 bought; 4 MP held (0.10); 2 MP billed (0.05), 0.05 released.
    assert_eq!(
        kinds,
        vec![
            (TransferKind::Purchase, 500_000_000),
            (TransferKind::Hold, 100_000_000),
            (TransferKind::Post, 50_000_000),
            (TransferKind::Void, 50_000_000),
        ]
    );
    let a = &s.accounts[&account_id(0)];
    assert_eq!(a.credit.balance, Nanos(450_000_000));
    assert_eq!(a.credit.held, Nanos::ZERO);
    assert_eq!(a.in_progress, 0);
}

#[test]
fn a_due_hold_expires_once_and_a_late_complete_is_refused() {
    let catalog = catalog();
    let step = |dt_ms, step| Timed { dt_ms, step };
    let timed = vec![
        step(
            0,
            Step::Purchase {
                account: 0,
                pid: 0,
                amount: 2,
                paid: true,
                expires_in_ms: None,
            },
        ),
        step(
            0,
            Step::Submit {
                req: 1,
                account: 0,
                endpoint: 2,
            },
        ),
        step(
            0,
            Step::Start {
                req: 1,
                num_gpus: Some(2),
                hold_units: None,
            },
        ),
        // 4.999 s: not yet due.
        step(4_999, Step::Expire { req: 1 }),
        step(1, Step::Expire { req: 1 }),
        step(0, Step::Expire { req: 1 }),
        step(
            0,
            Step::Complete {
                req: 1,
                usage: Usage {
                    status: 200,
                    images: vec![],
                    video_cs: None,
                    billable_units: None,
                    inference_ms: None,
                },
            },
        ),
    ];
    let (s, answers) = run_checked(&catalog, &timed).unwrap();
    assert!(matches!(
        answers[2],
        Ok(Outcome::Started {
            hold: Nanos(63_000_000),
            ..
        })
    ));
    assert_eq!(answers[3], Ok(Outcome::Expired { expired: false }));
    assert_eq!(answers[4], Ok(Outcome::Expired { expired: true }));
    assert_eq!(answers[5], Ok(Outcome::Expired { expired: false }));
    assert!(matches!(
        answers[6],
        Err(Rejection::WrongState {
            status: RequestStatus::Expired,
            ..
        })
    ));
    let a = &s.accounts[&account_id(0)];
    assert_eq!(a.credit.balance, Nanos(5_000_000_000));
    assert_eq!(a.credit.held, Nanos::ZERO);
    assert!(s.line_items.is_empty());
}

/// Credits bought with an expiry expire at their date, never before, and never into what an
/// open hold reserves: the held part is billed when the request completes, and what is left
/// expires at the next ExpireCredits.
#[test]
fn credits_expire_at_their_date_but_a_hold_is_honoured() {
    let catalog = catalog();
    let step = |dt_ms, step| Timed { dt_ms, step };
    let timed = vec![
        // 0.50 USD expiring in 10 s.
        step(
            0,
            Step::Purchase {
                account: 0,
                pid: 0,
                amount: 1,
                paid: true,
                expires_in_ms: Some(10_000),
            },
        ),
        step(
            0,
            Step::Submit {
                req: 0,
                account: 0,
                endpoint: 0,
            },
        ),
        // Holds 4 MP = 0.10.
        step(
            0,
            Step::Start {
                req: 0,
                num_gpus: None,
                hold_units: None,
            },
        ),
        step(9_999, Step::ExpireCredits { account: 0 }),
        step(1, Step::ExpireCredits { account: 0 }),
        step(0, Step::ExpireCredits { account: 0 }),
        // 1 MP = 0.025 billed from the held credits.
        step(
            1_000,
            Step::Complete {
                req: 0,
                usage: Usage {
                    status: 200,
                    images: vec![(1000, 1000)],
                    video_cs: None,
                    billable_units: None,
                    inference_ms: Some(1000),
                },
            },
        ),
        step(0, Step::ExpireCredits { account: 0 }),
        step(0, Step::ExpireCredits { account: 0 }),
    ];
    let (s, answers) = run_checked(&catalog, &timed).unwrap();
    let expired = |n: i64| Ok(Outcome::CreditsExpired { amount: Nanos(n) });
    assert_eq!(answers[3], expired(0), "not yet due");
    assert_eq!(answers[4], expired(400_000_000), "all but the hold");
    assert_eq!(answers[5], expired(0));
    match &answers[6] {
        Ok(Outcome::Completed { completion, .. }) => {
            assert!(completion.billed);
            assert_eq!(completion.charge.total_nanos, Nanos(25_000_000));
            assert_eq!(completion.balance_after, Nanos(75_000_000));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        answers[7],
        expired(75_000_000),
        "the rest, once the hold settled"
    );
    assert_eq!(answers[8], expired(0));
    let a = &s.accounts[&account_id(0)];
    assert_eq!(a.credit.balance, Nanos::ZERO);
    assert_eq!(a.credit.held, Nanos::ZERO);
    assert_eq!(lot_sum(a), 0);
    let expiries: Vec<i64> = s
        .transfers
        .iter()
        .filter(|t| t.transfer.kind == TransferKind::CreditExpiry)
        .map(|t| t.transfer.amount.0)
        .collect();
    assert_eq!(expiries, vec![400_000_000, 75_000_000]);
}

/// Charges take the credits that expire soonest first, and credits that never expire last.
#[test]
fn charges_spend_the_soonest_expiring_credits_first() {
    let catalog = catalog();
    let event = |id, mp: u64| Step::Event {
        id,
        account: 0,
        endpoint: 0,
        back_ms: 0,
        usage: Usage {
            status: 200,
            images: vec![(1000, 1000 * mp)],
            video_cs: None,
            billable_units: None,
            inference_ms: None,
        },
        num_gpus: None,
    };
    let purchase = |pid, amount, paid, expires_in_ms| Step::Purchase {
        account: 0,
        pid,
        amount,
        paid,
        expires_in_ms,
    };
    let timed: Vec<Timed> = vec![
        // p0: 0.50 free, never expires; p1: 0.50 paid, a year; p2: 0.05 paid, in 60 s.
        purchase(0, 1, false, None),
        purchase(1, 1, true, None),
        purchase(2, 0, true, Some(60_000)),
        // 0.025 + 0.10 + 0.50: p2 first, then p1, then p0.
        event(0, 1),
        event(1, 4),
        event(2, 20),
    ]
    .into_iter()
    .map(|step| Timed { dt_ms: 1000, step })
    .collect();
    let mut lots_after = Vec::new();
    run_observed(&catalog, &timed, |_, s, _, _, _| {
        let left = |pid: &str| {
            s.accounts[&account_id(0)]
                .lots
                .iter()
                .find(|l| l.purchase_id.as_str() == pid)
                .map(|l| l.remaining.0)
        };
        lots_after.push([left("p0"), left("p1"), left("p2")]);
    })
    .unwrap();
    let m = 1_000_000i64;
    assert_eq!(
        lots_after[3..],
        [
            [Some(500 * m), Some(500 * m), Some(25 * m)],
            [Some(500 * m), Some(425 * m), Some(0)],
            [Some(425 * m), Some(0), Some(0)],
        ]
    );
}

/// The generator reaches every path the properties are about (otherwise they could pass
/// vacuously): a fixed-seed sample of sequences must hit each of these outcomes.
#[test]
fn generated_sequences_reach_every_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let catalog = catalog();
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeSet<&'static str> = BTreeSet::new();
    for _ in 0..300 {
        let steps = prop::collection::vec(timed(), 1..80)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        run_observed(&catalog, &steps, |before, s, op, now, a| {
            // Paths of the credit lots.
            match (op, a) {
                (Op::ExpireCredits { account }, Ok(_)) => {
                    let acct = &s.accounts[account];
                    if acct.credit.held > Nanos::ZERO
                        && acct.lots.iter().any(|l| {
                            l.remaining > Nanos::ZERO && l.expires_at.is_some_and(|e| e <= now)
                        })
                    {
                        seen.insert("credit expiry held back by a hold");
                    }
                }
                (
                    Op::Purchase {
                        expires_at: Some(_),
                        ..
                    },
                    Ok(Outcome::Purchased {
                        replayed: false, ..
                    }),
                ) => {
                    seen.insert("purchased with an expiry");
                }
                _ => {}
            }
            if let Ok(Outcome::Purchased {
                purchase,
                replayed: false,
            }) = a
            {
                if purchase.balance_after.0 - purchase.amount.0 < 0 {
                    seen.insert("purchase repaid a debt");
                }
            }
            if let Ok(Outcome::Completed {
                request,
                completion,
                replayed: false,
            }) = a
            {
                if completion.billed {
                    let (b, acct) = (
                        &before.accounts[&request.account],
                        &s.accounts[&request.account],
                    );
                    let open: BTreeSet<_> = b
                        .lots
                        .iter()
                        .filter(|l| l.remaining > Nanos::ZERO)
                        .map(|l| l.expires_at)
                        .collect();
                    if open.len() >= 2 {
                        seen.insert("charge with lots of different expiries");
                    }
                    let cut = b.lots.iter().filter(|l| !acct.lots.contains(l)).count();
                    if cut >= 2 {
                        seen.insert("charge spanning lots");
                    }
                }
            }
            seen.insert(match (op, a) {
                (_, Ok(o)) if is_replay(o) => match o {
                    Outcome::Submitted { .. } => "submit replayed",
                    Outcome::Started { .. } => "start replayed",
                    Outcome::Completed { .. } => "complete replayed",
                    Outcome::Cancelled { .. } => "cancel replayed",
                    Outcome::Expired { .. } => "expire no-op",
                    Outcome::Purchased { .. } => "purchase replayed",
                    Outcome::CreditsExpired { .. } => "credit expiry no-op",
                },
                (Op::UsageEvent(_), Ok(Outcome::Completed { completion, .. })) => {
                    if completion.billed {
                        "event billed"
                    } else {
                        "event free"
                    }
                }
                (
                    _,
                    Ok(Outcome::Completed {
                        completion,
                        request,
                        ..
                    }),
                ) => {
                    let cost = completion.charge.total_nanos;
                    if !completion.billed {
                        "complete free"
                    } else if cost < request.hold {
                        "complete below hold"
                    } else if cost == request.hold {
                        "complete at hold"
                    } else {
                        "complete above hold"
                    }
                }
                (_, Ok(Outcome::Started { .. })) => "started",
                (_, Ok(Outcome::Submitted { .. })) => "submitted",
                (_, Ok(Outcome::Cancelled { .. })) => "cancelled",
                (_, Ok(Outcome::Expired { .. })) => "expired",
                (_, Ok(Outcome::Purchased { .. })) => "purchased",
                (_, Ok(Outcome::CreditsExpired { .. })) => "credits expired",
                (_, Err(Rejection::AccountLocked { .. })) => "locked",
                (_, Err(Rejection::ConcurrencyLimit { .. })) => "concurrency limit",
                (_, Err(Rejection::InsufficientCredits { .. })) => "insufficient credits",
                (_, Err(Rejection::WrongState { .. })) => "wrong state",
                (_, Err(Rejection::Conflict(_))) => "conflict",
                (_, Err(Rejection::UnknownRequest(_))) => "unknown request",
                (_, Err(Rejection::UnknownEndpoint(_))) => "unknown endpoint",
                (_, Err(Rejection::UnknownAccount(_))) => "unknown account",
                (_, Err(Rejection::InvalidUsage(_))) => "invalid usage",
                (_, Err(Rejection::BadStatus(_))) => "bad status",
                (_, Err(Rejection::Invalid(_))) => "invalid",
                (_, Err(e)) => panic!("unexpected rejection {e}"),
            });
        })
        .unwrap();
    }
    let all = [
        "submit replayed",
        "start replayed",
        "complete replayed",
        "cancel replayed",
        "expire no-op",
        "purchase replayed",
        "credit expiry no-op",
        "event billed",
        "event free",
        "complete free",
        "complete below hold",
        "complete above hold",
        "started",
        "submitted",
        "cancelled",
        "expired",
        "purchased",
        "purchased with an expiry",
        "purchase repaid a debt",
        "credits expired",
        "credit expiry held back by a hold",
        "charge with lots of different expiries",
        "charge spanning lots",
        "locked",
        "concurrency limit",
        "insufficient credits",
        "wrong state",
        "conflict",
        "unknown request",
        "unknown endpoint",
        "unknown account",
        "invalid usage",
        "bad status",
        "invalid",
    ];
    let missing: Vec<_> = all.iter().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "never reached: {missing:?}; reached: {seen:?}"
    );
}
