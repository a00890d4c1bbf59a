//! For tests only: the random operation sequences that this workspace's property tests share
//! (the pure ledger properties in `tollgate-core` and the engine properties in
//! `tollgate-engine`). Compiled only with the `testing` feature, which no production build
//! enables; nothing here is part of the billing core's API.
//!
//! Operations are generated as small numbers ([`Step`]) that index small pools of accounts,
//! endpoints, request, event and purchase ids, so that duplicates, conflicts and out-of-order
//! calls (complete before start, start after cancel, ...) happen often; [`to_op`] turns a step
//! into the [`Op`] it stands for at a given `now`. The catalog the endpoints refer to is each
//! test's own.

use crate::ids::{AccountId, AdjustmentId, EndpointId, PurchaseId, RequestId};
use crate::ledger::CreditAccount;
use crate::machine::{AccountState, BatchState, Op, UsageEvent};
use crate::price::{Dims, Output};
use crate::pricing::{Discounts, VolumeTier};
use crate::terms::{Terms, TermsSchedule, TermsVersion};
use crate::{Nanos, Timestamp};
use proptest::prelude::*;
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------------
// The pools.

pub const EP_MP: &str = "test/megapixel";
pub const EP_VIDEO: &str = "test/video";
pub const EP_GPU: &str = "test/gpu";
/// Never in the catalog.
pub const EP_UNKNOWN: &str = "test/unknown";
pub const ENDPOINTS: [&str; 4] = [EP_MP, EP_VIDEO, EP_GPU, EP_UNKNOWN];

/// `alice` pays list price, `bob` has a flat 10% discount, `carol` a 20% volume tier from
/// 0.50 USD of monthly spend (see [`discounts`]). `ghost` does not exist.
pub const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "ghost"];
pub const REAL_ACCOUNTS: usize = 3;

/// Lifecycle request ids, and usage event ids: `r0` is in both pools, so events and lifecycle
/// requests collide.
pub const REQUEST_IDS: [&str; 6] = ["r0", "r1", "r2", "r3", "r4", "r5"];
pub const EVENT_IDS: [&str; 4] = ["e0", "e1", "e2", "r0"];
pub const PURCHASE_IDS: [&str; 4] = ["p0", "p1", "p2", "p3"];
/// Purchase amounts in nano-USD: 0.05, 0.50, 5.00 USD, and an invalid zero.
pub const AMOUNTS: [i64; 4] = [50_000_000, 500_000_000, 5_000_000_000, 0];

pub const ADJUSTMENT_IDS: [&str; 3] = ["a0", "a1", "a2"];
/// Adjustment amounts in nano-USD: a credit of 0.03 USD, debits of 0.02 and 2.00 USD (which
/// overdraws), and an invalid zero.
pub const ADJUSTMENT_AMOUNTS: [i64; 4] = [30_000_000, -20_000_000, -2_000_000_000, 0];

/// 2026-01-31T23:30:00Z: the month changes half an hour in.
pub const T0: i64 = 1_769_902_200_000;

pub fn account_id(i: usize) -> AccountId {
    AccountId::parse(ACCOUNTS[i]).unwrap()
}

/// The discounts of the real account `i`.
pub fn discounts(i: usize) -> Discounts {
    match i {
        1 => Discounts {
            percent_discount: Some(Decimal::from(10)),
            volume_tiers: vec![],
        },
        2 => Discounts {
            percent_discount: None,
            volume_tiers: vec![VolumeTier {
                from_usd: Decimal::new(50, 2),
                percent: Decimal::from(20),
            }],
        },
        _ => Discounts::default(),
    }
}

/// The low-balance level of the real account `i` (`balance.low`): 0.40 USD for `alice`,
/// 0.04 USD for `carol`, none for `bob`.
pub fn low_balance(i: usize) -> Option<Nanos> {
    match i {
        0 => Some(Nanos(400_000_000)),
        2 => Some(Nanos(40_000_000)),
        _ => None,
    }
}

/// The real accounts, prepaid, with their discounts and low-balance levels, no credits and
/// nothing else.
pub fn fresh_state() -> BatchState {
    let mut s = BatchState::default();
    for i in 0..REAL_ACCOUNTS {
        let mut a = AccountState::new(CreditAccount::new_prepaid(account_id(i)));
        a.discounts = discounts(i);
        if let Some(low) = low_balance(i) {
            a.terms = TermsSchedule::new(vec![TermsVersion {
                effective_from: Timestamp(0),
                terms: Terms {
                    low_balance: Some(low),
                    ..Terms::of(&a)
                },
            }]);
        }
        s.accounts.insert(account_id(i), a);
    }
    s
}

