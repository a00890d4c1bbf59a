//! Gateway requests through the engine, on every store at hand, on a manual clock: one
//! submitted, dispatched and answered is billed once (a late answer changes nothing), its row
//! written by the same batches, and the ledger reconciles; a deferred answer is billed by the
//! units posted for it, once, or expired by the sweeper, after which late units bill once;
//! two dispatchers taking one request in one batch, or through two engines sharing the
//! database, start it once; a lease that ran out, or that the engine ended, lets another
//! dispatcher take the request over without a second hold; a dispatch that holds counts as an
//! admission in the metrics, a takeover does not.

use crate::common::account;
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::catalog::document;
use tollgate_core::gateway::{
    Bill, GatewayInput, GatewayRecord, GatewayResult, GatewayState, Lease,
};
use tollgate_core::ids::{EndpointId, PurchaseId, RequestId};
use tollgate_core::machine::{Completion, Op, Outcome, Rejection, RequestStatus};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply, Engine};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{BillingMode, GatewayView};

/// `test/tts` per character, held for 2,000 characters (0.10 USD), served by one model server.
const CATALOG: &str = r#"
prices_read_on = "2026-01-15"
effective_from = "2026-01-01T00:00:00Z"

[[endpoint]]
id = "test/tts"
name = "Speech"
category = "text-to-speech"
hold_units = "2000"
hold_timeout_s = 60
price = { unit = "character", unit_price = "0.00005" }

[[endpoint.upstream]]
url = "http://10.0.0.7:8080"
slots = 4
timeout_s = 30
"#;

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
const SEC: i64 = 1_000;
/// The hold: 2,000 characters.
const HOLD: Nanos = Nanos(100_000_000);
/// What `chars` characters cost.
fn cost(chars: i64) -> Nanos {
    Nanos(chars * 50_000)
}
/// What "acme" bought.
const FUNDS: Nanos = Nanos(1_000_000_000);

fn rid(id: &str) -> RequestId {
    RequestId::parse(id).unwrap()
}

fn tts() -> EndpointId {
    EndpointId::parse("test/tts").unwrap()
}

