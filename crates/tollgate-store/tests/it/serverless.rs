//! Serverless runners on every store: runners, their events and their runner-state history
//! are written by the batch that applied them and read back the same (by the writer's loads
//! and by readers); the sweep finds the runners due for settlement through its partial index,
//! oldest cursor first; an account's live runners are those not terminated within their cap;
//! runner time is billed as line items of its line's key, which usage reads keep to their
//! service and billing events leave out, and which the reconciliation checks against each
//! runner's billed amount; applied event ids received before the retention's cutoff are
//! deleted a page at a time, oldest first, from their index.

use rust_decimal::Decimal;
use std::collections::HashMap;
use tollgate_core::ids::{
    AccountId, AppName, EndpointId, EnvironmentName, MachineType, RequestId, RunnerEventId,
    RunnerId,
};
use tollgate_core::machine::{BatchState, LineItem, TransferRecord};
use tollgate_core::price::MachinePrices;
use tollgate_core::pricing::Charge;
use tollgate_core::serverless::{
    HistoryState, RunnerEventRecord, RunnerMinute, RunnerRecord, RunnerState, Segment,
};
use tollgate_core::{Nanos, Timestamp};
use tollgate_store::testing::{backends, Backend, TestDb};
use tollgate_store::{
    BillingEventsQuery, BillingMode, DueRunner, RollupQuery, RunnerHistoryQuery,
    RunnerMinuteTotals, Service, Store,
};

/// 2026-06-01T00:00:00Z.
const NOW: i64 = 1_780_272_000_000;
const MIN: i64 = 60_000;

fn acme() -> AccountId {
    AccountId::parse("acme").unwrap()
}

fn rid(id: &str) -> RunnerId {
    RunnerId::parse(id).unwrap()
}

fn app(name: &str) -> AppName {
    AppName::parse(name).unwrap()
}

/// A runner of "acme"'s "my-app" on one H100, reported last at `last_at`, accounted up to
/// `settled_until`, capped at `cap_at`.
fn runner(
    id: &str,
    state: RunnerState,
    last_at: i64,
    settled_until: i64,
    cap_at: i64,
) -> RunnerRecord {
    RunnerRecord {
        id: rid(id),
        account: acme(),
        app: app("my-app"),
        environment: None,
        machine_type: MachineType::parse("GPU-H100").unwrap(),
        num_gpus: 1,
        is_surge: false,
        state,
        state_at: Timestamp(last_at),
        last_at: Timestamp(last_at),
        settled_until: Timestamp(settled_until),
        cap_at: Timestamp(cap_at),
        first_at: Timestamp(last_at),
        segment: None,
        billed: Nanos::ZERO,
    }
}

/// A batch that writes `runners` (each created or changed), as of `now`.
fn with_runners(now: i64, runners: Vec<RunnerRecord>) -> BatchState {
    let mut s = BatchState {
        now: Timestamp(now),
        ..BatchState::default()
    };
    for r in runners {
        s.dirty_runners.insert(r.id.clone());
        s.runners.insert(r.id.clone(), r);
    }
    s
}

fn persist(store: &mut dyn Store, state: &BatchState) {
    store
        .transaction(&mut |tx| tx.persist(state).map(drop))
        .unwrap();
}

fn create_acme(store: &mut dyn Store) {
    store
        .transaction(&mut |tx| tx.create_account(&acme(), BillingMode::Prepaid, Timestamp(NOW)))
        .unwrap();
}

/// What the writer's load finds of `runners` and `events`.
fn load(
    store: &mut dyn Store,
    runners: &[&str],
    events: &[&str],
) -> (
    HashMap<RunnerId, RunnerRecord>,
    HashMap<RunnerEventId, RunnerEventRecord>,
) {
    let runners: Vec<RunnerId> = runners.iter().map(|r| rid(r)).collect();
    let events: Vec<RunnerEventId> = events
        .iter()
        .map(|e| RunnerEventId::parse(e).unwrap())
        .collect();
    let mut state = BatchState::default();
    store
        .transaction(&mut |tx| {
            state = BatchState::default();
            tx.load_runners(&runners, &events, &mut state)
        })
        .unwrap();
    (state.runners, state.runner_events)
}

fn due(store: &mut dyn Store, until: i64, limit: usize) -> Vec<String> {
    due_after(store, until, None, limit)
        .iter()
        .map(|r| r.id.as_str().to_string())
        .collect()
}

fn due_after(
    store: &mut dyn Store,
    until: i64,
    after: Option<&DueRunner>,
    limit: usize,
) -> Vec<DueRunner> {
    let mut out = Vec::new();
    store
        .transaction(&mut |tx| {
            out = tx.due_runner_settlements(Timestamp(until), after, limit)?;
            Ok(())
        })
        .unwrap();
    out
}

fn live(store: &mut dyn Store, accounts: &[AccountId], now: i64) -> Vec<String> {
    let mut out = Vec::new();
    store
        .transaction(&mut |tx| {
            out = tx.live_runners(accounts, Timestamp(now))?;
            Ok(())
        })
        .unwrap();
    let mut ids: Vec<String> = out.iter().map(|r| r.id.as_str().to_string()).collect();
    ids.sort();
    ids
}

