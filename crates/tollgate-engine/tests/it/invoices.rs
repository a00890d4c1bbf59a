//! Top-up invoices: a paid purchase issues one in the commit that grants its credits (a
//! replay or a free purchase issues none), numbered `TG-<year>-<seq>` gapless in issue order
//! across accounts, under concurrency, across a year boundary, through a batch that lost a
//! race, and through two engines sharing one database. On every store at hand.

use crate::common::{account, catalog_and_account, invoices, Racing};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{InvoiceKind, InvoiceStatus, Op, Outcome};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, Engine};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{BillingMode, InvoiceRecord};

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
/// 2027-01-01T00:00:00Z.
const NEW_YEAR: i64 = 1_798_761_600_000;

fn engine(db: &TestDb, clock: &Arc<AtomicI64>) -> Engine {
    let clock = clock.clone();
    Engine::start(
        db.open().unwrap(),
        Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))),
    )
    .unwrap()
}

async fn buy(engine: &Engine, who: &AccountId, id: &str, nanos: i64, paid: bool) -> bool {
    match engine
        .execute(Op::Purchase {
            account: who.clone(),
            purchase_id: PurchaseId::parse(id).unwrap(),
            amount: Nanos(nanos),
            paid,
            expires_at: None,
        })
        .await
        .unwrap()
    {
        Ok(Outcome::Purchased { replayed, .. }) => replayed,
        other => panic!("{other:?}"),
    }
}

async fn create(engine: &Engine, name: &str) -> AccountId {
    let id = AccountId::parse(name).unwrap();
    engine
        .admin(AdminCmd::CreateAccount {
            username: id.clone(),
            billing: BillingMode::Prepaid,
        })
        .await
        .unwrap();
    id
}

fn numbers(all: &[InvoiceRecord]) -> Vec<String> {
    all.iter().map(InvoiceRecord::number).collect()
}

fn expected(year: i64, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("TG-{year}-{i:06}")).collect()
}

#[tokio::test]
async fn a_paid_purchase_issues_its_invoice_and_a_replay_or_free_credits_none() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(T0));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Prepaid).await;

        assert!(!buy(&engine, &account(), "pay-1", 12_345_678_901, true).await);
        let all = invoices(&engine).await;
        assert_eq!(all.len(), 1, "on {on}");
        let inv = &all[0];
        assert_eq!(inv.number(), "TG-2026-000001", "on {on}");
        assert_eq!(inv.account, account());
        assert_eq!(inv.kind, InvoiceKind::TopUp);
        assert_eq!(inv.status, InvoiceStatus::Paid);
        assert_eq!(inv.total, Nanos(12_345_678_901));
        assert_eq!(inv.issued_at, Timestamp(T0));
        assert_eq!(inv.purchase_id, Some(PurchaseId::parse("pay-1").unwrap()));
        let (year, seq) = InvoiceRecord::parse_id(&inv.invoice_id()).unwrap();
        let found = engine.read(move |r| r.invoice(year, seq)).await.unwrap();
        assert_eq!(found.as_ref(), Some(inv), "on {on}");

        // The same purchase again is a replay: no second invoice.
        assert!(buy(&engine, &account(), "pay-1", 12_345_678_901, true).await);
        // Free credits issue none.
        assert!(!buy(&engine, &account(), "free-1", 5_000_000_000, false).await);
        assert_eq!(invoices(&engine).await.len(), 1, "on {on}");

        let rec = engine.read(|r| r.reconcile()).await.unwrap();
        assert!(rec.is_clean(), "on {on}: {}", rec.summary());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn numbers_are_gapless_in_issue_order_under_concurrent_purchases() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(T0));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Prepaid).await;
        let mut accounts = vec![account()];
        for name in ["beta", "gamma"] {
            accounts.push(create(&engine, name).await);
        }
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let engine = engine.clone();
                let who = accounts[i % accounts.len()].clone();
                tokio::spawn(async move {
                    buy(
                        &engine,
                        &who,
                        &format!("p-{i}"),
                        1_000_000 * (i as i64 + 1),
                        true,
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert!(!t.await.unwrap());
        }
        let all = invoices(&engine).await;
        assert_eq!(numbers(&all), expected(2026, 60), "on {on}");
        // Each purchase has exactly one invoice, of its amount.
        let mut seen: Vec<(String, i64)> = all
            .iter()
            .map(|i| (i.purchase_id.clone().unwrap().to_string(), i.total.0))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 60, "on {on}");
        for (id, total) in seen {
            let i: i64 = id.strip_prefix("p-").unwrap().parse().unwrap();
            assert_eq!(total, 1_000_000 * (i + 1), "on {on}");
        }
    }
}

#[tokio::test]
async fn numbers_restart_at_one_each_calendar_year() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(NEW_YEAR - 2));
        let engine = engine(&db, &clock);
        catalog_and_account(&engine, BillingMode::Prepaid).await;
        buy(&engine, &account(), "a", 1_000_000_000, true).await;
        clock.store(NEW_YEAR - 1, Ordering::SeqCst);
        buy(&engine, &account(), "b", 1_000_000_000, true).await;
        clock.store(NEW_YEAR, Ordering::SeqCst);
        buy(&engine, &account(), "c", 1_000_000_000, true).await;
        buy(&engine, &account(), "d", 1_000_000_000, true).await;
        assert_eq!(
            numbers(&invoices(&engine).await),
            [
                "TG-2026-000001",
                "TG-2026-000002",
                "TG-2027-000001",
                "TG-2027-000002"
            ],
            "on {on}"
        );
    }
}

