//! Usage invoices: an invoice-billed account's charges accrue to its open billing period, which
//! closes at each calendar month's start (the first batch that touches the account in a later
//! month, or the month's close for every account) or on demand; each close with charges issues
//! one open usage invoice whose lines (per endpoint, unit, price, discount and charge month)
//! add up to it, and whose total is what the ledger charged. On every store at hand.

use crate::common::{account, catalog_and_account, event, invoices};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{InvoiceKind, InvoiceStatus, Op, Outcome};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, Engine, EngineError};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{BillingEventsQuery, BillingMode, InvoiceRecord};

/// 2026-06-01T00:00:00Z.
const JUN: i64 = 1_780_272_000_000;
const DAY: i64 = 86_400_000;
const JUL: i64 = JUN + 30 * DAY;
const AUG: i64 = JUL + 31 * DAY;
const SEP: i64 = AUG + 31 * DAY;
const OCT: i64 = SEP + 30 * DAY;
/// One thousand characters at 0.00005 USD each: 0.05 USD.
const THOUSAND: i64 = 50_000_000;

fn engine(db: &TestDb, clock: &Arc<AtomicI64>) -> Engine {
    let clock = clock.clone();
    Engine::start(
        db.open().unwrap(),
        Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))),
    )
    .unwrap()
}

async fn run(engine: &Engine, op: Op) -> Outcome {
    engine.execute(op).await.unwrap().unwrap()
}

/// Every invoice, oldest first.
async fn invoice(engine: &Engine, (year, seq): (i64, i64)) -> InvoiceRecord {
    engine
        .read(move |r| r.invoice(year, seq))
        .await
        .unwrap()
        .unwrap()
}

/// The lines of an invoice add up to its subtotal, discount and total.
fn assert_lines_add_up(i: &InvoiceRecord) {
    let sum = |f: fn(&tollgate_store::InvoiceLineRecord) -> Nanos| {
        Nanos(i.lines.iter().map(|l| f(l).0).sum())
    };
    assert_eq!(sum(|l| l.totals.subtotal), i.subtotal, "{i:?}");
    assert_eq!(sum(|l| l.totals.discount), i.discount, "{i:?}");
    assert_eq!(sum(|l| l.totals.total), i.total, "{i:?}");
    assert_eq!(i.subtotal.0 - i.discount.0, i.total.0);
}

async fn reconciled(engine: &Engine, on: &str) {
    let rec = engine.read(|r| r.reconcile()).await.unwrap();
    assert!(rec.is_clean(), "on {on}: {}", rec.summary());
}

/// The account's billed line items whose usage time is in `[from, to)`: their total.
async fn billed(engine: &Engine, who: &AccountId, from: i64, to: i64) -> Nanos {
    let q = BillingEventsQuery {
        account: who.clone(),
        from: Timestamp(from),
        to: Timestamp(to),
        endpoints: vec![],
        request_ids: vec![],
        api_keys: vec![],
        after: None,
        newest_first: false,
        limit: 100_000,
    };
    let items = engine.read(move |r| r.billing_events(&q)).await.unwrap();
    Nanos(items.iter().map(|i| i.charge.total_nanos.0).sum())
}

async fn balance(engine: &Engine, who: &AccountId, now: i64) -> Nanos {
    let who = who.clone();
    engine
        .read(move |r| r.account(&who, Timestamp(now)))
        .await
        .unwrap()
        .unwrap()
        .state
        .credit
        .balance
}

