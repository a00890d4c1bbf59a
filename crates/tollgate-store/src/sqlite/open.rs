//! Opening the file: each connection's settings, and the schema migrations the writer runs
//! before anything else.

use super::durability::Checkpointer;
use super::{rollups, AccountCache, SqliteStore};
use crate::{Result, StoreError};
use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

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
    (
        include_str!("../../migrations/sqlite/0005_terms_adjustments.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0006_billing_term.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0007_keys_by_account.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0008_requests_by_endpoint.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0009_invoices.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0010_payments.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0011_statements.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0012_usage_invoices.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0013_web_sessions.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0014_spending_limits.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0015_webhooks.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0016_expiry_notices.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0017_payments.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0018_serverless.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0019_runner_event_retention.sql"),
        None,
    ),
    (
        include_str!("../../migrations/sqlite/0020_gateway.sql"),
        None,
    ),
];

/// A connection to the file at `path` with the settings every connection runs with.
pub(crate) fn open_conn(path: &Path) -> Result<Connection> {
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
