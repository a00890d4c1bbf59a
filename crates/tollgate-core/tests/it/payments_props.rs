//! Properties of payments through [`apply`] (pure, no I/O): what the payment provider tells of
//! one payment, in any order and again, ends in one state, the model's; the auto top-up rule
//! starts exactly one top-up for the whole shortfall while the balance is below its threshold,
//! never past its monthly cap, and pauses as it says; refunds issue their credit notes; replays
//! change nothing.

use proptest::prelude::*;
use std::collections::BTreeMap;
use tollgate_core::catalog::Catalog;
use tollgate_core::events::{EventData, EventType};
use tollgate_core::ids::{AccountId, EndpointId, PurchaseId, RequestId};
use tollgate_core::ledger::{LedgerAccount, TransferKind};
use tollgate_core::machine::{
    apply, month_of, BatchState, InvoiceKind, LockReason, Op, Outcome, Rejection, UsageEvent,
};
use tollgate_core::payments::{
    AutoTopUpRule, DisputeStatus, PausedReason, PaymentEffect, ProviderEvent, ProviderRefund,
    TopUpKind, TopUpSettings, TopUpStatus, MAX_FAILURES,
};
use tollgate_core::testing::{account_id, fresh_state, top_up_settings, EP_MP, T0};
use tollgate_core::time::next_month_start;
use tollgate_core::{Nanos, Timestamp};

const USD: i64 = 1_000_000_000;
/// A megapixel of `test/megapixel`: 0.025 USD at `alice`'s list price.
const MP: i64 = 25_000_000;

fn alice() -> AccountId {
    account_id(0)
}

fn pid(s: &str) -> PurchaseId {
    PurchaseId::parse(s).unwrap()
}

fn catalog() -> Catalog {
    crate::ledger_props::catalog()
}

/// Top-ups from 0.10 to 100.00 USD; a declined auto top-up waits 5 s.
fn settings() -> TopUpSettings {
    TopUpSettings {
        max: Nanos(100 * USD),
        ..top_up_settings()
    }
}

/// A batch state and its clock, operations applied one by one.
struct World {
    s: BatchState,
    now: Timestamp,
    catalog: Catalog,
    charges: u64,
}

impl World {
    fn new() -> World {
        World {
            s: BatchState {
                top_up_settings: settings(),
                ..fresh_state()
            },
            now: Timestamp(T0),
            catalog: catalog(),
            charges: 0,
        }
    }

    fn apply(&mut self, op: Op) -> Result<Outcome, Rejection> {
        apply(&mut self.s, &self.catalog, self.now, op)
    }

    fn ok(&mut self, op: Op) -> Outcome {
        let shown = format!("{op:?}");
        self.apply(op)
            .unwrap_or_else(|e| panic!("{shown} refused: {e}"))
    }

    fn pay(&mut self, event: Option<&str>, effect: PaymentEffect) -> Result<Outcome, Rejection> {
        self.apply(Op::Payment {
            account: alice(),
            event: event.map(|id| ProviderEvent {
                event_id: id.to_string(),
                event_type: "test".into(),
            }),
            effect,
        })
    }

    /// A usage event of `units` megapixels, billed in full whatever the balance.
    fn charge(&mut self, units: i64) {
        self.charges += 1;
        let op = Op::UsageEvent(UsageEvent {
            event_id: RequestId::parse(&format!("use-{}", self.charges)).unwrap(),
            account: alice(),
            endpoint: EndpointId::parse(EP_MP).unwrap(),
            api_key: None,
            timestamp: self.now,
            status_code: 200,
            output: Default::default(),
            billable_units: Some(units.into()),
            queue_seconds: None,
            inference_seconds: None,
            machine_type: None,
            num_gpus: None,
        });
        self.ok(op);
    }

    fn top_up(&mut self, id: &str, amount: Nanos) {
        self.ok(Op::CreateTopUp {
            account: alice(),
            top_up_id: pid(id),
            amount,
        });
    }

    fn balance(&self) -> Nanos {
        self.s.accounts[&alice()].credit.balance
    }

    /// The ledger agrees with the account: its posted transfers sum to its balance, its lots
    /// and adjusted credit to `max(balance, 0)`, and nothing is held that no request holds.
    fn check_ledger(&self) -> Result<(), TestCaseError> {
        let a = &self.s.accounts[&alice()];
        let me = LedgerAccount::Customer(alice());
        let posted: i64 = self
            .s
            .transfers
            .iter()
            .filter(|t| t.transfer.kind.is_posted())
            .map(|t| {
                if t.transfer.credit == me {
                    t.transfer.amount.0
                } else if t.transfer.debit == me {
                    -t.transfer.amount.0
                } else {
                    0
                }
            })
            .sum();
        prop_assert_eq!(posted, a.credit.balance.0, "transfers != balance");
        let lots: i64 = a.lots.iter().map(|l| l.remaining.0).sum::<i64>() + a.adjusted_credit.0;
        prop_assert_eq!(lots, a.credit.balance.0.max(0), "lots != max(balance, 0)");
        prop_assert!(a.lots.iter().all(|l| l.remaining >= Nanos::ZERO));
        let held: i64 = self
            .s
            .requests
            .values()
            .filter(|r| r.status == tollgate_core::machine::RequestStatus::InProgress)
            .map(|r| r.hold.0)
            .sum();
        prop_assert_eq!(a.credit.held.0, held);
        Ok(())
    }

    fn events(&self, t: EventType) -> Vec<&EventData> {
        self.s
            .events
            .iter()
            .filter(|e| e.data.event_type() == t)
            .map(|e| &e.data)
            .collect()
    }
}

/// Everything an operation may change, to compare before and after a replay.
fn fingerprint(s: &BatchState) -> String {
    let sorted = |v: Vec<String>| {
        let mut v = v;
        v.sort();
        v.join("\n")
    };
    format!(
        "{:?}\n{}\n{}\n{}\n{}\n{}\n{} {} {} {} {} {}",
        sorted(s.accounts.iter().map(|x| format!("{x:?}")).collect()),
        sorted(s.purchases.iter().map(|x| format!("{x:?}")).collect()),
        sorted(s.top_ups.iter().map(|x| format!("{x:?}")).collect()),
        sorted(s.disputes.iter().map(|x| format!("{x:?}")).collect()),
        sorted(s.refunds.iter().map(|x| format!("{x:?}")).collect()),
        sorted(s.provider_events.iter().cloned().collect()),
        s.transfers.len(),
        s.events.len(),
        s.new_invoices.len(),
        s.new_purchases.len(),
        s.new_refunds.len(),
        s.dirty_accounts.len(),
    )
}