#[tokio::test]
async fn a_month_of_charges_is_one_invoice_equal_to_the_ledger_and_its_billing_events() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(JUN + 3 * DAY));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Invoice).await;
        // Three days with usage in June: 1 + 2 thousand on the 4th, 4 on the 10th, 8 on the 30th.
        run(&engine, event("e1", JUN + 3 * DAY, 1)).await;
        run(&engine, event("e2", JUN + 3 * DAY + 5, 2)).await;
        clock.store(JUN + 9 * DAY, Ordering::SeqCst);
        run(&engine, event("e3", JUN + 9 * DAY, 4)).await;
        clock.store(JUL - 1000, Ordering::SeqCst);
        run(&engine, event("e4", JUL - 1000, 8)).await;
        // Nothing is issued before the month ends.
        assert!(invoices(&engine).await.is_empty(), "on {on}");
        assert!(engine.close_elapsed_months().await.unwrap().is_empty());

        clock.store(JUL + 60_000, Ordering::SeqCst);
        let issued = engine.close_elapsed_months().await.unwrap();
        assert_eq!(issued, vec![(2026, 1)], "on {on}");
        let inv = invoice(&engine, issued[0]).await;
        assert_eq!(inv.kind, InvoiceKind::Usage);
        assert_eq!(inv.status, InvoiceStatus::Open);
        assert_eq!(inv.account, account());
        assert_eq!(
            (inv.period_start, inv.period_end),
            (Timestamp(JUN), Timestamp(JUL)),
            "on {on}: the period is the calendar month the charges were recorded in"
        );
        assert_eq!(inv.total, Nanos(15 * THOUSAND), "on {on}");
        assert_eq!(inv.discount, Nanos::ZERO);
        // One endpoint, unit, price and charge month: one line of 15,000 characters, used from
        // the 4th to the 30th (charge period: the start of the 4th to the start of July 1st).
        assert_eq!(inv.lines.len(), 1, "on {on}: {:?}", inv.lines);
        let line = &inv.lines[0];
        assert_eq!(line.charge_month, 202606);
        assert_eq!(line.totals.quantity, 15_000.into(), "on {on}");
        assert_eq!(line.totals.requests, 4);
        assert_eq!(
            line.charge_period(),
            (Timestamp(JUN + 3 * DAY), Timestamp(JUL))
        );
        assert_lines_add_up(&inv);
        // The invoice is what the ledger charged and what the billing events show.
        assert_eq!(
            balance(&engine, &account(), JUL).await,
            Nanos(-inv.total.0),
            "on {on}"
        );
        assert_eq!(billed(&engine, &account(), JUN, JUL).await, inv.total);
        // The next month's close finds nothing more.
        assert!(engine.close_elapsed_months().await.unwrap().is_empty());
        assert!(engine
            .close_invoice_periods(None, None)
            .await
            .unwrap()
            .is_empty());
        reconciled(&engine, on).await;
    }
}

#[tokio::test]
async fn late_usage_lands_on_the_next_invoice_with_its_own_charge_period() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(JUN + 14 * DAY));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Invoice).await;
        run(&engine, event("e1", JUN + 14 * DAY, 3)).await;
        // July: the first operation of the account in the new month closes June first.
        clock.store(JUL + 2 * DAY, Ordering::SeqCst);
        run(&engine, event("e2", JUL + 2 * DAY, 5)).await;
        let june = invoices(&engine).await;
        assert_eq!(june.len(), 1, "on {on}");
        let june = june.into_iter().next().unwrap();
        assert_eq!(june.total, Nanos(3 * THOUSAND));
        // Usage of June 20th reported late, in July: recorded in July's period.
        run(&engine, event("late", JUN + 19 * DAY + 7, 7)).await;
        clock.store(JUL + 3 * DAY, Ordering::SeqCst);
        let issued = engine
            .close_invoice_periods(Some(account()), None)
            .await
            .unwrap();
        assert_eq!(issued, vec![(2026, 2)], "on {on}");
        let july = invoice(&engine, issued[0]).await;
        assert_eq!(
            (july.period_start, july.period_end),
            (Timestamp(JUL), Timestamp(JUL + 3 * DAY)),
            "on {on}: the period ends at the close"
        );
        assert_eq!(july.total, Nanos(12 * THOUSAND));
        // Two lines: the late June usage (charge month June, its own day) and July's.
        let lines: Vec<_> = july
            .lines
            .iter()
            .map(|l| (l.charge_month, l.totals.total, l.charge_period()))
            .collect();
        assert_eq!(
            lines,
            vec![
                (
                    202606,
                    Nanos(7 * THOUSAND),
                    (Timestamp(JUN + 19 * DAY), Timestamp(JUN + 20 * DAY))
                ),
                (
                    202607,
                    Nanos(5 * THOUSAND),
                    (Timestamp(JUL + 2 * DAY), Timestamp(JUL + 3 * DAY))
                ),
            ],
            "on {on}"
        );
        assert_lines_add_up(&july);
        // June's invoice did not change.
        assert_eq!(
            invoice(&engine, (june.year, june.seq)).await,
            june,
            "on {on}"
        );
        // The usage invoices together are every charge the ledger posted.
        assert_eq!(
            balance(&engine, &account(), JUL + 3 * DAY).await,
            Nanos(-(june.total.0 + july.total.0))
        );
        reconciled(&engine, on).await;
    }
}

