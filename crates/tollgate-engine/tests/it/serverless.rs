//! Serverless runners through the engine, on every store at hand, on a manual clock: a bulk of
//! runner events is billed in its batch and a repeat is a duplicate; a refused bulk writes
//! nothing; the sweep settles due runners every minute (more than a page of them in one
//! sweep), so a prepaid account that runs out locks within a minute and its `account.locked`
//! event names its running runners (as does the event of a change of terms that locks it); a
//! silent runner is billed up to its last report and the grace, and no further; an
//! invoice-billed account accrues runner time on its usage invoice, the time of a month's last
//! minute on that month's invoice whatever operation comes first in the next month; a
//! catalog's surge prices are stored and bill surge runners; the sweep deletes event ids past
//! their retention, more than a page in one sweep, after which a repeat is judged as a new
//! event and never bills twice.

use crate::common::{account, catalog_and_account, invoices, sample};
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::events::EventData;
use tollgate_core::ids::{
    AppName, EnvironmentName, MachineType, PurchaseId, RunnerEventId, RunnerId,
};
use tollgate_core::machine::{InvoiceKind, Op, Outcome, Rejection};
use tollgate_core::serverless::{
    LiveRunner, RunnerEvent, RunnerEventResult, RunnerRecord, RunnerState, ServerlessSettings,
    MAX_EVENT_RETENTION_MS, MAX_GRACE_MS, MIN_EVENT_RETENTION_MS,
};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{Engine, EngineError, EVENT_PRUNE_LIMIT, RUNNER_SWEEP_LIMIT};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::{BillingEventsQuery, BillingMode, RollupQuery, Service};

/// 2026-06-01T00:00:00Z.
const T0: i64 = 1_780_272_000_000;
const SEC: i64 = 1_000;
const MIN: i64 = 60_000;
/// The catalog's GPU-H100 price per GPU-second (`common::CATALOG`), in nano-USD.
const H100_NANOS_PER_S: i64 = 525_000;

struct Fixture {
    engine: Engine,
    clock: Arc<AtomicI64>,
}

impl Fixture {
    /// An engine at `T0` with the common catalog and the account "acme", funded with `usd`
    /// when given.
    async fn new(db: &TestDb, billing: BillingMode, usd: Option<&str>) -> Fixture {
        let clock = Arc::new(AtomicI64::new(T0));
        let now = clock.clone();
        let engine = Engine::start(
            db.open().unwrap(),
            Arc::new(move || Timestamp(now.load(Ordering::SeqCst))),
        )
        .unwrap();
        catalog_and_account(&engine, billing).await;
        if let Some(usd) = usd {
            let bought = engine
                .execute(Op::Purchase {
                    account: account(),
                    purchase_id: PurchaseId::parse("p-1").unwrap(),
                    amount: Nanos::parse_usd(usd).unwrap(),
                    paid: true,
                    expires_at: None,
                })
                .await
                .unwrap();
            assert!(bought.is_ok(), "{bought:?}");
        }
        Fixture { engine, clock }
    }

    fn at(&self, t: i64) {
        self.clock.store(t, Ordering::SeqCst);
    }

    async fn bulk(&self, events: Vec<RunnerEvent>) -> Result<Vec<RunnerEventResult>, Rejection> {
        match self.engine.execute(Op::RunnerEvents(events)).await.unwrap() {
            Ok(Outcome::RunnerEvents { results }) => Ok(results),
            Ok(other) => panic!("a bulk of runner events answered {other:?}"),
            Err(e) => Err(e),
        }
    }

    async fn balance(&self) -> Nanos {
        let now = Timestamp(self.clock.load(Ordering::SeqCst));
        self.engine
            .read(move |r| r.account(&account(), now))
            .await
            .unwrap()
            .unwrap()
            .state
            .credit
            .balance
    }

    async fn runners(&self) -> Vec<RunnerRecord> {
        self.engine
            .read(|r| r.runners(&account(), 10_000))
            .await
            .unwrap()
    }

