//! Rollups per hour: the embedded store folds each minute's rows into their hour rows once the
//! minute has passed, and reads add the minutes not folded yet. On every store the reads answer
//! the same before and after a fold, and a late usage event for a folded minute still counts
//! in its hour.

use crate::common::{account, catalog_and_account, event};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::ids::PurchaseId;
use tollgate_core::machine::Op;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::Engine;
use tollgate_store::testing::{backends, Backend, TestDb};
use tollgate_store::{BillingMode, Reader, RollupQuery, SETTING_FOLDED_BEFORE};

/// 2026-06-01T00:00:00Z, the start of an hour.
const T: i64 = 1_780_272_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

struct Fixture {
    engine: Engine,
    clock: Arc<AtomicI64>,
    _db: TestDb,
}

impl Fixture {
    async fn new(backend: &Backend) -> Fixture {
        let db = TestDb::new(backend);
        let clock = Arc::new(AtomicI64::new(T + 30 * MINUTE));
        let read = clock.clone();
        let engine = Engine::start(
            db.open().unwrap(),
            Arc::new(move || Timestamp(read.load(Ordering::SeqCst))),
        )
        .unwrap();
        catalog_and_account(&engine, BillingMode::Prepaid).await;
        engine
            .execute(Op::Purchase {
                account: account(),
                purchase_id: PurchaseId::parse("p1").unwrap(),
                amount: Nanos(100_000_000_000),
                paid: true,
                expires_at: None,
            })
            .await
            .unwrap()
            .unwrap();
        Fixture {
            engine,
            clock,
            _db: db,
        }
    }

    /// Bills `events` in one batch at `now`.
    async fn bill_at(&self, now: i64, events: Vec<Op>) {
        self.clock.store(now, Ordering::SeqCst);
        for answer in self.engine.execute_many(events).await.unwrap() {
            answer.expect("billed");
        }
    }

    /// Per slot of the two hours from `T`: (slot, requests, characters, total nanos) of usage, and (slot, completed requests) of activity. `whole_hours`: per hour.
    async fn reads(&self, whole_hours: bool) -> (Vec<(i64, u64, String, i64)>, Vec<(i64, u64)>) {
        let q = RollupQuery {
            account: account(),
            from: Timestamp(T),
            to: Timestamp(T + 2 * HOUR),
            endpoints: vec![],
            api_keys: vec![],
            whole_hours,
            service: Some(tollgate_store::Service::Models),
        };
        let q2 = q.clone();
        let usage = self.engine.read(move |r| r.usage(&q)).await.unwrap();
        let activity = self.engine.read(move |r| r.activity(&q2)).await.unwrap();
        (
            usage
                .iter()
                .map(|(k, t)| (k.slot.0 - T, t.requests, t.quantity.to_string(), t.total.0))
                .collect(),
            activity
                .iter()
                .map(|(k, t)| (k.slot.0 - T, t.requests))
                .collect(),
        )
    }

    async fn folded_before(&self) -> Option<String> {
        self.engine
            .read(|r: &mut dyn Reader| r.setting(SETTING_FOLDED_BEFORE))
            .await
            .unwrap()
    }

    async fn assert_reconciles(&self) {
        let rec = self
            .engine
            .read(|r: &mut dyn Reader| r.reconcile())
            .await
            .unwrap();
        assert!(rec.is_clean(), "{rec:?}");
    }
}

#[tokio::test]
async fn hours_read_the_same_before_and_after_their_minutes_are_folded() {
    for backend in backends() {
        let f = Fixture::new(&backend).await;
        let sqlite = matches!(backend, Backend::Sqlite);

        // Two events in the first hour, while it is the current one: the first minute's is
        // folded by the batch (its minute has passed), the second's is not.
        f.bill_at(
            T + 31 * MINUTE,
            vec![
                event("a", T + 30 * MINUTE, 2),
                event("b", T + 31 * MINUTE, 3),
            ],
        )
        .await;
        let open = (vec![(0, 2, "5000".to_string(), 250_000_000)], vec![(0, 2)]);
        assert_eq!(f.reads(true).await, open, "on {}", backend.name());
        assert_eq!(
            f.reads(false).await,
            (
                vec![
                    (30 * MINUTE, 1, "2000".to_string(), 100_000_000),
                    (31 * MINUTE, 1, "3000".to_string(), 150_000_000),
                ],
                vec![(30 * MINUTE, 1), (31 * MINUTE, 1)],
            )
        );
        if sqlite {
            assert_eq!(
                f.folded_before().await,
                Some((T + 31 * MINUTE).to_string()),
                "the current minute is not folded"
            );
        }
        f.assert_reconciles().await;

        // The next hour's first batch folds the rest of the first: it reads as before.
        f.bill_at(
            T + HOUR + 2 * MINUTE,
            vec![event("c", T + HOUR + MINUTE, 1)],
        )
        .await;
        let closed = (
            vec![
                (0, 2, "5000".to_string(), 250_000_000),
                (HOUR, 1, "1000".to_string(), 50_000_000),
            ],
            vec![(0, 2), (HOUR, 1)],
        );
        assert_eq!(f.reads(true).await, closed, "on {}", backend.name());
        if sqlite {
            assert_eq!(
                f.folded_before().await,
                Some((T + HOUR + 2 * MINUTE).to_string())
            );
        }
        f.assert_reconciles().await;

        // A late event for a folded minute counts in its hour, once.
        f.bill_at(T + HOUR + 3 * MINUTE, vec![event("d", T + 45 * MINUTE, 4)])
            .await;
        assert_eq!(
            f.reads(true).await,
            (
                vec![
                    (0, 3, "9000".to_string(), 450_000_000),
                    (HOUR, 1, "1000".to_string(), 50_000_000),
                ],
                vec![(0, 3), (HOUR, 1)],
            ),
            "on {}",
            backend.name()
        );
        assert_eq!(f.reads(false).await.0.len(), 4, "one minute row per event");
        f.assert_reconciles().await;
    }
}
