//! Durable storage for tollgate.
//!
//! [`Store`] is the interface the engine writes through: one db transaction per batch, in
//! which the engine loads (and, on a shared database, locks) the rows a batch touches, applies
//! the pure core, and persists the effects. [`Reader`] answers queries from a separate
//! connection so reads never wait for the writer. [`sqlite`] implements both on one SQLite
//! file in WAL mode, whose commits are on disk when they return or, for the engine's writer,
//! once a sync of the WAL that follows them returns ([`Store::defer_sync`]);
//! [`postgres`] implements them on a PostgreSQL database that several tollgate processes share.
//! [`open`] picks one by what the operator names: a `postgres://` URL or a file path.
//!
//! Architecture invariant: the store holds no billing logic. It loads rows into core types and
//! writes what the core decided; every rule lives in `tollgate-core`.

mod gateway;
pub mod postgres;
mod rows;
pub mod sqlite;
mod statements;
#[cfg(feature = "testing")]
pub mod testing;
mod webhooks;

/// The SQL behind the reads that must stay ranges of an account's index entries (statements,
/// credit activity, invoices and their lines, the close of a usage period, FOCUS reports,
/// request history), exactly as each store runs it, so that tests can ask each database for its
/// plan. Not an API: nothing outside this crate's tests uses it.
#[doc(hidden)]
pub mod sql {
    pub use crate::rows::Get;
    pub use crate::statements::{credit_activity, statement, Arg, Db};

    /// A placeholder as SQLite's reads spell it.
    pub fn sqlite_ph(i: usize, _: &str) -> String {
        format!("?{i}")
    }

    /// A placeholder as PostgreSQL's reads spell it.
    pub fn postgres_ph(i: usize, ty: &str) -> String {
        format!("${i}::{ty}")
    }

    /// The invoices read (`Reader::invoices`) of one account (`by_account`) or of all;
    /// parameters: account, status, kind (NULL: any), before year, before seq, limit.
    pub fn invoices(p: impl Fn(usize, &str) -> String, by_account: bool) -> String {
        crate::rows::invoices_sql(p, by_account)
    }

    /// An invoice's lines (with every invoice `Reader::invoices` and `Reader::invoice` read);
    /// parameters: year, seq.
    pub fn invoice_lines(p: impl Fn(usize, &str) -> String) -> String {
        crate::rows::invoice_lines_sql(p)
    }

    /// The purchases read (`Reader::purchases`, FOCUS's purchase rows); parameters: account,
    /// from, to, after created_at, after purchase id, limit.
    pub fn purchases(p: impl Fn(usize, &str) -> String) -> String {
        crate::rows::purchases_sql(p)
    }

    /// A connection to the SQLite file at `path` as the store's readers open it (its settings
    /// and the SQL functions its reads call).
    pub fn sqlite_connection(path: &std::path::Path) -> crate::Result<rusqlite::Connection> {
        crate::sqlite::open_conn(path)
    }

    /// The statement and credit-activity reads' connection on SQLite.
    pub fn sqlite_db<'a>(tx: &'a rusqlite::Transaction<'a>) -> impl Db + 'a {
        crate::sqlite::SqliteDb(tx)
    }

    /// The statement and credit-activity reads' connection on PostgreSQL.
    pub fn postgres_db<'a, 'b: 'a>(tx: &'a mut ::postgres::Transaction<'b>) -> Box<dyn Db + 'a> {
        Box::new(crate::postgres::PgDb(tx))
    }

    /// SQLite: a closed period's accruals copied into its invoice's lines (`?1` year, `?2` seq,
    /// `?3` account, `?4` period start), then deleted (`?1` account, `?2` period start).
    pub const SQLITE_ACCRUALS_TO_LINES: &str = crate::sqlite::ACCRUALS_TO_LINES;
    pub const SQLITE_ACCRUALS_MOVED: &str = crate::sqlite::ACCRUALS_MOVED;

    /// PostgreSQL: the closed periods' accruals moved into their invoices' lines (`$1`
    /// accounts, `$2` period starts, `$3` years, `$4` seqs).
    pub const POSTGRES_ACCRUALS_TO_LINES: &str = crate::postgres::ACCRUALS_TO_LINES;

    /// SQLite: the statements of a usage read (`Reader::usage`), with their parameters.
    pub fn sqlite_usage(
        conn: &rusqlite::Connection,
        q: &crate::RollupQuery,
    ) -> crate::Result<Vec<(String, Vec<rusqlite::types::Value>)>> {
        crate::sqlite::usage_statements(conn, q)
    }

    /// PostgreSQL: the statements of a usage read (`Reader::usage`), each with its range of
    /// slots (`$1` account, `$2`..`$3` the range, `$4` endpoints, `$5` keys).
    pub fn postgres_usage(
        q: &crate::RollupQuery,
    ) -> Vec<(String, tollgate_core::Timestamp, tollgate_core::Timestamp)> {
        crate::postgres::usage_statements(q)
    }

    /// SQLite: the request history read (`Reader::request_history`) and its parameters.
    pub fn sqlite_request_history(
        q: &crate::RequestHistoryQuery,
    ) -> (String, Vec<rusqlite::types::Value>) {
        crate::sqlite::request_history_sql(q)
    }

    /// PostgreSQL: the request history read (`Reader::request_history`) and its parameters.
    pub fn postgres_request_history(
        q: &crate::RequestHistoryQuery,
    ) -> (String, Vec<Box<dyn ::postgres::types::ToSql + Sync>>) {
        crate::postgres::request_history_sql(q)
    }
}

pub use gateway::{Candidate as GatewayCandidate, GatewayView};
pub use webhooks::{
    event_id, parse_event_id, AttemptRecord, ClaimedDelivery, DeliveriesQuery, DeliveryNext,
    DeliveryRecord, DeliveryResult, DeliveryStatus, StoredEvent, WebhookEvents, WebhookKind,
    WebhookRecord, FAL_WEBHOOK_ID, PROVIDER_WEBHOOK_ID,
};

use std::collections::HashMap;
use std::sync::Arc;
use tollgate_core::catalog::{Catalog, EndpointDef, PriceVersion};
use tollgate_core::concurrency::ConcurrencyTable;
use tollgate_core::ids::{AccountId, AdjustmentId, ApiKeyId, EndpointId, PurchaseId, RequestId};
use tollgate_core::limits::LimitState;
use tollgate_core::machine::{
    AccountState, AdjustmentRecord, BatchState, InvoiceKind, InvoiceStatus, LineItem,
    PurchaseRecord, RequestRecord,
};
use tollgate_core::payments::{RefundRecord, TopUpRecord};
use tollgate_core::price::{MachinePrices, PriceRule};
use tollgate_core::rollup::{
    ActivityKey, ActivityTotals, Grain, UsageKey, UsagePrice, UsageTotals,
};
use tollgate_core::statement::{MovementKind, Movements};
use tollgate_core::terms::TermsSchedule;
use tollgate_core::{Nanos, Timestamp};

/// Why the store failed, as the decision it asks of its caller: run the db transaction again
/// ([`StoreError::Conflict`], [`StoreError::Disconnected`]), tell the caller that what they
/// named does not exist or already does, or that their input was refused, or give up
/// ([`StoreError::Corrupt`], [`StoreError::Database`]). Every failure rolls the db transaction
/// back. Cheap to clone: the engine answers every caller of a failed batch with it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The db transaction lost a race with another process sharing the database (a deadlock,
    /// a serialization failure, a duplicate key inserted concurrently): run it again.
    #[error("conflict with a concurrent writer: {0}")]
    Conflict(DbError),
    /// The named thing (e.g. "account acme") does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named thing (e.g. "account acme") exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The caller's input was refused (the reason says why); nothing was written.
    #[error("refused: {0}")]
    Refused(String),
    /// Stored data does not decode, or the schema is newer than this tollgate.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The server ended the connection (it is shutting down or restarting, or an operator
    /// terminated the session): reconnect and run the db transaction again.
    #[error("the database ended the connection: {0}")]
    Disconnected(DbError),
    /// The database, or the file system under it, failed.
    #[error("database error: {0}")]
    Database(DbError),
}

