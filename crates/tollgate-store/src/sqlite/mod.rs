//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! One writer connection (the engine's) and any number of reader connections. WAL lets readers
//! see the last commit while the writer works; `synchronous=FULL` makes every commit durable
//! before it returns, which is what lets the engine acknowledge after commit.

use crate::{
    AccountRow, AccountTerms, ApiKeyRecord, BillingEventsQuery, BillingMode, Reader, ReaderFactory,
    Reconciliation, Result, RollupQuery, Scope, Store, StoreError, Tx,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tollgate_core::catalog::{Catalog, EndpointDef, PriceVersion};
use tollgate_core::concurrency::{ConcurrencyTable, TIER_WINDOW_MS};
use tollgate_core::ids::{AccountId, ApiKeyId, EndpointId, MachineType, PurchaseId, RequestId};
use tollgate_core::ledger::CreditAccount;
use tollgate_core::machine::{
    AccountState, BatchState, LineItem, Lot, PurchaseRecord, RequestRecord, RequestStatus, Source,
};
use tollgate_core::price::{MachinePrices, PriceRule};
use tollgate_core::rollup::{ActivityKey, ActivityTotals, UsageKey, UsageTotals};
use tollgate_core::{Nanos, Timestamp};

mod rollups;

/// A schema migration: its SQL, then what must be computed from the rows it reshaped.
type Migration = (&'static str, Option<fn(&Connection) -> Result<()>>);

/// Schema migrations, applied in order, each in one transaction; `PRAGMA user_version` records
/// how many ran.
const MIGRATIONS: &[Migration] = &[
    (include_str!("../../migrations/sqlite/0001_init.sql"), None),
    (
        include_str!("../../migrations/sqlite/0002_rollups.sql"),
        Some(rollups::backfill),
    ),
];

/// Settings keys.
pub const SETTING_MACHINES: &str = "machines";
pub const SETTING_CONCURRENCY: &str = "concurrency";
pub const SETTING_PRICES_READ_ON: &str = "prices_read_on";

pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    cache: AccountCache,
    _checkpointer: Checkpointer,
}

/// The writer's copy of the account rows it has read or written. The store is the only writer
/// of its file, so what it committed is what is there; `PRAGMA data_version` changes when any
/// other connection commits, and then the cache is dropped. A batch that fails drops it too.
#[derive(Default)]
struct AccountCache {
    accounts: HashMap<AccountId, CachedAccount>,
    data_version: i64,
}

/// Paid purchases as (created_at, amount): what the concurrency tier is summed from.
type PaidPurchases = Vec<(Timestamp, Nanos)>;

#[derive(Clone)]
struct CachedAccount {
    /// `paid_28d` is recomputed from `recent_paid` for each batch's `now`.
    state: AccountState,
    /// Paid purchases that may still be in the 28-day window: (created_at, amount).
    recent_paid: PaidPurchases,
}

impl CachedAccount {
    fn state_at(&mut self, now: Timestamp) -> AccountState {
        let since = now.minus_ms(TIER_WINDOW_MS);
        self.recent_paid.retain(|(at, _)| *at > since);
        let mut state = self.state.clone();
        state.paid_28d = Nanos(self.recent_paid.iter().map(|(_, n)| n.0).sum());
        state
    }
}

/// Copies the WAL back into the database file from a thread of its own, so the writer's
/// commits never pay for it (the writer's automatic checkpoints are off).
struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the checkpointer runs.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The WAL length, in frames (about 4 KiB each), past which the checkpointer makes the writer
/// start the WAL over: 64 MiB.
const WAL_RESTART_FRAMES: i64 = 16_384;

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = open_conn(path)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-checkpoint".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    // PASSIVE never blocks the writer or readers. But the writer only starts
                    // the WAL over when every frame in it has been copied back, which a writer
                    // that never pauses does not allow: under sustained load the WAL would grow
                    // without bound, and every commit would pay for extending the file. So
                    // once it is past the limit, a RESTART holds the next commit back for the
                    // little PASSIVE left, and that commit starts the WAL over.
                    let frames: i64 = conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                        .unwrap_or(0);
                    if frames > WAL_RESTART_FRAMES {
                        let _ = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
                    }
                }
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| StoreError::Db(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    rollups::register_functions(&conn)?;
    // Keep the working set of the B-trees in memory (64 MiB per connection; the writer gets
    // more below) and read through the OS page cache without copies.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "mmap_size", 1_i64 << 30)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs pending migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let mut conn = open_conn(&path)?;
        migrate(&mut conn)?;
        conn.pragma_update(None, "cache_size", -262_144)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let _checkpointer = Checkpointer::start(&path)?;
        Ok(SqliteStore {
            path,
            conn,
            cache: AccountCache::default(),
            _checkpointer,
        })
    }

    /// The schema version after migrations.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if done as usize > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {done} is newer than this tollgate ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, (sql, then)) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if let Some(then) = then {
            then(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Checked with the write lock held: no other connection can commit until we are done.
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version != self.cache.data_version {
            self.cache.accounts.clear();
            self.cache.data_version = version;
        }
        let mut w = SqliteTx {
            conn: &tx,
            cache: &mut self.cache.accounts,
            written: HashMap::new(),
            forget: Vec::new(),
        };
        let outcome = f(&mut w);
        let (written, forget) = (
            std::mem::take(&mut w.written),
            std::mem::take(&mut w.forget),
        );
        match outcome.and_then(|()| Ok(tx.commit()?)) {
            Ok(()) => {
                for id in forget {
                    self.cache.accounts.remove(&id);
                }
                self.cache.accounts.extend(written);
                Ok(())
            }
            Err(e) => {
                self.cache.accounts.clear();
                Err(e)
            }
        }
    }

    fn reader_factory(&self) -> ReaderFactory {
        let path = self.path.clone();
        std::sync::Arc::new(move || {
            let conn = open_conn(&path)?;
            Ok(Box::new(SqliteReader { conn }) as Box<dyn Reader>)
        })
    }
}

