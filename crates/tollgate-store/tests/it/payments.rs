//! Payments through the provider, as stored, on every backend: a batch's top-ups, disputes,
//! provider events, refunds, the account's payment profile and what was taken back of its
//! purchases load back the same through the writer's db transaction (warm and from a store
//! opened anew) and through readers; a paid purchase counts toward the concurrency tier net of
//! refunds and disputes; credit notes take numbers from the shared sequence and name the
//! top-up invoice they correct; the provider's subscription row is nobody's to list, read,
//! delete or redeliver, and its deliveries are claimed with its kind.

use std::collections::{HashMap, HashSet};
use tollgate_core::events::{EventData, EventType, NewEvent};
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::ledger::{LedgerAccount, Transfer, TransferKind};
use tollgate_core::machine::{
    AccountState, BatchState, InvoiceKind, InvoiceStatus, Lot, NewInvoice, PurchaseRecord,
    TransferRecord,
};
use tollgate_core::payments::{
    AutoTopUp, DisputeRecord, DisputeStatus, PaymentProfile, ProviderEvent, RefundRecord,
    TopUpKind, TopUpRecord, TopUpStatus,
};
use tollgate_core::statement::MovementKind;
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{
    ActivityQuery, AttemptRecord, BillingMode, DeliveryNext, DeliveryResult, InvoicesQuery,
    PaymentKeys, PaymentsQuery, PurchasesQuery, Store, WebhookEvents, WebhookKind, WebhookRecord,
    PROVIDER_WEBHOOK_ID,
};

const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const USD: i64 = 1_000_000_000;
const YEAR_MS: i64 = 365 * 86_400_000;

fn acct(name: &str) -> AccountId {
    AccountId::parse(name).unwrap()
}

fn pid(id: &str) -> PurchaseId {
    PurchaseId::parse(id).unwrap()
}

fn create(store: &mut dyn Store, names: &[&str]) {
    store
        .transaction(&mut |tx| {
            for name in names {
                tx.create_account(&acct(name), BillingMode::Prepaid, Timestamp(NOW - 1))?;
            }
            Ok(())
        })
        .unwrap();
}

/// Runs one batch at `now` in one db transaction, as the engine does: `accounts` locked and
/// loaded, what `keys` name loaded, then `change` applied to the state and the state persisted.
/// Returns the state as persisted and its invoices' numbers.
fn batch(
    store: &mut dyn Store,
    now: i64,
    accounts: &[&str],
    keys: &PaymentKeys,
    mut change: impl FnMut(&mut BatchState),
) -> (BatchState, Vec<(i64, i64)>) {
    let mut out = None;
    store
        .transaction(&mut |tx| {
            let mut state = BatchState {
                now: Timestamp(now),
                ..BatchState::default()
            };
            let ids: Vec<AccountId> = accounts.iter().map(|a| acct(a)).collect();
            tx.lock_accounts(&ids, Timestamp(now), &mut state.accounts)?;
            if !keys.is_empty() {
                tx.load_payments(keys, &mut state)?;
            }
            change(&mut state);
            let numbers = tx.persist(&state)?;
            out = Some((state, numbers));
            Ok(())
        })
        .unwrap();
    out.unwrap()
}

/// What the writer's db transaction loads at `now`: the accounts and what `keys` name.
fn load(store: &mut dyn Store, now: i64, accounts: &[&str], keys: &PaymentKeys) -> BatchState {
    batch(store, now, accounts, keys, |_| {}).0
}

fn transfer(
    kind: TransferKind,
    debit: LedgerAccount,
    credit: LedgerAccount,
    amount: i64,
    purchase: &str,
    at: i64,
) -> TransferRecord {
    TransferRecord {
        transfer: Transfer {
            kind,
            debit,
            credit,
            amount: Nanos(amount),
        },
        request_id: None,
        purchase_id: Some(pid(purchase)),
        at: Timestamp(at),
    }
}

/// Moves `delta` into the account's balance, and into (or out of) the lot of `purchase`.
fn move_credits(a: &mut AccountState, purchase: &str, delta: i64) {
    a.credit.balance = Nanos(a.credit.balance.0 + delta);
    let lot = a
        .lots
        .iter_mut()
        .find(|l| l.purchase_id.as_str() == purchase)
        .expect("the purchase's lot");
    lot.remaining = Nanos(lot.remaining.0 + delta);
}

