//! The `tollgate` binary: the server (`serve`, `serve --demo`), `migrate`, and operator
//! commands that are clients of the admin API.

mod backup;
mod bench;
mod client;
mod config;
mod dblock;
mod demo_runners;
mod drain;
mod http_server;
mod logging;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc: the writer thread allocates and frees a batch's rows, maps and strings on every
/// commit, and the server's threads free what it allocated; glibc's allocator spent about a
/// tenth of the writer's time there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tollgate: a self-hosted billing engine for AI model APIs.
///
/// Prices every request in its model's own unit, draws the cost from prepaid credits in real
/// time (hold at start, settle at completion, server errors free), limits concurrency by
/// purchase history, and answers billing queries in the shape of fal's Platform APIs.
#[derive(Parser)]
#[command(name = "tollgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    ///
    /// Settings come from flags, TOLLGATE_* environment variables and a --config file, in
    /// that order of precedence. The operator key comes from TOLLGATE_OPERATOR_KEY
    /// (`<key_id>:<key_secret>`). The server listens before it opens the database (a busy port
    /// changes nothing), holds its SQLite file for itself, and on SIGTERM or SIGINT stops
    /// accepting, finishes the calls in flight, commits and syncs the last batch and exits 0
    /// (status 1 if drain_timeout_s passed first). With --demo, starts on a fresh database with
    /// the sample catalog, an operator key and a demo account with credits and keys, and prints
    /// commands to try.
    Serve(Box<serve::ServeArgs>),
    /// Check a configuration file for `serve --config`.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Write a consistent copy of a SQLite database, also while a server writes to it.
    ///
    /// The copy is one snapshot of the database, taken without pausing the server; OUT must
    /// not exist. To restore: stop the server, copy OUT to the database's path (removing its
    /// -wal and -shm files), start the server. PostgreSQL: use pg_dump and pg_restore.
    Backup(backup::BackupArgs),
    /// Create or upgrade the database schema, then exit.
    ///
    /// Servers upgrade the schema when they start, too; run this first to upgrade a database
    /// shared by several servers before rolling them onto a new release.
    Migrate {
        /// The database: a SQLite file path, or a PostgreSQL URL
        /// (postgres://user:password@host:5432/dbname).
        #[arg(long, default_value = serve::DEFAULT_DB)]
        db: String,
    },
    /// Manage accounts (operator).
    #[command(subcommand)]
    Account(client::AccountCmd),
    /// Add credits to an account (operator).
    Credits(client::CreditsArgs),
    /// Create, list and revoke keys: customer and operator keys (operator).
    #[command(subcommand)]
    Key(client::KeyCmd),
    /// Check a catalog file (offline) or apply it (operator).
    #[command(subcommand)]
    Catalog(client::CatalogCmd),
    /// Measure tollgate's write path against the naive design and the disk's limit.
    ///
    /// Runs every row in one process on this machine: the disk's fdatasync limit, the naive
    /// per-request db transaction on SQLite (and PostgreSQL with --postgres-url), tollgate's
    /// settle throughput and admission latency in-process and over HTTP (with wrk), the hot
    /// account, scale with many accounts and a long history, a replay of the Azure LLM
    /// trace, and with --postgres-url tollgate's settle throughput on a PostgreSQL store.
    /// Prints a table and ratios; --json writes the same figures.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file offline and print the settings it resolves to.
    ///
    /// Names the line and key of an unknown key, a value of the wrong type or a bad value;
    /// exits non-zero then. On success prints every setting (the file, with the environment's
    /// TOLLGATE_* variables over it, over the defaults) and where each came from.
    Check {
        /// The TOML configuration file.
        file: std::path::PathBuf,
    },
}

fn main() {
    // One line per error, with its causes, whatever RUST_BACKTRACE says: these are messages
    // for operators, not crash reports.
    if let Err(e) = run(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Config(ConfigCmd::Check { file }) => config::check(&file),
        Command::Backup(args) => backup::run(args),
        Command::Migrate { db } => {
            // A SQLite file a server is using is not migrated under it.
            if !tollgate_store::postgres::is_url(&db) {
                dblock::claim(std::path::Path::new(&db), false)?;
            }
            let mut store = tollgate_store::open(&db)?;
            println!(
                "{}: schema at version {}",
                store.describe(),
                store.schema_version()?
            );
            Ok(())
        }
        Command::Account(cmd) => client::account(cmd),
        Command::Credits(args) => client::credits(args),
        Command::Key(cmd) => client::key(cmd),
        Command::Catalog(cmd) => client::catalog(cmd),
        Command::Bench(args) => bench::run(args),
    }
}