// ---------------------------------------------------------------------------------------------
// One payment's provider events, in any order and again.

/// What the provider tells of one top-up's payment, as a consistent history: it was paid,
/// refunded in growing cumulative amounts, disputed (each dispute opened, maybe updated, maybe
/// decided); meanwhile the customer spends.
#[derive(Clone, Debug)]
struct History {
    /// The top-up, in USD.
    amount: i64,
    /// Credits bought by hand before, in USD.
    base: i64,
    /// The charge's cumulative refunded amounts, in quarters of the payment.
    refunds: Vec<i64>,
    /// Each dispute's amount in quarters, and how it ended (`None`: still open).
    disputes: Vec<(i64, Option<DisputeStatus>)>,
    /// Usage charges, in megapixels.
    charges: Vec<i64>,
    /// Whether a second event reports the same payment (as `checkout.session.completed` and
    /// `payment_intent.succeeded` both do).
    second_paid: bool,
}

#[derive(Clone, Debug)]
enum Item {
    Provider(String, PaymentEffect),
    Charge(i64),
}

impl History {
    fn amount(&self) -> Nanos {
        Nanos(self.amount * USD)
    }

    fn quarters(&self, q: i64) -> Nanos {
        Nanos(self.amount * USD / 4 * q)
    }

    /// Every event once, with its own id, and the charges, in a natural order.
    fn items(&self) -> Vec<Item> {
        let t = pid("t-1");
        let mut items = Vec::new();
        let mut n = 0;
        let mut event = |effect: PaymentEffect, items: &mut Vec<Item>| {
            n += 1;
            items.push(Item::Provider(format!("evt_{n}"), effect));
        };
        let paid = PaymentEffect::Paid {
            top_up_id: t.clone(),
            amount: self.amount(),
            payment_intent: Some("pi_1".into()),
            payment_method: None,
        };
        event(paid.clone(), &mut items);
        if self.second_paid {
            event(paid, &mut items);
        }
        for q in &self.refunds {
            event(
                PaymentEffect::Refunded {
                    top_up_id: t.clone(),
                    refunded_total: self.quarters(*q),
                },
                &mut items,
            );
        }
        for (i, (q, end)) in self.disputes.iter().enumerate() {
            let dispute = |status| PaymentEffect::Disputed {
                top_up_id: t.clone(),
                dispute_id: format!("dp_{i}"),
                amount: self.quarters(*q),
                status,
            };
            // Created, then updated (evidence submitted): the same state twice.
            event(dispute(DisputeStatus::Open), &mut items);
            event(dispute(DisputeStatus::Open), &mut items);
            if let Some(end) = end {
                event(dispute(*end), &mut items);
            }
        }
        items.extend(self.charges.iter().map(|u| Item::Charge(*u)));
        items
    }

    /// What every order ends in: (balance, refunded, disputed, the disputes still holding the
    /// lock).
    fn expected(&self) -> (Nanos, Nanos, Nanos, u32) {
        let refunded = self
            .refunds
            .iter()
            .max()
            .map_or(Nanos::ZERO, |q| self.quarters(*q));
        let holding: Vec<_> = self
            .disputes
            .iter()
            .filter(|(_, end)| !matches!(end, Some(DisputeStatus::Won)))
            .collect();
        let disputed = Nanos(holding.iter().map(|(q, _)| self.quarters(*q).0).sum());
        let charges: i64 = self.charges.iter().sum::<i64>() * MP;
        let balance = (self.base + self.amount) * USD - refunded.0 - disputed.0 - charges;
        (Nanos(balance), refunded, disputed, holding.len() as u32)
    }
}

fn history() -> impl Strategy<Value = History> {
    let refunds = prop::collection::btree_set(1i64..=4, 0..=3)
        .prop_map(|s| s.into_iter().collect::<Vec<_>>());
    let end = prop_oneof![
        Just(None),
        Just(Some(DisputeStatus::Won)),
        Just(Some(DisputeStatus::Lost)),
    ];
    // At most two disputes, together no more than the payment.
    let disputes = prop_oneof![
        1 => Just(vec![]),
        2 => (1i64..=4, end.clone()).prop_map(|d| vec![d]),
        1 => ((1i64..=2, end.clone()), (1i64..=2, end)).prop_map(|(a, b)| vec![a, b]),
    ];
    (
        prop_oneof![Just(5i64), Just(10), Just(20)],
        0i64..3,
        refunds,
        disputes,
        prop::collection::vec(1i64..200, 0..6),
        any::<bool>(),
    )
        .prop_map(
            |(amount, base, refunds, disputes, charges, second_paid)| History {
                amount,
                base,
                refunds,
                disputes,
                charges,
                second_paid,
            },
        )
}

/// A history, and its items shuffled with some sent again (the same event id: a redelivery).
fn shuffled() -> impl Strategy<Value = (History, Vec<Item>)> {
    history().prop_flat_map(|h| {
        let items = h.items();
        prop::collection::vec(0..items.len(), 0..4).prop_flat_map(move |again| {
            // Provider events again (a charge again would be another charge).
            let mut all = items.clone();
            all.extend(
                again
                    .iter()
                    .map(|i| items[*i].clone())
                    .filter(|i| matches!(i, Item::Provider(..))),
            );
            (Just(h.clone()), Just(all).prop_shuffle())
        })
    })
}

/// Applies `items` after the top-up's creation (and the hand-bought credits), checking each
/// step; returns the world.
fn run_history(h: &History, items: &[Item]) -> Result<World, TestCaseError> {
    let mut w = World::new();
    if h.base > 0 {
        w.ok(Op::Purchase {
            account: alice(),
            purchase_id: pid("base"),
            amount: Nanos(h.base * USD),
            paid: true,
            expires_at: None,
        });
    }
    w.top_up("t-1", h.amount());
    for item in items {
        w.now = w.now.plus_ms(1_000);
        match item {
            Item::Charge(units) => w.charge(*units),
            Item::Provider(id, effect) => {
                let seen = w.s.provider_events.contains(id);
                let before = fingerprint(&w.s);
                let answer = w.pay(Some(id), effect.clone());
                prop_assert!(answer.is_ok(), "{:?} refused: {:?}", effect, answer);
                if seen {
                    // A redelivery is answered as such and changes nothing.
                    prop_assert!(
                        matches!(answer, Ok(Outcome::PaymentApplied { replayed: true, .. })),
                        "{:?}",
                        answer
                    );
                    prop_assert_eq!(fingerprint(&w.s), before, "a replay changed the state");
                }
            }
        }
        w.check_ledger()?;
    }
    Ok(w)
}