/// A paid purchase of `amount` at `at`, with its lot, transfer and top-up invoice.
fn buy(s: &mut BatchState, account: &str, purchase: &str, amount: i64, at: i64) -> PurchaseRecord {
    let id = acct(account);
    let a = s.accounts.get_mut(&id).expect("the account is loaded");
    a.credit.balance = Nanos(a.credit.balance.0 + amount);
    a.paid_lifetime = Nanos(a.paid_lifetime.0 + amount);
    a.lots.push(Lot {
        purchase_id: pid(purchase),
        remaining: Nanos(amount),
        expires_at: Some(Timestamp(at + YEAR_MS)),
        created_at: Timestamp(at),
        expiry_noticed: false,
    });
    let record = PurchaseRecord {
        account: id.clone(),
        purchase_id: pid(purchase),
        amount: Nanos(amount),
        paid: true,
        created_at: Timestamp(at),
        expires_at: Some(Timestamp(at + YEAR_MS)),
        balance_after: a.credit.balance,
        concurrency_limit_after: 2,
        locked_after: false,
        refunded: Nanos::ZERO,
        disputed: Nanos::ZERO,
    };
    s.dirty_accounts.insert(id.clone());
    s.transfers.push(transfer(
        TransferKind::Purchase,
        LedgerAccount::Purchases,
        LedgerAccount::Customer(id.clone()),
        amount,
        purchase,
        at,
    ));
    s.purchases
        .insert((id.clone(), pid(purchase)), record.clone());
    s.new_purchases.push(record.clone());
    s.new_invoices
        .push(invoice(account, InvoiceKind::TopUp, purchase, amount, at));
    record
}

fn invoice(account: &str, kind: InvoiceKind, purchase: &str, total: i64, at: i64) -> NewInvoice {
    NewInvoice {
        account: acct(account),
        kind,
        status: InvoiceStatus::Paid,
        issued_at: Timestamp(at),
        period_start: Timestamp(at),
        period_end: Timestamp(at),
        subtotal: Nanos(total),
        discount: Nanos::ZERO,
        total: Nanos(total),
        purchase_id: Some(pid(purchase)),
    }
}

fn keys(top_ups: &[&str], purchases: &[&str], events: &[&str], refunds: &[&str]) -> PaymentKeys {
    let acme = |ids: &[&str]| ids.iter().map(|i| (acct("acme"), pid(i))).collect();
    PaymentKeys {
        top_ups: acme(top_ups),
        purchases: acme(purchases),
        events: events.iter().map(|e| e.to_string()).collect(),
        refunds: acme(refunds),
    }
}

