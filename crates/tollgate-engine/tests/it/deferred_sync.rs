//! The embedded store's commits return before they are on disk, and the engine's syncer
//! answers callers only after the sync that covers their commit. These tests hold the sync
//! back, or make it fail, through a store that wraps SQLite's sync with a gate.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tollgate_core::ids::{AccountId, PurchaseId};
use tollgate_core::machine::{Op, Outcome};
use tollgate_core::{Nanos, Timestamp};
use tollgate_engine::{AdminCmd, Engine, EngineError};
use tollgate_store::sqlite::SqliteStore;
use tollgate_store::{
    BillingMode, DbError, Reader, ReaderFactory, Rerunnable, Result as StoreResult, Store,
    StoreError, SyncFn,
};

#[derive(Clone, Copy, PartialEq)]
enum Gate {
    Open,
    Closed,
    Failing,
}

/// SQLite, with every sync waiting while the gate is closed and failing while it fails.
struct GatedStore {
    inner: SqliteStore,
    gate: Arc<(Mutex<Gate>, Condvar)>,
}

impl Store for GatedStore {
    fn transaction(&mut self, work: &mut Rerunnable) -> StoreResult<()> {
        self.inner.transaction(work)
    }
    fn defer_sync(&mut self) -> StoreResult<Option<SyncFn>> {
        let mut sync = self.inner.defer_sync()?.expect("SQLite defers its sync");
        let gate = self.gate.clone();
        Ok(Some(Box::new(move || {
            let (lock, changed) = &*gate;
            let mut state = lock.lock().unwrap();
            while *state == Gate::Closed {
                state = changed.wait(state).unwrap();
            }
            if *state == Gate::Failing {
                return Err(StoreError::Database(DbError::msg(
                    "the disk refused the sync",
                )));
            }
            drop(state);
            sync()
        })))
    }
    fn reader_factory(&self) -> ReaderFactory {
        self.inner.reader_factory()
    }
    fn schema_version(&mut self) -> StoreResult<i64> {
        self.inner.schema_version()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

struct Fixture {
    engine: Engine,
    gate: Arc<(Mutex<Gate>, Condvar)>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new((Mutex::new(Gate::Open), Condvar::new()));
        let store = GatedStore {
            inner: SqliteStore::open(dir.path().join("t.db")).unwrap(),
            gate: gate.clone(),
        };
        let engine = Engine::start(Box::new(store), Arc::new(|| Timestamp(1_780_272_000_000)))
            .expect("start the engine");
        engine
            .admin(AdminCmd::CreateAccount {
                username: account(),
                billing: BillingMode::Prepaid,
            })
            .await
            .expect("create the account");
        Fixture {
            engine,
            gate,
            _dir: dir,
        }
    }

    fn set(&self, to: Gate) {
        let (lock, changed) = &*self.gate;
        *lock.lock().unwrap() = to;
        changed.notify_all();
    }

    /// The account's balance as committed, read on a reader connection.
    async fn committed_balance(&self) -> Nanos {
        self.engine
            .read(|r: &mut dyn Reader| r.account(&account(), Timestamp(1_780_272_000_000)))
            .await
            .unwrap()
            .expect("the account exists")
            .state
            .credit
            .balance
    }
}

fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

fn purchase(id: &str) -> Op {
    Op::Purchase {
        account: account(),
        purchase_id: PurchaseId::parse(id).unwrap(),
        amount: Nanos(5_000_000_000),
        paid: true,
        expires_at: None,
    }
}

#[tokio::test]
async fn an_answer_waits_for_the_sync_that_covers_its_commit() {
    let f = Fixture::new().await;
    f.set(Gate::Closed);
    let engine = f.engine.clone();
    let mut answer = tokio::spawn(async move { engine.execute(purchase("p1")).await });

    // The commit is made (a reader sees it) but its caller is not answered while the sync
    // is held back.
    let mut committed = false;
    for _ in 0..200 {
        if f.committed_balance().await == Nanos(5_000_000_000) {
            committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(committed, "the purchase was never committed");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut answer)
            .await
            .is_err(),
        "answered before its commit was synced"
    );

    f.set(Gate::Open);
    let outcome = answer.await.unwrap().unwrap();
    assert!(
        matches!(outcome, Ok(Outcome::Purchased { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_failed_sync_fails_its_callers_and_refuses_every_later_write() {
    let f = Fixture::new().await;
    f.set(Gate::Failing);
    let failed = f.engine.execute(purchase("p1")).await;
    match failed {
        Err(e @ EngineError::SyncFailed(_)) => {
            let m = e.to_string();
            assert!(m.contains("the disk refused the sync"), "{m}");
            assert!(m.contains("must be restarted"), "{m}");
        }
        other => panic!("expected the sync's error, got {other:?}"),
    }

    // The disk may accept syncs again, but what the file holds is no longer known: nothing
    // more is written, operations and admin commands alike.
    f.set(Gate::Open);
    let before = f.committed_balance().await;
    let refused = f.engine.execute(purchase("p2")).await;
    assert!(
        matches!(&refused, Err(e @ EngineError::SyncFailed(_)) if e.to_string().contains("must be restarted")),
        "{refused:?}"
    );
    let admin = f
        .engine
        .admin(AdminCmd::CreateAccount {
            username: AccountId::parse("other").unwrap(),
            billing: BillingMode::Prepaid,
        })
        .await;
    assert!(admin.is_err(), "{admin:?}");
    assert_eq!(
        f.committed_balance().await,
        before,
        "a refused write changed the balance"
    );
    let other = f
        .engine
        .read(|r: &mut dyn Reader| r.account(&AccountId::parse("other").unwrap(), Timestamp(0)))
        .await;
    assert!(
        matches!(other, Ok(None)),
        "a refused admin command created the account: {other:?}"
    );
}
