//! The engine gives its store the moments when nothing is queued under light load
//! (`Store::idle`), and only those: after a large batch (heavy load, where callers waiting for
//! their answers also empty the queue) it does not.

use crate::common::{catalog_and_account, event};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::Timestamp;
use tollgate_engine::Engine;
use tollgate_store::testing::{Backend, TestDb};
use tollgate_store::{BillingMode, ReaderFactory, Rerunnable, Result, Store, SyncFn};

/// 2026-06-01T00:00:00Z: when the events happened.
const T: i64 = 1_780_272_000_000;

/// A store that counts the calls to `idle`, and otherwise is the store it wraps.
struct Counting {
    inner: Box<dyn Store>,
    idle: Arc<AtomicUsize>,
}

impl Store for Counting {
    fn transaction(&mut self, work: &mut Rerunnable) -> Result<()> {
        self.inner.transaction(work)
    }
    fn defer_sync(&mut self) -> Result<Option<SyncFn>> {
        self.inner.defer_sync()
    }
    fn idle(&mut self) -> Result<()> {
        self.idle.fetch_add(1, Ordering::SeqCst);
        self.inner.idle()
    }
    fn reader_factory(&self) -> ReaderFactory {
        self.inner.reader_factory()
    }
    fn schema_version(&mut self) -> Result<i64> {
        self.inner.schema_version()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Waits up to 5 s for the count to pass `n`.
async fn passes(count: &AtomicUsize, n: usize) -> bool {
    for _ in 0..500 {
        if count.load(Ordering::SeqCst) > n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn the_store_gets_the_idle_moments_of_light_load_only() {
    let db = TestDb::new(&Backend::Sqlite);
    let idle = Arc::new(AtomicUsize::new(0));
    let store = Counting {
        inner: db.open().unwrap(),
        idle: idle.clone(),
    };
    let engine = Engine::start(Box::new(store), Arc::new(|| Timestamp(T + 60_000))).unwrap();
    catalog_and_account(&engine, BillingMode::Invoice).await;

    // A small batch, then nothing queued: idle.
    engine.execute(event("one", T, 1)).await.unwrap().unwrap();
    assert!(passes(&idle, 0).await, "no idle call after a small batch");

    // A large batch, then nothing queued: not idle.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = idle.load(Ordering::SeqCst);
    let answers = engine
        .execute_many((0..300).map(|i| event(&format!("big-{i}"), T, 1)).collect())
        .await
        .unwrap();
    assert!(answers.iter().all(|a| a.is_ok()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        idle.load(Ordering::SeqCst),
        before,
        "idle after a large batch"
    );

    // Light again: idle again.
    engine.execute(event("two", T, 1)).await.unwrap().unwrap();
    assert!(
        passes(&idle, before).await,
        "no idle call once load is light again"
    );
}