impl StoreError {
    /// A [`StoreError::Database`]: `message` says what failed, `source` is the driver's (or
    /// the file system's) error.
    pub fn database(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Database(DbError::new(message, source))
    }
}

/// A database driver's or the file system's error, and what it means in tollgate's words.
/// Shared: a clone is a reference count.
#[derive(Clone)]
pub struct DbError {
    /// What is shown: the driver's message, with what the store was doing when it came.
    message: Arc<str>,
    /// The error itself, for a caller that inspects it (`None` when the failure is the
    /// store's own finding).
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl DbError {
    pub fn new(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> DbError {
        DbError {
            message: message.into().into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A failure with no error of the driver's behind it.
    pub fn msg(message: impl Into<String>) -> DbError {
        DbError {
            message: message.into().into(),
            source: None,
        }
    }

    /// The driver's (or the file system's) error: `rusqlite::Error`, `postgres::Error`,
    /// `std::io::Error`, ...
    pub fn source_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::fmt::Debug for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("DbError");
        d.field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

/// The message already says what the source says, so the source is not reported again as a
/// cause; [`DbError::source_error`] gives it to a caller that wants it.
impl std::error::Error for DbError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::database(e.to_string(), e)
    }
}

/// Opens the database `target` names, creating or upgrading its schema: a PostgreSQL URL
/// (`postgres://` or `postgresql://`), else the path of a SQLite file.
pub fn open(target: &str) -> Result<Box<dyn Store>> {
    if postgres::is_url(target) {
        Ok(Box::new(postgres::PostgresStore::open(target)?))
    } else {
        Ok(Box::new(sqlite::SqliteStore::open(target)?))
    }
}

/// Settings keys of the catalog, written through [`Tx::set_machine_prices`],
/// [`Tx::set_concurrency_table`] and [`Tx::set_prices_read_on`], read into [`Catalog`].
const SETTING_MACHINES: &str = "machines";
const SETTING_MACHINES_SURGE: &str = "machines_surge";
const SETTING_CONCURRENCY: &str = "concurrency";
const SETTING_PRICES_READ_ON: &str = "prices_read_on";
/// Counts catalog changes (endpoints, price versions, settings): a process whose catalog
/// snapshot is of an older generation reloads it. Written by the stores, never by callers.
pub const SETTING_CATALOG_GENERATION: &str = "catalog_generation";
/// The deployment's payments installation id: drawn at random at the first start with payments
/// ([`Tx::insert_setting_if_absent`]), then read at every start, and put in every idempotency
/// key and metadata tollgate sends the payment provider, so two deployments that share one
/// provider account (production and staging, say) never take each other's keys or events.
pub const SETTING_PAYMENTS_INSTALLATION: &str = "payments_installation_id";
/// The start (ms) of the first minute not yet folded into the hour rollup rows: an hour row
/// holds its hour's minutes before it, and no later one; the minutes from it on are read from
/// their minute rows (see [`RollupQuery::ranges`]). Absent: every minute is in its hour row (a
/// store that writes both grains in each batch, as PostgreSQL does, never sets it).
pub const SETTING_FOLDED_BEFORE: &str = "rollup_minutes_folded_before";

/// [`SETTING_FOLDED_BEFORE`] when every minute is in its hour row.
pub const ALL_FOLDED: Timestamp = Timestamp(i64::MAX);

/// The value of [`SETTING_FOLDED_BEFORE`].
pub fn folded_before(value: Option<String>) -> Result<Timestamp> {
    match value {
        None => Ok(ALL_FOLDED),
        Some(v) => v
            .parse()
            .map(Timestamp)
            .map_err(|e| corrupt(SETTING_FOLDED_BEFORE, e)),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn parse_id<T, E: std::fmt::Display>(
    f: impl Fn(&str) -> std::result::Result<T, E>,
    s: &str,
) -> Result<T> {
    f(s).map_err(|e| corrupt("id", e))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("core types serialize")
}

/// The stored catalog generation (none before the first catalog change).
fn generation(stored: Option<String>) -> Result<i64> {
    stored.map_or(Ok(0), |v| {
        v.parse().map_err(|e| corrupt("catalog generation", e))
    })
}

fn decimal(what: &str, s: &str) -> Result<rust_decimal::Decimal> {
    s.parse().map_err(|e| corrupt(what, e))
}

/// Who holds a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A customer key for inference and read-only platform calls.
    Api,
    /// A customer key that may also read usage, billing and manage keys.
    Admin,
    /// The platform's own key: moves money, reports usage, manages the catalog.
    Operator,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Api => "API",
            Scope::Admin => "ADMIN",
            Scope::Operator => "OPERATOR",
        }
    }
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "API" => Some(Scope::Api),
            "ADMIN" => Some(Scope::Admin),
            "OPERATOR" => Some(Scope::Operator),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_id: ApiKeyId,
    /// `None` for operator keys.
    pub account: Option<AccountId>,
    pub scope: Scope,
    pub alias: String,
    pub secret_sha256: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A one-time sign-in link to an account's dashboard, minted by an operator. Only the SHA-256
/// of its token is stored; it works once, before `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalLink {
    pub token_sha256: String,
    pub account: AccountId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A browser signed in to an account's dashboard or to the operator console, found by the
/// SHA-256 of its cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSession {
    pub id_sha256: String,
    /// The account whose dashboard it shows; `None` for the operator console.
    pub account: Option<AccountId>,
    /// The key it signed in with (its revocation ends the session); `None` for a portal link.
    pub key_id: Option<ApiKeyId>,
    /// The token every form of the session carries.
    pub csrf: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// When it was signed out.
    pub ended_at: Option<Timestamp>,
}

/// How an account pays: a term of the account ([`tollgate_core::terms::Terms::billing`]).
pub use tollgate_core::terms::BillingMode;

/// An account with what only reads need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    pub state: AccountState,
    pub created_at: Timestamp,
    /// How the account pays by the terms in force when it was read.
    pub billing: BillingMode,
}

/// A page of accounts: those whose username starts with `prefix` (all when empty), after the
/// username `after`, at most `limit`.
#[derive(Clone, Debug, Default)]
pub struct AccountsQuery {
    pub prefix: String,
    pub after: Option<AccountId>,
    pub limit: usize,
}

impl AccountsQuery {
    /// The end of the prefix's range `[prefix, end)`, by bytes (as both stores compare
    /// identifiers): the prefix followed by the largest character, which sorts after every
    /// continuation of it, so the range holds exactly the usernames that start with it.
    pub(crate) fn prefix_end(&self) -> String {
        format!("{}{}", self.prefix, char::MAX)
    }
}

/// The prefix of the invoice numbers issued unless the configuration names another (kept with
/// each invoice, so a later change of it renumbers nothing; the sequence is shared whatever
/// the prefix).
pub const INVOICE_PREFIX: &str = "TG";

/// Whether `prefix` may begin invoice numbers: 1 to 12 characters of `A-Z`, `0-9` and `-`,
/// beginning and ending with a letter or digit (so `<prefix>-<year>-<seq>` reads as three
/// parts). The error says what is wrong.
pub fn check_invoice_prefix(prefix: &str) -> std::result::Result<(), String> {
    let ok_char = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-';
    if prefix.is_empty() || prefix.chars().count() > 12 {
        return Err(format!("{prefix:?} must have 1 to 12 characters"));
    }
    if !prefix.chars().all(ok_char) {
        return Err(format!(
            "{prefix:?} may contain only uppercase letters A-Z, digits and '-'"
        ));
    }
    if prefix.starts_with('-') || prefix.ends_with('-') {
        return Err(format!(
            "{prefix:?} must begin and end with a letter or digit"
        ));
    }
    Ok(())
}

/// One line of a usage invoice: what the account's period charged for one endpoint, unit,
/// price and percent discount, of usage in one calendar month (UTC, the charge month).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceLineRecord {
    /// `yyyymm` of the usage (UTC).
    pub charge_month: i32,
    pub endpoint: EndpointId,
    pub unit: String,
    pub price: UsagePrice,
    pub percent_discount: Option<rust_decimal::Decimal>,
    pub totals: UsageTotals,
    /// The earliest and latest usage time of its charges.
    pub first_usage_at: Timestamp,
    pub last_usage_at: Timestamp,
}