    /// The account's serverless usage in the rollups: (GPU-seconds, line items, nano-USD).
    async fn serverless_usage(&self) -> (Decimal, u64, Nanos) {
        let rows = self
            .engine
            .read(|r| {
                r.usage(&RollupQuery {
                    account: account(),
                    from: Timestamp(T0 - 60 * MIN),
                    to: Timestamp(T0 + 1_440 * MIN),
                    endpoints: vec![],
                    api_keys: vec![],
                    whole_hours: false,
                    service: Some(Service::Serverless),
                })
            })
            .await
            .unwrap();
        rows.iter()
            .fold((Decimal::ZERO, 0, Nanos::ZERO), |(q, n, t), (_, u)| {
                (q + u.quantity, n + u.requests, Nanos(t.0 + u.total.0))
            })
    }

    async fn reconciled(&self, on: &str) {
        let rec = self.engine.read(|r| r.reconcile()).await.unwrap();
        assert!(rec.is_clean(), "on {on}: {}", rec.summary());
    }

    async fn events(&self) -> Vec<tollgate_store::StoredEvent> {
        self.engine
            .read(|r| r.webhook_events(0, 1_000))
            .await
            .unwrap()
    }
}

/// A report of "acme"'s runner of "my-app" (production) on `gpus` H100s.
fn report(event_id: &str, runner: &str, gpus: u32, state: RunnerState, at: i64) -> RunnerEvent {
    RunnerEvent {
        event_id: RunnerEventId::parse(event_id).unwrap(),
        runner: RunnerId::parse(runner).unwrap(),
        account: account(),
        app: AppName::parse("my-app").unwrap(),
        environment: Some(EnvironmentName::parse("production").unwrap()),
        machine_type: MachineType::parse("GPU-H100").unwrap(),
        num_gpus: gpus,
        state,
        at: Timestamp(at),
        is_surge: false,
    }
}