#[tokio::test]
async fn missed_months_are_caught_up_one_invoice_per_month_with_charges() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(JUN + DAY));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Invoice).await;
        let beta = AccountId::parse("beta").unwrap();
        engine
            .admin(AdminCmd::CreateAccount {
                username: beta.clone(),
                billing: BillingMode::Invoice,
            })
            .await
            .unwrap();
        let prepaid = AccountId::parse("prepaid").unwrap();
        engine
            .admin(AdminCmd::CreateAccount {
                username: prepaid.clone(),
                billing: BillingMode::Prepaid,
            })
            .await
            .unwrap();
        run(
            &engine,
            Op::Purchase {
                account: prepaid.clone(),
                purchase_id: PurchaseId::parse("p1").unwrap(),
                amount: Nanos(10_000_000_000),
                paid: true,
                expires_at: None,
            },
        )
        .await;
        run(&engine, event("j1", JUN + DAY, 1)).await;
        let mut beta_event = event("b1", JUN + DAY, 2);
        if let Op::UsageEvent(e) = &mut beta_event {
            e.account = beta.clone();
        }
        run(&engine, beta_event).await;
        let mut prepaid_event = event("p1", JUN + DAY, 4);
        if let Op::UsageEvent(e) = &mut prepaid_event {
            e.account = prepaid.clone();
        }
        run(&engine, prepaid_event).await;
        // acme uses it again in July (June closes lazily then); the server is then down until
        // October: August and September had no charges.
        clock.store(JUL + DAY, Ordering::SeqCst);
        run(&engine, event("j2", JUL + DAY, 6)).await;
        clock.store(OCT + 5 * DAY, Ordering::SeqCst);
        let issued = engine.close_elapsed_months().await.unwrap();
        let all = invoices(&engine).await;
        let usage: Vec<_> = all
            .iter()
            .filter(|i| i.kind == InvoiceKind::Usage)
            .map(|i| {
                (
                    i.account.to_string(),
                    i.period_start.0,
                    i.period_end.0,
                    i.total.0,
                )
            })
            .collect();
        assert_eq!(
            usage,
            vec![
                // Issued when acme's July event arrived.
                ("acme".to_string(), JUN, JUL, THOUSAND),
                // Issued by the catch-up, in account order, each ending with its own month.
                ("acme".to_string(), JUL, AUG, 6 * THOUSAND),
                ("beta".to_string(), JUN, JUL, 2 * THOUSAND),
            ],
            "on {on}"
        );
        assert_eq!(issued.len(), 2, "on {on}");
        // The prepaid account's charges are paid from its credits: no usage invoice.
        assert!(all
            .iter()
            .all(|i| i.account != prepaid || i.kind == InvoiceKind::TopUp));
        for i in all.iter().filter(|i| i.kind == InvoiceKind::Usage) {
            assert_lines_add_up(i);
        }
        // Numbers gapless across top-ups and usage invoices.
        let numbers: Vec<_> = all.iter().map(|i| i.seq).collect();
        assert_eq!(numbers, (1..=all.len() as i64).collect::<Vec<_>>());
        // Closing again issues nothing.
        assert!(engine.close_elapsed_months().await.unwrap().is_empty());
        assert!(engine
            .close_invoice_periods(None, None)
            .await
            .unwrap()
            .is_empty());
        reconciled(&engine, on).await;
    }
}

