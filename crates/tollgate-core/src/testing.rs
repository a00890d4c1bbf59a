//! For tests only: the random operation sequences that this workspace's property tests share
//! (the pure ledger properties in `tollgate-core` and the engine properties in
//! `tollgate-engine`). Compiled only with the `testing` feature, which no production build
//! enables; nothing here is part of the billing core's API.
//!
//! Operations are generated as small numbers ([`Step`]) that index small pools of accounts,
//! endpoints, request, event and purchase ids, so that duplicates, conflicts and out-of-order
//! calls (complete before start, start after cancel, ...) happen often; [`to_op`] turns a step
//! into the [`Op`] it stands for at a given `now`, and [`to_op_in`] in a given state (a
//! provider's amounts are fractions of the top-up they are about, as the provider's are). The
//! catalog the endpoints refer to is each test's own. Gateway requests ([`crate::gateway`]:
//! submitted, dispatched under leases, answered, their units posted, cancelled) come only in
//! the sequences that ask for them ([`Gateway`]).

use crate::gateway::{Bill, GatewayInput, GatewayResult, Lease};
use crate::ids::{AccountId, AdjustmentId, EndpointId, PurchaseId, RequestId};
use crate::ledger::CreditAccount;
use crate::machine::{AccountState, BatchState, Op, UsageEvent};
use crate::payments::{
    AutoTopUpRule, DisputeStatus, PaymentEffect, ProviderEvent, ProviderRefund, TopUpSettings,
};
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
/// Gateway request ids: `r5` is also a lifecycle request id, so the two kinds meet (a
/// lifecycle call never sees a gateway request, nor a gateway call a lifecycle one).
pub const GATEWAY_IDS: [&str; 4] = ["g0", "g1", "g2", "r5"];
/// The gateway's dispatchers (one per server process).
pub const DISPATCHERS: [&str; 2] = ["d0", "d1"];
/// Lease lengths in ms: one that often runs out before the next step, one that lasts.
pub const LEASES_MS: [i64; 2] = [2_000, 60_000];
/// Purchase amounts in nano-USD: 0.05, 0.50, 5.00 USD, and an invalid zero.
pub const AMOUNTS: [i64; 4] = [50_000_000, 500_000_000, 5_000_000_000, 0];

pub const ADJUSTMENT_IDS: [&str; 3] = ["a0", "a1", "a2"];
/// Adjustment amounts in nano-USD: a credit of 0.03 USD, debits of 0.02 and 2.00 USD (which
/// overdraws), and an invalid zero.
pub const ADJUSTMENT_AMOUNTS: [i64; 4] = [30_000_000, -20_000_000, -2_000_000_000, 0];

/// Top-up ids: checkout ones, the first auto top-ups (whose ids the core chooses), and one that
/// is also a purchase id of [`PURCHASE_IDS`].
pub const TOP_UP_IDS: [&str; 5] = ["t0", "t1", "auto-1", "auto-2", "p0"];
/// Top-up amounts in nano-USD: 0.50 and 5.00 USD, and 0.01 (below [`top_up_settings`]'s
/// smallest).
pub const TOP_UP_AMOUNTS: [i64; 3] = [500_000_000, 5_000_000_000, 10_000_000];
/// The payment provider's event ids.
pub const PROVIDER_EVENT_IDS: [&str; 6] = ["evt0", "evt1", "evt2", "evt3", "evt4", "evt5"];
pub const DISPUTE_IDS: [&str; 2] = ["dp0", "dp1"];
pub const REFUND_IDS: [&str; 2] = ["rf0", "rf1"];
/// Auto top-up thresholds in nano-USD: 0, 0.10, 1.00 and 5.00 USD.
pub const THRESHOLDS: [i64; 4] = [0, 100_000_000, 1_000_000_000, 5_000_000_000];
/// Monthly caps of auto top-ups in nano-USD: 0.50, 5.00 and 20.00 USD.
pub const MONTHLY_CAPS: [i64; 3] = [500_000_000, 5_000_000_000, 20_000_000_000];
/// A provider's amounts (refunded, disputed) in quarters of the payment's: a quarter, half,
/// all of it, and more than all (refused).
pub const QUARTERS: [i64; 4] = [1, 2, 4, 5];

