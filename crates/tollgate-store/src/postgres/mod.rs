//! The shared store: one PostgreSQL database written by several tollgate processes.
//!
//! Each process has one writer connection (its engine's) and a bounded pool of read
//! connections (`r2d2`). A batch is one db transaction at READ COMMITTED: the accounts it
//! touches are locked with `SELECT ... FOR UPDATE` in sorted order (so two processes never wait
//! on each other in a cycle), and the engine reads its requests again under those locks, so a
//! request that another process submitted, completed or expired a moment earlier is seen as it
//! is. Every write of a request, a purchase, a transfer, a line item or a rollup row belongs to
//! a locked account, which is what keeps holds, idempotency, concurrency slots and rollups
//! consistent across processes. A batch that still loses a race (a deadlock, a request id
//! inserted by another process at the same moment) is rolled back and run again, whole.
//!
//! Commits are durable when PostgreSQL says so: with the server's defaults (`fsync = on`,
//! `synchronous_commit = on`) a commit that returned is on disk.

use crate::rows::{
    self, AccountCols, Cell, Get, KeyCols, RequestCols, TermsCols, ACCOUNT_COLS, KEY_COLS,
    REQUEST_COLS,
};
use crate::{
    corrupt, parse_id, to_json, AccountRow, ApiKeyRecord, BillingEventsQuery, BillingMode, DbError,
    Reader, ReaderFactory, Reconciliation, Rerunnable, Result, RollupQuery, Store, StoreError, Tx,
    SETTING_CATALOG_GENERATION,
};
use ::postgres::error::SqlState;
use ::postgres::types::ToSql;
use ::postgres::{Client, Config, NoTls, Row, Statement, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use std::collections::{HashMap, HashSet};
use tollgate_core::catalog::{Catalog, EndpointDef, PriceVersion};
use tollgate_core::concurrency::TIER_WINDOW_MS;
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, PurchaseId, RequestId};
use tollgate_core::machine::{
    AccountState, BatchState, LineItem, Lot, PurchaseRecord, RequestRecord,
};
use tollgate_core::price::PriceRule;
use tollgate_core::rollup::{ActivityKey, ActivityTotals, UsageKey, UsageTotals};
use tollgate_core::terms::Terms;
use tollgate_core::{Nanos, Timestamp};

mod persist;
mod rollups;

/// Schema migrations, applied in order, each in one transaction; `tollgate_schema` records how
/// many ran. A transaction-scoped advisory lock makes processes that start together take
/// turns.
const MIGRATIONS: &[&str] = &[include_str!("../../migrations/postgres/0001_init.sql")];

/// The advisory lock key migrations hold ("tollgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// The `application_name` of tollgate's connections, unless the URL names another.
pub const APPLICATION_NAME: &str = "tollgate";

/// How long connecting, or waiting for a free read connection, may take (unless the URL sets
/// `connect_timeout`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Read connections per process.
pub const READ_POOL_SIZE: u32 = 8;

/// How many times a batch that lost a race with another process is run again.
const CONFLICT_RETRIES: u32 = 10;

/// Whether `target` names a PostgreSQL database rather than a SQLite file.
pub fn is_url(target: &str) -> bool {
    target.starts_with("postgres://") || target.starts_with("postgresql://")
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return StoreError::database(e.to_string(), e);
        };
        let message = format!("{} ({})", db.message(), db.code().code());
        let code = db.code().clone();
        let error = DbError::new(message, e);
        if code == SqlState::T_R_DEADLOCK_DETECTED
            || code == SqlState::T_R_SERIALIZATION_FAILURE
            || code == SqlState::UNIQUE_VIOLATION
        {
            StoreError::Conflict(error)
        } else if code == SqlState::ADMIN_SHUTDOWN
            || code == SqlState::CRASH_SHUTDOWN
            || code == SqlState::CANNOT_CONNECT_NOW
        {
            // The server's last word before it closes the socket; the client may not have
            // seen the socket close yet.
            StoreError::Disconnected(error)
        } else {
            StoreError::Database(error)
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}")
        }
        _ => url.to_string(),
    }
}

