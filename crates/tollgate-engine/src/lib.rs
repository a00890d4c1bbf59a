//! The single write path.
//!
//! Callers hand operations to [`Engine`]; a dedicated writer thread takes whatever has queued
//! up (up to [`MAX_BATCH_OPS`]), opens one db transaction, loads and locks the rows the batch
//! touches, applies each operation in arrival order with the pure core, persists the effects,
//! commits, and answers every caller once the commit is on disk. Thousands of concurrent
//! requests cost a few commits, and an answer always means the commit is durable. A store that
//! can defer its disk sync (SQLite) has it done by a syncer thread, which answers each batch's
//! callers after the sync that covers it while the writer already runs the next batch.
//!
//! Architecture invariant: every write to the database goes through the writer thread. Reads
//! go through [`Engine::read`] on separate connections and never wait for a batch.

pub mod metrics;

use metrics::Metrics;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tollgate_core::catalog::document::CatalogDocument;
use tollgate_core::catalog::plan::{self, CatalogPlan};
use tollgate_core::catalog::Catalog;
use tollgate_core::events::EventData;
use tollgate_core::ids::{
    AccountId, AdjustmentId, ApiKeyId, LimitId, PurchaseId, RequestId, RunnerEventId, RunnerId,
};
use tollgate_core::limits::{self, LimitChange, LimitState, SpendingLimit};
use tollgate_core::machine::{
    apply, close_elapsed_periods, elapsed_periods, BatchState, InvoiceKind, InvoiceStatus, Op,
    Outcome, Rejection, EXPIRY_NOTICE_MS,
};
use tollgate_core::payments::TopUpSettings;
use tollgate_core::serverless::{self, ServerlessSettings};
use tollgate_core::terms::{self, TermsChange};
use tollgate_core::time::month_start;
use tollgate_core::Timestamp;
use tollgate_store::{
    ApiKeyRecord, BillingMode, ClaimedDelivery, DeliveryResult, DueRunner, Issuer, PaymentKeys,
    PortalLink, Reader, ReaderFactory, Store, StoreError, SyncFn, Tx, WebSession, WebhookRecord,
};

/// The most operations one db transaction applies.
pub const MAX_BATCH_OPS: usize = 8192;
/// A batch of fewer operations than this means the write path is lightly loaded, and the
/// store's idle work ([`Store::idle`]) runs whenever the queue empties.
const LIGHT_LOAD_OPS: usize = 256;
/// Expired holds voided per sweep batch.
const SWEEP_LIMIT: usize = 1000;
/// Runners settled per sweep batch: a settlement writes a few rows per minute of a runner's
/// time, and a request that reaches the writer while a sweep batch runs waits for it, so a
/// page keeps the batch to about a millisecond or two; a sweep that finds a full page sweeps
/// the next page at once (see [`Engine::sweep_expired`]).
pub const RUNNER_SWEEP_LIMIT: usize = 16;
/// Applied runner event ids deleted per sweep batch once older than the retention
/// (`ServerlessSettings::event_retention_ms`): a range of one index and a row each, so a step
/// stays short; a sweep that deletes a full page deletes the next at once.
pub const EVENT_PRUNE_LIMIT: usize = 256;
/// The most batches one [`Engine::sweep_expired`] runs while each finds a full page: a bound
/// should expired holds keep arriving as fast as they are voided (the next sweep takes them
/// up again). Runners are paged by key, so one sweep reads each due runner once and
/// 100,000 runners take 6,250 of its batches.
const MAX_SWEEP_STEPS: usize = 16_384;
/// Accounts whose usage periods one batch closes, when closing every account: a close is a
/// few rows per account, and a bounded step keeps admission flowing between steps.
pub const CLOSE_STEP_ACCOUNTS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the engine has stopped")]
    Stopped,
    /// The command's input was refused; nothing was written.
    #[error("{}", .0.message)]
    Invalid(InvalidInput),
    /// A sync of the store failed: the database file is behind what the writer built on, so
    /// the engine refuses every write until tollgate restarts.
    #[error("{0}; tollgate must be restarted to write again")]
    SyncFailed(StoreError),
    /// Something other than the store failed (a thread could not start, a task panicked).
    #[error("{0}")]
    Internal(String),
    /// The thing named is not in a state the command applies to (an invoice that is not open);
    /// nothing was written.
    #[error("{0}")]
    WrongState(String),
}

/// Refused input, with where it was found when it came from a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    pub message: String,
    pub field: Option<String>,
    pub line: Option<usize>,
}

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> Self {
        InvalidInput {
            message: message.into(),
            field: None,
            line: None,
        }
    }
}

/// The source of `now`. Tests may substitute one they control.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        Timestamp(d.as_millis() as i64)
    })
}