#[test]
fn runners_events_and_minutes_are_read_back_as_written() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        create_acme(&mut *store);
        // One runner with everything set (an environment, surge, GPUs, a segment with a
        // discount), one with nothing optional.
        let mut full = runner(
            "rn-full",
            RunnerState::Running,
            NOW + 30_000,
            NOW + MIN,
            NOW + 330_000,
        );
        full.environment = Some(EnvironmentName::parse("production").unwrap());
        full.num_gpus = 8;
        full.is_surge = true;
        full.state_at = Timestamp(NOW + 10_000);
        full.first_at = Timestamp(NOW);
        full.segment = Some(Segment {
            unit_price: Decimal::new(1_234_567_890_123, 12),
            percent_discount: Some(Decimal::new(125, 1)),
            quantity: Decimal::new(4_800_008, 3),
            subtotal: Nanos(5_925_935),
            total: Nanos(5_185_193),
        });
        full.billed = Nanos(9_000_000);
        let mut plain = runner("rn-plain", RunnerState::Pending, NOW, NOW, NOW + 300_000);
        plain.app = app("other-app");
        let mut s = with_runners(NOW + MIN, vec![full.clone(), plain.clone()]);
        let event = |id: &str, runner: &str, state, at| RunnerEventRecord {
            event_id: RunnerEventId::parse(id).unwrap(),
            runner: rid(runner),
            account: acme(),
            state,
            at: Timestamp(at),
            received_at: Timestamp(NOW + MIN),
        };
        s.new_runner_events = vec![
            event("ev-1", "rn-full", RunnerState::Setup, NOW),
            event("ev-2", "rn-full", RunnerState::Running, NOW + 10_000),
            event("ev-3", "rn-plain", RunnerState::Pending, NOW),
        ];
        let minute = |app_name: &str, slot: i64, state, ms| RunnerMinute {
            account: acme(),
            app: app(app_name),
            slot: Timestamp(slot),
            state,
            ms,
        };
        // Deltas of one row summed by the batch, and of another minute.
        s.runner_minutes = vec![
            minute("my-app", NOW, HistoryState::Pending, 10_000),
            minute("my-app", NOW, HistoryState::Running, 50_000),
            minute("my-app", NOW, HistoryState::Running, 20_000),
            minute("my-app", NOW + MIN, HistoryState::Draining, 5_000),
            minute("other-app", NOW, HistoryState::Idle, 60_000),
        ];
        persist(&mut *store, &s);

        let (runners, events) = load(
            &mut *store,
            &["rn-full", "rn-plain", "rn-unknown"],
            &["ev-1", "ev-3", "ev-unknown"],
        );
        assert_eq!(runners.len(), 2, "{backend:?}");
        assert_eq!(runners[&full.id], full, "{backend:?}");
        assert_eq!(runners[&plain.id], plain, "{backend:?}");
        assert_eq!(events.len(), 2, "{backend:?}");
        assert_eq!(
            events[&RunnerEventId::parse("ev-1").unwrap()],
            s.new_runner_events[0]
        );
        assert_eq!(
            events[&RunnerEventId::parse("ev-3").unwrap()],
            s.new_runner_events[2]
        );
        // Nothing named, nothing read.
        assert_eq!(load(&mut *store, &[], &[]).0.len(), 0);

        // A later batch changes a runner: its timeline and segment, never its fixed fields
        // (written once), and adds to the history's rows.
        let mut moved = full.clone();
        moved.state = RunnerState::Terminated;
        moved.last_at = Timestamp(NOW + 2 * MIN);
        moved.settled_until = Timestamp(NOW + 2 * MIN);
        moved.cap_at = Timestamp(NOW + 2 * MIN);
        moved.segment = None;
        moved.billed = Nanos(9_500_000);
        let mut s2 = with_runners(NOW + 2 * MIN, vec![moved.clone()]);
        s2.runner_minutes = vec![
            minute("my-app", NOW, HistoryState::Running, 1),
            minute("my-app", NOW + MIN, HistoryState::Running, 55_000),
        ];
        persist(&mut *store, &s2);
        assert_eq!(load(&mut *store, &["rn-full"], &[]).0[&full.id], moved);

        let mut reader = (store.reader_factory())().unwrap();
        let history = |reader: &mut Box<dyn tollgate_store::Reader>, name: &str, from, to| {
            reader
                .runner_history(&RunnerHistoryQuery {
                    account: acme(),
                    app: app(name),
                    from: Timestamp(from),
                    to: Timestamp(to),
                })
                .unwrap()
        };
        let totals = |running_ms, idle_ms, pending_ms, draining_ms| RunnerMinuteTotals {
            running_ms,
            idle_ms,
            pending_ms,
            draining_ms,
        };
        assert_eq!(
            history(&mut reader, "my-app", NOW - 10 * MIN, NOW + 10 * MIN),
            vec![
                (Timestamp(NOW), totals(70_001, 0, 10_000, 0)),
                (Timestamp(NOW + MIN), totals(55_000, 0, 0, 5_000)),
            ],
            "{backend:?}"
        );
        // `[from, to)`, and one app only.
        assert_eq!(
            history(&mut reader, "my-app", NOW + MIN, NOW + 2 * MIN),
            vec![(Timestamp(NOW + MIN), totals(55_000, 0, 0, 5_000))]
        );
        assert_eq!(history(&mut reader, "my-app", NOW, NOW + MIN).len(), 1);
        assert_eq!(
            history(&mut reader, "other-app", NOW, NOW + 10 * MIN),
            vec![(Timestamp(NOW), totals(0, 60_000, 0, 0))]
        );
        assert!(history(&mut reader, "no-app", NOW, NOW + 10 * MIN).is_empty());

        // The account's runners, the latest reported first, up to the limit.
        let listed = reader.runners(&acme(), 10).unwrap();
        assert_eq!(listed, vec![moved.clone(), plain.clone()], "{backend:?}");
        assert_eq!(reader.runners(&acme(), 1).unwrap(), vec![moved]);
        assert!(reader
            .runners(&AccountId::parse("other").unwrap(), 10)
            .unwrap()
            .is_empty());
    }
}

