//! Two engines on one database, as two tollgate processes sharing it would run: holds placed
//! through both never overspend, concurrency slots count both engines' requests, a request
//! completed through both is billed once, a catalog applied through one prices requests on the
//! other, and sweepers running on both expire each hold once. On every store at hand
//! (`tollgate_store::testing`): SQLite (two writers on one file take turns) and PostgreSQL.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::catalog::document;
use tollgate_core::ids::{AccountId, EndpointId, PurchaseId, RequestId};
use tollgate_core::machine::{Op, Outcome, Rejection};
use tollgate_core::price::{Dims, Output};
use tollgate_core::terms::TermsChange;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, Engine};
use tollgate_store::testing::{backends, postgres_url, Backend, TestDb};
use tollgate_store::BillingMode;

const CATALOG: &str = r#"
prices_read_on = "2026-01-15"
effective_from = "2026-01-01T00:00:00Z"

[[endpoint]]
id = "t/image"
name = "Image"
category = "text-to-image"
hold_units = "1"
hold_timeout_s = 30
price = { unit = "image", unit_price = "0.05" }
"#;

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
/// One image: 0.05 USD.
const COST: i64 = 50_000_000;

struct Pair {
    a: Engine,
    b: Engine,
    clock: Arc<AtomicI64>,
    db: TestDb,
}

impl Pair {
    async fn new(backend: &Backend) -> Pair {
        let db = TestDb::new(backend);
        let clock = Arc::new(AtomicI64::new(T0));
        let start = |clock: Arc<AtomicI64>| {
            Engine::start(
                db.open().expect("open the store"),
                Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))),
            )
            .expect("start an engine")
        };
        let (a, b) = (start(clock.clone()), start(clock.clone()));
        // Applied through `a` only, after `b` started: `b` must see it at its next batch.
        let doc = document::parse(CATALOG).expect("catalog");
        a.admin(AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .expect("apply the catalog");
        a.admin(AdminCmd::CreateAccount {
            username: account(),
            billing: BillingMode::Prepaid,
        })
        .await
        .expect("create the account");
        Pair { a, b, clock, db }
    }

    /// Engine `a` for even `i`, `b` for odd.
    fn via(&self, i: usize) -> &Engine {
        if i.is_multiple_of(2) {
            &self.a
        } else {
            &self.b
        }
    }

    async fn buy(&self, id: &str, usd_nanos: i64) {
        let bought = self
            .b
            .execute(Op::Purchase {
                account: account(),
                purchase_id: PurchaseId::parse(id).unwrap(),
                amount: Nanos(usd_nanos),
                paid: true,
                expires_at: None,
            })
            .await
            .unwrap();
        assert!(
            matches!(bought, Ok(Outcome::Purchased { .. })),
            "{bought:?}"
        );
    }

    async fn set_limit(&self, limit: u32) {
        self.a
            .admin(AdminCmd::SetTerms {
                username: account(),
                change: TermsChange {
                    concurrency_limit: Some(Some(limit)),
                    ..TermsChange::default()
                },
            })
            .await
            .unwrap();
    }

    /// Submits `ids` through both engines, then starts them all at once through both.
    async fn submit_and_start(&self, ids: &[RequestId]) -> Vec<Result<Outcome, Rejection>> {
        for (i, id) in ids.iter().enumerate() {
            let submitted = self
                .via(i)
                .execute(Op::Submit {
                    request_id: id.clone(),
                    account: account(),
                    api_key: None,
                    endpoint: EndpointId::parse("t/image").unwrap(),
                })
                .await
                .unwrap();
            assert!(
                matches!(submitted, Ok(Outcome::Submitted { .. })),
                "{submitted:?}"
            );
        }
        let starts = ids.iter().enumerate().map(|(i, id)| {
            let engine = self.via(i + 1).clone();
            let id = id.clone();
            tokio::spawn(async move {
                engine
                    .execute(Op::Start {
                        request_id: id,
                        machine_type: None,
                        num_gpus: None,
                        hold_units: None,
                    })
                    .await
                    .unwrap()
            })
        });
        let mut out = Vec::new();
        for s in starts.collect::<Vec<_>>() {
            out.push(s.await.unwrap());
        }
        out
    }

    async fn balance_and_load(&self) -> (i64, i64, u32) {
        let now = Timestamp(self.clock.load(Ordering::SeqCst));
        let row = self
            .b
            .read(move |r| r.account(&account(), now))
            .await
            .unwrap()
            .expect("the account");
        (
            row.state.credit.balance.0,
            row.state.credit.held.0,
            row.state.in_progress,
        )
    }

    async fn assert_reconciles(&self) {
        let rec = self.a.read(|r| r.reconcile()).await.unwrap();
        assert!(rec.is_clean(), "{}", rec.summary());
    }
}

fn account() -> AccountId {
    AccountId::parse("shared").unwrap()
}

fn ids(prefix: &str, n: usize) -> Vec<RequestId> {
    (0..n)
        .map(|i| RequestId::parse(&format!("{prefix}-{i}")).unwrap())
        .collect()
}