struct SqliteTx<'a> {
    conn: &'a Connection,
    /// The cache as of the last commit (read-only during the transaction).
    cache: &'a mut HashMap<AccountId, CachedAccount>,
    /// Accounts as this transaction leaves them; cached only once it commits.
    written: HashMap<AccountId, CachedAccount>,
    /// Accounts changed outside the state machine (terms); dropped once it commits.
    forget: Vec<AccountId>,
}

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

const ACCOUNT_COLS: &str = "username, billing, balance_nanos, held_nanos, in_progress, \
     lock_threshold_nanos, concurrency_override, discounts, paid_lifetime_nanos, month, \
     month_subtotal_nanos, created_at";

/// Paid purchases of the account within the tier window of `now`.
fn recent_paid(conn: &Connection, account: &str, now: Timestamp) -> Result<PaidPurchases> {
    let mut st = conn.prepare_cached(
        "SELECT created_at, amount_nanos FROM purchases \
         WHERE account = ?1 AND paid = 1 AND created_at > ?2",
    )?;
    let rows = st.query_map(params![account, now.minus_ms(TIER_WINDOW_MS).0], |r| {
        Ok((Timestamp(r.get(0)?), Nanos(r.get(1)?)))
    })?;
    Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// The account's lots with something left, in spending order.
fn open_lots(conn: &Connection, account: &str) -> Result<Vec<Lot>> {
    let mut st = conn.prepare_cached(
        "SELECT purchase_id, remaining_nanos, expires_at, created_at FROM purchases \
         WHERE account = ?1 AND remaining_nanos > 0 \
         ORDER BY expires_at IS NULL, expires_at, created_at, purchase_id",
    )?;
    let mut rows = st.query([account])?;
    let mut lots = Vec::new();
    while let Some(r) = rows.next()? {
        lots.push(Lot {
            purchase_id: parse_id(PurchaseId::parse, &r.get::<_, String>(0)?)?,
            remaining: Nanos(r.get(1)?),
            expires_at: r.get::<_, Option<i64>>(2)?.map(Timestamp),
            created_at: Timestamp(r.get(3)?),
        });
    }
    Ok(lots)
}

/// An account row; `recent_paid` are its paid purchases in the tier window (see
/// [`recent_paid`]), from which `paid_28d` is summed.
fn account_row(
    conn: &Connection,
    r: &Row,
    recent_paid: &[(Timestamp, Nanos)],
) -> Result<AccountRow> {
    let username: String = r.get(0)?;
    let billing = match r.get::<_, String>(1)?.as_str() {
        "invoice" => BillingMode::Invoice,
        _ => BillingMode::Prepaid,
    };
    let id = parse_id(AccountId::parse, &username)?;
    let credit = CreditAccount {
        id,
        balance: Nanos(r.get(2)?),
        held: Nanos(r.get(3)?),
        floor: match billing {
            BillingMode::Prepaid => Some(Nanos::ZERO),
            BillingMode::Invoice => None,
        },
        lock_threshold: Nanos(r.get(5)?),
    };
    let state = AccountState {
        credit,
        in_progress: r.get(4)?,
        concurrency_override: r.get(6)?,
        paid_28d: Nanos(recent_paid.iter().map(|(_, n)| n.0).sum()),
        paid_lifetime: Nanos(r.get(8)?),
        discounts: json("discounts", &r.get::<_, String>(7)?)?,
        month: r.get(9)?,
        month_subtotal: Nanos(r.get(10)?),
        lots: open_lots(conn, &username)?,
    };
    Ok(AccountRow {
        state,
        created_at: Timestamp(r.get(11)?),
        billing,
    })
}

/// The account and its paid purchases in the tier window of `now`.
fn load_account(
    conn: &Connection,
    id: &AccountId,
    now: Timestamp,
) -> Result<Option<(AccountRow, PaidPurchases)>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLS} FROM accounts WHERE username = ?1"
    ))?;
    let mut rows = st.query([id.as_str()])?;
    match rows.next()? {
        Some(r) => {
            let recent = recent_paid(conn, id.as_str(), now)?;
            Ok(Some((account_row(conn, r, &recent)?, recent)))
        }
        None => Ok(None),
    }
}