#[tokio::test]
async fn a_bulk_of_runner_events_bills_in_its_batch_and_a_repeat_is_a_duplicate() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("100.00")).await;
        let before = f.balance().await;
        // Set up for 30 s, then running for a minute: 90 GPU-seconds billed once the runner
        // goes idle (the report bills the time since the one before).
        let bulk = vec![
            report("ev-1", "rn-1", 1, RunnerState::Setup, T0),
            report("ev-2", "rn-1", 1, RunnerState::Running, T0 + 30 * SEC),
            report("ev-3", "rn-1", 1, RunnerState::Idle, T0 + 90 * SEC),
        ];
        f.at(T0 + 95 * SEC);
        let results = f.bulk(bulk.clone()).await.unwrap();
        assert_eq!(results.len(), 3, "{backend:?}");
        assert!(results.iter().all(|r| !r.duplicate));
        let billed = Nanos(results.iter().map(|r| r.billed.0).sum());
        assert_eq!(
            billed,
            Nanos(90 * H100_NANOS_PER_S),
            "{backend:?}: {results:?}"
        );
        assert_eq!(f.balance().await, Nanos(before.0 - billed.0));
        assert_eq!(results[2].balance_after, f.balance().await);
        let (quantity, pieces, total) = f.serverless_usage().await;
        assert_eq!(
            (quantity, total),
            (Decimal::from(90), billed),
            "{backend:?}"
        );
        // Cut at the minute: set up [0, 30 s), running [30 s, 60 s) and [60 s, 90 s).
        assert_eq!(pieces, 3);
        let runners = f.runners().await;
        assert_eq!(runners.len(), 1);
        let r = &runners[0];
        assert_eq!(
            (r.state, r.last_at, r.settled_until, r.billed),
            (
                RunnerState::Idle,
                Timestamp(T0 + 90 * SEC),
                Timestamp(T0 + 90 * SEC),
                billed
            )
        );
        // Model billing events do not show runner time.
        let q = BillingEventsQuery {
            account: account(),
            from: Timestamp(T0 - MIN),
            to: Timestamp(T0 + 60 * MIN),
            endpoints: vec![],
            request_ids: vec![],
            api_keys: vec![],
            after: None,
            newest_first: false,
            limit: 100,
        };
        assert!(f
            .engine
            .read(move |r| r.billing_events(&q))
            .await
            .unwrap()
            .is_empty());
        f.reconciled(backend.name()).await;

        // The same bulk again, later: every event a duplicate, nothing billed or written.
        f.at(T0 + 100 * SEC);
        let again = f.bulk(bulk).await.unwrap();
        assert!(
            again.iter().all(|r| r.duplicate && r.billed == Nanos::ZERO),
            "{again:?}"
        );
        assert_eq!(f.balance().await, Nanos(before.0 - billed.0));
        assert_eq!(f.serverless_usage().await.2, billed);
        assert_eq!(f.runners().await, runners);
        f.reconciled(backend.name()).await;

        let text = f.engine.metrics().render();
        assert_eq!(
            sample(&text, "tollgate_runner_events_total{result=\"applied\"}").as_deref(),
            Some("3")
        );
        assert_eq!(
            sample(&text, "tollgate_runner_events_total{result=\"duplicate\"}").as_deref(),
            Some("3")
        );
        f.engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_bulk_writes_nothing() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("10.00")).await;
        let before = f.balance().await;
        f.at(T0 + 2 * MIN);
        let mut unknown = report("ev-2", "rn-2", 1, RunnerState::Running, T0 + MIN);
        unknown.machine_type = MachineType::parse("GPU-NONE").unwrap();
        let refused = f
            .bulk(vec![
                report("ev-1", "rn-1", 1, RunnerState::Running, T0),
                unknown,
            ])
            .await;
        match refused {
            Err(Rejection::InvalidRunnerEvent {
                index, event_id, ..
            }) => assert_eq!((index, event_id.as_str()), (1, "ev-2"), "{backend:?}"),
            other => panic!("{backend:?}: {other:?}"),
        }
        assert!(f.runners().await.is_empty(), "{backend:?}");
        assert_eq!(f.balance().await, before);
        assert_eq!(f.serverless_usage().await.1, 0);
        f.reconciled(backend.name()).await;
        // The good event was not applied: sent alone, it is new.
        let results = f
            .bulk(vec![report("ev-1", "rn-1", 1, RunnerState::Running, T0)])
            .await
            .unwrap();
        assert!(!results[0].duplicate, "{backend:?}");
        f.engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_runner_that_runs_the_account_out_locks_it_within_a_minute_naming_the_runner() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        // 0.30 USD, and a runner on 8 H100s: 0.0042 USD a second, 0.252 a minute.
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("0.30")).await;
        let credits = f.balance().await.0;
        let per_second = 8 * H100_NANOS_PER_S;
        f.bulk(vec![report("ev-1", "rn-big", 8, RunnerState::Running, T0)])
            .await
            .unwrap();
        // The credits run out 71.4 s in; a sweep each minute.
        let out_at = T0 + credits * SEC / per_second;
        let mut locked_at = None;
        for minute in 1..=4 {
            f.at(T0 + minute * MIN);
            f.engine.sweep_expired().await.unwrap();
            let events = f.events().await;
            let locked: Vec<_> = events
                .iter()
                .filter_map(|e| match &e.data {
                    EventData::AccountLocked {
                        running_runners, ..
                    } => Some((e.created_at, running_runners.clone())),
                    _ => None,
                })
                .collect();
            match (locked.as_slice(), locked_at) {
                ([], _) => assert!(f.balance().await.0 > 0, "{backend:?}"),
                ([(at, named)], None) => {
                    locked_at = Some(*at);
                    assert_eq!(
                        named,
                        &vec![LiveRunner {
                            runner_id: RunnerId::parse("rn-big").unwrap(),
                            app: AppName::parse("my-app").unwrap(),
                            environment: Some(EnvironmentName::parse("production").unwrap()),
                            machine_type: MachineType::parse("GPU-H100").unwrap(),
                            num_gpus: 8,
                            state: RunnerState::Running,
                        }],
                        "{backend:?}"
                    );
                }
                ([_], Some(_)) => {}
                (more, _) => panic!("{backend:?}: locked more than once: {more:?}"),
            }
        }
        let locked_at = locked_at.expect("the account locked");
        assert!(
            locked_at.0 > out_at && locked_at.0 <= out_at + MIN,
            "{backend:?}: ran out at {out_at}, locked at {locked_at:?}"
        );
        // Each settled minute was billed in full (the platform decides whether to stop it).
        assert_eq!(f.balance().await, Nanos(credits - 4 * 60 * per_second));
        let row = f
            .engine
            .read(|r| r.account(&account(), Timestamp(T0 + 4 * MIN)))
            .await
            .unwrap()
            .unwrap();
        assert!(row.state.lock_reason().is_some(), "{backend:?}");
        f.reconciled(backend.name()).await;
        f.engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_silent_runner_is_billed_to_its_last_report_and_the_grace_and_no_further() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("100.00")).await;
        // The grace is checked: 1 s to a day.
        for grace_ms in [999, 0, MAX_GRACE_MS + 1] {
            assert!(
                matches!(
                    f.engine.set_serverless_settings(ServerlessSettings {
                        grace_ms,
                        ..ServerlessSettings::default()
                    }),
                    Err(EngineError::Invalid(_))
                ),
                "{grace_ms}"
            );
        }
        f.engine
            .set_serverless_settings(ServerlessSettings {
                grace_ms: 150 * SEC,
                ..ServerlessSettings::default()
            })
            .unwrap();
        assert_eq!(f.engine.serverless_settings().grace_ms, 150 * SEC);
        let before = f.balance().await;
        // One report 10 s into the minute, then silence.
        f.at(T0 + 10 * SEC);
        f.bulk(vec![report(
            "ev-1",
            "rn-1",
            2,
            RunnerState::Running,
            T0 + 10 * SEC,
        )])
        .await
        .unwrap();
        for minute in 1..=12 {
            f.at(T0 + minute * MIN + 5 * SEC);
            f.engine.sweep_expired().await.unwrap();
        }
        // Billed [10 s, 160 s): 150 s on 2 GPUs.
        let billed = 150 * 2 * H100_NANOS_PER_S;
        assert_eq!(f.balance().await, Nanos(before.0 - billed), "{backend:?}");
        let (quantity, _, total) = f.serverless_usage().await;
        assert_eq!((quantity, total), (Decimal::from(300), Nanos(billed)));
        let r = &f.runners().await[0];
        assert_eq!(
            (r.settled_until, r.cap_at, r.billed),
            (
                Timestamp(T0 + 160 * SEC),
                Timestamp(T0 + 160 * SEC),
                Nanos(billed)
            ),
            "{backend:?}"
        );
        // The history counts the same time: 50 s, 60 s and 40 s running.
        let history = f
            .engine
            .read(|r| {
                r.runner_history(&tollgate_store::RunnerHistoryQuery {
                    account: account(),
                    app: AppName::parse("my-app").unwrap(),
                    from: Timestamp(T0),
                    to: Timestamp(T0 + 60 * MIN),
                })
            })
            .await
            .unwrap();
        let running: Vec<(i64, i64)> = history
            .iter()
            .map(|(slot, t)| (slot.0 - T0, t.running_ms))
            .collect();
        assert_eq!(
            running,
            [(0, 50 * SEC), (MIN, 60 * SEC), (2 * MIN, 40 * SEC)]
        );
        f.reconciled(backend.name()).await;
        f.engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_invoice_billed_account_accrues_runner_time_on_its_usage_invoice() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Invoice, None).await;
        f.at(T0 + 3 * MIN);
        let results = f
            .bulk(vec![
                report("ev-1", "rn-1", 4, RunnerState::Running, T0),
                report("ev-2", "rn-1", 4, RunnerState::Terminated, T0 + 150 * SEC),
            ])
            .await
            .unwrap();
        let billed = Nanos(results.iter().map(|r| r.billed.0).sum());
        assert_eq!(billed, Nanos(150 * 4 * H100_NANOS_PER_S), "{backend:?}");
        let issued = f
            .engine
            .close_invoice_periods(Some(account()), None)
            .await
            .unwrap();
        assert_eq!(issued.len(), 1, "{backend:?}");
        let invoice = invoices(&f.engine)
            .await
            .into_iter()
            .find(|i| i.kind == InvoiceKind::Usage)
            .unwrap();
        assert_eq!(invoice.total, billed, "{backend:?}");
        let line = tollgate_core::serverless::Line {
            app: AppName::parse("my-app").unwrap(),
            environment: Some(EnvironmentName::parse("production").unwrap()),
            machine_type: MachineType::parse("GPU-H100").unwrap(),
            is_surge: false,
        };
        let lines: Vec<_> = invoice
            .lines
            .iter()
            .map(|l| {
                (
                    l.endpoint.clone(),
                    l.unit.as_str(),
                    l.totals.quantity,
                    l.totals.total,
                )
            })
            .collect();
        assert_eq!(
            lines,
            [(line.endpoint(), "second", Decimal::from(600), billed)],
            "{backend:?}"
        );
        f.reconciled(backend.name()).await;
        f.engine.shutdown().await.unwrap();
    }
}

