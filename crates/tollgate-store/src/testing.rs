//! Fresh databases for tests, on every backend at hand: SQLite always, PostgreSQL when
//! `TOLLGATE_TEST_POSTGRES_URL` names a server (each test database is then a schema of its own,
//! dropped afterwards). For tests only; no production build enables it.

use crate::{DbError, Result, Store, StoreError};

/// The variable that names the PostgreSQL server the tests may use.
pub const POSTGRES_URL_VAR: &str = "TOLLGATE_TEST_POSTGRES_URL";

/// A kind of database to run a test on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// The server's URL.
    Postgres(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// SQLite, and PostgreSQL when [`POSTGRES_URL_VAR`] is set. A URL that is set but does not
/// answer fails the test: a configured backend is never skipped silently.
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    if let Some(url) = postgres_url() {
        out.push(Backend::Postgres(url));
    }
    out
}

/// The PostgreSQL server the tests may use, if one is configured.
pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// One fresh, empty database. Dropped, it is deleted.
pub struct TestDb {
    backend: Backend,
    target: String,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl TestDb {
    pub fn new(backend: &Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let target = dir.path().join("tollgate.db").display().to_string();
                TestDb {
                    backend: backend.clone(),
                    target,
                    _dir: Some(dir),
                    schema: None,
                }
            }
            Backend::Postgres(url) => {
                use std::sync::atomic::{AtomicU32, Ordering};
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let schema = format!(
                    "tollgate_test_{}_{}_{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_nanos())
                        .unwrap_or(0)
                );
                run_sql(url, &format!("CREATE SCHEMA {schema}"));
                let sep = if url.contains('?') { '&' } else { '?' };
                TestDb {
                    backend: backend.clone(),
                    // The schema's name is also its connections' application_name, so a
                    // test can find them in pg_stat_activity.
                    target: format!(
                        "{url}{sep}options=-csearch_path%3D{schema}&application_name={schema}"
                    ),
                    _dir: None,
                    schema: Some(schema),
                }
            }
        }
    }

    /// On PostgreSQL, the schema the database lives in (also its connections'
    /// `application_name`).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// What `tollgate_store::open` and `tollgate serve --db` take.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Opens a store on it (from any thread, async runtime or not).
    pub fn open(&self) -> Result<Box<dyn Store>> {
        std::thread::scope(|s| {
            s.spawn(|| crate::open(&self.target))
                .join()
                .map_err(|_| StoreError::Database(DbError::msg("opening the store panicked")))?
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let (Backend::Postgres(url), Some(schema)) = (&self.backend, &self.schema) {
            // A test that already failed must not abort on a second panic here.
            if std::thread::panicking() {
                let (url, schema) = (url.clone(), schema.clone());
                let _ = std::thread::spawn(move || drop_schema(&url, &schema)).join();
            } else {
                drop_schema(url, schema);
            }
        }
    }
}

/// Connects to the test server, on a thread of its own (the driver blocks), and runs `f`.
fn with_server(url: &str, f: impl FnOnce(&mut ::postgres::Client) + Send + 'static) {
    let url = url.to_string();
    std::thread::spawn(move || {
        let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap_or_else(|e| {
            panic!("{POSTGRES_URL_VAR}={url} is set, but the server does not answer: {e}")
        });
        f(&mut c)
    })
    .join()
    .expect("PostgreSQL test setup");
}

/// The server's own words for a failed statement.
fn message(e: &::postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

fn run_sql(url: &str, sql: &str) {
    let sql = sql.to_string();
    with_server(url, move |c| {
        c.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
    });
}

/// Drops a test's schema. A server or engine the test started may still be running a batch in
/// it (a sweeper, say), so its connections (named after the schema) are cut first, and the drop
/// is tried again while they let go of their locks.
fn drop_schema(url: &str, schema: &str) {
    let schema = schema.to_string();
    with_server(url, move |c| {
        let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        for attempt in 1.. {
            let _ = c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&schema],
            );
            match c.batch_execute(&sql) {
                Ok(()) => return,
                Err(_) if attempt < 20 => std::thread::sleep(std::time::Duration::from_millis(50)),
                Err(e) => panic!("{sql}: {}", message(&e)),
            }
        }
    });
}