fn submit(id: &str) -> Op {
    Op::GatewaySubmit {
        request_id: rid(id),
        account: account(),
        api_key: None,
        endpoint: tts(),
        input: GatewayInput {
            path: String::new(),
            input: Arc::from(r#"{"text":"hello"}"#),
            webhook: Some("https://hooks.example/tts".into()),
            no_retry: false,
        },
    }
}

fn dispatch(id: &str, owner: &str, until: i64) -> Op {
    Op::Dispatch {
        request_id: rid(id),
        lease: Lease {
            owner: Arc::from(owner),
            until: Timestamp(until),
        },
        machine_type: None,
    }
}

fn result(body: &[u8]) -> GatewayResult {
    GatewayResult {
        status_code: 200,
        content_type: Some("audio/wav".into()),
        body: Arc::from(body),
        error_type: None,
    }
}

/// The model server's answer, billed for `chars` characters.
fn answer(id: &str, body: &[u8], chars: i64) -> Op {
    Op::GatewayAnswer {
        request_id: rid(id),
        result: result(body),
        bill: Bill::Rate {
            billable_units: Some(Decimal::from(chars)),
            output: Box::default(),
            inference_seconds: Decimal::new(2_500, 3),
        },
    }
}

fn completion(o: &Result<Outcome, Rejection>) -> (&Completion, bool) {
    match o {
        Ok(Outcome::Completed {
            completion,
            replayed,
            ..
        }) => (completion, *replayed),
        other => panic!("not a completion: {other:?}"),
    }
}

struct Fixture {
    engine: Engine,
    clock: Arc<AtomicI64>,
}

/// Starts an engine on `db` at `T0` (on the shared `clock`).
fn start(db: &TestDb, clock: &Arc<AtomicI64>) -> Engine {
    let now = clock.clone();
    Engine::start(
        db.open().unwrap(),
        Arc::new(move || Timestamp(now.load(Ordering::SeqCst))),
    )
    .unwrap()
}

impl Fixture {
    /// An engine at `T0` with [`CATALOG`] and "acme", which bought [`FUNDS`].
    async fn new(db: &TestDb) -> Fixture {
        let clock = Arc::new(AtomicI64::new(T0));
        let engine = start(db, &clock);
        let doc = document::parse(CATALOG).unwrap();
        engine
            .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .unwrap();
        engine
            .admin(AdminCmd::CreateAccount {
                username: account(),
                billing: BillingMode::Prepaid,
            })
            .await
            .unwrap();
        let f = Fixture { engine, clock };
        let bought = f
            .run(Op::Purchase {
                account: account(),
                purchase_id: PurchaseId::parse("p-1").unwrap(),
                amount: FUNDS,
                paid: true,
                expires_at: None,
            })
            .await;
        assert!(bought.is_ok(), "{bought:?}");
        f
    }

    fn at(&self, t: i64) {
        self.clock.store(t, Ordering::SeqCst);
    }

    async fn run(&self, op: Op) -> Result<Outcome, Rejection> {
        self.engine.execute(op).await.unwrap()
    }

    async fn view(&self, id: &str) -> Option<GatewayView> {
        let id = rid(id);
        self.engine
            .read(move |r| r.gateway_request(&id))
            .await
            .unwrap()
    }

    async fn row(&self, id: &str) -> GatewayRecord {
        self.view(id)
            .await
            .unwrap_or_else(|| panic!("no row for {id}"))
            .record
    }

    async fn status(&self, id: &str) -> RequestStatus {
        let id = rid(id);
        self.engine
            .read(move |r| r.request(&id))
            .await
            .unwrap()
            .expect("the request")
            .status
    }

    /// "acme"'s (balance, held, in progress) as stored.
    async fn position(&self) -> (Nanos, Nanos, u32) {
        let now = Timestamp(self.clock.load(Ordering::SeqCst));
        let a = self
            .engine
            .read(move |r| r.account(&account(), now))
            .await
            .unwrap()
            .unwrap()
            .state;
        (a.credit.balance, a.credit.held, a.in_progress)
    }

    async fn candidates(&self) -> Vec<RequestId> {
        let now = Timestamp(self.clock.load(Ordering::SeqCst));
        self.engine
            .read(move |r| r.gateway_candidates(&tts(), now, 4, 16))
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.request_id)
            .collect()
    }

    async fn reconciled(&self, on: &str) {
        let rec = self.engine.read(|r| r.reconcile()).await.unwrap();
        assert!(rec.is_clean(), "on {on}: {}", rec.summary());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_dispatched_and_answered_a_request_is_billed_once_and_the_ledger_reconciles() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db).await;
        // The catalog's model server is stored with its endpoint.
        let catalog = f.engine.read(|r| r.load_catalog()).await.unwrap();
        let upstreams = &catalog.endpoints[&tts()].upstreams;
        assert_eq!(upstreams.len(), 1, "{on}");
        assert_eq!(
            (
                upstreams[0].url.as_str(),
                upstreams[0].slots,
                upstreams[0].timeout_s
            ),
            ("http://10.0.0.7:8080", 4, 30),
            "{on}"
        );

        // Queued: durable when answered, holding nothing, first in its endpoint's queue.
        let submitted = f.run(submit("gw-1")).await;
        assert!(
            matches!(
                submitted,
                Ok(Outcome::Submitted {
                    replayed: false,
                    ..
                })
            ),
            "{on}: {submitted:?}"
        );
        let view = f.view("gw-1").await.expect("its row");
        assert_eq!(view.queue_position, Some(0), "{on}");
        assert_eq!(view.record.state, GatewayState::Queued, "{on}");
        assert_eq!(
            view.record.input.webhook.as_deref(),
            Some("https://hooks.example/tts")
        );
        assert_eq!(f.position().await, (FUNDS, Nanos::ZERO, 0), "{on}");
        assert_eq!(f.candidates().await, [rid("gw-1")], "{on}");

        // Dispatched: held, leased, out of the queue.
        f.at(T0 + 2 * SEC);
        let dispatched = f.run(dispatch("gw-1", "server-a", T0 + 32 * SEC)).await;
        let Ok(Outcome::Dispatched {
            gateway,
            request,
            resumed: false,
        }) = &dispatched
        else {
            panic!("{on}: {dispatched:?}")
        };
        assert_eq!(request.hold, HOLD, "{on}");
        assert_eq!(
            &f.row("gw-1").await,
            gateway,
            "{on}: the row as the batch left it"
        );
        assert_eq!(f.view("gw-1").await.unwrap().queue_position, None, "{on}");
        assert_eq!(f.position().await, (FUNDS, HOLD, 1), "{on}");
        assert_eq!(f.status("gw-1").await, RequestStatus::InProgress, "{on}");
        assert!(f.candidates().await.is_empty(), "{on}");
        f.reconciled(on).await;

        // Its dispatcher renews the lease while it calls.
        f.at(T0 + 20 * SEC);
        let renewed = f
            .engine
            .admin(AdminCmd::RenewGatewayLeases {
                owner: "server-a".into(),
                requests: vec![rid("gw-1")],
                lease_ms: 30 * SEC,
            })
            .await
            .unwrap();
        assert_eq!(renewed, AdminReply::Held(vec![rid("gw-1")]), "{on}");
        assert_eq!(
            f.row("gw-1").await.lease.map(|l| l.until),
            Some(Timestamp(T0 + 50 * SEC)),
            "{on}"
        );

        // Answered: billed 1,000 characters, the rest of the hold released.
        f.at(T0 + 25 * SEC);
        let body = b"RIFF\x00\x00\xffWAVE";
        let answered = f.run(answer("gw-1", body, 1_000)).await;
        let (c, replayed) = completion(&answered);
        assert!(!replayed && c.billed, "{on}: {c:?}");
        assert_eq!(c.charge.total_nanos, cost(1_000), "{on}");
        let balance = Nanos(FUNDS.0 - cost(1_000).0);
        assert_eq!(c.balance_after, balance, "{on}");
        assert_eq!(f.position().await, (balance, Nanos::ZERO, 0), "{on}");
        assert_eq!(f.status("gw-1").await, RequestStatus::Completed, "{on}");
        let row = f.row("gw-1").await;
        assert_eq!(row.state, GatewayState::Done, "{on}");
        assert_eq!(row.result, Some(result(body)), "{on}");
        assert_eq!(row.finished_at, Some(Timestamp(T0 + 25 * SEC)), "{on}");
        assert_eq!(row.lease, None, "{on}");
        f.reconciled(on).await;

        // A late answer (another dispatcher's call that outlived its lease): the first again.
        f.at(T0 + 26 * SEC);
        let late = f.run(answer("gw-1", b"other", 1_900)).await;
        let (c2, replayed) = completion(&late);
        assert!(replayed, "{on}");
        assert_eq!(c2, c, "{on}");
        assert_eq!(f.position().await, (balance, Nanos::ZERO, 0), "{on}");
        assert_eq!(f.row("gw-1").await.result, Some(result(body)), "{on}");
        // Its lease is gone: not renewed.
        let renewed = f
            .engine
            .admin(AdminCmd::RenewGatewayLeases {
                owner: "server-a".into(),
                requests: vec![rid("gw-1")],
                lease_ms: 30 * SEC,
            })
            .await
            .unwrap();
        assert_eq!(renewed, AdminReply::Held(vec![]), "{on}");
        f.reconciled(on).await;

        // Past the retention, its row goes; the money stays where it is.
        let pruned = f
            .engine
            .admin(AdminCmd::PruneGatewayResults {
                before: Timestamp(T0 + 26 * SEC),
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(pruned, AdminReply::Count(1), "{on}");
        assert_eq!(f.view("gw-1").await, None, "{on}");
        assert_eq!(f.position().await, (balance, Nanos::ZERO, 0), "{on}");
        f.reconciled(on).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_answer_is_billed_by_its_units_once_or_expired_by_the_sweeper() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db).await;
        for id in ["gw-units", "gw-silent"] {
            assert!(f.run(submit(id)).await.is_ok(), "{on}");
            let d = f.run(dispatch(id, "server-a", T0 + 30 * SEC)).await;
            assert!(matches!(d, Ok(Outcome::Dispatched { .. })), "{on}: {d:?}");
            let deferred = f
                .run(Op::GatewayAnswer {
                    request_id: rid(id),
                    result: result(b"{}"),
                    bill: Bill::Deferred,
                })
                .await;
            assert_eq!(
                deferred,
                Ok(Outcome::AwaitingUnits { replayed: false }),
                "{on}"
            );
            assert_eq!(f.row(id).await.state, GatewayState::AwaitingUnits, "{on}");
        }
        assert_eq!(f.position().await, (FUNDS, Nanos(2 * HOLD.0), 2), "{on}");

        // The units of one, posted twice: billed once.
        f.at(T0 + 10 * SEC);
        let units = |id: &str, chars: i64| Op::GatewayUnits {
            request_id: rid(id),
            billable_units: Decimal::from(chars),
        };
        let first = f.run(units("gw-units", 700)).await;
        let (c, replayed) = completion(&first);
        assert!(!replayed && c.billed, "{on}");
        assert_eq!(c.charge.total_nanos, cost(700), "{on}");
        let again = f.run(units("gw-units", 900)).await;
        assert_eq!(completion(&again), (c, true), "{on}");
        assert_eq!(f.row("gw-units").await.state, GatewayState::Done, "{on}");
        let balance = Nanos(FUNDS.0 - cost(700).0);
        assert_eq!(f.position().await, (balance, HOLD, 1), "{on}");

        // The other's never came: the sweeper voids its hold at its deadline, not before.
        f.at(T0 + 59 * SEC);
        assert_eq!(f.engine.sweep_expired().await.unwrap(), 0, "{on}");
        f.at(T0 + 60 * SEC);
        assert_eq!(f.engine.sweep_expired().await.unwrap(), 1, "{on}");
        assert_eq!(f.status("gw-silent").await, RequestStatus::Expired, "{on}");
        assert_eq!(f.position().await, (balance, Nanos::ZERO, 0), "{on}");
        f.reconciled(on).await;

        // Posted late: billed once, without a hold (the endpoint bills late completions).
        f.at(T0 + 70 * SEC);
        let late = f.run(units("gw-silent", 300)).await;
        let (c, replayed) = completion(&late);
        assert!(!replayed && c.billed && c.late, "{on}: {c:?}");
        let balance = Nanos(balance.0 - cost(300).0);
        assert_eq!(f.position().await, (balance, Nanos::ZERO, 0), "{on}");
        assert_eq!(f.row("gw-silent").await.state, GatewayState::Done, "{on}");
        let again = f.run(units("gw-silent", 300)).await;
        assert!(completion(&again).1, "{on}");
        assert_eq!(f.position().await, (balance, Nanos::ZERO, 0), "{on}");
        f.reconciled(on).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_units_never_came_is_deleted_after_the_retention_like_a_finished_one() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db).await;
        for id in ["gw-abandoned", "gw-waiting"] {
            assert!(f.run(submit(id)).await.is_ok(), "{on}");
            assert!(
                f.run(dispatch(id, "server-a", T0 + 30 * SEC)).await.is_ok(),
                "{on}"
            );
        }
        let defer = |id: &str| Op::GatewayAnswer {
            request_id: rid(id),
            result: result(b"{}"),
            bill: Bill::Deferred,
        };
        assert!(f.run(defer("gw-abandoned")).await.is_ok(), "{on}");
        // Its hold runs out (60 s) before the other is answered.
        f.at(T0 + 60 * SEC);
        assert_eq!(f.engine.sweep_expired().await.unwrap(), 1, "{on}");
        assert!(f.run(defer("gw-waiting")).await.is_ok(), "{on}");
        let prune = |before: i64| AdminCmd::PruneGatewayResults {
            before: Timestamp(before),
            limit: 10,
        };
        // Expired at T0 + 60 s: kept until the retention's cutoff passes it.
        let reply = f.engine.admin(prune(T0 + 60 * SEC)).await.unwrap();
        assert_eq!(reply, AdminReply::Count(0), "{on}");
        let reply = f.engine.admin(prune(T0 + 61 * SEC)).await.unwrap();
        assert_eq!(reply, AdminReply::Count(1), "{on}");
        assert!(f.view("gw-abandoned").await.is_none(), "{on}");
        // Still awaiting its units within its hold: kept.
        assert_eq!(
            f.row("gw-waiting").await.state,
            GatewayState::AwaitingUnits,
            "{on}"
        );
        f.reconciled(on).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_in_one_batch_start_a_request_once_and_a_lease_that_ran_out_is_taken_over()
{
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db).await;
        assert!(f.run(submit("gw-1")).await.is_ok(), "{on}");

        // Both dispatchers found it among the candidates; their dispatches share a batch.
        let answers = f
            .engine
            .execute_many(vec![
                dispatch("gw-1", "server-a", T0 + 30 * SEC),
                dispatch("gw-1", "server-b", T0 + 30 * SEC),
            ])
            .await
            .unwrap();
        assert!(
            matches!(&answers[0], Ok(Outcome::Dispatched { resumed: false, .. })),
            "{on}: {answers:?}"
        );
        assert_eq!(
            answers[1],
            Err(Rejection::Leased {
                id: rid("gw-1"),
                owner: Arc::from("server-a"),
                until: Timestamp(T0 + 30 * SEC),
            }),
            "{on}"
        );
        let row = f.row("gw-1").await;
        assert_eq!(
            (row.lease.as_ref().map(|l| &*l.owner), row.dispatches),
            (Some("server-a"), 1),
            "{on}"
        );
        assert_eq!(f.position().await, (FUNDS, HOLD, 1), "{on}");
        f.reconciled(on).await;

        // Still leased a moment before it runs out; then taken over, on the same hold.
        f.at(T0 + 30 * SEC - 1);
        let refused = f.run(dispatch("gw-1", "server-b", T0 + 90 * SEC)).await;
        assert!(matches!(refused, Err(Rejection::Leased { .. })), "{on}");
        assert!(f.candidates().await.is_empty(), "{on}");
        f.at(T0 + 30 * SEC);
        assert_eq!(f.candidates().await, [rid("gw-1")], "{on}");
        let taken = f.run(dispatch("gw-1", "server-b", T0 + 90 * SEC)).await;
        assert!(
            matches!(taken, Ok(Outcome::Dispatched { resumed: true, .. })),
            "{on}: {taken:?}"
        );
        assert_eq!(f.position().await, (FUNDS, HOLD, 1), "{on}");
        // The first dispatcher, back: it holds nothing now.
        let renewed = f
            .engine
            .admin(AdminCmd::RenewGatewayLeases {
                owner: "server-a".into(),
                requests: vec![rid("gw-1")],
                lease_ms: 30 * SEC,
            })
            .await
            .unwrap();
        assert_eq!(renewed, AdminReply::Held(vec![]), "{on}");

        // A restart on SQLite (one server) ends every lease: the next dispatcher takes it
        // over at once. On PostgreSQL the leases are other servers': they run out instead.
        f.at(T0 + 40 * SEC);
        f.engine.admin(AdminCmd::EndGatewayLeases).await.unwrap();
        if matches!(backend, tollgate_store::testing::Backend::Postgres(_)) {
            assert!(f.candidates().await.is_empty(), "{on}");
            f.at(T0 + 90 * SEC);
        }
        assert_eq!(f.candidates().await, [rid("gw-1")], "{on}");
        let taken = f.run(dispatch("gw-1", "server-c", T0 + 100 * SEC)).await;
        assert!(
            matches!(taken, Ok(Outcome::Dispatched { resumed: true, .. })),
            "{on}: {taken:?}"
        );
        assert_eq!(f.row("gw-1").await.dispatches, 3, "{on}");
        assert_eq!(f.position().await, (FUNDS, HOLD, 1), "{on}");

        // Answered: the hold settles once.
        let answered = f.run(answer("gw-1", b"ok", 100)).await;
        assert!(completion(&answered).0.billed, "{on}");
        assert_eq!(
            f.position().await,
            (Nanos(FUNDS.0 - cost(100).0), Nanos::ZERO, 0),
            "{on}"
        );
        f.reconciled(on).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_sharing_the_database_dispatch_a_request_once() {
    for backend in backends() {
        let on = backend.name();
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db).await;
        // 50 USD paid in all: a concurrency limit of 8.
        let more = Nanos(49_000_000_000);
        let bought = f
            .run(Op::Purchase {
                account: account(),
                purchase_id: PurchaseId::parse("p-2").unwrap(),
                amount: more,
                paid: true,
                expires_at: None,
            })
            .await;
        assert!(bought.is_ok(), "{on}: {bought:?}");
        let funds = Nanos(FUNDS.0 + more.0);
        let other = start(&db, &f.clock);
        let ids: Vec<String> = (0..8).map(|i| format!("gw-{i}")).collect();
        for id in &ids {
            assert!(f.run(submit(id)).await.is_ok(), "{on}");
        }
        // Each engine's dispatcher takes every request at once.
        let (a, b) = tokio::join!(
            async {
                let mut out = Vec::new();
                for id in &ids {
                    out.push(f.run(dispatch(id, "server-a", T0 + 30 * SEC)).await);
                }
                out
            },
            async {
                let mut out = Vec::new();
                for id in ids.iter().rev() {
                    out.push(
                        other
                            .execute(dispatch(id, "server-b", T0 + 30 * SEC))
                            .await
                            .unwrap(),
                    );
                }
                out.reverse();
                out
            },
        );
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            let won = [a, b]
                .iter()
                .filter(|o| matches!(o, Ok(Outcome::Dispatched { .. })))
                .count();
            let lost = [a, b]
                .iter()
                .filter(|o| matches!(o, Err(Rejection::Leased { .. })))
                .count();
            assert_eq!((won, lost), (1, 1), "{on}: gw-{i}: {a:?} / {b:?}");
            assert_eq!(f.row(&ids[i]).await.dispatches, 1, "{on}");
        }
        // Eight holds, no more.
        assert_eq!(f.position().await, (funds, Nanos(8 * HOLD.0), 8), "{on}");
        f.reconciled(on).await;
        other.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_dispatch_that_holds_is_counted_as_an_admission_and_a_takeover_is_not() {
    let db = TestDb::new(&tollgate_store::testing::Backend::Sqlite);
    let f = Fixture::new(&db).await;
    let admission = |outcome: &str| {
        let text = f.engine.metrics().render();
        let name = format!("tollgate_admission_total{{outcome=\"{outcome}\"}}");
        crate::common::sample(&text, &name).unwrap_or_else(|| "0".into())
    };
    for id in ["gw-1", "gw-2", "gw-3"] {
        assert!(f.run(submit(id)).await.is_ok());
    }
    // Held: admitted, as a start is.
    let d = f.run(dispatch("gw-1", "server-a", T0 + 30 * SEC)).await;
    assert!(
        matches!(d, Ok(Outcome::Dispatched { resumed: false, .. })),
        "{d:?}"
    );
    assert_eq!(admission("admitted"), "1");
    // Taken over once its lease ran out: no second hold, no second admission.
    f.at(T0 + 30 * SEC);
    let d = f.run(dispatch("gw-1", "server-b", T0 + 60 * SEC)).await;
    assert!(
        matches!(d, Ok(Outcome::Dispatched { resumed: true, .. })),
        "{d:?}"
    );
    assert_eq!(admission("admitted"), "1");
    // The second fills the account's two slots; the third waits, refused.
    assert!(f
        .run(dispatch("gw-2", "server-a", T0 + 60 * SEC))
        .await
        .is_ok());
    assert_eq!(admission("admitted"), "2");
    let d = f.run(dispatch("gw-3", "server-a", T0 + 60 * SEC)).await;
    assert!(
        matches!(d, Err(Rejection::ConcurrencyLimit { .. })),
        "{d:?}"
    );
    assert_eq!(admission("concurrency_limit"), "1");
    assert_eq!(admission("admitted"), "2");
}
