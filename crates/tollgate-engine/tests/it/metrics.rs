//! The engine's metrics count what the write path did, in the engine's own registry: a batch
//! run again after a conflict counts one conflict and one retry and bills once; billed units
//! and nano-USD follow the line items; two engines in one process count apart; readiness
//! names a writer that does not answer.

use crate::common::{catalog_and_account, event};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_core::Timestamp;
use tollgate_engine::Engine;
use tollgate_store::testing::{Backend, TestDb};
use tollgate_store::{
    BillingMode, DbError, ReaderFactory, Rerunnable, Result, Store, StoreError, SyncFn,
};

/// 2026-06-01T00:00:00Z: when the events happened.
const T: i64 = 1_780_272_000_000;

/// A store whose next `conflicts` db transactions lose a race once (their work runs, is rolled
/// back, and runs again, as a shared database's store does), and whose next transaction, when
/// a gate is set, says it has begun and waits to be released.
struct Racing {
    inner: Box<dyn Store>,
    conflicts: Arc<AtomicUsize>,
    gate: Gate,
}

type Gate = Arc<Mutex<Option<(Sender<()>, Receiver<()>)>>>;

impl Store for Racing {
    fn transaction(&mut self, work: &mut Rerunnable) -> Result<()> {
        if let Some((begun, release)) = self.gate.lock().unwrap().take() {
            begun.send(()).unwrap();
            release.recv().unwrap();
        }
        if self.conflicts.load(Ordering::SeqCst) > 0 {
            self.conflicts.fetch_sub(1, Ordering::SeqCst);
            let lost = self.inner.transaction(&mut |tx| {
                work(tx)?;
                Err(StoreError::Conflict(DbError::msg(
                    "lost a race (simulated)",
                )))
            });
            assert!(matches!(lost, Err(StoreError::Conflict(_))));
        }
        self.inner.transaction(work)
    }
    fn defer_sync(&mut self) -> Result<Option<SyncFn>> {
        self.inner.defer_sync()
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

/// The value of the sample line `name` (with its labels, as rendered) in the metrics text.
fn sample(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(str::to_string)
}

#[tokio::test]
async fn a_batch_run_again_counts_a_conflict_and_a_retry_and_bills_once() {
    let db = TestDb::new(&Backend::Sqlite);
    let conflicts = Arc::new(AtomicUsize::new(0));
    let gate: Gate = Arc::default();
    let store = Racing {
        inner: db.open().unwrap(),
        conflicts: conflicts.clone(),
        gate: gate.clone(),
    };
    let engine = Engine::start(Box::new(store), Arc::new(|| Timestamp(T + 60_000))).unwrap();
    // A second engine in the same process has a registry of its own.
    let other_db = TestDb::new(&Backend::Sqlite);
    let other = Engine::start(other_db.open().unwrap(), Arc::new(|| Timestamp(T))).unwrap();
    catalog_and_account(&engine, BillingMode::Invoice).await;

    conflicts.store(1, Ordering::SeqCst);
    // 3,000 + 2,000 characters at 0.00005 USD each: 0.25 USD.
    let answers = engine
        .execute_many(vec![event("e-1", T, 3), event("e-2", T, 2)])
        .await
        .unwrap();
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");

    let text = engine.metrics().render();
    assert_eq!(
        sample(&text, "tollgate_store_conflicts_total").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tollgate_store_retries_total").as_deref(),
        Some("1"),
        "{text}"
    );
    let units = r#"tollgate_billed_units_total{endpoint="test/tts",unit="character"}"#;
    assert_eq!(sample(&text, units).as_deref(), Some("5000.0"), "{text}");
    let nanos = r#"tollgate_billed_nano_usd_total{endpoint="test/tts"}"#;
    assert_eq!(sample(&text, nanos).as_deref(), Some("250000000"), "{text}");
    assert_eq!(
        sample(&text, "tollgate_queue_depth").as_deref(),
        Some("0"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tollgate_batch_size_count").as_deref(),
        Some("1"),
        "{text}"
    );

    let text = other.metrics().render();
    assert_eq!(
        sample(&text, "tollgate_store_retries_total").as_deref(),
        Some("0"),
        "{text}"
    );
    assert_eq!(sample(&text, units), None, "{text}");

    // A replay bills nothing again, and counts nothing.
    engine.execute(event("e-1", T, 3)).await.unwrap().unwrap();
    let text = engine.metrics().render();
    assert_eq!(sample(&text, units).as_deref(), Some("5000.0"), "{text}");

    // A writer that does not answer is named by readiness; it is ready again once it does.
    assert!(engine.readiness(Duration::from_secs(5)).await.is_ready());
    let (begun_tx, begun) = channel();
    let (release, release_rx) = channel();
    *gate.lock().unwrap() = Some((begun_tx, release_rx));
    let pending = tokio::spawn({
        let engine = engine.clone();
        async move { engine.execute(event("e-3", T, 1)).await }
    });
    // The writer is inside that batch's db transaction.
    tokio::task::spawn_blocking(move || begun.recv().unwrap())
        .await
        .unwrap();
    let r = engine.readiness(Duration::from_millis(200)).await;
    assert!(!r.is_ready());
    assert!(
        r.writer.as_ref().unwrap_err().contains("did not answer"),
        "{r:?}"
    );
    assert_eq!(r.database, Ok(()), "reads do not wait for the writer");
    release.send(()).unwrap();
    pending.await.unwrap().unwrap().unwrap();
    assert!(engine.readiness(Duration::from_secs(5)).await.is_ready());
}
