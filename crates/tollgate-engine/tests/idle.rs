//! The engine gives its store the moments when nothing is queued under light load
//! (`Store::idle`), and only those: after a large batch (heavy load, where callers waiting for
//! their answers also empty the queue) it does not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::ids::{AccountId, EndpointId, RequestId};
use tollgate_core::machine::{Op, UsageEvent};
use tollgate_core::price::Output;
use tollgate_core::Timestamp;
use tollgate_engine::{AdminCmd, Engine};
use tollgate_store::testing::{Backend, TestDb};
use tollgate_store::{BillingMode, ReaderFactory, Result, Store, SyncFn, Tx};

const CATALOG: &str = r#"
prices_read_on = "2026-01-15"
effective_from = "2026-01-01T00:00:00Z"

[[endpoint]]
id = "test/tts"
name = "Speech"
category = "text-to-speech"
hold_units = "1"
price = { unit = "character", unit_price = "0.00005" }
"#;

/// A store that counts the calls to `idle`, and otherwise is the store it wraps.
struct Counting {
    inner: Box<dyn Store>,
    idle: Arc<AtomicUsize>,
}

impl Store for Counting {
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.inner.transaction(f)
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

fn event(id: String) -> Op {
    Op::UsageEvent(UsageEvent {
        event_id: RequestId::parse(&id).unwrap(),
        account: AccountId::parse("acme").unwrap(),
        endpoint: EndpointId::parse("test/tts").unwrap(),
        api_key: None,
        timestamp: Timestamp(1_780_272_000_000),
        status_code: 200,
        output: Output::default(),
        billable_units: Some(1000.into()),
        queue_seconds: None,
        inference_seconds: None,
        machine_type: None,
        num_gpus: None,
    })
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
    let engine = Engine::start(Box::new(store), Arc::new(|| Timestamp(1_780_272_060_000))).unwrap();
    let doc = tollgate_core::catalog::document::parse(CATALOG).unwrap();
    engine
        .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
        .await
        .unwrap();
    engine
        .admin(AdminCmd::CreateAccount {
            username: AccountId::parse("acme").unwrap(),
            billing: BillingMode::Invoice,
        })
        .await
        .unwrap();

    // A small batch, then nothing queued: idle.
    engine.execute(event("one".into())).await.unwrap().unwrap();
    assert!(passes(&idle, 0).await, "no idle call after a small batch");

    // A large batch, then nothing queued: not idle.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = idle.load(Ordering::SeqCst);
    let answers = engine
        .execute_many((0..300).map(|i| event(format!("big-{i}"))).collect())
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
    engine.execute(event("two".into())).await.unwrap().unwrap();
    assert!(
        passes(&idle, before).await,
        "no idle call once load is light again"
    );
}