#[test]
fn payment_rows_load_back_as_written_by_the_writer_and_by_readers() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        create(&mut *store, &["acme", "other"]);
        let (acme, top1) = (acct("acme"), pid("top-1"));
        let key = (acme.clone(), top1.clone());
        let top_up_1 = TopUpRecord {
            account: acme.clone(),
            top_up_id: top1.clone(),
            kind: TopUpKind::Checkout,
            amount: Nanos(100 * USD),
            status: TopUpStatus::Succeeded,
            created_at: Timestamp(NOW - 60_000),
            updated_at: Timestamp(NOW),
            checkout_session: Some("cs_1".into()),
            checkout_url: Some("https://pay.example/cs_1".into()),
            payment_intent: Some("pi_1".into()),
            provider_refunded: Nanos::ZERO,
            failure: None,
        };
        let top_up_2 = TopUpRecord {
            top_up_id: pid("auto-1"),
            kind: TopUpKind::Auto,
            amount: Nanos(25 * USD),
            status: TopUpStatus::Failed,
            created_at: Timestamp(NOW),
            checkout_session: None,
            checkout_url: None,
            payment_intent: Some("pi_2".into()),
            failure: Some("card_declined".into()),
            ..top_up_1.clone()
        };

        // The checkout top-up is paid: a purchase with its top-up invoice, once per event.
        let mut purchase = None;
        let (_, numbers) = batch(
            &mut *store,
            NOW,
            &["acme", "other"],
            &keys(&["top-1"], &[], &["evt_paid"], &[]),
            |s| {
                assert!(
                    s.top_ups.is_empty() && s.purchases.is_empty(),
                    "{backend:?}"
                );
                assert!(s.provider_events.is_empty() && s.disputes.is_empty());
                purchase = Some(buy(s, "acme", "top-1", 100 * USD, NOW));
                for t in [&top_up_1, &top_up_2] {
                    let k = (t.account.clone(), t.top_up_id.clone());
                    s.top_ups.insert(k.clone(), t.clone());
                    s.dirty_top_ups.insert(k);
                }
                s.provider_events.insert("evt_paid".into());
                s.new_provider_events.push((
                    acme.clone(),
                    ProviderEvent {
                        event_id: "evt_paid".into(),
                        event_type: "checkout.session.completed".into(),
                    },
                ));
                // Another account written by the batch, without payments.
                s.dirty_accounts.insert(acct("other"));
            },
        );
        let purchase = purchase.unwrap();
        let top_up_invoice = numbers[0];

        // An operator refund of 30 USD (the provider's refund), and a dispute of 20 USD
        // opened, which locks the account; an earlier dispute was won and takes nothing.
        let top_up_1 = TopUpRecord {
            provider_refunded: Nanos(30 * USD),
            updated_at: Timestamp(NOW + 1_000),
            ..top_up_1
        };
        let purchase = PurchaseRecord {
            refunded: Nanos(30 * USD),
            disputed: Nanos(20 * USD),
            ..purchase
        };
        let refund = RefundRecord {
            account: acme.clone(),
            refund_id: pid("ref-1"),
            purchase_id: top1.clone(),
            amount: Nanos(30 * USD),
            taken: Nanos(30 * USD),
            provider_reference: Some("re_1".into()),
            created_at: Timestamp(NOW + 1_000),
            balance_after: Nanos(70 * USD),
        };
        let dispute = |id: &str, status, taken: i64, epoch| DisputeRecord {
            account: acme.clone(),
            dispute_id: id.into(),
            top_up_id: top1.clone(),
            amount: Nanos(20 * USD),
            status,
            taken: Nanos(taken),
            locking_epoch: epoch,
            created_at: Timestamp(NOW + 500),
            updated_at: Timestamp(NOW + 1_000),
        };
        let open = dispute("dp_1", DisputeStatus::Open, 20 * USD, Some(2));
        let won = dispute("dp_0", DisputeStatus::Won, 0, None);
        let profile = PaymentProfile {
            customer: Some("cus_1".into()),
            payment_method: Some("pm_1".into()),
            auto_top_up: Some(AutoTopUp {
                enabled: true,
                threshold: Nanos(10 * USD),
                amount: Nanos(25 * USD),
                max_per_month: Nanos(100 * USD),
                paused: None,
                in_flight: None,
                month: 202_601,
                month_total: Nanos::ZERO,
                month_count: 0,
                failures: 1,
                not_before: Some(Timestamp(NOW + 3_600_000)),
            }),
            dispute_locks: 1,
            dispute_epoch: 2,
            auto_seq: 1,
        };
        batch(
            &mut *store,
            NOW + 1_000,
            &["acme"],
            &keys(&["top-1"], &["top-1"], &["evt_dp"], &["ref-1"]),
            |s| {
                // The top-up and its purchase as the first batch left them; nothing else yet.
                let before = TopUpRecord {
                    provider_refunded: Nanos::ZERO,
                    updated_at: Timestamp(NOW),
                    ..top_up_1.clone()
                };
                assert_eq!(s.top_ups, HashMap::from([(key.clone(), before)]));
                let bought = PurchaseRecord {
                    refunded: Nanos::ZERO,
                    disputed: Nanos::ZERO,
                    ..purchase.clone()
                };
                assert_eq!(s.purchases, HashMap::from([(key.clone(), bought)]));
                assert!(s.refunds.is_empty() && s.disputes.is_empty());
                assert!(s.provider_events.is_empty(), "evt_dp is new");
                let a = s.accounts.get_mut(&acme).unwrap();
                move_credits(a, "top-1", -50 * USD);
                a.paid_lifetime = Nanos(50 * USD);
                a.disputed_since = Some(Timestamp(NOW + 1_000));
                a.payment = profile.clone();
                for (kind, to, amount) in [
                    (TransferKind::Refund, LedgerAccount::Refunds, 30 * USD),
                    (TransferKind::Dispute, LedgerAccount::Disputes, 20 * USD),
                ] {
                    s.transfers.push(transfer(
                        kind,
                        LedgerAccount::Customer(acme.clone()),
                        to,
                        amount,
                        "top-1",
                        NOW + 1_000,
                    ));
                }
                s.purchases.insert(key.clone(), purchase.clone());
                s.dirty_purchases.insert(key.clone());
                s.top_ups.insert(key.clone(), top_up_1.clone());
                s.dirty_top_ups.insert(key.clone());
                s.new_invoices.push(invoice(
                    "acme",
                    InvoiceKind::CreditNote,
                    "top-1",
                    -30 * USD,
                    NOW + 1_000,
                ));
                s.refunds
                    .insert((acme.clone(), pid("ref-1")), refund.clone());
                s.new_refunds.push(refund.clone());
                for d in [&open, &won] {
                    let k = (acme.clone(), d.dispute_id.clone());
                    s.disputes.insert(k.clone(), d.clone());
                    s.dirty_disputes.insert(k);
                }
                s.new_provider_events.push((
                    acme.clone(),
                    ProviderEvent {
                        event_id: "evt_dp".into(),
                        event_type: "charge.dispute.created".into(),
                    },
                ));
                s.dirty_accounts.insert(acme.clone());
            },
        );

        // The writer loads every row back as written, from its cache and from a store opened
        // anew; the tier counts the purchase net of what was taken back.
        let everything = keys(
            &["top-1", "auto-1", "top-none"],
            &["top-1", "top-none"],
            &["evt_paid", "evt_dp", "evt_new"],
            &["ref-1", "ref-none"],
        );
        let check = |s: &BatchState| {
            let a = &s.accounts[&acme];
            assert_eq!(a.payment, profile, "{backend:?}");
            assert_eq!(a.disputed_since, Some(Timestamp(NOW + 1_000)));
            assert_eq!(
                (a.paid_28d, a.paid_lifetime),
                (Nanos(50 * USD), Nanos(50 * USD))
            );
            let other = &s.accounts[&acct("other")];
            assert_eq!(
                (&other.payment, other.paid_28d),
                (&PaymentProfile::default(), Nanos(0))
            );
            assert_eq!(
                s.top_ups,
                HashMap::from([
                    (key.clone(), top_up_1.clone()),
                    ((acme.clone(), pid("auto-1")), top_up_2.clone()),
                ])
            );
            assert_eq!(
                s.purchases,
                HashMap::from([(key.clone(), purchase.clone())])
            );
            assert_eq!(
                s.disputes,
                HashMap::from([
                    ((acme.clone(), "dp_1".to_string()), open.clone()),
                    ((acme.clone(), "dp_0".to_string()), won.clone()),
                ])
            );
            assert_eq!(
                s.provider_events,
                HashSet::from(["evt_paid".to_string(), "evt_dp".to_string()])
            );
            assert_eq!(
                s.refunds,
                HashMap::from([((acme.clone(), pid("ref-1")), refund.clone())])
            );
        };
        check(&load(
            &mut *store,
            NOW + 2_000,
            &["acme", "other"],
            &everything,
        ));
        drop(store);
        let mut store = db.open().unwrap();
        check(&load(
            &mut *store,
            NOW + 2_000,
            &["acme", "other"],
            &everything,
        ));

        // Readers see the same.
        let mut r = (store.reader_factory())().unwrap();
        assert_eq!(r.top_up(&acme, &top1).unwrap(), Some(top_up_1.clone()));
        assert_eq!(r.top_up(&acme, &pid("top-none")).unwrap(), None);
        assert_eq!(r.top_up(&acct("other"), &top1).unwrap(), None);
        assert_eq!(
            r.top_up_by_payment_intent("pi_2").unwrap(),
            Some(top_up_2.clone())
        );
        assert_eq!(r.top_up_by_payment_intent("pi_9").unwrap(), None);
        assert_eq!(
            r.refund(&acme, &pid("ref-1")).unwrap(),
            Some(refund.clone())
        );
        assert_eq!(r.refund(&acme, &top1).unwrap(), None);
        assert_eq!(r.purchase(&acme, &top1).unwrap(), Some(purchase.clone()));
        let row = r.account(&acme, Timestamp(NOW + 2_000)).unwrap().unwrap();
        assert_eq!(
            (&row.state.payment, row.state.paid_28d),
            (&profile, Nanos(50 * USD))
        );
        // The payment history: the purchase once (its credit note names it too), with what
        // was taken back, its open dispute and the provider's payment.
        let payments = r
            .payments(&PaymentsQuery {
                account: acme.clone(),
                before: None,
                limit: 10,
            })
            .unwrap();
        assert_eq!(payments.len(), 1, "{backend:?}: {payments:?}");
        let p = &payments[0];
        assert_eq!(p.invoice, Some(top_up_invoice));
        assert_eq!((p.refunded, p.disputed), (Nanos(30 * USD), Nanos(20 * USD)));
        assert!(p.dispute_open);
        assert_eq!(p.provider_reference.as_deref(), Some("pi_1"));
        // The credit note, numbered after the top-up invoice, corrects it.
        let invoices = r
            .invoices(&InvoicesQuery {
                account: Some(acme.clone()),
                limit: 10,
                ..InvoicesQuery::default()
            })
            .unwrap();
        let seen: Vec<_> = invoices
            .iter()
            .map(|i| (i.kind, (i.year, i.seq), i.total, i.corrects))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    InvoiceKind::CreditNote,
                    (top_up_invoice.0, top_up_invoice.1 + 1),
                    Nanos(-30 * USD),
                    Some(top_up_invoice)
                ),
                (InvoiceKind::TopUp, top_up_invoice, Nanos(100 * USD), None),
            ]
        );
        // Credit activity names the refunded and disputed purchase.
        let activity = r
            .credit_activity(&ActivityQuery {
                account: acme.clone(),
                start: Timestamp(i64::MIN),
                end: Timestamp(i64::MAX),
                before: None,
                limit: 10,
                now: Timestamp(NOW + 2_000),
            })
            .unwrap();
        let moved: Vec<_> = activity
            .iter()
            .map(|a| {
                (
                    a.kind,
                    a.amount.0 / USD,
                    a.reference.as_str(),
                    a.balance_after.0 / USD,
                )
            })
            .collect();
        assert_eq!(
            moved,
            [
                (MovementKind::Dispute, -20, "top-1", 50),
                (MovementKind::Refund, -30, "top-1", 70),
                (MovementKind::Purchase, 100, "top-1", 100),
            ]
        );
        let rec = r.reconcile().unwrap();
        assert!(rec.is_clean(), "{backend:?}: {}", rec.summary());

        // The dispute is won: its amount given back, the lock lifted.
        let open_won = DisputeRecord {
            status: DisputeStatus::Won,
            taken: Nanos::ZERO,
            locking_epoch: None,
            updated_at: Timestamp(NOW + 3_000),
            ..open.clone()
        };
        let unlocked = PaymentProfile {
            dispute_locks: 0,
            ..profile.clone()
        };
        batch(
            &mut *store,
            NOW + 3_000,
            &["acme"],
            &keys(&["top-1"], &[], &["evt_won"], &[]),
            |s| {
                assert_eq!(s.disputes.len(), 2, "every dispute of the top-up");
                let a = s.accounts.get_mut(&acme).unwrap();
                move_credits(a, "top-1", 20 * USD);
                a.paid_lifetime = Nanos(70 * USD);
                a.disputed_since = None;
                a.payment = unlocked.clone();
                s.transfers.push(transfer(
                    TransferKind::DisputeReversal,
                    LedgerAccount::Disputes,
                    LedgerAccount::Customer(acme.clone()),
                    20 * USD,
                    "top-1",
                    NOW + 3_000,
                ));
                let p = s.purchases.get_mut(&key).unwrap();
                p.disputed = Nanos::ZERO;
                s.dirty_purchases.insert(key.clone());
                let k = (acme.clone(), "dp_1".to_string());
                s.disputes.insert(k.clone(), open_won.clone());
                s.dirty_disputes.insert(k);
                s.dirty_accounts.insert(acme.clone());
            },
        );
        let s = load(
            &mut *store,
            NOW + 4_000,
            &["acme"],
            &keys(&["top-1"], &[], &[], &[]),
        );
        assert_eq!(s.accounts[&acme].paid_28d, Nanos(70 * USD), "{backend:?}");
        assert_eq!(s.accounts[&acme].payment, unlocked);
        assert_eq!(s.disputes[&(acme.clone(), "dp_1".to_string())], open_won);
        let p = &r
            .payments(&PaymentsQuery {
                account: acme.clone(),
                before: None,
                limit: 10,
            })
            .unwrap()[0];
        assert_eq!(
            (p.refunded, p.disputed, p.dispute_open),
            (Nanos(30 * USD), Nanos(0), false)
        );
        let rec = r.reconcile().unwrap();
        assert!(rec.is_clean(), "{backend:?}: {}", rec.summary());
        // 28 days after the purchase, it counts no more.
        let later = NOW + 28 * 86_400_000 + 1;
        let s = load(&mut *store, later, &["acme"], &PaymentKeys::default());
        assert_eq!(s.accounts[&acme].paid_28d, Nanos(0));
    }
}