/// Operator changes that are not money movements. They take the same path, so the writer is
/// the only writer.
#[derive(Debug, Clone)]
pub enum AdminCmd {
    CreateAccount {
        username: AccountId,
        billing: BillingMode,
    },
    /// Changes an account's terms (a new terms version, effective from the change's
    /// `effective_from`) and adds its own prices (each a new account-scoped price version),
    /// in one db transaction: the change is applied to the terms as they are under the
    /// account's lock, so concurrent changes of different terms all stick, and a refused
    /// change (invalid terms or prices, or a back-dated version: [`EngineError::Invalid`]; no
    /// such account, or an endpoint or machine type not in the catalog:
    /// [`StoreError::NotFound`]) writes nothing.
    SetTerms {
        username: AccountId,
        change: TermsChange,
    },
    /// Inserts a key unless a key with its id exists ([`AdminReply::KeyInserted`] says which):
    /// a stored key, revoked or not, is never replaced.
    InsertKey(ApiKeyRecord),
    RevokeKey {
        key_id: ApiKeyId,
        account: Option<AccountId>,
    },
    ApplyCatalog(Box<CatalogDocument>),
    /// Replaces the issuer printed on invoices.
    SetIssuer(Issuer),
    /// Marks an open invoice paid (`status` [`InvoiceStatus::Paid`], `reference` the payment's
    /// reference) or void (`reason`); any other status is refused
    /// ([`EngineError::WrongState`]), an unknown invoice is [`StoreError::NotFound`].
    SetInvoiceStatus {
        year: i64,
        seq: i64,
        status: InvoiceStatus,
        reference: String,
    },
    /// What applying the document would change, against the catalog as committed; writes
    /// nothing.
    PreviewCatalog(Box<CatalogDocument>),
    /// Stores a one-time sign-in link to an account's dashboard.
    MintPortalLink(PortalLink),
    /// Uses a portal link and starts `session` for the link's account (its `account` is set
    /// from the link), in one db transaction: [`AdminReply::SignedIn`] with the account, or
    /// `None` when the link is unknown, used or expired (nothing written).
    RedeemPortalLink {
        token_sha256: String,
        session: WebSession,
    },
    /// Starts a web session (a sign-in with a key).
    StartWebSession(WebSession),
    /// Signs a web session out ([`AdminReply::Ended`]: whether it was signed in).
    EndWebSession {
        id_sha256: String,
    },
    /// Signs out every dashboard session of `account` still signed in, however it signed in
    /// (a key or a sign-in link): [`AdminReply::SessionsEnded`] with how many. Console
    /// sessions are never touched.
    EndAccountSessions {
        account: AccountId,
    },
    /// Stores a new webhook: the events of every batch committed after it are delivered to it
    /// (those of its types).
    CreateWebhook(WebhookRecord),
    /// Deletes a webhook ([`AdminReply::Found`]: whether a live one had the id); its pending
    /// deliveries are given up.
    DeleteWebhook {
        webhook_id: String,
    },
    /// Claims up to `limit` deliveries due now, each leased for `lease_ms` on the engine's
    /// clock ([`AdminReply::Claimed`]): round-robin across webhooks, at most `per_webhook` of
    /// one webhook's leased at once (those already leased counted).
    ClaimDeliveries {
        limit: usize,
        per_webhook: usize,
        lease_ms: i64,
    },
    /// Records attempts of claimed deliveries (those whose lease still holds).
    RecordDeliveries(Vec<DeliveryResult>),
    /// Queues the delivery of event `event_seq` to a webhook again, due now
    /// ([`AdminReply::Found`]: whether there is such a delivery).
    Redeliver {
        webhook_id: String,
        event_seq: i64,
    },
    /// Adds a spending limit to an account, under its lock, created now (whatever its
    /// `created_at` says): [`AdminReply::Limit`]. It starts
    /// in the period of now with what that period has already charged (the line items billed
    /// since its start) and what the running requests it applies to hold, so its spend is
    /// exact from the start. Refused, with nothing written: an invalid amount or thresholds, a
    /// key that is not a live key of the account (`api_key_id`), more than
    /// [`limits::MAX_LIMITS_PER_ACCOUNT`] limits ([`EngineError::Invalid`]); no such account
    /// ([`StoreError::NotFound`]); an id the account already has
    /// ([`StoreError::AlreadyExists`]).
    CreateLimit {
        username: AccountId,
        limit: SpendingLimit,
    },
    /// Changes a limit's amount, action or thresholds, under the account's lock, keeping its id
    /// and its period's state ([`LimitState::changed`]): [`AdminReply::Limit`]. An unknown
    /// limit is [`StoreError::NotFound`]; invalid values [`EngineError::Invalid`].
    ChangeLimit {
        username: AccountId,
        limit_id: LimitId,
        change: LimitChange,
    },
    /// Removes a limit; an unknown one is [`StoreError::NotFound`].
    DeleteLimit {
        username: AccountId,
        limit_id: LimitId,
    },
    /// Creates the payment provider's subscription row unless it exists
    /// ([`AdminReply::Found`]: whether it existed already), so every auto top-up started from
    /// the next commit on is delivered to the provider (charged) through the outbox. Run when
    /// payments are configured.
    EnsureProviderWebhook,
    /// The deployment's payments installation id
    /// ([`tollgate_store::SETTING_PAYMENTS_INSTALLATION`]): the one stored, or `fresh`, stored
    /// now ([`AdminReply::Setting`]). Servers of one database share the first one stored.
    PaymentsInstallation {
        fresh: String,
    },
    /// Extends the gateway leases `owner` holds on `requests` to `lease_ms` from now
    /// ([`AdminReply::Held`]: those it still holds; a request finished or cancelled meanwhile
    /// is not among them).
    RenewGatewayLeases {
        owner: String,
        requests: Vec<RequestId>,
        lease_ms: i64,
    },
    /// Ends every gateway lease on a store with one server (SQLite): its gateway, starting,
    /// takes over at once the requests its previous process was running. Does nothing on a
    /// shared database, where the leases are other servers'.
    EndGatewayLeases,
    /// Deletes up to `limit` gateway requests finished before `before` (their results past the
    /// retention): [`AdminReply::Count`].
    PruneGatewayResults {
        before: Timestamp,
        limit: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    Done,
    /// Whether [`AdminCmd::InsertKey`] inserted the key (`false`: its id was taken).
    KeyInserted(bool),
    Revoked(bool),
    TermsSet {
        price_versions_created: usize,
    },
    CatalogApplied {
        endpoints: usize,
        versions_created: usize,
        /// What the document changed, endpoint by endpoint.
        plan: Box<CatalogPlan>,
    },
    /// What the document would change (nothing was written).
    CatalogPlanned(Box<CatalogPlan>),
    /// The account a portal link signed in to (`None`: the link did not work).
    SignedIn(Option<AccountId>),
    /// Whether a session was signed in before it was ended.
    Ended(bool),
    /// How many of an account's sessions [`AdminCmd::EndAccountSessions`] signed out.
    SessionsEnded(usize),
    /// Whether the thing a command named was there.
    Found(bool),
    /// The deliveries [`AdminCmd::ClaimDeliveries`] leased.
    Claimed(Vec<ClaimedDelivery>),
    /// A spending limit as created or changed, in the period of now.
    Limit(Box<LimitState>),
    /// A setting's value as stored.
    Setting(String),
    /// The gateway requests whose leases [`AdminCmd::RenewGatewayLeases`] extended.
    Held(Vec<RequestId>),
    /// How many rows a command changed.
    Count(usize),
}

type OpsReply = oneshot::Sender<Result<Vec<Result<Outcome, Rejection>>, EngineError>>;

/// Which accounts a close job closes.
#[derive(Clone, Debug)]
enum CloseScope {
    /// One account (named by the operator).
    Account(AccountId),
    /// The next accounts with charges in their open period, in name order after `after`
    /// (those whose period began before `started_before`, when given).
    Next {
        after: Option<AccountId>,
        started_before: Option<Timestamp>,
    },
}

/// What one sweep batch did: its answers, whether it found a full page of something due
/// (expired holds, runners to settle), so more may be due now, and the key of the last runner
/// it read (the next batch of the sweep reads the runners after it).
struct SweepStep {
    results: Vec<Result<Outcome, Rejection>>,
    page: SweepPage,
}

/// Where a sweep batch's pages ended.
#[derive(Clone, Debug, Default)]
struct SweepPage {
    full: bool,
    last_runner: Option<DueRunner>,
    /// Runner event ids deleted (older than the retention).
    pruned: usize,
}

/// What one close job did.
struct CloseStep {
    /// Each account closed, with its answer.
    closed: Vec<(AccountId, Result<Outcome, Rejection>)>,
    /// The `(year, seq)` of the usage invoices issued to those accounts in the batch.
    issued: Vec<(i64, i64)>,
}

enum Job {
    Ops {
        ops: Vec<Op>,
        reply: OpsReply,
    },
    /// A step of a sweep: expired holds and credits, and the due runners after `after`.
    Sweep {
        after: Option<DueRunner>,
        reply: oneshot::Sender<Result<SweepStep, EngineError>>,
    },
    Close {
        scope: CloseScope,
        until: Option<Timestamp>,
        reply: oneshot::Sender<Result<CloseStep, EngineError>>,
    },
    Admin {
        cmd: AdminCmd,
        reply: oneshot::Sender<Result<AdminReply, EngineError>>,
    },
    /// Stop the write path once every job queued before it has run (see [`Engine::shutdown`]).
    Stop {
        reply: oneshot::Sender<()>,
    },
    /// A no-op that shows the writer takes jobs: answered with the schema version read on the
    /// writer's connection.
    Ping {
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::Ops { ops, .. } => ops.len(),
            _ => 1,
        }
    }

    /// Answers the caller with `error` at once, without running the job.
    fn fail(self, error: EngineError) {
        match self {
            Job::Ops { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Job::Sweep { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Job::Admin { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Job::Close { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Job::Stop { reply } => {
                let _ = reply.send(());
            }
            Job::Ping { reply } => {
                let _ = reply.send(Err(match error {
                    EngineError::Store(e) | EngineError::SyncFailed(e) => e,
                    other => StoreError::Refused(other.to_string()),
                }));
            }
        }
    }
}

/// What [`Engine::readiness`] found: each check `Ok`, or why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The writer thread took a no-op job from its queue and answered in time.
    pub writer: Result<(), String>,
    /// A read connection answered a query.
    pub database: Result<(), String>,
    /// The database's schema is the one this engine started on: every migration this tollgate
    /// knows is done, and no newer tollgate migrated the database since.
    pub migrations: Result<(), String>,
    /// No disk sync failed (after one, writes are refused until tollgate restarts).
    pub disk_sync: Result<(), String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.writer.is_ok()
            && self.database.is_ok()
            && self.migrations.is_ok()
            && self.disk_sync.is_ok()
    }
}

/// How long a key read from the database is trusted before it is read again, on the engine's
/// clock. Within one process, inserting or revoking a key takes effect at once (the engine
/// forgets what it cached of the key when its db transaction commits); the bound matters only
/// when several processes share a database: a key revoked through one server is refused by the
/// others at most this long after the revocation.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a readiness check's answer is reused, on the engine's clock: probes need no key, so
/// a flood of them must not become a flood of jobs for the writer (see [`Engine::readiness`]).
pub const READINESS_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the probes share (see [`Engine::readiness`]); its lock is held while a check runs, so
/// the probes that arrive meanwhile wait for that check instead of starting their own.
#[derive(Default)]
struct ReadinessCheck {
    /// The last check's answer and when it was made (engine time).
    last: Option<(Timestamp, Readiness)>,
    /// The writer's answer to the ping still in its queue, if any: a later check waits for it
    /// rather than queue another, so at most one ping is queued at a time.
    ping: Option<oneshot::Receiver<Result<i64, StoreError>>>,
}

/// Keys read from the database, with when each was read (engine time).
#[derive(Default)]
struct KeyCache {
    keys: HashMap<ApiKeyId, (ApiKeyRecord, Timestamp)>,
    /// Counts the keys forgotten: a read that began before a key was forgotten must not put
    /// what it read (possibly from before the change) back into the cache.
    forgotten: u64,
}

impl KeyCache {
    /// The cached record, if it was read less than [`KEY_CACHE_TTL`] before `now` (and not
    /// after it: a clock that went back does not extend the trust).
    fn fresh(&self, key_id: &ApiKeyId, now: Timestamp) -> Option<&ApiKeyRecord> {
        let ttl_ms = KEY_CACHE_TTL.as_millis() as i64;
        self.keys
            .get(key_id)
            .filter(|(_, at)| at.0 <= now.0 && now.0 - at.0 < ttl_ms)
            .map(|(record, _)| record)
    }

    fn forget(&mut self, key_id: &ApiKeyId) {
        self.keys.remove(key_id);
        self.forgotten += 1;
    }
}

struct Shared {
    /// The catalog snapshot and the generation it was read at.
    catalog: RwLock<(i64, Arc<Catalog>)>,
    keys: Mutex<KeyCache>,
    readers: Mutex<Vec<Box<dyn Reader>>>,
    open_reader: ReaderFactory,
    clock: Clock,
    /// Set when a sync of the store failed (see [`syncer`]).
    sync_failure: std::sync::OnceLock<StoreError>,
    metrics: Arc<Metrics>,
    /// The schema version the engine started on (migrations run before it starts).
    schema_version: i64,
    readiness: tokio::sync::Mutex<ReadinessCheck>,
    /// The prefix of the invoice numbers issued from now on (`None`: the store's default).
    invoice_prefix: RwLock<Option<Arc<str>>>,
    /// The top-up settings every batch applies from now on (`[top_ups]`).
    top_up_settings: RwLock<TopUpSettings>,
    /// The serverless settings every batch applies from now on (`[serverless]`).
    serverless: RwLock<ServerlessSettings>,
    /// Told when a committed (and synced) batch wrote events to the outbox, or a delivery was
    /// queued again: the webhook dispatcher wakes on it ([`Engine::events_written`]).
    events_written: Arc<tokio::sync::Notify>,
}

/// A handle to the write path and the read pool. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl Engine {
    /// Starts the writer thread over `store`.
    pub fn start(mut store: Box<dyn Store>, clock: Clock) -> Result<Engine, EngineError> {
        let open_reader = store.reader_factory();
        // On a thread of its own: a database driver may block in ways an async runtime
        // refuses on its own threads.
        let (first, catalog, schema_version) = std::thread::scope(|s| {
            s.spawn(|| -> Result<_, StoreError> {
                let mut first = open_reader()?;
                // The generation first: if the catalog changes in between, the next batch
                // sees a newer generation and reads it again.
                let generation = first.catalog_generation()?;
                let catalog = (generation, Arc::new(first.load_catalog()?));
                Ok((first, catalog, store.schema_version()?))
            })
            .join()
            .map_err(|_| EngineError::Internal("reading the catalog panicked".into()))
        })??;
        let (tx, rx) = mpsc::channel::<Job>(65_536);
        let shared = Arc::new(Shared {
            catalog: RwLock::new(catalog),
            readers: Mutex::new(vec![first]),
            keys: Mutex::new(KeyCache::default()),
            open_reader,
            clock,
            sync_failure: std::sync::OnceLock::new(),
            metrics: Arc::new(Metrics::new()),
            schema_version,
            readiness: tokio::sync::Mutex::default(),
            invoice_prefix: RwLock::new(None),
            top_up_settings: RwLock::new(TopUpSettings::default()),
            serverless: RwLock::new(ServerlessSettings::default()),
            events_written: Arc::new(tokio::sync::Notify::new()),
        });
        let (outbox, syncer_thread) = match store.defer_sync()? {
            None => (Outbox::Direct, None),
            Some(sync) => {
                let (answers, synced) = std::sync::mpsc::channel();
                let syncer_shared = shared.clone();
                let thread = std::thread::Builder::new()
                    .name("tollgate-syncer".into())
                    .spawn(move || syncer(sync, synced, syncer_shared))
                    .map_err(|e| EngineError::Internal(format!("cannot start the syncer: {e}")))?;
                (Outbox::AfterSync(answers), Some(thread))
            }
        };
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("tollgate-writer".into())
            .spawn(move || {
                let stop = writer(store, rx, writer_shared, outbox);
                // The outbox is gone: the syncer answers what it holds, after its last sync,
                // and ends.
                if let Some(thread) = syncer_thread {
                    let _ = thread.join();
                }
                if let Some(stop) = stop {
                    let _ = stop.send(());
                }
            })
            .map_err(|e| EngineError::Internal(format!("cannot start the writer: {e}")))?;
        Ok(Engine { jobs: tx, shared })
    }

    pub fn now(&self) -> Timestamp {
        (self.shared.clock)()
    }

    /// This engine's metrics registry (see [`metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The catalog snapshot in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.shared.catalog.read().expect("catalog lock").1.clone()
    }