impl InvoiceLineRecord {
    /// The charge period: from the start of the UTC day of the earliest usage to the start of
    /// the day after the latest.
    pub fn charge_period(&self) -> (Timestamp, Timestamp) {
        use tollgate_core::time::{day_start, MS_PER_DAY};
        (
            day_start(self.first_usage_at),
            day_start(self.last_usage_at).plus_ms(MS_PER_DAY),
        )
    }
}

/// An issued invoice as stored. Its number is `<prefix>-<year>-<seq>` (seq at least six
/// digits); its id names the same `(year, seq)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvoiceRecord {
    pub year: i64,
    pub seq: i64,
    pub prefix: String,
    pub account: AccountId,
    pub kind: InvoiceKind,
    pub status: InvoiceStatus,
    pub issued_at: Timestamp,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub subtotal: Nanos,
    pub discount: Nanos,
    pub total: Nanos,
    pub purchase_id: Option<PurchaseId>,
    /// When the status last changed (paid or voided by an operator), and the payment
    /// reference or the reason given.
    pub status_changed_at: Option<Timestamp>,
    pub status_reference: Option<String>,
    /// A credit note's corrected invoice (the top-up invoice of its purchase), `(year, seq)`.
    pub corrects: Option<(i64, i64)>,
    /// A usage invoice's lines, in (charge month, endpoint, unit, price, discount) order;
    /// empty for a top-up invoice (its one line is its purchase).
    pub lines: Vec<InvoiceLineRecord>,
}

impl InvoiceRecord {
    pub fn number(&self) -> String {
        invoice_number(&self.prefix, self.year, self.seq)
    }

    pub fn invoice_id(&self) -> String {
        InvoiceRecord::id_of(self.year, self.seq)
    }

    /// The id of the invoice numbered `(year, seq)`.
    pub fn id_of(year: i64, seq: i64) -> String {
        format!("inv_{year}_{seq:06}")
    }

    /// The `(year, seq)` an invoice id names; `None` when it is not an invoice id.
    pub fn parse_id(id: &str) -> Option<(i64, i64)> {
        let (year, seq) = id.strip_prefix("inv_")?.split_once('_')?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(year) || !digits(seq) {
            return None;
        }
        Some((year.parse().ok()?, seq.parse().ok()?))
    }
}

/// An invoice's number: `<prefix>-<year>-<seq>`, the sequence at least six digits.
pub fn invoice_number(prefix: &str, year: i64, seq: i64) -> String {
    format!("{prefix}-{year:04}-{seq:06}")
}

/// The setting that holds the invoice issuer (JSON of [`Issuer`]).
pub const SETTING_ISSUER: &str = "invoice_issuer";

/// Who issues the invoices, as printed on them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Issuer {
    pub name: String,
    pub address: String,
    pub email: Option<String>,
    pub tax_id: Option<String>,
}

/// A page of invoices, newest (last issued) first: those matching the filters issued before
/// `before` (`(year, seq)`), at most `limit`.
#[derive(Clone, Debug, Default)]
pub struct InvoicesQuery {
    pub account: Option<AccountId>,
    pub status: Option<InvoiceStatus>,
    pub kind: Option<InvoiceKind>,
    pub before: Option<(i64, i64)>,
    pub limit: usize,
}

/// A page of an account's payments (its paid purchases), newest first: those before `before`
/// (`(created_at, purchase_id)`), at most `limit`.
#[derive(Clone, Debug)]
pub struct PaymentsQuery {
    pub account: AccountId,
    pub before: Option<(i64, String)>,
    pub limit: usize,
}

/// A paid purchase, with the top-up invoice issued in its commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRecord {
    pub purchase_id: PurchaseId,
    pub created_at: Timestamp,
    pub amount: Nanos,
    pub expires_at: Option<Timestamp>,
    /// The invoice's `(year, seq)`; `None` for a purchase made before invoices were issued.
    pub invoice: Option<(i64, i64)>,
    /// Refunded so far, and taken back for disputes now (see [`PurchaseRecord`]).
    pub refunded: Nanos,
    pub disputed: Nanos,
    /// Whether a dispute of it is open or lost (a dispute that took nothing yet counts).
    pub dispute_open: bool,
    /// The provider's payment (`pi_...`) when it was paid through the provider (its top-up).
    pub provider_reference: Option<String>,
}

/// What a batch's payment operations name, for [`Tx::load_payments`].
#[derive(Clone, Debug, Default)]
pub struct PaymentKeys {
    /// Top-ups to load, with their purchases and every dispute of each.
    pub top_ups: Vec<(AccountId, PurchaseId)>,
    /// Purchases to load (refunds name them).
    pub purchases: Vec<(AccountId, PurchaseId)>,
    /// Provider event ids: those already applied go to `BatchState::provider_events`.
    pub events: Vec<String>,
    /// Operator refunds to load (their first answers).
    pub refunds: Vec<(AccountId, PurchaseId)>,
}

impl PaymentKeys {
    /// Whether it names nothing (a batch without payment operations loads nothing for them).
    pub fn is_empty(&self) -> bool {
        self.top_ups.is_empty()
            && self.purchases.is_empty()
            && self.events.is_empty()
            && self.refunds.is_empty()
    }
}

/// A statement's rows: an account's balance days from `from` (a UTC midnight, a statement's
/// month's first) to `to` (exclusive).
#[derive(Clone, Debug)]
pub struct StatementQuery {
    pub account: AccountId,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// One day's movements of an account and the balance it closed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceDay {
    pub day: Timestamp,
    pub moved: Movements,
    pub closing: Nanos,
}

/// A statement period's usage of one endpoint and unit, by the days it was charged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementUsage {
    pub endpoint: EndpointId,
    pub unit: String,
    pub quantity: rust_decimal::Decimal,
    pub requests: u64,
    pub cost: Nanos,
}

/// What a statement is made of, read in one snapshot: the balance at `from` (the closing of
/// the last day before it with a movement, else zero), the period's days in order, and its
/// usage by endpoint and unit (in order of endpoint, then unit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementRows {
    pub opening: Nanos,
    pub days: Vec<BalanceDay>,
    pub usage: Vec<StatementUsage>,
}

/// A page of an account's credit activity, newest first: movements at `start` or later and
/// before `end`, before the position `before` (`(at, id)`, exclusive), at most `limit`. `now`
/// is the reader's clock: the months sought for usage end with the month after its month (no
/// batch is dated later, whatever servers' clocks say), however far `end` is.
#[derive(Clone, Debug)]
pub struct ActivityQuery {
    pub account: AccountId,
    pub start: Timestamp,
    pub end: Timestamp,
    pub before: Option<(i64, i64)>,
    pub limit: usize,
    pub now: Timestamp,
}

/// The position of a day's usage row among the movements: after every other movement of its
/// instant (see [`tollgate_core::statement::end_of_day`]).
pub const USAGE_ROW_ID: i64 = i64::MAX;

/// One row of credit activity: a movement, or a day's usage (`id` [`USAGE_ROW_ID`], dated the
/// day's last millisecond, its reference the day `YYYY-MM-DD`), with the balance after it in
/// the activity's order (a day's movements in the order recorded, then its usage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityRecord {
    pub at: Timestamp,
    pub id: i64,
    pub kind: MovementKind,
    pub amount: Nanos,
    pub reference: String,
    pub balance_after: Nanos,
}