/// A purchase whose payment was refunded or disputed in the batch that made it (an event told
/// before the payment) is stored with what was taken; a purchase taken back of by a later
/// batch in which its lot is also spent keeps both changes; the reconciliation finds a
/// purchase whose amounts the transfers do not explain.
#[test]
fn what_is_taken_back_of_a_purchase_is_kept_with_its_lot() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        create(&mut *store, &["acme"]);
        let acme = acct("acme");
        let key = (acme.clone(), pid("top-1"));
        // Paid, and refunded 10 USD at once (the refund was told first).
        batch(&mut *store, NOW, &["acme"], &PaymentKeys::default(), |s| {
            buy(s, "acme", "top-1", 100 * USD, NOW);
            move_credits(s.accounts.get_mut(&acme).unwrap(), "top-1", -10 * USD);
            s.transfers.push(transfer(
                TransferKind::Refund,
                LedgerAccount::Customer(acme.clone()),
                LedgerAccount::Refunds,
                10 * USD,
                "top-1",
                NOW,
            ));
            s.purchases.get_mut(&key).unwrap().refunded = Nanos(10 * USD);
        });
        let mut r = (store.reader_factory())().unwrap();
        let p = r.purchase(&acme, &pid("top-1")).unwrap().unwrap();
        assert_eq!(
            (p.refunded, p.disputed),
            (Nanos(10 * USD), Nanos(0)),
            "{backend:?}"
        );
        assert!(r.reconcile().unwrap().is_clean());
        let s = load(&mut *store, NOW + 1, &["acme"], &PaymentKeys::default());
        assert_eq!(s.accounts[&acme].paid_28d, Nanos(90 * USD), "{backend:?}");
        assert_eq!(s.accounts[&acme].lots[0].remaining, Nanos(90 * USD));

        // A dispute takes 5 USD from the lot in the batch that also spends 1 USD of it.
        batch(
            &mut *store,
            NOW + 1_000,
            &["acme"],
            &keys(&[], &["top-1"], &[], &[]),
            |s| {
                let a = s.accounts.get_mut(&acme).unwrap();
                move_credits(a, "top-1", -6 * USD);
                s.dirty_accounts.insert(acme.clone());
                s.transfers.push(transfer(
                    TransferKind::Dispute,
                    LedgerAccount::Customer(acme.clone()),
                    LedgerAccount::Disputes,
                    5 * USD,
                    "top-1",
                    NOW + 1_000,
                ));
                s.transfers.push(TransferRecord {
                    purchase_id: None,
                    ..transfer(
                        TransferKind::Charge,
                        LedgerAccount::Customer(acme.clone()),
                        LedgerAccount::Revenue,
                        USD,
                        "top-1",
                        NOW + 1_000,
                    )
                });
                s.purchases.get_mut(&key).unwrap().disputed = Nanos(5 * USD);
                s.dirty_purchases.insert(key.clone());
            },
        );
        let p = r.purchase(&acme, &pid("top-1")).unwrap().unwrap();
        assert_eq!((p.refunded, p.disputed), (Nanos(10 * USD), Nanos(5 * USD)));
        let s = load(&mut *store, NOW + 2_000, &["acme"], &PaymentKeys::default());
        assert_eq!(
            s.accounts[&acme].lots[0].remaining,
            Nanos(84 * USD),
            "{backend:?}"
        );
        assert_eq!(s.accounts[&acme].paid_28d, Nanos(85 * USD));
        let rec = r.reconcile().unwrap();
        // (The charge has no line item, so revenue and billed differ: not what this checks.)
        assert_eq!(rec.payment_mismatches, vec![], "{backend:?}");
        assert_eq!(
            (rec.balance_mismatches.len(), rec.lot_mismatches.len()),
            (0, 0)
        );

        // A purchase whose taken amounts no transfer explains is found.
        batch(
            &mut *store,
            NOW + 3_000,
            &["acme"],
            &keys(&[], &["top-1"], &[], &[]),
            |s| {
                s.purchases.get_mut(&key).unwrap().refunded = Nanos(11 * USD);
                s.dirty_purchases.insert(key.clone());
            },
        );
        assert_eq!(
            r.reconcile().unwrap().payment_mismatches,
            vec![key.clone()],
            "{backend:?}"
        );
    }
}