    /// Applies one operation; returns once its batch is durably committed.
    pub async fn execute(&self, op: Op) -> Result<Result<Outcome, Rejection>, EngineError> {
        let mut all = self.execute_many(vec![op]).await?;
        Ok(all.pop().expect("one answer per operation"))
    }

    /// Applies operations in order within one batch; one answer per operation, in order.
    pub async fn execute_many(
        &self,
        ops: Vec<Op>,
    ) -> Result<Vec<Result<Outcome, Rejection>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Ops { ops, reply }).await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Queues a job for the writer, counted in the queue depth until the writer takes it.
    async fn send(&self, job: Job) -> Result<(), EngineError> {
        let ops = job.len();
        self.shared.metrics.queued(ops);
        self.jobs.send(job).await.map_err(|_| {
            self.shared.metrics.dequeued(ops);
            EngineError::Stopped
        })
    }

    /// Returns once a batch committed since the last call (or since the first, for the first
    /// call) wrote events to the outbox, or a delivery was queued again: what the webhook
    /// dispatcher waits for between its ticks. One waiter is woken per notice (a notice with
    /// nobody waiting is kept for the next call).
    pub async fn events_written(&self) {
        self.shared.events_written.notified().await
    }

    /// Numbers the invoices issued from now on `<prefix>-<year>-<seq>` (checked by
    /// [`tollgate_store::check_invoice_prefix`]; the sequence is shared whatever the prefix).
    pub fn set_invoice_prefix(&self, prefix: &str) -> Result<(), EngineError> {
        tollgate_store::check_invoice_prefix(prefix)
            .map_err(|e| EngineError::Invalid(InvalidInput::new(format!("invoice prefix {e}"))))?;
        *self.shared.invoice_prefix.write().expect("prefix lock") = Some(Arc::from(prefix));
        Ok(())
    }

    /// The top-up settings the core applies from the next batch on (the allowed top-up range,
    /// how long a declined auto top-up waits): the deployment's `[top_ups]`, like the invoice
    /// prefix a setting of the process, not of the database. Refused
    /// ([`EngineError::Invalid`]) unless `0 < min <= max` and `retry_after_ms >= 0`.
    pub fn set_top_up_settings(&self, settings: TopUpSettings) -> Result<(), EngineError> {
        if settings.min.0 <= 0 || settings.min > settings.max {
            return Err(EngineError::Invalid(InvalidInput::new(format!(
                "top-up range: the minimum ({}) must be positive and at most the maximum ({})",
                settings.min, settings.max
            ))));
        }
        if settings.retry_after_ms < 0 {
            return Err(EngineError::Invalid(InvalidInput::new(
                "top-up retry_after must not be negative",
            )));
        }
        *self
            .shared
            .top_up_settings
            .write()
            .expect("top-up settings lock") = settings;
        Ok(())
    }

    /// The top-up settings in force.
    pub fn top_up_settings(&self) -> TopUpSettings {
        *self
            .shared
            .top_up_settings
            .read()
            .expect("top-up settings lock")
    }

    /// The serverless settings the core applies from the next batch on (how long after its
    /// last report a runner is still accounted): the deployment's `[serverless]`, like the
    /// top-up settings a setting of the process. Refused ([`EngineError::Invalid`]) unless the
    /// grace is 1 s to [`serverless::MAX_GRACE_MS`].
    pub fn set_serverless_settings(&self, settings: ServerlessSettings) -> Result<(), EngineError> {
        if !(1_000..=serverless::MAX_GRACE_MS).contains(&settings.grace_ms) {
            return Err(EngineError::Invalid(InvalidInput::new(format!(
                "the serverless grace ({} ms) must be 1 s to {} s",
                settings.grace_ms,
                serverless::MAX_GRACE_MS / 1_000
            ))));
        }
        let retention = serverless::MIN_EVENT_RETENTION_MS..=serverless::MAX_EVENT_RETENTION_MS;
        if !retention.contains(&settings.event_retention_ms) {
            return Err(EngineError::Invalid(InvalidInput::new(format!(
                "the runner event retention ({} ms) must be {} h to {} h",
                settings.event_retention_ms,
                serverless::MIN_EVENT_RETENTION_MS / 3_600_000,
                serverless::MAX_EVENT_RETENTION_MS / 3_600_000
            ))));
        }
        *self
            .shared
            .serverless
            .write()
            .expect("serverless settings lock") = settings;
        Ok(())
    }

    /// The serverless settings in force.
    pub fn serverless_settings(&self) -> ServerlessSettings {
        *self
            .shared
            .serverless
            .read()
            .expect("serverless settings lock")
    }

    /// Creates the payment provider's subscription row unless it exists (see
    /// [`AdminCmd::EnsureProviderWebhook`]); returns whether it was created now.
    pub async fn ensure_provider_webhook(&self) -> Result<bool, EngineError> {
        match self.admin(AdminCmd::EnsureProviderWebhook).await? {
            AdminReply::Found(existed) => Ok(!existed),
            other => Err(EngineError::Internal(format!(
                "unexpected answer to ensuring the provider's webhook: {other:?}"
            ))),
        }
    }

    /// The deployment's payments installation id: the one stored at the first start, or
    /// `fresh` (drawn at random by the caller), stored now when there is none (see
    /// [`AdminCmd::PaymentsInstallation`]). Refused ([`EngineError::Invalid`]) when `fresh`
    /// is not 1 to 32 ASCII letters and digits: it goes into the provider's idempotency keys
    /// and metadata.
    pub async fn payments_installation(&self, fresh: &str) -> Result<String, EngineError> {
        if fresh.is_empty() || fresh.len() > 32 || !fresh.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(EngineError::Invalid(InvalidInput::new(
                "a payments installation id is 1 to 32 ASCII letters and digits",
            )));
        }
        match self
            .admin(AdminCmd::PaymentsInstallation {
                fresh: fresh.to_string(),
            })
            .await?
        {
            AdminReply::Setting(id) => Ok(id),
            other => Err(EngineError::Internal(format!(
                "unexpected answer to reading the payments installation: {other:?}"
            ))),
        }
    }

    /// Closes usage billing periods (see [`Op::CloseInvoicePeriod`]): `account`'s, or every
    /// account's with charges in its open period (in steps of [`CLOSE_STEP_ACCOUNTS`]
    /// accounts, each its own batch, so admission is never stalled behind a long close).
    /// `until` `None` closes every charge recorded so far; a past `until` closes a period only
    /// if all its charges were recorded before it. Returns the `(year, seq)` of the usage
    /// invoices issued, in issue order. An unknown `account` is [`StoreError::NotFound`];
    /// a future `until` is [`EngineError::Invalid`] and writes nothing.
    pub async fn close_invoice_periods(
        &self,
        account: Option<AccountId>,
        until: Option<Timestamp>,
    ) -> Result<Vec<(i64, i64)>, EngineError> {
        if let Some(u) = until {
            if u > self.now() {
                return Err(EngineError::Invalid(InvalidInput {
                    message: "`until` is in the future".into(),
                    field: Some("until".into()),
                    line: None,
                }));
            }
        }
        match account {
            Some(a) => {
                let step = self.close_step(CloseScope::Account(a), until).await?;
                for (account, answer) in &step.closed {
                    match answer {
                        Err(Rejection::UnknownAccount(_)) => {
                            return Err(StoreError::NotFound(format!("account {account}")).into())
                        }
                        Err(Rejection::Invalid { field, reason }) => {
                            return Err(EngineError::Invalid(InvalidInput {
                                message: format!("`{field}` {reason}"),
                                field: Some((*field).into()),
                                line: None,
                            }))
                        }
                        _ => {}
                    }
                }
                Ok(step.issued)
            }
            None => self.close_all(None, until).await,
        }
    }

    /// Closes the periods of every account whose open period began before the current
    /// calendar month (UTC) and has charges: the month's close, also catching up on months
    /// missed while the server was down (a period is closed at the end of its own month).
    /// The server runs it at startup and then whenever the UTC month changes (a background
    /// task, `tollgate_api::spawn_month_close`). Returns the invoices issued.
    pub async fn close_elapsed_months(&self) -> Result<Vec<(i64, i64)>, EngineError> {
        let start = month_start(self.now());
        self.close_all(Some(start), Some(start)).await
    }

    async fn close_all(
        &self,
        started_before: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<Vec<(i64, i64)>, EngineError> {
        let mut issued = Vec::new();
        let mut after = None;
        loop {
            let step = self
                .close_step(
                    CloseScope::Next {
                        after: after.clone(),
                        started_before,
                    },
                    until,
                )
                .await?;
            issued.extend(step.issued);
            if step.closed.len() < CLOSE_STEP_ACCOUNTS {
                return Ok(issued);
            }
            after = step.closed.last().map(|(a, _)| a.clone());
        }
    }

    async fn close_step(
        &self,
        scope: CloseScope,
        until: Option<Timestamp>,
    ) -> Result<CloseStep, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Close {
            scope,
            until,
            reply,
        })
        .await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Voids every hold that has expired by now, expires credits past their date, records
    /// `credits.expiring` for credits that expire within a week, and settles every serverless
    /// runner due up to the start of the current minute. Each batch takes a page of each
    /// ([`RUNNER_SWEEP_LIMIT`] runners), and while a batch finds a full page of expired holds
    /// or due runners another follows at once (other callers' operations run between them), so
    /// a sweep keeps up with thousands of runners. Returns how many requests expired.
    pub async fn sweep_expired(&self) -> Result<usize, EngineError> {
        let mut expired = 0;
        let mut after: Option<DueRunner> = None;
        for _ in 0..MAX_SWEEP_STEPS {
            let (reply, rx) = oneshot::channel();
            self.send(Job::Sweep {
                after: after.clone(),
                reply,
            })
            .await?;
            let step = rx.await.map_err(|_| EngineError::Stopped)??;
            expired += step
                .results
                .iter()
                .filter(|r| matches!(r, Ok(Outcome::Expired { expired: true })))
                .count();
            if !step.page.full {
                break;
            }
            after = step.page.last_runner.or(after);
        }
        Ok(expired)
    }

    pub async fn admin(&self, cmd: AdminCmd) -> Result<AdminReply, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Admin { cmd, reply }).await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Stops the write path: every job queued before this call runs, is committed and synced,
    /// and its caller answered; jobs sent later are refused with [`EngineError::Stopped`]; the
    /// store is closed. Returns once the writer (and the syncer, if any) have ended, so what
    /// was committed is on disk when the process exits.
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Stop { reply })
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Whether the engine can serve: the writer answers a no-op job within `within`, the
    /// database answers a read (on a read connection, and on the writer's), its schema is the
    /// one the engine started on, and no disk sync failed.
    ///
    /// One check serves many probes: those that arrive while a check runs wait for its answer,
    /// and an answer younger than [`READINESS_REUSE`] (engine time) is answered again, so at
    /// most one ping is in the writer's queue however many probes arrive. A failed disk sync
    /// shows at once.
    pub async fn readiness(&self, within: std::time::Duration) -> Readiness {
        let checked = {
            let mut check = self.shared.readiness.lock().await;
            let now = self.now();
            let reuse_ms = READINESS_REUSE.as_millis() as i64;
            match &check.last {
                // A clock that went back does not extend the reuse.
                Some((at, answer)) if at.0 <= now.0 && now.0 - at.0 < reuse_ms => answer.clone(),
                _ => {
                    let answer = self.check_readiness(&mut check, within).await;
                    check.last = Some((self.now(), answer.clone()));
                    answer
                }
            }
        };
        let disk_sync = match self.shared.sync_failure.get() {
            Some(e) => Err(EngineError::SyncFailed(e.clone()).to_string()),
            None => Ok(()),
        };
        Readiness {
            disk_sync,
            ..checked
        }
    }

    /// Runs the checks of [`Engine::readiness`], holding its lock. The ping's answer is awaited
    /// where it is kept (`check.ping`): a probe that gives up (its timeout, or its caller gone)
    /// leaves the ping queued and its answer for the next check.
    async fn check_readiness(
        &self,
        check: &mut ReadinessCheck,
        within: std::time::Duration,
    ) -> Readiness {
        let ping = async {
            if check.ping.is_none() {
                let (reply, rx) = oneshot::channel();
                self.send(Job::Ping { reply }).await?;
                check.ping = Some(rx);
            }
            let answer = check.ping.as_mut().expect("a ping is queued").await;
            check.ping = None;
            answer.map_err(|_| EngineError::Stopped)
        };
        let read = self.read(|r| r.catalog_generation());
        let (ping, read) = tokio::join!(
            tokio::time::timeout(within, ping),
            tokio::time::timeout(within, read)
        );
        let late = |what: &str| format!("{what} did not answer within {} ms", within.as_millis());
        let (writer, migrations) = match ping {
            Err(_) => (Err(late("the writer")), Err(late("the writer"))),
            Ok(Err(e)) => (Err(e.to_string()), Err(e.to_string())),
            Ok(Ok(Err(e))) => (Ok(()), Err(format!("cannot read the schema version: {e}"))),
            Ok(Ok(Ok(v))) if v != self.shared.schema_version => (
                Ok(()),
                Err(format!(
                    "the database schema is at version {v}, this server started on version {}; \
                     run the tollgate that migrated it",
                    self.shared.schema_version
                )),
            ),
            Ok(Ok(Ok(_))) => (Ok(()), Ok(())),
        };
        let database = match read {
            Err(_) => Err(late("the database")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(_)) => Ok(()),
        };
        Readiness {
            writer,
            database,
            migrations,
            disk_sync: Ok(()),
        }
    }

    /// The key with this id, from a short-lived cache in front of the database (API keys are
    /// checked on every call).
    pub async fn api_key(&self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, EngineError> {
        let forgotten = {
            let cache = self.shared.keys.lock().expect("key cache");
            if let Some(record) = cache.fresh(key_id, self.now()) {
                return Ok(Some(record.clone()));
            }
            cache.forgotten
        };
        let id = key_id.clone();
        let found = self.read(move |r| r.api_key(&id)).await?;
        if let Some(record) = &found {
            let mut cache = self.shared.keys.lock().expect("key cache");
            // A key inserted or revoked meanwhile may have been read as it was before.
            if cache.forgotten == forgotten {
                if cache.keys.len() > 100_000 {
                    cache.keys.clear();
                }
                cache
                    .keys
                    .insert(key_id.clone(), (record.clone(), self.now()));
            }
        }
        Ok(found)
    }

    /// Runs a query on a pooled read connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Reader) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = shared.readers.lock().expect("reader pool").pop();
            let mut reader = match pooled {
                Some(r) => r,
                None => (shared.open_reader)()?,
            };
            let out = f(&mut *reader);
            shared.readers.lock().expect("reader pool").push(reader);
            Ok(out?)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("query task failed: {e}")))?
    }
}