/// A page of one account's purchases (paid and free) made in `[from, to)`, oldest first: those
/// after `after` (`(created_at, purchase_id)`), at most `limit`. A range of the
/// `purchases_by_time` index, whatever the account's history before or after it.
#[derive(Clone, Debug)]
pub struct PurchasesQuery {
    pub account: AccountId,
    pub from: Timestamp,
    pub to: Timestamp,
    pub after: Option<(i64, String)>,
    pub limit: usize,
}

/// A purchase of credits as the reports show it, with the top-up invoice of a paid one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurchaseEntry {
    pub purchase_id: PurchaseId,
    pub created_at: Timestamp,
    pub amount: Nanos,
    /// Paid credits (`false`: free credits, a grant).
    pub paid: bool,
    /// The top-up invoice's number (`<prefix>-<year>-<seq>`); `None` for free credits and for
    /// a purchase made before invoices were issued.
    pub invoice_number: Option<String>,
}

/// Totals that must agree for the ledger to reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Accounts whose stored balance differs from the sum of their posted transfers, with
    /// (stored, from transfers).
    pub balance_mismatches: Vec<(AccountId, Nanos, Nanos)>,
    /// Accounts whose stored held amount differs from the sum of their open holds.
    pub held_mismatches: Vec<(AccountId, Nanos, Nanos)>,
    /// Accounts whose in-progress count differs from their requests in progress.
    pub in_progress_mismatches: Vec<(AccountId, u32, u32)>,
    /// Accounts whose credit lots do not add up to their (non-negative) balance, with
    /// (balance, sum of lots).
    pub lot_mismatches: Vec<(AccountId, Nanos, Nanos)>,
    /// Line items whose total differs from the posted charges of their request.
    pub line_item_mismatches: Vec<RequestId>,
    /// Accounts whose usage rollups do not add up to their line items, with (rollups, line
    /// items).
    pub rollup_mismatches: Vec<(AccountId, Nanos, Nanos)>,
    /// Accounts whose balance days or balance months do not end at their balance (the last
    /// day's or month's closing, and the sum of every day's or month's movements), with
    /// (balance, last closing, summed movements), once for each table that disagrees.
    pub statement_mismatches: Vec<(AccountId, Nanos, Nanos, Nanos)>,
    /// Usage invoices whose lines do not add up to their subtotal, discount and total, as
    /// `(year, seq)`.
    pub invoice_mismatches: Vec<(i64, i64)>,
    /// Purchases whose refunded or disputed amounts differ from the refund and dispute
    /// transfers that name them (refunds; disputes less their reversals).
    pub payment_mismatches: Vec<(AccountId, PurchaseId)>,
    /// Serverless runners whose billed amount differs from the total of their line items (and
    /// runner line items of no runner).
    pub runner_mismatches: Vec<tollgate_core::ids::RunnerId>,
    /// Posted to revenue (post and charge transfers).
    pub revenue_nanos: i128,
    /// Sum of line item totals.
    pub billed_nanos: i128,
    /// Sum of the purchases table.
    pub purchased_nanos: i128,
    /// Credited by purchase and grant transfers.
    pub credited_nanos: i128,
    /// Credits expired unspent.
    pub expired_nanos: i128,
    /// Sum of the adjustments table (credits positive, debits negative).
    pub adjusted_nanos: i128,
    /// What adjustment transfers moved to customers, net.
    pub adjusted_in_ledger_nanos: i128,
}

impl Reconciliation {
    /// What does not agree, in a few lines: the count of each kind of mismatch with its first
    /// three, and the totals that differ.
    pub fn summary(&self) -> String {
        fn list<T: std::fmt::Debug>(out: &mut Vec<String>, what: &str, v: &[T]) {
            if !v.is_empty() {
                let first: Vec<String> = v.iter().take(3).map(|x| format!("{x:?}")).collect();
                out.push(format!("{} {what} (first: {})", v.len(), first.join(", ")));
            }
        }
        let mut out = Vec::new();
        list(&mut out, "balance mismatches", &self.balance_mismatches);
        list(&mut out, "held mismatches", &self.held_mismatches);
        list(
            &mut out,
            "in-progress mismatches",
            &self.in_progress_mismatches,
        );
        list(&mut out, "lot mismatches", &self.lot_mismatches);
        list(&mut out, "line item mismatches", &self.line_item_mismatches);
        list(&mut out, "rollup mismatches", &self.rollup_mismatches);
        list(&mut out, "statement mismatches", &self.statement_mismatches);
        list(&mut out, "invoice mismatches", &self.invoice_mismatches);
        list(&mut out, "payment mismatches", &self.payment_mismatches);
        list(&mut out, "runner mismatches", &self.runner_mismatches);
        if self.revenue_nanos != self.billed_nanos {
            out.push(format!(
                "revenue {} != billed {} nano-USD",
                self.revenue_nanos, self.billed_nanos
            ));
        }
        if self.purchased_nanos != self.credited_nanos {
            out.push(format!(
                "purchased {} != credited {} nano-USD",
                self.purchased_nanos, self.credited_nanos
            ));
        }
        if self.adjusted_nanos != self.adjusted_in_ledger_nanos {
            out.push(format!(
                "adjusted {} != adjusted in the ledger {} nano-USD",
                self.adjusted_nanos, self.adjusted_in_ledger_nanos
            ));
        }
        if out.is_empty() {
            "clean".into()
        } else {
            out.join("; ")
        }
    }

    pub fn is_clean(&self) -> bool {
        self.balance_mismatches.is_empty()
            && self.held_mismatches.is_empty()
            && self.in_progress_mismatches.is_empty()
            && self.lot_mismatches.is_empty()
            && self.line_item_mismatches.is_empty()
            && self.rollup_mismatches.is_empty()
            && self.statement_mismatches.is_empty()
            && self.invoice_mismatches.is_empty()
            && self.payment_mismatches.is_empty()
            && self.runner_mismatches.is_empty()
            && self.revenue_nanos == self.billed_nanos
            && self.purchased_nanos == self.credited_nanos
            && self.adjusted_nanos == self.adjusted_in_ledger_nanos
    }
}

/// A rollup read: one account, whole minutes `[from, to)`, optionally only some endpoints and
/// keys (empty: all).
#[derive(Clone, Debug)]
pub struct RollupQuery {
    pub account: AccountId,
    pub from: Timestamp,
    pub to: Timestamp,
    pub endpoints: Vec<EndpointId>,
    pub api_keys: Vec<ApiKeyId>,
    /// The caller groups rows into buckets that never split a UTC hour, so hour rows may stand
    /// in for their minutes (the rows' `slot` is then the hour's start).
    pub whole_hours: bool,
    /// Which usage: model endpoints' (`Some(Models)`), serverless lines' (`Some(Serverless)`,
    /// endpoints under `tollgate_core::serverless::ENDPOINT_PREFIX`), or both (`None`: the
    /// FOCUS report). `endpoints`, when not empty, filters within it.
    pub service: Option<Service>,
}

/// What a usage row bills: a model endpoint's requests or a serverless app's runner time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Models,
    Serverless,
}

/// One account's runner-state history of one app in whole minutes `[from, to)`: per minute
/// slot, the runner-milliseconds in each column (slots with none are left out).
#[derive(Clone, Debug)]
pub struct RunnerHistoryQuery {
    pub account: AccountId,
    pub app: tollgate_core::ids::AppName,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// A runner due for settlement, by its key in the sweep's order ([`Tx::due_runner_settlements`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueRunner {
    pub settled_until: Timestamp,
    pub id: tollgate_core::ids::RunnerId,
}

/// A minute of a runner-state history: runner-milliseconds per column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunnerMinuteTotals {
    pub running_ms: i64,
    pub idle_ms: i64,
    pub pending_ms: i64,
    pub draining_ms: i64,
}