/// The account's payment profile is written when a batch changes it, and only then: a batch
/// that writes the account for something else keeps it, and one that puts it back to the
/// default (a won dispute's lock lifted on an account that has nothing else) stores that.
#[test]
fn a_payment_profile_is_stored_with_its_account_when_it_changes() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        create(&mut *store, &["bob"]);
        let bob = acct("bob");
        let locked = PaymentProfile {
            dispute_locks: 1,
            ..PaymentProfile::default()
        };
        let set = |store: &mut dyn Store, now: i64, profile: Option<&PaymentProfile>| {
            batch(store, now, &["bob"], &PaymentKeys::default(), |s| {
                let a = s.accounts.get_mut(&bob).unwrap();
                a.month_subtotal = Nanos(now - NOW);
                if let Some(p) = profile {
                    a.payment = p.clone();
                }
                s.dirty_accounts.insert(bob.clone());
            });
        };
        let seen = |store: &mut Box<dyn Store>, now: i64| {
            let warm = load(&mut **store, now, &["bob"], &PaymentKeys::default());
            let mut r = (store.reader_factory())().unwrap();
            let read = r.account(&bob, Timestamp(now)).unwrap().unwrap();
            assert_eq!(warm.accounts[&bob].payment, read.state.payment);
            read.state.payment
        };
        set(&mut *store, NOW, Some(&locked));
        assert_eq!(seen(&mut store, NOW), locked, "{backend:?}");
        // Written for something else: kept.
        set(&mut *store, NOW + 1, None);
        assert_eq!(seen(&mut store, NOW + 1), locked, "{backend:?}");
        drop(store);
        let mut store = db.open().unwrap();
        assert_eq!(seen(&mut store, NOW + 2), locked, "{backend:?}");
        // Back to the default.
        set(&mut *store, NOW + 3, Some(&PaymentProfile::default()));
        assert_eq!(
            seen(&mut store, NOW + 3),
            PaymentProfile::default(),
            "{backend:?}"
        );
        drop(store);
        let mut store = db.open().unwrap();
        assert_eq!(
            seen(&mut store, NOW + 4),
            PaymentProfile::default(),
            "{backend:?}"
        );
    }
}