#[tokio::test]
async fn a_close_until_a_past_time_takes_only_periods_charged_before_it_and_never_the_future() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(JUN + DAY));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Invoice).await;
        run(&engine, event("a", JUN + DAY, 1)).await;
        clock.store(JUN + 2 * DAY, Ordering::SeqCst);
        run(&engine, event("b", JUN + 2 * DAY, 1)).await;
        clock.store(JUN + 3 * DAY, Ordering::SeqCst);

        // In the future: refused, nothing written.
        let refused = engine
            .close_invoice_periods(None, Some(Timestamp(JUN + 4 * DAY)))
            .await;
        assert!(
            matches!(&refused, Err(EngineError::Invalid(i)) if i.field.as_deref() == Some("until")),
            "on {on}: {refused:?}"
        );
        let refused = engine
            .close_invoice_periods(Some(account()), Some(Timestamp(JUN + 4 * DAY)))
            .await;
        assert!(matches!(refused, Err(EngineError::Invalid(_))), "on {on}");
        assert!(invoices(&engine).await.is_empty());

        // Between the two charges: the period is not closed (its second charge is later).
        let between = Timestamp(JUN + DAY + DAY / 2);
        assert!(engine
            .close_invoice_periods(Some(account()), Some(between))
            .await
            .unwrap()
            .is_empty());
        // After both: closed, ending at `until`.
        let after = Timestamp(JUN + 2 * DAY + 1);
        let issued = engine
            .close_invoice_periods(Some(account()), Some(after))
            .await
            .unwrap();
        assert_eq!(issued.len(), 1, "on {on}");
        let inv = invoice(&engine, issued[0]).await;
        assert_eq!((inv.period_start, inv.period_end), (Timestamp(JUN), after));
        assert_eq!(inv.total, Nanos(2 * THOUSAND));
        assert!(engine
            .close_invoice_periods(Some(account()), None)
            .await
            .unwrap()
            .is_empty());
        // An unknown account is not found.
        let unknown = engine
            .close_invoice_periods(Some(AccountId::parse("nobody").unwrap()), None)
            .await;
        assert!(
            matches!(
                unknown,
                Err(EngineError::Store(tollgate_store::StoreError::NotFound(_)))
            ),
            "on {on}: {unknown:?}"
        );
        reconciled(&engine, on).await;
    }
}