#[test]
fn a_runner_event_id_is_written_once() {
    // A second insert of an applied event id fails the batch (on a shared database the store
    // runs it again, and it fails the same way): nothing of that batch is written.
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let batch = |billed| {
            let mut r = runner("rn-1", RunnerState::Idle, NOW, NOW, NOW + MIN);
            r.billed = Nanos(billed);
            let mut s = with_runners(NOW, vec![r]);
            s.new_runner_events = vec![RunnerEventRecord {
                event_id: RunnerEventId::parse("ev-1").unwrap(),
                runner: rid("rn-1"),
                account: acme(),
                state: RunnerState::Idle,
                at: Timestamp(NOW),
                received_at: Timestamp(NOW),
            }];
            s
        };
        persist(&mut *store, &batch(0));
        let again = batch(7);
        let failed = store.transaction(&mut |tx| tx.persist(&again).map(drop));
        assert!(failed.is_err(), "{backend:?}");
        assert_eq!(
            load(&mut *store, &["rn-1"], &[]).0[&rid("rn-1")].billed,
            Nanos::ZERO
        );
    }
}

/// A batch that records the applied runner events `ids`, each received at its time.
fn with_events(received: &[(&str, i64)]) -> BatchState {
    let mut s = with_runners(NOW, vec![]);
    s.new_runner_events = received
        .iter()
        .map(|(id, at)| RunnerEventRecord {
            event_id: RunnerEventId::parse(id).unwrap(),
            runner: rid("rn-1"),
            account: acme(),
            state: RunnerState::Running,
            at: Timestamp(*at),
            received_at: Timestamp(*at),
        })
        .collect();
    s
}

fn prune(store: &mut dyn Store, before: i64, limit: usize) -> usize {
    let mut n = 0;
    store
        .transaction(&mut |tx| {
            n = tx.prune_runner_events(Timestamp(before), limit)?;
            Ok(())
        })
        .unwrap();
    n
}

#[test]
fn pruning_deletes_only_event_ids_received_before_the_cutoff_a_page_at_a_time() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        // Five ids received a minute apart (written out of order), and one at the cutoff.
        let received: Vec<(String, i64)> = [3, 0, 4, 1, 2, 5]
            .iter()
            .map(|&i| (format!("ev-{i}"), NOW + i * MIN))
            .collect();
        let refs: Vec<(&str, i64)> = received.iter().map(|(id, at)| (id.as_str(), *at)).collect();
        persist(&mut *store, &with_events(&refs));
        let ids: Vec<String> = (0..6).map(|i| format!("ev-{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let kept = |store: &mut dyn Store| {
            let mut kept: Vec<String> = load(store, &[], &ids)
                .1
                .into_keys()
                .map(|e| e.to_string())
                .collect();
            kept.sort();
            kept
        };
        let cutoff = NOW + 5 * MIN;
        // A page of two: the two oldest.
        assert_eq!(prune(&mut *store, cutoff, 2), 2, "{backend:?}");
        assert_eq!(
            kept(&mut *store),
            ["ev-2", "ev-3", "ev-4", "ev-5"],
            "{backend:?}"
        );
        // The rest before the cutoff: a page that is not full says it was the last.
        assert_eq!(prune(&mut *store, cutoff, 10), 3, "{backend:?}");
        assert_eq!(kept(&mut *store), ["ev-5"], "{backend:?}");
        // The id received at the cutoff stays (only those before it go), and so does a
        // runner's row: pruning touches event ids only.
        assert_eq!(prune(&mut *store, cutoff, 10), 0, "{backend:?}");
        assert_eq!(kept(&mut *store), ["ev-5"], "{backend:?}");
        // A pruned id can be applied again (its repeat was judged as a new event).
        persist(&mut *store, &with_events(&[("ev-0", cutoff + MIN)]));
        assert_eq!(kept(&mut *store), ["ev-0", "ev-5"], "{backend:?}");
    }
}