/// The top-up settings of the generated sequences: from 0.10 to 10.00 USD, a declined auto
/// top-up waits 5 s.
pub fn top_up_settings() -> TopUpSettings {
    TopUpSettings {
        min: Nanos(100_000_000),
        max: Nanos(10_000_000_000),
        retry_after_ms: 5_000,
    }
}

/// The amount a top-up id is created with unless a step says otherwise.
pub fn top_up_amount(top_up: usize) -> Nanos {
    Nanos(TOP_UP_AMOUNTS[top_up % 2])
}

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
/// nothing else; [`top_up_settings`].
pub fn fresh_state() -> BatchState {
    let mut s = BatchState {
        top_up_settings: top_up_settings(),
        ..BatchState::default()
    };
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
    /// A checkout top-up (`amount`: an index into [`TOP_UP_AMOUNTS`]; `None`, the top-up's
    /// own, [`top_up_amount`]).
    CreateTopUp {
        account: usize,
        top_up: usize,
        amount: Option<usize>,
    },
    /// What the payment provider tells of a top-up, with one of its event ids or none (the
    /// provider's answer to a call).
    Provider {
        account: usize,
        event: Option<usize>,
        top_up: Pick,
        effect: EffectStep,
    },
    /// An operator's refund of a purchase (a pool's indexes [`PURCHASE_IDS`] then
    /// [`TOP_UP_IDS`]; `amount` [`AMOUNTS`]); `provider_total` in [`QUARTERS`] of the
    /// purchase's amount: refunded at the provider first.
    Refund {
        account: usize,
        purchase: Pick,
        refund: usize,
        amount: usize,
        provider_total: Option<usize>,
    },
    /// Sets the auto top-up rule (indexes into [`THRESHOLDS`], [`TOP_UP_AMOUNTS`],
    /// [`MONTHLY_CAPS`]).
    SetAutoTopUp {
        account: usize,
        enabled: bool,
        threshold: usize,
        amount: usize,
        max_per_month: usize,
    },
    /// Records the account's customer at the provider (`cus_<account>`).
    SetPaymentCustomer {
        account: usize,
    },
    /// A gateway request queued (`req`: an index into [`GATEWAY_IDS`]).
    GatewaySubmit {
        req: usize,
        account: usize,
        endpoint: usize,
    },
    /// Its turn, taken by a dispatcher ([`DISPATCHERS`]) on a lease ([`LEASES_MS`]).
    Dispatch {
        req: usize,
        owner: usize,
        lease: usize,
    },
    /// The model server's answer with `status`, billed as `bill` says (rated by `usage`).
    GatewayAnswer {
        req: usize,
        status: u16,
        usage: Usage,
        bill: BillStep,
    },
    /// The units a model server posts for a deferred answer.
    GatewayUnits {
        req: usize,
        units: i64,
    },
    /// A caller's cancellation: by the request's own account (`None`; the first account when
    /// there is no such request), or by the pool's `account`.
    GatewayCancel {
        req: usize,
        account: Option<usize>,
    },
    /// The sweeper's [`Op::Expire`] of a gateway request.
    GatewayExpire {
        req: usize,
    },
}

/// How a gateway answer is billed ([`Bill`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BillStep {
    Rate,
    Deferred,
    Unbilled,
}

/// How often gateway requests come besides the other operations (26, and the payments').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    Without,
    /// Now and then (10 in 39 with [`Payments::Some`]).
    Some,
    /// Often (40 in 69 with [`Payments::Some`]): a request's submission, dispatches, answers
    /// and units meet within a sequence.
    Many,
}

/// Which top-up or purchase a step is about: one the account has in the state it is sent to
/// (the `n`-th by id, round; the pool's first when it has none), or one of the pool's, which
/// may not exist.
#[derive(Clone, Copy, Debug)]
pub enum Pick {
    Known(usize),
    Pool(usize),
    /// The auto top-up in flight (the pool's first when none is).
    InFlight,
}