fn get_account(conn: &Connection, id: &AccountId, now: Timestamp) -> Result<Option<AccountRow>> {
    Ok(load_account(conn, id, now)?.map(|(row, _)| row))
}

const REQUEST_COLS: &str = "request_id, source, account, endpoint_id, api_key, price_version, \
     status, submitted_at, started_at, finished_at, hold_nanos, hold_expires_at, machine_type, \
     num_gpus, queue_ms, inference_ms, completion";

fn request_row(r: &Row) -> Result<RequestRecord> {
    let status: String = r.get(6)?;
    let completion: Option<String> = r.get(16)?;
    Ok(RequestRecord {
        id: parse_id(RequestId::parse, &r.get::<_, String>(0)?)?,
        source: match r.get::<_, String>(1)?.as_str() {
            "event" => Source::Event,
            _ => Source::Lifecycle,
        },
        account: parse_id(AccountId::parse, &r.get::<_, String>(2)?)?,
        endpoint: parse_id(EndpointId::parse, &r.get::<_, String>(3)?)?,
        api_key: r
            .get::<_, Option<String>>(4)?
            .map(|k| parse_id(ApiKeyId::parse, &k))
            .transpose()?,
        price_version: r.get(5)?,
        status: RequestStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        submitted_at: Timestamp(r.get(7)?),
        started_at: r.get::<_, Option<i64>>(8)?.map(Timestamp),
        finished_at: r.get::<_, Option<i64>>(9)?.map(Timestamp),
        hold: Nanos(r.get(10)?),
        hold_expires_at: r.get::<_, Option<i64>>(11)?.map(Timestamp),
        machine_type: r
            .get::<_, Option<String>>(12)?
            .map(|m| parse_id(MachineType::parse, &m))
            .transpose()?,
        num_gpus: r.get(13)?,
        queue_ms: r.get(14)?,
        inference_ms: r.get(15)?,
        completion: completion.map(|c| json("completion", &c)).transpose()?,
    })
}

fn get_request(conn: &Connection, id: &RequestId) -> Result<Option<RequestRecord>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {REQUEST_COLS} FROM requests WHERE request_id = ?1"
    ))?;
    let mut rows = st.query([id.as_str()])?;
    match rows.next()? {
        Some(r) => Ok(Some(request_row(r)?)),
        None => Ok(None),
    }
}