/// Credit notes take their numbers from the sequence every invoice shares, in issue order,
/// and each names the top-up invoice of its purchase: one issued in the same batch, in an
/// earlier batch, or in an earlier year (none for a purchase without one). The payment history
/// and the purchases report still show each purchase once, with its top-up invoice.
#[test]
fn credit_notes_are_numbered_in_the_shared_sequence_and_correct_their_top_up_invoice() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        create(&mut *store, &["acme"]);
        let none = PaymentKeys::default();
        let credit_note = |s: &mut BatchState, purchase: &str, total: i64| {
            s.new_invoices.push(invoice(
                "acme",
                InvoiceKind::CreditNote,
                purchase,
                -total,
                s.now.0,
            ));
        };
        let (_, a) = batch(&mut *store, NOW, &["acme"], &none, |s| {
            buy(s, "acme", "p-a", 10 * USD, NOW);
        });
        let (_, b) = batch(&mut *store, NOW + 1_000, &["acme"], &none, |s| {
            credit_note(s, "p-a", USD);
            buy(s, "acme", "p-b", 20 * USD, NOW + 1_000);
            credit_note(s, "p-b", 2 * USD);
            credit_note(s, "p-unknown", 3 * USD);
        });
        let next_year = NOW + YEAR_MS + 1;
        let (_, c) = batch(&mut *store, next_year, &["acme"], &none, |s| {
            credit_note(s, "p-b", 4 * USD);
        });
        assert_eq!(a, [(2026, 1)], "{backend:?}");
        assert_eq!(
            b,
            [(2026, 2), (2026, 3), (2026, 4), (2026, 5)],
            "{backend:?}"
        );
        assert_eq!(c, [(2027, 1)], "{backend:?}");
        let mut r = (store.reader_factory())().unwrap();
        let corrects = |r: &mut Box<dyn tollgate_store::Reader>, number: (i64, i64)| {
            let i = r.invoice(number.0, number.1).unwrap().unwrap();
            (i.kind, i.corrects)
        };
        assert_eq!(corrects(&mut r, (2026, 1)), (InvoiceKind::TopUp, None));
        for (note, top_up) in [
            ((2026, 2), Some((2026, 1))),
            ((2026, 4), Some((2026, 3))),
            ((2026, 5), None),
            ((2027, 1), Some((2026, 3))),
        ] {
            assert_eq!(
                corrects(&mut r, note),
                (InvoiceKind::CreditNote, top_up),
                "{backend:?} {note:?}"
            );
        }
        let payments = r
            .payments(&PaymentsQuery {
                account: acct("acme"),
                before: None,
                limit: 10,
            })
            .unwrap();
        let seen: Vec<_> = payments
            .iter()
            .map(|p| (p.purchase_id.as_str().to_string(), p.invoice))
            .collect();
        assert_eq!(
            seen,
            [
                ("p-b".to_string(), Some((2026, 3))),
                ("p-a".to_string(), Some((2026, 1)))
            ],
            "{backend:?}"
        );
        let purchases = r
            .purchases(&PurchasesQuery {
                account: acct("acme"),
                from: Timestamp(0),
                to: Timestamp(i64::MAX),
                after: None,
                limit: 10,
            })
            .unwrap();
        let numbers: Vec<_> = purchases
            .iter()
            .map(|p| p.invoice_number.clone().unwrap_or_default())
            .collect();
        assert_eq!(numbers, ["TG-2026-000001", "TG-2026-000003"], "{backend:?}");
    }
}