/// Where the rows of a [`RollupQuery::ranges`] range come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollupRows {
    /// Minute rows, one slot per minute.
    Minutes,
    /// Hour rows, one slot per hour.
    Hours,
    /// Hours whose minutes are not all folded into their hour row yet: the hour row (if any)
    /// and the minute rows not folded, summed per hour (one slot per hour, as
    /// [`RollupRows::Hours`]).
    OpenHours,
}

impl RollupRows {
    /// The width of one slot of these rows.
    pub fn grain(self) -> Grain {
        match self {
            RollupRows::Minutes => Grain::Minute,
            RollupRows::Hours | RollupRows::OpenHours => Grain::Hour,
        }
    }
}

impl RollupQuery {
    /// The rows the query reads, as `(rows, from, to)` slot ranges in time order: for the
    /// whole UTC hours of the range, when the caller's buckets never split an hour, hour rows
    /// where every minute of the hour is folded into them (before `folded_before`, see
    /// [`SETTING_FOLDED_BEFORE`]) and open hours from the hour of `folded_before` on; minute
    /// rows for the rest.
    pub fn ranges(&self, folded_before: Timestamp) -> Vec<(RollupRows, Timestamp, Timestamp)> {
        let from = Grain::Minute.slot_of(self.from);
        let to = self.to;
        let hour = Grain::Hour.ms();
        // [first_hour, last_hour): the whole UTC hours inside the range.
        let first_hour = Grain::Hour.slot_of(Timestamp(from.0.saturating_add(hour - 1)));
        let last_hour = Grain::Hour.slot_of(to);
        let all = if self.whole_hours && first_hour < last_hour {
            let open = Grain::Hour.slot_of(folded_before.clamp(first_hour, last_hour));
            vec![
                (RollupRows::Minutes, from, first_hour),
                (RollupRows::Hours, first_hour, open),
                (RollupRows::OpenHours, open, last_hour),
                (RollupRows::Minutes, last_hour, to),
            ]
        } else {
            vec![(RollupRows::Minutes, from, to)]
        };
        all.into_iter().filter(|(_, a, b)| a < b).collect()
    }
}

/// A page of one account's billing events (line items) in `[from, to)`, ordered by
/// (billed_at, request_id), strictly after `after`; with `newest_first`, in the reverse order,
/// strictly before `after`.
#[derive(Clone, Debug)]
pub struct BillingEventsQuery {
    pub account: AccountId,
    pub from: Timestamp,
    pub to: Timestamp,
    pub endpoints: Vec<EndpointId>,
    pub request_ids: Vec<RequestId>,
    pub api_keys: Vec<ApiKeyId>,
    pub after: Option<(Timestamp, RequestId)>,
    /// Latest first (the same index, read backwards): a customer's list of recent requests.
    pub newest_first: bool,
    pub limit: usize,
}

/// How a finished request ended, as fal's request history filters it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Completed (a status below 400).
    Success,
    /// Failed with a 5xx, or expired without completing.
    Error,
    /// Failed with a 4xx.
    UserError,
}

/// The order of a request history, always descending: the latest end, or the longest
/// duration (end minus submission), first; ties by request id, descending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOrder {
    EndedAt,
    Duration,
}

/// A page of one account's finished requests to one endpoint, ended in `[from, to)`, in
/// `order`, strictly after `after` (the order's key in milliseconds, and the request id).
#[derive(Clone, Debug)]
pub struct RequestHistoryQuery {
    pub account: AccountId,
    pub endpoint: EndpointId,
    pub from: Timestamp,
    pub to: Timestamp,
    pub outcome: Option<RequestOutcome>,
    pub request_id: Option<RequestId>,
    pub order: RequestOrder,
    pub after: Option<(i64, RequestId)>,
    pub limit: usize,
}

/// One db transaction of the write path. Dropped without [`Store::transaction`] returning
/// `Ok`, it rolls back.
pub trait Tx {
    /// Whether other processes write the same database. Rows read before
    /// [`Tx::lock_accounts`] may then be stale, and the engine reads them again under the lock.
    fn is_shared(&self) -> bool {
        false
    }
    fn setting(&mut self, key: &str) -> Result<Option<String>>;
    /// The catalog's generation as committed (see [`SETTING_CATALOG_GENERATION`]); 0 before
    /// the first catalog change.
    fn catalog_generation(&mut self) -> Result<i64> {
        generation(self.setting(SETTING_CATALOG_GENERATION)?)
    }
    /// Loads the named requests that exist.
    fn load_requests(
        &mut self,
        ids: &[RequestId],
        out: &mut HashMap<RequestId, RequestRecord>,
    ) -> Result<()>;
    /// Loads, and on a shared database locks, the named accounts. `ids` come sorted so that
    /// concurrent writers lock in one order. `paid_28d` is computed for `now`.
    fn lock_accounts(
        &mut self,
        ids: &[AccountId],
        now: Timestamp,
        out: &mut HashMap<AccountId, AccountState>,
    ) -> Result<()>;
    fn load_purchases(
        &mut self,
        keys: &[(AccountId, PurchaseId)],
        out: &mut HashMap<(AccountId, PurchaseId), PurchaseRecord>,
    ) -> Result<()>;
    /// Loads the named adjustments that exist (their first answers).
    fn load_adjustments(
        &mut self,
        keys: &[(AccountId, AdjustmentId)],
        out: &mut HashMap<(AccountId, AdjustmentId), AdjustmentRecord>,
    ) -> Result<()>;
    /// Loads what the batch's payment operations name (see [`PaymentKeys`]) into `state`'s
    /// `top_ups` (with each top-up's purchase, if it was paid, into `purchases`, and every
    /// dispute of it into `disputes`), `purchases`, `provider_events` (the ids already applied)
    /// and `refunds`. Called after [`Tx::lock_accounts`]: every row it reads belongs to a
    /// locked account, so it reads them as the last commit left them.
    fn load_payments(&mut self, keys: &PaymentKeys, state: &mut BatchState) -> Result<()>;
    /// Loads the runners named that exist (into `state.runners`) and the runner events already
    /// applied among `event_ids` (into `state.runner_events`), adding to what `state` holds.
    /// On a shared database, again after the accounts are locked (a runner's account never
    /// changes; every change to it is under that lock).
    fn load_runners(
        &mut self,
        runners: &[tollgate_core::ids::RunnerId],
        event_ids: &[tollgate_core::ids::RunnerEventId],
        state: &mut BatchState,
    ) -> Result<()>;
    /// Runners due for settlement up to `until` (the start of the current minute): those with
    /// `settled_until < min(cap_at, until)`, oldest `settled_until` first (then by runner id),
    /// after the key `after` when given (a sweep's previous page ended there: a runner whose
    /// settlement was refused keeps its key and is not read again by the same sweep), at most
    /// `limit`, each with its key `(settled_until, runner id)`.
    fn due_runner_settlements(
        &mut self,
        until: Timestamp,
        after: Option<&DueRunner>,
        limit: usize,
    ) -> Result<Vec<DueRunner>>;
    /// The runners of `accounts` with time due before `before` (the start of the month whose
    /// usage periods the batch closes): `settled_until < min(cap_at, before)`, live or silent
    /// within their grace, in runner id order. Called after [`Tx::lock_accounts`] locked
    /// `accounts` (a range of the due runners' partial index, not of each account's runners).
    fn due_runners(
        &mut self,
        accounts: &[AccountId],
        before: Timestamp,
    ) -> Result<Vec<tollgate_core::serverless::RunnerRecord>>;
    /// Deletes the applied runner event ids received before `before` (the retention's cutoff),
    /// at most `limit` of them, oldest first (an index on `received_at`), and returns how many
    /// it deleted: a page of the sweep's, so a step stays short. On a shared database, rows
    /// another server is deleting meanwhile are skipped, not waited for.
    fn prune_runner_events(&mut self, before: Timestamp, limit: usize) -> Result<usize>;
    /// The db transaction as the portable SQL runs in it ([`statements::Db`]).
    fn db(&mut self) -> Box<dyn statements::Db + '_>;
    /// Loads the gateway rows of `ids` that exist (called after the accounts are locked, so
    /// on a shared database they are as the last commit left them).
    fn load_gateway(
        &mut self,
        ids: &[RequestId],
        out: &mut HashMap<RequestId, tollgate_core::gateway::GatewayRecord>,
    ) -> Result<()> {
        gateway::load(&mut *self.db(), ids, out)
    }
    /// Extends the leases `owner` holds on `ids` to `until`; returns the requests it still
    /// holds (one finished or cancelled meanwhile is not).
    fn renew_gateway_leases(
        &mut self,
        owner: &str,
        ids: &[RequestId],
        until: Timestamp,
    ) -> Result<Vec<RequestId>> {
        gateway::renew(&mut *self.db(), owner, ids, until)
    }
    /// Ends every gateway lease (a store with one server, as it starts: the leases are of a
    /// process that stopped).
    fn end_gateway_leases(&mut self) -> Result<()> {
        gateway::end_leases(&mut *self.db())
    }
    /// Deletes up to `limit` gateway requests finished before `before` (their results past
    /// the retention), oldest first; returns how many.
    fn prune_gateway_results(&mut self, before: Timestamp, limit: usize) -> Result<usize> {
        gateway::prune(&mut *self.db(), before, limit)
    }
    /// The runners of `accounts` alive at `now` (not terminated, `now < cap_at`), for the
    /// `account.locked` events that name them.
    fn live_runners(
        &mut self,
        accounts: &[AccountId],
        now: Timestamp,
    ) -> Result<Vec<tollgate_core::serverless::RunnerRecord>>;
    /// Writes what the core decided: dirty accounts (with their payment profiles) and
    /// requests, new purchases and adjustments, what was taken back of purchases (refunded,
    /// disputed), transfers and line items, the accruals of usage periods, the invoices the
    /// batch issued, numbered (a usage invoice gets its period's accruals as its lines; a
    /// credit note names the top-up invoice of its purchase as the invoice it corrects), the
    /// top-ups and disputes it created or changed, the provider events it applied and the
    /// refunds it made, the runners it created or changed (upserted), the runner events it
    /// applied and its runner-state history (added to the minute rows). Returns the
    /// `(year, seq)` of each of `state.new_invoices`, in order.
    fn persist(&mut self, state: &BatchState) -> Result<Vec<(i64, i64)>>;
    /// Accounts with charges in their open usage period, in name order after `after`, only
    /// those whose period began before `started_before` when it is given (an index of the
    /// accounts with charges, not a scan of every account).
    fn accounts_with_period_charges(
        &mut self,
        after: Option<&AccountId>,
        started_before: Option<Timestamp>,
        limit: usize,
    ) -> Result<Vec<AccountId>>;
    /// Moves an open invoice to `to` (paid or void) at `at`, with the payment reference or
    /// the reason: `Ok(None)` when done (also when the invoice already had that status with
    /// that reference: a repeated call, which writes nothing), `Ok(Some(status))` when the
    /// invoice is not open (it is `status`, and nothing changed); [`StoreError::NotFound`]
    /// when there is no such invoice. Amounts and lines are never touched.
    fn change_invoice_status(
        &mut self,
        year: i64,
        seq: i64,
        to: InvoiceStatus,
        at: Timestamp,
        reference: &str,
    ) -> Result<Option<InvoiceStatus>>;
    /// In-progress requests whose hold expired at `now`, oldest first.
    fn due_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<RequestId>>;
    /// Accounts with credits left in a lot whose expiry date has passed at `now`.
    fn due_credit_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<AccountId>>;
    /// Accounts with credits left in a lot that expires after `now` and by `horizon`, not yet
    /// noticed (`credits.expiring`).
    fn due_expiry_notices(
        &mut self,
        now: Timestamp,
        horizon: Timestamp,
        limit: usize,
    ) -> Result<Vec<AccountId>>;