/// The first operation of a new month that touches an invoice-billed account with a runner.
#[derive(Clone, Copy, Debug)]
enum FirstOfMonth {
    /// The month's close (`close_elapsed_months`), which names the account, not its runner.
    Close,
    /// The sweep, which settles the runner.
    Sweep,
    /// A usage event of the account.
    UsageEvent,
}

#[tokio::test]
async fn runner_time_across_a_months_end_lands_on_each_months_invoice() {
    // 2026-07-01T00:00:00Z.
    let july = T0 + 30 * 1_440 * MIN;
    for backend in backends() {
        for first in [
            FirstOfMonth::Close,
            FirstOfMonth::Sweep,
            FirstOfMonth::UsageEvent,
        ] {
            let on = format!("{backend:?}, {first:?} first");
            let db = TestDb::new(&backend);
            let f = Fixture::new(&db, BillingMode::Invoice, None).await;
            // 4 GPUs from 23:58:20 on 30 June to 00:01:40 on 1 July: 100 s in each month. The
            // sweep runs every minute; the month's first operation comes before it.
            let start = july - 2 * MIN + 20 * SEC;
            f.at(start);
            f.bulk(vec![report("ev-1", "rn-1", 4, RunnerState::Running, start)])
                .await
                .unwrap();
            f.at(july - MIN + 5 * SEC);
            f.engine.sweep_expired().await.unwrap();
            f.at(july + 2 * SEC);
            let mut usage = Nanos::ZERO;
            match first {
                FirstOfMonth::Close => {
                    let issued = f.engine.close_elapsed_months().await.unwrap();
                    assert_eq!(issued.len(), 1, "{on}");
                }
                FirstOfMonth::Sweep => {
                    f.engine.sweep_expired().await.unwrap();
                }
                FirstOfMonth::UsageEvent => {
                    let o = f
                        .engine
                        .execute(crate::common::event("u-1", july + SEC, 1))
                        .await
                        .unwrap();
                    let Ok(Outcome::Completed { completion, .. }) = o else {
                        panic!("{on}: {o:?}");
                    };
                    usage = completion.charge.total_nanos;
                }
            }
            for sweep in [july + 5 * SEC, july + MIN + 5 * SEC] {
                f.at(sweep);
                f.engine.sweep_expired().await.unwrap();
            }
            f.at(july + MIN + 45 * SEC);
            f.bulk(vec![report(
                "ev-2",
                "rn-1",
                4,
                RunnerState::Terminated,
                july + MIN + 40 * SEC,
            )])
            .await
            .unwrap();
            f.at(july + 2 * MIN + 5 * SEC);
            f.engine.sweep_expired().await.unwrap();
            f.engine
                .close_invoice_periods(Some(account()), None)
                .await
                .unwrap();

            let hundred_seconds = Nanos(100 * 4 * H100_NANOS_PER_S);
            let usage_invoices: Vec<_> = invoices(&f.engine)
                .await
                .into_iter()
                .filter(|i| i.kind == InvoiceKind::Usage)
                .collect();
            let got: Vec<_> = usage_invoices
                .iter()
                .map(|i| (i.period_end.0 <= july, i.total))
                .collect();
            assert_eq!(
                got,
                [
                    (true, hundred_seconds),
                    (false, Nanos(hundred_seconds.0 + usage.0))
                ],
                "{on}"
            );
            let june = &usage_invoices[0];
            assert_eq!(june.period_end, Timestamp(july), "{on}");
            let runner_lines = |i: &tollgate_store::InvoiceRecord| -> Vec<(Decimal, Nanos)> {
                i.lines
                    .iter()
                    .filter(|l| tollgate_core::serverless::Line::is_key(l.endpoint.as_str()))
                    .map(|l| (l.totals.quantity, l.totals.total))
                    .collect()
            };
            for invoice in &usage_invoices {
                assert_eq!(
                    runner_lines(invoice),
                    [(Decimal::from(400), hundred_seconds)],
                    "{on}"
                );
            }
            // The line items, the rollups and the runner agree: 200 s in all, 100 s of them
            // dated in June.
            let rows = f
                .engine
                .read(move |r| {
                    r.usage(&RollupQuery {
                        account: account(),
                        from: Timestamp(july - 60 * MIN),
                        to: Timestamp(july),
                        endpoints: vec![],
                        api_keys: vec![],
                        whole_hours: false,
                        service: Some(Service::Serverless),
                    })
                })
                .await
                .unwrap();
            let june_quantity: Decimal = rows.iter().map(|(_, u)| u.quantity).sum();
            assert_eq!(june_quantity, Decimal::from(400), "{on}");
            let runner = &f.runners().await[0];
            assert_eq!(runner.billed, Nanos(2 * hundred_seconds.0), "{on}");
            // The sweeps at 23:59:05 and 00:01:05 settled time; the one at 00:00:02 (when it
            // comes first) found it settled before the close, and is not counted.
            let text = f.engine.metrics().render();
            assert_eq!(
                sample(&text, "tollgate_runner_settlements_total").as_deref(),
                Some("2"),
                "{on}"
            );
            f.reconciled(&on).await;
            f.engine.shutdown().await.unwrap();
        }
    }
}