/// A caller's answer, delivered with `Ok(())` once the commit that produced it is on disk, or
/// with the error that kept it from getting there.
type Answer = Box<dyn FnOnce(Result<(), EngineError>) + Send>;

/// Where the writer puts answers after a commit.
enum Outbox {
    /// The store's commits are durable when they return: answer at once.
    Direct,
    /// The store defers its sync: the syncer thread answers after the next sync.
    AfterSync(std::sync::mpsc::Sender<Vec<Answer>>),
}

impl Outbox {
    fn deliver(&self, answers: Vec<Answer>) {
        match self {
            Outbox::Direct => answers.into_iter().for_each(|a| a(Ok(()))),
            Outbox::AfterSync(syncer) => {
                if let Err(lost) = syncer.send(answers) {
                    lost.0
                        .into_iter()
                        .for_each(|a| a(Err(EngineError::Stopped)));
                }
            }
        }
    }
}

/// Puts every commit on disk and then answers its callers: each sync covers every batch
/// committed before it started, so while one batch's commit is synced, the writer already
/// runs the next. A failed sync leaves the database file behind what later batches would
/// build on, so from then on every operation is refused until tollgate restarts.
fn syncer(mut sync: SyncFn, rx: std::sync::mpsc::Receiver<Vec<Answer>>, shared: Arc<Shared>) {
    while let Ok(mut answers) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            answers.extend(more);
        }
        let synced = match shared.sync_failure.get() {
            Some(failure) => Err(failure.clone()),
            None => {
                let started = Instant::now();
                let synced = sync();
                shared.metrics.synced(started.elapsed());
                synced.map_err(|e| {
                    tracing::error!("{}", EngineError::SyncFailed(e.clone()));
                    shared.sync_failure.get_or_init(|| e).clone()
                })
            }
        };
        for answer in answers {
            answer(synced.clone().map_err(EngineError::SyncFailed));
        }
    }
}

