//! Payments on the write path, on every store at hand: the payment provider's subscription
//! row is created once and stays out of the operator's hands; the deployment's top-up
//! settings are checked before they apply; a top-up's payment is credited once whatever
//! events report it and in whatever batches; a refund told before the payment is taken when
//! it arrives, with credit notes correcting its top-up invoice; a dispute locks the account
//! until it is won; settlements below an auto top-up rule's threshold start one top-up at a
//! time, however many run at once and through however many engines, and its charge leaves
//! through the provider's delivery.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::events::{EventData, EventType};
use tollgate_core::ids::PurchaseId;
use tollgate_core::machine::{AccountState, InvoiceKind, LockReason, Op, Outcome};
use tollgate_core::payments::{
    AutoTopUpRule, DisputeStatus, PaymentEffect, ProviderEvent, TopUpSettings, TopUpStatus,
};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply, Engine, EngineError};
use tollgate_store::testing::{backends, Backend, TestDb};
use tollgate_store::{
    BillingMode, PaymentsQuery, WebhookEvents, WebhookKind, WebhookRecord, PROVIDER_WEBHOOK_ID,
};

use crate::common::{account, catalog_and_account, event, invoices};

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
const USD: i64 = 1_000_000_000;

fn pid(id: &str) -> PurchaseId {
    PurchaseId::parse(id).unwrap()
}

fn engine(db: &TestDb) -> Engine {
    Engine::start(db.open().unwrap(), Arc::new(|| Timestamp(T0))).unwrap()
}

