//! Spending limits through the engine: many starts at once against a block limit admit
//! exactly what fits (through one engine, and through two engines on one database); a limit
//! resets at its period's edge in its zone, on the engine's manual clock; a new limit starts
//! with its period's charges and the running holds; changes keep the period's state; refused
//! commands write nothing. On every store at hand.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tollgate_core::catalog::document;
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, LimitId, PurchaseId, RequestId};
use tollgate_core::limits::{
    LimitAction, LimitChange, LimitScope, LimitState, Period, SpendingLimit,
};
use tollgate_core::machine::{Op, Outcome, Rejection, UsageEvent};
use tollgate_core::price::Output;
use tollgate_core::terms::TermsChange;
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, AdminReply, Engine, EngineError};
use tollgate_store::testing::{backends, Backend, TestDb};
use tollgate_store::{ApiKeyRecord, BillingMode, Scope, StoreError};

const CATALOG: &str = r#"
prices_read_on = "2026-01-15"
effective_from = "2026-01-01T00:00:00Z"

[[endpoint]]
id = "t/image"
name = "Image"
category = "text-to-image"
hold_units = "1"
hold_timeout_s = 600
price = { unit = "image", unit_price = "0.05" }
"#;

/// One image: what a start holds and a completion of one image costs, 0.05 USD.
const COST: i64 = 50_000_000;

fn ts(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

fn account() -> AccountId {
    AccountId::parse("limited").unwrap()
}

fn key() -> ApiKeyId {
    ApiKeyId::parse("key-1").unwrap()
}

/// Engines on one database, on one manual clock.
struct Setup {
    engines: Vec<Engine>,
    clock: Arc<AtomicI64>,
    _db: TestDb,
}

impl Setup {
    async fn new(backend: &Backend, engines: usize, now: i64) -> Setup {
        let db = TestDb::new(backend);
        let clock = Arc::new(AtomicI64::new(now));
        let engines: Vec<Engine> = (0..engines)
            .map(|_| {
                let clock = clock.clone();
                Engine::start(
                    db.open().unwrap(),
                    Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))),
                )
                .unwrap()
            })
            .collect();
        let e = &engines[0];
        e.admin(AdminCmd::ApplyCatalog(Box::new(
            document::parse(CATALOG).unwrap(),
        )))
        .await
        .unwrap();
        e.admin(AdminCmd::CreateAccount {
            username: account(),
            billing: BillingMode::Prepaid,
        })
        .await
        .unwrap();
        e.admin(AdminCmd::SetTerms {
            username: account(),
            change: TermsChange {
                concurrency_limit: Some(Some(1000)),
                ..TermsChange::default()
            },
        })
        .await
        .unwrap();
        e.admin(AdminCmd::InsertKey(ApiKeyRecord {
            key_id: key(),
            account: Some(account()),
            scope: Scope::Api,
            alias: "one".into(),
            secret_sha256: "0".repeat(64),
            created_at: Timestamp(now),
            revoked_at: None,
        }))
        .await
        .unwrap();
        let bought = e
            .execute(Op::Purchase {
                account: account(),
                purchase_id: PurchaseId::parse("credits").unwrap(),
                amount: Nanos(1_000 * COST),
                paid: true,
                expires_at: None,
            })
            .await
            .unwrap();
        assert!(bought.is_ok(), "{bought:?}");
        Setup {
            engines,
            clock,
            _db: db,
        }
    }

    fn engine(&self) -> &Engine {
        &self.engines[0]
    }

    fn set_now(&self, at: i64) {
        self.clock.store(at, Ordering::SeqCst);
    }

    async fn create(&self, limit: SpendingLimit) -> Result<AdminReply, EngineError> {
        self.engine()
            .admin(AdminCmd::CreateLimit {
                username: account(),
                limit,
            })
            .await
    }

    /// The account's limits as a reader sees them now (rolled).
    async fn limits(&self) -> Vec<LimitState> {
        let now = Timestamp(self.clock.load(Ordering::SeqCst));
        let row = self
            .engine()
            .read(move |r| r.account(&account(), now))
            .await
            .unwrap()
            .unwrap();
        row.state.limits.iter().map(|l| l.at(now)).collect()
    }

    async fn submit(&self, id: &RequestId, via: usize, api_key: Option<ApiKeyId>) {
        let submitted = self.engines[via % self.engines.len()]
            .execute(Op::Submit {
                request_id: id.clone(),
                account: account(),
                api_key,
                endpoint: EndpointId::parse("t/image").unwrap(),
            })
            .await
            .unwrap();
        assert!(submitted.is_ok(), "{submitted:?}");
    }

    async fn start(&self, id: &RequestId, via: usize) -> Result<Outcome, Rejection> {
        self.engines[via % self.engines.len()]
            .execute(Op::Start {
                request_id: id.clone(),
                machine_type: None,
                num_gpus: None,
                hold_units: None,
            })
            .await
            .unwrap()
    }

    /// Completes with `images` images (the hold is for one).
    async fn complete(&self, id: &RequestId, images: i64) {
        let done = self
            .engine()
            .execute(Op::Complete {
                request_id: id.clone(),
                status_code: 200,
                output: Output::default(),
                billable_units: Some(images.into()),
                inference_seconds: None,
            })
            .await
            .unwrap();
        assert!(matches!(done, Ok(Outcome::Completed { .. })), "{done:?}");
    }

    /// Submits, starts and completes one request of one image.
    async fn run_one(&self, id: &str) -> Result<Outcome, Rejection> {
        let id = RequestId::parse(id).unwrap();
        self.submit(&id, 0, None).await;
        let started = self.start(&id, 0).await;
        if started.is_ok() {
            self.complete(&id, 1).await;
        }
        started
    }
}