/// Runs batches until every handle is dropped or a [`Job::Stop`] arrives; returns the stop's
/// reply, to be sent once the store is closed and every answer delivered.
fn writer(
    mut store: Box<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Shared>,
    outbox: Outbox,
) -> Option<oneshot::Sender<()>> {
    let mut pending: Vec<Job> = Vec::new();
    let mut stop: Option<oneshot::Sender<()>> = None;
    // Whether the last batch was small: the write path is lightly loaded.
    let mut light = true;
    loop {
        let first = match rx.try_recv() {
            Ok(job) => job,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing queued under light load: the store's deferred work runs now, not
                // inside a batch. (Under heavy load callers wait for their answers between
                // batches, so the queue empties too; the work is then left for a batch, where
                // it is done in larger and cheaper steps.)
                if light {
                    if let Err(e) = store.idle() {
                        tracing::warn!("the store's idle work failed (tried again later): {e}");
                    }
                }
                match rx.blocking_recv() {
                    Some(job) => job,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let mut size = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if let Job::Stop { reply } = job {
                stop = Some(reply);
                break;
            }
            size += job.len();
            pending.push(job);
            if size < MAX_BATCH_OPS {
                next = rx.try_recv().ok();
            }
        }
        shared.metrics.dequeued(size);
        light = size < LIGHT_LOAD_OPS;
        let jobs = std::mem::take(&mut pending);
        if let Some(failure) = shared.sync_failure.get() {
            for job in jobs {
                job.fail(EngineError::SyncFailed(failure.clone()));
            }
        } else {
            // A bug that panics inside one batch must not take the write path down: the db
            // transaction rolls back when unwound, the batch's callers see an error, and the
            // next batch runs.
            let run =
                std::panic::AssertUnwindSafe(|| run_jobs(&mut *store, &shared, jobs, &outbox));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!(
                    "a batch panicked; its operations were rolled back and answered with an error"
                );
            }
        }
        if stop.is_some() {
            break;
        }
    }
    // Whatever was sent after the stop is refused, and nothing more can be sent. A refused
    // job leaves the queue too (a stop was never counted in it).
    rx.close();
    while let Ok(job) = rx.try_recv() {
        if !matches!(job, Job::Stop { .. }) {
            shared.metrics.dequeued(job.len());
        }
        job.fail(EngineError::Stopped);
    }
    drop(store);
    drop(outbox);
    stop
}

/// Groups consecutive operation jobs into one batch; admin commands run in their own db
/// transaction, in order. The background steps among the jobs (a sweep's, a close's) run
/// last, in a batch of their own: callers' operations never wait for a step that was queued
/// with them, only for one already running when they arrive, and a step is kept short.
/// (Jobs queued together were sent concurrently, so running them in another order is one of
/// the orders they could have arrived in.)
fn run_jobs(store: &mut dyn Store, shared: &Shared, jobs: Vec<Job>, outbox: &Outbox) {
    let mut batch: Vec<Job> = Vec::new();
    let mut background: Vec<Job> = Vec::new();
    for job in jobs {
        match job {
            Job::Ping { reply } => {
                let _ = reply.send(store.schema_version());
            }
            Job::Admin { cmd, reply } => {
                outbox.deliver(run_batch(store, shared, std::mem::take(&mut batch)));
                let result = run_admin(store, shared, cmd);
                outbox.deliver(vec![Box::new(move |synced: Result<(), EngineError>| {
                    let _ = reply.send(synced.and(result));
                })]);
            }
            job @ (Job::Sweep { .. } | Job::Close { .. }) => background.push(job),
            other => batch.push(other),
        }
    }
    outbox.deliver(run_batch(store, shared, batch));
    outbox.deliver(run_batch(store, shared, background));
}