    /// Creates an account that pays by `billing`: its first terms version
    /// ([`TermsSchedule::first`]).
    fn create_account(
        &mut self,
        username: &AccountId,
        billing: BillingMode,
        now: Timestamp,
    ) -> Result<()>;
    /// Replaces an account's terms versions (the caller applied its change to them under the
    /// account's lock, see [`Tx::lock_accounts`]). [`StoreError::NotFound`] when there is no
    /// such account.
    fn set_account_terms(&mut self, username: &AccountId, terms: &TermsSchedule) -> Result<()>;
    /// Replaces an account's spending limits (the caller changed them under the account's
    /// lock, as it loaded them). [`StoreError::NotFound`] when there is no such account.
    fn set_account_limits(&mut self, username: &AccountId, limits: &[LimitState]) -> Result<()>;
    /// The key with this id, as committed.
    fn api_key(&mut self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>>;
    /// The holds of the account's requests in progress (only those made with `key`, when
    /// given): what a new spending limit starts with as `held`.
    fn running_holds(&mut self, account: &AccountId, key: Option<&ApiKeyId>) -> Result<Nanos>;
    /// What the account was charged at or after `since` (its line items billed then; only
    /// those made with `key`, when given): what a new spending limit starts with as `spent`.
    fn charged_since(
        &mut self,
        account: &AccountId,
        key: Option<&ApiKeyId>,
        since: Timestamp,
    ) -> Result<Nanos>;
    /// Inserts a key unless one with its id exists (whatever its scope, secret or revocation):
    /// returns whether it was inserted. A stored key is never replaced, so a revoked key stays
    /// revoked and a stored secret is never changed by inserting the same id again.
    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<bool>;
    /// Revokes a key of `account` (or an operator key when `None`). Returns whether a live key
    /// was revoked.
    fn revoke_api_key(
        &mut self,
        key_id: &ApiKeyId,
        account: Option<&AccountId>,
        now: Timestamp,
    ) -> Result<bool>;
    /// Stores a new portal link ([`StoreError::AlreadyExists`] if its token is taken).
    fn insert_portal_link(&mut self, link: &PortalLink) -> Result<()>;
    /// Uses a portal link: marks it used at `now` and returns its account, unless it is
    /// unknown, used or expired (`None`, nothing written).
    fn redeem_portal_link(
        &mut self,
        token_sha256: &str,
        now: Timestamp,
    ) -> Result<Option<AccountId>>;
    /// Stores a new web session.
    fn insert_web_session(&mut self, session: &WebSession) -> Result<()>;
    /// Signs a web session out at `now`; returns whether it was signed in.
    fn end_web_session(&mut self, id_sha256: &str, now: Timestamp) -> Result<bool>;
    /// Signs out every web session of `account`'s dashboard still signed in, at `now`; returns
    /// how many it ended (console sessions, which have no account, are never touched).
    fn end_account_sessions(&mut self, account: &AccountId, now: Timestamp) -> Result<usize>;
    /// Inserts the payment provider's subscription row ([`PROVIDER_WEBHOOK_ID`], kind
    /// [`WebhookKind::Provider`], subscribed to `top_up.started`) unless it exists, created at
    /// `now`; returns whether it was inserted. The outbox then fans each auto top-up's start
    /// out to it, and the dispatcher's claims take those deliveries. On a shared database it
    /// waits for the batches writing events now, as [`Tx::insert_webhook`] does.
    fn ensure_provider_webhook(&mut self, now: Timestamp) -> Result<bool>;
    /// Writes the setting `key` unless it is there, and returns the value stored: `value`, or
    /// the one written before (on a shared database, by a server that started beside this
    /// one: the first to commit wins, the other reads its value). Not a catalog setting: the
    /// catalog's generation does not move.
    fn insert_setting_if_absent(&mut self, key: &str, value: &str) -> Result<String>;
    /// Stores a new webhook, subscribed to its types from this commit on: every batch that
    /// commits after it fans its events out to it, and none that committed before does
    /// ([`StoreError::AlreadyExists`] if its id is taken). On a shared database it waits for
    /// the batches writing events now (the event counter's lock).
    fn insert_webhook(&mut self, webhook: &WebhookRecord) -> Result<()>;
    /// Deletes an operator's live webhook at `now`: it is subscribed to nothing more (no batch
    /// that commits after it fans out to it), and its pending deliveries are given up
    /// (`failed`), those of batches that committed just before too. Returns whether a live
    /// webhook of the operator's had this id (the provider's row is not theirs: never deleted).
    fn delete_webhook(&mut self, webhook_id: &str, now: Timestamp) -> Result<bool>;
    /// Claims up to `limit` deliveries due at `now` (see [`webhooks`]), leasing each until
    /// `lease_until`: no claim takes them again before then. Fair across webhooks: round-robin,
    /// and no webhook gets more than `per_webhook` leased at once (those it already has
    /// counted). On a shared database, rows another server is claiming are skipped, not
    /// waited for. The provider's row's deliveries are claimed too, each saying its kind.
    fn claim_deliveries(
        &mut self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
        per_webhook: usize,
    ) -> Result<Vec<ClaimedDelivery>>;
    /// Records attempts of claimed deliveries (an attempt whose lease no longer holds records
    /// nothing; one whose delivery was redelivered since its claim is recorded without
    /// changing what the redelivery queued); returns how many were recorded.
    fn record_deliveries(&mut self, results: &[DeliveryResult]) -> Result<usize>;
    /// Queues the delivery of event `event_seq` to a live webhook of the operator's again, due
    /// at `now`, whatever its status; returns whether there is such a delivery (a deleted
    /// webhook's is not queued, nor the provider's: a charge is never sent again by hand).
    fn redeliver(&mut self, webhook_id: &str, event_seq: i64, now: Timestamp) -> Result<bool>;
    fn upsert_endpoint(&mut self, def: &EndpointDef, now: Timestamp) -> Result<()>;
    fn insert_price_version(
        &mut self,
        endpoint: &EndpointId,
        account: Option<&AccountId>,
        effective_from: Timestamp,
        rule: &PriceRule,
        now: Timestamp,
    ) -> Result<i64>;
    /// Writes a setting as text, which the caller encoded: for settings the store does not
    /// encode itself (a catalog setting has its typed method below, and is read back into
    /// [`Catalog`]). Counts as a catalog change (see [`SETTING_CATALOG_GENERATION`]).
    fn set_setting(&mut self, key: &str, value: &str) -> Result<()>;
    /// Replaces the invoice issuer.
    fn set_issuer(&mut self, issuer: &Issuer) -> Result<()> {
        self.set_setting(SETTING_ISSUER, &to_json(issuer))
    }
    /// The catalog's machine prices, replacing those stored.
    fn set_machine_prices(&mut self, machines: &MachinePrices) -> Result<()> {
        self.set_setting(SETTING_MACHINES, &rows::machine_prices_text(machines))
    }
    /// The catalog's surge prices of serverless machines, replacing those stored.
    fn set_surge_prices(&mut self, machines: &MachinePrices) -> Result<()> {
        self.set_setting(SETTING_MACHINES_SURGE, &rows::machine_prices_text(machines))
    }
    /// The catalog's concurrency tier table, replacing the one stored.
    fn set_concurrency_table(&mut self, table: &ConcurrencyTable) -> Result<()> {
        self.set_setting(SETTING_CONCURRENCY, &rows::concurrency_table_text(table))
    }
    /// The date the catalog's prices were read on, as the catalog document gives it.
    fn set_prices_read_on(&mut self, date: &str) -> Result<()> {
        self.set_setting(SETTING_PRICES_READ_ON, date)
    }
    fn load_catalog(&mut self) -> Result<Catalog>;
}

/// The work of one db transaction, which [`Store::transaction`] may run more than once: on a
/// shared database, after a conflict with another writer or a dropped connection, the store
/// rolls the db transaction back and runs the whole closure again, from the start. So it must
/// have no effect outside the db transaction other than building its own outputs, and must
/// build them anew on each run (clear, at its start, what an earlier run left).
pub type Rerunnable<'a> = dyn FnMut(&mut dyn Tx) -> Result<()> + 'a;

/// The write side: one writer per process.
pub trait Store: Send {
    /// Runs `work` in one db transaction and commits if it returns `Ok`; runs it again (in a
    /// new db transaction) when the store can tell that a retry may succeed (see
    /// [`Rerunnable`]). When this returns `Ok`, the commit is durable, unless
    /// [`Store::defer_sync`] was called: then it is durable once the returned [`SyncFn`] next
    /// returns `Ok`.
    fn transaction(&mut self, work: &mut Rerunnable) -> Result<()>;
    /// Lets commits return before they are on disk, and gives the function that puts every
    /// commit made so far on disk, which another thread can call while the next transaction
    /// runs. `None` (the default) when the store cannot separate the two: then every commit
    /// is durable when it returns.
    fn defer_sync(&mut self) -> Result<Option<SyncFn>> {
        Ok(None)
    }
    /// Work the store puts off to a moment when the write path has nothing queued: the engine
    /// calls it whenever its queue empties while it is lightly loaded (its last batch was
    /// small). A batch that arrives meanwhile waits for it, so it does little at a time.
    /// Nothing by default.
    fn idle(&mut self) -> Result<()> {
        Ok(())
    }
    /// Opens read connections, from any thread.
    fn reader_factory(&self) -> ReaderFactory;
    /// How many schema migrations the database has had.
    fn schema_version(&mut self) -> Result<i64>;
    /// Where the data lives, for messages (a file path, or a URL without its password).
    fn describe(&self) -> String;
}

/// Makes every commit made so far durable (see [`Store::defer_sync`]).
pub type SyncFn = Box<dyn FnMut() -> Result<()> + Send>;

/// Opens a new read connection.
pub type ReaderFactory = std::sync::Arc<dyn Fn() -> Result<Box<dyn Reader>> + Send + Sync>;

/// The read side: queries that never wait for the writer.
pub trait Reader: Send {
    fn account(&mut self, username: &AccountId, now: Timestamp) -> Result<Option<AccountRow>>;
    fn request(&mut self, id: &RequestId) -> Result<Option<RequestRecord>>;
    fn api_key(&mut self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>>;
    /// The web session whose cookie hashes to `id_sha256`, ended or expired ones too.
    fn web_session(&mut self, id_sha256: &str) -> Result<Option<WebSession>>;
    /// An account's keys, revoked ones too, ordered by (created_at, key_id).
    fn api_keys(&mut self, account: &AccountId) -> Result<Vec<ApiKeyRecord>>;
    /// The operator keys (those of no account), revoked ones too, ordered by
    /// (created_at, key_id).
    fn operator_keys(&mut self) -> Result<Vec<ApiKeyRecord>>;
    /// A page of accounts in username order (bytewise), as [`Reader::account`] reads each at
    /// `now`.
    fn accounts(&mut self, q: &AccountsQuery, now: Timestamp) -> Result<Vec<AccountRow>>;
    fn load_catalog(&mut self) -> Result<Catalog>;
    fn price_versions(&mut self) -> Result<Vec<PriceVersion>>;
    fn setting(&mut self, key: &str) -> Result<Option<String>>;
    /// Invoices, newest first (see [`InvoicesQuery`]).
    fn invoices(&mut self, q: &InvoicesQuery) -> Result<Vec<InvoiceRecord>>;
    /// The invoice numbered `(year, seq)`.
    fn invoice(&mut self, year: i64, seq: i64) -> Result<Option<InvoiceRecord>>;
    /// An account's payments, newest first (see [`PaymentsQuery`]).
    fn payments(&mut self, q: &PaymentsQuery) -> Result<Vec<PaymentRecord>>;
    /// A statement's rows (see [`StatementRows`]), in one snapshot; a few index seeks, never a
    /// scan of the account's transfers or line items.
    fn statement(&mut self, q: &StatementQuery) -> Result<StatementRows>;
    /// A page of credit activity, newest first (see [`ActivityQuery`]), in one snapshot.
    fn credit_activity(&mut self, q: &ActivityQuery) -> Result<Vec<ActivityRecord>>;
    /// An account's purchases in a time range, oldest first (see [`PurchasesQuery`]).
    fn purchases(&mut self, q: &PurchasesQuery) -> Result<Vec<PurchaseEntry>>;
    /// The operator's live webhooks, by (created_at, webhook_id) (not the provider's row).
    fn webhooks(&mut self) -> Result<Vec<WebhookRecord>>;
    /// The operator's webhook with this id, deleted or not (the provider's row reads as none).
    fn webhook(&mut self, webhook_id: &str) -> Result<Option<WebhookRecord>>;
    /// A page of a webhook's deliveries, newest event first (see [`DeliveriesQuery`]).
    fn webhook_deliveries(&mut self, q: &DeliveriesQuery) -> Result<Vec<DeliveryRecord>>;
    /// The delivery of event `event_seq` to a webhook, with its attempts in order.
    fn webhook_delivery(
        &mut self,
        webhook_id: &str,
        event_seq: i64,
    ) -> Result<Option<(DeliveryRecord, Vec<AttemptRecord>)>>;
    /// Events of the outbox numbered after `after`, in order, at most `limit`.
    fn webhook_events(&mut self, after: i64, limit: usize) -> Result<Vec<StoredEvent>>;
    /// A top-up of an account.
    fn top_up(
        &mut self,
        account: &AccountId,
        top_up_id: &PurchaseId,
    ) -> Result<Option<TopUpRecord>>;
    /// The top-up whose payment is the provider's `payment_intent` (`pi_...`).
    fn top_up_by_payment_intent(&mut self, payment_intent: &str) -> Result<Option<TopUpRecord>>;
    /// An operator refund (its first answer).
    fn refund(
        &mut self,
        account: &AccountId,
        refund_id: &PurchaseId,
    ) -> Result<Option<RefundRecord>>;
    /// A purchase with its refunded and disputed amounts.
    fn purchase(
        &mut self,
        account: &AccountId,
        purchase_id: &PurchaseId,
    ) -> Result<Option<PurchaseRecord>>;
    /// The invoice issuer, if one was set.
    fn issuer(&mut self) -> Result<Option<Issuer>> {
        self.setting(SETTING_ISSUER)?
            .map(|s| json("invoice issuer", &s))
            .transpose()
    }
    /// The catalog's generation as committed (see [`SETTING_CATALOG_GENERATION`]).
    fn catalog_generation(&mut self) -> Result<i64> {
        generation(self.setting(SETTING_CATALOG_GENERATION)?)
    }
    /// The date the catalog's prices were read on, as the last catalog document applied gave
    /// it (`None` before any).
    fn prices_read_on(&mut self) -> Result<Option<String>> {
        self.setting(SETTING_PRICES_READ_ON)
    }
    /// Checks the ledger end to end (used by tests and `tollgate` operators).
    fn reconcile(&mut self) -> Result<Reconciliation>;
    /// The next gateway requests of `endpoint` to dispatch at `now` (queued, or running on a
    /// lease that ran out): at most `per_account` of each account's, oldest first, the
    /// accounts taking turns, up to `limit`.
    fn gateway_candidates(
        &mut self,
        endpoint: &EndpointId,
        now: Timestamp,
        per_account: usize,
        limit: usize,
    ) -> Result<Vec<GatewayCandidate>>;
    /// A gateway request's row, with its queue position while queued.
    fn gateway_request(&mut self, id: &RequestId) -> Result<Option<GatewayView>>;
    /// Usage rollup rows of one account, in slot order.
    fn usage(&mut self, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>>;
    /// Analytics rollup rows of one account (`api_keys` does not apply), in slot order.
    fn activity(&mut self, q: &RollupQuery) -> Result<Vec<(ActivityKey, ActivityTotals)>>;
    /// A page of one account's model billing events, its line items in keyset order
    /// (serverless line items are not among them).
    fn billing_events(&mut self, q: &BillingEventsQuery) -> Result<Vec<LineItem>>;
    /// Runner-state history: per minute slot with any runner time, its totals.
    fn runner_history(
        &mut self,
        q: &RunnerHistoryQuery,
    ) -> Result<Vec<(Timestamp, RunnerMinuteTotals)>>;
    /// An account's runners, the latest reported first, at most `limit`.
    fn runners(
        &mut self,
        account: &AccountId,
        limit: usize,
    ) -> Result<Vec<tollgate_core::serverless::RunnerRecord>>;
    /// One account's finished requests to one endpoint, a page in the query's order.
    fn request_history(&mut self, q: &RequestHistoryQuery) -> Result<Vec<RequestRecord>>;
    /// Billed requests of an account for one endpoint in `[since, until)`, and their total.
    fn endpoint_history(
        &mut self,
        account: &AccountId,
        endpoint: &EndpointId,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<(u64, Nanos)> {
        let rows = self.usage(&RollupQuery {
            account: account.clone(),
            from: since,
            to: until,
            endpoints: vec![endpoint.clone()],
            api_keys: Vec::new(),
            whole_hours: true,
            service: Some(Service::Models),
        })?;
        let mut total = UsageTotals::default();
        for (_, t) in &rows {
            total
                .add(t)
                .map_err(|e| StoreError::database(e.to_string(), e))?;
        }
        Ok((total.requests, total.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconciliation_summary_counts_and_shows_the_first_few() {
        assert_eq!(Reconciliation::default().summary(), "clean");
        let ids: Vec<RequestId> = (1..=5)
            .map(|i| RequestId::parse(&format!("00000000-0000-4000-8000-00000000000{i}")).unwrap())
            .collect();
        let r = Reconciliation {
            line_item_mismatches: ids,
            revenue_nanos: 5,
            billed_nanos: 7,
            ..Reconciliation::default()
        };
        let s = r.summary();
        assert!(s.starts_with("5 line item mismatches (first: "), "{s}");
        assert!(
            s.contains("000000000003") && !s.contains("000000000004"),
            "{s}"
        );
        assert!(s.ends_with("revenue 5 != billed 7 nano-USD"), "{s}");
    }

    #[test]
    fn a_rollup_read_adds_the_minutes_not_folded_into_their_hour() {
        const H: i64 = 3_600_000;
        let q = |whole_hours| RollupQuery {
            account: AccountId::parse("acme").unwrap(),
            from: Timestamp(H - 120_000),
            to: Timestamp(4 * H + 60_000),
            endpoints: Vec::new(),
            api_keys: Vec::new(),
            whole_hours,
            service: Some(Service::Models),
        };
        let t = Timestamp;
        use RollupRows::*;
        // Folded up to the third hour's fifth minute: hour rows for two, the third open.
        assert_eq!(
            q(true).ranges(t(3 * H + 300_000)),
            vec![
                (Minutes, t(H - 120_000), t(H)),
                (Hours, t(H), t(3 * H)),
                (OpenHours, t(3 * H), t(4 * H)),
                (Minutes, t(4 * H), t(4 * H + 60_000)),
            ]
        );
        // Folded up to the third hour: the same.
        assert_eq!(q(true).ranges(t(3 * H))[2], (OpenHours, t(3 * H), t(4 * H)));
        // Every minute folded (and the setting's absence): hour rows only.
        assert_eq!(
            q(true).ranges(folded_before(None).unwrap())[1],
            (Hours, t(H), t(4 * H))
        );
        // None folded, or folded only before the range.
        for folded in [t(i64::MIN), t(0)] {
            assert_eq!(q(true).ranges(folded)[1], (OpenHours, t(H), t(4 * H)));
        }
        // Buckets that split hours read minutes whatever is folded.
        assert_eq!(
            q(false).ranges(t(3 * H)),
            vec![(Minutes, t(H - 120_000), t(4 * H + 60_000))]
        );
    }
}
