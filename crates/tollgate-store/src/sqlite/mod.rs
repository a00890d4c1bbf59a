//! The embedded store: one SQLite file in WAL mode.
//!
//! One writer connection (the engine's) and any number of reader connections. WAL lets readers
//! see the last commit while the writer works. Every connection runs with `synchronous=FULL`,
//! which makes a commit durable before it returns, except the writer once
//! [`Store::defer_sync`] was called: it commits with `synchronous=NORMAL` (the WAL frames are
//! written, not yet synced; a checkpoint still syncs before it copies them back), and the
//! returned function `fdatasync`s the WAL file, which puts every commit before it on disk. The
//! engine calls that on a thread of its own and answers callers after it, so one batch's sync
//! overlaps the next batch's work. WAL frames carry cumulative checksums, so after a power
//! loss SQLite recovers every synced commit and never a torn one.

use crate::rows::{
    self, AccountCols, Cell, Get, KeyCols, LineItemCols, RequestCols, TermsCols, ACCOUNT_COLS,
    KEY_COLS, REQUEST_COLS,
};
use crate::{
    corrupt, parse_id, to_json, AccountRow, ApiKeyRecord, BillingEventsQuery, BillingMode, Reader,
    ReaderFactory, Reconciliation, Rerunnable, Result, RollupQuery, Store, StoreError, SyncFn, Tx,
    SETTING_CATALOG_GENERATION,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
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
    (
        include_str!("../../migrations/sqlite/0003_fold_minutes.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0004_recent_line_items.sql"),
        None,
    ),
];

/// How many line items `line_items_recent` holds before a batch moves them into
/// `line_items_by_account`. A batch spread over many accounts adds one or two line items per
/// account, and inserting them into the account-clustered table directly dirties a page per
/// account; moved together, each account's page takes dozens. A billing-events read scans the
/// recent table, so this also bounds what such a read scans beyond its own rows.
const RECENT_LINE_ITEMS: i64 = 20_000;

/// How many recent line items the store moves when the write path is idle ([`Store::idle`]):
/// a few milliseconds' work.
const IDLE_RECENT_LINE_ITEMS: i64 = 2_000;

/// How many line items of one account a batch must hold to append them to the account's range
/// directly: about a page's worth.
const DENSE_LINE_ITEMS: usize = 8;

/// Moves every recent line item into the table clustered by account, in key order; in the
/// caller's transaction (a batch's, or the idle move's), so a reader sees each line item on
/// exactly one side.
fn move_line_items(c: &Connection) -> Result<()> {
    let cols = rows::LINE_ITEM_COLS;
    c.prepare_cached(&format!(
        "INSERT INTO line_items_by_account ({cols}) SELECT {cols} FROM line_items_recent \
         ORDER BY account, billed_at, request_id"
    ))?
    .execute([])?;
    c.prepare_cached("DELETE FROM line_items_recent")?
        .execute([])?;
    Ok(())
}

/// How many line items `line_items_recent` holds: two seeks (SQLite reads MIN or MAX off the
/// rowid B-tree only when each is a query of its own; both in one query scan the table).
fn recent_line_items(c: &Connection) -> Result<i64> {
    Ok(c.prepare_cached(
        "SELECT COALESCE((SELECT MAX(id) FROM line_items_recent) \
         - (SELECT MIN(id) FROM line_items_recent) + 1, 0)",
    )?
    .query_row([], |r| r.get(0))?)
}

pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    cache: AccountCache,
    checkpointer: Checkpointer,
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
///
/// SQLite starts the WAL over (writes from its beginning again) only when a write transaction
/// begins with every frame copied back and no reader inside the WAL. A writer that never pauses
/// never gives a background checkpoint that moment, and the WAL would grow without bound: every
/// commit would then write to newly allocated file blocks, which costs the kernel more than
/// overwriting blocks it already has. So once the WAL is past [`WAL_RESTART_FRAMES`], the
/// checkpointer asks the writer ([`Checkpointer::restart_if_wanted`]) to copy back the few frames
/// written since the last pass itself, between two batches; that never waits for a reader or
/// for the checkpointer (a PASSIVE checkpoint that finds either busy just stops early and is
/// tried again before the next batch), and the next commit starts the WAL over.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the checkpointer runs; while the WAL is past its limit, it runs again sooner so
/// that the writer's share stays small.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
const CHECKPOINT_AGAIN: Duration = Duration::from_millis(10);

/// The WAL length, in frames (about 4 KiB each), past which the writer starts it over: 16 MiB.
const WAL_RESTART_FRAMES: i64 = 4_096;

/// Runs a PASSIVE checkpoint: whether every frame in the WAL is now in the database file, and
/// how many frames the WAL holds; `None` when another connection held the checkpoint.
fn checkpoint_passive(conn: &Connection) -> Option<(bool, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })
    .ok()
    .filter(|(busy, _, _)| *busy == 0)
    .map(|(_, log, done)| (log == done, log))
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = open_conn(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let restart = Arc::new(AtomicBool::new(false));
        let (flag, wanted) = (stop.clone(), restart.clone());
        let thread = std::thread::Builder::new()
            .name("tollgate-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let long = checkpoint_passive(&conn)
                        .is_some_and(|(_, frames)| frames > WAL_RESTART_FRAMES);
                    if long {
                        wanted.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(if long {
                        CHECKPOINT_AGAIN
                    } else {
                        CHECKPOINT_EVERY
                    });
                }
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| StoreError::database(format!("cannot start the checkpointer: {e}"), e))?;
        Ok(Checkpointer {
            stop,
            restart,
            thread: Some(thread),
        })
    }

    /// Called by the writer between batches: copies back what is left of a long WAL, so that
    /// the next commit starts it over.
    fn restart_if_wanted(&self, conn: &Connection) {
        if self.restart.load(Ordering::Relaxed)
            && checkpoint_passive(conn).is_some_and(|(all, _)| all)
        {
            self.restart.store(false, Ordering::Relaxed);
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
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
        let checkpointer = Checkpointer::start(&path)?;
        Ok(SqliteStore {
            path,
            conn,
            cache: AccountCache::default(),
            checkpointer,
        })
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
    fn transaction(&mut self, work: &mut Rerunnable) -> Result<()> {
        self.checkpointer.restart_if_wanted(&self.conn);
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
        // Run once: the only writer of its file never loses a race.
        let outcome = work(&mut w);
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

    fn defer_sync(&mut self) -> Result<Option<SyncFn>> {
        // The connections keep the WAL file open, and SQLite only deletes it when the last one
        // closes, so this handle names the file the commits go to for the store's life (a
        // checkpoint that starts the WAL over rewrites the same file).
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wal)
            .map_err(|e| {
                StoreError::database(format!("cannot open {}: {e}", wal.to_string_lossy()), e)
            })?;
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Some(Box::new(move || {
            file.sync_data()
                .map_err(|e| StoreError::database(format!("cannot sync the WAL to disk: {e}"), e))
        })))
    }

    /// Moves the recent line items into the table clustered by account once there are
    /// [`IDLE_RECENT_LINE_ITEMS`], so that under light load the move is small and falls between
    /// batches instead of inside one.
    fn idle(&mut self) -> Result<()> {
        // Counted outside a transaction, so an idle moment with nothing to move takes no write
        // lock; only this connection writes the table, so the count still holds inside it.
        if recent_line_items(&self.conn)? < IDLE_RECENT_LINE_ITEMS {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        move_line_items(&tx)?;
        Ok(tx.commit()?)
    }

    fn reader_factory(&self) -> ReaderFactory {
        let path = self.path.clone();
        Arc::new(move || {
            let conn = open_conn(&path)?;
            Ok(Box::new(SqliteReader { conn }) as Box<dyn Reader>)
        })
    }

    fn schema_version(&mut self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// Counts one more catalog change, in the db transaction that makes it.
fn bump_catalog_generation(conn: &Connection) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES (?1, '1') ON CONFLICT (key) \
         DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
    )?
    .execute([SETTING_CATALOG_GENERATION])?;
    Ok(())
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

impl Get for Row<'_> {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }
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
        lots.push(rows::lot(
            &r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
        )?);
    }
    Ok(lots)
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
            let paid_28d = Nanos(recent.iter().map(|(_, n)| n.0).sum());
            let row = AccountCols::read(r)?.into_row(open_lots(conn, id.as_str())?, paid_28d)?;
            Ok(Some((row, recent)))
        }
        None => Ok(None),
    }
}