/// Runs one batch in one db transaction; returns its callers' answers.
fn run_batch(store: &mut dyn Store, shared: &Shared, jobs: Vec<Job>) -> Vec<Answer> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let now = (shared.clock)();
    let prefix = shared.invoice_prefix.read().expect("prefix lock").clone();
    let top_up_settings = *shared.top_up_settings.read().expect("top-up settings lock");
    let serverless = *shared.serverless.read().expect("serverless settings lock");
    let mut answers: Vec<Vec<Result<Outcome, Rejection>>> = Vec::new();
    // Per job: the accounts a close job closed (empty for other jobs).
    let mut closing: Vec<Vec<AccountId>> = Vec::new();
    // Per job: where a sweep job's pages ended.
    let mut pages: Vec<SweepPage> = Vec::new();
    // Per job: the indices in `new_invoices` of the usage invoices it issued. A period closed
    // because its month ended (before any operation) is the first close job's that names its
    // account, so two closes of one account in a batch do not both report its invoice.
    let mut issued_by: Vec<Vec<usize>> = Vec::new();
    let mut numbers: Vec<(i64, i64)> = Vec::new();
    let mut spent: Option<BatchState> = None;
    let mut runs = 0u64;
    let started = Instant::now();
    let result = store.transaction(&mut |tx| {
        // A run again starts from nothing (see `Rerunnable`): the answers are built anew, and
        // `spent` is replaced. The catalog snapshot it may refresh is a copy of what is
        // committed, which a rollback does not change.
        runs += 1;
        answers.clear();
        closing.clear();
        pages.clear();
        issued_by.clear();
        let catalog = catalog_in_force(tx, shared)?;
        let mut ops_per_job: Vec<Vec<Op>> = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let mut closed = Vec::new();
            let mut page = SweepPage::default();
            ops_per_job.push(match job {
                Job::Ops { ops, .. } => ops.clone(),
                Job::Close { scope, until, .. } => {
                    closed = match scope {
                        CloseScope::Account(a) => vec![a.clone()],
                        CloseScope::Next {
                            after,
                            started_before,
                        } => tx.accounts_with_period_charges(
                            after.as_ref(),
                            *started_before,
                            CLOSE_STEP_ACCOUNTS,
                        )?,
                    };
                    closed
                        .iter()
                        .map(|account| Op::CloseInvoicePeriod {
                            account: account.clone(),
                            until: *until,
                        })
                        .collect()
                }
                Job::Sweep { after, .. } => {
                    let holds = tx.due_expiries(now, SWEEP_LIMIT)?;
                    let credits = tx.due_credit_expiries(now, SWEEP_LIMIT)?;
                    let horizon = now.plus_ms(EXPIRY_NOTICE_MS);
                    let notices = tx.due_expiry_notices(now, horizon, SWEEP_LIMIT)?;
                    // Runners are settled up to the start of the current minute.
                    let minute = tollgate_core::rollup::Grain::Minute.slot_of(now);
                    let runners =
                        tx.due_runner_settlements(minute, after.as_ref(), RUNNER_SWEEP_LIMIT)?;
                    // Event ids past the retention: they only answer repeats, never bill.
                    let cutoff = now.minus_ms(serverless.event_retention_ms);
                    let pruned = tx.prune_runner_events(cutoff, EVENT_PRUNE_LIMIT)?;
                    page = SweepPage {
                        full: holds.len() >= SWEEP_LIMIT
                            || runners.len() >= RUNNER_SWEEP_LIMIT
                            || pruned >= EVENT_PRUNE_LIMIT,
                        last_runner: runners.last().cloned(),
                        pruned,
                    };
                    holds
                        .into_iter()
                        .map(|request_id| Op::Expire { request_id })
                        .chain(
                            credits
                                .into_iter()
                                .map(|account| Op::ExpireCredits { account }),
                        )
                        .chain(
                            notices
                                .into_iter()
                                .map(|account| Op::NoticeExpiringCredits { account }),
                        )
                        .chain(runners.into_iter().map(|due| Op::SettleRunner {
                            runner: due.id,
                            until: None,
                        }))
                        .collect()
                }
                Job::Admin { .. } | Job::Stop { .. } | Job::Ping { .. } => {
                    unreachable!("run alone")
                }
            });
            closing.push(closed);
            pages.push(page);
        }
        let mut state = load(tx, now, ops_per_job.iter().flatten())?;
        state.invoice_prefix = prefix.clone();
        state.top_up_settings = top_up_settings;
        state.serverless = serverless;
        // A period of an earlier month is closed before any operation adds to its account,
        // once the account's runners are settled up to the month's end (their due time of
        // that month accrues to it): those the batch loaded, and the due ones of accounts
        // whose period is closed (locked, so read as committed).
        let elapsed_accounts = elapsed_periods(&state, now);
        if !elapsed_accounts.is_empty() {
            for r in tx.due_runners(&elapsed_accounts, month_start(now))? {
                state.runners.entry(r.id.clone()).or_insert(r);
            }
        }
        close_elapsed_periods(&mut state, &catalog, now);
        let mut elapsed: Vec<usize> = (0..state.new_invoices.len()).collect();
        for (ops, closed) in ops_per_job.into_iter().zip(&closing) {
            let mut mine: Vec<usize> = Vec::new();
            elapsed.retain(|&i| {
                let named = closed.contains(&state.new_invoices[i].account);
                if named {
                    mine.push(i);
                }
                !named
            });
            let first = state.new_invoices.len();
            answers.push(
                ops.into_iter()
                    .map(|op| apply(&mut state, &catalog, now, op))
                    .collect(),
            );
            mine.extend(first..state.new_invoices.len());
            issued_by.push(mine);
        }
        name_live_runners(tx, &mut state, now)?;
        let persisted = tx.persist(&state);
        spent = Some(state);
        numbers = persisted?;
        Ok(())
    });
    let took = started.elapsed();
    let metrics = &shared.metrics;
    metrics.store_runs(runs, result.as_ref().err());
    match &result {
        Ok(()) => {
            metrics.batch(
                answers.iter().map(Vec::len).sum(),
                took,
                answers.iter().flatten(),
            );
            metrics.runner_events_pruned(pages.iter().map(|p| p.pruned).sum());
        }
        Err(e) => {
            metrics.failed_batch();
            tracing::error!(error = %e, "batch failed; every operation in it is answered with an error");
        }
    }
    let mut answers = answers.into_iter();
    // What the batch billed is counted where its answers are delivered (the syncer thread, when
    // there is one), not on the writer, and before them: a caller that reads the metrics after
    // its answer sees its own charge. What the batch read and built, and the operations as
    // sent, are freed there too, after the answers.
    let committed = result.is_ok();
    let spent = Arc::new(Mutex::new(spent));
    let count: Answer = {
        let (metrics, spent) = (shared.metrics.clone(), spent.clone());
        let events = shared.events_written.clone();
        Box::new(move |synced: Result<(), EngineError>| {
            if let (true, Ok(()), Some(state)) =
                (committed, synced, &*spent.lock().expect("batch state"))
            {
                metrics.billed(&state.line_items);
                // The events are durable now: the dispatcher may claim their deliveries.
                if !state.events.is_empty() {
                    events.notify_one();
                }
            }
        })
    };
    // Per job, the numbers of the usage invoices it issued.
    let issued: Vec<Vec<(i64, i64)>> = match (&result, &*spent_now(&spent)) {
        (Ok(()), Some(state)) => issued_by
            .iter()
            .map(|mine| {
                mine.iter()
                    .filter(|&&i| state.new_invoices[i].kind == InvoiceKind::Usage)
                    .map(|&i| numbers[i])
                    .collect()
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut issued = issued.into_iter();
    let mut closing = closing.into_iter();
    let mut pages = pages.into_iter();
    let free: Answer = Box::new(move |_| drop(spent));
    std::iter::once(count)
        .chain(jobs.into_iter().map(|job| {
            let closed = closing.next().unwrap_or_default();
            let issued = issued.next().unwrap_or_default();
            let page = pages.next().unwrap_or_default();
            let (reply, ops) = match job {
                Job::Ops { reply, ops } => (reply, ops),
                Job::Sweep { reply, .. } => {
                    let msg = match &result {
                        Ok(()) => Ok(SweepStep {
                            results: answers.next().expect("one answer list per job"),
                            page,
                        }),
                        Err(e) => Err(EngineError::Store(e.clone())),
                    };
                    return Box::new(move |synced: Result<(), EngineError>| {
                        let _ = reply.send(synced.and(msg));
                    }) as Answer;
                }
                Job::Close { reply, .. } => {
                    let msg = match &result {
                        Ok(()) => {
                            let answers = answers.next().expect("one answer list per job");
                            Ok(CloseStep {
                                closed: closed.into_iter().zip(answers).collect(),
                                issued,
                            })
                        }
                        Err(e) => Err(EngineError::Store(e.clone())),
                    };
                    return Box::new(move |synced: Result<(), EngineError>| {
                        let _ = reply.send(synced.and(msg));
                    }) as Answer;
                }
                Job::Admin { .. } | Job::Stop { .. } | Job::Ping { .. } => unreachable!(),
            };
            let msg = match &result {
                Ok(()) => Ok(answers.next().expect("one answer list per job")),
                // Every caller of the batch gets the error.
                Err(e) => Err(EngineError::Store(e.clone())),
            };
            Box::new(move |synced: Result<(), EngineError>| {
                let _ = reply.send(synced.and(msg));
                drop(ops);
            }) as Answer
        }))
        .chain(std::iter::once(free))
        .collect()
}

fn spent_now(spent: &Mutex<Option<BatchState>>) -> std::sync::MutexGuard<'_, Option<BatchState>> {
    spent.lock().expect("batch state")
}

/// The catalog as committed: another process sharing the database may have changed it, and
/// then it is read again (in this db transaction, so the batch prices with what it sees).
fn catalog_in_force(tx: &mut dyn Tx, shared: &Shared) -> Result<Arc<Catalog>, StoreError> {
    let generation = tx.catalog_generation()?;
    {
        let (known, catalog) = &*shared.catalog.read().expect("catalog lock");
        if *known == generation {
            return Ok(catalog.clone());
        }
    }
    let catalog = Arc::new(tx.load_catalog()?);
    *shared.catalog.write().expect("catalog lock") = (generation, catalog.clone());
    Ok(catalog)
}

/// Names, in each of the batch's `account.locked` events, the account's serverless runners
/// alive at `now`: those the batch holds and those stored (the locked accounts' rows, read
/// under their locks). A batch without such an event reads nothing.
fn name_live_runners(
    tx: &mut dyn Tx,
    state: &mut BatchState,
    now: Timestamp,
) -> Result<(), StoreError> {
    let locked: Vec<AccountId> = state
        .events
        .iter()
        .filter(|e| matches!(e.data, EventData::AccountLocked { .. }))
        .map(|e| e.account.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if locked.is_empty() {
        return Ok(());
    }
    let stored = tx.live_runners(&locked, now)?;
    serverless::name_live_runners(state, stored, now);
    Ok(())
}

/// What the batch's runner operations name: the runners (of its events and settlements), the
/// event ids (to find those applied before), and the events' accounts.
fn runner_keys<'a>(
    ops: impl Iterator<Item = &'a Op>,
) -> (Vec<RunnerId>, Vec<RunnerEventId>, BTreeSet<AccountId>) {
    let (mut runners, mut events, mut accounts) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for op in ops {
        match op {
            Op::RunnerEvents(bulk) => {
                for e in bulk {
                    runners.insert(e.runner.clone());
                    events.insert(e.event_id.clone());
                    accounts.insert(e.account.clone());
                }
            }
            Op::SettleRunner { runner, .. } => {
                runners.insert(runner.clone());
            }
            _ => {}
        }
    }
    (
        runners.into_iter().collect(),
        events.into_iter().collect(),
        accounts,
    )
}

/// Loads every row the operations touch: requests and runners first (they name their
/// accounts), then the accounts in sorted order (the lock order on a shared database), then
/// purchases, adjustments, and what payment operations name (under the accounts' locks). On a
/// shared database the requests and runners (and the runner events applied) are read again
/// once their accounts are locked: another process may have changed them (or created them) in
/// between. One created meanwhile may name an account not yet locked; it is locked in a
/// second round (out of order, which the database's deadlock detection and the store's retry
/// cover).
fn load<'a>(
    tx: &mut dyn Tx,
    now: Timestamp,
    ops: impl Iterator<Item = &'a Op> + Clone,
) -> Result<BatchState, StoreError> {
    let mut state = BatchState {
        now,
        ..BatchState::default()
    };
    let request_ids: Vec<_> = ops
        .clone()
        .filter_map(|op| op.request_id().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Every request the batch touches lands here, loaded or new: sized once, not regrown.
    state.requests.reserve(request_ids.len());
    tx.load_requests(&request_ids, &mut state.requests)?;
    let (runner_ids, event_ids, event_accounts) = runner_keys(ops.clone());
    let runner_ops = !runner_ids.is_empty() || !event_ids.is_empty();
    if runner_ops {
        tx.load_runners(&runner_ids, &event_ids, &mut state)?;
    }
    let mut named: BTreeSet<AccountId> =
        ops.clone().filter_map(|op| op.account().cloned()).collect();
    // A runner event names its account; a settlement, its runner's.
    named.extend(event_accounts);
    let mut locked: BTreeSet<AccountId> = BTreeSet::new();
    loop {
        let wanted: Vec<AccountId> = named
            .iter()
            .chain(state.requests.values().map(|r| &r.account))
            .chain(state.runners.values().map(|r| &r.account))
            .filter(|a| !locked.contains(*a))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if wanted.is_empty() {
            break;
        }
        tx.lock_accounts(&wanted, now, &mut state.accounts)?;
        locked.extend(wanted);
        if !tx.is_shared() {
            break;
        }
        state.requests.clear();
        tx.load_requests(&request_ids, &mut state.requests)?;
        if runner_ops {
            state.runners.clear();
            state.runner_events.clear();
            tx.load_runners(&runner_ids, &event_ids, &mut state)?;
        }
    }
    // Gateway rows after the locks: on a shared database, a dispatch reads the lease as the
    // last commit under the account's lock left it, so two dispatchers start a request once.
    let gateway: Vec<RequestId> = ops
        .clone()
        .filter_map(Op::gateway_request)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !gateway.is_empty() {
        tx.load_gateway(&gateway, &mut state.gateway)?;
    }
    let purchases: Vec<(AccountId, PurchaseId)> = ops
        .clone()
        .filter_map(|op| match op {
            Op::Purchase {
                account,
                purchase_id,
                ..
            } => Some((account.clone(), purchase_id.clone())),
            _ => None,
        })
        .collect();
    tx.load_purchases(&purchases, &mut state.purchases)?;
    let adjustments: Vec<(AccountId, AdjustmentId)> = ops
        .clone()
        .filter_map(|op| match op {
            Op::Adjust {
                account,
                adjustment_id,
                ..
            } => Some((account.clone(), adjustment_id.clone())),
            _ => None,
        })
        .collect();
    if !adjustments.is_empty() {
        tx.load_adjustments(&adjustments, &mut state.adjustments)?;
    }
    let payments = payment_keys(ops);
    if !payments.is_empty() {
        tx.load_payments(&payments, &mut state)?;
    }
    Ok(state)
}

/// What the batch's payment operations name: the top-up each creates or is told of (with its
/// purchase and disputes), the provider event each applies, and for a refund, the purchase,
/// the refund's first answer and the purchase's top-up (a top-up's id is its purchase's).
fn payment_keys<'a>(ops: impl Iterator<Item = &'a Op>) -> PaymentKeys {
    let mut keys = PaymentKeys::default();
    for op in ops {
        match op {
            Op::CreateTopUp {
                account, top_up_id, ..
            } => keys.top_ups.push((account.clone(), top_up_id.clone())),
            Op::Payment {
                account,
                event,
                effect,
            } => {
                keys.top_ups
                    .push((account.clone(), effect.top_up_id().clone()));
                if let Some(e) = event {
                    keys.events.push(e.event_id.clone());
                }
            }
            Op::Refund {
                account,
                purchase_id,
                refund_id,
                ..
            } => {
                keys.purchases.push((account.clone(), purchase_id.clone()));
                keys.refunds.push((account.clone(), refund_id.clone()));
                keys.top_ups.push((account.clone(), purchase_id.clone()));
            }
            _ => {}
        }
    }
    keys
}

