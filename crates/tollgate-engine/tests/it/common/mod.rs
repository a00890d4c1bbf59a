//! What the engine's tests share: a one-endpoint catalog, its account and its usage events; a
//! store that loses races and waits at a gate; a sample read from the metrics text.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use tollgate_core::ids::{AccountId, EndpointId, RequestId};
use tollgate_core::machine::{Op, UsageEvent};
use tollgate_core::price::Output;
use tollgate_core::Timestamp;
use tollgate_engine::{AdminCmd, Engine};
use tollgate_store::{
    BillingMode, DbError, InvoiceRecord, InvoicesQuery, ReaderFactory, Rerunnable, Result, Store,
    StoreError, SyncFn,
};

/// One text-to-speech endpoint, `test/tts`, billed per character, and one machine type.
pub const CATALOG: &str = r#"
prices_read_on = "2026-01-15"
effective_from = "2026-01-01T00:00:00Z"

[machines]
GPU-H100 = "0.000525"

[[endpoint]]
id = "test/tts"
name = "Speech"
category = "text-to-speech"
hold_units = "1"
price = { unit = "character", unit_price = "0.00005" }
"#;

pub fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

/// Applies [`CATALOG`] and creates the account "acme".
pub async fn catalog_and_account(engine: &Engine, billing: BillingMode) {
    let doc = tollgate_core::catalog::document::parse(CATALOG).unwrap();
    engine
        .admin(AdminCmd::ApplyCatalog(Box::new(doc)))
        .await
        .unwrap();
    engine
        .admin(AdminCmd::CreateAccount {
            username: account(),
            billing,
        })
        .await
        .unwrap();
}

/// A usage event of "acme" for `thousands` thousand characters that happened at `at`.
pub fn event(id: &str, at: i64, thousands: i64) -> Op {
    Op::UsageEvent(UsageEvent {
        event_id: RequestId::parse(id).unwrap(),
        account: account(),
        endpoint: EndpointId::parse("test/tts").unwrap(),
        api_key: None,
        timestamp: Timestamp(at),
        status_code: 200,
        output: Output::default(),
        billable_units: Some((thousands * 1000).into()),
        queue_seconds: None,
        inference_seconds: None,
        machine_type: None,
        num_gpus: None,
    })
}

/// A store whose next `conflicts` db transactions lose a race once (their work runs, is rolled
/// back, and runs again, as a shared database's store does), and whose next transaction, when
/// a gate is set, says it has begun and waits to be released. It counts the schema version
/// reads on the writer's connection: one per readiness ping the writer answers.
pub struct Racing {
    pub inner: Box<dyn Store>,
    pub conflicts: Arc<AtomicUsize>,
    pub gate: Gate,
    pub pings: Arc<AtomicUsize>,
}

pub type Gate = Arc<Mutex<Option<(Sender<()>, Receiver<()>)>>>;

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
        self.pings.fetch_add(1, Ordering::SeqCst);
        self.inner.schema_version()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The value of the sample line `name` (with its labels, as rendered) in the metrics text.
pub fn sample(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(str::to_string)
}

/// Every invoice, oldest first.
pub async fn invoices(engine: &Engine) -> Vec<InvoiceRecord> {
    let mut all = engine
        .read(|r| {
            r.invoices(&InvoicesQuery {
                limit: 10_000,
                ..InvoicesQuery::default()
            })
        })
        .await
        .unwrap();
    all.reverse();
    all
}