#[test]
fn pruning_reads_the_oldest_ids_from_the_received_at_index() {
    // SQLite: the page is a range of the index on `received_at`, not a scan of every id.
    let db = TestDb::new(&Backend::Sqlite);
    let mut store = db.open().unwrap();
    let received: Vec<(String, i64)> = (0..50)
        .map(|i| (format!("ev-{i:02}"), NOW + i * MIN))
        .collect();
    let refs: Vec<(&str, i64)> = received.iter().map(|(id, at)| (id.as_str(), *at)).collect();
    persist(&mut *store, &with_events(&refs));
    drop(store);
    let c = rusqlite::Connection::open(db.target()).unwrap();
    let plan: Vec<String> = c
        .prepare(
            "EXPLAIN QUERY PLAN DELETE FROM runner_events WHERE event_id IN (SELECT event_id \
             FROM runner_events INDEXED BY runner_events_received WHERE received_at < ?1 \
             ORDER BY received_at LIMIT ?2)",
        )
        .unwrap()
        .query_map(rusqlite::params![NOW + 10 * MIN, 5], |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter()
            .any(|p| p.contains("COVERING INDEX runner_events_received")),
        "{plan:?}"
    );
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    assert!(
        !plan.iter().any(|p| p.starts_with("SCAN runner_events")),
        "{plan:?}"
    );
}

#[test]
fn due_settlements_are_the_oldest_cursors_below_their_cap_and_the_minute() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let until = NOW + 10 * MIN;
        persist(
            &mut *store,
            &with_runners(
                NOW,
                vec![
                    // Due: accounted to before both its cap and `until`.
                    runner(
                        "a-late",
                        RunnerState::Running,
                        NOW,
                        NOW + 5 * MIN,
                        NOW + 20 * MIN,
                    ),
                    runner(
                        "b-early",
                        RunnerState::Running,
                        NOW,
                        NOW + MIN,
                        NOW + 20 * MIN,
                    ),
                    runner(
                        "c-capped",
                        RunnerState::Idle,
                        NOW,
                        NOW + 2 * MIN,
                        NOW + 3 * MIN,
                    ),
                    // Not due: at its cap (silent past its grace, or terminated).
                    runner(
                        "d-silent",
                        RunnerState::Running,
                        NOW,
                        NOW + 3 * MIN,
                        NOW + 3 * MIN,
                    ),
                    runner("e-done", RunnerState::Terminated, NOW, NOW, NOW),
                    // Not due: accounted up to the current minute already.
                    runner(
                        "f-current",
                        RunnerState::Running,
                        NOW,
                        until,
                        NOW + 20 * MIN,
                    ),
                ],
            ),
        );
        assert_eq!(
            due(&mut *store, until, 100),
            ["b-early", "c-capped", "a-late"],
            "{backend:?}"
        );
        assert_eq!(due(&mut *store, until, 2), ["b-early", "c-capped"]);
        // Paged by key: the page after the first two holds the third, with its key; after
        // the last there is nothing, whatever the limit.
        let first = due_after(&mut *store, until, None, 2);
        assert_eq!(
            first[1],
            DueRunner {
                settled_until: Timestamp(NOW + 2 * MIN),
                id: rid("c-capped")
            }
        );
        let rest = due_after(&mut *store, until, Some(&first[1]), 2);
        assert_eq!(
            rest,
            [DueRunner {
                settled_until: Timestamp(NOW + 5 * MIN),
                id: rid("a-late")
            }],
            "{backend:?}"
        );
        assert!(due_after(&mut *store, until, Some(&rest[0]), 100).is_empty());
        // A key between two runners of one cursor pages by runner id.
        let between = DueRunner {
            settled_until: Timestamp(NOW + MIN),
            id: rid("b-earlz"),
        };
        assert_eq!(
            due_after(&mut *store, until, Some(&between), 100)
                .iter()
                .map(|d| d.id.as_str())
                .collect::<Vec<_>>(),
            ["c-capped", "a-late"]
        );
        // An earlier minute: only those accounted to before it.
        assert_eq!(due(&mut *store, NOW + 2 * MIN, 100), ["b-early"]);

        // Settled: up to its cap it leaves the due set, up to the minute it waits for the next.
        let mut capped = runner(
            "c-capped",
            RunnerState::Idle,
            NOW,
            NOW + 3 * MIN,
            NOW + 3 * MIN,
        );
        capped.billed = Nanos(1);
        let mut early = runner("b-early", RunnerState::Running, NOW, until, NOW + 20 * MIN);
        early.billed = Nanos(2);
        persist(&mut *store, &with_runners(until, vec![capped, early]));
        assert_eq!(due(&mut *store, until, 100), ["a-late"], "{backend:?}");
        assert_eq!(
            due(&mut *store, until + MIN, 100),
            ["a-late", "b-early", "f-current"]
        );
        // A report that raises a silent runner's cap makes it due again.
        persist(
            &mut *store,
            &with_runners(
                until,
                vec![runner(
                    "d-silent",
                    RunnerState::Running,
                    until,
                    NOW + 3 * MIN,
                    until + 5 * MIN,
                )],
            ),
        );
        assert_eq!(due(&mut *store, until, 100), ["d-silent", "a-late"]);
    }
}

