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
//!
//! Its parts: `open` (connecting, migrations), `tx` (the writer's db transaction) and
//! `persist` (a batch's writes), `load` (rows into core types, for the writer and readers),
//! `reader` (the read pool), `rollups` (the reads over rollups), `payments` (top-ups, disputes,
//! provider events and refunds: loaded, written and read), `webhooks` (the outbox,
//! subscriptions, claims and attempts, and their reads).

mod load;
mod open;
mod payments;
mod persist;
mod reader;
mod rollups;
mod tx;
mod webhooks;

pub(crate) use persist::ACCRUALS_TO_LINES;
pub(crate) use reader::{request_history_sql, PgDb};
pub(crate) use rollups::usage_statements;

pub use open::redact;
pub use reader::PgReader;

use crate::{DbError, Reader, ReaderFactory, Rerunnable, Result, Store, StoreError};
use ::postgres::error::SqlState;
use ::postgres::types::ToSql;
use ::postgres::{Client, Config, NoTls, Row, Statement, Transaction};
use open::connect;
use r2d2_postgres::PostgresConnectionManager;
use reader::ReadPool;
use std::collections::{HashMap, HashSet};
use tx::PgTx;

/// The `application_name` of tollgate's connections, unless the URL names another.
pub const APPLICATION_NAME: &str = "tollgate";

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

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

pub struct PostgresStore {
    config: Config,
    shown: String,
    client: Client,
    /// The writer's prepared statements, by SQL text.
    statements: HashMap<String, Statement>,
    pool: ReadPool,
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
                    profiles: HashMap::new(),
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

#[cfg(test)]
mod tests {
    use super::is_url;
    use super::open::redact;

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