/// A provider's effect, as small numbers; amounts are in [`QUARTERS`] of the top-up's.
#[derive(Clone, Debug)]
pub enum EffectStep {
    /// Paid the top-up's amount (`mismatch`: a quarter more), saving the card or not.
    Paid {
        mismatch: bool,
        save_card: bool,
    },
    Failed {
        needs_customer: bool,
    },
    Refunded {
        total: usize,
    },
    Disputed {
        dispute: usize,
        amount: usize,
        status: DisputeStatus,
    },
    CheckoutCreated,
    /// The top-up's charge not made (its delivery found the decision stale).
    Cancelled,
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

/// How often payment operations come, against 26 for all the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payments {
    /// Now and then (3 in 29).
    Some,
    /// Often (20 in 46): top-ups, their payments, the rule and refunds meet within a sequence.
    Many,
}

pub fn step(statuses: Statuses) -> impl Strategy<Value = Step> {
    step_with(statuses, Payments::Some)
}

pub fn step_with(statuses: Statuses, payments: Payments) -> impl Strategy<Value = Step> {
    step_mixed(statuses, payments, Gateway::Without)
}

/// [`step_with`], with gateway requests or without.
pub fn step_mixed(
    statuses: Statuses,
    payments: Payments,
    gateway: Gateway,
) -> impl Strategy<Value = Step> {
    let others = other_step(statuses, payments);
    let others_weight = match payments {
        Payments::Some => 29,
        Payments::Many => 46,
    };
    let gateway_weight = match gateway {
        Gateway::Without => return others.boxed(),
        Gateway::Some => 10,
        Gateway::Many => 40,
    };
    prop_oneof![others_weight => others, gateway_weight => gateway_step(statuses)].boxed()
}