/// The writer's connection. Its statements are prepared once and run for every batch, and
/// PostgreSQL would soon settle each on a generic plan costed from the tables' statistics,
/// which on a new database say "empty" until autovacuum first analyzes them: a sequential
/// scan of `requests` per batch. Custom plans are costed from the tables' actual size.
fn connect(config: &Config, shown: &str) -> Result<Client> {
    let mut client = config.connect(NoTls).map_err(|e| {
        // The driver's message is "error connecting to server"; its cause says why.
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
        StoreError::database(format!("cannot connect to {shown}: {e}{cause}"), e)
    })?;
    client.batch_execute("SET plan_cache_mode = force_custom_plan")?;
    Ok(client)
}

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

pub struct PostgresStore {
    config: Config,
    shown: String,
    client: Client,
    /// The writer's prepared statements, by SQL text.
    statements: HashMap<String, Statement>,
    pool: ReadPool,
}

impl PostgresStore {
    /// Connects to the database at `url`, runs pending migrations, and opens the read pool.
    pub fn open(url: &str) -> Result<PostgresStore> {
        let shown = redact(url);
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::database(format!("invalid PostgreSQL URL {shown}: {e}"), e))?;
        if config.get_application_name().is_none() {
            // What operators see in pg_stat_activity.
            config.application_name(APPLICATION_NAME);
        }
        if config.get_connect_timeout().is_none() {
            // An unreachable server fails a batch in seconds, not after TCP gives up.
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut client = connect(&config, &shown)?;
        migrate(&mut client)?;
        let pool = r2d2::Pool::builder()
            .max_size(READ_POOL_SIZE)
            .connection_timeout(CONNECT_TIMEOUT)
            .min_idle(Some(1))
            .build(PostgresConnectionManager::new(config.clone(), NoTls))
            .map_err(|e| {
                StoreError::database(format!("cannot open read connections to {shown}: {e}"), e)
            })?;
        Ok(PostgresStore {
            config,
            shown,
            client,
            statements: HashMap::new(),
            pool: ReadPool(Some(pool)),
        })
    }
}

fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let fresh: bool = tx
        .query_one("SELECT to_regclass('tollgate_schema') IS NULL", &[])?
        .try_get(0)?;
    if fresh {
        tx.batch_execute("CREATE TABLE tollgate_schema (version INTEGER NOT NULL)")?;
    }
    let done: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM tollgate_schema", &[])?
        .try_get(0)?;
    if done as usize > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {done} is newer than this tollgate ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO tollgate_schema (version) VALUES ($1)",
            &[&((i + 1) as i32)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

impl Store for PostgresStore {
    fn transaction(&mut self, work: &mut Rerunnable) -> Result<()> {
        let mut attempt = 0;
        // The server may end a session (and say so) before its socket reads as closed.
        let mut ended = false;
        // Each attempt runs the whole of `work` again, in a new db transaction (`Rerunnable`).
        loop {
            if ended || self.client.is_closed() {
                self.client = connect(&self.config, &self.shown)?;
                self.statements.clear();
                ended = false;
            }
            let statements = &mut self.statements;
            let outcome = (|| {
                let mut tx = self.client.transaction()?;
                let mut w = PgTx {
                    tx: &mut tx,
                    statements,
                    found: HashSet::new(),
                };
                work(&mut w)?;
                tx.commit()?;
                Ok(())
            })();
            match outcome {
                // The connection dropped (the server restarted, a proxy cut it): reconnect and
                // run the batch again. Safe even if its commit went through: every operation
                // is idempotent on its client id, so the second run answers as a replay.
                Err(e)
                    if (self.client.is_closed() || matches!(e, StoreError::Disconnected(_)))
                        && attempt < CONFLICT_RETRIES =>
                {
                    attempt += 1;
                    tracing::warn!(%e, "the database connection dropped; reconnecting");
                    ended = true;
                }
                Err(StoreError::Conflict(why)) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, %why, "batch lost a race; running it again");
                    // Back off a little, differently each time, so two processes that
                    // deadlocked do not meet again at once.
                    let jitter = u64::from(rand_jitter()) % (attempt as u64 * 5 + 1);
                    std::thread::sleep(std::time::Duration::from_millis(jitter));
                }
                other => return other,
            }
        }
    }

    fn reader_factory(&self) -> ReaderFactory {
        let pool = self.pool.clone();
        std::sync::Arc::new(
            move || Ok(Box::new(PgReader { pool: pool.clone() }) as Box<dyn Reader>),
        )
    }

    fn schema_version(&mut self) -> Result<i64> {
        let v: i32 = self
            .client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM tollgate_schema", &[])?
            .try_get(0)?;
        Ok(i64::from(v))
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

/// A few bits that differ between processes and calls, for retry jitter.
fn rand_jitter() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or(0)
}