#[tokio::test]
async fn an_open_invoice_is_paid_or_voided_once_and_its_amounts_never_change() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(JUN + DAY));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Invoice).await;
        let mut closed = Vec::new();
        for (i, at) in [JUN + DAY, JUN + 2 * DAY].into_iter().enumerate() {
            clock.store(at, Ordering::SeqCst);
            run(&engine, event(&format!("e{i}"), at, 1)).await;
            clock.store(at + 1, Ordering::SeqCst);
            closed.extend(engine.close_invoice_periods(None, None).await.unwrap());
        }
        let (paid, voided) = (closed[0], closed[1]);
        let before = invoice(&engine, paid).await;
        let set = |(year, seq): (i64, i64), status, reference: &str| AdminCmd::SetInvoiceStatus {
            year,
            seq,
            status,
            reference: reference.into(),
        };
        engine
            .admin(set(paid, InvoiceStatus::Paid, "wire 42"))
            .await
            .unwrap();
        engine
            .admin(set(voided, InvoiceStatus::Void, "wrong account"))
            .await
            .unwrap();
        let after = invoice(&engine, paid).await;
        assert_eq!(after.status, InvoiceStatus::Paid);
        assert_eq!(after.status_reference.as_deref(), Some("wire 42"));
        assert_eq!(after.status_changed_at, Some(Timestamp(JUN + 2 * DAY + 1)));
        assert_eq!(
            (after.total, &after.lines, after.period_end),
            (before.total, &before.lines, before.period_end),
            "on {on}"
        );
        // Only an open invoice changes.
        for (which, status) in [
            (paid, InvoiceStatus::Void),
            (paid, InvoiceStatus::Paid),
            (voided, InvoiceStatus::Paid),
        ] {
            let refused = engine.admin(set(which, status, "again")).await;
            assert!(
                matches!(&refused, Err(EngineError::WrongState(m)) if m.contains("only an open invoice")),
                "on {on}: {refused:?}"
            );
        }
        assert_eq!(invoice(&engine, paid).await, after);
        let missing = engine
            .admin(set((2026, 99), InvoiceStatus::Paid, "x"))
            .await;
        assert!(
            matches!(
                missing,
                Err(EngineError::Store(tollgate_store::StoreError::NotFound(_)))
            ),
            "on {on}"
        );
        reconciled(&engine, on).await;
    }
}

/// Closes of one account racing each other (on demand and the month's close, several in one
/// batch when they arrive together) issue its invoice once, and report it once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_closes_issue_and_report_an_invoice_once() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(JUN + 3 * DAY));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Invoice).await;
        run(&engine, event("e1", JUN + 3 * DAY, 1)).await;
        clock.store(JUL + 60_000, Ordering::SeqCst);
        let closes = (0..16).map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    engine.close_invoice_periods(Some(account()), None).await
                } else {
                    engine.close_elapsed_months().await
                }
            })
        });
        let mut reported = Vec::new();
        for close in closes.collect::<Vec<_>>() {
            reported.extend(close.await.unwrap().unwrap());
        }
        let all = invoices(&engine).await;
        assert_eq!(all.len(), 1, "on {on}: {all:?}");
        assert_eq!(reported, vec![(all[0].year, all[0].seq)], "on {on}");
        assert_eq!(all[0].total, Nanos(THOUSAND));
        reconciled(&engine, on).await;
    }
}

/// The month's close of more accounts than one step closes (`CLOSE_STEP_ACCOUNTS`) goes on
/// step after step until every account with charges has its invoice, each once.
#[tokio::test]
async fn the_months_close_steps_through_every_account() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(JUN + DAY));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Invoice).await;
        let n = 2 * tollgate_engine::CLOSE_STEP_ACCOUNTS + 3;
        let mut ops = Vec::new();
        for i in 0..n {
            let username = AccountId::parse(&format!("acct-{i:04}")).unwrap();
            engine
                .admin(AdminCmd::CreateAccount {
                    username: username.clone(),
                    billing: BillingMode::Invoice,
                })
                .await
                .unwrap();
            let Op::UsageEvent(mut e) = event(&format!("e-{i}"), JUN + DAY, 1) else {
                unreachable!()
            };
            e.account = username;
            ops.push(Op::UsageEvent(e));
        }
        for r in engine.execute_many(ops).await.unwrap() {
            r.unwrap();
        }
        clock.store(JUL + 1, Ordering::SeqCst);
        let issued = engine.close_elapsed_months().await.unwrap();
        assert_eq!(issued.len(), n, "on {on}");
        let all = invoices(&engine).await;
        assert_eq!(all.len(), n, "on {on}");
        let mut accounts: Vec<_> = all.iter().map(|i| i.account.clone()).collect();
        accounts.sort();
        accounts.dedup();
        assert_eq!(accounts.len(), n, "on {on}: one invoice per account");
        assert!(all.iter().all(|i| i.total == Nanos(THOUSAND)), "on {on}");
        assert!(engine.close_elapsed_months().await.unwrap().is_empty());
        reconciled(&engine, on).await;
    }
}