#[tokio::test]
async fn the_provider_webhook_is_created_once_and_is_not_the_operators() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let engine = engine(&db);
        assert!(
            engine.ensure_provider_webhook().await.unwrap(),
            "{backend:?}"
        );
        assert!(!engine.ensure_provider_webhook().await.unwrap(), "once");
        engine
            .admin(AdminCmd::CreateWebhook(WebhookRecord {
                webhook_id: "wh_ops".into(),
                url: "http://127.0.0.1:9/ops".into(),
                events: WebhookEvents::All,
                description: None,
                secret: "whsec_ops".into(),
                created_at: Timestamp(T0),
                deleted_at: None,
            }))
            .await
            .unwrap();
        let listed: Vec<String> = engine
            .read(|r| r.webhooks())
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.webhook_id)
            .collect();
        assert_eq!(listed, ["wh_ops"], "{backend:?}");
        let deleted = engine
            .admin(AdminCmd::DeleteWebhook {
                webhook_id: PROVIDER_WEBHOOK_ID.into(),
            })
            .await
            .unwrap();
        assert_eq!(deleted, AdminReply::Found(false), "{backend:?}");
        // Still there: created again it is not.
        assert!(!engine.ensure_provider_webhook().await.unwrap());
        engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn the_payments_installation_is_drawn_once_and_shared_by_the_databases_servers() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let (a, b) = (engine(&db), engine(&db));
        let generation = || async { a.read(|r| r.catalog_generation()).await.unwrap() };
        let before = generation().await;
        // Two servers starting at once: the first to commit wins, both use its id.
        let (x, y) = tokio::join!(
            a.payments_installation("aaa1"),
            b.payments_installation("bbb2")
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x, y, "{backend:?}");
        assert!(x == "aaa1" || x == "bbb2", "{x}");
        // Every later start reads it.
        a.shutdown().await.unwrap();
        let c = engine(&db);
        assert_eq!(
            c.payments_installation("ccc3").await.unwrap(),
            x,
            "{backend:?}"
        );
        assert_eq!(
            c.read(|r| r.catalog_generation()).await.unwrap(),
            before,
            "not a catalog change"
        );
        for bad in ["", "has-dash", "a b", &"x".repeat(33)] {
            assert!(
                matches!(
                    c.payments_installation(bad).await,
                    Err(EngineError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        b.shutdown().await.unwrap();
        c.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn top_up_settings_are_checked_before_they_apply() {
    let db = TestDb::new(&tollgate_store::testing::Backend::Sqlite);
    let engine = engine(&db);
    assert_eq!(engine.top_up_settings(), TopUpSettings::default());
    let mine = TopUpSettings {
        min: usd(10),
        max: usd(500),
        retry_after_ms: 60_000,
    };
    engine.set_top_up_settings(mine).unwrap();
    for bad in [
        TopUpSettings {
            min: usd(0),
            ..mine
        },
        TopUpSettings {
            min: usd(600),
            ..mine
        },
        TopUpSettings {
            retry_after_ms: -1,
            ..mine
        },
    ] {
        assert!(matches!(
            engine.set_top_up_settings(bad),
            Err(EngineError::Invalid(_))
        ));
    }
    assert_eq!(
        engine.top_up_settings(),
        mine,
        "a refused change changes nothing"
    );
    engine.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// With the core's payment rules: what the write path loads and writes for them.

/// The provider's event, of `kind`.
fn provider_event(id: &str, kind: &str) -> Option<ProviderEvent> {
    Some(ProviderEvent {
        event_id: id.into(),
        event_type: kind.into(),
    })
}

fn usd(n: i64) -> Nanos {
    Nanos(n * USD)
}

fn create_top_up(id: &str, usd_amount: i64) -> Op {
    Op::CreateTopUp {
        account: account(),
        top_up_id: pid(id),
        amount: usd(usd_amount),
    }
}

/// The provider's word that top-up `id` was paid `usd_amount`, the card saved.
fn paid(event: Option<&str>, id: &str, usd_amount: i64) -> Op {
    Op::Payment {
        account: account(),
        event: event.and_then(|e| provider_event(e, "checkout.session.completed")),
        effect: PaymentEffect::Paid {
            top_up_id: pid(id),
            amount: usd(usd_amount),
            payment_intent: Some(format!("pi_{id}")),
            payment_method: Some("pm_1".into()),
        },
    }
}

fn refunded(event: &str, id: &str, total_usd: i64) -> Op {
    Op::Payment {
        account: account(),
        event: provider_event(event, "charge.refunded"),
        effect: PaymentEffect::Refunded {
            top_up_id: pid(id),
            refunded_total: usd(total_usd),
        },
    }
}

fn disputed(event: &str, id: &str, usd_amount: i64, status: DisputeStatus) -> Op {
    Op::Payment {
        account: account(),
        event: provider_event(event, "charge.dispute.updated"),
        effect: PaymentEffect::Disputed {
            top_up_id: pid(id),
            dispute_id: "dp_1".into(),
            amount: usd(usd_amount),
            status,
        },
    }
}

async fn run(engine: &Engine, op: Op) -> Outcome {
    engine
        .execute(op)
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("refused: {r}"))
}

async fn state(engine: &Engine) -> AccountState {
    let now = engine.now();
    engine
        .read(move |r| r.account(&account(), now))
        .await
        .unwrap()
        .unwrap()
        .state
}

async fn clean(engine: &Engine, on: &Backend) {
    let rec = engine.read(|r| r.reconcile()).await.unwrap();
    assert!(rec.is_clean(), "{on:?}: {}", rec.summary());
}

async fn payments(engine: &Engine) -> Vec<tollgate_store::PaymentRecord> {
    engine
        .read(|r| {
            r.payments(&PaymentsQuery {
                account: account(),
                before: None,
                limit: 100,
            })
        })
        .await
        .unwrap()
}

async fn event_types(engine: &Engine) -> Vec<EventType> {
    engine
        .read(|r| r.webhook_events(0, 10_000))
        .await
        .unwrap()
        .iter()
        .map(|e| e.data.event_type())
        .collect()
}

fn count(types: &[EventType], t: EventType) -> usize {
    types.iter().filter(|x| **x == t).count()
}

async fn started(backend: &Backend) -> (TestDb, Engine, Arc<AtomicI64>) {
    let db = TestDb::new(backend);
    let clock = Arc::new(AtomicI64::new(T0));
    let now = clock.clone();
    let engine = Engine::start(
        db.open().unwrap(),
        Arc::new(move || Timestamp(now.load(Ordering::SeqCst))),
    )
    .unwrap();
    catalog_and_account(&engine, BillingMode::Prepaid).await;
    (db, engine, clock)
}

#[tokio::test]
async fn a_paid_top_up_is_credited_once_whatever_events_report_it() {
    for backend in backends() {
        let (_db, engine, _) = started(&backend).await;
        run(&engine, create_top_up("t-1", 25)).await;
        let first = run(&engine, paid(Some("evt_1"), "t-1", 25)).await;
        assert!(matches!(
            first,
            Outcome::PaymentApplied {
                replayed: false,
                ..
            }
        ));
        // The same payment told by another event, then the first event again.
        run(&engine, paid(Some("evt_2"), "t-1", 25)).await;
        let again = run(&engine, paid(Some("evt_1"), "t-1", 25)).await;
        assert!(
            matches!(again, Outcome::PaymentApplied { replayed: true, .. }),
            "{backend:?}: {again:?}"
        );
        // Two events of another top-up's payment in one batch.
        run(&engine, create_top_up("t-2", 10)).await;
        let both = engine
            .execute_many(vec![
                paid(Some("evt_3"), "t-2", 10),
                paid(Some("evt_4"), "t-2", 10),
            ])
            .await
            .unwrap();
        assert!(both.iter().all(Result::is_ok), "{both:?}");
        assert_eq!(state(&engine).await.credit.balance, usd(35), "{backend:?}");
        let top_up = engine
            .read(|r| r.top_up(&account(), &pid("t-1")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(top_up.status, TopUpStatus::Succeeded);
        assert_eq!(top_up.payment_intent.as_deref(), Some("pi_t-1"));
        let by_intent = engine
            .read(|r| r.top_up_by_payment_intent("pi_t-2"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_intent.top_up_id, pid("t-2"));
        let history: Vec<_> = payments(&engine)
            .await
            .into_iter()
            .map(|p| {
                (
                    p.purchase_id.as_str().to_string(),
                    p.amount,
                    p.provider_reference,
                )
            })
            .collect();
        assert_eq!(
            history,
            [
                ("t-2".to_string(), usd(10), Some("pi_t-2".to_string())),
                ("t-1".to_string(), usd(25), Some("pi_t-1".to_string())),
            ],
            "{backend:?}"
        );
        let types = event_types(&engine).await;
        assert_eq!(
            count(&types, EventType::PurchaseSucceeded),
            2,
            "{backend:?}"
        );
        assert_eq!(invoices(&engine).await.len(), 2);
        // The saved card stays with the account.
        assert_eq!(
            state(&engine).await.payment.payment_method.as_deref(),
            Some("pm_1")
        );
        clean(&engine, &backend).await;
        engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_refund_told_before_the_payment_is_taken_when_the_payment_arrives() {
    for backend in backends() {
        let (_db, engine, _) = started(&backend).await;
        run(&engine, create_top_up("t-1", 25)).await;
        run(&engine, refunded("evt_r1", "t-1", 10)).await;
        assert_eq!(state(&engine).await.credit.balance, usd(0), "{backend:?}");
        let waiting = engine
            .read(|r| r.top_up(&account(), &pid("t-1")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(waiting.provider_refunded, usd(10), "kept on the top-up");
        run(&engine, paid(Some("evt_p"), "t-1", 25)).await;
        let s = state(&engine).await;
        assert_eq!(
            (s.credit.balance, s.paid_28d),
            (usd(15), usd(15)),
            "{backend:?}"
        );
        // The same state again takes nothing; more refunded takes the difference.
        run(&engine, refunded("evt_r2", "t-1", 10)).await;
        assert_eq!(state(&engine).await.credit.balance, usd(15));
        run(&engine, refunded("evt_r3", "t-1", 15)).await;
        let s = state(&engine).await;
        assert_eq!(
            (s.credit.balance, s.paid_28d),
            (usd(10), usd(10)),
            "{backend:?}"
        );
        let purchase = engine
            .read(|r| r.purchase(&account(), &pid("t-1")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(purchase.refunded, usd(15));
        // The top-up invoice and two credit notes, in the shared sequence, each correcting it.
        let all = invoices(&engine).await;
        let seen: Vec<_> = all.iter().map(|i| (i.kind, i.total, i.corrects)).collect();
        let top_up = (all[0].year, all[0].seq);
        assert_eq!(
            seen,
            [
                (InvoiceKind::TopUp, usd(25), None),
                (InvoiceKind::CreditNote, usd(-10), Some(top_up)),
                (InvoiceKind::CreditNote, usd(-5), Some(top_up)),
            ],
            "{backend:?}"
        );
        assert_eq!(
            all.iter().map(|i| i.seq - top_up.1).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(payments(&engine).await[0].refunded, usd(15));
        clean(&engine, &backend).await;
        engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_dispute_locks_the_account_until_it_is_won() {
    for backend in backends() {
        let (_db, engine, _) = started(&backend).await;
        run(&engine, create_top_up("t-1", 25)).await;
        run(&engine, paid(Some("evt_p"), "t-1", 25)).await;
        run(&engine, disputed("evt_d1", "t-1", 25, DisputeStatus::Open)).await;
        let s = state(&engine).await;
        assert_eq!(s.credit.balance, usd(0), "{backend:?}");
        assert_eq!(s.lock_reason(), Some(LockReason::PaymentDisputed));
        let p = &payments(&engine).await[0];
        assert_eq!((p.disputed, p.dispute_open), (usd(25), true));
        // Credits bought meanwhile do not lift the lock.
        run(
            &engine,
            Op::Purchase {
                account: account(),
                purchase_id: pid("p-manual"),
                amount: usd(10),
                paid: true,
                expires_at: None,
            },
        )
        .await;
        let s = state(&engine).await;
        assert_eq!(
            s.lock_reason(),
            Some(LockReason::PaymentDisputed),
            "{backend:?}"
        );
        // A late repeat of the opening changes nothing; the dispute won gives it back.
        run(&engine, disputed("evt_d0", "t-1", 25, DisputeStatus::Open)).await;
        run(&engine, disputed("evt_d2", "t-1", 25, DisputeStatus::Won)).await;
        let s = state(&engine).await;
        assert_eq!(s.credit.balance, usd(35), "{backend:?}");
        assert_eq!(s.lock_reason(), None);
        assert_eq!(s.disputed_since, None);
        let p = payments(&engine).await;
        let t1 = p.iter().find(|p| p.purchase_id == pid("t-1")).unwrap();
        assert_eq!((t1.disputed, t1.dispute_open), (usd(0), false));
        clean(&engine, &backend).await;
        engine.shutdown().await.unwrap();
    }
}

/// `n` usage events of 0.20 USD each, numbered from `first`.
fn settlements(first: usize, n: usize, at: i64) -> Vec<Op> {
    (first..first + n)
        .map(|i| event(&format!("00000000-0000-4000-8000-{i:012}"), at, 4))
        .collect()
}

/// Each operation sent on its own (concurrently, so the writer batches them as they come), on
/// engine `via(i)`.
async fn concurrently(ops: Vec<Op>, via: impl Fn(usize) -> Engine) {
    let tasks: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| {
            let engine = via(i);
            tokio::spawn(async move { engine.execute(op).await })
        })
        .collect();
    for t in tasks {
        let answer = t.await.unwrap().unwrap();
        assert!(answer.is_ok(), "{answer:?}");
    }
}

/// The account with a saved card and an auto top-up rule: 10 USD whenever the available
/// balance falls below 20 USD; 25 USD bought at checkout.
async fn auto_top_up_account(engine: &Engine) {
    assert!(engine.ensure_provider_webhook().await.unwrap());
    run(
        engine,
        Op::SetPaymentCustomer {
            account: account(),
            customer: "cus_1".into(),
        },
    )
    .await;
    run(engine, create_top_up("t-1", 25)).await;
    run(engine, paid(Some("evt_p"), "t-1", 25)).await;
    run(
        engine,
        Op::SetAutoTopUp {
            account: account(),
            rule: AutoTopUpRule {
                enabled: true,
                threshold: usd(20),
                amount: usd(10),
                max_per_month: usd(100),
            },
        },
    )
    .await;
}

/// The auto top-ups recorded: `(id, amount, status)`.
async fn auto_top_ups(engine: &Engine) -> Vec<(String, Nanos, TopUpStatus)> {
    let mut out = Vec::new();
    for n in 1..=5 {
        let id = pid(&format!("auto-{n}"));
        if let Some(t) = engine
            .read(move |r| r.top_up(&account(), &id))
            .await
            .unwrap()
        {
            out.push((t.top_up_id.as_str().to_string(), t.amount, t.status));
        }
    }
    out
}

#[tokio::test]
async fn fifty_concurrent_settlements_below_the_threshold_start_one_auto_top_up() {
    for backend in backends() {
        let (_db, engine, clock) = started(&backend).await;
        auto_top_up_account(&engine).await;
        let at = clock.load(Ordering::SeqCst);
        let e = engine.clone();
        concurrently(settlements(0, 50, at), move |_| e.clone()).await;
        assert_eq!(state(&engine).await.credit.balance, usd(15), "{backend:?}");
        let types = event_types(&engine).await;
        assert_eq!(count(&types, EventType::TopUpStarted), 1, "{backend:?}");
        assert_eq!(
            auto_top_ups(&engine).await,
            [("auto-1".to_string(), usd(10), TopUpStatus::AwaitingPayment)]
        );
        let rule = state(&engine).await.payment.auto_top_up.unwrap();
        assert_eq!(rule.in_flight, Some(pid("auto-1")));
        // The charge leaves through the provider's delivery: claimed once, with its kind.
        let claimed = match engine
            .admin(AdminCmd::ClaimDeliveries {
                limit: 100,
                per_webhook: 100,
                lease_ms: 60_000,
            })
            .await
            .unwrap()
        {
            AdminReply::Claimed(c) => c,
            other => panic!("{other:?}"),
        };
        let to_provider: Vec<_> = claimed
            .iter()
            .filter(|c| c.kind == WebhookKind::Provider)
            .map(|c| c.event.data.clone())
            .collect();
        assert_eq!(to_provider.len(), 1, "{backend:?}: {claimed:?}");
        assert!(matches!(
            &to_provider[0],
            EventData::TopUpStarted { top_up_id, customer, payment_method, .. }
                if top_up_id == &pid("auto-1") && customer == "cus_1" && payment_method == "pm_1"
        ));
        // The provider's answer: paid. The balance is back above the threshold.
        run(&engine, paid(None, "auto-1", 10)).await;
        let s = state(&engine).await;
        assert_eq!(s.credit.balance, usd(25), "{backend:?}");
        assert_eq!(s.payment.auto_top_up.unwrap().in_flight, None);
        // Below it again: one more, whatever the number of settlements.
        let e = engine.clone();
        concurrently(settlements(50, 50, at), move |_| e.clone()).await;
        assert_eq!(
            count(&event_types(&engine).await, EventType::TopUpStarted),
            2,
            "{backend:?}"
        );
        assert_eq!(auto_top_ups(&engine).await.len(), 2);
        clean(&engine, &backend).await;
        engine.shutdown().await.unwrap();
    }
}

/// Two engines on one database (two servers): their settlements below the threshold start one
/// auto top-up between them, the rule's in-flight top-up read under the account's lock.
#[tokio::test]
async fn two_engines_sharing_a_database_start_one_auto_top_up_between_them() {
    for backend in backends() {
        let (db, a, clock) = started(&backend).await;
        let now = clock.clone();
        let b = Engine::start(
            db.open().unwrap(),
            Arc::new(move || Timestamp(now.load(Ordering::SeqCst))),
        )
        .unwrap();
        auto_top_up_account(&a).await;
        let at = clock.load(Ordering::SeqCst);
        let (ea, eb) = (a.clone(), b.clone());
        concurrently(settlements(0, 50, at), move |i| {
            if i % 2 == 0 {
                ea.clone()
            } else {
                eb.clone()
            }
        })
        .await;
        assert_eq!(state(&a).await.credit.balance, usd(15), "{backend:?}");
        assert_eq!(
            count(&event_types(&a).await, EventType::TopUpStarted),
            1,
            "{backend:?}"
        );
        assert_eq!(auto_top_ups(&b).await.len(), 1, "{backend:?}");
        clean(&a, &backend).await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}