/// Runs SQL on a connection or a transaction.
trait Run {
    fn rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>;
    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64>;
}

impl Run for Client {
    fn rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        Ok(self.query(sql, params)?)
    }
    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        Ok(self.execute(sql, params)?)
    }
}

impl Run for Transaction<'_> {
    fn rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        Ok(self.query(sql, params)?)
    }
    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        Ok(self.execute(sql, params)?)
    }
}

/// The writer's db transaction: statements are prepared once per connection.
struct PgTx<'a, 'b> {
    tx: &'a mut Transaction<'b>,
    statements: &'a mut HashMap<String, Statement>,
    /// Requests that exist, as last loaded: they are updated, the others inserted (and a
    /// request another process inserted meanwhile then fails the insert, and the batch is run
    /// again).
    found: HashSet<RequestId>,
}

impl PgTx<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl Run for PgTx<'_, '_> {
    fn rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let st = self.statement(sql)?;
        Ok(self.tx.query(&st, params)?)
    }
    fn exec(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let st = self.statement(sql)?;
        Ok(self.tx.execute(&st, params)?)
    }
}

impl Get for Row {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.try_get(i)?)
    }
    /// `BIGINT` and `INTEGER` columns alike.
    fn int(&self, i: usize) -> Result<i64> {
        match *self.columns()[i].type_() {
            ::postgres::types::Type::INT4 => Ok(i64::from(self.try_get::<_, i32>(i)?)),
            _ => Ok(self.try_get(i)?),
        }
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match *self.columns()[i].type_() {
            ::postgres::types::Type::INT4 => Ok(self.try_get::<_, Option<i32>>(i)?.map(i64::from)),
            _ => Ok(self.try_get(i)?),
        }
    }
}

fn request_row(r: &Row) -> Result<RequestRecord> {
    RequestCols::read(r)?.into_record()
}

fn key_row(r: &Row) -> Result<ApiKeyRecord> {
    KeyCols::read(r)?.into_record()
}

/// The named accounts (locked when `lock`), with their open lots and paid purchases in the
/// tier window of `now`, in username order.
fn load_accounts(
    c: &mut dyn Run,
    ids: &[&str],
    now: Timestamp,
    lock: bool,
) -> Result<Vec<AccountRow>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let accounts = c.rows(
        &format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE username = ANY($1) ORDER BY username{lock}"
        ),
        &[&ids],
    )?;
    if accounts.is_empty() {
        return Ok(Vec::new());
    }
    // One query for both: the open lots, in spending order, and the paid purchases in the
    // tier window of `now`.
    let since = now.minus_ms(TIER_WINDOW_MS).0;
    let mut lots: HashMap<String, Vec<Lot>> = HashMap::new();
    let mut paid: HashMap<String, i64> = HashMap::new();
    for r in c.rows(
        "SELECT account, purchase_id, remaining_nanos, expires_at, created_at, amount_nanos, \
         paid FROM purchases \
         WHERE account = ANY($1) AND (remaining_nanos > 0 OR (paid AND created_at > $2)) \
         ORDER BY account, expires_at IS NULL, expires_at, created_at, purchase_id",
        &[&ids, &since],
    )? {
        let account: String = r.try_get(0)?;
        let remaining: i64 = r.try_get(2)?;
        let created_at: i64 = r.try_get(4)?;
        if r.try_get::<_, bool>(6)? && created_at > since {
            let sum = paid.entry(account.clone()).or_default();
            *sum = sum
                .checked_add(r.try_get(5)?)
                .ok_or_else(|| corrupt("paid purchases", "their sum overflows"))?;
        }
        if remaining > 0 {
            let pid: String = r.try_get(1)?;
            lots.entry(account).or_default().push(rows::lot(
                &pid,
                remaining,
                r.try_get(3)?,
                created_at,
            )?);
        }
    }
    accounts
        .iter()
        .map(|r| {
            let cols = AccountCols::read(r)?;
            let lots = lots.remove(&cols.username).unwrap_or_default();
            let paid_28d = Nanos(paid.get(&cols.username).copied().unwrap_or(0));
            cols.into_row(lots, paid_28d)
        })
        .collect()
}