fn key_row(r: &Row) -> Result<ApiKeyRecord> {
    let scope: String = r.get(2)?;
    Ok(ApiKeyRecord {
        key_id: parse_id(ApiKeyId::parse, &r.get::<_, String>(0)?)?,
        account: r
            .get::<_, Option<String>>(1)?
            .map(|a| parse_id(AccountId::parse, &a))
            .transpose()?,
        scope: Scope::parse(&scope).ok_or_else(|| corrupt("scope", &scope))?,
        alias: r.get(3)?,
        secret_sha256: r.get(4)?,
        created_at: Timestamp(r.get(5)?),
        revoked_at: r.get::<_, Option<i64>>(6)?.map(Timestamp),
    })
}

const KEY_COLS: &str = "key_id, account, scope, alias, secret_sha256, created_at, revoked_at";

fn setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn price_versions(conn: &Connection) -> Result<Vec<PriceVersion>> {
    let mut st = conn.prepare_cached(
        "SELECT id, endpoint_id, account, effective_from, rule FROM price_versions ORDER BY id",
    )?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(PriceVersion {
            id: r.get(0)?,
            endpoint: parse_id(EndpointId::parse, &r.get::<_, String>(1)?)?,
            account: r
                .get::<_, Option<String>>(2)?
                .map(|a| parse_id(AccountId::parse, &a))
                .transpose()?,
            effective_from: Timestamp(r.get(3)?),
            rule: json::<PriceRule>("price rule", &r.get::<_, String>(4)?)?,
        });
    }
    Ok(out)
}

fn load_catalog(conn: &Connection) -> Result<Catalog> {
    let mut catalog = Catalog::default();
    let mut st = conn.prepare_cached("SELECT def FROM endpoints")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let def: EndpointDef = json("endpoint", &r.get::<_, String>(0)?)?;
        catalog.endpoints.insert(def.id.clone(), def);
    }
    for v in price_versions(conn)? {
        catalog.insert_version(v);
    }
    if let Some(m) = setting(conn, SETTING_MACHINES)? {
        catalog.machines = json::<MachinePrices>("machines", &m)?;
    }
    if let Some(c) = setting(conn, SETTING_CONCURRENCY)? {
        catalog.concurrency = json::<ConcurrencyTable>("concurrency", &c)?;
    }
    Ok(catalog)
}