#[test]
fn the_due_settlements_read_only_the_runners_not_yet_at_their_cap() {
    // SQLite: the query is answered from the partial index, whose rows are the runners whose
    // cursor is below their cap; a runner at its cap leaves the index.
    let db = TestDb::new(&Backend::Sqlite);
    let mut store = db.open().unwrap();
    let mut runners: Vec<RunnerRecord> = (0..50)
        .map(|i| {
            runner(
                &format!("done-{i:02}"),
                RunnerState::Terminated,
                NOW,
                NOW,
                NOW,
            )
        })
        .collect();
    runners.push(runner(
        "open",
        RunnerState::Running,
        NOW,
        NOW,
        NOW + 5 * MIN,
    ));
    persist(&mut *store, &with_runners(NOW, runners));
    drop(store);
    let c = rusqlite::Connection::open(db.target()).unwrap();
    let plan: Vec<String> = c
        .prepare(
            "EXPLAIN QUERY PLAN SELECT settled_until, runner_id FROM runners \
             INDEXED BY runners_due \
             WHERE settled_until < cap_at AND settled_until < ?1 AND settled_until >= ?2 \
             AND (settled_until > ?2 OR runner_id > ?3) \
             ORDER BY settled_until, runner_id LIMIT ?4",
        )
        .unwrap()
        .query_map(rusqlite::params![NOW + MIN, NOW, "a", 10], |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|p| p.contains("runners_due")),
        "the due settlements use the partial index: {plan:?}"
    );
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    let indexed: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM runners INDEXED BY runners_due WHERE settled_until < cap_at",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexed, 1);
}

#[test]
fn live_runners_are_the_accounts_runners_not_terminated_within_their_cap() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let now = NOW + 10 * MIN;
        let mut theirs = runner("z-theirs", RunnerState::Running, now, now, now + 5 * MIN);
        theirs.account = AccountId::parse("other").unwrap();
        let mut long_grace = runner(
            "long-grace",
            RunnerState::Idle,
            now - 23 * 60 * MIN,
            now,
            now + MIN,
        );
        long_grace.state_at = Timestamp(now - 23 * 60 * MIN);
        persist(
            &mut *store,
            &with_runners(
                now,
                vec![
                    runner(
                        "running",
                        RunnerState::Running,
                        now - MIN,
                        now - MIN,
                        now + 4 * MIN,
                    ),
                    runner("pending", RunnerState::Pending, now, now, now + 5 * MIN),
                    long_grace,
                    // Silent past its grace, terminated, or reported long ago.
                    runner(
                        "silent",
                        RunnerState::Running,
                        now - 6 * MIN,
                        now - MIN,
                        now - MIN,
                    ),
                    runner("at-cap", RunnerState::Running, now - 5 * MIN, now, now),
                    runner(
                        "terminated",
                        RunnerState::Terminated,
                        now - MIN,
                        now - MIN,
                        now + 4 * MIN,
                    ),
                    runner(
                        "old",
                        RunnerState::Idle,
                        NOW - 2 * 1_440 * MIN,
                        NOW - 1_440 * MIN,
                        NOW - 1_440 * MIN,
                    ),
                    theirs,
                ],
            ),
        );
        assert_eq!(
            live(&mut *store, &[acme()], now),
            ["long-grace", "pending", "running"],
            "{backend:?}"
        );
        let other = AccountId::parse("other").unwrap();
        assert_eq!(
            live(&mut *store, std::slice::from_ref(&other), now),
            ["z-theirs"]
        );
        assert_eq!(
            live(&mut *store, &[acme(), other], now),
            ["long-grace", "pending", "running", "z-theirs"]
        );
        assert!(live(&mut *store, &[], now).is_empty());
        // Later, the caps pass.
        assert_eq!(live(&mut *store, &[acme()], now + 4 * MIN), ["pending"]);
    }
}

#[test]
fn an_accounts_due_runners_are_those_with_time_left_before_the_months_start() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        // The month starts at `edge`; the batch that closes the last one runs just after it.
        let edge = NOW;
        let mut theirs = runner(
            "z-theirs",
            RunnerState::Running,
            edge - MIN,
            edge - MIN,
            edge + 4 * MIN,
        );
        theirs.account = AccountId::parse("other").unwrap();
        let mut stored = runner(
            "stored",
            RunnerState::Running,
            edge - MIN,
            edge - MIN,
            edge + 4 * MIN,
        );
        stored.segment = Some(Segment {
            unit_price: Decimal::new(525, 6),
            percent_discount: None,
            quantity: Decimal::from(60),
            subtotal: Nanos(31_500_000),
            total: Nanos(31_500_000),
        });
        stored.billed = Nanos(31_500_000);
        persist(
            &mut *store,
            &with_runners(
                edge + 10,
                vec![
                    stored.clone(),
                    // Silent, within its grace: due, though not live.
                    runner(
                        "silent",
                        RunnerState::Idle,
                        edge - 4 * MIN,
                        edge - 2 * MIN,
                        edge + MIN,
                    ),
                    runner(
                        "pending",
                        RunnerState::Pending,
                        edge - 30_000,
                        edge - 30_000,
                        edge + 4 * MIN,
                    ),
                    // Settled past the month's start, settled to its cap, terminated.
                    runner("past", RunnerState::Running, edge, edge + 5, edge + 5 * MIN),
                    runner(
                        "at-cap",
                        RunnerState::Running,
                        edge - 6 * MIN,
                        edge - MIN,
                        edge - MIN,
                    ),
                    runner(
                        "ended",
                        RunnerState::Terminated,
                        edge - 2 * MIN,
                        edge - 2 * MIN,
                        edge - 2 * MIN,
                    ),
                    theirs,
                ],
            ),
        );
        let due = |store: &mut dyn Store, accounts: &[AccountId]| {
            let mut out = Vec::new();
            store
                .transaction(&mut |tx| {
                    out = tx.due_runners(accounts, Timestamp(edge))?;
                    Ok(())
                })
                .unwrap();
            out
        };
        let ids = |runners: &[RunnerRecord]| -> Vec<String> {
            runners.iter().map(|r| r.id.as_str().to_string()).collect()
        };
        let mine = due(&mut *store, &[acme()]);
        assert_eq!(ids(&mine), ["pending", "silent", "stored"], "{backend:?}");
        // Read whole, as the batch settles them.
        assert_eq!(mine[2], stored, "{backend:?}");
        let other = AccountId::parse("other").unwrap();
        assert_eq!(
            ids(&due(&mut *store, &[acme(), other])),
            ["pending", "silent", "stored", "z-theirs"]
        );
        assert!(due(&mut *store, &[]).is_empty());
        assert!(due(&mut *store, &[AccountId::parse("nobody").unwrap()]).is_empty());
    }
}