fn limit(id: &str, period: Period, zone: &str, amount: i64) -> SpendingLimit {
    SpendingLimit {
        id: LimitId::parse(id).unwrap(),
        scope: LimitScope::Account,
        period,
        timezone: zone.parse().unwrap(),
        amount: Nanos(amount),
        action: LimitAction::Block,
        alert_at_percent: vec![50, 80, 100],
        created_at: Timestamp(0),
    }
}

fn ids(prefix: &str, n: usize) -> Vec<RequestId> {
    (0..n)
        .map(|i| RequestId::parse(&format!("{prefix}-{i}")).unwrap())
        .collect()
}

/// 50 callers start at once against a block limit with room for 7 holds: exactly 7 are
/// admitted, the others refused by the limit, and settled plus held never pass it.
async fn concurrent_starts(backend: &Backend, engines: usize) {
    let on = format!("{} with {engines} engine(s)", backend.name());
    let s = Setup::new(backend, engines, ts("2026-06-10T12:00:00Z")).await;
    s.create(limit("lim_day", Period::Day, "Europe/Berlin", 7 * COST))
        .await
        .unwrap();
    let all = ids("c", 50);
    for (i, id) in all.iter().enumerate() {
        s.submit(id, i, None).await;
    }
    let starts: Vec<_> = all
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let engine = s.engines[(i + 1) % s.engines.len()].clone();
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
        })
        .collect();
    let mut admitted = Vec::new();
    for (id, start) in all.iter().zip(starts) {
        match start.await.unwrap() {
            Ok(Outcome::Started { hold, .. }) => {
                assert_eq!(hold, Nanos(COST));
                admitted.push(id.clone());
            }
            Err(Rejection::SpendingLimitExceeded {
                limit_id,
                amount,
                resets_at,
                ..
            }) => {
                assert_eq!(limit_id.as_str(), "lim_day");
                assert_eq!(amount, Nanos(7 * COST));
                assert_eq!(resets_at, Timestamp(ts("2026-06-10T22:00:00Z")), "{on}");
            }
            other => panic!("{on}: {other:?}"),
        }
    }
    assert_eq!(admitted.len(), 7, "{on}");
    let l = &s.limits().await[0];
    assert_eq!((l.spent, l.held), (Nanos::ZERO, Nanos(7 * COST)), "{on}");

    // As they settle, settled plus held stays at the limit, and nothing more is admitted.
    for (i, id) in admitted.iter().enumerate() {
        s.complete(id, 1).await;
        let l = &s.limits().await[0];
        let settled = (i as i64 + 1) * COST;
        assert_eq!((l.spent.0, l.held.0), (settled, 7 * COST - settled), "{on}");
    }
    let late = ids("late", 1);
    s.submit(&late[0], 0, None).await;
    assert!(
        matches!(
            s.start(&late[0], 1).await,
            Err(Rejection::SpendingLimitExceeded { .. })
        ),
        "{on}"
    );
    // Each refusal is counted as an admission decision of its own.
    let refusals: u64 = s
        .engines
        .iter()
        .map(|e| {
            let text = e.metrics().render();
            crate::common::sample(
                &text,
                "tollgate_admission_total{outcome=\"spending_limit\"}",
            )
            .map_or(0, |v| v.parse().unwrap())
        })
        .sum();
    assert_eq!(refusals, 44, "{on}");
    let row = s.engine().read(|r| r.reconcile()).await.unwrap();
    assert!(row.is_clean(), "{on}: {}", row.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_starts_admit_exactly_the_holds_a_block_limit_allows() {
    for backend in backends() {
        concurrent_starts(&backend, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engines_on_one_database_admit_exactly_the_holds_a_block_limit_allows() {
    for backend in backends() {
        concurrent_starts(&backend, 2).await;
    }
}

/// A block limit of one image, spent by one request at `now`: a start is refused until the
/// period's edge, `resets_at`, and admitted from then on.
async fn resets_at_its_edge(
    backend: &Backend,
    period: Period,
    zone: &str,
    now: &str,
    period_start: &str,
    resets_at: &str,
) {
    let on = format!("{} {period:?} in {zone} at {now}", backend.name());
    let s = Setup::new(backend, 1, ts(now)).await;
    let created = match s.create(limit("lim", period, zone, COST)).await.unwrap() {
        AdminReply::Limit(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(created.period_start, Timestamp(ts(period_start)), "{on}");
    assert_eq!(created.resets_at, Timestamp(ts(resets_at)), "{on}");
    assert!(s.run_one("first").await.is_ok(), "{on}");
    match s.run_one("refused").await {
        Err(Rejection::SpendingLimitExceeded { resets_at: r, .. }) => {
            assert_eq!(r, Timestamp(ts(resets_at)), "{on}")
        }
        other => panic!("{on}: {other:?}"),
    }
    s.set_now(ts(resets_at) - 1);
    assert!(s.run_one("just-before").await.is_err(), "{on}");
    s.set_now(ts(resets_at));
    assert!(s.run_one("at-the-edge").await.is_ok(), "{on}");
    let l = &s.limits().await[0];
    assert_eq!(l.period_start, Timestamp(ts(resets_at)), "{on}");
    assert_eq!((l.spent, l.held), (Nanos(COST), Nanos::ZERO), "{on}");
}

#[tokio::test]
async fn a_limit_resets_at_local_midnight_in_its_zone() {
    for b in backends() {
        // 23:00 in Tokyo (UTC+9): the day ends at 15:00 UTC.
        resets_at_its_edge(
            &b,
            Period::Day,
            "Asia/Tokyo",
            "2026-06-01T14:00:00Z",
            "2026-05-31T15:00:00Z",
            "2026-06-01T15:00:00Z",
        )
        .await;
        // Sunday 23:00 in New York: the week ends on Monday 2026-06-08 at 04:00 UTC.
        resets_at_its_edge(
            &b,
            Period::Week,
            "America/New_York",
            "2026-06-08T03:00:00Z",
            "2026-06-01T04:00:00Z",
            "2026-06-08T04:00:00Z",
        )
        .await;
        // June 30th, 23:00 in Berlin: the month ends at 22:00 UTC.
        resets_at_its_edge(
            &b,
            Period::Month,
            "Europe/Berlin",
            "2026-06-30T21:00:00Z",
            "2026-05-31T22:00:00Z",
            "2026-06-30T22:00:00Z",
        )
        .await;
    }
}

#[tokio::test]
async fn a_limit_resets_after_a_23_or_25_hour_day_when_the_clocks_change() {
    for b in backends() {
        // New York springs forward on 2026-03-08: its day is 23 hours long.
        resets_at_its_edge(
            &b,
            Period::Day,
            "America/New_York",
            "2026-03-08T06:00:00Z",
            "2026-03-08T05:00:00Z",
            "2026-03-09T04:00:00Z",
        )
        .await;
        // And falls back on 2026-11-01: 25 hours (a 24-hour day would end at 04:00 UTC).
        resets_at_its_edge(
            &b,
            Period::Day,
            "America/New_York",
            "2026-11-01T04:30:00Z",
            "2026-11-01T04:00:00Z",
            "2026-11-02T05:00:00Z",
        )
        .await;
        // Havana skips its midnight on 2026-03-08: that day starts at 01:00 local.
        resets_at_its_edge(
            &b,
            Period::Day,
            "America/Havana",
            "2026-03-07T12:00:00Z",
            "2026-03-07T05:00:00Z",
            "2026-03-08T05:00:00Z",
        )
        .await;
    }
}

/// A new limit counts what its period already charged and what runs now: its listing is
/// exact from the first minute. A key's limit counts only that key's.
#[tokio::test]
async fn a_new_limit_starts_with_the_periods_charges_and_the_running_holds() {
    for b in backends() {
        let on = b.name();
        // 2026-06-10, 01:00 in Berlin (23:00 UTC on the 9th).
        let s = Setup::new(&b, 1, ts("2026-06-09T23:00:00Z")).await;
        // Before the Berlin day began: a usage event at 21:59 UTC, a completion at 21:30.
        s.set_now(ts("2026-06-09T21:30:00Z"));
        s.run_one("yesterday").await.unwrap();
        s.set_now(ts("2026-06-09T23:00:00Z"));
        let event = |id: &str, at: &str, images: i64, api_key: Option<ApiKeyId>| {
            Op::UsageEvent(UsageEvent {
                event_id: RequestId::parse(id).unwrap(),
                account: account(),
                endpoint: EndpointId::parse("t/image").unwrap(),
                api_key,
                timestamp: Timestamp(ts(at)),
                status_code: 200,
                output: Output::default(),
                billable_units: Some(images.into()),
                queue_seconds: None,
                inference_seconds: None,
                machine_type: None,
                num_gpus: None,
            })
        };
        for op in [
            event("old-event", "2026-06-09T21:59:00Z", 10, None),
            event("event", "2026-06-09T22:30:00Z", 3, None),
            event("key-event", "2026-06-09T22:40:00Z", 2, Some(key())),
        ] {
            assert!(s.engine().execute(op).await.unwrap().is_ok());
        }
        s.run_one("today").await.unwrap();
        // Running: one request with the key, two without.
        for (id, k) in [("run-0", Some(key())), ("run-1", None), ("run-2", None)] {
            let id = RequestId::parse(id).unwrap();
            s.submit(&id, 0, k).await;
            assert!(s.start(&id, 0).await.is_ok());
        }
        s.create(limit(
            "lim_acct",
            Period::Day,
            "Europe/Berlin",
            1_000 * COST,
        ))
        .await
        .unwrap();
        s.create(SpendingLimit {
            scope: LimitScope::ApiKey(key()),
            ..limit("lim_key", Period::Day, "Europe/Berlin", 1_000 * COST)
        })
        .await
        .unwrap();
        let l = s.limits().await;
        assert_eq!(
            (l[0].spent, l[0].held),
            (Nanos(6 * COST), Nanos(3 * COST)),
            "{on}"
        );
        assert_eq!(
            (l[1].spent, l[1].held),
            (Nanos(2 * COST), Nanos(COST)),
            "{on}"
        );
        // From there the write path keeps them.
        s.complete(&RequestId::parse("run-0").unwrap(), 4).await;
        let l = s.limits().await;
        assert_eq!(
            (l[0].spent, l[0].held),
            (Nanos(10 * COST), Nanos(2 * COST)),
            "{on}"
        );
        assert_eq!(
            (l[1].spent, l[1].held),
            (Nanos(6 * COST), Nanos::ZERO),
            "{on}"
        );
    }
}

#[tokio::test]
async fn a_change_keeps_the_id_and_the_periods_spend_and_a_refused_command_writes_nothing() {
    for b in backends() {
        let on = b.name();
        let s = Setup::new(&b, 1, ts("2026-06-10T12:00:00Z")).await;
        s.create(limit("lim", Period::Day, "UTC", 2 * COST))
            .await
            .unwrap();
        s.run_one("one").await.unwrap();
        s.run_one("two").await.unwrap();
        assert!(s.run_one("three").await.is_err(), "{on}");
        let changed = s
            .engine()
            .admin(AdminCmd::ChangeLimit {
                username: account(),
                limit_id: LimitId::parse("lim").unwrap(),
                change: LimitChange {
                    amount: Some(Nanos(3 * COST)),
                    ..LimitChange::default()
                },
            })
            .await
            .unwrap();
        let AdminReply::Limit(changed) = changed else {
            panic!("{changed:?}")
        };
        assert_eq!(
            (changed.limit.amount, changed.spent),
            (Nanos(3 * COST), Nanos(2 * COST))
        );
        assert_eq!(changed.alerted, [50], "{on}: 80 and 100 no longer reached");
        assert!(s.run_one("four").await.is_ok(), "{on}");
        assert!(s.run_one("five").await.is_err(), "{on}");

        let before = s.limits().await;
        let refused = [
            AdminCmd::CreateLimit {
                username: account(),
                limit: limit("lim", Period::Day, "UTC", COST),
            },
            AdminCmd::CreateLimit {
                username: account(),
                limit: limit("zero", Period::Day, "UTC", 0),
            },
            AdminCmd::CreateLimit {
                username: account(),
                limit: SpendingLimit {
                    scope: LimitScope::ApiKey(ApiKeyId::parse("nobodys").unwrap()),
                    ..limit("k", Period::Day, "UTC", COST)
                },
            },
            AdminCmd::CreateLimit {
                username: AccountId::parse("nobody").unwrap(),
                limit: limit("n", Period::Day, "UTC", COST),
            },
            AdminCmd::ChangeLimit {
                username: account(),
                limit_id: LimitId::parse("lim").unwrap(),
                change: LimitChange {
                    alert_at_percent: Some(vec![0]),
                    ..LimitChange::default()
                },
            },
            AdminCmd::ChangeLimit {
                username: account(),
                limit_id: LimitId::parse("unknown").unwrap(),
                change: LimitChange::default(),
            },
            AdminCmd::DeleteLimit {
                username: account(),
                limit_id: LimitId::parse("unknown").unwrap(),
            },
        ];
        for cmd in refused {
            let answer = s.engine().admin(cmd.clone()).await;
            assert!(
                matches!(
                    answer,
                    Err(EngineError::Invalid(_))
                        | Err(EngineError::Store(StoreError::NotFound(_)))
                        | Err(EngineError::Store(StoreError::AlreadyExists(_)))
                ),
                "{on}: {cmd:?} answered {answer:?}"
            );
            assert_eq!(s.limits().await, before, "{on}: {cmd:?} wrote");
        }

        // At most 20 limits; then deleting one makes room.
        for i in 1..20 {
            s.create(limit(&format!("l{i}"), Period::Month, "UTC", 1_000 * COST))
                .await
                .unwrap();
        }
        assert!(matches!(
            s.create(limit("l20", Period::Month, "UTC", COST)).await,
            Err(EngineError::Invalid(_))
        ));
        assert_eq!(s.limits().await.len(), 20);
        s.engine()
            .admin(AdminCmd::DeleteLimit {
                username: account(),
                limit_id: LimitId::parse("lim").unwrap(),
            })
            .await
            .unwrap();
        assert_eq!(s.limits().await.len(), 19);
        assert!(s.run_one("six").await.is_ok(), "{on}: no limit blocks now");
    }
}