fn load_requests(c: &mut dyn Run, ids: &[&str]) -> Result<Vec<RequestRecord>> {
    c.rows(
        &format!("SELECT {REQUEST_COLS} FROM requests WHERE request_id = ANY($1)"),
        &[&ids],
    )?
    .iter()
    .map(request_row)
    .collect()
}

fn setting(c: &mut dyn Run, key: &str) -> Result<Option<String>> {
    match c
        .rows("SELECT value FROM settings WHERE key = $1", &[&key])?
        .first()
    {
        Some(r) => Ok(Some(r.try_get(0)?)),
        None => Ok(None),
    }
}

fn price_versions(c: &mut dyn Run) -> Result<Vec<PriceVersion>> {
    c.rows(rows::PRICE_VERSION_SQL, &[])?
        .iter()
        .map(|r| {
            rows::price_version(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            )
        })
        .collect()
}

fn load_catalog(c: &mut dyn Run) -> Result<Catalog> {
    let defs = c
        .rows("SELECT def FROM endpoints", &[])?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect::<Result<Vec<String>>>()?;
    let settings = c
        .rows("SELECT key, value FROM settings", &[])?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<HashMap<String, String>>>()?;
    rows::catalog(defs, price_versions(c)?, &settings)
}

/// Counts one more catalog change, in the db transaction that makes it.
fn bump_catalog_generation(c: &mut dyn Run) -> Result<()> {
    c.exec(
        "INSERT INTO settings (key, value) VALUES ($1, '1') ON CONFLICT (key) \
         DO UPDATE SET value = CAST(CAST(settings.value AS BIGINT) + 1 AS TEXT)",
        &[&SETTING_CATALOG_GENERATION],
    )?;
    Ok(())
}

impl Tx for PgTx<'_, '_> {
    fn is_shared(&self) -> bool {
        true
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        setting(self, key)
    }

    fn load_requests(
        &mut self,
        ids: &[RequestId],
        out: &mut HashMap<RequestId, RequestRecord>,
    ) -> Result<()> {
        let ids: Vec<&str> = ids.iter().map(|r| r.as_str()).collect();
        for r in load_requests(self, &ids)? {
            self.found.insert(r.id.clone());
            out.insert(r.id.clone(), r);
        }
        Ok(())
    }

    fn lock_accounts(
        &mut self,
        ids: &[AccountId],
        now: Timestamp,
        out: &mut HashMap<AccountId, AccountState>,
    ) -> Result<()> {
        let names: Vec<&str> = ids.iter().map(|a| a.as_str()).collect();
        for row in load_accounts(self, &names, now, true)? {
            out.insert(row.state.credit.id.clone(), row.state);
        }
        Ok(())
    }

    fn load_purchases(
        &mut self,
        keys: &[(AccountId, PurchaseId)],
        out: &mut HashMap<(AccountId, PurchaseId), PurchaseRecord>,
    ) -> Result<()> {
        for (account, pid) in keys {
            let found = self.rows(
                "SELECT amount_nanos, paid, created_at, balance_after, limit_after, \
                 locked_after, expires_at FROM purchases WHERE account = $1 AND purchase_id = $2",
                &[&account.as_str(), &pid.as_str()],
            )?;
            if let Some(r) = found.first() {
                let limit: i64 = r.try_get(4)?;
                out.insert(
                    (account.clone(), pid.clone()),
                    PurchaseRecord {
                        account: account.clone(),
                        purchase_id: pid.clone(),
                        amount: Nanos(r.try_get(0)?),
                        paid: r.try_get(1)?,
                        created_at: Timestamp(r.try_get(2)?),
                        balance_after: Nanos(r.try_get(3)?),
                        concurrency_limit_after: u32::try_from(limit)
                            .map_err(|e| corrupt("limit_after", e))?,
                        locked_after: r.try_get(5)?,
                        expires_at: r.try_get::<_, Option<i64>>(6)?.map(Timestamp),
                    },
                );
            }
        }
        Ok(())
    }

    fn persist(&mut self, s: &BatchState) -> Result<()> {
        persist::persist(self, s)
    }

    fn due_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<RequestId>> {
        self.rows(
            "SELECT request_id FROM requests WHERE hold_expires_at IS NOT NULL \
             AND hold_expires_at <= $1 ORDER BY hold_expires_at LIMIT $2",
            &[&now.0, &(limit as i64)],
        )?
        .iter()
        .map(|r| parse_id(RequestId::parse, r.try_get(0)?))
        .collect()
    }