/// The provider's subscription row: created once, never listed, read, deleted or redelivered
/// to by the operator, subscribed to `top_up.started` only; its deliveries are claimed and
/// recorded like any other, and say their kind (an operator's webhook's say theirs).
#[test]
fn the_provider_webhook_is_not_the_operators_and_its_deliveries_say_their_kind() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        create(&mut *store, &["acme"]);
        let mut inserted = Vec::new();
        store
            .transaction(&mut |tx| {
                inserted = vec![
                    tx.ensure_provider_webhook(Timestamp(NOW))?,
                    tx.ensure_provider_webhook(Timestamp(NOW + 1))?,
                ];
                tx.insert_webhook(&WebhookRecord {
                    webhook_id: "wh_ops".into(),
                    url: "http://127.0.0.1:9/ops".into(),
                    events: WebhookEvents::All,
                    description: None,
                    secret: "whsec_ops".into(),
                    created_at: Timestamp(NOW),
                    deleted_at: None,
                })
            })
            .unwrap();
        assert_eq!(inserted, [true, false], "{backend:?}");
        let mut again = true;
        store
            .transaction(&mut |tx| {
                again = tx.ensure_provider_webhook(Timestamp(NOW + 2))?;
                Ok(())
            })
            .unwrap();
        assert!(!again, "{backend:?}: inserted once");
        let mut r = (store.reader_factory())().unwrap();
        let listed: Vec<String> = r
            .webhooks()
            .unwrap()
            .into_iter()
            .map(|w| w.webhook_id)
            .collect();
        assert_eq!(listed, ["wh_ops"], "{backend:?}");
        assert!(r.webhook(PROVIDER_WEBHOOK_ID).unwrap().is_none());
        assert!(r.webhook("wh_ops").unwrap().is_some());

        // An auto top-up starts, and the balance runs low: the provider is sent the start only
        // (the operator's webhook both, the second once the first was tried).
        let started = EventData::TopUpStarted {
            top_up_id: pid("auto-1"),
            kind: "auto".into(),
            amount_nano_usd: Nanos(25 * USD),
            customer: "cus_1".into(),
            payment_method: "pm_1".into(),
        };
        let low = EventData::BalanceLow {
            balance_nano_usd: Nanos(USD),
            low_balance_nano_usd: Nanos(5 * USD),
        };
        batch(
            &mut *store,
            NOW + 10,
            &["acme"],
            &PaymentKeys::default(),
            |s| {
                for data in [started.clone(), low.clone()] {
                    s.events.push(NewEvent {
                        account: acct("acme"),
                        at: Timestamp(NOW + 10),
                        data,
                    });
                }
            },
        );
        let mut claimed = Vec::new();
        store
            .transaction(&mut |tx| {
                claimed =
                    tx.claim_deliveries(Timestamp(NOW + 20), Timestamp(NOW + 60_000), 10, 10)?;
                Ok(())
            })
            .unwrap();
        let mut seen: Vec<_> = claimed
            .iter()
            .map(|c| (c.webhook_id.as_str(), c.kind, c.event.data.event_type()))
            .collect();
        seen.sort_by_key(|(w, _, t)| (w.to_string(), t.as_str()));
        assert_eq!(
            seen,
            [
                ("wh_ops", WebhookKind::Http, EventType::TopUpStarted),
                (
                    PROVIDER_WEBHOOK_ID,
                    WebhookKind::Provider,
                    EventType::TopUpStarted
                ),
            ],
            "{backend:?}"
        );
        let provider = claimed
            .iter()
            .find(|c| c.kind == WebhookKind::Provider)
            .unwrap();
        assert_eq!(provider.event.data, started);
        assert!(provider.url.is_empty() && provider.secret.is_empty());

        // The operator can neither delete it nor send its delivery again.
        let (mut deleted, mut redelivered) = (true, true);
        store
            .transaction(&mut |tx| {
                deleted = tx.delete_webhook(PROVIDER_WEBHOOK_ID, Timestamp(NOW + 30))?;
                redelivered =
                    tx.redeliver(PROVIDER_WEBHOOK_ID, provider.event.seq, Timestamp(NOW + 30))?;
                Ok(())
            })
            .unwrap();
        assert!(!deleted && !redelivered, "{backend:?}");

        // Its attempt is recorded under its lease, as any delivery's.
        let mut recorded = 0;
        store
            .transaction(&mut |tx| {
                recorded = tx.record_deliveries(&[DeliveryResult {
                    webhook_id: provider.webhook_id.clone(),
                    event_seq: provider.event.seq,
                    lease_until: provider.lease_until,
                    queued_at: provider.queued_at,
                    attempt: AttemptRecord {
                        n: 0,
                        at: Timestamp(NOW + 40),
                        status_code: Some(200),
                        error: None,
                        duration_ms: 120,
                    },
                    next: DeliveryNext::Delivered,
                }])?;
                Ok(())
            })
            .unwrap();
        assert_eq!(recorded, 1, "{backend:?}");
        let (delivery, attempts) = r
            .webhook_delivery(PROVIDER_WEBHOOK_ID, provider.event.seq)
            .unwrap()
            .unwrap();
        assert_eq!(
            (delivery.status, attempts.len()),
            (tollgate_store::DeliveryStatus::Delivered, 1)
        );
    }
}