/// What is left of the account's credit lots that expire at or before `at`, in nano-USD.
pub fn due_credits(a: &AccountState, at: Timestamp) -> i64 {
    a.lots
        .iter()
        .filter(|l| l.expires_at.is_some_and(|e| e <= at))
        .map(|l| l.remaining.0)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Operations, as small numbers that index the pools above.

#[derive(Clone, Debug)]
pub struct Usage {
    pub status: u16,
    /// Output images (width, height).
    pub images: Vec<(u64, u64)>,
    /// Hundredths of a second of video.
    pub video_cs: Option<i64>,
    pub billable_units: Option<i64>,
    /// Milliseconds of inference; `None` lets a completion measure it.
    pub inference_ms: Option<i64>,
}

#[derive(Clone, Debug)]
pub enum Step {
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
    NoticeExpiringCredits {
        account: usize,
    },
    Adjust {
        account: usize,
        id: usize,
        amount: usize,
    },
    /// Locks the account for a payment dispute, or lifts that lock.
    Dispute {
        account: usize,
        lift: bool,
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
pub struct Timed {
    /// Milliseconds the clock moves forward before the step.
    pub dt_ms: i64,
    pub step: Step,
}

/// The status codes completions and usage events report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Statuses {
    /// Mostly 200; now and then 201, 404, 422, 500, and 99 (invalid).
    Base,
    /// [`Statuses::Base`] and 503 as well, as often as 500.
    With503,
}

pub fn status_code(statuses: Statuses) -> BoxedStrategy<u16> {
    match statuses {
        Statuses::Base => prop_oneof![
            6 => Just(200u16),
            1 => Just(201u16),
            1 => Just(404u16),
            1 => Just(422u16),
            1 => Just(500u16),
            1 => Just(99u16),
        ]
        .boxed(),
        Statuses::With503 => prop_oneof![
            6 => Just(200u16),
            1 => Just(201u16),
            1 => Just(404u16),
            1 => Just(422u16),
            1 => Just(500u16),
            1 => Just(503u16),
            1 => Just(99u16),
        ]
        .boxed(),
    }
}

pub fn usage(statuses: Statuses) -> impl Strategy<Value = Usage> {
    (
        status_code(statuses),
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
pub fn account_ix() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 0..REAL_ACCOUNTS, 1 => Just(REAL_ACCOUNTS)]
}

/// Mostly endpoints in the catalog, now and then the unknown one.
pub fn endpoint_ix() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 0usize..3, 1 => Just(3usize)]
}

pub fn num_gpus() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![6 => Just(None), 3 => (1u32..=4).prop_map(Some), 1 => Just(Some(0u32))]
}

/// Mostly the default expiry, often one a few seconds away (so that lots expire within a
/// sequence), now and then `now` itself (refused).
pub fn expires_in_ms() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        5 => Just(None),
        4 => (1i64..20_000).prop_map(Some),
        1 => Just(Some(0i64)),
    ]
}

pub fn step(statuses: Statuses) -> impl Strategy<Value = Step> {
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
        4 => (req.clone(), usage(statuses)).prop_map(|(req, usage)| Step::Complete { req, usage }),
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
        1 => account_ix().prop_map(|account| Step::NoticeExpiringCredits { account }),
        2 => (account_ix(), 0..ADJUSTMENT_IDS.len(), 0..ADJUSTMENT_AMOUNTS.len())
            .prop_map(|(account, id, amount)| Step::Adjust { account, id, amount }),
        1 => (account_ix(), prop::bool::weighted(0.6))
            .prop_map(|(account, lift)| Step::Dispute { account, lift }),
        2 => (
            0..EVENT_IDS.len(),
            account_ix(),
            endpoint_ix(),
            // One in eleven lands beyond the allowed clock skew, in the future.
            prop_oneof![10 => 0i64..600_000, 1 => -400_000i64..-300_001],
            usage(statuses),
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

/// How far the clock moves before a step: mostly a little, sometimes past the short hold
/// timeouts and credit expiries, now and then far enough for every hold to time out.
pub fn dt_ms() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..3_000, 3 => 3_000i64..40_000, 1 => 600_000i64..1_800_000]
}

pub fn timed(statuses: Statuses) -> impl Strategy<Value = Timed> {
    (dt_ms(), step(statuses)).prop_map(|(dt_ms, step)| Timed { dt_ms, step })
}

pub fn output(u: &Usage) -> Output {
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

/// The operation `step` stands for, sent at `now`.
pub fn to_op(step: &Step, now: Timestamp) -> Op {
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
        Step::NoticeExpiringCredits { account } => Op::NoticeExpiringCredits {
            account: account_id(*account),
        },
        Step::Adjust {
            account,
            id,
            amount,
        } => Op::Adjust {
            account: account_id(*account),
            adjustment_id: AdjustmentId::parse(ADJUSTMENT_IDS[*id]).unwrap(),
            amount: Nanos(ADJUSTMENT_AMOUNTS[*amount]),
            reason: "correction".into(),
        },
        Step::Dispute {
            account,
            lift: false,
        } => Op::LockDisputed {
            account: account_id(*account),
        },
        Step::Dispute {
            account,
            lift: true,
        } => Op::LiftDispute {
            account: account_id(*account),
            reason: "resolved".into(),
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
