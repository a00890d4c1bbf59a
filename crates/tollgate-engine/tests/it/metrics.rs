//! The engine's metrics count what the write path did, in the engine's own registry: a batch
//! run again after a conflict counts one conflict and one retry and bills once; billed units
//! and nano-USD follow the line items; two engines in one process count apart; readiness
//! names a writer that does not answer.

use crate::common::{catalog_and_account, event, sample, Gate, Racing};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;
use tollgate_core::Timestamp;
use tollgate_engine::{Engine, READINESS_REUSE};
use tollgate_store::testing::{Backend, TestDb};
use tollgate_store::BillingMode;

/// 2026-06-01T00:00:00Z: when the events happened.
const T: i64 = 1_780_272_000_000;

#[tokio::test]
async fn a_batch_run_again_counts_a_conflict_and_a_retry_and_bills_once() {
    let db = TestDb::new(&Backend::Sqlite);
    let conflicts = Arc::new(AtomicUsize::new(0));
    let gate: Gate = Arc::default();
    let pings = Arc::new(AtomicUsize::new(0));
    let store = Racing {
        inner: db.open().unwrap(),
        conflicts: conflicts.clone(),
        gate: gate.clone(),
        pings: pings.clone(),
    };
    let now = Arc::new(AtomicI64::new(T + 60_000));
    let clock = now.clone();
    let engine = Engine::start(
        Box::new(store),
        Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))),
    )
    .unwrap();
    // Past the reuse of the last readiness answer: the next probe checks again.
    let later = || now.fetch_add(READINESS_REUSE.as_millis() as i64, Ordering::SeqCst);
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
    later();
    let pinged = pings.load(Ordering::SeqCst);
    let r = engine.readiness(Duration::from_millis(200)).await;
    assert!(!r.is_ready());
    assert!(
        r.writer.as_ref().unwrap_err().contains("did not answer"),
        "{r:?}"
    );
    assert_eq!(r.database, Ok(()), "reads do not wait for the writer");
    release.send(()).unwrap();
    pending.await.unwrap().unwrap().unwrap();
    later();
    assert!(engine.readiness(Duration::from_secs(5)).await.is_ready());
    // The probe that gave up left its ping queued, and the next one took its answer: one ping
    // for both.
    assert_eq!(pings.load(Ordering::SeqCst), pinged + 1);
}

/// A flood of probes is one check: 1,000 concurrent readiness calls put one ping through the
/// writer and all answer ready; an answer is reused for `READINESS_REUSE`, then checked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readiness_probes_share_one_ping_through_the_writer() {
    let db = TestDb::new(&Backend::Sqlite);
    let pings = Arc::new(AtomicUsize::new(0));
    let store = Racing {
        inner: db.open().unwrap(),
        conflicts: Arc::default(),
        gate: Arc::default(),
        pings: pings.clone(),
    };
    let now = Arc::new(AtomicI64::new(T));
    let clock = now.clone();
    let engine = Engine::start(
        Box::new(store),
        Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))),
    )
    .unwrap();
    catalog_and_account(&engine, BillingMode::Invoice).await;
    // Starting read the schema version once.
    pings.store(0, Ordering::SeqCst);

    let probes: Vec<_> = (0..1000)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.readiness(Duration::from_secs(30)).await })
        })
        .collect();
    for probe in probes {
        let r = probe.await.unwrap();
        assert!(r.is_ready(), "{r:?}");
    }
    assert_eq!(pings.load(Ordering::SeqCst), 1, "one ping for 1,000 probes");
    let text = engine.metrics().render();
    assert_eq!(
        sample(&text, "tollgate_queue_depth").as_deref(),
        Some("0"),
        "{text}"
    );

    // Reused while younger than READINESS_REUSE; checked again once it is not.
    now.fetch_add(READINESS_REUSE.as_millis() as i64 - 1, Ordering::SeqCst);
    assert!(engine.readiness(Duration::from_secs(30)).await.is_ready());
    assert_eq!(pings.load(Ordering::SeqCst), 1);
    now.fetch_add(1, Ordering::SeqCst);
    assert!(engine.readiness(Duration::from_secs(30)).await.is_ready());
    assert_eq!(pings.load(Ordering::SeqCst), 2);
}