fn started(outcomes: &[Result<Outcome, Rejection>]) -> usize {
    outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Outcome::Started { .. })))
        .count()
}

async fn holds_slots_completions_and_sweeps(backend: &Backend) {
    let p = Pair::new(backend).await;
    let on = backend.name();

    // Credits for exactly 20 holds, slots for all 60: credit is what runs out.
    p.set_limit(1000).await;
    p.buy("credits-1", 20 * COST).await;
    let first = ids("credit", 60);
    let outcomes = p.submit_and_start(&first).await;
    assert_eq!(started(&outcomes), 20, "on {on}: {outcomes:?}");
    for o in &outcomes {
        assert!(
            matches!(
                o,
                Ok(Outcome::Started { .. }) | Err(Rejection::InsufficientCredits { .. })
            ),
            "on {on}: {o:?}"
        );
    }
    assert_eq!(
        p.balance_and_load().await,
        (20 * COST, 20 * COST, 20),
        "on {on}"
    );

    // Every request completed through both engines at once: billed once, answered alike.
    let completes = first.iter().flat_map(|id| {
        [&p.a, &p.b].map(|engine| {
            let (engine, id) = (engine.clone(), id.clone());
            tokio::spawn(async move {
                engine
                    .execute(Op::Complete {
                        request_id: id,
                        status_code: 200,
                        output: Output {
                            images: vec![Dims {
                                width: 1024,
                                height: 1024,
                            }],
                            ..Default::default()
                        },
                        billable_units: None,
                        inference_seconds: None,
                    })
                    .await
                    .unwrap()
            })
        })
    });
    let mut answers = Vec::new();
    for c in completes.collect::<Vec<_>>() {
        answers.push(c.await.unwrap());
    }
    for pair in answers.chunks(2) {
        match (&pair[0], &pair[1]) {
            (
                Ok(Outcome::Completed {
                    completion: x,
                    replayed: rx,
                    ..
                }),
                Ok(Outcome::Completed {
                    completion: y,
                    replayed: ry,
                    ..
                }),
            ) => {
                assert_eq!(x, y, "on {on}: both answers are the one completion");
                assert!(rx != ry, "on {on}: exactly one of the two was first");
            }
            // A request that never started cannot complete, through either engine.
            (Err(Rejection::WrongState { .. }), Err(Rejection::WrongState { .. })) => {}
            other => panic!("on {on}: {other:?}"),
        }
    }
    assert_eq!(p.balance_and_load().await, (0, 0, 0), "on {on}");
    p.assert_reconciles().await;

    // Slots: a limit of 3 holds across both engines.
    p.set_limit(3).await;
    p.buy("credits-2", 100 * COST).await;
    let second = ids("slot", 12);
    let outcomes = p.submit_and_start(&second).await;
    assert_eq!(started(&outcomes), 3, "on {on}: {outcomes:?}");
    for o in &outcomes {
        assert!(
            matches!(
                o,
                Ok(Outcome::Started { .. }) | Err(Rejection::ConcurrencyLimit { limit: 3, .. })
            ),
            "on {on}: {o:?}"
        );
    }

    // Both sweepers run past the holds' deadline: each hold expires once.
    p.clock.fetch_add(31_000, Ordering::SeqCst);
    let (x, y) = tokio::join!(p.a.sweep_expired(), p.b.sweep_expired());
    assert_eq!(x.unwrap() + y.unwrap(), 3, "on {on}");
    let (x, y) = tokio::join!(p.a.sweep_expired(), p.b.sweep_expired());
    assert_eq!(
        x.unwrap() + y.unwrap(),
        0,
        "on {on}: nothing left to expire"
    );
    assert_eq!(p.balance_and_load().await, (100 * COST, 0, 0), "on {on}");
    p.assert_reconciles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_on_one_database_share_credit_slots_and_completions() {
    for backend in backends() {
        holds_slots_completions_and_sweeps(&backend).await;
    }
}

/// A server restart or a proxy cuts the store's connections: the batch that finds its
/// connection gone reconnects and runs again, and the caller never sees the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_postgres_connection_is_reopened_and_the_batch_run_again() {
    let Some(url) = postgres_url() else {
        eprintln!("skipped: needs TOLLGATE_TEST_POSTGRES_URL");
        return;
    };
    let p = Pair::new(&Backend::Postgres(url.clone())).await;
    p.buy("before", COST).await;
    // Every connection of this test's engines (named after its schema).
    let name = p.db.schema().expect("a schema").to_string();
    let cut = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let row = c
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .unwrap();
        row.get::<_, i64>(0)
    })
    .await
    .unwrap();
    assert!(cut >= 2, "both writers' connections were cut ({cut})");
    p.buy("after-a", COST).await;
    let again =
        p.a.execute(Op::Purchase {
            account: account(),
            purchase_id: PurchaseId::parse("after-a").unwrap(),
            amount: Nanos(COST),
            paid: true,
            expires_at: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(again, Ok(Outcome::Purchased { replayed: true, .. })),
        "{again:?}"
    );
    assert_eq!(p.balance_and_load().await, (2 * COST, 0, 0));
    p.assert_reconciles().await;
}