fn get_account(conn: &Connection, id: &AccountId, now: Timestamp) -> Result<Option<AccountRow>> {
    Ok(load_account(conn, id, now)?.map(|(row, _)| row))
}

fn request_row(r: &Row) -> Result<RequestRecord> {
    RequestCols::read(r)?.into_record()
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
    KeyCols::read(r)?.into_record()
}

fn setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn price_versions(conn: &Connection) -> Result<Vec<PriceVersion>> {
    let mut st = conn.prepare_cached(rows::PRICE_VERSION_SQL)?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(rows::price_version(
            r.get(0)?,
            &r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?.as_deref(),
            r.get(3)?,
            &r.get::<_, String>(4)?,
        )?);
    }
    Ok(out)
}

fn load_catalog(conn: &Connection) -> Result<Catalog> {
    let defs = conn
        .prepare_cached("SELECT def FROM endpoints")?
        .query_map([], |r| r.get(0))?
        .collect::<std::result::Result<Vec<String>, _>>()?;
    let settings = conn
        .prepare_cached("SELECT key, value FROM settings")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<std::result::Result<HashMap<String, String>, _>>()?;
    rows::catalog(defs, price_versions(conn)?, &settings)
}

impl Tx for SqliteTx<'_> {
    fn setting(&mut self, key: &str) -> Result<Option<String>> {
        setting(self.conn, key)
    }

    fn load_requests(
        &mut self,
        ids: &[RequestId],
        out: &mut HashMap<RequestId, RequestRecord>,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // One statement for the batch: the ids as a JSON array, each looked up in the unique
        // index.
        let list =
            serde_json::to_string(ids).map_err(|e| StoreError::database(e.to_string(), e))?;
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests \
             WHERE request_id IN (SELECT value FROM json_each(?1))"
        ))?;
        let mut rows = st.query([list])?;
        while let Some(r) = rows.next()? {
            let r = request_row(r)?;
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
            let r = RequestCols::of(&s.requests[id]);
            st.execute(params![
                r.request_id,
                r.source,
                r.account,
                r.endpoint_id,
                r.api_key,
                r.price_version,
                r.status,
                r.submitted_at,
                r.started_at,
                r.finished_at,
                r.hold,
                r.hold_expires_at,
                r.machine_type,
                r.num_gpus,
                r.queue_ms,
                r.inference_ms,
                r.completion,
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
        // a lot bought and spent in the same batch is written as spent). The cache holds the
        // lots as the last commit left them, so only the lots this batch spent are written.
        let mut st = c.prepare_cached(
            "UPDATE purchases SET remaining_nanos = ?3 WHERE account = ?1 AND purchase_id = ?2 \
             AND remaining_nanos != ?3",
        )?;
        for id in &s.dirty_accounts {
            let before = self.cache.get(id).map(|c| c.state.lots.as_slice());
            for lot in &s.accounts[id].lots {
                let unchanged = before.is_some_and(|lots| {
                    lots.iter()
                        .any(|b| b.purchase_id == lot.purchase_id && b.remaining == lot.remaining)
                });
                if unchanged {
                    continue;
                }
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
        // An account with a page's worth of line items in this batch has them appended to its
        // range directly; the others go to the last pages of the recent table, and are moved to
        // theirs once there are enough of them (see `move_line_items`).
        let insert = |table: &str| {
            c.prepare_cached(&format!(
                "INSERT INTO {table} ({}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                rows::LINE_ITEM_COLS
            ))
        };
        let (mut direct, mut recent) = (
            insert("line_items_by_account")?,
            insert("line_items_recent")?,
        );
        let mut items: Vec<&LineItem> = s.line_items.iter().collect();
        items.sort_unstable_by(|a, b| {
            (&a.account, a.billed_at, &a.request_id).cmp(&(&b.account, b.billed_at, &b.request_id))
        });
        for run in items.chunk_by(|a, b| a.account == b.account) {
            let st = if run.len() >= DENSE_LINE_ITEMS {
                &mut direct
            } else {
                &mut recent
            };
            for l in run.iter().map(|l| LineItemCols::of(l)) {
                st.execute(params![
                    l.request_id,
                    l.account,
                    l.endpoint_id,
                    l.api_key,
                    l.price_version,
                    l.unit,
                    l.quantity,
                    l.unit_price,
                    l.percent_discount,
                    l.subtotal,
                    l.discount,
                    l.total,
                    l.status_code,
                    l.billed_at,
                    l.queue_ms,
                    l.inference_ms
                ])?;
            }
        }
        if recent_line_items(c)? >= RECENT_LINE_ITEMS {
            move_line_items(c)?;
        }
        let folded_before = rollups::fold_minutes(c, s.now)?;
        let deltas =
            tollgate_core::rollup::deltas(s).map_err(|e| StoreError::database(e.to_string(), e))?;
        rollups::write(c, &deltas, folded_before)?;
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

    fn set_account_terms(&mut self, username: &AccountId, terms: &Terms) -> Result<()> {
        self.forget.push(username.clone());
        let t = TermsCols::of(terms);
        let n = self.conn.execute(
            "UPDATE accounts SET lock_threshold_nanos = ?2, concurrency_override = ?3, \
             discounts = ?4 WHERE username = ?1",
            params![
                username.as_str(),
                t.lock_threshold,
                t.concurrency_override,
                t.discounts
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("account {username}")));
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
        bump_catalog_generation(self.conn)
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
        let id = self.conn.last_insert_rowid();
        bump_catalog_generation(self.conn)?;
        Ok(id)
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        bump_catalog_generation(self.conn)
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

    // Each read in one read transaction: the fold setting and the rows from the same commit.
    fn usage(&mut self, q: &RollupQuery) -> Result<Vec<(UsageKey, UsageTotals)>> {
        rollups::usage(&*self.conn.transaction()?, q)
    }

    fn activity(&mut self, q: &RollupQuery) -> Result<Vec<(ActivityKey, ActivityTotals)>> {
        rollups::activity(&*self.conn.transaction()?, q)
    }

    fn billing_events(&mut self, q: &BillingEventsQuery) -> Result<Vec<LineItem>> {
        rollups::billing_events(&self.conn, q)
    }

    fn reconcile(&mut self) -> Result<Reconciliation> {
        // One read transaction: every query sees the same commit.
        let tx = self.conn.transaction()?;
        let rec = rows::reconcile(&mut |sql| {
            let mut st = tx.prepare(sql)?;
            let width = st.column_count();
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut row = Vec::with_capacity(width);
                for i in 0..width {
                    row.push(match r.get::<_, rusqlite::types::Value>(i)? {
                        rusqlite::types::Value::Integer(v) => Cell::Int(v),
                        rusqlite::types::Value::Text(t) => Cell::Text(t),
                        other => return Err(corrupt("reconciliation", format!("{other:?}"))),
                    });
                }
                out.push(row);
            }
            Ok(out)
        })?;
        Ok(rec)
    }
}