fn other_step(statuses: Statuses, payments: Payments) -> impl Strategy<Value = Step> {
    let payment_weight = match payments {
        Payments::Some => 3,
        Payments::Many => 20,
    };
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
        payment_weight => payment_step(),
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

/// A gateway operation: submissions, dispatches, answers, posted units, cancellations and the
/// sweeper's expiry, over [`GATEWAY_IDS`].
pub fn gateway_step(statuses: Statuses) -> impl Strategy<Value = Step> {
    let req = 0..GATEWAY_IDS.len();
    let status = prop_oneof![
        5 => status_code(statuses),
        1 => Just(402u16),
        1 => Just(403u16),
    ];
    let bill = prop_oneof![
        4 => Just(BillStep::Rate),
        2 => Just(BillStep::Deferred),
        2 => Just(BillStep::Unbilled),
    ];
    prop_oneof![
        3 => (req.clone(), account_ix(), endpoint_ix()).prop_map(|(req, account, endpoint)| {
            Step::GatewaySubmit { req, account, endpoint }
        }),
        3 => (req.clone(), 0..DISPATCHERS.len(), 0..LEASES_MS.len())
            .prop_map(|(req, owner, lease)| Step::Dispatch { req, owner, lease }),
        3 => (req.clone(), status, usage(statuses), bill).prop_map(|(req, status, usage, bill)| {
            Step::GatewayAnswer { req, status, usage, bill }
        }),
        1 => (req.clone(), prop_oneof![8 => 0i64..40, 1 => Just(-1i64)])
            .prop_map(|(req, units)| Step::GatewayUnits { req, units }),
        1 => (req.clone(), prop_oneof![4 => Just(None), 1 => account_ix().prop_map(Some)])
            .prop_map(|(req, account)| Step::GatewayCancel { req, account }),
        1 => req.prop_map(|req| Step::GatewayExpire { req }),
    ]
}

/// A payment operation: top-ups created, what the provider tells of them, operator refunds,
/// the auto top-up rule and the provider's customer.
pub fn payment_step() -> impl Strategy<Value = Step> {
    // Payments come to one account more often than to the others, so that a top-up, its
    // payment, the customer and the rule meet.
    let account = || prop_oneof![6 => Just(0usize), 2 => Just(1), 2 => Just(2), 1 => Just(3)];
    prop_oneof![
        3 => (
            account(),
            prop_oneof![4 => Just(0usize), 2 => Just(1), 1 => Just(2), 1 => Just(4)],
            prop_oneof![6 => Just(None), 1 => (0..TOP_UP_AMOUNTS.len()).prop_map(Some)],
        )
            .prop_map(|(account, top_up, amount)| Step::CreateTopUp { account, top_up, amount }),
        8 => (
            account(),
            prop_oneof![6 => (0..PROVIDER_EVENT_IDS.len()).prop_map(Some), 1 => Just(None)],
            prop_oneof![
                6 => (0..4usize).prop_map(Pick::Known),
                3 => Just(Pick::InFlight),
                1 => (0..TOP_UP_IDS.len()).prop_map(Pick::Pool),
            ],
            effect_step(),
        )
            .prop_map(|(account, event, top_up, effect)| Step::Provider {
                account,
                event,
                top_up,
                effect,
            }),
        2 => (
            account(),
            prop_oneof![
                4 => (0..4usize).prop_map(Pick::Known),
                1 => (0..PURCHASE_IDS.len() + TOP_UP_IDS.len()).prop_map(Pick::Pool),
            ],
            0..REFUND_IDS.len(),
            prop_oneof![6 => 0..3usize, 1 => Just(3)],
            prop::option::weighted(0.4, 0..QUARTERS.len()),
        )
            .prop_map(|(account, purchase, refund, amount, provider_total)| Step::Refund {
                account,
                purchase,
                refund,
                amount,
                provider_total,
            }),
        2 => (
            account(),
            prop::bool::weighted(0.8),
            0..THRESHOLDS.len(),
            prop_oneof![6 => 0..2usize, 1 => Just(2)],
            0..MONTHLY_CAPS.len(),
        )
            .prop_map(|(account, enabled, threshold, amount, max_per_month)| Step::SetAutoTopUp {
                account,
                enabled,
                threshold,
                amount,
                max_per_month,
            }),
        1 => account().prop_map(|account| Step::SetPaymentCustomer { account }),
    ]
}

pub fn effect_step() -> impl Strategy<Value = EffectStep> {
    let status = prop_oneof![
        3 => Just(DisputeStatus::Open),
        1 => Just(DisputeStatus::Won),
        1 => Just(DisputeStatus::Lost),
    ];
    prop_oneof![
        4 => (prop::bool::weighted(0.1), prop::bool::weighted(0.7))
            .prop_map(|(mismatch, save_card)| EffectStep::Paid { mismatch, save_card }),
        3 => prop::bool::weighted(0.3).prop_map(|needs_customer| EffectStep::Failed { needs_customer }),
        2 => (0..QUARTERS.len()).prop_map(|total| EffectStep::Refunded { total }),
        2 => (0..DISPUTE_IDS.len(), 0..3usize, status).prop_map(|(dispute, amount, status)| {
            EffectStep::Disputed { dispute, amount, status }
        }),
        1 => Just(EffectStep::CheckoutCreated),
        1 => Just(EffectStep::Cancelled),
    ]
}

/// How far the clock moves before a step: mostly a little, sometimes past the short hold
/// timeouts and credit expiries, now and then far enough for every hold to time out.
pub fn dt_ms() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..3_000, 3 => 3_000i64..40_000, 1 => 600_000i64..1_800_000]
}

pub fn timed(statuses: Statuses) -> impl Strategy<Value = Timed> {
    timed_with(statuses, Payments::Some)
}

pub fn timed_with(statuses: Statuses, payments: Payments) -> impl Strategy<Value = Timed> {
    (dt_ms(), step_with(statuses, payments)).prop_map(|(dt_ms, step)| Timed { dt_ms, step })
}