/// The end state every order must reach.
fn end_state(w: &World) -> (Nanos, Nanos, Nanos, Option<LockReason>, u32, Vec<String>) {
    let a = &w.s.accounts[&alice()];
    let p = &w.s.purchases[&(alice(), pid("t-1"))];
    let mut disputes: Vec<String> =
        w.s.disputes
            .values()
            .map(|d| {
                format!(
                    "{} {:?} {} {}",
                    d.dispute_id, d.status, d.amount.0, d.taken.0
                )
            })
            .collect();
    disputes.sort();
    (
        a.credit.balance,
        p.refunded,
        p.disputed,
        a.lock_reason(),
        a.payment.dispute_locks,
        disputes,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the order of one payment's events (paid, refunded in growing cumulative
    /// amounts, disputes opened, updated, won or lost), however often each is delivered, and
    /// whatever the customer spends meanwhile, the balance, what the purchase records as
    /// refunded and disputed, the lock and the ledger end as the model says, the same as in
    /// the order the provider sent them.
    #[test]
    fn a_payments_events_end_in_one_state_whatever_their_order((h, items) in shuffled()) {
        let natural = run_history(&h, &h.items())?;
        let w = run_history(&h, &items)?;
        prop_assert_eq!(end_state(&w), end_state(&natural));

        let (balance, refunded, disputed, holding) = h.expected();
        let a = &w.s.accounts[&alice()];
        prop_assert_eq!(a.credit.balance, balance);
        let p = &w.s.purchases[&(alice(), pid("t-1"))];
        prop_assert_eq!((p.refunded, p.disputed), (refunded, disputed));
        prop_assert_eq!(a.payment.dispute_locks, holding);
        prop_assert_eq!(a.disputed_since.is_some(), holding > 0);
        let lock = if holding > 0 {
            Some(LockReason::PaymentDisputed)
        } else if balance <= Nanos::ZERO {
            Some(LockReason::ExhaustedBalance)
        } else {
            None
        };
        prop_assert_eq!(a.lock_reason(), lock);
        prop_assert_eq!(a.credit.held, Nanos::ZERO);
        // The paid totals count the payment net of what was taken back.
        prop_assert_eq!(
            a.paid_lifetime,
            Nanos((h.base + h.amount) * USD - refunded.0 - disputed.0)
        );

        // Credited once: one purchase, one top-up invoice, one top_up.succeeded.
        prop_assert_eq!(w.events(EventType::TopUpSucceeded).len(), 1);
        let top_up_invoices = w
            .s
            .new_invoices
            .iter()
            .filter(|i| i.kind == InvoiceKind::TopUp && i.purchase_id == Some(pid("t-1")))
            .count();
        prop_assert_eq!(top_up_invoices, 1);
        prop_assert_eq!(w.s.top_ups[&(alice(), pid("t-1"))].status, TopUpStatus::Succeeded);
        // Each refund taken has its credit note and its payment.refunded, for what it took.
        let notes: Vec<i64> = w
            .s
            .new_invoices
            .iter()
            .filter(|i| i.kind == InvoiceKind::CreditNote)
            .map(|i| i.total.0)
            .collect();
        let told: Vec<i64> = w
            .events(EventType::PaymentRefunded)
            .iter()
            .map(|e| match e {
                EventData::PaymentRefunded { amount_nano_usd, .. } => -amount_nano_usd.0,
                _ => unreachable!(),
            })
            .collect();
        prop_assert_eq!(&notes, &told);
        prop_assert_eq!(notes.iter().sum::<i64>(), -refunded.0);
        prop_assert!(notes.iter().all(|n| *n < 0));
        // Every transfer names the purchase it moved for.
        for t in &w.s.transfers {
            if matches!(
                t.transfer.kind,
                TransferKind::Refund | TransferKind::Dispute | TransferKind::DisputeReversal
            ) {
                prop_assert_eq!(t.purchase_id.as_ref(), Some(&pid("t-1")));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The auto top-up rule.

#[derive(Clone, Copy, Debug)]
enum Answer {
    Paid,
    Declined,
    NeedsCustomer,
}

#[derive(Clone, Debug)]
enum AutoStep {
    /// A usage event of this many megapixels.
    Charge(i64),
    /// Starts request `n` (submitted before: a hold of 0.10 USD), or completes it (billing
    /// 2 MP).
    Start(usize),
    Complete(usize),
    /// The provider's answer to the top-up in flight (with an event id or as the answer to the
    /// call).
    Answer(Answer, bool),
    /// Time passes (no operation).
    Wait(i64),
    /// To just after the next UTC month starts.
    NextMonth,
    /// The customer sets the rule again (active again; refused without a saved card).
    SetAgain,
    /// One more USD of the 5.00 USD checkout `t-0` refunded (up to 4.00 in all): by the
    /// operator (through the provider) or told by the provider's event.
    Refund {
        operator: bool,
    },
    /// The provider tells the state of the one dispute of `t-0` (1.00 USD).
    Dispute(DisputeStatus),
    /// The operator unlocks the account's dispute lock.
    Unlock,
    /// The customer pays a 5.00 USD checkout saving a new card (consenting again).
    Checkout,
    /// The top-up in flight is cancelled (its delivery found the decision stale).
    Cancel,
}

#[derive(Clone, Debug)]
struct Rule {
    threshold: i64,
    amount: i64,
    max_per_month: i64,
}

impl Rule {
    fn op(&self) -> Op {
        Op::SetAutoTopUp {
            account: alice(),
            rule: AutoTopUpRule {
                enabled: true,
                threshold: Nanos(self.threshold),
                amount: Nanos(self.amount),
                max_per_month: Nanos(self.max_per_month),
            },
        }
    }
}

fn rule() -> impl Strategy<Value = Rule> {
    let cent = USD / 100;
    (
        prop_oneof![Just(100 * cent), Just(200 * cent), Just(500 * cent)],
        prop_oneof![Just(50 * cent), Just(100 * cent), Just(200 * cent)],
        prop_oneof![Just(200 * cent), Just(500 * cent), Just(1000 * cent)],
    )
        .prop_map(|(threshold, amount, max_per_month)| Rule {
            threshold,
            amount,
            max_per_month: max_per_month.max(amount),
        })
}

fn auto_step() -> impl Strategy<Value = AutoStep> {
    let answer = prop_oneof![
        4 => Just(Answer::Paid),
        3 => Just(Answer::Declined),
        1 => Just(Answer::NeedsCustomer),
    ];
    prop_oneof![
        6 => (1i64..120).prop_map(AutoStep::Charge),
        2 => (0..REQUESTS).prop_map(AutoStep::Start),
        2 => (0..REQUESTS).prop_map(AutoStep::Complete),
        5 => (answer, any::<bool>()).prop_map(|(a, e)| AutoStep::Answer(a, e)),
        2 => prop_oneof![Just(1_000i64), Just(6_000), Just(3_600_000)].prop_map(AutoStep::Wait),
        1 => Just(AutoStep::NextMonth),
        1 => Just(AutoStep::SetAgain),
        1 => any::<bool>().prop_map(|operator| AutoStep::Refund { operator }),
        1 => prop_oneof![
            2 => Just(DisputeStatus::Open),
            1 => Just(DisputeStatus::Won),
            1 => Just(DisputeStatus::Lost),
        ]
        .prop_map(AutoStep::Dispute),
        1 => Just(AutoStep::Unlock),
        1 => Just(AutoStep::Checkout),
        1 => Just(AutoStep::Cancel),
    ]
}

/// Requests submitted before the rule is set, to start and complete.
const REQUESTS: usize = 12;

/// `alice` with a customer, a card saved at a 5.00 USD checkout, [`REQUESTS`] requests
/// submitted, and the rule set.
fn auto_world(rule: &Rule) -> World {
    let mut w = World::new();
    w.ok(Op::SetPaymentCustomer {
        account: alice(),
        customer: "cus_alice".into(),
    });
    w.top_up("t-0", Nanos(5 * USD));
    w.pay(
        Some("evt_t0"),
        PaymentEffect::Paid {
            top_up_id: pid("t-0"),
            amount: Nanos(5 * USD),
            payment_intent: Some("pi_t0".into()),
            payment_method: Some("pm_card".into()),
        },
    )
    .unwrap();
    for n in 0..REQUESTS {
        w.ok(Op::Submit {
            request_id: RequestId::parse(&format!("r-{n}")).unwrap(),
            account: alice(),
            api_key: None,
            endpoint: EndpointId::parse(EP_MP).unwrap(),
        });
    }
    // The checkouts the customer may pay later ([`AutoStep::Checkout`]), created before the
    // rule is set.
    for n in 1..=CHECKOUTS {
        w.top_up(&format!("t-c{n}"), Nanos(5 * USD));
    }
    w.ok(rule.op());
    w
}

/// Checkouts created ahead for [`AutoStep::Checkout`].
const CHECKOUTS: u32 = 40;

/// What the test knows of the rule, kept by hand.
#[derive(Default)]
struct Model {
    failures: u32,
    paused: Option<PausedReason>,
    /// The card saved for off-session charges (`None`: forgotten by a dispute).
    card: Option<String>,
    /// Checkouts paid after the first.
    checkouts: u32,
    /// What of `t-0` is refunded, in all.
    refunded: i64,
    /// The state of `t-0`'s dispute, once told.
    dispute: Option<DisputeStatus>,
    /// Whether the dispute holds the account's lock (open or lost, and not unlocked since).
    locked: bool,
    /// Auto top-ups started and not failed, per UTC month of their start.
    per_month: BTreeMap<i32, i64>,
    /// The credits expected: paid top-ups minus charges.
    balance: i64,
    started: u32,
    /// Pauses begun, and top-ups the cap trimmed.
    pauses: u32,
    trimmed: u32,
    /// Pauses for a dispute, top-ups cancelled, and refunds, disputes or unlocks after which
    /// a top-up would have been due and none started.
    dispute_pauses: u32,
    cancelled: u32,
    not_after_returns: u32,
}

fn auto_top_ups_awaiting(w: &World) -> Vec<PurchaseId> {
    w.s.top_ups
        .values()
        .filter(|t| t.kind == TopUpKind::Auto && t.status == TopUpStatus::AwaitingPayment)
        .map(|t| t.top_up_id.clone())
        .collect()
}

fn run_auto(rule: &Rule, steps: &[AutoStep]) -> Result<Model, TestCaseError> {
    let settings = settings();
    let mut w = auto_world(rule);
    let mut m = Model {
        balance: 5 * USD,
        card: Some("pm_card".into()),
        ..Model::default()
    };
    let mut refunds = 0;
    let mut n_events = 0;
    for step in steps {
        w.now = w.now.plus_ms(500);
        let events_before = w.s.events.len();
        let in_flight_before = auto_top_ups_awaiting(&w);
        let mut changed = true;
        match step {
            AutoStep::Charge(units) => {
                w.charge(*units);
                m.balance -= units * MP;
            }
            AutoStep::Start(n) => {
                let request_id = RequestId::parse(&format!("r-{n}")).unwrap();
                changed = matches!(
                    w.apply(Op::Start {
                        request_id,
                        machine_type: None,
                        num_gpus: None,
                        hold_units: None,
                    }),
                    Ok(Outcome::Started {
                        replayed: false,
                        ..
                    })
                );
            }
            AutoStep::Complete(n) => {
                let done = w.apply(Op::Complete {
                    request_id: RequestId::parse(&format!("r-{n}")).unwrap(),
                    status_code: 200,
                    output: Default::default(),
                    billable_units: Some(2.into()),
                    inference_seconds: None,
                });
                changed = false;
                if let Ok(Outcome::Completed {
                    completion,
                    replayed: false,
                    ..
                }) = done
                {
                    m.balance -= completion.charge.total_nanos.0;
                    changed = true;
                }
            }
            AutoStep::Answer(answer, with_event) => {
                let Some(id) = in_flight_before.first().cloned() else {
                    continue;
                };
                let amount = w.s.top_ups[&(alice(), id.clone())].amount;
                let created = w.s.top_ups[&(alice(), id.clone())].created_at;
                n_events += 1;
                let event = format!("evt_{n_events}");
                let effect = match answer {
                    Answer::Paid => PaymentEffect::Paid {
                        top_up_id: id.clone(),
                        amount,
                        payment_intent: Some(format!("pi_{id}")),
                        payment_method: Some("pm_card".into()),
                    },
                    Answer::Declined | Answer::NeedsCustomer => PaymentEffect::Failed {
                        top_up_id: id.clone(),
                        reason: "declined".into(),
                        needs_customer: matches!(answer, Answer::NeedsCustomer),
                    },
                };
                let answered = w.pay(with_event.then_some(event.as_str()), effect);
                prop_assert!(answered.is_ok(), "{:?}", answered);
                match answer {
                    Answer::Paid => {
                        m.balance += amount.0;
                        m.failures = 0;
                    }
                    Answer::Declined | Answer::NeedsCustomer => {
                        *m.per_month.get_mut(&month_of(created)).unwrap() -= amount.0;
                        m.failures += 1;
                        if m.paused.is_none() {
                            if matches!(answer, Answer::NeedsCustomer) {
                                m.paused = Some(PausedReason::AuthenticationRequired);
                            } else if m.failures >= MAX_FAILURES {
                                m.paused = Some(PausedReason::RepeatedFailures);
                            }
                            m.pauses += u32::from(m.paused.is_some());
                        }
                    }
                }
            }
            AutoStep::Wait(ms) => {
                w.now = w.now.plus_ms(*ms);
                continue;
            }
            AutoStep::NextMonth => {
                w.now = next_month_start(w.now).plus_ms(1_000);
                continue;
            }
            AutoStep::SetAgain => {
                let set = w.apply(rule.op());
                if m.card.is_some() {
                    prop_assert!(set.is_ok(), "{:?}", set);
                    m.failures = 0;
                    m.paused = None;
                } else {
                    prop_assert!(
                        matches!(set, Err(Rejection::PaymentMethodRequired(_))),
                        "{:?}",
                        set
                    );
                    changed = false;
                }
            }
            AutoStep::Refund { operator } => {
                if m.refunded >= 4 * USD {
                    continue;
                }
                m.refunded += USD;
                refunds += 1;
                let total = Nanos(m.refunded);
                if *operator {
                    w.ok(Op::Refund {
                        account: alice(),
                        purchase_id: pid("t-0"),
                        refund_id: pid(&format!("rf-{refunds}")),
                        amount: Nanos(USD),
                        provider: Some(ProviderRefund {
                            reference: format!("re_{refunds}"),
                            refunded_total: total,
                        }),
                    });
                } else {
                    n_events += 1;
                    let answer = w.pay(
                        Some(&format!("evt_{n_events}")),
                        PaymentEffect::Refunded {
                            top_up_id: pid("t-0"),
                            refunded_total: total,
                        },
                    );
                    prop_assert!(answer.is_ok(), "{:?}", answer);
                }
                m.balance -= USD;
                changed = false;
            }
            AutoStep::Dispute(status) => {
                n_events += 1;
                let answer = w.pay(
                    Some(&format!("evt_{n_events}")),
                    PaymentEffect::Disputed {
                        top_up_id: pid("t-0"),
                        dispute_id: "dp_0".into(),
                        amount: Nanos(USD),
                        status: *status,
                    },
                );
                prop_assert!(answer.is_ok(), "{:?}", answer);
                let was = m.dispute;
                match (was, status) {
                    // Decided, or told again: nothing.
                    (Some(DisputeStatus::Won | DisputeStatus::Lost), _)
                    | (Some(DisputeStatus::Open), DisputeStatus::Open) => {}
                    (_, DisputeStatus::Won) => {
                        if was == Some(DisputeStatus::Open) {
                            m.balance += USD;
                            m.locked = false;
                        }
                        m.dispute = Some(DisputeStatus::Won);
                    }
                    (_, DisputeStatus::Open | DisputeStatus::Lost) => {
                        if was.is_none() {
                            // First told: its amount taken, the account locked, the card
                            // forgotten, the rule paused.
                            m.balance -= USD;
                            m.locked = true;
                            m.card = None;
                            if m.paused != Some(PausedReason::PaymentDisputed) {
                                m.paused = Some(PausedReason::PaymentDisputed);
                                m.pauses += 1;
                                m.dispute_pauses += 1;
                            }
                        }
                        m.dispute = Some(*status);
                    }
                }
                changed = false;
            }
            AutoStep::Unlock => {
                w.ok(Op::LiftDispute {
                    account: alice(),
                    reason: "checked".into(),
                });
                m.locked = false;
                changed = false;
            }
            AutoStep::Checkout => {
                if m.checkouts == CHECKOUTS {
                    continue;
                }
                m.checkouts += 1;
                let id = format!("t-c{}", m.checkouts);
                let card = format!("pm_card{}", m.checkouts);
                n_events += 1;
                let answer = w.pay(
                    Some(&format!("evt_{n_events}")),
                    PaymentEffect::Paid {
                        top_up_id: pid(&id),
                        amount: Nanos(5 * USD),
                        payment_intent: Some(format!("pi_{id}")),
                        payment_method: Some(card.clone()),
                    },
                );
                prop_assert!(answer.is_ok(), "{:?}", answer);
                m.balance += 5 * USD;
                m.card = Some(card);
            }
            AutoStep::Cancel => {
                let Some(id) = in_flight_before.first().cloned() else {
                    continue;
                };
                let t = &w.s.top_ups[&(alice(), id.clone())];
                let (amount, created) = (t.amount, t.created_at);
                let answer = w.pay(
                    None,
                    PaymentEffect::Cancelled {
                        top_up_id: id.clone(),
                    },
                );
                prop_assert!(answer.is_ok(), "{:?}", answer);
                *m.per_month.get_mut(&month_of(created)).unwrap() -= amount.0;
                prop_assert_eq!(
                    w.s.top_ups[&(alice(), id)].failure.as_deref(),
                    Some("cancelled")
                );
                m.cancelled += 1;
            }
        }
        let a = &w.s.accounts[&alice()];
        let r = a.payment.auto_top_up.as_ref().unwrap();
        let awaiting = auto_top_ups_awaiting(&w);
        // Never two in flight, and the one in flight is the rule's.
        prop_assert!(awaiting.len() <= 1, "{:?} in flight", awaiting);
        prop_assert_eq!(awaiting.first(), r.in_flight.as_ref());
        prop_assert_eq!(r.failures, m.failures);
        prop_assert_eq!(r.paused, m.paused);
        prop_assert_eq!(&a.payment.payment_method, &m.card);
        prop_assert_eq!(a.disputed_since.is_some(), m.locked);
        prop_assert_eq!(
            a.credit.balance.0,
            m.balance,
            "credits come from paid top-ups only"
        );
        w.check_ledger()?;

        let started: Vec<&EventData> = w.s.events[events_before..]
            .iter()
            .map(|e| &e.data)
            .filter(|d| d.event_type() == EventType::TopUpStarted)
            .collect();
        let available = a.credit.available().0;
        if let Some(EventData::TopUpStarted {
            top_up_id,
            amount_nano_usd,
            customer,
            payment_method,
            ..
        }) = started.first()
        {
            prop_assert_eq!(started.len(), 1);
            m.started += 1;
            // Never after money given or taken back through the card, nor after an unlock.
            prop_assert!(
                !matches!(
                    step,
                    AutoStep::Refund { .. } | AutoStep::Dispute(_) | AutoStep::Unlock
                ),
                "{:?} started {}",
                step,
                top_up_id
            );
            // Only when none was in flight (an answer or a cancel clears the one it answers
            // first).
            prop_assert!(
                in_flight_before.is_empty()
                    || matches!(step, AutoStep::Answer(..) | AutoStep::Cancel),
                "started {} with {:?} in flight",
                top_up_id,
                in_flight_before
            );
            prop_assert_eq!(customer.as_str(), "cus_alice");
            prop_assert_eq!(Some(payment_method), m.card.as_ref());
            prop_assert!(m.paused.is_none());
            prop_assert!(!m.locked);
            // The smallest multiple of the amount that covers the shortfall, trimmed to what
            // the month's cap left.
            let month = month_of(w.now);
            let counted = *m.per_month.get(&month).unwrap_or(&0);
            let shortfall = rule.threshold - available;
            prop_assert!(shortfall > 0, "started above the threshold");
            let wanted = (shortfall + rule.amount - 1) / rule.amount * rule.amount;
            let expected = wanted.min(rule.max_per_month - counted).min(settings.max.0);
            prop_assert_eq!(amount_nano_usd.0, expected);
            m.trimmed += u32::from(expected < wanted);
            prop_assert!(expected >= settings.min.0);
            *m.per_month.entry(month).or_default() += expected;
        } else if matches!(
            step,
            AutoStep::Refund { .. } | AutoStep::Dispute(_) | AutoStep::Unlock
        ) && awaiting.is_empty()
            && m.paused.is_none()
            && m.card.is_some()
            && !m.locked
            && r.not_before.is_none_or(|t| w.now >= t)
            && available < rule.threshold
            && rule.max_per_month - *m.per_month.get(&month_of(w.now)).unwrap_or(&0)
                >= settings.min.0
        {
            // A top-up was due, and none followed the money given or taken back.
            m.not_after_returns += 1;
        } else if changed && awaiting.is_empty() && m.paused.is_none() {
            // Nothing started: then nothing was due.
            let waiting = r.not_before.is_some_and(|t| w.now < t);
            let month = month_of(w.now);
            let left = rule.max_per_month - *m.per_month.get(&month).unwrap_or(&0);
            let due = available < rule.threshold && left >= settings.min.0;
            prop_assert!(
                waiting || !due || a.disputed_since.is_some() || m.card.is_none(),
                "available {} below {} with {} of the cap left, and nothing started",
                available,
                rule.threshold,
                left
            );
        }
        // The cap: in no month do the auto top-ups started and not failed pass it.
        for (month, total) in &m.per_month {
            prop_assert!(
                *total <= rule.max_per_month,
                "{}: {} past the cap {}",
                month,
                total,
                rule.max_per_month
            );
        }
        let this_month = *m.per_month.get(&r.month).unwrap_or(&0);
        prop_assert_eq!(r.month_total.0, this_month);
    }
    // Each pause told once, as it began.
    prop_assert_eq!(w.events(EventType::TopUpPaused).len(), m.pauses as usize);
    Ok(m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Charges, holds and the provider's answers in any sequence: exactly one auto top-up is
    /// in flight whenever the available balance is below the threshold (unless the rule waits
    /// after a decline, is paused or the month's cap is spent), for the whole shortfall in
    /// multiples of the amount trimmed to the cap; no month passes its cap over many top-ups
    /// and failures; the failures in a row pause the rule at three, an authentication asked
    /// for at once; credits come only from paid top-ups.
    #[test]
    fn auto_top_up_starts_one_at_a_time_within_the_cap(
        rule in rule(),
        steps in prop::collection::vec(auto_step(), 1..120),
    ) {
        run_auto(&rule, &steps)?;
    }
}

/// The property above reaches what it is about: top-ups started, paid, failed, paused, and
/// trimmed by the cap.
#[test]
fn auto_top_up_sequences_start_pay_fail_and_pause() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut started, mut paused, mut trimmed) = (0, 0, 0);
    let (mut dispute_pauses, mut cancelled, mut not_after_returns) = (0, 0, 0);
    for _ in 0..64 {
        let r = rule().new_tree(&mut runner).unwrap().current();
        let steps = prop::collection::vec(auto_step(), 60..120)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let m = run_auto(&r, &steps).unwrap();
        started += m.started;
        paused += m.pauses;
        trimmed += m.trimmed;
        dispute_pauses += m.dispute_pauses;
        cancelled += m.cancelled;
        not_after_returns += m.not_after_returns;
    }
    assert!(
        dispute_pauses > 10 && cancelled > 10 && not_after_returns > 10,
        "paused for a dispute {dispute_pauses}, cancelled {cancelled}, nothing after a refund, \
         dispute or unlock that left a top-up due {not_after_returns}"
    );
    assert!(
        started > 200 && paused > 20 && trimmed > 20,
        "started {started}, paused {paused}, trimmed {trimmed}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fixed sequences.

fn failed(id: &str, needs_customer: bool) -> PaymentEffect {
    PaymentEffect::Failed {
        top_up_id: pid(id),
        reason: if needs_customer {
            "authentication_required"
        } else {
            "card_declined"
        }
        .into(),
        needs_customer,
    }
}

fn in_flight(w: &World) -> Option<PurchaseId> {
    w.s.accounts[&alice()]
        .payment
        .auto_top_up
        .as_ref()
        .and_then(|r| r.in_flight.clone())
}

/// Many charges below the threshold start one top-up; three declines in a row pause the
/// rule (each after the retry wait), and setting it again resumes it.
#[test]
fn three_failures_in_a_row_pause_the_rule_until_it_is_set_again() {
    let rule = Rule {
        threshold: 2 * USD,
        amount: USD,
        max_per_month: 50 * USD,
    };
    let mut w = auto_world(&rule);
    for _ in 0..10 {
        w.charge(40); // 1.00 USD each
    }
    assert_eq!(
        w.events(EventType::TopUpStarted).len(),
        1,
        "one for all the charges"
    );
    // Started when 1.00 was left: 1.00 short of 2.00.
    assert_eq!(w.s.top_ups[&(alice(), pid("auto-1"))].amount, Nanos(USD));
    for n in 1..=3u32 {
        let id = in_flight(&w).expect("one in flight");
        w.pay(Some(&format!("evt_fail_{n}")), failed(id.as_str(), false))
            .unwrap();
        let r = w.s.accounts[&alice()].payment.auto_top_up.clone().unwrap();
        assert_eq!(r.failures, n);
        assert_eq!(r.in_flight, None);
        // The next settlement below the threshold starts one only after the wait.
        w.charge(1);
        assert_eq!(in_flight(&w), None, "not before retry_after");
        w.now = w.now.plus_ms(settings().retry_after_ms);
        w.charge(1);
        if n < MAX_FAILURES {
            assert!(in_flight(&w).is_some(), "tried again after the wait");
        }
    }
    let r = w.s.accounts[&alice()].payment.auto_top_up.clone().unwrap();
    assert_eq!(r.paused, Some(PausedReason::RepeatedFailures));
    assert_eq!(in_flight(&w), None, "paused: none started");
    assert_eq!(w.events(EventType::TopUpFailed).len(), 3);
    assert_eq!(
        w.events(EventType::TopUpPaused),
        vec![&EventData::TopUpPaused {
            reason: "repeated_failures".into(),
            failures: 3
        }]
    );
    // The month's total no longer counts the failed ones.
    assert_eq!(r.month_total, Nanos::ZERO);
    // Set again: active, and the balance still below the threshold starts one at once.
    let answer = w.ok(rule.op());
    let Outcome::PaymentProfile { profile } = answer else {
        panic!("{answer:?}")
    };
    let r = profile.auto_top_up.unwrap();
    assert_eq!((r.paused, r.failures), (None, 0));
    assert!(
        r.in_flight.is_some(),
        "the answer shows the top-up it started"
    );
}

/// A bank that asks the customer to authenticate pauses the rule at the first failure.
#[test]
fn authentication_required_pauses_at_once() {
    let rule = Rule {
        threshold: 10 * USD,
        amount: 5 * USD,
        max_per_month: 50 * USD,
    };
    let mut w = auto_world(&rule);
    // 5.00 below 10.00 already: the rule's setting started one.
    let id = in_flight(&w).expect("started by the setting");
    assert_eq!(w.s.top_ups[&(alice(), id.clone())].amount, Nanos(5 * USD));
    w.pay(None, failed(id.as_str(), true)).unwrap();
    let r = w.s.accounts[&alice()].payment.auto_top_up.clone().unwrap();
    assert_eq!(r.paused, Some(PausedReason::AuthenticationRequired));
    assert_eq!(r.failures, 1);
    let top_up = &w.s.top_ups[&(alice(), id)];
    assert_eq!(top_up.status, TopUpStatus::Failed);
    assert_eq!(top_up.failure.as_deref(), Some("authentication_required"));
    w.now = w.now.plus_ms(10 * settings().retry_after_ms);
    w.charge(100);
    assert_eq!(in_flight(&w), None, "paused until the customer acts");
    assert_eq!(w.balance(), Nanos(5 * USD - 100 * MP), "nothing credited");
}

/// The cap counts the month's auto top-ups in flight or paid: the last one is trimmed to
/// what it leaves, none starts once less than the smallest top-up is left, and the next
/// UTC month starts afresh.
#[test]
fn the_monthly_cap_trims_and_stops_auto_top_ups_until_the_next_month() {
    let rule = Rule {
        threshold: 3 * USD,
        amount: 2 * USD,
        max_per_month: 5 * USD,
    };
    let mut w = auto_world(&rule);
    w.now = Timestamp(T0 + 3_600_000); // into February
    let mut paid = 0;
    let mut pay_in_flight = |w: &mut World| {
        let id = in_flight(w).expect("one in flight");
        let amount = w.s.top_ups[&(alice(), id.clone())].amount;
        paid += 1;
        w.pay(
            Some(&format!("evt_paid_{paid}")),
            PaymentEffect::Paid {
                top_up_id: id,
                amount,
                payment_intent: None,
                payment_method: None,
            },
        )
        .unwrap();
        amount
    };
    w.charge(120); // 5.00 - 3.00 = 2.00: 1.00 short, one amount of 2.00
    assert_eq!(pay_in_flight(&mut w), Nanos(2 * USD));
    w.charge(200); // 4.00 - 5.00 = -1.00: 4.00 short, 4.00, and 3.00 of the cap left
    assert_eq!(pay_in_flight(&mut w), Nanos(3 * USD), "trimmed to the cap");
    w.charge(200); // 2.00 - 5.00 = -3.00: the cap is spent
    assert_eq!(in_flight(&w), None);
    let r = w.s.accounts[&alice()].payment.auto_top_up.clone().unwrap();
    assert_eq!((r.month_total, r.month_count), (Nanos(5 * USD), 2));
    // March.
    w.now = next_month_start(w.now);
    w.charge(1);
    let id = in_flight(&w).expect("a new month");
    let r = w.s.accounts[&alice()].payment.auto_top_up.clone().unwrap();
    assert_eq!(r.month, month_of(w.now));
    assert_eq!(
        r.month_total,
        Nanos(5 * USD),
        "6.025 short, trimmed to the cap"
    );
    assert_eq!(w.s.top_ups[&(alice(), id)].amount, Nanos(5 * USD));
}

/// Event ids and refund ids are applied once: the same event or refund again is answered as a
/// replay and changes nothing, whatever it is.
#[test]
fn replays_of_event_ids_and_refund_ids_change_nothing() {
    let mut w = World::new();
    w.top_up("t-1", Nanos(10 * USD));
    let effects = [
        PaymentEffect::CheckoutCreated {
            top_up_id: pid("t-1"),
            session: "cs_1".into(),
            url: "https://checkout.test/cs_1".into(),
        },
        PaymentEffect::Paid {
            top_up_id: pid("t-1"),
            amount: Nanos(10 * USD),
            payment_intent: Some("pi_1".into()),
            payment_method: Some("pm_1".into()),
        },
        PaymentEffect::Refunded {
            top_up_id: pid("t-1"),
            refunded_total: Nanos(2 * USD),
        },
        PaymentEffect::Disputed {
            top_up_id: pid("t-1"),
            dispute_id: "dp_1".into(),
            amount: Nanos(3 * USD),
            status: DisputeStatus::Open,
        },
        PaymentEffect::Disputed {
            top_up_id: pid("t-1"),
            dispute_id: "dp_1".into(),
            amount: Nanos(3 * USD),
            status: DisputeStatus::Won,
        },
    ];
    for (n, effect) in effects.iter().enumerate() {
        let id = format!("evt_{n}");
        let first = w.pay(Some(&id), effect.clone()).unwrap();
        assert!(matches!(
            first,
            Outcome::PaymentApplied {
                replayed: false,
                ..
            }
        ));
        let before = fingerprint(&w.s);
        w.now = w.now.plus_ms(1_000);
        let again = w.pay(Some(&id), effect.clone()).unwrap();
        assert!(
            matches!(
                again,
                Outcome::PaymentApplied {
                    replayed: true,
                    top_up: Some(_)
                }
            ),
            "{again:?}"
        );
        assert_eq!(fingerprint(&w.s), before, "{effect:?} again");
    }
    assert_eq!(
        w.s.new_provider_events
            .iter()
            .map(|(_, e)| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["evt_0", "evt_1", "evt_2", "evt_3", "evt_4"]
    );
    // An operator's refund, through the provider (which now says 5.00 refunded in all).
    let refund = || Op::Refund {
        account: alice(),
        purchase_id: pid("t-1"),
        refund_id: pid("rf-1"),
        amount: Nanos(3 * USD),
        provider: Some(ProviderRefund {
            reference: "re_1".into(),
            refunded_total: Nanos(5 * USD),
        }),
    };
    let first = w.ok(refund());
    let before = fingerprint(&w.s);
    let again = w.ok(refund());
    let (
        Outcome::Refunded {
            refund: r1,
            replayed: false,
        },
        Outcome::Refunded {
            refund: r2,
            replayed: true,
        },
    ) = (first, again)
    else {
        panic!("a refund, then its replay")
    };
    assert_eq!(r1, r2);
    assert_eq!(r1.taken, Nanos(3 * USD));
    assert_eq!(fingerprint(&w.s), before);
    // The same id for another refund is a conflict, and changes nothing either.
    let other = w.apply(Op::Refund {
        account: alice(),
        purchase_id: pid("t-1"),
        refund_id: pid("rf-1"),
        amount: Nanos(USD),
        provider: None,
    });
    assert!(matches!(other, Err(Rejection::Conflict(_))), "{other:?}");
    assert_eq!(fingerprint(&w.s), before);
    assert_eq!(w.balance(), Nanos(5 * USD));
}

/// Every refund taken, by the provider's event or the operator, issues a credit note of minus
/// what it took, for the refunded purchase; a refund that takes nothing (its event came first)
/// issues none.
#[test]
fn each_refund_taken_issues_its_credit_note() {
    let mut w = World::new();
    w.top_up("t-1", Nanos(20 * USD));
    w.pay(
        Some("evt_paid"),
        PaymentEffect::Paid {
            top_up_id: pid("t-1"),
            amount: Nanos(20 * USD),
            payment_intent: Some("pi_1".into()),
            payment_method: None,
        },
    )
    .unwrap();
    let refunded = |w: &mut World, event: &str, usd: i64| {
        w.pay(
            Some(event),
            PaymentEffect::Refunded {
                top_up_id: pid("t-1"),
                refunded_total: Nanos(usd * USD),
            },
        )
        .unwrap();
    };
    refunded(&mut w, "evt_r1", 4);
    // The operator refunds 6.00 more at the provider: 10.00 in all.
    let op = |id: &str, total: i64| Op::Refund {
        account: alice(),
        purchase_id: pid("t-1"),
        refund_id: pid(id),
        amount: Nanos(6 * USD),
        provider: Some(ProviderRefund {
            reference: format!("re_{id}"),
            refunded_total: Nanos(total * USD),
        }),
    };
    w.ok(op("rf-1", 10));
    // Its event comes after: nothing more.
    refunded(&mut w, "evt_r2", 10);
    // The provider's event of a next refund first, then the operator's answer: it takes
    // nothing.
    refunded(&mut w, "evt_r3", 12);
    let late = w.ok(op("rf-2", 12));
    let Outcome::Refunded { refund, .. } = late else {
        panic!()
    };
    assert_eq!(refund.taken, Nanos::ZERO);
    assert_eq!(refund.provider_reference.as_deref(), Some("re_rf-2"));
    // A purchase bought by hand: only its own unspent credits.
    w.ok(Op::Purchase {
        account: alice(),
        purchase_id: pid("manual"),
        amount: Nanos(3 * USD),
        paid: true,
        expires_at: None,
    });
    w.ok(Op::Refund {
        account: alice(),
        purchase_id: pid("manual"),
        refund_id: pid("rf-3"),
        amount: Nanos(USD),
        provider: None,
    });
    let notes: Vec<(i64, PurchaseId)> =
        w.s.new_invoices
            .iter()
            .filter(|i| i.kind == InvoiceKind::CreditNote)
            .map(|i| {
                assert_eq!(i.subtotal, i.total);
                (i.total.0 / USD, i.purchase_id.clone().unwrap())
            })
            .collect();
    assert_eq!(
        notes,
        [
            (-4, pid("t-1")),
            (-6, pid("t-1")),
            (-2, pid("t-1")),
            (-1, pid("manual"))
        ]
    );
    assert_eq!(w.events(EventType::PaymentRefunded).len(), 4);
    assert_eq!(w.balance(), Nanos((20 - 12 + 3 - 1) * USD));
    assert_eq!(
        w.s.purchases[&(alice(), pid("t-1"))].refunded,
        Nanos(12 * USD)
    );
    let manual_lot = w.s.accounts[&alice()]
        .lots
        .iter()
        .find(|l| l.purchase_id == pid("manual"))
        .unwrap()
        .remaining;
    assert_eq!(manual_lot, Nanos(2 * USD));
    w.check_ledger().unwrap();
}