    fn due_credit_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<AccountId>> {
        // As in the SQLite store: accounts whose due credits are all reserved by holds are
        // left out unless one of those holds expires in the same sweep.
        self.rows(
            "SELECT DISTINCT p.account FROM purchases p JOIN accounts a ON a.username = p.account \
             WHERE p.remaining_nanos > 0 AND p.expires_at IS NOT NULL AND p.expires_at <= $1 \
             AND (a.balance_nanos > a.held_nanos OR EXISTS (SELECT 1 FROM requests r \
               WHERE r.hold_expires_at IS NOT NULL AND r.hold_expires_at <= $1 \
               AND r.account = p.account)) LIMIT $2",
            &[&now.0, &(limit as i64)],
        )?
        .iter()
        .map(|r| parse_id(AccountId::parse, r.try_get(0)?))
        .collect()
    }

    fn create_account(
        &mut self,
        username: &AccountId,
        billing: BillingMode,
        now: Timestamp,
    ) -> Result<()> {
        let n = self.exec(
            "INSERT INTO accounts (username, created_at, billing) VALUES ($1, $2, $3) \
             ON CONFLICT (username) DO NOTHING",
            &[&username.as_str(), &now.0, &billing.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("account {username}")));
        }
        Ok(())
    }

    fn set_account_terms(&mut self, username: &AccountId, terms: &Terms) -> Result<()> {
        let t = TermsCols::of(terms);
        let n = self.exec(
            "UPDATE accounts SET lock_threshold_nanos = $2, concurrency_override = $3, \
             discounts = $4 WHERE username = $1",
            &[
                &username.as_str(),
                &t.lock_threshold,
                &t.concurrency_override,
                &t.discounts,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {username}")));
        }
        Ok(())
    }

    fn insert_api_key(&mut self, k: &ApiKeyRecord) -> Result<()> {
        self.exec(
            &format!(
                "INSERT INTO api_keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (key_id) DO UPDATE SET secret_sha256 = excluded.secret_sha256, \
                 scope = excluded.scope, revoked_at = NULL \
                 WHERE api_keys.account IS NULL AND excluded.account IS NULL"
            ),
            &[
                &k.key_id.as_str(),
                &k.account.as_ref().map(|a| a.as_str()),
                &k.scope.as_str(),
                &k.alias,
                &k.secret_sha256,
                &k.created_at.0,
                &k.revoked_at.map(|t| t.0),
            ],
        )?;
        Ok(())
    }

    fn revoke_api_key(
        &mut self,
        key_id: &ApiKeyId,
        account: Option<&AccountId>,
        now: Timestamp,
    ) -> Result<bool> {
        let n = self.exec(
            "UPDATE api_keys SET revoked_at = $3 WHERE key_id = $1 \
             AND account IS NOT DISTINCT FROM $2 AND revoked_at IS NULL",
            &[&key_id.as_str(), &account.map(|a| a.as_str()), &now.0],
        )?;
        Ok(n > 0)
    }

    fn upsert_endpoint(&mut self, def: &EndpointDef, now: Timestamp) -> Result<()> {
        self.exec(
            "INSERT INTO endpoints (endpoint_id, def, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (endpoint_id) DO UPDATE SET def = excluded.def, \
             updated_at = excluded.updated_at",
            &[&def.id.as_str(), &to_json(def), &now.0],
        )?;
        bump_catalog_generation(self)
    }

    fn insert_price_version(
        &mut self,
        endpoint: &EndpointId,
        account: Option<&AccountId>,
        effective_from: Timestamp,
        rule: &PriceRule,
        now: Timestamp,
    ) -> Result<i64> {
        let rows = self.rows(
            "INSERT INTO price_versions (endpoint_id, account, effective_from, rule, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &endpoint.as_str(),
                &account.map(|a| a.as_str()),
                &effective_from.0,
                &to_json(rule),
                &now.0,
            ],
        )?;
        let id: i64 = rows
            .first()
            .ok_or_else(|| StoreError::Database(DbError::msg("no price version id returned")))?
            .try_get(0)?;
        bump_catalog_generation(self)?;
        Ok(id)
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.exec(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        bump_catalog_generation(self)
    }

    fn load_catalog(&mut self) -> Result<Catalog> {
        load_catalog(self)
    }
}