/// [`timed_with`], with gateway requests or without.
pub fn timed_mixed(
    statuses: Statuses,
    payments: Payments,
    gateway: Gateway,
) -> impl Strategy<Value = Timed> {
    (dt_ms(), step_mixed(statuses, payments, gateway))
        .prop_map(|(dt_ms, step)| Timed { dt_ms, step })
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

/// The operation `step` stands for, sent at `now` (to an empty state: see [`to_op_in`]).
pub fn to_op(step: &Step, now: Timestamp) -> Op {
    to_op_in(step, now, &BatchState::default())
}

/// `q` quarters of `amount`.
fn quarters(amount: Nanos, q: usize) -> Nanos {
    Nanos(amount.0 / 4 * QUARTERS[q])
}

/// The operation `step` stands for, sent at `now` to `state`: a provider's amounts are those
/// of the top-up (or purchase) they are about, as `state` has it.
pub fn to_op_in(step: &Step, now: Timestamp, state: &BatchState) -> Op {
    let rid = |i: usize| RequestId::parse(REQUEST_IDS[i]).unwrap();
    let gid = |i: usize| RequestId::parse(GATEWAY_IDS[i]).unwrap();
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
        Step::CreateTopUp {
            account,
            top_up,
            amount,
        } => Op::CreateTopUp {
            account: account_id(*account),
            top_up_id: top_up_id(*top_up),
            amount: amount.map_or(top_up_amount(*top_up), |i| Nanos(TOP_UP_AMOUNTS[i])),
        },
        Step::Provider {
            account,
            event,
            top_up,
            effect,
        } => {
            let id = match top_up {
                Pick::Known(n) => {
                    let mut known: Vec<&PurchaseId> = state
                        .top_ups
                        .keys()
                        .filter(|(a, _)| *a == account_id(*account))
                        .map(|(_, t)| t)
                        .collect();
                    known.sort();
                    known
                        .get(n % known.len().max(1))
                        .map_or(top_up_id(0), |t| (*t).clone())
                }
                Pick::Pool(i) => top_up_id(*i),
                Pick::InFlight => state
                    .accounts
                    .get(&account_id(*account))
                    .and_then(|a| a.payment.auto_top_up.as_ref())
                    .and_then(|r| r.in_flight.clone())
                    .unwrap_or_else(|| top_up_id(0)),
            };
            let amount = state
                .top_ups
                .get(&(account_id(*account), id.clone()))
                .map_or(Nanos(TOP_UP_AMOUNTS[0]), |t| t.amount);
            let (event_type, effect) = match effect {
                EffectStep::Paid {
                    mismatch,
                    save_card,
                } => (
                    "payment_intent.succeeded",
                    PaymentEffect::Paid {
                        top_up_id: id.clone(),
                        amount: if *mismatch {
                            Nanos(amount.0 + amount.0 / 4)
                        } else {
                            amount
                        },
                        payment_intent: Some(format!("pi_{}_{id}", ACCOUNTS[*account])),
                        payment_method: save_card.then(|| "pm_card".to_string()),
                    },
                ),
                EffectStep::Failed { needs_customer } => (
                    "payment_intent.payment_failed",
                    PaymentEffect::Failed {
                        top_up_id: id,
                        reason: if *needs_customer {
                            "authentication_required"
                        } else {
                            "card_declined"
                        }
                        .into(),
                        needs_customer: *needs_customer,
                    },
                ),
                EffectStep::Refunded { total } => (
                    "charge.refunded",
                    PaymentEffect::Refunded {
                        top_up_id: id,
                        refunded_total: quarters(amount, *total),
                    },
                ),
                EffectStep::Disputed {
                    dispute,
                    amount: part,
                    status,
                } => (
                    "charge.dispute.updated",
                    PaymentEffect::Disputed {
                        top_up_id: id,
                        dispute_id: DISPUTE_IDS[*dispute].to_string(),
                        // Half, all, or none of the payment (refused).
                        amount: Nanos(amount.0 / 2 * *part as i64),
                        status: *status,
                    },
                ),
                EffectStep::CheckoutCreated => (
                    "checkout.session.created",
                    PaymentEffect::CheckoutCreated {
                        top_up_id: id.clone(),
                        session: format!("cs_{id}"),
                        url: format!("https://checkout.test/{id}"),
                    },
                ),
                EffectStep::Cancelled => (
                    "tollgate.cancelled",
                    PaymentEffect::Cancelled { top_up_id: id },
                ),
            };
            Op::Payment {
                account: account_id(*account),
                event: event.map(|e| ProviderEvent {
                    event_id: PROVIDER_EVENT_IDS[e].to_string(),
                    event_type: event_type.to_string(),
                }),
                effect,
            }
        }
        Step::Refund {
            account,
            purchase,
            refund,
            amount,
            provider_total,
        } => {
            let purchase_id = match purchase {
                Pick::Known(n) => {
                    let mut known: Vec<&PurchaseId> = state
                        .purchases
                        .keys()
                        .filter(|(a, _)| *a == account_id(*account))
                        .map(|(_, p)| p)
                        .collect();
                    known.sort();
                    known
                        .get(n % known.len().max(1))
                        .map_or(top_up_id(0), |p| (*p).clone())
                }
                Pick::Pool(i) if *i < PURCHASE_IDS.len() => {
                    PurchaseId::parse(PURCHASE_IDS[*i]).unwrap()
                }
                Pick::Pool(i) => top_up_id(*i - PURCHASE_IDS.len()),
                Pick::InFlight => top_up_id(2),
            };
            let paid = state
                .purchases
                .get(&(account_id(*account), purchase_id.clone()))
                .map_or(Nanos(AMOUNTS[1]), |p| p.amount);
            Op::Refund {
                account: account_id(*account),
                purchase_id,
                refund_id: PurchaseId::parse(REFUND_IDS[*refund]).unwrap(),
                amount: Nanos(AMOUNTS[*amount]),
                provider: provider_total.map(|q| ProviderRefund {
                    reference: format!("re_{}", REFUND_IDS[*refund]),
                    refunded_total: quarters(paid, q),
                }),
            }
        }
        Step::SetAutoTopUp {
            account,
            enabled,
            threshold,
            amount,
            max_per_month,
        } => Op::SetAutoTopUp {
            account: account_id(*account),
            rule: AutoTopUpRule {
                enabled: *enabled,
                threshold: Nanos(THRESHOLDS[*threshold]),
                amount: Nanos(TOP_UP_AMOUNTS[*amount]),
                max_per_month: Nanos(MONTHLY_CAPS[*max_per_month]),
            },
        },
        Step::SetPaymentCustomer { account } => Op::SetPaymentCustomer {
            account: account_id(*account),
            customer: format!("cus_{}", ACCOUNTS[*account]),
        },
        Step::GatewaySubmit {
            req,
            account,
            endpoint,
        } => Op::GatewaySubmit {
            request_id: gid(*req),
            account: account_id(*account),
            api_key: None,
            endpoint: ep(*endpoint),
            input: GatewayInput {
                path: String::new(),
                input: std::sync::Arc::from(format!(r#"{{"n":{req}}}"#)),
                webhook: None,
                no_retry: false,
            },
        },
        Step::Dispatch { req, owner, lease } => Op::Dispatch {
            request_id: gid(*req),
            lease: Lease {
                owner: std::sync::Arc::from(DISPATCHERS[*owner]),
                until: now.plus_ms(LEASES_MS[*lease]),
            },
            machine_type: None,
        },
        Step::GatewayAnswer {
            req,
            status,
            usage,
            bill,
        } => Op::GatewayAnswer {
            request_id: gid(*req),
            result: GatewayResult {
                status_code: *status,
                content_type: Some("application/json".into()),
                body: std::sync::Arc::from(format!(r#"{{"status":{status}}}"#).as_bytes()),
                error_type: (*bill == BillStep::Unbilled).then(|| "upstream_error".to_string()),
            },
            bill: match bill {
                BillStep::Rate => Bill::Rate {
                    billable_units: usage.billable_units.map(Decimal::from),
                    output: Box::new(output(usage)),
                    inference_seconds: Decimal::new(usage.inference_ms.unwrap_or(1_500), 3),
                },
                BillStep::Deferred => Bill::Deferred,
                BillStep::Unbilled => Bill::Unbilled,
            },
        },
        Step::GatewayUnits { req, units } => Op::GatewayUnits {
            request_id: gid(*req),
            billable_units: Decimal::from(*units),
        },
        Step::GatewayCancel { req, account } => Op::GatewayCancel {
            request_id: gid(*req),
            account: match account {
                Some(i) => account_id(*i),
                None => state
                    .requests
                    .get(&gid(*req))
                    .map_or_else(|| account_id(0), |r| r.account.clone()),
            },
        },
        Step::GatewayExpire { req } => Op::Expire {
            request_id: gid(*req),
        },
    }
}

pub fn top_up_id(i: usize) -> PurchaseId {
    PurchaseId::parse(TOP_UP_IDS[i]).unwrap()
}
