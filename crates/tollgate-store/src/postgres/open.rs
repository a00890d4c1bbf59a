//! Connecting: the writer's connection and its settings, and the schema migrations run before
//! anything else.

use super::reader::ReadPool;
use super::{PostgresStore, APPLICATION_NAME, READ_POOL_SIZE};
use crate::{Result, StoreError};
use ::postgres::{Client, Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;
use std::collections::HashMap;

/// Schema migrations, applied in order, each in one transaction; `tollgate_schema` records how
/// many ran. A transaction-scoped advisory lock makes processes that start together take
/// turns.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_terms_adjustments.sql"),
    include_str!("../../migrations/postgres/0003_billing_term.sql"),
    include_str!("../../migrations/postgres/0004_requests_by_endpoint.sql"),
    include_str!("../../migrations/postgres/0005_invoices.sql"),
    include_str!("../../migrations/postgres/0006_payments.sql"),
    include_str!("../../migrations/postgres/0007_statements.sql"),
    include_str!("../../migrations/postgres/0008_usage_invoices.sql"),
    include_str!("../../migrations/postgres/0009_web_sessions.sql"),
    include_str!("../../migrations/postgres/0010_spending_limits.sql"),
    include_str!("../../migrations/postgres/0011_webhooks.sql"),
    include_str!("../../migrations/postgres/0012_expiry_notices.sql"),
    include_str!("../../migrations/postgres/0013_payments.sql"),
    include_str!("../../migrations/postgres/0014_serverless.sql"),
    include_str!("../../migrations/postgres/0015_runner_event_retention.sql"),
    include_str!("../../migrations/postgres/0016_gateway.sql"),
];

/// The advisory lock key migrations hold ("tollgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// How long connecting, or waiting for a free read connection, may take (unless the URL sets
/// `connect_timeout`).
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
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
pub(super) fn connect(config: &Config, shown: &str) -> Result<Client> {
    let mut client = config.connect(NoTls).map_err(|e| {
        // The driver's message is "error connecting to server"; its cause says why.
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
        StoreError::database(format!("cannot connect to {shown}: {e}{cause}"), e)
    })?;
    client.batch_execute("SET plan_cache_mode = force_custom_plan")?;
    Ok(client)
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
