//! `Engine::shutdown`: the operations queued before it are committed and answered, later ones
//! are refused, and a new engine on the same database sees every answered operation.

use crate::common::{catalog_and_account, event};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tollgate_core::machine::Outcome;
use tollgate_core::Timestamp;
use tollgate_engine::{Engine, EngineError};
use tollgate_store::testing::{backends, TestDb};
use tollgate_store::BillingMode;

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
