//! The `tollgate` binary: the server (`serve`, `serve --demo`), `migrate`, and operator
//! commands that are clients of the admin API.

mod bench;
mod client;
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
    /// The operator key comes from TOLLGATE_OPERATOR_KEY (`<key_id>:<key_secret>`). With
    /// --demo, starts on a fresh database with the sample catalog, an operator key and a demo
    /// account with credits and keys, and prints commands to try.
    Serve(serve::ServeArgs),
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
    /// Apply a catalog file (operator).
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
        Command::Serve(args) => serve::run(args),
        Command::Migrate { db } => {
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