#[test]
fn a_runner_row_of_another_account_is_never_overwritten() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        // Another server created runner "rn-1" for "other" after this batch found no such
        // runner and created it for "acme".
        let mut theirs = runner("rn-1", RunnerState::Idle, NOW, NOW, NOW + 5 * MIN);
        theirs.account = AccountId::parse("other").unwrap();
        persist(&mut *store, &with_runners(NOW, vec![theirs.clone()]));
        let mine = with_runners(
            NOW + MIN,
            vec![
                runner(
                    "rn-0",
                    RunnerState::Running,
                    NOW + MIN,
                    NOW + MIN,
                    NOW + 6 * MIN,
                ),
                runner(
                    "rn-1",
                    RunnerState::Running,
                    NOW + MIN,
                    NOW + MIN,
                    NOW + 6 * MIN,
                ),
            ],
        );
        let e = store
            .transaction(&mut |tx| tx.persist(&mine).map(drop))
            .unwrap_err();
        assert!(
            matches!(e, tollgate_store::StoreError::Conflict(_)),
            "{backend:?}: {e}"
        );
        assert!(e.to_string().contains("rn-1"), "{e}");
        // Nothing of the batch was written; the other account's runner is as it was.
        let (found, _) = load(&mut *store, &["rn-0", "rn-1"], &[]);
        assert_eq!(found.len(), 1, "{backend:?}");
        assert_eq!(found[&rid("rn-1")], theirs, "{backend:?}");
        // The account's own runner is updated as before.
        let mut again = theirs.clone();
        again.settled_until = Timestamp(NOW + MIN);
        persist(&mut *store, &with_runners(NOW + MIN, vec![again.clone()]));
        assert_eq!(load(&mut *store, &["rn-1"], &[]).0[&rid("rn-1")], again);
    }
}

/// A line item of "acme" billed at `at`: 2 units at 0.5 USD, 1 USD.
fn item(id: &str, endpoint: &str, at: i64) -> LineItem {
    LineItem {
        request_id: RequestId::parse(id).unwrap(),
        account: acme(),
        endpoint: EndpointId::parse(endpoint).unwrap(),
        api_key: None,
        price_version: 0,
        unit: "second".into(),
        charge: Charge {
            quantity: Decimal::from(2),
            unit_price: Decimal::new(5, 1),
            percent_discount: None,
            subtotal_nanos: Nanos(1_000_000_000),
            discount_nanos: Nanos::ZERO,
            total_nanos: Nanos(1_000_000_000),
            blended: false,
        },
        status_code: 200,
        billed_at: Timestamp(at),
        queue_ms: None,
        inference_ms: Some(2_000),
    }
}

const MODEL: &str = "fal-ai/flux/dev";
const LINE: &str = "serverless/my-app/production/GPU-H100/standard";
const SURGE: &str = "serverless/my-app//GPU-H100/surge";

