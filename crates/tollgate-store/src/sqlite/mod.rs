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
//!
//! Its parts: `open` (connections, migrations), `account_cache` (the writer's account rows),
//! `durability` (the deferred sync and the checkpointer), `line_items` (the recent table and
//! its move), `tx` (the writer's db transaction) and `persist` (a batch's writes, table by
//! table), `load` (rows into core types, for the writer and readers), `reader` (the read
//! side), `rollups` (the rollups, and the reads over them and line items), `payments` (top-ups,
//! disputes, provider events and refunds: loaded, written and read), `webhooks` (the outbox,
//! subscriptions, claims and attempts, and their reads).

mod account_cache;
mod durability;
mod line_items;
mod load;
mod open;
mod payments;
mod persist;
mod reader;
mod rollups;
mod tx;
mod webhooks;

pub(crate) use open::open_conn;
pub(crate) use persist::{ACCRUALS_MOVED, ACCRUALS_TO_LINES};
pub(crate) use reader::{request_history_sql, SqliteDb};
pub(crate) use rollups::usage_statements;

pub use reader::SqliteReader;

use crate::{Reader, ReaderFactory, Rerunnable, Result, Store, SyncFn};
use account_cache::AccountCache;
use durability::Checkpointer;
use load::{request_row, setting};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tx::SqliteTx;

pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    cache: AccountCache,
    checkpointer: Checkpointer,
}

impl Store for SqliteStore {
    fn transaction(&mut self, work: &mut Rerunnable) -> Result<()> {
        self.checkpointer.restart_if_wanted(&self.conn);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        self.cache.check(&tx)?;
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
        let outcome = outcome.and_then(|()| Ok(tx.commit()?));
        self.cache.after(outcome.is_ok(), written, forget);
        outcome
    }

    fn defer_sync(&mut self) -> Result<Option<SyncFn>> {
        durability::defer_sync(&self.path, &self.conn).map(Some)
    }

    /// Moves the recent line items into the table clustered by account once there are enough,
    /// so that under light load the move is small and falls between batches.
    fn idle(&mut self) -> Result<()> {
        line_items::move_when_idle(&mut self.conn)
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