#[tokio::test]
async fn one_sweep_settles_more_than_a_page_of_due_runners() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("1000.00")).await;
        let n = RUNNER_SWEEP_LIMIT * 2 + 10;
        let bulk = (0..n)
            .map(|i| {
                report(
                    &format!("ev-{i:04}"),
                    &format!("rn-{i:04}"),
                    1,
                    RunnerState::Running,
                    T0,
                )
            })
            .collect();
        f.at(T0 + 10 * SEC);
        f.bulk(bulk).await.unwrap();
        f.at(T0 + MIN + 10 * SEC);
        f.engine.sweep_expired().await.unwrap();
        let runners = f.runners().await;
        assert_eq!(runners.len(), n);
        assert!(
            runners
                .iter()
                .all(|r| r.settled_until == Timestamp(T0 + MIN)
                    && r.billed == Nanos(60 * H100_NANOS_PER_S)),
            "{backend:?}"
        );
        let text = f.engine.metrics().render();
        assert_eq!(
            sample(&text, "tollgate_runner_settlements_total"),
            Some(n.to_string()),
            "{backend:?}"
        );
        f.reconciled(backend.name()).await;
        f.engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn runners_whose_settlement_is_refused_do_not_hold_back_the_others() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("1000.00")).await;
        // A second machine type, whose runners come first in the sweep's order (same cursor,
        // lower ids), then its price gone from the catalog: their settlements are refused, and
        // more than two pages of them do not keep one sweep from the runners after them.
        let with_a100 = crate::common::CATALOG.replace(
            "[machines]\nGPU-H100 = \"0.000525\"\n",
            "[machines]\nGPU-H100 = \"0.000525\"\nGPU-A100 = \"0.0003\"\n",
        );
        let doc = tollgate_core::catalog::document::parse(&with_a100).unwrap();
        f.engine
            .admin(tollgate_engine::AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .unwrap();
        let stuck = RUNNER_SWEEP_LIMIT * 2 + 3;
        let mut bulk: Vec<RunnerEvent> = (0..stuck)
            .map(|i| {
                let mut e = report(
                    &format!("ev-a-{i:04}"),
                    &format!("rn-a-{i:04}"),
                    1,
                    RunnerState::Running,
                    T0,
                );
                e.machine_type = MachineType::parse("GPU-A100").unwrap();
                e
            })
            .collect();
        bulk.extend((0..5).map(|i| {
            report(
                &format!("ev-h-{i}"),
                &format!("rn-h-{i}"),
                1,
                RunnerState::Running,
                T0,
            )
        }));
        f.at(T0 + 10 * SEC);
        f.bulk(bulk).await.unwrap();
        // A catalog document cannot take a machine price away; the stored prices can lose
        // one (written by hand, or by an older version of the catalog).
        let mut h100_only = tollgate_core::price::MachinePrices::new();
        h100_only.insert(
            MachineType::parse("GPU-H100").unwrap(),
            Decimal::new(525, 6),
        );
        // (On its own thread: PostgreSQL's blocking client runs a runtime of its own.)
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut other = db.open().unwrap();
                other
                    .transaction(&mut |tx| tx.set_machine_prices(&h100_only))
                    .unwrap();
            });
        });
        f.at(T0 + MIN + 10 * SEC);
        f.engine.sweep_expired().await.unwrap();
        let runners = f.runners().await;
        let (a100, h100): (Vec<_>, Vec<_>) = runners
            .iter()
            .partition(|r| r.machine_type.as_str() == "GPU-A100");
        assert_eq!((a100.len(), h100.len()), (stuck, 5));
        assert!(
            h100.iter().all(|r| r.settled_until == Timestamp(T0 + MIN)
                && r.billed == Nanos(60 * H100_NANOS_PER_S)),
            "{backend:?}: {h100:?}"
        );
        assert!(
            a100.iter()
                .all(|r| r.settled_until == Timestamp(T0) && r.billed == Nanos::ZERO),
            "{backend:?}"
        );
        f.reconciled(backend.name()).await;
        f.engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_catalogs_surge_prices_are_stored_and_bill_surge_runners() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("10.00")).await;
        // The catalog again, with surge prices: stored with it, and merged like machine prices.
        let text = crate::common::CATALOG.replace(
            "[machines]\nGPU-H100 = \"0.000525\"\n",
            "[machines]\nGPU-H100 = \"0.000525\"\n\n[machines_surge]\nGPU-H100 = \"0.0007875\"\n",
        );
        let doc = tollgate_core::catalog::document::parse(&text).unwrap();
        assert_eq!(doc.machines_surge.len(), 1);
        f.engine
            .admin(tollgate_engine::AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .unwrap();
        let h100 = MachineType::parse("GPU-H100").unwrap();
        let surge = Decimal::new(7_875, 7);
        assert_eq!(f.engine.catalog().machines_surge.get(&h100), Some(&surge));
        let stored = f.engine.read(|r| r.load_catalog()).await.unwrap();
        assert_eq!(
            stored.machines_surge.get(&h100),
            Some(&surge),
            "{backend:?}"
        );
        // A document without surge prices keeps them.
        let doc = tollgate_core::catalog::document::parse(crate::common::CATALOG).unwrap();
        f.engine
            .admin(tollgate_engine::AdminCmd::ApplyCatalog(Box::new(doc)))
            .await
            .unwrap();
        let stored = f.engine.read(|r| r.load_catalog()).await.unwrap();
        assert_eq!(
            stored.machines_surge.get(&h100),
            Some(&surge),
            "{backend:?}"
        );

        // A surge runner's minute, at the surge price.
        let mut start = report("ev-1", "rn-s", 1, RunnerState::Running, T0);
        start.is_surge = true;
        let mut stop = report("ev-2", "rn-s", 1, RunnerState::Terminated, T0 + MIN);
        stop.is_surge = true;
        f.at(T0 + MIN);
        let results = f.bulk(vec![start, stop]).await.unwrap();
        let billed = Nanos(results.iter().map(|r| r.billed.0).sum());
        assert_eq!(billed, Nanos(60 * 787_500), "{backend:?}");
        f.reconciled(backend.name()).await;
        f.engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_change_of_terms_that_locks_the_account_names_its_live_runners() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("10.00")).await;
        f.bulk(vec![
            report("ev-1", "rn-live", 1, RunnerState::Idle, T0),
            report("ev-2", "rn-gone", 1, RunnerState::Running, T0),
            report("ev-3", "rn-gone", 1, RunnerState::Terminated, T0 + 30 * SEC),
        ])
        .await
        .unwrap();
        // A lock threshold above the balance locks the account at once.
        f.at(T0 + MIN);
        f.engine
            .admin(tollgate_engine::AdminCmd::SetTerms {
                username: account(),
                change: tollgate_core::terms::TermsChange {
                    lock_threshold: Some(Nanos::parse_usd("20.00").unwrap()),
                    ..Default::default()
                },
            })
            .await
            .unwrap();
        let named: Vec<Vec<LiveRunner>> = f
            .events()
            .await
            .into_iter()
            .filter_map(|e| match e.data {
                EventData::AccountLocked {
                    running_runners, ..
                } => Some(running_runners),
                _ => None,
            })
            .collect();
        let ids: Vec<Vec<&str>> = named
            .iter()
            .map(|runners| runners.iter().map(|r| r.runner_id.as_str()).collect())
            .collect();
        assert_eq!(ids, [["rn-live"]], "{backend:?}");
        assert_eq!(named[0][0].state, RunnerState::Idle);
        f.engine.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn the_sweep_prunes_event_ids_past_the_retention_and_a_repeat_after_it_never_bills_twice() {
    const HOUR: i64 = 60 * MIN;
    for backend in backends() {
        let db = TestDb::new(&backend);
        let f = Fixture::new(&db, BillingMode::Prepaid, Some("100.00")).await;
        // The retention is checked: 1 hour to 8760 hours.
        for event_retention_ms in [0, MIN_EVENT_RETENTION_MS - 1, MAX_EVENT_RETENTION_MS + 1] {
            assert!(
                matches!(
                    f.engine.set_serverless_settings(ServerlessSettings {
                        event_retention_ms,
                        ..ServerlessSettings::default()
                    }),
                    Err(EngineError::Invalid(_))
                ),
                "{event_retention_ms}"
            );
        }
        f.engine
            .set_serverless_settings(ServerlessSettings {
                event_retention_ms: HOUR,
                ..ServerlessSettings::default()
            })
            .unwrap();
        assert_eq!(f.engine.serverless_settings().event_retention_ms, HOUR);
        // More than two pages of event ids: a runner reporting every second, running, then
        // idle at its last report.
        let n = EVENT_PRUNE_LIMIT * 2 + 10;
        let last_at = T0 + (n as i64 - 1) * SEC;
        let bulk: Vec<RunnerEvent> = (0..n)
            .map(|i| {
                let state = if i + 1 == n {
                    RunnerState::Idle
                } else {
                    RunnerState::Running
                };
                report(&format!("ev-{i:05}"), "rn-1", 1, state, T0 + i as i64 * SEC)
            })
            .collect();
        let (first, last) = (bulk[0].clone(), bulk[n - 1].clone());
        f.at(last_at + SEC);
        f.bulk(bulk).await.unwrap();

        // Within the retention: a repeat is a duplicate, and the sweep keeps every id (it
        // settles the runner's idle time up to its grace).
        f.at(last_at + 30 * MIN);
        let again = f.bulk(vec![first.clone()]).await.unwrap();
        assert!(
            again[0].duplicate && again[0].billed == Nanos::ZERO,
            "{backend:?}: {again:?}"
        );
        f.engine.sweep_expired().await.unwrap();
        let pruned = |f: &Fixture| {
            sample(
                &f.engine.metrics().render(),
                "tollgate_runner_events_pruned_total",
            )
        };
        assert_eq!(pruned(&f).as_deref(), Some("0"), "{backend:?}");
        let balance = f.balance().await;
        let usage = f.serverless_usage().await;
        let runners = f.runners().await;
        // Running n - 1 seconds, then idle for the grace.
        assert_eq!(
            runners[0].billed,
            Nanos((n as i64 - 1 + 300) * H100_NANOS_PER_S),
            "{backend:?}"
        );
        assert_eq!(usage.2, runners[0].billed);

        // Past the retention: one sweep deletes every id, page after full page.
        f.at(last_at + 3 * HOUR);
        f.engine.sweep_expired().await.unwrap();
        assert_eq!(pruned(&f), Some(n.to_string()), "{backend:?}");
        // The first report sent again is no longer a duplicate: judged as a new event, it is
        // older than the runner's last report and refused, and nothing is written.
        match f.bulk(vec![first.clone()]).await {
            Err(Rejection::InvalidRunnerEvent {
                index,
                event_id,
                reason,
            }) => {
                assert_eq!((index, event_id.as_str()), (0, "ev-00000"), "{backend:?}");
                assert!(reason.contains("time going backwards"), "{reason}");
            }
            other => panic!("{backend:?}: {other:?}"),
        }
        // The last report sent again: applied at the instant the runner is already accounted
        // past, it bills nothing, and neither does the next sweep.
        let r = f.bulk(vec![last.clone()]).await.unwrap();
        assert_eq!(
            (r[0].duplicate, r[0].billed, r[0].balance_after),
            (false, Nanos::ZERO, balance),
            "{backend:?}"
        );
        f.at(last_at + 3 * HOUR + 2 * MIN);
        f.engine.sweep_expired().await.unwrap();
        assert_eq!(f.balance().await, balance, "{backend:?}");
        assert_eq!(f.serverless_usage().await, usage, "{backend:?}");
        let after = f.runners().await;
        assert_eq!(
            (after[0].settled_until, after[0].cap_at, after[0].billed),
            (
                runners[0].settled_until,
                runners[0].cap_at,
                runners[0].billed
            ),
            "{backend:?}"
        );
        // Its id is kept again from now: a repeat within the retention is a duplicate.
        let dup = f.bulk(vec![last]).await.unwrap();
        assert!(dup[0].duplicate, "{backend:?}");
        assert_eq!(pruned(&f), Some(n.to_string()), "{backend:?}");
        f.reconciled(backend.name()).await;
        f.engine.shutdown().await.unwrap();
    }
}
