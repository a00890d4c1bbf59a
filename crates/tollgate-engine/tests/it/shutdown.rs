//! `Engine::shutdown`: the operations queued before it are committed and answered, later ones
//! are refused, and a new engine on the same database sees every answered operation; the queue
//! depth is 0 afterwards, refused jobs included.

use crate::common::{catalog_and_account, event, sample, Gate, Racing};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::task::Poll;
use tollgate_core::machine::Outcome;
use tollgate_core::Timestamp;
use tollgate_engine::{Engine, EngineError};
use tollgate_store::testing::{backends, Backend, TestDb};
use tollgate_store::BillingMode;

/// The engine's `tollgate_queue_depth`, from its metrics text.
fn queue_depth(engine: &Engine) -> String {
    let text = engine.metrics().render();
    sample(&text, "tollgate_queue_depth").unwrap_or_else(|| panic!("no queue depth: {text}"))
}

/// Polls `f` once: far enough for an engine call to queue its job without waiting for the
/// answer. It must not be answered yet.
async fn queue<F: Future + Unpin>(f: &mut F) {
    std::future::poll_fn(|cx| {
        assert!(
            std::pin::Pin::new(&mut *f).poll(cx).is_pending(),
            "answered early"
        );
        Poll::Ready(())
    })
    .await
}

/// 2026-06-01T00:00:00Z: when the events happened.
const T: i64 = 1_780_272_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_what_was_queued_before_it_and_refuses_what_comes_after() {
    for backend in backends() {
        let db = TestDb::new(&backend);
        let clock = Arc::new(|| Timestamp(T + 60_000));
        let engine = Engine::start(db.open().unwrap(), clock.clone()).unwrap();
        catalog_and_account(&engine, BillingMode::Invoice).await;
        // Events from several tasks, racing the shutdown: each is either answered (and then
        // committed) or refused as stopped. The shutdown is sent once some have been answered,
        // so what is checked below is never empty.
        let done = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let (engine, done) = (engine.clone(), done.clone());
                tokio::spawn(async move {
                    let id = format!("ev-{i}");
                    let answer = engine.execute(event(&id, T, 1)).await;
                    done.fetch_add(1, Ordering::SeqCst);
                    (id, answer)
                })
            })
            .collect();
        while done.load(Ordering::SeqCst) < 20 {
            tokio::task::yield_now().await;
        }
        engine.shutdown().await.unwrap();
        let mut answered = Vec::new();
        for call in calls {
            match call.await.unwrap() {
                (id, Ok(outcome)) => {
                    outcome.unwrap();
                    answered.push(id);
                }
                (_, Err(EngineError::Stopped)) => {}
                (id, Err(e)) => panic!("{backend:?} {id}: {e}"),
            }
        }
        assert!(
            answered.len() >= 20,
            "{backend:?}: {} answered",
            answered.len()
        );
        assert!(matches!(
            engine.execute(event("after", T, 1)).await,
            Err(EngineError::Stopped)
        ));
        assert_eq!(queue_depth(&engine), "0", "{backend:?}");

        let again = Engine::start(db.open().unwrap(), clock).unwrap();
        for id in &answered {
            let outcome = again.execute(event(id, T, 1)).await.unwrap().unwrap();
            assert!(
                matches!(outcome, Outcome::Completed { replayed: true, .. }),
                "{backend:?} {id}: answered before the shutdown but not committed: {outcome:?}"
            );
        }
    }
}

/// Jobs queued behind the stop are refused, and leave the queue depth as they go: it is 0 once
/// the engine has stopped.
#[tokio::test]
async fn jobs_queued_behind_the_stop_are_refused_and_leave_the_queue_depth() {
    let db = TestDb::new(&Backend::Sqlite);
    let gate: Gate = Arc::default();
    let store = Racing {
        inner: db.open().unwrap(),
        conflicts: Arc::default(),
        gate: gate.clone(),
        pings: Arc::default(),
    };
    let engine = Engine::start(Box::new(store), Arc::new(|| Timestamp(T + 60_000))).unwrap();
    catalog_and_account(&engine, BillingMode::Invoice).await;

    // The writer waits inside a batch while the stop and then ten events are queued.
    let (begun_tx, begun) = channel();
    let (release, release_rx) = channel();
    *gate.lock().unwrap() = Some((begun_tx, release_rx));
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.execute(event("first", T, 1)).await }
    });
    tokio::task::spawn_blocking(move || begun.recv().unwrap())
        .await
        .unwrap();
    let mut stop = Box::pin(engine.shutdown());
    queue(&mut stop).await;
    let mut behind: Vec<_> = (0..10)
        .map(|i| Box::pin(engine.execute(event(&format!("behind-{i}"), T, 1))))
        .collect();
    for call in &mut behind {
        queue(call).await;
    }
    assert_eq!(queue_depth(&engine), "10");

    release.send(()).unwrap();
    first.await.unwrap().unwrap().unwrap();
    stop.await.unwrap();
    for call in behind {
        assert!(matches!(call.await, Err(EngineError::Stopped)));
    }
    assert_eq!(queue_depth(&engine), "0");
}