/// A batch that lost a race and ran again took its numbers once: no gap.
#[tokio::test]
async fn a_batch_run_again_after_losing_a_race_leaves_no_gap() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let conflicts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let store = Racing {
            inner: db.open().unwrap(),
            conflicts: conflicts.clone(),
            gate: Arc::default(),
            pings: Arc::default(),
        };
        let engine = Engine::start(Box::new(store), Arc::new(|| Timestamp(T0))).unwrap();
        catalog_and_account(&engine, BillingMode::Prepaid).await;
        buy(&engine, &account(), "first", 1_000_000_000, true).await;
        conflicts.store(1, Ordering::SeqCst);
        buy(&engine, &account(), "raced", 1_000_000_000, true).await;
        assert_eq!(
            conflicts.load(Ordering::SeqCst),
            0,
            "on {on}: the race was lost"
        );
        buy(&engine, &account(), "third", 1_000_000_000, true).await;
        assert_eq!(
            numbers(&invoices(&engine).await),
            expected(2026, 3),
            "on {on}"
        );
    }
}

/// Two engines on one database (two servers sharing it) take their numbers from the same
/// counter: gapless and unique.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_on_one_database_number_invoices_gapless_and_unique() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(T0));
        let (a, b) = (engine(&db, &clock), engine(&db, &clock));
        catalog_and_account(&a, BillingMode::Prepaid).await;
        let other = create(&a, "other").await;
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let engine = if i % 2 == 0 { a.clone() } else { b.clone() };
                let who = if i % 3 == 0 { other.clone() } else { account() };
                tokio::spawn(async move {
                    buy(&engine, &who, &format!("p-{i}"), 1_000_000_000, true).await
                })
            })
            .collect();
        for t in tasks {
            assert!(!t.await.unwrap());
        }
        assert_eq!(numbers(&invoices(&b).await), expected(2026, 40), "on {on}");
        let rec = a.read(|r| r.reconcile()).await.unwrap();
        assert!(rec.is_clean(), "on {on}: {}", rec.summary());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closes_racing_top_ups_on_two_engines_share_one_gapless_sequence() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let clock = Arc::new(AtomicI64::new(T0 + 1000));
        let (a, b) = (engine(&db, &clock), engine(&db, &clock));
        // "acme" buys credits; eight invoice-billed accounts are charged and closed.
        catalog_and_account(&a, BillingMode::Prepaid).await;
        let mut billed = Vec::new();
        for i in 0..8 {
            let id = AccountId::parse(&format!("inv{i}")).unwrap();
            a.admin(AdminCmd::CreateAccount {
                username: id.clone(),
                billing: BillingMode::Invoice,
            })
            .await
            .unwrap();
            billed.push(id);
        }
        let mut tasks = Vec::new();
        for i in 0..48usize {
            let engine = if i % 2 == 0 { a.clone() } else { b.clone() };
            let who = billed[i % billed.len()].clone();
            tasks.push(tokio::spawn(async move {
                match i % 3 {
                    0 => {
                        buy(&engine, &account(), &format!("p-{i}"), 1_000_000_000, true).await;
                    }
                    1 => {
                        let mut op = crate::common::event(&format!("e-{i}"), T0 + 1000, 1);
                        if let Op::UsageEvent(e) = &mut op {
                            e.account = who;
                        }
                        engine.execute(op).await.unwrap().unwrap();
                    }
                    _ => {
                        let one = if i % 2 == 0 { Some(who) } else { None };
                        engine.close_invoice_periods(one, None).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        clock.store(T0 + 2000, Ordering::SeqCst);
        a.close_invoice_periods(None, None).await.unwrap();
        let all = invoices(&b).await;
        assert_eq!(numbers(&all), expected(2026, all.len()), "on {on}");
        assert_eq!(
            all.iter().filter(|i| i.kind == InvoiceKind::TopUp).count(),
            16,
            "on {on}"
        );
        // Every charge is on exactly one usage invoice: together they are what was charged.
        let usage: i64 = all
            .iter()
            .filter(|i| i.kind == InvoiceKind::Usage)
            .map(|i| i.total.0)
            .sum();
        assert_eq!(usage, 16 * 50_000_000, "on {on}");
        let rec = a.read(|r| r.reconcile()).await.unwrap();
        assert!(rec.is_clean(), "on {on}: {}", rec.summary());
    }
}

#[test]
fn numbers_widen_past_six_digits_and_ids_name_their_number() {
    let mut inv = InvoiceRecord {
        year: 2026,
        seq: 1_000_000,
        prefix: "TG".into(),
        account: account(),
        kind: InvoiceKind::TopUp,
        status: InvoiceStatus::Paid,
        issued_at: Timestamp(T0),
        period_start: Timestamp(T0),
        period_end: Timestamp(T0),
        subtotal: Nanos(1),
        discount: Nanos::ZERO,
        total: Nanos(1),
        purchase_id: None,
        status_changed_at: None,
        status_reference: None,
        corrects: None,
        lines: Vec::new(),
    };
    assert_eq!(inv.number(), "TG-2026-1000000");
    assert_eq!(
        InvoiceRecord::parse_id(&inv.invoice_id()),
        Some((2026, 1_000_000))
    );
    inv.seq = 7;
    assert_eq!(inv.number(), "TG-2026-000007");
    for bad in ["inv_2026", "inv__1", "inv_2026_x", "2026_1", "inv_2026_-1"] {
        assert_eq!(InvoiceRecord::parse_id(bad), None, "{bad}");
    }
}