/// Aborts an admin command's db transaction, so nothing of refused input is applied; the
/// reason also travels beside it, with where it was found, in an `InvalidInput`.
fn refused(input: &InvalidInput) -> StoreError {
    StoreError::Refused(input.message.clone())
}

fn run_admin(
    store: &mut dyn Store,
    shared: &Shared,
    cmd: AdminCmd,
) -> Result<AdminReply, EngineError> {
    let now = (shared.clock)();
    let mut reply = AdminReply::Done;
    let mut new_catalog: Option<(i64, Catalog)> = None;
    let mut invalid: Option<InvalidInput> = None;
    let mut wrong_state: Option<String> = None;
    let runs = std::cell::Cell::new(0u64);
    store
        .transaction(&mut |tx| {
            // A run again starts from nothing (see `Rerunnable`).
            runs.set(runs.get() + 1);
            reply = AdminReply::Done;
            new_catalog = None;
            invalid = None;
            wrong_state = None;
            match &cmd {
                AdminCmd::CreateAccount { username, billing } => {
                    tx.create_account(username, *billing, now)?
                }
                AdminCmd::SetTerms { username, change } => {
                    let created = set_terms(tx, shared, username, change, now, &mut invalid)?;
                    reply = AdminReply::TermsSet {
                        price_versions_created: created,
                    };
                    if created > 0 {
                        new_catalog = Some((tx.catalog_generation()?, tx.load_catalog()?));
                    }
                }
                AdminCmd::InsertKey(k) => reply = AdminReply::KeyInserted(tx.insert_api_key(k)?),
                AdminCmd::RevokeKey { key_id, account } => {
                    reply = AdminReply::Revoked(tx.revoke_api_key(key_id, account.as_ref(), now)?)
                }
                AdminCmd::ApplyCatalog(doc) => {
                    let plan = apply_catalog(tx, doc, now, &mut invalid)?;
                    reply = AdminReply::CatalogApplied {
                        endpoints: plan.endpoints,
                        versions_created: plan.versions_created(),
                        plan: Box::new(plan),
                    };
                    new_catalog = Some((tx.catalog_generation()?, tx.load_catalog()?));
                }
                AdminCmd::SetIssuer(issuer) => tx.set_issuer(issuer)?,
                AdminCmd::SetInvoiceStatus {
                    year,
                    seq,
                    status,
                    reference,
                } => {
                    if let Some(is) =
                        tx.change_invoice_status(*year, *seq, *status, now, reference)?
                    {
                        let id = tollgate_store::InvoiceRecord::id_of(*year, *seq);
                        let message = format!(
                            "invoice {id} is {}; only an open invoice can be {}",
                            is.as_str(),
                            match status {
                                InvoiceStatus::Paid => "paid",
                                _ => "voided",
                            }
                        );
                        wrong_state = Some(message.clone());
                        return Err(StoreError::Refused(message));
                    }
                }
                AdminCmd::PreviewCatalog(doc) => {
                    let current = tx.load_catalog()?;
                    let plan = plan_catalog(&current, doc, now, &mut invalid)?;
                    reply = AdminReply::CatalogPlanned(Box::new(plan));
                }
                AdminCmd::MintPortalLink(link) => tx.insert_portal_link(link)?,
                AdminCmd::RedeemPortalLink {
                    token_sha256,
                    session,
                } => {
                    let account = tx.redeem_portal_link(token_sha256, now)?;
                    if let Some(account) = &account {
                        tx.insert_web_session(&WebSession {
                            account: Some(account.clone()),
                            ..session.clone()
                        })?;
                    }
                    reply = AdminReply::SignedIn(account);
                }
                AdminCmd::StartWebSession(session) => tx.insert_web_session(session)?,
                AdminCmd::EndWebSession { id_sha256 } => {
                    reply = AdminReply::Ended(tx.end_web_session(id_sha256, now)?)
                }
                AdminCmd::EndAccountSessions { account } => {
                    reply = AdminReply::SessionsEnded(tx.end_account_sessions(account, now)?)
                }
                AdminCmd::CreateWebhook(hook) => tx.insert_webhook(hook)?,
                AdminCmd::DeleteWebhook { webhook_id } => {
                    reply = AdminReply::Found(tx.delete_webhook(webhook_id, now)?)
                }
                AdminCmd::ClaimDeliveries {
                    limit,
                    per_webhook,
                    lease_ms,
                } => {
                    let until = now.plus_ms(*lease_ms);
                    let claimed = tx.claim_deliveries(now, until, *limit, *per_webhook)?;
                    reply = AdminReply::Claimed(claimed)
                }
                AdminCmd::RecordDeliveries(results) => {
                    tx.record_deliveries(results)?;
                }
                AdminCmd::Redeliver {
                    webhook_id,
                    event_seq,
                } => reply = AdminReply::Found(tx.redeliver(webhook_id, *event_seq, now)?),
                AdminCmd::CreateLimit { username, limit } => {
                    let created = create_limit(tx, username, limit, now, &mut invalid)?;
                    reply = AdminReply::Limit(Box::new(created));
                }
                AdminCmd::ChangeLimit {
                    username,
                    limit_id,
                    change,
                } => {
                    let changed = change_limit(tx, username, limit_id, change, now, &mut invalid)?;
                    reply = AdminReply::Limit(Box::new(changed));
                }
                AdminCmd::DeleteLimit { username, limit_id } => {
                    let mut limits = locked_limits(tx, username, now)?;
                    let i = position(&limits, limit_id)?;
                    limits.remove(i);
                    tx.set_account_limits(username, &limits)?;
                }
                AdminCmd::EnsureProviderWebhook => {
                    reply = AdminReply::Found(!tx.ensure_provider_webhook(now)?)
                }
                AdminCmd::PaymentsInstallation { fresh } => {
                    reply = AdminReply::Setting(tx.insert_setting_if_absent(
                        tollgate_store::SETTING_PAYMENTS_INSTALLATION,
                        fresh,
                    )?)
                }
                AdminCmd::RenewGatewayLeases {
                    owner,
                    requests,
                    lease_ms,
                } => {
                    let until = now.plus_ms(*lease_ms);
                    reply = AdminReply::Held(tx.renew_gateway_leases(owner, requests, until)?)
                }
                // On a shared database other servers' leases are live: they run out instead.
                AdminCmd::EndGatewayLeases if !tx.is_shared() => tx.end_gateway_leases()?,
                AdminCmd::EndGatewayLeases => {}
                AdminCmd::PruneGatewayResults { before, limit } => {
                    reply = AdminReply::Count(tx.prune_gateway_results(*before, *limit)?)
                }
            }
            Ok(())
        })
        .inspect(|()| shared.metrics.store_runs(runs.get(), None))
        .inspect_err(|e| shared.metrics.store_runs(runs.get(), Some(e)))
        .map_err(|e| match (invalid.take(), wrong_state.take()) {
            (Some(msg), _) => EngineError::Invalid(msg),
            (None, Some(msg)) => EngineError::WrongState(msg),
            (None, None) => EngineError::Store(e),
        })?;
    if let Some((generation, c)) = new_catalog {
        *shared.catalog.write().expect("catalog lock") = (generation, Arc::new(c));
    }
    if let AdminCmd::InsertKey(ApiKeyRecord { key_id, .. }) | AdminCmd::RevokeKey { key_id, .. } =
        &cmd
    {
        shared.keys.lock().expect("key cache").forget(key_id);
    }
    if let (AdminCmd::Redeliver { .. }, AdminReply::Found(true)) = (&cmd, &reply) {
        shared.events_written.notify_one();
    }
    Ok(reply)
}