impl Tx for SqliteTx<'_> {
    fn load_requests(
        &mut self,
        ids: &[RequestId],
        out: &mut HashMap<RequestId, RequestRecord>,
    ) -> Result<()> {
        for id in ids {
            if let Some(r) = get_request(self.conn, id)? {
                out.insert(id.clone(), r);
            }
        }
        Ok(())
    }

    fn lock_accounts(
        &mut self,
        ids: &[AccountId],
        now: Timestamp,
        out: &mut HashMap<AccountId, AccountState>,
    ) -> Result<()> {
        // SQLite has one writer: the IMMEDIATE transaction already excludes other writers.
        for id in ids {
            if let Some(c) = self.cache.get_mut(id) {
                out.insert(id.clone(), c.state_at(now));
                continue;
            }
            if let Some((row, recent_paid)) = load_account(self.conn, id, now)? {
                let mut cached = CachedAccount {
                    state: row.state,
                    recent_paid,
                };
                out.insert(id.clone(), cached.state_at(now));
                self.cache.insert(id.clone(), cached);
            }
        }
        Ok(())
    }

    fn load_purchases(
        &mut self,
        keys: &[(AccountId, PurchaseId)],
        out: &mut HashMap<(AccountId, PurchaseId), PurchaseRecord>,
    ) -> Result<()> {
        let mut st = self.conn.prepare_cached(
            "SELECT amount_nanos, paid, created_at, balance_after, limit_after, locked_after, \
             expires_at FROM purchases WHERE account = ?1 AND purchase_id = ?2",
        )?;
        for (account, pid) in keys {
            let found = st
                .query_row(params![account.as_str(), pid.as_str()], |r| {
                    Ok(PurchaseRecord {
                        account: account.clone(),
                        purchase_id: pid.clone(),
                        amount: Nanos(r.get(0)?),
                        paid: r.get(1)?,
                        created_at: Timestamp(r.get(2)?),
                        balance_after: Nanos(r.get(3)?),
                        concurrency_limit_after: r.get(4)?,
                        locked_after: r.get(5)?,
                        expires_at: r.get::<_, Option<i64>>(6)?.map(Timestamp),
                    })
                })
                .optional()?;
            if let Some(p) = found {
                out.insert((account.clone(), pid.clone()), p);
            }
        }
        Ok(())
    }

    fn persist(&mut self, s: &BatchState) -> Result<()> {
        let c = self.conn;
        let mut st = c.prepare_cached(
            "UPDATE accounts SET balance_nanos = ?2, held_nanos = ?3, in_progress = ?4, \
             paid_lifetime_nanos = ?5, month = ?6, month_subtotal_nanos = ?7 WHERE username = ?1",
        )?;
        for id in &s.dirty_accounts {
            let a = &s.accounts[id];
            let mut recent = self
                .written
                .get(id)
                .or_else(|| self.cache.get(id))
                .map(|c| c.recent_paid.clone())
                .unwrap_or_default();
            recent.extend(
                s.new_purchases
                    .iter()
                    .filter(|p| p.paid && &p.account == id)
                    .map(|p| (p.created_at, p.amount)),
            );
            let mut state = a.clone();
            state.lots.retain(|l| l.remaining > Nanos::ZERO);
            self.written.insert(
                id.clone(),
                CachedAccount {
                    state,
                    recent_paid: recent,
                },
            );
            st.execute(params![
                id.as_str(),
                a.credit.balance.0,
                a.credit.held.0,
                a.in_progress,
                a.paid_lifetime.0,
                a.month,
                a.month_subtotal.0
            ])?;
        }
        let mut st = c.prepare_cached(&format!(
            "INSERT INTO requests ({REQUEST_COLS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
             ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, \
             started_at = excluded.started_at, finished_at = excluded.finished_at, \
             hold_nanos = excluded.hold_nanos, hold_expires_at = excluded.hold_expires_at, \
             machine_type = excluded.machine_type, num_gpus = excluded.num_gpus, \
             queue_ms = excluded.queue_ms, inference_ms = excluded.inference_ms, \
             completion = excluded.completion"
        ))?;
        for id in &s.dirty_requests {
            let r = &s.requests[id];
            st.execute(params![
                r.id.as_str(),
                match r.source {
                    Source::Lifecycle => "lifecycle",
                    Source::Event => "event",
                },
                r.account.as_str(),
                r.endpoint.as_str(),
                r.api_key.as_ref().map(|k| k.as_str()),
                r.price_version,
                r.status.as_str(),
                r.submitted_at.0,
                r.started_at.map(|t| t.0),
                r.finished_at.map(|t| t.0),
                r.hold.0,
                r.hold_expires_at.map(|t| t.0),
                r.machine_type.as_ref().map(|m| m.as_str()),
                r.num_gpus,
                r.queue_ms,
                r.inference_ms,
                r.completion.as_ref().map(to_json),
            ])?;
        }
        let mut st = c.prepare_cached(
            "INSERT INTO purchases (account, purchase_id, amount_nanos, paid, created_at, \
             balance_after, limit_after, locked_after, expires_at, remaining_nanos) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?3)",
        )?;
        for p in &s.new_purchases {
            st.execute(params![
                p.account.as_str(),
                p.purchase_id.as_str(),
                p.amount.0,
                p.paid,
                p.created_at.0,
                p.balance_after.0,
                p.concurrency_limit_after,
                p.locked_after,
                p.expires_at.map(|t| t.0),
            ])?;
        }
        // What is left of each lot of the accounts that changed (after the new purchases, so
        // a lot bought and spent in the same batch is written as spent).
        let mut st = c.prepare_cached(
            "UPDATE purchases SET remaining_nanos = ?3 WHERE account = ?1 AND purchase_id = ?2 \
             AND remaining_nanos != ?3",
        )?;
        for id in &s.dirty_accounts {
            for lot in &s.accounts[id].lots {
                st.execute(params![
                    id.as_str(),
                    lot.purchase_id.as_str(),
                    lot.remaining.0
                ])?;
            }
        }
        let mut st = c.prepare_cached(
            "INSERT INTO transfers (kind, debit, credit, amount_nanos, request_id, purchase_id, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for t in &s.transfers {
            st.execute(params![
                t.transfer.kind.as_str(),
                t.transfer.debit.code(),
                t.transfer.credit.code(),
                t.transfer.amount.0,
                t.request_id.as_ref().map(|r| r.as_str()),
                t.purchase_id.as_ref().map(|p| p.as_str()),
                t.at.0
            ])?;
        }
        let mut st = c.prepare_cached(&format!(
            "INSERT INTO line_items ({}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            rollups::LINE_ITEM_COLS
        ))?;
        for l in &s.line_items {
            st.execute(params![
                l.request_id.as_str(),
                l.account.as_str(),
                l.endpoint.as_str(),
                l.api_key.as_ref().map(|k| k.as_str()),
                l.price_version,
                l.unit,
                l.charge.quantity.to_string(),
                l.charge.unit_price.to_string(),
                l.charge.percent_discount.map(|p| p.to_string()),
                l.charge.subtotal_nanos.0,
                l.charge.discount_nanos.0,
                l.charge.total_nanos.0,
                l.status_code,
                l.billed_at.0,
                l.queue_ms,
                l.inference_ms
            ])?;
        }
        let deltas = tollgate_core::rollup::deltas(s).map_err(|e| StoreError::Db(e.to_string()))?;
        rollups::write(c, &deltas)?;
        Ok(())
    }

    fn due_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<RequestId>> {
        let mut st = self.conn.prepare_cached(
            "SELECT request_id FROM requests WHERE hold_expires_at IS NOT NULL \
             AND hold_expires_at <= ?1 ORDER BY hold_expires_at LIMIT ?2",
        )?;
        let ids = st
            .query_map(params![now.0, limit as i64], |r| r.get::<_, String>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.iter().map(|s| parse_id(RequestId::parse, s)).collect()
    }

    fn due_credit_expiries(&mut self, now: Timestamp, limit: usize) -> Result<Vec<AccountId>> {
        let mut st = self.conn.prepare_cached(
            // Accounts whose due credits are all reserved by holds are left out (nothing of
            // theirs can expire, and they must not crowd out others), unless one of those holds
            // expires in this same sweep, which runs hold expiries first.
            "SELECT DISTINCT p.account FROM purchases p JOIN accounts a ON a.username = p.account \
             WHERE p.remaining_nanos > 0 AND p.expires_at IS NOT NULL AND p.expires_at <= ?1 \
             AND (a.balance_nanos > a.held_nanos OR EXISTS (SELECT 1 FROM requests r \
               WHERE r.hold_expires_at IS NOT NULL AND r.hold_expires_at <= ?1 \
               AND r.account = p.account)) LIMIT ?2",
        )?;
        let ids = st
            .query_map(params![now.0, limit as i64], |r| r.get::<_, String>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        ids.iter().map(|s| parse_id(AccountId::parse, s)).collect()
    }

    fn create_account(
        &mut self,
        username: &AccountId,
        billing: BillingMode,
        now: Timestamp,
    ) -> Result<()> {
        let n = self.conn.execute(
            "INSERT INTO accounts (username, created_at, billing) VALUES (?1, ?2, ?3) \
             ON CONFLICT (username) DO NOTHING",
            params![username.as_str(), now.0, billing.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::AlreadyExists(format!("account {username}")));
        }
        Ok(())
    }

    fn set_account_terms(&mut self, username: &AccountId, t: &AccountTerms) -> Result<()> {
        self.forget.push(username.clone());
        let exists = get_account(self.conn, username, Timestamp(0))?.is_some();
        if !exists {
            return Err(StoreError::NotFound(format!("account {username}")));
        }
        if let Some(l) = t.lock_threshold {
            self.conn.execute(
                "UPDATE accounts SET lock_threshold_nanos = ?2 WHERE username = ?1",
                params![username.as_str(), l.0],
            )?;
        }
        if let Some(o) = t.concurrency_override {
            self.conn.execute(
                "UPDATE accounts SET concurrency_override = ?2 WHERE username = ?1",
                params![username.as_str(), o],
            )?;
        }
        if let Some(d) = &t.discounts {
            self.conn.execute(
                "UPDATE accounts SET discounts = ?2 WHERE username = ?1",
                params![username.as_str(), to_json(d)],
            )?;
        }
        Ok(())
    }

    fn insert_api_key(&mut self, k: &ApiKeyRecord) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO api_keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (key_id) DO UPDATE SET secret_sha256 = excluded.secret_sha256, \
                 scope = excluded.scope, revoked_at = NULL \
                 WHERE api_keys.account IS NULL AND excluded.account IS NULL"
            ),
            params![
                k.key_id.as_str(),
                k.account.as_ref().map(|a| a.as_str()),
                k.scope.as_str(),
                k.alias,
                k.secret_sha256,
                k.created_at.0,
                k.revoked_at.map(|t| t.0)
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
        let n = self.conn.execute(
            "UPDATE api_keys SET revoked_at = ?3 WHERE key_id = ?1 AND account IS ?2 \
             AND revoked_at IS NULL",
            params![key_id.as_str(), account.map(|a| a.as_str()), now.0],
        )?;
        Ok(n > 0)
    }

    fn upsert_endpoint(&mut self, def: &EndpointDef, now: Timestamp) -> Result<()> {
        self.conn.execute(
            "INSERT INTO endpoints (endpoint_id, def, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (endpoint_id) DO UPDATE SET def = excluded.def, \
             updated_at = excluded.updated_at",
            params![def.id.as_str(), to_json(def), now.0],
        )?;
        Ok(())
    }

    fn insert_price_version(
        &mut self,
        endpoint: &EndpointId,
        account: Option<&AccountId>,
        effective_from: Timestamp,
        rule: &PriceRule,
        now: Timestamp,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO price_versions (endpoint_id, account, effective_from, rule, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                endpoint.as_str(),
                account.map(|a| a.as_str()),
                effective_from.0,
                to_json(rule),
                now.0
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    fn load_catalog(&mut self) -> Result<Catalog> {
        load_catalog(self.conn)
    }
}

/// A read-only connection.
pub struct SqliteReader {
    conn: Connection,
}

impl Reader for SqliteReader {
    fn account(&mut self, username: &AccountId, now: Timestamp) -> Result<Option<AccountRow>> {
        get_account(&self.conn, username, now)
    }

    fn request(&mut self, id: &RequestId) -> Result<Option<RequestRecord>> {
        get_request(&self.conn, id)
    }

    fn api_key(&mut self, key_id: &ApiKeyId) -> Result<Option<ApiKeyRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE key_id = ?1"
        ))?;
        let mut rows = st.query([key_id.as_str()])?;
        match rows.next()? {
            Some(r) => Ok(Some(key_row(r)?)),
            None => Ok(None),
        }
    }

    fn api_keys(&mut self, account: &AccountId) -> Result<Vec<ApiKeyRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE account = ?1 ORDER BY created_at, key_id"
        ))?;
        let mut rows = st.query([account.as_str()])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(key_row(r)?);
        }
        Ok(out)
    }

    fn load_catalog(&mut self) -> Result<Catalog> {
        load_catalog(&self.conn)
    }

    fn price_versions(&mut self) -> Result<Vec<PriceVersion>> {
        price_versions(&self.conn)
    }

    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        setting(&self.conn, key)
    }

    fn usage(&mut self, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
        rollups::usage(&self.conn, q)
    }

    fn activity(&mut self, q: &RollupQuery) -> Result<Vec<(ActivityKey, ActivityTotals)>> {
        rollups::activity(&self.conn, q)
    }

    fn billing_events(&mut self, q: &BillingEventsQuery) -> Result<Vec<LineItem>> {
        rollups::billing_events(&self.conn, q)
    }

    fn endpoint_history(
        &mut self,
        account: &AccountId,
        endpoint: &EndpointId,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<(u64, Nanos)> {
        rollups::endpoint_history(&self.conn, account, endpoint, since, until)
    }

    fn reconcile(&mut self) -> Result<Reconciliation> {
        let tx = self.conn.transaction()?;
        let mut rec = Reconciliation {
            rollup_mismatches: rollups::mismatches(&tx)?,
            ..Reconciliation::default()
        };
        let one = |sql: &str| -> Result<i128> {
            let v: i64 = tx.query_row(sql, [], |r| r.get(0))?;
            Ok(v as i128)
        };
        rec.revenue_nanos = one(
            "SELECT COALESCE(SUM(amount_nanos), 0) FROM transfers WHERE kind IN ('post', 'charge')",
        )?;
        rec.billed_nanos = one("SELECT COALESCE(SUM(total_nanos), 0) FROM line_items")?;
        rec.purchased_nanos = one("SELECT COALESCE(SUM(amount_nanos), 0) FROM purchases")?;
        rec.credited_nanos = one(
            "SELECT COALESCE(SUM(amount_nanos), 0) FROM transfers WHERE kind IN ('purchase', 'grant')",
        )?;
        // Balances as the ledger sees them: posted transfers summed per side, grouped once.
        let mut from_ledger: HashMap<String, i64> = HashMap::new();
        {
            let mut st = tx.prepare(
                "SELECT code, SUM(amount) FROM ( \
                   SELECT credit AS code, amount_nanos AS amount FROM transfers \
                     WHERE kind IN ('purchase', 'grant', 'post', 'charge', 'credit_expiry') \
                   UNION ALL \
                   SELECT debit, -amount_nanos FROM transfers \
                     WHERE kind IN ('purchase', 'grant', 'post', 'charge', 'credit_expiry')) \
                 GROUP BY code",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                from_ledger.insert(r.get(0)?, r.get(1)?);
            }
        }
        rec.expired_nanos = one(
            "SELECT COALESCE(SUM(amount_nanos), 0) FROM transfers WHERE kind = 'credit_expiry'",
        )?;
        let mut lots: HashMap<String, i64> = HashMap::new();
        {
            let mut st =
                tx.prepare("SELECT account, SUM(remaining_nanos) FROM purchases GROUP BY account")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                lots.insert(r.get(0)?, r.get(1)?);
            }
        }
        let mut open: HashMap<String, (i64, u32)> = HashMap::new();
        {
            let mut st = tx.prepare(
                "SELECT account, SUM(hold_nanos), COUNT(*) FROM requests \
                 WHERE status = 'IN_PROGRESS' GROUP BY account",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                open.insert(r.get(0)?, (r.get(1)?, r.get(2)?));
            }
        }
        {
            let mut st = tx.prepare(
                "SELECT username, balance_nanos, held_nanos, in_progress FROM accounts \
                 ORDER BY username",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                let name: String = r.get(0)?;
                let id = parse_id(AccountId::parse, &name)?;
                let (balance, held, in_progress): (i64, i64, u32) =
                    (r.get(1)?, r.get(2)?, r.get(3)?);
                let ledger = from_ledger
                    .get(&format!("customer:{name}"))
                    .copied()
                    .unwrap_or(0);
                let (open_holds, open_count) = open.get(&name).copied().unwrap_or((0, 0));
                if balance != ledger {
                    rec.balance_mismatches
                        .push((id.clone(), Nanos(balance), Nanos(ledger)));
                }
                if held != open_holds {
                    rec.held_mismatches
                        .push((id.clone(), Nanos(held), Nanos(open_holds)));
                }
                let left = lots.get(&name).copied().unwrap_or(0);
                if left != balance.max(0) {
                    rec.lot_mismatches
                        .push((id.clone(), Nanos(balance.max(0)), Nanos(left)));
                }
                if in_progress != open_count {
                    rec.in_progress_mismatches
                        .push((id, in_progress, open_count));
                }
            }
        }
        let mut st = tx.prepare(
            "WITH charged AS (SELECT request_id, SUM(amount_nanos) AS amount FROM transfers \
                 WHERE kind IN ('post', 'charge') AND request_id IS NOT NULL \
                 GROUP BY request_id), \
               billed AS (SELECT request_id, SUM(total_nanos) AS amount FROM line_items \
                 GROUP BY request_id) \
             SELECT b.request_id FROM billed b LEFT JOIN charged c USING (request_id) \
               WHERE b.amount != COALESCE(c.amount, 0) \
             UNION \
             SELECT c.request_id FROM charged c LEFT JOIN billed b USING (request_id) \
               WHERE b.request_id IS NULL AND c.amount != 0",
        )?;
        let ids = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for s in ids {
            rec.line_item_mismatches
                .push(parse_id(RequestId::parse, &s)?);
        }
        Ok(rec)
    }
}