#[test]
fn usage_reads_keep_to_their_service_and_billing_events_to_models() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        // Endpoints that sort next to the serverless keys, on both sides of them.
        let near = [
            "serverless",
            "serverless-x/y",
            "serverlesz/a",
            "serverless.z",
        ];
        let mut items = vec![item("m-1", MODEL, NOW + 1_000)];
        for (i, e) in near.iter().enumerate() {
            items.push(item(&format!("n-{i}"), e, NOW + 2_000 + i as i64));
        }
        // A page's worth of one runner's pieces (written straight to the account's range on
        // SQLite) in the first batch, a few more (its recent table) in the second.
        for i in 0..10 {
            items.push(item(&format!("runner:rn-{i}"), LINE, NOW + i * MIN));
        }
        let batch = |items: Vec<LineItem>| BatchState {
            now: Timestamp(NOW + 20 * MIN),
            line_items: items,
            ..BatchState::default()
        };
        persist(&mut *store, &batch(items));
        persist(
            &mut *store,
            &batch(vec![
                item("runner:rn-s", SURGE, NOW + 3 * MIN),
                item("m-2", MODEL, NOW + 4 * MIN),
            ]),
        );

        let mut reader = (store.reader_factory())().unwrap();
        let endpoints = |reader: &mut Box<dyn tollgate_store::Reader>,
                         service: Option<Service>,
                         whole_hours: bool| {
            let q = RollupQuery {
                account: acme(),
                from: Timestamp(NOW - 60 * MIN),
                to: Timestamp(NOW + 120 * MIN),
                endpoints: vec![],
                api_keys: vec![],
                whole_hours,
                service,
            };
            let mut counts: Vec<(String, u64)> = Vec::new();
            for (k, t) in reader.usage(&q).unwrap() {
                match counts.iter_mut().find(|(e, _)| e == k.endpoint.as_str()) {
                    Some((_, n)) => *n += t.requests,
                    None => counts.push((k.endpoint.as_str().to_string(), t.requests)),
                }
            }
            counts.sort();
            counts
        };
        let models: Vec<(String, u64)> = [(MODEL, 2)]
            .into_iter()
            .chain(near.iter().map(|e| (*e, 1)))
            .map(|(e, n)| (e.to_string(), n))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let mut serverless = vec![(LINE.to_string(), 10), (SURGE.to_string(), 1)];
        serverless.sort();
        for whole_hours in [false, true] {
            assert_eq!(
                endpoints(&mut reader, Some(Service::Models), whole_hours),
                models,
                "{backend:?}"
            );
            assert_eq!(
                endpoints(&mut reader, Some(Service::Serverless), whole_hours),
                serverless,
                "{backend:?}"
            );
            let mut both = [models.clone(), serverless.clone()].concat();
            both.sort();
            assert_eq!(endpoints(&mut reader, None, whole_hours), both);
        }
        // An endpoint filter within a service.
        let q = RollupQuery {
            account: acme(),
            from: Timestamp(NOW),
            to: Timestamp(NOW + 60 * MIN),
            endpoints: vec![EndpointId::parse(SURGE).unwrap()],
            api_keys: vec![],
            whole_hours: false,
            service: Some(Service::Models),
        };
        assert!(reader.usage(&q).unwrap().is_empty());
        let q = RollupQuery {
            service: Some(Service::Serverless),
            ..q
        };
        assert_eq!(reader.usage(&q).unwrap().len(), 1);

        // Billing events: the model line items only, in order, paged, newest first too.
        let page = |reader: &mut Box<dyn tollgate_store::Reader>, newest_first, limit| {
            reader
                .billing_events(&BillingEventsQuery {
                    account: acme(),
                    from: Timestamp(NOW - MIN),
                    to: Timestamp(NOW + 60 * MIN),
                    endpoints: vec![],
                    request_ids: vec![],
                    api_keys: vec![],
                    after: None,
                    newest_first,
                    limit,
                })
                .unwrap()
                .into_iter()
                .map(|l| l.request_id.as_str().to_string())
                .collect::<Vec<_>>()
        };
        let expected = ["m-1", "n-0", "n-1", "n-2", "n-3", "m-2"];
        assert_eq!(page(&mut reader, false, 100), expected, "{backend:?}");
        assert_eq!(page(&mut reader, false, 2), expected[..2]);
        let mut reversed = expected.to_vec();
        reversed.reverse();
        assert_eq!(page(&mut reader, true, 100), reversed);
        // Asked for by their endpoint or their request id, serverless lines are not there.
        let asked = reader
            .billing_events(&BillingEventsQuery {
                account: acme(),
                from: Timestamp(NOW - MIN),
                to: Timestamp(NOW + 60 * MIN),
                endpoints: vec![EndpointId::parse(LINE).unwrap()],
                request_ids: vec![],
                api_keys: vec![],
                after: None,
                newest_first: false,
                limit: 100,
            })
            .unwrap();
        assert!(asked.is_empty(), "{backend:?}");
        let asked = reader
            .billing_events(&BillingEventsQuery {
                account: acme(),
                from: Timestamp(NOW - MIN),
                to: Timestamp(NOW + 60 * MIN),
                endpoints: vec![],
                request_ids: vec![RequestId::parse("runner:rn-s").unwrap()],
                api_keys: vec![],
                after: None,
                newest_first: false,
                limit: 100,
            })
            .unwrap();
        assert!(asked.is_empty(), "{backend:?}");
        // On SQLite the same once the store moved every recent line item (the runner's pieces
        // among them) into the table clustered by account: enough of other accounts' (a few
        // each, so to the recent table) for its move between batches.
        if backend == Backend::Sqlite {
            let filler = (0..2_000)
                .map(|i| {
                    let mut l = item(&format!("f-{i:04}"), MODEL, NOW + i);
                    l.account = AccountId::parse(&format!("f{:03}", i % 300)).unwrap();
                    l
                })
                .collect();
            persist(&mut *store, &batch(filler));
            store.idle().unwrap();
            let c = rusqlite::Connection::open(db.target()).unwrap();
            let recent: i64 = c
                .query_row("SELECT COUNT(*) FROM line_items_recent", [], |r| r.get(0))
                .unwrap();
            assert_eq!(recent, 0, "moved");
            let mut reader = (store.reader_factory())().unwrap();
            assert_eq!(page(&mut reader, false, 100), expected);
            for whole_hours in [false, true] {
                assert_eq!(
                    endpoints(&mut reader, Some(Service::Serverless), whole_hours),
                    serverless
                );
            }
        }
    }
}