/// Applies a change of an account's terms under its lock, and adds its prices; returns how
/// many price versions it created. Refuses (before writing anything) a change the core finds
/// invalid, with the reason in `invalid`, and an account or endpoint that does not exist.
fn set_terms(
    tx: &mut dyn Tx,
    shared: &Shared,
    username: &AccountId,
    change: &TermsChange,
    now: Timestamp,
    invalid: &mut Option<InvalidInput>,
) -> Result<usize, StoreError> {
    let mut loaded = HashMap::new();
    tx.lock_accounts(std::slice::from_ref(username), now, &mut loaded)?;
    let account = loaded
        .remove(username)
        .ok_or_else(|| StoreError::NotFound(format!("account {username}")))?;
    // A refusal aborts the db transaction; its reason travels in `invalid`.
    let mut refuse = |e: terms::TermsError| {
        let input = InvalidInput {
            message: e.message,
            field: Some(e.field),
            line: None,
        };
        let error = refused(&input);
        *invalid = Some(input);
        error
    };
    let schedule = terms::schedule(&account, change, now).map_err(&mut refuse)?;
    if !change.prices.is_empty() || !change.machine_prices.is_empty() {
        let catalog = catalog_in_force(tx, shared)?;
        if let Some(machine) = change
            .machine_prices
            .keys()
            .find(|m| !catalog.machines.contains_key(*m))
        {
            return Err(StoreError::NotFound(format!("machine type {machine}")));
        }
        if let Some((endpoint, _)) = change
            .prices
            .iter()
            .find(|(endpoint, _)| !catalog.endpoints.contains_key(endpoint))
        {
            return Err(StoreError::NotFound(format!("endpoint {endpoint}")));
        }
        terms::check_effective(&catalog, username, change, now).map_err(&mut refuse)?;
    }
    if let Some(schedule) = &schedule {
        tx.set_account_terms(username, schedule)?;
        // A change in force now may lock or unlock the account (its lock threshold, its
        // billing mode): the platform is told as it is of any other cause.
        let mut after = account.clone();
        after.terms = schedule.clone();
        after.use_terms_at(now);
        let balance_nano_usd = after.credit.balance;
        let event = match (account.lock_reason(), after.lock_reason()) {
            (None, Some(lock_reason)) => Some(tollgate_core::events::EventData::AccountLocked {
                lock_reason,
                balance_nano_usd,
                running_runners: Vec::new(),
            }),
            (Some(_), None) => {
                Some(tollgate_core::events::EventData::AccountUnlocked { balance_nano_usd })
            }
            _ => None,
        };
        record_events(tx, username, now, event.into_iter().collect())?;
    }
    let at = change.effective_from.unwrap_or(now);
    for (endpoint, rule) in &change.prices {
        tx.insert_price_version(endpoint, Some(username), at, rule, now)?;
    }
    Ok(change.prices.len())
}

/// The spending limits of `username`, locked with the account (as stored).
fn locked_limits(
    tx: &mut dyn Tx,
    username: &AccountId,
    now: Timestamp,
) -> Result<Vec<LimitState>, StoreError> {
    let mut loaded = HashMap::new();
    tx.lock_accounts(std::slice::from_ref(username), now, &mut loaded)?;
    let account = loaded
        .remove(username)
        .ok_or_else(|| StoreError::NotFound(format!("account {username}")))?;
    Ok(account.limits)
}

fn position(limits: &[LimitState], id: &LimitId) -> Result<usize, StoreError> {
    limits
        .iter()
        .position(|l| &l.limit.id == id)
        .ok_or_else(|| StoreError::NotFound(format!("spending limit {id}")))
}

/// Refuses input, with its reason in `invalid` (the db transaction then aborts).
fn refuse(invalid: &mut Option<InvalidInput>, field: Option<&str>, message: String) -> StoreError {
    let input = InvalidInput {
        message,
        field: field.map(str::to_string),
        line: None,
    };
    let error = refused(&input);
    *invalid = Some(input);
    error
}

fn refuse_limit(invalid: &mut Option<InvalidInput>, e: limits::LimitError) -> StoreError {
    refuse(invalid, Some(e.field), e.to_string())
}

/// See [`AdminCmd::CreateLimit`].
fn create_limit(
    tx: &mut dyn Tx,
    username: &AccountId,
    limit: &SpendingLimit,
    now: Timestamp,
    invalid: &mut Option<InvalidInput>,
) -> Result<LimitState, StoreError> {
    let mut limits = locked_limits(tx, username, now)?;
    let limit = SpendingLimit {
        created_at: now,
        ..limit.clone()
    }
    .checked()
    .map_err(|e| refuse_limit(invalid, e))?;
    if limits.iter().any(|l| l.limit.id == limit.id) {
        return Err(StoreError::AlreadyExists(format!(
            "spending limit {}",
            limit.id
        )));
    }
    if limits.len() >= limits::MAX_LIMITS_PER_ACCOUNT {
        return Err(refuse(
            invalid,
            None,
            format!(
                "account {username} has {} spending limits, the most it may have; delete one \
                 first",
                limits.len()
            ),
        ));
    }
    let key = limit.scope.api_key().cloned();
    if let Some(key) = &key {
        let ours = tx
            .api_key(key)?
            .is_some_and(|k| k.account.as_ref() == Some(username) && k.revoked_at.is_none());
        if !ours {
            return Err(refuse(
                invalid,
                Some("api_key_id"),
                format!("`api_key_id` {key} names no live key of account {username}"),
            ));
        }
    }
    let (start, _) = limits::period_bounds(now, limit.period, limit.timezone);
    let held = tx.running_holds(username, key.as_ref())?;
    let spent = tx.charged_since(username, key.as_ref(), start)?;
    let mut created = LimitState::new(limit, now, spent, held);
    let mut events = Vec::new();
    created.notify(&mut events);
    limits.push(created.clone());
    tx.set_account_limits(username, &limits)?;
    record_events(tx, username, now, events)?;
    Ok(created)
}

/// Writes the events an admin command caused to the outbox, in its db transaction, as a
/// batch writes its own (the same `persist`, with nothing else in it).
fn record_events(
    tx: &mut dyn Tx,
    account: &AccountId,
    now: Timestamp,
    events: Vec<tollgate_core::events::EventData>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut state = BatchState {
        now,
        events: events
            .into_iter()
            .map(|data| tollgate_core::events::NewEvent {
                account: account.clone(),
                at: now,
                data,
            })
            .collect(),
        ..BatchState::default()
    };
    // An account locked by the change names its live runners, as a batch's lock does.
    name_live_runners(tx, &mut state, now)?;
    tx.persist(&state).map(|_| ())
}

/// See [`AdminCmd::ChangeLimit`].
fn change_limit(
    tx: &mut dyn Tx,
    username: &AccountId,
    limit_id: &LimitId,
    change: &LimitChange,
    now: Timestamp,
    invalid: &mut Option<InvalidInput>,
) -> Result<LimitState, StoreError> {
    let mut limits = locked_limits(tx, username, now)?;
    let i = position(&limits, limit_id)?;
    let mut changed = limits[i]
        .changed(change, now)
        .map_err(|e| refuse_limit(invalid, e))?;
    let mut events = Vec::new();
    changed.notify(&mut events);
    limits[i] = changed.clone();
    tx.set_account_limits(username, &limits)?;
    record_events(tx, username, now, events)?;
    Ok(changed)
}

/// The change `doc` makes to `current` ([`plan::plan`]); a document that cannot be applied is
/// refused with its line and field in `invalid`.
fn plan_catalog(
    current: &tollgate_core::catalog::Catalog,
    doc: &CatalogDocument,
    now: Timestamp,
    invalid: &mut Option<InvalidInput>,
) -> Result<CatalogPlan, StoreError> {
    plan::plan(current, doc, now).map_err(|e| {
        let input = InvalidInput {
            message: e.to_string(),
            field: Some(e.field.clone()),
            line: e.line,
        };
        let error = refused(&input);
        *invalid = Some(input);
        error
    })
}

/// Applies a catalog document: endpoint metadata is replaced; a price that differs from the
/// public price in force becomes a new version effective from the document's `effective_from`
/// (default: now). Versions are never edited and never back-dated before an existing one.
/// Returns the change, as [`plan::plan`] computes it for a preview.
fn apply_catalog(
    tx: &mut dyn Tx,
    doc: &CatalogDocument,
    now: Timestamp,
    invalid: &mut Option<InvalidInput>,
) -> Result<CatalogPlan, StoreError> {
    let current = tx.load_catalog()?;
    let plan = plan_catalog(&current, doc, now, invalid)?;
    for entry in &doc.endpoints {
        tx.upsert_endpoint(&entry.def, now)?;
        if plan.creates_version(&entry.def.id) {
            tx.insert_price_version(&entry.def.id, None, plan.effective_from, &entry.rule, now)?;
        }
    }
    // Documents merge into the catalog: endpoints and machine types a document does not name
    // are kept (standard and surge prices alike), so a document that adds one endpoint cannot
    // erase the machine prices.
    let mut machines = current.machines.clone();
    machines.extend(doc.machines.clone());
    tx.set_machine_prices(&machines)?;
    let mut surge = current.machines_surge.clone();
    surge.extend(doc.machines_surge.clone());
    tx.set_surge_prices(&surge)?;
    if let Some(table) = &doc.concurrency {
        tx.set_concurrency_table(table)?;
    }
    tx.set_prices_read_on(&doc.prices_read_on)?;
    Ok(plan)
}