/// The process's read connections. The driver closes a connection by blocking on a runtime of
/// its own, which an async runtime refuses on its threads, and the last handle may be dropped
/// on one (with its engine): so a handle lets go of the pool on a thread of its own.
#[derive(Clone)]
struct ReadPool(Option<Pool>);

impl ReadPool {
    fn get(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        self.0
            .as_ref()
            .expect("pool until dropped")
            .get()
            .map_err(|e| StoreError::database(format!("no read connection: {e}"), e))
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("tollgate-pool-close".into())
                .spawn(move || drop(pool));
        }
    }
}

/// A read handle: each query takes a connection from the process's bounded pool.
pub struct PgReader {
    pool: ReadPool,
}

impl PgReader {
    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>> {
        self.pool.get()
    }
}

/// A read-only transaction that sees one commit throughout.
fn snapshot(c: &mut Client) -> Result<Transaction<'_>> {
    Ok(c.build_transaction()
        .isolation_level(::postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?)
}

impl Reader for PgReader {
    fn account(&mut self, username: &AccountId, now: Timestamp) -> Result<Option<AccountRow>> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let mut rows = load_accounts(&mut tx, &[username.as_str()], now, false)?;
        tx.commit()?;
        Ok(rows.pop())
    }

    fn request(&mut self, id: &RequestId) -> Result<Option<RequestRecord>> {
        Ok(load_requests(&mut *self.conn()?, &[id.as_str()])?.pop())
    }

    fn api_key(&mut self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        self.conn()?
            .rows(
                &format!("SELECT {KEY_COLS} FROM api_keys WHERE key_id = $1"),
                &[&key_id.as_str()],
            )?
            .first()
            .map(key_row)
            .transpose()
    }

    fn api_keys(&mut self, account: &AccountId) -> Result<Vec<ApiKeyRecord>> {
        self.conn()?
            .rows(
                &format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE account = $1 ORDER BY created_at, key_id"
                ),
                &[&account.as_str()],
            )?
            .iter()
            .map(key_row)
            .collect()
    }

    fn load_catalog(&mut self) -> Result<Catalog> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let catalog = load_catalog(&mut tx)?;
        tx.commit()?;
        Ok(catalog)
    }

    fn price_versions(&mut self) -> Result<Vec<PriceVersion>> {
        price_versions(&mut *self.conn()?)
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        setting(&mut *self.conn()?, key)
    }

    fn reconcile(&mut self) -> Result<Reconciliation> {
        let mut c = self.conn()?;
        let mut tx = snapshot(&mut c)?;
        let rec = rows::reconcile(&mut |sql| {
            let mut out = Vec::new();
            for r in tx.query(sql, &[])? {
                let mut row = Vec::with_capacity(r.len());
                for (i, col) in r.columns().iter().enumerate() {
                    row.push(match *col.type_() {
                        ::postgres::types::Type::INT8 => Cell::Int(r.try_get(i)?),
                        ::postgres::types::Type::INT4 => {
                            Cell::Int(i64::from(r.try_get::<_, i32>(i)?))
                        }
                        _ => Cell::Text(r.try_get(i)?),
                    });
                }
                out.push(row);
            }
            Ok(out)
        })?;
        tx.commit()?;
        Ok(rec)
    }

    fn usage(&mut self, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
        rollups::usage(&mut *self.conn()?, q)
    }

    fn activity(&mut self, q: &RollupQuery) -> Result<Vec<(ActivityKey, ActivityTotals)>> {
        rollups::activity(&mut *self.conn()?, q)
    }

    fn billing_events(&mut self, q: &BillingEventsQuery) -> Result<Vec<LineItem>> {
        rollups::billing_events(&mut *self.conn()?, q)
    }
}

#[cfg(test)]
mod tests {
    use super::{is_url, redact};

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redact("postgres://tollgate:s3cret@db:5432/billing"),
            "postgres://tollgate:***@db:5432/billing"
        );
        assert_eq!(
            redact("postgresql://tollgate@db/billing?sslmode=disable"),
            "postgresql://tollgate@db/billing?sslmode=disable"
        );
        assert!(is_url("postgres://db/x") && is_url("postgresql://db/x"));
        assert!(!is_url("tollgate.db") && !is_url("/var/lib/postgres/tollgate.db"));
    }
}