#[test]
fn surge_prices_are_part_of_the_catalog() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        let prices = |list: &[(&str, i64, u32)]| -> MachinePrices {
            list.iter()
                .map(|(m, n, scale)| (MachineType::parse(m).unwrap(), Decimal::new(*n, *scale)))
                .collect()
        };
        let machines = prices(&[("GPU-H100", 525, 6), ("GPU-B200", 1_234_567_890_123, 15)]);
        let surge = prices(&[("GPU-H100", 7875, 7), ("GPU-B200", 18_518_518_351_845, 16)]);
        let mut generations = Vec::new();
        store
            .transaction(&mut |tx| {
                generations.clear();
                tx.set_machine_prices(&machines)?;
                generations.push(tx.catalog_generation()?);
                tx.set_surge_prices(&surge)?;
                generations.push(tx.catalog_generation()?);
                let catalog = tx.load_catalog()?;
                assert_eq!(catalog.machines_surge, surge);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            generations,
            [1, 2],
            "a surge price change is a catalog change"
        );
        let mut reader = (store.reader_factory())().unwrap();
        let catalog = reader.load_catalog().unwrap();
        assert_eq!(catalog.machines, machines, "{backend:?}");
        assert_eq!(catalog.machines_surge, surge, "{backend:?}");
        // Replaced whole.
        let fewer = prices(&[("GPU-H100", 8, 4)]);
        store
            .transaction(&mut |tx| tx.set_surge_prices(&fewer))
            .unwrap();
        assert_eq!(reader.load_catalog().unwrap().machines_surge, fewer);
        assert_eq!(reader.load_catalog().unwrap().machines, machines);
    }
}

#[test]
fn the_reconciliation_checks_runner_line_items_and_what_each_runner_was_billed() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let mut store = db.open().unwrap();
        create_acme(&mut *store);
        // A runner's pieces, charged to the account (which goes below zero, as usage may) by
        // transfers naming the runner's request id, and the runner's billed total.
        let now = NOW + 10 * MIN;
        let mut state = BatchState::default();
        let mut pieces = Vec::new();
        store
            .transaction(&mut |tx| {
                state = BatchState {
                    now: Timestamp(now),
                    ..BatchState::default()
                };
                tx.lock_accounts(&[acme()], Timestamp(now), &mut state.accounts)?;
                let account = state.accounts.get_mut(&acme()).unwrap();
                pieces.clear();
                for (i, (at, total)) in [(NOW, 333_333_333), (NOW + 20_000, 1), (NOW + MIN, 7)]
                    .into_iter()
                    .enumerate()
                {
                    let mut piece = item("runner:rn-1", LINE, at);
                    piece.charge.total_nanos = Nanos(total);
                    piece.charge.subtotal_nanos = Nanos(total + i as i64);
                    piece.charge.discount_nanos = Nanos(i as i64);
                    let transfer = account.credit.charge(Nanos(total)).unwrap();
                    state.transfers.push(TransferRecord {
                        transfer,
                        request_id: Some(piece.request_id.clone()),
                        purchase_id: None,
                        at: Timestamp(now),
                    });
                    pieces.push(piece);
                }
                state.line_items = pieces.clone();
                state.dirty_accounts.insert(acme());
                let mut r = runner(
                    "rn-1",
                    RunnerState::Running,
                    NOW,
                    NOW + 2 * MIN,
                    NOW + 5 * MIN,
                );
                r.billed = Nanos(333_333_341);
                let idle = runner("rn-2", RunnerState::Pending, NOW, NOW + MIN, NOW + 5 * MIN);
                for r in [r, idle] {
                    state.dirty_runners.insert(r.id.clone());
                    state.runners.insert(r.id.clone(), r);
                }
                tx.persist(&state).map(drop)
            })
            .unwrap();
        let mut reader = (store.reader_factory())().unwrap();
        let rec = reader.reconcile().unwrap();
        assert!(rec.is_clean(), "{backend:?}: {}", rec.summary());
        assert_eq!(rec.billed_nanos, 333_333_341);
        let balance = reader.account(&acme(), Timestamp(now)).unwrap().unwrap();
        assert_eq!(balance.state.credit.balance, Nanos(-333_333_341));

        // A runner whose billed amount is not its line items' is found.
        let mut wrong = runner(
            "rn-1",
            RunnerState::Running,
            NOW,
            NOW + 2 * MIN,
            NOW + 5 * MIN,
        );
        wrong.billed = Nanos(333_333_340);
        persist(&mut *store, &with_runners(now, vec![wrong]));
        let rec = reader.reconcile().unwrap();
        assert_eq!(rec.runner_mismatches, vec![rid("rn-1")], "{backend:?}");
        assert!(!rec.is_clean());
        assert!(
            rec.summary().contains("1 runner mismatches"),
            "{}",
            rec.summary()
        );
    }
}
